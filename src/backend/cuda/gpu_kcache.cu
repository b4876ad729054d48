/*
 * gpu_kcache.cu — KCache on the GPU (kv/plan.h's V top-N rule, as the CPU's weigh_vtop runs it):
 * K stays in the paged HBM pool; every V row is written through to pinned, mapped host memory
 * (by stream and slot); HBM keeps only a ring of each stream's newest rows (all rows in cache
 * layers below fast_layers) and the V of the one sequence that is prefilling (kc_vpre, so
 * that prefill attention reads HBM). Per decode step and layer: the scores pass over every key
 * (gpu.cu, k_attn_decode without V), then k_kc_select ranks the slow slots — those older than
 * the newest `recent`, in whole 32-token units, as the CPU's store — by the group's summed or
 * max probability, or each query head's own top N (union), with a radix select on the
 * device (ties: lower slot); k_kc_gather copies the selected rows from host memory over PCIe
 * (zero-copy loads) into a device staging buffer with a few blocks, and k_kc_finish reads them
 * there plus the ring's fast rows, weighted by exp(score - lse) (exact) or that renormalised
 * over the rows read. (Why a separate gather with few blocks: on the H200, random 256-byte
 * reads of a ~100 GB pinned buffer run at 10.6 GB/s from 368 blocks in flight at once, the
 * finish's shape, and at 14.9-15.7 GB/s from 8-16 blocks of 256 threads, whatever the host
 * page size: bench/cuda/kcache-h200/pcie-s5.)
 *
 * Shapes: dsc (rows, H, n_ctx) scaled scores; lse (rows, H); kc_rank, kc_sel (rows, KVH, n_ctx);
 * kc_nsel (rows, KVH); kc_inv (rows, H); kc_stage (rows, KVH, kc_scap, hd).
 */
#include "backend/cuda/gpu_ctx.cuh"
#include "backend/cuda/gpu_device.cuh"

#define KC_THREADS 1024

struct kc_rule {
    int n;          /* rows per stream, or (0) */
    float frac;     /* a fraction of the stream's slots */
    int gran, weight, recent, ut, fast;
};

/* slow slots of a stream holding n0 slots before this step's token (the CPU's offload rule) */
__device__ __forceinline__ int kc_n_slow(const kc_rule &R, int l, int n0) {
    return l < R.fast || n0 < R.recent ? 0 : (n0 - R.recent) / R.ut * R.ut;
}

__device__ __forceinline__ uint32_t kc_ord(float v) {
    const uint32_t u = __float_as_uint(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* exclusive prefix sum of v over the block; *total the sum. sh: 32 ints. */
__device__ int kc_scan(int v, int *sh, int *total) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    int x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    __syncthreads();
    if (lane == 31) sh[w] = x;
    __syncthreads();
    if (w == 0) {
        int t = lane < nw ? sh[lane] : 0;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int y = __shfl_up_sync(0xffffffffu, t, o);
            if (lane >= o) t += y;
        }
        sh[lane] = t;
    }
    __syncthreads();
    *total = sh[nw - 1];
    return (w ? sh[w - 1] : 0) + x - v;
}

__device__ float kc_sum(float v, float *sh) {
    v = warp_sum(v);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    float t = 0;
    for (int w = 0; w < (int)blockDim.x / 32; w++) t += sh[w];
    return t;
}

#define KC_U 8 /* loads in flight per thread in the passes over the ranks */

/* The k-th largest of the 32-bit keys of rk[0..n) (1 <= k <= n) by a radix select, 8 bits a
 * pass: KC_U loads issued before their histogram increments (warp-aggregated), the digit found
 * by warp 0 (8 bins a lane, a prefix sum over lanes); *n_gt: how many keys are larger. */
__device__ uint32_t kc_kth(const float *__restrict__ rk, int n, int k, unsigned *hist, int *sh, int *n_gt) {
    uint32_t prefix = 0, mask = 0;
    int kk = k, gt = 0;
    const int lane = threadIdx.x & 31;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
        __syncthreads();
        for (int b0 = threadIdx.x; b0 < n; b0 += KC_U * blockDim.x) {
            uint32_t x[KC_U];
#pragma unroll
            for (int u = 0; u < KC_U; u++) {
                const int s = b0 + u * blockDim.x;
                x[u] = s < n ? kc_ord(rk[s]) : 0u;
            }
#pragma unroll
            for (int u = 0; u < KC_U; u++) {
                if (b0 + u * (int)blockDim.x < n && (x[u] & mask) == prefix) {
                    const unsigned bin = (x[u] >> shift) & 255u, am = __activemask();
                    const unsigned peers = __match_any_sync(am, bin);
                    if (lane == __ffs(peers) - 1) atomicAdd(&hist[bin], (unsigned)__popc(peers));
                }
            }
        }
        __syncthreads();
        if (threadIdx.x < 32) { /* lane owns bins 255 - 8 lane - i, i = 0..7 (descending) */
            int h[8], tot = 0;
#pragma unroll
            for (int i = 0; i < 8; i++) h[i] = (int)hist[255 - 8 * lane - i], tot += h[i];
            int inc = tot;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const int y = __shfl_up_sync(0xffffffffu, inc, o);
                if (lane >= o) inc += y;
            }
            const unsigned ball = __ballot_sync(0xffffffffu, inc >= kk);
            if (lane == __ffs(ball) - 1) {
                int cum = inc - tot, d = 255 - 8 * lane - 7;
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    if (cum + h[i] >= kk) {
                        d = 255 - 8 * lane - i;
                        break;
                    }
                    cum += h[i];
                }
                sh[0] = cum, sh[1] = d;
            }
        }
        __syncthreads();
        kk -= sh[0], gt += sh[0];
        prefix |= (uint32_t)sh[1] << shift;
        mask |= 255u << shift;
        __syncthreads();
    }
    *n_gt = gt;
    return prefix;
}

/* Mark in `keep` the N best of rk[0..n) (larger first, ties: lower slot first). eq: scratch
 * bitmask. nwords = n / 32 + 1. */
__device__ void kc_top(const float *rk, int n, int N, uint32_t *keep, uint32_t *eq, int nwords, unsigned *hist, int *sh) {
    int gt = 0;
    const uint32_t T = kc_kth(rk, n, N, hist, sh, &gt);
    for (int i = threadIdx.x; i < nwords; i += blockDim.x) eq[i] = 0;
    __syncthreads();
    /* a warp's 32 consecutive slots form one word: ballots, no atomics */
    const int n32 = (n + 31) / 32 * 32;
    for (int b0 = threadIdx.x; b0 < n32; b0 += KC_U * blockDim.x) {
        uint32_t x[KC_U];
#pragma unroll
        for (int u = 0; u < KC_U; u++) {
            const int s = b0 + u * blockDim.x;
            x[u] = s < n ? kc_ord(rk[s]) : 0u;
        }
#pragma unroll
        for (int u = 0; u < KC_U; u++) {
            const int s = b0 + u * blockDim.x;
            if (s - (int)(threadIdx.x & 31) >= n32) break; /* (uniform over the warp) */
            const unsigned g1 = __ballot_sync(0xffffffffu, s < n && x[u] > T), e1 = __ballot_sync(0xffffffffu, s < n && x[u] == T);
            if ((threadIdx.x & 31) == 0) keep[s / 32] |= g1, eq[s / 32] = e1;
        }
    }
    __syncthreads();
    /* the N - gt lowest slots holding the threshold key: words in order, a chunk per thread */
    const int per = (nwords + blockDim.x - 1) / blockDim.x, w0 = threadIdx.x * per, w1 = min(nwords, w0 + per);
    int c = 0;
    for (int w = w0; w < w1; w++) c += __popc(eq[w]);
    int tot;
    int r = kc_scan(c, sh, &tot);
    const int need = N - gt;
    for (int w = w0; w < w1 && r < need; w++) {
        uint32_t b = eq[w], add = 0;
        while (b && r < need) {
            const uint32_t low = b & (~b + 1u);
            add |= low, b ^= low, r++;
        }
        if (add) atomicOr(&keep[w], add);
    }
    __syncthreads();
}

