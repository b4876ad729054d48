/*
 * cmd_sweep.c — `slimkv sweep`: quality against budget (docs/evaluation.md section 4). Each
 * task row is prefilled once; the cache is forked into every (policy, budget) and into the full
 * cache. Writes <out>/sweep.csv (means per model, policy, budget, task), <out>/rows.jsonl (every
 * row and configuration), <out>/<task>.png (score against budget, one line per policy) and
 * <out>/meta.json (commit, machine, command, time).
 */
#include "cli.h"
#include "eval/eval.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_TASKS 64 /* the task reader refuses more task names */

typedef struct agg {
    double score, kv, kl_sum;
    int64_t kl_n;
    int rows;
} agg;

/* Splits s at commas in place into a malloc'd array of its non-empty items (*n of them). */
static char **split_list(char *s, int *n) {
    int cap = 1;
    for (const char *c = s; *c; c++) cap += *c == ',';
    char **items = malloc((size_t)cap * sizeof *items);
    if (!items) cli_die("sweep", 1, "out of memory");
    *n = 0;
    for (char *tok = strtok(s, ","); tok; tok = strtok(NULL, ",")) items[(*n)++] = tok;
    return items;
}

static void progress(int done, int total, double secs) {
    const int width = 30;
    int fill = total ? done * width / total : width;
    double eta = done ? secs / done * (total - done) : 0;
    fprintf(stderr, "\r[");
    for (int i = 0; i < width; i++) fputc(i < fill ? '#' : '-', stderr);
    fprintf(stderr, "] %d/%d rows  %.0f s elapsed, ~%.0f s left   ", done, total, secs, eta);
    fflush(stderr);
}

/* one PNG per task: score against budget, a line per eviction policy, full and quant as
 * horizontal references */
static void plot_task(const char *dir, const char *model, const char *task, const char **labels,
                      const float *budgets, const int *is_budgeted, int n_cfg, const double *score) {
    char path[1200], cmd[1400];
    snprintf(path, sizeof path, "%s/%s.png", dir, task);
    snprintf(cmd, sizeof cmd, "gnuplot > /dev/null 2>&1");
    FILE *g = popen(cmd, "w");
    if (!g) return;
    fprintf(g, "set terminal pngcairo size 900,560 font 'sans,11'\nset output '%s'\n", path);
    fprintf(g, "set title '%s: %s, score against KV budget'\nset xlabel 'budget (fraction of prompt tokens kept per KV head)'\n"
               "set ylabel 'score'\nset yrange [0:1.05]\nset key outside right\nset grid\nset logscale x 2\nset xrange [0.04:0.5]\n"
               "set xtics (0.05, 0.1, 0.2, 0.4)\n", model, task);
    /* distinct policy names among budgeted configs, in order */
    const char **pols = malloc((size_t)n_cfg * sizeof *pols);
    if (!pols) {
        pclose(g);
        return;
    }
    int n_pols = 0;
    for (int k = 0; k < n_cfg; k++) {
        if (!is_budgeted[k]) continue;
        int seen = 0;
        for (int j = 0; j < n_pols; j++) seen |= !strcmp(pols[j], labels[k]);
        if (!seen) pols[n_pols++] = labels[k];
    }
    fprintf(g, "plot ");
    int first = 1;
    for (int j = 0; j < n_pols; j++) {
        fprintf(g, "%s'-' using 1:2 with linespoints lw 2 title '%s'", first ? "" : ", ", pols[j]);
        first = 0;
    }
    for (int k = 0; k < n_cfg; k++)
        if (!is_budgeted[k]) {
            fprintf(g, "%s%.6f with lines dt %d lw 2 title '%s (%.3f)'", first ? "" : ", ", score[k],
                    strcmp(labels[k], "full") ? 3 : 2, labels[k], score[k]);
            first = 0;
        }
    fprintf(g, "\n");
    for (int j = 0; j < n_pols; j++) {
        for (int k = 0; k < n_cfg; k++)
            if (is_budgeted[k] && !strcmp(labels[k], pols[j])) fprintf(g, "%g %.6f\n", budgets[k], score[k]);
        fprintf(g, "e\n");
    }
    pclose(g);
    free(pols);
}

