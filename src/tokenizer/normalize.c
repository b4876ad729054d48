/*
 * normalize.c — tokenizer.json "normalizer": NFC, NFD, NFKC, NFKD (utf8proc), Lowercase,
 * Prepend, Replace (literal or regex), Strip, and Sequence of these. Offsets are not tracked:
 * the engine needs ids only.
 */
#include "tok_internal.h"

#include <utf8proc.h>

skv_status skv_norm_parse(const cJSON *j, const char *path, const char *field, skv_norm *n) {
    memset(n, 0, sizeof *n);
    const char *type;
    skv_status st = skv_json_type(j, path, field, &type);
    if (st) return st;
    char f[200];
    if (!strcmp(type, "Sequence")) {
        n->kind = NORM_SEQUENCE;
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "normalizers");
        if (!cJSON_IsArray(arr))
            return skv_set_error(SKV_ERR_FORMAT, "%s: %s.normalizers: expected an array", path, field);
        int k = cJSON_GetArraySize(arr);
        n->kids = calloc((size_t)(k ? k : 1), sizeof *n->kids);
        if (!n->kids) return skv_tok_nomem();
        const cJSON *it;
        cJSON_ArrayForEach(it, arr) {
            snprintf(f, sizeof f, "%s.normalizers[%d]", field, n->n_kids);
            st = skv_norm_parse(it, path, f, &n->kids[n->n_kids]);
            n->n_kids++; /* counted even on failure so that free releases its parts */
            if (st) return st;
        }
    } else if (!strcmp(type, "NFC")) {
        n->kind = NORM_NFC;
    } else if (!strcmp(type, "NFD")) {
        n->kind = NORM_NFD;
    } else if (!strcmp(type, "NFKC")) {
        n->kind = NORM_NFKC;
    } else if (!strcmp(type, "NFKD")) {
        n->kind = NORM_NFKD;
    } else if (!strcmp(type, "Lowercase")) {
        n->kind = NORM_LOWERCASE;
    } else if (!strcmp(type, "Prepend")) {
        n->kind = NORM_PREPEND;
        const char *p = skv_json_str(j, "prepend");
        if (!p) return skv_set_error(SKV_ERR_FORMAT, "%s: %s.prepend: missing or not a string", path, field);
        n->content_len = strlen(p);
        if (!(n->content = skv_tok_strndup(p, n->content_len))) return skv_tok_nomem();
    } else if (!strcmp(type, "Replace")) {
        n->kind = NORM_REPLACE;
        const char *c = skv_json_str(j, "content");
        if (!c) return skv_set_error(SKV_ERR_FORMAT, "%s: %s.content: missing or not a string", path, field);
        n->content_len = strlen(c);
        if (!(n->content = skv_tok_strndup(c, n->content_len))) return skv_tok_nomem();
        snprintf(f, sizeof f, "%s.pattern", field);
        st = skv_json_pattern(cJSON_GetObjectItemCaseSensitive(j, "pattern"), path, f, &n->pat,
                              &n->pat_len, &n->re);
        if (st) return st;
    } else if (!strcmp(type, "Strip")) {
        n->kind = NORM_STRIP;
        n->strip_left = skv_json_bool(j, "strip_left", 1);
        n->strip_right = skv_json_bool(j, "strip_right", 1);
    } else {
        return skv_set_error(SKV_ERR_UNSUPPORTED,
                             "%s: %s.type: normalizer \"%s\" is not supported (supported: Sequence, "
                             "NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace, Strip)",
                             path, field, type);
    }
    return SKV_OK;
}

void skv_norm_free(skv_norm *n) {
    for (int i = 0; i < n->n_kids; i++) skv_norm_free(&n->kids[i]);
    free(n->kids);
    free(n->pat);
    free(n->content);
    skv_regex_free(&n->re);
    memset(n, 0, sizeof *n);
}

static skv_status unicode_form(utf8proc_option_t opt, const char *s, size_t len, skv_buf *out) {
    if (len == 0) return SKV_OK;
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)len, &dst,
                                      opt | UTF8PROC_STABLE);
    if (r < 0) {
        free(dst);
        if (r == UTF8PROC_ERROR_NOMEM) return skv_tok_nomem();
        return skv_set_error(SKV_ERR_ARG, "tokenizer: Unicode normalization failed: %s",
                             utf8proc_errmsg(r));
    }
    int bad = skv_buf_append(out, dst, (size_t)r);
    free(dst);
    return bad ? skv_tok_nomem() : SKV_OK;
}

