/*
 * gguf.c — parse and validate GGUF files (gguf.h), mmap the data.
 */
#include "gguf.h"

#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>

#define GGUF_MAX_NAME 64 /* ggml's limit on tensor names (with the NUL: 63 bytes; we allow 64) */
#define GGUF_MAX_KEY 65536

struct skv_gguf {
    char *path;
    void *map;          /* file mapping or RAM copy (owned) or NULL (buffer) */
    size_t map_size;
    const uint8_t *buf; /* the image */
    size_t len;
    uint32_t version, alignment;
    skv_gguf_kv *kv;
    int64_t n_kv;
    skv_gguf_tensor *t;
    int64_t n_t;
    uint64_t data_off;  /* start of the data section */
    int64_t data_bytes;
};

/* ggml types: name, block size, bytes per block, the engine's dtype (-1: not used here) */
static const struct {
    const char *name;
    int32_t block, bytes, dtype;
} GT[] = {
    [0] = {"F32", 1, 4, SKV_DTYPE_F32},       [1] = {"F16", 1, 2, SKV_DTYPE_F16},
    [2] = {"Q4_0", 32, 18, SKV_DTYPE_Q4_0},   [3] = {"Q4_1", 32, 20, SKV_DTYPE_Q4_1},
    [6] = {"Q5_0", 32, 22, SKV_DTYPE_Q5_0},   [7] = {"Q5_1", 32, 24, -1},
    [8] = {"Q8_0", 32, 34, SKV_DTYPE_Q8_0},   [9] = {"Q8_1", 32, 36, -1},
    [10] = {"Q2_K", 256, 84, -1},             [11] = {"Q3_K", 256, 110, -1},
    [12] = {"Q4_K", 256, 144, SKV_DTYPE_Q4_K}, [13] = {"Q5_K", 256, 176, SKV_DTYPE_Q5_K},
    [14] = {"Q6_K", 256, 210, SKV_DTYPE_Q6_K}, [15] = {"Q8_K", 256, 292, -1},
    [16] = {"IQ2_XXS", 256, 66, -1},          [17] = {"IQ2_XS", 256, 74, -1},
    [18] = {"IQ3_XXS", 256, 98, -1},          [19] = {"IQ1_S", 256, 50, -1},
    [20] = {"IQ4_NL", 32, 18, -1},            [21] = {"IQ3_S", 256, 110, -1},
    [22] = {"IQ2_S", 256, 82, -1},            [23] = {"IQ4_XS", 256, 136, -1},
    [24] = {"I8", 1, 1, -1},                  [25] = {"I16", 1, 2, -1},
    [26] = {"I32", 1, 4, -1},                 [27] = {"I64", 1, 8, -1},
    [28] = {"F64", 1, 8, -1},                 [29] = {"IQ1_M", 256, 56, -1},
    [30] = {"BF16", 1, 2, SKV_DTYPE_BF16},    [34] = {"TQ1_0", 256, 54, -1},
    [35] = {"TQ2_0", 256, 66, -1},            [39] = {"MXFP4", 32, 17, -1},
};
#define N_GT ((uint32_t)(sizeof GT / sizeof GT[0]))

const char *skv_gguf_ggml_type_name(uint32_t t) {
    static __thread char buf[24];
    if (t < N_GT && GT[t].name) return GT[t].name;
    snprintf(buf, sizeof buf, "type %u", t);
    return buf;
}

static const char *TN[SKV_GGUF_TYPE_COUNT] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32",
                                              "bool", "string", "array", "u64", "i64", "f64"};
