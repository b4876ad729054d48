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

/* AVX-512 with VNNI (and BW): the quantised formats' scores as exact int16 x code dot products
 * (vpdpwssd) against a query quantised to int16 per block, and their weighted V sums 16
 * channels wide. */
#if defined(SKV_AVX2) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define SKV_AVX512 1
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

#ifdef SKV_AVX512
/* ---- KIVI int8 / int4 with AVX-512 ------------------------------------------------------- */

int32_t skv_kvattn_query_levels(int32_t hd) { return SKV_MIN(16319, INT32_MAX / (255 * hd)); }

/* The codes of channels [64 i, 64 i + 64) of a row as 64 bytes: int8 in channel order; int4
 * the low nibbles (even channels) in bytes 0-31, the high nibbles (odd channels) in 32-63. */
INLINE __m512i codes64(int bits, const uint8_t *row, int32_t i) {
    if (bits == 8) return _mm512_loadu_si512((const void *)(row + 64 * i));
    const __m256i b = _mm256_loadu_si256((const __m256i *)(row + 32 * i)), m = _mm256_set1_epi8(15);
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(b, m)), _mm256_and_si256(_mm256_srli_epi16(b, 4), m), 1);
}

/* r[0..15] (16 rows of 16 dwords) -> v[k] lane i = dword k of row i (64 shuffles) */
INLINE void transpose16(const __m512i *r, __m512i *v) {
    __m512i t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) { /* u[4i + c], 128-bit lane L: dword 4L + c of rows 4i..4i+3 */
        u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int c = 0; c < 4; c++) { /* 4 x 4 transpose of 128-bit lanes over u[c], u[4 + c], ... */
        const __m512i a = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x44), b = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x44);
        const __m512i e = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xEE), d = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xEE);
        v[c] = _mm512_shuffle_i32x4(a, b, 0x88);
        v[4 + c] = _mm512_shuffle_i32x4(a, b, 0xDD);
        v[8 + c] = _mm512_shuffle_i32x4(e, d, 0x88);
        v[12 + c] = _mm512_shuffle_i32x4(e, d, 0xDD);
    }
}

/* Keys (head_dim a multiple of 64): q'_j = q_j * scale (per channel, in codes64's byte order)
 * quantised per block to integers qi = 128 qh + ql, qh in [-127, 127], ql in [-64, 63] (|qi| <=
 * skv_kvattn_query_levels(hd), so no int32 sum overflows), q'_j ~ d_j qi; each row's
 * sum_c qi_c code_c is two u8 x s8 dot products (vpdpbusd, exact), and the score is
 * (d_j dot + c_j) * scale with c_j = q_j . min. Sixteen rows at a time, their codes transposed
 * once for every head of the pass. */
