/*
 * test_lckv.c — layer-condensed KV (LCKV, docs/techniques.md section 3): layer_types parsing and
 * refusal, condensed layers without K/V projections, iterative prefill against token-by-token
 * decoding and a naive double-precision sequential reference on small random models, the cache
 * holding only the caching layers, and the trained models (models/lckv-*) against their PyTorch
 * reference.json (skipped when the weights are absent: scripts/get-weights.sh).
 */
#include "harness.h"
#include "slimkv.h"
#include "tiny_model.h"

#include <math.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---------------------------------------------------------------- layer_types and loading */

static skv_status load_with_types(const char *name, const char *types, int kv_all, const char *config_types,
                                  skv_model **m) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", skv_test_tmpdir(), name);
    tiny_spec s = {.arch = "LlamaForCausalLM", .dtype = "F32", .vocab = 61, .dim = 32, .ffn = 48, .layers = 4,
                   .heads = 4, .kv_heads = 2, .n_ctx = 64, .rope_theta = 10000.0f, .rms_eps = 1e-6f, .seed = 5,
                   .layer_types = types, .kv_all = kv_all};
    tiny_model *t = tiny_write(dir, &s);
    if (!t) return SKV_ERR_IO;
    tiny_free(t);
    if (config_types) { /* rewrite layer_types in config.json */
        char path[600], *text = NULL, *out = NULL;
        snprintf(path, sizeof path, "%s/config.json", dir);
        FILE *f = fopen(path, "r");
        size_t cap = 0;
        if (!f || getdelim(&text, &cap, '\0', f) < 0) return SKV_ERR_IO;
        fclose(f);
        char *at = strstr(text, "\"layer_types\"");
        if (!at) return SKV_ERR_IO;
        char *end = strchr(at, '\n');
        size_t n = strlen(text) + strlen(config_types) + 64;
        out = malloc(n);
        snprintf(out, n, "%.*s\"layer_types\": %s,%s", (int)(at - text), text, config_types, end);
        f = fopen(path, "w");
        fputs(out, f);
        fclose(f);
        free(text);
        free(out);
    }
    return skv_model_load(dir, skv_model_default_params(), m);
}

