/*
 * quant.h — KIVI-style block quantization (keys per channel, values per token in groups).
 */
#ifndef SKV_KV_QUANT_H
#define SKV_KV_QUANT_H

#include "kv/cache.h"

/* Bytes of one quantized block (f = SKV_KV_Q8 or SKV_KV_Q4). */
size_t skv_quant_block_bytes(skv_kv_format f, int32_t hd, int is_v);
/* rows: (SKV_KV_BLOCK, hd) f32 -> dst (skv_quant_block_bytes). */
void skv_quant_block(skv_kv_format f, int32_t hd, int is_v, const float *rows, void *dst);
/* src -> rows (n_rows, hd) f32. */
void skv_dequant_block(skv_kv_format f, int32_t hd, int is_v, const void *src, float *rows,
                       int n_rows);

/* One value row of a quantized V block as a slow store reads it: three segments (scales,
 * minima, codes) of row r at off0[i] + r * stride[i], len[i] bytes each, concatenated (the CPU
 * decode puts the rows read back at these offsets of a block and reads them with kv/kvattn.h). */
void skv_quant_vrow_layout(skv_kv_format f, int32_t hd, size_t off0[3], size_t stride[3], size_t len[3]);

#endif
