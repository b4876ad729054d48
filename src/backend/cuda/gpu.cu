/*
 * gpu.cu — the CUDA backend (see gpu.h): weight upload, kernels, and the forward pass.
 *
 * Shapes (row-major): x (rows, dim) f32 residual; xb (rows, max(dim, q_dim)) bf16 matrix input;
 * q (rows, H*hd) f32; k, v (rows, KVH*hd) f32; att (rows, H*hd) bf16; gate, up (rows, ffn) f32;
 * h (rows, ffn) bf16; logits (rows, vocab) f32. KV cache: (layer, seq, KVH, n_ctx, hd) bf16.
 */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/gpu.h"

extern "C" skv_status skv_set_error(skv_status st, const char *fmt, ...);

typedef __nv_bfloat16 bf16;

#define GEMV_MAX_B 8   /* rows up to this go through the own GEMV, more through cuBLAS */
#define ATT_WARPS 4
#define G_MAX 8        /* query heads per KV head the decode kernel holds in registers */

static skv_status cuda_fail(cudaError_t e, const char *what, int line) {
    return skv_set_error(SKV_ERR_UNSUPPORTED, "CUDA: %s failed (gpu.cu:%d): %s", what, line, cudaGetErrorString(e));
}
static skv_status cublas_fail(cublasStatus_t e, const char *what, int line) {
    return skv_set_error(SKV_ERR_UNSUPPORTED, "cuBLAS: %s failed (gpu.cu:%d): status %d", what, line, (int)e);
}
#define CK(x)                                                   \
    do {                                                        \
        cudaError_t e_ = (x);                                   \
        if (e_ != cudaSuccess) return cuda_fail(e_, #x, __LINE__); \
    } while (0)
#define CB(x)                                                        \
    do {                                                             \
        cublasStatus_t e_ = (x);                                     \
        if (e_ != CUBLAS_STATUS_SUCCESS) return cublas_fail(e_, #x, __LINE__); \
    } while (0)
#define LAUNCHED() CK(cudaGetLastError())

/* ------------------------------------------------------------------------------------------ */
/* Model                                                                                        */

struct gmat {
    bf16 *w; /* (rows, cols) */
    int64_t rows, cols;
};

struct glayer {
    float *attn_norm, *ffn_norm;
    float *bqkv, *bo;  /* (QD + 2 KD) with zeros for absent parts, or NULL; (dim) or NULL */
    gmat wqkv;         /* (QD + 2 KD, dim): q, k and v projections stacked, one GEMV */
    gmat wo;
    gmat wgu;          /* (2 ffn, dim): gate then up, one GEMV */
    gmat wd;
};

struct skv_gpu_model {
    int32_t L, D, H, KVH, hd, F, V;
    float eps;
    float *inv_freq_h; /* host copy (hd/2) */
    glayer *layers;    /* host array of device pointers */
    gmat embed, lm_head;
    int tied;
    float *final_norm;
    int64_t bytes;
};

__global__ void k_f32_to_bf16(const float *in, bf16 *out, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = __float2bfloat16(in[i]);
}
__global__ void k_f16_to_bf16(const __half *in, bf16 *out, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = __float2bfloat16(__half2float(in[i]));
}

/* Upload a matrix as bf16 into dst (device, rows*cols) through a staging buffer. */
static skv_status upload_into(const skv_gpu_mat *m, bf16 *dst, void *stage, size_t stage_bytes) {
    const int64_t n = m->rows * m->cols;
    gmat tmp = {dst, m->rows, m->cols};
    gmat *out = &tmp;
    if (m->dtype == SKV_DTYPE_BF16) {
        CK(cudaMemcpy(out->w, m->data, (size_t)n * sizeof(bf16), cudaMemcpyHostToDevice));
        return SKV_OK;
    }
    const size_t esz = m->dtype == SKV_DTYPE_F32 ? 4 : 2;
    const int64_t per = (int64_t)(stage_bytes / esz);
    for (int64_t off = 0; off < n; off += per) {
        const int64_t k = n - off < per ? n - off : per;
        CK(cudaMemcpy(stage, (const char *)m->data + off * esz, (size_t)k * esz, cudaMemcpyHostToDevice));
        if (m->dtype == SKV_DTYPE_F32) k_f32_to_bf16<<<1024, 256>>>((const float *)stage, out->w + off, k);
        else k_f16_to_bf16<<<1024, 256>>>((const __half *)stage, out->w + off, k);
        LAUNCHED();
    }
    CK(cudaDeviceSynchronize());
    return SKV_OK;
}

/* Upload k matrices of equal cols stacked by rows into one bf16 matrix. */
static skv_status upload_stack(const skv_gpu_mat *const *ms, int k, gmat *out, void *stage, size_t stage_bytes,
                               int64_t *bytes) {
    int64_t rows = 0;
    for (int i = 0; i < k; i++) rows += ms[i]->rows;
    out->rows = rows, out->cols = ms[0]->cols;
    CK(cudaMalloc(&out->w, (size_t)(rows * out->cols) * sizeof(bf16)));
    *bytes += rows * out->cols * (int64_t)sizeof(bf16);
    int64_t r0 = 0;
    for (int i = 0; i < k; i++) {
        skv_status st = upload_into(ms[i], out->w + r0 * out->cols, stage, stage_bytes);
        if (st) return st;
        r0 += ms[i]->rows;
    }
    return SKV_OK;
}

static skv_status upload_mat(const skv_gpu_mat *m, gmat *out, void *stage, size_t stage_bytes, int64_t *bytes) {
    return upload_stack(&m, 1, out, stage, stage_bytes, bytes);
}

static skv_status upload_vec(const float *h, int64_t n, float **out, int64_t *bytes) {
    *out = NULL;
    if (!h) return SKV_OK;
    CK(cudaMalloc(out, (size_t)n * sizeof(float)));
    CK(cudaMemcpy(*out, h, (size_t)n * sizeof(float), cudaMemcpyHostToDevice));
    *bytes += n * 4;
    return SKV_OK;
}

extern "C" int skv_gpu_available(void) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        skv_set_error(SKV_ERR_UNSUPPORTED, "no CUDA device: %s", e != cudaSuccess ? cudaGetErrorString(e) : "none found");
        return 0;
    }
    return 1;
}

