/*
 * gpu_model.cu — the CUDA backend's model: weights uploaded once as bf16 (q/k/v and gate/up
 * stacked by rows), norms and biases as f32 (see gpu.h); a stack with a quantized part keeps
 * every part in its stored format (gpu_qweights.cuh).
 */
#include "backend/cuda/gpu_common.cuh"
#include "backend/cuda/gpu_qweights.cuh"

#include <algorithm>

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
    gmat tmp = {dst, m->rows, m->cols, NULL};
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
    if (gq_wanted(ms, k)) return gq_upload(ms, k, out, bytes);
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
    g->grp_lo = g->grp_hi = -1;
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
        y->src = s->kv_src, y->own = s->kv_src == l;
        if (y->own) y->cl = g->CL++;
        else y->cl = g->layers[s->kv_src].cl; /* (a lower source is numbered; a higher one below) */
        if (s->kv_src > l) {
            if (g->grp_lo < 0) g->grp_lo = l;
            if (s->kv_src > g->grp_hi) g->grp_hi = s->kv_src;
        }
        if ((st = upload_vec(s->attn_norm, g->D, &y->attn_norm, &g->bytes)) ||
            (st = upload_vec(s->ffn_norm, g->D, &y->ffn_norm, &g->bytes)) ||
            (st = upload_vec(s->bo, g->D, &y->bo, &g->bytes)) ||
            (st = upload_stack(qkv, y->own ? 3 : 1, &y->wqkv, stage, stage_bytes, &g->bytes)) ||
            (st = upload_mat(&s->wo, &y->wo, stage, stage_bytes, &g->bytes)) ||
            (st = upload_stack(gu, 2, &y->wgu, stage, stage_bytes, &g->bytes)) ||
            (st = upload_mat(&s->w_down, &y->wd, stage, stage_bytes, &g->bytes)))
            break;
        if (s->bq || s->bk || s->bv) { /* stacked bias, zeros where a part has none */
            const int64_t nb = y->own ? qd + 2 * kd : qd;
            float *b = (float *)calloc((size_t)(qd + 2 * kd), sizeof(float));
            if (s->bq) memcpy(b, s->bq, sizeof(float) * (size_t)qd);
            if (s->bk && y->own) memcpy(b + qd, s->bk, sizeof(float) * (size_t)kd);
            if (s->bv && y->own) memcpy(b + qd + kd, s->bv, sizeof(float) * (size_t)kd);
            st = upload_vec(b, nb, &y->bqkv, &g->bytes);
            free(b);
            if (st) break;
        }
    }
    for (int l = 0; l < g->L && !st; l++) /* layers reading a higher source: its number now */
        g->layers[l].cl = g->layers[g->layers[l].src].cl;
    if (!st) st = upload_mat(&d->tok_embed, &g->embed, stage, stage_bytes, &g->bytes);
    if (!st) {
        g->tied = d->lm_head.data == d->tok_embed.data;
        if (g->tied) g->lm_head = g->embed;
        else st = upload_mat(&d->lm_head, &g->lm_head, stage, stage_bytes, &g->bytes);
    }
    if (!st) st = upload_vec(d->final_norm, g->D, &g->final_norm, &g->bytes);
    for (int l = 0; l < g->L && !st; l++) { /* the prefill tile fits each stored-format matrix's */
        const glayer *y = &g->layers[l];
        const gmat *ms[] = {&y->wqkv, &y->wo, &y->wgu, &y->wd};
        for (int i = 0; i < 4; i++) g->qtile = std::max(g->qtile, gq_tile_elems(ms[i]));
    }
    if (!st) g->qtile = std::max(g->qtile, std::max(gq_tile_elems(&g->embed), gq_tile_elems(&g->lm_head)));
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
        gq_free(&y->wqkv), gq_free(&y->wo), gq_free(&y->wgu), gq_free(&y->wd);
    }
    cudaFree(g->embed.w);
    if (!g->tied) cudaFree(g->lm_head.w), gq_free(&g->lm_head);
    gq_free(&g->embed);
    cudaFree(g->final_norm);
    free(g->layers);
    free(g->inv_freq_h);
    free(g);
}

extern "C" int64_t skv_gpu_model_bytes(const skv_gpu_model *g) { return g->bytes; }

