/*
 * test_tokenizer.c — tests of the tokenizer (src/tokenizer/): conformance with the reference
 * ids in ../shared/models/kvt-{s,l}/golden.json and in the fixtures of tests/data/tok/ (made by
 * scripts/make_tok_fixtures.py with Hugging Face tokenizers), round trips on random text,
 * streaming decode of characters split across tokens, bad input, speed and thread safety.
 */
#include "harness.h"
#include "slimkv.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdint.h>
#include <time.h>

#define FIXTURE_DIR "tests/data/tok/"

static const char *FIXTURES[] = {"spm_llama2", "spm_metaspace", "spm_unk",
                                 "bl_llama3", "bl_qwen2", "bl_gpt2", "bl_mix",
                                 "bl_ws_nodecoder", "bpe_suffix"};

/* ----------------------------------------------------------------------------- helpers */

static int ids_from_json(const cJSON *arr, int32_t **ids, size_t *n) {
    *n = (size_t)cJSON_GetArraySize(arr);
    *ids = malloc((*n + 1) * sizeof **ids);
    size_t i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr) (*ids)[i++] = (int32_t)it->valuedouble;
    return 0;
}

/* Printable excerpt of a string for failure messages. */
static const char *show(const char *s) {
    static _Thread_local char buf[96];
    size_t k = 0;
    for (size_t i = 0; s[i] && k + 5 < sizeof buf; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n') { buf[k++] = '\\'; buf[k++] = 'n'; }
        else if (c < 0x20) k += (size_t)snprintf(buf + k, sizeof buf - k, "\\x%02x", c);
        else buf[k++] = (char)c;
    }
    buf[k] = 0;
    return buf;
}

static int same_ids(const int32_t *a, size_t na, const int32_t *b, size_t nb, size_t *where) {
    size_t i = 0;
    while (i < na && i < nb && a[i] == b[i]) i++;
    *where = i;
    return na == nb && i == na;
}

/* Decode ids one at a time through the streaming decoder; returns the malloc'd concatenation. */
static char *stream_decode(const skv_tokenizer *tok, const int32_t *ids, size_t n) {
    skv_detok *d = NULL;
    if (skv_detok_init(tok, &d) != SKV_OK) return NULL;
    size_t cap = 4096, len = 0;
    char *all = malloc(cap), piece[64];
    for (size_t i = 0; i <= n; i++) {
        int r = i < n ? skv_detok_push(d, ids[i], piece, sizeof piece)
                      : skv_detok_flush(d, piece, sizeof piece);
        if (r < 0) {
            free(all);
            skv_detok_free(d);
            return NULL;
        }
        if (len + (size_t)r + 1 > cap) all = realloc(all, cap = 2 * (cap + (size_t)r));
        memcpy(all + len, piece, (size_t)r);
        len += (size_t)r;
    }
    /* what a long token left over comes out on further flushes */
    int r;
    while ((r = skv_detok_flush(d, piece, sizeof piece)) > 0) {
        if (len + (size_t)r + 1 > cap) all = realloc(all, cap = 2 * (cap + (size_t)r));
        memcpy(all + len, piece, (size_t)r);
        len += (size_t)r;
    }
    all[len] = 0;
    skv_detok_free(d);
    return all;
}

/* Check one text -> ids -> text case; expect_decoded NULL: decoding must give text back. */
static void check_case(const skv_tokenizer *tok, const char *where, const char *text,
                       const int32_t *want, size_t n_want, const char *expect_decoded) {
    int32_t *ids = NULL;
    size_t n = 0, at;
    skv_status st = skv_tokenize(tok, text, strlen(text), &ids, &n);
    CHECKF(st == SKV_OK, "%s: skv_tokenize failed: %s", where, skv_last_error());
    if (st == SKV_OK && !same_ids(ids, n, want, n_want, &at))
        skv_test_fail(__FILE__, __LINE__, "%s: \"%s\": ids differ at %zu (got %zu ids, want %zu; "
                      "got %d want %d)", where, show(text), at, n, n_want,
                      at < n ? (int)ids[at] : -1, at < n_want ? (int)want[at] : -1);
    free(ids);
    char *dec = NULL;
    size_t dlen = 0;
    st = skv_detokenize(tok, want, n_want, &dec, &dlen);
    const char *exp = expect_decoded ? expect_decoded : text;
    CHECKF(st == SKV_OK && dec && strcmp(dec, exp) == 0 && dlen == strlen(exp),
           "%s: decode of \"%s\" gave \"%s\"", where, show(text), dec ? show(dec) : "(null)");
    char *sd = stream_decode(tok, want, n_want);
    CHECKF(sd && dec && strcmp(sd, dec) == 0, "%s: streaming decode of \"%s\" gave \"%s\"", where,
           show(text), sd ? show(sd) : "(null)");
    free(sd);
    free(dec);
}

