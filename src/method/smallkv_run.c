/*
 * smallkv_run.c — the SmallKV driver: a large and a small model side by side (see slimkv.h and
 * ../shared/docs/techniques.md §1). Defaults: GQA selection per KV head by the summed scores of
 * its query heads' matched small-model heads; marginal weights per query head; matching K = the
 * critical share of the budget at the matching length; the large model attends in place by
 * index (on CPU its full cache stays where it is; the "fast tier" is the selected rows). Each
 * step's selection reaches the large model as a read plan (kv/plan.h).
 */
#include "kv/smallkv.h"
#include "context/context.h"

#include <math.h>
#include <omp.h>


skv_smallkv_params skv_smallkv_default_params(void) {
    skv_smallkv_params p = {.budget = 0.2f, .r_crit = 2, .r_recent = 1, .r_marg = 2, .match_len = 128,
                            .match_k = 0, .paper = 0, .no_marginal = 0, .static_select = 0,
                            .score = SKV_SK_SCORE_ACC, .obs_window = 32, .pool = 7,
                            .match_window = 0};
    return p;
}

void skv_smallkv_free(skv_smallkv *s) {
    if (!s) return;
    skv_context_free(s->lc);
    skv_context_free(s->sc);
    free(s->f);
    free(s->cls);
    free(s->pcls);
    free(s->marg);
    free(s->score);
    free(s->fixed);
    free(s);
}

static skv_status check_params(const skv_model_info *li, const skv_model_info *si, skv_smallkv_params p) {
    if (li->n_vocab != si->n_vocab)
        return skv_set_error(SKV_ERR_ARG, "smallkv: the draft model's vocabulary (%d) differs from the "
                             "model's (%d)", si->n_vocab, li->n_vocab);
    if (!(p.budget > 0 && p.budget <= 1))
        return skv_set_error(SKV_ERR_ARG, "smallkv: budget %g is outside (0, 1]", p.budget);
    if (!(p.r_crit >= 0 && p.r_recent > 0 && p.r_marg >= 0))
        return skv_set_error(SKV_ERR_ARG, "smallkv: split ratios must be >= 0 (recent > 0)");
    if (p.match_len < 1 || p.match_k < 0)
        return skv_set_error(SKV_ERR_ARG, "smallkv: match length must be >= 1 and match K >= 0");
    if (p.score != SKV_SK_SCORE_ACC && p.score != SKV_SK_SCORE_WINDOW)
        return skv_set_error(SKV_ERR_ARG, "smallkv: unknown score %d", p.score);
    if ((p.score == SKV_SK_SCORE_WINDOW || p.match_window) && (p.obs_window < 1 || p.pool < 1 || p.pool % 2 == 0))
        return skv_set_error(SKV_ERR_ARG, "smallkv: window score needs obs_window >= 1 and an odd "
                             "pool width >= 1 (got %d, %d)", p.obs_window, p.pool);
    return SKV_OK;
}

/* A driver around two existing contexts (ownership passes to it). */
static skv_status wrap(skv_context *lc, skv_context *sc, skv_smallkv_params p, skv_smallkv **out) {
    *out = NULL;
    const skv_model_info *li = skv_model_get_info(lc->m), *si = skv_model_get_info(sc->m);
    skv_smallkv *s = calloc(1, sizeof *s);
    if (!s) {
        skv_context_free(lc);
        skv_context_free(sc);
        return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    }
    s->p = p;
    s->lc = lc;
    s->sc = sc;
    s->L = li->n_layer, s->H = li->n_head, s->KVH = li->n_kv_head, s->G = li->n_head / li->n_kv_head;
    s->Ls = si->n_layer, s->Hs = si->n_head;
    s->n_ctx = lc->n_ctx;
    s->f = malloc(sizeof(int32_t) * (size_t)(s->L * s->H));
    s->cls = malloc((size_t)s->L * s->KVH * s->n_ctx);
    s->pcls = malloc((size_t)s->L * s->KVH * s->n_ctx);
    s->marg = calloc((size_t)s->L * s->H * s->n_ctx, sizeof(float));
    /* per thread: score, pooled score */
    s->score = malloc(sizeof(float) * 2 * (size_t)s->n_ctx * (size_t)SKV_MAX(lc->n_threads, 1));
    s->fixed = calloc((size_t)s->L * s->KVH * s->n_ctx, 1); /* SKV_SK_SKIP: tokens decoded after the first step */
    if (!s->f || !s->cls || !s->pcls || !s->marg || !s->score || !s->fixed) {
        skv_smallkv_free(s);
        return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    }
    *out = s;
    return SKV_OK;
}

