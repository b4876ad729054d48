/*
 * fuzz_gguf.c — a whole GGUF file (header, metadata, tensor infos, data) through the validation
 * of skv_gguf_parse_buffer. Accepted files must give tensor views inside the buffer whose size
 * matches dims x type, string views inside the buffer, and typed reads of every key must answer
 * without reading outside it; the tokenizer its metadata describes (if it loads) must give ids
 * inside its vocabulary on a probe string, and decode them.
 */
#include "fuzz.h"
#include "io/gguf.h"
#include "tokenizer/tok_internal.h"

int skv_fuzz_gguf(const uint8_t *data, size_t size) {
    uint8_t *buf = malloc(size ? size : 1); /* the reader takes a writable image */
    if (!buf) return 0;
    memcpy(buf, data, size);
    skv_gguf *g = NULL;
    if (skv_gguf_parse_buffer(buf, size, "fuzz.gguf", &g) != SKV_OK) {
        free(buf);
        return 0;
    }
    int bad = 0;
    unsigned sum = 0;
    const uint8_t *end = buf + size;
    for (int64_t i = 0; i < skv_gguf_n_tensors(g); i++) {
        const skv_gguf_tensor *t = skv_gguf_tensor_at(g, i);
        const uint8_t *p = t->data;
        if (p < buf || p > end || t->nbytes > (uint64_t)(end - p)) bad = 1;
        else if (t->nbytes) sum += p[0] + p[t->nbytes - 1];
        if (t->n_dims < 1 || t->n_dims > 4 || !t->name || skv_gguf_find_tensor(g, t->name) != t) bad = 1;
    }
    for (int64_t i = 0; i < skv_gguf_n_kv(g); i++) {
        const skv_gguf_kv *kv = skv_gguf_kv_at(g, i);
        int64_t v;
        double f;
        char *s = NULL;
        skv_gguf_get_int(g, kv->key, 1, INT64_MIN, INT64_MAX, &v);
        skv_gguf_get_float(g, kv->key, 1, &f);
        if (skv_gguf_get_str(g, kv->key, 1, &s) == SKV_OK) sum += (unsigned)strlen(s);
        free(s);
        if (kv->type == SKV_GGUF_ARRAY) {
            for (uint64_t j = 0; j < kv->arr_n && j < 64; j++) {
                if (kv->arr_type == SKV_GGUF_STRING) {
                    const skv_gguf_str *st = &kv->strs[j];
                    if ((const uint8_t *)st->s < buf || st->n > (uint64_t)(end - (const uint8_t *)st->s)) bad = 1;
                    else if (st->n) sum += (uint8_t)st->s[st->n - 1];
                } else {
                    sum += (unsigned)skv_gguf_arr_i(kv, j) + (unsigned)(skv_gguf_arr_f(kv, j) != 0);
                }
            }
        }
    }
    /* the tokenizer its metadata describes, if any: ids in range on a probe string */
    skv_tokenizer *tok = NULL;
    if (!bad && skv_tokenizer_from_gguf(g, &tok) == SKV_OK) {
        static const char probe[] = "Hello world, 12345 héllo! <|im_start|> \xff\xfe \xf0\x9f\x9a\x80";
        int32_t *ids = NULL;
        size_t n = 0;
        if (skv_tokenize(tok, probe, sizeof probe - 1, &ids, &n) == SKV_OK)
            for (size_t i = 0; i < n; i++)
                if (ids[i] < 0 || ids[i] >= skv_tokenizer_n_vocab(tok)) bad = 1;
        char *text = NULL;
        size_t tl = 0;
        if (!bad && n) skv_detokenize(tok, ids, n, &text, &tl);
        free(text);
        free(ids);
        skv_tokenizer_free(tok);
    }
    skv_gguf_close(g);
    free(buf);
    return bad + (int)(sum & 0);
}

#ifdef SKV_LIBFUZZER
SKV_FUZZ_MAIN(skv_fuzz_gguf)
#endif