/* -------------------------------------------------------------------------- conformance */

static void golden(const char *model) {
    char path[512], tpath[512];
    snprintf(path, sizeof path, "%s/models/%s/golden.json", skv_test_shared_dir(), model);
    snprintf(tpath, sizeof tpath, "%s/models/%s/tokenizer.json", skv_test_shared_dir(), model);
    cJSON *g = skv_test_load_json(path);
    REQUIRE(g, "cannot read %s", path);
    skv_tokenizer *tok = NULL;
    skv_status st = skv_tokenizer_load(tpath, &tok);
    if (st != SKV_OK) {
        cJSON_Delete(g);
        REQUIRE(0, "load %s: %s", tpath, skv_last_error());
    }
    CHECK(skv_tokenizer_n_vocab(tok) == 8192);
    int n_cases = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, cJSON_GetObjectItem(g, "tokenizer")) {
        int32_t *want;
        size_t nw;
        ids_from_json(cJSON_GetObjectItem(it, "ids"), &want, &nw);
        check_case(tok, model, cJSON_GetObjectItem(it, "text")->valuestring, want, nw, NULL);
        free(want);
        n_cases++;
    }
    cJSON_ArrayForEach(it, cJSON_GetObjectItem(g, "prompts")) {
        int32_t *want;
        size_t nw;
        ids_from_json(cJSON_GetObjectItem(it, "ids"), &want, &nw);
        check_case(tok, model, cJSON_GetObjectItem(it, "text")->valuestring, want, nw, NULL);
        free(want);
        /* greedy32 ids decode to greedy32_text */
        ids_from_json(cJSON_GetObjectItem(it, "greedy32"), &want, &nw);
        const char *gt = cJSON_GetObjectItem(it, "greedy32_text")->valuestring;
        char *dec = NULL;
        st = skv_detokenize(tok, want, nw, &dec, NULL);
        CHECKF(st == SKV_OK && strcmp(dec, gt) == 0, "%s: greedy32 decode gave \"%s\"", model, show(dec ? dec : ""));
        char *sd = stream_decode(tok, want, nw);
        CHECKF(sd && strcmp(sd, gt) == 0, "%s: greedy32 streaming decode differs", model);
        free(sd);
        free(dec);
        free(want);
        n_cases++;
    }
    CHECKF(n_cases >= 10, "%s: only %d golden cases", model, n_cases);
    skv_tokenizer_free(tok);
    cJSON_Delete(g);
}

static void test_golden_kvt_s(void) { golden("kvt-s"); }
static void test_golden_kvt_l(void) { golden("kvt-l"); }

