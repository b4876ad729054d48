/*
 * scd.c — SCD's maps: loading and checking the maps file, encoding a layer's rows to codes,
 * decoding codes to the consumer's rows, and rebuilding a consumer's cache from per-layer codes
 * or rows (docs/techniques.md section 5).
 */
#include "method/scd.h"
#include "context/context.h"

#include <cblas.h>
#include <cjson/cJSON.h>
#include <lzma.h>
#include <math.h>

void skv_scd_maps_free(skv_scd_maps *m) {
    if (!m) return;
    if (m->dev && m->dev_free) m->dev_free(m->dev);
    skv_st_close(m->st);
    free(m->buf);
    free(m->k), free(m->v), free(m->h);
    free(m->r_k), free(m->r_v), free(m->r_h), free(m->patch_rank);
    free(m);
}

/* The f32 tensor "name" of exactly shape (a) or (a, b) (b = 0: one dimension), or NULL with
 * the error set. */
static const float *tensor(const skv_scd_maps *m, const char *path, const char *name, int64_t a, int64_t b,
                           skv_status *st) {
    if (*st) return NULL;
    const skv_st_tensor *t = skv_st_find(m->st, name);
    if (!t) {
        *st = skv_set_error(SKV_ERR_FORMAT, "%s: tensor %s is missing", path, name);
        return NULL;
    }
    const int nd = b ? 2 : 1;
    if (t->dtype != SKV_DTYPE_F32 || t->n_dims != nd || t->shape[0] != a || (b && t->shape[1] != b)) {
        *st = skv_set_error(SKV_ERR_SHAPE, "%s: tensor %s is %s with %d dims [%lld, %lld], expected F32 [%lld%s%lld]",
                            path, name, skv_dtype_name(t->dtype), t->n_dims, (long long)t->shape[0],
                            (long long)(t->n_dims > 1 ? t->shape[1] : 0), (long long)a, b ? ", " : "", (long long)b);
        return NULL;
    }
    return t->data;
}

static int json_int(const cJSON *o, const char *k, int32_t lo, int32_t hi, int32_t *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsNumber(j) || j->valuedouble != (double)(int64_t)j->valuedouble || j->valuedouble < lo ||
        j->valuedouble > hi)
        return 0;
    *out = (int32_t)j->valuedouble;
    return 1;
}

