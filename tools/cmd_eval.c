/*
 * cmd_eval.c — `slimkv eval`: the task protocol of docs/evaluation.md section 2 under one KV
 * policy: per-row JSONL (--out) and a final JSON line of per-task means.
 */
#include "cli.h"
#include "eval/eval.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int cmd_eval(int argc, char **argv) {
    const char *dir = NULL, *tasks = NULL, *out = NULL, *only = NULL, *aug_dir = NULL;
    int use_mmap = 0, threads = 0, limit = 0, no_kl = 0, quiet = 0;
    cli_policy_args pa;
    cli_opt opts[64] = {
        {"tasks", 0, OPT_STR, &tasks, "FILE", "task file (JSONL: task, context, answer)"},
        {"limit", 'l', OPT_INT, &limit, "N", "first N rows of each task (default all)"},
        {"task", 0, OPT_STR, &only, "NAME", "only this task"},
        {"out", 'o', OPT_STR, &out, "FILE", "write one JSON line per row"},
        {"no-kl", 0, OPT_FLAG, &no_kl, NULL, "skip the KL divergence to the full cache"},
        {"quiet", 'q', OPT_FLAG, &quiet, NULL, "no progress on standard error"},
        {"augment", 0, OPT_STR, &aug_dir, "DIR", "cache augmentation: the coprocessor in DIR writes its latents into the cache after each prompt (no KL)"},
        CLI_OPT_NO_CHECK,
    };
    int n_opts = 8;
    cli_policy_options(&pa, opts, &n_opts);
    const cli_cmd cmd = {"eval", "-m DIR --tasks FILE --policy P [--budget B] [--limit N] [--out FILE]",
                         "Run the evaluation tasks under a KV policy (docs/evaluation.md section 2).",
                         opts, n_opts};
    cli_parse(&cmd, argc, argv);
    dir = pa.dir, threads = pa.threads, use_mmap = pa.use_mmap;
    if (!tasks) cli_die("eval", 2, "no tasks: give --tasks FILE");
    if (limit < 0) cli_die("eval", 2, "bad value for --limit: %d (must be >= 0)", limit);
    skv_task_set ts;
    cli_check("eval", skv_tasks_load(tasks, limit, &ts));
    skv_tokenizer *tok = cli_load_tokenizer("eval", dir);
    skv_model *m = cli_load_model("eval", dir, threads, use_mmap);
    skv_eval_config cfg = {0};
    skv_model *draft = NULL;
    if (!strcmp(pa.policy, "smallkv")) {
        cli_smallkv_config("eval", &pa, 0, "", "smallkv", &cfg);
        draft = cli_load_draft("eval", &pa, m, threads);
    } else {
        cfg.policy = cli_policy_params("eval", &pa, NULL, m);
    }
    const skv_policy_params pp = cfg.policy;
    skv_eval_opts eo = skv_eval_default_opts();
    eo.kv_format = cli_kv_format("eval", &pa);
    eo.backend = cli_backend("eval", pa.backend);
    eo.kl = !no_kl && strcmp(pp.name, "full") != 0;
    eo.draft = draft;
    if (aug_dir) {
        if (draft) cli_die("eval", 2, "--augment and --policy smallkv cannot be combined");
        eo.augment = cli_load_augment("eval", aug_dir, m, threads, pa.backend);
        eo.kl = 0;
    }
    FILE *fo = NULL;
    if (out && !(fo = fopen(out, "w"))) cli_die("eval", 1, "%s: cannot write", out);

    const char *names[16];
    double sum[16] = {0};
    int cnt[16] = {0}, n_names = 0, done = 0;
    double kv_sum = 0, kl_sum = 0, mj_sum = 0, mc_sum = 0;
    int64_t kl_n = 0, m_n = 0;
    double t0 = skv_time_now();
    for (int32_t i = 0; i < ts.n; i++) {
        const skv_task_row *r = &ts.rows[i];
        if (only && strcmp(r->task, only)) continue;
        skv_eval_result res;
        int32_t np = 0;
        skv_status st = skv_eval_row(m, tok, r, &cfg, 1, &eo, &res, &np);
        if (st) cli_die("eval", 1, "%s:%d: %s", tasks, r->line, skv_last_error());
        int k;
        for (k = 0; k < n_names && strcmp(names[k], r->task); k++) {}
        if (k == n_names && n_names < 16) names[n_names++] = r->task;
        if (k < 16) sum[k] += res.score, cnt[k]++;
        kv_sum += (double)res.kv_bytes;
        kl_sum += res.kl_sum;
        kl_n += res.kl_n;
        if (!isnan(res.match_jac)) mj_sum += res.match_jac, mc_sum += res.match_cos, m_n++;
        done++;
        if (fo) {
            fprintf(fo, "{\"task\": \"%s\", \"index\": %d, \"line\": %d, \"policy\": \"%s\", \"budget\": %g, "
                    "\"budget_tokens\": %d, \"prompt_tokens\": %d, \"score\": %.6f, \"kv_bytes\": %lld, "
                    "\"kl\": %.6g, \"extra_bytes\": %lld, \"gen\": [", r->task, r->index, r->line, pp.name, pp.budget,
                    pp.budget_tokens, np, res.score, (long long)res.kv_bytes,
                    res.kl_n ? res.kl_sum / res.kl_n : 0.0, (long long)res.extra_bytes);
            for (int j = 0; j < res.n_gen; j++) fprintf(fo, "%s%d", j ? ", " : "", res.gen[j]);
            fprintf(fo, "], ");
            if (!isnan(res.match_jac))
                fprintf(fo, "\"match_jaccard\": %.4f, \"match_cosine\": %.4f, ", res.match_jac, res.match_cos);
            fprintf(fo, "\"text\": ");
            cli_json_string(fo, res.text, strlen(res.text));
            fprintf(fo, "}\n");
            fflush(fo);
        }
        if (!quiet)
            fprintf(stderr, "\rslimkv eval: %d/%d rows  %-8s %.3f  (%.1f s)   ", done, ts.n, r->task,
                    res.score, skv_time_now() - t0);
    }
    if (!quiet) fprintf(stderr, "\n");
    if (fo) fclose(fo);
    if (done == 0) cli_die("eval", 1, "no rows of task '%s' in %s", only ? only : "?", tasks);
    printf("{\"policy\": \"%s\", \"budget\": %g, \"budget_tokens\": %d, ", pp.name, pp.budget, pp.budget_tokens);
    if (aug_dir) {
        printf("\"augment\": ");
        cli_json_string(stdout, aug_dir, strlen(aug_dir));
        printf(", \"n_latent\": %d, ", skv_augment_n_latent(eo.augment));
    }
    printf("\"rows\": %d, \"scores\": {", done);
    for (int k = 0; k < n_names; k++) printf("%s\"%s\": %.4f", k ? ", " : "", names[k], sum[k] / cnt[k]);
    printf("}, \"kv_bytes_mean\": %.0f, \"kl_mean\": %.6g, ", kv_sum / done, kl_n ? kl_sum / (double)kl_n : 0.0);
    if (m_n) printf("\"match_jaccard_mean\": %.4f, \"match_cosine_mean\": %.4f, ", mj_sum / m_n, mc_sum / m_n);
    printf("\"seconds\": %.1f}\n", skv_time_now() - t0);
    skv_tasks_free(&ts);
    skv_augment_free(eo.augment);
    skv_model_free(draft);
    skv_model_free(m);
    skv_tokenizer_free(tok);
    return 0;
}
