/*
 * gpu.cu — the CUDA backend's contexts and forward pass (see gpu.h): device cache and scratch,
 * prefill and decode through the kernels of gpu_kernels.cuh and gpu_gemv.cuh, CUDA-graph replay
 * of decode steps whose kernels start early (programmatic dependent launch, see pdl_wait).
 *
 * Shapes (row-major): x (rows, dim) f32 residual; xb (rows, max(dim, q_dim)) bf16 matrix input;
 * qkv (rows, q_dim + 2 kv_dim) f32; q (rows, H*hd) f32 after RoPE, qb its bf16 copy; att (rows,
 * H*hd) bf16; gu (rows, 2 ffn) f32 = gate | up; h (rows, ffn) bf16; logits (rows, vocab) f32.
 * KV cache: paged (gpu_ctx.cuh, gpu_cache.cu).
 */
#include "backend/cuda/gpu_ctx.cuh"
#include "backend/cuda/gpu_kernels.cuh"
#include "backend/cuda/gpu_gemv.cuh"
#include "backend/cuda/gpu_fused.cuh"
#include "backend/cuda/gpu_qweights.cuh"

#define ALLOC(p, n) CK(cudaMalloc((void **)&(p), (size_t)(n) * sizeof(*(p))))

/* Launch kernel k on the compute stream; with c->pdl as a programmatic dependent launch (k
 * calls pdl_wait before it reads or writes what earlier kernels wrote). `what`: its stage in
 * the profile. */
template <typename... KArgs, typename... Args>
static skv_status launch(skv_gpu_ctx *c, const char *what, void (*k)(KArgs...), dim3 grid, dim3 block, size_t smem,
                         Args... args) {
    cudaLaunchAttribute at;
    at.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = smem, cfg.stream = c->st;
    cfg.attrs = &at, cfg.numAttrs = c->pdl ? 1 : 0;
    CK(cudaLaunchKernelEx(&cfg, k, args...));
    if (c->prof_on) gpu_prof_mark(c, what);
    return SKV_OK;
}

#include "backend/cuda/gpu_binv.cuh" /* (its host side launches through launch()) */

static int env_int(const char *name, int dflt) {
    const char *v = getenv(name);
    return v && *v ? atoi(v) : dflt;
}

