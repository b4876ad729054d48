/*
 * test_scd.c — SCD (issue 14): calibration on a synthetic low-rank pair, de-RoPE/RoPE, maps of
 * identical models reproducing the cache, the wire frames against bad input, producer and
 * consumer as two processes over loopback TCP and UCX (bit for bit against the in-process
 * rebuild), and the faults the consumer must refuse. Tests that need python3 with numpy skip
 * without it.
 */
#include "harness.h"
#include "context/context.h"
#include "method/scd.h"
#include "method/scd_pipe.h"
#include "net/frame.h"

#include <math.h>
#include <omp.h>
#include <unistd.h>

static int have_numpy(void) {
    static int have = -1;
    if (have < 0) have = skv_test_sh("python3 -c 'import numpy' >/dev/null 2>&1", NULL, NULL) == 0;
    return have;
}

static uint32_t g_rng = 12345;
static float randn(void) { /* Irwin-Hall approximation, enough for test data */
    float s = 0;
    for (int i = 0; i < 12; i++) s += (float)(skv_test_xorshift(&g_rng) % 100000) / 100000.0f;
    return s - 6.0f;
}

/* A safetensors file of f32 tensors (name, rows, cols, data) with a metadata object. */
static int write_st(const char *path, int n, const char **names, const int64_t *rows, const int64_t *cols, float **data,
                    const char *meta) {
    char *hdr = malloc(256 * (size_t)n + 1024);
    size_t hl = (size_t)sprintf(hdr, "{\"__metadata__\":%s", meta);
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        const int64_t b = rows[i] * cols[i] * 4;
        hl += (size_t)sprintf(hdr + hl, ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%lld,%lld],\"data_offsets\":[%lld,%lld]}",
                              names[i], (long long)rows[i], (long long)cols[i], (long long)off, (long long)(off + b));
        off += b;
    }
    hdr[hl++] = '}';
    while (hl % 8) hdr[hl++] = ' ';
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    const uint64_t h64 = hl;
    fwrite(&h64, 8, 1, f), fwrite(hdr, 1, hl, f);
    for (int i = 0; i < n; i++) fwrite(data[i], 4, (size_t)(rows[i] * cols[i]), f);
    fclose(f);
    free(hdr);
    return 1;
}

/* x (n, c) = z (n, r) M (r, c) + mu */
static void lowrank(float *x, const float *z, int n, int r, int c, uint32_t seed) {
    g_rng = seed;
    float *M = malloc(sizeof(float) * (size_t)r * c), *mu = malloc(sizeof(float) * (size_t)c);
    for (int i = 0; i < r * c; i++) M[i] = randn();
    for (int j = 0; j < c; j++) mu[j] = randn();
    for (int i = 0; i < n; i++)
        for (int j = 0; j < c; j++) {
            double s = mu[j];
            for (int k = 0; k < r; k++) s += (double)z[i * r + k] * M[k * c + j];
            x[(size_t)i * c + j] = (float)s;
        }
    free(M), free(mu);
}

/* Calibration on A = Z Ma + mua, B = Z Mb + mub (rank 6 in K, V and H): the energy criterion
 * finds rank 6, and encoding A then decoding gives B. */
static void test_calibrate_synthetic(void) {
    if (!have_numpy()) {
        skv_test_skip("python3 with numpy is not installed");
        return;
    }
    enum { N = 300, R = 6, L = 2, KD = 64, DIM = 96 };
    const char *names[L * 6];
    char nb[L * 6][16];
    int64_t rows[L * 6], cols[L * 6];
    float *data[L * 6];
    float *z = malloc(sizeof(float) * N * R);
    static const char *part[6] = {"a.k", "b.k", "a.v", "b.v", "a.h", "b.h"};
    for (int l = 0; l < L; l++)
        for (int t = 0; t < 6; t++) {
            const int i = l * 6 + t, c = t < 4 ? KD : DIM;
            if (t % 2 == 0) { /* a new shared code for each (layer, part) pair */
                g_rng = 77 + (uint32_t)i;
                for (int k = 0; k < N * R; k++) z[k] = randn();
            }
            snprintf(nb[i], sizeof nb[i], "%s.%d", part[t], l);
            names[i] = nb[i], rows[i] = N, cols[i] = c;
            data[i] = malloc(sizeof(float) * N * (size_t)c);
            lowrank(data[i], z, N, R, c, 1000 + (uint32_t)i);
        }
    char dump[512], maps[512], cmd[2048];
    snprintf(dump, sizeof dump, "%s/synth_dump.st", skv_test_tmpdir());
    snprintf(maps, sizeof maps, "%s/synth_maps.st", skv_test_tmpdir());
    REQUIRE(write_st(dump, L * 6, names, rows, cols, data, "{\"producer\":\"a\",\"consumer\":\"b\"}"), "cannot write %s", dump);
    snprintf(cmd, sizeof cmd, "OPENBLAS_NUM_THREADS=1 python3 train/scd_calibrate.py --dump %s --out %s --energy 0.9999999 "
             "--energy-h 0.9999999 --lam 1e-10 --aligner linear --aligner-lam 1e-12", dump, maps);
    char *err = NULL;
    int rc = skv_test_sh(cmd, NULL, &err);
    REQUIRE(rc == 0, "calibration failed: %s", err);
    free(err);
    skv_scd_maps *m;
    REQUIRE(skv_scd_maps_load(maps, &m) == SKV_OK, "load: %s", skv_last_error());
    skv_scd_shape sh;
    skv_scd_maps_shape(m, &sh);
    CHECK(sh.n_layer == L && sh.kv_dim == KD && sh.dim == DIM && sh.hidden == 0);
    float *zc = malloc(sizeof(float) * N * 2 * DIM), *out = malloc(sizeof(float) * N * DIM);
    for (int l = 0; l < L; l++) {
        CHECKF(sh.r_k[l] == R && sh.r_v[l] == R && sh.r_h[l] == R, "layer %d: ranks %d %d %d, want %d", l, sh.r_k[l], sh.r_v[l],
               sh.r_h[l], R);
        for (int p = 0; p < 3; p++) {
            const float *A = data[l * 6 + 2 * p], *B = data[l * 6 + 2 * p + 1];
            const int c = p < 2 ? KD : DIM;
            REQUIRE(skv_scd_encode(m, l, p, A, N, zc) == SKV_OK, "encode: %s", skv_last_error());
            REQUIRE(skv_scd_decode(m, l, p, zc, N, out) == SKV_OK, "decode: %s", skv_last_error());
            double err_max = 0, ref = 0;
            for (int i = 0; i < N * c; i++) err_max = fmax(err_max, fabs(out[i] - B[i])), ref = fmax(ref, fabs(B[i]));
            CHECKF(err_max <= 1e-4 * ref, "layer %d part %d: max error %g of %g", l, p, err_max, ref);
        }
    }
    /* a maps file whose description lies about a shape is refused naming the tensor */
    skv_scd_maps_free(m);
    for (int i = 0; i < L * 6; i++) free(data[i]);
    free(z), free(zc), free(out);
}

