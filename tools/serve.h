/*
 * serve.h — `slimkv serve`: an OpenAI-compatible HTTP server over the public API.
 *
 *   cmd_serve.c     flags, model and tokenizer, start and stop
 *   serve_http.c    libmicrohttpd: routes, bearer key, body limit, SSE and plain responses
 *   serve_req.c     request JSON -> srv_req, field by field (400 with an OpenAI error object)
 *   serve_resp.c    responses and stream chunks in the OpenAI formats
 *   serve_sched.c   the scheduler thread: queue, admission, chunked prefill, one decode step
 *                   of every active sequence, sampling, stop strings, prefix reuse
 *   serve_slot.c    a slot's KV cache: its own context or a sequence of the shared batched one
 *   serve_text.c    stop strings across token boundaries, log-probabilities
 *   serve_metrics.c counters and histograms, Prometheus text
 *
 * Threads: libmicrohttpd runs one thread per connection; they submit requests and wait on the
 * server's condition variable; the scheduler thread owns every context and sampler. A request
 * is shared by both sides under srv->mu and freed by whichever side lets go last.
 */
#ifndef SKV_SERVE_H
#define SKV_SERVE_H

#include "slimkv.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>

#define SRV_TOP_MAX 20   /* top_logprobs limit (OpenAI's) */
#define SRV_STOP_MAX 4   /* stop strings per request (OpenAI's) */
#define SRV_HIST_N 16    /* histogram buckets */

/* One released token, for logprobs. */
typedef struct srv_tok {
    int32_t id;
    float logprob;
    int32_t off; /* byte offset of its text in the generated text */
    int32_t n_top;
    int32_t top_id[SRV_TOP_MAX];
    float top_lp[SRV_TOP_MAX];
} srv_tok;

typedef struct srv_req {
    /* set by the HTTP side before submission; read-only afterwards */
    int chat, stream, include_usage, logprobs, top_logprobs, ignore_eos;
    int32_t *prompt, n_prompt, max_tokens;
    skv_sampler_params sp;
    char *stop[SRV_STOP_MAX + 1]; /* + the chat template's turn end */
    int n_stop;
    skv_policy_params pol;   /* pol.name points into pol_name */
    char pol_name[32];
    int64_t kv_need;         /* bytes reserved for admission */
    char id[48];
    int64_t created;
    double t_arrive;
    /* shared under srv->mu */
    char *text;              /* released text (stop strings held back, then cut) */
    size_t text_len, text_cap;
    srv_tok *toks;           /* released tokens (when logprobs) */
    int32_t n_toks, cap_toks;
    int32_t n_gen, n_cached; /* tokens generated; prompt tokens reused from the prefix cache */
    int done;
    const char *finish;      /* "stop", "length" or NULL */
    int err_http;            /* an error ended it: HTTP status, message in err */
    char err[256];
    int cancelled;           /* the client went away */
    int refs;                /* holders: the HTTP side and, once submitted, the scheduler */
    int64_t kv_bytes;        /* its cache at the end */
    double t_first;          /* first token released */
    pthread_cond_t cv;       /* signalled (under srv->mu) when it has news: text, tokens, its end */
} srv_req;

typedef struct srv_hist {
    double le[SRV_HIST_N]; /* upper bounds (seconds), the last +Inf */
    int64_t count[SRV_HIST_N];
    double sum;
    int64_t n;
} srv_hist;

/* Where the scheduler thread's time goes (/metrics slimkv_scheduler_seconds_total{phase}):
 * admitting and starting requests, prefill (prompt forwards, and the first token of a prompt
 * that gives its logits), the batched decode forwards (the model, synchronous), per-token host
 * work after them (sampling, log-probabilities, detokenizing, stop strings, handing text to
 * the HTTP threads), and KV accounting. */
enum srv_phase { SRV_PH_START, SRV_PH_PREFILL, SRV_PH_FORWARD, SRV_PH_TOKEN, SRV_PH_ACCOUNT, SRV_PHASES };

typedef struct srv_metrics {
    int64_t requests[4];     /* completions, chat, models/health/metrics, errors */
    int64_t rejected_429, cancelled;
    int64_t tokens_in, tokens_out, prefix_hit_tokens, prefix_lookup_tokens;
    int64_t steps, step_seqs;
    int64_t forward_calls;    /* batched decode calls (one per group with decoding sequences, plus the own contexts' call) */
    double phase_s[SRV_PHASES]; /* scheduler wall time by phase (enum srv_phase) */
    srv_hist ttft, itl;
} srv_metrics;

