/*
 * gpu_kernels.cuh — the CUDA backend's kernels (included by gpu.cu only): embedding, RMSNorm,
 * GEMV, RoPE + cache store, SwiGLU, split-K decode attention and its merge, tensor-core flash
 * attention for prefill, causal softmax (the cuBLAS prefill path), greedy argmax.
 */
#ifndef SKV_GPU_KERNELS_CUH
#define SKV_GPU_KERNELS_CUH

#include "backend/cuda/gpu_device.cuh"

/* x[r] = embed[ids[r]] */
__global__ void k_embed(const int32_t *ids, const bf16 *E, float *x, int D) {
    pdl_trigger();
    pdl_wait();
    const int r = blockIdx.x;
    const bf16 *e = E + (int64_t)ids[r] * D;
    for (int i = threadIdx.x * 8; i < D; i += blockDim.x * 8) { /* D % 8 == 0 */
        float f[8];
        bf16x8_to_f32(*(const uint4 *)(e + i), f);
        float4 *o = (float4 *)(x + (int64_t)r * D + i);
        o[0] = make_float4(f[0], f[1], f[2], f[3]);
        o[1] = make_float4(f[4], f[5], f[6], f[7]);
    }
}

/* out[r] (bf16) = w * x[r] / rms(x[r]); one block per row, D % 4 == 0, every load issued
 * before the first use (one memory round trip for D <= 4 * blockDim) */
__global__ void k_rmsnorm(const float *x, const float *w, bf16 *out, int D, float eps) {
    pdl_trigger();
    pdl_wait();
    const int r = blockIdx.x;
    const float *xr = x + (int64_t)r * D;
    float ss = 0;
    for (int i = threadIdx.x * 4; i < D; i += blockDim.x * 4) {
        const float4 v = *(const float4 *)(xr + i);
        ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
    __shared__ float red[32];
    ss = warp_sum(ss);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        float v = threadIdx.x < (blockDim.x + 31) / 32 ? red[threadIdx.x] : 0;
        v = warp_sum(v);
        if (threadIdx.x == 0) red[0] = v;
    }
    __syncthreads();
    const float s = rsqrtf(red[0] / (float)D + eps);
    for (int i = threadIdx.x * 4; i < D; i += blockDim.x * 4) {
        const float4 v = *(const float4 *)(xr + i), g = *(const float4 *)(w + i);
        __nv_bfloat162 *o = (__nv_bfloat162 *)(out + (int64_t)r * D + i);
        o[0] = __floats2bfloat162_rn(g.x * (v.x * s), g.y * (v.y * s));
        o[1] = __floats2bfloat162_rn(g.z * (v.z * s), g.w * (v.w * s));
    }
}

/* y[b, r] (+)= W[r, :] . x[b, :] + bias[r] for b < B; one warp per row, 16-byte loads. (A
 * version keeping two groups of loads in flight, the first before pdl_wait, was slower on the
 * H200: 52 registers instead of 34, fewer warps per SM; bench/cuda/issue16-h200/README.md.) */
template <int B>
__global__ void k_gemv(const bf16 *__restrict__ W, const bf16 *x, float *y, const float *bias,
                       int rows, int cols, int accumulate) {
    pdl_trigger();
    pdl_wait();
    const int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (row >= rows) return;
    const uint4 *wr = (const uint4 *)(W + (int64_t)row * cols);
    const int n8 = cols >> 3;
    float acc[B];
#pragma unroll
    for (int b = 0; b < B; b++) acc[b] = 0;
#pragma unroll 4
    for (int i = lane; i < n8; i += 32) {
        float wf[8];
        bf16x8_to_f32(__ldg(wr + i), wf);
#pragma unroll
        for (int b = 0; b < B; b++) {
            float xf[8];
            bf16x8_to_f32(*((const uint4 *)(x + (int64_t)b * cols) + i), xf); /* (written by the kernel before) */
#pragma unroll
            for (int e = 0; e < 8; e++) acc[b] += wf[e] * xf[e];
        }
    }
#pragma unroll
    for (int b = 0; b < B; b++) {
        float v = warp_sum(acc[b]);
        if (lane == 0) {
            if (bias) v += bias[row];
            float *o = y + (int64_t)b * rows + row;
            *o = accumulate ? *o + v : v;
        }
    }
}

