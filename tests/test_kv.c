/*
 * test_kv.c — the KV cache and its policies: selections against brute force on random cases,
 * policies inside the model (kept sets, budgets, sinks, windows), bit-identity of runs that
 * evict nothing, KIVI round-trip error bounds, exact memory accounting, tiers, forking, and
 * bad policy parameters.
 */
#include "harness.h"
#include "kv/cache.h"
#include "kv/policy.h"
#include "kv/quant.h"
#include "slimkv.h"
#include "tiny_model.h"

#include <math.h>

static uint32_t g_rng = 2463534242u;
static uint32_t rnd(void) { return skv_test_xorshift(&g_rng); }
static float frnd(void) { return (float)(rnd() >> 8) / 16777216.0f; }

/* n distinct positions in random slot order */
static void random_positions(int32_t *pos, int n) {
    int32_t next = 0;
    for (int i = 0; i < n; i++) pos[i] = (next += 1 + (int32_t)(rnd() % 3));
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(rnd() % (uint32_t)(i + 1));
        int32_t t = pos[i];
        pos[i] = pos[j];
        pos[j] = t;
    }
}

/* rank of slot i by position: how many slots have a smaller position */
static int pos_rank(const int32_t *pos, int n, int i) {
    int r = 0;
    for (int j = 0; j < n; j++) r += pos[j] < pos[i];
    return r;
}

static int count_kept(const uint8_t *keep, int n) {
    int k = 0;
    for (int i = 0; i < n; i++) k += keep[i] != 0;
    return k;
}

static void test_select_window(void) {
    for (int trial = 0; trial < 200; trial++) {
        int n = 1 + (int)(rnd() % 120), budget = 1 + (int)(rnd() % 130), sinks = (int)(rnd() % 6);
        if (budget < sinks + 1) budget = sinks + 1;
        int32_t pos[128];
        uint8_t keep[128];
        random_positions(pos, n);
        skv_select_window(pos, n, budget, sinks, keep);
        CHECKF(count_kept(keep, n) == (n < budget ? n : budget), "window n=%d b=%d kept %d", n, budget, count_kept(keep, n));
        for (int i = 0; i < n; i++) {
            int r = pos_rank(pos, n, i);
            int want = n <= budget || r < sinks || r >= n - (budget - sinks);
            CHECKF(!!keep[i] == want, "window n=%d b=%d s=%d: slot of rank %d kept=%d want %d", n, budget, sinks, r, keep[i], want);
        }
    }
}

static void test_select_h2o(void) {
    for (int trial = 0; trial < 200; trial++) {
        int n = 1 + (int)(rnd() % 120), budget = 1 + (int)(rnd() % 130);
        float frac = (float)(rnd() % 5) / 4.0f;
        int32_t pos[128];
        float acc[128];
        uint8_t keep[128];
        random_positions(pos, n);
        for (int i = 0; i < n; i++) acc[i] = frnd();
        skv_select_h2o(pos, acc, n, budget, frac, keep);
        CHECKF(count_kept(keep, n) == (n < budget ? n : budget), "h2o kept %d", count_kept(keep, n));
        if (n <= budget) continue;
        int recent = (int)lrintf(frac * budget);
        for (int i = 0; i < n; i++) {
            int r = pos_rank(pos, n, i), want;
            if (r >= n - recent) {
                want = 1;
            } else {
                /* kept iff fewer than budget-recent older candidates have a higher score */
                int better = 0;
                for (int j = 0; j < n; j++)
                    if (pos_rank(pos, n, j) < n - recent && acc[j] > acc[i]) better++;
                want = better < budget - recent;
            }
            CHECKF(!!keep[i] == want, "h2o n=%d b=%d recent=%d: rank %d kept=%d want %d", n, budget, recent, r, keep[i], want);
        }
    }
}

