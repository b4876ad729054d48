/*
 * cmd_scd_ablate.c — `slimkv scd-ablate`: where SCD's quality goes, on the task protocol. Per
 * row both models prefill the prompt (all but its last token); the consumer's cache is then
 * assembled layer by layer from a choice of sources and decodes as scd-eval's consumer does
 * (greedy, scored; KL/TV to the oracle along the oracle's continuation). A configuration is one
 * letter per layer:
 *   o  the oracle's K and V (the consumer's own prefill)
 *   h  the oracle's normalised attention input through the consumer's projections (the patch
 *      path with a perfect aligner: must reproduce o)
 *   w  the producer's raw K and V
 *   r  SCD reuse: the producer's K (de-RoPE'd) and V through the maps' codes (wire-rounded)
 *   p  SCD patch: the producer's normalised input through the maps' code and aligner, projected
 *   K  the oracle's K, reuse V          V  reuse K, the oracle's V
 *   m  the oracle's rows plus --mix times the reuse error: B + a (R - B) (how good a map must be)
 * optionally followed by "+M": the consumer runs the last M prompt tokens itself (its own
 * forward over the assembled cache) instead of receiving them. Also prints each source's
 * relative error to the oracle's rows per layer (||X - B|| / ||B - mean B||, pooled).
 */
#include "scd_common.h"
#include "eval/eval.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CFG 64

typedef struct acfg {
    char spec[80];
    char src[SKV_SCD_MAX_LAYERS];
    int32_t tail;
    double score, kl, tv;
    int32_t n;
} acfg;

/* parse "LETTERS[+M]" for L layers; 0 on error */
static int parse_cfg(const char *s, int32_t L, acfg *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->spec, sizeof c->spec, "%s", s);
    int32_t i = 0;
    for (; s[i] && s[i] != '+'; i++) {
        if (i >= L || !strchr("ohwrpKVm", s[i])) return 0;
        c->src[i] = s[i];
    }
    if (i != L) return 0;
    if (s[i] == '+') {
        char *end;
        const long m = strtol(s + i + 1, &end, 10);
        if (*end || m < 0 || m > 512) return 0;
        c->tail = (int32_t)m;
    }
    return 1;
}

static int cfg_needs(const acfg *c, int n, const char *letters) {
    for (int i = 0; i < n; i++)
        if (c->src[i] && strchr(letters, c->src[i])) return 1;
    return 0;
}

/* one model's prefill of ids[0..n-1]: de-RoPE'd K, V (L, n, KD) and the attention input taps
 * (L, n, D); the context is returned (full cache) */
static skv_context *prefill(const char *C, skv_model *m, const int32_t *ids, int32_t n, int32_t n_ctx, float *K,
                            float *V, float *H) {
    const skv_model_info *in = skv_model_get_info(m);
    const int64_t KD = (int64_t)in->n_kv_head * in->head_dim;
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = n_ctx;
    skv_context *c;
    cli_check(C, skv_context_init(m, cp, &c));
    const skv_batch b = {.ids = ids, .n = n, .attn_in = H};
    cli_check(C, skv_decode_ex(c, &b));
    for (int32_t l = 0; l < in->n_layer; l++)
        cli_check(C, skv_context_get_kv(c, l, 1, K + l * n * KD, V + l * n * KD));
    return c;
}

/* sums for ||X - B||^2 and ||B - mean B||^2 over one layer's rows */
static void err_acc(const float *X, const float *B, int32_t n, int64_t KD, double *num, double *den) {
    double *mu = calloc((size_t)KD, sizeof(double));
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < KD; j++) mu[j] += B[i * KD + j] / n;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < KD; j++) {
            const double d = (double)X[i * KD + j] - B[i * KD + j], e = B[i * KD + j] - mu[j];
            *num += d * d, *den += e * e;
        }
    free(mu);
}