/* Malformed layer_types are refused with a message naming the field (and what is wrong). */
static void test_layer_types_refused(void) {
    struct {
        const char *types, *want;
    } bad[] = {
        {"\"0_2_1_3\"", "t(t(i)) must equal t(i)"}, /* t(1) = 2, t(2) = 1 */
        {"\"0_3_3_2\"", "t(t(i)) must equal t(i)"}, /* t(3) = 2 != 3 */
        {"\"0_5_5_3\"", "out of range"},
        {"[0, -1, 2, 3]", "out of range"},
        {"\"0_3_3\"", "has 3 entries for 4 layers"},
        {"\"0_3_3_3_3\"", "has 5 entries for 4 layers"},
        {"\"0_x_3_3\"", "entry 1 is not an integer"},
        {"\"0_3__3\"", "entry 2 is not an integer"},
        {"\"0_3_3_3_\"", "ends with '_'"},
        {"\"0_3s_3_3\"", "sliding-window"},
        {"[0, 1.5, 2, 3]", "entry 1 is not an integer"},
        {"7", "must be a string"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        skv_model *m = NULL;
        char name[32];
        snprintf(name, sizeof name, "lt-bad-%zu", i);
        skv_status st = load_with_types(name, "0_3_3_3", 0, bad[i].types, &m);
        CHECKF(st != SKV_OK && st != SKV_ERR_IO, "layer_types %s: loaded (status %d)", bad[i].types, (int)st);
        CHECKF(strstr(skv_last_error(), "layer_types") && strstr(skv_last_error(), bad[i].want),
               "layer_types %s: message \"%s\" lacks \"%s\"", bad[i].types, skv_last_error(), bad[i].want);
        skv_model_free(m);
    }
}

/* Condensed layers must not ship k_proj/v_proj; caching layers must. */
static void test_layer_types_tensors(void) {
    skv_model *m = NULL;
    /* every layer has K/V but layer_types makes 1 and 2 condensed */
    skv_status st = load_with_types("lt-kv-extra", "0_3_3_3", 1, NULL, &m);
    CHECKF(st == SKV_ERR_FORMAT, "condensed layer with k_proj: status %d", (int)st);
    CHECKF(strstr(skv_last_error(), "model.layers.1.self_attn.k_proj.weight") &&
               strstr(skv_last_error(), "condensed"),
           "message: %s", skv_last_error());
    skv_model_free(m), m = NULL;
    /* written for 0_3_3_3 (layers 1, 2 without K/V), loaded as all-standard */
    st = load_with_types("lt-kv-missing", "0_3_3_3", 0, "\"0_1_2_3\"", &m);
    CHECKF(st == SKV_ERR_FORMAT, "caching layer without k_proj: status %d", (int)st);
    CHECKF(strstr(skv_last_error(), "model.layers.1.self_attn.k_proj.weight") && strstr(skv_last_error(), "missing"),
           "message: %s", skv_last_error());
    skv_model_free(m), m = NULL;
    /* a good one: the layer-to-cache map */
    st = load_with_types("lt-good", "0_3_3_3", 0, NULL, &m);
    REQUIRE(st == SKV_OK, "load: %s", skv_last_error());
    CHECK(skv_model_n_cache_layers(m) == 2);
    const int32_t want_src[4] = {0, 3, 3, 3}, want_app[4] = {1, 0, 0, 1};
    for (int l = 0; l < 4; l++) {
        int32_t src = -1, app = -1;
        CHECK(skv_model_layer_cache(m, l, &src, &app) == SKV_OK);
        CHECKF(src == want_src[l] && app == want_app[l], "layer %d: src %d appends %d", l, src, app);
    }
    skv_model_free(m), m = NULL;
    /* array form, and transformers' attention-kind strings (not LCKV) */
    st = load_with_types("lt-array", "0_3_3_3", 0, "[0, 3, 3, 3]", &m);
    CHECKF(st == SKV_OK && skv_model_n_cache_layers(m) == 2, "array form: %s", skv_last_error());
    skv_model_free(m), m = NULL;
    st = load_with_types("lt-hf", NULL, 0, NULL, &m);
    CHECK(st == SKV_OK);
    skv_model_free(m), m = NULL;
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/lt-hf", skv_test_tmpdir());
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "r");
    char *text = NULL;
    size_t cap = 0;
    REQUIRE(f && getdelim(&text, &cap, '\0', f) > 0, "read %s", path);
    fclose(f);
    char *brace = strchr(text, '{');
    f = fopen(path, "w");
    fprintf(f, "{\"layer_types\": [\"full_attention\", \"full_attention\", \"full_attention\", \"full_attention\"],%s",
            brace + 1);
    fclose(f);
    free(text);
    st = skv_model_load(dir, skv_model_default_params(), &m);
    CHECKF(st == SKV_OK && skv_model_n_cache_layers(m) == 4, "HF attention kinds: %s", skv_last_error());
    skv_model_free(m);
}

/* ---------------------------------------------------------------- semantics on random models */

typedef struct lckv_case {
    const char *name, *types;
    int layers;
} lckv_case;

static const lckv_case cases[] = {
    {"w2-like", "0_4_4_4_4_5", 6},       /* one group, sandwich */
    {"two-sources", "0_2_2_4_4_5", 6},   /* group [1, 4] with a caching layer inside */
    {"cla-like", "0_0_2_2_0", 5},        /* only downward reads: no iterations */
    {"all-up", "3_3_3_3", 4},            /* the group starts at layer 0 */
};

static tiny_model *write_case(const lckv_case *k, const char *dtype, int kv_heads, char *dir, size_t cap) {
    snprintf(dir, cap, "%s/lckv-%s-%s", skv_test_tmpdir(), k->name, dtype);
    tiny_spec s = {.arch = "LlamaForCausalLM", .dtype = dtype, .vocab = 83, .dim = 48, .ffn = 80,
                   .layers = k->layers, .heads = 4, .kv_heads = kv_heads, .n_ctx = 128, .rope_theta = 10000.0f,
                   .rms_eps = 1e-6f, .seed = 11, .layer_types = k->types};
    return tiny_write(dir, &s);
}

static skv_context *ctx_of(skv_model *m, int n_batch, int iters) {
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = 128;
    cp.n_batch = n_batch;
    cp.lckv_iters = iters;
    skv_context *c = NULL;
    return skv_context_init(m, cp, &c) == SKV_OK ? c : NULL;
}

