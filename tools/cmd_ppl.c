/*
 * cmd_ppl.c — `slimkv ppl`: perplexity per docs/evaluation.md section 3. Documents are
 * separated by the byte 0x1e; each is tokenized and preceded by token 0 (the BOS id), all are
 * concatenated and cut into non-overlapping windows of n_ctx tokens; every next-token
 * prediction inside the first W windows is scored.
 */
#include "cli.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* log-softmax normaliser of one logits row */
static double row_lse(const float *row, int V) {
    float mx = row[0];
    for (int v = 1; v < V; v++) mx = row[v] > mx ? row[v] : mx;
    double s = 0;
    for (int v = 0; v < V; v++) s += exp((double)row[v] - mx);
    return (double)mx + log(s);
}

/* SmallKV perplexity: each window's first P tokens are the prompt (both models, full
 * attention); every later token is decoded one at a time under SmallKV and scored, next to the
 * full cache's prediction of the same positions (same prompt, then teacher-forced). */
static void ppl_smallkv(const cli_policy_args *pa, const skv_smallkv_params *sp, skv_model *m, const int32_t *all,
                        int n_win, int W, int P, int threads, int quiet, double *nll, double *nll2, double *nll_full, double *kl,
                        int64_t *scored, double *fast_mean, skv_smallkv_usage *last) {
    const skv_model_info *in = skv_model_get_info(m);
    const int V = in->n_vocab;
    skv_model *d = cli_load_draft("ppl", pa, m, threads);
    if (skv_model_get_info(d)->n_ctx < W)
        cli_die("ppl", 2, "--ctx %d is longer than the draft model's context (%d)", W, skv_model_get_info(d)->n_ctx);
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = W;
    skv_context *c = NULL;
    cli_check("ppl", skv_context_init(m, cp, &c));
    float *lg = malloc((size_t)V * sizeof(float)), *lf = malloc((size_t)(W - P) * V * sizeof(float));
    if (!lg || !lf) cli_die("ppl", 1, "out of memory for the logits");
    double fast = 0;
    int64_t steps = 0;
    const double t0 = skv_time_now();
    for (int w = 0; w < n_win; w++) {
        const int32_t *ids = all + (size_t)w * W;
        /* the full cache: prompt, then all later tokens in one call; row i predicts P + i */
        cli_check("ppl", skv_context_truncate(c, 0));
        cli_check("ppl", skv_decode(c, ids, P, lf, 0));
        if (W - 1 > P) cli_check("ppl", skv_decode(c, ids + P, W - 1 - P, lf + (size_t)V, 1));
        skv_smallkv *drv = NULL;
        cli_check("ppl", skv_smallkv_init(m, d, *sp, W, &drv));
        cli_check("ppl", skv_smallkv_prefill(drv, ids, P, lg));
        for (int pos = P - 1; pos + 1 < W; pos++) { /* lg predicts ids[pos + 1] */
            if (pos >= P) {
                cli_check("ppl", skv_smallkv_decode(drv, ids[pos], lg));
                skv_smallkv_get_usage(drv, last);
                fast += (double)last->fast_bytes;
                steps++;
            }
            const float *ref = lf + (size_t)(pos - (P - 1)) * V;
            const double lse = row_lse(lg, V), lse_f = row_lse(ref, V);
            const double e = lse - (double)lg[ids[pos + 1]];
            *nll += e;
            *nll2 += e * e;
            *nll_full += lse_f - (double)ref[ids[pos + 1]];
            double k = 0;
            for (int v = 0; v < V; v++) {
                const double lpf = (double)ref[v] - lse_f;
                k += exp(lpf) * (lpf - ((double)lg[v] - lse));
            }
            *kl += k > 0 ? k : 0;
            (*scored)++;
        }
        skv_smallkv_free(drv);
        if (!quiet)
            fprintf(stderr, "\rslimkv ppl: window %d/%d  ppl %.4f (full %.4f)  KL %.4f  (%.1f tok/s)", w + 1, n_win,
                    exp(*nll / (double)*scored), exp(*nll_full / (double)*scored), *kl / (double)*scored,
                    (double)*scored / (skv_time_now() - t0));
    }
    if (!quiet) fprintf(stderr, "\n");
    *fast_mean = steps ? fast / (double)steps : 0;
    free(lg);
    free(lf);
    skv_context_free(c);
    skv_model_free(d);
}

