/*
 * eval.h — the task protocol of docs/evaluation.md section 2: task files, metrics, and a
 * runner that prefills each row once and branches the cache into every policy to compare.
 * Used by the CLI (eval, sweep) and the tests; not part of the public API.
 */
#ifndef SKV_EVAL_H
#define SKV_EVAL_H

#include "slimkv.h"

typedef struct skv_task_row {
    char *task, *context, *answer;
    int32_t line;   /* 1-based line in the file */
    int32_t index;  /* row index within its task */
} skv_task_row;

typedef struct skv_task_set {
    skv_task_row *rows;
    int32_t n;
} skv_task_set;

/* Read a JSONL task file: one {"task", "context", "answer"} object per line. limit > 0 keeps
 * the first `limit` rows of each task. Malformed lines are refused naming file and line. */
skv_status skv_tasks_load(const char *path, int32_t limit, skv_task_set *out);
/* The same for a file's text: len bytes and a writable byte text[len] (lines are cut in place,
 * so text is modified), named path in messages. */
skv_status skv_tasks_parse(char *text, size_t len, const char *path, int32_t limit, skv_task_set *out);
void skv_tasks_free(skv_task_set *s);

/* Metrics. */
double skv_metric_f1_words(const char *pred, const char *gold);    /* lower-cased, whitespace */
double skv_metric_edit_similarity(const char *a, const char *b);   /* stripped, code points */
int skv_metric_prefix_match(const char *gen, const char *answer);  /* stripped startswith */
/* The task's metric on a generation (dictqa / linecomp use the first generated line).
 * Returns SKV_ERR_ARG for a task it does not know. */
skv_status skv_task_score(const char *task, const char *gen, const char *answer, double *score);

/* One configuration to evaluate: a cache policy (name "full" for the full cache), or SmallKV
 * (smallkv = 1: needs skv_eval_opts.draft). */
typedef struct skv_eval_config {
    skv_policy_params policy;
    int32_t smallkv;
    skv_smallkv_params sk;
} skv_eval_config;

typedef struct skv_eval_result {
    double score;
    int64_t kv_bytes;    /* held right after prefill + compression */
    double kl_sum;       /* sum over generated positions of KL(full || policy), nats */
    int32_t kl_n;        /* positions in kl_sum */
    int32_t n_gen;
    int32_t gen[64];     /* generated ids (end-of-sequence excluded) */
    char text[1024];     /* their decoded text (truncated to fit) */
    double seconds;      /* decode time of this configuration */
    int64_t extra_bytes; /* SmallKV: the small model's cache + weights (not in kv_bytes) */
    double match_jac, match_cos; /* SmallKV: matching quality (NAN when unmatched or not SmallKV) */
} skv_eval_result;

typedef struct skv_eval_opts {
    int32_t keep_last;   /* prompt tokens kept from the end of the context (1984) */
    int32_t max_new;     /* tokens generated at most (48) */
    int32_t eos;         /* stop token (0) */
    int32_t kl;          /* 1: measure KL to the full cache (costs full-cache steps once the
                            generations diverge) */
    skv_kv_format kv_format;
    skv_backend backend; /* where the model runs (CUDA: full policy, no SmallKV) */
    skv_model *draft;    /* small model for SmallKV configurations */
    skv_augment *augment; /* cache augmentation: its latents go into every (non-SmallKV)
                            configuration's cache once, after the prompt (NULL: none) */
    int32_t early_stop;  /* 1: stop generating once the row's score cannot change any more (a
                            newline for dictqa/linecomp, enough characters for the prefix
                            tasks); scores are unchanged, gen and KL cover fewer positions */
} skv_eval_opts;

/* With early_stop: is the score of `task` fixed by the generation text so far? */
int skv_task_score_final(const char *task, const char *gen, const char *answer);

skv_eval_opts skv_eval_default_opts(void);

/* The prompt of a row: the context's ids with the BOS the model asks for (skv_model_tokenize),
 * then only the last keep_last of them — the BOS kept in front of the last keep_last - 1 ids
 * when the model asks for one, as llama.cpp keeps it when it truncates. *ids: malloc'd. An
 * empty context (no ids besides the BOS) is an error naming the task line. */
skv_status skv_eval_prompt(const skv_model *m, const skv_tokenizer *tok, const skv_task_row *row, int32_t keep_last,
                           int32_t **ids, int32_t *n);

/* Evaluate one row under n configurations. res[n] receives the results; *prompt_tokens the
 * prompt length used. */
skv_status skv_eval_row(skv_model *m, const skv_tokenizer *tok, const skv_task_row *row,
                        const skv_eval_config *cfgs, int32_t n, const skv_eval_opts *o,
                        skv_eval_result *res, int32_t *prompt_tokens);

#endif
