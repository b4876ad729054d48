/*
 * gpu.cu — the CUDA backend's contexts and forward pass (see gpu.h): device cache and scratch,
 * prefill and decode through the kernels of gpu_kernels.cuh, CUDA-graph replay of decode steps.
 *
 * Shapes (row-major): x (rows, dim) f32 residual; xb (rows, max(dim, q_dim)) bf16 matrix input;
 * qkv (rows, q_dim + 2 kv_dim) f32; q (rows, H*hd) f32 after RoPE, qb its bf16 copy; att (rows,
 * H*hd) bf16; gu (rows, 2 ffn) f32 = gate | up; h (rows, ffn) bf16; logits (rows, vocab) f32.
 * KV cache: (layer, seq, KVH, n_ctx, hd) bf16.
 */
#include "backend/cuda/gpu_common.cuh"
#include "backend/cuda/gpu_kernels.cuh"

/* ------------------------------------------------------------------------------------------ */
/* Context                                                                                      */

struct skv_gpu_ctx {
    skv_gpu_model *g;
    int32_t n_ctx, n_batch, n_seq, rows_max, chunk, max_split;
    cudaStream_t st;
    cublasHandle_t cb;
    bf16 *kc, *vc;          /* (L, n_seq, KVH, n_ctx, hd) */
    float *x, *qkv, *q, *gu, *logits; /* qkv (R, QD + 2 KD), q (R, QD), gu (R, 2 ffn) */
    bf16 *xb, *qb, *att, *h;
    float *cosr, *sinr;     /* (n_ctx, hd/2) */
    float *part_o, *part_m, *part_l;
    float *S;               /* prefill scores (G, chunk, n_ctx) */
    bf16 *P;
    int32_t *ids_d, *pos_d, *seq_d, *next_d;
    int32_t *stage;         /* pinned (3, rows_max): ids, pos, seq for the device */
    unsigned long long *argkey; /* (rows_max) greedy argmax keys */
    void *cublas_ws;
    int sms, use_graphs, use_flash;
    cudaGraphExec_t *graph; /* (n_seq + 1) decode step of n rows, captured on first use */
    cudaEvent_t e0, e1;
};

#define ALLOC(p, n) CK(cudaMalloc((void **)&(p), (size_t)(n) * sizeof(*(p))))

