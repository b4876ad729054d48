/*
 * vstore.h — a slow store for V blocks outside the process heap, addressed by (stream, cache
 * block): a memory-mapped file (rows are read straight from the mapping: page cache warm or
 * cold) or zstd-compressed units of `unit` tokens (a multiple of SKV_KV_BLOCK) appended to a
 * file and read back with pread. The file is created in a directory and unlinked at once (it
 * lives as long as the store; a path is kept for messages).
 *
 * Writes happen outside parallel regions; reads (skv_vstore_rows, skv_vstore_block) may run
 * from several threads at once, each with its own scratch.
 */
#ifndef SKV_KV_VSTORE_H
#define SKV_KV_VSTORE_H

#include "internal.h"

typedef struct skv_vstore skv_vstore;

/* Counters of one reader (summed by the caller). */
typedef struct skv_vstore_stats {
    int64_t rows, bytes, blocks, ns;
} skv_vstore_stats;

/* kind: SKV_VSTORE_MMAP or SKV_VSTORE_ZSTD; n_stream streams of max_blocks cache blocks of
 * block_bytes each (rows of row_bytes; row_bytes 0: rows are not addressable, whole blocks
 * are read); elem_bytes: bytes per value (zstd compresses byte planes: the k-th byte of every
 * value together); unit: cache blocks per compressed unit (zstd). */
skv_status skv_vstore_open(skv_vstore **out, int kind, const char *dir, int64_t n_stream, int32_t max_blocks,
                           size_t block_bytes, size_t row_bytes, int32_t elem_bytes, int32_t unit);
void skv_vstore_close(skv_vstore *s);
int skv_vstore_kind(const skv_vstore *s);
int32_t skv_vstore_unit(const skv_vstore *s); /* cache blocks per write */
const char *skv_vstore_path(const skv_vstore *s);
/* Rows made of up to 3 segments: row r of a block is the concatenation of len[i] bytes at
 * off0[i] + r * stride[i] (default: one segment of row_bytes at r * row_bytes). */
void skv_vstore_set_row_layout(skv_vstore *s, int nseg, const size_t *off0, const size_t *stride, const size_t *len);

/* Bytes the store holds (mmap: blocks written; zstd: compressed bytes). */
int64_t skv_vstore_bytes(const skv_vstore *s);

/* Write cache blocks b0 .. b0 + unit - 1 of a stream (blocks[i]: block_bytes each). */
skv_status skv_vstore_put(skv_vstore *s, int64_t stream, int32_t b0, const uint8_t *const *blocks);
/* Forget a stream's blocks b0 .. b0 + n - 1 (they are written again later). */
void skv_vstore_forget(skv_vstore *s, int64_t stream, int32_t b0, int32_t n);
/* Read one whole cache block into out (block_bytes). */
skv_status skv_vstore_block(const skv_vstore *s, int64_t stream, int32_t b, uint8_t *out, skv_vstore_stats *ct);
/* Read the rows of slots slot[0..n) (ascending) of a stream into out (row_bytes each, in
 * order). scratch: skv_vstore_scratch_bytes(s). */
skv_status skv_vstore_rows(const skv_vstore *s, int64_t stream, const int32_t *slot, int32_t n, uint8_t *out,
                           uint8_t *scratch, skv_vstore_stats *ct);
size_t skv_vstore_scratch_bytes(const skv_vstore *s);
/* The file still holds what was written (a file truncated under a running context is an
 * error, named, instead of a SIGBUS on the mapping). */
skv_status skv_vstore_check(const skv_vstore *s);
/* Write dirty pages back and drop the file's pages from the page cache (cold reads). */
void skv_vstore_drop_cache(skv_vstore *s);

#endif