/* Every fixture made by scripts/make_tok_fixtures.py: ids and decoded text as the reference. */
static void test_fixtures(void) {
    for (size_t f = 0; f < sizeof FIXTURES / sizeof FIXTURES[0]; f++) {
        char tpath[256], cpath[256];
        snprintf(tpath, sizeof tpath, FIXTURE_DIR "%s.tokenizer.json", FIXTURES[f]);
        snprintf(cpath, sizeof cpath, FIXTURE_DIR "%s.cases.json", FIXTURES[f]);
        skv_tokenizer *tok = NULL;
        skv_status st = skv_tokenizer_load(tpath, &tok);
        CHECKF(st == SKV_OK, "load %s: %s", tpath, skv_last_error());
        cJSON *cases = skv_test_load_json(cpath);
        CHECKF(cases != NULL, "cannot read %s", cpath);
        if (st != SKV_OK || !cases) {
            skv_tokenizer_free(tok);
            cJSON_Delete(cases);
            continue;
        }
        const cJSON *it;
        int n = 0;
        cJSON_ArrayForEach(it, cases) {
            int32_t *want;
            size_t nw;
            ids_from_json(cJSON_GetObjectItem(it, "ids"), &want, &nw);
            check_case(tok, FIXTURES[f], cJSON_GetObjectItem(it, "text")->valuestring, want, nw,
                       cJSON_GetObjectItem(it, "decoded")->valuestring);
            free(want);
            n++;
        }
        CHECKF(n >= 150, "%s: only %d cases", FIXTURES[f], n);
        skv_tokenizer_free(tok);
        cJSON_Delete(cases);
    }
}

/* ------------------------------------------------------------------------------ round trip */

static uint64_t rng_next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static size_t put_cp(char *o, uint32_t cp) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xc0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3f)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f)); return 3;
    }
    o[0] = (char)(0xf0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f)); o[3] = (char)(0x80 | (cp & 0x3f)); return 4;
}

/* Random valid UTF-8: random bytes where they form valid characters, else random code points of
 * every length (no surrogates); avoids '<' and U+2581 so no added token or metaspace appears. */
static size_t random_text(uint64_t *s, char *out, size_t max_chars) {
    size_t n = 0, k = 1 + rng_next(s) % max_chars;
    for (size_t i = 0; i < k; i++) {
        uint64_t r = rng_next(s);
        uint32_t cp;
        switch (r % 6) {
        case 0: cp = (uint32_t)(r >> 8) % 0x80; break;                 /* ASCII incl. controls */
        case 1: cp = " \t\n\r"[(r >> 8) % 4]; break;
        case 2: cp = 'a' + (uint32_t)(r >> 8) % 26; break;
        case 3: cp = 0x80 + (uint32_t)(r >> 8) % (0x800 - 0x80); break;
        case 4: cp = 0x800 + (uint32_t)(r >> 8) % (0x10000 - 0x800); break;
        default: cp = 0x10000 + (uint32_t)(r >> 8) % (0x110000 - 0x10000); break;
        }
        if ((cp >= 0xd800 && cp <= 0xdfff) || cp == '<' || cp == 0x2581 || cp == 0) cp = 'x';
        n += put_cp(out + n, cp);
    }
    out[n] = 0;
    return n;
}

static void roundtrip(const char *path, int n_iter) {
    skv_tokenizer *tok = NULL;
    REQUIRE(skv_tokenizer_load(path, &tok) == SKV_OK, "load %s: %s", path, skv_last_error());
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    char text[64 * 4 + 1];
    int fails = 0;
    for (int it = 0; it < n_iter && fails < 5; it++) {
        size_t len = random_text(&seed, text, 64);
        int32_t *ids = NULL;
        size_t n = 0;
        char *dec = NULL;
        skv_status st = skv_tokenize(tok, text, len, &ids, &n);
        if (st == SKV_OK) st = skv_detokenize(tok, ids, n, &dec, NULL);
        if (st != SKV_OK || strcmp(dec, text) != 0) {
            skv_test_fail(__FILE__, __LINE__, "%s: round trip of \"%s\" gave \"%s\"", path, show(text),
                          dec ? show(dec) : skv_last_error());
            fails++;
        }
        char *sd = st == SKV_OK ? stream_decode(tok, ids, n) : NULL;
        if (st == SKV_OK && (!sd || strcmp(sd, text) != 0)) {
            skv_test_fail(__FILE__, __LINE__, "%s: streaming round trip of \"%s\"", path, show(text));
            fails++;
        }
        free(sd);
        free(dec);
        free(ids);
    }
    skv_tokenizer_free(tok);
}

