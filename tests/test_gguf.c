/*
 * test_gguf.c — the GGUF reader on files the tests write: every metadata type and arrays,
 * alignment, ggml dimension order; bad files (wrong magic or version, every truncation, unknown
 * types, n_dims > 4, absurd counts, misaligned, overlapping and out-of-file tensors, duplicate
 * names) refused with a message naming the file and the field, never a crash.
 */
#include "gguf_writer.h"
#include "harness.h"
#include "io/gguf.h"

#include <math.h>

/* A valid file with every scalar type, arrays of numbers and strings, alignment 64 and three
 * tensors (F32 [4], Q8_0 [64, 3], Q4_K [256, 2]). */
static gw good_file(void) {
    gw w = {0};
    gw_head(&w, 3, 3, 16);
    uint8_t u8 = 200; int8_t i8 = -100; uint16_t u16 = 60000; int16_t i16 = -30000;
    uint32_t u32 = 4000000000u; int32_t i32 = -2000000000; float f32 = 1.5f; uint8_t bo = 1;
    uint64_t u64 = 18000000000000000000ull; int64_t i64 = -9000000000000000000ll; double f64 = -2.25;
    gw_kv(&w, "t.u8", 0, &u8, 1);
    gw_kv(&w, "t.i8", 1, &i8, 1);
    gw_kv(&w, "t.u16", 2, &u16, 2);
    gw_kv(&w, "t.i16", 3, &i16, 2);
    gw_kv(&w, "t.u32", 4, &u32, 4);
    gw_kv(&w, "t.i32", 5, &i32, 4);
    gw_kv(&w, "t.f32", 6, &f32, 4);
    gw_kv(&w, "t.bool", 7, &bo, 1);
    gw_kv_str(&w, "t.str", "héllo");
    gw_kv(&w, "t.u64", 10, &u64, 8);
    gw_kv(&w, "t.i64", 11, &i64, 8);
    gw_kv(&w, "t.f64", 12, &f64, 8);
    /* arrays: i32 x3, f32 x2, strings x3 (one empty) */
    gw_str(&w, "t.arr_i32"); gw_u32(&w, 9); gw_u32(&w, 5); gw_u64(&w, 3);
    int32_t ai[3] = {7, -8, 9}; gw_bytes(&w, ai, sizeof ai);
    gw_str(&w, "t.arr_f32"); gw_u32(&w, 9); gw_u32(&w, 6); gw_u64(&w, 2);
    float af[2] = {0.25f, -4.0f}; gw_bytes(&w, af, sizeof af);
    gw_str(&w, "t.arr_str"); gw_u32(&w, 9); gw_u32(&w, 8); gw_u64(&w, 3);
    gw_str(&w, "a"); gw_str(&w, ""); gw_str(&w, "▁tok");
    gw_kv_u32(&w, "general.alignment", 64);
    int64_t n1[1] = {4}, n2[2] = {64, 3}, n3[2] = {256, 2};
    gw_tensor(&w, "vec", 1, n1, 0, 0);
    gw_tensor(&w, "q8", 2, n2, 8, 64);            /* 3 rows x 2 blocks x 34 = 204 bytes */
    gw_tensor(&w, "q4k", 2, n3, 12, 64 + 256);    /* 2 x 144 = 288 bytes */
    gw_align(&w, 64);
    size_t data = w.n;
    float v[4] = {1, 2, 3, 4};
    gw_bytes(&w, v, sizeof v);
    while (w.n < data + 64 + 256 + 288) gw_u8(&w, (uint8_t)(w.n * 7));
    return w;
}

