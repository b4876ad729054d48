/*
 * qgemm.c — matrix-matrix product of K-quant weights (Q4_K, Q5_K, Q6_K) with int8 activations
 * (AVX-512 VNNI), the prefill path of skv_matmul (ops.h).
 *
 * The activations X (n, cols) are quantized per row and per 256 values as the decode path does
 * (Q8_K: d = max|x| / 127, q = round(x / d)), with the sums of q per sub-block as floats. The
 * weights are repacked, a tile of rows at a time, into panels of 16 rows: for every superblock
 * of 256 columns, the unsigned codes as 64 groups of (16 rows x 4 consecutive columns) bytes —
 * one vpdpbusd multiplies a group with 4 activation bytes broadcast to the 16 lanes, each lane
 * one weight row, so sums never need a horizontal reduction — then the per-row float scales
 * of the sub-blocks (d * sc) and, for Q4_K/Q5_K, mins (dmin * m):
 *
 *   Q4_K/Q5_K: w = d sc_j c - dmin m_j      (sub-blocks j of 32, c in 0..15 / 0..31)
 *   Q6_K:      w = d sc_g (c - 32)          (sub-blocks g of 16, c in 0..63)
 *
 * so a superblock's contribution to y[a, r] is d_a * sum_j (d sc_j)_r (c . q)_j - (dmin m_j)_r
 * sum_j(q) (Q6_K: (d sc_g)_r ((c . q)_g - 32 sum_g(q))). The integer dot (c . q) is exact
 * (|c q| <= 63 * 127, 32 terms per lane); the rest is float arithmetic in a different order
 * than the decode kernels.
 *
 * Register block: 2 panels (32 weight rows) x 4 activation rows. Each thread repacks its tile
 * of 64 rows once (amortised over all n activation rows) and keeps it in L2.
 */
#include "ops.h"
#include "wfmt.h"

#include <math.h>
#include <omp.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define SKV_QGEMM 1
#endif

/* one row's superblock of activations: int8 codes, the scale, the sub-block sums as floats
 * (Q4_K/Q5_K: sum of q over each 32; Q6_K: 32 * sum of q over each 16) */
typedef struct {
    int8_t qs[256];
    float d;
    float bs[16];
} gact;

#define PANEL 16
#define TILE_ROWS 64                        /* rows a thread repacks at once: 4 panels */
#define SB_CODES (256 * PANEL)              /* code bytes of one panel's superblock */
#define SB_BYTES (SB_CODES + 2 * 8 * PANEL * 4) /* + Q4_K: 8 scales, 8 mins; Q6_K: 16 scales (floats x 16 lanes) */
#define RA 4                                /* activation rows per micro-kernel call */

int skv_qgemm_supported(skv_dtype t) {
#ifdef SKV_QGEMM
    return t == SKV_DTYPE_Q4_K || t == SKV_DTYPE_Q5_K || t == SKV_DTYPE_Q6_K;
#else
    (void)t;
    return 0;
#endif
}

static int64_t act_bytes(int64_t n, int64_t cols) { return n * (cols / 256) * (int64_t)sizeof(gact); }
static int64_t tile_bytes(int64_t cols) { return (TILE_ROWS / PANEL) * (cols / 256) * SB_BYTES; }

size_t skv_qgemm_scratch_bytes(int64_t n, int64_t cols, int n_threads) {
    return (size_t)(act_bytes(n, cols) + (int64_t)n_threads * tile_bytes(cols) + 128); /* + alignment of both parts */
}

#ifdef SKV_QGEMM

/* x[256] -> one gact (six: the sums per 16 times 32, Q6_K; else the sums per 32) */
static void quantize_act(const float *x, gact *g, int six) {
    __m512 mx = _mm512_setzero_ps();
    for (int i = 0; i < 256; i += 16) mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_loadu_ps(x + i)));
    const float amax = _mm512_reduce_max_ps(mx);
    const float d = amax / 127.0f, id = d > 0 ? 1.0f / d : 0;
    const __m512 vid = _mm512_set1_ps(id);
    g->d = d;
    for (int i = 0; i < 256; i += 16) {
        /* cvtps rounds to nearest even, as nearbyintf in the default mode (skv_quantize_q8_K) */
        const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + i), vid));
        _mm_storeu_si128((__m128i *)(g->qs + i), _mm512_cvtsepi32_epi8(q));
        const float s = (float)_mm512_reduce_add_epi32(q);
        if (six)
            g->bs[i / 16] = 32.0f * s;
        else if (i % 32 == 0)
            g->bs[i / 32] = s;
        else
            g->bs[i / 32] += s;
    }
}

