/*
 * test_smallkv.c — SmallKV's model-independent parts against brute force: budget split, head
 * matching on constructed attention maps with a known answer, token classes, re-selection,
 * and the compensated attention (mass and paper normalisation).
 */
#include "harness.h"
#include "kv/smallkv.h"
#include "context/context.h"
#include "slimkv.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <unistd.h>

static uint32_t g_rng = 88172645u;
static uint32_t rnd(void) { return skv_test_xorshift(&g_rng); }
static float frnd(void) { return (float)(rnd() >> 8) / 16777216.0f; }

static void test_budget(void) {
    skv_smallkv_split s = skv_smallkv_budget(400, 2, 1, 2);
    CHECKF(s.crit == 200 && s.recent == 100 && s.marg == 200, "400 slots: %d/%d/%d", s.crit, s.recent, s.marg);
    for (int slots = 1; slots < 900; slots++) {
        s = skv_smallkv_budget(slots, 2, 1, 2);
        CHECKF(s.crit + s.recent + (s.marg + 1) / 2 <= slots, "slots %d: %d/%d/%d over budget", slots, s.crit, s.recent, s.marg);
        CHECK(s.recent >= 1 && s.crit >= 0 && s.marg >= 0);
        if (slots >= 20) {
            CHECKF(abs(s.crit - 2 * s.recent) <= 2 && abs(s.marg - s.crit) <= 2, "slots %d: ratio %d/%d/%d", slots, s.crit, s.recent, s.marg);
            CHECKF(s.crit + s.recent + (s.marg + 1) / 2 >= slots - 2, "slots %d: %d/%d/%d wastes the budget", slots, s.crit, s.recent, s.marg);
        }
    }
    s = skv_smallkv_budget(100, 2, 1, 0); /* ablation: no marginal tokens */
    CHECK(s.marg == 0 && s.crit + s.recent <= 100 && s.crit >= 65);
}

/* LLM head i attends like SLM head perm[i] (scaled, with noise below the top-K margin) */
static void test_match_known(void) {
    enum { NS = 12, NL = 60, T = 160, K = 24 };
    static float as[NS * T], al[NL * T];
    int perm[NL], f[NL];
    for (int j = 0; j < NS; j++)
        for (int t = 0; t < T; t++) as[j * T + t] = frnd() < 0.2f ? 1 + frnd() : frnd() * 0.1f;
    for (int i = 0; i < NL; i++) {
        perm[i] = (int)(rnd() % NS);
        for (int t = 0; t < T; t++) al[i * T + t] = 3 * as[perm[i] * T + t] + 0.01f * frnd();
    }
    static float jac[NL * NS];
    skv_smallkv_match(al, NL, as, NS, T, K, f, jac);
    for (int i = 0; i < NL; i++) {
        CHECKF(f[i] == perm[i], "LLM head %d matched to %d, want %d", i, f[i], perm[i]);
        CHECKF(jac[i * NS + perm[i]] >= 0.8f, "head %d: Jaccard with its source %.3f", i, jac[i * NS + perm[i]]);
    }
    /* a rank-preserving transform without noise: identical top-K sets */
    for (int i = 0; i < NL; i++)
        for (int t = 0; t < T; t++) al[i * T + t] = as[perm[i] * T + t] * as[perm[i] * T + t] + 0.5f;
    skv_smallkv_match(al, NL, as, NS, T, K, f, jac);
    for (int i = 0; i < NL; i++)
        CHECKF(f[i] == perm[i] && jac[i * NS + perm[i]] == 1.0f, "head %d: %d, J %.3f", i, f[i], jac[i * NS + perm[i]]);
}

/* Jaccard values against sets built by brute force */
static void test_match_bruteforce(void) {
    enum { NS = 5, NL = 7, T = 40, K = 9 };
    float as[NS * T], al[NL * T], jac[NL * NS];
    int f[NL];
    for (int trial = 0; trial < 20; trial++) {
        for (int i = 0; i < NS * T; i++) as[i] = frnd();
        for (int i = 0; i < NL * T; i++) al[i] = frnd();
        skv_smallkv_match(al, NL, as, NS, T, K, f, jac);
        for (int i = 0; i < NL; i++) {
            float best = -1;
            int bj = -1;
            for (int j = 0; j < NS; j++) {
                int inter = 0, uni = 0;
                for (int t = 0; t < T; t++) {
                    int ra = 0, rb = 0; /* rank = count of strictly better keys */
                    for (int u = 0; u < T; u++) {
                        ra += al[i * T + u] > al[i * T + t];
                        rb += as[j * T + u] > as[j * T + t];
                    }
                    int ina = ra < K, inb = rb < K;
                    inter += ina && inb;
                    uni += ina || inb;
                }
                float J = (float)inter / uni;
                CHECKF(fabsf(J - jac[i * NS + j]) < 1e-6, "J(%d,%d) %.4f vs %.4f", i, j, jac[i * NS + j], J);
                if (J > best) best = J, bj = j;
            }
            CHECK(f[i] == bj);
        }
    }
}

