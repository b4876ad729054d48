/*
 * test_multi.c — skv_decode_multi (one decode step of several contexts together, the CPU
 * backend's batched decode): each context's logits equal its twin's stepped alone with
 * skv_decode, bit for bit, and greedy generation is identical, over mixed policies, KV formats,
 * statistics, prompt lengths and architectures (biases, sliding windows, LCKV layer maps, bf16
 * and f16 weights); bad calls are refused with a message.
 */
#include "harness.h"
#include "tiny_model.h"

#include <math.h>

typedef struct mcase {
    const char *policy;
    float budget;
    skv_kv_format fmt;
    int stats, prompt;
} mcase;

static skv_context *make_ctx(skv_model *m, const mcase *k, int32_t n_ctx) {
    skv_context_params p = skv_context_default_params();
    p.n_ctx = n_ctx;
    p.n_batch = 32;
    p.kv_format = k->fmt;
    p.policy = skv_policy_default_params(k->policy);
    if (k->budget > 0) p.policy.budget = k->budget;
    p.collect_stats = k->stats;
    skv_context *c = NULL;
    return skv_context_init(m, p, &c) == SKV_OK ? c : NULL;
}

/* n contexts (cases ks) each prefilled with its own prompt, twice (a: stepped together, b: one
 * by one); `steps` greedy steps; every step's logits compared bit for bit. */
static void run_equal(const char *name, skv_model *m, const mcase *ks, int n, int steps, int32_t n_ctx) {
    const int V = skv_model_get_info(m)->n_vocab;
    skv_context *a[16], *b[16];
    int32_t next_a[16], next_b[16];
    float *la = malloc(sizeof(float) * (size_t)n * V), *lb = malloc(sizeof(float) * (size_t)n * V);
    REQUIRE(la && lb && n <= 16, "%s: setup", name);
    for (int i = 0; i < n; i++) {
        a[i] = make_ctx(m, &ks[i], n_ctx);
        b[i] = make_ctx(m, &ks[i], n_ctx);
        REQUIRE(a[i] && b[i], "%s: context %d (%s): %s", name, i, ks[i].policy, skv_last_error());
        int32_t *ids = malloc(sizeof(int32_t) * (size_t)ks[i].prompt);
        for (int t = 0; t < ks[i].prompt; t++) ids[t] = 1 + (t * 37 + i * 11 + 5) % (V - 1);
        REQUIRE(skv_decode(a[i], ids, ks[i].prompt, la + (size_t)i * V, 0) == SKV_OK, "%s: prefill: %s", name, skv_last_error());
        REQUIRE(skv_decode(b[i], ids, ks[i].prompt, lb + (size_t)i * V, 0) == SKV_OK, "%s: prefill: %s", name, skv_last_error());
        next_a[i] = next_b[i] = skv_test_argmax(la + (size_t)i * V, V);
        free(ids);
    }
    int diff_steps = 0, tok_diff = 0;
    double maxd = 0;
    for (int s = 0; s < steps; s++) {
        REQUIRE(skv_decode_multi(a, n, next_a, la) == SKV_OK, "%s: decode_multi step %d: %s", name, s, skv_last_error());
        for (int i = 0; i < n; i++)
            REQUIRE(skv_decode(b[i], &next_b[i], 1, lb + (size_t)i * V, 0) == SKV_OK, "%s: decode: %s", name, skv_last_error());
        diff_steps += memcmp(la, lb, sizeof(float) * (size_t)n * V) != 0;
        for (size_t j = 0; j < (size_t)n * V; j++) maxd = fmax(maxd, fabs((double)la[j] - lb[j]));
        for (int i = 0; i < n; i++) {
            next_a[i] = skv_test_argmax(la + (size_t)i * V, V);
            next_b[i] = skv_test_argmax(lb + (size_t)i * V, V);
            tok_diff += next_a[i] != next_b[i];
            CHECK(skv_context_n_past(a[i]) == skv_context_n_past(b[i]));
            skv_kv_usage ua, ub;
            skv_context_kv_usage(a[i], &ua);
            skv_context_kv_usage(b[i], &ub);
            CHECKF(ua.bytes == ub.bytes, "%s: context %d (%s) keeps %lld bytes together, %lld alone", name, i,
                   ks[i].policy, (long long)ua.bytes, (long long)ub.bytes);
        }
    }
    CHECKF(diff_steps == 0 && tok_diff == 0, "%s: %d of %d steps differ (max |d logit| %.3g), %d greedy tokens differ",
           name, diff_steps, steps, maxd, tok_diff);
    for (int i = 0; i < n; i++) skv_context_free(a[i]), skv_context_free(b[i]);
    free(la), free(lb);
}

