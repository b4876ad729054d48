/*
 * forward.c — the decoder forward pass (Llama / Qwen2 / Mistral), float32 compute.
 *
 * Per layer: x += o_proj(attn(rope(q), rope(k), v)) on rmsnorm(x); x += down(silu(gate)*up) on
 * rmsnorm(x). Several tokens (prefill) run as matrix-matrix products through OpenBLAS; a single
 * token (decode) runs as matrix-vector products straight from the stored bf16/f16/f32 weights.
 */
#include "model.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>


/* y(n, rows) = x(n, cols) W^T + bias */
static void linear(skv_context *c, const skv_weight *w, const float *bias, const float *x, float *y,
                   int64_t n) {
    if (n == 1) {
        const int64_t rows = w->rows, blk = 16;
#pragma omp parallel for schedule(static) num_threads(c->n_threads)
        for (int64_t r = 0; r < rows; r += blk) skv_matvec_rows(w, x, y, r, SKV_MIN(r + blk, rows));
    } else {
        skv_matmul(w, x, y, n, c->wconv);
    }
    if (bias)
        for (int64_t i = 0; i < n; i++)
            for (int64_t r = 0; r < w->rows; r++) y[i * w->rows + r] += bias[r];
}

static inline float *kv_row(const skv_context *c, float *base, int32_t l, int32_t g, int64_t pos) {
    const skv_model_info *in = &c->m->cfg.info;
    return base + (((int64_t)l * in->n_kv_head + g) * c->n_ctx + pos) * in->head_dim;
}

/* First key position visible to a query at pos (sliding window, else 0). */
static inline int64_t first_visible(const skv_context *c, int64_t pos) {
    int32_t w = c->m->cfg.info.sliding_window;
    return (w > 0 && pos - w + 1 > 0) ? pos - w + 1 : 0;
}

/* Attention of n new queries (positions pos0..pos0+n-1) over the cache of layer l.
 * q: (n, n_head*hd) -> out: (n, n_head*hd). */
static void attention(skv_context *c, int32_t l, int64_t pos0, int64_t n) {
    const skv_model_info *in = &c->m->cfg.info;
    const int32_t hd = in->head_dim, H = in->n_head, G = H / in->n_kv_head;
    const int64_t QD = (int64_t)H * hd, T = pos0 + n;
    const float scale = 1.0f / sqrtf((float)hd);
#pragma omp parallel for schedule(dynamic, 1) num_threads(c->n_threads)
    for (int32_t h = 0; h < H; h++) {
        const int32_t g = h / G;
        float *S = c->att + (int64_t)omp_get_thread_num() * c->att_stride; /* (n, T) */
        const float *K = kv_row(c, c->k_cache, l, g, 0); /* (T, hd) */
        const float *V = kv_row(c, c->v_cache, l, g, 0); /* (T, hd) */
        const float *Q = c->q + (int64_t)h * hd;         /* rows of stride QD */
        float *O = c->att_out + (int64_t)h * hd;         /* rows of stride QD */
        if (n == 1) {
            const int64_t lo = first_visible(c, pos0);
            for (int64_t t = lo; t < T; t++) S[t] = skv_dot(Q, K + t * hd, hd) * scale;
            skv_softmax(S + lo, T - lo);
            memset(O, 0, (size_t)hd * sizeof(float));
            for (int64_t t = lo; t < T; t++) skv_axpy(O, S[t], V + t * hd, hd);
            continue;
        }
        /* Causal blocks of query rows: rows [i0, i1) see keys [lo(i0), pos0 + i1) only. */
        for (int64_t i0 = 0; i0 < n; i0 += SKV_ATT_BLOCK) {
            const int64_t i1 = SKV_MIN(i0 + SKV_ATT_BLOCK, n), nb = i1 - i0;
            const int64_t k0 = first_visible(c, pos0 + i0), k1 = pos0 + i1, nk = k1 - k0;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nb, (int)nk, hd, scale,
                        Q + i0 * QD, (int)QD, K + k0 * hd, hd, 0.0f, S, (int)nk);
            for (int64_t i = i0; i < i1; i++) {
                float *row = S + (i - i0) * nk;
                const int64_t pos = pos0 + i, lo = first_visible(c, pos) - k0, hi = pos + 1 - k0;
                skv_softmax(row + lo, hi - lo);
                for (int64_t t = 0; t < lo; t++) row[t] = 0;
                for (int64_t t = hi; t < nk; t++) row[t] = 0;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nb, hd, (int)nk, 1.0f, S,
                        (int)nk, V + k0 * hd, hd, 0.0f, O + i0 * QD, (int)QD);
        }
    }
}

