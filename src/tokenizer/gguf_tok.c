/*
 * gguf_tok.c — a tokenizer from a GGUF file's `tokenizer.ggml.*` metadata, by writing the
 * tokenizer.json it stands for and loading that through the one pipeline:
 *   - model "gpt2": byte-level BPE with the file's merges; `tokenizer.ggml.pre` picks the
 *     pre-tokenizer (qwen2, llama-bpe/llama3, smollm, gpt2/default, ... as their tokenizer.json
 *     files have them) and the normalizer (NFC for qwen2);
 *   - model "llama": SentencePiece BPE (Gemma, Llama 2): spaces become "▁" (a "▁" prefix when
 *     add_space_prefix), merges ranked by the merged token's score (the order SentencePiece
 *     merges in), byte fallback to <0xXX> tokens.
 * Tokens of type CONTROL (3) and USER_DEFINED (4) are added tokens matched literally (special:
 * CONTROL), as llama.cpp and tokenizer.json treat them.
 */
#include "io/gguf.h"
#include "tok_internal.h"

#include <math.h>

enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5, TT_BYTE = 6 };

/* the pre-tokenizer regexes of the tokenizer.json files these `pre` names come from */
static const char *RE_QWEN2 =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char *RE_LLAMA3 =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static cJSON *split_bytelevel(const char *re) {
    char buf[1024];
    snprintf(buf, sizeof buf,
             "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\"},\"behavior\":\"Isolated\","
             "\"invert\":false},{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":false,\"use_regex\":false}]}");
    cJSON *p = cJSON_Parse(buf);
    if (!p) return NULL;
    cJSON *split = cJSON_GetArrayItem(cJSON_GetObjectItem(p, "pretokenizers"), 0);
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(split, "pattern"), "Regex", cJSON_CreateString(re));
    return p;
}

/* pre-tokenizer and normalizer for a byte-level `pre` name; NULL pre: unknown name */
static skv_status bpe_pre(const char *pre, const char *path, cJSON **p, cJSON **norm) {
    *norm = NULL;
    if (!strcmp(pre, "qwen2") || !strcmp(pre, "deepseek-r1-qwen")) {
        *p = split_bytelevel(RE_QWEN2);
        *norm = cJSON_Parse("{\"type\":\"NFC\"}");
    } else if (!strcmp(pre, "llama-bpe") || !strcmp(pre, "llama3") || !strcmp(pre, "smaug-bpe")) {
        *p = split_bytelevel(RE_LLAMA3);
    } else if (!strcmp(pre, "smollm")) {
        *p = cJSON_Parse("{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Digits\",\"individual_digits\":true},"
                         "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":true}]}");
    } else if (!strcmp(pre, "gpt2") || !strcmp(pre, "default")) {
        *p = cJSON_Parse("{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":true}");
    } else {
        return skv_set_error(SKV_ERR_UNSUPPORTED,
                             "%s: tokenizer.ggml.pre \"%s\" is not supported (qwen2, llama-bpe, smollm, gpt2, default)", path, pre);
    }
    return *p ? SKV_OK : skv_tok_nomem();
}

typedef struct sp_merge {
    float score;
    int32_t id;
    uint32_t split; /* byte offset of the split in the token */
} sp_merge;

static int cmp_merge(const void *a, const void *b) {
    const sp_merge *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    if (x->id != y->id) return x->id < y->id ? -1 : 1;
    return x->split < y->split ? -1 : x->split > y->split;
}

/* SentencePiece merges: every split of a NORMAL token into two NORMAL tokens, ranked by the
 * merged token's score (highest first). */
