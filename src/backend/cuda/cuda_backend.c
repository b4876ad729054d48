/*
 * cuda_backend.c — the CUDA backend's table (backend.h) over the device API of gpu.h: the
 * model's device copy (made once, freed with the model; GGUF's quantized weights kept in their
 * format, gpu_qweights.cu), a context per skv_context with the
 * policy's eviction rule and statistics, and streams exchanged as bf16 blocks. Compiled in
 * every build; without CUDA, gpu_stub.c answers each device call with SKV_ERR_UNSUPPORTED.
 */
#include "backend/cuda/gpu.h"
#include "backend/backend.h"

static skv_gpu_ctx *G(const skv_context *c) { return (skv_gpu_ctx *)c->bs; }

static skv_gpu_mat mat(const skv_weight *w) {
    return (skv_gpu_mat){.data = w->data, .dtype = w->dtype, .rows = w->rows, .cols = w->cols};
}

static void model_free(void *g) { skv_gpu_model_free(g); }

/* The model's GPU copy, uploaded on first use. */
static skv_status model_gpu(skv_model *m, skv_gpu_model **out) {
    if (m->be_data) {
        *out = m->be_data;
        return SKV_OK;
    }
    const skv_model_info *in = &m->cfg.info;
    if (m->cfg.gemma3) /* what its forward pass needs beyond the Llama/Qwen2 one */
        return skv_set_error(SKV_ERR_UNSUPPORTED, "the CUDA backend does not run Gemma 3 (general.architecture gemma3: "
                             "head_dim %d, post-attention/post-FFN norms, attn_q_norm/attn_k_norm, GELU FFN, "
                             "embedding scale, per-layer sliding window and RoPE base are not built; use --backend cpu)",
                             in->head_dim);
    skv_gpu_layer_desc *ld = calloc((size_t)SKV_MAX(in->n_layer, 1), sizeof *ld);
    if (!ld) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    for (int32_t l = 0; l < in->n_layer; l++) {
        const skv_layer *y = &m->layers[l];
        ld[l] = (skv_gpu_layer_desc){.kv_src = m->kv_src[l], .attn_norm = y->attn_norm, .ffn_norm = y->ffn_norm, .bq = y->bq, .bk = y->bk,
                                     .bv = y->bv, .bo = y->bo, .wq = mat(&y->wq), .wk = mat(&y->wk),
                                     .wv = mat(&y->wv), .wo = mat(&y->wo), .w_gate = mat(&y->w_gate),
                                     .w_up = mat(&y->w_up), .w_down = mat(&y->w_down)};
    }
    const skv_gpu_model_desc d = {.n_layer = in->n_layer, .dim = in->dim, .n_head = in->n_head,
                                  .n_kv_head = in->n_kv_head, .head_dim = in->head_dim, .ffn_dim = in->ffn_dim,
                                  .n_vocab = in->n_vocab, .rms_eps = in->rms_eps,
                                  .rope_inv_freq = m->rope_inv_freq, .tok_embed = mat(&m->tok_embed),
                                  .lm_head = mat(&m->lm_head), .final_norm = m->final_norm, .layers = ld};
    skv_gpu_model *g = NULL;
    skv_status st = skv_gpu_model_load(&d, &g);
    free(ld);
    if (st) return st;
    m->be_data = g;
    m->be_data_free = model_free;
    *out = g;
    return SKV_OK;
}

skv_status skv_model_gpu(skv_model *m, skv_gpu_model **out) { return model_gpu(m, out); }

int skv_gpu_backend_available(void) { return skv_gpu_available(); }

skv_status skv_gpu_backend_device_info(char *name, int name_len, int32_t *sms, int64_t *mem) {
    int s = 0;
    skv_status st = skv_gpu_device_info(name, name_len, &s, mem);
    *sms = s;
    return st;
}

skv_status skv_gpu_backend_copy_bandwidth(int64_t bytes, double *bps) { return skv_gpu_copy_bandwidth(bytes, bps); }
skv_status skv_gpu_backend_h2d_bandwidth(int64_t bytes, double *bps) { return skv_gpu_h2d_bandwidth(bytes, bps); }

/* What KCache runs on the GPU: V in pinned host memory (no file store), a bf16 cache, no
 * eviction under it, no collected statistics. */
