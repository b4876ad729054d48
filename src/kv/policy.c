/*
 * policy.c — full, window (StreamingLLM), h2o, snapkv, pyramidkv and quant: parameters,
 * selections and their application to the cache at compression and at each decode step.
 */
#include "kv/policy.h"

#include <math.h>

static const struct {
    const char *name;
    skv_policy_kind kind;
} g_kinds[] = {
    {"full", SKV_POL_FULL},     {"window", SKV_POL_WINDOW},       {"h2o", SKV_POL_H2O},
    {"snapkv", SKV_POL_SNAPKV}, {"pyramidkv", SKV_POL_PYRAMIDKV}, {"quant", SKV_POL_QUANT},
};

skv_policy_params skv_policy_default_params(const char *name) {
    skv_policy_params p = {.name = name ? name : "full", .budget = 0.2f, .budget_tokens = 0,
                           .sinks = 4, .recent_frac = 0.5f, .obs_window = 32, .pool_kernel = 7,
                           .pyramid_beta = 20.0f, .quant_bits = 4};
    return p;
}

int skv_policy_needs_acc(skv_policy_kind k) { return k == SKV_POL_H2O; }
int skv_policy_needs_win(skv_policy_kind k) { return k == SKV_POL_SNAPKV || k == SKV_POL_PYRAMIDKV; }

static int evicts(skv_policy_kind k) { return k != SKV_POL_FULL && k != SKV_POL_QUANT; }

skv_status skv_policy_parse(const skv_policy_params *p, int32_t head_dim,
                            skv_policy_kind *kind) {
    const char *name = p->name ? p->name : "full";
    size_t i;
    for (i = 0; i < sizeof g_kinds / sizeof g_kinds[0]; i++)
        if (!strcmp(name, g_kinds[i].name)) break;
    if (i == sizeof g_kinds / sizeof g_kinds[0])
        return skv_set_error(SKV_ERR_ARG,
                             "unknown policy '%s' (full, window, h2o, snapkv, pyramidkv, quant)", name);
    *kind = g_kinds[i].kind;
    if (!evicts(*kind)) {
        if (*kind == SKV_POL_QUANT && p->quant_bits != 8 && p->quant_bits != 4)
            return skv_set_error(SKV_ERR_ARG, "policy quant: bits must be 8 or 4 (got %d)", p->quant_bits);
        if (*kind == SKV_POL_QUANT && head_dim % SKV_KV_VGROUP != 0)
            return skv_set_error(SKV_ERR_UNSUPPORTED,
                                 "policy quant: head_dim %d is not a multiple of the %d-channel "
                                 "value groups", head_dim, SKV_KV_VGROUP);
        return SKV_OK;
    }
    if (p->budget == 0 && p->budget_tokens <= 0)
        return skv_set_error(SKV_ERR_ARG, "policy %s: budget must be > 0 (a fraction in (0, 1] or "
                             "a token count)", name);
    if (p->budget != 0 && !(p->budget > 0 && p->budget <= 1))
        return skv_set_error(SKV_ERR_ARG, "policy %s: budget %g is outside (0, 1]", name, p->budget);
    if (*kind == SKV_POL_WINDOW) {
        if (p->sinks < 0)
            return skv_set_error(SKV_ERR_ARG, "policy window: sinks must be >= 0 (got %d)", p->sinks);
        if (p->budget_tokens > 0 && p->budget == 0 && p->budget_tokens < p->sinks + 1)
            return skv_set_error(SKV_ERR_ARG,
                                 "policy window: budget of %d tokens cannot hold %d sinks + a "
                                 "recent window", p->budget_tokens, p->sinks);
    }
    if (*kind == SKV_POL_H2O && !(p->recent_frac >= 0 && p->recent_frac <= 1))
        return skv_set_error(SKV_ERR_ARG, "policy h2o: recent share %g is outside [0, 1]", p->recent_frac);
    if (*kind == SKV_POL_SNAPKV || *kind == SKV_POL_PYRAMIDKV) {
        if (p->obs_window < 1)
            return skv_set_error(SKV_ERR_ARG, "policy %s: observation window must be >= 1", name);
        if (p->pool_kernel < 1 || p->pool_kernel % 2 == 0)
            return skv_set_error(SKV_ERR_ARG, "policy %s: pooling kernel must be odd and >= 1 (got %d)",
                                 name, p->pool_kernel);
        if (p->budget_tokens > 0 && p->budget == 0 && p->budget_tokens < p->obs_window)
            return skv_set_error(SKV_ERR_ARG,
                                 "policy %s: budget of %d tokens is smaller than the observation "
                                 "window (%d)", name, p->budget_tokens, p->obs_window);
        if (*kind == SKV_POL_PYRAMIDKV && !(p->pyramid_beta >= 1))
            return skv_set_error(SKV_ERR_ARG, "policy pyramidkv: beta must be >= 1");
    }
    return SKV_OK;
}

