/*
 * gpu_kivi.cu — the KIVI int8/int4 KV cache on CUDA (issue 16; the CPU's format: kv/quant.c).
 *
 * Every block of the paged cache (SKV_GPU_BLOCK = 64 slots = two KIVI groups of SKV_KV_BLOCK =
 * 32 tokens) is stored quantised as the CPU stores its blocks: keys per channel over a 32-token
 * group, values per token in groups of 32 channels, scale and minimum in f32, unsigned codes
 * (int4 two per byte, low nibble first), x ~ code * scale + min, codes rounded to nearest even
 * and clamped. The newest partial group of each stream stays f32 (the residual), as the CPU
 * keeps its newest block f32, and is quantised when its 32nd token arrives. Decode attention
 * reads the codes and dequantises in registers: each warp takes whole groups, folds the key
 * scales into the query (q.k = sum (q s) code + q.min) and the value scale into the softmax
 * weight; no bf16 copy of the cache is made for decode.
 *
 * Block b at kv_q + b * kv_bb bytes (hd channels, B = bits):
 *   K params  f32 [2 groups][scale | min][hd]           16 hd bytes
 *   K codes   u8  [64 slots][hd * B / 8]
 *   V params  f32 [64 slots][hd / 32][scale, min]       16 hd bytes
 *   V codes   u8  [64 slots][hd * B / 8]
 * Residual: f32 kv_rk / kv_rv (n_streams, 32, hd), slots [32 floor(n / 32), n) of a stream of n.
 *
 * Prefill (as the CPU: old slots as stored, the chunk's own K/V as computed): the chunk's K/V go
 * to f32 staging (KVH, n_batch, hd) and as bf16 to a dense scratch (KVH, mb * 64, hd) that the
 * flash kernel reads through an identity block table, after the old slots were dequantised into
 * it (a prefill-only copy); then every completed group is quantised and the rest goes to the
 * residual. Only the full policy (no eviction, no statistics), no slow tier, no KCache, no LCKV.
 */
#include "backend/cuda/gpu_ctx.cuh"
#include "backend/cuda/gpu_device.cuh"

#define KG 32 /* tokens per key group = channels per value group (SKV_KV_BLOCK, SKV_KV_VGROUP) */

struct kivi_ref {
    uint8_t *q;         /* blocks */
    float *rk, *rv;     /* residual */
    float *stk, *stv;   /* prefill staging */
    bf16 *sk, *sv;      /* prefill scratch */
    int64_t bb;         /* bytes per block */
    int bits, n_batch, srows;
};

int64_t gpu_kivi_block_bytes(int hd, int bits) { return (int64_t)hd * 32 + 2 * (int64_t)BLK * hd * bits / 8; }

static kivi_ref ref_of(const skv_gpu_ctx *c) {
    return kivi_ref{c->kv_q, c->kv_rk, c->kv_rv, c->kv_stk, c->kv_stv, c->kv_sk, c->kv_sv, c->kv_bb, c->kv_bits,
                    c->n_batch, c->mb * BLK};
}

/* launch on the compute stream, programmatic dependent launch as gpu.cu's launch() */
template <typename... KArgs, typename... Args>
static skv_status klaunch(skv_gpu_ctx *c, const char *what, void (*k)(KArgs...), dim3 grid, dim3 block, Args... args) {
    cudaLaunchAttribute at;
    at.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = 0, cfg.stream = c->st;
    cfg.attrs = &at, cfg.numAttrs = c->pdl ? 1 : 0;
    CK(cudaLaunchKernelEx(&cfg, k, args...));
    if (c->prof_on) gpu_prof_mark(c, what);
    return SKV_OK;
}

/* ---- block layout ------------------------------------------------------------------------ */

__device__ __forceinline__ float *kpar(uint8_t *blk, int half, int hd) { return (float *)blk + (int64_t)half * 2 * hd; }
__device__ __forceinline__ uint8_t *kcode(uint8_t *blk, int hd, int bits) { return blk + 16 * hd; }
__device__ __forceinline__ float *vpar(uint8_t *blk, int hd, int bits) {
    return (float *)(blk + 16 * hd + (int64_t)BLK * hd * bits / 8);
}
__device__ __forceinline__ uint8_t *vcode(uint8_t *blk, int hd, int bits) {
    return blk + 32 * hd + (int64_t)BLK * hd * bits / 8;
}

__device__ __forceinline__ int get_code(const uint8_t *row, int bits, int ch) {
    return bits == 8 ? row[ch] : (ch & 1) ? row[ch >> 1] >> 4 : row[ch >> 1] & 15;
}

/* code * scale + min, rounded as the CPU's dequantiser (no fused multiply-add) */
__device__ __forceinline__ float deq(int code, float s, float m) { return __fadd_rn(__fmul_rn((float)code, s), m); }

/* kv/quant.c's quant_group: scale (hi - lo) / qmax, codes rint((x - lo) / scale) clamped */
__device__ __forceinline__ void range_of(float lo, float hi, int qmax, float *s, float *inv) {
    *s = __fdiv_rn(hi - lo, (float)qmax);
    *inv = *s > 0 ? __fdiv_rn(1.0f, *s) : 0.0f;
}
__device__ __forceinline__ int code_of(float x, float lo, float inv, int qmax) {
    const int q = __float2int_rn(__fmul_rn(x - lo, inv));
    return q < 0 ? 0 : q > qmax ? qmax : q;
}

