/*
 * test_cuda.c — the CUDA backend against golden.json and against itself (batched decode, forks).
 * Runs where a GPU answers (a `make CUDA=1` build on the GPU machine); elsewhere each test says
 * it was skipped and why.
 */
#include "backend/cuda/gpu.h"
#include "harness.h"
#include "kv/policy.h"
#include "backend/cpu/cpu.h"
#include "context/context.h"
#include "sample/sampler.h"
#include "tiny_model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int have_gpu(void) {
    if (skv_backend_available(SKV_BACKEND_CUDA)) return 1;
    skv_test_skip("%s", skv_last_error());
    return 0;
}

/* Logits of every golden prompt position on the GPU (chunked prefill) against the reference:
 * relative L2 error of the last position's logits (bf16 weights and cache: under 1e-2), top-1
 * agreement over all positions, and greedy decoding through the single-token path. */
static void golden_gpu(const char *name) {
    if (!have_gpu()) return;
    cJSON *g = skv_test_golden(name);
    skv_model *m = skv_test_load_model(name, 0);
    REQUIRE(g && m, "%s: golden or model: %s", name, skv_last_error());
    const int V = skv_model_get_info(m)->n_vocab;
    const cJSON *prompts = cJSON_GetObjectItem(g, "prompts");
    double worst_rel = 0;
    int agree = 0, total = 0, greedy_ok = 0, greedy_n = 0;
    for (int p = 0; p < cJSON_GetArraySize(prompts); p++) {
        const cJSON *pr = cJSON_GetArrayItem(prompts, p);
        int n, ng;
        int32_t *ids = skv_test_json_ids(cJSON_GetObjectItem(pr, "ids"), &n), *gr = skv_test_json_ids(cJSON_GetObjectItem(pr, "greedy32"), &ng);
        skv_context_params cp = skv_context_default_params();
        cp.n_batch = 64;
        cp.backend = SKV_BACKEND_CUDA;
        skv_context *c = NULL;
        REQUIRE(skv_context_init(m, cp, &c) == SKV_OK, "cuda context: %s", skv_last_error());
        float *lg = malloc(sizeof(float) * (size_t)n * V);
        for (size_t i = 0; i < (size_t)n * V; i++) lg[i] = NAN; /* every element must be written */
        REQUIRE(skv_decode(c, ids, n, lg, 1) == SKV_OK, "decode: %s", skv_last_error());
        const cJSON *tids = cJSON_GetObjectItem(pr, "top_ids"), *last = cJSON_GetObjectItem(pr, "last_logits");
        for (int i = 0; i < n; i++, total++)
            agree += skv_test_argmax(lg + (int64_t)i * V, V) == cJSON_GetArrayItem(cJSON_GetArrayItem(tids, i), 0)->valueint;
        double num = 0, den = 0;
        int nan = 0;
        for (int v = 0; v < V; v++) {
            const double r = cJSON_GetArrayItem(last, v)->valuedouble, x = lg[(int64_t)(n - 1) * V + v];
            nan += isnan(x);
            num += (x - r) * (x - r), den += r * r;
        }
        CHECKF(!nan, "%s prompt %d: %d NaN logits", name, p, nan);
        const double rel = sqrt(num / den);
        if (rel > worst_rel) worst_rel = rel;
        /* greedy through the decode path: count the agreeing prefix */
        int32_t tok = skv_test_argmax(lg + (int64_t)(n - 1) * V, V);
        int i = 0;
        for (; i < ng && tok == gr[i]; i++) {
            if (i + 1 == ng) {
                i++;
                break;
            }
            REQUIRE(skv_decode(c, &tok, 1, lg, 0) == SKV_OK, "decode: %s", skv_last_error());
            tok = skv_test_argmax(lg, V);
        }
        greedy_ok += i, greedy_n += ng;
        free(lg), free(ids), free(gr);
        skv_context_free(c);
    }
    printf("    %s on the GPU: last-position logits relative L2 error <= %.2e; top-1 agrees at %d/%d positions; "
           "greedy prefixes %d/%d tokens\n", name, worst_rel, agree, total, greedy_ok, greedy_n);
    CHECKF(worst_rel < 1e-2, "%s: relative L2 error %.3g of the last logits (bf16 tolerance 1e-2)", name, worst_rel);
    CHECKF(agree >= total * 0.97, "%s: top-1 agrees at only %d of %d positions", name, agree, total);
    CHECKF(greedy_ok >= greedy_n * 0.75, "%s: greedy prefixes cover only %d of %d tokens", name, greedy_ok, greedy_n);
    skv_model_free(m);
    cJSON_Delete(g);
}

static void test_golden_s(void) { golden_gpu("kvt-s"); }
static void test_golden_l(void) { golden_gpu("kvt-l"); }

/* Three sequences decoded together equal each decoded alone; a fork continues like its source. */
static void test_batch_fork(void) {
    if (!have_gpu()) return;
    skv_model *m = skv_test_load_model("kvt-l", 0);
    REQUIRE(m, "kvt-l: %s", skv_last_error());
    const int V = skv_model_get_info(m)->n_vocab, N = 3, P = 100, STEPS = 4;
    struct skv_gpu_model *gm = NULL;
    REQUIRE(skv_model_gpu(m, (skv_gpu_model **)&gm) == SKV_OK, "%s", skv_last_error());
    skv_gpu_ctx *b = NULL, *one[3] = {0};
    REQUIRE(skv_gpu_ctx_init(gm, 256, 64, N, NULL, &b) == SKV_OK, "%s", skv_last_error());
    int32_t ids[3][100];
    for (int s = 0; s < N; s++) {
        for (int i = 0; i < P; i++) ids[s][i] = (int32_t)((i * 2654435761u + 977u * s) % 8000 + 1);
        REQUIRE(skv_gpu_ctx_init(gm, 256, 64, 1, NULL, &one[s]) == SKV_OK, "%s", skv_last_error());
        for (int off = 0; off < P; off += 64) {
            const int k = P - off < 64 ? P - off : 64;
            CHECK(skv_gpu_forward(b, s, ids[s] + off, NULL, k, off, NULL, NULL, NULL, 0) == SKV_OK);
            CHECK(skv_gpu_forward(one[s], 0, ids[s] + off, NULL, k, off, NULL, NULL, NULL, 0) == SKV_OK);
        }
    }
    float *lb = malloc(sizeof(float) * (size_t)N * V), *l1 = malloc(sizeof(float) * (size_t)V);
    int32_t cur[3] = {5, 6, 7}, pos[3] = {P, P, P}, next[3];
    double worst = 0;
    for (int t = 0; t < STEPS; t++) {
        REQUIRE(skv_gpu_decode_batch(b, cur, pos, N, lb, next, NULL) == SKV_OK, "%s", skv_last_error());
        for (int s = 0; s < N; s++) {
            CHECK(skv_gpu_forward(one[s], 0, &cur[s], NULL, 1, pos[s], l1, NULL, NULL, 0) == SKV_OK);
            for (int v = 0; v < V; v++) worst = fmax(worst, fabs(l1[v] - lb[(int64_t)s * V + v]));
            CHECK(next[s] == skv_test_argmax(lb + (int64_t)s * V, V));
            cur[s] = next[s], pos[s]++;
        }
    }
    CHECKF(worst < 1e-3, "batched vs single decode: max |logit diff| %.3g", worst);
    /* fork through the public API */
    skv_context_params cp = skv_context_default_params();
    cp.backend = SKV_BACKEND_CUDA;
    cp.n_ctx = 256;
    skv_context *a = NULL, *f = NULL;
    REQUIRE(skv_context_init(m, cp, &a) == SKV_OK, "%s", skv_last_error());
    CHECK(skv_decode(a, ids[0], P, NULL, 0) == SKV_OK);
    const skv_policy_params full = skv_policy_default_params("full"), quant = skv_policy_default_params("quant");
    CHECK(skv_context_fork(a, &quant, &f) == SKV_ERR_UNSUPPORTED && !f);
    REQUIRE(skv_context_fork(a, &full, &f) == SKV_OK, "%s", skv_last_error());
    float *la = malloc(sizeof(float) * (size_t)V), *lf = malloc(sizeof(float) * (size_t)V);
    int32_t x = 42;
    CHECK(skv_decode(a, &x, 1, la, 0) == SKV_OK && skv_decode(f, &x, 1, lf, 0) == SKV_OK);
    CHECK(!memcmp(la, lf, sizeof(float) * (size_t)V));
    skv_context_free(a), skv_context_free(f);
    for (int s = 0; s < N; s++) skv_gpu_ctx_free(one[s]);
    skv_gpu_ctx_free(b);
    free(lb), free(l1), free(la), free(lf);
    skv_model_free(m);
}

/* A random Qwen2-style model with head_dim 128 and 4 query heads per KV head (the shape of the
 * large models' attention) against the double-precision reference: prefill in chunks whose
 * later ones start mid-sequence (causal offset), then single-token decode. */
