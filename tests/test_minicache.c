/*
 * test_minicache.c — MiniCache-style merging (kv/minicache.c) against a brute-force
 * double-precision reference written from the formulas of docs/techniques.md section 3: SLERP
 * of a pair's directions (any t), the normalised sum for larger groups, norms kept, the most
 * distinct tokens unmerged; the bytes it accounts; option refusals; the policy end to end.
 */
#include "harness.h"
#include "kv/minicache.h"
#include "tiny_model.h"

#include <math.h>

#define HD 16
#define NT 53

static float frand(uint32_t *s) { return (float)((skv_test_xorshift(s) >> 8) / 16777216.0 * 2 - 1); }

/* rows[l][h][kv][t][d]: random, with every 4th token of layer l+1 nearly parallel to layer l's */
static void fill(float *rows, int L, int H, uint32_t seed) {
    uint32_t s = seed;
    for (int l = 0; l < L; l++)
        for (int h = 0; h < H; h++)
            for (int v = 0; v < 2; v++)
                for (int t = 0; t < NT; t++)
                    for (int d = 0; d < HD; d++) {
                        float *x = rows + ((((size_t)l * H + h) * 2 + v) * NT + t) * HD + d;
                        *x = frand(&s);
                        if (l > 0 && t % 4 == 0) *x = 0.9f * x[-(ptrdiff_t)H * 2 * NT * HD] + 0.05f * *x;
                    }
}

typedef struct ref_tok {
    double om;
    int t;
} ref_tok;
static int ref_cmp(const void *a, const void *b) {
    const ref_tok *x = a, *y = b;
    if (x->om != y->om) return x->om > y->om ? -1 : 1;
    return x->t - y->t;
}

/* Brute force of one group (layers ly[0..k)) of one (head, tensor): expected rows out. */
static void reference(const float *rows, int H, const int *ly, int k, int h, int v, double t, double keep,
                      double *out /* [k][NT][HD] */, int *n_merged) {
    double e[NT][HD], nrm[SKV_MC_MAX_GROUP][NT];
    ref_tok rk[NT];
    for (int tok = 0; tok < NT; tok++) {
        double u[SKV_MC_MAX_GROUP][HD];
        for (int i = 0; i < k; i++) {
            const float *x = rows + ((((size_t)ly[i] * H + h) * 2 + v) * NT + tok) * HD;
            double ss = 0;
            for (int d = 0; d < HD; d++) ss += (double)x[d] * x[d];
            nrm[i][tok] = sqrt(ss);
            for (int d = 0; d < HD; d++) u[i][d] = x[d] / nrm[i][tok];
        }
        double om;
        if (k == 2) {
            double dot = 0;
            for (int d = 0; d < HD; d++) dot += u[0][d] * u[1][d];
            om = acos(dot);
            for (int d = 0; d < HD; d++)
                e[tok][d] = (sin((1 - t) * om) * u[0][d] + sin(t * om) * u[1][d]) / sin(om);
        } else {
            double ss = 0;
            for (int d = 0; d < HD; d++) {
                e[tok][d] = 0;
                for (int i = 0; i < k; i++) e[tok][d] += u[i][d];
                ss += e[tok][d] * e[tok][d];
            }
            for (int d = 0; d < HD; d++) e[tok][d] /= sqrt(ss);
            om = 0;
            for (int i = 0; i < k; i++) {
                double dot = 0;
                for (int d = 0; d < HD; d++) dot += u[i][d] * e[tok][d];
                om = fmax(om, acos(dot));
            }
        }
        rk[tok] = (ref_tok){om, tok};
    }
    qsort(rk, NT, sizeof *rk, ref_cmp);
    int stay[NT] = {0};
    const int n_stay = (int)lrint(keep * NT);
    for (int r = 0; r < n_stay; r++) stay[rk[r].t] = 1;
    *n_merged = NT - n_stay;
    for (int i = 0; i < k; i++)
        for (int tok = 0; tok < NT; tok++)
            for (int d = 0; d < HD; d++)
                out[((size_t)i * NT + tok) * HD + d] =
                    stay[tok] ? rows[((((size_t)ly[i] * H + h) * 2 + v) * NT + tok) * HD + d] : nrm[i][tok] * e[tok][d];
}