/* logits (n, V) of ids decoded one token at a time */
static int run_tokens(skv_context *c, const int32_t *ids, int n, float *lg, int V) {
    for (int i = 0; i < n; i++)
        if (skv_decode(c, ids + i, 1, lg + (int64_t)i * V, 0)) return -1;
    return 0;
}

static double max_rel(const float *a, const float *b, int64_t n) {
    double w = 0;
    for (int64_t i = 0; i < n; i++) w = fmax(w, fabs((double)a[i] - b[i]) / fmax(1.0, fabs((double)b[i])));
    return w;
}

/* The engine's token-by-token path against the naive sequential reference; iterative prefill
 * with at least as many iterations as tokens equal to it; in chunks with a past too; the
 * default 9 iterations exact on the first 9 positions; short prompts token by token. */
static void test_semantics(void) {
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const lckv_case *k = &cases[ci];
        char dir[512];
        tiny_model *t = write_case(k, "F32", 2, dir, sizeof dir);
        REQUIRE(t, "%s: cannot write the model", k->name);
        skv_model *m = NULL;
        REQUIRE(skv_model_load(dir, skv_model_default_params(), &m) == SKV_OK, "%s: %s", k->name, skv_last_error());
        const int n = 40, V = 83;
        int32_t ids[40];
        for (int i = 0; i < n; i++) ids[i] = (i * 29 + 3) % V;
        double *ref = malloc(sizeof(double) * n * V);
        float *refl = malloc(sizeof(float) * n * V), *seq = malloc(sizeof(float) * n * V);
        float *pre = malloc(sizeof(float) * n * V);
        tiny_reference_seq(t, ids, n, ref);
        for (int i = 0; i < n * V; i++) refl[i] = (float)ref[i];

        skv_context *c = ctx_of(m, 64, 0);
        REQUIRE(c && run_tokens(c, ids, n, seq, V) == 0, "%s: %s", k->name, skv_last_error());
        const double e_seq = max_rel(seq, refl, (int64_t)n * V);
        CHECKF(e_seq < 1e-4, "%s: token by token vs the naive reference: %.2e", k->name, e_seq);
        skv_context_free(c);

        /* one chunk, n iterations: exact */
        c = ctx_of(m, 64, n);
        REQUIRE(c && skv_decode(c, ids, n, pre, 1) == SKV_OK, "%s: %s", k->name, skv_last_error());
        const double e_it = max_rel(pre, seq, (int64_t)n * V);
        CHECKF(e_it < 1e-4, "%s: prefill with %d iterations vs token by token: %.2e", k->name, n, e_it);
        /* then decoding continues from that cache as from the sequential one */
        float *a = malloc(sizeof(float) * V), *b = malloc(sizeof(float) * V);
        skv_context *c2 = ctx_of(m, 64, 0);
        REQUIRE(c2 && run_tokens(c2, ids, n, seq, V) == 0, "%s", skv_last_error());
        int32_t nx = 5;
        CHECK(skv_decode(c, &nx, 1, a, 0) == SKV_OK && skv_decode(c2, &nx, 1, b, 0) == SKV_OK);
        CHECKF(max_rel(a, b, V) < 1e-4, "%s: decode after prefill: %.2e", k->name, max_rel(a, b, V));
        skv_context_free(c2);
        skv_context_free(c);

        /* chunks of 16 over a past, 16 iterations each: exact too */
        c = ctx_of(m, 16, 16);
        REQUIRE(c && skv_decode(c, ids, n, pre, 1) == SKV_OK, "%s: %s", k->name, skv_last_error());
        CHECKF(max_rel(pre, seq, (int64_t)n * V) < 1e-4, "%s: chunked prefill vs token by token: %.2e", k->name,
               max_rel(pre, seq, (int64_t)n * V));
        skv_context_free(c);

        /* the default 9 iterations: the first 9 positions exact; without a group every position */
        c = ctx_of(m, 64, 0);
        REQUIRE(c && skv_decode(c, ids, n, pre, 1) == SKV_OK, "%s: %s", k->name, skv_last_error());
        const double e9 = max_rel(pre, seq, 9 * V), e_all = max_rel(pre, seq, (int64_t)n * V);
        CHECKF(e9 < 1e-4, "%s: 9 iterations, first 9 positions: %.2e", k->name, e9);
        if (!strcmp(k->name, "cla-like")) CHECKF(e_all < 1e-4, "%s: no group, yet %.2e", k->name, e_all);
        else CHECKF(e_all > 1e-6, "%s: 9 iterations over 40 tokens equal the exact model (%.2e)?", k->name, e_all);
        printf("    %s: token by token vs reference %.1e, %d iterations %.1e, 9 iterations (40 tokens) %.1e\n", k->name,
               e_seq, n, e_it, e_all);
        skv_context_free(c);

        /* one iteration: condensed layers see only the cache before the chunk (none: zero output),
         * which differs from the exact model */
        c = ctx_of(m, 64, 1);
        REQUIRE(c && skv_decode(c, ids, n, pre, 1) == SKV_OK, "%s: %s", k->name, skv_last_error());
        if (strcmp(k->name, "cla-like"))
            CHECKF(max_rel(pre, seq, (int64_t)n * V) > 1e-3, "%s: one iteration is exact?", k->name);
        skv_context_free(c);

        /* a prompt of <= 9 tokens runs token by token: bit-identical to the decode path */
        c = ctx_of(m, 64, 0);
        REQUIRE(c && skv_decode(c, ids, 7, pre, 1) == SKV_OK, "%s", skv_last_error());
        if (strcmp(k->name, "cla-like")) /* (no group: an ordinary prefill) */
            CHECKF(memcmp(pre, seq, sizeof(float) * 7 * V) == 0, "%s: 7-token prompt differs from token by token",
                   k->name);
        else
            CHECK(max_rel(pre, seq, 7 * V) < 1e-4);
        skv_context_free(c);

        free(a), free(b), free(ref), free(refl), free(seq), free(pre);
        skv_model_free(m);
        tiny_free(t);
    }
}

