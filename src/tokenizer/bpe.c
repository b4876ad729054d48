/*
 * bpe.c — the BPE model of tokenizer.json: vocab and merges loading, and the merge of one
 * pre-token. A pre-token starts as one symbol per character (byte-fallback <0xXX> symbols or the
 * unk token for characters absent from the vocab) and pairs are merged lowest rank first (ties:
 * leftmost) with a binary heap over a doubly linked symbol list, so the cost is O(n log n) even
 * for a whole un-pre-tokenized 100 KB text. Stale heap entries are skipped when popped, exactly
 * as tokenizers' Word::merge_all does, so the result is the reference's.
 */
#include "tok_internal.h"

typedef struct bpe_sym {
    int32_t id;
    int32_t prev, next; /* neighbours in the list, -1 at the ends */
    uint32_t len;       /* bytes of the input covered; 0 = merged away */
} bpe_sym;

typedef struct bpe_merge {
    uint32_t rank;
    uint32_t pos; /* index of the left symbol */
    int32_t new_id;
} bpe_merge;

/* ------------------------------------------------------------------------------- loading */

static skv_status add_merge(skv_bpe *b, const char *path, int i, const char *l, size_t ll,
                            const char *r, size_t rl, skv_buf *tmp) {
    int32_t a = skv_strmap_get(&b->vocab, l, ll), c = skv_strmap_get(&b->vocab, r, rl);
    if (a < 0 || c < 0)
        return skv_set_error(SKV_ERR_FORMAT, "%s: model.merges[%d]: token \"%.*s\" is not in model.vocab",
                             path, i, (int)(a < 0 ? ll : rl), a < 0 ? l : r);
    if (b->cont_prefix) { /* the right part loses its continuation prefix in the merged token */
        size_t pl = strlen(b->cont_prefix);
        if (rl >= pl && memcmp(r, b->cont_prefix, pl) == 0) {
            r += pl;
            rl -= pl;
        }
    }
    tmp->len = 0;
    if (skv_buf_append(tmp, l, ll) || skv_buf_append(tmp, r, rl)) return skv_tok_nomem();
    int32_t m = skv_strmap_get(&b->vocab, tmp->buf, tmp->len);
    if (m < 0)
        return skv_set_error(SKV_ERR_FORMAT, "%s: model.merges[%d]: merged token \"%s\" is not in model.vocab",
                             path, i, tmp->buf);
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)c;
    uint64_t val = ((uint64_t)(uint32_t)i << 32) | (uint32_t)m;
    return skv_u64map_put(&b->merges, key, val) ? skv_tok_nomem() : SKV_OK;
}

static skv_status parse_merges(skv_bpe *b, const cJSON *merges, const char *path) {
    if (!cJSON_IsArray(merges))
        return skv_set_error(SKV_ERR_FORMAT, "%s: model.merges: missing or not an array", path);
    if (skv_u64map_init(&b->merges, (size_t)cJSON_GetArraySize(merges))) return skv_tok_nomem();
    skv_buf tmp = {0};
    skv_status st = SKV_OK;
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, merges) {
        if (cJSON_IsString(it)) { /* "left right" */
            const char *s = it->valuestring, *sp = strchr(s, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                st = skv_set_error(SKV_ERR_FORMAT, "%s: model.merges[%d]: expected \"left right\", got \"%s\"",
                                   path, i, s);
                break;
            }
            st = add_merge(b, path, i, s, (size_t)(sp - s), sp + 1, strlen(sp + 1), &tmp);
        } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 &&
                   cJSON_IsString(cJSON_GetArrayItem(it, 0)) && cJSON_IsString(cJSON_GetArrayItem(it, 1))) {
            const char *l = cJSON_GetArrayItem(it, 0)->valuestring, *r = cJSON_GetArrayItem(it, 1)->valuestring;
            st = add_merge(b, path, i, l, strlen(l), r, strlen(r), &tmp);
        } else {
            st = skv_set_error(SKV_ERR_FORMAT, "%s: model.merges[%d]: expected a string or a pair of strings",
                               path, i);
        }
        if (st) break;
        i++;
    }
    skv_buf_free(&tmp);
    return st;
}

static skv_status opt_string(const cJSON *model, const char *key, const char *path, char **out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, key);
    *out = NULL;
    if (!v || cJSON_IsNull(v)) return SKV_OK;
    if (!cJSON_IsString(v))
        return skv_set_error(SKV_ERR_FORMAT, "%s: model.%s: expected a string or null", path, key);
    if (!*v->valuestring) return SKV_OK;
    *out = skv_tok_strndup(v->valuestring, strlen(v->valuestring));
    return *out ? SKV_OK : skv_tok_nomem();
}

