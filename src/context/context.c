/*
 * context.c — the public context API over the backend table: creation with a policy and the
 * statistics it needs, decoding (ids or embeddings in; logits and hidden states out) with the
 * policy's compression after a prompt and its eviction after each step, forks into another
 * policy, truncation, memory accounting, read-only past and read plans.
 */
#include "context/context.h"

#include "sample/sampler.h"

#include <unistd.h>

skv_context_params skv_context_default_params(void) {
    skv_context_params p = {.n_ctx = 0, .n_batch = 512, .kv_format = SKV_KV_F32,
                            .policy = skv_policy_default_params("full"), .collect_stats = 0};
    return p;
}

static skv_policy_env env_of(const skv_model *m) {
    return (skv_policy_env){.head_dim = m->cfg.info.head_dim, .n_layer = m->n_cache_layers};
}

skv_status skv_policy_validate(const skv_policy_params *p, const skv_model *m) {
    const skv_policy_env e = env_of(m);
    return skv_policy_parse(p, &e, NULL);
}

int skv_policy_count(void) {
    int n = 0;
    while (skv_policy_registry[n]) n++;
    return n;
}

const char *skv_policy_name(int i) { return i >= 0 && i < skv_policy_count() ? skv_policy_registry[i]->name : NULL; }

const char *skv_policy_summary(int i) {
    return i >= 0 && i < skv_policy_count() ? skv_policy_registry[i]->summary : NULL;
}

int skv_policy_evicts(const char *name) {
    const skv_policy_ops *o = skv_policy_find(name);
    if (!o || !o->evict) return 0;
    const skv_policy_params p = skv_policy_default_params(name);
    return o->evict(&p).step ? 2 : 1;
}

static const skv_backend_ops *backend_of(skv_backend b) {
    return b == SKV_BACKEND_CUDA ? &skv_backend_cuda : &skv_backend_cpu;
}

int skv_backend_available(skv_backend b) {
    if (b == SKV_BACKEND_CPU) return 1;
    if (b == SKV_BACKEND_CUDA) return skv_gpu_backend_available();
    skv_set_error(SKV_ERR_ARG, "unknown backend %d", (int)b);
    return 0;
}

