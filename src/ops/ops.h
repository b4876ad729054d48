/*
 * ops.h — CPU kernels: matrix-vector and matrix-matrix products over bf16/f16/f32 weights,
 * RMSNorm, RoPE, softmax, SwiGLU. Weights W are row-major (rows = out features, cols = in),
 * as Hugging Face stores nn.Linear.
 */
#ifndef SKV_CPU_OPS_H
#define SKV_CPU_OPS_H

#include "internal.h"
#include "wfmt.h"

/* A 2-D weight matrix held in its stored dtype (mapped from the safetensors or GGUF file); a
 * quantized row is cols / block blocks (wfmt.h). */
typedef struct skv_weight {
    const void *data; /* (rows, cols) row-major; row r at r * skv_dtype_row_bytes(dtype, cols) */
    skv_dtype dtype;
    int64_t rows, cols;
} skv_weight;

/* y[r0..r1) = W[r0..r1, :] x, for rows r0..r1 (the caller splits rows across threads). */
void skv_matvec_rows(const skv_weight *w, const float *x, float *y, int64_t r0, int64_t r1);

/* Dot product of row r of W with x (quantized weights: x is quantized per call — slow; the
 * matrix-vector paths prepare it once with skv_act_init and use skv_weight_row_dot_act). */
float skv_weight_row_dot(const skv_weight *w, int64_t r, const float *x);
float skv_weight_row_dot_act(const skv_weight *w, int64_t r, const skv_act *a);
void skv_matvec_rows_act(const skv_weight *w, const skv_act *a, float *y, int64_t r0, int64_t r1);
/* out[j] = skv_weight_row_dot_act(w, r, a[j]) for j < nb, bit for bit; bf16 rows are widened
 * once for several activations (a batched decode step). */
void skv_weight_row_dot_multi(const skv_weight *w, int64_t r, const skv_act *const *a, int nb, float *out);
/* The activation forms (bit 1 << skv_act_kind) W's dot product reads. */
unsigned skv_weight_act_kinds(const skv_weight *w);

/* rows per dequantised tile in skv_matmul */
#define SKV_QTILE 512

/* Row r of W converted to f32: out[cols]. */
void skv_weight_row_f32(const skv_weight *w, int64_t r, float *out);

/* Y(n, rows) = X(n, cols) W^T. K-quant weights (Q4_K, Q5_K, Q6_K) on AVX-512 VNNI hosts go
 * through skv_qgemm (int8 activations, as decode and llama.cpp); everything else through
 * skv_matmul_f32. Same scratch contract as skv_matmul_f32. */
void skv_matmul(const skv_weight *w, const float *x, float *y, int64_t n, float *scratch, int64_t scratch_elems,
                int n_threads);

/* The float32 product: Y(n, rows) = X(n, cols) W^T with OpenBLAS. bf16/f16 weights are converted into scratch
 * (rows*cols floats) first, in parallel; quantized weights are dequantised SKV_QTILE rows at a
 * time, one tile per thread (scratch: threads * SKV_QTILE * cols floats; fewer threads when it
 * is smaller). n_threads: the OpenMP team (0: the default). Call from outside an OpenMP
 * parallel region. */
void skv_matmul_f32(const skv_weight *w, const float *x, float *y, int64_t n, float *scratch, int64_t scratch_elems,
                    int n_threads);

/* qgemm.c: Y(n, rows) = X(n, cols) W^T for K-quant weights with X quantized per row to int8
 * blocks of 256 (as skv_quantize_q8_K), integer products (AVX-512 VNNI) over the weight codes
 * repacked 16 rows at a time. Scratch for all n rows: skv_qgemm_scratch_bytes(n, cols, threads);
 * with less, the rows go through in chunks that fit. Returns 0 (and does nothing) where the
 * dtype or the host does not allow it, or the scratch does not hold even one row. */
int skv_qgemm_supported(skv_dtype t);
size_t skv_qgemm_scratch_bytes(int64_t n, int64_t cols, int n_threads);
int skv_qgemm(const skv_weight *w, const float *x, float *y, int64_t n, void *scratch, size_t scratch_bytes, int n_threads);

/* out[n] = x[n] / sqrt(mean(x^2) + eps) * w[n] (float32, as HF LlamaRMSNorm). */
void skv_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps);

/* Rotate-half RoPE on one head vector v[hd]: pairs (i, i + hd/2) with cos/sin[hd/2]. */
void skv_rope(float *v, const float *cos, const float *sin, int32_t hd);

/* In place softmax of x[n]; returns the log-sum-exp. */
float skv_softmax(float *x, int64_t n);

/* a[i] = silu(a[i]) * b[i] */
float skv_silu(float x);
void skv_swiglu(float *a, const float *b, int64_t n);

/* a[i] = gelu_tanh(a[i]) * b[i] (GeGLU with the tanh approximation: Gemma) */
float skv_gelu_tanh(float x);
void skv_geglu(float *a, const float *b, int64_t n);

/* y[n] += a * x[n] */
void skv_axpy(float *y, float a, const float *x, int64_t n);
/* dot of two f32 vectors */
float skv_dot(const float *a, const float *b, int64_t n);

#endif