static skv_status lowercase(const char *s, size_t len, skv_buf *out) {
    size_t i = 0;
    while (i < len) {
        uint32_t cp;
        int l = skv_utf8_decode(s + i, len - i, &cp);
        char enc[8];
        int el;
        if (cp == 0x130) { /* the one unconditional multi-character lowercase mapping (Rust) */
            memcpy(enc, "i\xcc\x87", 3);
            el = 3;
        } else {
            el = skv_utf8_encode((uint32_t)utf8proc_tolower((utf8proc_int32_t)cp), enc);
        }
        if (skv_buf_append(out, enc, (size_t)el)) return skv_tok_nomem();
        i += (size_t)l;
    }
    return SKV_OK;
}

static skv_status replace(const skv_norm *n, const char *s, size_t len, skv_buf *out) {
    skv_spans spans = {0};
    pcre2_match_data *md = NULL;
    skv_status st = skv_find_matches(n->re.code ? &n->re : NULL, n->pat, n->pat_len, s, len, &md,
                                     &spans);
    for (size_t i = 0; st == SKV_OK && i < spans.n; i++) {
        const skv_span *sp = &spans.v[i];
        int bad = sp->is_match ? skv_buf_append(out, n->content, n->content_len)
                               : skv_buf_append(out, s + sp->start, sp->end - sp->start);
        if (bad) st = skv_tok_nomem();
    }
    if (md) pcre2_match_data_free(md);
    free(spans.v);
    return st;
}

static skv_status strip(const skv_norm *n, const char *s, size_t len, skv_buf *out) {
    size_t a = 0, b = len;
    while (n->strip_left && a < b) {
        uint32_t cp;
        int l = skv_utf8_decode(s + a, b - a, &cp);
        if (!skv_is_whitespace(cp)) break;
        a += (size_t)l;
    }
    while (n->strip_right && b > a) {
        size_t k = b - 1;
        while (k > a && ((unsigned char)s[k] & 0xc0) == 0x80) k--;
        uint32_t cp;
        skv_utf8_decode(s + k, b - k, &cp);
        if (!skv_is_whitespace(cp)) break;
        b = k;
    }
    return skv_buf_append(out, s + a, b - a) ? skv_tok_nomem() : SKV_OK;
}

skv_status skv_norm_apply(const skv_norm *n, const char *s, size_t len, skv_buf *out,
                          skv_buf *tmp) {
    out->len = 0;
    if (skv_buf_reserve(out, len)) return skv_tok_nomem();
    out->buf[0] = 0;
    switch (n->kind) {
    case NORM_SEQUENCE: {
        /* Ping-pong between out and a local buffer; tmp is the children's scratch. */
        skv_buf cur = {0}, next = {0};
        skv_status st = skv_buf_append(&cur, s, len) ? skv_tok_nomem() : SKV_OK;
        for (int i = 0; st == SKV_OK && i < n->n_kids; i++) {
            st = skv_norm_apply(&n->kids[i], cur.buf, cur.len, &next, tmp);
            skv_buf t = cur;
            cur = next;
            next = t;
        }
        if (st == SKV_OK && skv_buf_append(out, cur.buf, cur.len)) st = skv_tok_nomem();
        skv_buf_free(&cur);
        skv_buf_free(&next);
        return st;
    }
    case NORM_NFC: return unicode_form(UTF8PROC_COMPOSE, s, len, out);
    case NORM_NFD: return unicode_form(UTF8PROC_DECOMPOSE, s, len, out);
    case NORM_NFKC: return unicode_form(UTF8PROC_COMPOSE | UTF8PROC_COMPAT, s, len, out);
    case NORM_NFKD: return unicode_form(UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT, s, len, out);
    case NORM_LOWERCASE: return lowercase(s, len, out);
    case NORM_PREPEND:
        if (len && skv_buf_append(out, n->content, n->content_len)) return skv_tok_nomem();
        return skv_buf_append(out, s, len) ? skv_tok_nomem() : SKV_OK;
    case NORM_REPLACE: return replace(n, s, len, out);
    case NORM_STRIP: return strip(n, s, len, out);
    }
    return SKV_OK;
}
