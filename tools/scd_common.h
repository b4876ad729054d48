/*
 * scd_common.h — pieces the scd-* commands share: the in-process pipe (the producer's frames
 * checked and fed to a consumer, as a socket would), the patch set from flags, next-token
 * distributions and their KL / TV.
 */
#ifndef SKV_SCD_COMMON_H
#define SKV_SCD_COMMON_H

#include "cli.h"
#include "method/scd_pipe.h"
#include "net/transport.h"

#define SCD_MAX_PAYLOAD (1ull << 30) /* the largest frame payload a consumer accepts */

/* skv_scd_emit into a consumer: every frame goes through skv_frame_check first. */
typedef struct scd_local {
    skv_scd_consumer *cons;
    int done;
} scd_local;
skv_status scd_local_emit(void *arg, const uint8_t *frame, size_t len);

/* req->patch from --patch-layers "a,b,c" if given, else the maps' first k ranked layers
 * (k < 0: the maps' patch_k). Exits naming the flag on bad values. */
void scd_patch_set(const char *cmd, const skv_scd_maps *maps, int32_t k, const char *list, skv_scd_req *req);
/* log-softmax of logits[V] into lp. */
void scd_log_softmax(const float *logits, int32_t V, float *lp);
/* KL(p || q) and total variation of two log-distributions. */
void scd_kl_tv(const float *lp, const float *lq, int32_t V, double *kl, double *tv);
int32_t scd_argmax(const float *x, int32_t n);
/* Greedy generation from c, first input id; stops at eos, max_new, or when the task's score is
 * final. text receives the decoded generation, gen[*n_gen] its ids. */
struct skv_task_row;
void scd_generate(const char *cmd, skv_context *c, int32_t V, const skv_tokenizer *tok, int32_t first,
                  const struct skv_task_row *row, int max_new, char *text, size_t cap, int32_t *gen, int32_t *n_gen);

#endif
