/*
 * cmd_scd_net.c — `slimkv scd-producer` and `slimkv scd-consumer`: SCD as two processes over a
 * transport (tcp or ucx, --transport). The consumer listens; per request the producer connects,
 * prefills, streams the method's frames layer by layer (method/scd_pipe.h) and waits for the
 * consumer's RESULT. The consumer checks every frame and builds its context only from a complete
 * request; it then decodes the last prompt token (the first token: TTFT = first token at the
 * consumer - request at the producer, both on CLOCK_MONOTONIC of one host) and the rest greedily.
 * Any bad frame, dropped connection or silent link ends the request with a one-line error and
 * exit status 1 at the consumer; no token is decoded from a bad cache.
 * Fault injection for tests (producer): --fault corrupt:N (flip one payload byte of frame N),
 * die:N (send half of frame N, then exit), version:N (frame N with another version).
 */
#include "scd_common.h"
#include "eval/eval.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void split_addr(const char *cmd, const char *flag, const char *s, char *host, size_t cap, int *port) {
    const char *c = s ? strrchr(s, ':') : NULL;
    char *end;
    if (!c || (size_t)(c - s) >= cap) cli_die(cmd, 2, "bad value for %s: '%s' (HOST:PORT)", flag, s ? s : "");
    memcpy(host, s, (size_t)(c - s));
    host[c - s] = 0;
    const long p = strtol(c + 1, &end, 10);
    if (*end || p < 0 || p > 65535) cli_die(cmd, 2, "bad value for %s: '%s' (port 0..65535)", flag, s);
    *port = (int)p;
}

/* ---------------------------------------------------------------------------------------- */
/* Producer                                                                                  */
/* ---------------------------------------------------------------------------------------- */

typedef struct net_emit {
    skv_conn *conn;
    int fault, fault_frame, frame;
} net_emit;
enum { FAULT_NONE, FAULT_CORRUPT, FAULT_DIE, FAULT_VERSION };

static skv_status net_send(void *arg, const uint8_t *frame, size_t len) {
    net_emit *e = arg;
    const int k = e->frame++;
    if (e->fault && k == e->fault_frame) {
        uint8_t *b = malloc(len);
        memcpy(b, frame, len);
        if (e->fault == FAULT_CORRUPT) b[len > 40 ? SKV_FRAME_HDR + (len - 40) / 2 : len - 1] ^= 0x10;
        if (e->fault == FAULT_VERSION) b[4] ^= 0x02;
        skv_status st = skv_frame_send(e->conn, b, e->fault == FAULT_DIE ? len / 2 : len);
        free(b);
        if (e->fault == FAULT_DIE) {
            fprintf(stderr, "scd-producer: fault injection: exiting after %zu of %zu bytes of frame %d\n", len / 2, len, k);
            _exit(3);
        }
        return st;
    }
    return skv_frame_send(e->conn, frame, len);
}

