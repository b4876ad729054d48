/*
 * scd.h — Semantic Cache Distillation's maps (docs/techniques.md section 5) as the engine holds
 * them: per layer, the reuse maps of K (de-RoPE'd) and V and the patch path of the normalised
 * attention input, read from one safetensors file whose __metadata__ "scd" is the JSON
 * description train/scd_calibrate.py writes. Internal; the public calls are in slimkv.h.
 */
#ifndef SKV_METHOD_SCD_H
#define SKV_METHOD_SCD_H

#include "io/safetensors.h"
#include "slimkv.h"

typedef struct skv_scd_map {   /* one part (K, V or H) of one layer; row-major f32 views */
    int32_t r;                 /* code rank */
    const float *mua;          /* (in) producer mean */
    const float *enc;          /* (in, r) */
    const float *dec, *mub;    /* K, V: (r, out), (out) */
    const float *w1, *b1, *w2; /* H with the MLP aligner: (r, hidden), (hidden), (hidden, out); else NULL */
    const float *skip, *b2;    /* H: (r, out), (out) */
} skv_scd_map;

struct skv_scd_maps {
    char *buf;                 /* the file */
    skv_st_set *st;
    int32_t n_layer, kv_dim, dim, hidden;
    skv_scd_map *k, *v, *h;    /* (n_layer) each */
    int32_t *r_k, *r_v, *r_h;  /* (n_layer) ranks, for skv_scd_shape */
    int32_t *patch_rank;       /* (n_layer) layers best first */
    int32_t patch_k, ranked;
    char producer[64], consumer[64];
    uint64_t crc;              /* CRC-64 of the file: producer and consumer must hold the same maps */
};

#endif