extern "C" skv_status skv_gpu_ctx_init(skv_gpu_model *g, int32_t n_ctx, int32_t n_batch, int32_t n_seq,
                                       skv_gpu_ctx **out) {
    *out = NULL;
    if (n_ctx < 1 || n_batch < 1 || n_seq < 1)
        return skv_set_error(SKV_ERR_ARG, "CUDA context: n_ctx, n_batch and n_seq must be >= 1");
    skv_gpu_ctx *c = (skv_gpu_ctx *)calloc(1, sizeof *c);
    c->g = g, c->n_ctx = n_ctx, c->n_batch = n_batch, c->n_seq = n_seq;
    c->rows_max = n_batch > n_seq ? n_batch : n_seq;
    const int64_t R = c->rows_max, QD = (int64_t)g->H * g->hd, KD = (int64_t)g->KVH * g->hd;
    const int G = g->H / g->KVH;
    c->chunk = n_batch < 1024 ? n_batch : 1024;
    c->max_split = 256;
    const int64_t kv = (int64_t)g->L * n_seq * KD * n_ctx;
    auto alloc_all = [&]() -> skv_status {
        CK(cudaStreamCreateWithFlags(&c->st, cudaStreamNonBlocking));
        CB(cublasCreate(&c->cb));
        CB(cublasSetStream(c->cb, c->st));
        ALLOC(c->kc, kv);
        ALLOC(c->vc, kv);
        ALLOC(c->x, R * g->D);
        ALLOC(c->xb, R * (g->D > QD ? g->D : QD));
        ALLOC(c->q, R * QD);
        ALLOC(c->qb, R * QD);
        ALLOC(c->qkv, R * (QD + 2 * KD));
        ALLOC(c->att, R * QD);
        ALLOC(c->gu, R * 2 * g->F);
        ALLOC(c->h, R * g->F);
        ALLOC(c->logits, R * g->V);
        ALLOC(c->cosr, (int64_t)n_ctx * g->hd / 2);
        ALLOC(c->sinr, (int64_t)n_ctx * g->hd / 2);
        ALLOC(c->part_o, (int64_t)n_seq * g->H * c->max_split * g->hd);
        ALLOC(c->part_m, (int64_t)n_seq * g->H * c->max_split);
        ALLOC(c->part_l, (int64_t)n_seq * g->H * c->max_split);
        ALLOC(c->S, (int64_t)G * c->chunk * n_ctx);
        ALLOC(c->P, (int64_t)G * c->chunk * n_ctx);
        ALLOC(c->ids_d, R);
        ALLOC(c->pos_d, R);
        ALLOC(c->seq_d, R);
        ALLOC(c->next_d, R);
        ALLOC(c->argkey, R);
        CK(cudaMallocHost((void **)&c->stage, sizeof(int32_t) * 3 * (size_t)R));
        CK(cudaMalloc(&c->cublas_ws, (size_t)32 << 20));
        CB(cublasSetWorkspace(c->cb, c->cublas_ws, (size_t)32 << 20));
        CK(cudaDeviceGetAttribute(&c->sms, cudaDevAttrMultiProcessorCount, 0));
        c->graph = (cudaGraphExec_t *)calloc((size_t)n_seq + 1, sizeof(cudaGraphExec_t));
        const char *ge = getenv("SKV_CUDA_GRAPHS");
        c->use_graphs = !(ge && !strcmp(ge, "0"));
        /* the flash kernel's two shared-memory stages exceed the default 48 KB */
        CK(cudaFuncSetAttribute(k_flash_prefill<128>, cudaFuncAttributeMaxDynamicSharedMemorySize, flash_smem_bytes<128>()));
        CK(cudaFuncSetAttribute(k_flash_prefill<64>, cudaFuncAttributeMaxDynamicSharedMemorySize, flash_smem_bytes<64>()));
        const char *fe = getenv("SKV_CUDA_FLASH"); /* 0: the cuBLAS S/P path (a cross-check) */
        c->use_flash = !(fe && !strcmp(fe, "0"));
        CK(cudaEventCreate(&c->e0));
        CK(cudaEventCreate(&c->e1));
        /* RoPE tables computed as the CPU backend does (float angle, cosf/sinf) */
        const int half = g->hd / 2;
        float *cs = (float *)malloc(sizeof(float) * (size_t)n_ctx * half), *sn = (float *)malloc(sizeof(float) * (size_t)n_ctx * half);
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
        if (st == SKV_ERR_UNSUPPORTED)
            return skv_set_error(SKV_ERR_NOMEM, "CUDA: cannot allocate a context of %d tokens x %d sequences "
                                 "(%.2f GB of KV cache)", n_ctx, n_seq, 2.0 * kv * 2 / 1e9);
        return st;
    }
    *out = c;
    return SKV_OK;
}

extern "C" void skv_gpu_ctx_free(skv_gpu_ctx *c) {
    if (!c) return;
    if (c->st) cudaStreamSynchronize(c->st);
    void *ps[] = {c->kc, c->vc, c->x, c->xb, c->q, c->qb, c->qkv, c->att, c->gu, c->h, c->logits,
                  c->cosr, c->sinr, c->part_o, c->part_m, c->part_l, c->S, c->P, c->ids_d, c->pos_d, c->seq_d, c->next_d, c->argkey};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) cudaFree(ps[i]);
    cudaFree(c->cublas_ws);
    if (c->stage) cudaFreeHost(c->stage);
    for (int i = 0; c->graph && i <= c->n_seq; i++)
        if (c->graph[i]) cudaGraphExecDestroy(c->graph[i]);
    free(c->graph);
    if (c->cb) cublasDestroy(c->cb);
    if (c->e0) cudaEventDestroy(c->e0), cudaEventDestroy(c->e1);
    if (c->st) cudaStreamDestroy(c->st);
    free(c);
}

extern "C" int64_t skv_gpu_ctx_kv_bytes(const skv_gpu_ctx *c, int32_t n_tokens) {
    return (int64_t)c->g->L * c->g->KVH * c->g->hd * 2 * 2 * n_tokens;
}

