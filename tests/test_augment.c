/*
 * test_augment.c — cache augmentation (src/method/augment.c): an identity-like coprocessor (the
 * base's own weights, soft embeddings = token embeddings) gives exactly the base's hidden states
 * of those tokens at positions T .. T+n_latent-1 of a copied cache; the base consumes the
 * latents and the next token goes to T+n_latent; directories whose base does not match or
 * whose soft embeddings disagree with n_latent are refused naming the field; the trained
 * coprocessor against PyTorch's reference (skips without its weights).
 */
#include "context/context.h"
#include "harness.h"
#include "model/model.h"
#include "slimkv.h"

#include <dirent.h>
#include <limits.h>
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>

enum { NL = 5, P = 40 };

static skv_model *g_s;
static skv_model *model_s(void) {
    if (!g_s) g_s = skv_test_load_model("kvt-s", 2);
    return g_s;
}

/* soft.safetensors holding soft_embeddings (rows, cols) f32. */
static int write_soft(const char *path, const float *x, int rows, int cols) {
    char hdr[256];
    const size_t bytes = sizeof(float) * (size_t)rows * cols;
    int n = snprintf(hdr, sizeof hdr, "{\"soft_embeddings\":{\"dtype\":\"F32\",\"shape\":[%d,%d],\"data_offsets\":[0,%zu]}}",
                     rows, cols, bytes);
    while (n % 8) hdr[n++] = ' ';
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    const uint64_t len = (uint64_t)n;
    int ok = fwrite(&len, 8, 1, f) == 1 && fwrite(hdr, 1, (size_t)n, f) == (size_t)n && fwrite(x, 1, bytes, f) == bytes;
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* A coprocessor directory: config.json and weights of ../shared/models/<model> (links),
 * augment.json with the given fields, soft embeddings of `rows` rows = token embeddings of
 * ids[] of m. Returns the directory (static buffer per call site). */
static const char *make_dir(const char *name, const char *model, const skv_model *m, const int32_t *ids, int rows,
                            int n_latent, int hidden, int layers, int vocab) {
    static char dirs[8][512];
    static int next;
    char *d = dirs[next++ % 8], path[1024];
    snprintf(d, 512, "%s/%s", skv_test_tmpdir(), name);
    mkdir(d, 0755);
    char rel[1024], src_dir[PATH_MAX];
    snprintf(rel, sizeof rel, "%s/models/%s", skv_test_shared_dir(), model);
    if (!realpath(rel, src_dir)) return NULL; /* the links must not be relative to the test's cwd */
    DIR *dd = opendir(src_dir);
    if (!dd) return NULL;
    for (struct dirent *e; (e = readdir(dd));) { /* config.json and the weights (single or sharded) */
        if (strcmp(e->d_name, "config.json") && strncmp(e->d_name, "model", 5)) continue;
        char src[PATH_MAX + 256];
        snprintf(src, sizeof src, "%s/%s", src_dir, e->d_name);
        snprintf(path, sizeof path, "%s/%s", d, e->d_name);
        unlink(path);
        if (symlink(src, path)) {
            closedir(dd);
            return NULL;
        }
    }
    closedir(dd);
    const skv_model_info *in = skv_model_get_info(m);
    snprintf(path, sizeof path, "%s/augment.json", d);
    FILE *f = fopen(path, "w");
    if (!f) return NULL;
    fprintf(f, "{\"base_model\": \"test\", \"n_latent\": %d, \"hidden_size\": %d, \"num_hidden_layers\": %d, "
            "\"num_key_value_heads\": %d, \"head_dim\": %d, \"vocab_size\": %d, \"latent\": \"hidden_normed\", "
            "\"positions\": \"advance\"}\n", n_latent, hidden, layers, in->n_kv_head, in->head_dim, vocab);
    fclose(f);
    float *soft = malloc(sizeof(float) * (size_t)rows * in->dim);
    for (int r = 0; r < rows; r++) skv_weight_row_f32(&m->tok_embed, ids[r], soft + (size_t)r * in->dim);
    snprintf(path, sizeof path, "%s/soft.safetensors", d);
    const int rc = write_soft(path, soft, rows, in->dim);
    free(soft);
    return rc ? NULL : d;
}

static skv_context *ctx_of(skv_model *m) {
    skv_context_params p = skv_context_default_params();
    p.n_ctx = 256;
    skv_context *c = NULL;
    return skv_context_init(m, p, &c) == SKV_OK ? c : NULL;
}

static double max_diff(const float *a, const float *b, size_t n) {
    double d = 0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - b[i]));
    return d;
}

