/*
 * policy.c — the policy registry and what every policy shares: lookup, the budget rule,
 * and applying a policy's eviction to the CPU cache at compression and at each decode step.
 */
#include "kv/policy.h"

extern const skv_policy_ops skv_pol_full, skv_pol_window, skv_pol_h2o, skv_pol_snapkv, skv_pol_pyramidkv,
    skv_pol_tova, skv_pol_quant, skv_pol_smallkv, skv_pol_kcache, skv_pol_minicache;

const skv_policy_ops *const skv_policy_registry[] = {
    &skv_pol_full, &skv_pol_window, &skv_pol_h2o, &skv_pol_snapkv, &skv_pol_pyramidkv,
    &skv_pol_tova, &skv_pol_quant, &skv_pol_smallkv, &skv_pol_kcache, &skv_pol_minicache, NULL,
};

const char *skv_policy_names(void) {
    static char buf[256];
    if (!buf[0])
        for (int i = 0; skv_policy_registry[i]; i++)
            snprintf(buf + strlen(buf), sizeof buf - strlen(buf), "%s%s", i ? ", " : "", skv_policy_registry[i]->name);
    return buf;
}

skv_policy_params skv_policy_default_params(const char *name) {
    skv_policy_params p = {.name = name ? name : "full", .budget = 0.2f, .budget_tokens = 0,
                           .sinks = 4, .recent_frac = 0.5f, .obs_window = 32, .pool_kernel = 7,
                           .pyramid_beta = 20.0f, .quant_bits = 4,
                           .kc_n = 64, .kc_frac = 0, .kc_recent = 32, .kc_fast_layers = 0,
                           .kc_weight = SKV_KC_RENORM, .kc_gran = SKV_KC_SUM, .kc_store = SKV_KC_MMAP,
                           .kc_block = 32, .mc_t = 0.5f, .mc_keep = 0.05f};
    return p;
}

const skv_policy_ops *skv_policy_find(const char *name) {
    if (!name) name = "full";
    for (int i = 0; skv_policy_registry[i]; i++)
        if (!strcmp(name, skv_policy_registry[i]->name)) return skv_policy_registry[i];
    skv_set_error(SKV_ERR_ARG, "unknown policy '%s' (%s)", name, skv_policy_names());
    return NULL;
}

skv_status skv_policy_parse(const skv_policy_params *p, const skv_policy_env *e, const skv_policy_ops **ops) {
    const skv_policy_ops *o = skv_policy_find(p->name);
    if (!o) return SKV_ERR_ARG;
    if (ops) *ops = o;
    return o->validate ? o->validate(p, e) : SKV_OK;
}

skv_status skv_policy_check_budget(const skv_policy_params *p) {
    if (p->budget == 0 && p->budget_tokens <= 0)
        return skv_set_error(SKV_ERR_ARG, "policy %s: budget must be > 0 (a fraction in (0, 1] or "
                             "a token count)", p->name);
    if (p->budget != 0 && !(p->budget > 0 && p->budget <= 1))
        return skv_set_error(SKV_ERR_ARG, "policy %s: budget %g is outside (0, 1]", p->name, p->budget);
    return SKV_OK;
}

int32_t skv_policy_base_budget(const skv_policy_params *p, int32_t n_tokens) {
    int32_t b = p->budget > 0 ? (int32_t)lrintf(p->budget * (float)n_tokens) : p->budget_tokens;
    return b < 1 ? 1 : b;
}

int32_t skv_policy_budget(const skv_policy_ops *ops, const skv_policy_params *p, int32_t layer, int32_t n_layer,
                          int32_t n_tokens) {
    return ops->budget ? ops->budget(p, layer, n_layer, n_tokens) : n_tokens;
}

void skv_policy_compress(skv_policy_state *ps, skv_cache *c, void *scratch) {
    if (!ps->ev.evicts) return;
    uint8_t *keep = scratch;
    for (int32_t l = 0; l < c->n_layer; l++)
        for (int32_t g = 0; g < c->n_kv_head; g++) {
            skv_stream *st = skv_cache_stream(c, l, g);
            /* budget relative to the tokens seen: the largest position + 1 */
            int32_t seen = 0;
            for (int32_t s = 0; s < st->n; s++) seen = SKV_MAX(seen, st->pos[s] + 1);
            const int32_t b = skv_policy_budget(ps->ops, &ps->p, l, c->n_layer, seen);
            ps->budget_now[l] = b;
            if (st->n <= b) continue;
            skv_select(&ps->ev, st->pos, skv_stream_rank_score(st, ps->ev.rank), st->n, b, keep);
            skv_cache_compact(c, l, g, keep);
        }
}

void skv_policy_step(skv_policy_state *ps, skv_cache *c, void *scratch) {
    (void)scratch;
    if (!ps->ev.evicts || !ps->ev.step) return;
    for (int32_t l = 0; l < c->n_layer; l++) {
        const int32_t b = ps->budget_now[l];
        if (b <= 0) continue; /* no compression yet */
        for (int32_t g = 0; g < c->n_kv_head; g++) {
            skv_stream *st = skv_cache_stream(c, l, g);
            while (st->n > b) {
                int32_t newest = 0;
                for (int32_t s = 0; s < st->n; s++) newest = SKV_MAX(newest, st->pos[s]);
                const int32_t victim =
                    skv_select_victim(&ps->ev, st->pos, skv_stream_rank_score(st, ps->ev.rank), st->n, b, newest);
                if (victim < 0) break;
                skv_cache_remove_swap(c, l, g, victim);
            }
        }
    }
}
