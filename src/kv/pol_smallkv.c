/*
 * pol_smallkv.c — SmallKV's entry in the registry. SmallKV runs two models, so it is not a
 * context policy: the driver (method/smallkv_run.c) keeps the large model's full cache and
 * hands its decode steps a read plan (kv/plan.h) built from the small model's attention.
 */
#include "kv/policy.h"

static skv_status validate(const skv_policy_params *p, const skv_policy_env *e) {
    (void)e;
    if (p->budget != 0 && !(p->budget > 0 && p->budget <= 1))
        return skv_set_error(SKV_ERR_ARG, "policy smallkv: budget %g is outside (0, 1]", p->budget);
    return SKV_OK;
}

const skv_policy_ops skv_pol_smallkv = {
    .name = "smallkv", .summary = "a small model of the family picks each step's reads (needs --draft DIR)",
    .driver = 1, .validate = validate,
};