/* Identity-like coprocessor: latents = the base's normed hidden states of the soft tokens'
 * ids decoded at T .. T+NL-1 on a copied cache; the base consumes them; the next token is at
 * T+NL. */
static void test_identity_positions(void) {
    skv_model *m = model_s();
    REQUIRE(m, "kvt-s: %s", skv_last_error());
    const skv_model_info *in = skv_model_get_info(m);
    const int D = in->dim, V = in->n_vocab;
    int32_t ids[P + 1], soft_ids[NL];
    skv_test_ids(ids, P + 1, 31);
    skv_test_ids(soft_ids, NL, 77);
    const char *dir = make_dir("ident", "kvt-s", m, soft_ids, NL, NL, D, in->n_layer, V);
    REQUIRE(dir, "cannot write the coprocessor directory");
    skv_augment *a = NULL;
    skv_model_params mp = skv_model_default_params();
    mp.n_threads = 2;
    REQUIRE(skv_augment_load(dir, m, mp, &a) == SKV_OK, "%s", skv_last_error());
    CHECK(skv_augment_n_latent(a) == NL);
    skv_context *c = ctx_of(m);
    REQUIRE(c && skv_decode(c, ids, P, NULL, 0) == SKV_OK, "%s", skv_last_error());
    float *z = malloc(sizeof(float) * NL * D), *zr = malloc(sizeof(float) * NL * D);
    float *la = malloc(sizeof(float) * V), *lb = malloc(sizeof(float) * V);
    CHECK(skv_augment_latents(a, c, z) == SKV_OK);
    CHECK(skv_context_n_past(c) == P); /* unchanged */
    /* reference: a copy of the cache decodes the soft tokens' ids at P .. P+NL-1 */
    const skv_policy_params full = skv_policy_default_params("full");
    skv_context *ref = NULL, *shift = NULL;
    REQUIRE(skv_context_fork(c, &full, &ref) == SKV_OK && skv_context_fork(c, &full, &shift) == SKV_OK, "fork");
    const skv_batch rb = {.ids = soft_ids, .n = NL, .hidden_normed = zr, .all = 1};
    CHECK(skv_decode_ex(ref, &rb) == SKV_OK);
    const double d = max_diff(z, zr, (size_t)NL * D);
    CHECKF(d < 1e-5, "identity-like latents vs the base's hidden states at T..T+NL-1: %.3g", d);
    /* the same tokens one position later give other states: the comparison sees positions */
    CHECK(skv_decode(shift, ids + P, 1, NULL, 0) == SKV_OK && skv_decode_ex(shift, &rb) == SKV_OK);
    const double ds = max_diff(z, zr, (size_t)NL * D);
    CHECKF(ds > 1e-3, "latents do not depend on their positions (%.3g)", ds);
    /* apply: the cache grows by NL and the next token sits at T+NL (as on the reference path) */
    skv_context_free(ref), skv_context_free(shift);
    REQUIRE(skv_context_fork(c, &full, &ref) == SKV_OK, "fork");
    CHECK(skv_augment_apply(a, c, la) == SKV_OK);
    CHECK(skv_context_n_past(c) == P + NL);
    const skv_batch eb = {.embd = z, .n = NL, .logits = lb};
    CHECK(skv_decode_ex(ref, &eb) == SKV_OK);
    CHECKF(max_diff(la, lb, (size_t)V) < 1e-4, "last latent's logits differ from the reference path");
    CHECK(skv_decode(c, ids + P, 1, la, 0) == SKV_OK && skv_decode(ref, ids + P, 1, lb, 0) == SKV_OK);
    CHECKF(max_diff(la, lb, (size_t)V) < 1e-4, "the token after the latents differs from the reference at T+NL");
    CHECK(skv_context_n_past(c) == P + NL + 1);
    skv_augment_usage u;
    skv_augment_get_usage(a, &u);
    CHECK(u.runs == 1 && u.weight_bytes > 0 && u.kv_bytes > 0);
    /* the base context may be augmented again (the scratch context's past is released) */
    CHECK(skv_augment_apply(a, c, la) == SKV_OK && skv_context_n_past(c) == P + 2 * NL + 1);
    /* the copy path (skv_context_copy_cache, what the CUDA backend uses) gives the read-only past's latents */
    CHECK(skv_augment_latents(a, c, z) == SKV_OK);
    skv_augment_set_copy(a, 1);
    CHECK(skv_augment_latents(a, c, zr) == SKV_OK);
    const double dc = max_diff(z, zr, (size_t)NL * D);
    CHECKF(dc < 1e-6, "latents through a copied cache differ from the read-only past's: %.3g", dc);
    CHECK(skv_augment_apply(a, c, la) == SKV_OK && skv_context_n_past(c) == P + 3 * NL + 1);
    skv_augment_set_copy(a, 0);
    free(z), free(zr), free(la), free(lb);
    skv_context_free(ref), skv_context_free(c);
    skv_augment_free(a);
}

