/*
 * test_gguf_convert.c — models and tokenizers converted to GGUF by scripts/hf_to_gguf.py (gguf-py,
 * as llama.cpp's converter writes them: Q/K rows permuted, merges, token types, pre name) read
 * back equal to the originals:
 *   - the tokenizer from GGUF metadata gives the ids of tokenizer.json (kvt-s; the bl_qwen2 and
 *     bl_llama3 fixtures, whose pre-tokenizers are the qwen2 and llama-bpe names) on every case
 *     string of the fixtures and on text of the corpus;
 *   - kvt-s in F32 gives the logits of the bf16 safetensors model (the same values in f32;
 *     the un-permuted Q/K rows) at every position, and the same greedy tokens; in Q8_0 it stays
 *     close (reported).
 * Skips when python3 with numpy and gguf (PyPI) is not installed (the script exits 3).
 */
#include "harness.h"

#include <math.h>

static char g_dir[512];
static int g_state; /* 0 not tried, 1 converted, -1 skip, -2 failed */

static int convert(void) {
    if (g_state) return g_state;
    snprintf(g_dir, sizeof g_dir, "%s/gguf_convert", skv_test_tmpdir());
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "mkdir -p %s && python3 scripts/hf_to_gguf.py %s/models/kvt-s %s/kvt-s.f32.gguf && "
             "python3 scripts/hf_to_gguf.py %s/models/kvt-s %s/kvt-s.q8_0.gguf --type q8_0 && "
             "python3 scripts/hf_to_gguf.py tests/data/tok/bl_qwen2.tokenizer.json %s/bl_qwen2.gguf && "
             "python3 scripts/hf_to_gguf.py tests/data/tok/bl_llama3.tokenizer.json %s/bl_llama3.gguf",
             g_dir, skv_test_shared_dir(), g_dir, skv_test_shared_dir(), g_dir, g_dir, g_dir);
    char *err = NULL;
    int rc = skv_test_sh(cmd, NULL, &err);
    if (rc == 3) g_state = -1;
    else if (rc != 0) {
        g_state = -2;
        skv_test_fail(__FILE__, __LINE__, "hf_to_gguf.py failed (%d): %s", rc, err ? err : "");
    } else g_state = 1;
    free(err);
    return g_state;
}

static int ready(void) {
    int s = convert();
    if (s == -1) skv_test_skip("python3 with numpy and gguf (pip install gguf) is not installed");
    return s == 1;
}

/* ids of a and b on text equal? */
static int same_ids(const skv_tokenizer *a, const skv_tokenizer *b, const char *text, size_t len) {
    int32_t *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    int ok = skv_tokenize(a, text, len, &x, &nx) == SKV_OK && skv_tokenize(b, text, len, &y, &ny) == SKV_OK && nx == ny &&
             !memcmp(x, y, nx * sizeof *x);
    free(x), free(y);
    return ok;
}

static void tok_pair(const char *json_path, const char *gguf_name, const char *cases) {
    char gp[700];
    snprintf(gp, sizeof gp, "%s/%s", g_dir, gguf_name);
    skv_tokenizer *tj = NULL, *tg = NULL;
    REQUIRE(skv_tokenizer_load(json_path, &tj) == SKV_OK, "%s: %s", json_path, skv_last_error());
    REQUIRE(skv_tokenizer_load(gp, &tg) == SKV_OK, "%s: %s", gp, skv_last_error());
    CHECK(skv_tokenizer_n_vocab(tj) == skv_tokenizer_n_vocab(tg));
    int n = 0, bad = 0;
    /* every case string of the fixtures (and their expected ids where the fixture is this one) */
    const char *files[] = {"tests/data/tok/bl_gpt2.cases.json", "tests/data/tok/bl_qwen2.cases.json",
                           "tests/data/tok/bl_llama3.cases.json", "tests/data/tok/spm_llama2.cases.json"};
    for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
        cJSON *cs = skv_test_load_json(files[f]);
        REQUIRE(cs, "%s", files[f]);
        const int own = cases && !strcmp(files[f], cases);
        const cJSON *c;
        cJSON_ArrayForEach(c, cs) {
            const char *t = cJSON_GetObjectItem(c, "text")->valuestring;
            if (!same_ids(tj, tg, t, strlen(t)) && bad++ < 3)
                skv_test_fail(__FILE__, __LINE__, "%s vs %s: \"%.40s\" tokenizes differently", json_path, gp, t);
            if (own) {
                int nw;
                int32_t *want = skv_test_json_ids(cJSON_GetObjectItem(c, "ids"), &nw), *ids = NULL;
                size_t ni = 0;
                CHECK(skv_tokenize(tg, t, strlen(t), &ids, &ni) == SKV_OK);
                CHECKF((int)ni == nw && !memcmp(ids, want, ni * sizeof *ids), "%s: \"%.40s\" differs from the fixture",
                       gp, t);
                free(ids), free(want);
            }
            n++;
        }
        cJSON_Delete(cs);
    }
    /* 64 KiB of the corpus, in 4 KiB pieces */
    char cmd[512], *text = NULL;
    snprintf(cmd, sizeof cmd, "xz -dc %s/data/corpus.val.txt.xz | head -c 65536", skv_test_shared_dir());
    if (skv_test_sh(cmd, &text, NULL) == 0 && text) {
        const size_t len = strlen(text);
        for (size_t off = 0; off < len; off += 4096, n++)
            if (!same_ids(tj, tg, text + off, (len - off < 4096 ? len - off : 4096)) && bad++ < 3)
                skv_test_fail(__FILE__, __LINE__, "%s: corpus piece at %zu tokenizes differently", gp, off);
    }
    free(text);
    CHECKF(bad == 0, "%d of %d strings differ", bad, n);
    printf("    %s: %d strings tokenized as %s\n", gguf_name, n, json_path);
    skv_tokenizer_free(tj), skv_tokenizer_free(tg);
}

