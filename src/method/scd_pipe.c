/*
 * scd_pipe.c — an SCD request as frames: the producer's side and the consumer's checked
 * rebuild (see scd_pipe.h).
 */
#include "method/scd_pipe.h"
#include "method/scd.h"
#include "context/context.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <pthread.h>

static const char *g_methods[SKV_SCD_METHODS] = {"oracle", "raw", "kivi4", "recompute", "reuse", "scd"};

const char *skv_scd_method_name(int m) { return m >= 0 && m < SKV_SCD_METHODS ? g_methods[m] : "?"; }
int skv_scd_method_parse(const char *name) {
    for (int m = 0; m < SKV_SCD_METHODS; m++)
        if (name && !strcmp(name, g_methods[m])) return m;
    return -1;
}

static int uses_maps(int m) { return m == SKV_SCD_REUSE || m == SKV_SCD_FULL; }

/* Bit p of what LAYER frames layer l carries under req. */
static unsigned expected_parts(const skv_scd_req *r, int32_t l) {
    switch (r->method) {
    case SKV_SCD_RAW:
    case SKV_SCD_KIVI4: return 1u << SKV_PART_K | 1u << SKV_PART_V;
    case SKV_SCD_RECOMPUTE:
        if (l == r->rc_start && r->rc_k > 0) return 1u << SKV_PART_RESID;
        if (l > r->rc_start && l < r->rc_start + r->rc_k) return 0;
        return 1u << SKV_PART_K | 1u << SKV_PART_V;
    case SKV_SCD_REUSE: return 1u << SKV_PART_ZK | 1u << SKV_PART_ZV;
    case SKV_SCD_FULL: return r->patch[l] ? 1u << SKV_PART_ZH : (1u << SKV_PART_ZK | 1u << SKV_PART_ZV);
    default: return 0;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Producer                                                                                  */
/* ---------------------------------------------------------------------------------------- */

typedef struct prod {
    skv_scd_emit emit;
    void *arg;
    skv_scd_prod_stats *st;
} prod;

static skv_status send_frame(prod *p, skv_frame f, const void *payload) {
    uint8_t *b;
    size_t n;
    skv_status st = skv_frame_build(&f, payload, &b, &n);
    if (st) return st;
    st = p->emit(p->arg, b, n);
    free(b);
    p->st->bytes += n, p->st->frames++;
    if (f.type == SKV_FT_LAYER) p->st->layer_bytes += f.len;
    return st;
}

/* A LAYER frame of floats x (rows, cols) in encoding enc. */
static skv_status send_rows(prod *p, int32_t layer, int part, int enc, uint32_t group, const float *x, uint32_t rows,
                            uint32_t cols) {
    skv_frame f = {.type = SKV_FT_LAYER, .enc = (uint8_t)enc, .layer = layer, .part = (uint16_t)part,
                   .group = (uint16_t)group, .rows = rows, .cols = cols};
    skv_status st = skv_wire_payload_bytes(enc, part, rows, cols, group, &f.len);
    if (st) return st;
    uint8_t *buf = malloc(f.len ? f.len : 1);
    if (!buf) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    if (!(st = skv_wire_pack(enc, part, rows, cols, group, x, buf))) st = send_frame(p, f, buf);
    free(buf);
    return st;
}

static skv_status send_json(prod *p, int type, const char *json) {
    const skv_frame f = {.type = (uint8_t)type, .enc = SKV_ENC_BYTES, .layer = -1, .rows = (uint32_t)strlen(json),
                         .cols = 1, .len = strlen(json)};
    return send_frame(p, f, json);
}

static skv_status hello_json(const skv_model *m, const skv_scd_maps *maps, const skv_scd_req *r, int32_t n_ids,
                             char **out) {
    const skv_model_info *in = skv_model_get_info(m);
    cJSON *o = cJSON_CreateObject(), *pa = cJSON_CreateArray();
    cJSON_AddStringToObject(o, "method", skv_scd_method_name(r->method));
    cJSON_AddNumberToObject(o, "n_ids", n_ids);
    cJSON_AddNumberToObject(o, "n_layer", in->n_layer);
    cJSON_AddNumberToObject(o, "kv_dim", in->n_kv_head * in->head_dim);
    cJSON_AddNumberToObject(o, "head_dim", in->head_dim);
    cJSON_AddNumberToObject(o, "dim", in->dim);
    cJSON_AddStringToObject(o, "code_enc", skv_wire_enc_name(r->code_enc));
    for (int32_t l = 0; l < in->n_layer; l++)
        if (r->method == SKV_SCD_FULL && r->patch[l]) cJSON_AddItemToArray(pa, cJSON_CreateNumber(l));
    cJSON_AddItemToObject(o, "patch", pa);
    cJSON_AddNumberToObject(o, "rc_start", r->rc_start);
    cJSON_AddNumberToObject(o, "rc_k", r->rc_k);
    char crc[24];
    snprintf(crc, sizeof crc, "%016llx", maps ? (unsigned long long)maps->crc : 0ULL);
    cJSON_AddStringToObject(o, "maps", crc);
    cJSON_AddNumberToObject(o, "t_request", r->t_request);
    *out = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return *out ? SKV_OK : skv_set_error(SKV_ERR_NOMEM, "out of memory");
}

/* A request's head: the HELLO frame (model, maps, method) and the prompt's ids. */
static skv_status send_head(prod *p, const skv_model *m, const skv_scd_maps *maps, const skv_scd_req *req,
                            const int32_t *ids, int32_t n_ids) {
    char *hello;
    skv_status st = hello_json(m, maps, req, n_ids, &hello);
    if (st) return st;
    st = send_json(p, SKV_FT_HELLO, hello);
    free(hello);
    if (st) return st;
    const skv_frame f = {.type = SKV_FT_IDS, .enc = SKV_ENC_I32, .layer = -1, .rows = (uint32_t)n_ids, .cols = 1,
                         .len = 4 * (uint64_t)n_ids};
    return send_frame(p, f, ids);
}

/* The largest code rank of any layer (K, V or patch), at least lo. */
static int32_t max_rank(const skv_scd_maps *maps, int32_t L, int32_t lo) {
    for (int32_t l = 0; maps && l < L; l++) lo = SKV_MAX(lo, SKV_MAX(maps->r_k[l], SKV_MAX(maps->r_v[l], maps->r_h[l])));
    return lo;
}

static skv_status check_req(const skv_model *m, const skv_scd_maps *maps, const skv_scd_req *r) {
    const skv_model_info *in = skv_model_get_info(m);
    if (r->method < 0 || r->method >= SKV_SCD_METHODS) return skv_set_error(SKV_ERR_ARG, "SCD: unknown method %d", r->method);
    if (in->n_layer > SKV_SCD_MAX_LAYERS) return skv_set_error(SKV_ERR_UNSUPPORTED, "SCD: %d layers (at most %d)", in->n_layer, SKV_SCD_MAX_LAYERS);
    if (uses_maps(r->method) && !maps) return skv_set_error(SKV_ERR_ARG, "SCD: method %s needs maps (--maps)", skv_scd_method_name(r->method));
    if (r->code_enc != SKV_ENC_BF16 && r->code_enc != SKV_ENC_I8ROW && r->code_enc != SKV_ENC_F32)
        return skv_set_error(SKV_ERR_ARG, "SCD: codes travel as bf16, int8 or f32, not %s", skv_wire_enc_name(r->code_enc));
    if (r->method == SKV_SCD_RECOMPUTE && (r->rc_k < 0 || r->rc_start < 0 || r->rc_start + r->rc_k > in->n_layer))
        return skv_set_error(SKV_ERR_ARG, "SCD: recompute span %d + %d layers of %d", r->rc_start, r->rc_k, in->n_layer);
    if (maps && uses_maps(r->method)) return skv_scd_maps_check(maps, m);
    return SKV_OK;
}

/* Layer l's LAYER frames under req, from a producer context holding n tokens (K/V read from
 * its cache; H, R: its taps), scratch K, V (n, kv_dim) and Z (n, largest rank). */
static skv_status layer_frames(prod *p, const skv_context *c, int32_t n, const float *H, const float *R,
                               const skv_scd_maps *maps, const skv_scd_req *req, int32_t l, float *K, float *V, float *Z,
                               int32_t *n_frames) {
    const skv_model_info *in = skv_model_get_info(skv_context_model(c));
    const int32_t D = in->dim, KD = in->n_kv_head * in->head_dim;
    const uint32_t un = (uint32_t)n;
    skv_status st = SKV_OK;
    const unsigned parts = expected_parts(req, l);
    if (parts & (1u << SKV_PART_RESID)) {
        st = send_rows(p, l, SKV_PART_RESID, SKV_ENC_BF16, 0, R + (int64_t)l * n * D, un, (uint32_t)D);
        (*n_frames)++;
    }
    if (parts & (1u << SKV_PART_ZH)) {
        if (!(st = skv_scd_encode(maps, l, SKV_SCD_H, H + (int64_t)l * n * D, n, Z)))
            st = send_rows(p, l, SKV_PART_ZH, req->code_enc, 0, Z, un, (uint32_t)maps->r_h[l]);
        (*n_frames)++;
    }
    if (parts & (1u << SKV_PART_K)) { /* rows as cached: K after RoPE */
        const int enc = req->method == SKV_SCD_KIVI4 ? SKV_ENC_KIVI4 : SKV_ENC_BF16;
        const uint32_t g = enc == SKV_ENC_KIVI4 ? (uint32_t)in->head_dim : 0;
        if (!(st = skv_context_get_kv_rows(c, l, n, 0, K, V)) &&
            !(st = send_rows(p, l, SKV_PART_K, enc, g, K, un, (uint32_t)KD)))
            st = send_rows(p, l, SKV_PART_V, enc, g, V, un, (uint32_t)KD);
        *n_frames += 2;
    }
    if (parts & (1u << SKV_PART_ZK)) {
        if (!(st = skv_context_get_kv_rows(c, l, n, 1, K, V)) && !(st = skv_scd_encode(maps, l, SKV_SCD_K, K, n, Z)) &&
            !(st = send_rows(p, l, SKV_PART_ZK, req->code_enc, 0, Z, un, (uint32_t)maps->r_k[l])) &&
            !(st = skv_scd_encode(maps, l, SKV_SCD_V, V, n, Z)))
            st = send_rows(p, l, SKV_PART_ZV, req->code_enc, 0, Z, un, (uint32_t)maps->r_v[l]);
        *n_frames += 2;
    }
    return st;
}

skv_status skv_scd_produce_ctx(const skv_context *c, const float *H, const float *R, const skv_scd_maps *maps,
                               const int32_t *ids, int32_t n_ids, const skv_scd_req *req, skv_scd_emit emit, void *arg,
                               skv_scd_prod_stats *stats) {
    const double t_prefill = stats->t_prefill;
    memset(stats, 0, sizeof *stats);
    stats->t_prefill = t_prefill;
    skv_model *m = skv_context_model(c);
    skv_status st = check_req(m, maps, req);
    if (st) return st;
    const skv_model_info *in = skv_model_get_info(m);
    const int32_t L = in->n_layer, KD = in->n_kv_head * in->head_dim, n = n_ids - 1;
    if (n < 1) return skv_set_error(SKV_ERR_ARG, "SCD: a prompt of %d tokens (at least 2)", n_ids);
    if (req->method != SKV_SCD_ORACLE && skv_context_n_past(c) != n)
        return skv_set_error(SKV_ERR_ARG, "SCD: the producer's context holds %d tokens, the request fills %d",
                             skv_context_n_past(c), n);
    if ((req->method == SKV_SCD_FULL && !H) || (req->method == SKV_SCD_RECOMPUTE && req->rc_k > 0 && !R))
        return skv_set_error(SKV_ERR_ARG, "SCD: method %s needs the producer's per-layer taps", skv_scd_method_name(req->method));
    prod p = {.emit = emit, .arg = arg, .st = stats};
    st = send_head(&p, m, maps, req, ids, n_ids);
    int32_t n_frames = 0;
    const double t0 = skv_time_now();
    if (!st && req->method != SKV_SCD_ORACLE) {
        float *K = malloc(sizeof(float) * (size_t)n * (size_t)KD), *V = malloc(sizeof(float) * (size_t)n * (size_t)KD);
        const int32_t rmax = max_rank(maps, L, 1);
        float *Z = malloc(sizeof(float) * (size_t)n * (size_t)rmax);
        if (!K || !V || !Z) st = skv_set_error(SKV_ERR_NOMEM, "out of memory");
        for (int32_t l = 0; l < L && !st; l++) st = layer_frames(&p, c, n, H, R, maps, req, l, K, V, Z, &n_frames);
        free(K), free(V), free(Z);
    }
    stats->t_encode = skv_time_now() - t0;
    if (!st) {
        char end[64];
        snprintf(end, sizeof end, "{\"layer_frames\":%d}", n_frames);
        st = send_json(&p, SKV_FT_END, end);
    }
    return st;
}

skv_status skv_scd_produce_synth(const skv_model *m, const skv_scd_maps *maps, const int32_t *ids, int32_t n_ids,
                                 const skv_scd_req *req, uint64_t seed, skv_scd_emit emit, void *arg,
                                 skv_scd_prod_stats *stats) {
    memset(stats, 0, sizeof *stats);
    skv_status st = check_req(m, maps, req);
    if (st) return st;
    if (req->method == SKV_SCD_RECOMPUTE || req->method == SKV_SCD_KIVI4)
        return skv_set_error(SKV_ERR_ARG, "SCD: synthetic frames for oracle, raw, reuse and scd only");
    const skv_model_info *in = skv_model_get_info(m);
    const int32_t L = in->n_layer, KD = in->n_kv_head * in->head_dim, n = n_ids - 1;
    if (n < 1) return skv_set_error(SKV_ERR_ARG, "SCD: a prompt of %d tokens (at least 2)", n_ids);
    prod p = {.emit = emit, .arg = arg, .st = stats};
    st = send_head(&p, m, maps, req, ids, n_ids);
    const int32_t wmax = max_rank(maps, L, KD);
    int32_t n_frames = 0;
    float *x = malloc(sizeof(float) * (size_t)n * (size_t)wmax);
    if (!st && !x) st = skv_set_error(SKV_ERR_NOMEM, "out of memory");
    uint64_t s = seed * 0x9E3779B97F4A7C15ULL + 3;
    for (int32_t l = 0; l < L && !st && req->method != SKV_SCD_ORACLE; l++) {
        const unsigned parts = expected_parts(req, l);
        for (int part = 0; part < 16 && !st; part++) {
            if (!(parts & (1u << part))) continue;
            const int32_t cols = part == SKV_PART_ZK ? maps->r_k[l] : part == SKV_PART_ZV ? maps->r_v[l]
                               : part == SKV_PART_ZH ? maps->r_h[l] : KD;
            for (int64_t i = 0; i < (int64_t)n * cols; i++) { /* uniform, variance 1 */
                s ^= s << 13, s ^= s >> 7, s ^= s << 17;
                x[i] = 1.7320508f * ((float)(s >> 40) / (float)(1 << 24) * 2.0f - 1.0f);
            }
            const int enc = part == SKV_PART_K || part == SKV_PART_V ? SKV_ENC_BF16 : req->code_enc;
            st = send_rows(&p, l, part, enc, 0, x, (uint32_t)n, (uint32_t)cols);
            n_frames++;
        }
    }
    free(x);
    if (!st) {
        char end[64];
        snprintf(end, sizeof end, "{\"layer_frames\":%d}", n_frames);
        st = send_json(&p, SKV_FT_END, end);
    }
    return st;
}

skv_status skv_scd_produce(skv_model *m, const skv_scd_maps *maps, const int32_t *ids, int32_t n_ids,
                           const skv_scd_req *req, skv_scd_emit emit, void *arg, skv_scd_prod_stats *stats) {
    memset(stats, 0, sizeof *stats);
    skv_status st = check_req(m, maps, req);
    if (st) return st;
    const skv_model_info *in = skv_model_get_info(m);
    const int32_t L = in->n_layer, D = in->dim, n = n_ids - 1;
    if (n < 1) return skv_set_error(SKV_ERR_ARG, "SCD: a prompt of %d tokens (at least 2)", n_ids);
    const int need_h = req->method == SKV_SCD_FULL, need_r = req->method == SKV_SCD_RECOMPUTE && req->rc_k > 0;
    float *H = need_h ? malloc(sizeof(float) * (size_t)L * (size_t)n * (size_t)D) : NULL;
    float *R = need_r ? malloc(sizeof(float) * (size_t)L * (size_t)n * (size_t)D) : NULL;
    if ((need_h && !H) || (need_r && !R)) st = skv_set_error(SKV_ERR_NOMEM, "out of memory");
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = n;
    skv_context *c = NULL;
    const double t0 = skv_time_now();
    if (!st) st = skv_context_init(m, cp, &c);
    if (!st && req->method != SKV_SCD_ORACLE) {
        const skv_batch b = {.ids = ids, .n = n, .attn_in = H, .resid_in = R};
        st = skv_decode_ex(c, &b);
    }
    stats->t_prefill = skv_time_now() - t0;
    if (!st) st = skv_scd_produce_ctx(c, H, R, maps, ids, n_ids, req, emit, arg, stats);
    skv_context_free(c);
    free(H), free(R);
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* Producer, streamed: frames leave while the prefill runs                                   */
/* ---------------------------------------------------------------------------------------- */

/* A sender thread: frames queued by the prefilling thread, emitted in order. */
typedef struct sender {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint8_t **f;
    size_t *len;
    int n, cap, next, closed;
    skv_status err;
    char msg[600];
    skv_scd_emit emit;
    void *arg;
} sender;

static void *sender_main(void *a) {
    sender *s = a;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (s->next == s->n && !s->closed) pthread_cond_wait(&s->cv, &s->mu);
        if (s->next == s->n) {
            pthread_mutex_unlock(&s->mu);
            return NULL;
        }
        uint8_t *f = s->f[s->next];
        const size_t len = s->len[s->next];
        s->f[s->next++] = NULL;
        const int failed = s->err != SKV_OK;
        pthread_mutex_unlock(&s->mu);
        const skv_status st = failed ? SKV_OK : s->emit(s->arg, f, len);
        free(f);
        if (st) {
            pthread_mutex_lock(&s->mu);
            s->err = st;
            snprintf(s->msg, sizeof s->msg, "%s", skv_last_error());
            pthread_mutex_unlock(&s->mu);
        }
    }
}

/* skv_scd_emit into the queue; the sender's first error, once it has one */
static skv_status queue_emit(void *arg, const uint8_t *frame, size_t len) {
    sender *s = arg;
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    memcpy(copy, frame, len);
    pthread_mutex_lock(&s->mu);
    skv_status st = s->err;
    if (!st && s->n == s->cap) {
        const int cap = s->cap ? 2 * s->cap : 64;
        uint8_t **f = realloc(s->f, sizeof(uint8_t *) * (size_t)cap);
        if (f) s->f = f;
        size_t *l = realloc(s->len, sizeof(size_t) * (size_t)cap);
        if (l) s->len = l;
        if (f && l) s->cap = cap;
        else st = SKV_ERR_NOMEM, snprintf(s->msg, sizeof s->msg, "out of memory");
    }
    if (!st) {
        s->f[s->n] = copy, s->len[s->n++] = len, copy = NULL;
        pthread_cond_signal(&s->cv);
    }
    char msg[600];
    snprintf(msg, sizeof msg, "%s", s->msg);
    pthread_mutex_unlock(&s->mu);
    free(copy);
    return st ? skv_set_error(st, "%s", msg) : SKV_OK;
}

typedef struct stream_state {
    prod *p;
    const skv_context *c;
    const float *H, *R;
    const skv_scd_maps *maps;
    const skv_scd_req *req;
    float *K, *V, *Z;
    int32_t n_frames;
    skv_status st;
    double t_encode;
} stream_state;

/* skv_batch.layer_done: layer l is cached for the whole prompt; its frames go out now */
static void stream_layer(void *arg, int32_t l, int32_t n_cached) {
    stream_state *s = arg;
    if (s->st) return;
    const double t0 = skv_time_now();
    s->st = layer_frames(s->p, s->c, n_cached, s->H, s->R, s->maps, s->req, l, s->K, s->V, s->Z, &s->n_frames);
    s->t_encode += skv_time_now() - t0;
}

skv_status skv_scd_produce_stream(skv_model *m, const skv_scd_maps *maps, const int32_t *ids, int32_t n_ids,
                                  const skv_scd_req *req, skv_scd_emit emit, void *arg, skv_scd_prod_stats *stats) {
    if (req->method == SKV_SCD_ORACLE) return skv_scd_produce(m, maps, ids, n_ids, req, emit, arg, stats);
    memset(stats, 0, sizeof *stats);
    skv_status st = check_req(m, maps, req);
    if (st) return st;
    const skv_model_info *in = skv_model_get_info(m);
    const int32_t L = in->n_layer, D = in->dim, KD = in->n_kv_head * in->head_dim, n = n_ids - 1;
    if (n < 1) return skv_set_error(SKV_ERR_ARG, "SCD: a prompt of %d tokens (at least 2)", n_ids);
    const int need_h = req->method == SKV_SCD_FULL, need_r = req->method == SKV_SCD_RECOMPUTE && req->rc_k > 0;
    const int32_t rmax = max_rank(maps, L, 1);
    float *H = need_h ? malloc(sizeof(float) * (size_t)L * (size_t)n * (size_t)D) : NULL;
    float *R = need_r ? malloc(sizeof(float) * (size_t)L * (size_t)n * (size_t)D) : NULL;
    float *K = malloc(sizeof(float) * (size_t)n * (size_t)KD), *V = malloc(sizeof(float) * (size_t)n * (size_t)KD);
    float *Z = malloc(sizeof(float) * (size_t)n * (size_t)rmax);
    if ((need_h && !H) || (need_r && !R) || !K || !V || !Z) st = skv_set_error(SKV_ERR_NOMEM, "out of memory");
    sender sd = {.emit = emit, .arg = arg};
    pthread_mutex_init(&sd.mu, NULL);
    pthread_cond_init(&sd.cv, NULL);
    pthread_t th;
    const int started = !st && pthread_create(&th, NULL, sender_main, &sd) == 0;
    if (!st && !started) st = skv_set_error(SKV_ERR_NOMEM, "SCD: cannot start the sender thread");
    prod p = {.emit = queue_emit, .arg = &sd, .st = stats};
    if (!st) st = send_head(&p, m, maps, req, ids, n_ids);
    /* the prefill in one chunk, each layer's frames queued as soon as it is cached */
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = n, cp.n_batch = n;
    skv_context *c = NULL;
    if (!st) st = skv_context_init(m, cp, &c);
    stream_state ss = {.p = &p, .c = c, .H = H, .R = R, .maps = maps, .req = req, .K = K, .V = V, .Z = Z};
    const double t0 = skv_time_now();
    if (!st) {
        const skv_batch b = {.ids = ids, .n = n, .attn_in = H, .resid_in = R, .layer_done = stream_layer, .layer_arg = &ss};
        st = skv_decode_ex(c, &b);
    }
    stats->t_prefill = skv_time_now() - t0 - ss.t_encode;
    stats->t_encode = ss.t_encode;
    if (!st) st = ss.st;
    if (!st) {
        char end[64];
        snprintf(end, sizeof end, "{\"layer_frames\":%d}", ss.n_frames);
        st = send_json(&p, SKV_FT_END, end);
    }
    if (started) {
        pthread_mutex_lock(&sd.mu);
        sd.closed = 1;
        pthread_cond_signal(&sd.cv);
        pthread_mutex_unlock(&sd.mu);
        pthread_join(th, NULL);
        if (!st && sd.err) st = skv_set_error(sd.err, "%s", sd.msg);
    }
    for (int i = sd.next; i < sd.n; i++) free(sd.f[i]);
    free(sd.f), free(sd.len);
    pthread_mutex_destroy(&sd.mu);
    pthread_cond_destroy(&sd.cv);
    skv_context_free(c);
    free(H), free(R), free(K), free(V), free(Z);
    return st;
}

/* ---------------------------------------------------------------------------------------- */
/* Consumer                                                                                  */
/* ---------------------------------------------------------------------------------------- */

struct skv_scd_consumer {
    skv_model *m;
    const skv_scd_maps *maps;
    skv_context_params cp;
    int state;                 /* 0 HELLO next, 1 IDS next, 2 LAYER or END, 3 done, -1 failed */
    skv_scd_req req;
    int32_t n_ids, n;
    int32_t *ids;
    float *K, *V;              /* (L, n, kv_dim) de-RoPE'd K, and V */
    unsigned *want, *got;      /* (L) part bits */
    int32_t n_frames;
    skv_context *ctx;
    int dev;                   /* codes decoded on the context's device as frames arrive */
    double t_build;
};

skv_status skv_scd_consumer_init(skv_model *cons, const skv_scd_maps *maps, skv_context_params cp,
                                 skv_scd_consumer **out) {
    *out = NULL;
    const skv_model_info *in = skv_model_get_info(cons);
    if (in->n_layer > SKV_SCD_MAX_LAYERS) return skv_set_error(SKV_ERR_UNSUPPORTED, "SCD: %d layers", in->n_layer);
    if (maps) {
        skv_status st = skv_scd_maps_check(maps, cons);
        if (st) return st;
    }
    skv_scd_consumer *c = calloc(1, sizeof *c);
    if (!c) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    c->m = cons, c->maps = maps, c->cp = cp;
    *out = c;
    return SKV_OK;
}

void skv_scd_consumer_free(skv_scd_consumer *c) {
    if (!c) return;
    free(c->ids), free(c->K), free(c->V), free(c->want), free(c->got);
    skv_context_free(c->ctx);
    free(c);
}

skv_context *skv_scd_consumer_context(skv_scd_consumer *c) { return c->state == 3 ? c->ctx : NULL; }
const skv_scd_req *skv_scd_consumer_req(const skv_scd_consumer *c) { return &c->req; }
const int32_t *skv_scd_consumer_ids(const skv_scd_consumer *c, int32_t *n_ids) {
    *n_ids = c->n_ids;
    return c->ids;
}
double skv_scd_consumer_build_seconds(const skv_scd_consumer *c) { return c->t_build; }

static int jint(const cJSON *o, const char *k, double lo, double hi, int32_t *out) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!cJSON_IsNumber(j) || !(j->valuedouble >= lo && j->valuedouble <= hi) || j->valuedouble != floor(j->valuedouble))
        return 0;
    *out = (int32_t)j->valuedouble;
    return 1;
}

