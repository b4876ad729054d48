/*
 * tok_internal.h — the tokenizer's private data structures, shared by the files of
 * src/tokenizer/:
 *   tokenizer.c  loading tokenizer.json, the encode pipeline, the public encode entry points
 *   added.c      added tokens: parsing and literal matching in the input
 *   normalize.c  normalizers (NFC/NFKC/..., Prepend, Replace, Strip, Lowercase, Sequence)
 *   pretok.c     pre-tokenizers (ByteLevel, Split, Metaspace, Digits, Whitespace..., Sequence)
 *   regex.c      PCRE2 wrappers (compile, find all matches)
 *   bpe.c        the BPE model: vocab, merges, heap-based merge of one pre-token
 *   decode.c     decoders and whole-sequence detokenization
 *   detok.c      the streaming detokenizer
 *   tokjson.c    cJSON accessors with messages naming file and field
 *   hashmap.c    string -> id and pair -> merge hash maps
 *   utf8.c       UTF-8 helpers, the GPT-2 byte <-> char table, growable buffers
 *
 * Encoding state lives in per-call scratch (skv_tokwork); a loaded skv_tokenizer is never written
 * after skv_tokenizer_load returns, so one tokenizer may be used from many threads at once.
 */
#ifndef SKV_TOK_INTERNAL_H
#define SKV_TOK_INTERNAL_H

#include "internal.h"
#include "hashmap.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <cjson/cJSON.h>
#include <pcre2.h>
#include <stdint.h>

/* skv_tokenizer_load on the text of a tokenizer.json held in memory (len bytes), named path in
 * messages. For tests and fuzzing. */
skv_status skv_tokenizer_load_buffer(const char *data, size_t len, const char *path, skv_tokenizer **out);
/* ... on a parsed tokenizer.json tree (gguf_tok.c builds one from GGUF metadata). */
skv_status skv_tokenizer_load_cjson(const cJSON *root, const char *path, skv_tokenizer **out);
/* A tokenizer from a GGUF file's tokenizer.ggml.* keys (skv_tokenizer_load of a *.gguf path). */
skv_status skv_tokenizer_load_gguf(const char *path, skv_tokenizer **out);
struct skv_gguf;
skv_status skv_tokenizer_from_gguf(const struct skv_gguf *g, skv_tokenizer **out);

/* --------------------------------------------------------------- JSON helpers (tokjson.c) */

/* The string member key of o, or NULL if absent or not a string. */
const char *skv_json_str(const cJSON *o, const char *key);
/* The boolean member key of o; def if absent or null. */
int skv_json_bool(const cJSON *o, const char *key, int def);
/* Require o to be an object with a string "type"; sets *type. Errors name path and field. */
skv_status skv_json_type(const cJSON *o, const char *path, const char *field, const char **type);
/* A pattern object {"String": s} or {"Regex": r} (field names it in messages): a literal sets
 * *lit (malloc'd) and *lit_len; a regex is compiled into re (re->code set). */
struct skv_regex;
skv_status skv_json_pattern(const cJSON *o, const char *path, const char *field, char **lit,
                            size_t *lit_len, struct skv_regex *re);
/* A malloc'd copy of s[0..n), NUL-terminated; NULL if out of memory. */
char *skv_tok_strndup(const char *s, size_t n);
/* The single code point of a one-character string field (e.g. "replacement": "▁"). */
skv_status skv_json_char(const cJSON *o, const char *key, const char *path, const char *field,
                         uint32_t def, uint32_t *cp);

/* ---------------------------------------------------------------- growable buffers (utf8.c) */

typedef struct skv_buf { /* bytes; buf[0..len) used, cap allocated */
    char *buf;
    size_t len, cap;
} skv_buf;

/* 0 ok, -1 out of memory. */
int skv_buf_reserve(skv_buf *b, size_t extra);
int skv_buf_append(skv_buf *b, const void *data, size_t n);
void skv_buf_free(skv_buf *b);

typedef struct skv_ids { /* int32 ids; v[0..n) used */
    int32_t *v;
    size_t n, cap;
} skv_ids;

