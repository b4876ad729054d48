/*
 * test_conformance.c — logits and greedy generations against the Hugging Face reference
 * (golden.json of kvt-s and kvt-l, docs/evaluation.md section 1).
 */
#include "harness.h"
#include "slimkv.h"

#include <cjson/cJSON.h>
#include <math.h>

#define LOGIT_TOL 2e-3

/* The reference's top-8 at one position: our logits at those ids agree within LOGIT_TOL, and
 * our ranking agrees except between ids whose logits are within LOGIT_TOL of each other. */
static void check_top(const char *model, int p, int pos, const float *lg, int V, const cJSON *tids,
                      const cJSON *tlog) {
    int k = cJSON_GetArraySize(tids);
    for (int j = 0; j < k; j++) {
        int id = (int)cJSON_GetArrayItem(tids, j)->valuedouble;
        double ref = cJSON_GetArrayItem(tlog, j)->valuedouble;
        CHECKF(fabs(lg[id] - ref) < LOGIT_TOL, "%s prompt %d pos %d top%d id %d: logit %.6f vs %.6f",
               model, p, pos, j, id, lg[id], ref);
        /* No id outside the reference's top-k may beat the k-th reference logit by > tol. */
    }
    double kth = cJSON_GetArrayItem(tlog, k - 1)->valuedouble;
    for (int v = 0; v < V; v++) {
        int in_top = 0;
        for (int j = 0; j < k && !in_top; j++) in_top = (int)cJSON_GetArrayItem(tids, j)->valuedouble == v;
        if (!in_top && lg[v] > kth + LOGIT_TOL) {
            CHECKF(0, "%s prompt %d pos %d: id %d (logit %.5f) would enter the top-%d (kth %.5f)",
                   model, p, pos, v, lg[v], k, kth);
            break;
        }
    }
}

static void conformance(const char *model, int n_threads) {
    cJSON *g = skv_test_golden(model);
    REQUIRE(g, "cannot read golden.json of %s", model);
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/models/%s", skv_test_shared_dir(), model);
    skv_model_params mp = skv_model_default_params();
    mp.n_threads = n_threads;
    skv_model *m = NULL;
    skv_status st = skv_model_load(dir, mp, &m);
    if (st) {
        cJSON_Delete(g);
        REQUIRE(0, "load %s: %s", dir, skv_last_error());
    }
    const int V = skv_model_get_info(m)->n_vocab;
    double worst = 0; /* largest |logit - reference| over every prompt's 8192 last logits */
    const cJSON *prompts = cJSON_GetObjectItem(g, "prompts");
    int np = cJSON_GetArraySize(prompts);
    CHECK(np >= 4);
    for (int p = 0; p < np; p++) {
        const cJSON *pr = cJSON_GetArrayItem(prompts, p);
        int n, ng;
        int32_t *ids = skv_test_json_ids(cJSON_GetObjectItem(pr, "ids"), &n);
        int32_t *greedy = skv_test_json_ids(cJSON_GetObjectItem(pr, "greedy32"), &ng);
        skv_context *c = NULL;
        skv_context_params cp = skv_context_default_params();
        cp.n_batch = 64; /* exercise chunked prefill on the longer prompts */
        REQUIRE(skv_context_init(m, cp, &c) == SKV_OK, "context: %s", skv_last_error());
        float *lg = malloc((size_t)n * V * sizeof(float));
        REQUIRE(skv_decode(c, ids, n, lg, 1) == SKV_OK, "decode: %s", skv_last_error());
        const cJSON *tids = cJSON_GetObjectItem(pr, "top_ids"), *tlog = cJSON_GetObjectItem(pr, "top_logits");
        for (int i = 0; i < n; i++)
            check_top(model, p, i, lg + (int64_t)i * V, V, cJSON_GetArrayItem(tids, i),
                      cJSON_GetArrayItem(tlog, i));
        const cJSON *last = cJSON_GetObjectItem(pr, "last_logits");
        double maxd = 0;
        for (int v = 0; v < V; v++) {
            double d = fabs(lg[(int64_t)(n - 1) * V + v] - cJSON_GetArrayItem(last, v)->valuedouble);
            if (d > maxd) maxd = d;
        }
        CHECKF(maxd < LOGIT_TOL, "%s prompt %d: last logits max |diff| %.2e", model, p, maxd);
        if (maxd > worst) worst = maxd;
        /* greedy continuation, one token at a time through the decode path */
        int32_t tok = skv_test_argmax(lg + (int64_t)(n - 1) * V, V);
        int mism = -1;
        for (int i = 0; i < ng; i++) {
            if (tok != greedy[i] && mism < 0) mism = i;
            if (i + 1 == ng) break;
            REQUIRE(skv_decode(c, &tok, 1, lg, 0) == SKV_OK, "decode: %s", skv_last_error());
            tok = skv_test_argmax(lg, V);
        }
        CHECKF(mism < 0, "%s prompt %d: greedy token %d differs from the reference", model, p, mism);
        free(lg);
        free(ids);
        free(greedy);
        skv_context_free(c);
    }
    printf("    %s (%d threads): largest |logit - reference| over all last-position logits: %.2e\n",
           model, n_threads, worst);
    skv_model_free(m);
    cJSON_Delete(g);
}

static void test_kvt_s(void) { conformance("kvt-s", 2); }
static void test_kvt_l(void) { conformance("kvt-l", 2); }
static void test_kvt_l_1thread(void) { conformance("kvt-l", 1); }

void register_conformance(void) {
    skv_test_add("conformance/kvt-s golden logits and greedy32", test_kvt_s);
    skv_test_add("conformance/kvt-l golden logits and greedy32", test_kvt_l);
    skv_test_add("conformance/kvt-l single thread", test_kvt_l_1thread);
}
