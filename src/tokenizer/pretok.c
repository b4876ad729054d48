/*
 * pretok.c — tokenizer.json "pre_tokenizer": ByteLevel (GPT-2 regex + byte-to-char mapping),
 * Split (regex or literal, with every SplitDelimiterBehavior and invert), Metaspace, Digits,
 * Whitespace, WhitespaceSplit, and Sequence of these. Each works on the piece list w->a of an
 * encode (see tok_internal.h) and leaves its result there; pieces that already carry an id
 * (added tokens) pass through untouched. Empty pieces are dropped, as the reference does.
 */
#include "tok_internal.h"

/* The ByteLevel pre-tokenizer's regex (GPT-2). */
static const char *const GPT2_PATTERN =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
/* The Whitespace pre-tokenizer's regex; its matches are kept. */
static const char *const WHITESPACE_PATTERN = "\\w+|[^\\w\\s]+";

static const struct {
    const char *name;
    skv_split_behavior b;
} BEHAVIORS[] = {
    {"Removed", SPLIT_REMOVED},
    {"Isolated", SPLIT_ISOLATED},
    {"MergedWithPrevious", SPLIT_MERGED_WITH_PREVIOUS},
    {"MergedWithNext", SPLIT_MERGED_WITH_NEXT},
    {"Contiguous", SPLIT_CONTIGUOUS},
};

static skv_status parse_metaspace(const cJSON *j, const char *path, const char *field,
                                  skv_pretok *p) {
    p->kind = PRE_METASPACE;
    skv_status st = skv_json_char(j, "replacement", path, field, 0x2581, &p->replacement);
    if (st) return st;
    const char *scheme = skv_json_str(j, "prepend_scheme");
    if (scheme) {
        if (!strcmp(scheme, "always")) p->prepend = PREPEND_ALWAYS;
        else if (!strcmp(scheme, "first")) p->prepend = PREPEND_FIRST;
        else if (!strcmp(scheme, "never")) p->prepend = PREPEND_NEVER;
        else
            return skv_set_error(SKV_ERR_UNSUPPORTED, "%s: %s.prepend_scheme: unknown value \"%s\"",
                                 path, field, scheme);
    } else { /* files written before prepend_scheme existed */
        p->prepend = skv_json_bool(j, "add_prefix_space", 1) ? PREPEND_ALWAYS : PREPEND_NEVER;
    }
    p->split = skv_json_bool(j, "split", 1);
    return SKV_OK;
}

