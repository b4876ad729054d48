/*
 * test_robust.c — regressions of issue 18 (found by trying slimkv as a new user): each case is
 * the reported command or input, made small, with the behaviour it must have now.
 */
#include "harness.h"
#include "io/safetensors.h"
#include "kv/cache.h"
#include "tiny_model.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

/* The CLI as an absolute path and the repository root (tests run from it), for commands that
 * run in another directory. */
static void paths(char *cli, size_t cli_cap, char *root, size_t root_cap) {
    if (!getcwd(root, root_cap)) root[0] = 0;
    const char *c = skv_test_cli();
    if (c[0] == '/') snprintf(cli, cli_cap, "%s", c);
    else snprintf(cli, cli_cap, "%s/%s", root, c);
}

/* Runs cmd; checks its exit status and that stderr holds needle (if any). */
static void expect_cli(const char *cmd, int code, const char *needle) {
    char *err = NULL;
    int rc = skv_test_sh(cmd, NULL, &err);
    CHECKF(rc == code, "'%s': exit %d, want %d: %s", cmd, rc, code, err);
    if (needle) CHECKF(err && strstr(err, needle), "'%s': stderr lacks '%s': %s", cmd, needle, err);
    free(err);
}

static int file_exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0;
}

/* sweep with 7 policies x 17 budgets (72 configurations): was a stack buffer overflow of the
 * configuration array (16-entry lists, 64 configurations, cut silently otherwise). Run in an
 * empty directory holding a decoy bench/sweep-kvt-s/sweep.csv: the default output is a new
 * results/ folder and the decoy is untouched. */
static void test_sweep_many_configs(void) {
    char cli[1024], root[1024], dir[1100], cmd[8192];
    paths(cli, sizeof cli, root, sizeof root);
    snprintf(dir, sizeof dir, "%s/sweepcwd", skv_test_tmpdir());
    snprintf(cmd, sizeof cmd, "mkdir -p %s/bench/sweep-kvt-s && printf 'decoy\\n' > %s/bench/sweep-kvt-s/sweep.csv && "
             "printf '%%s\\n' '{\"task\": \"passkey\", \"context\": \"The pass key is 41592. Remember it. The pass key "
             "is\", \"answer\": \" 41592\"}' > %s/t.jsonl", dir, dir, dir);
    REQUIRE(skv_test_sh(cmd, NULL, NULL) == 0, "setup: %s", cmd);
    snprintf(cmd, sizeof cmd, "cd %s && %s sweep -m %s/models/kvt-s --tasks t.jsonl -q -t 1 "
             "--policies window,h2o,snapkv,pyramidkv,quant8,quant4,quant --budgets "
             "0.01,0.02,0.03,0.04,0.05,0.06,0.07,0.08,0.09,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8", dir, cli, root);
    char *out = NULL, *err = NULL;
    int rc = skv_test_sh(cmd, &out, &err);
    CHECKF(rc == 0, "sweep: exit %d: %s", rc, err);
    /* full + 4 eviction policies x 17 budgets + 3 quant rows */
    CHECKF(strstr(out, "1 rows x 72 configurations"), "sweep output: %s", out);
    free(out);
    free(err);
    char *csv = NULL;
    snprintf(cmd, sizeof cmd, "cat %s/results/sweep-kvt-s-*/sweep.csv | wc -l; cat %s/bench/sweep-kvt-s/sweep.csv", dir, dir);
    skv_test_sh(cmd, &csv, NULL);
    CHECKF(csv && !strncmp(csv, "73\ndecoy\n", 9), "results/sweep-kvt-s-*/sweep.csv lines, then the decoy: %s", csv);
    free(csv);
}

/* run -n 2147483647: an int overflow of the generation length, then writes through an unchecked
 * allocation. Now the buffer is sized by the context: with --ctx 64 and a 1-token prompt, 64
 * tokens at most. */
