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
skv_status skv_gpu_model_load(const skv_gpu_model_desc *d, skv_gpu_model **out) { return (void)d, *out = NULL, no_cuda(); }
void skv_gpu_model_free(skv_gpu_model *g) { (void)g; }
int64_t skv_gpu_model_bytes(const skv_gpu_model *g) { return (void)g, 0; }
skv_status skv_gpu_qmat_test(const skv_gpu_mat *w, const float *x, int n, float *y, float *deq) {
    (void)w, (void)x, (void)n, (void)y, (void)deq;
    return no_cuda();
}
int skv_gpu_kv_bits(const skv_gpu_ctx *c) { return (void)c, 0; }
int64_t skv_gpu_kv_block_bytes(int hd, int bits) { return (void)hd, (void)bits, 0; }
int64_t skv_gpu_seq_blocks(const skv_gpu_ctx *c, int32_t seq) { return (void)c, (void)seq, -1; }
skv_status skv_gpu_kivi_attn_test(int bits, int hd, int G, int n, int n_split, int units, const float *q,
                                  const float *k, const float *v, float *out, float *kdeq, float *vdeq) {
    (void)bits, (void)hd, (void)G, (void)n, (void)n_split, (void)units, (void)q, (void)k, (void)v, (void)out, (void)kdeq, (void)vdeq;
    return no_cuda();
}
skv_status skv_gpu_ctx_init(skv_gpu_model *g, int32_t n_ctx, int32_t n_batch, int32_t n_seq, const skv_gpu_policy *pol,
                            skv_gpu_ctx **out) {
    (void)g, (void)n_ctx, (void)n_batch, (void)n_seq, (void)pol;
    return *out = NULL, no_cuda();
}
void skv_gpu_ctx_free(skv_gpu_ctx *c) { (void)c; }
void skv_gpu_kv_usage(const skv_gpu_ctx *c, int64_t *bytes, int64_t *slow_bytes, int64_t *slots) {
    (void)c;
    if (bytes) *bytes = 0;
    if (slow_bytes) *slow_bytes = 0;
    if (slots) *slots = 0;
}
skv_status skv_gpu_forward(skv_gpu_ctx *c, int32_t seq, const int32_t *ids, const float *embd, int32_t n, int32_t pos0,
                           float *logits, float *hidden, float *hidden_normed, int all) {
    (void)c, (void)seq, (void)ids, (void)embd, (void)n, (void)pos0, (void)logits, (void)hidden, (void)hidden_normed;
    (void)all;
    return no_cuda();
}
void skv_gpu_set_batch_invariant(skv_gpu_ctx *c, int on) { (void)c, (void)on; }
void skv_gpu_begin_call(skv_gpu_ctx *c, int32_t seq, int32_t win_from) { (void)c, (void)seq, (void)win_from; }
skv_status skv_gpu_decode_batch(skv_gpu_ctx *c, const int32_t *ids, const int32_t *pos, int32_t n, float *logits,
                                int32_t *next, const skv_gpu_sample *sample) {
    (void)c, (void)ids, (void)pos, (void)n, (void)logits, (void)next, (void)sample;
    return no_cuda();
}
skv_status skv_gpu_decode_seqs(skv_gpu_ctx *c, const int32_t *seqs, const int32_t *ids, const int32_t *pos, int32_t n,
                               float *logits, int32_t *next, const skv_gpu_sample *sample) {
    (void)c, (void)seqs, (void)ids, (void)pos, (void)n, (void)logits, (void)next, (void)sample;
    return no_cuda();
}
skv_status skv_gpu_compress(skv_gpu_ctx *c, int32_t seq, const int32_t *budget) {
    return (void)c, (void)seq, (void)budget, no_cuda();
}
skv_status skv_gpu_truncate(skv_gpu_ctx *c, int32_t seq, int32_t from) { return (void)c, (void)seq, (void)from, no_cuda(); }
skv_status skv_gpu_ctx_copy(skv_gpu_ctx *dst, const skv_gpu_ctx *src) { return (void)dst, (void)src, no_cuda(); }
skv_status skv_gpu_stream_read(skv_gpu_ctx *c, int32_t layer, int32_t seq, int32_t kv_head, int32_t *n, int32_t *pos,
                               float *acc, float *win, float *last, float *k, float *v) {
    (void)c, (void)layer, (void)seq, (void)kv_head, (void)pos, (void)acc, (void)win, (void)last, (void)k, (void)v;
    *n = 0;
    return no_cuda();
}
skv_status skv_gpu_set_next(skv_gpu_ctx *c, int32_t seq, int32_t pos) { return (void)c, (void)seq, (void)pos, no_cuda(); }
skv_status skv_gpu_stream_write(skv_gpu_ctx *c, int32_t layer, int32_t seq, int32_t kv_head, int32_t n,
                                const int32_t *pos, const float *acc, const float *win, const float *last,
                                const float *k, const float *v) {
    (void)c, (void)layer, (void)seq, (void)kv_head, (void)n, (void)pos, (void)acc, (void)win, (void)last, (void)k;
    (void)v;
    return no_cuda();
}
skv_status skv_gpu_fetch_v(skv_gpu_ctx *c, int32_t layer, int32_t seq, int32_t kv_head, const int32_t *rows, int32_t n,
                           void *dst) {
    (void)c, (void)layer, (void)seq, (void)kv_head, (void)rows, (void)n, (void)dst;
    return no_cuda();
}
skv_status skv_gpu_fetch_wait(skv_gpu_ctx *c) { return (void)c, no_cuda(); }
skv_status skv_gpu_scratch(int64_t bytes, void **dev) { return (void)bytes, *dev = NULL, no_cuda(); }
skv_status skv_gpu_download(void *host, const void *dev, int64_t bytes) {
    return (void)host, (void)dev, (void)bytes, no_cuda();
}
void skv_gpu_scratch_free(void *dev) { (void)dev; }
void skv_gpu_timer_start(skv_gpu_ctx *c) { (void)c; }
double skv_gpu_timer_stop(skv_gpu_ctx *c) { return (void)c, 0; }
skv_status skv_gpu_device_info(char *name, int name_len, int *sms, int64_t *mem_bytes) {
    (void)name, (void)name_len, (void)sms, (void)mem_bytes;
    return no_cuda();
}
skv_status skv_gpu_copy_bandwidth(int64_t bytes, double *bps) { return (void)bytes, (void)bps, no_cuda(); }
skv_status skv_gpu_h2d_bandwidth(int64_t bytes, double *bps) { return (void)bytes, (void)bps, no_cuda(); }
skv_status skv_gpu_seq_copy(skv_gpu_ctx *c, int32_t dst, int32_t src) { return (void)c, (void)dst, (void)src, no_cuda(); }
skv_status skv_gpu_kc_last(skv_gpu_ctx *c, int32_t row, int32_t kv_head, int32_t *n, int32_t *ns, float *probs,
                           int32_t *sel, int32_t *nsel, float *inv) {
    (void)c, (void)row, (void)kv_head, (void)probs, (void)sel, (void)inv;
    *n = *ns = *nsel = 0;
    return no_cuda();
}
void skv_gpu_kc_counts(const skv_gpu_ctx *c, int64_t *steps, int64_t *rows, int64_t *slow_rows) {
    (void)c;
    if (steps) *steps = 0;
    if (rows) *rows = 0;
    if (slow_rows) *slow_rows = 0;
}
skv_status skv_gpu_scd_upload(const skv_codes_desc *d, skv_gpu_scd **out) { return (void)d, *out = NULL, no_cuda(); }
void skv_gpu_scd_free(skv_gpu_scd *s) { (void)s; }
skv_status skv_gpu_scd_layer(skv_gpu_ctx *c, skv_gpu_scd *s, int32_t layer, int part, const void *z, int z_bf16, int32_t n) {
    (void)c, (void)s, (void)layer, (void)part, (void)z, (void)z_bf16, (void)n;
    return no_cuda();
}
skv_status skv_gpu_scd_finish(skv_gpu_ctx *c, int32_t n) { return (void)c, (void)n, no_cuda(); }
#endif
