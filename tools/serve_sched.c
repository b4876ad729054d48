/*
 * serve_sched.c — the scheduler thread: continuous batching over `parallel` slots.
 *
 * Each iteration: admit queued requests into free slots while their KV reservation fits
 * (--kv-mem), dropping cancelled ones; prefill at most about one chunk (prefill_chunk tokens)
 * in total, in whole chunks, so a long prompt does not stall the running streams; then one
 * decode step of every decoding sequence — on CUDA one call of the batched decode per group
 * (serve_slot.c: the full-policy sequences, and one group per evicting KV method, each in a
 * shared context; batch-invariant unless --batch-invariant off: a stream's logits do not
 * depend on what else is decoded); every sequence with its own context (every one on the CPU,
 * whatever its policy) in one skv_decode_multi call, the CPU's batched decode; sample
 * each (log-probabilities first when asked), detokenize, apply stop strings and hand the
 * released text to the waiting HTTP thread.
 *
 * An evicting policy compresses after every multi-token call, so its prompt is prefilled in one
 * call (the context splits it into n_batch chunks itself and compresses once at the end).
 */
#include "serve_slot.h"

#include <malloc.h>
#include <stdlib.h>
#include <string.h>

void srv_req_free(srv_req *r) {
    if (!r) return;
    pthread_cond_destroy(&r->cv);
    free(r->prompt);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->text);
    free(r->toks);
    free(r);
}

static void unref_locked(srv_req *r) {
    if (--r->refs == 0) srv_req_free(r);
}