INLINE void scores_vnni(int bits, int32_t hd, const void *blk, const int32_t *rows, int32_t m, const float *q,
                        const int NH, float scale, float *s, int64_t lds) {
    const float *sc = blk, *mn = sc + hd;
    const uint8_t *codes = (const uint8_t *)(mn + hd);
    const int64_t rb = (int64_t)hd * bits / 8;
    const int32_t nc = hd / 64;
    const float levels = (float)skv_kvattn_query_levels(hd);
    __m512i qh[HMAX][SKV_KVATTN_MAX_HD / 64], ql[HMAX][SKV_KVATTN_MAX_HD / 64];
    float dq[HMAX], cst[HMAX];
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1)), h64 = _mm512_set1_epi32(64);
    FOR_HEADS(j) {
        const float *qj = q + j * hd;
        __m512 x[SKV_KVATTN_MAX_HD / 16], c = _mm512_setzero_ps(), amax = _mm512_setzero_ps();
        for (int32_t i = 0; i < hd / 16; i++) {
            const __m512 qv = _mm512_loadu_ps(qj + 16 * i);
            c = _mm512_fmadd_ps(qv, _mm512_loadu_ps(mn + 16 * i), c);
            x[i] = _mm512_mul_ps(qv, _mm512_loadu_ps(sc + 16 * i));
            amax = _mm512_max_ps(amax, _mm512_abs_ps(x[i]));
        }
        cst[j] = _mm512_reduce_add_ps(c);
        const float a = _mm512_reduce_max_ps(amax);
        dq[j] = a / levels;
        const __m512 inv = _mm512_set1_ps(a > 0 ? levels / a : 0);
        for (int32_t i = 0; i < nc; i++) {
            __m512 y[4] = {x[4 * i], x[4 * i + 1], x[4 * i + 2], x[4 * i + 3]};
            if (bits == 4) { /* the 32 even channels, then the 32 odd */
                y[0] = _mm512_permutex2var_ps(x[4 * i], even, x[4 * i + 1]);
                y[1] = _mm512_permutex2var_ps(x[4 * i + 2], even, x[4 * i + 3]);
                y[2] = _mm512_permutex2var_ps(x[4 * i], odd, x[4 * i + 1]);
                y[3] = _mm512_permutex2var_ps(x[4 * i + 2], odd, x[4 * i + 3]);
            }
            __m128i hb[4], lb[4];
            for (int k = 0; k < 4; k++) {
                const __m512i qq = _mm512_cvtps_epi32(_mm512_mul_ps(y[k], inv)); /* |qq| <= levels */
                const __m512i hi = _mm512_srai_epi32(_mm512_add_epi32(qq, h64), 7);
                hb[k] = _mm512_cvtepi32_epi8(hi);
                lb[k] = _mm512_cvtepi32_epi8(_mm512_sub_epi32(qq, _mm512_slli_epi32(hi, 7)));
            }
            qh[j][i] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set_m128i(hb[1], hb[0])), _mm256_set_m128i(hb[3], hb[2]), 1);
            ql[j][i] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set_m128i(lb[1], lb[0])), _mm256_set_m128i(lb[3], lb[2]), 1);
        }
    }
    int32_t qhd[HMAX][SKV_KVATTN_MAX_HD / 4] __attribute__((aligned(64))), qld[HMAX][SKV_KVATTN_MAX_HD / 4] __attribute__((aligned(64)));
    FOR_HEADS(j)
        for (int32_t i = 0; i < nc; i++) {
            _mm512_store_si512((void *)(qhd[j] + 16 * i), qh[j][i]);
            _mm512_store_si512((void *)(qld[j] + 16 * i), ql[j][i]);
        }
    for (int32_t k0 = 0; k0 < m; k0 += 16) {
        const int cnt = (int)SKV_MIN(16, m - k0);
        __m512i ah[HMAX], al[HMAX];
        FOR_HEADS(j) ah[j] = al[j] = _mm512_setzero_si512();
        for (int32_t i = 0; i < nc; i++) {
            /* 16 rows' codes transposed: v[k] lane r = channels 4k..4k+3 of row r, so that each
             * query dword meets all 16 rows in one instruction and lane r sums row r */
            __m512i r[16], v[16];
            for (int rr = 0; rr < 16; rr++) r[rr] = codes64(bits, codes + rows[k0 + (rr < cnt ? rr : cnt - 1)] * rb, i);
            transpose16(r, v);
            FOR_HEADS(j)
                for (int k = 0; k < 16; k++) {
                    ah[j] = _mm512_dpbusd_epi32(ah[j], v[k], _mm512_set1_epi32(qhd[j][16 * i + k]));
                    al[j] = _mm512_dpbusd_epi32(al[j], v[k], _mm512_set1_epi32(qld[j][16 * i + k]));
                }
        }
        __m512i acc[HMAX];
        FOR_HEADS(j) acc[j] = _mm512_add_epi32(_mm512_slli_epi32(ah[j], 7), al[j]);
        const int dense = rows[k0 + cnt - 1] - rows[k0] == cnt - 1; /* rows in a run: one masked store */
        FOR_HEADS(j) {
            const __m512 dot = _mm512_cvtepi32_ps(acc[j]);
            const __m512 sv = _mm512_mul_ps(_mm512_fmadd_ps(dot, _mm512_set1_ps(dq[j]), _mm512_set1_ps(cst[j])), _mm512_set1_ps(scale));
            if (dense) {
                _mm512_mask_storeu_ps(s + j * lds + rows[k0], (__mmask16)((1u << cnt) - 1), sv);
            } else {
                float out[16];
                _mm512_storeu_ps(out, sv);
                for (int r = 0; r < cnt; r++) s[j * lds + rows[k0 + r]] = out[r];
            }
        }
    }
}

/* Values: row t's codes weighted by a_j[t] = w_j[t] * scale[t][g], and sum_t w_j[t] min[t][g]
 * added per group (as weigh_quant; each channel summed over rows in order, 16 channels per
 * register). The weights and sums for the groups [g0, g0 + G2) first, from a full block's rows
 * in order with vectors (gathered scales), else row by row. */
