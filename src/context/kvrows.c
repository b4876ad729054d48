/*
 * kvrows.c — a full cache's K and V as plain f32 rows by position, and back: what a technique
 * that transforms the cache between models (SCD's codes) reads and writes. Keys can be read with
 * RoPE undone and written before RoPE; a layer's K/V can be projected from normalised inputs
 * through the model's own weights.
 */
#include "context/context.h"
#include "kv/quant.h"

/* Rows (n, hd) of one stored block of format f (bf16, f32, or KIVI quantized). */
static void block_rows(skv_kv_format f, int32_t hd, int is_v, const uint8_t *src, float *rows, int n) {
    if (f == SKV_KV_F32) memcpy(rows, src, sizeof(float) * (size_t)n * (size_t)hd);
    else if (f == SKV_KV_BF16)
        for (int64_t i = 0; i < (int64_t)n * hd; i++) rows[i] = skv_bf16_to_f32(((const uint16_t *)src)[i]);
    else skv_dequant_block(f, hd, is_v, src, rows, n);
}

/* Undo (sign -1) or apply (+1) RoPE on rows (n, n_kv*hd) at positions 0..n-1. */
static void rope_rows(const skv_model *m, float *k, int32_t n, float sign) {
    const skv_model_info *in = &m->cfg.info;
    const int32_t hd = in->head_dim, half = hd / 2;
    float sn[512];
    for (int32_t t = 0; t < n; t++) {
        const float *cs = m->rope_cos + (int64_t)t * half, *s0 = m->rope_sin + (int64_t)t * half;
        for (int32_t i = 0; i < half; i++) sn[i] = sign * s0[i];
        for (int32_t g = 0; g < in->n_kv_head; g++) skv_rope(k + ((int64_t)t * in->n_kv_head + g) * hd, cs, sn, hd);
    }
}

skv_status skv_context_get_kv(const skv_context *c, int32_t layer, int derope, float *k, float *v) {
    return skv_context_get_kv_rows(c, layer, c->n_past, derope, k, v);
}

skv_status skv_context_get_kv_rows(const skv_context *c, int32_t layer, int32_t n, int derope, float *k, float *v) {
    const skv_model_info *in = &c->m->cfg.info;
    const int32_t hd = in->head_dim, KVH = in->n_kv_head;
    if (layer < 0 || layer >= c->n_layer)
        return skv_set_error(SKV_ERR_ARG, "get_kv: cache layer %d of %d", layer, c->n_layer);
    if (hd / 2 > 512) return skv_set_error(SKV_ERR_UNSUPPORTED, "get_kv: head_dim %d", hd);
    float *blk = malloc(sizeof(float) * SKV_KV_BLOCK * (size_t)hd);
    if (!blk) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    skv_status st = SKV_OK;
    for (int32_t g = 0; g < KVH && !st; g++) {
        skv_stream_io s;
        if ((st = c->be->stream_get(c, layer, g, 1, &s))) break;
        if (s.n != n) {
            st = skv_set_error(SKV_ERR_ARG, "get_kv: stream (%d, %d) keeps %d of %d tokens (a full cache is needed)",
                               layer, g, s.n, n);
            skv_stream_io_free(&s);
            break;
        }
        int64_t ko = 0, vo = 0;
        for (int32_t b = 0; b * SKV_KV_BLOCK < n && !st; b++) {
            const int nr = SKV_MIN(SKV_KV_BLOCK, n - b * SKV_KV_BLOCK);
            for (int isv = 0; isv < 2; isv++) {
                const skv_kv_format f = (skv_kv_format)(isv ? s.vfmt[b] : s.kfmt[b]);
                block_rows(f, hd, isv, (isv ? s.vdata + vo : s.kdata + ko), blk, nr);
                *(isv ? &vo : &ko) += (int64_t)skv_kv_block_bytes(f, hd, isv);
                float *dst = isv ? v : k;
                for (int r = 0; r < nr; r++) {
                    const int32_t p = s.pos[b * SKV_KV_BLOCK + r];
                    if (p < 0 || p >= n) {
                        st = skv_set_error(SKV_ERR_FORMAT, "get_kv: slot at position %d of %d", p, n);
                        break;
                    }
                    memcpy(dst + ((int64_t)p * KVH + g) * hd, blk + (int64_t)r * hd, sizeof(float) * (size_t)hd);
                }
            }
        }
        skv_stream_io_free(&s);
    }
    free(blk);
    if (!st && derope) rope_rows(c->m, k, n, -1.0f);
    return st;
}