int cmd_scd_producer(int argc, char **argv) {
    const char *C = "scd-producer";
    const char *dir = NULL, *mpath = NULL, *addr = NULL, *transport = "tcp", *method = "scd", *enc_s = "bf16";
    const char *prompt = NULL, *file = NULL, *tasks = NULL, *task = "dictqa", *patch_layers = NULL, *fault = NULL;
    int threads = 0, keep_last = 1984, row_i = 0, patch_k = -1, rc_start = 0, rc_k = 2, retries = 0, no_stream = 0;
    float timeout = 30;
    const cli_opt opts[] = {
        {"model", 'm', OPT_STR, &dir, "DIR", "producer model directory"},
        {"maps", 0, OPT_STR, &mpath, "FILE", "SCD maps (methods scd and reuse)"},
        {"connect", 'c', OPT_STR, &addr, "HOST:PORT", "the consumer"},
        {"transport", 0, OPT_STR, &transport, "T", "tcp (default) or ucx"},
        {"method", 0, OPT_STR, &method, "M", "scd (default), reuse, raw, kivi4, recompute, oracle"},
        {"code-enc", 0, OPT_STR, &enc_s, "E", "codes on the wire: bf16 (default), int8, f32"},
        {"patch-k", 0, OPT_INT, &patch_k, "K", "scd: top K ranked patch layers (default: the maps' patch_k)"},
        {"patch-layers", 0, OPT_STR, &patch_layers, "LIST", "scd: explicit patch layers"},
        {"rc-start", 0, OPT_INT, &rc_start, "L", "recompute: first layer of the span (default 0)"},
        {"rc-k", 0, OPT_INT, &rc_k, "K", "recompute: layers in the span (default 2)"},
        {"prompt", 'p', OPT_STR, &prompt, "TEXT", "prompt text"},
        {"file", 'f', OPT_STR, &file, "FILE", "prompt file"},
        {"tasks", 0, OPT_STR, &tasks, "FILE", "take the prompt from a task file instead"},
        {"task", 0, OPT_STR, &task, "NAME", "with --tasks: the task (default dictqa)"},
        {"row", 0, OPT_INT, &row_i, "I", "with --tasks: the row index within the task (default 0)"},
        {"keep-last", 0, OPT_INT, &keep_last, "N", "prompt tokens kept from the end (default 1984)"},
        {"timeout", 0, OPT_FLOAT, &timeout, "S", "seconds without progress before giving up (default 30)"},
        {"retries", 0, OPT_INT, &retries, "N", "resend a request the consumer refused, up to N times (default 0)"},
        {"fault", 0, OPT_STR, &fault, "KIND:N", "tests: corrupt:N, die:N or version:N at frame N"},
        {"no-stream", 0, OPT_FLAG, &no_stream, NULL, "prefill first, then send (default: each layer's frames leave "
                                                     "as soon as the prefill has cached it)"},
        {"threads", 't', OPT_INT, &threads, "N", "threads (default: all cores)"},
    };
    const cli_cmd cmd = {"scd-producer", "-m DIR --connect HOST:PORT [--method M] [--maps FILE] (-p TEXT | -f FILE | --tasks F)",
                         "Prefill a prompt and stream it to an scd-consumer as SCD codes or a baseline's frames.",
                         opts, (int)(sizeof opts / sizeof opts[0])};
    cli_parse(&cmd, argc, argv);
    if (!dir || !addr) cli_die(C, 2, "-m and --connect are required");
    char host[256];
    int port;
    split_addr(C, "--connect", addr, host, sizeof host, &port);
    const skv_transport_ops *tr = skv_transport_find(transport);
    if (!tr) cli_die(C, 2, "bad value for --transport: '%s' (tcp or ucx)", transport);
    skv_scd_req req = {.method = skv_scd_method_parse(method), .code_enc = skv_wire_enc_parse(enc_s), .rc_start = rc_start,
                       .rc_k = rc_k};
    if (req.method < 0) cli_die(C, 2, "bad value for --method: '%s'", method);
    if (req.code_enc != SKV_ENC_BF16 && req.code_enc != SKV_ENC_I8ROW && req.code_enc != SKV_ENC_F32)
        cli_die(C, 2, "bad value for --code-enc: '%s' (bf16, int8, f32)", enc_s);
    if (keep_last < 2 || keep_last > 1 << 20) cli_die(C, 2, "bad value for --keep-last: %d", keep_last);
    net_emit em = {0};
    if (fault) {
        int k = -1;
        if (sscanf(fault, "corrupt:%d", &k) == 1) em.fault = FAULT_CORRUPT;
        else if (sscanf(fault, "die:%d", &k) == 1) em.fault = FAULT_DIE;
        else if (sscanf(fault, "version:%d", &k) == 1) em.fault = FAULT_VERSION;
        if (!em.fault || k < 0) cli_die(C, 2, "bad value for --fault: '%s' (corrupt:N, die:N, version:N)", fault);
        em.fault_frame = k;
    }
    skv_tokenizer *tok = cli_load_tokenizer(C, dir);
    skv_model *m = cli_load_model(C, dir, threads, 0);
    skv_scd_maps *maps = NULL;
    if (mpath) cli_check(C, skv_scd_maps_load(mpath, &maps));
    if (req.method == SKV_SCD_FULL) {
        if (!maps) cli_die(C, 2, "--method scd needs --maps");
        scd_patch_set(C, maps, patch_k, patch_layers, &req);
    }
    char *text = NULL;
    if (tasks) {
        skv_task_set ts;
        cli_check(C, skv_tasks_load(tasks, 0, &ts));
        for (int32_t i = 0; i < ts.n && !text; i++)
            if (!strcmp(ts.rows[i].task, task) && ts.rows[i].index == row_i) text = strdup(ts.rows[i].context);
        skv_tasks_free(&ts);
        if (!text) cli_die(C, 1, "%s: no row %d of task %s", tasks, row_i, task);
    } else {
        size_t len;
        text = cli_read_prompt(C, prompt, file, &len);
    }
    for (int attempt = 0;; attempt++) {
        /* the request starts here: tokenize, prefill, encode, send */
        req.t_request = skv_time_now();
        size_t nt;
        int32_t *all = cli_tokenize(C, tok, m, text, strlen(text), &nt);
        const int32_t n_ids = (int32_t)SKV_CLI_MIN(nt, (size_t)keep_last);
        if (n_ids < 2) cli_die(C, 1, "the prompt has %d tokens (at least 2)", n_ids);
        skv_conn *conn;
        cli_check(C, tr->connect(host, port, timeout, &conn));
        em.conn = conn, em.frame = 0;
        skv_scd_prod_stats ps;
        skv_status st = (no_stream ? skv_scd_produce : skv_scd_produce_stream)(m, maps, all + nt - n_ids, n_ids, &req,
                                                                                net_send, &em, &ps);
        const double t_sent = skv_time_now() - req.t_request;
        if (st) fprintf(stderr, "scd-producer: error while sending: %s\n", skv_last_error());
        /* the consumer's answer (also after a failed send: it may say why) */
        skv_frame f;
        uint8_t *buf = NULL;
        if (st) conn->timeout_s = SKV_CLI_MIN(timeout, 5.0f);
        st = skv_frame_recv(conn, 1 << 20, &f, &buf);
        int ok = 0;
        if (!st && f.type == SKV_FT_RESULT && f.enc == SKV_ENC_BYTES) {
            ok = f.len >= 10 && !memcmp(f.payload, "{\"ok\":true", 10);
            printf("{\"method\": \"%s\", \"transport\": \"%s\", \"stream\": %s, \"tokens\": %d, \"bytes\": %llu, \"layer_bytes\": %llu, "
                   "\"frames\": %d, \"t_prefill\": %.6f, \"t_encode\": %.6f, \"t_sent\": %.6f, \"attempt\": %d, \"consumer\": %.*s}\n",
                   method, transport, no_stream ? "false" : "true", n_ids, (unsigned long long)ps.bytes, (unsigned long long)ps.layer_bytes, ps.frames,
                   ps.t_prefill, ps.t_encode, t_sent, attempt, (int)f.len, (const char *)f.payload);
            fflush(stdout);
        } else if (!st) {
            fprintf(stderr, "scd-producer: error: the consumer answered with a %s frame\n", skv_frame_type_name(f.type));
        } else {
            fprintf(stderr, "scd-producer: error: no answer from the consumer: %s\n", skv_last_error());
        }
        free(buf);
        tr->close(conn);
        free(all);
        if (ok) break;
        if (attempt >= retries) {
            free(text);
            return 1;
        }
        fprintf(stderr, "scd-producer: the consumer refused the request; resending (attempt %d of %d)\n", attempt + 2, retries + 1);
        em.fault = FAULT_NONE; /* an injected fault happens once */
    }
    free(text);
    skv_scd_maps_free(maps);
    skv_model_free(m);
    skv_tokenizer_free(tok);
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Consumer                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static void answer(skv_conn *conn, const char *json) {
    const skv_frame f = {.type = SKV_FT_RESULT, .enc = SKV_ENC_BYTES, .layer = -1, .rows = (uint32_t)strlen(json), .cols = 1,
                         .len = strlen(json)};
    uint8_t *b;
    size_t n;
    if (skv_frame_build(&f, json, &b, &n) == SKV_OK) {
        skv_frame_send(conn, b, n); /* best effort: the producer may be gone */
        free(b);
    }
}

/* One request: frames until END (or an error); 0 on success with the result JSON in out. */
static int serve(const char *C, skv_conn *conn, skv_model *m, skv_backend be, const skv_scd_maps *maps, const skv_tokenizer *tok, int max_new,
                 const char *dump, int progress, char *out, size_t cap) {
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = skv_model_get_info(m)->n_ctx;
    cp.backend = be;
    skv_scd_consumer *sc;
    cli_check(C, skv_scd_consumer_init(m, maps, cp, &sc));
    int done = 0, frames = 0;
    skv_status st = SKV_OK;
    double t_first_frame = 0;
    while (!done && !st) {
        skv_frame f;
        uint8_t *buf;
        if (!(st = skv_frame_recv(conn, SCD_MAX_PAYLOAD, &f, &buf))) {
            if (!frames++) t_first_frame = skv_time_now();
            if (progress) fprintf(stderr, "%s: frame %d: %s, layer %d, %llu bytes\n", C, frames, skv_frame_type_name(f.type),
                                  f.layer, (unsigned long long)f.len);
            st = skv_scd_consumer_feed(sc, &f, &done);
            free(buf);
        }
    }
    if (st) {
        char msg[600], js[800];
        snprintf(msg, sizeof msg, "%s", skv_last_error());
        fprintf(stderr, "%s: error: request refused after %d frames: %s\n", C, frames, msg);
        snprintf(js, sizeof js, "{\"ok\":false,\"frames\":%d,\"error\":\"", frames);
        size_t k = strlen(js);
        for (const char *p = msg; *p && k < sizeof js - 4; p++)
            if (*p != '"' && *p != '\\' && (unsigned char)*p >= 32) js[k++] = *p;
        js[k] = 0;
        strcat(js, "\"}");
        answer(conn, js);
        skv_scd_consumer_free(sc);
        return 1;
    }
    const double t_done = skv_time_now();
    skv_context *c = skv_scd_consumer_context(sc);
    const skv_scd_req *req = skv_scd_consumer_req(sc);
    int32_t n_ids;
    const int32_t *ids = skv_scd_consumer_ids(sc, &n_ids);
    if (dump) {
        void *b;
        size_t bl;
        cli_check(C, skv_context_export(c, &b, &bl));
        FILE *f = fopen(dump, "wb");
        if (!f || fwrite(b, 1, bl, f) != bl) cli_die(C, 1, "%s: cannot write the cache", dump);
        fclose(f);
        free(b);
    }
    /* first token, then the rest greedily */
    const int32_t V = skv_model_get_info(m)->n_vocab;
    float *lg = malloc(sizeof(float) * (size_t)V);
    int32_t id = ids[n_ids - 1], gen[256], k = 0;
    cli_check(C, skv_decode(c, &id, 1, lg, 0));
    id = scd_argmax(lg, V);
    const double t_first = skv_time_now();
    while (id != 0 && k < max_new) {
        gen[k++] = id;
        if (k == max_new) break;
        cli_check(C, skv_decode(c, &id, 1, lg, 0));
        id = scd_argmax(lg, V);
    }
    char *text = NULL;
    size_t tl = 0;
    if (k) cli_check(C, skv_detokenize(tok, gen, (size_t)k, &text, &tl));
    int w = snprintf(out, cap, "{\"ok\":true,\"method\":\"%s\",\"tokens\":%d,\"ttft\":%.6f,\"t_first_frame\":%.6f,"
                     "\"t_complete\":%.6f,\"t_build\":%.6f,\"bytes_recv\":%llu,\"first_id\":%d,\"n_gen\":%d,\"text\":\"",
                     skv_scd_method_name(req->method), n_ids, t_first - req->t_request, t_first_frame - req->t_request,
                     t_done - req->t_request, skv_scd_consumer_build_seconds(sc), (unsigned long long)conn->bytes_recv,
                     k ? gen[0] : 0, k);
    for (size_t i = 0; i < tl && (size_t)w < cap - 8; i++) {
        const unsigned char ch = (unsigned char)text[i];
        if (ch == '"' || ch == '\\') out[w++] = '\\', out[w++] = (char)ch;
        else if (ch == '\n') out[w++] = '\\', out[w++] = 'n';
        else if (ch >= 32) out[w++] = (char)ch;
    }
    snprintf(out + w, cap - (size_t)w, "\"}");
    answer(conn, out);
    free(text), free(lg);
    skv_scd_consumer_free(sc);
    return 0;
}

int cmd_scd_consumer(int argc, char **argv) {
    const char *C = "scd-consumer";
    const char *dir = NULL, *mpath = NULL, *addr = "127.0.0.1:0", *transport = "tcp", *port_file = NULL, *dump = NULL;
    const char *backend_s = "cpu";
    int threads = 0, requests = 1, max_new = 16, progress = 0;
    float timeout = 30, accept_timeout = 600;
    const cli_opt opts[] = {
        {"model", 'm', OPT_STR, &dir, "DIR", "consumer model directory"},
        {"maps", 0, OPT_STR, &mpath, "FILE", "SCD maps (methods scd and reuse)"},
        {"listen", 'l', OPT_STR, &addr, "HOST:PORT", "where to listen (default 127.0.0.1:0: any free port)"},
        {"port-file", 0, OPT_STR, &port_file, "FILE", "write the port listened on to FILE once listening"},
        {"transport", 0, OPT_STR, &transport, "T", "tcp (default) or ucx"},
        {"requests", 0, OPT_INT, &requests, "N", "serve N requests, then exit (default 1)"},
        {"max-new", 'n', OPT_INT, &max_new, "N", "tokens generated per request (default 16)"},
        {"timeout", 0, OPT_FLOAT, &timeout, "S", "seconds without progress before a request fails (default 30)"},
        {"accept-timeout", 0, OPT_FLOAT, &accept_timeout, "S", "seconds to wait for each producer (default 600)"},
        {"progress", 0, OPT_FLAG, &progress, NULL, "print a line to stderr for every frame received"},
        {"dump-cache", 0, OPT_STR, &dump, "FILE", "write the rebuilt cache (skv_context_export) before decoding"},
        {"backend", 0, OPT_STR, &backend_s, "B", "cpu (default) or cuda: where the cache is rebuilt (codes decoded "
                                                  "on the GPU) and decoded"},
        {"threads", 't', OPT_INT, &threads, "N", "threads (default: all cores)"},
    };
    const cli_cmd cmd = {"scd-consumer", "-m DIR [--maps FILE] [--listen HOST:PORT] [--transport tcp|ucx]",
                         "Receive SCD requests, rebuild the cache from checked frames, decode without a prefill "
                         "(one JSON line per request on stdout).", opts, (int)(sizeof opts / sizeof opts[0])};
    cli_parse(&cmd, argc, argv);
    if (!dir) cli_die(C, 2, "-m is required");
    if (requests < 1 || max_new < 1 || max_new > 256) cli_die(C, 2, "bad --requests or --max-new (1..256)");
    char host[256];
    int port;
    split_addr(C, "--listen", addr, host, sizeof host, &port);
    const skv_transport_ops *tr = skv_transport_find(transport);
    if (!tr) cli_die(C, 2, "bad value for --transport: '%s' (tcp or ucx)", transport);
    const skv_backend be = cli_backend(C, backend_s);
    skv_tokenizer *tok = cli_load_tokenizer(C, dir);
    skv_model *m = cli_load_model(C, dir, threads, 0);
    skv_scd_maps *maps = NULL;
    if (mpath) cli_check(C, skv_scd_maps_load(mpath, &maps));
    skv_listener *l;
    cli_check(C, tr->listen(host, port, &l));
    fprintf(stderr, "%s: listening on %s:%d (%s)\n", C, host, l->port, transport);
    if (port_file) {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp", port_file);
        FILE *f = fopen(tmp, "w");
        if (!f) cli_die(C, 1, "%s: cannot write", port_file);
        fprintf(f, "%d\n", l->port);
        fclose(f);
        rename(tmp, port_file);
    }
    int rc = 0;
    char *out = malloc(1 << 16);
    for (int r = 0; r < requests; r++) {
        skv_conn *conn;
        skv_status st = tr->accept(l, accept_timeout, &conn);
        if (st) cli_die(C, 1, "%s", skv_last_error());
        conn->timeout_s = timeout;
        if (serve(C, conn, m, be, maps, tok, max_new, dump, progress, out, 1 << 16)) rc = 1;
        else printf("%s\n", out), fflush(stdout);
        tr->close(conn);
    }
    free(out);
    tr->close_listener(l);
    skv_scd_maps_free(maps);
    skv_model_free(m);
    skv_tokenizer_free(tok);
    return rc;
}
