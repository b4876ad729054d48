/*
 * serve_metrics.c — the server's counters and latency histograms as Prometheus text.
 */
#include "serve.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

void srv_hist_init(srv_hist *h, const double *le, int n) {
    memset(h, 0, sizeof *h);
    for (int i = 0; i < SRV_HIST_N; i++) h->le[i] = i < n && i < SRV_HIST_N - 1 ? le[i] : 1e300;
}

void srv_hist_add(srv_hist *h, double v) {
    for (int i = 0; i < SRV_HIST_N; i++)
        if (v <= h->le[i]) {
            h->count[i]++;
            break;
        }
    h->sum += v;
    h->n++;
}

typedef struct tbuf {
    char *p;
    size_t n, cap;
} tbuf;

static void tb_printf(tbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tb_printf(tbuf *b, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int w = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (w < 0) return;
        if (b->p && b->n + (size_t)w < b->cap) {
            b->n += (size_t)w;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->n + (size_t)w + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return;
        b->p = p;
        b->cap = cap;
    }
}

static void hist(tbuf *b, const char *name, const char *help, const srv_hist *h) {
    tb_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    int64_t cum = 0;
    for (int i = 0; i < SRV_HIST_N; i++) {
        cum += h->count[i];
        if (h->le[i] >= 1e300) tb_printf(b, "%s_bucket{le=\"+Inf\"} %lld\n", name, (long long)cum);
        else tb_printf(b, "%s_bucket{le=\"%g\"} %lld\n", name, h->le[i], (long long)cum);
    }
    tb_printf(b, "%s_sum %.6f\n%s_count %lld\n", name, h->sum, name, (long long)h->n);
}

static void counter(tbuf *b, const char *name, const char *type, const char *help, const char *labels, int64_t v) {
    if (help) tb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
    tb_printf(b, "%s%s %lld\n", name, labels ? labels : "", (long long)v);
}

char *srv_metrics_text(srv *s) {
    pthread_mutex_lock(&s->mu);
    const srv_metrics m = s->met;
    const int64_t queue = s->n_queue, active = s->n_active, reserved = s->kv_reserved;
    const int64_t fast = s->kv_bytes_fast, slow = s->kv_bytes_slow;
    pthread_mutex_unlock(&s->mu);
    tbuf b = {0};
    counter(&b, "slimkv_requests_total", "counter", "HTTP requests by endpoint kind", "{kind=\"completions\"}",
            m.requests[0]);
    counter(&b, "slimkv_requests_total", "", NULL, "{kind=\"chat\"}", m.requests[1]);
    counter(&b, "slimkv_requests_total", "", NULL, "{kind=\"other\"}", m.requests[2]);
    counter(&b, "slimkv_requests_total", "", NULL, "{kind=\"error\"}", m.requests[3]);
    counter(&b, "slimkv_requests_rejected_total", "counter", "requests answered 429 (queue full)", NULL,
            m.rejected_429);
    counter(&b, "slimkv_requests_cancelled_total", "counter", "requests whose client went away", NULL, m.cancelled);
    counter(&b, "slimkv_prompt_tokens_total", "counter", "prompt tokens admitted", NULL, m.tokens_in);
    counter(&b, "slimkv_generated_tokens_total", "counter", "tokens generated", NULL, m.tokens_out);
    counter(&b, "slimkv_prefix_cache_hit_tokens_total", "counter", "prompt tokens whose KV was reused", NULL,
            m.prefix_hit_tokens);
    counter(&b, "slimkv_prefix_cache_lookup_tokens_total", "counter",
            "prompt tokens looked up in the prefix cache (hit rate = hit / lookup)", NULL, m.prefix_lookup_tokens);
    tb_printf(&b, "# HELP slimkv_prefix_cache_hit_rate reused / looked-up prompt tokens\n"
                  "# TYPE slimkv_prefix_cache_hit_rate gauge\nslimkv_prefix_cache_hit_rate %.6f\n",
              m.prefix_lookup_tokens ? (double)m.prefix_hit_tokens / (double)m.prefix_lookup_tokens : 0.0);
    counter(&b, "slimkv_decode_steps_total", "counter", "scheduler decode steps", NULL, m.steps);
    counter(&b, "slimkv_decode_step_sequences_total", "counter", "sequences summed over decode steps", NULL,
            m.step_seqs);
    counter(&b, "slimkv_decode_forward_calls_total", "counter",
            "batched decode forwards (one per group of sequences sharing a context and KV method, per step)", NULL,
            m.forward_calls);
    static const char *const phase[SRV_PHASES] = {"start", "prefill", "forward", "token", "account"};
    tb_printf(&b, "# HELP slimkv_scheduler_seconds_total scheduler thread time by phase: start (admission), prefill "
                  "(prompt forwards), forward (batched decode forwards), token (sampling, detokenizing, stop strings, "
                  "streaming hand-off), account (KV bytes)\n# TYPE slimkv_scheduler_seconds_total counter\n");
    for (int k = 0; k < SRV_PHASES; k++)
        tb_printf(&b, "slimkv_scheduler_seconds_total{phase=\"%s\"} %.6f\n", phase[k], m.phase_s[k]);
    counter(&b, "slimkv_queue_depth", "gauge", "requests waiting for a slot", NULL, queue);
    counter(&b, "slimkv_active_sequences", "gauge", "sequences holding a slot", NULL, active);
    counter(&b, "slimkv_kv_reserved_bytes", "gauge", "KV bytes reserved by admitted requests", NULL, reserved);
    counter(&b, "slimkv_kv_bytes", "gauge", "KV cache bytes held now, by tier", "{tier=\"fast\"}", fast);
    counter(&b, "slimkv_kv_bytes", "", NULL, "{tier=\"slow\"}", slow);
    hist(&b, "slimkv_time_to_first_token_seconds", "request arrival to its first token", &m.ttft);
    hist(&b, "slimkv_inter_token_latency_seconds", "time between a request's successive tokens", &m.itl);
    return b.p;
}
