/*
 * sampler.c — next-token selection: greedy, temperature, top-k, top-p (nucleus), repetition
 * penalty, seeded. Order as in transformers' generate: penalty, temperature, top-k, top-p.
 */
#include "internal.h"
#include "sample/sampler.h"

#include <math.h>

typedef struct cand {
    float p;
    int32_t id;
} cand;

struct skv_sampler {
    skv_sampler_params p;
    int32_t n_vocab;
    uint64_t rng;
    int32_t *seen;   /* ring of recent ids (penalty_last_n) or all ids (grows) */
    int64_t n_seen, cap_seen;
    uint8_t *mark;   /* (n_vocab) ids already penalised this step */
    cand *cands;     /* (n_vocab) */
};

skv_sampler_params skv_sampler_default_params(void) {
    skv_sampler_params p = {.temperature = 0.8f, .top_k = 40, .top_p = 0.95f,
                            .repetition_penalty = 1.0f, .penalty_last_n = 64, .seed = 42};
    return p;
}

skv_status skv_sampler_init(skv_sampler_params p, int32_t n_vocab, skv_sampler **out) {
    *out = NULL;
    if (!(p.temperature >= 0) || !isfinite(p.temperature))
        return skv_set_error(SKV_ERR_ARG, "temperature must be >= 0 (got %g)", p.temperature);
    if (p.top_k < 0) return skv_set_error(SKV_ERR_ARG, "top-k must be >= 0 (got %d)", p.top_k);
    if (!(p.top_p > 0 && p.top_p <= 1))
        return skv_set_error(SKV_ERR_ARG, "top-p must be in (0, 1] (got %g)", p.top_p);
    if (!(p.repetition_penalty > 0) || !isfinite(p.repetition_penalty))
        return skv_set_error(SKV_ERR_ARG, "repetition penalty must be > 0 (got %g)",
                             p.repetition_penalty);
    if (p.penalty_last_n < 0)
        return skv_set_error(SKV_ERR_ARG, "penalty window must be >= 0 (got %d)", p.penalty_last_n);
    if (n_vocab <= 0) return skv_set_error(SKV_ERR_ARG, "n_vocab must be > 0");
    skv_sampler *s = calloc(1, sizeof *s);
    if (!s) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    s->p = p;
    s->n_vocab = n_vocab;
    s->rng = p.seed ^ 0x9E3779B97F4A7C15ull;
    s->cap_seen = p.penalty_last_n > 0 ? p.penalty_last_n : 1024;
    s->seen = malloc((size_t)s->cap_seen * sizeof *s->seen);
    s->mark = calloc((size_t)n_vocab, 1);
    s->cands = malloc((size_t)n_vocab * sizeof *s->cands);
    if (!s->seen || !s->mark || !s->cands) {
        skv_sampler_free(s);
        return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    }
    *out = s;
    return SKV_OK;
}

void skv_sampler_free(skv_sampler *s) {
    if (!s) return;
    free(s->seen);
    free(s->mark);
    free(s->cands);
    free(s);
}

void skv_sampler_accept(skv_sampler *s, int32_t id) {
    if (id < 0 || id >= s->n_vocab) return;
    if (s->p.penalty_last_n > 0) {
        s->seen[s->n_seen % s->cap_seen] = id;
        s->n_seen++;
        return;
    }
    if (s->n_seen == s->cap_seen) {
        int32_t *g = realloc(s->seen, (size_t)s->cap_seen * 2 * sizeof *g);
        if (!g) return; /* keep the window we have */
        s->seen = g;
        s->cap_seen *= 2;
    }
    s->seen[s->n_seen++] = id;
}