skv_status skv_context_init(skv_model *m, skv_context_params p, skv_context **out) {
    *out = NULL;
    const skv_model_info *in = &m->cfg.info;
    if (p.n_ctx < 0) return skv_set_error(SKV_ERR_ARG, "n_ctx must be >= 0 (got %d)", p.n_ctx);
    if (p.n_ctx > in->n_ctx)
        return skv_set_error(SKV_ERR_RANGE, "context of %d tokens exceeds the model's max_position_embeddings %d",
                             p.n_ctx, in->n_ctx);
    if (p.n_batch < 0) return skv_set_error(SKV_ERR_ARG, "n_batch must be >= 0 (got %d)", p.n_batch);
    if (p.lckv_iters < 0 || p.lckv_iters > 1000)
        return skv_set_error(SKV_ERR_ARG, "lckv_iters must be 0..1000 (got %d)", p.lckv_iters);
    { /* what is allocated per token of context before any token is stored: positions per stream,
       * RoPE tables, attention rows, policy scratch; refused, naming where the length came from,
       * when it exceeds the machine's memory */
        const double T = p.n_ctx ? p.n_ctx : in->n_ctx, phys = (double)sysconf(_SC_PHYS_PAGES) * sysconf(_SC_PAGESIZE);
        const double need = T * ((double)in->n_layer * in->n_kv_head * 4 + (double)in->head_dim * 4 + in->n_head * 8.0 + 16);
        if (phys > 0 && need > phys)
            return skv_set_error(SKV_ERR_NOMEM, "a context of %.0f tokens (%s) needs %.1f GiB before any token is "
                                 "stored, more than this machine's %.1f GiB: ask for a shorter context (n_ctx, --ctx)",
                                 T, p.n_ctx ? "n_ctx" : "max_position_embeddings of config.json", need / (1 << 30),
                                 phys / (1 << 30));
    }
    if ((unsigned)p.kv_format >= SKV_KV_FORMAT_COUNT)
        return skv_set_error(SKV_ERR_ARG, "unknown KV format %d", (int)p.kv_format);
    if (p.backend != SKV_BACKEND_CPU && p.backend != SKV_BACKEND_CUDA)
        return skv_set_error(SKV_ERR_ARG, "unknown backend %d", (int)p.backend);
    const skv_policy_env e = env_of(m);
    const skv_policy_ops *ops;
    skv_status st = skv_policy_parse(&p.policy, &e, &ops);
    if (st) return st;
    if (ops->driver)
        return skv_set_error(SKV_ERR_ARG, "policy %s runs two models: create it with its own API (skv_%s_*)", ops->name,
                             ops->name);
    if (p.collect_head_stats && ops->evict)
        return skv_set_error(SKV_ERR_ARG, "per-head attention statistics need a policy that keeps every token (got %s)",
                             p.policy.name);
    skv_context *c = calloc(1, sizeof *c);
    if (!c) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    c->m = m;
    c->be = backend_of(p.backend);
    c->n_ctx = p.n_ctx ? p.n_ctx : in->n_ctx;
    c->n_batch = p.n_batch ? SKV_MIN(p.n_batch, c->n_ctx) : SKV_MIN(512, c->n_ctx);
    c->n_threads = m->n_threads;
    c->n_layer = m->n_cache_layers;
    c->lckv_iters = p.lckv_iters ? p.lckv_iters : m->cfg.lckv_iters;
    c->pol.ops = ops;
    c->pol.p = p.policy;
    if (ops->evict) c->pol.ev = ops->evict(&p.policy);
    c->stats = skv_policy_stats(ops, &p.policy) | (p.collect_stats ? SKV_STAT_ACC | SKV_STAT_WIN | SKV_STAT_LAST : 0);
    c->head_stats = p.collect_head_stats;
    c->head_prefix_len = p.collect_head_stats ? SKV_MIN(SKV_MAX(p.head_prefix, 0), c->n_ctx) : 0;
    c->head_win_from = INT32_MAX;
    c->v_slow = p.v_slow;
    c->n_seq = p.n_seq > 1 ? p.n_seq : 1;
    if (p.n_seq < 0 || (c->n_seq > 1 && (p.backend != SKV_BACKEND_CUDA || ops->transform || p.collect_stats))) {
        free(c);
        return skv_set_error(SKV_ERR_ARG, "n_seq %d: several sequences need the CUDA backend and a policy that keeps "
                             "the cache's format (not %s) without collect_stats", p.n_seq, ops->name);
    }
    c->seq_past = calloc((size_t)c->n_seq, sizeof(int32_t));
    c->pol.budget_now = calloc((size_t)c->n_layer, sizeof(int32_t));
    if (!c->pol.budget_now || !c->seq_past) {
        free(c->pol.budget_now), free(c->seq_past);
        free(c);
        return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    }
    if ((st = skv_model_rope(m, c->n_ctx)) || (st = c->be->init(c, &p))) {
        free(c->pol.budget_now), free(c->seq_past);
        free(c);
        return st;
    }
    if (ops->vtop) { /* the policy's per-step reads: a plan the backend keeps */
        const skv_read_plan plan = {.vtop = ops->vtop(&p.policy)};
        if (!c->be->set_plan)
            st = skv_set_error(SKV_ERR_UNSUPPORTED, "policy %s: its per-step V top-N reads (a slow V store) are not "
                               "implemented on the %s backend yet; use --backend cpu", ops->name, c->be->name);
        else st = skv_context_set_plan(c, &plan);
        if (st) {
            skv_context_free(c);
            return st;
        }
    }
    *out = c;
    return SKV_OK;
}

void skv_context_free(skv_context *c) {
    if (!c) return;
    c->be->free(c);
    free(c->sample_logits);
    free(c->sample_seen);
    free(c->pol.budget_now);
    free(c->seq_past);
    free(c);
}

/* The policy's budgets at the current length, then the backend's compression. */
skv_status skv_context_compress(skv_context *c) {
    if (!c->pol.ev.evicts && !c->pol.ops->transform) return SKV_OK;
    for (int32_t l = 0; l < c->n_layer; l++)
        c->pol.budget_now[l] = skv_policy_budget(c->pol.ops, &c->pol.p, l, c->n_layer, c->n_past);
    return c->be->compress(c);
}