static void test_tiny_hd128(void) {
    if (!have_gpu()) return;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/cuda-hd128", skv_test_tmpdir());
    const tiny_spec spec = {.arch = "Qwen2ForCausalLM", .dtype = "BF16", .vocab = 301, .dim = 512, .ffn = 768,
                            .layers = 2, .heads = 4, .kv_heads = 1, .head_dim = 128, .n_ctx = 512,
                            .rope_theta = 10000.0f, .rms_eps = 1e-6f, .seed = 11};
    tiny_model *t = tiny_write(dir, &spec);
    REQUIRE(t, "could not write the test model");
    enum { N = 300, D = 20 };
    const int V = spec.vocab;
    int32_t *ids = malloc(sizeof(int32_t) * (N + D));
    for (int i = 0; i < N + D; i++) ids[i] = (i * 37 + 11) % V;
    double *ref = malloc(sizeof(double) * (size_t)(N + D) * V);
    tiny_reference(t, ids, N + D, ref);
    skv_model *m = NULL;
    REQUIRE(skv_model_load(dir, skv_model_default_params(), &m) == SKV_OK, "%s", skv_last_error());
    skv_context_params cp = skv_context_default_params();
    cp.backend = SKV_BACKEND_CUDA;
    cp.n_batch = 128; /* chunks at positions 0, 128, 256 */
    skv_context *c = NULL;
    REQUIRE(skv_context_init(m, cp, &c) == SKV_OK, "%s", skv_last_error());
    float *lg = malloc(sizeof(float) * (size_t)(N + D) * V);
    CHECK(skv_decode(c, ids, N, lg, 1) == SKV_OK);
    for (int i = 0; i < D; i++) CHECK(skv_decode(c, ids + N + i, 1, lg + (size_t)(N + i) * V, 0) == SKV_OK);
    double worst = 0;
    for (int r = 0; r < N + D; r++) {
        double num = 0, den = 0;
        for (int v = 0; v < V; v++) {
            const double d = lg[(size_t)r * V + v] - ref[(size_t)r * V + v];
            num += d * d, den += ref[(size_t)r * V + v] * ref[(size_t)r * V + v];
        }
        worst = fmax(worst, sqrt(num / den));
    }
    printf("    head_dim 128, 4 heads per KV head: worst per-position relative L2 error %.2e\n", worst);
    CHECKF(worst < 2e-2, "relative L2 error %.3g against the double reference", worst);
    skv_context_free(c);
    skv_model_free(m);
    tiny_free(t);
    free(ids), free(ref), free(lg);
}

/* ---- the paged cache and its policies on the GPU ---------------------------------------- */

enum { PP = 300 }; /* prompt length of the policy tests */

static int32_t *prompt_ids(int n, int V, uint32_t seed) {
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n);
    for (int i = 0; i < n; i++) ids[i] = (int32_t)(skv_test_xorshift(&seed) % (uint32_t)(V - 1)) + 1;
    return ids;
}

static skv_context *ctx_with(skv_model *m, const char *policy, float budget, int stats, skv_backend b) {
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = 512, cp.n_batch = 128, cp.backend = b, cp.collect_stats = stats;
    cp.policy = skv_policy_default_params(policy);
    cp.policy.budget = budget;
    skv_context *c = NULL;
    if (skv_context_init(m, cp, &c)) return NULL;
    return c;
}

/* The GPU's attention statistics (accumulated, observation window) equal the CPU's within bf16
 * error, stream by stream, after a chunked prompt. */
static void test_stats_vs_cpu(void) {
    if (!have_gpu()) return;
    skv_model *m = skv_test_load_model("kvt-l", 2);
    REQUIRE(m, "kvt-l: %s", skv_last_error());
    const skv_model_info *in = skv_model_get_info(m);
    int32_t *ids = prompt_ids(PP, in->n_vocab, 7);
    skv_context *cg = ctx_with(m, "full", 1, 1, SKV_BACKEND_CUDA), *cc = ctx_with(m, "full", 1, 1, SKV_BACKEND_CPU);
    REQUIRE(cg && cc, "%s", skv_last_error());
    REQUIRE(skv_decode(cg, ids, PP, NULL, 0) == SKV_OK && skv_decode(cc, ids, PP, NULL, 0) == SKV_OK, "%s",
            skv_last_error());
    int32_t x = 11; /* one decode step: its attention adds to acc */
    REQUIRE(skv_decode(cg, &x, 1, NULL, 0) == SKV_OK && skv_decode(cc, &x, 1, NULL, 0) == SKV_OK, "%s", skv_last_error());
    float *ga = malloc(sizeof(float) * 512), *gw = malloc(sizeof(float) * 512);
    int32_t *gp = malloc(sizeof(int32_t) * 512);
    double worst_a = 0, worst_w = 0, sum_a = 0, l1_a = 0, l1_w = 0, n1_a = 0, n1_w = 0;
    for (int l = 0; l < in->n_layer; l++)
        for (int g = 0; g < in->n_kv_head; g++) {
            int32_t n = 0;
            REQUIRE(skv_gpu_stream_read(cg->bs, l, 0, g, &n, gp, ga, gw, NULL, NULL, NULL) == SKV_OK, "%s", skv_last_error());
            const skv_stream *st = skv_cache_stream(&((skv_cpu *)cc->bs)->cache, l, g);
            CHECKF(n == st->n && n == PP + 1, "layer %d head %d: %d slots on the GPU, %d on the CPU", l, g, n, st->n);
            for (int s = 0; s < n && s < st->n; s++) {
                CHECKF(gp[s] == st->pos[s], "slot %d: position %d vs %d", s, gp[s], st->pos[s]);
                worst_a = fmax(worst_a, fabs(ga[s] - st->acc[s]) / fmax(1.0, fabs(st->acc[s])));
                worst_w = fmax(worst_w, fabs(gw[s] - st->win[s]) / fmax(1.0, fabs(st->win[s])));
                l1_a += fabs(ga[s] - st->acc[s]), n1_a += fabs(st->acc[s]);
                l1_w += fabs(gw[s] - st->win[s]), n1_w += fabs(st->win[s]);
                sum_a += ga[s];
            }
        }
    /* every query's attention sums to 1 per head and layer */
    const double expect = (double)(PP + 1) * in->n_head * in->n_layer;
    printf("    statistics GPU vs CPU: relative L1 error acc %.2e, win %.2e; worst slot (relative, floor 1) acc "
           "%.2e, win %.2e; acc total %.1f of %.0f\n", l1_a / n1_a, l1_w / n1_w, worst_a, worst_w, sum_a, expect);
    CHECKF(l1_a / n1_a < 2e-2 && l1_w / n1_w < 2e-2, "statistics differ: acc %.3g, win %.3g (L1)", l1_a / n1_a,
           l1_w / n1_w);
    CHECKF(worst_a < 0.15 && worst_w < 0.15, "statistics differ: worst slot acc %.3g, win %.3g", worst_a, worst_w);
    CHECKF(fabs(sum_a - expect) < 1e-3 * expect, "acc sums to %.2f, not %.0f", sum_a, expect);
    skv_context_free(cg), skv_context_free(cc);
    free(ga), free(gw), free(gp), free(ids);
    skv_model_free(m);
}

static int cmp_i32(const void *a, const void *b) {
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return x < y ? -1 : x > y;
}

/* Fork a GPU source (statistics on) into window, h2o, snapkv and pyramidkv: every stream keeps
 * exactly the slots the CPU's selection functions choose from the GPU's own scores, with their
 * K and V rows unchanged; the kept sets overlap the CPU backend's own choice; then decode steps
 * hold the budget (window: the exact sink + recent set; h2o: the victim had the least
 * attention). */
