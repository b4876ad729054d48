/*
 * gpu_gemv.cuh — the decode matrix-vector product on the tensor cores (included by gpu.cu only):
 * y (n, rows) (+)= x (n, cols) . W^T (+ bias) for n <= 8 * NT token rows, each weight read once
 * for all n.
 *
 * A block of 8 warps owns 16 output rows (T = 2: 16 gate rows j.. and the 16 up rows F + j..,
 * whose product silu(gate) * up it writes as bf16, the SwiGLU fused). Warp w takes the k-steps
 * w, w + 8, ... of 32 columns each (split-K; the block's warps read 512 contiguous bytes of a
 * row together); the block adds the warps' sums in shared memory in warp order (the same
 * result on every run). One k-step is two mma.sync m16n8k16 per 8 tokens: lane (r = lane / 4,
 * q = lane % 4) loads 16 bytes of W rows r and r + 8 and of x row r at column 8q of the step.
 * Any permutation of k is a valid order for a dot product, so the 16-byte loads are the
 * fragments directly: words 0, 1 of each load go to the first mma's k pairs (2q, 2q + 8),
 * words 2, 3 to the second's. U k-steps are loaded before the first use; the first U before
 * pdl_wait (weights do not depend on the kernel before).
 */
#ifndef SKV_GPU_GEMV_CUH
#define SKV_GPU_GEMV_CUH

#include "backend/cuda/gpu_device.cuh"

/* Token rows the tensor-core GEMV takes: from 4 (below, the one-warp-per-row k_gemv is faster:
 * on the H200, 5.04 vs 5.44 ms per Llama-3-8B step at batch 1, both without early launches) to
 * 8 (batch 8: 1383 tokens/s, the one-warp GEMV 738 in issue 16's table; above 8, cuBLAS: at
 * batch 32 this kernel made 3721 tokens/s, cuBLAS 4397 in that table). The runs:
 * bench/cuda/issue16-h200/README.md. */
#define GEMV_TC_MIN_B 4
#define GEMV_TC_MAX_B 8

/* W streams through once: not kept in L1 */
__device__ __forceinline__ uint4 ld_stream(const bf16 *p) {
    uint4 u;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(u.x), "=r"(u.y), "=r"(u.z), "=r"(u.w) : "l"(p));
    return u;
}

__device__ __forceinline__ void mma_bf16(float *c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                         uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* Grid: ceil(out_rows / 16) blocks of 256 threads. out_rows = rows (T = 1) or rows / 2 (T = 2,
 * W = gate | up stacked, h (n, rows / 2) bf16 written instead of y). cols % 32 == 0. */
template <int NT, int T, int U>
__global__ void __launch_bounds__(256) k_gemv_tc(const bf16 *__restrict__ W, const bf16 *x, float *y, bf16 *h,
                                                 const float *bias, int rows, int cols, int n, int accumulate) {
    pdl_trigger();
    __shared__ float red[T][NT][4][32];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r = lane >> 2, q = lane & 3;
    const int out_rows = T == 2 ? rows / 2 : rows, row0 = blockIdx.x * 16;
    const int n_it = cols >> 5;
    const bool ok0 = row0 + r < out_rows, ok1 = row0 + r + 8 < out_rows;
    const bf16 *wp[T][2];
#pragma unroll
    for (int t = 0; t < T; t++) {
        wp[t][0] = W + (int64_t)(t * out_rows + row0 + (ok0 ? r : 0)) * cols + q * 8;
        wp[t][1] = W + (int64_t)(t * out_rows + row0 + (ok1 ? r + 8 : 0)) * cols + q * 8;
    }
    for (int i = threadIdx.x; i < T * NT * 4 * 32; i += 256) (&red[0][0][0][0])[i] = 0;
    float acc[T][NT][4];
#pragma unroll
    for (int t = 0; t < T; t++)
#pragma unroll
        for (int j = 0; j < NT; j++) acc[t][j][0] = acc[t][j][1] = acc[t][j][2] = acc[t][j][3] = 0;
    const uint4 z4 = make_uint4(0, 0, 0, 0);
    uint4 wa[U][T][2], xr[U][NT];
    auto load_w = [&](int base) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int it = base + 8 * u;
#pragma unroll
            for (int t = 0; t < T; t++) {
                wa[u][t][0] = it < n_it ? ld_stream(wp[t][0] + it * 32) : z4;
                wa[u][t][1] = it < n_it ? ld_stream(wp[t][1] + it * 32) : z4;
            }
        }
    };
    auto load_x = [&](int base) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int it = base + 8 * u;
#pragma unroll
            for (int j = 0; j < NT; j++) {
                const int b = j * 8 + r;
                xr[u][j] = it < n_it && b < n ? *(const uint4 *)(x + (int64_t)b * cols + it * 32 + q * 8) : z4;
            }
        }
    };
    load_w(warp);
    pdl_wait();
    load_x(warp);
    for (int base = warp; base < n_it; base += 8 * U) {
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int t = 0; t < T; t++)
#pragma unroll
                for (int j = 0; j < NT; j++) {
                    const uint4 a = wa[u][t][0], b = wa[u][t][1], v = xr[u][j];
                    mma_bf16(acc[t][j], a.x, b.x, a.y, b.y, v.x, v.y);
                    mma_bf16(acc[t][j], a.z, b.z, a.w, b.w, v.z, v.w);
                }
        if (base + 8 * U < n_it) {
            load_w(base + 8 * U);
            load_x(base + 8 * U);
        }
    }
    /* the warps' partial sums added in warp order (the same result on every run) */
    for (int w = 0; w < 8; w++) {
        __syncthreads();
        if (warp == w)
#pragma unroll
            for (int t = 0; t < T; t++)
#pragma unroll
                for (int j = 0; j < NT; j++)
#pragma unroll
                    for (int e = 0; e < 4; e++) red[t][j][e][lane] += acc[t][j][e];
    }
    __syncthreads();
    /* element (j, e, lane): row row0 + lane / 4 (+ 8 for e >= 2), token j * 8 + 2 (lane % 4) + (e & 1) */
    for (int i = threadIdx.x; i < NT * 4 * 32; i += 256) {
        const int j = i / 128, e = (i / 32) % 4, ln = i % 32;
        const int row = row0 + (ln >> 2) + (e >= 2 ? 8 : 0), b = j * 8 + (ln & 3) * 2 + (e & 1);
        if (row >= out_rows || b >= n) continue;
        const float v = red[0][j][e][ln];
        if (T == 2) {
            const float u = red[T - 1][j][e][ln];
            h[(int64_t)b * out_rows + row] = __float2bfloat16(v / (1.0f + __expf(-v)) * u);
        } else {
            float *o = y + (int64_t)b * rows + row;
            const float s = v + (bias ? bias[row] : 0.0f);
            *o = accumulate ? *o + s : s;
        }
    }
}

#endif
