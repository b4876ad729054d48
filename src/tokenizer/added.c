/*
 * added.c — tokenizer.json "added_tokens": parsing, and finding them literally in the input.
 *
 * As the reference does, tokens with normalized=false are matched in the raw text first; the
 * remaining text is then normalized and tokens with normalized=true are matched in it (their
 * content normalized the same way). Matching is leftmost, then longest; single_word, lstrip and
 * rstrip adjust or reject a match as in tokenizers' AddedVocabulary::find_matches.
 */
#include "tok_internal.h"

#include <utf8proc.h>

/* Build the first-byte index of one matching set over the tokens with normalized == want. */
static skv_status build_set(skv_tokenizer *t, int want, skv_added_set *set) {
    int32_t count[256] = {0};
    set->n = 0;
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].normalized == want && t->added[i].match_len) {
            count[(unsigned char)t->added[i].match[0]]++;
            set->n++;
        }
    set->idx = malloc((size_t)(set->n ? set->n : 1) * sizeof *set->idx);
    if (!set->idx) return skv_tok_nomem();
    set->first[0] = 0;
    for (int b = 0; b < 256; b++) set->first[b + 1] = set->first[b] + count[b];
    int32_t fill[256];
    memcpy(fill, set->first, sizeof fill);
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].normalized == want && t->added[i].match_len)
            set->idx[fill[(unsigned char)t->added[i].match[0]]++] = i;
    return SKV_OK;
}

skv_status skv_added_parse(skv_tokenizer *t, const cJSON *arr, const char *path) {
    if (arr && !cJSON_IsNull(arr) && !cJSON_IsArray(arr))
        return skv_set_error(SKV_ERR_FORMAT, "%s: added_tokens: expected an array", path);
    int n = arr && cJSON_IsArray(arr) ? cJSON_GetArraySize(arr) : 0;
    t->added = calloc((size_t)(n ? n : 1), sizeof *t->added);
    if (!t->added) return skv_tok_nomem();
    const cJSON *it;
    int i = 0;
    skv_buf norm = {0}, tmp = {0};
    skv_status st = SKV_OK;
    if (n) cJSON_ArrayForEach(it, arr) {
        skv_added *a = &t->added[i];
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
        const char *content = skv_json_str(it, "content");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble > INT32_MAX - 1 || !content) {
            st = skv_set_error(SKV_ERR_FORMAT, "%s: added_tokens[%d]: needs an integer \"id\" >= 0 "
                               "and a string \"content\"", path, i);
            break;
        }
        a->id = (int32_t)id->valuedouble;
        a->content_len = strlen(content);
        a->content = skv_tok_strndup(content, a->content_len);
        if (!a->content) {
            st = skv_tok_nomem();
            break;
        }
        t->n_added = ++i;
        if (!skv_utf8_is_valid(a->content, a->content_len)) {
            st = skv_set_error(SKV_ERR_FORMAT, "%s: added_tokens[%d].content: invalid UTF-8", path, i - 1);
            break;
        }
        a->special = skv_json_bool(it, "special", 0);
        a->single_word = skv_json_bool(it, "single_word", 0);
        a->lstrip = skv_json_bool(it, "lstrip", 0);
        a->rstrip = skv_json_bool(it, "rstrip", 0);
        a->normalized = skv_json_bool(it, "normalized", !a->special);
        if (a->normalized && t->has_norm) {
            st = skv_norm_apply(&t->norm, a->content, a->content_len, &norm, &tmp);
            if (st) break;
            a->match_len = norm.len;
            a->match = skv_tok_strndup(norm.buf ? norm.buf : "", norm.len);
        } else {
            a->match_len = a->content_len;
            a->match = skv_tok_strndup(a->content, a->content_len);
        }
        if (!a->match) {
            st = skv_tok_nomem();
            break;
        }
    }
    skv_buf_free(&norm);
    skv_buf_free(&tmp);
    if (st) return st;
    if ((st = build_set(t, 0, &t->raw_set))) return st;
    return build_set(t, 1, &t->norm_set);
}

void skv_added_free(skv_tokenizer *t) {
    for (int i = 0; i < t->n_added; i++) {
        free(t->added[i].content);
        free(t->added[i].match);
    }
    free(t->added);
    t->added = NULL;
    t->n_added = 0;
    free(t->raw_set.idx);
    free(t->norm_set.idx);
    t->raw_set.idx = t->norm_set.idx = NULL;
}

