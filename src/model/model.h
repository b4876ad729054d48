/*
 * model.h — the loaded model (weights as views into the mapped safetensors) and the
 * per-sequence context (KV cache, scratch). Internal to libslimkv.
 */
#ifndef SKV_MODEL_H
#define SKV_MODEL_H

#include "backend/cpu/ops.h"
#include "io/config.h"
#include "io/safetensors.h"
#include "kv/cache.h"
#include "kv/policy.h"
#include "backend/cuda/gpu.h"

/* query rows per causal block of prefill attention */
#define SKV_ATT_BLOCK 64

typedef struct skv_layer {
    float *attn_norm;          /* (dim) */
    float *ffn_norm;           /* (dim) */
    skv_weight wq;             /* (n_head*hd, dim) */
    skv_weight wk, wv;         /* (n_kv_head*hd, dim) */
    skv_weight wo;             /* (dim, n_head*hd) */
    float *bq, *bk, *bv, *bo;  /* (n_head*hd), (n_kv*hd), (n_kv*hd), (dim); NULL when absent */
    skv_weight w_gate, w_up;   /* (ffn, dim) */
    skv_weight w_down;         /* (dim, ffn) */
} skv_layer;

struct skv_model {
    skv_config cfg;
    skv_st_set *st;
    skv_weight tok_embed;     /* (n_vocab, dim) */
    skv_weight lm_head;       /* (n_vocab, dim); same data as tok_embed when tied */
    float *final_norm;        /* (dim) */
    skv_layer *layers;        /* (n_layer) */
    float *f32_store;         /* one allocation holding every norm and bias in f32 */
    float *rope_inv_freq;     /* (head_dim/2), scaling applied */
    int32_t n_threads;
    int64_t max_weight_elems; /* largest matrix, for the f32 conversion scratch */
    struct skv_gpu_model *gpu; /* bf16 copy on the GPU, made by the first CUDA context */
};

struct skv_context {
    skv_model *m;
    struct skv_gpu_ctx *gpu;   /* CUDA backend: device cache and scratch (NULL on the CPU) */
    float *sample_logits;      /* (n_vocab) skv_decode_sampled on the CPU, allocated on use */
    int32_t *sample_seen;      /* (n_ctx) the sampler's distinct ids for the GPU, allocated on use */
    int32_t n_ctx, n_batch, n_past, n_threads;
    skv_cache cache;           /* K (after RoPE) and V of the kept tokens */
    skv_policy_state pol;
    int32_t want_acc, want_win;/* collect accumulated / observation-window attention */
    int32_t win_from;          /* queries at positions >= win_from count for `win` */
    float *rope_cos, *rope_sin;/* (n_ctx, head_dim/2) */
    /* scratch for up to n_batch tokens */
    float *x;                  /* (n_batch, dim) residual stream */
    float *xb;                 /* (n_batch, dim) normed input */
    float *q;                  /* (n_batch, n_head*hd) */
    float *k, *v;              /* (n_batch, n_kv_head*hd) */
    float *att_out;            /* (n_batch, n_head*hd) */
    float *hb, *hb2;           /* (n_batch, ffn) */
    float *proj;               /* (n_batch, dim) */
    /* prefill-only scratch, allocated on the first multi-token call (forks that only decode
     * never pay for it): */
    float *att;                /* (n_threads, att_rows, n_ctx) attention score rows */
    int64_t att_stride;        /* floats per thread in att: att_rows * n_ctx, where
                                  att_rows = min(n_batch, SKV_ATT_BLOCK) */
    float *gk, *gv;            /* (n_kv_head, n_ctx, hd) one layer's cache gathered to f32 */
    float *probs;              /* (n_head, n_ctx) last decode step's attention over each
                                  head's slots; in prefill, per-head `acc` sums */
    float *probs_win;          /* (n_head, n_ctx) per-head `win` sums in prefill */
    float *blk;                /* (n_threads, 2, SKV_KV_BLOCK, hd) decoded blocks */
    float *head_acc;           /* (n_layer, n_head, n_ctx) per-query-head accumulated attention
                                  by slot (= position: full policy only); NULL unless asked */
    float *head_last;          /* (n_layer, n_head, n_ctx) last decode step's attention */
    float *head_pre;           /* (n_layer, n_head, head_prefix) attention of queries < prefix */
    int32_t head_prefix;
    float *head_win;           /* (n_layer, n_head, n_ctx) attention of queries >= head_win_from */
    int64_t head_win_from;     /* INT64_MAX: no window statistics yet */
    /* SmallKV plan for the next decode step (NULL: ordinary attention), owned by the caller: */
    const uint8_t *plan_cls;   /* (n_layer, n_kv_head, n_ctx) SKV_SK_* class of every slot */
    const float *plan_marg;    /* (n_layer, n_head, n_ctx) weight of each marginal slot */
    int32_t plan_paper;        /* 1: unnormalised O_c + O_m; 0: mass-preserving */
    float *wconv;              /* (max_weight_elems) weight conversion scratch */
    void *pol_scratch;         /* policy selection scratch */
};

/* Set (or clear with NULLs) the SmallKV attention plan used by single-token decode steps. The
 * context must keep every token (full policy, f32 or bf16). */
skv_status skv_context_set_plan(skv_context *c, const uint8_t *cls, const float *marg, int paper);

/* Stop collecting per-head statistics and free them (SmallKV's large model after matching). */
void skv_context_drop_head_stats(skv_context *c);

/* CUDA contexts: compress to the policy's budgets at the current length (context.c). */
skv_status skv_context_gpu_compress(skv_context *c);
/* The model's GPU copy, uploaded on first use (gpu_glue.c). */
skv_status skv_model_gpu(skv_model *m, struct skv_gpu_model **out);
/* What the CUDA backend needs of a policy (gpu_glue.c). */
skv_gpu_policy skv_policy_gpu(const skv_policy_params *p, skv_policy_kind kind, int want_acc, int want_win,
                              int v_slow);

/* Allocate the prefill-only scratch (att, gk, gv, wconv) if not yet done. */
skv_status skv_context_prefill_scratch(skv_context *c);

#endif
