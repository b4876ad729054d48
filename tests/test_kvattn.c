/*
 * test_kvattn.c — decode attention kernels that read cache blocks in their stored format
 * (kv/kvattn.c), against double-precision references on random rows, against the old
 * dequantise-to-f32 path (bit for bit for f32/bf16/f16), and the f16 cache in the model.
 *
 * Bounds. A float dot or sum of n terms computed with fma in any order has an error of at most
 * (n + 1) u sum |terms| (u = 2^-24). The kernels' terms:
 *   scores, f32/bf16/f16: q_c k_c                          -> (hd + 1) u sum |q_c k_c|
 *   scores, int8/int4: (q_c s_c) code + q_c m_c, two sums   -> (hd + 3) u sum |q_c| (|s_c| code + |m_c|)
 *   weighted V, f32/bf16/f16: w_t v_t                       -> (n + 1) u sum |w_t v_t|
 *   weighted V, int8/int4: (w_t s_t) code + w_t m_t          -> (n + 3) u sum |w_t| (|s_t| code + |m_t|)
 * against the exact values the stored block represents (code * s + m in double for KIVI). The
 * checks use twice these bounds (the scale multiply adds an ulp) and also assert the observed
 * error is not zero for the quantised formats (a test that cannot fail is a defect).
 * Where the library's int8/int4 scores quantise the query (AVX-512 VNNI: q_c s_c in steps of
 * d = max_c |q_c s_c| / L, L = skv_kvattn_query_levels(hd), rounded to nearest), each score may
 * move by a further scale * d * (1/2 + 2^-10) * sum_c code_c (the rounding of q_c s_c / d in
 * float adds at most L 2^-24 < 2^-10 to the half step).
 */
#include "harness.h"
#include "kv/cache.h"
#include "kv/kvattn.h"
#include "kv/plan.h"
#include "kv/quant.h"
#include "ops/ops.h"
#include "slimkv.h"

#include <math.h>

static uint32_t g_rng = 912367u;
static float frnd(void) { return (float)(skv_test_xorshift(&g_rng) >> 8) / 16777216.0f; }
static float srnd(void) { return frnd() * 2 - 1; }

static const char *fname(int f) {
    static const char *n[SKV_KV_FORMAT_COUNT] = {"f32", "bf16", "int8", "int4", "f16"};
    return n[f];
}
static int quantised(int f) { return f == SKV_KV_Q8 || f == SKV_KV_Q4; }

/* A block of 32 random rows (channel c scaled by 1 + c/16, an outlier channel) stored as f;
 * back: the exact values it represents, in double; the block's bytes in blk. */
static void make_block(int f, int hd, int is_v, uint8_t *blk, double *back) {
    float rows[SKV_KV_BLOCK * SKV_KVATTN_MAX_HD];
    const int B = SKV_KV_BLOCK;
    for (int t = 0; t < B; t++)
        for (int c = 0; c < hd; c++) rows[t * hd + c] = srnd() * (1 + c / 16.0f) * (c == 5 ? 8 : 1);
    if (f == SKV_KV_F32) {
        memcpy(blk, rows, sizeof(float) * (size_t)B * hd);
        for (int i = 0; i < B * hd; i++) back[i] = rows[i];
    } else if (f == SKV_KV_BF16 || f == SKV_KV_F16) {
        uint16_t *h = (uint16_t *)blk;
        for (int i = 0; i < B * hd; i++) {
            h[i] = f == SKV_KV_BF16 ? skv_f32_to_bf16(rows[i]) : skv_f32_to_f16(rows[i]);
            back[i] = f == SKV_KV_BF16 ? skv_bf16_to_f32(h[i]) : skv_f16_to_f32(h[i]);
        }
    } else {
        skv_quant_block((skv_kv_format)f, hd, is_v, rows, blk);
        /* the represented values from the layout (kv/quant.c), in double */
        const float *p = (const float *)blk;
        const int ng = hd / SKV_KV_VGROUP, bits = f == SKV_KV_Q8 ? 8 : 4;
        const uint8_t *codes = (const uint8_t *)(p + (is_v ? 2 * B * ng : 2 * hd));
        for (int t = 0; t < B; t++)
            for (int c = 0; c < hd; c++) {
                const int64_t i = (int64_t)t * hd + c;
                const int code = bits == 8 ? codes[i] : (i & 1) ? codes[i >> 1] >> 4 : codes[i >> 1] & 15;
                const double s = is_v ? p[t * ng + c / 32] : p[c], m = is_v ? p[B * ng + t * ng + c / 32] : p[hd + c];
                back[i] = code * s + m;
            }
    }
}