static void test_roundtrip_bytelevel(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/models/kvt-s/tokenizer.json", skv_test_shared_dir());
    roundtrip(path, 600);
    roundtrip(FIXTURE_DIR "bl_llama3.tokenizer.json", 300);
}

static void test_roundtrip_spm(void) { roundtrip(FIXTURE_DIR "spm_llama2.tokenizer.json", 600); }

/* Invalid UTF-8 input is read as from_utf8_lossy would (U+FFFD), never a crash. */
static void test_invalid_utf8_input(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/models/kvt-s/tokenizer.json", skv_test_shared_dir());
    skv_tokenizer *tok = NULL;
    REQUIRE(skv_tokenizer_load(path, &tok) == SKV_OK, "load: %s", skv_last_error());
    const char bad[] = "ab\xff\xe6\x97 c\xed\xa0\x80";
    int32_t *ids = NULL;
    size_t n = 0;
    char *dec = NULL;
    CHECK(skv_tokenize(tok, bad, sizeof bad - 1, &ids, &n) == SKV_OK);
    CHECK(skv_detokenize(tok, ids, n, &dec, NULL) == SKV_OK);
    CHECKF(dec && strcmp(dec, "ab\xef\xbf\xbd\xef\xbf\xbd c\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd") == 0,
           "lossy input decoded to \"%s\"", dec ? show(dec) : "");
    free(dec);
    free(ids);
    skv_tokenizer_free(tok);
}

/* --------------------------------------------------------------------------- streaming */

/* Push ids one by one: nothing may come out while a character is incomplete, and every output
 * must be whole characters. Returns the number of pushes that emitted nothing. */
static int stream_check(const skv_tokenizer *tok, const char *text, const char *name) {
    int32_t *ids = NULL;
    size_t n = 0;
    if (skv_tokenize(tok, text, strlen(text), &ids, &n) != SKV_OK) {
        skv_test_fail(__FILE__, __LINE__, "%s: tokenize failed", name);
        return 0;
    }
    skv_detok *d = NULL;
    CHECK(skv_detok_init(tok, &d) == SKV_OK);
    char acc[1024] = "", piece[64];
    int silent = 0;
    for (size_t i = 0; i < n; i++) {
        int r = skv_detok_push(d, ids[i], piece, sizeof piece);
        CHECKF(r >= 0, "%s: push failed", name);
        if (r == 0) silent++;
        /* every emitted piece is a sequence of complete characters */
        for (int k = 0; k < r;) {
            unsigned char c = (unsigned char)piece[k];
            int l = c < 0x80 ? 1 : c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
            CHECKF(c < 0x80 || c >= 0xc0, "%s: piece %zu starts inside a character", name, i);
            CHECKF(k + l <= r, "%s: piece %zu ends inside a character", name, i);
            k += l;
        }
        strncat(acc, piece, sizeof acc - strlen(acc) - 1);
    }
    int r = skv_detok_flush(d, piece, sizeof piece);
    CHECKF(r == 0, "%s: flush emitted %d bytes after complete text", name, r);
    char *whole = NULL;
    CHECK(skv_detokenize(tok, ids, n, &whole, NULL) == SKV_OK);
    CHECKF(whole && strcmp(acc, whole) == 0, "%s: stream \"%s\" != whole \"%s\"", name, show(acc), whole ? whole : "");
    free(whole);
    skv_detok_free(d);
    free(ids);
    return silent;
}

