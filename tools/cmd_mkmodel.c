/*
 * cmd_mkmodel.c — `slimkv mkmodel`: write a Hugging Face model directory of a real shape with
 * random bf16 weights (config.json, sharded safetensors and their index), so that speed can be
 * measured at Llama-3-8B or Qwen2-7B shape where no weights can travel. Values: matrices and
 * the embedding uniform with standard deviation 0.02, biases 0.02 likewise, norms 1; a fixed
 * seed gives the same files.
 */
#include "cli.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct shape {
    const char *name, *arch, *model_type;
    int dim, layers, heads, kv_heads, ffn, vocab, bias, max_pos;
    double theta;
} shape;

static const shape SHAPES[] = {
    {"llama3-8b", "LlamaForCausalLM", "llama", 4096, 32, 32, 8, 14336, 128256, 0, 131072, 500000.0},
    {"qwen2-7b", "Qwen2ForCausalLM", "qwen2", 3584, 28, 28, 4, 18944, 152064, 1, 131072, 1000000.0},
    {"mistral-7b", "MistralForCausalLM", "mistral", 4096, 32, 32, 8, 14336, 32000, 0, 32768, 1000000.0},
};

typedef struct tensor {
    char name[96];
    int64_t rows, cols; /* cols 0: a vector */
    int kind;           /* 0 matrix, 1 norm (ones), 2 bias */
} tensor;

static uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fff + ((u >> 16) & 1); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

/* n bf16 values of tensor number `id`: deterministic in (seed, id, index) */
static void fill(uint16_t *out, int64_t n, int kind, uint64_t seed, int id) {
    if (kind == 1) {
        const uint16_t one = f32_to_bf16(1.0f);
        for (int64_t i = 0; i < n; i++) out[i] = one;
        return;
    }
    const float a = 0.02f * 1.7320508f; /* uniform(-a, a) has std 0.02 */
#pragma omp parallel
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        const int64_t i0 = n * t / nt, i1 = n * (t + 1) / nt;
        uint64_t s = seed ^ ((uint64_t)id * 0x9e3779b97f4a7c15ull) ^ ((uint64_t)(i0 + 1) * 0xbf58476d1ce4e5b9ull);
        for (int64_t i = i0; i < i1; i++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            const float u = (float)(s >> 40) * (1.0f / 16777216.0f); /* [0, 1) */
            out[i] = f32_to_bf16((2 * u - 1) * a);
        }
    }
}

/* --tokenizer: DIR's byte-level BPE tokenizer (tokenizer.json) made to cover the shape's vocab:
 * ids past its own get entries "<xN>" no merge reaches (prompts tokenize as with DIR's
 * tokenizer; such an id, drawn from random logits, detokenizes as its name); its
 * tokenizer_config.json (the chat template) is copied. *eos: DIR's EOS id (config.json). */
static void write_tokenizer(const char *dir, const char *out, int vocab, int *eos) {
    char path[1200];
    size_t tl;
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    char *txt = cli_read_text_file("mkmodel", path, &tl);
    cJSON *t = cJSON_Parse(txt);
    free(txt);
    cJSON *model = t ? cJSON_GetObjectItemCaseSensitive(t, "model") : NULL;
    cJSON *v = model ? cJSON_GetObjectItemCaseSensitive(model, "vocab") : NULL;
    if (!cJSON_IsObject(v)) cli_die("mkmodel", 1, "%s: no model.vocab object (--tokenizer wants a BPE tokenizer.json)", path);
    const int n = cJSON_GetArraySize(v);
    if (n > vocab) cli_die("mkmodel", 1, "%s: %d entries exceed the shape's vocabulary of %d", path, n, vocab);
    for (int id = n; id < vocab; id++) {
        char name[32];
        snprintf(name, sizeof name, "<x%d>", id);
        if (cJSON_GetObjectItemCaseSensitive(v, name)) cli_die("mkmodel", 1, "%s: already has an entry %s", path, name);
        cJSON_AddNumberToObject(v, name, id);
    }
    char *o = cJSON_PrintUnformatted(t);
    cJSON_Delete(t);
    snprintf(path, sizeof path, "%s/tokenizer.json", out);
    FILE *f = fopen(path, "w");
    if (!f || !o || fputs(o, f) < 0) cli_die("mkmodel", 1, "%s: cannot write", path);
    fclose(f);
    free(o);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    FILE *in = fopen(path, "r");
    if (in) {
        fclose(in);
        txt = cli_read_text_file("mkmodel", path, &tl);
        snprintf(path, sizeof path, "%s/tokenizer_config.json", out);
        f = fopen(path, "w");
        if (!f || fputs(txt, f) < 0) cli_die("mkmodel", 1, "%s: cannot write", path);
        fclose(f);
        free(txt);
    }
    snprintf(path, sizeof path, "%s/config.json", dir);
    in = fopen(path, "r");
    if (in) {
        fclose(in);
        txt = cli_read_text_file("mkmodel", path, &tl);
        cJSON *c = cJSON_Parse(txt);
        const cJSON *e = c ? cJSON_GetObjectItemCaseSensitive(c, "eos_token_id") : NULL;
        if (cJSON_IsNumber(e)) *eos = e->valueint;
        cJSON_Delete(c);
        free(txt);
    }
}

