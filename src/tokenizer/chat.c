/*
 * chat.c — chat templates without a Jinja engine: the family of a template is recognised from
 * distinctive substrings, and each family is written out by hand (slimkv.h, "Chat templates",
 * says what each family renders). The model-facing entry point, skv_chat_apply, is in
 * model/model_chat.c.
 */
#include "internal.h"

/* A growable string. */
typedef struct sbuf {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t len) {
    if (b->oom) return;
    if (b->n + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + len + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, len);
    b->n += len;
    b->p[b->n] = 0;
}

static void sb_str(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

/* Appends s with ASCII whitespace stripped at both ends (Jinja's `trim` on ASCII). */
static void sb_trim(sbuf *b, const char *s) {
    size_t len = strlen(s), i = 0;
    while (i < len && is_space(s[i])) i++;
    while (len > i && is_space(s[len - 1])) len--;
    sb_add(b, s + i, len - i);
}

skv_chat_family skv_chat_detect(const char *t) {
    if (!t || !*t) return SKV_CHAT_PLAIN;
    if (strstr(t, "<|im_start|>")) return SKV_CHAT_CHATML;
    if (strstr(t, "<|start_header_id|>")) return SKV_CHAT_LLAMA3;
    if (strstr(t, "<start_of_turn>")) return SKV_CHAT_GEMMA;
    return SKV_CHAT_UNKNOWN;
}

const char *skv_chat_family_name(skv_chat_family f) {
    switch (f) {
    case SKV_CHAT_PLAIN: return "plain";
    case SKV_CHAT_CHATML: return "chatml";
    case SKV_CHAT_LLAMA3: return "llama3";
    case SKV_CHAT_GEMMA: return "gemma";
    default: return "unknown";
    }
}

const char *skv_chat_stop(skv_chat_family f) {
    switch (f) {
    case SKV_CHAT_PLAIN: return "\nUser:";
    case SKV_CHAT_CHATML: return "<|im_end|>";
    case SKV_CHAT_LLAMA3: return "<|eot_id|>";
    case SKV_CHAT_GEMMA: return "<end_of_turn>";
    default: return NULL;
    }
}

/* ChatML's default system message: the literal text between "<|im_start|>system" + newline
 * (written "\n" in the Jinja string or as a real newline) and "<|im_end|>", when that text is
 * a plain string constant (no quote, brace or '+': not an expression over messages[0]).
 * Jinja escapes \n \t \\ \' \" are decoded. Returns a malloc'd string or NULL. */
static char *chatml_default_system(const char *t) {
    static const char *opens[2] = {"<|im_start|>system\\n", "<|im_start|>system\n"};
    for (int k = 0; k < 2; k++) {
        for (const char *p = strstr(t, opens[k]); p; p = strstr(p + 1, opens[k])) {
            const char *s = p + strlen(opens[k]);
            const char *e = strstr(s, "<|im_end|>");
            if (!e || e == s || strcspn(s, "'\"{}+") < (size_t)(e - s)) continue;
            char *out = malloc((size_t)(e - s) + 1);
            if (!out) return NULL;
            size_t n = 0;
            for (const char *q = s; q < e; q++) {
                if (*q == '\\' && q + 1 < e) {
                    char c = q[1];
                    out[n++] = c == 'n' ? '\n' : c == 't' ? '\t' : c;
                    q++;
                } else {
                    out[n++] = *q;
                }
            }
            out[n] = 0;
            return out;
        }
    }
    return NULL;
}

static int is_role(const skv_chat_msg *m, const char *r) { return !strcmp(m->role, r); }

static void render_plain(sbuf *b, const skv_chat_msg *m, size_t n, int gen) {
    for (size_t i = 0; i < n; i++) {
        sb_str(b, is_role(&m[i], "system") ? "System" : is_role(&m[i], "user") ? "User" : "Assistant");
        sb_str(b, ": ");
        sb_str(b, m[i].content);
        sb_str(b, "\n\n");
    }
    if (gen) sb_str(b, "Assistant:");
}

static skv_status render_chatml(sbuf *b, const char *t, const skv_chat_msg *m, size_t n, int gen) {
    if (!is_role(&m[0], "system")) {
        char *def = chatml_default_system(t);
        if (def) {
            sb_str(b, "<|im_start|>system\n");
            sb_str(b, def);
            sb_str(b, "<|im_end|>\n");
            free(def);
        }
    }
    for (size_t i = 0; i < n; i++) {
        sb_str(b, "<|im_start|>");
        sb_str(b, m[i].role);
        sb_str(b, "\n");
        sb_str(b, m[i].content);
        sb_str(b, "<|im_end|>\n");
    }
    if (gen) sb_str(b, "<|im_start|>assistant\n");
    return SKV_OK;
}

static void llama3_turn(sbuf *b, const char *role, const char *content) {
    sb_str(b, "<|start_header_id|>");
    sb_str(b, role);
    sb_str(b, "<|end_header_id|>\n\n");
    sb_trim(b, content);
    sb_str(b, "<|eot_id|>");
}

static skv_status render_llama3(sbuf *b, const char *t, const char *bos, const skv_chat_msg *m,
                                size_t n, int gen) {
    sb_str(b, bos ? bos : "<|begin_of_text|>");
    size_t i = 0;
    if (strstr(t, "Cutting Knowledge Date")) {
        /* Llama-3.1 and later: the system header always, with the date lines */
        sb_str(b, "<|start_header_id|>system<|end_header_id|>\n\n");
        sb_str(b, "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n");
        if (is_role(&m[0], "system")) sb_trim(b, m[i++].content);
        sb_str(b, "<|eot_id|>");
    }
    for (; i < n; i++) llama3_turn(b, m[i].role, m[i].content);
    if (gen) sb_str(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
    return SKV_OK;
}

static skv_status render_gemma(sbuf *b, const char *t, const char *bos, const skv_chat_msg *m,
                               size_t n, int gen) {
    const char *prefix = NULL;
    size_t i = 0;
    if (is_role(&m[0], "system")) {
        if (!strstr(t, "first_user_prefix"))
            return skv_set_error(SKV_ERR_ARG, "chat template (gemma): system role not supported "
                                              "by this model's template");
        prefix = m[0].content;
        i = 1;
    }
    sb_str(b, bos ? bos : "<bos>");
    for (size_t k = i; k < n; k++) {
        sb_str(b, "<start_of_turn>");
        sb_str(b, is_role(&m[k], "assistant") ? "model" : m[k].role);
        sb_str(b, "\n");
        if (prefix && k == i) {
            sb_str(b, prefix);
            sb_str(b, "\n\n");
        }
        sb_trim(b, m[k].content);
        sb_str(b, "<end_of_turn>\n");
    }
    if (gen) sb_str(b, "<start_of_turn>model\n");
    return SKV_OK;
}

skv_status skv_chat_render(const char *tmpl, const char *bos, const skv_chat_msg *msgs, size_t n,
                           int gen, char **out) {
    if (!out) return skv_set_error(SKV_ERR_ARG, "chat: NULL output");
    *out = NULL;
    if (!msgs || n == 0) return skv_set_error(SKV_ERR_ARG, "chat: no messages");
    for (size_t i = 0; i < n; i++) {
        if (!msgs[i].role || !msgs[i].content)
            return skv_set_error(SKV_ERR_ARG, "chat: message %zu has no %s", i,
                                 msgs[i].role ? "content" : "role");
        if (!is_role(&msgs[i], "system") && !is_role(&msgs[i], "user") &&
            !is_role(&msgs[i], "assistant"))
            return skv_set_error(SKV_ERR_ARG,
                                 "chat: message %zu: role \"%.40s\" (expected system, user or assistant)",
                                 i, msgs[i].role);
    }
    skv_chat_family f = skv_chat_detect(tmpl);
    sbuf b = {0};
    skv_status st = SKV_OK;
    switch (f) {
    case SKV_CHAT_PLAIN: render_plain(&b, msgs, n, gen); break;
    case SKV_CHAT_CHATML: st = render_chatml(&b, tmpl, msgs, n, gen); break;
    case SKV_CHAT_LLAMA3: st = render_llama3(&b, tmpl, bos, msgs, n, gen); break;
    case SKV_CHAT_GEMMA: st = render_gemma(&b, tmpl, bos, msgs, n, gen); break;
    default:
        st = skv_set_error(SKV_ERR_UNSUPPORTED,
                           "chat template: not one of the known families (ChatML, Llama-3, Gemma)");
    }
    if (!st && b.oom) st = skv_set_error(SKV_ERR_NOMEM, "chat: out of memory");
    if (!st && !b.p) sb_str(&b, ""); /* an empty rendering is still a string */
    if (!st && b.oom) st = skv_set_error(SKV_ERR_NOMEM, "chat: out of memory");
    if (st) {
        free(b.p);
        return st;
    }
    *out = b.p;
    return SKV_OK;
}
