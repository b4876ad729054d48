/*
 * tiny_model.c — random-weight model writer and naive reference (see tiny_model.h). The
 * reference follows the transformers formulas literally, in double precision, sharing no code
 * with the engine.
 */
#include "tiny_model.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct tmat {
    char name[96];
    int rows, cols;   /* cols = 0: a vector of rows entries */
    double *v;        /* values as rounded to the stored dtype */
} tmat;

struct tiny_model {
    tiny_spec s;
    tmat *mats;
    int n_mats;
};

static uint32_t rng_next(uint32_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

static uint16_t to_bf16(float f) {
    union { float f; uint32_t u; } v = {.f = f};
    return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}
static float from_bf16(uint16_t h) {
    union { uint32_t u; float f; } v = {.u = (uint32_t)h << 16};
    return v.f;
}
/* f16 via _Float16 (gcc, x86-64) */
static uint16_t to_f16(float f) {
    _Float16 h = (_Float16)f;
    uint16_t u;
    memcpy(&u, &h, 2);
    return u;
}
static float from_f16(uint16_t u) {
    _Float16 h;
    memcpy(&h, &u, 2);
    return (float)h;
}

/* t(l) of a spec's layer_types (l itself without one or past its end) */
static int tiny_src(const tiny_spec *s, int l) {
    const char *p = s->layer_types;
    if (!p) return l;
    for (int i = 0; i < l && p; i++) p = strchr(p, '_'), p = p ? p + 1 : NULL;
    return p ? atoi(p) : l;
}

static tmat *add(tiny_model *t, const char *name, int rows, int cols, double scale, uint32_t *rng) {
    tmat *m = &t->mats[t->n_mats++];
    snprintf(m->name, sizeof m->name, "%s", name);
    m->rows = rows;
    m->cols = cols;
    size_t n = (size_t)rows * (cols ? cols : 1);
    m->v = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++)
        m->v[i] = (float)(((double)(rng_next(rng) >> 8) / 16777216.0 * 2 - 1) * scale);
    return m;
}

/* Round every value to what the stored dtype keeps, so the reference sees what the file holds. */
static void round_to_dtype(tiny_model *t) {
    for (int k = 0; k < t->n_mats; k++) {
        tmat *m = &t->mats[k];
        size_t n = (size_t)m->rows * (m->cols ? m->cols : 1);
        for (size_t i = 0; i < n; i++) {
            float x = (float)m->v[i];
            if (!strcmp(t->s.dtype, "BF16")) x = from_bf16(to_bf16(x));
            else if (!strcmp(t->s.dtype, "F16")) x = from_f16(to_f16(x));
            m->v[i] = x;
        }
    }
}

static const tmat *get(const tiny_model *t, const char *name) {
    for (int i = 0; i < t->n_mats; i++)
        if (!strcmp(t->mats[i].name, name)) return &t->mats[i];
    return NULL;
}

int tw_write(const char *path, const tw_tensor *t, int n) {
    cJSON *h = cJSON_CreateObject();
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        cJSON *e = cJSON_AddObjectToObject(h, t[i].name);
        cJSON_AddStringToObject(e, "dtype", t[i].dtype);
        cJSON *sh = cJSON_AddArrayToObject(e, "shape");
        for (int d = 0; d < t[i].nd; d++) cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t[i].shape[d]));
        cJSON *o = cJSON_AddArrayToObject(e, "data_offsets");
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)(off + t[i].nbytes)));
        off += t[i].nbytes;
    }
    char *js = cJSON_PrintUnformatted(h);
    cJSON_Delete(h);
    size_t hl = strlen(js), pad = (8 - hl % 8) % 8;
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(js);
        return -1;
    }
    uint64_t len = hl + pad;
    uint8_t le[8];
    for (int i = 0; i < 8; i++) le[i] = (uint8_t)(len >> (8 * i));
    fwrite(le, 1, 8, f);
    fwrite(js, 1, hl, f);
    for (size_t i = 0; i < pad; i++) fputc(' ', f);
    for (int i = 0; i < n; i++) fwrite(t[i].data, 1, t[i].nbytes, f);
    free(js);
    return fclose(f);
}

