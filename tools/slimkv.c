/*
 * slimkv.c — the command-line entry point: dispatch to subcommands.
 */
#include "cli.h"

#include <string.h>

int cmd_run(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_logits(int argc, char **argv);
int cmd_ppl(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_sweep(int argc, char **argv);
int cmd_mkmodel(int argc, char **argv);
int cmd_skmatch(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_scd_dump(int argc, char **argv);
int cmd_scd_rank(int argc, char **argv);
int cmd_scd_eval(int argc, char **argv);
int cmd_scd_ablate(int argc, char **argv);
int cmd_scd_producer(int argc, char **argv);
int cmd_scd_consumer(int argc, char **argv);
int cmd_scd_bench(int argc, char **argv);

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} g_cmds[] = {
    {"run", cmd_run, "generate text from a prompt (streamed, or --json)"},
    {"tokenize", cmd_tokenize, "print the token ids of a text as a JSON array"},
    {"logits", cmd_logits, "print the top-K logits at every prompt position as JSON"},
    {"ppl", cmd_ppl, "perplexity of a text corpus (docs/evaluation.md section 3)"},
    {"bench", cmd_bench, "prompt processing and generation speed (llama-bench style)"},
    {"eval", cmd_eval, "run the evaluation tasks under a KV policy"},
    {"sweep", cmd_sweep, "quality against KV budget for several policies, with CSV and plots"},
    {"serve", cmd_serve, "an OpenAI-compatible HTTP server (continuous batching, KV policy per request)"},
    {"scd-dump", cmd_scd_dump, "SCD calibration data: both models' K, V, normalised inputs on training prompts"},
    {"scd-rank", cmd_scd_rank, "SCD patch-layer ranking and budget on held-out prompts"},
    {"scd-ablate", cmd_scd_ablate, "SCD ablations: the consumer's cache assembled per layer from chosen sources"},
    {"scd-eval", cmd_scd_eval, "SCD and its baselines through the same frames: scores, KL/TV, bytes"},
    {"scd-producer", cmd_scd_producer, "SCD producer: prefill and stream codes (or a baseline) to a consumer"},
    {"scd-consumer", cmd_scd_consumer, "SCD consumer: rebuild the cache from checked frames, decode without prefill"},
    {"scd-bench", cmd_scd_bench, "SCD consumer's rebuild vs its own prefill at a model shape (random maps), modelled TTFT"},
    {"skmatch", cmd_skmatch, "SmallKV's premise on a model pair: top-K Jaccard of matched head pairs vs random pairs"},
    {"mkmodel", cmd_mkmodel, "write a random-weight model of a real shape (llama3-8b, qwen2-7b)"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: slimkv <command> [options]    (slimkv <command> --help for details)\n\n"
               "commands:\n");
    for (size_t i = 0; i < sizeof g_cmds / sizeof g_cmds[0]; i++)
        fprintf(f, "  %-10s %s\n", g_cmds[i].name, g_cmds[i].help);
    fprintf(f, "\nslimkv %s — an LLM inference engine whose KV cache is the product\n", skv_version());
}

int main(int argc, char **argv) {
    cli_set_argv(argc, argv);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("slimkv %s\n", skv_version());
        return 0;
    }
    for (size_t i = 0; i < sizeof g_cmds / sizeof g_cmds[0]; i++)
        if (!strcmp(argv[1], g_cmds[i].name)) return g_cmds[i].fn(argc - 2, argv + 2);
    fprintf(stderr, "slimkv: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