skv_status skv_pretok_parse(const cJSON *j, const char *path, const char *field, skv_pretok *p) {
    memset(p, 0, sizeof *p);
    const char *type;
    skv_status st = skv_json_type(j, path, field, &type);
    if (st) return st;
    char f[200];
    if (!strcmp(type, "Sequence")) {
        p->kind = PRE_SEQUENCE;
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "pretokenizers");
        if (!cJSON_IsArray(arr))
            return skv_set_error(SKV_ERR_FORMAT, "%s: %s.pretokenizers: expected an array", path, field);
        int k = cJSON_GetArraySize(arr);
        p->kids = calloc((size_t)(k ? k : 1), sizeof *p->kids);
        if (!p->kids) return skv_tok_nomem();
        const cJSON *it;
        cJSON_ArrayForEach(it, arr) {
            snprintf(f, sizeof f, "%s.pretokenizers[%d]", field, p->n_kids);
            st = skv_pretok_parse(it, path, f, &p->kids[p->n_kids]);
            p->n_kids++;
            if (st) return st;
        }
        return SKV_OK;
    }
    if (!strcmp(type, "ByteLevel")) {
        p->kind = PRE_BYTELEVEL;
        p->add_prefix_space = skv_json_bool(j, "add_prefix_space", 1);
        p->use_regex = skv_json_bool(j, "use_regex", 1);
        if (p->use_regex) {
            snprintf(f, sizeof f, "%s (ByteLevel regex)", field);
            if ((st = skv_regex_compile(&p->re, GPT2_PATTERN, path, f))) return st;
            p->has_re = 1;
        }
        return SKV_OK;
    }
    if (!strcmp(type, "Split")) {
        p->kind = PRE_SPLIT;
        snprintf(f, sizeof f, "%s.pattern", field);
        st = skv_json_pattern(cJSON_GetObjectItemCaseSensitive(j, "pattern"), path, f, &p->lit,
                              &p->lit_len, &p->re);
        if (st) return st;
        p->has_re = p->re.code != NULL;
        const char *beh = skv_json_str(j, "behavior");
        if (!beh)
            return skv_set_error(SKV_ERR_FORMAT, "%s: %s.behavior: missing or not a string", path, field);
        size_t i;
        for (i = 0; i < sizeof BEHAVIORS / sizeof BEHAVIORS[0]; i++)
            if (!strcmp(beh, BEHAVIORS[i].name)) break;
        if (i == sizeof BEHAVIORS / sizeof BEHAVIORS[0])
            return skv_set_error(SKV_ERR_UNSUPPORTED, "%s: %s.behavior: unknown value \"%s\"", path,
                                 field, beh);
        p->behavior = BEHAVIORS[i].b;
        p->invert = skv_json_bool(j, "invert", 0);
        return SKV_OK;
    }
    if (!strcmp(type, "Metaspace")) return parse_metaspace(j, path, field, p);
    if (!strcmp(type, "Digits")) {
        p->kind = PRE_DIGITS;
        p->individual_digits = skv_json_bool(j, "individual_digits", 0);
        return SKV_OK;
    }
    if (!strcmp(type, "Whitespace")) {
        p->kind = PRE_WHITESPACE;
        snprintf(f, sizeof f, "%s (Whitespace regex)", field);
        if ((st = skv_regex_compile(&p->re, WHITESPACE_PATTERN, path, f))) return st;
        p->has_re = 1;
        return SKV_OK;
    }
    if (!strcmp(type, "WhitespaceSplit")) {
        p->kind = PRE_WHITESPACE_SPLIT;
        return SKV_OK;
    }
    return skv_set_error(SKV_ERR_UNSUPPORTED,
                         "%s: %s.type: pre-tokenizer \"%s\" is not supported (supported: Sequence, "
                         "ByteLevel, Split, Metaspace, Digits, Whitespace, WhitespaceSplit)",
                         path, field, type);
}

void skv_pretok_free(skv_pretok *p) {
    for (int i = 0; i < p->n_kids; i++) skv_pretok_free(&p->kids[i]);
    free(p->kids);
    free(p->lit);
    skv_regex_free(&p->re);
    memset(p, 0, sizeof *p);
}

/* ------------------------------------------------------------------------------ splitting */

/* Spans of s[0..n) where each character satisfying pred is a match of its own (tokenizers'
 * Pattern for Fn(char) -> bool). */
static skv_status char_spans(const char *s, size_t n, int (*pred)(uint32_t), skv_spans *out) {
    out->n = 0;
    size_t last = 0, i = 0;
    while (i < n) {
        uint32_t cp;
        int l = skv_utf8_decode(s + i, n - i, &cp);
        if (pred(cp)) {
            if (out->n + 2 > out->cap) {
                size_t ncap = out->cap ? 2 * out->cap : 64;
                skv_span *nv = realloc(out->v, ncap * sizeof *nv);
                if (!nv) return skv_tok_nomem();
                out->v = nv;
                out->cap = ncap;
            }
            if (last < i) out->v[out->n++] = (skv_span){last, i, 0};
            out->v[out->n++] = (skv_span){i, i + (size_t)l, 1};
            last = i + (size_t)l;
        }
        i += (size_t)l;
    }
    if (last < n || n == 0) {
        if (out->n + 1 > out->cap) {
            size_t ncap = out->cap ? 2 * out->cap : 64;
            skv_span *nv = realloc(out->v, ncap * sizeof *nv);
            if (!nv) return skv_tok_nomem();
            out->v = nv;
            out->cap = ncap;
        }
        out->v[out->n++] = (skv_span){last, n, 0};
    }
    return SKV_OK;
}

/* Apply a SplitDelimiterBehavior to the spans of a piece (as NormalizedString::split) and push
 * the kept, non-empty parts to out. After the transform, is_match means "remove". */
