/*
 * fuzz.h — the fuzz targets of slimkv's parsers of outside input. Each target takes one input
 * and returns 0, or 1 when the parser accepted it but broke one of its own promises (a view
 * outside the buffer, an id outside the vocabulary, ...). Memory errors are left to the
 * sanitizers. Built two ways:
 *   - with -DSKV_LIBFUZZER (make fuzz): each fuzz_<name>.c becomes a libFuzzer binary whose
 *     LLVMFuzzerTestOneInput calls its target and aborts on 1;
 *   - into build/skv_tests (the normal and the asan build): tests/test_fuzz.c replays every
 *     file of fuzz/regress/<name>/ and fuzz/corpus/<name>/ through the same targets.
 */
#ifndef SKV_FUZZ_H
#define SKV_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int skv_fuzz_safetensors(const uint8_t *data, size_t size);   /* a safetensors file image */
int skv_fuzz_st_index(const uint8_t *data, size_t size);      /* model.safetensors.index.json */
int skv_fuzz_config(const uint8_t *data, size_t size);        /* config.json */
int skv_fuzz_tokenizer_json(const uint8_t *data, size_t size); /* tokenizer.json */
int skv_fuzz_tokenize(const uint8_t *data, size_t size);      /* bytes encoded by real tokenizers */
int skv_fuzz_tasks(const uint8_t *data, size_t size);         /* a JSONL task file */
int skv_fuzz_scd_frame(const uint8_t *data, size_t size);     /* an SCD wire frame */
int skv_fuzz_gguf(const uint8_t *data, size_t size);          /* a GGUF file image */

#define SKV_FUZZ_MAIN(fn)                                                 \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);         \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {        \
        if (fn(data, size)) __builtin_trap();                             \
        return 0;                                                         \
    }

#endif
