/*
 * context.c — per-sequence state: KV cache memory, RoPE tables and scratch, allocated once.
 */
#include "model.h"

#include <cblas.h>
#include <math.h>

skv_context_params skv_context_default_params(void) {
    skv_context_params p = {.n_ctx = 0, .n_batch = 512};
    return p;
}

static void *alloc_floats(int64_t n, int *fail) {
    if (n <= 0) n = 1;
    void *p = aligned_alloc(64, (size_t)((n * 4 + 63) / 64 * 64));
    if (!p) *fail = 1;
    return p;
}

skv_status skv_context_init(skv_model *m, skv_context_params p, skv_context **out) {
    *out = NULL;
    const skv_model_info *in = &m->cfg.info;
    if (p.n_ctx < 0) return skv_set_error(SKV_ERR_ARG, "n_ctx must be >= 0 (got %d)", p.n_ctx);
    if (p.n_ctx > in->n_ctx)
        return skv_set_error(SKV_ERR_RANGE,
                             "context of %d tokens exceeds the model's max_position_embeddings %d",
                             p.n_ctx, in->n_ctx);
    if (p.n_batch < 0) return skv_set_error(SKV_ERR_ARG, "n_batch must be >= 0 (got %d)", p.n_batch);
    skv_context *c = calloc(1, sizeof *c);
    if (!c) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    c->m = m;
    c->n_ctx = p.n_ctx ? p.n_ctx : in->n_ctx;
    c->n_batch = p.n_batch ? SKV_MIN(p.n_batch, c->n_ctx) : SKV_MIN(512, c->n_ctx);
    c->n_threads = m->n_threads;
    const int64_t hd = in->head_dim, B = c->n_batch, T = c->n_ctx;
    const int64_t QD = in->n_head * hd, KD = in->n_kv_head * hd;
    int fail = 0;
    c->k_cache = alloc_floats((int64_t)in->n_layer * KD * T, &fail);
    c->v_cache = alloc_floats((int64_t)in->n_layer * KD * T, &fail);
    c->rope_cos = alloc_floats(T * hd / 2, &fail);
    c->rope_sin = alloc_floats(T * hd / 2, &fail);
    c->x = alloc_floats(B * in->dim, &fail);
    c->xb = alloc_floats(B * in->dim, &fail);
    c->proj = alloc_floats(B * in->dim, &fail);
    c->q = alloc_floats(B * QD, &fail);
    c->att_out = alloc_floats(B * QD, &fail);
    c->k = alloc_floats(B * KD, &fail);
    c->v = alloc_floats(B * KD, &fail);
    c->hb = alloc_floats(B * in->ffn_dim, &fail);
    c->hb2 = alloc_floats(B * in->ffn_dim, &fail);
    c->att_stride = SKV_MAX(SKV_MIN(B, SKV_ATT_BLOCK), in->n_head) * T;
    c->att = alloc_floats((int64_t)c->n_threads * c->att_stride, &fail);
    c->wconv = alloc_floats(m->max_weight_elems, &fail);
    c->logits = alloc_floats(in->n_vocab, &fail);
    if (fail) {
        skv_context_free(c);
        return skv_set_error(SKV_ERR_NOMEM, "cannot allocate the KV cache and scratch for %d tokens",
                             (int)T);
    }
    /* RoPE tables as transformers computes them: freqs = pos * inv_freq in float32. */
    for (int64_t pos = 0; pos < T; pos++)
        for (int64_t i = 0; i < hd / 2; i++) {
            float f = (float)pos * m->rope_inv_freq[i];
            c->rope_cos[pos * hd / 2 + i] = cosf(f);
            c->rope_sin[pos * hd / 2 + i] = sinf(f);
        }
    openblas_set_num_threads(c->n_threads);
    *out = c;
    return SKV_OK;
}

void skv_context_free(skv_context *c) {
    if (!c) return;
    float **bufs[] = {&c->k_cache, &c->v_cache, &c->rope_cos, &c->rope_sin, &c->x, &c->xb,
                      &c->proj, &c->q, &c->att_out, &c->k, &c->v, &c->hb, &c->hb2, &c->att,
                      &c->wconv, &c->logits};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(*bufs[i]);
    free(c);
}

int32_t skv_context_n_past(const skv_context *c) { return c->n_past; }

skv_status skv_context_truncate(skv_context *c, int32_t n_past) {
    if (n_past < 0 || n_past > c->n_past)
        return skv_set_error(SKV_ERR_ARG, "truncate to %d: context holds %d tokens", n_past,
                             c->n_past);
    c->n_past = n_past;
    return SKV_OK;
}
