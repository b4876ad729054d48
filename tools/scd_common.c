/*
 * scd_common.c — see scd_common.h.
 */
#include "scd_common.h"
#include "eval/eval.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

skv_status scd_local_emit(void *arg, const uint8_t *frame, size_t len) {
    scd_local *l = arg;
    skv_frame f;
    skv_status st = skv_frame_check(frame, len, SCD_MAX_PAYLOAD, &f);
    if (!st) st = skv_scd_consumer_feed(l->cons, &f, &l->done);
    return st;
}

void scd_patch_set(const char *cmd, const skv_scd_maps *maps, int32_t k, const char *list, skv_scd_req *req) {
    skv_scd_shape sh;
    skv_scd_maps_shape(maps, &sh);
    memset(req->patch, 0, sizeof req->patch);
    if (list && *list) {
        char *dup = strdup(list), *save = NULL;
        for (char *t = strtok_r(dup, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            char *end;
            const long l = strtol(t, &end, 10);
            if (*end || l < 0 || l >= sh.n_layer) cli_die(cmd, 2, "bad value for --patch-layers: '%s' (layers 0..%d)", t, sh.n_layer - 1);
            req->patch[l] = 1;
        }
        free(dup);
        return;
    }
    if (k < 0) k = sh.patch_k;
    if (k > sh.n_layer) cli_die(cmd, 2, "bad value for --patch-k: %d (0..%d)", k, sh.n_layer);
    for (int32_t i = 0; i < k; i++) req->patch[sh.patch_rank[i]] = 1;
}

void scd_log_softmax(const float *x, int32_t V, float *lp) {
    float mx = -INFINITY;
    for (int32_t i = 0; i < V; i++) mx = x[i] > mx ? x[i] : mx;
    double s = 0;
    for (int32_t i = 0; i < V; i++) s += exp((double)x[i] - mx);
    const float lse = mx + (float)log(s);
    for (int32_t i = 0; i < V; i++) lp[i] = x[i] - lse;
}

void scd_kl_tv(const float *lp, const float *lq, int32_t V, double *kl, double *tv) {
    double k = 0, t = 0;
    for (int32_t i = 0; i < V; i++) {
        const double p = exp((double)lp[i]), q = exp((double)lq[i]);
        k += p * ((double)lp[i] - (double)lq[i]);
        t += fabs(p - q);
    }
    *kl = k > 0 ? k : 0;
    *tv = 0.5 * t;
}

int32_t scd_argmax(const float *x, int32_t n) {
    int32_t b = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* Greedy generation from c, first input id; stops at eos, max_new, or when the task's score is
 * final. text receives the decoded generation. */
void scd_generate(const char *cmd, skv_context *c, int32_t V, const skv_tokenizer *tok, int32_t first,
                     const skv_task_row *row, int max_new, char *text, size_t cap, int32_t *gen, int32_t *n_gen) {
    float *lg = malloc(sizeof(float) * (size_t)V);
    int32_t id = first, k = 0;
    text[0] = 0;
    while (k < max_new) {
        cli_check(cmd, skv_decode(c, &id, 1, lg, 0));
        const int32_t nx = scd_argmax(lg, V);
        if (nx == 0) break;
        gen[k++] = nx;
        id = nx;
        char *t = NULL;
        size_t tl;
        if (skv_detokenize(tok, gen, (size_t)k, &t, &tl) == SKV_OK) {
            snprintf(text, cap, "%s", t);
            free(t);
        }
        if (skv_task_score_final(row->task, text, row->answer)) break;
    }
    *n_gen = k;
    free(lg);
}