/* Quantise group `half` (0, 1) of block blk from 32 f32 rows row(t) (K and V); all threads. */
template <class FK, class FV>
__device__ void quant_group(uint8_t *blk, int half, int hd, int bits, FK krow, FV vrow) {
    const int qmax = (1 << bits) - 1, cb = hd * bits / 8;
    float *kp = kpar(blk, half, hd);
    uint8_t *kc = kcode(blk, hd, bits) + (int64_t)half * KG * cb;
    for (int p = threadIdx.x; p < hd / 2; p += blockDim.x) { /* channel pairs 2p, 2p + 1 */
        float lo[2], hi[2], s[2], inv[2];
        for (int e = 0; e < 2; e++) {
            lo[e] = INFINITY, hi[e] = -INFINITY;
            for (int t = 0; t < KG; t++) {
                const float x = krow(t)[2 * p + e];
                lo[e] = fminf(lo[e], x), hi[e] = fmaxf(hi[e], x);
            }
            range_of(lo[e], hi[e], qmax, &s[e], &inv[e]);
            kp[2 * p + e] = s[e], kp[hd + 2 * p + e] = lo[e];
        }
        for (int t = 0; t < KG; t++) {
            const float *x = krow(t);
            const int a = code_of(x[2 * p], lo[0], inv[0], qmax), b = code_of(x[2 * p + 1], lo[1], inv[1], qmax);
            if (bits == 8) kc[t * cb + 2 * p] = (uint8_t)a, kc[t * cb + 2 * p + 1] = (uint8_t)b;
            else kc[t * cb + p] = (uint8_t)(a | b << 4);
        }
    }
    const int ng = hd / KG;
    float *vp = vpar(blk, hd, bits);
    uint8_t *vc = vcode(blk, hd, bits);
    for (int it = threadIdx.x; it < KG * ng; it += blockDim.x) { /* (token, channel group) */
        const int t = it / ng, gq = it % ng, row = half * KG + t;
        const float *x = vrow(t) + gq * KG;
        float lo = INFINITY, hi = -INFINITY, s, inv;
        for (int i = 0; i < KG; i++) lo = fminf(lo, x[i]), hi = fmaxf(hi, x[i]);
        range_of(lo, hi, qmax, &s, &inv);
        vp[((int64_t)row * ng + gq) * 2] = s, vp[((int64_t)row * ng + gq) * 2 + 1] = lo;
        uint8_t *o = vc + (int64_t)row * cb + gq * KG * bits / 8;
        if (bits == 8)
            for (int i = 0; i < KG; i++) o[i] = (uint8_t)code_of(x[i], lo, inv, qmax);
        else
            for (int i = 0; i < KG; i += 2)
                o[i / 2] = (uint8_t)(code_of(x[i], lo, inv, qmax) | code_of(x[i + 1], lo, inv, qmax) << 4);
    }
}

/* Dequantise row t (0..63) of block blk: K and V channels into f32 (k, v may be NULL) */
__device__ __forceinline__ float deq_k(uint8_t *blk, int hd, int bits, int t, int ch) {
    const int cb = hd * bits / 8;
    const float *kp = kpar(blk, t / KG, hd);
    return deq(get_code(kcode(blk, hd, bits) + (int64_t)t * cb, bits, ch), kp[ch], kp[hd + ch]);
}
__device__ __forceinline__ float deq_v(uint8_t *blk, int hd, int bits, int t, int ch) {
    const int cb = hd * bits / 8, ng = hd / KG;
    const float *vp = vpar(blk, hd, bits) + ((int64_t)t * ng + ch / KG) * 2;
    return deq(get_code(vcode(blk, hd, bits) + (int64_t)t * cb, bits, ch), vp[0], vp[1]);
}

/* ---- kernels ----------------------------------------------------------------------------- */

/* q (heads < H, as k_rope_store) and, for heads H.. of a layer keeping KV, RoPE'd K and V of
 * row r: decode (rpos) into the residual row of slot slen, quantising the group when it is the
 * 32nd; prefill into staging (f32) and scratch (bf16) at slot slen + r. Grid (rows, H + kv_in). */
__global__ void k_kivi_store(const float *qkv, float *q, bf16 *qb, const int32_t *bt, const int32_t *slen, int32_t *spos,
                             const float *cosr, const float *sinr, const int32_t *rpos, const int32_t *rseq, int pos0,
                             int seq0, int l, int n_seq, int mb, int H, int KVH, int hd, int n_ctx, int kv_in, kivi_ref K) {
    pdl_trigger();
    pdl_wait();
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
    const float *kh = kin + (int64_t)g * hd, *vh = vin + (int64_t)g * hd;
    float *dk, *dv;
    if (rpos) dk = K.rk + ((int64_t)sid * KG + slot % KG) * hd, dv = K.rv + ((int64_t)sid * KG + slot % KG) * hd;
    else dk = K.stk + ((int64_t)g * K.n_batch + r) * hd, dv = K.stv + ((int64_t)g * K.n_batch + r) * hd;
    for (int j = threadIdx.x; j < half; j += blockDim.x) {
        const float a = kh[j], b = kh[j + half];
        const float ka = a * cs[j] - b * sn[j], kb = b * cs[j] + a * sn[j];
        dk[j] = ka, dk[j + half] = kb, dv[j] = vh[j], dv[j + half] = vh[j + half];
        if (!rpos) {
            const int64_t o = ((int64_t)g * K.srows + slot) * hd;
            K.sk[o + j] = __float2bfloat16(ka), K.sk[o + j + half] = __float2bfloat16(kb);
            K.sv[o + j] = __float2bfloat16(vh[j]), K.sv[o + j + half] = __float2bfloat16(vh[j + half]);
        }
    }
    if (threadIdx.x == 0) spos[(int64_t)sid * n_ctx + slot] = pos;
    if (rpos && slot % KG == KG - 1) { /* the group is complete: quantise it from the residual */
        __syncthreads();
        const float *rk = K.rk + (int64_t)sid * KG * hd, *rv = K.rv + (int64_t)sid * KG * hd;
        uint8_t *blk = K.q + (int64_t)bt[(int64_t)sid * mb + slot / BLK] * K.bb;
        quant_group(blk, (slot % BLK) / KG, hd, K.bits, [&](int t) { return rk + (int64_t)t * hd; },
                    [&](int t) { return rv + (int64_t)t * hd; });
    }
}

