/*
 * load_gguf.c — an skv_model from a GGUF file: the config from its `<arch>.*` keys, every
 * tensor the architecture needs (llama.cpp's names, ggml dimension order: ne = {cols, rows}),
 * weights used in place in their stored type. Llama files hold Q and K with the rows of each
 * head interleaved for ggml's RoPE (the converter's permute); they are put back in Hugging
 * Face's rotate-half order here, in the private copy of the mapping.
 */
#include "model.h"

#include <math.h>

typedef struct gl {
    skv_model *m;
    const char *path;
    float *f32_next;
} gl;

static const skv_gguf_tensor *find(gl *L, const char *name, int64_t cols, int64_t rows, skv_status *st) {
    const skv_gguf_tensor *t = skv_gguf_find_tensor(L->m->gguf, name);
    *st = SKV_OK;
    if (!t) {
        *st = skv_set_error(SKV_ERR_FORMAT, "%s: tensor \"%s\" is missing", L->path, name);
        return NULL;
    }
    if ((int)t->dtype < 0) {
        *st = skv_set_error(SKV_ERR_UNSUPPORTED,
                            "%s: tensor \"%s\" has type %s, which is not supported (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q8_0, "
                            "Q4_K, Q5_K, Q6_K)", L->path, name, skv_gguf_ggml_type_name(t->ggml_type));
        return NULL;
    }
    const int want_nd = rows > 0 ? 2 : 1;
    int nd = t->n_dims;
    while (nd > want_nd && t->ne[nd - 1] == 1) nd--;
    if (nd != want_nd || t->ne[0] != cols || (want_nd == 2 && t->ne[1] != rows)) {
        *st = skv_set_error(SKV_ERR_SHAPE, "%s: tensor \"%s\" has ne [%lld, %lld, %lld, %lld] but the metadata implies [%lld%s%lld]",
                            L->path, name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                            (long long)t->ne[3], (long long)cols, want_nd == 2 ? ", " : "",
                            want_nd == 2 ? (long long)rows : 0LL);
        return NULL;
    }
    return t;
}

static skv_status matrix(gl *L, const char *name, int64_t rows, int64_t cols, skv_weight *w) {
    skv_status st;
    const skv_gguf_tensor *t = find(L, name, cols, rows, &st);
    if (!t) return st;
    *w = (skv_weight){t->data, t->dtype, rows, cols};
    L->m->act_kinds |= skv_weight_act_kinds(w);
    const int64_t elems = skv_dtype_is_quant(t->dtype) ? (int64_t)L->m->n_threads * SKV_QTILE * cols : rows * cols;
    if (elems > L->m->max_weight_elems) L->m->max_weight_elems = elems;
    return SKV_OK;
}

static skv_status vector(gl *L, const char *name, int64_t n, float **out) {
    skv_status st;
    const skv_gguf_tensor *t = find(L, name, n, 0, &st);
    if (!t) return st;
    float *dst = L->f32_next;
    L->f32_next += n;
    skv_weight w = {t->data, t->dtype, 1, n};
    skv_weight_row_f32(&w, 0, dst);
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(dst[i])) return skv_set_error(SKV_ERR_FORMAT, "%s: tensor \"%s\" holds a non-finite value", L->path, name);
    *out = dst;
    return SKV_OK;
}

/* Undo the converter's Llama permute of a (n_heads * hd, cols) matrix in place: the GGUF row
 * 2 i + j of a head is Hugging Face's row j * hd/2 + i. */
static skv_status unpermute(gl *L, const skv_weight *w, int32_t n_heads, int32_t hd) {
    const int64_t rb = skv_dtype_row_bytes(w->dtype, w->cols), half = hd / 2;
    uint8_t *tmp = malloc((size_t)(rb * hd));
    if (!tmp) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    for (int32_t h = 0; h < n_heads; h++) {
        uint8_t *base = (uint8_t *)w->data + (int64_t)h * hd * rb;
        memcpy(tmp, base, (size_t)(rb * hd));
        for (int64_t i = 0; i < half; i++)
            for (int64_t j = 0; j < 2; j++) memcpy(base + (j * half + i) * rb, tmp + (2 * i + j) * rb, (size_t)rb);
    }
    free(tmp);
    return SKV_OK;
}