/* A number for JSON: non-finite values (a model whose weights were not checked) as null. */
static const char *jnum(char *buf, size_t cap, double x) {
    if (isfinite(x)) snprintf(buf, cap, "%.6f", x);
    else snprintf(buf, cap, "null");
    return buf;
}

/* The result line on stdout and, with --out, the same as a JSON file with provenance. nll2: the
 * sum of squared per-token NLLs, for the standard error of the mean NLL (as llama-perplexity:
 * sqrt((E[x^2] - E[x]^2) / (n - 1))), propagated to the perplexity as ppl * se. With progress
 * enabled, also "PPL = x +/- y" on standard error. extra: further fields, ", \"key\": value". */
static void report(const char *out, const char *dir, double nll, double nll2, int64_t scored, int skip, int n_win,
                   int W, double secs, int quiet, const char *extra) {
    const double mean = nll / (double)scored, var = nll2 / (double)scored - mean * mean;
    const double se = scored > 1 && var > 0 ? sqrt(var / (double)(scored - 1)) : 0, ppl = exp(mean);
    char a[32], b[32], c[32], d[32];
    if (!quiet) fprintf(stderr, "slimkv ppl: PPL = %.4f +/- %.5f (mean NLL %.5f +/- %.5f, %lld tokens)\n", ppl,
                        ppl * se, mean, se, (long long)scored);
    printf("{\"ppl\": %s, \"ppl_se\": %s, \"nll\": %s, \"nll_se\": %s, \"first_window\": %d, \"windows\": %d, "
           "\"window_tokens\": %d, \"tokens_scored\": %lld, \"seconds\": %.2f%s}\n", jnum(a, sizeof a, ppl),
           jnum(b, sizeof b, ppl * se), jnum(c, sizeof c, mean), jnum(d, sizeof d, se), skip, n_win, W,
           (long long)scored, secs, extra);
    if (!out) return;
    FILE *f = fopen(out, "w");
    if (!f) cli_die("ppl", 1, "%s: cannot write", out);
    fprintf(f, "{\n");
    cli_json_provenance(f);
    fprintf(f, "  \"model\": ");
    cli_json_string(f, dir, strlen(dir));
    fprintf(f, ",\n  \"ppl\": %s,\n  \"ppl_se\": %s,\n  \"nll\": %s,\n  \"nll_se\": %s,\n  \"first_window\": %d,\n"
            "  \"windows\": %d,\n  \"window_tokens\": %d,\n  \"tokens_scored\": %lld,\n  \"seconds\": %.2f%s\n}\n", a, b,
            c, d, skip, n_win, W, (long long)scored, secs, extra);
    fclose(f);
}