/* Prefill: slots [0, n_old) of streams (l, seq, g) into the scratch as bf16 (quantised groups
 * dequantised, the residual widened). Grid (groups of n_old, KVH). */
__global__ void k_kivi_old(const int32_t *bt, int l, int seq, int n_seq, int mb, int KVH, int hd, int n_old, kivi_ref K) {
    const int gi = blockIdx.x, g = blockIdx.y, sid = (l * n_seq + seq) * KVH + g;
    const int base = gi * KG, rows = min(KG, n_old - base);
    const bool quant = base + KG <= n_old;
    uint8_t *blk = K.q + (int64_t)bt[(int64_t)sid * mb + base / BLK] * K.bb;
    for (int i = threadIdx.x; i < rows * hd; i += blockDim.x) {
        const int t = i / hd, ch = i % hd;
        float kx, vx;
        if (quant) kx = deq_k(blk, hd, K.bits, base % BLK + t, ch), vx = deq_v(blk, hd, K.bits, base % BLK + t, ch);
        else kx = K.rk[((int64_t)sid * KG + t) * hd + ch], vx = K.rv[((int64_t)sid * KG + t) * hd + ch];
        const int64_t o = ((int64_t)g * K.srows + base + t) * hd + ch;
        K.sk[o] = __float2bfloat16(kx), K.sv[o] = __float2bfloat16(vx);
    }
}

/* Prefill: after the chunk of n rows at slots n_old..: group n_old / 32 + g0 + blockIdx.x of
 * stream (l, seq, blockIdx.y) quantised when complete (rows before n_old from the residual, the
 * rest from staging), else the chunk's rows into the residual. The first group reads the
 * residual that a new partial last group overwrites: the caller launches that last group
 * separately, after the others (gpu_kivi_prefill_end). */
__global__ void k_kivi_commit(const int32_t *bt, int l, int seq, int n_seq, int mb, int KVH, int hd, int n_old, int n,
                              int g0, kivi_ref K) {
    const int gi = n_old / KG + g0 + blockIdx.x, g = blockIdx.y, sid = (l * n_seq + seq) * KVH + g;
    const int base = gi * KG, end = n_old + n;
    float *rk = K.rk + (int64_t)sid * KG * hd, *rv = K.rv + (int64_t)sid * KG * hd;
    const float *sk = K.stk + (int64_t)g * K.n_batch * hd, *sv = K.stv + (int64_t)g * K.n_batch * hd;
    if (base + KG <= end) {
        uint8_t *blk = K.q + (int64_t)bt[(int64_t)sid * mb + base / BLK] * K.bb;
        quant_group(blk, (base % BLK) / KG, hd, K.bits,
                    [&](int t) { return base + t < n_old ? rk + (int64_t)t * hd : sk + (int64_t)(base + t - n_old) * hd; },
                    [&](int t) { return base + t < n_old ? rv + (int64_t)t * hd : sv + (int64_t)(base + t - n_old) * hd; });
        return;
    }
    const int t0 = max(base, n_old) - base;
    for (int i = threadIdx.x; i < (end - base - t0) * hd; i += blockDim.x) {
        const int t = t0 + i / hd, ch = i % hd;
        rk[(int64_t)t * hd + ch] = sk[(int64_t)(base + t - n_old) * hd + ch];
        rv[(int64_t)t * hd + ch] = sv[(int64_t)(base + t - n_old) * hd + ch];
    }
}

/* Truncation of sequence seq's streams from `old` to `nn` slots (block: cache layer * KVH + g):
 * a quantised group that became the partial last one goes back to the f32 residual, dequantised
 * (as the CPU's truncate); slen set. */
__global__ void k_kivi_trunc(const int32_t *bt, int32_t *slen, int seq, int n_seq, int mb, int KVH, int hd, int old, int nn,
                             kivi_ref K) {
    const int l = blockIdx.x / KVH, g = blockIdx.x % KVH, sid = (l * n_seq + seq) * KVH + g;
    const int base = nn / KG * KG;
    if (nn % KG != 0 && old >= base + KG) {
        uint8_t *blk = K.q + (int64_t)bt[(int64_t)sid * mb + base / BLK] * K.bb;
        for (int i = threadIdx.x; i < KG * hd; i += blockDim.x) {
            const int t = i / hd, ch = i % hd;
            K.rk[((int64_t)sid * KG + t) * hd + ch] = deq_k(blk, hd, K.bits, base % BLK + t, ch);
            K.rv[((int64_t)sid * KG + t) * hd + ch] = deq_v(blk, hd, K.bits, base % BLK + t, ch);
        }
    }
    if (threadIdx.x == 0) slen[sid] = nn;
}

/* Every slot of stream sid as f32 rows (k, v: (n, hd)), for read-back. */
__global__ void k_kivi_read(const int32_t *bt, int sid, int mb, int hd, int n, kivi_ref K, float *k, float *v) {
    const int nq = n / KG * KG;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (int64_t)n * hd; i += (int64_t)gridDim.x * blockDim.x) {
        const int s = (int)(i / hd), ch = (int)(i % hd);
        if (s < nq) {
            uint8_t *blk = K.q + (int64_t)bt[(int64_t)sid * mb + s / BLK] * K.bb;
            k[i] = deq_k(blk, hd, K.bits, s % BLK, ch), v[i] = deq_v(blk, hd, K.bits, s % BLK, ch);
        } else {
            k[i] = K.rk[((int64_t)sid * KG + s - nq) * hd + ch], v[i] = K.rv[((int64_t)sid * KG + s - nq) * hd + ch];
        }
    }
}