/* For the bounds: the magnitude of each term's parts, |s| code + |m| (quantised) or |x|. */
static void magnitudes(int f, int hd, int is_v, const uint8_t *blk, const double *back, double *mag) {
    const int B = SKV_KV_BLOCK;
    if (!quantised(f)) {
        for (int i = 0; i < B * hd; i++) mag[i] = fabs(back[i]);
        return;
    }
    const float *p = (const float *)blk;
    const int ng = hd / SKV_KV_VGROUP;
    for (int t = 0; t < B; t++)
        for (int c = 0; c < hd; c++) {
            const double s = is_v ? p[t * ng + c / 32] : p[c], m = is_v ? p[B * ng + t * ng + c / 32] : p[hd + c];
            const double code = (back[t * hd + c] - m) / (s != 0 ? s : 1);
            mag[t * hd + c] = fabs(s) * fabs(code) + fabs(m);
        }
}

static void test_f16_rows(void) {
    /* F16C rounding equals the scalar round-to-nearest-even on random finite bit patterns
     * (normal, subnormal, overflowing) and on halfway cases */
    enum { N = 4096 };
    static float x[N];
    static uint16_t a[N];
    int k = 0;
    while (k < N - 8) {
        uint32_t u = skv_test_xorshift(&g_rng);
        const int e = (int)(skv_test_xorshift(&g_rng) % 50) + 127 - 30; /* 2^-30 .. 2^19 */
        u = (u & 0x807fffffu) | ((uint32_t)e << 23);
        memcpy(&x[k++], &u, 4);
    }
    x[k++] = 65520.0f, x[k++] = 65519.0f, x[k++] = 1.0f + 1.0f / 2048; /* halfway: to even */
    x[k++] = 1.0f + 3.0f / 2048, x[k++] = 5.960464477539063e-08f / 2, x[k++] = -0.0f;
    x[k++] = 1e-9f, x[k++] = -70000.0f;
    skv_kv_f32_to_f16_row(x, a, N);
    int bad = 0;
    for (int i = 0; i < N; i++)
        if (a[i] != skv_f32_to_f16(x[i]) && bad++ < 3) CHECKF(0, "f16 of %.9g: row %04x, scalar %04x", x[i], a[i], skv_f32_to_f16(x[i]));
    CHECK(a[N - 8] == 0x7c00 && a[N - 7] == 0x7bff && a[N - 6] == 0x3c00 && a[N - 5] == 0x3c02);
}

/* The integer codes of a quantised K block (kv/quant.c layout) and the query's step d for head
 * q (0 where the kernels take f32 queries). */
static void key_codes(int f, int hd, const uint8_t *blk, int *codes) {
    const uint8_t *c = blk + 2 * (size_t)hd * sizeof(float);
    for (int i = 0; i < SKV_KV_BLOCK * hd; i++) codes[i] = f == SKV_KV_Q8 ? c[i] : (i & 1) ? c[i >> 1] >> 4 : c[i >> 1] & 15;
}
static double query_step(int f, int hd, const uint8_t *blk, const float *q) {
    const int32_t L = skv_kvattn_query_levels(hd);
    if (!quantised(f) || L <= 0 || hd % 64) return 0;
    const float *sc = (const float *)blk;
    float a = 0;
    for (int c = 0; c < hd; c++) a = fmaxf(a, fabsf(q[c] * sc[c]));
    return (double)a / L;
}

