/*
 * gpu_ctx.cuh — the CUDA context's structure, shared by gpu.cu (forward), gpu_cache.cu (block
 * pool, policies, copies) and gpu_sample.cu (sampling). Internal to src/backend/cuda.
 *
 * Streams: sid = (cache layer * n_seq + seq) * KVH + g (cache layers: the layers keeping KV). Slot s of stream sid lives in row
 * bt[sid * MB + s / BLK] * BLK + s % BLK of the K and V pools (rows of hd bf16).
 */
#ifndef SKV_GPU_CTX_CUH
#define SKV_GPU_CTX_CUH

#include "backend/cuda/gpu_common.cuh"

#define BLK SKV_GPU_BLOCK
#define KC_MAX_CHUNKS 8

/* the fused decode kernels (gpu_fused.cuh) at 1..3 rows, by part: RMSNorm in the GEMV prologue
 * (and SwiGLU in gate/up's epilogue); RoPE + cache store in the qkv epilogue (with FUSE_NORM);
 * the attention with its split merge (every batch size); o and down with the weights loaded
 * before the wait */
enum { FUSE_NORM = 1, FUSE_ROPE = 2, FUSE_ATT = 4, FUSE_PLAIN = 8, FUSE_ALL = 15 };
/* the default: none. On the H200 (bench/cuda/issue16-fused-h200) norm + rope + plain decoded
 * Llama-3-8B at 4k in 305.83 ms per 64 tokens against 306.72 / 303.89 with the separate kernels
 * (no gain beyond run-to-run spread), and the fused attention was slower (311.51 at 4k). */
#define FUSE_DEFAULT 0


/* KCache's profiling variants (SKV_KC_PROFILE, by name in gpu_kc_profile): KCP_SCORES ..
 * KCP_NODSC leave stages out (wrong outputs, timing by differences); the others are whole
 * alternatives with right outputs. */
enum kc_variant {
    KCP_DEFAULT, KCP_SCORES, KCP_SELECT, KCP_FAST, KCP_NODSC, KCP_CHUNKS2, KCP_OLDSCORES, KCP_CHUNKS4,
    KCP_PREVSCORES, KCP_PREVSELECT, KCP_PREV, KCP_FIN8, KCP_DIRECT, KCP_G4, KCP_G16, KCP_G32, KCP_N
};

