/*
 * cpu_forward.c — the CPU backend's decoder forward pass (Llama / Qwen2 / Mistral), float32
 * compute, over the block KV cache.
 *
 * Per layer: x += o_proj(attn(rope(q), rope(k), v)) on rmsnorm(x); x += down(silu(gate)*up) on
 * rmsnorm(x). Several tokens (prefill) run as matrix-matrix products through OpenBLAS, with each
 * KV head's kept tokens gathered into contiguous f32 first; a single token (decode) runs as
 * matrix-vector products straight from the stored bf16/f16/f32 weights and reads the cache
 * block by block in its stored format (kv/kvattn.h: f32, bf16, f16, KIVI int8/int4 without an
 * f32 copy), as the read plan says when there is one (kv/plan.h). A read-only past's
 * streams are attended before the context's own. Statistics: cpu_stats.c.
 */
#include "backend/cpu/cpu.h"
#include "kv/kvattn.h"
#include "kv/quant.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>

#define SKV_VTOP_MAX_GROUP 64 /* query heads per KV head a V top-N plan handles */

/* y(n, rows) = x(n, cols) W^T + bias */
static void linear(skv_cpu *c, const skv_weight *w, const float *bias, const float *x, float *y, int64_t n) {
    if (n == 1) {
        const int64_t rows = w->rows, blk = 16;
        skv_act a;
        skv_act_init(&a, x, w->cols, skv_weight_act_kinds(w), c->actbuf);
#pragma omp parallel for schedule(static) num_threads(c->n_threads)
        for (int64_t r = 0; r < rows; r += blk) skv_matvec_rows_act(w, &a, y, r, SKV_MIN(r + blk, rows));
    } else {
        (c->m->f32_prefill ? skv_matmul_f32 : skv_matmul)(w, x, y, n, c->wconv, c->m->max_weight_elems, c->n_threads);
    }
    if (bias)
#pragma omp parallel for schedule(static) num_threads(c->n_threads) if (n > 1)
        for (int64_t i = 0; i < n; i++)
            for (int64_t r = 0; r < w->rows; r++) y[i * w->rows + r] += bias[r];
}

/* Is a key at position kp visible to a query at position qp of layer l? (causal, sliding
 * window: Mistral's on every layer, Gemma 3's on its local layers) */
static inline int visible(const skv_cpu *c, int32_t l, int64_t qp, int64_t kp) {
    const int32_t w = skv_model_layer_window(c->m, l);
    return kp <= qp && (w <= 0 || qp - kp < w);
}

/* The past's slots of stream (cl, g) (0 without a past). */
static inline int64_t past_slots(const skv_cpu *c, int32_t cl, int32_t g) {
    return c->past ? skv_cache_stream(&c->past->cache, cl, g)->n : 0;
}

/* Prefill attention of n new queries (positions pos0..pos0+n-1) over layer l's source: cache
 * layer cl's kept tokens before this chunk, then the chunk's own K/V kc, vc (n, n_kv_head*hd; as
 * computed, f32). `appended`: the chunk is already in the cache as the last n slots of every
 * stream. `strict` (LCKV condensed layers): query i sees chunk keys < i only, never its own; kc
 * NULL: no chunk keys at all (an LCKV group's first iteration). `stats`: fold statistics into the
 * streams (the layer owns cl and the chunk is appended). q: (n, n_head*hd) -> att_out. */