static void rmsnorm_rows(const skv_context *c, float *out, const float *x, const float *w,
                         int64_t n) {
    const skv_model_info *in = &c->m->cfg.info;
    for (int64_t i = 0; i < n; i++)
        skv_rmsnorm(out + i * in->dim, x + i * in->dim, w, in->dim, in->rms_eps);
}

/* Rows [r0, r1) of a matrix, split evenly over the team of the enclosing parallel region. */
static inline void team_rows(int64_t rows, int64_t *r0, int64_t *r1) {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    *r0 = rows * t / nt;
    *r1 = rows * (t + 1) / nt;
}

/* Decode attention of query heads [h0, h0 + nh), all in KV group g, over cached tokens
 * [lo, T). RoPE is applied to the queries here. Each K and V row is loaded once for the nh
 * heads: with nh = G the group's cache is streamed once instead of G times.
 * Scores: (nh, T) in this thread's scratch. */
static void attend_heads(skv_context *c, int32_t l, int32_t g, int32_t h0, int32_t nh,
                         const float *cs, const float *sn, int64_t lo, int64_t T, float scale) {
    const int32_t hd = c->m->cfg.info.head_dim;
    float *S = c->att + (int64_t)omp_get_thread_num() * c->att_stride;
    const float *K = kv_row(c, c->k_cache, l, g, 0), *V = kv_row(c, c->v_cache, l, g, 0);
    for (int32_t j = 0; j < nh; j++) skv_rope(c->q + (int64_t)(h0 + j) * hd, cs, sn, hd);
    for (int64_t t = lo; t < T; t++)
        for (int32_t j = 0; j < nh; j++)
            S[j * T + t] = skv_dot(c->q + (int64_t)(h0 + j) * hd, K + t * hd, hd) * scale;
    for (int32_t j = 0; j < nh; j++) {
        skv_softmax(S + j * T + lo, T - lo);
        memset(c->att_out + (int64_t)(h0 + j) * hd, 0, (size_t)hd * sizeof(float));
    }
    for (int64_t t = lo; t < T; t++)
        for (int32_t j = 0; j < nh; j++)
            skv_axpy(c->att_out + (int64_t)(h0 + j) * hd, S[j * T + t], V + t * hd, hd);
}

/* Single-token decode: one parallel region for the whole pass, matrix-vector products straight
 * from the stored weights, q/k/v and gate/up fused, residual adds folded into o_proj and
 * down_proj. Barriers separate the steps. */