static void check_apply(const char *spec, double t, double keep) {
    enum { L = 5, H = 2 };
    float *rows = malloc(sizeof(float) * L * H * 2 * NT * HD);
    fill(rows, L, H, 77);
    skv_cache c;
    REQUIRE(skv_cache_init(&c, L, H, HD, 64, SKV_KV_F32) == SKV_OK, "%s", skv_last_error());
    for (int l = 0; l < L; l++)
        for (int h = 0; h < H; h++)
            for (int tok = 0; tok < NT; tok++)
                CHECK(skv_cache_append(&c, l, h, tok, rows + ((((size_t)l * H + h) * 2 + 0) * NT + tok) * HD,
                                       rows + ((((size_t)l * H + h) * 2 + 1) * NT + tok) * HD) == SKV_OK);
    skv_mc_groups g;
    REQUIRE(skv_mc_parse(spec, L, &g) == SKV_OK, "%s", skv_last_error());
    REQUIRE(skv_mc_apply(&c, &g, (float)t, (float)keep) == SKV_OK, "%s", skv_last_error());
    double *want = malloc(sizeof(double) * SKV_MC_MAX_GROUP * NT * HD);
    float *gk = malloc(sizeof(float) * NT * HD), *gv = malloc(sizeof(float) * NT * HD);
    int64_t shared = 0;
    double worst = 0;
    int in_group[L] = {0};
    for (int j = 0; j < g.n; j++) {
        const int k = g.size[j];
        int ly[SKV_MC_MAX_GROUP];
        for (int i = 0; i < k; i++) ly[i] = g.layer[g.first[j] + i], in_group[ly[i]] = 1;
        for (int h = 0; h < H; h++)
            for (int v = 0; v < 2; v++) {
                int nm = 0;
                reference(rows, H, ly, k, h, v, t, keep, want, &nm);
                shared += (int64_t)nm * (k * HD - HD - k) * 4;
                for (int i = 0; i < k; i++) {
                    skv_cache_gather(&c, ly[i], h, gk, gv);
                    const float *got = v ? gv : gk;
                    for (int q = 0; q < NT * HD; q++) {
                        const double w = want[(size_t)i * NT * HD + q];
                        worst = fmax(worst, fabs(got[q] - w));
                    }
                }
            }
    }
    CHECKF(worst < 2e-5, "%s t %.2f keep %.2f: rows vs brute force: %.2e", spec, t, keep, worst);
    CHECKF(c.shared_bytes == shared, "%s: shared bytes %lld, formula %lld", spec, (long long)c.shared_bytes,
           (long long)shared);
    for (int l = 0; l < L; l++) /* layers outside the groups untouched */
        if (!in_group[l])
            for (int h = 0; h < H; h++) {
                skv_cache_gather(&c, l, h, gk, gv);
                CHECK(!memcmp(gk, rows + ((((size_t)l * H + h) * 2) * NT) * HD, sizeof(float) * NT * HD));
            }
    /* merging again changes nothing: merged rows share one direction */
    const int64_t sb = c.shared_bytes;
    float *k1 = malloc(sizeof(float) * NT * HD);
    skv_cache_gather(&c, g.layer[0], 0, k1, gv);
    CHECK(skv_mc_apply(&c, &g, (float)t, (float)keep) == SKV_OK);
    skv_cache_gather(&c, g.layer[0], 0, gk, gv);
    double drift = 0;
    for (int q = 0; q < NT * HD; q++) drift = fmax(drift, fabs(gk[q] - k1[q]));
    CHECKF(drift < 1e-5 && c.shared_bytes == sb, "%s: re-merging moved rows by %.2e", spec, drift);
    printf("    %s t %.2f keep %.2f: max |row - brute force| %.1e, %lld bytes shared\n", spec, t, keep, worst,
           (long long)sb);
    free(k1), free(want), free(gk), free(gv), free(rows);
    skv_cache_free(&c);
}

static void test_merge_vs_brute_force(void) {
    check_apply("1:2", 0.5, 0.05);
    check_apply("0:1,3:4", 0.3, 0.1);
    check_apply("0:2:3", 0.5, 0.0);
    check_apply("4:0:1:2:3", 0.5, 0.25);
    check_apply(NULL, 0.5, 0.05); /* default: (2, 3) of 5 */
}

