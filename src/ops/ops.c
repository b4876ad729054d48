/*
 * ops.c — CPU kernels behind ops.h. AVX2+FMA paths where the compiler targets them, scalar
 * otherwise. Decode is memory-bound: the bf16 kernels read 2 bytes per weight and widen in
 * registers.
 */
#include "ops.h"
#include "wfmt.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SKV_AVX2 1
#endif

#ifdef SKV_AVX2
static inline float hsum256(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}
/* 8 bf16 -> 8 f32 */
static inline __m256 load_bf16x8(const uint16_t *p) {
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
static inline __m256 load_f16x8(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}
#endif

#ifdef SKV_AVX2
/* e^x for 8 lanes: x = n ln2 + r, |r| <= ln2/2, e^r by a degree-6 polynomial, 2^n through the
 * exponent bits. Relative error ~2e-7 (a few ulp) over the clamped range; e^x is 0 below
 * -87.3 (including -inf: masked scores) and saturates above 88.7. */
static inline __m256 exp256(__m256 x) {
    const __m256 hi = _mm256_set1_ps(88.7f), lo = _mm256_set1_ps(-87.3f);
    const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ); /* e^x below FLT_MIN (and -inf): 0 */
    x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}
#endif

float skv_dot(const float *a, const float *b, int64_t n) {
    int64_t i = 0;
    float s = 0;
#ifdef SKV_AVX2
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    }
    for (; i + 8 <= n; i += 8)
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    s = hsum256(_mm256_add_ps(acc0, acc1));
#endif
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

void skv_axpy(float *y, float a, const float *x, int64_t n) {
    int64_t i = 0;
#ifdef SKV_AVX2
    __m256 va = _mm256_set1_ps(a);
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
#endif
    for (; i < n; i++) y[i] += a * x[i];
}

static float dot_bf16(const uint16_t *w, const float *x, int64_t n) {
    int64_t i = 0;
    float s = 0;
#ifdef SKV_AVX2
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
#ifdef __AVX512F__
    /* a0|a1 and a2|a3 as two 16-lane registers: each lane sees the FMAs it sees below, in the
     * same order (the same result bit for bit), with half the instructions */
    __m512 a01 = _mm512_setzero_ps(), a23 = _mm512_setzero_ps();
    for (; i + 32 <= n; i += 32) {
        const __m512 w0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(w + i))), 16));
        const __m512 w1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(w + i + 16))), 16));
        a01 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + i), a01);
        a23 = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + i + 16), a23);
    }
    a0 = _mm512_castps512_ps256(a01), a1 = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a01), 1));
    a2 = _mm512_castps512_ps256(a23), a3 = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a23), 1));
