/*
 * cache.h — the KV cache object: per-(layer, KV head) streams of kept tokens whose K and V
 * rows live in fixed-size blocks drawn from pools (one per tier and storage format).
 *
 * A stream's slots 0..n-1 hold its kept tokens in arbitrary order (attention does not depend on
 * key order; each slot records the token's position, and keys are stored after RoPE at that
 * position). Slot s lives in row s % SKV_KV_BLOCK of the stream's block s / SKV_KV_BLOCK, for K
 * and for V separately. New tokens are appended at the end; eviction compacts (stably) or swaps
 * the last slot into the hole.
 */
#ifndef SKV_KV_CACHE_H
#define SKV_KV_CACHE_H

#include "internal.h"
#include "kv/vstore.h"

#define SKV_KV_BLOCK 32 /* tokens per block (also the KIVI quantization group) */
#define SKV_KV_VGROUP 32 /* channels per value quantization group (KIVI, per token) */

typedef enum skv_tier { SKV_TIER_FAST = 0, SKV_TIER_SLOW = 1, SKV_TIER_COUNT } skv_tier;

/* Pools: blocks of one byte size, allocated in chunks, recycled through a free list. */
typedef struct skv_pool {
    skv_kv_format fmt;
    skv_tier tier;
    size_t block_bytes;
    uint8_t **chunks;     /* (n_chunks) each holds SKV_POOL_CHUNK blocks */
    int32_t n_chunks, cap_chunks;
    int32_t *free_ids;    /* stack of free block indices */
    int32_t n_free, cap_free;
    int64_t n_used;       /* blocks handed out */
} skv_pool;

/* A block reference: pool index (tier * SKV_KV_FORMAT_COUNT + fmt) in the top 8 bits. */
typedef int32_t skv_block_id;

typedef struct skv_stream {
    skv_block_id *kb, *vb; /* (max_blocks) K and V blocks; -1 where none */
    int32_t n;             /* kept tokens (slots) */
    int32_t *pos;          /* (cap) position of each slot */
    float *acc;            /* (cap) attention accumulated over all queries, group-summed */
    float *win;            /* (cap) attention of the last observation-window queries */
    float *last;           /* (cap) attention of the newest query, group-summed */
    int32_t n_slow;        /* slots [0, n_slow) have their V in the cache's slow store (whole
                              blocks; their vb entries are -1) */
} skv_stream;

typedef struct skv_cache {
    int32_t n_layer, n_kv_head, head_dim;
    int32_t cap;           /* most slots a stream may hold (the context size) */
    int32_t max_blocks;    /* per stream: ceil(cap / SKV_KV_BLOCK) */
    skv_kv_format fmt;     /* format of full blocks (the last, partial block of a quantized
                              stream stays f32: KIVI's full-precision residual) */
    skv_pool pools[SKV_TIER_COUNT * SKV_KV_FORMAT_COUNT];
    skv_stream *streams;   /* (n_layer, n_kv_head) */
    skv_tier k_tier, v_tier; /* tier new blocks of K and V come from */
    skv_vstore *vs;        /* slow store of V (NULL: none; owned by the cache) */
    int32_t vs_err;        /* a read from the store failed (vs_msg says why) */
    int64_t shared_bytes;  /* bytes of the rows cross-layer merging (MiniCache) shares: what
                              its representation does not store (usage subtracts them) */
    char vs_msg[320];
} skv_cache;

skv_status skv_cache_init(skv_cache *c, int32_t n_layer, int32_t n_kv_head, int32_t head_dim,
                          int32_t cap, skv_kv_format fmt);
void skv_cache_free(skv_cache *c);
/* Allocate the per-slot attention statistics (acc, win, last) of every stream. */
skv_status skv_cache_enable_stats(skv_cache *c);
/* Deep copy (blocks, slots, statistics) into dst, which must be uninitialised. */
skv_status skv_cache_clone(skv_cache *dst, const skv_cache *src);

static inline skv_stream *skv_cache_stream(const skv_cache *c, int32_t l, int32_t g) {
    return &c->streams[(int64_t)l * c->n_kv_head + g];
}

/* Append one token's K and V rows (f32, head_dim each) at position pos. */
skv_status skv_cache_append(skv_cache *c, int32_t l, int32_t g, int32_t pos, const float *k,
                            const float *v);
/* Drop every slot (positions >= from_pos are forgotten; with from_pos = 0 the stream empties).
 * Only removes slots whose position is >= from_pos; keeps the rest in order. */
void skv_cache_truncate(skv_cache *c, int32_t from_pos);
/* Keep exactly the slots with keep[s] != 0, preserving their order. */
void skv_cache_compact(skv_cache *c, int32_t l, int32_t g, const uint8_t *keep);
/* Remove slot s by moving the last slot into it. */
void skv_cache_remove_swap(skv_cache *c, int32_t l, int32_t g, int32_t s);