/* y[r, c] += bias[c] */
__global__ void k_add_bias(float *y, const float *bias, int64_t rows, int cols) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < rows * cols; i += (int64_t)gridDim.x * blockDim.x)
        y[i] += bias[i % cols];
}

/* Where KCache writes a V row (kv.vd NULL: the paged pool): the layer's device rows (vd, vw rows
 * per stream, a ring when `ring`), every row to pinned host memory (vh, by stream and slot),
 * and while prefilling the layer's rows of the prefilling sequence (vpre, by KV head and slot). */
struct kc_vloc {
    bf16 *vd, *vh, *vpre;
    int vw, ring;
};

/* From row r of qkv (q | k | v, bias already in; kv_in = KVH, or 0 for an LCKV layer without
 * K/V of its own: rows of q only): RoPE'd q into q (f32) and qb (bf16), RoPE'd k and v appended
 * to the stream (cache layer l, the row's sequence, g): slot slen + r (prefill, rows of one
 * sequence) or slot slen (decode, one row per sequence), its position and zeroed statistics with
 * it; V where kv says (KCache). Grid (rows, H + kv_in). */
__global__ void k_rope_store(const float *qkv, float *q, bf16 *qb, bf16 *kp, bf16 *vp, const int32_t *bt,
                             const int32_t *slen, int32_t *spos, float *sacc, float *swin, const float *cosr,
                             const float *sinr, const int32_t *rpos, const int32_t *rseq, int pos0, int seq0, int l,
                             int n_seq, int mb, int H, int KVH, int hd, int n_ctx, int kv_in, kc_vloc kv) {
    pdl_trigger();
    pdl_wait();
    /* block (row r, head blockIdx.y of H + kv_in), threads over the hd/2 rotation pairs */
    const int r = blockIdx.x, half = hd / 2;
    const int64_t QKV = (int64_t)(H + 2 * kv_in) * hd;
    const float *qin = qkv + r * QKV, *kin = qin + (int64_t)H * hd, *vin = kin + (int64_t)KVH * hd;
    const int pos = rpos ? rpos[r] : pos0 + r, seq = rseq ? rseq[r] : seq0;
    const float *cs = cosr + (int64_t)pos * half, *sn = sinr + (int64_t)pos * half;
    const int head = blockIdx.y;
    if (head < H) {
        for (int j = threadIdx.x; j < half; j += blockDim.x) {
            const float *qi = qin + (int64_t)head * hd;
            float *qh = q + ((int64_t)r * H + head) * hd;
            const float a = qi[j], b = qi[j + half];
            const float na = a * cs[j] - b * sn[j], nb = b * cs[j] + a * sn[j];
            qh[j] = na, qh[j + half] = nb;
            qb[((int64_t)r * H + head) * hd + j] = __float2bfloat16(na);
            qb[((int64_t)r * H + head) * hd + j + half] = __float2bfloat16(nb);
        }
        return;
    }
    const int g = head - H, sid = (l * n_seq + seq) * KVH + g;
    const int slot = slen[sid] + (rpos ? 0 : r);
    const int64_t o = slot_row(bt + (int64_t)sid * mb, slot) * hd;
    const float *kh = kin + (int64_t)g * hd, *vh = vin + (int64_t)g * hd;
    for (int j = threadIdx.x; j < half; j += blockDim.x) {
        const float a = kh[j], b = kh[j + half];
        kp[o + j] = __float2bfloat16(a * cs[j] - b * sn[j]);
        kp[o + j + half] = __float2bfloat16(b * cs[j] + a * sn[j]);
        if (!kv.vd) {
            vp[o + j] = __float2bfloat16(vh[j]);
            vp[o + j + half] = __float2bfloat16(vh[j + half]);
        }
    }
    if (kv.vd) { /* KCache: 16-byte stores (the host row goes over PCIe) */
        const int64_t sx = (int64_t)seq * KVH + g, nrows = rpos ? 1 : gridDim.x;
        const bool dev = !kv.ring || slot >= slen[sid] + nrows - kv.vw; /* a ring keeps the newest */
        for (int c8 = threadIdx.x; c8 < hd / 8; c8 += blockDim.x) {
            uint4 u;
            uint32_t *w = (uint32_t *)&u;
#pragma unroll
            for (int e = 0; e < 4; e++) w[e] = pack_bf16(vh[c8 * 8 + 2 * e], vh[c8 * 8 + 2 * e + 1]);
            if (dev) ((uint4 *)(kv.vd + (sx * kv.vw + slot % kv.vw) * hd))[c8] = u;
            ((uint4 *)(kv.vh + ((int64_t)sid * n_ctx + slot) * hd))[c8] = u;
            if (kv.vpre && !rpos) ((uint4 *)(kv.vpre + ((int64_t)g * n_ctx + slot) * hd))[c8] = u;
        }
    }
    if (threadIdx.x == 0) {
        const int64_t so = (int64_t)sid * n_ctx + slot;
        spos[so] = pos;
        if (sacc) sacc[so] = 0;
        if (swin) swin[so] = 0;
    }
}

