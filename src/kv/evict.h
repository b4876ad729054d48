/*
 * evict.h — an eviction rule as data (no dependencies: the CUDA backend includes it too).
 */
#ifndef SKV_KV_EVICT_H
#define SKV_KV_EVICT_H

#include <math.h>
#include <stdint.h>

/* What an evicting policy ranks the unprotected slots by (larger is kept). */
typedef enum skv_rank {
    SKV_RANK_POSITION = 0, /* newer tokens first */
    SKV_RANK_ACC = 1,
    SKV_RANK_WIN = 2,      /* max-pooled over `pool` position-neighbouring slots */
    SKV_RANK_LAST = 3,
} skv_rank;

/* Eviction, as one rule the CPU (kv/select.c) and CUDA (gpu_cache.cu) both execute.
 * Compress to a budget b: keep the `sinks` oldest slots and the `recent(b)` newest, then the
 * best-ranked of the rest (ties: newer first) until b are kept. Per decode step (when `step`):
 * while a stream holds more than b, evict the worst-ranked slot whose position is >= `sinks`
 * and older than the newest `recent(b)` (ties: older first). recent(b) = round(recent_frac *
 * b) when recent_frac > 0, else `recent`. */
typedef struct skv_evict_desc {
    int32_t evicts;      /* 0: the policy keeps every token */
    skv_rank rank;
    int32_t sinks;
    float recent_frac;
    int32_t recent;
    int32_t pool;        /* SKV_RANK_WIN: odd max-pool width (1: none) */
    int32_t step;        /* evict to the budget after every decode step */
} skv_evict_desc;

static inline int32_t skv_evict_recent(const skv_evict_desc *d, int32_t budget) {
    return d->recent_frac > 0 ? (int32_t)lrintf(d->recent_frac * (float)budget) : d->recent;
}

#endif
