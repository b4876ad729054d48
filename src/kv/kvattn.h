/*
 * kvattn.h — decode attention over one cache block read in its stored format: f32, bf16 and
 * f16 rows, and KIVI's int8/int4 blocks (kv/quant.c layout). No f32 copy of the block is made:
 * 16-bit rows widen in registers, and the quantisation parameters are folded in —
 *
 *   keys (per channel c: k[t][c] = code * s[c] + m[c]):
 *       q . k[t] = sum_c (q[c] s[c]) code[t][c] + sum_c q[c] m[c]
 *     so each query is scaled by the block's scales once and the minima give one constant;
 *   values (per token t and group g of 32 channels: v[t][c] = code * s[t][g] + m[t][g]):
 *       sum_t w[t] v[t][c] = sum_t (w[t] s[t][g]) code[t][c] + sum_t w[t] m[t][g]
 *     so each row's weight is scaled by its group scale and the minima add one sum per group.
 *
 * f32, bf16 and f16 rows are summed in the same order as skv_dot / skv_axpy over the rows
 * widened to f32 (the results are those of the dequantise-then-f32 path bit for bit); int8/int4
 * results differ from the dequantised rows' by rounding only (tests/test_kvattn.c states the
 * bound), except that where AVX-512 VNNI is targeted the int8/int4 scores take the scaled query
 * q_c * scale_c quantised to int16 per block and head (steps of max_c |q_c scale_c| / L, L =
 * skv_kvattn_query_levels(hd)), so that each row's dot product is exact integer arithmetic
 * (vpdpwssd over codes widened to int16); that adds at most (step / 2) * sum_c code_tc to
 * q . k (relative to the query's largest term, 2^-16: far below the codes' own rounding).
 * A head's result never depends on how many heads share the call. AVX-512 (VNNI, BW) for the
 * quantised formats, AVX2 + FMA + F16C for the rest (and for all where AVX-512 is not
 * targeted), scalar otherwise; chosen when the library is built (-march).
 */
#ifndef SKV_KV_KVATTN_H
#define SKV_KV_KVATTN_H

#include "kv/cache.h"

/* Largest head_dim the quantised kernels take (their per-block query copies live on the stack). */
#define SKV_KVATTN_MAX_HD 512

/* s[j * lds + t] = scale * (q_j . K_t) for the first n (<= SKV_KV_BLOCK) rows of a K block
 * stored as fmt, and query heads j < nh; q: nh rows of hd floats, contiguous. Rows with
 * cls[t] != SKV_READ_OWN (kv/plan.h) are not read and score -inf (cls may be NULL: all read). */
void skv_kvattn_scores(skv_kv_format fmt, int32_t hd, const void *blk, int32_t n, const float *q, int32_t nh,
                       float scale, const uint8_t *cls, float *s, int64_t lds);

/* o_j += sum_t w_j[t] V_t over the first n (<= SKV_KV_BLOCK) rows of a V block stored as fmt,
 * for heads j < nh (o: nh rows of hd floats, contiguous), where w_j[t] = p[j * ldp + t], times
 * mul[j] when mul is not NULL. Rows with cls[t] == SKV_READ_SKIP (kv/plan.h) are left out (cls
 * may be NULL: none). */
void skv_kvattn_weigh(skv_kv_format fmt, int32_t hd, const void *blk, int32_t n, const float *p, int64_t ldp,
                      const float *mul, const uint8_t *cls, int32_t nh, float *o);

/* L of the int16 query above for head_dim hd (the largest |q| code: no int32 sum of
 * L * 255 * hd overflows), or 0 where the scores use f32 queries (no AVX-512 VNNI). */
int32_t skv_kvattn_query_levels(int32_t hd);

/* Ask for a block's bytes to be brought into the cache ahead of its use (blocks are scattered
 * over the pools, so the hardware prefetcher does not see the next one coming). */
void skv_kvattn_prefetch(skv_kv_format fmt, int32_t hd, const void *blk, int is_v);

#endif
