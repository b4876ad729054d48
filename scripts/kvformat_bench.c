/*
 * kvformat_bench.c — decode speed of each KV cache storage format, through slimkv.h alone, so
 * that one driver links against two builds (scripts/kvformat_bench.sh: main's library and this
 * branch's) and both are timed by the same code.
 *
 *   kvformat_bench MODEL_DIR THREADS DEPTH N_GEN ROUNDS FORMAT...
 *
 * FORMAT is a skv_kv_format number (0 f32, 1 bf16, 2 int8, 3 int4, 4 f16). Per format: a
 * context of that format with the same DEPTH pseudo-random tokens prefilled (untimed); then
 * ROUNDS times, each format in turn: N_GEN single-token decode steps timed (the same tokens for
 * every format), and the cache truncated back to DEPTH. One line per format: "format
 * median_tokens_per_second round1 round2 ..." (rounds in order, so round r of two formats ran
 * seconds apart), or "format refused: why" when the library does not know the format (main's
 * has no f16). Exit status 1 on a load error.
 * With KVF_DUMP=PREFIX in the environment, the logits of the first round's steps are written
 * to PREFIX.<format> (n_gen x n_vocab float32), to compare two builds' decode logits.
 */
#include <slimkv.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static uint32_t next_id(uint64_t *s, int32_t V) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(*s >> 33) % (uint32_t)V;
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: %s MODEL_DIR THREADS DEPTH N_GEN ROUNDS FORMAT...\n", argv[0]);
        return 2;
    }
    const int threads = atoi(argv[2]), depth = atoi(argv[3]), n_gen = atoi(argv[4]), rounds = atoi(argv[5]);
    skv_model_params mp = skv_model_default_params();
    mp.n_threads = threads;
    skv_model *m = NULL;
    if (skv_model_load(argv[1], mp, &m) != SKV_OK) {
        fprintf(stderr, "kvformat_bench: %s\n", skv_last_error());
        return 1;
    }
    const skv_model_info *in = skv_model_get_info(m);
    if (depth < 1 || n_gen < 1 || rounds < 1 || rounds > 64 || depth + n_gen > in->n_ctx) {
        fprintf(stderr, "kvformat_bench: DEPTH + N_GEN must fit the context of %d\n", in->n_ctx);
        return 2;
    }
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)depth);
    float *logits = malloc(sizeof(float) * (size_t)in->n_vocab);
    enum { MAXF = 16 };
    const int nf = argc - 6 < MAXF ? argc - 6 : MAXF;
    skv_context *ctx[MAXF] = {0};
    FILE *dump[MAXF] = {0};
    static double tps[MAXF][64];
    uint64_t seed = 0x5eed;
    for (int i = 0; i < depth; i++) ids[i] = (int32_t)next_id(&seed, in->n_vocab);
    for (int f = 0; f < nf; f++) { /* every format's context prefilled with the same tokens */
        skv_context_params cp = skv_context_default_params();
        cp.kv_format = (skv_kv_format)atoi(argv[6 + f]);
        if (skv_context_init(m, cp, &ctx[f]) != SKV_OK) {
            printf("%s refused: %s\n", argv[6 + f], skv_last_error());
            ctx[f] = NULL;
            continue;
        }
        if (skv_decode(ctx[f], ids, depth, NULL, 0) != SKV_OK) return fprintf(stderr, "%s\n", skv_last_error()), 1;
        if (getenv("KVF_DUMP")) {
            char path[4096];
            snprintf(path, sizeof path, "%s.%s", getenv("KVF_DUMP"), argv[6 + f]);
            if (!(dump[f] = fopen(path, "wb"))) return fprintf(stderr, "kvformat_bench: cannot write %s\n", path), 1;
        }
    }
    /* rounds: each format in turn (starting one further each round), the same tokens for all,
     * so that the formats' times interleave at a fine grain on a machine whose load drifts */
    for (int r = 0; r < rounds; r++)
        for (int k = 0; k < nf; k++) {
            const int f = (r + k) % nf;
            if (!ctx[f]) continue;
            uint64_t rs = 0x1234 + (uint64_t)r;
            const double t0 = skv_time_now();
            for (int i = 0; i < n_gen; i++) {
                int32_t id = (int32_t)next_id(&rs, in->n_vocab);
                if (skv_decode(ctx[f], &id, 1, logits, 0) != SKV_OK) return fprintf(stderr, "%s\n", skv_last_error()), 1;
                if (dump[f] && r == 0) fwrite(logits, sizeof(float), (size_t)in->n_vocab, dump[f]);
            }
            tps[f][r] = n_gen / (skv_time_now() - t0);
            if (skv_context_truncate(ctx[f], depth) != SKV_OK) return fprintf(stderr, "%s\n", skv_last_error()), 1;
        }
    for (int f = 0; f < nf; f++) {
        if (dump[f]) fclose(dump[f]);
        if (!ctx[f]) continue;
        double sorted[64];
        for (int r = 0; r < rounds; r++) sorted[r] = tps[f][r];
        for (int i = 1; i < rounds; i++) /* insertion sort for the median */
            for (int j = i; j > 0 && sorted[j] < sorted[j - 1]; j--) {
                double t = sorted[j];
                sorted[j] = sorted[j - 1], sorted[j - 1] = t;
            }
        printf("%s %.3f", argv[6 + f], rounds % 2 ? sorted[rounds / 2] : 0.5 * (sorted[rounds / 2 - 1] + sorted[rounds / 2]));
        for (int r = 0; r < rounds; r++) printf(" %.3f", tps[f][r]);
        printf("\n");
        skv_context_free(ctx[f]);
    }
    free(ids);
    free(logits);
    skv_model_free(m);
    return 0;
}
