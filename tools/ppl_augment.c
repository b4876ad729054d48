/*
 * ppl_augment.c — `slimkv ppl --augment DIR [--augment-every K]`: the per-position perplexity
 * protocol of cache augmentation (arXiv 2412.17747; train/augment.py's eval_table). In each
 * window, augmentation points T = K, 2K, ... with T + n_latent + 32 <= window (without
 * --augment-every: one point, T = window / 2, scoring every token after it that fits); at each
 * point the coprocessor's latents go into the cache after token T-1 and the next A tokens are
 * teacher-forced; the k-th of them is scored with and without the latents. Reported: the
 * relative perplexity change ppl_aug(k) / ppl_base(k) - 1 for k = 1, 2, 4, 8, 16, 32 with a 95 %
 * bootstrap interval resampling windows.
 */
#include "cli.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static double lse_row(const float *row, int V) {
    float mx = row[0];
    for (int v = 1; v < V; v++) mx = row[v] > mx ? row[v] : mx;
    double s = 0;
    for (int v = 0; v < V; v++) s += exp((double)row[v] - mx);
    return (double)mx + log(s);
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* 2.5 / 97.5 % of the mean over W windows of per-window values x (resampled with replacement). */
static void bootstrap(const double *x, int W, int reps, double *lo, double *hi) {
    double *m = malloc(sizeof(double) * (size_t)reps);
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (int r = 0; r < reps; r++) {
        double sum = 0;
        for (int i = 0; i < W; i++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            sum += x[s % (uint64_t)W];
        }
        m[r] = sum / W;
    }
    qsort(m, (size_t)reps, sizeof(double), cmp_double);
    *lo = m[(int)(0.025 * reps)];
    *hi = m[(int)(0.975 * reps)];
    free(m);
}