#define KC_NMAX 1024 /* the candidate path's largest N (chunk maxima in shared memory) */
#define KC_CAP 4096  /* and its most candidates (keys and slots in shared memory) */

__device__ unsigned kc_umin(unsigned v, unsigned *sh);

/* The candidate path of k_kc_select (which says why it is exact): marks in keep the N best of
 * rk[0..ns) from the candidates, ranks >= the smallest of the N chunk maxima cmax; returns 0
 * (nothing marked) when there are more than cap (<= KC_CAP). pc: scratch, one word per 32 slots. */
__device__ int kc_cand_top(const float *rk, int ns, int N, int cap, uint32_t *keep, uint32_t *pc, const unsigned *cmax,
                           float *ck, int *cs, uint32_t *ckeep, uint32_t *ceq, unsigned *hist, int *sh) {
    unsigned t = 0xffffffffu;
    for (int i = threadIdx.x; i < N; i += blockDim.x) t = min(t, cmax[i]);
    const unsigned T0 = kc_umin(t, (unsigned *)sh);
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, np = (ns + 31) / 32;
    /* candidates per piece of 32 slots (piece p: slots 32p .. 32p + 31, one warp's ballot) */
    for (int b = 0; b < ns; b += blockDim.x) {
        const int s = b + threadIdx.x;
        const unsigned ball = __ballot_sync(0xffffffffu, s < ns && kc_ord(rk[s]) >= T0);
        if (lane == 0 && b + 32 * w < ns) pc[(b >> 5) + w] = (uint32_t)__popc(ball);
    }
    __syncthreads();
    /* exclusive offsets: a contiguous range of pieces per thread */
    const int per = (np + blockDim.x - 1) / blockDim.x, p0 = threadIdx.x * per, p1 = min(np, p0 + per);
    int c = 0;
    for (int p = p0; p < p1; p++) c += (int)pc[p];
    int tot;
    int o = kc_scan(c, sh, &tot);
    if (tot > cap) return 0; /* (tot is the block's: all threads return) */
    for (int p = p0; p < p1; p++) {
        const int k = (int)pc[p];
        pc[p] = (uint32_t)o, o += k;
    }
    for (int i = threadIdx.x; i < tot / 32 + 1; i += blockDim.x) ckeep[i] = 0;
    __syncthreads();
    for (int b = 0; b < ns; b += blockDim.x) {
        const int s = b + threadIdx.x;
        const float v = s < ns ? rk[s] : 0.0f;
        const bool in = s < ns && kc_ord(v) >= T0;
        const unsigned ball = __ballot_sync(0xffffffffu, in);
        if (in) {
            const int pos = (int)pc[(b >> 5) + w] + __popc(ball & ((1u << lane) - 1u));
            ck[pos] = v, cs[pos] = s;
        }
    }
    __syncthreads();
    kc_top(ck, tot, N, ckeep, ceq, tot / 32 + 1, hist, sh);
    for (int i = threadIdx.x; i < tot; i += blockDim.x)
        if ((ckeep[i >> 5] >> (i & 31)) & 1u) atomicOr(&keep[cs[i] >> 5], 1u << (cs[i] & 31));
    __syncthreads();
    return 1;
}

/* the minimum of v over the block. sh: 32 words. */
__device__ unsigned kc_umin(unsigned v, unsigned *sh) {
    v = __reduce_min_sync(0xffffffffu, v);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    unsigned t = 0xffffffffu;
    for (int w = 0; w < (int)blockDim.x / 32; w++) t = min(t, sh[w]);
    return t;
}

/* Block (KV head g, row r): the slow slots this step reads, ascending, into sel; nsel; each
 * head's weight factor into inv; counters ct[0] (steps with slow rows, counted once per row in
 * the first KCache layer) and ct[1] (rows).
 * cap > 0 (granularity sum or max, N <= KC_NMAX; the default, SKV_KC_PROFILE=prevselect gives
 * cap 0): the slots are dealt into N chunks (slot s into chunk s % N) whose maxima the rank pass
 * keeps; the smallest of those maxima, T0, is at most the N-th largest rank (N disjoint chunks
 * each hold one rank >= T0), so every slot of the top N (ties included) has a rank >= T0. Those
 * candidates, usually a few hundred, are compacted in slot order into shared memory and the
 * radix select (kc_top) runs over them alone: the same set as kc_top over all ranks (same keys,
 * ties to the lower slot), with two passes over the ranks instead of five. More than cap
 * candidates (flat ranks; cap is KC_CAP, or $SKV_KC_CAP for tests): kc_top over all ranks, as
 * with cap 0. */
