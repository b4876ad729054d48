/*
 * tokenizer.c — skv_tokenizer_load / free / n_vocab and skv_tokenize: reads tokenizer.json and
 * runs the encode pipeline of Hugging Face tokenizers:
 *   input -> added tokens (raw) -> normalizer -> added tokens (normalized) -> pre-tokenizer
 *         -> BPE on each pre-token -> ids
 * The post-processor is ignored (no BOS/EOS is added). Input that is not valid UTF-8 is first
 * converted as from_utf8_lossy does (invalid sequences become U+FFFD).
 */
#include "tok_internal.h"

int skv_pieces_push(skv_pieces *p, size_t off, size_t len, int32_t id, int at_start) {
    if (p->n == p->cap) {
        size_t ncap = p->cap ? 2 * p->cap : 64;
        skv_piece *nv = realloc(p->v, ncap * sizeof *nv);
        if (!nv) return -1;
        p->v = nv;
        p->cap = ncap;
    }
    p->v[p->n++] = (skv_piece){off, len, id, at_start};
    return 0;
}

void skv_tokwork_free(skv_tokwork *w) {
    skv_buf_free(&w->arena);
    skv_buf_free(&w->tmp);
    free(w->a.v);
    free(w->b.v);
    free(w->spans.v);
    if (w->md) pcre2_match_data_free(w->md);
    free(w->sym);
    free(w->heap);
    memset(w, 0, sizeof *w);
}

/* ------------------------------------------------------------------------------- loading */

/* Build id -> string. An added token's string wins over the model's, and for a normalized added
 * token it is its normalized content (what the reference's id_to_token and decode give). */
static skv_status build_id_table(skv_tokenizer *t, const char *path) {
    int64_t max_id = -1;
    const skv_strmap *v = &t->bpe.vocab;
    for (size_t i = 0; i < v->cap; i++)
        if (v->slots[i].key && v->slots[i].val > max_id) max_id = v->slots[i].val;
    for (int i = 0; i < t->n_added; i++)
        if (t->added[i].id > max_id) max_id = t->added[i].id;
    if (max_id < 0) return skv_set_error(SKV_ERR_FORMAT, "%s: model.vocab: empty vocabulary", path);
    if (max_id > (int64_t)16 * 1024 * 1024)
        return skv_set_error(SKV_ERR_FORMAT, "%s: model.vocab: id %lld is implausibly large", path,
                             (long long)max_id);
    t->n_vocab = (int32_t)(max_id + 1);
    t->id_str = calloc((size_t)t->n_vocab, sizeof *t->id_str);
    t->id_len = calloc((size_t)t->n_vocab, sizeof *t->id_len);
    if (!t->id_str || !t->id_len) return skv_tok_nomem();
    for (size_t i = 0; i < v->cap; i++)
        if (v->slots[i].key) {
            t->id_str[v->slots[i].val] = (char *)v->slots[i].key;
            t->id_len[v->slots[i].val] = v->slots[i].len;
        }
    for (int i = 0; i < t->n_added; i++) {
        t->id_str[t->added[i].id] = t->added[i].match;
        t->id_len[t->added[i].id] = (uint32_t)t->added[i].match_len;
    }
    return SKV_OK;
}

static skv_status load_json(skv_tokenizer *t, const cJSON *root, const char *path) {
    if (!cJSON_IsObject(root))
        return skv_set_error(SKV_ERR_FORMAT, "%s: expected a JSON object at the top level", path);
    skv_status st = skv_bpe_parse(t, cJSON_GetObjectItemCaseSensitive(root, "model"), path);
    if (st) return st;
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    if (norm && !cJSON_IsNull(norm)) {
        t->has_norm = 1;
        if ((st = skv_norm_parse(norm, path, "normalizer", &t->norm))) return st;
    }
    if ((st = skv_added_parse(t, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), path))) return st;
    const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
    if (pre && !cJSON_IsNull(pre)) {
        t->has_pre = 1;
        if ((st = skv_pretok_parse(pre, path, "pre_tokenizer", &t->pre))) return st;
    }
    if ((st = skv_decoder_parse(cJSON_GetObjectItemCaseSensitive(root, "decoder"), path, &t->dec))) return st;
    return build_id_table(t, path);
}

skv_status skv_tokenizer_load_gguf(const char *path, skv_tokenizer **out);

skv_status skv_tokenizer_load(const char *path, skv_tokenizer **out) {
    if (out) *out = NULL;
    if (!path || !out) return skv_set_error(SKV_ERR_ARG, "skv_tokenizer_load: NULL argument");
    const size_t pl = strlen(path);
    if (pl > 5 && !strcmp(path + pl - 5, ".gguf")) return skv_tokenizer_load_gguf(path, out);
    char *data = NULL;
    size_t len = 0;
    skv_status st = skv_read_file(path, &data, &len);
    if (st) return st;
    st = skv_tokenizer_load_buffer(data, len, path, out);
    free(data);
    return st;
}

