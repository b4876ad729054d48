/*
 * exchange.c — a context's cache to and from a buffer: what another process, another model's
 * context or another backend fills a context from (SCD's transfer, CPU -> CUDA).
 *
 * Layout (little-endian): "SKVCACHE", u32 version (1), i32 cache layers, KV heads, head_dim,
 * n_past, flags (1: statistics present); then per (cache layer, KV head) stream: i32 n, i32
 * blocks, i64 K bytes, i64 V bytes, i32 pos[n], (f32 acc[n], win[n], last[n] with statistics),
 * u8 K formats[blocks], u8 V formats[blocks], K block bytes, V block bytes (kv/cache.h's
 * 32-row blocks in their stored formats); last, u64 CRC-64 (xz's) of everything before it.
 */
#include "context/context.h"

#include <lzma.h>

#define MAGIC "SKVCACHE"
#define VERSION 1u

typedef struct wbuf {
    uint8_t *p;
    size_t n, cap;
    int fail;
} wbuf;

static void put(wbuf *w, const void *src, size_t n) {
    if (w->fail) return;
    if (w->n + n > w->cap) {
        size_t cap = w->cap ? w->cap : 4096;
        while (cap < w->n + n) cap *= 2;
        uint8_t *q = realloc(w->p, cap);
        if (!q) {
            w->fail = 1;
            return;
        }
        w->p = q, w->cap = cap;
    }
    memcpy(w->p + w->n, src, n);
    w->n += n;
}

static void put_i32(wbuf *w, int32_t v) { put(w, &v, 4); }
static void put_i64(wbuf *w, int64_t v) { put(w, &v, 8); }

skv_status skv_context_export(const skv_context *c, void **buf, size_t *len) {
    *buf = NULL;
    *len = 0;
    const skv_model_info *in = &c->m->cfg.info;
    if (c->past) return skv_set_error(SKV_ERR_ARG, "export: the context attends to a read-only past");
    wbuf w = {0};
    uint32_t ver = VERSION;
    put(&w, MAGIC, 8);
    put(&w, &ver, 4);
    put_i32(&w, c->n_layer), put_i32(&w, in->n_kv_head), put_i32(&w, in->head_dim), put_i32(&w, c->n_past);
    put_i32(&w, c->stats ? 1 : 0);
    skv_status st = SKV_OK;
    for (int32_t l = 0; l < c->n_layer && !st; l++)
        for (int32_t g = 0; g < in->n_kv_head && !st; g++) {
            skv_stream_io s;
            if ((st = c->be->stream_get(c, l, g, 1, &s))) break;
            const int32_t nb = (s.n + SKV_KV_BLOCK - 1) / SKV_KV_BLOCK;
            put_i32(&w, s.n), put_i32(&w, nb), put_i64(&w, s.kbytes), put_i64(&w, s.vbytes);
            put(&w, s.pos, sizeof(int32_t) * (size_t)s.n);
            if (c->stats) {
                put(&w, s.acc, sizeof(float) * (size_t)s.n);
                put(&w, s.win, sizeof(float) * (size_t)s.n);
                put(&w, s.last, sizeof(float) * (size_t)s.n);
            }
            put(&w, s.kfmt, (size_t)nb), put(&w, s.vfmt, (size_t)nb);
            put(&w, s.kdata, (size_t)s.kbytes), put(&w, s.vdata, (size_t)s.vbytes);
            skv_stream_io_free(&s);
        }
    if (!st && !w.fail) {
        const uint64_t crc = lzma_crc64(w.p, w.n, 0);
        put(&w, &crc, 8);
    }
    if (!st && w.fail) st = skv_set_error(SKV_ERR_NOMEM, "export: out of memory");
    if (st) {
        free(w.p);
        return st;
    }
    *buf = w.p;
    *len = w.n;
    return SKV_OK;
}

typedef struct rbuf {
    const uint8_t *p;
    size_t n, off;
} rbuf;

static int take(rbuf *r, void *dst, size_t n) {
    if (n > r->n - r->off) return 0;
    memcpy(dst, r->p + r->off, n);
    r->off += n;
    return 1;
}

/* A pointer to the next n bytes (NULL if short). */
static const uint8_t *view(rbuf *r, size_t n) {
    if (n > r->n - r->off) return NULL;
    const uint8_t *p = r->p + r->off;
    r->off += n;
    return p;
}

#define SHORT() skv_set_error(SKV_ERR_FORMAT, "cache import: the buffer ends early (truncated at byte %zu of %zu)", r.off, len)