static void test_policies_brute(void) {
    if (!have_gpu()) return;
    skv_model *m = skv_test_load_model("kvt-l", 2);
    REQUIRE(m, "kvt-l: %s", skv_last_error());
    const skv_model_info *in = skv_model_get_info(m);
    const int L = in->n_layer, KVH = in->n_kv_head, hd = in->head_dim;
    int32_t *ids = prompt_ids(PP, in->n_vocab, 9);
    skv_context *src = ctx_with(m, "full", 1, 1, SKV_BACKEND_CUDA), *csrc = ctx_with(m, "full", 1, 1, SKV_BACKEND_CPU);
    REQUIRE(src && csrc, "%s", skv_last_error());
    REQUIRE(skv_decode(src, ids, PP, NULL, 0) == SKV_OK && skv_decode(csrc, ids, PP, NULL, 0) == SKV_OK, "%s",
            skv_last_error());
    int32_t *pos = malloc(sizeof(int32_t) * 512), *fp = malloc(sizeof(int32_t) * 512), *cp_ = malloc(sizeof(int32_t) * 512);
    float *acc = malloc(sizeof(float) * 512), *win = malloc(sizeof(float) * 512), *lst = malloc(sizeof(float) * 512);
    float *k0 = malloc(sizeof(float) * 512 * hd), *v0 = malloc(sizeof(float) * 512 * hd);
    float *k1 = malloc(sizeof(float) * 512 * hd), *v1 = malloc(sizeof(float) * 512 * hd);
    uint8_t *keep = malloc(512);
    const char *pols[] = {"window", "h2o", "snapkv", "pyramidkv", "tova"};
    for (int pi = 0; pi < 5; pi++) {
        skv_policy_params pp = skv_policy_default_params(pols[pi]);
        pp.budget = 0.3f;
        const skv_policy_ops *kind = NULL;
        const skv_policy_env env = {.head_dim = hd, .n_layer = L};
        REQUIRE(skv_policy_parse(&pp, &env, &kind) == SKV_OK, "%s", skv_last_error());
        skv_context *f = NULL, *cf = NULL;
        REQUIRE(skv_context_fork(src, &pp, &f) == SKV_OK, "fork %s: %s", pols[pi], skv_last_error());
        REQUIRE(skv_context_fork(csrc, &pp, &cf) == SKV_OK, "cpu fork %s: %s", pols[pi], skv_last_error());
        int exact = 1, rows_ok = 1;
        double inter = 0, uni = 0;
        for (int l = 0; l < L; l++)
            for (int g = 0; g < KVH; g++) {
                int32_t n = 0, nf = 0;
                REQUIRE(skv_gpu_stream_read(src->bs, l, 0, g, &n, pos, acc, win, lst, k0, v0) == SKV_OK, "%s", skv_last_error());
                REQUIRE(skv_gpu_stream_read(f->bs, l, 0, g, &nf, fp, NULL, NULL, NULL, k1, v1) == SKV_OK, "%s", skv_last_error());
                const int32_t b = skv_policy_budget(kind, &pp, l, L, PP);
                if (!strcmp(kind->name, "window")) skv_select_window(pos, n, b, pp.sinks, keep);
                else if (!strcmp(kind->name, "h2o")) skv_select_h2o(pos, acc, n, b, pp.recent_frac, keep);
                else if (!strcmp(kind->name, "tova")) skv_select_tova(pos, lst, n, b, keep);
                else skv_select_snapkv(pos, win, n, b, pp.obs_window, pp.pool_kernel, keep);
                int32_t m_ = 0;
                for (int s = 0; s < n; s++)
                    if (keep[s]) cp_[m_++] = pos[s];
                if (m_ != nf) exact = 0;
                for (int s = 0; s < nf && s < m_; s++) exact &= fp[s] == cp_[s]; /* stable: same order */
                /* rows moved intact: slot s of the fork holds the source's row of its position */
                for (int s = 0; s < nf; s++)
                    rows_ok &= !memcmp(k1 + (size_t)s * hd, k0 + (size_t)fp[s] * hd, sizeof(float) * hd) &&
                               !memcmp(v1 + (size_t)s * hd, v0 + (size_t)fp[s] * hd, sizeof(float) * hd);
                /* against the CPU backend's own choice */
                int32_t nc = skv_context_kept(cf, l, g, cp_);
                qsort(cp_, (size_t)nc, sizeof *cp_, cmp_i32);
                qsort(fp, (size_t)nf, sizeof *fp, cmp_i32);
                int i = 0, j = 0, both = 0;
                while (i < nf && j < nc) {
                    if (fp[i] == cp_[j]) both++, i++, j++;
                    else if (fp[i] < cp_[j]) i++;
                    else j++;
                }
                inter += both, uni += nf + nc - both;
            }
        printf("    %-9s budget 0.3: GPU selection = brute force on its scores: %s; rows intact: %s; "
               "Jaccard with the CPU backend's sets %.3f\n", pols[pi], exact ? "yes" : "NO", rows_ok ? "yes" : "NO",
               inter / uni);
        CHECKF(exact, "%s: the GPU kept a different set than skv_select_* on the same scores", pols[pi]);
        CHECKF(rows_ok, "%s: K or V rows changed in compaction", pols[pi]);
        CHECKF(inter / uni > 0.85, "%s: kept sets overlap the CPU's at Jaccard %.3f", pols[pi], inter / uni);
        /* decode steps */
        int32_t tok = 17;
        int step_ok = 1;
        for (int t = 0; t < 6; t++) {
            int32_t nb[64];
            float *accb = malloc(sizeof(float) * (size_t)L * KVH * 512);
            int32_t *posb = malloc(sizeof(int32_t) * (size_t)L * KVH * 512);
            for (int l = 0; l < L; l++)
                for (int g = 0; g < KVH; g++)
                    skv_gpu_stream_read(f->bs, l, 0, g, &nb[l * KVH + g], posb + (size_t)(l * KVH + g) * 512, accb + (size_t)(l * KVH + g) * 512, NULL, NULL, NULL, NULL);
            REQUIRE(skv_decode(f, &tok, 1, NULL, 0) == SKV_OK, "%s", skv_last_error());
            const int newest = PP + t;
            for (int l = 0; l < L; l++)
                for (int g = 0; g < KVH; g++) {
                    int32_t n = 0;
                    skv_gpu_stream_read(f->bs, l, 0, g, &n, pos, acc, NULL, NULL, NULL, NULL);
                    const int32_t b = f->pol.budget_now[l];
                    const int evicting = kind->evict(&pp).step;
                    const int want_n = evicting ? b : nb[l * KVH + g] + 1;
                    if (n != want_n) step_ok = 0;
                    if (!strcmp(kind->name, "window")) { /* exactly sinks + the newest b - sinks */
                        qsort(pos, (size_t)n, sizeof *pos, cmp_i32);
                        for (int s = 0; s < n; s++) {
                            const int want = s < pp.sinks ? s : newest - (n - 1 - s);
                            if (pos[s] != want) step_ok = 0;
                        }
                    } else if (!strcmp(kind->name, "h2o")) { /* the victim's acc before <= every candidate's after */
                        const int32_t *pb = posb + (size_t)(l * KVH + g) * 512;
                        const float *ab = accb + (size_t)(l * KVH + g) * 512;
                        const int recent = (int)lrintf(pp.recent_frac * (float)b);
                        for (int s = 0; s < nb[l * KVH + g]; s++) {
                            int found = 0;
                            for (int u = 0; u < n; u++) found |= pos[u] == pb[s];
                            if (found) continue; /* pb[s] was the victim */
                            if (pb[s] > newest - recent) step_ok = 0;
                            for (int u = 0; u < n; u++)
                                if (pos[u] <= newest - recent && acc[u] < ab[s] - 1e-6f) step_ok = 0;
                        }
                    }
                }
            free(accb), free(posb);
            tok = (tok * 31 + 7) % in->n_vocab;
        }
        CHECKF(step_ok, "%s: decode steps broke the budget or the eviction rule", pols[pi]);
        skv_context_free(f), skv_context_free(cf);
    }
    skv_context_free(src), skv_context_free(csrc);
    free(pos), free(fp), free(cp_), free(acc), free(win), free(lst), free(k0), free(v0), free(k1), free(v1), free(keep);
    free(ids);
    skv_model_free(m);
}

/* A GPU context created with a policy (compressing its own prompt) tracks the CPU backend's
 * logits under the same policy (window: the same kept set) and keeps as many slots. */
static void test_policy_logits(void) {
    if (!have_gpu()) return;
    skv_model *m = skv_test_load_model("kvt-l", 2);
    REQUIRE(m, "kvt-l: %s", skv_last_error());
    const int V = skv_model_get_info(m)->n_vocab;
    int32_t *ids = prompt_ids(PP, V, 13);
    float *lg = malloc(sizeof(float) * V), *lc = malloc(sizeof(float) * V);
    const char *pols[] = {"window", "h2o", "snapkv"};
    for (int pi = 0; pi < 3; pi++) {
        skv_context *g = ctx_with(m, pols[pi], 0.3f, 0, SKV_BACKEND_CUDA), *c = ctx_with(m, pols[pi], 0.3f, 0, SKV_BACKEND_CPU);
        REQUIRE(g && c, "%s: %s", pols[pi], skv_last_error());
        REQUIRE(skv_decode(g, ids, PP, lg, 0) == SKV_OK && skv_decode(c, ids, PP, lc, 0) == SKV_OK, "%s", skv_last_error());
        double worst = 0;
        int agree = 0;
        int32_t tok = skv_test_argmax(lc, V);
        for (int t = 0; t < 16; t++) {
            REQUIRE(skv_decode(g, &tok, 1, lg, 0) == SKV_OK && skv_decode(c, &tok, 1, lc, 0) == SKV_OK, "%s",
                    skv_last_error());
            double num = 0, den = 0;
            for (int v = 0; v < V; v++) num += (lg[v] - lc[v]) * (lg[v] - lc[v]), den += (double)lc[v] * lc[v];
            worst = fmax(worst, sqrt(num / den));
            agree += skv_test_argmax(lg, V) == skv_test_argmax(lc, V);
            tok = skv_test_argmax(lc, V);
        }
        skv_kv_usage ug, uc;
        skv_context_kv_usage(g, &ug), skv_context_kv_usage(c, &uc);
        printf("    %-7s 0.3: GPU vs CPU over 16 steps: worst logits relative L2 %.2e, top-1 agrees %d/16; "
               "slots %lld vs %lld\n", pols[pi], worst, agree, (long long)ug.slots, (long long)uc.slots);
        CHECKF(ug.slots == uc.slots, "%s: %lld slots on the GPU, %lld on the CPU", pols[pi], (long long)ug.slots,
               (long long)uc.slots);
        if (!strcmp(pols[pi], "window")) CHECKF(worst < 2e-2, "window: logits differ by %.3g", worst);
        CHECKF(agree >= 14, "%s: top-1 agrees at only %d of 16 steps", pols[pi], agree);
        skv_context_free(g), skv_context_free(c);
    }
    free(lg), free(lc), free(ids);
    skv_model_free(m);
}

