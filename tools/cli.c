/*
 * cli.c — the helpers behind cli.h.
 */
#include "cli.h"
#include "eval/eval.h"

#include <errno.h>
#include <lzma.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int g_argc;
static char **g_argv;
int cli_no_check;
int cli_lckv_iters;

void cli_set_argv(int argc, char **argv) {
    g_argc = argc;
    g_argv = argv;
}

void cli_die(const char *cmd, int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "slimkv %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(code);
}

void cli_check(const char *cmd, skv_status st) {
    if (st != SKV_OK) cli_die(cmd, 1, "%s", skv_last_error());
}

void cli_usage(const cli_cmd *cmd, FILE *f) {
    fprintf(f, "usage: slimkv %s %s\n\n%s\n\noptions:\n", cmd->name, cmd->synopsis, cmd->summary);
    for (int i = 0; i < cmd->n_opts; i++) {
        const cli_opt *o = &cmd->opts[i];
        char lhs[64];
        if (o->short_name)
            snprintf(lhs, sizeof lhs, "-%c, --%s%s%s", o->short_name, o->name,
                     o->metavar ? " " : "", o->metavar ? o->metavar : "");
        else
            snprintf(lhs, sizeof lhs, "    --%s%s%s", o->name, o->metavar ? " " : "",
                     o->metavar ? o->metavar : "");
        fprintf(f, "  %-28s %s\n", lhs, o->help);
    }
    fprintf(f, "  %-28s %s\n", "-h, --help", "show this help");
}

static void set_value(const cli_cmd *cmd, const cli_opt *o, const char *flag, const char *v) {
    char *end = NULL;
    errno = 0;
    switch (o->kind) {
    case OPT_STR: *(const char **)o->dst = v; return;
    case OPT_INT: {
        long x = strtol(v, &end, 10);
        if (!*v || *end || errno || x < -2147483647L || x > 2147483647L)
            cli_die(cmd->name, 2, "bad value for %s: '%s' (expected an integer)", flag, v);
        *(int *)o->dst = (int)x;
        return;
    }
    case OPT_U64: {
        unsigned long long x = strtoull(v, &end, 10);
        if (!*v || *end || errno || *v == '-')
            cli_die(cmd->name, 2, "bad value for %s: '%s' (expected a non-negative integer)", flag, v);
        *(uint64_t *)o->dst = x;
        return;
    }
    case OPT_FLOAT: {
        float x = strtof(v, &end);
        if (!*v || *end || errno || !isfinite(x))
            cli_die(cmd->name, 2, "bad value for %s: '%s' (expected a number)", flag, v);
        *(float *)o->dst = x;
        return;
    }
    case OPT_FLAG: *(int *)o->dst = 1; return;
    }
}

void cli_parse(const cli_cmd *cmd, int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            cli_usage(cmd, stdout);
            exit(0);
        }
        const cli_opt *o = NULL;
        const char *inline_val = NULL;
        char flag[64];
        if (a[0] == '-' && a[1] == '-' && a[2]) {
            const char *eq = strchr(a + 2, '=');
            size_t n = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
            for (int k = 0; k < cmd->n_opts && !o; k++)
                if (strlen(cmd->opts[k].name) == n && !strncmp(cmd->opts[k].name, a + 2, n))
                    o = &cmd->opts[k];
            if (eq) inline_val = eq + 1;
            snprintf(flag, sizeof flag, "--%.*s", (int)SKV_CLI_MIN(n, 60), a + 2);
        } else if (a[0] == '-' && a[1] && !a[2]) {
            for (int k = 0; k < cmd->n_opts && !o; k++)
                if (cmd->opts[k].short_name == a[1]) o = &cmd->opts[k];
            snprintf(flag, sizeof flag, "%s", a);
        } else {
            cli_die(cmd->name, 2, "unexpected argument '%s' (see 'slimkv %s --help')", a,
                    cmd->name);
        }
        if (!o) cli_die(cmd->name, 2, "unknown flag '%s' (see 'slimkv %s --help')", a, cmd->name);
        if (o->kind == OPT_FLAG) {
            if (inline_val) cli_die(cmd->name, 2, "flag %s takes no value", flag);
            set_value(cmd, o, flag, NULL);
            continue;
        }
        const char *v = inline_val;
        if (!v) {
            if (i + 1 >= argc) cli_die(cmd->name, 2, "flag %s needs a value (%s)", flag, o->metavar);
            v = argv[++i];
        }
        set_value(cmd, o, flag, v);
    }
}

