/*
 * minicache.c — MiniCache-style cross-layer merging of the CPU cache (see minicache.h).
 */
#include "kv/minicache.h"

#include <math.h>

skv_status skv_mc_parse(const char *spec, int32_t n_layer, skv_mc_groups *g) {
    memset(g, 0, sizeof *g);
    if (n_layer > SKV_MC_MAX_LAYERS)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "policy minicache: more than %d cache layers", SKV_MC_MAX_LAYERS);
    int32_t used[SKV_MC_MAX_LAYERS] = {0}, n = 0;
    if (!spec || !*spec) { /* pairs from the middle up */
        for (int32_t l = n_layer / 2; l + 1 < n_layer; l += 2) {
            g->first[g->n] = n, g->size[g->n++] = 2;
            g->layer[n++] = l, g->layer[n++] = l + 1;
        }
        if (!g->n)
            return skv_set_error(SKV_ERR_ARG, "policy minicache: %d cache layers leave no pair to merge", n_layer);
        return SKV_OK;
    }
    if (spec[0] == 'g') { /* gN: groups of N adjacent layers from the top down */
        char *end;
        const long k = strtol(spec + 1, &end, 10);
        if (end == spec + 1 || *end || k < 2 || k > SKV_MC_MAX_GROUP || k > n_layer)
            return skv_set_error(SKV_ERR_ARG, "policy minicache: --mc-groups \"%s\": gN needs 2 <= N <= %d (a group "
                                 "size of at most the %d cache layers)", spec, SKV_MC_MAX_GROUP, n_layer);
        for (int32_t top = n_layer; top - k >= 0; top -= (int32_t)k) {
            g->first[g->n] = n, g->size[g->n++] = (int32_t)k;
            for (int32_t l = top - (int32_t)k; l < top; l++) g->layer[n++] = l;
        }
        return SKV_OK;
    }
    const char *s = spec;
    while (*s) {
        g->first[g->n] = n;
        int32_t k = 0;
        for (;;) {
            char *end;
            long v = strtol(s, &end, 10);
            if (end == s || v < 0 || v >= n_layer)
                return skv_set_error(SKV_ERR_ARG, "policy minicache: --mc-groups \"%s\": \"%.8s\" is not a cache layer "
                                     "0..%d", spec, s, n_layer - 1);
            if (used[v])
                return skv_set_error(SKV_ERR_ARG, "policy minicache: --mc-groups \"%s\": layer %ld is in two groups", spec,
                                     v);
            if (k == SKV_MC_MAX_GROUP)
                return skv_set_error(SKV_ERR_ARG, "policy minicache: --mc-groups \"%s\": a group of more than %d layers",
                                     spec, SKV_MC_MAX_GROUP);
            used[v] = 1;
            g->layer[n++] = (int32_t)v, k++;
            s = end;
            if (*s != ':') break;
            s++;
        }
        if (k < 2)
            return skv_set_error(SKV_ERR_ARG, "policy minicache: --mc-groups \"%s\": group %d has one layer (groups are "
                                 "layers joined by ':', e.g. 5:6,7:8)", spec, g->n);
        g->size[g->n++] = k;
        if (*s == ',' && s[1]) s++;
        else if (*s)
            return skv_set_error(SKV_ERR_ARG, "policy minicache: --mc-groups \"%s\": unexpected \"%.8s\"", spec, s);
    }
    return SKV_OK;
}

skv_status skv_mc_keep_for_bytes(const skv_mc_groups *g, int32_t n_layer, int32_t hd, double frac, double *keep) {
    *keep = 0;
    if (!(frac > 0 && frac <= 1))
        return skv_set_error(SKV_ERR_ARG, "policy minicache: --mc-bytes %g is outside (0, 1]", frac);
    double lo = (double)n_layer * hd, gain = 0; /* values stored with every token merged; saved per unmerged */
    for (int32_t j = 0; j < g->n; j++) {
        const double k = g->size[j];
        lo -= k * hd - (hd + k);
        gain += k * hd - (hd + k);
    }
    const double want = frac * n_layer * hd;
    if (want < lo - 1e-9 * lo)
        return skv_set_error(SKV_ERR_ARG, "policy minicache: --mc-bytes %g is below what these groups store with every "
                             "token merged (%.4f of the full cache's bytes): merge more layers (--mc-groups)", frac,
                             lo / ((double)n_layer * hd));
    *keep = gain > 0 ? fmin(1, fmax(0, (want - lo) / gain)) : 0;
    return SKV_OK;
}

static double clampd(double x) { return x < -1 ? -1 : x > 1 ? 1 : x; }

