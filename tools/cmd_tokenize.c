/*
 * cmd_tokenize.c — `slimkv tokenize`: print the ids of a text as a JSON array.
 */
#include "cli.h"

#include <stdlib.h>

int cmd_tokenize(int argc, char **argv) {
    const char *dir = NULL, *prompt = NULL, *file = NULL;
    const cli_opt opts[] = {
        {"model", 'm', OPT_STR, &dir, "DIR", "model directory (its tokenizer.json is used)"},
        {"prompt", 'p', OPT_STR, &prompt, "TEXT", "text to tokenize"},
        {"file", 'f', OPT_STR, &file, "FILE", "read the text from FILE ('-': stdin)"},
    };
    const cli_cmd cmd = {"tokenize", "-m DIR -p TEXT",
                         "Print the token ids of TEXT (no BOS/EOS added) as a JSON array.", opts,
                         (int)(sizeof opts / sizeof opts[0])};
    cli_parse(&cmd, argc, argv);
    size_t len, n = 0;
    char *text = cli_read_prompt("tokenize", prompt, file, &len);
    skv_tokenizer *tok = cli_load_tokenizer("tokenize", dir);
    int32_t *ids = NULL;
    cli_check("tokenize", skv_tokenize(tok, text, len, &ids, &n));
    printf("[");
    for (size_t i = 0; i < n; i++) printf("%s%d", i ? ", " : "", ids[i]);
    printf("]\n");
    free(ids);
    free(text);
    skv_tokenizer_free(tok);
    return 0;
}