/* ---------------------------------------------------------------------------------------- */

static char *read_stream(const char *cmd, FILE *f, const char *name, size_t *len) {
    size_t cap = 1 << 16, n = 0, got;
    char *buf = malloc(cap);
    if (!buf) cli_die(cmd, 1, "out of memory reading %s", name);
    while ((got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (n + 1 == cap) {
            cap *= 2;
            char *nb = realloc(buf, cap);
            if (!nb) cli_die(cmd, 1, "out of memory reading %s", name);
            buf = nb;
        }
    }
    if (ferror(f)) cli_die(cmd, 1, "%s: read error", name);
    buf[n] = 0;
    *len = n;
    return buf;
}

static char *xz_decode(const char *cmd, const char *path, const uint8_t *in, size_t in_len,
                       size_t *len) {
    lzma_stream s = LZMA_STREAM_INIT;
    if (lzma_stream_decoder(&s, UINT64_MAX, LZMA_CONCATENATED) != LZMA_OK)
        cli_die(cmd, 1, "%s: cannot start the xz decoder", path);
    size_t cap = in_len * 4 + 1024, n = 0;
    uint8_t *out = malloc(cap);
    s.next_in = in;
    s.avail_in = in_len;
    lzma_ret r;
    do {
        if (cap - n < 1024) {
            cap *= 2;
            out = realloc(out, cap);
            if (!out) cli_die(cmd, 1, "%s: out of memory decompressing", path);
        }
        s.next_out = out + n;
        s.avail_out = cap - n - 1;
        r = lzma_code(&s, LZMA_FINISH);
        n = cap - 1 - s.avail_out;
    } while (r == LZMA_OK);
    lzma_end(&s);
    if (r != LZMA_STREAM_END) cli_die(cmd, 1, "%s: corrupt or truncated xz data", path);
    out[n] = 0;
    *len = n;
    return (char *)out;
}

char *cli_read_text_file(const char *cmd, const char *path, size_t *len) {
    FILE *f = !strcmp(path, "-") ? stdin : fopen(path, "rb");
    if (!f) cli_die(cmd, 1, "%s: cannot open: %s", path, strerror(errno));
    char *data = read_stream(cmd, f, path, len);
    if (f != stdin) fclose(f);
    size_t pl = strlen(path);
    if (*len >= 6 && !memcmp(data, "\xFD" "7zXZ\0", 6)) {
        size_t out_len;
        char *text = xz_decode(cmd, path, (const uint8_t *)data, *len, &out_len);
        free(data);
        *len = out_len;
        return text;
    }
    if (pl > 3 && !strcmp(path + pl - 3, ".xz"))
        cli_die(cmd, 1, "%s: not xz data (bad magic)", path);
    return data;
}

char *cli_read_prompt(const char *cmd, const char *text, const char *file, size_t *len) {
    if (text && file) cli_die(cmd, 2, "give the prompt with -p or -f, not both");
    if (text) {
        *len = strlen(text);
        return strdup(text);
    }
    if (file) return cli_read_text_file(cmd, file, len);
    if (!isatty(0)) return read_stream(cmd, stdin, "standard input", len);
    cli_die(cmd, 2, "no prompt: give -p TEXT, -f FILE, or pipe text to standard input");
}

skv_model *cli_load_model(const char *cmd, const char *dir, int n_threads, int use_mmap) {
    if (!dir) cli_die(cmd, 2, "no model: give -m DIR (a Hugging Face model directory)");
    skv_model_params mp = skv_model_default_params();
    if (n_threads < 0) cli_die(cmd, 2, "bad value for --threads: %d (must be >= 0)", n_threads);
    const long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores > 0 && n_threads > 4 * cores)
        cli_die(cmd, 2, "bad value for --threads: %d (this machine has %ld cores; at most %ld threads, 4 per core, "
                "are accepted)", n_threads, cores, 4 * cores);
    if (cores > 0 && n_threads > cores)
        fprintf(stderr, "slimkv %s: warning: --threads %d is more than the %ld cores of this machine (threads that "
                "share a core slow decode down)\n", cmd, n_threads, cores);
    mp.n_threads = n_threads;
    mp.use_mmap = use_mmap;
    mp.no_check = cli_no_check;
    if (cli_lckv_iters < 0 || cli_lckv_iters > 1000)
        cli_die(cmd, 2, "bad value for --lckv-iters: %d (must be 1..1000)", cli_lckv_iters);
    mp.lckv_iters = cli_lckv_iters;
    skv_model *m = NULL;
    cli_check(cmd, skv_model_load(dir, mp, &m));
    return m;
}

