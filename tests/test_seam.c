/*
 * test_seam.c — the cache seam: TOVA (the policy added through the table) against brute
 * force, cache export/import (bit-identical decoding, corrupt and mismatched buffers refused),
 * embedding input and hidden-state output, read-only past against a copied cache, the
 * layer-to-cache map, and the policy registry.
 */
#include "harness.h"
#include "kv/policy.h"
#include "model/model.h"
#include "slimkv.h"

#include <math.h>

static uint32_t g_rng = 88172645u;
static uint32_t rnd(void) { return skv_test_xorshift(&g_rng); }

/* TOVA keeps the budget's highest newest-query attention (ties: newer); a step evicts the
 * lowest (ties: older). Brute force: rank every slot by (score, position). */
static void test_tova_select(void) {
    for (int trial = 0; trial < 300; trial++) {
        const int n = 1 + (int)(rnd() % 100), budget = 1 + (int)(rnd() % 110);
        int32_t pos[128];
        float sc[128];
        uint8_t keep[128];
        for (int i = 0; i < n; i++) pos[i] = i * 2 + (int)(rnd() % 2);
        for (int i = n - 1; i > 0; i--) { /* shuffle slots */
            const int j = (int)(rnd() % (uint32_t)(i + 1));
            const int32_t t = pos[i];
            pos[i] = pos[j], pos[j] = t;
        }
        for (int i = 0; i < n; i++) sc[i] = (float)(rnd() % 7) / 7.0f; /* many ties */
        skv_select_tova(pos, sc, n, budget, keep);
        int kept = 0;
        for (int i = 0; i < n; i++) {
            int better = 0; /* slots ranked above i */
            for (int j = 0; j < n; j++) better += sc[j] > sc[i] || (sc[j] == sc[i] && pos[j] > pos[i]);
            const int want = better < budget;
            kept += keep[i] != 0;
            CHECKF(!!keep[i] == want, "tova n=%d b=%d: slot with %d better kept=%d", n, budget, better, keep[i]);
        }
        CHECK(kept == (n < budget ? n : budget));
        /* the step's victim: the lowest score, then the oldest position */
        const skv_policy_params tp = skv_policy_default_params("tova");
        const skv_evict_desc d = skv_policy_find("tova")->evict(&tp); /* the rule the policy runs */
        int32_t newest = 0;
        for (int i = 0; i < n; i++) newest = pos[i] > newest ? pos[i] : newest;
        const int32_t v = skv_select_victim(&d, pos, sc, n, budget, newest);
        int want = 0;
        for (int i = 1; i < n; i++)
            if (sc[i] < sc[want] || (sc[i] == sc[want] && pos[i] < pos[want])) want = i;
        CHECKF(v == want, "tova victim %d, brute force %d", v, want);
    }
}

static skv_model *g_s;
static skv_model *model_s(void) {
    if (!g_s) g_s = skv_test_load_model("kvt-s", 2);
    return g_s;
}

static skv_context *ctx_of(skv_model *m, const char *policy, float budget, skv_kv_format fmt, int stats) {
    skv_context_params p = skv_context_default_params();
    p.n_ctx = 512;
    p.kv_format = fmt;
    p.policy = skv_policy_default_params(policy);
    if (budget > 0) p.policy.budget = budget;
    p.collect_stats = stats;
    skv_context *c = NULL;
    return skv_context_init(m, p, &c) == SKV_OK ? c : NULL;
}

/* TOVA in the model: a fork keeps exactly what skv_select_tova picks from the source's
 * newest-query attention (read through an export), and every step holds the budget. */