/* h (rows, F) = silu(gate) * up as bf16, from gu (rows, 2F) = gate | up */
__global__ void k_swiglu(const float *gu, bf16 *h, int64_t rows, int64_t F) {
    pdl_trigger();
    pdl_wait();
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < rows * F; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / F, j = i % F;
        const float g = gu[r * 2 * F + j];
        h[i] = __float2bfloat16(g / (1.0f + __expf(-g)) * gu[r * 2 * F + F + j]);
    }
}

/* Split-K decode attention. Block (g, split, row): the G query heads of KV head g against slots
 * [split * split_len, ...) of stream (l, row r's sequence, g), slots 0..slen (the new token
 * included). Lanes in groups of hd/8 read one key row with 16-byte loads; online softmax per
 * group, merged in shared memory. Writes the split's (max, sum, unnormalised output); with dsc,
 * every scaled score (n rows, H, n_ctx) for the statistics. */
template <int HD, int G, bool VO>
__global__ void __launch_bounds__(ATT_WARPS * 32)
k_attn_decode(const float *q, const bf16 *kp, const bf16 *vp, const bf16 *vd, const int32_t *bt, const int32_t *slen,
              const int32_t *rseq, float *part_o, float *part_m, float *part_l, float *dsc, int layer, int n_seq, int mb,
              int H, int KVH, int n_ctx, int n_split, float scale, int strict) {
    pdl_trigger();
    pdl_wait();
    constexpr int LPK = HD / 8, KPW = 32 / LPK, NG = ATT_WARPS * KPW;
    __shared__ float sm_m[NG][G_MAX], sm_l[NG][G_MAX];
    __shared__ float sm_o[NG][G_MAX][HD];
    const int g = blockIdx.x, sp = blockIdx.y, r = blockIdx.z;
    /* the stream's slots including this step's (strict, an LCKV condensed layer: excluding it,
     * the source runs later; none: a zero output) */
    const int seq = rseq[r], sid = (layer * n_seq + seq) * KVH + g, L = slen[sid] + 1 - strict;
    const int32_t *bts = bt + (int64_t)sid * mb;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, sub = lane / LPK, li = lane % LPK;
    const int grp = warp * KPW + sub;
    /* splits of at least 64 keys, whole warp-steps; the grid is fixed (graph replay), so the
     * length comes from device memory and surplus splits are empty */
    int split_len = max((L + n_split - 1) / n_split, 64);
    split_len = (split_len + NG - 1) / NG * NG;
    const int k0 = sp * split_len, k1 = min(L, k0 + split_len);
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
    /* V of slot s: the paged pool's row, or (vd: KCache's dense device rows) row s of the stream */
    const bf16 *vs = vd ? vd + ((int64_t)seq * KVH + g) * n_ctx * HD + li * 8 : NULL;
    /* registers hold the next step's K and V rows while this one is computed */
    const uint4 zero4 = make_uint4(0, 0, 0, 0);
    bool ok = k0 + warp * KPW + sub < k1;
    int64_t ro = ok ? slot_row(bts, k0 + warp * KPW + sub) * HD + li * 8 : 0;
    uint4 kr = ok ? *(const uint4 *)(kp + ro) : zero4;
    uint4 vr = VO && ok ? *(const uint4 *)(vs ? vs + (int64_t)(k0 + warp * KPW + sub) * HD : vp + ro) : zero4;
    for (int t0 = k0 + warp * KPW; t0 < k1; t0 += ATT_WARPS * KPW) {
        const int tn = t0 + ATT_WARPS * KPW + sub;
        const bool okn = tn < k1;
        const int64_t rn = okn ? slot_row(bts, tn) * HD + li * 8 : 0;
        const uint4 krn = okn ? *(const uint4 *)(kp + rn) : zero4;
        const uint4 vrn = VO && okn ? *(const uint4 *)(vs ? vs + (int64_t)tn * HD : vp + rn) : zero4;
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
                if (VO)
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
        if (VO)
#pragma unroll
            for (int e = 0; e < 8; e++) sm_o[grp][j][li * 8 + e] = o[j][e];
    }
    __syncthreads();
    constexpr int OD = VO ? HD : 1; /* scores only: the split's max and sum */
    for (int idx = threadIdx.x; idx < G * OD; idx += blockDim.x) {
        const int j = idx / OD, d = idx % OD;
        float M = -INFINITY;
        for (int x = 0; x < NG; x++) M = fmaxf(M, sm_m[x][j]);
        float S = 0, O = 0;
        if (M != -INFINITY)
            for (int x = 0; x < NG; x++) {
                const float w = __expf(sm_m[x][j] - M);
                S += sm_l[x][j] * w;
                if (VO) O += sm_o[x][j][d] * w;
            }
        const int64_t ps = ((int64_t)r * H + g * G + j) * n_split + sp;
        if (VO) part_o[ps * HD + d] = O;
        if (d == 0) part_m[ps] = M, part_l[ps] = S;
    }
}

