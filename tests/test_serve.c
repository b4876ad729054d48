/*
 * test_serve.c — `slimkv serve` end to end on a loopback port with kvt-s: start and stop,
 * every endpoint, the streaming chunk format, greedy text equal to `slimkv run`, stop strings
 * across token boundaries, bad requests (400 with an OpenAI error object, 401, 404, 405, 413),
 * a full queue (429 with Retry-After), cancellation on disconnect, two concurrent greedy streams
 * equal to their solo runs, and prefix reuse.
 */
#include "harness.h"
#include "http_client.h"

#include <sys/socket.h>
#include <unistd.h>

static const char *model_dir(void) {
    static char dir[1024];
    snprintf(dir, sizeof dir, "%s/models/kvt-s", skv_test_shared_dir());
    return access(dir, F_OK) == 0 ? dir : NULL;
}

/* Start a server or skip/fail the test. */
#define START(p, args)                                                                 \
    do {                                                                               \
        if (!model_dir()) {                                                            \
            skv_test_skip("kvt-s not found under %s/models", skv_test_shared_dir());    \
            return;                                                                    \
        }                                                                              \
        char err_[1024];                                                               \
        REQUIRE(srv_start(&(p), model_dir(), args, err_, sizeof err_) > 0, "%s", err_); \
    } while (0)

static cJSON *post_json(int port, const char *path, const char *body, int *status) {
    hresp r;
    http_do(port, "POST", path, NULL, body, &r);
    *status = r.status;
    cJSON *j = r.body ? cJSON_Parse(r.body) : NULL;
    hresp_free(&r);
    return j;
}

static const char *jstr(const cJSON *o, const char *path) {
    /* "a.b.0.c" */
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    const cJSON *it = o;
    for (char *tok = strtok(buf, "."); tok && it; tok = strtok(NULL, "."))
        it = (tok[0] >= '0' && tok[0] <= '9') ? cJSON_GetArrayItem(it, atoi(tok)) : cJSON_GetObjectItem(it, tok);
    return cJSON_IsString(it) ? it->valuestring : NULL;
}

static double jnum(const cJSON *o, const char *path) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    const cJSON *it = o;
    for (char *tok = strtok(buf, "."); tok && it; tok = strtok(NULL, "."))
        it = (tok[0] >= '0' && tok[0] <= '9') ? cJSON_GetArrayItem(it, atoi(tok)) : cJSON_GetObjectItem(it, tok);
    return cJSON_IsNumber(it) ? it->valuedouble : -1e300;
}

static const char *PROMPT = "It is a truth universally acknowledged, that";

