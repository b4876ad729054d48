/*
 * pol_snapkv.c — SnapKV (arXiv 2404.14469) and PyramidKV (arXiv 2406.02069): per head, the
 * keys the last --obs-window prompt queries attend to most (max-pooled over --pool keys) plus
 * the window itself, once per compression; decode steps append. PyramidKV shrinks the budget
 * linearly from the bottom cache layer to the top (the top gets budget / --beta).
 */
#include "kv/policy.h"

static skv_status validate(const skv_policy_params *p, const skv_policy_env *e) {
    (void)e;
    skv_status st = skv_policy_check_budget(p);
    if (st) return st;
    if (p->obs_window < 1) return skv_set_error(SKV_ERR_ARG, "policy %s: observation window must be >= 1", p->name);
    if (p->pool_kernel < 1 || p->pool_kernel % 2 == 0)
        return skv_set_error(SKV_ERR_ARG, "policy %s: pooling kernel must be odd and >= 1 (got %d)", p->name,
                             p->pool_kernel);
    if (p->budget_tokens > 0 && p->budget == 0 && p->budget_tokens < p->obs_window)
        return skv_set_error(SKV_ERR_ARG, "policy %s: budget of %d tokens is smaller than the observation window (%d)",
                             p->name, p->budget_tokens, p->obs_window);
    return SKV_OK;
}

static skv_status validate_pyramid(const skv_policy_params *p, const skv_policy_env *e) {
    skv_status st = validate(p, e);
    if (st) return st;
    if (!(p->pyramid_beta >= 1)) return skv_set_error(SKV_ERR_ARG, "policy pyramidkv: beta must be >= 1");
    return SKV_OK;
}

static int32_t budget(const skv_policy_params *p, int32_t layer, int32_t n_layer, int32_t n_tokens) {
    (void)layer, (void)n_layer;
    const int32_t b = skv_policy_base_budget(p, n_tokens);
    return b < p->obs_window ? p->obs_window : b;
}

static int32_t budget_pyramid(const skv_policy_params *p, int32_t layer, int32_t n_layer, int32_t n_tokens) {
    int32_t b = skv_policy_base_budget(p, n_tokens);
    if (n_layer > 1) {
        /* linear from bottom to top, averaging b; the top keeps at least the window */
        const double top = SKV_MAX((double)b / p->pyramid_beta, (double)p->obs_window);
        const double bottom = 2.0 * b - top;
        if (bottom < top) return b; /* (as it always was: no window clamp here) */
        b = (int32_t)lrint(bottom - (bottom - top) * layer / (n_layer - 1));
    }
    return b < p->obs_window ? p->obs_window : b;
}

static skv_evict_desc evict(const skv_policy_params *p) {
    return (skv_evict_desc){.evicts = 1, .rank = SKV_RANK_WIN, .recent = p->obs_window, .pool = p->pool_kernel};
}

const skv_policy_ops skv_pol_snapkv = {
    .name = "snapkv", .summary = "per head, what the last --obs-window prompt queries attend to (max-pooled, --pool)",
    .stats = SKV_STAT_WIN, .validate = validate, .budget = budget, .evict = evict,
};

const skv_policy_ops skv_pol_pyramidkv = {
    .name = "pyramidkv", .summary = "snapkv with budgets shrinking linearly by layer (top = budget / --beta)",
    .stats = SKV_STAT_WIN, .validate = validate_pyramid, .budget = budget_pyramid, .evict = evict,
};