static void test_select(void) {
    for (int trial = 0; trial < 400; trial++) {
        int T = 1 + (int)(rnd() % 150);
        skv_smallkv_split s = {(int32_t)(rnd() % 40), 1 + (int32_t)(rnd() % 20), (int32_t)(rnd() % 40)};
        float sc[160];
        uint8_t cls[160];
        /* half the trials with many ties: ties go to the later key */
        for (int t = 0; t < T; t++) sc[t] = trial % 2 ? (float)(rnd() % 4) : frnd();
        skv_smallkv_select(sc, T, s, cls);
        int recent = s.recent < T ? s.recent : T, n = T - recent;
        for (int t = 0; t < T; t++) {
            int want;
            if (t >= n) {
                want = SKV_SK_RECENT;
            } else {
                int better = 0;
                for (int u = 0; u < n; u++) better += sc[u] > sc[t] || (sc[u] == sc[t] && u > t);
                want = better < s.crit ? SKV_SK_CRIT : better < s.crit + s.marg ? SKV_SK_MARG : SKV_SK_SKIP;
            }
            CHECKF(cls[t] == want, "T=%d key %d: class %d, want %d", T, t, cls[t], want);
        }
    }
}

/* a token skipped at one step comes back when the small model starts attending to it */
static void test_reselection(void) {
    enum { T = 100 };
    float sc[T];
    uint8_t cls[T];
    skv_smallkv_split s = {10, 5, 10};
    for (int t = 0; t < T; t++) sc[t] = 1.0f + 0.01f * (float)(t % 7);
    sc[3] = 0.0f;
    skv_smallkv_select(sc, T, s, cls);
    CHECK(cls[3] == SKV_SK_SKIP);
    sc[3] += 5.0f; /* the next step's accumulated attention puts it on top */
    skv_smallkv_select(sc, T, s, cls);
    CHECK(cls[3] == SKV_SK_CRIT);
}

static void brute_attend(const float *q, const float *K, const float *V, int T, int hd, const uint8_t *cls,
                         const float *p, int paper, double *o) {
    double l[256], z = 0, m = 0, mx = -1e300;
    for (int t = 0; t < T; t++) {
        l[t] = 0;
        for (int d = 0; d < hd; d++) l[t] += (double)q[d] * K[t * hd + d];
        l[t] /= sqrt((double)hd);
        if (cls[t] == SKV_SK_CRIT || cls[t] == SKV_SK_RECENT) mx = fmax(mx, l[t]);
        if (cls[t] == SKV_SK_MARG) m += p[t];
    }
    for (int t = 0; t < T; t++)
        if (cls[t] == SKV_SK_CRIT || cls[t] == SKV_SK_RECENT) z += exp(l[t] - mx);
    for (int d = 0; d < hd; d++) o[d] = 0;
    for (int t = 0; t < T; t++) {
        double w = 0;
        if (cls[t] == SKV_SK_CRIT || cls[t] == SKV_SK_RECENT) w = (paper ? 1 : 1 - m) * exp(l[t] - mx) / z;
        if (cls[t] == SKV_SK_MARG) w = p[t];
        for (int d = 0; d < hd; d++) o[d] += w * V[t * hd + d];
    }
}

static void test_attend(void) {
    enum { T = 120, HD = 16 };
    float q[HD], K[T * HD], V[T * HD], p[T], o[HD];
    double ref[HD];
    uint8_t cls[T];
    for (int trial = 0; trial < 50; trial++) {
        for (int i = 0; i < HD; i++) q[i] = frnd() * 2 - 1;
        for (int i = 0; i < T * HD; i++) K[i] = frnd() * 2 - 1, V[i] = frnd() * 2 - 1;
        double ps = 0;
        for (int t = 0; t < T; t++) ps += (p[t] = frnd());
        for (int t = 0; t < T; t++) p[t] = (float)(p[t] / ps); /* a probability row */
        for (int t = 0; t < T; t++) cls[t] = (uint8_t)(rnd() % 4);
        cls[T - 1] = SKV_SK_RECENT;
        for (int paper = 0; paper < 2; paper++) {
            skv_smallkv_attend(q, K, V, T, HD, cls, p, paper, o);
            brute_attend(q, K, V, T, HD, cls, p, paper, ref);
            for (int d = 0; d < HD; d++) CHECKF(fabs(o[d] - ref[d]) < 1e-5, "paper=%d d=%d: %.6f vs %.6f", paper, d, o[d], ref[d]);
        }
    }
    /* without marginal tokens both modes are plain attention over critical + recent */
    for (int t = 0; t < T; t++) cls[t] = t % 3 ? SKV_SK_CRIT : SKV_SK_SKIP;
    float o2[HD];
    skv_smallkv_attend(q, K, V, T, HD, cls, p, 0, o);
    skv_smallkv_attend(q, K, V, T, HD, cls, p, 1, o2);
    CHECK(!memcmp(o, o2, sizeof o));
}

static skv_model *load_s(void) { return skv_test_load_model("kvt-s", 2); }

static skv_context *head_ctx(skv_model *m) {
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = 256;
    cp.collect_head_stats = 1;
    skv_context *c = NULL;
    return skv_context_init(m, cp, &c) == SKV_OK ? c : NULL;
}

