/*
 * forward.c — the decoder forward pass (Llama / Qwen2 / Mistral), float32 compute, over the
 * block KV cache.
 *
 * Per layer: x += o_proj(attn(rope(q), rope(k), v)) on rmsnorm(x); x += down(silu(gate)*up) on
 * rmsnorm(x). Several tokens (prefill) run as matrix-matrix products through OpenBLAS, with each
 * KV head's kept tokens gathered into contiguous f32 first; a single token (decode) runs as
 * matrix-vector products straight from the stored bf16/f16/f32 weights and reads the cache
 * block by block. When the policy asks, attention probabilities are summed per kept token
 * (`acc`: every query; `win`: queries of the observation window) for eviction decisions.
 */
#include "model.h"

#include "kv/smallkv.h"
#include "backend/cuda/gpu.h"

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

/* Is a key at position kp visible to a query at position qp? (causal, sliding window) */
static inline int visible(const skv_context *c, int64_t qp, int64_t kp) {
    const int32_t w = c->m->cfg.info.sliding_window;
    return kp <= qp && (w <= 0 || qp - kp < w);
}

/* Fold the per-query-head statistics of one layer into the streams (group sums). */
static void fold_stats(skv_context *c, int32_t l, int use_win) {
    const skv_model_info *in = &c->m->cfg.info;
    const int32_t G = in->n_head / in->n_kv_head;
    for (int32_t g = 0; g < in->n_kv_head; g++) {
        skv_stream *st = skv_cache_stream(&c->cache, l, g);
        for (int32_t j = 0; j < G; j++) {
            const float *pa = c->probs + (int64_t)(g * G + j) * c->n_ctx;
            const float *pw = c->probs_win + (int64_t)(g * G + j) * c->n_ctx;
            if (c->want_acc)
                for (int32_t s = 0; s < st->n; s++) st->acc[s] += pa[s];
            if (use_win)
                for (int32_t s = 0; s < st->n; s++) st->win[s] += pw[s];
        }
    }
}

/* Prefill attention of n new queries (positions pos0..pos0+n-1, already appended to the cache
 * as the last n slots of every stream) over the kept tokens of layer l.
 * q: (n, n_head*hd) -> att_out: (n, n_head*hd). */
