/*
 * load.c — build an skv_model from a Hugging Face directory: config, weights, validation.
 */
#include "model.h"

#include <math.h>
#include <omp.h>

skv_model_params skv_model_default_params(void) {
    skv_model_params p = {.n_threads = 0, .use_mmap = 0};
    return p;
}

typedef struct loader {
    skv_model *m;
    const char *dir;
    float *f32_next; /* bump pointer into m->f32_store */
} loader;

/* Find a tensor and check its shape against the config. */
static skv_status find_tensor(loader *L, const char *name, int64_t d0, int64_t d1,
                              const skv_st_tensor **out) {
    const skv_st_tensor *t = skv_st_find(L->m->st, name);
    if (!t) return skv_set_error(SKV_ERR_FORMAT, "%s: tensor \"%s\" is missing", L->dir, name);
    int want_nd = d1 > 0 ? 2 : 1;
    if (t->n_dims != want_nd || t->shape[0] != d0 || (want_nd == 2 && t->shape[1] != d1)) {
        char got[96] = "", want[64];
        for (int i = 0; i < t->n_dims; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? ", " : "",
                     (long long)t->shape[i]);
        if (want_nd == 2)
            snprintf(want, sizeof want, "%lld, %lld", (long long)d0, (long long)d1);
        else
            snprintf(want, sizeof want, "%lld", (long long)d0);
        return skv_set_error(SKV_ERR_SHAPE,
                             "%s: tensor \"%s\" has shape [%s] but config.json implies [%s]",
                             t->file, name, got, want);
    }
    *out = t;
    return SKV_OK;
}

static skv_status load_matrix(loader *L, const char *name, int64_t rows, int64_t cols,
                              skv_weight *w) {
    const skv_st_tensor *t;
    skv_status st = find_tensor(L, name, rows, cols, &t);
    if (st) return st;
    w->data = t->data;
    w->dtype = t->dtype;
    w->rows = rows;
    w->cols = cols;
    if (rows * cols > L->m->max_weight_elems) L->m->max_weight_elems = rows * cols;
    return SKV_OK;
}

/* 1-D tensor converted to f32 into the shared store. */
static skv_status load_vector(loader *L, const char *name, int64_t n, float **out) {
    const skv_st_tensor *t;
    skv_status st = find_tensor(L, name, n, 0, &t);
    if (st) return st;
    float *dst = L->f32_next;
    L->f32_next += n;
    skv_weight w = {t->data, t->dtype, 1, n};
    skv_weight_row_f32(&w, 0, dst);
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(dst[i]))
            return skv_set_error(SKV_ERR_FORMAT, "%s: tensor \"%s\" holds a non-finite value",
                                 t->file, name);
    *out = dst;
    return SKV_OK;
}

static void init_rope(skv_model *m) {
    const skv_config *c = &m->cfg;
    const int32_t hd = c->info.head_dim, half = hd / 2;
    m->rope_inv_freq = malloc((size_t)half * 2 * sizeof(float));
    if (!m->rope_inv_freq) return;
    /* Gemma 3's sliding-window layers: a second table with their own base (no scaling) */
    for (int32_t i = 0; i < half && c->swa_period; i++)
        m->rope_inv_freq[half + i] = 1.0f / powf(c->rope_theta_local, (float)(2 * i) / (float)hd);
    for (int32_t i = 0; i < half; i++) {
        /* As transformers: base ** (arange(0, dim, 2).float() / dim), in float32. */
        float inv = 1.0f / powf(c->info.rope_theta, (float)(2 * i) / (float)hd);
        if (c->rope_type == SKV_ROPE_LINEAR) {
            inv /= c->rope_factor;
        } else if (c->rope_type == SKV_ROPE_LLAMA3) {
            const float low_wl = (float)c->rope_orig_ctx / c->rope_low_freq_factor;
            const float high_wl = (float)c->rope_orig_ctx / c->rope_high_freq_factor;
            const float wl = 2.0f * (float)M_PI / inv;
            if (wl > low_wl) {
                inv /= c->rope_factor;
            } else if (wl >= high_wl) {
                float smooth = ((float)c->rope_orig_ctx / wl - c->rope_low_freq_factor) /
                               (c->rope_high_freq_factor - c->rope_low_freq_factor);
                inv = (1.0f - smooth) * inv / c->rope_factor + smooth * inv;
            }
        }
        m->rope_inv_freq[i] = inv;
    }
}

