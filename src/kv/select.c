/*
 * select.c — the CPU's execution of an eviction description (kv/policy.h): which slots a
 * stream keeps at compression, and which one a decode step evicts.
 */
#include "kv/policy.h"

typedef struct ranked {
    float score;
    int32_t pos, idx;
} ranked;

/* score descending, then newer first */
static int cmp_ranked(const void *a, const void *b) {
    const ranked *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    return x->pos > y->pos ? -1 : x->pos < y->pos;
}

static int cmp_pos(const void *a, const void *b) {
    const ranked *x = a, *y = b;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

void skv_select(const skv_evict_desc *d, const int32_t *pos, const float *score, int32_t n, int32_t budget,
                uint8_t *keep) {
    if (n <= budget) {
        memset(keep, 1, (size_t)n);
        return;
    }
    memset(keep, 0, (size_t)n);
    ranked *r = malloc((size_t)n * sizeof *r);
    float *pooled = NULL;
    for (int32_t i = 0; i < n; i++) r[i] = (ranked){0, pos[i], i};
    qsort(r, (size_t)n, sizeof *r, cmp_pos); /* by position, oldest first */
    const int32_t recent_all = skv_evict_recent(d, budget);
    const int32_t s = SKV_MIN(d->sinks, budget), rc = SKV_MIN(recent_all, budget - s);
    for (int32_t i = 0; i < s; i++) keep[r[i].idx] = 1;
    for (int32_t i = n - rc; i < n; i++) keep[r[i].idx] = 1;
    /* the candidates: position-ordered slots between the sinks and the recent window */
    const int32_t lo = s, hi = n - rc;
    if (d->rank == SKV_RANK_POSITION) {
        for (int32_t i = lo; i < hi; i++) r[i].score = 0; /* ties: newer first */
    } else if (d->rank == SKV_RANK_WIN && d->pool > 1) {
        /* max-pool over position-neighbouring slots before the (unclamped) recent window, as
         * SnapKV pools the prefix's scores */
        pooled = malloc((size_t)n * sizeof *pooled);
        const int32_t m = n - SKV_MIN(recent_all, n), half = d->pool / 2;
        for (int32_t i = 0; i < n; i++) pooled[r[i].idx] = score[r[i].idx];
        for (int32_t i = 0; i < m; i++) {
            float mx = -INFINITY;
            for (int32_t j = SKV_MAX(0, i - half); j <= SKV_MIN(m - 1, i + half); j++)
                mx = SKV_MAX(mx, score[r[j].idx]);
            pooled[r[i].idx] = mx;
        }
        for (int32_t i = lo; i < hi; i++) r[i].score = pooled[r[i].idx];
    } else {
        for (int32_t i = lo; i < hi; i++) r[i].score = score[r[i].idx];
    }
    qsort(r + lo, (size_t)(hi - lo), sizeof *r, cmp_ranked);
    for (int32_t i = lo; i < lo + (budget - s - rc); i++) keep[r[i].idx] = 1;
    free(pooled);
    free(r);
}

int32_t skv_select_victim(const skv_evict_desc *d, const int32_t *pos, const float *score, int32_t n,
                          int32_t budget, int32_t newest) {
    const int32_t recent = skv_evict_recent(d, budget);
    int32_t victim = -1;
    for (int32_t s = 0; s < n; s++) {
        if (pos[s] < d->sinks || pos[s] > newest - recent) continue;
        if (victim < 0) {
            victim = s;
            continue;
        }
        if (d->rank == SKV_RANK_POSITION) {
            if (pos[s] < pos[victim]) victim = s;
        } else if (score[s] < score[victim] || (score[s] == score[victim] && pos[s] < pos[victim])) {
            victim = s;
        }
    }
    return victim;
}

/* The named policy's own eviction rule with these options (what the tests hold against brute
 * force is exactly what the policy runs). */
static skv_evict_desc rule_of(const char *name, const skv_policy_params *p) {
    const skv_policy_ops *o = skv_policy_find(name);
    SKV_ASSERT(o && o->evict);
    return o->evict(p);
}

void skv_select_window(const int32_t *pos, int32_t n, int32_t budget, int32_t sinks, uint8_t *keep) {
    skv_policy_params p = skv_policy_default_params("window");
    p.sinks = sinks;
    const skv_evict_desc d = rule_of("window", &p);
    skv_select(&d, pos, NULL, n, budget, keep);
}

void skv_select_h2o(const int32_t *pos, const float *acc, int32_t n, int32_t budget, float recent_frac,
                    uint8_t *keep) {
    skv_policy_params p = skv_policy_default_params("h2o");
    p.recent_frac = recent_frac;
    const skv_evict_desc d = rule_of("h2o", &p);
    skv_select(&d, pos, acc, n, budget, keep);
}

void skv_select_snapkv(const int32_t *pos, const float *win, int32_t n, int32_t budget, int32_t obs_window,
                       int32_t pool_kernel, uint8_t *keep) {
    skv_policy_params p = skv_policy_default_params("snapkv");
    p.obs_window = obs_window, p.pool_kernel = pool_kernel;
    const skv_evict_desc d = rule_of("snapkv", &p);
    skv_select(&d, pos, win, n, budget, keep);
}

void skv_select_tova(const int32_t *pos, const float *last, int32_t n, int32_t budget, uint8_t *keep) {
    const skv_policy_params p = skv_policy_default_params("tova");
    const skv_evict_desc d = rule_of("tova", &p);
    skv_select(&d, pos, last, n, budget, keep);
}

const float *skv_stream_rank_score(const skv_stream *st, skv_rank r) {
    switch (r) {
    case SKV_RANK_ACC: return st->acc;
    case SKV_RANK_WIN: return st->win;
    case SKV_RANK_LAST: return st->last;
    default: return NULL;
    }
}

/* V top-N (kv/plan.h): quickselect on a total order (score desc, slot asc), so the set is the
 * same whatever the pivots; then the chosen slots in ascending order. NaN scores rank last. */
static inline int vt_better(const float *sc, int32_t a, int32_t b) {
    const float x = sc[a], y = sc[b];
    if (x != y) {
        if (isnan(x)) return 0;
        if (isnan(y)) return 1;
        return x > y;
    }
    return a < b;
}

static int cmp_i32(const void *a, const void *b) {
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

int32_t skv_vtop_select(const float *score, int32_t n, int32_t N, int32_t *out, int32_t *idx) {
    if (N <= 0 || n <= 0) return 0;
    if (N >= n) {
        for (int32_t i = 0; i < n; i++) out[i] = i;
        return n;
    }
    for (int32_t i = 0; i < n; i++) idx[i] = i;
    int32_t lo = 0, hi = n - 1;
    uint32_t seed = 2463534242u;
    while (lo < hi) { /* put the N best in idx[0..N) */
        seed ^= seed << 13, seed ^= seed >> 17, seed ^= seed << 5;
        const int32_t pv = idx[lo + (int32_t)(seed % (uint32_t)(hi - lo + 1))];
        int32_t i = lo, j = hi;
        while (i <= j) {
            while (vt_better(score, idx[i], pv)) i++;
            while (vt_better(score, pv, idx[j])) j--;
            if (i <= j) {
                int32_t t = idx[i];
                idx[i] = idx[j], idx[j] = t;
                i++, j--;
            }
        }
        if (N - 1 <= j) hi = j;
        else if (N - 1 >= i) lo = i;
        else break;
    }
    memcpy(out, idx, sizeof(int32_t) * (size_t)N);
    qsort(out, (size_t)N, sizeof(int32_t), cmp_i32);
    return N;
}

int32_t skv_vtop_group(const skv_vtop_rule *r, const float *probs, int64_t stride, int32_t nh, int32_t n, int32_t ns,
                       int32_t *sel, float *inv, float *rank, int32_t *idx, uint8_t *mark) {
    const int32_t N = skv_vtop_count(r, n, ns);
    int32_t nsel = 0;
    if (N >= ns) {
        for (int32_t s = 0; s < ns; s++) sel[s] = s;
        nsel = ns;
    } else if (r->gran == SKV_VTOP_UNION) {
        memset(mark, 0, (size_t)ns);
        for (int32_t j = 0; j < nh; j++) {
            const int32_t k = skv_vtop_select(probs + (int64_t)j * stride, ns, N, sel, idx);
            for (int32_t i = 0; i < k; i++) mark[sel[i]] = 1;
        }
        for (int32_t s = 0; s < ns; s++)
            if (mark[s]) sel[nsel++] = s;
    } else {
        for (int32_t s = 0; s < ns; s++) {
            float v = probs[s];
            for (int32_t j = 1; j < nh; j++) {
                const float p = probs[(int64_t)j * stride + s];
                v = r->gran == SKV_VTOP_MAX ? fmaxf(v, p) : v + p;
            }
            rank[s] = v;
        }
        nsel = skv_vtop_select(rank, ns, N, sel, idx);
    }
    for (int32_t j = 0; j < nh; j++) {
        const float *pr = probs + (int64_t)j * stride;
        inv[j] = 1.0f;
        if (r->weight == SKV_VTOP_RENORM && nsel < ns) {
            double z = 0;
            for (int32_t i = 0; i < nsel; i++) z += pr[sel[i]];
            for (int32_t s = ns; s < n; s++) z += pr[s];
            inv[j] = z > 0 ? (float)(1.0 / z) : 0.0f;
        }
    }
    return nsel;
}
