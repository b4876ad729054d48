/*
 * gpu_qweights.cu — weights on the GPU in their stored format (see gpu_qweights.cuh).
 *
 * Every format is read in chunks of 32 weights of a row (one block of Q4_0/Q4_1/Q5_0/Q8_0; one
 * sub-block of Q4_K/Q5_K, whose scale and minimum are 6-bit codes; two 16-weight groups of Q6_K),
 * dequantised by deq32<T> into 32 floats with the CPU's operations in the CPU's order
 * (ops/wfmt.c; __fmul_rn etc. so that nvcc does not contract them into FMAs): the tile path gives
 * the CPU's dequantised values rounded to bf16.
 *
 * Decode GEMV (k_qgemv): one warp per output row, each lane dequantising 8 weights of a chunk at
 * a time (deq8<T>: deq32's operations on a quarter of the chunk; $SKV_QGEMV=1 selects the first
 * version, a lane per whole chunk), activations read as bf16 (the forward pass's matrix input),
 * f32 accumulation; each row's part (and type) of a stack is found once per warp. Prefill: rows dequantised into a bf16 tile (k_qdeq), then
 * cuBLAS on the tile, tile by tile.
 */
#include "backend/cuda/gpu_qweights.cuh"
#include "backend/cuda/gpu_device.cuh"

enum { T_F32 = 0, T_F16, T_BF16, T_Q4_0, T_Q4_1, T_Q5_0, T_Q8_0, T_Q4_K, T_Q5_K, T_Q6_K, T_COUNT };

/* weights per block and bytes per block, as base/dtype.c */
static const int BLOCK[T_COUNT] = {1, 1, 1, 32, 32, 32, 32, 256, 256, 256};
static const int BBYTES[T_COUNT] = {4, 2, 2, 18, 20, 22, 34, 144, 176, 210};

static int64_t row_bytes(int t, int64_t cols) { return cols / BLOCK[t] * BBYTES[t]; }

__device__ __forceinline__ float ldh(const uint8_t *p) { /* an f16 at a 2-aligned address */
    return __half2float(__ushort_as_half(__ldg((const unsigned short *)p)));
}

/* NW 32-bit words from p, aligned to A bytes (16, 4 or 2) */
template <int NW, int A>
__device__ __forceinline__ void ldw(const uint8_t *p, uint32_t *w) {
    if (A >= 16) {
#pragma unroll
        for (int i = 0; i < NW / 4; i++) {
            const uint4 u = __ldg((const uint4 *)p + i);
            w[4 * i] = u.x, w[4 * i + 1] = u.y, w[4 * i + 2] = u.z, w[4 * i + 3] = u.w;
        }
    } else if (A >= 4) {
#pragma unroll
        for (int i = 0; i < NW; i++) w[i] = __ldg((const uint32_t *)p + i);
    } else {
        const unsigned short *s = (const unsigned short *)p;
#pragma unroll
        for (int i = 0; i < NW; i++) w[i] = (uint32_t)__ldg(s + 2 * i) | ((uint32_t)__ldg(s + 2 * i + 1) << 16);
    }
}

/* (float)(u - OFF) for 0 <= u < 2^23, exactly, without the quarter-rate integer conversion:
 * 2^23 + u as float bits, less 2^23 + OFF (both in [2^23, 2^24), where floats are the integers) */
template <int OFF>
__device__ __forceinline__ float qf(int u) {
    return __fsub_rn(__uint_as_float(0x4B000000u | (uint32_t)u), (float)(8388608 + OFF));
}

__device__ __forceinline__ int byte_of(const uint32_t *w, int b) { return (int)((w[b >> 2] >> (8 * (b & 3))) & 0xFF); }

/* the 6-bit scale and min of sub-block j of a Q4_K / Q5_K block (wfmt.c's scale_min_k4) */
__device__ __forceinline__ void scale_min_k4(int j, const uint32_t *s, int *sc, int *m) {
    if (j < 4) {
        *sc = byte_of(s, j) & 63, *m = byte_of(s, j + 4) & 63;
    } else {
        *sc = (byte_of(s, j + 4) & 0xF) | ((byte_of(s, j - 4) >> 6) << 4);
        *m = (byte_of(s, j + 4) >> 4) | ((byte_of(s, j) >> 6) << 4);
    }
}

