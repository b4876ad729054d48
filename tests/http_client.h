/*
 * http_client.h — a minimal HTTP/1.1 client over a loopback TCP socket for the server tests
 * (Connection: close; chunked responses decoded), and starting/stopping `slimkv serve`.
 */
#ifndef SKV_HTTP_CLIENT_H
#define SKV_HTTP_CLIENT_H

#include <stddef.h>
#include <sys/types.h>

typedef struct hresp {
    int status;      /* -1: no response */
    char *headers;   /* the header block, NUL-terminated */
    char *body;      /* decoded body, NUL-terminated */
    size_t len;
} hresp;

/* Send a request (body may be NULL; extra: more header lines, each ending "\r\n", or NULL);
 * returns the connected socket or -1. */
int http_send(int port, const char *method, const char *path, const char *extra, const char *body, size_t body_len);
/* Connect to ::1 instead of 127.0.0.1 from now on (1), or back (0). */
void http_use_ipv6(int on);
/* Read the whole response from fd (until the server closes it) and close fd. 0 on success. */
int http_read(int fd, hresp *r);
/* send + read. */
int http_do(int port, const char *method, const char *path, const char *extra, const char *body, hresp *r);
void hresp_free(hresp *r);
/* A header's value (case-insensitive name) copied into buf, or NULL. */
const char *hresp_header(const hresp *r, const char *name, char *buf, size_t cap);

/* `slimkv serve -m MODEL --port 0 ARGS` started in the background; its port, or -1 (the reason
 * in err). */
typedef struct srv_proc {
    pid_t pid;
    int port;
    char log[512];   /* its standard error */
} srv_proc;
int srv_start(srv_proc *p, const char *model_dir, const char *args, char *err, size_t cap);
/* SIGTERM, then wait; returns its exit status (or -1). */
int srv_stop(srv_proc *p);
/* The resident memory of a process in KiB (/proc/PID/status VmRSS), or -1. */
long proc_rss_kb(pid_t pid);

#endif
