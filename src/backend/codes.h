/*
 * codes.h — low-rank decoders as a backend receives them to rebuild cache layers from codes on
 * its device (SCD's consumer side: method/scd.c fills this from its maps file). Plain host
 * arrays, row-major f32; the backend copies what it needs. Per layer: K and V rows
 * z dec + mub (K before RoPE), or a patch part h = z skip + b2 (+ silu(z w1 + b1) w2) that the
 * model's own k/v projections turn into K and V.
 */
#ifndef SKV_BACKEND_CODES_H
#define SKV_BACKEND_CODES_H

#include <stdint.h>

typedef struct skv_codes_part {
    int32_t r;                 /* code rank */
    const float *dec, *mub;    /* K, V: (r, kv_dim), (kv_dim) */
    const float *skip, *b2;    /* H: (r, dim), (dim) */
    const float *w1, *b1, *w2; /* H with the MLP aligner: (r, hidden), (hidden), (hidden, dim); else NULL */
} skv_codes_part;

typedef struct skv_codes_desc {
    int32_t n_layer, kv_dim, dim, hidden;
    const skv_codes_part *k, *v, *h; /* (n_layer) each */
} skv_codes_desc;

/* what a layer's codes are */
enum { SKV_CODES_K = 0, SKV_CODES_V = 1, SKV_CODES_H = 2 };

#endif