/* kvt-s: RoPE undone then applied is the identity; the de-RoPE'd cached K (and V) equal the
 * projections of the normalised attention inputs the taps return. */
static void test_derope(void) {
    skv_model *m = skv_test_load_model("kvt-s", 1);
    REQUIRE(m, "kvt-s: %s", skv_last_error());
    const skv_model_info *in = skv_model_get_info(m);
    const int n = 77, KD = in->n_kv_head * in->head_dim, D = in->dim, L = in->n_layer;
    float *k = malloc(sizeof(float) * (size_t)n * KD), *k0 = malloc(sizeof(float) * (size_t)n * KD);
    g_rng = 9;
    for (int i = 0; i < n * KD; i++) k[i] = k0[i] = randn();
    CHECK(skv_model_rope_rows(m, k, n, 1) == SKV_OK);
    double moved = 0;
    for (int i = 0; i < n * KD; i++) moved = fmax(moved, fabs(k[i] - k0[i]));
    CHECKF(moved > 0.1, "de-RoPE changed nothing (%g)", moved);
    CHECK(skv_model_rope_rows(m, k, n, 0) == SKV_OK);
    double e = 0;
    for (int i = 0; i < n * KD; i++) e = fmax(e, fabs(k[i] - k0[i]));
    CHECKF(e < 1e-5, "RoPE(de-RoPE(k)) differs by %g", e);
    /* the cache against the taps */
    int32_t ids[77];
    skv_test_ids(ids, n, 3);
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = 128;
    skv_context *c;
    REQUIRE(skv_context_init(m, cp, &c) == SKV_OK, "%s", skv_last_error());
    float *H = malloc(sizeof(float) * (size_t)L * n * D), *v = malloc(sizeof(float) * (size_t)n * KD);
    float *kp = malloc(sizeof(float) * (size_t)n * KD), *vp = malloc(sizeof(float) * (size_t)n * KD);
    const skv_batch b = {.ids = ids, .n = n, .attn_in = H};
    REQUIRE(skv_decode_ex(c, &b) == SKV_OK, "%s", skv_last_error());
    for (int l = 0; l < L; l++) {
        CHECK(skv_context_get_kv(c, l, 1, k, v) == SKV_OK);
        CHECK(skv_model_project_kv(m, l, H + (size_t)l * n * D, n, kp, vp) == SKV_OK);
        double ek = 0, ev = 0, rk = 0;
        for (int i = 0; i < n * KD; i++) ek = fmax(ek, fabs(k[i] - kp[i])), ev = fmax(ev, fabs(v[i] - vp[i])), rk = fmax(rk, fabs(kp[i]));
        CHECKF(ek < 1e-4 * rk && ev < 1e-4 * rk, "layer %d: de-RoPE'd K off by %g, V by %g (scale %g)", l, ek, ev, rk);
    }
    /* refused: a layer range on a call that asks for logits; taps need the CPU */
    float lg[8192];
    const skv_batch bad = {.ids = ids, .n = 1, .logits = lg, .layer1 = 1};
    CHECK(skv_decode_ex(c, &bad) == SKV_ERR_ARG);
    skv_context_free(c);
    free(k), free(k0), free(H), free(v), free(kp), free(vp);
    skv_model_free(m);
}

/* Maps of kvt-s to itself at full rank (scd-dump, then calibration): built once, path or NULL. */
static const char *identical_maps(void) {
    static char path[512];
    static int state = 0; /* 0 not tried, 1 built, -1 failed */
    if (state) return state > 0 ? path : NULL;
    state = -1;
    if (!have_numpy()) return NULL;
    char dump[512], cmd[4096], *err = NULL;
    snprintf(dump, sizeof dump, "%s/ident_dump.st", skv_test_tmpdir());
    snprintf(path, sizeof path, "%s/ident_maps.st", skv_test_tmpdir());
    snprintf(cmd, sizeof cmd, "OMP_NUM_THREADS=1 %s scd-dump -m %s/models/kvt-s --consumer %s/models/kvt-s -f "
             "%s/data/corpus.val.txt.xz -n 16 --rows 48 --len-min 64 --len-max 128 -t 1 -o %s && OPENBLAS_NUM_THREADS=1 "
             "python3 train/scd_calibrate.py --dump %s --out %s --rank-k 64 --rank-v 64 --rank-h 192 --lam 1e-8 "
             "--aligner linear --aligner-lam 1e-12", skv_test_cli(), skv_test_shared_dir(), skv_test_shared_dir(),
             skv_test_shared_dir(), dump, dump, path);
    if (skv_test_sh(cmd, NULL, &err) != 0) {
        fprintf(stderr, "identical maps: %s\n", err);
        free(err);
        return NULL;
    }
    free(err);
    state = 1;
    return path;
}

/* Rebuild of kvt-s from codes of maps fitted on kvt-s -> kvt-s: every layer reused, then every
 * layer patched, reproduces the cache and the next-token logits. */