static skv_model *g_s;
static skv_model *model_s(void) {
    if (!g_s) g_s = skv_test_load_model("kvt-s", 2);
    return g_s;
}

/* kvt-s: eight contexts of mixed policies, formats and prompt lengths (evicting ones past their
 * budgets, so they evict during the steps), 40 steps. */
static void test_mixed_policies(void) {
    skv_model *m = model_s();
    if (!m) {
        skv_test_skip("kvt-s not available: %s", skv_last_error());
        return;
    }
    const mcase ks[] = {
        {"full", 0, SKV_KV_F32, 0, 17},   {"full", 0, SKV_KV_BF16, 0, 200}, {"h2o", 0.3f, SKV_KV_F32, 0, 120},
        {"tova", 0.25f, SKV_KV_F32, 0, 90}, {"snapkv", 0.2f, SKV_KV_F32, 0, 150},
        {"window", 0.2f, SKV_KV_F32, 0, 100}, {"quant", 0, SKV_KV_F32, 0, 64},   {"full", 0, SKV_KV_F32, 1, 5},
    };
    run_equal("kvt-s mixed", m, ks, 8, 40, 512);
    run_equal("kvt-s two", m, ks, 2, 10, 512);
}

/* kvt-l (2 KV heads: attention by query head on 2 threads) */
static void test_kvt_l(void) {
    skv_model *m = skv_test_load_model("kvt-l", 2);
    if (!m) {
        skv_test_skip("kvt-l not available: %s", skv_last_error());
        return;
    }
    const mcase ks[] = {{"full", 0, SKV_KV_BF16, 0, 33}, {"full", 0, SKV_KV_BF16, 0, 300}, {"h2o", 0.25f, SKV_KV_F32, 0, 80},
                        {"full", 0, SKV_KV_F32, 0, 1}};
    run_equal("kvt-l", m, ks, 4, 20, 512);
    skv_model_free(m);
}

/* Tiny random models of the other shapes: Qwen2 biases, Mistral's sliding window, an LCKV layer
 * map, f16 and bf16 weights. */
static void test_architectures(void) {
    const struct {
        const char *name, *arch, *dtype, *types;
        int window, layers;
    } as[] = {
        {"qwen2-bf16", "Qwen2ForCausalLM", "BF16", NULL, 0, 2},
        {"mistral-sw7-f16", "MistralForCausalLM", "F16", NULL, 7, 2},
        {"lckv-f32", "LlamaForCausalLM", "F32", "0_4_4_4_4_5", 0, 6},
    };
    for (size_t k = 0; k < sizeof as / sizeof as[0]; k++) {
        char dir[512];
        snprintf(dir, sizeof dir, "%s/multi-%s", skv_test_tmpdir(), as[k].name);
        tiny_spec s = {.arch = as[k].arch, .dtype = as[k].dtype, .vocab = 97, .dim = 64, .ffn = 96, .layers = as[k].layers,
                       .heads = 4, .kv_heads = 2, .n_ctx = 128, .rope_theta = 10000.0f, .rms_eps = 1e-6f, .seed = 5,
                       .sliding_window = as[k].window, .layer_types = as[k].types};
        tiny_model *t = tiny_write(dir, &s);
        REQUIRE(t, "%s: could not write the model", as[k].name);
        tiny_free(t);
        skv_model *m = NULL;
        skv_model_params mp = skv_model_default_params();
        mp.n_threads = 2;
        REQUIRE(skv_model_load(dir, mp, &m) == SKV_OK, "%s: %s", as[k].name, skv_last_error());
        const mcase ks[] = {{"full", 0, SKV_KV_F32, 0, 3}, {"full", 0, SKV_KV_F16, 0, 40}, {"tova", 0.5f, SKV_KV_F32, 0, 30}};
        run_equal(as[k].name, m, ks, 3, 24, 128);
        skv_model_free(m);
    }
}

