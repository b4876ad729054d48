/*
 * context.c — per-sequence state: the KV cache and its policy, RoPE tables and scratch, all
 * allocated once; forking a context into another policy.
 */
#include "model.h"
#include "backend/cuda/gpu.h"

#include <cblas.h>
#include <math.h>
#include <unistd.h>

skv_context_params skv_context_default_params(void) {
    skv_context_params p = {.n_ctx = 0, .n_batch = 512, .kv_format = SKV_KV_F32,
                            .policy = skv_policy_default_params("full"), .collect_stats = 0};
    return p;
}

skv_status skv_policy_validate(const skv_policy_params *p, const skv_model *m) {
    skv_policy_kind k;
    return skv_policy_parse(p, m->cfg.info.head_dim, &k);
}

static void *alloc_floats(int64_t n, int *fail) {
    if (n <= 0) n = 1;
    void *p = aligned_alloc(64, (size_t)((n * 4 + 63) / 64 * 64));
    if (!p) *fail = 1;
    return p;
}

static skv_status context_alloc(skv_model *m, skv_context_params p, skv_context **out) {
    *out = NULL;
    const skv_model_info *in = &m->cfg.info;
    if (p.n_ctx < 0) return skv_set_error(SKV_ERR_ARG, "n_ctx must be >= 0 (got %d)", p.n_ctx);
    if (p.n_ctx > in->n_ctx)
        return skv_set_error(SKV_ERR_RANGE,
                             "context of %d tokens exceeds the model's max_position_embeddings %d",
                             p.n_ctx, in->n_ctx);
    if (p.n_batch < 0) return skv_set_error(SKV_ERR_ARG, "n_batch must be >= 0 (got %d)", p.n_batch);
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
    skv_policy_kind kind;
    skv_status st = skv_policy_parse(&p.policy, in->head_dim, &kind);
    if (st) return st;
    skv_kv_format fmt = p.kv_format;
    if (kind == SKV_POL_QUANT) fmt = p.policy.quant_bits == 8 ? SKV_KV_Q8 : SKV_KV_Q4;

    if (p.backend != SKV_BACKEND_CPU && p.backend != SKV_BACKEND_CUDA)
        return skv_set_error(SKV_ERR_ARG, "unknown backend %d", (int)p.backend);
    if (p.backend == SKV_BACKEND_CUDA) {
        const int32_t n = p.n_ctx ? p.n_ctx : in->n_ctx;
        if (kind == SKV_POL_QUANT)
            return skv_set_error(SKV_ERR_UNSUPPORTED, "policy quant runs on the CPU backend only (the CUDA "
                                 "cache is bf16)");
        if (p.collect_head_stats)
            return skv_set_error(SKV_ERR_UNSUPPORTED, "per-head attention statistics (collect_head_stats, "
                                 "SmallKV) need the CPU backend");
        if (in->sliding_window > 0 && n > in->sliding_window)
            return skv_set_error(SKV_ERR_UNSUPPORTED, "the CUDA backend has no sliding-window attention: a "
                                 "context of %d tokens exceeds the model's window of %d", n, in->sliding_window);
    } else if (p.v_slow) {
        return skv_set_error(SKV_ERR_ARG, "v_slow (V in pinned host memory) needs the CUDA backend");
    }
    if (p.collect_head_stats && kind != SKV_POL_FULL)
        return skv_set_error(SKV_ERR_ARG, "per-head attention statistics need the full policy (got %s)",
                             p.policy.name);
    skv_context *c = calloc(1, sizeof *c);
    if (!c) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    c->head_win_from = INT64_MAX;
    c->m = m;
    c->n_ctx = p.n_ctx ? p.n_ctx : in->n_ctx;
    c->n_batch = p.n_batch ? SKV_MIN(p.n_batch, c->n_ctx) : SKV_MIN(512, c->n_ctx);
    c->n_threads = m->n_threads;
    c->pol.p = p.policy;
    c->pol.kind = kind;
    c->want_acc = p.collect_stats || skv_policy_needs_acc(kind);
    c->want_win = p.collect_stats || skv_policy_needs_win(kind);
    if ((st = skv_cache_init(&c->cache, in->n_layer, in->n_kv_head, in->head_dim, c->n_ctx, fmt))) {
        free(c);
        return st;
    }
    if ((c->want_acc || c->want_win) && (st = skv_cache_enable_stats(&c->cache))) {
        skv_context_free(c);
        return st;
    }
    const int64_t hd = in->head_dim, B = c->n_batch, T = c->n_ctx;
    const int64_t QD = in->n_head * hd, KD = in->n_kv_head * hd;
    int fail = 0;
    c->pol.budget_now = calloc((size_t)in->n_layer, sizeof(int32_t));
    c->rope_cos = alloc_floats(T * hd / 2, &fail);
    c->rope_sin = alloc_floats(T * hd / 2, &fail);
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
    c->blk = alloc_floats((int64_t)c->n_threads * 2 * SKV_KV_BLOCK * hd, &fail);
    c->pol_scratch = malloc((size_t)T * 16 + 64);
    if (p.collect_head_stats) {
        const size_t nh = (size_t)in->n_layer * in->n_head * (size_t)T;
        c->head_acc = calloc(nh, sizeof(float));
        c->head_last = calloc(nh, sizeof(float));
        c->head_win = calloc(nh, sizeof(float));
        if (!c->head_acc || !c->head_last || !c->head_win) fail = 1;
        if (p.head_prefix > 0) {
            c->head_prefix = SKV_MIN(p.head_prefix, c->n_ctx);
            c->head_pre = calloc((size_t)in->n_layer * in->n_head * (size_t)c->head_prefix, sizeof(float));
            if (!c->head_pre) fail = 1;
        }
    }
    if (fail || !c->pol.budget_now || !c->pol_scratch) {
        skv_context_free(c);
        return skv_set_error(SKV_ERR_NOMEM, "cannot allocate the scratch for %d tokens", (int)T);
    }
    /* RoPE tables as transformers computes them: freqs = pos * inv_freq in float32. */
    for (int64_t pos = 0; pos < T; pos++)
        for (int64_t i = 0; i < hd / 2; i++) {
            float f = (float)pos * m->rope_inv_freq[i];
            c->rope_cos[pos * hd / 2 + i] = cosf(f);
            c->rope_sin[pos * hd / 2 + i] = sinf(f);
        }
    openblas_set_num_threads(c->n_threads);
    *out = c;
    return SKV_OK;
}