/* v[0..32) = weights 32c .. 32c + 31 of a row in format T */
template <int T>
__device__ __forceinline__ void deq32(const uint8_t *row, int c, float *v) {
    if (T == T_F32) {
        const float4 *p = (const float4 *)(row + (int64_t)c * 128);
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const float4 f = __ldg(p + i);
            v[4 * i] = f.x, v[4 * i + 1] = f.y, v[4 * i + 2] = f.z, v[4 * i + 3] = f.w;
        }
    } else if (T == T_F16 || T == T_BF16) {
        const uint4 *p = (const uint4 *)(row + (int64_t)c * 64);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const uint4 u = __ldg(p + i);
            if (T == T_BF16) {
                bf16x8_to_f32(u, v + 8 * i);
            } else {
                const __half2 *h = (const __half2 *)&u;
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const float2 f = __half22float2(h[e]);
                    v[8 * i + 2 * e] = f.x, v[8 * i + 2 * e + 1] = f.y;
                }
            }
        }
    } else if (T == T_Q4_0) { /* d, qs[16]: x = d (q - 8) */
        const uint8_t *b = row + (int64_t)c * 18;
        const float d = ldh(b);
        uint32_t q[4];
        ldw<4, 2>(b + 2, q);
#pragma unroll
        for (int j = 0; j < 16; j++) {
            const int u = byte_of(q, j);
            v[j] = __fmul_rn(d, qf<8>(u & 0xF));
            v[j + 16] = __fmul_rn(d, qf<8>(u >> 4));
        }
    } else if (T == T_Q4_1) { /* d, m, qs[16]: x = d q + m */
        const uint8_t *b = row + (int64_t)c * 20;
        const float d = ldh(b), m = ldh(b + 2);
        uint32_t q[4];
        ldw<4, 4>(b + 4, q);
#pragma unroll
        for (int j = 0; j < 16; j++) {
            const int u = byte_of(q, j);
            v[j] = __fadd_rn(__fmul_rn(d, qf<0>(u & 0xF)), m);
            v[j + 16] = __fadd_rn(__fmul_rn(d, qf<0>(u >> 4)), m);
        }
    } else if (T == T_Q5_0) { /* d, qh[4], qs[16]: x = d (q - 16), bit 4 of weight j in bit j of qh */
        const uint8_t *b = row + (int64_t)c * 22;
        const float d = ldh(b);
        uint32_t qh, q[4];
        ldw<1, 2>(b + 2, &qh);
        ldw<4, 2>(b + 6, q);
#pragma unroll
        for (int j = 0; j < 16; j++) {
            const int u = byte_of(q, j);
            const int h0 = (qh >> j) & 1, h1 = (qh >> (j + 16)) & 1;
            v[j] = __fmul_rn(d, qf<16>((u & 0xF) | (h0 << 4)));
            v[j + 16] = __fmul_rn(d, qf<16>((u >> 4) | (h1 << 4)));
        }
    } else if (T == T_Q8_0) { /* d, qs[32] int8 */
        const uint8_t *b = row + (int64_t)c * 34;
        const float d = ldh(b);
        uint32_t q[8];
        ldw<8, 2>(b + 2, q);
#pragma unroll
        for (int j = 0; j < 32; j++) v[j] = __fmul_rn(d, qf<128>(byte_of(q, j) ^ 0x80)); /* int8 + 128 */
    } else if (T == T_Q4_K || T == T_Q5_K) {
        /* d, dmin, scales[12], (Q5_K: qh[32]), qs[128]: sub-block j of 8 takes the low (j even)
         * or high nibbles of qs[32 (j / 2) ..], Q5_K bit j of qh[l] above them */
        const int j = c & 7;
        const uint8_t *b = row + (int64_t)(c >> 3) * (T == T_Q4_K ? 144 : 176);
        const float d = ldh(b), dmin = ldh(b + 2);
        uint32_t s[3], q[8], h[8];
        ldw<3, 4>(b + 4, s);
        ldw<8, 16>(b + (T == T_Q4_K ? 16 : 48) + 32 * (j >> 1), q);
        if (T == T_Q5_K) ldw<8, 16>(b + 16, h);
        int sc, m;
        scale_min_k4(j, s, &sc, &m);
        const float d0 = __fmul_rn(d, (float)sc), n0 = __fmul_rn(dmin, (float)m);
        const int sh = (j & 1) * 4;
#pragma unroll
        for (int l = 0; l < 32; l++) {
            int u = (byte_of(q, l) >> sh) & 0xF;
            if (T == T_Q5_K) u += ((byte_of(h, l) >> j) & 1) << 4;
            v[l] = __fsub_rn(__fmul_rn(d0, qf<0>(u)), n0);
        }
    } else if (T == T_Q6_K) {
        /* ql[128], qh[64], scales[16] int8, d: chunk k of half h: ql[64h + 32 (k & 1) + l] (low
         * nibble for k < 2), bits 2k of qh[32h + l], scale 8h + 2k + l / 16; x = d sc (q - 32) */
        const int cb = c & 7, hh = cb >> 2, k = cb & 3;
        const uint8_t *b = row + (int64_t)(c >> 3) * 210;
        const float d = ldh(b + 208);
        uint32_t ql[8], qh[8], s[1];
        ldw<8, 2>(b + 64 * hh + 32 * (k & 1), ql);
        ldw<8, 2>(b + 128 + 32 * hh, qh);
        ldw<1, 2>(b + 192 + 8 * hh + 2 * k, s); /* the two scales (bytes 0 and 1) */
        const float ds0 = __fmul_rn(d, (float)(int8_t)byte_of(s, 0)), ds1 = __fmul_rn(d, (float)(int8_t)byte_of(s, 1));
        const int sh = k < 2 ? 0 : 4;
#pragma unroll
        for (int l = 0; l < 32; l++) {
            const int u = ((byte_of(ql, l) >> sh) & 0xF) | (((byte_of(qh, l) >> (2 * k)) & 3) << 4);
            v[l] = __fmul_rn(l < 16 ? ds0 : ds1, qf<32>(u));
        }
    }
}