static void test_scores(void) {
    static const int hds[] = {64, 128, 40, 36, 96, 512};
    static const int ns[] = {29, 32, 1, 17};
    static uint8_t blk[SKV_KV_BLOCK * SKV_KVATTN_MAX_HD * 4];
    static double back[SKV_KV_BLOCK * SKV_KVATTN_MAX_HD], mag[SKV_KV_BLOCK * SKV_KVATTN_MAX_HD];
    static float widened[SKV_KV_BLOCK * SKV_KVATTN_MAX_HD];
    static int codes[SKV_KV_BLOCK * SKV_KVATTN_MAX_HD];
    static float q[6 * SKV_KVATTN_MAX_HD];
    for (int f = 0; f < SKV_KV_FORMAT_COUNT; f++)
        for (size_t hi = 0; hi < sizeof hds / sizeof *hds; hi++)
        for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++) {
            const int hd = hds[hi], nh = 6, n = ns[ni], lds = 40;
            if (quantised(f) && hd % 32) continue;
            if (!quantised(f) && (hd > 128 || ni > 0)) continue; /* the float formats as before */
            make_block(f, hd, 0, blk, back);
            magnitudes(f, hd, 0, blk, back, mag);
            if (quantised(f)) key_codes(f, hd, blk, codes);
            float s[6 * 40];
            for (int i = 0; i < nh * hd; i++) q[i] = srnd() * 2;
            uint8_t cls[SKV_KV_BLOCK];
            for (int t = 0; t < SKV_KV_BLOCK; t++) cls[t] = t % 7 == 3 ? SKV_READ_VONLY : t % 11 == 4 ? SKV_READ_SKIP : SKV_READ_OWN;
            for (int i = 0; i < nh * lds; i++) s[i] = 12345;
            const float scale = 0.125f;
            skv_kvattn_scores((skv_kv_format)f, hd, blk, n, q, nh, scale, cls, s, lds);
            /* the old path: rows widened (or dequantised) to f32, skv_dot */
            if (quantised(f)) skv_dequant_block((skv_kv_format)f, hd, 0, blk, widened, SKV_KV_BLOCK);
            else
                for (int i = 0; i < SKV_KV_BLOCK * hd; i++) widened[i] = (float)back[i];
            double worst = 0, worst_err = 0;
            int bad = 0;
            for (int j = 0; j < nh; j++) {
                const double step = query_step(f, hd, blk, q + j * hd);
                for (int t = n; t < lds; t++) CHECK(s[j * lds + t] == 12345); /* rows past n untouched */
                for (int t = 0; t < n; t++) {
                    const float got = s[j * lds + t];
                    if (cls[t] != SKV_READ_OWN) {
                        CHECKF(got == -INFINITY, "%s: a row the plan does not score got %g", fname(f), got);
                        continue;
                    }
                    double ref = 0, bound = 0;
                    for (int c = 0; c < hd; c++) {
                        ref += (double)q[j * hd + c] * back[t * hd + c];
                        bound += fabs(q[j * hd + c]) * mag[t * hd + c];
                    }
                    ref *= scale;
                    bound = 2 * (hd + 3) * ldexp(1, -24) * bound * scale + 1e-30;
                    if (step > 0) { /* the query's int16-like steps */
                        double sc = 0;
                        for (int c = 0; c < hd; c++) sc += codes[t * hd + c];
                        bound += scale * step * (0.5 + ldexp(1, -10)) * sc;
                    }
                    const double err = fabs(got - ref);
                    worst = fmax(worst, err / bound), worst_err = fmax(worst_err, err);
                    if (err > bound && bad++ < 3)
                        CHECKF(0, "%s hd %d head %d row %d: score %.9g, reference %.9g (bound %.3g)", fname(f), hd, j, t, got, ref, bound);
                    if (!quantised(f)) {
                        const float old = skv_dot(q + j * hd, widened + t * hd, hd) * scale;
                        if (memcmp(&old, &got, 4) && bad++ < 3) CHECKF(0, "%s hd %d: score %.9g, skv_dot over the widened row %.9g", fname(f), hd, got, old);
                    }
                }
            }
            if (quantised(f)) CHECKF(worst_err > 0, "%s hd %d: no rounding at all (folding not exercised?)", fname(f), hd);
            /* a head's scores do not depend on the heads sharing its call (a decode step passes
             * one head or a whole GQA group, depending on threads and statistics) */
            for (int j = 0; j < nh; j++) {
                float one[40];
                skv_kvattn_scores((skv_kv_format)f, hd, blk, n, q + j * hd, 1, scale, cls, one, lds);
                if (memcmp(one, s + j * lds, sizeof(float) * (size_t)n) && bad++ < 3)
                    CHECKF(0, "%s hd %d: head %d alone scores differently than with %d heads", fname(f), hd, j, nh);
            }
            if (bad) break;
        }
}

/* The largest dot product the integer scores can meet: every row but the first at the top code
 * (255 or 15) in every channel, and q_c s_c of one magnitude and sign, at the largest head_dim
 * (no int32 sum may overflow). */