/* Rust regex's \w: alphabetic, marks, decimal digits, connector punctuation. */
static int is_word_char(uint32_t c) {
    if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    switch (utf8proc_category((utf8proc_int32_t)c)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME: case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_PC:
        return 1;
    default:
        return 0;
    }
}

/* Code point ending at s[end) (end > 0). */
static uint32_t cp_before(const char *s, size_t end, size_t *start) {
    size_t k = end - 1;
    while (k > 0 && ((unsigned char)s[k] & 0xc0) == 0x80) k--;
    uint32_t cp;
    skv_utf8_decode(s + k, end - k, &cp);
    if (start) *start = k;
    return cp;
}

/* The leftmost-longest match of set in s[pos..n): index into t->added, or -1. */
static int find_next(const skv_tokenizer *t, const skv_added_set *set, const char *s, size_t n,
                     size_t pos, size_t *at) {
    for (size_t i = pos; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        int best = -1;
        size_t best_len = 0;
        for (int32_t k = set->first[c]; k < set->first[c + 1]; k++) {
            const skv_added *a = &t->added[set->idx[k]];
            if (a->match_len > best_len && a->match_len <= n - i && memcmp(s + i, a->match, a->match_len) == 0) {
                best = set->idx[k];
                best_len = a->match_len;
            }
        }
        if (best >= 0) {
            *at = i;
            return best;
        }
    }
    return -1;
}

/* Split one id-less piece on set; pushes the parts to out. */
static skv_status split_piece(const skv_tokenizer *t, const skv_added_set *set, const char *s,
                              const skv_piece *pc, skv_pieces *out) {
    size_t n = pc->len, start_offset = 0, pos = 0, at;
    int k;
    while (pos < n && (k = find_next(t, set, s, n, pos, &at)) >= 0) {
        const skv_added *a = &t->added[k];
        size_t start = at, stop = at + a->match_len;
        pos = stop;
        if (a->single_word) {
            int start_space = start == 0 || !is_word_char(cp_before(s, start, NULL));
            uint32_t next = 0;
            if (stop < n) skv_utf8_decode(s + stop, n - stop, &next);
            int stop_space = stop == n || !is_word_char(next);
            if (!start_space || !stop_space) continue;
        }
        if (a->lstrip) {
            size_t ns = start, b;
            while (ns > 0 && skv_is_whitespace(cp_before(s, ns, &b))) ns = b;
            start = ns > start_offset ? ns : start_offset;
        }
        if (a->rstrip) {
            while (stop < n) {
                uint32_t cp;
                int l = skv_utf8_decode(s + stop, n - stop, &cp);
                if (!skv_is_whitespace(cp)) break;
                stop += (size_t)l;
            }
            pos = stop;
        }
        if (start_offset < start &&
            skv_pieces_push(out, pc->off + start_offset, start - start_offset, -1,
                            pc->at_start && start_offset == 0))
            return skv_tok_nomem();
        if (skv_pieces_push(out, pc->off + start, stop - start, a->id, pc->at_start && start == 0))
            return skv_tok_nomem();
        start_offset = stop;
    }
    if (start_offset < n &&
        skv_pieces_push(out, pc->off + start_offset, n - start_offset, -1,
                        pc->at_start && start_offset == 0))
        return skv_tok_nomem();
    return SKV_OK;
}

skv_status skv_added_split(const skv_tokenizer *t, int normalized, skv_tokwork *w) {
    const skv_added_set *set = normalized ? &t->norm_set : &t->raw_set;
    if (set->n == 0) return SKV_OK;
    w->b.n = 0;
    for (size_t i = 0; i < w->a.n; i++) {
        const skv_piece *pc = &w->a.v[i];
        skv_status st;
        if (pc->id >= 0)
            st = skv_pieces_push(&w->b, pc->off, pc->len, pc->id, pc->at_start) ? skv_tok_nomem() : SKV_OK;
        else
            st = split_piece(t, set, w->arena.buf + pc->off, pc, &w->b);
        if (st) return st;
    }
    skv_pieces tmp = w->a;
    w->a = w->b;
    w->b = tmp;
    return SKV_OK;
}
