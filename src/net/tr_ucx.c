/*
 * tr_ucx.c — the UCX transport (UCP stream API): connection establishment through UCX's
 * socket-address listener, endpoints in peer error-handling mode (a failed or vanished peer
 * completes outstanding requests with an error), sends and WAITALL receives driven by worker
 * progress with the inactivity timeout. Which wires UCX uses is its choice (UCX_TLS: e.g. "tcp"
 * to force the network path between namespaces; on one host it may pick shared memory).
 */
#include "net/transport.h"

#include <arpa/inet.h>
#include <ucp/api/ucp.h>

/* A UCP context and worker, shared by a listener and the connections it accepted. */
typedef struct ucx_rt {
    ucp_context_h ctx;
    ucp_worker_h worker;
    int refs;
} ucx_rt;

typedef struct ucx_conn {
    skv_conn base;
    ucx_rt *rt;
    ucp_ep_h ep;
    volatile int failed;      /* set by the error handler */
    ucs_status_t fail_status;
} ucx_conn;

typedef struct ucx_listener {
    skv_listener base;
    ucx_rt *rt;
    ucp_listener_h lis;
    ucp_conn_request_h req;   /* the pending connection request (one at a time) */
} ucx_listener;

static skv_status rt_new(ucx_rt **out) {
    *out = NULL;
    ucx_rt *rt = calloc(1, sizeof *rt);
    if (!rt) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    ucp_config_t *cfg;
    ucs_status_t s = ucp_config_read(NULL, NULL, &cfg);
    if (s != UCS_OK) {
        free(rt);
        return skv_set_error(SKV_ERR_IO, "ucx: reading the configuration: %s", ucs_status_string(s));
    }
    ucp_params_t p = {.field_mask = UCP_PARAM_FIELD_FEATURES, .features = UCP_FEATURE_STREAM};
    s = ucp_init(&p, cfg, &rt->ctx);
    ucp_config_release(cfg);
    if (s != UCS_OK) {
        free(rt);
        return skv_set_error(SKV_ERR_IO, "ucx: ucp_init: %s", ucs_status_string(s));
    }
    ucp_worker_params_t wp = {.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE, .thread_mode = UCS_THREAD_MODE_SINGLE};
    if ((s = ucp_worker_create(rt->ctx, &wp, &rt->worker)) != UCS_OK) {
        ucp_cleanup(rt->ctx);
        free(rt);
        return skv_set_error(SKV_ERR_IO, "ucx: worker: %s", ucs_status_string(s));
    }
    rt->refs = 1;
    *out = rt;
    return SKV_OK;
}

static void rt_unref(ucx_rt *rt) {
    if (!rt || --rt->refs > 0) return;
    ucp_worker_destroy(rt->worker);
    ucp_cleanup(rt->ctx);
    free(rt);
}

static skv_status sockaddr_of(const char *host, int port, struct sockaddr_in *sa) {
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    if (!host || !*host) {
        sa->sin_addr.s_addr = INADDR_ANY;
        return SKV_OK;
    }
    if (inet_pton(AF_INET, host, &sa->sin_addr) != 1)
        return skv_set_error(SKV_ERR_ARG, "ucx: '%s' is not an IPv4 address", host);
    return SKV_OK;
}

static void conn_cb(ucp_conn_request_h req, void *arg) {
    ucx_listener *l = arg;
    if (l->req) ucp_listener_reject(l->lis, req); /* one at a time */
    else l->req = req;
}

static void err_cb(void *arg, ucp_ep_h ep, ucs_status_t status) {
    ucx_conn *c = arg;
    c->failed = 1;
    c->fail_status = status;
}

static skv_status ucx_listen(const char *host, int port, skv_listener **out) {
    *out = NULL;
    if (port < 0 || port > 65535) return skv_set_error(SKV_ERR_ARG, "ucx: port %d", port);
    struct sockaddr_in sa;
    skv_status st = sockaddr_of(host, port, &sa);
    if (st) return st;
    ucx_listener *l = calloc(1, sizeof *l);
    if (!l) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    if ((st = rt_new(&l->rt))) {
        free(l);
        return st;
    }
    ucp_listener_params_t lp = {.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER,
                                .sockaddr = {.addr = (const struct sockaddr *)&sa, .addrlen = sizeof sa},
                                .conn_handler = {.cb = conn_cb, .arg = l}};
    ucs_status_t s = ucp_listener_create(l->rt->worker, &lp, &l->lis);
    if (s != UCS_OK) {
        rt_unref(l->rt);
        free(l);
        return skv_set_error(SKV_ERR_IO, "ucx: cannot listen on %s:%d: %s", host ? host : "*", port, ucs_status_string(s));
    }
    ucp_listener_attr_t at = {.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR};
    int bound = port;
    if (ucp_listener_query(l->lis, &at) == UCS_OK) bound = ntohs(((struct sockaddr_in *)&at.sockaddr)->sin_port);
    l->base = (skv_listener){.ops = &skv_transport_ucx, .port = bound};
    *out = &l->base;
    return SKV_OK;
}

