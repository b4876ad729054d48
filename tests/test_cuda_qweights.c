/*
 * test_cuda_qweights.c — weights kept in GGUF's stored formats on the GPU (gpu_qweights.cu):
 *   - each type (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K) on random blocks: the
 *     device's dequantisation equals the CPU's (ops/wfmt.c) rounded to bf16, bit for bit; the
 *     decode GEMV (1, 3, 8 rows) equals the double-precision product of the CPU's dequantised
 *     weights with the bf16 activations within 1e-4 of sum |w x| (f32 accumulation order); the
 *     prefill path (16 rows: bf16 tiles + cuBLAS) the same with the weights rounded to bf16;
 *   - kvt-s converted to GGUF with every matrix in another stored type (scripts/hf_to_gguf.py
 *     --type mix: q|k|v stacks of three types, k-quants in ffn_down): CUDA logits of a prefill
 *     (every position) and of 24 greedy decode steps after it against the CPU backend's prefill
 *     of the same 72 tokens (its weights dequantised exactly, f32 activations; the CPU's decode
 *     quantizes activations to int8, which is not what is checked here): relative L2 under 3e-2
 *     (bf16 activations, prefill tiles and cache on the GPU: 6.5e-3 measured) and the same
 *     top-1 at >= 90% of positions.
 * Skips without a GPU; the model test also without numpy + gguf (the converter exits 3), unless
 * $SKV_SHARED/models/kvt-s-mix.gguf was made beforehand.
 */
#include "backend/cuda/gpu.h"
#include "harness.h"
#include "ops/wfmt.h"

#include <math.h>
#include <sys/stat.h>

static int have_gpu(void) {
    if (skv_backend_available(SKV_BACKEND_CUDA)) return 1;
    skv_test_skip("%s", skv_last_error());
    return 0;
}

static float urand(uint32_t *s) { return (float)(skv_test_xorshift(s) >> 8) / 16777216.0f * 2.0f - 1.0f; }

/* rows x cols random weights in type t: random bytes with sane f16 scales (quantized), or
 * values in [-1, 1] */
static uint8_t *rand_weights(skv_dtype t, int64_t rows, int64_t cols, uint32_t *s) {
    const int64_t n = rows * cols, bytes = rows * skv_dtype_row_bytes(t, cols);
    uint8_t *b = malloc((size_t)bytes);
    for (int64_t i = 0; i < bytes; i++) b[i] = (uint8_t)(skv_test_xorshift(s) >> 11);
    for (int64_t i = 0; t <= SKV_DTYPE_BF16 && i < n; i++) {
        const float v = urand(s);
        if (t == SKV_DTYPE_F32) memcpy(b + 4 * i, &v, 4);
        else {
            const uint16_t h = t == SKV_DTYPE_F16 ? skv_f32_to_f16(v) : skv_f32_to_bf16(v);
            memcpy(b + 2 * i, &h, 2);
        }
    }
    if (t <= SKV_DTYPE_BF16) return b;
    const int bb = skv_dtype_block_bytes(t);
    int offs[2] = {0, -1}; /* f16 fields of a block */
    if (t == SKV_DTYPE_Q4_1 || t == SKV_DTYPE_Q4_K || t == SKV_DTYPE_Q5_K) offs[1] = 2;
    if (t == SKV_DTYPE_Q6_K) offs[0] = 208;
    for (int64_t k = 0; k < n / skv_dtype_block(t); k++)
        for (int f = 0; f < 2; f++)
            if (offs[f] >= 0) {
                const uint16_t h = skv_f32_to_f16(0.05f * urand(s));
                memcpy(b + k * bb + offs[f], &h, 2);
            }
    return b;
}

static float bf16r(float v) { return skv_bf16_to_f32(skv_f32_to_bf16(v)); }