static void attention_prefill(skv_cpu *c, int32_t l, int32_t cl, int64_t pos0, int64_t n, int last_chunk,
                              const float *kc, const float *vc, int appended, int strict, int stats_ok) {
    const skv_model_info *in = &c->m->cfg.info;
    const int32_t hd = in->head_dim, H = in->n_head, G = H / in->n_kv_head;
    const int64_t QD = (int64_t)H * hd, T = c->n_ctx;
    const float scale = skv_cpu_att_scale(c->m);
    const int32_t window = skv_model_layer_window(c->m, l);
    const int stats = stats_ok && (c->want_acc || c->want_win || c->want_last);
    const int head_stats = stats_ok && c->head_acc;
    const int64_t n_new = kc ? n : 0; /* chunk keys present */
    int use_win = 0, use_last = 0;

    /* Past and old slots as stored (possibly bf16 or quantized); this chunk's own keys and
     * values as computed, in f32: storage precision only affects later tokens (as KIVI does). */
    const int64_t KD = (int64_t)in->n_kv_head * hd;
    for (int32_t g = 0; g < in->n_kv_head; g++) {
        float *gk = c->gk + (int64_t)g * T * hd, *gv = c->gv + (int64_t)g * T * hd;
        const int64_t np = past_slots(c, cl, g);
        if (np) skv_cache_gather(&c->past->cache, cl, g, gk, gv);
        const int64_t n_old = np + skv_cache_stream(&c->cache, cl, g)->n - (appended ? n : 0);
        skv_cache_gather(&c->cache, cl, g, gk + np * hd, gv + np * hd);
        for (int64_t i = 0; i < n_new; i++) {
            memcpy(gk + (n_old + i) * hd, kc + i * KD + (int64_t)g * hd, sizeof(float) * (size_t)hd);
            memcpy(gv + (n_old + i) * hd, vc + i * KD + (int64_t)g * hd, sizeof(float) * (size_t)hd);
        }
    }
    if (stats) {
        memset(c->probs, 0, sizeof(float) * (size_t)H * T);
        memset(c->probs_win, 0, sizeof(float) * (size_t)H * T);
        use_win = c->want_win && pos0 + n > c->win_from;
        use_last = c->want_last && last_chunk;
        if (use_last) memset(c->probs_last, 0, sizeof(float) * (size_t)H * T);
    }

#pragma omp parallel for schedule(dynamic, 1) num_threads(c->n_threads)
    for (int32_t h = 0; h < H; h++) {
        const int32_t g = h / G;
        const skv_stream *st = skv_cache_stream(&c->cache, cl, g);
        const int64_t n_old = past_slots(c, cl, g) + st->n - (appended ? n : 0); /* kept tokens before the chunk */
        const int32_t *kpos = st->pos;
        float *S = c->att + (int64_t)omp_get_thread_num() * c->att_stride; /* (rows, keys) */
        const float *K = c->gk + (int64_t)g * T * hd, *V = c->gv + (int64_t)g * T * hd;
        const float *Q = c->q + (int64_t)h * hd;
        float *O = c->att_out + (int64_t)h * hd;
        float *pa = c->probs + (int64_t)h * T, *pw = c->probs_win + (int64_t)h * T;
        float *pl = c->probs_last + (int64_t)h * T;
        /* Causal blocks of query rows: rows [i0, i1) see the old slots and new slots < i1 (strict:
         * < i1 - 1; no chunk keys: none). */
        for (int64_t i0 = 0; i0 < n; i0 += SKV_ATT_BLOCK) {
            const int64_t i1 = SKV_MIN(i0 + SKV_ATT_BLOCK, n), nb = i1 - i0;
            const int64_t nk = n_old + (n_new ? i1 - strict : 0);
            if (nk <= 0) { /* nothing visible: a zero attention output (LCKV's zero dummy K/V) */
                for (int64_t i = i0; i < i1; i++) memset(O + i * QD, 0, sizeof(float) * (size_t)hd);
                continue;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nb, (int)nk, hd, scale,
                        Q + i0 * QD, (int)QD, K, hd, 0.0f, S, (int)nk);
            for (int64_t i = i0; i < i1; i++) {
                float *row = S + (i - i0) * nk;
                const int64_t qp = pos0 + i, hi = n_old + (n_new ? i + 1 - strict : 0); /* slots >= hi: hidden */
                if (window > 0) { /* (no past with sliding windows: refused) */
                    for (int64_t t = 0; t < hi; t++)
                        if (!visible(c, l, qp, kpos[t])) row[t] = -INFINITY;
                }
                skv_softmax(row, hi);
                for (int64_t t = hi; t < nk; t++) row[t] = 0;
                if (head_stats) {
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
                    if (use_last && i == n - 1)
                        for (int64_t t = 0; t < hi; t++) pl[t] += row[t];
                }
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nb, hd, (int)nk, 1.0f, S,
                        (int)nk, V, hd, 0.0f, O + i0 * QD, (int)QD);
        }
    }
    if (stats) skv_cpu_fold_prefill_stats(c, cl, use_win, use_last);
}

static void rmsnorm_rows(const skv_cpu *c, float *out, const float *x, const float *w, int64_t n) {
    const skv_model_info *in = &c->m->cfg.info;
#pragma omp parallel for schedule(static) num_threads(c->n_threads) if (n > 1)
    for (int64_t i = 0; i < n; i++) skv_rmsnorm(out + i * in->dim, x + i * in->dim, w, in->dim, in->rms_eps);
}

/* Gemma 3: RMSNorm of every head's q and k (n rows) with the layer's q_norm / k_norm */
void skv_cpu_qk_norms(skv_cpu *c, const skv_layer *ly, int64_t n) {
    const skv_model_info *in = &c->m->cfg.info;
    const int64_t hd = in->head_dim;
    for (int64_t i = 0; i < n * in->n_head; i++) skv_rmsnorm(c->q + i * hd, c->q + i * hd, ly->q_norm, hd, in->rms_eps);
    for (int64_t i = 0; i < n * in->n_kv_head; i++) skv_rmsnorm(c->k + i * hd, c->k + i * hd, ly->k_norm, hd, in->rms_eps);
}

skv_status skv_cpu_append_kv(skv_cpu *c, int32_t cl, int64_t pos, const float *k, const float *v) {
    const skv_model_info *in = &c->m->cfg.info;
    for (int32_t g = 0; g < in->n_kv_head; g++) {
        skv_status st = skv_cache_append(&c->cache, cl, g, (int32_t)pos, k + (int64_t)g * in->head_dim,
                                         v + (int64_t)g * in->head_dim);
        if (st) return st;
    }
    return SKV_OK;
}

/* Input rows of the residual stream: embedding rows of ids, or the given embeddings. */
void skv_cpu_embed_rows(skv_cpu *c, const skv_fwd_in *in) {
    const int64_t D = c->m->cfg.info.dim;
    if (in->embd) memcpy(c->x, in->embd, sizeof(float) * (size_t)(in->n * D));
    else
        for (int64_t i = 0; i < in->n; i++) {
            skv_weight_row_f32(&c->m->tok_embed, in->ids[i], c->x + i * D);
            if (c->m->cfg.embed_scale > 0) /* Gemma: embeddings times sqrt(dim) */
                for (int64_t j = 0; j < D; j++) c->x[i * D + j] *= c->m->cfg.embed_scale;
        }
}

