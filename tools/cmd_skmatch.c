/*
 * cmd_skmatch.c — `slimkv skmatch`: does SmallKV's premise hold for a model pair? For each task
 * row, both models prefill the prompt (its last --keep tokens) with per-head attention
 * statistics; every large-model head is matched to a small-model head as SmallKV matches
 * (src/kv/smallkv.h: argmax Jaccard of top-K sets of the accumulated attention of the first
 * match_len tokens), and the top-K overlap (Jaccard) of the matched pairs is set against that of
 * random head pairs (the mean over all pairs) and against chance (two random K-subsets of T:
 * K / (2T - K)):
 *   in-sample   the maps matching used (queries and keys < match_len);
 *   held-out    the same matching, judged on the whole prompt's accumulated attention (every
 *               query, every key): whether a head matched on the prefix still tracks its large
 *               head later, which is what SmallKV relies on; with the best pair in hindsight
 *               (argmax on the whole-prompt maps) beside it.
 * K = each --k-fracs fraction of the keys. Output: one JSON line per row (--out) and the means
 * (standard output).
 */
#include "cli.h"
#include "eval/eval.h"
#include "kv/smallkv.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SKM_MAX_FRACS 8
#define SKM_MAX1(x) ((x) > 1 ? (x) : 1)

typedef struct skm_stats {
    double matched, random, best; /* mean Jaccard over large heads: matched pair, all pairs, best pair */
} skm_stats;

/* maps (n, T) of every head of context c (layers x heads) over keys < T: prefix statistics
 * (queries < T) or the whole prompt's */
static void head_maps(const skv_context *c, const skv_model *m, int prefix, int32_t T, float *out, float *tmp) {
    const skv_model_info *in = skv_model_get_info(m);
    for (int32_t l = 0; l < in->n_layer; l++)
        for (int32_t h = 0; h < in->n_head; h++) {
            float *dst = out + ((int64_t)l * in->n_head + h) * T;
            if (prefix) cli_check("skmatch", skv_context_head_attention_prefix(c, l, h, tmp));
            else cli_check("skmatch", skv_context_head_attention(c, l, h, tmp, NULL));
            memcpy(dst, tmp, sizeof(float) * (size_t)T);
        }
}

/* Jaccard stats of a matching f over maps al (nl, T), as (ns, T) at top-K */
static skm_stats judge(const float *al, int32_t nl, const float *as, int32_t ns, int32_t T, int32_t K, const int32_t *f,
                       int32_t *best_f, float *jac) {
    skv_smallkv_match(al, nl, as, ns, T, K, best_f, jac);
    skm_stats s = {0};
    for (int32_t i = 0; i < nl; i++) {
        double row = 0;
        for (int32_t j = 0; j < ns; j++) row += jac[(int64_t)i * ns + j];
        s.random += row / ns;
        s.matched += jac[(int64_t)i * ns + f[i]];
        s.best += jac[(int64_t)i * ns + best_f[i]];
    }
    s.matched /= nl, s.random /= nl, s.best /= nl;
    return s;
}

