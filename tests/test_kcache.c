/*
 * test_kcache.c — KCache (policy kcache: a read plan's V top-N rule over a slow V store):
 * the top-N set against brute force (ties, N >= n, N = 1), a group's reads and both weightings
 * against a double-precision reference, N >= context reproducing the full cache's logits bit
 * for bit (mmap and zstd stores, renorm and exact, and over snapkv), the rows read equal to the
 * rows stored (counts, and identical logits from both stores), and bad input (N <= 0, a
 * fraction above 1, a store that cannot be created or is truncated under a running context, R
 * larger than the budget or the context, CLI flags).
 */
#include "harness.h"
#include "kv/plan.h"
#include "slimkv.h"

#include <dirent.h>
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>

static uint32_t g_rng = 1234567u;
static uint32_t rnd(void) { return skv_test_xorshift(&g_rng); }

/* Brute force: the N best slots by (score desc, slot asc), in ascending slot order. */
static int brute_top(const float *sc, int n, int N, int32_t *out) {
    int k = 0;
    for (int i = 0; i < n; i++) {
        int better = 0;
        for (int j = 0; j < n; j++) better += sc[j] > sc[i] || (sc[j] == sc[i] && j < i);
        if (better < N) out[k++] = i;
    }
    return k;
}

static void test_topn_brute(void) {
    enum { MAXN = 300 };
    float sc[MAXN];
    int32_t got[MAXN], want[MAXN], idx[MAXN];
    for (int trial = 0; trial < 2000; trial++) {
        const int n = 1 + (int)(rnd() % MAXN);
        const int levels = trial % 3 == 0 ? 3 : trial % 3 == 1 ? 50 : 100000; /* many ties to none */
        for (int i = 0; i < n; i++) sc[i] = (float)(rnd() % (uint32_t)levels) / (float)levels;
        int N;
        switch (trial % 5) {
        case 0: N = 1; break;
        case 1: N = n; break;
        case 2: N = n + 1 + (int)(rnd() % 10); break;
        default: N = 1 + (int)(rnd() % (uint32_t)n);
        }
        const int k = skv_vtop_select(sc, n, N, got, idx);
        const int kw = brute_top(sc, n, N, want);
        REQUIRE(k == kw, "n=%d N=%d: %d selected, brute force %d", n, N, k, kw);
        REQUIRE(!memcmp(got, want, sizeof(int32_t) * (size_t)k), "n=%d N=%d levels=%d: sets differ", n, N, levels);
    }
    /* all equal: the lowest slots; N = 0 selects nothing */
    for (int i = 0; i < 10; i++) sc[i] = 0.5f;
    CHECK(skv_vtop_select(sc, 10, 3, got, idx) == 3 && got[0] == 0 && got[1] == 1 && got[2] == 2);
    CHECK(skv_vtop_select(sc, 10, 0, got, idx) == 0);
}

/* A group's reads and output against a double reference: softmax over every slot (double),
 * group ranking (sum / max / per-head union), weights exact or renormalised over the rows read,
 * o_h = sum w V. The engine's side: float softmax, skv_vtop_group, float accumulation. */
