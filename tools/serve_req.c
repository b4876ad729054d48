/*
 * serve_req.c — a request body (/v1/completions or /v1/chat/completions) checked field by field
 * into an srv_req: wrong types, values out of range, unknown fields, an unknown model, a prompt
 * over the context, features not implemented (n > 1, tools, echo, logit_bias, penalties) are
 * each a 400 with an OpenAI error object naming the field.
 */
#include "serve.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

char *srv_error_json(const char *type, const char *param, const char *code, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cJSON *root = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(e, "message", msg);
    cJSON_AddStringToObject(e, "type", type);
    if (param) cJSON_AddStringToObject(e, "param", param);
    else cJSON_AddNullToObject(e, "param");
    if (code) cJSON_AddStringToObject(e, "code", code);
    else cJSON_AddNullToObject(e, "code");
    char *out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return out;
}

typedef struct pctx {
    srv *s;
    char **err;
} pctx;

#define BAD(param, ...)                                                                    \
    do {                                                                                   \
        *P->err = srv_error_json("invalid_request_error", param, NULL, __VA_ARGS__);       \
        return 400;                                                                        \
    } while (0)

static const cJSON *field(const cJSON *o, const char *k) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, k);
    return it && !cJSON_IsNull(it) ? it : NULL;
}

/* An integer field in [lo, hi]; absent: *out unchanged. */
static int get_int(pctx *P, const cJSON *o, const char *k, int64_t lo, int64_t hi, int64_t *out) {
    const cJSON *it = field(o, k);
    if (!it) return 0;
    if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble))
        BAD(k, "'%s' must be an integer", k);
    if (it->valuedouble < (double)lo || it->valuedouble > (double)hi)
        BAD(k, "'%s' is %.17g: it must be in [%lld, %lld]", k, it->valuedouble, (long long)lo, (long long)hi);
    *out = (int64_t)it->valuedouble;
    return 0;
}

static int get_num(pctx *P, const cJSON *o, const char *k, double lo, double hi, int lo_open, double *out) {
    const cJSON *it = field(o, k);
    if (!it) return 0;
    if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble)) BAD(k, "'%s' must be a number", k);
    const double v = it->valuedouble;
    if (v < lo || v > hi || (lo_open && v == lo))
        BAD(k, "'%s' is %g: it must be in %c%g, %g]", k, v, lo_open ? '(' : '[', lo, hi);
    *out = v;
    return 0;
}

static int get_bool(pctx *P, const cJSON *o, const char *k, int *out) {
    const cJSON *it = field(o, k);
    if (!it) return 0;
    if (!cJSON_IsBool(it)) BAD(k, "'%s' must be true or false", k);
    *out = cJSON_IsTrue(it);
    return 0;
}

static int in_list(const char *k, const char *const *list) {
    for (int i = 0; list[i]; i++)
        if (!strcmp(k, list[i])) return 1;
    return 0;
}

static int check_known(pctx *P, const cJSON *o, const char *const *known, const char *where) {
    const cJSON *it;
    cJSON_ArrayForEach(it, o) {
        if (!it->string || !in_list(it->string, known))
            BAD(it->string, "Unrecognized request argument supplied%s: %.60s", where, it->string ? it->string : "?");
    }
    return 0;
}