static void test_scores_edge(void) {
    static float rows[SKV_KV_BLOCK * SKV_KVATTN_MAX_HD], q[SKV_KVATTN_MAX_HD];
    static uint8_t blk[SKV_KV_BLOCK * SKV_KVATTN_MAX_HD * 2];
    const int hd = SKV_KVATTN_MAX_HD, n = SKV_KV_BLOCK;
    for (int f = SKV_KV_Q8; f <= SKV_KV_Q4; f++) {
        for (int t = 0; t < n; t++)
            for (int c = 0; c < hd; c++) rows[t * hd + c] = t == 0 ? -1.0f - c / 256.0f : 1.0f + c / 128.0f;
        skv_quant_block((skv_kv_format)f, hd, 0, rows, blk);
        const float *sc = (const float *)blk, *mn = sc + hd;
        for (int c = 0; c < hd; c++) q[c] = 0.75f / sc[c]; /* q_c s_c = 0.75 for every channel */
        float s[SKV_KV_BLOCK];
        skv_kvattn_scores((skv_kv_format)f, hd, blk, n, q, 1, 1.0f, NULL, s, n);
        const int top = f == SKV_KV_Q8 ? 255 : 15;
        for (int t = 0; t < n; t++) {
            double ref = 0, mag = 0;
            for (int c = 0; c < hd; c++) {
                const double x = (t == 0 ? 0 : top) * (double)sc[c] + mn[c];
                ref += (double)q[c] * x;
                mag += fabs((double)q[c]) * ((t == 0 ? 0 : top) * fabs((double)sc[c]) + fabs((double)mn[c]));
            }
            const double bound = 2 * (hd + 3) * ldexp(1, -24) * mag + 1e-6 * fabs(ref);
            CHECKF(fabs(s[t] - ref) <= bound, "%s hd %d row %d: score %.9g, reference %.9g (an overflowing sum?)", fname(f), hd, t,
                   s[t], ref);
        }
    }
}

static void test_weigh(void) {
    static const int hds[] = {64, 128, 40, 36, 96};
    static uint8_t blk[SKV_KV_BLOCK * SKV_KVATTN_MAX_HD * 4];
    static double back[SKV_KV_BLOCK * SKV_KVATTN_MAX_HD], mag[SKV_KV_BLOCK * SKV_KVATTN_MAX_HD];
    static float widened[SKV_KV_BLOCK * SKV_KVATTN_MAX_HD];
    for (int f = 0; f < SKV_KV_FORMAT_COUNT; f++)
        for (size_t hi = 0; hi < sizeof hds / sizeof *hds; hi++)
            for (int variant = 0; variant < 3; variant++) { /* mul; cls; every row, no cls */
                const int with_mul = variant == 0, no_cls = variant == 2;
                const int hd = hds[hi], nh = 5, n = 32, ldp = 50;
                if (quantised(f) && hd % 32) continue;
                make_block(f, hd, 1, blk, back);
                magnitudes(f, hd, 1, blk, back, mag);
                float p[5 * 50], mul[5], o[5 * 128], o0[5 * 128], old[5 * 128];
                for (int i = 0; i < nh * ldp; i++) p[i] = frnd() * frnd();
                for (int j = 0; j < nh; j++) mul[j] = 0.5f + frnd();
                for (int i = 0; i < nh * hd; i++) o[i] = o0[i] = old[i] = srnd();
                uint8_t cls[SKV_KV_BLOCK];
                for (int t = 0; t < SKV_KV_BLOCK; t++)
                    cls[t] = no_cls ? SKV_READ_OWN : t % 5 == 2 ? SKV_READ_SKIP : t % 3 ? SKV_READ_OWN : SKV_READ_VONLY;
                skv_kvattn_weigh((skv_kv_format)f, hd, blk, n, p, ldp, with_mul ? mul : NULL, no_cls ? NULL : cls, nh, o);
                if (quantised(f)) skv_dequant_block((skv_kv_format)f, hd, 1, blk, widened, SKV_KV_BLOCK);
                else
                    for (int i = 0; i < SKV_KV_BLOCK * hd; i++) widened[i] = (float)back[i];
                /* the old path: skv_axpy over the widened rows, row after row */
                for (int t = 0; t < n; t++)
                    for (int j = 0; j < nh && cls[t] != SKV_READ_SKIP; j++)
                        skv_axpy(old + j * hd, with_mul ? p[j * ldp + t] * mul[j] : p[j * ldp + t], widened + t * hd, hd);
                double worst_err = 0;
                int bad = 0;
                for (int j = 0; j < nh; j++)
                    for (int c = 0; c < hd; c++) {
                        double ref = o0[j * hd + c], bound = fabs(o0[j * hd + c]);
                        for (int t = 0; t < n; t++) {
                            if (cls[t] == SKV_READ_SKIP) continue;
                            const double w = with_mul ? (double)(p[j * ldp + t] * mul[j]) : p[j * ldp + t];
                            ref += w * back[t * hd + c];
                            bound += fabs(w) * mag[t * hd + c];
                        }
                        bound = 2 * (n + 3) * ldexp(1, -24) * bound;
                        const double err = fabs(o[j * hd + c] - ref);
                        worst_err = fmax(worst_err, err);
                        if (err > bound && bad++ < 3)
                            CHECKF(0, "%s hd %d head %d ch %d: %.9g, reference %.9g (bound %.3g)", fname(f), hd, j, c, o[j * hd + c], ref, bound);
                    }
                for (int j = 0; j < nh; j++) { /* one head alone: the same bits */
                    float one[128];
                    memcpy(one, o0 + j * hd, sizeof(float) * (size_t)hd);
                    skv_kvattn_weigh((skv_kv_format)f, hd, blk, n, p + j * ldp, ldp, with_mul ? mul + j : NULL, no_cls ? NULL : cls, 1, one);
                    CHECKF(!memcmp(one, o + j * hd, sizeof(float) * (size_t)hd), "%s hd %d: head %d alone weighs differently", fname(f), hd, j);
                }
                if (!quantised(f))
                    CHECKF(!memcmp(o, old, sizeof(float) * (size_t)nh * hd), "%s hd %d: not bit-identical to skv_axpy over the widened rows", fname(f), hd);
                else
                    CHECKF(worst_err > 0, "%s hd %d: no rounding at all", fname(f), hd);
                if (bad) return;
            }
}