/* Final norm and head of rows [r0, r0 + n) of x into the outputs asked for. */
static void outputs(skv_cpu *c, const skv_fwd_out *out, int64_t r0, int64_t n) {
    const int64_t D = c->m->cfg.info.dim;
    if (out->hidden) memcpy(out->hidden, c->x + r0 * D, sizeof(float) * (size_t)(n * D));
    if (!out->logits && !out->hidden_normed) return;
    rmsnorm_rows(c, c->xb, c->x + r0 * D, c->m->final_norm, n);
    if (out->hidden_normed) memcpy(out->hidden_normed, c->xb, sizeof(float) * (size_t)(n * D));
    if (out->logits) linear(c, &c->m->lm_head, NULL, c->xb, out->logits, n);
}

/* The chunk K/V buffer (n_batch, n_kv_head*hd) of cache layer cl, set `which` (0/1; LCKV models
 * keep one set for the pass running and one for the previous iteration), K (v 0) or V (v 1).
 * Standard models have one buffer, reused by every layer. */
static float *chunk_kv(const skv_cpu *c, int32_t cl, int which, int v) {
    if (!c->lk) return v ? c->v : c->k;
    const skv_model_info *in = &c->m->cfg.info;
    const int64_t sz = (int64_t)c->n_batch * in->n_kv_head * in->head_dim;
    return c->lk + (((int64_t)which * c->m->n_cache_layers + cl) * 2 + v) * sz;
}

/* K (RoPE at the chunk's positions) and V of layer l's normed input xb into set `which`. */
static void chunk_own_kv(skv_cpu *c, int32_t l, int which, const skv_fwd_in *fin) {
    const skv_model *m = c->m;
    const skv_layer *ly = &m->layers[l];
    const int64_t hd = m->cfg.info.head_dim, KD = m->cfg.info.n_kv_head * hd;
    float *k = chunk_kv(c, m->cache_of[l], which, 0), *v = chunk_kv(c, m->cache_of[l], which, 1);
    linear(c, &ly->wk, ly->bk, c->xb, k, fin->n);
    linear(c, &ly->wv, ly->bv, c->xb, v, fin->n);
    if (ly->k_norm) /* Gemma 3 */
        for (int64_t i = 0; i < fin->n * m->cfg.info.n_kv_head; i++)
            skv_rmsnorm(k + i * hd, k + i * hd, ly->k_norm, hd, m->cfg.info.rms_eps);
    for (int64_t i = 0; i < fin->n; i++)
        for (int32_t g = 0; g < m->cfg.info.n_kv_head; g++)
            skv_rope(k + i * KD + g * hd, skv_model_rope_at(m, m->rope_cos, l, fin->pos0 + i),
                     skv_model_rope_at(m, m->rope_sin, l, fin->pos0 + i), (int32_t)hd);
}

/* Layer l over the chunk's residual rows x. `append`: the pass whose K/V the cache keeps (a
 * standard model's only pass; an LCKV group's last iteration); else nothing is appended and a
 * caching layer's K/V stay in the pass's buffer set. `have_src`: the previous iteration's K/V
 * exist (condensed layers, t(l) > l, read them; without them only the cache before the chunk). */
static skv_status layer_chunk(skv_cpu *c, int32_t l, const skv_fwd_in *fin, int append, int have_src,
                              const skv_fwd_out *taps) {
    const skv_model *m = c->m;
    const skv_model_info *in = &m->cfg.info;
    const skv_layer *ly = &m->layers[l];
    const int64_t D = in->dim, hd = in->head_dim, F = in->ffn_dim, n = fin->n, pos0 = fin->pos0;
    const int64_t QD = in->n_head * hd, KD = in->n_kv_head * hd;
    const int32_t t = m->kv_src[l], cl = m->cache_of[l];
    skv_status st;
    const size_t tap = sizeof(float) * (size_t)(n * D);
    if (taps && taps->resid_in) memcpy(taps->resid_in + (int64_t)l * taps->tap_rows * D, c->x, tap);
    rmsnorm_rows(c, c->xb, c->x, ly->attn_norm, n);
    if (taps && taps->attn_in) memcpy(taps->attn_in + (int64_t)l * taps->tap_rows * D, c->xb, tap);
    linear(c, &ly->wq, ly->bq, c->xb, c->q, n);
    if (ly->q_norm) /* Gemma 3 */
        for (int64_t i = 0; i < n * in->n_head; i++) skv_rmsnorm(c->q + i * hd, c->q + i * hd, ly->q_norm, hd, in->rms_eps);
    if (t == l) {
        chunk_own_kv(c, l, c->lk_cur, fin);
        if (append)
            for (int64_t i = 0; i < n; i++)
                if ((st = skv_cpu_append_kv(c, cl, pos0 + i, chunk_kv(c, cl, c->lk_cur, 0) + i * KD,
                                    chunk_kv(c, cl, c->lk_cur, 1) + i * KD)))
                    return st;
    }
#pragma omp parallel for schedule(static) num_threads(c->n_threads) if (n > 1)
    for (int64_t i = 0; i < n; i++) {
        const float *cs = skv_model_rope_at(m, m->rope_cos, l, pos0 + i), *sn = skv_model_rope_at(m, m->rope_sin, l, pos0 + i);
        for (int32_t h = 0; h < in->n_head; h++) skv_rope(c->q + i * QD + h * hd, cs, sn, (int32_t)hd);
    }
    if (t > l) { /* condensed: the source runs later; the previous iteration's K/V, strictly earlier tokens */
        const int prev = c->lk_cur ^ 1;
        attention_prefill(c, l, cl, pos0, n, fin->last_chunk, have_src ? chunk_kv(c, cl, prev, 0) : NULL,
                          chunk_kv(c, cl, prev, 1), 0, 1, 0);
    } else { /* own K/V, or a lower layer's of this pass (appended already when `append`) */
        attention_prefill(c, l, cl, pos0, n, fin->last_chunk, chunk_kv(c, cl, c->lk_cur, 0),
                          chunk_kv(c, cl, c->lk_cur, 1), append, 0, append && t == l);
    }
    linear(c, &ly->wo, ly->bo, c->att_out, c->proj, n);
    if (ly->post_attn_norm) rmsnorm_rows(c, c->proj, c->proj, ly->post_attn_norm, n);
    for (int64_t i = 0; i < n * D; i++) c->x[i] += c->proj[i];

    rmsnorm_rows(c, c->xb, c->x, ly->ffn_norm, n);
    linear(c, &ly->w_gate, NULL, c->xb, c->hb, n);
    linear(c, &ly->w_up, NULL, c->xb, c->hb2, n);
#pragma omp parallel for schedule(static) num_threads(c->n_threads) if (n > 1)
    for (int64_t i = 0; i < n; i++)
        if (m->cfg.gemma3) skv_geglu(c->hb + i * F, c->hb2 + i * F, F);
        else skv_swiglu(c->hb + i * F, c->hb2 + i * F, F);
    linear(c, &ly->w_down, NULL, c->hb, c->proj, n);
    if (ly->post_ffn_norm) rmsnorm_rows(c, c->proj, c->proj, ly->post_ffn_norm, n);
    for (int64_t i = 0; i < n * D; i++) c->x[i] += c->proj[i];
    return SKV_OK;
}