int skv_ids_push(skv_ids *a, int32_t id);

/* Record an out-of-memory error and return SKV_ERR_NOMEM. */
static inline skv_status skv_tok_nomem(void) {
    return skv_set_error(SKV_ERR_NOMEM, "tokenizer: out of memory");
}

/* --------------------------------------------------------------------------- UTF-8 (utf8.c) */

/* Length in bytes of the valid UTF-8 sequence at s[0..n) (1..4), or 0 if it is invalid or
 * truncated. Follows Unicode's table of well-formed sequences (no surrogates, no overlongs). */
int skv_utf8_valid_len(const unsigned char *s, size_t n);
/* Length of the longest prefix of s[0..n) that could still begin a valid sequence (0 if s[0]
 * cannot start one) — the "maximal subpart" that from_utf8_lossy replaces by one U+FFFD. */
int skv_utf8_maximal_subpart(const unsigned char *s, size_t n);
/* Decode the (valid) character at s; returns its byte length and sets *cp. */
int skv_utf8_decode(const char *s, size_t n, uint32_t *cp);
/* Encode cp into out (4 bytes room); returns its length. */
int skv_utf8_encode(uint32_t cp, char *out);
/* 1 if s[0..n) is valid UTF-8. */
int skv_utf8_is_valid(const char *s, size_t n);
/* Append s[0..n) to out with invalid sequences replaced by U+FFFD (as from_utf8_lossy). */
int skv_utf8_append_lossy(skv_buf *out, const char *s, size_t n);
/* Rust's char::is_whitespace (Unicode White_Space). */
int skv_is_whitespace(uint32_t cp);
/* Rust's char::is_numeric (Unicode general categories Nd, Nl, No). */
int skv_is_numeric(uint32_t cp);

/* The GPT-2 byte-level alphabet: byte b <-> a printable code point. */
uint32_t skv_bytelevel_char(uint8_t b);
/* The byte for a code point of the alphabet, or -1. */
int skv_bytelevel_byte(uint32_t cp);

/* --------------------------------------------------------------------------- regex (regex.c) */

typedef struct skv_regex {
    pcre2_code *code;
} skv_regex;

/* Compile pattern (UTF, UCP) and JIT it when possible. Errors name file and field. */
skv_status skv_regex_compile(skv_regex *re, const char *pattern, const char *path,
                             const char *field);
void skv_regex_free(skv_regex *re);

/* One match or gap of a pattern over a string: [start, end) and whether it is a match. */
typedef struct skv_span {
    size_t start, end;
    int is_match;
} skv_span;

typedef struct skv_spans {
    skv_span *v;
    size_t n, cap;
} skv_spans;

/* Cover s[0..n) with alternating gaps and matches of re (re NULL: of the literal lit[0..lit_len)),
 * like tokenizers' Pattern::find_matches. Empty matches are dropped. Appends to out (cleared
 * first). md: match data from pcre2_match_data_create (per call, never shared). */
skv_status skv_find_matches(const skv_regex *re, const char *lit, size_t lit_len, const char *s,
                            size_t n, pcre2_match_data **md, skv_spans *out);

/* ---------------------------------------------------------- pieces of the text being encoded */

/* A piece of text during encoding: bytes [off, off+len) of the work arena. id >= 0: the piece is
 * already a token (an added token). at_start: the piece begins at offset 0 of the input. */
typedef struct skv_piece {
    size_t off, len;
    int32_t id;
    int at_start;
} skv_piece;

typedef struct skv_pieces {
    skv_piece *v;
    size_t n, cap;
} skv_pieces;

int skv_pieces_push(skv_pieces *p, size_t off, size_t len, int32_t id, int at_start);