static skv_status split_spans(const skv_piece *pc, skv_spans *sp, skv_split_behavior beh,
                              int invert, skv_pieces *out) {
    skv_span *v = sp->v;
    size_t n = sp->n, lo = 0, hi = n;
    if (invert)
        for (size_t i = 0; i < n; i++) v[i].is_match = !v[i].is_match;
    switch (beh) {
    case SPLIT_REMOVED: break;
    case SPLIT_ISOLATED:
        for (size_t i = 0; i < n; i++) v[i].is_match = 0;
        break;
    case SPLIT_CONTIGUOUS: {
        size_t k = 0;
        int prev = -1;
        for (size_t i = 0; i < n; i++) {
            int m = v[i].is_match;
            if (k > 0 && m == prev) {
                v[k - 1].end = v[i].end;
            } else {
                v[k] = v[i];
                v[k++].is_match = 0;
            }
            prev = m;
        }
        hi = k;
        break;
    }
    case SPLIT_MERGED_WITH_PREVIOUS: {
        size_t k = 0;
        int prev = 0;
        for (size_t i = 0; i < n; i++) {
            int m = v[i].is_match;
            if (m && !prev && k > 0) {
                v[k - 1].end = v[i].end;
            } else {
                v[k] = v[i];
                v[k++].is_match = 0;
            }
            prev = m;
        }
        hi = k;
        break;
    }
    case SPLIT_MERGED_WITH_NEXT: {
        size_t k = n;
        int prev = 0;
        for (size_t i = n; i-- > 0;) {
            int m = v[i].is_match;
            if (m && !prev && k < n) {
                v[k].start = v[i].start;
            } else {
                v[--k] = v[i];
                v[k].is_match = 0;
            }
            prev = m;
        }
        lo = k;
        break;
    }
    }
    for (size_t i = lo; i < hi; i++) {
        if (v[i].is_match || v[i].end == v[i].start) continue;
        if (skv_pieces_push(out, pc->off + v[i].start, v[i].end - v[i].start, -1,
                            pc->at_start && v[i].start == 0))
            return skv_tok_nomem();
    }
    return SKV_OK;
}

/* Append text to the arena as a new piece inheriting at_start. */
static skv_status push_text(skv_tokwork *w, skv_pieces *out, const skv_buf *text, int at_start) {
    size_t off = w->arena.len;
    if (skv_buf_append(&w->arena, text->buf, text->len)) return skv_tok_nomem();
    if (text->len && skv_pieces_push(out, off, text->len, -1, at_start)) return skv_tok_nomem();
    return SKV_OK;
}

/* ------------------------------------------------------------------------- the pre-tokenizers */

static skv_status bytelevel_piece(const skv_pretok *p, skv_tokwork *w, skv_piece pc,
                                  skv_pieces *out) {
    if (p->add_prefix_space && w->arena.buf[pc.off] != ' ') {
        size_t off = w->arena.len;
        /* Reserve first: the copy's source lies in the arena itself. */
        if (skv_buf_reserve(&w->arena, pc.len + 1) || skv_buf_append(&w->arena, " ", 1) ||
            skv_buf_append(&w->arena, w->arena.buf + pc.off, pc.len))
            return skv_tok_nomem();
        pc.off = off;
        pc.len++;
    }
    /* Split into words, then map each word's bytes to the byte-level alphabet. */
    skv_pieces words = {0};
    skv_status st = SKV_OK;
    if (p->use_regex) {
        st = skv_find_matches(&p->re, NULL, 0, w->arena.buf + pc.off, pc.len, &w->md, &w->spans);
        if (st == SKV_OK) st = split_spans(&pc, &w->spans, SPLIT_ISOLATED, 0, &words);
    } else if (skv_pieces_push(&words, pc.off, pc.len, -1, pc.at_start)) {
        st = skv_tok_nomem();
    }
    for (size_t i = 0; st == SKV_OK && i < words.n; i++) {
        const skv_piece *wd = &words.v[i];
        w->tmp.len = 0;
        if (skv_buf_reserve(&w->tmp, 2 * wd->len)) {
            st = skv_tok_nomem();
            break;
        }
        for (size_t k = 0; k < wd->len; k++) {
            uint32_t c = skv_bytelevel_char((uint8_t)w->arena.buf[wd->off + k]);
            w->tmp.len += (size_t)skv_utf8_encode(c, w->tmp.buf + w->tmp.len);
        }
        st = push_text(w, out, &w->tmp, wd->at_start);
    }
    free(words.v);
    return st;
}