static void expect_refused(const char *dir, const skv_model *m, const char *needle) {
    skv_augment *a = NULL;
    skv_model_params mp = skv_model_default_params();
    mp.n_threads = 1;
    const skv_status st = skv_augment_load(dir, m, mp, &a);
    CHECKF(st != SKV_OK && !a, "%s: accepted (wanted a refusal naming %s)", dir, needle);
    CHECKF(st == SKV_OK || strstr(skv_last_error(), needle), "%s: refused without naming %s: %s", dir, needle,
           skv_last_error());
    skv_augment_free(a);
}

static void test_refusals(void) {
    skv_model *m = model_s();
    REQUIRE(m, "kvt-s: %s", skv_last_error());
    const skv_model_info *in = skv_model_get_info(m);
    const int D = in->dim, L = in->n_layer, V = in->n_vocab;
    int32_t s[NL + 1];
    skv_test_ids(s, NL + 1, 5);
    expect_refused(make_dir("hid", "kvt-s", m, s, NL, NL, D + 64, L, V), m, "hidden_size");
    expect_refused(make_dir("lay", "kvt-s", m, s, NL, NL, D, L + 1, V), m, "num_hidden_layers");
    expect_refused(make_dir("voc", "kvt-s", m, s, NL, NL, D, L, V - 1), m, "vocab_size");
    expect_refused(make_dir("rows", "kvt-s", m, s, NL + 1, NL, D, L, V), m, "n_latent");
    expect_refused(make_dir("nl0", "kvt-s", m, s, NL, 0, D, L, V), m, "n_latent");
    /* augment.json claims kvt-s's shape but the coprocessor is kvt-l: its own config refused */
    expect_refused(make_dir("big", "kvt-l", m, s, NL, NL, D, L, V), m, "hidden_size");
    /* no augment.json at all */
    char path[1024];
    const char *d = make_dir("nojson", "kvt-s", m, s, NL, NL, D, L, V);
    snprintf(path, sizeof path, "%s/augment.json", d);
    unlink(path);
    expect_refused(d, m, "augment.json");
    /* the cache copy the CUDA path uses: another cache shape, a non-empty destination refused */
    skv_model *big = skv_test_load_model("kvt-l", 1);
    if (big) {
        skv_context *cs = ctx_of(m), *cl = ctx_of(big), *cs2 = ctx_of(m);
        REQUIRE(cs && cl && cs2 && skv_decode(cl, s, NL, NULL, 0) == SKV_OK && skv_decode(cs2, s, 2, NULL, 0) == SKV_OK,
                "%s", skv_last_error());
        CHECKF(skv_context_copy_cache(cs, cl) == SKV_ERR_SHAPE && strstr(skv_last_error(), "KV heads x head_dim"),
               "kvt-l's cache copied into a kvt-s context: %s", skv_last_error());
        CHECK(skv_context_n_past(cs) == 0);
        CHECKF(skv_context_copy_cache(cs2, cs2) == SKV_ERR_ARG && strstr(skv_last_error(), "empty"),
               "copy into a non-empty context: %s", skv_last_error());
        CHECK(skv_context_copy_cache(cs, cs2) == SKV_OK && skv_context_n_past(cs) == 2);
        skv_context_free(cs), skv_context_free(cl), skv_context_free(cs2);
        skv_model_free(big);
    }
    /* the CLI: a non-zero exit naming the flag and the field */
    char cmd[2048], *err = NULL;
    snprintf(cmd, sizeof cmd, "%s run -m %s/models/kvt-s --augment %s/hid -p hello -n 2 -t 1", skv_test_cli(),
             skv_test_shared_dir(), skv_test_tmpdir());
    const int rc = skv_test_sh(cmd, NULL, &err);
    CHECKF(rc != 0 && err && strstr(err, "--augment") && strstr(err, "hidden_size"), "run --augment with a "
           "mismatched base: rc %d, %s", rc, err ? err : "");
    free(err);
    err = NULL;
    snprintf(cmd, sizeof cmd, "%s ppl -m %s/models/kvt-s -f %s/data/corpus.val.txt.xz -w 1 --augment-every 64",
             skv_test_cli(), skv_test_shared_dir(), skv_test_shared_dir());
    const int rc2 = skv_test_sh(cmd, NULL, &err);
    CHECKF(rc2 == 2 && err && strstr(err, "--augment DIR"), "ppl --augment-every without --augment: rc %d, %s", rc2,
           err ? err : "");
    free(err);
}

