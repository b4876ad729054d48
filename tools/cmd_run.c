/*
 * cmd_run.c — `slimkv run`: generate text from a prompt, streamed token by token.
 */
#include "cli.h"

#include <stdlib.h>
#include <string.h>

int cmd_run(int argc, char **argv) {
    int use_mmap = 0;
    const char *dir = NULL, *prompt = NULL, *file = NULL;
    const skv_sampler_params sd = skv_sampler_default_params();
    int n_gen = 128, top_k = sd.top_k, last_n = sd.penalty_last_n, json = 0, threads = 0, ctx = 0;
    int ignore_eos = 0;
    int no_echo = 0, kv_stats = 0;
    const char *aug_dir = NULL;
    float temp = sd.temperature, top_p = sd.top_p, penalty = sd.repetition_penalty;
    uint64_t seed = 42;
    cli_policy_args pa;
    cli_opt opts[64] = {
        {"prompt", 'p', OPT_STR, &prompt, "TEXT", "prompt text"},
        {"file", 'f', OPT_STR, &file, "FILE", "read the prompt from FILE ('-': stdin)"},
        {"n-predict", 'n', OPT_INT, &n_gen, "N", "tokens to generate (default 128)"},
        {"temp", 0, OPT_FLOAT, &temp, "T", "temperature; 0 = greedy (default 0.8)"},
        {"top-k", 0, OPT_INT, &top_k, "K", "keep the K most likely tokens; 0 = off (default 40)"},
        {"top-p", 0, OPT_FLOAT, &top_p, "P", "nucleus sampling mass; 1 = off (default 0.95)"},
        {"repeat-penalty", 0, OPT_FLOAT, &penalty, "R", "repetition penalty; 1 = off (default 1)"},
        {"repeat-last-n", 0, OPT_INT, &last_n, "N", "ids the penalty looks back at; 0 = all (default 64)"},
        {"seed", 0, OPT_U64, &seed, "S", "random seed (default 42)"},
        {"ctx", 'c', OPT_INT, &ctx, "N", "context size in tokens (default: the model's)"},
        {"ignore-eos", 0, OPT_FLAG, &ignore_eos, NULL, "keep generating after end-of-sequence"},
        {"no-echo", 0, OPT_FLAG, &no_echo, NULL, "do not print the prompt before the continuation"},
        {"kv-stats", 0, OPT_FLAG, &kv_stats, NULL, "print the KV memory per layer and KV head, and per format, at the end"},
        {"json", 0, OPT_FLAG, &json, NULL, "print {\"ids\": [...], \"text\": \"...\"} instead of streaming"},
        {"augment", 0, OPT_STR, &aug_dir, "DIR", "cache augmentation: the coprocessor in DIR writes its latents into the cache once, after the prompt"},
        CLI_OPT_NO_CHECK,
    };
    int n_opts = 16;
    cli_policy_options(&pa, opts, &n_opts);
    const cli_cmd cmd = {"run", "-m DIR -p TEXT [options]",
                         "Generate text after a prompt, streaming it to standard output. With a KV "
                         "policy the prompt's cache is compressed after prefill.", opts, n_opts};
    cli_parse(&cmd, argc, argv);
    dir = pa.dir, threads = pa.threads, use_mmap = pa.use_mmap;
    if (n_gen < 0) cli_die("run", 2, "bad value for -n: %d (must be >= 0)", n_gen);
    /* the sampler's limits, as usage errors naming the flag (exit 2) */
    if (!(temp >= 0)) cli_die("run", 2, "bad value for --temp: %g (must be >= 0)", temp);
    if (top_k < 0) cli_die("run", 2, "bad value for --top-k: %d (must be >= 0)", top_k);
    if (!(top_p > 0 && top_p <= 1)) cli_die("run", 2, "bad value for --top-p: %g (must be in (0, 1])", top_p);
    if (!(penalty > 0)) cli_die("run", 2, "bad value for --repeat-penalty: %g (must be > 0)", penalty);
    if (last_n < 0) cli_die("run", 2, "bad value for --repeat-last-n: %d (must be >= 0)", last_n);

    skv_sampler_params sp = sd;
    sp.temperature = temp;
    sp.top_k = top_k;
    sp.top_p = top_p;
    sp.repetition_penalty = penalty;
    sp.penalty_last_n = last_n;
    sp.seed = seed;

    size_t len;
    char *text = cli_read_prompt("run", prompt, file, &len);
    skv_tokenizer *tok = cli_load_tokenizer("run", dir);
    skv_model *m = cli_load_model("run", dir, threads, use_mmap);
    const skv_model_info *in = skv_model_get_info(m);
    size_t n_prompt;
    int32_t *ids = cli_tokenize("run", tok, m, text, len, &n_prompt);

    skv_sampler *smp = NULL;
    cli_check("run", skv_sampler_init(sp, in->n_vocab, &smp));
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = ctx;
    cp.kv_format = cli_kv_format("run", &pa);
    cp.backend = cli_backend("run", pa.backend);
    skv_context *c = NULL;
    skv_model *draft = NULL;
    skv_smallkv *drv = NULL; /* --policy smallkv: the two-model driver instead of c */
    const int sk = !strcmp(pa.policy, "smallkv");
    if (sk && cp.backend != SKV_BACKEND_CPU) cli_die("run", 2, "--policy smallkv runs on the CPU backend only so far");
    if (sk) {
        if (ctx < 0 || ctx > in->n_ctx) cli_die("run", 2, "bad value for --ctx: %d (must be 1..%d)", ctx, in->n_ctx);
        draft = cli_load_draft("run", &pa, m, threads);
        cp.policy = skv_policy_default_params("full");
        cp.policy.name = "smallkv";
        cli_check("run", skv_smallkv_init(m, draft, cli_smallkv_params("run", &pa, 0, ""), ctx, &drv));
    } else {
        cp.policy = cli_policy_params("run", &pa, NULL, m);
        cli_check("run", skv_context_init(m, cp, &c));
    }
    skv_augment *aug = NULL;
    if (aug_dir && sk) cli_die("run", 2, "--augment and --policy smallkv cannot be combined");
    if (aug_dir) aug = cli_load_augment("run", aug_dir, m, threads, pa.backend);
    const int n_lat = skv_augment_n_latent(aug); /* 0 without --augment */
    int n_ctx = ctx ? ctx : in->n_ctx;
    if (sk && skv_model_get_info(draft)->n_ctx < n_ctx) n_ctx = skv_model_get_info(draft)->n_ctx;
    if ((int64_t)n_prompt + n_lat >= n_ctx)
        cli_die("run", 1, "the prompt has %zu tokens%s; the context holds %d (the prompt must be "
                "shorter to leave room for generation)", n_prompt, n_lat ? " plus the latents" : "", n_ctx);

    /* at most one token beyond what the context holds after the prompt is generated: -n may
     * ask for more (up to INT_MAX) without that much memory being needed */
    const int64_t gen_cap = SKV_CLI_MIN((int64_t)n_gen, (int64_t)n_ctx - (int64_t)n_prompt - n_lat + 1);
    float *logits = malloc((size_t)in->n_vocab * sizeof(float));
    int32_t *gen = malloc((size_t)(gen_cap + 1) * sizeof(int32_t));
    if (!logits || !gen) cli_die("run", 1, "out of memory for %lld generated tokens", (long long)gen_cap);
    double t0 = skv_time_now();
    if (sk) cli_check("run", skv_smallkv_prefill(drv, ids, (int32_t)n_prompt, logits));
    else cli_check("run", skv_decode(c, ids, (int32_t)n_prompt, logits, 0));
    double t1 = skv_time_now();
    if (aug) cli_check("run", skv_augment_apply(aug, c, logits)); /* the next token from the last latent */
    const double t_aug = skv_time_now() - t1;
    for (size_t i = 0; i < n_prompt; i++) skv_sampler_accept(smp, ids[i]);

    skv_detok *dt = NULL;
    cli_check("run", skv_detok_init(tok, &dt));
    if (!json && !no_echo) {
        fwrite(text, 1, len, stdout);
        fflush(stdout);
    }
    int n_out = 0, stopped_ctx = 0;
    char piece[256];
    double t2 = skv_time_now();
    int32_t id = skv_sampler_sample(smp, logits); /* from the prompt's logits */
    while (n_out < n_gen) {
        gen[n_out++] = id;
        skv_sampler_accept(smp, id);
        if (!ignore_eos && id == in->eos_id) break;
        if (!json) {
            int w = skv_detok_push(dt, id, piece, sizeof piece);
            if (w > 0) {
                fwrite(piece, 1, (size_t)w, stdout);
                fflush(stdout);
            }
        }
        if (n_out == n_gen) break;
        if ((int64_t)n_prompt + n_lat + n_out - 1 >= n_ctx) { /* tokens in the cache */
            stopped_ctx = 1;
            break;
        }
        if (sk) {
            cli_check("run", skv_smallkv_decode(drv, id, logits));
            id = skv_sampler_sample(smp, logits);
        } else { /* on the CUDA backend the draw happens on the GPU */
            cli_check("run", skv_decode_sampled(c, id, smp, &id));
        }
    }
    double t3 = skv_time_now();
    if (json) {
        char *out_text = NULL;
        size_t out_len = 0;
        cli_check("run", skv_detokenize(tok, gen, (size_t)n_out, &out_text, &out_len));
        printf("{\"ids\": [");
        for (int i = 0; i < n_out; i++) printf("%s%d", i ? ", " : "", gen[i]);
        printf("], \"text\": ");
        cli_json_string(stdout, out_text, out_len);
        printf("}\n");
        free(out_text);
    } else {
        int w = skv_detok_flush(dt, piece, sizeof piece);
        if (w > 0) fwrite(piece, 1, (size_t)w, stdout);
        printf("\n");
    }
    fflush(stdout);
    if (stopped_ctx) fprintf(stderr, "slimkv run: stopped: the context of %d tokens is full\n", n_ctx);
    if (sk) {
        skv_smallkv_usage su;
        skv_smallkv_get_usage(drv, &su);
        fprintf(stderr, "slimkv run: smallkv KV at the last step: fast tier %lld bytes (selected rows), slow "
                "tier %lld bytes (the full cache); draft cache %lld bytes, draft weights %lld bytes\n",
                (long long)su.fast_bytes, (long long)su.slow_bytes, (long long)su.draft_kv_bytes,
                (long long)su.draft_weight_bytes);
    }
    if (aug) {
        skv_augment_usage au;
        skv_augment_get_usage(aug, &au);
        fprintf(stderr, "slimkv run: augmentation: %d latents in %.1f ms (coprocessor %.1f ms, base %.1f ms); "
                "coprocessor weights %lld bytes, scratch KV %lld bytes\n", n_lat, 1e3 * t_aug, 1e3 * au.seconds_cop,
                1e3 * au.seconds_base, (long long)au.weight_bytes, (long long)au.kv_bytes);
    }
    skv_kv_usage u = {0};
    if (c) skv_context_kv_usage(c, &u);
    if (kv_stats && c) {
        static const char *fmt_names[SKV_KV_FORMAT_COUNT] = {"f32", "bf16", "int8", "int4", "f16"};
        fprintf(stderr, "slimkv run: KV cache after %d tokens (policy %s)\n%6s %6s %8s %12s\n", u.n_past,
                cp.policy.name, "layer", "head", "tokens", "bytes");
        for (int32_t l = 0; l < in->n_layer; l++)
            for (int32_t g = 0; g < in->n_kv_head; g++)
                fprintf(stderr, "%6d %6d %8d %12lld\n", l, g, skv_context_kept(c, l, g, NULL),
                        (long long)skv_context_kv_bytes_head(c, l, g));
        for (int f = 0; f < SKV_KV_FORMAT_COUNT; f++)
            if (u.bytes_by_format[f]) fprintf(stderr, "  %s blocks: %lld bytes\n", fmt_names[f], (long long)u.bytes_by_format[f]);
        fprintf(stderr, "  fast tier %lld bytes, slow tier %lld bytes\n", (long long)u.bytes_fast, (long long)u.bytes_slow);
    }
    if (c)
        fprintf(stderr, "slimkv run: KV cache (%s) holds %lld bytes for %lld kept token-heads\n", cp.policy.name,
                (long long)u.bytes, (long long)u.slots);
    if (c && u.fetch_steps)
        fprintf(stderr, "slimkv run: slow store %lld bytes (fast tier %lld); per step: %.1f V rows, %.0f bytes, "
                "%.2f blocks, %.3f ms fetched\n", (long long)u.store_bytes, (long long)u.bytes_fast,
                (double)u.fetch_rows / u.fetch_steps, (double)u.fetch_bytes / u.fetch_steps,
                (double)u.fetch_blocks / u.fetch_steps, 1e-6 * u.fetch_ns / u.fetch_steps);
    fprintf(stderr, "slimkv run: prompt %zu tokens in %.1f ms (%.1f tok/s); generated %d tokens in "
            "%.1f ms (%.1f tok/s)\n", n_prompt, 1e3 * (t1 - t0), (double)n_prompt / (t1 - t0),
            n_out, 1e3 * (t3 - t2), n_out > 1 ? (double)(n_out - 1) / (t3 - t2) : 0.0);
    skv_detok_free(dt);
    free(gen);
    free(logits);
    free(ids);
    free(text);
    skv_context_free(c);
    skv_augment_free(aug);
    skv_smallkv_free(drv);
    skv_sampler_free(smp);
    skv_model_free(draft);
    skv_model_free(m);
    skv_tokenizer_free(tok);
    return 0;
}