skv_tokenizer *cli_load_tokenizer(const char *cmd, const char *dir) {
    if (!dir) cli_die(cmd, 2, "no model: give -m DIR (a Hugging Face model directory) or -m FILE.gguf");
    char path[4096];
    const size_t dl = strlen(dir);
    if (dl > 5 && !strcmp(dir + dl - 5, ".gguf")) snprintf(path, sizeof path, "%s", dir); /* its own metadata */
    else snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    skv_tokenizer *t = NULL;
    cli_check(cmd, skv_tokenizer_load(path, &t));
    return t;
}

int32_t *cli_tokenize(const char *cmd, skv_tokenizer *tok, const skv_model *m, const char *text, size_t len,
                      size_t *n) {
    int32_t *ids = NULL;
    /* the BOS where the model's file asks for one */
    cli_check(cmd, m ? skv_model_tokenize(m, tok, text, len, &ids, n) : skv_tokenize(tok, text, len, &ids, n));
    if (*n == 0) {
        free(ids);
        cli_die(cmd, 2, "the prompt is empty (no tokens)");
    }
    return ids;
}

void cli_git_commit(char *buf, size_t cap) {
    snprintf(buf, cap, "unknown");
    FILE *p = popen("git rev-parse --short=12 HEAD 2>/dev/null", "r");
    if (!p) return;
    char line[64] = "";
    if (fgets(line, sizeof line, p)) {
        line[strcspn(line, "\n")] = 0;
        if (*line) snprintf(buf, cap, "%s", line);
    }
    pclose(p);
    p = popen("git status --porcelain --untracked-files=no 2>/dev/null | head -1", "r");
    if (p) {
        if (fgets(line, sizeof line, p) && *line) strncat(buf, "-dirty", cap - strlen(buf) - 1);
        pclose(p);
    }
}

void cli_machine(char *buf, size_t cap) {
    char model[256] = "unknown CPU";
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[512];
        while (fgets(line, sizeof line, f)) {
            if (!strncmp(line, "model name", 10)) {
                char *c = strchr(line, ':');
                if (c) {
                    c++;
                    while (*c == ' ') c++;
                    c[strcspn(c, "\n")] = 0;
                    snprintf(model, sizeof model, "%s", c);
                }
                break;
            }
        }
        fclose(f);
    }
    snprintf(buf, cap, "%s, %ld cores", model, sysconf(_SC_NPROCESSORS_ONLN));
}

void cli_command_line(char *buf, size_t cap) {
    buf[0] = 0;
    for (int i = 0; i < g_argc; i++) {
        const char *a = g_argv[i];
        int quote = !*a || strpbrk(a, " \t\n'\"$\\*?;&|<>()") != NULL;
        size_t l = strlen(buf);
        if (l + strlen(a) + 4 >= cap) break;
        snprintf(buf + l, cap - l, "%s%s%s%s", i ? " " : "", quote ? "'" : "", a, quote ? "'" : "");
    }
}

void cli_json_provenance(FILE *f) {
    char commit[64], machine[256], cmdline[4096];
    cli_git_commit(commit, sizeof commit);
    cli_machine(machine, sizeof machine);
    cli_command_line(cmdline, sizeof cmdline);
    fprintf(f, "  \"commit\": \"%s\",\n", commit);
#ifdef SKV_BUILD_COMMIT
    /* the commit the binary was built from (a binary carried to another machine runs in a
     * tree whose git state may differ) */
    fprintf(f, "  \"build_commit\": \"%s\",\n", SKV_BUILD_COMMIT);
#endif
    fprintf(f, "  \"machine\": \"%s\",\n  \"command\": ", machine);
    cli_json_string(f, cmdline, strlen(cmdline));
    fprintf(f, ",\n");
}

