/*
 * harness.h — a minimal test runner. Each tests/test_*.c file defines a
 * `void register_<area>(void)` that calls skv_test_add() for each of its tests; tests/main.c calls
 * every register function, runs the tests (optionally filtered by a substring given as argv[1])
 * and ends with the line "N passed, N failed".
 */
#ifndef SKV_HARNESS_H
#define SKV_HARNESS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* Where ../shared is (env SKV_SHARED, default "../shared"), and the CLI binary (env SKV_CLI,
 * default "build/slimkv"). */
const char *skv_test_shared_dir(void);
const char *skv_test_cli(void);

/* Run a shell command; capture stdout and stderr (each malloc'd, NUL-terminated; NULL to
 * discard) and return the exit status (or -1 if it did not exit normally). */
int skv_test_sh(const char *cmd, char **out, char **err);

/* A fresh empty temporary directory (removed at exit). */
const char *skv_test_tmpdir(void);

#endif