/* att[r, h] = merge of the splits; one block (h, r) of hd threads; lse (may be NULL) [r, h] =
 * the natural log-sum-exp of the row's scaled scores */
__global__ void k_attn_merge(const float *part_o, const float *part_m, const float *part_l, bf16 *att, float *lse,
                             int H, int hd, int n_split) {
    pdl_trigger();
    pdl_wait();
    /* the split weights exp(m_s - M) once, in shared memory; then each thread's dimension */
    __shared__ float wsh[256 + 1];
    const int h = blockIdx.x, r = blockIdx.y, d = threadIdx.x;
    const int64_t ps = ((int64_t)r * H + h) * n_split;
    float m = -INFINITY;
    for (int s = d; s < n_split; s += blockDim.x) m = fmaxf(m, part_m[ps + s]);
    __shared__ float red[32];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if ((d & 31) == 0) red[d >> 5] = m;
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < (int)(blockDim.x + 31) / 32; w++) M = fmaxf(M, red[w]);
    for (int s = d; s < n_split; s += blockDim.x) {
        const float ms = part_m[ps + s];
        wsh[s] = ms == -INFINITY ? 0.0f : __expf(ms - M);
    }
    __syncthreads();
    if (d == 0) {
        float S = 0;
        for (int s = 0; s < n_split; s++) S += part_l[ps + s] * wsh[s];
        wsh[256] = S;
    }
    __syncthreads();
    float O = 0;
#pragma unroll 8
    for (int s = 0; s < n_split; s++) O += part_o[(ps + s) * hd + d] * wsh[s];
    const float S = wsh[256];
    att[((int64_t)r * H + h) * hd + d] = __float2bfloat16(S > 0 ? O / S : 0.0f);
    if (lse && d == 0) lse[(int64_t)r * H + h] = M + logf(S);
}