/* The cache holds exactly the caching layers: bytes = caching layers x KV heads x whole blocks x
 * head_dim x 2 (K, V) x bytes per value. */
static void test_cache_bytes(void) {
    char dir[512];
    tiny_model *t = write_case(&cases[0], "BF16", 2, dir, sizeof dir);
    REQUIRE(t, "cannot write the model");
    skv_model *m = NULL;
    REQUIRE(skv_model_load(dir, skv_model_default_params(), &m) == SKV_OK, "%s", skv_last_error());
    CHECK(skv_model_n_cache_layers(m) == 3); /* 0, 4, 5 of "0_4_4_4_4_5" */
    const int hd = 48 / 4;
    const skv_kv_format fmts[2] = {SKV_KV_F32, SKV_KV_BF16};
    const int bpv[2] = {4, 2};
    for (int f = 0; f < 2; f++)
        for (int n = 1; n <= 70; n += 23) {
            skv_context_params cp = skv_context_default_params();
            cp.n_ctx = 128;
            cp.kv_format = fmts[f];
            skv_context *c = NULL;
            REQUIRE(skv_context_init(m, cp, &c) == SKV_OK, "%s", skv_last_error());
            int32_t ids[70];
            for (int i = 0; i < n; i++) ids[i] = i % 80 + 1;
            REQUIRE(skv_decode(c, ids, n, NULL, 0) == SKV_OK, "%s", skv_last_error());
            skv_kv_usage u;
            skv_context_kv_usage(c, &u);
            const int64_t blocks = (n + 31) / 32, want = 3LL * 2 * blocks * 32 * hd * 2 * bpv[f];
            CHECKF(u.bytes == want, "format %d, %d tokens: %lld bytes, formula %lld", f, n, (long long)u.bytes,
                   (long long)want);
            CHECKF(u.slots == 3LL * 2 * n, "%d tokens: %lld slots", n, (long long)u.slots);
            for (int l = 0; l < 3; l++) CHECK(skv_context_kept(c, l, 1, NULL) == n);
            CHECK(skv_context_kv_bytes_head(c, 3, 0) < 0 && skv_context_kept(c, 3, 0, NULL) < 0);
            skv_context_free(c);
        }
    skv_model_free(m);
    tiny_free(t);
}

/* The KV policies act on the caching layers: a window of 8 + 4 sinks over a 40-token prompt keeps
 * 12 tokens per stream in each of the 3 cache layers, and decoding goes on. */
