/*
 * config.h — config.json of a Hugging Face model directory -> hyperparameters.
 */
#ifndef SKV_CONFIG_H
#define SKV_CONFIG_H

#include "internal.h"

#define SKV_MAX_LAYERS 512 /* layers a model may have (layer_types is stored inline) */

typedef enum skv_rope_type {
    SKV_ROPE_DEFAULT = 0,
    SKV_ROPE_LINEAR = 1, /* positions divided by factor */
    SKV_ROPE_LLAMA3 = 2, /* Llama-3.1 frequency-dependent scaling */
} skv_rope_type;

typedef struct skv_config {
    skv_model_info info;
    int32_t attn_out_bias;  /* o_proj has a bias (Llama attention_bias) */
    skv_rope_type rope_type;
    float rope_factor;      /* linear / llama3 */
    float rope_low_freq_factor, rope_high_freq_factor; /* llama3 */
    int32_t rope_orig_ctx;  /* llama3 original_max_position_embeddings */
    /* LCKV (layer-condensed KV, docs/techniques.md section 3): layer_types[l] = t(l), the layer
     * whose KV layer l's queries use; identity when config.json has no integer layer_types.
     * Validated: one entry per layer, in range, t(t(l)) = t(l). */
    int32_t layer_types[SKV_MAX_LAYERS];
    int32_t lckv;           /* some t(l) != l */
    int32_t lckv_iters;     /* default prefill iterations: forward_passes + backward_passes, else 9 */
    /* Gemma 3 (GGUF only): Q/K RMSNorms, post-attention and post-FFN norms, GeGLU (tanh GELU),
     * embeddings scaled by sqrt(dim); layers l with (l + 1) % swa_period != 0 attend within
     * sliding_window with RoPE base rope_theta_local, the others globally with rope_theta */
    int32_t gemma3;
    float embed_scale;      /* 0: none */
    float attn_scale;       /* 0: 1/sqrt(head_dim) */
    int32_t swa_period;     /* 0: every layer alike */
    float rope_theta_local;
} skv_config;

/* Parse dir/config.json. Unknown architectures, activations other than SiLU, and RoPE scaling
 * types that are not implemented are refused with a message naming the field. */
skv_status skv_config_load(const char *dir, skv_config *cfg);
/* The config of a GGUF file from its `<arch>.*` and tokenizer keys (arch llama, qwen2 or
 * gemma3; others refused naming general.architecture). Errors name the file and key. */
struct skv_gguf;
skv_status skv_config_from_gguf(const struct skv_gguf *g, skv_config *cfg);
/* The same for the text of a config.json (NUL-terminated), named path in messages. */
skv_status skv_config_parse(const char *text, const char *path, skv_config *cfg);

/* dir/tokenizer_config.json's chat template and BOS token text (each malloc'd, NULL when
 * absent; no file: both NULL and SKV_OK); dir/chat_template.jinja, when present, is the
 * template. A malformed file or field is an error naming it. */
skv_status skv_tokcfg_load(const char *dir, char **chat_template, char **bos_token);

#endif