/* "kv": {"policy": NAME, "budget": F, ...}: the request's KV method. */
static int parse_kv(pctx *P, const cJSON *kv, srv_req *r) {
    static const char *const known[] = {"policy", "budget", "budget_tokens", "sinks", "recent_frac", "obs_window",
                                        "pool_kernel", "pyramid_beta", "quant_bits", NULL};
    if (!cJSON_IsObject(kv)) BAD("kv", "'kv' must be an object such as {\"policy\": \"snapkv\", \"budget\": 0.1}");
    int rc;
    if ((rc = check_known(P, kv, known, " in 'kv'"))) return rc;
    const cJSON *pn = field(kv, "policy");
    if (pn && !cJSON_IsString(pn)) BAD("kv.policy", "'kv.policy' must be a string");
    const char *name = pn ? pn->valuestring : P->s->def_pol_name;
    if (strlen(name) >= sizeof r->pol_name) BAD("kv.policy", "unknown KV policy '%.40s'", name);
    int found = 0;
    for (int i = 0; i < skv_policy_count(); i++) found |= !strcmp(skv_policy_name(i), name);
    if (!found) BAD("kv.policy", "unknown KV policy '%.40s'", name);
    if (!strcmp(name, "smallkv"))
        BAD("kv.policy", "policy smallkv drives two models: the server has one, so it is not available per request");
    if (P->s->backend == SKV_BACKEND_CUDA && (!strcmp(name, "quant") || !strcmp(name, "kcache")))
        BAD("kv.policy", "policy %s runs on the CPU backend only; this server runs --backend cuda", name);
    snprintf(r->pol_name, sizeof r->pol_name, "%s", name);
    r->pol = skv_policy_default_params(r->pol_name);
    if (!pn) r->pol = P->s->def_pol; /* options on top of the server's default policy */
    r->pol.name = r->pol_name;
    double d;
    int64_t v;
    d = r->pol.budget;
    if ((rc = get_num(P, kv, "budget", 0, 1, 1, &d))) return rc;
    r->pol.budget = (float)d;
    v = r->pol.budget_tokens;
    if ((rc = get_int(P, kv, "budget_tokens", 0, INT32_MAX, &v))) return rc;
    r->pol.budget_tokens = (int32_t)v;
    if (field(kv, "budget_tokens") && !field(kv, "budget")) r->pol.budget = 0;
    v = r->pol.sinks;
    if ((rc = get_int(P, kv, "sinks", 0, 1 << 20, &v))) return rc;
    r->pol.sinks = (int32_t)v;
    d = r->pol.recent_frac;
    if ((rc = get_num(P, kv, "recent_frac", 0, 1, 0, &d))) return rc;
    r->pol.recent_frac = (float)d;
    v = r->pol.obs_window;
    if ((rc = get_int(P, kv, "obs_window", 1, 1 << 20, &v))) return rc;
    r->pol.obs_window = (int32_t)v;
    v = r->pol.pool_kernel;
    if ((rc = get_int(P, kv, "pool_kernel", 1, 1023, &v))) return rc;
    r->pol.pool_kernel = (int32_t)v;
    d = r->pol.pyramid_beta;
    if ((rc = get_num(P, kv, "pyramid_beta", 1, 1e6, 0, &d))) return rc;
    r->pol.pyramid_beta = (float)d;
    v = r->pol.quant_bits;
    if ((rc = get_int(P, kv, "quant_bits", 4, 8, &v))) return rc;
    r->pol.quant_bits = (int32_t)v;
    if (skv_policy_validate(&r->pol, P->s->model)) BAD("kv", "%s", skv_last_error());
    return 0;
}

/* "stop": a string or up to 4 strings. */
static int parse_stop(pctx *P, const cJSON *st, srv_req *r) {
    if (!st) return 0;
    const cJSON *one = st, *it;
    if (cJSON_IsArray(st)) {
        if (cJSON_GetArraySize(st) > SRV_STOP_MAX) BAD("stop", "'stop' holds at most %d strings", SRV_STOP_MAX);
        cJSON_ArrayForEach(it, st) {
            if (!cJSON_IsString(it) || !it->valuestring[0] || strlen(it->valuestring) > 256)
                BAD("stop", "'stop' entries must be non-empty strings of at most 256 bytes");
            r->stop[r->n_stop++] = strdup(it->valuestring);
        }
        return 0;
    }
    if (!cJSON_IsString(one) || !one->valuestring[0] || strlen(one->valuestring) > 256)
        BAD("stop", "'stop' must be a non-empty string (at most 256 bytes) or an array of them");
    r->stop[r->n_stop++] = strdup(one->valuestring);
    return 0;
}

