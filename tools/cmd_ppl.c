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

int cmd_ppl(int argc, char **argv) {
    int use_mmap = 0;
    const char *dir = NULL, *file = NULL, *out = NULL;
    int windows = 200, threads = 0, ctx = 0, quiet = 0;
    const cli_opt opts[] = {
        {"model", 'm', OPT_STR, &dir, "DIR", "Hugging Face model directory"},
        {"file", 'f', OPT_STR, &file, "FILE", "text corpus, plain or .xz; documents split by 0x1e"},
        {"windows", 'w', OPT_INT, &windows, "W", "score the first W windows (default 200)"},
        {"ctx", 'c', OPT_INT, &ctx, "N", "window length in tokens (default: the model's context)"},
        {"threads", 't', OPT_INT, &threads, "N", "threads (default: all cores)"},
        {"mmap", 0, OPT_FLAG, &use_mmap, NULL, "keep weights in the file mapping (default: copy to huge pages)"},
        {"out", 'o', OPT_STR, &out, "FILE", "also write the result as JSON (with commit, machine, command)"},
        {"quiet", 'q', OPT_FLAG, &quiet, NULL, "no progress on standard error"},
    };
    const cli_cmd cmd = {"ppl", "-m DIR -f FILE [--windows W]",
                         "Perplexity of a corpus under the model (docs/evaluation.md section 3).",
                         opts, (int)(sizeof opts / sizeof opts[0])};
    cli_parse(&cmd, argc, argv);
    if (!file) cli_die("ppl", 2, "no corpus: give -f FILE");
    if (windows < 1) cli_die("ppl", 2, "bad value for --windows: %d (must be >= 1)", windows);
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

    /* Tokenize documents until W * windows tokens are collected. */
    const size_t need = (size_t)W * (size_t)windows;
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
    int n_win = (int)(n_all / (size_t)W);
    if (n_win == 0)
        cli_die("ppl", 1, "%s: only %zu tokens, fewer than one window of %d", file, n_all, W);
    if (n_win < windows && !quiet)
        fprintf(stderr, "slimkv ppl: the corpus holds only %d windows of %d tokens\n", n_win, W);

    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = W;
    skv_context *c = NULL;
    cli_check("ppl", skv_context_init(m, cp, &c));
    const int B = cp.n_batch < W ? cp.n_batch : W;
    float *lg = malloc((size_t)B * V * sizeof(float));
    double nll = 0, t0 = skv_time_now();
    int64_t scored = 0;
    for (int w = 0; w < n_win; w++) {
        const int32_t *ids = all + (size_t)w * W;
        cli_check("ppl", skv_context_truncate(c, 0));
        for (int off = 0; off < W; off += B) {
            int nb = W - off < B ? W - off : B;
            cli_check("ppl", skv_decode(c, ids + off, nb, lg, 1));
            for (int i = 0; i < nb; i++) {
                int pos = off + i;
                if (pos + 1 >= W) break;
                const float *row = lg + (size_t)i * V;
                float mx = row[0];
                for (int v = 1; v < V; v++) mx = row[v] > mx ? row[v] : mx;
                double s = 0;
                for (int v = 0; v < V; v++) s += exp((double)row[v] - mx);
                nll += (double)mx + log(s) - (double)row[ids[pos + 1]];
                scored++;
            }
        }
        if (!quiet)
            fprintf(stderr, "\rslimkv ppl: window %d/%d  ppl %.4f  (%.0f tok/s)", w + 1, n_win,
                    exp(nll / (double)scored), (double)(w + 1) * W / (skv_time_now() - t0));
    }
    if (!quiet) fprintf(stderr, "\n");
    double secs = skv_time_now() - t0, ppl = exp(nll / (double)scored);
    printf("{\"ppl\": %.6f, \"nll\": %.6f, \"windows\": %d, \"window_tokens\": %d, "
           "\"tokens_scored\": %lld, \"seconds\": %.2f}\n",
           ppl, nll / (double)scored, n_win, W, (long long)scored, secs);
    if (out) {
        FILE *f = fopen(out, "w");
        if (!f) cli_die("ppl", 1, "%s: cannot write", out);
        char commit[64], machine[256], cmdline[4096];
        cli_git_commit(commit, sizeof commit);
        cli_machine(machine, sizeof machine);
        cli_command_line(cmdline, sizeof cmdline);
        fprintf(f, "{\n  \"commit\": \"%s\",\n  \"machine\": \"%s\",\n  \"command\": ", commit, machine);
        cli_json_string(f, cmdline, strlen(cmdline));
        fprintf(f, ",\n  \"model\": ");
        cli_json_string(f, dir, strlen(dir));
        fprintf(f, ",\n  \"ppl\": %.6f,\n  \"nll\": %.6f,\n  \"windows\": %d,\n  \"window_tokens\": %d,\n"
                "  \"tokens_scored\": %lld,\n  \"seconds\": %.2f\n}\n",
                ppl, nll / (double)scored, n_win, W, (long long)scored, secs);
        fclose(f);
    }
    free(lg);
    free(all);
    free(text);
    skv_context_free(c);
    skv_model_free(m);
    skv_tokenizer_free(tok);
    return 0;
}
