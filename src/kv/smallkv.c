/*
 * smallkv.c — SmallKV head matching, token classes, budget split and compensated attention
 * (see smallkv.h).
 */
#include "kv/smallkv.h"

#include <math.h>

skv_smallkv_split skv_smallkv_budget(int32_t slots, float r_crit, float r_recent, float r_marg) {
    skv_smallkv_split s = {0, 0, 0};
    if (slots <= 0) return s;
    /* tokens per unit: crit = r_crit u, recent = r_recent u, marg = r_marg u, with
     * slots = (r_crit + r_recent + r_marg / 2) u */
    const double u = (double)slots / (r_crit + r_recent + 0.5 * r_marg);
    s.crit = (int32_t)floor(r_crit * u);
    s.recent = (int32_t)floor(r_recent * u);
    if (s.recent < 1) s.recent = 1;
    if (s.crit + s.recent > slots) s.crit = slots - s.recent;
    if (s.crit < 0) s.crit = 0;
    /* whatever slots remain go to marginal tokens at two per slot, up to its share */
    int32_t left = slots - s.crit - s.recent;
    int32_t want = (int32_t)floor(r_marg * u);
    s.marg = SKV_MIN(want, 2 * left);
    if (s.marg < 0) s.marg = 0;
    return s;
}

typedef struct scored {
    float s;
    int32_t i;
} scored;

/* higher score first, then the later key */
static int cmp_scored(const void *a, const void *b) {
    const scored *x = a, *y = b;
    if (x->s != y->s) return x->s > y->s ? -1 : 1;
    return x->i > y->i ? -1 : x->i < y->i;
}

/* mark[T] = 1 for the top K of v[T] */
static void topk_mask(const float *v, int32_t T, int32_t K, scored *tmp, uint8_t *mark) {
    for (int32_t t = 0; t < T; t++) tmp[t] = (scored){v[t], t};
    qsort(tmp, (size_t)T, sizeof *tmp, cmp_scored);
    memset(mark, 0, (size_t)T);
    for (int32_t k = 0; k < K && k < T; k++) mark[tmp[k].i] = 1;
}

void skv_smallkv_match(const float *acc_l, int32_t n_l, const float *acc_s, int32_t n_s, int32_t T,
                       int32_t K, int32_t *f, float *jac) {
    if (K > T) K = T;
    scored *tmp = malloc((size_t)T * sizeof *tmp);
    uint8_t *ms = malloc((size_t)n_s * T), *ml = malloc((size_t)T);
    for (int32_t j = 0; j < n_s; j++) topk_mask(acc_s + (int64_t)j * T, T, K, tmp, ms + (int64_t)j * T);
    for (int32_t i = 0; i < n_l; i++) {
        topk_mask(acc_l + (int64_t)i * T, T, K, tmp, ml);
        float best = -1;
        f[i] = 0;
        for (int32_t j = 0; j < n_s; j++) {
            int32_t inter = 0;
            for (int32_t t = 0; t < T; t++) inter += ml[t] & ms[(int64_t)j * T + t];
            /* both sets have K members: |A u B| = 2K - |A n B| */
            float J = K > 0 ? (float)inter / (float)(2 * K - inter) : 0;
            if (jac) jac[(int64_t)i * n_s + j] = J;
            if (J > best) {
                best = J;
                f[i] = j;
            }
        }
    }
    free(tmp);
    free(ms);
    free(ml);
}

void skv_smallkv_maxpool(const float *in, int32_t T, int32_t w, float *out) {
    const int32_t r = w / 2;
    for (int32_t t = 0; t < T; t++) {
        float m = in[t];
        for (int32_t u = SKV_MAX(0, t - r); u <= SKV_MIN(T - 1, t + r); u++) m = fmaxf(m, in[u]);
        out[t] = m;
    }
}

/* Reorder r[0..n) so that r[0..k) are the k first under cmp_scored (unordered). Quickselect
 * with a median-of-three pivot; cmp_scored is a total order, so the set is unique. */