static void test_every_type(void) {
    gw w = good_file();
    skv_gguf *g = NULL;
    skv_status st = skv_gguf_parse_buffer(w.b, w.n, "good.gguf", &g);
    REQUIRE(st == SKV_OK, "parse: %s", skv_last_error());
    CHECK(skv_gguf_version(g) == 3);
    CHECK(skv_gguf_alignment(g) == 64);
    CHECK(skv_gguf_n_kv(g) == 16);
    int64_t v;
    double f;
    int b;
    char *s;
    CHECK(!skv_gguf_get_int(g, "t.u8", 1, 0, 1000, &v) && v == 200);
    CHECK(!skv_gguf_get_int(g, "t.i8", 1, -1000, 1000, &v) && v == -100);
    CHECK(!skv_gguf_get_int(g, "t.u16", 1, 0, 100000, &v) && v == 60000);
    CHECK(!skv_gguf_get_int(g, "t.i16", 1, -100000, 0, &v) && v == -30000);
    CHECK(!skv_gguf_get_int(g, "t.u32", 1, 0, INT64_MAX, &v) && v == 4000000000ll);
    CHECK(!skv_gguf_get_int(g, "t.i32", 1, INT64_MIN, 0, &v) && v == -2000000000);
    CHECK(!skv_gguf_get_float(g, "t.f32", 1, &f) && f == 1.5);
    CHECK(!skv_gguf_get_bool(g, "t.bool", 1, &b) && b == 1);
    CHECK(!skv_gguf_get_str(g, "t.str", 1, &s) && !strcmp(s, "héllo"));
    free(s);
    CHECK(skv_gguf_find_kv(g, "t.u64")->u == 18000000000000000000ull);
    CHECK(!skv_gguf_get_int(g, "t.i64", 1, INT64_MIN, 0, &v) && v == -9000000000000000000ll);
    CHECK(!skv_gguf_get_float(g, "t.f64", 1, &f) && f == -2.25);
    /* an out-of-range u64, a wrong type, a missing key (required and not) */
    CHECK(skv_gguf_get_int(g, "t.u64", 1, 0, INT64_MAX, &v) == SKV_ERR_FORMAT &&
          strstr(skv_last_error(), "t.u64") && strstr(skv_last_error(), "good.gguf"));
    CHECK(skv_gguf_get_int(g, "t.i8", 1, 0, 10, &v) == SKV_ERR_FORMAT && strstr(skv_last_error(), "out of range"));
    CHECK(skv_gguf_get_int(g, "t.str", 1, 0, 10, &v) == SKV_ERR_FORMAT && strstr(skv_last_error(), "string"));
    CHECK(skv_gguf_get_int(g, "t.none", 1, 0, 10, &v) == SKV_ERR_FORMAT && strstr(skv_last_error(), "t.none"));
    v = 42;
    CHECK(skv_gguf_get_int(g, "t.none", 0, 0, 10, &v) == SKV_OK && v == 42);
    const skv_gguf_kv *a;
    CHECK(!skv_gguf_get_arr(g, "t.arr_i32", 1, SKV_GGUF_I32, &a) && a->arr_n == 3 && skv_gguf_arr_i(a, 1) == -8 &&
          skv_gguf_arr_i(a, 2) == 9);
    CHECK(!skv_gguf_get_arr(g, "t.arr_f32", 1, SKV_GGUF_F32, &a) && a->arr_n == 2 && skv_gguf_arr_f(a, 1) == -4.0);
    CHECK(!skv_gguf_get_arr(g, "t.arr_str", 1, SKV_GGUF_STRING, &a) && a->arr_n == 3 && a->strs[1].n == 0 &&
          a->strs[2].n == strlen("▁tok") && !memcmp(a->strs[2].s, "▁tok", a->strs[2].n));
    CHECK(skv_gguf_get_arr(g, "t.arr_str", 1, SKV_GGUF_I32, &a) == SKV_ERR_FORMAT);
    /* tensors: ggml dimension order, data positions from the aligned data section */
    REQUIRE(skv_gguf_n_tensors(g) == 3, "tensors");
    const skv_gguf_tensor *t = skv_gguf_find_tensor(g, "q8");
    REQUIRE(t, "q8");
    CHECK(t->n_dims == 2 && t->ne[0] == 64 && t->ne[1] == 3 && t->ne[2] == 1 && t->dtype == SKV_DTYPE_Q8_0 &&
          t->nbytes == 204);
    const skv_gguf_tensor *t0 = skv_gguf_find_tensor(g, "vec");
    CHECK(t0 && ((uintptr_t)t0->data - (uintptr_t)w.b) % 64 == 0 && ((const float *)t0->data)[3] == 4.0f);
    CHECK((const uint8_t *)t->data == (const uint8_t *)t0->data + 64);
    t = skv_gguf_find_tensor(g, "q4k");
    CHECK(t && t->dtype == SKV_DTYPE_Q4_K && t->nbytes == 288);
    CHECK(skv_gguf_data_bytes(g) == 16 + 204 + 288);
    skv_gguf_close(g);

    /* the same file through open (mmap, then the RAM copy) */
    char path[512];
    snprintf(path, sizeof path, "%s/good.gguf", skv_test_tmpdir());
    FILE *fp = fopen(path, "wb");
    REQUIRE(fp && fwrite(w.b, 1, w.n, fp) == w.n, "write");
    fclose(fp);
    for (int ram = 0; ram < 2; ram++) {
        REQUIRE(skv_gguf_open(path, ram, &g) == SKV_OK, "open: %s", skv_last_error());
        t0 = skv_gguf_find_tensor(g, "vec");
        CHECK(((const float *)t0->data)[2] == 3.0f);
        CHECK(!skv_gguf_get_str(g, "t.str", 1, &s) && !strcmp(s, "héllo"));
        free(s);
        CHECK(!skv_gguf_get_arr(g, "t.arr_str", 1, SKV_GGUF_STRING, &a) && !memcmp(a->strs[2].s, "▁tok", a->strs[2].n));
        skv_gguf_close(g);
    }
    free(w.b);
}

