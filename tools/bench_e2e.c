/*
 * bench_e2e.c — `slimkv bench --backend cuda --e2e P+G [--steps S]`: the largest batch of
 * sequences of P + G tokens whose cache the GPU holds, and the throughput at it (the LCKV
 * paper's measurement, arXiv 2405.10637 section 4: tokens generated per second, prefill
 * included).
 *
 * The batch: contexts of n_seq = 1, 2, 4, ... sequences of P + G tokens are created until one
 * does not fit (the cache pool of every stream's P + G rows, the activations and the sampling
 * buffers of that many rows), then bisection. At the largest B: one sequence's prefill of P
 * random tokens (one call, so an LCKV model iterates once over the whole prompt), timed; it is
 * (run at B = 98 % of the largest, for the graph's and cuBLAS's own memory) copied into the B - 1 others (skv_seq_copy, not timed); S decode steps of the B sequences
 * are timed at depth P, then, after a prefill of P + G - S tokens copied likewise, S steps at
 * depth P + G - S. Reported: prefill ms per sequence, decode ms per step at both depths, and
 * the estimate of the whole run, B prefills + G steps with the step time linear in depth:
 * tokens/s = B G / (B t_prefill + G (t_lo + t_hi) / 2). Timing: wall clock around public-API
 * calls (each returns after the device finishes), after one warm-up of each.
 */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

static int fits(skv_model *m, int n_ctx, int ubatch, int n_seq) {
    skv_context_params cp = skv_context_default_params();
    cp.backend = SKV_BACKEND_CUDA;
    cp.n_ctx = n_ctx, cp.n_batch = ubatch, cp.n_seq = n_seq;
    skv_context *c = NULL;
    if (skv_context_init(m, cp, &c)) return 0;
    skv_context_free(c);
    return 1;
}

/* prefill n tokens into sequence 0 (emptied first, one call), copy it into 1..B-1; ms of the prefill */
static double fill(skv_context *c, int B, const int32_t *ids, int n) {
    for (int s = 0; s < B; s++) cli_check("bench", skv_seq_truncate(c, s, 0));
    const double t0 = skv_time_now();
    cli_check("bench", skv_seq_decode(c, 0, ids, n));
    const double ms = (skv_time_now() - t0) * 1e3;
    for (int s = 1; s < B; s++) cli_check("bench", skv_seq_copy(c, s, 0));
    return ms;
}

static double steps(skv_context *c, int B, int S, int32_t *bid) {
    const double t0 = skv_time_now();
    for (int t = 0; t < S; t++) cli_check("bench", skv_decode_batch(c, bid, B, NULL, bid));
    return (skv_time_now() - t0) * 1e3 / S;
}

