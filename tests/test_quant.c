/*
 * test_quant.c — quantized weight formats (ops/wfmt.h) against a reference implementation:
 * dequantisation of random blocks equals gguf-py's numpy dequantisers (fixtures in
 * tests/data/quant/, made by scripts/make_quant_fixtures.py) exactly; the int8 dot kernels equal
 * the dot of the dequantised weights with the dequantised activations to float rounding, and the
 * dot with the f32 activations within the activation quantisation's bound; the tiled
 * dequantise + OpenBLAS product equals a double-precision product.
 */
#include "harness.h"
#include "ops/ops.h"

#include <math.h>

static const struct {
    const char *name;
    skv_dtype t;
} TYPES[] = {{"Q4_0", SKV_DTYPE_Q4_0}, {"Q4_1", SKV_DTYPE_Q4_1}, {"Q5_0", SKV_DTYPE_Q5_0}, {"Q8_0", SKV_DTYPE_Q8_0},
             {"Q4_K", SKV_DTYPE_Q4_K}, {"Q5_K", SKV_DTYPE_Q5_K}, {"Q6_K", SKV_DTYPE_Q6_K}};

typedef struct fixture {
    uint32_t nb, bytes;
    uint8_t *blocks;
    float *ref;
    int64_t n; /* weights */
} fixture;

static int load_fixture(const char *name, skv_dtype t, fixture *f) {
    char path[256];
    snprintf(path, sizeof path, "tests/data/quant/%s.bin", name);
    FILE *fp = fopen(path, "rb");
    if (!fp) return 0;
    int ok = fread(&f->nb, 4, 1, fp) == 1 && fread(&f->bytes, 4, 1, fp) == 1 && f->bytes == (uint32_t)skv_dtype_block_bytes(t);
    if (ok) {
        f->n = (int64_t)f->nb * skv_dtype_block(t);
        f->blocks = malloc((size_t)f->nb * f->bytes);
        f->ref = malloc(sizeof(float) * (size_t)f->n);
        ok = fread(f->blocks, f->bytes, f->nb, fp) == f->nb && fread(f->ref, sizeof(float), (size_t)f->n, fp) == (size_t)f->n;
    }
    fclose(fp);
    return ok;
}

static void test_dequant(void) {
    for (size_t k = 0; k < sizeof TYPES / sizeof TYPES[0]; k++) {
        fixture f = {0};
        REQUIRE(load_fixture(TYPES[k].name, TYPES[k].t, &f), "tests/data/quant/%s.bin: missing or malformed", TYPES[k].name);
        float *y = malloc(sizeof(float) * (size_t)f.n);
        skv_dequant_row(TYPES[k].t, f.blocks, y, f.n);
        int bad = 0;
        for (int64_t i = 0; i < f.n; i++)
            if (y[i] != f.ref[i] && bad++ < 3)
                skv_test_fail(__FILE__, __LINE__, "%s element %lld: %.9g, gguf-py %.9g", TYPES[k].name, (long long)i, y[i],
                              f.ref[i]);
        /* the row read through an skv_weight (rows of 1 block) gives the same */
        const int32_t blk = skv_dtype_block(TYPES[k].t);
        skv_weight w = {f.blocks, TYPES[k].t, f.nb, blk};
        for (uint32_t r = 0; r < f.nb; r++) {
            skv_weight_row_f32(&w, r, y);
            CHECKF(!memcmp(y, f.ref + (int64_t)r * blk, sizeof(float) * (size_t)blk), "%s row %u", TYPES[k].name, r);
        }
        printf("    %s: %lld values equal gguf-py's\n", TYPES[k].name, (long long)f.n);
        free(y), free(f.blocks), free(f.ref);
    }
}