extern "C" skv_status skv_gpu_ctx_init(skv_gpu_model *g, int32_t n_ctx, int32_t n_batch, int32_t n_seq,
                                       const skv_gpu_policy *pol, skv_gpu_ctx **out) {
    *out = NULL;
    if (n_ctx < 1 || n_batch < 1 || n_seq < 1)
        return skv_set_error(SKV_ERR_ARG, "CUDA context: n_ctx, n_batch and n_seq must be >= 1");
    skv_gpu_ctx *c = (skv_gpu_ctx *)calloc(1, sizeof *c);
    if (!c) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    c->g = g, c->n_ctx = n_ctx, c->n_batch = n_batch, c->n_seq = n_seq;
    if (pol) c->pol = *pol;
    c->kc = c->pol.vtop.on;
    const skv_status kst = gpu_kivi_check(c);
    if (kst) {
        free(c);
        return kst;
    }
    c->rows_max = n_batch > n_seq ? n_batch : n_seq;
    const int64_t R = c->rows_max, QD = (int64_t)g->H * g->hd, KD = (int64_t)g->KVH * g->hd;
    c->max_split = 256;
    c->n_streams = g->CL * n_seq * g->KVH;
    c->iters = c->pol.lckv_iters > 0 ? c->pol.lckv_iters : 9;
    c->mb = (n_ctx + BLK - 1) / BLK;
    auto alloc_all = [&]() -> skv_status {
        CK(cudaStreamCreateWithFlags(&c->st, cudaStreamNonBlocking));
        CK(cudaStreamCreateWithFlags(&c->cst, cudaStreamNonBlocking));
        CB(cublasCreate(&c->cb));
        CB(cublasSetStream(c->cb, c->st));
        skv_status s2 = gpu_cache_alloc(c);
        if (s2 || (c->kc && (s2 = gpu_kc_alloc(c))) || (c->pol.kv_bits && (s2 = gpu_kivi_alloc(c)))) return s2;
        ALLOC(c->x, R * g->D);
        if (g->grp_lo >= 0) ALLOC(c->x0, R * g->D);
        ALLOC(c->xb, R * (g->D > QD ? g->D : QD));
        ALLOC(c->q, R * QD);
        ALLOC(c->qb, R * QD);
        ALLOC(c->qkv, R * (QD + 2 * KD));
        ALLOC(c->att, R * QD);
        ALLOC(c->gu, R * 2 * g->F);
        ALLOC(c->h, R * g->F);
        ALLOC(c->logits, R * g->V);
        if (g->qtile && R > GEMV_MAX_B) ALLOC(c->qtile, g->qtile); /* (R: prefill rows or batched steps) */
        ALLOC(c->cosr, (int64_t)n_ctx * g->hd / 2);
        ALLOC(c->sinr, (int64_t)n_ctx * g->hd / 2);
        ALLOC(c->part_o, (int64_t)n_seq * g->H * c->max_split * g->hd);
        ALLOC(c->part_m, (int64_t)n_seq * g->H * c->max_split);
        ALLOC(c->part_l, (int64_t)n_seq * g->H * c->max_split);
        ALLOC(c->lse, R * g->H);
        ALLOC(c->att_cnt, R * g->KVH);
        CK(cudaMemset(c->att_cnt, 0, sizeof(int32_t) * (size_t)(R * g->KVH))); /* the last block re-zeroes it */
        if (c->pol.want_acc || c->pol.want_last || c->kc) ALLOC(c->dsc, (int64_t)n_seq * g->H * n_ctx);
        ALLOC(c->ids_d, R);
        ALLOC(c->pos_d, R);
        ALLOC(c->seq_d, R);
        ALLOC(c->next_d, R);
        ALLOC(c->argkey, R);
        CK(cudaMemset(c->argkey, 0, sizeof(unsigned long long) * (size_t)R)); /* k_argmax_ids re-zeroes it */
        CK(cudaMallocHost((void **)&c->stage, sizeof(int32_t) * 3 * (size_t)R));
        if ((s2 = gpu_sample_alloc(c))) return s2;
        CK(cudaMalloc(&c->cublas_ws, (size_t)32 << 20));
        CB(cublasSetWorkspace(c->cb, c->cublas_ws, (size_t)32 << 20));
        CK(cudaDeviceGetAttribute(&c->sms, cudaDevAttrMultiProcessorCount, 0));
        c->graph = (cudaGraphExec_t *)calloc(2 * ((size_t)n_seq + 1), sizeof(cudaGraphExec_t));
        c->use_graphs = env_int("SKV_CUDA_GRAPHS", 1) != 0;
        c->pdl = env_int("SKV_CUDA_PDL", 1) != 0;
        c->gemv_tc = env_int("SKV_CUDA_GEMV", 1) != 0;
        c->fuse = env_int("SKV_CUDA_FUSE", FUSE_DEFAULT) & FUSE_ALL;
        c->att_minlen = env_int("SKV_CUDA_ATT_MINLEN", 64);
        if (c->att_minlen < 1) c->att_minlen = 1;
        c->att_waves = env_int("SKV_CUDA_ATT_WAVES", 4);
        if (c->att_waves < 1) c->att_waves = 1;
        c->prof = env_int("SKV_CUDA_PROF", 0);
        /* the batch-invariant mode's attention splits: the batch-1 choice of the default path */
        c->bi_target = (c->att_waves * c->sms) / g->KVH;
        if (c->bi_target > c->max_split) c->bi_target = c->max_split;
        if (c->bi_target < 1) c->bi_target = 1;
        /* the flash kernel's two shared-memory stages exceed the default 48 KB */
        CK(cudaFuncSetAttribute(k_flash_prefill<128>, cudaFuncAttributeMaxDynamicSharedMemorySize, flash_smem_bytes<128>()));
        CK(cudaFuncSetAttribute(k_flash_prefill<64>, cudaFuncAttributeMaxDynamicSharedMemorySize, flash_smem_bytes<64>()));
        CK(cudaFuncSetAttribute(k_flash_prefill<128, 8>, cudaFuncAttributeMaxDynamicSharedMemorySize, flash_smem_bytes<128>()));
        CK(cudaFuncSetAttribute(k_flash_prefill<64, 8>, cudaFuncAttributeMaxDynamicSharedMemorySize, flash_smem_bytes<64>()));
        c->fa_warps = env_int("SKV_CUDA_FA_WARPS", 4) == 8 ? 8 : 4;
        CK(cudaEventCreate(&c->e0));
        CK(cudaEventCreate(&c->e1));
        /* RoPE tables computed as the CPU backend does (float angle, cosf/sinf) */
        const int half = g->hd / 2;
        float *cs = (float *)malloc(sizeof(float) * (size_t)n_ctx * half), *sn = (float *)malloc(sizeof(float) * (size_t)n_ctx * half);
        if (!cs || !sn) {
            free(cs), free(sn);
            return skv_set_error(SKV_ERR_NOMEM, "out of memory");
        }
        for (int64_t p = 0; p < n_ctx; p++)
            for (int i = 0; i < half; i++) {
                const float f = (float)p * g->inv_freq_h[i];
                cs[p * half + i] = cosf(f), sn[p * half + i] = sinf(f);
            }
        cudaError_t e1 = cudaMemcpy(c->cosr, cs, sizeof(float) * (size_t)n_ctx * half, cudaMemcpyHostToDevice);
        cudaError_t e2 = cudaMemcpy(c->sinr, sn, sizeof(float) * (size_t)n_ctx * half, cudaMemcpyHostToDevice);
        free(cs), free(sn);
        CK(e1);
        CK(e2);
        return SKV_OK;
    };
    const skv_status st = alloc_all();
    if (st) {
        skv_gpu_ctx_free(c);
        cudaGetLastError(); /* a failed allocation must not fail a later launch check */
        if (st == SKV_ERR_UNSUPPORTED)
            return skv_set_error(SKV_ERR_NOMEM, "CUDA: cannot allocate a context of %d tokens x %d sequences "
                                 "(%.2f GB of KV cache)", n_ctx, n_seq,
                                 (double)g->CL * n_seq * KD * n_ctx * 2 * 2 / 1e9);
        return st;
    }
    *out = c;
    return SKV_OK;
}

extern "C" void skv_gpu_ctx_free(skv_gpu_ctx *c) {
    if (!c) return;
    if (c->st) cudaStreamSynchronize(c->st);
    if (c->cst) cudaStreamSynchronize(c->cst);
    gpu_cache_free(c);
    gpu_kc_free(c);
    gpu_kivi_free(c);
    gpu_prof_free(c);
    void *ps[] = {c->qtile, c->x, c->x0, c->xb, c->q, c->qb, c->qkv, c->att, c->gu, c->h, c->logits, c->cosr, c->sinr, c->part_o,
                  c->part_m, c->part_l, c->lse, c->att_cnt, c->dsc, c->ids_d, c->pos_d, c->seq_d, c->next_d, c->argkey,
                  c->prob, c->samp_d, c->seen_d, c->fetch_rows};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) cudaFree(ps[i]);
    cudaFree(c->cublas_ws);
    if (c->stage) cudaFreeHost(c->stage);
    if (c->samp_h) cudaFreeHost(c->samp_h);
    if (c->seen_h) cudaFreeHost(c->seen_h);
    for (int i = 0; c->graph && i < 2 * (c->n_seq + 1); i++)
        if (c->graph[i]) cudaGraphExecDestroy(c->graph[i]);
    free(c->graph);
    if (c->cb) cublasDestroy(c->cb);
    if (c->e0) cudaEventDestroy(c->e0), cudaEventDestroy(c->e1);
    if (c->st) cudaStreamDestroy(c->st);
    if (c->cst) cudaStreamDestroy(c->cst);
    free(c);
}

