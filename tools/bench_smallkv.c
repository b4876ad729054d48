/*
 * bench_smallkv.c — `slimkv bench --policy smallkv --draft DIR`: decode speed and memory of
 * SmallKV against the full cache at one context depth, per budget.
 *
 * For each configuration (full, then smallkv at every budget): prefill D random tokens
 * (untimed; SmallKV prefills both models and matches heads), then N single-token decode steps,
 * timed; one warm-up and R timed repetitions. SmallKV's time includes the small model's step
 * and the per-step re-selection. Memory per budget: the large model's rows read at the last
 * step (fast tier), its full cache (slow tier), the small model's cache and weights.
 */
#include "cli.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

typedef struct sk_row {
    float budget;          /* 0: full cache */
    double tps[64], mean, sd;
    int reps;
    skv_smallkv_usage u;
} sk_row;

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static int32_t rand_id(int32_t V) { return cli_rand_id(&g_rng, V); }

/* tokens/s of one repetition */
static double once(skv_model *m, skv_model *d, const skv_smallkv_params *sp, int depth, int n, int n_ctx,
                   float *lg, int32_t *buf, skv_smallkv_usage *u) {
    const int32_t V = skv_model_get_info(m)->n_vocab;
    for (int i = 0; i < depth; i++) buf[i] = rand_id(V);
    double t0, dt;
    if (!sp) {
        skv_context_params cp = skv_context_default_params();
        cp.n_ctx = n_ctx;
        skv_context *c = NULL;
        cli_check("bench", skv_context_init(m, cp, &c));
        cli_check("bench", skv_decode(c, buf, depth, lg, 0));
        t0 = skv_time_now();
        for (int i = 0; i < n; i++) {
            int32_t id = rand_id(V);
            cli_check("bench", skv_decode(c, &id, 1, lg, 0));
        }
        dt = skv_time_now() - t0;
        skv_kv_usage ku;
        skv_context_kv_usage(c, &ku);
        *u = (skv_smallkv_usage){.fast_bytes = ku.bytes};
        skv_context_free(c);
    } else {
        skv_smallkv *s = NULL;
        cli_check("bench", skv_smallkv_init(m, d, *sp, n_ctx, &s));
        cli_check("bench", skv_smallkv_prefill(s, buf, depth, lg));
        t0 = skv_time_now();
        for (int i = 0; i < n; i++) cli_check("bench", skv_smallkv_decode(s, rand_id(V), lg));
        dt = skv_time_now() - t0;
        skv_smallkv_get_usage(s, u);
        skv_smallkv_free(s);
    }
    return n / dt;
}

int bench_smallkv(const char *dir, const cli_policy_args *pa, const char *budgets_s, int depth, int n,
                  int reps, int threads, int use_mmap, const char *out) {
    skv_model *m = cli_load_model("bench", dir, threads, use_mmap);
    skv_model *d = cli_load_draft("bench", pa, m, threads);
    const skv_model_info *in = skv_model_get_info(m);
    if (threads == 0) threads = omp_get_num_procs();
    const int n_ctx = depth + n;
    if (depth < 1 || n < 1 || n_ctx > in->n_ctx || n_ctx > skv_model_get_info(d)->n_ctx)
        cli_die("bench", 2, "smallkv: depth %d + tg %d must fit both contexts (%d, %d)", depth, n, in->n_ctx,
                skv_model_get_info(d)->n_ctx);
    sk_row rows[17];
    int n_rows = 0;
    rows[n_rows++] = (sk_row){.budget = 0};
    for (const char *p = budgets_s; *p && n_rows < 17;) {
        char *end;
        double b = strtod(p, &end);
        if (end == p || !(b > 0 && b <= 1) || (*end && *end != ','))
            cli_die("bench", 2, "bad value for --budgets: '%s' (comma-separated fractions in (0, 1])", budgets_s);
        rows[n_rows++] = (sk_row){.budget = (float)b};
        p = *end ? end + 1 : end;
    }
    float *lg = malloc(sizeof(float) * (size_t)in->n_vocab);
    int32_t *buf = malloc(sizeof(int32_t) * (size_t)depth);
    for (int r = 0; r < n_rows; r++) {
        sk_row *row = &rows[r];
        skv_smallkv_params sp = cli_smallkv_params("bench", pa, row->budget > 0 ? row->budget : 1, "");
        const skv_smallkv_params *spp = row->budget > 0 ? &sp : NULL;
        once(m, d, spp, depth, n, n_ctx, lg, buf, &row->u);
        for (row->reps = 0; row->reps < reps; row->reps++)
            row->tps[row->reps] = once(m, d, spp, depth, n, n_ctx, lg, buf, &row->u);
        cli_mean_sd(row->tps, row->reps, &row->mean, &row->sd);
    }
    char path[1300];
    const char *base = cli_basename(dir);
    out = cli_bench_out(out, dir, path, sizeof path, "cpu-smallkv-%s-t%d.json", base, threads);
    FILE *f = cli_bench_json(out);
    fprintf(f, "  \"backend\": \"cpu\",\n  \"model\": \"%s\",\n  \"draft\": ", base);
    cli_json_string(f, pa->draft, strlen(pa->draft));
    fprintf(f, ",\n  \"threads\": %d,\n  \"depth\": %d,\n  \"tg\": %d,\n  \"score\": \"%s\",\n  \"match\": \"%s\",\n"
            "  \"draft_weight_bytes\": %lld,\n  \"results\": [\n", threads, depth, n,
            strcmp(pa->sk_score, "window") ? "acc" : "window", strcmp(pa->sk_match, "window") ? "prefix" : "window",
            (long long)skv_model_get_info(d)->weight_bytes);
    printf("slimkv bench smallkv  %s + draft %s  depth %d, tg %d, %d threads\n", base, pa->draft, depth, n, threads);
    printf("%-8s %16s %14s %14s %14s\n", "budget", "tokens/s", "fast KV bytes", "slow KV bytes", "draft KV bytes");
    for (int r = 0; r < n_rows; r++) {
        const sk_row *row = &rows[r];
        char name[16];
        if (row->budget > 0) snprintf(name, sizeof name, "%g", row->budget);
        else snprintf(name, sizeof name, "full");
        printf("%-8s %9.1f ± %-5.1f %14lld %14lld %14lld\n", name, row->mean, row->sd, (long long)row->u.fast_bytes,
               (long long)row->u.slow_bytes, (long long)row->u.draft_kv_bytes);
        fprintf(f, "    {\"config\": \"%s\", \"budget\": %g, \"tps_mean\": %.2f, \"tps_sd\": %.2f, \"reps\": %d, "
                "\"fast_kv_bytes\": %lld, \"slow_kv_bytes\": %lld, \"draft_kv_bytes\": %lld, \"samples\": [",
                row->budget > 0 ? "smallkv" : "full", row->budget, row->mean, row->sd, row->reps,
                (long long)row->u.fast_bytes, (long long)row->u.slow_bytes, (long long)row->u.draft_kv_bytes);
        for (int k = 0; k < row->reps; k++) fprintf(f, "%s%.2f", k ? ", " : "", row->tps[k]);
        fprintf(f, "]}%s\n", r + 1 < n_rows ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    fclose(f);
    printf("draft weights %lld bytes; written to %s\n", (long long)skv_model_get_info(d)->weight_bytes, out);
    free(lg);
    free(buf);
    skv_model_free(d);
    skv_model_free(m);
    return 0;
}