static void test_identical_models(void) {
    if (!have_numpy()) {
        skv_test_skip("python3 with numpy is not installed");
        return;
    }
    const char *mp = identical_maps();
    REQUIRE(mp, "could not build the kvt-s maps");
    skv_scd_maps *maps;
    REQUIRE(skv_scd_maps_load(mp, &maps) == SKV_OK, "%s", skv_last_error());
    skv_model *m = skv_test_load_model("kvt-s", 1);
    REQUIRE(m, "kvt-s: %s", skv_last_error());
    const skv_model_info *in = skv_model_get_info(m);
    const int n = 90, KD = in->n_kv_head * in->head_dim, D = in->dim, L = in->n_layer, V = in->n_vocab;
    int32_t ids[91];
    skv_test_ids(ids, n + 1, 11);
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = 128;
    skv_context *pc, *oc;
    REQUIRE(skv_context_init(m, cp, &pc) == SKV_OK && skv_context_init(m, cp, &oc) == SKV_OK, "%s", skv_last_error());
    float *H = malloc(sizeof(float) * (size_t)L * n * D);
    const skv_batch b = {.ids = ids, .n = n, .attn_in = H};
    REQUIRE(skv_decode_ex(pc, &b) == SKV_OK, "%s", skv_last_error());
    float *zk = malloc(sizeof(float) * (size_t)L * n * 256), *zv = malloc(sizeof(float) * (size_t)L * n * 256);
    float *zh = malloc(sizeof(float) * (size_t)L * n * 256);
    float *k = malloc(sizeof(float) * (size_t)n * KD), *v = malloc(sizeof(float) * (size_t)n * KD);
    float *k2 = malloc(sizeof(float) * (size_t)n * KD), *v2 = malloc(sizeof(float) * (size_t)n * KD);
    skv_scd_layer_src src[64];
    for (int l = 0; l < L; l++) {
        REQUIRE(skv_context_get_kv(pc, l, 1, k, v) == SKV_OK, "%s", skv_last_error());
        CHECK(skv_scd_encode(maps, l, SKV_SCD_K, k, n, zk + (size_t)l * n * 256) == SKV_OK);
        CHECK(skv_scd_encode(maps, l, SKV_SCD_V, v, n, zv + (size_t)l * n * 256) == SKV_OK);
        CHECK(skv_scd_encode(maps, l, SKV_SCD_H, H + (size_t)l * n * D, n, zh + (size_t)l * n * 256) == SKV_OK);
    }
    float lo[8192], lr[8192];
    REQUIRE(V <= 8192, "vocab");
    REQUIRE(skv_decode(oc, ids, n, NULL, 0) == SKV_OK, "%s", skv_last_error());  /* the reference cache */
    REQUIRE(skv_decode(pc, &ids[n], 1, lo, 0) == SKV_OK, "%s", skv_last_error()); /* the reference's next token */
    for (int patch = 0; patch < 2; patch++) {
        for (int l = 0; l < L; l++)
            src[l] = (skv_scd_layer_src){.src = SKV_SCD_SRC_CODES, .patch = patch, .zk = zk + (size_t)l * n * 256,
                                         .zv = zv + (size_t)l * n * 256, .zh = zh + (size_t)l * n * 256};
        skv_context *rc;
        REQUIRE(skv_context_init(m, cp, &rc) == SKV_OK, "%s", skv_last_error());
        REQUIRE(skv_scd_rebuild(maps, rc, n, src) == SKV_OK, "rebuild: %s", skv_last_error());
        CHECK(skv_context_n_past(rc) == n);
        for (int l = 0; l < L; l++) {
            CHECK(skv_context_get_kv(oc, l, 0, k, v) == SKV_OK);
            CHECK(skv_context_get_kv(rc, l, 0, k2, v2) == SKV_OK);
            double e = 0, r = 0;
            for (int i = 0; i < n * KD; i++)
                e = fmax(e, fmax(fabs(k[i] - k2[i]), fabs(v[i] - v2[i]))), r = fmax(r, fmax(fabs(k[i]), fabs(v[i])));
            CHECKF(e < 2e-3 * r, "%s layer %d: K/V off by %g of %g", patch ? "patch" : "reuse", l, e, r);
        }
        REQUIRE(skv_decode(rc, &ids[n], 1, lr, 0) == SKV_OK, "%s", skv_last_error());
        double e = 0;
        for (int i = 0; i < V; i++) e = fmax(e, fabs(lo[i] - lr[i]));
        CHECKF(e < 1e-2, "%s: next-token logits off by %g", patch ? "patch" : "reuse", e);
        CHECK(skv_test_argmax(lo, V) == skv_test_argmax(lr, V));
        skv_context_free(rc);
    }
    /* the maps refuse a model of another shape */
    skv_model *ml = skv_test_load_model("kvt-l", 1);
    if (ml) {
        CHECK(skv_scd_maps_check(maps, ml) == SKV_ERR_SHAPE);
        skv_model_free(ml);
    }
    free(H), free(zk), free(zv), free(zh), free(k), free(v), free(k2), free(v2);
    skv_context_free(pc), skv_context_free(oc);
    skv_scd_maps_free(maps);
    skv_model_free(m);
}

/* The oracle-input ablation: every layer's K/V rebuilt from the consumer's own normalised
 * attention inputs through its projections (the patch path with a perfect aligner) reproduces
 * the consumer's own next-token logits; the same with the last layer's rows taken from another
 * prompt does not (the check can fail). */
static void test_oracle_input(void) {
    skv_model *m = skv_test_load_model("kvt-s", 1);
    REQUIRE(m, "kvt-s: %s", skv_last_error());
    const skv_model_info *in = skv_model_get_info(m);
    const int n = 120, KD = in->n_kv_head * in->head_dim, D = in->dim, L = in->n_layer, V = in->n_vocab;
    REQUIRE(V <= 8192 && L <= 64, "shape");
    int32_t ids[121], other[121];
    skv_test_ids(ids, n + 1, 41);
    skv_test_ids(other, n + 1, 42);
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = 128;
    float *H = malloc(sizeof(float) * (size_t)L * n * D), *H2 = malloc(sizeof(float) * (size_t)L * n * D);
    float *K = malloc(sizeof(float) * (size_t)L * n * KD), *Vr = malloc(sizeof(float) * (size_t)L * n * KD);
    static float lo[8192], lr[8192];
    skv_context *oc, *xc;
    REQUIRE(skv_context_init(m, cp, &oc) == SKV_OK && skv_context_init(m, cp, &xc) == SKV_OK, "%s", skv_last_error());
    const skv_batch b = {.ids = ids, .n = n, .attn_in = H}, b2 = {.ids = other, .n = n, .attn_in = H2};
    REQUIRE(skv_decode_ex(oc, &b) == SKV_OK && skv_decode_ex(xc, &b2) == SKV_OK, "%s", skv_last_error());
    REQUIRE(skv_decode(oc, &ids[n], 1, lo, 0) == SKV_OK, "%s", skv_last_error()); /* the oracle's next token */
    double scale = 0;
    for (int i = 0; i < V; i++) scale = fmax(scale, fabs(lo[i]));
    for (int bad = 0; bad < 2; bad++) {
        skv_scd_layer_src src[64];
        for (int l = 0; l < L; l++) {
            const float *h = (bad && l == L - 1 ? H2 : H) + (size_t)l * n * D;
            REQUIRE(skv_model_project_kv(m, l, h, n, K + (size_t)l * n * KD, Vr + (size_t)l * n * KD) == SKV_OK, "%s",
                    skv_last_error());
            src[l] = (skv_scd_layer_src){.src = SKV_SCD_SRC_ROWS, .k = K + (size_t)l * n * KD, .v = Vr + (size_t)l * n * KD};
        }
        skv_context *rc;
        REQUIRE(skv_context_init(m, cp, &rc) == SKV_OK, "%s", skv_last_error());
        REQUIRE(skv_scd_rebuild(NULL, rc, n, src) == SKV_OK, "rebuild: %s", skv_last_error());
        REQUIRE(skv_decode(rc, &ids[n], 1, lr, 0) == SKV_OK, "%s", skv_last_error());
        double e = 0;
        for (int i = 0; i < V; i++) e = fmax(e, fabs(lo[i] - lr[i]));
        if (!bad) {
            CHECKF(e < 1e-4 * scale, "oracle inputs: next-token logits off by %g (scale %g)", e, scale);
            CHECK(skv_test_argmax(lo, V) == skv_test_argmax(lr, V));
        } else {
            CHECKF(e > 1e-2 * scale, "another prompt's last layer changed the logits by only %g", e);
        }
        skv_context_free(rc);
    }
    free(H), free(H2), free(K), free(Vr);
    skv_context_free(oc), skv_context_free(xc);
    skv_model_free(m);
}