extern "C" skv_status skv_gpu_model_load(const skv_gpu_model_desc *d, skv_gpu_model **out) {
    *out = NULL;
    if (!skv_gpu_available()) return SKV_ERR_UNSUPPORTED;
    if (d->head_dim != 64 && d->head_dim != 128)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "CUDA backend: head_dim %d (64 and 128 are built)", d->head_dim);
    if (d->n_head / d->n_kv_head > G_MAX)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "CUDA backend: %d query heads per KV head (at most %d)",
                             d->n_head / d->n_kv_head, G_MAX);
    if (d->dim % 8 || d->ffn_dim % 8)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "CUDA backend: dim and ffn_dim must be multiples of 8");
    skv_gpu_model *g = (skv_gpu_model *)calloc(1, sizeof *g);
    g->L = d->n_layer, g->D = d->dim, g->H = d->n_head, g->KVH = d->n_kv_head, g->hd = d->head_dim;
    g->F = d->ffn_dim, g->V = d->n_vocab, g->eps = d->rms_eps;
    g->inv_freq_h = (float *)malloc(sizeof(float) * (size_t)(g->hd / 2));
    memcpy(g->inv_freq_h, d->rope_inv_freq, sizeof(float) * (size_t)(g->hd / 2));
    g->layers = (glayer *)calloc((size_t)g->L, sizeof(glayer));
    const size_t stage_bytes = (size_t)64 << 20;
    void *stage = NULL;
    skv_status st = SKV_OK;
    if (cudaMalloc(&stage, stage_bytes) != cudaSuccess) {
        skv_gpu_model_free(g);
        return skv_set_error(SKV_ERR_NOMEM, "CUDA: cannot allocate the upload buffer");
    }
    const int64_t qd = (int64_t)g->H * g->hd, kd = (int64_t)g->KVH * g->hd;
    for (int l = 0; l < g->L && !st; l++) {
        const skv_gpu_layer_desc *s = &d->layers[l];
        glayer *y = &g->layers[l];
        const skv_gpu_mat *qkv[3] = {&s->wq, &s->wk, &s->wv}, *gu[2] = {&s->w_gate, &s->w_up};
        if ((st = upload_vec(s->attn_norm, g->D, &y->attn_norm, &g->bytes)) ||
            (st = upload_vec(s->ffn_norm, g->D, &y->ffn_norm, &g->bytes)) ||
            (st = upload_vec(s->bo, g->D, &y->bo, &g->bytes)) ||
            (st = upload_stack(qkv, 3, &y->wqkv, stage, stage_bytes, &g->bytes)) ||
            (st = upload_mat(&s->wo, &y->wo, stage, stage_bytes, &g->bytes)) ||
            (st = upload_stack(gu, 2, &y->wgu, stage, stage_bytes, &g->bytes)) ||
            (st = upload_mat(&s->w_down, &y->wd, stage, stage_bytes, &g->bytes)))
            break;
        if (s->bq || s->bk || s->bv) { /* stacked bias, zeros where a part has none */
            float *b = (float *)calloc((size_t)(qd + 2 * kd), sizeof(float));
            if (s->bq) memcpy(b, s->bq, sizeof(float) * (size_t)qd);
            if (s->bk) memcpy(b + qd, s->bk, sizeof(float) * (size_t)kd);
            if (s->bv) memcpy(b + qd + kd, s->bv, sizeof(float) * (size_t)kd);
            st = upload_vec(b, qd + 2 * kd, &y->bqkv, &g->bytes);
            free(b);
            if (st) break;
        }
    }
    if (!st) st = upload_mat(&d->tok_embed, &g->embed, stage, stage_bytes, &g->bytes);
    if (!st) {
        g->tied = d->lm_head.data == d->tok_embed.data;
        if (g->tied) g->lm_head = g->embed;
        else st = upload_mat(&d->lm_head, &g->lm_head, stage, stage_bytes, &g->bytes);
    }
    if (!st) st = upload_vec(d->final_norm, g->D, &g->final_norm, &g->bytes);
    cudaFree(stage);
    if (st) {
        skv_gpu_model_free(g);
        return st;
    }
    *out = g;
    return SKV_OK;
}