static skv_status weights(gl *L) {
    skv_model *m = L->m;
    const skv_model_info *in = &m->cfg.info;
    const int64_t D = in->dim, F = in->ffn_dim, V = in->n_vocab, hd = in->head_dim;
    const int64_t QD = (int64_t)in->n_head * hd, KD = (int64_t)in->n_kv_head * hd;
    const int gemma = m->cfg.gemma3;
    char name[96];
    skv_status st;
    int64_t n_f32 = D * (2 * (int64_t)in->n_layer + 1) + (QD + 2 * KD) * in->n_layer;
    if (gemma) n_f32 += (2 * hd + 2 * D) * in->n_layer;
    m->f32_store = malloc((size_t)n_f32 * sizeof(float));
    m->layers = calloc((size_t)in->n_layer, sizeof *m->layers);
    if (!m->f32_store || !m->layers) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    L->f32_next = m->f32_store;
    if ((st = matrix(L, "token_embd.weight", V, D, &m->tok_embed)) || (st = vector(L, "output_norm.weight", D, &m->final_norm)))
        return st;
    m->cfg.info.tied_embeddings = !skv_gguf_find_tensor(m->gguf, "output.weight");
    if (in->tied_embeddings) m->lm_head = m->tok_embed;
    else if ((st = matrix(L, "output.weight", V, D, &m->lm_head))) return st;
    m->cfg.info.qkv_bias = skv_gguf_find_tensor(m->gguf, "blk.0.attn_q.bias") != NULL;
    for (int32_t l = 0; l < in->n_layer; l++) {
        skv_layer *ly = &m->layers[l];
#define P(suffix) (snprintf(name, sizeof name, "blk.%d.%s", l, suffix), name)
        if ((st = vector(L, P("attn_norm.weight"), D, &ly->attn_norm)) ||
            (st = vector(L, P("ffn_norm.weight"), D, &ly->ffn_norm)) ||
            (st = matrix(L, P("attn_q.weight"), QD, D, &ly->wq)) || (st = matrix(L, P("attn_k.weight"), KD, D, &ly->wk)) ||
            (st = matrix(L, P("attn_v.weight"), KD, D, &ly->wv)) ||
            (st = matrix(L, P("attn_output.weight"), D, QD, &ly->wo)) ||
            (st = matrix(L, P("ffn_gate.weight"), F, D, &ly->w_gate)) ||
            (st = matrix(L, P("ffn_up.weight"), F, D, &ly->w_up)) || (st = matrix(L, P("ffn_down.weight"), D, F, &ly->w_down)))
            return st;
        if (in->qkv_bias && ((st = vector(L, P("attn_q.bias"), QD, &ly->bq)) || (st = vector(L, P("attn_k.bias"), KD, &ly->bk)) ||
                             (st = vector(L, P("attn_v.bias"), KD, &ly->bv))))
            return st;
        if (gemma && ((st = vector(L, P("attn_q_norm.weight"), hd, &ly->q_norm)) ||
                      (st = vector(L, P("attn_k_norm.weight"), hd, &ly->k_norm)) ||
                      (st = vector(L, P("post_attention_norm.weight"), D, &ly->post_attn_norm)) ||
                      (st = vector(L, P("post_ffw_norm.weight"), D, &ly->post_ffn_norm))))
            return st;
        if (!in->qkv_bias && skv_gguf_find_tensor(m->gguf, P("attn_q.bias")))
            return skv_set_error(SKV_ERR_FORMAT, "%s: tensor \"%s\" present but blk.0 has no q bias", L->path, name);
        if (in->arch == SKV_ARCH_LLAMA) {
            if ((st = unpermute(L, &ly->wq, in->n_head, (int32_t)hd)) || (st = unpermute(L, &ly->wk, in->n_kv_head, (int32_t)hd)))
                return st;
            if (ly->bq) {
                skv_weight b = {ly->bq, SKV_DTYPE_F32, QD, 1};
                skv_weight bk = {ly->bk, SKV_DTYPE_F32, KD, 1};
                if ((st = unpermute(L, &b, in->n_head, (int32_t)hd)) || (st = unpermute(L, &bk, in->n_kv_head, (int32_t)hd)))
                    return st;
            }
        }
#undef P
    }
    if (skv_gguf_find_tensor(m->gguf, "rope_freqs.weight"))
        return skv_set_error(SKV_ERR_UNSUPPORTED, "%s: tensor \"rope_freqs.weight\" (RoPE frequency factors) is not supported",
                             L->path);
    /* every tensor of the file must be one the architecture uses */
    const int64_t used = 3 - in->tied_embeddings + (int64_t)in->n_layer * (9 + 3 * in->qkv_bias + 4 * gemma);
    if (skv_gguf_n_tensors(m->gguf) != used)
        for (int64_t i = 0; i < skv_gguf_n_tensors(m->gguf); i++) {
            const char *tn = skv_gguf_tensor_at(m->gguf, i)->name;
            int known = !strcmp(tn, "token_embd.weight") || !strcmp(tn, "output_norm.weight") || !strcmp(tn, "output.weight");
            int32_t l;
            char rest[64];
            if (!known && sscanf(tn, "blk.%d.%63s", &l, rest) == 2 && l >= 0 && l < in->n_layer) {
                static const char *ok[] = {"attn_norm.weight", "ffn_norm.weight", "attn_q.weight", "attn_k.weight",
                                           "attn_v.weight", "attn_output.weight", "ffn_gate.weight", "ffn_up.weight",
                                           "ffn_down.weight", "attn_q.bias", "attn_k.bias", "attn_v.bias",
                                           "attn_q_norm.weight", "attn_k_norm.weight", "post_attention_norm.weight",
                                           "post_ffw_norm.weight"};
                for (size_t k = 0; k < sizeof ok / sizeof ok[0]; k++) known |= !strcmp(rest, ok[k]);
            }
            if (!known)
                return skv_set_error(SKV_ERR_UNSUPPORTED, "%s: tensor \"%s\" is not part of the %s architecture as supported here",
                                     L->path, tn, in->arch == SKV_ARCH_LLAMA ? "llama" : in->arch == SKV_ARCH_QWEN2 ? "qwen2" : "gemma3");
        }
    return SKV_OK;
}