skv_status skv_context_init(skv_model *m, skv_context_params p, skv_context **out) {
    skv_status st = context_alloc(m, p, out);
    if (st || p.backend != SKV_BACKEND_CUDA) return st;
    skv_context *c = *out;
    struct skv_gpu_model *g = NULL;
    const skv_gpu_policy gp = skv_policy_gpu(&c->pol.p, c->pol.kind, c->want_acc, c->want_win, p.v_slow);
    if ((st = skv_model_gpu(m, &g)) || (st = skv_gpu_ctx_init(g, c->n_ctx, c->n_batch, 1, &gp, &c->gpu))) {
        skv_context_free(c);
        *out = NULL;
    }
    return st;
}

int skv_backend_available(skv_backend b) {
    if (b == SKV_BACKEND_CPU) return 1;
    if (b == SKV_BACKEND_CUDA) return skv_gpu_available();
    skv_set_error(SKV_ERR_ARG, "unknown backend %d", (int)b);
    return 0;
}

void skv_context_free(skv_context *c) {
    if (!c) return;
    skv_gpu_ctx_free(c->gpu);
    free(c->sample_logits);
    free(c->sample_seen);
    skv_cache_free(&c->cache);
    float **bufs[] = {&c->rope_cos, &c->rope_sin, &c->x, &c->xb, &c->proj, &c->q, &c->att_out,
                      &c->k, &c->v, &c->hb, &c->hb2, &c->att, &c->gk, &c->gv, &c->probs,
                      &c->probs_win, &c->blk, &c->wconv};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(*bufs[i]);
    free(c->pol.budget_now);
    free(c->pol_scratch);
    free(c->head_acc);
    free(c->head_last);
    free(c->head_pre);
    free(c->head_win);
    free(c);
}

