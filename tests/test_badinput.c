/*
 * test_badinput.c — bad input gets a clear error naming the file, field or flag and a non-zero
 * exit, never a crash: model directories damaged in each way the loader checks, and CLI misuse.
 */
#include "harness.h"
#include "slimkv.h"
#include "tiny_model.h"

#include <sys/stat.h>
#include <unistd.h>

/* A fresh copy of a valid tiny Llama model in tmp/<name>. */
static tiny_model *fresh(const char *name, char *dir, size_t cap, int sharded) {
    snprintf(dir, cap, "%s/%s", skv_test_tmpdir(), name);
    tiny_spec s = {.arch = "LlamaForCausalLM", .dtype = "BF16", .vocab = 50, .dim = 32, .ffn = 48,
                   .layers = 2, .heads = 2, .kv_heads = 1, .n_ctx = 32, .rope_theta = 10000.0f,
                   .rms_eps = 1e-5f, .sharded = sharded, .seed = 3};
    return tiny_write(dir, &s);
}

/* Load must fail with status st and a message containing each of the needles. */
static void expect_load_error(const char *what, const char *dir, skv_status want, const char *n1,
                              const char *n2) {
    skv_model *m = NULL;
    skv_status st = skv_model_load(dir, skv_model_default_params(), &m);
    CHECKF(st == want, "%s: status %d (%s), want %d; message: %s", what, st, skv_strerror(st), want,
           skv_last_error());
    CHECKF(m == NULL, "%s: model handle set on failure", what);
    if (n1) CHECKF(strstr(skv_last_error(), n1), "%s: message lacks '%s': %s", what, n1, skv_last_error());
    if (n2) CHECKF(strstr(skv_last_error(), n2), "%s: message lacks '%s': %s", what, n2, skv_last_error());
    skv_model_free(m);
}

static void sh(const char *cmd) {
    char *err = NULL;
    int rc = skv_test_sh(cmd, NULL, &err);
    CHECKF(rc == 0, "setup command failed (%d): %s: %s", rc, cmd, err);
    free(err);
}

/* Replace `from` by `to` in dir/config.json (first occurrence). */
static void edit_config(const char *dir, const char *from, const char *to) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "sed -i 's|%s|%s|' '%s/config.json'", from, to, dir);
    sh(cmd);
}