/* A one-tensor file: F32 tensor of ne, type, offset (data padded to 32). */
static gw one_tensor(int nd, const int64_t *ne, uint32_t type, uint64_t off, size_t data_bytes) {
    gw w = {0};
    gw_head(&w, 3, 1, 1);
    gw_kv_str(&w, "general.architecture", "llama");
    gw_tensor(&w, "w", nd, ne, type, off);
    gw_align(&w, 32);
    for (size_t i = 0; i < data_bytes; i++) gw_u8(&w, 0);
    return w;
}

/* parse must fail with st and a message containing each of the words */
static void expect_fail(gw w, skv_status want, const char *w1, const char *w2) {
    skv_gguf *g = NULL;
    skv_status st = skv_gguf_parse_buffer(w.b, w.n, "bad.gguf", &g);
    CHECKF(st == want, "expected status %d, got %d (%s)", want, st, st ? skv_last_error() : "accepted");
    CHECKF(!g, "handle set on failure");
    if (st) {
        CHECKF(strstr(skv_last_error(), "bad.gguf"), "message does not name the file: %s", skv_last_error());
        CHECKF(!w1 || strstr(skv_last_error(), w1), "message lacks \"%s\": %s", w1, skv_last_error());
        CHECKF(!w2 || strstr(skv_last_error(), w2), "message lacks \"%s\": %s", w2, skv_last_error());
    }
    skv_gguf_close(g);
    free(w.b);
}

static void test_bad_header(void) {
    gw w = good_file();
    w.b[0] = 'X';
    expect_fail(w, SKV_ERR_FORMAT, "magic", NULL);
    w = good_file();
    w.b[4] = 1;
    expect_fail(w, SKV_ERR_UNSUPPORTED, "version 1", NULL);
    w = good_file();
    w.b[4] = 4;
    expect_fail(w, SKV_ERR_UNSUPPORTED, "version 4", NULL);
    /* absurd counts */
    w = good_file();
    memset(w.b + 8, 0xff, 8);
    expect_fail(w, SKV_ERR_FORMAT, "tensor count", NULL);
    w = good_file();
    uint64_t big = 1ull << 40;
    memcpy(w.b + 16, &big, 8);
    expect_fail(w, SKV_ERR_FORMAT, "metadata count", NULL);
    /* every truncation of a valid file is refused, none crashes */
    w = good_file();
    int bad = 0;
    for (size_t n = 0; n < w.n; n++) {
        uint8_t *cp = malloc(n ? n : 1);
        memcpy(cp, w.b, n);
        skv_gguf *g = NULL;
        skv_status st = skv_gguf_parse_buffer(cp, n, "cut.gguf", &g);
        if (st == SKV_OK || !strstr(skv_last_error(), "cut.gguf")) bad++;
        skv_gguf_close(g);
        free(cp);
    }
    CHECKF(bad == 0, "%d truncations accepted or unnamed", bad);
    free(w.b);
}

