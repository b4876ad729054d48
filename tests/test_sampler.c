/*
 * test_sampler.c — sampling against brute-force expectations on small vocabularies.
 */
#include "harness.h"
#include "slimkv.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static skv_sampler *mk(float temp, int top_k, float top_p, float pen, uint64_t seed, int V) {
    skv_sampler_params p = skv_sampler_default_params();
    p.temperature = temp;
    p.top_k = top_k;
    p.top_p = top_p;
    p.repetition_penalty = pen;
    p.penalty_last_n = 0;
    p.seed = seed;
    skv_sampler *s = NULL;
    if (skv_sampler_init(p, V, &s) != SKV_OK) return NULL;
    return s;
}

static void fill(float *lg, const float *src, int V) { memcpy(lg, src, sizeof(float) * (size_t)V); }

static void test_greedy_and_seed(void) {
    const float base[6] = {0.1f, 2.0f, -1.0f, 1.9f, 0.0f, 1.0f};
    float lg[6];
    skv_sampler *s = mk(0.0f, 0, 1.0f, 1.0f, 1, 6);
    REQUIRE(s, "init");
    fill(lg, base, 6);
    CHECK(skv_sampler_sample(s, lg) == 1);
    skv_sampler_free(s);
    /* same seed, same sequence; another seed, another sequence */
    int a[64], b[64], c[64], differ = 0;
    skv_sampler *s1 = mk(1.0f, 0, 1.0f, 1.0f, 7, 6), *s2 = mk(1.0f, 0, 1.0f, 1.0f, 7, 6), *s3 = mk(1.0f, 0, 1.0f, 1.0f, 8, 6);
    for (int i = 0; i < 64; i++) {
        fill(lg, base, 6); a[i] = skv_sampler_sample(s1, lg);
        fill(lg, base, 6); b[i] = skv_sampler_sample(s2, lg);
        fill(lg, base, 6); c[i] = skv_sampler_sample(s3, lg);
        CHECK(a[i] == b[i]);
        differ += a[i] != c[i];
    }
    CHECK(differ > 0);
    skv_sampler_free(s1);
    skv_sampler_free(s2);
    skv_sampler_free(s3);
}

/* Empirical frequencies against the exact restricted, renormalised softmax. */
static void check_distribution(float temp, int top_k, float top_p) {
    enum { V = 8, N = 40000 };
    const float base[V] = {1.0f, 0.5f, 2.0f, -0.5f, 1.5f, 0.0f, 0.8f, -2.0f};
    double p[V], tot = 0;
    for (int i = 0; i < V; i++) tot += (p[i] = exp(base[i] / temp));
    for (int i = 0; i < V; i++) p[i] /= tot;
    /* brute force the allowed set: sort ids by p, keep top_k, then the nucleus */
    int order[V];
    for (int i = 0; i < V; i++) order[i] = i;
    for (int i = 0; i < V; i++)
        for (int j = i + 1; j < V; j++)
            if (p[order[j]] > p[order[i]]) { int t = order[i]; order[i] = order[j]; order[j] = t; }
    int keep = top_k > 0 && top_k < V ? top_k : V;
    double kept = 0;
    for (int i = 0; i < keep; i++) kept += p[order[i]];
    if (top_p < 1) {
        double acc = 0;
        for (int i = 0; i < keep; i++) {
            acc += p[order[i]];
            if (acc >= top_p * kept) { keep = i + 1; break; }
        }
    }
    double want[V] = {0}, z = 0;
    for (int i = 0; i < keep; i++) z += p[order[i]];
    for (int i = 0; i < keep; i++) want[order[i]] = p[order[i]] / z;
    skv_sampler *s = mk(temp, top_k, top_p, 1.0f, 1234, V);
    REQUIRE(s, "init");
    int count[V] = {0};
    float lg[V];
    for (int n = 0; n < N; n++) {
        fill(lg, base, V);
        count[skv_sampler_sample(s, lg)]++;
    }
    for (int i = 0; i < V; i++) {
        double f = (double)count[i] / N, sd = sqrt(want[i] * (1 - want[i]) / N);
        if (want[i] == 0) CHECKF(count[i] == 0, "T=%g k=%d p=%g: id %d sampled %d times, outside the allowed set", temp, top_k, top_p, i, count[i]);
        else CHECKF(fabs(f - want[i]) < 5 * sd + 1e-3, "T=%g k=%d p=%g: id %d freq %.4f want %.4f", temp, top_k, top_p, i, f, want[i]);
    }
    skv_sampler_free(s);
}

static void test_distributions(void) {
    check_distribution(1.0f, 0, 1.0f);
    check_distribution(0.5f, 0, 1.0f);
    check_distribution(1.5f, 3, 1.0f);
    check_distribution(1.0f, 0, 0.6f);
    check_distribution(1.0f, 5, 0.8f);
}

