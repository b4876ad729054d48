/*
 * cache.c — block pools and the per-(layer, KV head) streams of the KV cache (see cache.h).
 */
#include "kv/cache.h"

#include "kv/quant.h"

#include <unistd.h>
#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#endif

#define SKV_POOL_CHUNK 64 /* blocks allocated at once when a pool runs dry */

/* ---------------------------------------------------------------------------------------- */
/* Pools                                                                                     */
/* ---------------------------------------------------------------------------------------- */

size_t skv_kv_block_bytes(skv_kv_format fmt, int32_t hd, int is_v) {
    switch (fmt) {
    case SKV_KV_F32: return (size_t)SKV_KV_BLOCK * hd * sizeof(float);
    case SKV_KV_BF16:
    case SKV_KV_F16: return (size_t)SKV_KV_BLOCK * hd * sizeof(uint16_t);
    case SKV_KV_Q8:
    case SKV_KV_Q4: return skv_quant_block_bytes(fmt, hd, is_v);
    default: return 0;
    }
}

static inline int pool_index(skv_tier t, skv_kv_format f) { return (int)t * SKV_KV_FORMAT_COUNT + (int)f; }
static inline int id_pool(skv_block_id id) { return (int)((uint32_t)id >> 24); }
static inline int32_t id_index(skv_block_id id) { return id & 0xffffff; }

/* Pools of the same format keep K and V blocks, whose quantized sizes differ: a pool's blocks
 * are sized for the larger of the two. */
static size_t pool_block_bytes(skv_kv_format f, int32_t hd) {
    size_t k = skv_kv_block_bytes(f, hd, 0), v = skv_kv_block_bytes(f, hd, 1);
    return k > v ? k : v;
}

static skv_status pool_grow(skv_pool *p) {
    if (p->n_chunks == p->cap_chunks) {
        int32_t cap = p->cap_chunks ? 2 * p->cap_chunks : 16;
        uint8_t **ch = realloc(p->chunks, (size_t)cap * sizeof *ch);
        if (!ch) return skv_set_error(SKV_ERR_NOMEM, "KV cache: out of memory");
        p->chunks = ch;
        p->cap_chunks = cap;
    }
    if ((int64_t)(p->n_chunks + 1) * SKV_POOL_CHUNK > 0xffffff)
        return skv_set_error(SKV_ERR_NOMEM, "KV cache: block pool exhausted");
    uint8_t *mem = aligned_alloc(64, (p->block_bytes * SKV_POOL_CHUNK + 63) / 64 * 64);
    int32_t *fr = realloc(p->free_ids, (size_t)(p->cap_free + SKV_POOL_CHUNK) * sizeof *fr);
    if (!mem || !fr) {
        free(mem);
        if (fr) p->free_ids = fr;
        return skv_set_error(SKV_ERR_NOMEM, "KV cache: out of memory");
    }
    p->free_ids = fr;
    p->cap_free += SKV_POOL_CHUNK;
    int32_t base = p->n_chunks * SKV_POOL_CHUNK;
    p->chunks[p->n_chunks++] = mem;
    for (int32_t i = SKV_POOL_CHUNK - 1; i >= 0; i--) p->free_ids[p->n_free++] = base + i;
    return SKV_OK;
}

static skv_status block_alloc(skv_cache *c, skv_tier t, skv_kv_format f, skv_block_id *out) {
    const int pi = pool_index(t, f);
    skv_pool *p = &c->pools[pi];
    if (p->n_free == 0) {
        skv_status st = pool_grow(p);
        if (st) return st;
    }
    int32_t idx = p->free_ids[--p->n_free];
    p->n_used++;
    *out = (skv_block_id)(((uint32_t)pi << 24) | (uint32_t)idx);
    return SKV_OK;
}

static void block_release(skv_cache *c, skv_block_id id) {
    skv_pool *p = &c->pools[id_pool(id)];
    p->free_ids[p->n_free++] = id_index(id);
    p->n_used--;
}

static inline uint8_t *block_mem(const skv_cache *c, skv_block_id id) {
    const skv_pool *p = &c->pools[id_pool(id)];
    int32_t idx = id_index(id);
    return p->chunks[idx / SKV_POOL_CHUNK] + (size_t)(idx % SKV_POOL_CHUNK) * p->block_bytes;
}

static inline skv_kv_format block_fmt(skv_block_id id) {
    return (skv_kv_format)(id_pool(id) % SKV_KV_FORMAT_COUNT);
}
static inline skv_tier block_tier(skv_block_id id) {
    return (skv_tier)(id_pool(id) / SKV_KV_FORMAT_COUNT);
}

/* ---------------------------------------------------------------------------------------- */
/* Cache                                                                                     */
/* ---------------------------------------------------------------------------------------- */