static void test_stream_split_chars(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/models/kvt-s/tokenizer.json", skv_test_shared_dir());
    skv_tokenizer *bl = NULL, *spm = NULL;
    REQUIRE(skv_tokenizer_load(path, &bl) == SKV_OK, "load: %s", skv_last_error());
    REQUIRE(skv_tokenizer_load(FIXTURE_DIR "spm_llama2.tokenizer.json", &spm) == SKV_OK, "load: %s",
            skv_last_error());
    /* In kvt-s, "🙂" is several byte-level tokens; in spm_llama2 emoji and CJK are byte fallback. */
    CHECK(stream_check(bl, "🙂", "kvt-s emoji") >= 1);
    CHECK(stream_check(bl, " 日本語 🙂 naïve", "kvt-s mixed") >= 1);
    /* spm: "▁" (its space stripped: silent) then byte tokens, silent until a character completes */
    CHECK(stream_check(spm, "🙂", "spm emoji") == 1 + 3);
    CHECK(stream_check(spm, "日本語", "spm cjk") == 1 + 3 * 2);
    CHECK(stream_check(spm, " a 🙂 日本 b", "spm mixed") >= 5);

    /* SPM: the leading-space Strip applies only to the first token of the stream. */
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK(skv_tokenize(spm, "Hello world", 11, &ids, &n) == SKV_OK);
    skv_detok *d = NULL;
    char out[64];
    CHECK(skv_detok_init(spm, &d) == SKV_OK);
    CHECK(skv_detok_push(d, ids[0], out, sizeof out) >= 0 && out[0] != ' ');
    char rest[256] = "";
    for (size_t i = 1; i < n; i++) {
        CHECK(skv_detok_push(d, ids[i], out, sizeof out) >= 0);
        strncat(rest, out, sizeof rest - strlen(rest) - 1);
    }
    CHECKF(strstr(rest, " world") != NULL, "later words lost their space: \"%s\"", rest);
    skv_detok_free(d);
    free(ids);

    /* An incomplete character at the end becomes U+FFFD on flush. */
    int32_t e6 = -1;
    CHECK(skv_tokenize(spm, "\xe6\x97\xa5", 3, &ids, &n) == SKV_OK && n == 4);
    if (n == 4) e6 = ids[1]; /* ids: "▁", <0xE6>, <0x97>, <0xA5> */
    free(ids);
    CHECK(skv_detok_init(spm, &d) == SKV_OK);
    CHECK(skv_detok_push(d, e6, out, sizeof out) == 0);
    CHECK(skv_detok_flush(d, out, sizeof out) == 3 && strcmp(out, "\xef\xbf\xbd") == 0);
    skv_detok_free(d);
    skv_tokenizer_free(bl);
    skv_tokenizer_free(spm);
}

static void test_out_of_range(void) {
    skv_tokenizer *tok = NULL;
    REQUIRE(skv_tokenizer_load(FIXTURE_DIR "bl_qwen2.tokenizer.json", &tok) == SKV_OK, "load: %s",
            skv_last_error());
    int32_t nv = skv_tokenizer_n_vocab(tok);
    CHECK(nv == 900);
    int32_t ids[3] = {1, nv, 2};
    char *text = (char *)1;
    CHECK(skv_detokenize(tok, ids, 3, &text, NULL) == SKV_ERR_ARG && text == NULL);
    CHECK(strstr(skv_last_error(), "out of range") != NULL);
    ids[1] = -1;
    CHECK(skv_detokenize(tok, ids, 3, &text, NULL) == SKV_ERR_ARG);
    skv_detok *d = NULL;
    char out[64];
    CHECK(skv_detok_init(tok, &d) == SKV_OK);
    CHECK(skv_detok_push(d, nv, out, sizeof out) == SKV_ERR_ARG);
    CHECK(skv_detok_push(d, -5, out, sizeof out) == SKV_ERR_ARG);
    CHECK(skv_detok_push(d, 0, out, sizeof out) >= 0);
    skv_detok_free(d);
    /* empty input: no ids, a valid (non-NULL) array */
    int32_t *none = NULL;
    size_t n = 7;
    CHECK(skv_tokenize(tok, "", 0, &none, &n) == SKV_OK && n == 0 && none != NULL);
    free(none);
    CHECK(skv_detokenize(tok, NULL, 0, &text, NULL) == SKV_OK && text && text[0] == 0);
    free(text);
    skv_tokenizer_free(tok);
}

/* ----------------------------------------------------------------------------- bad input */

static void write_file(const char *path, const char *s) {
    FILE *f = fopen(path, "wb");
    if (f) {
        fputs(s, f);
        fclose(f);
    }
}

