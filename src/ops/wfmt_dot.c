/*
 * wfmt_dot.c — dot products of one quantized weight row with quantized activations (wfmt.h):
 * int8 x int8 (or uint4/5/6 x int8) products summed in int16/int32 with AVX2 (maddubs, madd),
 * one float multiply-add per block; a scalar version of each where AVX2 is absent.
 *
 * Bounds: maddubs adds two products of an unsigned weight code (<= 63) and an int8 (|q| <= 127),
 * at most 2 * 63 * 127 = 16002 < 32767, so no int16 saturates.
 */
#include "wfmt.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SKV_AVX2 1
#endif

#ifdef SKV_AVX2
#define F16(h) _cvtsh_ss(h) /* F16C: every AVX2 machine has it */
#else
#define F16(h) skv_f16_to_f32(h)
#endif

#ifdef SKV_AVX2
static inline float hsum8(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}
/* sum of u[i] * s[i] (u unsigned bytes, s signed bytes) as 8 int32 (one VNNI instruction
 * where the compiler targets it) */
static inline __m256i dot_us(__m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}
/* the same for two signed byte vectors */
static inline __m256i dot_ss(__m256i a, __m256i b) {
    return dot_us(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
}
/* 32 nibbles of 16 bytes: low nibbles -> bytes 0..15, high nibbles -> bytes 16..31 */
static inline __m256i nibbles32(const uint8_t *q) {
    const __m128i v = _mm_loadu_si128((const __m128i *)q), m = _mm_set1_epi8(0xF);
    const __m128i lo = _mm_and_si128(v, m), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m);
    return _mm256_insertf128_si256(_mm256_castsi128_si256(lo), hi, 1);
}
/* bit i of a 32-bit word -> byte i = 0xFF or 0 */
static inline __m256i bits32(uint32_t w) {
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303ll, 0x0202020202020202ll, 0x0101010101010101ll, 0);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)w), shuf);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
}
#endif

float skv_wdot_q4_0(const void *wv, const void *av, int64_t n) {
    const skv_blk_q4_0 *w = wv;
    const skv_act_q8_0 *a = av;
    const int64_t nb = n / 32;
#ifdef SKV_AVX2
    __m256 acc = _mm256_setzero_ps();
    const __m256i off = _mm256_set1_epi8(8);
    for (int64_t i = 0; i < nb; i++) {
        const __m256i q = _mm256_sub_epi8(nibbles32(w[i].qs), off);
        const __m256i p = dot_ss(q, _mm256_loadu_si256((const __m256i *)a[i].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(F16(w[i].d) * a[i].d), _mm256_cvtepi32_ps(p), acc);
    }
    return hsum8(acc);
#else
    float s = 0;
    for (int64_t i = 0; i < nb; i++) {
        int sum = 0;
        for (int j = 0; j < 16; j++)
            sum += ((w[i].qs[j] & 0xF) - 8) * a[i].qs[j] + ((w[i].qs[j] >> 4) - 8) * a[i].qs[j + 16];
        s += F16(w[i].d) * a[i].d * (float)sum;
    }
    return s;
#endif
}

float skv_wdot_q4_1(const void *wv, const void *av, int64_t n) {
    const skv_blk_q4_1 *w = wv;
    const skv_act_q8_0 *a = av;
    const int64_t nb = n / 32;
    float ms = 0;
#ifdef SKV_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const __m256i p = dot_us(nibbles32(w[i].qs), _mm256_loadu_si256((const __m256i *)a[i].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(F16(w[i].d) * a[i].d), _mm256_cvtepi32_ps(p), acc);
        ms += F16(w[i].m) * a[i].s;
    }
    return hsum8(acc) + ms;
#else
    float s = 0;
    for (int64_t i = 0; i < nb; i++) {
        int sum = 0;
        for (int j = 0; j < 16; j++) sum += (w[i].qs[j] & 0xF) * a[i].qs[j] + (w[i].qs[j] >> 4) * a[i].qs[j + 16];
        s += F16(w[i].d) * a[i].d * (float)sum;
        ms += F16(w[i].m) * a[i].s;
    }
    return s + ms;
#endif
}