static void test_model_dirs(void) {
    char dir[512], cmd[2048];
    tiny_model *t;

    expect_load_error("nonexistent dir", "/nonexistent/model", SKV_ERR_IO, "/nonexistent/model/config.json", NULL);

    REQUIRE((t = fresh("noconfig", dir, sizeof dir, 0)), "setup");
    snprintf(cmd, sizeof cmd, "rm '%s/config.json'", dir);
    sh(cmd);
    expect_load_error("missing config", dir, SKV_ERR_IO, "config.json", "cannot open");
    tiny_free(t);

    REQUIRE((t = fresh("badjson", dir, sizeof dir, 0)), "setup");
    snprintf(cmd, sizeof cmd, "printf '{\"architectures\": [' > '%s/config.json'", dir);
    sh(cmd);
    expect_load_error("malformed config", dir, SKV_ERR_FORMAT, "config.json", "invalid JSON");
    tiny_free(t);

    REQUIRE((t = fresh("arch", dir, sizeof dir, 0)), "setup");
    edit_config(dir, "LlamaForCausalLM", "GPT2LMHeadModel");
    expect_load_error("unknown architecture", dir, SKV_ERR_UNSUPPORTED, "GPT2LMHeadModel", "config.json");
    tiny_free(t);

    REQUIRE((t = fresh("rope", dir, sizeof dir, 0)), "setup");
    edit_config(dir, "\"rope_theta\"", "\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4}, \"rope_theta\"");
    expect_load_error("unsupported rope scaling", dir, SKV_ERR_UNSUPPORTED, "yarn", "rope_type");
    tiny_free(t);

    REQUIRE((t = fresh("fieldtype", dir, sizeof dir, 0)), "setup");
    edit_config(dir, "\"hidden_size\": 32", "\"hidden_size\": \"32\"");
    expect_load_error("string hidden_size", dir, SKV_ERR_FORMAT, "hidden_size", "integer");
    tiny_free(t);

    REQUIRE((t = fresh("heads", dir, sizeof dir, 0)), "setup");
    edit_config(dir, "\"num_key_value_heads\": 1", "\"num_key_value_heads\": 3");
    expect_load_error("heads not a multiple", dir, SKV_ERR_FORMAT, "num_key_value_heads", NULL);
    tiny_free(t);

    REQUIRE((t = fresh("shape", dir, sizeof dir, 0)), "setup");
    edit_config(dir, "\"intermediate_size\": 48", "\"intermediate_size\": 40");
    expect_load_error("wrong shape", dir, SKV_ERR_SHAPE, "mlp.gate_proj.weight", "[48, 32]");
    tiny_free(t);

    REQUIRE((t = fresh("truncated", dir, sizeof dir, 0)), "setup");
    snprintf(cmd, sizeof cmd, "truncate -s -1000 '%s/model.safetensors'", dir);
    sh(cmd);
    expect_load_error("truncated safetensors", dir, SKV_ERR_FORMAT, "model.safetensors", "past the end");
    tiny_free(t);

    REQUIRE((t = fresh("header", dir, sizeof dir, 0)), "setup");
    snprintf(cmd, sizeof cmd, "printf '\\377\\377\\377\\377\\377\\377\\0\\0' | dd of='%s/model.safetensors' conv=notrunc 2>/dev/null", dir);
    sh(cmd);
    expect_load_error("corrupt header length", dir, SKV_ERR_FORMAT, "model.safetensors", "header length");
    tiny_free(t);

    REQUIRE((t = fresh("headerjson", dir, sizeof dir, 0)), "setup");
    snprintf(cmd, sizeof cmd, "printf 'XXXX' | dd of='%s/model.safetensors' bs=1 seek=8 conv=notrunc 2>/dev/null", dir);
    sh(cmd);
    expect_load_error("corrupt header JSON", dir, SKV_ERR_FORMAT, "model.safetensors", "not valid JSON");
    tiny_free(t);

    REQUIRE((t = fresh("tiny", dir, sizeof dir, 0)), "setup");
    snprintf(cmd, sizeof cmd, "truncate -s 5 '%s/model.safetensors'", dir);
    sh(cmd);
    expect_load_error("5-byte safetensors", dir, SKV_ERR_FORMAT, "too short", NULL);
    tiny_free(t);

    REQUIRE((t = fresh("noweights", dir, sizeof dir, 0)), "setup");
    snprintf(cmd, sizeof cmd, "rm '%s/model.safetensors'", dir);
    sh(cmd);
    expect_load_error("no weights", dir, SKV_ERR_IO, "model.safetensors", NULL);
    tiny_free(t);

    REQUIRE((t = fresh("shardmissing", dir, sizeof dir, 1)), "setup");
    snprintf(cmd, sizeof cmd, "rm '%s/model-00002-of-00002.safetensors'", dir);
    sh(cmd);
    expect_load_error("missing shard", dir, SKV_ERR_IO, "model-00002-of-00002.safetensors", "missing");
    tiny_free(t);

    REQUIRE((t = fresh("shardmismatch", dir, sizeof dir, 1)), "setup");
    snprintf(cmd, sizeof cmd, "sed -i '0,/-00001-/s//-00002-/' '%s/model.safetensors.index.json'", dir);
    sh(cmd);
    expect_load_error("shard does not match index", dir, SKV_ERR_FORMAT, "does not match", "model.safetensors.index.json");
    tiny_free(t);

    REQUIRE((t = fresh("shardswap", dir, sizeof dir, 1)), "setup");
    snprintf(cmd, sizeof cmd, "cd '%s' && mv model-00001-of-00002.safetensors x && cp model-00002-of-00002.safetensors model-00001-of-00002.safetensors", dir);
    sh(cmd);
    expect_load_error("shard replaced by another", dir, SKV_ERR_FORMAT, "model.safetensors.index.json", NULL);
    tiny_free(t);
}

