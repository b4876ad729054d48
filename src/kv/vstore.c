/*
 * vstore.c — the slow V store (vstore.h): a memory-mapped file or zstd units in a file.
 */
#include "kv/vstore.h"

#include "kv/cache.h"
#include "kv/plan.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

struct skv_vstore {
    int kind;
    int fd;
    char path[512];
    int64_t n_stream;
    int32_t max_blocks;
    size_t block_bytes, row_bytes;
    int32_t unit;          /* cache blocks per write */
    /* mmap */
    uint8_t *map;
    size_t map_bytes;
    int64_t written;       /* blocks written (for the byte count) */
    /* zstd: per (stream, unit) the offset and compressed size in the file (size 0: none) */
    int64_t *zoff;
    int32_t *zsize;
    int64_t file_end;      /* bytes appended */
    int64_t zbytes;        /* compressed bytes live */
    size_t zbound;         /* ZSTD_compressBound of one unit */
    uint8_t *zin;          /* (unit * block_bytes) staging of a put */
    uint8_t *zout;         /* (zbound) */
    int nseg;              /* row layout (vstore.h) */
    size_t seg_off[3], seg_stride[3], seg_len[3];
    int32_t esz;           /* zstd: element bytes; units are byte-plane shuffled before
                              compression (the bytes of each element's position together) */
};

/* Byte planes: out[k * ne + i] = in[i * esz + k] (and back). */
static void shuffle(const uint8_t *in, uint8_t *out, size_t bytes, int esz) {
    const size_t ne = bytes / (size_t)esz;
    for (size_t i = 0; i < ne; i++)
        for (int k = 0; k < esz; k++) out[(size_t)k * ne + i] = in[i * (size_t)esz + (size_t)k];
}
static void unshuffle(const uint8_t *in, uint8_t *out, size_t bytes, int esz) {
    const size_t ne = bytes / (size_t)esz;
    for (size_t i = 0; i < ne; i++)
        for (int k = 0; k < esz; k++) out[i * (size_t)esz + (size_t)k] = in[(size_t)k * ne + i];
}

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

skv_status skv_vstore_open(skv_vstore **out, int kind, const char *dir, int64_t n_stream, int32_t max_blocks,
                           size_t block_bytes, size_t row_bytes, int32_t elem_bytes, int32_t unit) {
    *out = NULL;
    if (kind != SKV_VSTORE_MMAP && kind != SKV_VSTORE_ZSTD)
        return skv_set_error(SKV_ERR_ARG, "slow store: unknown kind %d", kind);
    if (unit < 1) return skv_set_error(SKV_ERR_ARG, "slow store: unit must be >= 1 block");
    if (!dir || !*dir) dir = getenv("TMPDIR");
    if (!dir || !*dir) dir = "/tmp";
    skv_vstore *s = calloc(1, sizeof *s);
    if (!s) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    s->kind = kind, s->n_stream = n_stream, s->max_blocks = max_blocks;
    s->block_bytes = block_bytes, s->row_bytes = row_bytes, s->unit = kind == SKV_VSTORE_ZSTD ? unit : 1;
    s->nseg = 1, s->seg_off[0] = 0, s->seg_stride[0] = s->seg_len[0] = row_bytes;
    s->esz = elem_bytes > 1 && block_bytes % (size_t)elem_bytes == 0 ? elem_bytes : 1;
    snprintf(s->path, sizeof s->path, "%s/slimkv-vstore-%d-XXXXXX", dir, (int)getpid());
    s->fd = mkstemp(s->path);
    if (s->fd < 0) {
        skv_status st = skv_set_error(SKV_ERR_IO, "slow store: cannot create a file in %s (--kc-dir): %s", dir,
                                      strerror(errno));
        free(s);
        return st;
    }
    if (kind == SKV_VSTORE_MMAP) {
        s->map_bytes = (size_t)n_stream * (size_t)max_blocks * block_bytes;
        if (s->map_bytes == 0) s->map_bytes = 1;
        if (ftruncate(s->fd, (off_t)s->map_bytes) != 0) {
            skv_status st = skv_set_error(SKV_ERR_IO, "slow store: cannot size %s to %zu bytes: %s", s->path,
                                          s->map_bytes, strerror(errno));
            skv_vstore_close(s);
            return st;
        }
        s->map = mmap(NULL, s->map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, s->fd, 0);
        if (s->map == MAP_FAILED) {
            s->map = NULL;
            skv_status st = skv_set_error(SKV_ERR_IO, "slow store: cannot map %s: %s", s->path, strerror(errno));
            skv_vstore_close(s);
            return st;
        }
    } else {
        const int64_t nu = (max_blocks + s->unit - 1) / s->unit;
        s->zoff = calloc((size_t)(n_stream * nu), sizeof *s->zoff);
        s->zsize = calloc((size_t)(n_stream * nu), sizeof *s->zsize);
        s->zbound = ZSTD_compressBound((size_t)s->unit * block_bytes);
        s->zin = malloc(2 * (size_t)s->unit * block_bytes);
        s->zout = malloc(s->zbound);
        if (!s->zoff || !s->zsize || !s->zin || !s->zout) {
            skv_vstore_close(s);
            return skv_set_error(SKV_ERR_NOMEM, "out of memory");
        }
    }
    *out = s;
    return SKV_OK;
}