/* Load body (a tokenizer.json text); expect status want and a message containing every needle. */
static void expect_load_error(const char *name, const char *body, skv_status want,
                              const char *needle1, const char *needle2) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", skv_test_tmpdir(), name);
    if (body) write_file(path, body);
    skv_tokenizer *tok = (skv_tokenizer *)1;
    skv_status st = skv_tokenizer_load(path, &tok);
    CHECKF(st == want, "%s: status %d, want %d (%s)", name, st, want, skv_last_error());
    if (st == SKV_OK) {
        skv_tokenizer_free(tok);
        return;
    }
    CHECKF(tok == NULL, "%s: out-pointer not cleared", name);
    const char *msg = skv_last_error();
    CHECKF(strstr(msg, name) != NULL, "%s: message does not name the file: %s", name, msg);
    CHECKF(!needle1 || strstr(msg, needle1), "%s: message lacks \"%s\": %s", name, needle1, msg);
    CHECKF(!needle2 || strstr(msg, needle2), "%s: message lacks \"%s\": %s", name, needle2, msg);
}

#define MINI_MODEL "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\"]}"

static void test_bad_input(void) {
    expect_load_error("missing.json", NULL, SKV_ERR_IO, "cannot open", NULL);
    expect_load_error("malformed.json", "{\"model\": {\"type\": \"BPE\", ", SKV_ERR_FORMAT, "JSON", NULL);
    expect_load_error("notobject.json", "[1,2]", SKV_ERR_FORMAT, "object", NULL);
    expect_load_error("nomodel.json", "{\"version\":\"1.0\"}", SKV_ERR_FORMAT, "model", NULL);
    expect_load_error("wordpiece.json",
                      "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{\"a\":0}}}", SKV_ERR_UNSUPPORTED,
                      "model.type", "WordPiece");
    expect_load_error("unigram.json", "{\"model\":{\"type\":\"Unigram\",\"vocab\":[[\"a\",0.0]]}}",
                      SKV_ERR_UNSUPPORTED, "model.type", "Unigram");
    expect_load_error("badvocab.json", "{\"model\":{\"type\":\"BPE\",\"vocab\":[1],\"merges\":[]}}",
                      SKV_ERR_FORMAT, "model.vocab", NULL);
    expect_load_error("badmerge.json",
                      "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[\"a b\"]}}",
                      SKV_ERR_FORMAT, "model.merges[0]", NULL);
    expect_load_error("badmerge2.json",
                      "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a\"]}}",
                      SKV_ERR_FORMAT, "model.merges[0]", NULL);
    expect_load_error("badpre.json", "{" MINI_MODEL ",\"pre_tokenizer\":{\"type\":\"BertPreTokenizer\"}}",
                      SKV_ERR_UNSUPPORTED, "pre_tokenizer.type", "BertPreTokenizer");
    expect_load_error("badpre2.json",
                      "{" MINI_MODEL ",\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":["
                      "{\"type\":\"ByteLevel\"},{\"type\":\"Punctuation\"}]}}",
                      SKV_ERR_UNSUPPORTED, "pre_tokenizer.pretokenizers[1].type", NULL);
    expect_load_error("badnorm.json", "{" MINI_MODEL ",\"normalizer\":{\"type\":\"Precompiled\"}}",
                      SKV_ERR_UNSUPPORTED, "normalizer.type", "Precompiled");
    expect_load_error("badregex.json",
                      "{" MINI_MODEL ",\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(a\"},"
                      "\"behavior\":\"Isolated\"}}",
                      SKV_ERR_UNSUPPORTED, "pre_tokenizer.pattern.Regex", NULL);
    expect_load_error("baddec.json", "{" MINI_MODEL ",\"decoder\":{\"type\":\"WordPiece\"}}",
                      SKV_ERR_UNSUPPORTED, "decoder.type", NULL);
    expect_load_error("badadded.json", "{" MINI_MODEL ",\"added_tokens\":[{\"id\":\"x\"}]}",
                      SKV_ERR_FORMAT, "added_tokens[0]", NULL);
    expect_load_error("badunk.json",
                      "{\"model\":{\"type\":\"BPE\",\"unk_token\":\"<unk>\",\"vocab\":{\"a\":0},\"merges\":[]}}",
                      SKV_ERR_FORMAT, "model.unk_token", NULL);
    /* and a minimal valid one loads and works */
    expect_load_error("mini.json", "{" MINI_MODEL "}", SKV_OK, NULL, NULL);
    char path[512];
    snprintf(path, sizeof path, "%s/mini.json", skv_test_tmpdir());
    skv_tokenizer *tok = NULL;
    REQUIRE(skv_tokenizer_load(path, &tok) == SKV_OK, "mini: %s", skv_last_error());
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK(skv_tokenize(tok, "abba", 4, &ids, &n) == SKV_OK && n == 3 && ids[0] == 2 && ids[1] == 1 && ids[2] == 0);
    free(ids);
    skv_tokenizer_free(tok);
    CHECK(skv_tokenizer_load(NULL, &tok) == SKV_ERR_ARG);
}

/* ------------------------------------------------------------------------------ speed */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Under valgrind everything is ~50x slower: time limits are then not checked. */
static int slow_mode(void) {
    const char *p = getenv("LD_PRELOAD");
    return (p && strstr(p, "vgpreload")) || getenv("SKV_SLOW_TESTS");
}

/* Text of about n tokens: the golden prompts and their continuations, repeated. */
static char *golden_text(size_t min_len) {
    char path[512];
    snprintf(path, sizeof path, "%s/models/kvt-s/golden.json", skv_test_shared_dir());
    cJSON *g = skv_test_load_json(path);
    if (!g) return NULL;
    size_t cap = min_len + 8192, len = 0;
    char *s = malloc(cap);
    s[0] = 0;
    while (len < min_len) {
        const cJSON *it;
        cJSON_ArrayForEach(it, cJSON_GetObjectItem(g, "prompts")) {
            const char *parts[2] = {cJSON_GetObjectItem(it, "text")->valuestring,
                                    cJSON_GetObjectItem(it, "greedy32_text")->valuestring};
            for (int k = 0; k < 2; k++) {
                size_t l = strlen(parts[k]);
                if (len + l + 2 >= cap) s = realloc(s, cap = 2 * (cap + l));
                memcpy(s + len, parts[k], l);
                len += l;
                s[len++] = '\n';
                s[len] = 0;
            }
        }
    }
    cJSON_Delete(g);
    return s;
}

static void test_speed_2000_tokens(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/models/kvt-l/tokenizer.json", skv_test_shared_dir());
    skv_tokenizer *tok = NULL;
    REQUIRE(skv_tokenizer_load(path, &tok) == SKV_OK, "load: %s", skv_last_error());
    char *text = golden_text(9000);
    REQUIRE(text, "no golden text");
    size_t len = strlen(text);
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK(skv_tokenize(tok, text, len, &ids, &n) == SKV_OK);
    free(ids);
    /* trim to about 2000 tokens */
    if (n > 2000) {
        len = len * 2000 / n;
        while (len > 0 && ((unsigned char)text[len] & 0xc0) == 0x80) len--;
        text[len] = 0;
    }
    int reps = slow_mode() ? 2 : 50;
    double best = 1e9, total = 0;
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        CHECK(skv_tokenize(tok, text, len, &ids, &n) == SKV_OK);
        double dt = now() - t0;
        total += dt;
        if (dt < best) best = dt;
        free(ids);
    }
    double t0 = now();
    char *dec = NULL;
    CHECK(skv_tokenize(tok, text, len, &ids, &n) == SKV_OK);
    CHECK(skv_detokenize(tok, ids, n, &dec, NULL) == SKV_OK && strcmp(dec, text) == 0);
    double dt_dec = now() - t0;
    free(dec);
    free(ids);
    printf("    tokenize %zu bytes -> %zu tokens: best %.3f ms, mean %.3f ms; encode+decode %.3f ms\n",
           len, n, best * 1e3, total / reps * 1e3, dt_dec * 1e3);
    CHECKF(n >= 1500 && n <= 2500, "got %zu tokens", n);
    if (!slow_mode()) CHECKF(total / reps < 0.010, "mean %.3f ms >= 10 ms", total / reps * 1e3);
    free(text);
    skv_tokenizer_free(tok);
}