/* Tensors written by hand: wrong dtype, missing tensor, overlapping offsets. */
static void test_handmade_tensors(void) {
    char dir[512], path[600];
    tiny_model *t;
    float buf[32 * 50];
    memset(buf, 0, sizeof buf);

    REQUIRE((t = fresh("dtype", dir, sizeof dir, 0)), "setup");
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    tw_tensor bad[] = {{"model.embed_tokens.weight", "I32", 2, {50, 32}, buf, sizeof buf}};
    CHECK(tw_write(path, bad, 1) == 0);
    expect_load_error("I32 tensor", dir, SKV_ERR_UNSUPPORTED, "dtype I32", "model.embed_tokens.weight");
    tiny_free(t);

    REQUIRE((t = fresh("missingtensor", dir, sizeof dir, 0)), "setup");
    tw_tensor only[] = {{"model.embed_tokens.weight", "F32", 2, {50, 32}, buf, sizeof buf}};
    CHECK(tw_write(path, only, 1) == 0);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK(tw_write(path, only, 1) == 0);
    expect_load_error("missing tensor", dir, SKV_ERR_FORMAT, "model.norm.weight", "missing");
    tiny_free(t);

    REQUIRE((t = fresh("spanmismatch", dir, sizeof dir, 0)), "setup");
    tw_tensor wrongsize[] = {{"model.embed_tokens.weight", "BF16", 2, {50, 32}, buf, sizeof buf}};
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK(tw_write(path, wrongsize, 1) == 0); /* f32-sized bytes declared as bf16 */
    expect_load_error("offsets vs shape", dir, SKV_ERR_FORMAT, "data_offsets span", NULL);
    tiny_free(t);
}

/* ------------------------------------------------------------------------------------------ */

typedef struct cli_case {
    const char *args;   /* after the CLI binary; MODEL expands to models/kvt-s */
    int code;           /* expected exit status */
    const char *needle; /* must appear in stderr */
} cli_case;