/* v[0..8) = weights 32c + 8p .. 32c + 8p + 7 of a row in format T (p < 4): an eighth of the work
 * of deq32 per lane, the same operations on each weight (so the same values) */
template <int T>
__device__ __forceinline__ void deq8(const uint8_t *row, int c, int p, float *v) {
    if (T == T_F32) {
        const float4 *q = (const float4 *)(row + (int64_t)c * 128 + p * 32);
        const float4 a = __ldg(q), b = __ldg(q + 1);
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    } else if (T == T_F16 || T == T_BF16) {
        const uint4 u = __ldg((const uint4 *)(row + (int64_t)c * 64 + p * 16));
        if (T == T_BF16) {
            bf16x8_to_f32(u, v);
        } else {
            const __half2 *h = (const __half2 *)&u;
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float2 f = __half22float2(h[e]);
                v[2 * e] = f.x, v[2 * e + 1] = f.y;
            }
        }
    } else if (T == T_Q4_0 || T == T_Q4_1 || T == T_Q5_0) {
        /* weights 8p.. : bytes qs[8 (p & 1) ..], low nibbles for p < 2, high for p >= 2 */
        const int BB = T == T_Q4_0 ? 18 : T == T_Q4_1 ? 20 : 22, QS = T == T_Q4_0 ? 2 : T == T_Q4_1 ? 4 : 6;
        const uint8_t *b = row + (int64_t)c * BB;
        const float d = ldh(b);
        uint32_t q[2];
        if (T == T_Q4_1) ldw<2, 4>(b + QS + 8 * (p & 1), q);
        else ldw<2, 2>(b + QS + 8 * (p & 1), q);
        const int sh = (p >> 1) * 4;
        if (T == T_Q4_0) {
#pragma unroll
            for (int i = 0; i < 8; i++) v[i] = __fmul_rn(d, qf<8>((byte_of(q, i) >> sh) & 0xF));
        } else if (T == T_Q4_1) {
            const float m = ldh(b + 2);
#pragma unroll
            for (int i = 0; i < 8; i++) v[i] = __fadd_rn(__fmul_rn(d, qf<0>((byte_of(q, i) >> sh) & 0xF)), m);
        } else {
            uint32_t qh;
            ldw<1, 2>(b + 2, &qh);
#pragma unroll
            for (int i = 0; i < 8; i++)
                v[i] = __fmul_rn(d, qf<16>(((byte_of(q, i) >> sh) & 0xF) | (((qh >> (8 * p + i)) & 1) << 4)));
        }
    } else if (T == T_Q8_0) {
        const uint8_t *b = row + (int64_t)c * 34;
        const float d = ldh(b);
        uint32_t q[2];
        ldw<2, 2>(b + 2 + 8 * p, q);
#pragma unroll
        for (int i = 0; i < 8; i++) v[i] = __fmul_rn(d, qf<128>(byte_of(q, i) ^ 0x80));
    } else if (T == T_Q4_K || T == T_Q5_K) {
        const int j = c & 7;
        const uint8_t *b = row + (int64_t)(c >> 3) * (T == T_Q4_K ? 144 : 176);
        const float d = ldh(b), dmin = ldh(b + 2);
        uint32_t s[3], q[2], h[2];
        ldw<3, 4>(b + 4, s);
        ldw<2, 4>(b + (T == T_Q4_K ? 16 : 48) + 32 * (j >> 1) + 8 * p, q);
        if (T == T_Q5_K) ldw<2, 4>(b + 16 + 8 * p, h);
        int sc, m;
        scale_min_k4(j, s, &sc, &m);
        const float d0 = __fmul_rn(d, (float)sc), n0 = __fmul_rn(dmin, (float)m);
        const int sh = (j & 1) * 4;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int u = (byte_of(q, i) >> sh) & 0xF;
            if (T == T_Q5_K) u += ((byte_of(h, i) >> j) & 1) << 4;
            v[i] = __fsub_rn(__fmul_rn(d0, qf<0>(u)), n0);
        }
    } else if (T == T_Q6_K) {
        const int cb = c & 7, hh = cb >> 2, k = cb & 3;
        const uint8_t *b = row + (int64_t)(c >> 3) * 210;
        const float d = ldh(b + 208);
        uint32_t ql[2], qh[2], s[1];
        ldw<2, 2>(b + 64 * hh + 32 * (k & 1) + 8 * p, ql);
        ldw<2, 2>(b + 128 + 32 * hh + 8 * p, qh);
        ldw<1, 2>(b + 192 + 8 * hh + 2 * k, s);
        const float ds = __fmul_rn(d, (float)(int8_t)byte_of(s, p >> 1)); /* weights 8p.. : scale l / 16 = p / 2 */
        const int sh = k < 2 ? 0 : 4;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const int u = ((byte_of(ql, i) >> sh) & 0xF) | (((byte_of(qh, i) >> (2 * k)) & 3) << 4);
            v[i] = __fmul_rn(ds, qf<32>(u));
        }
    }
}