skv_status skv_tokenizer_load_buffer(const char *data, size_t len, const char *path, skv_tokenizer **out) {
    *out = NULL;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(data, len, &end, 0);
    if (!root) {
        size_t at = end && end >= data ? (size_t)(end - data) : 0;
        return skv_set_error(SKV_ERR_FORMAT, "%s: malformed JSON near byte %zu", path, at);
    }
    skv_status st = skv_tokenizer_load_cjson(root, path, out);
    cJSON_Delete(root);
    return st;
}

skv_status skv_tokenizer_load_cjson(const cJSON *root, const char *path, skv_tokenizer **out) {
    *out = NULL;
    skv_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return skv_tok_nomem();
    skv_status st = load_json(t, root, path);
    if (st) {
        skv_tokenizer_free(t);
        return st;
    }
    *out = t;
    return SKV_OK;
}

void skv_tokenizer_free(skv_tokenizer *t) {
    if (!t) return;
    skv_bpe_free(&t->bpe);
    skv_added_free(t);
    if (t->has_norm) skv_norm_free(&t->norm);
    if (t->has_pre) skv_pretok_free(&t->pre);
    skv_decoder_free(&t->dec);
    free(t->id_str);
    free(t->id_len);
    free(t->strings);
    free(t);
}

int32_t skv_tokenizer_n_vocab(const skv_tokenizer *t) { return t ? t->n_vocab : 0; }

/* ------------------------------------------------------------------------------ encoding */

/* Normalize every id-less piece of w->a in place (new text appended to the arena). */
static skv_status normalize_pieces(const skv_tokenizer *t, skv_tokwork *w) {
    skv_buf out = {0};
    skv_status st = SKV_OK;
    w->b.n = 0;
    for (size_t i = 0; i < w->a.n && st == SKV_OK; i++) {
        skv_piece pc = w->a.v[i];
        if (pc.id < 0) {
            st = skv_norm_apply(&t->norm, w->arena.buf + pc.off, pc.len, &out, &w->tmp);
            if (st) break;
            pc.off = w->arena.len;
            pc.len = out.len;
            if (skv_buf_append(&w->arena, out.buf, out.len)) st = skv_tok_nomem();
            if (pc.len == 0) continue; /* normalized away */
        }
        if (st == SKV_OK && skv_pieces_push(&w->b, pc.off, pc.len, pc.id, pc.at_start)) st = skv_tok_nomem();
    }
    skv_buf_free(&out);
    if (st == SKV_OK) {
        skv_pieces tmp = w->a;
        w->a = w->b;
        w->b = tmp;
    }
    return st;
}

static skv_status encode(const skv_tokenizer *t, const char *text, size_t len, skv_tokwork *w,
                         skv_ids *ids) {
    int bad = skv_utf8_is_valid(text, len) ? skv_buf_append(&w->arena, text, len)
                                           : skv_utf8_append_lossy(&w->arena, text, len);
    if (bad) return skv_tok_nomem();
    if (w->arena.len == 0) return SKV_OK;
    if (skv_pieces_push(&w->a, 0, w->arena.len, -1, 1)) return skv_tok_nomem();
    skv_status st;
    if ((st = skv_added_split(t, 0, w))) return st;
    if (t->has_norm && (st = normalize_pieces(t, w))) return st;
    if ((st = skv_added_split(t, 1, w))) return st;
    if (t->has_pre && (st = skv_pretok_apply(&t->pre, w))) return st;
    for (size_t i = 0; i < w->a.n; i++) {
        const skv_piece *pc = &w->a.v[i];
        if (pc->id >= 0) {
            if (skv_ids_push(ids, pc->id)) return skv_tok_nomem();
        } else if ((st = skv_bpe_word(&t->bpe, w->arena.buf + pc->off, pc->len, w, ids))) {
            return st;
        }
    }
    return SKV_OK;
}

skv_status skv_tokenize(const skv_tokenizer *tok, const char *text, size_t len, int32_t **ids,
                        size_t *n_ids) {
    if (ids) *ids = NULL;
    if (n_ids) *n_ids = 0;
    if (!tok || !ids || !n_ids || (len && !text))
        return skv_set_error(SKV_ERR_ARG, "skv_tokenize: NULL argument");
    skv_tokwork w = {0};
    skv_ids out = {0};
    skv_status st = encode(tok, text, len, &w, &out);
    skv_tokwork_free(&w);
    if (st) {
        free(out.v);
        return st;
    }
    if (!out.v && !(out.v = malloc(sizeof *out.v))) return skv_tok_nomem(); /* never NULL on success */
    *ids = out.v;
    *n_ids = out.n;
    return SKV_OK;
}
