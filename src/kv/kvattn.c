/*
 * kvattn.c — decode attention kernels over cache blocks in their stored format (kvattn.h).
 *
 * Query heads go through in passes of up to HMAX, so that one widened (or decoded) row chunk
 * feeds every head of the pass from registers. Scores walk rows (one dot per row and head);
 * the weighted V sum walks 8-channel chunks, keeping each head's chunk of o in a register over
 * the block's rows (the per-channel order over rows is skv_axpy's, row after row).
 */
#include "kv/kvattn.h"

#include "kv/plan.h"

#include <math.h>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define SKV_AVX2 1
#define INLINE static inline __attribute__((always_inline))
#else
#define INLINE static inline
#endif

#define HMAX 4 /* query heads per pass */
/* over the NH heads of a pass, unrolled (NH is a constant after inlining) so that per-head
 * accumulators stay in registers */
#define FOR_HEADS(j) _Pragma("GCC unroll 4") for (int j = 0; j < NH; j++)

/* ---- element access ---------------------------------------------------------------------- */

/* Element i of a 16- or 32-bit float block, widened. */
INLINE float ld1(skv_kv_format f, const void *b, int64_t i) {
    if (f == SKV_KV_F32) return ((const float *)b)[i];
    if (f == SKV_KV_BF16) return skv_bf16_to_f32(((const uint16_t *)b)[i]);
    return skv_f16_to_f32(((const uint16_t *)b)[i]);
}

#ifdef SKV_AVX2
INLINE __m256 ld8(skv_kv_format f, const void *b, int64_t i) {
    if (f == SKV_KV_F32) return _mm256_loadu_ps((const float *)b + i);
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)b + i));
    if (f == SKV_KV_BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}
INLINE float hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}
/* The horizontal sums of NH (<= 4) accumulators, v[j] = sum of acc[j]'s lanes, in one order
 * for any NH, ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7)), so that a head's score does not
 * depend on how many heads share its pass (for the quantised kernels only). */
INLINE void hsum_heads(const __m256 *acc, const int NH, float *v) {
    const __m256 h01 = _mm256_hadd_ps(acc[0], acc[NH > 1 ? 1 : 0]);
    const __m256 h23 = _mm256_hadd_ps(acc[NH > 2 ? 2 : 0], acc[NH > 3 ? 3 : 0]);
    const __m256 h = _mm256_hadd_ps(h01, h23); /* per 128-bit lane: the four heads' partial sums */
    float r[4];
    _mm_storeu_ps(r, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
    FOR_HEADS(j) v[j] = r[j];
}
/* 8 bytes -> 8 lanes of int32 */
INLINE __m256i ld8u8(const uint8_t *p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)); }
#endif

/* ---- f32 / bf16 / f16 rows ----------------------------------------------------------------- */

/* As skv_dot(q_j, K_t): two accumulators over 16-element steps, an 8-element step into the
 * first, the horizontal sum, then the scalar tail. */
INLINE void scores_float(skv_kv_format f, int32_t hd, const void *blk, const int32_t *rows, int32_t m,
                         const float *q, const int NH, float scale, float *s, int64_t lds) {
    for (int32_t k = 0; k < m; k++) {
        const int32_t t = rows[k];
        const int64_t r = (int64_t)t * hd;
        float v[HMAX] = {0};
        int32_t i = 0;
#ifdef SKV_AVX2
        __m256 a0[HMAX], a1[HMAX];
        FOR_HEADS(j) a0[j] = a1[j] = _mm256_setzero_ps();
        for (; i + 16 <= hd; i += 16) {
            const __m256 x0 = ld8(f, blk, r + i), x1 = ld8(f, blk, r + i + 8);
            FOR_HEADS(j) {
                a0[j] = _mm256_fmadd_ps(_mm256_loadu_ps(q + j * hd + i), x0, a0[j]);
                a1[j] = _mm256_fmadd_ps(_mm256_loadu_ps(q + j * hd + i + 8), x1, a1[j]);
            }
        }
        for (; i + 8 <= hd; i += 8) {
            const __m256 x0 = ld8(f, blk, r + i);
            FOR_HEADS(j) a0[j] = _mm256_fmadd_ps(_mm256_loadu_ps(q + j * hd + i), x0, a0[j]);
        }
        FOR_HEADS(j) v[j] = hsum(_mm256_add_ps(a0[j], a1[j]));
#else
        FOR_HEADS(j) v[j] = 0;
#endif
        FOR_HEADS(j) {
            float x = v[j];
            for (int32_t e = i; e < hd; e++) x += q[j * hd + e] * ld1(f, blk, r + e);
            s[j * lds + t] = x * scale;
        }
    }
}

