/*
 * safetensors.c — parse and validate safetensors headers, mmap the data, resolve shards.
 *
 * File layout: u64 little-endian header length N, N bytes of JSON
 *   {"__metadata__": {...}, "<name>": {"dtype": "BF16", "shape": [..], "data_offsets": [b, e]}}
 * then the data section; offsets are relative to its start (8 + N).
 */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct st_file {
    char *path;
    void *map;
    size_t size;     /* file size */
    size_t map_size; /* bytes mapped at map */
} st_file;

struct skv_st_set {
    st_file *files;
    int n_files;
    skv_st_tensor *tensors;
    int64_t n_tensors, cap_tensors;
    int64_t bytes;
};

size_t skv_dtype_size(skv_dtype t) { return t == SKV_DTYPE_F32 ? 4 : 2; }

void skv_st_close(skv_st_set *s) {
    if (!s) return;
    for (int i = 0; i < s->n_files; i++) {
        if (s->files[i].map) munmap(s->files[i].map, s->files[i].map_size);
        free(s->files[i].path);
    }
    for (int64_t i = 0; i < s->n_tensors; i++) free(s->tensors[i].name);
    free(s->files);
    free(s->tensors);
    free(s);
}

static int cmp_by_data(const void *a, const void *b) {
    const skv_st_tensor *x = *(skv_st_tensor *const *)a, *y = *(skv_st_tensor *const *)b;
    if (x->file != y->file) return x->file < y->file ? -1 : 1;
    return x->data < y->data ? -1 : x->data > y->data;
}

/* Parse one tensor entry of a header. */
static skv_status parse_entry(const cJSON *e, const char *path, const uint8_t *data,
                              uint64_t data_len, skv_st_tensor *t) {
    const char *name = e->string;
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(off) ||
        cJSON_GetArraySize(off) != 2)
        return skv_set_error(SKV_ERR_FORMAT,
                             "%s: tensor \"%s\": header entry needs dtype, shape, data_offsets",
                             path, name);
    if (!strcmp(dt->valuestring, "BF16")) t->dtype = SKV_DTYPE_BF16;
    else if (!strcmp(dt->valuestring, "F16")) t->dtype = SKV_DTYPE_F16;
    else if (!strcmp(dt->valuestring, "F32")) t->dtype = SKV_DTYPE_F32;
    else
        return skv_set_error(SKV_ERR_UNSUPPORTED,
                             "%s: tensor \"%s\": dtype %s is not supported (BF16, F16, F32)", path,
                             name, dt->valuestring);
    int nd = cJSON_GetArraySize(sh);
    if (nd > 4)
        return skv_set_error(SKV_ERR_FORMAT, "%s: tensor \"%s\": %d dimensions (at most 4)", path,
                             name, nd);
    t->n_dims = nd;
    t->n_elem = 1;
    for (int i = 0; i < nd; i++) {
        const cJSON *d = cJSON_GetArrayItem(sh, i);
        if (!cJSON_IsNumber(d) || d->valuedouble < 0 || d->valuedouble > 9.0e15 ||
            d->valuedouble != (double)(int64_t)d->valuedouble)
            return skv_set_error(SKV_ERR_FORMAT, "%s: tensor \"%s\": bad shape", path, name);
        t->shape[i] = (int64_t)d->valuedouble;
        if (t->shape[i] > 0 && t->n_elem > INT64_MAX / 16 / t->shape[i])
            return skv_set_error(SKV_ERR_FORMAT, "%s: tensor \"%s\": shape too large", path, name);
        t->n_elem *= t->shape[i];
    }
    /* Offsets are byte positions: whole numbers, and below 2^53 so that the double cJSON holds
     * them in is exact (checked before any conversion to an integer). */
    const cJSON *b = cJSON_GetArrayItem(off, 0), *en = cJSON_GetArrayItem(off, 1);
    if (!cJSON_IsNumber(b) || !cJSON_IsNumber(en) || !(b->valuedouble >= 0) ||
        !(en->valuedouble <= 9007199254740992.0) || en->valuedouble < b->valuedouble ||
        b->valuedouble != floor(b->valuedouble) || en->valuedouble != floor(en->valuedouble))
        return skv_set_error(SKV_ERR_FORMAT,
                             "%s: tensor \"%s\": bad data_offsets (two whole byte offsets, "
                             "0 <= begin <= end <= 2^53)", path, name);
    uint64_t begin = (uint64_t)b->valuedouble, end = (uint64_t)en->valuedouble;
    if (end > data_len)
        return skv_set_error(SKV_ERR_FORMAT,
                             "%s: tensor \"%s\": data_offsets end %llu is past the end of the file "
                             "(data section has %llu bytes; truncated file?)",
                             path, name, (unsigned long long)end, (unsigned long long)data_len);
    if (end - begin != (uint64_t)t->n_elem * skv_dtype_size(t->dtype))
        return skv_set_error(SKV_ERR_FORMAT,
                             "%s: tensor \"%s\": data_offsets span %llu bytes but shape x dtype "
                             "needs %llu",
                             path, name, (unsigned long long)(end - begin),
                             (unsigned long long)t->n_elem * skv_dtype_size(t->dtype));
    t->data = data + begin;
    return SKV_OK;
}