skv_status skv_cache_init(skv_cache *c, int32_t n_layer, int32_t n_kv_head, int32_t head_dim,
                          int32_t cap, skv_kv_format fmt) {
    memset(c, 0, sizeof *c);
    if ((fmt == SKV_KV_Q8 || fmt == SKV_KV_Q4) && head_dim % SKV_KV_VGROUP != 0)
        return skv_set_error(SKV_ERR_UNSUPPORTED,
                             "KV quantization groups values in %d channels; head_dim %d is not a "
                             "multiple", SKV_KV_VGROUP, head_dim);
    /* per stream: a position per token and a K and a V block id per block, allocated now */
    const int64_t ns = (int64_t)n_layer * n_kv_head;
    const int64_t max_blocks = ((int64_t)cap + SKV_KV_BLOCK - 1) / SKV_KV_BLOCK;
    if (cap <= 0 || ns <= 0 || max_blocks > 0xffffff)
        return skv_set_error(SKV_ERR_ARG, "KV cache: a context of %d tokens cannot be held (1..%lld tokens)", (int)cap,
                             (long long)0xffffff * SKV_KV_BLOCK);
    const double table_bytes = (double)ns * ((double)cap * sizeof(int32_t) + 2.0 * (double)max_blocks * sizeof(skv_block_id));
    const double phys = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    if (phys > 0 && table_bytes > phys)
        return skv_set_error(SKV_ERR_NOMEM, "KV cache: a context of %d tokens needs %.1f GiB of position tables for "
                             "%lld (layer, KV head) streams, more than this machine's %.1f GiB of memory", (int)cap,
                             table_bytes / (1 << 30), (long long)ns, phys / (1 << 30));
    c->n_layer = n_layer;
    c->n_kv_head = n_kv_head;
    c->head_dim = head_dim;
    c->cap = cap;
    c->max_blocks = (int32_t)max_blocks;
    c->fmt = fmt;
    for (int t = 0; t < SKV_TIER_COUNT; t++)
        for (int f = 0; f < SKV_KV_FORMAT_COUNT; f++) {
            skv_pool *p = &c->pools[pool_index((skv_tier)t, (skv_kv_format)f)];
            p->fmt = (skv_kv_format)f;
            p->tier = (skv_tier)t;
            p->block_bytes = pool_block_bytes((skv_kv_format)f, head_dim);
        }
    c->streams = calloc((size_t)ns, sizeof *c->streams);
    if (!c->streams) return skv_set_error(SKV_ERR_NOMEM, "KV cache: out of memory");
    for (int64_t i = 0; i < ns; i++) {
        skv_stream *st = &c->streams[i];
        st->kb = malloc((size_t)c->max_blocks * sizeof *st->kb);
        st->vb = malloc((size_t)c->max_blocks * sizeof *st->vb);
        st->pos = malloc((size_t)cap * sizeof *st->pos);
        if (!st->kb || !st->vb || !st->pos) {
            skv_cache_free(c);
            return skv_set_error(SKV_ERR_NOMEM, "KV cache: out of memory");
        }
        for (int32_t b = 0; b < c->max_blocks; b++) st->kb[b] = st->vb[b] = -1;
    }
    return SKV_OK;
}

skv_status skv_cache_enable_stats(skv_cache *c) {
    const int64_t ns = (int64_t)c->n_layer * c->n_kv_head;
    for (int64_t i = 0; i < ns; i++) {
        skv_stream *st = &c->streams[i];
        if (st->acc) continue;
        st->acc = calloc((size_t)c->cap, sizeof *st->acc);
        st->win = calloc((size_t)c->cap, sizeof *st->win);
        st->last = calloc((size_t)c->cap, sizeof *st->last);
        if (!st->acc || !st->win || !st->last) return skv_set_error(SKV_ERR_NOMEM, "KV cache: out of memory");
    }
    return SKV_OK;
}

void skv_cache_free(skv_cache *c) {
    if (!c->streams && !c->pools[0].chunks) return;
    const int64_t ns = (int64_t)c->n_layer * c->n_kv_head;
    for (int64_t i = 0; c->streams && i < ns; i++) {
        free(c->streams[i].kb);
        free(c->streams[i].vb);
        free(c->streams[i].pos);
        free(c->streams[i].acc);
        free(c->streams[i].win);
        free(c->streams[i].last);
    }
    free(c->streams);
    skv_vstore_close(c->vs);
    for (int p = 0; p < SKV_TIER_COUNT * SKV_KV_FORMAT_COUNT; p++) {
        for (int32_t k = 0; k < c->pools[p].n_chunks; k++) free(c->pools[p].chunks[k]);
        free(c->pools[p].chunks);
        free(c->pools[p].free_ids);
    }
    memset(c, 0, sizeof *c);
}