/* As skv_axpy(o_j, w_j[t], V_t) for each read row t in turn. */
INLINE void weigh_float(skv_kv_format f, int32_t hd, const void *blk, const int32_t *rows, int32_t m,
                        const float (*w)[SKV_KV_BLOCK], const int NH, float *o) {
    int32_t i = 0;
#ifdef SKV_AVX2
    for (; i + 8 <= hd; i += 8) {
        __m256 acc[HMAX];
        FOR_HEADS(j) acc[j] = _mm256_loadu_ps(o + j * hd + i);
        for (int32_t k = 0; k < m; k++) {
            const int32_t t = rows[k];
            const __m256 x = ld8(f, blk, (int64_t)t * hd + i);
            FOR_HEADS(j) acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(w[j][t]), x, acc[j]);
        }
        FOR_HEADS(j) _mm256_storeu_ps(o + j * hd + i, acc[j]);
    }
#endif
    for (; i < hd; i++)
        for (int32_t k = 0; k < m; k++)
            FOR_HEADS(j) o[j * hd + i] += w[j][rows[k]] * ld1(f, blk, (int64_t)rows[k] * hd + i);
}

/* ---- KIVI int8 / int4 ---------------------------------------------------------------------- */

/* Position, within a 32-channel group, of the channel an int4 kernel handles at lane l of
 * quarter k: quarters 0/1 are the low nibbles of bytes 0-7/8-15 (even channels), 2/3 the high
 * nibbles (odd channels). */
static inline int q4_channel(int k, int l) { return 16 * (k & 1) + 2 * l + (k >> 1); }

/* Keys: scores against q'_j = q_j * scale (per channel; int4: in quarter order) plus
 * c_j = q_j . min. */
INLINE void scores_quant(int bits, int32_t hd, const void *blk, const int32_t *rows, int32_t m, const float *q,
                         const int NH, float scale, float *s, int64_t lds) {
    const float *sc = blk, *mn = sc + hd;
    const uint8_t *codes = (const uint8_t *)(mn + hd);
    const int64_t rb = (int64_t)hd * bits / 8; /* code bytes per row */
    float qs[HMAX][SKV_KVATTN_MAX_HD] __attribute__((aligned(32))), cst[HMAX] = {0};
    FOR_HEADS(j) {
        const float *qj = q + j * hd;
#ifdef SKV_AVX2
        __m256 c = _mm256_setzero_ps();
        for (int32_t g = 0; g < hd; g += 32) {
            __m256 x[4];
            for (int k = 0; k < 4; k++) {
                const __m256 qv = _mm256_loadu_ps(qj + g + 8 * k);
                c = _mm256_fmadd_ps(qv, _mm256_loadu_ps(mn + g + 8 * k), c);
                x[k] = _mm256_mul_ps(qv, _mm256_loadu_ps(sc + g + 8 * k));
            }
            if (bits == 4) { /* channels into quarter order: the even ones of each 16, then the odd */
                const __m256 e0 = _mm256_shuffle_ps(x[0], x[1], _MM_SHUFFLE(2, 0, 2, 0));
                const __m256 o0 = _mm256_shuffle_ps(x[0], x[1], _MM_SHUFFLE(3, 1, 3, 1));
                const __m256 e1 = _mm256_shuffle_ps(x[2], x[3], _MM_SHUFFLE(2, 0, 2, 0));
                const __m256 o1 = _mm256_shuffle_ps(x[2], x[3], _MM_SHUFFLE(3, 1, 3, 1));
                x[0] = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e0), _MM_SHUFFLE(3, 1, 2, 0)));
                x[1] = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e1), _MM_SHUFFLE(3, 1, 2, 0)));
                x[2] = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o0), _MM_SHUFFLE(3, 1, 2, 0)));
                x[3] = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o1), _MM_SHUFFLE(3, 1, 2, 0)));
            }
            for (int k = 0; k < 4; k++) _mm256_store_ps(qs[j] + g + 8 * k, x[k]);
        }
        cst[j] = hsum(c);