static const int TSZ[SKV_GGUF_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

const char *skv_gguf_type_name(skv_gguf_type t) {
    return (unsigned)t < SKV_GGUF_TYPE_COUNT ? TN[t] : "?";
}

/* ------------------------------------------------------------------------------- reading */

typedef struct cur {
    const uint8_t *p;
    size_t len, at;
    const char *path;
} cur;

static skv_status need(cur *c, uint64_t n, const char *what) {
    if (n > c->len - c->at)
        return skv_set_error(SKV_ERR_FORMAT, "%s: truncated at byte %zu (reading %s: %llu more bytes, %zu left)",
                             c->path, c->at, what, (unsigned long long)n, c->len - c->at);
    return SKV_OK;
}
static uint64_t rd(cur *c, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v |= (uint64_t)c->p[c->at + i] << (8 * i);
    c->at += (size_t)n;
    return v;
}
static skv_status rd_u32(cur *c, const char *what, uint32_t *v) {
    skv_status st = need(c, 4, what);
    if (!st) *v = (uint32_t)rd(c, 4);
    return st;
}
static skv_status rd_u64(cur *c, const char *what, uint64_t *v) {
    skv_status st = need(c, 8, what);
    if (!st) *v = rd(c, 8);
    return st;
}
static skv_status rd_str(cur *c, const char *what, skv_gguf_str *s) {
    uint64_t n;
    skv_status st = rd_u64(c, what, &n);
    if (st || (st = need(c, n, what))) return st;
    s->s = (const char *)c->p + c->at;
    s->n = n;
    c->at += n;
    return SKV_OK;
}

static double bits_f32(uint64_t u) {
    union { uint32_t u; float f; } v = {.u = (uint32_t)u};
    return v.f;
}
static double bits_f64(uint64_t u) {
    union { uint64_t u; double f; } v = {.u = u};
    return v.f;
}

/* One scalar of type t (not string/array) into kv's u/i/f. */
static void scalar(skv_gguf_kv *kv, skv_gguf_type t, uint64_t raw) {
    int n = TSZ[t];
    kv->u = raw;
    int64_t sv = n == 8 ? (int64_t)raw : (int64_t)(raw << (64 - 8 * n)) >> (64 - 8 * n);
    switch (t) {
    case SKV_GGUF_I8: case SKV_GGUF_I16: case SKV_GGUF_I32: case SKV_GGUF_I64:
        kv->i = sv, kv->f = (double)sv;
        break;
    case SKV_GGUF_F32: kv->f = bits_f32(raw), kv->i = 0; break;
    case SKV_GGUF_F64: kv->f = bits_f64(raw), kv->i = 0; break;
    default: kv->i = (int64_t)raw, kv->f = (double)raw; break; /* unsigned, bool */
    }
}

static skv_status parse_kv(cur *c, skv_gguf_kv *kv, int64_t idx) {
    char what[96];
    skv_gguf_str key;
    uint32_t type;
    snprintf(what, sizeof what, "key of metadata entry %lld", (long long)idx);
    skv_status st = rd_str(c, what, &key);
    if (st) return st;
    if (key.n == 0 || key.n > GGUF_MAX_KEY || memchr(key.s, 0, key.n))
        return skv_set_error(SKV_ERR_FORMAT, "%s: metadata entry %lld: key of %llu bytes is empty, too long or holds NUL",
                             c->path, (long long)idx, (unsigned long long)key.n);
    if (!(kv->key = malloc(key.n + 1))) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    memcpy(kv->key, key.s, key.n);
    kv->key[key.n] = 0;
    snprintf(what, sizeof what, "type of \"%.60s\"", kv->key);
    if ((st = rd_u32(c, what, &type))) return st;
    if (type >= SKV_GGUF_TYPE_COUNT)
        return skv_set_error(SKV_ERR_FORMAT, "%s: metadata \"%s\": unknown value type %u", c->path, kv->key, type);
    kv->type = (skv_gguf_type)type;
    snprintf(what, sizeof what, "value of \"%.60s\"", kv->key);
    if (type == SKV_GGUF_STRING) return rd_str(c, what, &kv->str);
    if (type != SKV_GGUF_ARRAY) {
        if ((st = need(c, (uint64_t)TSZ[type], what))) return st;
        scalar(kv, kv->type, rd(c, TSZ[type]));
        if (type == SKV_GGUF_BOOL && kv->u > 1)
            return skv_set_error(SKV_ERR_FORMAT, "%s: metadata \"%s\": bool value %llu is neither 0 nor 1", c->path,
                                 kv->key, (unsigned long long)kv->u);
        return SKV_OK;
    }
    uint32_t et;
    uint64_t n;
    if ((st = rd_u32(c, what, &et)) || (st = rd_u64(c, what, &n))) return st;
    if (et >= SKV_GGUF_TYPE_COUNT)
        return skv_set_error(SKV_ERR_FORMAT, "%s: metadata \"%s\": array of unknown element type %u", c->path, kv->key, et);
    if (et == SKV_GGUF_ARRAY)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "%s: metadata \"%s\": nested arrays are not supported", c->path, kv->key);
    kv->arr_type = (skv_gguf_type)et;
    kv->arr_n = n;
    if (et != SKV_GGUF_STRING) {
        if (n > (c->len - c->at) / (uint64_t)TSZ[et])
            return skv_set_error(SKV_ERR_FORMAT, "%s: metadata \"%s\": array of %llu %s runs past the end of the file",
                                 c->path, kv->key, (unsigned long long)n, TN[et]);
        kv->arr = c->p + c->at;
        if (et == SKV_GGUF_BOOL)
            for (uint64_t i = 0; i < n; i++)
                if (c->p[c->at + i] > 1)
                    return skv_set_error(SKV_ERR_FORMAT, "%s: metadata \"%s\"[%llu]: bool value %u is neither 0 nor 1",
                                         c->path, kv->key, (unsigned long long)i, c->p[c->at + i]);
        c->at += n * (uint64_t)TSZ[et];
        return SKV_OK;
    }
    if (n > (c->len - c->at) / 8) /* every string takes at least its 8-byte length */
        return skv_set_error(SKV_ERR_FORMAT, "%s: metadata \"%s\": array of %llu strings runs past the end of the file",
                             c->path, kv->key, (unsigned long long)n);
    if (!(kv->strs = malloc(sizeof *kv->strs * (size_t)(n ? n : 1)))) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    for (uint64_t i = 0; i < n; i++) {
        snprintf(what, sizeof what, "\"%.60s\"[%llu]", kv->key, (unsigned long long)i);
        if ((st = rd_str(c, what, &kv->strs[i]))) return st;
    }
    return SKV_OK;
}