INLINE void weigh_q512_groups(int bits, int32_t hd, const void *blk, const int32_t *rows, int32_t m, int all,
                              const float (*w)[SKV_KV_BLOCK], const int NH, float *o, int32_t g0, const int G2) {
    const int32_t ng = hd / 32;
    const float *sc = blk, *mn = sc + SKV_KV_BLOCK * ng;
    const uint8_t *codes = (const uint8_t *)(mn + SKV_KV_BLOCK * ng);
    const int64_t rb = (int64_t)hd * bits / 8;
    float a[HMAX][2][SKV_KV_BLOCK] __attribute__((aligned(64))), msum[HMAX][2];
    if (all) { /* rows 0..31 */
        const __m512i t16 = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(ng));
        _Pragma("GCC unroll 2") for (int gg = 0; gg < G2; gg++) {
            const __m512i i0 = _mm512_add_epi32(t16, _mm512_set1_epi32(g0 + gg)), i1 = _mm512_add_epi32(i0, _mm512_set1_epi32(16 * ng));
            const __m512 s0 = _mm512_i32gather_ps(i0, sc, 4), s1 = _mm512_i32gather_ps(i1, sc, 4);
            const __m512 m0 = _mm512_i32gather_ps(i0, mn, 4), m1 = _mm512_i32gather_ps(i1, mn, 4);
            FOR_HEADS(j) {
                const __m512 w0 = _mm512_loadu_ps(w[j]), w1 = _mm512_loadu_ps(w[j] + 16);
                _mm512_store_ps(a[j][gg], _mm512_mul_ps(w0, s0));
                _mm512_store_ps(a[j][gg] + 16, _mm512_mul_ps(w1, s1));
                msum[j][gg] = _mm512_reduce_add_ps(_mm512_fmadd_ps(w1, m1, _mm512_mul_ps(w0, m0)));
            }
        }
    } else {
        FOR_HEADS(j)
            for (int gg = 0; gg < G2; gg++) {
                const int32_t g = g0 + gg;
                float z[4] = {0, 0, 0, 0};
                for (int32_t k = 0; k < m; k++) {
                    const int32_t t = rows[k];
                    a[j][gg][k] = w[j][t] * sc[t * ng + g];
                    z[k & 3] += w[j][t] * mn[t * ng + g];
                }
                msum[j][gg] = (z[0] + z[1]) + (z[2] + z[3]);
            }
    }
    const __m512i lo4 = _mm512_set1_epi32(15);
    __m512 acc[HMAX][4];
    FOR_HEADS(j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = _mm512_setzero_ps();
    for (int32_t k = 0; k < m; k++) {
        const uint8_t *row = codes + rows[k] * rb;
        __m512 x[4];
        _Pragma("GCC unroll 2") for (int gg = 0; gg < G2; gg++) {
            if (bits == 8) {
                x[2 * gg] = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(row + (g0 + gg) * 32))));
                x[2 * gg + 1] = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(row + (g0 + gg) * 32 + 16))));
            } else { /* byte i: channel 2i (low nibble), 2i + 1 (high) */
                const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(row + (g0 + gg) * 16)));
                x[2 * gg] = _mm512_cvtepi32_ps(_mm512_and_si512(b, lo4));
                x[2 * gg + 1] = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
            }
        }
        FOR_HEADS(j) {
            _Pragma("GCC unroll 2") for (int gg = 0; gg < G2; gg++) {
                const __m512 aj = _mm512_set1_ps(a[j][gg][k]);
                acc[j][2 * gg] = _mm512_fmadd_ps(aj, x[2 * gg], acc[j][2 * gg]);
                acc[j][2 * gg + 1] = _mm512_fmadd_ps(aj, x[2 * gg + 1], acc[j][2 * gg + 1]);
            }
        }
    }
    const __m512i ilo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i ihi = _mm512_add_epi32(ilo, _mm512_set1_epi32(8));
    FOR_HEADS(j) {
        _Pragma("GCC unroll 2") for (int gg = 0; gg < G2; gg++) {
            float *og = o + j * hd + (g0 + gg) * 32;
            const __m512 ms = _mm512_set1_ps(msum[j][gg]);
            __m512 u = _mm512_add_ps(acc[j][2 * gg], ms), v = _mm512_add_ps(acc[j][2 * gg + 1], ms);
            if (bits == 4) { /* (even, odd) lanes back to channel order */
                const __m512 e = _mm512_permutex2var_ps(u, ilo, v), h = _mm512_permutex2var_ps(u, ihi, v);
                u = e, v = h;
            }
            _mm512_storeu_ps(og, _mm512_add_ps(_mm512_loadu_ps(og), u));
            _mm512_storeu_ps(og + 16, _mm512_add_ps(_mm512_loadu_ps(og + 16), v));
        }
    }
}

INLINE void weigh_q512(int bits, int32_t hd, const void *blk, const int32_t *rows, int32_t m,
                       const float (*w)[SKV_KV_BLOCK], const int NH, float *o) {
    const int32_t ng = hd / 32;
    const int all = m == SKV_KV_BLOCK; /* rows 0..31 in order */
    int32_t g0 = 0;
    for (; g0 + 2 <= ng; g0 += 2) weigh_q512_groups(bits, hd, blk, rows, m, all, w, NH, o, g0, 2);
    if (g0 < ng) weigh_q512_groups(bits, hd, blk, rows, m, all, w, NH, o, g0, 1);
}
#else
int32_t skv_kvattn_query_levels(int32_t hd) {
    (void)hd;
    return 0;
}
#endif

