/*
 * cmd_scd_bench.c — `slimkv scd-bench`: the SCD consumer's cost at a real model shape with
 * random weights and random maps (no producer or calibration can run there). Per prompt length:
 * the oracle (the consumer's own prefill, then the first token) against the consumer fed a
 * request's frames in memory (frame checks, code decoding, patch re-prediction, RoPE, cache
 * writes; on CUDA on the device), then its first token; the frames of SCD, reuse-only and raw
 * bf16 K/V are random payloads of the real sizes. TTFT at modelled link rates: bytes / rate +
 * the consumer's measured time (no overlap of transfer and rebuild counted), with and without
 * the producer's prefill (taken as the oracle's prefill: same architecture; its encoding is not
 * timed here, the producer's taps being on the CPU backend only).
 */
#include "scd_common.h"
#include "method/scd.h"

#include <stdlib.h>
#include <string.h>

typedef struct mem_frames {
    uint8_t **f;
    size_t *len;
    int n, cap;
} mem_frames;

static skv_status mem_emit(void *arg, const uint8_t *frame, size_t len) {
    mem_frames *m = arg;
    if (m->n == m->cap) {
        m->cap = m->cap ? 2 * m->cap : 64;
        m->f = realloc(m->f, sizeof(uint8_t *) * (size_t)m->cap), m->len = realloc(m->len, sizeof(size_t) * (size_t)m->cap);
    }
    m->f[m->n] = malloc(len);
    memcpy(m->f[m->n], frame, len);
    m->len[m->n++] = len;
    return SKV_OK;
}

static void mem_free(mem_frames *m) {
    for (int i = 0; i < m->n; i++) free(m->f[i]);
    free(m->f), free(m->len);
    memset(m, 0, sizeof *m);
}

static int parse_list(const char *s, double *out, int cap) {
    int n = 0;
    char *dup = strdup(s), *save = NULL;
    for (char *t = strtok_r(dup, ",", &save); t && n < cap; t = strtok_r(NULL, ",", &save)) {
        char *end;
        out[n] = strtod(t, &end);
        if (*end || out[n] <= 0) n = -1000;
        n++;
    }
    free(dup);
    return n;
}