/* the "kl" of every line of a rows file whose key (method or config) is name, as text */
static int rows_kl(const char *path, const char *key, const char *name, char kl[][32], int cap) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char line[8192], pat[96];
    snprintf(pat, sizeof pat, "\"%s\": \"%s\"", key, name);
    int n = 0;
    while (fgets(line, sizeof line, f) && n < cap) {
        const char *k = strstr(line, "\"kl\": ");
        if (!strstr(line, pat) || !k) continue;
        sscanf(k + 6, "%31[0-9.e+-]", kl[n++]);
    }
    fclose(f);
    return n;
}

/* scd-ablate from the command line: with producer = consumer, the oracle-input and raw
 * configurations (also with the consumer running the prompt's last tokens) score KL 0 to the
 * oracle; bad configurations are refused naming the flag. With low-rank maps (numpy), its reuse
 * and patch configurations give the KL of scd-eval's reuse and all-layers-patched scd through
 * the frames, digit for digit, row by row (the same cache). */
static void test_ablate(void) {
    const char *sh = skv_test_shared_dir(), *cli = skv_test_cli(), *tmp = skv_test_tmpdir();
    char cmd[4096], rows[512], *err = NULL;
    snprintf(rows, sizeof rows, "%s/ablate_rows.jsonl", tmp);
    snprintf(cmd, sizeof cmd, "OMP_NUM_THREADS=1 %s scd-ablate -m %s/models/kvt-s --consumer %s/models/kvt-s --tasks "
             "%s/data/tasks.val.jsonl --task-names passkey --limit 2 -t 1 --max-new 8 --configs hhhh,oooo,wwww+8 "
             "--rows-out %s", cli, sh, sh, sh, rows);
    REQUIRE(skv_test_sh(cmd, NULL, &err) == 0, "scd-ablate: %s", err);
    free(err), err = NULL;
    static char kl[8][32];
    const char *cf[3] = {"hhhh", "oooo", "wwww+8"};
    for (int c = 0; c < 3; c++) {
        const int n = rows_kl(rows, "config", cf[c], kl, 8);
        CHECKF(n == 2, "%s: %d rows", cf[c], n);
        for (int i = 0; i < n; i++) CHECKF(atof(kl[i]) < 1e-4, "%s row %d: KL %s to the oracle", cf[c], i, kl[i]);
    }
    snprintf(cmd, sizeof cmd, "%s scd-ablate -m %s/models/kvt-s --consumer %s/models/kvt-s --tasks %s/data/tasks.val.jsonl "
             "--configs hhh", cli, sh, sh, sh);
    CHECK(skv_test_sh(cmd, NULL, &err) == 2 && err && strstr(err, "--configs"));
    free(err), err = NULL;
    snprintf(cmd, sizeof cmd, "%s scd-ablate -m %s/models/kvt-s --consumer %s/models/kvt-s --tasks %s/data/tasks.val.jsonl "
             "--configs rrrr", cli, sh, sh, sh);
    CHECK(skv_test_sh(cmd, NULL, &err) == 2 && err && strstr(err, "--maps"));
    free(err), err = NULL;
    if (!have_numpy()) {
        skv_test_skip("python3 with numpy is not installed (the reuse/patch part)");
        return;
    }
    REQUIRE(identical_maps(), "could not build the kvt-s calibration dump");
    char maps[512], erows[512];
    snprintf(maps, sizeof maps, "%s/lowrank_maps.st", tmp);
    snprintf(erows, sizeof erows, "%s/ablate_eval_rows.jsonl", tmp);
    snprintf(cmd, sizeof cmd, "OPENBLAS_NUM_THREADS=1 python3 train/scd_calibrate.py --dump %s/ident_dump.st --out %s "
             "--rank-k 4 --rank-v 4 --rank-h 8 --aligner linear >/dev/null", tmp, maps);
    REQUIRE(skv_test_sh(cmd, NULL, &err) == 0, "calibration: %s", err);
    free(err), err = NULL;
    snprintf(cmd, sizeof cmd, "OMP_NUM_THREADS=1 %s scd-ablate -m %s/models/kvt-s --consumer %s/models/kvt-s --maps %s "
             "--tasks %s/data/tasks.val.jsonl --task-names passkey --limit 2 -t 1 --max-new 8 --configs rrrr,pppp "
             "--rows-out %s && OMP_NUM_THREADS=1 %s scd-eval -m %s/models/kvt-s --consumer %s/models/kvt-s --maps %s "
             "--tasks %s/data/tasks.val.jsonl --task-names passkey --limit 2 -t 1 --max-new 8 --methods oracle,reuse,scd "
             "--patch-k 4 --rows-out %s >/dev/null", cli, sh, sh, maps, sh, rows, cli, sh, sh, maps, sh, erows);
    REQUIRE(skv_test_sh(cmd, NULL, &err) == 0, "scd-ablate / scd-eval: %s", err);
    free(err);
    static char ka[8][32], ke[8][32];
    const char *pairs[2][2] = {{"rrrr", "reuse"}, {"pppp", "scd-k4"}};
    for (int p = 0; p < 2; p++) {
        const int na = rows_kl(rows, "config", pairs[p][0], ka, 8), ne = rows_kl(erows, "method", pairs[p][1], ke, 8);
        CHECKF(na == 2 && ne == 2, "%s / %s: %d and %d rows", pairs[p][0], pairs[p][1], na, ne);
        for (int i = 0; i < na && i < ne; i++) {
            CHECKF(!strcmp(ka[i], ke[i]), "%s row %d: KL %s in scd-ablate, %s through the frames", pairs[p][1], i, ka[i], ke[i]);
            CHECKF(atof(ka[i]) > 1e-4, "%s row %d: KL %s (rank-4 maps should leave an error)", pairs[p][1], i, ka[i]);
        }
    }
}

/* skv_batch.layer_done: once per layer, in order, only when the layer holds the whole call
 * (prompt in 3 chunks), the rows read then equal the cache's after the call. */
