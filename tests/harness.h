/*
 * harness.h — a minimal test runner. Each tests/test_*.c file defines a
 * `void register_<area>(void)` that calls skv_test_add() for each of its tests; tests/main.c calls
 * every register function, runs the tests (optionally filtered by a substring given as argv[1])
 * and ends with the line "N passed, N failed, N skipped".
 */
#ifndef SKV_HARNESS_H
#define SKV_HARNESS_H

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "slimkv.h"

typedef void (*skv_test_fn)(void);
void skv_test_add(const char *name, skv_test_fn fn);

/* Records a failure of the running test (and continues). */
void skv_test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define CHECK(cond)                                                       \
    do {                                                                  \
        if (!(cond)) skv_test_fail(__FILE__, __LINE__, "CHECK(%s)", #cond); \
    } while (0)
#define CHECKF(cond, ...)                                            \
    do {                                                             \
        if (!(cond)) skv_test_fail(__FILE__, __LINE__, __VA_ARGS__); \
    } while (0)
/* Like CHECKF, but leaves the test at once. */
#define REQUIRE(cond, ...)                                           \
    do {                                                             \
        if (!(cond)) {                                               \
            skv_test_fail(__FILE__, __LINE__, __VA_ARGS__);          \
            return;                                                  \
        }                                                            \
    } while (0)

/* Marks the running test as skipped (it cannot run here: no GPU, no clang, ...) and prints
 * why; a test that skips must return without checking anything. A failure recorded before or
 * after still makes it fail. */
void skv_test_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Where ../shared is (env SKV_SHARED, default "../shared"), and the CLI binary (env SKV_CLI,
 * default "build/slimkv"). */
const char *skv_test_shared_dir(void);
const char *skv_test_cli(void);

/* Run a shell command; capture stdout and stderr (each malloc'd, NUL-terminated; NULL to
 * discard) and return the exit status (or -1 if it did not exit normally). */
int skv_test_sh(const char *cmd, char **out, char **err);

/* A fresh empty temporary directory (removed at exit). */
const char *skv_test_tmpdir(void);

/* Shared fixtures. */
/* A JSON file parsed (NULL if missing or malformed); golden.json of ../shared/models/<model>. */
cJSON *skv_test_load_json(const char *path);
cJSON *skv_test_golden(const char *model);
/* A JSON array of integers as a malloc'd id array (n entries). */
int32_t *skv_test_json_ids(const cJSON *arr, int *n);
/* Index of the largest of x[0..n) (the first on ties). */
int skv_test_argmax(const float *x, int n);
/* ../shared/models/<name> loaded with n_threads (0: all cores); NULL on failure. */
skv_model *skv_test_load_model(const char *name, int n_threads);
/* xorshift32 step of a generator whose state the caller keeps (nonzero seed). */
uint32_t skv_test_xorshift(uint32_t *state);
/* n deterministic token ids in [1, 8000] (a multiplicative hash of the index and salt). */
void skv_test_ids(int32_t *ids, int n, uint32_t salt);

#endif