/* The trained coprocessor against train/augment_ref.py's reference (CPU, float32 from bf16). */
static void test_pytorch_reference(void) {
    const char *dir = "models/aug-kvt-l-n16";
    if (access("models/aug-kvt-l-n16/model.safetensors", R_OK)) {
        skv_test_skip("models/aug-kvt-l-n16/model.safetensors absent (scripts/get-weights.sh)");
        return;
    }
    cJSON *ref = skv_test_load_json("models/aug-kvt-l-n16/reference.json");
    skv_model *m = skv_test_load_model("kvt-l", 2);
    if (!m) {
        cJSON_Delete(ref);
        skv_test_skip("kvt-l absent");
        return;
    }
    REQUIRE(ref, "models/aug-kvt-l-n16/reference.json missing or malformed");
    skv_augment *a = NULL;
    skv_model_params mp = skv_model_default_params();
    mp.n_threads = 2;
    REQUIRE(skv_augment_load(dir, m, mp, &a) == SKV_OK, "%s", skv_last_error());
    const int D = skv_model_get_info(m)->dim, V = skv_model_get_info(m)->n_vocab, N = skv_augment_n_latent(a);
    float *z = malloc(sizeof(float) * N * D), *lg = malloc(sizeof(float) * V);
    const cJSON *prompts = cJSON_GetObjectItem(ref, "prompts"), *p;
    cJSON_ArrayForEach(p, prompts) {
        int n = 0, ng = 0;
        int32_t *ids = skv_test_json_ids(cJSON_GetObjectItem(p, "ids"), &n);
        int32_t *want = skv_test_json_ids(cJSON_GetObjectItem(p, "greedy16"), &ng);
        skv_context *c = ctx_of(m);
        REQUIRE(c && skv_decode(c, ids, n, NULL, 0) == SKV_OK, "%s", skv_last_error());
        CHECK(skv_augment_latents(a, c, z) == SKV_OK);
        double dmax = 0, zmax = 0;
        const cJSON *rows = cJSON_GetObjectItem(p, "latents");
        for (int i = 0; i < N; i++)
            for (int j = 0; j < D; j++) {
                const double r = cJSON_GetArrayItem(cJSON_GetArrayItem(rows, i), j)->valuedouble;
                dmax = fmax(dmax, fabs(r - z[(size_t)i * D + j]));
                zmax = fmax(zmax, fabs(r));
            }
        CHECKF(dmax / zmax < 2e-3, "prompt of %d tokens: latents differ by %.3g relative (max %.3g)", n, dmax / zmax, dmax);
        printf("    prompt of %3d tokens: latents max |diff| / max |z| = %.2e\n", n, dmax / zmax);
        CHECK(skv_augment_apply(a, c, lg) == SKV_OK);
        const cJSON *tid = cJSON_GetObjectItem(p, "logits_top_ids"), *tv = cJSON_GetObjectItem(p, "logits_top");
        double lmax = 0, ldiff = 0;
        for (int i = 0; i < cJSON_GetArraySize(tid); i++) {
            const double r = cJSON_GetArrayItem(tv, i)->valuedouble;
            ldiff = fmax(ldiff, fabs(r - lg[cJSON_GetArrayItem(tid, i)->valueint]));
            lmax = fmax(lmax, fabs(r));
        }
        CHECKF(ldiff / lmax < 2e-3, "prompt of %d tokens: last latent's logits differ by %.3g relative", n, ldiff / lmax);
        printf("    prompt of %3d tokens: top-16 logits at the last latent max |diff| / max = %.2e\n", n, ldiff / lmax);
        int32_t id = skv_test_argmax(lg, V), same = 0;
        for (int t = 0; t < ng; t++) {
            if (id != want[t]) break;
            same++;
            if (t + 1 < ng && skv_decode(c, &id, 1, lg, 0)) break;
            id = skv_test_argmax(lg, V);
        }
        CHECKF(same == ng, "prompt of %d tokens: greedy after the latents agrees for %d of %d tokens", n, same, ng);
        skv_context_free(c);
        free(ids), free(want);
    }
    free(z), free(lg);
    skv_augment_free(a);
    skv_model_free(m);
    cJSON_Delete(ref);
}

