/*
 * pol_kcache.c — KCache (He & Wu, arXiv 2404.18057): keys stay in the fast tier, values of all
 * but the newest --kc-recent tokens move to a slow store, and each decode step reads only the
 * top --kc-n V rows per (layer, KV head) by the step's own attention. Expressed as a read plan's
 * V top-N rule (kv/plan.h) that the backend executes; the policy itself evicts nothing unless
 * --kc-over names an eviction policy, whose budget, eviction rule and statistics it reuses
 * ("kcache over snapkv": the SnapKV-compressed cache, then KCache's reads over it).
 */
#include "kv/policy.h"

static const skv_policy_ops *over_of(const skv_policy_params *p) {
    return p->kc_over && *p->kc_over ? skv_policy_find(p->kc_over) : NULL;
}

static skv_status validate(const skv_policy_params *p, const skv_policy_env *e) {
    if (p->kc_n < 0 || (p->kc_n == 0 && !(p->kc_frac > 0)))
        return skv_set_error(SKV_ERR_ARG, "policy kcache: --kc-n must be > 0 (a row count, or a fraction in (0, 1]); "
                             "got %s", p->kc_n < 0 ? "a negative count" : "0");
    if (p->kc_n == 0 && p->kc_frac > 1)
        return skv_set_error(SKV_ERR_ARG, "policy kcache: --kc-n %g as a fraction is above 1 (more rows than the "
                             "context)", p->kc_frac);
    if (p->kc_recent < 0) return skv_set_error(SKV_ERR_ARG, "policy kcache: --kc-recent must be >= 0 (got %d)", p->kc_recent);
    if (p->kc_fast_layers < 0 || (e && p->kc_fast_layers > e->n_layer))
        return skv_set_error(SKV_ERR_ARG, "policy kcache: --kc-fast-layers %d is outside [0, %d]", p->kc_fast_layers,
                             e ? e->n_layer : 0);
    if (p->kc_weight != SKV_KC_RENORM && p->kc_weight != SKV_KC_EXACT)
        return skv_set_error(SKV_ERR_ARG, "policy kcache: --kc-weight must be renorm or exact");
    if (p->kc_gran != SKV_KC_SUM && p->kc_gran != SKV_KC_MAX && p->kc_gran != SKV_KC_UNION)
        return skv_set_error(SKV_ERR_ARG, "policy kcache: --kc-gran must be sum, max or union");
    if (p->kc_store != SKV_KC_MMAP && p->kc_store != SKV_KC_ZSTD)
        return skv_set_error(SKV_ERR_ARG, "policy kcache: --kc-store must be mmap or zstd");
    if (p->kc_block < SKV_KV_BLOCK || p->kc_block % SKV_KV_BLOCK || p->kc_block > 64 * SKV_KV_BLOCK)
        return skv_set_error(SKV_ERR_ARG, "policy kcache: --kc-block %d must be a multiple of %d in [%d, %d]",
                             p->kc_block, SKV_KV_BLOCK, SKV_KV_BLOCK, 64 * SKV_KV_BLOCK);
    const skv_policy_ops *o = NULL;
    if (p->kc_over && *p->kc_over) {
        if (!(o = over_of(p))) return SKV_ERR_ARG;
        if (!o->evict || o->driver || o->vtop || o->format)
            return skv_set_error(SKV_ERR_ARG, "policy kcache: --kc-over %s is not an eviction policy", p->kc_over);
        skv_policy_params q = *p;
        q.name = o->name;
        skv_status st = o->validate ? o->validate(&q, e) : SKV_OK;
        if (st) return st;
        if (o->evict(&q).step)
            return skv_set_error(SKV_ERR_UNSUPPORTED, "policy kcache: --kc-over %s evicts at every decode step, which "
                                 "would reorder stored V each step; KCache composes with policies that compress "
                                 "once (snapkv, pyramidkv)", p->kc_over);
        if (p->budget == 0 && p->budget_tokens > 0 && p->kc_recent > p->budget_tokens)
            return skv_set_error(SKV_ERR_ARG, "policy kcache: --kc-recent %d is larger than the budget of %d tokens "
                                 "(--budget-tokens)", p->kc_recent, p->budget_tokens);
    }
    return SKV_OK;
}

static int32_t budget(const skv_policy_params *p, int32_t layer, int32_t n_layer, int32_t n_tokens) {
    const skv_policy_ops *o = over_of(p);
    return o && o->budget ? o->budget(p, layer, n_layer, n_tokens) : n_tokens;
}

static skv_evict_desc evict(const skv_policy_params *p) {
    const skv_policy_ops *o = over_of(p);
    return o && o->evict ? o->evict(p) : (skv_evict_desc){0};
}

static unsigned stats_of(const skv_policy_params *p) {
    const skv_policy_ops *o = over_of(p);
    return o ? skv_policy_stats(o, p) : 0;
}

static skv_vtop_rule vtop(const skv_policy_params *p) {
    return (skv_vtop_rule){.on = 1, .n = p->kc_n, .frac = p->kc_frac, .gran = p->kc_gran, .weight = p->kc_weight,
                           .recent = p->kc_recent, .fast_layers = p->kc_fast_layers, .store = p->kc_store,
                           .block = p->kc_block, .dir = p->kc_dir, .cold = p->kc_cold};
}

const skv_policy_ops skv_pol_kcache = {
    .name = "kcache",
    .summary = "KCache: K fast, V in a slow store (--kc-store mmap|zstd), top --kc-n V rows read per step "
               "(--kc-over snapkv: over an evicted cache)",
    .validate = validate, .budget = budget, .evict = evict, .stats_of = stats_of, .vtop = vtop,
};
