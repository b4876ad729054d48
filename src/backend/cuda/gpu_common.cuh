/*
 * gpu_common.cuh — what the CUDA backend's files share: headers, the bf16 type, error
 * checking (CK for CUDA calls, CB for cuBLAS, LAUNCHED after a kernel launch), and the model's
 * device-side structures. Internal to src/backend/cuda.
 */
#ifndef SKV_GPU_COMMON_CUH
#define SKV_GPU_COMMON_CUH
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/gpu.h"

extern "C" skv_status skv_set_error(skv_status st, const char *fmt, ...);

typedef __nv_bfloat16 bf16;

#define GEMV_MAX_B 8   /* rows up to this go through the own GEMV, more through cuBLAS */
#define ATT_WARPS 4
#define G_MAX 8        /* query heads per KV head the decode kernel holds in registers */

static inline skv_status cuda_fail(cudaError_t e, const char *what, int line) {
    return skv_set_error(SKV_ERR_UNSUPPORTED, "CUDA: %s failed (%s:%d): %s", what, __FILE__, line, cudaGetErrorString(e));
}
static inline skv_status cublas_fail(cublasStatus_t e, const char *what, int line) {
    return skv_set_error(SKV_ERR_UNSUPPORTED, "cuBLAS: %s failed (%s:%d): status %d", what, __FILE__, line, (int)e);
}
#define CK(x)                                                   \
    do {                                                        \
        cudaError_t e_ = (x);                                   \
        if (e_ != cudaSuccess) return cuda_fail(e_, #x, __LINE__); \
    } while (0)
#define CB(x)                                                        \
    do {                                                             \
        cublasStatus_t e_ = (x);                                     \
        if (e_ != CUBLAS_STATUS_SUCCESS) return cublas_fail(e_, #x, __LINE__); \
    } while (0)
#define LAUNCHED() CK(cudaGetLastError())


struct gqmat;
struct gmat {
    bf16 *w; /* (rows, cols) */
    int64_t rows, cols;
    gqmat *q; /* not NULL: kept in the stored format instead (w NULL; gpu_qweights.cuh) */
};

struct glayer {
    int src, cl, own;  /* LCKV: KV source layer, its cache layer, whether this layer keeps KV */
    float *attn_norm, *ffn_norm;
    float *bqkv, *bo;  /* (QD + 2 KD) with zeros for absent parts, or NULL; (dim) or NULL */
    gmat wqkv;         /* (QD + 2 KD, dim): q, k and v projections stacked, one GEMV (QD rows
                          without own KV) */
    gmat wo;
    gmat wgu;          /* (2 ffn, dim): gate then up, one GEMV */
    gmat wd;
};

struct skv_gpu_model {
    int32_t L, D, H, KVH, hd, F, V;
    int32_t CL;        /* cache layers (streams per sequence and KV head) */
    int32_t grp_lo, grp_hi; /* LCKV: the layers a prefill iterates (-1: none) */
    float eps;
    float *inv_freq_h; /* host copy (hd/2) */
    glayer *layers;    /* host array of device pointers */
    gmat embed, lm_head;
    int tied;
    float *final_norm;
    int64_t bytes;
    int64_t qtile;     /* bf16 elements of the prefill dequantisation tile (0: no stored-format
                          weights) */
};

#endif