static void write_all(const char *path, FILE *f, const void *p, size_t n) {
    if (fwrite(p, 1, n, f) != n) cli_die("mkmodel", 1, "%s: write failed: %s", path, strerror(errno));
}

int cmd_mkmodel(int argc, char **argv) {
    const char *shape_s = NULL, *out = NULL, *types_s = NULL, *tok_dir = NULL;
    int layers = 0, shard_mb = 4096;
    uint64_t seed = 1;
    const cli_opt opts[] = {
        {"shape", 0, OPT_STR, &shape_s, "NAME", "llama3-8b, qwen2-7b or mistral-7b"},
        {"out", 'o', OPT_STR, &out, "DIR", "directory to create"},
        {"layers", 0, OPT_INT, &layers, "N", "override the number of layers (default: the shape's)"},
        {"shard-mb", 0, OPT_INT, &shard_mb, "MB", "most megabytes per safetensors shard (default 4096)"},
        {"seed", 0, OPT_U64, &seed, "S", "random seed (default 1)"},
        {"tokenizer", 0, OPT_STR, &tok_dir, "DIR", "write DIR's BPE tokenizer (e.g. kvt-s), its ids extended to the shape's vocabulary by names <xN>, and use its EOS id (so that `slimkv serve` and `run` take the model)"},
        {"layer-types", 0, OPT_STR, &types_s, "T", "LCKV layer_types: \"0_30_..._30_31\" (t(i) per layer, joined by _), or wN: the sandwich with N standard layers (N/2 at the bottom, N/2 at the top, the rest reading the KV of the layer below the top ones); condensed layers get no k_proj/v_proj"},
    };
    const cli_cmd cmd = {"mkmodel", "--shape NAME -o DIR [--layers N] [--layer-types T] [--tokenizer DIR]",
                         "Write a model directory of a real architecture shape with random bf16 "
                         "weights (for speed measurements).",
                         opts, (int)(sizeof opts / sizeof opts[0])};
    cli_parse(&cmd, argc, argv);
    if (!shape_s) cli_die("mkmodel", 2, "no shape: give --shape llama3-8b, qwen2-7b or mistral-7b");
    if (!out) cli_die("mkmodel", 2, "no output directory: give -o DIR");
    const shape *sh = NULL;
    for (size_t i = 0; i < sizeof SHAPES / sizeof SHAPES[0]; i++)
        if (!strcmp(SHAPES[i].name, shape_s)) sh = &SHAPES[i];
    if (!sh) cli_die("mkmodel", 2, "bad value for --shape: '%s' (llama3-8b, qwen2-7b or mistral-7b)", shape_s);
    if (layers < 0 || layers > 1000) cli_die("mkmodel", 2, "bad value for --layers: %d", layers);
    if (shard_mb < 64) cli_die("mkmodel", 2, "bad value for --shard-mb: %d (at least 64)", shard_mb);
    const int L = layers ? layers : sh->layers, hd = sh->dim / sh->heads;
    /* layer_types: t(i) per layer (identity without --layer-types) */
    int *lt = malloc(sizeof(int) * (size_t)L);
    for (int l = 0; l < L; l++) lt[l] = l;
    char types_buf[8192] = "";
    if (types_s && types_s[0] == 'w') {
        char *end;
        const long w = strtol(types_s + 1, &end, 10);
        if (end == types_s + 1 || *end || w < 2 || w % 2 || w > L - 1)
            cli_die("mkmodel", 2, "bad value for --layer-types: '%s' (wN: an even N in 2..%d)", types_s, L - 1);
        const int src = L - 1 - (int)w / 2; /* the group's source: the layer below the top ones */
        for (int l = (int)w / 2; l < src; l++) lt[l] = src;
    } else if (types_s) {
        int n = 0;
        for (const char *p = types_s; *p;) {
            char *end;
            const long v = strtol(p, &end, 10);
            if (end == p || (*end && *end != '_') || n >= L || v < 0 || v >= L)
                cli_die("mkmodel", 2, "bad value for --layer-types: '%s' (%d integers in 0..%d joined by '_')", types_s,
                        L, L - 1);
            lt[n++] = (int)v;
            p = *end ? end + 1 : end;
        }
        if (n != L) cli_die("mkmodel", 2, "bad value for --layer-types: %d entries for %d layers", n, L);
        for (int l = 0; l < L; l++)
            if (lt[lt[l]] != lt[l])
                cli_die("mkmodel", 2, "bad value for --layer-types: layer %d reads layer %d, which reads layer %d", l,
                        lt[l], lt[lt[l]]);
    }
    if (types_s)
        for (int l = 0; l < L; l++)
            snprintf(types_buf + strlen(types_buf), sizeof types_buf - strlen(types_buf), "%s%d", l ? "_" : "", lt[l]);
    if (mkdir(out, 0755) && errno != EEXIST) cli_die("mkmodel", 1, "%s: cannot create: %s", out, strerror(errno));
    int bos = 0, eos = 1;
    if (tok_dir) write_tokenizer(tok_dir, out, sh->vocab, &eos), bos = eos;

    /* the tensor list, in HF naming */
    const int per_layer = 9 + 3 * sh->bias;
    const int n_max = 3 + L * per_layer;
    tensor *ts = calloc((size_t)n_max, sizeof *ts);
    int k = 0;
    ts[k++] = (tensor){"model.embed_tokens.weight", sh->vocab, sh->dim, 0};
    for (int l = 0; l < L; l++) {
        const int64_t q = (int64_t)sh->heads * hd, kv = (int64_t)sh->kv_heads * hd;
        const struct { const char *n; int64_t r, c; int kind; } e[] = {
            {"input_layernorm.weight", sh->dim, 0, 1}, {"self_attn.q_proj.weight", q, sh->dim, 0},
            {"self_attn.k_proj.weight", kv, sh->dim, 0}, {"self_attn.v_proj.weight", kv, sh->dim, 0},
            {"self_attn.o_proj.weight", sh->dim, q, 0}, {"post_attention_layernorm.weight", sh->dim, 0, 1},
            {"mlp.gate_proj.weight", sh->ffn, sh->dim, 0}, {"mlp.up_proj.weight", sh->ffn, sh->dim, 0},
            {"mlp.down_proj.weight", sh->dim, sh->ffn, 0}, {"self_attn.q_proj.bias", q, 0, 2},
            {"self_attn.k_proj.bias", kv, 0, 2}, {"self_attn.v_proj.bias", kv, 0, 2}};
        for (int j = 0; j < per_layer; j++) {
            if (lt[l] != l && (strstr(e[j].n, "k_proj") || strstr(e[j].n, "v_proj"))) continue; /* condensed */
            snprintf(ts[k].name, sizeof ts[k].name, "model.layers.%d.%s", l, e[j].n);
            ts[k].rows = e[j].r, ts[k].cols = e[j].c, ts[k].kind = e[j].kind;
            k++;
        }
    }
    ts[k++] = (tensor){"model.norm.weight", sh->dim, 0, 1};
    ts[k++] = (tensor){"lm_head.weight", sh->vocab, sh->dim, 0};
    const int n_t = k; /* (fewer than n_max with condensed layers) */

    /* shards: consecutive tensors up to shard_mb each */
    const int64_t cap = (int64_t)shard_mb << 20;
    int *shard_of = calloc((size_t)n_t, sizeof(int)), n_sh = 1;
    int64_t acc = 0, total = 0;
    for (int i = 0; i < n_t; i++) {
        const int64_t b = ts[i].rows * (ts[i].cols ? ts[i].cols : 1) * 2;
        if (acc > 0 && acc + b > cap) n_sh++, acc = 0;
        shard_of[i] = n_sh - 1;
        acc += b;
        total += b;
    }
    int64_t biggest = 0;
    for (int i = 0; i < n_t; i++) {
        const int64_t e = ts[i].rows * (ts[i].cols ? ts[i].cols : 1);
        if (e > biggest) biggest = e;
    }
    uint16_t *buf = malloc((size_t)biggest * 2);
    if (!buf) cli_die("mkmodel", 1, "out of memory");
    cJSON *index = cJSON_CreateObject(), *wmap = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(index, "metadata");
    cJSON_AddNumberToObject(meta, "total_size", (double)total);
    cJSON_AddItemToObject(index, "weight_map", wmap);
    const double t0 = skv_time_now();
    for (int s = 0, first = 0; s < n_sh; s++) {
        char fname[64], path[1200];
        snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", s + 1, n_sh);
        snprintf(path, sizeof path, "%s/%s", out, fname);
        int last = first;
        while (last < n_t && shard_of[last] == s) last++;
        cJSON *hdr = cJSON_CreateObject();
        cJSON *md = cJSON_AddObjectToObject(hdr, "__metadata__");
        cJSON_AddStringToObject(md, "format", "pt");
        int64_t off = 0;
        for (int i = first; i < last; i++) {
            const int64_t b = ts[i].rows * (ts[i].cols ? ts[i].cols : 1) * 2;
            cJSON *t = cJSON_AddObjectToObject(hdr, ts[i].name);
            cJSON_AddStringToObject(t, "dtype", "BF16");
            cJSON *shp = cJSON_AddArrayToObject(t, "shape");
            cJSON_AddItemToArray(shp, cJSON_CreateNumber((double)ts[i].rows));
            if (ts[i].cols) cJSON_AddItemToArray(shp, cJSON_CreateNumber((double)ts[i].cols));
            cJSON *o = cJSON_AddArrayToObject(t, "data_offsets");
            cJSON_AddItemToArray(o, cJSON_CreateNumber((double)off));
            cJSON_AddItemToArray(o, cJSON_CreateNumber((double)(off + b)));
            off += b;
            cJSON_AddStringToObject(wmap, ts[i].name, fname);
        }
        char *h = cJSON_PrintUnformatted(hdr);
        size_t hl = strlen(h), padded = (hl + 7) / 8 * 8;
        FILE *f = fopen(path, "wb");
        if (!f) cli_die("mkmodel", 1, "%s: cannot write: %s", path, strerror(errno));
        uint64_t hl64 = padded;
        write_all(path, f, &hl64, 8);
        write_all(path, f, h, hl);
        for (size_t p = hl; p < padded; p++) fputc(' ', f);
        for (int i = first; i < last; i++) {
            const int64_t n = ts[i].rows * (ts[i].cols ? ts[i].cols : 1);
            fill(buf, n, ts[i].kind, seed, i);
            write_all(path, f, buf, (size_t)n * 2);
        }
        if (fclose(f)) cli_die("mkmodel", 1, "%s: write failed: %s", path, strerror(errno));
        free(h);
        cJSON_Delete(hdr);
        first = last;
    }
    char path[1200];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", out);
    char *ix = cJSON_Print(index);
    FILE *f = fopen(path, "w");
    if (!f) cli_die("mkmodel", 1, "%s: cannot write", path);
    fputs(ix, f);
    fclose(f);
    free(ix);
    cJSON_Delete(index);

    cJSON *cfg = cJSON_CreateObject();
    cJSON *ar = cJSON_AddArrayToObject(cfg, "architectures");
    cJSON_AddItemToArray(ar, cJSON_CreateString(sh->arch));
    cJSON_AddStringToObject(cfg, "model_type", sh->model_type);
    cJSON_AddNumberToObject(cfg, "hidden_size", sh->dim);
    cJSON_AddNumberToObject(cfg, "intermediate_size", sh->ffn);
    cJSON_AddNumberToObject(cfg, "num_hidden_layers", L);
    cJSON_AddNumberToObject(cfg, "num_attention_heads", sh->heads);
    cJSON_AddNumberToObject(cfg, "num_key_value_heads", sh->kv_heads);
    cJSON_AddNumberToObject(cfg, "vocab_size", sh->vocab);
    cJSON_AddNumberToObject(cfg, "max_position_embeddings", sh->max_pos);
    cJSON_AddNumberToObject(cfg, "rope_theta", sh->theta);
    cJSON_AddNumberToObject(cfg, "rms_norm_eps", 1e-5);
    cJSON_AddStringToObject(cfg, "hidden_act", "silu");
    cJSON_AddBoolToObject(cfg, "tie_word_embeddings", 0);
    cJSON_AddStringToObject(cfg, "torch_dtype", "bfloat16");
    cJSON_AddNumberToObject(cfg, "bos_token_id", bos);
    cJSON_AddNumberToObject(cfg, "eos_token_id", eos);
    if (!sh->bias) cJSON_AddBoolToObject(cfg, "attention_bias", 0);
    if (types_s) cJSON_AddStringToObject(cfg, "layer_types", types_buf);
    snprintf(path, sizeof path, "%s/config.json", out);
    char *cs = cJSON_Print(cfg);
    f = fopen(path, "w");
    if (!f) cli_die("mkmodel", 1, "%s: cannot write", path);
    fputs(cs, f);
    fclose(f);
    free(cs);
    cJSON_Delete(cfg);
    fprintf(stderr, "slimkv mkmodel: %s, %d layers, %.2f GB in %d shards, %.1f s -> %s\n", sh->name, L, total / 1e9,
            n_sh, skv_time_now() - t0, out);
    free(buf);
    free(ts);
    free(lt);
    free(shard_of);
    return 0;
}