/* the part of a stacked matrix holding row r: its row's bytes and type */
__device__ __forceinline__ const uint8_t *row_of(const gqmat &W, int r, int *t) {
    const uint8_t *base = W.w[0];
    int64_t rb = W.rb[0];
    int r0 = 0, ty = W.type[0];
#pragma unroll
    for (int i = 1; i < GQ_PARTS; i++)
        if (i < W.np && r >= W.r0[i]) base = W.w[i], rb = W.rb[i], ty = W.type[i], r0 = W.r0[i];
    *t = ty;
    return base + (int64_t)(r - r0) * rb;
}

__device__ __forceinline__ void deq_any(int t, const uint8_t *row, int c, float *v) {
    switch (t) {
    case T_F32: deq32<T_F32>(row, c, v); break;
    case T_F16: deq32<T_F16>(row, c, v); break;
    case T_BF16: deq32<T_BF16>(row, c, v); break;
    case T_Q4_0: deq32<T_Q4_0>(row, c, v); break;
    case T_Q4_1: deq32<T_Q4_1>(row, c, v); break;
    case T_Q5_0: deq32<T_Q5_0>(row, c, v); break;
    case T_Q8_0: deq32<T_Q8_0>(row, c, v); break;
    case T_Q4_K: deq32<T_Q4_K>(row, c, v); break;
    case T_Q5_K: deq32<T_Q5_K>(row, c, v); break;
    default: deq32<T_Q6_K>(row, c, v); break;
    }
}

/* acc[b] += row . x[b] over the lane's chunks (c = lane, lane + 32, ...) */
template <int T, int B>
__device__ __forceinline__ void row_dot(const uint8_t *row, int nch, const bf16 *__restrict__ x, int cols, int lane,
                                        float *acc) {
#pragma unroll 2
    for (int c = lane; c < nch; c += 32) {
        float v[32];
        deq32<T>(row, c, v);
#pragma unroll
        for (int b = 0; b < B; b++) {
            const uint4 *xp = (const uint4 *)(x + (int64_t)b * cols + c * 32);
            float s = 0;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                float xf[8];
                bf16x8_to_f32(__ldg(xp + i), xf);
#pragma unroll
                for (int e = 0; e < 8; e++) s += v[8 * i + e] * xf[e];
            }
            acc[b] += s;
        }
    }
}