static inline skv_kv_format write_fmt(const skv_cache *c);
/* The format of V blocks in the store: whole blocks, as full blocks are stored (quantized in a
 * quantized cache). */
static inline skv_kv_format stored_fmt(const skv_cache *c) { return c->fmt; }

/* Bytes of V block b of a stream whose V is in the store. */
static skv_status stored_v_block(const skv_cache *c, const skv_stream *st, int32_t b, uint8_t *out) {
    return skv_vstore_block(c->vs, skv_cache_stream_index(c, st), b, out, NULL);
}

skv_status skv_cache_clone(skv_cache *dst, const skv_cache *src) {
    skv_status st = skv_cache_init(dst, src->n_layer, src->n_kv_head, src->head_dim, src->cap, src->fmt);
    if (st) return st;
    dst->k_tier = src->k_tier;
    dst->v_tier = src->v_tier;
    dst->shared_bytes = src->shared_bytes;
    if (src->streams[0].acc && (st = skv_cache_enable_stats(dst))) return st;
    const int64_t ns = (int64_t)src->n_layer * src->n_kv_head;
    for (int64_t i = 0; i < ns; i++) {
        const skv_stream *a = &src->streams[i];
        skv_stream *b = &dst->streams[i];
        b->n = a->n;
        memcpy(b->pos, a->pos, (size_t)a->n * sizeof *a->pos);
        if (a->acc) {
            memcpy(b->acc, a->acc, (size_t)a->n * sizeof *a->acc);
            memcpy(b->win, a->win, (size_t)a->n * sizeof *a->win);
            memcpy(b->last, a->last, (size_t)a->n * sizeof *a->last);
        }
        for (int32_t k = 0; k < src->max_blocks; k++) {
            for (int v = 0; v < 2; v++) {
                skv_block_id from = v ? a->vb[k] : a->kb[k], to;
                if (v && from < 0 && k * SKV_KV_BLOCK < a->n_slow) {
                    /* stored V comes back to the fast tier in the copy */
                    if ((st = block_alloc(dst, SKV_TIER_FAST, stored_fmt(src), &to)) ||
                        (st = stored_v_block(src, a, k, block_mem(dst, to))))
                        return st;
                    b->vb[k] = to;
                    continue;
                }
                if (from < 0) continue;
                if ((st = block_alloc(dst, block_tier(from), block_fmt(from), &to))) return st;
                memcpy(block_mem(dst, to), block_mem(src, from), src->pools[id_pool(from)].block_bytes);
                if (v) b->vb[k] = to;
                else b->kb[k] = to;
            }
        }
    }
    return SKV_OK;
}

/* Byte offset of row r in an f32, bf16 or f16 block. */
static inline uint8_t *row_ptr(const skv_cache *c, skv_block_id id, int32_t r) {
    size_t esz = block_fmt(id) == SKV_KV_F32 ? 4 : 2;
    return block_mem(c, id) + (size_t)r * c->head_dim * esz;
}

void skv_kv_f32_to_f16_row(const float *x, uint16_t *d, int64_t n) {
    int64_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(d + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; i < n; i++) d[i] = skv_f32_to_f16(x[i]);
}

static void write_row(skv_cache *c, skv_block_id id, int32_t r, const float *x) {
    if (block_fmt(id) == SKV_KV_F32) {
        memcpy(row_ptr(c, id, r), x, (size_t)c->head_dim * sizeof(float));
    } else if (block_fmt(id) == SKV_KV_F16) {
        skv_kv_f32_to_f16_row(x, (uint16_t *)row_ptr(c, id, r), c->head_dim);
    } else {
        uint16_t *d = (uint16_t *)row_ptr(c, id, r);
        for (int32_t i = 0; i < c->head_dim; i++) d[i] = skv_f32_to_bf16(x[i]);
    }
}

/* 16-bit float rows widened to f32 (in place from the end when dst and src share memory). */
static void widen_rows(skv_kv_format f, const uint16_t *src, float *dst, int64_t n) {
    for (int64_t i = n - 1; i >= 0; i--) dst[i] = f == SKV_KV_BF16 ? skv_bf16_to_f32(src[i]) : skv_f16_to_f32(src[i]);
}

skv_status skv_cache_set_row(skv_cache *c, int32_t l, int32_t g, int32_t s, int is_v, const float *x) {
    skv_stream *st = skv_cache_stream(c, l, g);
    SKV_ASSERT(s >= 0 && s < st->n);
    const skv_block_id id = is_v ? st->vb[s / SKV_KV_BLOCK] : st->kb[s / SKV_KV_BLOCK];
    if (id < 0 || (block_fmt(id) != SKV_KV_F32 && block_fmt(id) != SKV_KV_BF16 && block_fmt(id) != SKV_KV_F16))
        return skv_set_error(SKV_ERR_UNSUPPORTED, "KV cache: rows can be rewritten in f32, bf16 or f16 blocks only "
                             "(layer %d head %d slot %d)", l, g, s);
    write_row(c, id, s % SKV_KV_BLOCK, x);
    return SKV_OK;
}