static void test_cli(void) {
    const char *cli = skv_test_cli();
    REQUIRE(access(cli, X_OK) == 0, "CLI binary %s not built", cli);
    char longp[600];
    snprintf(longp, sizeof longp, "%s/long.txt", skv_test_tmpdir());
    FILE *f = fopen(longp, "w");
    for (int i = 0; i < 3000; i++) fprintf(f, "word%d ", i);
    fclose(f);
    char c_long_run[1024], c_long_logits[1024];
    snprintf(c_long_run, sizeof c_long_run, "run -m MODEL -f %s -n 4", longp);
    snprintf(c_long_logits, sizeof c_long_logits, "logits -m MODEL -f %s", longp);
    const int cuda_code = skv_backend_available(SKV_BACKEND_CUDA) ? 2 : 1;
    const cli_case cases[] = {
        {"", 2, "usage"},
        {"frobnicate", 2, "unknown command 'frobnicate'"},
        {"run -m MODEL -p hi --frob", 2, "unknown flag '--frob'"},
        {"run -m MODEL -p hi -n abc", 2, "bad value for -n: 'abc'"},
        {"run -m MODEL -p hi --temp=x", 2, "bad value for --temp"},
        /* sampler values out of range are usage errors (the README's exit 2), naming the flag */
        {"run -m MODEL -p hi --top-p 1.5", 2, "bad value for --top-p: 1.5"},
        {"run -m MODEL -p hi --temp -1", 2, "bad value for --temp: -1"},
        {"run -m MODEL -p hi --top-k -1", 2, "bad value for --top-k: -1"},
        {"run -m MODEL -p hi --repeat-penalty -1", 2, "bad value for --repeat-penalty: -1"},
        {"run -m MODEL -p hi --policy h2o --budget -1", 2, "bad value for --budget: -1"},
        {"run -m MODEL -p hi -n", 2, "-n needs a value"},
        {"run -m MODEL -p hi stray", 2, "unexpected argument 'stray'"},
        {"run -m MODEL -p ''", 2, "empty"},
        {"run -p hi", 2, "no model"},
        {"run -m /nonexistent -p hi", 1, "/nonexistent/"},
        {"run -m MODEL -p hi --ctx 99999", 1, "exceeds"},
        {"run -m MODEL -p 'one two three four five six seven' --ctx 4", 1, "context"},
        {c_long_run, 1, "context holds 2048"},
        {c_long_logits, 1, "exceed the context"},
        {"logits -m MODEL -p hi --top 0", 2, "--top"},
        {"tokenize -m MODEL -p hi -f x", 2, "not both"},
        {"ppl -m MODEL -f /nonexistent.txt", 1, "/nonexistent.txt"},
        {"ppl -m MODEL", 2, "no corpus"},
        {"bench -m MODEL --reps 0", 2, "--reps"},
        {"run -m MODEL -p hi --policy smallkv", 2, "--draft"},
        {"run -m MODEL -p hi --policy smallkv --draft MODEL --sk-score maybe", 2, "--sk-score"},
        {"run -m MODEL -p hi --policy smallkv --draft MODEL --sk-match x", 2, "--sk-match"},
        {"run -m MODEL -p hi --policy smallkv --draft MODEL --sk-split 2:0:2", 2, "--sk-split"},
        {"run -m MODEL -p hi --policy smallkv --draft MODEL --sk-split 2:1", 2, "--sk-split"},
        {"run -m MODEL -p hi --policy smallkv --draft MODEL --sk-score window --pool 4", 2, "--pool"},
        {"run -m MODEL -p hi --policy smallkv --draft /nonexistent", 1, "/nonexistent/"},
        {"ppl -m MODEL -f /dev/null --policy smallkv --draft MODEL --sk-prompt -3", 2, "--sk-prompt"},
        {"run -m MODEL -p hi --backend gpu", 2, "--backend"},
        {"logits -m MODEL -p hi --backend tpu", 2, "--backend"},
        /* without a usable GPU the backend is refused (1); with one, the policy (2) */
        {"bench -m MODEL --backend cuda --policy h2o", cuda_code, "--backend cuda"},
        {"mkmodel --shape gpt5 -o /tmp/x", 2, "--shape"},
        {"mkmodel --shape llama3-8b", 2, "-o DIR"},
        {"bench -m MODEL --depths 1,x", 2, "--depths"},
        {"bench -m MODEL --batch-invariant", 2, "--batch-invariant"},
        {"bench -m MODEL --max-batch 0", 2, "--max-batch"},
        {"bench -m MODEL --tg -3", 2, "--tg"},
        {"skmatch -m MODEL --tasks /dev/null", 2, "--draft"},
        {"skmatch -m MODEL --draft MODEL --tasks /dev/null --k-fracs 0.1,2", 2, "--k-fracs"},
        {"skmatch -m MODEL --draft MODEL --tasks /nonexistent.jsonl", 1, "/nonexistent.jsonl"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char args[1200], cmd[2048];
        /* every MODEL becomes the shipped model */
        args[0] = 0;
        for (const char *a = cases[i].args, *p; *a;) {
            p = strstr(a, "MODEL");
            size_t k = strlen(args);
            if (!p) {
                snprintf(args + k, sizeof args - k, "%s", a);
                break;
            }
            snprintf(args + k, sizeof args - k, "%.*smodels/kvt-s", (int)(p - a), a);
            a = p + 5;
        }
        snprintf(cmd, sizeof cmd, "%s %s </dev/null", cli, args);
        char *err = NULL, *out = NULL;
        int rc = skv_test_sh(cmd, &out, &err);
        CHECKF(rc == cases[i].code, "'%s': exit %d, want %d (stderr: %s)", args, rc, cases[i].code, err);
        CHECKF(strstr(err, cases[i].needle), "'%s': stderr lacks '%s': %s", args, cases[i].needle, err);
        /* one line, unless it is a usage text */
        if (strcmp(cases[i].needle, "usage") && !strstr(cases[i].needle, "unknown command")) {
            char *nl = strchr(err, '\n');
            CHECKF(nl && nl[1] == 0, "'%s': error is not exactly one line: %s", args, err);
        }
        free(err);
        free(out);
    }
}

void register_badinput(void) {
    skv_test_add("badinput/damaged model directories", test_model_dirs);
    skv_test_add("badinput/hand-made safetensors", test_handmade_tensors);
    skv_test_add("badinput/cli misuse", test_cli);
}