static skv_status load_weights(loader *L) {
    skv_model *m = L->m;
    const skv_model_info *in = &m->cfg.info;
    const int64_t D = in->dim, F = in->ffn_dim, V = in->n_vocab;
    const int64_t QD = (int64_t)in->n_head * in->head_dim, KD = (int64_t)in->n_kv_head * in->head_dim;
    char name[256];
    skv_status st;

    int64_t n_f32 = D * (2 * (int64_t)in->n_layer + 1);
    if (in->qkv_bias) n_f32 += (QD + 2 * KD) * in->n_layer;
    if (m->cfg.attn_out_bias) n_f32 += D * in->n_layer;
    m->f32_store = malloc((size_t)n_f32 * sizeof(float));
    m->layers = calloc((size_t)in->n_layer, sizeof *m->layers);
    if (!m->f32_store || !m->layers) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    L->f32_next = m->f32_store;

    if ((st = load_matrix(L, "model.embed_tokens.weight", V, D, &m->tok_embed))) return st;
    if ((st = load_vector(L, "model.norm.weight", D, &m->final_norm))) return st;
    if (in->tied_embeddings) {
        m->lm_head = m->tok_embed;
    } else if ((st = load_matrix(L, "lm_head.weight", V, D, &m->lm_head))) {
        return st;
    }
    for (int32_t l = 0; l < in->n_layer; l++) {
        skv_layer *ly = &m->layers[l];
#define P(suffix) (snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix), name)
        if ((st = load_vector(L, P("input_layernorm.weight"), D, &ly->attn_norm)) ||
            (st = load_vector(L, P("post_attention_layernorm.weight"), D, &ly->ffn_norm)) ||
            (st = load_matrix(L, P("self_attn.q_proj.weight"), QD, D, &ly->wq)) ||
            (st = load_matrix(L, P("self_attn.o_proj.weight"), D, QD, &ly->wo)) ||
            (st = load_matrix(L, P("mlp.gate_proj.weight"), F, D, &ly->w_gate)) ||
            (st = load_matrix(L, P("mlp.up_proj.weight"), F, D, &ly->w_up)) ||
            (st = load_matrix(L, P("mlp.down_proj.weight"), D, F, &ly->w_down)))
            return st;
        /* LCKV: a layer owns K/V projections iff it is its own KV source (t(l) = l) */
        const int own = m->cfg.layer_types[l] == l;
        if (own && ((st = load_matrix(L, P("self_attn.k_proj.weight"), KD, D, &ly->wk)) ||
                    (st = load_matrix(L, P("self_attn.v_proj.weight"), KD, D, &ly->wv))))
            return st;
        if (!own) {
            const char *kv[4] = {"self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.k_proj.bias",
                                 "self_attn.v_proj.bias"};
            for (int i = 0; i < 4; i++)
                if (skv_st_find(m->st, P(kv[i])))
                    return skv_set_error(SKV_ERR_FORMAT,
                                         "%s: tensor \"%s\" is present but layer_types makes layer %d condensed (it "
                                         "uses the KV of layer %d and has no K/V projections)",
                                         L->dir, name, l, m->cfg.layer_types[l]);
        }
        if (in->qkv_bias && ((st = load_vector(L, P("self_attn.q_proj.bias"), QD, &ly->bq)) ||
                             (own && (st = load_vector(L, P("self_attn.k_proj.bias"), KD, &ly->bk))) ||
                             (own && (st = load_vector(L, P("self_attn.v_proj.bias"), KD, &ly->bv)))))
            return st;
        if (m->cfg.attn_out_bias && (st = load_vector(L, P("self_attn.o_proj.bias"), D, &ly->bo)))
            return st;
#undef P
    }
    return SKV_OK;
}

/* a path naming a .gguf file (or any file starting with "GGUF") */
static int is_gguf(const char *path) {
    size_t n = strlen(path);
    if (n > 5 && !strcmp(path + n - 5, ".gguf")) return 1;
    FILE *f = fopen(path, "rb");
    char magic[4] = {0};
    int yes = f && fread(magic, 1, 4, f) == 4 && !memcmp(magic, "GGUF", 4);
    if (f) fclose(f);
    return yes;
}

static skv_status load_safetensors(skv_model *m, const char *dir, skv_model_params params) {
    skv_status st = skv_config_load(dir, &m->cfg);
    if (!st) st = skv_st_open(dir, !params.use_mmap, &m->st);
    if (!st && (params.lckv_iters < 0 || params.lckv_iters > 1000))
        st = skv_set_error(SKV_ERR_ARG, "lckv_iters must be 0..1000 (got %d)", params.lckv_iters);
    if (!st && params.lckv_iters) m->cfg.lckv_iters = params.lckv_iters;
    if (!st && !params.no_check) st = skv_st_check_finite(m->st);
    if (!st) st = skv_tokcfg_load(dir, &m->chat_template, &m->bos_token);
    if (!st) {
        loader L = {.m = m, .dir = dir};
        st = load_weights(&L);
    }
    if (st) return st;
    /* Parameter count and stored dtype (of the largest tensor kind: the projections). */
    m->cfg.info.weight_dtype = m->layers[0].wq.dtype;
    int64_t n = 0;
    for (int64_t i = 0; i < skv_st_n_tensors(m->st); i++) n += skv_st_get(m->st, i)->n_elem;
    m->cfg.info.n_params = n;
    m->cfg.info.weight_bytes = skv_st_bytes(m->st);
    m->cfg.info.decode_weight_bytes = m->cfg.info.weight_bytes;
    if (!m->cfg.info.tied_embeddings)
        m->cfg.info.decode_weight_bytes -= m->tok_embed.rows * m->tok_embed.cols *
                                           (int64_t)skv_dtype_size(m->tok_embed.dtype);
    m->act_kinds = 1u << SKV_ACT_F32;
    return SKV_OK;
}