__global__ void __launch_bounds__(KC_THREADS) k_kc_select(const float *dsc, float *lse, const float *part_m,
                                                          const float *part_l, int n_split, const int32_t *slen,
                                                          const int32_t *rseq, float *rank, int32_t *sel, int32_t *nsel,
                                                          float *inv, unsigned long long *ct, kc_rule R, int l,
                                                          int n_seq, int H, int KVH, int n_ctx, int g0, int cap) {
    extern __shared__ uint32_t kc_bits[]; /* keep, eq: nwords each */
    __shared__ unsigned hist[256], cmax[KC_NMAX];
    __shared__ float ck[KC_CAP];
    __shared__ int cs[KC_CAP];
    __shared__ uint32_t ckeep[KC_CAP / 32 + 1], ceq[KC_CAP / 32 + 1];
    __shared__ int sh[33];
    __shared__ float shf[33], ls[G_MAX];
    const int g = g0 + blockIdx.x, r = blockIdx.y, G = H / KVH;
    const int sid = (l * n_seq + rseq[r]) * KVH + g, n0 = slen[sid], L = n0 + 1;
    const int ns = kc_n_slow(R, l, n0);
    int N = R.n > 0 ? R.n : (int)(R.frac * (float)L + 0.5f);
    N = min(max(N, 1), ns);
    const float *sc = dsc + ((int64_t)r * H + g * G) * n_ctx;
    /* each head's log-sum-exp: from the scores pass's splits (part_m, part_l; written to lse for
     * the finish), or (part_m NULL) already in lse */
    for (int j = threadIdx.x >> 5; j < G; j += blockDim.x >> 5) {
        const int lane = threadIdx.x & 31;
        const int64_t h = (int64_t)r * H + g * G + j;
        if (!part_m) {
            if (lane == 0) ls[j] = lse[h];
            continue;
        }
        float M = -INFINITY, S = 0;
        for (int s = lane; s < n_split; s += 32) M = fmaxf(M, part_m[h * n_split + s]);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
        for (int s = lane; s < n_split; s += 32) {
            const float ms = part_m[h * n_split + s];
            S += ms == -INFINITY ? 0.0f : part_l[h * n_split + s] * __expf(ms - M);
        }
        S = warp_sum(S);
        if (lane == 0) ls[j] = M + logf(S), lse[h] = ls[j];
    }
    __syncthreads();
    int32_t *out = sel + ((int64_t)r * KVH + g) * n_ctx;
    float *rk = rank + ((int64_t)r * KVH + g) * n_ctx;
    const int nwords = ns / 32 + 1;
    uint32_t *keep = kc_bits, *eq = kc_bits + nwords;
    int cnt = ns;
    if (N >= ns) {
        for (int s = threadIdx.x; s < ns; s += blockDim.x) out[s] = s;
    } else {
        for (int i = threadIdx.x; i < nwords; i += blockDim.x) keep[i] = 0;
        __syncthreads();
        if (R.gran == SKV_VTOP_UNION) {
            for (int j = 0; j < G; j++) {
                for (int s = threadIdx.x; s < ns; s += blockDim.x) rk[s] = expf(sc[(int64_t)j * n_ctx + s] - ls[j]);
                __syncthreads();
                kc_top(rk, ns, N, keep, eq, nwords, hist, sh);
            }
        } else {
            const bool cpath = cap > 0 && N <= KC_NMAX;
            if (cpath) {
                for (int i = threadIdx.x; i < N; i += blockDim.x) cmax[i] = 0u;
                __syncthreads();
            }
            for (int b0 = threadIdx.x; b0 < ns; b0 += 4 * blockDim.x) {
                float d[4][G_MAX];
#pragma unroll
                for (int u = 0; u < 4; u++) {
                    const int s = b0 + u * blockDim.x;
#pragma unroll
                    for (int j = 0; j < G_MAX; j++) d[u][j] = j < G && s < ns ? sc[(int64_t)j * n_ctx + s] : 0.0f;
                }
#pragma unroll
                for (int u = 0; u < 4; u++) {
                    const int s = b0 + u * blockDim.x;
                    if (s >= ns) break;
                    float v = expf(d[u][0] - ls[0]);
#pragma unroll
                    for (int j = 1; j < G_MAX; j++) {
                        if (j >= G) break;
                        const float p = expf(d[u][j] - ls[j]);
                        v = R.gran == SKV_VTOP_MAX ? fmaxf(v, p) : v + p;
                    }
                    rk[s] = v;
                    if (cpath) atomicMax(&cmax[s % N], kc_ord(v));
                }
            }
            __syncthreads();
            if (!cpath || !kc_cand_top(rk, ns, N, cap, keep, eq, cmax, ck, cs, ckeep, ceq, hist, sh))
                kc_top(rk, ns, N, keep, eq, nwords, hist, sh);
        }
        /* compaction: ascending slots */
        const int per = (nwords + blockDim.x - 1) / blockDim.x, w0 = threadIdx.x * per, w1 = min(nwords, w0 + per);
        int c = 0;
        for (int w = w0; w < w1; w++) c += __popc(keep[w]);
        int o = kc_scan(c, sh, &cnt);
        for (int w = w0; w < w1; w++)
            for (uint32_t b = keep[w]; b; b &= b - 1) out[o++] = w * 32 + __ffs(b) - 1;
    }
    __syncthreads();
    for (int j = 0; j < G; j++) { /* renormalised: 1 / (the head's mass on the rows read) */
        float z = 0;
        const bool renorm = R.weight == SKV_VTOP_RENORM && cnt < ns;
        if (renorm) {
            for (int i = threadIdx.x; i < cnt; i += blockDim.x) z += expf(sc[(int64_t)j * n_ctx + out[i]] - ls[j]);
            for (int s = ns + threadIdx.x; s < L; s += blockDim.x) z += expf(sc[(int64_t)j * n_ctx + s] - ls[j]);
            z = kc_sum(z, shf);
        }
        if (threadIdx.x == 0) inv[(int64_t)r * H + g * G + j] = !renorm ? 1.0f : z > 0 ? 1.0f / z : 0.0f;
    }
    if (threadIdx.x == 0) {
        nsel[(int64_t)r * KVH + g] = cnt;
        if (cnt) atomicAdd(ct + 1, (unsigned long long)cnt);
        if (g == 0 && l == R.fast && ns > 0) atomicAdd(ct, 1ull);
    }
}

/* The scores pass (K only). Block (KV head g0 + x, split, row r): the G query heads of KV head g
 * against the split's slots of stream (l, row r's sequence, g), the new one included. Lanes in
 * groups of HD/8 read one key row with 16-byte loads; each group keeps KS_U rows in flight (the
 * loads of KS_U warp-steps issued before any is used: no V, so the registers allow it, and no
 * output rows in shared memory, so several blocks fit an SM). Writes every scaled score into
 * dsc (n rows, H, n_ctx; lane j of a group writes head j) unless dsc is NULL, and the split's
 * (max, sum of exp) into part_m, part_l ((rows, H, n_split)). */