static void test_bad_metadata(void) {
    gw w = {0};
    uint32_t u = 1;
    gw_head(&w, 3, 0, 1);
    gw_kv(&w, "k", 13, &u, 4);
    expect_fail(w, SKV_ERR_FORMAT, "unknown value type 13", "\"k\"");
    w = (gw){0};
    gw_head(&w, 3, 0, 1);
    gw_str(&w, "nest"); gw_u32(&w, 9); gw_u32(&w, 9); gw_u64(&w, 1);
    gw_u32(&w, 4); gw_u64(&w, 0);
    expect_fail(w, SKV_ERR_UNSUPPORTED, "nested", "nest");
    w = (gw){0};
    gw_head(&w, 3, 0, 1);
    gw_str(&w, "huge"); gw_u32(&w, 9); gw_u32(&w, 5); gw_u64(&w, 1ull << 60);
    expect_fail(w, SKV_ERR_FORMAT, "huge", "past the end");
    w = (gw){0};
    gw_head(&w, 3, 0, 1);
    gw_str(&w, "strs"); gw_u32(&w, 9); gw_u32(&w, 8); gw_u64(&w, 1ull << 50);
    expect_fail(w, SKV_ERR_FORMAT, "strs", "past the end");
    w = (gw){0};
    gw_head(&w, 3, 0, 1);
    gw_str(&w, "s"); gw_u32(&w, 8); gw_u64(&w, 1ull << 62);
    expect_fail(w, SKV_ERR_FORMAT, "truncated", "\"s\"");
    w = (gw){0};
    gw_head(&w, 3, 0, 2);
    gw_kv_u32(&w, "dup", 1);
    gw_kv_u32(&w, "dup", 2);
    expect_fail(w, SKV_ERR_FORMAT, "\"dup\" appears twice", NULL);
    w = (gw){0};
    gw_head(&w, 3, 0, 1);
    gw_kv_u32(&w, "general.alignment", 48);
    expect_fail(w, SKV_ERR_FORMAT, "general.alignment", "power of two");
    w = (gw){0};
    gw_head(&w, 3, 0, 1);
    gw_kv_f32(&w, "general.alignment", 32);
    expect_fail(w, SKV_ERR_FORMAT, "general.alignment", "f32");
    w = (gw){0};
    uint8_t two = 2;
    gw_head(&w, 3, 0, 1);
    gw_kv(&w, "flag", 7, &two, 1);
    expect_fail(w, SKV_ERR_FORMAT, "flag", "bool");
}

static void test_bad_tensors(void) {
    int64_t ne[5] = {32, 2, 1, 1, 1};
    expect_fail(one_tensor(5, ne, 0, 0, 256), SKV_ERR_FORMAT, "n_dims 5", "\"w\"");
    expect_fail(one_tensor(0, ne, 0, 0, 256), SKV_ERR_FORMAT, "n_dims 0", "\"w\"");
    expect_fail(one_tensor(2, ne, 99, 0, 256), SKV_ERR_FORMAT, "unknown ggml type 99", "\"w\"");
    expect_fail(one_tensor(2, ne, 4, 0, 256), SKV_ERR_FORMAT, "unknown ggml type 4", NULL); /* a removed id */
    expect_fail(one_tensor(2, ne, 0, 16, 512), SKV_ERR_FORMAT, "alignment", "\"w\"");       /* misaligned */
    expect_fail(one_tensor(2, ne, 0, 0, 255), SKV_ERR_FORMAT, "past the end", "\"w\"");     /* one byte short */
    expect_fail(one_tensor(2, ne, 0, 1ull << 62, 256), SKV_ERR_FORMAT, "past the end", NULL);
    int64_t odd[2] = {48, 2};
    expect_fail(one_tensor(2, odd, 8, 0, 256), SKV_ERR_FORMAT, "multiple", "Q8_0");
    int64_t zero[2] = {32, 0};
    expect_fail(one_tensor(2, zero, 0, 0, 256), SKV_ERR_FORMAT, "dimension 1", NULL);
    int64_t huge[4] = {1ll << 40, 1ll << 40, 1, 1};
    expect_fail(one_tensor(2, huge, 0, 0, 256), SKV_ERR_FORMAT, "overflow", NULL);
    /* accepted: exactly the bytes */
    gw ok = one_tensor(2, ne, 0, 0, 256);
    skv_gguf *g = NULL;
    CHECKF(skv_gguf_parse_buffer(ok.b, ok.n, "ok.gguf", &g) == SKV_OK, "%s", skv_last_error());
    skv_gguf_close(g);
    free(ok.b);
    /* overlapping and duplicate tensors */
    gw w = {0};
    gw_head(&w, 3, 2, 0);
    gw_tensor(&w, "a", 2, ne, 0, 0);
    gw_tensor(&w, "b", 2, ne, 0, 224);
    gw_align(&w, 32);
    for (int i = 0; i < 512; i++) gw_u8(&w, 0);
    expect_fail(w, SKV_ERR_FORMAT, "overlap", "\"a\"");
    w = (gw){0};
    gw_head(&w, 3, 2, 0);
    gw_tensor(&w, "a", 2, ne, 0, 0);
    gw_tensor(&w, "a", 2, ne, 0, 256);
    gw_align(&w, 32);
    for (int i = 0; i < 512; i++) gw_u8(&w, 0);
    expect_fail(w, SKV_ERR_FORMAT, "\"a\" appears twice", NULL);
    /* a name longer than 64 bytes */
    w = (gw){0};
    gw_head(&w, 3, 1, 0);
    gw_tensor(&w, "0123456789012345678901234567890123456789012345678901234567890123456789", 2, ne, 0, 0);
    gw_align(&w, 32);
    for (int i = 0; i < 256; i++) gw_u8(&w, 0);
    expect_fail(w, SKV_ERR_FORMAT, "longer than 64", NULL);
}

