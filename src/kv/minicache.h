/*
 * minicache.h — MiniCache-style cross-layer merging (Liu et al., arXiv 2405.14366;
 * docs/techniques.md section 3, "training-free baseline"), training-free, for any model.
 *
 * Cache layers are merged in groups (default: pairs of adjacent layers from the middle up, e.g.
 * (5,6), (7,8) of 10). Per token, KV head and tensor (K after RoPE, V) the group's rows x_i are
 * split into norms n_i = |x_i| and directions u_i = x_i / n_i; a pair's directions merge by SLERP
 *   Ω = arccos(u_1·u_2),  e = (sin((1−t)Ω) u_1 + sin(tΩ) u_2) / sin Ω,
 * a larger group's into the normalised sum of its u_i (SLERP at t = 1/2 for a pair); each layer
 * then reads n_i e. The tokens whose directions are the most distinct (a pair: the largest Ω; a
 * group: the largest angle between a u_i and e) stay unmerged, `keep` of them (a fraction).
 * Storage of a merged token: e plus the group's norms instead of the group's rows; the cache
 * keeps the rows (rewritten as n_i e) and accounts the difference in shared_bytes.
 */
#ifndef SKV_KV_MINICACHE_H
#define SKV_KV_MINICACHE_H

#include "kv/cache.h"

#define SKV_MC_MAX_GROUP 16   /* layers in one group */
#define SKV_MC_MAX_LAYERS 512 /* cache layers */

/* Groups of cache layers: group j is layer[first[j] .. first[j] + size[j]). */
typedef struct skv_mc_groups {
    int32_t n;
    int32_t first[SKV_MC_MAX_LAYERS], size[SKV_MC_MAX_LAYERS];
    int32_t layer[SKV_MC_MAX_LAYERS];
} skv_mc_groups;

/* Parse "5:6,7:8" (groups of >= 2 distinct cache layers in [0, n_layer), each layer in one
 * group at most), or "gN" (groups of N adjacent layers from the top down: (L-N .. L-1),
 * (L-2N .. L-N-1), ...; the fewer than N layers left at the bottom stay unmerged); NULL or ""
 * gives the default pairs (n_layer/2, +1), (+2, +3), ... Errors name the option (--mc-groups). */
skv_status skv_mc_parse(const char *spec, int32_t n_layer, skv_mc_groups *g);

/* The unmerged fraction r (the same in every group) at which the merged cache stores `frac` of
 * the full cache's bytes. Per token, KV head and tensor the full cache stores n_layer * hd
 * values; the merged one (n_layer - sum k) * hd for the layers outside the groups and, for a
 * group of k, k * hd for an unmerged token, hd + k (e and k norms) for a merged one:
 *   frac * n_layer * hd = (n_layer - sum k) hd + sum_j [r k_j hd + (1 - r)(hd + k_j)].
 * Refuses (naming --mc-bytes) a frac outside (0, 1] or below what merging every token stores. */
skv_status skv_mc_keep_for_bytes(const skv_mc_groups *g, int32_t n_layer, int32_t hd, double frac, double *keep);

/* One token's rows x[i] (hd each) of a k-layer group: e (hd) the merged direction, norms (k),
 * returns the distinctness (Ω for a pair; for k > 2 the largest angle between a u_i and e).
 * A zero row is maximally distinct (π). */
float skv_mc_merge(const float *const *x, int k, int hd, float t, float *e, float *norms);

/* Merge every group of the cache (f32 or bf16 blocks; streams of a group must hold the same
 * positions in the same slots): rows of merged tokens become n_i e, `keep` (fraction) of the
 * most distinct stay; sets c->shared_bytes. */
skv_status skv_mc_apply(skv_cache *c, const skv_mc_groups *g, float t, float keep);

#endif