/* Chat messages -> the model's chat template -> text (malloc'd). */
static int parse_messages(pctx *P, const cJSON *msgs, char **text) {
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0)
        BAD("messages", "'messages' must be a non-empty array");
    const int n = cJSON_GetArraySize(msgs);
    if (n > 4096) BAD("messages", "'messages' holds %d messages (at most 4096)", n);
    skv_chat_msg *m = calloc((size_t)n, sizeof *m);
    char **own = calloc((size_t)n, sizeof *own);
    int i = 0, rc = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, msgs) {
        char param[48];
        snprintf(param, sizeof param, "messages[%d]", i);
        const cJSON *role = field(it, "role"), *content = field(it, "content");
        if (!cJSON_IsObject(it) || !cJSON_IsString(role)) {
            *P->err = srv_error_json("invalid_request_error", param, NULL, "%s must be an object with a string 'role'", param);
            rc = 400;
            break;
        }
        m[i].role = !strcmp(role->valuestring, "developer") ? "system" : role->valuestring;
        if (cJSON_IsString(content)) {
            m[i].content = content->valuestring;
        } else if (cJSON_IsArray(content)) { /* text parts, joined */
            size_t len = 0;
            const cJSON *part;
            cJSON_ArrayForEach(part, content) {
                const cJSON *ty = field(part, "type"), *tx = field(part, "text");
                if (!cJSON_IsString(ty) || strcmp(ty->valuestring, "text") || !cJSON_IsString(tx)) {
                    *P->err = srv_error_json("invalid_request_error", param, NULL,
                                             "%s.content: only parts {\"type\": \"text\", \"text\": ...} are supported", param);
                    rc = 400;
                    break;
                }
                len += strlen(tx->valuestring);
            }
            if (rc) break;
            own[i] = malloc(len + 1);
            own[i][0] = 0;
            cJSON_ArrayForEach(part, content) strcat(own[i], field(part, "text")->valuestring);
            m[i].content = own[i];
        } else {
            *P->err = srv_error_json("invalid_request_error", param, NULL, "%s.content must be a string or an array of text parts", param);
            rc = 400;
            break;
        }
        i++;
    }
    if (!rc && skv_chat_apply(P->s->model, m, (size_t)n, 1, text)) {
        *P->err = srv_error_json("invalid_request_error", "messages", NULL, "%s", skv_last_error());
        rc = 400;
    }
    for (int k = 0; k < n; k++) free(own[k]);
    free(own);
    free(m);
    return rc;
}

/* "prompt": a string, an array of one string, or an array of token ids. */
static int parse_prompt(pctx *P, const cJSON *pr, srv_req *r, char **text) {
    if (!pr) BAD("prompt", "'prompt' is required");
    if (cJSON_IsArray(pr) && cJSON_GetArraySize(pr) == 1 && cJSON_IsString(cJSON_GetArrayItem(pr, 0)))
        pr = cJSON_GetArrayItem(pr, 0);
    if (cJSON_IsString(pr)) {
        *text = strdup(pr->valuestring);
        return 0;
    }
    if (!cJSON_IsArray(pr)) BAD("prompt", "'prompt' must be a string, an array of one string or an array of token ids");
    const int n = cJSON_GetArraySize(pr);
    if (n > P->s->n_ctx) BAD("prompt", "'prompt' holds %d tokens: the context is %d", n, P->s->n_ctx);
    r->prompt = malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
    const cJSON *it;
    cJSON_ArrayForEach(it, pr) {
        if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) || it->valuedouble < 0 ||
            it->valuedouble >= P->s->info->n_vocab)
            BAD("prompt", "'prompt' token ids must be integers in [0, %d)", P->s->info->n_vocab);
        r->prompt[r->n_prompt++] = (int32_t)it->valuedouble;
    }
    return 0;
}

