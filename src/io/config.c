/*
 * config.c — parse config.json for LlamaForCausalLM, Qwen2ForCausalLM and MistralForCausalLM.
 */
#include "config.h"

#include <cjson/cJSON.h>
#include <math.h>

/* Reads an integer field; *out keeps its default when the field is absent or null. A present
 * field of the wrong type is an error. */
static skv_status get_int(const cJSON *root, const char *path, const char *key, int32_t *out,
                          int required) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!it || cJSON_IsNull(it)) {
        if (required) return skv_set_error(SKV_ERR_FORMAT, "%s: missing field \"%s\"", path, key);
        return SKV_OK;
    }
    if (cJSON_IsArray(it) && cJSON_GetArraySize(it) > 0) it = cJSON_GetArrayItem(it, 0);
    if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) ||
        fabs(it->valuedouble) > 2147483647.0)
        return skv_set_error(SKV_ERR_FORMAT, "%s: field \"%s\" must be an integer", path, key);
    *out = (int32_t)it->valuedouble;
    return SKV_OK;
}

static skv_status get_float(const cJSON *root, const char *path, const char *key, float *out) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!it || cJSON_IsNull(it)) return SKV_OK;
    if (!cJSON_IsNumber(it))
        return skv_set_error(SKV_ERR_FORMAT, "%s: field \"%s\" must be a number", path, key);
    *out = (float)it->valuedouble;
    return SKV_OK;
}

static skv_status get_bool(const cJSON *root, const char *path, const char *key, int32_t *out) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!it || cJSON_IsNull(it)) return SKV_OK;
    if (!cJSON_IsBool(it))
        return skv_set_error(SKV_ERR_FORMAT, "%s: field \"%s\" must be true or false", path, key);
    *out = cJSON_IsTrue(it) ? 1 : 0;
    return SKV_OK;
}

/* rope_scaling (older configs) or rope_parameters (newer): type, theta, factors. */
static skv_status parse_rope(const cJSON *root, const char *path, skv_config *cfg) {
    skv_status st;
    if ((st = get_float(root, path, "rope_theta", &cfg->info.rope_theta))) return st;
    const char *names[2] = {"rope_parameters", "rope_scaling"};
    for (int k = 0; k < 2; k++) {
        const cJSON *rp = cJSON_GetObjectItemCaseSensitive(root, names[k]);
        if (!rp || cJSON_IsNull(rp)) continue;
        if (!cJSON_IsObject(rp))
            return skv_set_error(SKV_ERR_FORMAT, "%s: field \"%s\" must be an object", path,
                                 names[k]);
        if ((st = get_float(rp, path, "rope_theta", &cfg->info.rope_theta))) return st;
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(rp, "rope_type");
        if (!ty) ty = cJSON_GetObjectItemCaseSensitive(rp, "type");
        const char *t = cJSON_IsString(ty) ? ty->valuestring : "default";
        if (!strcmp(t, "default")) {
            cfg->rope_type = SKV_ROPE_DEFAULT;
        } else if (!strcmp(t, "linear")) {
            cfg->rope_type = SKV_ROPE_LINEAR;
        } else if (!strcmp(t, "llama3")) {
            cfg->rope_type = SKV_ROPE_LLAMA3;
            cfg->rope_low_freq_factor = 1.0f;
            cfg->rope_high_freq_factor = 4.0f;
            cfg->rope_orig_ctx = 8192;
            if ((st = get_float(rp, path, "low_freq_factor", &cfg->rope_low_freq_factor)) ||
                (st = get_float(rp, path, "high_freq_factor", &cfg->rope_high_freq_factor)) ||
                (st = get_int(rp, path, "original_max_position_embeddings", &cfg->rope_orig_ctx, 0)))
                return st;
        } else {
            return skv_set_error(SKV_ERR_UNSUPPORTED,
                                 "%s: %s.rope_type \"%s\" is not implemented (supported: default, "
                                 "linear, llama3)",
                                 path, names[k], t);
        }
        if (cfg->rope_type != SKV_ROPE_DEFAULT) {
            cfg->rope_factor = 1.0f;
            if ((st = get_float(rp, path, "factor", &cfg->rope_factor))) return st;
            if (!(cfg->rope_factor > 0))
                return skv_set_error(SKV_ERR_FORMAT, "%s: %s.factor must be > 0", path, names[k]);
        }
    }
    if (!(cfg->info.rope_theta > 0) || !isfinite(cfg->info.rope_theta))
        return skv_set_error(SKV_ERR_FORMAT, "%s: rope_theta must be a positive number", path);
    return SKV_OK;
}