static void test_select_snapkv(void) {
    for (int trial = 0; trial < 200; trial++) {
        int n = 1 + (int)(rnd() % 120), w = 1 + (int)(rnd() % 16), k = 1 + 2 * (int)(rnd() % 4);
        int budget = w + (int)(rnd() % 100);
        int32_t pos[128], order[128];
        float win[128], pooled[128];
        uint8_t keep[128];
        random_positions(pos, n);
        for (int i = 0; i < n; i++) win[i] = frnd();
        skv_select_snapkv(pos, win, n, budget, w, k, keep);
        CHECKF(count_kept(keep, n) == (n < budget ? n : budget), "snapkv kept %d", count_kept(keep, n));
        if (n <= budget) continue;
        for (int i = 0; i < n; i++) order[pos_rank(pos, n, i)] = i;
        int m = n - w;
        for (int r = 0; r < m; r++) {
            float mx = -1;
            for (int d = -k / 2; d <= k / 2; d++)
                if (r + d >= 0 && r + d < m && win[order[r + d]] > mx) mx = win[order[r + d]];
            pooled[order[r]] = mx;
        }
        for (int r = 0; r < n; r++) {
            int i = order[r], want;
            if (r >= m) {
                want = 1;
            } else {
                int better = 0;
                for (int rr = 0; rr < m; rr++) {
                    int j = order[rr];
                    if (pooled[j] > pooled[i] || (pooled[j] == pooled[i] && pos[j] > pos[i])) better++;
                }
                want = better < budget - w;
            }
            CHECKF(!!keep[i] == want, "snapkv n=%d b=%d w=%d k=%d: rank %d kept=%d want %d", n, budget, w, k, r, keep[i], want);
        }
    }
}

static void test_budgets(void) {
    skv_policy_params p = skv_policy_default_params("pyramidkv");
    p.budget = 0.25f;
    int64_t total = 0;
    int32_t prev = 1 << 30;
    for (int l = 0; l < 10; l++) {
        int32_t b = skv_policy_budget(skv_policy_find("pyramidkv"), &p, l, 10, 2000);
        CHECKF(b <= prev, "pyramid budgets must not grow with depth (%d after %d)", b, prev);
        CHECK(b >= p.obs_window);
        prev = b;
        total += b;
    }
    CHECKF(labs((long)(total - 10 * 500)) <= 10, "pyramid budgets average %lld/10, want 500", (long long)total);
    p = skv_policy_default_params("h2o");
    p.budget = 0.1f;
    CHECK(skv_policy_budget(skv_policy_find("h2o"), &p, 0, 10, 1984) == 198);
    p.budget = 0;
    p.budget_tokens = 77;
    CHECK(skv_policy_budget(skv_policy_find("h2o"), &p, 3, 10, 1984) == 77);
}

/* ---------------------------------------------------------------------------------------- */

static void test_quant_roundtrip(void) {
    const int hd = 64, B = SKV_KV_BLOCK;
    float rows[SKV_KV_BLOCK * 64], back[SKV_KV_BLOCK * 64];
    for (int f = SKV_KV_Q8; f <= SKV_KV_Q4; f++)
        for (int is_v = 0; is_v < 2; is_v++) {
            const int qmax = f == SKV_KV_Q8 ? 255 : 15;
            for (int i = 0; i < B * hd; i++) rows[i] = (frnd() * 2 - 1) * (1 + (i % hd) * 0.1f);
            size_t bytes = skv_quant_block_bytes((skv_kv_format)f, hd, is_v);
            uint8_t *blk = malloc(bytes);
            skv_quant_block((skv_kv_format)f, hd, is_v, rows, blk);
            skv_dequant_block((skv_kv_format)f, hd, is_v, blk, back, B);
            /* error <= half a step of its group's range */
            double worst = 0;
            for (int t = 0; t < B; t++)
                for (int ch = 0; ch < hd; ch++) {
                    float lo = INFINITY, hi = -INFINITY;
                    if (!is_v) {
                        for (int u = 0; u < B; u++) lo = fminf(lo, rows[u * hd + ch]), hi = fmaxf(hi, rows[u * hd + ch]);
                    } else {
                        int g0 = ch / SKV_KV_VGROUP * SKV_KV_VGROUP;
                        for (int u = g0; u < g0 + SKV_KV_VGROUP; u++) lo = fminf(lo, rows[t * hd + u]), hi = fmaxf(hi, rows[t * hd + u]);
                    }
                    double err = fabs(back[t * hd + ch] - rows[t * hd + ch]), bound = (hi - lo) / qmax / 2 * 1.0001 + 1e-6;
                    worst = fmax(worst, err / bound);
                    if (err > bound) {
                        CHECKF(0, "q%d %s: error %.3g > bound %.3g", f == SKV_KV_Q8 ? 8 : 4, is_v ? "V" : "K", err, bound);
                        t = B;
                        break;
                    }
                }
            CHECKF(worst > 0.3, "q%d %s: suspiciously exact (worst %.2f of bound)", f == SKV_KV_Q8 ? 8 : 4, is_v ? "V" : "K", worst);
            /* formula: K = 2*hd floats + codes; V = 2*B*(hd/32) floats + codes */
            size_t codes = (size_t)B * hd * (f == SKV_KV_Q8 ? 8 : 4) / 8;
            size_t want = (is_v ? 2 * B * (hd / SKV_KV_VGROUP) : 2 * hd) * 4 + codes;
            CHECKF(bytes == want, "block bytes %zu, formula %zu", bytes, want);
            free(blk);
        }
}