/* The format a stream's blocks are written in: quantized caches write f32 (the residual) and
 * quantize a block once it is full. */
static inline skv_kv_format write_fmt(const skv_cache *c) {
    return c->fmt == SKV_KV_BF16 || c->fmt == SKV_KV_F16 ? c->fmt : SKV_KV_F32;
}

static skv_status quantize_full_block(skv_cache *c, skv_block_id *slot, int is_v) {
    skv_block_id q;
    skv_status st = block_alloc(c, block_tier(*slot), c->fmt, &q);
    if (st) return st;
    skv_quant_block(c->fmt, c->head_dim, is_v, (const float *)block_mem(c, *slot), block_mem(c, q));
    block_release(c, *slot);
    *slot = q;
    return SKV_OK;
}

skv_status skv_cache_append(skv_cache *c, int32_t l, int32_t g, int32_t pos, const float *k,
                            const float *v) {
    skv_stream *st = skv_cache_stream(c, l, g);
    if (st->n >= c->cap)
        return skv_set_error(SKV_ERR_RANGE, "KV cache: layer %d head %d is full (%d tokens)", l, g, c->cap);
    const int32_t b = st->n / SKV_KV_BLOCK, r = st->n % SKV_KV_BLOCK;
    skv_status s;
    if (r == 0) {
        if ((s = block_alloc(c, c->k_tier, write_fmt(c), &st->kb[b])) ||
            (s = block_alloc(c, c->v_tier, write_fmt(c), &st->vb[b])))
            return s;
    }
    write_row(c, st->kb[b], r, k);
    write_row(c, st->vb[b], r, v);
    st->pos[st->n] = pos;
    if (st->acc) st->acc[st->n] = st->win[st->n] = st->last[st->n] = 0;
    st->n++;
    if (r == SKV_KV_BLOCK - 1 && (c->fmt == SKV_KV_Q8 || c->fmt == SKV_KV_Q4)) {
        if ((s = quantize_full_block(c, &st->kb[b], 0)) || (s = quantize_full_block(c, &st->vb[b], 1)))
            return s;
    }
    return SKV_OK;
}

/* Release blocks past the stream's last slot. */
static void trim_blocks(skv_cache *c, skv_stream *st) {
    for (int32_t b = (st->n + SKV_KV_BLOCK - 1) / SKV_KV_BLOCK; b < c->max_blocks; b++) {
        if (st->kb[b] >= 0) block_release(c, st->kb[b]);
        if (st->vb[b] >= 0) block_release(c, st->vb[b]);
        st->kb[b] = st->vb[b] = -1;
    }
}

static void copy_row(skv_cache *c, skv_stream *st, int32_t to, int32_t from) {
    const int32_t bt = to / SKV_KV_BLOCK, rt = to % SKV_KV_BLOCK;
    const int32_t bf = from / SKV_KV_BLOCK, rf = from % SKV_KV_BLOCK;
    SKV_ASSERT(block_fmt(st->kb[bt]) == block_fmt(st->kb[bf]));
    SKV_ASSERT(block_fmt(st->kb[bt]) == SKV_KV_F32 || block_fmt(st->kb[bt]) == SKV_KV_BF16 ||
               block_fmt(st->kb[bt]) == SKV_KV_F16);
    const size_t bytes = (size_t)c->head_dim * (block_fmt(st->kb[bt]) == SKV_KV_F32 ? 4 : 2);
    memcpy(row_ptr(c, st->kb[bt], rt), row_ptr(c, st->kb[bf], rf), bytes);
    memcpy(row_ptr(c, st->vb[bt], rt), row_ptr(c, st->vb[bf], rf), bytes);
    st->pos[to] = st->pos[from];
    if (st->acc) {
        st->acc[to] = st->acc[from];
        st->win[to] = st->win[from];
        st->last[to] = st->last[from];
    }
}

void skv_cache_compact(skv_cache *c, int32_t l, int32_t g, const uint8_t *keep) {
    skv_stream *st = skv_cache_stream(c, l, g);
    if (st->n_slow && skv_cache_recall_v(c, l, g)) skv_cache_vs_fail(c);
    int32_t w = 0;
    for (int32_t s = 0; s < st->n; s++) {
        if (!keep[s]) continue;
        if (s != w) copy_row(c, st, w, s);
        w++;
    }
    st->n = w;
    trim_blocks(c, st);
}