static void test_tova_in_model(void) {
    skv_model *m = model_s();
    REQUIRE(m, "kvt-s: %s", skv_last_error());
    enum { P = 300 };
    int32_t ids[P];
    skv_test_ids(ids, P, 11);
    skv_context *src = ctx_of(m, "full", 0, SKV_KV_F32, 1);
    REQUIRE(src, "%s", skv_last_error());
    REQUIRE(skv_decode(src, ids, P, NULL, 0) == SKV_OK, "%s", skv_last_error());
    skv_policy_params tp = skv_policy_default_params("tova");
    tp.budget = 0.25f;
    skv_context *f = NULL;
    REQUIRE(skv_context_fork(src, &tp, &f) == SKV_OK, "%s", skv_last_error());
    const skv_model_info *in = skv_model_get_info(m);
    /* the source's statistics: export, then read the streams back through a CPU import */
    void *buf;
    size_t len;
    REQUIRE(skv_context_export(src, &buf, &len) == SKV_OK, "%s", skv_last_error());
    const uint8_t *p = (const uint8_t *)buf + 8 + 4 + 5 * 4;
    const int32_t b = (int32_t)lrintf(0.25f * P);
    int exact = 1;
    for (int l = 0; l < in->n_layer; l++)
        for (int g = 0; g < in->n_kv_head; g++) {
            int32_t n, nb;
            int64_t kb, vb;
            memcpy(&n, p, 4), memcpy(&nb, p + 4, 4), memcpy(&kb, p + 8, 8), memcpy(&vb, p + 16, 8);
            p += 24;
            int32_t pos[P];
            float last[P];
            memcpy(pos, p, 4 * (size_t)n);
            memcpy(last, p + 4 * (size_t)n * 3, 4 * (size_t)n); /* pos, acc, win, last */
            p += 16 * (size_t)n + 2 * (size_t)nb + (size_t)(kb + vb);
            uint8_t keep[P];
            skv_select_tova(pos, last, n, b, keep);
            int32_t kept[P];
            const int32_t nk = skv_context_kept(f, l, g, kept);
            int m_ = 0;
            for (int s = 0; s < n; s++) m_ += keep[s];
            if (nk != m_) exact = 0;
            for (int s = 0, j = 0; s < n && exact; s++)
                if (keep[s] && kept[j++] != pos[s]) exact = 0;
        }
    CHECKF(exact, "the TOVA fork kept a different set than skv_select_tova on the source's statistics");
    free(buf);
    int32_t tok = 77;
    for (int t = 0; t < 5; t++) {
        REQUIRE(skv_decode(f, &tok, 1, NULL, 0) == SKV_OK, "%s", skv_last_error());
        for (int l = 0; l < in->n_layer; l++)
            for (int g = 0; g < in->n_kv_head; g++) CHECK(skv_context_kept(f, l, g, NULL) == b);
        tok = tok * 31 % 8000 + 1;
    }
    skv_context_free(f);
    skv_context_free(src);
}

/* Decode the same tokens on two contexts; 1 if every logit is bit-identical. */
static int same_decode(skv_context *a, skv_context *b, int steps) {
    static float la[8192], lb[8192];
    int32_t tok = 4242, same = 1;
    for (int t = 0; t < steps; t++) {
        if (skv_decode(a, &tok, 1, la, 0) || skv_decode(b, &tok, 1, lb, 0)) return 0;
        same &= !memcmp(la, lb, sizeof la);
        tok = skv_test_argmax(la, 8192);
    }
    return same;
}