static void test_endpoints(void) {
    srv_proc p;
    START(p, "-t 1 --parallel 2");
    hresp r;
    http_do(p.port, "GET", "/health", NULL, NULL, &r);
    CHECKF(r.status == 200 && r.body && strstr(r.body, "\"ok\""), "health: %d %s", r.status, r.body ? r.body : "");
    hresp_free(&r);
    http_do(p.port, "GET", "/v1/models", NULL, NULL, &r);
    cJSON *j = r.body ? cJSON_Parse(r.body) : NULL;
    CHECKF(r.status == 200 && j && !strcmp(jstr(j, "object") ? jstr(j, "object") : "", "list") &&
               jstr(j, "data.0.id") && !strcmp(jstr(j, "data.0.id"), "kvt-s"),
           "models: %d %s", r.status, r.body ? r.body : "");
    cJSON_Delete(j);
    hresp_free(&r);
    /* completions: greedy text equals `slimkv run` */
    char body[1024];
    snprintf(body, sizeof body, "{\"model\":\"kvt-s\",\"prompt\":\"%s\",\"max_tokens\":24,\"temperature\":0}", PROMPT);
    int st;
    j = post_json(p.port, "/v1/completions", body, &st);
    char cmd[2048], *out = NULL;
    snprintf(cmd, sizeof cmd, "OMP_WAIT_POLICY=passive %s run -m %s -p '%s' -n 24 --temp 0 -t 1 --json", skv_test_cli(),
             model_dir(), PROMPT);
    CHECK(skv_test_sh(cmd, &out, NULL) == 0);
    cJSON *ref = out ? cJSON_Parse(out) : NULL;
    free(out);
    CHECKF(st == 200 && j && ref && jstr(j, "choices.0.text") && !strcmp(jstr(j, "choices.0.text"), jstr(ref, "text")),
           "completion %d [%s] vs run [%s]", st, j ? jstr(j, "choices.0.text") : "", ref ? jstr(ref, "text") : "");
    CHECK(j && !strcmp(jstr(j, "object"), "text_completion") && !strcmp(jstr(j, "choices.0.finish_reason"), "length"));
    CHECK(j && jnum(j, "usage.completion_tokens") == 24 && jnum(j, "usage.prompt_tokens") > 0 &&
          jnum(j, "usage.kv_bytes") > 0);
    cJSON_Delete(ref);
    cJSON_Delete(j);
    /* chat: the plain template (kvt-s has none), a reply, usage */
    j = post_json(p.port, "/v1/chat/completions",
                  "{\"model\":\"kvt-s\",\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
                  "{\"role\":\"user\",\"content\":\"What is a dog?\"}],\"max_tokens\":16,\"temperature\":0,"
                  "\"logprobs\":true,\"top_logprobs\":3}",
                  &st);
    CHECKF(st == 200 && j && !strcmp(jstr(j, "object"), "chat.completion") &&
               !strcmp(jstr(j, "choices.0.message.role"), "assistant") && jstr(j, "choices.0.message.content"),
           "chat: %d", st);
    const cJSON *lp = j ? cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0),
                                                                  "logprobs"), "content") : NULL;
    CHECKF(cJSON_GetArraySize(lp) > 0 && jnum(lp, "0.logprob") <= 0 &&
               cJSON_GetArraySize(cJSON_GetObjectItem(cJSON_GetArrayItem(lp, 0), "top_logprobs")) == 3,
           "chat logprobs");
    cJSON_Delete(j);
    /* metrics: Prometheus text with the counters and histograms */
    http_do(p.port, "GET", "/metrics", NULL, NULL, &r);
    CHECKF(r.status == 200 && r.body && strstr(r.body, "slimkv_requests_total{kind=\"chat\"} 1") &&
               strstr(r.body, "slimkv_time_to_first_token_seconds_bucket{le=\"+Inf\"} 2") &&
               strstr(r.body, "slimkv_inter_token_latency_seconds_count") && strstr(r.body, "slimkv_kv_bytes{tier=\"fast\"}") &&
               strstr(r.body, "slimkv_queue_depth 0") && strstr(r.body, "slimkv_generated_tokens_total 40"),
           "metrics: %s", r.body ? r.body : "");
    /* the scheduler's time by phase: prompts were prefilled and tokens decoded */
    static const char *const busy[] = {"prefill", "forward", "token"};
    for (int k = 0; k < 3 && r.body; k++) {
        char key[96];
        snprintf(key, sizeof key, "slimkv_scheduler_seconds_total{phase=\"%s\"} ", busy[k]);
        const char *at = strstr(r.body, key);
        CHECKF(at && strtod(at + strlen(key), NULL) > 0, "metrics: no time in phase %s", busy[k]);
    }
    /* 24 + 16 tokens, the first of each from its prompt's logits: 23 decode steps at least
     * (both requests' steps together), 38 one after the other */
    const char *fc = r.body ? strstr(r.body, "\nslimkv_decode_forward_calls_total ") : NULL;
    CHECKF(fc && strtod(fc + 35, NULL) >= 23 && strtod(fc + 35, NULL) <= 38, "metrics: forward calls: %.40s", fc ? fc : "none");
    hresp_free(&r);
    CHECKF(srv_stop(&p) == 0, "the server did not exit cleanly on SIGTERM (log %s)", p.log);
}

/* The SSE events of a body: each "data: ..." payload. */
static int sse_events(const char *body, char ***ev) {
    int n = 0, cap = 16;
    *ev = malloc(sizeof(char *) * (size_t)cap);
    for (const char *p = body; p && *p;) {
        const char *end = strstr(p, "\n\n");
        if (!end) break;
        if (!strncmp(p, "data: ", 6)) {
            if (n == cap) *ev = realloc(*ev, sizeof(char *) * (size_t)(cap *= 2));
            (*ev)[n++] = strndup(p + 6, (size_t)(end - p - 6));
        }
        p = end + 2;
    }
    return n;
}

