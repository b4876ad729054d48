/*
 * safetensors.h — memory-mapped safetensors files, single or sharded
 * (model.safetensors.index.json), validated before any tensor is handed out.
 */
#ifndef SKV_SAFETENSORS_H
#define SKV_SAFETENSORS_H

#include "internal.h"

/* A view of one tensor inside a mapped file. */
typedef struct skv_st_tensor {
    char *name;
    skv_dtype dtype;
    int32_t n_dims;
    int64_t shape[4];
    int64_t n_elem;
    const void *data;     /* into the mapping; read-only */
    const char *file;     /* the shard it lives in (for messages) */
} skv_st_tensor;

typedef struct skv_st_set skv_st_set;

/* Open dir/model.safetensors, or every shard named by dir/model.safetensors.index.json.
 * Checks: header length and JSON, dtypes (F32, F16, BF16), offsets inside the file and
 * consistent with shape x dtype size, no overlapping tensors, every tensor of the index present
 * in its shard. With to_ram, the validated bytes are then copied into huge-page-backed private
 * memory and the file mappings dropped. */
skv_status skv_st_open(const char *dir, int to_ram, skv_st_set **out);
void skv_st_close(skv_st_set *s);
/* The same checks on a whole safetensors file image held in memory (named `name` in messages);
 * the tensor views point into buf, which must outlive the set. For tests and fuzzing. */
skv_status skv_st_parse_buffer(const void *buf, size_t len, const char *name, skv_st_set **out);
/* A sharded index given as text (len bytes, named dir/index_name in messages) whose shards are
 * opened from dir, with every check of skv_st_open (the shards stay mapped). */
skv_status skv_st_open_index(const char *dir, const char *index_name, const char *text, size_t len,
                             skv_st_set **out);
/* Refuses (naming file, tensor and element) a set in which any value is NaN or Inf. */
skv_status skv_st_check_finite(const skv_st_set *s);
/* NULL if absent. */
const skv_st_tensor *skv_st_find(const skv_st_set *s, const char *name);
int64_t skv_st_n_tensors(const skv_st_set *s);
const skv_st_tensor *skv_st_get(const skv_st_set *s, int64_t i);
/* Total bytes of tensor data mapped. */
int64_t skv_st_bytes(const skv_st_set *s);

/* bytes per element of the float dtypes safetensors holds (F32, F16, BF16) */
size_t skv_dtype_size(skv_dtype t);

#endif