#else
        float c = 0;
        for (int32_t ch = 0; ch < hd; ch++) c += qj[ch] * mn[ch];
        cst[j] = c;
        for (int32_t g = 0; g < hd; g += 32)
            for (int k = 0; k < 4; k++)
                for (int l = 0; l < 8; l++) {
                    const int ch = bits == 8 ? 8 * k + l : q4_channel(k, l);
                    qs[j][g + 8 * k + l] = qj[g + ch] * sc[g + ch];
                }
#endif
    }
    for (int32_t r = 0; r < m; r++) {
        const int32_t t = rows[r];
        const uint8_t *row = codes + t * rb;
        float v[HMAX] = {0};
#ifdef SKV_AVX2
        __m256 a0[HMAX], a1[HMAX];
        FOR_HEADS(j) a0[j] = a1[j] = _mm256_setzero_ps();
        if (bits == 8) {
            for (int32_t i = 0; i < hd; i += 16) {
                const __m256 x0 = _mm256_cvtepi32_ps(ld8u8(row + i)), x1 = _mm256_cvtepi32_ps(ld8u8(row + i + 8));
                FOR_HEADS(j) {
                    a0[j] = _mm256_fmadd_ps(_mm256_load_ps(qs[j] + i), x0, a0[j]);
                    a1[j] = _mm256_fmadd_ps(_mm256_load_ps(qs[j] + i + 8), x1, a1[j]);
                }
            }
        } else {
            const __m256i lo4 = _mm256_set1_epi32(15);
            for (int32_t g = 0; g < hd; g += 32) {
                const uint8_t *b = row + g / 2;
                const __m256i b0 = ld8u8(b), b1 = ld8u8(b + 8);
                const __m256 x0 = _mm256_cvtepi32_ps(_mm256_and_si256(b0, lo4));
                const __m256 x1 = _mm256_cvtepi32_ps(_mm256_and_si256(b1, lo4));
                const __m256 x2 = _mm256_cvtepi32_ps(_mm256_srli_epi32(b0, 4));
                const __m256 x3 = _mm256_cvtepi32_ps(_mm256_srli_epi32(b1, 4));
                FOR_HEADS(j) {
                    a0[j] = _mm256_fmadd_ps(_mm256_load_ps(qs[j] + g), x0, a0[j]);
                    a1[j] = _mm256_fmadd_ps(_mm256_load_ps(qs[j] + g + 8), x1, a1[j]);
                    a0[j] = _mm256_fmadd_ps(_mm256_load_ps(qs[j] + g + 16), x2, a0[j]);
                    a1[j] = _mm256_fmadd_ps(_mm256_load_ps(qs[j] + g + 24), x3, a1[j]);
                }
            }
        }
        FOR_HEADS(j) a0[j] = _mm256_add_ps(a0[j], a1[j]);
        hsum_heads(a0, NH, v);
#else
        FOR_HEADS(j) {
            float x = 0;
            if (bits == 8) {
                for (int32_t ch = 0; ch < hd; ch++) x += qs[j][ch] * (float)row[ch];
            } else {
                for (int32_t g = 0; g < hd; g += 32)
                    for (int k = 0; k < 4; k++)
                        for (int l = 0; l < 8; l++) {
                            const uint8_t by = row[g / 2 + 8 * (k & 1) + l];
                            x += qs[j][g + 8 * k + l] * (float)(k >> 1 ? by >> 4 : by & 15);
                        }
            }
            v[j] = x;
        }
#endif
        FOR_HEADS(j) s[j * lds + t] = (v[j] + cst[j]) * scale;
    }
}

/* Values: row t's codes weighted by w_j[t] * scale[t][g]; sum_t w_j[t] * min[t][g] added per
 * group at the end. */