static void test_policy_on_cache_layers(void) {
    char dir[512];
    tiny_model *t = write_case(&cases[0], "F32", 2, dir, sizeof dir);
    REQUIRE(t, "cannot write the model");
    skv_model *m = NULL;
    REQUIRE(skv_model_load(dir, skv_model_default_params(), &m) == SKV_OK, "%s", skv_last_error());
    const char *pols[] = {"window", "snapkv", "h2o"};
    for (int p = 0; p < 3; p++) {
        skv_context_params cp = skv_context_default_params();
        cp.n_ctx = 128;
        cp.policy = skv_policy_default_params(pols[p]);
        cp.policy.budget = 0;
        cp.policy.budget_tokens = 12;
        cp.policy.obs_window = 8;
        skv_context *c = NULL;
        REQUIRE(skv_context_init(m, cp, &c) == SKV_OK, "%s: %s", pols[p], skv_last_error());
        int32_t ids[40];
        for (int i = 0; i < 40; i++) ids[i] = (i * 7 + 1) % 80;
        float lg[83];
        REQUIRE(skv_decode(c, ids, 40, lg, 0) == SKV_OK, "%s: %s", pols[p], skv_last_error());
        for (int l = 0; l < 3; l++)
            for (int g = 0; g < 2; g++)
                CHECKF(skv_context_kept(c, l, g, NULL) == 12, "%s: cache layer %d head %d keeps %d", pols[p], l, g,
                       skv_context_kept(c, l, g, NULL));
        int32_t nx = 3;
        for (int s = 0; s < 5; s++) CHECK(skv_decode(c, &nx, 1, lg, 0) == SKV_OK);
        for (int i = 0; i < 83; i++) CHECK(isfinite(lg[i]));
        skv_context_free(c);
    }
    skv_model_free(m);
    tiny_free(t);
}

/* ---------------------------------------------------------------- the trained models */

#define LOGIT_TOL 2e-3

/* models/<name> of the repository (the tests run from its root) */
static int trained_dir(const char *name, char *dir, size_t cap) {
    snprintf(dir, cap, "models/%s", name);
    char path[600];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    return access(path, R_OK) == 0;
}

/* One semantics (the prefill path or token by token) of one prompt against its reference fields:
 * every position's top-8 logits and the last position's 8192 within LOGIT_TOL relative (to
 * max(1, |logit|)), the 32 greedy tokens identical. Returns the largest relative difference. */
static double check_path(const char *model, int p, skv_model *m, const int32_t *ids, int n, const cJSON *ref,
                         int sequential) {
    const int V = skv_model_get_info(m)->n_vocab;
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = 2048;
    cp.n_batch = 1024; /* the reference runs the prompt as one pass */
    skv_context *c = NULL;
    if (skv_context_init(m, cp, &c)) {
        CHECKF(0, "context: %s", skv_last_error());
        return INFINITY;
    }
    float *lg = malloc(sizeof(float) * (size_t)n * V);
    skv_status st = sequential ? (skv_status)run_tokens(c, ids, n, lg, V) : skv_decode(c, ids, n, lg, 1);
    double worst = 0;
    if (st) {
        CHECKF(0, "%s prompt %d: decode: %s", model, p, skv_last_error());
        goto done;
    }
    const cJSON *tids = cJSON_GetObjectItem(ref, "top_ids"), *tlog = cJSON_GetObjectItem(ref, "top_logits");
    int bad_top = 0;
    for (int i = 0; i < n; i++) {
        const cJSON *ti = cJSON_GetArrayItem(tids, i), *tl = cJSON_GetArrayItem(tlog, i);
        for (int j = 0; j < cJSON_GetArraySize(ti); j++) {
            const int id = (int)cJSON_GetArrayItem(ti, j)->valuedouble;
            const double r = cJSON_GetArrayItem(tl, j)->valuedouble;
            const double d = fabs(lg[(int64_t)i * V + id] - r) / fmax(1.0, fabs(r));
            worst = fmax(worst, d);
            if (d >= LOGIT_TOL && bad_top++ < 3)
                CHECKF(0, "%s prompt %d (%s) pos %d id %d: %.5f vs %.5f", model, p,
                       sequential ? "sequential" : "prefill", i, id, lg[(int64_t)i * V + id], r);
        }
    }
    const cJSON *last = cJSON_GetObjectItem(ref, "last_logits");
    for (int v = 0; v < V; v++) {
        const double r = cJSON_GetArrayItem(last, v)->valuedouble;
        worst = fmax(worst, fabs(lg[(int64_t)(n - 1) * V + v] - r) / fmax(1.0, fabs(r)));
    }
    CHECKF(worst < LOGIT_TOL, "%s prompt %d (%s): largest relative logit difference %.2e", model, p,
           sequential ? "sequential" : "prefill", worst);
    int ng;
    int32_t *greedy = skv_test_json_ids(cJSON_GetObjectItem(ref, "greedy32"), &ng);
    int32_t tok = skv_test_argmax(lg + (int64_t)(n - 1) * V, V);
    int mism = -1;
    for (int i = 0; i < ng; i++) {
        if (tok != greedy[i] && mism < 0) mism = i;
        if (i + 1 == ng || skv_decode(c, &tok, 1, lg, 0)) break;
        tok = skv_test_argmax(lg, V);
    }
    CHECKF(mism < 0, "%s prompt %d (%s): greedy token %d differs from the reference", model, p,
           sequential ? "sequential" : "prefill", mism);
    free(greedy);
done:
    free(lg);
    skv_context_free(c);
    return worst;
}