#endif
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(load_bf16x8(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(load_bf16x8(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(load_bf16x8(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(load_bf16x8(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(load_bf16x8(w + i), _mm256_loadu_ps(x + i), a0);
    s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
#endif
    for (; i < n; i++) s += skv_bf16_to_f32(w[i]) * x[i];
    return s;
}

static float dot_f16(const uint16_t *w, const float *x, int64_t n) {
    int64_t i = 0;
    float s = 0;
#ifdef SKV_AVX2
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_fmadd_ps(load_f16x8(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(load_f16x8(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(load_f16x8(w + i), _mm256_loadu_ps(x + i), a0);
    s = hsum256(_mm256_add_ps(a0, a1));
#endif
    for (; i < n; i++) s += skv_f16_to_f32(w[i]) * x[i];
    return s;
}

#ifdef SKV_AVX2
/* dot_bf16 of one row with 4 (or 2) activations at once, each 8 weights widened once; every
 * activation's accumulators, order and tail are dot_bf16's, so out[j] equals it bit for bit. */
#define BF16_FMA4(J, X)                                                                      \
    a##J##0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(X + i), a##J##0);                          \
    a##J##1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(X + i + 8), a##J##1);                      \
    a##J##2 = _mm256_fmadd_ps(w2, _mm256_loadu_ps(X + i + 16), a##J##2);                     \
    a##J##3 = _mm256_fmadd_ps(w3, _mm256_loadu_ps(X + i + 24), a##J##3)
#define BF16_END(J, X)                                                                       \
    for (int64_t k = i; k + 8 <= n; k += 8) a##J##0 = _mm256_fmadd_ps(load_bf16x8(w + k), _mm256_loadu_ps(X + k), a##J##0); \
    {                                                                                        \
        float s = hsum256(_mm256_add_ps(_mm256_add_ps(a##J##0, a##J##1), _mm256_add_ps(a##J##2, a##J##3))); \
        for (int64_t k = n & ~(int64_t)7; k < n; k++) s += skv_bf16_to_f32(w[k]) * X[k];         \
        out[J] = s;                                                                          \
    }
static void dot4_bf16(const uint16_t *w, const float *const *x, int64_t n, float *out) {
    const float *x0 = x[0], *x1 = x[1], *x2 = x[2], *x3 = x[3];
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00, a13 = a00;
    __m256 a20 = a00, a21 = a00, a22 = a00, a23 = a00, a30 = a00, a31 = a00, a32 = a00, a33 = a00;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m256 w0 = load_bf16x8(w + i), w1 = load_bf16x8(w + i + 8), w2 = load_bf16x8(w + i + 16),
                     w3 = load_bf16x8(w + i + 24);
        BF16_FMA4(0, x0);
        BF16_FMA4(1, x1);
        BF16_FMA4(2, x2);
        BF16_FMA4(3, x3);
    }
    BF16_END(0, x0)
    BF16_END(1, x1)
    BF16_END(2, x2)
    BF16_END(3, x3)
}
static void dot2_bf16(const uint16_t *w, const float *const *x, int64_t n, float *out) {
    const float *x0 = x[0], *x1 = x[1];
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00, a13 = a00;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m256 w0 = load_bf16x8(w + i), w1 = load_bf16x8(w + i + 8), w2 = load_bf16x8(w + i + 16),
                     w3 = load_bf16x8(w + i + 24);
        BF16_FMA4(0, x0);
        BF16_FMA4(1, x1);
    }
    BF16_END(0, x0)
    BF16_END(1, x1)
}
#undef BF16_FMA4
#undef BF16_END
#endif

void skv_weight_row_dot_multi(const skv_weight *w, int64_t r, const skv_act *const *a, int nb, float *out) {
    int j = 0;
#ifdef SKV_AVX2
    if (w->dtype == SKV_DTYPE_BF16) {
        const uint16_t *row = (const uint16_t *)w->data + r * w->cols;
        const float *x[4];
        for (; j + 4 <= nb; j += 4) {
            for (int k = 0; k < 4; k++) x[k] = a[j + k]->x;
            dot4_bf16(row, x, w->cols, out + j);
        }
        for (; j + 2 <= nb; j += 2) {
            x[0] = a[j]->x, x[1] = a[j + 1]->x;
            dot2_bf16(row, x, w->cols, out + j);
        }
    }
#endif
    for (; j < nb; j++) out[j] = skv_weight_row_dot_act(w, r, a[j]);
}

float skv_wdot_f32(const void *w, const void *x, int64_t n) { return skv_dot(w, x, n); }
float skv_wdot_f16(const void *w, const void *x, int64_t n) { return dot_f16(w, x, n); }
float skv_wdot_bf16(const void *w, const void *x, int64_t n) { return dot_bf16(w, x, n); }

static inline const uint8_t *row_ptr(const skv_weight *w, int64_t r) {
    return (const uint8_t *)w->data + r * skv_dtype_row_bytes(w->dtype, w->cols);
}

float skv_weight_row_dot_act(const skv_weight *w, int64_t r, const skv_act *a) {
    const skv_wfmt *f = skv_wfmt_of(w->dtype);
    const void *x = f->act == SKV_ACT_F32 ? (const void *)a->x : f->act == SKV_ACT_Q8_0 ? (const void *)a->q8_0 : (const void *)a->q8_K;
    SKV_ASSERT(x);
    return f->dot(row_ptr(w, r), x, w->cols);
}

unsigned skv_weight_act_kinds(const skv_weight *w) { return 1u << skv_wfmt_of(w->dtype)->act; }

float skv_weight_row_dot(const skv_weight *w, int64_t r, const float *x) {
    const skv_wfmt *f = skv_wfmt_of(w->dtype);
    if (f->act == SKV_ACT_F32) return f->dot(row_ptr(w, r), x, w->cols);
    /* one row against an f32 vector: quantize it here (the matrix-vector paths prepare it once) */
    void *buf = malloc(skv_act_bytes(w->cols));
    SKV_ASSERT(buf);
    skv_act a;
    skv_act_init(&a, x, w->cols, skv_weight_act_kinds(w), buf);
    float v = skv_weight_row_dot_act(w, r, &a);
    free(buf);
    return v;
}

void skv_matvec_rows(const skv_weight *w, const float *x, float *y, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) y[r] = skv_weight_row_dot(w, r, x);
}

void skv_matvec_rows_act(const skv_weight *w, const skv_act *a, float *y, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) y[r] = skv_weight_row_dot_act(w, r, a);
}

static void convert_bf16(const uint16_t *src, float *dst, int64_t n) {
    int64_t i = 0;
#ifdef SKV_AVX2
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load_bf16x8(src + i));
#endif
    for (; i < n; i++) dst[i] = skv_bf16_to_f32(src[i]);
}

static void convert_f16(const uint16_t *src, float *dst, int64_t n) {
    int64_t i = 0;
#ifdef SKV_AVX2
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load_f16x8(src + i));
#endif
    for (; i < n; i++) dst[i] = skv_f16_to_f32(src[i]);
}

void skv_weight_row_f32(const skv_weight *w, int64_t r, float *out) {
    const int64_t c = w->cols;
    switch (w->dtype) {
    case SKV_DTYPE_BF16: convert_bf16((const uint16_t *)w->data + r * c, out, c); break;
    case SKV_DTYPE_F16: convert_f16((const uint16_t *)w->data + r * c, out, c); break;
    case SKV_DTYPE_F32: memcpy(out, (const float *)w->data + r * c, (size_t)c * sizeof(float)); break;
    default: skv_wfmt_of(w->dtype)->to_f32(row_ptr(w, r), out, c); break;
    }
}

void skv_matmul(const skv_weight *w, const float *x, float *y, int64_t n, float *scratch, int64_t scratch_elems,
                int n_threads) {
    if (skv_qgemm(w, x, y, n, scratch, (size_t)scratch_elems * sizeof(float), n_threads)) return;
    skv_matmul_f32(w, x, y, n, scratch, scratch_elems, n_threads);
}

void skv_matmul_f32(const skv_weight *w, const float *x, float *y, int64_t n, float *scratch, int64_t scratch_elems,
                    int n_threads) {
    const float *wf = w->data;
    if (skv_dtype_is_quant(w->dtype)) {
        /* dequantise tiles of up to SKV_QTILE rows, each thread its own tile in scratch, and
         * multiply each by OpenBLAS (single-threaded inside the parallel region) */
        const int64_t rows = w->rows, cols = w->cols;
        int nt = n_threads > 0 ? n_threads : omp_get_max_threads();
        if ((int64_t)nt * SKV_QTILE * cols > scratch_elems) nt = (int)(scratch_elems / (SKV_QTILE * cols));
        SKV_ASSERT(nt >= 1);
        /* tiles as tall as the scratch allows (sgemm runs at 36 GFLOP/s per core on 64-row tiles,
         * 99 on 512-row ones), as many as a multiple of the threads */
        int64_t ntile = (rows + SKV_QTILE - 1) / SKV_QTILE;
        ntile = (ntile + nt - 1) / nt * nt; /* a multiple of the team: no thread idles at the end */
        int64_t tr = (rows + ntile - 1) / ntile;
        tr = (tr + 15) / 16 * 16;
        ntile = (rows + tr - 1) / tr;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
        for (int64_t t = 0; t < ntile; t++) {
            float *tile = scratch + (int64_t)omp_get_thread_num() * SKV_QTILE * cols;
            const int64_t r0 = t * tr, nr = SKV_MIN(tr, rows - r0);
            for (int64_t r = 0; r < nr; r++) skv_weight_row_f32(w, r0 + r, tile + r * cols);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)nr, (int)cols, 1.0f, x, (int)cols,
                        tile, (int)cols, 0.0f, y + r0, (int)rows);
        }
        return;
    }
    if (w->dtype != SKV_DTYPE_F32) {
        SKV_ASSERT(w->rows * w->cols <= scratch_elems);
        const int64_t total = w->rows * w->cols, chunk = 1 << 16;
#pragma omp parallel for schedule(static) num_threads(n_threads > 0 ? n_threads : omp_get_max_threads())
        for (int64_t s = 0; s < total; s += chunk) {
            int64_t len = SKV_MIN(chunk, total - s);
            if (w->dtype == SKV_DTYPE_BF16)
                convert_bf16((const uint16_t *)w->data + s, scratch + s, len);
            else
                convert_f16((const uint16_t *)w->data + s, scratch + s, len);
        }
        wf = scratch;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)w->rows, (int)w->cols, 1.0f,
                x, (int)w->cols, wf, (int)w->cols, 0.0f, y, (int)w->rows);
}

void skv_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps) {
    float ss = skv_dot(x, x, n);
    float scale = 1.0f / sqrtf(ss / (float)n + eps);
    for (int64_t i = 0; i < n; i++) out[i] = w[i] * (x[i] * scale);
}

void skv_rope(float *v, const float *cos, const float *sin, int32_t hd) {
    const int32_t half = hd / 2;
    for (int32_t i = 0; i < half; i++) {
        float a = v[i], b = v[i + half];
        v[i] = a * cos[i] - b * sin[i];
        v[i + half] = b * cos[i] + a * sin[i];
    }
}

float skv_softmax(float *x, int64_t n) {
    float mx = -INFINITY;
    int64_t i = 0;
#ifdef SKV_AVX2
    __m256 vm = _mm256_set1_ps(-INFINITY);
    for (; i + 8 <= n; i += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + i));
    float lanes[8];
    _mm256_storeu_ps(lanes, vm);
    for (int k = 0; k < 8; k++) mx = lanes[k] > mx ? lanes[k] : mx;
#endif
    for (; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    if (mx == -INFINITY) { /* fully masked row: define output as zeros */
        for (int64_t i = 0; i < n; i++) x[i] = 0;
        return -INFINITY;
    }
    i = 0;
    float sum = 0;
#ifdef SKV_AVX2
    const __m256 vmx = _mm256_set1_ps(mx);
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmx));
        _mm256_storeu_ps(x + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    sum = hsum256(acc);
#endif
    for (; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    const float inv = 1.0f / sum;
    i = 0;
#ifdef SKV_AVX2
    for (const __m256 vi = _mm256_set1_ps(inv); i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vi));
#endif
    for (; i < n; i++) x[i] *= inv;
    return mx + logf(sum);
}

void skv_swiglu(float *a, const float *b, int64_t n) {
    int64_t i = 0;
#ifdef SKV_AVX2
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(a + i);
        __m256 den = _mm256_add_ps(one, exp256(_mm256_sub_ps(zero, v)));
        _mm256_storeu_ps(a + i, _mm256_mul_ps(_mm256_div_ps(v, den), _mm256_loadu_ps(b + i)));
    }
#endif
    for (; i < n; i++) a[i] = a[i] / (1.0f + expf(-a[i])) * b[i];
}

float skv_silu(float x) { return x / (1.0f + expf(-x)); }

float skv_gelu_tanh(float x) {
    const float c = 0.7978845608028654f; /* sqrt(2 / pi) */
    return 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x)));
}

void skv_geglu(float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++) a[i] = skv_gelu_tanh(a[i]) * b[i];
}