skv_status skv_context_fork(const skv_context *src, const skv_policy_params *policy, skv_context **out) {
    *out = NULL;
    const skv_policy_env e = env_of(src->m);
    const skv_policy_ops *ops;
    skv_status st = skv_policy_parse(policy, &e, &ops);
    if (st) return st;
    if (ops->driver)
        return skv_set_error(SKV_ERR_ARG, "fork into policy %s: it runs two models (skv_%s_fork)", ops->name, ops->name);
    if (skv_policy_stats(ops, policy) & ~src->stats)
        return skv_set_error(SKV_ERR_ARG, "fork into policy %s: the source context did not collect the attention "
                             "statistics it needs (set collect_stats)", policy->name);
    if (src->past) return skv_set_error(SKV_ERR_ARG, "fork: the source context attends to a read-only past");
    skv_context_params p = skv_context_default_params();
    p.n_ctx = src->n_ctx;
    p.n_batch = src->n_batch;
    p.lckv_iters = src->lckv_iters;
    p.policy = *policy;
    p.backend = src->be == &skv_backend_cuda ? SKV_BACKEND_CUDA : SKV_BACKEND_CPU;
    p.collect_head_stats = src->head_stats && !ops->evict;
    skv_context *c = NULL;
    if ((st = skv_context_init(src->m, p, &c))) return st;
    c->n_past = src->n_past;
    if (c->head_stats) c->head_prefix_len = src->head_prefix_len, c->head_win_from = src->head_win_from;
    if ((st = c->be->copy(c, src)) || (st = skv_context_compress(c))) {
        skv_context_free(c);
        return st;
    }
    *out = c;
    return SKV_OK;
}

skv_status skv_context_copy_cache(skv_context *dst, const skv_context *src) {
    const skv_model_info *a = &dst->m->cfg.info, *b = &src->m->cfg.info;
    if (dst->be != src->be) return skv_set_error(SKV_ERR_ARG, "cache copy across backends: export and import instead");
    if (dst->n_past || dst->past || src->past)
        return skv_set_error(SKV_ERR_ARG, "cache copy: the destination must be empty and neither may read a past");
    if (dst->n_layer != src->n_layer || a->n_kv_head != b->n_kv_head || a->head_dim != b->head_dim)
        return skv_set_error(SKV_ERR_SHAPE, "cache copy: cache of %d x %d x %d into one of %d x %d x %d (cache layers x "
                             "KV heads x head_dim)", src->n_layer, b->n_kv_head, b->head_dim, dst->n_layer, a->n_kv_head,
                             a->head_dim);
    if (src->n_past > dst->n_ctx)
        return skv_set_error(SKV_ERR_RANGE, "cache copy: %d tokens into a context of %d", src->n_past, dst->n_ctx);
    dst->n_past = src->n_past;
    skv_status st = dst->be->copy(dst, src);
    if (st) dst->n_past = 0;
    return st;
}

int32_t skv_context_n_past(const skv_context *c) { return c->n_past; }

skv_status skv_context_truncate(skv_context *c, int32_t n_past) {
    const int32_t lo = c->past ? c->past->n_past : 0;
    if (n_past < lo || n_past > c->n_past)
        return skv_set_error(SKV_ERR_ARG, "truncate to %d: context holds %d tokens%s", n_past, c->n_past,
                             lo ? " (after a read-only past)" : "");
    skv_status st = c->be->truncate(c, n_past);
    if (st) return st;
    c->n_past = n_past;
    if (n_past == lo) memset(c->pol.budget_now, 0, (size_t)c->n_layer * sizeof(int32_t));
    return SKV_OK;
}

void skv_context_kv_usage(const skv_context *c, skv_kv_usage *u) {
    memset(u, 0, sizeof *u);
    c->be->usage(c, u);
    u->n_past = c->n_past;
}

int64_t skv_context_kv_bytes_head(const skv_context *c, int32_t layer, int32_t kv_head) {
    if (layer < 0 || layer >= c->n_layer || kv_head < 0 || kv_head >= c->m->cfg.info.n_kv_head) return -1;
    return c->be->stream_bytes(c, layer, kv_head);
}