/* the same with the lanes in 8 groups of 4: a group per chunk (c = lane / 4, + 8, ...), a lane per
 * 8 of its weights (fewer registers, more rows and loads in flight than a lane per chunk) */
template <int T, int B>
__device__ __forceinline__ void row_dot8(const uint8_t *row, int nch, const bf16 *__restrict__ x, int cols, int lane,
                                         float *acc) {
    const int p = lane & 3;
#pragma unroll 4
    for (int c = lane >> 2; c < nch; c += 8) {
        float v[8];
        deq8<T>(row, c, p, v);
#pragma unroll
        for (int b = 0; b < B; b++) {
            float xf[8];
            bf16x8_to_f32(__ldg((const uint4 *)(x + (int64_t)b * cols + c * 32 + p * 8)), xf);
            float s = 0;
#pragma unroll
            for (int e = 0; e < 8; e++) s += v[e] * xf[e];
            acc[b] += s;
        }
    }
}

/* y[b, r] (+)= W[r, :] . x[b, :] + bias[r] for b < B; one warp per row (V8: row_dot8, else
 * row_dot) */
template <int B, bool V8>
__global__ void __launch_bounds__(256) k_qgemv(gqmat W, const bf16 *__restrict__ x, float *y, const float *bias,
                                               int rows, int accumulate) {
    const int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (row >= rows) return;
    int t;
    const uint8_t *wr = row_of(W, row, &t);
    const int nch = W.cols / 32;
    float acc[B];
#pragma unroll
    for (int b = 0; b < B; b++) acc[b] = 0;
#define RD(T_)                                                 \
    if (V8) row_dot8<T_, B>(wr, nch, x, W.cols, lane, acc);   \
    else row_dot<T_, B>(wr, nch, x, W.cols, lane, acc);
    switch (t) {
    case T_F32: RD(T_F32) break;
    case T_F16: RD(T_F16) break;
    case T_BF16: RD(T_BF16) break;
    case T_Q4_0: RD(T_Q4_0) break;
    case T_Q4_1: RD(T_Q4_1) break;
    case T_Q5_0: RD(T_Q5_0) break;
    case T_Q8_0: RD(T_Q8_0) break;
    case T_Q4_K: RD(T_Q4_K) break;
    case T_Q5_K: RD(T_Q5_K) break;
    default: RD(T_Q6_K) break;
    }
#undef RD
#pragma unroll
    for (int b = 0; b < B; b++) {
        float v = warp_sum(acc[b]);
        if (lane == 0) {
            if (bias) v += bias[row];
            float *o = y + (int64_t)b * rows + row;
            *o = accumulate ? *o + v : v;
        }
    }
}

/* out (nrows, cols) bf16 = rows r_begin .. r_begin + nrows - 1 of W; a thread per chunk */
__global__ void k_qdeq(gqmat W, int r_begin, int nrows, bf16 *out) {
    const int nch = W.cols / 32;
    const int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (idx >= (int64_t)nrows * nch) return;
    const int r = (int)(idx / nch), c = (int)(idx % nch);
    int t;
    const uint8_t *wr = row_of(W, r_begin + r, &t);
    float v[32];
    deq_any(t, wr, c, v);
    uint4 *o = (uint4 *)(out + (int64_t)r * W.cols + c * 32);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        uint4 u;
        u.x = pack_bf16(v[8 * i], v[8 * i + 1]), u.y = pack_bf16(v[8 * i + 2], v[8 * i + 3]);
        u.z = pack_bf16(v[8 * i + 4], v[8 * i + 5]), u.w = pack_bf16(v[8 * i + 6], v[8 * i + 7]);
        o[i] = u;
    }
}

/* y[r, c] += bias[c] */
__global__ void k_add_bias_q(float *y, const float *bias, int64_t rows, int cols) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < rows * cols; i += (int64_t)gridDim.x * blockDim.x)
        y[i] += bias[i % cols];
}