void cli_results_dir(const char *cmd, const char *model_dir, char *buf, size_t cap) {
    if (mkdir("results", 0755) != 0 && errno != EEXIST)
        cli_die(cmd, 1, "results: cannot create: %s (give an output path)", strerror(errno));
    char stamp[32];
    time_t now = time(NULL);
    strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", localtime(&now));
    for (int k = 1; k < 1000; k++) {
        if (k == 1) snprintf(buf, cap, "results/%s-%s-%s", cmd, model_dir ? cli_basename(model_dir) : "none", stamp);
        else snprintf(buf, cap, "results/%s-%s-%s-%d", cmd, model_dir ? cli_basename(model_dir) : "none", stamp, k);
        if (mkdir(buf, 0755) == 0) return;
        if (errno != EEXIST) cli_die(cmd, 1, "%s: cannot create: %s (give an output path)", buf, strerror(errno));
    }
    cli_die(cmd, 1, "%s: cannot create a new results folder", buf);
}

const char *cli_bench_out(const char *out, const char *model_dir, char *buf, size_t cap, const char *name_fmt, ...) {
    if (out) return out;
    char rd[1024], name[256];
    va_list ap;
    va_start(ap, name_fmt);
    vsnprintf(name, sizeof name, name_fmt, ap);
    va_end(ap);
    cli_results_dir("bench", model_dir, rd, sizeof rd); /* bench/ only when asked with --out */
    snprintf(buf, cap, "%s/%s", rd, name);
    return buf;
}

void cli_check_writable(const char *cmd, const char *flag, const char *path) {
    struct stat sb;
    const int existed = stat(path, &sb) == 0;
    FILE *f = fopen(path, "a"); /* neither truncates an earlier result nor leaves a file behind */
    if (!f) cli_die(cmd, 1, "bad value for %s: %s: cannot write: %s", flag, path, strerror(errno));
    fclose(f);
    if (!existed) remove(path);
}

FILE *cli_bench_json(const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) cli_die("bench", 1, "%s: cannot write (run from the repository root, or give --out)", path);
    fprintf(f, "{\n");
    cli_json_provenance(f);
    return f;
}

void cli_json_string(FILE *f, const char *s, size_t len) {
    fputc('"', f);
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        switch (ch) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        default:
            if (ch < 0x20) fprintf(f, "\\u%04x", ch);
            else fputc(ch, f);
        }
    }
    fputc('"', f);
}

/* ---------------------------------------------------------------------------------------- */

