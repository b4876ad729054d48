/*
 * gpu_binv.cuh — the batch-invariant decode mode (skv_gpu_set_batch_invariant; included by
 * gpu.cu only, after its launch()): a decode step gives each sequence's logits the same bits
 * whatever else is in the batch and however many rows it has (n = 1 included), so a greedy
 * stream served beside others equals the same request run alone.
 *
 * What the default path changes with the batch size, and what this mode does instead:
 * - matrix products (batch 1-3 the one-warp-per-row GEMV, 4-8 the tensor-core GEMV, more
 *   cuBLAS, each summing in its own order): the tensor-core GEMV of gpu_gemv.cuh for every n,
 *   in launches of up to BI_ROWS token rows (each weight read once per 64 rows). A token's
 *   output element there is a chain of mma.sync over the k-steps of warp w (w, w + 8, ...) and
 *   the warps' sums added in warp order: nothing in it depends on the other tokens of the
 *   n-tile or on how many n-tiles the launch has. Matrices that kernel cannot take
 *   (stored-format GGUF weights, cols % 32 != 0) go through the one-warp-per-row GEMVs 8 rows at
 *   a time (each row's sum is the same loop for any batch of up to 8).
 * - decode attention (splits chosen so that the grid fills the chip: fewer per row as the
 *   batch grows): k_attn_decode_bi splits a stream of L slots into pieces of
 *   bi_split_len(L, target) keys, target fixed per device (att_waves * SMs / KV heads, the
 *   batch-1 choice); the grid has room for the most splits any length can need and blocks
 *   past a row's splits return at once; k_attn_merge_bi merges exactly the row's splits, in
 *   order. No atomics anywhere; RMSNorm, RoPE, SwiGLU and the argmax are per row already.
 * Prefill chunks (one sequence each, the same chunks alone or batched) keep their kernels.
 */
#ifndef SKV_GPU_BINV_CUH
#define SKV_GPU_BINV_CUH

#define BI_ROWS 64       /* token rows per tensor-core GEMV launch: 8 n-tiles */
#define BI_SPLIT_MIN 128 /* fewest keys in an attention split (a multiple of every NG) */

/* keys per split of a stream of L slots: from L and the device's target alone */
__host__ __device__ __forceinline__ int bi_split_len(int L, int target) {
    int s = (L + target - 1) / target;
    s = s < BI_SPLIT_MIN ? BI_SPLIT_MIN : s;
    return (s + 15) / 16 * 16;
}

/* k_attn_decode's body for rows of the paged pool (no KCache), splits by bi_split_len. */
template <int HD, int G>
__global__ void __launch_bounds__(ATT_WARPS * 32)
k_attn_decode_bi(const float *q, const bf16 *kp, const bf16 *vp, const int32_t *bt, const int32_t *slen,
                 const int32_t *rseq, float *part_o, float *part_m, float *part_l, float *dsc, int layer, int n_seq,
                 int mb, int H, int KVH, int n_ctx, int n_split, int target, float scale, int strict) {
    pdl_trigger();
    pdl_wait();
    constexpr int LPK = HD / 8, KPW = 32 / LPK, NG = ATT_WARPS * KPW;
    __shared__ float sm_m[NG][G], sm_l[NG][G];
    __shared__ float sm_o[NG][G][HD];
    const int g = blockIdx.x, sp = blockIdx.y, r = blockIdx.z;
    const int seq = rseq[r], sid = (layer * n_seq + seq) * KVH + g, L = slen[sid] + 1 - strict;
    const int split_len = bi_split_len(L, target);
    const int k0 = sp * split_len, k1 = min(L, k0 + split_len);
    if (k0 >= k1) return; /* past this row's splits: the merge reads none of it */
    const int32_t *bts = bt + (int64_t)sid * mb;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, sub = lane / LPK, li = lane % LPK;
    const int grp = warp * KPW + sub;
    float qv[G][8], o[G][8], m[G], l[G];
#pragma unroll
    for (int j = 0; j < G; j++) {
        m[j] = -INFINITY, l[j] = 0;
#pragma unroll
        for (int e = 0; e < 8; e++) {
            o[j][e] = 0;
            qv[j][e] = q[((int64_t)r * H + g * G + j) * HD + li * 8 + e] * scale;
        }
    }
    float *sc = dsc ? dsc + ((int64_t)r * H + g * G) * n_ctx : NULL;
    const uint4 zero4 = make_uint4(0, 0, 0, 0);
    bool ok = k0 + warp * KPW + sub < k1;
    int64_t ro = ok ? slot_row(bts, k0 + warp * KPW + sub) * HD + li * 8 : 0;
    uint4 kr = ok ? *(const uint4 *)(kp + ro) : zero4, vr = ok ? *(const uint4 *)(vp + ro) : zero4;
    for (int t0 = k0 + warp * KPW; t0 < k1; t0 += ATT_WARPS * KPW) {
        const int tn = t0 + ATT_WARPS * KPW + sub;
        const bool okn = tn < k1;
        const int64_t rn = okn ? slot_row(bts, tn) * HD + li * 8 : 0;
        const uint4 krn = okn ? *(const uint4 *)(kp + rn) : zero4, vrn = okn ? *(const uint4 *)(vp + rn) : zero4;
        float kf[8], vf[8];
        bf16x8_to_f32(kr, kf);
        bf16x8_to_f32(vr, vf);
#pragma unroll
        for (int j = 0; j < G; j++) {
            float d = 0;
#pragma unroll
            for (int e = 0; e < 8; e++) d += qv[j][e] * kf[e];
#pragma unroll
            for (int off = LPK / 2; off > 0; off >>= 1) d += __shfl_xor_sync(0xffffffffu, d, off);
            if (ok) {
                if (sc && li == 0) sc[(int64_t)j * n_ctx + t0 + sub] = d;
                const float mn = fmaxf(m[j], d), a = __expf(m[j] - mn), p = __expf(d - mn);
                l[j] = l[j] * a + p;
#pragma unroll
                for (int e = 0; e < 8; e++) o[j][e] = o[j][e] * a + p * vf[e];
                m[j] = mn;
            }
        }
        kr = krn, vr = vrn, ok = okn;
    }
#pragma unroll
    for (int j = 0; j < G; j++) {
        if (li == 0) sm_m[grp][j] = m[j], sm_l[grp][j] = l[j];
#pragma unroll
        for (int e = 0; e < 8; e++) sm_o[grp][j][li * 8 + e] = o[j][e];
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < G * HD; idx += blockDim.x) {
        const int j = idx / HD, d = idx % HD;
        float M = -INFINITY;
        for (int x = 0; x < NG; x++) M = fmaxf(M, sm_m[x][j]);
        float S = 0, O = 0;
        if (M != -INFINITY)
            for (int x = 0; x < NG; x++) {
                const float w = __expf(sm_m[x][j] - M);
                S += sm_l[x][j] * w;
                O += sm_o[x][j][d] * w;
            }
        const int64_t ps = ((int64_t)r * H + g * G + j) * n_split + sp;
        part_o[ps * HD + d] = O;
        if (d == 0) part_m[ps] = M, part_l[ps] = S;
    }
}