/* Per-call scratch of one encode. Owned by the call; freed by skv_tokwork_free. */
typedef struct skv_tokwork {
    skv_buf arena;         /* every piece's text lives here (appended, never moved by offset) */
    skv_pieces a, b;       /* ping-pong piece lists */
    skv_spans spans;       /* scratch for skv_find_matches */
    pcre2_match_data *md;  /* lazily created match data */
    skv_buf tmp;           /* scratch for normalizers */
    /* BPE scratch (bpe.c) */
    void *sym;             /* symbol array */
    size_t sym_cap;
    void *heap;            /* merge heap */
    size_t heap_cap;
} skv_tokwork;

void skv_tokwork_free(skv_tokwork *w);

/* ------------------------------------------------------------------- normalizers (normalize.c) */

typedef enum skv_norm_kind {
    NORM_SEQUENCE, NORM_NFC, NORM_NFD, NORM_NFKC, NORM_NFKD, NORM_LOWERCASE, NORM_PREPEND,
    NORM_REPLACE, NORM_STRIP
} skv_norm_kind;

typedef struct skv_norm {
    skv_norm_kind kind;
    struct skv_norm *kids; /* NORM_SEQUENCE: n_kids children (owned) */
    int n_kids;
    char *pat;             /* NORM_REPLACE literal pattern (owned), or NULL when re is used */
    size_t pat_len;
    skv_regex re;          /* NORM_REPLACE regex pattern */
    char *content;         /* NORM_PREPEND prepend / NORM_REPLACE replacement (owned) */
    size_t content_len;
    int strip_left, strip_right; /* NORM_STRIP */
} skv_norm;

/* Parse j (a "normalizer" object) into *n. path names the file for messages. */
skv_status skv_norm_parse(const cJSON *j, const char *path, const char *field, skv_norm *n);
void skv_norm_free(skv_norm *n);
/* Normalize s[0..len) (valid UTF-8) into out (cleared first). tmp: scratch. */
skv_status skv_norm_apply(const skv_norm *n, const char *s, size_t len, skv_buf *out,
                          skv_buf *tmp);

/* --------------------------------------------------------------- pre-tokenizers (pretok.c) */

typedef enum skv_pre_kind {
    PRE_SEQUENCE, PRE_BYTELEVEL, PRE_SPLIT, PRE_METASPACE, PRE_DIGITS, PRE_WHITESPACE,
    PRE_WHITESPACE_SPLIT
} skv_pre_kind;

typedef enum skv_split_behavior {
    SPLIT_REMOVED, SPLIT_ISOLATED, SPLIT_MERGED_WITH_PREVIOUS, SPLIT_MERGED_WITH_NEXT,
    SPLIT_CONTIGUOUS
} skv_split_behavior;

typedef enum skv_prepend_scheme { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER } skv_prepend_scheme;

typedef struct skv_pretok {
    skv_pre_kind kind;
    struct skv_pretok *kids; /* PRE_SEQUENCE children (owned) */
    int n_kids;
    skv_regex re;            /* PRE_SPLIT regex / PRE_BYTELEVEL GPT-2 regex / PRE_WHITESPACE */
    int has_re;
    char *lit;               /* PRE_SPLIT literal pattern (owned) */
    size_t lit_len;
    skv_split_behavior behavior;
    int invert;
    int add_prefix_space, use_regex; /* PRE_BYTELEVEL */
    uint32_t replacement;            /* PRE_METASPACE */
    skv_prepend_scheme prepend;      /* PRE_METASPACE */
    int split;                       /* PRE_METASPACE */
    int individual_digits;           /* PRE_DIGITS */
} skv_pretok;

skv_status skv_pretok_parse(const cJSON *j, const char *path, const char *field, skv_pretok *p);
void skv_pretok_free(skv_pretok *p);
/* Pre-tokenize every piece of w->a that has no id yet; the result replaces w->a. */
skv_status skv_pretok_apply(const skv_pretok *p, skv_tokwork *w);

/* ----------------------------------------------------------------------- decoders (decode.c) */

typedef enum skv_dec_kind {
    DEC_BYTELEVEL, DEC_METASPACE, DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP
} skv_dec_kind;