static skv_status parse_tensor(cur *c, skv_gguf_tensor *t, int64_t idx) {
    char what[96];
    skv_gguf_str name;
    snprintf(what, sizeof what, "name of tensor %lld", (long long)idx);
    skv_status st = rd_str(c, what, &name);
    if (st) return st;
    if (name.n == 0 || name.n > GGUF_MAX_NAME || memchr(name.s, 0, name.n))
        return skv_set_error(SKV_ERR_FORMAT, "%s: tensor %lld: name of %llu bytes is empty, longer than %d or holds NUL",
                             c->path, (long long)idx, (unsigned long long)name.n, GGUF_MAX_NAME);
    if (!(t->name = malloc(name.n + 1))) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    memcpy(t->name, name.s, name.n);
    t->name[name.n] = 0;
    uint32_t nd, type;
    snprintf(what, sizeof what, "tensor \"%s\"", t->name);
    if ((st = rd_u32(c, what, &nd))) return st;
    if (nd < 1 || nd > 4)
        return skv_set_error(SKV_ERR_FORMAT, "%s: tensor \"%s\": n_dims %u (1 to 4 allowed)", c->path, t->name, nd);
    t->n_dims = (int32_t)nd;
    uint64_t n_elem = 1;
    for (int d = 0; d < 4; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < nd; d++) {
        uint64_t e;
        if ((st = rd_u64(c, what, &e))) return st;
        if (e < 1 || e > ((uint64_t)1 << 40) || n_elem > (((uint64_t)1 << 50) / e))
            return skv_set_error(SKV_ERR_FORMAT, "%s: tensor \"%s\": dimension %u is %llu (zero, or the size overflows)",
                                 c->path, t->name, d, (unsigned long long)e);
        t->ne[d] = (int64_t)e;
        n_elem *= e;
    }
    if ((st = rd_u32(c, what, &type)) || (st = rd_u64(c, what, &t->offset))) return st;
    t->ggml_type = type;
    if (type >= N_GT || !GT[type].name)
        return skv_set_error(SKV_ERR_FORMAT, "%s: tensor \"%s\": unknown ggml type %u", c->path, t->name, type);
    if (t->ne[0] % GT[type].block)
        return skv_set_error(SKV_ERR_FORMAT, "%s: tensor \"%s\": first dimension %lld is not a multiple of %s's block of %d",
                             c->path, t->name, (long long)t->ne[0], GT[type].name, GT[type].block);
    t->dtype = (skv_dtype)GT[type].dtype;
    t->nbytes = n_elem / (uint64_t)GT[type].block * (uint64_t)GT[type].bytes;
    return SKV_OK;
}