/* Streams a request; returns the concatenated text (malloc'd) and checks the chunk format. */
static char *stream_text(int port, const char *path, const char *body, int chat, char **finish) {
    hresp r;
    http_do(port, "POST", path, NULL, body, &r);
    char ct[128];
    CHECKF(r.status == 200 && hresp_header(&r, "Content-Type", ct, sizeof ct) && strstr(ct, "text/event-stream"),
           "stream status %d", r.status);
    char **ev;
    int n = sse_events(r.body ? r.body : "", &ev);
    size_t cap = 4096, len = 0;
    char *text = calloc(1, cap);
    int usage = 0, done = 0, fin = 0;
    *finish = NULL;
    for (int i = 0; i < n; i++) {
        if (!strcmp(ev[i], "[DONE]")) {
            done = i == n - 1;
            free(ev[i]);
            continue;
        }
        cJSON *j = cJSON_Parse(ev[i]);
        CHECKF(j, "event %d is not JSON: %s", i, ev[i]);
        free(ev[i]);
        if (!j) continue;
        CHECK(!strcmp(jstr(j, "object"), chat ? "chat.completion.chunk" : "text_completion"));
        CHECK(jstr(j, "id") && !strncmp(jstr(j, "id"), chat ? "chatcmpl-" : "cmpl-", chat ? 9 : 5));
        const cJSON *choices = cJSON_GetObjectItem(j, "choices");
        if (cJSON_GetArraySize(choices) == 0) { /* the usage chunk, last before [DONE] */
            usage = jnum(j, "usage.total_tokens") > 0 && i == n - 2;
        } else {
            const char *t = chat ? jstr(j, "choices.0.delta.content") : jstr(j, "choices.0.text");
            if (chat && i == 0) CHECK(jstr(j, "choices.0.delta.role") && !strcmp(jstr(j, "choices.0.delta.role"), "assistant"));
            if (t) {
                while (len + strlen(t) + 1 > cap) text = realloc(text, cap *= 2);
                strcpy(text + len, t);
                len += strlen(t);
            }
            const char *f = jstr(j, "choices.0.finish_reason");
            if (f) {
                fin++;
                free(*finish);
                *finish = strdup(f);
            }
        }
        cJSON_Delete(j);
    }
    CHECKF(done && fin == 1 && usage, "stream: [DONE] last %d, finish chunks %d, usage chunk %d (%d events)", done, fin,
           usage, n);
    free(ev);
    hresp_free(&r);
    return text;
}

static void test_stream_and_stop(void) {
    srv_proc p;
    START(p, "-t 1 --parallel 2");
    char body[1024];
    int st;
    /* the reference: greedy, with each token's text offset */
    snprintf(body, sizeof body, "{\"model\":\"kvt-s\",\"prompt\":\"%s\",\"max_tokens\":40,\"temperature\":0,\"logprobs\":0}",
             PROMPT);
    cJSON *j = post_json(p.port, "/v1/completions", body, &st);
    REQUIRE(st == 200 && j, "reference completion: %d", st);
    const char *full = jstr(j, "choices.0.text");
    const cJSON *offs = cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(j, "choices"), 0),
                                                                "logprobs"), "text_offset");
    REQUIRE(full && cJSON_GetArraySize(offs) == 40, "logprobs.text_offset");
    /* streamed: the same text */
    snprintf(body, sizeof body, "{\"model\":\"kvt-s\",\"prompt\":\"%s\",\"max_tokens\":40,\"temperature\":0,\"stream\":true,"
             "\"stream_options\":{\"include_usage\":true}}", PROMPT);
    char *fin = NULL, *text = stream_text(p.port, "/v1/completions", body, 0, &fin);
    CHECKF(!strcmp(text, full) && fin && !strcmp(fin, "length"), "stream [%s] vs [%s]", text, full);
    free(text), free(fin);
    /* a stop string spanning a token boundary: the last 2 bytes of a token + the first 2 of the next */
    int k = -1;
    for (int i = 5; i + 2 < 40 && k < 0; i++) {
        const int a = cJSON_GetArrayItem(offs, i)->valueint;
        const int b = cJSON_GetArrayItem(offs, i + 1)->valueint, c = cJSON_GetArrayItem(offs, i + 2)->valueint;
        if (b - a >= 2 && c - b >= 2) k = b - 2;
    }
    REQUIRE(k > 0, "no two adjacent tokens of >= 2 bytes in [%s]", full);
    char stop[8] = {0};
    memcpy(stop, full + k, 4);
    const char *first = strstr(full, stop);
    const size_t cut = (size_t)(first - full);
    cJSON *jstop = cJSON_CreateString(stop);
    char *stop_json = cJSON_PrintUnformatted(jstop);
    cJSON_Delete(jstop);
    for (int stream = 0; stream < 2; stream++) {
        snprintf(body, sizeof body, "{\"model\":\"kvt-s\",\"prompt\":\"%s\",\"max_tokens\":40,\"temperature\":0,"
                 "\"stop\":[\"never-in-text\",%s]%s}", PROMPT, stop_json,
                 stream ? ",\"stream\":true,\"stream_options\":{\"include_usage\":true}" : "");
        char *got = NULL, *why = NULL;
        if (stream) {
            got = stream_text(p.port, "/v1/completions", body, 0, &why);
        } else {
            cJSON *js = post_json(p.port, "/v1/completions", body, &st);
            got = strdup(js && jstr(js, "choices.0.text") ? jstr(js, "choices.0.text") : "");
            why = js && jstr(js, "choices.0.finish_reason") ? strdup(jstr(js, "choices.0.finish_reason")) : NULL;
            cJSON_Delete(js);
        }
        CHECKF(strlen(got) == cut && !strncmp(got, full, cut) && why && !strcmp(why, "stop"),
               "stop %s (stream %d): got [%s] (%s), expected the first %zu bytes of [%s]", stop_json, stream, got,
               why ? why : "-", cut, full);
        free(got), free(why);
    }
    free(stop_json);
    /* chat streamed */
    char *cfin = NULL;
    text = stream_text(p.port, "/v1/chat/completions",
                       "{\"model\":\"kvt-s\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}],\"max_tokens\":12,"
                       "\"temperature\":0,\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
                       1, &cfin);
    CHECK(cfin && (!strcmp(cfin, "length") || !strcmp(cfin, "stop")));
    free(text), free(cfin);
    cJSON_Delete(j);
    CHECK(srv_stop(&p) == 0);
}

