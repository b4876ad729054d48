/*
 * cmd_bench.c — `slimkv bench`: llama-bench-style speed (docs/evaluation.md section 5).
 *
 * pp<N>: prefill N random tokens into an empty cache. tg<N>@d<D>: prefill D tokens (untimed),
 * then N single-token decode steps (no sampling: the next id is pseudo-random). bs<B>@d<D>
 * (--batches on the CPU): B contexts, each prefilled with D tokens, then N steps of all B
 * together (skv_decode_multi); tokens/s counts B per step. Each test runs
 * once to warm up, then R timed repetitions; tokens/s mean and standard deviation over the
 * repetitions. Next to them: the measured copy bandwidth, the decode bound it implies (bytes one
 * decode step reads / bandwidth), and OpenBLAS sgemm throughput at the model's shapes.
 */
#include "cli.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

typedef struct result {
    char name[32];
    int n, depth, batch; /* batch: contexts stepped together (bs<B>@d<D>), else 0 */
    double mean, sd;
    double samples[64];
    int reps;
} result;

static uint64_t g_rng = 0x1234567ull;
static int32_t rand_id(int32_t V) { return cli_rand_id(&g_rng, V); }

/* tokens/s of one repetition */
static double run_once(skv_context *c, int32_t V, int n, int depth, int is_pp, int32_t *buf,
                       float *logits) {
    cli_check("bench", skv_context_truncate(c, 0));
    if (depth > 0) {
        for (int i = 0; i < depth; i++) buf[i] = rand_id(V);
        cli_check("bench", skv_decode(c, buf, depth, NULL, 0));
    }
    double t0;
    if (is_pp) {
        for (int i = 0; i < n; i++) buf[i] = rand_id(V);
        t0 = skv_time_now();
        cli_check("bench", skv_decode(c, buf, n, logits, 0));
    } else {
        t0 = skv_time_now();
        for (int i = 0; i < n; i++) {
            int32_t id = rand_id(V);
            cli_check("bench", skv_decode(c, &id, 1, logits, 0));
        }
    }
    return n / (skv_time_now() - t0);
}

/* tokens/s of one repetition of B contexts stepped together (skv_decode_multi) */
static double run_multi(skv_context **cs, int B, int32_t V, int n, int depth, int32_t *buf, float *logits) {
    for (int b = 0; b < B; b++) {
        cli_check("bench", skv_context_truncate(cs[b], 0));
        if (depth > 0) {
            for (int i = 0; i < depth; i++) buf[i] = rand_id(V);
            cli_check("bench", skv_decode(cs[b], buf, depth, NULL, 0));
        }
    }
    const double t0 = skv_time_now();
    for (int i = 0; i < n; i++) {
        for (int b = 0; b < B; b++) buf[b] = rand_id(V);
        cli_check("bench", skv_decode_multi(cs, B, buf, logits));
    }
    return (double)n * B / (skv_time_now() - t0);
}

/* STREAM-style copy bandwidth: (bytes read + bytes written) / s, best of 5, n threads. */
static double copy_bandwidth(int threads) {
    const size_t bytes = (size_t)256 << 20;
    char *a = malloc(bytes), *b = malloc(bytes);
    if (!a || !b) cli_die("bench", 1, "out of memory for the bandwidth test");
    memset(a, 1, bytes);
    memset(b, 2, bytes);
    double best = 0;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = skv_time_now();
#pragma omp parallel num_threads(threads)
        {
            int t = omp_get_thread_num(), nt = omp_get_num_threads();
            size_t chunk = bytes / (size_t)nt, off = chunk * (size_t)t;
            memcpy(b + off, a + off, t == nt - 1 ? bytes - off : chunk);
        }
        double bw = 2.0 * (double)bytes / (skv_time_now() - t0);
        if (bw > best) best = bw;
    }
    free(a);
    free(b);
    return best / 1e9;
}

/* Read-only bandwidth: XOR-reduce a 256 MiB buffer (vectorises; no stores), best of 5. */
static double read_bandwidth(int threads) {
    const size_t bytes = (size_t)256 << 20, n = bytes / 8;
    uint64_t *a = malloc(bytes);
    if (!a) cli_die("bench", 1, "out of memory for the bandwidth test");
    for (size_t i = 0; i < n; i++) a[i] = i;
    double best = 0;
    volatile uint64_t sink = 0;
    for (int rep = 0; rep < 5; rep++) {
        uint64_t x = 0;
        double t0 = skv_time_now();
#pragma omp parallel for reduction(^ : x) num_threads(threads) schedule(static)
        for (size_t i = 0; i < n; i++) x ^= a[i];
        double bw = (double)bytes / (skv_time_now() - t0);
        sink ^= x;
        if (bw > best) best = bw;
    }
    free(a);
    return best / 1e9;
}