static void test_run_huge_n(void) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s run -m models/kvt-s -p Hello -n 2147483647 --ignore-eos -c 64 --json --temp 0",
             skv_test_cli());
    char *out = NULL, *err = NULL;
    int rc = skv_test_sh(cmd, &out, &err);
    CHECKF(rc == 0, "exit %d: %s", rc, err);
    cJSON *j = cJSON_Parse(out);
    const cJSON *ids = j ? cJSON_GetObjectItem(j, "ids") : NULL;
    /* a P-token prompt leaves 64 - P positions, and one more token is sampled from the last
     * logits */
    const char *pr = strstr(err, "prompt ");
    const int P = pr ? atoi(pr + 7) : 0;
    CHECKF(P > 0 && cJSON_GetArraySize(ids) == 64 - P + 1, "ids: %d after a %d-token prompt, output %s",
           cJSON_GetArraySize(ids), P, out);
    CHECKF(strstr(err, "context of 64 tokens is full"), "stderr: %s", err);
    cJSON_Delete(j);
    free(out);
    free(err);
}

/* max_position_embeddings = 2147483647: a signed overflow in the KV cache, then "KV cache: out
 * of memory" without the field. The cache computes in 64 bits and refuses; the context refuses
 * first, naming the field; a shorter --ctx still runs. */
static void test_huge_context(void) {
    skv_cache c;
    CHECK(skv_cache_init(&c, 4, 1, 64, INT32_MAX, SKV_KV_F32) != SKV_OK);
    CHECKF(strstr(skv_last_error(), "2147483647"), "message: %s", skv_last_error());
    char root[1024], dir[1100], cmd[8192];
    if (!getcwd(root, sizeof root)) root[0] = 0;
    snprintf(dir, sizeof dir, "%s/bigctx", skv_test_tmpdir());
    snprintf(cmd, sizeof cmd, "mkdir -p %s && ln -sf %s/models/kvt-s/model.safetensors %s/models/kvt-s/tokenizer.json %s/ && "
             "sed 's/\"max_position_embeddings\": [0-9]*/\"max_position_embeddings\": 2147483647/' "
             "%s/models/kvt-s/config.json > %s/config.json && grep -q 2147483647 %s/config.json",
             dir, root, root, dir, root, dir, dir);
    REQUIRE(skv_test_sh(cmd, NULL, NULL) == 0, "setup: %s", cmd);
    snprintf(cmd, sizeof cmd, "%s run -m %s -p Hello -n 2", skv_test_cli(), dir);
    expect_cli(cmd, 1, "max_position_embeddings");
    snprintf(cmd, sizeof cmd, "%s run -m %s -p Hello -n 2 -c 64", skv_test_cli(), dir);
    expect_cli(cmd, 0, NULL);
}

/* data_offsets fractional or huge: converting them was undefined (a fuzzer found it); 0.5 was
 * accepted and 1e300 reported "span 0 bytes". */
static int parse_header(const char *hdr, size_t data_bytes) {
    size_t h = strlen(hdr), n = 8 + h + data_bytes;
    uint8_t *buf = calloc(1, n);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)((uint64_t)h >> (8 * i));
    memcpy(buf + 8, hdr, h);
    skv_st_set *s = NULL;
    skv_status st = skv_st_parse_buffer(buf, n, "t.safetensors", &s);
    skv_st_close(s);
    free(buf);
    return st;
}

static void test_data_offsets(void) {
    CHECK(parse_header("{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", 16) == SKV_OK);
    const char *bad[] = {
        "{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0.5, 8.5]}}",
        "{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 1e300]}}",
        "{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [1e300, 1e300]}}",
        "{\"w\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [-0.5, 0]}}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECKF(parse_header(bad[i], 16) == SKV_ERR_FORMAT, "accepted: %s", bad[i]);
        CHECKF(strstr(skv_last_error(), "bad data_offsets") && strstr(skv_last_error(), "\"w\""), "%s: %s", bad[i],
               skv_last_error());
    }
}

/* A NaN inside a weight matrix was accepted (run printed end-of-text, logits a bare nan); it is
 * refused like one in a norm vector, naming the tensor; --no-check loads it, and logits then
 * prints valid JSON. */
