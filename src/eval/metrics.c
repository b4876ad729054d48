/*
 * metrics.c — the task metrics of docs/evaluation.md section 2.
 */
#include "eval/eval.h"

#include "internal.h"

#include <ctype.h>

/* [b, e) of s without leading/trailing whitespace (Python's str.strip for ASCII space). */
static void strip(const char *s, size_t n, const char **b, const char **e) {
    const char *p = s, *q = s + n;
    while (p < q && isspace((unsigned char)*p)) p++;
    while (q > p && isspace((unsigned char)q[-1])) q--;
    *b = p;
    *e = q;
}

static size_t first_line_len(const char *s) { return strcspn(s, "\n"); }

/* Split lower-cased text into whitespace-separated words: returns count, words as offsets. */
static int split_words(char *s, char **words, int max) {
    int n = 0;
    for (char *p = s; *p;) {
        while (*p && isspace((unsigned char)*p)) p++;
        if (!*p) break;
        if (n < max) words[n++] = p;
        while (*p && !isspace((unsigned char)*p)) {
            *p = (char)tolower((unsigned char)*p);
            p++;
        }
        if (*p) *p++ = 0;
    }
    return n;
}

double skv_metric_f1_words(const char *pred, const char *gold) {
    char *a = strdup(pred), *b = strdup(gold);
    char *wa[512], *wb[512];
    int na = split_words(a, wa, 512), nb = split_words(b, wb, 512);
    double f1;
    if (na == 0 || nb == 0) {
        f1 = na == nb ? 1.0 : 0.0;
    } else {
        /* multiset intersection */
        uint8_t used[512] = {0};
        int common = 0;
        for (int i = 0; i < na; i++)
            for (int j = 0; j < nb; j++)
                if (!used[j] && !strcmp(wa[i], wb[j])) {
                    used[j] = 1;
                    common++;
                    break;
                }
        if (common == 0) {
            f1 = 0;
        } else {
            double p = (double)common / na, r = (double)common / nb;
            f1 = 2 * p * r / (p + r);
        }
    }
    free(a);
    free(b);
    return f1;
}

/* UTF-8 -> code points (invalid bytes as themselves). Returns count. */
static int32_t *code_points(const char *s, size_t n, int32_t *count) {
    int32_t *cp = malloc((n + 1) * sizeof *cp);
    int32_t k = 0;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
        if (i + (size_t)len > n) len = 1;
        int32_t v = len == 1 ? c : c & (0x7f >> len);
        for (int j = 1; j < len; j++) v = (v << 6) | (s[i + j] & 0x3f);
        cp[k++] = v;
        i += (size_t)len;
    }
    *count = k;
    return cp;
}

double skv_metric_edit_similarity(const char *a, const char *b) {
    const char *ab, *ae, *bb, *be;
    strip(a, strlen(a), &ab, &ae);
    strip(b, strlen(b), &bb, &be);
    int32_t na, nb;
    int32_t *x = code_points(ab, (size_t)(ae - ab), &na), *y = code_points(bb, (size_t)(be - bb), &nb);
    double sim;
    if (na == 0 && nb == 0) {
        sim = 1.0;
    } else {
        int32_t *row = calloc((size_t)nb + 1, sizeof *row);
        for (int32_t j = 0; j <= nb; j++) row[j] = j;
        for (int32_t i = 1; i <= na; i++) {
            int32_t diag = row[0];
            row[0] = i;
            for (int32_t j = 1; j <= nb; j++) {
                int32_t up = row[j];
                int32_t best = diag + (x[i - 1] != y[j - 1]);
                if (up + 1 < best) best = up + 1;
                if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
                row[j] = best;
                diag = up;
            }
        }
        sim = 1.0 - (double)row[nb] / (double)(na > nb ? na : nb);
        free(row);
    }
    free(x);
    free(y);
    return sim;
}

int skv_metric_prefix_match(const char *gen, const char *answer) {
    const char *gb, *ge, *ab, *ae;
    strip(gen, strlen(gen), &gb, &ge);
    strip(answer, strlen(answer), &ab, &ae);
    size_t na = (size_t)(ae - ab);
    return (size_t)(ge - gb) >= na && !memcmp(gb, ab, na);
}

skv_status skv_task_score(const char *task, const char *gen, const char *answer, double *score) {
    if (!strcmp(task, "dictqa") || !strcmp(task, "linecomp")) {
        char *line = strndup(gen, first_line_len(gen));
        *score = !strcmp(task, "dictqa") ? skv_metric_f1_words(line, answer)
                                         : skv_metric_edit_similarity(line, answer);
        free(line);
        return SKV_OK;
    }
    if (!strcmp(task, "macroqa") || !strcmp(task, "passkey") || !strcmp(task, "kvrecall")) {
        *score = skv_metric_prefix_match(gen, answer);
        return SKV_OK;
    }
    return skv_set_error(SKV_ERR_ARG, "unknown task '%s' (dictqa, macroqa, passkey, kvrecall, linecomp)", task);
}

int skv_task_score_final(const char *task, const char *gen, const char *answer) {
    if (!strcmp(task, "dictqa") || !strcmp(task, "linecomp")) return strchr(gen, '\n') != NULL;
    const char *gb, *ge, *ab, *ae;
    strip(gen, strlen(gen), &gb, &ge);
    strip(answer, strlen(answer), &ab, &ae);
    /* the first len(answer) characters after leading whitespace are fixed once present */
    while (*gb && isspace((unsigned char)*gb)) gb++;
    return strlen(gb) >= (size_t)(ae - ab);
}
