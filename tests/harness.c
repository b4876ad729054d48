/*
 * harness.c — the test runner behind harness.h.
 */
#include "harness.h"

#include <stdarg.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_TESTS 512

static struct { const char *name; skv_test_fn fn; } g_tests[MAX_TESTS];
static int g_n_tests;
static int g_cur_failed, g_cur_skipped;
static const char *g_cur_name;

void skv_test_add(const char *name, skv_test_fn fn) {
    if (g_n_tests >= MAX_TESTS) {
        fprintf(stderr, "harness: too many tests\n");
        exit(2);
    }
    g_tests[g_n_tests].name = name;
    g_tests[g_n_tests].fn = fn;
    g_n_tests++;
}

void skv_test_fail(const char *file, int line, const char *fmt, ...) {
    if (g_cur_failed < 10) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stdout, "    %s:%d: ", file, line);
        vfprintf(stdout, fmt, ap);
        fprintf(stdout, "\n");
        va_end(ap);
    } else if (g_cur_failed == 10) {
        fprintf(stdout, "    (further failures of %s not shown)\n", g_cur_name);
    }
    g_cur_failed++;
}

void skv_test_skip(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stdout, "    skipped: ");
    vfprintf(stdout, fmt, ap);
    fprintf(stdout, "\n");
    va_end(ap);
    g_cur_skipped = 1;
}

const char *skv_test_shared_dir(void) {
    const char *s = getenv("SKV_SHARED");
    return s && *s ? s : "../shared";
}

const char *skv_test_cli(void) {
    const char *s = getenv("SKV_CLI");
    return s && *s ? s : "build/slimkv";
}

static char *slurp(FILE *f) {
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t got;
    rewind(f);
    while ((got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (cap - n - 1 == 0) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
    }
    buf[n] = 0;
    return buf;
}

int skv_test_sh(const char *cmd, char **out, char **err) {
    FILE *fo = tmpfile(), *fe = tmpfile();
    if (!fo || !fe) return -1;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fileno(fo), 1);
        dup2(fileno(fe), 2);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (out) *out = slurp(fo);
    if (err) *err = slurp(fe);
    fclose(fo);
    fclose(fe);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static char g_tmpdir[256];
static void rm_tmpdir(void) {
    char cmd[300];
    if (g_tmpdir[0]) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmpdir);
        if (system(cmd) != 0) fprintf(stderr, "harness: could not remove %s\n", g_tmpdir);
    }
}

const char *skv_test_tmpdir(void) {
    if (!g_tmpdir[0]) {
        snprintf(g_tmpdir, sizeof g_tmpdir, "/tmp/skv_tests.XXXXXX");
        if (!mkdtemp(g_tmpdir)) {
            perror("mkdtemp");
            exit(2);
        }
        atexit(rm_tmpdir);
    }
    return g_tmpdir;
}

int skv_test_main(int argc, char **argv) {
    const char *filter = argc > 1 ? argv[1] : NULL;
    int passed = 0, failed = 0, skipped = 0;
    for (int i = 0; i < g_n_tests; i++) {
        if (filter && !strstr(g_tests[i].name, filter)) continue;
        g_cur_failed = g_cur_skipped = 0;
        g_cur_name = g_tests[i].name;
        g_tests[i].fn();
        if (g_cur_failed) {
            printf("FAIL %s\n", g_tests[i].name);
            failed++;
        } else if (g_cur_skipped) {
            printf("skip %s\n", g_tests[i].name);
            skipped++;
        } else {
            printf("ok   %s\n", g_tests[i].name);
            passed++;
        }
        fflush(stdout);
    }
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}

cJSON *skv_test_load_json(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *buf = malloc((size_t)n + 1);
    cJSON *j = NULL;
    if (buf && fread(buf, 1, (size_t)n, f) == (size_t)n) {
        buf[n] = 0;
        j = cJSON_Parse(buf);
    }
    free(buf);
    fclose(f);
    return j;
}

cJSON *skv_test_golden(const char *model) {
    char path[1024];
    snprintf(path, sizeof path, "%s/models/%s/golden.json", skv_test_shared_dir(), model);
    return skv_test_load_json(path);
}

int32_t *skv_test_json_ids(const cJSON *arr, int *n) {
    *n = cJSON_GetArraySize(arr);
    int32_t *ids = malloc((size_t)(*n + 1) * sizeof *ids);
    for (int i = 0; i < *n; i++) ids[i] = (int32_t)cJSON_GetArrayItem(arr, i)->valuedouble;
    return ids;
}

int skv_test_argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

skv_model *skv_test_load_model(const char *name, int n_threads) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/models/%s", skv_test_shared_dir(), name);
    skv_model_params mp = skv_model_default_params();
    mp.n_threads = n_threads;
    skv_model *m = NULL;
    return skv_model_load(dir, mp, &m) == SKV_OK ? m : NULL;
}

void skv_test_ids(int32_t *ids, int n, uint32_t salt) {
    for (int i = 0; i < n; i++) ids[i] = (int32_t)((i * 2654435761u + salt) % 8000 + 1);
}

uint32_t skv_test_xorshift(uint32_t *state) {
    uint32_t x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *state = x;
}