skv_status skv_bpe_parse(skv_tokenizer *t, const cJSON *model, const char *path) {
    skv_bpe *b = &t->bpe;
    b->unk_id = -1;
    for (int i = 0; i < 256; i++) b->byte_id[i] = -1;
    if (!cJSON_IsObject(model))
        return skv_set_error(SKV_ERR_FORMAT, "%s: model: missing or not an object", path);
    const char *type = skv_json_str(model, "type");
    if (type && strcmp(type, "BPE") != 0)
        return skv_set_error(SKV_ERR_UNSUPPORTED,
                             "%s: model.type: \"%s\" is not supported (only \"BPE\")", path, type);
    if (!type && !cJSON_GetObjectItemCaseSensitive(model, "merges"))
        return skv_set_error(SKV_ERR_UNSUPPORTED, "%s: model.type: missing, and no merges (not BPE)", path);
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsObject(vocab))
        return skv_set_error(SKV_ERR_FORMAT, "%s: model.vocab: missing or not an object", path);

    /* Copy every vocab string into one arena; the map's keys and id_str point into it. */
    size_t total = 0;
    int n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, vocab) {
        if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble > INT32_MAX - 1 ||
            it->valuedouble != (double)(int32_t)it->valuedouble)
            return skv_set_error(SKV_ERR_FORMAT, "%s: model.vocab[\"%s\"]: expected an integer id >= 0",
                                 path, it->string);
        total += strlen(it->string) + 1;
        n++;
    }
    t->strings = malloc(total ? total : 1);
    if (!t->strings || skv_strmap_init(&b->vocab, (size_t)n)) return skv_tok_nomem();
    char *p = t->strings;
    cJSON_ArrayForEach(it, vocab) {
        size_t l = strlen(it->string);
        memcpy(p, it->string, l + 1);
        if (skv_strmap_put(&b->vocab, p, l, (int32_t)it->valuedouble)) return skv_tok_nomem();
        p += l + 1;
    }

    skv_status st;
    if ((st = opt_string(model, "continuing_subword_prefix", path, &b->cont_prefix))) return st;
    if ((st = opt_string(model, "end_of_word_suffix", path, &b->eow_suffix))) return st;
    b->byte_fallback = skv_json_bool(model, "byte_fallback", 0);
    b->fuse_unk = skv_json_bool(model, "fuse_unk", 0);
    b->ignore_merges = skv_json_bool(model, "ignore_merges", 0);
    const char *unk = skv_json_str(model, "unk_token");
    if (unk) {
        b->unk_id = skv_strmap_get(&b->vocab, unk, strlen(unk));
        if (b->unk_id < 0)
            return skv_set_error(SKV_ERR_FORMAT, "%s: model.unk_token: \"%s\" is not in model.vocab", path, unk);
    }
    for (int i = 0; i < 256; i++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", i);
        b->byte_id[i] = skv_strmap_get(&b->vocab, name, 6);
    }
    return parse_merges(b, cJSON_GetObjectItemCaseSensitive(model, "merges"), path);
}

void skv_bpe_free(skv_bpe *b) {
    skv_strmap_free(&b->vocab);
    skv_u64map_free(&b->merges);
    free(b->cont_prefix);
    free(b->eow_suffix);
    b->cont_prefix = b->eow_suffix = NULL;
}

/* ------------------------------------------------------------------------------- merging */

static int merge_less(const bpe_merge *x, const bpe_merge *y) {
    return x->rank != y->rank ? x->rank < y->rank : x->pos < y->pos;
}

static void heap_push(bpe_merge *h, size_t *n, bpe_merge m) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!merge_less(&m, &h[parent])) break;
        h[i] = h[parent];
        i = parent;
    }
    h[i] = m;
}

