/*
 * model_chat.c — a model's chat template (read at load from tokenizer_config.json) applied to a
 * conversation (the families themselves are in tokenizer/chat.c), and prompts tokenized with
 * the BOS the model's file asks for.
 */
#include "model.h"

const char *skv_model_chat_template(const skv_model *m) { return m ? m->chat_template : NULL; }

skv_status skv_chat_apply(const skv_model *m, const skv_chat_msg *msgs, size_t n,
                          int add_generation_prompt, char **out) {
    if (!m) return skv_set_error(SKV_ERR_ARG, "chat: NULL model");
    return skv_chat_render(m->chat_template, m->bos_token, msgs, n, add_generation_prompt, out);
}

skv_status skv_model_tokenize(const skv_model *m, const skv_tokenizer *tok, const char *text, size_t len,
                              int32_t **ids, size_t *n) {
    *ids = NULL, *n = 0;
    if (!m) return skv_set_error(SKV_ERR_ARG, "tokenize: NULL model");
    skv_status st = skv_tokenize(tok, text, len, ids, n);
    if (st) return st;
    const skv_model_info *in = &m->cfg.info;
    if (!in->add_bos || in->bos_id < 0 || (*n > 0 && (*ids)[0] == in->bos_id)) return SKV_OK;
    int32_t *b = realloc(*ids, sizeof *b * (*n + 1));
    if (!b) {
        free(*ids);
        *ids = NULL, *n = 0;
        return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    }
    memmove(b + 1, b, sizeof *b * *n);
    b[0] = in->bos_id;
    *ids = b, (*n)++;
    return SKV_OK;
}