skv_status skv_model_load(const char *dir, skv_model_params params, skv_model **out) {
    *out = NULL;
    if (!dir || !*dir) return skv_set_error(SKV_ERR_ARG, "model directory: empty path");
    skv_model *m = calloc(1, sizeof *m);
    if (!m) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    m->n_threads = params.n_threads > 0 ? params.n_threads : omp_get_num_procs();
    m->f32_prefill = params.f32_prefill;
    const int gguf = is_gguf(dir);
    skv_status st = gguf ? skv_model_load_gguf(m, dir, params) : load_safetensors(m, dir, params);
    if (!st && gguf) /* GGUF files carry no layer_types: every layer keeps its own KV */
        for (int32_t l = 0; l < m->cfg.info.n_layer; l++) m->cfg.layer_types[l] = l;
    if (st) {
        skv_model_free(m);
        return st;
    }
    init_rope(m);
    /* layer_types (identity for standard models): layer l attends to the KV of t(l); the layers
     * with t(l) = l append, numbered in order as cache layers */
    m->kv_src = malloc(sizeof(int32_t) * (size_t)m->cfg.info.n_layer);
    m->cache_of = malloc(sizeof(int32_t) * (size_t)m->cfg.info.n_layer);
    if (!m->rope_inv_freq || !m->kv_src || !m->cache_of) {
        skv_model_free(m);
        return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    }
    m->n_cache_layers = 0;
    for (int32_t l = 0; l < m->cfg.info.n_layer; l++)
        if ((m->kv_src[l] = m->cfg.layer_types[l]) == l) m->cache_of[l] = m->n_cache_layers++;
    for (int32_t l = 0; l < m->cfg.info.n_layer; l++) m->cache_of[l] = m->cache_of[m->kv_src[l]];
    /* the cyclic group: [first layer reading upwards, highest layer read upwards] */
    m->grp_lo = m->grp_hi = -1;
    for (int32_t l = 0; l < m->cfg.info.n_layer; l++)
        if (m->kv_src[l] > l) {
            if (m->grp_lo < 0) m->grp_lo = l;
            m->grp_hi = SKV_MAX(m->grp_hi, m->kv_src[l]);
        }
    *out = m;
    return SKV_OK;
}

void skv_model_free(skv_model *m) {
    if (!m) return;
    if (m->be_data && m->be_data_free) m->be_data_free(m->be_data);
    skv_st_close(m->st);
    skv_gguf_close(m->gguf);
    free(m->f32_store);
    free(m->layers);
    free(m->rope_inv_freq);
    free(m->kv_src);
    free(m->cache_of);
    free(m->rope_cos);
    free(m->rope_sin);
    for (int32_t i = 0; i < m->n_rope_old; i++) free(m->rope_old[i]);
    free(m->rope_old);
    free(m->chat_template);
    free(m->bos_token);
    free(m);
}

skv_status skv_model_layer_cache(const skv_model *m, int32_t layer, int32_t *src_layer, int32_t *appends) {
    if (layer < 0 || layer >= m->cfg.info.n_layer)
        return skv_set_error(SKV_ERR_ARG, "layer %d out of range (%d layers)", layer, m->cfg.info.n_layer);
    if (src_layer) *src_layer = m->kv_src[layer];
    if (appends) *appends = m->kv_src[layer] == layer;
    return SKV_OK;
}

int32_t skv_model_n_cache_layers(const skv_model *m) { return m->n_cache_layers; }

skv_status skv_model_rope(skv_model *m, int32_t n) {
    if (n <= m->rope_len) return SKV_OK;
    const int64_t half = m->cfg.info.head_dim / 2, ntab = m->cfg.swa_period ? 2 : 1;
    float *cs = malloc(sizeof(float) * (size_t)(ntab * n * half)), *sn = malloc(sizeof(float) * (size_t)(ntab * n * half));
    void **old = realloc(m->rope_old, sizeof(void *) * (size_t)(m->n_rope_old + 2));
    if (!cs || !sn || !old) {
        free(cs), free(sn);
        if (old) m->rope_old = old;
        return skv_set_error(SKV_ERR_NOMEM, "cannot allocate RoPE tables for %d positions", n);
    }
    /* as transformers computes them: freqs = pos * inv_freq in float32 */
    for (int64_t t = 0; t < ntab; t++)
        for (int64_t pos = 0; pos < n; pos++)
            for (int64_t i = 0; i < half; i++) {
                const float f = (float)pos * m->rope_inv_freq[t * half + i];
                cs[(t * n + pos) * half + i] = cosf(f);
                sn[(t * n + pos) * half + i] = sinf(f);
            }
    m->rope_old = old;
    if (m->rope_cos) m->rope_old[m->n_rope_old++] = m->rope_cos, m->rope_old[m->n_rope_old++] = m->rope_sin;
    m->rope_cos = cs, m->rope_sin = sn, m->rope_len = n;
    return SKV_OK;
}

const skv_model_info *skv_model_get_info(const skv_model *m) { return &m->cfg.info; }