static void attention_prefill(skv_context *c, int32_t l, int64_t pos0, int64_t n) {
    const skv_model_info *in = &c->m->cfg.info;
    const int32_t hd = in->head_dim, H = in->n_head, G = H / in->n_kv_head;
    const int64_t QD = (int64_t)H * hd, T = c->n_ctx;
    const float scale = 1.0f / sqrtf((float)hd);
    const int stats = c->want_acc || c->want_win;
    int use_win = 0;

    /* Old slots as stored (possibly bf16 or quantized); this chunk's own keys and values as
     * computed, in f32: storage precision only affects later tokens (as KIVI does). */
    const int64_t KD = (int64_t)in->n_kv_head * hd;
    for (int32_t g = 0; g < in->n_kv_head; g++) {
        float *gk = c->gk + (int64_t)g * T * hd, *gv = c->gv + (int64_t)g * T * hd;
        const int64_t n_old = skv_cache_stream(&c->cache, l, g)->n - n;
        skv_cache_gather(&c->cache, l, g, gk, gv);
        for (int64_t i = 0; i < n; i++) {
            memcpy(gk + (n_old + i) * hd, c->k + i * KD + (int64_t)g * hd, sizeof(float) * (size_t)hd);
            memcpy(gv + (n_old + i) * hd, c->v + i * KD + (int64_t)g * hd, sizeof(float) * (size_t)hd);
        }
    }
    if (stats) {
        memset(c->probs, 0, sizeof(float) * (size_t)H * T);
        memset(c->probs_win, 0, sizeof(float) * (size_t)H * T);
        use_win = c->want_win && pos0 + n > c->win_from;
    }

#pragma omp parallel for schedule(dynamic, 1) num_threads(c->n_threads)
    for (int32_t h = 0; h < H; h++) {
        const int32_t g = h / G;
        const skv_stream *st = skv_cache_stream(&c->cache, l, g);
        const int64_t n_old = st->n - n; /* kept tokens before this chunk */
        const int32_t *kpos = st->pos;
        float *S = c->att + (int64_t)omp_get_thread_num() * c->att_stride; /* (rows, keys) */
        const float *K = c->gk + (int64_t)g * T * hd, *V = c->gv + (int64_t)g * T * hd;
        const float *Q = c->q + (int64_t)h * hd;
        float *O = c->att_out + (int64_t)h * hd;
        float *pa = c->probs + (int64_t)h * T, *pw = c->probs_win + (int64_t)h * T;
        /* Causal blocks of query rows: rows [i0, i1) see the old slots and new slots < i1. */
        for (int64_t i0 = 0; i0 < n; i0 += SKV_ATT_BLOCK) {
            const int64_t i1 = SKV_MIN(i0 + SKV_ATT_BLOCK, n), nb = i1 - i0, nk = n_old + i1;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nb, (int)nk, hd, scale,
                        Q + i0 * QD, (int)QD, K, hd, 0.0f, S, (int)nk);
            for (int64_t i = i0; i < i1; i++) {
                float *row = S + (i - i0) * nk;
                const int64_t qp = pos0 + i, hi = n_old + i + 1; /* slots >= hi are later tokens */
                if (in->sliding_window > 0) {
                    for (int64_t t = 0; t < hi; t++)
                        if (!visible(c, qp, kpos[t])) row[t] = -INFINITY;
                }
                skv_softmax(row, hi);
                for (int64_t t = hi; t < nk; t++) row[t] = 0;
                if (c->head_acc) {
                    float *ha = c->head_acc + ((int64_t)l * H + h) * T;
                    for (int64_t t = 0; t < hi; t++) ha[t] += row[t];
                    if (qp >= c->head_win_from) {
                        float *hw = c->head_win + ((int64_t)l * H + h) * T;
                        for (int64_t t = 0; t < hi; t++) hw[t] += row[t];
                    }
                    if (qp < c->head_prefix) { /* keys of an early query are early too */
                        float *hp = c->head_pre + ((int64_t)l * H + h) * c->head_prefix;
                        for (int64_t t = 0; t < hi; t++) hp[t] += row[t];
                    }
                }
                if (stats) {
                    for (int64_t t = 0; t < hi; t++) pa[t] += row[t];
                    if (use_win && qp >= c->win_from)
                        for (int64_t t = 0; t < hi; t++) pw[t] += row[t];
                }
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nb, hd, (int)nk, 1.0f, S,
                        (int)nk, V, hd, 0.0f, O + i0 * QD, (int)QD);
        }
    }
    if (stats) fold_stats(c, l, use_win);
}

static void rmsnorm_rows(const skv_context *c, float *out, const float *x, const float *w,
                         int64_t n) {
    const skv_model_info *in = &c->m->cfg.info;
    for (int64_t i = 0; i < n; i++)
        skv_rmsnorm(out + i * in->dim, x + i * in->dim, w, in->dim, in->rms_eps);
}

static skv_status append_kv(skv_context *c, int32_t l, int64_t pos, const float *k, const float *v) {
    const skv_model_info *in = &c->m->cfg.info;
    for (int32_t g = 0; g < in->n_kv_head; g++) {
        skv_status st = skv_cache_append(&c->cache, l, g, (int32_t)pos, k + (int64_t)g * in->head_dim,
                                         v + (int64_t)g * in->head_dim);
        if (st) return st;
    }
    return SKV_OK;
}

/* One chunk of n <= n_batch tokens at positions n_past..n_past+n-1. Writes logits of every
 * token (n x vocab) when all is set, else of the last token only (vocab), if logits != NULL. */
