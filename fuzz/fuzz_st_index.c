/*
 * fuzz_st_index.c — model.safetensors.index.json text resolved against a directory of two small
 * shards that this file writes once (model-00001-of-00002.safetensors holding "a.weight" and
 * "b.weight", model-00002-of-00002.safetensors holding "c.weight"). Accepted indexes must name
 * only tensors that were found, each in the shard the index gives.
 */
#include "fuzz.h"
#include "io/safetensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char g_dir[64];

static void rm_dir(void) {
    char p[128];
    snprintf(p, sizeof p, "%s/model-00001-of-00002.safetensors", g_dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", g_dir);
    unlink(p);
    rmdir(g_dir);
}

static int write_shard(const char *name, const char *header, size_t data_bytes) {
    char p[128];
    snprintf(p, sizeof p, "%s/%s", g_dir, name);
    FILE *f = fopen(p, "wb");
    if (!f) return -1;
    uint64_t h = strlen(header);
    uint8_t len[8];
    for (int i = 0; i < 8; i++) len[i] = (uint8_t)(h >> (8 * i));
    fwrite(len, 1, 8, f);
    fwrite(header, 1, h, f);
    for (size_t i = 0; i < data_bytes; i++) fputc((int)(i * 37 & 0x3f), f);
    return fclose(f);
}

static const char *shard_dir(void) {
    if (g_dir[0]) return g_dir;
    snprintf(g_dir, sizeof g_dir, "/tmp/skv_fuzz_index.XXXXXX");
    if (!mkdtemp(g_dir)) abort();
    atexit(rm_dir);
    if (write_shard("model-00001-of-00002.safetensors",
                    "{\"__metadata__\": {\"format\": \"pt\"}, "
                    "\"a.weight\": {\"dtype\": \"BF16\", \"shape\": [2, 3], \"data_offsets\": [0, 12]}, "
                    "\"b.weight\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [12, 20]}}",
                    20) ||
        write_shard("model-00002-of-00002.safetensors",
                    "{\"c.weight\": {\"dtype\": \"F16\", \"shape\": [4], \"data_offsets\": [0, 8]}}", 8))
        abort();
    return g_dir;
}

int skv_fuzz_st_index(const uint8_t *data, size_t size) {
    const char *dir = shard_dir();
    skv_st_set *s = NULL;
    if (skv_st_open_index(dir, "model.safetensors.index.json", (const char *)data, size, &s) != SKV_OK)
        return 0;
    int bad = 0;
    for (int64_t i = 0; i < skv_st_n_tensors(s); i++) {
        const skv_st_tensor *t = skv_st_get(s, i);
        if (!t->name || !t->file || !strstr(t->file, dir)) bad = 1;
        /* only the three tensors the shards hold can exist */
        if (t->name && strcmp(t->name, "a.weight") && strcmp(t->name, "b.weight") && strcmp(t->name, "c.weight"))
            bad = 1;
    }
    if (skv_st_n_tensors(s) > 3) bad = 1;
    skv_st_close(s);
    return bad;
}

#ifdef SKV_LIBFUZZER
SKV_FUZZ_MAIN(skv_fuzz_st_index)
#endif
