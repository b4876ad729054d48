/*
 * cmd_scd_dump.c — `slimkv scd-dump`: SCD calibration data. Both models (producer, consumer)
 * prefill the same training prompts; for sampled token rows, every layer's de-RoPE'd K, V and
 * normalised attention input are written as one safetensors file (f32 tensors "a.k.L", "b.k.L",
 * "a.v.L", "b.v.L", "a.h.L", "b.h.L": a producer, b consumer; rows = sampled tokens), which
 * train/scd_calibrate.py fits the maps on.
 */
#include "cli.h"
#include "scd_prompts.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t rnd(uint64_t *s) {
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return *s >> 33;
}

/* One model's rows of one prompt: per layer K (derope), V, H at the sampled positions. */
static void model_rows(skv_model *m, const int32_t *ids, int32_t n, const int32_t *pick, int32_t R, float *k, float *v,
                       float *h) {
    const skv_model_info *in = skv_model_get_info(m);
    const int64_t L = in->n_layer, D = in->dim, KD = (int64_t)in->n_kv_head * in->head_dim;
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = n;
    skv_context *c;
    cli_check("scd-dump", skv_context_init(m, cp, &c));
    float *tap = malloc(sizeof(float) * (size_t)(L * n * D));
    float *kr = malloc(sizeof(float) * (size_t)(n * KD)), *vr = malloc(sizeof(float) * (size_t)(n * KD));
    if (!tap || !kr || !vr) cli_die("scd-dump", 1, "out of memory");
    skv_batch b = {.ids = ids, .n = n, .attn_in = tap};
    cli_check("scd-dump", skv_decode_ex(c, &b));
    for (int64_t l = 0; l < L; l++) {
        cli_check("scd-dump", skv_context_get_kv(c, (int32_t)l, 1, kr, vr));
        for (int32_t r = 0; r < R; r++) {
            memcpy(k + (l * R + r) * KD, kr + pick[r] * KD, sizeof(float) * (size_t)KD);
            memcpy(v + (l * R + r) * KD, vr + pick[r] * KD, sizeof(float) * (size_t)KD);
            memcpy(h + (l * R + r) * D, tap + (l * n + pick[r]) * D, sizeof(float) * (size_t)D);
        }
    }
    free(tap), free(kr), free(vr);
    skv_context_free(c);
}