void skv_cache_remove_swap(skv_cache *c, int32_t l, int32_t g, int32_t s) {
    skv_stream *st = skv_cache_stream(c, l, g);
    SKV_ASSERT(s >= 0 && s < st->n);
    if (st->n_slow && skv_cache_recall_v(c, l, g)) skv_cache_vs_fail(c);
    if (s != st->n - 1) copy_row(c, st, s, st->n - 1);
    st->n--;
    trim_blocks(c, st);
}

void skv_cache_truncate(skv_cache *c, int32_t from_pos) {
    const int64_t ns = (int64_t)c->n_layer * c->n_kv_head;
    if (from_pos == 0) c->shared_bytes = 0;
    for (int64_t i = 0; i < ns; i++) {
        skv_stream *st = &c->streams[i];
        if (st->n_slow && skv_cache_recall_v(c, (int32_t)(i / c->n_kv_head), (int32_t)(i % c->n_kv_head))) skv_cache_vs_fail(c);
        if (c->fmt == SKV_KV_Q8 || c->fmt == SKV_KV_Q4) {
            /* quantized streams never reorder: the newest tokens are at the end */
            while (st->n > 0 && st->pos[st->n - 1] >= from_pos) st->n--;
            trim_blocks(c, st);
            int32_t b = st->n / SKV_KV_BLOCK, r = st->n % SKV_KV_BLOCK;
            if (r != 0 && block_fmt(st->kb[b]) != SKV_KV_F32) {
                /* a quantized block became the partial last block: back to f32 */
                for (int v = 0; v < 2; v++) {
                    skv_block_id *slot = v ? &st->vb[b] : &st->kb[b], f;
                    if (block_alloc(c, block_tier(*slot), SKV_KV_F32, &f) != SKV_OK) continue;
                    skv_dequant_block(c->fmt, c->head_dim, v, block_mem(c, *slot),
                                      (float *)block_mem(c, f), SKV_KV_BLOCK);
                    block_release(c, *slot);
                    *slot = f;
                }
            }
            continue;
        }
        int32_t w = 0;
        for (int32_t s = 0; s < st->n; s++) {
            if (st->pos[s] >= from_pos) continue;
            if (s != w) copy_row(c, st, w, s);
            w++;
        }
        st->n = w;
        trim_blocks(c, st);
    }
}

static const float *rows_of(const skv_cache *c, skv_block_id id, int is_v, int n_rows, float *scratch) {
    switch (block_fmt(id)) {
    case SKV_KV_F32: return (const float *)block_mem(c, id);
    case SKV_KV_BF16:
    case SKV_KV_F16:
        widen_rows(block_fmt(id), (const uint16_t *)block_mem(c, id), scratch, (int64_t)n_rows * c->head_dim);
        return scratch;
    default:
        skv_dequant_block(block_fmt(id), c->head_dim, is_v, block_mem(c, id), scratch, n_rows);
        return scratch;
    }
}

static inline int rows_in_block(const skv_stream *st, int32_t b) {
    int r = st->n - b * SKV_KV_BLOCK;
    return r > SKV_KV_BLOCK ? SKV_KV_BLOCK : r;
}

const float *skv_cache_k_rows(const skv_cache *c, const skv_stream *st, int32_t b, float *scratch) {
    return rows_of(c, st->kb[b], 0, rows_in_block(st, b), scratch);
}

const float *skv_cache_v_rows(const skv_cache *c, const skv_stream *st, int32_t b, float *scratch) {
    if (b * SKV_KV_BLOCK < st->n_slow) {
        /* from the store: the block's bytes into scratch, bf16 widened in place from the end,
         * quantized blocks decoded */
        if (c->fmt == SKV_KV_Q8 || c->fmt == SKV_KV_Q4) {
            uint8_t *tmp = malloc(skv_kv_block_bytes(c->fmt, c->head_dim, 1));
            if (!tmp || stored_v_block(c, st, b, tmp)) {
                if (!tmp) skv_set_error(SKV_ERR_NOMEM, "out of memory");
                skv_cache_vs_fail(c);
                memset(scratch, 0, sizeof(float) * SKV_KV_BLOCK * (size_t)c->head_dim);
            } else {
                skv_dequant_block(c->fmt, c->head_dim, 1, tmp, scratch, SKV_KV_BLOCK);
            }
            free(tmp);
        } else if (stored_v_block(c, st, b, (uint8_t *)scratch)) {
            skv_cache_vs_fail(c);
            memset(scratch, 0, sizeof(float) * SKV_KV_BLOCK * (size_t)c->head_dim);
        } else if (write_fmt(c) != SKV_KV_F32) {
            widen_rows(write_fmt(c), (const uint16_t *)scratch, scratch, (int64_t)SKV_KV_BLOCK * c->head_dim);
        }
        return scratch;
    }
    return rows_of(c, st->vb[b], 1, rows_in_block(st, b), scratch);
}