void cli_policy_options(cli_policy_args *a, cli_opt *opts, int *n) {
    skv_policy_params d = skv_policy_default_params("full");
    *a = (cli_policy_args){.policy = "full", .budget = NAN /* not given */, .budget_tokens = 0, .sinks = d.sinks,
                           .obs_window = d.obs_window, .pool_kernel = d.pool_kernel,
                           .bits = d.quant_bits, .recent_frac = d.recent_frac,
                           .beta = d.pyramid_beta, .kv_format = "f32", .match_len = 128, .sk_score = "acc", .sk_match = "prefix", .sk_split = "2:1:2", .backend = "cpu",
                           .kc_n = "64", .kc_weight = "renorm", .kc_gran = "sum", .kc_store = "mmap",
                           .kc_recent = d.kc_recent, .kc_fast_layers = d.kc_fast_layers, .kc_block = d.kc_block,
                           .mc_t = d.mc_t, .mc_keep = d.mc_keep};
    const cli_opt po[] = {
        {"model", 'm', OPT_STR, &a->dir, "DIR", "Hugging Face model directory"},
        {"threads", 't', OPT_INT, &a->threads, "N", "threads (default: all cores)"},
        {"mmap", 0, OPT_FLAG, &a->use_mmap, NULL, "keep weights in the file mapping (default: copy to huge pages)"},
        {"policy", 0, OPT_STR, &a->policy, "P", "KV policy: full, window, h2o, snapkv, pyramidkv, tova, quant, smallkv, kcache, minicache (default full)"},
        {"backend", 0, OPT_STR, &a->backend, "B", "cpu or cuda (a build with `make CUDA=1` and a GPU; not smallkv) (default cpu)"},
        {"budget", 'b', OPT_FLOAT, &a->budget, "B", "fraction of the prompt's tokens each KV head keeps, in (0, 1] (default 0.2)"},
        {"budget-tokens", 0, OPT_INT, &a->budget_tokens, "N", "or an absolute token count per KV head"},
        {"sinks", 0, OPT_INT, &a->sinks, "N", "window: attention-sink tokens (default 4)"},
        {"recent", 0, OPT_FLOAT, &a->recent_frac, "F", "h2o: share of the budget for recent tokens (default 0.5)"},
        {"obs-window", 0, OPT_INT, &a->obs_window, "N", "snapkv/pyramidkv: observation window (default 32)"},
        {"pool", 0, OPT_INT, &a->pool_kernel, "K", "snapkv/pyramidkv: max-pool width, odd (default 7)"},
        {"beta", 0, OPT_FLOAT, &a->beta, "X", "pyramidkv: top layer budget = budget / X (default 20)"},
        {"bits", 0, OPT_INT, &a->bits, "N", "quant: 8 or 4 (default 4)"},
        {"kv-format", 0, OPT_STR, &a->kv_format, "F", "KV storage for non-quant policies: f32, bf16 or f16; int8/int4 (KIVI) with full or kcache (default f32)"},
        {"draft", 0, OPT_STR, &a->draft, "DIR", "smallkv: the small model of the same family"},
        {"match-len", 0, OPT_INT, &a->match_len, "N", "smallkv: prompt tokens for head matching (default 128)"},
        {"match-k", 0, OPT_INT, &a->match_k, "K", "smallkv: top-K size for matching (default: the critical share)"},
        {"sk-paper", 0, OPT_FLAG, &a->sk_paper, NULL, "smallkv: unnormalised O_c + O_m as in the paper"},
        {"sk-no-marginal", 0, OPT_FLAG, &a->sk_no_marginal, NULL, "smallkv ablation: no marginal tokens"},
        {"sk-static", 0, OPT_FLAG, &a->sk_static, NULL, "smallkv ablation: selection fixed after the first step"},
        {"sk-score", 0, OPT_STR, &a->sk_score, "S", "smallkv token score: acc (all queries, the paper) or window "
                                                     "(last --obs-window prompt queries + decoded ones, --pool) (default acc)"},
        {"sk-split", 0, OPT_STR, &a->sk_split, "C:R:M", "smallkv token ratio critical : recent : marginal (default 2:1:2)"},
        {"sk-match", 0, OPT_STR, &a->sk_match, "M", "smallkv head matching on: prefix (first --match-len tokens, the "
                                                     "paper) or window (the whole prompt's last --obs-window queries) (default prefix)"},
        {"kc-n", 0, OPT_STR, &a->kc_n, "N", "kcache: V rows read per (layer, KV head) and step: a count, or a fraction "
                                             "with a '.' (0.2) (default 64)"},
        {"kc-recent", 0, OPT_INT, &a->kc_recent, "R", "kcache: the newest R tokens' V stay fast (default 32)"},
        {"kc-fast-layers", 0, OPT_INT, &a->kc_fast_layers, "K", "kcache: the first K layers keep all V fast (default 0)"},
        {"kc-weight", 0, OPT_STR, &a->kc_weight, "W", "kcache: renorm (over the rows read) or exact (full softmax) (default renorm)"},
        {"kc-gran", 0, OPT_STR, &a->kc_gran, "G", "kcache: rank by the group's sum, max, or union of each head's top-N (default sum)"},
        {"kc-store", 0, OPT_STR, &a->kc_store, "S", "kcache: slow V store: mmap (a mapped file) or zstd (compressed blocks) (default mmap)"},
        {"mc-groups", 0, OPT_STR, &a->mc_groups, "G", "minicache: groups of cache layers merged, e.g. 5:6,7:8, or gN: groups of N adjacent layers from the top down (default: pairs from the middle layer up)"},
        {"mc-t", 0, OPT_FLOAT, &a->mc_t, "T", "minicache: SLERP parameter of a pair (default 0.5)"},
        {"mc-keep", 0, OPT_FLOAT, &a->mc_keep, "F", "minicache: fraction of tokens left unmerged, the most distinct (default 0.05)"},
        {"mc-bytes", 0, OPT_FLOAT, &a->mc_bytes, "F", "minicache: instead of --mc-keep, leave unmerged as many tokens as store F of the full cache's KV bytes, in (0, 1]"},
        {"lckv-iters", 0, OPT_INT, &cli_lckv_iters, "N", "LCKV models (layer_types): prefill iterations of the condensed group (default: config.json's forward_passes + backward_passes, else 9)"},
        {"kc-block", 0, OPT_INT, &a->kc_block, "B", "kcache: tokens per zstd block, a multiple of 32 (default 32)"},
        {"kc-dir", 0, OPT_STR, &a->kc_dir, "DIR", "kcache: directory of the store's file (default $TMPDIR or /tmp)"},
        {"kc-over", 0, OPT_STR, &a->kc_over, "P", "kcache: evict with policy P first (snapkv, pyramidkv; its --budget)"},
        {"kc-cold", 0, OPT_FLAG, &a->kc_cold, NULL, "kcache: drop the store's page cache before every step (cold reads)"},
    };
    for (size_t i = 0; i < sizeof po / sizeof po[0]; i++) opts[(*n)++] = po[i];
}

