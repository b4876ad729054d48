/*
 * cpu_backend.c — the CPU backend's table (backend.h): its state, the block cache's policy
 * operations, copies, read-back and exchange of streams, plans and a read-only past.
 */
#include "backend/cpu/cpu.h"
#include "kv/quant.h"

#include <cblas.h>

static void *alloc_floats(int64_t n, int *fail) {
    if (n <= 0) n = 1;
    void *p = aligned_alloc(64, (size_t)((n * 4 + 63) / 64 * 64));
    if (!p) *fail = 1;
    return p;
}

static void cpu_free(skv_context *ctx) {
    skv_cpu *c = ctx->bs;
    if (!c) return;
    skv_cache_free(&c->cache);
    skv_cpu_vtop_free(c);
    float **bufs[] = {&c->x, &c->xb, &c->proj, &c->q, &c->att_out, &c->k, &c->v, &c->hb, &c->hb2, &c->att,
                      &c->gk, &c->gv, &c->probs, &c->probs_win, &c->probs_last, &c->blk, &c->wconv,
                      &c->lk, &c->x0};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(*bufs[i]);
    free(c->pol_scratch);
    free(c->actbuf);
    skv_cpu_head_stats_free(c);
    free(c);
    ctx->bs = NULL;
}

static skv_status cpu_init(skv_context *ctx, const skv_context_params *p) {
    const skv_model *m = ctx->m;
    const skv_model_info *in = &m->cfg.info;
    if (p->v_slow) return skv_set_error(SKV_ERR_ARG, "v_slow (V in pinned host memory) needs the CUDA backend");
    skv_cpu *c = calloc(1, sizeof *c);
    if (!c) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    ctx->bs = c;
    skv_cpu_bar_init(&c->bar);
    c->m = m;
    c->n_ctx = ctx->n_ctx, c->n_batch = ctx->n_batch, c->n_threads = ctx->n_threads;
    c->head_win_from = INT64_MAX;
    c->want_acc = !!(ctx->stats & SKV_STAT_ACC);
    c->want_win = !!(ctx->stats & SKV_STAT_WIN);
    c->want_last = !!(ctx->stats & SKV_STAT_LAST);
    skv_kv_format fmt = p->kv_format;
    if (ctx->pol.ops->format) fmt = ctx->pol.ops->format(&ctx->pol.p, fmt);
    skv_status st = skv_cache_init(&c->cache, ctx->n_layer, in->n_kv_head, in->head_dim, c->n_ctx, fmt);
    if (st) {
        free(c);
        ctx->bs = NULL;
        return st;
    }
    if (ctx->stats && (st = skv_cache_enable_stats(&c->cache))) {
        cpu_free(ctx);
        return st;
    }
    const int64_t hd = in->head_dim, B = c->n_batch, T = c->n_ctx;
    const int64_t QD = in->n_head * hd, KD = in->n_kv_head * hd;
    int fail = 0;
    c->x = alloc_floats(B * in->dim, &fail);
    c->xb = alloc_floats(B * in->dim, &fail);
    c->proj = alloc_floats(B * in->dim, &fail);
    c->q = alloc_floats(B * QD, &fail);
    c->att_out = alloc_floats(B * QD, &fail);
    c->k = alloc_floats(B * KD, &fail);
    c->v = alloc_floats(B * KD, &fail);
    c->hb = alloc_floats(B * in->ffn_dim, &fail);
    c->hb2 = alloc_floats(B * in->ffn_dim, &fail);
    c->att_stride = SKV_MIN(B, SKV_ATT_BLOCK) * T;
    c->probs = alloc_floats(in->n_head * T, &fail);
    c->probs_win = alloc_floats(in->n_head * T, &fail);
    c->probs_last = alloc_floats(in->n_head * T, &fail);
    c->blk = alloc_floats((int64_t)c->n_threads * 2 * SKV_KV_BLOCK * hd, &fail);
    c->pol_scratch = malloc((size_t)T * 16 + 64);
    c->iters = ctx->lckv_iters;
    if (m->n_cache_layers < in->n_layer) {
        c->lk = alloc_floats(4 * (int64_t)m->n_cache_layers * B * KD, &fail);
        c->x0 = alloc_floats(B * in->dim, &fail);
    }
    c->act_bytes = (skv_act_bytes(SKV_MAX(SKV_MAX(in->dim, QD), in->ffn_dim)) + 63) / 64 * 64;
    if (!(c->actbuf = aligned_alloc(64, 3 * c->act_bytes))) fail = 1;
    if (!fail && c->pol_scratch && p->collect_head_stats && (st = skv_cpu_head_stats_alloc(c, p->head_prefix))) {
        cpu_free(ctx);
        return st;
    }
    if (fail || !c->pol_scratch) {
        cpu_free(ctx);
        return skv_set_error(SKV_ERR_NOMEM, "cannot allocate the scratch for %d tokens", (int)T);
    }
    openblas_set_num_threads(c->n_threads);
    return SKV_OK;
}