/* sgemm GFLOP/s for C(m,n) = A(m,k) B(n,k)^T, best of 5 */
static double sgemm_gflops(int m, int n, int k) {
    float *A = malloc((size_t)m * k * 4), *B = malloc((size_t)n * k * 4), *C = malloc((size_t)m * n * 4);
    for (size_t i = 0; i < (size_t)m * k; i++) A[i] = (float)(i % 7) * 0.1f;
    for (size_t i = 0; i < (size_t)n * k; i++) B[i] = (float)(i % 5) * 0.1f;
    double best = 0;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = skv_time_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, A, k, B, k, 0.0f, C, n);
        double g = 2.0 * m * n * k / (skv_time_now() - t0) / 1e9;
        if (g > best) best = g;
    }
    free(A);
    free(B);
    free(C);
    return best;
}

/* K and V bytes one token adds to the cache in a format, over all (layer, KV head) streams (KIVI
 * int8/int4: full blocks, their scales and minima included; kv/quant.c's layout). */
static double kv_bytes_per_token(skv_kv_format f, const skv_model_info *in) {
    const double hd = in->head_dim, streams = (double)in->n_layer * in->n_kv_head, B = 32;
    double per;
    switch (f) {
    case SKV_KV_BF16:
    case SKV_KV_F16: per = 2 * hd * 2; break;
    case SKV_KV_Q8:
    case SKV_KV_Q4: {
        const double code = f == SKV_KV_Q8 ? hd : hd / 2;
        per = (2 * hd * 4 + B * code) / B + (2 * (hd / 32) * 4 * B + B * code) / B;
        break;
    }
    default: per = 2 * hd * 4;
    }
    return per * streams;
}

#define UNSET INT_MIN /* an integer option not given */
#define OR_INT(v, d) ((v) == UNSET ? (d) : (v))
#define OR_STR(v, d) ((v) ? (v) : (d))