static ucx_conn *conn_new(ucx_rt *rt, double timeout_s) {
    ucx_conn *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->base = (skv_conn){.ops = &skv_transport_ucx, .timeout_s = timeout_s};
    c->rt = rt;
    rt->refs++;
    return c;
}

static skv_status ucx_accept(skv_listener *lb, double timeout_s, skv_conn **out) {
    *out = NULL;
    ucx_listener *l = (ucx_listener *)lb;
    const double t_end = skv_time_now() + (timeout_s > 0 ? timeout_s : 1e30);
    while (!l->req) {
        ucp_worker_progress(l->rt->worker);
        if (skv_time_now() > t_end)
            return skv_set_error(SKV_ERR_IO, "ucx: nothing connected for %.1f s", timeout_s);
    }
    ucx_conn *c = conn_new(l->rt, timeout_s);
    if (!c) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    ucp_ep_params_t ep = {.field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                                        UCP_EP_PARAM_FIELD_ERR_HANDLER,
                          .conn_request = l->req, .err_mode = UCP_ERR_HANDLING_MODE_PEER,
                          .err_handler = {.cb = err_cb, .arg = c}};
    l->req = NULL;
    ucs_status_t s = ucp_ep_create(l->rt->worker, &ep, &c->ep);
    if (s != UCS_OK) {
        rt_unref(c->rt);
        free(c);
        return skv_set_error(SKV_ERR_IO, "ucx: accepting: %s", ucs_status_string(s));
    }
    *out = &c->base;
    return SKV_OK;
}

static void ucx_close_listener(skv_listener *lb) {
    if (!lb) return;
    ucx_listener *l = (ucx_listener *)lb;
    if (l->req) ucp_listener_reject(l->lis, l->req);
    ucp_listener_destroy(l->lis);
    rt_unref(l->rt);
    free(l);
}

/* Wait for a request: UCS_OK, an error, or a timeout (the request is cancelled). */
static int req_busy(void *r, int is_recv, size_t *len) {
    return (is_recv ? ucp_stream_recv_request_test(r, len) : ucp_request_check_status(r)) == UCS_INPROGRESS;
}

/* op names the operation in errors ("send"), idle what did not happen on a timeout ("sent"). */
static skv_status wait_req(ucx_conn *c, void *r, int is_recv, size_t *len, const char *op, const char *idle) {
    if (r == NULL) return SKV_OK;
    if (UCS_PTR_IS_ERR(r))
        return skv_set_error(SKV_ERR_IO, "ucx: %s: %s%s", op, ucs_status_string(UCS_PTR_STATUS(r)),
                             c->failed ? " (connection dropped)" : "");
    const double t_end = skv_time_now() + (c->base.timeout_s > 0 ? c->base.timeout_s : 1e30);
    ucs_status_t s;
    for (;;) {
        s = is_recv ? ucp_stream_recv_request_test(r, len) : ucp_request_check_status(r);
        if (s != UCS_INPROGRESS) break;
        ucp_worker_progress(c->rt->worker); /* may keep reporting events on a dead link: check the clock anyway */
        if (skv_time_now() > t_end) {
            /* a stream receive may not be cancellable: close the endpoint by force, which
             * completes whatever is outstanding with an error, before the caller's buffer goes */
            ucp_request_cancel(c->rt->worker, r);
            const double t_drain = skv_time_now() + 1;
            while (req_busy(r, is_recv, len) && skv_time_now() < t_drain) ucp_worker_progress(c->rt->worker);
            if (req_busy(r, is_recv, len) && c->ep) {
                ucp_request_param_t cp = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS, .flags = UCP_EP_CLOSE_FLAG_FORCE};
                void *cr = ucp_ep_close_nbx(c->ep, &cp);
                c->ep = NULL;
                const double t_close = skv_time_now() + 5;
                while ((req_busy(r, is_recv, len) || (cr && !UCS_PTR_IS_ERR(cr) && ucp_request_check_status(cr) == UCS_INPROGRESS)) &&
                       skv_time_now() < t_close)
                    ucp_worker_progress(c->rt->worker);
                if (cr && !UCS_PTR_IS_ERR(cr) && ucp_request_check_status(cr) != UCS_INPROGRESS) ucp_request_free(cr);
            }
            c->failed = 1, c->fail_status = UCS_ERR_TIMED_OUT;
            if (!req_busy(r, is_recv, len)) ucp_request_free(r);
            return skv_set_error(SKV_ERR_IO, "ucx: nothing %s for %.1f s (link down or peer stalled)", idle,
                                 c->base.timeout_s);
        }
    }
    ucp_request_free(r);
    if (s != UCS_OK)
        return skv_set_error(SKV_ERR_IO, "ucx: %s: %s (connection dropped)", op, ucs_status_string(s));
    return SKV_OK;
}

