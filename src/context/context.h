/*
 * context.h — internal accessors of the context (its structure is in backend/backend.h: what
 * every backend shares) for methods built from several contexts (method/).
 */
#ifndef SKV_CONTEXT_H
#define SKV_CONTEXT_H

#include "backend/backend.h"


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
skv_model *skv_context_model(const skv_context *c);
/* dst (empty, on src's backend, its model's cache the shape of src's: cache layers, KV heads,
 * head_dim) takes a copy of src's cache where it lives (the device's memory on CUDA): the
 * coprocessor of cache augmentation reads it as its own past. */
skv_status skv_context_copy_cache(skv_context *dst, const skv_context *src);
/* Cache layers from low-rank codes on the context's backend (backend/codes.h): whether the
 * backend does it (else the caller rebuilds rows on the host and uses skv_context_put_kv);
 * the decoders' device copy for this backend (*free_fn frees it); one layer's part into an
 * empty context; after every layer, the n positions (then the policy's compression). */
int skv_context_codes_on_device(const skv_context *c);
/* skv_context_get_kv of a layer holding n tokens (inside skv_batch.layer_done, before the
 * call's positions are counted). */
skv_status skv_context_get_kv_rows(const skv_context *c, int32_t layer, int32_t n, int derope, float *k, float *v);
skv_status skv_context_codes_upload(const skv_context *c, const skv_codes_desc *d, void **dev, void (**free_fn)(void *));
skv_status skv_context_codes_layer(skv_context *c, void *dev, int32_t layer, int part, const void *z, int z_bf16, int32_t n);
skv_status skv_context_codes_finish(skv_context *c, int32_t n);

#endif