void skv_vstore_close(skv_vstore *s) {
    if (!s) return;
    if (s->map) munmap(s->map, s->map_bytes);
    if (s->fd >= 0) {
        close(s->fd);
        unlink(s->path);
    }
    free(s->zoff), free(s->zsize), free(s->zin), free(s->zout);
    free(s);
}

void skv_vstore_set_row_layout(skv_vstore *s, int nseg, const size_t *off0, const size_t *stride, const size_t *len) {
    s->nseg = nseg < 1 ? 1 : nseg > 3 ? 3 : nseg;
    s->row_bytes = 0;
    for (int i = 0; i < s->nseg; i++) {
        s->seg_off[i] = off0[i], s->seg_stride[i] = stride[i], s->seg_len[i] = len[i];
        s->row_bytes += len[i];
    }
}

/* Row r of a block (base) into out, segment by segment. */
static inline void copy_row(const skv_vstore *s, const uint8_t *base, int32_t r, uint8_t *out) {
    for (int i = 0; i < s->nseg; i++) {
        memcpy(out, base + s->seg_off[i] + (size_t)r * s->seg_stride[i], s->seg_len[i]);
        out += s->seg_len[i];
    }
}

int skv_vstore_kind(const skv_vstore *s) { return s->kind; }
int32_t skv_vstore_unit(const skv_vstore *s) { return s->unit; }
const char *skv_vstore_path(const skv_vstore *s) { return s->path; }
int64_t skv_vstore_bytes(const skv_vstore *s) {
    return s->kind == SKV_VSTORE_MMAP ? s->written * (int64_t)s->block_bytes : s->zbytes;
}
size_t skv_vstore_scratch_bytes(const skv_vstore *s) {
    return s->kind == SKV_VSTORE_ZSTD ? s->zbound + 2 * (size_t)s->unit * s->block_bytes : 0;
}

static inline size_t block_off(const skv_vstore *s, int64_t stream, int32_t b) {
    return ((size_t)stream * (size_t)s->max_blocks + (size_t)b) * s->block_bytes;
}

skv_status skv_vstore_put(skv_vstore *s, int64_t stream, int32_t b0, const uint8_t *const *blocks) {
    if (b0 % s->unit || b0 + s->unit > s->max_blocks || stream < 0 || stream >= s->n_stream)
        return skv_set_error(SKV_ERR_ARG, "slow store: bad write (stream %lld, block %d)", (long long)stream, b0);
    if (s->kind == SKV_VSTORE_MMAP) {
        memcpy(s->map + block_off(s, stream, b0), blocks[0], s->block_bytes);
        s->written++;
        return SKV_OK;
    }
    const size_t ub = (size_t)s->unit * s->block_bytes;
    uint8_t *flat = s->zin + ub;
    for (int32_t i = 0; i < s->unit; i++) memcpy(flat + (size_t)i * s->block_bytes, blocks[i], s->block_bytes);
    shuffle(flat, s->zin, ub, s->esz);
    const size_t zn = ZSTD_compress(s->zout, s->zbound, s->zin, ub, 1);
    if (ZSTD_isError(zn)) return skv_set_error(SKV_ERR_IO, "slow store: zstd: %s", ZSTD_getErrorName(zn));
    const int64_t u = stream * ((s->max_blocks + s->unit - 1) / s->unit) + b0 / s->unit;
    if (pwrite(s->fd, s->zout, zn, (off_t)s->file_end) != (ssize_t)zn)
        return skv_set_error(SKV_ERR_IO, "slow store: cannot write %s: %s", s->path, strerror(errno));
    s->zbytes += (int64_t)zn - s->zsize[u];
    s->zoff[u] = s->file_end;
    s->zsize[u] = (int32_t)zn;
    s->file_end += (int64_t)zn;
    return SKV_OK;
}

void skv_vstore_forget(skv_vstore *s, int64_t stream, int32_t b0, int32_t n) {
    if (s->kind == SKV_VSTORE_MMAP) {
        s->written -= n; /* rows are overwritten in place when written again */
        return;
    }
    const int64_t nu = (s->max_blocks + s->unit - 1) / s->unit;
    for (int64_t u = b0 / s->unit; u < (b0 + n + s->unit - 1) / s->unit && u < nu; u++) {
        s->zbytes -= s->zsize[stream * nu + u];
        s->zsize[stream * nu + u] = 0;
    }
}

