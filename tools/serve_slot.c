/*
 * serve_slot.c — where a slot's KV cache lives, and prefix reuse.
 *
 * A slot runs one request at a time. With the CUDA backend, requests under the full policy run
 * as sequence `idx` of one shared context of `parallel` sequences (group 0, its batched
 * decode), and requests under an evicting policy as a sequence of a shared context made with
 * that policy (a group per distinct method, up to SRV_GROUPS, each sequence compressed and
 * evicting on its own); every other request (any request on the CPU, whose backend has no
 * several-sequence contexts, or one whose group could not be made) runs in the slot's own
 * context, made with the request's policy.
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

int slot_uses_batch(const srv *s, const srv_req *r) { return s->grp[0].c && is_full(&r->pol); }

skv_context *slot_ctx(const srv *s, const srv_slot *sl) { return s->grp[sl->grp].c; }

int32_t slot_n_past(const srv *s, const srv_slot *sl) {
    return sl->in_batch ? skv_seq_n_past(slot_ctx(s, sl), sl->seq) : sl->own ? skv_context_n_past(sl->own) : 0;
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

int slot_group(srv *s, const skv_policy_params *p) {
    if (s->backend != SKV_BACKEND_CUDA || is_full(p) || skv_policy_evicts(p->name) <= 0) return 0;
    for (int i = 1; i < s->n_grp; i++)
        if (same_policy(&s->grp[i].p, p)) return i;
    if (s->n_grp >= SRV_GROUPS) return 0;
    srv_group *g = &s->grp[s->n_grp];
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = s->n_ctx;
    cp.n_batch = s->prefill_chunk;
    cp.backend = SKV_BACKEND_CUDA;
    cp.kv_format = SKV_KV_BF16;
    cp.n_seq = s->parallel;
    cp.batch_invariant = s->batch_invariant;
    cp.policy = *p;
    g->used = calloc((size_t)s->parallel, 1);
    if (!g->used || skv_context_init(s->model, cp, &g->c)) { /* (no memory for it: own contexts as before) */
        free(g->used);
        memset(g, 0, sizeof *g);
        return 0;
    }
    snprintf(g->name, sizeof g->name, "%s", p->name);
    g->p = *p;
    g->p.name = g->name;
    return s->n_grp++;
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
    int gi = 0;
    if (slot_uses_batch(s, r)) {
        sl->in_batch = 1, sl->grp = 0, sl->seq = sl->idx;
        skv_context *b = s->grp[0].c;
        if (sl->cache_kind != SLOT_BATCH) *reused = 0;
        st = skv_seq_truncate(b, sl->idx, SKV_CLI_MIN(*reused, skv_seq_n_past(b, sl->idx)));
        if (!st && s->backend == SKV_BACKEND_CUDA && sl->own) { /* free the GPU memory of an old own context */
            skv_context_free(sl->own);
            sl->own = NULL;
        }
        sl->cache_kind = SLOT_BATCH;
    } else if ((gi = slot_group(s, &r->pol)) > 0) { /* the lowest free sequence of the method's group */
        srv_group *g = &s->grp[gi];
        int q = 0;
        while (q < s->parallel && g->used[q]) q++;
        if (q == s->parallel) return SKV_ERR_RANGE; /* (cannot happen: a sequence per slot) */
        g->used[q] = 1;
        sl->in_batch = 1, sl->grp = gi, sl->seq = q;
        *reused = 0;
        st = skv_seq_truncate(g->c, q, 0);
        if (!st && sl->own) {
            skv_context_free(sl->own);
            sl->own = NULL;
        }
        sl->cache_kind = SLOT_NONE;
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
    skv_status st = sl->in_batch ? skv_seq_decode_logits(slot_ctx(s, sl), sl->seq, ids, n, logits)
                                 : skv_decode(sl->own, ids, n, logits, 0);
    if (!st && sl->reusable) push_ids(sl, ids, n);
    return st;
}

void slot_release(srv *s, srv_slot *sl) {
    if (!sl->reusable) sl->n_ids = 0;
    if (sl->in_batch && sl->grp > 0) { /* the sequence back to its group, empty (its blocks freed) */
        skv_seq_truncate(slot_ctx(s, sl), sl->seq, 0);
        s->grp[sl->grp].used[sl->seq] = 0;
        sl->in_batch = 0;
    }
    if (sl->own && s->backend == SKV_BACKEND_CUDA && !sl->reusable) { /* GPU memory back */
        skv_context_free(sl->own);
        sl->own = NULL;
    }
}

int64_t slot_kv_bytes(const srv *s, const srv_slot *sl, int64_t *fast, int64_t *slow) {
    if (sl->in_batch) { /* group 0: the tokens' K/V; an evicting group: the blocks the sequence holds */
        const int64_t b = sl->grp ? skv_seq_kv_bytes(slot_ctx(s, sl), sl->seq)
                                  : (int64_t)skv_seq_n_past(slot_ctx(s, sl), sl->seq) * s->kv_tok_bytes;
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
