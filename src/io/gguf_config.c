/*
 * gguf_config.c — hyperparameters of a GGUF model from its `<arch>.*` keys (llama.cpp's
 * names), with the architecture's defaults where a key is absent (said in comments).
 */
#include "config.h"
#include "gguf.h"

#include <math.h>

skv_status skv_config_from_gguf(const skv_gguf *g, skv_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    skv_model_info *in = &cfg->info;
    const char *path = skv_gguf_path(g);
    char *arch = NULL, key[160];
    skv_status st = skv_gguf_get_str(g, "general.architecture", 1, &arch);
    if (st) return st;
    if (!strcmp(arch, "llama")) in->arch = SKV_ARCH_LLAMA;
    else if (!strcmp(arch, "qwen2")) in->arch = SKV_ARCH_QWEN2;
    else if (!strcmp(arch, "gemma3")) in->arch = SKV_ARCH_GEMMA3, cfg->gemma3 = 1;
    else {
        st = skv_set_error(SKV_ERR_UNSUPPORTED, "%s: general.architecture \"%s\" is not supported (llama, qwen2, gemma3)",
                           path, arch);
        free(arch);
        return st;
    }
#define K(name) (snprintf(key, sizeof key, "%s." name, arch), key)
    int64_t v;
    double f;
    const int64_t BIG = 1 << 30;
    if ((st = skv_gguf_get_int(g, K("embedding_length"), 1, 1, 1 << 20, &v))) goto out;
    in->dim = (int32_t)v;
    if ((st = skv_gguf_get_int(g, K("feed_forward_length"), 1, 1, 1 << 22, &v))) goto out;
    in->ffn_dim = (int32_t)v;
    if ((st = skv_gguf_get_int(g, K("block_count"), 1, 1, 4096, &v))) goto out;
    in->n_layer = (int32_t)v;
    if ((st = skv_gguf_get_int(g, K("attention.head_count"), 1, 1, 4096, &v))) goto out;
    in->n_head = (int32_t)v;
    v = in->n_head;
    if ((st = skv_gguf_get_int(g, K("attention.head_count_kv"), 0, 1, 4096, &v))) goto out;
    in->n_kv_head = (int32_t)v;
    v = 2048;
    if ((st = skv_gguf_get_int(g, K("context_length"), 0, 1, BIG, &v))) goto out;
    in->n_ctx = (int32_t)v;
    v = in->dim / in->n_head;
    if ((st = skv_gguf_get_int(g, K("attention.key_length"), 0, 2, 512, &v))) goto out;
    in->head_dim = (int32_t)v;
    int64_t vl = in->head_dim, rd = in->head_dim;
    if ((st = skv_gguf_get_int(g, K("attention.value_length"), 0, 2, 512, &vl)) ||
        (st = skv_gguf_get_int(g, K("rope.dimension_count"), 0, 2, 512, &rd)))
        goto out;
    if (vl != in->head_dim || rd != in->head_dim) {
        st = skv_set_error(SKV_ERR_UNSUPPORTED, "%s: %s.attention.value_length %lld / rope.dimension_count %lld differ from "
                           "the key length %d (not supported)", path, arch, (long long)vl, (long long)rd, in->head_dim);
        goto out;
    }
    f = 1e-6;
    if ((st = skv_gguf_get_float(g, K("attention.layer_norm_rms_epsilon"), 0, &f))) goto out;
    in->rms_eps = (float)f;
    f = 10000.0; /* llama.cpp's default base */
    if ((st = skv_gguf_get_float(g, K("rope.freq_base"), 0, &f))) goto out;
    in->rope_theta = (float)f;
    char *scaling = NULL;
    if ((st = skv_gguf_get_str(g, K("rope.scaling.type"), 0, &scaling))) goto out;
    if (scaling && strcmp(scaling, "none")) {
        if (!strcmp(scaling, "linear")) {
            double fac = 1;
            if ((st = skv_gguf_get_float(g, K("rope.scaling.factor"), 1, &fac))) {
                free(scaling);
                goto out;
            }
            cfg->rope_type = SKV_ROPE_LINEAR, cfg->rope_factor = (float)fac;
        } else {
            st = skv_set_error(SKV_ERR_UNSUPPORTED, "%s: %s.rope.scaling.type \"%s\" is not supported (none, linear)", path,
                               arch, scaling);
            free(scaling);
            goto out;
        }
    }
    free(scaling);
    if (cfg->gemma3) {
        /* Gemma 3's defaults (transformers Gemma3TextConfig; llama.cpp the same): local RoPE base
         * 10000, every 6th layer global, query scale 1/sqrt(query_pre_attn_scalar = head_dim),
         * embeddings times sqrt(hidden) */
        v = 0;
        if ((st = skv_gguf_get_int(g, K("attention.sliding_window"), 1, 1, BIG, &v))) goto out;
        in->sliding_window = (int32_t)v;
        cfg->swa_period = 6;
        cfg->rope_theta_local = 10000.0f;
        cfg->embed_scale = sqrtf((float)in->dim);
        cfg->attn_scale = 1.0f / sqrtf((float)in->head_dim);
        if (in->rope_theta <= 0) in->rope_theta = 1e6f;
    } else {
        v = 0;
        if ((st = skv_gguf_get_int(g, K("attention.sliding_window"), 0, 0, BIG, &v))) goto out;
        if (v) {
            st = skv_set_error(SKV_ERR_UNSUPPORTED, "%s: %s.attention.sliding_window is not supported for %s", path, arch, arch);
            goto out;
        }
    }
    /* the vocabulary: the token list's length (the embedding's rows are checked against it) */
    const skv_gguf_kv *toks;
    if ((st = skv_gguf_get_arr(g, "tokenizer.ggml.tokens", 1, SKV_GGUF_STRING, &toks))) goto out;
    if (toks->arr_n < 1 || toks->arr_n > (1u << 24)) {
        st = skv_set_error(SKV_ERR_FORMAT, "%s: tokenizer.ggml.tokens has %llu entries", path, (unsigned long long)toks->arr_n);
        goto out;
    }
    in->n_vocab = (int32_t)toks->arr_n;
    int64_t bos = -1, eos = -1;
    if ((st = skv_gguf_get_int(g, "tokenizer.ggml.bos_token_id", 0, 0, in->n_vocab - 1, &bos)) ||
        (st = skv_gguf_get_int(g, "tokenizer.ggml.eos_token_id", 0, 0, in->n_vocab - 1, &eos)))
        goto out;
    in->bos_id = (int32_t)bos, in->eos_id = (int32_t)eos;
    int add_bos = 0;
    if ((st = skv_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", 0, &add_bos))) goto out;
    in->add_bos = add_bos && bos >= 0;
    if (in->n_head % in->n_kv_head) {
        st = skv_set_error(SKV_ERR_FORMAT, "%s: %s.attention.head_count %d is not a multiple of head_count_kv %d", path, arch,
                           in->n_head, in->n_kv_head);
        goto out;
    }
    if (in->head_dim % 2 || !(in->rms_eps > 0) || !(in->rope_theta > 0)) {
        st = skv_set_error(SKV_ERR_FORMAT, "%s: odd head dimension %d, or a non-positive RMS epsilon or RoPE base", path,
                           in->head_dim);
        goto out;
    }
out:
#undef K
    free(arch);
    return st;
}