int cmd_scd_dump(int argc, char **argv) {
    const char *prod = NULL, *cons = NULL, *corpus = NULL, *outp = NULL;
    int n = 200, len_min = 128, len_max = 1984, rows = 48, threads = 0, seed = 1, whole = 0, consec = 0;
    const cli_opt opts[] = {
        {"model", 'm', OPT_STR, &prod, "DIR", "producer model directory"},
        {"consumer", 0, OPT_STR, &cons, "DIR", "consumer model directory (same architecture)"},
        {"corpus", 'f', OPT_STR, &corpus, "FILE", "training corpus (0x1e-separated documents, .xz allowed)"},
        {"prompts", 'n', OPT_INT, &n, "N", "calibration prompts (default 200)"},
        {"len-min", 0, OPT_INT, &len_min, "T", "shortest prompt in tokens (default 128)"},
        {"len-max", 0, OPT_INT, &len_max, "T", "longest prompt in tokens (default 1984)"},
        {"rows", 'r', OPT_INT, &rows, "R", "token rows sampled per prompt (default 48)"},
        {"seed", 0, OPT_INT, &seed, "S", "prompt and row sampling seed (default 1)"},
        {"threads", 't', OPT_INT, &threads, "N", "threads (default: all cores)"},
        {"whole-docs", 0, OPT_FLAG, &whole, NULL, "each document of the parity is one prompt (its last --len-max tokens)"},
        {"consecutive", 0, OPT_FLAG, &consec, NULL, "rows of a prompt are one block of consecutive positions (random start)"},
        {"out", 'o', OPT_STR, &outp, "FILE", "output safetensors file"},
    };
    const cli_cmd cmd = {"scd-dump", "-m PRODUCER --consumer DIR -f CORPUS -o FILE [-n N] [--rows R]",
                         "SCD calibration data: per-layer de-RoPE'd K, V and normalised attention inputs of "
                         "both models on sampled rows of training prompts (even-numbered documents).",
                         opts, (int)(sizeof opts / sizeof opts[0])};
    cli_parse(&cmd, argc, argv);
    if (!prod || !cons || !corpus || !outp) cli_die("scd-dump", 2, "-m, --consumer, -f and -o are required");
    if (rows < 1 || rows > len_min) cli_die("scd-dump", 2, "bad value for --rows: %d (1..--len-min)", rows);
    cli_check_writable("scd-dump", "--out", outp);
    skv_tokenizer *tok = cli_load_tokenizer("scd-dump", prod);
    skv_model *ma = cli_load_model("scd-dump", prod, threads, 0), *mb = cli_load_model("scd-dump", cons, threads, 0);
    const skv_model_info *ia = skv_model_get_info(ma), *ib = skv_model_get_info(mb);
    if (ia->n_layer != ib->n_layer || ia->dim != ib->dim || ia->n_kv_head != ib->n_kv_head ||
        ia->head_dim != ib->head_dim || ia->n_vocab != ib->n_vocab)
        cli_die("scd-dump", 1, "%s and %s differ in shape (SCD needs one architecture)", prod, cons);
    scd_prompts pr;
    scd_prompts_make("scd-dump", corpus, tok, n, len_min, len_max, (uint64_t)seed, 0, whole, &pr);
    const int64_t L = ia->n_layer, D = ia->dim, KD = (int64_t)ia->n_kv_head * ia->head_dim, NR = (int64_t)n * rows;
    /* header: six tensors per layer, layer-major, (NR, cols) f32 each */
    static const char *nm[6] = {"a.k", "b.k", "a.v", "b.v", "a.h", "b.h"};
    char *hdr = malloc(256 * (size_t)(L * 6 + 4));
    size_t hl = 0;
    int64_t off = 0;
    hl += (size_t)sprintf(hdr + hl, "{\"__metadata__\":{\"producer\":\"%s\",\"consumer\":\"%s\",\"prompts\":\"%d\","
                          "\"rows_per_prompt\":\"%d\",\"seed\":\"%d\",\"consecutive\":\"%d\"}", cli_basename(prod), cli_basename(cons), n, rows, seed, consec);
    int64_t *toff = malloc(sizeof(int64_t) * (size_t)(L * 6));
    for (int64_t l = 0; l < L; l++)
        for (int t = 0; t < 6; t++) {
            const int64_t cols = t < 4 ? KD : D, bytes = NR * cols * 4;
            toff[l * 6 + t] = off;
            hl += (size_t)sprintf(hdr + hl, ",\"%s.%lld\":{\"dtype\":\"F32\",\"shape\":[%lld,%lld],\"data_offsets\":[%lld,%lld]}",
                                  nm[t], (long long)l, (long long)NR, (long long)cols, (long long)off, (long long)(off + bytes));
            off += bytes;
        }
    hdr[hl++] = '}';
    while (hl % 8) hdr[hl++] = ' ';
    int fd = open(outp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) cli_die("scd-dump", 1, "%s: cannot create", outp);
    const uint64_t hl64 = hl;
    if (pwrite(fd, &hl64, 8, 0) != 8 || pwrite(fd, hdr, hl, 8) != (ssize_t)hl) cli_die("scd-dump", 1, "%s: write failed", outp);
    const int64_t base = 8 + (int64_t)hl;
    float *buf[6];
    for (int t = 0; t < 6; t++) buf[t] = malloc(sizeof(float) * (size_t)(L * rows * (t < 4 ? KD : D)));
    int32_t *pick = malloc(sizeof(int32_t) * (size_t)rows);
    uint64_t rs = (uint64_t)seed * 7919 + 3;
    const double t0 = skv_time_now();
    for (int32_t p = 0; p < n; p++) {
        const int32_t T = pr.len[p];
        if (consec) { /* one block of consecutive positions */
            const int32_t s0 = (int32_t)(rnd(&rs) % (uint64_t)(T - rows + 1));
            for (int32_t i = 0; i < rows; i++) pick[i] = s0 + i;
        }
        /* rows without replacement: a partial Fisher-Yates over positions */
        int32_t *perm = malloc(sizeof(int32_t) * (size_t)T);
        for (int32_t i = 0; i < T; i++) perm[i] = i;
        for (int32_t i = 0; i < rows && !consec; i++) {
            const int32_t j = i + (int32_t)(rnd(&rs) % (uint64_t)(T - i));
            const int32_t x = perm[i];
            perm[i] = perm[j], perm[j] = x;
            pick[i] = perm[i];
        }
        free(perm);
        model_rows(ma, pr.ids[p], T, pick, rows, buf[0], buf[2], buf[4]);
        model_rows(mb, pr.ids[p], T, pick, rows, buf[1], buf[3], buf[5]);
        for (int64_t l = 0; l < L; l++)
            for (int t = 0; t < 6; t++) {
                const int64_t cols = t < 4 ? KD : D, bytes = (int64_t)rows * cols * 4;
                const int64_t at = base + toff[l * 6 + t] + (int64_t)p * bytes;
                if (pwrite(fd, buf[t] + l * rows * cols, (size_t)bytes, at) != bytes)
                    cli_die("scd-dump", 1, "%s: write failed", outp);
            }
        if ((p + 1) % 10 == 0 || p + 1 == n)
            fprintf(stderr, "scd-dump: %d/%d prompts (%.0f s)\n", p + 1, n, skv_time_now() - t0);
    }
    close(fd);
    printf("%s: %lld rows per layer from %d prompts\n", outp, (long long)NR, n);
    for (int t = 0; t < 6; t++) free(buf[t]);
    free(pick), free(toff), free(hdr);
    scd_prompts_free(&pr);
    skv_model_free(ma), skv_model_free(mb);
    skv_tokenizer_free(tok);
    return 0;
}
