/*
 * bench_kcache.c — `slimkv bench --policy kcache`: decode speed of KCache against the full
 * cache at one context depth, with the slow V store as a memory-mapped file (page cache warm;
 * cold: the file's pages dropped before every step) and as zstd blocks.
 *
 * For each configuration: prefill D random tokens (untimed), then N single-token decode steps,
 * timed; one warm-up of each, then R rounds that run every configuration in turn (paired, so that
 * the shared machine's load changes fall on all alike); the load average at start and end. Per
 * step (from the context's counters): V rows and bytes read from the store, zstd blocks touched,
 * time spent reading (summed over threads).
 * Cold steps also pay for dropping the pages (msync, madvise, posix_fadvise DONTNEED) in
 * tokens/s; the read time counts only the reads.
 */
#include "cli.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

typedef struct kc_row {
    const char *name;
    int kcache, store, cold;
    double tps[64], mean, sd;
    double ratio; /* median over the paired rounds of tokens/s over the full cache's */
    int reps;
    skv_kv_usage u;
} kc_row;

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static uint64_t g_rng = 0x2545f4914f6cdd1dull;
static int32_t rand_id(int32_t V) { return cli_rand_id(&g_rng, V); }

static double once(skv_model *m, const skv_policy_params *pol, int depth, int n, float *lg, int32_t *buf,
                   skv_kv_usage *u) {
    const int32_t V = skv_model_get_info(m)->n_vocab;
    for (int i = 0; i < depth; i++) buf[i] = rand_id(V);
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = depth + n;
    cp.policy = *pol;
    skv_context *c = NULL;
    cli_check("bench", skv_context_init(m, cp, &c));
    cli_check("bench", skv_decode(c, buf, depth, lg, 0));
    const double t0 = skv_time_now();
    for (int i = 0; i < n; i++) {
        int32_t id = rand_id(V);
        cli_check("bench", skv_decode(c, &id, 1, lg, 0));
    }
    const double dt = skv_time_now() - t0;
    skv_context_kv_usage(c, u);
    skv_context_free(c);
    return n / dt;
}