const void *skv_cache_block(const skv_cache *c, const skv_stream *st, int32_t b, int is_v, skv_kv_format *fmt,
                            void *scratch) {
    if (!is_v || b * SKV_KV_BLOCK >= st->n_slow) {
        const skv_block_id id = is_v ? st->vb[b] : st->kb[b];
        *fmt = block_fmt(id);
        return block_mem(c, id);
    }
    *fmt = stored_fmt(c);
    if (stored_v_block(c, st, b, scratch)) {
        skv_cache_vs_fail(c);
        *fmt = SKV_KV_F32;
        memset(scratch, 0, sizeof(float) * SKV_KV_BLOCK * (size_t)c->head_dim);
    }
    return scratch;
}

void skv_cache_gather(const skv_cache *c, int32_t l, int32_t g, float *k, float *v) {
    const skv_stream *st = skv_cache_stream(c, l, g);
    const int32_t hd = c->head_dim;
    for (int32_t b = 0; b * SKV_KV_BLOCK < st->n; b++) {
        const int n = rows_in_block(st, b);
        float *kd = k + (int64_t)b * SKV_KV_BLOCK * hd, *vd = v + (int64_t)b * SKV_KV_BLOCK * hd;
        const float *ks = rows_of(c, st->kb[b], 0, n, kd), *vs = skv_cache_v_rows(c, st, b, vd);
        if (ks != kd) memcpy(kd, ks, (size_t)n * hd * sizeof(float));
        if (vs != vd) memcpy(vd, vs, (size_t)n * hd * sizeof(float));
    }
}

skv_status skv_cache_move(skv_cache *c, int32_t l, int32_t g, int is_v, skv_tier tier) {
    skv_stream *st = skv_cache_stream(c, l, g);
    skv_block_id *list = is_v ? st->vb : st->kb;
    for (int32_t b = 0; b < c->max_blocks; b++) {
        if (list[b] < 0 || block_tier(list[b]) == tier) continue;
        skv_block_id to;
        skv_status s = block_alloc(c, tier, block_fmt(list[b]), &to);
        if (s) return s;
        memcpy(block_mem(c, to), block_mem(c, list[b]), c->pools[id_pool(to)].block_bytes);
        block_release(c, list[b]);
        list[b] = to;
    }
    return SKV_OK;
}

static int64_t block_true_bytes(const skv_cache *c, skv_block_id id, int is_v) {
    return (int64_t)skv_kv_block_bytes(block_fmt(id), c->head_dim, is_v);
}

void skv_cache_usage_get(const skv_cache *c, skv_cache_usage *u) {
    memset(u, 0, sizeof *u);
    const int64_t ns = (int64_t)c->n_layer * c->n_kv_head;
    for (int64_t i = 0; i < ns; i++) {
        const skv_stream *st = &c->streams[i];
        u->slots += st->n;
        for (int32_t b = 0; b < c->max_blocks; b++)
            for (int v = 0; v < 2; v++) {
                skv_block_id id = v ? st->vb[b] : st->kb[b];
                if (id < 0) continue;
                int64_t by = block_true_bytes(c, id, v);
                u->bytes[block_tier(id)][block_fmt(id)] += by;
                u->total += by;
            }
    }
    if (c->vs) {
        const int64_t by = skv_vstore_bytes(c->vs);
        u->bytes[SKV_TIER_SLOW][stored_fmt(c)] += by;
        u->total += by;
    }
    u->total -= c->shared_bytes; /* merged rows (MiniCache), in the fast tier */
    u->bytes[SKV_TIER_FAST][stored_fmt(c)] -= c->shared_bytes;
}

int64_t skv_cache_stream_bytes(const skv_cache *c, int32_t l, int32_t g) {
    const skv_stream *st = skv_cache_stream(c, l, g);
    int64_t total = 0;
    for (int32_t b = 0; b < c->max_blocks; b++) {
        if (st->kb[b] >= 0) total += block_true_bytes(c, st->kb[b], 0);
        if (st->vb[b] >= 0) total += block_true_bytes(c, st->vb[b], 1);
    }
    return total + (int64_t)st->n_slow / SKV_KV_BLOCK * (int64_t)skv_kv_block_bytes(stored_fmt(c), c->head_dim, 1);
}

/* ---------------------------------------------------------------------------------------- */
/* Exchange                                                                                  */
/* ---------------------------------------------------------------------------------------- */

void skv_stream_io_free(skv_stream_io *s) {
    free(s->pos), free(s->acc), free(s->win), free(s->last);
    free(s->kfmt), free(s->vfmt), free(s->kdata), free(s->vdata);
    memset(s, 0, sizeof *s);
}

