/*
 * gguf.h — GGUF (v2/v3) files: metadata of every type, tensor infos, alignment, memory-mapped
 * and validated before any tensor is handed out.
 *
 * Layout (little-endian): "GGUF", u32 version, u64 n_tensors, u64 n_kv; n_kv key/values
 * (string key, u32 type, value; strings are u64 length + bytes; arrays are u32 element type,
 * u64 count, elements); n_tensors infos (string name, u32 n_dims, u64 ne[n_dims], u32 ggml
 * type, u64 offset); padding to `general.alignment` (default 32); the data section, offsets
 * relative to its start. Dimension order is ggml's: ne[0] is the fastest-varying (a matrix of
 * `rows` outputs by `cols` inputs has ne = {cols, rows}).
 */
#ifndef SKV_GGUF_H
#define SKV_GGUF_H

#include "internal.h"

typedef enum skv_gguf_type {
    SKV_GGUF_U8 = 0, SKV_GGUF_I8 = 1, SKV_GGUF_U16 = 2, SKV_GGUF_I16 = 3, SKV_GGUF_U32 = 4,
    SKV_GGUF_I32 = 5, SKV_GGUF_F32 = 6, SKV_GGUF_BOOL = 7, SKV_GGUF_STRING = 8, SKV_GGUF_ARRAY = 9,
    SKV_GGUF_U64 = 10, SKV_GGUF_I64 = 11, SKV_GGUF_F64 = 12, SKV_GGUF_TYPE_COUNT = 13
} skv_gguf_type;

/* A string inside the file (not NUL-terminated). */
typedef struct skv_gguf_str {
    const char *s;
    uint64_t n;
} skv_gguf_str;

typedef struct skv_gguf_kv {
    char *key;              /* NUL-terminated copy */
    skv_gguf_type type;
    /* scalars: widened into one of these (by type: unsigned, signed, float, bool as u) */
    uint64_t u;
    int64_t i;
    double f;
    skv_gguf_str str;       /* SKV_GGUF_STRING */
    /* SKV_GGUF_ARRAY: element type, count; numeric elements stay in the file (arr, packed
     * little-endian), string elements are listed in strs */
    skv_gguf_type arr_type;
    uint64_t arr_n;
    const void *arr;
    skv_gguf_str *strs;
} skv_gguf_kv;

typedef struct skv_gguf_tensor {
    char *name;             /* NUL-terminated copy */
    int32_t n_dims;         /* 1..4 */
    int64_t ne[4];          /* ggml order; unused dimensions are 1 */
    uint32_t ggml_type;
    skv_dtype dtype;        /* the engine's dtype, or -1 when the type is known but not used */
    uint64_t offset;        /* into the data section */
    uint64_t nbytes;
    const void *data;       /* into the mapping (writable private copy: see skv_gguf_open) */
} skv_gguf_tensor;

typedef struct skv_gguf skv_gguf;

/* Open, map and validate path: magic, version (2 or 3), counts against the file size, every
 * key/value (known types, no nested arrays, no duplicate keys, lengths inside the file),
 * `general.alignment` (a power of two, u32), every tensor info (name <= 64 bytes and unique,
 * 1 <= n_dims <= 4, dimensions >= 1 without overflow, a known ggml type, ne[0] a multiple of the
 * type's block, offset aligned), the data of every tensor inside the file and no two tensors
 * overlapping. The mapping is private and writable (MAP_PRIVATE: writes never reach the file),
 * so a loader may permute rows in place; with to_ram the data is copied into huge-page-backed
 * memory and the file mapping dropped. Errors name the file and the key or tensor. */
skv_status skv_gguf_open(const char *path, int to_ram, skv_gguf **out);
/* The same checks on a whole file image in memory (named `name` in messages); views point into
 * buf (which must outlive the handle and stay writable if the loader permutes). */
skv_status skv_gguf_parse_buffer(void *buf, size_t len, const char *name, skv_gguf **out);
void skv_gguf_close(skv_gguf *g);

const char *skv_gguf_path(const skv_gguf *g);
uint32_t skv_gguf_version(const skv_gguf *g);
uint32_t skv_gguf_alignment(const skv_gguf *g);
int64_t skv_gguf_n_kv(const skv_gguf *g);
const skv_gguf_kv *skv_gguf_kv_at(const skv_gguf *g, int64_t i);
const skv_gguf_kv *skv_gguf_find_kv(const skv_gguf *g, const char *key); /* NULL if absent */
int64_t skv_gguf_n_tensors(const skv_gguf *g);
const skv_gguf_tensor *skv_gguf_tensor_at(const skv_gguf *g, int64_t i);
const skv_gguf_tensor *skv_gguf_find_tensor(const skv_gguf *g, const char *name);
int64_t skv_gguf_data_bytes(const skv_gguf *g); /* sum of the tensors' bytes */

/* Typed reads of a scalar key, with messages naming the file and key. An integer key of any
 * integer type within range; a float key of F32/F64 (or an integer). `req` 0: absent leaves *v
 * as it is and returns SKV_OK. */
skv_status skv_gguf_get_int(const skv_gguf *g, const char *key, int req, int64_t lo, int64_t hi, int64_t *v);
skv_status skv_gguf_get_float(const skv_gguf *g, const char *key, int req, double *v);
skv_status skv_gguf_get_bool(const skv_gguf *g, const char *key, int req, int *v);
/* A string key: a malloc'd NUL-terminated copy (NULL when absent and not required). */
skv_status skv_gguf_get_str(const skv_gguf *g, const char *key, int req, char **v);
/* An array key of the given element type (SKV_GGUF_TYPE_COUNT: any), *kv set (NULL if absent
 * and not required). */
skv_status skv_gguf_get_arr(const skv_gguf *g, const char *key, int req, skv_gguf_type elem,
                            const skv_gguf_kv **kv);
/* Element i of a numeric array as a double / int64. */
double skv_gguf_arr_f(const skv_gguf_kv *kv, uint64_t i);
int64_t skv_gguf_arr_i(const skv_gguf_kv *kv, uint64_t i);

/* ggml type name ("Q4_K", or "type N" for an unknown id). */
const char *skv_gguf_ggml_type_name(uint32_t t);
const char *skv_gguf_type_name(skv_gguf_type t);

#endif