static void forward_token(skv_context *c, int32_t id, float *logits) {
    const skv_model *m = c->m;
    const skv_model_info *in = &m->cfg.info;
    const int64_t D = in->dim, hd = in->head_dim, F = in->ffn_dim, pos = c->n_past;
    const int64_t QD = in->n_head * hd, KD = in->n_kv_head * hd;
    const int32_t H = in->n_head, G = in->n_head / in->n_kv_head;
    const float scale = 1.0f / sqrtf((float)hd);
    const float *cs = c->rope_cos + pos * hd / 2, *sn = c->rope_sin + pos * hd / 2;
    const int64_t lo = first_visible(c, pos), T = pos + 1;
    skv_weight_row_f32(&m->tok_embed, id, c->x);

#pragma omp parallel num_threads(c->n_threads)
    {
        int64_t r0, r1;
        for (int32_t l = 0; l < in->n_layer; l++) {
            const skv_layer *ly = &m->layers[l];
#pragma omp single
            skv_rmsnorm(c->xb, c->x, ly->attn_norm, D, in->rms_eps);
            /* q, k, v: one row range over the three stacked matrices */
            team_rows(QD + 2 * KD, &r0, &r1);
            for (int64_t r = r0; r < r1; r++) {
                if (r < QD) {
                    c->q[r] = skv_weight_row_dot(&ly->wq, r, c->xb) + (ly->bq ? ly->bq[r] : 0);
                } else if (r < QD + KD) {
                    int64_t k = r - QD;
                    c->k[k] = skv_weight_row_dot(&ly->wk, k, c->xb) + (ly->bk ? ly->bk[k] : 0);
                } else {
                    int64_t k = r - QD - KD;
                    c->v[k] = skv_weight_row_dot(&ly->wv, k, c->xb) + (ly->bv ? ly->bv[k] : 0);
                }
            }
#pragma omp barrier
#pragma omp for schedule(static)
            for (int32_t g = 0; g < in->n_kv_head; g++) {
                skv_rope(c->k + g * hd, cs, sn, (int32_t)hd);
                memcpy(kv_row(c, c->k_cache, l, g, pos), c->k + g * hd, (size_t)hd * sizeof(float));
                memcpy(kv_row(c, c->v_cache, l, g, pos), c->v + g * hd, (size_t)hd * sizeof(float));
            }
            if (in->n_kv_head >= c->n_threads) {
                /* one work item per KV head: its K and V rows are read once for the G query
                 * heads that share them */
#pragma omp for schedule(static)
                for (int32_t g = 0; g < in->n_kv_head; g++)
                    attend_heads(c, l, g, g * G, G, cs, sn, lo, T, scale);
            } else {
#pragma omp for schedule(static)
                for (int32_t h = 0; h < H; h++) attend_heads(c, l, h / G, h, 1, cs, sn, lo, T, scale);
            }
            /* x += o_proj(att_out) */
            team_rows(D, &r0, &r1);
            for (int64_t r = r0; r < r1; r++)
                c->x[r] += skv_weight_row_dot(&ly->wo, r, c->att_out) + (ly->bo ? ly->bo[r] : 0);
#pragma omp barrier
#pragma omp single
            skv_rmsnorm(c->xb, c->x, ly->ffn_norm, D, in->rms_eps);
            /* hb = silu(gate xb) * (up xb) */
            team_rows(F, &r0, &r1);
            for (int64_t r = r0; r < r1; r++) {
                float gt = skv_weight_row_dot(&ly->w_gate, r, c->xb);
                float up = skv_weight_row_dot(&ly->w_up, r, c->xb);
                c->hb[r] = skv_silu(gt) * up;
            }
#pragma omp barrier
            team_rows(D, &r0, &r1);
            for (int64_t r = r0; r < r1; r++) c->x[r] += skv_weight_row_dot(&ly->w_down, r, c->hb);
#pragma omp barrier
        }
        if (logits) {
#pragma omp single
            skv_rmsnorm(c->xb, c->x, m->final_norm, D, in->rms_eps);
            team_rows(in->n_vocab, &r0, &r1);
            for (int64_t r = r0; r < r1; r++) logits[r] = skv_weight_row_dot(&m->lm_head, r, c->xb);
        }
    }
    c->n_past += 1;
}

/* One chunk of n <= n_batch tokens at positions n_past..n_past+n-1. Writes logits of every
 * token (n x vocab) when all is set, else of the last token only (vocab), if logits != NULL. */