/* Truncation forgets exactly the later tokens; V in the slow tier (pinned host memory) gives the
 * same logits, and the asynchronous fetch returns the rows the cache holds. */
static void test_truncate_slow_fetch(void) {
    if (!have_gpu()) return;
    skv_model *m = skv_test_load_model("kvt-l", 2);
    REQUIRE(m, "kvt-l: %s", skv_last_error());
    const skv_model_info *in = skv_model_get_info(m);
    const int V = in->n_vocab, hd = in->head_dim;
    int32_t *ids = prompt_ids(140, V, 21);
    skv_context *a = ctx_with(m, "full", 1, 0, SKV_BACKEND_CUDA);
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = 512, cp.n_batch = 128, cp.backend = SKV_BACKEND_CUDA, cp.v_slow = 1;
    skv_context *s = NULL;
    REQUIRE(a && skv_context_init(m, cp, &s) == SKV_OK, "%s", skv_last_error());
    float *l1 = malloc(sizeof(float) * V), *l2 = malloc(sizeof(float) * V), *l3 = malloc(sizeof(float) * V);
    CHECK(skv_decode(a, ids, 100, NULL, 0) == SKV_OK && skv_decode(a, ids + 100, 40, l1, 0) == SKV_OK);
    CHECK(skv_context_truncate(a, 100) == SKV_OK && skv_context_n_past(a) == 100);
    CHECK(skv_decode(a, ids + 100, 40, l2, 0) == SKV_OK);
    CHECKF(!memcmp(l1, l2, sizeof(float) * V), "logits after truncate + re-decode differ");
    CHECK(skv_decode(s, ids, 100, NULL, 0) == SKV_OK && skv_decode(s, ids + 100, 40, l3, 0) == SKV_OK);
    CHECKF(!memcmp(l1, l3, sizeof(float) * V), "V in the slow tier changes the logits");
    skv_kv_usage u;
    skv_context_kv_usage(s, &u);
    CHECKF(u.bytes_slow * 2 == u.bytes && u.bytes_fast == u.bytes_slow, "slow tier holds %lld of %lld bytes",
           (long long)u.bytes_slow, (long long)u.bytes);
    const int32_t rows[5] = {0, 5, 64, 99, 139};
    void *dev = NULL;
    REQUIRE(skv_gpu_scratch((int64_t)5 * hd * 2, &dev) == SKV_OK, "%s", skv_last_error());
    CHECK(skv_gpu_fetch_v(s->bs, 1, 0, 0, rows, 5, dev) == SKV_OK && skv_gpu_fetch_wait(s->bs) == SKV_OK);
    uint16_t *got = malloc(sizeof(uint16_t) * 5 * hd);
    float *vv = malloc(sizeof(float) * 512 * hd);
    int32_t n = 0;
    CHECK(skv_gpu_download(got, dev, (int64_t)5 * hd * 2) == SKV_OK);
    CHECK(skv_gpu_stream_read(s->bs, 1, 0, 0, &n, NULL, NULL, NULL, NULL, NULL, vv) == SKV_OK && n == 140);
    int same = 1;
    for (int r = 0; r < 5; r++)
        for (int d = 0; d < hd; d++) {
            const union { uint32_t u; float f; } x = {.u = (uint32_t)got[r * hd + d] << 16};
            same &= x.f == vv[(size_t)rows[r] * hd + d];
        }
    CHECKF(same, "fetched V rows differ from the cache's");
    const int32_t bad = 140;
    CHECK(skv_gpu_fetch_v(s->bs, 1, 0, 0, &bad, 1, dev) == SKV_ERR_ARG);
    skv_gpu_scratch_free(dev);
    skv_context_free(a), skv_context_free(s);
    free(l1), free(l2), free(l3), free(got), free(vv), free(ids);
    skv_model_free(m);
}

/* Sampling on the GPU draws what the CPU sampler draws from the same logits and the same seed:
 * temperature, top-k, top-p and the repetition penalty, over many steps. */
static void test_sampling(void) {
    if (!have_gpu()) return;
    skv_model *m = skv_test_load_model("kvt-l", 2);
    REQUIRE(m, "kvt-l: %s", skv_last_error());
    const int V = skv_model_get_info(m)->n_vocab;
    int32_t *ids = prompt_ids(64, V, 5);
    const struct { float t; int k; float p, pen; } cfg[] = {
        {0.0f, 0, 1.0f, 1.0f}, {1.0f, 0, 1.0f, 1.0f}, {0.8f, 40, 1.0f, 1.0f}, {0.8f, 0, 0.9f, 1.0f},
        {0.7f, 50, 0.95f, 1.3f}, {1.5f, 0, 0.5f, 1.1f}};
    float *lg = malloc(sizeof(float) * V);
    int32_t *seen = malloc(sizeof(int32_t) * 512);
    int agree = 0, total = 0;
    for (size_t ci = 0; ci < sizeof cfg / sizeof cfg[0]; ci++) {
        skv_sampler_params sp = skv_sampler_default_params();
        sp.temperature = cfg[ci].t, sp.top_k = cfg[ci].k, sp.top_p = cfg[ci].p, sp.repetition_penalty = cfg[ci].pen;
        sp.seed = 100 + ci;
        skv_sampler *sg = NULL, *sc = NULL;
        REQUIRE(skv_sampler_init(sp, V, &sg) == SKV_OK && skv_sampler_init(sp, V, &sc) == SKV_OK, "%s", skv_last_error());
        skv_context *g = ctx_with(m, "full", 1, 0, SKV_BACKEND_CUDA);
        REQUIRE(g, "%s", skv_last_error());
        CHECK(skv_decode(g, ids, 64, NULL, 0) == SKV_OK);
        for (int i = 0; i < 64; i++) skv_sampler_accept(sg, ids[i]), skv_sampler_accept(sc, ids[i]);
        int32_t tok = ids[63] % 100 + 1, ci_agree = 0;
        for (int t = 0; t < 40; t++) {
            skv_gpu_sample gs;
            skv_sampler_args(sg, &gs, seen);
            const int32_t pos = skv_context_n_past(g);
            int32_t next = -1;
            REQUIRE(skv_gpu_decode_batch(g->bs, &tok, &pos, 1, lg, &next, &gs) == SKV_OK, "%s", skv_last_error());
            g->n_past++;
            const int32_t want = skv_sampler_sample(sc, lg); /* same logits, same stream */
            ci_agree += next == want;
            skv_sampler_accept(sg, next), skv_sampler_accept(sc, next);
            tok = next;
        }
        printf("    t=%.1f k=%d p=%.2f penalty=%.1f: GPU draw = CPU draw at %d/40 steps\n", cfg[ci].t, cfg[ci].k,
               cfg[ci].p, cfg[ci].pen, ci_agree);
        agree += ci_agree, total += 40;
        /* and through the public call: ids in range, the context advances */
        int32_t nx = -1;
        CHECK(skv_decode_sampled(g, tok, sg, &nx) == SKV_OK && nx >= 0 && nx < V);
        skv_context_free(g);
        skv_sampler_free(sg), skv_sampler_free(sc);
    }
    CHECKF(agree >= total - 2, "GPU and CPU draws agree at only %d of %d steps", agree, total);
    free(lg), free(seen), free(ids);
    skv_model_free(m);
}

/* Export/import: a GPU cache imported into a fresh GPU context decodes bit-identically; a CPU
 * (bf16) cache imported on the GPU and exported back decodes on the CPU bit-identically to the
 * original; the GPU decoding the CPU's cache tracks the CPU within bf16 tolerance; a corrupt
 * buffer is refused. */