static void test_nan_weight(void) {
    char dir[512], path[600], cmd[2048];
    snprintf(dir, sizeof dir, "%s/nanweight", skv_test_tmpdir());
    snprintf(cmd, sizeof cmd, "mkdir -p %s && cp models/kvt-s/config.json models/kvt-s/tokenizer.json "
             "models/kvt-s/model.safetensors %s/", dir, dir);
    REQUIRE(skv_test_sh(cmd, NULL, NULL) == 0, "setup: %s", cmd);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    /* a NaN (bf16 0x7fc0) into element 5 of layer 1's up projection */
    FILE *f = fopen(path, "r+b");
    REQUIRE(f, "open %s", path);
    uint8_t len8[8];
    REQUIRE(fread(len8, 1, 8, f) == 8, "read");
    uint64_t h = 0;
    for (int i = 0; i < 8; i++) h |= (uint64_t)len8[i] << (8 * i);
    char *hdr = calloc(1, h + 1);
    REQUIRE(fread(hdr, 1, h, f) == h, "read header");
    cJSON *j = cJSON_Parse(hdr);
    const cJSON *e = cJSON_GetObjectItem(j, "model.layers.1.mlp.up_proj.weight");
    REQUIRE(e && !strcmp(cJSON_GetObjectItem(e, "dtype")->valuestring, "BF16"), "tensor missing in %s", hdr);
    long at = 8 + (long)h + (long)cJSON_GetArrayItem(cJSON_GetObjectItem(e, "data_offsets"), 0)->valuedouble + 5 * 2;
    cJSON_Delete(j);
    free(hdr);
    const uint8_t nan_bf16[2] = {0xc0, 0x7f};
    fseek(f, at, SEEK_SET);
    fwrite(nan_bf16, 1, 2, f);
    fclose(f);

    skv_model *m = NULL;
    skv_model_params mp = skv_model_default_params();
    CHECK(skv_model_load(dir, mp, &m) == SKV_ERR_FORMAT && !m);
    CHECKF(strstr(skv_last_error(), "model.layers.1.mlp.up_proj.weight") && strstr(skv_last_error(), "non-finite") &&
           strstr(skv_last_error(), "element 5"), "message: %s", skv_last_error());
    mp.no_check = 1;
    CHECKF(skv_model_load(dir, mp, &m) == SKV_OK, "no_check: %s", skv_last_error());
    skv_model_free(m);
    snprintf(cmd, sizeof cmd, "%s run -m %s -p 'Hello world' -n 2", skv_test_cli(), dir);
    expect_cli(cmd, 1, "non-finite");
    snprintf(cmd, sizeof cmd, "%s logits -m %s -p 'Hello world' --top 3 --no-check", skv_test_cli(), dir);
    char *out = NULL, *err = NULL;
    int rc = skv_test_sh(cmd, &out, &err);
    CHECKF(rc == 0, "logits --no-check: exit %d: %s", rc, err);
    cJSON *lj = cJSON_Parse(out);
    CHECKF(lj && cJSON_GetObjectItem(lj, "top_logits"), "logits --no-check is not JSON: %s", out);
    cJSON_Delete(lj);
    free(out);
    free(err);
}

/* The smaller points: usage errors exit 2 naming the flag; -t far above the cores; --budget
 * with a policy that keeps every token; bench -o to an unwritable path fails before the run. */
