/*
 * augment.c — cache augmentation (Liu et al., arXiv 2412.17747; ../shared/docs/techniques.md
 * §4): a coprocessor (the base model's layout, trained by train/augment.py) runs its n_latent
 * soft embeddings over the base context's cache as read-only past and returns latents, which
 * the base consumes as input embeddings. Positions: latents at T .. T+n_latent-1, the next
 * token at T+n_latent (train/augment.py lays its traces out alike).
 */
#include "context/context.h"
#include "io/safetensors.h"

#include <cjson/cJSON.h>

struct skv_augment {
    skv_model *m;          /* the coprocessor */
    skv_context *c;        /* its scratch context (created at the first use) */
    float *soft;           /* (n_latent, dim) */
    float *z;              /* (n_latent, dim) scratch for apply */
    int32_t n_latent, dim, normed;
    int32_t copy;          /* 1: read a copy of the base cache (skv_context_copy_cache), not a read-only past */
    skv_augment_usage u;
};

/* An integer field of augment.json, refused naming the field when absent or not a number. */
static skv_status json_int(const cJSON *root, const char *path, const char *key, int32_t *out) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!cJSON_IsNumber(it)) return skv_set_error(SKV_ERR_FORMAT, "%s: field %s missing or not a number", path, key);
    *out = (int32_t)it->valuedouble;
    return SKV_OK;
}

static skv_status check_field(const char *path, const char *key, int32_t have, int32_t want, const char *whose) {
    if (have == want) return SKV_OK;
    return skv_set_error(SKV_ERR_SHAPE, "%s: %s is %d but the base model's is %d (%s)", path, key, have, want, whose);
}

/* augment.json: the base shape it was trained for must be the base given; latent kind. */
static skv_status read_json(skv_augment *a, const char *dir, const skv_model_info *bi) {
    char path[4096];
    skv_path_join(path, sizeof path, dir, "augment.json");
    char *text = NULL;
    size_t len = 0;
    skv_status st = skv_read_file(path, &text, &len);
    if (st) return st;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return skv_set_error(SKV_ERR_FORMAT, "%s: not a JSON object", path);
    }
    int32_t v = 0;
    static const char *keys[] = {"hidden_size", "num_hidden_layers", "num_key_value_heads", "head_dim", "vocab_size"};
    const int32_t want[] = {bi->dim, bi->n_layer, bi->n_kv_head, bi->head_dim, bi->n_vocab};
    if ((st = json_int(root, path, "n_latent", &a->n_latent))) goto done;
    if (a->n_latent < 1) {
        st = skv_set_error(SKV_ERR_FORMAT, "%s: n_latent %d must be >= 1", path, a->n_latent);
        goto done;
    }
    for (int i = 0; i < 5; i++) {
        if ((st = json_int(root, path, keys[i], &v))) goto done;
        if ((st = check_field(path, keys[i], v, want[i], "the coprocessor was trained for another base"))) goto done;
    }
    const cJSON *lat = cJSON_GetObjectItemCaseSensitive(root, "latent");
    a->normed = 1;
    if (lat && (!cJSON_IsString(lat) || (strcmp(lat->valuestring, "hidden_normed") && strcmp(lat->valuestring, "hidden")))) {
        st = skv_set_error(SKV_ERR_FORMAT, "%s: latent must be \"hidden_normed\" or \"hidden\"", path);
        goto done;
    }
    if (lat) a->normed = !strcmp(lat->valuestring, "hidden_normed");
    const cJSON *pos = cJSON_GetObjectItemCaseSensitive(root, "positions");
    if (pos && (!cJSON_IsString(pos) || strcmp(pos->valuestring, "advance"))) {
        st = skv_set_error(SKV_ERR_UNSUPPORTED, "%s: positions must be \"advance\" (latents take T .. T+n_latent-1)", path);
        goto done;
    }
done:
    cJSON_Delete(root);
    return st;
}

/* soft.safetensors: soft_embeddings (n_latent, dim) in f32, f16 or bf16. */
static skv_status read_soft(skv_augment *a, const char *dir) {
    char path[4096];
    skv_path_join(path, sizeof path, dir, "soft.safetensors");
    char *buf = NULL;
    size_t len = 0;
    skv_status st = skv_read_file(path, &buf, &len);
    if (st) return st;
    skv_st_set *set = NULL;
    if ((st = skv_st_parse_buffer(buf, len, path, &set))) {
        free(buf);
        return st;
    }
    const skv_st_tensor *t = skv_st_find(set, "soft_embeddings");
    if (!t) st = skv_set_error(SKV_ERR_FORMAT, "%s: no tensor soft_embeddings", path);
    else if (t->n_dims != 2 || t->shape[1] != a->dim)
        st = skv_set_error(SKV_ERR_SHAPE, "%s: soft_embeddings must be (n_latent, %d)", path, a->dim);
    else if (t->shape[0] != a->n_latent)
        st = skv_set_error(SKV_ERR_SHAPE, "%s: soft_embeddings has %lld rows but augment.json's n_latent is %d", path,
                           (long long)t->shape[0], a->n_latent);
    else if (!(a->soft = malloc(sizeof(float) * (size_t)t->n_elem)))
        st = skv_set_error(SKV_ERR_NOMEM, "out of memory");
    else
        for (int64_t i = 0; i < t->n_elem; i++) {
            const uint16_t *h = t->data;
            a->soft[i] = t->dtype == SKV_DTYPE_F32 ? ((const float *)t->data)[i]
                       : t->dtype == SKV_DTYPE_BF16 ? skv_bf16_to_f32(h[i]) : skv_f16_to_f32(h[i]);
        }
    skv_st_close(set);
    free(buf);
    return st;
}

