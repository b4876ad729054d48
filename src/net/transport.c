/*
 * transport.c — the registry of transports and frames over a connection.
 */
#include "net/transport.h"

const skv_transport_ops *skv_transport_find(const char *name) {
    if (name && !strcmp(name, "tcp")) return &skv_transport_tcp;
    if (name && !strcmp(name, "ucx")) return &skv_transport_ucx;
    skv_set_error(SKV_ERR_ARG, "unknown transport '%s' (tcp or ucx)", name ? name : "(null)");
    return NULL;
}

skv_status skv_frame_send(skv_conn *c, const uint8_t *frame, size_t len) { return c->ops->send(c, frame, len); }

skv_status skv_frame_recv(skv_conn *c, uint64_t max_payload, skv_frame *f, uint8_t **buf) {
    *buf = NULL;
    uint8_t hdr[SKV_FRAME_HDR];
    skv_status st = c->ops->recv(c, hdr, sizeof hdr);
    if (st) return st;
    if ((st = skv_frame_parse_header(hdr, max_payload, f))) return st;
    const size_t n = SKV_FRAME_HDR + (size_t)f->len + SKV_FRAME_TAIL;
    uint8_t *b = malloc(n);
    if (!b) return skv_set_error(SKV_ERR_NOMEM, "out of memory for a %zu-byte frame", n);
    memcpy(b, hdr, sizeof hdr);
    if ((st = c->ops->recv(c, b + SKV_FRAME_HDR, n - SKV_FRAME_HDR)) || (st = skv_frame_check(b, n, max_payload, f))) {
        free(b);
        return st;
    }
    *buf = b;
    return SKV_OK;
}
