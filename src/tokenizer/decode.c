/*
 * decode.c — tokenizer.json "decoder" (ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip,
 * and Sequence of these) and skv_detokenize, which runs the chain over the whole list of token
 * strings exactly as tokenizers' decode_chain does. The streaming decoder lives in detok.c.
 */
#include "tok_internal.h"

/* ---------------------------------------------------------------------------------- parsing */

static skv_status add_step(skv_decoder *d, const cJSON *j, const char *path, const char *field) {
    const char *type;
    skv_status st = skv_json_type(j, path, field, &type);
    if (st) return st;
    char f[200];
    if (!strcmp(type, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "decoders");
        if (!cJSON_IsArray(arr))
            return skv_set_error(SKV_ERR_FORMAT, "%s: %s.decoders: expected an array", path, field);
        int i = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, arr) {
            snprintf(f, sizeof f, "%s.decoders[%d]", field, i++);
            if ((st = add_step(d, it, path, f))) return st;
        }
        return SKV_OK;
    }
    skv_dec_step *ns = realloc(d->steps, (size_t)(d->n_steps + 1) * sizeof *ns);
    if (!ns) return skv_tok_nomem();
    d->steps = ns;
    skv_dec_step *s = &d->steps[d->n_steps++];
    memset(s, 0, sizeof *s);
    if (!strcmp(type, "ByteLevel")) {
        s->kind = DEC_BYTELEVEL;
    } else if (!strcmp(type, "ByteFallback")) {
        s->kind = DEC_BYTEFALLBACK;
    } else if (!strcmp(type, "Fuse")) {
        s->kind = DEC_FUSE;
    } else if (!strcmp(type, "Metaspace")) {
        s->kind = DEC_METASPACE;
        if ((st = skv_json_char(j, "replacement", path, field, 0x2581, &s->replacement))) return st;
        const char *scheme = skv_json_str(j, "prepend_scheme");
        if (scheme)
            s->prepend = !strcmp(scheme, "never") ? PREPEND_NEVER
                         : !strcmp(scheme, "first") ? PREPEND_FIRST : PREPEND_ALWAYS;
        else
            s->prepend = skv_json_bool(j, "add_prefix_space", 1) ? PREPEND_ALWAYS : PREPEND_NEVER;
    } else if (!strcmp(type, "Replace")) {
        s->kind = DEC_REPLACE;
        const char *c = skv_json_str(j, "content");
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(j, "pattern");
        const char *lit = cJSON_IsObject(pat) ? skv_json_str(pat, "String") : NULL;
        if (!c || !lit || !*lit)
            return skv_set_error(SKV_ERR_UNSUPPORTED, "%s: %s: only Replace with a non-empty "
                                 "{\"String\": ...} pattern and a string content is supported", path, field);
        s->pat_len = strlen(lit);
        s->content_len = strlen(c);
        s->pat = skv_tok_strndup(lit, s->pat_len);
        s->content = skv_tok_strndup(c, s->content_len);
        if (!s->pat || !s->content) return skv_tok_nomem();
    } else if (!strcmp(type, "Strip")) {
        s->kind = DEC_STRIP;
        if ((st = skv_json_char(j, "content", path, field, ' ', &s->strip_char))) return st;
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "start");
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(j, "stop");
        s->strip_start = cJSON_IsNumber(a) ? a->valueint : 0;
        s->strip_stop = cJSON_IsNumber(b) ? b->valueint : 0;
        if (s->strip_start < 0 || s->strip_stop < 0)
            return skv_set_error(SKV_ERR_FORMAT, "%s: %s: negative start/stop", path, field);
    } else {
        return skv_set_error(SKV_ERR_UNSUPPORTED,
                             "%s: %s.type: decoder \"%s\" is not supported (supported: Sequence, "
                             "ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip)",
                             path, field, type);
    }
    return SKV_OK;
}

skv_status skv_decoder_parse(const cJSON *j, const char *path, skv_decoder *d) {
    memset(d, 0, sizeof *d);
    if (!j || cJSON_IsNull(j)) return SKV_OK;
    d->present = 1;
    return add_step(d, j, path, "decoder");
}

void skv_decoder_free(skv_decoder *d) {
    for (int i = 0; i < d->n_steps; i++) {
        free(d->steps[i].pat);
        free(d->steps[i].content);
    }
    free(d->steps);
    memset(d, 0, sizeof *d);
}