static char *slurp_bin(const char *path, long *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)*n + 1);
    if (b && fread(b, 1, (size_t)*n, f) != (size_t)*n) free(b), b = NULL;
    fclose(f);
    return b;
}

/* ppl --skip-windows (a run split over processes): windows S .. S+W-1 give the per-point NLLs of
 * the same windows in an unsplit run; a negative value is refused naming the flag. */
static void test_ppl_skip_windows(void) {
    skv_model *m = model_s();
    REQUIRE(m, "kvt-s: %s", skv_last_error());
    const skv_model_info *in = skv_model_get_info(m);
    int32_t soft_ids[NL];
    skv_test_ids(soft_ids, NL, 77);
    const char *dir = make_dir("ident-ppl", "kvt-s", m, soft_ids, NL, NL, in->dim, in->n_layer, in->n_vocab);
    REQUIRE(dir, "cannot write the coprocessor directory");
    char cmd[3072], a[1024], b[1024];
    snprintf(a, sizeof a, "%s/skip_all.f32", skv_test_tmpdir());
    snprintf(b, sizeof b, "%s/skip_one.f32", skv_test_tmpdir());
    const char *fmt = "%s ppl -m %s/models/kvt-s -f %s/data/corpus.val.txt.xz -c 96 -t 1 -q --augment %s "
                      "--augment-every 32 %s --augment-dump %s > /dev/null";
    snprintf(cmd, sizeof cmd, fmt, skv_test_cli(), skv_test_shared_dir(), skv_test_shared_dir(), dir, "-w 3", a);
    CHECKF(skv_test_sh(cmd, NULL, NULL) == 0, "%s", cmd);
    snprintf(cmd, sizeof cmd, fmt, skv_test_cli(), skv_test_shared_dir(), skv_test_shared_dir(), dir,
             "-w 1 --skip-windows 2", b);
    CHECKF(skv_test_sh(cmd, NULL, NULL) == 0, "%s", cmd);
    long na = 0, nb = 0;
    char *da = slurp_bin(a, &na), *db = slurp_bin(b, &nb);
    CHECKF(da && db && na == 3 * nb && nb > 0 && !memcmp(da + 2 * nb, db, (size_t)nb),
           "window 2 alone (%ld bytes) differs from window 2 of three (%ld bytes)", nb, na);
    free(da), free(db);
    char *err = NULL;
    snprintf(cmd, sizeof cmd, "%s ppl -m %s/models/kvt-s -f %s/data/corpus.val.txt.xz --skip-windows -1",
             skv_test_cli(), skv_test_shared_dir(), skv_test_shared_dir());
    const int rc = skv_test_sh(cmd, NULL, &err);
    CHECKF(rc == 2 && err && strstr(err, "--skip-windows"), "ppl --skip-windows -1: rc %d, %s", rc, err ? err : "");
    free(err);
}

