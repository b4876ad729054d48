/*
 * runner.c — one task row under several KV policies: tokenize, keep the last keep_last tokens,
 * prefill once with the full cache (gathering every policy's statistics), then for each policy
 * fork the cache, generate greedily and score. KL(full || policy) at each generated position
 * compares with the full cache on the same prefix: the full run's own distributions while the
 * two generations agree, a full-cache context advanced along the policy's tokens after that.
 */
#include "eval/eval.h"

#include "internal.h"

#include <math.h>

skv_eval_opts skv_eval_default_opts(void) {
    skv_eval_opts o = {.keep_last = 1984, .max_new = 48, .eos = 0, .kl = 1, .kv_format = SKV_KV_F32,
                       .early_stop = 0};
    return o;
}

static int32_t argmax(const float *x, int32_t n) {
    int32_t b = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* out[n] = log_softmax(x) */
static void log_softmax(const float *x, int32_t n, float *out) {
    float mx = x[0];
    for (int32_t i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    double s = 0;
    for (int32_t i = 0; i < n; i++) s += exp((double)x[i] - mx);
    const float lse = mx + (float)log(s);
    for (int32_t i = 0; i < n; i++) out[i] = x[i] - lse;
}

static double kl_div(const float *lp_full, const float *lp_pol, int32_t n) {
    double kl = 0;
    for (int32_t i = 0; i < n; i++) {
        double p = exp((double)lp_full[i]);
        if (p > 0) kl += p * ((double)lp_full[i] - (double)lp_pol[i]);
    }
    return kl > 0 ? kl : 0;
}

/* With early_stop: is the row's score fixed by gen[0..n)? */
static skv_status score_fixed(const skv_tokenizer *tok, const skv_task_row *row, const int32_t *gen,
                              int32_t n, int *fixed) {
    char *text = NULL;
    size_t tl = 0;
    skv_status st = skv_detokenize(tok, gen, (size_t)n, &text, &tl);
    if (st) return st;
    *fixed = skv_task_score_final(row->task, text, row->answer);
    free(text);
    return SKV_OK;
}

/* Generate greedily from ctx starting with logits lg; with lp_out, store every step's
 * log-probabilities (max_new x V). Returns the count of generated ids (EOS excluded). */
static skv_status generate(skv_context *ctx, float *lg, const skv_eval_opts *o, int32_t V,
                           const skv_tokenizer *tok, const skv_task_row *row, int32_t *gen,
                           int32_t *n_gen, float *lp_out) {
    *n_gen = 0;
    for (int32_t t = 0; t < o->max_new; t++) {
        if (lp_out) log_softmax(lg, V, lp_out + (size_t)t * V);
        int32_t id = argmax(lg, V);
        if (id == o->eos) break;
        gen[(*n_gen)++] = id;
        if (t + 1 == o->max_new) break;
        if (o->early_stop) {
            int fixed = 0;
            skv_status st = score_fixed(tok, row, gen, *n_gen, &fixed);
            if (st) return st;
            if (fixed) break;
        }
        skv_status st = skv_decode(ctx, &id, 1, lg, 0);
        if (st) return st;
    }
    return SKV_OK;
}

typedef struct shadow {
    skv_context *ctx;  /* full cache, prompt + held[0..n_held) */
    int32_t prompt_n;
    int32_t held[64], n_held;
} shadow;

/* Full-cache log-probabilities after prompt + prefix[0..t) into lp (t >= 1). */
static skv_status shadow_logprobs(shadow *sh, const int32_t *prefix, int32_t t, float *lg, float *lp,
                                  int32_t V) {
    int32_t common = 0;
    while (common < sh->n_held && common < t && sh->held[common] == prefix[common]) common++;
    if (common == t) common = t - 1; /* its logits were not kept: recompute the last step */
    skv_status st = skv_context_truncate(sh->ctx, sh->prompt_n + common);
    if (st) return st;
    sh->n_held = common;
    for (int32_t i = common; i < t; i++) {
        if ((st = skv_decode(sh->ctx, &prefix[i], 1, lg, 0))) return st;
        sh->held[sh->n_held++] = prefix[i];
    }
    log_softmax(lg, V, lp);
    return SKV_OK;
}

skv_status skv_eval_prompt(const skv_model *m, const skv_tokenizer *tok, const skv_task_row *row, int32_t keep_last,
                           int32_t **ids, int32_t *n) {
    size_t n_ids = 0;
    *n = 0;
    if (keep_last < 2) return skv_set_error(SKV_ERR_ARG, "keep_last %d: must be >= 2", keep_last);
    skv_status st = skv_model_tokenize(m, tok, row->context, strlen(row->context), ids, &n_ids);
    if (st) return st;
    const skv_model_info *in = skv_model_get_info(m);
    const int bos = in->add_bos && n_ids > 0 && (*ids)[0] == in->bos_id; /* kept in front */
    if (n_ids <= (size_t)bos) {
        free(*ids);
        *ids = NULL;
        return skv_set_error(SKV_ERR_ARG, "task line %d: empty context", row->line);
    }
    if (n_ids > (size_t)keep_last) {
        const size_t keep = (size_t)keep_last - (size_t)bos;
        memmove(*ids + bos, *ids + n_ids - keep, sizeof **ids * keep);
        n_ids = (size_t)keep_last;
    }
    *n = (int32_t)n_ids;
    return SKV_OK;
}

skv_status skv_eval_row(skv_model *m, const skv_tokenizer *tok, const skv_task_row *row,
                        const skv_eval_config *cfgs, int32_t n, const skv_eval_opts *o,
                        skv_eval_result *res, int32_t *prompt_tokens) {
    const int32_t V = skv_model_get_info(m)->n_vocab;
    int32_t *ids = NULL, np = 0;
    skv_status st = skv_eval_prompt(m, tok, row, o->keep_last, &ids, &np);
    if (st) return st;
    const int32_t *p = ids;
    *prompt_tokens = np;
    if (o->max_new > 64) {
        free(ids);
        return skv_set_error(SKV_ERR_ARG, "max_new %d > 64", o->max_new);
    }

    int32_t sk_prefix = 0, sk_window = 0;
    for (int32_t k = 0; k < n; k++)
        if (cfgs[k].smallkv) {
            sk_prefix = SKV_MAX(sk_prefix, cfgs[k].sk.match_len);
            if (cfgs[k].sk.score == SKV_SK_SCORE_WINDOW || cfgs[k].sk.match_window) sk_window = SKV_MAX(sk_window, cfgs[k].sk.obs_window);
        }
    if (sk_prefix && !o->draft) {
        free(ids);
        return skv_set_error(SKV_ERR_ARG, "smallkv needs a draft model");
    }
    skv_context_params cp = skv_context_default_params();
    const int32_t n_lat = skv_augment_n_latent(o->augment);
    if (n_lat && (sk_prefix || o->kl)) {
        free(ids);
        return skv_set_error(SKV_ERR_ARG, "augment: not with SmallKV configurations or KL measurement");
    }
    if (n_lat && np + n_lat >= skv_model_get_info(m)->n_ctx) {
        free(ids);
        return skv_set_error(SKV_ERR_RANGE, "augment: %d prompt tokens and %d latents leave no room in a context of %d",
                             np, n_lat, skv_model_get_info(m)->n_ctx);
    }
    cp.n_ctx = SKV_MIN(np + n_lat + o->max_new, skv_model_get_info(m)->n_ctx);
    /* LCKV models (fewer cache layers than layers) prefill the prompt in one chunk: the group's
     * iterations run over the whole prompt, as in the paper and the PyTorch reference */
    if (skv_model_n_cache_layers(m) < skv_model_get_info(m)->n_layer) cp.n_batch = SKV_MAX(np, 1);
    cp.kv_format = o->kv_format;
    cp.collect_stats = 1; /* forks into every policy */
    cp.backend = o->backend;
    cp.collect_head_stats = sk_prefix > 0;
    cp.head_prefix = sk_prefix;
    skv_context *base = NULL, *sbase = NULL;
    float *lg0 = malloc(sizeof(float) * V), *lg = malloc(sizeof(float) * V);
    float *lp_full = o->kl ? malloc(sizeof(float) * V * (size_t)o->max_new) : NULL;
    float *lp_a = malloc(sizeof(float) * V), *lp_b = malloc(sizeof(float) * V);
    float *lg_sh = malloc(sizeof(float) * V); /* the shadow's logits */
    int32_t full_gen[64], n_full = 0;
    shadow sh = {0};
    if ((st = skv_context_init(m, cp, &base))) goto done;
    if (sk_window && (st = skv_context_set_head_window(base, SKV_MAX(0, np - sk_window)))) goto done;
    if ((st = skv_decode(base, p, np, lg0, 0))) goto done;
    if (sk_prefix) {
        skv_context_params sp = cp;
        sp.collect_stats = 0;
        sp.kv_format = SKV_KV_F32;
        if ((st = skv_context_init(o->draft, sp, &sbase))) goto done;
        /* window-scored configurations share one observation window: the widest asked for */
        if (sk_window && (st = skv_context_set_head_window(sbase, SKV_MAX(0, np - sk_window)))) goto done;
        if ((st = skv_decode(sbase, p, np, NULL, 0))) goto done;
    }

    /* the full-cache generation: reference for KL, and the "full" configuration's result */
    if (o->kl) {
        skv_policy_params full = skv_policy_default_params("full");
        if ((st = skv_context_fork(base, &full, &sh.ctx))) goto done;
        sh.prompt_n = np;
        memcpy(lg, lg0, sizeof(float) * V);
        if ((st = generate(sh.ctx, lg, o, V, tok, row, full_gen, &n_full, lp_full))) goto done;
        /* the last generated id is decoded only when generation ended at end-of-sequence */
        sh.n_held = skv_context_n_past(sh.ctx) - np;
        memcpy(sh.held, full_gen, sizeof(int32_t) * (size_t)sh.n_held);
    }
    for (int32_t k = 0; k < n; k++) {
        skv_eval_result *r = &res[k];
        memset(r, 0, sizeof *r);
        r->match_jac = r->match_cos = NAN;
        skv_context *c = NULL;
        skv_smallkv *drv = NULL;
        double t0 = skv_time_now();
        if (cfgs[k].smallkv) {
            if ((st = skv_smallkv_fork(base, sbase, cfgs[k].sk, &drv))) goto done;
        } else {
            if ((st = skv_context_fork(base, &cfgs[k].policy, &c))) goto done;
            skv_kv_usage u;
            skv_context_kv_usage(c, &u);
            r->kv_bytes = u.bytes;
        }
        memcpy(lg, lg0, sizeof(float) * V);
        if (c && o->augment && (st = skv_augment_apply(o->augment, c, lg))) { /* lg: the last latent's */
            skv_context_free(c);
            goto done;
        }
        /* generate, measuring KL at each position before choosing its token */
        for (int32_t t = 0; t < o->max_new; t++) {
            if (o->kl) {
                log_softmax(lg, V, lp_a);
                int same = t <= n_full;
                for (int32_t i = 0; i < t && same; i++) same = r->gen[i] == full_gen[i];
                const float *ref = lp_full + (size_t)t * V;
                if (!same) {
                    st = shadow_logprobs(&sh, r->gen, t, lg_sh, lp_b, V);
                    if (st) {
                        skv_context_free(c);
                        skv_smallkv_free(drv);
                        goto done;
                    }
                    ref = lp_b;
                }
                r->kl_sum += kl_div(ref, lp_a, V);
                r->kl_n++;
            }
            int32_t id = argmax(lg, V);
            if (id == o->eos) break;
            r->gen[r->n_gen++] = id;
            if (t + 1 == o->max_new) break;
            if (o->early_stop) {
                int fixed = 0;
                if ((st = score_fixed(tok, row, r->gen, r->n_gen, &fixed))) {
                    skv_context_free(c);
                    skv_smallkv_free(drv);
                    goto done;
                }
                if (fixed) break;
            }
            st = drv ? skv_smallkv_decode(drv, id, lg) : skv_decode(c, &id, 1, lg, 0);
            if (st) {
                skv_context_free(c);
                skv_smallkv_free(drv);
                goto done;
            }
            if (drv && r->kv_bytes == 0) {
                /* SmallKV's fast tier: the rows selected at its first step */
                skv_smallkv_usage su;
                skv_smallkv_get_usage(drv, &su);
                r->kv_bytes = su.fast_bytes;
                r->extra_bytes = su.draft_kv_bytes + su.draft_weight_bytes;
                if (skv_smallkv_match_quality(drv, &r->match_jac, &r->match_cos)) r->match_jac = r->match_cos = NAN;
            }
        }
        r->seconds = skv_time_now() - t0;
        skv_context_free(c);
        skv_smallkv_free(drv);
        char *text = NULL;
        size_t tl = 0;
        if ((st = skv_detokenize(tok, r->gen, (size_t)r->n_gen, &text, &tl))) goto done;
        snprintf(r->text, sizeof r->text, "%s", text);
        st = skv_task_score(row->task, text, row->answer, &r->score);
        free(text);
        if (st) goto done;
    }
done:
    skv_context_free(base);
    skv_context_free(sbase);
    skv_context_free(sh.ctx);
    free(ids);
    free(lg0);
    free(lg);
    free(lp_full);
    free(lp_a);
    free(lp_b);
    free(lg_sh);
    return st;
}