static void test_parse(void) {
    skv_mc_groups g;
    CHECK(skv_mc_parse(NULL, 10, &g) == SKV_OK && g.n == 2 && g.layer[0] == 5 && g.layer[1] == 6 &&
          g.layer[2] == 7 && g.layer[3] == 8);
    CHECK(skv_mc_parse("0:1:2,3:4:5,6:7:8:9", 10, &g) == SKV_OK && g.n == 3 && g.size[2] == 4);
    const char *bad[][2] = {{"5", "one layer"}, {"0:0", "two groups"}, {"0:10", "not a cache layer"},
                            {"1:2,2:3", "two groups"}, {"1:2;3:4", "unexpected"}, {"a:b", "not a cache layer"}};
    for (int i = 0; i < 6; i++) {
        CHECKF(skv_mc_parse(bad[i][0], 10, &g) == SKV_ERR_ARG, "\"%s\" accepted", bad[i][0]);
        CHECKF(strstr(skv_last_error(), "--mc-groups") && strstr(skv_last_error(), bad[i][1]), "\"%s\": %s", bad[i][0],
               skv_last_error());
    }
    CHECK(skv_mc_parse(NULL, 1, &g) == SKV_ERR_ARG);
    /* gN: groups of N adjacent layers from the top down, the rest at the bottom unmerged */
    CHECK(skv_mc_parse("g3", 10, &g) == SKV_OK && g.n == 3 && g.size[0] == 3 && g.layer[0] == 7 &&
          g.layer[2] == 9 && g.layer[3] == 4 && g.layer[6] == 1 && g.layer[8] == 3);
    CHECK(skv_mc_parse("g5", 10, &g) == SKV_OK && g.n == 2 && g.layer[0] == 5 && g.layer[5] == 0 && g.layer[9] == 4);
    CHECK(skv_mc_parse("g10", 10, &g) == SKV_OK && g.n == 1 && g.size[0] == 10);
    const char *badg[] = {"g1", "g11", "g", "g3x", "g-2"};
    for (int i = 0; i < 5; i++)
        CHECKF(skv_mc_parse(badg[i], 10, &g) == SKV_ERR_ARG && strstr(skv_last_error(), "--mc-groups") &&
                   strstr(skv_last_error(), "gN"), "\"%s\": %s", badg[i], skv_last_error());
}

/* Stored values per token, KV head and tensor, counted token by token from a merge's outcome
 * (brute force of the bytes formula): a group's unmerged token stores its k rows, a merged one
 * e and k norms; layers outside the groups their rows. */
static double stored_fraction(const skv_mc_groups *g, int L, int hd, int n, int n_stay) {
    double vals = 0;
    int in[SKV_MC_MAX_LAYERS] = {0};
    for (int j = 0; j < g->n; j++) {
        const int k = g->size[j];
        for (int i = 0; i < k; i++) in[g->layer[g->first[j] + i]] = 1;
        for (int t = 0; t < n; t++) vals += t < n_stay ? k * hd : hd + k;
    }
    for (int l = 0; l < L; l++) vals += in[l] ? 0 : (double)n * hd;
    return vals / ((double)L * hd * n);
}

/* --mc-bytes: the unmerged fraction found by the formula stores the asked share of the bytes
 * (against a token-by-token count, over every retention 0..n, and through the cache's own
 * accounting); out-of-reach shares refused naming the option and the reachable floor. */