/* 256 codes (0..63) of superblock b of a K-quant row, in column order, and the per-sub-block
 * float scales sc[] and mins mn[] (Q6_K: 16 scales, no mins) */
static void unpack_sb(skv_dtype t, const void *row, int64_t b, uint8_t *c, float *sc, float *mn) {
    if (t == SKV_DTYPE_Q6_K) {
        const skv_blk_q6_K *w = (const skv_blk_q6_K *)row + b;
        const float d = skv_f16_to_f32(w->d);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = w->ql + 64 * h, *qh = w->qh + 32 * h;
            uint8_t *o = c + 128 * h;
            for (int l = 0; l < 32; l++) {
                o[l] = (uint8_t)((ql[l] & 0xF) | ((qh[l] & 3) << 4));
                o[l + 32] = (uint8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4));
                o[l + 64] = (uint8_t)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
                o[l + 96] = (uint8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
            }
        }
        for (int g = 0; g < 16; g++) sc[g] = d * (float)w->scales[g];
        return;
    }
    const uint8_t *scales, *qs, *qh = NULL;
    uint16_t dh, dmh;
    if (t == SKV_DTYPE_Q5_K) {
        const skv_blk_q5_K *w = (const skv_blk_q5_K *)row + b;
        scales = w->scales, qs = w->qs, qh = w->qh, dh = w->d, dmh = w->dmin;
    } else {
        const skv_blk_q4_K *w = (const skv_blk_q4_K *)row + b;
        scales = w->scales, qs = w->qs, dh = w->d, dmh = w->dmin;
    }
    const float d = skv_f16_to_f32(dh), dmin = skv_f16_to_f32(dmh);
    for (int j = 0; j < 8; j++) {
        int s, m;
        if (j < 4)
            s = scales[j] & 63, m = scales[j + 4] & 63;
        else
            s = (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4), m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
        sc[j] = d * (float)s, mn[j] = dmin * (float)m;
    }
    const __m256i m4 = _mm256_set1_epi8(0xF);
    for (int k = 0; k < 4; k++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * k));
        __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
        if (qh) {
            const __m256i h = _mm256_loadu_si256((const __m256i *)qh), one = _mm256_set1_epi8(1);
            lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2 * k), one), 4));
            hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2 * k + 1), one), 4));
        }
        _mm256_storeu_si256((__m256i *)(c + 64 * k), lo);
        _mm256_storeu_si256((__m256i *)(c + 64 * k + 32), hi);
    }
}

/* Repack rows r0..r0+nr (nr <= TILE_ROWS) into panels at out (rows past nr: zero) */
static void repack_tile(const skv_weight *w, int64_t r0, int64_t nr, uint8_t *out) {
    const int64_t nsb = w->cols / 256, rb = skv_dtype_row_bytes(w->dtype, w->cols);
    const int six = w->dtype == SKV_DTYPE_Q6_K;
    const int np = (int)((nr + PANEL - 1) / PANEL);
    for (int p = 0; p < np; p++)
        for (int64_t b = 0; b < nsb; b++) {
            uint8_t *sb = out + ((int64_t)p * nsb + b) * SB_BYTES;
            float *fsc = (float *)(sb + SB_CODES), *fmn = fsc + 8 * PANEL;
            for (int l = 0; l < PANEL; l++) {
                const int64_t r = (int64_t)p * PANEL + l;
                uint8_t c[256] __attribute__((aligned(32)));
                float sc[16], mn[8];
                if (r < nr) {
                    unpack_sb(w->dtype, (const uint8_t *)w->data + (r0 + r) * rb, b, c, sc, mn);
                } else {
                    memset(c, 0, sizeof c), memset(sc, 0, sizeof sc), memset(mn, 0, sizeof mn);
                }
                uint32_t c4[64];
                memcpy(c4, c, 256);
                uint32_t *dst = (uint32_t *)sb + l;
                for (int g = 0; g < 64; g++) dst[g * PANEL] = c4[g];
                if (six) {
                    for (int g = 0; g < 16; g++) fsc[g * PANEL + l] = sc[g];
                } else {
                    for (int j = 0; j < 8; j++) fsc[j * PANEL + l] = sc[j], fmn[j * PANEL + l] = mn[j];
                }
            }
        }
}

static inline __m512i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

