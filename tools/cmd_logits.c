/*
 * cmd_logits.c — `slimkv logits`: the K largest logits at every prompt position, as JSON.
 */
#include "cli.h"

#include <math.h>
#include <stdlib.h>

int cmd_logits(int argc, char **argv) {
    int use_mmap = 0;
    const char *dir = NULL, *prompt = NULL, *file = NULL;
    int top = 8, threads = 0;
    const char *backend = "cpu";
    const cli_opt opts[] = {
        {"backend", 0, OPT_STR, &backend, "B", "cpu or cuda (default cpu)"},
        {"model", 'm', OPT_STR, &dir, "DIR", "Hugging Face model directory"},
        {"prompt", 'p', OPT_STR, &prompt, "TEXT", "prompt text"},
        {"file", 'f', OPT_STR, &file, "FILE", "read the prompt from FILE ('-': stdin)"},
        {"top", 'k', OPT_INT, &top, "K", "logits kept per position (default 8)"},
        {"threads", 't', OPT_INT, &threads, "N", "threads (default: all cores)"},
        {"mmap", 0, OPT_FLAG, &use_mmap, NULL, "keep weights in the file mapping (default: copy to huge pages)"},
        CLI_OPT_NO_CHECK,
    };
    const cli_cmd cmd = {"logits", "-m DIR -p TEXT [--top K]",
                         "Print {\"ids\", \"top_ids\", \"top_logits\"}: the K largest logits at "
                         "every prompt position.",
                         opts, (int)(sizeof opts / sizeof opts[0])};
    cli_parse(&cmd, argc, argv);
    size_t len, n;
    char *text = cli_read_prompt("logits", prompt, file, &len);
    skv_tokenizer *tok = cli_load_tokenizer("logits", dir);
    skv_model *m = cli_load_model("logits", dir, threads, use_mmap);
    const int V = skv_model_get_info(m)->n_vocab;
    if (top < 1 || top > V) cli_die("logits", 2, "bad value for --top: %d (must be 1..%d)", top, V);
    int32_t *ids = cli_tokenize("logits", tok, m, text, len, &n);
    skv_context *c = NULL;
    skv_context_params cp = skv_context_default_params();
    cp.backend = cli_backend("logits", backend);
    cli_check("logits", skv_context_init(m, cp, &c));
    float *lg = malloc(n * (size_t)V * sizeof(float));
    if (!lg) cli_die("logits", 1, "out of memory for %zu x %d logits", n, V);
    cli_check("logits", skv_decode(c, ids, (int32_t)n, lg, 1));
    /* the K largest of each row, by insertion into a sorted list (K is small): best (n, top) */
    int *best = malloc(n * (size_t)top * sizeof(int));
    for (size_t i = 0; i < n; i++) {
        const float *row = lg + i * (size_t)V;
        int *bi = best + i * (size_t)top, k = 0;
        for (int v = 0; v < V; v++) {
            if (k == top && row[v] <= row[bi[k - 1]]) continue;
            int j = k < top ? k++ : top - 1;
            while (j > 0 && row[bi[j - 1]] < row[v]) {
                bi[j] = bi[j - 1];
                j--;
            }
            bi[j] = v;
        }
    }
    printf("{\"ids\": [");
    for (size_t i = 0; i < n; i++) printf("%s%d", i ? ", " : "", ids[i]);
    for (int pass = 0; pass < 2; pass++) {
        printf(pass ? "],\n \"top_logits\": [" : "],\n \"top_ids\": [");
        for (size_t i = 0; i < n; i++) {
            const int *bi = best + i * (size_t)top;
            printf("%s[", i ? ", " : "");
            for (int j = 0; j < top; j++)
                if (pass && !isfinite(lg[i * (size_t)V + bi[j]])) printf("%snull", j ? ", " : ""); /* NaN, Inf: not JSON */
                else if (pass) printf("%s%.7g", j ? ", " : "", lg[i * (size_t)V + bi[j]]);
                else printf("%s%d", j ? ", " : "", bi[j]);
            printf("]");
        }
    }
    printf("]}\n");
    free(best);
    free(lg);
    free(ids);
    free(text);
    skv_context_free(c);
    skv_model_free(m);
    skv_tokenizer_free(tok);
    return 0;
}
