/*
 * frame.c — SCD's wire frames and payload encodings (layout in frame.h).
 */
#include "net/frame.h"
#include "kv/quant.h"

#include <lzma.h>
#include <math.h>

static const char *g_types[SKV_FT_COUNT] = {"?", "HELLO", "IDS", "LAYER", "END", "RESULT"};
static const char *g_encs[SKV_ENC_COUNT] = {"bytes", "i32", "f32", "bf16", "int8", "kivi4"};

const char *skv_frame_type_name(int t) { return t > 0 && t < SKV_FT_COUNT ? g_types[t] : "?"; }
const char *skv_wire_enc_name(int e) { return e >= 0 && e < SKV_ENC_COUNT ? g_encs[e] : "?"; }
int skv_wire_enc_parse(const char *name) {
    for (int e = 0; e < SKV_ENC_COUNT; e++)
        if (name && !strcmp(name, g_encs[e])) return e;
    return -1;
}

static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }
static void wr32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void wr16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8); }
static void wr64(uint8_t *p, uint64_t v) { wr32(p, (uint32_t)v), wr32(p + 4, (uint32_t)(v >> 32)); }

skv_status skv_wire_payload_bytes(int enc, int part, uint32_t rows, uint32_t cols, uint32_t group, uint64_t *bytes) {
    *bytes = 0;
    if (rows > SKV_FRAME_MAX_ROWS || cols > SKV_FRAME_MAX_COLS)
        return skv_set_error(SKV_ERR_FORMAT, "frame: %u x %u values exceed the limits (%u rows, %u columns)", rows, cols,
                             SKV_FRAME_MAX_ROWS, SKV_FRAME_MAX_COLS);
    const uint64_t n = (uint64_t)rows * cols; /* < 2^44: no overflow below */
    switch (enc) {
    case SKV_ENC_BYTES:
        if (cols != 1) return skv_set_error(SKV_ERR_FORMAT, "frame: a bytes payload has cols %u (must be 1)", cols);
        *bytes = rows;
        break;
    case SKV_ENC_I32:
    case SKV_ENC_F32: *bytes = 4 * n; break;
    case SKV_ENC_BF16: *bytes = 2 * n; break;
    case SKV_ENC_I8ROW: *bytes = (uint64_t)rows * (4 + (uint64_t)cols); break;
    case SKV_ENC_KIVI4:
        if (part != SKV_PART_K && part != SKV_PART_V)
            return skv_set_error(SKV_ERR_FORMAT, "frame: kivi4 payload of part %d (only K or V rows)", part);
        if (group == 0 || group % 32 || group > 4096 || cols % group)
            return skv_set_error(SKV_ERR_FORMAT, "frame: kivi4 group %u (head_dim: a multiple of 32 dividing cols %u)",
                                 group, cols);
        *bytes = (uint64_t)(cols / group) * ((rows + 31) / 32) *
                 skv_quant_block_bytes(SKV_KV_Q4, (int32_t)group, part == SKV_PART_V);
        break;
    default: return skv_set_error(SKV_ERR_FORMAT, "frame: unknown encoding %d", enc);
    }
    if (enc != SKV_ENC_KIVI4 && group != 0) return skv_set_error(SKV_ERR_FORMAT, "frame: group %u with encoding %s", group, g_encs[enc]);
    return SKV_OK;
}

/* KIVI4 block (h, b) of x (rows, cols) gathered into blk (32, group), the last row repeated. */
static void kivi_gather(const float *x, uint32_t rows, uint32_t cols, uint32_t group, uint32_t h, uint32_t b, float *blk) {
    for (uint32_t r = 0; r < 32; r++) {
        const uint32_t src = SKV_MIN(b * 32 + r, rows - 1);
        memcpy(blk + (size_t)r * group, x + (size_t)src * cols + (size_t)h * group, sizeof(float) * group);
    }
}

skv_status skv_wire_pack(int enc, int part, uint32_t rows, uint32_t cols, uint32_t group, const float *x, uint8_t *dst) {
    uint64_t bytes;
    skv_status st = skv_wire_payload_bytes(enc, part, rows, cols, group, &bytes);
    if (st) return st;
    const uint64_t n = (uint64_t)rows * cols;
    if (enc == SKV_ENC_F32 || enc == SKV_ENC_BYTES || enc == SKV_ENC_I32) {
        memcpy(dst, x, bytes);
    } else if (enc == SKV_ENC_BF16) {
        for (uint64_t i = 0; i < n; i++) wr16(dst + 2 * i, skv_f32_to_bf16(x[i]));
    } else if (enc == SKV_ENC_I8ROW) {
        for (uint32_t r = 0; r < rows; r++) {
            const float *row = x + (size_t)r * cols;
            float mx = 0;
            for (uint32_t j = 0; j < cols; j++) mx = fmaxf(mx, fabsf(row[j]));
            const float scale = mx > 0 ? mx / 127.0f : 1.0f;
            uint8_t *d = dst + (size_t)r * (4 + cols);
            memcpy(d, &scale, 4);
            for (uint32_t j = 0; j < cols; j++) {
                float q = roundf(row[j] / scale);
                q = q > 127 ? 127 : q < -127 ? -127 : q;
                d[4 + j] = (uint8_t)(int8_t)q;
            }
        }
    } else { /* KIVI4 */
        const size_t bb = skv_quant_block_bytes(SKV_KV_Q4, (int32_t)group, part == SKV_PART_V);
        float *blk = malloc(sizeof(float) * 32 * group);
        if (!blk) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
        uint8_t *d = dst, *al = malloc(bb);
        if (!al) {
            free(blk);
            return skv_set_error(SKV_ERR_NOMEM, "out of memory");
        }
        for (uint32_t h = 0; h < cols / group; h++)
            for (uint32_t b = 0; b * 32 < rows; b++, d += bb) {
                kivi_gather(x, rows, cols, group, h, b, blk);
                skv_quant_block(SKV_KV_Q4, (int32_t)group, part == SKV_PART_V, blk, al);
                memcpy(d, al, bb);
            }
        free(blk), free(al);
    }
    return SKV_OK;
}

