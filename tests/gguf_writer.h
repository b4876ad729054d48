/*
 * gguf_writer.h — a GGUF file built in memory by the tests (test_gguf.c, test_quant.c, the GGUF
 * model tests): metadata of any type, tensor infos with chosen offsets, data. Header-only.
 */
#ifndef SKV_TEST_GGUF_WRITER_H
#define SKV_TEST_GGUF_WRITER_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct gw {
    uint8_t *b;
    size_t n, cap;
} gw;

static inline void gw_bytes(gw *w, const void *p, size_t n) {
    if (w->n + n > w->cap) {
        w->cap = (w->n + n) * 2 + 256;
        w->b = realloc(w->b, w->cap);
    }
    memcpy(w->b + w->n, p, n);
    w->n += n;
}
static inline void gw_u8(gw *w, uint8_t v) { gw_bytes(w, &v, 1); }
static inline void gw_u32(gw *w, uint32_t v) { gw_bytes(w, &v, 4); } /* little-endian host */
static inline void gw_u64(gw *w, uint64_t v) { gw_bytes(w, &v, 8); }
static inline void gw_str(gw *w, const char *s) {
    gw_u64(w, strlen(s));
    gw_bytes(w, s, strlen(s));
}
static inline void gw_head(gw *w, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    gw_bytes(w, "GGUF", 4);
    gw_u32(w, version);
    gw_u64(w, n_tensors);
    gw_u64(w, n_kv);
}
/* key + type + raw value bytes */
static inline void gw_kv(gw *w, const char *key, uint32_t type, const void *val, size_t n) {
    gw_str(w, key);
    gw_u32(w, type);
    gw_bytes(w, val, n);
}
static inline void gw_kv_u32(gw *w, const char *key, uint32_t v) { gw_kv(w, key, 4, &v, 4); }
static inline void gw_kv_f32(gw *w, const char *key, float v) { gw_kv(w, key, 6, &v, 4); }
static inline void gw_kv_str(gw *w, const char *key, const char *v) {
    gw_str(w, key);
    gw_u32(w, 8);
    gw_str(w, v);
}
/* tensor info: name, dims (ggml order), ggml type, offset */
static inline void gw_tensor(gw *w, const char *name, int nd, const int64_t *ne, uint32_t type, uint64_t off) {
    gw_str(w, name);
    gw_u32(w, (uint32_t)nd);
    for (int i = 0; i < nd; i++) gw_u64(w, (uint64_t)ne[i]);
    gw_u32(w, type);
    gw_u64(w, off);
}
static inline void gw_align(gw *w, size_t a) {
    while (w->n % a) gw_u8(w, 0);
}

#endif