/* One stream of a cache in each format (two quantised blocks and an f32 residual block when
 * quantised): attention through skv_cache_block + the kernels equals attention in double over
 * the rows skv_cache_gather dequantises, within the score bound carried through the softmax. */
static void test_attention_over_cache(void) {
    const int hd = 64, n = 83, nh = 3;
    for (int f = 0; f < SKV_KV_FORMAT_COUNT; f++) {
        skv_cache c;
        REQUIRE(skv_cache_init(&c, 1, 1, hd, 128, (skv_kv_format)f) == SKV_OK, "%s", skv_last_error());
        float k[64], v[64];
        for (int t = 0; t < n; t++) {
            for (int i = 0; i < hd; i++) k[i] = srnd() * 2, v[i] = srnd();
            REQUIRE(skv_cache_append(&c, 0, 0, t, k, v) == SKV_OK, "%s", skv_last_error());
        }
        const skv_stream *st = skv_cache_stream(&c, 0, 0);
        float q[3 * 64], s[3 * 128], o[3 * 64] = {0}, vb[SKV_KV_BLOCK * 64];
        for (int i = 0; i < nh * hd; i++) q[i] = srnd() * 2;
        const float scale = 0.125f;
        double dmax = 0; /* the largest score move the query's integer steps allow (none: 0) */
        for (int b = 0; b * SKV_KV_BLOCK < n; b++) {
            skv_kv_format bf;
            const int rows = SKV_MIN(SKV_KV_BLOCK, n - b * SKV_KV_BLOCK);
            const void *K = skv_cache_block(&c, st, b, 0, &bf, NULL);
            skv_kvattn_scores(bf, hd, K, rows, q, nh, scale, NULL, s + b * SKV_KV_BLOCK, 128);
            if (quantised(bf)) {
                static int codes[SKV_KV_BLOCK * 64];
                key_codes(bf, hd, K, codes);
                for (int j = 0; j < nh; j++)
                    for (int t = 0; t < rows; t++) {
                        double sc = 0;
                        for (int i = 0; i < hd; i++) sc += codes[t * hd + i];
                        dmax = fmax(dmax, scale * query_step(bf, hd, K, q + j * hd) * (0.5 + ldexp(1, -10)) * sc);
                    }
            }
            if (quantised(f)) CHECKF((bf == (skv_kv_format)f) == (rows == SKV_KV_BLOCK), "%s block %d stored as %s", fname(f), b, fname(bf));
        }
        for (int j = 0; j < nh; j++) skv_softmax(s + j * 128, n);
        for (int b = 0; b * SKV_KV_BLOCK < n; b++) {
            skv_kv_format bf;
            const void *V = skv_cache_block(&c, st, b, 1, &bf, vb);
            skv_kvattn_weigh(bf, hd, V, SKV_MIN(SKV_KV_BLOCK, n - b * SKV_KV_BLOCK), s + b * SKV_KV_BLOCK, 128, NULL, NULL, nh, o);
        }
        static float gk[128 * 64], gv[128 * 64];
        skv_cache_gather(&c, 0, 0, gk, gv);
        double maxv = 0, worst = 0;
        for (int i = 0; i < n * hd; i++) maxv = fmax(maxv, fabs(gv[i]));
        for (int j = 0; j < nh; j++) {
            double sc[128], mx = -INFINITY, sum = 0;
            for (int t = 0; t < n; t++) {
                sc[t] = 0;
                for (int i = 0; i < hd; i++) sc[t] += (double)q[j * hd + i] * gk[t * hd + i];
                sc[t] *= scale;
                mx = fmax(mx, sc[t]);
            }
            for (int t = 0; t < n; t++) sum += (sc[t] = exp(sc[t] - mx));
            for (int i = 0; i < hd; i++) {
                double ref = 0;
                for (int t = 0; t < n; t++) ref += sc[t] / sum * gv[t * hd + i];
                worst = fmax(worst, fabs(o[j * hd + i] - ref));
            }
        }
        /* scores within ~1e-5 (|q.k| <= 2 * 2 * 64 * 0.125, f32 rounding of the dequantised rows
         * and of the folded sums): probabilities within 2e-5 relative, plus exp256's 2e-7; and
         * scores that move by at most dmax (integer query steps) move each probability by at
         * most a factor e^(+-2 dmax) */
        const double tol = 4e-5 * maxv + (exp(2 * dmax) - 1) * maxv;
        CHECKF(worst <= tol, "%s: attention differs from the dequantised reference by %.3g (tolerance %.3g)", fname(f), worst, tol);
        skv_cache_free(&c);
    }
}

