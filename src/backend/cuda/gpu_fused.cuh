/*
 * gpu_fused.cuh — the fused decode kernels (included by gpu.cu only; SKV_CUDA_FUSE, a mask of
 * FUSE_* parts, gpu_ctx.cuh; off by default: on the H200 they were not faster than the separate
 * kernels under graph replay with early launches, bench/cuda/issue16-fused-h200/README.md):
 * fewer launches per layer, the same arithmetic in the same order as the separate kernels of
 * gpu_kernels.cuh (the same bits, measured at 1, 2, 3 and 5 rows).
 *
 * Per layer at 1..3 rows: qkv GEMV with the RMSNorm in its prologue and RoPE + cache store in
 * its epilogue; decode attention with the split merge done by each (row, KV head)'s last block;
 * o GEMV (residual added in its epilogue, as before); gate/up GEMV with the RMSNorm in its
 * prologue and SwiGLU in its epilogue; down GEMV. Five launches instead of ten.
 */
#ifndef SKV_GPU_FUSED_CUH
#define SKV_GPU_FUSED_CUH

#include "backend/cuda/gpu_device.cuh"
#include "backend/cuda/gpu_gemv.cuh"

/* what the qkv GEMV's epilogue needs for RoPE and the cache store (as k_rope_store's arguments;
 * decode only: row b is sequence rseq[b] at position rpos[b]) */
struct gf_rope {
    float *q;
    bf16 *qb, *kp, *vp;
    const int32_t *bt, *slen, *rpos, *rseq;
    int32_t *spos;
    float *sacc, *swin;
    const float *cosr, *sinr;
    int l, n_seq, mb, H, KVH, hd, n_ctx;
};

/* k_gemv_f modes: the input x bf16 from global memory (PLAIN); the RMSNorm of xf with weight nw
 * computed in the block (NORM, y = xn W^T + bias); NORM + SwiGLU (W = gate | up, h = bf16
 * silu(gate) * up); NORM + RoPE and cache store (W = q | k | v) */
enum { GF_PLAIN = 0, GF_NORM = 1, GF_SWIGLU = 2, GF_ROPE = 3 };

__device__ __forceinline__ uint4 gf_ld_w(const uint4 *p, bool ok) {
    return ok ? ld_stream((const bf16 *)p) : make_uint4(0, 0, 0, 0);
}

/* One warp per output (k_gemv's loop: lane i takes the 16-byte chunks i, i + 32, ... of a row
 * in order, then warp_sum; lane 0 writes), but its first U chunks per weight row are loaded
 * before pdl_wait and the next U while the current U are used. A warp owns NR weight rows: the
 * row (PLAIN, NORM), gate row j and up row F + j (SWIGLU), rows j and j + hd/2 of one head
 * (ROPE: the rotation pair). B: token rows (1..3). out: outputs (PLAIN/NORM: W's rows; SWIGLU:
 * F; ROPE: (H + 2 KVH) hd / 2 pairs, or H hd / 2 for a layer without its own K/V). The NORM
 * modes stage the normalised rows as bf16 in shared memory (B * cols * 2 bytes, dynamic),
 * computed exactly as k_rmsnorm computes them (its 1024 threads' partial sums emulated).
 * Grid: ceil(out / 8) blocks of 256 threads. */