int cmd_ppl(int argc, char **argv) {
    int use_mmap = 0;
    const char *dir = NULL, *file = NULL, *out = NULL;
    int windows = 200, threads = 0, ctx = 0, quiet = 0, chunk = 0, sk_prompt = 0, aug_every = 0, skip = 0;
    const char *aug_dir = NULL, *aug_dump = NULL;
    cli_policy_args pa;
    cli_opt opts[64] = {
        {"file", 'f', OPT_STR, &file, "FILE", "text corpus, plain or .xz; documents split by 0x1e"},
        {"windows", 'w', OPT_INT, &windows, "W", "score the first W windows (default 200)"},
        {"skip-windows", 0, OPT_INT, &skip, "S", "score windows S .. S+W-1 instead (one share of a run split over processes, to be pooled)"},
        {"skip", 0, OPT_INT, &skip, "S", "the same as --skip-windows"},
        {"ctx", 'c', OPT_INT, &ctx, "N", "window length in tokens (default: the model's context)"},
        {"out", 'o', OPT_STR, &out, "FILE", "also write the result as JSON (with commit, machine, command)"},
        {"quiet", 'q', OPT_FLAG, &quiet, NULL, "no progress on standard error"},
        {"chunk", 0, OPT_INT, &chunk, "N", "tokens per forward call; the policy compresses after each (default 512, 128 with a policy)"},
        {"sk-prompt", 0, OPT_INT, &sk_prompt, "N", "smallkv: tokens of each window prefilled before SmallKV decoding (default: half)"},
        {"augment", 0, OPT_STR, &aug_dir, "DIR", "cache augmentation with the coprocessor in DIR: per-position relative perplexity after augmentation points (once per window, at its middle, unless --augment-every)"},
        {"augment-every", 0, OPT_INT, &aug_every, "K", "with --augment: a point every K tokens, 32 tokens scored after each (the paper's protocol)"},
        {"augment-dump", 0, OPT_STR, &aug_dump, "FILE", "with --augment: write the per-point NLLs as float32 (window, point, k, [aug, base])"},
        CLI_OPT_NO_CHECK,
    };
    int n_opts = 12;
    cli_policy_options(&pa, opts, &n_opts);
    const cli_cmd cmd = {"ppl", "-m DIR -f FILE [--windows W] [--policy P --budget B]",
                         "Perplexity of a corpus under the model (docs/evaluation.md section 3). With a "
                         "KV policy, each window is processed in chunks and the cache is compressed "
                         "after every chunk; the KL divergence from the full cache (same chunks) is "
                         "reported next to the perplexity. With --policy smallkv --draft DIR, each "
                         "window's first --sk-prompt tokens are prefilled and the rest decoded one "
                         "at a time under SmallKV; only those decoded positions are scored.",
                         opts, n_opts};
    cli_parse(&cmd, argc, argv);
    dir = pa.dir, threads = pa.threads, use_mmap = pa.use_mmap;
    if (!file) cli_die("ppl", 2, "no corpus: give -f FILE");
    if (windows < 1) cli_die("ppl", 2, "bad value for --windows: %d (must be >= 1)", windows);
    if (skip < 0) cli_die("ppl", 2, "bad value for --skip-windows/--skip: %d (must be >= 0)", skip);
    size_t len;
    char *text = cli_read_text_file("ppl", file, &len);
    skv_tokenizer *tok = cli_load_tokenizer("ppl", dir);
    skv_model *m = cli_load_model("ppl", dir, threads, use_mmap);
    const skv_model_info *in = skv_model_get_info(m);
    const int V = in->n_vocab;
    if (ctx < 0 || ctx > in->n_ctx)
        cli_die("ppl", 2, "bad value for --ctx: %d (must be 2..%d)", ctx, in->n_ctx);
    const int W = ctx ? ctx : in->n_ctx;
    if (W < 2) cli_die("ppl", 2, "bad value for --ctx: %d (must be 2..%d)", ctx, in->n_ctx);
    const int32_t bos = in->bos_id >= 0 ? in->bos_id : 0;
    const int sk = !strcmp(pa.policy, "smallkv");
    if (sk_prompt < 0 || (sk && sk_prompt >= W - 1))
        cli_die("ppl", 2, "bad value for --sk-prompt: %d (must be 1..%d)", sk_prompt, W - 2);
    if (sk && sk_prompt == 0) sk_prompt = W / 2;
    skv_policy_params pp = sk ? skv_policy_default_params("full") : cli_policy_params("ppl", &pa, NULL, m);
    const int with_policy = strcmp(pp.name, "full") != 0;
    if (chunk < 0) cli_die("ppl", 2, "bad value for --chunk: %d (must be >= 0)", chunk);
    if (chunk == 0) chunk = with_policy ? 128 : 512;

    /* Tokenize documents until W * (skip + windows) tokens are collected; drop the first skip. */
    const size_t need = (size_t)W * ((size_t)skip + (size_t)windows);
    int32_t *all = malloc(need * sizeof(int32_t));
    size_t n_all = 0;
    for (char *doc = text; doc < text + len && n_all < need;) {
        char *end = memchr(doc, 0x1e, (size_t)(text + len - doc));
        if (!end) end = text + len;
        int32_t *ids = NULL;
        size_t n = 0;
        cli_check("ppl", skv_tokenize(tok, doc, (size_t)(end - doc), &ids, &n));
        all[n_all++] = bos;
        for (size_t i = 0; i < n && n_all < need; i++) all[n_all++] = ids[i];
        free(ids);
        doc = end + 1;
    }
    int n_win = (int)(n_all / (size_t)W) - skip;
    if (n_win <= 0)
        cli_die("ppl", 1, "%s: only %zu tokens, fewer than %d windows of %d", file, n_all, skip + 1, W);
    if (skip) memmove(all, all + (size_t)skip * W, sizeof(int32_t) * (size_t)n_win * W);
    if (n_win < windows && !quiet)
        fprintf(stderr, "slimkv ppl: the corpus holds only %d windows of %d tokens\n", n_win, W);

    if ((aug_every || aug_dump) && !aug_dir) cli_die("ppl", 2, "--augment-every and --augment-dump need --augment DIR");
    if (aug_dir) {
        if (sk || with_policy) cli_die("ppl", 2, "--augment runs with the full cache only (no --policy)");
        const int rc = ppl_augment(aug_dir, aug_every, m, dir, all, n_win, W, threads, pa.backend, out, aug_dump, quiet);
        free(all);
        free(text);
        skv_model_free(m);
        skv_tokenizer_free(tok);
        return rc;
    }
    if (sk && strcmp(pa.backend, "cpu")) cli_die("ppl", 2, "--policy smallkv runs on the CPU backend only so far");
    if (sk) {
        double nll = 0, nll2 = 0, nll_full = 0, kl = 0, fast = 0, t0 = skv_time_now();
        int64_t scored = 0;
        skv_smallkv_usage u = {0};
        const skv_smallkv_params sp = cli_smallkv_params("ppl", &pa, 0, "");
        ppl_smallkv(&pa, &sp, m, all, n_win, W, sk_prompt, threads, quiet, &nll, &nll2, &nll_full, &kl, &scored, &fast,
                    &u);
        char extra[1024], *draft = NULL;
        size_t draft_len = 0;
        FILE *ms = open_memstream(&draft, &draft_len); /* the draft path as a JSON string */
        cli_json_string(ms, pa.draft, strlen(pa.draft));
        fclose(ms);
        snprintf(extra, sizeof extra, ", \"draft\": %s, \"policy\": \"smallkv\", \"budget\": %g, \"sk_prompt\": %d, "
                 "\"score\": \"%s\", \"match\": \"%s\", \"ppl_full\": %.6f, \"kl_mean\": %.6g, \"fast_bytes_mean\": %.0f, "
                 "\"slow_bytes\": %lld, \"draft_kv_bytes\": %lld, \"draft_weight_bytes\": %lld", draft,
                 sp.budget, sk_prompt, sp.score ? "window" : "acc", sp.match_window ? "window" : "prefix",
                 exp(nll_full / (double)scored), kl / (double)scored, fast, (long long)u.slow_bytes,
                 (long long)u.draft_kv_bytes, (long long)u.draft_weight_bytes);
        report(out, dir, nll, nll2, scored, skip, n_win, W, skv_time_now() - t0, quiet, extra);
        free(draft);
        free(all);
        free(text);
        skv_model_free(m);
        skv_tokenizer_free(tok);
        return 0;
    }

    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = W;
    cp.n_batch = chunk < W ? chunk : W;
    cp.kv_format = cli_kv_format("ppl", &pa);
    cp.backend = cli_backend("ppl", pa.backend);
    skv_context *c = NULL, *cpol = NULL;
    cli_check("ppl", skv_context_init(m, cp, &c));
    if (with_policy) {
        cp.policy = pp;
        cli_check("ppl", skv_context_init(m, cp, &cpol));
    }
    const int B = cp.n_batch;
    float *lg = malloc((size_t)B * V * sizeof(float));
    /* with a policy: the full cache's log-probabilities of the window, for KL */
    float *lp_full = with_policy ? malloc((size_t)W * V * sizeof(float)) : NULL;
    if (!lg || (with_policy && !lp_full)) cli_die("ppl", 1, "out of memory for the logits");
    double nll = 0, nll_pol = 0, nll2 = 0, nll2_pol = 0, kl = 0, kv_sum = 0, t0 = skv_time_now();
    int64_t scored = 0;
    for (int w = 0; w < n_win; w++) {
        const int32_t *ids = all + (size_t)w * W;
        for (int pass = 0; pass < (with_policy ? 2 : 1); pass++) {
            skv_context *cc = pass ? cpol : c;
            cli_check("ppl", skv_context_truncate(cc, 0));
            for (int off = 0; off < W; off += B) {
                int nb = W - off < B ? W - off : B;
                cli_check("ppl", skv_decode(cc, ids + off, nb, lg, 1));
                for (int i = 0; i < nb; i++) {
                    int pos = off + i;
                    if (pos + 1 >= W) break;
                    const float *row = lg + (size_t)i * V;
                    const double lse = row_lse(row, V);
                    const double e = lse - (double)row[ids[pos + 1]];
                    if (!pass) {
                        nll += e;
                        nll2 += e * e;
                        scored++;
                        if (with_policy)
                            for (int v = 0; v < V; v++) lp_full[(size_t)pos * V + v] = (float)(row[v] - lse);
                    } else {
                        nll_pol += e;
                        nll2_pol += e * e;
                        const float *ref = lp_full + (size_t)pos * V;
                        double k = 0;
                        for (int v = 0; v < V; v++) {
                            double pf = exp((double)ref[v]);
                            k += pf * ((double)ref[v] - ((double)row[v] - lse));
                        }
                        kl += k > 0 ? k : 0;
                    }
                }
            }
            if (pass) {
                skv_kv_usage u;
                skv_context_kv_usage(cc, &u);
                kv_sum += (double)u.bytes;
            }
        }
        if (!quiet) {
            if (with_policy)
                fprintf(stderr, "\rslimkv ppl: window %d/%d  ppl %.4f (full %.4f)  KL %.4f  (%.0f tok/s)", w + 1, n_win,
                        exp(nll_pol / (double)scored), exp(nll / (double)scored), kl / (double)scored,
                        2.0 * (w + 1) * W / (skv_time_now() - t0));
            else
                fprintf(stderr, "\rslimkv ppl: window %d/%d  ppl %.4f  (%.0f tok/s)", w + 1, n_win,
                        exp(nll / (double)scored), (double)(w + 1) * W / (skv_time_now() - t0));
        }
    }
    if (!quiet) fprintf(stderr, "\n");
    if (with_policy) {
        /* report the policy's perplexity; the full cache's goes alongside */
        double tmp = nll;
        nll = nll_pol;
        nll_pol = tmp;
        nll2 = nll2_pol;
    }
    char extra[512] = "";
    if (with_policy)
        snprintf(extra, sizeof extra, ", \"policy\": \"%s\", \"budget\": %g, \"budget_tokens\": %d, "
                 "\"chunk\": %d, \"ppl_full\": %.6f, \"kl_mean\": %.6g, \"kv_bytes_mean\": %.0f",
                 pp.name, pp.budget, pp.budget_tokens, chunk, exp(nll_pol / (double)scored),
                 kl / (double)scored, kv_sum / n_win);
    report(out, dir, nll, nll2, scored, skip, n_win, W, skv_time_now() - t0, quiet, extra);
    free(lg);
    free(all);
    free(text);
    free(lp_full);
    skv_context_free(c);
    skv_context_free(cpol);
    skv_model_free(m);
    skv_tokenizer_free(tok);
    return 0;
}
