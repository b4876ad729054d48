/*
 * gpu_glue.c — describe a loaded model and a policy to the CUDA backend (see
 * backend/cuda/gpu.h); the model is uploaded once, its GPU copy belongs to it and is freed
 * with it.
 */
#include "model.h"
#include "backend/cuda/gpu.h"

static skv_gpu_mat mat(const skv_weight *w) {
    return (skv_gpu_mat){.data = w->data, .dtype = w->dtype, .rows = w->rows, .cols = w->cols};
}

skv_status skv_model_gpu(skv_model *m, struct skv_gpu_model **out) {
    if (m->gpu) {
        *out = m->gpu;
        return SKV_OK;
    }
    const skv_model_info *in = &m->cfg.info;
    skv_gpu_layer_desc *ld = calloc((size_t)in->n_layer, sizeof *ld);
    if (!ld) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    for (int32_t l = 0; l < in->n_layer; l++) {
        const skv_layer *y = &m->layers[l];
        ld[l] = (skv_gpu_layer_desc){.attn_norm = y->attn_norm, .ffn_norm = y->ffn_norm, .bq = y->bq, .bk = y->bk,
                                     .bv = y->bv, .bo = y->bo, .wq = mat(&y->wq), .wk = mat(&y->wk),
                                     .wv = mat(&y->wv), .wo = mat(&y->wo), .w_gate = mat(&y->w_gate),
                                     .w_up = mat(&y->w_up), .w_down = mat(&y->w_down)};
    }
    const skv_gpu_model_desc d = {.n_layer = in->n_layer, .dim = in->dim, .n_head = in->n_head,
                                  .n_kv_head = in->n_kv_head, .head_dim = in->head_dim, .ffn_dim = in->ffn_dim,
                                  .n_vocab = in->n_vocab, .rms_eps = in->rms_eps,
                                  .rope_inv_freq = m->rope_inv_freq, .tok_embed = mat(&m->tok_embed),
                                  .lm_head = mat(&m->lm_head), .final_norm = m->final_norm, .layers = ld};
    skv_status st = skv_gpu_model_load(&d, &m->gpu);
    free(ld);
    *out = m->gpu;
    return st;
}

skv_gpu_policy skv_policy_gpu(const skv_policy_params *p, skv_policy_kind kind, int want_acc, int want_win,
                              int v_slow) {
    skv_gpu_policy g = {.evict = SKV_GPU_KEEP, .sinks = p->sinks, .recent_frac = p->recent_frac,
                        .obs_window = p->obs_window, .pool_kernel = p->pool_kernel, .want_acc = want_acc,
                        .want_win = want_win, .v_slow = v_slow};
    switch (kind) {
    case SKV_POL_WINDOW: g.evict = SKV_GPU_WINDOW; break;
    case SKV_POL_H2O: g.evict = SKV_GPU_H2O; break;
    case SKV_POL_SNAPKV:
    case SKV_POL_PYRAMIDKV: g.evict = SKV_GPU_SNAPKV; break;
    default: break;
    }
    return g;
}