skv_status skv_cpu_prefill_scratch(skv_cpu *c) {
    if (c->wconv) return SKV_OK;
    const skv_model_info *in = &c->m->cfg.info;
    const int64_t KD = (int64_t)in->n_kv_head * in->head_dim;
    int fail = 0;
    c->att = alloc_floats((int64_t)c->n_threads * c->att_stride, &fail);
    c->gk = alloc_floats(KD * c->n_ctx, &fail);
    c->gv = alloc_floats(KD * c->n_ctx, &fail);
    c->wconv = alloc_floats(c->m->max_weight_elems, &fail);
    if (fail) {
        free(c->att), free(c->gk), free(c->gv), free(c->wconv);
        c->att = c->gk = c->gv = c->wconv = NULL;
        return skv_set_error(SKV_ERR_NOMEM, "cannot allocate the prefill scratch for %d tokens", c->n_ctx);
    }
    return SKV_OK;
}

static void cpu_begin_call(skv_context *ctx, int32_t n) {
    skv_cpu *c = ctx->bs;
    if (!c->want_win) return;
    /* the observation window is the last obs_window queries of this call */
    c->win_from = ctx->n_past + n - SKV_MAX(ctx->pol.p.obs_window, 1);
    const int64_t ns = (int64_t)c->cache.n_layer * c->cache.n_kv_head;
    for (int64_t i = 0; i < ns; i++) memset(c->cache.streams[i].win, 0, sizeof(float) * (size_t)c->cache.streams[i].n);
}

static skv_status cpu_compress(skv_context *ctx) {
    skv_cpu *c = ctx->bs;
    skv_policy_compress(&ctx->pol, &c->cache, c->pol_scratch);
    if (ctx->pol.ops->transform) {
        skv_status st = ctx->pol.ops->transform(&ctx->pol.p, &c->cache);
        if (st) return st;
    }
    if (c->cache.vs_err) {
        c->cache.vs_err = 0;
        return skv_set_error(SKV_ERR_IO, "%s", c->cache.vs_msg);
    }
    return SKV_OK;
}

static void cpu_step(skv_context *ctx) {
    skv_cpu *c = ctx->bs;
    skv_policy_step(&ctx->pol, &c->cache, c->pol_scratch);
}

static skv_status cpu_truncate(skv_context *ctx, int32_t n_past) {
    skv_cpu *c = ctx->bs;
    skv_cache_truncate(&c->cache, n_past);
    if (c->cache.vs_err) {
        c->cache.vs_err = 0;
        return skv_set_error(SKV_ERR_IO, "%s", c->cache.vs_msg);
    }
    return SKV_OK;
}

static skv_status vtop_setup(skv_context *ctx, const skv_vtop_rule *r);