#define KS_WARPS 4
#define KS_U 4
template <int HD, int G>
__global__ void __launch_bounds__(KS_WARPS * 32, 3)
k_kc_scores(const float *q, const bf16 *kp, const int32_t *bt, const int32_t *slen, const int32_t *rseq, float *part_m,
            float *part_l, float *dsc, int l, int n_seq, int mb, int H, int KVH, int n_ctx, int n_split, float scale,
            int g0) {
    constexpr int LPK = HD / 8, KPW = 32 / LPK, NG = KS_WARPS * KPW;
    __shared__ float sm_m[NG][G], sm_l[NG][G];
    const int g = g0 + blockIdx.x, sp = blockIdx.y, r = blockIdx.z;
    const int sid = (l * n_seq + rseq[r]) * KVH + g, L = slen[sid] + 1;
    const int32_t *bts = bt + (int64_t)sid * mb;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, sub = lane / LPK, li = lane % LPK;
    const int grp = warp * KPW + sub;
    int split_len = max((L + n_split - 1) / n_split, 64);
    split_len = (split_len + NG - 1) / NG * NG;
    const int k0 = sp * split_len, k1 = min(L, k0 + split_len);
    float qv[G][8], m[G], lsum[G];
#pragma unroll
    for (int j = 0; j < G; j++) {
        m[j] = -INFINITY, lsum[j] = 0;
#pragma unroll
        for (int e = 0; e < 8; e++) qv[j][e] = q[((int64_t)r * H + g * G + j) * HD + li * 8 + e] * scale;
    }
    float *sc = dsc ? dsc + ((int64_t)r * H + g * G) * n_ctx : NULL;
    const uint4 zero4 = make_uint4(0, 0, 0, 0);
    /* the loop is uniform over the warp (shuffles); rows past k1 are masked */
    for (int t0 = k0 + warp * KPW + sub; t0 - sub < k1; t0 += KS_U * NG) {
        uint4 kr[KS_U];
#pragma unroll
        for (int u = 0; u < KS_U; u++) {
            const int t = t0 + u * NG;
            kr[u] = t < k1 ? *(const uint4 *)(kp + slot_row(bts, t) * HD + li * 8) : zero4;
        }
        float d[KS_U][G];
#pragma unroll
        for (int u = 0; u < KS_U; u++) {
            float kf[8];
            bf16x8_to_f32(kr[u], kf);
#pragma unroll
            for (int j = 0; j < G; j++) {
                float x = 0;
#pragma unroll
                for (int e = 0; e < 8; e++) x += qv[j][e] * kf[e];
#pragma unroll
                for (int off = LPK / 2; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
                d[u][j] = x;
            }
        }
        if (t0 < k1) { /* (row u = 0 is the group's first; a later one is in range only if it is) */
#pragma unroll
            for (int j = 0; j < G; j++) {
                float mx = m[j];
#pragma unroll
                for (int u = 0; u < KS_U; u++)
                    if (t0 + u * NG < k1) mx = fmaxf(mx, d[u][j]);
                float sum = lsum[j] * __expf(m[j] - mx);
#pragma unroll
                for (int u = 0; u < KS_U; u++)
                    if (t0 + u * NG < k1) sum += __expf(d[u][j] - mx);
                lsum[j] = sum, m[j] = mx;
            }
            if (sc && li < G)
#pragma unroll
                for (int u = 0; u < KS_U; u++) {
                    float v = d[u][0];
#pragma unroll
                    for (int j = 1; j < G; j++)
                        if (li == j) v = d[u][j];
                    if (t0 + u * NG < k1) sc[(int64_t)li * n_ctx + t0 + u * NG] = v;
                }
        }
    }
    if (li == 0)
#pragma unroll
        for (int j = 0; j < G; j++) sm_m[grp][j] = m[j], sm_l[grp][j] = lsum[j];
    __syncthreads();
    if (threadIdx.x < G) {
        const int j = threadIdx.x;
        float M = -INFINITY, S = 0;
        for (int x = 0; x < NG; x++) M = fmaxf(M, sm_m[x][j]);
        if (M != -INFINITY)
            for (int x = 0; x < NG; x++) S += sm_l[x][j] * __expf(sm_m[x][j] - M);
        const int64_t ps = ((int64_t)r * H + g * G + j) * n_split + sp;
        part_m[ps] = M, part_l[ps] = S;
    }
}

/* The scores pass, transposed (the default; k_kc_scores above is the previous one, kept as the
 * "prevscores" variant). Block (KV head g0 + x, split, row r) as there; lanes in groups of HD/8
 * read one key row each with 16-byte loads, a group taking KT_U consecutive rows per iteration,
 * and the next iteration's rows are loaded before this one's are used (two sets of registers:
 * loads always in flight). Each lane's KT_U x G partial dot products are then summed over the
 * group by a butterfly that halves the values a lane holds at each step (kt_fold: KT_U x G x
 * 15/16 shuffles instead of 4 per value for HD 128), so that afterwards every lane holds whole
 * scores of its own (row, head) pairs: one exp per score, not one per lane of the group, and one
 * store per score. Per lane a running (max, sum of exp) per value slot (slot i of lane li always
 * holds the same head), merged per head at the end. Same outputs as k_kc_scores (part_m, part_l
 * per split; every scaled score into dsc unless NULL); the sums are in another order. */
#define KT_WARPS 4
#define KT_U 4

__host__ __device__ constexpr int kt_pow2(int v) { return v <= 1 ? 1 : 2 * kt_pow2((v + 1) / 2); }
__host__ __device__ constexpr int kt_log2(int v) { return v <= 1 ? 0 : 1 + kt_log2(v / 2); }

/* sum C values over the lanes of a group of 2 B lanes (B the highest lane bit left), halving C
 * while it is >= 2: lane bit B set keeps the upper half, receives its partner's upper half */
template <int C, int B>
__device__ __forceinline__ void kt_fold(float *v, int li) {
    if constexpr (B >= 1) {
        if constexpr (C >= 2) {
            const bool hi = (li & B) != 0;
#pragma unroll
            for (int i = 0; i < C / 2; i++) {
                const float send = hi ? v[i] : v[i + C / 2], keep = hi ? v[i + C / 2] : v[i];
                v[i] = keep + __shfl_xor_sync(0xffffffffu, send, B);
            }
            kt_fold<C / 2, B / 2>(v, li);
        } else {
            v[0] += __shfl_xor_sync(0xffffffffu, v[0], B);
            kt_fold<1, B / 2>(v, li);
        }
    }
}

template <int HD, int G>
__global__ void __launch_bounds__(KT_WARPS * 32, 4)
k_kc_scores_t(const float *q, const bf16 *kp, const int32_t *bt, const int32_t *slen, const int32_t *rseq,
              float *part_m, float *part_l, float *dsc, int l, int n_seq, int mb, int H, int KVH, int n_ctx,
              int n_split, float scale, int g0) {
    constexpr int LPK = HD / 8, KPW = 32 / LPK, NG = KT_WARPS * KPW, RIT = NG * KT_U;
    constexpr int V = KT_U * G, VP = kt_pow2(V), CF = VP >= LPK ? VP / LPK : 1;
    constexpr int S = VP >= LPK ? 0 : kt_log2(LPK / VP); /* lanes li >> S hold the same values */
    __shared__ float sm_m[KT_WARPS * 32][CF], sm_l[KT_WARPS * 32][CF];
    const int g = g0 + blockIdx.x, sp = blockIdx.y, r = blockIdx.z;
    const int sid = (l * n_seq + rseq[r]) * KVH + g, L = slen[sid] + 1;
    const int32_t *bts = bt + (int64_t)sid * mb;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, li = lane % LPK;
    const int grp = warp * KPW + lane / LPK;
    /* the splits of k_kc_scores (the same slots per split) */
    int split_len = max((L + n_split - 1) / n_split, 64);
    split_len = (split_len + NG - 1) / NG * NG;
    const int k0 = sp * split_len, k1 = min(L, k0 + split_len);
    float qv[G][8];
#pragma unroll
    for (int j = 0; j < G; j++)
#pragma unroll
        for (int e = 0; e < 8; e++) qv[j][e] = q[((int64_t)r * H + g * G + j) * HD + li * 8 + e] * scale;
    /* value slot i of this lane: index base + i = u G + j (row u of the group's KT_U, head j) */
    const int base = (li >> S) * CF;
    const bool owner = (li & ((1 << S) - 1)) == 0;
    float m[CF], ls[CF];
#pragma unroll
    for (int i = 0; i < CF; i++) m[i] = -INFINITY, ls[i] = 0;
    float *sc = dsc ? dsc + ((int64_t)r * H + g * G) * n_ctx : NULL;
    const uint4 zero4 = make_uint4(0, 0, 0, 0);
    uint4 cur[KT_U], nxt[KT_U];
#pragma unroll
    for (int u = 0; u < KT_U; u++) {
        const int t = k0 + grp * KT_U + u;
        cur[u] = t < k1 ? *(const uint4 *)(kp + slot_row(bts, t) * HD + li * 8) : zero4;
    }
    for (int b0 = k0; b0 < k1; b0 += RIT) { /* uniform over the block */
        const int t0 = b0 + grp * KT_U;
#pragma unroll
        for (int u = 0; u < KT_U; u++) {
            const int t = t0 + RIT + u;
            nxt[u] = t < k1 ? *(const uint4 *)(kp + slot_row(bts, t) * HD + li * 8) : zero4;
        }
        float v[VP];
#pragma unroll
        for (int u = 0; u < KT_U; u++) {
            float kf[8];
            bf16x8_to_f32(cur[u], kf);
#pragma unroll
            for (int j = 0; j < G; j++) {
                float x = 0;
#pragma unroll
                for (int e = 0; e < 8; e++) x += qv[j][e] * kf[e];
                v[u * G + j] = x;
            }
        }
#pragma unroll
        for (int i = V; i < VP; i++) v[i] = 0;
        kt_fold<VP, LPK / 2>(v, li);
#pragma unroll
        for (int i = 0; i < CF; i++) {
            const int idx = base + i, u = idx / G, j = idx % G, t = t0 + u;
            if (idx < V && t < k1) {
                const float d = v[i], mx = fmaxf(m[i], d);
                ls[i] = ls[i] * __expf(m[i] - mx) + __expf(d - mx);
                m[i] = mx;
                if (sc && owner) sc[(int64_t)j * n_ctx + t] = d;
            }
        }
#pragma unroll
        for (int u = 0; u < KT_U; u++) cur[u] = nxt[u];
    }
#pragma unroll
    for (int i = 0; i < CF; i++) sm_m[threadIdx.x][i] = m[i], sm_l[threadIdx.x][i] = ls[i];
    __syncthreads();
    /* head j by warp j % KT_WARPS: every (thread, slot) holding j (duplicates and padding hold
     * (-inf, 0) or are skipped) */
    for (int j = warp; j < G; j += KT_WARPS) {
        float M = -INFINITY;
        for (int e = lane; e < KT_WARPS * 32 * CF; e += 32) {
            const int t = e / CF, i = e % CF, idx = (((t & 31) % LPK) >> S) * CF + i;
            if (idx < V && idx % G == j) M = fmaxf(M, sm_m[t][i]);
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
        float Ssum = 0;
        if (M != -INFINITY)
            for (int e = lane; e < KT_WARPS * 32 * CF; e += 32) {
                const int t = e / CF, i = e % CF, idx = (((t & 31) % LPK) >> S) * CF + i;
                const bool own = (((t & 31) % LPK) & ((1 << S) - 1)) == 0;
                if (own && idx < V && idx % G == j && sm_m[t][i] != -INFINITY) Ssum += sm_l[t][i] * __expf(sm_m[t][i] - M);
            }
        Ssum = warp_sum(Ssum);
        if (lane == 0) {
            const int64_t ps = ((int64_t)r * H + g * G + j) * n_split + sp;
            part_m[ps] = M, part_l[ps] = Ssum;
        }
    }
}

/* Block (KV head g, row r): the group's attention output from the selected host rows and the
 * ring's fast rows (slots ns .. L-1), weights exp(score - lse) * inv. Lanes in groups of HD/8
 * read one row with 16-byte loads, FU selected rows (four; eight in the "fin8" variant) and four
 * ring rows in flight per group. The selected rows come from the staging buffer (stage, scap
 * rows per (row, KV head), in selection order: k_kc_gather) or, stage NULL (the "direct"
 * variant), from host memory; the same values in the same order either way. */
template <int HD, int G, int FU>
__global__ void __launch_bounds__(128) k_kc_finish(const float *dsc, const float *lse, const float *inv,
                                                   const int32_t *slen, const int32_t *rseq, const int32_t *sel,
                                                   const int32_t *nsel, const bf16 *vh, const bf16 *stage, int scap,
                                                   const bf16 *vd, int vw, bf16 *att, kc_rule R, int l, int n_seq, int H,
                                                   int KVH, int n_ctx, int no_host, int g0) {
    constexpr int LPK = HD / 8, RPW = 32 / LPK, NGR = 4 * RPW;
    __shared__ float sm[NGR][G][HD];
    const int g = g0 + blockIdx.x, r = blockIdx.y, seq = rseq[r];
    const int sid = (l * n_seq + seq) * KVH + g, n0 = slen[sid], L = n0 + 1, ns = kc_n_slow(R, l, n0);
    const int cnt = no_host ? 0 : nsel[(int64_t)r * KVH + g];
    const int lane = threadIdx.x & 31, li = lane % LPK, grp = (threadIdx.x >> 5) * RPW + lane / LPK;
    const float *sc = dsc + ((int64_t)r * H + g * G) * n_ctx;
    const int32_t *sl = sel + ((int64_t)r * KVH + g) * n_ctx;
    float lj[G], ij[G], o[G][8];
#pragma unroll
    for (int j = 0; j < G; j++) {
        lj[j] = lse[(int64_t)r * H + g * G + j], ij[j] = inv[(int64_t)r * H + g * G + j];
#pragma unroll
        for (int e = 0; e < 8; e++) o[j][e] = 0;
    }
    auto add = [&](int s, uint4 v) {
        float vf[8];
        bf16x8_to_f32(v, vf);
#pragma unroll
        for (int j = 0; j < G; j++) {
            const float w = expf(sc[(int64_t)j * n_ctx + s] - lj[j]) * ij[j];
#pragma unroll
            for (int e = 0; e < 8; e++) o[j][e] += w * vf[e];
        }
    };
    const bf16 *hrow = vh + (int64_t)sid * n_ctx * HD + li * 8;
    const bf16 *srow = stage ? stage + ((int64_t)r * KVH + g) * scap * HD + li * 8 : NULL;
    for (int i0 = grp; i0 < cnt; i0 += FU * NGR) {
        int s[FU];
        uint4 v[FU];
#pragma unroll
        for (int u = 0; u < FU; u++) {
            const int i = i0 + u * NGR;
            s[u] = i < cnt ? sl[i] : -1;
        }
#pragma unroll
        for (int u = 0; u < FU; u++)
            v[u] = s[u] < 0 ? make_uint4(0, 0, 0, 0)
                   : srow ? *(const uint4 *)(srow + (int64_t)(i0 + u * NGR) * HD)
                          : *(const uint4 *)(hrow + (int64_t)s[u] * HD);
#pragma unroll
        for (int u = 0; u < FU; u++)
            if (s[u] >= 0) add(s[u], v[u]);
    }
    const bf16 *drow = vd + ((int64_t)seq * KVH + g) * vw * HD + li * 8;
    for (int s0 = ns + grp; s0 < L; s0 += 4 * NGR) {
        uint4 v[4];
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const int s = s0 + u * NGR;
            v[u] = s < L ? *(const uint4 *)(drow + (int64_t)(s % vw) * HD) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < 4; u++)
            if (s0 + u * NGR < L) add(s0 + u * NGR, v[u]);
    }
#pragma unroll
    for (int j = 0; j < G; j++)
#pragma unroll
        for (int e = 0; e < 8; e++) sm[grp][j][li * 8 + e] = o[j][e];
    __syncthreads();
    for (int idx = threadIdx.x; idx < G * HD; idx += blockDim.x) {
        const int j = idx / HD, d = idx % HD;
        float t = 0;
        for (int x = 0; x < NGR; x++) t += sm[x][j][d];
        att[((int64_t)r * H + g * G + j) * HD + d] = __float2bfloat16(t);
    }
}

/* The selected host rows of KV heads [g0, g0 + gn) for n rows into the staging buffer: task t =
 * (item, i), item = (row, head) r * gn + (g - g0), i < scap, row i of the item's selection
 * (skipped past nsel); lanes in groups of HD/8 move one 256-byte row (HD 128) with 16-byte
 * loads, FU rows in flight per group, consecutive groups on consecutive rows of one stream. A
 * few blocks only (SKV_KC_GATHER): fewer host reads in flight run faster (the header). */
#define KG_THREADS 256
#define KG_U 16
template <int HD>
__global__ void __launch_bounds__(KG_THREADS) k_kc_gather(const int32_t *sel, const int32_t *nsel, const int32_t *rseq,
                                                        const bf16 *vh, bf16 *stage, int l, int n_seq, int KVH, int n_ctx,
                                                        int g0, int gn, int n, int scap) {
    constexpr int LPK = HD / 8;
    const int li = threadIdx.x % LPK;
    const int64_t NG = (int64_t)gridDim.x * KG_THREADS / LPK, T = (int64_t)n * gn * scap;
    for (int64_t t0 = ((int64_t)blockIdx.x * KG_THREADS + threadIdx.x) / LPK; t0 < T; t0 += KG_U * NG) {
        uint4 v[KG_U];
        int64_t dst[KG_U];
#pragma unroll
        for (int u = 0; u < KG_U; u++) {
            const int64_t t = t0 + u * NG;
            dst[u] = -1;
            if (t >= T) continue;
            const int item = (int)(t / scap), i = (int)(t % scap), r = item / gn, g = g0 + item % gn;
            const int64_t rg = (int64_t)r * KVH + g;
            if (i >= nsel[rg]) continue;
            const int64_t sid = ((int64_t)l * n_seq + rseq[r]) * KVH + g;
            v[u] = *(const uint4 *)(vh + (sid * n_ctx + sel[rg * n_ctx + i]) * HD + li * 8);
            dst[u] = (rg * scap + i) * HD + li * 8;
        }
#pragma unroll
        for (int u = 0; u < KG_U; u++)
            if (dst[u] >= 0) *(uint4 *)(stage + dst[u]) = v[u];
    }
}

/* Ring rows of slots [from - vw, from) of sequence seq's streams in layers >= fast, from the
 * host rows (after a truncation): block (layer - fast) * KVH + g. */
__global__ void k_kc_ring_fill(bf16 *vd0, const bf16 *vh, int64_t layer_rows, int vw, int fast, int seq, int from,
                               int n_seq, int KVH, int hd, int n_ctx) {
    const int l = fast + blockIdx.x / KVH, g = blockIdx.x % KVH, sid = (l * n_seq + seq) * KVH + g;
    bf16 *vd = vd0 + ((int64_t)(l - fast) * layer_rows + ((int64_t)seq * KVH + g) * vw) * hd;
    const int s0 = max(0, from - vw), nch = hd / 8;
    for (int i = threadIdx.x; i < (from - s0) * nch; i += blockDim.x) {
        const int s = s0 + i / nch, ch = i % nch;
        ((uint4 *)(vd + (int64_t)(s % vw) * hd))[ch] = ((const uint4 *)(vh + ((int64_t)sid * n_ctx + s) * hd))[ch];
    }
}

/* ------------------------------------------------------------------------------------------ */

#define ALLOC(p, n) CK(cudaMalloc((void **)&(p), (size_t)(n) * sizeof(*(p))))

static int kc_smem(const skv_gpu_ctx *c) { return (int)sizeof(uint32_t) * 2 * (c->n_ctx / 32 + 1); }

static kc_rule rule_of(const skv_gpu_ctx *c) {
    const skv_vtop_rule *v = &c->pol.vtop;
    return kc_rule{v->n, v->frac, v->gran, v->weight, v->recent, c->kc_ut, v->fast_layers};
}

skv_status gpu_kc_alloc(skv_gpu_ctx *c) {
    const skv_gpu_model *g = c->g;
    const skv_vtop_rule *v = &c->pol.vtop;
    if (g->H / g->KVH > G_MAX || g->hd != (g->hd == 128 ? 128 : 64))
        return skv_set_error(SKV_ERR_UNSUPPORTED, "KCache on CUDA: head_dim 64 or 128 and at most %d query heads per KV "
                             "head", G_MAX);
    if (g->CL != g->L)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "KCache on CUDA: a model whose layers share caches (layer_types: "
                             "%d cache layers of %d)", g->CL, g->L);
    if (v->fast_layers < 0 || v->fast_layers > g->L || v->recent < 0)
        return skv_set_error(SKV_ERR_ARG, "KCache on CUDA: fast_layers %d, recent %d", v->fast_layers, v->recent);
    c->kc_ut = 32; /* the CPU's mmap store moves blocks of SKV_KV_BLOCK = 32 tokens */
    c->kc_ring = v->recent + c->kc_ut;
    if (c->kc_ring > c->n_ctx) c->kc_ring = c->n_ctx;
    c->kc_pre_seq = -1;
    c->kc_voff = (int64_t *)calloc((size_t)g->L, sizeof(int64_t));
    c->kc_vw = (int32_t *)calloc((size_t)g->L, sizeof(int32_t));
    if (!c->kc_voff || !c->kc_vw) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    int64_t rows = 0;
    for (int l = 0; l < g->L; l++) {
        c->kc_voff[l] = rows;
        c->kc_vw[l] = l < v->fast_layers ? c->n_ctx : c->kc_ring;
        rows += (int64_t)c->n_seq * g->KVH * c->kc_vw[l];
    }
    const int64_t S = c->n_streams, T = c->n_ctx, hd = g->hd, R = c->n_seq;
    ALLOC(c->kc_vdev, rows * hd);
    ALLOC(c->kc_vpre, (int64_t)g->L * g->KVH * T * hd);
    ALLOC(c->kc_rank, R * g->KVH * T);
    ALLOC(c->kc_sel, R * g->KVH * T);
    ALLOC(c->kc_nsel, R * g->KVH);
    ALLOC(c->kc_inv, R * g->H);
    ALLOC(c->kc_ct, 2);
    CK(cudaMemset(c->kc_ct, 0, 2 * sizeof(unsigned long long)));
    /* the staging buffer: at most N rows per (row, KV head) (N of a fraction: of n_ctx slots,
     * rounded as k_kc_select does), G N with the union of the heads' own sets, at most n_ctx */
    {
        int64_t nmax = v->n > 0 ? v->n : (int64_t)(v->frac * (float)c->n_ctx + 0.5f) + 1;
        if (v->gran == SKV_VTOP_UNION) nmax *= g->H / g->KVH;
        c->kc_scap = (int)(nmax < T ? nmax : T);
        if (c->kc_scap < 1) c->kc_scap = 1;
    }
    ALLOC(c->kc_stage, R * g->KVH * c->kc_scap * hd);
    const char *gb = getenv("SKV_KC_GATHER");
    c->kc_gblocks = gb ? atoi(gb) : 8;
    if (gb && (c->kc_gblocks < 1 || c->kc_gblocks > 1024))
        return skv_set_error(SKV_ERR_ARG, "SKV_KC_GATHER=%s: 1 to 1024 blocks", gb);
    CK(cudaHostAlloc((void **)&c->kc_vhost_h, sizeof(bf16) * (size_t)(S * T * hd), cudaHostAllocMapped));
    CK(cudaHostGetDevicePointer((void **)&c->kc_vhost, c->kc_vhost_h, 0));
    /* the finish's stream (chunks > 1): high priority, so that its blocks (waiting on PCIe) get
     * SM slots between the scores pass's; chunks of KV heads: $SKV_KC_CHUNKS (1 to 8, at most
     * KVH), default 1 (gpu_kc_decode says why) */
    int lo = 0, hi = 0;
    CK(cudaDeviceGetStreamPriorityRange(&lo, &hi));
    CK(cudaStreamCreateWithPriority(&c->kc_st, cudaStreamNonBlocking, hi));
    for (int i = 0; i < KC_MAX_CHUNKS; i++) CK(cudaEventCreateWithFlags(&c->kc_ev[i], cudaEventDisableTiming));
    CK(cudaEventCreateWithFlags(&c->kc_join, cudaEventDisableTiming));
    const char *ce = getenv("SKV_KC_CHUNKS");
    c->kc_chunks = ce ? atoi(ce) : 0;
    if (ce && (c->kc_chunks < 1 || c->kc_chunks > KC_MAX_CHUNKS))
        return skv_set_error(SKV_ERR_ARG, "SKV_KC_CHUNKS=%s: 1 to %d", ce, KC_MAX_CHUNKS);
    if (c->kc_chunks > g->KVH) c->kc_chunks = g->KVH;
    /* the selection's candidate capacity: KC_CAP, or less ($SKV_KC_CAP, for tests of the fallback) */
    const char *ca = getenv("SKV_KC_CAP");
    c->kc_cap = ca ? atoi(ca) : KC_CAP;
    if (ca && (c->kc_cap < 1 || c->kc_cap > KC_CAP)) return skv_set_error(SKV_ERR_ARG, "SKV_KC_CAP=%s: 1 to %d", ca, KC_CAP);
    /* (the static shared memory is about 39 KB: over 48 KB in all needs the opt-in) */
    CK(cudaFuncSetAttribute(k_kc_select, cudaFuncAttributeMaxDynamicSharedMemorySize, kc_smem(c)));
    return SKV_OK;
}

