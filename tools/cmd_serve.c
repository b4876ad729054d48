/*
 * cmd_serve.c — `slimkv serve`: flags, model and tokenizer, the scheduler and the HTTP server
 * (serve.h lists the parts), until SIGINT or SIGTERM.
 */
#include "cli.h"
#include "serve.h"

#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int cmd_serve(int argc, char **argv) {
    const char *dir = NULL, *backend = "cpu", *host = "127.0.0.1", *api_key = NULL, *policy = "full", *name = NULL;
    const char *binv = "on";
    int port = 8080, parallel = 4, ctx = 0, queue = 64, max_body = 1 << 20, timeout = 10, chunk = 128, threads = 0;
    int kv_mb = 0;
    float budget = 0.2f;
    cli_opt opts[] = {
        {"model", 'm', OPT_STR, &dir, "DIR", "model directory (Hugging Face format)"},
        {"backend", 0, OPT_STR, &backend, "cpu|cuda", "where the model runs (default cpu)"},
        {"host", 0, OPT_STR, &host, "ADDR", "IPv4 or IPv6 address to listen on (default 127.0.0.1: this machine only; ::1 for IPv6 loopback)"},
        {"port", 0, OPT_INT, &port, "N", "TCP port (default 8080; 0: any free port, printed at start)"},
        {"parallel", 0, OPT_INT, &parallel, "N", "sequences decoded together (slots; default 4)"},
        {"ctx", 'c', OPT_INT, &ctx, "N", "context of each sequence in tokens (default: the model's, at most 8192)"},
        {"api-key", 0, OPT_STR, &api_key, "KEY", "require 'Authorization: Bearer KEY' on /v1/ and /metrics"},
        {"queue", 0, OPT_INT, &queue, "N", "requests waiting for a slot before 429 (default 64)"},
        {"max-body", 0, OPT_INT, &max_body, "BYTES", "largest request body (default 1048576)"},
        {"timeout", 0, OPT_INT, &timeout, "S", "idle connection / slow request body limit in seconds (default 10)"},
        {"prefill-chunk", 0, OPT_INT, &chunk, "N", "prompt tokens prefilled per scheduler step (default 128)"},
        {"kv-mem", 0, OPT_INT, &kv_mb, "MB", "KV cache all sequences may reserve (default: every slot full)"},
        {"policy", 0, OPT_STR, &policy, "NAME", "default KV policy of requests without \"kv\" (default full)"},
        {"budget", 0, OPT_FLOAT, &budget, "F", "the default policy's budget fraction (default 0.2)"},
        {"name", 0, OPT_STR, &name, "NAME", "model id in the API (default: the directory's name)"},
        {"threads", 't', OPT_INT, &threads, "N", "CPU threads (default: all cores)"},
        {"batch-invariant", 0, OPT_STR, &binv, "on|off", "cuda: decode each stream with the same bits whatever else is "
                                                          "batched with it (default on; off: the fastest kernels per batch size)"},
        CLI_OPT_NO_CHECK,
    };
    const cli_cmd cmd = {"serve", "-m DIR [--backend cpu|cuda] [--host ADDR] [--port N] [--parallel N] [--ctx N] "
                                  "[--api-key KEY] [options]",
                         "An OpenAI-compatible HTTP server: /v1/completions, /v1/chat/completions, /v1/models, "
                         "/health, /metrics; streaming, continuous batching, a KV policy per request.",
                         opts, (int)(sizeof opts / sizeof opts[0])};
    cli_parse(&cmd, argc, argv);
    if (!dir) cli_die("serve", 2, "missing -m DIR");
    if (strcmp(backend, "cpu") && strcmp(backend, "cuda"))
        cli_die("serve", 2, "bad value for --backend: %s (cpu or cuda)", backend);
    if (port < 0 || port > 65535) cli_die("serve", 2, "bad value for --port: %d (0..65535)", port);
    if (parallel < 1 || parallel > 1024) cli_die("serve", 2, "bad value for --parallel: %d (1..1024)", parallel);
    if (queue < 0 || queue > 100000) cli_die("serve", 2, "bad value for --queue: %d (0..100000)", queue);
    if (max_body < 1024) cli_die("serve", 2, "bad value for --max-body: %d (>= 1024)", max_body);
    if (timeout < 1) cli_die("serve", 2, "bad value for --timeout: %d (>= 1)", timeout);
    if (chunk < 1) cli_die("serve", 2, "bad value for --prefill-chunk: %d (>= 1)", chunk);
    if (ctx < 0) cli_die("serve", 2, "bad value for --ctx: %d (>= 0)", ctx);
    if (kv_mb < 0) cli_die("serve", 2, "bad value for --kv-mem: %d (>= 0)", kv_mb);
    if (strcmp(binv, "on") && strcmp(binv, "off"))
        cli_die("serve", 2, "bad value for --batch-invariant: %s (on or off)", binv);
    if (api_key && !*api_key) cli_die("serve", 2, "bad value for --api-key: empty");

    /* one thread per connection: without a cap glibc gives each its own malloc arena, and the
     * memory of a burst of connections stays with the process */
    mallopt(M_ARENA_MAX, 2);
    srv *s = calloc(1, sizeof *s);
    s->model_dir = dir, s->host = host, s->api_key = api_key, s->port = port, s->parallel = parallel;
    s->queue_cap = queue, s->max_body = max_body, s->body_timeout_s = timeout, s->prefill_chunk = chunk;
    s->backend = !strcmp(backend, "cuda") ? SKV_BACKEND_CUDA : SKV_BACKEND_CPU;
    s->batch_invariant = !strcmp(binv, "on");
    if (s->backend == SKV_BACKEND_CUDA && !skv_backend_available(SKV_BACKEND_CUDA))
        cli_die("serve", 1, "--backend cuda: %s", skv_last_error());
    if (!name) {
        const char *slash = strrchr(dir, '/');
        while (slash && !slash[1] && slash > dir) { /* a trailing slash */
            const char *p = slash - 1;
            while (p > dir && *p != '/') p--;
            slash = *p == '/' ? p : NULL;
        }
        name = slash ? slash + 1 : dir;
    }
    char *nm = strdup(name);
    char *tr = strchr(nm, '/');
    if (tr) *tr = 0;
    s->model_name = nm;
    s->model = cli_load_model("serve", dir, threads, 0);
    s->tok = cli_load_tokenizer("serve", dir);
    s->info = skv_model_get_info(s->model);
    s->chat_family = skv_chat_detect(skv_model_chat_template(s->model));
    s->n_ctx = ctx ? ctx : (s->info->n_ctx < 8192 ? s->info->n_ctx : 8192);
    if (s->n_ctx < 2) cli_die("serve", 2, "bad value for --ctx: %d (>= 2)", s->n_ctx);
    s->kv_tok_bytes = (int64_t)skv_model_n_cache_layers(s->model) * s->info->n_kv_head * s->info->head_dim * 2 *
                      (s->backend == SKV_BACKEND_CUDA ? 2 : 4);
    s->kv_mem = kv_mb ? (int64_t)kv_mb << 20 : (int64_t)parallel * (s->n_ctx + 64) * s->kv_tok_bytes;
    snprintf(s->def_pol_name, sizeof s->def_pol_name, "%s", policy);
    s->def_pol = skv_policy_default_params(s->def_pol_name);
    s->def_pol.budget = budget;
    if (!strcmp(policy, "smallkv")) cli_die("serve", 2, "--policy smallkv drives two models: not available in serve");
    cli_check("serve", skv_policy_validate(&s->def_pol, s->model));
    s->start_time = (int64_t)time(NULL);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    static const double ttft_le[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
    static const double itl_le[] = {0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5};
    srv_hist_init(&s->met.ttft, ttft_le, (int)(sizeof ttft_le / sizeof ttft_le[0]));
    srv_hist_init(&s->met.itl, itl_le, (int)(sizeof itl_le / sizeof itl_le[0]));
    cli_check("serve", srv_sched_start(s));
    skv_status st = srv_http_run(s);
    skv_tokenizer_free(s->tok);
    skv_model_free(s->model);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(nm);
    free(s);
    return st ? 1 : 0;
}