int srv_submit(srv *s, srv_req *r) {
    pthread_mutex_lock(&s->mu);
    if (s->n_queue >= s->queue_cap || !s->running) {
        s->met.rejected_429++;
        pthread_mutex_unlock(&s->mu);
        return 429;
    }
    r->refs++;
    s->queue[s->n_queue++] = r;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

void srv_release(srv *s, srv_req *r) {
    pthread_mutex_lock(&s->mu);
    if (!r->done) r->cancelled = 1;
    unref_locked(r);
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* Hand text gen[released, upto) and the tokens starting before upto to the request; the
 * other tokens wait (mode 0), are dropped (1: a stop string cut them) or go too (2: the end). */
static void emit(srv *s, srv_slot *sl, size_t upto, int mode) {
    srv_req *r = sl->r;
    pthread_mutex_lock(&s->mu);
    const size_t add = upto > sl->released ? upto - sl->released : 0;
    if (r->text_len + add + 1 > r->text_cap) {
        size_t cap = SKV_CLI_MAX(r->text_cap * 2, r->text_len + add + 256);
        char *p = realloc(r->text, cap);
        if (p) r->text = p, r->text_cap = cap;
    }
    if (r->text_len + add + 1 <= r->text_cap) {
        memcpy(r->text + r->text_len, sl->gen + sl->released, add);
        r->text_len += add;
        r->text[r->text_len] = 0;
    }
    int32_t keep = 0;
    for (int32_t i = 0; i < sl->n_pend; i++) {
        if ((size_t)sl->pend[i].off < upto || mode == 2) {
            if (r->n_toks == r->cap_toks) {
                int32_t cap = SKV_CLI_MAX(16, r->cap_toks * 2);
                srv_tok *p = realloc(r->toks, sizeof(srv_tok) * (size_t)cap);
                if (!p) continue;
                r->toks = p, r->cap_toks = cap;
            }
            r->toks[r->n_toks++] = sl->pend[i];
        } else if (mode == 0) {
            sl->pend[keep++] = sl->pend[i];
        }
    }
    sl->n_pend = keep;
    sl->released = upto;
    pthread_cond_signal(&r->cv); /* its own HTTP thread only: waking every waiting thread per token costs more than the decode */
    pthread_mutex_unlock(&s->mu);
}

static void finish(srv *s, srv_slot *sl, const char *reason, const char *err) {
    srv_req *r = sl->r;
    const int64_t kvb = slot_kv_bytes(s, sl, NULL, NULL);
    pthread_mutex_lock(&s->mu);
    r->finish = reason;
    r->kv_bytes = kvb;
    if (err) {
        r->err_http = 500;
        snprintf(r->err, sizeof r->err, "%s", err);
        s->met.requests[3]++;
    }
    if (r->cancelled) s->met.cancelled++;
    r->done = 1;
    s->kv_reserved -= r->kv_need;
    s->n_active--;
    pthread_cond_signal(&r->cv);
    unref_locked(r);
    pthread_mutex_unlock(&s->mu);
    skv_sampler_free(sl->smp);
    skv_detok_free(sl->dt);
    sl->smp = NULL, sl->dt = NULL;
    slot_release(s, sl);
    sl->r = NULL;
    sl->state = SLOT_FREE;
}

static void gen_add(srv_slot *sl, const char *p, size_t n) {
    if (sl->gen_len + n + 1 > sl->gen_cap) {
        size_t cap = SKV_CLI_MAX(sl->gen_cap * 2, sl->gen_len + n + 256);
        char *q = realloc(sl->gen, cap);
        if (!q) return;
        sl->gen = q, sl->gen_cap = cap;
    }
    memcpy(sl->gen + sl->gen_len, p, n);
    sl->gen_len += n;
    sl->gen[sl->gen_len] = 0;
}

/* The request ends (EOS or max_tokens): what the detokenizer holds back goes out too, unless a
 * stop string completes first. */
static void finish_flush(srv *s, srv_slot *sl, const char *reason) {
    char tail[64];
    int n = skv_detok_flush(sl->dt, tail, sizeof tail);
    if (n > 0) gen_add(sl, tail, (size_t)n);
    int hit = 0;
    size_t upto = srv_stop_scan(sl->gen, sl->gen_len, sl->released, sl->r->stop, sl->r->n_stop, &hit);
    emit(s, sl, hit ? upto : sl->gen_len, hit ? 1 : 2);
    finish(s, sl, hit ? "stop" : reason, NULL);
}

/* A generated token from logits (n_vocab, modified). */
static void on_logits(srv *s, srv_slot *sl, float *logits, float *scratch) {
    srv_req *r = sl->r;
    const int32_t V = s->info->n_vocab;
    srv_tok t = {0};
    if (r->logprobs) memcpy(scratch, logits, sizeof(float) * (size_t)V);
    const int32_t id = skv_sampler_sample(sl->smp, logits);
    const double now = skv_time_now();
    t.id = id;
    if (r->logprobs) {
        t.n_top = r->top_logprobs;
        t.logprob = srv_logprobs(scratch, V, id, t.n_top, t.top_id, t.top_lp);
    }
    pthread_mutex_lock(&s->mu);
    r->n_gen++;
    s->met.tokens_out++;
    if (r->n_gen == 1) srv_hist_add(&s->met.ttft, now - r->t_arrive);
    else srv_hist_add(&s->met.itl, now - sl->t_last);
    const int n_gen = r->n_gen;
    pthread_mutex_unlock(&s->mu);
    sl->t_last = now;
    if (id == s->info->eos_id && !r->ignore_eos) {
        finish_flush(s, sl, "stop");
        return;
    }
    char piece[256];
    int n = skv_detok_push(sl->dt, id, piece, sizeof piece);
    t.off = (int32_t)sl->gen_len;
    if (n > 0) gen_add(sl, piece, (size_t)n);
    if (r->logprobs) {
        if (sl->n_pend == sl->cap_pend) {
            int32_t cap = SKV_CLI_MAX(16, sl->cap_pend * 2);
            srv_tok *p = realloc(sl->pend, sizeof(srv_tok) * (size_t)cap);
            if (p) sl->pend = p, sl->cap_pend = cap;
        }
        if (sl->n_pend < sl->cap_pend) sl->pend[sl->n_pend++] = t;
    }
    int hit = 0;
    size_t upto = srv_stop_scan(sl->gen, sl->gen_len, sl->released, r->stop, r->n_stop, &hit);
    if (hit) {
        emit(s, sl, upto, 1);
        finish(s, sl, "stop", NULL);
    } else if (n_gen >= r->max_tokens) {
        finish_flush(s, sl, "length");
    } else {
        emit(s, sl, upto, 0);
        sl->next = id;
        sl->state = SLOT_DECODE;
    }
}

/* A newly admitted request: sampler, detokenizer, cache (with prefix reuse). */
static void start(srv *s, srv_slot *sl) {
    srv_req *r = sl->r;
    sl->gen_len = sl->released = 0;
    sl->n_pend = 0;
    int32_t reused = 0;
    skv_status st = skv_sampler_init(r->sp, s->info->n_vocab, &sl->smp);
    if (!st) st = skv_detok_init(s->tok, &sl->dt);
    if (!st) st = slot_prepare(s, sl, r, &reused);
    if (st) {
        finish(s, sl, NULL, skv_last_error());
        return;
    }
    pthread_mutex_lock(&s->mu);
    r->n_cached = reused;
    s->met.tokens_in += r->n_prompt;
    s->met.prefix_lookup_tokens += r->n_prompt;
    s->met.prefix_hit_tokens += reused;
    pthread_mutex_unlock(&s->mu);
    sl->pos = reused;
    sl->state = SLOT_PREFILL;
    if (r->max_tokens == 0) finish(s, sl, "length", NULL);
}

/* Admit queued requests (under s->mu); returns how many slots are busy. */
static int admit_locked(srv *s, int *fresh, int *n_fresh) {
    *n_fresh = 0;
    while (s->n_queue > 0) {
        srv_req *r = s->queue[0];
        if (r->cancelled) {
            memmove(s->queue, s->queue + 1, sizeof(srv_req *) * (size_t)--s->n_queue);
            s->met.cancelled++;
            r->done = 1;
            unref_locked(r);
            continue;
        }
        int best = -1;
        int32_t best_n = -1;
        for (int i = 0; i < s->parallel; i++) {
            if (s->slots[i].state != SLOT_FREE || s->slots[i].r) continue;
            const int32_t n = slot_prefix(s, &s->slots[i], r);
            if (n > best_n) best = i, best_n = n;
        }
        if (best < 0 || s->kv_reserved + r->kv_need > s->kv_mem) break;
        memmove(s->queue, s->queue + 1, sizeof(srv_req *) * (size_t)--s->n_queue);
        s->kv_reserved += r->kv_need;
        s->n_active++;
        s->slots[best].r = r;
        fresh[(*n_fresh)++] = best;
    }
    int busy = 0;
    for (int i = 0; i < s->parallel; i++) busy += s->slots[i].r != NULL;
    return busy;
}

static void prefill(srv *s, int *rr) {
    int used = 0;
    for (int k = 0; k < s->parallel && used < s->prefill_chunk; k++) {
        srv_slot *sl = &s->slots[(*rr + k) % s->parallel];
        if (sl->state != SLOT_PREFILL) continue;
        srv_req *r = sl->r;
        /* a full-policy sequence of group 0 feeds its last prompt token as its first batched
         * step; every other (own contexts, evicting groups) takes the whole prompt in one call
         * when its policy evicts (compressed once, at the prompt's end) and gives its logits */
        const int step_last = sl->in_batch && sl->grp == 0;
        const int32_t target = step_last ? r->n_prompt - 1 : r->n_prompt;
        int32_t n = SKV_CLI_MIN(s->prefill_chunk, target - sl->pos);
        if (!step_last && skv_policy_evicts(r->pol_name) > 0) n = target - sl->pos;
        float *lg = s->logits + (size_t)sl->idx * (size_t)s->info->n_vocab;
        if (n > 0) {
            skv_status st = slot_append(s, sl, r->prompt + sl->pos, n, sl->pos + n == target && !step_last ? lg : NULL);
            if (st) {
                finish(s, sl, NULL, skv_last_error());
                continue;
            }
            sl->pos += n;
            used += n;
        }
        if (sl->pos == target) {
            if (step_last) {
                sl->next = r->prompt[r->n_prompt - 1];
                sl->state = SLOT_DECODE;
            } else {
                on_logits(s, sl, lg, s->logits + (size_t)s->parallel * (size_t)s->info->n_vocab);
            }
        }
    }
    *rr = (*rr + 1) % s->parallel;
}

/* Time of one decode step's forwards (ph[SRV_PH_FORWARD]) and per-token host work
 * (ph[SRV_PH_TOKEN]), added to ph; *calls counts the forward calls. */
static void decode(srv *s, int32_t *ids, int32_t *seqs, double *ph, int64_t *calls) {
    const int32_t V = s->info->n_vocab;
    double t0 = skv_time_now(), tf = 0;
    float *scratch = s->logits + (size_t)s->parallel * (size_t)V;
    int n_seqs = 0;
    /* each group's decoding sequences step together (skv_decode_seqs: just those, in slot
     * order; the others are left as they are) */
    for (int gi = 0; gi < s->n_grp; gi++) {
        skv_context *b = s->grp[gi].c;
        int nb = 0;
        for (int i = 0; i < s->parallel; i++) {
            const srv_slot *sl = &s->slots[i];
            if (sl->in_batch && sl->grp == gi && sl->r && sl->state == SLOT_DECODE)
                s->rowslot[nb] = i, seqs[nb] = sl->seq, ids[nb++] = sl->next;
        }
        if (nb == 0) continue;
        const double tc = skv_time_now();
        skv_status st = skv_decode_seqs(b, seqs, ids, nb, s->logits, NULL);
        tf += skv_time_now() - tc, ++*calls;
        for (int k = 0; k < nb; k++) {
            srv_slot *sl = &s->slots[s->rowslot[k]];
            if (st) finish(s, sl, NULL, skv_last_error());
            else on_logits(s, sl, s->logits + (size_t)k * V, scratch), n_seqs++;
        }
    }
    /* every sequence with its own context: one step of all of them together (the CPU backend
     * reads each weight once for all), the logits of the k-th into row k of s->mlogits; a
     * context that could not take a token steps alone (and fails with its own message) */
    int nm = 0;
    for (int i = 0; i < s->parallel; i++) {
        srv_slot *sl = &s->slots[i];
        if (sl->in_batch || !sl->r || sl->state != SLOT_DECODE) continue;
        if (skv_context_n_past(sl->own) + 1 > s->n_ctx) {
            float *lg = s->logits + (size_t)i * V;
            const double tc = skv_time_now();
            skv_status st = skv_decode(sl->own, &sl->next, 1, lg, 0);
            tf += skv_time_now() - tc, ++*calls;
            if (st) finish(s, sl, NULL, skv_last_error());
            else on_logits(s, sl, lg, scratch), n_seqs++;
            continue;
        }
        s->mctx[nm] = sl->own, s->mslot[nm] = i, ids[nm++] = sl->next;
    }
    if (nm > 0) {
        const double tc = skv_time_now();
        skv_status st = skv_decode_multi(s->mctx, nm, ids, s->mlogits);
        tf += skv_time_now() - tc, ++*calls;
        for (int k = 0; k < nm; k++) {
            srv_slot *sl = &s->slots[s->mslot[k]];
            if (st) finish(s, sl, NULL, skv_last_error());
            else on_logits(s, sl, s->mlogits + (size_t)k * V, scratch), n_seqs++;
        }
    }
    ph[SRV_PH_FORWARD] += tf;
    ph[SRV_PH_TOKEN] += skv_time_now() - t0 - tf;
    if (n_seqs) {
        pthread_mutex_lock(&s->mu);
        s->met.steps++;
        s->met.step_seqs += n_seqs;
        pthread_mutex_unlock(&s->mu);
    }
}

static void *sched_main(void *arg) {
    srv *s = arg;
    int *fresh = malloc(sizeof(int) * (size_t)s->parallel), *cancel = malloc(sizeof(int) * (size_t)s->parallel);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)s->parallel), *hold = malloc(sizeof(int32_t) * (size_t)s->parallel);
    int rr = 0, n_fresh;
    pthread_mutex_lock(&s->mu);
    while (s->running) {
        if (admit_locked(s, fresh, &n_fresh) == 0) {
            malloc_trim(0); /* idle: freed memory back to the system */
            pthread_cond_wait(&s->cv, &s->mu);
            continue;
        }
        for (int i = 0; i < s->parallel; i++) cancel[i] = s->slots[i].r && s->slots[i].r->cancelled;
        pthread_mutex_unlock(&s->mu);
        double ph[SRV_PHASES] = {0}, t = skv_time_now(), t1;
        int64_t calls = 0;
        for (int i = 0; i < n_fresh; i++) start(s, &s->slots[fresh[i]]);
        for (int i = 0; i < s->parallel; i++)
            if (cancel[i] && s->slots[i].r && s->slots[i].state != SLOT_FREE) finish(s, &s->slots[i], NULL, NULL);
        t1 = skv_time_now(), ph[SRV_PH_START] = t1 - t, t = t1;
        prefill(s, &rr);
        t1 = skv_time_now(), ph[SRV_PH_PREFILL] = t1 - t;
        decode(s, ids, hold, ph, &calls);
        t = skv_time_now();
        int64_t fast = 0, slow = 0;
        for (int i = 0; i < s->parallel; i++) slot_kv_bytes(s, &s->slots[i], &fast, &slow);
        ph[SRV_PH_ACCOUNT] = skv_time_now() - t;
        pthread_mutex_lock(&s->mu);
        s->kv_bytes_fast = fast, s->kv_bytes_slow = slow;
        for (int k = 0; k < SRV_PHASES; k++) s->met.phase_s[k] += ph[k];
        s->met.forward_calls += calls;
    }
    pthread_mutex_unlock(&s->mu);
    free(fresh), free(cancel), free(ids), free(hold);
    return NULL;
}