void gpu_kc_free(skv_gpu_ctx *c) {
    if (c->kc_st) cudaStreamSynchronize(c->kc_st), cudaStreamDestroy(c->kc_st);
    for (int i = 0; i < KC_MAX_CHUNKS; i++)
        if (c->kc_ev[i]) cudaEventDestroy(c->kc_ev[i]);
    if (c->kc_join) cudaEventDestroy(c->kc_join);
    void *ps[] = {c->kc_vdev, c->kc_vpre, c->kc_rank, c->kc_sel, c->kc_nsel, c->kc_inv, c->kc_ct, c->kc_stage};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) cudaFree(ps[i]);
    if (c->kc_vhost_h) cudaFreeHost(c->kc_vhost_h);
    free(c->kc_voff), free(c->kc_vw);
}

bf16 *gpu_kc_vbase(const skv_gpu_ctx *c, int l) { return c->kc_vdev + c->kc_voff[l] * c->g->hd; }

skv_status gpu_kc_prefill_begin(skv_gpu_ctx *c, int seq, int pos0, int n) {
    const skv_gpu_model *g = c->g;
    if (c->kc_pre_seq != seq) c->kc_pre_seq = seq, c->kc_pre_n = 0;
    if (c->kc_pre_n > pos0) c->kc_pre_n = pos0;
    const int64_t hd = g->hd, pitch = (int64_t)c->n_ctx * hd * (int64_t)sizeof(bf16);
    if (pos0 > c->kc_pre_n)
        for (int l = c->pol.vtop.fast_layers; l < g->L; l++)
            CK(cudaMemcpy2DAsync(c->kc_vpre + ((int64_t)l * g->KVH * c->n_ctx + c->kc_pre_n) * hd, (size_t)pitch,
                                 c->kc_vhost_h + ((int64_t)sid_of(c, l, seq, 0) * c->n_ctx + c->kc_pre_n) * hd,
                                 (size_t)pitch, (size_t)((pos0 - c->kc_pre_n) * hd * (int64_t)sizeof(bf16)),
                                 (size_t)g->KVH, cudaMemcpyHostToDevice, c->st));
    c->kc_pre_n = pos0 + n;
    return SKV_OK;
}