static int cmp_offset(const void *a, const void *b) {
    const skv_gguf_tensor *x = *(skv_gguf_tensor *const *)a, *y = *(skv_gguf_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}
static int cmp_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Duplicate names among n strings (sorted copy); the first duplicate or NULL. */
static const char *first_dup(char **names, int64_t n, skv_status *st) {
    *st = SKV_OK;
    if (n < 2) return NULL;
    char **s = malloc(sizeof *s * (size_t)n);
    if (!s) {
        *st = skv_set_error(SKV_ERR_NOMEM, "out of memory");
        return NULL;
    }
    memcpy(s, names, sizeof *s * (size_t)n);
    qsort(s, (size_t)n, sizeof *s, cmp_name);
    const char *d = NULL;
    for (int64_t i = 1; i < n && !d; i++)
        if (!strcmp(s[i - 1], s[i])) d = s[i];
    free(s);
    return d;
}

static skv_status parse(skv_gguf *g) {
    cur c = {g->buf, g->len, 0, g->path};
    uint32_t magic;
    uint64_t n_t, n_kv;
    skv_status st = rd_u32(&c, "magic", &magic);
    if (st) return st;
    if (magic != 0x46554747u) /* "GGUF" */
        return skv_set_error(SKV_ERR_FORMAT, "%s: not a GGUF file (magic %02x %02x %02x %02x, expected \"GGUF\")", g->path,
                             magic & 0xff, (magic >> 8) & 0xff, (magic >> 16) & 0xff, magic >> 24);
    if ((st = rd_u32(&c, "version", &g->version))) return st;
    if (g->version != 2 && g->version != 3)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "%s: GGUF version %u is not supported (2 or 3)", g->path, g->version);
    if ((st = rd_u64(&c, "tensor count", &n_t)) || (st = rd_u64(&c, "metadata count", &n_kv))) return st;
    /* each entry takes at least 13 bytes (key length, 1-byte key, type); each tensor info 29 */
    if (n_kv > (g->len - c.at) / 13)
        return skv_set_error(SKV_ERR_FORMAT, "%s: metadata count %llu cannot fit in the file's %zu bytes", g->path,
                             (unsigned long long)n_kv, g->len);
    if (n_t > (g->len - c.at) / 29)
        return skv_set_error(SKV_ERR_FORMAT, "%s: tensor count %llu cannot fit in the file's %zu bytes", g->path,
                             (unsigned long long)n_t, g->len);
    g->kv = calloc((size_t)n_kv + 1, sizeof *g->kv);
    g->t = calloc((size_t)n_t + 1, sizeof *g->t);
    if (!g->kv || !g->t) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    for (uint64_t i = 0; i < n_kv; i++, g->n_kv++)
        if ((st = parse_kv(&c, &g->kv[i], (int64_t)i))) {
            g->n_kv++;
            return st;
        }
    {
        char **names = malloc(sizeof *names * (size_t)(n_kv ? n_kv : 1));
        if (!names) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
        for (int64_t i = 0; i < g->n_kv; i++) names[i] = g->kv[i].key;
        const char *d = first_dup(names, g->n_kv, &st);
        free(names);
        if (st) return st;
        if (d) return skv_set_error(SKV_ERR_FORMAT, "%s: metadata key \"%s\" appears twice", g->path, d);
    }
    g->alignment = 32;
    const skv_gguf_kv *al = skv_gguf_find_kv(g, "general.alignment");
    if (al) {
        if (al->type != SKV_GGUF_U32)
            return skv_set_error(SKV_ERR_FORMAT, "%s: general.alignment has type %s (u32 expected)", g->path, TN[al->type]);
        if (al->u == 0 || (al->u & (al->u - 1)) || al->u > (1u << 20))
            return skv_set_error(SKV_ERR_FORMAT, "%s: general.alignment %llu is not a power of two up to 2^20", g->path,
                                 (unsigned long long)al->u);
        g->alignment = (uint32_t)al->u;
    }
    for (uint64_t i = 0; i < n_t; i++, g->n_t++)
        if ((st = parse_tensor(&c, &g->t[i], (int64_t)i))) {
            g->n_t++;
            return st;
        }
    {
        char **names = malloc(sizeof *names * (size_t)(n_t ? n_t : 1));
        if (!names) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
        for (int64_t i = 0; i < g->n_t; i++) names[i] = g->t[i].name;
        const char *d = first_dup(names, g->n_t, &st);
        free(names);
        if (st) return st;
        if (d) return skv_set_error(SKV_ERR_FORMAT, "%s: tensor \"%s\" appears twice", g->path, d);
    }
    /* the data section starts at the next multiple of the alignment */
    uint64_t off = ((uint64_t)c.at + g->alignment - 1) / g->alignment * g->alignment;
    if (n_t > 0 && off > g->len)
        return skv_set_error(SKV_ERR_FORMAT, "%s: truncated: the data section would start at byte %llu of %zu", g->path,
                             (unsigned long long)off, g->len);
    g->data_off = off;
    const uint64_t avail = off <= g->len ? g->len - off : 0;
    skv_gguf_tensor **order = malloc(sizeof *order * (size_t)(n_t ? n_t : 1));
    if (!order) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < g->n_t; i++) {
        skv_gguf_tensor *t = &g->t[i];
        if (t->offset % g->alignment) {
            free(order);
            return skv_set_error(SKV_ERR_FORMAT, "%s: tensor \"%s\": offset %llu is not a multiple of the alignment %u",
                                 g->path, t->name, (unsigned long long)t->offset, g->alignment);
        }
        if (t->offset > avail || t->nbytes > avail - t->offset) {
            free(order);
            return skv_set_error(SKV_ERR_FORMAT,
                                 "%s: tensor \"%s\": %llu bytes of %s at offset %llu run past the end of the data section (%llu bytes): truncated file?",
                                 g->path, t->name, (unsigned long long)t->nbytes, GT[t->ggml_type].name,
                                 (unsigned long long)t->offset, (unsigned long long)avail);
        }
        t->data = g->buf + off + t->offset;
        g->data_bytes += (int64_t)t->nbytes;
        order[i] = t;
    }
    qsort(order, (size_t)g->n_t, sizeof *order, cmp_offset);
    for (int64_t i = 1; i < g->n_t; i++)
        if (order[i - 1]->offset + order[i - 1]->nbytes > order[i]->offset) {
            st = skv_set_error(SKV_ERR_FORMAT, "%s: tensors \"%s\" and \"%s\" overlap (bytes %llu..%llu and %llu..)", g->path,
                               order[i - 1]->name, order[i]->name, (unsigned long long)order[i - 1]->offset,
                               (unsigned long long)(order[i - 1]->offset + order[i - 1]->nbytes),
                               (unsigned long long)order[i]->offset);
            break;
        }
    free(order);
    return st;
}