int bench_e2e(const char *dir, const char *spec, int S, int max_b, const char *out) {
    int P = 0, G = 0;
    if (sscanf(spec, "%d+%d", &P, &G) != 2 || P < 1 || G < 2)
        cli_die("bench", 2, "bad value for --e2e: '%s' (PROMPT+GEN, e.g. 2048+2048)", spec);
    if (S < 1 || S >= G) cli_die("bench", 2, "bad value for --steps: %d (1..%d)", S, G - 1);
    skv_model *m = cli_load_model("bench", dir, 0, 1);
    const skv_model_info *in = skv_model_get_info(m);
    const int T = P + G;
    if (T > in->n_ctx) cli_die("bench", 2, "--e2e %s needs %d positions; the model has %d", spec, T, in->n_ctx);
    skv_device_info dev;
    cli_check("bench", skv_backend_device_info(SKV_BACKEND_CUDA, &dev));
    const double t_up = skv_time_now();
    if (!fits(m, T, T, 1)) cli_die("bench", 1, "one sequence of %d tokens does not fit: %s", T, skv_last_error());
    const double upload_s = skv_time_now() - t_up;
    /* the largest batch: doubling, then bisection */
    int lo = 1, hi = 0;
    for (int b = 2; b <= max_b; b *= 2) {
        if (!fits(m, T, T, b)) {
            hi = b;
            break;
        }
        lo = b;
    }
    if (!hi) hi = max_b + 1;
    while (hi - lo > 1) {
        const int mid = (lo + hi) / 2;
        if (fits(m, T, T, mid)) lo = mid;
        else hi = mid;
    }
    /* run 2 % below the largest context that could be created: the decode graph and cuBLAS need
     * some memory of their own */
    const int B_fit = lo, B = lo - lo / 50;
    skv_context_params cp = skv_context_default_params();
    cp.backend = SKV_BACKEND_CUDA;
    cp.n_ctx = T, cp.n_batch = T, cp.n_seq = B;
    skv_context *c = NULL;
    cli_check("bench", skv_context_init(m, cp, &c));
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)T), *bid = malloc(sizeof(int32_t) * (size_t)B);
    for (int i = 0; i < T; i++) ids[i] = cli_rand_id(&rng, in->n_vocab);
    for (int s = 0; s < B; s++) bid[s] = cli_rand_id(&rng, in->n_vocab);
    fill(c, B, ids, P); /* warm-up: the prefill path and the decode graph of B rows */
    steps(c, B, 2, bid);
    const double t_pre = fill(c, B, ids, P);
    const double t_lo = steps(c, B, S, bid);
    const int d_hi = T - S;
    const double t_pre_hi = fill(c, B, ids, d_hi);
    const double t_hi = steps(c, B, S, bid);
    skv_kv_usage u;
    skv_context_kv_usage(c, &u);
    const double total_s = (B * t_pre + G * (t_lo + t_hi) / 2) / 1e3;
    const double tps = (double)B * G / total_s, dec_tps = (double)B * G / (G * (t_lo + t_hi) / 2 / 1e3);
    const int64_t kv_tok = (int64_t)skv_model_n_cache_layers(m) * in->n_kv_head * in->head_dim * 2 * 2;
    char path[1300];
    const char *base = cli_basename(dir);
    out = cli_bench_out(out, dir, path, sizeof path, "e2e-cuda-%s.json", base);
    FILE *f = cli_bench_json(out);
    fprintf(f, "  \"backend\": \"cuda\",\n  \"device\": \"%s\",\n  \"device_memory_bytes\": %lld,\n  \"model\": \"%s\",\n"
            "  \"layers\": %d,\n  \"cache_layers\": %d,\n  \"kv_bytes_per_token\": %lld,\n  \"upload_seconds\": %.2f,\n"
            "  \"prompt\": %d,\n  \"gen\": %d,\n  \"max_batch_fits\": %d,\n  \"batch\": %d,\n  \"kv_bytes_at_end\": %lld,\n"
            "  \"prefill_ms_per_seq\": %.2f,\n  \"prefill_ms_depth_%d\": %.2f,\n  \"steps_timed\": %d,\n"
            "  \"step_ms_at_%d\": %.3f,\n  \"step_ms_at_%d\": %.3f,\n  \"decode_tokens_per_s\": %.1f,\n"
            "  \"est_total_seconds\": %.2f,\n  \"est_tokens_per_s\": %.1f,\n"
            "  \"method\": \"B prefills of one sequence each (timed once) + G steps at the mean of the step times timed "
            "at depths P and P+G-S\"\n}\n",
            dev.name, (long long)dev.memory_bytes, base, in->n_layer, skv_model_n_cache_layers(m), (long long)kv_tok,
            upload_s, P, G, B_fit, B, (long long)u.bytes, t_pre, d_hi, t_pre_hi, S, P, t_lo, d_hi, t_hi, dec_tps, total_s, tps);
    fclose(f);
    printf("slimkv bench --e2e %d+%d  %s on %s: largest batch %d, run at %d (cache layers %d of %d, %lld B/token)\n"
           "  prefill %.1f ms per sequence (%d tokens); decode step %.2f ms at depth %d, %.2f ms at %d\n"
           "  estimate: %.1f s for %d x (%d + %d) -> %.1f tokens/s (decode alone %.1f tokens/s)\nwritten to %s\n",
           P, G, base, dev.name, B_fit, B, skv_model_n_cache_layers(m), in->n_layer, (long long)kv_tok, t_pre, P, t_lo, P,
           t_hi, d_hi, total_s, B, P, G, tps, dec_tps, out);
    free(ids), free(bid);
    skv_context_free(c);
    skv_model_free(m);
    return 0;
}