/* acc[r][32] += the superblock's contribution of panels w0, w1 (SB_BYTES each) against
 * activation blocks a[0..RA) */
static inline __attribute__((always_inline)) void kern_k45(const uint8_t *w0, const uint8_t *w1, const gact *const *a,
                                                           __m512 acc[2][RA]) {
    __m512 fs[2][RA];
    for (int r = 0; r < RA; r++) fs[0][r] = fs[1][r] = _mm512_setzero_ps();
    const float *sc0 = (const float *)(w0 + SB_CODES), *sc1 = (const float *)(w1 + SB_CODES);
    for (int j = 0; j < 8; j++) {
        __m512i is[2][RA];
        for (int r = 0; r < RA; r++) is[0][r] = is[1][r] = _mm512_setzero_si512();
#pragma GCC unroll 8
        for (int g = 0; g < 8; g++) {
            const int kg = 8 * j + g;
            const __m512i c0 = _mm512_load_si512((const void *)(w0 + 64 * kg)), c1 = _mm512_load_si512((const void *)(w1 + 64 * kg));
#pragma GCC unroll 4
            for (int r = 0; r < RA; r++) {
                const __m512i q = bcast4(a[r]->qs + 4 * kg);
                is[0][r] = _mm512_dpbusd_epi32(is[0][r], c0, q);
                is[1][r] = _mm512_dpbusd_epi32(is[1][r], c1, q);
            }
        }
        const __m512 s0 = _mm512_load_ps(sc0 + 16 * j), s1 = _mm512_load_ps(sc1 + 16 * j);
        const __m512 m0 = _mm512_load_ps(sc0 + 128 + 16 * j), m1 = _mm512_load_ps(sc1 + 128 + 16 * j);
#pragma GCC unroll 4
        for (int r = 0; r < RA; r++) {
            const __m512 bs = _mm512_set1_ps(a[r]->bs[j]);
            fs[0][r] = _mm512_fnmadd_ps(m0, bs, _mm512_fmadd_ps(_mm512_cvtepi32_ps(is[0][r]), s0, fs[0][r]));
            fs[1][r] = _mm512_fnmadd_ps(m1, bs, _mm512_fmadd_ps(_mm512_cvtepi32_ps(is[1][r]), s1, fs[1][r]));
        }
    }
    for (int r = 0; r < RA; r++) {
        const __m512 d = _mm512_set1_ps(a[r]->d);
        acc[0][r] = _mm512_fmadd_ps(fs[0][r], d, acc[0][r]);
        acc[1][r] = _mm512_fmadd_ps(fs[1][r], d, acc[1][r]);
    }
}

static inline __attribute__((always_inline)) void kern_k6(const uint8_t *w0, const uint8_t *w1, const gact *const *a,
                                                          __m512 acc[2][RA]) {
    __m512 fs[2][RA];
    for (int r = 0; r < RA; r++) fs[0][r] = fs[1][r] = _mm512_setzero_ps();
    const float *sc0 = (const float *)(w0 + SB_CODES), *sc1 = (const float *)(w1 + SB_CODES);
    for (int j = 0; j < 16; j++) {
        __m512i is[2][RA];
        for (int r = 0; r < RA; r++) is[0][r] = is[1][r] = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int g = 0; g < 4; g++) {
            const int kg = 4 * j + g;
            const __m512i c0 = _mm512_load_si512((const void *)(w0 + 64 * kg)), c1 = _mm512_load_si512((const void *)(w1 + 64 * kg));
#pragma GCC unroll 4
            for (int r = 0; r < RA; r++) {
                const __m512i q = bcast4(a[r]->qs + 4 * kg);
                is[0][r] = _mm512_dpbusd_epi32(is[0][r], c0, q);
                is[1][r] = _mm512_dpbusd_epi32(is[1][r], c1, q);
            }
        }
        const __m512 s0 = _mm512_load_ps(sc0 + 16 * j), s1 = _mm512_load_ps(sc1 + 16 * j);
#pragma GCC unroll 4
        for (int r = 0; r < RA; r++) {
            const __m512 off = _mm512_set1_ps(a[r]->bs[j]);
            fs[0][r] = _mm512_fmadd_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(is[0][r]), off), s0, fs[0][r]);
            fs[1][r] = _mm512_fmadd_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(is[1][r]), off), s1, fs[1][r]);
        }
    }
    for (int r = 0; r < RA; r++) {
        const __m512 d = _mm512_set1_ps(a[r]->d);
        acc[0][r] = _mm512_fmadd_ps(fs[0][r], d, acc[0][r]);
        acc[1][r] = _mm512_fmadd_ps(fs[1][r], d, acc[1][r]);
    }
}