static skv_status ucx_connect(const char *host, int port, double timeout_s, skv_conn **out) {
    *out = NULL;
    struct sockaddr_in sa;
    skv_status st = sockaddr_of(host, port, &sa);
    if (st) return st;
    ucx_rt *rt;
    if ((st = rt_new(&rt))) return st;
    ucx_conn *c = conn_new(rt, timeout_s);
    rt_unref(rt); /* the connection holds it now */
    if (!c) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    ucp_ep_params_t ep = {.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR |
                                        UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER,
                          .flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER,
                          .sockaddr = {.addr = (const struct sockaddr *)&sa, .addrlen = sizeof sa},
                          .err_mode = UCP_ERR_HANDLING_MODE_PEER, .err_handler = {.cb = err_cb, .arg = c}};
    ucs_status_t s = ucp_ep_create(rt->worker, &ep, &c->ep);
    if (s != UCS_OK) {
        rt_unref(c->rt);
        free(c);
        return skv_set_error(SKV_ERR_IO, "ucx: cannot connect to %s:%d: %s", host, port, ucs_status_string(s));
    }
    /* the connection is made lazily: flush to find out now whether the peer is there */
    ucp_request_param_t rp = {.op_attr_mask = 0};
    void *r = ucp_ep_flush_nbx(c->ep, &rp);
    if ((st = wait_req(c, r, 0, NULL, "connect", "connected")) || c->failed) {
        if (!st) st = skv_set_error(SKV_ERR_IO, "ucx: cannot connect to %s:%d: %s", host, port, ucs_status_string(c->fail_status));
        skv_transport_ucx.close(&c->base);
        return st;
    }
    *out = &c->base;
    return SKV_OK;
}

static skv_status ucx_send(skv_conn *cb, const void *buf, size_t n) {
    ucx_conn *c = (ucx_conn *)cb;
    if (c->failed) return skv_set_error(SKV_ERR_IO, "ucx: send: %s (connection dropped)", ucs_status_string(c->fail_status));
    ucp_request_param_t rp = {.op_attr_mask = 0};
    void *r = ucp_stream_send_nbx(c->ep, buf, n, &rp);
    skv_status st = wait_req(c, r, 0, NULL, "send", "could be sent");
    if (!st) cb->bytes_sent += n;
    return st;
}

static skv_status ucx_recv(skv_conn *cb, void *buf, size_t n) {
    ucx_conn *c = (ucx_conn *)cb;
    if (c->failed) return skv_set_error(SKV_ERR_IO, "ucx: recv: %s (connection dropped)", ucs_status_string(c->fail_status));
    size_t len = 0;
    ucp_request_param_t rp = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS, .flags = UCP_STREAM_RECV_FLAG_WAITALL};
    void *r = ucp_stream_recv_nbx(c->ep, buf, n, &len, &rp);
    skv_status st = wait_req(c, r, 1, &len, "recv", "received");
    if (!st && len != n)
        st = skv_set_error(SKV_ERR_IO, "ucx: received %zu of %zu bytes (connection dropped)", len, n);
    if (!st) cb->bytes_recv += n;
    return st;
}

static void ucx_close(skv_conn *cb) {
    if (!cb) return;
    ucx_conn *c = (ucx_conn *)cb;
    if (c->ep) {
        ucp_request_param_t rp = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                                  .flags = c->failed ? UCP_EP_CLOSE_FLAG_FORCE : 0};
        void *r = ucp_ep_close_nbx(c->ep, &rp);
        if (r && !UCS_PTR_IS_ERR(r)) {
            const double t_end = skv_time_now() + 5;
            while (ucp_request_check_status(r) == UCS_INPROGRESS && skv_time_now() < t_end) ucp_worker_progress(c->rt->worker);
            if (ucp_request_check_status(r) == UCS_INPROGRESS) ucp_request_cancel(c->rt->worker, r);
            else ucp_request_free(r);
        }
    }
    rt_unref(c->rt);
    free(c);
}

const skv_transport_ops skv_transport_ucx = {
    .name = "ucx",
    .listen = ucx_listen,
    .accept = ucx_accept,
    .close_listener = ucx_close_listener,
    .connect = ucx_connect,
    .send = ucx_send,
    .recv = ucx_recv,
    .close = ucx_close,
};
