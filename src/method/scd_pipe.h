/*
 * scd_pipe.h — one SCD request as frames (net/frame.h): the producer side prefills its model
 * and emits HELLO, IDS, one or more LAYER frames per layer and END; the consumer side checks
 * every frame against the request and the models (order, layer, part, encoding, shape, each
 * layer exactly once), rebuilds each layer's rows as its frames arrive, and only after a
 * complete END builds its context. The same code runs in one process (scd-eval) and across
 * processes (scd-producer, scd-consumer), so both give the same cache bit for bit.
 *
 * Methods (what LAYER frames carry per layer, n = prompt length - 1 rows each):
 *   oracle     nothing: the consumer prefills the ids itself
 *   raw        the producer's K (after RoPE, as cached) and V rows, bf16
 *   kivi4      the same in KIVI 4-bit blocks (kv/quant.c: keys per channel, values per token)
 *   recompute  raw rows, except a span of rc_k layers from rc_start: there the producer's
 *              residual stream entering rc_start (bf16), which the consumer runs its own layers
 *              rc_start .. rc_start + rc_k - 1 over
 *   reuse      SCD reuse codes of K (de-RoPE'd) and V on every layer
 *   scd        reuse codes, and on the patch layers the code of the normalised attention input
 * The consumer then decodes the last prompt token as its first step (techniques.md: "First
 * token", default).
 */
#ifndef SKV_METHOD_SCD_PIPE_H
#define SKV_METHOD_SCD_PIPE_H

#include "slimkv.h"
#include "net/frame.h"

enum { SKV_SCD_ORACLE = 0, SKV_SCD_RAW, SKV_SCD_KIVI4, SKV_SCD_RECOMPUTE, SKV_SCD_REUSE, SKV_SCD_FULL, SKV_SCD_METHODS };
#define SKV_SCD_MAX_LAYERS 256

typedef struct skv_scd_req {
    int32_t method;
    int32_t code_enc;                     /* SKV_ENC_BF16 (default) or SKV_ENC_I8ROW */
    uint8_t patch[SKV_SCD_MAX_LAYERS];    /* scd: 1 on patch layers */
    int32_t rc_start, rc_k;               /* recompute span */
    double t_request;                     /* skv_time_now() when the request reached the producer */
} skv_scd_req;

const char *skv_scd_method_name(int m);
int skv_scd_method_parse(const char *name); /* -1 if unknown */

/* Where the producer's frames go (a socket, or a consumer in the same process). */
typedef skv_status (*skv_scd_emit)(void *arg, const uint8_t *frame, size_t len);

typedef struct skv_scd_prod_stats {
    double t_prefill, t_encode;  /* seconds */
    uint64_t bytes;              /* every frame's bytes */
    uint64_t layer_bytes;        /* LAYER payloads only */
    int32_t frames;
} skv_scd_prod_stats;

/* Prefill ids[0 .. n_ids - 2] on the producer model (nothing for oracle), emit the request's
 * frames. maps may be NULL for the baselines. */
skv_status skv_scd_produce(skv_model *prod, const skv_scd_maps *maps, const int32_t *ids, int32_t n_ids,
                           const skv_scd_req *req, skv_scd_emit emit, void *arg, skv_scd_prod_stats *st);

/* The same from a producer context that already prefilled ids[0 .. n_ids - 2] (full cache),
 * with its per-layer taps (skv_batch attn_in for scd, resid_in for recompute; else NULL):
 * one prefill serves every method. stats->t_prefill is kept as the caller set it. */
skv_status skv_scd_produce_ctx(const skv_context *pc, const float *attn_in, const float *resid_in,
                               const skv_scd_maps *maps, const int32_t *ids, int32_t n_ids, const skv_scd_req *req,
                               skv_scd_emit emit, void *arg, skv_scd_prod_stats *st);

/* skv_scd_produce streamed: HELLO and IDS leave before the prefill, which runs in one chunk
 * and queues each layer's frames as soon as that layer is cached (skv_batch.layer_done); a
 * sender thread emits them while the next layers compute. The same frames, in the same order.
 * stats: t_prefill excludes the encoding done between layers (t_encode). */
skv_status skv_scd_produce_stream(skv_model *prod, const skv_scd_maps *maps, const int32_t *ids, int32_t n_ids,
                                  const skv_scd_req *req, skv_scd_emit emit, void *arg, skv_scd_prod_stats *st);

/* The frames of a request as skv_scd_produce would send them, with random LAYER payloads
 * (codes or rows of variance 1; methods oracle, raw, reuse, scd) and no producer run: the
 * consumer's side timed at shapes where no producer model or maps exist (scd-bench). */
skv_status skv_scd_produce_synth(const skv_model *m, const skv_scd_maps *maps, const int32_t *ids, int32_t n_ids,
                                 const skv_scd_req *req, uint64_t seed, skv_scd_emit emit, void *arg,
                                 skv_scd_prod_stats *st);

typedef struct skv_scd_consumer skv_scd_consumer;
/* cp: the consumer context's parameters (n_ctx at least the prompt). */
skv_status skv_scd_consumer_init(skv_model *cons, const skv_scd_maps *maps, skv_context_params cp,
                                 skv_scd_consumer **out);
void skv_scd_consumer_free(skv_scd_consumer *c);
/* One checked frame (skv_frame_check). *done becomes 1 after END, when the context is built.
 * Any error leaves the consumer failed: no context is handed out. */
skv_status skv_scd_consumer_feed(skv_scd_consumer *c, const skv_frame *f, int *done);
/* After done: the built context (owned by the consumer), the request, the prompt's ids. */
skv_context *skv_scd_consumer_context(skv_scd_consumer *c);
const skv_scd_req *skv_scd_consumer_req(const skv_scd_consumer *c);
const int32_t *skv_scd_consumer_ids(const skv_scd_consumer *c, int32_t *n_ids);
double skv_scd_consumer_build_seconds(const skv_scd_consumer *c); /* decode + fill (+ prefill) */

#endif
