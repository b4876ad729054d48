/*
 * fuzz_tasks.c — a JSONL task file through skv_tasks_parse; the first byte picks the per-task
 * row limit (0..3). Accepted files must give rows with all three strings, lines in order and
 * per-task indexes under the limit.
 */
#include "eval/eval.h"
#include "fuzz.h"

#include <stdlib.h>
#include <string.h>

int skv_fuzz_tasks(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const int32_t limit = data[0] & 3;
    char *text = malloc(size); /* size - 1 bytes and the byte the parser may cut at */
    if (!text) return 0;
    memcpy(text, data + 1, size - 1);
    text[size - 1] = 0;
    skv_task_set ts;
    skv_status st = skv_tasks_parse(text, size - 1, "fuzz/tasks.jsonl", limit, &ts);
    free(text);
    if (st != SKV_OK) return 0;
    int bad = ts.n <= 0;
    for (int32_t i = 0; i < ts.n; i++) {
        const skv_task_row *r = &ts.rows[i];
        if (!r->task || !r->context || !r->answer || r->line < 1) bad = 1;
        if (i && r->line <= ts.rows[i - 1].line) bad = 1;
        if (limit > 0 && r->index >= limit) bad = 1;
    }
    skv_tasks_free(&ts);
    return bad;
}

#ifdef SKV_LIBFUZZER
SKV_FUZZ_MAIN(skv_fuzz_tasks)
#endif
