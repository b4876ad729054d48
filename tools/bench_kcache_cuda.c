/*
 * bench_kcache_cuda.c — `slimkv bench --backend cuda --policy kcache`: KCache on the GPU against
 * the full cache, in one run, timed around public-API calls (each returns after the device has
 * finished).
 *
 * 1. Batch 1: one prefill of the deepest --depths, then at each depth (deepest first, the cache
 *    truncated back) --tg decode steps, full cache and KCache: ms per step, and KCache's V rows
 *    and bytes read over PCIe per step against the host-to-device bandwidth measured here
 *    (pinned memory, cudaMemcpy of 1 GiB).
 *    Then the same steps under each profiling variant (SKV_KC_PROFILE: the scores pass without
 *    writing scores, the scores pass alone, no finish, the finish without the host rows), whose
 *    differences place the time of each stage (their outputs are wrong by design), and three
 *    alternatives: the pipeline of run 4, the finish with more host reads in flight, two
 *    overlapped chunks (g_prof).
 * 2. The largest batch at --batch-depth: the full cache's is found by creating contexts from an
 *    estimate down until one fits in HBM; KCache's needs HBM for K (and a ring of newest V
 *    rows) and pinned host memory for V, so it is the smaller of the HBM estimate and what the
 *    host's MemAvailable allows (75 %) (both at most --max-batch), again stepped down until a
 *    context is created. Each context prefills sequence 0 once and copies it into the others
 *    (skv_seq_copy), then decodes --tg steps of every sequence together; tokens/s at that batch
 *    (and at --batches values below it, for the full cache's curve).
 */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAXD 8
#define MAXB 8

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

typedef struct krow {
    int depth, batch, kc;
    const char *prof;        /* a profiling variant (SKV_KC_PROFILE: stages left out) or "" */
    double ms[64], mean, sd; /* per step */
    int reps;
    double rows, bytes;      /* V rows and bytes read over PCIe per step (all sequences) */
} krow;

static int parse(const char *flag, const char *s, int *out, int max) {
    int n = 0;
    for (const char *p = s; *p && n < max;) {
        char *end;
        const long v = strtol(p, &end, 10);
        if (end == p || v <= 0 || (*end && *end != ',')) cli_die("bench", 2, "bad value for %s: '%s' (positive counts)", flag, s);
        out[n++] = (int)v;
        p = *end ? end + 1 : end;
    }
    return n;
}

static skv_context *make(skv_model *m, int n_ctx, int ub, int n_seq, const skv_policy_params *p, skv_status *st) {
    skv_context_params cp = skv_context_default_params();
    cp.backend = SKV_BACKEND_CUDA, cp.n_ctx = n_ctx, cp.n_batch = ub, cp.n_seq = n_seq, cp.policy = *p;
    skv_context *c = NULL;
    *st = skv_context_init(m, cp, &c);
    return c;
}

/* "direct" first: the default pipeline of bench/cuda/kcache-h200/run5 (the finish reads the
 * selected rows from host memory itself, no gather kernel), for old against new in one run;
 * then the stage variants (outputs wrong by design: timing by differences); then alternatives
 * (right outputs): "chunks2", "chunks4" the KV heads in two or four chunks whose gather and
 * finish overlap the next chunk's scores pass and selection, "g4", "g16", "g32" the gather
 * kernel with 4, 16, 32 blocks instead of 8. (SKV_KC_PROFILE also knows prev, prevscores,
 * prevselect, oldscores and fin8, slower in runs 4 and 5; not timed here, to keep the run short.) */
#define NPROF 10
static const char *g_prof[NPROF] = {"direct", "nodsc", "scores", "select", "fast", "chunks2", "chunks4", "g4", "g16", "g32"};

/* the profiling variants of KCache at (B, depth), each a row */
static void profile_rows(skv_context *c, int B, int depth, int tg, int reps, int32_t V, int hd, krow *rows, int *nr);