skv_status skv_context_fork(const skv_context *src, const skv_policy_params *policy,
                            skv_context **out) {
    *out = NULL;
    skv_policy_kind kind;
    skv_status st = skv_policy_parse(policy, src->m->cfg.info.head_dim, &kind);
    if (st) return st;
    if ((skv_policy_needs_acc(kind) && !src->want_acc) || (skv_policy_needs_win(kind) && !src->want_win))
        return skv_set_error(SKV_ERR_ARG, "fork into policy %s: the source context did not collect "
                             "the attention statistics it needs (set collect_stats)", policy->name);
    skv_context_params p = skv_context_default_params();
    p.n_ctx = src->n_ctx;
    p.n_batch = src->n_batch;
    p.policy = *policy;
    if (src->gpu) {
        /* a fresh CUDA context with the new policy, the device cache copied, then compressed */
        p.backend = SKV_BACKEND_CUDA;
        if ((st = skv_context_init(src->m, p, out))) return st;
        skv_context *c = *out;
        c->n_past = src->n_past;
        if ((st = skv_gpu_ctx_copy(c->gpu, src->gpu)) || (st = skv_context_gpu_compress(c))) {
            skv_context_free(c);
            *out = NULL;
            return st;
        }
        return SKV_OK;
    }
    if (kind == SKV_POL_QUANT && src->cache.fmt != SKV_KV_F32)
        return skv_set_error(SKV_ERR_ARG, "fork into policy quant needs an f32 source cache");
    skv_context *c = NULL;
    p.kv_format = kind == SKV_POL_QUANT ? SKV_KV_F32 : src->cache.fmt;
    if ((st = context_alloc(src->m, p, &c))) return st;
    skv_cache_free(&c->cache);
    if ((st = skv_cache_clone(&c->cache, &src->cache))) {
        skv_context_free(c);
        return st;
    }
    c->n_past = src->n_past;
    if (src->head_acc && kind == SKV_POL_FULL) {
        const size_t nh = (size_t)src->m->cfg.info.n_layer * src->m->cfg.info.n_head * (size_t)c->n_ctx;
        c->head_acc = malloc(nh * sizeof(float));
        c->head_last = malloc(nh * sizeof(float));
        c->head_win = malloc(nh * sizeof(float));
        if (!c->head_acc || !c->head_last || !c->head_win) {
            skv_context_free(c);
            return skv_set_error(SKV_ERR_NOMEM, "out of memory");
        }
        memcpy(c->head_acc, src->head_acc, nh * sizeof(float));
        memcpy(c->head_last, src->head_last, nh * sizeof(float));
        memcpy(c->head_win, src->head_win, nh * sizeof(float));
        c->head_win_from = src->head_win_from;
        if (src->head_pre) {
            const size_t np = (size_t)src->m->cfg.info.n_layer * src->m->cfg.info.n_head * (size_t)src->head_prefix;
            c->head_pre = malloc(np * sizeof(float));
            if (!c->head_pre) {
                skv_context_free(c);
                return skv_set_error(SKV_ERR_NOMEM, "out of memory");
            }
            memcpy(c->head_pre, src->head_pre, np * sizeof(float));
            c->head_prefix = src->head_prefix;
        }
    }
    if (kind == SKV_POL_QUANT) {
        /* re-store the f32 cache in the quantized format, block by block */
        skv_cache q;
        skv_kv_format fmt = policy->quant_bits == 8 ? SKV_KV_Q8 : SKV_KV_Q4;
        const skv_model_info *in = &src->m->cfg.info;
        if ((st = skv_cache_init(&q, in->n_layer, in->n_kv_head, in->head_dim, c->n_ctx, fmt))) {
            skv_context_free(c);
            return st;
        }
        for (int32_t l = 0; l < in->n_layer && !st; l++)
            for (int32_t g = 0; g < in->n_kv_head && !st; g++) {
                const skv_stream *s = skv_cache_stream(&c->cache, l, g);
                for (int32_t i = 0; i < s->n && !st; i++) {
                    const float *kr = skv_cache_k_rows(&c->cache, s, i / SKV_KV_BLOCK, c->blk);
                    const float *vr = skv_cache_v_rows(&c->cache, s, i / SKV_KV_BLOCK,
                                                       c->blk + SKV_KV_BLOCK * in->head_dim);
                    int32_t r = i % SKV_KV_BLOCK;
                    st = skv_cache_append(&q, l, g, s->pos[i], kr + (int64_t)r * in->head_dim,
                                          vr + (int64_t)r * in->head_dim);
                }
            }
        skv_cache_free(&c->cache);
        c->cache = q;
        if (st) {
            skv_context_free(c);
            return st;
        }
    }
    skv_policy_compress(&c->pol, &c->cache, c->pol_scratch);
    *out = c;
    return SKV_OK;
}