skv_status skv_wire_bf16_check(const uint8_t *src, uint32_t rows, uint32_t cols) {
    const uint64_t n = (uint64_t)rows * cols;
    uint64_t bad = n;
    for (uint64_t i = 0; i < n && bad == n; i += 4096) { /* blocks without a branch inside */
        const uint64_t e = SKV_MIN(n, i + 4096);
        unsigned any = 0;
        for (uint64_t k = i; k < e; k++) any |= (rd16(src + 2 * k) & 0x7F80u) == 0x7F80u;
        if (any)
            for (uint64_t k = i; k < e && bad == n; k++)
                if ((rd16(src + 2 * k) & 0x7F80u) == 0x7F80u) bad = k;
    }
    if (bad < n)
        return skv_set_error(SKV_ERR_FORMAT, "frame: value at row %llu, column %llu is not finite",
                             (unsigned long long)(bad / cols), (unsigned long long)(bad % cols));
    return SKV_OK;
}

skv_status skv_wire_unpack(int enc, int part, uint32_t rows, uint32_t cols, uint32_t group, const uint8_t *src, float *x) {
    uint64_t bytes;
    skv_status st = skv_wire_payload_bytes(enc, part, rows, cols, group, &bytes);
    if (st) return st;
    if (enc == SKV_ENC_BYTES || enc == SKV_ENC_I32)
        return skv_set_error(SKV_ERR_FORMAT, "frame: %s payload is not floats", g_encs[enc]);
    const uint64_t n = (uint64_t)rows * cols;
    if (enc == SKV_ENC_F32) memcpy(x, src, bytes);
    else if (enc == SKV_ENC_BF16)
        for (uint64_t i = 0; i < n; i++) x[i] = skv_bf16_to_f32(rd16(src + 2 * i));
    else if (enc == SKV_ENC_I8ROW)
        for (uint32_t r = 0; r < rows; r++) {
            const uint8_t *s = src + (size_t)r * (4 + cols);
            float scale;
            memcpy(&scale, s, 4);
            if (!isfinite(scale) || scale < 0)
                return skv_set_error(SKV_ERR_FORMAT, "frame: int8 row %u has scale %g", r, (double)scale);
            for (uint32_t j = 0; j < cols; j++) x[(size_t)r * cols + j] = scale * (float)(int8_t)s[4 + j];
        }
    else { /* KIVI4 */
        const size_t bb = skv_quant_block_bytes(SKV_KV_Q4, (int32_t)group, part == SKV_PART_V);
        float *blk = malloc(sizeof(float) * 32 * group), *al = malloc(bb); /* al: the block aligned */
        if (!blk || !al) {
            free(blk), free(al);
            return skv_set_error(SKV_ERR_NOMEM, "out of memory");
        }
        const uint8_t *s = src;
        for (uint32_t h = 0; h < cols / group; h++)
            for (uint32_t b = 0; b * 32 < rows; b++, s += bb) {
                const uint32_t nr = SKV_MIN(32u, rows - b * 32);
                memcpy(al, s, bb);
                skv_dequant_block(SKV_KV_Q4, (int32_t)group, part == SKV_PART_V, al, blk, (int)nr);
                for (uint32_t r = 0; r < nr; r++)
                    memcpy(x + (size_t)(b * 32 + r) * cols + (size_t)h * group, blk + (size_t)r * group,
                           sizeof(float) * group);
            }
        free(blk), free(al);
    }
    for (uint64_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return skv_set_error(SKV_ERR_FORMAT, "frame: value at row %llu, column %llu is not finite",
                                 (unsigned long long)(i / cols), (unsigned long long)(i % cols));
    return SKV_OK;
}

skv_status skv_wire_round(int enc, int part, uint32_t rows, uint32_t cols, uint32_t group, float *x) {
    uint64_t bytes;
    skv_status st = skv_wire_payload_bytes(enc, part, rows, cols, group, &bytes);
    if (st) return st;
    uint8_t *buf = malloc(bytes ? bytes : 1);
    if (!buf) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    if (!(st = skv_wire_pack(enc, part, rows, cols, group, x, buf))) st = skv_wire_unpack(enc, part, rows, cols, group, buf, x);
    free(buf);
    return st;
}

skv_status skv_frame_build(const skv_frame *f, const void *payload, uint8_t **out, size_t *len) {
    *out = NULL;
    uint64_t want;
    skv_status st = skv_wire_payload_bytes(f->enc, f->part, f->rows, f->cols, f->group, &want);
    if (st) return st;
    if (want != f->len) return skv_set_error(SKV_ERR_ARG, "frame: %llu payload bytes for %llu", (unsigned long long)f->len, (unsigned long long)want);
    const size_t n = SKV_FRAME_HDR + (size_t)f->len + SKV_FRAME_TAIL;
    uint8_t *b = malloc(n);
    if (!b) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    wr32(b, SKV_FRAME_MAGIC), wr16(b + 4, SKV_FRAME_VERSION), b[6] = f->type, b[7] = f->enc;
    wr32(b + 8, (uint32_t)f->layer), wr16(b + 12, f->part), wr16(b + 14, f->group);
    wr32(b + 16, f->rows), wr32(b + 20, f->cols), wr64(b + 24, f->len);
    if (f->len) memcpy(b + SKV_FRAME_HDR, payload, (size_t)f->len);
    wr64(b + SKV_FRAME_HDR + f->len, lzma_crc64(b, SKV_FRAME_HDR + (size_t)f->len, 0));
    *out = b;
    *len = n;
    return SKV_OK;
}

skv_status skv_frame_parse_header(const uint8_t *h, uint64_t max_payload, skv_frame *f) {
    memset(f, 0, sizeof *f);
    if (rd32(h) != SKV_FRAME_MAGIC) return skv_set_error(SKV_ERR_FORMAT, "frame: bad magic 0x%08x (not an SCD frame)", rd32(h));
    if (rd16(h + 4) != SKV_FRAME_VERSION)
        return skv_set_error(SKV_ERR_FORMAT, "frame: version %u (this build speaks %d)", rd16(h + 4), SKV_FRAME_VERSION);
    f->type = h[6], f->enc = h[7];
    f->layer = (int32_t)rd32(h + 8), f->part = rd16(h + 12), f->group = rd16(h + 14);
    f->rows = rd32(h + 16), f->cols = rd32(h + 20), f->len = rd64(h + 24);
    if (f->type < 1 || f->type >= SKV_FT_COUNT) return skv_set_error(SKV_ERR_FORMAT, "frame: unknown type %u", f->type);
    if (f->enc >= SKV_ENC_COUNT) return skv_set_error(SKV_ERR_FORMAT, "frame: unknown encoding %u", f->enc);
    if (f->part >= SKV_PART_COUNT) return skv_set_error(SKV_ERR_FORMAT, "frame: unknown part %u", f->part);
    if (f->layer < -1 || f->layer > 65535) return skv_set_error(SKV_ERR_FORMAT, "frame: layer %d", f->layer);
    uint64_t want;
    skv_status st = skv_wire_payload_bytes(f->enc, f->part, f->rows, f->cols, f->group, &want);
    if (st) return st;
    if (f->len != want)
        return skv_set_error(SKV_ERR_FORMAT, "frame: length %llu, but %s %u x %u takes %llu bytes", (unsigned long long)f->len,
                             g_encs[f->enc], f->rows, f->cols, (unsigned long long)want);
    if (f->len > max_payload)
        return skv_set_error(SKV_ERR_FORMAT, "frame: %llu payload bytes exceed the limit of %llu (oversized)",
                             (unsigned long long)f->len, (unsigned long long)max_payload);
    return SKV_OK;
}

skv_status skv_frame_check(const uint8_t *buf, size_t len, uint64_t max_payload, skv_frame *f) {
    if (len < SKV_FRAME_HDR + SKV_FRAME_TAIL)
        return skv_set_error(SKV_ERR_FORMAT, "frame: %zu bytes is shorter than a header and checksum (short frame)", len);
    skv_status st = skv_frame_parse_header(buf, max_payload, f);
    if (st) return st;
    if ((uint64_t)len - SKV_FRAME_HDR - SKV_FRAME_TAIL != f->len)
        return skv_set_error(SKV_ERR_FORMAT, "frame: %zu bytes for a %llu-byte payload (%s frame)", len,
                             (unsigned long long)f->len, (uint64_t)len - SKV_FRAME_HDR - SKV_FRAME_TAIL < f->len ? "short" : "long");
    if (lzma_crc64(buf, len - SKV_FRAME_TAIL, 0) != rd64(buf + len - SKV_FRAME_TAIL))
        return skv_set_error(SKV_ERR_FORMAT, "frame: checksum mismatch (corrupt %s frame, layer %d)", skv_frame_type_name(f->type),
                             f->layer);
    f->payload = buf + SKV_FRAME_HDR;
    return SKV_OK;
}