int cmd_skmatch(int argc, char **argv) {
    const char *tasks = NULL, *out = NULL, *fr_s = "0.1,0.2";
    int limit = 4, keep = 1984, quiet = 0, match_len = 0;
    cli_policy_args pa;
    cli_opt opts[64] = {
        {"tasks", 0, OPT_STR, &tasks, "FILE", "task file (JSONL: task, context, answer)"},
        {"limit", 'l', OPT_INT, &limit, "N", "first N rows of each task (default 4)"},
        {"keep", 0, OPT_INT, &keep, "N", "prompt tokens kept from the end of each context (default 1984, as eval)"},
        {"match-len", 0, OPT_INT, &match_len, "N", "prefix tokens the matching uses (default SmallKV's match_len)"},
        {"k-fracs", 0, OPT_STR, &fr_s, "LIST", "top-K sizes as fractions of the keys (default 0.1,0.2)"},
        {"out", 'o', OPT_STR, &out, "FILE", "write one JSON line per row"},
        {"quiet", 'q', OPT_FLAG, &quiet, NULL, "no progress on standard error"},
        CLI_OPT_NO_CHECK,
    };
    int n_opts = 8;
    cli_policy_options(&pa, opts, &n_opts);
    const cli_cmd cmd = {"skmatch", "-m LARGE --draft SMALL --tasks FILE [--limit N] [--k-fracs LIST] [--out FILE]",
                         "SmallKV's premise on a model pair: the top-K Jaccard of matched head pairs against random "
                         "pairs and chance, in-sample (matching prefix) and held-out (whole prompt).",
                         opts, n_opts};
    cli_parse(&cmd, argc, argv);
    if (!tasks) cli_die("skmatch", 2, "no tasks: give --tasks FILE");
    if (!pa.draft) cli_die("skmatch", 2, "no small model: give --draft DIR");
    if (limit < 1) cli_die("skmatch", 2, "bad value for --limit: %d (must be >= 1)", limit);
    if (keep < 16) cli_die("skmatch", 2, "bad value for --keep: %d (must be >= 16)", keep);
    double fr[SKM_MAX_FRACS];
    int nf = 0;
    for (const char *p = fr_s; *p;) {
        char *e;
        const double v = strtod(p, &e);
        if (e == p || !(v > 0 && v < 1) || nf == SKM_MAX_FRACS || (*e && *e != ','))
            cli_die("skmatch", 2, "bad value for --k-fracs: '%s' (comma-separated fractions in (0, 1), at most %d)", fr_s,
                    SKM_MAX_FRACS);
        fr[nf++] = v;
        p = *e ? e + 1 : e;
    }
    if (match_len == 0) match_len = skv_smallkv_default_params().match_len;
    if (match_len < 8) cli_die("skmatch", 2, "bad value for --match-len: %d (must be >= 8)", match_len);
    skv_task_set ts;
    cli_check("skmatch", skv_tasks_load(tasks, limit, &ts));
    skv_tokenizer *tok = cli_load_tokenizer("skmatch", pa.dir);
    skv_model *m = cli_load_model("skmatch", pa.dir, pa.threads, pa.use_mmap);
    skv_model *d = cli_load_draft("skmatch", &pa, m, pa.threads);
    const skv_model_info *il = skv_model_get_info(m), *is = skv_model_get_info(d);
    const int32_t nl = il->n_layer * il->n_head, ns = is->n_layer * is->n_head;
    FILE *fo = NULL;
    if (out && !(fo = fopen(out, "w"))) cli_die("skmatch", 1, "cannot write %s", out);
    skm_stats sum_in[SKM_MAX_FRACS] = {{0}}, sum_out[SKM_MAX_FRACS] = {{0}};
    double chance_in[SKM_MAX_FRACS] = {0}, chance_out[SKM_MAX_FRACS] = {0};
    int rows = 0;
    for (int32_t r = 0; r < ts.n; r++) {
        const skv_task_row *row = &ts.rows[r];
        int32_t *ids = NULL, n = 0;
        cli_check("skmatch", skv_eval_prompt(m, tok, row, keep, &ids, &n));
        if (n < match_len) {
            if (!quiet) fprintf(stderr, "skmatch: row %d (%s): %d tokens, shorter than the matching length %d: skipped\n",
                                row->line, row->task, n, match_len);
            free(ids);
            continue;
        }
        skv_context_params cp = skv_context_default_params();
        cp.n_ctx = n;
        cp.collect_head_stats = 1;
        cp.head_prefix = match_len;
        skv_context *cl = NULL, *cs = NULL;
        cli_check("skmatch", skv_context_init(m, cp, &cl));
        cli_check("skmatch", skv_context_init(d, cp, &cs));
        cli_check("skmatch", skv_decode(cl, ids, n, NULL, 0));
        cli_check("skmatch", skv_decode(cs, ids, n, NULL, 0));
        float *tmp = malloc(sizeof(float) * (size_t)n);
        float *pl = malloc(sizeof(float) * (size_t)nl * match_len), *ps = malloc(sizeof(float) * (size_t)ns * match_len);
        float *wl = malloc(sizeof(float) * (size_t)nl * n), *ws = malloc(sizeof(float) * (size_t)ns * n);
        float *jac = malloc(sizeof(float) * (size_t)nl * ns);
        int32_t *f = malloc(sizeof(int32_t) * (size_t)nl), *bf = malloc(sizeof(int32_t) * (size_t)nl);
        if (!tmp || !pl || !ps || !wl || !ws || !jac || !f || !bf) cli_die("skmatch", 1, "out of memory");
        head_maps(cl, m, 1, match_len, pl, tmp);
        head_maps(cs, d, 1, match_len, ps, tmp);
        head_maps(cl, m, 0, n, wl, tmp);
        head_maps(cs, d, 0, n, ws, tmp);
        if (fo) fprintf(fo, "{\"line\": %d, \"task\": \"%s\", \"tokens\": %d, \"match_len\": %d, \"k\": [", row->line, row->task, n,
                        match_len);
        for (int k = 0; k < nf; k++) {
            const int32_t Kp = SKM_MAX1((int32_t)lrint(fr[k] * match_len)), Kw = SKM_MAX1((int32_t)lrint(fr[k] * n));
            skv_smallkv_match(pl, nl, ps, ns, match_len, Kp, f, NULL); /* SmallKV's matching */
            const skm_stats a = judge(pl, nl, ps, ns, match_len, Kp, f, bf, jac);
            const skm_stats b = judge(wl, nl, ws, ns, n, Kw, f, bf, jac);
            const double ca = (double)Kp / (2.0 * match_len - Kp), cb = (double)Kw / (2.0 * n - Kw);
            sum_in[k].matched += a.matched, sum_in[k].random += a.random, sum_in[k].best += a.best;
            sum_out[k].matched += b.matched, sum_out[k].random += b.random, sum_out[k].best += b.best;
            chance_in[k] += ca, chance_out[k] += cb;
            if (fo)
                fprintf(fo, "%s{\"frac\": %g, \"in_sample\": {\"k\": %d, \"matched\": %.4f, \"random\": %.4f, \"chance\": %.4f}, "
                        "\"held_out\": {\"k\": %d, \"matched\": %.4f, \"random\": %.4f, \"best\": %.4f, \"chance\": %.4f}}",
                        k ? ", " : "", fr[k], Kp, a.matched, a.random, ca, Kw, b.matched, b.random, b.best, cb);
        }
        if (fo) fprintf(fo, "]}\n"), fflush(fo);
        rows++;
        if (!quiet) fprintf(stderr, "skmatch: row %d/%d (%s, %d tokens)\n", r + 1, ts.n, row->task, n);
        free(tmp), free(pl), free(ps), free(wl), free(ws), free(jac), free(f), free(bf), free(ids);
        skv_context_free(cl), skv_context_free(cs);
    }
    if (fo) fclose(fo);
    if (!rows) cli_die("skmatch", 1, "no row reached the matching length %d", match_len);
    printf("{\"rows\": %d, \"large_heads\": %d, \"small_heads\": %d, \"match_len\": %d, \"k\": [", rows, nl, ns, match_len);
    for (int k = 0; k < nf; k++)
        printf("%s{\"frac\": %g, \"in_sample\": {\"matched\": %.4f, \"random\": %.4f, \"chance\": %.4f}, \"held_out\": "
               "{\"matched\": %.4f, \"random\": %.4f, \"best\": %.4f, \"chance\": %.4f}}",
               k ? ", " : "", fr[k], sum_in[k].matched / rows, sum_in[k].random / rows, chance_in[k] / rows,
               sum_out[k].matched / rows, sum_out[k].random / rows, sum_out[k].best / rows, chance_out[k] / rows);
    printf("]}\n");
    skv_model_free(d), skv_model_free(m);
    skv_tokenizer_free(tok);
    skv_tasks_free(&ts);
    return 0;
}