skv_status skv_model_load_gguf(skv_model *m, const char *path, skv_model_params params) {
    skv_status st = skv_gguf_open(path, !params.use_mmap, &m->gguf);
    if (st) return st;
    if ((st = skv_config_from_gguf(m->gguf, &m->cfg))) return st;
    const skv_gguf_tensor *emb = skv_gguf_find_tensor(m->gguf, "token_embd.weight");
    if (emb && emb->ne[1] != m->cfg.info.n_vocab)
        return skv_set_error(SKV_ERR_SHAPE, "%s: token_embd.weight has %lld rows but tokenizer.ggml.tokens %d entries", path,
                             (long long)emb->ne[1], m->cfg.info.n_vocab);
    gl L = {.m = m, .path = path};
    if ((st = weights(&L))) return st;
    /* the chat template (tokenizer.chat_template) and the BOS token's text, as tokenizer_config.json
     * gives them for a safetensors model */
    if ((st = skv_gguf_get_str(m->gguf, "tokenizer.chat_template", 0, &m->chat_template))) return st;
    const skv_gguf_kv *toks = skv_gguf_find_kv(m->gguf, "tokenizer.ggml.tokens");
    if (m->cfg.info.bos_id >= 0 && toks && (uint64_t)m->cfg.info.bos_id < toks->arr_n) {
        const skv_gguf_str *b = &toks->strs[m->cfg.info.bos_id];
        if (!(m->bos_token = malloc(b->n + 1))) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
        memcpy(m->bos_token, b->s, b->n);
        m->bos_token[b->n] = 0;
    }
    m->cfg.info.weight_dtype = m->layers[0].w_gate.dtype;
    int64_t n = 0;
    for (int64_t i = 0; i < skv_gguf_n_tensors(m->gguf); i++) {
        const skv_gguf_tensor *t = skv_gguf_tensor_at(m->gguf, i);
        n += t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
    }
    m->cfg.info.n_params = n;
    m->cfg.info.weight_bytes = skv_gguf_data_bytes(m->gguf);
    m->cfg.info.decode_weight_bytes = m->cfg.info.weight_bytes;
    if (!m->cfg.info.tied_embeddings) m->cfg.info.decode_weight_bytes -= (int64_t)emb->nbytes;
    return SKV_OK;
}
