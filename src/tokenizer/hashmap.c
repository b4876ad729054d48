/*
 * hashmap.c — the string and uint64 open-addressing hash maps of hashmap.h (linear probing,
 * load factor at most 1/2, grown by doubling).
 */
#include "hashmap.h"

#include <stdlib.h>
#include <string.h>

static uint64_t hash_bytes(const char *s, size_t len) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a, then a final mix */
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ull;
    }
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 32;
    return h;
}

static uint64_t hash_u64(uint64_t x) { /* splitmix64 finaliser */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

static size_t cap_for(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n + 2) cap *= 2;
    return cap;
}

int skv_strmap_init(skv_strmap *m, size_t n_expected) {
    m->cap = cap_for(n_expected);
    m->n = 0;
    m->slots = calloc(m->cap, sizeof *m->slots);
    return m->slots ? 0 : -1;
}

void skv_strmap_free(skv_strmap *m) {
    free(m->slots);
    m->slots = NULL;
    m->cap = m->n = 0;
}

static void strmap_insert(skv_strmap_slot *slots, size_t cap, const char *key, uint32_t len,
                          int32_t val, size_t *n) {
    size_t i = hash_bytes(key, len) & (cap - 1);
    while (slots[i].key) {
        if (slots[i].len == len && memcmp(slots[i].key, key, len) == 0) {
            slots[i].val = val;
            return;
        }
        i = (i + 1) & (cap - 1);
    }
    slots[i].key = key;
    slots[i].len = len;
    slots[i].val = val;
    (*n)++;
}

int skv_strmap_put(skv_strmap *m, const char *key, size_t len, int32_t val) {
    if (2 * (m->n + 1) > m->cap) {
        size_t ncap = m->cap * 2, nn = 0;
        skv_strmap_slot *ns = calloc(ncap, sizeof *ns);
        if (!ns) return -1;
        for (size_t i = 0; i < m->cap; i++)
            if (m->slots[i].key)
                strmap_insert(ns, ncap, m->slots[i].key, m->slots[i].len, m->slots[i].val, &nn);
        free(m->slots);
        m->slots = ns;
        m->cap = ncap;
        m->n = nn;
    }
    /* An empty key is stored with a non-NULL pointer so that the slot reads as occupied. */
    strmap_insert(m->slots, m->cap, len ? key : "", (uint32_t)len, val, &m->n);
    return 0;
}

int32_t skv_strmap_get(const skv_strmap *m, const char *key, size_t len) {
    if (!m->slots) return -1;
    size_t i = hash_bytes(key, len) & (m->cap - 1);
    while (m->slots[i].key) {
        if (m->slots[i].len == len && memcmp(m->slots[i].key, key, len) == 0)
            return m->slots[i].val;
        i = (i + 1) & (m->cap - 1);
    }
    return -1;
}

int skv_u64map_init(skv_u64map *m, size_t n_expected) {
    m->cap = cap_for(n_expected);
    m->n = 0;
    m->keys = malloc(m->cap * sizeof *m->keys);
    m->vals = malloc(m->cap * sizeof *m->vals);
    if (!m->keys || !m->vals) {
        skv_u64map_free(m);
        return -1;
    }
    memset(m->keys, 0xff, m->cap * sizeof *m->keys);
    return 0;
}

void skv_u64map_free(skv_u64map *m) {
    free(m->keys);
    free(m->vals);
    m->keys = NULL;
    m->vals = NULL;
    m->cap = m->n = 0;
}

static void u64map_insert(uint64_t *keys, uint64_t *vals, size_t cap, uint64_t key, uint64_t val,
                          size_t *n) {
    size_t i = hash_u64(key) & (cap - 1);
    while (keys[i] != UINT64_MAX) {
        if (keys[i] == key) {
            vals[i] = val;
            return;
        }
        i = (i + 1) & (cap - 1);
    }
    keys[i] = key;
    vals[i] = val;
    (*n)++;
}

int skv_u64map_put(skv_u64map *m, uint64_t key, uint64_t val) {
    if (2 * (m->n + 1) > m->cap) {
        size_t ncap = m->cap * 2, nn = 0;
        uint64_t *nk = malloc(ncap * sizeof *nk), *nv = malloc(ncap * sizeof *nv);
        if (!nk || !nv) {
            free(nk);
            free(nv);
            return -1;
        }
        memset(nk, 0xff, ncap * sizeof *nk);
        for (size_t i = 0; i < m->cap; i++)
            if (m->keys[i] != UINT64_MAX) u64map_insert(nk, nv, ncap, m->keys[i], m->vals[i], &nn);
        free(m->keys);
        free(m->vals);
        m->keys = nk;
        m->vals = nv;
        m->cap = ncap;
        m->n = nn;
    }
    u64map_insert(m->keys, m->vals, m->cap, key, val, &m->n);
    return 0;
}

int skv_u64map_get(const skv_u64map *m, uint64_t key, uint64_t *val) {
    if (!m->keys) return 0;
    size_t i = hash_u64(key) & (m->cap - 1);
    while (m->keys[i] != UINT64_MAX) {
        if (m->keys[i] == key) {
            *val = m->vals[i];
            return 1;
        }
        i = (i + 1) & (m->cap - 1);
    }
    return 0;
}