static void test_cli_smaller(void) {
    char cmd[2048];
    const long cores = sysconf(_SC_NPROCESSORS_ONLN);
    const struct { const char *args; int code; const char *needle; } cases[] = {
        {"run -m models/kvt-s -p hi --temp -1", 2, "--temp"},
        {"run -m models/kvt-s -p hi --top-p 1.5", 2, "--top-p"},
        {"run -m models/kvt-s -p hi --top-k -3", 2, "--top-k"},
        {"run -m models/kvt-s -p hi --repeat-penalty 0", 2, "--repeat-penalty"},
        {"run -m models/kvt-s -p hi --repeat-last-n -1", 2, "--repeat-last-n"},
        {"run -m models/kvt-s -p hi -t 100000", 2, "--threads"},
        {"run -m models/kvt-s -p hi -n 1 --budget 0.2", 2, "--budget has no effect with --policy full (the default)"},
        {"ppl -m models/kvt-s -f README.md --policy quant --budget-tokens 50", 2, "--budget-tokens has no effect"},
        {"sweep -m models/kvt-s --tasks README.md --budget 0.1", 2, "--budgets LIST"},
        {"bench -m models/kvt-s -o /nonexistent/dir/x.json", 1, "/nonexistent/dir/x.json"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(cmd, sizeof cmd, "%s %s </dev/null", skv_test_cli(), cases[i].args);
        double t0 = skv_time_now();
        expect_cli(cmd, cases[i].code, cases[i].needle);
        CHECKF(skv_time_now() - t0 < 20, "'%s' took %.0f s: not refused up front", cases[i].args, skv_time_now() - t0);
    }
    /* more threads than cores, within 4x: a warning, and it runs */
    snprintf(cmd, sizeof cmd, "%s run -m models/kvt-s -p hi -n 1 -t %ld", skv_test_cli(), cores + 1);
    expect_cli(cmd, 0, "warning: --threads");
}

/* Every docs/... file the help texts point to exists in the repository. */
static void test_help_docs(void) {
    const char *cmds[] = {"--help", "ppl --help", "eval --help", "sweep --help", "bench --help"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        char cmd[1024], *out = NULL;
        snprintf(cmd, sizeof cmd, "%s %s", skv_test_cli(), cmds[i]);
        skv_test_sh(cmd, &out, NULL);
        for (const char *p = out; p && (p = strstr(p, "docs/")); p += 5) {
            char doc[256];
            size_t n = strcspn(p, " )\n,;");
            snprintf(doc, sizeof doc, "%.*s", (int)(n < 200 ? n : 200), p);
            CHECKF(file_exists(doc), "'slimkv %s' points to %s, which is not in the repository", cmds[i], doc);
        }
        free(out);
    }
    CHECK(file_exists("docs/evaluation.md"));
}

/* ppl reports the standard error, as llama-perplexity: ppl_se = ppl * nll_se, and nll_se is
 * the standard error of the per-token NLLs (checked against their spread: for 127 tokens of
 * one window it must lie well inside (0, nll)). */
static void test_ppl_se(void) {
    char cmd[2048], *out = NULL, *err = NULL;
    snprintf(cmd, sizeof cmd, "%s ppl -m models/kvt-s -f %s/data/corpus.val.txt.xz --ctx 128 -w 2", skv_test_cli(),
             skv_test_shared_dir());
    int rc = skv_test_sh(cmd, &out, &err);
    CHECKF(rc == 0, "exit %d: %s", rc, err);
    cJSON *j = cJSON_Parse(out);
    const cJSON *ppl = cJSON_GetObjectItem(j, "ppl"), *pse = cJSON_GetObjectItem(j, "ppl_se"),
                *nll = cJSON_GetObjectItem(j, "nll"), *nse = cJSON_GetObjectItem(j, "nll_se");
    REQUIRE(cJSON_IsNumber(ppl) && cJSON_IsNumber(pse) && cJSON_IsNumber(nll) && cJSON_IsNumber(nse), "output: %s", out);
    CHECKF(nse->valuedouble > 0.01 && nse->valuedouble < nll->valuedouble, "nll_se %g, nll %g", nse->valuedouble,
           nll->valuedouble);
    CHECKF(fabs(pse->valuedouble - ppl->valuedouble * nse->valuedouble) < 1e-4 * ppl->valuedouble + 2e-6,
           "ppl_se %g != ppl %g * nll_se %g", pse->valuedouble, ppl->valuedouble, nse->valuedouble);
    char want[64];
    snprintf(want, sizeof want, "PPL = %.4f +/- %.5f", ppl->valuedouble, pse->valuedouble);
    CHECKF(strstr(err, want), "stderr lacks '%s': %s", want, err);
    cJSON_Delete(j);
    free(out);
    free(err);
}

/* bench without -o writes into a new results/ folder, not bench/ (run where bench/ holds a
 * decoy of the default name). */
static void test_bench_default_out(void) {
    char cli[1024], root[1024], dir[1100], cmd[8192];
    paths(cli, sizeof cli, root, sizeof root);
    snprintf(dir, sizeof dir, "%s/benchcwd", skv_test_tmpdir());
    snprintf(cmd, sizeof cmd, "mkdir -p %s/bench && printf decoy > %s/bench/cpu-kvt-s-t1.json && cd %s && "
             "%s bench -m %s/models/kvt-s -t 1 --pp 16 --tg 0 -r 1 > out.txt 2>&1 && ls results/bench-kvt-s-*/cpu-kvt-s-t1.json "
             "&& cat bench/cpu-kvt-s-t1.json", dir, dir, dir, cli, root);
    char *out = NULL;
    int rc = skv_test_sh(cmd, &out, NULL);
    CHECKF(rc == 0 && strstr(out, "cpu-kvt-s-t1.json\ndecoy"), "exit %d: %s", rc, out);
    free(out);
}

/* make install PREFIX=tmp gives a prefix against which examples/embed.c compiles, links and
 * runs with nothing but pkg-config's flags (no -I into the repository). The asan run passes its
 * build settings in SKV_MAKE_ARGS. */
static void test_install_pkgconfig(void) {
    char prefix[512], cmd[4096];
    snprintf(prefix, sizeof prefix, "%s/prefix", skv_test_tmpdir());
    const char *margs = getenv("SKV_MAKE_ARGS");
    snprintf(cmd, sizeof cmd, "env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s --no-print-directory install PREFIX=%s %s && "
             "test -f %s/lib/pkgconfig/slimkv.pc && test -f %s/include/slimkv.h && test -x %s/bin/slimkv && "
             "cc -std=c11 -o %s/embed examples/embed.c $(PKG_CONFIG_PATH=%s/lib/pkgconfig pkg-config --cflags --libs slimkv) && "
             "%s/embed models/kvt-s Hello 4", prefix, margs ? margs : "", prefix, prefix, prefix, prefix, prefix, prefix);
    char *out = NULL, *err = NULL;
    int rc = skv_test_sh(cmd, &out, &err);
    CHECKF(rc == 0, "exit %d: %s\n%s", rc, out, err);
    CHECKF(out && !strncmp(out, "Hello", 5) && strlen(out) > 7, "embed printed: %s", out);
    CHECKF(err && strstr(err, "embed: slimkv "), "embed's stderr: %s", err);
    free(out);
    free(err);
    /* bad input: a clear error and exit 1 */
    snprintf(cmd, sizeof cmd, "%s/embed /nonexistent", prefix);
    err = NULL;
    rc = skv_test_sh(cmd, NULL, &err);
    CHECKF(rc == 1 && strstr(err, "/nonexistent"), "exit %d: %s", rc, err);
    free(err);
}

void register_robust(void) {
    skv_test_add("robust/make install PREFIX=tmp; examples/embed.c built with pkg-config", test_install_pkgconfig);
    skv_test_add("robust/sweep with 17 budgets x 7 policies; default output in results/, not bench/", test_sweep_many_configs);
    skv_test_add("robust/run -n 2147483647", test_run_huge_n);
    skv_test_add("robust/max_position_embeddings 2147483647", test_huge_context);
    skv_test_add("robust/safetensors data_offsets fractional or huge", test_data_offsets);
    skv_test_add("robust/NaN in a weight matrix refused; --no-check; logits JSON", test_nan_weight);
    skv_test_add("robust/usage errors: sampler, threads, --budget with full, bench -o", test_cli_smaller);
    skv_test_add("robust/help texts point to docs in the repository", test_help_docs);
    skv_test_add("robust/ppl standard error", test_ppl_se);
    skv_test_add("robust/bench default output in results/, not bench/", test_bench_default_out);
}