static int parse_body(pctx *P, const cJSON *root, int chat, srv_req *r) {
    static const char *const known_c[] = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed",
                                          "stop", "n", "stream", "stream_options", "logprobs", "echo", "suffix",
                                          "best_of", "user", "presence_penalty", "frequency_penalty", "logit_bias",
                                          "kv", "ignore_eos", NULL};
    static const char *const known_ch[] = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature",
                                           "top_p", "top_k", "seed", "stop", "n", "stream", "stream_options",
                                           "logprobs", "top_logprobs", "user", "presence_penalty",
                                           "frequency_penalty", "logit_bias", "response_format", "tools",
                                           "tool_choice", "kv", "ignore_eos", NULL};
    int rc;
    srv *s = P->s;
    if (!cJSON_IsObject(root)) BAD(NULL, "the request body must be a JSON object");
    if ((rc = check_known(P, root, chat ? known_ch : known_c, ""))) return rc;
    const cJSON *model = field(root, "model");
    if (!cJSON_IsString(model)) BAD("model", "'model' is required and must be a string");
    if (strcmp(model->valuestring, s->model_name)) {
        *P->err = srv_error_json("invalid_request_error", "model", "model_not_found",
                                 "The model '%.80s' does not exist: this server has '%s'", model->valuestring, s->model_name);
        return 400;
    }
    int64_t v = 1;
    if ((rc = get_int(P, root, "n", 1, 1, &v))) return rc;
    if ((rc = get_int(P, root, "best_of", 1, 1, &v))) return rc;
    double pen = 0;
    if ((rc = get_num(P, root, "presence_penalty", 0, 0, 0, &pen))) return rc;
    if ((rc = get_num(P, root, "frequency_penalty", 0, 0, 0, &pen))) return rc;
    const cJSON *lb = field(root, "logit_bias");
    if (lb && (!cJSON_IsObject(lb) || cJSON_GetArraySize(lb) > 0)) BAD("logit_bias", "'logit_bias' is not supported");
    if (field(root, "tools") || field(root, "tool_choice")) BAD("tools", "tools and tool calls are not supported");
    if (field(root, "suffix")) BAD("suffix", "'suffix' is not supported");
    int echo = 0;
    if ((rc = get_bool(P, root, "echo", &echo))) return rc;
    if (echo) BAD("echo", "'echo' is not supported");
    const cJSON *rf = field(root, "response_format");
    if (rf) {
        const cJSON *ty = cJSON_IsObject(rf) ? field(rf, "type") : NULL;
        if (!cJSON_IsString(ty) || strcmp(ty->valuestring, "text"))
            BAD("response_format", "only 'response_format': {\"type\": \"text\"} is supported");
    }
    const cJSON *user = field(root, "user");
    if (user && !cJSON_IsString(user)) BAD("user", "'user' must be a string");
    if ((rc = get_bool(P, root, "stream", &r->stream))) return rc;
    const cJSON *so = field(root, "stream_options");
    if (so) {
        static const char *const known_so[] = {"include_usage", NULL};
        if (!cJSON_IsObject(so)) BAD("stream_options", "'stream_options' must be an object");
        if (!r->stream) BAD("stream_options", "'stream_options' is only allowed with 'stream': true");
        if ((rc = check_known(P, so, known_so, " in 'stream_options'"))) return rc;
        if ((rc = get_bool(P, so, "include_usage", &r->include_usage))) return rc;
    }
    if ((rc = get_bool(P, root, "ignore_eos", &r->ignore_eos))) return rc;
    r->sp = skv_sampler_default_params();
    r->sp.temperature = 1.0f, r->sp.top_k = 0, r->sp.top_p = 1.0f, r->sp.repetition_penalty = 1.0f;
    double d = r->sp.temperature;
    if ((rc = get_num(P, root, "temperature", 0, 2, 0, &d))) return rc;
    r->sp.temperature = (float)d;
    d = r->sp.top_p;
    if ((rc = get_num(P, root, "top_p", 0, 1, 1, &d))) return rc;
    r->sp.top_p = (float)d;
    v = 0;
    if ((rc = get_int(P, root, "top_k", 0, INT32_MAX, &v))) return rc;
    r->sp.top_k = (int32_t)v;
    const cJSON *seed = field(root, "seed");
    if (seed) {
        if (!cJSON_IsNumber(seed) || seed->valuedouble != floor(seed->valuedouble) || fabs(seed->valuedouble) > 9.007e15)
            BAD("seed", "'seed' must be an integer");
        r->sp.seed = (uint64_t)(int64_t)seed->valuedouble;
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        r->sp.seed = (uint64_t)ts.tv_nsec * 2654435761u ^ (uint64_t)ts.tv_sec;
    }
    if ((rc = parse_stop(P, field(root, "stop"), r))) return rc;
    if (chat) {
        int lp = 0;
        if ((rc = get_bool(P, root, "logprobs", &lp))) return rc;
        v = 0;
        if ((rc = get_int(P, root, "top_logprobs", 0, SRV_TOP_MAX, &v))) return rc;
        if (v > 0 && !lp) BAD("top_logprobs", "'top_logprobs' needs 'logprobs': true");
        r->logprobs = lp, r->top_logprobs = (int)v;
    } else {
        const cJSON *lp = field(root, "logprobs");
        if (cJSON_IsBool(lp)) BAD("logprobs", "'logprobs' must be an integer in [0, 5] for completions");
        v = -1;
        if ((rc = get_int(P, root, "logprobs", 0, 5, &v))) return rc;
        r->logprobs = v >= 0, r->top_logprobs = v > 0 ? (int)v : 0;
    }
    const cJSON *kv = cJSON_GetObjectItemCaseSensitive(root, "kv");
    if (kv) {
        if ((rc = parse_kv(P, kv, r))) return rc;
    } else {
        r->pol = s->def_pol;
        snprintf(r->pol_name, sizeof r->pol_name, "%s", s->def_pol_name);
        r->pol.name = r->pol_name;
    }
    /* the prompt */
    char *text = NULL;
    if (chat) rc = parse_messages(P, field(root, "messages"), &text);
    else rc = parse_prompt(P, field(root, "prompt"), r, &text);
    if (rc) {
        free(text);
        return rc;
    }
    if (text) {
        size_t n = 0;
        int32_t *ids = NULL;
        skv_status st = skv_model_tokenize(s->model, s->tok, text, strlen(text), &ids, &n); /* BOS as the model asks */
        free(text);
        if (st) BAD(chat ? "messages" : "prompt", "cannot tokenize the prompt: %s", skv_last_error());
        r->prompt = ids, r->n_prompt = (int32_t)n;
        if (n > (size_t)INT32_MAX) BAD("prompt", "prompt too long");
    }
    if (r->n_prompt == 0) BAD(chat ? "messages" : "prompt", "the prompt is empty");
    if (r->n_prompt >= s->n_ctx)
        BAD(chat ? "messages" : "prompt", "This model's maximum context length is %d tokens; the prompt has %d",
            s->n_ctx, r->n_prompt);
    if (chat && s->chat_family != SKV_CHAT_UNKNOWN && r->n_stop < SRV_STOP_MAX + 1)
        r->stop[r->n_stop++] = strdup(skv_chat_stop(s->chat_family));
    /* max_tokens: OpenAI's defaults (16 for completions, the rest of the context for chat) */
    const char *mt_name = chat && field(root, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
    v = chat ? s->n_ctx - r->n_prompt : 16;
    if ((rc = get_int(P, root, mt_name, 0, INT32_MAX, &v))) return rc;
    if (r->n_prompt + v > s->n_ctx)
        BAD(mt_name, "This model's maximum context length is %d tokens. However, you requested %lld tokens (%d in "
            "the prompt, %lld in the completion)", s->n_ctx, (long long)(r->n_prompt + v), r->n_prompt, (long long)v);
    r->max_tokens = (int32_t)v;
    /* the cache this request may need at most, for admission */
    int64_t keep = r->n_prompt;
    const int ev = skv_policy_evicts(r->pol_name);
    if (ev > 0) {
        int64_t b = r->pol.budget > 0 ? (int64_t)ceil(r->pol.budget * r->n_prompt) : r->pol.budget_tokens;
        if (b < keep) keep = b + r->pol.obs_window + 64;
        if (keep > r->n_prompt) keep = r->n_prompt;
    }
    r->kv_need = (keep + r->max_tokens + 32) * s->kv_tok_bytes;
    if (r->kv_need > s->kv_mem)
        BAD("max_tokens", "this request needs up to %lld bytes of KV cache; the server allows %lld (--kv-mem)",
            (long long)r->kv_need, (long long)s->kv_mem);
    return 0;
}

int srv_parse(srv *s, const char *body, size_t len, int chat, srv_req **out, char **err) {
    *out = NULL;
    *err = NULL;
    pctx P = {.s = s, .err = err};
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!root) {
        *err = srv_error_json("invalid_request_error", NULL, NULL, "the request body is not valid JSON");
        return 400;
    }
    srv_req *r = calloc(1, sizeof *r);
    if (!r) {
        cJSON_Delete(root);
        *err = srv_error_json("server_error", NULL, NULL, "out of memory");
        return 503;
    }
    pthread_cond_init(&r->cv, NULL);
    int rc = parse_body(&P, root, chat, r);
    cJSON_Delete(root);
    if (rc) {
        srv_req_free(r);
        return rc;
    }
    static unsigned long long counter;
    r->chat = chat;
    r->created = (int64_t)time(NULL);
    snprintf(r->id, sizeof r->id, "%s-%llx%06llx", chat ? "chatcmpl" : "cmpl", (unsigned long long)r->created,
             __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED));
    *out = r;
    return 0;
}
