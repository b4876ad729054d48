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
    /* the consumer side's copy on a backend's device, made by the first rebuild there */
    void *dev;
    void (*dev_free)(void *);
};

/* Random maps of a shape (benchmarks and tests where no calibration can run: timing at real
 * shapes, GPU against CPU): encoders and decoders with entries of variance 1/fan-in, zero
 * means, an MLP aligner when hidden > 0, patch layers ranked top layer first; crc from the seed. */
skv_status skv_scd_maps_random(int32_t n_layer, int32_t kv_dim, int32_t dim, int32_t hidden, int32_t r_k, int32_t r_v,
                               int32_t r_h, int32_t patch_k, uint64_t seed, skv_scd_maps **out);
/* One layer's codes (part SKV_SCD_K, _V or _H; z (n, r) f32, or bf16 bits when z_bf16) decoded on the device of c's backend
 * into the empty context c (skv_context_codes_on_device(c) must hold; the maps' device copy is
 * made on first use, not thread-safe); after every layer, skv_context_codes_finish(c, n). */
skv_status skv_scd_dev_layer(const skv_scd_maps *m, skv_context *c, int32_t layer, int part, const void *z, int z_bf16,
                             int32_t n);

#endif