static void test_weighting_reference(void) {
    enum { H = 4, MAXN = 200, HD = 16 };
    static float probs[H][MAXN], V[MAXN][HD], rank[MAXN];
    static double lg[H][MAXN], pd[H][MAXN];
    int32_t sel[MAXN], idx[MAXN], bsel[MAXN];
    uint8_t mark[MAXN];
    float inv[H];
    double worst = 0;
    for (int trial = 0; trial < 600; trial++) {
        const int nh = 1 + (int)(rnd() % H), n = 2 + (int)(rnd() % (MAXN - 1));
        const int ns = (int)(rnd() % (uint32_t)(n + 1));
        skv_vtop_rule r = {.on = 1, .n = 1 + (int)(rnd() % 40), .gran = (int)(rnd() % 3), .weight = (int)(rnd() % 2)};
        if (trial % 7 == 0) r.n = 0, r.frac = 0.05f + 0.9f * (float)(rnd() % 100) / 100.0f;
        for (int j = 0; j < nh; j++) {
            double mx = -1e300, z = 0;
            for (int s = 0; s < n; s++) {
                lg[j][s] = 4.0 * ((double)(rnd() % 100000) / 100000.0 - 0.5); /* distinct: no ties */
                mx = fmax(mx, lg[j][s]);
            }
            for (int s = 0; s < n; s++) z += exp(lg[j][s] - mx);
            float mf = -INFINITY, zf = 0;
            for (int s = 0; s < n; s++) pd[j][s] = exp(lg[j][s] - mx) / z, mf = fmaxf(mf, (float)lg[j][s]);
            for (int s = 0; s < n; s++) zf += probs[j][s] = expf((float)lg[j][s] - mf);
            for (int s = 0; s < n; s++) probs[j][s] /= zf;
        }
        for (int s = 0; s < n; s++)
            for (int d = 0; d < HD; d++) V[s][d] = (float)(rnd() % 2001) / 1000.0f - 1.0f;
        const int nsel = skv_vtop_group(&r, &probs[0][0], MAXN, nh, n, ns, sel, inv, rank, idx, mark);
        /* reference set (double scores) */
        const int N = skv_vtop_count(&r, n, ns);
        int nb = 0;
        if (N >= ns) {
            for (int s = 0; s < ns; s++) bsel[nb++] = s;
        } else if (r.gran == SKV_VTOP_UNION) {
            uint8_t in[MAXN] = {0};
            for (int j = 0; j < nh; j++) {
                float sc[MAXN];
                int32_t t[MAXN];
                for (int s = 0; s < ns; s++) sc[s] = (float)pd[j][s];
                const int k = brute_top(sc, ns, N, t);
                for (int i = 0; i < k; i++) in[t[i]] = 1;
            }
            for (int s = 0; s < ns; s++)
                if (in[s]) bsel[nb++] = s;
        } else {
            float sc[MAXN];
            for (int s = 0; s < ns; s++) {
                double v = pd[0][s];
                for (int j = 1; j < nh; j++) v = r.gran == SKV_VTOP_MAX ? fmax(v, pd[j][s]) : v + pd[j][s];
                sc[s] = (float)v;
            }
            nb = brute_top(sc, ns, N, bsel);
        }
        REQUIRE(nsel == nb && !memcmp(sel, bsel, sizeof(int32_t) * (size_t)nb),
                "trial %d (n=%d ns=%d N=%d gran=%d): selected %d rows, reference %d", trial, n, ns, N, r.gran, nsel, nb);
        for (int j = 0; j < nh; j++) {
            double z = 0, od[HD] = {0};
            for (int i = 0; i < nb; i++) z += pd[j][bsel[i]];
            for (int s = ns; s < n; s++) z += pd[j][s];
            const double w = r.weight == SKV_VTOP_RENORM ? 1.0 / z : 1.0;
            float of[HD] = {0};
            for (int i = 0; i < nb; i++)
                for (int d = 0; d < HD; d++) od[d] += pd[j][bsel[i]] * w * V[bsel[i]][d];
            for (int s = ns; s < n; s++)
                for (int d = 0; d < HD; d++) od[d] += pd[j][s] * w * V[s][d];
            for (int i = 0; i < nsel; i++)
                for (int d = 0; d < HD; d++) of[d] += probs[j][sel[i]] * inv[j] * V[sel[i]][d];
            for (int s = ns; s < n; s++)
                for (int d = 0; d < HD; d++) of[d] += probs[j][s] * inv[j] * V[s][d];
            for (int d = 0; d < HD; d++) worst = fmax(worst, fabs(of[d] - od[d]));
            if (r.weight == SKV_VTOP_RENORM) { /* renormalised weights sum to 1 */
                double sw = 0;
                for (int i = 0; i < nsel; i++) sw += probs[j][sel[i]] * inv[j];
                for (int s = ns; s < n; s++) sw += probs[j][s] * inv[j];
                CHECKF(fabs(sw - 1) < 1e-5, "renormalised weights sum to %.8f", sw);
            }
        }
    }
    CHECKF(worst < 2e-5, "largest difference from the double reference: %g", worst);
}