/* ---- prefill flash attention (tensor cores through mma.sync m16n8k16 bf16) ----------------
 * Block: 4 warps, 64 query rows of one head; warp w owns rows 16w..16w+15. Key tiles of 64
 * rows of K and V (one cache block) in shared memory; S = Q K^T and O += P V with mma.sync, online
 * softmax in registers (the accumulator layout of S is the operand layout of P). Causal: query
 * i sees the stream's n_old slots from before the call and the call's slots n_old..n_old + i
 * (mode 0); LCKV condensed layers: .. n_old + i - 1 (mode 1) or none of the call's (mode 2);
 * a row that sees nothing gets a zero output.
 * Q: (n, H, HD) bf16; bt, slen: the block tables and slot counts of (layer, seq, KV head 0..);
 * out: (n, H, HD) bf16; lse (may be NULL): (n, H) log2-sum-exp2 of each row's scaled scores. */
#define FA_BQ 64
#define FA_BK 64
#ifndef FA_MIN_BLOCKS
#define FA_MIN_BLOCKS 3 /* blocks per SM the registers must allow (ptxas: 168 registers) */
#endif

template <int HD>
constexpr int flash_smem_bytes() { return 4 * FA_BK * (HD + 8) * (int)sizeof(bf16); }

/* NW warps per block: NW * 16 query rows sharing each K/V tile (4: FA_BQ rows, the default; 8:
 * twice the rows per tile load, SKV_CUDA_FA_WARPS=8) */