/* per-head statistics: the prefill (matrix) path equals the token-by-token path; rows sum to 1 */
static void test_head_stats(void) {
    skv_model *m = load_s();
    REQUIRE(m, "kvt-s: %s", skv_last_error());
    enum { N = 60 };
    int32_t ids[N];
    for (int i = 0; i < N; i++) ids[i] = (int32_t)((i * 2654435761u >> 9) % 8000 + 1);
    skv_context *a = head_ctx(m), *b = head_ctx(m);
    REQUIRE(a && b, "%s", skv_last_error());
    CHECK(skv_decode(a, ids, N, NULL, 0) == SKV_OK);
    for (int i = 0; i < N; i++) CHECK(skv_decode(b, ids + i, 1, NULL, 0) == SKV_OK);
    float acc_a[N + 1], acc_b[N + 1], last[N + 1];
    double worst = 0;
    for (int l = 0; l < 4; l++)
        for (int h = 0; h < 3; h++) {
            CHECK(skv_context_head_attention(a, l, h, acc_a, NULL) == SKV_OK);
            CHECK(skv_context_head_attention(b, l, h, acc_b, last) == SKV_OK);
            double sum = 0, lsum = 0;
            for (int t = 0; t < N; t++) {
                worst = fmax(worst, fabs(acc_a[t] - acc_b[t]));
                sum += acc_a[t];
                lsum += last[t];
            }
            CHECKF(fabs(sum - N) < 1e-3, "layer %d head %d: accumulated attention sums to %.5f, want %d", l, h, sum, N);
            CHECKF(fabs(lsum - 1) < 1e-5, "layer %d head %d: last row sums to %.6f", l, h, lsum);
        }
    CHECKF(worst < 1e-4, "prefill vs token-by-token head statistics differ by %.3g", worst);
    skv_context_params cp = skv_context_default_params();
    cp.collect_head_stats = 1;
    cp.policy = skv_policy_default_params("h2o");
    skv_context *bad = NULL;
    CHECK(skv_context_init(m, cp, &bad) == SKV_ERR_ARG && !bad);
    skv_context_free(a);
    skv_context_free(b);
    skv_model_free(m);
}

/* An all-critical plan is ordinary attention (bit-identical). With marginal weights equal to
 * the model's own full-attention probabilities, the mass-preserving plan reproduces full
 * attention whichever slots are marginal; the paper's unnormalised sum does not. */
static void test_plan_exactness(void) {
    skv_model *m = load_s();
    REQUIRE(m, "kvt-s: %s", skv_last_error());
    enum { N = 80, V = 8192, L = 4, H = 3, CTX = 256 };
    int32_t ids[N];
    for (int i = 0; i < N; i++) ids[i] = (int32_t)((i * 40503u + 7) % 8000 + 1);
    skv_context *base = head_ctx(m);
    REQUIRE(base, "%s", skv_last_error());
    CHECK(skv_decode(base, ids, N, NULL, 0) == SKV_OK);
    const skv_policy_params full = skv_policy_default_params("full");
    skv_context *ref = NULL, *p1 = NULL, *p2 = NULL, *p3 = NULL;
    REQUIRE(skv_context_fork(base, &full, &ref) == SKV_OK && skv_context_fork(base, &full, &p1) == SKV_OK &&
            skv_context_fork(base, &full, &p2) == SKV_OK && skv_context_fork(base, &full, &p3) == SKV_OK,
            "fork: %s", skv_last_error());
    static float lr[V], l1[V], l2[V], l3[V];
    int32_t x = 1234;
    CHECK(skv_decode(ref, &x, 1, lr, 0) == SKV_OK);
    static uint8_t cls[L * 1 * CTX];
    static float marg[L * H * CTX];
    skv_read_plan plan = {.cls = cls, .vweight = marg, .stride = CTX, .combine = SKV_PLAN_MASS};
    /* 1: everything critical, the current token recent */
    for (int i = 0; i < L * CTX; i++) cls[i] = SKV_READ_OWN;
    CHECK(skv_context_set_plan(p1, &plan) == SKV_OK);
    CHECK(skv_decode(p1, &x, 1, l1, 0) == SKV_OK);
    CHECK(!memcmp(l1, lr, sizeof lr));
    /* 2: random critical / marginal split, marginal weights = true probabilities of this step */
    for (int l = 0; l < L; l++) {
        for (int t = 0; t <= N; t++) cls[l * CTX + t] = t == N ? SKV_READ_OWN : (rnd() % 2 ? SKV_READ_OWN : SKV_READ_VONLY);
        for (int h = 0; h < H; h++) CHECK(skv_context_head_attention(ref, l, h, NULL, marg + (l * H + h) * CTX) == SKV_OK);
    }
    CHECK(skv_context_set_plan(p2, &plan) == SKV_OK);
    CHECK(skv_decode(p2, &x, 1, l2, 0) == SKV_OK);
    plan.combine = SKV_PLAN_SUM;
    CHECK(skv_context_set_plan(p3, &plan) == SKV_OK);
    CHECK(skv_decode(p3, &x, 1, l3, 0) == SKV_OK);
    double d2 = 0, d3 = 0;
    for (int v = 0; v < V; v++) d2 = fmax(d2, fabs(l2[v] - lr[v])), d3 = fmax(d3, fabs(l3[v] - lr[v]));
    CHECKF(d2 < 1e-3, "mass plan with true marginal weights: max logit difference %.3g", d2);
    CHECKF(d3 > 10 * d2 && d3 > 1e-2, "paper plan should differ (%.3g vs mass %.3g)", d3, d2);
    skv_context *q = NULL;
    skv_context_params cp = skv_context_default_params();
    cp.policy = skv_policy_default_params("window");
    CHECK(skv_context_init(m, cp, &q) == SKV_OK);
    CHECK(skv_context_set_plan(q, &plan) == SKV_ERR_ARG);
    skv_context_free(q);
    skv_context_free(base), skv_context_free(ref), skv_context_free(p1), skv_context_free(p2), skv_context_free(p3);
    skv_model_free(m);
}