/* One chunk of n <= n_batch tokens at positions pos0..pos0+n-1. LCKV models (docs/techniques.md
 * section 3): the layers below the group once; the group [grp_lo, grp_hi] iterated `lckv_iters`
 * times from the same input, iteration k's condensed layers reading the source K/V of iteration
 * k-1 (the first: none), the earlier iterations stopping after the source's K/V projection; the
 * last iteration's K/V are cached; then the layers above once. */
static skv_status forward_chunk(skv_cpu *c, const skv_fwd_in *fin, const skv_fwd_out *out) {
    const skv_model *m = c->m;
    const skv_model_info *in = &m->cfg.info;
    const int64_t n = fin->n, D = in->dim;
    const int32_t lo = m->grp_lo, hi = m->grp_hi, L = in->n_layer;
    skv_status st = skv_cpu_prefill_scratch(c);
    if (st) return st;
    skv_cpu_embed_rows(c, fin);
    const int32_t l0 = fin->layer0, l1 = fin->layer1 > 0 ? fin->layer1 : L;
    if (lo >= 0 && (l0 != 0 || l1 != L || out->resid_in || out->attn_in || out->layer_done))
        return skv_set_error(SKV_ERR_UNSUPPORTED, "decode: layer ranges and per-layer taps are not available for "
                             "LCKV models (layer_types)");
    c->lk_cur = 0;
    int32_t l = l0;
    if (lo >= 0) {
        for (; l < lo; l++)
            if ((st = layer_chunk(c, l, fin, 1, 0, NULL))) return st;
        memcpy(c->x0, c->x, sizeof(float) * (size_t)(n * D));
        for (int32_t it = 1; it < c->iters; it++) {
            if (it > 1) memcpy(c->x, c->x0, sizeof(float) * (size_t)(n * D));
            for (int32_t j = lo; j < hi; j++)
                if ((st = layer_chunk(c, j, fin, 0, it > 1, NULL))) return st;
            rmsnorm_rows(c, c->xb, c->x, m->layers[hi].attn_norm, n);
            chunk_own_kv(c, hi, c->lk_cur, fin);
            c->lk_cur ^= 1;
        }
        if (c->iters > 1) memcpy(c->x, c->x0, sizeof(float) * (size_t)(n * D));
        for (; l <= hi; l++)
            if ((st = layer_chunk(c, l, fin, 1, c->iters > 1, NULL))) return st;
    }
    for (; l < l1; l++) {
        if ((st = layer_chunk(c, l, fin, 1, 0, out))) return st;
        if (out->layer_done) out->layer_done(out->layer_arg, l, fin->pos0 + fin->n);
    }
    if (out->all) outputs(c, out, 0, n);
    else outputs(c, out, n - 1, 1);
    return SKV_OK;
}

#define SKV_KV_PREFETCH 2 /* blocks ahead */

/* V block b of a stream for prefetching: NULL where it is in the slow store (or absent). */
static const void *v_block_fast(const skv_cache *cache, const skv_stream *st, int64_t b, skv_kv_format *f) {
    if (b * SKV_KV_BLOCK >= st->n || b * SKV_KV_BLOCK < st->n_slow) return NULL;
    return skv_cache_block(cache, st, (int32_t)b, 1, f, NULL);
}

