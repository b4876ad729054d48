/*
 * wfmt.h — weight formats: one table entry per stored dtype (ops.h's skv_weight.dtype) saying
 * how a row becomes f32 (dequantisation) and how a row is dotted with an activation vector.
 *
 * Float formats dot with the f32 vector; the block-quantized formats of GGUF (ggml's layouts,
 * used in place) dot with the vector quantized once per matrix-vector product, as llama.cpp
 * does: to int8 blocks of 32 with one scale (Q8_0: for Q4_0, Q4_1, Q5_0, Q8_0) or of 256 with
 * sums per 16 (Q8_K: for Q4_K, Q5_K, Q6_K), so the inner loops are int8 products (AVX2
 * maddubs). skv_act holds the vector in every form a model's weights need.
 */
#ifndef SKV_WFMT_H
#define SKV_WFMT_H

#include "internal.h"

typedef enum skv_act_kind { SKV_ACT_F32 = 0, SKV_ACT_Q8_0 = 1, SKV_ACT_Q8_K = 2 } skv_act_kind;

/* ggml's block layouts (little-endian; f16 scales as raw bits) */
typedef struct { uint16_t d; uint8_t qs[16]; } skv_blk_q4_0;                 /* x = d (q - 8) */
typedef struct { uint16_t d, m; uint8_t qs[16]; } skv_blk_q4_1;              /* x = d q + m */
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; } skv_blk_q5_0;  /* x = d (q - 16) */
typedef struct { uint16_t d; int8_t qs[32]; } skv_blk_q8_0;                  /* x = d q */
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; } skv_blk_q4_K;
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; } skv_blk_q5_K;
typedef struct { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; } skv_blk_q6_K;

/* quantized activations: x ~ d q; s = d * sum(q) (Q8_0), bsums = sums of q per 16 (Q8_K) */
typedef struct { float d, s; int8_t qs[32]; } skv_act_q8_0;
typedef struct { float d; int8_t qs[256]; int16_t bsums[16]; } skv_act_q8_K;

typedef struct skv_wfmt {
    skv_dtype dtype;
    skv_act_kind act;
    /* n weights (a multiple of the block) of one row -> f32 */
    void (*to_f32)(const void *src, float *dst, int64_t n);
    /* dot of n weights with the activation in this format's kind (const float * for F32) */
    float (*dot)(const void *w, const void *act, int64_t n);
} skv_wfmt;

const skv_wfmt *skv_wfmt_of(skv_dtype t);

/* An activation vector x[n] in the forms a set of weights needs. */
typedef struct skv_act {
    const float *x;
    int64_t n;
    skv_act_q8_0 *q8_0; /* n/32 blocks, or NULL */
    skv_act_q8_K *q8_K; /* n/256 blocks, or NULL */
} skv_act;

/* Bytes of scratch skv_act_init needs for n values (both quantized forms). */
size_t skv_act_bytes(int64_t n);
/* Point a at x and quantize it into scratch (skv_act_bytes(n)) as the kinds in `kinds` (bit
 * 1 << SKV_ACT_Q8_0 / Q8_K) ask; a form whose block does not divide n is left NULL. */
void skv_act_init(skv_act *a, const float *x, int64_t n, unsigned kinds, void *scratch);
/* Quantize x[n] (n % 32 == 0 / n % 256 == 0) into blocks. */
void skv_quantize_q8_0(const float *x, skv_act_q8_0 *y, int64_t n);
void skv_quantize_q8_K(const float *x, skv_act_q8_K *y, int64_t n);

/* Scalar dequantisers, exposed for tests (the table's to_f32 are these). */
void skv_dequant_row(skv_dtype t, const void *src, float *dst, int64_t n);

#endif