static skv_status on_hello(skv_scd_consumer *c, const skv_frame *f) {
    const skv_model_info *in = skv_model_get_info(c->m);
    const int32_t L = in->n_layer, KD = in->n_kv_head * in->head_dim;
    const int32_t n_ctx = c->cp.n_ctx > 0 ? c->cp.n_ctx : in->n_ctx;
    cJSON *o = cJSON_ParseWithLength((const char *)f->payload, (size_t)f->len);
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return skv_set_error(SKV_ERR_FORMAT, "SCD: HELLO is not a JSON object");
    }
    skv_status st = SKV_OK;
    skv_scd_req *r = &c->req;
    const cJSON *me = cJSON_GetObjectItemCaseSensitive(o, "method"), *ce = cJSON_GetObjectItemCaseSensitive(o, "code_enc");
    const cJSON *pa = cJSON_GetObjectItemCaseSensitive(o, "patch"), *mp = cJSON_GetObjectItemCaseSensitive(o, "maps");
    const cJSON *tr = cJSON_GetObjectItemCaseSensitive(o, "t_request");
    int32_t nl = 0, kd = 0, hd = 0, dim = 0;
    r->method = cJSON_IsString(me) ? skv_scd_method_parse(me->valuestring) : -1;
    r->code_enc = cJSON_IsString(ce) ? skv_wire_enc_parse(ce->valuestring) : -1;
    r->t_request = cJSON_IsNumber(tr) ? tr->valuedouble : 0;
    if (r->method < 0) st = skv_set_error(SKV_ERR_FORMAT, "SCD: HELLO names no known method");
    else if (!jint(o, "n_ids", 2, n_ctx + 1, &c->n_ids))
        st = skv_set_error(SKV_ERR_RANGE, "SCD: HELLO: n_ids missing or not in 2..%d (the consumer's context + 1)", n_ctx + 1);
    else if (!jint(o, "n_layer", 1, 1e6, &nl) || !jint(o, "kv_dim", 1, 1e9, &kd) || !jint(o, "head_dim", 1, 1e9, &hd) ||
             !jint(o, "dim", 1, 1e9, &dim))
        st = skv_set_error(SKV_ERR_FORMAT, "SCD: HELLO: n_layer, kv_dim, head_dim or dim missing");
    else if (nl != L || kd != KD || hd != in->head_dim || dim != in->dim)
        st = skv_set_error(SKV_ERR_SHAPE, "SCD: the producer's model has %d layers, kv_dim %d, head_dim %d, dim %d; the "
                           "consumer's %d, %d, %d, %d (version or shape mismatch)", nl, kd, hd, dim, L, KD, in->head_dim, in->dim);
    else if (r->code_enc != SKV_ENC_BF16 && r->code_enc != SKV_ENC_I8ROW && r->code_enc != SKV_ENC_F32)
        st = skv_set_error(SKV_ERR_FORMAT, "SCD: HELLO: code encoding missing or not bf16/int8/f32");
    else if (!jint(o, "rc_start", 0, L, &r->rc_start) || !jint(o, "rc_k", 0, L - r->rc_start, &r->rc_k))
        st = skv_set_error(SKV_ERR_FORMAT, "SCD: HELLO: recompute span missing or outside the %d layers", L);
    else if (!cJSON_IsArray(pa) || !cJSON_IsString(mp))
        st = skv_set_error(SKV_ERR_FORMAT, "SCD: HELLO: patch list or maps checksum missing");
    memset(r->patch, 0, sizeof r->patch);
    for (const cJSON *e = st ? NULL : pa->child; e && !st; e = e->next) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble >= L || e->valuedouble != floor(e->valuedouble))
            st = skv_set_error(SKV_ERR_FORMAT, "SCD: HELLO: patch layer outside 0..%d", L - 1);
        else r->patch[(int)e->valuedouble] = 1;
    }
    if (!st && uses_maps(r->method)) {
        char crc[24];
        snprintf(crc, sizeof crc, "%016llx", c->maps ? (unsigned long long)c->maps->crc : 0ULL);
        if (!c->maps) st = skv_set_error(SKV_ERR_ARG, "SCD: method %s needs the maps (--maps)", skv_scd_method_name(r->method));
        else if (strcmp(crc, mp->valuestring))
            st = skv_set_error(SKV_ERR_SHAPE, "SCD: the producer's maps (CRC %s) are not the consumer's (%s)", mp->valuestring, crc);
    }
    cJSON_Delete(o);
    if (st) return st;
    c->n = c->n_ids - 1;
    c->ids = malloc(sizeof(int32_t) * (size_t)c->n_ids);
    c->want = calloc((size_t)L, sizeof(unsigned)), c->got = calloc((size_t)L, sizeof(unsigned));
    if (uses_maps(r->method) && c->cp.backend != SKV_BACKEND_CPU) {
        /* a backend that decodes codes itself: its context now, each layer as it arrives */
        skv_context_params cp = c->cp;
        if (cp.n_ctx <= 0) cp.n_ctx = in->n_ctx;
        if ((st = skv_context_init(c->m, cp, &c->ctx))) return st;
        c->dev = skv_context_codes_on_device(c->ctx);
        if (!c->dev) skv_context_free(c->ctx), c->ctx = NULL;
    }
    if (r->method != SKV_SCD_ORACLE && !c->dev) {
        c->K = malloc(sizeof(float) * (size_t)L * (size_t)c->n * (size_t)KD);
        c->V = malloc(sizeof(float) * (size_t)L * (size_t)c->n * (size_t)KD);
    }
    if (!c->ids || !c->want || !c->got || (r->method != SKV_SCD_ORACLE && !c->dev && (!c->K || !c->V)))
        return skv_set_error(SKV_ERR_NOMEM, "out of memory for a %d-token request", c->n_ids);
    for (int32_t l = 0; l < L; l++) c->want[l] = expected_parts(r, l);
    return SKV_OK;
}