int32_t skv_context_kept(const skv_context *c, int32_t layer, int32_t kv_head, int32_t *pos) {
    if (layer < 0 || layer >= c->n_layer || kv_head < 0 || kv_head >= c->m->cfg.info.n_kv_head) return -1;
    skv_stream_io s;
    if (c->be->stream_get(c, layer, kv_head, 0, &s)) return -1;
    const int32_t n = s.n;
    if (pos) memcpy(pos, s.pos, sizeof(int32_t) * (size_t)n);
    skv_stream_io_free(&s);
    return n;
}

/* ---------------------------------------------------------------------------------------- */
/* Per-head statistics                                                                       */
/* ---------------------------------------------------------------------------------------- */

const float *skv_context_head_row(const skv_context *c, int kind, int32_t layer, int32_t head) {
    if (!c->be->head_row) {
        skv_set_error(SKV_ERR_UNSUPPORTED, "per-head attention statistics need the CPU backend");
        return NULL;
    }
    return c->be->head_row(c, kind, layer, head);
}

skv_status skv_context_head_attention_prefix(const skv_context *c, int32_t layer, int32_t head, float *acc) {
    const float *r = skv_context_head_row(c, SKV_HEAD_PREFIX, layer, head);
    if (!r) return SKV_ERR_ARG;
    memcpy(acc, r, (size_t)skv_context_head_prefix(c) * sizeof(float));
    return SKV_OK;
}

skv_status skv_context_head_attention(const skv_context *c, int32_t layer, int32_t head, float *acc, float *last) {
    const float *a = skv_context_head_row(c, SKV_HEAD_ACC, layer, head);
    const float *l = skv_context_head_row(c, SKV_HEAD_LAST, layer, head);
    if (!a || !l) return SKV_ERR_ARG;
    if (acc) memcpy(acc, a, (size_t)c->n_past * sizeof(float));
    if (last) memcpy(last, l, (size_t)c->n_past * sizeof(float));
    return SKV_OK;
}

skv_status skv_context_head_attention_window(const skv_context *c, int32_t layer, int32_t head, float *win) {
    const float *w = skv_context_head_row(c, SKV_HEAD_WIN, layer, head);
    if (!w) return SKV_ERR_ARG;
    memcpy(win, w, (size_t)c->n_past * sizeof(float));
    return SKV_OK;
}

skv_status skv_context_set_head_window(skv_context *c, int32_t from) {
    if (!c->be->set_head_window || !c->head_stats)
        return skv_set_error(SKV_ERR_ARG, "the context was created without collect_head_stats");
    if (from < c->n_past)
        return skv_set_error(SKV_ERR_ARG, "head window start %d is before the next position %d", from, c->n_past);
    skv_status st = c->be->set_head_window(c, from);
    if (!st) c->head_win_from = from;
    return st;
}

int32_t skv_context_head_prefix(const skv_context *c) { return c->head_stats ? c->head_prefix_len : 0; }

int32_t skv_context_head_window_from(const skv_context *c) { return c->head_win_from; }

void skv_context_drop_head_stats(skv_context *c) {
    if (c->be->drop_head_stats) c->be->drop_head_stats(c);
    c->head_stats = 0;
    c->head_prefix_len = 0;
    c->head_win_from = INT32_MAX;
}

skv_status skv_context_move_tier(skv_context *c, skv_tier tier) {
    if (!c->be->move_tier) return skv_set_error(SKV_ERR_UNSUPPORTED, "moving the cache between tiers: not on %s", c->be->name);
    return c->be->move_tier(c, tier);
}

skv_status skv_context_set_plan(skv_context *c, const skv_read_plan *plan) {
    if (!c->be->set_plan)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "read plans are not supported on the %s backend", c->be->name);
    return c->be->set_plan(c, plan);
}

skv_model *skv_context_model(const skv_context *c) { return c->m; }

