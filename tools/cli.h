/*
 * cli.h — shared pieces of the slimkv command line: a table-driven flag parser that refuses
 * unknown flags and malformed values, prompt input (-p, -f, stdin), loading a model directory,
 * and machine/commit descriptions for result files.
 */
#ifndef SKV_CLI_H
#define SKV_CLI_H

#include "slimkv.h"

#include <stdint.h>
#include <stdio.h>

#define SKV_CLI_MIN(a, b) ((a) < (b) ? (a) : (b))

typedef enum { OPT_STR, OPT_INT, OPT_FLOAT, OPT_FLAG, OPT_U64 } cli_kind;

typedef struct cli_opt {
    const char *name;  /* long name without "--" */
    char short_name;   /* 0 if none */
    cli_kind kind;
    void *dst;         /* char**, int*, float*, int* (flag), uint64_t* */
    const char *metavar;
    const char *help;
} cli_opt;

typedef struct cli_cmd {
    const char *name;
    const char *synopsis;
    const char *summary;
    const cli_opt *opts;
    int n_opts;
} cli_cmd;

/* Parse argv (after the subcommand name). Prints usage and exits 0 on --help; prints a one-line
 * error naming the flag and exits 2 on an unknown flag, a missing or malformed value, or a
 * stray positional argument. */
void cli_parse(const cli_cmd *cmd, int argc, char **argv);
void cli_usage(const cli_cmd *cmd, FILE *f);

/* Print "slimkv <cmd>: <msg>" and exit(code). */
void cli_die(const char *cmd, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)))
__attribute__((noreturn));
/* Exit with the library's last error if st != SKV_OK. */
void cli_check(const char *cmd, skv_status st);

/* The prompt: -p TEXT, else -f FILE ("-" = stdin), else stdin if it is not a terminal.
 * Returns a malloc'd NUL-terminated string; exits with an error if there is none. */
char *cli_read_prompt(const char *cmd, const char *text, const char *file, size_t *len);
/* Whole file (plain or .xz) into memory; exits with an error naming the file on failure. */
char *cli_read_text_file(const char *cmd, const char *path, size_t *len);

/* --no-check (set by CLI_OPT_NO_CHECK in a command's flag table): models load without the scan
 * that refuses NaN or Inf weights. */
extern int cli_no_check;
/* --lckv-iters (in the shared policy options): LCKV prefill iterations of the models loaded (0:
 * config.json's) */
extern int cli_lckv_iters;
#define CLI_OPT_NO_CHECK \
    {"no-check", 0, OPT_FLAG, &cli_no_check, NULL, "skip the load-time scan that refuses NaN or Inf weights"}
/* Load model + tokenizer from dir (both exit on failure). */
skv_model *cli_load_model(const char *cmd, const char *dir, int n_threads, int use_mmap);
skv_tokenizer *cli_load_tokenizer(const char *cmd, const char *dir);
/* Tokenize and refuse an empty result. */
int32_t *cli_tokenize(const char *cmd, skv_tokenizer *tok, const skv_model *m, const char *text, size_t len,
                      size_t *n);

/* "git commit (dirty?)", CPU model and core count, for result files. */
void cli_git_commit(char *buf, size_t cap);
void cli_machine(char *buf, size_t cap);
/* Write the JSON members "commit", "machine" and "command" (each followed by ",\n"), indented
 * by two spaces, that every result file starts with. */
void cli_json_provenance(FILE *f);
/* Where results go when no output path is given: a new folder results/<cmd>-<model>-<time>/
 * (never the tracked files under bench/), created, its path in buf; exits naming it on failure. */
void cli_results_dir(const char *cmd, const char *model_dir, char *buf, size_t cap);
/* A bench result's path: `out` when given, else NAME (printf-formatted) in a new results folder
 * of bench for the model directory (written into buf). */