/* splitmix64 -> uniform [0, 1) */
static double rand_unit(skv_sampler *s) {
    uint64_t z = (s->rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

static int cmp_cand_desc(const void *a, const void *b) {
    float x = ((const cand *)a)->p, y = ((const cand *)b)->p;
    return x < y ? 1 : x > y ? -1 : 0;
}

static void apply_penalty(skv_sampler *s, float *logits) {
    const float pen = s->p.repetition_penalty;
    if (pen == 1.0f || s->n_seen == 0) return;
    int64_t n = s->p.penalty_last_n > 0 ? SKV_MIN(s->n_seen, s->cap_seen) : s->n_seen;
    for (int64_t i = 0; i < n; i++) {
        int32_t id = s->seen[i];
        if (s->mark[id]) continue;
        s->mark[id] = 1;
        logits[id] = logits[id] > 0 ? logits[id] / pen : logits[id] * pen;
    }
    for (int64_t i = 0; i < n; i++) s->mark[s->seen[i]] = 0;
}

int32_t skv_sampler_sample(skv_sampler *s, float *logits) {
    const int32_t V = s->n_vocab;
    apply_penalty(s, logits);
    int32_t best = 0;
    for (int32_t i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (s->p.temperature == 0.0f) return best;

    /* softmax at temperature */
    const float inv_t = 1.0f / s->p.temperature, mx = logits[best];
    double sum = 0;
    for (int32_t i = 0; i < V; i++) {
        float p = expf((logits[i] - mx) * inv_t);
        s->cands[i].p = p;
        s->cands[i].id = i;
        sum += p;
    }
    int32_t n = V;
    /* Candidates that cannot matter for top-p are dropped before sorting (llama2.c's trick):
     * any token with p < (1 - top_p) / (V - 1) cannot be in the nucleus. */
    if (s->p.top_k == 0 && s->p.top_p < 1.0f && V > 1) {
        const float cut = (float)((1.0 - s->p.top_p) / (V - 1) * sum);
        int32_t m = 0;
        for (int32_t i = 0; i < V; i++)
            if (s->cands[i].p >= cut) s->cands[m++] = s->cands[i];
        n = m;
    }
    if (s->p.top_k > 0 || s->p.top_p < 1.0f) {
        qsort(s->cands, (size_t)n, sizeof *s->cands, cmp_cand_desc);
        if (s->p.top_k > 0 && s->p.top_k < n) n = s->p.top_k;
        if (s->p.top_p < 1.0f) {
            /* The nucleus is measured against the whole mass left after top-k: with top-k
             * off that includes the candidates the pre-filter dropped. */
            double tot = 0, acc = 0;
            if (s->p.top_k > 0)
                for (int32_t i = 0; i < n; i++) tot += s->cands[i].p;
            else
                tot = sum;
            int32_t keep = n;
            for (int32_t i = 0; i < n; i++) {
                acc += s->cands[i].p;
                if (acc >= s->p.top_p * tot) {
                    keep = i + 1;
                    break;
                }
            }
            n = keep;
        }
    }
    double tot = 0;
    for (int32_t i = 0; i < n; i++) tot += s->cands[i].p;
    double r = rand_unit(s) * tot, acc = 0;
    for (int32_t i = 0; i < n; i++) {
        acc += s->cands[i].p;
        if (r < acc) return s->cands[i].id;
    }
    return s->cands[n - 1].id;
}

int64_t skv_sampler_history(const skv_sampler *s) {
    return s->p.penalty_last_n > 0 ? SKV_MIN(s->n_seen, s->cap_seen) : s->n_seen;
}

void skv_sampler_args(skv_sampler *s, skv_sample_args *g, int32_t *seen) {
    g->temperature = s->p.temperature;
    g->top_k = s->p.top_k;
    g->top_p = s->p.top_p;
    g->penalty = s->p.repetition_penalty;
    g->u = s->p.temperature == 0.0f ? 0.0 : rand_unit(s);
    g->seen = seen;
    g->n_seen = 0;
    if (s->p.repetition_penalty == 1.0f) return;
    const int64_t n = skv_sampler_history(s);
    for (int64_t i = 0; i < n; i++) {
        const int32_t id = s->seen[i];
        if (s->mark[id]) continue;
        s->mark[id] = 1;
        seen[g->n_seen++] = id;
    }
    for (int32_t i = 0; i < g->n_seen; i++) s->mark[seen[i]] = 0;
}