static void *encode(const tmat *m, const char *dtype, size_t *nbytes) {
    size_t n = (size_t)m->rows * (m->cols ? m->cols : 1);
    if (!strcmp(dtype, "F32")) {
        float *o = malloc(n * 4);
        for (size_t i = 0; i < n; i++) o[i] = (float)m->v[i];
        *nbytes = n * 4;
        return o;
    }
    uint16_t *o = malloc(n * 2);
    for (size_t i = 0; i < n; i++) o[i] = !strcmp(dtype, "BF16") ? to_bf16((float)m->v[i]) : to_f16((float)m->v[i]);
    *nbytes = n * 2;
    return o;
}

static int write_config(const char *dir, const tiny_spec *s) {
    char path[1024];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fprintf(f, "{\n  \"architectures\": [\"%s\"],\n  \"hidden_act\": \"silu\",\n", s->arch);
    fprintf(f, "  \"vocab_size\": %d,\n  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n", s->vocab, s->dim, s->ffn);
    fprintf(f, "  \"num_hidden_layers\": %d,\n  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n", s->layers, s->heads, s->kv_heads);
    if (s->head_dim) fprintf(f, "  \"head_dim\": %d,\n", s->head_dim);
    fprintf(f, "  \"max_position_embeddings\": %d,\n  \"rms_norm_eps\": %g,\n  \"rope_theta\": %g,\n", s->n_ctx, s->rms_eps, s->rope_theta);
    if (s->rope_linear > 0) fprintf(f, "  \"rope_scaling\": {\"type\": \"linear\", \"factor\": %g},\n", s->rope_linear);
    if (!strcmp(s->arch, "LlamaForCausalLM")) fprintf(f, "  \"attention_bias\": %s,\n", s->attn_bias ? "true" : "false");
    if (!strcmp(s->arch, "MistralForCausalLM")) {
        if (s->sliding_window) fprintf(f, "  \"sliding_window\": %d,\n", s->sliding_window);
        else fprintf(f, "  \"sliding_window\": null,\n");
    }
    fprintf(f, "  \"bos_token_id\": 1,\n  \"eos_token_id\": 2,\n  \"tie_word_embeddings\": %s,\n", s->tied ? "true" : "false");
    if (s->layer_types) fprintf(f, "  \"layer_types\": \"%s\",\n", s->layer_types);
    fprintf(f, "  \"torch_dtype\": \"float32\"\n}\n");
    return fclose(f);
}