/* the driver on kvt-l guided by kvt-s */
static skv_model *load_l(void) { return skv_test_load_model("kvt-l", 2); }


/* Two contexts with per-head statistics (prefix statistics up to `prefix`) that prefilled the
 * same n ids, as skv_smallkv_fork wants them; 0 if either failed. */
static int prefill_pair(skv_model *ml, skv_model *ms, int n_ctx, int prefix, const int32_t *ids, int n,
                        skv_context **bl, skv_context **bs) {
    skv_context_params bp = skv_context_default_params();
    bp.n_ctx = n_ctx;
    bp.collect_head_stats = 1;
    bp.head_prefix = prefix;
    *bl = *bs = NULL;
    if (skv_context_init(ml, bp, bl) || skv_context_init(ms, bp, bs)) return 0;
    return skv_decode(*bl, ids, n, NULL, 0) == SKV_OK && skv_decode(*bs, ids, n, NULL, 0) == SKV_OK;
}

static void gen_ids(int32_t *ids, int n, uint32_t seed) {
    for (int i = 0; i < n; i++) ids[i] = (int32_t)(((uint32_t)i * 2654435761u + seed) % 8000 + 1);
}

static void test_driver(void) {
    skv_model *ml = load_l(), *ms = load_s();
    REQUIRE(ml && ms, "models: %s", skv_last_error());
    enum { V = 8192, N = 300, STEPS = 8, CTX = 512 };
    static int32_t ids[N + STEPS];
    gen_ids(ids, N + STEPS, 99);
    static float lg[V], ref[V];

    /* 1: prompt shorter than match_len: no matching, the large model runs unchanged */
    skv_smallkv_params p = skv_smallkv_default_params();
    p.match_len = 64;
    skv_smallkv *s = NULL;
    REQUIRE(skv_smallkv_init(ml, ms, p, CTX, &s) == SKV_OK, "%s", skv_last_error());
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = CTX;
    skv_context *plain = NULL;
    REQUIRE(skv_context_init(ml, cp, &plain) == SKV_OK, "%s", skv_last_error());
    CHECK(skv_smallkv_prefill(s, ids, 40, lg) == SKV_OK);
    CHECK(skv_decode(plain, ids, 40, ref, 0) == SKV_OK);
    CHECK(!memcmp(lg, ref, sizeof lg));
    for (int t = 0; t < 10; t++) {
        CHECK(skv_smallkv_decode(s, ids[40 + t], lg) == SKV_OK);
        CHECK(skv_decode(plain, &ids[40 + t], 1, ref, 0) == SKV_OK);
        if (40 + t + 1 <= 64) CHECKF(!memcmp(lg, ref, sizeof lg), "step %d before matching differs", t);
    }
    CHECK(skv_smallkv_head_map(s) == NULL); /* 50 tokens < 64 */
    skv_smallkv_free(s);
    /* a matching length beyond the context: forks work and never match (full attention) */
    {
        skv_context *bl, *bs;
        REQUIRE(prefill_pair(ml, ms, 100, 1024, ids, 60, &bl, &bs), "%s", skv_last_error());
        p.match_len = 1024;
        skv_smallkv *a = NULL;
        REQUIRE(skv_smallkv_fork(bl, bs, p, &a) == SKV_OK, "fork with match_len > context: %s", skv_last_error());
        for (int t = 0; t < 5; t++) CHECK(skv_smallkv_decode(a, ids[60 + t], lg) == SKV_OK);
        CHECK(skv_smallkv_head_map(a) == NULL);
        skv_smallkv_usage u;
        skv_smallkv_get_usage(a, &u);
        CHECKF(u.fast_bytes == u.slow_bytes && u.fast_bytes > 0, "unmatched: fast %lld, slow %lld", (long long)u.fast_bytes, (long long)u.slow_bytes);
        skv_smallkv_free(a);
        skv_context_free(bl);
        skv_context_free(bs);
    }
    skv_context_free(plain);

    /* 2: default, no-marginal, static, paper: what each switch changes */
    static uint8_t first_cls[10 * 2 * CTX], last_cls[10 * 2 * CTX];
    float out[4][V];
    for (int mode = 0; mode < 4; mode++) {
        p = skv_smallkv_default_params();
        p.budget = 0.2f;
        p.no_marginal = mode == 1;
        p.static_select = mode == 2;
        p.paper = mode == 3;
        REQUIRE(skv_smallkv_init(ml, ms, p, CTX, &s) == SKV_OK, "%s", skv_last_error());
        CHECK(skv_smallkv_prefill(s, ids, N, lg) == SKV_OK);
        const struct skv_smallkv *v = s;
        const int32_t *f = skv_smallkv_head_map(s);
        REQUIRE(f, "not matched after a %d-token prompt", N);
        for (int i = 0; i < 60; i++) CHECK(f[i] >= 0 && f[i] < 12);
        int changed = 0, marg = 0, slid_back = 0;
        for (int t = 0; t < STEPS; t++) {
            CHECK(skv_smallkv_decode(s, ids[N + t], lg) == SKV_OK);
            const int T = N + t + 1;
            for (int k = 0; k < 20; k++)
                for (int j = 0; j < T; j++) {
                    uint8_t c = v->cls[k * CTX + j];
                    marg += c == SKV_SK_MARG;
                    if (t == 0) first_cls[k * CTX + j] = c;
                    if (t == STEPS - 1) last_cls[k * CTX + j] = c;
                }
        }
        for (int k = 0; k < 20; k++)
            for (int j = 0; j < N; j++) {
                uint8_t a = first_cls[k * CTX + j], b = last_cls[k * CTX + j];
                if (a != b && a != SKV_SK_RECENT && b != SKV_SK_RECENT) changed++;
                if (a == SKV_SK_SKIP && (b == SKV_SK_CRIT || b == SKV_SK_MARG)) slid_back++;
            }
        if (mode == 0) CHECKF(changed > 0 && slid_back > 0, "default: no saliency shift in %d steps (%d changes, %d returns)", STEPS, changed, slid_back);
        if (mode == 1) CHECKF(marg == 0, "no-marginal ablation still has %d marginal tokens", marg);
        if (mode != 1) CHECK(marg > 0);
        if (mode == 2) CHECKF(changed == 0 && slid_back == 0, "static ablation changed %d classes", changed);
        /* budget: crit+recent rows and marginal rows per KV head */
        skv_smallkv_usage u;
        skv_smallkv_get_usage(s, &u);
        const int64_t row = 64 * 4;
        int64_t want = 20 * ((int64_t)(v->split.crit + v->split.recent) * 2 * row + (int64_t)v->split.marg * row);
        if (mode == 2) want = u.fast_bytes; /* positions that left the window are dropped */
        CHECKF(u.fast_bytes == want, "mode %d: fast bytes %lld, want %lld", mode, (long long)u.fast_bytes, (long long)want);
        CHECK(u.slow_bytes > 4 * u.fast_bytes && u.draft_weight_bytes > 0 && u.draft_kv_bytes > 0);
        memcpy(out[mode], lg, sizeof lg);
        skv_smallkv_free(s);
    }
    /* 3: a driver forked from prefilled base contexts equals one that prefilled itself */
    {
        skv_context *bl, *bs;
        REQUIRE(prefill_pair(ml, ms, CTX, 128, ids, N, &bl, &bs), "%s", skv_last_error());
        p = skv_smallkv_default_params();
        skv_smallkv *a = NULL, *b = NULL;
        REQUIRE(skv_smallkv_fork(bl, bs, p, &a) == SKV_OK, "fork: %s", skv_last_error());
        REQUIRE(skv_smallkv_init(ml, ms, p, CTX, &b) == SKV_OK && skv_smallkv_prefill(b, ids, N, NULL) == SKV_OK, "%s", skv_last_error());
        static float la[V], lb[V];
        for (int t = 0; t < 4; t++) {
            CHECK(skv_smallkv_decode(a, ids[N + t], la) == SKV_OK && skv_smallkv_decode(b, ids[N + t], lb) == SKV_OK);
            CHECKF(!memcmp(la, lb, sizeof la), "forked driver differs at step %d", t);
        }
        CHECK(!memcmp(skv_smallkv_head_map(a), skv_smallkv_head_map(b), sizeof(int32_t) * 60));
        CHECK(skv_context_n_past(bl) == N); /* the bases are untouched */
        skv_smallkv_free(a);
        skv_smallkv_free(b);
        skv_context_free(bl);
        skv_context_free(bs);
    }
    CHECK(memcmp(out[0], out[3], sizeof out[0]) != 0); /* paper != mass */
    CHECK(memcmp(out[0], out[1], sizeof out[0]) != 0);
    p = skv_smallkv_default_params();
    p.budget = 1.5f;
    CHECK(skv_smallkv_init(ml, ms, p, CTX, &s) == SKV_ERR_ARG);
    skv_model_free(ml);
    skv_model_free(ms);
}