template <int HD, int NW = 4>
__global__ void __launch_bounds__(NW * 32, NW == 4 ? FA_MIN_BLOCKS : 1) k_flash_prefill(const bf16 *Q, const bf16 *kp, const bf16 *vp,
                                                       const bf16 *vd, int64_t vd_stride,
                                                       const int32_t *bt, const int32_t *slen, bf16 *out, float *lse,
                                                       int n, int H, int KVH, int mb, float scale_log2, int mode) {
    constexpr int LD = HD + 8; /* padded smem row (bf16): conflict-free fragment reads */
    /* two stages of K and V tiles (dynamic shared memory, flash_smem_bytes<HD>()): tile t + 1
     * is copied by cp.async while tile t is computed */
    extern __shared__ __align__(16) unsigned char fa_smem[];
    bf16 *const sk0 = (bf16 *)fa_smem, *const sv0 = sk0 + FA_BK * LD;
    bf16 *const sk1 = sv0 + FA_BK * LD, *const sv1 = sk1 + FA_BK * LD;
    /* the longest (latest) query tiles first: less tail at the end of the grid */
    const int h = blockIdx.y, q0 = (gridDim.x - 1 - blockIdx.x) * (NW * 16), warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int lm = lane >> 3, lr = lane & 7; /* ldmatrix: matrix and row this lane addresses */
    const int G = H / KVH, kvh = h / G;
    const int32_t *bts = bt + (int64_t)kvh * mb;
    const int n_old = slen[kvh]; /* slots before this call's rows */
    const int r_lo = q0 + warp * 16 + (lane >> 2), r_hi = r_lo + 8; /* this thread's two query rows */
    const int c2 = (lane & 3) * 2;
    /* Q fragments: HD/16 k-chunks */
    uint32_t qa[HD / 16][4];
#pragma unroll
    for (int kc = 0; kc < HD / 16; kc++) {
        const int d = kc * 16 + c2;
        const uint32_t *lo = (const uint32_t *)(Q + ((int64_t)min(r_lo, n - 1) * H + h) * HD);
        const uint32_t *hi = (const uint32_t *)(Q + ((int64_t)min(r_hi, n - 1) * H + h) * HD);
        qa[kc][0] = lo[d / 2], qa[kc][1] = hi[d / 2], qa[kc][2] = lo[(d + 8) / 2], qa[kc][3] = hi[(d + 8) / 2];
    }
    float o[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0;
    float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0, l_hi = 0;
    const int last_q = min(q0 + NW * 16, n) - 1;  /* the block's last query row */
    const int diag = mode == 0 ? 0 : 1;          /* strict: a query does not see its own slot */
    const int kend = mode == 2 ? n_old : n_old + last_q + 1 - diag; /* slots the block needs */
    /* issue the copies of the tile at k0 into stage (sk, sv); rows past kend are zero-filled */
    auto load_tile = [&](int k0, bf16 *sk, bf16 *sv) {
        const int64_t b0 = (int64_t)bts[k0 / FA_BK] * FA_BK * HD; /* a tile is one cache block */
        /* V: the same block, or (vd: KCache) rows k0.. of KV head kvh's dense rows */
        const bf16 *vt = vd ? vd + ((int64_t)kvh * vd_stride + k0) * HD : vp + b0;
#pragma unroll 4
        for (int i = threadIdx.x; i < FA_BK * HD / 8; i += NW * 32) { /* 16-byte chunks */
            const int row = i / (HD / 8), col = (i % (HD / 8)) * 8;
            const bool ok = k0 + row < kend;
            const int64_t off = ok ? (int64_t)row * HD + col : 0;
            cp_async16(sk + row * LD + col, kp + b0 + off, ok);
            cp_async16(sv + row * LD + col, vt + off, ok);
        }
        asm volatile("cp.async.commit_group;\n" ::);
    };
    const bool active = q0 + warp * 16 < n; /* a warp past the last row only helps loading */
    load_tile(0, sk0, sv0);
    for (int k0 = 0, t = 0; k0 < kend; k0 += FA_BK, t++) {
        bf16 *const sk = (t & 1) ? sk1 : sk0, *const sv = (t & 1) ? sv1 : sv0;
        if (k0 + FA_BK < kend) {
            load_tile(k0 + FA_BK, (t & 1) ? sk0 : sk1, (t & 1) ? sv0 : sv1);
            asm volatile("cp.async.wait_group 1;\n" ::); /* tile t has landed */
        } else {
            asm volatile("cp.async.wait_group 0;\n" ::);
        }
        __syncthreads();
        if (active) {
        /* S (16 x 64) = Q K^T: 8 n-tiles of 8 keys */
        float s[FA_BK / 8][4];
#pragma unroll
        for (int nt = 0; nt < FA_BK / 8; nt++) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0;
#pragma unroll
            for (int kc = 0; kc < HD / 16; kc += 2) {
                uint32_t b[4]; /* B of k-chunks kc and kc + 1 */
                ldsm_x4(b, sk + (nt * 8 + lr) * LD + (kc + (lm >> 1)) * 16 + (lm & 1) * 8);
                mma16816(s[nt], qa[kc], b);
                mma16816(s[nt], qa[kc + 1], b + 2);
            }
        }
        /* causal mask and scale (log2 domain), row maxima over the 4 lanes of a row */
        float mx_lo = m_lo, mx_hi = m_hi;
        /* only tiles reaching past the warp's first row's diagonal need the mask */
        const bool need_mask = k0 + FA_BK > kend || k0 + FA_BK - 1 > n_old + q0 + warp * 16 - diag;
#pragma unroll
        for (int nt = 0; nt < FA_BK / 8; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int key = k0 + nt * 8 + c2 + (e & 1), row = e < 2 ? r_lo : r_hi;
                float v = s[nt][e] * scale_log2;
                if (need_mask && (key > n_old + row - diag || key >= kend)) v = -INFINITY;
                s[nt][e] = v;
                if (e < 2) mx_lo = fmaxf(mx_lo, v);
                else mx_hi = fmaxf(mx_hi, v);
            }
        mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 1));
        mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 2));
        mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 1));
        mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 2));
        const float a_lo = mx_lo == -INFINITY ? 1.0f : exp2f(m_lo - mx_lo);
        const float a_hi = mx_hi == -INFINITY ? 1.0f : exp2f(m_hi - mx_hi);
        m_lo = mx_lo, m_hi = mx_hi;
        float sum_lo = 0, sum_hi = 0;
        uint32_t pa[FA_BK / 16][4];
#pragma unroll
        for (int nt = 0; nt < FA_BK / 8; nt++) {
            const float p0 = mx_lo == -INFINITY ? 0 : exp2f(s[nt][0] - mx_lo);
            const float p1 = mx_lo == -INFINITY ? 0 : exp2f(s[nt][1] - mx_lo);
            const float p2 = mx_hi == -INFINITY ? 0 : exp2f(s[nt][2] - mx_hi);
            const float p3 = mx_hi == -INFINITY ? 0 : exp2f(s[nt][3] - mx_hi);
            sum_lo += p0 + p1, sum_hi += p2 + p3;
            /* accumulator of n-tile nt = half of the A operand of k-chunk nt/2 */
            pa[nt / 2][(nt & 1) * 2 + 0] = pack_bf16(p0, p1);
            pa[nt / 2][(nt & 1) * 2 + 1] = pack_bf16(p2, p3);
        }
        l_lo = l_lo * a_lo + sum_lo, l_hi = l_hi * a_hi + sum_hi;