static bpe_merge heap_pop(bpe_merge *h, size_t *n) {
    bpe_merge top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && merge_less(&h[c + 1], &h[c])) c++;
        if (!merge_less(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

static int pair_lookup(const skv_bpe *b, int32_t l, int32_t r, uint32_t *rank, int32_t *new_id) {
    uint64_t v;
    if (!skv_u64map_get(&b->merges, ((uint64_t)(uint32_t)l << 32) | (uint32_t)r, &v)) return 0;
    *rank = (uint32_t)(v >> 32);
    *new_id = (int32_t)(uint32_t)v;
    return 1;
}

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t ncap = *cap ? *cap : 64;
    while (ncap < need) ncap *= 2;
    void *np = realloc(*p, ncap * elem);
    if (!np) return -1;
    *p = np;
    *cap = ncap;
    return 0;
}

static void sym_add(bpe_sym *sym, size_t *n, int32_t id, uint32_t len) {
    size_t i = (*n)++;
    sym[i] = (bpe_sym){id, (int32_t)i - 1, (int32_t)i + 1, len};
}

/* Look up one character (with the continuation prefix / end-of-word suffix if configured). */
static int32_t char_id(const skv_bpe *b, const char *c, size_t cl, int first, int last,
                       skv_buf *tmp, const char **key, size_t *key_len) {
    *key = c;
    *key_len = cl;
    if ((!first && b->cont_prefix) || (last && b->eow_suffix)) {
        tmp->len = 0;
        if ((!first && b->cont_prefix && skv_buf_append(tmp, b->cont_prefix, strlen(b->cont_prefix))) ||
            skv_buf_append(tmp, c, cl) ||
            (last && b->eow_suffix && skv_buf_append(tmp, b->eow_suffix, strlen(b->eow_suffix))))
            return -2;
        *key = tmp->buf;
        *key_len = tmp->len;
    }
    return skv_strmap_get(&b->vocab, *key, *key_len);
}

skv_status skv_bpe_word(const skv_bpe *b, const char *s, size_t len, skv_tokwork *w,
                        skv_ids *out) {
    if (len == 0) return SKV_OK;
    if (b->ignore_merges) {
        int32_t id = skv_strmap_get(&b->vocab, s, len);
        if (id >= 0) return skv_ids_push(out, id) ? skv_tok_nomem() : SKV_OK;
    }
    /* At most one symbol per byte (plus prefix/suffix bytes under byte fallback). */
    size_t extra = (b->cont_prefix ? strlen(b->cont_prefix) : 0) + (b->eow_suffix ? strlen(b->eow_suffix) : 0);
    size_t max_sym = len * (1 + extra) + 1;
    if (grow(&w->sym, &w->sym_cap, max_sym, sizeof(bpe_sym)) ||
        grow(&w->heap, &w->heap_cap, 3 * max_sym, sizeof(bpe_merge)))
        return skv_tok_nomem();
    bpe_sym *sym = w->sym;
    bpe_merge *heap = w->heap;
    size_t n = 0, nh = 0;

    /* 1. One symbol per character. */
    int32_t unk_len = -1; /* pending unk symbol's byte length, -1: none */
    size_t i = 0;
    while (i < len) {
        uint32_t cp;
        size_t cl = (size_t)skv_utf8_decode(s + i, len - i, &cp);
        const char *key;
        size_t key_len;
        int32_t id = char_id(b, s + i, cl, i == 0, i + cl == len, &w->tmp, &key, &key_len);
        if (id == -2) return skv_tok_nomem();
        if (id >= 0) {
            if (unk_len >= 0) sym_add(sym, &n, b->unk_id, (uint32_t)unk_len);
            unk_len = -1;
            sym_add(sym, &n, id, (uint32_t)cl);
        } else {
            int done = 0;
            if (b->byte_fallback) {
                size_t k;
                for (k = 0; k < key_len && b->byte_id[(unsigned char)key[k]] >= 0; k++) {}
                if (k == key_len) {
                    for (k = 0; k < key_len; k++) sym_add(sym, &n, b->byte_id[(unsigned char)key[k]], 1);
                    done = 1;
                }
            }
            if (!done && b->unk_id >= 0) {
                if (unk_len >= 0 && b->fuse_unk) {
                    unk_len += (int32_t)cl;
                } else {
                    if (unk_len >= 0) sym_add(sym, &n, b->unk_id, (uint32_t)unk_len);
                    unk_len = (int32_t)cl;
                }
            }
            /* no byte fallback and no unk token: the character is dropped, as the reference does */
        }
        i += cl;
    }
    if (unk_len >= 0) sym_add(sym, &n, b->unk_id, (uint32_t)unk_len);
    if (n == 0) return SKV_OK;
    sym[n - 1].next = -1;

    /* 2. Merge, lowest rank first. */
    for (size_t k = 0; k + 1 < n; k++) {
        uint32_t rank;
        int32_t nid;
        if (pair_lookup(b, sym[k].id, sym[k + 1].id, &rank, &nid))
            heap_push(heap, &nh, (bpe_merge){rank, (uint32_t)k, nid});
    }
    while (nh > 0) {
        bpe_merge top = heap_pop(heap, &nh);
        bpe_sym *cur = &sym[top.pos];
        if (cur->len == 0 || cur->next < 0) continue;
        int32_t next_pos = cur->next;
        bpe_sym right = sym[next_pos];
        uint32_t rank;
        int32_t nid;
        if (!pair_lookup(b, cur->id, right.id, &rank, &nid) || nid != top.new_id) continue; /* stale */
        cur->id = top.new_id;
        cur->len += right.len;
        cur->next = right.next;
        sym[next_pos].len = 0;
        if (right.next >= 0) sym[right.next].prev = (int32_t)top.pos;
        if (cur->prev >= 0 && pair_lookup(b, sym[cur->prev].id, cur->id, &rank, &nid))
            heap_push(heap, &nh, (bpe_merge){rank, (uint32_t)cur->prev, nid});
        if (cur->next >= 0 && pair_lookup(b, cur->id, sym[cur->next].id, &rank, &nid))
            heap_push(heap, &nh, (bpe_merge){rank, top.pos, nid});
    }

    /* 3. Emit the surviving symbols in order. */
    for (size_t k = 0; k < n; k++)
        if (sym[k].len && skv_ids_push(out, sym[k].id)) return skv_tok_nomem();
    return SKV_OK;
}
