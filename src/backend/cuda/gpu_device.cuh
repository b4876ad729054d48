/*
 * gpu_device.cuh — small device functions the CUDA backend's kernels share (warp sums, bf16
 * unpacking, tensor-core mma.sync, ldmatrix and cp.async wrappers). Internal.
 */
#ifndef SKV_GPU_DEVICE_CUH
#define SKV_GPU_DEVICE_CUH

#include "backend/cuda/gpu_common.cuh"

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ void bf16x8_to_f32(uint4 u, float *f) {
    const __nv_bfloat162 *p = (const __nv_bfloat162 *)&u;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 t = __bfloat1622float2(p[i]);
        f[2 * i] = t.x, f[2 * i + 1] = t.y;
    }
}

__device__ __forceinline__ void mma16816(float *c, const uint32_t *a, const uint32_t *b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* 16 bytes global -> shared without registers; ok = 0 writes zeros (src-size 0) */
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, bool ok) {
    const uint32_t s = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(ok ? 16 : 0));
}

/* four 8x8 b16 matrices from shared memory; lane t gives the address of row t % 8 of matrix t / 8 */
__device__ __forceinline__ void ldsm_x4(uint32_t *r, const bf16 *p) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t *r, const bf16 *p) {
    const uint32_t a = (uint32_t)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t *)&v;
}

/* Programmatic dependent launch (Hopper): a kernel launched with the attribute (launch_pdl in
 * gpu.cu) may start while the kernel before it in the stream still runs. pdl_wait blocks until
 * that kernel has finished and its writes are visible: nothing written by an earlier kernel may
 * be read, and nothing written, before it (a GEMV loads its weights before it). pdl_trigger lets
 * the next kernel start. Both are no-ops for a kernel launched without the attribute. */
__device__ __forceinline__ void pdl_wait(void) { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }
__device__ __forceinline__ void pdl_trigger(void) { asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory"); }

/* row of slot s in a pool, through the stream's block table */
__device__ __forceinline__ int64_t slot_row(const int32_t *bts, int s) {
    return (int64_t)bts[s / SKV_GPU_BLOCK] * SKV_GPU_BLOCK + (s % SKV_GPU_BLOCK);
}

#endif