tiny_model *tiny_write(const char *dir, const tiny_spec *spec) {
    mkdir(dir, 0755);
    tiny_model *t = calloc(1, sizeof *t);
    t->s = *spec;
    const tiny_spec *s = &t->s;
    const int hd = s->head_dim ? s->head_dim : s->dim / s->heads;
    const int QD = s->heads * hd, KD = s->kv_heads * hd;
    const int qkv_bias = !strcmp(s->arch, "Qwen2ForCausalLM") || s->attn_bias;
    const int o_bias = !strcmp(s->arch, "LlamaForCausalLM") && s->attn_bias;
    t->mats = calloc((size_t)(4 + 14 * s->layers), sizeof(tmat));
    uint32_t rng = spec->seed ? spec->seed : 12345;
    char nm[96];
    add(t, "model.embed_tokens.weight", s->vocab, s->dim, 1.0, &rng);
    if (!s->tied) add(t, "lm_head.weight", s->vocab, s->dim, 0.5, &rng);
    tmat *fn = add(t, "model.norm.weight", s->dim, 0, 0.2, &rng);
    for (int i = 0; i < s->dim; i++) fn->v[i] += 1.0;
    for (int l = 0; l < s->layers; l++) {
#define N(x) (snprintf(nm, sizeof nm, "model.layers.%d.%s", l, x), nm)
        tmat *a = add(t, N("input_layernorm.weight"), s->dim, 0, 0.2, &rng);
        tmat *b = add(t, N("post_attention_layernorm.weight"), s->dim, 0, 0.2, &rng);
        for (int i = 0; i < s->dim; i++) a->v[i] += 1.0, b->v[i] += 1.0;
        double ws = 1.0 / sqrt((double)s->dim);
        add(t, N("self_attn.q_proj.weight"), QD, s->dim, 2 * ws, &rng);
        const int own = tiny_src(s, l) == l || s->kv_all;
        if (own) add(t, N("self_attn.k_proj.weight"), KD, s->dim, 2 * ws, &rng);
        if (own) add(t, N("self_attn.v_proj.weight"), KD, s->dim, ws, &rng);
        add(t, N("self_attn.o_proj.weight"), s->dim, QD, ws, &rng);
        add(t, N("mlp.gate_proj.weight"), s->ffn, s->dim, ws, &rng);
        add(t, N("mlp.up_proj.weight"), s->ffn, s->dim, ws, &rng);
        add(t, N("mlp.down_proj.weight"), s->dim, s->ffn, 1.0 / sqrt((double)s->ffn), &rng);
        if (qkv_bias) {
            add(t, N("self_attn.q_proj.bias"), QD, 0, 0.3, &rng);
            if (own) add(t, N("self_attn.k_proj.bias"), KD, 0, 0.3, &rng);
            if (own) add(t, N("self_attn.v_proj.bias"), KD, 0, 0.3, &rng);
        }
        if (o_bias) add(t, N("self_attn.o_proj.bias"), s->dim, 0, 0.3, &rng);
#undef N
    }
    round_to_dtype(t);
    if (write_config(dir, s)) {
        tiny_free(t);
        return NULL;
    }
    /* Serialise: one file, or two shards (first half / second half of the tensors) + index. */
    tw_tensor *tw = calloc((size_t)t->n_mats, sizeof *tw);
    void **bufs = calloc((size_t)t->n_mats, sizeof *bufs);
    for (int i = 0; i < t->n_mats; i++) {
        tw[i].name = t->mats[i].name;
        tw[i].dtype = s->dtype;
        tw[i].nd = t->mats[i].cols ? 2 : 1;
        tw[i].shape[0] = t->mats[i].rows;
        tw[i].shape[1] = t->mats[i].cols;
        bufs[i] = encode(&t->mats[i], s->dtype, &tw[i].nbytes);
        tw[i].data = bufs[i];
    }
    char path[1024];
    int rc = 0;
    if (!s->sharded) {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        rc = tw_write(path, tw, t->n_mats);
    } else {
        int half = t->n_mats / 2;
        snprintf(path, sizeof path, "%s/model-00001-of-00002.safetensors", dir);
        rc |= tw_write(path, tw, half);
        snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", dir);
        rc |= tw_write(path, tw + half, t->n_mats - half);
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
        FILE *f = fopen(path, "w");
        fprintf(f, "{\"metadata\": {}, \"weight_map\": {\n");
        for (int i = 0; i < t->n_mats; i++)
            fprintf(f, "  \"%s\": \"model-0000%d-of-00002.safetensors\"%s\n", tw[i].name, i < half ? 1 : 2,
                    i + 1 < t->n_mats ? "," : "");
        fprintf(f, "}}\n");
        rc |= fclose(f);
    }
    for (int i = 0; i < t->n_mats; i++) free(bufs[i]);
    free(bufs);
    free(tw);
    if (rc) {
        tiny_free(t);
        return NULL;
    }
    return t;
}

void tiny_free(tiny_model *t) {
    if (!t) return;
    for (int i = 0; i < t->n_mats; i++) free(t->mats[i].v);
    free(t->mats);
    free(t);
}

/* y[rows] = W x (+ b) */
static void lin(const tmat *w, const tmat *b, const double *x, double *y) {
    for (int r = 0; r < w->rows; r++) {
        double s = b ? b->v[r] : 0;
        for (int c = 0; c < w->cols; c++) s += w->v[(size_t)r * w->cols + c] * x[c];
        y[r] = s;
    }
}

static void rmsnorm(const double *x, const tmat *w, int n, double eps, double *y) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    double sc = 1.0 / sqrt(ss / n + eps);
    for (int i = 0; i < n; i++) y[i] = w->v[i] * x[i] * sc;
}

static void rope(double *v, int hd, int pos, double theta, double linear) {
    for (int i = 0; i < hd / 2; i++) {
        double inv = pow(theta, -2.0 * i / hd);
        if (linear > 0) inv /= linear;
        double a = v[i], b = v[i + hd / 2], c = cos(pos * inv), s = sin(pos * inv);
        v[i] = a * c - b * s;
        v[i + hd / 2] = b * c + a * s;
    }
}