template <int B, int MODE>
__global__ void __launch_bounds__(256) k_gemv_f(const bf16 *__restrict__ W, const bf16 *x, const float *xf,
                                                const float *nw, float eps, float *y, bf16 *h, const float *bias,
                                                int out, int cols, int accumulate, gf_rope rp) {
    constexpr int NR = MODE >= GF_SWIGLU ? 2 : 1, U = NR == 1 ? 4 : 2;
    pdl_trigger();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, wid = blockIdx.x * 8 + warp;
    const bool act = wid < out;
    int wr[NR];
    if (MODE == GF_SWIGLU) wr[0] = wid, wr[NR - 1] = out + wid;
    else if (MODE == GF_ROPE) {
        const int half = rp.hd / 2;
        wr[0] = (wid / half) * rp.hd + wid % half, wr[NR - 1] = wr[0] + half;
    } else wr[0] = wid;
    const uint4 *wp[NR];
#pragma unroll
    for (int r = 0; r < NR; r++) wp[r] = (const uint4 *)(W + (int64_t)(act ? wr[r] : 0) * cols);
    const int n8 = cols >> 3;
    uint4 nb[NR][U];
    auto load = [&](int i0) {
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int r = 0; r < NR; r++) nb[r][u] = gf_ld_w(wp[r] + i0 + 32 * u, act && i0 + 32 * u < n8);
    };
    load(lane); /* weights do not depend on the kernel before */
    pdl_wait();
    extern __shared__ __align__(16) unsigned char gf_smem[];
    bf16 *xs = (bf16 *)gf_smem; /* (B, cols) the normalised rows */
    if (MODE != GF_PLAIN) {
        __shared__ float red[B][32], tot[B];
        /* k_rmsnorm with 1024 threads: thread v sums elements 4v.. step 4096; warp sums; the 32
         * warps' sums by one warp. Here thread t plays v = t + 256 k (warp t / 32 + 8 k). */
#pragma unroll
        for (int b = 0; b < B; b++) {
            const float *xr = xf + (int64_t)b * cols;
#pragma unroll
            for (int k = 0; k < 4; k++) {
                float ss = 0;
                for (int i = (threadIdx.x + 256 * k) * 4; i < cols; i += 1024 * 4) {
                    const float4 v = *(const float4 *)(xr + i);
                    ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
                }
                ss = warp_sum(ss);
                if (lane == 0) red[b][warp + 8 * k] = ss;
            }
        }
        __syncthreads();
        if (warp == 0)
#pragma unroll
            for (int b = 0; b < B; b++) {
                const float v = warp_sum(red[b][lane]);
                if (lane == 0) tot[b] = v;
            }
        __syncthreads();
#pragma unroll
        for (int b = 0; b < B; b++) {
            const float s = rsqrtf(tot[b] / (float)cols + eps);
            const float *xr = xf + (int64_t)b * cols;
            for (int i = threadIdx.x * 4; i < cols; i += 256 * 4) {
                const float4 v = *(const float4 *)(xr + i), g = *(const float4 *)(nw + i);
                __nv_bfloat162 *o = (__nv_bfloat162 *)(xs + (int64_t)b * cols + i);
                o[0] = __floats2bfloat162_rn(g.x * (v.x * s), g.y * (v.y * s));
                o[1] = __floats2bfloat162_rn(g.z * (v.z * s), g.w * (v.w * s));
            }
        }
        __syncthreads();
    }
    if (!act) return;
    const bf16 *xin = MODE == GF_PLAIN ? x : xs;
    float acc[NR][B];
#pragma unroll
    for (int r = 0; r < NR; r++)
#pragma unroll
        for (int b = 0; b < B; b++) acc[r][b] = 0;
    for (int i0 = lane; i0 < n8; i0 += 32 * U) {
        uint4 cur[NR][U];
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int r = 0; r < NR; r++) cur[r][u] = nb[r][u];
        if (i0 + 32 * U < n8) load(i0 + 32 * U);
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int i = i0 + 32 * u;
            if (i >= n8) break;
#pragma unroll
            for (int r = 0; r < NR; r++) {
                float wf[8];
                bf16x8_to_f32(cur[r][u], wf);
#pragma unroll
                for (int b = 0; b < B; b++) {
                    float xv[8];
                    bf16x8_to_f32(*((const uint4 *)(xin + (int64_t)b * cols) + i), xv);
#pragma unroll
                    for (int e = 0; e < 8; e++) acc[r][b] += wf[e] * xv[e];
                }
            }
        }
    }
    float v[NR][B];
