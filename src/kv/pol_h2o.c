/*
 * pol_h2o.c — H2O (arXiv 2306.14048): heavy hitters by accumulated attention + the recent
 * window (--recent share of the budget), re-evicted every decode step.
 */
#include "kv/policy.h"

static skv_status validate(const skv_policy_params *p, const skv_policy_env *e) {
    (void)e;
    skv_status st = skv_policy_check_budget(p);
    if (st) return st;
    if (!(p->recent_frac >= 0 && p->recent_frac <= 1))
        return skv_set_error(SKV_ERR_ARG, "policy h2o: recent share %g is outside [0, 1]", p->recent_frac);
    return SKV_OK;
}

static int32_t budget(const skv_policy_params *p, int32_t layer, int32_t n_layer, int32_t n_tokens) {
    (void)layer, (void)n_layer;
    return skv_policy_base_budget(p, n_tokens);
}

static skv_evict_desc evict(const skv_policy_params *p) {
    return (skv_evict_desc){.evicts = 1, .rank = SKV_RANK_ACC, .recent_frac = p->recent_frac, .pool = 1, .step = 1};
}

const skv_policy_ops skv_pol_h2o = {
    .name = "h2o", .summary = "heavy hitters by accumulated attention + recent tokens, re-evicted every step",
    .stats = SKV_STAT_ACC, .validate = validate, .budget = budget, .evict = evict,
};