extern "C" void skv_gpu_model_free(skv_gpu_model *g) {
    if (!g) return;
    for (int l = 0; g->layers && l < g->L; l++) {
        glayer *y = &g->layers[l];
        cudaFree(y->attn_norm), cudaFree(y->ffn_norm), cudaFree(y->bqkv), cudaFree(y->bo);
        cudaFree(y->wqkv.w), cudaFree(y->wo.w), cudaFree(y->wgu.w), cudaFree(y->wd.w);
    }
    cudaFree(g->embed.w);
    if (!g->tied) cudaFree(g->lm_head.w);
    cudaFree(g->final_norm);
    free(g->layers);
    free(g->inv_freq_h);
    free(g);
}

extern "C" int64_t skv_gpu_model_bytes(const skv_gpu_model *g) { return g->bytes; }

/* ------------------------------------------------------------------------------------------ */
/* Kernels                                                                                      */

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ void bf16x8_to_f32(uint4 u, float *f) {
    const __nv_bfloat162 *p = (const __nv_bfloat162 *)&u;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 t = __bfloat1622float2(p[i]);
        f[2 * i] = t.x, f[2 * i + 1] = t.y;
    }
}

/* x[r] = embed[ids[r]] */
__global__ void k_embed(const int32_t *ids, const bf16 *E, float *x, int D) {
    const int r = blockIdx.x;
    const bf16 *e = E + (int64_t)ids[r] * D;
    for (int i = threadIdx.x * 8; i < D; i += blockDim.x * 8) { /* D % 8 == 0 */
        float f[8];
        bf16x8_to_f32(*(const uint4 *)(e + i), f);
        float4 *o = (float4 *)(x + (int64_t)r * D + i);
        o[0] = make_float4(f[0], f[1], f[2], f[3]);
        o[1] = make_float4(f[4], f[5], f[6], f[7]);
    }
}

/* out[r] (bf16) = w * x[r] / rms(x[r]); one block per row, D % 4 == 0, every load issued
 * before the first use (one memory round trip for D <= 4 * blockDim) */
__global__ void k_rmsnorm(const float *x, const float *w, bf16 *out, int D, float eps) {
    const int r = blockIdx.x;
    const float *xr = x + (int64_t)r * D;
    float ss = 0;
    for (int i = threadIdx.x * 4; i < D; i += blockDim.x * 4) {
        const float4 v = *(const float4 *)(xr + i);
        ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
    __shared__ float red[32];
    ss = warp_sum(ss);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        float v = threadIdx.x < (blockDim.x + 31) / 32 ? red[threadIdx.x] : 0;
        v = warp_sum(v);
        if (threadIdx.x == 0) red[0] = v;
    }
    __syncthreads();
    const float s = rsqrtf(red[0] / (float)D + eps);
    for (int i = threadIdx.x * 4; i < D; i += blockDim.x * 4) {
        const float4 v = *(const float4 *)(xr + i), g = *(const float4 *)(w + i);
        __nv_bfloat162 *o = (__nv_bfloat162 *)(out + (int64_t)r * D + i);
        o[0] = __floats2bfloat162_rn(g.x * (v.x * s), g.y * (v.y * s));
        o[1] = __floats2bfloat162_rn(g.z * (v.z * s), g.w * (v.w * s));
    }
}