/* ---------------------------------------------------------------------------------------- */
/* In the model (kvt-s: 4 layers, 1 KV head, head_dim 64)                                    */
/* ---------------------------------------------------------------------------------------- */

static skv_model *g_model;
static skv_model *model(void) {
    if (!g_model) g_model = skv_test_load_model("kvt-s", 2);
    return g_model;
}

static int32_t g_ids[400];
static void prompt_ids(int n) {
    for (int i = 0; i < n; i++) g_ids[i] = (int32_t)((i * 2654435761u >> 7) % 8000 + 1);
}

static skv_context *ctx_with(const char *policy, float budget, int collect) {
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = 512;
    cp.policy = skv_policy_default_params(policy);
    cp.policy.budget = budget;
    cp.collect_stats = collect;
    skv_context *c = NULL;
    if (skv_context_init(model(), cp, &c) != SKV_OK) return NULL;
    return c;
}

/* prefill n tokens, then `steps` greedy decode steps; logits of every step into out */
static void run(skv_context *c, int n, int steps, float *out) {
    const int V = 8192;
    float *lg = malloc(sizeof(float) * V);
    CHECK(skv_decode(c, g_ids, n, lg, 0) == SKV_OK);
    for (int s = 0; s < steps; s++) {
        memcpy(out + (size_t)s * V, lg, sizeof(float) * V);
        int32_t best = 0;
        for (int v = 1; v < V; v++) best = lg[v] > lg[best] ? v : best;
        CHECK(skv_decode(c, &best, 1, lg, 0) == SKV_OK);
    }
    free(lg);
}

