/*
 * http_client.c — see http_client.h.
 */
#include "http_client.h"
#include "harness.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

static int g_v6;
void http_use_ipv6(int on) { g_v6 = on; }

int http_send(int port, const char *method, const char *path, const char *extra, const char *body, size_t body_len) {
    int fd = socket(g_v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct timeval tv = {.tv_sec = 120};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port), .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    if (g_v6 ? connect(fd, (struct sockaddr *)&a6, sizeof a6) : connect(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        return -1;
    }
    char head[1024];
    int n = snprintf(head, sizeof head,
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n%s%s%s", method, path, port,
                     extra ? extra : "", body ? "Content-Type: application/json\r\n" : "", "");
    if (body) n += snprintf(head + n, sizeof head - (size_t)n, "Content-Length: %zu\r\n", body_len);
    n += snprintf(head + n, sizeof head - (size_t)n, "\r\n");
    if (send(fd, head, (size_t)n, MSG_NOSIGNAL) != n) {
        close(fd);
        return -1;
    }
    for (size_t off = 0; body && off < body_len;) {
        ssize_t w = send(fd, body + off, body_len - off, MSG_NOSIGNAL);
        if (w <= 0) {
            close(fd);
            return -1;
        }
        off += (size_t)w;
    }
    return fd;
}

/* Decode a chunked body in place; returns its length. */
static size_t unchunk(char *b, size_t len) {
    size_t in = 0, out = 0;
    while (in < len) {
        char *end;
        unsigned long n = strtoul(b + in, &end, 16);
        char *eol = strstr(b + in, "\r\n");
        if (!eol || end == b + in) break;
        in = (size_t)(eol - b) + 2;
        if (n == 0 || in + n > len) break;
        memmove(b + out, b + in, n);
        out += n;
        in += n + 2;
    }
    b[out] = 0;
    return out;
}

int http_read(int fd, hresp *r) {
    memset(r, 0, sizeof *r);
    r->status = -1;
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (len + 4096 > cap) buf = realloc(buf, cap *= 2);
        ssize_t n = recv(fd, buf + len, cap - len - 1, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = 0;
    char *sep = strstr(buf, "\r\n\r\n");
    if (len < 12 || !sep || strncmp(buf, "HTTP/1.", 7)) {
        free(buf);
        return -1;
    }
    r->status = atoi(buf + 9);
    r->headers = strndup(buf, (size_t)(sep - buf) + 2);
    const size_t blen = len - (size_t)(sep + 4 - buf);
    r->body = malloc(blen + 1);
    memcpy(r->body, sep + 4, blen);
    r->body[blen] = 0;
    r->len = blen;
    char v[64];
    if (hresp_header(r, "Transfer-Encoding", v, sizeof v) && strstr(v, "chunked")) r->len = unchunk(r->body, blen);
    free(buf);
    return 0;
}

int http_do(int port, const char *method, const char *path, const char *extra, const char *body, hresp *r) {
    int fd = http_send(port, method, path, extra, body, body ? strlen(body) : 0);
    if (fd < 0) {
        memset(r, 0, sizeof *r);
        r->status = -1;
        return -1;
    }
    return http_read(fd, r);
}

void hresp_free(hresp *r) {
    free(r->headers);
    free(r->body);
    memset(r, 0, sizeof *r);
}

const char *hresp_header(const hresp *r, const char *name, char *buf, size_t cap) {
    const size_t nl = strlen(name);
    for (const char *p = r->headers; p && *p; p = strstr(p, "\r\n") ? strstr(p, "\r\n") + 2 : NULL) {
        if (!strncasecmp(p, name, nl) && p[nl] == ':') {
            p += nl + 1;
            while (*p == ' ') p++;
            size_t n = strcspn(p, "\r\n");
            if (n >= cap) n = cap - 1;
            memcpy(buf, p, n);
            buf[n] = 0;
            return buf;
        }
    }
    return NULL;
}

int srv_start(srv_proc *p, const char *model_dir, const char *args, char *err, size_t cap) {
    memset(p, 0, sizeof *p);
    p->port = -1;
    static int count;
    snprintf(p->log, sizeof p->log, "%s/serve-%d.log", skv_test_tmpdir(), count++);
    int pfd[2];
    if (pipe(pfd)) {
        snprintf(err, cap, "pipe: %s", strerror(errno));
        return -1;
    }
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "OMP_WAIT_POLICY=passive exec %s serve -m %s --port 0 %s 2>%s", skv_test_cli(),
             model_dir, args ? args : "", p->log);
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, cap, "fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        dup2(pfd[1], 1);
        close(pfd[0]);
        close(pfd[1]);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    p->pid = pid;
    char line[512];
    size_t n = 0;
    struct pollfd pf = {.fd = pfd[0], .events = POLLIN};
    while (n < sizeof line - 1 && poll(&pf, 1, 60000) > 0) {
        ssize_t k = read(pfd[0], line + n, 1);
        if (k <= 0) break;
        if (line[n++] == '\n') break;
    }
    line[n] = 0;
    close(pfd[0]);
    const char *at = strstr(line, "127.0.0.1:"), *at6 = strstr(line, "[::1]:");
    const char *port_s = at ? at + 10 : at6 ? at6 + 6 : NULL;
    if (!port_s) {
        char *log = NULL;
        char c2[600];
        snprintf(c2, sizeof c2, "cat %s", p->log);
        skv_test_sh(c2, &log, NULL);
        snprintf(err, cap, "the server did not start: [%s] %s", line, log ? log : "");
        free(log);
        srv_stop(p);
        return -1;
    }
    p->port = atoi(port_s);
    return p->port;
}

int srv_stop(srv_proc *p) {
    if (p->pid <= 0) return -1;
    kill(p->pid, SIGTERM);
    int status = 0;
    for (int i = 0; i < 300; i++) { /* up to 30 s */
        pid_t w = waitpid(p->pid, &status, WNOHANG);
        if (w == p->pid) {
            p->pid = 0;
            return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        }
        usleep(100000);
    }
    kill(p->pid, SIGKILL);
    waitpid(p->pid, &status, 0);
    p->pid = 0;
    return -1;
}

long proc_rss_kb(pid_t pid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) kb = atol(line + 6);
    fclose(f);
    return kb;
}
