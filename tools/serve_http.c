/*
 * serve_http.c — the HTTP side of `slimkv serve` on libmicrohttpd (one thread per connection).
 *
 * Routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health,
 * GET /metrics. A bearer key (--api-key) guards /v1/ and /metrics, compared in constant time.
 * Bodies over --max-body bytes are refused (413); a body still arriving --timeout seconds after
 * its headers, or a connection idle that long, is dropped (slow-body clients). While a request
 * generates, the connection has no idle timeout and is closed after the response; the waiting
 * thread polls its socket and cancels the request when the client has gone.
 */
#include "serve.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

typedef struct conn {
    char *body;
    size_t len, cap;
    int too_big;
    double t0;
} conn;

/* A streamed response's state (the content reader's). */
typedef struct stream {
    srv *s;
    srv_req *r;
    int fd;
    size_t sent_text;
    int32_t sent_toks;
    int first, finished;
    char *buf;
    size_t off, len;
} stream;

static enum MHD_Result reply(struct MHD_Connection *c, unsigned code, const char *type, char *body, int close_after,
                             int retry_after) {
    if (!body) body = strdup("");
    struct MHD_Response *resp = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", type);
    if (close_after) MHD_add_response_header(resp, "Connection", "close");
    if (retry_after) MHD_add_response_header(resp, "Retry-After", "1");
    enum MHD_Result rc = MHD_queue_response(c, code, resp);
    MHD_destroy_response(resp);
    return rc;
}

static enum MHD_Result reply_error(srv *s, struct MHD_Connection *c, unsigned code, char *err, int retry) {
    pthread_mutex_lock(&s->mu);
    s->met.requests[3]++;
    pthread_mutex_unlock(&s->mu);
    return reply(c, code, "application/json", err, 0, retry);
}

/* Constant-time comparison of the bearer key (time depends on the lengths only). */
static int key_ok(const srv *s, struct MHD_Connection *c) {
    if (!s->api_key) return 1;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h || strncmp(h, "Bearer ", 7)) return 0;
    const char *k = h + 7;
    const size_t a = strlen(k), b = strlen(s->api_key);
    unsigned char diff = a != b;
    for (size_t i = 0; i < a; i++) diff |= (unsigned char)k[i] ^ (unsigned char)s->api_key[i % (b ? b : 1)];
    return diff == 0;
}