/* Parse and validate a whole safetensors file image p[0, size) whose entry in s->files is f (its
 * path names the file in messages), appending its tensors to s; the views point into p. */
static skv_status parse_image(skv_st_set *s, const st_file *f, const uint8_t *p, size_t size) {
    const char *path = f->path;
    if (size < 8)
        return skv_set_error(SKV_ERR_FORMAT, "%s: %zu bytes, too short for a safetensors file",
                             path, size);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)p[i] << (8 * i);
    if (hlen > size - 8 || hlen > (100u << 20))
        return skv_set_error(SKV_ERR_FORMAT,
                             "%s: header length %llu exceeds the file size %zu (corrupt or "
                             "truncated safetensors)",
                             path, (unsigned long long)hlen, size);
    cJSON *root = cJSON_ParseWithLength((const char *)p + 8, hlen);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return skv_set_error(SKV_ERR_FORMAT, "%s: header is not valid JSON (corrupt safetensors)",
                             path);
    }
    const uint8_t *data = p + 8 + hlen;
    uint64_t data_len = size - 8 - hlen;
    skv_status st = SKV_OK;
    int64_t first = s->n_tensors;
    for (const cJSON *e = root->child; e; e = e->next) {
        if (!strcmp(e->string, "__metadata__")) continue;
        if (!cJSON_IsObject(e)) {
            st = skv_set_error(SKV_ERR_FORMAT, "%s: header entry \"%s\" is not an object", path,
                               e->string);
            break;
        }
        if (s->n_tensors == s->cap_tensors) {
            int64_t cap = s->cap_tensors ? 2 * s->cap_tensors : 256;
            skv_st_tensor *nt = realloc(s->tensors, (size_t)cap * sizeof *s->tensors);
            if (!nt) {
                st = skv_set_error(SKV_ERR_NOMEM, "%s: out of memory", path);
                break;
            }
            s->tensors = nt;
            s->cap_tensors = cap;
        }
        skv_st_tensor *t = &s->tensors[s->n_tensors];
        memset(t, 0, sizeof *t);
        if ((st = parse_entry(e, path, data, data_len, t))) break;
        t->name = strdup(e->string);
        t->file = f->path;
        s->n_tensors++;
        s->bytes += t->n_elem * (int64_t)skv_dtype_size(t->dtype);
    }
    cJSON_Delete(root);
    if (st) return st;

    /* No two tensors of this file may overlap. */
    int64_t n = s->n_tensors - first;
    if (n > 1) {
        skv_st_tensor **order = malloc((size_t)n * sizeof *order);
        for (int64_t i = 0; i < n; i++) order[i] = &s->tensors[first + i];
        qsort(order, (size_t)n, sizeof *order, cmp_by_data);
        for (int64_t i = 1; i < n && !st; i++) {
            const uint8_t *prev_end =
                (const uint8_t *)order[i - 1]->data +
                order[i - 1]->n_elem * (int64_t)skv_dtype_size(order[i - 1]->dtype);
            if ((const uint8_t *)order[i]->data < prev_end)
                st = skv_set_error(SKV_ERR_FORMAT, "%s: tensors \"%s\" and \"%s\" overlap", path,
                                   order[i - 1]->name, order[i]->name);
        }
        free(order);
    }
    return st;
}

/* Map one file and append its tensors to s. */
static skv_status open_file(skv_st_set *s, const char *path) {
    void *map;
    size_t size;
    skv_status st = skv_map_file(path, 8, "a safetensors file", 0, &map, &size);
    if (st) return st;
    st_file *f = &s->files[s->n_files++];
    f->map = map;
    f->size = f->map_size = size;
    f->path = strdup(path);
    if (!f->path) return skv_set_error(SKV_ERR_NOMEM, "%s: out of memory", path);
    return parse_image(s, f, map, size);
}

/* Move a validated file's bytes from its file mapping into private anonymous memory backed by
 * transparent huge pages (fewer TLB misses when decode streams every weight), and rebase the
 * tensor views onto it. */
