/*
 * bench_cuda.c — `slimkv bench --backend cuda`: speed on the GPU, timed with CUDA events.
 *
 * pp<P>: prefill P random tokens from position 0 in chunks of --ubatch. tg<N>@d<D>: N
 * single-token steps starting at position D of a cache filled by one prefill of the deepest D
 * (keys < D are real data; each step reads D + i keys). bs<B>@d<D>: N steps of B sequences
 * decoded together (greedy ids fed back), each prefilled with D tokens. One warm-up run, then
 * R timed repetitions; means and standard deviations. Next to decode: the HBM bound, (weight
 * bytes read per step + K/V bytes of the average cache length) / measured device copy
 * bandwidth (bytes read + written per second). With --policy other than full, the tg rows run
 * under it: the prompt is compressed to the budget after its prefill (statistics collected
 * as the policy needs), steps evict as the policy does, and the bound counts the kept K/V; so
 * do the bs rows (each sequence's prompt in one call, compressed at its end; each repetition
 * truncates the decoded tokens away, what the steps evicted from the prompt stays evicted).
 * Everything goes through the public API (slimkv.h); every call returns after the device has
 * finished, so wall-clock time around the calls is the device time plus the host's overhead.
 */
#include "cli.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAXR 16

typedef struct crow {
    char name[40];
    int kind; /* 0 pp, 1 tg, 2 batch */
    int n, depth, batch, reps;
    double ms[64];     /* per repetition: whole test */
    double mean, sd;   /* ms */
    double bound_ms;   /* decode: per step */
    double kept;       /* tg: K/V rows per stream after the policy's compression */
} crow;

static uint64_t g_rng = 0x2545f4914f6cdd1dull;
static int32_t rid(int32_t V) { return cli_rand_id(&g_rng, V); }

static int parse_list(const char *cmd, const char *flag, const char *s, int *out, int max) {
    int n = 0;
    for (const char *p = s; *p && n < max;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || (*end && *end != ','))
            cli_die(cmd, 2, "bad value for %s: '%s' (comma-separated counts)", flag, s);
        if (v > 0) out[n++] = (int)v;
        p = *end ? end + 1 : end;
    }
    return n;
}

/* prefill ids[0..n) into sequence seq from position 0, in chunks of ub */
static void prefill(skv_context *c, int seq, const int32_t *ids, int n, int ub) {
    cli_check("bench", skv_seq_truncate(c, seq, 0));
    for (int off = 0; off < n; off += ub) cli_check("bench", skv_seq_decode(c, seq, ids + off, n - off < ub ? n - off : ub));
}

static int binv_mode; /* bench_cuda's binv, for every context it makes */
static skv_kv_format bench_fmt = SKV_KV_F32; /* --kv-format: bf16 (f32 stored as bf16), int8, int4 */

static skv_status try_context(skv_model *m, int n_ctx, int ubatch, int n_seq, const skv_policy_params *pol,
                              skv_context **c) {
    skv_context_params cp = skv_context_default_params();
    cp.backend = SKV_BACKEND_CUDA, cp.kv_format = bench_fmt;
    cp.batch_invariant = binv_mode;
    cp.n_ctx = n_ctx, cp.n_batch = ubatch, cp.n_seq = n_seq;
    if (pol) cp.policy = *pol;
    *c = NULL;
    return skv_context_init(m, cp, c);
}

static skv_context *context(skv_model *m, int n_ctx, int ubatch, int n_seq, const skv_policy_params *pol) {
    skv_context *c = NULL;
    cli_check("bench", try_context(m, n_ctx, ubatch, n_seq, pol, &c));
    return c;
}

