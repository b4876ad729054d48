/*
 * cpu.h — the CPU backend's state for one context: the block KV cache (kv/cache.h), the
 * statistics it collects, a read plan, a read-only past, and float32 scratch. Internal to
 * src/backend/cpu (cpu_backend.c: the table; cpu_forward.c: the forward pass; cpu_stats.c:
 * statistics).
 */
#ifndef SKV_BACKEND_CPU_H
#define SKV_BACKEND_CPU_H

#include "backend/backend.h"

#include <math.h>
#include <omp.h>
#include <stdatomic.h>

/* query rows per causal block of prefill attention */
#define SKV_ATT_BLOCK 64

/* Per-thread scratch and counters of the V top-N reads (plan.vtop). */
typedef struct skv_cpu_vtop {
    float *rank;               /* (n_ctx) the group's score of each slow slot */
    int32_t *idx, *sel;        /* (n_ctx) selection scratch; the slots read, ascending */
    uint8_t *mark;             /* (n_ctx) union of the heads' sets */
    uint8_t *rows;             /* (n_ctx, hd) f32 rows read from the store */
    uint8_t *zs;               /* the store's read scratch */
    skv_vstore_stats ct;
} skv_cpu_vtop;

/* The decode pass's barrier (cpu_sync.c): spins briefly, then sleeps on a futex. */
typedef struct skv_cpu_bar {
    atomic_int count;          /* threads arrived in this generation */
    atomic_uint gen;           /* generation, advanced by the last thread to arrive */
    atomic_int sleepers;       /* threads asleep on gen */
    atomic_int ok;             /* share of recent waits a spin would have covered (of 1024) */
    atomic_int wake_ns;        /* recent sleepers' time from release to running again */
    atomic_llong release_ns;   /* when the last release happened */
} skv_cpu_bar;
void skv_cpu_bar_init(skv_cpu_bar *b);
/* every one of the n threads of the enclosing team calls it; returns when all have */
void skv_cpu_bar_wait(skv_cpu_bar *b, int n);

typedef struct skv_cpu {
    const skv_model *m;
    int32_t n_ctx, n_batch, n_threads;
    skv_cache cache;           /* K (after RoPE) and V of the kept tokens, per cache layer */
    int32_t want_acc, want_win, want_last; /* per-slot statistics collected */
    int32_t win_from;          /* queries at positions >= win_from count for `win` */
    skv_read_plan plan;        /* plan.cls NULL: ordinary attention */
    skv_cpu_vtop *vt;          /* (n_threads) with plan.vtop.on */
    int64_t vt_steps;          /* decode steps that read the slow store */
    size_t vt_row_bytes;       /* bytes of one V row as the store returns it */
    const struct skv_cpu *past;/* read-only past (its streams come before ours), or NULL */
    /* scratch for up to n_batch tokens */
    float *x;                  /* (n_batch, dim) residual stream */
    float *xb;                 /* (n_batch, dim) normed input */
    float *q;                  /* (n_batch, n_head*hd) */
    float *k, *v;              /* (n_batch, n_kv_head*hd) */
    float *att_out;            /* (n_batch, n_head*hd) */
    float *hb, *hb2;           /* (n_batch, ffn) */
    float *proj;               /* (n_batch, dim) */
    /* prefill-only scratch, allocated on the first multi-token call: */
    float *att;                /* (n_threads, att_rows, n_ctx) attention score rows */
    int64_t att_stride;        /* floats per thread in att */
    float *gk, *gv;            /* (n_kv_head, n_ctx, hd) one layer's cache gathered to f32 */
    float *probs;              /* (n_head, n_ctx) last decode step's attention over each head's
                                  slots; in prefill, per-head `acc` sums */
    float *probs_win;          /* (n_head, n_ctx) per-head `win` sums in prefill */
    float *probs_last;         /* (n_head, n_ctx) the call's last query in prefill */
    float *blk;                /* (n_threads, 2, SKV_KV_BLOCK, hd) decoded blocks */
    /* per-query-head statistics by position (full policy only); NULL unless asked */
    float *head_acc;           /* (n_layer, n_head, n_ctx) every query */
    float *head_last;          /* (n_layer, n_head, n_ctx) the last decode step's query */
    float *head_pre;           /* (n_layer, n_head, head_prefix) queries < head_prefix */
    int32_t head_prefix;
    float *head_win;           /* (n_layer, n_head, n_ctx) queries >= head_win_from */
    int64_t head_win_from;     /* INT64_MAX: no window statistics yet */
    float *wconv;              /* (max_weight_elems) weight conversion scratch */
    /* LCKV (the model has a group iterated in prefill): chunk K/V of every cache layer, two sets
     * (the running pass's, the previous iteration's), and the group's input rows */
    float *lk;                 /* (2, n_cache_layers, 2, n_batch, n_kv_head*hd) or NULL */
    int lk_cur;                /* the running pass's set */
    float *x0;                 /* (n_batch, dim) */
    int32_t iters;             /* group iterations of a chunk */
    /* a decode step's activations as the weights' dot products read them (wfmt.h): the normed
     * input, the attention output and the FFN hidden vector, each over its own scratch */
    uint8_t *actbuf;           /* 3 x act_bytes */
    size_t act_bytes;
    skv_act ax, ao, ah;
    void *pol_scratch;         /* policy selection scratch */
    skv_cpu_bar bar;           /* forward_token's barrier */
} skv_cpu;