static void test_tokenizers(void) {
    if (!ready()) return;
    char kp[512];
    snprintf(kp, sizeof kp, "%s/models/kvt-s/tokenizer.json", skv_test_shared_dir());
    tok_pair(kp, "kvt-s.f32.gguf", NULL);
    tok_pair("tests/data/tok/bl_qwen2.tokenizer.json", "bl_qwen2.gguf", "tests/data/tok/bl_qwen2.cases.json");
    tok_pair("tests/data/tok/bl_llama3.tokenizer.json", "bl_llama3.gguf", "tests/data/tok/bl_llama3.cases.json");
}

static void test_model(void) {
    if (!ready()) return;
    char sp[512], gp[700], qp[700];
    snprintf(sp, sizeof sp, "%s/models/kvt-s", skv_test_shared_dir());
    snprintf(gp, sizeof gp, "%s/kvt-s.f32.gguf", g_dir);
    snprintf(qp, sizeof qp, "%s/kvt-s.q8_0.gguf", g_dir);
    skv_model_params mp = skv_model_default_params();
    mp.n_threads = 2;
    skv_model *ms = NULL, *mg = NULL, *mq = NULL;
    REQUIRE(skv_model_load(sp, mp, &ms) == SKV_OK, "%s", skv_last_error());
    REQUIRE(skv_model_load(gp, mp, &mg) == SKV_OK, "%s: %s", gp, skv_last_error());
    REQUIRE(skv_model_load(qp, mp, &mq) == SKV_OK, "%s: %s", qp, skv_last_error());
    const skv_model_info *a = skv_model_get_info(ms), *b = skv_model_get_info(mg);
    CHECK(a->n_vocab == b->n_vocab && a->dim == b->dim && a->n_layer == b->n_layer && a->n_head == b->n_head &&
          a->n_kv_head == b->n_kv_head && a->head_dim == b->head_dim && a->tied_embeddings == b->tied_embeddings &&
          a->rope_theta == b->rope_theta && a->rms_eps == b->rms_eps && b->weight_dtype == SKV_DTYPE_F32 &&
          skv_model_get_info(mq)->weight_dtype == SKV_DTYPE_Q8_0);
    const int V = a->n_vocab, n = 48;
    int32_t ids[48];
    skv_test_ids(ids, n, 15);
    float *ls = malloc(sizeof(float) * (size_t)(n * V)), *lg = malloc(sizeof(float) * (size_t)(n * V)),
          *lq = malloc(sizeof(float) * (size_t)(n * V));
    skv_context *cs = NULL, *cg = NULL, *cq = NULL;
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = 256;
    REQUIRE(!skv_context_init(ms, cp, &cs) && !skv_context_init(mg, cp, &cg) && !skv_context_init(mq, cp, &cq), "ctx");
    REQUIRE(!skv_decode(cs, ids, n, ls, 1) && !skv_decode(cg, ids, n, lg, 1) && !skv_decode(cq, ids, n, lq, 1), "decode: %s",
            skv_last_error());
    double dg = 0, dq = 0;
    int top_q = 0;
    for (int i = 0; i < n; i++) {
        for (int v = 0; v < V; v++) {
            dg = fmax(dg, fabs(ls[(int64_t)i * V + v] - lg[(int64_t)i * V + v]));
            dq = fmax(dq, fabs(ls[(int64_t)i * V + v] - lq[(int64_t)i * V + v]));
        }
        top_q += skv_test_argmax(ls + (int64_t)i * V, V) == skv_test_argmax(lq + (int64_t)i * V, V);
    }
    CHECKF(dg < 1e-4, "F32 GGUF vs safetensors: prefill logits differ by up to %.3g", dg);
    CHECKF(dq < 0.5 && top_q >= n * 9 / 10, "Q8_0 GGUF: logits differ by up to %.3g, top-1 equal at %d/%d positions", dq, top_q, n);
    /* greedy 24 through the decode path */
    int32_t ts = skv_test_argmax(ls + (int64_t)(n - 1) * V, V), tg = skv_test_argmax(lg + (int64_t)(n - 1) * V, V);
    double dd = 0;
    int same = 0;
    for (int i = 0; i < 24 && ts == tg; i++, same++) {
        REQUIRE(!skv_decode(cs, &ts, 1, ls, 0) && !skv_decode(cg, &tg, 1, lg, 0), "decode");
        for (int v = 0; v < V; v++) dd = fmax(dd, fabs(ls[v] - lg[v]));
        ts = skv_test_argmax(ls, V), tg = skv_test_argmax(lg, V);
    }
    CHECKF(same == 24 && dd < 1e-3, "F32 GGUF decode: %d/24 greedy tokens equal, logits within %.3g", same, dd);
    printf("    kvt-s F32 GGUF vs bf16 safetensors: prefill |diff| %.2g, decode %.2g, greedy 24/24; Q8_0: |diff| %.3f, "
           "top-1 equal %d/%d\n", dg, dd, dq, top_q, n);
    skv_context_free(cs), skv_context_free(cg), skv_context_free(cq);
    skv_model_free(ms), skv_model_free(mg), skv_model_free(mq);
    free(ls), free(lg), free(lq);
}

void register_ggufconvert(void) {
    skv_test_add("ggufconvert/tokenizers converted to GGUF (kvt-s, qwen2 and llama-bpe pre) = tokenizer.json", test_tokenizers);
    skv_test_add("ggufconvert/kvt-s converted to GGUF F32 = safetensors logits (Q/K un-permuted); Q8_0 close", test_model);
}