skv_status skv_cache_stream_export(const skv_cache *c, int32_t l, int32_t g, int rows, skv_stream_io *s) {
    memset(s, 0, sizeof *s);
    const skv_stream *st = skv_cache_stream(c, l, g);
    const int32_t n = st->n, nb = (n + SKV_KV_BLOCK - 1) / SKV_KV_BLOCK;
    s->n = n;
    s->pos = malloc(sizeof(int32_t) * (size_t)SKV_MAX(n, 1));
    s->kfmt = malloc((size_t)SKV_MAX(nb, 1));
    s->vfmt = malloc((size_t)SKV_MAX(nb, 1));
    if (st->acc) {
        s->acc = malloc(sizeof(float) * (size_t)SKV_MAX(n, 1));
        s->win = malloc(sizeof(float) * (size_t)SKV_MAX(n, 1));
        s->last = malloc(sizeof(float) * (size_t)SKV_MAX(n, 1));
    }
    for (int32_t b = 0; b < nb && rows; b++) {
        const skv_kv_format vf = st->vb[b] < 0 ? stored_fmt(c) : block_fmt(st->vb[b]);
        s->kbytes += (int64_t)skv_kv_block_bytes(block_fmt(st->kb[b]), c->head_dim, 0);
        s->vbytes += (int64_t)skv_kv_block_bytes(vf, c->head_dim, 1);
    }
    if (rows) {
        s->kdata = malloc((size_t)SKV_MAX(s->kbytes, 1));
        s->vdata = malloc((size_t)SKV_MAX(s->vbytes, 1));
    }
    if (!s->pos || !s->kfmt || !s->vfmt || (rows && (!s->kdata || !s->vdata)) ||
        (st->acc && (!s->acc || !s->win || !s->last))) {
        skv_stream_io_free(s);
        return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    }
    memcpy(s->pos, st->pos, sizeof(int32_t) * (size_t)n);
    if (st->acc) {
        memcpy(s->acc, st->acc, sizeof(float) * (size_t)n);
        memcpy(s->win, st->win, sizeof(float) * (size_t)n);
        memcpy(s->last, st->last, sizeof(float) * (size_t)n);
    }
    int64_t ko = 0, vo = 0;
    for (int32_t b = 0; b < nb && rows; b++) {
        const skv_kv_format kf = block_fmt(st->kb[b]), vf = st->vb[b] < 0 ? stored_fmt(c) : block_fmt(st->vb[b]);
        const size_t kn = skv_kv_block_bytes(kf, c->head_dim, 0), vn = skv_kv_block_bytes(vf, c->head_dim, 1);
        s->kfmt[b] = (uint8_t)kf, s->vfmt[b] = (uint8_t)vf;
        memcpy(s->kdata + ko, block_mem(c, st->kb[b]), kn);
        if (st->vb[b] < 0) {
            skv_status e = stored_v_block(c, st, b, s->vdata + vo);
            if (e) {
                skv_stream_io_free(s);
                return e;
            }
        } else {
            memcpy(s->vdata + vo, block_mem(c, st->vb[b]), vn);
        }
        ko += (int64_t)kn, vo += (int64_t)vn;
    }
    return SKV_OK;
}