/* The description: shape, ranks, patch order. */
static skv_status parse_desc(skv_scd_maps *m, const char *path, const cJSON *d) {
    int32_t ver = 0;
    if (!json_int(d, "version", 1, 1, &ver)) return skv_set_error(SKV_ERR_FORMAT, "%s: scd.version is not 1", path);
    if (!json_int(d, "n_layer", 1, 4096, &m->n_layer) || !json_int(d, "kv_dim", 1, 1 << 16, &m->kv_dim) ||
        !json_int(d, "dim", 1, 1 << 17, &m->dim) || !json_int(d, "hidden", 0, 1 << 17, &m->hidden) ||
        !json_int(d, "patch_k", 0, m->n_layer, &m->patch_k))
        return skv_set_error(SKV_ERR_FORMAT, "%s: scd: n_layer, kv_dim, dim, hidden or patch_k missing or out of range", path);
    const cJSON *pr = cJSON_GetObjectItemCaseSensitive(d, "producer"), *co = cJSON_GetObjectItemCaseSensitive(d, "consumer");
    snprintf(m->producer, sizeof m->producer, "%s", cJSON_IsString(pr) ? pr->valuestring : "");
    snprintf(m->consumer, sizeof m->consumer, "%s", cJSON_IsString(co) ? co->valuestring : "");
    m->ranked = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(d, "patch_ranked"));
    const int32_t L = m->n_layer;
    m->r_k = calloc((size_t)L, 4), m->r_v = calloc((size_t)L, 4), m->r_h = calloc((size_t)L, 4);
    m->patch_rank = calloc((size_t)L, 4);
    m->k = calloc((size_t)L, sizeof(skv_scd_map)), m->v = calloc((size_t)L, sizeof(skv_scd_map));
    m->h = calloc((size_t)L, sizeof(skv_scd_map));
    if (!m->r_k || !m->r_v || !m->r_h || !m->patch_rank || !m->k || !m->v || !m->h)
        return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    const cJSON *lay = cJSON_GetObjectItemCaseSensitive(d, "layers"), *rank = cJSON_GetObjectItemCaseSensitive(d, "patch_rank");
    if (!cJSON_IsArray(lay) || cJSON_GetArraySize(lay) != L)
        return skv_set_error(SKV_ERR_FORMAT, "%s: scd.layers is not an array of %d entries", path, L);
    if (!cJSON_IsArray(rank) || cJSON_GetArraySize(rank) != L)
        return skv_set_error(SKV_ERR_FORMAT, "%s: scd.patch_rank is not an array of %d layers", path, L);
    uint8_t *seen = calloc((size_t)L, 1);
    if (!seen) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    for (int32_t l = 0; l < L; l++) {
        const cJSON *e = cJSON_GetArrayItem(lay, l), *r = cJSON_GetArrayItem(rank, l);
        if (!json_int(e, "r_k", 1, m->kv_dim * 2, &m->r_k[l]) || !json_int(e, "r_v", 1, m->kv_dim * 2, &m->r_v[l]) ||
            !json_int(e, "r_h", 1, m->dim * 2, &m->r_h[l])) {
            free(seen);
            return skv_set_error(SKV_ERR_FORMAT, "%s: scd.layers[%d]: r_k, r_v or r_h missing or out of range", path, l);
        }
        if (!cJSON_IsNumber(r) || r->valuedouble < 0 || r->valuedouble >= L || r->valuedouble != (int)r->valuedouble ||
            seen[(int)r->valuedouble]++) {
            free(seen);
            return skv_set_error(SKV_ERR_FORMAT, "%s: scd.patch_rank[%d] is not a new layer index below %d", path, l, L);
        }
        m->patch_rank[l] = (int32_t)r->valuedouble;
    }
    free(seen);
    return SKV_OK;
}

static skv_status bind(skv_scd_maps *m, const char *path) {
    skv_status st = SKV_OK;
    char nm[64];
    const int64_t KD = m->kv_dim, D = m->dim, HID = m->hidden;
    for (int32_t l = 0; l < m->n_layer; l++) {
        for (int p = 0; p < 2; p++) {
            skv_scd_map *x = p ? &m->v[l] : &m->k[l];
            const char *pn = p ? "v" : "k";
            x->r = p ? m->r_v[l] : m->r_k[l];
            snprintf(nm, sizeof nm, "%s.mua.%d", pn, l), x->mua = tensor(m, path, nm, KD, 0, &st);
            snprintf(nm, sizeof nm, "%s.enc.%d", pn, l), x->enc = tensor(m, path, nm, KD, x->r, &st);
            snprintf(nm, sizeof nm, "%s.dec.%d", pn, l), x->dec = tensor(m, path, nm, x->r, KD, &st);
            snprintf(nm, sizeof nm, "%s.mub.%d", pn, l), x->mub = tensor(m, path, nm, KD, 0, &st);
        }
        skv_scd_map *h = &m->h[l];
        h->r = m->r_h[l];
        snprintf(nm, sizeof nm, "h.mua.%d", l), h->mua = tensor(m, path, nm, D, 0, &st);
        snprintf(nm, sizeof nm, "h.enc.%d", l), h->enc = tensor(m, path, nm, D, h->r, &st);
        snprintf(nm, sizeof nm, "h.skip.%d", l), h->skip = tensor(m, path, nm, h->r, D, &st);
        snprintf(nm, sizeof nm, "h.b2.%d", l), h->b2 = tensor(m, path, nm, D, 0, &st);
        if (HID) {
            snprintf(nm, sizeof nm, "h.w1.%d", l), h->w1 = tensor(m, path, nm, h->r, HID, &st);
            snprintf(nm, sizeof nm, "h.b1.%d", l), h->b1 = tensor(m, path, nm, HID, 0, &st);
            snprintf(nm, sizeof nm, "h.w2.%d", l), h->w2 = tensor(m, path, nm, HID, D, &st);
        }
    }
    return st;
}