void tiny_reference(const tiny_model *t, const int32_t *ids, int n, double *logits) {
    const tiny_spec *s = &t->s;
    const int D = s->dim, hd = s->head_dim ? s->head_dim : s->dim / s->heads;
    const int QD = s->heads * hd, KD = s->kv_heads * hd, G = s->heads / s->kv_heads;
    double *x = calloc((size_t)n * D, sizeof(double)), *h = malloc(sizeof(double) * (size_t)(D > s->ffn ? D : s->ffn) * 4);
    double *q = malloc(sizeof(double) * (size_t)n * QD), *k = malloc(sizeof(double) * (size_t)n * KD);
    double *v = malloc(sizeof(double) * (size_t)n * KD), *att = malloc(sizeof(double) * (size_t)QD);
    double *p = malloc(sizeof(double) * (size_t)n), *g = malloc(sizeof(double) * (size_t)s->ffn);
    double *u = malloc(sizeof(double) * (size_t)s->ffn), *o = malloc(sizeof(double) * (size_t)D);
    char nm[96];
    const tmat *E = get(t, "model.embed_tokens.weight");
    for (int i = 0; i < n; i++) memcpy(x + (size_t)i * D, E->v + (size_t)ids[i] * D, sizeof(double) * (size_t)D);
    for (int l = 0; l < s->layers; l++) {
#define W(x) (snprintf(nm, sizeof nm, "model.layers.%d.%s", l, x), get(t, nm))
        for (int i = 0; i < n; i++) {
            rmsnorm(x + (size_t)i * D, W("input_layernorm.weight"), D, s->rms_eps, h);
            lin(W("self_attn.q_proj.weight"), W("self_attn.q_proj.bias"), h, q + (size_t)i * QD);
            lin(W("self_attn.k_proj.weight"), W("self_attn.k_proj.bias"), h, k + (size_t)i * KD);
            lin(W("self_attn.v_proj.weight"), W("self_attn.v_proj.bias"), h, v + (size_t)i * KD);
            for (int hh = 0; hh < s->heads; hh++) rope(q + (size_t)i * QD + hh * hd, hd, i, s->rope_theta, s->rope_linear);
            for (int gg = 0; gg < s->kv_heads; gg++) rope(k + (size_t)i * KD + gg * hd, hd, i, s->rope_theta, s->rope_linear);
        }
        for (int i = 0; i < n; i++) {
            for (int hh = 0; hh < s->heads; hh++) {
                int gg = hh / G;
                double mx = -1e300, sum = 0;
                for (int j = 0; j <= i; j++) {
                    int visible = !s->sliding_window || i - j < s->sliding_window;
                    double d = 0;
                    for (int e = 0; e < hd; e++) d += q[(size_t)i * QD + hh * hd + e] * k[(size_t)j * KD + gg * hd + e];
                    p[j] = visible ? d / sqrt((double)hd) : -INFINITY;
                    if (p[j] > mx) mx = p[j];
                }
                for (int j = 0; j <= i; j++) sum += (p[j] = exp(p[j] - mx));
                for (int e = 0; e < hd; e++) {
                    double a = 0;
                    for (int j = 0; j <= i; j++) a += p[j] / sum * v[(size_t)j * KD + gg * hd + e];
                    att[hh * hd + e] = a;
                }
            }
            lin(W("self_attn.o_proj.weight"), W("self_attn.o_proj.bias"), att, o);
            for (int e = 0; e < D; e++) x[(size_t)i * D + e] += o[e];
            rmsnorm(x + (size_t)i * D, W("post_attention_layernorm.weight"), D, s->rms_eps, h);
            lin(W("mlp.gate_proj.weight"), NULL, h, g);
            lin(W("mlp.up_proj.weight"), NULL, h, u);
            for (int e = 0; e < s->ffn; e++) g[e] = g[e] / (1 + exp(-g[e])) * u[e];
            lin(W("mlp.down_proj.weight"), NULL, g, o);
            for (int e = 0; e < D; e++) x[(size_t)i * D + e] += o[e];
        }
#undef W
    }
    const tmat *head = s->tied ? E : get(t, "lm_head.weight");
    for (int i = 0; i < n; i++) {
        rmsnorm(x + (size_t)i * D, get(t, "model.norm.weight"), D, s->rms_eps, h);
        lin(head, NULL, h, logits + (size_t)i * s->vocab);
    }
    free(x); free(h); free(q); free(k); free(v); free(att); free(p); free(g); free(u); free(o);
}