skv_status skv_context_set_past(skv_context *c, const skv_context *past) {
    if (past && past->m->cfg.info.n_kv_head != c->m->cfg.info.n_kv_head)
        return skv_set_error(SKV_ERR_ARG, "read-only past: %d KV heads, the context has %d",
                             past->m->cfg.info.n_kv_head, c->m->cfg.info.n_kv_head);
    if (past && (past->n_layer != c->n_layer || past->m->cfg.info.head_dim != c->m->cfg.info.head_dim))
        return skv_set_error(SKV_ERR_ARG, "read-only past: %d cache layers of head_dim %d, the context has %d of %d",
                             past->n_layer, past->m->cfg.info.head_dim, c->n_layer, c->m->cfg.info.head_dim);
    const int32_t lo = c->past ? c->past->n_past : 0;
    if (c->n_past != lo) return skv_set_error(SKV_ERR_ARG, "read-only past: set it on an empty context");
    if (past && past->past) return skv_set_error(SKV_ERR_ARG, "read-only past: the past has a past of its own");
    if (past && past->n_past >= c->n_ctx)
        return skv_set_error(SKV_ERR_RANGE, "read-only past of %d tokens leaves no room in a context of %d",
                             past->n_past, c->n_ctx);
    if (!c->be->set_past) return skv_set_error(SKV_ERR_UNSUPPORTED, "read-only past: not on the %s backend", c->be->name);
    skv_status st = c->be->set_past(c, past);
    if (st) return st;
    c->past = past;
    c->n_past = past ? past->n_past : 0;
    return SKV_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Decoding                                                                                  */
/* ---------------------------------------------------------------------------------------- */

skv_status skv_decode_ex(skv_context *c, const skv_batch *b) {
    const skv_model_info *in = &c->m->cfg.info;
    const int32_t n = b->n;
    if (n <= 0) return skv_set_error(SKV_ERR_ARG, "no tokens to decode (empty prompt?)");
    if (!b->ids == !b->embd) return skv_set_error(SKV_ERR_ARG, "decode: give either ids or embeddings");
    if ((int64_t)c->n_past + n > c->n_ctx)
        return skv_set_error(SKV_ERR_RANGE, "%d tokens after %d cached exceed the context of %d tokens", n, c->n_past,
                             c->n_ctx);
    if (b->ids)
        for (int32_t i = 0; i < n; i++)
            if (b->ids[i] < 0 || b->ids[i] >= in->n_vocab)
                return skv_set_error(SKV_ERR_ARG, "token id %d at index %d is outside the vocabulary (%d entries)",
                                     b->ids[i], i, in->n_vocab);
    const int32_t l1 = b->layer1 ? b->layer1 : in->n_layer;
    if (b->layer0 < 0 || l1 > in->n_layer || b->layer0 >= l1)
        return skv_set_error(SKV_ERR_ARG, "decode: layer range [%d, %d) of a %d-layer model", b->layer0, b->layer1,
                             in->n_layer);
    if (b->layer0 > 0 && !b->embd)
        return skv_set_error(SKV_ERR_ARG, "decode: starting at layer %d needs the residual stream as embd", b->layer0);
    if ((b->resid_in || b->attn_in || b->layer_done || b->layer0 || l1 != in->n_layer) && c->be != &skv_backend_cpu)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "decode: per-layer taps and layer ranges are not on the %s backend",
                             c->be->name);
    if (l1 != in->n_layer && (b->logits || b->hidden || b->hidden_normed))
        return skv_set_error(SKV_ERR_ARG, "decode: a layer range ending at %d < %d gives no logits or hidden states",
                             l1, in->n_layer);
    skv_status st = SKV_OK;
    if (n > 1 && c->be->begin_call) c->be->begin_call(c, n);
    const int64_t D = in->dim, V = in->n_vocab;
    for (int32_t off = 0; off < n && !st; off += c->n_batch) {
        const int32_t nb = SKV_MIN(c->n_batch, n - off);
        const int last = off + nb == n;
        skv_fwd_in fi = {.ids = b->ids ? b->ids + off : NULL, .embd = b->embd ? b->embd + (int64_t)off * D : NULL,
                               .n = nb, .pos0 = c->n_past, .last_chunk = last};
        fi.layer0 = b->layer0, fi.layer1 = b->layer1;
        skv_fwd_out fo = {.all = b->all, .tap_rows = n};
        fo.resid_in = b->resid_in ? b->resid_in + (int64_t)off * D : NULL;
        fo.attn_in = b->attn_in ? b->attn_in + (int64_t)off * D : NULL;
        if (last) fo.layer_done = b->layer_done, fo.layer_arg = b->layer_arg;
        if (b->all || last) {
            const int64_t r = b->all ? off : 0;
            fo.logits = b->logits ? b->logits + r * V : NULL;
            fo.hidden = b->hidden ? b->hidden + r * D : NULL;
            fo.hidden_normed = b->hidden_normed ? b->hidden_normed + r * D : NULL;
        }
        if (!(st = c->be->forward(c, &fi, &fo))) c->n_past += nb;
    }
    if (st) return st;
    if (n > 1) return skv_context_compress(c);
    if (c->be->step && c->pol.ev.evicts && c->pol.ev.step) c->be->step(c);
    return SKV_OK;
}

