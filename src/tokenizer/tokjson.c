/*
 * tokjson.c — small cJSON accessors for reading tokenizer.json, with error messages that name
 * the file and the JSON field.
 */
#include "tok_internal.h"

const char *skv_json_str(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

int skv_json_bool(const cJSON *o, const char *key, int def) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    return def;
}

skv_status skv_json_type(const cJSON *o, const char *path, const char *field, const char **type) {
    if (!cJSON_IsObject(o))
        return skv_set_error(SKV_ERR_FORMAT, "%s: %s: expected an object", path, field);
    *type = skv_json_str(o, "type");
    if (!*type)
        return skv_set_error(SKV_ERR_FORMAT, "%s: %s.type: missing or not a string", path, field);
    return SKV_OK;
}

char *skv_tok_strndup(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, s, n);
    d[n] = 0;
    return d;
}

skv_status skv_json_pattern(const cJSON *o, const char *path, const char *field, char **lit,
                            size_t *lit_len, skv_regex *re) {
    *lit = NULL;
    *lit_len = 0;
    re->code = NULL;
    if (cJSON_IsString(o)) { /* tolerate a bare string */
        *lit_len = strlen(o->valuestring);
        *lit = skv_tok_strndup(o->valuestring, *lit_len);
        return *lit ? SKV_OK : skv_tok_nomem();
    }
    const char *s = cJSON_IsObject(o) ? skv_json_str(o, "String") : NULL;
    if (s) {
        *lit_len = strlen(s);
        *lit = skv_tok_strndup(s, *lit_len);
        return *lit ? SKV_OK : skv_tok_nomem();
    }
    const char *r = cJSON_IsObject(o) ? skv_json_str(o, "Regex") : NULL;
    if (r) {
        char f[160];
        snprintf(f, sizeof f, "%s.Regex", field);
        return skv_regex_compile(re, r, path, f);
    }
    return skv_set_error(SKV_ERR_FORMAT, "%s: %s: expected {\"String\": ...} or {\"Regex\": ...}",
                         path, field);
}

skv_status skv_json_char(const cJSON *o, const char *key, const char *path, const char *field,
                         uint32_t def, uint32_t *cp) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) {
        *cp = def;
        return SKV_OK;
    }
    if (!cJSON_IsString(v))
        return skv_set_error(SKV_ERR_FORMAT, "%s: %s.%s: expected a string", path, field, key);
    size_t n = strlen(v->valuestring);
    if (n == 0 || !skv_utf8_is_valid(v->valuestring, n))
        return skv_set_error(SKV_ERR_FORMAT, "%s: %s.%s: expected one character", path, field, key);
    int l = skv_utf8_decode(v->valuestring, n, cp);
    if ((size_t)l != n)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "%s: %s.%s: only a single character is supported",
                             path, field, key);
    return SKV_OK;
}
