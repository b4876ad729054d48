/*
 * cmd_scd_rank.c — `slimkv scd-rank`: SCD's patch-layer selection (techniques.md section 5,
 * calibration step 4) on held-out training prompts (odd-numbered documents: none was used to fit
 * the maps). The score F of a patch set S is minus the mean KL(oracle || consumer) of the next-
 * token distributions over the last --tail tokens of each prompt, decoded one by one after the
 * rest was filled from the codes (reuse everywhere, patch on S). Layers are ranked by their
 * single-layer gain F({l}) - F({}); S_k is the top k; the criterion picks the k maximising
 * (F(S_k) - F({})) / (c k), c = 1 (each patch layer costs the same). Writes JSON for
 * train/scd_calibrate.py --set-rank.
 */
#include "scd_common.h"
#include "scd_prompts.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Reuse and patch rows (de-RoPE'd K, V) of every layer for the first n tokens, through codes
 * rounded to the wire encoding. */
static void layer_rows(const char *cmd, skv_model *pa, skv_model *pb, const skv_scd_maps *maps, const int32_t *ids,
                       int32_t n, int enc, float *Kr, float *Vr, float *Kp, float *Vp) {
    const skv_model_info *in = skv_model_get_info(pa);
    const int64_t L = in->n_layer, D = in->dim, KD = (int64_t)in->n_kv_head * in->head_dim;
    skv_scd_shape sh;
    skv_scd_maps_shape(maps, &sh);
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = n;
    skv_context *c;
    cli_check(cmd, skv_context_init(pa, cp, &c));
    float *H = malloc(sizeof(float) * (size_t)(L * n * D)), *Hb = malloc(sizeof(float) * (size_t)(n * D));
    float *K = malloc(sizeof(float) * (size_t)(n * KD)), *V = malloc(sizeof(float) * (size_t)(n * KD));
    float *Z = malloc(sizeof(float) * (size_t)n * 1024);
    const skv_batch b = {.ids = ids, .n = n, .attn_in = H};
    cli_check(cmd, skv_decode_ex(c, &b));
    for (int32_t l = 0; l < L; l++) {
        cli_check(cmd, skv_context_get_kv(c, l, 1, K, V));
        const int32_t rk = sh.r_k[l], rv = sh.r_v[l], rh = sh.r_h[l];
        if (rk > 1024 || rv > 1024 || rh > 1024) cli_die(cmd, 1, "ranks above 1024 are not handled here");
        cli_check(cmd, skv_scd_encode(maps, l, SKV_SCD_K, K, n, Z));
        cli_check(cmd, skv_wire_round(enc, SKV_PART_ZK, (uint32_t)n, (uint32_t)rk, 0, Z));
        cli_check(cmd, skv_scd_decode(maps, l, SKV_SCD_K, Z, n, Kr + l * n * KD));
        cli_check(cmd, skv_scd_encode(maps, l, SKV_SCD_V, V, n, Z));
        cli_check(cmd, skv_wire_round(enc, SKV_PART_ZV, (uint32_t)n, (uint32_t)rv, 0, Z));
        cli_check(cmd, skv_scd_decode(maps, l, SKV_SCD_V, Z, n, Vr + l * n * KD));
        cli_check(cmd, skv_scd_encode(maps, l, SKV_SCD_H, H + l * n * D, n, Z));
        cli_check(cmd, skv_wire_round(enc, SKV_PART_ZH, (uint32_t)n, (uint32_t)rh, 0, Z));
        cli_check(cmd, skv_scd_decode(maps, l, SKV_SCD_H, Z, n, Hb));
        cli_check(cmd, skv_model_project_kv(pb, l, Hb, n, Kp + l * n * KD, Vp + l * n * KD));
    }
    free(H), free(Hb), free(K), free(V), free(Z);
    skv_context_free(c);
}

/* Mean KL over the tail of a consumer filled with layer rows chosen by patch[] then decoding
 * ids[n..T-1]; lo: the oracle's log-distributions (tail, V). */
static double tail_kl(const char *cmd, skv_model *pb, const uint8_t *patch, const float *Kr, const float *Vr,
                      const float *Kp, const float *Vp, float *K, float *V, const int32_t *ids, int32_t n, int32_t T,
                      const float *lo) {
    const skv_model_info *in = skv_model_get_info(pb);
    const int64_t L = in->n_layer, KD = (int64_t)in->n_kv_head * in->head_dim, NV = in->n_vocab;
    for (int64_t l = 0; l < L; l++) {
        memcpy(K + l * n * KD, (patch[l] ? Kp : Kr) + l * n * KD, sizeof(float) * (size_t)(n * KD));
        memcpy(V + l * n * KD, (patch[l] ? Vp : Vr) + l * n * KD, sizeof(float) * (size_t)(n * KD));
    }
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = T;
    skv_context *c;
    cli_check(cmd, skv_context_init(pb, cp, &c));
    cli_check(cmd, skv_context_put_kv(c, n, K, V, 1));
    float *lg = malloc(sizeof(float) * (size_t)NV), *lq = malloc(sizeof(float) * (size_t)NV);
    double sum = 0;
    for (int32_t t = n; t < T; t++) {
        cli_check(cmd, skv_decode(c, &ids[t], 1, lg, 0));
        scd_log_softmax(lg, (int32_t)NV, lq);
        double kl, tv;
        scd_kl_tv(lo + (int64_t)(t - n) * NV, lq, (int32_t)NV, &kl, &tv);
        sum += kl;
    }
    free(lg), free(lq);
    skv_context_free(c);
    return sum / (T - n);
}

