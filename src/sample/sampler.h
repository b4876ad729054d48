/*
 * sampler.h — what a backend needs to draw the next token on its device exactly as
 * skv_sampler_sample does on the host (internal; the sampler knows no backend).
 */
#ifndef SKV_SAMPLER_H
#define SKV_SAMPLER_H

#include "slimkv.h"

/* Penalty on the `n_seen` distinct ids in `seen`, temperature, top-k, top-p, then the draw u
 * in [0, 1). */
typedef struct skv_sample_args {
    float temperature, top_p, penalty;
    int32_t top_k;
    double u;
    const int32_t *seen;
    int32_t n_seen;
} skv_sample_args;

/* The sampler's next draw: its parameters, the uniform draw from its stream (taken only when
 * temperature > 0, as skv_sampler_sample does) and the distinct ids its penalty covers,
 * written to seen (at most skv_sampler_history ids). */
void skv_sampler_args(skv_sampler *s, skv_sample_args *a, int32_t *seen);
/* ids the sampler's penalty may cover at most (the seen buffer's size) */
int64_t skv_sampler_history(const skv_sampler *s);

#endif
