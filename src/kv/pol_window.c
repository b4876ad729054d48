/*
 * pol_window.c — StreamingLLM (arXiv 2309.17453): the `sinks` first tokens and the most
 * recent ones; every decode step evicts the oldest token that is not a sink.
 */
#include "kv/policy.h"

static skv_status validate(const skv_policy_params *p, const skv_policy_env *e) {
    (void)e;
    skv_status st = skv_policy_check_budget(p);
    if (st) return st;
    if (p->sinks < 0) return skv_set_error(SKV_ERR_ARG, "policy window: sinks must be >= 0 (got %d)", p->sinks);
    if (p->budget_tokens > 0 && p->budget == 0 && p->budget_tokens < p->sinks + 1)
        return skv_set_error(SKV_ERR_ARG, "policy window: budget of %d tokens cannot hold %d sinks + a recent window",
                             p->budget_tokens, p->sinks);
    return SKV_OK;
}

static int32_t budget(const skv_policy_params *p, int32_t layer, int32_t n_layer, int32_t n_tokens) {
    (void)layer, (void)n_layer;
    const int32_t b = skv_policy_base_budget(p, n_tokens);
    return b < p->sinks + 1 ? p->sinks + 1 : b;
}

static skv_evict_desc evict(const skv_policy_params *p) {
    return (skv_evict_desc){.evicts = 1, .rank = SKV_RANK_POSITION, .sinks = p->sinks, .pool = 1, .step = 1};
}

const skv_policy_ops skv_pol_window = {
    .name = "window", .summary = "StreamingLLM: --sinks first tokens + the most recent ones",
    .validate = validate, .budget = budget, .evict = evict,
};