/* layer_types: LCKV's t(l) per layer, as the reference code writes it ("0_8_8_..._9", a string of
 * integers joined by '_') or as an array of integers. An array of strings is transformers' own
 * per-layer attention kind ("full_attention", ...), not LCKV: left to the sliding-window fields. */
static skv_status parse_layer_types(const cJSON *root, const char *path, skv_config *cfg) {
    const int32_t L = cfg->info.n_layer;
    for (int32_t l = 0; l < L; l++) cfg->layer_types[l] = l;
    cfg->lckv_iters = 9;
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, "layer_types");
    if (!it || cJSON_IsNull(it)) return SKV_OK;
    int32_t n = 0;
    if (cJSON_IsString(it)) {
        const char *s = it->valuestring;
        if (!*s) return SKV_OK; /* "" : all standard */
        while (*s) {
            if (*s < '0' || *s > '9') {
                const char *what = *s == 's' ? " (sliding-window layers, suffix 's', are not supported)" : "";
                return skv_set_error(SKV_ERR_FORMAT,
                                     "%s: field \"layer_types\" entry %d is not an integer at \"%.16s\"%s", path, n, s,
                                     what);
            }
            long v = 0;
            while (*s >= '0' && *s <= '9' && v <= 1000000) v = v * 10 + (*s++ - '0');
            if (*s == 's')
                return skv_set_error(SKV_ERR_UNSUPPORTED,
                                     "%s: field \"layer_types\" entry %d is sliding-window (suffix 's'), which is not "
                                     "supported",
                                     path, n);
            if (*s && *s != '_')
                return skv_set_error(SKV_ERR_FORMAT, "%s: field \"layer_types\" entry %d is not an integer", path, n);
            if (*s == '_' && !s[1])
                return skv_set_error(SKV_ERR_FORMAT, "%s: field \"layer_types\" ends with '_'", path);
            if (*s) s++;
            if (n < L) cfg->layer_types[n] = v > L ? L : (int32_t)v;
            n++;
        }
    } else if (cJSON_IsArray(it)) {
        const cJSON *e;
        int strings = 0;
        cJSON_ArrayForEach(e, it) strings |= cJSON_IsString(e);
        if (strings) return SKV_OK; /* transformers' attention kinds */
        cJSON_ArrayForEach(e, it) {
            if (!cJSON_IsNumber(e) || e->valuedouble != floor(e->valuedouble))
                return skv_set_error(SKV_ERR_FORMAT, "%s: field \"layer_types\" entry %d is not an integer", path, n);
            if (n < L) cfg->layer_types[n] = e->valuedouble < 0 ? -1 : e->valuedouble > L ? L : (int32_t)e->valuedouble;
            n++;
        }
    } else {
        return skv_set_error(SKV_ERR_FORMAT,
                             "%s: field \"layer_types\" must be a string like \"0_8_8_9\" or an array of integers",
                             path);
    }
    if (n != L)
        return skv_set_error(SKV_ERR_FORMAT, "%s: field \"layer_types\" has %d entries for %d layers (num_hidden_layers)",
                             path, n, L);
    for (int32_t l = 0; l < L; l++) {
        const int32_t t = cfg->layer_types[l];
        if (t < 0 || t >= L)
            return skv_set_error(SKV_ERR_FORMAT, "%s: field \"layer_types\" entry %d is %s, out of range 0..%d", path, l,
                                 t < 0 ? "negative" : "too large", L - 1);
        if (cfg->layer_types[t] != t)
            return skv_set_error(SKV_ERR_FORMAT,
                                 "%s: field \"layer_types\": layer %d uses the KV of layer %d, whose own entry is %d "
                                 "(t(t(i)) must equal t(i))",
                                 path, l, t, cfg->layer_types[t]);
        if (t != l) cfg->lckv = 1;
    }
    int32_t fp = -1, bp = -1;
    skv_status st;
    if ((st = get_int(root, path, "forward_passes", &fp, 0)) || (st = get_int(root, path, "backward_passes", &bp, 0)))
        return st;
    if (fp >= 0 && bp >= 1) cfg->lckv_iters = fp + bp;
    return SKV_OK;
}