static void each_type(void) {
    if (!have_gpu()) return;
    const int64_t R = 67, C = 1536; /* rows over several warps' blocks; 48 chunks a row */
    const skv_dtype types[] = {SKV_DTYPE_F32,  SKV_DTYPE_F16,  SKV_DTYPE_BF16, SKV_DTYPE_Q4_0, SKV_DTYPE_Q4_1,
                               SKV_DTYPE_Q5_0, SKV_DTYPE_Q8_0, SKV_DTYPE_Q4_K, SKV_DTYPE_Q5_K, SKV_DTYPE_Q6_K};
    uint32_t s = 1234567;
    float *W = malloc(sizeof(float) * (size_t)(R * C)), *deq = malloc(sizeof(float) * (size_t)(R * C));
    float *x = malloc(sizeof(float) * (size_t)(16 * C)), *y = malloc(sizeof(float) * (size_t)(16 * R));
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const skv_dtype t = types[ti];
        uint8_t *b = rand_weights(t, R, C, &s);
        const int64_t rb = skv_dtype_row_bytes(t, C);
        for (int64_t r = 0; r < R; r++) skv_dequant_row(t, b + r * rb, W + r * C, C);
        for (int64_t i = 0; i < 16 * C; i++) x[i] = urand(&s);
        const skv_gpu_mat m = {.data = b, .dtype = t, .rows = R, .cols = C};
        const int ns[] = {1, 3, 8, 16};
        double worst = 0;
        int bad_deq = 0, bad_y = 0;
        for (int k = 0; k < 4; k++) {
            const int n = ns[k];
            REQUIRE(skv_gpu_qmat_test(&m, x, n, y, k == 0 ? deq : NULL) == SKV_OK, "%s: %s", skv_dtype_name(t),
                    skv_last_error());
            if (k == 0)
                for (int64_t i = 0; i < R * C; i++) {
                    const float want = bf16r(W[i]);
                    if (memcmp(&want, deq + i, 4) && bad_deq++ < 3)
                        skv_test_fail(__FILE__, __LINE__, "%s: weight %lld dequantised to %.9g on the GPU, %.9g (bf16) on the CPU",
                                      skv_dtype_name(t), (long long)i, deq[i], want);
                }
            for (int bi = 0; bi < n; bi++)
                for (int64_t r = 0; r < R; r++) {
                    double ref = 0, mag = 0;
                    for (int64_t c = 0; c < C; c++) {
                        const double w = n > 8 ? bf16r(W[r * C + c]) : W[r * C + c], xv = bf16r(x[bi * C + c]);
                        ref += w * xv, mag += fabs(w * xv);
                    }
                    const double e = fabs(y[bi * R + r] - ref) / (mag > 0 ? mag : 1);
                    worst = fmax(worst, e);
                    if (!(e <= 1e-4) && bad_y++ < 3)
                        skv_test_fail(__FILE__, __LINE__, "%s, %d rows: row %lld of input %d: %.7g vs %.7g (|err| / sum|wx| %.2g)",
                                      skv_dtype_name(t), n, (long long)r, bi, y[bi * R + r], ref, e);
                }
        }
        CHECKF(bad_deq == 0 && bad_y == 0, "%s: %d weights and %d products off", skv_dtype_name(t), bad_deq, bad_y);
        printf("    %-4s: dequantisation = CPU (bf16) on %lld weights; GEMV 1/3/8 rows and tiles 16 rows within %.2g of sum|wx|\n",
               skv_dtype_name(t), (long long)(R * C), worst);
        free(b);
    }
    free(W), free(deq), free(x), free(y);
}

static double rel_l2(const float *a, const float *b, int n) {
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]), den += (double)b[i] * b[i];
    return sqrt(num / (den > 0 ? den : 1));
}

