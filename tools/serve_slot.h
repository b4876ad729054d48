/*
 * serve_slot.h — a scheduler slot (serve_sched.c) and its cache (serve_slot.c).
 */
#ifndef SKV_SERVE_SLOT_H
#define SKV_SERVE_SLOT_H

#include "serve.h"

#define SKV_CLI_MIN(a, b) ((a) < (b) ? (a) : (b))
#define SKV_CLI_MAX(a, b) ((a) > (b) ? (a) : (b))

enum { SLOT_FREE = 0, SLOT_PREFILL = 1, SLOT_DECODE = 2 };
enum { SLOT_NONE = 0, SLOT_OWN = 1, SLOT_BATCH = 2 };

struct srv_slot {
    int idx;
    int state;
    srv_req *r;
    /* the cache */
    skv_context *own;          /* the slot's own context, or NULL */
    char own_pol[32];
    skv_policy_params own_p;   /* the policy it was made with */
    int in_batch;              /* the request runs as sequence seq of group grp's context */
    int grp, seq;
    int cache_kind;            /* SLOT_OWN or SLOT_BATCH: where ids are cached */
    int reusable;              /* ids[0..n_ids) are in the cache, intact (full policy) */
    int32_t *ids, n_ids, cap_ids;
    /* the request's progress */
    int32_t pos;               /* prompt tokens in the cache */
    int32_t next;              /* the id the next decode step feeds */
    skv_sampler *smp;
    skv_detok *dt;
    char *gen;                 /* all generated text */
    size_t gen_len, gen_cap, released;
    srv_tok *pend;             /* generated tokens not yet released (logprobs) */
    int32_t n_pend, cap_pend;
    double t_last;
};

int slot_uses_batch(const srv *s, const srv_req *r);
/* the context a batched slot's sequence lives in */
skv_context *slot_ctx(const srv *s, const srv_slot *sl);
/* the evicting group (> 0) a request joins, made on first use; 0: none (its own context) */
int slot_group(srv *s, const skv_policy_params *p);
int32_t slot_n_past(const srv *s, const srv_slot *sl);
int32_t slot_prefix(const srv *s, const srv_slot *sl, const srv_req *r);
/* Make the slot's cache ready for r; *reused prompt tokens are already in it. */
skv_status slot_prepare(srv *s, srv_slot *sl, srv_req *r, int32_t *reused);
/* Prefill n ids (logits of the last one into logits when non-NULL; own contexts only). */
skv_status slot_append(srv *s, srv_slot *sl, const int32_t *ids, int32_t n, float *logits);
void slot_release(srv *s, srv_slot *sl);
int64_t slot_kv_bytes(const srv *s, const srv_slot *sl, int64_t *fast, int64_t *slow);
void slot_free(srv_slot *sl);

#endif