static skv_status linear(skv_gpu_ctx *c, const char *what, const gmat *W, const bf16 *x, float *y, const float *bias,
                         int n, int acc);

/* whether the tensor-core GEMV (gpu_gemv.cuh) takes n rows through W */
static int use_tc(const skv_gpu_ctx *c, const gmat *W, int n) {
    return !W->q && c->gemv_tc && n >= GEMV_TC_MIN_B && n <= GEMV_TC_MAX_B && W->cols % 32 == 0;
}

/* the tensor-core GEMV of n rows: T = 1 y (+)= x W^T (+ bias); T = 2 h = SwiGLU of gate | up */
template <int T>
static skv_status gemv_tc(skv_gpu_ctx *c, const char *what, const gmat *W, const bf16 *x, float *y, bf16 *h,
                          const float *bias, int n, int acc) {
    const int rows = (int)W->rows, cols = (int)W->cols, blocks = ((T == 2 ? rows / 2 : rows) + 15) / 16;
    static_assert(GEMV_TC_MAX_B == 8, "one n-tile of 8 tokens");
    return launch(c, what, k_gemv_tc<1, T, 8 / T>, dim3(blocks), dim3(256), 0, (const bf16 *)W->w, x, y, h, bias, rows,
                  cols, n, acc);
}

/* whether the fused GEMV (gpu_fused.cuh) takes n rows through W; norm: with the RMSNorm
 * staged in shared memory (n * cols bf16, at most 48 KB) */
static int use_fused(const skv_gpu_ctx *c, const gmat *W, int n, int norm) {
    return (c->fuse & (norm ? FUSE_NORM : FUSE_PLAIN)) && !W->q && n >= 1 && n <= 3 && W->cols % 8 == 0 &&
           !(norm && n * W->cols * 2 > 48 * 1024);
}

/* the fused GEMV of n (1..3) rows in mode m (GF_*): out = W's rows (PLAIN, NORM) or half of
 * them (SWIGLU: gate | up; ROPE: rotation pairs) */
static skv_status gemv_f(skv_gpu_ctx *c, const char *what, int m, const gmat *W, const bf16 *x, const float *xf,
                         const float *nw, float *y, bf16 *h, const float *bias, int n, int acc, const gf_rope *rp) {
    const int cols = (int)W->cols, out = (int)(m >= GF_SWIGLU ? W->rows / 2 : W->rows);
    const size_t smem = m == GF_PLAIN ? 0 : (size_t)n * cols * sizeof(bf16);
    gf_rope r;
    if (rp) r = *rp;
    else memset(&r, 0, sizeof r);
    const dim3 grid((out + 7) / 8), block(256);
    const bf16 *w = (const bf16 *)W->w;
    const float eps = c->g->eps;
    switch (m * 4 + n) {
#define GF(M, B) \
    case M * 4 + B: return launch(c, what, k_gemv_f<B, M>, grid, block, smem, w, x, xf, nw, eps, y, h, bias, out, cols, acc, r);
        GF(GF_PLAIN, 1) GF(GF_PLAIN, 2) GF(GF_PLAIN, 3) GF(GF_NORM, 1) GF(GF_NORM, 2) GF(GF_NORM, 3)
        GF(GF_SWIGLU, 1) GF(GF_SWIGLU, 2) GF(GF_SWIGLU, 3) GF(GF_ROPE, 1) GF(GF_ROPE, 2) GF(GF_ROPE, 3)
#undef GF
    }
    return skv_set_error(SKV_ERR_ARG, "CUDA: fused GEMV of %d rows in mode %d", n, m);
}

/* The RMSNorm of rows xf (n, dim) f32 with weight nw into xb, then W: T = 1 y = xb W^T (+ bias);
 * T = 2 h = SwiGLU of xb (gate | up)^T (one kernel with the tensor-core GEMV, else two). */
template <int T>
static skv_status norm_gemv(skv_gpu_ctx *c, const char *what, const gmat *W, const float *xf, const float *nw,
                            float *y, bf16 *h, const float *bias, int n) {
    skv_gpu_model *g = c->g;
    if (use_fused(c, W, n, 1)) /* one kernel: the norm in its prologue (and SwiGLU in its epilogue) */
        return gemv_f(c, what, T == 2 ? GF_SWIGLU : GF_NORM, W, NULL, xf, nw, y, h, bias, n, 0, NULL);
    skv_status st = launch(c, "rmsnorm", k_rmsnorm, dim3(n), dim3(1024), 0, xf, nw, c->xb, g->D, g->eps);
    if (st) return st;
    if (T == 2 && c->binv_on) return bi_linear<2>(c, what, W, c->xb, NULL, h, NULL, n, 0);
    if (T == 2 && use_tc(c, W, n)) return gemv_tc<2>(c, what, W, c->xb, NULL, h, NULL, n, 0);
    if (T == 2) {
        if ((st = linear(c, what, W, c->xb, c->gu, NULL, n, 0))) return st;
        return launch(c, "swiglu", k_swiglu, dim3(1024), dim3(256), 0, (const float *)c->gu, h, (int64_t)n, (int64_t)g->F);
    }
    return linear(c, what, W, c->xb, y, bias, n, 0);
}