/* y[b, r] (+)= W[r, :] . x[b, :] + bias[r] for b < B; one warp per row, 16-byte loads. */
template <int B>
__global__ void k_gemv(const bf16 *__restrict__ W, const bf16 *__restrict__ x, float *y, const float *bias,
                       int rows, int cols, int accumulate) {
    const int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (row >= rows) return;
    const uint4 *wr = (const uint4 *)(W + (int64_t)row * cols);
    const int n8 = cols >> 3;
    float acc[B];
#pragma unroll
    for (int b = 0; b < B; b++) acc[b] = 0;
#pragma unroll 4
    for (int i = lane; i < n8; i += 32) {
        float wf[8];
        bf16x8_to_f32(__ldg(wr + i), wf);
#pragma unroll
        for (int b = 0; b < B; b++) {
            float xf[8];
            bf16x8_to_f32(__ldg((const uint4 *)(x + (int64_t)b * cols) + i), xf);
#pragma unroll
            for (int e = 0; e < 8; e++) acc[b] += wf[e] * xf[e];
        }
    }
#pragma unroll
    for (int b = 0; b < B; b++) {
        float v = warp_sum(acc[b]);
        if (lane == 0) {
            if (bias) v += bias[row];
            float *o = y + (int64_t)b * rows + row;
            *o = accumulate ? *o + v : v;
        }
    }
}

/* y[r, c] += bias[c] */
__global__ void k_add_bias(float *y, const float *bias, int64_t rows, int cols) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < rows * cols; i += (int64_t)gridDim.x * blockDim.x)
        y[i] += bias[i % cols];
}

/* From row r of qkv (q | k | v, bias already in): RoPE'd q into q (f32) and qb (bf16), RoPE'd k
 * and v into the cache at (layer base, seq, g, pos). */
__global__ void k_rope_store(const float *qkv, float *q, bf16 *qb, bf16 *kc, bf16 *vc,
                             const float *cosr, const float *sinr, const int32_t *rpos, const int32_t *rseq,
                             int pos0, int seq0, int H, int KVH, int hd, int n_ctx) {
    /* block (row r, head blockIdx.y of H + KVH), threads over the hd/2 rotation pairs */
    const int r = blockIdx.x, half = hd / 2;
    const int64_t QKV = (int64_t)(H + 2 * KVH) * hd;
    const float *qin = qkv + r * QKV, *kin = qin + (int64_t)H * hd, *vin = kin + (int64_t)KVH * hd;
    const int pos = rpos ? rpos[r] : pos0 + r, seq = rseq ? rseq[r] : seq0;
    const float *cs = cosr + (int64_t)pos * half, *sn = sinr + (int64_t)pos * half;
    for (int j = threadIdx.x; j < half; j += blockDim.x) {
        const int head = blockIdx.y;
        if (head < H) {
            const float *qi = qin + (int64_t)head * hd;
            float *qh = q + ((int64_t)r * H + head) * hd;
            const float a = qi[j], b = qi[j + half];
            const float na = a * cs[j] - b * sn[j], nb = b * cs[j] + a * sn[j];
            qh[j] = na, qh[j + half] = nb;
            qb[((int64_t)r * H + head) * hd + j] = __float2bfloat16(na);
            qb[((int64_t)r * H + head) * hd + j + half] = __float2bfloat16(nb);
        } else {
            const int g = head - H;
            const float *kh = kin + (int64_t)g * hd, *vh = vin + (int64_t)g * hd;
            const int64_t o = (((int64_t)seq * KVH + g) * n_ctx + pos) * hd;
            const float a = kh[j], b = kh[j + half];
            kc[o + j] = __float2bfloat16(a * cs[j] - b * sn[j]);
            kc[o + j + half] = __float2bfloat16(b * cs[j] + a * sn[j]);
            vc[o + j] = __float2bfloat16(vh[j]);
            vc[o + j + half] = __float2bfloat16(vh[j + half]);
        }
    }
}

/* h (rows, F) = silu(gate) * up as bf16, from gu (rows, 2F) = gate | up */
__global__ void k_swiglu(const float *gu, bf16 *h, int64_t rows, int64_t F) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < rows * F; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / F, j = i % F;
        const float g = gu[r * 2 * F + j];
        h[i] = __float2bfloat16(g / (1.0f + __expf(-g)) * gu[r * 2 * F + F + j]);
    }
}