/* kcache's flags into p (exit 2 naming the flag on a malformed value). */
static void cli_kcache_params(const char *cmd, const cli_policy_args *a, skv_policy_params *p) {
    char *end;
    if (strchr(a->kc_n, '.')) {
        const float f = strtof(a->kc_n, &end);
        if (*end || !(f > 0)) cli_die(cmd, 2, "bad value for --kc-n: '%s' (a count > 0 or a fraction in (0, 1])", a->kc_n);
        if (f > 1) cli_die(cmd, 2, "bad value for --kc-n: %s (a fraction above 1 reads more rows than the context)", a->kc_n);
        p->kc_n = 0, p->kc_frac = f;
    } else {
        const long n = strtol(a->kc_n, &end, 10);
        if (*end || !*a->kc_n || n <= 0 || n > INT32_MAX)
            cli_die(cmd, 2, "bad value for --kc-n: '%s' (a count > 0 or a fraction in (0, 1])", a->kc_n);
        p->kc_n = (int32_t)n;
    }
    if (!strcmp(a->kc_weight, "renorm")) p->kc_weight = SKV_KC_RENORM;
    else if (!strcmp(a->kc_weight, "exact")) p->kc_weight = SKV_KC_EXACT;
    else cli_die(cmd, 2, "bad value for --kc-weight: '%s' (renorm or exact)", a->kc_weight);
    if (!strcmp(a->kc_gran, "sum")) p->kc_gran = SKV_KC_SUM;
    else if (!strcmp(a->kc_gran, "max")) p->kc_gran = SKV_KC_MAX;
    else if (!strcmp(a->kc_gran, "union")) p->kc_gran = SKV_KC_UNION;
    else cli_die(cmd, 2, "bad value for --kc-gran: '%s' (sum, max or union)", a->kc_gran);
    if (!strcmp(a->kc_store, "mmap")) p->kc_store = SKV_KC_MMAP;
    else if (!strcmp(a->kc_store, "zstd")) p->kc_store = SKV_KC_ZSTD;
    else cli_die(cmd, 2, "bad value for --kc-store: '%s' (mmap or zstd)", a->kc_store);
    if (a->kc_recent < 0) cli_die(cmd, 2, "bad value for --kc-recent: %d (must be >= 0)", a->kc_recent);
    p->kc_recent = a->kc_recent;
    p->kc_fast_layers = a->kc_fast_layers;
    p->kc_block = a->kc_block;
    p->kc_dir = a->kc_dir;
    p->kc_over = a->kc_over;
    p->kc_cold = a->kc_cold;
}