static void test_exchange(void) {
    if (!have_gpu()) return;
    skv_model *m = skv_test_load_model("kvt-l", 2);
    REQUIRE(m, "kvt-l: %s", skv_last_error());
    const skv_model_info *in = skv_model_get_info(m);
    const int V = in->n_vocab;
    int32_t *ids = prompt_ids(PP, V, 21);
    static float la[8192], lb[8192];
    const char *pols[] = {"full", "snapkv"};
    for (int pi = 0; pi < 2; pi++) {
        const float bud = pi ? 0.3f : 0;
        skv_context *a = ctx_with(m, pols[pi], bud, 0, SKV_BACKEND_CUDA), *b = ctx_with(m, pols[pi], bud, 0, SKV_BACKEND_CUDA);
        REQUIRE(a && b, "%s", skv_last_error());
        REQUIRE(skv_decode(a, ids, PP, NULL, 0) == SKV_OK, "%s", skv_last_error());
        void *buf;
        size_t len;
        REQUIRE(skv_context_export(a, &buf, &len) == SKV_OK, "%s", skv_last_error());
        CHECKF(skv_context_import(b, buf, len) == SKV_OK, "%s", skv_last_error());
        int same = 1;
        int32_t tok = 99;
        for (int t = 0; t < 6; t++) {
            CHECK(skv_decode(a, &tok, 1, la, 0) == SKV_OK && skv_decode(b, &tok, 1, lb, 0) == SKV_OK);
            same &= !memcmp(la, lb, sizeof la);
            tok = skv_test_argmax(la, V);
        }
        printf("    %-6s GPU export (%zu bytes) -> GPU import: %s\n", pols[pi], len, same ? "bit-identical" : "DIFFERENT");
        CHECKF(same, "%s: the imported GPU cache decodes differently", pols[pi]);
        ((uint8_t *)buf)[len / 2] ^= 1;
        skv_context *c = ctx_with(m, pols[pi], bud, 0, SKV_BACKEND_CUDA);
        CHECK(skv_context_import(c, buf, len) == SKV_ERR_FORMAT);
        skv_context_free(a), skv_context_free(b), skv_context_free(c);
        free(buf);
    }
    /* CPU (bf16) -> GPU -> CPU */
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = 512;
    cp.kv_format = SKV_KV_BF16;
    skv_context *cpu = NULL, *cpu2 = NULL, *gpu = NULL, *gref = ctx_with(m, "full", 0, 0, SKV_BACKEND_CUDA);
    REQUIRE(skv_context_init(m, cp, &cpu) == SKV_OK && skv_context_init(m, cp, &cpu2) == SKV_OK && gref, "%s",
            skv_last_error());
    cp.backend = SKV_BACKEND_CUDA;
    REQUIRE(skv_context_init(m, cp, &gpu) == SKV_OK, "%s", skv_last_error());
    REQUIRE(skv_decode(cpu, ids, PP, NULL, 0) == SKV_OK && skv_decode(gref, ids, PP, NULL, 0) == SKV_OK, "%s",
            skv_last_error());
    void *b1, *b2;
    size_t n1, n2;
    REQUIRE(skv_context_export(cpu, &b1, &n1) == SKV_OK, "%s", skv_last_error());
    REQUIRE(skv_context_import(gpu, b1, n1) == SKV_OK, "CPU -> GPU import: %s", skv_last_error());
    REQUIRE(skv_context_export(gpu, &b2, &n2) == SKV_OK, "%s", skv_last_error());
    REQUIRE(skv_context_import(cpu2, b2, n2) == SKV_OK, "GPU -> CPU import: %s", skv_last_error());
    int same = 1;
    double worst = 0, worst_self = 0;
    static float lg[8192], lr[8192];
    int32_t tok = 5;
    for (int t = 0; t < 4; t++) {
        CHECK(skv_decode(cpu, &tok, 1, la, 0) == SKV_OK && skv_decode(cpu2, &tok, 1, lb, 0) == SKV_OK);
        CHECK(skv_decode(gpu, &tok, 1, lg, 0) == SKV_OK && skv_decode(gref, &tok, 1, lr, 0) == SKV_OK);
        same &= !memcmp(la, lb, sizeof la);
        double d = 0, ds = 0, nn = 0;
        for (int v = 0; v < V; v++) d += (lg[v] - la[v]) * (lg[v] - la[v]), ds += (lg[v] - lr[v]) * (lg[v] - lr[v]), nn += la[v] * la[v];
        worst = fmax(worst, sqrt(d / nn)), worst_self = fmax(worst_self, sqrt(ds / nn));
        tok = skv_test_argmax(la, V);
    }
    printf("    CPU bf16 cache -> GPU -> CPU: %s; GPU decoding the CPU's cache vs CPU: rel L2 %.2e (GPU's own cache: "
           "%.2e)\n", same ? "bit-identical" : "DIFFERENT", worst, worst_self);
    CHECKF(same, "CPU -> GPU -> CPU round trip changed the cache");
    CHECKF(worst < 2e-2, "the GPU decoding an imported CPU cache is off by %.3g", worst);
    free(b1), free(b2);
    skv_context_free(cpu), skv_context_free(cpu2), skv_context_free(gpu), skv_context_free(gref);
    free(ids);
    skv_model_free(m);
}

/* Embedding input on the GPU: prefill and a decode step from the model's own embedding rows
 * give the id input's logits bit for bit; the hidden state comes back. */
static void test_embd_gpu(void) {
    if (!have_gpu()) return;
    skv_model *m = skv_test_load_model("kvt-l", 2);
    REQUIRE(m, "kvt-l: %s", skv_last_error());
    const skv_model_info *in = skv_model_get_info(m);
    const int D = in->dim, V = in->n_vocab;
    int32_t *ids = prompt_ids(PP + 1, V, 33);
    float *e = malloc(sizeof(float) * (size_t)(PP + 1) * D);
    for (int i = 0; i <= PP; i++) skv_weight_row_f32(&m->tok_embed, ids[i], e + (size_t)i * D);
    skv_context *a = ctx_with(m, "full", 0, 0, SKV_BACKEND_CUDA), *b = ctx_with(m, "full", 0, 0, SKV_BACKEND_CUDA);
    REQUIRE(a && b, "%s", skv_last_error());
    static float la[8192], lb[8192];
    float *h = malloc(sizeof(float) * (size_t)D), *hn = malloc(sizeof(float) * (size_t)D);
    CHECK(skv_decode(a, ids, PP, la, 0) == SKV_OK);
    const skv_batch pb = {.embd = e, .n = PP, .logits = lb, .hidden = h, .hidden_normed = hn};
    CHECK(skv_decode_ex(b, &pb) == SKV_OK);
    const int pre = !memcmp(la, lb, sizeof la);
    CHECK(skv_decode(a, ids + PP, 1, la, 0) == SKV_OK);
    const skv_batch sb = {.embd = e + (size_t)PP * D, .n = 1, .logits = lb, .hidden = h};
    CHECK(skv_decode_ex(b, &sb) == SKV_OK);
    const int step = !memcmp(la, lb, sizeof la);
    double hs = 0;
    for (int d = 0; d < D; d++) hs += fabs(h[d]);
    printf("    embedding input on the GPU: prefill %s, decode step %s; |hidden|_1 %.3g\n", pre ? "bit-identical" : "DIFFERENT",
           step ? "bit-identical" : "DIFFERENT", hs);
    CHECK(pre && step && hs > 0);
    free(e), free(h), free(hn), free(ids);
    skv_context_free(a), skv_context_free(b);
    skv_model_free(m);
}

/* Decode of N sequences together (N = 5: the tensor-core GEMV; 12, 40: cuBLAS) against each
 * sequence decoded alone (the one-warp-per-row GEMV), the batch's greedy ids fed to both:
 * logits within bf16 rounding of each other (relative L2 per sequence and step), the same
 * greedy ids. */
static double rel_l2(const float *a, const float *ref, int n) {
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) num += (double)(a[i] - ref[i]) * (a[i] - ref[i]), den += (double)ref[i] * ref[i];
    return sqrt(num / den);
}

