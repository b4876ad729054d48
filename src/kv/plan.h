/*
 * plan.h — a read plan: for one decode step, how each (cache layer, KV head) stream's slots
 * are read. Both backends' decode attention consume it; techniques that steer reads build
 * one (SmallKV from the small model's attention; KCache from the step's own scores).
 *
 *   SKV_READ_OWN    scored with the slot's own K, its V weighted by the softmax over OWN slots
 *   SKV_READ_VONLY  not scored: its V is added with an external weight (vweight, per query head)
 *   SKV_READ_SKIP   not read at all
 *
 * Combination per query head h: o = own_scale * sum_OWN softmax(q.K / sqrt(d)) V
 *                                   + sum_VONLY vweight_h V,
 * own_scale = 1 - clamp(sum_VONLY vweight_h, 0, 1) (SKV_PLAN_MASS, mass-preserving) or 1
 * (SKV_PLAN_SUM). Rows a plan reads that sit in the slow tier are fetched first (counted in
 * `fetched_bytes` by the backend).
 *
 * A plan may instead (or as well: not yet combined) carry a V top-N rule, `vtop`, which the
 * backend applies itself at every decode step: V of each stream's older slots lives in a slow
 * store (all but the newest `recent` tokens, in whole blocks; cache layers < `fast_layers` keep
 * V fast). After scoring every cached key and taking the softmax over all of them (the full
 * log-sum-exp), the backend ranks the slow slots of each (cache layer, KV head) by the group's
 * probabilities (summed or max over its query heads, or each query head's own top-N with the
 * union read), reads only the N best V rows from the store (ties: lower slot first) and
 * finishes attention over those rows plus the fast ones, weighted either by the softmax
 * probabilities as they are (SKV_VTOP_EXACT: the unread rows' mass is dropped) or renormalised
 * over the rows read (SKV_VTOP_RENORM; when every row is read this is the identity and is
 * skipped, so the result equals ordinary attention bit for bit).
 */
#ifndef SKV_KV_PLAN_H
#define SKV_KV_PLAN_H

#include <stdint.h>

enum { SKV_READ_SKIP = 0, SKV_READ_OWN = 1, SKV_READ_VONLY = 2 };
enum { SKV_PLAN_MASS = 0, SKV_PLAN_SUM = 1 };

enum { SKV_VTOP_RENORM = 0, SKV_VTOP_EXACT = 1 };
enum { SKV_VTOP_SUM = 0, SKV_VTOP_MAX = 1, SKV_VTOP_UNION = 2 };
enum { SKV_VSTORE_MMAP = 0, SKV_VSTORE_ZSTD = 1 };

typedef struct skv_vtop_rule {
    int32_t on;             /* 0: no rule */
    int32_t n;              /* V rows read per stream and step (> 0), or */
    float frac;             /* a fraction of the stream's slots (used when n is 0) */
    int32_t gran;           /* SKV_VTOP_SUM, _MAX or _UNION */
    int32_t weight;         /* SKV_VTOP_RENORM or _EXACT */
    int32_t recent;         /* the newest `recent` slots keep V fast (whole blocks: up to one
                               store block more) */
    int32_t fast_layers;    /* cache layers below this keep every V fast and read all of it */
    /* where the slow V lives */
    int32_t store;          /* SKV_VSTORE_MMAP or SKV_VSTORE_ZSTD */
    int32_t block;          /* tokens per store block (zstd: per compressed block); a multiple
                               of the cache block (32) */
    const char *dir;        /* directory of the store's file (NULL: $TMPDIR or /tmp) */
    int32_t cold;           /* drop the store's pages from the page cache before each step */
} skv_vtop_rule;

/* Rows a rule reads from a stream holding n slow slots. */
static inline int32_t skv_vtop_count(const skv_vtop_rule *r, int32_t n_slots, int32_t n_slow) {
    int32_t k = r->n > 0 ? r->n : (int32_t)(r->frac * (float)n_slots + 0.5f);
    if (k < 1) k = 1;
    return k < n_slow ? k : n_slow;
}

typedef struct skv_read_plan {
    const uint8_t *cls;     /* (n_layer, n_kv_head, stride) SKV_READ_* of every slot */
    const float *vweight;   /* (n_layer, n_head, stride) weight of each VONLY slot (may be NULL
                               when no slot is VONLY) */
    int32_t stride;         /* slots per stream in cls and vweight (the context size) */
    int32_t combine;        /* SKV_PLAN_MASS or SKV_PLAN_SUM */
    skv_vtop_rule vtop;     /* per-step V top-N (vtop.on 0: none) */
} skv_read_plan;

/* The N best slots by score (larger first; ties: lower slot first) among score[0..n), in
 * ascending slot order, into out (returns min(N, n)). scratch: n int32_t. Also the
 * brute-force reference the tests hold it against is the definition: a total order. */
int32_t skv_vtop_select(const float *score, int32_t n, int32_t N, int32_t *out, int32_t *scratch);
/* One KV group's reads under rule r: probs holds its nh query heads' softmax over n slots (rows
 * `stride` apart), slots [0, ns) slow. Returns the slow slots read (ascending, in sel) and each
 * head's weight factor inv[j]: 1 (SKV_VTOP_EXACT, or every row read) or 1 / (the head's mass on
 * the rows read: sel and the fast slots [ns, n)). Scratch: rank (ns floats), idx (ns), mark (ns). */
int32_t skv_vtop_group(const skv_vtop_rule *r, const float *probs, int64_t stride, int32_t nh, int32_t n, int32_t ns,
                       int32_t *sel, float *inv, float *rank, int32_t *idx, uint8_t *mark);

#endif