/* y (n, W.rows) f32 (+)= x (n, W.cols) bf16 . W^T (+ bias) */
static skv_status linear(skv_gpu_ctx *c, const gmat *W, const bf16 *x, float *y, const float *bias, int n, int acc) {
    const int rows = (int)W->rows, cols = (int)W->cols;
    if (n <= GEMV_MAX_B) {
        const int threads = 256, blocks = (rows * 32 + threads - 1) / threads;
        switch (n) {
#define CASE(B) \
    case B: k_gemv<B><<<blocks, threads, 0, c->st>>>(W->w, x, y, bias, rows, cols, acc); break;
            CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
#undef CASE
        }
        LAUNCHED();
        return SKV_OK;
    }
    const float one = 1.0f, beta = acc ? 1.0f : 0.0f;
    CB(cublasGemmEx(c->cb, CUBLAS_OP_T, CUBLAS_OP_N, rows, n, cols, &one, W->w, CUDA_R_16BF, cols, x, CUDA_R_16BF,
                    cols, &beta, y, CUDA_R_32F, rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    if (bias) {
        k_add_bias<<<256, 256, 0, c->st>>>(y, bias, n, rows);
        LAUNCHED();
    }
    return SKV_OK;
}

/* Prefill attention of n query rows (positions pos0..pos0+n-1 of sequence seq) in layer l,
 * chunk by chunk of queries, per KV head: S = Q K^T (cuBLAS, G heads batched), causal softmax,
 * att = P V (cuBLAS). */
static skv_status attn_prefill(skv_gpu_ctx *c, int l, int seq, int pos0, int n) {
    skv_gpu_model *g = c->g;
    const int hd = g->hd, H = g->H, KVH = g->KVH, G = H / KVH;
    if (c->use_flash) {
        const int64_t off = (((int64_t)l * c->n_seq + seq) * KVH) * c->n_ctx * hd;
        const dim3 grid((n + FA_BQ - 1) / FA_BQ, H);
        const float sl2 = 1.4426950408889634f / sqrtf((float)hd);
        if (hd == 128)
            k_flash_prefill<128><<<grid, 128, flash_smem_bytes<128>(), c->st>>>(c->qb, c->kc + off, c->vc + off, c->att, n, H,
                                                                              KVH, c->n_ctx, pos0, sl2);
        else
            k_flash_prefill<64><<<grid, 128, flash_smem_bytes<64>(), c->st>>>(c->qb, c->kc + off, c->vc + off, c->att, n, H,
                                                                            KVH, c->n_ctx, pos0, sl2);
        LAUNCHED();
        return SKV_OK;
    }
    const float scale = 1.0f / sqrtf((float)hd), one = 1.0f, zero = 0.0f;
    for (int c0 = 0; c0 < n; c0 += c->chunk) {
        const int m = n - c0 < c->chunk ? n - c0 : c->chunk, nk = pos0 + c0 + m;
        for (int kv = 0; kv < KVH; kv++) {
            const int64_t off = ((((int64_t)l * c->n_seq + seq) * KVH + kv) * c->n_ctx) * hd;
            const bf16 *K = c->kc + off, *V = c->vc + off;
            const bf16 *Q = c->qb + ((int64_t)c0 * H + kv * G) * hd;
            /* S[j] (m, nk) row-major = (K (nk, hd) . Q_j^T) in column-major terms */
            CB(cublasGemmStridedBatchedEx(c->cb, CUBLAS_OP_T, CUBLAS_OP_N, nk, m, hd, &scale, K, CUDA_R_16BF, hd, 0,
                                          Q, CUDA_R_16BF, H * hd, hd, &zero, c->S, CUDA_R_32F, nk,
                                          (int64_t)m * nk, G, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
            k_softmax_causal<<<dim3(m, G), 256, 0, c->st>>>(c->S, c->P, m, nk, pos0 + c0);
            LAUNCHED();
            bf16 *O = c->att + ((int64_t)c0 * H + kv * G) * hd;
            CB(cublasGemmStridedBatchedEx(c->cb, CUBLAS_OP_N, CUBLAS_OP_N, hd, m, nk, &one, V, CUDA_R_16BF, hd, 0,
                                          c->P, CUDA_R_16BF, nk, (int64_t)m * nk, &zero, O, CUDA_R_16BF, H * hd, hd,
                                          G, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        }
    }
    return SKV_OK;
}

/* Decode attention of n rows (one token each, row r of sequence seq_d[r] at pos_d[r]). */
static skv_status attn_decode(skv_gpu_ctx *c, int l, int n) {
    skv_gpu_model *g = c->g;
    const int hd = g->hd, H = g->H, KVH = g->KVH;
    /* about four waves of blocks on the chip (loads in flight); each block finds its keys from
     * the row's length */
    int n_split = (4 * c->sms + KVH * n - 1) / (KVH * n);
    if (n_split > c->max_split) n_split = c->max_split;
    if (n_split < 1) n_split = 1;
    const int64_t off = (int64_t)l * c->n_seq * KVH * c->n_ctx * hd;
    const dim3 grid(KVH, n_split, n);
    const float scale = 1.0f / sqrtf((float)hd);
#define ATT_ARGS c->q, c->kc + off, c->vc + off, c->pos_d, c->seq_d, c->part_o, c->part_m, c->part_l, H, KVH, c->n_ctx, n_split, scale
#define ATT_G(HD_, G_) \
    case G_: k_attn_decode<HD_, G_><<<grid, ATT_WARPS * 32, 0, c->st>>>(ATT_ARGS); break;
    if (hd == 128) {
        switch (H / KVH) { ATT_G(128, 1) ATT_G(128, 2) ATT_G(128, 3) ATT_G(128, 4) ATT_G(128, 5) ATT_G(128, 6) ATT_G(128, 7) ATT_G(128, 8) }
    } else {
        switch (H / KVH) { ATT_G(64, 1) ATT_G(64, 2) ATT_G(64, 3) ATT_G(64, 4) ATT_G(64, 5) ATT_G(64, 6) ATT_G(64, 7) ATT_G(64, 8) }
    }
#undef ATT_G
#undef ATT_ARGS
    LAUNCHED();
    k_attn_merge<<<dim3(H, n), hd, 0, c->st>>>(c->part_o, c->part_m, c->part_l, c->att, H, hd, n_split);
    LAUNCHED();
    return SKV_OK;
}

/* The layers for n rows. decode: rows are separate sequences (pos_d, seq_d filled); else one
 * sequence `seq` at positions pos0.. */
static skv_status layers(skv_gpu_ctx *c, int n, int decode, int seq, int pos0) {
    skv_gpu_model *g = c->g;
    const int D = g->D, H = g->H, KVH = g->KVH, hd = g->hd;
    const int64_t F = g->F;
    skv_status st;
    k_embed<<<n, 512, 0, c->st>>>(c->ids_d, g->embed.w, c->x, D);
    LAUNCHED();
    for (int l = 0; l < g->L; l++) {
        const glayer *y = &g->layers[l];
        const int64_t koff = (int64_t)l * c->n_seq * KVH * c->n_ctx * hd;
        k_rmsnorm<<<n, 1024, 0, c->st>>>(c->x, y->attn_norm, c->xb, D, g->eps);
        LAUNCHED();
        if ((st = linear(c, &y->wqkv, c->xb, c->qkv, y->bqkv, n, 0))) return st;
        k_rope_store<<<dim3(n, H + KVH), hd / 2, 0, c->st>>>(c->qkv, c->q, c->qb, c->kc + koff, c->vc + koff, c->cosr, c->sinr,
                                           decode ? c->pos_d : NULL, decode ? c->seq_d : NULL, pos0, seq, H, KVH, hd,
                                           c->n_ctx);
        LAUNCHED();
        if ((st = decode ? attn_decode(c, l, n) : attn_prefill(c, l, seq, pos0, n))) return st;
        if ((st = linear(c, &y->wo, c->att, c->x, y->bo, n, 1))) return st;
        k_rmsnorm<<<n, 1024, 0, c->st>>>(c->x, y->ffn_norm, c->xb, D, g->eps);
        LAUNCHED();
        if ((st = linear(c, &y->wgu, c->xb, c->gu, NULL, n, 0))) return st;
        k_swiglu<<<1024, 256, 0, c->st>>>(c->gu, c->h, n, F);
        LAUNCHED();
        if ((st = linear(c, &y->wd, c->h, c->x, NULL, n, 1))) return st;
    }
    return SKV_OK;
}

/* logits of rows [r0, r0 + n) of x */
static skv_status head(skv_gpu_ctx *c, int r0, int n) {
    skv_gpu_model *g = c->g;
    k_rmsnorm<<<n, 1024, 0, c->st>>>(c->x + (int64_t)r0 * g->D, g->final_norm, c->xb, g->D, g->eps);
    LAUNCHED();
    return linear(c, &g->lm_head, c->xb, c->logits, NULL, n, 0);
}

/* One decode step of n rows whose ids, positions and sequences are in c->stage: copies them
 * up, then runs layers + head + argmax, replaying a captured graph per n. */
static skv_status decode_step(skv_gpu_ctx *c, int n) {
    const int64_t R = c->rows_max;
    CK(cudaMemcpyAsync(c->ids_d, c->stage, sizeof(int32_t) * (size_t)n, cudaMemcpyHostToDevice, c->st));
    CK(cudaMemcpyAsync(c->pos_d, c->stage + R, sizeof(int32_t) * (size_t)n, cudaMemcpyHostToDevice, c->st));
    CK(cudaMemcpyAsync(c->seq_d, c->stage + 2 * R, sizeof(int32_t) * (size_t)n, cudaMemcpyHostToDevice, c->st));
    auto body = [&]() -> skv_status {
        skv_status st;
        if ((st = layers(c, n, 1, 0, 0)) || (st = head(c, 0, n))) return st;
        CK(cudaMemsetAsync(c->argkey, 0, sizeof(unsigned long long) * (size_t)n, c->st));
        k_argmax<<<dim3(32, n), 256, 0, c->st>>>(c->logits, c->g->V, c->argkey);
        LAUNCHED();
        k_argmax_ids<<<(n + 127) / 128, 128, 0, c->st>>>(c->argkey, c->next_d, n);
        LAUNCHED();
        return SKV_OK;
    };
    if (!c->use_graphs) return body();
    if (!c->graph[n]) {
        cudaGraph_t gr;
        CK(cudaStreamBeginCapture(c->st, cudaStreamCaptureModeThreadLocal));
        skv_status st = body();
        cudaError_t e = cudaStreamEndCapture(c->st, &gr);
        if (st) return st;
        CK(e);
        e = cudaGraphInstantiate(&c->graph[n], gr, 0);
        cudaGraphDestroy(gr);
        CK(e);
    }
    CK(cudaGraphLaunch(c->graph[n], c->st));
    return SKV_OK;
}

extern "C" skv_status skv_gpu_forward(skv_gpu_ctx *c, int32_t seq, const int32_t *ids, int32_t n, int32_t pos0,
                                      float *logits, int all) {
    skv_gpu_model *g = c->g;
    if (n < 1 || n > c->n_batch || seq < 0 || seq >= c->n_seq || pos0 < 0 || pos0 + n > c->n_ctx)
        return skv_set_error(SKV_ERR_RANGE, "CUDA forward: %d tokens at position %d of sequence %d (context %d, "
                             "batch %d, %d sequences)", n, pos0, seq, c->n_ctx, c->n_batch, c->n_seq);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= g->V) return skv_set_error(SKV_ERR_ARG, "token id %d out of range", ids[i]);
    skv_status st;
    if (n == 1) { /* the decode path: one row of sequence seq (logits computed on the way) */
        c->stage[0] = ids[0], c->stage[c->rows_max] = pos0, c->stage[2 * c->rows_max] = seq;
        if ((st = decode_step(c, 1))) return st;
        if (logits)
            CK(cudaMemcpyAsync(logits, c->logits, sizeof(float) * (size_t)g->V, cudaMemcpyDeviceToHost, c->st));
        CK(cudaStreamSynchronize(c->st));
        return SKV_OK;
    }
    CK(cudaMemcpyAsync(c->ids_d, ids, sizeof(int32_t) * (size_t)n, cudaMemcpyHostToDevice, c->st));
    if ((st = layers(c, n, 0, seq, pos0))) return st;
    if (logits) {
        const int r0 = all ? 0 : n - 1, nr = all ? n : 1;
        if ((st = head(c, r0, nr))) return st;
        CK(cudaMemcpyAsync(logits, c->logits, sizeof(float) * (size_t)nr * g->V, cudaMemcpyDeviceToHost, c->st));
    }
    CK(cudaStreamSynchronize(c->st));
    return SKV_OK;
}

extern "C" skv_status skv_gpu_decode_batch(skv_gpu_ctx *c, const int32_t *ids, const int32_t *pos, int32_t n,
                                           float *logits, int32_t *next) {
    skv_gpu_model *g = c->g;
    if (n < 1 || n > c->n_seq) return skv_set_error(SKV_ERR_RANGE, "CUDA decode: %d sequences (context has %d)", n, c->n_seq);
    for (int i = 0; i < n; i++)
        if (pos[i] < 0 || pos[i] >= c->n_ctx || ids[i] < 0 || ids[i] >= g->V)
            return skv_set_error(SKV_ERR_RANGE, "CUDA decode: sequence %d: id %d at position %d (context %d)", i, ids[i],
                                 pos[i], c->n_ctx);
    CK(cudaStreamSynchronize(c->st)); /* the staging buffer is free */
    for (int i = 0; i < n; i++)
        c->stage[i] = ids[i], c->stage[c->rows_max + i] = pos[i], c->stage[2 * c->rows_max + i] = i;
    skv_status st = decode_step(c, n);
    if (st) return st;
    if (next) CK(cudaMemcpyAsync(next, c->next_d, sizeof(int32_t) * (size_t)n, cudaMemcpyDeviceToHost, c->st));
    if (logits) CK(cudaMemcpyAsync(logits, c->logits, sizeof(float) * (size_t)n * g->V, cudaMemcpyDeviceToHost, c->st));
    CK(cudaStreamSynchronize(c->st));
    CK(cudaGetLastError());
    return SKV_OK;
}

extern "C" skv_status skv_gpu_ctx_copy(skv_gpu_ctx *dst, const skv_gpu_ctx *src, int32_t n_tokens) {
    const skv_gpu_model *g = src->g;
    if (dst->g != g || n_tokens > dst->n_ctx || n_tokens > src->n_ctx)
        return skv_set_error(SKV_ERR_ARG, "CUDA context copy: different models or too short a destination");
    CK(cudaStreamSynchronize(src->st));
    const size_t row = (size_t)g->hd * sizeof(bf16);
    for (int l = 0; l < g->L; l++)
        for (int kv = 0; kv < g->KVH; kv++) {
            const int64_t so = (((int64_t)l * src->n_seq) * g->KVH + kv) * src->n_ctx * g->hd;
            const int64_t d0 = (((int64_t)l * dst->n_seq) * g->KVH + kv) * dst->n_ctx * g->hd;
            CK(cudaMemcpyAsync(dst->kc + d0, src->kc + so, row * (size_t)n_tokens, cudaMemcpyDeviceToDevice, dst->st));
            CK(cudaMemcpyAsync(dst->vc + d0, src->vc + so, row * (size_t)n_tokens, cudaMemcpyDeviceToDevice, dst->st));
        }
    CK(cudaStreamSynchronize(dst->st));
    return SKV_OK;
}

extern "C" skv_status skv_gpu_sync(skv_gpu_ctx *c) {
    CK(cudaStreamSynchronize(c->st));
    CK(cudaGetLastError());
    return SKV_OK;
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

extern "C" skv_status skv_gpu_copy_bandwidth(int64_t bytes, double *bps) {
    void *a = NULL, *b = NULL;
    CK(cudaMalloc(&a, (size_t)bytes));
    CK(cudaMalloc(&b, (size_t)bytes));
    CK(cudaMemset(a, 1, (size_t)bytes));
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0), cudaEventCreate(&e1);
    float best = 1e30f;
    for (int i = 0; i < 10; i++) {
        cudaEventRecord(e0);
        cudaMemcpy(b, a, (size_t)bytes, cudaMemcpyDeviceToDevice);
        cudaEventRecord(e1);
        cudaEventSynchronize(e1);
        float ms;
        cudaEventElapsedTime(&ms, e0, e1);
        if (ms < best) best = ms;
    }
    cudaEventDestroy(e0), cudaEventDestroy(e1);
    cudaFree(a), cudaFree(b);
    *bps = 2.0 * (double)bytes / (best * 1e-3);
    return SKV_OK;
}