#pragma unroll
    for (int r = 0; r < NR; r++)
#pragma unroll
        for (int b = 0; b < B; b++) v[r][b] = warp_sum(acc[r][b]);
    if (lane != 0) return;
    if (MODE == GF_PLAIN || MODE == GF_NORM) {
#pragma unroll
        for (int b = 0; b < B; b++) {
            float s = v[0][b];
            if (bias) s += bias[wid];
            float *o = y + (int64_t)b * out + wid;
            *o = accumulate ? *o + s : s;
        }
    } else if (MODE == GF_SWIGLU) {
#pragma unroll
        for (int b = 0; b < B; b++) {
            const float g = v[0][b], u = v[NR - 1][b];
            h[(int64_t)b * out + wid] = __float2bfloat16(g / (1.0f + __expf(-g)) * u);
        }
    } else { /* GF_ROPE: k_rope_store's arithmetic for the pair (j, j + half) of one head */
        const int half = rp.hd / 2, head = wid / half, j = wid % half;
#pragma unroll
        for (int b = 0; b < B; b++) {
            float a = v[0][b], c = v[NR - 1][b];
            if (bias) a += bias[wr[0]], c += bias[wr[NR - 1]];
            const int pos = rp.rpos[b], seq = rp.rseq[b];
            const float cs = rp.cosr[(int64_t)pos * half + j], sn = rp.sinr[(int64_t)pos * half + j];
            if (head < rp.H) {
                const float na = a * cs - c * sn, nc = c * cs + a * sn;
                const int64_t qo = ((int64_t)b * rp.H + head) * rp.hd;
                rp.q[qo + j] = na, rp.q[qo + j + half] = nc;
                rp.qb[qo + j] = __float2bfloat16(na), rp.qb[qo + j + half] = __float2bfloat16(nc);
                continue;
            }
            const bool is_k = head < rp.H + rp.KVH;
            const int g = is_k ? head - rp.H : head - rp.H - rp.KVH, sid = (rp.l * rp.n_seq + seq) * rp.KVH + g;
            const int slot = rp.slen[sid];
            const int64_t o = slot_row(rp.bt + (int64_t)sid * rp.mb, slot) * rp.hd;
            if (is_k) {
                rp.kp[o + j] = __float2bfloat16(a * cs - c * sn);
                rp.kp[o + j + half] = __float2bfloat16(c * cs + a * sn);
                if (j == 0) {
                    const int64_t so = (int64_t)sid * rp.n_ctx + slot;
                    rp.spos[so] = pos;
                    if (rp.sacc) rp.sacc[so] = 0;
                    if (rp.swin) rp.swin[so] = 0;
                }
            } else {
                rp.vp[o + j] = __float2bfloat16(a);
                rp.vp[o + j + half] = __float2bfloat16(c);
            }
        }
    }
}

