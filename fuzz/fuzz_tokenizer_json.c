/*
 * fuzz_tokenizer_json.c — tokenizer.json text through skv_tokenizer_load_buffer. An accepted
 * tokenizer then encodes a few fixed strings (ASCII, accents, an added token's text, invalid
 * UTF-8); every id must lie inside its vocabulary and decode without error.
 */
#include "fuzz.h"
#include "tokenizer/tok_internal.h"

#include <stdlib.h>
#include <string.h>

static const char *const k_probe[] = {
    "Hello world", "  leading and\ttabs\n\nnewlines ", "h\xc3\xa9llo 123 <|endoftext|> </s> <s>",
    "\xff\xfe invalid \xc3 utf-8 \xe2\x82", "", "\xe2\x96\x81meta \xf0\x9f\x98\x80 emoji",
};

int skv_fuzz_tokenizer_json(const uint8_t *data, size_t size) {
    skv_tokenizer *t = NULL;
    if (skv_tokenizer_load_buffer((const char *)data, size, "fuzz/tokenizer.json", &t) != SKV_OK) return 0;
    const int32_t V = skv_tokenizer_n_vocab(t);
    int bad = V <= 0;
    for (size_t k = 0; k < sizeof k_probe / sizeof k_probe[0] && !bad; k++) {
        int32_t *ids = NULL;
        size_t n = 0;
        if (skv_tokenize(t, k_probe[k], strlen(k_probe[k]), &ids, &n) != SKV_OK) continue;
        for (size_t i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= V) bad = 1;
        char *text = NULL;
        size_t len = 0;
        if (!bad && skv_detokenize(t, ids, n, &text, &len) == SKV_OK) free(text);
        skv_detok *d = NULL;
        if (!bad && skv_detok_init(t, &d) == SKV_OK) { /* streamed, through a small buffer */
            char piece[16];
            for (size_t i = 0; i < n; i++) skv_detok_push(d, ids[i], piece, sizeof piece);
            skv_detok_flush(d, piece, sizeof piece);
            skv_detok_free(d);
        }
        free(ids);
    }
    skv_tokenizer_free(t);
    return bad;
}

#ifdef SKV_LIBFUZZER
SKV_FUZZ_MAIN(skv_fuzz_tokenizer_json)
#endif
