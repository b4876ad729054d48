/*
 * pol_quant.c — full (keep everything) and KIVI (arXiv 2402.02750) quantisation: keep every
 * token, stored as int8 or int4 (keys per channel, values per token; kv/quant.c).
 */
#include "kv/policy.h"

static skv_status validate_quant(const skv_policy_params *p, const skv_policy_env *e) {
    if (p->quant_bits != 8 && p->quant_bits != 4)
        return skv_set_error(SKV_ERR_ARG, "policy quant: bits must be 8 or 4 (got %d)", p->quant_bits);
    if (e && e->head_dim % SKV_KV_VGROUP != 0)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "policy quant: head_dim %d is not a multiple of the %d-channel "
                             "value groups", e->head_dim, SKV_KV_VGROUP);
    return SKV_OK;
}

static skv_kv_format format_quant(const skv_policy_params *p, skv_kv_format asked) {
    (void)asked;
    return p->quant_bits == 8 ? SKV_KV_Q8 : SKV_KV_Q4;
}

const skv_policy_ops skv_pol_full = {
    .name = "full", .summary = "keep every token (default)",
};

const skv_policy_ops skv_pol_quant = {
    .name = "quant", .summary = "keep every token, stored as KIVI int8 or int4 (--bits)",
    .validate = validate_quant, .format = format_quant,
};
