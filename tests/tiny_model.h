/*
 * tiny_model.h — writes small random-weight Hugging Face model directories (config.json +
 * safetensors) for tests, and an independent naive double-precision reference forward pass.
 */
#ifndef SKV_TINY_MODEL_H
#define SKV_TINY_MODEL_H

#include <stddef.h>
#include <stdint.h>

typedef struct tiny_spec {
    const char *arch;      /* "LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM" */
    const char *dtype;     /* "F32", "F16", "BF16" */
    int vocab, dim, ffn, layers, heads, kv_heads, head_dim, n_ctx;
    int tied, attn_bias;   /* attn_bias: Llama's attention_bias (q/k/v/o); Qwen2 always q/k/v */
    int sliding_window;    /* Mistral; 0 = null */
    float rope_theta, rms_eps;
    float rope_linear;     /* > 0: rope_scaling {"type": "linear", "factor": rope_linear} */
    int sharded;           /* write 2 shards + model.safetensors.index.json */
    uint32_t seed;
    const char *layer_types; /* LCKV "t0_t1_..." (NULL: none): condensed layers (t(l) != l) get no
                                k_proj/v_proj, unless kv_all */
    int kv_all;              /* write k_proj/v_proj for every layer (a malformed LCKV model) */
} tiny_spec;

typedef struct tiny_model tiny_model;

/* Write the model into dir (created if needed); returns the in-memory weights (as rounded to
 * the stored dtype) for the reference, or NULL on failure. */
tiny_model *tiny_write(const char *dir, const tiny_spec *spec);
void tiny_free(tiny_model *t);
/* logits (n, vocab) of the naive reference for ids[0..n). */
void tiny_reference(const tiny_model *t, const int32_t *ids, int n, double *logits);
/* The same for an LCKV model (layer_types), token by token: layer l attends to the K/V of layer
 * t(l) at positions <= i, or < i when t(l) > l (that layer runs later for token i); no visible
 * position gives a zero attention output. Standard models: equal to tiny_reference. */
void tiny_reference_seq(const tiny_model *t, const int32_t *ids, int n, double *logits);

/* Write a safetensors file of the given tensors. dtype strings as in the format. */
typedef struct tw_tensor {
    const char *name;
    const char *dtype;
    int nd;
    int64_t shape[4];
    const void *data;
    size_t nbytes;
} tw_tensor;
int tw_write(const char *path, const tw_tensor *t, int n);

#endif