/* x[r] = row ids[r] of E (f32); a thread per chunk */
__global__ void k_qembed(gqmat E, const int32_t *ids, float *x, int n) {
    const int nch = E.cols / 32;
    const int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (idx >= (int64_t)n * nch) return;
    const int r = (int)(idx / nch), c = (int)(idx % nch);
    int t;
    const uint8_t *wr = row_of(E, ids[r], &t);
    float v[32];
    deq_any(t, wr, c, v);
    float4 *o = (float4 *)(x + (int64_t)r * E.cols + c * 32);
#pragma unroll
    for (int i = 0; i < 8; i++) o[i] = make_float4(v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]);
}

int gq_wanted(const skv_gpu_mat *const *ms, int k) {
    for (int i = 0; i < k; i++)
        if (ms[i]->dtype >= SKV_DTYPE_Q4_0) return 1;
    return 0;
}

void gq_free(gmat *m) {
    if (!m->q) return;
    for (int i = 0; i < m->q->np; i++) cudaFree((void *)m->q->w[i]);
    free(m->q);
    m->q = NULL;
}

skv_status gq_upload(const skv_gpu_mat *const *ms, int k, gmat *out, int64_t *bytes) {
    if (k > GQ_PARTS) return skv_set_error(SKV_ERR_ARG, "CUDA: a stack of %d weights (at most %d)", k, GQ_PARTS);
    const int64_t cols = ms[0]->cols;
    if (cols % 32 || cols > INT32_MAX)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "CUDA: quantized weights of %lld columns (a multiple of 32 is needed)",
                             (long long)cols);
    gqmat *q = (gqmat *)calloc(1, sizeof *q);
    if (!q) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    out->w = NULL, out->q = q, out->cols = cols, out->rows = 0;
    q->cols = (int32_t)cols;
    for (int i = 0; i < k; i++) {
        const skv_gpu_mat *m = ms[i];
        if ((unsigned)m->dtype >= T_COUNT || m->cols != cols || cols % BLOCK[m->dtype])
            return skv_set_error(SKV_ERR_UNSUPPORTED, "CUDA: weight of type %d, %lld columns, cannot be stacked",
                                 (int)m->dtype, (long long)m->cols);
        const int64_t rb = row_bytes(m->dtype, cols), nb = rb * m->rows;
        void *d = NULL;
        CK(cudaMalloc(&d, (size_t)nb));
        q->w[i] = (const uint8_t *)d, q->np = i + 1;
        CK(cudaMemcpy(d, m->data, (size_t)nb, cudaMemcpyHostToDevice));
        q->rb[i] = rb, q->type[i] = m->dtype, q->r0[i] = (int32_t)out->rows;
        out->rows += m->rows;
        *bytes += nb;
    }
    q->r0[k] = (int32_t)out->rows;
    return SKV_OK;
}

int64_t gq_tile_elems(const gmat *m) {
    if (!m->q) return 0;
    const int64_t cap = (int64_t)32 << 20, all = m->rows * m->cols;
    if (all <= cap) return all;
    return cap / m->cols * m->cols > 0 ? cap / m->cols * m->cols : m->cols;
}

