/*
 * internal.h — helpers shared by every part of libslimkv (not part of the public API):
 * error reporting, assertions, bf16/f16 conversion, whole-file reading.
 */
#ifndef SKV_INTERNAL_H
#define SKV_INTERNAL_H

#include "slimkv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Record a detailed message for skv_last_error() and return st, so callers can write
 * `return skv_set_error(SKV_ERR_IO, "%s: cannot open", path);`. */
skv_status skv_set_error(skv_status st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Programmer errors (broken invariants), never user input. */
#define SKV_ASSERT(cond)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "slimkv: assertion failed at %s:%d: %s\n", __FILE__, __LINE__, \
                    #cond);                                                                \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

#define SKV_MIN(a, b) ((a) < (b) ? (a) : (b))
#define SKV_MAX(a, b) ((a) > (b) ? (a) : (b))

static inline float skv_bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = {.u = (uint32_t)h << 16};
    return v.f;
}

/* Round-to-nearest-even, NaN preserved (as torch does). */
static inline uint16_t skv_f32_to_bf16(float f) {
    union { uint32_t u; float f; } v = {.f = f};
    if ((v.u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40);
    uint32_t rounding = 0x7fffu + ((v.u >> 16) & 1u);
    return (uint16_t)((v.u + rounding) >> 16);
}

float skv_f16_to_f32(uint16_t h);
uint16_t skv_f32_to_f16(float f);

/* Geometry of a stored dtype: weights per block (1 for float types) and bytes per block; a
 * row of `cols` weights (a multiple of the block) takes cols / block * block_bytes bytes. */
int32_t skv_dtype_block(skv_dtype t);
int32_t skv_dtype_block_bytes(skv_dtype t);
static inline int64_t skv_dtype_row_bytes(skv_dtype t, int64_t cols) {
    return cols / skv_dtype_block(t) * skv_dtype_block_bytes(t);
}
/* 1 for the block-quantized types */
static inline int skv_dtype_is_quant(skv_dtype t) { return t >= SKV_DTYPE_Q4_0 && t < SKV_DTYPE_COUNT; }

/* Read a whole file into a NUL-terminated malloc'd buffer. Errors name the path. */
skv_status skv_read_file(const char *path, char **data, size_t *len);

/* Map a regular file privately (writable: copy-on-write pages the caller may change). Files
 * shorter than min_size are refused as too short for `what`. Errors name the path. */
skv_status skv_map_file(const char *path, size_t min_size, const char *what, int writable, void **map,
                        size_t *size);
/* A private copy of size bytes of src in anonymous memory backed by transparent huge pages (fewer
 * TLB misses when decode streams every weight), read-only unless writable; *map_size: the
 * mapping's length (munmap with it). NULL if the memory cannot be had. */
void *skv_copy_to_hugepages(const void *src, size_t size, int writable, size_t *map_size);

/* Join a directory and a file name into buf; returns buf. */
const char *skv_path_join(char *buf, size_t cap, const char *dir, const char *name);


#endif /* SKV_INTERNAL_H */