static skv_status sp_merges(const skv_gguf_str *tok, const int32_t *type, const float *score, int32_t n, const char *path,
                            cJSON *merges) {
    skv_strmap map;
    if (skv_strmap_init(&map, (size_t)n)) return skv_tok_nomem();
    for (int32_t i = 0; i < n; i++)
        if (type[i] == TT_NORMAL && skv_strmap_get(&map, tok[i].s, (uint32_t)tok[i].n) < 0 &&
            skv_strmap_put(&map, tok[i].s, (uint32_t)tok[i].n, i)) {
            skv_strmap_free(&map);
            return skv_tok_nomem();
        }
    size_t cap = 1024, nm = 0;
    sp_merge *m = malloc(cap * sizeof *m);
    skv_status st = m ? SKV_OK : skv_tok_nomem();
    for (int32_t i = 0; i < n && !st; i++) {
        if (type[i] != TT_NORMAL || tok[i].n < 2) continue;
        for (uint32_t k = 1; k < tok[i].n; k++) {
            if (((unsigned char)tok[i].s[k] & 0xC0) == 0x80) continue; /* inside a character */
            if (skv_strmap_get(&map, tok[i].s, k) < 0 || skv_strmap_get(&map, tok[i].s + k, (uint32_t)tok[i].n - k) < 0)
                continue;
            if (nm == cap) {
                sp_merge *nmv = realloc(m, 2 * cap * sizeof *m);
                if (!nmv) {
                    st = skv_tok_nomem();
                    break;
                }
                m = nmv, cap *= 2;
            }
            m[nm++] = (sp_merge){score[i], i, k};
        }
    }
    if (!st) {
        qsort(m, nm, sizeof *m, cmp_merge);
        for (size_t j = 0; j < nm && !st; j++) {
            const skv_gguf_str *t = &tok[m[j].id];
            cJSON *pair = cJSON_CreateArray();
            char *l = skv_tok_strndup(t->s, m[j].split), *r = skv_tok_strndup(t->s + m[j].split, t->n - m[j].split);
            if (!pair || !l || !r || !cJSON_AddItemToArray(pair, cJSON_CreateString(l)) ||
                !cJSON_AddItemToArray(pair, cJSON_CreateString(r)) || !cJSON_AddItemToArray(merges, pair))
                st = skv_tok_nomem();
            free(l), free(r);
        }
    }
    free(m);
    skv_strmap_free(&map);
    (void)path;
    return st;
}