struct skv_gpu_ctx {
    skv_gpu_model *g;
    skv_gpu_policy pol;
    int32_t n_ctx, n_batch, n_seq, rows_max, max_split;
    int32_t n_streams, mb;  /* streams (L * n_seq * KVH), blocks per stream at most */
    cudaStream_t st, cst;   /* compute; copies of the slow tier */
    cublasHandle_t cb;
    /* paged cache */
    bf16 *kpool, *vpool;    /* (n_blocks, BLK, hd); vpool is mapped pinned host memory when v_slow */
    bf16 *vpool_host;       /* the host address of a slow vpool */
    int32_t n_blocks;
    int32_t *bt;            /* device (n_streams, mb) block ids */
    int32_t *slen;          /* device (n_streams) slots */
    int32_t *spos;          /* device (n_streams, n_ctx) position of each slot */
    float *sacc, *swin, *slast; /* device (n_streams, n_ctx) statistics, or NULL */
    int32_t *bud;           /* device (n_seq, L) per-step budget (0: no eviction) */
    int32_t *cbud;          /* device (L) budgets of the compress in progress */
    int32_t *win_from_h;    /* host (n_seq) first position of the observation window */
    int32_t *h_bt, *h_nb, *h_n; /* host mirrors: block table, blocks held, slots per stream */
    int32_t *h_free, n_free;    /* free block ids */
    int32_t *h_bud, *h_next;    /* (n_seq, L) budgets; (n_seq) next position per sequence */
    int bt_dirty;
    /* activations */
    float *x, *qkv, *q, *gu, *logits; /* qkv (R, QD + 2 KD), q (R, QD), gu (R, 2 ffn) */
    float *x0;              /* (R, dim) the input of an LCKV group (NULL without one) */
    int32_t iters;          /* LCKV: group iterations of a prefill chunk */
    bf16 *xb, *qb, *att, *h;
    bf16 *qtile;            /* (g->qtile) prefill dequantisation tile of stored-format weights */
    float *cosr, *sinr;     /* (n_ctx, hd/2) */
    float *part_o, *part_m, *part_l;
    float *lse;             /* (R, H) log-sum-exp of each query row's attention (stats) */
    float *dsc;             /* (n_seq, H, n_ctx) decode scores (h2o statistics) or NULL */
    int32_t *ids_d, *pos_d, *seq_d, *next_d;
    int32_t *stage;         /* pinned (3, rows_max): ids, pos, seq for the device */
    unsigned long long *argkey; /* (rows_max) greedy argmax keys */
    /* sampling */
    float *prob;            /* (R, V) */
    void *samp_d, *samp_h;  /* device / pinned per-row sampling arguments */
    int32_t *seen_d;        /* (R, n_ctx) */
    int32_t *seen_h;        /* pinned (R, n_ctx) */
    void *cublas_ws;
    int sms, use_graphs;
    /* decode switches, from the environment at context creation (gpu.cu): programmatic
     * dependent launch (SKV_CUDA_PDL, default 1), the tensor-core GEMV with the SwiGLU fused for
     * 4..8 rows (SKV_CUDA_GEMV: 1 default; 0 the one-warp-per-row GEMV and a separate SwiGLU),
     * waves of attention splits (SKV_CUDA_ATT_WAVES, default 4), the per-stage profile
     * (SKV_CUDA_PROF=N: eager launches timed with events, printed to stderr every N steps), the
     * fused decode kernels of gpu_fused.cuh (SKV_CUDA_FUSE, a mask of FUSE_*: FUSE_DEFAULT, 0 the
     * separate kernels) */
    int pdl, gemv_tc, att_waves, prof, prof_on; /* prof_on: this step is profiled */
    /* the batch-invariant decode mode (gpu_binv.cuh; skv_gpu_set_batch_invariant): set, on in
     * the decode step being built, its attention splits' target */
    int binv, binv_on, bi_target;
    int fuse;               /* FUSE_* */
    int att_minlen;         /* keys per split at least, fused attention (SKV_CUDA_ATT_MINLEN, default 64 as
                               the separate kernel) */
    int32_t *att_cnt;       /* device (rows_max, KVH) finished splits per row and KV head (fused merge) */
    int fa_warps;           /* warps (16 query rows each) per prefill flash block: SKV_CUDA_FA_WARPS, 4 or 8 */
    struct gpu_prof *pf;
    cudaGraphExec_t *graph; /* (2 * (n_seq + 1)) decode step of n rows, greedy / sampled */
    cudaEvent_t e0, e1;
    int32_t *fetch_rows;    /* device (n_ctx) */
    int embd_in;            /* this step's input rows are embeddings already in x */
    /* KCache (pol.vtop.on; gpu_kcache.cu). vpool is NULL. Layer l's device V: kc_vdev + kc_voff[l]
     * rows, kc_vw[l] rows per stream (n_ctx below fast_layers, else the ring of the newest),
     * slot s at row (seq * KVH + g) * vw + s % vw. */
    int kc;                 /* pol.vtop.on */
    int32_t kc_ut;          /* slow rows move in units of this many tokens (vtop.block) */
    int32_t kc_ring;        /* ring rows per stream */
    bf16 *kc_vdev;          /* device V */
    int64_t *kc_voff;       /* host (L) */
    int32_t *kc_vw;         /* host (L) */
    bf16 *kc_vhost_h, *kc_vhost; /* pinned mapped (n_streams, n_ctx, hd): every V row; host / device address */
    bf16 *kc_vpre;          /* device (L, KVH, n_ctx, hd): V of the sequence that prefills */
    int kc_pre_seq, kc_pre_n; /* whose V kc_vpre holds, and how many slots of it */
    float *kc_rank;         /* device (rows_max, KVH, n_ctx) */
    int32_t *kc_sel;        /* device (rows_max, KVH, n_ctx) selected slow slots, ascending */
    int32_t *kc_nsel;       /* device (rows_max, KVH) */
    float *kc_inv;          /* device (rows_max, H) weight factor per head */
    unsigned long long *kc_ct; /* device (2): decode steps with slow rows, rows read */
    int kc_prof;            /* SKV_KC_PROFILE: a kc_variant (gpu_kcache.cu, gpu_kc_profile) */
    int kc_chunks;          /* chunks of KV heads per layer (the finish of one overlaps the next's scores) */
    int kc_cap;             /* the selection's candidate capacity (gpu_kcache.cu, k_kc_select) */
    bf16 *kc_stage;         /* device (rows_max, KVH, kc_scap, hd): the selected host rows, gathered */
    int kc_scap;            /* most rows selected per (row, KV head) */
    int kc_gblocks;         /* blocks of the gather kernel (SKV_KC_GATHER, default 8) */
    cudaStream_t kc_st;     /* the finish's stream (high priority) */
    cudaEvent_t kc_ev[KC_MAX_CHUNKS], kc_join;
    /* KIVI int8/int4 cache (pol.kv_bits; gpu_kivi.cu): kpool and vpool are NULL */
    int kv_bits;            /* 0: bf16 cache */
    int kv_units;           /* the decode kernel's work in units of steps (SKV_CUDA_KIVI_UNITS=1; default 0) */
    int64_t kv_bb;          /* bytes of one quantised block (K and V of BLK slots) */
    uint8_t *kv_q;          /* device (n_blocks, kv_bb) */
    float *kv_rk, *kv_rv;   /* device (n_streams, 32, hd) f32 residual: the newest partial group */
    float *kv_stk, *kv_stv; /* device (KVH, n_batch, hd) prefill staging (f32) */
    bf16 *kv_sk, *kv_sv;    /* device (KVH, mb * BLK, hd) prefill scratch the flash kernel reads */
    int32_t *kv_sbt;        /* device (KVH, mb) identity block table of the scratch */
};

