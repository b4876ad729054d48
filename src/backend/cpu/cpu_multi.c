/*
 * cpu_multi.c — one decode step of several CPU contexts of one model together (a server's
 * continuous batch): every weight row is read from memory once per step for all of them, each
 * context keeps its own cache, policy, read plan and statistics.
 *
 * The pass is forward_token's (cpu_forward.c) with every per-token stage run for each context:
 * the matrix-vector products walk their rows in tiles of about 16 KB, each tile dotted with the
 * activations, 16 at a time, while it sits in L1, bf16 weights widened once for 4 of them
 * (skv_weight_row_dot_multi: the same arithmetic per activation as one context's step, so every
 * context's logits equal its own skv_decode bit for bit); norms, RoPE, cache appends and
 * the statistics run per context; attention runs over (context, KV group or head) items.
 */
#include "backend/cpu/cpu.h"

#include <stdlib.h>
#include <string.h>

#define MULTI_TILE_BYTES 16384 /* weight bytes of a row tile */
#define MULTI_CHUNK 16         /* activations dotted with a tile together */

/* Output rows y[k][i] and activations a[k][i] of context i, by stage k. */
enum { Y_Q, Y_K, Y_V, Y_X, Y_PROJ, Y_HB, Y_HB2, Y_LOGITS, Y_N };
enum { A_X, A_O, A_H, A_N };

typedef struct multi {
    skv_cpu **c;
    int32_t n;
    int64_t *pos;
    float **y[Y_N];
    const skv_act **a[A_N];
    int32_t *it_ctx, *it_g, *it_h0, *it_nh, n_items; /* attention work items (one layer) */
    atomic_int *next;   /* (n_layer) the next attention item to take, per layer (from 0) */
    skv_cpu_bar *bar;   /* the first context's decode barrier (cpu_sync.c), for the whole team */
    skv_status *err;
} multi;

/* The team in step again after a stage, as `omp for`'s closing barrier did: the decode step's
 * barrier (cpu_sync.c) instead of OpenMP's, whose passive wait sleeps and wakes a vCPU at every
 * one of a step's ~90 barriers. Per-context stages take this thread's share of the contexts
 * (skv_cpu_team_rows). */
#define SYNC() skv_cpu_bar_wait(mu->bar, omp_get_num_threads())

/* y[i][r] (add: +=) W[r] . a[i] + bias[r] for rows [r0, r1) and every context i: tiles of
 * rows, each dotted with chunks of MULTI_CHUNK activations (skv_weight_row_dot_multi) */
static void mdot(const multi *mu, const skv_weight *w, const float *bias, int64_t r0, int64_t r1, int yk, int ak,
                 int add) {
    const int64_t rb = SKV_MAX(skv_dtype_row_bytes(w->dtype, w->cols), 1);
    const int64_t tile = SKV_MAX(1, MULTI_TILE_BYTES / rb);
    float v[MULTI_CHUNK];
    for (int64_t t0 = r0; t0 < r1; t0 += tile) {
        const int64_t t1 = SKV_MIN(t0 + tile, r1);
        for (int32_t i0 = 0; i0 < mu->n; i0 += MULTI_CHUNK) {
            const int nb = (int)SKV_MIN(MULTI_CHUNK, mu->n - i0);
            for (int64_t r = t0; r < t1; r++) {
                skv_weight_row_dot_multi(w, r, mu->a[ak] + i0, nb, v);
                const float b = bias ? bias[r] : 0;
                for (int j = 0; j < nb; j++) {
                    float *y = mu->y[yk][i0 + j];
                    if (add) y[r] += v[j] + b;
                    else y[r] = v[j] + b;
                }
            }
        }
    }
}

