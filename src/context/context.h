/*
 * context.h — the context: what every backend shares (model, positions, policy, statistics
 * asked for) and the table of the backend it runs on. Internal to libslimkv; methods built
 * from several contexts (method/) use the accessors at the end.
 */
#ifndef SKV_CONTEXT_H
#define SKV_CONTEXT_H

#include "backend/backend.h"
#include "model/model.h"

struct skv_context {
    skv_model *m;
    const skv_backend_ops *be;
    void *bs;                  /* the backend's state */
    int32_t n_ctx, n_batch, n_past, n_threads;
    int32_t n_layer;           /* cache layers */
    skv_policy_state pol;
    unsigned stats;            /* SKV_STAT_* collected (the policy's, or all with collect_stats) */
    int32_t head_stats;        /* per-query-head statistics kept (collect_head_stats) */
    int32_t head_prefix_len;   /* their prefix length (head_prefix, clamped to n_ctx) */
    int32_t head_win_from;     /* their window start (INT32_MAX: none) */
    int32_t v_slow;            /* CUDA: V in the slow tier */
    const skv_context *past;   /* read-only past (NULL: none); own positions start at past->n_past */
    float *sample_logits;      /* (n_vocab) skv_decode_sampled without device sampling */
};

/* Per-query-head statistics (collect_head_stats), by position, read in place: */
enum { SKV_HEAD_ACC = 0, SKV_HEAD_LAST = 1, SKV_HEAD_WIN = 2, SKV_HEAD_PREFIX = 3 };
/* The (layer, query head) row of one kind (n_ctx floats; head_prefix for PREFIX), or NULL
 * with an error when the context keeps none. */
const float *skv_context_head_row(const skv_context *c, int kind, int32_t layer, int32_t head);
int32_t skv_context_head_prefix(const skv_context *c);
/* The position from which window statistics accumulate (INT32_MAX: not set). */
int32_t skv_context_head_window_from(const skv_context *c);
/* Stop collecting per-head statistics and free them (SmallKV's large model after matching). */
void skv_context_drop_head_stats(skv_context *c);
/* Move every stream's K and V to a tier (SmallKV: the large model's full cache is slow). */
skv_status skv_context_move_tier(skv_context *c, skv_tier tier);
/* The read plan of the next single-token steps (NULL: ordinary attention). */
skv_status skv_context_set_plan(skv_context *c, const skv_read_plan *plan);
/* The policy's budgets at the current length, then the backend's compression. */
skv_status skv_context_compress(skv_context *c);
int32_t skv_context_n_threads(const skv_context *c);
skv_model *skv_context_model(const skv_context *c);

#endif
