/*
 * serve_slot.c — where a slot's KV cache lives, and prefix reuse.
 *
 * A slot runs one request at a time. With the CUDA backend, requests under the full policy run
 * as sequence `idx` of one shared context of `parallel` sequences (its batched decode); every
 * other request (any request on the CPU, whose backend has no several-sequence contexts, and a
 * request with an evicting policy on CUDA, whose batched context runs the full policy only)
 * runs in the slot's own context, made with the request's policy.
 *
 * Prefix reuse: a slot keeps the ids its cache holds after a request under the full policy; a
 * new request goes to the free slot sharing the longest prefix with it, rounded down to whole
 * blocks of prefill_chunk tokens (so the rest is prefilled in the same chunks as without reuse
 * and the results are bitwise the same), and the cache is truncated to that prefix. Only ids
 * that went in by prefill count (a decode step's K/V comes from other kernels than a prefill's).
 * On the CPU a longer prefix held by any other slot, busy or free, is borrowed: the slot's
 * context becomes a fork of that slot's (skv_context_fork copies the K/V as stored), truncated.
 */
#include "serve_slot.h"

#include <stdlib.h>
#include <string.h>

static int is_full(const skv_policy_params *p) { return !p->name || !strcmp(p->name, "full"); }

int slot_uses_batch(const srv *s, const srv_req *r) { return s->batch && is_full(&r->pol); }

int32_t slot_n_past(const srv *s, const srv_slot *sl) {
    return sl->in_batch ? skv_seq_n_past(s->batch, sl->idx) : sl->own ? skv_context_n_past(sl->own) : 0;
}

/* Prompt tokens slot sl could reuse for r. */
int32_t slot_prefix(const srv *s, const srv_slot *sl, const srv_req *r) {
    if (!is_full(&r->pol) || !sl->reusable) return 0;
    if (slot_uses_batch(s, r) != (sl->cache_kind == SLOT_BATCH)) return 0;
    int32_t n = 0;
    const int32_t lim = SKV_CLI_MIN(sl->n_ids, r->n_prompt - 1);
    while (n < lim && sl->ids[n] == r->prompt[n]) n++;
    return n / s->prefill_chunk * s->prefill_chunk;
}

static skv_status new_own(srv *s, srv_slot *sl, const skv_policy_params *pol) {
    skv_context_free(sl->own);
    sl->own = NULL;
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = s->n_ctx;
    cp.n_batch = s->prefill_chunk;
    cp.backend = s->backend;
    if (s->backend == SKV_BACKEND_CUDA) cp.kv_format = SKV_KV_BF16;
    cp.policy = *pol;
    skv_status st = skv_context_init(s->model, cp, &sl->own);
    if (st) return st;
    snprintf(sl->own_pol, sizeof sl->own_pol, "%s", pol->name ? pol->name : "full");
    sl->own_p = *pol;
    sl->own_p.name = sl->own_pol;
    return SKV_OK;
}

static int same_policy(const skv_policy_params *a, const skv_policy_params *b) {
    return !strcmp(a->name ? a->name : "full", b->name ? b->name : "full") && a->budget == b->budget &&
           a->budget_tokens == b->budget_tokens && a->sinks == b->sinks && a->recent_frac == b->recent_frac &&
           a->obs_window == b->obs_window && a->pool_kernel == b->pool_kernel &&
           a->pyramid_beta == b->pyramid_beta && a->quant_bits == b->quant_bits;
}

/* CPU: another slot (busy or free) holding a longer prefix of r than sl does lends it: sl's
 * context becomes a fork of the donor's (the same K/V bits), truncated to the prefix. */
static skv_status borrow_prefix(srv *s, srv_slot *sl, srv_req *r, int32_t *reused) {
    srv_slot *donor = NULL;
    int32_t best = *reused;
    for (int i = 0; i < s->parallel; i++) {
        srv_slot *d = &s->slots[i];
        if (d == sl || !d->own || d->cache_kind != SLOT_OWN) continue;
        const int32_t n = slot_prefix(s, d, r);
        if (n > best) best = n, donor = d;
    }
    if (!donor) return SKV_OK;
    skv_policy_params full = skv_policy_default_params("full");
    skv_context *c = NULL;
    skv_status st = skv_context_fork(donor->own, &full, &c);
    if (!st) st = skv_context_truncate(c, best);
    if (st) { /* no loan: the slot prefills everything itself */
        skv_context_free(c);
        return SKV_OK;
    }
    skv_context_free(sl->own);
    sl->own = c;
    snprintf(sl->own_pol, sizeof sl->own_pol, "full");
    sl->own_p = full;
    sl->own_p.name = sl->own_pol;
    if (sl->cap_ids < best) {
        int32_t *p = realloc(sl->ids, sizeof(int32_t) * (size_t)best);
        if (!p) return SKV_ERR_NOMEM;
        sl->ids = p, sl->cap_ids = best;
    }
    memcpy(sl->ids, donor->ids, sizeof(int32_t) * (size_t)best);
    *reused = best;
    return SKV_OK;
}