typedef struct done_log {
    const skv_context *c;
    int32_t calls, last, n_seen, bad;
    float *k, *v, *k_at;   /* k_at: (L, n, kv_dim) rows read inside the hook */
    int32_t n, KD;
} done_log;
static void on_done(void *arg, int32_t layer, int32_t n_cached) {
    done_log *d = arg;
    d->bad |= layer != d->last + 1 || n_cached != d->n;
    d->last = layer, d->calls++;
    if (skv_context_get_kv_rows(d->c, layer, n_cached, 0, d->k_at + (size_t)layer * d->n * d->KD, d->v) != SKV_OK) d->bad |= 2;
}
static void test_layer_done(void) {
    skv_model *m = skv_test_load_model("kvt-s", 1);
    REQUIRE(m, "kvt-s: %s", skv_last_error());
    const skv_model_info *in = skv_model_get_info(m);
    const int n = 150, L = in->n_layer, KD = in->n_kv_head * in->head_dim;
    int32_t ids[150];
    skv_test_ids(ids, n, 31);
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = 160, cp.n_batch = 64;
    skv_context *c;
    REQUIRE(skv_context_init(m, cp, &c) == SKV_OK, "%s", skv_last_error());
    done_log d = {.c = c, .last = -1, .n = n, .KD = KD};
    d.k = malloc(sizeof(float) * (size_t)n * KD), d.v = malloc(sizeof(float) * (size_t)n * KD);
    d.k_at = malloc(sizeof(float) * (size_t)L * n * KD);
    const skv_batch b = {.ids = ids, .n = n, .layer_done = on_done, .layer_arg = &d};
    REQUIRE(skv_decode_ex(c, &b) == SKV_OK, "%s", skv_last_error());
    CHECKF(d.calls == L && !d.bad, "layer_done: %d calls for %d layers, bad %d", d.calls, L, d.bad);
    for (int l = 0; l < L; l++) {
        CHECK(skv_context_get_kv(c, l, 0, d.k, d.v) == SKV_OK);
        CHECK(!memcmp(d.k, d.k_at + (size_t)l * n * KD, sizeof(float) * (size_t)n * KD));
    }
    free(d.k), free(d.v), free(d.k_at);
    skv_context_free(c);
    skv_model_free(m);
}

/* frames straight into a consumer, checked as a socket's would be */
typedef struct cuda_pipe {
    skv_scd_consumer *c;
    int done;
} cuda_pipe;
static skv_status cuda_pipe_emit(void *arg, const uint8_t *frame, size_t len) {
    cuda_pipe *p = arg;
    skv_frame f;
    skv_status st = skv_frame_check(frame, len, 1ull << 30, &f);
    return st ? st : skv_scd_consumer_feed(p->c, &f, &p->done);
}

/* The consumer's rebuild on CUDA (codes decoded, aligned, projected and RoPE'd on the device)
 * against the CPU consumer's, from the same frames: random maps of kvt-s's shape over a kvt-s
 * prefill, reuse on every layer and with two patch layers; every cached K/V row within bf16
 * storage of the CPU's, and the next-token logits alike. Skips without a GPU. */
static void test_cuda_rebuild(void) {
    if (!skv_backend_available(SKV_BACKEND_CUDA)) {
        skv_test_skip("%s", skv_last_error());
        return;
    }
    skv_model *m = skv_test_load_model("kvt-s", 1);
    REQUIRE(m, "kvt-s: %s", skv_last_error());
    const skv_model_info *in = skv_model_get_info(m);
    const int n = 150, KD = in->n_kv_head * in->head_dim, D = in->dim, L = in->n_layer, V = in->n_vocab;
    skv_scd_maps *maps;
    REQUIRE(skv_scd_maps_random(L, KD, D, 96, 40, 48, 64, 2, 7, &maps) == SKV_OK, "%s", skv_last_error());
    int32_t ids[151];
    skv_test_ids(ids, n + 1, 23);
    skv_context_params pp = skv_context_default_params();
    pp.n_ctx = n;
    skv_context *pc;
    REQUIRE(skv_context_init(m, pp, &pc) == SKV_OK, "%s", skv_last_error());
    float *H = malloc(sizeof(float) * (size_t)L * n * D);
    const skv_batch b = {.ids = ids, .n = n, .attn_in = H};
    REQUIRE(skv_decode_ex(pc, &b) == SKV_OK, "%s", skv_last_error());
    float *k[2], *v[2], *lg[2];
    for (int i = 0; i < 2; i++)
        k[i] = malloc(sizeof(float) * (size_t)n * KD), v[i] = malloc(sizeof(float) * (size_t)n * KD),
        lg[i] = malloc(sizeof(float) * (size_t)V);
    for (int cfg = 0; cfg < 2; cfg++) {
        skv_scd_req req = {.method = cfg ? SKV_SCD_FULL : SKV_SCD_REUSE, .code_enc = SKV_ENC_BF16};
        if (cfg) req.patch[0] = req.patch[2] = 1;
        skv_scd_consumer *sc[2];
        skv_context *bc[2];
        for (int be = 0; be < 2; be++) {
            skv_context_params cp = skv_context_default_params();
            cp.n_ctx = 256;
            cp.backend = be ? SKV_BACKEND_CUDA : SKV_BACKEND_CPU;
            REQUIRE(skv_scd_consumer_init(m, maps, cp, &sc[be]) == SKV_OK, "%s", skv_last_error());
            cuda_pipe p = {.c = sc[be]};
            skv_scd_prod_stats ps = {0};
            REQUIRE(skv_scd_produce_ctx(pc, H, NULL, maps, ids, n + 1, &req, cuda_pipe_emit, &p, &ps) == SKV_OK,
                    "%s consumer: %s", be ? "cuda" : "cpu", skv_last_error());
            REQUIRE(p.done && (bc[be] = skv_scd_consumer_context(sc[be])), "the %s consumer did not finish", be ? "cuda" : "cpu");
            CHECK(skv_context_n_past(bc[be]) == n);
        }
        for (int l = 0; l < L; l++) {
            double e = 0, r = 0;
            for (int be = 0; be < 2; be++) CHECK(skv_context_get_kv(bc[be], l, 0, k[be], v[be]) == SKV_OK);
            for (int i = 0; i < n * KD; i++)
                e = fmax(e, fmax(fabs(k[0][i] - k[1][i]), fabs(v[0][i] - v[1][i]))), r = fmax(r, fmax(fabs(k[0][i]), fabs(v[0][i])));
            CHECKF(r > 0 && e < 1.5e-2 * r, "%s layer %d: CUDA K/V off the CPU's by %g of %g", cfg ? "scd" : "reuse", l, e, r);
        }
        for (int be = 0; be < 2; be++)
            REQUIRE(skv_decode(bc[be], &ids[n], 1, lg[be], 0) == SKV_OK, "%s", skv_last_error());
        double num = 0, den = 0;
        for (int i = 0; i < V; i++) num += (lg[0][i] - lg[1][i]) * (lg[0][i] - lg[1][i]), den += lg[0][i] * lg[0][i];
        CHECKF(sqrt(num / den) < 2e-2, "%s: next-token logits off by %g (relative L2)", cfg ? "scd" : "reuse", sqrt(num / den));
        for (int be = 0; be < 2; be++) skv_scd_consumer_free(sc[be]);
    }
    for (int i = 0; i < 2; i++) free(k[i]), free(v[i]), free(lg[i]);
    free(H);
    skv_context_free(pc);
    skv_scd_maps_free(maps);
    skv_model_free(m);
}