/* 8 codes of a lane (channels li*8 .. li*8+7) as floats: int8 from 8 bytes, int4 from 4 */
template <int BITS>
__device__ __forceinline__ void codes8(uint2 w, float *f) {
    if (BITS == 8) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            f[e] = __uint_as_float(0x4B000000u | ((w.x >> (8 * e)) & 255u)) - 8388608.0f;
            f[e + 4] = __uint_as_float(0x4B000000u | ((w.y >> (8 * e)) & 255u)) - 8388608.0f;
        }
    } else {
#pragma unroll
        for (int e = 0; e < 8; e++) f[e] = __uint_as_float(0x4B000000u | ((w.x >> (4 * e)) & 15u)) - 8388608.0f;
    }
}
template <int BITS>
__device__ __forceinline__ uint2 load_codes(const uint8_t *row, int li) {
    if (BITS == 8) return *(const uint2 *)(row + li * 8);
    return make_uint2(*(const uint32_t *)(row + li * 4), 0u);
}

/* Split-K decode attention over a KIVI stream. Block (g, split, row): the G query heads of KV
 * head g against the split's groups of stream (l, row r's sequence, g), the new slot included
 * (L = slen + 1; groups below L / 32 quantised, the last partial one the residual). Lanes in
 * groups of HD / 8 hold 8 channels of one key. UNITS = false (the default, measured): each warp
 * takes whole groups (the group's key scales folded into the query once, codes loaded U steps at
 * a time) and the residual group one step at a time. UNITS = true (SKV_CUDA_KIVI_UNITS=1): the
 * work goes to warps in units of U steps of a group (its scales folded per unit), so a split of
 * one or two groups keeps all warps busy, and the residual group's steps are spread over every
 * warp of its split. Writes the split's (max, sum, unnormalised output) as k_attn_decode does,
 * for k_attn_merge. */