static skv_status cpu_copy(skv_context *dctx, const skv_context *sctx) {
    skv_cpu *d = dctx->bs;
    const skv_cpu *s = sctx->bs;
    skv_status st;
    const skv_kv_format want = d->cache.fmt;
    skv_vstore *vs = d->cache.vs; /* the destination's slow store (its plan) stays its own */
    d->cache.vs = NULL;
    skv_cache_free(&d->cache);
    st = skv_cache_clone(&d->cache, &s->cache);
    d->cache.vs = vs;
    if (st) return st;
    if (!d->cache.streams[0].acc && dctx->stats && (st = skv_cache_enable_stats(&d->cache))) return st;
    if (dctx->head_stats) {
        skv_cpu_head_stats_free(d);
        if ((st = skv_cpu_head_stats_copy(d, s))) return st;
    }
    if (vs && want != d->cache.fmt && want != SKV_KV_Q8 && want != SKV_KV_Q4) {
        /* the slow store was laid out for the format the destination asked for (a fork's
         * default f32); the clone keeps the source's (bf16, f16): a store of its row size */
        skv_vstore_close(d->cache.vs);
        d->cache.vs = NULL;
        skv_cpu_vtop_free(d);
        return vtop_setup(dctx, &d->plan.vtop);
    }
    if (want == d->cache.fmt || (want != SKV_KV_Q8 && want != SKV_KV_Q4)) return SKV_OK;
    /* re-store the f32 cache in the quantized format the destination's policy wants */
    if (s->cache.fmt != SKV_KV_F32) return skv_set_error(SKV_ERR_ARG, "fork into a quantized cache needs an f32 source cache");
    const skv_model_info *in = &dctx->m->cfg.info;
    skv_cache q;
    if ((st = skv_cache_init(&q, d->cache.n_layer, in->n_kv_head, in->head_dim, d->n_ctx, want))) return st;
    for (int32_t l = 0; l < d->cache.n_layer && !st; l++)
        for (int32_t g = 0; g < in->n_kv_head && !st; g++) {
            const skv_stream *ss = skv_cache_stream(&d->cache, l, g);
            for (int32_t i = 0; i < ss->n && !st; i++) {
                const float *kr = skv_cache_k_rows(&d->cache, ss, i / SKV_KV_BLOCK, d->blk);
                const float *vr = skv_cache_v_rows(&d->cache, ss, i / SKV_KV_BLOCK, d->blk + SKV_KV_BLOCK * in->head_dim);
                const int32_t r = i % SKV_KV_BLOCK;
                st = skv_cache_append(&q, l, g, ss->pos[i], kr + (int64_t)r * in->head_dim, vr + (int64_t)r * in->head_dim);
            }
        }
    q.vs = d->cache.vs;
    d->cache.vs = NULL;
    skv_cache_free(&d->cache);
    d->cache = q;
    return st;
}

static void cpu_usage(const skv_context *ctx, skv_kv_usage *u) {
    const skv_cpu *c = ctx->bs;
    skv_cache_usage cu;
    skv_cache_usage_get(&c->cache, &cu);
    u->bytes = cu.total;
    for (int f = 0; f < SKV_KV_FORMAT_COUNT; f++) {
        u->bytes_fast += cu.bytes[SKV_TIER_FAST][f];
        u->bytes_slow += cu.bytes[SKV_TIER_SLOW][f];
        u->bytes_by_format[f] = cu.bytes[SKV_TIER_FAST][f] + cu.bytes[SKV_TIER_SLOW][f];
    }
    u->slots = cu.slots;
    if (c->cache.vs) {
        u->store_bytes = skv_vstore_bytes(c->cache.vs);
        u->fetch_steps = c->vt_steps;
        for (int32_t t = 0; c->vt && t < c->n_threads; t++) {
            u->fetch_rows += c->vt[t].ct.rows;
            u->fetch_bytes += c->vt[t].ct.bytes;
            u->fetch_blocks += c->vt[t].ct.blocks;
            u->fetch_ns += c->vt[t].ct.ns;
        }
    }
}

static int64_t cpu_stream_bytes(const skv_context *ctx, int32_t layer, int32_t kv_head) {
    const skv_cpu *c = ctx->bs;
    return skv_cache_stream_bytes(&c->cache, layer, kv_head);
}

static skv_status cpu_stream_get(const skv_context *ctx, int32_t layer, int32_t g, int rows, skv_stream_io *s) {
    const skv_cpu *c = ctx->bs;
    return skv_cache_stream_export(&c->cache, layer, g, rows, s);
}

static skv_status cpu_stream_put(skv_context *ctx, int32_t layer, int32_t g, const skv_stream_io *s) {
    skv_cpu *c = ctx->bs;
    return skv_cache_stream_import(&c->cache, layer, g, s);
}

void skv_cpu_vtop_free(skv_cpu *c) {
    for (int32_t t = 0; c->vt && t < c->n_threads; t++) {
        skv_cpu_vtop *v = &c->vt[t];
        free(v->rank), free(v->idx), free(v->sel), free(v->mark), free(v->rows), free(v->zs);
    }
    free(c->vt);
    c->vt = NULL;
}

