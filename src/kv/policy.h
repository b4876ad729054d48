/*
 * policy.h — KV-cache policies: which tokens each (layer, KV head) stream keeps.
 *
 * Selection functions work on plain arrays so tests can check them against brute force:
 * each takes the stream's slot positions and scores and fills keep[n] (1 = keep).
 */
#ifndef SKV_KV_POLICY_H
#define SKV_KV_POLICY_H

#include "kv/cache.h"

typedef enum skv_policy_kind {
    SKV_POL_FULL = 0,
    SKV_POL_WINDOW,
    SKV_POL_H2O,
    SKV_POL_SNAPKV,
    SKV_POL_PYRAMIDKV,
    SKV_POL_QUANT,
} skv_policy_kind;

typedef struct skv_policy_state {
    skv_policy_params p;
    skv_policy_kind kind;
    int32_t *budget_now; /* (n_layer) per-head budget in tokens set at the last compression; 0
                            before any */
} skv_policy_state;

/* Parse and check params (head_dim for the quantizer). */
skv_status skv_policy_parse(const skv_policy_params *p, int32_t head_dim,
                            skv_policy_kind *kind);
/* Statistics a policy needs from the forward pass. */
int skv_policy_needs_acc(skv_policy_kind k);
int skv_policy_needs_win(skv_policy_kind k);

/* Per-layer budget in tokens for n cached tokens (pyramidkv varies by layer). */
int32_t skv_policy_budget(const skv_policy_params *p, skv_policy_kind k, int32_t layer,
                          int32_t n_layer, int32_t n_tokens);

/* Selections (n slots; keep[n] out). Each keeps min(n, budget) slots.
 * window: the `sinks` lowest positions and the most recent ones.
 * h2o:    the recent_frac * budget most recent, then the highest acc among the rest.
 * snapkv: the obs_window most recent, then the highest max-pooled win among the rest
 *         (pooling over the slots sorted by position, width pool_kernel). */
void skv_select_window(const int32_t *pos, int32_t n, int32_t budget, int32_t sinks, uint8_t *keep);
void skv_select_h2o(const int32_t *pos, const float *acc, int32_t n, int32_t budget,
                    float recent_frac, uint8_t *keep);
void skv_select_snapkv(const int32_t *pos, const float *win, int32_t n, int32_t budget,
                       int32_t obs_window, int32_t pool_kernel, uint8_t *keep);

/* Apply the policy to every stream after a multi-token call (compress) or after a decode
 * step (step). scratch: at least cap * (sizeof(int32_t) * 2 + sizeof(float) + 1) bytes. */
void skv_policy_compress(skv_policy_state *ps, skv_cache *c, void *scratch);
void skv_policy_step(skv_policy_state *ps, skv_cache *c, void *scratch);

#endif