/* window statistics: queries >= from accumulate into the window sum, prefill and decode alike */
static void test_head_window(void) {
    skv_model *m = load_s();
    REQUIRE(m, "kvt-s: %s", skv_last_error());
    enum { N = 70, W = 16, STEPS = 3 };
    int32_t ids[N + STEPS];
    gen_ids(ids, N + STEPS, 5);
    skv_context *a = head_ctx(m), *b = head_ctx(m);
    REQUIRE(a && b, "%s", skv_last_error());
    CHECK(skv_context_set_head_window(a, N - W) == SKV_OK);
    CHECK(skv_decode(a, ids, N, NULL, 0) == SKV_OK);
    for (int t = 0; t < STEPS; t++) CHECK(skv_decode(a, ids + N + t, 1, NULL, 0) == SKV_OK);
    CHECK(skv_context_set_head_window(a, 3) == SKV_ERR_ARG); /* before the next position */
    CHECK(skv_decode(b, ids, N - W, NULL, 0) == SKV_OK);     /* only the queries < from */
    float acc_a[N + STEPS], acc_b[N + STEPS], win[N + STEPS];
    double worst = 0;
    for (int l = 0; l < 4; l++)
        for (int h = 0; h < 3; h++) {
            CHECK(skv_context_head_attention(a, l, h, acc_a, NULL) == SKV_OK);
            CHECK(skv_context_head_attention(b, l, h, acc_b, NULL) == SKV_OK);
            CHECK(skv_context_head_attention_window(a, l, h, win) == SKV_OK);
            double sum = 0;
            for (int t = 0; t < N + STEPS; t++) {
                const double want = acc_a[t] - (t < N - W ? acc_b[t] : 0);
                worst = fmax(worst, fabs(win[t] - want));
                sum += win[t];
            }
            CHECKF(fabs(sum - (W + STEPS)) < 1e-3, "layer %d head %d: window sums to %.4f, want %d", l, h, sum, W + STEPS);
        }
    CHECKF(worst < 1e-4, "window statistics differ from acc(all) - acc(queries < from) by %.3g", worst);
    skv_context *c = NULL;
    CHECK(skv_context_init(m, skv_context_default_params(), &c) == SKV_OK);
    CHECK(skv_context_set_head_window(c, 0) == SKV_ERR_ARG); /* no head statistics */
    skv_context_free(c);
    skv_context_free(a);
    skv_context_free(b);
    skv_model_free(m);
}