static skv_status parse(const cJSON *root, const char *path, skv_config *cfg) {
    skv_model_info *in = &cfg->info;
    skv_status st;
    if (!cJSON_IsObject(root))
        return skv_set_error(SKV_ERR_FORMAT, "%s: top level must be a JSON object", path);

    /* Architecture: architectures[0], else model_type. */
    const char *arch = NULL;
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    if (cJSON_IsArray(archs) && cJSON_GetArraySize(archs) > 0 &&
        cJSON_IsString(cJSON_GetArrayItem(archs, 0)))
        arch = cJSON_GetArrayItem(archs, 0)->valuestring;
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (!arch && cJSON_IsString(mt)) arch = mt->valuestring;
    if (!arch) return skv_set_error(SKV_ERR_FORMAT, "%s: missing field \"architectures\"", path);
    if (!strcmp(arch, "LlamaForCausalLM") || !strcmp(arch, "llama"))
        in->arch = SKV_ARCH_LLAMA;
    else if (!strcmp(arch, "Qwen2ForCausalLM") || !strcmp(arch, "qwen2"))
        in->arch = SKV_ARCH_QWEN2;
    else if (!strcmp(arch, "MistralForCausalLM") || !strcmp(arch, "mistral"))
        in->arch = SKV_ARCH_MISTRAL;
    else
        return skv_set_error(SKV_ERR_UNSUPPORTED,
                             "%s: architecture \"%s\" is not supported (supported: "
                             "LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM)",
                             path, arch);

    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (cJSON_IsString(act) && strcmp(act->valuestring, "silu") != 0)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "%s: hidden_act \"%s\" is not supported (silu)",
                             path, act->valuestring);

    in->head_dim = 0;
    in->n_kv_head = 0;
    in->bos_id = in->eos_id = -1;
    in->n_ctx = 2048;
    in->rms_eps = 1e-6f;
    in->rope_theta = 10000.0f;
    /* Llama, Qwen2 and Mistral configs all default to untied embeddings. */
    in->tied_embeddings = 0;
    if ((st = get_int(root, path, "vocab_size", &in->n_vocab, 1)) ||
        (st = get_int(root, path, "hidden_size", &in->dim, 1)) ||
        (st = get_int(root, path, "intermediate_size", &in->ffn_dim, 1)) ||
        (st = get_int(root, path, "num_hidden_layers", &in->n_layer, 1)) ||
        (st = get_int(root, path, "num_attention_heads", &in->n_head, 1)) ||
        (st = get_int(root, path, "num_key_value_heads", &in->n_kv_head, 0)) ||
        (st = get_int(root, path, "head_dim", &in->head_dim, 0)) ||
        (st = get_int(root, path, "max_position_embeddings", &in->n_ctx, 0)) ||
        (st = get_int(root, path, "bos_token_id", &in->bos_id, 0)) ||
        (st = get_int(root, path, "eos_token_id", &in->eos_id, 0)) ||
        (st = get_float(root, path, "rms_norm_eps", &in->rms_eps)) ||
        (st = get_bool(root, path, "tie_word_embeddings", &in->tied_embeddings)))
        return st;
    if (in->n_kv_head == 0) in->n_kv_head = in->n_head;

    int32_t attn_bias = 0, mlp_bias = 0;
    if ((st = get_bool(root, path, "attention_bias", &attn_bias)) ||
        (st = get_bool(root, path, "mlp_bias", &mlp_bias)))
        return st;
    if (mlp_bias)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "%s: mlp_bias true is not supported", path);
    /* Qwen2 always has q/k/v biases and no o_proj bias; Llama's attention_bias covers q/k/v/o. */
    in->qkv_bias = in->arch == SKV_ARCH_QWEN2 ? 1 : attn_bias;
    cfg->attn_out_bias = in->arch == SKV_ARCH_QWEN2 ? 0 : attn_bias;

    if (in->arch == SKV_ARCH_MISTRAL || in->arch == SKV_ARCH_QWEN2) {
        int32_t sw = 0, use_sw = in->arch == SKV_ARCH_MISTRAL;
        if ((st = get_int(root, path, "sliding_window", &sw, 0)) ||
            (st = get_bool(root, path, "use_sliding_window", &use_sw)))
            return st;
        in->sliding_window = use_sw && sw > 0 ? sw : 0;
        if (in->arch == SKV_ARCH_QWEN2 && in->sliding_window)
            return skv_set_error(SKV_ERR_UNSUPPORTED,
                                 "%s: use_sliding_window true is not supported for Qwen2", path);
    }

    if ((st = parse_rope(root, path, cfg))) return st;

    /* Sanity of what was read. */
    struct { const char *name; int32_t v; } pos[] = {
        {"vocab_size", in->n_vocab}, {"hidden_size", in->dim},
        {"intermediate_size", in->ffn_dim}, {"num_hidden_layers", in->n_layer},
        {"num_attention_heads", in->n_head}, {"num_key_value_heads", in->n_kv_head},
        {"max_position_embeddings", in->n_ctx}};
    for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++)
        if (pos[i].v <= 0)
            return skv_set_error(SKV_ERR_FORMAT, "%s: field \"%s\" must be > 0 (got %d)", path,
                                 pos[i].name, pos[i].v);
    if (in->n_head % in->n_kv_head != 0)
        return skv_set_error(SKV_ERR_FORMAT,
                             "%s: num_attention_heads (%d) is not a multiple of "
                             "num_key_value_heads (%d)",
                             path, in->n_head, in->n_kv_head);
    if (in->head_dim == 0) {
        if (in->dim % in->n_head != 0)
            return skv_set_error(SKV_ERR_FORMAT,
                                 "%s: hidden_size %d not divisible by num_attention_heads %d", path,
                                 in->dim, in->n_head);
        in->head_dim = in->dim / in->n_head;
    }
    if (in->head_dim <= 0 || in->head_dim % 2 != 0 || in->head_dim > 512)
        return skv_set_error(SKV_ERR_FORMAT, "%s: head_dim must be even and in 2..512 (got %d)",
                             path, in->head_dim);
    if (!(in->rms_eps > 0))
        return skv_set_error(SKV_ERR_FORMAT, "%s: rms_norm_eps must be > 0", path);
    if (in->n_layer > SKV_MAX_LAYERS)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "%s: num_hidden_layers %d is more than %d", path, in->n_layer,
                             SKV_MAX_LAYERS);
    if ((st = parse_layer_types(root, path, cfg))) return st;
    if (cfg->lckv && in->sliding_window)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "%s: layer_types with a sliding window is not supported", path);
    if (in->bos_id >= in->n_vocab) in->bos_id = -1;
    if (in->eos_id >= in->n_vocab) in->eos_id = -1;
    return SKV_OK;
}

skv_status skv_config_parse(const char *text, const char *path, skv_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    const char *err_at = NULL;
    cJSON *root = cJSON_ParseWithOpts(text, &err_at, 1);
    if (!root) {
        long off = err_at ? (long)(err_at - text) : -1;
        return skv_set_error(SKV_ERR_FORMAT, "%s: invalid JSON near byte %ld", path, off);
    }
    skv_status st = parse(root, path, cfg);
    cJSON_Delete(root);
    return st;
}

skv_status skv_config_load(const char *dir, skv_config *cfg) {
    char path[4096];
    skv_path_join(path, sizeof path, dir, "config.json");
    memset(cfg, 0, sizeof *cfg);
    char *text = NULL;
    skv_status st = skv_read_file(path, &text, NULL);
    if (st) return st;
    st = skv_config_parse(text, path, cfg);
    free(text);
    return st;
}
