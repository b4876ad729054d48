/*
 * gpu_scd.cu — SCD's consumer rebuild on the device (see gpu.h): the maps' consumer side in f32,
 * per layer the codes uploaded, decoded by cuBLAS (f32 GEMMs, as the CPU's OpenBLAS), patch
 * layers through the aligner and the model's own k/v rows of wqkv (bf16, as the forward), RoPE
 * applied from the context's tables while the rows are written as bf16 into the paged cache.
 */
#include "backend/cuda/gpu_ctx.cuh"
#include "backend/cuda/gpu_device.cuh"

struct dpart {
    int r;
    float *dec, *mub, *skip, *b2, *w1, *b1, *w2;
};

struct skv_gpu_scd {
    int L, KD, D, HID, rmax;
    dpart *k, *v, *h;       /* host arrays of device pointers */
    int64_t cap;            /* rows the scratch holds */
    float *z, *y, *a;       /* (cap, rmax), (cap, max(D, 2 KD)), (cap, max(HID, 2 KD)) */
    bf16 *zb;               /* (cap, rmax): codes as they arrived in bf16 */
    bf16 *hb;               /* (cap, D) */
};

static skv_status up(float **dst, const float *src, int64_t n) {
    *dst = NULL;
    if (!src) return SKV_OK;
    CK(cudaMalloc((void **)dst, sizeof(float) * (size_t)n));
    CK(cudaMemcpy(*dst, src, sizeof(float) * (size_t)n, cudaMemcpyHostToDevice));
    return SKV_OK;
}

extern "C" void skv_gpu_scd_free(skv_gpu_scd *s) {
    if (!s) return;
    for (int p = 0; p < 3; p++) {
        dpart *x = p == 0 ? s->k : p == 1 ? s->v : s->h;
        for (int l = 0; x && l < s->L; l++) {
            float *ptrs[] = {x[l].dec, x[l].mub, x[l].skip, x[l].b2, x[l].w1, x[l].b1, x[l].w2};
            for (float *q : ptrs) cudaFree(q);
        }
        free(x);
    }
    cudaFree(s->z), cudaFree(s->y), cudaFree(s->a), cudaFree(s->hb), cudaFree(s->zb);
    free(s);
}

extern "C" skv_status skv_gpu_scd_upload(const skv_codes_desc *d, skv_gpu_scd **out) {
    *out = NULL;
    skv_gpu_scd *s = (skv_gpu_scd *)calloc(1, sizeof *s);
    if (!s) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    s->L = d->n_layer, s->KD = d->kv_dim, s->D = d->dim, s->HID = d->hidden;
    s->k = (dpart *)calloc((size_t)s->L, sizeof(dpart)), s->v = (dpart *)calloc((size_t)s->L, sizeof(dpart));
    s->h = (dpart *)calloc((size_t)s->L, sizeof(dpart));
    skv_status st = (!s->k || !s->v || !s->h) ? skv_set_error(SKV_ERR_NOMEM, "out of memory") : SKV_OK;
    const int64_t KD = s->KD, D = s->D, HID = s->HID;
    for (int l = 0; l < s->L && !st; l++) {
        for (int p = 0; p < 2 && !st; p++) {
            const skv_codes_part *q = p ? &d->v[l] : &d->k[l];
            dpart *x = p ? &s->v[l] : &s->k[l];
            x->r = q->r, s->rmax = s->rmax > q->r ? s->rmax : q->r;
            if (!(st = up(&x->dec, q->dec, (int64_t)q->r * KD))) st = up(&x->mub, q->mub, KD);
        }
        const skv_codes_part *q = &d->h[l];
        dpart *x = &s->h[l];
        x->r = q->r, s->rmax = s->rmax > q->r ? s->rmax : q->r;
        if (!st) st = up(&x->skip, q->skip, (int64_t)q->r * D);
        if (!st) st = up(&x->b2, q->b2, D);
        if (!st && q->w1 && HID) {
            if (!(st = up(&x->w1, q->w1, (int64_t)q->r * HID)) && !(st = up(&x->b1, q->b1, HID)))
                st = up(&x->w2, q->w2, HID * D);
        }
    }
    if (st) {
        skv_gpu_scd_free(s);
        cudaGetLastError();
        return st;
    }
    *out = s;
    return SKV_OK;
}

/* y (n, c) = bias rows (or zeros) */
static __global__ void k_rows_bias(float *y, const float *bias, int64_t n, int c) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n * c; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = bias ? bias[i % c] : 0.0f;
}
static __global__ void k_add_bias_scd(float *y, const float *bias, int64_t n, int c) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n * c; i += (int64_t)gridDim.x * blockDim.x)
        y[i] += bias[i % c];
}
static __global__ void k_silu(float *a, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        a[i] = a[i] / (1.0f + expf(-a[i]));
}
static __global__ void k_from_bf16(const bf16 *x, float *y, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = __bfloat162float(x[i]);
}
static __global__ void k_to_bf16(const float *x, bf16 *y, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = __float2bfloat16(x[i]);
}

/* Rows x (n, stride; the KVH * hd values of row t from column 0) into slot t of the streams
 * sid0 + g of a pool, RoPE'd at position t when rope; block (t, g), threads over hd/2 pairs. */