/* A 100 KB text with no pre-tokenizer is one BPE word: the heap merge keeps it fast. */
static void test_speed_spm_100k(void) {
    skv_tokenizer *tok = NULL;
    REQUIRE(skv_tokenizer_load(FIXTURE_DIR "spm_llama2.tokenizer.json", &tok) == SKV_OK, "load: %s",
            skv_last_error());
    char *text = golden_text(100000);
    REQUIRE(text, "no golden text");
    /* the golden text contains "<|endoftext|>", which is no token here: fine */
    size_t len = strlen(text);
    int32_t *ids = NULL;
    size_t n = 0;
    double t0 = now();
    CHECK(skv_tokenize(tok, text, len, &ids, &n) == SKV_OK);
    double dt = now() - t0;
    char *dec = NULL;
    CHECK(skv_detokenize(tok, ids, n, &dec, NULL) == SKV_OK && strcmp(dec, text) == 0);
    printf("    spm: %zu bytes as one BPE word -> %zu tokens in %.1f ms\n", len, n, dt * 1e3);
    CHECKF(n > 10000 && n < len, "odd token count %zu", n);
    if (!slow_mode()) CHECKF(dt < 0.5, "100 KB took %.1f ms", dt * 1e3);
    free(dec);
    free(ids);
    free(text);
    skv_tokenizer_free(tok);
}