/* --------------------------------------------------------------------------- open/close */

skv_status skv_gguf_parse_buffer(void *buf, size_t len, const char *name, skv_gguf **out) {
    *out = NULL;
    skv_gguf *g = calloc(1, sizeof *g);
    if (!g || !(g->path = strdup(name ? name : "(buffer)"))) {
        free(g);
        return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    }
    g->buf = buf;
    g->len = len;
    skv_status st = parse(g);
    if (st) {
        skv_gguf_close(g);
        return st;
    }
    *out = g;
    return SKV_OK;
}

skv_status skv_gguf_open(const char *path, int to_ram, skv_gguf **out) {
    *out = NULL;
    void *map;
    size_t size;
    skv_status st0 = skv_map_file(path, 24, "a GGUF header", 1, &map, &size);
    if (st0) return st0;
    skv_gguf *g;
    skv_status st = skv_gguf_parse_buffer(map, size, path, &g);
    if (st) {
        munmap(map, size);
        return st;
    }
    g->map = map;
    g->map_size = size;
    if (to_ram) { /* copy into anonymous huge-page memory; views move with it */
        size_t al; /* writable: a loader may permute rows in place; on failure the file mapping stays */
        void *mem = skv_copy_to_hugepages(map, size, 1, &al);
        if (mem) {
            const ptrdiff_t shift = (const uint8_t *)mem - (const uint8_t *)map;
            for (int64_t i = 0; i < g->n_kv; i++) {
                skv_gguf_kv *kv = &g->kv[i];
                if (kv->str.s) kv->str.s += shift;
                if (kv->arr) kv->arr = (const uint8_t *)kv->arr + shift;
                for (uint64_t j = 0; kv->strs && j < kv->arr_n; j++) kv->strs[j].s += shift;
            }
            for (int64_t i = 0; i < g->n_t; i++) g->t[i].data = (const uint8_t *)g->t[i].data + shift;
            munmap(map, size);
            g->map = mem;
            g->map_size = al;
            g->buf = mem;
        }
    }
    *out = g;
    return SKV_OK;
}

