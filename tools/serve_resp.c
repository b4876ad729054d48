/*
 * serve_resp.c — responses in the OpenAI formats: a whole completion or chat completion, the
 * server-sent-event chunks of a streamed one (text_completion / chat.completion.chunk, the
 * usage chunk of stream_options.include_usage, data: [DONE]), logprobs, and the model list.
 * Extensions: usage.kv_bytes (the request's KV cache at its end), usage.kv_policy, and
 * usage.prompt_tokens_details.cached_tokens (prompt tokens reused from the prefix cache).
 */
#include "serve.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

static char *tok_text(const srv *s, int32_t id) {
    char *t = NULL;
    size_t len = 0;
    if (id < 0 || skv_detokenize(s->tok, &id, 1, &t, &len)) return strdup("");
    return t;
}

static cJSON *bytes_of(const char *t) {
    cJSON *a = cJSON_CreateArray();
    for (const unsigned char *p = (const unsigned char *)t; *p; p++) cJSON_AddItemToArray(a, cJSON_CreateNumber(*p));
    return a;
}

/* logprobs of released tokens [from, to) */
static cJSON *logprobs_json(const srv *s, const srv_req *r, int32_t from, int32_t to) {
    if (!r->logprobs) return cJSON_CreateNull();
    cJSON *o = cJSON_CreateObject();
    if (r->chat) {
        cJSON *content = cJSON_AddArrayToObject(o, "content");
        for (int32_t i = from; i < to; i++) {
            const srv_tok *t = &r->toks[i];
            cJSON *e = cJSON_CreateObject();
            char *tx = tok_text(s, t->id);
            cJSON_AddStringToObject(e, "token", tx);
            cJSON_AddNumberToObject(e, "logprob", t->logprob);
            cJSON_AddItemToObject(e, "bytes", bytes_of(tx));
            free(tx);
            cJSON *top = cJSON_AddArrayToObject(e, "top_logprobs");
            for (int k = 0; k < t->n_top && k < r->top_logprobs; k++) {
                cJSON *te = cJSON_CreateObject();
                char *tt = tok_text(s, t->top_id[k]);
                cJSON_AddStringToObject(te, "token", tt);
                cJSON_AddNumberToObject(te, "logprob", t->top_lp[k]);
                cJSON_AddItemToObject(te, "bytes", bytes_of(tt));
                free(tt);
                cJSON_AddItemToArray(top, te);
            }
            cJSON_AddItemToArray(content, e);
        }
        cJSON_AddNullToObject(o, "refusal");
        return o;
    }
    cJSON *toks = cJSON_AddArrayToObject(o, "tokens"), *lps = cJSON_AddArrayToObject(o, "token_logprobs");
    cJSON *tops = r->top_logprobs ? cJSON_AddArrayToObject(o, "top_logprobs") : NULL;
    if (!tops) cJSON_AddNullToObject(o, "top_logprobs");
    cJSON *offs = cJSON_AddArrayToObject(o, "text_offset");
    for (int32_t i = from; i < to; i++) {
        const srv_tok *t = &r->toks[i];
        char *tx = tok_text(s, t->id);
        cJSON_AddItemToArray(toks, cJSON_CreateString(tx));
        free(tx);
        cJSON_AddItemToArray(lps, cJSON_CreateNumber(t->logprob));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)t->off));
        if (tops) {
            cJSON *m = cJSON_CreateObject();
            for (int k = 0; k < t->n_top && k < r->top_logprobs; k++) {
                char *tt = tok_text(s, t->top_id[k]);
                if (!cJSON_GetObjectItemCaseSensitive(m, tt)) cJSON_AddNumberToObject(m, tt, t->top_lp[k]);
                free(tt);
            }
            cJSON_AddItemToArray(tops, m);
        }
    }
    return o;
}

static cJSON *usage_json(const srv_req *r) {
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", r->n_prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", r->n_gen);
    cJSON_AddNumberToObject(u, "total_tokens", r->n_prompt + r->n_gen);
    cJSON *d = cJSON_AddObjectToObject(u, "prompt_tokens_details");
    cJSON_AddNumberToObject(d, "cached_tokens", r->n_cached);
    cJSON_AddNumberToObject(u, "kv_bytes", (double)r->kv_bytes);
    cJSON_AddStringToObject(u, "kv_policy", r->pol_name);
    return u;
}

static cJSON *head(const srv *s, const srv_req *r, const char *object) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", r->id);
    cJSON_AddStringToObject(o, "object", object);
    cJSON_AddNumberToObject(o, "created", (double)r->created);
    cJSON_AddStringToObject(o, "model", s->model_name);
    cJSON_AddStringToObject(o, "system_fingerprint", "slimkv");
    return o;
}

static void add_finish(cJSON *c, const srv_req *r) {
    if (r->finish) cJSON_AddStringToObject(c, "finish_reason", r->finish);
    else cJSON_AddNullToObject(c, "finish_reason");
}