static uint8_t *build(int type, int enc, int part, uint32_t group, uint32_t rows, uint32_t cols, const float *x, size_t *len) {
    skv_frame f = {.type = (uint8_t)type, .enc = (uint8_t)enc, .layer = 1, .part = (uint16_t)part, .group = (uint16_t)group,
                   .rows = rows, .cols = cols};
    if (skv_wire_payload_bytes(enc, part, rows, cols, group, &f.len)) return NULL;
    uint8_t *p = malloc(f.len + 1), *out = NULL;
    if (skv_wire_pack(enc, part, rows, cols, group, x, p) == SKV_OK) skv_frame_build(&f, p, &out, len);
    free(p);
    return out;
}

/* The frame parser against truncated, oversized, wrong-version and bit-flipped frames, and the
 * payload decoders against non-finite values; encodings round-trip within their precision. */
static void test_frames(void) {
    enum { R = 40, C = 64 };
    float x[R * C], y[R * C];
    g_rng = 5;
    for (int i = 0; i < R * C; i++) x[i] = randn();
    size_t len;
    skv_frame f;
    { /* bf16 payloads checked in place (the CUDA consumer's path) as unpacking checks them */
        uint8_t bb[R * C * 2];
        CHECK(skv_wire_pack(SKV_ENC_BF16, SKV_PART_ZK, R, C, 0, x, bb) == SKV_OK);
        CHECK(skv_wire_bf16_check(bb, R, C) == SKV_OK);
        const uint16_t bad[] = {0x7F80, 0xFF80, 0x7FC1};
        for (int b = 0; b < 3; b++) {
            uint8_t keep[2] = {bb[2 * (7 * C + 9)], bb[2 * (7 * C + 9) + 1]};
            bb[2 * (7 * C + 9)] = (uint8_t)(bad[b] & 0xFF), bb[2 * (7 * C + 9) + 1] = (uint8_t)(bad[b] >> 8);
            CHECK(skv_wire_bf16_check(bb, R, C) == SKV_ERR_FORMAT && strstr(skv_last_error(), "row 7, column 9"));
            CHECK(skv_wire_unpack(SKV_ENC_BF16, SKV_PART_ZK, R, C, 0, bb, y) == SKV_ERR_FORMAT);
            bb[2 * (7 * C + 9)] = keep[0], bb[2 * (7 * C + 9) + 1] = keep[1];
        }
    }
    /* every encoding: accepted whole, values within precision */
    const struct { int enc, part; uint32_t group; double tol; } encs[] = {
        {SKV_ENC_F32, SKV_PART_ZK, 0, 0}, {SKV_ENC_BF16, SKV_PART_ZK, 0, 1.0 / 128},
        {SKV_ENC_I8ROW, SKV_PART_ZV, 0, 1.0 / 100}, {SKV_ENC_KIVI4, SKV_PART_K, 32, 0.2}, {SKV_ENC_KIVI4, SKV_PART_V, 32, 0.2}};
    for (size_t e = 0; e < sizeof encs / sizeof encs[0]; e++) {
        uint8_t *b = build(SKV_FT_LAYER, encs[e].enc, encs[e].part, encs[e].group, R, C, x, &len);
        REQUIRE(b, "build %s: %s", skv_wire_enc_name(encs[e].enc), skv_last_error());
        CHECKF(skv_frame_check(b, len, 1 << 20, &f) == SKV_OK, "%s: %s", skv_wire_enc_name(encs[e].enc), skv_last_error());
        CHECK(skv_wire_unpack(f.enc, f.part, f.rows, f.cols, f.group, f.payload, y) == SKV_OK);
        double err = 0, mx = 0;
        for (int i = 0; i < R * C; i++) err = fmax(err, fabs(x[i] - y[i])), mx = fmax(mx, fabs(x[i]));
        CHECKF(err <= encs[e].tol * mx, "%s: error %g of %g", skv_wire_enc_name(encs[e].enc), err, mx);
        free(b);
    }
    /* KIVI4 equals the engine's own quantizer on a full block */
    {
        float blk[32 * 32], got[32 * 32];
        for (int r = 0; r < 32; r++) memcpy(blk + r * 32, x + r * C, sizeof(float) * 32);
        uint8_t *b = build(SKV_FT_LAYER, SKV_ENC_KIVI4, SKV_PART_K, 32, 32, 32, blk, &len);
        REQUIRE(b && skv_frame_check(b, len, 1 << 20, &f) == SKV_OK, "kivi4 block");
        CHECK(skv_wire_unpack(f.enc, f.part, 32, 32, 32, f.payload, got) == SKV_OK);
        float got2[32 * 32];
        memcpy(got2, blk, sizeof blk);
        CHECK(skv_wire_round(SKV_ENC_KIVI4, SKV_PART_K, 32, 32, 32, got2) == SKV_OK);
        CHECK(!memcmp(got, got2, sizeof got));
        free(b);
    }
    uint8_t *b = build(SKV_FT_LAYER, SKV_ENC_BF16, SKV_PART_ZH, 0, 6, 8, x, &len);
    REQUIRE(b, "build: %s", skv_last_error());
    /* truncated at every length */
    int refused = 0;
    for (size_t n = 0; n < len; n++) refused += skv_frame_check(b, n, 1 << 20, &f) == SKV_ERR_FORMAT;
    CHECKF(refused == (int)len, "%d of %zu truncations refused", refused, len);
    CHECK(skv_frame_check(b, 10, 1 << 20, &f) == SKV_ERR_FORMAT && strstr(skv_last_error(), "short"));
    /* oversized: the limit below the stated payload */
    CHECK(skv_frame_check(b, len, 16, &f) == SKV_ERR_FORMAT && strstr(skv_last_error(), "oversized"));
    /* a header claiming more rows than the limit, or a length that disagrees with rows x cols */
    uint8_t h[SKV_FRAME_HDR];
    memcpy(h, b, sizeof h);
    h[19] = 0x7f; /* rows ~ 2^30 */
    CHECK(skv_frame_parse_header(h, 1ull << 40, &f) == SKV_ERR_FORMAT && strstr(skv_last_error(), "limits"));
    memcpy(h, b, sizeof h);
    h[24] ^= 1;
    CHECK(skv_frame_parse_header(h, 1ull << 40, &f) == SKV_ERR_FORMAT && strstr(skv_last_error(), "length"));
    /* wrong version */
    memcpy(h, b, sizeof h);
    h[4] = 2;
    CHECK(skv_frame_parse_header(h, 1 << 20, &f) == SKV_ERR_FORMAT && strstr(skv_last_error(), "version 2"));
    /* every single-bit flip anywhere is refused */
    refused = 0;
    for (size_t i = 0; i < len * 8; i++) {
        b[i / 8] ^= (uint8_t)(1u << (i % 8));
        refused += skv_frame_check(b, len, 1 << 20, &f) != SKV_OK;
        b[i / 8] ^= (uint8_t)(1u << (i % 8));
    }
    CHECKF(refused == (int)len * 8, "%d of %zu bit flips refused", refused, len * 8);
    b[SKV_FRAME_HDR + 3] ^= 0x40;
    CHECK(skv_frame_check(b, len, 1 << 20, &f) == SKV_ERR_FORMAT && strstr(skv_last_error(), "checksum"));
    free(b);
    /* non-finite payload values and int8 scales are refused by the decoder */
    uint8_t p[2 * 8];
    memset(p, 0, sizeof p);
    p[6] = 0xc0, p[7] = 0x7f; /* bf16 NaN at index 3 */
    CHECK(skv_wire_unpack(SKV_ENC_BF16, SKV_PART_ZK, 1, 8, 0, p, y) == SKV_ERR_FORMAT && strstr(skv_last_error(), "finite"));
    uint8_t q8[4 + 8] = {0};
    const float nanf_ = NAN;
    memcpy(q8, &nanf_, 4);
    CHECK(skv_wire_unpack(SKV_ENC_I8ROW, SKV_PART_ZK, 1, 8, 0, q8, y) == SKV_ERR_FORMAT && strstr(skv_last_error(), "scale"));
    CHECK(skv_wire_payload_bytes(SKV_ENC_KIVI4, SKV_PART_ZK, 4, 64, 32, &(uint64_t){0}) == SKV_ERR_FORMAT);
    CHECK(skv_wire_payload_bytes(SKV_ENC_KIVI4, SKV_PART_K, 4, 48, 32, &(uint64_t){0}) == SKV_ERR_FORMAT);
    CHECK(skv_wire_payload_bytes(SKV_ENC_BYTES, SKV_PART_NONE, 4, 2, 0, &(uint64_t){0}) == SKV_ERR_FORMAT);
    /* the fuzz seeds (written by fuzz/make_scd_seeds.py, another CRC implementation) are valid */
    const char *seeds[] = {"hello", "ids", "f32", "bf16", "int8", "kivi4_k", "kivi4_v", "end"};
    for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++) {
        char path[256];
        snprintf(path, sizeof path, "fuzz/corpus/scd_frame/%s", seeds[i]);
        FILE *fp = fopen(path, "rb");
        uint8_t buf[4096];
        const size_t n = fp ? fread(buf, 1, sizeof buf, fp) : 0;
        if (fp) fclose(fp);
        CHECKF(n > 1 && skv_frame_check(buf + 1, n - 1, 1 << 20, &f) == SKV_OK, "seed %s: %s", path, skv_last_error());
    }
}

