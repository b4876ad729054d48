/*
 * tr_tcp.c — the plain TCP transport: blocking sockets with poll() for the inactivity timeout,
 * TCP_NODELAY, send with MSG_NOSIGNAL (a closed peer is an error, not a signal).
 */
#include "net/transport.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct tcp_conn {
    skv_conn base;
    int fd;
} tcp_conn;

typedef struct tcp_listener {
    skv_listener base;
    int fd;
} tcp_listener;

static skv_status resolve(const char *host, int port, int passive, struct addrinfo **res) {
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM, .ai_flags = passive ? AI_PASSIVE : 0};
    const int e = getaddrinfo(host && *host ? host : NULL, ps, &hints, res);
    if (e) return skv_set_error(SKV_ERR_ARG, "tcp: cannot resolve %s:%d (%s)", host ? host : "*", port, gai_strerror(e));
    return SKV_OK;
}

static skv_status tcp_listen(const char *host, int port, skv_listener **out) {
    *out = NULL;
    if (port < 0 || port > 65535) return skv_set_error(SKV_ERR_ARG, "tcp: port %d", port);
    struct addrinfo *ai;
    skv_status st = resolve(host, port, 1, &ai);
    if (st) return st;
    const int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    if (fd < 0) {
        freeaddrinfo(ai);
        return skv_set_error(SKV_ERR_IO, "tcp: socket: %s", strerror(errno));
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, 4)) {
        const int e = errno;
        close(fd);
        freeaddrinfo(ai);
        return skv_set_error(SKV_ERR_IO, "tcp: cannot listen on %s:%d: %s", host ? host : "*", port, strerror(e));
    }
    freeaddrinfo(ai);
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    tcp_listener *l = calloc(1, sizeof *l);
    if (!l) {
        close(fd);
        return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    }
    l->base = (skv_listener){.ops = &skv_transport_tcp, .port = ntohs(sa.sin_port)};
    l->fd = fd;
    *out = &l->base;
    return SKV_OK;
}

static skv_conn *wrap(int fd, double timeout_s) {
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    tcp_conn *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        skv_set_error(SKV_ERR_NOMEM, "out of memory");
        return NULL;
    }
    c->base = (skv_conn){.ops = &skv_transport_tcp, .timeout_s = timeout_s};
    c->fd = fd;
    return &c->base;
}

/* Wait for fd to become ready for ev; SKV_ERR_IO naming what after timeout_s seconds. */
static skv_status wait_fd(int fd, short ev, double timeout_s, const char *what) {
    struct pollfd p = {.fd = fd, .events = ev};
    const int ms = timeout_s > 0 ? (int)(timeout_s * 1000) : -1;
    for (;;) {
        const int r = poll(&p, 1, ms);
        if (r > 0) return SKV_OK;
        if (r == 0) return skv_set_error(SKV_ERR_IO, "tcp: nothing %s for %.1f s (link down or peer stalled)", what, timeout_s);
        if (errno != EINTR) return skv_set_error(SKV_ERR_IO, "tcp: poll: %s", strerror(errno));
    }
}

static skv_status tcp_accept(skv_listener *lb, double timeout_s, skv_conn **out) {
    *out = NULL;
    tcp_listener *l = (tcp_listener *)lb;
    skv_status st = wait_fd(l->fd, POLLIN, timeout_s, "connected");
    if (st) return st;
    const int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) return skv_set_error(SKV_ERR_IO, "tcp: accept: %s", strerror(errno));
    return (*out = wrap(fd, timeout_s)) ? SKV_OK : SKV_ERR_NOMEM;
}

static void tcp_close_listener(skv_listener *lb) {
    if (!lb) return;
    close(((tcp_listener *)lb)->fd);
    free(lb);
}

static skv_status tcp_connect(const char *host, int port, double timeout_s, skv_conn **out) {
    *out = NULL;
    struct addrinfo *ai;
    skv_status st = resolve(host, port, 0, &ai);
    if (st) return st;
    const int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen)) {
        const int e = errno;
        if (fd >= 0) close(fd);
        freeaddrinfo(ai);
        return skv_set_error(SKV_ERR_IO, "tcp: cannot connect to %s:%d: %s", host, port, strerror(e));
    }
    freeaddrinfo(ai);
    return (*out = wrap(fd, timeout_s)) ? SKV_OK : SKV_ERR_NOMEM;
}

static skv_status tcp_send(skv_conn *cb, const void *buf, size_t n) {
    tcp_conn *c = (tcp_conn *)cb;
    const uint8_t *p = buf;
    while (n) {
        skv_status st = wait_fd(c->fd, POLLOUT, cb->timeout_s, "could be sent");
        if (st) return st;
        const ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (w <= 0) return skv_set_error(SKV_ERR_IO, "tcp: send: %s (connection dropped)", w < 0 ? strerror(errno) : "closed");
        p += w, n -= (size_t)w, cb->bytes_sent += (uint64_t)w;
    }
    return SKV_OK;
}

static skv_status tcp_recv(skv_conn *cb, void *buf, size_t n) {
    tcp_conn *c = (tcp_conn *)cb;
    uint8_t *p = buf;
    const size_t want = n;
    while (n) {
        skv_status st = wait_fd(c->fd, POLLIN, cb->timeout_s, "received");
        if (st) return st;
        const ssize_t r = recv(c->fd, p, n, 0);
        if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (r < 0) return skv_set_error(SKV_ERR_IO, "tcp: recv: %s (connection dropped)", strerror(errno));
        if (r == 0)
            return skv_set_error(SKV_ERR_IO, "tcp: the peer closed the connection after %zu of %zu bytes (dropped mid-frame)",
                                 want - n, want);
        p += r, n -= (size_t)r, cb->bytes_recv += (uint64_t)r;
    }
    return SKV_OK;
}

static void tcp_close(skv_conn *cb) {
    if (!cb) return;
    close(((tcp_conn *)cb)->fd);
    free(cb);
}

const skv_transport_ops skv_transport_tcp = {
    .name = "tcp",
    .listen = tcp_listen,
    .accept = tcp_accept,
    .close_listener = tcp_close_listener,
    .connect = tcp_connect,
    .send = tcp_send,
    .recv = tcp_recv,
    .close = tcp_close,
};