static skv_status kc_check(const skv_context *c, const skv_context_params *p) {
    const skv_policy_params *q = &c->pol.p;
    if (p->kv_format != SKV_KV_F32 && p->kv_format != SKV_KV_BF16)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "policy kcache on CUDA: --kv-format %s: KCache on CUDA keeps a bf16 cache "
                             "(int8/int4 K with KCache runs on --backend cpu)", p->kv_format == SKV_KV_Q8 ? "int8"
                             : p->kv_format == SKV_KV_Q4 ? "int4" : "f16");
    if (q->kc_over && *q->kc_over)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "policy kcache on CUDA: --kc-over %s (KCache over an evicted cache runs "
                             "on --backend cpu)", q->kc_over);
    if (q->kc_store != SKV_KC_MMAP || q->kc_cold)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "policy kcache on CUDA: the slow tier is pinned host memory; --kc-store "
                             "zstd and --kc-cold are for the CPU backend's file store");
    if (p->v_slow || p->collect_stats)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "policy kcache on CUDA: v_slow and collect_stats do not combine with it");
    return SKV_OK;
}

/* The plan a CUDA context runs is its policy's V top-N rule, fixed at creation. */
static skv_status cu_set_plan(skv_context *c, const skv_read_plan *plan) {
    const int on = c->pol.ops->vtop != NULL;
    if (plan && (plan->cls || plan->vweight))
        return skv_set_error(SKV_ERR_UNSUPPORTED, "read plans with per-slot classes (SmallKV) need the CPU backend");
    if ((plan && plan->vtop.on ? 1 : 0) != on)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "the CUDA backend fixes its V top-N rule (KCache) at context creation");
    return SKV_OK;
}

static skv_status cu_init(skv_context *c, const skv_context_params *p) {
    const skv_model_info *in = &c->m->cfg.info;
    skv_vtop_rule vt = {0};
    if (c->pol.ops->vtop) { /* KCache: what the GPU context allocates depends on the rule */
        skv_status st = kc_check(c, p);
        if (st) return st;
        vt = c->pol.ops->vtop(&c->pol.p);
    }
    /* the cache's format: the policy's (quant: KIVI int8/int4) or --kv-format; f32 is stored bf16
     * on the GPU, int8/int4 as the CPU's KIVI blocks (gpu_kivi.cu), f16 refused */
    const skv_kv_format fmt = c->pol.ops->format ? c->pol.ops->format(&c->pol.p, p->kv_format) : p->kv_format;
    if (fmt != SKV_KV_F32 && fmt != SKV_KV_BF16 && fmt != SKV_KV_Q8 && fmt != SKV_KV_Q4)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "--kv-format f16: the CUDA cache is bf16 or KIVI int8/int4");
    if (c->pol.ops->transform)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "policy %s runs on the CPU backend only", c->pol.ops->name);
    if (p->collect_head_stats)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "per-head attention statistics (collect_head_stats, SmallKV) need "
                             "the CPU backend");
    if (in->sliding_window > 0 && c->n_ctx > in->sliding_window)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "the CUDA backend has no sliding-window attention: a context of %d "
                             "tokens exceeds the model's window of %d", c->n_ctx, in->sliding_window);
    if (p->batch_invariant && (fmt == SKV_KV_Q8 || fmt == SKV_KV_Q4))
        return skv_set_error(SKV_ERR_UNSUPPORTED, "the batch-invariant mode (batch_invariant, --batch-invariant) has "
                             "no KIVI int8/int4 attention kernel on CUDA: use the bf16 cache or the default kernels");
    skv_gpu_model *g = NULL;
    skv_status st = model_gpu(c->m, &g);
    if (st) return st;
    const skv_gpu_policy gp = {.ev = c->pol.ev, .want_acc = !!(c->stats & SKV_STAT_ACC),
                               .want_win = !!(c->stats & SKV_STAT_WIN), .want_last = !!(c->stats & SKV_STAT_LAST),
                               .v_slow = p->v_slow, .vtop = vt, .lckv_iters = c->lckv_iters,
                               .kv_bits = fmt == SKV_KV_Q8 ? 8 : fmt == SKV_KV_Q4 ? 4 : 0};
    skv_gpu_ctx *gc = NULL;
    if ((st = skv_gpu_ctx_init(g, c->n_ctx, c->n_batch, c->n_seq, &gp, &gc))) return st;
    if (p->batch_invariant) skv_gpu_set_batch_invariant(gc, 1);
    c->bs = gc;
    return SKV_OK;
}

static void cu_free(skv_context *c) {
    skv_gpu_ctx_free(G(c));
    c->bs = NULL;
}

static void cu_begin_call(skv_context *c, int32_t n) {
    if (c->stats & SKV_STAT_WIN) skv_gpu_begin_call(G(c), 0, c->n_past + n - SKV_MAX(c->pol.p.obs_window, 1));
}

/* The device returns the residual stream; the final norm of the hidden state asked for is
 * applied here in f32 (the device's own normed copy is bf16). */
