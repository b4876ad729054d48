/*
 * fuzz_tokenize.c — arbitrary bytes encoded by loaded tokenizers: the model's own (kvt-s,
 * byte-level BPE) and the test fixtures of every supported kind (GPT-2, Llama-3, Qwen2,
 * SentencePiece with byte fallback, Metaspace, unknown-token). The first byte picks the
 * tokenizer, the rest is the text. Every id must be inside the vocabulary; the ids decode both
 * at once and streamed; for kvt-s (byte-level, no normalizer) valid UTF-8 must come back
 * exactly. Paths are relative to the repository root (or $SKV_FUZZ_ROOT).
 */
#include "fuzz.h"
#include "tokenizer/tok_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const k_paths[] = {
    "models/kvt-s/tokenizer.json", /* first: the round-trip check applies to it */
    "tests/data/tok/bl_gpt2.tokenizer.json",     "tests/data/tok/bl_llama3.tokenizer.json",
    "tests/data/tok/bl_qwen2.tokenizer.json",    "tests/data/tok/bl_mix.tokenizer.json",
    "tests/data/tok/bl_ws_nodecoder.tokenizer.json", "tests/data/tok/bpe_suffix.tokenizer.json",
    "tests/data/tok/spm_llama2.tokenizer.json",  "tests/data/tok/spm_metaspace.tokenizer.json",
    "tests/data/tok/spm_unk.tokenizer.json",
};
#define N_TOK (sizeof k_paths / sizeof k_paths[0])
static skv_tokenizer *g_tok[N_TOK];
static int g_loaded;

static void free_all(void) {
    for (size_t i = 0; i < N_TOK; i++) skv_tokenizer_free(g_tok[i]);
}

static void load_all(void) {
    if (g_loaded) return;
    g_loaded = 1;
    const char *root = getenv("SKV_FUZZ_ROOT");
    for (size_t i = 0; i < N_TOK; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", root && *root ? root : ".", k_paths[i]);
        if (skv_tokenizer_load(path, &g_tok[i]) != SKV_OK) {
            fprintf(stderr, "fuzz_tokenize: %s\n", skv_last_error());
            abort(); /* a fixture that does not load is a setup error, not a finding */
        }
    }
    atexit(free_all);
}

int skv_fuzz_tokenize(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    load_all();
    const size_t which = data[0] % N_TOK;
    const skv_tokenizer *t = g_tok[which];
    const char *text = (const char *)data + 1;
    const size_t len = size - 1;
    int32_t *ids = NULL;
    size_t n = 0;
    if (skv_tokenize(t, text, len, &ids, &n) != SKV_OK) return 0;
    const int32_t V = skv_tokenizer_n_vocab(t);
    int bad = 0;
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V) bad = 1;
    if (bad) {
        free(ids);
        return 1;
    }
    char *out = NULL;
    size_t out_len = 0;
    if (skv_detokenize(t, ids, n, &out, &out_len) == SKV_OK) {
        if (which == 0 && skv_utf8_is_valid(text, len) && (out_len != len || memcmp(out, text, len))) bad = 1;
        free(out);
    }
    skv_detok *d = NULL;
    if (skv_detok_init(t, &d) == SKV_OK) {
        char piece[256];
        for (size_t i = 0; i < n; i++)
            if (skv_detok_push(d, ids[i], piece, sizeof piece) < 0) break;
        skv_detok_flush(d, piece, sizeof piece);
        skv_detok_free(d);
    }
    free(ids);
    return bad;
}

#ifdef SKV_LIBFUZZER
SKV_FUZZ_MAIN(skv_fuzz_tokenize)
#endif