/* ------------------------------------------------------------------------- thread safety */

typedef struct {
    const skv_tokenizer *tok;
    const char *text;
    const int32_t *want;
    size_t n_want;
    int ok;
} thread_job;

static void *thread_main(void *arg) {
    thread_job *j = arg;
    j->ok = 1;
    for (int r = 0; r < 20; r++) {
        int32_t *ids = NULL;
        size_t n = 0, at;
        if (skv_tokenize(j->tok, j->text, strlen(j->text), &ids, &n) != SKV_OK ||
            !same_ids(ids, n, j->want, j->n_want, &at))
            j->ok = 0;
        free(ids);
    }
    return NULL;
}

static void test_threads(void) {
    char path[512];
    snprintf(path, sizeof path, "%s/models/kvt-s/tokenizer.json", skv_test_shared_dir());
    skv_tokenizer *tok = NULL;
    REQUIRE(skv_tokenizer_load(path, &tok) == SKV_OK, "load: %s", skv_last_error());
    char *text = golden_text(4000);
    int32_t *want = NULL;
    size_t n = 0;
    CHECK(skv_tokenize(tok, text, strlen(text), &want, &n) == SKV_OK);
    thread_job jobs[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (thread_job){tok, text, want, n, 0};
        pthread_create(&th[i], NULL, thread_main, &jobs[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CHECKF(jobs[i].ok, "thread %d got different ids", i);
    }
    free(want);
    free(text);
    skv_tokenizer_free(tok);
}

void register_tokenizer(void) {
    skv_test_add("tokenizer/golden_kvt_s", test_golden_kvt_s);
    skv_test_add("tokenizer/golden_kvt_l", test_golden_kvt_l);
    skv_test_add("tokenizer/fixtures", test_fixtures);
    skv_test_add("tokenizer/roundtrip_bytelevel", test_roundtrip_bytelevel);
    skv_test_add("tokenizer/roundtrip_spm", test_roundtrip_spm);
    skv_test_add("tokenizer/invalid_utf8_input", test_invalid_utf8_input);
    skv_test_add("tokenizer/stream_split_chars", test_stream_split_chars);
    skv_test_add("tokenizer/out_of_range", test_out_of_range);
    skv_test_add("tokenizer/bad_input", test_bad_input);
    skv_test_add("tokenizer/speed_2000_tokens", test_speed_2000_tokens);
    skv_test_add("tokenizer/speed_spm_100k", test_speed_spm_100k);
    skv_test_add("tokenizer/threads", test_threads);
}