static void test_export_import(void) {
    skv_model *m = model_s();
    REQUIRE(m, "kvt-s: %s", skv_last_error());
    enum { P = 200 };
    int32_t ids[P];
    skv_test_ids(ids, P, 5);
    const struct {
        const char *policy;
        skv_kv_format fmt;
        float budget;
    } cases[] = {{"full", SKV_KV_F32, 0}, {"full", SKV_KV_BF16, 0}, {"quant", SKV_KV_F32, 0}, {"snapkv", SKV_KV_F32, 0.3f},
                 {"h2o", SKV_KV_BF16, 0.2f}};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        skv_context *a = ctx_of(m, cases[ci].policy, cases[ci].budget, cases[ci].fmt, 0);
        REQUIRE(a, "%s", skv_last_error());
        REQUIRE(skv_decode(a, ids, P, NULL, 0) == SKV_OK, "%s", skv_last_error());
        void *buf;
        size_t len;
        REQUIRE(skv_context_export(a, &buf, &len) == SKV_OK, "%s", skv_last_error());
        skv_context *b = ctx_of(m, cases[ci].policy, cases[ci].budget, cases[ci].fmt, 0);
        REQUIRE(b, "%s", skv_last_error());
        CHECKF(skv_context_import(b, buf, len) == SKV_OK, "%s: %s", cases[ci].policy, skv_last_error());
        CHECK(skv_context_n_past(b) == P);
        skv_kv_usage ua, ub;
        skv_context_kv_usage(a, &ua), skv_context_kv_usage(b, &ub);
        CHECKF(ua.bytes == ub.bytes && ua.slots == ub.slots, "%s: usage differs after import", cases[ci].policy);
        CHECKF(same_decode(a, b, 6), "%s/%d: the imported cache decodes differently", cases[ci].policy, cases[ci].fmt);
        /* importing into a context that holds tokens is refused */
        CHECK(skv_context_import(b, buf, len) == SKV_ERR_ARG);
        /* corrupt: every 97th byte flipped in turn (sampled), truncated, bad magic */
        skv_context *c = ctx_of(m, cases[ci].policy, cases[ci].budget, cases[ci].fmt, 0);
        uint8_t *bad = malloc(len);
        for (size_t i = 0; i < len; i += len / 13 + 1) {
            memcpy(bad, buf, len);
            bad[i] ^= 0x5a;
            const skv_status st = skv_context_import(c, bad, len);
            CHECKF(st == SKV_ERR_FORMAT, "flipped byte %zu of %zu: status %d (%s)", i, len, st, skv_last_error());
            CHECK(skv_context_n_past(c) == 0);
        }
        CHECK(skv_context_import(c, buf, len - 9) == SKV_ERR_FORMAT);
        CHECK(skv_context_import(c, buf, 20) == SKV_ERR_FORMAT);
        CHECK(strstr(skv_last_error(), "cache import") != NULL);
        skv_context_free(c), skv_context_free(b), skv_context_free(a);
        free(bad), free(buf);
    }
    /* a buffer whose body is consistent but whose checksum was recomputed after editing the
     * shape is refused as a shape mismatch */
    skv_model *l = skv_test_load_model("kvt-l", 2);
    REQUIRE(l, "kvt-l: %s", skv_last_error());
    skv_context *a = ctx_of(m, "full", 0, SKV_KV_F32, 0), *b = ctx_of(l, "full", 0, SKV_KV_F32, 0);
    REQUIRE(a && b, "%s", skv_last_error());
    REQUIRE(skv_decode(a, ids, 20, NULL, 0) == SKV_OK, "%s", skv_last_error());
    void *buf;
    size_t len;
    REQUIRE(skv_context_export(a, &buf, &len) == SKV_OK, "%s", skv_last_error());
    CHECK(skv_context_import(b, buf, len) == SKV_ERR_SHAPE);
    CHECKF(strstr(skv_last_error(), "cache layers") != NULL, "%s", skv_last_error());
    free(buf);
    skv_context_free(a), skv_context_free(b);
    skv_model_free(l);
}

/* Embedding input of the model's own embedding rows equals id input bit for bit; the normed
 * hidden state times the (tied) embedding matrix is the logits. */
