/*
 * fuzz_safetensors.c — a whole safetensors file (8-byte header length, JSON header, data)
 * through the validation of skv_st_parse_buffer. Accepted files must give tensor views that lie
 * inside the data section and match shape x dtype; the NaN/Inf scan of every load then reads
 * them all.
 */
#include "fuzz.h"
#include "io/safetensors.h"

int skv_fuzz_safetensors(const uint8_t *data, size_t size) {
    skv_st_set *s = NULL;
    if (skv_st_parse_buffer(data, size, "fuzz.safetensors", &s) != SKV_OK) return 0;
    int bad = 0;
    unsigned sum = 0;
    for (int64_t i = 0; i < skv_st_n_tensors(s); i++) {
        const skv_st_tensor *t = skv_st_get(s, i);
        const uint8_t *p = t->data;
        const size_t n = (size_t)t->n_elem * skv_dtype_size(t->dtype);
        if (p < data + 8 || p > data + size || n > (size_t)(data + size - p)) bad = 1;
        else if (n) sum += p[0] + p[n - 1]; /* touch both ends: the sanitizer checks the bounds */
        if (t->n_dims < 0 || t->n_dims > 4 || !t->name) bad = 1;
    }
    if (!bad) skv_st_check_finite(s); /* either answer is fine; it must stay inside the views */
    skv_st_close(s);
    return bad + (int)(sum & 0);
}

#ifdef SKV_LIBFUZZER
SKV_FUZZ_MAIN(skv_fuzz_safetensors)
#endif