static void test_dot(void) {
    uint32_t seed = 1234;
    for (size_t k = 0; k < sizeof TYPES / sizeof TYPES[0]; k++) {
        fixture f = {0};
        REQUIRE(load_fixture(TYPES[k].name, TYPES[k].t, &f), "fixture %s", TYPES[k].name);
        const int64_t n = f.n;
        float *x = malloc(sizeof(float) * (size_t)n), *xh = malloc(sizeof(float) * (size_t)n);
        void *buf = malloc(skv_act_bytes(n));
        double worst_q = 0, worst_f = 0;
        for (int trial = 0; trial < 20; trial++) {
            for (int64_t i = 0; i < n; i++) {
                x[i] = ((float)(skv_test_xorshift(&seed) % 20001) / 10000.0f - 1.0f) * (trial % 3 == 0 ? 30.0f : 1.0f);
                if (trial == 1 && i % 7) x[i] = 0; /* sparse, and a block of zeros */
            }
            skv_weight w = {f.blocks, TYPES[k].t, 1, n};
            skv_act a;
            skv_act_init(&a, x, n, skv_weight_act_kinds(&w), buf);
            const float got = skv_weight_row_dot_act(&w, 0, &a);
            /* the activations as quantized: d * q per block */
            const int q8k = skv_wfmt_of(TYPES[k].t)->act == SKV_ACT_Q8_K;
            REQUIRE(q8k ? a.q8_K != NULL : a.q8_0 != NULL, "%s: activation not prepared", TYPES[k].name);
            double exact_q = 0, mag_q = 0, exact_f = 0, bound = 0;
            for (int64_t i = 0; i < n; i++) {
                const float d = q8k ? a.q8_K[i / 256].d : a.q8_0[i / 32].d;
                xh[i] = d * (float)(q8k ? a.q8_K[i / 256].qs[i % 256] : a.q8_0[i / 32].qs[i % 32]);
                exact_q += (double)f.ref[i] * xh[i];
                mag_q += fabs((double)f.ref[i] * xh[i]);
                exact_f += (double)f.ref[i] * x[i];
                bound += fabs((double)f.ref[i]) * d * 0.5;
            }
            const double eq = fabs(got - exact_q), ef = fabs(got - exact_f);
            CHECKF(eq <= 1e-5 * mag_q + 1e-6, "%s trial %d: kernel %.7g vs dequantised product %.7g (|w xq| %.4g)",
                   TYPES[k].name, trial, got, exact_q, mag_q);
            CHECKF(ef <= bound * 1.0001 + 1e-5 * mag_q + 1e-6, "%s trial %d: kernel %.7g vs f32 product %.7g beyond the bound %.4g",
                   TYPES[k].name, trial, got, exact_f, bound);
            worst_q = fmax(worst_q, eq / (mag_q + 1e-30));
            worst_f = fmax(worst_f, ef / (bound + 1e-30));
            /* skv_weight_row_dot (quantizes per call) gives the same number */
            CHECK(skv_weight_row_dot(&w, 0, x) == got);
        }
        printf("    %s: |kernel - dequantised product| <= %.2g x sum|w xq|; |kernel - f32 product| <= %.2f x bound\n",
               TYPES[k].name, worst_q, worst_f);
        free(x), free(xh), free(buf), free(f.blocks), free(f.ref);
    }
}

/* skv_matmul's tiles (quantized) against a double product over the dequantised rows: the
 * fixture's blocks repeated into a (rows, cols) matrix */