skv_status gq_linear(cudaStream_t st, cublasHandle_t cb, const gmat *W, const bf16 *x, float *y, const float *bias,
                     int n, int acc, bf16 *tile, int64_t tile_elems) {
    const int rows = (int)W->rows, cols = (int)W->cols;
    if (n <= GEMV_MAX_B) {
        const int threads = 256, blocks = (rows * 32 + threads - 1) / threads;
        /* $SKV_QGEMV=1: the lane-per-chunk kernel (for comparisons); else a lane per 8 weights */
        static int v8 = -1;
        if (v8 < 0) {
            const char *e = getenv("SKV_QGEMV");
            v8 = !(e && !strcmp(e, "1"));
        }
        switch (n) {
#define CASE(B)                                                                                  \
    case B:                                                                                      \
        if (v8) k_qgemv<B, true><<<blocks, threads, 0, st>>>(*W->q, x, y, bias, rows, acc);     \
        else k_qgemv<B, false><<<blocks, threads, 0, st>>>(*W->q, x, y, bias, rows, acc);       \
        break;
            CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
#undef CASE
        }
        LAUNCHED();
        return SKV_OK;
    }
    if (!tile || tile_elems < cols) return skv_set_error(SKV_ERR_ARG, "CUDA: no dequantisation tile for a prefill product");
    const int per = (int)(tile_elems / cols);
    const float one = 1.0f, beta = acc ? 1.0f : 0.0f;
    for (int r = 0; r < rows; r += per) {
        const int tr = rows - r < per ? rows - r : per;
        const int64_t nt = (int64_t)tr * (cols / 32);
        k_qdeq<<<(unsigned)((nt + 255) / 256), 256, 0, st>>>(*W->q, r, tr, tile);
        LAUNCHED();
        CB(cublasGemmEx(cb, CUBLAS_OP_T, CUBLAS_OP_N, tr, n, cols, &one, tile, CUDA_R_16BF, cols, x, CUDA_R_16BF, cols,
                        &beta, y + r, CUDA_R_32F, rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
    if (bias) {
        k_add_bias_q<<<256, 256, 0, st>>>(y, bias, n, rows);
        LAUNCHED();
    }
    return SKV_OK;
}

skv_status gq_embed(cudaStream_t st, const gmat *E, const int32_t *ids, float *x, int n) {
    const int64_t nt = (int64_t)n * (E->cols / 32);
    k_qembed<<<(unsigned)((nt + 255) / 256), 256, 0, st>>>(*E->q, ids, x, n);
    LAUNCHED();
    return SKV_OK;
}

/* ---- the test entry (gpu.h) ---------------------------------------------------------------- */

__global__ void k_f32_to_bf16_q(const float *in, bf16 *out, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = __float2bfloat16(in[i]);
}

extern "C" skv_status skv_gpu_qmat_test(const skv_gpu_mat *w, const float *x, int n, float *y, float *deq) {
    if (!skv_gpu_available()) return SKV_ERR_UNSUPPORTED;
    gmat m = {NULL, 0, 0, NULL};
    int64_t bytes = 0;
    cudaStream_t st = NULL;
    cublasHandle_t cb = NULL;
    float *yd = NULL, *xf = NULL;
    bf16 *xb = NULL, *tile = NULL;
    auto run = [&]() -> skv_status {
        skv_status s = gq_upload(&w, 1, &m, &bytes);
        if (s) return s;
        const int64_t R = m.rows, C = m.cols, te = gq_tile_elems(&m);
        CK(cudaStreamCreate(&st));
        CB(cublasCreate(&cb));
        CB(cublasSetStream(cb, st));
        CK(cudaMalloc(&yd, sizeof(float) * (size_t)(n * R)));
        CK(cudaMalloc(&xf, sizeof(float) * (size_t)(n * C)));
        CK(cudaMalloc(&xb, sizeof(bf16) * (size_t)(n * C)));
        CK(cudaMalloc(&tile, sizeof(bf16) * (size_t)(te > R * C ? te : R * C)));
        CK(cudaMemcpy(xf, x, sizeof(float) * (size_t)(n * C), cudaMemcpyHostToDevice));
        k_f32_to_bf16_q<<<256, 256, 0, st>>>(xf, xb, n * C);
        LAUNCHED();
        if ((s = gq_linear(st, cb, &m, xb, yd, NULL, n, 0, tile, te))) return s;
        CK(cudaMemcpyAsync(y, yd, sizeof(float) * (size_t)(n * R), cudaMemcpyDeviceToHost, st));
        if (deq) {
            const int64_t nt = R * (C / 32);
            k_qdeq<<<(unsigned)((nt + 255) / 256), 256, 0, st>>>(*m.q, 0, (int)R, tile);
            LAUNCHED();
            uint16_t *h = (uint16_t *)malloc(sizeof(uint16_t) * (size_t)(R * C));
            if (!h) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
            cudaError_t e = cudaMemcpyAsync(h, tile, sizeof(uint16_t) * (size_t)(R * C), cudaMemcpyDeviceToHost, st);
            if (e == cudaSuccess) e = cudaStreamSynchronize(st);
            for (int64_t i = 0; e == cudaSuccess && i < R * C; i++) {
                const uint32_t u = (uint32_t)h[i] << 16;
                memcpy(deq + i, &u, 4);
            }
            free(h);
            CK(e);
        }
        CK(cudaStreamSynchronize(st));
        return SKV_OK;
    };
    const skv_status s = run();
    gq_free(&m);
    cudaFree(yd), cudaFree(xf), cudaFree(xb), cudaFree(tile);
    if (cb) cublasDestroy(cb);
    if (st) cudaStreamDestroy(st);
    return s;
}