/* A V top-N rule: the slow store and each thread's scratch. */
static skv_status vtop_setup(skv_context *ctx, const skv_vtop_rule *r) {
    skv_cpu *c = ctx->bs;
    const skv_model_info *in = &c->m->cfg.info;
    if (c->past) return skv_set_error(SKV_ERR_UNSUPPORTED, "a V top-N plan (kcache) cannot attend to a read-only past");
    if (r->n < 0 || (r->n == 0 && !(r->frac > 0 && r->frac <= 1)))
        return skv_set_error(SKV_ERR_ARG, "V top-N plan: N must be > 0 or a fraction in (0, 1]");
    if (r->recent > c->n_ctx)
        return skv_set_error(SKV_ERR_ARG, "kcache: --kc-recent %d is larger than the context (%d tokens)", r->recent,
                             c->n_ctx);
    if (r->block < SKV_KV_BLOCK || r->block % SKV_KV_BLOCK)
        return skv_set_error(SKV_ERR_ARG, "kcache: --kc-block %d is not a multiple of %d", r->block, SKV_KV_BLOCK);
    const int quant = c->cache.fmt == SKV_KV_Q8 || c->cache.fmt == SKV_KV_Q4;
    const size_t esz = quant ? 1 : c->cache.fmt == SKV_KV_F32 ? 4 : 2;
    skv_vstore *vs;
    skv_status st = skv_vstore_open(&vs, r->store, r->dir, (int64_t)c->cache.n_layer * c->cache.n_kv_head,
                                    c->cache.max_blocks, skv_kv_block_bytes(c->cache.fmt, in->head_dim, 1),
                                    esz * (size_t)in->head_dim, (int32_t)esz, r->block / SKV_KV_BLOCK);
    if (st) return st;
    c->vt_row_bytes = esz * (size_t)in->head_dim;
    if (quant) { /* a quantized row: its scales, minima and codes */
        size_t off0[3], stride[3], len[3];
        skv_quant_vrow_layout(c->cache.fmt, in->head_dim, off0, stride, len);
        skv_vstore_set_row_layout(vs, 3, off0, stride, len);
        c->vt_row_bytes = len[0] + len[1] + len[2];
    }
    if ((st = skv_cache_attach_vstore(&c->cache, vs))) return st;
    skv_cpu_vtop_free(c);
    c->vt = calloc((size_t)c->n_threads, sizeof *c->vt);
    if (!c->vt) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    const size_t T = (size_t)c->n_ctx;
    for (int32_t t = 0; t < c->n_threads; t++) {
        skv_cpu_vtop *v = &c->vt[t];
        v->rank = malloc(T * sizeof(float));
        v->idx = malloc(T * sizeof(int32_t));
        v->sel = malloc(T * sizeof(int32_t));
        v->mark = malloc(T);
        v->rows = malloc(T * (size_t)in->head_dim * sizeof(float));
        v->zs = malloc(skv_vstore_scratch_bytes(vs) + 1);
        if (!v->rank || !v->idx || !v->sel || !v->mark || !v->rows || !v->zs) {
            skv_cpu_vtop_free(c);
            return skv_set_error(SKV_ERR_NOMEM, "out of memory");
        }
    }
    return SKV_OK;
}

static skv_status cpu_set_plan(skv_context *ctx, const skv_read_plan *plan) {
    skv_cpu *c = ctx->bs;
    if (plan && plan->vtop.on) {
        if (plan->cls) return skv_set_error(SKV_ERR_UNSUPPORTED, "a read plan with both slot classes and a V top-N rule");
        skv_status st = vtop_setup(ctx, &plan->vtop);
        if (st) return st;
        c->plan = *plan;
        return SKV_OK;
    }
    if (c->plan.vtop.on) { /* dropping the rule: V back to the fast tier */
        for (int32_t l = 0; l < c->cache.n_layer; l++)
            for (int32_t g = 0; g < c->cache.n_kv_head; g++) {
                skv_status st = skv_cache_recall_v(&c->cache, l, g);
                if (st) return st;
            }
        skv_vstore_close(c->cache.vs);
        c->cache.vs = NULL;
        skv_cpu_vtop_free(c);
    }
    if (plan && plan->cls && (c->cache.fmt == SKV_KV_Q8 || c->cache.fmt == SKV_KV_Q4 || ctx->pol.ev.evicts || c->past))
        return skv_set_error(SKV_ERR_ARG, "a read plan needs a context that keeps every token, unquantized, "
                             "without a read-only past");
    if (plan && plan->cls && plan->stride < c->n_ctx)
        return skv_set_error(SKV_ERR_ARG, "read plan stride %d is shorter than the context (%d)", plan->stride, c->n_ctx);
    if (plan) c->plan = *plan;
    else memset(&c->plan, 0, sizeof c->plan);
    return SKV_OK;
}

