/*
 * quant.c — KIVI-style quantization of one full block of SKV_KV_BLOCK tokens.
 *
 * Keys per channel: for each of head_dim channels, scale and minimum over the block's tokens.
 * Values per token: for each token and each group of SKV_KV_VGROUP channels, scale and minimum.
 * Codes are unsigned (0..255 or 0..15, two per byte low nibble first); x ~ q * scale + min.
 *
 * Block layout (floats first, then codes):
 *   K: scale[hd], min[hd], codes[B][hd * bits / 8]
 *   V: scale[B][hd / VG], min[B][hd / VG], codes[B][hd * bits / 8]
 */
#include "kv/quant.h"

#include <math.h>

static inline int bits_of(skv_kv_format f) { return f == SKV_KV_Q8 ? 8 : 4; }

size_t skv_quant_block_bytes(skv_kv_format f, int32_t hd, int is_v) {
    const int bits = bits_of(f);
    size_t codes = (size_t)SKV_KV_BLOCK * hd * bits / 8;
    size_t params = is_v ? 2 * (size_t)SKV_KV_BLOCK * (hd / SKV_KV_VGROUP) : 2 * (size_t)hd;
    return params * sizeof(float) + codes;
}

static inline void put_code(uint8_t *codes, int bits, int64_t i, int q) {
    if (bits == 8) {
        codes[i] = (uint8_t)q;
    } else if (i & 1) {
        codes[i >> 1] = (uint8_t)((codes[i >> 1] & 0x0f) | (q << 4));
    } else {
        codes[i >> 1] = (uint8_t)((codes[i >> 1] & 0xf0) | q);
    }
}

static inline int get_code(const uint8_t *codes, int bits, int64_t i) {
    if (bits == 8) return codes[i];
    return (i & 1) ? codes[i >> 1] >> 4 : codes[i >> 1] & 0x0f;
}

/* Quantize the n values x[0], x[stride], ... with one scale/min pair. */
static void quant_group(const float *x, int64_t stride, int n, int bits, float *scale, float *mn,
                        uint8_t *codes, int64_t code0, int64_t code_stride) {
    float lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < n; i++) {
        float v = x[i * stride];
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    const int qmax = (1 << bits) - 1;
    float s = (hi - lo) / (float)qmax;
    *scale = s;
    *mn = lo;
    float inv = s > 0 ? 1.0f / s : 0.0f;
    for (int i = 0; i < n; i++) {
        int q = (int)lrintf((x[i * stride] - lo) * inv);
        q = q < 0 ? 0 : q > qmax ? qmax : q;
        put_code(codes, bits, code0 + i * code_stride, q);
    }
}

void skv_quant_block(skv_kv_format f, int32_t hd, int is_v, const float *rows, void *dst) {
    const int bits = bits_of(f), B = SKV_KV_BLOCK;
    float *p = dst;
    if (!is_v) {
        float *scale = p, *mn = p + hd;
        uint8_t *codes = (uint8_t *)(p + 2 * hd);
        for (int32_t ch = 0; ch < hd; ch++) /* channel ch of every token */
            quant_group(rows + ch, hd, B, bits, &scale[ch], &mn[ch], codes, ch, hd);
    } else {
        const int32_t ng = hd / SKV_KV_VGROUP;
        float *scale = p, *mn = p + B * ng;
        uint8_t *codes = (uint8_t *)(p + 2 * B * ng);
        for (int t = 0; t < B; t++)
            for (int32_t gq = 0; gq < ng; gq++)
                quant_group(rows + (int64_t)t * hd + gq * SKV_KV_VGROUP, 1, SKV_KV_VGROUP, bits,
                            &scale[t * ng + gq], &mn[t * ng + gq], codes,
                            (int64_t)t * hd + gq * SKV_KV_VGROUP, 1);
    }
}

void skv_dequant_block(skv_kv_format f, int32_t hd, int is_v, const void *src, float *rows,
                       int n_rows) {
    const int bits = bits_of(f), B = SKV_KV_BLOCK;
    const float *p = src;
    if (!is_v) {
        const float *scale = p, *mn = p + hd;
        const uint8_t *codes = (const uint8_t *)(p + 2 * hd);
        for (int t = 0; t < n_rows; t++)
            for (int32_t ch = 0; ch < hd; ch++)
                rows[(int64_t)t * hd + ch] =
                    (float)get_code(codes, bits, (int64_t)t * hd + ch) * scale[ch] + mn[ch];
    } else {
        const int32_t ng = hd / SKV_KV_VGROUP;
        const float *scale = p, *mn = p + B * ng;
        const uint8_t *codes = (const uint8_t *)(p + 2 * B * ng);
        for (int t = 0; t < n_rows; t++)
            for (int32_t ch = 0; ch < hd; ch++) {
                int gq = t * ng + ch / SKV_KV_VGROUP;
                rows[(int64_t)t * hd + ch] =
                    (float)get_code(codes, bits, (int64_t)t * hd + ch) * scale[gq] + mn[gq];
            }
    }
}

void skv_quant_vrow_layout(skv_kv_format f, int32_t hd, size_t off0[3], size_t stride[3], size_t len[3]) {
    const int bits = bits_of(f), B = SKV_KV_BLOCK;
    const size_t ng = (size_t)(hd / SKV_KV_VGROUP);
    off0[0] = 0, stride[0] = len[0] = ng * sizeof(float);                                  /* scales */
    off0[1] = (size_t)B * ng * sizeof(float), stride[1] = len[1] = ng * sizeof(float);       /* minima */
    off0[2] = 2 * (size_t)B * ng * sizeof(float), stride[2] = len[2] = (size_t)hd * bits / 8; /* codes */
}