static void test_bytes_target(void) {
    const struct { const char *spec; int L; double frac; } cases[] = {
        {"g5", 10, 0.30}, {"g9", 10, 0.30}, {"g3", 10, 0.50}, {"g2", 10, 0.60}, {"0:1,3:4", 5, 0.7}, {"g2", 4, 1.0},
    };
    enum { N = 2048, HDB = 64 };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        skv_mc_groups g;
        REQUIRE(skv_mc_parse(cases[i].spec, cases[i].L, &g) == SKV_OK, "%s", skv_last_error());
        double keep = -1;
        REQUIRE(skv_mc_keep_for_bytes(&g, cases[i].L, HDB, cases[i].frac, &keep) == SKV_OK, "%s", skv_last_error());
        /* brute force: the retention count whose stored share is nearest the target */
        int best = 0;
        for (int s = 0; s <= N; s++)
            if (fabs(stored_fraction(&g, cases[i].L, HDB, N, s) - cases[i].frac) <
                fabs(stored_fraction(&g, cases[i].L, HDB, N, best) - cases[i].frac))
                best = s;
        const int got = (int)lrint(keep * N);
        CHECKF(abs(got - best) <= 1, "%s at %.2f: keep %.5f -> %d unmerged of %d, brute force %d", cases[i].spec,
               cases[i].frac, keep, got, N, best);
        const double achieved = stored_fraction(&g, cases[i].L, HDB, N, got);
        CHECKF(fabs(achieved - cases[i].frac) < 2e-4, "%s: stores %.6f, asked %.2f", cases[i].spec, achieved,
               cases[i].frac);
        printf("    %s of %d layers at %.2f of the bytes: keep %.5f (%d of %d unmerged), stores %.6f\n", cases[i].spec,
               cases[i].L, cases[i].frac, keep, got, N, achieved);
    }
    /* through the cache: shared bytes make the asked share (5 layers, 2 heads, 53 tokens) */
    enum { L = 5, H = 2 };
    float *rows = malloc(sizeof(float) * L * H * 2 * NT * HD);
    fill(rows, L, H, 5);
    skv_cache c;
    REQUIRE(skv_cache_init(&c, L, H, HD, 64, SKV_KV_F32) == SKV_OK, "%s", skv_last_error());
    for (int l = 0; l < L; l++)
        for (int h = 0; h < H; h++)
            for (int tok = 0; tok < NT; tok++)
                CHECK(skv_cache_append(&c, l, h, tok, rows + ((((size_t)l * H + h) * 2 + 0) * NT + tok) * HD,
                                       rows + ((((size_t)l * H + h) * 2 + 1) * NT + tok) * HD) == SKV_OK);
    skv_mc_groups g;
    REQUIRE(skv_mc_parse("g2", L, &g) == SKV_OK, "%s", skv_last_error());
    double keep;
    REQUIRE(skv_mc_keep_for_bytes(&g, L, HD, 0.75, &keep) == SKV_OK, "%s", skv_last_error());
    REQUIRE(skv_mc_apply(&c, &g, 0.5f, (float)keep) == SKV_OK, "%s", skv_last_error());
    const double full = (double)L * H * 2 * NT * HD * 4, frac = (full - (double)c.shared_bytes) / full;
    const int n_stay = (int)lrint(keep * NT);
    CHECKF(fabs(frac - stored_fraction(&g, L, HD, NT, n_stay)) < 1e-12 && fabs(frac - 0.75) < 0.01,
           "cache stores %.5f of the bytes, formula %.5f, asked 0.75", frac, stored_fraction(&g, L, HD, NT, n_stay));
    skv_cache_free(&c);
    free(rows);
    /* refusals */
    REQUIRE(skv_mc_parse("g2", 10, &g) == SKV_OK, "%s", skv_last_error());
    CHECK(skv_mc_keep_for_bytes(&g, 10, 64, 0.30, &keep) == SKV_ERR_ARG);
    CHECKF(strstr(skv_last_error(), "--mc-bytes 0.3") && strstr(skv_last_error(), "0.5156"), "%s", skv_last_error());
    CHECK(skv_mc_keep_for_bytes(&g, 10, 64, 1.5, &keep) == SKV_ERR_ARG && strstr(skv_last_error(), "--mc-bytes"));
    CHECK(skv_mc_keep_for_bytes(&g, 10, 64, 0, &keep) == SKV_ERR_ARG && strstr(skv_last_error(), "--mc-bytes"));
}

/* Through a context: bytes drop by the formula; keep = 1 merges nothing (logits as full);
 * options refused by name. */