template <int HD, int G, int BITS, bool UNITS>
__global__ void __launch_bounds__(ATT_WARPS * 32)
k_kivi_attn(const float *q, kivi_ref K, const int32_t *bt, const int32_t *slen, const int32_t *rseq, float *part_o,
            float *part_m, float *part_l, int layer, int n_seq, int mb, int H, int KVH, int n_split, float scale) {
    pdl_trigger();
    pdl_wait();
    constexpr int LPK = HD / 8, KPW = 32 / LPK, NG = ATT_WARPS * KPW, CB = HD * BITS / 8, STEPS = KG / KPW;
    constexpr int UM = G > 4 ? 4 : 8, U = STEPS < UM ? STEPS : UM; /* steps whose loads are issued together */
    constexpr int UPG = STEPS / U;                                  /* units per group */
    __shared__ float sm_m[NG][G], sm_l[NG][G];
    __shared__ float sm_o[NG][G][HD];
    const int g = blockIdx.x, sp = blockIdx.y, r = blockIdx.z;
    const int seq = rseq[r], sid = (layer * n_seq + seq) * KVH + g, L = slen[sid] + 1, Lq = L / KG * KG;
    const int32_t *bts = bt + (int64_t)sid * mb;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, sub = lane / LPK, li = lane % LPK;
    const int grp = warp * KPW + sub;
    const int ngr = (L + KG - 1) / KG, gps = (ngr + n_split - 1) / n_split;
    const int g0 = sp * gps, g1 = min(ngr, g0 + gps);
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
    /* one key's update of the online softmax: d the lane's partial score */
    auto update = [&](int j, float d, float ps, float pm, const float *vf, bool ok) {
#pragma unroll
        for (int off = LPK / 2; off > 0; off >>= 1) d += __shfl_xor_sync(0xffffffffu, d, off);
        if (!ok) return;
        const float mn = fmaxf(m[j], d), a = __expf(m[j] - mn), p = __expf(d - mn);
        l[j] = l[j] * a + p;
        const float pv = p * ps, pb = p * pm;
#pragma unroll
        for (int e = 0; e < 8; e++) o[j][e] = o[j][e] * a + (pv * vf[e] + pb);
        m[j] = mn;
    };
    /* steps [i0, i0 + U) of quantised group gi: the key scales folded into the query, the codes
     * of the U steps loaded together, then the U keys */
    auto quant_steps = [&](int gi, int i0) {
        const int base = gi * KG;
        uint8_t *blk = K.q + (int64_t)bts[base / BLK] * K.bb;
        const int half = (base % BLK) / KG;
        const float *kp = kpar(blk, half, HD);
        const uint8_t *kc = kcode(blk, HD, BITS) + (int64_t)half * KG * CB;
        const uint8_t *vc = vcode(blk, HD, BITS) + (int64_t)half * KG * CB;
        const float2 *vpp = (const float2 *)vpar(blk, HD, BITS) + (int64_t)half * KG * (HD / KG) + li * 8 / KG;
        uint2 kw[U], vw[U];
        float2 vsm[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int t = (i0 + u) * KPW + sub;
            kw[u] = load_codes<BITS>(kc + (int64_t)t * CB, li);
            vw[u] = load_codes<BITS>(vc + (int64_t)t * CB, li);
            vsm[u] = vpp[(int64_t)t * (HD / KG)];
        }
        const float4 s0 = *(const float4 *)(kp + li * 8), s1 = *(const float4 *)(kp + li * 8 + 4);
        const float4 n0 = *(const float4 *)(kp + HD + li * 8), n1 = *(const float4 *)(kp + HD + li * 8 + 4);
        const float ks[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
        const float km[8] = {n0.x, n0.y, n0.z, n0.w, n1.x, n1.y, n1.z, n1.w};
        float qs[G][8], qm[G];
#pragma unroll
        for (int j = 0; j < G; j++) {
            qm[j] = 0;
#pragma unroll
            for (int e = 0; e < 8; e++) qs[j][e] = qv[j][e] * ks[e], qm[j] += qv[j][e] * km[e];
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            float kf[8], vf[8];
            codes8<BITS>(kw[u], kf);
            codes8<BITS>(vw[u], vf);
#pragma unroll
            for (int j = 0; j < G; j++) {
                float d = qm[j];
#pragma unroll
                for (int e = 0; e < 8; e++) d += qs[j][e] * kf[e];
                update(j, d, vsm[u].x, vsm[u].y, vf, true);
            }
        }
    };
    /* step i of the residual (f32 rows base .. L - 1) */
    auto resid_step = [&](int base, int i) {
        const float *rk = K.rk + (int64_t)sid * KG * HD + li * 8, *rv = K.rv + (int64_t)sid * KG * HD + li * 8;
        const int t = i * KPW + sub;
        const bool ok = base + t < L;
        float kf[8] = {0, 0, 0, 0, 0, 0, 0, 0}, vf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (ok) {
            const float4 a = *(const float4 *)(rk + (int64_t)t * HD), b = *(const float4 *)(rk + (int64_t)t * HD + 4);
            const float4 c = *(const float4 *)(rv + (int64_t)t * HD), e = *(const float4 *)(rv + (int64_t)t * HD + 4);
            kf[0] = a.x, kf[1] = a.y, kf[2] = a.z, kf[3] = a.w, kf[4] = b.x, kf[5] = b.y, kf[6] = b.z, kf[7] = b.w;
            vf[0] = c.x, vf[1] = c.y, vf[2] = c.z, vf[3] = c.w, vf[4] = e.x, vf[5] = e.y, vf[6] = e.z, vf[7] = e.w;
        }
#pragma unroll
        for (int j = 0; j < G; j++) {
            float d = 0;
#pragma unroll
            for (int e = 0; e < 8; e++) d += qv[j][e] * kf[e];
            update(j, d, 1.0f, 0.0f, vf, ok);
        }
    };
    if (!UNITS) { /* the kernel as measured at fad5d5f */
        for (int gi = g0 + warp; gi < g1; gi += ATT_WARPS) {
            const int base = gi * KG;
            if (base + KG <= Lq) {
                uint8_t *blk = K.q + (int64_t)bts[base / BLK] * K.bb;
                const int half = (base % BLK) / KG;
                const float *kp = kpar(blk, half, HD);
                const float4 s0 = *(const float4 *)(kp + li * 8), s1 = *(const float4 *)(kp + li * 8 + 4);
                const float4 n0 = *(const float4 *)(kp + HD + li * 8), n1 = *(const float4 *)(kp + HD + li * 8 + 4);
                const float ks[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
                const float km[8] = {n0.x, n0.y, n0.z, n0.w, n1.x, n1.y, n1.z, n1.w};
                float qs[G][8], qm[G];
    #pragma unroll
                for (int j = 0; j < G; j++) {
                    qm[j] = 0;
    #pragma unroll
                    for (int e = 0; e < 8; e++) qs[j][e] = qv[j][e] * ks[e], qm[j] += qv[j][e] * km[e];
                }
                const uint8_t *kc = kcode(blk, HD, BITS) + (int64_t)half * KG * CB;
                const uint8_t *vc = vcode(blk, HD, BITS) + (int64_t)half * KG * CB;
                const float2 *vpp = (const float2 *)vpar(blk, HD, BITS) + (int64_t)half * KG * (HD / KG) + li * 8 / KG;
    #pragma unroll 1
                for (int i0 = 0; i0 < STEPS; i0 += U) {
                    uint2 kw[U], vw[U];
                    float2 vsm[U];
    #pragma unroll
                    for (int u = 0; u < U; u++) {
                        const int t = (i0 + u) * KPW + sub;
                        kw[u] = load_codes<BITS>(kc + (int64_t)t * CB, li);
                        vw[u] = load_codes<BITS>(vc + (int64_t)t * CB, li);
                        vsm[u] = vpp[(int64_t)t * (HD / KG)];
                    }
    #pragma unroll
                    for (int u = 0; u < U; u++) {
                        float kf[8], vf[8];
                        codes8<BITS>(kw[u], kf);
                        codes8<BITS>(vw[u], vf);
    #pragma unroll
                        for (int j = 0; j < G; j++) {
                            float d = qm[j];
    #pragma unroll
                            for (int e = 0; e < 8; e++) d += qs[j][e] * kf[e];
                            update(j, d, vsm[u].x, vsm[u].y, vf, true);
                        }
                    }
                }
            } else { /* the residual (f32): rows base .. L - 1 */
                const float *rk = K.rk + (int64_t)sid * KG * HD + li * 8, *rv = K.rv + (int64_t)sid * KG * HD + li * 8;
                for (int i = 0; i < STEPS; i++) {
                    const int t = i * KPW + sub;
                    const bool ok = base + t < L;
                    float kf[8] = {0, 0, 0, 0, 0, 0, 0, 0}, vf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                    if (ok) {
                        const float4 a = *(const float4 *)(rk + (int64_t)t * HD), b = *(const float4 *)(rk + (int64_t)t * HD + 4);
                        const float4 c = *(const float4 *)(rv + (int64_t)t * HD), e = *(const float4 *)(rv + (int64_t)t * HD + 4);
                        kf[0] = a.x, kf[1] = a.y, kf[2] = a.z, kf[3] = a.w, kf[4] = b.x, kf[5] = b.y, kf[6] = b.z, kf[7] = b.w;
                        vf[0] = c.x, vf[1] = c.y, vf[2] = c.z, vf[3] = c.w, vf[4] = e.x, vf[5] = e.y, vf[6] = e.z, vf[7] = e.w;
                    }
    #pragma unroll
                    for (int j = 0; j < G; j++) {
                        float d = 0;
    #pragma unroll
                        for (int e = 0; e < 8; e++) d += qv[j][e] * kf[e];
                        update(j, d, 1.0f, 0.0f, vf, ok);
                    }
                }
            }
        }
    } else {
        const int gq1 = min(g1, Lq / KG); /* the split's quantised groups: [g0, gq1) */
#pragma unroll 1
        for (int u = g0 * UPG + warp; u < gq1 * UPG; u += ATT_WARPS) quant_steps(u / UPG, (u % UPG) * U);
        const int rg = Lq / KG; /* the residual group, when it is this split's: its steps over all warps
                                  * (a split past the last group has g1 < g0 and must not take it) */
        if (rg >= g0 && rg < g1 && rg * KG < L) {
            static_assert(STEPS % ATT_WARPS == 0, "residual steps per warp");
#pragma unroll
            for (int ii = 0; ii < STEPS / ATT_WARPS; ii++) resid_step(rg * KG, ii * ATT_WARPS + warp);
        }
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

/* ---- host side ----------------------------------------------------------------------------- */

#define ALLOC(p, n) CK(cudaMalloc((void **)&(p), (size_t)(n) * sizeof(*(p))))

skv_status gpu_kivi_check(const skv_gpu_ctx *c) {
    const skv_gpu_policy *p = &c->pol;
    const int b = p->kv_bits;
    if (b == 0) return SKV_OK;
    if (b != 8 && b != 4) return skv_set_error(SKV_ERR_ARG, "CUDA KIVI cache: %d bits (8 or 4)", b);
    if (c->g->hd != 128 && c->g->hd != 64)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "CUDA KIVI cache: head_dim %d (64 or 128)", c->g->hd);
    if (c->g->H / c->g->KVH > G_MAX)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "CUDA KIVI cache: %d query heads per KV head (at most %d)",
                             c->g->H / c->g->KVH, G_MAX);
    if (p->ev.evicts || p->want_acc || p->want_win || p->want_last)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "--kv-format int%d on CUDA keeps every token: an evicting policy or "
                             "attention statistics with a KIVI cache run on --backend cpu", b);
    if (p->v_slow || p->vtop.on)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "--kv-format int%d on CUDA: the slow V tier and KCache need the bf16 "
                             "cache", b);
    if (c->g->grp_lo >= 0)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "--kv-format int%d on CUDA: LCKV models need the bf16 cache", b);
    return SKV_OK;
}

