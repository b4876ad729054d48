/*
 * gpu.h — the CUDA backend's C interface (internal). Weights live on the GPU in bf16 (norms and
 * biases in f32); activations in f32 with bf16 copies as matrix inputs. Matrix products of more
 * than 8 tokens go through cuBLAS; single tokens and small batches through the backend's own
 * bandwidth-bound GEMV; decode attention is split-K (flash decoding) over the cache.
 *
 * The KV cache is paged: blocks of SKV_GPU_BLOCK rows (K and V, bf16) from one pool per
 * context, a block table per stream (layer, sequence, KV head) and per-slot positions and
 * statistics, as the CPU cache (kv/cache.h): slots in arbitrary order, keys stored after RoPE,
 * new tokens appended. Policies evict on the device: compress after a multi-token call (top-k
 * selection per stream, stable compaction), one eviction per stream per decode step
 * (window, h2o). The V pool can live in pinned host memory (the slow tier).
 *
 * Built with `make CUDA=1` (SKV_CUDA defined, gpu.cu compiled by nvcc); otherwise gpu_stub.c
 * answers every call with SKV_ERR_UNSUPPORTED.
 */
#ifndef SKV_BACKEND_GPU_H
#define SKV_BACKEND_GPU_H

#include <stdint.h>

#include "slimkv.h"
#include "sample/sampler.h"
#include "kv/evict.h"
#include "kv/plan.h"
#include "backend/codes.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A host matrix to upload: (rows, cols) row-major in f32, f16 or bf16 (uploaded as bf16), or in
 * a GGUF block-quantized type (rows of skv_dtype_row_bytes; kept in that format on the device,
 * with the other weights of its q|k|v or gate|up stack: gpu_qweights.cuh). */
typedef struct skv_gpu_mat {
    const void *data;
    skv_dtype dtype;
    int64_t rows, cols;
} skv_gpu_mat;