skv_status skv_scd_maps_load(const char *path, skv_scd_maps **out) {
    *out = NULL;
    skv_scd_maps *m = calloc(1, sizeof *m);
    if (!m) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    size_t len;
    skv_status st = skv_read_file(path, &m->buf, &len);
    if (!st) m->crc = lzma_crc64((const uint8_t *)m->buf, len, 0);
    if (!st) st = skv_st_parse_buffer(m->buf, len, path, &m->st);
    if (!st) st = skv_st_check_finite(m->st);
    cJSON *hdr = NULL, *desc = NULL;
    if (!st) { /* the header was validated by the parser: 8-byte length, JSON */
        uint64_t hl;
        memcpy(&hl, m->buf, 8);
        hdr = cJSON_ParseWithLength(m->buf + 8, (size_t)hl);
        const cJSON *meta = cJSON_GetObjectItemCaseSensitive(hdr, "__metadata__");
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(meta, "scd");
        if (!cJSON_IsString(s)) st = skv_set_error(SKV_ERR_FORMAT, "%s: no __metadata__.scd description (not an SCD maps file)", path);
        else if (!(desc = cJSON_Parse(s->valuestring)))
            st = skv_set_error(SKV_ERR_FORMAT, "%s: __metadata__.scd is not valid JSON", path);
    }
    if (!st) st = parse_desc(m, path, desc);
    if (!st) st = bind(m, path);
    cJSON_Delete(hdr), cJSON_Delete(desc);
    if (st) {
        skv_scd_maps_free(m);
        return st;
    }
    *out = m;
    return SKV_OK;
}

void skv_scd_maps_shape(const skv_scd_maps *m, skv_scd_shape *s) {
    *s = (skv_scd_shape){.n_layer = m->n_layer, .kv_dim = m->kv_dim, .dim = m->dim, .hidden = m->hidden,
                         .r_k = m->r_k, .r_v = m->r_v, .r_h = m->r_h, .patch_rank = m->patch_rank,
                         .patch_k = m->patch_k, .ranked = m->ranked, .producer = m->producer,
                         .consumer = m->consumer};
}

skv_status skv_scd_maps_check(const skv_scd_maps *m, const skv_model *model) {
    const skv_model_info *in = skv_model_get_info(model);
    if (m->n_layer != in->n_layer || m->kv_dim != in->n_kv_head * in->head_dim || m->dim != in->dim)
        return skv_set_error(SKV_ERR_SHAPE, "SCD maps for %d layers, kv_dim %d, dim %d; the model has %d, %d, %d",
                             m->n_layer, m->kv_dim, m->dim, in->n_layer, in->n_kv_head * in->head_dim, in->dim);
    if (skv_model_n_cache_layers(model) != in->n_layer)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "SCD: a model whose layers share KV (LCKV) is not supported");
    return SKV_OK;
}

static skv_status part_map(const skv_scd_maps *m, int32_t layer, int part, const skv_scd_map **x) {
    if (layer < 0 || layer >= m->n_layer) return skv_set_error(SKV_ERR_ARG, "SCD: layer %d of %d", layer, m->n_layer);
    if (part != SKV_SCD_K && part != SKV_SCD_V && part != SKV_SCD_H) return skv_set_error(SKV_ERR_ARG, "SCD: part %d", part);
    *x = part == SKV_SCD_K ? &m->k[layer] : part == SKV_SCD_V ? &m->v[layer] : &m->h[layer];
    return SKV_OK;
}