skv_status skv_smallkv_init(skv_model *large, skv_model *small, skv_smallkv_params p, int32_t n_ctx,
                            skv_smallkv **out) {
    *out = NULL;
    const skv_model_info *li = skv_model_get_info(large), *si = skv_model_get_info(small);
    skv_status st = check_params(li, si, p);
    if (st) return st;
    skv_context_params cp = skv_context_default_params();
    cp.n_ctx = SKV_MIN(n_ctx ? n_ctx : li->n_ctx, si->n_ctx);
    cp.collect_head_stats = 1;
    cp.head_prefix = p.match_len;
    skv_context *lc = NULL, *sc = NULL;
    if ((st = skv_context_init(large, cp, &lc))) return st;
    if ((st = skv_context_init(small, cp, &sc))) {
        skv_context_free(lc);
        return st;
    }
    return wrap(lc, sc, p, out);
}

/* Match every large head to a small head on the accumulated attention of the first T tokens
 * (queries and keys < T = match_len, recorded as the prefix statistics), or with match_window
 * on the observation-window attention over the whole prompt (T = prompt length). */
static skv_status match_heads(skv_smallkv *s, int32_t T) {
    const int win = s->p.match_window;
    const int32_t nl = s->L * s->H, ns = s->Ls * s->Hs;
    float *al = malloc(sizeof(float) * (size_t)nl * T), *as = malloc(sizeof(float) * (size_t)ns * T);
    float *tmp = malloc(sizeof(float) * (size_t)s->n_ctx);
    skv_status st = SKV_OK;
    if (!al || !as || !tmp) st = skv_set_error(SKV_ERR_NOMEM, "out of memory");
    for (int32_t i = 0; i < nl && !st; i++) {
        st = win ? skv_context_head_attention_window(s->lc, i / s->H, i % s->H, tmp)
                 : skv_context_head_attention_prefix(s->lc, i / s->H, i % s->H, tmp);
        memcpy(al + (size_t)i * T, tmp, sizeof(float) * (size_t)T);
    }
    for (int32_t j = 0; j < ns && !st; j++) {
        st = win ? skv_context_head_attention_window(s->sc, j / s->Hs, j % s->Hs, tmp)
                 : skv_context_head_attention_prefix(s->sc, j / s->Hs, j % s->Hs, tmp);
        memcpy(as + (size_t)j * T, tmp, sizeof(float) * (size_t)T);
    }
    if (!st) {
        int32_t K = s->p.match_k;
        if (K == 0) {
            /* the critical share of the budget, as a fraction, at the matching length */
            K = (int32_t)lrint((double)s->split.crit / SKV_MAX(s->n_prompt, 1) * T);
            K = SKV_MAX(K, 1);
        }
        float *jac = malloc(sizeof(float) * (size_t)nl * ns);
        skv_smallkv_match(al, nl, as, ns, T, SKV_MIN(K, T), s->f, jac);
        /* matching quality: the paper reports the mean cosine of matched maps (0.947 for
         * Qwen2-0.5B -> 7B) */
        double js = 0, cs = 0;
        for (int32_t i = 0; i < nl; i++) {
            const float *a = al + (size_t)i * T, *b = as + (size_t)s->f[i] * T;
            double ab = 0, aa = 0, bb = 0;
            for (int32_t t = 0; t < T; t++) ab += (double)a[t] * b[t], aa += (double)a[t] * a[t], bb += (double)b[t] * b[t];
            cs += aa > 0 && bb > 0 ? ab / sqrt(aa * bb) : 0;
            if (jac) js += jac[(size_t)i * ns + s->f[i]];
        }
        free(jac);
        s->match_jac = js / nl, s->match_cos = cs / nl;
        s->matched = 1;
        /* the large model's statistics were only for matching: stop paying for them */
        skv_context_drop_head_stats(s->lc);
    }
    free(al);
    free(as);
    free(tmp);
    return st;
}

/* After the prompt: budget split, matching (if the prompt reached match_len), slow tier. */
static skv_status finish_prompt(skv_smallkv *s) {
    const int32_t n = skv_context_n_past(s->lc);
    s->n_prompt = n;
    const int32_t slots = SKV_MAX(1, (int32_t)lrintf(s->p.budget * (float)n));
    s->split = skv_smallkv_budget(slots, s->p.r_crit, s->p.r_recent, s->p.no_marginal ? 0 : s->p.r_marg);
    skv_status st;
    if (s->p.match_window) {
        if (n > 0 && (st = match_heads(s, n))) return st;
    } else if (n >= s->p.match_len && (st = match_heads(s, s->p.match_len))) {
        return st;
    }
    /* the large model's full cache is the slow tier; selected rows are read from it in place */
    return skv_context_move_tier(s->lc, SKV_TIER_SLOW);
}