static int64_t mem_available(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    long long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lld kB", &kb) == 1) break;
    if (f) fclose(f);
    return kb < 0 ? -1 : (int64_t)kb * 1024;
}

static void fetched(const skv_context *c, double *rows) {
    skv_kv_usage u;
    skv_context_kv_usage(c, &u);
    *rows = (double)u.fetch_rows;
}

/* tg steps of sequences 0..B-1 (ids fed back), reps timed after one warm-up; each repetition
 * starts from the same depth */
static void time_steps(skv_context *c, int B, int depth, int tg, int reps, int32_t V, krow *r, int hd) {
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)B);
    for (int k = -1; k < reps; k++) {
        for (int s = 0; s < B; s++) {
            ids[s] = cli_rand_id(&g_rng, V);
            cli_check("bench", skv_seq_truncate(c, s, depth));
        }
        double r0, r1;
        fetched(c, &r0);
        const double t0 = skv_time_now();
        for (int t = 0; t < tg; t++) {
            if (B == 1) cli_check("bench", skv_decode(c, ids, 1, NULL, 0));
            else cli_check("bench", skv_decode_batch(c, ids, B, NULL, ids));
            if (B == 1) ids[0] = cli_rand_id(&g_rng, V);
        }
        const double ms = (skv_time_now() - t0) * 1e3 / tg;
        fetched(c, &r1);
        if (k >= 0) r->ms[r->reps++] = ms, r->rows = (r1 - r0) / tg, r->bytes = r->rows * hd * 2;
    }
    cli_mean_sd(r->ms, r->reps, &r->mean, &r->sd);
    for (int s = 0; s < B; s++) cli_check("bench", skv_seq_truncate(c, s, depth));
    free(ids);
}

static void profile_rows(skv_context *c, int B, int depth, int tg, int reps, int32_t V, int hd, krow *rows, int *nr) {
    for (int i = 0; i < NPROF; i++) {
        setenv("SKV_KC_PROFILE", g_prof[i], 1);
        krow *r = &rows[(*nr)++];
        memset(r, 0, sizeof *r);
        r->depth = depth, r->batch = B, r->kc = 1, r->prof = g_prof[i];
        time_steps(c, B, depth, tg, reps, V, r, hd);
        printf("  bs%-4d d%-6d kcache profile %-7s %8.3f ms/step\n", B, depth, g_prof[i], r->mean);
    }
    unsetenv("SKV_KC_PROFILE");
}

/* prefill sequence 0 with n ids, copy it into 1..B-1 */
static double fill(skv_context *c, const int32_t *ids, int n, int B) {
    const double t0 = skv_time_now();
    cli_check("bench", skv_seq_decode(c, 0, ids, n));
    for (int s = 1; s < B; s++) cli_check("bench", skv_seq_copy(c, s, 0));
    return skv_time_now() - t0;
}

/* The full cache's best at batch B: the same steps with more attention splits per row
 * (SKV_CUDA_ATT_WAVES: waves of split blocks on the chip, default 4; read when a context is made),
 * each a row "full-wavesW" that counts towards the full cache's best throughput. */
static void full_wave_rows(skv_model *m, int n_ctx, int ub, int B, int depth, int tg, int reps, int32_t V, int hd,
                           const int32_t *ids, krow *rows, int *nr) {
    static const char *waves[] = {"waves8", "waves16", "waves32", "waves64", "waves128"};
    const skv_policy_params fp = skv_policy_default_params("full");
    const char *was = getenv("SKV_CUDA_ATT_WAVES");
    for (int i = 0; i < 5; i++) {
        setenv("SKV_CUDA_ATT_WAVES", waves[i] + 5, 1);
        skv_status st;
        skv_context *c = make(m, n_ctx, ub, B, &fp, &st);
        if (!c) cli_check("bench", st);
        fill(c, ids, depth, B);
        krow *r = &rows[(*nr)++];
        memset(r, 0, sizeof *r);
        r->depth = depth, r->batch = B, r->kc = 0, r->prof = waves[i];
        time_steps(c, B, depth, tg, reps, V, r, hd);
        printf("  bs%-4d d%-6d full %-7s %8.3f ms/step %10.1f tokens/s\n", B, depth, waves[i], r->mean, B / (r->mean / 1e3));
        skv_context_free(c);
    }
    if (was) setenv("SKV_CUDA_ATT_WAVES", was, 1);
    else unsetenv("SKV_CUDA_ATT_WAVES");
}