/* The consumer's own layers [s, s + k) over the producer's residual stream R (n, dim) entering s. */
static skv_status recompute(skv_scd_consumer *c, int32_t s, const float *R) {
    const skv_model_info *in = skv_model_get_info(c->m);
    const int64_t KD = (int64_t)in->n_kv_head * in->head_dim, n = c->n;
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = c->n;
    skv_context *x;
    skv_status st = skv_context_init(c->m, cp, &x);
    if (st) return st;
    const skv_batch b = {.embd = R, .n = c->n, .layer0 = s, .layer1 = s + c->req.rc_k};
    st = skv_decode_ex(x, &b);
    for (int32_t l = s; l < s + c->req.rc_k && !st; l++)
        st = skv_context_get_kv(x, l, 1, c->K + l * n * KD, c->V + l * n * KD);
    skv_context_free(x);
    return st;
}

static skv_status on_layer(skv_scd_consumer *c, const skv_frame *f) {
    const skv_model_info *in = skv_model_get_info(c->m);
    const int32_t L = in->n_layer, KD = in->n_kv_head * in->head_dim, D = in->dim, l = f->layer;
    if (l < 0 || l >= L) return skv_set_error(SKV_ERR_FORMAT, "SCD: LAYER frame for layer %d of %d", l, L);
    const unsigned bit = 1u << f->part;
    if (!(c->want[l] & bit))
        return skv_set_error(SKV_ERR_FORMAT, "SCD: layer %d: unexpected part %u for method %s", l, f->part,
                             skv_scd_method_name(c->req.method));
    if (c->got[l] & bit) return skv_set_error(SKV_ERR_FORMAT, "SCD: layer %d: part %u twice", l, f->part);
    /* the shape and encoding each part must have */
    uint32_t cols = 0, group = 0;
    int enc = SKV_ENC_BF16;
    switch (f->part) {
    case SKV_PART_ZK: cols = (uint32_t)c->maps->r_k[l], enc = c->req.code_enc; break;
    case SKV_PART_ZV: cols = (uint32_t)c->maps->r_v[l], enc = c->req.code_enc; break;
    case SKV_PART_ZH: cols = (uint32_t)c->maps->r_h[l], enc = c->req.code_enc; break;
    case SKV_PART_K:
    case SKV_PART_V:
        cols = (uint32_t)KD;
        if (c->req.method == SKV_SCD_KIVI4) enc = SKV_ENC_KIVI4, group = (uint32_t)in->head_dim;
        break;
    case SKV_PART_RESID: cols = (uint32_t)D; break;
    }
    if (f->rows != (uint32_t)c->n || f->cols != cols || f->enc != enc || f->group != group)
        return skv_set_error(SKV_ERR_SHAPE, "SCD: layer %d part %u: %u x %u %s (group %u), expected %d x %u %s (group %u)", l,
                             f->part, f->rows, f->cols, skv_wire_enc_name(f->enc), f->group, c->n, cols,
                             skv_wire_enc_name(enc), group);
    const int64_t n = c->n;
    if (c->dev && f->enc == SKV_ENC_BF16) { /* bf16 codes go to the device as they are, checked here */
        const int part = f->part == SKV_PART_ZK ? SKV_SCD_K : f->part == SKV_PART_ZV ? SKV_SCD_V : SKV_SCD_H;
        skv_status st = skv_wire_bf16_check(f->payload, f->rows, f->cols);
        if (!st) st = skv_scd_dev_layer(c->maps, c->ctx, l, part, f->payload, 1, c->n);
        if (!st) c->got[l] |= bit, c->n_frames++;
        return st;
    }
    float *x = malloc(sizeof(float) * (size_t)n * cols);
    if (!x) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    skv_status st = skv_wire_unpack(f->enc, f->part, f->rows, f->cols, f->group, f->payload, x);
    if (!st && c->dev) { /* the device decodes (only codes reach here: uses_maps) */
        const int part = f->part == SKV_PART_ZK ? SKV_SCD_K : f->part == SKV_PART_ZV ? SKV_SCD_V : SKV_SCD_H;
        st = skv_scd_dev_layer(c->maps, c->ctx, l, part, x, 0, c->n);
        free(x);
        if (!st) c->got[l] |= bit, c->n_frames++;
        return st;
    }
    float *Kl = st ? NULL : c->K + l * n * KD, *Vl = st ? NULL : c->V + l * n * KD;
    if (!st) switch (f->part) {
        case SKV_PART_ZK: st = skv_scd_decode(c->maps, l, SKV_SCD_K, x, c->n, Kl); break;
        case SKV_PART_ZV: st = skv_scd_decode(c->maps, l, SKV_SCD_V, x, c->n, Vl); break;
        case SKV_PART_ZH: {
            float *H = malloc(sizeof(float) * (size_t)n * (size_t)D);
            if (!H) st = skv_set_error(SKV_ERR_NOMEM, "out of memory");
            if (!st && !(st = skv_scd_decode(c->maps, l, SKV_SCD_H, x, c->n, H))) st = skv_model_project_kv(c->m, l, H, c->n, Kl, Vl);
            free(H);
            break;
        }
        case SKV_PART_K:
            memcpy(Kl, x, sizeof(float) * (size_t)n * (size_t)KD);
            st = skv_model_rope_rows(c->m, Kl, c->n, 1);
            break;
        case SKV_PART_V: memcpy(Vl, x, sizeof(float) * (size_t)n * (size_t)KD); break;
        case SKV_PART_RESID: st = recompute(c, l, x); break;
        }
    free(x);
    if (!st) c->got[l] |= bit, c->n_frames++;
    return st;
}