int bench_cuda(const char *dir, const char *pp_s, const char *depths_s, const char *batch_s, int tg, int batch_depth,
               int ubatch, int reps, int binv, int fit_max, const cli_policy_args *pa, const char *out) {
    binv_mode = binv;
    int pps[MAXR], depths[MAXR], batches[MAXR];
    const int n_pp = parse_list("bench", "--pp", pp_s, pps, MAXR);
    const int n_d = parse_list("bench", "--depths", depths_s, depths, MAXR);
    const int n_b = parse_list("bench", "--batches", batch_s, batches, MAXR);
    if (tg < 1 || ubatch < 1 || reps < 1 || reps > 64 || batch_depth < 1)
        cli_die("bench", 2, "--tg, --ubatch, --batch-depth must be >= 1 and --reps 1..64");
    bench_fmt = cli_kv_format("bench", pa);
    skv_model *m = cli_load_model("bench", dir, 0, 1);
    const skv_model_info *in = skv_model_get_info(m);
    skv_device_info dev;
    cli_check("bench", skv_backend_device_info(SKV_BACKEND_CUDA, &dev));
    double bw = 0;
    cli_check("bench", skv_backend_copy_bandwidth(SKV_BACKEND_CUDA, (int64_t)1 << 30, &bw));
    int max_len = 1;
    for (int i = 0; i < n_pp; i++) max_len = pps[i] > max_len ? pps[i] : max_len;
    for (int i = 0; i < n_d; i++) max_len = depths[i] + tg > max_len ? depths[i] + tg : max_len;
    if (max_len > in->n_ctx) cli_die("bench", 2, "a test needs %d positions; the model has %d", max_len, in->n_ctx);
    skv_policy_params pp = cli_policy_params("bench", pa, NULL, m);
    if (!strcmp(pp.name, "quant") || !strcmp(pp.name, "smallkv"))
        cli_die("bench", 2, "bad value for --policy with --backend cuda: '%s' (a policy that evicts, or full)", pa->policy);
    const int evicts = skv_policy_evicts(pp.name);
    const double t_up = skv_time_now();
    skv_context *c = context(m, max_len, ubatch, 1, NULL); /* the first CUDA context uploads the model */
    const double upload_s = skv_time_now() - t_up;
    /* bytes one decode step reads: every matrix but the embedding table (one row of it) */
    const int64_t gw = skv_context_weight_bytes(c);
    /* (GGUF's quantized weights stay in their format on the GPU: the file's bytes less the table) */
    const int64_t wbytes = in->weight_dtype >= SKV_DTYPE_Q4_0
                               ? in->decode_weight_bytes
                               : gw - (int64_t)in->n_vocab * in->dim * 2 * !in->tied_embeddings;
    const int kbits = bench_fmt == SKV_KV_Q8 ? 8 : bench_fmt == SKV_KV_Q4 ? 4 : 0;
    /* bytes per token per (layer, KV head): bf16 K and V, or KIVI's codes and f32 scales and
     * minima (a key group's 2 hd floats per 32 tokens, a token's 2 per 32 channels) */
    const int64_t kv_tok = (int64_t)skv_model_n_cache_layers(m) * in->n_kv_head *
                           (kbits ? in->head_dim / 2 + 2 * (int64_t)in->head_dim * kbits / 8 : (int64_t)in->head_dim * 4);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)max_len);
    for (int i = 0; i < max_len; i++) ids[i] = rid(in->n_vocab);

    crow rows[3 * MAXR];
    int nr = 0;
    for (int i = 0; i < n_pp; i++) {
        crow *r = &rows[nr++];
        memset(r, 0, sizeof *r);
        snprintf(r->name, sizeof r->name, "pp%d", pps[i]);
        r->n = pps[i];
        for (int k = -1; k < reps; k++) {
            const double t0 = skv_time_now();
            prefill(c, 0, ids, pps[i], ubatch);
            const double ms = (skv_time_now() - t0) * 1e3;
            if (k >= 0) r->ms[r->reps++] = ms;
        }
        cli_mean_sd(r->ms, r->reps, &r->mean, &r->sd);
    }
    if (n_d > 0 && evicts) { /* the tg rows under the policy */
        skv_context_free(c);
        c = context(m, max_len, ubatch, 1, &pp);
    }
    for (int i = 0; i < n_d; i++) {
        /* one call per prompt: its observation window and compression as a user's prompt */
        cli_check("bench", skv_context_truncate(c, 0));
        cli_check("bench", skv_decode(c, ids, depths[i], NULL, 0));
        skv_kv_usage u;
        skv_context_kv_usage(c, &u);
        const double kept = (double)u.slots / ((double)skv_model_n_cache_layers(m) * in->n_kv_head);
        crow *r = &rows[nr++];
        memset(r, 0, sizeof *r);
        r->kind = 1, r->n = tg, r->depth = depths[i], r->batch = 1;
        snprintf(r->name, sizeof r->name, "tg%d@d%d", tg, depths[i]);
        for (int k = -1; k < reps; k++) {
            cli_check("bench", skv_context_truncate(c, depths[i]));
            const double t0 = skv_time_now();
            for (int s = 0; s < tg; s++) {
                const int32_t id = ids[(depths[i] + s) % max_len];
                cli_check("bench", skv_decode(c, &id, 1, NULL, 0));
            }
            const double ms = (skv_time_now() - t0) * 1e3;
            if (k >= 0) r->ms[r->reps++] = ms;
        }
        cli_mean_sd(r->ms, r->reps, &r->mean, &r->sd);
        r->kept = kept;
        const int per_step = evicts == 2; /* policies that evict every step hold the budget */
        r->bound_ms = ((double)wbytes + (double)kv_tok * (kept + (per_step ? 0.5 : tg / 2.0))) / bw * 1e3;
    }
    skv_context_free(c);
    int fit = 0; /* the largest batch whose context of max_len tokens (the longest test) allocates */
    if (fit_max > 0) {
        int lo = 0, hi = fit_max;
        while (lo < hi) {
            const int mid = lo + (hi - lo + 1) / 2;
            skv_context *t = NULL;
            if (try_context(m, max_len, ubatch, mid, NULL, &t) == SKV_OK) lo = mid;
            else hi = mid - 1;
            skv_context_free(t);
        }
        fit = lo;
        printf("fit: %d sequences of %d tokens (at most %d tried)\n", fit, max_len, fit_max);
    }
    int bmax = 0;
    for (int i = 0; i < n_b; i++) bmax = batches[i] > bmax ? batches[i] : bmax;
    if (bmax > 0) {
        c = context(m, batch_depth + tg, ubatch, bmax, evicts ? &pp : NULL);
        int32_t *bid = malloc(sizeof(int32_t) * (size_t)bmax), *pr = malloc(sizeof(int32_t) * (size_t)batch_depth);
        for (int s = 0; s < bmax; s++) {
            for (int i = 0; i < batch_depth; i++) pr[i] = rid(in->n_vocab);
            if (evicts) cli_check("bench", skv_seq_decode(c, s, pr, batch_depth)); /* one prompt: one compression */
            else prefill(c, s, pr, batch_depth, ubatch);
        }
        for (int i = 0; i < n_b; i++) {
            const int B = batches[i];
            crow *r = &rows[nr++];
            memset(r, 0, sizeof *r);
            r->kind = 2, r->n = tg, r->depth = batch_depth, r->batch = B;
            snprintf(r->name, sizeof r->name, "bs%d@d%d", B, batch_depth);
            for (int k = -1; k < reps; k++) {
                for (int s = 0; s < B; s++) {
                    bid[s] = rid(in->n_vocab);
                    cli_check("bench", skv_seq_truncate(c, s, batch_depth));
                }
                const double t0 = skv_time_now();
                for (int t = 0; t < tg; t++) cli_check("bench", skv_decode_batch(c, bid, B, NULL, bid));
                const double ms = (skv_time_now() - t0) * 1e3;
                if (k >= 0) r->ms[r->reps++] = ms;
            }
            cli_mean_sd(r->ms, r->reps, &r->mean, &r->sd);
            double rows_kept = batch_depth + tg / 2.0; /* K/V rows per sequence and stream read per step */
            if (evicts) { /* what the sequences hold after the steps (the kept prompt, plus decoded rows) */
                skv_kv_usage u;
                skv_context_kv_usage(c, &u);
                rows_kept = (double)u.slots / ((double)skv_model_n_cache_layers(m) * in->n_kv_head * bmax);
                r->kept = rows_kept;
            }
            r->bound_ms = ((double)wbytes + (double)kv_tok * B * rows_kept) / bw * 1e3;
        }
        skv_context_free(c);
        free(bid), free(pr);
    }

    char path[1300];
    const char *base = cli_basename(dir);
    out = cli_bench_out(out, dir, path, sizeof path, "cuda-%s.json", base);
    FILE *f = cli_bench_json(out);
    fprintf(f, "  \"backend\": \"cuda\",\n  \"device\": \"%s\",\n  \"sms\": %d,\n  \"device_memory_bytes\": %lld,\n"
            "  \"model\": \"%s\",\n  \"gpu_weight_bytes\": %lld,\n  \"decode_weight_bytes\": %lld,\n"
            "  \"kv_bytes_per_token\": %lld,\n  \"copy_bandwidth_GBps\": %.1f,\n  \"upload_seconds\": %.2f,\n"
            "  \"timing\": \"wall clock around public-API calls (each returns after the device finishes)\",\n"
            "  \"ubatch\": %d,\n  \"batch_invariant\": %d,\n  \"tg_policy\": \"%s\",\n  \"tg_budget\": %g,\n  \"kv_format\": \"%s\",\n"
            "  \"fit_batch\": %d,\n  \"fit_tokens\": %d,\n  \"fit_max\": %d,\n  \"results\": [\n",
            dev.name, dev.sms, (long long)dev.memory_bytes, base, (long long)gw, (long long)wbytes, (long long)kv_tok,
            bw / 1e9, upload_s, ubatch, binv, pa->policy, !evicts ? 1.0 : (double)pp.budget, kbits == 8 ? "int8" : kbits == 4 ? "int4" : "bf16",
            fit, max_len, fit_max);
    printf("slimkv bench --backend cuda  %s  on %s (%d SMs)  copy bandwidth %.0f GB/s  weights %.2f GB  KV cache %s "
           "(%lld bytes/token)\n", base, dev.name, dev.sms, bw / 1e9, gw / 1e9, kbits == 8 ? "int8" : kbits == 4 ? "int4" : "bf16",
           (long long)kv_tok);
    printf("%-16s %12s %14s %12s %10s\n", "test", "ms", "tokens/s", "bound ms/tok", "x bound");
    for (int i = 0; i < nr; i++) {
        const crow *r = &rows[i];
        const double toks = r->kind == 0 ? r->n : (double)r->n * (r->batch ? r->batch : 1);
        const double per = r->kind ? r->mean / r->n : 0;
        printf("%-16s %7.2f±%-5.2f %14.1f", r->name, r->mean, r->sd, toks / (r->mean / 1e3));
        if (r->kind) printf(" %12.3f %10.3f", r->bound_ms, per / r->bound_ms);
        printf("\n");
        fprintf(f, "    {\"test\": \"%s\", \"n\": %d, \"depth\": %d, \"batch\": %d, \"reps\": %d, \"ms_mean\": %.3f, "
                "\"ms_sd\": %.3f, \"tokens_per_s\": %.1f, \"ms_per_step\": %.4f, \"bound_ms_per_step\": %.4f, "
                "\"kept_rows\": %.1f, \"ms\": [", r->name, r->n, r->depth, r->batch, r->reps, r->mean, r->sd,
                toks / (r->mean / 1e3), per, r->bound_ms, r->kind == 1 ? r->kept : 0.0);
        for (int k = 0; k < r->reps; k++) fprintf(f, "%s%.3f", k ? ", " : "", r->ms[k]);
        fprintf(f, "]}%s\n", i + 1 < nr ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    fclose(f);
    printf("written to %s\n", out);
    free(ids);
    skv_model_free(m);
    return 0;
}
