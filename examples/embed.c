/*
 * embed.c — slimkv from a C program, through slimkv.h alone: load a model directory, generate
 * a continuation of a prompt (greedy, under a KV policy), print it, free everything.
 *
 *   cc examples/embed.c $(pkg-config --cflags --libs slimkv) -o embed    (after make install)
 *   ./embed MODEL_DIR [PROMPT] [N_TOKENS] [POLICY]
 *
 * Exit status 0 on success, 1 on bad input (with slimkv's one-line error), 2 on bad usage.
 */
#include <slimkv.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *what) {
    fprintf(stderr, "embed: %s: %s\n", what, skv_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 5) {
        fprintf(stderr, "usage: %s MODEL_DIR [PROMPT] [N_TOKENS] [POLICY]\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1], *prompt = argc > 2 ? argv[2] : "It is a truth universally acknowledged, that";
    const int n_gen = argc > 3 ? atoi(argv[3]) : 32;
    const char *policy = argc > 4 ? argv[4] : "full";
    if (n_gen < 1) {
        fprintf(stderr, "embed: N_TOKENS must be >= 1\n");
        return 2;
    }

    /* the tokenizer and the model of one Hugging Face directory */
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    skv_tokenizer *tok = NULL;
    if (skv_tokenizer_load(path, &tok) != SKV_OK) return fail("tokenizer");
    skv_model *m = NULL;
    if (skv_model_load(dir, skv_model_default_params(), &m) != SKV_OK) return fail("model");
    const skv_model_info *info = skv_model_get_info(m);

    /* a context (KV cache) under a policy; budgeted policies keep 20% of the prompt by default */
    skv_context_params cp = skv_context_default_params();
    cp.policy = skv_policy_default_params(policy);
    skv_context *c = NULL;
    if (skv_context_init(m, cp, &c) != SKV_OK) return fail("context");

    int32_t *ids = NULL;
    size_t n_ids = 0;
    if (skv_tokenize(tok, prompt, strlen(prompt), &ids, &n_ids) != SKV_OK) return fail("tokenize");
    if (n_ids == 0 || (int64_t)n_ids + n_gen > info->n_ctx) {
        fprintf(stderr, "embed: the prompt (%zu tokens) and %d more must fit the context of %d\n", n_ids, n_gen,
                info->n_ctx);
        return 2;
    }

    /* prefill the prompt, then generate one token at a time, greedily */
    skv_sampler_params sp = skv_sampler_default_params();
    sp.temperature = 0;
    skv_sampler *smp = NULL;
    skv_detok *dt = NULL;
    float *logits = malloc((size_t)info->n_vocab * sizeof *logits);
    if (!logits) return 1;
    if (skv_sampler_init(sp, info->n_vocab, &smp) != SKV_OK || skv_detok_init(tok, &dt) != SKV_OK)
        return fail("sampler");
    if (skv_decode(c, ids, (int32_t)n_ids, logits, 0) != SKV_OK) return fail("prefill");
    char piece[256];
    printf("%s", prompt);
    for (int i = 0; i < n_gen; i++) {
        int32_t id = skv_sampler_sample(smp, logits);
        skv_sampler_accept(smp, id);
        if (id == info->eos_id) break;
        int w = skv_detok_push(dt, id, piece, sizeof piece);
        if (w > 0) fwrite(piece, 1, (size_t)w, stdout);
        if (i + 1 < n_gen && skv_decode(c, &id, 1, logits, 0) != SKV_OK) return fail("decode");
    }
    int w = skv_detok_flush(dt, piece, sizeof piece);
    if (w > 0) fwrite(piece, 1, (size_t)w, stdout);
    printf("\n");

    skv_kv_usage u;
    skv_context_kv_usage(c, &u);
    fprintf(stderr, "embed: slimkv %s, %s cache holds %lld bytes after %d tokens\n", skv_version(), policy,
            (long long)u.bytes, u.n_past);

    free(logits);
    free(ids);
    skv_detok_free(dt);
    skv_sampler_free(smp);
    skv_context_free(c);
    skv_model_free(m);
    skv_tokenizer_free(tok);
    return 0;
}
