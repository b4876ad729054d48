/*
 * model_chat.c — a model's chat template (read at load from tokenizer_config.json) applied to a
 * conversation; the families themselves are in tokenizer/chat.c.
 */
#include "model.h"

const char *skv_model_chat_template(const skv_model *m) { return m ? m->chat_template : NULL; }

skv_status skv_chat_apply(const skv_model *m, const skv_chat_msg *msgs, size_t n,
                          int add_generation_prompt, char **out) {
    if (!m) return skv_set_error(SKV_ERR_ARG, "chat: NULL model");
    return skv_chat_render(m->chat_template, m->bos_token, msgs, n, add_generation_prompt, out);
}