/* Split-K decode attention. Block (g, split, row): the G query heads of KV head g against keys
 * [split * split_len, ...) of row r's sequence (keys 0..pos). Lanes in groups of hd/8 read one
 * key row with 16-byte loads; online softmax per group, merged in shared memory. Writes the
 * split's (max, sum, unnormalised output). */
template <int HD, int G>
__global__ void __launch_bounds__(ATT_WARPS * 32)
k_attn_decode(const float *q, const bf16 *kc, const bf16 *vc, const int32_t *rpos, const int32_t *rseq,
              float *part_o, float *part_m, float *part_l, int H, int KVH, int n_ctx, int n_split, float scale) {
    constexpr int LPK = HD / 8, KPW = 32 / LPK, NG = ATT_WARPS * KPW;
    __shared__ float sm_m[NG][G_MAX], sm_l[NG][G_MAX];
    __shared__ float sm_o[NG][G_MAX][HD];
    const int g = blockIdx.x, sp = blockIdx.y, r = blockIdx.z;
    const int L = rpos[r] + 1, seq = rseq[r];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, sub = lane / LPK, li = lane % LPK;
    const int grp = warp * KPW + sub;
    /* splits of at least 64 keys, whole warp-steps; the grid is fixed (graph replay), so the
     * length comes from device memory and surplus splits are empty */
    int split_len = max((L + n_split - 1) / n_split, 64);
    split_len = (split_len + NG - 1) / NG * NG;
    const int k0 = sp * split_len, k1 = min(L, k0 + split_len);
    float qv[G][8], o[G][8], m[G], l[G];
#pragma unroll
    for (int j = 0; j < G; j++) {
        m[j] = -INFINITY, l[j] = 0;
#pragma unroll
        for (int e = 0; e < 8; e++) {
            o[j][e] = 0;
            qv[j][e] = q[((int64_t)r * H + g * G + j) * HD + li * 8 + e] * scale;
        }
    }
    const int64_t base = ((int64_t)seq * KVH + g) * n_ctx * HD;
    const bf16 *K = kc + base, *V = vc + base;
    /* registers hold the next step's K and V rows while this one is computed */
    const uint4 zero4 = make_uint4(0, 0, 0, 0);
    bool ok = k0 + warp * KPW + sub < k1;
    uint4 kr = ok ? *(const uint4 *)(K + (int64_t)(k0 + warp * KPW + sub) * HD + li * 8) : zero4;
    uint4 vr = ok ? *(const uint4 *)(V + (int64_t)(k0 + warp * KPW + sub) * HD + li * 8) : zero4;
    for (int t0 = k0 + warp * KPW; t0 < k1; t0 += ATT_WARPS * KPW) {
        const int tn = t0 + ATT_WARPS * KPW + sub;
        const bool okn = tn < k1;
        const uint4 krn = okn ? *(const uint4 *)(K + (int64_t)tn * HD + li * 8) : zero4;
        const uint4 vrn = okn ? *(const uint4 *)(V + (int64_t)tn * HD + li * 8) : zero4;
        float kf[8], vf[8];
        bf16x8_to_f32(kr, kf);
        bf16x8_to_f32(vr, vf);
#pragma unroll
        for (int j = 0; j < G; j++) {
            float d = 0;
#pragma unroll
            for (int e = 0; e < 8; e++) d += qv[j][e] * kf[e];
#pragma unroll
            for (int off = LPK / 2; off > 0; off >>= 1) d += __shfl_xor_sync(0xffffffffu, d, off);
            if (ok) {
                const float mn = fmaxf(m[j], d), a = __expf(m[j] - mn), p = __expf(d - mn);
                l[j] = l[j] * a + p;
#pragma unroll
                for (int e = 0; e < 8; e++) o[j][e] = o[j][e] * a + p * vf[e];
                m[j] = mn;
            }
        }
        kr = krn, vr = vrn, ok = okn;
    }
#pragma unroll
    for (int j = 0; j < G; j++) {
        if (li == 0) sm_m[grp][j] = m[j], sm_l[grp][j] = l[j];
#pragma unroll
        for (int e = 0; e < 8; e++) sm_o[grp][j][li * 8 + e] = o[j][e];
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < G * HD; idx += blockDim.x) {
        const int j = idx / HD, d = idx % HD;
        float M = -INFINITY;
        for (int x = 0; x < NG; x++) M = fmaxf(M, sm_m[x][j]);
        float S = 0, O = 0;
        if (M != -INFINITY)
            for (int x = 0; x < NG; x++) {
                const float w = __expf(sm_m[x][j] - M);
                S += sm_l[x][j] * w;
                O += sm_o[x][j][d] * w;
            }
        const int64_t ps = ((int64_t)r * H + g * G + j) * n_split + sp;
        part_o[ps * HD + d] = O;
        if (d == 0) part_m[ps] = M, part_l[ps] = S;
    }
}

