/*
 * tasks.c — load a JSONL task file.
 */
#include "eval/eval.h"

#include "internal.h"

#include <cjson/cJSON.h>

static char *str_field(const cJSON *o, const char *k) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(it) ? strdup(it->valuestring) : NULL;
}

skv_status skv_tasks_load(const char *path, int32_t limit, skv_task_set *out) {
    memset(out, 0, sizeof *out);
    char *text = NULL;
    size_t len = 0;
    skv_status st = skv_read_file(path, &text, &len);
    if (st) return st;
    st = skv_tasks_parse(text, len, path, limit, out);
    free(text);
    return st;
}

skv_status skv_tasks_parse(char *text, size_t len, const char *path, int32_t limit, skv_task_set *out) {
    memset(out, 0, sizeof *out);
    skv_status st = SKV_OK;
    int32_t cap = 0, line = 0;
    /* per-task row counts for the limit: task names are few */
    char *names[64];
    int32_t counts[64], n_names = 0;
    for (char *p = text; p < text + len;) {
        char *e = memchr(p, '\n', (size_t)(text + len - p));
        if (!e) e = text + len;
        *e = 0;
        line++;
        char *q = p;
        while (*q == ' ' || *q == '\t' || *q == '\r') q++;
        p = e + 1;
        if (!*q) continue;
        cJSON *o = cJSON_Parse(q);
        const int parsed = o != NULL;
        char *task = o ? str_field(o, "task") : NULL, *ctx = o ? str_field(o, "context") : NULL;
        char *ans = o ? str_field(o, "answer") : NULL;
        cJSON_Delete(o);
        if (!task || !ctx || !ans) {
            free(task), free(ctx), free(ans);
            st = skv_set_error(SKV_ERR_FORMAT, "%s:%d: %s", path, line,
                               parsed ? "needs string fields \"task\", \"context\" and \"answer\""
                                 : "not a valid JSON object");
            break;
        }
        int32_t k;
        for (k = 0; k < n_names && strcmp(names[k], task); k++) {}
        if (k == n_names) {
            if (n_names == 64) {
                free(task), free(ctx), free(ans);
                st = skv_set_error(SKV_ERR_FORMAT, "%s:%d: more than 64 task names", path, line);
                break;
            }
            names[n_names] = strdup(task);
            counts[n_names++] = 0;
        }
        if (limit > 0 && counts[k] >= limit) {
            free(task), free(ctx), free(ans);
            continue;
        }
        if (out->n == cap) {
            cap = cap ? 2 * cap : 256;
            skv_task_row *r = realloc(out->rows, (size_t)cap * sizeof *r);
            if (!r) {
                free(task), free(ctx), free(ans);
                st = skv_set_error(SKV_ERR_NOMEM, "%s: out of memory", path);
                break;
            }
            out->rows = r;
        }
        out->rows[out->n++] = (skv_task_row){task, ctx, ans, line, counts[k]++};
    }
    for (int32_t k = 0; k < n_names; k++) free(names[k]);
    if (!st && out->n == 0) st = skv_set_error(SKV_ERR_FORMAT, "%s: no task rows", path);
    if (st) skv_tasks_free(out);
    return st;
}

void skv_tasks_free(skv_task_set *s) {
    for (int32_t i = 0; i < s->n; i++) {
        free(s->rows[i].task);
        free(s->rows[i].context);
        free(s->rows[i].answer);
    }
    free(s->rows);
    memset(s, 0, sizeof *s);
}