/* y (n, W.rows) f32 (+)= x (n, W.cols) bf16 . W^T (+ bias); `what`: the profile's stage */
static skv_status linear(skv_gpu_ctx *c, const char *what, const gmat *W, const bf16 *x, float *y, const float *bias,
                         int n, int acc) {
    if (c->binv_on) return bi_linear<1>(c, what, W, x, y, NULL, bias, n, acc);
    if (W->q) return gq_linear(c->st, c->cb, W, x, y, bias, n, acc, c->qtile, c->g->qtile);
    const int rows = (int)W->rows, cols = (int)W->cols;
    if (use_tc(c, W, n)) return gemv_tc<1>(c, what, W, x, y, NULL, bias, n, acc);
    if (use_fused(c, W, n, 0)) return gemv_f(c, what, GF_PLAIN, W, x, NULL, NULL, y, NULL, bias, n, acc, NULL);
    if (n <= GEMV_MAX_B) {
        const int threads = 256, blocks = (rows * 32 + threads - 1) / threads;
        switch (n) {
#define CASE(B) \
    case B: return launch(c, what, k_gemv<B>, dim3(blocks), dim3(threads), 0, (const bf16 *)W->w, x, y, bias, rows, cols, acc);
            CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
#undef CASE
        }
    }
    const float one = 1.0f, beta = acc ? 1.0f : 0.0f;
    CB(cublasGemmEx(c->cb, CUBLAS_OP_T, CUBLAS_OP_N, rows, n, cols, &one, W->w, CUDA_R_16BF, cols, x, CUDA_R_16BF,
                    cols, &beta, y, CUDA_R_32F, rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    if (c->prof_on) gpu_prof_mark(c, "cublas");
    if (bias) {
        k_add_bias<<<256, 256, 0, c->st>>>(y, bias, n, rows);
        LAUNCHED();
    }
    return SKV_OK;
}

/* Prefill attention of n query rows of sequence seq over cache layer l: flash attention over
 * each stream's earlier slots and the call's own (written at slen..slen + n - 1; mode as
 * k_flash_prefill's); with statistics, each row's log-sum-exp for the statistics pass. */
static skv_status attn_prefill(skv_gpu_ctx *c, int l, int seq, int n, int mode, int stats) {
    skv_gpu_model *g = c->g;
    const int hd = g->hd, H = g->H, KVH = g->KVH;
    const int s0 = sid_of(c, l, seq, 0);
    const int bq = 16 * c->fa_warps; /* query rows per block */
    const dim3 grid((n + bq - 1) / bq, H);
    const float sl2 = 1.4426950408889634f / sqrtf((float)hd);
    float *lse = stats && (c->pol.want_acc || c->pol.want_win || c->pol.want_last) ? c->lse : NULL;
    /* KCache: V from the dense rows of the layer (every row below fast_layers) or of the
     * prefilling sequence (KCache refuses LCKV models: l is a model layer there) */
    const bf16 *vd = !c->kc ? NULL
                     : l < c->pol.vtop.fast_layers ? gpu_kc_vbase(c, l) + (int64_t)seq * KVH * c->n_ctx * hd
                                                   : c->kc_vpre + (int64_t)l * KVH * c->n_ctx * hd;
    /* KIVI: the old slots dequantised into a dense bf16 scratch beside the chunk's rows, read
     * through an identity block table; then the chunk's completed groups quantised */
    skv_status st;
    if (c->kv_bits && (st = gpu_kivi_prefill_begin(c, l, seq))) return st;
    const bf16 *kp = c->kv_bits ? c->kv_sk : c->kpool, *vp = c->kv_bits ? c->kv_sv : c->vpool;
    const int32_t *bt = c->kv_bits ? c->kv_sbt : c->bt + (int64_t)s0 * c->mb;
#define FA_LAUNCH(HD_, NW_)                                                                                        \
    k_flash_prefill<HD_, NW_><<<grid, NW_ * 32, flash_smem_bytes<HD_>(), c->st>>>(c->qb, kp, vp, vd, c->n_ctx, bt, \
                                                                                 c->slen + s0, c->att, lse, n, H, KVH, \
                                                                                 c->mb, sl2, mode)
    if (hd == 128 && c->fa_warps == 8) FA_LAUNCH(128, 8);
    else if (hd == 128) FA_LAUNCH(128, 4);
    else if (c->fa_warps == 8) FA_LAUNCH(64, 8);
    else FA_LAUNCH(64, 4);
#undef FA_LAUNCH
    LAUNCHED();
    return c->kv_bits ? gpu_kivi_prefill_end(c, l, seq, n) : SKV_OK;
}

/* Decode attention of n rows (one token each, row r of sequence seq_d[r] at pos_d[r]) over
 * cache layer l; strict (LCKV condensed layers): without this step's slot, and no statistics. */
static skv_status attn_decode(skv_gpu_ctx *c, int l, int n, int strict) {
    skv_gpu_model *g = c->g;
    const int hd = g->hd, H = g->H, KVH = g->KVH;
    if (c->binv_on && !c->kc && !c->kv_bits) return bi_attn_decode(c, l, n, strict);
    /* about four waves of blocks on the chip (att_waves; loads in flight); each block finds its keys from
     * the row's length */
    int n_split = (c->att_waves * c->sms + KVH * n - 1) / (KVH * n);
    if (n_split > c->max_split) n_split = c->max_split;
    if (n_split < 1) n_split = 1;
    const dim3 grid(KVH, n_split, n);
    const float scale = 1.0f / sqrtf((float)hd);
    /* KCache: layers below fast_layers read every V row from the dense device rows; the others
     * go to gpu_kc_decode (K-only scores pass, selection, host reads), or with the profiling
     * variant "oldscores" only score here (scores into dsc, the log-sum-exp into lse) and then
     * select and read serially (gpu_kc_attend) */
    const bool kc_fast = c->kc && l < c->pol.vtop.fast_layers, vo = !c->kc || kc_fast;
    if (!vo && !gpu_kc_old_scores(c)) return gpu_kc_decode(c, l, n);
    const bf16 *vd = kc_fast ? gpu_kc_vbase(c, l) : NULL;
    const bool stats = !strict && (c->pol.want_acc || c->pol.want_last);
    float *dsc = stats || (!vo && c->kc_prof != KCP_NODSC) ? c->dsc : NULL;
#define ATT_ARGS qc, kpc, vpc, vd, btc, slc, sqc, c->part_o, c->part_m, c->part_l, dsc, l, c->n_seq, \
                 c->mb, H, KVH, c->n_ctx, n_split, scale, strict
    const float *qc = c->q;
    const bf16 *kpc = c->kpool, *vpc = c->vpool;
    const int32_t *btc = c->bt, *slc = c->slen, *sqc = c->seq_d;
    skv_status st = SKV_OK;
    if (c->kv_bits) { /* KIVI: codes read and dequantised in the kernel (gpu_kivi.cu) */
        if ((st = gpu_kivi_decode(c, l, n, n_split))) return st;
        return launch(c, "attn merge", k_attn_merge, dim3(H, n), dim3(hd), 0, (const float *)c->part_o,
                      (const float *)c->part_m, (const float *)c->part_l, c->att, (float *)NULL, H, hd, n_split);
    }
#define ATT_G(HD_, G_)                                                                                         \
    case G_:                                                                                                   \
        st = vo ? launch(c, "attention", k_attn_decode<HD_, G_, true>, grid, dim3(ATT_WARPS * 32), 0, ATT_ARGS)   \
                : launch(c, "attention", k_attn_decode<HD_, G_, false>, grid, dim3(ATT_WARPS * 32), 0, ATT_ARGS); \
        break;
#define ATT_F(HD_, G_)                                                                                        \
    case G_:                                                                                                  \
        st = launch(c, "attention", k_attn_decode_f<HD_, G_, 8>, grid, dim3(ATT_WARPS * 32), 0, ATT_ARGS, c->att, \
                    dsc ? c->lse : (float *)NULL, c->att_cnt, c->att_minlen);                                \
        break;
    if (vo && (c->fuse & FUSE_ATT)) { /* the split merge in the kernel's last block per (row, KV head) */
        if (hd == 128) {
            switch (H / KVH) { ATT_F(128, 1) ATT_F(128, 2) ATT_F(128, 3) ATT_F(128, 4) ATT_F(128, 5) ATT_F(128, 6) ATT_F(128, 7) ATT_F(128, 8) }
        } else {
            switch (H / KVH) { ATT_F(64, 1) ATT_F(64, 2) ATT_F(64, 3) ATT_F(64, 4) ATT_F(64, 5) ATT_F(64, 6) ATT_F(64, 7) ATT_F(64, 8) }
        }
#undef ATT_F
        if (st) return st;
        return stats ? gpu_cache_decode_stats(c, l, n) : SKV_OK;
    }
    if (hd == 128) {
        switch (H / KVH) { ATT_G(128, 1) ATT_G(128, 2) ATT_G(128, 3) ATT_G(128, 4) ATT_G(128, 5) ATT_G(128, 6) ATT_G(128, 7) ATT_G(128, 8) }
    } else {
        switch (H / KVH) { ATT_G(64, 1) ATT_G(64, 2) ATT_G(64, 3) ATT_G(64, 4) ATT_G(64, 5) ATT_G(64, 6) ATT_G(64, 7) ATT_G(64, 8) }
    }
#undef ATT_G
#undef ATT_ARGS
    if (st) return st;
    if ((st = launch(c, "attn merge", k_attn_merge, dim3(H, n), dim3(hd), 0, (const float *)c->part_o,
                     (const float *)c->part_m, (const float *)c->part_l, c->att, dsc ? c->lse : (float *)NULL, H, hd,
                     n_split)))
        return st;
    if (!vo) return gpu_kc_attend(c, l, n);
    return stats ? gpu_cache_decode_stats(c, l, n) : SKV_OK;
}

/* Where layer l's V rows go (KCache; else nothing: the paged pool) */
static kc_vloc kc_vloc_of(const skv_gpu_ctx *c, int l, int decode) {
    kc_vloc v = {NULL, NULL, NULL, 0, 0};
    if (!c->kc) return v;
    const int fast = l < c->pol.vtop.fast_layers;
    v.vd = gpu_kc_vbase(c, l), v.vh = c->kc_vhost, v.vw = c->kc_vw[l], v.ring = !fast;
    v.vpre = decode || fast ? NULL : c->kc_vpre + (int64_t)l * c->g->KVH * c->n_ctx * c->g->hd;
    return v;
}

/* rmsnorm, q (and, for a layer keeping KV, k and v) of layer l for n rows; RoPE'd q into q/qb,
 * k and v into the rows' slots of its cache layer (see k_rope_store). */
static skv_status qkv_store(skv_gpu_ctx *c, int l, int n, int decode, int seq, int pos0) {
    skv_gpu_model *g = c->g;
    const glayer *y = &g->layers[l];
    const int kv_in = y->own ? g->KVH : 0;
    if (decode && !c->kc && !c->kv_bits && (c->fuse & FUSE_ROPE) && use_fused(c, &y->wqkv, n, 1)) { /* one kernel: norm, q/k/v, RoPE, store */
        gf_rope rp = {c->q, c->qb, c->kpool, c->vpool, c->bt, c->slen, c->pos_d, c->seq_d, c->spos, c->sacc, c->swin,
                      c->cosr, c->sinr, y->cl, c->n_seq, c->mb, g->H, g->KVH, g->hd, c->n_ctx};
        return gemv_f(c, "gemv qkv", GF_ROPE, &y->wqkv, NULL, c->x, y->attn_norm, NULL, NULL, y->bqkv, n, 0, &rp);
    }
    skv_status st = norm_gemv<1>(c, "gemv qkv", &y->wqkv, c->x, y->attn_norm, c->qkv, NULL, y->bqkv, n);
    if (st) return st;
    if (c->kv_bits) return gpu_kivi_store(c, y->cl, n, decode, seq, pos0, kv_in);
    return launch(c, "rope+store", k_rope_store, dim3(n, g->H + kv_in), dim3(g->hd / 2), 0, (const float *)c->qkv, c->q,
                  c->qb, c->kpool, c->vpool, (const int32_t *)c->bt, (const int32_t *)c->slen, c->spos, c->sacc, c->swin,
                  (const float *)c->cosr, (const float *)c->sinr, (const int32_t *)(decode ? c->pos_d : NULL),
                  (const int32_t *)(decode ? c->seq_d : NULL), pos0, seq, y->cl, c->n_seq, c->mb, g->H, g->KVH, g->hd,
                  c->n_ctx, kv_in, kc_vloc_of(c, y->cl, decode));
}

/* Layer l for n rows. decode: rows are separate sequences (pos_d, seq_d filled); else one
 * sequence `seq` at positions pos0... final: the pass whose K/V stay (statistics of the layers
 * keeping KV); have_src: an LCKV condensed layer sees the call's earlier source rows (written
 * by the previous iteration), else only the slots before the call. */
static skv_status layer(skv_gpu_ctx *c, int l, int n, int decode, int seq, int pos0, int final, int have_src) {
    skv_gpu_model *g = c->g;
    const glayer *y = &g->layers[l];
    skv_status st;
    if ((st = qkv_store(c, l, n, decode, seq, pos0))) return st;
    const int up = y->src > l; /* condensed: the source runs later */
    if (decode) {
        if ((st = attn_decode(c, y->cl, n, up))) return st;
    } else {
        const int stats = y->own && final && (c->pol.want_acc || c->pol.want_win || c->pol.want_last);
        if ((st = attn_prefill(c, y->cl, seq, n, up ? (have_src ? 1 : 2) : 0, stats))) return st;
        if (stats && (st = gpu_cache_prefill_stats(c, y->cl, seq, pos0, n))) return st;
    }
    if ((st = linear(c, "gemv o", &y->wo, c->att, c->x, y->bo, n, 1)) ||
        (st = norm_gemv<2>(c, "gemv gate/up", &y->wgu, c->x, y->ffn_norm, NULL, c->h, NULL, n)))
        return st;
    return linear(c, "gemv down", &y->wd, c->h, c->x, NULL, n, 1);
}

/* The layers for n rows (see layer()). LCKV prefill (docs/techniques.md section 3): the layers
 * below the group once; the group [grp_lo, grp_hi] iterated c->iters times from the same input,
 * the earlier iterations ending with the source's K/V written into the call's slots (which the
 * next iteration's condensed layers read: they run before their source), the last one for real;
 * then the layers above. Decode: one pass. */
static skv_status layers(skv_gpu_ctx *c, int n, int decode, int seq, int pos0) {
    skv_gpu_model *g = c->g;
    skv_status st;
    if (!c->embd_in) { /* else the input rows are already in x */
        if (g->embed.q) {
            if ((st = gq_embed(c->st, &g->embed, c->ids_d, c->x, n))) return st;
        } else if ((st = launch(c, "embed", k_embed, dim3(n), dim3(512), 0, (const int32_t *)c->ids_d,
                                (const bf16 *)g->embed.w, c->x, g->D)))
            return st;
    }
    int l = 0;
    if (!decode && g->grp_lo >= 0) {
        const size_t xb = sizeof(float) * (size_t)n * g->D;
        for (; l < g->grp_lo; l++)
            if ((st = layer(c, l, n, 0, seq, pos0, 1, 0))) return st;
        CK(cudaMemcpyAsync(c->x0, c->x, xb, cudaMemcpyDeviceToDevice, c->st));
        for (int it = 1; it < c->iters; it++) {
            if (it > 1) CK(cudaMemcpyAsync(c->x, c->x0, xb, cudaMemcpyDeviceToDevice, c->st));
            for (int j = g->grp_lo; j < g->grp_hi; j++)
                if ((st = layer(c, j, n, 0, seq, pos0, 0, it > 1))) return st;
            if ((st = qkv_store(c, g->grp_hi, n, 0, seq, pos0))) return st;
        }
        if (c->iters > 1) CK(cudaMemcpyAsync(c->x, c->x0, xb, cudaMemcpyDeviceToDevice, c->st));
        for (; l <= g->grp_hi; l++)
            if ((st = layer(c, l, n, 0, seq, pos0, 1, c->iters > 1))) return st;
    }
    for (; l < g->L; l++)
        if ((st = layer(c, l, n, decode, seq, pos0, 1, 0))) return st;
    st = gpu_cache_end_forward(c, n, decode, seq);
    if (c->prof_on) gpu_prof_mark(c, "cache end");
    return st;
}

/* logits of rows [r0, r0 + n) of x */
static skv_status head(skv_gpu_ctx *c, int r0, int n) {
    skv_gpu_model *g = c->g;
    return norm_gemv<1>(c, "lm head", &g->lm_head, c->x + (int64_t)r0 * g->D, g->final_norm, c->logits, NULL, NULL, n);
}

/* One decode step of n rows whose ids, positions and sequences are in c->stage: blocks for the
 * new slots, copies up, then layers + head + argmax or sampling, replaying a captured graph per
 * (n, sampled). */
static skv_status decode_step(skv_gpu_ctx *c, int n, const skv_gpu_sample *sample) {
    const int64_t R = c->rows_max;
    skv_status st;
    if (c->kc && gpu_kc_profile(c)) /* a profiling variant changed: capture again */
        for (int i = 0; i < 2 * (c->n_seq + 1); i++)
            if (c->graph[i]) cudaGraphExecDestroy(c->graph[i]), c->graph[i] = NULL;
    for (int r = 0; r < n; r++)
        if ((st = gpu_cache_reserve(c, c->stage[2 * R + r], 1))) return st;
    if ((st = gpu_cache_upload(c))) return st;
    CK(cudaMemcpyAsync(c->ids_d, c->stage, sizeof(int32_t) * (size_t)n, cudaMemcpyHostToDevice, c->st));
    CK(cudaMemcpyAsync(c->pos_d, c->stage + R, sizeof(int32_t) * (size_t)n, cudaMemcpyHostToDevice, c->st));
    CK(cudaMemcpyAsync(c->seq_d, c->stage + 2 * R, sizeof(int32_t) * (size_t)n, cudaMemcpyHostToDevice, c->st));
    if (sample && (st = gpu_sample_stage(c, sample, n))) return st;
    c->binv_on = c->binv; /* (prefill chunks keep the default kernels) */
    struct off_after {
        skv_gpu_ctx *c;
        ~off_after() { c->binv_on = 0; }
    } binv_off = {c};
    auto body = [&]() -> skv_status {
        skv_status s2;
        if ((s2 = layers(c, n, 1, 0, 0)) || (s2 = head(c, 0, n))) return s2;
        if (sample) {
            s2 = gpu_sample_launch(c, n);
            if (c->prof_on) gpu_prof_mark(c, "sample");
            return s2;
        }
        if ((s2 = launch(c, "argmax", k_argmax, dim3(32, n), dim3(256), 0, (const float *)c->logits, c->g->V,
                         c->argkey)))
            return s2;
        return launch(c, "argmax", k_argmax_ids, dim3((n + 127) / 128), dim3(128), 0, c->argkey, c->next_d, n);
    };
    if (c->prof > 0 && !c->embd_in) { /* the per-stage profile: eager, timed launch by launch */
        const int pdl = c->pdl;
        c->pdl = 0, c->prof_on = 1;
        if (!(st = gpu_prof_begin(c))) st = body();
        c->pdl = pdl, c->prof_on = 0;
        if (!st) st = gpu_prof_end(c, c->stage[R]);
    } else if (!c->use_graphs || c->embd_in) { /* (graphs are captured for id input) */
        st = body();
    } else {
        cudaGraphExec_t *ge = &c->graph[n + (sample ? c->n_seq + 1 : 0)];
        for (int tries = 0; !*ge; tries++) {
            cudaGraph_t gr = NULL;
            CK(cudaStreamBeginCapture(c->st, cudaStreamCaptureModeThreadLocal));
            st = body();
            cudaError_t e = cudaStreamEndCapture(c->st, &gr);
            if (e == cudaSuccess && !st) e = cudaGraphInstantiate(ge, gr, 0);
            if (gr) cudaGraphDestroy(gr);
            if (e != cudaSuccess && c->pdl && tries == 0) { /* a runtime that cannot capture early launches */
                cudaGetLastError();
                fprintf(stderr, "slimkv: CUDA graph capture with programmatic dependent launch failed (%s); "
                        "capturing without\n", cudaGetErrorString(e));
                c->pdl = 0, *ge = NULL;
                continue;
            }
            if (st) return st;
            CK(e);
        }
        CK(cudaGraphLaunch(*ge, c->st));
        st = SKV_OK;
    }
    if (st) return st;
    for (int r = 0; r < n; r++) {
        const int seq = c->stage[2 * R + r];
        gpu_cache_advance(c, seq, 1, 1);
        c->h_next[seq]++;
    }
    return SKV_OK;
}

extern "C" skv_status skv_gpu_forward(skv_gpu_ctx *c, int32_t seq, const int32_t *ids, const float *embd, int32_t n,
                                      int32_t pos0, float *logits, float *hidden, float *hidden_normed, int all) {
    skv_gpu_model *g = c->g;
    if (n < 1 || n > c->n_batch || seq < 0 || seq >= c->n_seq || pos0 < 0 || pos0 + n > c->n_ctx)
        return skv_set_error(SKV_ERR_RANGE, "CUDA forward: %d tokens at position %d of sequence %d (context %d, "
                             "batch %d, %d sequences)", n, pos0, seq, c->n_ctx, c->n_batch, c->n_seq);
    if (pos0 != c->h_next[seq])
        return skv_set_error(SKV_ERR_ARG, "CUDA forward: position %d of sequence %d, whose next position is %d "
                             "(truncate first)", pos0, seq, c->h_next[seq]);
    if (!ids == !embd) return skv_set_error(SKV_ERR_ARG, "CUDA forward: give either ids or embeddings");
    for (int i = 0; ids && i < n; i++)
        if (ids[i] < 0 || ids[i] >= g->V) return skv_set_error(SKV_ERR_ARG, "token id %d out of range", ids[i]);
    skv_status st;
    CK(cudaStreamSynchronize(c->st)); /* the staging buffer and host mirrors are free */
    c->embd_in = embd != NULL;
    if (embd) CK(cudaMemcpyAsync(c->x, embd, sizeof(float) * (size_t)n * g->D, cudaMemcpyHostToDevice, c->st));
    const int r0 = all ? 0 : n - 1, nr = all ? n : 1;
    if (n == 1) { /* the decode path: one row of sequence seq (logits computed on the way) */
        c->stage[0] = ids ? ids[0] : 0, c->stage[c->rows_max] = pos0, c->stage[2 * c->rows_max] = seq;
        st = decode_step(c, 1, NULL);
        c->embd_in = 0;
        if (st) return st;
        if (logits)
            CK(cudaMemcpyAsync(logits, c->logits, sizeof(float) * (size_t)g->V, cudaMemcpyDeviceToHost, c->st));
    } else {
        if ((st = gpu_cache_reserve(c, seq, n)) || (st = gpu_cache_upload(c))) return st;
        if (c->kc && (st = gpu_kc_prefill_begin(c, seq, pos0, n))) return st;
        if (ids) CK(cudaMemcpyAsync(c->ids_d, ids, sizeof(int32_t) * (size_t)n, cudaMemcpyHostToDevice, c->st));
        st = layers(c, n, 0, seq, pos0);
        c->embd_in = 0;
        if (st) return st;
        gpu_cache_advance(c, seq, n, 0);
        c->h_next[seq] += n;
        if (logits) {
            if ((st = head(c, r0, nr))) return st;
            CK(cudaMemcpyAsync(logits, c->logits, sizeof(float) * (size_t)nr * g->V, cudaMemcpyDeviceToHost, c->st));
        }
    }
    /* the residual stream after the last layer; the normed state is computed by the caller */
    if (hidden)
        CK(cudaMemcpyAsync(hidden, c->x + (int64_t)(n == 1 ? 0 : r0) * g->D, sizeof(float) * (size_t)nr * g->D,
                           cudaMemcpyDeviceToHost, c->st));
    (void)hidden_normed;
    CK(cudaStreamSynchronize(c->st));
    return SKV_OK;
}

extern "C" skv_status skv_gpu_decode_batch(skv_gpu_ctx *c, const int32_t *ids, const int32_t *pos, int32_t n,
                                           float *logits, int32_t *next, const skv_gpu_sample *sample) {
    return skv_gpu_decode_seqs(c, NULL, ids, pos, n, logits, next, sample);
}

extern "C" skv_status skv_gpu_decode_seqs(skv_gpu_ctx *c, const int32_t *seqs, const int32_t *ids, const int32_t *pos,
                                          int32_t n, float *logits, int32_t *next, const skv_gpu_sample *sample) {
    skv_gpu_model *g = c->g;
    if (n < 1 || n > c->n_seq) return skv_set_error(SKV_ERR_RANGE, "CUDA decode: %d sequences (context has %d)", n, c->n_seq);
    for (int i = 0; i < n; i++) {
        const int q = seqs ? seqs[i] : i;
        if (q < 0 || q >= c->n_seq) return skv_set_error(SKV_ERR_RANGE, "CUDA decode: sequence %d (context has %d)", q, c->n_seq);
        for (int j = 0; seqs && j < i; j++)
            if (seqs[j] == q) return skv_set_error(SKV_ERR_ARG, "CUDA decode: sequence %d twice in one step", q);
        if (pos[i] < 0 || pos[i] >= c->n_ctx || ids[i] < 0 || ids[i] >= g->V)
            return skv_set_error(SKV_ERR_RANGE, "CUDA decode: sequence %d: id %d at position %d (context %d)", q, ids[i],
                                 pos[i], c->n_ctx);
        if (pos[i] != c->h_next[q])
            return skv_set_error(SKV_ERR_ARG, "CUDA decode: position %d of sequence %d, whose next position is %d",
                                 pos[i], q, c->h_next[q]);
    }
    CK(cudaStreamSynchronize(c->st)); /* the staging buffer is free */
    for (int i = 0; i < n; i++)
        c->stage[i] = ids[i], c->stage[c->rows_max + i] = pos[i], c->stage[2 * c->rows_max + i] = seqs ? seqs[i] : i;
    skv_status st = decode_step(c, n, sample);
    if (st) return st;
    if (next) CK(cudaMemcpyAsync(next, c->next_d, sizeof(int32_t) * (size_t)n, cudaMemcpyDeviceToHost, c->st));
    if (logits) CK(cudaMemcpyAsync(logits, c->logits, sizeof(float) * (size_t)n * g->V, cudaMemcpyDeviceToHost, c->st));
    CK(cudaStreamSynchronize(c->st));
    CK(cudaGetLastError());
    return SKV_OK;
}

extern "C" void skv_gpu_set_batch_invariant(skv_gpu_ctx *c, int on) {
    c->binv = on != 0;
    cudaStreamSynchronize(c->st); /* no step in flight */
    for (int i = 0; c->graph && i < 2 * (c->n_seq + 1); i++) /* captured with the other kernels */
        if (c->graph[i]) cudaGraphExecDestroy(c->graph[i]), c->graph[i] = NULL;
}

extern "C" void skv_gpu_timer_start(skv_gpu_ctx *c) { cudaEventRecord(c->e0, c->st); }

extern "C" double skv_gpu_timer_stop(skv_gpu_ctx *c) {
    cudaEventRecord(c->e1, c->st);
    cudaEventSynchronize(c->e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, c->e0, c->e1);
    return ms;
}

extern "C" skv_status skv_gpu_device_info(char *name, int name_len, int *sms, int64_t *mem_bytes) {
    if (!skv_gpu_available()) return SKV_ERR_UNSUPPORTED;
    cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    snprintf(name, (size_t)name_len, "%s", p.name);
    *sms = p.multiProcessorCount;
    *mem_bytes = (int64_t)p.totalGlobalMem;
    return SKV_OK;
}

/* The fastest of ten timed copies of `bytes` (CUDA events), in ms; stops at a failed copy. */
static cudaError_t best_copy_ms(void *dst, const void *src, int64_t bytes, cudaMemcpyKind kind, float *best) {
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0), cudaEventCreate(&e1);
    cudaError_t e = cudaSuccess;
    *best = 1e30f;
    for (int i = 0; i < 10 && e == cudaSuccess; i++) {
        cudaEventRecord(e0);
        e = cudaMemcpy(dst, src, (size_t)bytes, kind);
        cudaEventRecord(e1);
        cudaEventSynchronize(e1);
        float ms;
        cudaEventElapsedTime(&ms, e0, e1);
        if (ms < *best) *best = ms;
    }
    cudaEventDestroy(e0), cudaEventDestroy(e1);
    return e;
}

extern "C" skv_status skv_gpu_h2d_bandwidth(int64_t bytes, double *bps) {
    void *h = NULL, *d = NULL;
    CK(cudaMallocHost(&h, (size_t)bytes));
    cudaError_t e = cudaMalloc(&d, (size_t)bytes);
    if (e != cudaSuccess) {
        cudaFreeHost(h);
        CK(e);
    }
    memset(h, 1, (size_t)bytes);
    float best;
    e = best_copy_ms(d, h, bytes, cudaMemcpyHostToDevice, &best);
    cudaFree(d), cudaFreeHost(h);
    CK(e);
    *bps = (double)bytes / (best * 1e-3);
    return SKV_OK;
}

extern "C" skv_status skv_gpu_copy_bandwidth(int64_t bytes, double *bps) {
    void *a = NULL, *b = NULL;
    CK(cudaMalloc(&a, (size_t)bytes));
    CK(cudaMalloc(&b, (size_t)bytes));
    CK(cudaMemset(a, 1, (size_t)bytes));
    float best;
    const cudaError_t e = best_copy_ms(b, a, bytes, cudaMemcpyDeviceToDevice, &best);
    cudaFree(a), cudaFree(b);
    CK(e);
    *bps = 2.0 * (double)bytes / (best * 1e-3);
    return SKV_OK;
}