static skv_status forward_chunk(skv_context *c, const int32_t *ids, int64_t n, float *logits, int all) {
    const skv_model *m = c->m;
    const skv_model_info *in = &m->cfg.info;
    const int64_t D = in->dim, hd = in->head_dim, F = in->ffn_dim;
    const int64_t QD = in->n_head * hd, KD = in->n_kv_head * hd;
    const int64_t pos0 = c->n_past;
    skv_status st = skv_context_prefill_scratch(c);
    if (st) return st;

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
            for (int32_t g = 0; g < in->n_kv_head; g++) skv_rope(c->k + i * KD + g * hd, cs, sn, (int32_t)hd);
            if ((st = append_kv(c, l, pos0 + i, c->k + i * KD, c->v + i * KD))) return st;
        }
        attention_prefill(c, l, pos0, n);
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
    if (!logits) return SKV_OK;
    if (all) {
        rmsnorm_rows(c, c->xb, c->x, m->final_norm, n);
        linear(c, &m->lm_head, NULL, c->xb, logits, n);
    } else {
        rmsnorm_rows(c, c->xb, c->x + (n - 1) * D, m->final_norm, 1);
        linear(c, &m->lm_head, NULL, c->xb, logits, 1);
    }
    return SKV_OK;
}

/* Rows [r0, r1) of a matrix, split evenly over the team of the enclosing parallel region. */
static inline void team_rows(int64_t rows, int64_t *r0, int64_t *r1) {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    *r0 = rows * t / nt;
    *r1 = rows * (t + 1) / nt;
}

/* Decode attention of query heads [h0, h0 + nh), all in KV group g, over the group's kept
 * tokens, block by block; each K and V block is read once for the nh heads. Probabilities are
 * left in c->probs (one row of n_ctx per head, by slot). RoPE is applied to the queries here. */
static void attend_heads(skv_context *c, int32_t l, int32_t g, int32_t h0, int32_t nh,
                         const float *cs, const float *sn, int64_t qp, float scale) {
    const int32_t hd = c->m->cfg.info.head_dim;
    const skv_stream *st = skv_cache_stream(&c->cache, l, g);
    const int64_t n = st->n;
    float *kb = c->blk + (int64_t)omp_get_thread_num() * 2 * SKV_KV_BLOCK * hd, *vb = kb + SKV_KV_BLOCK * hd;
    for (int32_t j = 0; j < nh; j++) skv_rope(c->q + (int64_t)(h0 + j) * hd, cs, sn, hd);
    /* SmallKV plan: own keys are read only for critical and recent slots, values only for
     * those and the marginal ones */
    const uint8_t *cls = c->plan_cls ? c->plan_cls + ((int64_t)l * c->m->cfg.info.n_kv_head + g) * c->n_ctx : NULL;
    for (int64_t b = 0; b * SKV_KV_BLOCK < n; b++) {
        const float *K = skv_cache_k_rows(&c->cache, st, (int32_t)b, kb);
        const int64_t s0 = b * SKV_KV_BLOCK, s1 = SKV_MIN(n, s0 + SKV_KV_BLOCK);
        for (int64_t s = s0; s < s1; s++) {
            if (cls && cls[s] != SKV_SK_CRIT && cls[s] != SKV_SK_RECENT) {
                for (int32_t j = 0; j < nh; j++) c->probs[(int64_t)(h0 + j) * c->n_ctx + s] = -INFINITY;
                continue;
            }
            for (int32_t j = 0; j < nh; j++)
                c->probs[(int64_t)(h0 + j) * c->n_ctx + s] =
                    skv_dot(c->q + (int64_t)(h0 + j) * hd, K + (s - s0) * hd, hd) * scale;
        }
    }
    if (c->m->cfg.info.sliding_window > 0)
        for (int64_t s = 0; s < n; s++)
            if (!visible(c, qp, st->pos[s]))
                for (int32_t j = 0; j < nh; j++) c->probs[(int64_t)(h0 + j) * c->n_ctx + s] = -INFINITY;
    for (int32_t j = 0; j < nh; j++) {
        float *pr = c->probs + (int64_t)(h0 + j) * c->n_ctx;
        skv_softmax(pr, n);
        memset(c->att_out + (int64_t)(h0 + j) * hd, 0, (size_t)hd * sizeof(float));
        if (!cls) continue;
        /* marginal slots: V weighted by the small model's probability; the own part scaled by
         * what the marginal mass leaves (mass mode) */
        const float *mw = c->plan_marg + ((int64_t)l * c->m->cfg.info.n_head + h0 + j) * c->n_ctx;
        double mass = 0;
        for (int64_t s = 0; s < n; s++)
            if (cls[s] == SKV_SK_MARG) mass += mw[s];
        const float own = c->plan_paper ? 1.0f : (float)(1.0 - fmin(fmax(mass, 0.0), 1.0));
        for (int64_t s = 0; s < n; s++) pr[s] = cls[s] == SKV_SK_MARG ? mw[s] : pr[s] * own;
    }
    for (int64_t b = 0; b * SKV_KV_BLOCK < n; b++) {
        const float *V = skv_cache_v_rows(&c->cache, st, (int32_t)b, vb);
        const int64_t s0 = b * SKV_KV_BLOCK, s1 = SKV_MIN(n, s0 + SKV_KV_BLOCK);
        for (int64_t s = s0; s < s1; s++) {
            if (cls && cls[s] == SKV_SK_SKIP) continue;
            for (int32_t j = 0; j < nh; j++)
                skv_axpy(c->att_out + (int64_t)(h0 + j) * hd,
                         c->probs[(int64_t)(h0 + j) * c->n_ctx + s], V + (s - s0) * hd, hd);
        }
    }
}