/* The client closed its end (a read would return end-of-file). */
static int client_gone(int fd) {
    if (fd < 0) return 0;
    char b;
    ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

static int conn_fd(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? ci->connect_fd : -1;
}

/* Wait (under s->mu) at most ms for news of r. */
static void timed_wait(srv *s, srv_req *r, int ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += (long)ms * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_cond_timedwait(&r->cv, &s->mu, &ts);
}

/* Something to send: the chat role chunk, released text or tokens, or the end. (under s->mu) */
static int stream_news(const stream *st) {
    const srv_req *r = st->r;
    return (r->chat && st->first) || r->text_len > st->sent_text || r->n_toks > st->sent_toks || r->done;
}

/* What is new in r since the last chunk, copied (under s->mu) so that the chunks are formatted
 * without the lock: a copy of the request whose text and tokens are only the new ones. */
static int stream_snapshot(const stream *st, srv_req *v) {
    const srv_req *r = st->r;
    *v = *r;
    v->text_len = r->text_len - st->sent_text;
    v->n_toks = r->n_toks - st->sent_toks;
    v->text = v->text_len ? malloc(v->text_len + 1) : NULL;
    v->toks = v->n_toks ? malloc(sizeof(srv_tok) * (size_t)v->n_toks) : NULL;
    if ((v->text_len && !v->text) || (v->n_toks && !v->toks)) {
        free(v->text), free(v->toks);
        return 0;
    }
    if (v->text) memcpy(v->text, r->text + st->sent_text, v->text_len), v->text[v->text_len] = 0;
    if (v->toks) memcpy(v->toks, r->toks + st->sent_toks, sizeof(srv_tok) * (size_t)v->n_toks);
    return 1;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    stream *st = cls;
    srv *s = st->s;
    if (st->off == st->len) {
        free(st->buf);
        st->buf = NULL, st->off = st->len = 0;
        if (st->finished) return MHD_CONTENT_READER_END_OF_STREAM;
        srv_req v;
        int have = 0;
        pthread_mutex_lock(&s->mu);
        for (int waited = 0;; waited += 100) {
            if (stream_news(st)) {
                have = stream_snapshot(st, &v);
                if (have) break;
            }
            if (client_gone(st->fd)) {
                pthread_mutex_unlock(&s->mu);
                return MHD_CONTENT_READER_END_WITH_ERROR;
            }
            if (waited >= 5000) { /* an SSE comment keeps proxies and clients patient */
                st->buf = strdup(": waiting\n\n");
                break;
            }
            timed_wait(s, st->r, 100);
        }
        pthread_mutex_unlock(&s->mu);
        if (have) { /* format the new part (offsets 0 in the copy) outside the lock */
            size_t t0 = 0;
            int32_t k0 = 0;
            st->buf = srv_resp_chunks(s, &v, &t0, &k0, &st->first, &st->finished);
            st->sent_text += v.text_len, st->sent_toks += v.n_toks;
            free(v.text), free(v.toks);
        }
        if (!st->buf) return MHD_CONTENT_READER_END_WITH_ERROR; /* out of memory */
        st->len = strlen(st->buf);
    }
    const size_t n = st->len - st->off < max ? st->len - st->off : max;
    memcpy(buf, st->buf + st->off, n);
    st->off += n;
    return (ssize_t)n;
}

static void stream_free(void *cls) {
    stream *st = cls;
    srv_release(st->s, st->r);
    free(st->buf);
    free(st);
}

static enum MHD_Result generate(srv *s, struct MHD_Connection *c, conn *k, int chat) {
    pthread_mutex_lock(&s->mu);
    s->met.requests[chat]++;
    pthread_mutex_unlock(&s->mu);
    if (k->too_big)
        return reply_error(s, c, 413,
                           srv_error_json("invalid_request_error", NULL, NULL, "the request body exceeds %d bytes",
                                          s->max_body), 0);
    srv_req *r = NULL;
    char *err = NULL;
    int code = srv_parse(s, k->body ? k->body : "", k->len, chat, &r, &err);
    if (code) return reply_error(s, c, (unsigned)code, err, 0);
    r->t_arrive = skv_time_now();
    r->refs = 1;
    if (srv_submit(s, r) == 429) {
        srv_req_free(r);
        return reply(c, 429, "application/json",
                     srv_error_json("rate_limit_error", NULL, "queue_full",
                                    "the server's queue is full (%d requests waiting); retry later", s->queue_cap),
                     0, 1);
    }
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, 0u); /* generating: no idle timeout */
    const int fd = conn_fd(c);
    if (r->stream) {
        stream *st = calloc(1, sizeof *st);
        st->s = s, st->r = r, st->fd = fd, st->first = 1;
        struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, st, stream_free);
        if (!resp) {
            stream_free(st);
            return MHD_NO;
        }
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        MHD_add_response_header(resp, "Connection", "close");
        enum MHD_Result rc = MHD_queue_response(c, 200, resp);
        MHD_destroy_response(resp);
        return rc;
    }
    pthread_mutex_lock(&s->mu);
    while (!r->done) {
        if (client_gone(fd)) break;
        timed_wait(s, r, 100);
    }
    const int done = r->done;
    pthread_mutex_unlock(&s->mu);
    /* a finished request no longer changes: formatted without the lock */
    char *body = NULL;
    unsigned status = 200;
    if (done && r->err_http) {
        status = (unsigned)r->err_http;
        body = srv_error_json("server_error", NULL, NULL, "%s", r->err);
    } else if (done) {
        body = srv_resp_full(s, r);
    }
    srv_release(s, r);
    if (!body) return MHD_NO; /* the client went away */
    return reply(c, status, "application/json", body, 1, 0);
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                               const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    srv *s = cls;
    conn *k = *con_cls;
    if (!k) {
        k = calloc(1, sizeof *k);
        if (!k) return MHD_NO;
        k->t0 = skv_time_now();
        *con_cls = k;
        return MHD_YES;
    }
    if (*upload_size) { /* body bytes */
        if (skv_time_now() - k->t0 > s->body_timeout_s) return MHD_NO; /* too slow: drop */
        if (!k->too_big && k->len + *upload_size > (size_t)s->max_body) {
            k->too_big = 1;
            free(k->body);
            k->body = NULL, k->len = k->cap = 0;
        }
        if (!k->too_big) {
            if (k->len + *upload_size + 1 > k->cap) {
                size_t cap = k->cap ? k->cap : 4096;
                while (cap < k->len + *upload_size + 1) cap *= 2;
                char *p = realloc(k->body, cap);
                if (!p) return MHD_NO;
                k->body = p, k->cap = cap;
            }
            memcpy(k->body + k->len, upload, *upload_size);
            k->len += *upload_size;
            k->body[k->len] = 0;
        }
        *upload_size = 0;
        return MHD_YES;
    }
    const int get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
    if (!strcmp(url, "/health")) {
        pthread_mutex_lock(&s->mu);
        s->met.requests[2]++;
        pthread_mutex_unlock(&s->mu);
        return reply(c, 200, "application/json", strdup("{\"status\":\"ok\"}"), 0, 0);
    }
    const int api = !strncmp(url, "/v1/", 4) || !strcmp(url, "/metrics");
    if (api && !key_ok(s, c))
        return reply_error(s, c, 401,
                           srv_error_json("invalid_request_error", NULL, "invalid_api_key",
                                          "missing or wrong API key (Authorization: Bearer KEY)"), 0);
    if (!strcmp(url, "/v1/completions") && post) return generate(s, c, k, 0);
    if (!strcmp(url, "/v1/chat/completions") && post) return generate(s, c, k, 1);
    if ((!strcmp(url, "/v1/models") || !strcmp(url, "/metrics")) && get) {
        pthread_mutex_lock(&s->mu);
        s->met.requests[2]++;
        pthread_mutex_unlock(&s->mu);
        if (url[1] == 'm') return reply(c, 200, "text/plain; version=0.0.4", srv_metrics_text(s), 0, 0);
        return reply(c, 200, "application/json", srv_models_json(s), 0, 0);
    }
    const int known = !strcmp(url, "/v1/completions") || !strcmp(url, "/v1/chat/completions") ||
                      !strcmp(url, "/v1/models") || !strcmp(url, "/metrics");
    if (known)
        return reply_error(s, c, 405, srv_error_json("invalid_request_error", NULL, NULL, "method %s not allowed on %s",
                                                     method, url), 0);
    return reply_error(s, c, 404, srv_error_json("invalid_request_error", NULL, "not_found", "no route %.100s", url), 0);
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    conn *k = *con_cls;
    if (k) {
        free(k->body);
        free(k);
        *con_cls = NULL;
    }
}

