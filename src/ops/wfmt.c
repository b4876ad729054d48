/*
 * wfmt.c — dequantisation of ggml's block formats (layouts in wfmt.h), activation
 * quantisation (Q8_0, Q8_K) and the weight-format table. The dot kernels are in wfmt_dot.c.
 */
#include "wfmt.h"

#include <math.h>
#if defined(__F16C__)
#include <immintrin.h>
#define F16(h) _cvtsh_ss(h)
#else
#define F16(h) skv_f16_to_f32(h)
#endif

static void deq_q4_0(const void *src, float *y, int64_t n) {
    const skv_blk_q4_0 *b = src;
    for (int64_t i = 0; i < n / 32; i++, y += 32) {
        const float d = F16(b[i].d);
        for (int j = 0; j < 16; j++) {
            y[j] = d * (float)((b[i].qs[j] & 0xF) - 8);
            y[j + 16] = d * (float)((b[i].qs[j] >> 4) - 8);
        }
    }
}

static void deq_q4_1(const void *src, float *y, int64_t n) {
    const skv_blk_q4_1 *b = src;
    for (int64_t i = 0; i < n / 32; i++, y += 32) {
        const float d = F16(b[i].d), m = F16(b[i].m);
        for (int j = 0; j < 16; j++) {
            y[j] = d * (float)(b[i].qs[j] & 0xF) + m;
            y[j + 16] = d * (float)(b[i].qs[j] >> 4) + m;
        }
    }
}

static void deq_q5_0(const void *src, float *y, int64_t n) {
    const skv_blk_q5_0 *b = src;
    for (int64_t i = 0; i < n / 32; i++, y += 32) {
        const float d = F16(b[i].d);
        uint32_t qh;
        memcpy(&qh, b[i].qh, 4);
        for (int j = 0; j < 16; j++) {
            const int h0 = (qh >> j) & 1, h1 = (qh >> (j + 16)) & 1;
            y[j] = d * (float)(((b[i].qs[j] & 0xF) | (h0 << 4)) - 16);
            y[j + 16] = d * (float)(((b[i].qs[j] >> 4) | (h1 << 4)) - 16);
        }
    }
}

static void deq_q8_0(const void *src, float *y, int64_t n) {
    const skv_blk_q8_0 *b = src;
    for (int64_t i = 0; i < n / 32; i++, y += 32) {
        const float d = F16(b[i].d);
        for (int j = 0; j < 32; j++) y[j] = d * (float)b[i].qs[j];
    }
}

/* the 6-bit scale and min of sub-block j of a Q4_K / Q5_K block */
static inline void scale_min_k4(int j, const uint8_t *q, int *sc, int *m) {
    if (j < 4) {
        *sc = q[j] & 63, *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

static void deq_q4_K(const void *src, float *y, int64_t n) {
    const skv_blk_q4_K *b = src;
    for (int64_t i = 0; i < n / 256; i++) {
        const float d = F16(b[i].d), dmin = F16(b[i].dmin);
        const uint8_t *q = b[i].qs;
        for (int c = 0; c < 4; c++, q += 32, y += 64) {
            int sc0, m0, sc1, m1;
            scale_min_k4(2 * c, b[i].scales, &sc0, &m0);
            scale_min_k4(2 * c + 1, b[i].scales, &sc1, &m1);
            const float d0 = d * (float)sc0, n0 = dmin * (float)m0, d1 = d * (float)sc1, n1 = dmin * (float)m1;
            for (int l = 0; l < 32; l++) {
                y[l] = d0 * (float)(q[l] & 0xF) - n0;
                y[l + 32] = d1 * (float)(q[l] >> 4) - n1;
            }
        }
    }
}

static void deq_q5_K(const void *src, float *y, int64_t n) {
    const skv_blk_q5_K *b = src;
    for (int64_t i = 0; i < n / 256; i++) {
        const float d = F16(b[i].d), dmin = F16(b[i].dmin);
        const uint8_t *q = b[i].qs, *qh = b[i].qh;
        for (int c = 0; c < 4; c++, q += 32, y += 64) {
            int sc0, m0, sc1, m1;
            scale_min_k4(2 * c, b[i].scales, &sc0, &m0);
            scale_min_k4(2 * c + 1, b[i].scales, &sc1, &m1);
            const float d0 = d * (float)sc0, n0 = dmin * (float)m0, d1 = d * (float)sc1, n1 = dmin * (float)m1;
            for (int l = 0; l < 32; l++) {
                y[l] = d0 * (float)((q[l] & 0xF) + (((qh[l] >> (2 * c)) & 1) << 4)) - n0;
                y[l + 32] = d1 * (float)((q[l] >> 4) + (((qh[l] >> (2 * c + 1)) & 1) << 4)) - n1;
            }
        }
    }
}

static void deq_q6_K(const void *src, float *y, int64_t n) {
    const skv_blk_q6_K *b = src;
    for (int64_t i = 0; i < n / 256; i++) {
        const float d = F16(b[i].d);
        const uint8_t *ql = b[i].ql, *qh = b[i].qh;
        const int8_t *sc = b[i].scales;
        for (int h = 0; h < 2; h++, ql += 64, qh += 32, sc += 8, y += 128)
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * (float)sc[is] * (float)q1;
                y[l + 32] = d * (float)sc[is + 2] * (float)q2;
                y[l + 64] = d * (float)sc[is + 4] * (float)q3;
                y[l + 96] = d * (float)sc[is + 6] * (float)q4;
            }
    }
}

static void deq_f32(const void *src, float *y, int64_t n) { memcpy(y, src, (size_t)n * sizeof(float)); }
static void deq_f16(const void *src, float *y, int64_t n) {
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++) y[i] = skv_f16_to_f32(s[i]);
}
static void deq_bf16(const void *src, float *y, int64_t n) {
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++) y[i] = skv_bf16_to_f32(s[i]);
}