typedef struct skv_gpu_layer_desc {
    int32_t kv_src;                            /* LCKV t(l): the layer whose KV this one reads
                                                  (l: its own; else wk, wv, bk, bv absent) */
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

#define SKV_GPU_BLOCK 64 /* cache rows per block (the flash kernel's key tile) */

/* What the cache does besides keeping everything: an eviction rule (kv/evict.h, the one the CPU
 * executes too) and the per-slot statistics to collect. */
typedef struct skv_gpu_policy {
    skv_evict_desc ev;       /* ev.evicts 0: keep everything */
    int32_t want_acc;        /* accumulate every query's attention per slot (group-summed) */
    int32_t want_win;        /* accumulate the observation window's attention per slot */
    int32_t want_last;       /* the newest query's attention per slot */
    int32_t v_slow;          /* V blocks in pinned host memory (read over PCIe) */
    /* KCache (vtop.on, kv/plan.h): K in the paged pool; every V row written through to pinned
     * host memory (by slot); on the device only a ring of the newest rows per stream (cache
     * layers >= vtop.fast_layers; below, every row) and one sequence's V while it prefills.
     * Each decode step scores all keys, selects the top-N slow rows on the device and reads
     * them over PCIe (zero-copy) inside the attention kernel. No eviction, forks or imports. */
    skv_vtop_rule vtop;
    int32_t lckv_iters;      /* LCKV models: group iterations of a prefill chunk (0: 9) */
    int32_t kv_bits;         /* 8 or 4: a KIVI int8/int4 cache (kv/quant.c's format, gpu_kivi.cu);
                                0: bf16. Only without eviction, statistics, v_slow, KCache, LCKV */
} skv_gpu_policy;

/* A next-token choice on the device, as skv_sampler_sample makes it on the host. */
typedef struct skv_sample_args skv_gpu_sample;

/* 1 when built with CUDA and a device answers; else 0 with the reason in skv_last_error(). */
int skv_gpu_available(void);
/* The model's device copy, uploaded on first use (cuda_backend.c). */
skv_status skv_model_gpu(skv_model *m, skv_gpu_model **out);
skv_status skv_gpu_model_load(const skv_gpu_model_desc *d, skv_gpu_model **out);
void skv_gpu_model_free(skv_gpu_model *g);
int64_t skv_gpu_model_bytes(const skv_gpu_model *g);

/* A context for n_seq sequences of up to n_ctx tokens each; prefill chunks of up to n_batch.
 * pol NULL: keep everything, no statistics. The block pool holds every stream's n_ctx rows. */
skv_status skv_gpu_ctx_init(skv_gpu_model *g, int32_t n_ctx, int32_t n_batch, int32_t n_seq,
                            const skv_gpu_policy *pol, skv_gpu_ctx **out);
void skv_gpu_ctx_free(skv_gpu_ctx *c);

/* Streams belong to cache layers (the layers that keep KV: all of them for standard models); a
 * `layer` argument below is a cache layer. */

/* Cache use now: bytes of the blocks held (K and V; in slow_bytes those of a slow V pool) and
 * the slots (kept tokens) summed over streams. */
void skv_gpu_kv_usage(const skv_gpu_ctx *c, int64_t *bytes, int64_t *slow_bytes, int64_t *slots);
/* Cache blocks (SKV_GPU_BLOCK slots of K and V each) held by sequence seq's streams, or -1. */
int64_t skv_gpu_seq_blocks(const skv_gpu_ctx *c, int32_t seq);

/* n tokens of sequence seq at positions pos0 .. pos0+n-1 (n <= n_batch; pos0 must be the
 * sequence's next position), given as ids or as input embeddings (host, (n, dim) f32). Outputs
 * (host, each may be NULL): logits (the last token's n_vocab, or all n), the final hidden state
 * before and after the final norm ((1 or n, dim)). */
skv_status skv_gpu_forward(skv_gpu_ctx *c, int32_t seq, const int32_t *ids, const float *embd, int32_t n,
                           int32_t pos0, float *logits, float *hidden, float *hidden_normed, int all);

/* Start a multi-token call of sequence seq whose observation window begins at win_from:
 * the window statistics are reset (no-op without want_win). */
void skv_gpu_begin_call(skv_gpu_ctx *c, int32_t seq, int32_t win_from);

/* One decode step of sequences 0..n-1, token ids[s] at position pos[s] (each its sequence's
 * next). logits (host, may be NULL): (n, n_vocab). next (host, may be NULL): the next id of
 * each: argmax on the GPU, or drawn by sample[s] when sample is not NULL. */
skv_status skv_gpu_decode_batch(skv_gpu_ctx *c, const int32_t *ids, const int32_t *pos, int32_t n,
                                float *logits, int32_t *next, const skv_gpu_sample *sample);
/* The same for the n distinct sequences seqs[0..n) in that order (row r: sequence seqs[r]);
 * seqs NULL: 0..n-1 (skv_gpu_decode_batch). */
skv_status skv_gpu_decode_seqs(skv_gpu_ctx *c, const int32_t *seqs, const int32_t *ids, const int32_t *pos, int32_t n,
                               float *logits, int32_t *next, const skv_gpu_sample *sample);

/* Evict: every stream of layer l of sequence seq keeps min(n, budget[l]) slots chosen by the
 * policy; window and h2o then hold each stream at budget[l] per decode step. */
skv_status skv_gpu_compress(skv_gpu_ctx *c, int32_t seq, const int32_t *budget);
/* Forget the tokens at positions >= from of sequence seq (0: empty it). */
skv_status skv_gpu_truncate(skv_gpu_ctx *c, int32_t seq, int32_t from);

/* Copy sequence 0 (slots, positions, statistics the destination collects, the next position)
 * from src into sequence 0 of dst (a model of the same cache shape; dst at least as long). */
skv_status skv_gpu_ctx_copy(skv_gpu_ctx *dst, const skv_gpu_ctx *src);

/* One stream's state for tests and tools: its slot count, and (host arrays of n_ctx, each may
 * be NULL) positions, accumulated and window attention (zeros when not collected), K and V
 * rows as f32 (n_ctx * head_dim). */
skv_status skv_gpu_stream_read(skv_gpu_ctx *c, int32_t layer, int32_t seq, int32_t kv_head, int32_t *n,
                               int32_t *pos, float *acc, float *win, float *last, float *k, float *v);
/* The batch-invariant decode mode (on: 1; default 0; gpu_binv.cuh): each decode step's logits
 * of a sequence are the same bits whatever the batch's size and other rows (batch 1 included),
 * at some cost in throughput; prefill keeps its kernels. */
void skv_gpu_set_batch_invariant(skv_gpu_ctx *c, int on);
/* Set sequence seq's next position (after its streams were written). */
skv_status skv_gpu_set_next(skv_gpu_ctx *c, int32_t seq, int32_t pos);
/* Fill an empty stream: n slots with positions, statistics (each may be NULL: zeros) and K, V
 * rows (f32, n * head_dim; stored as bf16). */
skv_status skv_gpu_stream_write(skv_gpu_ctx *c, int32_t layer, int32_t seq, int32_t kv_head, int32_t n,
                                const int32_t *pos, const float *acc, const float *win, const float *last,
                                const float *k, const float *v);

/* The slow tier's asynchronous fetch (what KCache reads per step): V rows of the given slots of
 * one stream gathered into dst (device, n * head_dim bf16) on the context's copy stream; the
 * call returns at once, skv_gpu_fetch_wait waits. rows (host) is copied before return. */
skv_status skv_gpu_fetch_v(skv_gpu_ctx *c, int32_t layer, int32_t seq, int32_t kv_head, const int32_t *rows,
                           int32_t n, void *dst);
skv_status skv_gpu_fetch_wait(skv_gpu_ctx *c);
/* Device scratch for tests of the fetch: alloc, download, free. */
skv_status skv_gpu_scratch(int64_t bytes, void **dev);
skv_status skv_gpu_download(void *host, const void *dev, int64_t bytes);
void skv_gpu_scratch_free(void *dev);


/* Tests of the stored-format weights: y (n, rows) = W x through the forward pass's path for n
 * rows (n <= 8: the dequantising GEMV; more: dequantised bf16 tiles + cuBLAS), x (n, cols) f32
 * rounded to bf16 first as the forward pass's matrix inputs are. deq (host, may be NULL): the
 * device's dequantisation of W (rows, cols) as the tiles hold it (bf16, widened to f32). */
skv_status skv_gpu_qmat_test(const skv_gpu_mat *w, const float *x, int n, float *y, float *deq);

/* The KIVI cache's bits (8, 4), or 0 for the bf16 cache; bytes of one block of SKV_GPU_BLOCK
 * slots (K and V) in that format. */
int skv_gpu_kv_bits(const skv_gpu_ctx *c);
int64_t skv_gpu_kv_block_bytes(int hd, int bits);

/* Test of the KIVI decode attention: n keys k, v (n, hd) f32 stored as int8/int4 (bits) groups
 * of 32 (the last partial group f32, as the cache keeps it) by the cache's quantiser, then G query
 * heads q (G, hd) attend over them through the decode kernel in n_split splits (merged here):
 * out (G, hd); kdeq, vdeq (may be NULL): the stored rows dequantised (n, hd). */
skv_status skv_gpu_kivi_attn_test(int bits, int hd, int G, int n, int n_split, int units, const float *q,
                                  const float *k, const float *v, float *out, float *kdeq, float *vdeq);

/* Timing with device events around the next calls: start, then stop returns milliseconds. */
void skv_gpu_timer_start(skv_gpu_ctx *c);
double skv_gpu_timer_stop(skv_gpu_ctx *c);

/* Device facts for reports: name, SM count, memory bytes; measured device-to-device copy
 * bandwidth (bytes read + written per second) over `bytes`. */
skv_status skv_gpu_device_info(char *name, int name_len, int *sms, int64_t *mem_bytes);
skv_status skv_gpu_copy_bandwidth(int64_t bytes, double *bytes_per_s);
/* Measured host-to-device copy bandwidth from pinned host memory (bytes per second). */
skv_status skv_gpu_h2d_bandwidth(int64_t bytes, double *bytes_per_s);

/* Copy sequence src's cache (slots, positions, statistics; KCache: its host V rows too) into
 * the empty sequence dst of the same context. */
skv_status skv_gpu_seq_copy(skv_gpu_ctx *c, int32_t dst, int32_t src);
/* KCache counters since the context was created: decode steps that read slow rows, the rows
 * read (summed over streams), and the slow rows now in pinned host memory only. */
void skv_gpu_kc_counts(const skv_gpu_ctx *c, int64_t *steps, int64_t *rows, int64_t *slow_rows);
/* KCache, for tests: what the last decode step did in one stream of the last layer (row `row`
 * of that step, which decoded sequences 0..): its slots n (the step's token included) and slow
 * slots ns; the group's probabilities (G rows of n, host floats: exp(score - lse) from the
 * device's scores); the slow slots read (sel, ascending, up to n) and their count; each query
 * head's weight factor (inv, G). */
skv_status skv_gpu_kc_last(skv_gpu_ctx *c, int32_t row, int32_t kv_head, int32_t *n, int32_t *ns, float *probs,
                           int32_t *sel, int32_t *nsel, float *inv);

/* SCD's consumer rebuild (docs/techniques.md section 5; gpu_scd.cu): the maps' decoders and
 * aligners on the device (f32), then one cache layer of sequence 0 at a time from its codes:
 * K = RoPE(z dec + mub) and V = z dec + mub (reuse), or h = z skip + b2 + silu(z w1 + b1) w2
 * projected by the model's own k/v weights, K RoPE'd (patch); rows go to slots 0..n-1 at
 * positions 0..n-1 of a context whose sequence 0 is empty. */
typedef struct skv_gpu_scd skv_gpu_scd;
skv_status skv_gpu_scd_upload(const skv_codes_desc *d, skv_gpu_scd **out);
void skv_gpu_scd_free(skv_gpu_scd *s);
/* part SKV_CODES_K, _V or _H of layer `layer`, codes z (host, (n, r): f32, or bf16 bits when
 * z_bf16, widened on the device) */
skv_status skv_gpu_scd_layer(skv_gpu_ctx *c, skv_gpu_scd *s, int32_t layer, int part, const void *z, int z_bf16, int32_t n);
/* after every layer's parts: sequence 0 holds n slots (positions 0..n-1) in every stream */
skv_status skv_gpu_scd_finish(skv_gpu_ctx *c, int32_t n);

#ifdef __cplusplus
}
#endif
#endif