static void expect_400(int port, const char *path, const char *body, const char *param) {
    hresp r;
    http_do(port, "POST", path, NULL, body, &r);
    cJSON *j = r.body ? cJSON_Parse(r.body) : NULL;
    const char *msg = j ? jstr(j, "error.message") : NULL, *type = j ? jstr(j, "error.type") : NULL;
    const char *pa = j ? jstr(j, "error.param") : NULL;
    CHECKF(r.status == 400 && msg && type && !strcmp(type, "invalid_request_error") &&
               (!param || (pa && !strcmp(pa, param))),
           "%s: status %d, body %s (expected 400, param %s)", body, r.status, r.body ? r.body : "", param ? param : "-");
    cJSON_Delete(j);
    hresp_free(&r);
}

static void test_bad_requests(void) {
    srv_proc p;
    START(p, "-t 1 --parallel 1 --max-body 4096 --api-key sekret");
    const char *C = "/v1/completions", *H = "/v1/chat/completions";
    /* the key: missing and wrong are 401, right is 200 */
    hresp r;
    http_do(p.port, "GET", "/v1/models", NULL, NULL, &r);
    CHECKF(r.status == 401 && r.body && strstr(r.body, "invalid_api_key"), "no key: %d", r.status);
    hresp_free(&r);
    http_do(p.port, "GET", "/v1/models", "Authorization: Bearer sekreT\r\n", NULL, &r);
    CHECK(r.status == 401);
    hresp_free(&r);
    http_do(p.port, "GET", "/v1/models", "Authorization: Bearer sekret\r\n", NULL, &r);
    CHECK(r.status == 200);
    hresp_free(&r);
    srv_stop(&p);
    START(p, "-t 1 --parallel 1 --max-body 4096");
    expect_400(p.port, C, "{\"model\":\"kvt-s\",", NULL);
    expect_400(p.port, C, "[1,2,3]", NULL);
    expect_400(p.port, C, "", NULL);
    expect_400(p.port, C, "{\"model\":\"gpt-4\",\"prompt\":\"x\"}", "model");
    expect_400(p.port, C, "{\"prompt\":\"x\"}", "model");
    expect_400(p.port, C, "{\"model\":\"kvt-s\"}", "prompt");
    expect_400(p.port, C, "{\"model\":\"kvt-s\",\"prompt\":\"\"}", "prompt");
    expect_400(p.port, C, "{\"model\":\"kvt-s\",\"prompt\":42}", "prompt");
    expect_400(p.port, C, "{\"model\":\"kvt-s\",\"prompt\":[1,99999]}", "prompt");
    expect_400(p.port, C, "{\"model\":\"kvt-s\",\"prompt\":\"x\",\"max_tokens\":-1}", "max_tokens");
    expect_400(p.port, C, "{\"model\":\"kvt-s\",\"prompt\":\"x\",\"max_tokens\":1.5}", "max_tokens");
    expect_400(p.port, C, "{\"model\":\"kvt-s\",\"prompt\":\"x\",\"max_tokens\":5000}", "max_tokens");
    expect_400(p.port, C, "{\"model\":\"kvt-s\",\"prompt\":\"x\",\"temperature\":\"hot\"}", "temperature");
    expect_400(p.port, C, "{\"model\":\"kvt-s\",\"prompt\":\"x\",\"temperature\":3}", "temperature");
    expect_400(p.port, C, "{\"model\":\"kvt-s\",\"prompt\":\"x\",\"top_p\":0}", "top_p");
    expect_400(p.port, C, "{\"model\":\"kvt-s\",\"prompt\":\"x\",\"top_k\":-2}", "top_k");
    expect_400(p.port, C, "{\"model\":\"kvt-s\",\"prompt\":\"x\",\"n\":2}", "n");
    expect_400(p.port, C, "{\"model\":\"kvt-s\",\"prompt\":\"x\",\"stream\":\"yes\"}", "stream");
    expect_400(p.port, C, "{\"model\":\"kvt-s\",\"prompt\":\"x\",\"stream_options\":{\"include_usage\":true}}", "stream_options");
    expect_400(p.port, C, "{\"model\":\"kvt-s\",\"prompt\":\"x\",\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", "stop");
    expect_400(p.port, C, "{\"model\":\"kvt-s\",\"prompt\":\"x\",\"stop\":[\"\"]}", "stop");
    expect_400(p.port, C, "{\"model\":\"kvt-s\",\"prompt\":\"x\",\"logprobs\":9}", "logprobs");
    expect_400(p.port, C, "{\"model\":\"kvt-s\",\"prompt\":\"x\",\"echo\":true}", "echo");
    expect_400(p.port, C, "{\"model\":\"kvt-s\",\"prompt\":\"x\",\"frequency_penalty\":0.5}", "frequency_penalty");
    expect_400(p.port, C, "{\"model\":\"kvt-s\",\"prompt\":\"x\",\"colour\":1}", "colour");
    expect_400(p.port, C, "{\"model\":\"kvt-s\",\"prompt\":\"x\",\"kv\":{\"policy\":\"magic\"}}", "kv.policy");
    expect_400(p.port, C, "{\"model\":\"kvt-s\",\"prompt\":\"x\",\"kv\":{\"policy\":\"snapkv\",\"budget\":0}}", "budget");
    expect_400(p.port, C, "{\"model\":\"kvt-s\",\"prompt\":\"x\",\"kv\":{\"policy\":\"snapkv\",\"budget\":2}}", "budget");
    expect_400(p.port, C, "{\"model\":\"kvt-s\",\"prompt\":\"x\",\"kv\":{\"policy\":\"smallkv\"}}", "kv.policy");
    expect_400(p.port, C, "{\"model\":\"kvt-s\",\"prompt\":\"x\",\"kv\":{\"speed\":1}}", "speed");
    expect_400(p.port, C, "{\"model\":\"kvt-s\",\"prompt\":\"x\",\"kv\":\"snapkv\"}", "kv");
    expect_400(p.port, H, "{\"model\":\"kvt-s\",\"messages\":[]}", "messages");
    expect_400(p.port, H, "{\"model\":\"kvt-s\",\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}", "messages");
    expect_400(p.port, H, "{\"model\":\"kvt-s\",\"messages\":[{\"role\":\"user\"}]}", "messages[0]");
    expect_400(p.port, H, "{\"model\":\"kvt-s\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_logprobs\":2}",
               "top_logprobs");
    expect_400(p.port, H, "{\"model\":\"kvt-s\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[]}", "tools");
    /* a prompt longer than the context */
    char *big = malloc(3500);
    strcpy(big, "{\"model\":\"kvt-s\",\"prompt\":[");
    for (int i = 0; i < 1200; i++) strcat(big, i ? ",1" : "1");
    strcat(big, "]}");
    hresp_free(&r);
    http_do(p.port, "POST", C, NULL, big, &r); /* 1200 tokens fit in the 4096-byte body limit */
    CHECKF(r.status == 200, "1200-token prompt: %d %s", r.status, r.body ? r.body : "");
    hresp_free(&r);
    free(big);
    /* body over --max-body: 413; unknown route 404; wrong method 405 */
    char *huge = malloc(8192);
    memset(huge, ' ', 8191);
    huge[8191] = 0;
    http_do(p.port, "POST", C, NULL, huge, &r);
    CHECKF(r.status == 413 && r.body && strstr(r.body, "\"error\""), "big body: %d", r.status);
    hresp_free(&r);
    free(huge);
    http_do(p.port, "GET", "/v1/nothing", NULL, NULL, &r);
    CHECK(r.status == 404 && r.body && strstr(r.body, "\"error\""));
    hresp_free(&r);
    http_do(p.port, "GET", C, NULL, NULL, &r);
    CHECK(r.status == 405);
    hresp_free(&r);
    /* still up and answering */
    http_do(p.port, "GET", "/health", NULL, NULL, &r);
    CHECK(r.status == 200);
    hresp_free(&r);
    CHECK(srv_stop(&p) == 0);
}

