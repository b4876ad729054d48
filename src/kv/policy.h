/*
 * policy.h — the KV-cache policy seam: one table of operations per policy, one registry.
 *
 * A policy says which statistics it reads, how its options are checked, how large each cache
 * layer's budget is, how it evicts (a description both backends execute: kv/select.c on the
 * CPU, the compress and step kernels on CUDA), which storage format it wants, and, for
 * policies that steer each decode step's reads (SmallKV; KCache next), how it builds a read
 * plan (kv/plan.h). Each policy lives in its own file (kv/pol_*.c) and is listed once in
 * policy.c's registry; nothing else in the engine names a policy.
 *
 * Adding one: write kv/pol_NAME.c with a `const skv_policy_ops skv_pol_NAME`, add it to the
 * registry in policy.c, and (if it ranks by a statistic no policy collects yet) add the
 * statistic to both backends' statistics modules. docs/architecture.md walks through TOVA.
 */
#ifndef SKV_KV_POLICY_H
#define SKV_KV_POLICY_H

#include "kv/cache.h"
#include "kv/evict.h"
#include "kv/plan.h"

/* Per-slot attention statistics (group-summed over a KV head's query heads), as both
 * backends collect them: */
enum {
    SKV_STAT_ACC = 1,  /* attention accumulated over every query */
    SKV_STAT_WIN = 2,  /* attention of the queries of the observation window (the last
                          obs_window queries of a multi-token call), reset per such call */
    SKV_STAT_LAST = 4, /* attention of the newest query (the last query of the latest call) */
};

/* What validation may check a policy against. */
typedef struct skv_policy_env {
    int32_t head_dim;
    int32_t n_layer;     /* cache layers */
} skv_policy_env;

typedef struct skv_policy_ops {
    const char *name;
    const char *summary;                 /* one line for --help and the docs */
    unsigned stats;                      /* SKV_STAT_* read by evict */
    int32_t driver;                      /* 1: runs two models through its own driver (SmallKV):
                                            not a context policy */
    /* Check options; the message names the option (the CLI prints it as it is). */
    skv_status (*validate)(const skv_policy_params *p, const skv_policy_env *e);
    /* Budget in tokens for one cache layer when n_tokens have been seen; NULL: keeps all. */
    int32_t (*budget)(const skv_policy_params *p, int32_t layer, int32_t n_layer, int32_t n_tokens);
    /* Eviction description; NULL: no eviction. */
    skv_evict_desc (*evict)(const skv_policy_params *p);
    /* Storage format of the cache given the one asked for; NULL: as asked. */
    skv_kv_format (*format)(const skv_policy_params *p, skv_kv_format asked);
    /* Statistics given the options (NULL: `stats`): a policy over another reads the other's. */
    unsigned (*stats_of)(const skv_policy_params *p);
    /* The per-step V top-N rule the context hands the backend in its read plan (NULL: none). */
    skv_vtop_rule (*vtop)(const skv_policy_params *p);
    /* A rewrite of the CPU cache after each multi-token call (NULL: none): MiniCache's merging. */
    skv_status (*transform)(const skv_policy_params *p, skv_cache *c);
} skv_policy_ops;

/* The statistics a policy reads with these options. */
static inline unsigned skv_policy_stats(const skv_policy_ops *o, const skv_policy_params *p) {
    return o->stats_of ? o->stats_of(p) : o->stats;
}

/* The registry: every policy, in help order; NULL-terminated. */
extern const skv_policy_ops *const skv_policy_registry[];
/* The policy of that name (NULL name: "full"), or NULL with an error listing the names. */
const skv_policy_ops *skv_policy_find(const char *name);
/* "full, window, ..." (static buffer). */
const char *skv_policy_names(void);

/* Find and validate in one step. */
skv_status skv_policy_parse(const skv_policy_params *p, const skv_policy_env *e, const skv_policy_ops **ops);

/* The shared budget rule: a fraction of n_tokens (or budget_tokens), at least 1. */
int32_t skv_policy_base_budget(const skv_policy_params *p, int32_t n_tokens);
/* The checks every evicting policy shares (budget in (0, 1] or a count). */
skv_status skv_policy_check_budget(const skv_policy_params *p);
/* ops->budget or, for policies that keep everything, n_tokens. */
int32_t skv_policy_budget(const skv_policy_ops *ops, const skv_policy_params *p, int32_t layer, int32_t n_layer,
                          int32_t n_tokens);

/* A context's policy: its table, parameters, eviction rule and the budgets it set. */
typedef struct skv_policy_state {
    const skv_policy_ops *ops;
    skv_policy_params p;
    skv_evict_desc ev;
    int32_t *budget_now; /* (n_layer) per-head budget in tokens set at the last compression; 0
                            before any */
} skv_policy_state;

/* Selections on plain arrays (n slots; keep[n] out; each keeps min(n, budget) slots), the
 * CPU's execution of skv_evict_desc. score may be NULL for SKV_RANK_POSITION. */
void skv_select(const skv_evict_desc *d, const int32_t *pos, const float *score, int32_t n, int32_t budget,
                uint8_t *keep);
/* The slot a decode step evicts (-1: none eligible); newest: the step's position. */
int32_t skv_select_victim(const skv_evict_desc *d, const int32_t *pos, const float *score, int32_t n,
                          int32_t budget, int32_t newest);
/* The policies' selections by name (what the tests hold against brute force). */
void skv_select_window(const int32_t *pos, int32_t n, int32_t budget, int32_t sinks, uint8_t *keep);
void skv_select_h2o(const int32_t *pos, const float *acc, int32_t n, int32_t budget, float recent_frac,
                    uint8_t *keep);
void skv_select_snapkv(const int32_t *pos, const float *win, int32_t n, int32_t budget, int32_t obs_window,
                       int32_t pool_kernel, uint8_t *keep);
void skv_select_tova(const int32_t *pos, const float *last, int32_t n, int32_t budget, uint8_t *keep);

/* The statistic a rank reads from a stream (NULL for position). */
const float *skv_stream_rank_score(const skv_stream *st, skv_rank r);

/* Apply the policy to every stream after a multi-token call (compress) or after a decode
 * step (step). scratch: at least cap * (sizeof(int32_t) * 2 + sizeof(float) + 1) bytes. */
void skv_policy_compress(skv_policy_state *ps, skv_cache *c, void *scratch);
void skv_policy_step(skv_policy_state *ps, skv_cache *c, void *scratch);

#endif