/* Rows of one block for reading: f32 pointers when the block is f32, else the block decoded
 * into scratch (SKV_KV_BLOCK x head_dim floats each). n_rows of the block are valid. */
const float *skv_cache_k_rows(const skv_cache *c, const skv_stream *st, int32_t b, float *scratch);
const float *skv_cache_v_rows(const skv_cache *c, const skv_stream *st, int32_t b, float *scratch);
/* Block b of a stream's K (is_v 0) or V as stored, for kernels that read the format directly
 * (kv/kvattn.h): its bytes, and its format in *fmt; rows_in_block(b) of its rows are valid
 * (min(n - b * SKV_KV_BLOCK, SKV_KV_BLOCK)). V blocks in the slow store are read into scratch
 * (SKV_KV_BLOCK x head_dim floats) first; a failed read is recorded (skv_cache_vs_fail) and
 * gives zero f32 rows. */
const void *skv_cache_block(const skv_cache *c, const skv_stream *st, int32_t b, int is_v, skv_kv_format *fmt,
                            void *scratch);
/* n f32 values to IEEE f16 (round to nearest even; F16C where the compiler targets it), as f16
 * caches store their rows. */
void skv_kv_f32_to_f16_row(const float *x, uint16_t *d, int64_t n);
/* All n slots of a stream, decoded to f32: K and V (n, head_dim). */
void skv_cache_gather(const skv_cache *c, int32_t l, int32_t g, float *k, float *v);

/* The slow V store: attach one (the cache owns it; blocks stored in the cache's format), move a stream's
 * V blocks to it while at least keep_fast slots stay fast (whole store units from the oldest
 * slot), and bring them all back (before anything reorders slots). A stored block's rows are
 * read through skv_cache_v_rows like any other (from the store). */
skv_status skv_cache_attach_vstore(skv_cache *c, skv_vstore *vs);
skv_status skv_cache_offload_v(skv_cache *c, int32_t l, int32_t g, int32_t keep_fast);
skv_status skv_cache_recall_v(skv_cache *c, int32_t l, int32_t g);
/* Record the calling thread's last error as the store's failure (safe from any thread). */
void skv_cache_vs_fail(const skv_cache *c);
static inline int64_t skv_cache_stream_index(const skv_cache *c, const skv_stream *st) {
    return st - c->streams;
}

/* Overwrite slot s's K (is_v 0) or V row with x (head_dim f32); f32 and bf16 blocks only. */
skv_status skv_cache_set_row(skv_cache *c, int32_t l, int32_t g, int32_t s, int is_v, const float *x);

/* Move every block of a stream's K or V to a tier (copy, then release the old blocks). */
skv_status skv_cache_move(skv_cache *c, int32_t l, int32_t g, int is_v, skv_tier tier);

/* Bytes held right now: per (tier, format) and per stream (k and v). */
typedef struct skv_cache_usage {
    int64_t bytes[SKV_TIER_COUNT][SKV_KV_FORMAT_COUNT];
    int64_t total;
    int64_t slots;         /* kept tokens summed over streams */
} skv_cache_usage;
void skv_cache_usage_get(const skv_cache *c, skv_cache_usage *u);
int64_t skv_cache_stream_bytes(const skv_cache *c, int32_t l, int32_t g);

size_t skv_kv_block_bytes(skv_kv_format fmt, int32_t head_dim, int is_v);

/* A stream exchanged with another context (export/import, read-back): positions and statistics
 * (f32) plus K and V in 32-row blocks, each block in its stored format (kv/cache.h layout). */
typedef struct skv_stream_io {
    int32_t n;
    int32_t *pos;           /* (n) */
    float *acc, *win, *last;/* (n) each, NULL when not collected */
    uint8_t *kfmt, *vfmt;   /* (nblocks) skv_kv_format of each block */
    uint8_t *kdata, *vdata; /* the blocks' bytes, in order */
    int64_t kbytes, vbytes;
} skv_stream_io;
void skv_stream_io_free(skv_stream_io *s);
/* A stream's slots, statistics and (rows: 1) blocks as they are stored (arrays malloc'd; with
 * rows 0 only n, positions and statistics are filled). */
skv_status skv_cache_stream_export(const skv_cache *c, int32_t l, int32_t g, int rows, skv_stream_io *s);
/* Fill an empty stream from s (blocks in the cache's current tiers); checks sizes and formats. */
skv_status skv_cache_stream_import(skv_cache *c, int32_t l, int32_t g, const skv_stream_io *s);

#endif