void skv_dequant_row(skv_dtype t, const void *src, float *dst, int64_t n) { skv_wfmt_of(t)->to_f32(src, dst, n); }

/* ------------------------------------------------------------- activation quantisation */

void skv_quantize_q8_0(const float *x, skv_act_q8_0 *y, int64_t n) {
    for (int64_t i = 0; i < n / 32; i++, x += 32) {
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f, id = d > 0 ? 1.0f / d : 0;
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            const int q = (int)nearbyintf(x[j] * id);
            y[i].qs[j] = (int8_t)q;
            sum += q;
        }
        y[i].d = d;
        y[i].s = d * (float)sum;
    }
}

void skv_quantize_q8_K(const float *x, skv_act_q8_K *y, int64_t n) {
    for (int64_t i = 0; i < n / 256; i++, x += 256) {
        float amax = 0;
        for (int j = 0; j < 256; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f, id = d > 0 ? 1.0f / d : 0;
        for (int j = 0; j < 256; j++) y[i].qs[j] = (int8_t)(int)nearbyintf(x[j] * id);
        for (int g = 0; g < 16; g++) {
            int s = 0;
            for (int j = 0; j < 16; j++) s += y[i].qs[g * 16 + j];
            y[i].bsums[g] = (int16_t)s;
        }
        y[i].d = d;
    }
}

size_t skv_act_bytes(int64_t n) {
    return (size_t)(n / 32 + 1) * sizeof(skv_act_q8_0) + (size_t)(n / 256 + 1) * sizeof(skv_act_q8_K) + 64;
}

void skv_act_init(skv_act *a, const float *x, int64_t n, unsigned kinds, void *scratch) {
    a->x = x, a->n = n, a->q8_0 = NULL, a->q8_K = NULL;
    uint8_t *p = scratch;
    if ((kinds & (1u << SKV_ACT_Q8_0)) && n % 32 == 0) {
        a->q8_0 = (skv_act_q8_0 *)p;
        skv_quantize_q8_0(x, a->q8_0, n);
    }
    p += (size_t)(n / 32 + 1) * sizeof(skv_act_q8_0);
    p = (uint8_t *)(((uintptr_t)p + 31) & ~(uintptr_t)31);
    if ((kinds & (1u << SKV_ACT_Q8_K)) && n % 256 == 0) {
        a->q8_K = (skv_act_q8_K *)p;
        skv_quantize_q8_K(x, a->q8_K, n);
    }
}

/* ------------------------------------------------------------------------------ table */

float skv_wdot_f32(const void *w, const void *x, int64_t n);
float skv_wdot_f16(const void *w, const void *x, int64_t n);
float skv_wdot_bf16(const void *w, const void *x, int64_t n);
float skv_wdot_q4_0(const void *w, const void *a, int64_t n);
float skv_wdot_q4_1(const void *w, const void *a, int64_t n);
float skv_wdot_q5_0(const void *w, const void *a, int64_t n);
float skv_wdot_q8_0(const void *w, const void *a, int64_t n);
float skv_wdot_q4_K(const void *w, const void *a, int64_t n);
float skv_wdot_q5_K(const void *w, const void *a, int64_t n);
float skv_wdot_q6_K(const void *w, const void *a, int64_t n);

static const skv_wfmt FMT[SKV_DTYPE_COUNT] = {
    [SKV_DTYPE_F32] = {SKV_DTYPE_F32, SKV_ACT_F32, deq_f32, skv_wdot_f32},
    [SKV_DTYPE_F16] = {SKV_DTYPE_F16, SKV_ACT_F32, deq_f16, skv_wdot_f16},
    [SKV_DTYPE_BF16] = {SKV_DTYPE_BF16, SKV_ACT_F32, deq_bf16, skv_wdot_bf16},
    [SKV_DTYPE_Q4_0] = {SKV_DTYPE_Q4_0, SKV_ACT_Q8_0, deq_q4_0, skv_wdot_q4_0},
    [SKV_DTYPE_Q4_1] = {SKV_DTYPE_Q4_1, SKV_ACT_Q8_0, deq_q4_1, skv_wdot_q4_1},
    [SKV_DTYPE_Q5_0] = {SKV_DTYPE_Q5_0, SKV_ACT_Q8_0, deq_q5_0, skv_wdot_q5_0},
    [SKV_DTYPE_Q8_0] = {SKV_DTYPE_Q8_0, SKV_ACT_Q8_0, deq_q8_0, skv_wdot_q8_0},
    [SKV_DTYPE_Q4_K] = {SKV_DTYPE_Q4_K, SKV_ACT_Q8_K, deq_q4_K, skv_wdot_q4_K},
    [SKV_DTYPE_Q5_K] = {SKV_DTYPE_Q5_K, SKV_ACT_Q8_K, deq_q5_K, skv_wdot_q5_K},
    [SKV_DTYPE_Q6_K] = {SKV_DTYPE_Q6_K, SKV_ACT_Q8_K, deq_q6_K, skv_wdot_q6_K},
};

const skv_wfmt *skv_wfmt_of(skv_dtype t) {
    SKV_ASSERT((unsigned)t < SKV_DTYPE_COUNT);
    return &FMT[t];
}