/* ---------------------------------------------------------------------------------------- */

static skv_model *g_s;
static skv_model *model_s(void) {
    if (!g_s) g_s = skv_test_load_model("kvt-s", 2);
    return g_s;
}

static skv_policy_params kc_params(int n, int recent, int store) {
    skv_policy_params p = skv_policy_default_params("kcache");
    p.kc_n = n;
    p.kc_recent = recent;
    p.kc_store = store;
    return p;
}

static skv_kv_format g_fmt = SKV_KV_F32;
static skv_context *ctx_with(skv_model *m, skv_policy_params pol, int n_ctx) {
    skv_context_params p = skv_context_default_params();
    p.kv_format = g_fmt;
    p.n_ctx = n_ctx;
    p.policy = pol;
    skv_context *c = NULL;
    return skv_context_init(m, p, &c) == SKV_OK ? c : NULL;
}

/* Prefill P tokens, then `steps` greedy steps on each; 1 if all logits are bit-identical. */
static int same_logits(skv_context *a, skv_context *b, const int32_t *ids, int P, int steps) {
    static float la[8192], lb[8192];
    if (skv_decode(a, ids, P, la, 0) || skv_decode(b, ids, P, lb, 0)) return 0;
    int same = !memcmp(la, lb, sizeof la);
    for (int t = 0; t < steps && same; t++) {
        int32_t tok = skv_test_argmax(la, 8192);
        if (skv_decode(a, &tok, 1, la, 0) || skv_decode(b, &tok, 1, lb, 0)) return 0;
        same &= !memcmp(la, lb, sizeof la);
    }
    return same;
}

/* N >= context: every V row is read and weighted as ordinary attention does, in the same
 * order: the logits equal the full cache's bit for bit (mmap and zstd; renorm, exact, a
 * fraction of 1; f32, bf16, int8 and int4 caches; over snapkv against snapkv alone). */
static void test_full_n_bit_identical(void) {
    skv_model *m = model_s();
    REQUIRE(m, "kvt-s: %s", skv_last_error());
    enum { P = 300, STEPS = 40 };
    int32_t ids[P];
    skv_test_ids(ids, P, 5);
    for (int v = 0; v < 8; v++) {
        /* a bf16 cache stores bf16 rows, an int8 / int4 (KIVI) cache its quantized blocks */
        g_fmt = v == 5 ? SKV_KV_BF16 : v == 6 ? SKV_KV_Q8 : v == 7 ? SKV_KV_Q4 : SKV_KV_F32;
        skv_policy_params kp = kc_params(100000, v == 2 ? 0 : 32, v == 1 || v == 4 || v == 7 ? SKV_KC_ZSTD : SKV_KC_MMAP);
        if (v == 2) kp.kc_weight = SKV_KC_EXACT;
        if (v == 3) kp.kc_n = 0, kp.kc_frac = 1.0f, kp.kc_gran = SKV_KC_UNION;
        if (v == 4) kp.kc_block = 64;
        skv_context *full = ctx_with(m, skv_policy_default_params("full"), 512), *kc = ctx_with(m, kp, 512);
        REQUIRE(full && kc, "%s", skv_last_error());
        CHECKF(same_logits(full, kc, ids, P, STEPS), "variant %d: kcache with N >= context differs from the full cache", v);
        skv_kv_usage u;
        skv_context_kv_usage(kc, &u);
        CHECKF(u.fetch_steps == STEPS && u.fetch_rows > 0 && u.store_bytes > 0,
               "variant %d: %lld steps read %lld rows from a store of %lld bytes", v, (long long)u.fetch_steps,
               (long long)u.fetch_rows, (long long)u.store_bytes);
        skv_context_free(full);
        skv_context_free(kc);
    }
    g_fmt = SKV_KV_F32;
    /* over snapkv: the same tokens kept as snapkv alone */
    skv_policy_params sp = skv_policy_default_params("snapkv");
    sp.budget = 0.4f;
    skv_policy_params kp = kc_params(100000, 16, SKV_KC_MMAP);
    kp.kc_over = "snapkv";
    kp.budget = 0.4f;
    skv_context *a = ctx_with(m, sp, 512), *b = ctx_with(m, kp, 512);
    REQUIRE(a && b, "%s", skv_last_error());
    CHECKF(same_logits(a, b, ids, P, STEPS), "kcache over snapkv with N >= context differs from snapkv");
    CHECK(skv_context_kept(a, 2, 0, NULL) == skv_context_kept(b, 2, 0, NULL));
    skv_context_free(a);
    skv_context_free(b);
}