skv_status srv_http_run(srv *s) {
    /* an IPv4 address (or "localhost"), else an IPv6 one such as ::1 */
    struct sockaddr_in addr = {0};
    struct sockaddr_in6 addr6 = {0};
    const char *host = !strcmp(s->host, "localhost") ? "127.0.0.1" : s->host;
    int v6 = 0;
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)s->port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        addr6.sin6_family = AF_INET6;
        addr6.sin6_port = htons((uint16_t)s->port);
        if (inet_pton(AF_INET6, host, &addr6.sin6_addr) != 1) {
            fprintf(stderr, "slimkv serve: --host %s is not an IPv4 or IPv6 address\n", s->host);
            srv_sched_stop(s);
            return SKV_ERR_ARG;
        }
        v6 = 1;
    }
    /* signals go to sigwait below, not to the server's threads */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG | (v6 ? MHD_USE_IPv6 : 0),
        (uint16_t)s->port, NULL, NULL, handler, s, MHD_OPTION_SOCK_ADDR,
        v6 ? (struct sockaddr *)&addr6 : (struct sockaddr *)&addr, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)s->body_timeout_s, MHD_OPTION_CONNECTION_LIMIT, (unsigned)(s->queue_cap + s->parallel + 64),
        MHD_OPTION_NOTIFY_COMPLETED, completed, NULL, MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "slimkv serve: cannot listen on %s:%d: %s\n", s->host, s->port, strerror(errno));
        srv_sched_stop(s);
        return SKV_ERR_IO;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    printf("slimkv serve: listening on http://%s%s%s:%u (model %s, backend %s, %d slots)\n", v6 ? "[" : "", host, v6 ? "]" : "",
           di ? di->port : (unsigned)s->port, s->model_name, s->backend == SKV_BACKEND_CUDA ? "cuda" : "cpu",
           s->parallel);
    fflush(stdout);
    int sig = 0;
    sigwait(&set, &sig);
    fprintf(stderr, "slimkv serve: signal %d, stopping\n", sig);
    srv_sched_stop(s); /* waiting requests end with an error first, so connection threads return */
    MHD_stop_daemon(d);
    return SKV_OK;
}