static int have_gpu(void) {
    if (skv_backend_available(SKV_BACKEND_CUDA)) return 1;
    skv_test_skip("%s", skv_last_error());
    return 0;
}

static skv_context *ctx_on(skv_model *m, skv_backend b) {
    skv_context_params p = skv_context_default_params();
    p.n_ctx = 256;
    p.backend = b;
    skv_context *c = NULL;
    return skv_context_init(m, p, &c) == SKV_OK ? c : NULL;
}

/* CUDA: the identity-like coprocessor (a second load of kvt-s, so a second GPU model) reads a
 * device copy of the base cache: its latents equal a CUDA fork decoding the soft tokens' ids at
 * T .. T+NL-1, the base then holds T+NL tokens, and the latents match the CPU backend's. */
static void test_cuda_identity(void) {
    if (!have_gpu()) return;
    skv_model *m = model_s();
    REQUIRE(m, "kvt-s: %s", skv_last_error());
    const skv_model_info *in = skv_model_get_info(m);
    const int D = in->dim, V = in->n_vocab;
    int32_t ids[P + 1], soft_ids[NL];
    skv_test_ids(ids, P + 1, 31);
    skv_test_ids(soft_ids, NL, 77);
    const char *dir = make_dir("ident-cuda", "kvt-s", m, soft_ids, NL, NL, D, in->n_layer, V);
    REQUIRE(dir, "cannot write the coprocessor directory");
    skv_augment *a = NULL;
    skv_model_params mp = skv_model_default_params();
    mp.n_threads = 2;
    REQUIRE(skv_augment_load(dir, m, mp, &a) == SKV_OK, "%s", skv_last_error());
    skv_context *g = ctx_on(m, SKV_BACKEND_CUDA), *c = ctx_on(m, SKV_BACKEND_CPU), *ref = NULL;
    REQUIRE(g && c && skv_decode(g, ids, P, NULL, 0) == SKV_OK && skv_decode(c, ids, P, NULL, 0) == SKV_OK, "%s",
            skv_last_error());
    float *z = malloc(sizeof(float) * NL * D), *zr = malloc(sizeof(float) * NL * D), *zc = malloc(sizeof(float) * NL * D);
    float *la = malloc(sizeof(float) * V), *lb = malloc(sizeof(float) * V);
    CHECKF(skv_augment_latents(a, g, z) == SKV_OK, "%s", skv_last_error());
    CHECK(skv_context_n_past(g) == P);
    const skv_policy_params full = skv_policy_default_params("full");
    REQUIRE(skv_context_fork(g, &full, &ref) == SKV_OK, "fork: %s", skv_last_error());
    const skv_batch rb = {.ids = soft_ids, .n = NL, .hidden_normed = zr, .all = 1};
    CHECK(skv_decode_ex(ref, &rb) == SKV_OK);
    const double d = max_diff(z, zr, (size_t)NL * D);
    CHECKF(d < 1e-4, "CUDA: identity-like latents vs the base's states at T..T+NL-1: %.3g", d);
    CHECK(skv_augment_latents(a, c, zc) == SKV_OK); /* the CPU backend (read-only past, f32 cache) */
    double zm = 0;
    for (int i = 0; i < NL * D; i++) zm = fmax(zm, fabs(zc[i]));
    const double dc = max_diff(z, zc, (size_t)NL * D) / zm;
    CHECKF(dc < 3e-2, "CUDA vs CPU latents: max |diff| / max |z| = %.3g", dc);
    printf("    identity-like on CUDA: vs the fork %.2e; vs the CPU %.2e relative\n", d, dc);
    /* apply: T+NL tokens, the next at T+NL as on the fork that consumes the same latents */
    skv_context_free(ref);
    REQUIRE(skv_context_fork(g, &full, &ref) == SKV_OK, "fork: %s", skv_last_error());
    CHECK(skv_augment_apply(a, g, la) == SKV_OK && skv_context_n_past(g) == P + NL);
    const skv_batch eb = {.embd = z, .n = NL, .logits = lb};
    CHECK(skv_decode_ex(ref, &eb) == SKV_OK);
    CHECKF(max_diff(la, lb, (size_t)V) < 1e-3, "CUDA: last latent's logits differ from the fork's");
    CHECK(skv_decode(g, ids + P, 1, la, 0) == SKV_OK && skv_decode(ref, ids + P, 1, lb, 0) == SKV_OK);
    CHECKF(max_diff(la, lb, (size_t)V) < 1e-3, "CUDA: the token after the latents differs from the fork's at T+NL");
    /* again (the scratch context was emptied) */
    CHECK(skv_augment_apply(a, g, la) == SKV_OK && skv_context_n_past(g) == P + 2 * NL + 1);
    free(z), free(zr), free(zc), free(la), free(lb);
    skv_context_free(ref), skv_context_free(g), skv_context_free(c);
    skv_augment_free(a);
}