static skv_status move_to_ram(skv_st_set *s, st_file *f) {
    size_t al;
    void *mem = skv_copy_to_hugepages(f->map, f->size, 0, &al);
    if (!mem)
        return skv_set_error(SKV_ERR_NOMEM, "%s: cannot allocate %zu bytes for the weights",
                             f->path, f->size);
    for (int64_t i = 0; i < s->n_tensors; i++)
        if (s->tensors[i].file == f->path)
            s->tensors[i].data = (const uint8_t *)mem + ((const uint8_t *)s->tensors[i].data -
                                                         (const uint8_t *)f->map);
    munmap(f->map, f->map_size);
    f->map = mem;
    f->map_size = al;
    return SKV_OK;
}

static int file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* Sharded checkpoint: every shard the index names is opened once; every tensor of the
 * weight_map must be found in the shard it names. */
static skv_status open_index(skv_st_set *s, const char *dir, const char *index_path, const char *text,
                             size_t len) {
    skv_status st = SKV_OK;
    cJSON *root = cJSON_ParseWithLength(text, len);
    const cJSON *wm = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!cJSON_IsObject(wm)) {
        cJSON_Delete(root);
        return skv_set_error(SKV_ERR_FORMAT, "%s: invalid JSON or missing \"weight_map\"",
                             index_path);
    }
    /* Distinct shard names, in order of first appearance. */
    int n_shards = 0;
    const char **shards = calloc((size_t)cJSON_GetArraySize(wm) + 1, sizeof *shards);
    for (const cJSON *e = wm->child; e; e = e->next) {
        if (!cJSON_IsString(e) || strchr(e->valuestring, '/') || !e->valuestring[0]) {
            st = skv_set_error(SKV_ERR_FORMAT, "%s: weight_map[\"%s\"] must be a file name",
                               index_path, e->string);
            goto done;
        }
        int seen = 0;
        for (int i = 0; i < n_shards && !seen; i++) seen = !strcmp(shards[i], e->valuestring);
        if (!seen) shards[n_shards++] = e->valuestring;
    }
    s->files = calloc((size_t)n_shards + 1, sizeof *s->files);
    for (int i = 0; i < n_shards; i++) {
        char path[4096];
        skv_path_join(path, sizeof path, dir, shards[i]);
        if (!file_exists(path)) {
            st = skv_set_error(SKV_ERR_IO, "%s: shard %s named by %s is missing", path, shards[i],
                               index_path);
            goto done;
        }
        if ((st = open_file(s, path))) goto done;
    }
    for (const cJSON *e = wm->child; e; e = e->next) {
        const skv_st_tensor *t = skv_st_find(s, e->string);
        if (!t) {
            st = skv_set_error(SKV_ERR_FORMAT, "%s: tensor \"%s\" is not in any shard",
                               index_path, e->string);
            goto done;
        }
        const char *base = strrchr(t->file, '/');
        base = base ? base + 1 : t->file;
        if (strcmp(base, e->valuestring) != 0) {
            st = skv_set_error(SKV_ERR_FORMAT,
                               "%s: tensor \"%s\" is listed in %s but found in %s (shard does "
                               "not match its index)",
                               index_path, e->string, e->valuestring, base);
            goto done;
        }
    }
    /* Duplicate names across shards are ambiguous. */
    for (int64_t i = 0; i < s->n_tensors && s->n_files > 1; i++) {
        const skv_st_tensor *t = skv_st_find(s, s->tensors[i].name);
        if (t != &s->tensors[i]) {
            st = skv_set_error(SKV_ERR_FORMAT, "%s: tensor \"%s\" appears in %s and %s", dir,
                               t->name, t->file, s->tensors[i].file);
            goto done;
        }
    }
done:
    free(shards);
    cJSON_Delete(root);
    return st;
}

static skv_status open_sharded(skv_st_set *s, const char *dir, const char *index_path) {
    char *text = NULL;
    size_t len = 0;
    skv_status st = skv_read_file(index_path, &text, &len);
    if (st) return st;
    st = open_index(s, dir, index_path, text, len);
    free(text);
    return st;
}