skv_status skv_decode(skv_context *c, const int32_t *ids, int32_t n, float *logits, int all_logits) {
    const skv_batch b = {.ids = ids, .n = n, .logits = logits, .all = all_logits};
    return skv_decode_ex(c, &b);
}

skv_status skv_decode_sampled(skv_context *c, int32_t id, skv_sampler *s, int32_t *next) {
    const skv_model_info *in = &c->m->cfg.info;
    if (c->be->decode_sampled) {
        if (c->n_past + 1 > c->n_ctx)
            return skv_set_error(SKV_ERR_RANGE, "1 token after %d cached exceeds the context of %d tokens", c->n_past,
                                 c->n_ctx);
        if (id < 0 || id >= in->n_vocab)
            return skv_set_error(SKV_ERR_ARG, "token id %d is outside the vocabulary (%d entries)", id, in->n_vocab);
        const int64_t hist = SKV_MAX(skv_sampler_history(s), 1);
        if (hist > c->sample_seen_cap) { /* grows with the sampler's history, not per step */
            int32_t *p = realloc(c->sample_seen, sizeof(int32_t) * (size_t)(2 * hist));
            if (!p) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
            c->sample_seen = p, c->sample_seen_cap = 2 * hist;
        }
        skv_sample_args a;
        skv_sampler_args(s, &a, c->sample_seen);
        skv_status st = c->be->decode_sampled(c, id, &a, next);
        if (!st) c->n_past++;
        return st;
    }
    if (!c->sample_logits && !(c->sample_logits = malloc(sizeof(float) * (size_t)in->n_vocab)))
        return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    skv_status st = skv_decode(c, &id, 1, c->sample_logits, 0);
    if (st) return st;
    *next = skv_sampler_sample(s, c->sample_logits);
    return SKV_OK;
}