skv_status srv_sched_start(srv *s) {
    const int32_t V = s->info->n_vocab;
    s->slots = calloc((size_t)s->parallel, sizeof *s->slots);
    s->queue = calloc((size_t)s->queue_cap + 1, sizeof *s->queue);
    s->logits = malloc(sizeof(float) * (size_t)V * (size_t)(s->parallel + 1));
    s->mlogits = malloc(sizeof(float) * (size_t)V * (size_t)s->parallel);
    s->mctx = malloc(sizeof(skv_context *) * (size_t)s->parallel);
    s->mslot = malloc(sizeof(int) * (size_t)s->parallel);
    s->rowslot = malloc(sizeof(int) * (size_t)s->parallel);
    if (!s->slots || !s->queue || !s->logits || !s->mlogits || !s->mctx || !s->mslot || !s->rowslot) return SKV_ERR_NOMEM;
    for (int i = 0; i < s->parallel; i++) s->slots[i].idx = i;
    skv_status st = SKV_OK;
    if (s->backend == SKV_BACKEND_CUDA) {
        skv_context_params cp = skv_context_default_params();
        cp.n_ctx = s->n_ctx;
        cp.n_batch = s->prefill_chunk;
        cp.backend = SKV_BACKEND_CUDA;
        cp.n_seq = s->parallel;
        cp.batch_invariant = s->batch_invariant;
        if ((st = skv_context_init(s->model, cp, &s->grp[0].c))) return st;
        snprintf(s->grp[0].name, sizeof s->grp[0].name, "full");
        s->grp[0].p = skv_policy_default_params("full");
        s->n_grp = 1;
    } else { /* every slot's context up front, under the default policy */
        for (int i = 0; i < s->parallel && !st; i++) {
            skv_context_params cp = skv_context_default_params();
            cp.n_ctx = s->n_ctx;
            cp.n_batch = s->prefill_chunk;
            cp.policy = s->def_pol;
            st = skv_context_init(s->model, cp, &s->slots[i].own);
            if (!st) {
                snprintf(s->slots[i].own_pol, sizeof s->slots[i].own_pol, "%s", s->def_pol_name);
                s->slots[i].own_p = s->def_pol;
                s->slots[i].own_p.name = s->slots[i].own_pol;
            }
        }
        if (st) return st;
    }
    s->running = 1;
    if (pthread_create(&s->sched, NULL, sched_main, s)) {
        s->running = 0;
        return SKV_ERR_NOMEM;
    }
    return SKV_OK;
}

void srv_sched_stop(srv *s) {
    pthread_mutex_lock(&s->mu);
    s->running = 0;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->sched, NULL);
    for (int i = 0; i < s->parallel; i++) {
        if (s->slots[i].r) finish(s, &s->slots[i], NULL, "the server is shutting down");
        slot_free(&s->slots[i]);
    }
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->n_queue; i++) {
        s->queue[i]->err_http = 503;
        snprintf(s->queue[i]->err, sizeof s->queue[i]->err, "the server is shutting down");
        s->queue[i]->done = 1;
        pthread_cond_signal(&s->queue[i]->cv);
        unref_locked(s->queue[i]);
    }
    s->n_queue = 0;
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < s->n_grp; i++) skv_context_free(s->grp[i].c), free(s->grp[i].used);
    s->n_grp = 0;
    free(s->rowslot);
    free(s->slots);
    free(s->queue);
    free(s->logits);
    free(s->mlogits);
    free(s->mctx);
    free(s->mslot);
}