/* Two f32 exports hold the same positions and K and V rows in slots < upto (rows past n in the
 * last block are unwritten memory; rows a step added depend on that step's attention). */
static int same_rows(const uint8_t *a, size_t la, const uint8_t *b, size_t lb, int streams, int hd, int upto) {
    if (la != lb || memcmp(a, b, 32)) return 0;
    size_t o = 32;
    for (int i = 0; i < streams; i++) {
        int32_t n, nb;
        int64_t kb, vb;
        memcpy(&n, a + o, 4), memcpy(&nb, a + o + 4, 4), memcpy(&kb, a + o + 8, 8), memcpy(&vb, a + o + 16, 8);
        if (memcmp(a + o, b + o, 24)) return 0;
        o += 24;
        if (memcmp(a + o, b + o, 4 * (size_t)n + 2 * (size_t)nb)) return 0;
        o += 4 * (size_t)n + 2 * (size_t)nb;
        const size_t row = 4 * (size_t)hd;
        for (int part = 0; part < 2; part++) {
            for (int s = 0; s < n && s < upto; s++)
                if (memcmp(a + o + (size_t)s * row, b + o + (size_t)s * row, row)) return 0;
            o += (size_t)(part ? vb : kb);
        }
    }
    return 1;
}

/* The rows read are the rows stored: the count per step is min(N, slow slots) per stream with
 * slow slots = whole blocks older than the newest R; the mmap and zstd stores give the same
 * logits at N < context (the same rows, byte for byte), unlike a different N; and the cache
 * read back through an export equals the full cache's (V from the store included). */