int ppl_augment(const char *aug_dir, int every, skv_model *m, const char *model_dir, const int32_t *all, int n_win,
                int W, int threads, const char *backend, const char *out, const char *dump, int quiet) {
    const int V = skv_model_get_info(m)->n_vocab;
    skv_augment *aug = cli_load_augment("ppl", aug_dir, m, threads, backend);
    const int NL = skv_augment_n_latent(aug);
    if (every < 0) cli_die("ppl", 2, "bad value for --augment-every: %d (must be >= 1)", every);
    const int A = every ? 32 : W - W / 2 - NL;
    int R = 0, T0 = every ? every : W / 2;
    for (int T = T0; T + NL + A <= W; T += every ? every : W) R++;
    if (R == 0 || A < 1)
        cli_die("ppl", 2, "no augmentation point fits a window of %d tokens (%d latents, %d tokens scored after)", W, NL,
                A < 1 ? 1 : A);
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = W;
    cp.backend = cli_backend("ppl", backend);
    skv_context *c = NULL;
    cli_check("ppl", skv_context_init(m, cp, &c));
    const int B = SKV_CLI_MIN(512, W);
    float *lg = malloc(sizeof(float) * (size_t)B * V);
    double *nll_pos = malloc(sizeof(double) * (size_t)W);           /* base: row p predicts p + 1 */
    float *res = malloc(sizeof(float) * (size_t)n_win * R * A * 2); /* (window, point, k, aug/base) */
    if (!lg || !nll_pos || !res) cli_die("ppl", 1, "out of memory");
    const double t0 = skv_time_now();
    for (int w = 0; w < n_win; w++) {
        const int32_t *ids = all + (size_t)w * W;
        cli_check("ppl", skv_context_truncate(c, 0));
        for (int off = 0; off < W; off += B) {
            const int nb = SKV_CLI_MIN(B, W - off);
            cli_check("ppl", skv_decode(c, ids + off, nb, lg, 1));
            for (int i = 0; i < nb && off + i + 1 < W; i++)
                nll_pos[off + i] = lse_row(lg + (size_t)i * V, V) - lg[(size_t)i * V + ids[off + i + 1]];
        }
        int have = W; /* tokens of the window in the cache, in order */
        for (int r = 0; r < R; r++) {
            const int T = T0 + r * (every ? every : W);
            if (have > T) cli_check("ppl", skv_context_truncate(c, T));
            else if (have < T) cli_check("ppl", skv_decode(c, ids + have, T - have, NULL, 0));
            float *o = res + ((size_t)w * R + r) * A * 2;
            cli_check("ppl", skv_augment_apply(aug, c, lg)); /* the last latent's logits predict ids[T] */
            o[0] = (float)(lse_row(lg, V) - lg[ids[T]]);
            for (int a = 1; a < A; a += B) { /* ahead tokens ids[T .. T+A-2]; row j predicts ids[T+a+j] */
                const int nb = SKV_CLI_MIN(B, A - a);
                cli_check("ppl", skv_decode(c, ids + T + a - 1, nb, lg, 1));
                for (int j = 0; j < nb; j++)
                    o[(a + j) * 2] = (float)(lse_row(lg + (size_t)j * V, V) - lg[(size_t)j * V + ids[T + a + j]]);
            }
            for (int k = 0; k < A; k++) o[k * 2 + 1] = (float)nll_pos[T - 1 + k];
            cli_check("ppl", skv_context_truncate(c, T));
            have = T;
        }
        if (!quiet) fprintf(stderr, "\rslimkv ppl: window %d/%d, %d points each (%.1f s)", w + 1, n_win, R, skv_time_now() - t0);
    }
    if (!quiet) fprintf(stderr, "\n");
    const double secs = skv_time_now() - t0;
    if (dump) {
        FILE *f = fopen(dump, "wb");
        if (!f || fwrite(res, sizeof(float), (size_t)n_win * R * A * 2, f) != (size_t)n_win * R * A * 2)
            cli_die("ppl", 1, "%s: cannot write", dump);
        fclose(f);
    }
    /* the table */
    char *js = NULL;
    size_t js_len = 0;
    FILE *t = open_memstream(&js, &js_len);
    const int ks[] = {1, 2, 4, 8, 16, 32};
    double *pw = malloc(sizeof(double) * (size_t)n_win);
    double all_a = 0, all_b = 0;
    for (size_t i = 0; i < (size_t)n_win * R * A; i++) all_a += res[i * 2], all_b += res[i * 2 + 1];
    fprintf(t, "\"augment\": ");
    cli_json_string(t, aug_dir, strlen(aug_dir));
    fprintf(t, ", \"n_latent\": %d, \"augment_every\": %d, \"points_per_window\": %d, \"points\": %d, \"scored_after\": %d, "
            "\"ppl_aug_all\": %.6f, \"ppl_base_all\": %.6f, \"table\": {", NL, every, R, n_win * R, A,
            exp(all_a / ((double)n_win * R * A)), exp(all_b / ((double)n_win * R * A)));
    int first = 1;
    for (int q = 0; q < 6; q++) {
        const int k = ks[q];
        if (k > A) continue;
        double sa = 0, sb = 0;
        for (int w = 0; w < n_win; w++) {
            double d = 0;
            for (int r = 0; r < R; r++) {
                const float *o = res + (((size_t)w * R + r) * A + (k - 1)) * 2;
                sa += o[0], sb += o[1], d += (double)o[0] - o[1];
            }
            pw[w] = d / R;
        }
        const double n = (double)n_win * R, md = (sa - sb) / n;
        double lo = md, hi = md;
        if (n_win > 1) bootstrap(pw, n_win, 2000, &lo, &hi);
        fprintf(t, "%s\"%d\": {\"rel\": %.6f, \"lo\": %.6f, \"hi\": %.6f, \"ppl_base\": %.6f, \"ppl_aug\": %.6f}",
                first ? "" : ", ", k, expm1(md), expm1(lo), expm1(hi), exp(sb / n), exp(sa / n));
        first = 0;
        if (!quiet)
            fprintf(stderr, "slimkv ppl: k = %2d: ppl %.4f -> %.4f with latents, %+.2f %% [%+.2f, %+.2f]\n", k,
                    exp(sb / n), exp(sa / n), 100 * expm1(md), 100 * expm1(lo), 100 * expm1(hi));
    }
    skv_augment_usage au;
    skv_augment_get_usage(aug, &au);
    fprintf(t, "}, \"augment_ms_mean\": %.3f, \"coprocessor_ms_mean\": %.3f, \"coprocessor_weight_bytes\": %lld, "
            "\"coprocessor_kv_bytes\": %lld, \"windows\": %d, \"window_tokens\": %d, \"seconds\": %.2f",
            1e3 * (au.seconds_cop + au.seconds_base) / (double)au.runs, 1e3 * au.seconds_cop / (double)au.runs,
            (long long)au.weight_bytes, (long long)au.kv_bytes, n_win, W, secs);
    fclose(t);
    printf("{%s}\n", js);
    if (out) {
        FILE *f = fopen(out, "w");
        if (!f) cli_die("ppl", 1, "%s: cannot write", out);
        fprintf(f, "{\n");
        cli_json_provenance(f);
        fprintf(f, "  \"model\": ");
        cli_json_string(f, model_dir, strlen(model_dir));
        fprintf(f, ",\n  %s\n}\n", js);
        fclose(f);
    }
    free(js);
    free(pw);
    free(res);
    free(nll_pos);
    free(lg);
    skv_context_free(c);
    skv_augment_free(aug);
    return 0;
}