/* ------------------------------------------------------------------ the chain over a list */

typedef struct strlist {
    skv_buf *v; /* n strings (owned) */
    size_t n, cap;
} strlist;

static skv_buf *list_add(strlist *l) {
    if (l->n == l->cap) {
        size_t ncap = l->cap ? 2 * l->cap : 16;
        skv_buf *nv = realloc(l->v, ncap * sizeof *nv);
        if (!nv) return NULL;
        l->v = nv;
        l->cap = ncap;
    }
    skv_buf *b = &l->v[l->n++];
    memset(b, 0, sizeof *b);
    if (skv_buf_reserve(b, 0)) return NULL; /* always allocated, so buf is never NULL */
    b->buf[0] = 0;
    return b;
}

static void list_free(strlist *l) {
    for (size_t i = 0; i < l->n; i++) skv_buf_free(&l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

/* Bytes of a token under the byte-level alphabet, or its raw bytes if a character is outside
 * the alphabet (as the reference does). */
int skv_bytelevel_token_bytes(const char *s, size_t n, skv_buf *out) {
    size_t start = out->len, i = 0;
    while (i < n) {
        uint32_t cp;
        int l = skv_utf8_decode(s + i, n - i, &cp);
        int b = skv_bytelevel_byte(cp);
        if (b < 0) {
            out->len = start;
            return skv_buf_append(out, s, n);
        }
        unsigned char c = (unsigned char)b;
        if (skv_buf_append(out, &c, 1)) return -1;
        i += (size_t)l;
    }
    return 0;
}

/* "<0xXX>" -> the byte, else -1. */
int skv_byte_token(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10
              : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Replace every occurrence of pat in s[0..n) by rep, appending to out. */
int skv_replace_all(const char *s, size_t n, const char *pat, size_t pl, const char *rep,
                    size_t rl, skv_buf *out) {
    size_t i = 0, run = 0;
    while (pl && i + pl <= n) {
        if (memcmp(s + i, pat, pl) == 0) {
            if (skv_buf_append(out, s + run, i - run) || skv_buf_append(out, rep, rl)) return -1;
            i += pl;
            run = i;
        } else {
            i++;
        }
    }
    return skv_buf_append(out, s + run, n - run);
}

/* Strip up to start leading and stop trailing copies of character c (UTF-8 enc[0..el)). */
static void strip_token(skv_buf *b, const char *enc, int el, int start, int stop) {
    size_t a = 0, e = b->len;
    for (int k = 0; k < start && e - a >= (size_t)el && memcmp(b->buf + a, enc, (size_t)el) == 0; k++)
        a += (size_t)el;
    for (int k = 0; k < stop && e - a >= (size_t)el && memcmp(b->buf + e - el, enc, (size_t)el) == 0; k++)
        e -= (size_t)el;
    memmove(b->buf, b->buf + a, e - a);
    b->len = e - a;
    b->buf[b->len] = 0;
}

/* Flush a run of byte-fallback bytes into out: the run as text if valid UTF-8, else one U+FFFD
 * per byte (as tokenizers' ByteFallback decoder). */
static int flush_bytes(skv_buf *run, strlist *out) {
    if (run->len == 0) return 0;
    skv_buf *b = list_add(out);
    if (!b) return -1;
    if (skv_utf8_is_valid(run->buf, run->len)) {
        if (skv_buf_append(b, run->buf, run->len)) return -1;
    } else {
        for (size_t k = 0; k < run->len; k++)
            if (skv_buf_append(b, "\xef\xbf\xbd", 3)) return -1;
    }
    run->len = 0;
    return 0;
}

static skv_status run_step(const skv_dec_step *s, strlist *in, strlist *out) {
    char enc[4];
    int el;
    skv_buf run = {0};
    int bad = 0;
    switch (s->kind) {
    case DEC_BYTELEVEL: {
        skv_buf bytes = {0}, *b = list_add(out);
        bad = !b;
        for (size_t i = 0; !bad && i < in->n; i++)
            bad = skv_bytelevel_token_bytes(in->v[i].buf, in->v[i].len, &bytes) != 0;
        if (!bad) bad = skv_utf8_append_lossy(b, bytes.buf ? bytes.buf : "", bytes.len) != 0;
        skv_buf_free(&bytes);
        break;
    }
    case DEC_FUSE: {
        skv_buf *b = list_add(out);
        bad = !b;
        for (size_t i = 0; !bad && i < in->n; i++) bad = skv_buf_append(b, in->v[i].buf, in->v[i].len);
        break;
    }
    case DEC_METASPACE:
        el = skv_utf8_encode(s->replacement, enc);
        for (size_t i = 0; !bad && i < in->n; i++) {
            skv_buf *b = list_add(out);
            int drop = i == 0 && s->prepend != PREPEND_NEVER;
            bad = !b || skv_replace_all(in->v[i].buf, in->v[i].len, enc, (size_t)el, " ",
                                        drop ? 0 : 1, b);
        }
        break;
    case DEC_REPLACE:
        for (size_t i = 0; !bad && i < in->n; i++) {
            skv_buf *b = list_add(out);
            bad = !b || skv_replace_all(in->v[i].buf, in->v[i].len, s->pat, s->pat_len, s->content,
                                        s->content_len, b);
        }
        break;
    case DEC_BYTEFALLBACK:
        for (size_t i = 0; !bad && i < in->n; i++) {
            int byte = skv_byte_token(in->v[i].buf, in->v[i].len);
            if (byte >= 0) {
                unsigned char c = (unsigned char)byte;
                bad = skv_buf_append(&run, &c, 1);
                continue;
            }
            skv_buf *b;
            bad = flush_bytes(&run, out) || !(b = list_add(out)) ||
                  skv_buf_append(b, in->v[i].buf, in->v[i].len);
        }
        if (!bad) bad = flush_bytes(&run, out);
        skv_buf_free(&run);
        break;
    case DEC_STRIP:
        el = skv_utf8_encode(s->strip_char, enc);
        for (size_t i = 0; !bad && i < in->n; i++) {
            skv_buf *b = list_add(out);
            bad = !b || skv_buf_append(b, in->v[i].buf, in->v[i].len);
            if (!bad) strip_token(b, enc, el, s->strip_start, s->strip_stop);
        }
        break;
    }
    return bad ? skv_tok_nomem() : SKV_OK;
}

skv_status skv_detokenize(const skv_tokenizer *tok, const int32_t *ids, size_t n_ids, char **text,
                          size_t *len) {
    if (text) *text = NULL;
    if (len) *len = 0;
    if (!tok || !text || (n_ids && !ids))
        return skv_set_error(SKV_ERR_ARG, "skv_detokenize: NULL argument");
    for (size_t i = 0; i < n_ids; i++)
        if (ids[i] < 0 || ids[i] >= tok->n_vocab)
            return skv_set_error(SKV_ERR_ARG, "skv_detokenize: id %d at position %zu is out of range "
                                 "[0, %d)", (int)ids[i], i, (int)tok->n_vocab);
    strlist a = {0}, b = {0};
    skv_status st = SKV_OK;
    for (size_t i = 0; i < n_ids && st == SKV_OK; i++) {
        const char *s = tok->id_str[ids[i]];
        if (!s) continue; /* an id no token has: skipped, as the reference does */
        skv_buf *e = list_add(&a);
        if (!e || skv_buf_append(e, s, tok->id_len[ids[i]])) st = skv_tok_nomem();
    }
    for (int k = 0; st == SKV_OK && k < tok->dec.n_steps; k++) {
        st = run_step(&tok->dec.steps[k], &a, &b);
        list_free(&a);
        a = b;
        memset(&b, 0, sizeof b);
    }
    skv_buf out = {0};
    if (st == SKV_OK && skv_buf_reserve(&out, 0)) st = skv_tok_nomem();
    for (size_t i = 0; st == SKV_OK && i < a.n; i++) {
        if (!tok->dec.present && i > 0 && skv_buf_append(&out, " ", 1)) st = skv_tok_nomem();
        if (st == SKV_OK && skv_buf_append(&out, a.v[i].buf, a.v[i].len)) st = skv_tok_nomem();
    }
    list_free(&a);
    list_free(&b);
    if (st) {
        skv_buf_free(&out);
        return st;
    }
    out.buf[out.len] = 0;
    *text = out.buf;
    if (len) *len = out.len;
    return SKV_OK;
}