static skv_status cu_forward(skv_context *c, const skv_fwd_in *in, const skv_fwd_out *out) {
    const skv_model_info *mi = &c->m->cfg.info;
    if (c->m->grp_lo >= 0 && in->n > 1 && in->n <= SKV_MIN(c->lckv_iters, SKV_LCKV_TOKENS)) {
        /* LCKV: a short chunk token by token (exact), as the CPU backend */
        for (int32_t i = 0; i < in->n; i++) {
            const skv_fwd_in f1 = {.ids = in->ids ? in->ids + i : NULL,
                                   .embd = in->embd ? in->embd + (int64_t)i * mi->dim : NULL, .n = 1,
                                   .pos0 = in->pos0 + i, .last_chunk = in->last_chunk};
            const int row = out->all || i == in->n - 1;
            const int64_t r = out->all ? i : 0;
            const skv_fwd_out o1 = {.logits = row && out->logits ? out->logits + r * mi->n_vocab : NULL,
                                    .hidden = row && out->hidden ? out->hidden + r * mi->dim : NULL,
                                    .hidden_normed = row && out->hidden_normed ? out->hidden_normed + r * mi->dim : NULL};
            skv_status st = cu_forward(c, &f1, &o1);
            if (st) return st;
        }
        return SKV_OK;
    }
    const int64_t rows = out->all ? in->n : 1, D = mi->dim;
    float *h = out->hidden, *tmp = NULL;
    if (out->hidden_normed && !h && !(h = tmp = malloc(sizeof(float) * (size_t)(rows * D))))
        return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    skv_status st = skv_gpu_forward(G(c), 0, in->ids, in->embd, in->n, in->pos0, out->logits, h, NULL, out->all);
    if (!st && out->hidden_normed)
        for (int64_t r = 0; r < rows; r++) skv_rmsnorm(out->hidden_normed + r * D, h + r * D, c->m->final_norm, D, mi->rms_eps);
    free(tmp);
    return st;
}

static skv_status cu_decode_sampled(skv_context *c, int32_t id, const skv_sample_args *a, int32_t *next) {
    const int32_t pos = c->n_past;
    return skv_gpu_decode_batch(G(c), &id, &pos, 1, NULL, next, a);
}

static skv_status cu_compress(skv_context *c) { return skv_gpu_compress(G(c), 0, c->pol.budget_now); }

static skv_status cu_truncate(skv_context *c, int32_t n_past) { return skv_gpu_truncate(G(c), 0, n_past); }

static skv_status cu_copy(skv_context *dst, const skv_context *src) {
    if (src->be != dst->be) return skv_set_error(SKV_ERR_ARG, "fork across backends: export and import instead");
    return skv_gpu_ctx_copy(G(dst), G(src));
}

static void cu_usage(const skv_context *c, skv_kv_usage *u) {
    int64_t bytes, slow;
    skv_gpu_kv_usage(G(c), &bytes, &slow, &u->slots);
    u->bytes = bytes;
    u->bytes_slow = slow;
    u->bytes_fast = bytes - slow;
    const int bits = skv_gpu_kv_bits(G(c));
    u->bytes_by_format[bits == 8 ? SKV_KV_Q8 : bits == 4 ? SKV_KV_Q4 : SKV_KV_BF16] = bytes;
    if (c->pol.ops->vtop) { /* KCache: rows read from pinned host memory over PCIe */
        skv_gpu_kc_counts(G(c), &u->fetch_steps, &u->fetch_rows, NULL);
        u->fetch_bytes = u->fetch_rows * c->m->cfg.info.head_dim * 2;
        u->store_bytes = slow;
    }
}

static int64_t cu_stream_bytes(const skv_context *c, int32_t layer, int32_t kv_head) {
    int32_t n = 0;
    if (skv_gpu_stream_read(G(c), layer, 0, kv_head, &n, NULL, NULL, NULL, NULL, NULL, NULL)) return -1;
    return (int64_t)(n + SKV_GPU_BLOCK - 1) / SKV_GPU_BLOCK *
           skv_gpu_kv_block_bytes(c->m->cfg.info.head_dim, skv_gpu_kv_bits(G(c)));
}

/* A stream read back as bf16 blocks of SKV_KV_BLOCK rows (the exchange layout); rows 0:
 * positions and statistics only. */