float skv_mc_merge(const float *const *x, int k, int hd, float t, float *e, float *norms) {
    double u[SKV_MC_MAX_GROUP][512];
    int zero = 0;
    for (int i = 0; i < k; i++) {
        double ss = 0;
        for (int d = 0; d < hd; d++) ss += (double)x[i][d] * x[i][d];
        norms[i] = (float)sqrt(ss);
        zero |= ss == 0;
        for (int d = 0; d < hd; d++) u[i][d] = ss > 0 ? x[i][d] / sqrt(ss) : 0;
    }
    double acc[512];
    if (k == 2) {
        double dot = 0;
        for (int d = 0; d < hd; d++) dot += u[0][d] * u[1][d];
        const double om = acos(clampd(dot)), so = sin(om);
        if (so > 1e-6) {
            const double a = sin((1 - t) * om) / so, b = sin(t * om) / so;
            for (int d = 0; d < hd; d++) acc[d] = a * u[0][d] + b * u[1][d];
        } else { /* (anti)parallel: interpolate linearly and normalise */
            for (int d = 0; d < hd; d++) acc[d] = (1 - t) * u[0][d] + t * u[1][d];
        }
        double ss = 0;
        for (int d = 0; d < hd; d++) ss += acc[d] * acc[d];
        for (int d = 0; d < hd; d++) e[d] = ss > 0 ? (float)(acc[d] / sqrt(ss)) : (float)u[0][d];
        return zero ? (float)M_PI : (float)om;
    }
    double ss = 0;
    for (int d = 0; d < hd; d++) {
        acc[d] = 0;
        for (int i = 0; i < k; i++) acc[d] += u[i][d];
        ss += acc[d] * acc[d];
    }
    double worst = 0;
    for (int d = 0; d < hd; d++) e[d] = ss > 0 ? (float)(acc[d] / sqrt(ss)) : (float)u[0][d];
    for (int i = 0; i < k; i++) {
        double dot = 0;
        for (int d = 0; d < hd; d++) dot += u[i][d] * e[d];
        worst = fmax(worst, acos(clampd(dot)));
    }
    return zero ? (float)M_PI : (float)worst;
}

typedef struct mc_rank {
    float om;
    int32_t s;
} mc_rank;

static int by_om_desc(const void *a, const void *b) {
    const mc_rank *x = a, *y = b;
    if (x->om != y->om) return x->om > y->om ? -1 : 1;
    return (x->s > y->s) - (x->s < y->s);
}

skv_status skv_mc_apply(skv_cache *c, const skv_mc_groups *g, float t, float keep) {
    const int32_t hd = c->head_dim;
    if (hd > 512) return skv_set_error(SKV_ERR_UNSUPPORTED, "policy minicache: head_dim %d > 512", hd);
    const int64_t bpv = c->fmt == SKV_KV_F32 ? 4 : c->fmt == SKV_KV_BF16 ? 2 : 0;
    if (!bpv) return skv_set_error(SKV_ERR_UNSUPPORTED, "policy minicache: the KV format must be f32 or bf16");
    c->shared_bytes = 0;
    int32_t nmax = 0;
    for (int32_t i = 0; i < c->n_layer * c->n_kv_head; i++) nmax = SKV_MAX(nmax, c->streams[i].n);
    if (!nmax) return SKV_OK;
    const int32_t kmax = SKV_MC_MAX_GROUP;
    float *rows = malloc(sizeof(float) * (size_t)kmax * 2 * nmax * hd);
    float *e = malloc(sizeof(float) * (size_t)nmax * hd), *norms = malloc(sizeof(float) * (size_t)nmax * kmax);
    mc_rank *rk = malloc(sizeof(mc_rank) * (size_t)nmax);
    uint8_t *stay = malloc((size_t)nmax);
    float out[512];
    skv_status st = SKV_OK;
    if (!rows || !e || !norms || !rk || !stay) {
        st = skv_set_error(SKV_ERR_NOMEM, "policy minicache: out of memory");
        goto done;
    }
    for (int32_t j = 0; j < g->n && !st; j++) {
        const int32_t k = g->size[j], *ly = g->layer + g->first[j];
        for (int32_t h = 0; h < c->n_kv_head && !st; h++) {
            const skv_stream *s0 = skv_cache_stream(c, ly[0], h);
            const int32_t n = s0->n;
            for (int32_t i = 1; i < k; i++) {
                const skv_stream *si = skv_cache_stream(c, ly[i], h);
                if (si->n != n || memcmp(si->pos, s0->pos, sizeof(int32_t) * (size_t)n)) {
                    st = skv_set_error(SKV_ERR_UNSUPPORTED, "policy minicache: cache layers %d and %d hold different "
                                       "tokens (head %d)", ly[0], ly[i], h);
                    break;
                }
            }
            if (st || !n) continue;
            for (int32_t i = 0; i < k; i++) /* rows[i][K or V][n][hd] */
                skv_cache_gather(c, ly[i], h, rows + (size_t)i * 2 * nmax * hd, rows + ((size_t)i * 2 + 1) * nmax * hd);
            const int32_t n_stay = (int32_t)lrint((double)keep * n);
            for (int is_v = 0; is_v < 2 && !st; is_v++) {
                for (int32_t s = 0; s < n; s++) {
                    const float *x[SKV_MC_MAX_GROUP];
                    for (int32_t i = 0; i < k; i++) x[i] = rows + (((size_t)i * 2 + is_v) * nmax + s) * hd;
                    rk[s].om = skv_mc_merge(x, k, hd, t, e + (size_t)s * hd, norms + (size_t)s * kmax);
                    rk[s].s = s;
                }
                qsort(rk, (size_t)n, sizeof *rk, by_om_desc);
                memset(stay, 0, (size_t)nmax);
                for (int32_t r = 0; r < n_stay; r++) stay[rk[r].s] = 1;
                for (int32_t s = 0; s < n && !st; s++) {
                    if (stay[s]) continue;
                    for (int32_t i = 0; i < k && !st; i++) {
                        for (int32_t d = 0; d < hd; d++) out[d] = norms[(size_t)s * kmax + i] * e[(size_t)s * hd + d];
                        st = skv_cache_set_row(c, ly[i], h, s, is_v, out);
                    }
                    /* stored: e and k norms instead of k rows */
                    c->shared_bytes += ((int64_t)k * hd - hd - k) * bpv;
                }
            }
        }
    }
done:
    free(rows), free(e), free(norms), free(rk), free(stay);
    return st;
}