static void test_policy(void) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/mc-tiny", skv_test_tmpdir());
    tiny_spec s = {.arch = "LlamaForCausalLM", .dtype = "F32", .vocab = 61, .dim = 32, .ffn = 48, .layers = 4,
                   .heads = 4, .kv_heads = 2, .n_ctx = 128, .rope_theta = 10000.0f, .rms_eps = 1e-6f, .seed = 9};
    tiny_model *t = tiny_write(dir, &s);
    REQUIRE(t, "cannot write the model");
    skv_model *m = NULL;
    REQUIRE(skv_model_load(dir, skv_model_default_params(), &m) == SKV_OK, "%s", skv_last_error());
    int32_t ids[64];
    for (int i = 0; i < 64; i++) ids[i] = (i * 13 + 5) % 61;
    float full[61], lg[61];
    skv_kv_usage u0, u1;
    for (int run = 0; run < 4; run++) {
        skv_context_params cp = skv_context_default_params();
        cp.n_ctx = 128;
        if (run) {
            cp.policy = skv_policy_default_params("minicache");
            if (run == 2) cp.policy.mc_keep = 1;
            if (run == 3) cp.policy.mc_groups = "g4", cp.policy.mc_bytes = 0.5f;
        }
        skv_context *c = NULL;
        REQUIRE(skv_context_init(m, cp, &c) == SKV_OK, "%s", skv_last_error());
        REQUIRE(skv_decode(c, ids, 64, NULL, 0) == SKV_OK, "%s", skv_last_error());
        int32_t nx = 7;
        REQUIRE(skv_decode(c, &nx, 1, run ? lg : full, 0) == SKV_OK, "%s", skv_last_error());
        skv_context_kv_usage(c, run ? &u1 : &u0);
        if (run == 1) {
            /* default groups of 4 cache layers: (2, 3); 64 tokens, 3 (5 %) stay: 61 merged per head and tensor */
            const int64_t saved = 2LL * 2 * 61 * (2 * 8 - 8 - 2) * 4;
            CHECKF(u0.bytes - u1.bytes == saved, /* (the decoded token is not merged) */
                   "bytes %lld vs full %lld (saving %lld)", (long long)u1.bytes, (long long)u0.bytes, (long long)saved);
            double d = 0;
            for (int i = 0; i < 61; i++) d = fmax(d, fabs(lg[i] - full[i]));
            CHECKF(d > 1e-6, "merging changed no logit");
        }
        if (run == 2) {
            CHECK(u1.bytes == u0.bytes);
            CHECK(!memcmp(lg, full, sizeof lg));
        }
        if (run == 3) { /* one group of 4 (hd 8): 12 + 20 r of 32 values = 0.5 at r = 0.2: 13 of 64 stay */
            const int64_t saved = 2LL * 2 * 51 * (4 * 8 - 8 - 4) * 4;
            CHECKF(u0.bytes - u1.bytes == saved, "--mc-bytes 0.5: bytes %lld vs full %lld (saving %lld)",
                   (long long)u1.bytes, (long long)u0.bytes, (long long)saved);
        }
        skv_context_free(c);
    }
    skv_policy_params p = skv_policy_default_params("minicache");
    p.mc_groups = "1:9";
    CHECK(skv_policy_validate(&p, m) == SKV_ERR_ARG && strstr(skv_last_error(), "--mc-groups"));
    p = skv_policy_default_params("minicache");
    p.mc_keep = 1.5f;
    CHECK(skv_policy_validate(&p, m) == SKV_ERR_ARG && strstr(skv_last_error(), "--mc-keep"));
    p = skv_policy_default_params("minicache");
    p.mc_bytes = 0.2f; /* pairs (2, 3) of 4 layers store at least 1 - (2*8-8-2)/(4*8) = 0.8125 */
    CHECK(skv_policy_validate(&p, m) == SKV_ERR_ARG && strstr(skv_last_error(), "--mc-bytes"));
    p.mc_bytes = 1.5f;
    CHECK(skv_policy_validate(&p, m) == SKV_ERR_ARG && strstr(skv_last_error(), "--mc-bytes"));
    skv_model_free(m);
    tiny_free(t);
}

void register_minicache(void) {
    skv_test_add("minicache/merge and unmerge vs brute force", test_merge_vs_brute_force);
    skv_test_add("minicache/--mc-groups parsing and refusals", test_parse);
    skv_test_add("minicache/--mc-bytes retention vs a token count", test_bytes_target);
    skv_test_add("minicache/policy through a context (bytes, keep 1 = full)", test_policy);
}