static skv_status cu_stream_get(const skv_context *c, int32_t layer, int32_t g, int rows, skv_stream_io *s) {
    memset(s, 0, sizeof *s);
    if (rows && skv_gpu_kv_bits(G(c)))
        return skv_set_error(SKV_ERR_UNSUPPORTED, "cache export on CUDA: a KIVI (int8/int4) cache's blocks are not "
                             "exchanged (use --backend cpu)");
    const int64_t hd = c->m->cfg.info.head_dim, T = c->n_ctx;
    float *k = NULL, *v = NULL;
    if (rows) k = malloc(sizeof(float) * (size_t)(T * hd)), v = malloc(sizeof(float) * (size_t)(T * hd));
    s->pos = malloc(sizeof(int32_t) * (size_t)T);
    const int stats = c->stats != 0;
    if (stats) {
        s->acc = malloc(sizeof(float) * (size_t)T);
        s->win = malloc(sizeof(float) * (size_t)T);
        s->last = malloc(sizeof(float) * (size_t)T);
    }
    skv_status st = SKV_OK;
    if ((rows && (!k || !v)) || !s->pos || (stats && (!s->acc || !s->win || !s->last)))
        st = skv_set_error(SKV_ERR_NOMEM, "out of memory");
    if (!st) st = skv_gpu_stream_read(G(c), layer, 0, g, &s->n, s->pos, s->acc, s->win, s->last, k, v);
    const int32_t nb = (s->n + SKV_KV_BLOCK - 1) / SKV_KV_BLOCK;
    if (!st && rows) {
        s->kbytes = s->vbytes = (int64_t)nb * SKV_KV_BLOCK * hd * 2;
        s->kfmt = malloc((size_t)SKV_MAX(nb, 1)), s->vfmt = malloc((size_t)SKV_MAX(nb, 1));
        s->kdata = calloc((size_t)SKV_MAX(s->kbytes, 1), 1), s->vdata = calloc((size_t)SKV_MAX(s->vbytes, 1), 1);
        if (!s->kfmt || !s->vfmt || !s->kdata || !s->vdata) st = skv_set_error(SKV_ERR_NOMEM, "out of memory");
    }
    if (!st && rows) {
        memset(s->kfmt, SKV_KV_BF16, (size_t)nb), memset(s->vfmt, SKV_KV_BF16, (size_t)nb);
        uint16_t *kd = (uint16_t *)s->kdata, *vd = (uint16_t *)s->vdata;
        for (int64_t i = 0; i < (int64_t)s->n * hd; i++) kd[i] = skv_f32_to_bf16(k[i]), vd[i] = skv_f32_to_bf16(v[i]);
    }
    free(k), free(v);
    if (st) skv_stream_io_free(s);
    return st;
}

static void rows_f32(const uint8_t *fmt, const uint8_t *data, int32_t n, int64_t hd, float *out) {
    int64_t off = 0;
    for (int32_t b = 0; b * SKV_KV_BLOCK < n; b++) {
        const int32_t rows = SKV_MIN(SKV_KV_BLOCK, n - b * SKV_KV_BLOCK);
        float *o = out + (int64_t)b * SKV_KV_BLOCK * hd;
        if (fmt[b] == SKV_KV_F32) {
            memcpy(o, data + off, sizeof(float) * (size_t)(rows * hd));
            off += (int64_t)SKV_KV_BLOCK * hd * 4;
        } else {
            for (int64_t i = 0; i < rows * hd; i++) {
                uint16_t h;
                memcpy(&h, data + off + 2 * i, 2);
                o[i] = skv_bf16_to_f32(h);
            }
            off += (int64_t)SKV_KV_BLOCK * hd * 2;
        }
    }
}

static skv_status cu_stream_put(skv_context *c, int32_t layer, int32_t g, const skv_stream_io *s) {
    const int64_t hd = c->m->cfg.info.head_dim;
    const int32_t nb = (s->n + SKV_KV_BLOCK - 1) / SKV_KV_BLOCK;
    int64_t kb = 0, vb = 0;
    for (int32_t b = 0; b < nb; b++) {
        if ((s->kfmt[b] != SKV_KV_F32 && s->kfmt[b] != SKV_KV_BF16) || (s->vfmt[b] != SKV_KV_F32 && s->vfmt[b] != SKV_KV_BF16))
            return skv_set_error(SKV_ERR_UNSUPPORTED, "cache import on CUDA: stream (%d, %d) holds quantized blocks "
                                 "(the CUDA cache is bf16)", layer, g);
        kb += (int64_t)SKV_KV_BLOCK * hd * (s->kfmt[b] == SKV_KV_F32 ? 4 : 2);
        vb += (int64_t)SKV_KV_BLOCK * hd * (s->vfmt[b] == SKV_KV_F32 ? 4 : 2);
    }
    if (kb != s->kbytes || vb != s->vbytes)
        return skv_set_error(SKV_ERR_FORMAT, "cache import: stream (%d, %d): block bytes do not match its formats", layer, g);
    float *k = malloc(sizeof(float) * (size_t)SKV_MAX((int64_t)nb * SKV_KV_BLOCK * hd, 1));
    float *v = malloc(sizeof(float) * (size_t)SKV_MAX((int64_t)nb * SKV_KV_BLOCK * hd, 1));
    skv_status st = SKV_OK;
    if (!k || !v) st = skv_set_error(SKV_ERR_NOMEM, "out of memory");
    if (!st) {
        rows_f32(s->kfmt, s->kdata, s->n, hd, k);
        rows_f32(s->vfmt, s->vdata, s->n, hd, v);
        st = skv_gpu_stream_write(G(c), layer, 0, g, s->n, s->pos, s->acc, s->win, s->last, k, v);
        if (!st) st = skv_gpu_set_next(G(c), 0, c->n_past);
    }
    free(k), free(v);
    return st;
}