__device__ __forceinline__ void gf_cp16(void *smem, const void *gmem, bool ok) {
    const uint32_t s = (uint32_t)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(ok ? 16 : 0) : "memory");
}
__device__ __forceinline__ void gf_commit(void) { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void gf_wait(void) { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

/* k_attn_decode (same grid, arguments and arithmetic; splits of at least min_len keys, 64 there)
 * with two changes: each lane's K
 * and V rows come through a ring of S stages in shared memory (cp.async, S - 1 key steps in
 * flight instead of one, no registers held for them; a lane reads back only what it copied, so
 * no barrier), and the last block of each (row, KV head) to finish — counted in cnt (rows, KVH),
 * which it zeroes again — merges the splits of its G heads as k_attn_merge does, writing att and
 * (lse not NULL) the log-sum-exp. VO only (the KCache scores-only variant keeps the old pair). */
template <int HD, int G, int S>
__global__ void __launch_bounds__(ATT_WARPS * 32)
k_attn_decode_f(const float *q, const bf16 *kp, const bf16 *vp, const bf16 *vd, const int32_t *bt, const int32_t *slen,
                const int32_t *rseq, float *part_o, float *part_m, float *part_l, float *dsc, int layer, int n_seq,
                int mb, int H, int KVH, int n_ctx, int n_split, float scale, int strict, bf16 *att, float *lse,
                int32_t *cnt, int min_len) {
    pdl_trigger();
    pdl_wait();
    constexpr int LPK = HD / 8, KPW = 32 / LPK, NG = ATT_WARPS * KPW, NT = ATT_WARPS * 32;
    constexpr int RING = S * 2 * NT * 16, OSZ = NG * G * HD * 4;
    __shared__ __align__(16) unsigned char sm_raw[RING > OSZ ? RING : OSZ]; /* the ring, sm_o, the merge's */
    static_assert(3 * G * 256 * 4 <= (RING > OSZ ? RING : OSZ), "the merge's staging fits (n_split <= 256)");
    __shared__ float sm_m[NG][G], sm_l[NG][G];
    __shared__ int last;
    uint4 *ring = (uint4 *)sm_raw;                        /* [S][2][NT] */
    float(*sm_o)[G][HD] = (float(*)[G][HD])sm_raw;        /* [NG][G][HD] after the loop */
    const int g = blockIdx.x, sp = blockIdx.y, r = blockIdx.z, tid = threadIdx.x;
    const int seq = rseq[r], sid = (layer * n_seq + seq) * KVH + g, L = slen[sid] + 1 - strict;
    const int32_t *bts = bt + (int64_t)sid * mb;
    const int lane = tid & 31, warp = tid >> 5, sub = lane / LPK, li = lane % LPK;
    const int grp = warp * KPW + sub;
    int split_len = max((L + n_split - 1) / n_split, min_len);
    split_len = (split_len + NG - 1) / NG * NG;
    const int k0 = sp * split_len, k1 = min(L, k0 + split_len);
    /* the splits holding keys (the others are empty: they add exact zeros to the merge's sums) */
    const int n_used = max(min((L + split_len - 1) / split_len, n_split), 1);
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
    const bf16 *vs = vd ? vd + ((int64_t)seq * KVH + g) * n_ctx * HD + li * 8 : NULL;
    /* this lane's key of step t: first + t * NG; the warp's steps (uniform in the warp) */
    const int first = k0 + warp * KPW + sub, wfirst = k0 + warp * KPW;
    const int steps = wfirst < k1 ? (k1 - wfirst + NG - 1) / NG : 0;
    auto issue = [&](int t) {
        const int key = first + t * NG;
        const bool ok = t < steps && key < k1;
        const int64_t ro = ok ? slot_row(bts, key) * HD + li * 8 : 0;
        uint4 *st = ring + (t % S) * 2 * NT;
        gf_cp16(st + tid, kp + ro, ok);
        gf_cp16(st + NT + tid, vs ? vs + (ok ? (int64_t)key * HD : 0) : vp + ro, ok);
        gf_commit();
    };
#pragma unroll
    for (int t = 0; t < S - 1; t++) issue(t);
    for (int t = 0; t < steps; t++) {
        gf_wait<S - 2>(); /* step t has landed */
        const uint4 kr = ring[(t % S) * 2 * NT + tid], vr = ring[(t % S) * 2 * NT + NT + tid];
        issue(t + S - 1); /* into the stage read in step t - 1 (its values already used) */
        const int t0 = wfirst + t * NG;
        const bool ok = first + t * NG < k1;
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
    }
    gf_wait<0>();
    __syncthreads(); /* the ring's memory becomes sm_o */
#pragma unroll
    for (int j = 0; j < G; j++) {
        if (li == 0) sm_m[grp][j] = m[j], sm_l[grp][j] = l[j];
#pragma unroll
        for (int e = 0; e < 8; e++) sm_o[grp][j][li * 8 + e] = o[j][e];
    }
    __syncthreads();
    for (int idx = tid; idx < G * HD; idx += NT) {
        const int j = idx / HD, d = idx % HD;
        float M = -INFINITY;
        for (int x = 0; x < NG; x++) M = fmaxf(M, sm_m[x][j]);
        float Sm = 0, O = 0;
        if (M != -INFINITY)
            for (int x = 0; x < NG; x++) {
                const float w = __expf(sm_m[x][j] - M);
                Sm += sm_l[x][j] * w;
                O += sm_o[x][j][d] * w;
            }
        const int64_t ps = ((int64_t)r * H + g * G + j) * n_split + sp;
        part_o[ps * HD + d] = O;
        if (d == 0) part_m[ps] = M, part_l[ps] = Sm;
    }
    /* the last block of (r, g) merges */
    __threadfence();
    __syncthreads();
    if (tid == 0) last = atomicAdd(cnt + (int64_t)r * KVH + g, 1) == n_split - 1;
    __syncthreads();
    if (!last) return;
    if (tid == 0) cnt[(int64_t)r * KVH + g] = 0; /* for the next launch */
    __threadfence();
    /* all G heads at once (k_attn_merge's sums, each in its order): the splits' maxima, sums and
     * weights staged in shared memory (the ring's memory again, G x 256 each) */
    float *pm = (float *)sm_raw, *pl = pm + G * 256, *pw = pl + G * 256;
    __shared__ float Ms[G], Ss[G];
    const int64_t pb = ((int64_t)r * H + g * G) * n_split; /* head j's split s: pb + j n_split + s */
    for (int i = tid; i < G * n_used; i += NT) {
        const int j = i / n_used, sp2 = i % n_used;
        pm[j * 256 + sp2] = __ldcg(part_m + pb + (int64_t)j * n_split + sp2);
        pl[j * 256 + sp2] = __ldcg(part_l + pb + (int64_t)j * n_split + sp2);
    }
    __syncthreads();
    for (int j = warp; j < G; j += NT / 32) {
        float mx = -INFINITY;
        for (int s2 = lane; s2 < n_used; s2 += 32) mx = fmaxf(mx, pm[j * 256 + s2]);
#pragma unroll
        for (int of = 16; of > 0; of >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, of));
        if (lane == 0) Ms[j] = mx;
    }
    __syncthreads();
    for (int i = tid; i < G * n_used; i += NT) {
        const int j = i / n_used, sp2 = i % n_used;
        const float ms = pm[j * 256 + sp2];
        pw[j * 256 + sp2] = ms == -INFINITY ? 0.0f : __expf(ms - Ms[j]);
    }
    __syncthreads();
    if (tid < G) {
        float Sm = 0;
        for (int s2 = 0; s2 < n_used; s2++) Sm += pl[tid * 256 + s2] * pw[tid * 256 + s2];
        Ss[tid] = Sm;
    }
    constexpr int PER = (G * HD + NT - 1) / NT; /* outputs per thread, their loads interleaved */
    float O[PER];
#pragma unroll
    for (int k = 0; k < PER; k++) O[k] = 0;
#pragma unroll 4
    for (int s2 = 0; s2 < n_used; s2++)
#pragma unroll
        for (int k = 0; k < PER; k++) {
            const int idx = tid + k * NT, j = idx / HD, d = idx % HD;
            if (idx < G * HD) O[k] += __ldcg(part_o + (pb + (int64_t)j * n_split + s2) * HD + d) * pw[j * 256 + s2];
        }
    __syncthreads(); /* Ss */
#pragma unroll
    for (int k = 0; k < PER; k++) {
        const int idx = tid + k * NT, j = idx / HD, d = idx % HD;
        if (idx >= G * HD) continue;
        const float Sm = Ss[j];
        att[((int64_t)r * H + g * G + j) * HD + d] = __float2bfloat16(Sm > 0 ? O[k] / Sm : 0.0f);
        if (lse && d == 0) lse[(int64_t)r * H + g * G + j] = Ms[j] + logf(Sm);
    }
}

#endif
