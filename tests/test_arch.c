/*
 * test_arch.c — Qwen2 (q/k/v biases, untied embeddings), Mistral (sliding window) and Llama
 * variants (attention_bias, explicit head_dim, linear RoPE scaling, f16/bf16/f32, sharded) on
 * small random-weight models the test writes itself, against the naive reference of
 * tiny_model.c; prefill (chunked) and token-by-token decode both checked.
 */
#include "harness.h"
#include "slimkv.h"
#include "tiny_model.h"

#include <math.h>

static void check_model(const char *name, tiny_spec spec, double tol) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", skv_test_tmpdir(), name);
    tiny_model *t = tiny_write(dir, &spec);
    REQUIRE(t, "%s: could not write the test model", name);
    const int n = 23, V = spec.vocab;
    int32_t ids[23];
    for (int i = 0; i < n; i++) ids[i] = (i * 37 + 11) % V;
    double *ref = malloc(sizeof(double) * (size_t)n * V);
    tiny_reference(t, ids, n, ref);

    skv_model *m = NULL;
    skv_model_params mp = skv_model_default_params();
    mp.n_threads = 2;
    skv_status st = skv_model_load(dir, mp, &m);
    if (st) {
        free(ref);
        tiny_free(t);
        REQUIRE(0, "%s: load failed: %s", name, skv_last_error());
    }
    const skv_model_info *in = skv_model_get_info(m);
    CHECK(in->n_vocab == V && in->n_layer == spec.layers && in->n_kv_head == spec.kv_heads);
    float *lg = malloc(sizeof(float) * (size_t)n * V);
    for (int mode = 0; mode < 2; mode++) {
        skv_context_params cp = skv_context_default_params();
        cp.n_batch = 7; /* chunks of 7, 7, 7, 2 */
        skv_context *c = NULL;
        REQUIRE(skv_context_init(m, cp, &c) == SKV_OK, "%s: context: %s", name, skv_last_error());
        if (mode == 0) {
            CHECK(skv_decode(c, ids, n, lg, 1) == SKV_OK);
        } else {
            for (int i = 0; i < n; i++) CHECK(skv_decode(c, ids + i, 1, lg + (size_t)i * V, 0) == SKV_OK);
        }
        double maxd = 0, maxv = 0;
        for (size_t i = 0; i < (size_t)n * V; i++) {
            maxd = fmax(maxd, fabs(lg[i] - ref[i]));
            maxv = fmax(maxv, fabs(ref[i]));
        }
        CHECKF(maxd < tol, "%s (%s): max |logit - reference| = %.3g (logits up to %.2f)", name,
               mode ? "decode" : "prefill", maxd, maxv);
        CHECKF(maxv > 0.5, "%s: reference logits are degenerate (max %.3g)", name, maxv);
        skv_context_free(c);
    }
    free(lg);
    free(ref);
    skv_model_free(m);
    tiny_free(t);
}

static tiny_spec base_spec(const char *arch, const char *dtype) {
    tiny_spec s = {.arch = arch, .dtype = dtype, .vocab = 97, .dim = 64, .ffn = 96, .layers = 2,
                   .heads = 4, .kv_heads = 2, .n_ctx = 64, .rope_theta = 10000.0f,
                   .rms_eps = 1e-6f, .seed = 7};
    return s;
}

static void test_qwen2_f32(void) {
    tiny_spec s = base_spec("Qwen2ForCausalLM", "F32");
    check_model("qwen2-f32", s, 1e-3);
}

static void test_qwen2_bf16_sharded(void) {
    tiny_spec s = base_spec("Qwen2ForCausalLM", "BF16");
    s.sharded = 1;
    s.seed = 99;
    check_model("qwen2-bf16-sharded", s, 1e-3);
}

static void test_mistral_sliding_f16(void) {
    tiny_spec s = base_spec("MistralForCausalLM", "F16");
    s.sliding_window = 5;
    s.kv_heads = 1;
    check_model("mistral-sw5-f16", s, 1e-3);
}

static void test_llama_bias_headdim_rope(void) {
    tiny_spec s = base_spec("LlamaForCausalLM", "F32");
    s.attn_bias = 1;
    s.head_dim = 24; /* not dim / heads */
    s.rope_linear = 2.0f;
    s.rope_theta = 500.0f;
    s.tied = 1;
    s.kv_heads = 4; /* plain multi-head attention */
    check_model("llama-bias-hd24-linear", s, 1e-3);
}

void register_arch(void) {
    skv_test_add("arch/qwen2 f32 untied with q/k/v bias vs reference", test_qwen2_f32);
    skv_test_add("arch/qwen2 bf16 sharded vs reference", test_qwen2_bf16_sharded);
    skv_test_add("arch/mistral f16 sliding window vs reference", test_mistral_sliding_f16);
    skv_test_add("arch/llama attention_bias head_dim linear-rope vs reference", test_llama_bias_headdim_rope);
}