skv_status gpu_kivi_alloc(skv_gpu_ctx *c) {
    const skv_gpu_model *g = c->g;
    const int64_t hd = g->hd, S = c->n_streams;
    c->kv_bits = c->pol.kv_bits;
    c->kv_bb = gpu_kivi_block_bytes(g->hd, c->kv_bits);
    const char *u = getenv("SKV_CUDA_KIVI_UNITS");
    c->kv_units = u && *u && atoi(u) != 0;
    ALLOC(c->kv_q, (int64_t)c->n_blocks * c->kv_bb);
    ALLOC(c->kv_rk, S * KG * hd);
    ALLOC(c->kv_rv, S * KG * hd);
    ALLOC(c->kv_stk, (int64_t)g->KVH * c->n_batch * hd);
    ALLOC(c->kv_stv, (int64_t)g->KVH * c->n_batch * hd);
    ALLOC(c->kv_sk, (int64_t)g->KVH * c->mb * BLK * hd);
    ALLOC(c->kv_sv, (int64_t)g->KVH * c->mb * BLK * hd);
    ALLOC(c->kv_sbt, (int64_t)g->KVH * c->mb);
    int32_t *ids = (int32_t *)malloc(sizeof(int32_t) * (size_t)g->KVH * c->mb);
    if (!ids) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; i < (int64_t)g->KVH * c->mb; i++) ids[i] = (int32_t)i; /* head h: blocks h * mb .. */
    const cudaError_t e = cudaMemcpy(c->kv_sbt, ids, sizeof(int32_t) * (size_t)g->KVH * c->mb, cudaMemcpyHostToDevice);
    free(ids);
    CK(e);
    return SKV_OK;
}

void gpu_kivi_free(skv_gpu_ctx *c) {
    void *ps[] = {c->kv_q, c->kv_rk, c->kv_rv, c->kv_stk, c->kv_stv, c->kv_sk, c->kv_sv, c->kv_sbt};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) cudaFree(ps[i]);
}

skv_status gpu_kivi_store(skv_gpu_ctx *c, int l, int n, int decode, int seq, int pos0, int kv_in) {
    const skv_gpu_model *g = c->g;
    return klaunch(c, "rope+store", k_kivi_store, dim3(n, g->H + kv_in), dim3(g->hd / 2), (const float *)c->qkv, c->q,
                   c->qb, (const int32_t *)c->bt, (const int32_t *)c->slen, c->spos, (const float *)c->cosr,
                   (const float *)c->sinr, (const int32_t *)(decode ? c->pos_d : NULL),
                   (const int32_t *)(decode ? c->seq_d : NULL), pos0, seq, l, c->n_seq, c->mb, g->H, g->KVH, g->hd,
                   c->n_ctx, kv_in, ref_of(c));
}

skv_status gpu_kivi_prefill_begin(skv_gpu_ctx *c, int l, int seq) {
    const skv_gpu_model *g = c->g;
    const int n_old = c->h_n[sid_of(c, l, seq, 0)];
    if (n_old == 0) return SKV_OK;
    k_kivi_old<<<dim3((n_old + KG - 1) / KG, g->KVH), 256, 0, c->st>>>(c->bt, l, seq, c->n_seq, c->mb, g->KVH, g->hd,
                                                                        n_old, ref_of(c));
    LAUNCHED();
    return SKV_OK;
}

skv_status gpu_kivi_prefill_end(skv_gpu_ctx *c, int l, int seq, int n) {
    const skv_gpu_model *g = c->g;
    const int n_old = c->h_n[sid_of(c, l, seq, 0)], end = n_old + n, groups = (end - 1) / KG - n_old / KG + 1;
    /* a partial last group that is not the first is written into the residual only after the
     * first group (which may read the residual's rows before n_old) has been quantised */
    const int split = groups > 1 && end % KG != 0;
    k_kivi_commit<<<dim3(groups - split, g->KVH), 64, 0, c->st>>>(c->bt, l, seq, c->n_seq, c->mb, g->KVH, g->hd, n_old,
                                                                   n, 0, ref_of(c));
    LAUNCHED();
    if (split) {
        k_kivi_commit<<<dim3(1, g->KVH), 64, 0, c->st>>>(c->bt, l, seq, c->n_seq, c->mb, g->KVH, g->hd, n_old, n,
                                                          groups - 1, ref_of(c));
        LAUNCHED();
    }
    return SKV_OK;
}