static void trained(const char *name) {
    char dir[512], path[600];
    if (!trained_dir(name, dir, sizeof dir)) {
        skv_test_skip("%s/model.safetensors is absent (scripts/get-weights.sh)", dir);
        return;
    }
    snprintf(path, sizeof path, "%s/reference.json", dir);
    cJSON *g = skv_test_load_json(path);
    REQUIRE(g, "cannot read %s", path);
    skv_model_params mp = skv_model_default_params();
    mp.n_threads = 2;
    skv_model *m = NULL;
    if (skv_model_load(dir, mp, &m)) {
        cJSON_Delete(g);
        REQUIRE(0, "load %s: %s", dir, skv_last_error());
    }
    const cJSON *prompts = cJSON_GetObjectItem(g, "prompts");
    double w_pre = 0, w_seq = 0;
    CHECK(cJSON_GetArraySize(prompts) >= 5);
    for (int p = 0; p < cJSON_GetArraySize(prompts); p++) {
        const cJSON *pr = cJSON_GetArrayItem(prompts, p);
        int n;
        int32_t *ids = skv_test_json_ids(cJSON_GetObjectItem(pr, "ids"), &n);
        w_pre = fmax(w_pre, check_path(name, p, m, ids, n, pr, 0));
        w_seq = fmax(w_seq, check_path(name, p, m, ids, n, cJSON_GetObjectItem(pr, "sequential"), 1));
        free(ids);
    }
    printf("    %s: largest relative logit difference, prefill (9 iterations) %.2e, token by token %.2e\n", name, w_pre,
           w_seq);
    skv_model_free(m);
    cJSON_Delete(g);
}

static void test_trained_std(void) { trained("lckv-std"); }
static void test_trained_w2(void) { trained("lckv-w2"); }
static void test_trained_w4(void) { trained("lckv-w4"); }

/* ---------------------------------------------------------------- CUDA */

static int have_gpu(void) {
    if (skv_backend_available(SKV_BACKEND_CUDA)) return 1;
    skv_test_skip("%s", skv_last_error());
    return 0;
}

static double rel_l2(const float *a, const float *b, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]), den += (double)b[i] * b[i];
    return sqrt(num / fmax(den, 1e-30));
}

/* The GPU against the CPU on a random LCKV model (head_dim 64; bf16 weights and cache on the
 * GPU): prefill with 9 iterations, with n iterations (= token by token), a short prompt token by
 * token, decoding after the prefill; the cache holds the caching layers only. */