/* ---- dispatch ------------------------------------------------------------------------------- */

/* One pass of NH heads (a constant after inlining) over a block of format f. */
INLINE void scores_pass(skv_kv_format f, int32_t hd, const void *blk, const int32_t *rows, int32_t m,
                        const float *q, const int NH, float scale, float *s, int64_t lds) {
    switch (f) {
    case SKV_KV_F32: scores_float(SKV_KV_F32, hd, blk, rows, m, q, NH, scale, s, lds); break;
    case SKV_KV_BF16: scores_float(SKV_KV_BF16, hd, blk, rows, m, q, NH, scale, s, lds); break;
    case SKV_KV_F16: scores_float(SKV_KV_F16, hd, blk, rows, m, q, NH, scale, s, lds); break;
#ifdef SKV_AVX512
    case SKV_KV_Q8:
        if (hd % 64 == 0) scores_vnni(8, hd, blk, rows, m, q, NH, scale, s, lds);
        else scores_quant(8, hd, blk, rows, m, q, NH, scale, s, lds);
        break;
    case SKV_KV_Q4:
        if (hd % 64 == 0) scores_vnni(4, hd, blk, rows, m, q, NH, scale, s, lds);
        else scores_quant(4, hd, blk, rows, m, q, NH, scale, s, lds);
        break;
#else
    case SKV_KV_Q8: scores_quant(8, hd, blk, rows, m, q, NH, scale, s, lds); break;
    case SKV_KV_Q4: scores_quant(4, hd, blk, rows, m, q, NH, scale, s, lds); break;
#endif
    default: SKV_ASSERT(0);
    }
}

INLINE void weigh_pass(skv_kv_format f, int32_t hd, const void *blk, const int32_t *rows, int32_t m,
                       const float (*w)[SKV_KV_BLOCK], const int NH, float *o) {
    switch (f) {
    case SKV_KV_F32: weigh_float(SKV_KV_F32, hd, blk, rows, m, w, NH, o); break;
    case SKV_KV_BF16: weigh_float(SKV_KV_BF16, hd, blk, rows, m, w, NH, o); break;
    case SKV_KV_F16: weigh_float(SKV_KV_F16, hd, blk, rows, m, w, NH, o); break;
#ifdef SKV_AVX512
    case SKV_KV_Q8: weigh_q512(8, hd, blk, rows, m, w, NH, o); break;
    case SKV_KV_Q4: weigh_q512(4, hd, blk, rows, m, w, NH, o); break;
#else
    case SKV_KV_Q8: weigh_quant(8, hd, blk, rows, m, w, NH, o); break;
    case SKV_KV_Q4: weigh_quant(4, hd, blk, rows, m, w, NH, o); break;
#endif
    default: SKV_ASSERT(0);
    }
}

/* The rows of a block the kernels read, ascending: those with cls[t] == SKV_READ_OWN (own_only)
 * or != SKV_READ_SKIP; every row below n without cls. Returns their count. (Kept out of line:
 * inlined into the dispatch its counter lived on the stack, a store-to-load chain per row.) */
static __attribute__((noinline)) int32_t read_rows(const uint8_t *cls, int32_t n, int own_only, int32_t *rows) {
    int32_t m = 0;
    if (!cls) {
        for (int32_t t = 0; t < n; t++) rows[t] = t;
        return n;
    }
    for (int32_t t = 0; t < n; t++)
        if (own_only ? cls[t] == SKV_READ_OWN : cls[t] != SKV_READ_SKIP) rows[m++] = t;
    return m;
}

void skv_kvattn_scores(skv_kv_format fmt, int32_t hd, const void *blk, int32_t n, const float *q, int32_t nh,
                       float scale, const uint8_t *cls, float *s, int64_t lds) {
    SKV_ASSERT(n >= 0 && n <= SKV_KV_BLOCK);
    SKV_ASSERT((fmt != SKV_KV_Q8 && fmt != SKV_KV_Q4) || (hd % 32 == 0 && hd <= SKV_KVATTN_MAX_HD));
    int32_t rows[SKV_KV_BLOCK];
    const int32_t m = read_rows(cls, n, 1, rows);
    if (m < n)
        for (int32_t t = 0; t < n; t++)
            if (cls[t] != SKV_READ_OWN)
                for (int32_t j = 0; j < nh; j++) s[j * lds + t] = -INFINITY;
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
    int32_t rows[SKV_KV_BLOCK];
    const int32_t m = read_rows(cls, n, 0, rows);
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