const char *cli_bench_out(const char *out, const char *model_dir, char *buf, size_t cap, const char *name_fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Exit 1 naming flag and path unless path can be written (checked before a long run; an
 * existing file is left as it is). */
void cli_check_writable(const char *cmd, const char *flag, const char *path);
/* A bench result file: opened for writing (or exit naming it), "{" and the provenance written. */
FILE *cli_bench_json(const char *path);
/* The command line as typed, shell-quoted where needed. */
void cli_command_line(char *buf, size_t cap);
void cli_set_argv(int argc, char **argv);

/* The options run, ppl, eval, sweep and bench share — model, threads, mmap, backend, policy and
 * its options, SmallKV — in one table (cli_policy_options). */
typedef struct cli_policy_args {
    const char *dir;
    int threads, use_mmap;
    const char *policy;
    float budget;
    int budget_tokens, sinks, obs_window, pool_kernel, bits;
    float recent_frac, beta;
    const char *kv_format;
    /* smallkv */
    const char *draft;
    int sk_paper, sk_no_marginal, sk_static, match_len, match_k;
    const char *sk_score, *sk_match, *sk_split, *backend;
    /* kcache */
    const char *kc_n, *kc_weight, *kc_gran, *kc_store, *kc_dir, *kc_over;
    int kc_recent, kc_fast_layers, kc_block, kc_cold;
    /* minicache */
    const char *mc_groups;
    float mc_t, mc_keep, mc_bytes;
} cli_policy_args;
/* Initialise a with the library defaults and append the shared options to opts at *n. */
void cli_policy_options(cli_policy_args *a, cli_opt *opts, int *n);
/* Policy parameters for one policy name (NULL: a->policy), checked against the model; exits
 * with an error naming the flag on bad values. */
skv_policy_params cli_policy_params(const char *cmd, const cli_policy_args *a, const char *name,
                                    const skv_model *m);
skv_kv_format cli_kv_format(const char *cmd, const cli_policy_args *a);
/* SmallKV parameters from the flags, with budget b; variant "", "nomarg", "static", "paper". */
skv_smallkv_params cli_smallkv_params(const char *cmd, const cli_policy_args *a, float b, const char *variant);
/* Load the --draft model (exits with an error if absent or incompatible). */
int bench_smallkv(const char *dir, const cli_policy_args *pa, const char *budgets, int depth, int n,
                  int reps, int threads, int use_mmap, const char *out);
/* `bench --policy kcache`: full vs kcache (mmap warm/cold, zstd) at one depth */
int bench_kcache(const char *dir, const cli_policy_args *pa, int depth, int n, int reps, int threads, int use_mmap,
                 const char *out);
/* `bench --backend cuda --e2e P+G`: the largest batch and the throughput at it (bench_e2e.c) */
int bench_e2e(const char *dir, const char *spec, int steps, int max_b, const char *out);
/* pa: the policy of the tg rows (full, window, h2o, snapkv, pyramidkv) */
int bench_kcache_cuda(const char *dir, const char *depths_s, const char *batches_s, int tg, int batch_depth, int ubatch,
                      int reps, int max_batch, const cli_policy_args *pa, const char *out);
/* binv: the contexts decode in the batch-invariant mode (skv_context_params.batch_invariant) */
int bench_cuda(const char *dir, const char *pp_s, const char *depths_s, const char *batch_s, int tg, int batch_depth,
               int ubatch, int reps, int binv, int fit_max, const cli_policy_args *pa, const char *out);
/* Benchmark helpers: the last path component of a directory; a pseudo-random id in [0, V)
 * from a generator whose state the caller keeps; mean and sample standard deviation. */
const char *cli_basename(const char *dir);
int32_t cli_rand_id(uint64_t *state, int32_t V);
void cli_mean_sd(const double *x, int n, double *mean, double *sd);
skv_backend cli_backend(const char *cmd, const char *name);
/* A SmallKV evaluation configuration named `name` at budget b (0: --budget) of sweep variant
 * `variant` ("" for the flags alone). */
typedef struct skv_eval_config skv_eval_config;
void cli_smallkv_config(const char *cmd, const cli_policy_args *a, float b, const char *variant, const char *name,
                        skv_eval_config *cfg);
skv_model *cli_load_draft(const char *cmd, const cli_policy_args *a, const skv_model *m, int threads);
/* Load the --augment coprocessor for m (exits naming the flag when refused). */
skv_augment *cli_load_augment(const char *cmd, const char *dir, const skv_model *m, int threads, const char *backend);

/* `ppl --augment DIR [--augment-every K]` over the tokenized windows (tools/ppl_augment.c). */
int ppl_augment(const char *aug_dir, int every, skv_model *m, const char *model_dir, const int32_t *all, int n_win,
                int W, int threads, const char *backend, const char *out, const char *dump, int quiet);

/* Print s as a JSON string (with quotes) to f. */
void cli_json_string(FILE *f, const char *s, size_t len);

#endif