INLINE void weigh_quant(int bits, int32_t hd, const void *blk, const int32_t *rows, int32_t m,
                        const float (*w)[SKV_KV_BLOCK], const int NH, float *o) {
    const int32_t ng = hd / 32;
    const float *sc = blk, *mn = sc + SKV_KV_BLOCK * ng;
    const uint8_t *codes = (const uint8_t *)(mn + SKV_KV_BLOCK * ng);
    const int64_t rb = (int64_t)hd * bits / 8;
    for (int32_t g = 0; g < ng; g++) {
        float a[HMAX][SKV_KV_BLOCK], msum[HMAX];
        FOR_HEADS(j) {
            float z[4] = {0, 0, 0, 0}; /* four partial sums: no chain of dependent adds */
            for (int32_t k = 0; k < m; k++) {
                const int32_t t = rows[k];
                a[j][k] = w[j][t] * sc[t * ng + g];
                z[k & 3] += w[j][t] * mn[t * ng + g];
            }
            msum[j] = (z[0] + z[1]) + (z[2] + z[3]);
        }
        float *og = o + g * 32;
#ifdef SKV_AVX2
        if (bits == 8) {
            for (int c = 0; c < 32; c += 8) {
                __m256 acc[HMAX];
                FOR_HEADS(j) acc[j] = _mm256_setzero_ps();
                for (int32_t k = 0; k < m; k++) {
                    const __m256 x = _mm256_cvtepi32_ps(ld8u8(codes + rows[k] * rb + g * 32 + c));
                    FOR_HEADS(j) acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(a[j][k]), x, acc[j]);
                }
                FOR_HEADS(j) {
                    float *oj = og + j * hd + c;
                    _mm256_storeu_ps(oj, _mm256_add_ps(_mm256_loadu_ps(oj), _mm256_add_ps(acc[j], _mm256_set1_ps(msum[j]))));
                }
            }
        } else {
            const __m256i lo4 = _mm256_set1_epi32(15);
            for (int h = 0; h < 2; h++) { /* bytes 0-7, then 8-15 of the group: quarters h and 2 + h */
                __m256 al[HMAX], ah[HMAX];
                FOR_HEADS(j) al[j] = ah[j] = _mm256_setzero_ps();
                for (int32_t k = 0; k < m; k++) {
                    const __m256i b = ld8u8(codes + rows[k] * rb + g * 16 + h * 8);
                    const __m256 xl = _mm256_cvtepi32_ps(_mm256_and_si256(b, lo4));
                    const __m256 xh = _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4));
                    FOR_HEADS(j) {
                        const __m256 aj = _mm256_set1_ps(a[j][k]);
                        al[j] = _mm256_fmadd_ps(aj, xl, al[j]);
                        ah[j] = _mm256_fmadd_ps(aj, xh, ah[j]);
                    }
                }
                FOR_HEADS(j) {
                    float lo[8], hi[8];
                    const __m256 ms = _mm256_set1_ps(msum[j]);
                    _mm256_storeu_ps(lo, _mm256_add_ps(al[j], ms));
                    _mm256_storeu_ps(hi, _mm256_add_ps(ah[j], ms));
                    float *oj = og + j * hd;
                    for (int l = 0; l < 8; l++) {
                        oj[q4_channel(h, l)] += lo[l];
                        oj[q4_channel(2 + h, l)] += hi[l];
                    }
                }
            }
        }
#else
        FOR_HEADS(j)
            for (int32_t ch = 0; ch < 32; ch++) {
                float x = 0;
                for (int32_t k = 0; k < m; k++) {
                    const uint8_t *row = codes + rows[k] * rb;
                    const int code = bits == 8 ? row[g * 32 + ch] : (ch & 1) ? row[g * 16 + ch / 2] >> 4 : row[g * 16 + ch / 2] & 15;
                    x += a[j][k] * (float)code;
                }
                og[j * hd + ch] += x + msum[j];
            }
#endif
    }
}

/* ---- dispatch ------------------------------------------------------------------------------- */

/* One pass of NH heads (a constant after inlining) over a block of format f. */
INLINE void scores_pass(skv_kv_format f, int32_t hd, const void *blk, const int32_t *rows, int32_t m,
                        const float *q, const int NH, float scale, float *s, int64_t lds) {
    switch (f) {
    case SKV_KV_F32: scores_float(SKV_KV_F32, hd, blk, rows, m, q, NH, scale, s, lds); break;
    case SKV_KV_BF16: scores_float(SKV_KV_BF16, hd, blk, rows, m, q, NH, scale, s, lds); break;
    case SKV_KV_F16: scores_float(SKV_KV_F16, hd, blk, rows, m, q, NH, scale, s, lds); break;
    case SKV_KV_Q8: scores_quant(8, hd, blk, rows, m, q, NH, scale, s, lds); break;
    case SKV_KV_Q4: scores_quant(4, hd, blk, rows, m, q, NH, scale, s, lds); break;
    default: SKV_ASSERT(0);
    }
}