static void select_top(scored *r, int32_t n, int32_t k) {
    int32_t lo = 0, hi = n - 1;
    while (lo < hi && k > lo && k <= hi) {
        const int32_t mid = lo + (hi - lo) / 2;
        scored a = r[lo], b = r[mid], c = r[hi], piv;
        if (cmp_scored(&a, &b) < 0) piv = cmp_scored(&b, &c) < 0 ? b : (cmp_scored(&a, &c) < 0 ? c : a);
        else piv = cmp_scored(&a, &c) < 0 ? a : (cmp_scored(&b, &c) < 0 ? c : b);
        int32_t i = lo, j = hi;
        while (i <= j) {
            while (cmp_scored(&r[i], &piv) < 0) i++;
            while (cmp_scored(&piv, &r[j]) < 0) j--;
            if (i <= j) {
                scored t = r[i];
                r[i++] = r[j];
                r[j--] = t;
            }
        }
        /* [lo, j] precede the pivot or equal it, [i, hi] follow it */
        if (k <= j) hi = j;
        else if (k >= i) lo = i;
        else return;
    }
}

void skv_smallkv_select(const float *score, int32_t T, skv_smallkv_split s, uint8_t *cls) {
    memset(cls, SKV_SK_SKIP, (size_t)T);
    const int32_t recent = SKV_MIN(s.recent, T);
    for (int32_t t = T - recent; t < T; t++) cls[t] = SKV_SK_RECENT;
    const int32_t n = T - recent;
    if (n <= 0) return;
    scored *r = malloc((size_t)n * sizeof *r);
    for (int32_t t = 0; t < n; t++) r[t] = (scored){score[t], t};
    const int32_t crit = SKV_MIN(s.crit, n), marg = SKV_MIN(s.marg, n - crit);
    select_top(r, n, crit);
    for (int32_t k = 0; k < crit; k++) cls[r[k].i] = SKV_SK_CRIT;
    select_top(r + crit, n - crit, marg);
    for (int32_t k = 0; k < marg; k++) cls[r[crit + k].i] = SKV_SK_MARG;
    free(r);
}

void skv_smallkv_attend(const float *q, const float *K, const float *V, int32_t T, int32_t hd,
                        const uint8_t *cls, const float *p, int paper_mode, float *o) {
    const float scale = 1.0f / sqrtf((float)hd);
    float mx = -INFINITY;
    for (int32_t t = 0; t < T; t++) {
        if (cls[t] != SKV_SK_CRIT && cls[t] != SKV_SK_RECENT) continue;
        float l = 0;
        for (int32_t d = 0; d < hd; d++) l += q[d] * K[(int64_t)t * hd + d];
        mx = fmaxf(mx, l * scale);
    }
    double z = 0, m = 0;
    for (int32_t t = 0; t < T; t++) {
        if (cls[t] == SKV_SK_CRIT || cls[t] == SKV_SK_RECENT) {
            float l = 0;
            for (int32_t d = 0; d < hd; d++) l += q[d] * K[(int64_t)t * hd + d];
            z += exp((double)(l * scale - mx));
        } else if (cls[t] == SKV_SK_MARG) {
            m += p[t];
        }
    }
    double own = paper_mode ? 1.0 : 1.0 - fmin(fmax(m, 0.0), 1.0);
    if (z == 0) own = 0, z = 1; /* nothing attended with own keys: only the marginal part */
    memset(o, 0, (size_t)hd * sizeof(float));
    for (int32_t t = 0; t < T; t++) {
        double w;
        if (cls[t] == SKV_SK_CRIT || cls[t] == SKV_SK_RECENT) {
            float l = 0;
            for (int32_t d = 0; d < hd; d++) l += q[d] * K[(int64_t)t * hd + d];
            w = own * exp((double)(l * scale - mx)) / z;
        } else if (cls[t] == SKV_SK_MARG) {
            w = p[t];
        } else {
            continue;
        }
        for (int32_t d = 0; d < hd; d++) o[d] += (float)w * V[(int64_t)t * hd + d];
    }
}
