/*
 * fuzz_config.c — config.json text through skv_config_parse. Accepted configs must hold the
 * hyperparameters every later allocation relies on.
 */
#include "fuzz.h"
#include "io/config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int skv_fuzz_config(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = 0;
    skv_config c;
    skv_status st = skv_config_parse(text, "fuzz/config.json", &c);
    free(text);
    if (st != SKV_OK) return 0;
    const skv_model_info *in = &c.info;
    if (in->n_vocab <= 0 || in->dim <= 0 || in->ffn_dim <= 0 || in->n_layer <= 0 || in->n_head <= 0 ||
        in->n_kv_head <= 0 || in->n_ctx <= 0)
        return 1;
    if (in->n_head % in->n_kv_head || in->head_dim < 2 || in->head_dim > 512 || in->head_dim % 2) return 1;
    if (!(in->rms_eps > 0) || !(in->rope_theta > 0) || !isfinite(in->rope_theta)) return 1;
    if (in->bos_id >= in->n_vocab || in->eos_id >= in->n_vocab) return 1;
    if (c.rope_type != SKV_ROPE_DEFAULT && !(c.rope_factor > 0)) return 1;
    return 0;
}

#ifdef SKV_LIBFUZZER
SKV_FUZZ_MAIN(skv_fuzz_config)
#endif
