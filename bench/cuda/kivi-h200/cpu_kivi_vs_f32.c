/* cpu_kivi_vs_f32.c — the CPU baselines beside the kvt-l CUDA-vs-CPU KIVI test: the CPU int8, int4 and bf16
 * caches against the CPU f32 cache on the test's protocol (prompt of 300 random ids, seed 77, chunks of 100;
 * 50 greedy steps, truncation to 305 after 40). Build from the repository root after `make`:
 *   gcc -O2 -std=c11 -D_GNU_SOURCE -Iinclude bench/cuda/kivi-h200/cpu_kivi_vs_f32.c build/libslimkv.a -o /tmp/cmp \
 *       -L/usr/lib/x86_64-linux-gnu/openblas-pthread -lopenblas -lcjson -lpcre2-8 -lutf8proc -llzma -lzstd -lucp -lucs -lm -fopenmp
 * (the test feeds the CPU int cache's argmax; this program the int8 cache's) */
#include "slimkv.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
static uint32_t xs(uint32_t *s) { uint32_t x = *s; x ^= x << 13; x ^= x >> 17; x ^= x << 5; return *s = x; }
static double rel(const float *a, const float *r, int n) { double nu = 0, de = 0; for (int i = 0; i < n; i++) nu += (a[i]-r[i])*(double)(a[i]-r[i]), de += (double)r[i]*r[i]; return sqrt(nu/de); }
static skv_context *mk(skv_model *m, skv_kv_format f) {
    skv_context_params cp = skv_context_default_params(); cp.n_ctx = 512, cp.n_batch = 100, cp.kv_format = f;
    skv_context *c = NULL; if (skv_context_init(m, cp, &c)) { printf("%s\n", skv_last_error()); exit(1); } return c; }
int main(void) {
    skv_model_params mp = skv_model_default_params(); mp.n_threads = 2;
    skv_model *m = NULL; if (skv_model_load("/work/shared/models/kvt-l", mp, &m)) { printf("%s\n", skv_last_error()); return 1; }
    const int V = skv_model_get_info(m)->n_vocab, PP = 300;
    int32_t ids[300]; uint32_t seed = 77;
    for (int i = 0; i < PP; i++) ids[i] = (int32_t)(xs(&seed) % (uint32_t)(V - 1)) + 1;
    skv_context *f = mk(m, SKV_KV_F32), *b = mk(m, SKV_KV_BF16), *q8 = mk(m, SKV_KV_Q8), *q4 = mk(m, SKV_KV_Q4);
    float *lf = malloc(4*V), *lb = malloc(4*V), *l8 = malloc(4*V), *l4 = malloc(4*V);
    skv_decode(f, ids, PP, lf, 0); skv_decode(b, ids, PP, lb, 0); skv_decode(q8, ids, PP, l8, 0); skv_decode(q4, ids, PP, l4, 0);
    printf("prefill: bf16 %.2e int8 %.2e int4 %.2e\n", rel(lb, lf, V), rel(l8, lf, V), rel(l4, lf, V));
    int tok = 0; { float mx = -1e30; for (int v = 0; v < V; v++) if (l8[v] > mx) mx = l8[v], tok = v; }
    double mb = 0, m8 = 0, m4 = 0, wb = 0, w8 = 0, w4 = 0;
    for (int t = 0; t < 50; t++) {
        if (t == 40) { skv_context_truncate(f, 305); skv_context_truncate(b, 305); skv_context_truncate(q8, 305); skv_context_truncate(q4, 305); }
        skv_decode(f, &tok, 1, lf, 0); skv_decode(b, &tok, 1, lb, 0); skv_decode(q8, &tok, 1, l8, 0); skv_decode(q4, &tok, 1, l4, 0);
        double eb = rel(lb, lf, V), e8 = rel(l8, lf, V), e4 = rel(l4, lf, V);
        mb += eb, m8 += e8, m4 += e4; wb = fmax(wb, eb), w8 = fmax(w8, e8), w4 = fmax(w4, e4);
        if (t % 10 == 0 || t == 40 || t==41) printf("step %d: bf16 %.2e int8 %.2e int4 %.2e\n", t, eb, e8, e4);
        float mx = -1e30; for (int v = 0; v < V; v++) if (l8[v] > mx) mx = l8[v], tok = v;
    }
    printf("CPU vs CPU f32 cache, 50 steps: mean bf16 %.2e int8 %.2e int4 %.2e; worst %.2e %.2e %.2e\n", mb/50, m8/50, m4/50, wb, w8, w4);
    return 0;
}