static void batch_vs_single(skv_gpu_model *gm, int V, int N) {
    enum { P = 60, STEPS = 3 };
    skv_gpu_ctx *b = NULL, *one = NULL;
    REQUIRE(skv_gpu_ctx_init(gm, 128, 64, N, NULL, &b) == SKV_OK, "%s", skv_last_error());
    REQUIRE(skv_gpu_ctx_init(gm, 128, 64, 1, NULL, &one) == SKV_OK, "%s", skv_last_error());
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)N * P), *tok = malloc(sizeof(int32_t) * (size_t)N * (STEPS + 1));
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)N), *next = malloc(sizeof(int32_t) * (size_t)N);
    float *lb = malloc(sizeof(float) * (size_t)N * STEPS * V), *l1 = malloc(sizeof(float) * (size_t)V);
    for (int s = 0; s < N; s++) {
        for (int i = 0; i < P; i++) ids[s * P + i] = (int32_t)((i * 2654435761u + 7919u * s) % (uint32_t)(V - 1) + 1);
        CHECK(skv_gpu_forward(b, s, ids + s * P, NULL, P, 0, NULL, NULL, NULL, 0) == SKV_OK);
        tok[s] = (int32_t)(s % (V - 1) + 1), pos[s] = P;
    }
    for (int t = 0; t < STEPS; t++) {
        REQUIRE(skv_gpu_decode_batch(b, tok + t * N, pos, N, lb + (size_t)t * N * V, next, NULL) == SKV_OK, "%s",
                skv_last_error());
        for (int s = 0; s < N; s++) tok[(t + 1) * N + s] = next[s], pos[s]++;
    }
    double worst = 0;
    int same = 0;
    for (int s = 0; s < N; s++) {
        CHECK(skv_gpu_truncate(one, 0, 0) == SKV_OK);
        CHECK(skv_gpu_forward(one, 0, ids + s * P, NULL, P, 0, NULL, NULL, NULL, 0) == SKV_OK);
        for (int t = 0; t < STEPS; t++) {
            CHECK(skv_gpu_forward(one, 0, tok + t * N + s, NULL, 1, P + t, l1, NULL, NULL, 0) == SKV_OK);
            worst = fmax(worst, rel_l2(lb + ((size_t)t * N + s) * V, l1, V));
            same += skv_test_argmax(l1, V) == tok[(t + 1) * N + s];
        }
    }
    printf("    %d sequences decoded together vs alone: logits relative L2 <= %.2e, greedy ids equal at %d/%d\n", N,
           worst, same, N * STEPS);
    CHECKF(worst < 5e-3 && same >= N * STEPS * 9 / 10, "batch of %d vs single decode: relative L2 %.3g, ids equal %d/%d",
           N, worst, same, N * STEPS);
    skv_gpu_ctx_free(b), skv_gpu_ctx_free(one);
    free(ids), free(tok), free(pos), free(next), free(lb), free(l1);
}

/* logits (5, V) of the third decode step of 5 sequences after their prompts, in a context made
 * under the given switches (gpu_ctx.cuh) */
static void step_logits(skv_gpu_model *gm, int V, const char *pdl, const char *gemv, float *out) {
    enum { N = 5, P = 40 };
    setenv("SKV_CUDA_PDL", pdl, 1), setenv("SKV_CUDA_GEMV", gemv, 1);
    skv_gpu_ctx *c = NULL;
    const skv_status st = skv_gpu_ctx_init(gm, 128, 64, N, NULL, &c);
    unsetenv("SKV_CUDA_PDL"), unsetenv("SKV_CUDA_GEMV");
    REQUIRE(st == SKV_OK, "%s", skv_last_error());
    int32_t ids[P], tok[N], pos[N];
    for (int s = 0; s < N; s++) {
        for (int i = 0; i < P; i++) ids[i] = (int32_t)((i * 40503u + 17u * s) % (uint32_t)(V - 1) + 1);
        CHECK(skv_gpu_forward(c, s, ids, NULL, P, 0, NULL, NULL, NULL, 0) == SKV_OK);
        tok[s] = ids[s], pos[s] = P;
    }
    for (int t = 0; t < 3; t++) {
        REQUIRE(skv_gpu_decode_batch(c, tok, pos, N, out, NULL, NULL) == SKV_OK, "%s", skv_last_error());
        for (int s = 0; s < N; s++) tok[s] = (tok[s] * 7 + t) % (V - 1) + 1, pos[s]++;
    }
    skv_gpu_ctx_free(c);
}

static void test_batch_sizes(void) {
    if (!have_gpu()) return;
    skv_model *m = skv_test_load_model("kvt-l", 0);
    REQUIRE(m, "kvt-l: %s", skv_last_error());
    const int V = skv_model_get_info(m)->n_vocab;
    skv_gpu_model *gm = NULL;
    REQUIRE(skv_model_gpu(m, &gm) == SKV_OK, "%s", skv_last_error());
    batch_vs_single(gm, V, 5);
    batch_vs_single(gm, V, 12);
    batch_vs_single(gm, V, 40);
    /* the switches on a batch of 5: early launches on = off bit-identical; the tensor-core GEMV
     * (SwiGLU fused) = the one-warp-per-row GEMV to bf16 rounding */
    const size_t nb = sizeof(float) * 5 * (size_t)V;
    float *a = malloc(nb), *b = malloc(nb), *o = malloc(nb);
    step_logits(gm, V, "1", "1", a);
    step_logits(gm, V, "0", "1", b);
    step_logits(gm, V, "1", "0", o);
    const int pdl_same = !memcmp(a, b, nb);
    double worst = 0;
    int top = 1;
    for (int s = 0; s < 5; s++) {
        worst = fmax(worst, rel_l2(a + (size_t)s * V, o + (size_t)s * V, V));
        top &= skv_test_argmax(a + (size_t)s * V, V) == skv_test_argmax(o + (size_t)s * V, V);
    }
    printf("    batch of 5: early launches on = off: %s; tensor-core vs one-warp GEMV: relative L2 <= %.2e, top-1 %s\n",
           pdl_same ? "bit-identical" : "DIFFERENT", worst, top ? "equal" : "DIFFERENT");
    CHECK(pdl_same);
    CHECKF(worst < 1e-2 && top, "tensor-core vs one-warp GEMV: relative L2 %.3g", worst);
    free(a), free(b), free(o);
    skv_model_free(m);
}


/* The batch-invariant mode (batch_invariant = 1): sequences of mixed prompt lengths (chunked
 * prefill, some a single chunk, some several) decoded together in batches of 1, 3, 8 and 17
 * give each sequence's logits bit for bit as the same sequence decoded alone, step after step,
 * on kvt-s and kvt-l; the same comparison under the default kernels is printed (not asserted:
 * it differs where rounding differs). */
static void binv_rows_equal(skv_model *m, int N, int binv, int *equal, int *rows) {
    enum { STEPS = 3, P_MAX = 200 };
    const int V = skv_model_get_info(m)->n_vocab;
    skv_context_params cp = skv_context_default_params();
    cp.backend = SKV_BACKEND_CUDA, cp.n_ctx = 256, cp.n_batch = 64, cp.batch_invariant = binv;
    skv_context *one = NULL, *b = NULL;
    REQUIRE(skv_context_init(m, cp, &one) == SKV_OK, "%s", skv_last_error());
    cp.n_seq = N;
    REQUIRE(skv_context_init(m, cp, &b) == SKV_OK, "%s", skv_last_error());
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)N * P_MAX), *len = malloc(sizeof(int32_t) * (size_t)N);
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)N * (STEPS + 1)), *next = malloc(sizeof(int32_t) * (size_t)N);
    float *lb = malloc(sizeof(float) * (size_t)N * STEPS * V), *l1 = malloc(sizeof(float) * (size_t)V);
    for (int s = 0; s < N; s++) {
        len[s] = 2 + (s * 37 + N * 11) % 190; /* 2..191 tokens: one to four chunks of 64 */
        for (int i = 0; i < len[s]; i++) ids[s * P_MAX + i] = (int32_t)((i * 2654435761u + 7919u * s + 31u * N) % (uint32_t)(V - 1) + 1);
        REQUIRE(skv_seq_decode(b, s, ids + s * P_MAX, len[s] - 1) == SKV_OK, "%s", skv_last_error());
        tok[s] = ids[s * P_MAX + len[s] - 1];
    }
    for (int t = 0; t < STEPS; t++) {
        REQUIRE(skv_decode_batch(b, tok + t * N, N, lb + (size_t)t * N * V, next) == SKV_OK, "%s", skv_last_error());
        for (int s = 0; s < N; s++) tok[(t + 1) * N + s] = next[s];
    }
    *equal = 0;
    for (int s = 0; s < N; s++) {
        REQUIRE(skv_context_truncate(one, 0) == SKV_OK, "%s", skv_last_error());
        REQUIRE(skv_decode(one, ids + s * P_MAX, len[s] - 1, NULL, 0) == SKV_OK, "%s", skv_last_error());
        for (int t = 0; t < STEPS; t++) {
            REQUIRE(skv_decode(one, tok + t * N + s, 1, l1, 0) == SKV_OK, "%s", skv_last_error());
            *equal += !memcmp(l1, lb + ((size_t)t * N + s) * V, sizeof(float) * (size_t)V);
        }
    }
    *rows = N * STEPS;
    skv_context_free(one), skv_context_free(b);
    free(ids), free(len), free(tok), free(next), free(lb), free(l1);
}

