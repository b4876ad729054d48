/*
 * test_cuda.c — the CUDA backend against golden.json and against itself (batched decode, forks).
 * Runs where a GPU answers (a `make CUDA=1` build on the GPU machine); elsewhere each test says
 * it was skipped and why.
 */
#include "backend/cuda/gpu.h"
#include "harness.h"
#include "model/model.h"
#include "tiny_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int have_gpu(void) {
    if (skv_backend_available(SKV_BACKEND_CUDA)) return 1;
    printf("    skipped: %s\n", skv_last_error());
    return 0;
}

/* Logits of every golden prompt position on the GPU (chunked prefill) against the reference:
 * relative L2 error of the last position's logits (bf16 weights and cache: under 1e-2), top-1
 * agreement over all positions, and greedy decoding through the single-token path. */
static void golden_gpu(const char *name) {
    if (!have_gpu()) return;
    cJSON *g = skv_test_golden(name);
    skv_model *m = skv_test_load_model(name, 0);
    REQUIRE(g && m, "%s: golden or model: %s", name, skv_last_error());
    const int V = skv_model_get_info(m)->n_vocab;
    const cJSON *prompts = cJSON_GetObjectItem(g, "prompts");
    double worst_rel = 0;
    int agree = 0, total = 0, greedy_ok = 0, greedy_n = 0;
    for (int p = 0; p < cJSON_GetArraySize(prompts); p++) {
        const cJSON *pr = cJSON_GetArrayItem(prompts, p);
        int n, ng;
        int32_t *ids = skv_test_json_ids(cJSON_GetObjectItem(pr, "ids"), &n), *gr = skv_test_json_ids(cJSON_GetObjectItem(pr, "greedy32"), &ng);
        skv_context_params cp = skv_context_default_params();
        cp.n_batch = 64;
        cp.backend = SKV_BACKEND_CUDA;
        skv_context *c = NULL;
        REQUIRE(skv_context_init(m, cp, &c) == SKV_OK, "cuda context: %s", skv_last_error());
        float *lg = malloc(sizeof(float) * (size_t)n * V);
        for (size_t i = 0; i < (size_t)n * V; i++) lg[i] = NAN; /* every element must be written */
        REQUIRE(skv_decode(c, ids, n, lg, 1) == SKV_OK, "decode: %s", skv_last_error());
        const cJSON *tids = cJSON_GetObjectItem(pr, "top_ids"), *last = cJSON_GetObjectItem(pr, "last_logits");
        for (int i = 0; i < n; i++, total++)
            agree += skv_test_argmax(lg + (int64_t)i * V, V) == cJSON_GetArrayItem(cJSON_GetArrayItem(tids, i), 0)->valueint;
        double num = 0, den = 0;
        int nan = 0;
        for (int v = 0; v < V; v++) {
            const double r = cJSON_GetArrayItem(last, v)->valuedouble, x = lg[(int64_t)(n - 1) * V + v];
            nan += isnan(x);
            num += (x - r) * (x - r), den += r * r;
        }
        CHECKF(!nan, "%s prompt %d: %d NaN logits", name, p, nan);
        const double rel = sqrt(num / den);
        if (rel > worst_rel) worst_rel = rel;
        /* greedy through the decode path: count the agreeing prefix */
        int32_t tok = skv_test_argmax(lg + (int64_t)(n - 1) * V, V);
        int i = 0;
        for (; i < ng && tok == gr[i]; i++) {
            if (i + 1 == ng) {
                i++;
                break;
            }
            REQUIRE(skv_decode(c, &tok, 1, lg, 0) == SKV_OK, "decode: %s", skv_last_error());
            tok = skv_test_argmax(lg, V);
        }
        greedy_ok += i, greedy_n += ng;
        free(lg), free(ids), free(gr);
        skv_context_free(c);
    }
    printf("    %s on the GPU: last-position logits relative L2 error <= %.2e; top-1 agrees at %d/%d positions; "
           "greedy prefixes %d/%d tokens\n", name, worst_rel, agree, total, greedy_ok, greedy_n);
    CHECKF(worst_rel < 1e-2, "%s: relative L2 error %.3g of the last logits (bf16 tolerance 1e-2)", name, worst_rel);
    CHECKF(agree >= total * 0.97, "%s: top-1 agrees at only %d of %d positions", name, agree, total);
    CHECKF(greedy_ok >= greedy_n * 0.75, "%s: greedy prefixes cover only %d of %d tokens", name, greedy_ok, greedy_n);
    skv_model_free(m);
    cJSON_Delete(g);
}