/* Scores of query heads [h0, h0 + nh) against the rows of one stream placed at slot offset
 * `off` of the probability rows, each block read in its stored format (kv/kvattn.h); own K is
 * read only for slots the plan scores (cls may be NULL: all). */
static void score_stream(skv_cpu *c, const skv_cache *cache, const skv_stream *st, const uint8_t *cls, int64_t off,
                         int32_t h0, int32_t nh, float scale) {
    const int32_t hd = c->m->cfg.info.head_dim;
    const int64_t n = st->n, T = c->n_ctx;
    const int64_t nb = (n + SKV_KV_BLOCK - 1) / SKV_KV_BLOCK;
    for (int64_t b = 0; b < nb; b++) {
        const int64_t s0 = b * SKV_KV_BLOCK, s1 = SKV_MIN(n, s0 + SKV_KV_BLOCK);
        skv_kv_format f;
        const void *p;
        /* K two blocks ahead, and this block's V (read after the softmax), arrive while this
         * block is read */
        if (b + SKV_KV_PREFETCH < nb && (p = skv_cache_block(cache, st, (int32_t)(b + SKV_KV_PREFETCH), 0, &f, NULL)))
            skv_kvattn_prefetch(f, hd, p, 0);
        if ((p = v_block_fast(cache, st, b, &f))) skv_kvattn_prefetch(f, hd, p, 1);
        const void *K = skv_cache_block(cache, st, (int32_t)b, 0, &f, NULL);
        skv_kvattn_scores(f, hd, K, (int32_t)(s1 - s0), c->q + (int64_t)h0 * hd, nh, scale, cls ? cls + s0 : NULL,
                          c->probs + (int64_t)h0 * T + off + s0, T);
    }
}

/* att_out of heads [h0, h0 + nh) += their probabilities (times mul[j] when not NULL) times V of
 * the stream's blocks [b0, ...), read in their stored format; slots the plan skips are not read. */
static void weigh_stream(skv_cpu *c, const skv_cache *cache, const skv_stream *st, const uint8_t *cls, int64_t off,
                         int32_t h0, int32_t nh, int32_t b0, const float *mul, float *vb) {
    const int32_t hd = c->m->cfg.info.head_dim;
    const int64_t n = st->n, T = c->n_ctx;
    for (int64_t b = b0; b * SKV_KV_BLOCK < n; b++) {
        skv_kv_format f, nf;
        const void *next = v_block_fast(cache, st, b + SKV_KV_PREFETCH, &nf);
        if (next) skv_kvattn_prefetch(nf, hd, next, 1);
        const void *V = skv_cache_block(cache, st, (int32_t)b, 1, &f, vb);
        const int64_t s0 = b * SKV_KV_BLOCK, s1 = SKV_MIN(n, s0 + SKV_KV_BLOCK);
        skv_kvattn_weigh(f, hd, V, (int32_t)(s1 - s0), c->probs + (int64_t)h0 * T + off + s0, T, mul,
                         cls ? cls + s0 : NULL, nh, c->att_out + (int64_t)h0 * hd);
    }
}

/* V top-N (plan.vtop) over a stream whose slots [0, n_slow) have V in the slow store: probs
 * hold the softmax over every slot (the full log-sum-exp) of the group's nh = G heads. Rank
 * the slow slots, read the N best rows from the store, and finish each head's output over them
 * and the fast slots, in slot order (so that reading every row equals ordinary attention bit
 * for bit). */
static void weigh_vtop(skv_cpu *c, const skv_stream *st, int32_t h0, int32_t nh, float *vb) {
    const skv_vtop_rule *r = &c->plan.vtop;
    const int32_t hd = c->m->cfg.info.head_dim;
    const int64_t T = c->n_ctx;
    const int32_t n = st->n, ns = st->n_slow;
    skv_cpu_vtop *w = &c->vt[omp_get_thread_num()];
    float inv[SKV_VTOP_MAX_GROUP];
    const int32_t nsel = skv_vtop_group(r, c->probs + (int64_t)h0 * T, T, nh, n, ns, w->sel, inv, w->rank, w->idx, w->mark);
    if (skv_vstore_rows(c->cache.vs, skv_cache_stream_index(&c->cache, st), w->sel, nsel, w->rows, w->zs, &w->ct)) {
        skv_cache_vs_fail(&c->cache);
        memset(w->rows, 0, (size_t)nsel * hd * sizeof(float));
    }
    /* the rows read, packed as the store returns them, go back to their rows of a block in the
     * cache's format (vb), one block at a time, and the block kernel reads them as the full
     * path reads its blocks (so that reading every row is the same arithmetic) */
    const skv_kv_format fmt = c->cache.fmt;
    size_t off0[3] = {0}, stride[3] = {0}, len[3] = {0};
    int nseg = 1;
    if (fmt == SKV_KV_Q8 || fmt == SKV_KV_Q4) {
        skv_quant_vrow_layout(fmt, hd, off0, stride, len);
        nseg = 3;
    } else {
        stride[0] = len[0] = c->vt_row_bytes;
    }
    uint8_t cls[SKV_KV_BLOCK];
    for (int32_t i = 0; i < nsel;) {
        const int32_t b = w->sel[i] / SKV_KV_BLOCK;
        int32_t rows = 0;
        memset(cls, SKV_READ_SKIP, sizeof cls);
        for (; i < nsel && w->sel[i] / SKV_KV_BLOCK == b; i++) {
            const int32_t t = w->sel[i] % SKV_KV_BLOCK;
            const uint8_t *src = w->rows + (size_t)i * c->vt_row_bytes;
            for (int k = 0; k < nseg; k++) {
                memcpy((uint8_t *)vb + off0[k] + (size_t)t * stride[k], src, len[k]);
                src += len[k];
            }
            cls[t] = SKV_READ_OWN;
            rows = t + 1;
        }
        skv_kvattn_weigh(fmt, hd, vb, rows, c->probs + (int64_t)h0 * T + (int64_t)b * SKV_KV_BLOCK, T, inv, cls, nh,
                         c->att_out + (int64_t)h0 * hd);
    }
    weigh_stream(c, &c->cache, st, NULL, 0, h0, nh, ns / SKV_KV_BLOCK, inv, vb);
}