static void test_open_errors(void) {
    skv_gguf *g = NULL;
    CHECK(skv_gguf_open("/nonexistent/x.gguf", 0, &g) == SKV_ERR_IO && strstr(skv_last_error(), "/nonexistent/x.gguf"));
    char path[512];
    snprintf(path, sizeof path, "%s/short.gguf", skv_test_tmpdir());
    FILE *fp = fopen(path, "wb");
    fputs("GGUF", fp);
    fclose(fp);
    CHECK(skv_gguf_open(path, 0, &g) == SKV_ERR_FORMAT && strstr(skv_last_error(), "short.gguf"));
    CHECK(!g);
}


/* ------------------------------------------------- a tiny llama model written as GGUF */

/* kinds of damage to the tiny model */
enum { TM_OK, TM_ARCH, TM_Q2K, TM_MISSING, TM_SHAPE, TM_EXTRA, TM_NOTOK };

static const char *tiny_model(int kind, char *path, size_t cap) {
    static const char *names[] = {"token_embd.weight", "output_norm.weight", "blk.0.attn_norm.weight",
                                  "blk.0.ffn_norm.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight",
                                  "blk.0.attn_v.weight", "blk.0.attn_output.weight", "blk.0.ffn_gate.weight",
                                  "blk.0.ffn_up.weight", "blk.0.ffn_down.weight", "blk.0.extra.weight"};
    const int64_t D = 32, F = 64, V = 8;
    int64_t ne[12][2] = {{D, V}, {D, 1}, {D, 1}, {D, 1}, {D, D}, {D, D}, {D, D}, {D, D}, {D, F}, {D, F}, {F, D}, {D, 1}};
    int nt = kind == TM_EXTRA ? 12 : kind == TM_MISSING ? 10 : 11;
    if (kind == TM_SHAPE) ne[8][1] = F + 1;
    gw w = {0};
    gw_head(&w, 3, (uint64_t)nt, kind == TM_NOTOK ? 8 : 9);
    gw_kv_str(&w, "general.architecture", kind == TM_ARCH ? "phi3" : "llama");
    const char *k[] = {"llama.embedding_length", "llama.feed_forward_length", "llama.block_count", "llama.attention.head_count"};
    const uint32_t v[] = {(uint32_t)D, (uint32_t)F, 1, 1};
    for (int i = 0; i < 4; i++) gw_kv_u32(&w, k[i], v[i]);
    gw_kv_f32(&w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    gw_kv_str(&w, "tokenizer.ggml.model", "gpt2");
    gw_str(&w, "tokenizer.ggml.merges"); gw_u32(&w, 9); gw_u32(&w, 8); gw_u64(&w, 0);
    if (kind != TM_NOTOK) {
        gw_str(&w, "tokenizer.ggml.tokens"); gw_u32(&w, 9); gw_u32(&w, 8); gw_u64(&w, (uint64_t)V);
        for (int i = 0; i < V; i++) { char t[2] = {(char)('a' + i), 0}; gw_str(&w, t); }
    }
    uint64_t off = 0, sizes[12];
    for (int i = 0; i < nt; i++) {
        const uint32_t type = kind == TM_Q2K && i == 4 ? 10 : 0; /* Q2_K (block 256 > 32): [256, D] */
        int64_t e[2] = {ne[i][0], ne[i][1]};
        if (type == 10) e[0] = 256;
        gw_tensor(&w, names[i == 10 && kind == TM_MISSING ? 11 : i], 2, e, type, off);
        sizes[i] = type == 10 ? (uint64_t)e[1] * 84 : (uint64_t)(e[0] * e[1] * 4);
        off += (sizes[i] + 31) / 32 * 32;
    }
    gw_align(&w, 32);
    uint32_t seed = 7;
    for (uint64_t i = 0; i < off / 4; i++) {
        float f = ((float)(skv_test_xorshift(&seed) % 2001) / 1000.0f - 1.0f) * 0.2f;
        gw_bytes(&w, &f, 4);
    }
    snprintf(path, cap, "%s/tiny%d.gguf", skv_test_tmpdir(), kind);
    FILE *fp = fopen(path, "wb");
    if (!fp || fwrite(w.b, 1, w.n, fp) != w.n) path = NULL;
    if (fp) fclose(fp);
    free(w.b);
    return path;
}

static void expect_model(int kind, skv_status want, const char *w1, const char *w2) {
    char path[512];
    REQUIRE(tiny_model(kind, path, sizeof path), "write");
    skv_model *m = NULL;
    skv_status st = skv_model_load(path, skv_model_default_params(), &m);
    CHECKF(st == want, "kind %d: status %d (%s), expected %d", kind, st, st ? skv_last_error() : "loaded", want);
    if (st && want) {
        CHECKF(strstr(skv_last_error(), path), "kind %d: message does not name the file: %s", kind, skv_last_error());
        CHECKF(!w1 || strstr(skv_last_error(), w1), "kind %d: message lacks \"%s\": %s", kind, w1, skv_last_error());
        CHECKF(!w2 || strstr(skv_last_error(), w2), "kind %d: message lacks \"%s\": %s", kind, w2, skv_last_error());
    }
    if (m) {
        const skv_model_info *in = skv_model_get_info(m);
        CHECK(in->dim == 32 && in->n_layer == 1 && in->n_vocab == 8 && in->tied_embeddings && in->head_dim == 32);
        skv_context *c = NULL;
        float lg[8];
        int32_t ids[3] = {1, 2, 3};
        CHECK(skv_context_init(m, skv_context_default_params(), &c) == SKV_OK);
        CHECK(skv_decode(c, ids, 3, lg, 0) == SKV_OK);
        for (int i = 0; i < 8; i++) CHECK(isfinite(lg[i]));
        skv_context_free(c);
        skv_model_free(m);
    }
}

static void test_models(void) {
    expect_model(TM_OK, SKV_OK, NULL, NULL);
    expect_model(TM_ARCH, SKV_ERR_UNSUPPORTED, "general.architecture", "phi3");
    expect_model(TM_Q2K, SKV_ERR_UNSUPPORTED, "blk.0.attn_q.weight", "Q2_K");
    expect_model(TM_MISSING, SKV_ERR_FORMAT, "blk.0.ffn_down.weight", "missing");
    expect_model(TM_SHAPE, SKV_ERR_SHAPE, "blk.0.ffn_gate.weight", NULL);
    expect_model(TM_EXTRA, SKV_ERR_UNSUPPORTED, "blk.0.extra.weight", NULL);
    expect_model(TM_NOTOK, SKV_ERR_FORMAT, "tokenizer.ggml.tokens", NULL);
    /* the CLI: one line naming the file, exit status 1 */
    char path[512], cmd[1200], *err = NULL;
    REQUIRE(tiny_model(TM_Q2K, path, sizeof path), "write");
    snprintf(cmd, sizeof cmd, "%s run -m %s -p hi -n 2", skv_test_cli(), path);
    const int rc = skv_test_sh(cmd, NULL, &err);
    CHECKF(rc == 1 && err && strstr(err, "Q2_K") && strstr(err, "blk.0.attn_q.weight"), "slimkv run: exit %d, %s", rc, err);
    free(err);
}

void register_gguf(void) {
    skv_test_add("gguf/every metadata type, arrays, alignment 64, ggml dimension order (buffer, mmap, RAM copy)",
                 test_every_type);
    skv_test_add("gguf/wrong magic, version 1 and 4, absurd counts, every truncation refused", test_bad_header);
    skv_test_add("gguf/bad metadata: unknown type, nested array, huge arrays and strings, duplicate key, bad alignment",
                 test_bad_metadata);
    skv_test_add("gguf/bad tensors: n_dims 0 and 5, unknown type, misaligned, past the end, overlapping, duplicate, block",
                 test_bad_tensors);
    skv_test_add("gguf/open: missing and short files", test_open_errors);
    skv_test_add("gguf/a tiny llama model loads and decodes; unknown arch, Q2_K, missing, misshapen and unknown tensors, no "
                 "tokens refused naming file and field (and by slimkv run)", test_models);
}