int32_t skv_policy_budget(const skv_policy_params *p, skv_policy_kind k, int32_t layer,
                          int32_t n_layer, int32_t n_tokens) {
    int32_t b = p->budget > 0 ? (int32_t)lrintf(p->budget * (float)n_tokens) : p->budget_tokens;
    if (b < 1) b = 1;
    if (k == SKV_POL_PYRAMIDKV && n_layer > 1) {
        /* linear from bottom to top, averaging b; the top keeps at least the window */
        double top = SKV_MAX((double)b / p->pyramid_beta, (double)p->obs_window);
        double bottom = 2.0 * b - top;
        if (bottom < top) return b;
        b = (int32_t)lrint(bottom - (bottom - top) * layer / (n_layer - 1));
    }
    if ((k == SKV_POL_SNAPKV || k == SKV_POL_PYRAMIDKV) && b < p->obs_window) b = p->obs_window;
    if (k == SKV_POL_WINDOW && b < p->sinks + 1) b = p->sinks + 1;
    return b;
}

/* ---------------------------------------------------------------------------------------- */
/* Selections                                                                                */
/* ---------------------------------------------------------------------------------------- */

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

/* Slots sorted by position (ascending) into r[n]. */
static void by_position(const int32_t *pos, int32_t n, ranked *r) {
    for (int32_t i = 0; i < n; i++) r[i] = (ranked){0, pos[i], i};
    qsort(r, (size_t)n, sizeof *r, cmp_pos);
}

void skv_select_window(const int32_t *pos, int32_t n, int32_t budget, int32_t sinks, uint8_t *keep) {
    if (n <= budget) {
        memset(keep, 1, (size_t)n);
        return;
    }
    memset(keep, 0, (size_t)n);
    ranked *r = malloc((size_t)n * sizeof *r);
    by_position(pos, n, r);
    int32_t s = SKV_MIN(sinks, budget);
    for (int32_t i = 0; i < s; i++) keep[r[i].idx] = 1;
    for (int32_t i = n - (budget - s); i < n; i++) keep[r[i].idx] = 1;
    free(r);
}

/* Keep the `recent` newest slots, then the best `budget - recent` of the rest by score. */
static void select_recent_plus_top(const int32_t *pos, const float *score, int32_t n, int32_t budget,
                                   int32_t recent, uint8_t *keep) {
    if (n <= budget) {
        memset(keep, 1, (size_t)n);
        return;
    }
    memset(keep, 0, (size_t)n);
    recent = SKV_MIN(recent, budget);
    ranked *r = malloc((size_t)n * sizeof *r);
    by_position(pos, n, r);
    for (int32_t i = n - recent; i < n; i++) keep[r[i].idx] = 1;
    int32_t m = n - recent;
    for (int32_t i = 0; i < m; i++) r[i].score = score[r[i].idx];
    qsort(r, (size_t)m, sizeof *r, cmp_ranked);
    for (int32_t i = 0; i < budget - recent; i++) keep[r[i].idx] = 1;
    free(r);
}

void skv_select_h2o(const int32_t *pos, const float *acc, int32_t n, int32_t budget,
                    float recent_frac, uint8_t *keep) {
    select_recent_plus_top(pos, acc, n, budget, (int32_t)lrintf(recent_frac * (float)budget), keep);
}