/* Layer l for every context (inside the parallel region; ends with the team in step). */
static void layer(const multi *mu, int32_t l) {
    const skv_model *m = mu->c[0]->m;
    const skv_model_info *in = &m->cfg.info;
    const skv_layer *ly = &m->layers[l];
    const int64_t D = in->dim, hd = in->head_dim, F = in->ffn_dim;
    const int64_t QD = in->n_head * hd, KD = in->n_kv_head * hd;
    const int32_t H = in->n_head, n = mu->n, cl = m->cache_of[l];
    const int own = m->kv_src[l] == l, gemma = m->cfg.gemma3;
    const float scale = skv_cpu_att_scale(m);
    int64_t r0, r1;
    skv_cpu_team_rows(n, &r0, &r1);
    for (int32_t i = (int32_t)r0; i < r1; i++) {
        skv_cpu *c = mu->c[i];
        skv_rmsnorm(c->xb, c->x, ly->attn_norm, D, in->rms_eps);
        skv_act_init(&c->ax, c->xb, D, m->act_kinds, c->actbuf);
    }
    SYNC();
    /* q, k, v: one row range over the three stacked matrices */
    skv_cpu_team_rows(own ? QD + 2 * KD : QD, &r0, &r1);
    if (r0 < QD) mdot(mu, &ly->wq, ly->bq, r0, SKV_MIN(r1, QD), Y_Q, A_X, 0);
    if (own && r1 > QD && r0 < QD + KD)
        mdot(mu, &ly->wk, ly->bk, SKV_MAX(r0, QD) - QD, SKV_MIN(r1, QD + KD) - QD, Y_K, A_X, 0);
    if (own && r1 > QD + KD) mdot(mu, &ly->wv, ly->bv, SKV_MAX(r0, QD + KD) - QD - KD, r1 - QD - KD, Y_V, A_X, 0);
    SYNC();
    if (own) {
        skv_cpu_team_rows(n, &r0, &r1);
        for (int32_t i = (int32_t)r0; i < r1; i++) {
            skv_cpu *c = mu->c[i];
            const float *cs = skv_model_rope_at(m, m->rope_cos, l, mu->pos[i]), *sn = skv_model_rope_at(m, m->rope_sin, l, mu->pos[i]);
            if (ly->q_norm) skv_cpu_qk_norms(c, ly, 1);
            for (int32_t g = 0; g < in->n_kv_head; g++) skv_rope(c->k + g * hd, cs, sn, (int32_t)hd);
            skv_status st = skv_cpu_append_kv(c, cl, mu->pos[i], c->k, c->v);
            if (st && !mu->err[i]) mu->err[i] = st;
        }
        SYNC();
    }
    /* attention items taken one at a time (contexts of different lengths) */
    for (int32_t k; (k = atomic_fetch_add_explicit(&mu->next[l], 1, memory_order_relaxed)) < mu->n_items;) {
        const int32_t i = mu->it_ctx[k];
        const float *cs = skv_model_rope_at(m, m->rope_cos, l, mu->pos[i]), *sn = skv_model_rope_at(m, m->rope_sin, l, mu->pos[i]);
        skv_cpu_attend_heads(mu->c[i], l, cl, mu->it_g[k], mu->it_h0[k], mu->it_nh[k], cs, sn, mu->pos[i], scale);
    }
    SYNC();
    if (own) { /* statistics (from the layer that owns the cache layer) */
        skv_cpu_team_rows(n * H, &r0, &r1);
        for (int32_t k = (int32_t)r0; k < r1; k++) {
            skv_cpu *c = mu->c[k / H];
            if (c->head_acc) skv_cpu_decode_head_stats(c, l, cl, mu->pos[k / H], k % H);
        }
        SYNC();
        skv_cpu_team_rows(n * in->n_kv_head, &r0, &r1);
        for (int32_t k = (int32_t)r0; k < r1; k++) {
            skv_cpu *c = mu->c[k / in->n_kv_head];
            if (c->want_acc || c->want_last) skv_cpu_decode_stream_stats(c, cl, k % in->n_kv_head);
        }
        SYNC();
    }
    skv_cpu_team_rows(n, &r0, &r1);
    for (int32_t i = (int32_t)r0; i < r1; i++) skv_act_init(&mu->c[i]->ao, mu->c[i]->att_out, QD, m->act_kinds, mu->c[i]->actbuf + mu->c[i]->act_bytes);
    SYNC();
    /* x += o_proj(att_out) (Gemma: x += post_attn_norm(o_proj(att_out))) */
    skv_cpu_team_rows(D, &r0, &r1);
    mdot(mu, &ly->wo, ly->bo, r0, r1, gemma ? Y_PROJ : Y_X, A_O, !gemma);
    SYNC();
    if (gemma) {
        skv_cpu_team_rows(n, &r0, &r1);
        for (int32_t i = (int32_t)r0; i < r1; i++) skv_cpu_post_norm_add(mu->c[i], ly->post_attn_norm);
        SYNC();
    }
    skv_cpu_team_rows(n, &r0, &r1);
    for (int32_t i = (int32_t)r0; i < r1; i++) {
        skv_cpu *c = mu->c[i];
        skv_rmsnorm(c->xb, c->x, ly->ffn_norm, D, in->rms_eps);
        skv_act_init(&c->ax, c->xb, D, m->act_kinds, c->actbuf);
    }
    SYNC();
    /* hb = silu(gate xb) * (up xb) */
    skv_cpu_team_rows(F, &r0, &r1);
    mdot(mu, &ly->w_gate, NULL, r0, r1, Y_HB, A_X, 0);
    mdot(mu, &ly->w_up, NULL, r0, r1, Y_HB2, A_X, 0);
    for (int32_t i = 0; i < n; i++) {
        float *hb = mu->c[i]->hb, *up = mu->c[i]->hb2;
        for (int64_t r = r0; r < r1; r++) hb[r] = (gemma ? skv_gelu_tanh(hb[r]) : skv_silu(hb[r])) * up[r];
    }
    SYNC();
    skv_cpu_team_rows(n, &r0, &r1);
    for (int32_t i = (int32_t)r0; i < r1; i++) skv_act_init(&mu->c[i]->ah, mu->c[i]->hb, F, m->act_kinds, mu->c[i]->actbuf + 2 * mu->c[i]->act_bytes);
    SYNC();
    skv_cpu_team_rows(D, &r0, &r1);
    mdot(mu, &ly->w_down, NULL, r0, r1, gemma ? Y_PROJ : Y_X, A_H, !gemma);
    SYNC();
    if (gemma) {
        skv_cpu_team_rows(n, &r0, &r1);
        for (int32_t i = (int32_t)r0; i < r1; i++) skv_cpu_post_norm_add(mu->c[i], ly->post_ffn_norm);
        SYNC();
    }
}

