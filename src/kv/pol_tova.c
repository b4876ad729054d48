/*
 * pol_tova.c — TOVA (arXiv 2401.06104): when a stream is over its budget, evict the token
 * with the lowest attention from the current query, summed over the KV head's query heads.
 * At compression the prompt's last query ranks the tokens; every decode step evicts again.
 */
#include "kv/policy.h"

static skv_status validate(const skv_policy_params *p, const skv_policy_env *e) {
    (void)e;
    return skv_policy_check_budget(p);
}

static int32_t budget(const skv_policy_params *p, int32_t layer, int32_t n_layer, int32_t n_tokens) {
    (void)layer, (void)n_layer;
    return skv_policy_base_budget(p, n_tokens);
}

static skv_evict_desc evict(const skv_policy_params *p) {
    (void)p;
    return (skv_evict_desc){.evicts = 1, .rank = SKV_RANK_LAST, .pool = 1, .step = 1};
}

const skv_policy_ops skv_pol_tova = {
    .name = "tova", .summary = "evict the token the current query attends to least (group-summed), every step",
    .stats = SKV_STAT_LAST, .validate = validate, .budget = budget, .evict = evict,
};