/* Profiling variants (SKV_KC_PROFILE), each leaving stages out (the output is then wrong;
 * for timing by differences only): 1 "scores" the scores pass alone, 2 "select" no finish,
 * 3 "fast" the finish without the host rows, 4 "nodsc" the scores pass without writing the
 * scores. Whole alternatives, whose output is right: 5 "chunks2" and 7 "chunks4" the KV heads in
 * two or four chunks whose host reads overlap the next chunk's scores pass (gpu_kc_decode), 6
 * "oldscores" the split-K decode kernel without V for the scores pass (gpu.cu; the pipeline
 * before the K-only scores kernel), serial; 8 "prevscores" the K-only scores kernel before the
 * transposed one (k_kc_scores instead of k_kc_scores_t; the default pipeline otherwise); 9
 * "prevselect" the selection without the candidate path (k_kc_select's radix select over all
 * ranks); 10 "prev" both (the default pipeline of run 4, bench/cuda/kcache-h200/run4); 11 "fin8"
 * the finish with eight host rows in flight per lane group instead of four (the same sums in
 * the same order); 12 "direct" the finish reading the selected rows from host memory itself
 * (no gather kernel: the default of run 5); 13 "g4", 14 "g16", 15 "g32" the gather kernel with
 * 4, 16 or 32 blocks instead of SKV_KC_GATHER's (default 8). */