static void test_rows_equal_store(void) {
    skv_model *m = model_s();
    REQUIRE(m, "kvt-s: %s", skv_last_error());
    const skv_model_info *in = skv_model_get_info(m);
    enum { P = 250, STEPS = 30, N = 20, R = 40 };
    int32_t ids[P];
    skv_test_ids(ids, P, 9);
    skv_context *a = ctx_with(m, kc_params(N, R, SKV_KC_MMAP), 512), *b = ctx_with(m, kc_params(N, R, SKV_KC_ZSTD), 512);
    skv_context *c = ctx_with(m, kc_params(N + 7, R, SKV_KC_MMAP), 512);
    REQUIRE(a && b && c, "%s", skv_last_error());
    CHECKF(same_logits(a, b, ids, P, STEPS), "mmap and zstd stores read different rows");
    g_fmt = SKV_KV_Q8; /* quantized rows (scales, minima, codes) from both stores */
    skv_context *a8 = ctx_with(m, kc_params(N, R, SKV_KC_MMAP), 512), *b8 = ctx_with(m, kc_params(N, R, SKV_KC_ZSTD), 512);
    g_fmt = SKV_KV_F32;
    REQUIRE(a8 && b8, "%s", skv_last_error());
    CHECKF(same_logits(a8, b8, ids, P, 10), "int8: mmap and zstd stores read different rows");
    skv_context_free(a8), skv_context_free(b8);
    static float la[8192], lc[8192];
    REQUIRE(skv_decode(c, ids, P, lc, 0) == SKV_OK, "%s", skv_last_error());
    int differs = 0;
    int32_t tok = 99;
    for (int t = 0; t < 3; t++) {
        skv_context *d = ctx_with(m, kc_params(N, R, SKV_KC_MMAP), 512);
        REQUIRE(d && skv_decode(d, ids, P, la, 0) == SKV_OK, "%s", skv_last_error());
        for (int s = 0; s <= t; s++) {
            REQUIRE(skv_decode(d, &tok, 1, la, 0) == SKV_OK, "%s", skv_last_error());
            if (t == 0) REQUIRE(skv_decode(c, &tok, 1, lc, 0) == SKV_OK, "%s", skv_last_error());
        }
        if (t == 0) differs = memcmp(la, lc, sizeof la) != 0;
        skv_context_free(d);
    }
    CHECKF(differs, "N=%d and N=%d gave identical logits: the selection does not reach the output", N, N + 7);
    /* expected rows: per step and stream, min(N, n_slow), n_slow = floor((n - R) / 32) * 32 */
    int64_t want = 0;
    for (int t = 0; t < STEPS; t++) {
        const int n = P + t, slow = n >= R ? (n - R) / 32 * 32 : 0;
        want += (int64_t)in->n_layer * in->n_kv_head * (slow < N ? slow : N);
    }
    skv_kv_usage ua, ub;
    skv_context_kv_usage(a, &ua);
    skv_context_kv_usage(b, &ub);
    CHECKF(ua.fetch_rows == want && ub.fetch_rows == want, "rows read %lld (mmap), %lld (zstd), expected %lld",
           (long long)ua.fetch_rows, (long long)ub.fetch_rows, (long long)want);
    CHECKF(ua.fetch_bytes == want * in->head_dim * 4, "mmap bytes %lld for %lld f32 rows", (long long)ua.fetch_bytes,
           (long long)want);
    CHECKF(ub.fetch_blocks > 0 && ua.fetch_blocks == 0, "zstd blocks touched %lld", (long long)ub.fetch_blocks);
    /* the first k cache layers keep V fast: their rows are never read from the store */
    skv_policy_params fk = kc_params(N, R, SKV_KC_MMAP);
    fk.kc_fast_layers = 2;
    skv_context *k2 = ctx_with(m, fk, 512);
    REQUIRE(k2 && skv_decode(k2, ids, P, la, 0) == SKV_OK, "%s", skv_last_error());
    for (int t = 0; t < STEPS; t++) {
        int32_t tk = skv_test_argmax(la, 8192);
        REQUIRE(skv_decode(k2, &tk, 1, la, 0) == SKV_OK, "%s", skv_last_error());
    }
    skv_kv_usage uk;
    skv_context_kv_usage(k2, &uk);
    CHECKF(uk.fetch_rows * in->n_layer == want * (in->n_layer - 2), "fast layers 2: %lld rows read, expected %lld",
           (long long)uk.fetch_rows, (long long)(want * (in->n_layer - 2) / in->n_layer));
    skv_context_free(k2);
    /* the stored V read back (export) equals a full context's V for the same prompt */
    skv_context *f = ctx_with(m, skv_policy_default_params("full"), 512);
    REQUIRE(f, "%s", skv_last_error());
    REQUIRE(skv_decode(f, ids, P, la, 0) == SKV_OK, "%s", skv_last_error());
    skv_context *e = ctx_with(m, kc_params(N, 0, SKV_KC_ZSTD), 512);
    REQUIRE(e && skv_decode(e, ids, P, lc, 0) == SKV_OK, "%s", skv_last_error());
    tok = 321;
    REQUIRE(skv_decode(f, &tok, 1, la, 0) == SKV_OK && skv_decode(e, &tok, 1, lc, 0) == SKV_OK, "%s", skv_last_error());
    void *bf, *be;
    size_t lf, le;
    REQUIRE(skv_context_export(f, &bf, &lf) == SKV_OK && skv_context_export(e, &be, &le) == SKV_OK, "%s",
            skv_last_error());
    CHECKF(same_rows(bf, lf, be, le, in->n_layer * in->n_kv_head, in->head_dim, P),
           "the exported cache of a kcache context (V read back from its store) differs from the full cache's");
    free(bf), free(be);
    skv_context_free(a), skv_context_free(b), skv_context_free(c), skv_context_free(e), skv_context_free(f);
}

