/*
 * regex.c — PCRE2 (8-bit, UTF + UCP, JIT when available) for the Split / ByteLevel
 * pre-tokenizers and the Replace normalizer, and the match/gap cover of a string that
 * tokenizers' Pattern::find_matches produces.
 */
#include "tok_internal.h"

/* The reference compiles patterns with Oniguruma, whose Unicode \w is letters, marks, Nd, Nl,
 * connector punctuation and the joiners ZWNJ/ZWJ; PCRE2's (UCP) \w is letters, all numbers and
 * '_' only. Rewrite \w (anywhere) and \W (outside a class) into Oniguruma's set. */
#define ONIG_WORD "\\p{L}\\p{M}\\p{Nd}\\p{Nl}\\p{Pc}\\x{200C}\\x{200D}"

static int rewrite_word_classes(const char *p, skv_buf *out) {
    int in_class = 0;
    for (size_t i = 0; p[i]; i++) {
        char c = p[i];
        if (c == '\\' && p[i + 1]) {
            char e = p[i + 1];
            int bad;
            if (e == 'w')
                bad = skv_buf_append(out, in_class ? ONIG_WORD : "[" ONIG_WORD "]",
                                     strlen(ONIG_WORD) + (in_class ? 0 : 2));
            else if (e == 'W' && !in_class)
                bad = skv_buf_append(out, "[^" ONIG_WORD "]", strlen(ONIG_WORD) + 3);
            else
                bad = skv_buf_append(out, p + i, 2);
            if (bad) return -1;
            i++;
            continue;
        }
        if (c == '[' && !in_class) {
            in_class = 1;
            if (skv_buf_append(out, p + i, 1)) return -1;
            /* a ']' right after '[' or '[^' is a literal */
            if (p[i + 1] == '^') {
                if (skv_buf_append(out, "^", 1)) return -1;
                i++;
            }
            if (p[i + 1] == ']') {
                if (skv_buf_append(out, "]", 1)) return -1;
                i++;
            }
            continue;
        }
        if (c == ']' && in_class) in_class = 0;
        if (skv_buf_append(out, &c, 1)) return -1;
    }
    return skv_buf_append(out, "", 0);
}

skv_status skv_regex_compile(skv_regex *re, const char *pattern, const char *path,
                             const char *field) {
    int err = 0;
    PCRE2_SIZE erroff = 0;
    skv_buf pat = {0};
    if (rewrite_word_classes(pattern, &pat)) {
        skv_buf_free(&pat);
        return skv_tok_nomem();
    }
    re->code = pcre2_compile((PCRE2_SPTR)pat.buf, pat.len, PCRE2_UTF | PCRE2_UCP, &err, &erroff, NULL);
    skv_buf_free(&pat);
    if (!re->code) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(err, msg, sizeof msg);
        return skv_set_error(SKV_ERR_UNSUPPORTED, "%s: %s: regex cannot be compiled at offset %zu: %s",
                             path, field, (size_t)erroff, (const char *)msg);
    }
    pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE); /* failure just means no JIT */
    return SKV_OK;
}

void skv_regex_free(skv_regex *re) {
    if (re->code) pcre2_code_free(re->code);
    re->code = NULL;
}

static int spans_push(skv_spans *s, size_t start, size_t end, int is_match) {
    if (s->n == s->cap) {
        size_t ncap = s->cap ? 2 * s->cap : 64;
        skv_span *nv = realloc(s->v, ncap * sizeof *nv);
        if (!nv) return -1;
        s->v = nv;
        s->cap = ncap;
    }
    s->v[s->n++] = (skv_span){start, end, is_match};
    return 0;
}

/* Next match of the literal at or after pos: sets [*ms, *me); 0 if none. */
static int lit_next(const char *lit, size_t lit_len, const char *s, size_t n, size_t pos,
                    size_t *ms, size_t *me) {
    if (lit_len == 0 || lit_len > n) return 0;
    for (size_t i = pos; i + lit_len <= n; i++) {
        if (s[i] == lit[0] && memcmp(s + i, lit, lit_len) == 0) {
            *ms = i;
            *me = i + lit_len;
            return 1;
        }
    }
    return 0;
}

skv_status skv_find_matches(const skv_regex *re, const char *lit, size_t lit_len, const char *s,
                            size_t n, pcre2_match_data **md, skv_spans *out) {
    out->n = 0;
    if (n == 0) return spans_push(out, 0, 0, 0) ? skv_tok_nomem() : SKV_OK;
    if (re && !*md) {
        *md = pcre2_match_data_create(4, NULL);
        if (!*md) return skv_set_error(SKV_ERR_NOMEM, "tokenizer: cannot allocate regex match data");
    }
    size_t prev = 0, pos = 0;
    while (pos <= n) {
        size_t ms, me;
        if (re) {
            /* The subject was validated once by the caller: skip PCRE2's per-call UTF check,
             * which would make the scan quadratic. */
            int rc = pcre2_match(re->code, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, *md, NULL);
            if (rc == PCRE2_ERROR_NOMATCH) break;
            if (rc < 0) {
                PCRE2_UCHAR msg[160];
                pcre2_get_error_message(rc, msg, sizeof msg);
                return skv_set_error(SKV_ERR_UNSUPPORTED, "tokenizer: regex match failed: %s",
                                     (const char *)msg);
            }
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(*md);
            ms = ov[0];
            me = ov[1];
        } else if (!lit_next(lit, lit_len, s, n, pos, &ms, &me)) {
            break;
        }
        if (me == ms) { /* empty match: drop it and step over one character */
            if (ms >= n) break;
            pos = ms + 1;
            while (pos < n && ((unsigned char)s[pos] & 0xc0) == 0x80) pos++;
            continue;
        }
        if (prev != ms && spans_push(out, prev, ms, 0)) return skv_tok_nomem();
        if (spans_push(out, ms, me, 1)) return skv_tok_nomem();
        prev = pos = me;
    }
    if (prev != n && spans_push(out, prev, n, 0)) return skv_tok_nomem();
    return SKV_OK;
}