/* att[r, h] = merge of the splits; one block (h, r) of hd threads */
__global__ void k_attn_merge(const float *part_o, const float *part_m, const float *part_l, bf16 *att, int H,
                             int hd, int n_split) {
    /* the split weights exp(m_s - M) once, in shared memory; then each thread's dimension */
    __shared__ float wsh[256 + 1];
    const int h = blockIdx.x, r = blockIdx.y, d = threadIdx.x;
    const int64_t ps = ((int64_t)r * H + h) * n_split;
    float m = -INFINITY;
    for (int s = d; s < n_split; s += blockDim.x) m = fmaxf(m, part_m[ps + s]);
    __shared__ float red[32];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if ((d & 31) == 0) red[d >> 5] = m;
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < (int)(blockDim.x + 31) / 32; w++) M = fmaxf(M, red[w]);
    for (int s = d; s < n_split; s += blockDim.x) {
        const float ms = part_m[ps + s];
        wsh[s] = ms == -INFINITY ? 0.0f : __expf(ms - M);
    }
    __syncthreads();
    if (d == 0) {
        float S = 0;
        for (int s = 0; s < n_split; s++) S += part_l[ps + s] * wsh[s];
        wsh[256] = S;
    }
    __syncthreads();
    float O = 0;
#pragma unroll 8
    for (int s = 0; s < n_split; s++) O += part_o[(ps + s) * hd + d] * wsh[s];
    const float S = wsh[256];
    att[((int64_t)r * H + h) * hd + d] = __float2bfloat16(S > 0 ? O / S : 0.0f);
}

/* Causal softmax of prefill scores: S (batch, rows, nk) f32 -> P bf16; row i sees keys < lim0 + i + 1 */
__global__ void k_softmax_causal(const float *S, bf16 *P, int rows, int nk, int lim0) {
    const int i = blockIdx.x, b = blockIdx.y;
    const float *s = S + ((int64_t)b * rows + i) * nk;
    bf16 *p = P + ((int64_t)b * rows + i) * nk;
    const int lim = min(nk, lim0 + i + 1);
    __shared__ float red[32];
    float mx = -INFINITY;
    for (int t = threadIdx.x; t < lim; t += blockDim.x) mx = fmaxf(mx, s[t]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = mx;
    __syncthreads();
    if (threadIdx.x == 0) {
        float v = -INFINITY;
        for (int w = 0; w < (int)(blockDim.x + 31) / 32; w++) v = fmaxf(v, red[w]);
        red[0] = v;
    }
    __syncthreads();
    mx = red[0];
    __syncthreads();
    float sum = 0;
    for (int t = threadIdx.x; t < lim; t += blockDim.x) sum += __expf(s[t] - mx);
    sum = warp_sum(sum);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = sum;
    __syncthreads();
    if (threadIdx.x == 0) {
        float v = 0;
        for (int w = 0; w < (int)(blockDim.x + 31) / 32; w++) v += red[w];
        red[0] = v;
    }
    __syncthreads();
    const float inv = 1.0f / red[0];
    for (int t = threadIdx.x; t < nk; t += blockDim.x)
        p[t] = __float2bfloat16(t < lim ? __expf(s[t] - mx) * inv : 0.0f);
}

/* ---- prefill flash attention (tensor cores through mma.sync m16n8k16 bf16) ----------------
 * Block: 4 warps, 64 query rows of one head; warp w owns rows 16w..16w+15. Key tiles of 64
 * rows of K and V in shared memory; S = Q K^T and O += P V with mma.sync, online softmax in
 * registers (the accumulator layout of S is the operand layout of P). Causal: query i (position
 * pos0 + i) sees keys <= pos0 + i. Q: (n, H, HD) bf16; K, V: the KV head's cache rows (n_ctx,
 * HD) bf16; out: (n, H, HD) bf16. */
#define FA_BQ 64
#define FA_BK 64

__device__ __forceinline__ void mma16816(float *c, const uint32_t *a, const uint32_t *b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* four 8x8 b16 matrices from shared memory; lane t gives the address of row t % 8 of matrix t / 8 */
__device__ __forceinline__ void ldsm_x4(uint32_t *r, const bf16 *p) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t *r, const bf16 *p) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t *)&v;
}