static void forward_chunk(skv_context *c, const int32_t *ids, int64_t n, float *logits, int all) {
    const skv_model *m = c->m;
    const skv_model_info *in = &m->cfg.info;
    const int64_t D = in->dim, hd = in->head_dim, F = in->ffn_dim;
    const int64_t QD = in->n_head * hd, KD = in->n_kv_head * hd;
    const int64_t pos0 = c->n_past;

    for (int64_t i = 0; i < n; i++) skv_weight_row_f32(&m->tok_embed, ids[i], c->x + i * D);

    for (int32_t l = 0; l < in->n_layer; l++) {
        const skv_layer *ly = &m->layers[l];
        rmsnorm_rows(c, c->xb, c->x, ly->attn_norm, n);
        linear(c, &ly->wq, ly->bq, c->xb, c->q, n);
        linear(c, &ly->wk, ly->bk, c->xb, c->k, n);
        linear(c, &ly->wv, ly->bv, c->xb, c->v, n);
        for (int64_t i = 0; i < n; i++) {
            const float *cs = c->rope_cos + (pos0 + i) * hd / 2, *sn = c->rope_sin + (pos0 + i) * hd / 2;
            for (int32_t h = 0; h < in->n_head; h++) skv_rope(c->q + i * QD + h * hd, cs, sn, (int32_t)hd);
            for (int32_t g = 0; g < in->n_kv_head; g++) {
                float *k = c->k + i * KD + g * hd;
                skv_rope(k, cs, sn, (int32_t)hd);
                memcpy(kv_row(c, c->k_cache, l, g, pos0 + i), k, (size_t)hd * sizeof(float));
                memcpy(kv_row(c, c->v_cache, l, g, pos0 + i), c->v + i * KD + g * hd,
                       (size_t)hd * sizeof(float));
            }
        }
        attention(c, l, pos0, n);
        linear(c, &ly->wo, ly->bo, c->att_out, c->proj, n);
        for (int64_t i = 0; i < n * D; i++) c->x[i] += c->proj[i];

        rmsnorm_rows(c, c->xb, c->x, ly->ffn_norm, n);
        linear(c, &ly->w_gate, NULL, c->xb, c->hb, n);
        linear(c, &ly->w_up, NULL, c->xb, c->hb2, n);
        for (int64_t i = 0; i < n; i++) skv_swiglu(c->hb + i * F, c->hb2 + i * F, F);
        linear(c, &ly->w_down, NULL, c->hb, c->proj, n);
        for (int64_t i = 0; i < n * D; i++) c->x[i] += c->proj[i];
    }
    c->n_past += (int32_t)n;
    if (!logits) return;
    if (all) {
        rmsnorm_rows(c, c->xb, c->x, m->final_norm, n);
        linear(c, &m->lm_head, NULL, c->xb, logits, n);
    } else {
        rmsnorm_rows(c, c->xb, c->x + (n - 1) * D, m->final_norm, 1);
        linear(c, &m->lm_head, NULL, c->xb, logits, 1);
    }
}

skv_status skv_decode(skv_context *c, const int32_t *ids, int32_t n, float *logits, int all_logits) {
    const skv_model_info *in = &c->m->cfg.info;
    if (n <= 0) return skv_set_error(SKV_ERR_ARG, "no tokens to decode (empty prompt?)");
    if ((int64_t)c->n_past + n > c->n_ctx)
        return skv_set_error(SKV_ERR_RANGE,
                             "%d tokens after %d cached exceed the context of %d tokens",
                             n, c->n_past, c->n_ctx);
    for (int32_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= in->n_vocab)
            return skv_set_error(SKV_ERR_ARG, "token id %d at index %d is outside the vocabulary "
                                 "(%d entries)", ids[i], i, in->n_vocab);
    for (int32_t off = 0; off < n; off += c->n_batch) {
        int32_t nb = SKV_MIN(c->n_batch, n - off);
        int last = off + nb == n;
        float *lg = NULL;
        if (logits && all_logits) lg = logits + (int64_t)off * in->n_vocab;
        else if (logits && last) lg = logits;
        if (nb == 1)
            forward_token(c, ids[off], lg);
        else
            forward_chunk(c, ids + off, nb, lg, all_logits);
    }
    return SKV_OK;
}
