/*
 * hashmap.h — two small open-addressing hash maps used by the tokenizer:
 *   skv_strmap:  byte string -> int32 (vocab lookups; keys are borrowed, not copied)
 *   skv_u64map:  uint64 key -> uint64 value (BPE merges: (left id, right id) -> (rank, new id))
 * Both are filled once at load time and then only read, so a const map is safe to share
 * between threads.
 */
#ifndef SKV_TOK_HASHMAP_H
#define SKV_TOK_HASHMAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct skv_strmap_slot {
    const char *key; /* borrowed: must outlive the map; NULL = empty slot */
    uint32_t len;
    int32_t val;
} skv_strmap_slot;

typedef struct skv_strmap {
    skv_strmap_slot *slots; /* cap slots, cap a power of two */
    size_t cap, n;
} skv_strmap;

/* Size the map for about n_expected keys; returns 0 on success, -1 if out of memory. */
int skv_strmap_init(skv_strmap *m, size_t n_expected);
void skv_strmap_free(skv_strmap *m);
/* Insert or overwrite. key[0..len) must stay valid while the map lives. 0 ok, -1 no memory. */
int skv_strmap_put(skv_strmap *m, const char *key, size_t len, int32_t val);
/* The value of key, or -1 if absent. */
int32_t skv_strmap_get(const skv_strmap *m, const char *key, size_t len);

typedef struct skv_u64map {
    uint64_t *keys; /* cap entries; UINT64_MAX marks an empty slot (never a real key) */
    uint64_t *vals;
    size_t cap, n;
} skv_u64map;

int skv_u64map_init(skv_u64map *m, size_t n_expected);
void skv_u64map_free(skv_u64map *m);
int skv_u64map_put(skv_u64map *m, uint64_t key, uint64_t val);
/* 1 and *val if present, else 0. */
int skv_u64map_get(const skv_u64map *m, uint64_t key, uint64_t *val);

#endif
