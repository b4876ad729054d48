/*
 * cpu_stats.c — the CPU backend's attention statistics: per slot and group-summed (acc: every
 * query; win: the observation window's queries; last: the newest query), kept in the cache's
 * streams for the policies, and per query head by position (collect_head_stats: every query,
 * the last step's, a prefix's, a window's) for SmallKV.
 */
#include "backend/cpu/cpu.h"

void skv_cpu_fold_prefill_stats(skv_cpu *c, int32_t cl, int use_win, int use_last) {
    const skv_model_info *in = &c->m->cfg.info;
    const int32_t G = in->n_head / in->n_kv_head;
    for (int32_t g = 0; g < in->n_kv_head; g++) {
        skv_stream *st = skv_cache_stream(&c->cache, cl, g);
        if (use_last) memset(st->last, 0, sizeof(float) * (size_t)st->n);
        for (int32_t j = 0; j < G; j++) {
            const float *pa = c->probs + (int64_t)(g * G + j) * c->n_ctx;
            const float *pw = c->probs_win + (int64_t)(g * G + j) * c->n_ctx;
            const float *pl = c->probs_last + (int64_t)(g * G + j) * c->n_ctx;
            if (c->want_acc)
                for (int32_t s = 0; s < st->n; s++) st->acc[s] += pa[s];
            if (use_win)
                for (int32_t s = 0; s < st->n; s++) st->win[s] += pw[s];
            if (use_last)
                for (int32_t s = 0; s < st->n; s++) st->last[s] += pl[s];
        }
    }
}

void skv_cpu_decode_stream_stats(skv_cpu *c, int32_t cl, int32_t g) {
    const skv_model_info *in = &c->m->cfg.info;
    const int32_t G = in->n_head / in->n_kv_head;
    skv_stream *st = skv_cache_stream(&c->cache, cl, g);
    if (c->want_acc)
        for (int32_t j = 0; j < G; j++)
            for (int32_t s = 0; s < st->n; s++) st->acc[s] += c->probs[(int64_t)(g * G + j) * c->n_ctx + s];
    if (c->want_last) {
        memset(st->last, 0, sizeof(float) * (size_t)st->n);
        for (int32_t j = 0; j < G; j++)
            for (int32_t s = 0; s < st->n; s++) st->last[s] += c->probs[(int64_t)(g * G + j) * c->n_ctx + s];
    }
}

void skv_cpu_decode_head_stats(skv_cpu *c, int32_t l, int32_t cl, int64_t pos, int32_t h) {
    const skv_model_info *in = &c->m->cfg.info;
    const int32_t H = in->n_head, G = H / in->n_kv_head;
    const int64_t off = ((int64_t)l * H + h) * c->n_ctx, n = skv_cache_stream(&c->cache, cl, h / G)->n;
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

skv_status skv_cpu_head_stats_alloc(skv_cpu *c, int32_t head_prefix) {
    const skv_model_info *in = &c->m->cfg.info;
    const size_t nh = (size_t)in->n_layer * in->n_head * (size_t)c->n_ctx;
    c->head_acc = calloc(nh, sizeof(float));
    c->head_last = calloc(nh, sizeof(float));
    c->head_win = calloc(nh, sizeof(float));
    if (!c->head_acc || !c->head_last || !c->head_win) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    if (head_prefix > 0) {
        c->head_prefix = SKV_MIN(head_prefix, c->n_ctx);
        c->head_pre = calloc((size_t)in->n_layer * in->n_head * (size_t)c->head_prefix, sizeof(float));
        if (!c->head_pre) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    }
    return SKV_OK;
}

void skv_cpu_head_stats_free(skv_cpu *c) {
    free(c->head_acc), free(c->head_last), free(c->head_pre), free(c->head_win);
    c->head_acc = c->head_last = c->head_pre = c->head_win = NULL;
    c->head_prefix = 0;
    c->head_win_from = INT64_MAX;
}

skv_status skv_cpu_head_stats_copy(skv_cpu *d, const skv_cpu *s) {
    const skv_model_info *in = &s->m->cfg.info;
    if (!s->head_acc) return SKV_OK;
    const size_t nh = (size_t)in->n_layer * in->n_head * (size_t)d->n_ctx;
    d->head_acc = malloc(nh * sizeof(float));
    d->head_last = malloc(nh * sizeof(float));
    d->head_win = malloc(nh * sizeof(float));
    if (!d->head_acc || !d->head_last || !d->head_win) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    memcpy(d->head_acc, s->head_acc, nh * sizeof(float));
    memcpy(d->head_last, s->head_last, nh * sizeof(float));
    memcpy(d->head_win, s->head_win, nh * sizeof(float));
    d->head_win_from = s->head_win_from;
    if (s->head_pre) {
        const size_t np = (size_t)in->n_layer * in->n_head * (size_t)s->head_prefix;
        d->head_pre = malloc(np * sizeof(float));
        if (!d->head_pre) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
        memcpy(d->head_pre, s->head_pre, np * sizeof(float));
        d->head_prefix = s->head_prefix;
    }
    return SKV_OK;
}