#pragma unroll
        for (int i = 0; i < HD / 8; i++) o[i][0] *= a_lo, o[i][1] *= a_lo, o[i][2] *= a_hi, o[i][3] *= a_hi;
        /* O (16 x HD) += P (16 x 64) V (64 x HD): HD/8 n-tiles, 4 k-chunks of 16 keys */
#pragma unroll
        for (int kc = 0; kc < FA_BK / 16; kc++) {
#pragma unroll
            for (int nt = 0; nt < HD / 8; nt += 2) {
                uint32_t b[4]; /* B of n-tiles nt and nt + 1 (V transposed by ldmatrix) */
                ldsm_x4_t(b, sv + (kc * 16 + (lm & 1) * 8 + lr) * LD + (nt + (lm >> 1)) * 8);
                mma16816(o[nt], pa[kc], b);
                mma16816(o[nt + 1], pa[kc], b + 2);
            }
        }
        } /* active */
        __syncthreads(); /* this stage is overwritten by the copy issued next iteration */
    }
    if (!active) return;
    /* the row sums over the 4 lanes of each row, then write */
    l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1), l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
    l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1), l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
    const float i_lo = l_lo > 0 ? 1.0f / l_lo : 0, i_hi = l_hi > 0 ? 1.0f / l_hi : 0;
    if (lse && (lane & 3) == 0) { /* log2 domain: m + log2(l), for the statistics pass */
        if (r_lo < n) lse[(int64_t)r_lo * H + h] = m_lo + log2f(l_lo);
        if (r_hi < n) lse[(int64_t)r_hi * H + h] = m_hi + log2f(l_hi);
    }
#pragma unroll
    for (int nt = 0; nt < HD / 8; nt++) {
        const int d = nt * 8 + c2;
        if (r_lo < n) *(uint32_t *)(out + ((int64_t)r_lo * H + h) * HD + d) = pack_bf16(o[nt][0] * i_lo, o[nt][1] * i_lo);
        if (r_hi < n) *(uint32_t *)(out + ((int64_t)r_hi * H + h) * HD + d) = pack_bf16(o[nt][2] * i_hi, o[nt][3] * i_hi);
    }
}

/* Greedy ids: key[r] = max over the row of (ordered float bits << 32 | ~index), so the largest
 * logit wins and ties go to the lowest index; blocks (slice, row) combine with atomicMax. key
 * must be zeroed first (k_argmax_ids unpacks it and zeroes it again). */
__device__ __forceinline__ unsigned long long argmax_key(float v, int i) {
    uint32_t u = __float_as_uint(v);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u); /* order-preserving */
    return ((unsigned long long)u << 32) | (uint32_t)(0xffffffffu - (uint32_t)i);
}
__global__ void k_argmax(const float *logits, int V, unsigned long long *key) {
    pdl_trigger();
    pdl_wait();
    const int r = blockIdx.y;
    const float *x = logits + (int64_t)r * V;
    unsigned long long best = 0;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < V; i += gridDim.x * blockDim.x) {
        const unsigned long long k = argmax_key(x[i], i);
        best = k > best ? k : best;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const unsigned long long t = __shfl_xor_sync(0xffffffffu, best, o);
        best = t > best ? t : best;
    }
    if ((threadIdx.x & 31) == 0) atomicMax(key + r, best);
}
__global__ void k_argmax_ids(unsigned long long *key, int32_t *next, int n) {
    pdl_trigger();
    pdl_wait();
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r < n) next[r] = (int32_t)(0xffffffffu - (uint32_t)(key[r] & 0xffffffffu)), key[r] = 0; /* zero for the next step */
}

#endif