template <int HD>
__global__ void __launch_bounds__(128) k_flash_prefill(const bf16 *Q, const bf16 *Kc, const bf16 *Vc, bf16 *out, int n,
                                                       int H, int KVH, int n_ctx, int pos0, float scale_log2) {
    constexpr int LD = HD + 8; /* padded smem row (bf16): conflict-free fragment reads */
    __shared__ __align__(16) bf16 sk[FA_BK * LD];
    __shared__ __align__(16) bf16 sv[FA_BK * LD];
    /* the longest (latest) query tiles first: less tail at the end of the grid */
    const int h = blockIdx.y, q0 = (gridDim.x - 1 - blockIdx.x) * FA_BQ, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int lm = lane >> 3, lr = lane & 7; /* ldmatrix: matrix and row this lane addresses */
    const int G = H / KVH, kvh = h / G;
    const bf16 *K = Kc + (int64_t)kvh * n_ctx * HD, *V = Vc + (int64_t)kvh * n_ctx * HD;
    const int r_lo = q0 + warp * 16 + (lane >> 2), r_hi = r_lo + 8; /* this thread's two query rows */
    const int c2 = (lane & 3) * 2;
    /* Q fragments: HD/16 k-chunks */
    uint32_t qa[HD / 16][4];
#pragma unroll
    for (int kc = 0; kc < HD / 16; kc++) {
        const int d = kc * 16 + c2;
        const uint32_t *lo = (const uint32_t *)(Q + ((int64_t)min(r_lo, n - 1) * H + h) * HD);
        const uint32_t *hi = (const uint32_t *)(Q + ((int64_t)min(r_hi, n - 1) * H + h) * HD);
        qa[kc][0] = lo[d / 2], qa[kc][1] = hi[d / 2], qa[kc][2] = lo[(d + 8) / 2], qa[kc][3] = hi[(d + 8) / 2];
    }
    float o[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0;
    float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0, l_hi = 0;
    const int last_q = min(q0 + FA_BQ, n) - 1;  /* the block's last query row */
    const int kend = pos0 + last_q + 1;         /* keys the block needs */
    for (int k0 = 0; k0 < kend; k0 += FA_BK) {
        __syncthreads();
#pragma unroll 4
        for (int i = threadIdx.x; i < FA_BK * HD / 8; i += 128) { /* 16-byte chunks */
            const int row = i / (HD / 8), col = (i % (HD / 8)) * 8;
            uint4 kv = make_uint4(0, 0, 0, 0), vv = kv;
            if (k0 + row < kend) {
                kv = *(const uint4 *)(K + (int64_t)(k0 + row) * HD + col);
                vv = *(const uint4 *)(V + (int64_t)(k0 + row) * HD + col);
            }
            *(uint4 *)(sk + row * LD + col) = kv;
            *(uint4 *)(sv + row * LD + col) = vv;
        }
        __syncthreads();
        if (q0 + warp * 16 >= n) continue; /* a warp past the last row only helps loading */
        /* S (16 x 64) = Q K^T: 8 n-tiles of 8 keys */
        float s[FA_BK / 8][4];
#pragma unroll
        for (int nt = 0; nt < FA_BK / 8; nt++) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0;
#pragma unroll
            for (int kc = 0; kc < HD / 16; kc += 2) {
                uint32_t b[4]; /* B of k-chunks kc and kc + 1 */
                ldsm_x4(b, sk + (nt * 8 + lr) * LD + (kc + (lm >> 1)) * 16 + (lm & 1) * 8);
                mma16816(s[nt], qa[kc], b);
                mma16816(s[nt], qa[kc + 1], b + 2);
            }
        }
        /* causal mask and scale (log2 domain), row maxima over the 4 lanes of a row */
        float mx_lo = m_lo, mx_hi = m_hi;
#pragma unroll
        for (int nt = 0; nt < FA_BK / 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int key = k0 + nt * 8 + c2 + (e & 1), row = e < 2 ? r_lo : r_hi;
                float v = s[nt][e] * scale_log2;
                if (key > pos0 + row || key >= kend) v = -INFINITY;
                s[nt][e] = v;
                if (e < 2) mx_lo = fmaxf(mx_lo, v);
                else mx_hi = fmaxf(mx_hi, v);
            }
        mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 1));
        mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 2));
        mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 1));
        mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 2));
        const float a_lo = mx_lo == -INFINITY ? 1.0f : exp2f(m_lo - mx_lo);
        const float a_hi = mx_hi == -INFINITY ? 1.0f : exp2f(m_hi - mx_hi);
        m_lo = mx_lo, m_hi = mx_hi;
        float sum_lo = 0, sum_hi = 0;
        uint32_t pa[FA_BK / 16][4];
