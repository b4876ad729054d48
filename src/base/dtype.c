/*
 * dtype.c — block geometry and names of the stored weight dtypes (ggml's layouts for the
 * quantized ones: the block structs are described in ops/wfmt.c).
 */
#include "internal.h"

static const struct {
    const char *name;
    int32_t block, bytes;
} DT[SKV_DTYPE_COUNT] = {
    [SKV_DTYPE_F32] = {"F32", 1, 4},       [SKV_DTYPE_F16] = {"F16", 1, 2},
    [SKV_DTYPE_BF16] = {"BF16", 1, 2},     [SKV_DTYPE_Q4_0] = {"Q4_0", 32, 18},
    [SKV_DTYPE_Q4_1] = {"Q4_1", 32, 20},   [SKV_DTYPE_Q5_0] = {"Q5_0", 32, 22},
    [SKV_DTYPE_Q8_0] = {"Q8_0", 32, 34},   [SKV_DTYPE_Q4_K] = {"Q4_K", 256, 144},
    [SKV_DTYPE_Q5_K] = {"Q5_K", 256, 176}, [SKV_DTYPE_Q6_K] = {"Q6_K", 256, 210},
};

int32_t skv_dtype_block(skv_dtype t) { return (unsigned)t < SKV_DTYPE_COUNT ? DT[t].block : 1; }
int32_t skv_dtype_block_bytes(skv_dtype t) { return (unsigned)t < SKV_DTYPE_COUNT ? DT[t].bytes : 0; }
const char *skv_dtype_name(skv_dtype t) { return (unsigned)t < SKV_DTYPE_COUNT ? DT[t].name : "?"; }
