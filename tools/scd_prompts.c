/*
 * scd_prompts.c — calibration prompts from the training corpus (see scd_prompts.h).
 */
#include "scd_prompts.h"
#include "cli.h"

#include <stdlib.h>
#include <string.h>

static uint64_t next(uint64_t *s) {
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return *s >> 33;
}

void scd_prompts_make(const char *cmd, const char *corpus, const skv_tokenizer *tok, int32_t n, int32_t len_min,
                      int32_t len_max, uint64_t seed, int parity, int whole, scd_prompts *out) {
    if (n <= 0 || len_min < 2 || len_max < len_min)
        cli_die(cmd, 2, "bad prompt counts or lengths: %d prompts of %d..%d tokens", n, len_min, len_max);
    size_t tlen;
    char *text = cli_read_text_file(cmd, corpus, &tlen);
    /* document starts */
    size_t n_doc = 0, cap = 1024;
    size_t *doc = malloc(cap * sizeof(size_t));
    doc[n_doc++] = 0;
    for (size_t i = 0; i < tlen; i++)
        if (text[i] == 0x1e && i + 1 < tlen) {
            if (n_doc == cap) doc = realloc(doc, (cap *= 2) * sizeof(size_t));
            doc[n_doc++] = i + 1;
        }
    if (n_doc < 4) cli_die(cmd, 1, "%s: %zu documents (0x1e-separated) is too few", corpus, n_doc);
    out->n = n;
    out->ids = calloc((size_t)n, sizeof(int32_t *));
    out->len = calloc((size_t)n, sizeof(int32_t));
    if (whole) {
        int32_t p = 0;
        for (size_t d = (size_t)parity; d < n_doc && p < n; d += 2) {
            const size_t b = doc[d], e = d + 1 < n_doc ? doc[d + 1] - 1 : tlen;
            int32_t *t = NULL;
            size_t nt = 0;
            if (e <= b || skv_tokenize(tok, text + b, e - b, &t, &nt) != SKV_OK || nt < (size_t)len_min) {
                free(t);
                continue;
            }
            const size_t take = SKV_CLI_MIN(nt, (size_t)len_max);
            out->ids[p] = malloc(sizeof(int32_t) * take);
            memcpy(out->ids[p], t + nt - take, sizeof(int32_t) * take);
            out->len[p++] = (int32_t)take;
            free(t);
        }
        if (p < n) cli_die(cmd, 1, "%s: %d documents of parity %d with at least %d tokens, %d wanted", corpus, p, parity, len_min, n);
        free(doc);
        free(text);
        return;
    }
    uint64_t st = seed * 2654435761ULL + 17;
    for (int32_t p = 0; p < n; p++) {
        const int32_t want = len_min + (int32_t)(next(&st) % (uint64_t)(len_max - len_min + 1));
        int32_t *ids = malloc(sizeof(int32_t) * (size_t)want);
        int32_t have = 0;
        size_t d = (size_t)(next(&st) % (n_doc / 2)) * 2 + (size_t)parity;
        while (have < want) {
            if (d >= n_doc) d = (size_t)parity;
            const size_t b = doc[d], e = d + 1 < n_doc ? doc[d + 1] - 1 : tlen;
            /* a slice of the document: about 8 bytes per token is plenty */
            const size_t lim = SKV_CLI_MIN(e - b, (size_t)(want - have) * 8 + 64);
            int32_t *t = NULL;
            size_t nt = 0;
            if (lim > 0 && skv_tokenize(tok, text + b, lim, &t, &nt) == SKV_OK) {
                const int32_t take = (int32_t)SKV_CLI_MIN(nt, (size_t)(want - have));
                memcpy(ids + have, t, sizeof(int32_t) * (size_t)take);
                have += take;
            }
            free(t);
            if (have < want) ids[have++] = 0; /* separator between joined documents */
            d += 2;
        }
        out->ids[p] = ids;
        out->len[p] = want;
    }
    free(doc);
    free(text);
}

void scd_prompts_free(scd_prompts *p) {
    for (int32_t i = 0; i < p->n; i++) free(p->ids[i]);
    free(p->ids), free(p->len);
    memset(p, 0, sizeof *p);
}
