/*
 * tokcfg.c — the parts of tokenizer_config.json the engine uses: the chat template and the BOS
 * token's text. A missing file is no error (the model simply has no template); a malformed one
 * is, naming the file and field.
 */
#include "config.h"

#include <cjson/cJSON.h>
#include <unistd.h>

/* A special token written as a string or as an AddedToken object {"content": ...}. */
static skv_status token_text(const cJSON *it, const char *path, const char *key, char **out) {
    if (!it || cJSON_IsNull(it)) return SKV_OK;
    if (cJSON_IsObject(it)) it = cJSON_GetObjectItemCaseSensitive(it, "content");
    if (!cJSON_IsString(it))
        return skv_set_error(SKV_ERR_FORMAT, "%s: field \"%s\" must be a string or {\"content\": string}",
                             path, key);
    *out = strdup(it->valuestring);
    return *out ? SKV_OK : skv_set_error(SKV_ERR_NOMEM, "out of memory");
}

/* chat_template: a string, or a list of {"name", "template"} (the one named "default", else
 * the first). */
static skv_status template_text(const cJSON *it, const char *path, char **out) {
    if (!it || cJSON_IsNull(it)) return SKV_OK;
    if (cJSON_IsArray(it)) {
        const cJSON *pick = NULL, *e;
        cJSON_ArrayForEach(e, it) {
            const cJSON *nm = cJSON_GetObjectItemCaseSensitive(e, "name");
            if (!pick || (cJSON_IsString(nm) && !strcmp(nm->valuestring, "default"))) pick = e;
        }
        it = pick ? cJSON_GetObjectItemCaseSensitive(pick, "template") : NULL;
    }
    if (!cJSON_IsString(it))
        return skv_set_error(SKV_ERR_FORMAT,
                             "%s: field \"chat_template\" must be a string or a list of {name, template}", path);
    *out = strdup(it->valuestring);
    return *out ? SKV_OK : skv_set_error(SKV_ERR_NOMEM, "out of memory");
}

skv_status skv_tokcfg_load(const char *dir, char **chat_template, char **bos_token) {
    *chat_template = *bos_token = NULL;
    char path[4096];
    skv_path_join(path, sizeof path, dir, "tokenizer_config.json");
    skv_status st = SKV_OK;
    if (access(path, F_OK) == 0) {
        char *text = NULL;
        if ((st = skv_read_file(path, &text, NULL))) return st;
        cJSON *root = cJSON_Parse(text);
        free(text);
        if (!cJSON_IsObject(root)) {
            cJSON_Delete(root);
            return skv_set_error(SKV_ERR_FORMAT, "%s: not a JSON object", path);
        }
        st = template_text(cJSON_GetObjectItemCaseSensitive(root, "chat_template"), path, chat_template);
        if (!st) st = token_text(cJSON_GetObjectItemCaseSensitive(root, "bos_token"), path, "bos_token", bos_token);
        cJSON_Delete(root);
    }
    /* newer checkpoints keep the template in its own file, which then wins */
    skv_path_join(path, sizeof path, dir, "chat_template.jinja");
    if (!st && access(path, F_OK) == 0) {
        char *text = NULL;
        if (!(st = skv_read_file(path, &text, NULL))) {
            free(*chat_template);
            *chat_template = text;
        }
    }
    if (st) {
        free(*chat_template);
        free(*bos_token);
        *chat_template = *bos_token = NULL;
    }
    return st;
}