/* Wait until /metrics shows `line`. */
static int wait_metric(int port, const char *line, int ms) {
    for (int t = 0; t < ms; t += 20) {
        hresp r;
        http_do(port, "GET", "/metrics", NULL, NULL, &r);
        int ok = r.body && strstr(r.body, line);
        hresp_free(&r);
        if (ok) return 1;
        usleep(20000);
    }
    return 0;
}

static void test_queue_full(void) {
    srv_proc p;
    START(p, "-t 1 --parallel 1 --queue 1");
    const char *body = "{\"model\":\"kvt-s\",\"prompt\":\"Once\",\"max_tokens\":2000,\"temperature\":0,\"stream\":true,"
                       "\"ignore_eos\":true}";
    int a = http_send(p.port, "POST", "/v1/completions", NULL, body, strlen(body));
    REQUIRE(a >= 0, "connect");
    CHECK(wait_metric(p.port, "slimkv_active_sequences 1", 10000));
    int b = http_send(p.port, "POST", "/v1/completions", NULL, body, strlen(body));
    CHECK(wait_metric(p.port, "slimkv_queue_depth 1", 10000));
    hresp r;
    http_do(p.port, "POST", "/v1/completions", NULL, body, &r);
    char ra[32];
    CHECKF(r.status == 429 && hresp_header(&r, "Retry-After", ra, sizeof ra) && r.body && strstr(r.body, "\"error\""),
           "third request: %d", r.status);
    hresp_free(&r);
    /* both clients go away: their requests are cancelled and the slot frees */
    close(a);
    close(b);
    CHECK(wait_metric(p.port, "slimkv_requests_cancelled_total 2", 20000));
    CHECK(wait_metric(p.port, "slimkv_active_sequences 0", 20000));
    /* a non-streamed request whose client goes away is cancelled too */
    const char *plain = "{\"model\":\"kvt-s\",\"prompt\":\"Once\",\"max_tokens\":2000,\"ignore_eos\":true}";
    int c = http_send(p.port, "POST", "/v1/completions", NULL, plain, strlen(plain));
    CHECK(wait_metric(p.port, "slimkv_active_sequences 1", 10000));
    close(c);
    CHECK(wait_metric(p.port, "slimkv_requests_cancelled_total 3", 20000));
    int st;
    cJSON *j = post_json(p.port, "/v1/completions", "{\"model\":\"kvt-s\",\"prompt\":\"Once\",\"max_tokens\":4}", &st);
    CHECK(st == 200 && j);
    cJSON_Delete(j);
    CHECK(srv_stop(&p) == 0);
}