static void test_golden_s(void) { golden_gpu("kvt-s"); }
static void test_golden_l(void) { golden_gpu("kvt-l"); }

/* Three sequences decoded together equal each decoded alone; a fork continues like its source. */
static void test_batch_fork(void) {
    if (!have_gpu()) return;
    skv_model *m = skv_test_load_model("kvt-l", 0);
    REQUIRE(m, "kvt-l: %s", skv_last_error());
    const int V = skv_model_get_info(m)->n_vocab, N = 3, P = 100, STEPS = 4;
    struct skv_gpu_model *gm = NULL;
    REQUIRE(skv_model_gpu(m, &gm) == SKV_OK, "%s", skv_last_error());
    skv_gpu_ctx *b = NULL, *one[3] = {0};
    REQUIRE(skv_gpu_ctx_init(gm, 256, 64, N, &b) == SKV_OK, "%s", skv_last_error());
    int32_t ids[3][100];
    for (int s = 0; s < N; s++) {
        for (int i = 0; i < P; i++) ids[s][i] = (int32_t)((i * 2654435761u + 977u * s) % 8000 + 1);
        REQUIRE(skv_gpu_ctx_init(gm, 256, 64, 1, &one[s]) == SKV_OK, "%s", skv_last_error());
        for (int off = 0; off < P; off += 64) {
            const int k = P - off < 64 ? P - off : 64;
            CHECK(skv_gpu_forward(b, s, ids[s] + off, k, off, NULL, 0) == SKV_OK);
            CHECK(skv_gpu_forward(one[s], 0, ids[s] + off, k, off, NULL, 0) == SKV_OK);
        }
    }
    float *lb = malloc(sizeof(float) * (size_t)N * V), *l1 = malloc(sizeof(float) * (size_t)V);
    int32_t cur[3] = {5, 6, 7}, pos[3] = {P, P, P}, next[3];
    double worst = 0;
    for (int t = 0; t < STEPS; t++) {
        REQUIRE(skv_gpu_decode_batch(b, cur, pos, N, lb, next) == SKV_OK, "%s", skv_last_error());
        for (int s = 0; s < N; s++) {
            CHECK(skv_gpu_forward(one[s], 0, &cur[s], 1, pos[s], l1, 0) == SKV_OK);
            for (int v = 0; v < V; v++) worst = fmax(worst, fabs(l1[v] - lb[(int64_t)s * V + v]));
            CHECK(next[s] == skv_test_argmax(lb + (int64_t)s * V, V));
            cur[s] = next[s], pos[s]++;
        }
    }
    CHECKF(worst < 1e-3, "batched vs single decode: max |logit diff| %.3g", worst);
    /* fork through the public API */
    skv_context_params cp = skv_context_default_params();
    cp.backend = SKV_BACKEND_CUDA;
    cp.n_ctx = 256;
    skv_context *a = NULL, *f = NULL;
    REQUIRE(skv_context_init(m, cp, &a) == SKV_OK, "%s", skv_last_error());
    CHECK(skv_decode(a, ids[0], P, NULL, 0) == SKV_OK);
    const skv_policy_params full = skv_policy_default_params("full"), h2o = skv_policy_default_params("h2o");
    CHECK(skv_context_fork(a, &h2o, &f) == SKV_ERR_UNSUPPORTED && !f);
    REQUIRE(skv_context_fork(a, &full, &f) == SKV_OK, "%s", skv_last_error());
    float *la = malloc(sizeof(float) * (size_t)V), *lf = malloc(sizeof(float) * (size_t)V);
    int32_t x = 42;
    CHECK(skv_decode(a, &x, 1, la, 0) == SKV_OK && skv_decode(f, &x, 1, lf, 0) == SKV_OK);
    CHECK(!memcmp(la, lf, sizeof(float) * (size_t)V));
    skv_context_free(a), skv_context_free(f);
    for (int s = 0; s < N; s++) skv_gpu_ctx_free(one[s]);
    skv_gpu_ctx_free(b);
    free(lb), free(l1), free(la), free(lf);
    skv_model_free(m);
}