/* the window score and window matching: the map and the classes equal a brute-force
 * recomputation from the two models' window statistics */
static void test_window_score(void) {
    skv_model *ml = load_l(), *ms = load_s();
    REQUIRE(ml && ms, "models: %s", skv_last_error());
    enum { N = 200, CTX = 256, LH = 60, SH = 12, W = 24 };
    static int32_t ids[N + 2];
    gen_ids(ids, N + 2, 7);
    skv_smallkv_params p = skv_smallkv_default_params();
    p.budget = 0.2f;
    p.score = SKV_SK_SCORE_WINDOW;
    p.match_window = 1;
    p.obs_window = W;
    p.pool = 3;
    skv_smallkv *s = NULL;
    REQUIRE(skv_smallkv_init(ml, ms, p, CTX, &s) == SKV_OK, "%s", skv_last_error());
    CHECK(skv_smallkv_prefill(s, ids, N, NULL) == SKV_OK);
    const struct skv_smallkv *v = s;
    static float al[LH * N], as[SH * N];
    /* the large model's window statistics from a context of its own (the driver drops its
     * large-model statistics once heads are matched) */
    skv_context_params hp = skv_context_default_params();
    hp.n_ctx = CTX;
    hp.collect_head_stats = 1;
    skv_context *lh = NULL;
    REQUIRE(skv_context_init(ml, hp, &lh) == SKV_OK, "%s", skv_last_error());
    CHECK(skv_context_set_head_window(lh, N - W) == SKV_OK && skv_decode(lh, ids, N, NULL, 0) == SKV_OK);
    for (int i = 0; i < LH; i++) CHECK(skv_context_head_attention_window(lh, i / 6, i % 6, al + i * N) == SKV_OK);
    skv_context_free(lh);
    CHECK(skv_context_head_attention(v->lc, 0, 0, al, NULL) == SKV_ERR_ARG); /* dropped after matching */
    for (int j = 0; j < SH; j++) CHECK(skv_context_head_attention_window(v->sc, j / 3, j % 3, as + j * N) == SKV_OK);
    int32_t f[LH];
    skv_smallkv_match(al, LH, as, SH, N, v->split.crit, f, NULL);
    const int32_t *got = skv_smallkv_head_map(s);
    REQUIRE(got, "not matched after the prompt");
    CHECK(!memcmp(f, got, sizeof f));
    CHECK(skv_smallkv_decode(s, ids[N], NULL) == SKV_OK);
    const int T = N + 1;
    static float sc[CTX], pooled[CTX], row[CTX];
    static uint8_t cls[CTX];
    int bad = 0;
    for (int l = 0; l < 10; l++)
        for (int g = 0; g < 2; g++) {
            memset(sc, 0, sizeof sc);
            for (int j = 0; j < 3; j++) {
                const int fs = got[l * 6 + g * 3 + j];
                CHECK(skv_context_head_attention_window(v->sc, fs / 3, fs % 3, row) == SKV_OK);
                for (int t = 0; t < T; t++) sc[t] += row[t];
            }
            for (int t = 0; t < T; t++) {
                pooled[t] = sc[t];
                for (int u = t - 1; u <= t + 1; u++)
                    if (u >= 0 && u < T && sc[u] > pooled[t]) pooled[t] = sc[u];
            }
            skv_smallkv_select(pooled, T, v->split, cls);
            bad += memcmp(cls, v->cls + (l * 2 + g) * CTX, (size_t)T) != 0;
        }
    CHECKF(bad == 0, "%d KV heads' classes differ from the pooled window score", bad);
    skv_smallkv_free(s);
    /* a fork needs the window statistics in the prefilled contexts */
    skv_context *bl, *bs;
    REQUIRE(prefill_pair(ml, ms, CTX, 128, ids, N, &bl, &bs), "%s", skv_last_error());
    skv_smallkv *a = NULL;
    CHECK(skv_smallkv_fork(bl, bs, p, &a) == SKV_ERR_ARG && !a);
    p.pool = 4;
    CHECK(skv_smallkv_init(ml, ms, p, CTX, &a) == SKV_ERR_ARG && !a);
    skv_context_free(bl);
    skv_context_free(bs);
    skv_model_free(ml);
    skv_model_free(ms);
}