float skv_wdot_q5_0(const void *wv, const void *av, int64_t n) {
    const skv_blk_q5_0 *w = wv;
    const skv_act_q8_0 *a = av;
    const int64_t nb = n / 32;
#ifdef SKV_AVX2
    __m256 acc = _mm256_setzero_ps();
    const __m256i h = _mm256_set1_epi8(0x10), off = _mm256_set1_epi8(16);
    for (int64_t i = 0; i < nb; i++) {
        uint32_t qh;
        memcpy(&qh, w[i].qh, 4);
        __m256i q = _mm256_or_si256(nibbles32(w[i].qs), _mm256_and_si256(bits32(qh), h));
        q = _mm256_sub_epi8(q, off);
        const __m256i p = dot_ss(q, _mm256_loadu_si256((const __m256i *)a[i].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(F16(w[i].d) * a[i].d), _mm256_cvtepi32_ps(p), acc);
    }
    return hsum8(acc);
#else
    float s = 0;
    for (int64_t i = 0; i < nb; i++) {
        uint32_t qh;
        memcpy(&qh, w[i].qh, 4);
        int sum = 0;
        for (int j = 0; j < 16; j++) {
            const int q0 = ((w[i].qs[j] & 0xF) | (((qh >> j) & 1) << 4)) - 16;
            const int q1 = ((w[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16;
            sum += q0 * a[i].qs[j] + q1 * a[i].qs[j + 16];
        }
        s += F16(w[i].d) * a[i].d * (float)sum;
    }
    return s;
#endif
}

float skv_wdot_q8_0(const void *wv, const void *av, int64_t n) {
    const skv_blk_q8_0 *w = wv;
    const skv_act_q8_0 *a = av;
    const int64_t nb = n / 32;
#ifdef SKV_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const __m256i p = dot_ss(_mm256_loadu_si256((const __m256i *)w[i].qs), _mm256_loadu_si256((const __m256i *)a[i].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(F16(w[i].d) * a[i].d), _mm256_cvtepi32_ps(p), acc);
    }
    return hsum8(acc);
#else
    float s = 0;
    for (int64_t i = 0; i < nb; i++) {
        int sum = 0;
        for (int j = 0; j < 32; j++) sum += w[i].qs[j] * a[i].qs[j];
        s += F16(w[i].d) * a[i].d * (float)sum;
    }
    return s;
#endif
}

/* The 8 six-bit scales and 8 mins of a Q4_K / Q5_K block as bytes sc[0..7], m[0..7]: bytes
 * 0-3 hold the low 6 bits of scales 0-3 (top 2 bits: of scales 4-7), bytes 4-7 those of mins
 * 0-3, bytes 8-11 the low 4 bits of scales 4-7 (low nibble) and mins 4-7 (high nibble);
 * decoded four at a time in 32-bit words. */
static inline void scales_k4(const uint8_t *q, uint8_t *sc, uint8_t *m) {
    const uint32_t k6 = 0x3f3f3f3fu, k4 = 0x0f0f0f0fu, k2 = 0x03030303u;
    uint32_t w[3], o[4];
    memcpy(w, q, 12);
    o[0] = w[0] & k6;
    o[1] = (w[2] & k4) | (((w[0] >> 6) & k2) << 4);
    o[2] = w[1] & k6;
    o[3] = ((w[2] >> 4) & k4) | (((w[1] >> 6) & k2) << 4);
    memcpy(sc, o, 8);
    memcpy(m, o + 2, 8);
}

/* Q4_K and Q5_K: sum over sub-blocks j of d sc_j (q . y) - dmin m_j sum(y) */
static inline __attribute__((always_inline)) float dot_k45(const void *wv, const void *av, int64_t n, const int five) {
    const skv_act_q8_K *a = av;
    const int64_t nb = n / 256;
    float s = 0;
#ifdef SKV_AVX2
    __m256 acc = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0xF), one = _mm256_set1_epi8(1);
#endif
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *scales, *qs, *qh = NULL;
        uint16_t dh, dmh;
        if (five) {
            const skv_blk_q5_K *w = (const skv_blk_q5_K *)wv + i;
            scales = w->scales, qs = w->qs, qh = w->qh, dh = w->d, dmh = w->dmin;
        } else {
            const skv_blk_q4_K *w = (const skv_blk_q4_K *)wv + i;
            scales = w->scales, qs = w->qs, dh = w->d, dmh = w->dmin;
        }
        uint8_t sc[8], m[8];
        scales_k4(scales, sc, m);
        int msum = 0;
        for (int j = 0; j < 8; j++) msum += m[j] * (a[i].bsums[2 * j] + a[i].bsums[2 * j + 1]);
        const float d = F16(dh) * a[i].d, dmin = F16(dmh) * a[i].d;
        s -= dmin * (float)msum;
#ifdef SKV_AVX2
        __m256i sumi = _mm256_setzero_si256();
        const __m256i hb = five ? _mm256_loadu_si256((const __m256i *)qh) : _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
            __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            if (five) {
                const __m128i s0 = _mm_cvtsi32_si128(2 * c), s1 = _mm_cvtsi32_si128(2 * c + 1);
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(hb, s0), one), 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(hb, s1), one), 4));
            }
            const __m256i y0 = _mm256_loadu_si256((const __m256i *)(a[i].qs + 64 * c));
            const __m256i y1 = _mm256_loadu_si256((const __m256i *)(a[i].qs + 64 * c + 32));
            const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, y0), _mm256_set1_epi16((short)sc[2 * c]));
            const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, y1), _mm256_set1_epi16((short)sc[2 * c + 1]));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
