/*
 * pol_minicache.c — MiniCache (arXiv 2405.14366), training-free cross-layer merging: keep every
 * token; after each prompt the groups of cache layers (mc_groups) share one direction per token,
 * KV head and tensor, with per-layer norms, the `mc_keep` most distinct tokens left unmerged
 * (kv/minicache.c); with mc_bytes the unmerged fraction is the one that stores that share of the
 * full cache's bytes. CPU only.
 */
#include "kv/minicache.h"
#include "kv/policy.h"

#include <math.h>

static skv_status validate_mc(const skv_policy_params *p, const skv_policy_env *e) {
    if (!(p->mc_t >= 0 && p->mc_t <= 1))
        return skv_set_error(SKV_ERR_ARG, "policy minicache: --mc-t %g is outside [0, 1]", p->mc_t);
    if (!(p->mc_keep >= 0 && p->mc_keep <= 1))
        return skv_set_error(SKV_ERR_ARG, "policy minicache: --mc-keep %g is outside [0, 1]", p->mc_keep);
    if (p->mc_bytes != 0 && !(p->mc_bytes > 0 && p->mc_bytes <= 1))
        return skv_set_error(SKV_ERR_ARG, "policy minicache: --mc-bytes %g is outside (0, 1]", p->mc_bytes);
    if (!e) return SKV_OK;
    skv_mc_groups *g = malloc(sizeof *g);
    if (!g) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    skv_status st = skv_mc_parse(p->mc_groups, e->n_layer, g);
    double keep;
    if (!st && p->mc_bytes > 0) st = skv_mc_keep_for_bytes(g, e->n_layer, e->head_dim, p->mc_bytes, &keep);
    free(g);
    return st;
}

static skv_status transform_mc(const skv_policy_params *p, skv_cache *c) {
    skv_mc_groups *g = malloc(sizeof *g);
    if (!g) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    skv_status st = skv_mc_parse(p->mc_groups, c->n_layer, g);
    double keep = p->mc_keep;
    if (!st && p->mc_bytes > 0) st = skv_mc_keep_for_bytes(g, c->n_layer, c->head_dim, p->mc_bytes, &keep);
    if (!st) st = skv_mc_apply(c, g, p->mc_t, (float)keep);
    free(g);
    return st;
}

const skv_policy_ops skv_pol_minicache = {
    .name = "minicache",
    .summary = "MiniCache: SLERP-merge groups of cache layers (--mc-groups, default deep pairs), norms kept, the "
               "most distinct tokens (--mc-keep, or as many as --mc-bytes allows) unmerged",
    .validate = validate_mc, .transform = transform_mc,
};