/* Decode attention of query heads [h0, h0 + nh), all in KV group g, over the past's and the
 * group's own kept tokens, block by block; each K and V block is read once for the nh heads.
 * Probabilities are left in c->probs (one row of n_ctx per head, by slot: the past's first).
 * RoPE is applied to the queries here. */
void skv_cpu_attend_heads(skv_cpu *c, int32_t l, int32_t cl, int32_t g, int32_t h0, int32_t nh, const float *cs,
                         const float *sn, int64_t qp, float scale) {
    const skv_model_info *in = &c->m->cfg.info;
    const int32_t hd = in->head_dim;
    const skv_stream *st = skv_cache_stream(&c->cache, cl, g);
    const skv_stream *ps = c->past ? skv_cache_stream(&c->past->cache, cl, g) : NULL;
    const int64_t np = ps ? ps->n : 0, n = np + st->n;
    float *vb = c->blk + (int64_t)omp_get_thread_num() * 2 * SKV_KV_BLOCK * hd; /* V blocks read from a store */
    for (int32_t j = 0; j < nh; j++) skv_rope(c->q + (int64_t)(h0 + j) * hd, cs, sn, hd);
    /* a plan (no past with plans: refused) reads own K only for OWN slots, V for OWN and VONLY */
    const uint8_t *cls = c->plan.cls ? c->plan.cls + ((int64_t)cl * in->n_kv_head + g) * c->plan.stride : NULL;
    if (ps) score_stream(c, &c->past->cache, ps, NULL, 0, h0, nh, scale);
    score_stream(c, &c->cache, st, cls, np, h0, nh, scale);
    if (skv_model_layer_window(c->m, l) > 0)
        for (int64_t s = 0; s < st->n; s++)
            if (!visible(c, l, qp, st->pos[s]))
                for (int32_t j = 0; j < nh; j++) c->probs[(int64_t)(h0 + j) * c->n_ctx + np + s] = -INFINITY;
    for (int32_t j = 0; j < nh; j++) {
        float *pr = c->probs + (int64_t)(h0 + j) * c->n_ctx;
        skv_softmax(pr, n);
        memset(c->att_out + (int64_t)(h0 + j) * hd, 0, (size_t)hd * sizeof(float));
        if (!cls) continue;
        /* VONLY slots: V weighted by the plan's weight; the own part scaled by what their mass
         * leaves (SKV_PLAN_MASS) */
        const float *mw = c->plan.vweight ? c->plan.vweight + ((int64_t)l * in->n_head + h0 + j) * c->plan.stride : NULL;
        double mass = 0;
        for (int64_t s = 0; s < n; s++)
            if (cls[s] == SKV_READ_VONLY) mass += mw[s];
        const float own = c->plan.combine == SKV_PLAN_SUM ? 1.0f : (float)(1.0 - fmin(fmax(mass, 0.0), 1.0));
        for (int64_t s = 0; s < n; s++) pr[s] = cls[s] == SKV_READ_VONLY ? mw[s] : pr[s] * own;
    }
    if (st->n_slow > 0 && c->plan.vtop.on) { /* (no past with a V top-N rule: refused) */
        weigh_vtop(c, st, h0, nh, vb);
        return;
    }
    if (ps) weigh_stream(c, &c->past->cache, ps, NULL, 0, h0, nh, 0, NULL, vb);
    weigh_stream(c, &c->cache, st, cls, np, h0, nh, 0, NULL, vb);
}

/* Before a decode step under a V top-N rule: the store must still hold what was written;
 * V of slots older than the newest `recent` moves to it (cache layers >= fast_layers); for
 * cold-cache measurements its pages are dropped. */
skv_status skv_cpu_vtop_before_step(skv_cpu *c) {
    const skv_vtop_rule *r = &c->plan.vtop;
    skv_status st = skv_vstore_check(c->cache.vs);
    if (st) return st;
    if (SKV_MAX(1, c->m->cfg.info.n_head / c->m->cfg.info.n_kv_head) > SKV_VTOP_MAX_GROUP)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "V top-N: more than %d query heads per KV head", SKV_VTOP_MAX_GROUP);
    int any = 0;
    for (int32_t l = r->fast_layers; l < c->cache.n_layer; l++)
        for (int32_t g = 0; g < c->cache.n_kv_head; g++) {
            if ((st = skv_cache_offload_v(&c->cache, l, g, r->recent))) return st;
            any |= skv_cache_stream(&c->cache, l, g)->n_slow > 0;
        }
    if (any) c->vt_steps++;
    if (any && r->cold) skv_vstore_drop_cache(c->cache.vs);
    return SKV_OK;
}