template <int HD, int BITS, bool UNITS>
static skv_status attn_hd(skv_gpu_ctx *c, int l, int n, int n_split, dim3 grid, float scale) {
    const skv_gpu_model *g = c->g;
#define KV_ARGS (const float *)c->q, ref_of(c), (const int32_t *)c->bt, (const int32_t *)c->slen, \
                (const int32_t *)c->seq_d, c->part_o, c->part_m, c->part_l, l, c->n_seq, c->mb, g->H, g->KVH, n_split, scale
#define KV_G(G_) \
    case G_: return klaunch(c, "attention", k_kivi_attn<HD, G_, BITS, UNITS>, grid, dim3(ATT_WARPS * 32), KV_ARGS);
    switch (g->H / g->KVH) { KV_G(1) KV_G(2) KV_G(3) KV_G(4) KV_G(5) KV_G(6) KV_G(7) KV_G(8) }
#undef KV_G
#undef KV_ARGS
    return skv_set_error(SKV_ERR_UNSUPPORTED, "CUDA KIVI attention: %d query heads per KV head", g->H / g->KVH);
}

skv_status gpu_kivi_decode(skv_gpu_ctx *c, int l, int n, int n_split) {
    const dim3 grid(c->g->KVH, n_split, n);
    const float scale = 1.0f / sqrtf((float)c->g->hd);
#define KV_HD(HD_)                                                                                                 \
    if (c->g->hd == HD_) {                                                                                         \
        if (c->kv_units) return c->kv_bits == 8 ? attn_hd<HD_, 8, true>(c, l, n, n_split, grid, scale)              \
                                                : attn_hd<HD_, 4, true>(c, l, n, n_split, grid, scale);             \
        return c->kv_bits == 8 ? attn_hd<HD_, 8, false>(c, l, n, n_split, grid, scale)                              \
                               : attn_hd<HD_, 4, false>(c, l, n, n_split, grid, scale);                             \
    }
    KV_HD(128)
    KV_HD(64)
#undef KV_HD
    return skv_set_error(SKV_ERR_UNSUPPORTED, "CUDA KIVI attention: head_dim %d", c->g->hd);
}

skv_status gpu_kivi_truncate(skv_gpu_ctx *c, int seq, int from) {
    const skv_gpu_model *g = c->g;
    const int old = c->h_n[sid_of(c, 0, seq, 0)], nn = old < from ? old : from; /* slots are positions (no eviction) */
    k_kivi_trunc<<<g->CL * g->KVH, 256, 0, c->st>>>(c->bt, c->slen, seq, c->n_seq, c->mb, g->KVH, g->hd, old, nn,
                                                    ref_of(c));
    LAUNCHED();
    return SKV_OK;
}

skv_status gpu_kivi_read(skv_gpu_ctx *c, int sid, int n, float *k, float *v) {
    const int64_t hd = c->g->hd;
    float *kd = NULL, *vd = NULL;
    CK(cudaMalloc((void **)&kd, sizeof(float) * (size_t)(2 * n * hd)));
    vd = kd + n * hd;
    k_kivi_read<<<64, 256, 0, c->st>>>(c->bt, sid, c->mb, (int)hd, n, ref_of(c), kd, vd);
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) e = cudaStreamSynchronize(c->st);
    if (e == cudaSuccess && k) e = cudaMemcpy(k, kd, sizeof(float) * (size_t)(n * hd), cudaMemcpyDeviceToHost);
    if (e == cudaSuccess && v) e = cudaMemcpy(v, vd, sizeof(float) * (size_t)(n * hd), cudaMemcpyDeviceToHost);
    cudaFree(kd);
    CK(e);
    return SKV_OK;
}

extern "C" int skv_gpu_kv_bits(const skv_gpu_ctx *c) { return c->kv_bits; }
extern "C" int64_t skv_gpu_kv_block_bytes(int hd, int bits) {
    return bits ? gpu_kivi_block_bytes(hd, bits) : 2 * (int64_t)BLK * hd * (int64_t)sizeof(bf16);
}

/* ---- the kernel test (gpu.h: skv_gpu_kivi_attn_test) ------------------------------------- */

__global__ void k_kivi_test_fill(const float *k, const float *v, int n, int hd, kivi_ref K) {
    /* block gi: group gi of the one stream (sid 0, identity block table), or the residual */
    const int gi = blockIdx.x, base = gi * KG;
    if (base + KG <= n) {
        quant_group(K.q + (int64_t)(base / BLK) * K.bb, (base % BLK) / KG, hd, K.bits,
                    [&](int t) { return k + (int64_t)(base + t) * hd; }, [&](int t) { return v + (int64_t)(base + t) * hd; });
        return;
    }
    for (int i = threadIdx.x; i < (n - base) * hd; i += blockDim.x) K.rk[i] = k[(int64_t)base * hd + i], K.rv[i] = v[(int64_t)base * hd + i];
}