static skv_status build(const skv_gguf *g, const char *path, cJSON *root) {
    char *model = NULL, *pre = NULL;
    skv_status st = skv_gguf_get_str(g, "tokenizer.ggml.model", 1, &model);
    if (st) return st;
    const skv_gguf_kv *toks, *types = NULL, *scores = NULL, *mg = NULL;
    int32_t *type = NULL;
    float *score = NULL;
    if ((st = skv_gguf_get_arr(g, "tokenizer.ggml.tokens", 1, SKV_GGUF_STRING, &toks)) ||
        (st = skv_gguf_get_arr(g, "tokenizer.ggml.token_type", 0, SKV_GGUF_TYPE_COUNT, &types)) ||
        (st = skv_gguf_get_arr(g, "tokenizer.ggml.scores", 0, SKV_GGUF_TYPE_COUNT, &scores)) ||
        (st = skv_gguf_get_str(g, "tokenizer.ggml.pre", 0, &pre)))
        goto out;
    const int32_t n = (int32_t)SKV_MIN(toks->arr_n, (uint64_t)1 << 24);
    if ((types && types->arr_n != toks->arr_n) || (scores && scores->arr_n != toks->arr_n)) {
        st = skv_set_error(SKV_ERR_FORMAT, "%s: tokenizer.ggml.token_type / scores do not have one entry per token (%d)", path, n);
        goto out;
    }
    type = malloc(sizeof *type * (size_t)(n + 1));
    score = malloc(sizeof *score * (size_t)(n + 1));
    if (!type || !score) {
        st = skv_tok_nomem();
        goto out;
    }
    for (int32_t i = 0; i < n; i++) {
        const int64_t ty = types ? skv_gguf_arr_i(types, (uint64_t)i) : TT_NORMAL;
        const double sc = scores ? skv_gguf_arr_f(scores, (uint64_t)i) : 0.0;
        type[i] = ty >= 0 && ty <= 6 ? (int32_t)ty : 0;
        score[i] = sc == sc ? (float)fmax(fmin(sc, 3e38), -3e38) : 0.0f; /* finite, in float range */
    }
    cJSON *m = cJSON_AddObjectToObject(root, "model"), *vocab = m ? cJSON_AddObjectToObject(m, "vocab") : NULL;
    cJSON *merges = m ? cJSON_AddArrayToObject(m, "merges") : NULL, *added = cJSON_AddArrayToObject(root, "added_tokens");
    if (!vocab || !merges || !added || !cJSON_AddStringToObject(m, "type", "BPE")) {
        st = skv_tok_nomem();
        goto out;
    }
    for (int32_t i = 0; i < n && !st; i++) {
        const skv_gguf_str *t = &toks->strs[i];
        if (memchr(t->s, 0, t->n)) {
            st = skv_set_error(SKV_ERR_FORMAT, "%s: tokenizer.ggml.tokens[%d] holds a NUL byte", path, i);
            break;
        }
        char *s = skv_tok_strndup(t->s, t->n);
        if (!s || !cJSON_AddNumberToObject(vocab, s, i)) st = skv_tok_nomem();
        if (!st && (type[i] == TT_CONTROL || type[i] == TT_USER)) {
            cJSON *a = cJSON_CreateObject();
            if (!a || !cJSON_AddNumberToObject(a, "id", i) || !cJSON_AddStringToObject(a, "content", s) ||
                !cJSON_AddBoolToObject(a, "normalized", 0) || !cJSON_AddBoolToObject(a, "special", type[i] == TT_CONTROL) ||
                !cJSON_AddItemToArray(added, a))
                st = skv_tok_nomem();
        }
        free(s);
    }
    if (st) goto out;
    if (!strcmp(model, "gpt2")) {
        if ((st = skv_gguf_get_arr(g, "tokenizer.ggml.merges", 1, SKV_GGUF_STRING, &mg))) goto out;
        for (uint64_t i = 0; i < mg->arr_n && !st; i++) {
            char *s = skv_tok_strndup(mg->strs[i].s, mg->strs[i].n);
            if (!s || !cJSON_AddItemToArray(merges, cJSON_CreateString(s))) st = skv_tok_nomem();
            free(s);
        }
        cJSON *p = NULL, *norm = NULL;
        if (!st && !(st = bpe_pre(pre ? pre : "default", path, &p, &norm))) {
            cJSON_AddItemToObject(root, "pre_tokenizer", p);
            if (norm) cJSON_AddItemToObject(root, "normalizer", norm);
            if (!cJSON_AddItemToObject(root, "decoder", cJSON_Parse("{\"type\":\"ByteLevel\"}"))) st = skv_tok_nomem();
        }
        /* llama-bpe (Llama 3) looks a whole pre-token up before merging, as its tokenizer.json */
        if (!st && pre && (!strcmp(pre, "llama-bpe") || !strcmp(pre, "llama3"))) cJSON_AddBoolToObject(m, "ignore_merges", 1);
    } else if (!strcmp(model, "llama")) {
        if (!scores) {
            st = skv_set_error(SKV_ERR_FORMAT, "%s: tokenizer.ggml.scores is missing (needed by a SentencePiece tokenizer)", path);
            goto out;
        }
        if ((st = sp_merges(toks->strs, type, score, n, path, merges))) goto out;
        int prefix = 1;
        if ((st = skv_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", 0, &prefix))) goto out;
        cJSON_AddBoolToObject(m, "byte_fallback", 1);
        cJSON_AddBoolToObject(m, "fuse_unk", 1);
        int64_t unk = -1;
        if ((st = skv_gguf_get_int(g, "tokenizer.ggml.unknown_token_id", 0, 0, n - 1, &unk))) goto out;
        if (unk >= 0) {
            char *u = skv_tok_strndup(toks->strs[unk].s, toks->strs[unk].n);
            if (u) cJSON_AddStringToObject(m, "unk_token", u);
            free(u);
        }
        const char *norm = prefix ? "{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":\"▁\"},"
                                    "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"▁\"}]}"
                                  : "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"▁\"}";
        const char *dec = prefix ? "{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"String\":\"▁\"},"
                                   "\"content\":\" \"},{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},{\"type\":\"Strip\","
                                   "\"content\":\" \",\"start\":1,\"stop\":0}]}"
                                 : "{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"String\":\"▁\"},"
                                   "\"content\":\" \"},{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"}]}";
        if (!cJSON_AddItemToObject(root, "normalizer", cJSON_Parse(norm)) || !cJSON_AddItemToObject(root, "decoder", cJSON_Parse(dec)))
            st = skv_tok_nomem();
    } else {
        st = skv_set_error(SKV_ERR_UNSUPPORTED, "%s: tokenizer.ggml.model \"%s\" is not supported (gpt2, llama)", path, model);
    }
out:
    free(model), free(pre), free(type), free(score);
    return st;
}

skv_status skv_tokenizer_from_gguf(const skv_gguf *g, skv_tokenizer **out) {
    *out = NULL;
    const char *path = skv_gguf_path(g);
    cJSON *root = cJSON_CreateObject();
    skv_status st = root ? build(g, path, root) : skv_tok_nomem();
    if (!st) st = skv_tokenizer_load_cjson(root, path, out);
    cJSON_Delete(root);
    return st;
}

skv_status skv_tokenizer_load_gguf(const char *path, skv_tokenizer **out) {
    *out = NULL;
    skv_gguf *g = NULL;
    skv_status st = skv_gguf_open(path, 0, &g);
    if (st) return st;
    st = skv_tokenizer_from_gguf(g, out);
    skv_gguf_close(g);
    return st;
}