skv_status skv_st_open(const char *dir, int to_ram, skv_st_set **out) {
    *out = NULL;
    skv_st_set *s = calloc(1, sizeof *s);
    if (!s) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    char single[4096], index[4096];
    skv_path_join(single, sizeof single, dir, "model.safetensors");
    skv_path_join(index, sizeof index, dir, "model.safetensors.index.json");
    skv_status st;
    if (file_exists(index)) {
        st = open_sharded(s, dir, index);
    } else if (file_exists(single)) {
        s->files = calloc(1, sizeof *s->files);
        st = open_file(s, single);
    } else {
        st = skv_set_error(SKV_ERR_IO, "%s: no model.safetensors or model.safetensors.index.json",
                           dir);
    }
    if (st) {
        skv_st_close(s);
        return st;
    }
    for (int i = 0; i < s->n_files && to_ram && !st; i++) st = move_to_ram(s, &s->files[i]);
    if (st) {
        skv_st_close(s);
        return st;
    }
    *out = s;
    return SKV_OK;
}

skv_status skv_st_parse_buffer(const void *buf, size_t len, const char *name, skv_st_set **out) {
    *out = NULL;
    skv_st_set *s = calloc(1, sizeof *s);
    if (s && (s->files = calloc(1, sizeof *s->files))) {
        s->n_files = 1; /* map stays NULL: the caller owns buf */
        s->files[0].path = strdup(name);
        s->files[0].size = len;
    }
    if (!s || !s->files || !s->files[0].path) {
        skv_st_close(s);
        return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    }
    skv_status st = parse_image(s, &s->files[0], buf, len);
    if (st) {
        skv_st_close(s);
        return st;
    }
    *out = s;
    return SKV_OK;
}

skv_status skv_st_open_index(const char *dir, const char *index_name, const char *text, size_t len,
                             skv_st_set **out) {
    *out = NULL;
    skv_st_set *s = calloc(1, sizeof *s);
    if (!s) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    char index[4096];
    skv_path_join(index, sizeof index, dir, index_name);
    skv_status st = open_index(s, dir, index, text, len);
    if (st) {
        skv_st_close(s);
        return st;
    }
    *out = s;
    return SKV_OK;
}

/* Whether any of n 16-bit floats at p has its exponent all ones (NaN or Inf): exp_mask is 0x7f80
 * for bf16, 0x7c00 for f16. Loads through memcpy (the format does not promise aligned tensors;
 * a fuzzer found a typed load of a misaligned one) and a branch-free OR, both of which vectorise. */
static int any_nonfinite16(const uint8_t *p, int64_t n, uint16_t exp_mask) {
    unsigned bad = 0;
    for (int64_t i = 0; i < n; i++) {
        uint16_t v;
        memcpy(&v, p + 2 * i, 2);
        bad |= (v & exp_mask) == exp_mask;
    }
    return bad != 0;
}

static int any_nonfinite32(const uint8_t *p, int64_t n) {
    unsigned bad = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t v;
        memcpy(&v, p + 4 * i, 4);
        bad |= (v & 0x7f800000u) == 0x7f800000u;
    }
    return bad != 0;
}

static int any_nonfinite(const skv_st_tensor *t, int64_t from, int64_t n) {
    const uint8_t *p = (const uint8_t *)t->data + from * (int64_t)skv_dtype_size(t->dtype);
    if (t->dtype == SKV_DTYPE_F32) return any_nonfinite32(p, n);
    return any_nonfinite16(p, n, t->dtype == SKV_DTYPE_BF16 ? 0x7f80 : 0x7c00);
}

skv_status skv_st_check_finite(const skv_st_set *s) {
    for (int64_t i = 0; i < s->n_tensors; i++) {
        const skv_st_tensor *t = &s->tensors[i];
        const int64_t block = 1 << 16;
        for (int64_t b = 0; b < t->n_elem; b += block) {
            const int64_t n = SKV_MIN(block, t->n_elem - b);
            if (!any_nonfinite(t, b, n)) continue;
            int64_t at = b; /* the first one, for the message */
            while (at + 1 < b + n && !any_nonfinite(t, at, 1)) at++;
            return skv_set_error(SKV_ERR_FORMAT,
                                 "%s: tensor \"%s\" holds a non-finite value (NaN or Inf) at element %lld",
                                 t->file, t->name, (long long)at);
        }
    }
    return SKV_OK;
}

const skv_st_tensor *skv_st_find(const skv_st_set *s, const char *name) {
    /* Linear scan: a few hundred tensors, looked up once each at load time. */
    for (int64_t i = 0; i < s->n_tensors; i++)
        if (!strcmp(s->tensors[i].name, name)) return &s->tensors[i];
    return NULL;
}

int64_t skv_st_n_tensors(const skv_st_set *s) { return s->n_tensors; }
const skv_st_tensor *skv_st_get(const skv_st_set *s, int64_t i) { return &s->tensors[i]; }
int64_t skv_st_bytes(const skv_st_set *s) { return s->bytes; }