skv_status slot_prepare(srv *s, srv_slot *sl, srv_req *r, int32_t *reused) {
    *reused = slot_prefix(s, sl, r);
    skv_status st = SKV_OK;
    if (slot_uses_batch(s, r)) {
        sl->in_batch = 1;
        if (sl->cache_kind != SLOT_BATCH) *reused = 0;
        st = skv_seq_truncate(s->batch, sl->idx, SKV_CLI_MIN(*reused, skv_seq_n_past(s->batch, sl->idx)));
        if (!st && s->backend == SKV_BACKEND_CUDA && sl->own) { /* free the GPU memory of an old own context */
            skv_context_free(sl->own);
            sl->own = NULL;
        }
        sl->cache_kind = SLOT_BATCH;
    } else {
        sl->in_batch = 0;
        const int own_ok = sl->own && same_policy(&sl->own_p, &r->pol) && is_full(&r->pol) && sl->cache_kind == SLOT_OWN;
        if (!own_ok) *reused = 0;
        const int32_t mine = *reused;
        if (is_full(&r->pol) && s->backend == SKV_BACKEND_CPU) st = borrow_prefix(s, sl, r, reused);
        if (!st && *reused == mine) /* else sl->own is now the donor's fork, truncated */
            st = own_ok ? skv_context_truncate(sl->own, *reused) : new_own(s, sl, &r->pol);
        sl->cache_kind = SLOT_OWN;
    }
    if (st) {
        sl->reusable = 0, sl->n_ids = 0;
        return st;
    }
    sl->n_ids = *reused;
    sl->reusable = is_full(&r->pol);
    return SKV_OK;
}

static void push_ids(srv_slot *sl, const int32_t *ids, int32_t n) {
    if (sl->n_ids + n > sl->cap_ids) {
        int32_t cap = SKV_CLI_MAX(sl->cap_ids * 2, sl->n_ids + n + 256);
        int32_t *p = realloc(sl->ids, sizeof(int32_t) * (size_t)cap);
        if (!p) {
            sl->reusable = 0;
            return;
        }
        sl->ids = p, sl->cap_ids = cap;
    }
    memcpy(sl->ids + sl->n_ids, ids, sizeof(int32_t) * (size_t)n);
    sl->n_ids += n;
}

skv_status slot_append(srv *s, srv_slot *sl, const int32_t *ids, int32_t n, float *logits) {
    skv_status st = sl->in_batch ? skv_seq_decode(s->batch, sl->idx, ids, n) : skv_decode(sl->own, ids, n, logits, 0);
    if (!st && sl->reusable) push_ids(sl, ids, n);
    return st;
}

void slot_release(srv *s, srv_slot *sl) {
    if (!sl->reusable) sl->n_ids = 0;
    if (sl->in_batch) { /* a full sequence could not take the dummy token of later batched steps */
        const int32_t n = skv_seq_n_past(s->batch, sl->idx);
        if (n >= s->n_ctx - 1) skv_seq_truncate(s->batch, sl->idx, s->n_ctx - 2);
        if (sl->n_ids > s->n_ctx - 2) sl->n_ids = s->n_ctx - 2;
    }
    if (sl->own && s->backend == SKV_BACKEND_CUDA && !sl->reusable) { /* GPU memory back */
        skv_context_free(sl->own);
        sl->own = NULL;
    }
}

int64_t slot_kv_bytes(const srv *s, const srv_slot *sl, int64_t *fast, int64_t *slow) {
    if (sl->in_batch) {
        const int64_t b = (int64_t)skv_seq_n_past(s->batch, sl->idx) * s->kv_tok_bytes;
        if (fast) *fast += b;
        return b;
    }
    if (!sl->own) return 0;
    skv_kv_usage u;
    skv_context_kv_usage(sl->own, &u);
    if (fast) *fast += u.bytes_fast;
    if (slow) *slow += u.bytes_slow;
    return u.bytes;
}

void slot_free(srv_slot *sl) {
    skv_context_free(sl->own);
    free(sl->ids);
    free(sl->gen);
    free(sl->pend);
    skv_sampler_free(sl->smp);
    skv_detok_free(sl->dt);
}