static __global__ void k_scd_store(const float *x, int64_t stride, bf16 *pool, const int32_t *bt, int sid0, int mb,
                                   int hd, const float *cosr, const float *sinr, int rope) {
    const int t = blockIdx.x, g = blockIdx.y, half = hd / 2;
    const float *xr = x + t * stride + (int64_t)g * hd;
    const int64_t o = slot_row(bt + (int64_t)(sid0 + g) * mb, t) * hd;
    for (int j = threadIdx.x; j < half; j += blockDim.x) {
        float a = xr[j], b = xr[j + half];
        if (rope) {
            const float cs = cosr[(int64_t)t * half + j], sn = sinr[(int64_t)t * half + j];
            const float na = a * cs - b * sn, nb = b * cs + a * sn;
            a = na, b = nb;
        }
        pool[o + j] = __float2bfloat16(a);
        pool[o + j + half] = __float2bfloat16(b);
    }
}

/* row-major y (n, c) (+)= x (n, k) w (k, c), f32 */
static skv_status sgemm(cublasHandle_t cb, const float *x, const float *w, float *y, int n, int k, int c, float beta) {
    const float one = 1.0f;
    CB(cublasSgemm(cb, CUBLAS_OP_N, CUBLAS_OP_N, c, n, k, &one, w, c, x, k, &beta, y, c));
    return SKV_OK;
}

static skv_status scratch(skv_gpu_scd *s, int64_t n) {
    if (n <= s->cap) return SKV_OK;
    cudaFree(s->z), cudaFree(s->y), cudaFree(s->a), cudaFree(s->hb), cudaFree(s->zb);
    s->z = s->y = s->a = NULL, s->hb = s->zb = NULL, s->cap = 0;
    const int64_t wy = s->D > 2 * s->KD ? s->D : 2 * s->KD, wa = s->HID > 2 * s->KD ? s->HID : 2 * s->KD;
    CK(cudaMalloc((void **)&s->z, sizeof(float) * (size_t)(n * s->rmax)));
    CK(cudaMalloc((void **)&s->y, sizeof(float) * (size_t)(n * wy)));
    CK(cudaMalloc((void **)&s->a, sizeof(float) * (size_t)(n * wa)));
    CK(cudaMalloc((void **)&s->hb, sizeof(bf16) * (size_t)(n * s->D)));
    CK(cudaMalloc((void **)&s->zb, sizeof(bf16) * (size_t)(n * s->rmax)));
    s->cap = n;
    return SKV_OK;
}