skv_status skv_decode_multi(skv_context *const *cs, int32_t n, const int32_t *ids, float *logits) {
    if (n <= 0 || !cs || !ids) return skv_set_error(SKV_ERR_ARG, "decode_multi: no contexts");
    int together = cs[0] && cs[0]->be->decode_multi != NULL;
    for (int32_t i = 0; i < n; i++) {
        const skv_context *c = cs[i];
        if (!c) return skv_set_error(SKV_ERR_ARG, "decode_multi: context %d is NULL", i);
        for (int32_t j = 0; j < i; j++)
            if (cs[j] == c) return skv_set_error(SKV_ERR_ARG, "decode_multi: contexts %d and %d are the same", j, i);
        if (c->m != cs[0]->m) return skv_set_error(SKV_ERR_ARG, "decode_multi: context %d has another model than context 0", i);
        if (c->n_seq > 1)
            return skv_set_error(SKV_ERR_ARG, "decode_multi: context %d holds several sequences (skv_decode_batch)", i);
        if (c->n_past + 1 > c->n_ctx)
            return skv_set_error(SKV_ERR_RANGE, "decode_multi: context %d is full (%d tokens)", i, c->n_ctx);
        if (ids[i] < 0 || ids[i] >= c->m->cfg.info.n_vocab)
            return skv_set_error(SKV_ERR_ARG, "decode_multi: token id %d of context %d is outside the vocabulary", ids[i], i);
        together &= c->be == cs[0]->be;
    }
    const int64_t V = cs[0]->m->cfg.info.n_vocab;
    if (!together || n == 1) {
        for (int32_t i = 0; i < n; i++) {
            skv_status st = skv_decode(cs[i], ids + i, 1, logits ? logits + i * V : NULL, 0);
            if (st) return st;
        }
        return SKV_OK;
    }
    skv_status st = cs[0]->be->decode_multi(cs, n, ids, logits);
    if (st) return st;
    for (int32_t i = 0; i < n; i++) {
        skv_context *c = cs[i];
        c->n_past++;
        if (c->be->step && c->pol.ev.evicts && c->pol.ev.step) c->be->step(c);
    }
    return SKV_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Several sequences                                                                         */
/* ---------------------------------------------------------------------------------------- */

static int32_t *seq_pos(skv_context *c, int32_t seq) { return seq == 0 ? &c->n_past : &c->seq_past[seq]; }

static skv_status seq_check(const skv_context *c, int32_t seq, const void *op) {
    if (seq < 0 || seq >= c->n_seq)
        return skv_set_error(SKV_ERR_ARG, "sequence %d: the context holds %d", seq, c->n_seq);
    if (!op) return skv_set_error(SKV_ERR_UNSUPPORTED, "several sequences: not on the %s backend", c->be->name);
    return SKV_OK;
}

int64_t skv_seq_kv_bytes(const skv_context *c, int32_t seq) {
    if (seq < 0 || seq >= c->n_seq) return -1;
    if (c->n_seq == 1 || !c->be->seq_kv_bytes) {
        skv_kv_usage u;
        skv_context_kv_usage(c, &u);
        return c->n_seq == 1 ? u.bytes : -1;
    }
    return c->be->seq_kv_bytes(c, seq);
}

int32_t skv_seq_n_past(const skv_context *c, int32_t seq) {
    return seq < 0 || seq >= c->n_seq ? -1 : seq == 0 ? c->n_past : c->seq_past[seq];
}

skv_status skv_seq_decode(skv_context *c, int32_t seq, const int32_t *ids, int32_t n) {
    return skv_seq_decode_logits(c, seq, ids, n, NULL);
}

/* As skv_decode for one sequence: the call's chunks, then (n > 1) the policy's compression of
 * that sequence at its new length. */
skv_status skv_seq_decode_logits(skv_context *c, int32_t seq, const int32_t *ids, int32_t n, float *logits) {
    if (seq == 0 && c->n_seq == 1) return skv_decode(c, ids, n, logits, 0);
    skv_status st = seq_check(c, seq, (const void *)c->be->seq_forward);
    if (st) return st;
    int32_t *p = seq_pos(c, seq);
    if (n <= 0 || (int64_t)*p + n > c->n_ctx)
        return skv_set_error(SKV_ERR_RANGE, "%d tokens after %d cached in sequence %d (context %d)", n, *p, seq, c->n_ctx);
    for (int32_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= c->m->cfg.info.n_vocab)
            return skv_set_error(SKV_ERR_ARG, "token id %d at index %d is outside the vocabulary", ids[i], i);
    const int evicts = c->pol.ev.evicts;
    if (evicts && !c->be->seq_compress)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "several sequences with policy %s: not on the %s backend",
                             c->pol.ops->name, c->be->name);
    if (n > 1 && c->be->seq_begin_call) c->be->seq_begin_call(c, seq, n, *p);
    for (int32_t off = 0; off < n; off += c->n_batch) {
        const int32_t nb = SKV_MIN(c->n_batch, n - off);
        if ((st = c->be->seq_forward(c, seq, ids + off, nb, *p, off + nb == n ? logits : NULL))) return st;
        *p += nb;
    }
    if (n == 1 || !evicts) return SKV_OK;
    int32_t *bud = malloc(sizeof(int32_t) * (size_t)c->n_layer);
    if (!bud) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    for (int32_t l = 0; l < c->n_layer; l++) bud[l] = skv_policy_budget(c->pol.ops, &c->pol.p, l, c->n_layer, *p);
    st = c->be->seq_compress(c, seq, bud);
    free(bud);
    return st;
}

skv_status skv_decode_batch(skv_context *c, const int32_t *ids, int32_t n, float *logits, int32_t *next) {
    return skv_decode_seqs(c, NULL, ids, n, logits, next);
}