static skv_status cu_seq_forward(skv_context *c, int32_t seq, const int32_t *ids, int32_t n, int32_t pos0, float *logits) {
    return skv_gpu_forward(G(c), seq, ids, NULL, n, pos0, logits, NULL, NULL, 0);
}

static void cu_seq_begin_call(skv_context *c, int32_t seq, int32_t n, int32_t pos0) {
    if (c->stats & SKV_STAT_WIN) skv_gpu_begin_call(G(c), seq, pos0 + n - SKV_MAX(c->pol.p.obs_window, 1));
}

static skv_status cu_seq_compress(skv_context *c, int32_t seq, const int32_t *budget) {
    return skv_gpu_compress(G(c), seq, budget);
}

static int64_t cu_seq_kv_bytes(const skv_context *c, int32_t seq) {
    const int64_t nb = skv_gpu_seq_blocks(G(c), seq);
    return nb < 0 ? -1 : nb * skv_gpu_kv_block_bytes(c->m->cfg.info.head_dim, skv_gpu_kv_bits(G(c)));
}

static skv_status cu_decode_batch(skv_context *c, const int32_t *seqs, const int32_t *ids, const int32_t *pos, int32_t n,
                                  float *logits, int32_t *next) {
    return skv_gpu_decode_seqs(G(c), seqs, ids, pos, n, logits, next, NULL);
}

static skv_status cu_seq_truncate(skv_context *c, int32_t seq, int32_t n_past) { return skv_gpu_truncate(G(c), seq, n_past); }

static skv_status cu_seq_copy(skv_context *c, int32_t dst, int32_t src) { return skv_gpu_seq_copy(G(c), dst, src); }

static skv_status cu_scd_upload(const skv_codes_desc *d, void **dev) {
    skv_gpu_scd *s = NULL;
    skv_status st = skv_gpu_scd_upload(d, &s);
    *dev = s;
    return st;
}
static void cu_scd_free(void *dev) { skv_gpu_scd_free(dev); }
static skv_status cu_scd_layer(skv_context *c, void *dev, int32_t layer, int part, const void *z, int z_bf16, int32_t n) {
    return skv_gpu_scd_layer(G(c), dev, layer, part, z, z_bf16, n);
}
static skv_status cu_scd_finish(skv_context *c, int32_t n) { return skv_gpu_scd_finish(G(c), n); }

static int64_t cu_weight_bytes(const skv_context *c) { return skv_gpu_model_bytes(c->m->be_data); }

const skv_backend_ops skv_backend_cuda = {
    .name = "cuda",
    .init = cu_init,
    .free = cu_free,
    .begin_call = cu_begin_call,
    .forward = cu_forward,
    .decode_sampled = cu_decode_sampled,
    .compress = cu_compress,
    .step = NULL, /* policies that evict every step do it inside the decode step's graph */
    .truncate = cu_truncate,
    .copy = cu_copy,
    .usage = cu_usage,
    .stream_bytes = cu_stream_bytes,
    .stream_get = cu_stream_get,
    .stream_put = cu_stream_put,
    .seq_forward = cu_seq_forward,
    .seq_begin_call = cu_seq_begin_call,
    .seq_compress = cu_seq_compress,
    .seq_kv_bytes = cu_seq_kv_bytes,
    .decode_batch = cu_decode_batch,
    .seq_truncate = cu_seq_truncate,
    .seq_copy = cu_seq_copy,
    .set_plan = cu_set_plan,
    .weight_bytes = cu_weight_bytes,
    .codes_upload = cu_scd_upload,
    .codes_free = cu_scd_free,
    .codes_layer = cu_scd_layer,
    .codes_finish = cu_scd_finish,
};