/* att[r, h] = the merge of row r's own splits in split order; block (h, r) of hd threads; lse
 * (may be NULL) as k_attn_merge's */
__global__ void k_attn_merge_bi(const float *part_o, const float *part_m, const float *part_l, bf16 *att, float *lse,
                                const int32_t *slen, const int32_t *rseq, int layer, int n_seq, int H, int KVH, int hd,
                                int n_split, int target, int strict) {
    pdl_trigger();
    pdl_wait();
    __shared__ float wsh[256 + 1];
    __shared__ float red[32];
    const int h = blockIdx.x, r = blockIdx.y, d = threadIdx.x;
    const int L = slen[(layer * n_seq + rseq[r]) * KVH + h / (H / KVH)] + 1 - strict;
    const int sl = bi_split_len(L, target), ns = L > 0 ? (L + sl - 1) / sl : 0;
    const int64_t ps = ((int64_t)r * H + h) * n_split;
    float m = -INFINITY; /* the maximum: exact in any order */
    for (int s = d; s < ns; s += blockDim.x) m = fmaxf(m, part_m[ps + s]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if ((d & 31) == 0) red[d >> 5] = m;
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < (int)(blockDim.x + 31) / 32; w++) M = fmaxf(M, red[w]);
    for (int s = d; s < ns; s += blockDim.x) {
        const float ms = part_m[ps + s];
        wsh[s] = ms == -INFINITY ? 0.0f : __expf(ms - M);
    }
    __syncthreads();
    if (d == 0) {
        float S = 0;
        for (int s = 0; s < ns; s++) S += part_l[ps + s] * wsh[s];
        wsh[256] = S;
    }
    __syncthreads();
    float O = 0;
    for (int s = 0; s < ns; s++) O += part_o[(ps + s) * hd + d] * wsh[s];
    const float S = wsh[256];
    att[((int64_t)r * H + h) * hd + d] = __float2bfloat16(S > 0 ? O / S : 0.0f);
    if (lse && d == 0) lse[(int64_t)r * H + h] = M + logf(S);
}

/* k-steps loaded ahead in k_gemv_tc for NT n-tiles: as the default path for one n-tile, fewer
 * (registers) for more; the order of the sums does not depend on it */
template <int NT, int T>
constexpr int bi_unroll() { return NT == 1 ? 8 / T : (8 / (T * NT) > 0 ? 8 / (T * NT) : 1); }

/* Up to 8 rows through the one-warp-per-row GEMVs (bf16 or stored-format weights) */
static skv_status bi_gemv8(skv_gpu_ctx *c, const char *what, const gmat *W, const bf16 *x, float *y,
                           const float *bias, int n, int acc) {
    if (W->q) return gq_linear(c->st, c->cb, W, x, y, bias, n, acc, c->qtile, c->g->qtile);
    const int rows = (int)W->rows, cols = (int)W->cols, threads = 256, blocks = (rows * 32 + threads - 1) / threads;
    switch (n) {
#define CASE(B) \
    case B: return launch(c, what, k_gemv<B>, dim3(blocks), dim3(threads), 0, (const bf16 *)W->w, x, y, bias, rows, cols, acc);
        CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
#undef CASE
    }
    return skv_set_error(SKV_ERR_ARG, "CUDA: %d rows for an 8-row GEMV", n);
}

