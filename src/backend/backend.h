/*
 * backend.h — the backend seam: one table of operations per place a context runs (CPU, CUDA).
 * The context (src/context/) owns what every backend shares — model, policy, positions — and
 * calls these; a backend owns its cache, its scratch and its kernels. Nothing here names a
 * policy or a technique: eviction arrives as an skv_evict_desc, reads as an skv_read_plan.
 *
 * Streams are (cache layer, KV head); a cache layer is a layer that appends KV (see
 * skv_model_layer_cache). A stream's slots hold kept tokens in any order with their positions.
 */
#ifndef SKV_BACKEND_H
#define SKV_BACKEND_H

#include "kv/plan.h"
#include "kv/policy.h"
#include "model/model.h"
#include "backend/codes.h"

typedef struct skv_backend_ops skv_backend_ops;

/* LCKV: prompt chunks of at most this many tokens (and at most the iterations) run token by
 * token instead of iterating (docs/techniques.md section 3: m + b = 9) */
#define SKV_LCKV_TOKENS 9

/* A context as every backend sees it: what the context layer owns (model, positions, policy,
 * statistics asked for) and the backend's own state `bs`. */
struct skv_context {
    skv_model *m;
    const skv_backend_ops *be;
    void *bs;                  /* the backend's state */
    int32_t n_ctx, n_batch, n_past, n_threads;
    int32_t n_layer;           /* cache layers */
    int32_t lckv_iters;        /* LCKV: group iterations of a prefill chunk */
    skv_policy_state pol;
    unsigned stats;            /* SKV_STAT_* collected (the policy's, or all with collect_stats) */
    int32_t head_stats;        /* per-query-head statistics kept (collect_head_stats) */
    int32_t head_prefix_len;   /* their prefix length (head_prefix, clamped to n_ctx) */
    int32_t head_win_from;     /* their window start (INT32_MAX: none) */
    int32_t v_slow;            /* CUDA: V in the slow tier */
    const skv_context *past;   /* read-only past (NULL: none); own positions start at past->n_past */
    float *sample_logits;      /* (n_vocab) skv_decode_sampled without device sampling */
    int32_t *sample_seen;      /* (sample_seen_cap) the sampler's distinct ids for device sampling */
    int64_t sample_seen_cap;
    int32_t n_seq;             /* sequences; seq_past[0] mirrors n_past */
    int32_t *seq_past;         /* (n_seq) positions of sequences 1.. (0 is n_past) */
};

/* Per-query-head statistics (collect_head_stats), by position, read in place: */
enum { SKV_HEAD_ACC = 0, SKV_HEAD_LAST = 1, SKV_HEAD_WIN = 2, SKV_HEAD_PREFIX = 3 };

/* One chunk's input: ids or input embeddings (n <= n_batch), at positions pos0.. */
typedef struct skv_fwd_in {
    const int32_t *ids;     /* (n) or NULL */
    const float *embd;      /* (n, dim) or NULL */
    int32_t n, pos0;
    int32_t last_chunk;     /* the call's last chunk (statistics of "the newest query") */
    int32_t layer0, layer1; /* run layers [layer0, layer1) only (0, 0: all); with layer0 > 0 the
                               input rows are the residual stream entering layer0 (embd), and
                               with layer1 < n_layer no logits or final hidden states come out */
} skv_fwd_in;

/* What a chunk returns (host memory; each may be NULL). */
typedef struct skv_fwd_out {
    float *logits;          /* (n or 1, n_vocab) */
    float *hidden;          /* (n or 1, dim) final hidden state before the final norm */
    float *hidden_normed;   /* (n or 1, dim) after it */
    int32_t all;            /* every row (else the last row only) */
    /* per-layer taps, every row of the chunk (CPU backend): the residual stream entering each
     * layer and its normalised attention input; layer l's rows start at l * tap_rows * dim */
    float *resid_in, *attn_in;
    int64_t tap_rows;
    /* after each layer of the chunk (CPU backend): layer_done(layer_arg, layer, tokens cached) */
    void (*layer_done)(void *arg, int32_t layer, int32_t n_cached);
    void *layer_arg;
} skv_fwd_out;


/* Sampling arguments a backend may run on the device (sample/sampler.h fills them). */
struct skv_sample_args;