/* matching quality: a model guiding itself matches with Jaccard 1 (each head's own set is
 * there); kvt-s guiding kvt-l matches worse; none before matching */
static void test_match_quality(void) {
    skv_model *ml = load_l(), *ms = load_s();
    REQUIRE(ml && ms, "models: %s", skv_last_error());
    int32_t ids[200];
    gen_ids(ids, 200, 3);
    skv_smallkv_params p = skv_smallkv_default_params();
    p.match_len = 64;
    double j = -1, c = -1, j2 = -1, c2 = -1;
    skv_smallkv *s = NULL;
    REQUIRE(skv_smallkv_init(ms, ms, p, 256, &s) == SKV_OK, "%s", skv_last_error());
    CHECK(skv_smallkv_prefill(s, ids, 40, NULL) == SKV_OK);
    CHECK(skv_smallkv_match_quality(s, &j, &c) == SKV_ERR_ARG); /* 40 < 64 tokens: not matched */
    skv_smallkv_free(s);
    REQUIRE(skv_smallkv_init(ms, ms, p, 256, &s) == SKV_OK, "%s", skv_last_error());
    CHECK(skv_smallkv_prefill(s, ids, 200, NULL) == SKV_OK);
    CHECK(skv_smallkv_match_quality(s, &j, &c) == SKV_OK);
    CHECKF(j == 1.0 && c > 0.9 && c <= 1.0 + 1e-9, "self-matching: Jaccard %.4f, cosine %.4f", j, c);
    skv_smallkv_free(s);
    REQUIRE(skv_smallkv_init(ml, ms, p, 256, &s) == SKV_OK, "%s", skv_last_error());
    CHECK(skv_smallkv_prefill(s, ids, 200, NULL) == SKV_OK);
    CHECK(skv_smallkv_match_quality(s, &j2, &c2) == SKV_OK);
    CHECKF(j2 > 0 && j2 < 1 && c2 > 0 && c2 < c, "kvt-s -> kvt-l: Jaccard %.4f, cosine %.4f", j2, c2);
    printf("    matching on 64 tokens: kvt-s with itself Jaccard %.3f cosine %.3f; kvt-s -> kvt-l Jaccard %.3f cosine %.3f\n",
           j, c, j2, c2);
    skv_smallkv_free(s);
    skv_model_free(ml);
    skv_model_free(ms);
}

/* run, ppl and bench with --policy smallkv end to end (kvt-s guiding itself: fast) */
static void test_cli_smallkv(void) {
    const char *cli = skv_test_cli();
    char cmd[2048], *out = NULL, *err = NULL;
    char corpus[600];
    snprintf(corpus, sizeof corpus, "%s/data/corpus.val.txt.xz", skv_test_shared_dir());
    snprintf(cmd, sizeof cmd, "%s run -m models/kvt-s --policy smallkv --draft models/kvt-s --match-len 16 --budget 0.3 "
             "-p 'It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
             "want of a wife.' -n 12 --temp 0 --json -t 2", cli);
    int rc = skv_test_sh(cmd, &out, &err);
    CHECKF(rc == 0 && strstr(out, "\"ids\"") && strstr(err, "fast tier"), "run --policy smallkv: exit %d, %s %s", rc, out, err);
    free(out), free(err);
    snprintf(cmd, sizeof cmd, "%s ppl -m models/kvt-s -f %s --ctx 160 --windows 2 --policy smallkv --draft models/kvt-s "
             "--match-len 32 --budget 0.2 -q -t 2", cli, corpus);
    rc = skv_test_sh(cmd, &out, &err);
    double ppl = 0, ppl_full = 0, kl = -1;
    const char *p = strstr(out, "\"ppl\": "), *pf = strstr(out, "\"ppl_full\": "), *k = strstr(out, "\"kl_mean\": ");
    if (p) ppl = atof(p + 7);
    if (pf) ppl_full = atof(pf + 12);
    if (k) kl = atof(k + 11);
    CHECKF(rc == 0 && ppl > 1 && ppl_full > 1 && kl > 0 && strstr(out, "\"tokens_scored\": 160"),
           "ppl --policy smallkv: exit %d, %s %s", rc, out, err);
    free(out), free(err);
    snprintf(cmd, sizeof cmd, "%s bench -m models/kvt-s --policy smallkv --draft models/kvt-s --depths 96 --tg 4 -r 1 "
             "--budgets 0.25 --match-len 16 -t 2 -o %s/sk-bench.json", cli, skv_test_tmpdir());
    rc = skv_test_sh(cmd, &out, &err);
    CHECKF(rc == 0 && strstr(out, "0.25"), "bench --policy smallkv: exit %d, %s %s", rc, out, err);
    free(out), free(err);
}