static void test_matmul(void) {
    for (size_t k = 0; k < sizeof TYPES / sizeof TYPES[0]; k++) {
        fixture f = {0};
        REQUIRE(load_fixture(TYPES[k].name, TYPES[k].t, &f), "fixture %s", TYPES[k].name);
        const int64_t cols = f.n, rows = 150, nt = 5; /* 150 rows on 2 threads: two tiles, the last partial */
        uint8_t *wb = malloc((size_t)(rows * f.nb * f.bytes));
        for (int64_t r = 0; r < rows; r++) memcpy(wb + r * f.nb * f.bytes, f.blocks, (size_t)f.nb * f.bytes);
        /* make rows differ: permute the blocks of odd rows */
        for (int64_t r = 1; r < rows; r += 2)
            for (uint32_t b = 0; b < f.nb; b++)
                memcpy(wb + (r * f.nb + b) * f.bytes, f.blocks + ((b + (uint32_t)r) % f.nb) * f.bytes, f.bytes);
        skv_weight w = {wb, TYPES[k].t, rows, cols};
        float *x = malloc(sizeof(float) * (size_t)(nt * cols)), *y = malloc(sizeof(float) * (size_t)(nt * rows));
        float *row = malloc(sizeof(float) * (size_t)cols);
        uint32_t seed = 99;
        for (int64_t i = 0; i < nt * cols; i++) x[i] = (float)(skv_test_xorshift(&seed) % 2001) / 1000.0f - 1.0f;
        const int64_t scratch_elems = 2 * SKV_QTILE * cols;
        float *scratch = malloc(sizeof(float) * (size_t)scratch_elems);
        skv_matmul_f32(&w, x, y, nt, scratch, scratch_elems, 2);
        double worst = 0;
        for (int64_t r = 0; r < rows; r++) {
            skv_weight_row_f32(&w, r, row);
            for (int64_t t = 0; t < nt; t++) {
                double s = 0, mag = 0;
                for (int64_t i = 0; i < cols; i++) s += (double)row[i] * x[t * cols + i], mag += fabs((double)row[i] * x[t * cols + i]);
                const double e = fabs(y[t * rows + r] - s) / (mag + 1e-30);
                worst = fmax(worst, e);
                CHECKF(e <= 1e-5, "%s: y[%lld, %lld] = %.7g, double %.7g", TYPES[k].name, (long long)t, (long long)r,
                       y[t * rows + r], s);
            }
        }
        printf("    %s: tiled product within %.2g (relative to sum|w x|) of double\n", TYPES[k].name, worst);
        free(wb), free(x), free(y), free(row), free(scratch), free(f.blocks), free(f.ref);
    }
}

/* skv_qgemm (K-quants, int8 activations) against double products over the dequantised rows:
 * with the activations as quantized (d q per 256, from skv_quantize_q8_K) within float rounding,
 * and with the f32 activations within the quantisation bound sum|w| d / 2. Shapes cover a
 * partial panel (rows 150 = 9 panels + 6 rows), an odd panel count in the last tile and
 * activation rows not a multiple of the micro-kernel's 4 (n = 1, 7, 37); 2 threads. */