/* y(n, c) = x(n, k) W(k, c) + bias (row-major; bias may be NULL) */
static void gemm_bias(const float *x, const float *w, const float *bias, float *y, int32_t n, int32_t k, int32_t c) {
    for (int64_t i = 0; i < n; i++)
        if (bias) memcpy(y + i * c, bias, sizeof(float) * (size_t)c);
        else memset(y + i * c, 0, sizeof(float) * (size_t)c);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, c, k, 1.0f, x, k, w, c, 1.0f, y, c);
}

skv_status skv_scd_encode(const skv_scd_maps *m, int32_t layer, int part, const float *x, int32_t n, float *z) {
    const skv_scd_map *p;
    skv_status st = part_map(m, layer, part, &p);
    if (st || n <= 0) return st;
    const int32_t in = part == SKV_SCD_H ? m->dim : m->kv_dim;
    float *xc = malloc(sizeof(float) * (size_t)n * (size_t)in);
    if (!xc) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < n; i++)
        for (int32_t j = 0; j < in; j++) xc[i * in + j] = x[i * in + j] - p->mua[j];
    gemm_bias(xc, p->enc, NULL, z, n, in, p->r);
    free(xc);
    return SKV_OK;
}

skv_status skv_scd_decode(const skv_scd_maps *m, int32_t layer, int part, const float *z, int32_t n, float *out) {
    const skv_scd_map *p;
    skv_status st = part_map(m, layer, part, &p);
    if (st || n <= 0) return st;
    if (part != SKV_SCD_H) {
        gemm_bias(z, p->dec, p->mub, out, n, p->r, m->kv_dim);
        return SKV_OK;
    }
    gemm_bias(z, p->skip, p->b2, out, n, p->r, m->dim);
    if (!p->w1) return SKV_OK;
    float *a = malloc(sizeof(float) * (size_t)n * (size_t)m->hidden);
    if (!a) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    gemm_bias(z, p->w1, p->b1, a, n, p->r, m->hidden);
    for (int64_t i = 0; i < (int64_t)n * m->hidden; i++) a[i] = a[i] / (1.0f + expf(-a[i]));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, m->dim, m->hidden, 1.0f, a, m->hidden, p->w2, m->dim,
                1.0f, out, m->dim);
    free(a);
    return SKV_OK;
}