/* The one file in dir (the store), or "" */
static void store_file(const char *dir, char *path, size_t cap) {
    path[0] = 0;
    DIR *d = opendir(dir);
    if (!d) return;
    for (struct dirent *e; (e = readdir(d));)
        if (!strncmp(e->d_name, "slimkv-vstore-", 14)) snprintf(path, cap, "%s/%s", dir, e->d_name);
    closedir(d);
}

static void test_bad_input(void) {
    skv_model *m = model_s();
    REQUIRE(m, "kvt-s: %s", skv_last_error());
    skv_policy_params p = kc_params(0, 32, SKV_KC_MMAP);
    CHECK(skv_policy_validate(&p, m) == SKV_ERR_ARG && strstr(skv_last_error(), "--kc-n"));
    p.kc_n = -3;
    CHECK(skv_policy_validate(&p, m) == SKV_ERR_ARG && strstr(skv_last_error(), "--kc-n"));
    p.kc_n = 0, p.kc_frac = 1.5f;
    CHECKF(skv_policy_validate(&p, m) == SKV_ERR_ARG && strstr(skv_last_error(), "above 1"), "%s", skv_last_error());
    p = kc_params(16, -1, SKV_KC_MMAP);
    CHECK(skv_policy_validate(&p, m) == SKV_ERR_ARG && strstr(skv_last_error(), "--kc-recent"));
    p = kc_params(16, 32, SKV_KC_ZSTD);
    p.kc_block = 48;
    CHECK(skv_policy_validate(&p, m) == SKV_ERR_ARG && strstr(skv_last_error(), "--kc-block"));
    /* R larger than the budget (over snapkv, a token budget) and than the context */
    p = kc_params(16, 100, SKV_KC_MMAP);
    p.kc_over = "snapkv", p.budget = 0, p.budget_tokens = 64;
    CHECKF(skv_policy_validate(&p, m) == SKV_ERR_ARG && strstr(skv_last_error(), "larger than the budget"), "%s",
           skv_last_error());
    p = kc_params(16, 600, SKV_KC_MMAP);
    CHECK(!ctx_with(m, p, 512) && strstr(skv_last_error(), "larger than the context"));
    p = kc_params(16, 8, SKV_KC_MMAP);
    p.kc_over = "h2o";
    CHECK(skv_policy_validate(&p, m) == SKV_ERR_UNSUPPORTED && strstr(skv_last_error(), "every decode step"));
    p.kc_over = "nosuch";
    CHECK(skv_policy_validate(&p, m) == SKV_ERR_ARG && strstr(skv_last_error(), "nosuch"));
    /* a store that cannot be created */
    p = kc_params(16, 8, SKV_KC_MMAP);
    p.kc_dir = "/nonexistent/slimkv-kcache";
    CHECKF(!ctx_with(m, p, 512) && strstr(skv_last_error(), "cannot create") && strstr(skv_last_error(), "--kc-dir"),
           "%s", skv_last_error());
    /* a store truncated under a running context: a named error, no crash, for both kinds */
    for (int kind = 0; kind < 2; kind++) {
        char dir[600], path[900];
        snprintf(dir, sizeof dir, "%s/kcstore%d", skv_test_tmpdir(), kind);
        mkdir(dir, 0755);
        p = kc_params(8, 0, kind ? SKV_KC_ZSTD : SKV_KC_MMAP);
        p.kc_dir = dir;
        skv_context *c = ctx_with(m, p, 512);
        REQUIRE(c, "%s", skv_last_error());
        int32_t ids[200], tok = 5;
        skv_test_ids(ids, 200, 3);
        REQUIRE(skv_decode(c, ids, 200, NULL, 0) == SKV_OK && skv_decode(c, &tok, 1, NULL, 0) == SKV_OK, "%s",
                skv_last_error());
        store_file(dir, path, sizeof path);
        REQUIRE(path[0], "no store file in %s", dir);
        REQUIRE(truncate(path, 0) == 0, "truncate %s", path);
        const skv_status st = skv_decode(c, &tok, 1, NULL, 0);
        CHECKF(st == SKV_ERR_IO && strstr(skv_last_error(), "truncated"), "kind %d: status %d: %s", kind, st,
               skv_last_error());
        skv_context_free(c);
        store_file(dir, path, sizeof path);
        CHECKF(!path[0], "the store file %s outlived its context", path);
    }
    /* the CLI names the flag, exit 2 */
    char cmd[1200], *err = NULL;
    const char *bad[] = {"--kc-n 0", "--kc-n 1.5", "--kc-n -4", "--kc-weight soft", "--kc-gran all", "--kc-store disk"};
    const char *flag[] = {"--kc-n", "--kc-n", "--kc-n", "--kc-weight", "--kc-gran", "--kc-store"};
    for (int i = 0; i < 6; i++) {
        snprintf(cmd, sizeof cmd, "%s run -m %s/models/kvt-s -p hello -n 2 --policy kcache %s", skv_test_cli(),
                 skv_test_shared_dir(), bad[i]);
        const int rc = skv_test_sh(cmd, NULL, &err);
        CHECKF(rc == 2 && err && strstr(err, flag[i]), "'%s': exit %d, %s", bad[i], rc, err ? err : "");
        free(err);
        err = NULL;
    }
}

