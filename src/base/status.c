/*
 * status.c — status codes, the thread-local last-error message, version and clock.
 */
#include "internal.h"

#include <stdarg.h>
#include <time.h>

static _Thread_local char g_last_error[1024];

const char *skv_strerror(skv_status st) {
    switch (st) {
    case SKV_OK: return "ok";
    case SKV_ERR_IO: return "I/O error";
    case SKV_ERR_FORMAT: return "malformed input";
    case SKV_ERR_UNSUPPORTED: return "unsupported";
    case SKV_ERR_NOMEM: return "out of memory";
    case SKV_ERR_ARG: return "bad argument";
    case SKV_ERR_RANGE: return "out of range";
    case SKV_ERR_SHAPE: return "shape or dtype mismatch";
    }
    return "unknown status";
}

const char *skv_last_error(void) { return g_last_error; }

skv_status skv_set_error(skv_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_last_error, sizeof g_last_error, fmt, ap);
    va_end(ap);
    return st;
}

const char *skv_version(void) { return "0.1.0"; }

double skv_time_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