/* T = 1: y (n, W.rows) (+)= x W^T (+ bias); T = 2: h (n, W.rows / 2) = SwiGLU of x (gate | up)^T */
template <int T>
static skv_status bi_linear(skv_gpu_ctx *c, const char *what, const gmat *W, const bf16 *x, float *y, bf16 *h,
                            const float *bias, int n, int acc) {
    const int rows = (int)W->rows, cols = (int)W->cols, out_rows = T == 2 ? rows / 2 : rows;
    skv_status st = SKV_OK;
    if (W->q || cols % 32) {
        for (int r0 = 0; r0 < n && !st; r0 += 8) {
            const int k = n - r0 < 8 ? n - r0 : 8;
            st = bi_gemv8(c, what, W, x + (int64_t)r0 * cols, (T == 2 ? c->gu : y) + (int64_t)r0 * rows, bias, k, acc);
        }
        if (st || T == 1) return st;
        return launch(c, "swiglu", k_swiglu, dim3(1024), dim3(256), 0, (const float *)c->gu, h, (int64_t)n,
                      (int64_t)out_rows);
    }
    const int blocks = (out_rows + 15) / 16;
    for (int r0 = 0; r0 < n && !st; r0 += BI_ROWS) {
        const int k = n - r0 < BI_ROWS ? n - r0 : BI_ROWS;
        const bf16 *xo = x + (int64_t)r0 * cols;
        float *yo = T == 1 ? y + (int64_t)r0 * rows : NULL;
        bf16 *ho = T == 2 ? h + (int64_t)r0 * out_rows : NULL;
        switch ((k + 7) / 8) {
#define CASE(NT)                                                                                                     \
    case NT:                                                                                                         \
        st = launch(c, what, k_gemv_tc<NT, T, bi_unroll<NT, T>()>, dim3(blocks), dim3(256), 0, (const bf16 *)W->w, xo, \
                    yo, ho, bias, rows, cols, k, acc);                                                               \
        break;
            CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
#undef CASE
        }
    }
    return st;
}

/* decode attention of n rows over cache layer l (see attn_decode in gpu.cu); no KCache */
static skv_status bi_attn_decode(skv_gpu_ctx *c, int l, int n, int strict) {
    skv_gpu_model *g = c->g;
    const int hd = g->hd, H = g->H, KVH = g->KVH, target = c->bi_target;
    /* room for the most splits a stream can need: ceil(L / split) <= min(target, ceil(n_ctx / min)) */
    int n_split = (c->n_ctx + BI_SPLIT_MIN - 1) / BI_SPLIT_MIN;
    if (n_split > target) n_split = target;
    const dim3 grid(KVH, n_split, n);
    const float scale = 1.0f / sqrtf((float)hd);
    const bool stats = !strict && (c->pol.want_acc || c->pol.want_last);
    float *dsc = stats ? c->dsc : NULL;
    skv_status st = SKV_OK;
#define BI_G(HD_, G_)                                                                                                \
    case G_:                                                                                                         \
        st = launch(c, "attention", k_attn_decode_bi<HD_, G_>, grid, dim3(ATT_WARPS * 32), 0, (const float *)c->q,   \
                    (const bf16 *)c->kpool, (const bf16 *)c->vpool, (const int32_t *)c->bt, (const int32_t *)c->slen, \
                    (const int32_t *)c->seq_d, c->part_o, c->part_m, c->part_l, dsc, l, c->n_seq, c->mb, H, KVH,      \
                    c->n_ctx, n_split, target, scale, strict);                                                       \
        break;
    if (hd == 128) {
        switch (H / KVH) { BI_G(128, 1) BI_G(128, 2) BI_G(128, 3) BI_G(128, 4) BI_G(128, 5) BI_G(128, 6) BI_G(128, 7) BI_G(128, 8) }
    } else {
        switch (H / KVH) { BI_G(64, 1) BI_G(64, 2) BI_G(64, 3) BI_G(64, 4) BI_G(64, 5) BI_G(64, 6) BI_G(64, 7) BI_G(64, 8) }
    }
#undef BI_G
    if (st) return st;
    if ((st = launch(c, "attn merge", k_attn_merge_bi, dim3(H, n), dim3(hd), 0, (const float *)c->part_o,
                     (const float *)c->part_m, (const float *)c->part_l, c->att, dsc ? c->lse : (float *)NULL,
                     (const int32_t *)c->slen, (const int32_t *)c->seq_d, l, c->n_seq, H, KVH, hd, n_split, target,
                     strict)))
        return st;
    return stats ? gpu_cache_decode_stats(c, l, n) : SKV_OK;
}

#endif