extern "C" skv_status skv_gpu_kivi_attn_test(int bits, int hd, int G, int n, int n_split, int units, const float *q,
                                             const float *k, const float *v, float *out, float *kdeq, float *vdeq) {
    if ((bits != 8 && bits != 4) || (hd != 64 && hd != 128) || G < 1 || G > G_MAX || n < 1 || n_split < 1 || n_split > 256)
        return skv_set_error(SKV_ERR_ARG, "KIVI attention test: bits %d hd %d G %d n %d splits %d", bits, hd, G, n, n_split);
    const int mb = (n + BLK - 1) / BLK;
    skv_gpu_model gm = {};
    gm.H = G, gm.KVH = 1, gm.hd = hd;
    skv_gpu_ctx c = {};
    c.g = &gm, c.kv_bits = bits, c.kv_bb = gpu_kivi_block_bytes(hd, bits), c.n_seq = 1, c.mb = mb, c.n_batch = 1;
    c.kv_units = units != 0;
    int32_t *ids = (int32_t *)malloc(sizeof(int32_t) * (size_t)mb);
    if (!ids) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    for (int i = 0; i < mb; i++) ids[i] = i;
    const int32_t len = n - 1, zero = 0; /* slen: the kernel adds this step's slot */
    float *kd = NULL, *vd = NULL, *qd = NULL, *dk = NULL, *dv = NULL;
    int32_t *bt = NULL, *sl = NULL, *sq = NULL;
    cudaError_t e = cudaSuccess;
    auto A = [&](void **p, size_t bytes) { if (e == cudaSuccess) e = cudaMalloc(p, bytes); };
    A((void **)&c.kv_q, (size_t)(mb * c.kv_bb)), A((void **)&c.kv_rk, sizeof(float) * KG * hd), A((void **)&c.kv_rv, sizeof(float) * KG * hd);
    A((void **)&kd, sizeof(float) * (size_t)n * hd), A((void **)&vd, sizeof(float) * (size_t)n * hd);
    A((void **)&dk, sizeof(float) * (size_t)n * hd), A((void **)&dv, sizeof(float) * (size_t)n * hd);
    A((void **)&qd, sizeof(float) * (size_t)G * hd), A((void **)&bt, sizeof(int32_t) * (size_t)mb);
    A((void **)&sl, sizeof(int32_t)), A((void **)&sq, sizeof(int32_t));
    A((void **)&c.part_o, sizeof(float) * (size_t)G * n_split * hd), A((void **)&c.part_m, sizeof(float) * (size_t)G * n_split);
    A((void **)&c.part_l, sizeof(float) * (size_t)G * n_split);
    if (e == cudaSuccess) e = cudaMemcpy(kd, k, sizeof(float) * (size_t)n * hd, cudaMemcpyHostToDevice);
    if (e == cudaSuccess) e = cudaMemcpy(vd, v, sizeof(float) * (size_t)n * hd, cudaMemcpyHostToDevice);
    if (e == cudaSuccess) e = cudaMemcpy(qd, q, sizeof(float) * (size_t)G * hd, cudaMemcpyHostToDevice);
    if (e == cudaSuccess) e = cudaMemcpy(bt, ids, sizeof(int32_t) * (size_t)mb, cudaMemcpyHostToDevice);
    if (e == cudaSuccess) e = cudaMemcpy(sl, &len, sizeof len, cudaMemcpyHostToDevice);
    if (e == cudaSuccess) e = cudaMemcpy(sq, &zero, sizeof zero, cudaMemcpyHostToDevice);
    if (e == cudaSuccess) e = cudaStreamCreate(&c.st);
    float *po = (float *)malloc(sizeof(float) * (size_t)G * n_split * hd), *pm = (float *)malloc(sizeof(float) * (size_t)G * n_split),
          *pl = (float *)malloc(sizeof(float) * (size_t)G * n_split);
    skv_status st = SKV_OK;
    if (e == cudaSuccess && po && pm && pl) {
        c.q = qd, c.bt = bt, c.slen = sl, c.seq_d = sq;
        k_kivi_test_fill<<<(n + KG - 1) / KG, 64, 0, c.st>>>(kd, vd, n, hd, ref_of(&c));
        e = cudaGetLastError();
        if (e == cudaSuccess) st = gpu_kivi_decode(&c, 0, 1, n_split);
        if (e == cudaSuccess && !st) {
            k_kivi_read<<<64, 256, 0, c.st>>>(bt, 0, mb, hd, n, ref_of(&c), dk, dv);
            e = cudaGetLastError();
        }
        if (e == cudaSuccess) e = cudaStreamSynchronize(c.st);
        if (e == cudaSuccess) e = cudaMemcpy(po, c.part_o, sizeof(float) * (size_t)G * n_split * hd, cudaMemcpyDeviceToHost);
        if (e == cudaSuccess) e = cudaMemcpy(pm, c.part_m, sizeof(float) * (size_t)G * n_split, cudaMemcpyDeviceToHost);
        if (e == cudaSuccess) e = cudaMemcpy(pl, c.part_l, sizeof(float) * (size_t)G * n_split, cudaMemcpyDeviceToHost);
        if (e == cudaSuccess && kdeq) e = cudaMemcpy(kdeq, dk, sizeof(float) * (size_t)n * hd, cudaMemcpyDeviceToHost);
        if (e == cudaSuccess && vdeq) e = cudaMemcpy(vdeq, dv, sizeof(float) * (size_t)n * hd, cudaMemcpyDeviceToHost);
        /* the splits merged on the host (as k_attn_merge) */
        for (int j = 0; e == cudaSuccess && !st && j < G; j++) {
            double M = -INFINITY, S = 0;
            for (int s = 0; s < n_split; s++) M = fmax(M, (double)pm[j * n_split + s]);
            for (int d = 0; d < hd; d++) out[j * hd + d] = 0;
            for (int s = 0; s < n_split; s++) {
                if (pm[j * n_split + s] == -INFINITY) continue;
                const double w = exp((double)pm[j * n_split + s] - M);
                S += pl[j * n_split + s] * w;
                for (int d = 0; d < hd; d++) out[j * hd + d] += (float)(po[((int64_t)j * n_split + s) * hd + d] * w);
            }
            for (int d = 0; d < hd; d++) out[j * hd + d] = (float)(out[j * hd + d] / S);
        }
    } else if (e == cudaSuccess) {
        st = skv_set_error(SKV_ERR_NOMEM, "out of memory");
    }
    if (c.st) cudaStreamDestroy(c.st);
    void *ps[] = {c.kv_q, c.kv_rk, c.kv_rv, kd, vd, dk, dv, qd, bt, sl, sq, c.part_o, c.part_m, c.part_l};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) cudaFree(ps[i]);
    free(ids), free(po), free(pm), free(pl);
    CK(e);
    return st;
}