skv_status skv_augment_load(const char *dir, const skv_model *base, skv_model_params params, skv_augment **out) {
    *out = NULL;
    if (!dir || !base) return skv_set_error(SKV_ERR_ARG, "augment: no directory or base model");
    const skv_model_info *bi = skv_model_get_info(base);
    skv_augment *a = calloc(1, sizeof *a);
    if (!a) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    a->dim = bi->dim;
    skv_status st = read_json(a, dir, bi);
    if (!st) st = read_soft(a, dir);
    if (!st) st = skv_model_load(dir, params, &a->m);
    if (!st) { /* the coprocessor reads the base's cache and writes the base's embeddings */
        const skv_model_info *ci = skv_model_get_info(a->m);
        char path[4096];
        skv_path_join(path, sizeof path, dir, "config.json");
        const char *why = "the coprocessor must have the base's shape";
        if (!st) st = check_field(path, "hidden_size", ci->dim, bi->dim, why);
        if (!st) st = check_field(path, "num_hidden_layers", ci->n_layer, bi->n_layer, why);
        if (!st) st = check_field(path, "num_key_value_heads", ci->n_kv_head, bi->n_kv_head, why);
        if (!st) st = check_field(path, "head_dim", ci->head_dim, bi->head_dim, why);
        if (!st && skv_model_n_cache_layers(a->m) != skv_model_n_cache_layers(base))
            st = skv_set_error(SKV_ERR_SHAPE, "%s: %d cache layers, the base model has %d", path,
                               skv_model_n_cache_layers(a->m), skv_model_n_cache_layers(base));
    }
    if (!st && !(a->z = malloc(sizeof(float) * (size_t)a->n_latent * a->dim)))
        st = skv_set_error(SKV_ERR_NOMEM, "out of memory");
    if (st) {
        skv_augment_free(a);
        return st;
    }
    *out = a;
    return SKV_OK;
}

void skv_augment_free(skv_augment *a) {
    if (!a) return;
    skv_context_free(a->c);
    skv_model_free(a->m);
    free(a->soft);
    free(a->z);
    free(a);
}

int32_t skv_augment_n_latent(const skv_augment *a) { return a ? a->n_latent : 0; }

void skv_augment_set_copy(skv_augment *a, int copy) { a->copy = copy != 0; }

/* The scratch context on the base context's backend (re-created when that changes). */
static skv_status scratch_for(skv_augment *a, const skv_context *c) {
    const skv_backend want = strcmp(c->be->name, "cpu") ? SKV_BACKEND_CUDA : SKV_BACKEND_CPU;
    if (a->c && a->c->be == c->be) return SKV_OK;
    skv_context_free(a->c);
    a->c = NULL;
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = skv_model_get_info(a->m)->n_ctx;
    cp.n_batch = a->n_latent;
    cp.backend = want;
    return skv_context_init(a->m, cp, &a->c);
}

skv_status skv_augment_latents(skv_augment *a, const skv_context *c, float *z) {
    const int32_t T = skv_context_n_past(c);
    if (T < 1) return skv_set_error(SKV_ERR_ARG, "augment: the base context is empty");
    const int32_t room = skv_model_get_info(a->m)->n_ctx;
    if (T + a->n_latent > room)
        return skv_set_error(SKV_ERR_RANGE, "augment: %d tokens + %d latents exceed the coprocessor's context of %d",
                             T, a->n_latent, room);
    skv_status st = scratch_for(a, c);
    if (st) return st;
    const double t0 = skv_time_now();
    /* the base cache as the coprocessor's past: read in place where the backend can (CPU), else
     * copied where it lives (CUDA has no read-only past: a device-to-device copy) */
    const int copy = a->copy || !c->be->set_past;
    if (copy && T + a->n_latent > c->n_ctx)
        return skv_set_error(SKV_ERR_RANGE, "augment: %d tokens + %d latents exceed the base context of %d", T,
                             a->n_latent, c->n_ctx);
    st = copy ? skv_context_copy_cache(a->c, c) : skv_context_set_past(a->c, c);
    if (st) return st;
    const skv_batch b = {.embd = a->soft, .n = a->n_latent, .all = 1,
                         .hidden_normed = a->normed ? z : NULL, .hidden = a->normed ? NULL : z};
    st = skv_decode_ex(a->c, &b);
    skv_kv_usage u;
    skv_context_kv_usage(a->c, &u);
    a->u.kv_bytes = u.bytes;
    /* back to empty, the past released (c may change after this) */
    skv_status st2 = skv_context_truncate(a->c, copy ? 0 : T);
    if (!st2 && !copy) st2 = skv_context_set_past(a->c, NULL);
    a->u.seconds_cop += skv_time_now() - t0;
    return st ? st : st2;
}

skv_status skv_augment_apply(skv_augment *a, skv_context *c, float *logits) {
    skv_status st = skv_augment_latents(a, c, a->z);
    if (st) return st;
    const double t0 = skv_time_now();
    const skv_batch b = {.embd = a->z, .n = a->n_latent, .logits = logits};
    st = skv_decode_ex(c, &b);
    a->u.seconds_base += skv_time_now() - t0;
    a->u.runs++;
    return st;
}

void skv_augment_get_usage(const skv_augment *a, skv_augment_usage *u) {
    *u = a->u;
    u->weight_bytes = a->c ? skv_context_weight_bytes(a->c) : skv_model_get_info(a->m)->weight_bytes;
}
