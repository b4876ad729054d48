/*
 * test_chat.c — chat templates (tokenizer/chat.c, model/model_chat.c): every family against
 * renderings of the real templates by Jinja2 (tests/data/chat/golden.json, made by
 * scripts/chat_golden.py from tests/data/chat/templates.json), the plain fallback, bad
 * conversations, and templates read from a model directory's tokenizer_config.json.
 */
#include "harness.h"

#include <unistd.h>

#define CHAT_DIR "tests/data/chat/"

static const char *tmpl_of(const cJSON *templates, const char *name, const char **bos) {
    const cJSON *t;
    cJSON_ArrayForEach(t, templates) {
        if (!strcmp(cJSON_GetObjectItem(t, "name")->valuestring, name)) {
            const cJSON *b = cJSON_GetObjectItem(t, "bos_token");
            *bos = cJSON_IsString(b) ? b->valuestring : NULL;
            return cJSON_GetObjectItem(t, "template")->valuestring;
        }
    }
    return NULL;
}

static void test_golden(void) {
    cJSON *templates = skv_test_load_json(CHAT_DIR "templates.json");
    cJSON *golden = skv_test_load_json(CHAT_DIR "golden.json");
    REQUIRE(templates && golden, "cannot read %stemplates.json / golden.json", CHAT_DIR);
    int n_ok = 0, n_err = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, golden) {
        const char *name = cJSON_GetObjectItem(c, "template")->valuestring, *bos = NULL;
        const char *tmpl = tmpl_of(templates, name, &bos);
        CHECKF(tmpl, "template %s missing", name);
        if (!tmpl) continue;
        const cJSON *msgs = cJSON_GetObjectItem(c, "messages");
        int n = cJSON_GetArraySize(msgs);
        skv_chat_msg m[8];
        for (int i = 0; i < n && i < 8; i++) {
            const cJSON *e = cJSON_GetArrayItem(msgs, i);
            m[i].role = cJSON_GetObjectItem(e, "role")->valuestring;
            m[i].content = cJSON_GetObjectItem(e, "content")->valuestring;
        }
        int gen = cJSON_IsTrue(cJSON_GetObjectItem(c, "add_generation_prompt"));
        char *out = NULL;
        skv_status st = skv_chat_render(tmpl, bos, m, (size_t)n, gen, &out);
        const cJSON *exp = cJSON_GetObjectItem(c, "expected");
        int conv = cJSON_GetObjectItem(c, "conv")->valueint;
        if (exp) {
            CHECKF(st == SKV_OK && out && !strcmp(out, exp->valuestring),
                   "%s conv %d gen %d: st %d\n got      [%s]\n expected [%s]", name, conv, gen, st,
                   out ? out : "(null)", exp->valuestring);
            n_ok++;
        } else {
            CHECKF(st == SKV_ERR_ARG && !out, "%s conv %d: the template raises, render gave %d", name,
                   conv, st);
            CHECKF(strstr(skv_last_error(), "system role"), "message: %s", skv_last_error());
            n_err++;
        }
        free(out);
    }
    CHECKF(n_ok >= 40 && n_err >= 2, "%d rendered and %d refused cases (expected >= 40, >= 2)", n_ok, n_err);
    cJSON_Delete(templates);
    cJSON_Delete(golden);
}

static void test_families(void) {
    CHECK(skv_chat_detect(NULL) == SKV_CHAT_PLAIN);
    CHECK(skv_chat_detect("") == SKV_CHAT_PLAIN);
    CHECK(skv_chat_detect("{{ '<|im_start|>' }}") == SKV_CHAT_CHATML);
    CHECK(skv_chat_detect("<|start_header_id|>") == SKV_CHAT_LLAMA3);
    CHECK(skv_chat_detect("<start_of_turn>") == SKV_CHAT_GEMMA);
    CHECK(skv_chat_detect("[INST] {{ m }} [/INST]") == SKV_CHAT_UNKNOWN);
    CHECK(!strcmp(skv_chat_family_name(SKV_CHAT_GEMMA), "gemma"));
    CHECK(!strcmp(skv_chat_stop(SKV_CHAT_CHATML), "<|im_end|>"));
    CHECK(!strcmp(skv_chat_stop(SKV_CHAT_LLAMA3), "<|eot_id|>"));
    CHECK(skv_chat_stop(SKV_CHAT_UNKNOWN) == NULL);
    /* the plain fallback, exactly as documented in slimkv.h */
    skv_chat_msg m[3] = {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello."}};
    char *out = NULL;
    CHECK(skv_chat_render(NULL, NULL, m, 3, 1, &out) == SKV_OK);
    CHECKF(out && !strcmp(out, "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello.\n\nAssistant:"), "plain: [%s]",
           out ? out : "(null)");
    free(out);
    out = NULL;
    CHECK(skv_chat_render("", NULL, m + 1, 1, 0, &out) == SKV_OK);
    CHECKF(out && !strcmp(out, "User: Hi\n\n"), "plain: [%s]", out ? out : "(null)");
    free(out);
}

static void test_bad(void) {
    char *out = (char *)1;
    skv_chat_msg ok = {"user", "x"};
    CHECK(skv_chat_render(NULL, NULL, &ok, 0, 1, &out) == SKV_ERR_ARG && out == NULL);
    skv_chat_msg tool = {"tool", "x"};
    CHECK(skv_chat_render(NULL, NULL, &tool, 1, 1, &out) == SKV_ERR_ARG);
    CHECKF(strstr(skv_last_error(), "role \"tool\""), "message: %s", skv_last_error());
    skv_chat_msg norole = {NULL, "x"}, nocontent = {"user", NULL};
    CHECK(skv_chat_render(NULL, NULL, &norole, 1, 1, &out) == SKV_ERR_ARG);
    CHECK(skv_chat_render(NULL, NULL, &nocontent, 1, 1, &out) == SKV_ERR_ARG);
    CHECK(skv_chat_render("{% for m in messages %}[INST]{% endfor %}", NULL, &ok, 1, 1, &out) ==
          SKV_ERR_UNSUPPORTED);
    CHECK(out == NULL);
    CHECK(skv_chat_render(NULL, NULL, &ok, 1, 1, NULL) == SKV_ERR_ARG);
    CHECK(skv_chat_apply(NULL, &ok, 1, 1, &out) == SKV_ERR_ARG);
}

/* A model directory: kvt-s's files linked, with tokenizer_config.json written. */
static const char *model_dir_with(const char *name, const char *tokcfg) {
    static char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s", skv_test_tmpdir(), name);
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "mkdir -p %s && for f in config.json model.safetensors tokenizer.json; do "
                              "ln -sf \"$(realpath %s/models/kvt-s/$f)\" %s/$f; done",
             dir, skv_test_shared_dir(), dir);
    if (skv_test_sh(cmd, NULL, NULL) != 0) return NULL;
    char path[1100];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    FILE *f = fopen(path, "w");
    if (!f) return NULL;
    fputs(tokcfg, f);
    fclose(f);
    return dir;
}

