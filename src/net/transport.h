/*
 * transport.h — the transport seam: one table of operations per way two processes exchange
 * bytes (plain TCP sockets; UCX's stream API, which on one machine runs over TCP and shared
 * memory and across machines over whatever UCX finds, RDMA included). A connection is reliable
 * and ordered; recv returns exactly the bytes asked for or an error: the peer closed or failed
 * (dropped connection), or nothing arrived for `timeout_s` seconds (a cut link). Frames
 * (net/frame.h) travel over it with skv_frame_send / skv_frame_recv.
 */
#ifndef SKV_NET_TRANSPORT_H
#define SKV_NET_TRANSPORT_H

#include "net/frame.h"

typedef struct skv_transport_ops skv_transport_ops;

/* The part of every connection and listener the seam shares; a transport's own state follows. */
typedef struct skv_conn {
    const skv_transport_ops *ops;
    double timeout_s;      /* recv/send inactivity limit */
    uint64_t bytes_sent, bytes_recv;
} skv_conn;
typedef struct skv_listener {
    const skv_transport_ops *ops;
    int port;              /* the port bound (useful with port 0) */
} skv_listener;

struct skv_transport_ops {
    const char *name;
    /* Listen on host:port (port 0: any free port, read back from l->port). */
    skv_status (*listen)(const char *host, int port, skv_listener **out);
    /* Wait up to timeout_s for one peer. */
    skv_status (*accept)(skv_listener *l, double timeout_s, skv_conn **out);
    void (*close_listener)(skv_listener *l);
    skv_status (*connect)(const char *host, int port, double timeout_s, skv_conn **out);
    skv_status (*send)(skv_conn *c, const void *buf, size_t n);
    skv_status (*recv)(skv_conn *c, void *buf, size_t n);
    void (*close)(skv_conn *c);
};

extern const skv_transport_ops skv_transport_tcp, skv_transport_ucx;
/* "tcp" or "ucx"; NULL with the error set otherwise. */
const skv_transport_ops *skv_transport_find(const char *name);

/* One frame out (built by skv_frame_build). */
skv_status skv_frame_send(skv_conn *c, const uint8_t *frame, size_t len);
/* One frame in: the header (checked), then payload and checksum (checked); *buf (malloc'd,
 * caller frees) holds the whole frame and f->payload points into it. */
skv_status skv_frame_recv(skv_conn *c, uint64_t max_payload, skv_frame *f, uint8_t **buf);

#endif