skv_status skv_scd_rebuild(const skv_scd_maps *m, skv_context *c, int32_t n, const skv_scd_layer_src *src) {
    skv_model *model = skv_context_model(c);
    const skv_model_info *in = skv_model_get_info(model);
    const int32_t L = in->n_layer, KD = in->n_kv_head * in->head_dim;
    skv_status st = m ? skv_scd_maps_check(m, model) : SKV_OK;
    if (st) return st;
    if (n <= 0) return skv_set_error(SKV_ERR_ARG, "SCD rebuild: %d tokens", n);
    for (int32_t l = 0; l < L; l++) {
        const skv_scd_layer_src *s = &src[l];
        const int codes = s->src == SKV_SCD_SRC_CODES;
        if (s->src != SKV_SCD_SRC_CODES && s->src != SKV_SCD_SRC_ROWS)
            return skv_set_error(SKV_ERR_ARG, "SCD rebuild: layer %d: unknown source %d", l, s->src);
        if (codes && !m) return skv_set_error(SKV_ERR_ARG, "SCD rebuild: layer %d has codes but no maps", l);
        if (codes ? (s->patch ? !s->zh : (!s->zk || !s->zv)) : (!s->k || !s->v))
            return skv_set_error(SKV_ERR_ARG, "SCD rebuild: layer %d lacks its %s", l, codes ? "codes" : "rows");
    }
    float *K = malloc(sizeof(float) * (size_t)L * (size_t)n * (size_t)KD);
    float *V = malloc(sizeof(float) * (size_t)L * (size_t)n * (size_t)KD);
    float *H = malloc(sizeof(float) * (size_t)n * (size_t)in->dim);
    if (!K || !V || !H) st = skv_set_error(SKV_ERR_NOMEM, "out of memory");
    for (int32_t l = 0; l < L && !st; l++) {
        const skv_scd_layer_src *s = &src[l];
        float *kl = K + (int64_t)l * n * KD, *vl = V + (int64_t)l * n * KD;
        if (s->src == SKV_SCD_SRC_ROWS) {
            memcpy(kl, s->k, sizeof(float) * (size_t)n * (size_t)KD);
            memcpy(vl, s->v, sizeof(float) * (size_t)n * (size_t)KD);
        } else if (s->patch) {
            if (!(st = skv_scd_decode(m, l, SKV_SCD_H, s->zh, n, H))) st = skv_model_project_kv(model, l, H, n, kl, vl);
        } else if (!(st = skv_scd_decode(m, l, SKV_SCD_K, s->zk, n, kl))) {
            st = skv_scd_decode(m, l, SKV_SCD_V, s->zv, n, vl);
        }
    }
    if (!st) st = skv_context_put_kv(c, n, K, V, 1);
    free(K), free(V), free(H);
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* Random maps; the device rebuild                                                           */
/* ---------------------------------------------------------------------------------------- */

static uint64_t rnd_next(uint64_t *s) {
    *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
    return *s;
}

/* n uniform values of variance 1/fan_in (0 fan_in: zeros) */
static float *rnd_fill(float **cur, int64_t n, int64_t fan_in, uint64_t *s) {
    float *p = *cur;
    *cur += n;
    const float a = fan_in > 0 ? sqrtf(3.0f / (float)fan_in) : 0.0f;
    for (int64_t i = 0; i < n; i++) p[i] = a * ((float)(rnd_next(s) >> 40) / (float)(1 << 24) * 2.0f - 1.0f);
    return p;
}

skv_status skv_scd_maps_random(int32_t L, int32_t KD, int32_t D, int32_t HID, int32_t rk, int32_t rv, int32_t rh,
                               int32_t patch_k, uint64_t seed, skv_scd_maps **out) {
    *out = NULL;
    if (L < 1 || L > 4096 || KD < 1 || D < 1 || HID < 0 || rk < 1 || rv < 1 || rh < 1 || rk > 2 * KD || rv > 2 * KD ||
        rh > 2 * D || patch_k < 0 || patch_k > L)
        return skv_set_error(SKV_ERR_ARG, "SCD random maps: bad shape (%d layers, kv_dim %d, dim %d, hidden %d, ranks %d/%d/%d, k %d)",
                             L, KD, D, HID, rk, rv, rh, patch_k);
    skv_scd_maps *m = calloc(1, sizeof *m);
    if (!m) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    m->n_layer = L, m->kv_dim = KD, m->dim = D, m->hidden = HID, m->patch_k = patch_k, m->ranked = 1;
    snprintf(m->producer, sizeof m->producer, "random");
    snprintf(m->consumer, sizeof m->consumer, "random");
    const int64_t per_kv = 2 * (int64_t)KD + 2 * (int64_t)KD * rk + 2 * (int64_t)KD + 2 * (int64_t)KD * rv;
    const int64_t per_h = 2 * (int64_t)D + 2 * (int64_t)D * rh + (HID ? (int64_t)rh * HID + HID + (int64_t)HID * D : 0);
    m->buf = malloc(sizeof(float) * (size_t)(L * (per_kv + per_h)));
    m->r_k = calloc((size_t)L, 4), m->r_v = calloc((size_t)L, 4), m->r_h = calloc((size_t)L, 4);
    m->patch_rank = calloc((size_t)L, 4);
    m->k = calloc((size_t)L, sizeof(skv_scd_map)), m->v = calloc((size_t)L, sizeof(skv_scd_map));
    m->h = calloc((size_t)L, sizeof(skv_scd_map));
    if (!m->buf || !m->r_k || !m->r_v || !m->r_h || !m->patch_rank || !m->k || !m->v || !m->h) {
        skv_scd_maps_free(m);
        return skv_set_error(SKV_ERR_NOMEM, "out of memory for random SCD maps");
    }
    uint64_t s = seed * 0x9E3779B97F4A7C15ULL + 1;
    float *cur = (float *)m->buf;
    for (int32_t l = 0; l < L; l++) {
        m->r_k[l] = rk, m->r_v[l] = rv, m->r_h[l] = rh, m->patch_rank[l] = L - 1 - l;
        for (int p = 0; p < 2; p++) {
            skv_scd_map *x = p ? &m->v[l] : &m->k[l];
            x->r = p ? rv : rk;
            x->mua = rnd_fill(&cur, KD, 0, &s);
            x->enc = rnd_fill(&cur, (int64_t)KD * x->r, KD, &s);
            x->dec = rnd_fill(&cur, (int64_t)x->r * KD, x->r, &s);
            x->mub = rnd_fill(&cur, KD, 0, &s);
        }
        skv_scd_map *h = &m->h[l];
        h->r = rh;
        h->mua = rnd_fill(&cur, D, 0, &s);
        h->enc = rnd_fill(&cur, (int64_t)D * rh, D, &s);
        h->skip = rnd_fill(&cur, (int64_t)rh * D, rh, &s);
        h->b2 = rnd_fill(&cur, D, 0, &s);
        if (HID) {
            h->w1 = rnd_fill(&cur, (int64_t)rh * HID, rh, &s);
            h->b1 = rnd_fill(&cur, HID, 0, &s);
            h->w2 = rnd_fill(&cur, (int64_t)HID * D, HID, &s);
        }
    }
    m->crc = seed ^ 0x5CD0000000000000ULL;
    *out = m;
    return SKV_OK;
}

static skv_status dev_upload(skv_scd_maps *m, const skv_context *c) {
    const int32_t L = m->n_layer;
    skv_codes_part *k = calloc((size_t)L, sizeof *k), *v = calloc((size_t)L, sizeof *v), *h = calloc((size_t)L, sizeof *h);
    skv_status st = (!k || !v || !h) ? skv_set_error(SKV_ERR_NOMEM, "out of memory") : SKV_OK;
    for (int32_t l = 0; l < L && !st; l++) {
        k[l] = (skv_codes_part){.r = m->k[l].r, .dec = m->k[l].dec, .mub = m->k[l].mub};
        v[l] = (skv_codes_part){.r = m->v[l].r, .dec = m->v[l].dec, .mub = m->v[l].mub};
        h[l] = (skv_codes_part){.r = m->h[l].r, .skip = m->h[l].skip, .b2 = m->h[l].b2, .w1 = m->h[l].w1,
                                .b1 = m->h[l].b1, .w2 = m->h[l].w2};
    }
    const skv_codes_desc d = {.n_layer = L, .kv_dim = m->kv_dim, .dim = m->dim, .hidden = m->hidden, .k = k, .v = v, .h = h};
    if (!st) st = skv_context_codes_upload(c, &d, &m->dev, &m->dev_free);
    free(k), free(v), free(h);
    return st;
}

skv_status skv_scd_dev_layer(const skv_scd_maps *mc, skv_context *c, int32_t layer, int part, const void *z, int z_bf16,
                             int32_t n) {
    skv_scd_maps *m = (skv_scd_maps *)mc; /* the device copy is a cache of the maps */
    skv_status st = skv_scd_maps_check(m, skv_context_model(c));
    if (st) return st;
    if (part != SKV_SCD_K && part != SKV_SCD_V && part != SKV_SCD_H) return skv_set_error(SKV_ERR_ARG, "SCD: part %d", part);
    if (!m->dev && (st = dev_upload(m, c))) return st;
    const int cp = part == SKV_SCD_K ? SKV_CODES_K : part == SKV_SCD_V ? SKV_CODES_V : SKV_CODES_H;
    return skv_context_codes_layer(c, m->dev, layer, cp, z, z_bf16, n);
}