/* The in-process rebuild as an export buffer (the reference for the processes' --dump-cache). */
static skv_status scd_emit(void *arg, const uint8_t *fr, size_t len) {
    skv_frame f;
    int done;
    skv_status st = skv_frame_check(fr, len, 1u << 30, &f);
    return st ? st : skv_scd_consumer_feed(arg, &f, &done);
}

static int in_process(const char *maps_path, const char *method, const int32_t *ids, int n_ids, void **buf, size_t *len) {
    skv_model *m = skv_test_load_model("kvt-s", 1);
    skv_scd_maps *maps = NULL;
    if (!m || (maps_path && skv_scd_maps_load(maps_path, &maps))) return 0;
    skv_scd_req req = {.method = skv_scd_method_parse(method), .code_enc = SKV_ENC_BF16, .rc_k = 2};
    if (req.method == SKV_SCD_FULL) req.patch[1] = 1; /* one patch layer */
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = skv_model_get_info(m)->n_ctx;
    skv_scd_consumer *c;
    skv_scd_prod_stats ps;
    int ok = skv_scd_consumer_init(m, maps, cp, &c) == SKV_OK &&
             skv_scd_produce(m, maps, ids, n_ids, &req, scd_emit, c, &ps) == SKV_OK && skv_scd_consumer_context(c) &&
             skv_context_export(skv_scd_consumer_context(c), buf, len) == SKV_OK;
    skv_scd_consumer_free(c);
    skv_scd_maps_free(maps);
    skv_model_free(m);
    return ok;
}

/* Consumer in the background, producer in the foreground; returns the consumer's exit status
 * with its stdout/stderr, and the producer's. */
static int pair(const char *transport, const char *method, const char *maps, const char *prod_extra, const char *cons_extra,
                char **cout, char **cerr, int *prod_rc, char **perr) {
    static int k = 0;
    char dir[600], cmd[8192];
    snprintf(dir, sizeof dir, "%s/pair%d", skv_test_tmpdir(), k++);
    char mflag[700] = "";
    if (maps) snprintf(mflag, sizeof mflag, "--maps %s", maps);
    const int len = snprintf(cmd, sizeof cmd, "mkdir -p %s && (OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 %s scd-consumer -m %s/models/kvt-s %s "
             "--transport %s --port-file %s/port --timeout 10 -t 1 -n 4 %s > %s/c.out 2> %s/c.err; echo $? > %s/c.rc) & "
             "for i in $(seq 100); do [ -f %s/port ] && break; sleep 0.1; done; [ -f %s/port ] || exit 99; "
             "OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 %s scd-producer -m %s/models/kvt-s %s --transport %s --method %s "
             "--patch-layers 1 --connect 127.0.0.1:$(cat %s/port) -t 1 --timeout 10 -p 'It is a truth universally acknowledged, "
             "that a single man in possession of a good fortune, must be in want of a wife.' %s > %s/p.out 2> %s/p.err; "
             "echo $? > %s/p.rc; wait", dir, skv_test_cli(), skv_test_shared_dir(), mflag, transport, dir, cons_extra, dir, dir,
             dir, dir, dir, skv_test_cli(), skv_test_shared_dir(), mflag, transport, method, dir, prod_extra, dir, dir, dir);
    if (len < 0 || len >= (int)sizeof cmd || skv_test_sh(cmd, NULL, NULL) != 0) return -1; /* (too long: a failed run) */
    char p[700], *s = NULL;
    int crc = -1;
    snprintf(cmd, sizeof cmd, "cat %s/c.out", dir), skv_test_sh(cmd, cout, NULL);
    snprintf(cmd, sizeof cmd, "cat %s/c.err", dir), skv_test_sh(cmd, cerr, NULL);
    snprintf(cmd, sizeof cmd, "cat %s/p.err", dir), skv_test_sh(cmd, perr, NULL);
    snprintf(cmd, sizeof cmd, "cat %s/c.rc", dir), skv_test_sh(cmd, &s, NULL);
    if (s) crc = atoi(s), free(s), s = NULL;
    snprintf(cmd, sizeof cmd, "cat %s/p.rc", dir), skv_test_sh(cmd, &s, NULL);
    *prod_rc = s ? atoi(s) : -1;
    free(s);
    (void)p;
    return crc;
}

