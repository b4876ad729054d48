/*
 * scd_prompts.h — calibration prompts for SCD from a training corpus (documents separated by
 * 0x1e): deterministic picks by seed, lengths uniform in [len_min, len_max] tokens, documents
 * of one parity (0: even indices, calibration; 1: odd, held-out ranking) so the two never share
 * a document. Documents shorter than the length are joined with token 0 between them.
 */
#ifndef SKV_SCD_PROMPTS_H
#define SKV_SCD_PROMPTS_H

#include "slimkv.h"

typedef struct scd_prompts {
    int32_t n;
    int32_t **ids;   /* (n) each (len[i]) */
    int32_t *len;
} scd_prompts;

/* Exits naming the corpus or flag on failure. whole: each document of the parity in file order
 * is one prompt (its last len_max tokens; documents under len_min tokens skipped; no seed): a
 * file of prompts written for calibration, e.g. train/scd_qa_prompts.py. */
void scd_prompts_make(const char *cmd, const char *corpus, const skv_tokenizer *tok, int32_t n, int32_t len_min,
                      int32_t len_max, uint64_t seed, int parity, int whole, scd_prompts *out);
void scd_prompts_free(scd_prompts *p);

#endif