typedef struct skv_dec_step {
    skv_dec_kind kind;
    char *pat, *content;  /* DEC_REPLACE: literal pattern and replacement (owned) */
    size_t pat_len, content_len;
    uint32_t replacement; /* DEC_METASPACE */
    skv_prepend_scheme prepend;
    uint32_t strip_char;  /* DEC_STRIP */
    int strip_start, strip_stop;
} skv_dec_step;

/* A decoder is a flat list of steps (a Sequence is flattened). n_steps == 0: no decoder, tokens
 * are joined with spaces as the reference does. */
typedef struct skv_decoder {
    skv_dec_step *steps;
    int n_steps;
    int present;
} skv_decoder;

skv_status skv_decoder_parse(const cJSON *j, const char *path, skv_decoder *d);
void skv_decoder_free(skv_decoder *d);
/* Append a token's bytes under the byte-level alphabet (its raw bytes if a character is outside
 * the alphabet). 0 ok, -1 no memory. */
int skv_bytelevel_token_bytes(const char *s, size_t n, skv_buf *out);
/* The byte of a "<0xXX>" token, or -1. */
int skv_byte_token(const char *s, size_t n);
/* Append s[0..n) to out with every occurrence of pat[0..pl) replaced by rep[0..rl). */
int skv_replace_all(const char *s, size_t n, const char *pat, size_t pl, const char *rep,
                    size_t rl, skv_buf *out);

/* ------------------------------------------------------------------------ added tokens (added.c) */

typedef struct skv_added {
    int32_t id;
    char *content;     /* as in the file (owned) */
    size_t content_len;
    char *match;       /* what is matched: content, or content normalized if normalized (owned) */
    size_t match_len;
    int single_word, lstrip, rstrip, normalized, special;
} skv_added;

/* A set of added tokens matched in one pass (leftmost, then longest). */
typedef struct skv_added_set {
    int32_t *idx;        /* indices into tok->added, grouped by first byte of match */
    int32_t first[257];  /* idx[first[b] .. first[b+1]) start with byte b */
    int n;
} skv_added_set;

struct skv_tokenizer;
skv_status skv_added_parse(struct skv_tokenizer *t, const cJSON *arr, const char *path);
void skv_added_free(struct skv_tokenizer *t);
/* Split every id-less piece of w->a on the tokens of set (normalized: 0 raw set, 1 normalized
 * set); matches become pieces with ids. Result replaces w->a. */
skv_status skv_added_split(const struct skv_tokenizer *t, int normalized, skv_tokwork *w);

/* ---------------------------------------------------------------------------- BPE (bpe.c) */

typedef struct skv_bpe {
    skv_strmap vocab;      /* token string -> id (keys point into the tokenizer's strings) */
    skv_u64map merges;     /* (left << 32 | right) -> (rank << 32 | new id) */
    int32_t unk_id;        /* -1: none */
    int byte_fallback, fuse_unk, ignore_merges;
    char *cont_prefix, *eow_suffix; /* continuing_subword_prefix / end_of_word_suffix or NULL */
    int32_t byte_id[256];  /* id of "<0xXX>" or -1 */
} skv_bpe;

skv_status skv_bpe_parse(struct skv_tokenizer *t, const cJSON *model, const char *path);
void skv_bpe_free(skv_bpe *b);
/* Tokenize one pre-token s[0..len) (valid UTF-8) and append its ids to out. */
skv_status skv_bpe_word(const skv_bpe *b, const char *s, size_t len, skv_tokwork *w,
                        skv_ids *out);

/* ------------------------------------------------------------------------------ tokenizer */

struct skv_tokenizer {
    int32_t n_vocab;      /* 1 + the largest id of the vocab and of the added tokens */
    char **id_str;        /* id -> token string (NUL-terminated, owned by strings), NULL if none */
    uint32_t *id_len;     /* its byte length */
    char *strings;        /* arena holding every vocab string (owned) */
    skv_bpe bpe;
    skv_added *added;     /* n_added added tokens (owned) */
    int n_added;
    skv_added_set raw_set, norm_set;
    skv_norm norm;
    int has_norm;
    skv_pretok pre;
    int has_pre;
    skv_decoder dec;
};

#endif