/* A random Qwen2-style model with head_dim 128 and 4 query heads per KV head (the shape of the
 * large models' attention) against the double-precision reference: prefill in chunks whose
 * later ones start mid-sequence (causal offset), then single-token decode. */
static void test_tiny_hd128(void) {
    if (!have_gpu()) return;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/cuda-hd128", skv_test_tmpdir());
    const tiny_spec spec = {.arch = "Qwen2ForCausalLM", .dtype = "BF16", .vocab = 301, .dim = 512, .ffn = 768,
                            .layers = 2, .heads = 4, .kv_heads = 1, .head_dim = 128, .n_ctx = 512,
                            .rope_theta = 10000.0f, .rms_eps = 1e-6f, .seed = 11};
    tiny_model *t = tiny_write(dir, &spec);
    REQUIRE(t, "could not write the test model");
    enum { N = 300, D = 20 };
    const int V = spec.vocab;
    int32_t *ids = malloc(sizeof(int32_t) * (N + D));
    for (int i = 0; i < N + D; i++) ids[i] = (i * 37 + 11) % V;
    double *ref = malloc(sizeof(double) * (size_t)(N + D) * V);
    tiny_reference(t, ids, N + D, ref);
    skv_model *m = NULL;
    REQUIRE(skv_model_load(dir, skv_model_default_params(), &m) == SKV_OK, "%s", skv_last_error());
    skv_context_params cp = skv_context_default_params();
    cp.backend = SKV_BACKEND_CUDA;
    cp.n_batch = 128; /* chunks at positions 0, 128, 256 */
    skv_context *c = NULL;
    REQUIRE(skv_context_init(m, cp, &c) == SKV_OK, "%s", skv_last_error());
    float *lg = malloc(sizeof(float) * (size_t)(N + D) * V);
    CHECK(skv_decode(c, ids, N, lg, 1) == SKV_OK);
    for (int i = 0; i < D; i++) CHECK(skv_decode(c, ids + N + i, 1, lg + (size_t)(N + i) * V, 0) == SKV_OK);
    double worst = 0;
    for (int r = 0; r < N + D; r++) {
        double num = 0, den = 0;
        for (int v = 0; v < V; v++) {
            const double d = lg[(size_t)r * V + v] - ref[(size_t)r * V + v];
            num += d * d, den += ref[(size_t)r * V + v] * ref[(size_t)r * V + v];
        }
        worst = fmax(worst, sqrt(num / den));
    }
    printf("    head_dim 128, 4 heads per KV head: worst per-position relative L2 error %.2e\n", worst);
    CHECKF(worst < 2e-2, "relative L2 error %.3g against the double reference", worst);
    skv_context_free(c);
    skv_model_free(m);
    tiny_free(t);
    free(ids), free(ref), free(lg);
}

void register_cuda(void) {
    skv_test_add("cuda/head_dim 128 GQA model vs the double reference (prefill chunks, decode)", test_tiny_hd128);
    skv_test_add("cuda/kvt-s logits and greedy vs golden.json on the GPU", test_golden_s);
    skv_test_add("cuda/kvt-l logits and greedy vs golden.json on the GPU", test_golden_l);
    skv_test_add("cuda/batched decode = single decode; fork", test_batch_fork);
}