skv_status skv_context_prefill_scratch(skv_context *c) {
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

skv_status skv_context_set_plan(skv_context *c, const uint8_t *cls, const float *marg, int paper) {
    if (cls && (c->pol.kind != SKV_POL_FULL || c->cache.fmt == SKV_KV_Q8 || c->cache.fmt == SKV_KV_Q4))
        return skv_set_error(SKV_ERR_ARG, "an attention plan needs a context that keeps every token");
    c->plan_cls = cls;
    c->plan_marg = marg;
    c->plan_paper = paper;
    return SKV_OK;
}

int32_t skv_context_n_past(const skv_context *c) { return c->n_past; }

/* The checks of the per-head statistics' readers: the buffer exists (else `without` names the
 * parameter), the head exists; *row: the (layer, head) index into them. */
static skv_status head_row(const skv_context *c, const float *buf, const char *without, int32_t layer,
                           int32_t head, size_t *row) {
    const skv_model_info *in = &c->m->cfg.info;
    *row = 0;
    if (!buf) return skv_set_error(SKV_ERR_ARG, "the context was created without %s", without);
    if (layer < 0 || layer >= in->n_layer || head < 0 || head >= in->n_head)
        return skv_set_error(SKV_ERR_ARG, "layer %d head %d out of range", layer, head);
    *row = (size_t)layer * in->n_head + head;
    return SKV_OK;
}

skv_status skv_context_head_attention_prefix(const skv_context *c, int32_t layer, int32_t head,
                                             float *acc) {
    size_t row;
    skv_status st = head_row(c, c->head_pre, "head_prefix", layer, head, &row);
    if (st) return st;
    memcpy(acc, c->head_pre + row * (size_t)c->head_prefix, (size_t)c->head_prefix * sizeof(float));
    return SKV_OK;
}

skv_status skv_context_head_attention(const skv_context *c, int32_t layer, int32_t head, float *acc,
                                      float *last) {
    size_t row;
    skv_status st = head_row(c, c->head_acc, "collect_head_stats", layer, head, &row);
    if (st) return st;
    const size_t off = row * (size_t)c->n_ctx;
    if (acc) memcpy(acc, c->head_acc + off, (size_t)c->n_past * sizeof(float));
    if (last) memcpy(last, c->head_last + off, (size_t)c->n_past * sizeof(float));
    return SKV_OK;
}

void skv_context_drop_head_stats(skv_context *c) {
    free(c->head_acc), free(c->head_last), free(c->head_pre), free(c->head_win);
    c->head_acc = c->head_last = c->head_pre = c->head_win = NULL;
    c->head_prefix = 0;
    c->head_win_from = INT64_MAX;
}

skv_status skv_context_set_head_window(skv_context *c, int32_t from) {
    if (!c->head_acc)
        return skv_set_error(SKV_ERR_ARG, "the context was created without collect_head_stats");
    if (from < c->n_past)
        return skv_set_error(SKV_ERR_ARG, "head window start %d is before the next position %d", from,
                             c->n_past);
    c->head_win_from = from;
    return SKV_OK;
}

skv_status skv_context_head_attention_window(const skv_context *c, int32_t layer, int32_t head,
                                             float *win) {
    size_t row;
    skv_status st = head_row(c, c->head_acc, "collect_head_stats", layer, head, &row);
    if (st) return st;
    memcpy(win, c->head_win + row * (size_t)c->n_ctx, (size_t)c->n_past * sizeof(float));
    return SKV_OK;
}

skv_status skv_context_gpu_compress(skv_context *c) {
    const int32_t L = c->m->cfg.info.n_layer;
    if (c->pol.kind == SKV_POL_FULL) return SKV_OK;
    for (int32_t l = 0; l < L; l++)
        c->pol.budget_now[l] = skv_policy_budget(&c->pol.p, c->pol.kind, l, L, c->n_past);
    return skv_gpu_compress(c->gpu, 0, c->pol.budget_now);
}

skv_status skv_context_truncate(skv_context *c, int32_t n_past) {
    if (n_past < 0 || n_past > c->n_past)
        return skv_set_error(SKV_ERR_ARG, "truncate to %d: context holds %d tokens", n_past,
                             c->n_past);
    if (c->gpu) {
        skv_status st = skv_gpu_truncate(c->gpu, 0, n_past);
        if (st) return st;
    }
    skv_cache_truncate(&c->cache, n_past);
    c->n_past = n_past;
    if (n_past == 0) memset(c->pol.budget_now, 0, (size_t)c->m->cfg.info.n_layer * sizeof(int32_t));
    return SKV_OK;
}

void skv_context_kv_usage(const skv_context *c, skv_kv_usage *u) {
    skv_cache_usage cu;
    skv_cache_usage_get(&c->cache, &cu);
    memset(u, 0, sizeof *u);
    u->bytes = cu.total;
    if (c->gpu) { /* bf16 blocks held in the device pool (V in pinned host memory when slow) */
        int64_t bytes, slow;
        skv_gpu_kv_usage(c->gpu, &bytes, &slow, &u->slots);
        u->n_past = c->n_past;
        u->bytes = bytes;
        u->bytes_slow = slow;
        u->bytes_fast = bytes - slow;
        u->bytes_by_format[SKV_KV_BF16] = bytes;
        return;
    }
    for (int f = 0; f < SKV_KV_FORMAT_COUNT; f++) {
        u->bytes_fast += cu.bytes[SKV_TIER_FAST][f];
        u->bytes_slow += cu.bytes[SKV_TIER_SLOW][f];
        u->bytes_by_format[f] = cu.bytes[SKV_TIER_FAST][f] + cu.bytes[SKV_TIER_SLOW][f];
    }
    u->slots = cu.slots;
    u->n_past = c->n_past;
}

int64_t skv_context_kv_bytes_head(const skv_context *c, int32_t layer, int32_t kv_head) {
    if (layer < 0 || layer >= c->cache.n_layer || kv_head < 0 || kv_head >= c->cache.n_kv_head) return -1;
    if (c->gpu) { /* the blocks its slots fill, K and V in bf16 */
        int32_t n = 0;
        if (skv_gpu_stream_read(c->gpu, layer, 0, kv_head, &n, NULL, NULL, NULL, NULL, NULL)) return -1;
        return (int64_t)(n + SKV_GPU_BLOCK - 1) / SKV_GPU_BLOCK * SKV_GPU_BLOCK * c->cache.head_dim * 2 * 2;
    }
    return skv_cache_stream_bytes(&c->cache, layer, kv_head);
}

int32_t skv_context_kept(const skv_context *c, int32_t layer, int32_t kv_head, int32_t *pos) {
    if (layer < 0 || layer >= c->cache.n_layer || kv_head < 0 || kv_head >= c->cache.n_kv_head) return -1;
    if (c->gpu) {
        int32_t n = 0;
        if (skv_gpu_stream_read(c->gpu, layer, 0, kv_head, &n, pos, NULL, NULL, NULL, NULL)) return -1;
        return n;
    }
    const skv_stream *st = skv_cache_stream(&c->cache, layer, kv_head);
    if (pos) memcpy(pos, st->pos, (size_t)st->n * sizeof *pos);
    return st->n;
}
