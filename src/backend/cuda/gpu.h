/*
 * gpu.h — the CUDA backend's C interface (internal). Weights live on the GPU in bf16 (norms and
 * biases in f32); activations in f32 with bf16 copies as matrix inputs; the KV cache in bf16,
 * one region per (layer, sequence, KV head) of n_ctx rows. Matrix products of more than 8
 * tokens go through cuBLAS; single tokens and small batches through the backend's own
 * bandwidth-bound GEMV; decode attention is split-K (flash decoding) over the cache.
 *
 * Built with `make CUDA=1` (SKV_CUDA defined, gpu.cu compiled by nvcc); otherwise gpu_stub.c
 * answers every call with SKV_ERR_UNSUPPORTED.
 */
#ifndef SKV_BACKEND_GPU_H
#define SKV_BACKEND_GPU_H

#include <stdint.h>

#include "slimkv.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A host matrix to upload: (rows, cols) row-major in f32, f16 or bf16. */
typedef struct skv_gpu_mat {
    const void *data;
    skv_dtype dtype;
    int64_t rows, cols;
} skv_gpu_mat;

typedef struct skv_gpu_layer_desc {
    const float *attn_norm, *ffn_norm;         /* (dim) */
    const float *bq, *bk, *bv, *bo;            /* NULL when absent */
    skv_gpu_mat wq, wk, wv, wo, w_gate, w_up, w_down;
} skv_gpu_layer_desc;

typedef struct skv_gpu_model_desc {
    int32_t n_layer, dim, n_head, n_kv_head, head_dim, ffn_dim, n_vocab;
    float rms_eps;
    const float *rope_inv_freq;                /* (head_dim / 2) */
    skv_gpu_mat tok_embed, lm_head;            /* lm_head.data == tok_embed.data when tied */
    const float *final_norm;
    const skv_gpu_layer_desc *layers;          /* (n_layer) */
} skv_gpu_model_desc;

typedef struct skv_gpu_model skv_gpu_model;
typedef struct skv_gpu_ctx skv_gpu_ctx;

/* 1 when built with CUDA and a device answers; else 0 with the reason in skv_last_error(). */
int skv_gpu_available(void);
skv_status skv_gpu_model_load(const skv_gpu_model_desc *d, skv_gpu_model **out);
void skv_gpu_model_free(skv_gpu_model *g);
int64_t skv_gpu_model_bytes(const skv_gpu_model *g);

/* A context for n_seq sequences of up to n_ctx tokens; prefill chunks of up to n_batch. */
skv_status skv_gpu_ctx_init(skv_gpu_model *g, int32_t n_ctx, int32_t n_batch, int32_t n_seq,
                            skv_gpu_ctx **out);
void skv_gpu_ctx_free(skv_gpu_ctx *c);
int64_t skv_gpu_ctx_kv_bytes(const skv_gpu_ctx *c, int32_t n_tokens);

/* n tokens of sequence seq at positions pos0 .. pos0+n-1 (n <= n_batch; the cache rows before
 * pos0 must be filled). logits (host, may be NULL): the last token's n_vocab, or all n rows. */
skv_status skv_gpu_forward(skv_gpu_ctx *c, int32_t seq, const int32_t *ids, int32_t n, int32_t pos0,
                           float *logits, int all);

/* One decode step of sequences 0..n-1, token ids[s] at position pos[s]. logits (host, may be
 * NULL): (n, n_vocab). next (host, may be NULL): the greedy next id of each, argmax on the GPU. */
skv_status skv_gpu_decode_batch(skv_gpu_ctx *c, const int32_t *ids, const int32_t *pos, int32_t n,
                                float *logits, int32_t *next);

/* Copy the first n_tokens cache rows of every layer and KV head of sequence 0 from src to dst
 * (same model; dst at least as long). */
skv_status skv_gpu_ctx_copy(skv_gpu_ctx *dst, const skv_gpu_ctx *src, int32_t n_tokens);

/* Wait for the device; return the first asynchronous error. */
skv_status skv_gpu_sync(skv_gpu_ctx *c);

/* Timing with device events around the next calls: start, then stop returns milliseconds. */
void skv_gpu_timer_start(skv_gpu_ctx *c);
double skv_gpu_timer_stop(skv_gpu_ctx *c);

/* Device facts for reports: name, SM count, memory bytes; measured device-to-device copy
 * bandwidth (bytes read + written per second) over `bytes`. */
skv_status skv_gpu_device_info(char *name, int name_len, int *sms, int64_t *mem_bytes);
skv_status skv_gpu_copy_bandwidth(int64_t bytes, double *bytes_per_s);

#ifdef __cplusplus
}
#endif
#endif