static void test_embedding_input(void) {
    skv_model *m = model_s();
    REQUIRE(m, "kvt-s: %s", skv_last_error());
    const skv_model_info *in = skv_model_get_info(m);
    enum { P = 70 };
    const int D = in->dim, V = in->n_vocab;
    int32_t ids[P + 1];
    skv_test_ids(ids, P + 1, 9);
    float *embd = malloc(sizeof(float) * (size_t)(P + 1) * D);
    for (int i = 0; i <= P; i++) skv_weight_row_f32(&m->tok_embed, ids[i], embd + (size_t)i * D);
    skv_context *a = ctx_of(m, "full", 0, SKV_KV_F32, 0), *b = ctx_of(m, "full", 0, SKV_KV_F32, 0);
    REQUIRE(a && b, "%s", skv_last_error());
    float *la = malloc(sizeof(float) * (size_t)P * V), *lb = malloc(sizeof(float) * (size_t)P * V);
    float *h = malloc(sizeof(float) * (size_t)P * D), *hn = malloc(sizeof(float) * (size_t)P * D);
    CHECK(skv_decode(a, ids, P, la, 1) == SKV_OK);
    const skv_batch bb = {.embd = embd, .n = P, .logits = lb, .hidden = h, .hidden_normed = hn, .all = 1};
    CHECK(skv_decode_ex(b, &bb) == SKV_OK);
    CHECK(!memcmp(la, lb, sizeof(float) * (size_t)P * V));
    double worst = 0;
    for (int i = 0; i < P; i += 23) {
        float row[1024];
        for (int v = 0; v < V; v += 97) {
            skv_weight_row_f32(&m->tok_embed, v, row);
            double dot = 0;
            for (int d = 0; d < D; d++) dot += (double)row[d] * hn[(size_t)i * D + d];
            worst = fmax(worst, fabs(dot - la[(size_t)i * V + v]));
        }
    }
    CHECKF(worst < 1e-3, "normed hidden . embedding vs logits: %.3g", worst);
    /* one decode step from an embedding: the same logits as from the id */
    const skv_batch one = {.embd = embd + (size_t)P * D, .n = 1, .logits = lb, .hidden = h};
    CHECK(skv_decode(a, ids + P, 1, la, 0) == SKV_OK);
    CHECK(skv_decode_ex(b, &one) == SKV_OK);
    CHECK(!memcmp(la, lb, sizeof(float) * (size_t)V));
    const skv_batch both = {.ids = ids, .embd = embd, .n = 1};
    CHECK(skv_decode_ex(b, &both) == SKV_ERR_ARG);
    free(embd), free(la), free(lb), free(h), free(hn);
    skv_context_free(a), skv_context_free(b);
}

/* A context attending to another's cache as read-only past computes exactly what a copy of
 * that cache does (prefill chunk and decode steps, f32 and bf16). */
static void test_readonly_past(void) {
    skv_model *m = model_s();
    REQUIRE(m, "kvt-s: %s", skv_last_error());
    enum { P = 150, Q = 40 };
    int32_t ids[P + Q];
    skv_test_ids(ids, P + Q, 21);
    for (int f = 0; f < 2; f++) {
        const skv_kv_format fmt = f ? SKV_KV_BF16 : SKV_KV_F32;
        skv_context *past = ctx_of(m, "full", 0, fmt, 0);
        REQUIRE(past, "%s", skv_last_error());
        REQUIRE(skv_decode(past, ids, P, NULL, 0) == SKV_OK, "%s", skv_last_error());
        const skv_policy_params full = skv_policy_default_params("full");
        skv_context *copy = NULL, *ro = ctx_of(m, "full", 0, fmt, 0);
        REQUIRE(skv_context_fork(past, &full, &copy) == SKV_OK && ro, "%s", skv_last_error());
        REQUIRE(skv_context_set_past(ro, past) == SKV_OK, "%s", skv_last_error());
        CHECK(skv_context_n_past(ro) == P);
        static float la[8192], lb[8192];
        CHECK(skv_decode(copy, ids + P, Q, la, 0) == SKV_OK);
        CHECK(skv_decode(ro, ids + P, Q, lb, 0) == SKV_OK);
        CHECKF(!memcmp(la, lb, sizeof la), "read-only past: prefill logits differ from a copied cache (format %d)", fmt);
        CHECKF(same_decode(copy, ro, 5), "read-only past: decode steps differ from a copied cache (format %d)", fmt);
        skv_kv_usage u;
        skv_context_kv_usage(ro, &u);
        CHECK(u.slots == (int64_t)(Q + 5) * skv_model_get_info(m)->n_layer * skv_model_get_info(m)->n_kv_head);
        CHECK(skv_context_truncate(ro, P - 1) == SKV_ERR_ARG);
        CHECK(skv_context_truncate(ro, P) == SKV_OK);
        skv_context_free(copy), skv_context_free(ro), skv_context_free(past);
    }
    /* refused: a past of another shape, a non-empty context, a context collecting statistics */
    skv_context *a = ctx_of(m, "full", 0, SKV_KV_F32, 0), *b = ctx_of(m, "full", 0, SKV_KV_F32, 1);
    REQUIRE(a && b, "%s", skv_last_error());
    CHECK(skv_decode(a, ids, 10, NULL, 0) == SKV_OK);
    CHECK(skv_context_set_past(b, a) == SKV_ERR_UNSUPPORTED);
    skv_context *c = ctx_of(m, "full", 0, SKV_KV_F32, 0);
    CHECK(skv_decode(c, ids, 3, NULL, 0) == SKV_OK);
    CHECK(skv_context_set_past(c, a) == SKV_ERR_ARG);
    skv_context_free(a), skv_context_free(b), skv_context_free(c);
}