skv_policy_params cli_policy_params(const char *cmd, const cli_policy_args *a, const char *name,
                                    const skv_model *m) {
    skv_policy_params p = skv_policy_default_params(name ? name : a->policy);
    if (!name && (!strcmp(a->policy, "full") || !strcmp(a->policy, "quant") || !strcmp(a->policy, "minicache")) &&
        (!isnan(a->budget) || a->budget_tokens))
        cli_die(cmd, 2, "%s has no effect with --policy %s%s, which keeps every token (give --policy window, h2o, "
                "snapkv or pyramidkv)", isnan(a->budget) ? "--budget-tokens" : "--budget", a->policy,
                strcmp(a->policy, "full") ? "" : " (the default)");
    if (a->budget_tokens < 0) cli_die(cmd, 2, "bad value for --budget-tokens: %d (must be > 0)", a->budget_tokens);
    if (!isnan(a->budget) && a->budget_tokens > 0)
        cli_die(cmd, 2, "give --budget or --budget-tokens, not both");
    if (!isnan(a->budget) && !(a->budget > 0 && a->budget <= 1))
        cli_die(cmd, 2, "bad value for --budget: %g (a fraction in (0, 1]; use --budget-tokens for a count)", a->budget);
    if (a->budget_tokens > 0) {
        p.budget = 0;
        p.budget_tokens = a->budget_tokens;
    } else if (!isnan(a->budget)) {
        p.budget = a->budget;
    }
    p.sinks = a->sinks;
    p.recent_frac = a->recent_frac;
    p.obs_window = a->obs_window;
    p.pool_kernel = a->pool_kernel;
    p.pyramid_beta = a->beta;
    p.quant_bits = a->bits;
    p.mc_groups = a->mc_groups, p.mc_t = a->mc_t, p.mc_keep = a->mc_keep, p.mc_bytes = a->mc_bytes;
    if (!strcmp(p.name, "kcache")) cli_kcache_params(cmd, a, &p);
    if (skv_policy_validate(&p, m) != SKV_OK) cli_die(cmd, 2, "%s", skv_last_error());
    if (!strcmp(p.name, "full") || !strcmp(p.name, "quant") || !strcmp(p.name, "minicache") ||
        (!strcmp(p.name, "kcache") && !p.kc_over))
        p.budget = 0; /* keeps every token */
    return p;
}

skv_backend cli_backend(const char *cmd, const char *name) {
    skv_backend b;
    if (!strcmp(name, "cpu")) b = SKV_BACKEND_CPU;
    else if (!strcmp(name, "cuda")) b = SKV_BACKEND_CUDA;
    else cli_die(cmd, 2, "bad value for --backend: '%s' (cpu or cuda)", name);
    if (!skv_backend_available(b)) cli_die(cmd, 1, "--backend %s: %s", name, skv_last_error());
    return b;
}

skv_kv_format cli_kv_format(const char *cmd, const cli_policy_args *a) {
    if (!strcmp(a->kv_format, "f32")) return SKV_KV_F32;
    if (!strcmp(a->kv_format, "bf16")) return SKV_KV_BF16;
    if (!strcmp(a->kv_format, "f16")) return SKV_KV_F16;
    if (!strcmp(a->kv_format, "int8") || !strcmp(a->kv_format, "int4")) {
        /* KIVI blocks under a policy that keeps every token (blocks are never compacted) */
        if (strcmp(a->policy, "full") && (strcmp(a->policy, "kcache") || (a->kc_over && *a->kc_over)))
            cli_die(cmd, 2, "bad value for --kv-format: '%s' needs --policy full or kcache without --kc-over (or "
                    "--policy quant)", a->kv_format);
        return a->kv_format[3] == '8' ? SKV_KV_Q8 : SKV_KV_Q4;
    }
    cli_die(cmd, 2, "bad value for --kv-format: '%s' (f32, bf16 or f16; int8/int4 with full or kcache)", a->kv_format);
}