void tiny_reference_seq(const tiny_model *t, const int32_t *ids, int n, double *logits) {
    const tiny_spec *s = &t->s;
    const int D = s->dim, hd = s->head_dim ? s->head_dim : s->dim / s->heads, L = s->layers;
    const int QD = s->heads * hd, KD = s->kv_heads * hd, G = s->heads / s->kv_heads;
    double *x = malloc(sizeof(double) * (size_t)D), *h = malloc(sizeof(double) * (size_t)(D > s->ffn ? D : s->ffn));
    double *q = malloc(sizeof(double) * (size_t)QD), *att = malloc(sizeof(double) * (size_t)QD);
    double *K = calloc((size_t)L * n * KD, sizeof(double)), *V = calloc((size_t)L * n * KD, sizeof(double));
    double *p = malloc(sizeof(double) * (size_t)n), *g = malloc(sizeof(double) * (size_t)s->ffn);
    double *u = malloc(sizeof(double) * (size_t)s->ffn), *o = malloc(sizeof(double) * (size_t)D);
    char nm[96];
    const tmat *E = get(t, "model.embed_tokens.weight");
    for (int i = 0; i < n; i++) {
        memcpy(x, E->v + (size_t)ids[i] * D, sizeof(double) * (size_t)D);
        for (int l = 0; l < L; l++) {
#define W(x) (snprintf(nm, sizeof nm, "model.layers.%d.%s", l, x), get(t, nm))
            const int src = tiny_src(s, l), nvis = src > l ? i : i + 1;
            rmsnorm(x, W("input_layernorm.weight"), D, s->rms_eps, h);
            lin(W("self_attn.q_proj.weight"), W("self_attn.q_proj.bias"), h, q);
            for (int hh = 0; hh < s->heads; hh++) rope(q + hh * hd, hd, i, s->rope_theta, s->rope_linear);
            if (src == l) {
                double *k = K + ((size_t)l * n + i) * KD, *v = V + ((size_t)l * n + i) * KD;
                lin(W("self_attn.k_proj.weight"), W("self_attn.k_proj.bias"), h, k);
                lin(W("self_attn.v_proj.weight"), W("self_attn.v_proj.bias"), h, v);
                for (int gg = 0; gg < s->kv_heads; gg++) rope(k + gg * hd, hd, i, s->rope_theta, s->rope_linear);
            }
            const double *k = K + (size_t)src * n * KD, *v = V + (size_t)src * n * KD;
            for (int hh = 0; hh < s->heads; hh++) {
                const int gg = hh / G;
                double mx = -1e300, sum = 0;
                for (int j = 0; j < nvis; j++) {
                    double d = 0;
                    for (int e = 0; e < hd; e++) d += q[hh * hd + e] * k[(size_t)j * KD + gg * hd + e];
                    p[j] = d / sqrt((double)hd);
                    if (p[j] > mx) mx = p[j];
                }
                for (int j = 0; j < nvis; j++) sum += (p[j] = exp(p[j] - mx));
                for (int e = 0; e < hd; e++) {
                    double a = 0;
                    for (int j = 0; j < nvis; j++) a += p[j] / sum * v[(size_t)j * KD + gg * hd + e];
                    att[hh * hd + e] = a;
                }
            }
            lin(W("self_attn.o_proj.weight"), W("self_attn.o_proj.bias"), att, o);
            for (int e = 0; e < D; e++) x[e] += o[e];
            rmsnorm(x, W("post_attention_layernorm.weight"), D, s->rms_eps, h);
            lin(W("mlp.gate_proj.weight"), NULL, h, g);
            lin(W("mlp.up_proj.weight"), NULL, h, u);
            for (int e = 0; e < s->ffn; e++) g[e] = g[e] / (1 + exp(-g[e])) * u[e];
            lin(W("mlp.down_proj.weight"), NULL, g, o);
            for (int e = 0; e < D; e++) x[e] += o[e];
#undef W
        }
        rmsnorm(x, get(t, "model.norm.weight"), D, s->rms_eps, h);
        lin(s->tied ? E : get(t, "lm_head.weight"), NULL, h, logits + (size_t)i * s->vocab);
    }
    free(x); free(h); free(q); free(att); free(K); free(V); free(p); free(g); free(u); free(o);
}