extern "C" skv_status skv_gpu_scd_layer(skv_gpu_ctx *c, skv_gpu_scd *s, int32_t layer, int part, const void *z, int z_bf16,
                                        int32_t n) {
    const skv_gpu_model *g = c->g;
    if (c->kc) return skv_set_error(SKV_ERR_UNSUPPORTED, "SCD rebuild on CUDA: not into a KCache context");
    if (c->kv_bits) return skv_set_error(SKV_ERR_UNSUPPORTED, "SCD rebuild on CUDA: not into a KIVI (int8/int4) cache");
    if (g->CL != g->L || layer < 0 || layer >= g->L || layer >= s->L)
        return skv_set_error(SKV_ERR_ARG, "SCD rebuild on CUDA: layer %d of %d (maps: %d; models sharing KV refused)", layer,
                             g->L, s->L);
    if (s->KD != g->KVH * g->hd || s->D != g->D)
        return skv_set_error(SKV_ERR_SHAPE, "SCD rebuild on CUDA: maps for kv_dim %d, dim %d; the model has %d, %d", s->KD,
                             s->D, g->KVH * g->hd, g->D);
    if (part < SKV_CODES_K || part > SKV_CODES_H) return skv_set_error(SKV_ERR_ARG, "SCD rebuild on CUDA: part %d", part);
    if (n <= 0 || n > c->n_ctx) return skv_set_error(SKV_ERR_RANGE, "SCD rebuild on CUDA: %d rows, the context holds %d", n, c->n_ctx);
    const int sid0 = sid_of(c, layer, 0, 0);
    if (c->h_n[sid0] != 0) return skv_set_error(SKV_ERR_ARG, "SCD rebuild on CUDA: sequence 0 is not empty");
    skv_status st = gpu_cache_reserve(c, 0, n);
    if (st || (st = gpu_cache_upload(c)) || (st = scratch(s, n))) return st;
    const dpart *p = part == SKV_CODES_K ? &s->k[layer] : part == SKV_CODES_V ? &s->v[layer] : &s->h[layer];
    const int KD = s->KD, D = s->D, HID = s->HID, r = p->r;
    if (z_bf16) { /* half the bytes over PCIe, widened here */
        CK(cudaMemcpyAsync(s->zb, z, sizeof(bf16) * (size_t)n * r, cudaMemcpyHostToDevice, c->st));
        k_from_bf16<<<512, 256, 0, c->st>>>(s->zb, s->z, (int64_t)n * r);
        LAUNCHED();
    } else {
        CK(cudaMemcpyAsync(s->z, z, sizeof(float) * (size_t)n * r, cudaMemcpyHostToDevice, c->st));
    }
    const dim3 sg(n, g->KVH);
    const int th = g->hd / 2 < 128 ? g->hd / 2 : 128;
    if (part != SKV_CODES_H) {
        k_rows_bias<<<512, 256, 0, c->st>>>(s->y, p->mub, n, KD);
        LAUNCHED();
        if ((st = sgemm(c->cb, s->z, p->dec, s->y, n, r, KD, 1.0f))) return st;
        k_scd_store<<<sg, th, 0, c->st>>>(s->y, KD, part == SKV_CODES_K ? c->kpool : c->vpool, c->bt, sid0, c->mb, g->hd,
                                          c->cosr, c->sinr, part == SKV_CODES_K);
        LAUNCHED();
    } else {
        k_rows_bias<<<512, 256, 0, c->st>>>(s->y, p->b2, n, D);
        LAUNCHED();
        if ((st = sgemm(c->cb, s->z, p->skip, s->y, n, r, D, 1.0f))) return st;
        if (p->w1) {
            k_rows_bias<<<512, 256, 0, c->st>>>(s->a, p->b1, n, HID);
            LAUNCHED();
            if ((st = sgemm(c->cb, s->z, p->w1, s->a, n, r, HID, 1.0f))) return st;
            k_silu<<<512, 256, 0, c->st>>>(s->a, (int64_t)n * HID);
            LAUNCHED();
            if ((st = sgemm(c->cb, s->a, p->w2, s->y, n, HID, D, 1.0f))) return st;
        }
        k_to_bf16<<<512, 256, 0, c->st>>>(s->y, s->hb, (int64_t)n * D);
        LAUNCHED();
        /* k and v rows of the stacked projection: rows QD .. QD + 2 KD of wqkv */
        const glayer *y = &g->layers[layer];
        const int64_t QD = (int64_t)g->H * g->hd;
        const float one = 1.0f, zero = 0.0f;
        CB(cublasGemmEx(c->cb, CUBLAS_OP_T, CUBLAS_OP_N, 2 * KD, n, D, &one, y->wqkv.w + QD * D, CUDA_R_16BF, D, s->hb,
                        CUDA_R_16BF, D, &zero, s->a, CUDA_R_32F, 2 * KD, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        if (y->bqkv) {
            k_add_bias_scd<<<512, 256, 0, c->st>>>(s->a, y->bqkv + QD, n, 2 * KD);
            LAUNCHED();
        }
        k_scd_store<<<sg, th, 0, c->st>>>(s->a, 2 * KD, c->kpool, c->bt, sid0, c->mb, g->hd, c->cosr, c->sinr, 1);
        LAUNCHED();
        k_scd_store<<<sg, th, 0, c->st>>>(s->a + KD, 2 * KD, c->vpool, c->bt, sid0, c->mb, g->hd, c->cosr, c->sinr, 0);
        LAUNCHED();
    }
    /* z is pageable host memory the caller may reuse: the copy has completed; the kernels need
     * not (the next call orders after them on the same stream) */
    return SKV_OK;
}

static __global__ void k_scd_finish(int32_t *slen, int32_t *spos, float *sacc, float *swin, float *slast, int n_seq, int KVH,
                                    int n_ctx, int n) {
    const int l = blockIdx.x / KVH, g = blockIdx.x % KVH, sid = (l * n_seq) * KVH + g;
    for (int t = threadIdx.x; t < n; t += blockDim.x) {
        spos[(int64_t)sid * n_ctx + t] = t;
        if (sacc) sacc[(int64_t)sid * n_ctx + t] = 0;
        if (swin) swin[(int64_t)sid * n_ctx + t] = 0;
        if (slast) slast[(int64_t)sid * n_ctx + t] = 0;
    }
    if (threadIdx.x == 0) slen[sid] = n;
}

extern "C" skv_status skv_gpu_scd_finish(skv_gpu_ctx *c, int32_t n) {
    const skv_gpu_model *g = c->g;
    if (n <= 0 || n > c->n_ctx) return skv_set_error(SKV_ERR_RANGE, "SCD rebuild on CUDA: %d rows, the context holds %d", n, c->n_ctx);
    /* that every layer got its parts is the caller's check (method/scd_pipe.c); here, that the
     * blocks for n rows are there */
    if (c->h_nb[sid_of(c, 0, 0, 0)] * BLK < n || c->h_n[sid_of(c, 0, 0, 0)] != 0)
        return skv_set_error(SKV_ERR_ARG, "SCD rebuild on CUDA: no layer of %d rows was rebuilt into an empty sequence", n);
    k_scd_finish<<<g->CL * g->KVH, 256, 0, c->st>>>(c->slen, c->spos, c->sacc, c->swin, c->slast, c->n_seq, g->KVH, c->n_ctx, n);
    LAUNCHED();
    CK(cudaStreamSynchronize(c->st));
    for (int l = 0; l < g->CL; l++)
        for (int k = 0; k < g->KVH; k++) c->h_n[sid_of(c, l, 0, k)] = n;
    c->h_next[0] = n;
    return SKV_OK;
}