skv_smallkv_params cli_smallkv_params(const char *cmd, const cli_policy_args *a, float b, const char *variant) {
    skv_smallkv_params p = skv_smallkv_default_params();
    if (b > 0) p.budget = b;
    else if (!isnan(a->budget)) p.budget = a->budget;
    if (!(p.budget > 0 && p.budget <= 1))
        cli_die(cmd, 2, "bad value for --budget: %g (a fraction in (0, 1])", p.budget);
    if (a->budget_tokens > 0) cli_die(cmd, 2, "smallkv takes --budget as a fraction, not --budget-tokens");
    if (a->match_len < 1) cli_die(cmd, 2, "bad value for --match-len: %d (must be >= 1)", a->match_len);
    if (a->match_k < 0) cli_die(cmd, 2, "bad value for --match-k: %d (must be >= 0)", a->match_k);
    p.match_len = a->match_len;
    p.match_k = a->match_k;
    p.paper = a->sk_paper || !strcmp(variant, "paper");
    p.no_marginal = a->sk_no_marginal || !strcmp(variant, "nomarg");
    p.static_select = a->sk_static || !strcmp(variant, "static");
    if (!strcmp(a->sk_score, "window") || !strcmp(variant, "window")) p.score = SKV_SK_SCORE_WINDOW;
    else if (strcmp(a->sk_score, "acc")) cli_die(cmd, 2, "bad value for --sk-score: '%s' (acc or window)", a->sk_score);
    {
        float c, r, mg;
        char tail;
        if (sscanf(a->sk_split, "%f:%f:%f%c", &c, &r, &mg, &tail) != 3 || !(c >= 0 && r > 0 && mg >= 0))
            cli_die(cmd, 2, "bad value for --sk-split: '%s' (C:R:M, three ratios, R > 0)", a->sk_split);
        p.r_crit = c, p.r_recent = r, p.r_marg = mg;
    }
    if (!strcmp(a->sk_match, "window") || !strcmp(variant, "window")) p.match_window = 1;
    else if (strcmp(a->sk_match, "prefix")) cli_die(cmd, 2, "bad value for --sk-match: '%s' (prefix or window)", a->sk_match);
    if (a->obs_window < 1) cli_die(cmd, 2, "bad value for --obs-window: %d (must be >= 1)", a->obs_window);
    if (a->pool_kernel < 1 || a->pool_kernel % 2 == 0)
        cli_die(cmd, 2, "bad value for --pool: %d (an odd width >= 1)", a->pool_kernel);
    p.obs_window = a->obs_window;
    p.pool = a->pool_kernel;
    return p;
}

void cli_smallkv_config(const char *cmd, const cli_policy_args *a, float b, const char *variant, const char *name,
                        skv_eval_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->smallkv = 1;
    cfg->sk = cli_smallkv_params(cmd, a, b, variant);
    cfg->policy = skv_policy_default_params("full"); /* the contexts SmallKV forks keep everything */
    cfg->policy.name = name;
    cfg->policy.budget = cfg->sk.budget;
}

skv_model *cli_load_draft(const char *cmd, const cli_policy_args *a, const skv_model *m, int threads) {
    if (!a->draft) cli_die(cmd, 2, "smallkv needs --draft DIR (the small model of the same family)");
    skv_model *d = cli_load_model(cmd, a->draft, threads, 0);
    if (skv_model_get_info(d)->n_vocab != skv_model_get_info(m)->n_vocab)
        cli_die(cmd, 2, "--draft %s: vocabulary of %d tokens, the model has %d", a->draft,
                skv_model_get_info(d)->n_vocab, skv_model_get_info(m)->n_vocab);
    return d;
}

skv_augment *cli_load_augment(const char *cmd, const char *dir, const skv_model *m, int threads, const char *backend) {
    (void)backend; /* CUDA: the coprocessor reads a copy of the cache (skv_augment_set_copy) */
    skv_model_params mp = skv_model_default_params();
    mp.n_threads = threads;
    mp.no_check = cli_no_check;
    skv_augment *a = NULL;
    if (skv_augment_load(dir, m, mp, &a)) cli_die(cmd, 1, "--augment %s: %s", dir, skv_last_error());
    return a;
}

const char *cli_basename(const char *dir) {
    const char *b = strrchr(dir, '/');
    return b && b[1] ? b + 1 : dir;
}

int32_t cli_rand_id(uint64_t *state, int32_t V) {
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    return (int32_t)((*state >> 33) % (uint64_t)V);
}

void cli_mean_sd(const double *x, int n, double *mean, double *sd) {
    double s = 0, ss = 0;
    for (int i = 0; i < n; i++) s += x[i];
    *mean = n > 0 ? s / n : 0;
    for (int i = 0; i < n; i++) ss += (x[i] - *mean) * (x[i] - *mean);
    *sd = n > 1 ? sqrt(ss / (n - 1)) : 0;
}