int cmd_sweep(int argc, char **argv) {
    const char *dir = NULL, *tasks = NULL, *out_dir = NULL, *pol_s = "window,h2o,snapkv,pyramidkv",
               *bud_s = "0.05,0.1,0.2,0.4", *kc_ns = "16,32,64,128,256";
    int use_mmap = 0, threads = 0, limit = 0, exact = 0, quiet = 0, no_kl = 0;
    cli_policy_args pa;
    cli_opt opts[64] = {
        {"tasks", 0, OPT_STR, &tasks, "FILE", "task file (JSONL: task, context, answer)"},
        {"policies", 0, OPT_STR, &pol_s, "LIST", "comma-separated policies; quant8/quant4 for KIVI (default window,h2o,snapkv,pyramidkv)"},
        {"budgets", 0, OPT_STR, &bud_s, "LIST", "comma-separated budget fractions (default 0.05,0.1,0.2,0.4)"},
        {"limit", 'l', OPT_INT, &limit, "N", "first N rows of each task (default all)"},
        {"kc-ns", 0, OPT_STR, &kc_ns, "LIST", "kcache / kcache-exact in --policies: the --kc-n values (default 16,32,64,128,256)"},
        {"out-dir", 'o', OPT_STR, &out_dir, "DIR", "where results go (default: a new results/sweep-<model>-<time>/; published ones: bench/sweep-<model>)"},
        {"exact", 0, OPT_FLAG, &exact, NULL, "generate all 48 tokens (default: stop once a row's score is fixed)"},
        {"no-kl", 0, OPT_FLAG, &no_kl, NULL, "skip the KL divergence to the full cache"},
        {"quiet", 'q', OPT_FLAG, &quiet, NULL, "no progress bar"},
        CLI_OPT_NO_CHECK,
    };
    int n_opts = 10;
    cli_policy_options(&pa, opts, &n_opts);
    const cli_cmd cmd = {"sweep", "-m DIR --tasks FILE [--policies LIST] [--budgets LIST] [--limit N]",
                         "Score every task under every (policy, budget), prefilling each row once.",
                         opts, n_opts};
    cli_parse(&cmd, argc, argv);
    dir = pa.dir, threads = pa.threads, use_mmap = pa.use_mmap;
    if (!tasks) cli_die("sweep", 2, "no tasks: give --tasks FILE");
    if (limit < 0) cli_die("sweep", 2, "bad value for --limit: %d (must be >= 0)", limit);
    if (!isnan(pa.budget) || pa.budget_tokens)
        cli_die("sweep", 2, "%s has no effect in sweep: give the budgets with --budgets LIST",
                isnan(pa.budget) ? "--budget-tokens" : "--budget");

    char *pol_buf = strdup(pol_s), *bud_buf = strdup(bud_s);
    int n_pol, n_bud;
    char **pols = split_list(pol_buf, &n_pol), **buds = split_list(bud_buf, &n_bud);
    float *budgets = malloc(((size_t)n_bud + 1) * sizeof *budgets);
    if (!budgets) cli_die("sweep", 1, "out of memory");
    for (int i = 0; i < n_bud; i++) {
        char *end;
        budgets[i] = strtof(buds[i], &end);
        if (*end || !(budgets[i] > 0 && budgets[i] <= 1))
            cli_die("sweep", 2, "bad value for --budgets: '%s' (fractions in (0, 1])", buds[i]);
    }
    if (n_pol == 0) cli_die("sweep", 2, "bad value for --policies: empty");
    if (n_bud == 0) cli_die("sweep", 2, "bad value for --budgets: empty");

    skv_task_set ts;
    cli_check("sweep", skv_tasks_load(tasks, limit, &ts));
    skv_tokenizer *tok = cli_load_tokenizer("sweep", dir);
    skv_model *m = cli_load_model("sweep", dir, threads, use_mmap);

    /* configurations: full first, then each policy at each budget (quant once per width) */
    char *ns_buf = strdup(kc_ns);
    int n_ns;
    char **ns = split_list(ns_buf, &n_ns);
    const size_t max_cfg = 1 + (size_t)n_pol * (size_t)(n_bud > n_ns ? n_bud : n_ns);
    skv_eval_config *cfg = calloc(max_cfg, sizeof *cfg);
    skv_model *draft = NULL;
    const char **label = calloc(max_cfg, sizeof *label);
    float *cbud = calloc(max_cfg, sizeof *cbud);
    int *budgeted = calloc(max_cfg, sizeof *budgeted), n_cfg = 0;
    if (!cfg || !label || !cbud || !budgeted) cli_die("sweep", 1, "out of memory for %zu configurations", max_cfg);
    cfg[n_cfg].policy = skv_policy_default_params("full");
    label[n_cfg] = "full";
    cbud[n_cfg] = 1;
    budgeted[n_cfg++] = 0;
    for (int i = 0; i < n_pol; i++) {
        if (!strcmp(pols[i], "full")) continue;
        if (!strcmp(pols[i], "quant") || !strcmp(pols[i], "quant8") || !strcmp(pols[i], "quant4")) {
            cli_policy_args q = pa;
            if (pols[i][5]) q.bits = pols[i][5] - '0';
            q.budget = NAN;
            q.budget_tokens = 0;
            cfg[n_cfg].policy = cli_policy_params("sweep", &q, "quant", m);
            label[n_cfg] = q.bits == 8 ? "quant int8" : "quant int4";
            cbud[n_cfg] = 1;
            budgeted[n_cfg++] = 0;
            continue;
        }
        if (!strncmp(pols[i], "smallkv", 7)) {
            const char *variant = pols[i][7] == '-' ? pols[i] + 8 : "";
            if (pols[i][7] && strcmp(variant, "nomarg") && strcmp(variant, "static") && strcmp(variant, "paper") &&
                strcmp(variant, "window"))
                cli_die("sweep", 2, "unknown policy '%s' (smallkv, smallkv-nomarg, smallkv-static, smallkv-paper, "
                        "smallkv-window)", pols[i]);
            if (!draft) draft = cli_load_draft("sweep", &pa, m, threads);
            for (int j = 0; j < n_bud; j++) {
                cli_smallkv_config("sweep", &pa, budgets[j], variant, pols[i], &cfg[n_cfg]);
                label[n_cfg] = pols[i];
                cbud[n_cfg] = budgets[j];
                budgeted[n_cfg++] = 1;
            }
            continue;
        }
        if (!strcmp(pols[i], "kcache") || !strcmp(pols[i], "kcache-exact")) {
            /* one configuration per --kc-ns value (its budget column holds N) */
            for (int j = 0; j < n_ns; j++) {
                cli_policy_args b = pa;
                b.kc_n = ns[j];
                if (pols[i][6]) b.kc_weight = "exact";
                cfg[n_cfg].policy = cli_policy_params("sweep", &b, "kcache", m);
                char *lab = malloc(48);
                snprintf(lab, 48, "%s-n%s", pols[i], ns[j]);
                label[n_cfg] = lab;
                cbud[n_cfg] = strtof(ns[j], NULL);
                budgeted[n_cfg++] = 0; /* not a budget fraction: a reference line in the plots */
            }
            continue;
        }
        for (int j = 0; j < n_bud; j++) {
            cli_policy_args b = pa;
            b.budget = budgets[j];
            b.budget_tokens = 0;
            cfg[n_cfg].policy = cli_policy_params("sweep", &b, pols[i], m);
            label[n_cfg] = pols[i];
            cbud[n_cfg] = budgets[j];
            budgeted[n_cfg++] = 1;
        }
    }

    const char *base = cli_basename(dir);
    char outd[1024];
    if (out_dir) {
        snprintf(outd, sizeof outd, "%s", out_dir);
        if (mkdir(outd, 0755) != 0 && errno != EEXIST) cli_die("sweep", 1, "%s: cannot create: %s", outd, strerror(errno));
    } else {
        cli_results_dir("sweep", dir, outd, sizeof outd);
    }
    char path[1200];
    snprintf(path, sizeof path, "%s/rows.jsonl", outd);
    FILE *rows = fopen(path, "w");
    if (!rows) cli_die("sweep", 1, "%s: cannot write", path);

    skv_eval_opts eo = skv_eval_default_opts();
    eo.kv_format = cli_kv_format("sweep", &pa);
    eo.backend = cli_backend("sweep", pa.backend);
    eo.early_stop = !exact;
    eo.kl = !no_kl;
    eo.draft = draft;
    const char *tnames[MAX_TASKS];
    int n_tasks = 0;
    agg *A = calloc((size_t)MAX_TASKS * (size_t)n_cfg, sizeof *A); /* A[task * n_cfg + cfg] */
    if (!A) cli_die("sweep", 1, "out of memory");
    skv_eval_result *res = malloc(sizeof *res * (size_t)n_cfg);
    double t0 = skv_time_now();
    for (int32_t i = 0; i < ts.n; i++) {
        const skv_task_row *r = &ts.rows[i];
        int32_t np;
        if (skv_eval_row(m, tok, r, cfg, n_cfg, &eo, res, &np))
            cli_die("sweep", 1, "%s:%d: %s", tasks, r->line, skv_last_error());
        int k;
        for (k = 0; k < n_tasks && strcmp(tnames[k], r->task); k++) {}
        if (k == n_tasks) {
            if (n_tasks == MAX_TASKS) cli_die("sweep", 1, "more than %d tasks", MAX_TASKS);
            tnames[n_tasks++] = r->task;
        }
        for (int c = 0; c < n_cfg; c++) {
            agg *a = &A[(size_t)k * n_cfg + c];
            a->score += res[c].score;
            a->kv += (double)res[c].kv_bytes;
            a->kl_sum += res[c].kl_sum;
            a->kl_n += res[c].kl_n;
            a->rows++;
            fprintf(rows, "{\"task\": \"%s\", \"index\": %d, \"policy\": \"%s\", \"budget\": %g, \"score\": %.6f, "
                    "\"kv_bytes\": %lld, \"extra_bytes\": %lld, \"kl\": %.6g, \"n_gen\": %d, \"prompt_tokens\": %d}\n",
                    r->task, r->index, label[c], cbud[c], res[c].score, (long long)res[c].kv_bytes,
                    (long long)res[c].extra_bytes,
                    res[c].kl_n ? res[c].kl_sum / res[c].kl_n : 0.0, res[c].n_gen, np);
        }
        fflush(rows); /* a sweep stopped early keeps every finished row */
        if (!quiet) progress(i + 1, ts.n, skv_time_now() - t0);
    }
    if (!quiet) fprintf(stderr, "\n");
    fclose(rows);
    double secs = skv_time_now() - t0;

    snprintf(path, sizeof path, "%s/sweep.csv", outd);
    FILE *csv = fopen(path, "w");
    if (!csv) cli_die("sweep", 1, "%s: cannot write", path);
    fprintf(csv, "model,policy,budget,task,score,kv_bytes,kl,rows,kv_frac\n");
    for (int k = 0; k < n_tasks; k++) {
        double *sc = malloc((size_t)n_cfg * sizeof *sc);
        if (!sc) cli_die("sweep", 1, "out of memory");
        const agg *a0 = &A[(size_t)k * n_cfg];
        for (int c = 0; c < n_cfg; c++) {
            const agg *a = &A[(size_t)k * n_cfg + c];
            sc[c] = a->score / a->rows;
            fprintf(csv, "%s,%s,%g,%s,%.6f,%.0f,%.6g,%d,%.4f\n", base, label[c], cbud[c], tnames[k], sc[c],
                    a->kv / a->rows, a->kl_n ? a->kl_sum / (double)a->kl_n : 0.0, a->rows,
                    (a->kv / a->rows) / (a0->kv / a0->rows));
        }
        plot_task(outd, base, tnames[k], label, cbud, budgeted, n_cfg, sc);
        free(sc);
    }
    fclose(csv);

    snprintf(path, sizeof path, "%s/meta.json", outd);
    FILE *meta = fopen(path, "w");
    if (meta) {
        fprintf(meta, "{\n");
        cli_json_provenance(meta);
        fprintf(meta, "  \"rows\": %d,\n  \"configurations\": %d,\n  \"early_stop\": %s,\n  \"seconds\": %.1f\n}\n",
                ts.n, n_cfg, eo.early_stop ? "true" : "false", secs);
        fclose(meta);
    }
    printf("slimkv sweep: %d rows x %d configurations in %.0f s; results in %s/ (sweep.csv, rows.jsonl, "
           "<task>.png, meta.json)\n", ts.n, n_cfg, secs, outd);
    free(res);
    free(A);
    for (int i = 0; i < n_cfg; i++)
        if (!strncmp(label[i], "kcache", 6)) free((char *)label[i]); /* the kcache labels were made here */
    free(cfg);
    free(label);
    free(cbud);
    free(budgeted);
    free(budgets);
    free(pols);
    free(buds);
    free(pol_buf);
    free(bud_buf);
    free(ns);
    free(ns_buf);
    skv_tasks_free(&ts);
    skv_model_free(draft);
    skv_model_free(m);
    skv_tokenizer_free(tok);
    return 0;
}