static void test_penalty(void) {
    /* id 1 leads by a little; once seen, a penalty of 2 halves its positive logit. */
    float lg[4] = {0.0f, 2.0f, 1.5f, -1.0f};
    skv_sampler *s = mk(0.0f, 0, 1.0f, 2.0f, 1, 4);
    REQUIRE(s, "init");
    skv_sampler_accept(s, 1);
    skv_sampler_accept(s, 3);
    skv_sampler_accept(s, 1); /* repeated: penalised once */
    CHECK(skv_sampler_sample(s, lg) == 2);
    CHECK(fabsf(lg[1] - 1.0f) < 1e-6f);  /* 2 / 2 */
    CHECK(fabsf(lg[3] + 2.0f) < 1e-6f);  /* -1 * 2 */
    CHECK(fabsf(lg[2] - 1.5f) < 1e-6f);  /* unseen: untouched */
    skv_sampler_free(s);
}

static void test_bad_params(void) {
    skv_sampler *s = NULL;
    skv_sampler_params p = skv_sampler_default_params();
    p.top_p = 0.0f;
    CHECK(skv_sampler_init(p, 10, &s) == SKV_ERR_ARG && s == NULL);
    CHECK(strstr(skv_last_error(), "top-p") != NULL);
    p = skv_sampler_default_params();
    p.temperature = -1.0f;
    CHECK(skv_sampler_init(p, 10, &s) == SKV_ERR_ARG);
    p = skv_sampler_default_params();
    p.top_k = -3;
    CHECK(skv_sampler_init(p, 10, &s) == SKV_ERR_ARG);
}

/* skv_decode_sampled on the CPU backend = skv_decode + skv_sampler_sample with the same seed;
 * the slow V tier is refused on the CPU backend with an error naming it. */
static void test_decode_sampled(void) {
    skv_model *m = skv_test_load_model("kvt-s", 2);
    REQUIRE(m, "kvt-s: %s", skv_last_error());
    const int V = skv_model_get_info(m)->n_vocab;
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = 128;
    skv_context *a = NULL, *b = NULL;
    REQUIRE(skv_context_init(m, cp, &a) == SKV_OK && skv_context_init(m, cp, &b) == SKV_OK, "%s", skv_last_error());
    skv_sampler *sa = mk(0.9f, 20, 0.9f, 1.2f, 77, V), *sb = mk(0.9f, 20, 0.9f, 1.2f, 77, V);
    REQUIRE(sa && sb, "sampler");
    const int32_t prompt[4] = {5, 17, 33, 9};
    float *lg = malloc(sizeof(float) * (size_t)V);
    CHECK(skv_decode(a, prompt, 4, lg, 0) == SKV_OK && skv_decode(b, prompt, 4, NULL, 0) == SKV_OK);
    float *lg2 = malloc(sizeof(float) * (size_t)V);
    memcpy(lg2, lg, sizeof(float) * (size_t)V); /* the sampler changes what it is given */
    int32_t ta = skv_sampler_sample(sa, lg), tb = skv_sampler_sample(sb, lg2), same = ta == tb;
    skv_sampler_accept(sa, ta), skv_sampler_accept(sb, tb);
    for (int i = 0; i < 20; i++) {
        CHECK(skv_decode(a, &ta, 1, lg, 0) == SKV_OK);
        ta = skv_sampler_sample(sa, lg);
        CHECK(skv_decode_sampled(b, tb, sb, &tb) == SKV_OK);
        same &= ta == tb;
        skv_sampler_accept(sa, ta), skv_sampler_accept(sb, tb);
    }
    CHECKF(same, "skv_decode_sampled drew other ids than skv_decode + skv_sampler_sample");
    CHECK(skv_context_n_past(b) == 24);
    skv_context *c = NULL;
    cp.v_slow = 1;
    CHECK(skv_context_init(m, cp, &c) == SKV_ERR_ARG && !c && strstr(skv_last_error(), "v_slow"));
    free(lg), free(lg2);
    skv_sampler_free(sa), skv_sampler_free(sb);
    skv_context_free(a), skv_context_free(b);
    skv_model_free(m);
}

void register_sampler(void) {
    skv_test_add("sampler/greedy and seeded reproducibility", test_greedy_and_seed);
    skv_test_add("sampler/temperature, top-k, top-p frequencies vs exact", test_distributions);
    skv_test_add("sampler/repetition penalty", test_penalty);
    skv_test_add("sampler/bad parameters", test_bad_params);
    skv_test_add("sampler/skv_decode_sampled = decode + sample; v_slow refused on the CPU", test_decode_sampled);
}