static void test_qgemm(void) {
    static const struct { const char *name; skv_dtype t; } KQ[] = {{"Q4_K", SKV_DTYPE_Q4_K}, {"Q5_K", SKV_DTYPE_Q5_K}, {"Q6_K", SKV_DTYPE_Q6_K}};
    if (!skv_qgemm_supported(SKV_DTYPE_Q4_K)) {
        printf("    skipped: this host has no AVX-512 VNNI (skv_matmul uses the f32 path)\n");
        return;
    }
    for (size_t k = 0; k < sizeof KQ / sizeof KQ[0]; k++) {
        fixture f = {0};
        REQUIRE(load_fixture(KQ[k].name, KQ[k].t, &f), "fixture %s", KQ[k].name);
        const int64_t nblk = 6, cols = 256 * nblk, rows = 150, nmax = 37; /* the fixture's blocks, 6 per row */
        REQUIRE(f.nb >= (uint32_t)nblk, "%s fixture: %u blocks", KQ[k].name, f.nb);
        uint8_t *wb = malloc((size_t)(rows * nblk * f.bytes));
        for (int64_t r = 0; r < rows; r++)
            for (int64_t b = 0; b < nblk; b++)
                memcpy(wb + (r * nblk + b) * f.bytes, f.blocks + ((b * 7 + r * 3) % f.nb) * f.bytes, f.bytes);
        skv_weight w = {wb, KQ[k].t, rows, cols};
        float *x = malloc(sizeof(float) * (size_t)(nmax * cols)), *y = malloc(sizeof(float) * (size_t)(nmax * rows));
        float *wr = malloc(sizeof(float) * (size_t)(rows * cols)), *xq = malloc(sizeof(float) * (size_t)cols);
        skv_act_q8_K *qb = malloc(sizeof(skv_act_q8_K) * (size_t)nblk);
        for (int64_t r = 0; r < rows; r++) skv_weight_row_f32(&w, r, wr + r * cols);
        uint32_t seed = 7;
        for (int64_t i = 0; i < nmax * cols; i++) {
            x[i] = ((float)(skv_test_xorshift(&seed) % 20001) / 10000.0f - 1.0f) * ((i / 256) % 3 == 0 ? 20.0f : 1.0f);
            if ((i / cols) == 2 && (i % cols) < 256) x[i] = 0; /* an all-zero block */
        }
        const size_t sb = skv_qgemm_scratch_bytes(nmax, cols, 2);
        void *scratch = malloc(sb);
        double worst_q = 0, worst_f = 0;
        static const int64_t NS[] = {1, 7, 37};
        for (size_t ni = 0; ni < 3; ni++) {
            const int64_t n = NS[ni];
            CHECK(!skv_qgemm(&w, x, y, n, scratch, skv_qgemm_scratch_bytes(1, cols, 2) - 1, 2)); /* not even a row: refused */
            /* scratch for 3 rows: chunks of 3, the same numbers bit for bit */
            float *y3 = malloc(sizeof(float) * (size_t)(n * rows));
            for (int64_t i = 0; i < n * rows; i++) y[i] = y3[i] = NAN;
            REQUIRE(skv_qgemm(&w, x, y3, n, scratch, skv_qgemm_scratch_bytes(3, cols, 2), 2), "%s: qgemm refused", KQ[k].name);
            REQUIRE(skv_qgemm(&w, x, y, n, scratch, sb, 2), "%s: qgemm refused", KQ[k].name);
            CHECKF(!memcmp(y, y3, sizeof(float) * (size_t)(n * rows)), "%s n %lld: chunked rows differ", KQ[k].name, (long long)n);
            free(y3);
            for (int64_t t = 0; t < n; t++) {
                skv_quantize_q8_K(x + t * cols, qb, cols);
                for (int64_t i = 0; i < cols; i++) xq[i] = qb[i / 256].d * (float)qb[i / 256].qs[i % 256];
                for (int64_t r = 0; r < rows; r++) {
                    double sq = 0, sf = 0, mag = 0, bound = 0;
                    for (int64_t i = 0; i < cols; i++) {
                        const double wv = wr[r * cols + i];
                        sq += wv * xq[i], sf += wv * x[t * cols + i], mag += fabs(wv * xq[i]);
                        bound += fabs(wv) * qb[i / 256].d * 0.5;
                    }
                    const double got = y[t * rows + r], eq = fabs(got - sq), ef = fabs(got - sf);
                    CHECKF(eq <= 2e-6 * mag + 1e-6, "%s n %lld: y[%lld, %lld] = %.7g, quantized-activation product %.7g (|w xq| %.4g)",
                           KQ[k].name, (long long)n, (long long)t, (long long)r, got, sq, mag);
                    CHECKF(ef <= bound * 1.0001 + 2e-6 * mag + 1e-6, "%s n %lld: y[%lld, %lld] = %.7g, f32 product %.7g beyond %.4g",
                           KQ[k].name, (long long)n, (long long)t, (long long)r, got, sf, bound);
                    worst_q = fmax(worst_q, eq / (mag + 1e-30)), worst_f = fmax(worst_f, ef / (bound + 1e-30));
                }
            }
        }
        printf("    %s: |qgemm - quantized-activation product| <= %.2g x sum|w xq|; |qgemm - f32 product| <= %.2f x bound\n",
               KQ[k].name, worst_q, worst_f);
        free(wb), free(x), free(y), free(wr), free(xq), free(qb), free(scratch), free(f.blocks), free(f.ref);
    }
}

void register_quant(void) {
    skv_test_add("quant/dequantisation of Q4_0 Q4_1 Q5_0 Q8_0 Q4_K Q5_K Q6_K equals gguf-py's on random blocks", test_dequant);
    skv_test_add("quant/int8 dot kernels vs the dequantised product (float rounding) and the f32 product (quantisation bound)",
                 test_dot);
    skv_test_add("quant/tiled dequantise + OpenBLAS product vs double", test_matmul);
    skv_test_add("quant/int8 K-quant GEMM (prefill) vs the quantized-activation product and the f32 product's bound", test_qgemm);
}
