/*
 * cmd_scd_eval.c — `slimkv scd-eval`: SCD and its baselines through the same frames, in one
 * process, on the task protocol (docs/evaluation.md section 2): per row the producer prefills
 * once, every method's frames are checked and fed to a consumer, which decodes greedily from
 * the rebuilt cache. Scores, KL and TV of the consumer's next-token distributions to the
 * oracle's (the consumer's own prefill) along the oracle's continuation (teacher-forced, the
 * first --kl-n positions), and bytes per request.
 */
#include "scd_common.h"
#include "eval/eval.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CFG 64

typedef struct cfg {
    char name[32];
    skv_scd_req req;
    /* sums per task */
    double score[8], kl[8], tv[8], bytes[8], layer_bytes[8], tokens[8];
    int32_t n[8];
} cfg;

static int task_index(const char *t, const char **names, int n) {
    for (int i = 0; i < n; i++)
        if (!strcmp(names[i], t)) return i;
    return -1;
}

int cmd_scd_eval(int argc, char **argv) {
    const char *prod = NULL, *cons = NULL, *mpath = NULL, *tasks = NULL, *outp = NULL, *rows_out = NULL;
    const char *methods = "oracle,raw,kivi4,recompute,reuse,scd", *task_names = "dictqa,macroqa,passkey";
    const char *enc_s = "bf16", *patch_layers = NULL;
    int limit = 10, threads = 0, patch_k = -1, rc_start = 0, rc_k = 2, sweep = 0, kl_n = 16, max_new = 48;
    const cli_opt opts[] = {
        {"model", 'm', OPT_STR, &prod, "DIR", "producer model directory"},
        {"consumer", 0, OPT_STR, &cons, "DIR", "consumer model directory"},
        {"maps", 0, OPT_STR, &mpath, "FILE", "SCD maps"},
        {"tasks", 0, OPT_STR, &tasks, "FILE", "task file (JSONL)"},
        {"task-names", 0, OPT_STR, &task_names, "LIST", "tasks evaluated (default dictqa,macroqa,passkey)"},
        {"limit", 0, OPT_INT, &limit, "N", "first N rows of each task (default 10)"},
        {"methods", 0, OPT_STR, &methods, "LIST", "oracle,raw,kivi4,recompute,reuse,scd (default all)"},
        {"sweep", 0, OPT_FLAG, &sweep, NULL, "also scd with the top k = 1 .. n_layer ranked patch layers"},
        {"patch-k", 0, OPT_INT, &patch_k, "K", "scd: the top K ranked patch layers (default: the maps' patch_k)"},
        {"patch-layers", 0, OPT_STR, &patch_layers, "LIST", "scd: explicit patch layers"},
        {"rc-start", 0, OPT_INT, &rc_start, "L", "recompute: first layer of the span (default 0)"},
        {"rc-k", 0, OPT_INT, &rc_k, "K", "recompute: layers in the span (default 2)"},
        {"code-enc", 0, OPT_STR, &enc_s, "E", "codes on the wire: bf16 (default), int8, f32"},
        {"kl-n", 0, OPT_INT, &kl_n, "N", "positions of the oracle's continuation scored for KL/TV (default 16)"},
        {"max-new", 0, OPT_INT, &max_new, "N", "tokens generated at most (default 48)"},
        {"threads", 't', OPT_INT, &threads, "N", "threads (default: all cores)"},
        {"out", 'o', OPT_STR, &outp, "FILE", "summary JSON"},
        {"rows-out", 0, OPT_STR, &rows_out, "FILE", "one JSON line per (row, method)"},
    };
    const cli_cmd cmd = {"scd-eval", "-m PRODUCER --consumer DIR --maps FILE --tasks FILE [--limit N] [--sweep]",
                         "SCD and its baselines (oracle, raw, kivi4, recompute, reuse) through the same frames, in "
                         "one process: task scores, KL/TV to the oracle, bytes per request.",
                         opts, (int)(sizeof opts / sizeof opts[0])};
    cli_parse(&cmd, argc, argv);
    const char *C = "scd-eval";
    if (!prod || !cons || !tasks) cli_die(C, 2, "-m, --consumer and --tasks are required");
    if (limit < 1 || kl_n < 1 || max_new < 1 || max_new > 64) cli_die(C, 2, "bad --limit, --kl-n or --max-new");
    const int enc = skv_wire_enc_parse(enc_s);
    if (enc != SKV_ENC_BF16 && enc != SKV_ENC_I8ROW && enc != SKV_ENC_F32) cli_die(C, 2, "bad value for --code-enc: '%s'", enc_s);
    if (outp) cli_check_writable(C, "--out", outp);
    if (rows_out) cli_check_writable(C, "--rows-out", rows_out);
    skv_tokenizer *tok = cli_load_tokenizer(C, cons);
    skv_model *pa = cli_load_model(C, prod, threads, 0), *pb = cli_load_model(C, cons, threads, 0);
    skv_scd_maps *maps = NULL;
    if (mpath) cli_check(C, skv_scd_maps_load(mpath, &maps));
    const skv_model_info *in = skv_model_get_info(pb);
    const int32_t L = in->n_layer, NV = in->n_vocab, D = in->dim;
    /* the configurations */
    static cfg cfgs[MAX_CFG];
    int n_cfg = 0;
    char *ml = strdup(methods), *save = NULL;
    for (char *t = strtok_r(ml, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        const int m = skv_scd_method_parse(t);
        if (m < 0) cli_die(C, 2, "bad value for --methods: '%s'", t);
        if ((m == SKV_SCD_REUSE || m == SKV_SCD_FULL) && !maps) cli_die(C, 2, "method %s needs --maps", t);
        cfg *c = &cfgs[n_cfg++];
        memset(c, 0, sizeof *c);
        snprintf(c->name, sizeof c->name, "%s", t);
        c->req = (skv_scd_req){.method = m, .code_enc = enc, .rc_start = rc_start, .rc_k = rc_k};
        if (m == SKV_SCD_FULL) {
            scd_patch_set(C, maps, patch_k, patch_layers, &c->req);
            int k = 0;
            for (int32_t l = 0; l < L; l++) k += c->req.patch[l];
            snprintf(c->name, sizeof c->name, "scd-k%d", k);
        }
    }
    free(ml);
    if (n_cfg == 0 || cfgs[0].req.method != SKV_SCD_ORACLE) cli_die(C, 2, "--methods must start with oracle (the reference)");
    if (sweep) {
        if (!maps) cli_die(C, 2, "--sweep needs --maps");
        for (int32_t k = 1; k <= L && n_cfg < MAX_CFG; k++) {
            cfg *c = &cfgs[n_cfg];
            memset(c, 0, sizeof *c);
            snprintf(c->name, sizeof c->name, "scd-k%d", k);
            int dup = 0;
            for (int i = 0; i < n_cfg; i++) dup |= !strcmp(cfgs[i].name, c->name);
            if (dup) continue;
            c->req = (skv_scd_req){.method = SKV_SCD_FULL, .code_enc = enc};
            scd_patch_set(C, maps, k, NULL, &c->req);
            n_cfg++;
        }
    }
    const char *tn[8];
    int n_tn = 0;
    char *tl = strdup(task_names);
    for (char *t = strtok_r(tl, ",", &save); t && n_tn < 8; t = strtok_r(NULL, ",", &save)) tn[n_tn++] = t;
    skv_task_set ts;
    cli_check(C, skv_tasks_load(tasks, limit, &ts));
    FILE *rf = rows_out ? fopen(rows_out, "w") : NULL;
    float *H = malloc(sizeof(float) * (size_t)L * 2048 * (size_t)D), *R = malloc(sizeof(float) * (size_t)L * 2048 * (size_t)D);
    float *lo = malloc(sizeof(float) * (size_t)(kl_n + 1) * (size_t)NV), *lg = malloc(sizeof(float) * (size_t)NV);
    float *lq = malloc(sizeof(float) * (size_t)NV);
    int32_t ogen[64], gen[64], n_ogen = 0, n_gen = 0;
    char text[4096];
    const double t_start = skv_time_now();
    int rows_done = 0;
    for (int32_t r = 0; r < ts.n; r++) {
        const skv_task_row *row = &ts.rows[r];
        const int ti = task_index(row->task, tn, n_tn);
        if (ti < 0) continue;
        size_t nt;
        int32_t *all = cli_tokenize(C, tok, pa, row->context, strlen(row->context), &nt);
        const int32_t n_ids = (int32_t)SKV_CLI_MIN(nt, (size_t)1984), n = n_ids - 1;
        const int32_t *ids = all + nt - n_ids;
        /* the producer's one prefill, with both taps */
        skv_context_params pcp = skv_context_default_params();
        pcp.n_ctx = n;
        skv_context *pc;
        cli_check(C, skv_context_init(pa, pcp, &pc));
        const double tp = skv_time_now();
        const skv_batch pb_ = {.ids = ids, .n = n, .attn_in = H, .resid_in = R};
        cli_check(C, skv_decode_ex(pc, &pb_));
        const double t_prefill = skv_time_now() - tp;
        int okl = 0; /* oracle positions with distributions */
        for (int ci = 0; ci < n_cfg; ci++) {
            cfg *c = &cfgs[ci];
            skv_context_params cp = skv_context_default_params();
            cp.n_ctx = n_ids + max_new + 1;
            skv_scd_consumer *sc;
            cli_check(C, skv_scd_consumer_init(pb, maps, cp, &sc));
            scd_local loc = {.cons = sc};
            skv_scd_prod_stats ps = {.t_prefill = t_prefill};
            cli_check(C, skv_scd_produce_ctx(pc, H, R, maps, ids, n_ids, &c->req, scd_local_emit, &loc, &ps));
            if (!loc.done) cli_die(C, 1, "%s: the consumer did not finish", c->name);
            skv_context *bc = skv_scd_consumer_context(sc);
            skv_context *tf;
            const skv_policy_params full = skv_policy_default_params("full");
            cli_check(C, skv_context_fork(bc, &full, &tf));
            /* teacher-forced distributions along the oracle's continuation */
            double kl = 0, tv = 0;
            int npos = 0;
            if (ci == 0) scd_generate(C, bc, NV, tok, ids[n], row, max_new, text, sizeof text, ogen, &n_ogen);
            else scd_generate(C, bc, NV, tok, ids[n], row, max_new, text, sizeof text, gen, &n_gen);
            if (ci == 0) okl = SKV_CLI_MIN(kl_n, n_ogen + 1);
            for (int t = 0; t < okl; t++) { /* input t: the last prompt token, then the oracle's tokens */
                const int32_t id = t == 0 ? ids[n] : ogen[t - 1];
                cli_check(C, skv_decode(tf, &id, 1, lg, 0));
                if (ci == 0) {
                    scd_log_softmax(lg, NV, lo + (int64_t)t * NV);
                    continue;
                }
                scd_log_softmax(lg, NV, lq);
                double k1, t1;
                scd_kl_tv(lo + (int64_t)t * NV, lq, NV, &k1, &t1);
                kl += k1, tv += t1, npos++;
            }
            if (npos) kl /= npos, tv /= npos;
            double score = 0;
            cli_check(C, skv_task_score(row->task, text, row->answer, &score));
            c->score[ti] += score, c->kl[ti] += kl, c->tv[ti] += tv, c->n[ti]++;
            c->bytes[ti] += (double)ps.bytes, c->layer_bytes[ti] += (double)ps.layer_bytes, c->tokens[ti] += n;
            if (rf) {
                fprintf(rf, "{\"task\": \"%s\", \"index\": %d, \"method\": \"%s\", \"score\": %.4f, \"kl\": %.6f, \"tv\": %.6f, "
                        "\"bytes\": %llu, \"layer_bytes\": %llu, \"tokens\": %d, \"gen\": ", row->task, row->index, c->name,
                        score, kl, tv, (unsigned long long)ps.bytes, (unsigned long long)ps.layer_bytes, n);
                cli_json_string(rf, text, strlen(text));
                fprintf(rf, "}\n");
                fflush(rf);
            }
            skv_context_free(tf);
            skv_scd_consumer_free(sc);
        }
        skv_context_free(pc);
        free(all);
        rows_done++;
        fprintf(stderr, "scd-eval: %d rows (%s %d), %.0f s\n", rows_done, row->task, row->index, skv_time_now() - t_start);
    }
    /* summary */
    printf("| method | task | rows | score | KL | TV | bytes/token |\n|---|---|---|---|---|---|---|\n");
    FILE *f = outp ? fopen(outp, "w") : NULL;
    if (outp && !f) cli_die(C, 1, "%s: cannot write", outp);
    if (f) {
        fprintf(f, "{\n");
        cli_json_provenance(f);
        fprintf(f, "  \"limit\": %d, \"kl_n\": %d, \"code_enc\": \"%s\", \"maps\": \"%s\",\n  \"results\": [\n", limit, kl_n,
                enc_s, mpath ? mpath : "");
    }
    int first = 1;
    for (int ci = 0; ci < n_cfg; ci++)
        for (int ti = 0; ti < n_tn; ti++) {
            cfg *c = &cfgs[ci];
            if (!c->n[ti]) continue;
            const double k = c->n[ti];
            printf("| %s | %s | %d | %.3f | %.4f | %.4f | %.0f |\n", c->name, tn[ti], c->n[ti], c->score[ti] / k,
                   c->kl[ti] / k, c->tv[ti] / k, c->layer_bytes[ti] / c->tokens[ti]);
            if (f)
                fprintf(f, "%s    {\"method\": \"%s\", \"task\": \"%s\", \"rows\": %d, \"score\": %.4f, \"kl\": %.6f, "
                        "\"tv\": %.6f, \"bytes_per_request\": %.0f, \"layer_bytes_per_token\": %.1f}", first ? "" : ",\n",
                        c->name, tn[ti], c->n[ti], c->score[ti] / k, c->kl[ti] / k, c->tv[ti] / k, c->bytes[ti] / k,
                        c->layer_bytes[ti] / c->tokens[ti]);
            first = 0;
        }
    if (f) {
        fprintf(f, "\n  ]\n}\n");
        fclose(f);
    }
    if (rf) fclose(rf);
    free(H), free(R), free(lo), free(lg), free(lq), free(tl);
    skv_tasks_free(&ts);
    skv_scd_maps_free(maps);
    skv_model_free(pa), skv_model_free(pb);
    skv_tokenizer_free(tok);
    return 0;
}
