/*
 * gpu_qweights.cuh — weights kept on the GPU in their stored format (GGUF's block-quantized
 * types Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K, and F32/F16/BF16 beside them in a stack):
 * the bytes of the file uploaded as they are, dequantised in registers by the decode GEMV and
 * into bf16 row tiles for cuBLAS in prefill. A matrix that stacks several weights by rows (q|k|v,
 * gate|up) keeps one part per weight, each in its own type (Q4_K_M mixes Q4_K and Q6_K in one
 * stack). Internal to src/backend/cuda; gpu_qweights.cu.
 */
#ifndef SKV_GPU_QWEIGHTS_CUH
#define SKV_GPU_QWEIGHTS_CUH

#include "backend/cuda/gpu_common.cuh"

#define GQ_PARTS 3

/* A stacked matrix of up to GQ_PARTS parts (rows [r0[i], r0[i + 1]) in part i). Passed to the
 * kernels by value. */
struct gqmat {
    const uint8_t *w[GQ_PARTS]; /* device bytes of each part, rows of rb[i] bytes */
    int64_t rb[GQ_PARTS];
    int32_t type[GQ_PARTS];     /* skv_dtype */
    int32_t r0[GQ_PARTS + 1];
    int32_t np, cols;
};

/* 1 when a stack of k host matrices needs the stored-format path (any part quantized). */
int gq_wanted(const skv_gpu_mat *const *ms, int k);
/* Upload k host matrices (equal cols, stacked by rows) as they are stored: out->q set, out->w
 * NULL; *bytes grows by the device bytes. */
skv_status gq_upload(const skv_gpu_mat *const *ms, int k, gmat *out, int64_t *bytes);
void gq_free(gmat *m);
/* bf16 elements of the prefill tile a context needs for matrices of `cols` columns (the rows
 * of one tile times cols, at most 32 Mi elements). */
int64_t gq_tile_elems(const gmat *m);
/* y (n, W.rows) f32 (+)= x (n, W.cols) bf16 . W^T (+ bias): n <= GEMV_MAX_B through the
 * dequantising GEMV, else dequantised tiles of rows into `tile` (tile_elems bf16) + cuBLAS. */
skv_status gq_linear(cudaStream_t st, cublasHandle_t cb, const gmat *W, const bf16 *x, float *y, const float *bias,
                     int n, int acc, bf16 *tile, int64_t tile_elems);
/* x[r] (f32, dim) = row ids[r] of E for r < n */
skv_status gq_embed(cudaStream_t st, const gmat *E, const int32_t *ids, float *x, int n);

#endif