int cmd_scd_bench(int argc, char **argv) {
    const char *C = "scd-bench";
    const char *dir = NULL, *backend_s = "cuda", *lens_s = "1024,4096,16384", *rates_s = "100,200,400,1000", *outp = NULL;
    int threads = 0, rk = 512, rv = 512, rh = 1024, hidden = 1024, patch_k = 6, reps = 2;
    const cli_opt opts[] = {
        {"model", 'm', OPT_STR, &dir, "DIR", "consumer model directory (e.g. written by mkmodel)"},
        {"backend", 0, OPT_STR, &backend_s, "B", "cuda (default) or cpu"},
        {"lens", 0, OPT_STR, &lens_s, "LIST", "prompt lengths (default 1024,4096,16384)"},
        {"rates", 0, OPT_STR, &rates_s, "LIST", "modelled link rates in Gbit/s (default 100,200,400,1000)"},
        {"r-k", 0, OPT_INT, &rk, "R", "random maps: K code rank (default 512)"},
        {"r-v", 0, OPT_INT, &rv, "R", "V code rank (default 512)"},
        {"r-h", 0, OPT_INT, &rh, "R", "patch code rank (default 1024)"},
        {"hidden", 0, OPT_INT, &hidden, "N", "aligner MLP width (default 1024; 0: linear)"},
        {"patch-k", 0, OPT_INT, &patch_k, "K", "patch layers (default 6)"},
        {"reps", 0, OPT_INT, &reps, "N", "repetitions, the fastest kept (default 2)"},
        {"threads", 't', OPT_INT, &threads, "N", "threads (default: all cores)"},
        {"out", 'o', OPT_STR, &outp, "FILE", "results JSON"},
    };
    const cli_cmd cmd = {"scd-bench", "-m DIR [--backend cuda] [--lens LIST] [--rates LIST] [-o FILE]",
                         "The SCD consumer's rebuild against its own prefill at a model's shape (random maps and "
                         "payloads), and TTFT at modelled link rates.", opts, (int)(sizeof opts / sizeof opts[0])};
    cli_parse(&cmd, argc, argv);
    if (!dir) cli_die(C, 2, "-m is required");
    double lens[16], rates[16];
    const int n_len = parse_list(lens_s, lens, 16), n_rate = parse_list(rates_s, rates, 16);
    if (n_len <= 0) cli_die(C, 2, "bad value for --lens: '%s'", lens_s);
    if (n_rate <= 0) cli_die(C, 2, "bad value for --rates: '%s'", rates_s);
    if (reps < 1 || reps > 20) cli_die(C, 2, "bad value for --reps: %d (1..20)", reps);
    if (outp) cli_check_writable(C, "--out", outp);
    const skv_backend be = cli_backend(C, backend_s);
    skv_model *m = cli_load_model(C, dir, threads, 0);
    const skv_model_info *in = skv_model_get_info(m);
    const int32_t L = in->n_layer, KD = in->n_kv_head * in->head_dim;
    for (int i = 0; i < n_len; i++)
        if (lens[i] < 2 || lens[i] + 8 > in->n_ctx || lens[i] != (int)lens[i])
            cli_die(C, 2, "bad value for --lens: %g (2..%d)", lens[i], in->n_ctx - 8);
    const double t_maps = skv_time_now();
    skv_scd_maps *maps;
    cli_check(C, skv_scd_maps_random(L, KD, in->dim, hidden, rk, rv, rh, patch_k, 1, &maps));
    fprintf(stderr, "%s: random maps in %.1f s\n", C, skv_time_now() - t_maps);
    skv_device_info di;
    memset(&di, 0, sizeof di);
    skv_backend_device_info(be, &di);
    FILE *f = outp ? fopen(outp, "w") : stdout;
    if (!f) cli_die(C, 1, "%s: cannot write", outp);
    fprintf(f, "{\n");
    cli_json_provenance(f);
    fprintf(f, "  \"device\": \"%s\", \"backend\": \"%s\", \"model\": \"%s\", \"n_layer\": %d, \"kv_dim\": %d, \"dim\": %d,\n"
            "  \"maps\": {\"r_k\": %d, \"r_v\": %d, \"r_h\": %d, \"hidden\": %d, \"patch_k\": %d, \"random\": true},\n"
            "  \"reps\": %d, \"results\": [\n", di.name, backend_s, dir, L, KD, in->dim, rk, rv, rh, hidden, patch_k, reps);
    const int32_t V = in->n_vocab;
    float *lg = malloc(sizeof(float) * (size_t)V);
    const int methods[] = {SKV_SCD_FULL, SKV_SCD_REUSE, SKV_SCD_RAW};
    int first_row = 1;
    /* warm-up: the model's device copy, kernels, cuBLAS */
    {
        skv_context_params cp = skv_context_default_params();
        cp.backend = be, cp.n_ctx = 512;
        skv_context *c;
        int32_t ids[256];
        for (int i = 0; i < 256; i++) ids[i] = 1 + i * 7 % (V - 1);
        cli_check(C, skv_context_init(m, cp, &c));
        cli_check(C, skv_decode(c, ids, 256, lg, 0));
        skv_context_free(c);
        /* and the consumer's path once (the maps' device copy is made by the first rebuild) */
        skv_scd_req req = {.method = SKV_SCD_FULL, .code_enc = SKV_ENC_BF16};
        scd_patch_set(C, maps, patch_k, NULL, &req);
        mem_frames fr = {0};
        skv_scd_prod_stats ps;
        cli_check(C, skv_scd_produce_synth(m, maps, ids, 256, &req, 7, mem_emit, &fr, &ps));
        skv_scd_consumer *sc;
        cli_check(C, skv_scd_consumer_init(m, maps, cp, &sc));
        int done = 0;
        for (int i = 0; i < fr.n; i++) {
            skv_frame fh;
            cli_check(C, skv_frame_check(fr.f[i], fr.len[i], SCD_MAX_PAYLOAD, &fh));
            cli_check(C, skv_scd_consumer_feed(sc, &fh, &done));
        }
        if (!done) cli_die(C, 1, "warm-up: the consumer did not finish");
        skv_scd_consumer_free(sc);
        mem_free(&fr);
    }
    for (int li = 0; li < n_len; li++) {
        const int32_t n_ids = (int32_t)lens[li], n = n_ids - 1;
        int32_t *ids = malloc(sizeof(int32_t) * (size_t)n_ids);
        uint64_t s = 12345 + (uint64_t)n_ids;
        for (int32_t i = 0; i < n_ids; i++) s = s * 6364136223846793005ULL + 1, ids[i] = 1 + (int32_t)((s >> 33) % (uint64_t)(V - 1));
        skv_context_params cp = skv_context_default_params();
        cp.backend = be, cp.n_ctx = n_ids + 8;
        /* oracle: prefill (its last row's logits make the call synchronous), then the first token */
        double t_pre = 1e30, t_or = 1e30;
        for (int r = 0; r < reps; r++) {
            skv_context *c;
            cli_check(C, skv_context_init(m, cp, &c));
            const double t0 = skv_time_now();
            cli_check(C, skv_decode(c, ids, n, lg, 0));
            const double t1 = skv_time_now();
            cli_check(C, skv_decode(c, &ids[n], 1, lg, 0));
            const double t2 = skv_time_now();
            skv_context_free(c);
            if (t2 - t0 < t_or) t_or = t2 - t0, t_pre = t1 - t0;
        }
        for (size_t mi = 0; mi < sizeof methods / sizeof methods[0]; mi++) {
            skv_scd_req req = {.method = methods[mi], .code_enc = SKV_ENC_BF16};
            if (req.method == SKV_SCD_FULL) scd_patch_set(C, maps, patch_k, NULL, &req);
            mem_frames fr = {0};
            skv_scd_prod_stats ps;
            cli_check(C, skv_scd_produce_synth(m, maps, ids, n_ids, &req, 7, mem_emit, &fr, &ps));
            double best = 1e30, t_check = 0, t_first = 0, t_build = 0;
            for (int r = 0; r < reps; r++) {
                skv_scd_consumer *sc;
                cli_check(C, skv_scd_consumer_init(m, maps, cp, &sc));
                int done = 0;
                double tc = 0;
                const double t0 = skv_time_now();
                for (int i = 0; i < fr.n; i++) {
                    skv_frame fh;
                    const double a = skv_time_now();
                    cli_check(C, skv_frame_check(fr.f[i], fr.len[i], SCD_MAX_PAYLOAD, &fh));
                    tc += skv_time_now() - a;
                    cli_check(C, skv_scd_consumer_feed(sc, &fh, &done));
                }
                if (!done) cli_die(C, 1, "the consumer did not finish");
                skv_context *c = skv_scd_consumer_context(sc);
                const double t1 = skv_time_now();
                cli_check(C, skv_decode(c, &ids[n], 1, lg, 0));
                const double t2 = skv_time_now();
                if (t2 - t0 < best) best = t2 - t0, t_check = tc, t_first = t2 - t1, t_build = t1 - t0;
                skv_scd_consumer_free(sc);
            }
            const double mb = (double)ps.bytes / 1e6;
            fprintf(f, "%s    {\"tokens\": %d, \"method\": \"%s\", \"patch_k\": %d, \"bytes\": %llu, \"layer_bytes_per_token\": %.1f,\n"
                    "     \"oracle_prefill_s\": %.6f, \"oracle_ttft_s\": %.6f, \"consumer_rebuild_s\": %.6f, \"frame_check_s\": %.6f, "
                    "\"first_token_s\": %.6f, \"rebuild_over_prefill\": %.4f,\n     \"modelled\": [",
                    first_row ? "" : ",\n", n_ids, skv_scd_method_name(req.method), req.method == SKV_SCD_FULL ? patch_k : 0,
                    (unsigned long long)ps.bytes, (double)ps.layer_bytes / n, t_pre, t_or, t_build, t_check, t_first,
                    t_build / t_pre);
            first_row = 0;
            fprintf(stderr, "%s: %d tokens, %-6s %8.1f MB: rebuild %.4f s (checks %.4f) + first token %.4f s; oracle prefill %.4f s, TTFT %.4f s\n",
                    C, n_ids, skv_scd_method_name(req.method), mb, t_build, t_check, t_first, t_pre, t_or);
            for (int ri = 0; ri < n_rate; ri++) {
                const double tx = (double)ps.bytes * 8 / (rates[ri] * 1e9);
                const double after = tx + t_build + t_first, e2e = t_pre + after;
                fprintf(f, "%s{\"gbit_s\": %g, \"transfer_s\": %.6f, \"ttft_after_prefill_s\": %.6f, \"speedup_after_prefill\": %.3f, "
                        "\"ttft_end_to_end_s\": %.6f, \"speedup_end_to_end\": %.3f}", ri ? ", " : "", rates[ri], tx, after,
                        t_or / after, e2e, t_or / e2e);
            }
            fprintf(f, "]}");
            fflush(f);
            mem_free(&fr);
        }
        free(ids);
    }
    fprintf(f, "\n  ]\n}\n");
    if (outp) fclose(f);
    free(lg);
    skv_scd_maps_free(maps);
    skv_model_free(m);
    return 0;
}
