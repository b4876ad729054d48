/*
 * test_fuzz.c — every input under fuzz/regress/<target>/ (each a finding of the fuzzers, kept
 * after its fix) and fuzz/corpus/<target>/ (the seeds) goes through the same fuzz target as
 * `make fuzz` builds: the parser must refuse it cleanly or accept it keeping its promises, and
 * in `make asan` without a memory error.
 */
#include "../fuzz/fuzz.h"
#include "harness.h"

#include <dirent.h>

typedef int (*fuzz_fn)(const uint8_t *, size_t);

static const struct { const char *name; fuzz_fn fn; } k_targets[] = {
    {"safetensors", skv_fuzz_safetensors}, {"st_index", skv_fuzz_st_index},
    {"config", skv_fuzz_config},           {"tokenizer_json", skv_fuzz_tokenizer_json},
    {"tokenize", skv_fuzz_tokenize},       {"tasks", skv_fuzz_tasks},
    {"scd_frame", skv_fuzz_scd_frame},
    {"gguf", skv_fuzz_gguf},
};

static uint8_t *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, len = 0, got;
    uint8_t *buf = malloc(cap);
    while (buf && (got = fread(buf + len, 1, cap - len, f)) > 0) {
        len += got;
        if (len == cap) buf = realloc(buf, cap *= 2);
    }
    fclose(f);
    *n = len;
    return buf;
}

/* Feeds every regular file of dir to fn; returns how many there were (-1: no such dir). */
static int replay_dir(const char *target, fuzz_fn fn, const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        size_t len = 0;
        uint8_t *data = read_all(path, &len);
        CHECKF(data, "%s: cannot read", path);
        if (!data) continue;
        CHECKF(fn(data, len) == 0, "fuzz target %s broke its promise on %s: %s", target, path, skv_last_error());
        free(data);
        n++;
    }
    closedir(d);
    return n;
}

static void test_replay(void) {
    int total_regress = 0;
    for (size_t i = 0; i < sizeof k_targets / sizeof k_targets[0]; i++) {
        char dir[256];
        snprintf(dir, sizeof dir, "fuzz/corpus/%s", k_targets[i].name);
        int seeds = replay_dir(k_targets[i].name, k_targets[i].fn, dir);
        CHECKF(seeds > 0, "%s: no seed inputs (run the tests from the repository root)", dir);
        snprintf(dir, sizeof dir, "fuzz/regress/%s", k_targets[i].name);
        int reg = replay_dir(k_targets[i].name, k_targets[i].fn, dir);
        if (reg > 0) total_regress += reg;
    }
    printf("    replayed the seed corpora and %d regression inputs\n", total_regress);
}

void register_fuzz(void) {
    skv_test_add("fuzz/seed corpora and regression inputs through every fuzz target", test_replay);
}