INLINE void weigh_pass(skv_kv_format f, int32_t hd, const void *blk, const int32_t *rows, int32_t m,
                       const float (*w)[SKV_KV_BLOCK], const int NH, float *o) {
    switch (f) {
    case SKV_KV_F32: weigh_float(SKV_KV_F32, hd, blk, rows, m, w, NH, o); break;
    case SKV_KV_BF16: weigh_float(SKV_KV_BF16, hd, blk, rows, m, w, NH, o); break;
    case SKV_KV_F16: weigh_float(SKV_KV_F16, hd, blk, rows, m, w, NH, o); break;
    case SKV_KV_Q8: weigh_quant(8, hd, blk, rows, m, w, NH, o); break;
    case SKV_KV_Q4: weigh_quant(4, hd, blk, rows, m, w, NH, o); break;
    default: SKV_ASSERT(0);
    }
}

void skv_kvattn_scores(skv_kv_format fmt, int32_t hd, const void *blk, int32_t n, const float *q, int32_t nh,
                       float scale, const uint8_t *cls, float *s, int64_t lds) {
    SKV_ASSERT(n >= 0 && n <= SKV_KV_BLOCK);
    SKV_ASSERT((fmt != SKV_KV_Q8 && fmt != SKV_KV_Q4) || (hd % 32 == 0 && hd <= SKV_KVATTN_MAX_HD));
    int32_t rows[SKV_KV_BLOCK], m = 0;
    for (int32_t t = 0; t < n; t++) {
        if (!cls || cls[t] == SKV_READ_OWN) rows[m++] = t;
        else
            for (int32_t j = 0; j < nh; j++) s[j * lds + t] = -INFINITY;
    }
    if (m == 0) return;
    for (int32_t j0 = 0; j0 < nh; j0 += HMAX) {
        const float *qj = q + (int64_t)j0 * hd;
        float *sj = s + j0 * lds;
        switch (SKV_MIN(HMAX, nh - j0)) {
        case 1: scores_pass(fmt, hd, blk, rows, m, qj, 1, scale, sj, lds); break;
        case 2: scores_pass(fmt, hd, blk, rows, m, qj, 2, scale, sj, lds); break;
        case 3: scores_pass(fmt, hd, blk, rows, m, qj, 3, scale, sj, lds); break;
        default: scores_pass(fmt, hd, blk, rows, m, qj, 4, scale, sj, lds); break;
        }
    }
}

void skv_kvattn_weigh(skv_kv_format fmt, int32_t hd, const void *blk, int32_t n, const float *p, int64_t ldp,
                      const float *mul, const uint8_t *cls, int32_t nh, float *o) {
    SKV_ASSERT(n >= 0 && n <= SKV_KV_BLOCK);
    SKV_ASSERT((fmt != SKV_KV_Q8 && fmt != SKV_KV_Q4) || (hd % 32 == 0 && hd <= SKV_KVATTN_MAX_HD));
    int32_t rows[SKV_KV_BLOCK], m = 0;
    for (int32_t t = 0; t < n; t++)
        if (!cls || cls[t] != SKV_READ_SKIP) rows[m++] = t;
    if (m == 0) return;
    for (int32_t j0 = 0; j0 < nh; j0 += HMAX) {
        const int NH = SKV_MIN(HMAX, nh - j0);
        float w[HMAX][SKV_KV_BLOCK];
        FOR_HEADS(j)
            for (int32_t t = 0; t < n; t++) w[j][t] = mul ? p[(j0 + j) * ldp + t] * mul[j0 + j] : p[(j0 + j) * ldp + t];
        float *oj = o + (int64_t)j0 * hd;
        switch (NH) {
        case 1: weigh_pass(fmt, hd, blk, rows, m, (const float(*)[SKV_KV_BLOCK])w, 1, oj); break;
        case 2: weigh_pass(fmt, hd, blk, rows, m, (const float(*)[SKV_KV_BLOCK])w, 2, oj); break;
        case 3: weigh_pass(fmt, hd, blk, rows, m, (const float(*)[SKV_KV_BLOCK])w, 3, oj); break;
        default: weigh_pass(fmt, hd, blk, rows, m, (const float(*)[SKV_KV_BLOCK])w, 4, oj); break;
        }
    }
}

void skv_kvattn_prefetch(skv_kv_format fmt, int32_t hd, const void *blk, int is_v) {
#ifdef SKV_AVX2
    const size_t bytes = skv_kv_block_bytes(fmt, hd, is_v);
    for (size_t o = 0; o < bytes; o += 64) _mm_prefetch((const char *)blk + o, _MM_HINT_T0);
#else
    (void)fmt, (void)hd, (void)blk, (void)is_v;
#endif
}