#pragma unroll
        for (int nt = 0; nt < FA_BK / 8; nt++) {
            const float p0 = mx_lo == -INFINITY ? 0 : exp2f(s[nt][0] - mx_lo);
            const float p1 = mx_lo == -INFINITY ? 0 : exp2f(s[nt][1] - mx_lo);
            const float p2 = mx_hi == -INFINITY ? 0 : exp2f(s[nt][2] - mx_hi);
            const float p3 = mx_hi == -INFINITY ? 0 : exp2f(s[nt][3] - mx_hi);
            sum_lo += p0 + p1, sum_hi += p2 + p3;
            /* accumulator of n-tile nt = half of the A operand of k-chunk nt/2 */
            pa[nt / 2][(nt & 1) * 2 + 0] = pack_bf16(p0, p1);
            pa[nt / 2][(nt & 1) * 2 + 1] = pack_bf16(p2, p3);
        }
        l_lo = l_lo * a_lo + sum_lo, l_hi = l_hi * a_hi + sum_hi;
#pragma unroll
        for (int i = 0; i < HD / 8; i++) o[i][0] *= a_lo, o[i][1] *= a_lo, o[i][2] *= a_hi, o[i][3] *= a_hi;
        /* O (16 x HD) += P (16 x 64) V (64 x HD): HD/8 n-tiles, 4 k-chunks of 16 keys */
#pragma unroll
        for (int kc = 0; kc < FA_BK / 16; kc++) {
#pragma unroll
            for (int nt = 0; nt < HD / 8; nt += 2) {
                uint32_t b[4]; /* B of n-tiles nt and nt + 1 (V transposed by ldmatrix) */
                ldsm_x4_t(b, sv + (kc * 16 + (lm & 1) * 8 + lr) * LD + (nt + (lm >> 1)) * 8);
                mma16816(o[nt], pa[kc], b);
                mma16816(o[nt + 1], pa[kc], b + 2);
            }
        }
    }
    if (q0 + warp * 16 >= n) return;
    /* the row sums over the 4 lanes of each row, then write */
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1), l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1), l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
    const float i_lo = l_lo > 0 ? 1.0f / l_lo : 0, i_hi = l_hi > 0 ? 1.0f / l_hi : 0;
#pragma unroll
    for (int nt = 0; nt < HD / 8; nt++) {
        const int d = nt * 8 + c2;
        if (r_lo < n) *(uint32_t *)(out + ((int64_t)r_lo * H + h) * HD + d) = pack_bf16(o[nt][0] * i_lo, o[nt][1] * i_lo);
        if (r_hi < n) *(uint32_t *)(out + ((int64_t)r_hi * H + h) * HD + d) = pack_bf16(o[nt][2] * i_hi, o[nt][3] * i_hi);
    }
}

/* Greedy ids: key[r] = max over the row of (ordered float bits << 32 | ~index), so the largest
 * logit wins and ties go to the lowest index; blocks (slice, row) combine with atomicMax. key
 * must be zeroed first; k_argmax_ids then unpacks. */
__device__ __forceinline__ unsigned long long argmax_key(float v, int i) {
    uint32_t u = __float_as_uint(v);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u); /* order-preserving */
    return ((unsigned long long)u << 32) | (uint32_t)(0xffffffffu - (uint32_t)i);
}
__global__ void k_argmax(const float *logits, int V, unsigned long long *key) {
    const int r = blockIdx.y;
    const float *x = logits + (int64_t)r * V;
    unsigned long long best = 0;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < V; i += gridDim.x * blockDim.x) {
        const unsigned long long k = argmax_key(x[i], i);
        best = k > best ? k : best;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const unsigned long long t = __shfl_xor_sync(0xffffffffu, best, o);
        best = t > best ? t : best;
    }
    if ((threadIdx.x & 31) == 0) atomicMax(key + r, best);
}
__global__ void k_argmax_ids(const unsigned long long *key, int32_t *next, int n) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r < n) next[r] = (int32_t)(0xffffffffu - (uint32_t)(key[r] & 0xffffffffu));
}

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
            k_flash_prefill<128><<<grid, 128, 0, c->st>>>(c->qb, c->kc + off, c->vc + off, c->att, n, H, KVH, c->n_ctx, pos0, sl2);
        else
            k_flash_prefill<64><<<grid, 128, 0, c->st>>>(c->qb, c->kc + off, c->vc + off, c->att, n, H, KVH, c->n_ctx, pos0, sl2);
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