skv_status skv_smallkv_prefill(skv_smallkv *s, const int32_t *ids, int32_t n, float *logits) {
    if (skv_context_n_past(s->lc) != 0)
        return skv_set_error(SKV_ERR_ARG, "smallkv: prefill on a used context");
    skv_status st;
    if (s->p.score == SKV_SK_SCORE_WINDOW || s->p.match_window) {
        const int32_t from = SKV_MAX(0, n - s->p.obs_window);
        if ((st = skv_context_set_head_window(s->sc, from)) || (st = skv_context_set_head_window(s->lc, from)))
            return st;
    }
    if ((st = skv_decode(s->lc, ids, n, logits, 0)) || (st = skv_decode(s->sc, ids, n, NULL, 0))) return st;
    return finish_prompt(s);
}

skv_status skv_smallkv_fork(const skv_context *large, const skv_context *small, skv_smallkv_params p,
                            skv_smallkv **out) {
    *out = NULL;
    skv_status st = check_params(skv_model_get_info(large->m), skv_model_get_info(small->m), p);
    if (st) return st;
    /* a context shorter than match_len can never match (SmallKV then never evicts): its prefix
     * statistics are clamped to the context */
    const int32_t need = SKV_MIN(p.match_len, large->n_ctx);
    if (skv_context_head_prefix(large) < need || skv_context_head_prefix(small) < SKV_MIN(p.match_len, small->n_ctx) ||
        skv_context_n_past(large) != skv_context_n_past(small))
        return skv_set_error(SKV_ERR_ARG, "smallkv: fork needs two prefilled contexts of the same "
                             "prompt with collect_head_stats and head_prefix >= %d", p.match_len);
    if ((p.score == SKV_SK_SCORE_WINDOW || p.match_window) &&
        (skv_context_head_window_from(small) > skv_context_n_past(small) - 1 ||
         (p.match_window && skv_context_head_window_from(large) > skv_context_n_past(large) - 1)))
        return skv_set_error(SKV_ERR_ARG, "smallkv: the window score needs the small context's head "
                             "window (skv_context_set_head_window) set before its prompt (both contexts' to match on it)");
    const skv_policy_params full = skv_policy_default_params("full");
    skv_context *lc = NULL, *sc = NULL;
    if ((st = skv_context_fork(large, &full, &lc))) return st;
    if ((st = skv_context_fork(small, &full, &sc))) {
        skv_context_free(lc);
        return st;
    }
    skv_smallkv *s;
    if ((st = wrap(lc, sc, p, &s))) return st;
    if ((st = finish_prompt(s))) {
        skv_smallkv_free(s);
        return st;
    }
    *out = s;
    return SKV_OK;
}