/* Bad calls: no contexts, a NULL context, the same context twice, another model, a full
 * context, an id outside the vocabulary: refused, nothing decoded. */
static void test_bad_calls(void) {
    skv_model *m = model_s();
    if (!m) {
        skv_test_skip("kvt-s not available: %s", skv_last_error());
        return;
    }
    const mcase k = {"full", 0, SKV_KV_F32, 0, 4};
    skv_context *c0 = make_ctx(m, &k, 8), *c1 = make_ctx(m, &k, 8);
    REQUIRE(c0 && c1, "context: %s", skv_last_error());
    const int32_t ids[2] = {5, 6}, bad[2] = {5, 1 << 20};
    skv_context *dup[2] = {c0, c0}, *nul[2] = {c0, NULL}, *two[2] = {c0, c1};
    CHECK(skv_decode_multi(two, 0, ids, NULL) == SKV_ERR_ARG);
    CHECK(skv_decode_multi(nul, 2, ids, NULL) == SKV_ERR_ARG && strstr(skv_last_error(), "context 1 is NULL"));
    CHECK(skv_decode_multi(dup, 2, ids, NULL) == SKV_ERR_ARG && strstr(skv_last_error(), "the same"));
    CHECK(skv_decode_multi(two, 2, bad, NULL) == SKV_ERR_ARG && strstr(skv_last_error(), "vocabulary"));
    CHECK(skv_context_n_past(c0) == 0 && skv_context_n_past(c1) == 0);
    const int32_t p7[7] = {1, 2, 3, 4, 5, 6, 7};
    CHECK(skv_decode(c1, p7, 7, NULL, 0) == SKV_OK);
    CHECK(skv_decode_multi(two, 2, ids, NULL) == SKV_OK); /* c1 now full */
    CHECK(skv_decode_multi(two, 2, ids, NULL) == SKV_ERR_RANGE && strstr(skv_last_error(), "context 1 is full"));
    CHECK(skv_context_n_past(c0) == 1 && skv_context_n_past(c1) == 8);
    skv_model *m2 = skv_test_load_model("kvt-s", 1);
    if (m2) {
        skv_context *o = make_ctx(m2, &k, 8);
        skv_context *mix[2] = {c0, o};
        CHECK(o && skv_decode_multi(mix, 2, ids, NULL) == SKV_ERR_ARG && strstr(skv_last_error(), "another model"));
        skv_context_free(o);
        skv_model_free(m2);
    }
    /* several sequences in one context: the CUDA backend's; a CPU context refuses them, naming
     * n_seq, with any policy; skv_seq_kv_bytes of a one-sequence context is its cache's bytes */
    const char *pols[] = {"full", "h2o"};
    for (int i = 0; i < 2; i++) {
        skv_context_params cp = skv_context_default_params();
        cp.n_ctx = 64, cp.n_seq = 2, cp.policy = skv_policy_default_params(pols[i]);
        skv_context *x = NULL;
        CHECKF(skv_context_init(m, cp, &x) == SKV_ERR_ARG && !x && strstr(skv_last_error(), "n_seq 2"),
               "n_seq 2 on the CPU with %s: %s", pols[i], skv_last_error());
    }
    skv_kv_usage u;
    skv_context_kv_usage(c1, &u);
    CHECK(skv_seq_kv_bytes(c1, 0) == u.bytes && u.bytes > 0 && skv_seq_kv_bytes(c1, 1) == -1);
    skv_context_free(c0), skv_context_free(c1);
}

static void test_cleanup(void) {
    skv_model_free(g_s);
    g_s = NULL;
}

void register_multi(void) {
    skv_test_add("multi_mixed_policies", test_mixed_policies);
    skv_test_add("multi_kvt_l", test_kvt_l);
    skv_test_add("multi_architectures", test_architectures);
    skv_test_add("multi_bad_calls", test_bad_calls);
    skv_test_add("multi_cleanup", test_cleanup);
}