char *srv_resp_full(const srv *s, const srv_req *r) {
    cJSON *o = head(s, r, r->chat ? "chat.completion" : "text_completion");
    cJSON *ch = cJSON_AddArrayToObject(o, "choices"), *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", 0);
    char *text = strndup(r->text ? r->text : "", r->text_len);
    if (r->chat) {
        cJSON *m = cJSON_AddObjectToObject(c, "message");
        cJSON_AddStringToObject(m, "role", "assistant");
        cJSON_AddStringToObject(m, "content", text);
        cJSON_AddNullToObject(m, "refusal");
    } else {
        cJSON_AddStringToObject(c, "text", text);
    }
    free(text);
    cJSON_AddItemToObject(c, "logprobs", logprobs_json(s, r, 0, r->n_toks));
    add_finish(c, r);
    cJSON_AddItemToArray(ch, c);
    cJSON_AddItemToObject(o, "usage", usage_json(r));
    char *out = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return out;
}

typedef struct sse {
    char *p;
    size_t n, cap;
} sse;

static void sse_add(sse *b, cJSON *o) {
    char *j = o ? cJSON_PrintUnformatted(o) : strdup("[DONE]");
    cJSON_Delete(o);
    if (!j) return;
    size_t len = strlen(j), need = b->n + len + 9;
    if (need > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < need) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            free(j);
            return;
        }
        b->p = p, b->cap = cap;
    }
    b->n += (size_t)sprintf(b->p + b->n, "data: %s\n\n", j);
    free(j);
}

static cJSON *chunk(const srv *s, const srv_req *r, cJSON **choice) {
    cJSON *o = head(s, r, r->chat ? "chat.completion.chunk" : "text_completion");
    cJSON *ch = cJSON_AddArrayToObject(o, "choices");
    *choice = cJSON_CreateObject();
    cJSON_AddNumberToObject(*choice, "index", 0);
    cJSON_AddItemToArray(ch, *choice);
    if (r->include_usage) cJSON_AddNullToObject(o, "usage");
    return o;
}

char *srv_resp_chunks(const srv *s, const srv_req *r, size_t *sent_text, int32_t *sent_toks, int *first,
                      int *finished) {
    sse b = {0};
    cJSON *c;
    if (*finished) return NULL;
    if (r->chat && *first) { /* the role first, as OpenAI sends it */
        cJSON *o = chunk(s, r, &c);
        cJSON *d = cJSON_AddObjectToObject(c, "delta");
        cJSON_AddStringToObject(d, "role", "assistant");
        cJSON_AddStringToObject(d, "content", "");
        cJSON_AddNullToObject(c, "logprobs");
        cJSON_AddNullToObject(c, "finish_reason");
        sse_add(&b, o);
    }
    *first = 0;
    if (r->text_len > *sent_text || r->n_toks > *sent_toks) {
        cJSON *o = chunk(s, r, &c);
        char *piece = strndup(r->text + *sent_text, r->text_len - *sent_text);
        if (r->chat) cJSON_AddStringToObject(cJSON_AddObjectToObject(c, "delta"), "content", piece);
        else cJSON_AddStringToObject(c, "text", piece);
        free(piece);
        cJSON_AddItemToObject(c, "logprobs", logprobs_json(s, r, *sent_toks, r->n_toks));
        cJSON_AddNullToObject(c, "finish_reason");
        sse_add(&b, o);
        *sent_text = r->text_len, *sent_toks = r->n_toks;
    }
    if (r->done) {
        if (r->err_http) {
            char *e = srv_error_json("server_error", NULL, NULL, "%s", r->err);
            cJSON *o = cJSON_Parse(e);
            free(e);
            sse_add(&b, o);
        } else {
            cJSON *o = chunk(s, r, &c);
            if (r->chat) cJSON_AddObjectToObject(c, "delta");
            else cJSON_AddStringToObject(c, "text", "");
            cJSON_AddNullToObject(c, "logprobs");
            add_finish(c, r);
            sse_add(&b, o);
            if (r->include_usage) {
                o = head(s, r, r->chat ? "chat.completion.chunk" : "text_completion");
                cJSON_AddArrayToObject(o, "choices");
                cJSON_AddItemToObject(o, "usage", usage_json(r));
                sse_add(&b, o);
            }
        }
        sse_add(&b, NULL);
        *finished = 1;
    }
    return b.p;
}

char *srv_models_json(const srv *s) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "list");
    cJSON *d = cJSON_AddArrayToObject(o, "data"), *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", s->model_name);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)s->start_time);
    cJSON_AddStringToObject(m, "owned_by", "slimkv");
    cJSON_AddNumberToObject(m, "context_length", s->n_ctx);
    cJSON_AddStringToObject(m, "chat_template", skv_chat_family_name(s->chat_family));
    cJSON_AddItemToArray(d, m);
    char *out = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return out;
}