static skv_status on_end(skv_scd_consumer *c, const skv_frame *f) {
    const skv_model_info *in = skv_model_get_info(c->m);
    cJSON *o = cJSON_ParseWithLength((const char *)f->payload, (size_t)f->len);
    int32_t nf = -1;
    const int ok = cJSON_IsObject(o) && jint(o, "layer_frames", 0, 1e9, &nf);
    cJSON_Delete(o);
    if (!ok) return skv_set_error(SKV_ERR_FORMAT, "SCD: END without a frame count");
    for (int32_t l = 0; l < in->n_layer; l++)
        if (c->got[l] != c->want[l])
            return skv_set_error(SKV_ERR_FORMAT, "SCD: END before layer %d arrived complete (partial cache refused)", l);
    if (nf != c->n_frames)
        return skv_set_error(SKV_ERR_FORMAT, "SCD: END counts %d layer frames, %d arrived", nf, c->n_frames);
    const double t0 = skv_time_now();
    if (c->dev) {
        const skv_status s2 = skv_context_codes_finish(c->ctx, c->n);
        c->t_build += skv_time_now() - t0;
        return s2;
    }
    skv_context_params cp = c->cp;
    if (cp.n_ctx <= 0) cp.n_ctx = in->n_ctx;
    skv_status st = skv_context_init(c->m, cp, &c->ctx);
    if (!st) st = c->req.method == SKV_SCD_ORACLE ? skv_decode(c->ctx, c->ids, c->n, NULL, 0)
                                                  : skv_context_put_kv(c->ctx, c->n, c->K, c->V, 1);
    c->t_build += skv_time_now() - t0;
    return st;
}

