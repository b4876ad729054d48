/*
 * model.h — the loaded model: weights as views into the mapped safetensors, the layer-to-cache
 * map, RoPE tables shared by every context. Internal to libslimkv; knows nothing of contexts
 * or backends (a backend may hang its own copy of the weights on `be_data`).
 */
#ifndef SKV_MODEL_H
#define SKV_MODEL_H

#include "ops/ops.h"
#include "io/config.h"
#include "io/safetensors.h"
#include "io/gguf.h"

typedef struct skv_layer {
    float *attn_norm;          /* (dim) */
    float *ffn_norm;           /* (dim) */
    skv_weight wq;             /* (n_head*hd, dim) */
    skv_weight wk, wv;         /* (n_kv_head*hd, dim) */
    skv_weight wo;             /* (dim, n_head*hd) */
    float *bq, *bk, *bv, *bo;  /* (n_head*hd), (n_kv*hd), (n_kv*hd), (dim); NULL when absent */
    skv_weight w_gate, w_up;   /* (ffn, dim) */
    skv_weight w_down;         /* (dim, ffn) */
    /* Gemma 3 only (NULL otherwise): RMSNorm of each head's q and k (hd), and of the attention
     * and FFN outputs before the residual add (dim) */
    float *q_norm, *k_norm, *post_attn_norm, *post_ffn_norm;
} skv_layer;

struct skv_model {
    skv_config cfg;
    skv_st_set *st;           /* safetensors weights, or */
    skv_gguf *gguf;           /* GGUF weights (used in place, quantized or not) */
    unsigned act_kinds;       /* activation forms the weights' dot products read (wfmt.h) */
    skv_weight tok_embed;     /* (n_vocab, dim) */
    skv_weight lm_head;       /* (n_vocab, dim); same data as tok_embed when tied */
    float *final_norm;        /* (dim) */
    skv_layer *layers;        /* (n_layer) */
    float *f32_store;         /* one allocation holding every norm and bias in f32 */
    float *rope_inv_freq;     /* (head_dim/2), scaling applied */
    int32_t n_threads;
    int32_t f32_prefill;      /* skv_model_params.f32_prefill */
    int64_t max_weight_elems; /* largest matrix, for the f32 conversion scratch */
    /* layer-to-cache map: layer l attends to the KV of layer kv_src[l]; the layers that append
     * (kv_src[l] == l) are the cache layers, numbered in order: cache_of[l] is the cache layer
     * layer l reads (identity for standard models) */
    int32_t *kv_src, *cache_of;
    int32_t n_cache_layers;
    /* LCKV: the layers a prefill iterates, [grp_lo, grp_hi] (grp_lo: the first layer reading a
     * later layer's KV; grp_hi: the highest layer so read); -1 for models without upward reads */
    int32_t grp_lo, grp_hi;
    /* RoPE tables (rope_len, head_dim/2), computed once for the longest context asked for;
     * tables outgrown by a longer context stay allocated until the model is freed. With
     * cfg.swa_period (Gemma 3) a second table for the sliding-window layers follows the first
     * (skv_model_rope_at). */
    float *rope_cos, *rope_sin;
    int32_t rope_len;
    void **rope_old;
    int32_t n_rope_old;
    /* chat: the template text and the BOS token's text (tokenizer_config.json; NULL when
     * absent; malloc'd, freed with the model; a loader of another format sets them too) */
    char *chat_template, *bos_token;
    /* a backend's copy of the weights (the CUDA backend's device copy), freed with the model */
    void *be_data;
    void (*be_data_free)(void *);
};

/* load_gguf.c: the model of a .gguf file into m (config, weights; m->gguf set). */
skv_status skv_model_load_gguf(skv_model *m, const char *path, skv_model_params params);

/* RoPE tables covering positions < n (grown if needed). */
skv_status skv_model_rope(skv_model *m, int32_t n);

/* Is layer l one of Gemma 3's sliding-window (local) layers? */
static inline int skv_model_layer_local(const skv_model *m, int32_t l) {
    return m->cfg.swa_period > 0 && (l + 1) % m->cfg.swa_period != 0;
}
/* The sliding window layer l attends within (0: none). */
static inline int32_t skv_model_layer_window(const skv_model *m, int32_t l) {
    if (m->cfg.swa_period > 0) return skv_model_layer_local(m, l) ? m->cfg.info.sliding_window : 0;
    return m->cfg.info.sliding_window;
}
/* cos / sin rows (head_dim/2) of layer l's RoPE at position pos. */
static inline const float *skv_model_rope_at(const skv_model *m, const float *tab, int32_t l, int64_t pos) {
    const int64_t half = m->cfg.info.head_dim / 2;
    return tab + ((skv_model_layer_local(m, l) ? m->rope_len : 0) + pos) * half;
}

#endif