int cmd_scd_ablate(int argc, char **argv) {
    const char *prod = NULL, *cons = NULL, *mpath = NULL, *tasks = NULL, *rows_out = NULL, *cfgs_s = NULL;
    const char *task_names = "dictqa", *enc_s = "bf16";
    int limit = 10, threads = 0, kl_n = 16, max_new = 48;
    float mix = 0.5f;
    const cli_opt opts[] = {
        {"model", 'm', OPT_STR, &prod, "DIR", "producer model directory"},
        {"consumer", 0, OPT_STR, &cons, "DIR", "consumer model directory"},
        {"maps", 0, OPT_STR, &mpath, "FILE", "SCD maps (needed by r, p, K, V)"},
        {"tasks", 0, OPT_STR, &tasks, "FILE", "task file (JSONL)"},
        {"task-names", 0, OPT_STR, &task_names, "LIST", "tasks evaluated (default dictqa)"},
        {"limit", 0, OPT_INT, &limit, "N", "first N rows of each task (default 10)"},
        {"configs", 0, OPT_STR, &cfgs_s, "LIST", "comma-separated configurations (one letter per layer, optional +M)"},
        {"mix", 0, OPT_FLOAT, &mix, "A", "m: the share of the reuse error kept (default 0.5)"},
        {"code-enc", 0, OPT_STR, &enc_s, "E", "codes rounded as on the wire: bf16 (default), int8, f32"},
        {"kl-n", 0, OPT_INT, &kl_n, "N", "positions of the oracle's continuation scored for KL/TV (default 16)"},
        {"max-new", 0, OPT_INT, &max_new, "N", "tokens generated at most (default 48)"},
        {"threads", 't', OPT_INT, &threads, "N", "threads (default: all cores)"},
        {"rows-out", 0, OPT_STR, &rows_out, "FILE", "one JSON line per (row, configuration)"},
    };
    const cli_cmd cmd = {"scd-ablate", "-m PRODUCER --consumer DIR [--maps FILE] --tasks FILE --configs LIST",
                         "SCD ablations: the consumer's cache assembled per layer from the oracle, the producer's raw "
                         "rows, reuse or patch codes, or the oracle's inputs; task scores and KL/TV to the oracle.",
                         opts, (int)(sizeof opts / sizeof opts[0])};
    cli_parse(&cmd, argc, argv);
    const char *C = "scd-ablate";
    if (!prod || !cons || !tasks || !cfgs_s) cli_die(C, 2, "-m, --consumer, --tasks and --configs are required");
    if (limit < 1 || kl_n < 1 || max_new < 1 || max_new > 64) cli_die(C, 2, "bad --limit, --kl-n or --max-new");
    const int enc = skv_wire_enc_parse(enc_s);
    if (enc != SKV_ENC_BF16 && enc != SKV_ENC_I8ROW && enc != SKV_ENC_F32) cli_die(C, 2, "bad value for --code-enc: '%s'", enc_s);
    if (rows_out) cli_check_writable(C, "--rows-out", rows_out);
    skv_tokenizer *tok = cli_load_tokenizer(C, cons);
    skv_model *pa = cli_load_model(C, prod, threads, 0), *pb = cli_load_model(C, cons, threads, 0);
    const skv_model_info *in = skv_model_get_info(pb), *ia = skv_model_get_info(pa);
    const int32_t L = in->n_layer, NV = in->n_vocab, D = in->dim;
    const int64_t KD = (int64_t)in->n_kv_head * in->head_dim;
    if (ia->n_layer != L || ia->dim != D || ia->n_kv_head != in->n_kv_head || ia->head_dim != in->head_dim)
        cli_die(C, 1, "%s and %s differ in shape (SCD needs one architecture)", prod, cons);
    skv_scd_maps *maps = NULL;
    skv_scd_shape sh = {0};
    if (mpath) {
        cli_check(C, skv_scd_maps_load(mpath, &maps));
        cli_check(C, skv_scd_maps_check(maps, pb));
        skv_scd_maps_shape(maps, &sh);
        for (int32_t l = 0; l < L; l++)
            if (sh.r_k[l] > 1024 || sh.r_v[l] > 1024 || sh.r_h[l] > 1024) cli_die(C, 1, "ranks above 1024 are not handled here");
    }
    static acfg cf[MAX_CFG];
    int n_cfg = 0;
    char *cl = strdup(cfgs_s), *save = NULL;
    for (char *t = strtok_r(cl, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (n_cfg == MAX_CFG) cli_die(C, 2, "at most %d configurations", MAX_CFG);
        if (!parse_cfg(t, L, &cf[n_cfg]))
            cli_die(C, 2, "bad value for --configs: '%s' (%d letters of o,h,w,r,p,K,V, then optionally +M)", t, L);
        if (!maps && cfg_needs(&cf[n_cfg], L, "rpKVm")) cli_die(C, 2, "configuration '%s' needs --maps", t);
        n_cfg++;
    }
    free(cl);
    int need_r = 0, need_p = 0;
    for (int i = 0; i < n_cfg; i++) need_r |= cfg_needs(&cf[i], L, "rKVm"), need_p |= cfg_needs(&cf[i], L, "p");
    const char *tn[8];
    int n_tn = 0;
    char *tl = strdup(task_names);
    for (char *t = strtok_r(tl, ",", &save); t && n_tn < 8; t = strtok_r(NULL, ",", &save)) tn[n_tn++] = t;
    skv_task_set ts;
    cli_check(C, skv_tasks_load(tasks, limit, &ts));
    FILE *rf = rows_out ? fopen(rows_out, "w") : NULL;
    const int64_t NMAX = 2048, LKV = (int64_t)L * NMAX * KD;
    float *KA = malloc(sizeof(float) * (size_t)LKV), *VA = malloc(sizeof(float) * (size_t)LKV);
    float *KB = malloc(sizeof(float) * (size_t)LKV), *VB = malloc(sizeof(float) * (size_t)LKV);
    float *KR = malloc(sizeof(float) * (size_t)LKV), *VR = malloc(sizeof(float) * (size_t)LKV);
    float *KP = malloc(sizeof(float) * (size_t)LKV), *VP = malloc(sizeof(float) * (size_t)LKV);
    float *KH = malloc(sizeof(float) * (size_t)LKV), *VH = malloc(sizeof(float) * (size_t)LKV);
    float *K = malloc(sizeof(float) * (size_t)LKV), *V = malloc(sizeof(float) * (size_t)LKV);
    float *HA = malloc(sizeof(float) * (size_t)(L * NMAX * D)), *HB = malloc(sizeof(float) * (size_t)(L * NMAX * D));
    float *Hh = malloc(sizeof(float) * (size_t)(NMAX * D)), *Z = malloc(sizeof(float) * (size_t)(NMAX * 1024));
    float *lo = malloc(sizeof(float) * (size_t)(kl_n + 1) * (size_t)NV), *lg = malloc(sizeof(float) * (size_t)NV);
    float *lq = malloc(sizeof(float) * (size_t)NV);
    if (!KA || !VA || !KB || !VB || !KR || !VR || !KP || !VP || !KH || !VH || !K || !V || !HA || !HB || !Hh || !Z || !lo ||
        !lg || !lq)
        cli_die(C, 1, "out of memory");
    /* per-layer error sums: [source w r p h][K V][num den] */
    double *es = calloc((size_t)L * 4 * 2 * 2, sizeof(double));
    int32_t ogen[64], gen[64], n_ogen = 0, n_gen = 0;
    char text[4096];
    const double t0 = skv_time_now();
    int rows_done = 0;
    for (int32_t r = 0; r < ts.n; r++) {
        const skv_task_row *row = &ts.rows[r];
        int ti = -1;
        for (int i = 0; i < n_tn; i++)
            if (!strcmp(tn[i], row->task)) ti = i;
        if (ti < 0) continue;
        size_t nt;
        int32_t *all = cli_tokenize(C, tok, pa, row->context, strlen(row->context), &nt);
        const int32_t n_ids = (int32_t)SKV_CLI_MIN(nt, (size_t)1984), n = n_ids - 1;
        const int32_t *ids = all + nt - n_ids;
        skv_context *ac = prefill(C, pa, ids, n, n, KA, VA, HA);
        skv_context_free(ac);
        skv_context *oc = prefill(C, pb, ids, n, n_ids + max_new + 1, KB, VB, HB);
        /* the oracle: its generation and teacher-forced distributions */
        const skv_policy_params full = skv_policy_default_params("full");
        skv_context *of;
        cli_check(C, skv_context_fork(oc, &full, &of));
        scd_generate(C, oc, NV, tok, ids[n], row, max_new, text, sizeof text, ogen, &n_ogen);
        double oscore = 0;
        cli_check(C, skv_task_score(row->task, text, row->answer, &oscore));
        const int okl = SKV_CLI_MIN(kl_n, n_ogen + 1);
        for (int t = 0; t < okl; t++) {
            const int32_t id = t == 0 ? ids[n] : ogen[t - 1];
            cli_check(C, skv_decode(of, &id, 1, lg, 0));
            scd_log_softmax(lg, NV, lo + (int64_t)t * NV);
        }
        skv_context_free(of), skv_context_free(oc);
        /* the sources */
        for (int32_t l = 0; l < L; l++) {
            const int64_t o = (int64_t)l * n * KD;
            cli_check(C, skv_model_project_kv(pb, l, HB + (int64_t)l * n * D, n, KH + o, VH + o));
            if (need_r) {
                const int32_t rk = sh.r_k[l], rv = sh.r_v[l];
                cli_check(C, skv_scd_encode(maps, l, SKV_SCD_K, KA + o, n, Z));
                cli_check(C, skv_wire_round(enc, SKV_PART_ZK, (uint32_t)n, (uint32_t)rk, 0, Z));
                cli_check(C, skv_scd_decode(maps, l, SKV_SCD_K, Z, n, KR + o));
                cli_check(C, skv_scd_encode(maps, l, SKV_SCD_V, VA + o, n, Z));
                cli_check(C, skv_wire_round(enc, SKV_PART_ZV, (uint32_t)n, (uint32_t)rv, 0, Z));
                cli_check(C, skv_scd_decode(maps, l, SKV_SCD_V, Z, n, VR + o));
            }
            if (need_p) {
                cli_check(C, skv_scd_encode(maps, l, SKV_SCD_H, HA + (int64_t)l * n * D, n, Z));
                cli_check(C, skv_wire_round(enc, SKV_PART_ZH, (uint32_t)n, (uint32_t)sh.r_h[l], 0, Z));
                cli_check(C, skv_scd_decode(maps, l, SKV_SCD_H, Z, n, Hh));
                cli_check(C, skv_model_project_kv(pb, l, Hh, n, KP + o, VP + o));
            }
            const float *sk[4] = {KA, need_r ? KR : NULL, need_p ? KP : NULL, KH};
            const float *sv[4] = {VA, need_r ? VR : NULL, need_p ? VP : NULL, VH};
            for (int s = 0; s < 4; s++) {
                if (!sk[s]) continue;
                double *e = es + ((int64_t)l * 4 + s) * 4;
                err_acc(sk[s] + o, KB + o, n, KD, &e[0], &e[1]);
                err_acc(sv[s] + o, VB + o, n, KD, &e[2], &e[3]);
            }
        }
        for (int ci = 0; ci < n_cfg; ci++) {
            acfg *c = &cf[ci];
            const int32_t m = SKV_CLI_MIN(c->tail, n - 1), nf = n - m;
            for (int32_t l = 0; l < L; l++) {
                const int64_t o = (int64_t)l * n * KD, of2 = (int64_t)l * nf * KD;
                const float *ks, *vs;
                switch (c->src[l]) {
                case 'o': ks = KB, vs = VB; break;
                case 'h': ks = KH, vs = VH; break;
                case 'w': ks = KA, vs = VA; break;
                case 'r': ks = KR, vs = VR; break;
                case 'p': ks = KP, vs = VP; break;
                case 'K': ks = KB, vs = VR; break;
                case 'm':
                    for (int64_t i = 0; i < nf * KD; i++) {
                        K[of2 + i] = KB[o + i] + mix * (KR[o + i] - KB[o + i]);
                        V[of2 + i] = VB[o + i] + mix * (VR[o + i] - VB[o + i]);
                    }
                    continue;
                default: ks = KR, vs = VB; break; /* 'V' */
                }
                memcpy(K + of2, ks + o, sizeof(float) * (size_t)(nf * KD));
                memcpy(V + of2, vs + o, sizeof(float) * (size_t)(nf * KD));
            }
            skv_context_params cp = skv_context_default_params();
            cp.n_ctx = n_ids + max_new + 1;
            skv_context *bc, *tf;
            cli_check(C, skv_context_init(pb, cp, &bc));
            cli_check(C, skv_context_put_kv(bc, nf, K, V, 1));
            if (m > 0) cli_check(C, skv_decode(bc, ids + nf, m, lg, 0));
            cli_check(C, skv_context_fork(bc, &full, &tf));
            scd_generate(C, bc, NV, tok, ids[n], row, max_new, text, sizeof text, gen, &n_gen);
            double kl = 0, tv = 0;
            for (int t = 0; t < okl; t++) {
                const int32_t id = t == 0 ? ids[n] : ogen[t - 1];
                cli_check(C, skv_decode(tf, &id, 1, lg, 0));
                scd_log_softmax(lg, NV, lq);
                double k1, t1;
                scd_kl_tv(lo + (int64_t)t * NV, lq, NV, &k1, &t1);
                kl += k1, tv += t1;
            }
            kl /= okl, tv /= okl;
            double score = 0;
            cli_check(C, skv_task_score(row->task, text, row->answer, &score));
            c->score += score, c->kl += kl, c->tv += tv, c->n++;
            if (rf) {
                fprintf(rf, "{\"task\": \"%s\", \"index\": %d, \"config\": \"%s\", \"oracle_score\": %.4f, \"score\": %.4f, "
                        "\"kl\": %.6f, \"tv\": %.6f, \"tokens\": %d, \"gen\": ", row->task, row->index, c->spec, oscore,
                        score, kl, tv, n);
                cli_json_string(rf, text, strlen(text));
                fprintf(rf, "}\n");
                fflush(rf);
            }
            skv_context_free(tf), skv_context_free(bc);
        }
        free(all);
        rows_done++;
        fprintf(stderr, "scd-ablate: %d rows (%s %d), %.0f s\n", rows_done, row->task, row->index, skv_time_now() - t0);
    }
    printf("| config | rows | score | KL | TV |\n|---|---|---|---|---|\n");
    for (int ci = 0; ci < n_cfg; ci++) {
        const acfg *c = &cf[ci];
        if (c->n) printf("| %s | %d | %.3f | %.4f | %.4f |\n", c->spec, c->n, c->score / c->n, c->kl / c->n, c->tv / c->n);
    }
    static const char *sn[4] = {"raw", "reuse", "patch", "oracle-input"};
    printf("\nrelative error to the oracle's rows, ||X - B|| / ||B - mean B|| (K de-RoPE'd), per layer:\n| source |");
    for (int32_t l = 0; l < L; l++) printf(" L%d K / V |", l);
    printf("\n|---|");
    for (int32_t l = 0; l < L; l++) printf("---|");
    printf("\n");
    for (int s = 0; s < 4; s++) {
        if ((s == 1 && !need_r) || (s == 2 && !need_p) || !rows_done) continue;
        printf("| %s |", sn[s]);
        for (int32_t l = 0; l < L; l++) {
            const double *e = es + ((int64_t)l * 4 + s) * 4;
            printf(" %.3f / %.3f |", sqrt(e[0] / e[1]), sqrt(e[2] / e[3]));
        }
        printf("\n");
    }
    if (rf) fclose(rf);
    free(KA), free(VA), free(KB), free(VB), free(KR), free(VR), free(KP), free(VP), free(KH), free(VH), free(K), free(V);
    free(HA), free(HB), free(Hh), free(Z), free(lo), free(lg), free(lq), free(es), free(tl);
    skv_tasks_free(&ts);
    skv_scd_maps_free(maps);
    skv_model_free(pa), skv_model_free(pb);
    skv_tokenizer_free(tok);
    return 0;
}