/* --kv-mem: a request that could never fit is a 400; one that does not fit now waits. */
static void test_kv_admission(void) {
    srv_proc p;
    START(p, "-t 1 --parallel 2 --kv-mem 1");
    hresp r;
    http_do(p.port, "POST", "/v1/completions", NULL, "{\"model\":\"kvt-s\",\"prompt\":\"Once\",\"max_tokens\":600}", &r);
    CHECKF(r.status == 400 && r.body && strstr(r.body, "--kv-mem"), "600 tokens in 1 MiB: %d %s", r.status,
           r.body ? r.body : "");
    hresp_free(&r);
    const char *body = "{\"model\":\"kvt-s\",\"prompt\":\"Once\",\"max_tokens\":400,\"temperature\":0,\"stream\":true,"
                       "\"ignore_eos\":true}";
    int a = http_send(p.port, "POST", "/v1/completions", NULL, body, strlen(body));
    CHECK(wait_metric(p.port, "slimkv_active_sequences 1", 10000));
    int b = http_send(p.port, "POST", "/v1/completions", NULL, body, strlen(body));
    /* a slot is free, but the two reservations exceed 1 MiB: the second waits in the queue */
    CHECK(wait_metric(p.port, "slimkv_queue_depth 1", 10000));
    CHECK(wait_metric(p.port, "slimkv_active_sequences 1", 100));
    hresp ra, rb;
    CHECK(http_read(a, &ra) == 0 && ra.status == 200 && strstr(ra.body, "[DONE]"));
    CHECK(http_read(b, &rb) == 0 && rb.status == 200 && strstr(rb.body, "[DONE]"));
    hresp_free(&ra);
    hresp_free(&rb);
    CHECK(wait_metric(p.port, "slimkv_kv_reserved_bytes 0", 5000));
    CHECK(srv_stop(&p) == 0);
}