static void test_batch_invariant(void) {
    if (!have_gpu()) return;
    const char *names[] = {"kvt-s", "kvt-l"};
    const int sizes[] = {1, 3, 8, 17};
    for (int k = 0; k < 2; k++) {
        skv_model *m = skv_test_load_model(names[k], 0);
        REQUIRE(m, "%s: %s", names[k], skv_last_error());
        for (int i = 0; i < 4; i++) {
            int rows = 0, rows_d = 0, eq = -1, eq_d = -1;
            binv_rows_equal(m, sizes[i], 1, &eq, &rows);
            binv_rows_equal(m, sizes[i], 0, &eq_d, &rows_d);
            printf("    %s batch of %2d: batch-invariant mode %d/%d rows of logits bit-identical to solo; default "
                   "kernels %d/%d\n", names[k], sizes[i], eq, rows, eq_d, rows_d);
            CHECKF(eq == rows, "%s batch of %d, batch-invariant mode: only %d of %d rows of logits equal solo bit for bit",
                   names[k], sizes[i], eq, rows);
        }
        skv_model_free(m);
    }
}

/* Evicting policies in a several-sequence context (the server's batched decode of requests
 * with a KV method): N = 5 sequences of mixed prompt lengths, each prompt in one
 * skv_seq_decode_logits call (chunks of 64, then the sequence compressed at its length), then 6
 * batched steps — against the same sequence alone in a one-sequence context (skv_decode of the
 * prompt, then single-token steps), batch-invariant mode: the prompt's last logits and every
 * step's logits bit for bit, and every stream's kept positions equal after the steps, for each
 * of snapkv, pyramidkv (compress once), h2o, tova, window (evict every step), budget 0.5. */
static void test_batch_evict(void) {
    if (!have_gpu()) return;
    enum { N = 5, STEPS = 6, P_MAX = 240 };
    skv_model *m = skv_test_load_model("kvt-l", 0);
    REQUIRE(m, "kvt-l: %s", skv_last_error());
    const skv_model_info *in = skv_model_get_info(m);
    const int V = in->n_vocab, KVH = in->n_kv_head, NL = skv_model_n_cache_layers(m);
    const char *pols[] = {"snapkv", "pyramidkv", "h2o", "tova", "window"};
    int32_t *ids = malloc(sizeof(int32_t) * N * P_MAX), len[N], tok[(STEPS + 1) * N], next[N];
    float *lb = malloc(sizeof(float) * (size_t)N * (STEPS + 1) * V), *l1 = malloc(sizeof(float) * (size_t)V);
    int32_t *pa = malloc(sizeof(int32_t) * 512), *pb = malloc(sizeof(int32_t) * 512);
    for (int s = 0; s < N; s++) {
        len[s] = 40 + (s * 53) % 190; /* 40..229 tokens: one to four chunks of 64 */
        for (int i = 0; i < len[s]; i++) ids[s * P_MAX + i] = (int32_t)((i * 2654435761u + 7919u * s) % (uint32_t)(V - 1) + 1);
    }
    for (int k = 0; k < 5; k++) {
        skv_context_params cp = skv_context_default_params();
        cp.backend = SKV_BACKEND_CUDA, cp.n_ctx = 256, cp.n_batch = 64, cp.batch_invariant = 1;
        cp.policy = skv_policy_default_params(pols[k]);
        cp.policy.budget = 0.5f;
        skv_context *one = NULL, *b = NULL;
        REQUIRE(skv_context_init(m, cp, &one) == SKV_OK, "%s: %s", pols[k], skv_last_error());
        cp.n_seq = N;
        REQUIRE(skv_context_init(m, cp, &b) == SKV_OK, "%s: %s", pols[k], skv_last_error());
        for (int s = 0; s < N; s++) {
            REQUIRE(skv_seq_decode_logits(b, s, ids + s * P_MAX, len[s], lb + (size_t)s * V) == SKV_OK, "%s",
                    skv_last_error());
            tok[s] = skv_test_argmax(lb + (size_t)s * V, V);
        }
        for (int t = 0; t < STEPS; t++) {
            REQUIRE(skv_decode_batch(b, tok + t * N, N, lb + (size_t)(t + 1) * N * V, next) == SKV_OK, "%s",
                    skv_last_error());
            memcpy(tok + (t + 1) * N, next, sizeof next);
        }
        int equal = 0, rows = 0, kept_same = 1, shrunk = 0;
        for (int s = 0; s < N; s++) {
            REQUIRE(skv_context_truncate(one, 0) == SKV_OK, "%s", skv_last_error());
            REQUIRE(skv_decode(one, ids + s * P_MAX, len[s], l1, 0) == SKV_OK, "%s", skv_last_error());
            equal += !memcmp(l1, lb + (size_t)s * V, sizeof(float) * (size_t)V), rows++;
            for (int t = 0; t < STEPS; t++) {
                REQUIRE(skv_decode(one, tok + t * N + s, 1, l1, 0) == SKV_OK, "%s", skv_last_error());
                equal += !memcmp(l1, lb + ((size_t)(t + 1) * N + s) * V, sizeof(float) * (size_t)V), rows++;
            }
            for (int l = 0; l < NL; l++)
                for (int g = 0; g < KVH; g++) {
                    int32_t na = 0, nb = 0;
                    REQUIRE(skv_gpu_stream_read(one->bs, l, 0, g, &na, pa, NULL, NULL, NULL, NULL, NULL) == SKV_OK &&
                                skv_gpu_stream_read(b->bs, l, s, g, &nb, pb, NULL, NULL, NULL, NULL, NULL) == SKV_OK,
                            "%s", skv_last_error());
                    kept_same &= na == nb && !memcmp(pa, pb, sizeof(int32_t) * (size_t)na);
                    shrunk |= nb < len[s] + STEPS;
                }
        }
        printf("    %-9s budget 0.5, %d sequences batched vs alone: %d/%d rows of logits bit-identical; kept positions "
               "%s; evicted %s\n", pols[k], N, equal, rows, kept_same ? "equal" : "DIFFER", shrunk ? "yes" : "NO");
        CHECKF(equal == rows && kept_same && shrunk, "%s: %d of %d rows equal, kept positions equal %d, evicted %d",
               pols[k], equal, rows, kept_same, shrunk);
        skv_context_free(one), skv_context_free(b);
    }
    free(ids), free(lb), free(l1), free(pa), free(pb);
    skv_model_free(m);
}

/* skv_decode_seqs (sequences joining and leaving a running batch): 6 sequences of a full-policy
 * batch-invariant context, prompts of mixed lengths, then steps of changing subsets in changing
 * orders ({5, 2, 0}, {1, 3, 4, 2}, all six reversed, {3}); each row's logits bit for bit as the
 * same sequence alone fed the same tokens; a sequence named twice, or out of range, is refused
 * and nothing advances. */
static void test_decode_seqs(void) {
    if (!have_gpu()) return;
    enum { N = 6, P_MAX = 200, MAXT = 8 };
    skv_model *m = skv_test_load_model("kvt-l", 0);
    REQUIRE(m, "kvt-l: %s", skv_last_error());
    const int V = skv_model_get_info(m)->n_vocab;
    skv_context_params cp = skv_context_default_params();
    cp.backend = SKV_BACKEND_CUDA, cp.n_ctx = 256, cp.n_batch = 64, cp.batch_invariant = 1;
    skv_context *one = NULL, *b = NULL;
    REQUIRE(skv_context_init(m, cp, &one) == SKV_OK, "%s", skv_last_error());
    cp.n_seq = N;
    REQUIRE(skv_context_init(m, cp, &b) == SKV_OK, "%s", skv_last_error());
    static const int32_t sub[4][N] = {{5, 2, 0}, {1, 3, 4, 2}, {5, 4, 3, 2, 1, 0}, {3}};
    static const int nsub[4] = {3, 4, 6, 1};
    int32_t *ids = malloc(sizeof(int32_t) * N * P_MAX), len[N], fed[N][MAXT], nfed[N] = {0};
    float *lb = malloc(sizeof(float) * (size_t)N * V), *got = malloc(sizeof(float) * (size_t)N * MAXT * V);
    float *l1 = malloc(sizeof(float) * (size_t)V);
    for (int s = 0; s < N; s++) {
        len[s] = 20 + (s * 41) % 170;
        for (int i = 0; i < len[s]; i++) ids[s * P_MAX + i] = (int32_t)((i * 40503u + 977u * s) % (uint32_t)(V - 1) + 1);
        REQUIRE(skv_seq_decode(b, s, ids + s * P_MAX, len[s]) == SKV_OK, "%s", skv_last_error());
    }
    int32_t tk[N], next[N];
    for (int t = 0; t < 4; t++) {
        for (int k = 0; k < nsub[t]; k++) tk[k] = (int32_t)((t * 131 + sub[t][k] * 17) % (V - 1) + 1);
        REQUIRE(skv_decode_seqs(b, sub[t], tk, nsub[t], lb, next) == SKV_OK, "%s", skv_last_error());
        for (int k = 0; k < nsub[t]; k++) {
            const int s = sub[t][k];
            memcpy(got + ((size_t)s * MAXT + nfed[s]) * V, lb + (size_t)k * V, sizeof(float) * (size_t)V);
            fed[s][nfed[s]++] = tk[k];
        }
    }
    int equal = 0, rows = 0;
    for (int s = 0; s < N; s++) {
        REQUIRE(skv_context_truncate(one, 0) == SKV_OK && skv_decode(one, ids + s * P_MAX, len[s], NULL, 0) == SKV_OK,
                "%s", skv_last_error());
        for (int t = 0; t < nfed[s]; t++) {
            REQUIRE(skv_decode(one, &fed[s][t], 1, l1, 0) == SKV_OK, "%s", skv_last_error());
            equal += !memcmp(l1, got + ((size_t)s * MAXT + t) * V, sizeof(float) * (size_t)V), rows++;
        }
    }
    const int32_t twice[2] = {1, 1}, out[2] = {0, N};
    const int32_t p1 = skv_seq_n_past(b, 1);
    const skv_status e1 = skv_decode_seqs(b, twice, tk, 2, NULL, NULL);
    const int twice_ok = e1 == SKV_ERR_ARG && strstr(skv_last_error(), "twice") != NULL;
    const skv_status e2 = skv_decode_seqs(b, out, tk, 2, NULL, NULL);
    printf("    decode_seqs over changing subsets and orders: %d/%d rows of logits bit-identical to each sequence "
           "alone; a sequence twice %s, out of range %s\n", equal, rows, twice_ok ? "refused" : "ACCEPTED",
           e2 != SKV_OK ? "refused" : "ACCEPTED");
    CHECKF(equal == rows && rows == 14, "%d of %d rows equal", equal, rows);
    CHECK(twice_ok && e2 != SKV_OK && skv_seq_n_past(b, 1) == p1 && skv_seq_n_past(b, 0) == len[0] + 2);
    skv_context_free(one), skv_context_free(b);
    free(ids), free(lb), free(got), free(l1);
    skv_model_free(m);
}

