/*
 * smallkv.h — the pieces of SmallKV (arXiv 2508.02751; ../shared/docs/techniques.md §1) that
 * do not depend on running two models: head matching, the per-step token classes of one large
 * model KV head, the budget split, and the compensated attention of one query head.
 *
 * Token classes per large-model KV head at each decode step:
 *   critical  top `crit` tokens by the small model's accumulated attention (matched heads,
 *             summed over the KV head's query heads): attended with the large model's own K/V
 *   recent    the `recent` newest tokens: always attended with own K/V
 *   marginal  the next `marg` tokens by the same score: only V, weighted by the small model's
 *             attention probability at this step
 *   skipped   the rest
 */
#ifndef SKV_KV_SMALLKV_H
#define SKV_KV_SMALLKV_H

#include "internal.h"

enum { SKV_SK_SKIP = 0, SKV_SK_CRIT = 1, SKV_SK_RECENT = 2, SKV_SK_MARG = 3 };

typedef struct skv_smallkv_split {
    int32_t crit, recent, marg; /* token counts; slots = crit + recent + ceil(marg / 2) */
} skv_smallkv_split;

/* Split a budget of `slots` full K+V slots by token ratio crit : recent : marg (2 : 1 : 2 by
 * default); a marginal token costs half a slot. At least one recent token (the current one) is
 * kept; the sum of slots never exceeds the budget (rounding goes to marginal, then recent). */
skv_smallkv_split skv_smallkv_budget(int32_t slots, float r_crit, float r_recent, float r_marg);

/* Head matching: f[i] = argmax_j Jaccard(TopK(acc_l[i]), TopK(acc_s[j])) over T keys.
 * acc_l: (n_l, T), acc_s: (n_s, T). TopK breaks ties toward later keys; argmax ties toward the
 * lowest j. If jac is non-NULL it receives the (n_l, n_s) similarity matrix. */
void skv_smallkv_match(const float *acc_l, int32_t n_l, const float *acc_s, int32_t n_s, int32_t T,
                       int32_t K, int32_t *f, float *jac);

/* out[t] = max of in[t - w/2 .. t + w/2] (clipped to [0, T)); w odd. */
void skv_smallkv_maxpool(const float *in, int32_t T, int32_t w, float *out);

/* Classes cls[T] for keys 0..T-1 (positions; the newest is T-1) from score[T]. */
void skv_smallkv_select(const float *score, int32_t T, skv_smallkv_split s, uint8_t *cls);

/* One query head's output o[hd] over keys with classes cls[T]:
 *   l_k = q . K_k / sqrt(hd) for critical and recent k;
 *   mass (default): o = (1 - m) softmax_{crit+recent}(l) V + sum_{k marg} p_k V_k,
 *                   m = sum_{k marg} p_k (clamped to [0, 1])
 *   paper:          o = softmax_{crit+recent}(l) V + sum_{k marg} p_k V_k
 * K, V: (T, hd) rows; p[T]: the small model's attention probabilities of the matched head. */
void skv_smallkv_attend(const float *q, const float *K, const float *V, int32_t T, int32_t hd,
                        const uint8_t *cls, const float *p, int paper_mode, float *o);

/* The driver's state (internal; tests read it). */
typedef struct skv_context skv_context;
struct skv_smallkv {
    skv_smallkv_params p;
    skv_context *lc, *sc;   /* large, small */
    int32_t L, H, G, KVH;   /* large model: layers, query heads, group size, KV heads */
    int32_t Ls, Hs;         /* small model: layers, query heads */
    int32_t n_ctx;
    int32_t n_prompt;
    skv_smallkv_split split;
    int32_t matched;
    double match_jac, match_cos; /* matched pairs: mean Jaccard of top-K sets, mean cosine of maps */
    int32_t *f;             /* (L*H) matched small head of each large head */
    uint8_t *cls;           /* (L, KVH, n_ctx) token classes (SKV_SK_*) */
    uint8_t *pcls;          /* (L, KVH, n_ctx) the same as a read plan's classes (SKV_READ_*) */
    float *marg;            /* (L, H, n_ctx) marginal weights */
    float *score;           /* (n_ctx) scratch */
    uint8_t *fixed;         /* (L, KVH, n_ctx) static-selection ablation: first step's classes */
    int32_t fixed_set;
    int64_t fast_bytes;
};

#endif