/* In the model: decode logits with an f16 cache stay within 0.02 of the f32 cache's (bf16:
 * kv/bf16 test allows 0.1); the prefill step (its own keys unrounded) is identical. */
static void test_f16_in_model(void) {
    skv_model *m = skv_test_load_model("kvt-s", 2);
    if (!m) {
        skv_test_skip("kvt-s not found: %s", skv_last_error());
        return;
    }
    enum { N = 200, STEPS = 4, V = 8192 };
    int32_t ids[N];
    skv_test_ids(ids, N, 7);
    float *lg[2];
    for (int f = 0; f < 2; f++) {
        lg[f] = malloc(sizeof(float) * V * STEPS);
        skv_context_params cp = skv_context_default_params();
        cp.n_ctx = 512;
        cp.kv_format = f ? SKV_KV_F16 : SKV_KV_F32;
        skv_context *c = NULL;
        REQUIRE(skv_context_init(m, cp, &c) == SKV_OK, "%s", skv_last_error());
        CHECK(skv_decode(c, ids, N, lg[f], 0) == SKV_OK);
        for (int s = 1; s < STEPS; s++) {
            int32_t best = skv_test_argmax(lg[f] + (size_t)(s - 1) * V, V);
            CHECK(skv_decode(c, &best, 1, lg[f] + (size_t)s * V, 0) == SKV_OK);
        }
        skv_kv_usage u = {0};
        skv_context_kv_usage(c, &u);
        if (f) CHECKF(u.bytes_by_format[SKV_KV_F16] > 0 && u.bytes_by_format[SKV_KV_F32] == 0, "f16 cache holds %lld f16 bytes, %lld f32", (long long)u.bytes_by_format[SKV_KV_F16], (long long)u.bytes_by_format[SKV_KV_F32]);
        skv_context_free(c);
    }
    double maxd = 0;
    for (size_t i = V; i < (size_t)V * STEPS; i++) maxd = fmax(maxd, fabs(lg[0][i] - lg[1][i]));
    CHECKF(maxd > 0 && maxd < 0.02, "f16 KV vs f32: max logit difference %.3g", maxd);
    CHECK(!memcmp(lg[0], lg[1], sizeof(float) * V));
    free(lg[0]);
    free(lg[1]);
    skv_model_free(m);
}

void register_kvattn(void) {
    skv_test_add("kvattn/f16 rows (F16C) round as the scalar conversion", test_f16_rows);
    skv_test_add("kvattn/scores of each format vs double and vs the f32 path", test_scores);
    skv_test_add("kvattn/int8/int4 scores at the int32 edge (head_dim 512, top codes)", test_scores_edge);
    skv_test_add("kvattn/weighted V of each format vs double and vs the f32 path", test_weigh);
    skv_test_add("kvattn/attention over a cache of each format vs the dequantised reference", test_attention_over_cache);
    skv_test_add("kvattn/f16 cache in the model stays close to f32", test_f16_in_model);
}