static skv_status metaspace_piece(const skv_pretok *p, skv_tokwork *w, const skv_piece *pc,
                                  skv_pieces *out) {
    char rep[4];
    int rl = skv_utf8_encode(p->replacement, rep);
    const char *s = w->arena.buf + pc->off;
    w->tmp.len = 0;
    int starts_with_rep = 0;
    if (pc->len >= (size_t)rl && memcmp(s, rep, (size_t)rl) == 0) starts_with_rep = 1;
    if (s[0] == ' ') starts_with_rep = 1; /* the space becomes the replacement below */
    int prepend = !starts_with_rep && (p->prepend == PREPEND_ALWAYS ||
                                       (p->prepend == PREPEND_FIRST && pc->at_start));
    if (prepend && skv_buf_append(&w->tmp, rep, (size_t)rl)) return skv_tok_nomem();
    for (size_t i = 0; i < pc->len; i++) {
        int bad = s[i] == ' ' ? skv_buf_append(&w->tmp, rep, (size_t)rl)
                              : skv_buf_append(&w->tmp, s + i, 1);
        if (bad) return skv_tok_nomem();
    }
    if (!p->split) return push_text(w, out, &w->tmp, pc->at_start);
    skv_piece np = {w->arena.len, w->tmp.len, -1, pc->at_start};
    if (skv_buf_append(&w->arena, w->tmp.buf, w->tmp.len)) return skv_tok_nomem();
    skv_status st = skv_find_matches(NULL, rep, (size_t)rl, w->arena.buf + np.off, np.len, &w->md,
                                     &w->spans);
    if (st) return st;
    return split_spans(&np, &w->spans, SPLIT_MERGED_WITH_NEXT, 0, out);
}

static int is_ws(uint32_t c) { return skv_is_whitespace(c); }

static skv_status apply_one(const skv_pretok *p, skv_tokwork *w, const skv_piece *pc,
                            skv_pieces *out) {
    const char *s = w->arena.buf + pc->off;
    skv_status st;
    switch (p->kind) {
    case PRE_BYTELEVEL: return bytelevel_piece(p, w, *pc, out);
    case PRE_METASPACE: return metaspace_piece(p, w, pc, out);
    case PRE_SPLIT:
        st = skv_find_matches(p->has_re ? &p->re : NULL, p->lit, p->lit_len, s, pc->len, &w->md,
                              &w->spans);
        return st ? st : split_spans(pc, &w->spans, p->behavior, p->invert, out);
    case PRE_DIGITS:
        st = char_spans(s, pc->len, skv_is_numeric, &w->spans);
        return st ? st
                  : split_spans(pc, &w->spans,
                                p->individual_digits ? SPLIT_ISOLATED : SPLIT_CONTIGUOUS, 0, out);
    case PRE_WHITESPACE:
        st = skv_find_matches(&p->re, NULL, 0, s, pc->len, &w->md, &w->spans);
        return st ? st : split_spans(pc, &w->spans, SPLIT_REMOVED, 1, out);
    case PRE_WHITESPACE_SPLIT:
        st = char_spans(s, pc->len, is_ws, &w->spans);
        return st ? st : split_spans(pc, &w->spans, SPLIT_REMOVED, 0, out);
    case PRE_SEQUENCE: break; /* handled by the caller */
    }
    return SKV_OK;
}

skv_status skv_pretok_apply(const skv_pretok *p, skv_tokwork *w) {
    if (p->kind == PRE_SEQUENCE) {
        for (int i = 0; i < p->n_kids; i++) {
            skv_status st = skv_pretok_apply(&p->kids[i], w);
            if (st) return st;
        }
        return SKV_OK;
    }
    w->b.n = 0;
    for (size_t i = 0; i < w->a.n; i++) {
        skv_piece pc = w->a.v[i];
        skv_status st;
        if (pc.id >= 0) {
            st = skv_pieces_push(&w->b, pc.off, pc.len, pc.id, pc.at_start) ? skv_tok_nomem() : SKV_OK;
        } else {
            st = apply_one(p, w, &pc, &w->b);
        }
        if (st) return st;
    }
    skv_pieces t = w->a;
    w->a = w->b;
    w->b = t;
    return SKV_OK;
}