typedef struct srv_slot srv_slot;

/* CUDA: a context of `parallel` sequences under one KV method; group 0 the full policy
 * (sequence i = slot i, prefix reuse), then one per evicting method requests named, made on
 * first use (sequences handed out lowest first) */
#define SRV_GROUPS 8
typedef struct srv_group {
    skv_context *c;
    skv_policy_params p;
    char name[32];
    unsigned char *used; /* (parallel) sequences taken (evicting groups) */
} srv_group;

typedef struct srv {
    /* configuration */
    const char *model_dir, *model_name, *host, *api_key;
    int port, parallel, queue_cap, prefill_chunk, max_body, body_timeout_s;
    int batch_invariant; /* CUDA: the shared batch context decodes batch-invariantly (--batch-invariant) */
    int32_t n_ctx;
    int64_t kv_mem;          /* bytes all sequences' caches may reserve */
    int64_t kv_tok_bytes;    /* K+V bytes of one token in every cache layer */
    skv_backend backend;
    skv_policy_params def_pol;
    char def_pol_name[32];
    skv_model *model;
    skv_tokenizer *tok;
    skv_chat_family chat_family;
    const skv_model_info *info;
    /* shared state */
    pthread_mutex_t mu;
    pthread_cond_t cv;       /* the scheduler waits for work */
    srv_req **queue;
    int n_queue, running;
    int64_t kv_reserved;
    int n_active;
    int64_t kv_bytes_fast, kv_bytes_slow; /* the caches now (the scheduler updates) */
    srv_metrics met;
    /* the scheduler's own */
    pthread_t sched;
    srv_slot *slots;
    srv_group grp[SRV_GROUPS]; /* CUDA: the batched contexts (serve_slot.c) */
    int n_grp;
    int *rowslot;            /* (parallel) the slot of each row of a group's decode step */
    float *logits;           /* (parallel + 1, n_vocab): by slot, and a scratch row */
    float *mlogits;          /* (parallel, n_vocab) the batched step of own contexts, in call order */
    skv_context **mctx;      /* (parallel) that step's contexts */
    int *mslot;              /* (parallel) and their slots */
    int64_t start_time;
} srv;

/* serve_sched.c */
skv_status srv_sched_start(srv *s);
void srv_sched_stop(srv *s);
/* Queue r (refs taken): 0, or 429 when the queue is full. Under no lock. */
int srv_submit(srv *s, srv_req *r);
/* Drop the HTTP side's reference (marks it cancelled if not done). Under no lock. */
void srv_release(srv *s, srv_req *r);
void srv_req_free(srv_req *r);

/* serve_req.c: parse a request body; 0 or an HTTP status with *err (malloc'd JSON) set. */
int srv_parse(srv *s, const char *body, size_t len, int chat, srv_req **out, char **err);
/* An OpenAI error object as malloc'd JSON. */
char *srv_error_json(const char *type, const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* serve_resp.c (without srv->mu: on a finished request, or a streaming request's copy) */
char *srv_resp_full(const srv *s, const srv_req *r);
/* The chunks of text and tokens released since sent_text and sent_toks (both advanced), and at the end
 * the final chunk, the usage chunk and [DONE]; malloc'd SSE text or NULL when nothing new. */
char *srv_resp_chunks(const srv *s, const srv_req *r, size_t *sent_text, int32_t *sent_toks, int *first,
                      int *finished);
char *srv_models_json(const srv *s);

/* serve_text.c */
/* Given the generated text so far (len bytes, of which `released` already released), the
 * stop strings: where a stop string starts (>= released; *hit = 1), else how far text may be
 * released (the longest suffix that could begin a stop string held back). */
size_t srv_stop_scan(const char *text, size_t len, size_t released, char *const *stop, int n_stop, int *hit);
/* Log-softmax of logits[n] at id, and the k best (ids, logprobs) in descending order. */
float srv_logprobs(const float *logits, int32_t n, int32_t id, int k, int32_t *top_id, float *top_lp);

/* serve_metrics.c */
void srv_hist_init(srv_hist *h, const double *le, int n);
void srv_hist_add(srv_hist *h, double v);
char *srv_metrics_text(srv *s); /* takes srv->mu */

/* serve_http.c */
skv_status srv_http_run(srv *s); /* until SIGINT/SIGTERM */

#endif