/* cpu_forward.c: one chunk (the context's positions advance in the caller) */
skv_status skv_cpu_forward(skv_context *ctx, const skv_fwd_in *in, const skv_fwd_out *out);
/* the single-token steps cpu_multi.c shares: input rows; Gemma 3's q/k norms of n rows; one
 * token's K/V into cache layer cl; decode attention of query heads [h0, h0 + nh) of KV group g
 * (RoPE of the queries included); x += rmsnorm(proj) with weight w; the V store before a step */
void skv_cpu_embed_rows(skv_cpu *c, const skv_fwd_in *in);
void skv_cpu_qk_norms(skv_cpu *c, const skv_layer *ly, int64_t n);
skv_status skv_cpu_append_kv(skv_cpu *c, int32_t cl, int64_t pos, const float *k, const float *v);
void skv_cpu_attend_heads(skv_cpu *c, int32_t l, int32_t cl, int32_t g, int32_t h0, int32_t nh, const float *cs,
                          const float *sn, int64_t qp, float scale);
void skv_cpu_post_norm_add(skv_cpu *c, const float *w);
skv_status skv_cpu_vtop_before_step(skv_cpu *c);
/* cpu_multi.c: one decode step of n CPU contexts of one model, ids[i] into cs[i] at its
 * n_past, logits (n, n_vocab) or NULL; each weight row is read once for all n */
skv_status skv_cpu_decode_multi(skv_context *const *cs, int32_t n, const int32_t *ids, float *logits);

/* 1/sqrt(head_dim), or the model's own query scale */
static inline float skv_cpu_att_scale(const skv_model *m) {
    return m->cfg.attn_scale > 0 ? m->cfg.attn_scale : 1.0f / sqrtf((float)m->cfg.info.head_dim);
}

/* Rows [r0, r1) of a matrix, split evenly over the team of the enclosing parallel region. */
static inline void skv_cpu_team_rows(int64_t rows, int64_t *r0, int64_t *r1) {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    *r0 = rows * t / nt;
    *r1 = rows * (t + 1) / nt;
}
skv_status skv_cpu_prefill_scratch(skv_cpu *c);
void skv_cpu_vtop_free(skv_cpu *c);

/* cpu_stats.c: fold one layer's per-query-head prefill sums into the streams; a decode step's
 * probabilities into the per-slot and per-head statistics */
void skv_cpu_fold_prefill_stats(skv_cpu *c, int32_t cl, int use_win, int use_last);
void skv_cpu_decode_head_stats(skv_cpu *c, int32_t l, int32_t cl, int64_t pos, int32_t h);
void skv_cpu_decode_stream_stats(skv_cpu *c, int32_t cl, int32_t g);
skv_status skv_cpu_head_stats_alloc(skv_cpu *c, int32_t head_prefix);
void skv_cpu_head_stats_free(skv_cpu *c);
skv_status skv_cpu_head_stats_copy(skv_cpu *d, const skv_cpu *s);

#endif