/* `slimkv skmatch` with the small model equal to the large one: every head's own map is in
 * the small model, so the matched pairs' in-sample Jaccard and the best pair's held-out Jaccard
 * are 1 (a head is its own best match; ties go to the lowest head, which is then a head with an
 * identical top-K set), while random pairs stay below */
static void test_skmatch(void) {
    const char *cli = skv_test_cli();
    REQUIRE(access(cli, X_OK) == 0, "CLI binary %s not built", cli);
    char tasks[512], cmd[2048];
    snprintf(tasks, sizeof tasks, "%s/skm_tasks.jsonl", skv_test_tmpdir());
    FILE *f = fopen(tasks, "w");
    REQUIRE(f, "%s", tasks);
    for (int r = 0; r < 2; r++) {
        fprintf(f, "{\"task\": \"t%d\", \"context\": \"", r);
        for (int i = 0; i < 120; i++) fprintf(f, "item %d is %s. ", i * (r + 3) % 97, i % 3 ? "red" : "blue");
        fprintf(f, "\", \"answer\": \"x\"}\n");
    }
    fclose(f);
    snprintf(cmd, sizeof cmd, "%s skmatch -m models/kvt-s --draft models/kvt-s --tasks %s --match-len 64 --k-fracs 0.1 -t 2 -q",
             cli, tasks);
    char *out = NULL, *err = NULL;
    const int rc = skv_test_sh(cmd, &out, &err);
    REQUIRE(rc == 0, "skmatch: exit %d: %s", rc, err);
    cJSON *j = cJSON_Parse(out);
    REQUIRE(j, "skmatch output is not JSON: %s", out);
    const cJSON *k = cJSON_GetArrayItem(cJSON_GetObjectItem(j, "k"), 0);
    const cJSON *in = cJSON_GetObjectItem(k, "in_sample"), *ho = cJSON_GetObjectItem(k, "held_out");
    const double mi = cJSON_GetObjectItem(in, "matched")->valuedouble, ri = cJSON_GetObjectItem(in, "random")->valuedouble;
    const double bo = cJSON_GetObjectItem(ho, "best")->valuedouble, ro = cJSON_GetObjectItem(ho, "random")->valuedouble;
    CHECK(cJSON_GetObjectItem(j, "rows")->valueint == 2);
    CHECKF(mi == 1.0 && bo == 1.0, "in-sample matched %.4f, held-out best %.4f (want 1)", mi, bo);
    CHECKF(ri < 0.9 && ro < 0.9 && ri > 0 && ro > 0, "random pairs %.4f / %.4f", ri, ro);
    printf("    kvt-s with itself: in-sample matched %.3f vs random %.3f; held-out best %.3f vs random %.3f\n", mi, ri, bo, ro);
    cJSON_Delete(j);
    free(out), free(err);
}

void register_smallkv(void) {
    skv_test_add("smallkv/run, ppl and bench with --policy smallkv", test_cli_smallkv);
    skv_test_add("smallkv/matching quality (self = Jaccard 1; none before matching)", test_match_quality);
    skv_test_add("smallkv/window statistics (queries from a position on)", test_head_window);
    skv_test_add("smallkv/window score and window matching vs brute force", test_window_score);
    skv_test_add("smallkv/budget split 2:1:2 within the slot budget", test_budget);
    skv_test_add("smallkv/head matching recovers a known assignment", test_match_known);
    skv_test_add("smallkv/Jaccard of top-K sets vs brute force", test_match_bruteforce);
    skv_test_add("smallkv/token classes vs brute force", test_select);
    skv_test_add("smallkv/re-selection brings back a skipped token", test_reselection);
    skv_test_add("smallkv/compensated attention (mass, paper) vs brute force", test_attend);
    skv_test_add("smallkv/per-head attention statistics (prefill = token by token)", test_head_stats);
    skv_test_add("smallkv/attention plan in the model: identity and mass exactness", test_plan_exactness);
    skv_test_add("smallkv/driver: deferral, saliency shift, ablations, memory", test_driver);
    skv_test_add("smallkv/skmatch: a model matched with itself (Jaccard 1 in-sample, best 1 held out, random below)", test_skmatch);
}