/* x += rmsnorm(proj) with weight w (Gemma's post-attention and post-FFN norms), one token */
void skv_cpu_post_norm_add(skv_cpu *c, const float *w) {
    const skv_model_info *in = &c->m->cfg.info;
    skv_rmsnorm(c->proj, c->proj, w, in->dim, in->rms_eps);
    for (int64_t i = 0; i < in->dim; i++) c->x[i] += c->proj[i];
}

/* Single-token decode: one parallel region for the whole pass, matrix-vector products straight
 * from the stored weights, q/k/v and gate/up fused, residual adds folded into o_proj and
 * down_proj. Barriers separate the steps. */
static skv_status forward_token(skv_cpu *c, const skv_fwd_in *fin, const skv_fwd_out *out) {
    const skv_model *m = c->m;
    const skv_model_info *in = &m->cfg.info;
    const int64_t D = in->dim, hd = in->head_dim, F = in->ffn_dim, pos = fin->pos0;
    const int64_t QD = in->n_head * hd, KD = in->n_kv_head * hd;
    const int32_t H = in->n_head, G = in->n_head / in->n_kv_head;
    const float scale = skv_cpu_att_scale(m);
    const int gemma = m->cfg.gemma3;
    /* per KV head when there are enough of them, or when statistics are gathered per group */
    const int by_group = in->n_kv_head >= c->n_threads || c->want_acc || c->plan.vtop.on;
    skv_status err = SKV_OK;
    if (c->plan.vtop.on && (err = skv_cpu_vtop_before_step(c))) return err;
    skv_cpu_embed_rows(c, fin);

    skv_cpu_bar *bar = &c->bar;
#pragma omp parallel num_threads(c->n_threads)
    {
        /* thread 0 does the serial steps; skv_cpu_bar_wait separates the steps (cpu_sync.c) */
        const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
#define SYNC() skv_cpu_bar_wait(bar, nt)
        int64_t r0, r1;
        for (int32_t l = 0; l < in->n_layer; l++) {
            const skv_layer *ly = &m->layers[l];
            const int32_t cl = m->cache_of[l];
            const float *cs = skv_model_rope_at(m, m->rope_cos, l, pos), *sn = skv_model_rope_at(m, m->rope_sin, l, pos);
            if (tid == 0) {
                skv_rmsnorm(c->xb, c->x, ly->attn_norm, D, in->rms_eps);
                skv_act_init(&c->ax, c->xb, D, m->act_kinds, c->actbuf);
            }
            SYNC();
            /* q, k, v: one row range over the three stacked matrices (q only: LCKV layers without
             * K/V of their own) */
            const int own = m->kv_src[l] == l;
            skv_cpu_team_rows(own ? QD + 2 * KD : QD, &r0, &r1);
            for (int64_t r = r0; r < r1; r++) {
                if (r < QD) {
                    c->q[r] = skv_weight_row_dot_act(&ly->wq, r, &c->ax) + (ly->bq ? ly->bq[r] : 0);
                } else if (r < QD + KD) {
                    int64_t k = r - QD;
                    c->k[k] = skv_weight_row_dot_act(&ly->wk, k, &c->ax) + (ly->bk ? ly->bk[k] : 0);
                } else {
                    int64_t k = r - QD - KD;
                    c->v[k] = skv_weight_row_dot_act(&ly->wv, k, &c->ax) + (ly->bv ? ly->bv[k] : 0);
                }
            }
            SYNC();
            if (own) {
                if (tid == 0) {
                    if (ly->q_norm) skv_cpu_qk_norms(c, ly, 1);
                    for (int32_t g = 0; g < in->n_kv_head; g++) skv_rope(c->k + g * hd, cs, sn, (int32_t)hd);
                    skv_status st = skv_cpu_append_kv(c, cl, pos, c->k, c->v);
                    if (st) err = st;
                }
                SYNC();
            }
            /* attention: KV groups (or query heads) in contiguous ranges, as a static schedule */
            if (by_group) {
                skv_cpu_team_rows(in->n_kv_head, &r0, &r1);
                for (int32_t g = (int32_t)r0; g < r1; g++) skv_cpu_attend_heads(c, l, cl, g, g * G, G, cs, sn, pos, scale);
            } else {
                skv_cpu_team_rows(H, &r0, &r1);
                for (int32_t h = (int32_t)r0; h < r1; h++) skv_cpu_attend_heads(c, l, cl, h / G, h, 1, cs, sn, pos, scale);
            }
            SYNC();
            /* statistics come from the layer that owns the cache layer */
            if (c->head_acc && own) {
                skv_cpu_team_rows(H, &r0, &r1);
                for (int32_t h = (int32_t)r0; h < r1; h++) skv_cpu_decode_head_stats(c, l, cl, pos, h);
                SYNC();
            }
            if ((c->want_acc || c->want_last) && own) {
                skv_cpu_team_rows(in->n_kv_head, &r0, &r1);
                for (int32_t g = (int32_t)r0; g < r1; g++) skv_cpu_decode_stream_stats(c, cl, g);
                SYNC();
            }
            /* x += o_proj(att_out) */
            if (tid == 0) skv_act_init(&c->ao, c->att_out, QD, m->act_kinds, c->actbuf + c->act_bytes);
            SYNC();
            skv_cpu_team_rows(D, &r0, &r1);
            if (gemma) { /* x += post_attn_norm(o_proj(att_out)) */
                for (int64_t r = r0; r < r1; r++) c->proj[r] = skv_weight_row_dot_act(&ly->wo, r, &c->ao);
                SYNC();
                if (tid == 0) skv_cpu_post_norm_add(c, ly->post_attn_norm);
            } else {
                for (int64_t r = r0; r < r1; r++)
                    c->x[r] += skv_weight_row_dot_act(&ly->wo, r, &c->ao) + (ly->bo ? ly->bo[r] : 0);
            }
            SYNC();
            if (tid == 0) {
                skv_rmsnorm(c->xb, c->x, ly->ffn_norm, D, in->rms_eps);
                skv_act_init(&c->ax, c->xb, D, m->act_kinds, c->actbuf);
            }
            SYNC();
            /* hb = silu(gate xb) * (up xb) */
            skv_cpu_team_rows(F, &r0, &r1);
            for (int64_t r = r0; r < r1; r++) {
                float gt = skv_weight_row_dot_act(&ly->w_gate, r, &c->ax);
                float up = skv_weight_row_dot_act(&ly->w_up, r, &c->ax);
                c->hb[r] = (gemma ? skv_gelu_tanh(gt) : skv_silu(gt)) * up;
            }
            SYNC();
            if (tid == 0) skv_act_init(&c->ah, c->hb, F, m->act_kinds, c->actbuf + 2 * c->act_bytes);
            SYNC();
            skv_cpu_team_rows(D, &r0, &r1);
            if (gemma) { /* x += post_ffn_norm(down(hb)) */
                for (int64_t r = r0; r < r1; r++) c->proj[r] = skv_weight_row_dot_act(&ly->w_down, r, &c->ah);
                SYNC();
                if (tid == 0) skv_cpu_post_norm_add(c, ly->post_ffn_norm);
            } else {
                for (int64_t r = r0; r < r1; r++) c->x[r] += skv_weight_row_dot_act(&ly->w_down, r, &c->ah);
            }
            SYNC();
        }
        if (out->logits || out->hidden_normed) {
            if (tid == 0) {
                if (out->hidden) memcpy(out->hidden, c->x, sizeof(float) * (size_t)D);
                skv_rmsnorm(c->xb, c->x, m->final_norm, D, in->rms_eps);
                if (out->hidden_normed) memcpy(out->hidden_normed, c->xb, sizeof(float) * (size_t)D);
                skv_act_init(&c->ax, c->xb, D, m->act_kinds, c->actbuf);
            }
            SYNC();
            if (out->logits) {
                skv_cpu_team_rows(in->n_vocab, &r0, &r1);
                for (int64_t r = r0; r < r1; r++) out->logits[r] = skv_weight_row_dot_act(&m->lm_head, r, &c->ax);
            }
        }
#undef SYNC
    }
    if (out->hidden && !out->logits && !out->hidden_normed) memcpy(out->hidden, c->x, sizeof(float) * (size_t)D);
    if (!err && c->cache.vs_err) {
        c->cache.vs_err = 0;
        return skv_set_error(SKV_ERR_IO, "%s", c->cache.vs_msg);
    }
    return err;
}