int bench_kcache(const char *dir, const cli_policy_args *pa, int depth, int n, int reps, int threads, int use_mmap,
                 const char *out) {
    skv_model *m = cli_load_model("bench", dir, threads, use_mmap);
    const skv_model_info *in = skv_model_get_info(m);
    if (threads == 0) threads = omp_get_num_procs();
    if (depth < 1 || n < 1 || depth + n > in->n_ctx)
        cli_die("bench", 2, "kcache: depth %d + tg %d must fit the context (%d)", depth, n, in->n_ctx);
    if (reps < 1 || reps > 64) cli_die("bench", 2, "bad value for --reps: %d (1 to 64)", reps);
    const skv_policy_params kp = cli_policy_params("bench", pa, "kcache", m);
    kc_row rows[] = {
        {.name = "full"},
        {.name = "kcache-mmap-warm", .kcache = 1, .store = SKV_KC_MMAP},
        {.name = "kcache-mmap-cold", .kcache = 1, .store = SKV_KC_MMAP, .cold = 1},
        {.name = "kcache-zstd", .kcache = 1, .store = SKV_KC_ZSTD},
    };
    const int n_rows = (int)(sizeof rows / sizeof rows[0]);
    float *lg = malloc(sizeof(float) * (size_t)in->n_vocab);
    int32_t *buf = malloc(sizeof(int32_t) * (size_t)depth);
    skv_policy_params ps[4];
    for (int r = 0; r < n_rows; r++) {
        ps[r] = skv_policy_default_params("full");
        if (rows[r].kcache) {
            ps[r] = kp;
            ps[r].kc_store = rows[r].store;
            ps[r].kc_cold = rows[r].cold;
        }
    }
    /* paired: one warm-up of each configuration, then repetition k of every configuration in
     * turn, so that a change of the shared machine's load falls on all of them alike */
    double load0[3] = {-1, -1, -1}, load1[3] = {-1, -1, -1};
    getloadavg(load0, 3);
    for (int r = 0; r < n_rows; r++) once(m, &ps[r], depth, n, lg, buf, &rows[r].u);
    for (int k = 0; k < reps; k++)
        for (int r = 0; r < n_rows; r++) rows[r].tps[rows[r].reps++] = once(m, &ps[r], depth, n, lg, buf, &rows[r].u);
    for (int r = 0; r < n_rows; r++) {
        cli_mean_sd(rows[r].tps, rows[r].reps, &rows[r].mean, &rows[r].sd);
        double q[64];
        for (int k = 0; k < reps; k++) q[k] = rows[r].tps[k] / rows[0].tps[k];
        qsort(q, (size_t)reps, sizeof q[0], cmp_double);
        rows[r].ratio = reps % 2 ? q[reps / 2] : 0.5 * (q[reps / 2 - 1] + q[reps / 2]);
    }
    getloadavg(load1, 3);
    char path[1300];
    const char *base = cli_basename(dir);
    out = cli_bench_out(out, dir, path, sizeof path, "kcache-cpu-%s-t%d.json", base, threads);
    FILE *f = cli_bench_json(out);
    fprintf(f, "  \"backend\": \"cpu\",\n  \"model\": \"%s\",\n  \"threads\": %d,\n  \"depth\": %d,\n  \"tg\": %d,\n"
            "  \"kc_n\": \"%s\",\n  \"kc_recent\": %d,\n  \"kc_fast_layers\": %d,\n  \"kc_weight\": \"%s\",\n"
            "  \"kc_gran\": \"%s\",\n  \"kc_block\": %d,\n  \"order\": \"paired (each repetition runs every configuration in turn)\",\n"
            "  \"loadavg_start\": [%.2f, %.2f, %.2f],\n  \"loadavg_end\": [%.2f, %.2f, %.2f],\n  \"results\": [\n", base,
            threads, depth, n, pa->kc_n, kp.kc_recent, kp.kc_fast_layers, pa->kc_weight, pa->kc_gran, kp.kc_block,
            load0[0], load0[1], load0[2], load1[0], load1[1], load1[2]);
    printf("slimkv bench kcache  %s  depth %d, tg %d, %d threads, N %s, R %d; paired repetitions; load average "
           "%.2f at the start, %.2f at the end\n", base, depth, n, threads, pa->kc_n, kp.kc_recent, load0[0], load1[0]);
    printf("%-18s %16s %9s %12s %12s %12s %10s %12s %12s\n", "config", "tokens/s", "vs full", "rows/step", "bytes/step",
           "blocks/step", "ms/step", "fast bytes", "store bytes");
    for (int r = 0; r < n_rows; r++) {
        const kc_row *row = &rows[r];
        const double st = row->u.fetch_steps ? (double)row->u.fetch_steps : 1;
        printf("%-18s %9.1f ± %-5.1f %9.3f %12.1f %12.0f %12.2f %10.3f %12lld %12lld\n", row->name, row->mean, row->sd,
               row->ratio,
               row->u.fetch_rows / st, row->u.fetch_bytes / st, row->u.fetch_blocks / st, 1e-6 * row->u.fetch_ns / st,
               (long long)row->u.bytes_fast, (long long)row->u.store_bytes);
        fprintf(f, "    {\"config\": \"%s\", \"tps_mean\": %.2f, \"tps_sd\": %.2f, \"median_paired_ratio_to_full\": %.4f, "
                "\"reps\": %d, \"fetch_steps\": %lld, "
                "\"rows_per_step\": %.2f, \"bytes_per_step\": %.1f, \"blocks_per_step\": %.3f, \"fetch_ms_per_step\": %.4f, "
                "\"fast_bytes\": %lld, \"store_bytes\": %lld, \"samples\": [",
                row->name, row->mean, row->sd, row->ratio, row->reps, (long long)row->u.fetch_steps, row->u.fetch_rows / st,
                row->u.fetch_bytes / st, row->u.fetch_blocks / st, 1e-6 * row->u.fetch_ns / st,
                (long long)row->u.bytes_fast, (long long)row->u.store_bytes);
        for (int k = 0; k < row->reps; k++) fprintf(f, "%s%.2f", k ? ", " : "", row->tps[k]);
        fprintf(f, "]}%s\n", r + 1 < n_rows ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    fclose(f);
    printf("written to %s\n", out);
    free(lg);
    free(buf);
    skv_model_free(m);
    return 0;
}