int gpu_kc_profile(skv_gpu_ctx *c) {
    const char *e = getenv("SKV_KC_PROFILE");
    static const char *const names[KCP_N] = {"", "scores", "select", "fast", "nodsc", "chunks2", "oldscores", "chunks4",
                                             "prevscores", "prevselect", "prev", "fin8", "direct", "g4", "g16", "g32"};
    int p = KCP_DEFAULT;
    for (int i = 1; e && i < KCP_N; i++)
        if (!strcmp(e, names[i])) p = i;
    const int changed = p != c->kc_prof;
    c->kc_prof = p;
    return changed;
}

/* selection of KV heads [g0, g0 + gn) for n rows, on the compute stream (with_parts: each head's
 * log-sum-exp from the scores pass's n_split splits; else it is in lse) */
static skv_status kc_select(skv_gpu_ctx *c, int l, int n, int g0, int gn, int n_split, int with_parts) {
    const skv_gpu_model *g = c->g;
    k_kc_select<<<dim3(gn, n), KC_THREADS, kc_smem(c), c->st>>>(c->dsc, c->lse, with_parts ? c->part_m : NULL,
                                                               c->part_l, n_split, c->slen, c->seq_d, c->kc_rank,
                                                               c->kc_sel, c->kc_nsel, c->kc_inv, c->kc_ct, rule_of(c), l,
                                                               c->n_seq, g->H, g->KVH, c->n_ctx, g0, c->kc_prof == KCP_PREVSELECT || c->kc_prof == KCP_PREV ? 0 : c->kc_cap);
    LAUNCHED();
    return SKV_OK;
}

/* the output of KV heads [g0, g0 + gn) for n rows from the selected host rows and the ring, on
 * stream fs: the gather into the staging buffer, then the finish (the "direct" variant: the
 * finish alone, reading host memory) */
static skv_status kc_finish(skv_gpu_ctx *c, int l, int n, int g0, int gn, cudaStream_t fs) {
    const skv_gpu_model *g = c->g;
    const kc_rule R = rule_of(c);
    const int staged = c->kc_prof != KCP_DIRECT;
    if (staged && c->kc_prof != KCP_FAST) {
        const int nb = c->kc_prof == KCP_G4 ? 4 : c->kc_prof == KCP_G16 ? 16 : c->kc_prof == KCP_G32 ? 32 : c->kc_gblocks;
        if (g->hd == 128)
            k_kc_gather<128><<<nb, KG_THREADS, 0, fs>>>(c->kc_sel, c->kc_nsel, c->seq_d, c->kc_vhost, c->kc_stage, l,
                                                        c->n_seq, g->KVH, c->n_ctx, g0, gn, n, c->kc_scap);
        else
            k_kc_gather<64><<<nb, KG_THREADS, 0, fs>>>(c->kc_sel, c->kc_nsel, c->seq_d, c->kc_vhost, c->kc_stage, l,
                                                       c->n_seq, g->KVH, c->n_ctx, g0, gn, n, c->kc_scap);
        LAUNCHED();
    }
#define FIN_ARGS c->dsc, c->lse, c->kc_inv, c->slen, c->seq_d, c->kc_sel, c->kc_nsel, c->kc_vhost, \
                 staged ? c->kc_stage : NULL, c->kc_scap, gpu_kc_vbase(c, l), c->kc_vw[l], c->att, R, l, c->n_seq, \
                 g->H, g->KVH, c->n_ctx, c->kc_prof == KCP_FAST, g0
#define FIN_G(HD_, G_) \
    case G_: \
        if (c->kc_prof == KCP_FIN8) k_kc_finish<HD_, G_, 8><<<dim3(gn, n), 128, 0, fs>>>(FIN_ARGS); \
        else k_kc_finish<HD_, G_, 4><<<dim3(gn, n), 128, 0, fs>>>(FIN_ARGS); \
        break;
    if (g->hd == 128) {
        switch (g->H / g->KVH) { FIN_G(128, 1) FIN_G(128, 2) FIN_G(128, 3) FIN_G(128, 4) FIN_G(128, 5) FIN_G(128, 6) FIN_G(128, 7) FIN_G(128, 8) }
    } else {
        switch (g->H / g->KVH) { FIN_G(64, 1) FIN_G(64, 2) FIN_G(64, 3) FIN_G(64, 4) FIN_G(64, 5) FIN_G(64, 6) FIN_G(64, 7) FIN_G(64, 8) }
    }
#undef FIN_G
#undef FIN_ARGS
    LAUNCHED();
    return SKV_OK;
}

/* the old pipeline's tail (gpu.cu ran the split-K kernel without V and its merge: lse is set) */
skv_status gpu_kc_attend(skv_gpu_ctx *c, int l, int n) {
    skv_status st;
    if (c->kc_prof == KCP_SCORES || c->kc_prof == KCP_NODSC) return SKV_OK;
    if ((st = kc_select(c, l, n, 0, c->g->KVH, 0, 0)) || c->kc_prof == KCP_SELECT) return st;
    return kc_finish(c, l, n, 0, c->g->KVH, c->st);
}

int gpu_kc_old_scores(const skv_gpu_ctx *c) { return c->kc_prof == KCP_OLDSCORES; }

/* Decode attention of layer l (>= fast_layers) for n rows: the K-only scores pass, then the
 * selection (with each head's log-sum-exp from the pass's splits), then the finish, which reads
 * the selected rows from host memory over PCIe. With the KV heads in several chunks, each
 * chunk's finish runs on the second stream (kc_st, high priority) after an event, so that chunk
 * c's host reads overlap chunk c + 1's scores pass and selection (HBM-bound); the compute stream
 * waits for the last finish before the layer's output projection. */