/* LCKV chunks of at most min(iters, SKV_LCKV_TOKENS) tokens run token by token (exact, and no
 * dearer than the iterations). */
static skv_status forward_tokens(skv_cpu *c, const skv_fwd_in *fin, const skv_fwd_out *out) {
    const int64_t V = c->m->cfg.info.n_vocab, D = c->m->cfg.info.dim;
    for (int32_t i = 0; i < fin->n; i++) {
        skv_fwd_in f1 = *fin;
        f1.ids = fin->ids ? fin->ids + i : NULL;
        f1.embd = fin->embd ? fin->embd + (int64_t)i * D : NULL;
        f1.n = 1, f1.pos0 = fin->pos0 + i;
        const int row = out->all || i == fin->n - 1;
        const int64_t r = out->all ? i : 0;
        const skv_fwd_out o1 = {.logits = row && out->logits ? out->logits + r * V : NULL,
                                .hidden = row && out->hidden ? out->hidden + r * D : NULL,
                                .hidden_normed = row && out->hidden_normed ? out->hidden_normed + r * D : NULL};
        skv_status st = forward_token(c, &f1, &o1);
        if (st) return st;
    }
    return SKV_OK;
}

skv_status skv_cpu_forward(skv_context *ctx, const skv_fwd_in *in, const skv_fwd_out *out) {
    skv_cpu *c = ctx->bs;
    const int whole = in->layer0 == 0 && (in->layer1 == 0 || in->layer1 == ctx->m->cfg.info.n_layer);
    if (!whole && (out->logits || out->hidden || out->hidden_normed))
        return skv_set_error(SKV_ERR_ARG, "decode: a layer range [%d, %d) gives no logits or final hidden states",
                             in->layer0, in->layer1);
    /* taps and layer ranges run the multi-token path (also for one token) */
    const int taps = out->resid_in || out->attn_in || out->layer_done;
    if (in->n == 1 && whole && !taps) return forward_token(c, in, out);
    if (c->m->grp_lo >= 0 && whole && !taps && in->n <= SKV_MIN(c->iters, SKV_LCKV_TOKENS))
        return forward_tokens(c, in, out);
    return forward_chunk(c, in, out);
}