skv_status skv_cache_stream_import(skv_cache *c, int32_t l, int32_t g, const skv_stream_io *s) {
    skv_stream *st = skv_cache_stream(c, l, g);
    if (st->n != 0) return skv_set_error(SKV_ERR_ARG, "cache import: stream (%d, %d) is not empty", l, g);
    if (s->n < 0 || s->n > c->cap)
        return skv_set_error(SKV_ERR_RANGE, "cache import: stream (%d, %d) holds %d tokens, the context %d", l, g, s->n,
                             c->cap);
    const int32_t nb = (s->n + SKV_KV_BLOCK - 1) / SKV_KV_BLOCK;
    int64_t kb = 0, vb = 0;
    for (int32_t b = 0; b < nb; b++) {
        for (int v = 0; v < 2; v++) {
            const uint8_t f = v ? s->vfmt[b] : s->kfmt[b];
            if (f >= SKV_KV_FORMAT_COUNT)
                return skv_set_error(SKV_ERR_FORMAT, "cache import: stream (%d, %d) block %d has unknown format %d", l, g,
                                     b, f);
            if ((f == SKV_KV_Q8 || f == SKV_KV_Q4) && ((int64_t)b + 1) * SKV_KV_BLOCK > s->n)
                return skv_set_error(SKV_ERR_FORMAT, "cache import: stream (%d, %d): a partial block is quantized", l, g);
            if ((f == SKV_KV_Q8 || f == SKV_KV_Q4) && c->head_dim % SKV_KV_VGROUP)
                return skv_set_error(SKV_ERR_FORMAT, "cache import: quantized blocks need head_dim %% %d == 0",
                                     SKV_KV_VGROUP);
            *(v ? &vb : &kb) += (int64_t)skv_kv_block_bytes((skv_kv_format)f, c->head_dim, v);
        }
    }
    if (kb != s->kbytes || vb != s->vbytes)
        return skv_set_error(SKV_ERR_FORMAT, "cache import: stream (%d, %d): %lld/%lld bytes of K/V for blocks that "
                             "hold %lld/%lld", l, g, (long long)s->kbytes, (long long)s->vbytes, (long long)kb,
                             (long long)vb);
    for (int32_t i = 0; i < s->n; i++)
        if (s->pos[i] < 0)
            return skv_set_error(SKV_ERR_FORMAT, "cache import: stream (%d, %d) slot %d has position %d", l, g, i,
                                 s->pos[i]);
    int64_t ko = 0, vo = 0;
    for (int32_t b = 0; b < nb; b++) {
        const skv_kv_format kf = (skv_kv_format)s->kfmt[b], vf = (skv_kv_format)s->vfmt[b];
        skv_status e;
        if ((e = block_alloc(c, c->k_tier, kf, &st->kb[b])) || (e = block_alloc(c, c->v_tier, vf, &st->vb[b]))) {
            st->n = b * SKV_KV_BLOCK;
            trim_blocks(c, st);
            st->n = 0;
            return e;
        }
        const size_t kn = skv_kv_block_bytes(kf, c->head_dim, 0), vn = skv_kv_block_bytes(vf, c->head_dim, 1);
        memcpy(block_mem(c, st->kb[b]), s->kdata + ko, kn);
        memcpy(block_mem(c, st->vb[b]), s->vdata + vo, vn);
        ko += (int64_t)kn, vo += (int64_t)vn;
    }
    st->n = s->n;
    memcpy(st->pos, s->pos, sizeof(int32_t) * (size_t)s->n);
    if (st->acc) {
        const size_t nb4 = sizeof(float) * (size_t)s->n;
        if (s->acc) memcpy(st->acc, s->acc, nb4), memcpy(st->win, s->win, nb4), memcpy(st->last, s->last, nb4);
        else memset(st->acc, 0, nb4), memset(st->win, 0, nb4), memset(st->last, 0, nb4);
    }
    return SKV_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* The slow V store                                                                          */
/* ---------------------------------------------------------------------------------------- */

skv_status skv_cache_attach_vstore(skv_cache *c, skv_vstore *vs) {
    const int64_t ns = (int64_t)c->n_layer * c->n_kv_head;
    for (int64_t i = 0; i < ns; i++)
        if (c->streams[i].n_slow) skv_cache_recall_v(c, (int32_t)(i / c->n_kv_head), (int32_t)(i % c->n_kv_head));
    skv_vstore_close(c->vs);
    c->vs = vs;
    return SKV_OK;
}

skv_status skv_cache_offload_v(skv_cache *c, int32_t l, int32_t g, int32_t keep_fast) {
    skv_stream *st = skv_cache_stream(c, l, g);
    if (!c->vs) return SKV_OK;
    const int32_t unit = skv_vstore_unit(c->vs), ut = unit * SKV_KV_BLOCK;
    const int64_t si = skv_cache_stream_index(c, st);
    while (st->n - (st->n_slow + ut) >= keep_fast) {
        const int32_t b0 = st->n_slow / SKV_KV_BLOCK;
        const uint8_t *blocks[64];
        SKV_ASSERT(unit <= 64);
        for (int32_t i = 0; i < unit; i++) blocks[i] = block_mem(c, st->vb[b0 + i]);
        skv_status e = skv_vstore_put(c->vs, si, b0, blocks);
        if (e) return e;
        for (int32_t i = 0; i < unit; i++) {
            block_release(c, st->vb[b0 + i]);
            st->vb[b0 + i] = -1;
        }
        st->n_slow += ut;
    }
    return SKV_OK;
}

skv_status skv_cache_recall_v(skv_cache *c, int32_t l, int32_t g) {
    skv_stream *st = skv_cache_stream(c, l, g);
    for (int32_t b = 0; b * SKV_KV_BLOCK < st->n_slow; b++) {
        skv_block_id id;
        skv_status e = block_alloc(c, SKV_TIER_FAST, stored_fmt(c), &id);
        if (!e && (e = stored_v_block(c, st, b, block_mem(c, id)))) block_release(c, id);
        if (e) return e;
        st->vb[b] = id;
    }
    if (st->n_slow) skv_vstore_forget(c->vs, skv_cache_stream_index(c, st), 0, st->n_slow / SKV_KV_BLOCK);
    st->n_slow = 0;
    return SKV_OK;
}

void skv_cache_vs_fail(const skv_cache *c) {
    skv_cache *m = (skv_cache *)c;
#pragma omp critical(skv_vs_fail)
    {
        if (!m->vs_err) snprintf(m->vs_msg, sizeof m->vs_msg, "%s", skv_last_error());
        m->vs_err = 1;
    }
}