int bench_kcache_cuda(const char *dir, const char *depths_s, const char *batches_s, int tg, int batch_depth, int ubatch,
                      int reps, int max_batch, const cli_policy_args *pa, const char *out) {
    int depths[MAXD], batches[MAXB];
    const int n_d = parse("--depths", depths_s, depths, MAXD), n_b = batches_s ? parse("--batches", batches_s, batches, MAXB) : 0;
    if (tg < 1 || reps < 1 || reps > 64 || ubatch < 1 || batch_depth < 1 || max_batch < 1)
        cli_die("bench", 2, "--tg, --ubatch, --batch-depth, --max-batch must be >= 1 and --reps 1..64");
    skv_model *m = cli_load_model("bench", dir, 0, 1);
    const skv_model_info *in = skv_model_get_info(m);
    const int V = in->n_vocab, hd = in->head_dim;
    skv_device_info dev;
    cli_check("bench", skv_backend_device_info(SKV_BACKEND_CUDA, &dev));
    double bw = 0, h2d = 0;
    cli_check("bench", skv_backend_copy_bandwidth(SKV_BACKEND_CUDA, (int64_t)1 << 30, &bw));
    cli_check("bench", skv_backend_h2d_bandwidth(SKV_BACKEND_CUDA, (int64_t)1 << 30, &h2d));
    const skv_policy_params kp = cli_policy_params("bench", pa, "kcache", m), fp = skv_policy_default_params("full");
    int maxd = batch_depth;
    for (int i = 0; i < n_d; i++) maxd = depths[i] > maxd ? depths[i] : maxd;
    if (maxd + tg > in->n_ctx) cli_die("bench", 2, "a test needs %d positions; the model has %d", maxd + tg, in->n_ctx);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)maxd);
    for (int i = 0; i < maxd; i++) ids[i] = cli_rand_id(&g_rng, V);
    for (int i = 0; i < n_d; i++) /* deepest first */
        for (int j = i + 1; j < n_d; j++)
            if (depths[j] > depths[i]) {
                const int t = depths[i];
                depths[i] = depths[j], depths[j] = t;
            }
    krow rows[2 * MAXD + 2 * MAXB + 2 + 2 * NPROF + 3];
    int nr = 0;
    skv_status st;
    int64_t wbytes = 0;
    /* 1. batch 1 */
    for (int kc = 0; kc < 2 && n_d > 0; kc++) {
        skv_context *c = make(m, depths[0] + tg, ubatch, 1, kc ? &kp : &fp, &st);
        if (!c) cli_check("bench", st);
        wbytes = skv_context_weight_bytes(c);
        cli_check("bench", skv_decode(c, ids, depths[0], NULL, 0));
        for (int i = 0; i < n_d; i++) {
            krow *r = &rows[nr++];
            memset(r, 0, sizeof *r);
            r->depth = depths[i], r->batch = 1, r->kc = kc;
            time_steps(c, 1, depths[i], tg, reps, V, r, hd);
            printf("  bs1 d%-6d %-7s %8.3f ms/step  PCIe %.0f rows %.2f MB/step\n", depths[i], kc ? "kcache" : "full",
                   r->mean, r->rows, r->bytes / 1e6);
        }
        if (kc) {
            if (depths[0] > depths[n_d - 1]) { /* back to the deepest (a single depth: there already) */
                cli_check("bench", skv_context_truncate(c, depths[n_d - 1]));
                cli_check("bench", skv_decode(c, ids + depths[n_d - 1], depths[0] - depths[n_d - 1], NULL, 0));
            }
            profile_rows(c, 1, depths[0], tg, reps, V, hd, rows, &nr);
        }
        skv_context_free(c);
    }
    /* 2. the largest batch at batch_depth */
    const int64_t n_ctx2 = batch_depth + tg, blocks = (n_ctx2 + 63) / 64 * 64;
    const int64_t half = (int64_t)skv_model_n_cache_layers(m) * in->n_kv_head * hd * 2 * blocks; /* K or V of one sequence */
    const int64_t avail_hbm = dev.memory_bytes - wbytes - ((int64_t)6 << 30);
    const int64_t host = mem_available();
    int b_full = 0, b_kc = 0, b_kc_hbm = (int)((avail_hbm - half) / (half + half / 40)), b_kc_host = host > 0 ? (int)(host * 0.75 / half) : -1;
    double fill_full = 0, fill_kc = 0, make_s[2] = {0, 0};
    for (int kc = 0; kc < 2; kc++) {
        int B = kc ? (b_kc_host > 0 && b_kc_host < b_kc_hbm ? b_kc_host : b_kc_hbm) : (int)(avail_hbm / (2 * half)) + 2;
        if (B > max_batch) B = max_batch;
        skv_context *c = NULL;
        const double t_make = skv_time_now();
        for (; B >= 1 && !c; B--) c = make(m, (int)n_ctx2, ubatch, B, kc ? &kp : &fp, &st);
        if (!c) cli_check("bench", st);
        B++;
        make_s[kc] = skv_time_now() - t_make; /* (KCache: mostly pinning the host memory for V) */
        printf("  bs%-4d d%-6d %-7s context made in %.1f s\n", B, batch_depth, kc ? "kcache" : "full", make_s[kc]);
        if (kc) b_kc = B;
        else b_full = B;
        const double fs = fill(c, ids, batch_depth, B);
        if (kc) fill_kc = fs;
        else fill_full = fs;
        int bs[MAXB + 1], nbs = 0;
        for (int i = 0; i < n_b; i++)
            if (batches[i] < B) bs[nbs++] = batches[i];
        bs[nbs++] = B;
        for (int i = 0; i < nbs; i++) {
            krow *r = &rows[nr++];
            memset(r, 0, sizeof *r);
            r->depth = batch_depth, r->batch = bs[i], r->kc = kc;
            time_steps(c, bs[i], batch_depth, tg, reps, V, r, hd);
            printf("  bs%-4d d%-6d %-7s %8.3f ms/step %10.1f tokens/s  PCIe %.2f MB/step\n", bs[i], batch_depth,
                   kc ? "kcache" : "full", r->mean, bs[i] / (r->mean / 1e3), r->bytes / 1e6);
        }
        if (kc) profile_rows(c, B, batch_depth, tg, reps, V, hd, rows, &nr);
        skv_context_free(c);
        if (!kc) full_wave_rows(m, (int)n_ctx2, ubatch, B, batch_depth, tg, reps, V, hd, ids, rows, &nr);
    }
    double best_full = 0, best_kc = 0;
    for (int i = 0; i < nr; i++) {
        const double tps = rows[i].batch / (rows[i].mean / 1e3);
        if (rows[i].depth != batch_depth || rows[i].batch == 1 || (rows[i].prof && rows[i].kc)) continue;
        if (rows[i].kc) best_kc = tps > best_kc ? tps : best_kc;
        else best_full = tps > best_full ? tps : best_full;
    }
    char path[1300];
    const char *base = cli_basename(dir);
    out = cli_bench_out(out, dir, path, sizeof path, "kcache-cuda-%s.json", base);
    FILE *f = cli_bench_json(out);
    fprintf(f, "  \"backend\": \"cuda\",\n  \"device\": \"%s\",\n  \"device_memory_bytes\": %lld,\n  \"model\": \"%s\",\n"
            "  \"gpu_weight_bytes\": %lld,\n  \"copy_bandwidth_GBps\": %.1f,\n  \"h2d_bandwidth_GBps\": %.2f,\n"
            "  \"kc_n\": \"%s\",\n  \"kc_recent\": %d,\n  \"kc_fast_layers\": %d,\n  \"kc_weight\": \"%s\",\n"
            "  \"kc_gran\": \"%s\",\n  \"tg\": %d,\n  \"batch_depth\": %d,\n  \"kv_bytes_per_seq_full\": %lld,\n"
            "  \"max_batch_full\": %d,\n  \"max_batch_kcache\": %d,\n  \"kcache_hbm_estimate\": %d,\n"
            "  \"kcache_host_limit\": %d,\n  \"host_mem_available\": %lld,\n  \"fill_seconds_full\": %.2f,\n"
            "  \"fill_seconds_kcache\": %.2f,\n  \"context_seconds_full\": %.2f,\n  \"context_seconds_kcache\": %.2f,\n"
            "  \"best_tokens_per_s_full\": %.1f,\n  \"best_tokens_per_s_kcache\": %.1f,\n"
            "  \"speedup\": %.3f,\n"
            "  \"timing\": \"wall clock around public-API calls (each returns after the device finishes)\",\n"
            "  \"results\": [\n", dev.name, (long long)dev.memory_bytes, base, (long long)wbytes, bw / 1e9, h2d / 1e9,
            pa->kc_n, kp.kc_recent, kp.kc_fast_layers, pa->kc_weight, pa->kc_gran, tg, batch_depth, (long long)(2 * half),
            b_full, b_kc, b_kc_hbm, b_kc_host, (long long)host, fill_full, fill_kc, make_s[0], make_s[1], best_full, best_kc,
            best_full > 0 ? best_kc / best_full : 0.0);
    printf("slimkv bench --backend cuda --policy kcache  %s on %s  host-to-device %.1f GB/s, device copy %.0f GB/s\n", base,
           dev.name, h2d / 1e9, bw / 1e9);
    printf("%-15s %-7s %6s %12s %12s %12s %12s %10s\n", "config", "batch", "depth", "ms/step", "tokens/s", "PCIe MB/step",
           "PCIe ms@h2d", "rows/step");
    for (int i = 0; i < nr; i++) {
        const krow *r = &rows[i];
        const double tps = r->batch / (r->mean / 1e3), pcie_ms = r->bytes / h2d * 1e3;
        char name[32];
        snprintf(name, sizeof name, "%s%s%s", r->kc ? "kcache" : "full", r->prof ? "-" : "", r->prof ? r->prof : "");
        printf("%-15s %-7d %6d %7.3f±%-4.3f %12.1f %12.3f %12.3f %10.0f\n", name, r->batch, r->depth,
               r->mean, r->sd, tps, r->bytes / 1e6, pcie_ms, r->rows);
        fprintf(f, "    {\"config\": \"%s\", \"batch\": %d, \"depth\": %d, \"reps\": %d, \"ms_per_step\": %.4f, "
                "\"ms_sd\": %.4f, \"tokens_per_s\": %.1f, \"pcie_rows_per_step\": %.1f, \"pcie_bytes_per_step\": %.0f, "
                "\"pcie_ms_at_h2d\": %.4f, \"ms\": [", name, r->batch, r->depth, r->reps, r->mean,
                r->sd, tps, r->rows, r->bytes, pcie_ms);
        for (int k = 0; k < r->reps; k++) fprintf(f, "%s%.4f", k ? ", " : "", r->ms[k]);
        fprintf(f, "]}%s\n", i + 1 < nr ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    fclose(f);
    printf("largest batch at depth %d: full %d, kcache %d (HBM estimate %d, host memory limit %d); best tokens/s full "
           "%.1f, kcache %.1f (x%.3f)\nwritten to %s\n", batch_depth, b_full, b_kc, b_kc_hbm, b_kc_host, best_full,
           best_kc, best_full > 0 ? best_kc / best_full : 0.0, out);
    free(ids);
    skv_model_free(m);
    return 0;
}