/* stream of cache layer l */
static inline int sid_of(const skv_gpu_ctx *c, int l, int seq, int g) { return (l * c->n_seq + seq) * c->g->KVH + g; }

/* gpu_cache.cu */
skv_status gpu_cache_alloc(skv_gpu_ctx *c);
void gpu_cache_free(skv_gpu_ctx *c);
/* blocks for n more rows in every stream of sequence seq (host), then the table up */
skv_status gpu_cache_reserve(skv_gpu_ctx *c, int seq, int n);
skv_status gpu_cache_upload(skv_gpu_ctx *c);
/* after a forward of n rows of seq (decode: with the per-step eviction): the host mirror */
void gpu_cache_advance(skv_gpu_ctx *c, int seq, int n, int decode);
/* kernels that end a forward: slot counts, per-step eviction (decode) */
skv_status gpu_cache_end_forward(skv_gpu_ctx *c, int n, int decode, int seq);
/* decode statistics of layer l for n rows */
skv_status gpu_cache_decode_stats(skv_gpu_ctx *c, int l, int n);
/* prefill statistics of layer l for n rows of seq */
skv_status gpu_cache_prefill_stats(skv_gpu_ctx *c, int l, int seq, int pos0, int n);

/* gpu_kcache.cu */
skv_status gpu_kc_alloc(skv_gpu_ctx *c);
void gpu_kc_free(skv_gpu_ctx *c);
/* layer l's device V base and rows per stream; whether V of layer l is a ring */
bf16 *gpu_kc_vbase(const skv_gpu_ctx *c, int l);
/* before a prefill chunk of seq at pos0: kc_vpre holds seq's V of slots [0, pos0) */
skv_status gpu_kc_prefill_begin(skv_gpu_ctx *c, int seq, int pos0, int n);
/* decode attention of layer l (>= fast_layers) for n rows: the K-only scores pass, selection,
 * then the output from the selected host rows (on a second stream, overlapped) and the ring */
skv_status gpu_kc_decode(skv_gpu_ctx *c, int l, int n);
/* the profiling variant "oldscores": gpu.cu runs the split-K kernel without V and its merge,
 * then gpu_kc_attend the selection and the output, serially */
int gpu_kc_old_scores(const skv_gpu_ctx *c);
skv_status gpu_kc_attend(skv_gpu_ctx *c, int l, int n);
/* the profiling variant named by $SKV_KC_PROFILE (0: none); a change drops the captured graphs */
int gpu_kc_profile(skv_gpu_ctx *c);
/* after sequence seq was truncated to `from`: the ring refilled from the host rows */
skv_status gpu_kc_truncated(skv_gpu_ctx *c, int seq, int from);

/* gpu_kivi.cu: the KIVI cache. check: refusals (0: fine); store: q, and K/V of a layer keeping
 * them (kv_in = KVH) into the residual (decode) or staging + scratch (prefill); prefill_begin:
 * old slots into the scratch; prefill_end: groups quantised, the rest to the residual; decode:
 * the attention splits into part_o/m/l (k_attn_merge follows); truncate: slen and the residual
 * (the host mirror updated by the caller); read: a stream's slots dequantised (host f32). */
skv_status gpu_kivi_check(const skv_gpu_ctx *c);
skv_status gpu_kivi_alloc(skv_gpu_ctx *c);
void gpu_kivi_free(skv_gpu_ctx *c);
int64_t gpu_kivi_block_bytes(int hd, int bits);
skv_status gpu_kivi_store(skv_gpu_ctx *c, int l, int n, int decode, int seq, int pos0, int kv_in);
skv_status gpu_kivi_prefill_begin(skv_gpu_ctx *c, int l, int seq);
skv_status gpu_kivi_prefill_end(skv_gpu_ctx *c, int l, int seq, int n);
skv_status gpu_kivi_decode(skv_gpu_ctx *c, int l, int n, int n_split);
skv_status gpu_kivi_truncate(skv_gpu_ctx *c, int seq, int from);
skv_status gpu_kivi_read(skv_gpu_ctx *c, int sid, int n, float *k, float *v);

/* gpu_prof.cu: the per-stage decode profile (c->prof steps per report) */
skv_status gpu_prof_begin(skv_gpu_ctx *c);
void gpu_prof_mark(skv_gpu_ctx *c, const char *what); /* after a launch: the stage it belongs to */
skv_status gpu_prof_end(skv_gpu_ctx *c, int pos);
void gpu_prof_free(skv_gpu_ctx *c);

/* gpu_sample.cu */
skv_status gpu_sample_alloc(skv_gpu_ctx *c);
/* stage the arguments of n rows (host), then the kernel (device, in the step) */
skv_status gpu_sample_stage(skv_gpu_ctx *c, const skv_gpu_sample *s, int n);
skv_status gpu_sample_launch(skv_gpu_ctx *c, int n);

#endif