struct skv_backend_ops {
    const char *name;
    /* Allocate c->bs for c (its params, policy and statistics set by the context). */
    skv_status (*init)(skv_context *c, const skv_context_params *p);
    void (*free)(skv_context *c);
    /* A multi-token call of n tokens starts (observation-window statistics reset). */
    void (*begin_call)(skv_context *c, int32_t n);
    skv_status (*forward)(skv_context *c, const skv_fwd_in *in, const skv_fwd_out *out);
    /* One decode step with the next id drawn on the backend. */
    skv_status (*decode_sampled)(skv_context *c, int32_t id, const struct skv_sample_args *a, int32_t *next);
    /* Evict every stream to the policy's budgets (c->pol.budget_now, set by the context). */
    skv_status (*compress)(skv_context *c);
    /* Per-step eviction after a single-token forward (NULL: the forward did it). */
    void (*step)(skv_context *c);
    skv_status (*truncate)(skv_context *c, int32_t n_past);
    /* dst (freshly initialised; src's model or one of its cache shape) takes src's cache and the
     * statistics dst collects. */
    skv_status (*copy)(skv_context *dst, const skv_context *src);
    void (*usage)(const skv_context *c, skv_kv_usage *u);
    int64_t (*stream_bytes)(const skv_context *c, int32_t layer, int32_t kv_head);
    /* Read a stream (its arrays malloc'd; skv_stream_io_free; rows 0: positions and statistics
     * only, no K/V), or write one into an empty context's stream. */
    skv_status (*stream_get)(const skv_context *c, int32_t layer, int32_t kv_head, int rows, skv_stream_io *s);
    skv_status (*stream_put)(skv_context *c, int32_t layer, int32_t kv_head, const skv_stream_io *s);
    /* Per-step reads (NULL plan: ordinary attention), read-only past (NULL: none). */
    skv_status (*set_plan)(skv_context *c, const skv_read_plan *plan);
    skv_status (*set_past)(skv_context *c, const skv_context *past);
    /* Per-query-head statistics (NULL: not on this backend): a row by kind (context.h's
     * SKV_HEAD_*), the window start, dropping them. */
    const float *(*head_row)(const skv_context *c, int kind, int32_t layer, int32_t head);
    skv_status (*set_head_window)(skv_context *c, int32_t from);
    void (*drop_head_stats)(skv_context *c);
    /* Several sequences (NULL: one only): a chunk of one sequence (logits of its last token
     * into logits when non-NULL); one step of sequences 0..n-1 at positions pos[i]; truncating
     * one; the weight bytes the backend holds. */
    skv_status (*seq_forward)(skv_context *c, int32_t seq, const int32_t *ids, int32_t n, int32_t pos0, float *logits);
    /* A multi-token call of n tokens of sequence seq from pos0 starts (its observation-window
     * statistics reset; NULL: none); evict sequence seq's streams to budget[cache layer] (NULL:
     * the backend's several-sequence contexts take no evicting policy). */
    void (*seq_begin_call)(skv_context *c, int32_t seq, int32_t n, int32_t pos0);
    skv_status (*seq_compress)(skv_context *c, int32_t seq, const int32_t *budget);
    /* bytes of the cache blocks sequence seq holds */
    int64_t (*seq_kv_bytes)(const skv_context *c, int32_t seq);
    /* (decode_batch: rows are sequences seqs[r], or 0..n-1 when seqs is NULL) */
    skv_status (*decode_batch)(skv_context *c, const int32_t *seqs, const int32_t *ids, const int32_t *pos, int32_t n,
                               float *logits, int32_t *next);
    skv_status (*seq_truncate)(skv_context *c, int32_t seq, int32_t n_past);
    /* the empty sequence dst takes a copy of sequence src's cache */
    skv_status (*seq_copy)(skv_context *c, int32_t dst, int32_t src);
    int64_t (*weight_bytes)(const skv_context *c);
    /* One decode step of n contexts of this backend and one model together, ids[i] into cs[i]
     * at its n_past (which the caller advances), logits (n, n_vocab) or NULL (NULL op: the
     * caller steps them one by one). */
    skv_status (*decode_multi)(skv_context *const *cs, int32_t n, const int32_t *ids, float *logits);
    /* Move every stream's K and V to a tier (NULL: not on this backend). */
    skv_status (*move_tier)(skv_context *c, skv_tier tier);
    /* Cache layers rebuilt from low-rank codes on the backend's device (backend/codes.h; NULL:
     * the host rebuilds and stream_put writes): the decoders' copy (codes_free frees it), one
     * layer's part into an empty context's sequence 0 at positions 0..n-1, then its n slots. */
    skv_status (*codes_upload)(const skv_codes_desc *d, void **dev);
    void (*codes_free)(void *dev);
    skv_status (*codes_layer)(skv_context *c, void *dev, int32_t layer, int part, const void *z, int z_bf16, int32_t n);
    skv_status (*codes_finish)(skv_context *c, int32_t n);
};

extern const skv_backend_ops skv_backend_cpu, skv_backend_cuda;
/* 1 when the CUDA backend can run here (built with it, a device answers). */
int skv_gpu_backend_available(void);
skv_status skv_gpu_backend_device_info(char *name, int name_len, int32_t *sms, int64_t *mem);
skv_status skv_gpu_backend_copy_bandwidth(int64_t bytes, double *bps);
skv_status skv_gpu_backend_h2d_bandwidth(int64_t bytes, double *bps);


#endif