/* logits (N, V) of the third decode step of N sequences whose 200-token prompts went in as 197
 * rows and 3 (the last chunk through the fused GEMVs' prefill use; 200 keys: four splits of 64
 * for the attention to merge), with the fused decode kernels (SKV_CUDA_FUSE, gpu_fused.cuh) as
 * given and the fused attention's shortest split (SKV_CUDA_ATT_MINLEN, NULL: the default) */
static void fuse_logits(skv_gpu_model *gm, int V, int N, const char *fuse, const char *minlen, float *out) {
    enum { P = 200 };
    setenv("SKV_CUDA_FUSE", fuse, 1);
    if (minlen) setenv("SKV_CUDA_ATT_MINLEN", minlen, 1);
    skv_gpu_ctx *c = NULL;
    const skv_status st = skv_gpu_ctx_init(gm, 256, 64, N, NULL, &c);
    unsetenv("SKV_CUDA_FUSE"), unsetenv("SKV_CUDA_ATT_MINLEN");
    REQUIRE(st == SKV_OK, "%s", skv_last_error());
    int32_t ids[P], tok[8], pos[8];
    for (int s = 0; s < N; s++) {
        for (int i = 0; i < P; i++) ids[i] = (int32_t)((i * 40503u + 31u * s) % (uint32_t)(V - 1) + 1);
        for (int off = 0; off < P - 3; off += 64) /* chunks of at most n_batch rows */
            REQUIRE(skv_gpu_forward(c, s, ids + off, NULL, P - 3 - off < 64 ? P - 3 - off : 64, off, NULL, NULL, NULL,
                                    0) == SKV_OK, "%s", skv_last_error());
        REQUIRE(skv_gpu_forward(c, s, ids + P - 3, NULL, 3, P - 3, NULL, NULL, NULL, 0) == SKV_OK, "%s", skv_last_error());
        tok[s] = ids[s], pos[s] = P;
    }
    for (int t = 0; t < 3; t++) {
        REQUIRE(skv_gpu_decode_batch(c, tok, pos, N, out, NULL, NULL) == SKV_OK, "%s", skv_last_error());
        for (int s = 0; s < N; s++) tok[s] = (tok[s] * 7 + t) % (V - 1) + 1, pos[s]++;
    }
    skv_gpu_ctx_free(c);
}

/* The fused decode kernels (norm + GEMV + RoPE + store, attention + split merge, norm + gate/up
 * + SwiGLU) against the separate ones at 1, 2, 3 rows (the fused GEMVs) and 5 (the fused
 * attention beside the tensor-core GEMV): the same arithmetic in the same order, so equal
 * logits (bit-identical unless the compiler contracted differently) and equal greedy ids. */
static void test_fused_decode(void) {
    if (!have_gpu()) return;
    skv_model *m = skv_test_load_model("kvt-l", 0);
    REQUIRE(m, "kvt-l: %s", skv_last_error());
    const int V = skv_model_get_info(m)->n_vocab;
    skv_gpu_model *gm = NULL;
    REQUIRE(skv_model_gpu(m, &gm) == SKV_OK, "%s", skv_last_error());
    const int ns[] = {1, 2, 3, 5};
    /* each part alone (RoPE needs the norm), all; all with splits of at least 256 keys (one split
     * here instead of four: other sums, so within rounding) */
    const char *masks[] = {"1", "3", "4", "8", "15", "15"};
    for (int k = 0; k < 4; k++) {
        const int N = ns[k];
        const size_t nb = sizeof(float) * (size_t)N * V;
        float *a = malloc(nb), *o = malloc(nb);
        for (size_t i = 0; i < (size_t)N * V; i++) o[i] = NAN; /* every element must be written */
        fuse_logits(gm, V, N, "0", NULL, o);
        for (int f = 0; f < 6; f++) {
            for (size_t i = 0; i < (size_t)N * V; i++) a[i] = NAN;
            fuse_logits(gm, V, N, masks[f], f == 5 ? "256" : NULL, a);
            double worst = 0;
            int top = 1, nan = 0;
            for (int s = 0; s < N; s++) {
                for (int v = 0; v < V; v++) nan += isnan(a[(size_t)s * V + v]) + isnan(o[(size_t)s * V + v]);
                worst = fmax(worst, rel_l2(a + (size_t)s * V, o + (size_t)s * V, V));
                top &= skv_test_argmax(a + (size_t)s * V, V) == skv_test_argmax(o + (size_t)s * V, V);
            }
            printf("    %d rows, SKV_CUDA_FUSE=%s%s vs 0: %s, relative L2 %.2e, top-1 %s\n", N, masks[f],
                   f == 5 ? " SKV_CUDA_ATT_MINLEN=256" : "",
                   !memcmp(a, o, nb) ? "bit-identical" : "different bits", worst, top ? "equal" : "DIFFERENT");
            /* other split sums (f == 5): bf16 tolerance, as batched vs single decode */
            CHECKF(!nan && (f == 5 ? worst < 5e-3 : worst < 1e-3 && top), "%d rows: SKV_CUDA_FUSE=%s vs 0: relative L2 "
                   "%.3g, %d NaN, top-1 %s", N, masks[f], worst, nan, top ? "equal" : "different");
        }
        free(a), free(o);
    }
    skv_model_free(m);
}

void register_cuda(void) {
    skv_test_add("cuda/batch-invariant mode: batches of 1, 3, 8, 17 (mixed lengths) = solo bit for bit (kvt-s, kvt-l)",
                 test_batch_invariant);
    skv_test_add("cuda/evicting policies in a several-sequence context = each sequence alone (batch-invariant)",
                 test_batch_evict);
    skv_test_add("cuda/decode_seqs: subsets in any order = each sequence alone; duplicates refused", test_decode_seqs);
    skv_test_add("cuda/batched decode of 5, 12, 40 = single decode; decode switches agree", test_batch_sizes);
    skv_test_add("cuda/fused decode kernels = the separate kernels at 1, 2, 3, 5 rows", test_fused_decode);
    skv_test_add("cuda/head_dim 128 GQA model vs the double reference (prefill chunks, decode)", test_tiny_hd128);
    skv_test_add("cuda/kvt-s logits and greedy vs golden.json on the GPU", test_golden_s);
    skv_test_add("cuda/kvt-l logits and greedy vs golden.json on the GPU", test_golden_l);
    skv_test_add("cuda/batched decode = single decode; fork", test_batch_fork);
    skv_test_add("cuda/attention statistics vs the CPU backend", test_stats_vs_cpu);
    skv_test_add("cuda/window, h2o, snapkv, pyramidkv, tova: selection = brute force, rows intact, steps", test_policies_brute);
    skv_test_add("cuda/export+import: GPU round trip bit-identical; CPU -> GPU -> CPU; corrupt refused", test_exchange);
    skv_test_add("cuda/embedding input = id input; hidden states", test_embd_gpu);
    skv_test_add("cuda/policies: own prompt compression, logits vs the CPU backend", test_policy_logits);
    skv_test_add("cuda/truncate; V in the slow tier; asynchronous fetch", test_truncate_slow_fetch);
    skv_test_add("cuda/sampling on the GPU = the CPU sampler's draws", test_sampling);
}