static void test_no_eviction_bit_identical(void) {
    REQUIRE(model(), "kvt-s: %s", skv_last_error());
    const int n = 300, steps = 6, V = 8192;
    prompt_ids(n);
    float *ref = malloc(sizeof(float) * V * steps), *got = malloc(sizeof(float) * V * steps);
    skv_context *c = ctx_with("full", 0.2f, 0);
    run(c, n, steps, ref);
    skv_context_free(c);
    /* budgets of 400 tokens hold the 300-token prompt and every decoded token: nothing is
     * evicted, yet statistics are gathered and the policy hooks run */
    const struct { const char *p; float b; int collect; } cases[] = {
        {"full", 0.2f, 1}, {"window", 0, 0}, {"h2o", 0, 0}, {"snapkv", 0, 0}, {"snapkv", 1.0f, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        skv_context_params cp = skv_context_default_params();
        cp.n_ctx = 512;
        cp.policy = skv_policy_default_params(cases[i].p);
        cp.policy.budget = cases[i].b;
        cp.policy.budget_tokens = 400;
        cp.collect_stats = cases[i].collect;
        c = NULL;
        REQUIRE(skv_context_init(model(), cp, &c) == SKV_OK, "%s", skv_last_error());
        REQUIRE(c, "context %s: %s", cases[i].p, skv_last_error());
        run(c, n, steps, got);
        CHECKF(!memcmp(ref, got, sizeof(float) * V * steps), "%s budget %g collect %d: logits differ from the plain run",
               cases[i].p, cases[i].b, cases[i].collect);
        skv_context_free(c);
    }
    /* and the policy changes the result when it does evict */
    c = ctx_with("window", 0.1f, 0);
    run(c, n, steps, got);
    CHECK(memcmp(ref, got, sizeof(float) * V * steps) != 0);
    skv_context_free(c);
    free(ref);
    free(got);
}

static void test_policies_in_model(void) {
    REQUIRE(model(), "kvt-s: %s", skv_last_error());
    const int n = 320, V = 8192;
    prompt_ids(n);
    float *lg = malloc(sizeof(float) * V * 8);
    int32_t pos[512];
    /* window: 4 sinks + most recent; keeps the budget through decode */
    skv_context *c = ctx_with("window", 0.25f, 0);
    run(c, n, 5, lg);
    for (int l = 0; l < 4; l++) {
        int32_t k = skv_context_kept(c, l, 0, pos);
        CHECKF(k == 80, "window layer %d keeps %d, want 80", l, k);
        int sinks = 0, recent = 0;
        for (int i = 0; i < k; i++) {
            sinks += pos[i] < 4;
            recent += pos[i] >= 325 - 76;
        }
        CHECKF(sinks == 4 && recent == 76, "window layer %d: %d sinks, %d recent", l, sinks, recent);
    }
    skv_context_free(c);
    /* h2o: budget held through decode, the newest tokens always in */
    c = ctx_with("h2o", 0.25f, 0);
    run(c, n, 5, lg);
    for (int l = 0; l < 4; l++) {
        int32_t k = skv_context_kept(c, l, 0, pos);
        CHECKF(k == 80, "h2o layer %d keeps %d, want 80", l, k);
        int newest = 0;
        for (int i = 0; i < k; i++) newest += pos[i] >= 325 - 40;
        CHECKF(newest == 40, "h2o layer %d: %d of the 40 newest kept", l, newest);
    }
    skv_context_free(c);
    /* snapkv: budget at compression, window kept, decode tokens appended */
    c = ctx_with("snapkv", 0.25f, 0);
    run(c, n, 5, lg);
    for (int l = 0; l < 4; l++) {
        int32_t k = skv_context_kept(c, l, 0, pos);
        CHECKF(k == 85, "snapkv layer %d keeps %d, want 80 + 5 decoded", l, k);
        int win = 0;
        for (int i = 0; i < k; i++) win += pos[i] >= 320 - 32;
        CHECKF(win == 37, "snapkv layer %d: %d of the window + decoded kept", l, win);
    }
    skv_context_free(c);
    free(lg);
}

/* forking a full context that collected statistics equals running the policy directly */
static void test_fork_matches_direct(void) {
    REQUIRE(model(), "kvt-s: %s", skv_last_error());
    const int n = 300, steps = 5, V = 8192;
    prompt_ids(n);
    const char *pols[] = {"window", "h2o", "snapkv", "pyramidkv", "quant"};
    float *a = malloc(sizeof(float) * V * steps), *b = malloc(sizeof(float) * V * steps);
    skv_context *full = ctx_with("full", 0.2f, 1);
    float *lg = malloc(sizeof(float) * V);
    CHECK(skv_decode(full, g_ids, n, lg, 0) == SKV_OK);
    for (size_t i = 0; i < sizeof pols / sizeof pols[0]; i++) {
        skv_context *d = ctx_with(pols[i], 0.2f, 0);
        run(d, n, steps, a);
        skv_policy_params pp = skv_policy_default_params(pols[i]);
        pp.budget = 0.2f;
        skv_context *f = NULL;
        REQUIRE(skv_context_fork(full, &pp, &f) == SKV_OK, "fork %s: %s", pols[i], skv_last_error());
        /* continue the fork from the prefill logits, as run() does */
        float *l2 = malloc(sizeof(float) * V);
        memcpy(l2, lg, sizeof(float) * V);
        for (int s = 0; s < steps; s++) {
            memcpy(b + (size_t)s * V, l2, sizeof(float) * V);
            int32_t best = 0;
            for (int v = 1; v < V; v++) best = l2[v] > l2[best] ? v : best;
            CHECK(skv_decode(f, &best, 1, l2, 0) == SKV_OK);
        }
        CHECKF(!memcmp(a, b, sizeof(float) * V * steps), "fork into %s differs from running it directly", pols[i]);
        for (int l = 0; l < 4; l++) CHECK(skv_context_kept(d, l, 0, NULL) == skv_context_kept(f, l, 0, NULL));
        free(l2);
        skv_context_free(d);
        skv_context_free(f);
    }
    CHECK(skv_context_n_past(full) == n);
    free(lg);
    free(a);
    free(b);
    skv_context_free(full);
}

static void test_memory_accounting(void) {
    REQUIRE(model(), "kvt-s: %s", skv_last_error());
    const int n = 300; /* 9 full blocks + 12 tokens */
    prompt_ids(n);
    const int64_t L = 4, hd = 64, blocks = 10;
    struct { const char *pol; skv_kv_format fmt; int64_t want; } cases[] = {
        {"full", SKV_KV_F32, L * blocks * SKV_KV_BLOCK * hd * 4 * 2},
        {"full", SKV_KV_BF16, L * blocks * SKV_KV_BLOCK * hd * 2 * 2},
        /* quant: 9 quantized blocks of K and of V, the last (partial) block f32 */
        {"quant8", SKV_KV_Q8, L * (9 * (int64_t)(skv_quant_block_bytes(SKV_KV_Q8, 64, 0) + skv_quant_block_bytes(SKV_KV_Q8, 64, 1)) + SKV_KV_BLOCK * hd * 4 * 2)},
        {"quant4", SKV_KV_Q4, L * (9 * (int64_t)(skv_quant_block_bytes(SKV_KV_Q4, 64, 0) + skv_quant_block_bytes(SKV_KV_Q4, 64, 1)) + SKV_KV_BLOCK * hd * 4 * 2)},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        skv_context_params cp = skv_context_default_params();
        cp.n_ctx = 512;
        cp.kv_format = cases[i].fmt;
        if (!strncmp(cases[i].pol, "quant", 5)) {
            cp.policy = skv_policy_default_params("quant");
            cp.policy.quant_bits = cases[i].fmt == SKV_KV_Q8 ? 8 : 4;
        }
        skv_context *c = NULL;
        REQUIRE(skv_context_init(model(), cp, &c) == SKV_OK, "%s", skv_last_error());
        CHECK(skv_decode(c, g_ids, n, NULL, 0) == SKV_OK);
        skv_kv_usage u;
        skv_context_kv_usage(c, &u);
        CHECKF(u.bytes == cases[i].want, "%s fmt %d: %lld bytes, formula %lld", cases[i].pol, cases[i].fmt,
               (long long)u.bytes, (long long)cases[i].want);
        CHECK(u.slots == L * n && u.bytes_fast == u.bytes && u.bytes_slow == 0);
        int64_t per_head = 0;
        for (int l = 0; l < 4; l++) per_head += skv_context_kv_bytes_head(c, l, 0);
        CHECK(per_head == u.bytes);
        skv_context_free(c);
    }
    /* after eviction: window at 25% keeps 80 tokens = 3 blocks per stream */
    skv_context *c = ctx_with("window", 0.25f, 0);
    CHECK(skv_decode(c, g_ids, 320, NULL, 0) == SKV_OK);
    skv_kv_usage u;
    skv_context_kv_usage(c, &u);
    CHECKF(u.bytes == L * 3 * SKV_KV_BLOCK * hd * 4 * 2, "window: %lld bytes", (long long)u.bytes);
    skv_context_free(c);
}

static void test_cache_tier_move(void) {
    skv_cache c;
    REQUIRE(skv_cache_init(&c, 2, 2, 64, 100, SKV_KV_BF16) == SKV_OK, "%s", skv_last_error());
    float k[64], v[64], gk[100 * 64], gv[100 * 64], gk2[100 * 64], gv2[100 * 64];
    for (int i = 0; i < 70; i++) {
        for (int j = 0; j < 64; j++) k[j] = frnd(), v[j] = frnd();
        for (int l = 0; l < 2; l++)
            for (int g = 0; g < 2; g++) CHECK(skv_cache_append(&c, l, g, i, k, v) == SKV_OK);
    }
    skv_cache_usage u0, u1;
    skv_cache_usage_get(&c, &u0);
    skv_cache_gather(&c, 1, 1, gk, gv);
    for (int l = 0; l < 2; l++)
        for (int g = 0; g < 2; g++) CHECK(skv_cache_move(&c, l, g, 1, SKV_TIER_SLOW) == SKV_OK);
    skv_cache_usage_get(&c, &u1);
    CHECK(u1.total == u0.total);
    CHECK(u1.bytes[SKV_TIER_SLOW][SKV_KV_BF16] == u0.total / 2);
    skv_cache_gather(&c, 1, 1, gk2, gv2);
    CHECK(!memcmp(gk, gk2, sizeof(float) * 70 * 64) && !memcmp(gv, gv2, sizeof(float) * 70 * 64));
    /* compaction keeps the rows of the kept slots */
    uint8_t keep[70];
    for (int i = 0; i < 70; i++) keep[i] = i % 3 == 0;
    skv_cache_compact(&c, 1, 1, keep);
    skv_cache_gather(&c, 1, 1, gk2, gv2);
    const skv_stream *st = skv_cache_stream(&c, 1, 1);
    CHECK(st->n == 24);
    for (int s = 0; s < st->n; s++) {
        CHECK(st->pos[s] == 3 * s);
        CHECK(!memcmp(gk2 + s * 64, gk + 3 * s * 64, 64 * sizeof(float)));
        CHECK(!memcmp(gv2 + s * 64, gv + 3 * s * 64, 64 * sizeof(float)));
    }
    skv_cache_free(&c);
}

/* bf16 storage: close to the f32 cache, but not the same (it is really rounded) */
static void test_bf16_close(void) {
    REQUIRE(model(), "kvt-s: %s", skv_last_error());
    const int n = 200, steps = 4, V = 8192;
    prompt_ids(n);
    float *a = malloc(sizeof(float) * V * steps), *b = malloc(sizeof(float) * V * steps);
    for (int f = 0; f < 2; f++) {
        skv_context_params cp = skv_context_default_params();
        cp.n_ctx = 512;
        cp.kv_format = f ? SKV_KV_BF16 : SKV_KV_F32;
        skv_context *c = NULL;
        REQUIRE(skv_context_init(model(), cp, &c) == SKV_OK, "%s", skv_last_error());
        run(c, n, steps, f ? b : a);
        skv_context_free(c);
    }
    double maxd = 0;
    for (size_t i = V; i < (size_t)V * steps; i++) maxd = fmax(maxd, fabs(a[i] - b[i]));
    CHECKF(maxd > 0 && maxd < 0.1, "bf16 KV vs f32: max logit difference %.3g", maxd);
    /* the first step comes from the prefill, whose own keys are used unrounded */
    CHECK(!memcmp(a, b, sizeof(float) * V));
    free(a);
    free(b);
}

static void test_bad_policy(void) {
    REQUIRE(model(), "kvt-s: %s", skv_last_error());
    struct { const char *name; float budget; int tokens; int sinks; const char *needle; } cases[] = {
        {"lru", 0.2f, 0, 4, "unknown policy 'lru'"},
        {"h2o", 0.0f, 0, 4, "budget must be > 0"},
        {"h2o", -0.1f, 0, 4, "outside (0, 1]"},
        {"snapkv", 1.5f, 0, 4, "outside (0, 1]"},
        {"window", 0.0f, 3, 4, "cannot hold 4 sinks"},
        {"snapkv", 0.0f, 16, 4, "smaller than the observation window"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        skv_policy_params p = skv_policy_default_params(cases[i].name);
        p.budget = cases[i].budget;
        p.budget_tokens = cases[i].tokens;
        p.sinks = cases[i].sinks;
        CHECK(skv_policy_validate(&p, model()) == SKV_ERR_ARG);
        CHECKF(strstr(skv_last_error(), cases[i].needle), "'%s': message '%s' lacks '%s'", cases[i].name, skv_last_error(), cases[i].needle);
        skv_context_params cp = skv_context_default_params();
        cp.policy = p;
        skv_context *c = NULL;
        CHECK(skv_context_init(model(), cp, &c) != SKV_OK && c == NULL);
    }
    /* a model without the heads the quantizer needs: head_dim 24 */
    char dir[512];
    snprintf(dir, sizeof dir, "%s/kv-hd24", skv_test_tmpdir());
    tiny_spec s = {.arch = "LlamaForCausalLM", .dtype = "F32", .vocab = 40, .dim = 48, .ffn = 64, .layers = 1,
                   .heads = 2, .kv_heads = 1, .head_dim = 24, .n_ctx = 64, .rope_theta = 10000.0f, .rms_eps = 1e-5f, .seed = 5};
    tiny_model *t = tiny_write(dir, &s);
    skv_model *m = NULL;
    REQUIRE(t && skv_model_load(dir, skv_model_default_params(), &m) == SKV_OK, "tiny model");
    skv_policy_params q = skv_policy_default_params("quant");
    CHECK(skv_policy_validate(&q, m) == SKV_ERR_UNSUPPORTED);
    CHECK(strstr(skv_last_error(), "head_dim 24") != NULL);
    q.quant_bits = 3;
    CHECK(skv_policy_validate(&q, m) == SKV_ERR_ARG);
    /* forking into h2o from a context that did not collect statistics */
    skv_context *c = ctx_with("full", 0.2f, 0), *f = NULL;
    prompt_ids(50);
    CHECK(skv_decode(c, g_ids, 50, NULL, 0) == SKV_OK);
    skv_policy_params h = skv_policy_default_params("h2o");
    CHECK(skv_context_fork(c, &h, &f) == SKV_ERR_ARG && f == NULL);
    CHECK(strstr(skv_last_error(), "collect_stats") != NULL);
    skv_context_free(c);
    skv_model_free(m);
    tiny_free(t);
}

static void test_cleanup(void) {
    skv_model_free(g_model);
    g_model = NULL;
}

void register_kv(void) {
    skv_test_add("kv/window selection vs brute force", test_select_window);
    skv_test_add("kv/h2o selection vs brute force", test_select_h2o);
    skv_test_add("kv/snapkv selection (max-pooled) vs brute force", test_select_snapkv);
    skv_test_add("kv/budgets (fraction, tokens, pyramid)", test_budgets);
    skv_test_add("kv/KIVI int8/int4 round-trip bounds and block sizes", test_quant_roundtrip);
    skv_test_add("kv/cache tiers, gather, compaction", test_cache_tier_move);
    skv_test_add("kv/runs that evict nothing are bit-identical to full", test_no_eviction_bit_identical);
    skv_test_add("kv/policies in the model: kept sets and budgets", test_policies_in_model);
    skv_test_add("kv/fork equals running the policy directly", test_fork_matches_direct);
    skv_test_add("kv/memory accounting matches the formula", test_memory_accounting);
    skv_test_add("kv/bf16 storage stays close to f32", test_bf16_close);
    skv_test_add("kv/bad policy parameters", test_bad_policy);
    skv_test_add("kv/(release the shared model)", test_cleanup);
}