void skv_select_snapkv(const int32_t *pos, const float *win, int32_t n, int32_t budget,
                       int32_t obs_window, int32_t pool_kernel, uint8_t *keep) {
    if (n <= budget) {
        memset(keep, 1, (size_t)n);
        return;
    }
    /* max-pool the window scores over position-neighbouring slots (the prefix before the
     * window, as SnapKV pools the prefix's scores) */
    ranked *r = malloc((size_t)n * sizeof *r);
    float *pooled = malloc((size_t)n * sizeof *pooled);
    by_position(pos, n, r);
    const int32_t m = n - SKV_MIN(obs_window, n), half = pool_kernel / 2;
    for (int32_t i = 0; i < n; i++) pooled[r[i].idx] = win[r[i].idx];
    for (int32_t i = 0; i < m; i++) {
        float mx = -INFINITY;
        for (int32_t j = SKV_MAX(0, i - half); j <= SKV_MIN(m - 1, i + half); j++)
            mx = SKV_MAX(mx, win[r[j].idx]);
        pooled[r[i].idx] = mx;
    }
    free(r);
    select_recent_plus_top(pos, pooled, n, budget, obs_window, keep);
    free(pooled);
}

/* ---------------------------------------------------------------------------------------- */
/* Application                                                                               */
/* ---------------------------------------------------------------------------------------- */

void skv_policy_compress(skv_policy_state *ps, skv_cache *c, void *scratch) {
    if (!evicts(ps->kind)) return;
    uint8_t *keep = scratch;
    for (int32_t l = 0; l < c->n_layer; l++)
        for (int32_t g = 0; g < c->n_kv_head; g++) {
            skv_stream *st = skv_cache_stream(c, l, g);
            /* budget relative to the tokens seen: the largest position + 1 */
            int32_t seen = 0;
            for (int32_t s = 0; s < st->n; s++) seen = SKV_MAX(seen, st->pos[s] + 1);
            int32_t b = skv_policy_budget(&ps->p, ps->kind, l, c->n_layer, seen);
            ps->budget_now[l] = b;
            if (st->n <= b) continue;
            switch (ps->kind) {
            case SKV_POL_WINDOW: skv_select_window(st->pos, st->n, b, ps->p.sinks, keep); break;
            case SKV_POL_H2O: skv_select_h2o(st->pos, st->acc, st->n, b, ps->p.recent_frac, keep); break;
            default:
                skv_select_snapkv(st->pos, st->win, st->n, b, ps->p.obs_window, ps->p.pool_kernel, keep);
            }
            skv_cache_compact(c, l, g, keep);
        }
}

void skv_policy_step(skv_policy_state *ps, skv_cache *c, void *scratch) {
    (void)scratch;
    if (ps->kind != SKV_POL_WINDOW && ps->kind != SKV_POL_H2O) return;
    for (int32_t l = 0; l < c->n_layer; l++) {
        const int32_t b = ps->budget_now[l];
        if (b <= 0) continue; /* no compression yet */
        for (int32_t g = 0; g < c->n_kv_head; g++) {
            skv_stream *st = skv_cache_stream(c, l, g);
            while (st->n > b) {
                int32_t newest = 0;
                for (int32_t s = 0; s < st->n; s++) newest = SKV_MAX(newest, st->pos[s]);
                int32_t victim = -1;
                if (ps->kind == SKV_POL_WINDOW) {
                    /* the oldest token that is not a sink */
                    for (int32_t s = 0; s < st->n; s++)
                        if (st->pos[s] >= ps->p.sinks && (victim < 0 || st->pos[s] < st->pos[victim]))
                            victim = s;
                } else {
                    /* the lowest accumulated attention outside the recent window */
                    int32_t recent = (int32_t)lrintf(ps->p.recent_frac * (float)b);
                    for (int32_t s = 0; s < st->n; s++) {
                        if (st->pos[s] > newest - recent) continue;
                        if (victim < 0 || st->acc[s] < st->acc[victim] ||
                            (st->acc[s] == st->acc[victim] && st->pos[s] < st->pos[victim]))
                            victim = s;
                    }
                }
                if (victim < 0) break;
                skv_cache_remove_swap(c, l, g, victim);
            }
        }
    }
}