int cmd_bench(int argc, char **argv) {
    /* options whose default depends on the mode start as "not given" (NULL, UNSET) */
    const char *dir = NULL, *out = NULL, *depths_s = NULL, *budgets = "0.05,0.1,0.2,0.4";
    const char *pps = "4096,16384", *batches = NULL, *e2e = NULL;
    int e2e_steps = 32, e2e_max = UNSET, binv = 0;
    int use_mmap = 0, threads = 0, reps = 5, pp = 512, tg = UNSET, ubatch = 2048, batch_depth = UNSET;
    cli_policy_args pa;
    cli_opt opts[64] = {
        {"reps", 'r', OPT_INT, &reps, "R", "timed repetitions per test (default 5)"},
        {"pp", 0, OPT_INT, &pp, "N", "prompt tokens of the pp test (default 512; 0 = skip)"},
        {"tg", 0, OPT_INT, &tg, "N", "generated tokens of the tg tests (default 128; 0 = skip)"},
        {"depths", 'd', OPT_STR, &depths_s, "LIST", "context depths of the tg tests (default 0,1024,1984)"},
        {"out", 'o', OPT_STR, &out, "FILE", "result JSON (default: a new results/bench-<model>-<time>/ folder; published ones: bench/...)"},
        {"budgets", 0, OPT_STR, &budgets, "LIST", "smallkv: budgets to time against the full cache (default 0.05,0.1,0.2,0.4)"},
        {"pps", 0, OPT_STR, &pps, "LIST", "cuda: prefill lengths (default 4096,16384)"},
        {"batches", 0, OPT_STR, &batches, "LIST", "decode batch sizes (cuda: default 1,8,32; cpu: none unless given, at the first depth)"},
        {"batch-depth", 0, OPT_INT, &batch_depth, "N", "cuda: prompt tokens of each batched sequence (default 1024)"},
        {"ubatch", 0, OPT_INT, &ubatch, "N", "cuda: tokens per prefill call (default 2048)"},
        {"e2e", 0, OPT_STR, &e2e, "P+G", "cuda: the largest batch of P+G-token sequences that fits and its throughput (prefill + generation)"},
        {"steps", 0, OPT_INT, &e2e_steps, "S", "cuda --e2e: decode steps timed at each of two depths (default 32)"},
        {"max-batch", 0, OPT_INT, &e2e_max, "B", "cuda --e2e, cuda --policy kcache: largest batch tried (default 4096); cuda: given, the largest batch whose cache of the longest test's tokens allocates (at most B)"},
        {"batch-invariant", 0, OPT_FLAG, &binv, NULL, "cuda: decode in the batch-invariant mode (as slimkv serve does; default: the fastest kernels)"},
        CLI_OPT_NO_CHECK,
    };
    int n_opts = 15;
    cli_policy_options(&pa, opts, &n_opts);
    const cli_cmd cmd = {"bench", "-m DIR [-t N] [-r R] | -m DIR --policy smallkv --draft DIR [--depths D] [--tg N]",
                         "Prompt processing and generation speed, llama-bench style, with the "
                         "memory-bandwidth bound and sgemm throughput of this machine. With --policy "
                         "smallkv: decode speed and KV memory of the full cache and of SmallKV at "
                         "each budget, at the first --depths value (default 1984, tg 64).",
                         opts, n_opts};
    cli_parse(&cmd, argc, argv);
    dir = pa.dir, threads = pa.threads, use_mmap = pa.use_mmap;
    if (!dir) cli_die("bench", 2, "no model: give -m DIR (a Hugging Face model directory)");
    if (reps < 1 || reps > 64) cli_die("bench", 2, "bad value for --reps: %d (1..64)", reps);
    if (e2e_max != UNSET && e2e_max < 1) cli_die("bench", 2, "bad value for --max-batch: %d (must be >= 1)", e2e_max);
    if (tg != UNSET && tg < 0) cli_die("bench", 2, "bad value for --tg: %d (must be >= 0)", tg);
    if (batch_depth != UNSET && batch_depth < 1) cli_die("bench", 2, "bad value for --batch-depth: %d (must be >= 1)", batch_depth);
    /* the result file: an explicit --out is checked now, not after the run; by default a new
     * folder under results/ (published results under bench/ are written only when asked) */
    if (out) cli_check_writable("bench", "--out", out);
    if (binv && (strcmp(pa.backend, "cuda") || !strcmp(pa.policy, "kcache") || e2e))
        cli_die("bench", 2, "--batch-invariant: the CUDA decode and batch tests only (not --policy kcache or --e2e; "
                "the CPU backend is batch-invariant always)");
    if (!strcmp(pa.backend, "cuda") && !strcmp(pa.policy, "kcache")) {
        /* KCache against the full cache: batch 1 at depths, and the largest batch at a depth */
        cli_backend("bench", pa.backend);
        return bench_kcache_cuda(dir, OR_STR(depths_s, "4096,16384,32768"), batches, OR_INT(tg, 32),
                                 OR_INT(batch_depth, 32768), ubatch, reps, OR_INT(e2e_max, 4096), &pa, out);
    }
    if (!strcmp(pa.backend, "cuda")) {
        cli_backend("bench", pa.backend);
        if (e2e) return bench_e2e(dir, e2e, e2e_steps, OR_INT(e2e_max, 4096), out);
        /* (--max-batch not given: 0, no cap) */
        return bench_cuda(dir, pps, OR_STR(depths_s, "4096,16384,32768"), OR_STR(batches, "1,8,32"), OR_INT(tg, 128),
                          OR_INT(batch_depth, 1024), ubatch, reps, binv, e2e_max == UNSET ? 0 : e2e_max, &pa, out);
    }
    if (strcmp(pa.backend, "cpu")) cli_backend("bench", pa.backend);
    if (!strcmp(pa.policy, "smallkv")) {
        const int depth = depths_s ? atoi(depths_s) : 1984;
        const int n = OR_INT(tg, 64);
        return bench_smallkv(dir, &pa, budgets, depth, n, reps, threads, use_mmap, out);
    } else if (!strcmp(pa.policy, "kcache")) {
        /* full against kcache (mmap warm, cold, zstd) at one depth (default 1984, tg 64) */
        const int depth = depths_s ? atoi(depths_s) : 1984;
        return bench_kcache(dir, &pa, depth, OR_INT(tg, 64), reps, threads, use_mmap, out);
    } else if (strcmp(pa.policy, "full")) {
        cli_die("bench", 2, "bad value for --policy: '%s' (bench times the full cache, kcache, or smallkv with --draft)", pa.policy);
    }
    tg = OR_INT(tg, 128);
    if (!depths_s) depths_s = "0,1024,1984";
    if (pp < 0 || tg < 0) cli_die("bench", 2, "--pp and --tg must be >= 0");
    skv_model *m = cli_load_model("bench", dir, threads, use_mmap);
    const skv_model_info *in = skv_model_get_info(m);
    if (threads == 0) threads = omp_get_num_procs();
    int depths[16], n_depths = 0;
    for (const char *p = depths_s; *p && n_depths < 16;) {
        char *end;
        long d = strtol(p, &end, 10);
        if (end == p || d < 0 || d >= in->n_ctx || (*end && *end != ','))
            cli_die("bench", 2, "bad value for --depths: '%s' (comma-separated, each < %d)", depths_s, in->n_ctx);
        depths[n_depths++] = (int)d;
        p = *end ? end + 1 : end;
    }
    if (pp > in->n_ctx) cli_die("bench", 2, "bad value for --pp: %d exceeds the context %d", pp, in->n_ctx);

    skv_context *c = NULL;
    skv_context_params cp = skv_context_default_params();
    cp.kv_format = cli_kv_format("bench", &pa);
    cli_check("bench", skv_context_init(m, cp, &c));
    int32_t *buf = malloc((size_t)in->n_ctx * sizeof(int32_t));
    float *logits = malloc((size_t)in->n_vocab * sizeof(float));
    result res[20];
    int n_res = 0;
    if (pp > 0) {
        result *r = &res[n_res++];
        memset(r, 0, sizeof *r);
        snprintf(r->name, sizeof r->name, "pp%d", pp);
        r->n = pp;
        run_once(c, in->n_vocab, pp, 0, 1, buf, logits);
        for (r->reps = 0; r->reps < reps; r->reps++)
            r->samples[r->reps] = run_once(c, in->n_vocab, pp, 0, 1, buf, logits);
        cli_mean_sd(r->samples, r->reps, &r->mean, &r->sd);
    }
    for (int d = 0; tg > 0 && d < n_depths; d++) {
        result *r = &res[n_res++];
        memset(r, 0, sizeof *r);
        r->depth = depths[d];
        r->n = tg < in->n_ctx - depths[d] ? tg : in->n_ctx - depths[d];
        snprintf(r->name, sizeof r->name, "tg%d@d%d", r->n, r->depth);
        run_once(c, in->n_vocab, r->n, r->depth, 0, buf, logits);
        for (r->reps = 0; r->reps < reps; r->reps++)
            r->samples[r->reps] = run_once(c, in->n_vocab, r->n, r->depth, 0, buf, logits);
        cli_mean_sd(r->samples, r->reps, &r->mean, &r->sd);
    }
    /* batched decode (CPU: --batches given) at the first depth */
    int bsz[8], n_bsz = 0;
    if (tg > 0 && batches)
        for (const char *p = batches; *p && n_bsz < 8;) {
            char *end;
            long v = strtol(p, &end, 10);
            if (end == p || v < 1 || v > 256 || (*end && *end != ','))
                cli_die("bench", 2, "bad value for --batches: '%s' (comma-separated, each 1..256)", batches);
            bsz[n_bsz++] = (int)v;
            p = *end ? end + 1 : end;
        }
    for (int k = 0; k < n_bsz && n_res < 20; k++) {
        const int B = bsz[k], depth = depths[0], n = tg < in->n_ctx - depth ? tg : in->n_ctx - depth;
        skv_context **cs = calloc((size_t)B, sizeof *cs);
        float *lg = malloc(sizeof(float) * (size_t)B * (size_t)in->n_vocab);
        int32_t *b2 = malloc(sizeof(int32_t) * (size_t)(in->n_ctx > B ? in->n_ctx : B));
        if (!cs || !lg || !b2) cli_die("bench", 1, "out of memory");
        for (int b = 0; b < B; b++) cli_check("bench", skv_context_init(m, cp, &cs[b]));
        result *r = &res[n_res++];
        memset(r, 0, sizeof *r);
        r->depth = depth, r->n = n, r->batch = B;
        snprintf(r->name, sizeof r->name, "bs%d@d%d", B, depth);
        run_multi(cs, B, in->n_vocab, n, depth, b2, lg);
        for (r->reps = 0; r->reps < reps; r->reps++) r->samples[r->reps] = run_multi(cs, B, in->n_vocab, n, depth, b2, lg);
        cli_mean_sd(r->samples, r->reps, &r->mean, &r->sd);
        for (int b = 0; b < B; b++) skv_context_free(cs[b]);
        free(cs), free(lg), free(b2);
    }
    double bw = copy_bandwidth(threads), rbw = read_bandwidth(threads);
    double g_model = sgemm_gflops(pp > 0 ? pp : 512, in->ffn_dim, in->dim);
    double g_square = sgemm_gflops(1024, 1024, 1024);

    char commit[64], machine[256], path[1300];
    cli_git_commit(commit, sizeof commit);
    cli_machine(machine, sizeof machine);
    const char *base = cli_basename(dir);
    out = cli_bench_out(out, dir, path, sizeof path, "cpu-%s-t%d.json", base, threads);
    const double kv_row_bytes = kv_bytes_per_token(cp.kv_format, in);
    printf("slimkv bench  %s  (%s weights, %.1f MB, %d threads, %s KV cache)  commit %s\n%s\n", base,
           skv_dtype_name(in->weight_dtype),
           in->weight_bytes / 1e6, threads, pa.kv_format, commit, machine);
    printf("%-14s %16s %12s %12s\n", "test", "tokens/s", "copy bound", "read bound");
    FILE *f = cli_bench_json(out);
    fprintf(f, "  \"backend\": \"cpu\",\n  \"model\": \"%s\",\n  \"threads\": %d,\n"
            "  \"kv_format\": \"%s\",\n  \"weight_bytes\": %lld,\n  \"decode_weight_bytes\": %lld,\n  \"kv_bytes_per_token\": %lld,\n"
            "  \"copy_bandwidth_GBps\": %.2f,\n  \"read_bandwidth_GBps\": %.2f,\n  \"sgemm_gflops\": {\"%dx%dx%d\": %.1f, \"1024x1024x1024\": %.1f},\n"
            "  \"results\": [\n",
            base, threads, pa.kv_format, (long long)in->weight_bytes, (long long)in->decode_weight_bytes,
            (long long)llround(kv_row_bytes), bw, rbw, pp > 0 ? pp : 512, in->ffn_dim, in->dim, g_model, g_square);
    for (int i = 0; i < n_res; i++) {
        const result *r = &res[i];
        double bound = 0, rbound = 0;
        if (r->name[0] == 't' || r->batch) {
            /* bytes one step reads: every weight it uses + K and V (in the cache's format) of the
             * average cache length, of each of the step's B sequences */
            const int B = r->batch ? r->batch : 1;
            double step = (double)in->decode_weight_bytes + (double)kv_row_bytes * B * (r->depth + r->n / 2.0);
            bound = B * bw * 1e9 / step;
            rbound = B * rbw * 1e9 / step;
        }
        printf("%-14s %9.1f ± %-5.1f", r->name, r->mean, r->sd);
        if (bound > 0) printf(" %12.1f %12.1f", bound, rbound);
        printf("\n");
        fprintf(f, "    {\"test\": \"%s\", \"n\": %d, \"depth\": %d, \"batch\": %d, \"reps\": %d, \"tps_mean\": %.2f, "
                "\"tps_sd\": %.2f, \"copy_bound_tps\": %.1f, \"read_bound_tps\": %.1f, \"samples\": [",
                r->name, r->n, r->depth, r->batch ? r->batch : 1, r->reps, r->mean, r->sd, bound, rbound);
        for (int k = 0; k < r->reps; k++) fprintf(f, "%s%.2f", k ? ", " : "", r->samples[k]);
        fprintf(f, "]}%s\n", i + 1 < n_res ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    fclose(f);
    printf("copy bandwidth %.1f GB/s (read+write), read bandwidth %.1f GB/s; sgemm %dx%dx%d %.1f "
           "GFLOP/s, 1024^3 %.1f GFLOP/s\n",
           bw, rbw, pp > 0 ? pp : 512, in->ffn_dim, in->dim, g_model, g_square);
    printf("bound = bandwidth / (decode weight bytes + KV bytes read per step); written to %s\n", out);
    free(buf);
    free(logits);
    skv_context_free(c);
    skv_model_free(m);
    return 0;
}