void skv_gguf_close(skv_gguf *g) {
    if (!g) return;
    for (int64_t i = 0; i < g->n_kv; i++) free(g->kv[i].key), free(g->kv[i].strs);
    for (int64_t i = 0; i < g->n_t; i++) free(g->t[i].name);
    free(g->kv);
    free(g->t);
    if (g->map) munmap(g->map, g->map_size);
    free(g->path);
    free(g);
}

/* ------------------------------------------------------------------------------ access */

const char *skv_gguf_path(const skv_gguf *g) { return g->path; }
uint32_t skv_gguf_version(const skv_gguf *g) { return g->version; }
uint32_t skv_gguf_alignment(const skv_gguf *g) { return g->alignment; }
int64_t skv_gguf_n_kv(const skv_gguf *g) { return g->n_kv; }
const skv_gguf_kv *skv_gguf_kv_at(const skv_gguf *g, int64_t i) { return &g->kv[i]; }
int64_t skv_gguf_n_tensors(const skv_gguf *g) { return g->n_t; }
const skv_gguf_tensor *skv_gguf_tensor_at(const skv_gguf *g, int64_t i) { return &g->t[i]; }
int64_t skv_gguf_data_bytes(const skv_gguf *g) { return g->data_bytes; }

const skv_gguf_kv *skv_gguf_find_kv(const skv_gguf *g, const char *key) {
    for (int64_t i = 0; i < g->n_kv; i++)
        if (!strcmp(g->kv[i].key, key)) return &g->kv[i];
    return NULL;
}

const skv_gguf_tensor *skv_gguf_find_tensor(const skv_gguf *g, const char *name) {
    for (int64_t i = 0; i < g->n_t; i++)
        if (!strcmp(g->t[i].name, name)) return &g->t[i];
    return NULL;
}

static int is_int(skv_gguf_type t) {
    return t <= SKV_GGUF_I32 || t == SKV_GGUF_U64 || t == SKV_GGUF_I64;
}
static int is_signed(skv_gguf_type t) {
    return t == SKV_GGUF_I8 || t == SKV_GGUF_I16 || t == SKV_GGUF_I32 || t == SKV_GGUF_I64;
}

static skv_status missing(const skv_gguf *g, const char *key, int req) {
    return req ? skv_set_error(SKV_ERR_FORMAT, "%s: metadata key \"%s\" is missing", g->path, key) : SKV_OK;
}

skv_status skv_gguf_get_int(const skv_gguf *g, const char *key, int req, int64_t lo, int64_t hi, int64_t *v) {
    const skv_gguf_kv *kv = skv_gguf_find_kv(g, key);
    if (!kv) return missing(g, key, req);
    if (!is_int(kv->type))
        return skv_set_error(SKV_ERR_FORMAT, "%s: metadata \"%s\" has type %s (an integer expected)", g->path, key,
                             TN[kv->type]);
    if ((!is_signed(kv->type) && kv->u > (uint64_t)INT64_MAX) || kv->i < lo || kv->i > hi)
        return skv_set_error(SKV_ERR_FORMAT, "%s: metadata \"%s\" = %s%llu is out of range [%lld, %lld]", g->path, key,
                             is_signed(kv->type) && kv->i < 0 ? "-" : "",
                             (unsigned long long)(is_signed(kv->type) && kv->i < 0 ? -(uint64_t)kv->i : kv->u),
                             (long long)lo, (long long)hi);
    *v = kv->i;
    return SKV_OK;
}