static void multi_free(multi *mu) {
    free(mu->c);
    free(mu->pos);
    for (int k = 0; k < Y_N; k++) free(mu->y[k]);
    for (int k = 0; k < A_N; k++) free(mu->a[k]);
    free(mu->it_ctx);
    free(mu->next);
    free(mu->err);
}

skv_status skv_cpu_decode_multi(skv_context *const *cs, int32_t n, const int32_t *ids, float *logits) {
    const skv_model *m = cs[0]->m;
    const skv_model_info *in = &m->cfg.info;
    const int32_t H = in->n_head, G = H / in->n_kv_head;
    multi mu = {.n = n};
    int ok = (mu.c = malloc(sizeof(skv_cpu *) * (size_t)n)) && (mu.pos = malloc(sizeof(int64_t) * (size_t)n)) &&
             (mu.err = calloc((size_t)n, sizeof(skv_status))) &&
             (mu.it_ctx = malloc(sizeof(int32_t) * 4 * (size_t)n * (size_t)H)) &&
             (mu.next = calloc((size_t)in->n_layer, sizeof(atomic_int)));
    for (int k = 0; ok && k < Y_N; k++) ok = (mu.y[k] = malloc(sizeof(float *) * (size_t)n)) != NULL;
    for (int k = 0; ok && k < A_N; k++) ok = (mu.a[k] = malloc(sizeof(skv_act *) * (size_t)n)) != NULL;
    if (!ok) {
        multi_free(&mu);
        return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    }
    mu.it_g = mu.it_ctx + (size_t)n * H, mu.it_h0 = mu.it_g + (size_t)n * H, mu.it_nh = mu.it_h0 + (size_t)n * H;
    int nt = cs[0]->n_threads;
    skv_status st = SKV_OK;
    for (int32_t i = 0; i < n && !st; i++) {
        skv_cpu *c = cs[i]->bs;
        mu.c[i] = c;
        mu.pos[i] = cs[i]->n_past;
        nt = SKV_MIN(nt, c->n_threads); /* per-thread scratch of every context covers the team */
        mu.y[Y_Q][i] = c->q, mu.y[Y_K][i] = c->k, mu.y[Y_V][i] = c->v, mu.y[Y_X][i] = c->x;
        mu.y[Y_PROJ][i] = c->proj, mu.y[Y_HB][i] = c->hb, mu.y[Y_HB2][i] = c->hb2;
        mu.y[Y_LOGITS][i] = logits ? logits + (int64_t)i * in->n_vocab : NULL;
        mu.a[A_X][i] = &c->ax, mu.a[A_O][i] = &c->ao, mu.a[A_H][i] = &c->ah;
        /* per KV group or per query head, as the context's own step splits it */
        const int by_group = in->n_kv_head >= c->n_threads || c->want_acc || c->plan.vtop.on;
        for (int32_t k = 0; k < (by_group ? in->n_kv_head : H); k++, mu.n_items++) {
            mu.it_ctx[mu.n_items] = i;
            mu.it_g[mu.n_items] = by_group ? k : k / G;
            mu.it_h0[mu.n_items] = by_group ? k * G : k;
            mu.it_nh[mu.n_items] = by_group ? G : 1;
        }
        if (c->plan.vtop.on) st = skv_cpu_vtop_before_step(c);
        const skv_fwd_in fin = {.ids = ids + i, .n = 1, .pos0 = (int32_t)mu.pos[i]};
        if (!st) skv_cpu_embed_rows(c, &fin);
    }
    if (st) {
        multi_free(&mu);
        return st;
    }

    mu.bar = &((skv_cpu *)cs[0]->bs)->bar; /* (its statistics carry over from step to step) */
    multi *const mp = &mu;
#pragma omp parallel num_threads(nt)
    {
        multi *const mu = mp; /* (SYNC names mu) */
        int64_t r0, r1;
        for (int32_t l = 0; l < in->n_layer; l++) layer(mu, l);
        if (logits) {
            skv_cpu_team_rows(n, &r0, &r1);
            for (int32_t i = (int32_t)r0; i < r1; i++) {
                skv_cpu *c = mu->c[i];
                skv_rmsnorm(c->xb, c->x, m->final_norm, in->dim, in->rms_eps);
                skv_act_init(&c->ax, c->xb, in->dim, m->act_kinds, c->actbuf);
            }
            SYNC();
            skv_cpu_team_rows(in->n_vocab, &r0, &r1);
            mdot(mu, &m->lm_head, NULL, r0, r1, Y_LOGITS, A_X, 0);
        }
    }
    for (int32_t i = 0; i < n && !st; i++) {
        skv_cpu *c = mu.c[i];
        if (mu.err[i]) st = mu.err[i];
        else if (c->cache.vs_err) {
            c->cache.vs_err = 0;
            st = skv_set_error(SKV_ERR_IO, "%s", c->cache.vs_msg);
        }
    }
    multi_free(&mu);
    return st;
}