int cmd_scd_rank(int argc, char **argv) {
    const char *prod = NULL, *cons = NULL, *mpath = NULL, *corpus = NULL, *outp = NULL, *enc_s = "bf16";
    int n = 24, len_min = 256, len_max = 1024, tail = 16, threads = 0, seed = 2, whole = 0;
    const cli_opt opts[] = {
        {"model", 'm', OPT_STR, &prod, "DIR", "producer model directory"},
        {"consumer", 0, OPT_STR, &cons, "DIR", "consumer model directory"},
        {"maps", 0, OPT_STR, &mpath, "FILE", "SCD maps (train/scd_calibrate.py)"},
        {"corpus", 'f', OPT_STR, &corpus, "FILE", "training corpus (odd-numbered documents are used)"},
        {"prompts", 'n', OPT_INT, &n, "N", "held-out prompts (default 24)"},
        {"len-min", 0, OPT_INT, &len_min, "T", "shortest prompt (default 256)"},
        {"len-max", 0, OPT_INT, &len_max, "T", "longest prompt (default 1024)"},
        {"tail", 0, OPT_INT, &tail, "M", "last tokens decoded one by one and scored (default 16)"},
        {"code-enc", 0, OPT_STR, &enc_s, "E", "code encoding on the wire: bf16 (default), int8, f32"},
        {"seed", 0, OPT_INT, &seed, "S", "prompt seed (default 2)"},
        {"threads", 't', OPT_INT, &threads, "N", "threads (default: all cores)"},
        {"whole-docs", 0, OPT_FLAG, &whole, NULL, "each document of the parity is one prompt (its last --len-max tokens)"},
        {"out", 'o', OPT_STR, &outp, "FILE", "JSON result"},
    };
    const cli_cmd cmd = {"scd-rank", "-m PRODUCER --consumer DIR --maps FILE -f CORPUS -o FILE",
                         "Rank the layers for SCD's patch path by single-layer gain on held-out prompts and pick the "
                         "patch budget by the paper's criterion.", opts, (int)(sizeof opts / sizeof opts[0])};
    cli_parse(&cmd, argc, argv);
    if (!prod || !cons || !mpath || !corpus || !outp) cli_die("scd-rank", 2, "-m, --consumer, --maps, -f and -o are required");
    if (tail < 1 || tail >= len_min) cli_die("scd-rank", 2, "bad value for --tail: %d (1..--len-min - 1)", tail);
    const int enc = skv_wire_enc_parse(enc_s);
    if (enc != SKV_ENC_BF16 && enc != SKV_ENC_I8ROW && enc != SKV_ENC_F32) cli_die("scd-rank", 2, "bad value for --code-enc: '%s'", enc_s);
    cli_check_writable("scd-rank", "--out", outp);
    skv_tokenizer *tok = cli_load_tokenizer("scd-rank", prod);
    skv_model *pa = cli_load_model("scd-rank", prod, threads, 0), *pb = cli_load_model("scd-rank", cons, threads, 0);
    skv_scd_maps *maps;
    cli_check("scd-rank", skv_scd_maps_load(mpath, &maps));
    cli_check("scd-rank", skv_scd_maps_check(maps, pa));
    cli_check("scd-rank", skv_scd_maps_check(maps, pb));
    const skv_model_info *in = skv_model_get_info(pb);
    const int32_t L = in->n_layer, NV = in->n_vocab;
    const int64_t KD = (int64_t)in->n_kv_head * in->head_dim;
    scd_prompts pr;
    scd_prompts_make("scd-rank", corpus, tok, n, len_min, len_max, (uint64_t)seed, 1, whole, &pr);
    /* kl[set]: set 0 = reuse only, 1 + l = {l}, 1 + L + (k - 1) = S_k */
    double *kl = calloc((size_t)(1 + 2 * L), sizeof(double));
    uint8_t patch[SKV_SCD_MAX_LAYERS];
    int32_t *rank = malloc(sizeof(int32_t) * (size_t)L);
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) { /* rank by the single-layer gains of pass 0 */
            for (int32_t l = 0; l < L; l++) rank[l] = l;
            for (int32_t i = 1; i < L; i++)
                for (int32_t j = i; j > 0 && kl[1 + rank[j]] < kl[1 + rank[j - 1]]; j--) {
                    const int32_t x = rank[j];
                    rank[j] = rank[j - 1], rank[j - 1] = x;
                }
        }
        for (int32_t p = 0; p < pr.n; p++) {
            const int32_t T = pr.len[p], nf = T - tail;
            const int32_t *ids = pr.ids[p];
            float *Kr = malloc(sizeof(float) * (size_t)(L * nf * KD)), *Vr = malloc(sizeof(float) * (size_t)(L * nf * KD));
            float *Kp = malloc(sizeof(float) * (size_t)(L * nf * KD)), *Vp = malloc(sizeof(float) * (size_t)(L * nf * KD));
            float *K = malloc(sizeof(float) * (size_t)(L * nf * KD)), *V = malloc(sizeof(float) * (size_t)(L * nf * KD));
            float *lo = malloc(sizeof(float) * (size_t)tail * (size_t)NV), *lg = malloc(sizeof(float) * (size_t)T * (size_t)NV);
            layer_rows("scd-rank", pa, pb, maps, ids, nf, enc, Kr, Vr, Kp, Vp);
            skv_context_params cp = skv_context_default_params();
            cp.n_ctx = T;
            skv_context *oc;
            cli_check("scd-rank", skv_context_init(pb, cp, &oc));
            cli_check("scd-rank", skv_decode(oc, ids, T, lg, 1));
            skv_context_free(oc);
            for (int32_t t = 0; t < tail; t++) scd_log_softmax(lg + (int64_t)(nf + t) * NV, NV, lo + (int64_t)t * NV);
            if (pass == 0) {
                memset(patch, 0, sizeof patch);
                kl[0] += tail_kl("scd-rank", pb, patch, Kr, Vr, Kp, Vp, K, V, ids, nf, T, lo) / pr.n;
                for (int32_t l = 0; l < L; l++) {
                    memset(patch, 0, sizeof patch);
                    patch[l] = 1;
                    kl[1 + l] += tail_kl("scd-rank", pb, patch, Kr, Vr, Kp, Vp, K, V, ids, nf, T, lo) / pr.n;
                }
            } else {
                memset(patch, 0, sizeof patch);
                for (int32_t k = 1; k <= L; k++) {
                    patch[rank[k - 1]] = 1;
                    kl[L + k] += tail_kl("scd-rank", pb, patch, Kr, Vr, Kp, Vp, K, V, ids, nf, T, lo) / pr.n;
                }
            }
            free(Kr), free(Vr), free(Kp), free(Vp), free(K), free(V), free(lo), free(lg);
            fprintf(stderr, "scd-rank: pass %d, prompt %d/%d\n", pass + 1, p + 1, pr.n);
        }
    }
    int32_t best_k = 0;
    double best = 0;
    for (int32_t k = 1; k <= L; k++) {
        const double crit = (kl[0] - kl[L + k]) / k;
        if (crit > best) best = crit, best_k = k;
    }
    FILE *f = fopen(outp, "w");
    if (!f) cli_die("scd-rank", 1, "%s: cannot write", outp);
    fprintf(f, "{\n");
    cli_json_provenance(f);
    fprintf(f, "  \"prompts\": %d, \"len_min\": %d, \"len_max\": %d, \"tail\": %d, \"code_enc\": \"%s\",\n", n, len_min,
            len_max, tail, enc_s);
    fprintf(f, "  \"kl_reuse_only\": %.6f,\n  \"kl_single\": [", kl[0]);
    for (int32_t l = 0; l < L; l++) fprintf(f, "%s%.6f", l ? ", " : "", kl[1 + l]);
    fprintf(f, "],\n  \"patch_rank\": [");
    for (int32_t l = 0; l < L; l++) fprintf(f, "%s%d", l ? ", " : "", rank[l]);
    fprintf(f, "],\n  \"kl_top_k\": [%.6f", kl[0]);
    for (int32_t k = 1; k <= L; k++) fprintf(f, ", %.6f", kl[L + k]);
    fprintf(f, "],\n  \"criterion\": [0");
    for (int32_t k = 1; k <= L; k++) fprintf(f, ", %.6f", (kl[0] - kl[L + k]) / k);
    fprintf(f, "],\n  \"patch_k\": %d\n}\n", best_k);
    fclose(f);
    printf("reuse-only KL %.4f; rank", kl[0]);
    for (int32_t l = 0; l < L; l++) printf(" %d", rank[l]);
    printf("; KL(S_k) k=1..%d:", L);
    for (int32_t k = 1; k <= L; k++) printf(" %.4f", kl[L + k]);
    printf("; criterion picks k = %d\n", best_k);
    free(kl), free(rank);
    scd_prompts_free(&pr);
    skv_scd_maps_free(maps);
    skv_model_free(pa), skv_model_free(pb);
    skv_tokenizer_free(tok);
    return 0;
}