/* A bf16 (and f16) full-cache context forked into KCache (what `eval` does): the fork asks for
 * the default f32 format but keeps the source's rows, so the slow store must be laid out for
 * them; the fork then decodes bit for bit as a KCache context of that format that prefilled the
 * prompt itself (N = 16: most V rows come from the store). Before the fix the store kept f32
 * rows of bf16 blocks and the logits were garbage. */
static void test_fork_format(void) {
    skv_model *m = model_s();
    REQUIRE(m, "kvt-s: %s", skv_last_error());
    enum { P = 300, STEPS = 12 };
    int32_t ids[P + STEPS];
    skv_test_ids(ids, P + STEPS, 77);
    static float la[8192], lb[8192];
    for (int v = 0; v < 2; v++) {
        g_fmt = v ? SKV_KV_F16 : SKV_KV_BF16;
        const skv_policy_params kp = kc_params(16, 32, SKV_KC_MMAP);
        skv_context *full = ctx_with(m, skv_policy_default_params("full"), 512), *own = ctx_with(m, kp, 512), *f = NULL;
        REQUIRE(full && own, "%s", skv_last_error());
        REQUIRE(skv_decode(full, ids, P, NULL, 0) == SKV_OK && skv_decode(own, ids, P, NULL, 0) == SKV_OK, "%s",
                skv_last_error());
        REQUIRE(skv_context_fork(full, &kp, &f) == SKV_OK, "fork: %s", skv_last_error());
        int same = 1;
        for (int i = P; i < P + STEPS; i++) {
            REQUIRE(skv_decode(f, ids + i, 1, la, 0) == SKV_OK && skv_decode(own, ids + i, 1, lb, 0) == SKV_OK, "%s",
                    skv_last_error());
            same &= !memcmp(la, lb, sizeof la);
        }
        skv_kv_usage u;
        skv_context_kv_usage(f, &u);
        CHECKF(same && u.fetch_rows > 0, "%s fork into kcache: logits %s the own KCache's; %lld rows read",
               v ? "f16" : "bf16", same ? "equal" : "differ from", (long long)u.fetch_rows);
        skv_context_free(f), skv_context_free(full), skv_context_free(own);
    }
    g_fmt = SKV_KV_F32;
}

static void test_cleanup(void) {
    skv_model_free(g_s);
    g_s = NULL;
}

void register_kcache(void) {
    skv_test_add("kcache/top-N sets vs brute force (ties, N >= n, N = 1)", test_topn_brute);
    skv_test_add("kcache/group reads and both weightings vs a double reference", test_weighting_reference);
    skv_test_add("kcache/N >= context reproduces the full cache's logits bit for bit", test_full_n_bit_identical);
    skv_test_add("kcache/rows read equal the store's", test_rows_equal_store);
    skv_test_add("kcache/bad input: N, fraction, R, store not creatable or truncated", test_bad_input);
    skv_test_add("kcache/a bf16 or f16 full cache forked into KCache = KCache from the start", test_fork_format);
    skv_test_add("kcache/(release the shared model)", test_cleanup);
}