static void test_concurrent_equals_solo(void) {
    srv_proc p;
    START(p, "-t 1 --parallel 2 --prefill-chunk 16");
    const char *bodies[2] = {
        /* long enough (160 tokens, no early EOS) that the second request is admitted while it runs,
         * also on a loaded machine */
        "{\"model\":\"kvt-s\",\"prompt\":\"The kernel allocates memory for the page cache when\",\"max_tokens\":160,"
        "\"temperature\":0,\"ignore_eos\":true,\"stream\":true}",
        "{\"model\":\"kvt-s\",\"prompt\":\"Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy "
        "disposition, seemed to unite some of the best blessings of existence; and had lived nearly twenty-one years "
        "in the world with very little to distress or vex her.\",\"max_tokens\":40,\"temperature\":0,\"stream\":true,"
        "\"kv\":{\"policy\":\"snapkv\",\"budget\":0.5}}"};
    char *solo[2];
    for (int i = 0; i < 2; i++) {
        hresp r;
        http_do(p.port, "POST", "/v1/completions", NULL, bodies[i], &r);
        solo[i] = r.body ? strdup(r.body) : strdup("");
        hresp_free(&r);
    }
    int fd[2];
    for (int i = 0; i < 2; i++) fd[i] = http_send(p.port, "POST", "/v1/completions", NULL, bodies[i], strlen(bodies[i]));
    for (int i = 0; i < 2; i++) {
        hresp r;
        REQUIRE(fd[i] >= 0 && http_read(fd[i], &r) == 0, "concurrent request %d", i);
        /* the texts: every "text" of the events, joined */
        char **ev, **ev2;
        int n = sse_events(r.body, &ev), n2 = sse_events(solo[i], &ev2);
        char both[2][4096] = {{0}};
        for (int pass = 0; pass < 2; pass++) {
            char **e = pass ? ev2 : ev;
            for (int k = 0; k < (pass ? n2 : n); k++) {
                cJSON *j = cJSON_Parse(e[k]);
                const char *t = j ? jstr(j, "choices.0.text") : NULL;
                if (t && strlen(both[pass]) + strlen(t) < sizeof both[pass]) strcat(both[pass], t);
                cJSON_Delete(j);
                free(e[k]);
            }
        }
        CHECKF(strlen(both[0]) > 0 && !strcmp(both[0], both[1]), "stream %d concurrent [%s] vs solo [%s]", i, both[0], both[1]);
        free(ev), free(ev2);
        hresp_free(&r);
        free(solo[i]);
    }
    /* they did run together: some decode step held both sequences */
    hresp r;
    http_do(p.port, "GET", "/metrics", NULL, NULL, &r);
    long steps = 0, seqs = 0;
    const char *a = r.body ? strstr(r.body, "\nslimkv_decode_steps_total ") : NULL;
    const char *b = r.body ? strstr(r.body, "\nslimkv_decode_step_sequences_total ") : NULL;
    if (a) steps = atol(a + 28);
    if (b) seqs = atol(b + 37);
    CHECKF(steps > 0 && seqs > steps, "decode steps %ld, sequences over them %ld: no step held both", steps, seqs);
    hresp_free(&r);
    /* prefix reuse: the same long prompt again reuses whole 16-token blocks, with the same text */
    const char *long_body = "{\"model\":\"kvt-s\",\"prompt\":\"Emma Woodhouse, handsome, clever, and rich, with a "
                            "comfortable home and happy disposition, seemed to unite some of the best blessings of "
                            "existence.\",\"max_tokens\":16,\"temperature\":0}";
    int st;
    cJSON *j1 = post_json(p.port, "/v1/completions", long_body, &st);
    cJSON *j2 = post_json(p.port, "/v1/completions", long_body, &st);
    const double cached = j2 ? jnum(j2, "usage.prompt_tokens_details.cached_tokens") : -1;
    CHECKF(j1 && j2 && cached >= 16 && (int)cached % 16 == 0 &&
               !strcmp(jstr(j1, "choices.0.text"), jstr(j2, "choices.0.text")),
           "prefix reuse: cached %g", cached);
    cJSON_Delete(j1);
    cJSON_Delete(j2);
    CHECK(wait_metric(p.port, "slimkv_prefix_cache_hit_tokens_total", 100));
    CHECK(srv_stop(&p) == 0);
    /* a prefix held by a busy slot is borrowed (its cache forked): the same text as cold */
    START(p, "-t 1 --parallel 2 --prefill-chunk 16");
    const char *shared = "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition, "
                         "seemed to unite some of the best blessings of existence; and had lived nearly";
    char b1[1024], b2[1024];
    snprintf(b1, sizeof b1, "{\"model\":\"kvt-s\",\"prompt\":\"%s twenty-one years in the world\",\"max_tokens\":12,"
             "\"temperature\":0}", shared);
    snprintf(b2, sizeof b2, "{\"model\":\"kvt-s\",\"prompt\":\"%s forty years of age\",\"max_tokens\":1500,"
             "\"temperature\":0,\"ignore_eos\":true,\"stream\":true}", shared);
    cJSON *cold = post_json(p.port, "/v1/completions", b1, &st); /* slot 0 */
    int busy = http_send(p.port, "POST", "/v1/completions", NULL, b2, strlen(b2)); /* slot 0 again: the longer prefix */
    CHECK(wait_metric(p.port, "slimkv_active_sequences 1", 10000));
    cJSON *warm = post_json(p.port, "/v1/completions", b1, &st); /* slot 1, borrowing slot 0's prefix */
    const double lent = warm ? jnum(warm, "usage.prompt_tokens_details.cached_tokens") : -1;
    CHECKF(cold && warm && lent >= 16 && !strcmp(jstr(cold, "choices.0.text"), jstr(warm, "choices.0.text")),
           "borrowed prefix: cached %g, [%s] vs cold [%s]", lent, warm ? jstr(warm, "choices.0.text") : "",
           cold ? jstr(cold, "choices.0.text") : "");
    CHECK(wait_metric(p.port, "slimkv_active_sequences 1", 100)); /* the lender still running */
    close(busy);
    cJSON_Delete(cold);
    cJSON_Delete(warm);
    CHECK(srv_stop(&p) == 0);
}