/* Single-token decode: one parallel region for the whole pass, matrix-vector products straight
 * from the stored weights, q/k/v and gate/up fused, residual adds folded into o_proj and
 * down_proj. Barriers separate the steps. */
static skv_status forward_token(skv_context *c, int32_t id, float *logits) {
    const skv_model *m = c->m;
    const skv_model_info *in = &m->cfg.info;
    const int64_t D = in->dim, hd = in->head_dim, F = in->ffn_dim, pos = c->n_past;
    const int64_t QD = in->n_head * hd, KD = in->n_kv_head * hd;
    const int32_t H = in->n_head, G = in->n_head / in->n_kv_head;
    const float scale = 1.0f / sqrtf((float)hd);
    const float *cs = c->rope_cos + pos * hd / 2, *sn = c->rope_sin + pos * hd / 2;
    /* per KV head when there are enough of them, or when statistics are gathered per group */
    const int by_group = in->n_kv_head >= c->n_threads || c->want_acc;
    skv_status err = SKV_OK;
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
#pragma omp single
            {
                for (int32_t g = 0; g < in->n_kv_head; g++) skv_rope(c->k + g * hd, cs, sn, (int32_t)hd);
                skv_status st = append_kv(c, l, pos, c->k, c->v);
                if (st) err = st;
            }
            if (by_group) {
#pragma omp for schedule(static)
                for (int32_t g = 0; g < in->n_kv_head; g++)
                    attend_heads(c, l, g, g * G, G, cs, sn, pos, scale);
            } else {
#pragma omp for schedule(static)
                for (int32_t h = 0; h < H; h++) attend_heads(c, l, h / G, h, 1, cs, sn, pos, scale);
            }
            if (c->head_acc) {
#pragma omp for schedule(static)
                for (int32_t h = 0; h < H; h++) {
                    const int64_t off = ((int64_t)l * H + h) * c->n_ctx, n = skv_cache_stream(&c->cache, l, h / G)->n;
                    const float *pr = c->probs + (int64_t)h * c->n_ctx;
                    for (int64_t s = 0; s < n; s++) c->head_acc[off + s] += pr[s];
                    memcpy(c->head_last + off, pr, (size_t)n * sizeof(float));
                    if (pos >= c->head_win_from)
                        for (int64_t s = 0; s < n; s++) c->head_win[off + s] += pr[s];
                    if (pos < c->head_prefix) {
                        float *hp = c->head_pre + ((int64_t)l * H + h) * c->head_prefix;
                        for (int64_t s = 0; s < n; s++) hp[s] += pr[s];
                    }
                }
            }
            if (c->want_acc) {
#pragma omp for schedule(static)
                for (int32_t g = 0; g < in->n_kv_head; g++) {
                    skv_stream *st = skv_cache_stream(&c->cache, l, g);
                    for (int32_t j = 0; j < G; j++)
                        for (int32_t s = 0; s < st->n; s++)
                            st->acc[s] += c->probs[(int64_t)(g * G + j) * c->n_ctx + s];
                }
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
    return err;
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
    skv_status st = SKV_OK;
    if (c->gpu) { /* per-step eviction happens on the device; compression after a prompt here */
        if (n > 1 && c->want_win) skv_gpu_begin_call(c->gpu, 0, c->n_past + n - SKV_MAX(c->pol.p.obs_window, 1));
        for (int32_t off = 0; off < n && !st; off += c->n_batch) {
            const int32_t nb = SKV_MIN(c->n_batch, n - off);
            float *lg = NULL;
            if (logits && all_logits) lg = logits + (int64_t)off * in->n_vocab;
            else if (logits && off + nb == n) lg = logits;
            if (!(st = skv_gpu_forward(c->gpu, 0, ids + off, nb, c->n_past, lg, all_logits))) c->n_past += nb;
        }
        if (!st && n > 1) st = skv_context_gpu_compress(c);
        return st;
    }
    if (n > 1 && c->want_win) {
        /* the observation window is the last obs_window queries of this call */
        c->win_from = c->n_past + n - SKV_MAX(c->pol.p.obs_window, 1);
        const int64_t ns = (int64_t)in->n_layer * in->n_kv_head;
        for (int64_t i = 0; i < ns; i++)
            memset(c->cache.streams[i].win, 0, sizeof(float) * (size_t)c->cache.streams[i].n);
    }
    for (int32_t off = 0; off < n && !st; off += c->n_batch) {
        int32_t nb = SKV_MIN(c->n_batch, n - off);
        int last = off + nb == n;
        float *lg = NULL;
        if (logits && all_logits) lg = logits + (int64_t)off * in->n_vocab;
        else if (logits && last) lg = logits;
        if (nb == 1)
            st = forward_token(c, ids[off], lg);
        else
            st = forward_chunk(c, ids + off, nb, lg, all_logits);
    }
    if (st) return st;
    if (n > 1)
        skv_policy_compress(&c->pol, &c->cache, c->pol_scratch);
    else
        skv_policy_step(&c->pol, &c->cache, c->pol_scratch);
    return SKV_OK;
}

skv_status skv_decode_sampled(skv_context *c, int32_t id, skv_sampler *s, int32_t *next) {
    const skv_model_info *in = &c->m->cfg.info;
    if (!c->gpu) {
        if (!c->sample_logits && !(c->sample_logits = malloc(sizeof(float) * (size_t)in->n_vocab)))
            return skv_set_error(SKV_ERR_NOMEM, "out of memory");
        skv_status st = skv_decode(c, &id, 1, c->sample_logits, 0);
        if (st) return st;
        *next = skv_sampler_sample(s, c->sample_logits);
        return SKV_OK;
    }
    if (c->n_past + 1 > c->n_ctx)
        return skv_set_error(SKV_ERR_RANGE, "1 token after %d cached exceeds the context of %d tokens", c->n_past,
                             c->n_ctx);
    const int64_t hist = skv_sampler_history(s);
    if (hist > c->n_ctx)
        return skv_set_error(SKV_ERR_RANGE, "the sampler has seen %lld ids, more than the context's %d",
                             (long long)hist, c->n_ctx);
    if (!c->sample_seen && !(c->sample_seen = malloc(sizeof(int32_t) * (size_t)c->n_ctx)))
        return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    skv_gpu_sample g;
    skv_sampler_gpu_args(s, &g, c->sample_seen);
    const int32_t pos = c->n_past;
    skv_status st = skv_gpu_decode_batch(c->gpu, &id, &pos, 1, NULL, next, &g);
    if (!st) c->n_past++;
    return st;
}