skv_status skv_decode_seqs(skv_context *c, const int32_t *seqs, const int32_t *ids, int32_t n, float *logits,
                           int32_t *next) {
    if (n < 1) return skv_set_error(SKV_ERR_ARG, "a decode step of %d sequences", n);
    skv_status st = seq_check(c, n - 1, (const void *)c->be->decode_batch);
    for (int32_t i = 0; i < n && !st && seqs; i++) {
        if ((st = seq_check(c, seqs[i], (const void *)c->be->decode_batch))) break;
        for (int32_t j = 0; j < i && !st; j++)
            if (seqs[j] == seqs[i]) st = skv_set_error(SKV_ERR_ARG, "sequence %d twice in one decode step", seqs[i]);
    }
    if (st) return st;
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)n);
    if (!pos) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    for (int32_t i = 0; i < n; i++) pos[i] = *seq_pos(c, seqs ? seqs[i] : i);
    for (int32_t i = 0; i < n && !st; i++)
        if (pos[i] + 1 > c->n_ctx)
            st = skv_set_error(SKV_ERR_RANGE, "sequence %d is full (%d tokens)", seqs ? seqs[i] : i, c->n_ctx);
    if (!st) st = c->be->decode_batch(c, seqs, ids, pos, n, logits, next);
    if (!st)
        for (int32_t i = 0; i < n; i++) (*seq_pos(c, seqs ? seqs[i] : i))++;
    free(pos);
    return st;
}

skv_status skv_seq_copy(skv_context *c, int32_t dst, int32_t src) {
    skv_status st = seq_check(c, dst, (const void *)c->be->seq_copy);
    if (!st) st = seq_check(c, src, (const void *)c->be->seq_copy);
    if (st) return st;
    if (dst == src) return skv_set_error(SKV_ERR_ARG, "copy sequence %d into itself", src);
    if (*seq_pos(c, dst) != 0) return skv_set_error(SKV_ERR_ARG, "copy into sequence %d: it holds %d tokens", dst, *seq_pos(c, dst));
    if ((st = c->be->seq_copy(c, dst, src))) return st;
    *seq_pos(c, dst) = *seq_pos(c, src);
    return SKV_OK;
}

skv_status skv_seq_truncate(skv_context *c, int32_t seq, int32_t n_past) {
    if (seq == 0 && c->n_seq == 1) return skv_context_truncate(c, n_past);
    skv_status st = seq_check(c, seq, (const void *)c->be->seq_truncate);
    if (st) return st;
    int32_t *p = seq_pos(c, seq);
    if (n_past < 0 || n_past > *p)
        return skv_set_error(SKV_ERR_ARG, "truncate sequence %d to %d: it holds %d tokens", seq, n_past, *p);
    if ((st = c->be->seq_truncate(c, seq, n_past))) return st;
    *p = n_past;
    return SKV_OK;
}

int64_t skv_context_weight_bytes(const skv_context *c) {
    return c->be->weight_bytes ? c->be->weight_bytes(c) : c->m->cfg.info.weight_bytes;
}

skv_status skv_backend_device_info(skv_backend b, skv_device_info *out) {
    memset(out, 0, sizeof *out);
    if (b == SKV_BACKEND_CUDA) return skv_gpu_backend_device_info(out->name, (int)sizeof out->name, &out->sms, &out->memory_bytes);
    snprintf(out->name, sizeof out->name, "cpu");
    return SKV_OK;
}

skv_status skv_backend_copy_bandwidth(skv_backend b, int64_t bytes, double *bps) {
    if (b != SKV_BACKEND_CUDA) return skv_set_error(SKV_ERR_UNSUPPORTED, "copy bandwidth: the CUDA backend only");
    return skv_gpu_backend_copy_bandwidth(bytes, bps);
}

skv_status skv_backend_h2d_bandwidth(skv_backend b, int64_t bytes, double *bps) {
    if (b != SKV_BACKEND_CUDA) return skv_set_error(SKV_ERR_UNSUPPORTED, "host-to-device bandwidth: the CUDA backend only");
    if (bytes < 1) return skv_set_error(SKV_ERR_ARG, "host-to-device bandwidth: %lld bytes", (long long)bytes);
    return skv_gpu_backend_h2d_bandwidth(bytes, bps);
}