/* y rows a0..a0+na (na <= RA), columns of panels p0, p1 (p1 may equal p0: written once) of the
 * tile at row0 (valid rows nr) */
static void block(int six, const uint8_t *tile, int64_t nsb, int p0, int p1, const gact *act, int64_t a0, int na,
                  float *y, int64_t rows, int64_t row0, int64_t nr) {
    __m512 acc[2][RA];
    for (int r = 0; r < RA; r++) acc[0][r] = acc[1][r] = _mm512_setzero_ps();
    const uint8_t *w0 = tile + (int64_t)p0 * nsb * SB_BYTES, *w1 = tile + (int64_t)p1 * nsb * SB_BYTES;
    for (int64_t b = 0; b < nsb; b++) {
        const gact *a[RA];
        for (int r = 0; r < RA; r++) a[r] = act + (a0 + (r < na ? r : 0)) * nsb + b;
        if (six)
            kern_k6(w0 + b * SB_BYTES, w1 + b * SB_BYTES, a, acc);
        else
            kern_k45(w0 + b * SB_BYTES, w1 + b * SB_BYTES, a, acc);
    }
    for (int q = 0; q < (p1 == p0 ? 1 : 2); q++) {
        const int64_t c0 = (int64_t)(q ? p1 : p0) * PANEL, nv = SKV_MIN(PANEL, nr - c0);
        if (nv <= 0) continue;
        const __mmask16 m = (__mmask16)((1u << nv) - 1);
        for (int r = 0; r < na; r++) _mm512_mask_storeu_ps(y + (a0 + r) * rows + row0 + c0, m, acc[q][r]);
    }
}

int skv_qgemm(const skv_weight *w, const float *x, float *y, int64_t n, void *scratch, size_t scratch_bytes, int nt) {
    if (!skv_qgemm_supported(w->dtype) || w->cols % 256 || n < 1) return 0;
    if (nt < 1) nt = omp_get_max_threads();
    if (skv_qgemm_scratch_bytes(n, w->cols, nt) > scratch_bytes) {
        /* as many activation rows at a time as the scratch holds (rows are independent: the
         * result is the same bit for bit) */
        const int64_t fixed = (int64_t)skv_qgemm_scratch_bytes(0, w->cols, nt), per = act_bytes(1, w->cols);
        const int64_t fit = (int64_t)scratch_bytes > fixed ? ((int64_t)scratch_bytes - fixed) / per : 0;
        if (fit < 1) return 0;
        for (int64_t a0 = 0; a0 < n; a0 += fit)
            skv_qgemm(w, x + a0 * w->cols, y + a0 * w->rows, SKV_MIN(fit, n - a0), scratch, scratch_bytes, nt);
        return 1;
    }
    const int64_t rows = w->rows, cols = w->cols, nsb = cols / 256;
    const int six = w->dtype == SKV_DTYPE_Q6_K;
    uint8_t *base = (uint8_t *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    gact *act = (gact *)base;
    uint8_t *tiles = base + ((act_bytes(n, cols) + 63) & ~(int64_t)63);
    const int64_t ntile = (rows + TILE_ROWS - 1) / TILE_ROWS;
#pragma omp parallel num_threads(nt)
    {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n * nsb; i++) quantize_act(x + i * 256, act + i, six);
        uint8_t *tile = tiles + (int64_t)omp_get_thread_num() * tile_bytes(cols);
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < ntile; t++) {
            const int64_t row0 = t * TILE_ROWS, nr = SKV_MIN(TILE_ROWS, rows - row0);
            const int np = (int)((nr + PANEL - 1) / PANEL);
            repack_tile(w, row0, nr, tile);
            for (int64_t a0 = 0; a0 < n; a0 += RA) {
                const int na = (int)SKV_MIN(RA, n - a0);
                for (int p = 0; p < np; p += 2)
                    block(six, tile, nsb, p, p + 1 < np ? p + 1 : p, act, a0, na, y, rows, row0, nr);
            }
        }
    }
    return 1;
}

#else

int skv_qgemm(const skv_weight *w, const float *x, float *y, int64_t n, void *scratch, size_t scratch_bytes, int nt) {
    (void)w, (void)x, (void)y, (void)n, (void)scratch, (void)scratch_bytes, (void)nt;
    return 0;
}

#endif