skv_status skv_context_import(skv_context *c, const void *buf, size_t len) {
    const skv_model_info *in = &c->m->cfg.info;
    if (c->n_past != 0 || c->past) return skv_set_error(SKV_ERR_ARG, "cache import: the context is not empty");
    if (!buf || len < 8 + 4 + 20 + 8) return skv_set_error(SKV_ERR_FORMAT, "cache import: %zu bytes is too short", len);
    if (memcmp(buf, MAGIC, 8)) return skv_set_error(SKV_ERR_FORMAT, "cache import: not a slimkv cache (bad magic)");
    uint64_t crc;
    memcpy(&crc, (const uint8_t *)buf + len - 8, 8);
    if (lzma_crc64(buf, len - 8, 0) != crc)
        return skv_set_error(SKV_ERR_FORMAT, "cache import: checksum mismatch (corrupt or truncated buffer)");
    rbuf r = {.p = buf, .n = len - 8, .off = 8};
    uint32_t ver;
    int32_t L, KVH, hd, n_past, flags;
    if (!take(&r, &ver, 4) || !take(&r, &L, 4) || !take(&r, &KVH, 4) || !take(&r, &hd, 4) || !take(&r, &n_past, 4) ||
        !take(&r, &flags, 4))
        return SHORT();
    if (ver != VERSION) return skv_set_error(SKV_ERR_FORMAT, "cache import: version %u (this build reads %u)", ver, VERSION);
    if (L != c->n_layer || KVH != in->n_kv_head || hd != in->head_dim)
        return skv_set_error(SKV_ERR_SHAPE, "cache import: %d cache layers x %d KV heads x head_dim %d, the context has "
                             "%d x %d x %d", L, KVH, hd, c->n_layer, in->n_kv_head, in->head_dim);
    if (n_past < 0 || n_past > c->n_ctx)
        return skv_set_error(SKV_ERR_RANGE, "cache import: %d tokens, the context holds %d", n_past, c->n_ctx);
    if (flags & ~1) return skv_set_error(SKV_ERR_FORMAT, "cache import: unknown flags 0x%x", flags);
    c->n_past = n_past; /* backends read it while streams arrive; reset on failure */
    skv_status st = SKV_OK;
    for (int32_t l = 0; l < L && !st; l++)
        for (int32_t g = 0; g < KVH && !st; g++) {
            skv_stream_io s = {0};
            int32_t nb;
            if (!take(&r, &s.n, 4) || !take(&r, &nb, 4) || !take(&r, &s.kbytes, 8) || !take(&r, &s.vbytes, 8)) {
                st = SHORT();
                break;
            }
            if (s.n < 0 || s.n > n_past || nb != (s.n + SKV_KV_BLOCK - 1) / SKV_KV_BLOCK || s.kbytes < 0 || s.vbytes < 0) {
                st = skv_set_error(SKV_ERR_FORMAT, "cache import: stream (%d, %d): %d slots in %d blocks of a %d-token "
                                   "cache", l, g, s.n, nb, n_past);
                break;
            }
            /* the arrays are copied out: the buffer need not be aligned */
            const size_t n4 = sizeof(float) * (size_t)s.n;
            const uint8_t *pp = view(&r, n4), *pa = NULL, *pw = NULL, *pl = NULL;
            if (flags & 1) pa = view(&r, n4), pw = view(&r, n4), pl = view(&r, n4);
            s.kfmt = (uint8_t *)view(&r, (size_t)nb);
            s.vfmt = (uint8_t *)view(&r, (size_t)nb);
            s.kdata = (uint8_t *)view(&r, (size_t)s.kbytes);
            s.vdata = (uint8_t *)view(&r, (size_t)s.vbytes);
            if (!pp || ((flags & 1) && (!pa || !pw || !pl)) || !s.kfmt || !s.vfmt || !s.kdata || !s.vdata) {
                st = SHORT();
                break;
            }
            float *arr = malloc(n4 * 4 + 4);
            if (!arr) {
                st = skv_set_error(SKV_ERR_NOMEM, "out of memory");
                break;
            }
            s.pos = (int32_t *)arr;
            memcpy(s.pos, pp, n4);
            if (flags & 1) {
                s.acc = arr + s.n, s.win = arr + 2 * (size_t)s.n, s.last = arr + 3 * (size_t)s.n;
                memcpy(s.acc, pa, n4), memcpy(s.win, pw, n4), memcpy(s.last, pl, n4);
            }
            for (int32_t i = 0; i < s.n && !st; i++)
                if (s.pos[i] < 0 || s.pos[i] >= n_past)
                    st = skv_set_error(SKV_ERR_FORMAT, "cache import: stream (%d, %d) slot %d at position %d of a "
                                       "%d-token cache", l, g, i, s.pos[i], n_past);
            if (!st) st = c->be->stream_put(c, l, g, &s);
            free(arr);
        }
    if (!st && r.off != r.n)
        st = skv_set_error(SKV_ERR_FORMAT, "cache import: %zu bytes after the last stream", r.n - r.off);
    /* the context's own policy applies to what arrived (and sets its per-step budgets) */
    if (!st) st = skv_context_compress(c);
    if (st) {
        c->n_past = 0;
        c->be->truncate(c, 0);
    }
    return st;
}