skv_status gpu_kc_decode(skv_gpu_ctx *c, int l, int n) {
    const skv_gpu_model *g = c->g;
    const int KVH = g->KVH, G = g->H / KVH, prof = c->kc_prof;
    /* chunks: $SKV_KC_CHUNKS, else one (serial). Measured on the H200 at 46 x 32k with the gather
     * kernel (bench/cuda/kcache-h200/run6): one chunk 56.0 ms a step, two 52.6, four 50.1 (each
     * chunk's gather and finish beside the next chunk's scores pass); at batch 1 one chunk 7.86
     * ms, two 9.53, four 13.70 (launches of too few blocks): one by default */
    int nch = c->kc_chunks ? c->kc_chunks : 1;
    if (prof == KCP_CHUNKS2) nch = KVH % 2 ? 1 : 2;
    if (prof == KCP_CHUNKS4) nch = KVH % 4 ? 1 : 4;
    const int overlap = nch > 1 && prof != KCP_SCORES && prof != KCP_SELECT && prof != KCP_NODSC;
    const float scale = 1.0f / sqrtf((float)g->hd);
    skv_status st;
    for (int ci = 0; ci < nch; ci++) {
        const int g0 = ci * KVH / nch, gn = (ci + 1) * KVH / nch - g0;
        /* many waves of small blocks (load balance; the other stream's blocks fit between), at
         * least 256 keys a split; the same splits whatever the chunks (the same sums) */
        int n_split = (32 * c->sms + KVH * n - 1) / (KVH * n);
        n_split = min(n_split, min(c->max_split, (c->n_ctx + 255) / 256));
        n_split = max(n_split, 1);
        float *dsc = prof == KCP_NODSC ? NULL : c->dsc;
        const dim3 grid(gn, n_split, n);
#define SC_ARGS c->q, c->kpool, c->bt, c->slen, c->seq_d, c->part_m, c->part_l, dsc, l, c->n_seq, c->mb, g->H, KVH, \
                c->n_ctx, n_split, scale, g0
#define SC_G(HD_, G_) \
    case G_: \
        if (prof == KCP_PREVSCORES || prof == KCP_PREV) k_kc_scores<HD_, G_><<<grid, KS_WARPS * 32, 0, c->st>>>(SC_ARGS); \
        else k_kc_scores_t<HD_, G_><<<grid, KT_WARPS * 32, 0, c->st>>>(SC_ARGS); \
        break;
        if (g->hd == 128) {
            switch (G) { SC_G(128, 1) SC_G(128, 2) SC_G(128, 3) SC_G(128, 4) SC_G(128, 5) SC_G(128, 6) SC_G(128, 7) SC_G(128, 8) }
        } else {
            switch (G) { SC_G(64, 1) SC_G(64, 2) SC_G(64, 3) SC_G(64, 4) SC_G(64, 5) SC_G(64, 6) SC_G(64, 7) SC_G(64, 8) }
        }
#undef SC_G
#undef SC_ARGS
        LAUNCHED();
        if (prof == KCP_SCORES || prof == KCP_NODSC) continue;
        if ((st = kc_select(c, l, n, g0, gn, n_split, 1))) return st;
        if (prof == KCP_SELECT) continue;
        if (!overlap) {
            if ((st = kc_finish(c, l, n, g0, gn, c->st))) return st;
            continue;
        }
        CK(cudaEventRecord(c->kc_ev[ci], c->st));
        CK(cudaStreamWaitEvent(c->kc_st, c->kc_ev[ci], 0));
        if ((st = kc_finish(c, l, n, g0, gn, c->kc_st))) return st;
    }
    if (overlap) {
        CK(cudaEventRecord(c->kc_join, c->kc_st));
        CK(cudaStreamWaitEvent(c->st, c->kc_join, 0));
    }
    return SKV_OK;
}

skv_status gpu_kc_truncated(skv_gpu_ctx *c, int seq, int from) {
    const skv_gpu_model *g = c->g;
    if (c->kc_pre_seq == seq && c->kc_pre_n > from) c->kc_pre_n = from;
    const int fast = c->pol.vtop.fast_layers;
    if (fast >= g->L || from == 0) return SKV_OK;
    const int64_t layer_rows = (int64_t)c->n_seq * g->KVH * c->kc_ring;
    k_kc_ring_fill<<<(g->L - fast) * g->KVH, 256, 0, c->st>>>(gpu_kc_vbase(c, fast), c->kc_vhost, layer_rows, c->kc_ring,
                                                             fast, seq, from, c->n_seq, g->KVH, g->hd, c->n_ctx);
    LAUNCHED();
    CK(cudaStreamSynchronize(c->st));
    return SKV_OK;
}

extern "C" void skv_gpu_kc_counts(const skv_gpu_ctx *c, int64_t *steps, int64_t *rows, int64_t *slow_rows) {
    unsigned long long ct[2] = {0, 0};
    if (c->kc && (steps || rows)) {
        cudaStreamSynchronize(c->st);
        cudaMemcpy(ct, c->kc_ct, sizeof ct, cudaMemcpyDeviceToHost);
    }
    if (steps) *steps = (int64_t)ct[0];
    if (rows) *rows = (int64_t)ct[1];
    if (slow_rows) {
        int64_t s = 0;
        const skv_vtop_rule *v = &c->pol.vtop;
        for (int l = v->fast_layers; c->kc && l < c->g->L; l++)
            for (int q = 0; q < c->n_seq; q++)
                for (int k = 0; k < c->g->KVH; k++) {
                    const int n0 = c->h_n[sid_of(c, l, q, k)];
                    s += n0 < v->recent ? 0 : (n0 - v->recent) / c->kc_ut * c->kc_ut;
                }
        *slow_rows = s;
    }
}

extern "C" skv_status skv_gpu_kc_last(skv_gpu_ctx *c, int32_t row, int32_t kv_head, int32_t *n, int32_t *ns,
                                      float *probs, int32_t *sel, int32_t *nsel, float *inv) {
    const skv_gpu_model *g = c->g;
    const int l = g->L - 1, G = g->H / g->KVH;
    if (!c->kc || l < c->pol.vtop.fast_layers || row < 0 || row >= c->n_seq || kv_head < 0 || kv_head >= g->KVH)
        return skv_set_error(SKV_ERR_ARG, "KCache readback: row %d KV head %d (a KCache context whose last layer "
                             "selects)", row, kv_head);
    CK(cudaStreamSynchronize(c->st));
    const int sid = sid_of(c, l, row, kv_head);
    int32_t L = 0, cnt = 0;
    CK(cudaMemcpy(&L, c->slen + sid, sizeof L, cudaMemcpyDeviceToHost));
    const int n0 = L - 1;
    *n = L;
    *ns = n0 < c->pol.vtop.recent ? 0 : (n0 - c->pol.vtop.recent) / c->kc_ut * c->kc_ut;
    CK(cudaMemcpy(&cnt, c->kc_nsel + (int64_t)row * g->KVH + kv_head, sizeof cnt, cudaMemcpyDeviceToHost));
    *nsel = cnt;
    if (cnt > 0) CK(cudaMemcpy(sel, c->kc_sel + ((int64_t)row * g->KVH + kv_head) * c->n_ctx, sizeof(int32_t) * (size_t)cnt,
                               cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(inv, c->kc_inv + (int64_t)row * g->H + kv_head * G, sizeof(float) * (size_t)G, cudaMemcpyDeviceToHost));
    float lse[G_MAX];
    CK(cudaMemcpy(lse, c->lse + (int64_t)row * g->H + kv_head * G, sizeof(float) * (size_t)G, cudaMemcpyDeviceToHost));
    for (int j = 0; j < G; j++) {
        float *p = probs + (int64_t)j * L;
        CK(cudaMemcpy(p, c->dsc + ((int64_t)row * g->H + kv_head * G + j) * c->n_ctx, sizeof(float) * (size_t)L,
                      cudaMemcpyDeviceToHost));
        for (int s = 0; s < L; s++) p[s] = expf(p[s] - lse[j]);
    }
    return SKV_OK;
}