static void test_bad_flags(void) {
    if (!model_dir()) {
        skv_test_skip("kvt-s not found under %s/models", skv_test_shared_dir());
        return;
    }
    static const struct {
        const char *args, *needle;
        int code;
    } cases[] = {
        {"--parallel 0", "--parallel", 2}, {"--port 70000", "--port", 2}, {"--backend tpu", "--backend", 2},
        {"--policy magic", "magic", 1},    {"--api-key ''", "--api-key", 2}, {"--host 300.1.2.3", "--host", 1},
        {"--max-body 10", "--max-body", 2}, {"--bogus", "bogus", 2}, {"--batch-invariant maybe", "--batch-invariant", 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char cmd[2048], *err = NULL;
        snprintf(cmd, sizeof cmd, "%s serve -m %s --port 0 -t 1 %s", skv_test_cli(), model_dir(), cases[i].args);
        int rc = skv_test_sh(cmd, NULL, &err);
        CHECKF(rc == cases[i].code && err && strstr(err, cases[i].needle), "%s: exit %d, stderr %s", cases[i].args, rc,
               err ? err : "");
        free(err);
    }
}

/* --host ::1: the server answers on IPv6 loopback (health, a streamed completion), not on IPv4. */
static void test_ipv6(void) {
    char *lo = NULL;
    skv_test_sh("grep -c '^00000000000000000000000000000001' /proc/net/if_inet6", &lo, NULL);
    const int have = lo && atoi(lo) > 0;
    free(lo);
    if (!have) {
        skv_test_skip("no IPv6 loopback here (/proc/net/if_inet6)");
        return;
    }
    srv_proc p;
    START(p, "--host ::1 -t 1 --parallel 2");
    http_use_ipv6(1);
    hresp r;
    http_do(p.port, "GET", "/health", NULL, NULL, &r);
    CHECKF(r.status == 200 && r.body && strstr(r.body, "\"ok\""), "health over IPv6: %d", r.status);
    hresp_free(&r);
    const char *body = "{\"model\":\"kvt-s\",\"prompt\":\"The cat\",\"max_tokens\":8,\"temperature\":0,\"stream\":true}";
    http_do(p.port, "POST", "/v1/completions", NULL, body, &r);
    CHECKF(r.status == 200 && r.body && strstr(r.body, "data: [DONE]"), "stream over IPv6: %d %s", r.status,
           r.body ? r.body : "");
    hresp_free(&r);
    http_use_ipv6(0);
    http_do(p.port, "GET", "/health", NULL, NULL, &r);
    CHECKF(r.status == -1, "bound to ::1 only, yet 127.0.0.1 answered %d", r.status);
    hresp_free(&r);
    CHECK(srv_stop(&p) == 0);
}

void register_serve(void) {
    skv_test_add("serve/bad flags: exit 2 (usage) or 1, naming the flag", test_bad_flags);
    skv_test_add("serve/start, health, models, completions = slimkv run, chat, metrics, stop on SIGTERM", test_endpoints);
    skv_test_add("serve/streaming chunk format, stop strings across token boundaries", test_stream_and_stop);
    skv_test_add("serve/bad requests: 400 error objects by field, 401, 404, 405, 413", test_bad_requests);
    skv_test_add("serve/queue full: 429 with Retry-After; disconnects cancel (streamed or not)", test_queue_full);
    skv_test_add("serve/KV admission: a request over --kv-mem is a 400, one that must wait is queued", test_kv_admission);
    skv_test_add("serve/two concurrent greedy streams equal their solo runs; prefix reuse, also from a busy slot", test_concurrent_equals_solo);
    skv_test_add("serve/--host ::1 serves IPv6 loopback only", test_ipv6);
}
