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
 */
#ifndef SKV_KV_PLAN_H
#define SKV_KV_PLAN_H

#include <stdint.h>

enum { SKV_READ_SKIP = 0, SKV_READ_OWN = 1, SKV_READ_VONLY = 2 };
enum { SKV_PLAN_MASS = 0, SKV_PLAN_SUM = 1 };

typedef struct skv_read_plan {
    const uint8_t *cls;     /* (n_layer, n_kv_head, stride) SKV_READ_* of every slot */
    const float *vweight;   /* (n_layer, n_head, stride) weight of each VONLY slot (may be NULL
                               when no slot is VONLY) */
    int32_t stride;         /* slots per stream in cls and vweight (the context size) */
    int32_t combine;        /* SKV_PLAN_MASS or SKV_PLAN_SUM */
} skv_read_plan;

#endif