static void test_cuda_vs_cpu(void) {
    if (!have_gpu()) return;
    const char *types[] = {"0_4_4_4_4_5", "0_2_2_4_4_5"};
    for (int ti = 0; ti < 2; ti++) {
        char dir[512];
        snprintf(dir, sizeof dir, "%s/lckv-gpu-%d", skv_test_tmpdir(), ti);
        tiny_spec s = {.arch = "LlamaForCausalLM", .dtype = "BF16", .vocab = 96, .dim = 128, .ffn = 192, .layers = 6,
                       .heads = 4, .kv_heads = 2, .head_dim = 64, .n_ctx = 256, .rope_theta = 10000.0f,
                       .rms_eps = 1e-6f, .seed = 21, .layer_types = types[ti]};
        tiny_model *t = tiny_write(dir, &s);
        REQUIRE(t, "cannot write the model");
        skv_model *m = NULL;
        REQUIRE(skv_model_load(dir, skv_model_default_params(), &m) == SKV_OK, "%s", skv_last_error());
        const int n = 100, V = 96;
        int32_t ids[100];
        for (int i = 0; i < n; i++) ids[i] = (i * 37 + 5) % V;
        float *a = malloc(sizeof(float) * n * V), *b = malloc(sizeof(float) * n * V);
        const int iters[3] = {0, 100, 0}, lens[3] = {n, n, 7};
        for (int k = 0; k < 3; k++) {
            skv_context *cc = NULL, *cg = NULL;
            skv_context_params cp = skv_context_default_params();
            cp.n_ctx = 256, cp.n_batch = 128, cp.lckv_iters = iters[k], cp.kv_format = SKV_KV_BF16;
            REQUIRE(skv_context_init(m, cp, &cc) == SKV_OK, "%s", skv_last_error());
            cp.backend = SKV_BACKEND_CUDA;
            REQUIRE(skv_context_init(m, cp, &cg) == SKV_OK, "cuda: %s", skv_last_error());
            REQUIRE(skv_decode(cc, ids, lens[k], a, 1) == SKV_OK, "%s", skv_last_error());
            REQUIRE(skv_decode(cg, ids, lens[k], b, 1) == SKV_OK, "cuda: %s", skv_last_error());
            const double e = rel_l2(b, a, (int64_t)lens[k] * V);
            CHECKF(e < 2e-2, "%s, %d iterations, %d tokens: GPU vs CPU relative L2 %.3e", types[ti], iters[k], lens[k], e);
            int agree = 0;
            for (int i = 0; i < lens[k]; i++) agree += skv_test_argmax(a + i * V, V) == skv_test_argmax(b + i * V, V);
            CHECKF(agree >= lens[k] * 9 / 10, "%s: top-1 agrees at %d of %d", types[ti], agree, lens[k]);
            int32_t nx = 3;
            double ed = 0;
            for (int st = 0; st < 8; st++) {
                REQUIRE(skv_decode(cc, &nx, 1, a, 0) == SKV_OK && skv_decode(cg, &nx, 1, b, 0) == SKV_OK, "%s",
                        skv_last_error());
                ed = fmax(ed, rel_l2(b, a, V));
                nx = skv_test_argmax(a, V);
            }
            CHECKF(ed < 2e-2, "%s: decode GPU vs CPU relative L2 %.3e", types[ti], ed);
            skv_kv_usage u;
            skv_context_kv_usage(cg, &u);
            const int ncl = skv_model_n_cache_layers(m), toks = lens[k] + 8;
            CHECKF(u.slots == (int64_t)ncl * 2 * toks, "GPU slots %lld, want %d", (long long)u.slots, ncl * 2 * toks);
            CHECKF(u.bytes == (int64_t)ncl * 2 * ((toks + 63) / 64) * 64 * 64 * 2 * 2, "GPU bytes %lld",
                   (long long)u.bytes);
            printf("    %s: %d iterations, %d tokens: GPU vs CPU %.2e, decode %.2e\n", types[ti], iters[k], lens[k], e,
                   ed);
            skv_context_free(cc);
            skv_context_free(cg);
        }
        free(a), free(b);
        skv_model_free(m);
        tiny_free(t);
    }
}

/* The trained models on the GPU against reference.json's prefill semantics (bf16 weights and
 * cache: relative L2 of the last logits under 1e-2, top-1 agreement, greedy continuation). */