static void test_layer_map_and_registry(void) {
    skv_model *m = model_s();
    REQUIRE(m, "kvt-s: %s", skv_last_error());
    const int L = skv_model_get_info(m)->n_layer;
    CHECK(skv_model_n_cache_layers(m) == L);
    for (int l = 0; l < L; l++) {
        int32_t src = -1, app = -1;
        CHECK(skv_model_layer_cache(m, l, &src, &app) == SKV_OK && src == l && app == 1);
    }
    CHECK(skv_model_layer_cache(m, L, NULL, NULL) == SKV_ERR_ARG);
    /* every registered policy has a summary; the names the CLI lists come from here */
    const char *want[] = {"full", "window", "h2o", "snapkv", "pyramidkv", "tova", "quant", "smallkv", "kcache", "minicache"};
    REQUIRE(skv_policy_count() == (int)(sizeof want / sizeof want[0]), "%d policies", skv_policy_count());
    for (int i = 0; i < skv_policy_count(); i++) {
        CHECK(!strcmp(skv_policy_name(i), want[i]) && skv_policy_summary(i) && *skv_policy_summary(i));
    }
    CHECK(skv_policy_name(-1) == NULL && skv_policy_name(99) == NULL);
    CHECK(skv_policy_evicts("tova") == 2 && skv_policy_evicts("snapkv") == 1 && !skv_policy_evicts("quant") &&
          !skv_policy_evicts("full"));
    skv_policy_params p = skv_policy_default_params("nope");
    CHECK(skv_policy_validate(&p, m) == SKV_ERR_ARG);
    CHECKF(strstr(skv_last_error(), "tova") != NULL, "the unknown-policy message lists the registry: %s",
           skv_last_error());
    /* smallkv is a driver, not a context policy */
    skv_context_params cp = skv_context_default_params();
    cp.policy = skv_policy_default_params("smallkv");
    skv_context *c = NULL;
    CHECK(skv_context_init(m, cp, &c) == SKV_ERR_ARG && c == NULL);
}

static void test_cleanup(void) {
    skv_model_free(g_s);
    g_s = NULL;
}

void register_seam(void) {
    skv_test_add("seam/tova selection and step victim vs brute force", test_tova_select);
    skv_test_add("seam/tova in the model: fork sets and per-step budget", test_tova_in_model);
    skv_test_add("seam/export+import decodes bit-identically; corrupt buffers refused", test_export_import);
    skv_test_add("seam/embedding input = id input; hidden states", test_embedding_input);
    skv_test_add("seam/read-only past = copied cache", test_readonly_past);
    skv_test_add("seam/layer-to-cache map and policy registry", test_layer_map_and_registry);
    skv_test_add("seam/(release the shared model)", test_cleanup);
}