#else
        int sumi = 0;
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) {
                int q0 = qs[32 * c + l] & 0xF, q1 = qs[32 * c + l] >> 4;
                if (five) q0 |= ((qh[l] >> (2 * c)) & 1) << 4, q1 |= ((qh[l] >> (2 * c + 1)) & 1) << 4;
                sumi += sc[2 * c] * q0 * a[i].qs[64 * c + l] + sc[2 * c + 1] * q1 * a[i].qs[64 * c + 32 + l];
            }
        s += d * (float)sumi;
#endif
    }
#ifdef SKV_AVX2
    s += hsum8(acc);
#endif
    return s;
}

float skv_wdot_q4_K(const void *w, const void *a, int64_t n) { return dot_k45(w, a, n, 0); }
float skv_wdot_q5_K(const void *w, const void *a, int64_t n) { return dot_k45(w, a, n, 1); }

float skv_wdot_q6_K(const void *wv, const void *av, int64_t n) {
    const skv_blk_q6_K *w = wv;
    const skv_act_q8_K *a = av;
    const int64_t nb = n / 256;
    float s = 0;
#ifdef SKV_AVX2
    __m256 acc = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0xF), m2 = _mm256_set1_epi8(3);
#endif
    for (int64_t i = 0; i < nb; i++) {
        const float d = F16(w[i].d) * a[i].d;
        int off = 0; /* the -32 of every code: 32 sum_g sc_g bsum_g */
        for (int g = 0; g < 16; g++) off += w[i].scales[g] * a[i].bsums[g];
#ifdef SKV_AVX2
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = w[i].ql + 64 * h, *qh = w[i].qh + 32 * h;
            const int8_t *sc = w[i].scales + 8 * h, *y = a[i].qs + 128 * h;
            const __m256i qa = _mm256_loadu_si256((const __m256i *)ql), qb = _mm256_loadu_si256((const __m256i *)(ql + 32));
            const __m256i hv = _mm256_loadu_si256((const __m256i *)qh);
            __m256i v[4];
            v[0] = _mm256_or_si256(_mm256_and_si256(qa, m4), _mm256_slli_epi16(_mm256_and_si256(hv, m2), 4));
            v[1] = _mm256_or_si256(_mm256_and_si256(qb, m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hv, 2), m2), 4));
            v[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qa, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hv, 4), m2), 4));
            v[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qb, 4), m4),
                                   _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hv, 6), m2), 4));
            for (int k = 0; k < 4; k++) {
                const __m256i scv = _mm256_insertf128_si256(_mm256_castsi128_si256(_mm_set1_epi16(sc[2 * k])),
                                                            _mm_set1_epi16(sc[2 * k + 1]), 1);
                const __m256i p = _mm256_maddubs_epi16(v[k], _mm256_loadu_si256((const __m256i *)(y + 32 * k)));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scv));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        s -= d * (float)(32 * off);
#else
        int sumi = 0;
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = w[i].ql + 64 * h, *qh = w[i].qh + 32 * h;
            const int8_t *sc = w[i].scales + 8 * h, *y = a[i].qs + 128 * h;
            for (int l = 0; l < 32; l++) {
                const int q1 = (ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4);
                const int q2 = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
                const int q3 = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                const int q4 = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                sumi += sc[l / 16] * q1 * y[l] + sc[2 + l / 16] * q2 * y[l + 32] + sc[4 + l / 16] * q3 * y[l + 64] +
                        sc[6 + l / 16] * q4 * y[l + 96];
            }
        }
        s += d * (float)(sumi - 32 * off);
#endif
    }
#ifdef SKV_AVX2
    s += hsum8(acc);
#endif
    return s;
}