/* zstd: decompress the unit holding cache block b into dst (unit * block_bytes; the unit's
 * bytes again after dst are scratch). */
static skv_status read_unit(const skv_vstore *s, int64_t stream, int32_t b, uint8_t *zbuf, uint8_t *dst,
                            skv_vstore_stats *ct) {
    const int64_t u = stream * ((s->max_blocks + s->unit - 1) / s->unit) + b / s->unit;
    const int32_t zn = s->zsize[u];
    if (zn <= 0) return skv_set_error(SKV_ERR_ARG, "slow store: block %d of stream %lld was never written", b, (long long)stream);
    const ssize_t got = pread(s->fd, zbuf, (size_t)zn, (off_t)s->zoff[u]);
    if (got != zn)
        return skv_set_error(SKV_ERR_IO, "slow store: %s: short read (%zd of %d bytes at %lld): the file was "
                             "truncated or removed", s->path, got, zn, (long long)s->zoff[u]);
    const size_t ub = (size_t)s->unit * s->block_bytes;
    const size_t dn = ZSTD_decompress(dst + ub, ub, zbuf, (size_t)zn);
    if (ZSTD_isError(dn) || dn != ub)
        return skv_set_error(SKV_ERR_FORMAT, "slow store: %s: a compressed block does not decode", s->path);
    unshuffle(dst + ub, dst, ub, s->esz);
    if (ct) ct->bytes += zn, ct->blocks++;
    return SKV_OK;
}

skv_status skv_vstore_block(const skv_vstore *s, int64_t stream, int32_t b, uint8_t *out, skv_vstore_stats *ct) {
    if (s->kind == SKV_VSTORE_MMAP) {
        memcpy(out, s->map + block_off(s, stream, b), s->block_bytes);
        if (ct) ct->bytes += (int64_t)s->block_bytes, ct->blocks++;
        return SKV_OK;
    }
    uint8_t *tmp = malloc(skv_vstore_scratch_bytes(s));
    if (!tmp) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    skv_status st = read_unit(s, stream, b, tmp, tmp + s->zbound, ct);
    if (!st) memcpy(out, tmp + s->zbound + (size_t)(b % s->unit) * s->block_bytes, s->block_bytes);
    free(tmp);
    return st;
}

skv_status skv_vstore_rows(const skv_vstore *s, int64_t stream, const int32_t *slot, int32_t n, uint8_t *out,
                           uint8_t *scratch, skv_vstore_stats *ct) {
    const int64_t t0 = now_ns();
    const size_t rb = s->row_bytes;
    if (s->kind == SKV_VSTORE_MMAP) {
        for (int32_t i = 0; i < n; i++) {
            const int32_t b = slot[i] / SKV_KV_BLOCK, r = slot[i] % SKV_KV_BLOCK;
            copy_row(s, s->map + block_off(s, stream, b), r, out + (size_t)i * rb);
        }
        ct->bytes += (int64_t)n * (int64_t)rb;
    } else {
        const int32_t ut = s->unit * SKV_KV_BLOCK; /* tokens per unit */
        uint8_t *zbuf = scratch, *dst = scratch + s->zbound;
        int32_t cur = -1;
        for (int32_t i = 0; i < n; i++) {
            const int32_t u = slot[i] / ut;
            if (u != cur) {
                skv_status st = read_unit(s, stream, u * s->unit, zbuf, dst, ct);
                if (st) return st;
                cur = u;
            }
            const int32_t t = slot[i] % ut, b = t / SKV_KV_BLOCK, r = t % SKV_KV_BLOCK;
            copy_row(s, dst + (size_t)b * s->block_bytes, r, out + (size_t)i * rb);
        }
    }
    ct->rows += n;
    ct->ns += now_ns() - t0;
    return SKV_OK;
}

skv_status skv_vstore_check(const skv_vstore *s) {
    struct stat sb;
    if (fstat(s->fd, &sb) != 0)
        return skv_set_error(SKV_ERR_IO, "slow store: %s: %s", s->path, strerror(errno));
    const int64_t want = s->kind == SKV_VSTORE_MMAP ? (int64_t)s->map_bytes : s->file_end;
    if ((int64_t)sb.st_size < want)
        return skv_set_error(SKV_ERR_IO, "slow store: %s was truncated to %lld bytes under a running context "
                             "(it holds %lld)", s->path, (long long)sb.st_size, (long long)want);
    return SKV_OK;
}

void skv_vstore_drop_cache(skv_vstore *s) {
    if (s->map) {
        msync(s->map, s->map_bytes, MS_SYNC);
        madvise(s->map, s->map_bytes, MADV_DONTNEED);
    } else {
        fdatasync(s->fd);
    }
    posix_fadvise(s->fd, 0, 0, POSIX_FADV_DONTNEED);
}