static void test_model_template(void) {
    skv_model_params mp = skv_model_default_params();
    mp.n_threads = 1;
    char path[1024];
    snprintf(path, sizeof path, "%s/models/kvt-s", skv_test_shared_dir());
    if (access(path, F_OK) != 0) {
        skv_test_skip("%s not found", path);
        return;
    }
    skv_model *m = NULL;
    /* kvt-s has no template: the plain family */
    REQUIRE(skv_model_load(path, mp, &m) == SKV_OK, "load %s: %s", path, skv_last_error());
    CHECK(skv_model_chat_template(m) == NULL);
    skv_chat_msg u = {"user", "Hi"};
    char *out = NULL;
    CHECK(skv_chat_apply(m, &u, 1, 1, &out) == SKV_OK && out && !strcmp(out, "User: Hi\n\nAssistant:"));
    free(out);
    skv_model_free(m);
    /* a list-form template and an AddedToken-object bos_token */
    const char *dir = model_dir_with(
        "gemma", "{\"bos_token\": {\"content\": \"<s>\", \"lstrip\": false},"
                 " \"chat_template\": [{\"name\": \"tool_use\", \"template\": \"x\"},"
                 " {\"name\": \"default\", \"template\": \"{{ '<start_of_turn>' }}\"}]}");
    REQUIRE(dir, "cannot make a model directory");
    REQUIRE(skv_model_load(dir, mp, &m) == SKV_OK, "load %s: %s", dir, skv_last_error());
    out = NULL;
    CHECK(skv_chat_apply(m, &u, 1, 1, &out) == SKV_OK);
    CHECKF(out && !strcmp(out, "<s><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"), "[%s]",
           out ? out : "(null)");
    free(out);
    skv_model_free(m);
    /* chat_template.jinja wins over the config's field */
    dir = model_dir_with("jinja", "{\"chat_template\": \"{{ '<start_of_turn>' }}\"}");
    REQUIRE(dir, "cannot make a model directory");
    snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
    FILE *f = fopen(path, "w");
    REQUIRE(f, "cannot write %s", path);
    fputs("{{ '<|im_start|>' + message['role'] }}", f);
    fclose(f);
    REQUIRE(skv_model_load(dir, mp, &m) == SKV_OK, "load %s: %s", dir, skv_last_error());
    CHECK(skv_chat_detect(skv_model_chat_template(m)) == SKV_CHAT_CHATML);
    skv_model_free(m);
    /* malformed: refused at load, naming the file and field */
    dir = model_dir_with("bad", "{\"chat_template\": 42}");
    REQUIRE(dir, "cannot make a model directory");
    m = NULL;
    CHECK(skv_model_load(dir, mp, &m) == SKV_ERR_FORMAT && m == NULL);
    CHECKF(strstr(skv_last_error(), "tokenizer_config.json") && strstr(skv_last_error(), "chat_template"),
           "message: %s", skv_last_error());
    dir = model_dir_with("bad2", "[1, 2");
    REQUIRE(dir, "cannot make a model directory");
    CHECK(skv_model_load(dir, mp, &m) == SKV_ERR_FORMAT && m == NULL);
}

void register_chat(void) {
    skv_test_add("chat/templates vs Jinja2 renderings of Qwen2, SmolLM2, Llama-3, Llama-3.3, Gemma-2, Gemma-3",
                 test_golden);
    skv_test_add("chat/family detection, stop text, plain fallback", test_families);
    skv_test_add("chat/bad conversations and unknown templates", test_bad);
    skv_test_add("chat/template from a model directory (tokenizer_config.json, chat_template.jinja)",
                 test_model_template);
}