skv_status skv_gguf_get_float(const skv_gguf *g, const char *key, int req, double *v) {
    const skv_gguf_kv *kv = skv_gguf_find_kv(g, key);
    if (!kv) return missing(g, key, req);
    if (kv->type != SKV_GGUF_F32 && kv->type != SKV_GGUF_F64 && !is_int(kv->type))
        return skv_set_error(SKV_ERR_FORMAT, "%s: metadata \"%s\" has type %s (a number expected)", g->path, key,
                             TN[kv->type]);
    *v = kv->f;
    return SKV_OK;
}

skv_status skv_gguf_get_bool(const skv_gguf *g, const char *key, int req, int *v) {
    const skv_gguf_kv *kv = skv_gguf_find_kv(g, key);
    if (!kv) return missing(g, key, req);
    if (kv->type != SKV_GGUF_BOOL)
        return skv_set_error(SKV_ERR_FORMAT, "%s: metadata \"%s\" has type %s (bool expected)", g->path, key, TN[kv->type]);
    *v = (int)kv->u;
    return SKV_OK;
}

skv_status skv_gguf_get_str(const skv_gguf *g, const char *key, int req, char **v) {
    *v = NULL;
    const skv_gguf_kv *kv = skv_gguf_find_kv(g, key);
    if (!kv) return missing(g, key, req);
    if (kv->type != SKV_GGUF_STRING)
        return skv_set_error(SKV_ERR_FORMAT, "%s: metadata \"%s\" has type %s (string expected)", g->path, key, TN[kv->type]);
    if (!(*v = malloc(kv->str.n + 1))) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    memcpy(*v, kv->str.s, kv->str.n);
    (*v)[kv->str.n] = 0;
    return SKV_OK;
}

skv_status skv_gguf_get_arr(const skv_gguf *g, const char *key, int req, skv_gguf_type elem, const skv_gguf_kv **out) {
    *out = NULL;
    const skv_gguf_kv *kv = skv_gguf_find_kv(g, key);
    if (!kv) return missing(g, key, req);
    if (kv->type != SKV_GGUF_ARRAY)
        return skv_set_error(SKV_ERR_FORMAT, "%s: metadata \"%s\" has type %s (an array expected)", g->path, key, TN[kv->type]);
    if (elem != SKV_GGUF_TYPE_COUNT && kv->arr_type != elem)
        return skv_set_error(SKV_ERR_FORMAT, "%s: metadata \"%s\" is an array of %s (%s expected)", g->path, key,
                             TN[kv->arr_type], TN[elem]);
    *out = kv;
    return SKV_OK;
}

static uint64_t arr_raw(const skv_gguf_kv *kv, uint64_t i) {
    const int n = TSZ[kv->arr_type];
    const uint8_t *p = (const uint8_t *)kv->arr + i * (uint64_t)n;
    uint64_t v = 0;
    for (int b = 0; b < n; b++) v |= (uint64_t)p[b] << (8 * b);
    return v;
}

double skv_gguf_arr_f(const skv_gguf_kv *kv, uint64_t i) {
    skv_gguf_kv s = {0};
    scalar(&s, kv->arr_type, arr_raw(kv, i));
    return s.f;
}

int64_t skv_gguf_arr_i(const skv_gguf_kv *kv, uint64_t i) {
    skv_gguf_kv s = {0};
    scalar(&s, kv->arr_type, arr_raw(kv, i));
    if (kv->arr_type != SKV_GGUF_F32 && kv->arr_type != SKV_GGUF_F64) return s.i;
    /* a float element: truncated, saturating (NaN: 0) */
    return s.f >= 9.2e18 ? INT64_MAX : s.f <= -9.2e18 ? INT64_MIN : s.f == s.f ? (int64_t)s.f : 0;
}