/* CUDA: the trained coprocessor's latents and the logits after them against the CPU backend's
 * and PyTorch's (reference.json) on kvt-l's golden prompts; greedy tokens after the latents. */
static void test_cuda_trained(void) {
    if (!have_gpu()) return;
    if (access("models/aug-kvt-l-n16/model.safetensors", R_OK)) {
        skv_test_skip("models/aug-kvt-l-n16/model.safetensors absent (scripts/get-weights.sh)");
        return;
    }
    cJSON *ref = skv_test_load_json("models/aug-kvt-l-n16/reference.json");
    skv_model *m = skv_test_load_model("kvt-l", 2);
    if (!m) {
        cJSON_Delete(ref);
        skv_test_skip("kvt-l absent");
        return;
    }
    REQUIRE(ref, "models/aug-kvt-l-n16/reference.json missing or malformed");
    skv_augment *a = NULL;
    skv_model_params mp = skv_model_default_params();
    mp.n_threads = 2;
    REQUIRE(skv_augment_load("models/aug-kvt-l-n16", m, mp, &a) == SKV_OK, "%s", skv_last_error());
    const int D = skv_model_get_info(m)->dim, V = skv_model_get_info(m)->n_vocab, N = skv_augment_n_latent(a);
    float *zg = malloc(sizeof(float) * N * D), *zc = malloc(sizeof(float) * N * D);
    float *lg = malloc(sizeof(float) * V), *lc = malloc(sizeof(float) * V);
    const cJSON *p;
    double worst_z = 0, worst_zp = 0, worst_l = 0;
    int same = 0, total = 0;
    cJSON_ArrayForEach(p, cJSON_GetObjectItem(ref, "prompts")) {
        int n = 0, ng = 0;
        int32_t *ids = skv_test_json_ids(cJSON_GetObjectItem(p, "ids"), &n);
        int32_t *want = skv_test_json_ids(cJSON_GetObjectItem(p, "greedy16"), &ng);
        skv_context *g = ctx_on(m, SKV_BACKEND_CUDA), *c = ctx_on(m, SKV_BACKEND_CPU);
        REQUIRE(g && c && skv_decode(g, ids, n, NULL, 0) == SKV_OK && skv_decode(c, ids, n, NULL, 0) == SKV_OK, "%s",
                skv_last_error());
        CHECKF(skv_augment_latents(a, g, zg) == SKV_OK, "%s", skv_last_error());
        CHECK(skv_augment_latents(a, c, zc) == SKV_OK);
        const cJSON *rows = cJSON_GetObjectItem(p, "latents");
        double zm = 0, dz = 0, dp = 0;
        for (int i = 0; i < N; i++)
            for (int j = 0; j < D; j++) {
                const size_t k = (size_t)i * D + j;
                const double r = cJSON_GetArrayItem(cJSON_GetArrayItem(rows, i), j)->valuedouble;
                zm = fmax(zm, fabs(zc[k]));
                dz = fmax(dz, fabs((double)zg[k] - zc[k]));
                dp = fmax(dp, fabs((double)zg[k] - r));
            }
        worst_z = fmax(worst_z, dz / zm), worst_zp = fmax(worst_zp, dp / zm);
        CHECK(skv_augment_apply(a, g, lg) == SKV_OK && skv_augment_apply(a, c, lc) == SKV_OK);
        double num = 0, den = 0;
        for (int v = 0; v < V; v++) num += ((double)lg[v] - lc[v]) * ((double)lg[v] - lc[v]), den += (double)lc[v] * lc[v];
        worst_l = fmax(worst_l, sqrt(num / den));
        CHECKF(skv_test_argmax(lg, V) == skv_test_argmax(lc, V), "prompt of %d tokens: CUDA and CPU disagree on the "
               "first token after the latents", n);
        int32_t id = skv_test_argmax(lg, V);
        for (int t = 0; t < ng; t++, total++) {
            same += id == want[t];
            if (id != want[t] || (t + 1 < ng && skv_decode(g, &id, 1, lg, 0))) {
                total += ng - t;
                break;
            }
            id = skv_test_argmax(lg, V);
        }
        skv_context_free(g), skv_context_free(c);
        free(ids), free(want);
    }
    printf("    trained N_L=%d on CUDA: latents vs CPU %.2e, vs PyTorch %.2e (max |diff| / max |z|); last latent's "
           "logits vs CPU rel L2 %.2e; greedy after the latents = PyTorch's for %d of %d tokens\n",
           N, worst_z, worst_zp, worst_l, same, total);
    CHECKF(worst_z < 3e-2 && worst_zp < 3e-2, "CUDA latents: %.3g vs CPU, %.3g vs PyTorch", worst_z, worst_zp);
    CHECKF(worst_l < 2e-2, "CUDA logits after the latents vs CPU: rel L2 %.3g", worst_l);
    free(zg), free(zc), free(lg), free(lc);
    skv_augment_free(a);
    skv_model_free(m);
    cJSON_Delete(ref);
}

static void test_cleanup(void) {
    skv_model_free(g_s);
    g_s = NULL;
}

void register_augment(void) {
    skv_test_add("augment/identity-like coprocessor: copied-cache states at T..T+NL-1, next token at T+NL",
                 test_identity_positions);
    skv_test_add("augment/mismatched base, n_latent vs soft embeddings, missing augment.json refused", test_refusals);
    skv_test_add("augment/trained coprocessor vs PyTorch reference (latents, logits, greedy)", test_pytorch_reference);
    skv_test_add("augment/ppl --skip-windows: a share's per-point NLLs = the same windows of a whole run",
                 test_ppl_skip_windows);
    skv_test_add("cuda/augment: identity-like coprocessor on a device copy = fork at T..T+NL-1; vs CPU", test_cuda_identity);
    skv_test_add("cuda/augment: trained coprocessor latents, logits vs CPU and PyTorch", test_cuda_trained);
    skv_test_add("augment/(release the shared model)", test_cleanup);
}