static skv_status cpu_set_past(skv_context *ctx, const skv_context *past) {
    skv_cpu *c = ctx->bs;
    if (past && past->be != &skv_backend_cpu)
        return skv_set_error(SKV_ERR_ARG, "read-only past: a CPU context can attend only to a CPU context's cache");
    if (past && (ctx->stats || c->head_acc || c->plan.cls || c->m->cfg.info.sliding_window > 0))
        return skv_set_error(SKV_ERR_UNSUPPORTED, "read-only past: the context may collect no statistics, have no "
                             "read plan and no sliding window");
    c->past = past ? past->bs : NULL;
    return SKV_OK;
}

static const float *cpu_head_row(const skv_context *ctx, int kind, int32_t layer, int32_t head) {
    const skv_cpu *c = ctx->bs;
    const skv_model_info *in = &c->m->cfg.info;
    const float *buf = kind == SKV_HEAD_ACC ? c->head_acc : kind == SKV_HEAD_LAST ? c->head_last
                       : kind == SKV_HEAD_WIN ? c->head_win : c->head_pre;
    if (!buf) {
        skv_set_error(SKV_ERR_ARG, "the context was created without %s",
                      kind == SKV_HEAD_PREFIX ? "head_prefix" : "collect_head_stats");
        return NULL;
    }
    if (layer < 0 || layer >= in->n_layer || head < 0 || head >= in->n_head) {
        skv_set_error(SKV_ERR_ARG, "layer %d head %d out of range", layer, head);
        return NULL;
    }
    const size_t row = (size_t)layer * in->n_head + head;
    return buf + row * (size_t)(kind == SKV_HEAD_PREFIX ? c->head_prefix : c->n_ctx);
}

static skv_status cpu_set_head_window(skv_context *ctx, int32_t from) {
    skv_cpu *c = ctx->bs;
    if (!c->head_acc) return skv_set_error(SKV_ERR_ARG, "the context was created without collect_head_stats");
    c->head_win_from = from;
    return SKV_OK;
}

static void cpu_drop_head_stats(skv_context *ctx) { skv_cpu_head_stats_free(ctx->bs); }

static skv_status cpu_move_tier(skv_context *ctx, skv_tier tier) {
    skv_cpu *c = ctx->bs;
    skv_status st;
    for (int32_t l = 0; l < c->cache.n_layer; l++)
        for (int32_t g = 0; g < c->cache.n_kv_head; g++)
            if ((st = skv_cache_move(&c->cache, l, g, 0, tier)) || (st = skv_cache_move(&c->cache, l, g, 1, tier)))
                return st;
    c->cache.k_tier = c->cache.v_tier = tier;
    return SKV_OK;
}

const skv_backend_ops skv_backend_cpu = {
    .name = "cpu",
    .init = cpu_init,
    .free = cpu_free,
    .begin_call = cpu_begin_call,
    .forward = skv_cpu_forward,
    .compress = cpu_compress,
    .step = cpu_step,
    .truncate = cpu_truncate,
    .copy = cpu_copy,
    .usage = cpu_usage,
    .stream_bytes = cpu_stream_bytes,
    .stream_get = cpu_stream_get,
    .stream_put = cpu_stream_put,
    .set_plan = cpu_set_plan,
    .set_past = cpu_set_past,
    .head_row = cpu_head_row,
    .set_head_window = cpu_set_head_window,
    .drop_head_stats = cpu_drop_head_stats,
    .move_tier = cpu_move_tier,
    .decode_multi = skv_cpu_decode_multi,
};