skv_status skv_context_put_kv(skv_context *c, int32_t n, const float *k, const float *v, int rope) {
    const skv_model_info *in = &c->m->cfg.info;
    const int32_t hd = in->head_dim, KVH = in->n_kv_head, L = c->n_layer;
    if (c->n_past != 0 || c->past) return skv_set_error(SKV_ERR_ARG, "put_kv: the context is not empty");
    if (n <= 0 || n > c->n_ctx) return skv_set_error(SKV_ERR_RANGE, "put_kv: %d tokens, the context holds %d", n, c->n_ctx);
    if (hd / 2 > 512) return skv_set_error(SKV_ERR_UNSUPPORTED, "put_kv: head_dim %d", hd);
    const int32_t nb = (n + SKV_KV_BLOCK - 1) / SKV_KV_BLOCK;
    const size_t bb = skv_kv_block_bytes(SKV_KV_F32, hd, 0);
    const int64_t rowsz = (int64_t)KVH * hd;
    float *kr = rope ? malloc(sizeof(float) * (size_t)n * (size_t)rowsz) : NULL;
    uint8_t *kd = calloc((size_t)nb, bb), *vd = calloc((size_t)nb, bb), *fm = malloc((size_t)nb);
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)n);
    skv_status st = SKV_OK;
    if ((rope && !kr) || !kd || !vd || !fm || !pos) st = skv_set_error(SKV_ERR_NOMEM, "out of memory");
    for (int32_t i = 0; i < n && !st; i++) pos[i] = i;
    if (!st) memset(fm, SKV_KV_F32, (size_t)nb);
    c->n_past = n;
    for (int32_t l = 0; l < L && !st; l++) {
        const float *K = k + (int64_t)l * n * rowsz, *V = v + (int64_t)l * n * rowsz;
        if (rope) {
            memcpy(kr, K, sizeof(float) * (size_t)n * (size_t)rowsz);
            rope_rows(c->m, kr, n, 1.0f);
            K = kr;
        }
        for (int32_t g = 0; g < KVH && !st; g++) {
            for (int32_t t = 0; t < n; t++) {
                memcpy((float *)kd + (int64_t)t * hd, K + t * rowsz + (int64_t)g * hd, sizeof(float) * (size_t)hd);
                memcpy((float *)vd + (int64_t)t * hd, V + t * rowsz + (int64_t)g * hd, sizeof(float) * (size_t)hd);
            }
            const skv_stream_io s = {.n = n, .pos = pos, .kfmt = fm, .vfmt = fm, .kdata = kd, .vdata = vd,
                                     .kbytes = (int64_t)(nb * bb), .vbytes = (int64_t)(nb * bb)};
            st = c->be->stream_put(c, l, g, &s);
        }
    }
    if (!st) st = skv_context_compress(c);
    if (st) {
        c->n_past = 0;
        c->be->truncate(c, 0);
    }
    free(kr), free(kd), free(vd), free(fm), free(pos);
    return st;
}

int skv_context_codes_on_device(const skv_context *c) { return c->be->codes_layer != NULL; }

skv_status skv_context_codes_upload(const skv_context *c, const skv_codes_desc *d, void **dev, void (**free_fn)(void *)) {
    *dev = NULL, *free_fn = NULL;
    if (!c->be->codes_upload) return skv_set_error(SKV_ERR_UNSUPPORTED, "codes: the %s backend rebuilds no layers", c->be->name);
    skv_status st = c->be->codes_upload(d, dev);
    if (!st) *free_fn = c->be->codes_free;
    return st;
}

skv_status skv_context_codes_layer(skv_context *c, void *dev, int32_t layer, int part, const void *z, int z_bf16, int32_t n) {
    if (!c->be->codes_layer) return skv_set_error(SKV_ERR_UNSUPPORTED, "codes: the %s backend rebuilds no layers", c->be->name);
    if (c->n_past != 0 || c->past) return skv_set_error(SKV_ERR_ARG, "codes: the context is not empty");
    if (n <= 0 || n > c->n_ctx) return skv_set_error(SKV_ERR_RANGE, "codes: %d tokens, the context holds %d", n, c->n_ctx);
    return c->be->codes_layer(c, dev, layer, part, z, z_bf16, n);
}

skv_status skv_context_codes_finish(skv_context *c, int32_t n) {
    if (!c->be->codes_finish) return skv_set_error(SKV_ERR_UNSUPPORTED, "codes: the %s backend rebuilds no layers", c->be->name);
    if (c->n_past != 0 || n <= 0 || n > c->n_ctx) return skv_set_error(SKV_ERR_ARG, "codes: finish %d tokens after %d", n, c->n_past);
    skv_status st = c->be->codes_finish(c, n);
    if (st) return st;
    c->n_past = n;
    if ((st = skv_context_compress(c))) {
        c->n_past = 0;
        c->be->truncate(c, 0);
    }
    return st;
}

skv_status skv_model_project_kv(const skv_model *m, int32_t layer, const float *h, int32_t n, float *k, float *v) {
    const skv_model_info *in = &m->cfg.info;
    if (layer < 0 || layer >= in->n_layer) return skv_set_error(SKV_ERR_ARG, "project_kv: layer %d of %d", layer, in->n_layer);
    if (n <= 0) return SKV_OK;
    const skv_layer *ly = &m->layers[layer];
    float *scratch = malloc(sizeof(float) * (size_t)m->max_weight_elems);
    if (!scratch) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    const int64_t KD = (int64_t)in->n_kv_head * in->head_dim;
    void (*mm)(const skv_weight *, const float *, float *, int64_t, float *, int64_t, int) = m->f32_prefill ? skv_matmul_f32 : skv_matmul;
    mm(&ly->wk, h, k, n, scratch, m->max_weight_elems, m->n_threads);
    mm(&ly->wv, h, v, n, scratch, m->max_weight_elems, m->n_threads);
    for (int64_t i = 0; i < n; i++)
        for (int64_t r = 0; r < KD; r++) {
            if (ly->bk) k[i * KD + r] += ly->bk[r];
            if (ly->bv) v[i * KD + r] += ly->bv[r];
        }
    free(scratch);
    return SKV_OK;
}

skv_status skv_model_rope_rows(skv_model *m, float *k, int32_t n, int inverse) {
    if (m->cfg.info.head_dim / 2 > 512) return skv_set_error(SKV_ERR_UNSUPPORTED, "rope_rows: head_dim %d", m->cfg.info.head_dim);
    skv_status st = skv_model_rope(m, n);
    if (st) return st;
    rope_rows(m, k, n, inverse ? -1.0f : 1.0f);
    return SKV_OK;
}