static void round_trip(const char *transport) {
    const char *maps = identical_maps();
    const char *method = maps ? "scd" : "raw";
    char extra[700];
    snprintf(extra, sizeof extra, "--dump-cache %s/cache_%s.bin", skv_test_tmpdir(), transport);
    char *cout = NULL, *cerr = NULL, *perr = NULL;
    int prc;
    const int rc = pair(transport, method, maps, "", extra, &cout, &cerr, &prc, &perr);
    if (rc != 0 && !strcmp(transport, "ucx") && cerr && strstr(cerr, "ucx: cannot listen")) {
        skv_test_skip("UCX cannot listen here: %s", cerr);
        free(cout), free(cerr), free(perr);
        return;
    }
    CHECKF(rc == 0 && prc == 0, "%s %s: consumer exit %d (%s), producer exit %d (%s)", transport, method, rc, cerr, prc, perr);
    CHECKF(cout && strstr(cout, "\"ok\":true") && strstr(cout, "\"ttft\":"), "consumer output: %s", cout);
    /* the same request rebuilt in this process: the same cache bit for bit */
    skv_tokenizer *tok = NULL;
    char tp[512];
    snprintf(tp, sizeof tp, "%s/models/kvt-s/tokenizer.json", skv_test_shared_dir());
    REQUIRE(skv_tokenizer_load(tp, &tok) == SKV_OK, "%s", skv_last_error());
    const char *text = "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be "
                       "in want of a wife.";
    int32_t *ids;
    size_t n;
    REQUIRE(skv_tokenize(tok, text, strlen(text), &ids, &n) == SKV_OK, "%s", skv_last_error());
    const int old = omp_get_max_threads();
    omp_set_num_threads(1);
    void *buf = NULL;
    size_t blen = 0;
    const int ok = in_process(maps, method, ids, (int)n, &buf, &blen);
    omp_set_num_threads(old);
    REQUIRE(ok, "in-process rebuild: %s", skv_last_error());
    char path[600];
    snprintf(path, sizeof path, "%s/cache_%s.bin", skv_test_tmpdir(), transport);
    FILE *f = fopen(path, "rb");
    uint8_t *got = malloc(blen + 1);
    const size_t gl = f ? fread(got, 1, blen + 1, f) : 0;
    if (f) fclose(f);
    CHECKF(gl == blen && !memcmp(got, buf, blen), "%s: the consumer's cache (%zu bytes) differs from the in-process rebuild "
           "(%zu bytes)", transport, gl, blen);
    free(got), free(buf), free(ids);
    skv_tokenizer_free(tok);
    free(cout), free(cerr), free(perr);
}

static void test_tcp(void) { round_trip("tcp"); }
static void test_ucx(void) { round_trip("ucx"); }

/* Faults: each ends the request at the consumer with a clear error, exit 1, no output. */
static void test_faults(void) {
    const struct { const char *fault, *needle; } cases[] = {
        {"corrupt:3", "checksum mismatch"},
        {"die:3", "closed the connection"},
        {"version:0", "version 3"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char extra[64], *cout = NULL, *cerr = NULL, *perr = NULL;
        int prc;
        snprintf(extra, sizeof extra, "--fault %s", cases[i].fault);
        const int rc = pair("tcp", "raw", NULL, extra, "", &cout, &cerr, &prc, &perr);
        CHECKF(rc == 1 && cerr && strstr(cerr, cases[i].needle), "%s: consumer exit %d, stderr: %s", cases[i].fault, rc, cerr);
        CHECKF(cout && !*cout, "%s: the consumer printed a result: %s", cases[i].fault, cout);
        CHECKF(prc != 0, "%s: the producer reported success", cases[i].fault);
        free(cout), free(cerr), free(perr);
    }
    /* the producer resends after a refused request */
    char *cout = NULL, *cerr = NULL, *perr = NULL;
    int prc;
    const int rc = pair("tcp", "raw", NULL, "--fault corrupt:3 --retries 1", "--requests 2", &cout, &cerr, &prc, &perr);
    CHECKF(rc == 1 && prc == 0 && cout && strstr(cout, "\"ok\":true") && cerr && strstr(cerr, "checksum"),
           "resend: consumer %d (%s) producer %d (%s) out %s", rc, cerr, prc, perr, cout);
    free(cout), free(cerr), free(perr);
    /* bad flags */
    char cmd[1024], *err = NULL;
    snprintf(cmd, sizeof cmd, "%s scd-consumer -m %s/models/kvt-s --transport carrier-pigeon", skv_test_cli(), skv_test_shared_dir());
    CHECK(skv_test_sh(cmd, NULL, &err) == 2 && err && strstr(err, "--transport"));
    free(err);
    snprintf(cmd, sizeof cmd, "%s scd-producer -m %s/models/kvt-s --connect 127.0.0.1:1 --method scd -p x", skv_test_cli(),
             skv_test_shared_dir());
    CHECK(skv_test_sh(cmd, NULL, &err) == 2 && err && strstr(err, "--maps"));
    free(err);
}

void register_scd(void) {
    skv_test_add("scd/calibration reproduces a synthetic low-rank pair (ranks by energy, encode, decode)", test_calibrate_synthetic);
    skv_test_add("scd/de-RoPE then RoPE is the identity; de-RoPE'd cache K equals the tapped inputs' projections", test_derope);
    skv_test_add("scd/maps fitted on identical models reproduce the cache (reuse and patch)", test_identical_models);
    skv_test_add("scd/frame parser: truncated, oversized, wrong version, bit flips, non-finite payloads", test_frames);
    skv_test_add("scd/producer and consumer over loopback TCP: same cache bit for bit as in process", test_tcp);
    skv_test_add("scd/producer and consumer over loopback UCX: same cache bit for bit as in process", test_ucx);
    skv_test_add("scd/faults: corrupt byte, producer killed mid-frame, wrong version, resend", test_faults);
    skv_test_add("scd/oracle-input ablation: K/V from the consumer's own inputs reproduce its logits", test_oracle_input);
    skv_test_add("scd/scd-ablate: oracle configurations score KL 0; reuse and patch equal scd-eval's through the frames", test_ablate);
    skv_test_add("scd/layer_done: once per layer, in order, when the layer holds the whole prompt", test_layer_done);
    skv_test_add("cuda/scd: the consumer's rebuild on the GPU equals the CPU's (reuse, patch)", test_cuda_rebuild);
}