static void test_cuda_trained(void) {
    if (!have_gpu()) return;
    const char *names[3] = {"lckv-std", "lckv-w2", "lckv-w4"};
    int found = 0;
    for (int k = 0; k < 3; k++) {
        char dir[512], path[600];
        if (!trained_dir(names[k], dir, sizeof dir)) continue;
        found++;
        snprintf(path, sizeof path, "%s/reference.json", dir);
        cJSON *g = skv_test_load_json(path);
        skv_model *m = NULL;
        REQUIRE(g && skv_model_load(dir, skv_model_default_params(), &m) == SKV_OK, "%s", skv_last_error());
        const int V = skv_model_get_info(m)->n_vocab;
        const cJSON *prompts = cJSON_GetObjectItem(g, "prompts");
        double worst = 0;
        int agree = 0, total = 0, gok = 0, gn = 0;
        for (int p = 0; p < cJSON_GetArraySize(prompts); p++) {
            const cJSON *pr = cJSON_GetArrayItem(prompts, p);
            int n, ng;
            int32_t *ids = skv_test_json_ids(cJSON_GetObjectItem(pr, "ids"), &n);
            int32_t *gr = skv_test_json_ids(cJSON_GetObjectItem(pr, "greedy32"), &ng);
            skv_context_params cp = skv_context_default_params();
            cp.n_ctx = 2048, cp.n_batch = 1024, cp.backend = SKV_BACKEND_CUDA;
            skv_context *c = NULL;
            REQUIRE(skv_context_init(m, cp, &c) == SKV_OK, "%s", skv_last_error());
            float *lg = malloc(sizeof(float) * (size_t)n * V), *last = malloc(sizeof(float) * V);
            REQUIRE(skv_decode(c, ids, n, lg, 1) == SKV_OK, "%s", skv_last_error());
            const cJSON *tids = cJSON_GetObjectItem(pr, "top_ids"), *ll = cJSON_GetObjectItem(pr, "last_logits");
            for (int i = 0; i < n; i++, total++)
                agree += skv_test_argmax(lg + (int64_t)i * V, V) ==
                         cJSON_GetArrayItem(cJSON_GetArrayItem(tids, i), 0)->valueint;
            for (int v = 0; v < V; v++) last[v] = (float)cJSON_GetArrayItem(ll, v)->valuedouble;
            worst = fmax(worst, rel_l2(lg + (int64_t)(n - 1) * V, last, V));
            int32_t tok = skv_test_argmax(lg + (int64_t)(n - 1) * V, V);
            for (int i = 0; i < ng; i++, gn++) { /* until the first difference (then the texts diverge) */
                if (tok != gr[i]) {
                    gn += ng - i;
                    break;
                }
                gok++;
                if (i + 1 < ng) {
                    REQUIRE(skv_decode(c, &tok, 1, lg, 0) == SKV_OK, "%s", skv_last_error());
                    tok = skv_test_argmax(lg, V);
                }
            }
            free(ids), free(gr), free(lg), free(last);
            skv_context_free(c);
        }
        CHECKF(worst < 1e-2, "%s on the GPU: last logits relative L2 %.3e", names[k], worst);
        CHECKF(agree >= total * 95 / 100, "%s on the GPU: top-1 agrees at %d of %d positions", names[k], agree, total);
        printf("    %s on the GPU: last logits rel L2 %.2e, top-1 %d/%d, greedy tokens before the first difference "
               "%d/%d\n", names[k], worst, agree, total, gok, gn);
        skv_model_free(m);
        cJSON_Delete(g);
    }
    if (!found) skv_test_skip("models/lckv-*/model.safetensors are absent (scripts/get-weights.sh)");
}

void register_lckv(void) {
    skv_test_add("lckv/layer_types malformed refused", test_layer_types_refused);
    skv_test_add("lckv/condensed layers without k/v, caching layers with", test_layer_types_tensors);
    skv_test_add("lckv/iterative prefill = token by token = naive reference", test_semantics);
    skv_test_add("lckv/cache holds only the caching layers (bytes by formula)", test_cache_bytes);
    skv_test_add("lckv/policies act on the caching layers", test_policy_on_cache_layers);
    skv_test_add("lckv/lckv-std vs PyTorch reference.json", test_trained_std);
    skv_test_add("lckv/lckv-w2 vs PyTorch reference.json", test_trained_w2);
    skv_test_add("lckv/lckv-w4 vs PyTorch reference.json", test_trained_w4);
    skv_test_add("lckv/cuda GPU vs CPU on random LCKV models", test_cuda_vs_cpu);
    skv_test_add("lckv/cuda trained models vs reference.json on the GPU", test_cuda_trained);
}
