/*
 * gpu_stub.c — the CUDA backend's entry points in a build without CUDA (`make` rather than
 * `make CUDA=1`): each says so.
 */
#ifndef SKV_CUDA
#include "backend/cuda/gpu.h"
#include "internal.h"

static skv_status no_cuda(void) {
    return skv_set_error(SKV_ERR_UNSUPPORTED, "this slimkv was built without CUDA (build with `make CUDA=1`)");
}

int skv_gpu_available(void) { return no_cuda(), 0; }
skv_status skv_gpu_model_load(const skv_gpu_model_desc *d, skv_gpu_model **out) { return *out = NULL, no_cuda(); }
void skv_gpu_model_free(skv_gpu_model *g) { (void)g; }
int64_t skv_gpu_model_bytes(const skv_gpu_model *g) { return (void)g, 0; }
skv_status skv_gpu_ctx_init(skv_gpu_model *g, int32_t n_ctx, int32_t n_batch, int32_t n_seq, skv_gpu_ctx **out) {
    return *out = NULL, no_cuda();
}
void skv_gpu_ctx_free(skv_gpu_ctx *c) { (void)c; }
int64_t skv_gpu_ctx_kv_bytes(const skv_gpu_ctx *c, int32_t n_tokens) { return (void)c, (void)n_tokens, 0; }
skv_status skv_gpu_forward(skv_gpu_ctx *c, int32_t seq, const int32_t *ids, int32_t n, int32_t pos0, float *logits,
                           int all) {
    return no_cuda();
}
skv_status skv_gpu_decode_batch(skv_gpu_ctx *c, const int32_t *ids, const int32_t *pos, int32_t n, float *logits,
                                int32_t *next) {
    return no_cuda();
}
skv_status skv_gpu_ctx_copy(skv_gpu_ctx *dst, const skv_gpu_ctx *src, int32_t n_tokens) { return no_cuda(); }
skv_status skv_gpu_sync(skv_gpu_ctx *c) { return no_cuda(); }
void skv_gpu_timer_start(skv_gpu_ctx *c) { (void)c; }
double skv_gpu_timer_stop(skv_gpu_ctx *c) { return (void)c, 0; }
skv_status skv_gpu_device_info(char *name, int name_len, int *sms, int64_t *mem_bytes) { return no_cuda(); }
skv_status skv_gpu_copy_bandwidth(int64_t bytes, double *bps) { return no_cuda(); }
#endif