static void mixed_model(void) {
    if (!have_gpu()) return;
    char path[700], cmd[2048];
    snprintf(path, sizeof path, "%s/kvt-s-mix.gguf", skv_test_tmpdir());
    snprintf(cmd, sizeof cmd, "python3 scripts/hf_to_gguf.py %s/models/kvt-s %s --type mix", skv_test_shared_dir(), path);
    char *err = NULL;
    const int rc = skv_test_sh(cmd, NULL, &err);
    struct stat sb;
    if (rc == 3) { /* no gguf-py here: a file made beforehand */
        snprintf(path, sizeof path, "%s/models/kvt-s-mix.gguf", skv_test_shared_dir());
        if (stat(path, &sb)) {
            free(err);
            skv_test_skip("python3 with numpy and gguf is not installed and %s is absent", path);
            return;
        }
    } else if (rc) {
        skv_test_fail(__FILE__, __LINE__, "hf_to_gguf.py --type mix failed (%d): %s", rc, err ? err : "");
        free(err);
        return;
    }
    free(err);
    skv_model_params mp = skv_model_default_params();
    mp.n_threads = 2;
    skv_model *m = NULL;
    REQUIRE(skv_model_load(path, mp, &m) == SKV_OK, "%s: %s", path, skv_last_error());
    enum { N = 48, STEPS = 24 };
    const int V = skv_model_get_info(m)->n_vocab;
    int32_t ids[N + STEPS];
    skv_test_ids(ids, N, 15);
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = 256, cp.n_batch = 128;
    skv_context *cc = NULL, *cg = NULL;
    REQUIRE(skv_context_init(m, cp, &cc) == SKV_OK, "cpu context: %s", skv_last_error());
    cp.backend = SKV_BACKEND_CUDA, cp.n_batch = 64;
    REQUIRE(skv_context_init(m, cp, &cg) == SKV_OK, "cuda context: %s", skv_last_error());
    /* GPU: prefill (tiles + cuBLAS), then STEPS greedy decode steps (GEMV) */
    float *lg = malloc(sizeof(float) * (size_t)(N + STEPS) * V), *lc = malloc(sizeof(float) * (size_t)(N + STEPS) * V);
    REQUIRE(!skv_decode(cg, ids, N, lg, 1), "cuda prefill: %s", skv_last_error());
    for (int i = 0; i < STEPS; i++) {
        ids[N + i] = skv_test_argmax(lg + (int64_t)(N - 1 + i) * V, V);
        REQUIRE(!skv_decode(cg, &ids[N + i], 1, lg + (int64_t)(N + i) * V, 0), "cuda decode: %s", skv_last_error());
    }
    /* CPU: one prefill of the same N + STEPS tokens (weights dequantised exactly, f32 activations) */
    REQUIRE(!skv_decode(cc, ids, N + STEPS, lc, 1), "cpu prefill: %s", skv_last_error());
    double wp = 0, wd = 0;
    int top = 0;
    for (int i = 0; i < N + STEPS; i++) {
        const double e = rel_l2(lg + (int64_t)i * V, lc + (int64_t)i * V, V);
        if (i < N) wp = fmax(wp, e);
        else wd = fmax(wd, e);
        top += skv_test_argmax(lg + (int64_t)i * V, V) == skv_test_argmax(lc + (int64_t)i * V, V);
    }
    CHECKF(wp < 3e-2 && wd < 3e-2, "CUDA vs CPU logits: relative L2 up to %.3g (prefill), %.3g (decode)", wp, wd);
    CHECKF(top * 10 >= (N + STEPS) * 9, "top-1 equal at %d/%d positions", top, N + STEPS);
    printf("    kvt-s mix GGUF, CUDA vs CPU prefill of the same tokens: relative L2 up to %.2g (CUDA prefill, %d "
           "positions), %.2g (CUDA decode, %d steps); top-1 equal %d/%d\n", wp, N, wd, STEPS, top, N + STEPS);
    skv_context_free(cc), skv_context_free(cg);
    skv_model_free(m);
    free(lc), free(lg);
}

void register_cuda_qw(void) {
    skv_test_add("cuda_qw/each stored type: GPU dequantisation = CPU, GEMV and tiles = product", each_type);
    skv_test_add("cuda_qw/kvt-s GGUF of mixed stored types: CUDA logits = CPU logits", mixed_model);
}