/* Classes and marginal weights for a step whose query sits at position T - 1. */
static skv_status build_plan(skv_smallkv *s, int32_t T) {
    const int32_t hd = s->lc->m->cfg.info.head_dim;
    int64_t fast = 0;
    int bad = 0;
    /* the (layer, KV head) streams are independent: one thread each at a time */
#pragma omp parallel for schedule(dynamic, 1) num_threads(s->lc->n_threads) reduction(+ : fast)
    for (int32_t k = 0; k < s->L * s->KVH; k++) {
        const int32_t l = k / s->KVH, g = k % s->KVH;
        float *score = s->score + (size_t)omp_get_thread_num() * 2 * (size_t)s->n_ctx;
        uint8_t *cls = s->cls + ((int64_t)l * s->KVH + g) * s->n_ctx;
        uint8_t *fx = s->fixed + ((int64_t)l * s->KVH + g) * s->n_ctx;
        if (s->p.static_select && s->fixed_set) {
            /* sets fixed at the first step; the window slides; tokens that leave it are gone */
            const int32_t recent = SKV_MIN(s->split.recent, T);
            for (int32_t t = 0; t < T; t++)
                cls[t] = t >= T - recent ? SKV_SK_RECENT
                         : (t < T - 1 && (fx[t] == SKV_SK_CRIT || fx[t] == SKV_SK_MARG)) ? fx[t]
                                                                                         : SKV_SK_SKIP;
        } else {
            /* the small model's accumulated attention of each matched head, read in place:
             * head_acc is (Ls * Hs, n_ctx), indexed by the global head number */
            const int win = s->p.score == SKV_SK_SCORE_WINDOW;
            memset(score, 0, sizeof(float) * (size_t)T);
            for (int32_t j = 0; j < s->G; j++) {
                const int32_t fs = s->f[l * s->H + g * s->G + j];
                const float *acc = skv_context_head_row(s->sc, win ? SKV_HEAD_WIN : SKV_HEAD_ACC, fs / s->Hs, fs % s->Hs);
                if (!acc) {
#pragma omp atomic write
                    bad = 1;
                    break;
                }
                for (int32_t t = 0; t < T; t++) score[t] += acc[t];
            }
            const float *sc = score;
            if (win && s->p.pool > 1) {
                skv_smallkv_maxpool(score, T, s->p.pool, score + s->n_ctx);
                sc = score + s->n_ctx;
            }
            skv_smallkv_select(sc, T, s->split, cls);
            if (s->p.static_select) memcpy(fx, cls, (size_t)T);
        }
        uint8_t *pc = s->pcls + ((int64_t)l * s->KVH + g) * s->n_ctx;
        for (int32_t t = 0; t < T; t++)
            pc[t] = cls[t] == SKV_SK_CRIT || cls[t] == SKV_SK_RECENT ? SKV_READ_OWN
                    : cls[t] == SKV_SK_MARG                         ? SKV_READ_VONLY
                                                                    : SKV_READ_SKIP;
        for (int32_t t = 0; t < T; t++)
            fast += cls[t] == SKV_SK_CRIT || cls[t] == SKV_SK_RECENT ? 2 * hd * 4 : cls[t] == SKV_SK_MARG ? hd * 4 : 0;
        /* marginal weights: the matched small head's attention at this step (none to weigh
         * without marginal tokens) */
        for (int32_t j = 0; j < s->G && s->split.marg > 0; j++) {
            const int32_t h = g * s->G + j, fs = s->f[l * s->H + h];
            if (skv_context_head_attention(s->sc, fs / s->Hs, fs % s->Hs, NULL,
                                           s->marg + ((int64_t)l * s->H + h) * s->n_ctx)) {
#pragma omp atomic write
                bad = 1;
            }
        }
    }
    if (s->p.static_select) s->fixed_set = 1;
    s->fast_bytes = fast;
    return bad ? skv_set_error(SKV_ERR_ARG, "smallkv: a matched small-model head is out of range") : SKV_OK;
}

skv_status skv_smallkv_decode(skv_smallkv *s, int32_t id, float *logits) {
    skv_status st;
    /* small model first: its attention of this step and its accumulated scores */
    if ((st = skv_decode(s->sc, &id, 1, NULL, 0))) return st;
    const int32_t T = skv_context_n_past(s->sc); /* keys including this token */
    if (!s->matched && !s->p.match_window && T - 1 >= s->p.match_len && (st = match_heads(s, s->p.match_len))) return st;
    if (s->matched) {
        if ((st = build_plan(s, T))) return st;
        const skv_read_plan plan = {.cls = s->pcls, .vweight = s->marg, .stride = s->n_ctx,
                                    .combine = s->p.paper ? SKV_PLAN_SUM : SKV_PLAN_MASS};
        if ((st = skv_context_set_plan(s->lc, &plan))) return st;
    }
    st = skv_decode(s->lc, &id, 1, logits, 0);
    skv_context_set_plan(s->lc, NULL);
    return st;
}

void skv_smallkv_get_usage(const skv_smallkv *s, skv_smallkv_usage *u) {
    skv_kv_usage lu, su;
    skv_context_kv_usage(s->lc, &lu);
    skv_context_kv_usage(s->sc, &su);
    /* before matching every row is attended: the whole cache counts */
    u->fast_bytes = s->matched ? s->fast_bytes : lu.bytes;
    u->slow_bytes = lu.bytes_slow;
    u->draft_kv_bytes = su.bytes;
    u->draft_weight_bytes = skv_model_get_info(skv_context_model(s->sc))->weight_bytes;
}

const int32_t *skv_smallkv_head_map(const skv_smallkv *s) { return s->matched ? s->f : NULL; }

skv_status skv_smallkv_match_quality(const skv_smallkv *s, double *jaccard, double *cosine) {
    if (!s->matched) return skv_set_error(SKV_ERR_ARG, "smallkv: heads are not matched yet");
    if (jaccard) *jaccard = s->match_jac;
    if (cosine) *cosine = s->match_cos;
    return SKV_OK;
}