skv_status skv_scd_consumer_feed(skv_scd_consumer *c, const skv_frame *f, int *done) {
    *done = 0;
    if (c->state < 0) return skv_set_error(SKV_ERR_ARG, "SCD: the request already failed");
    if (c->state == 3) return skv_set_error(SKV_ERR_FORMAT, "SCD: a %s frame after END", skv_frame_type_name(f->type));
    const double t0 = skv_time_now();
    skv_status st = SKV_OK;
    const int want = c->state == 0 ? SKV_FT_HELLO : c->state == 1 ? SKV_FT_IDS : -1;
    if (want > 0 && f->type != want)
        st = skv_set_error(SKV_ERR_FORMAT, "SCD: a %s frame where %s was expected", skv_frame_type_name(f->type),
                           skv_frame_type_name(want));
    else if (want < 0 && f->type != SKV_FT_LAYER && f->type != SKV_FT_END)
        st = skv_set_error(SKV_ERR_FORMAT, "SCD: a %s frame among the layers", skv_frame_type_name(f->type));
    else if (f->type == SKV_FT_HELLO) {
        if (f->enc != SKV_ENC_BYTES) st = skv_set_error(SKV_ERR_FORMAT, "SCD: HELLO is not text");
        else if (!(st = on_hello(c, f))) c->state = 1;
    } else if (f->type == SKV_FT_IDS) {
        if (f->enc != SKV_ENC_I32 || f->rows != (uint32_t)c->n_ids || f->cols != 1)
            st = skv_set_error(SKV_ERR_SHAPE, "SCD: IDS frame of %u x %u %s, expected %d i32", f->rows, f->cols,
                               skv_wire_enc_name(f->enc), c->n_ids);
        else {
            memcpy(c->ids, f->payload, sizeof(int32_t) * (size_t)c->n_ids);
            const int32_t V = skv_model_get_info(c->m)->n_vocab;
            for (int32_t i = 0; i < c->n_ids && !st; i++)
                if (c->ids[i] < 0 || c->ids[i] >= V)
                    st = skv_set_error(SKV_ERR_FORMAT, "SCD: token id %d at %d is outside the vocabulary (%d)", c->ids[i], i, V);
            if (!st) c->state = 2;
        }
    } else if (f->type == SKV_FT_LAYER) {
        st = on_layer(c, f);
    } else if (f->type == SKV_FT_END) {
        if (f->enc != SKV_ENC_BYTES) st = skv_set_error(SKV_ERR_FORMAT, "SCD: END is not text");
        else if (!(st = on_end(c, f))) c->state = 3, *done = 1;
    }
    if (f->type != SKV_FT_END) c->t_build += skv_time_now() - t0;
    if (st) {
        c->state = -1;
        skv_context_free(c->ctx);
        c->ctx = NULL;
    }
    return st;
}
