/*
 * gpu_cache.cu — the CUDA backend's paged KV cache (see gpu.h, gpu_ctx.cuh): the block pool and
 * its host-side free list, slot counts, eviction on the device (one victim per stream per
 * decode step for window and h2o; top-k selection and stable compaction per stream at
 * compress), the attention statistics policies score with (accumulated and observation-window
 * attention, group-summed per slot, as the CPU cache keeps them), forks, read-back for tests,
 * and the slow tier's asynchronous fetch.
 *
 * Selections execute the policy's eviction rule (kv/evict.h) exactly as kv/select.c does on
 * the CPU: the `sinks` oldest and the recent(b) newest slots first, then the best-ranked of the
 * rest (position, accumulated, max-pooled window or newest-query attention; ties: newer).
 * Composite keys (score bits, position) are unique, so a radix select of the budget-th largest
 * key gives the same set as the CPU's sort. Window-ranked pooling assumes slots in position
 * order (true: appends and stable compactions only; such policies do not evict per step).
 */
#include "backend/cuda/gpu_ctx.cuh"
#include "backend/cuda/gpu_device.cuh"

typedef unsigned long long u64;
#define KEY_TOP 0xffffffff00000000ull /* kept before any score */

enum { CMP_EVICT = 0, CMP_TRUNC = 1 };

/* order-preserving float -> u32 */
__device__ __forceinline__ uint32_t ord_f(float v) {
    const uint32_t u = __float_as_uint(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* ------------------------------------------------------------------------------------------ */
/* Block-wide helpers (blockDim.x a multiple of 32, at most 1024)                              */

__device__ u64 block_min_u64(u64 v, u64 *sh) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const u64 t = __shfl_xor_sync(0xffffffffu, v, o);
        v = t < v ? t : v;
    }
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        u64 m = sh[0];
        for (int w = 1; w < (int)blockDim.x / 32; w++) m = sh[w] < m ? sh[w] : m;
        sh[32] = m;
    }
    __syncthreads();
    return sh[32];
}

/* The k-th largest of the n keys key(0..n-1) (1 <= k <= n): a radix select, 8 bits per pass. */
template <class F>
__device__ u64 kth_largest(F key, int n, int k, unsigned *hist, u64 *sh) {
    u64 prefix = 0, mask = 0;
    int kk = k;
    for (int shift = 56; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
        __syncthreads();
        for (int s = threadIdx.x; s < n; s += blockDim.x) {
            const u64 x = key(s);
            if ((x & mask) == prefix) atomicAdd(&hist[(x >> shift) & 255], 1u);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int cum = 0, d = 255;
            for (; d > 0; d--) {
                if (cum + (int)hist[d] >= kk) break;
                cum += (int)hist[d];
            }
            sh[33] = (u64)cum;
            sh[34] = prefix | ((u64)d << shift);
        }
        __syncthreads();
        kk -= (int)sh[33];
        prefix = sh[34];
        mask |= 255ull << shift;
        __syncthreads();
    }
    return prefix;
}

/* ------------------------------------------------------------------------------------------ */
/* Kernels                                                                                      */

struct stream_ref {
    bf16 *kp, *vp;
    const int32_t *bt;
    int32_t *slen, *spos;
    float *sacc, *swin, *slast;
    int mb, hd, n_ctx;
};

/* The per-slot statistic a rank reads (NULL for position). */
__device__ __forceinline__ const float *rank_stat(const stream_ref &R, int rank, int64_t so) {
    const float *p = rank == SKV_RANK_ACC ? R.sacc : rank == SKV_RANK_WIN ? R.swin : rank == SKV_RANK_LAST ? R.slast : NULL;
    return p ? p + so : NULL;
}

/* Move slot `from` into slot `to` of stream sid (K, V rows and the slot's data); all threads. */
__device__ void move_slot(const stream_ref &R, int sid, int from, int to) {
    const int32_t *bts = R.bt + (int64_t)sid * R.mb;
    const int64_t a = slot_row(bts, from) * R.hd, b = slot_row(bts, to) * R.hd;
    for (int i = threadIdx.x; i < R.hd / 8; i += blockDim.x) {
        ((uint4 *)(R.kp + b))[i] = ((const uint4 *)(R.kp + a))[i];
        ((uint4 *)(R.vp + b))[i] = ((const uint4 *)(R.vp + a))[i];
    }
    if (threadIdx.x == 0) {
        const int64_t o = (int64_t)sid * R.n_ctx;
        R.spos[o + to] = R.spos[o + from];
        if (R.sacc) R.sacc[o + to] = R.sacc[o + from];
        if (R.swin) R.swin[o + to] = R.swin[o + from];
        if (R.slast) R.slast[o + to] = R.slast[o + from];
    }
}

/* End of a decode step, block (layer * KVH + g, row r): the stream holds slen + 1 slots; with a
 * step budget b > 0 the victims go until it holds b: the worst-ranked slot at a position >=
 * sinks and outside the newest recent(b) (ties: older), the last slot moved into the hole as
 * skv_cache_remove_swap does. */
__global__ void k_step_end(stream_ref R, const int32_t *bud, const int32_t *rseq, const int32_t *rpos, skv_evict_desc ev,
                           int n_seq, int L, int KVH) {
    __shared__ u64 sh[40];
    const int l = blockIdx.x / KVH, g = blockIdx.x % KVH, seq = rseq[blockIdx.y];
    const int newest = rpos[blockIdx.y]; /* the step's token: positions only grow */
    const int sid = (l * n_seq + seq) * KVH + g;
    int n = R.slen[sid] + 1;
    const int b = ev.evicts && ev.step ? bud[seq * L + l] : 0;
    const int32_t *P = R.spos + (int64_t)sid * R.n_ctx;
    const float *A = rank_stat(R, ev.rank, (int64_t)sid * R.n_ctx);
    const int recent = b > 0 ? (ev.recent_frac > 0 ? __float2int_rn(ev.recent_frac * (float)b) : ev.recent) : 0;
    while (b > 0 && n > b) {
        u64 best = ~0ull;
        for (int s = threadIdx.x; s < n; s += blockDim.x)
            if (P[s] >= ev.sinks && P[s] <= newest - recent) {
                const uint32_t sc = A ? ord_f(A[s]) : (uint32_t)P[s];
                const u64 k = ((u64)sc << 32) | (uint32_t)P[s];
                best = k < best ? k : best;
            }
        best = block_min_u64(best, sh);
        if (best == ~0ull) break;
        u64 v = ~0ull; /* the slot of that position */
        for (int s = threadIdx.x; s < n; s += blockDim.x)
            if (P[s] == (int)(best & 0xffffffffu)) v = (u64)s;
        const int victim = (int)block_min_u64(v, sh);
        if (victim != n - 1) move_slot(R, sid, n - 1, victim);
        __syncthreads();
        n--;
    }
    if (threadIdx.x == 0) R.slen[sid] = n;
}

/* After a prefill chunk of n rows of sequence seq: every stream of it holds n more slots. */
__global__ void k_slen_add(int32_t *slen, int seq, int n, int n_seq, int L, int KVH) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= L * KVH) return;
    slen[((i / KVH) * n_seq + seq) * KVH + i % KVH] += n;
}

/* Compress (or truncate) the streams of sequence seq: block (layer * KVH + g), 1024 threads.
 * The keep set first (a bitmask in shared memory), then a stable compaction tile by tile. */
__global__ void __launch_bounds__(1024) k_compress(stream_ref R, const int32_t *budget, int mode, skv_evict_desc ev,
                                                  int from, int seq, int n_seq, int KVH) {
    extern __shared__ uint32_t keepbits[]; /* (n_ctx / 32 + 1) */
    __shared__ unsigned hist[256];
    __shared__ u64 sh[40];
    __shared__ int dst[64], cnt;
    const int l = blockIdx.x / KVH, g = blockIdx.x % KVH, sid = (l * n_seq + seq) * KVH + g;
    const int n = R.slen[sid];
    const int64_t so = (int64_t)sid * R.n_ctx;
    const int32_t *P = R.spos + so;
    const int b = mode == CMP_TRUNC ? n : budget[l];
    if (mode != CMP_TRUNC && n <= b) return;
    for (int i = threadIdx.x; i < n / 32 + 1; i += blockDim.x) keepbits[i] = 0;
    __syncthreads();
    if (mode == CMP_TRUNC) {
        for (int s = threadIdx.x; s < n; s += blockDim.x)
            if (P[s] < from) atomicOr(&keepbits[s / 32], 1u << (s % 32));
    } else {
        const int recent_all = ev.recent_frac > 0 ? __float2int_rn(ev.recent_frac * (float)b) : ev.recent;
        const int s_ = min(ev.sinks, b), R_ = min(recent_all, b - s_);
        /* the s_ oldest and the R_ newest come first */
        const u64 lo = s_ > 0 ? kth_largest([&](int s) { return (u64)(~(uint32_t)P[s]); }, n, s_, hist, sh) : ~0ull;
        const u64 rt = R_ > 0 ? kth_largest([&](int s) { return (u64)(uint32_t)P[s]; }, n, R_, hist, sh) : ~0ull;
        const float *A = rank_stat(R, ev.rank, so);
        const int m = n - min(recent_all, n), half = ev.pool / 2; /* window pooling: the slots before the window */
        const bool pool = ev.rank == SKV_RANK_WIN && ev.pool > 1;
        auto key = [&](int s) -> u64 {
            const uint32_t p = (uint32_t)P[s];
            if ((s_ > 0 && (u64)(~p) >= lo) || (R_ > 0 && (u64)p >= rt)) return KEY_TOP | p;
            if (!A) return ((u64)p << 32) | p;
            float v = A[s];
            if (pool && s < m) {
                v = -INFINITY;
                for (int j = max(0, s - half); j <= min(m - 1, s + half); j++) v = fmaxf(v, A[j]);
            }
            return ((u64)ord_f(v) << 32) | p;
        };
        const u64 thr = kth_largest(key, n, b, hist, sh);
        for (int s = threadIdx.x; s < n; s += blockDim.x)
            if (key(s) >= thr) atomicOr(&keepbits[s / 32], 1u << (s % 32));
    }
    __syncthreads();
    /* stable compaction: a tile of 64 slots is read whole (16 threads per slot, 16 bytes each)
     * before any of it is written; destinations never pass their sources */
    const int32_t *bts = R.bt + (int64_t)sid * R.mb;
    const int ts = threadIdx.x / 16, ch = threadIdx.x % 16, nch = R.hd / 8;
    int base = 0;
    for (int t0 = 0; t0 < n; t0 += 64) {
        if (threadIdx.x < 32) {
            const int s0 = t0 + threadIdx.x, s1 = s0 + 32;
            const bool k0 = s0 < n && (keepbits[s0 / 32] >> (s0 % 32) & 1);
            const bool k1 = s1 < n && (keepbits[s1 / 32] >> (s1 % 32) & 1);
            const unsigned m0 = __ballot_sync(0xffffffffu, k0), m1 = __ballot_sync(0xffffffffu, k1);
            const unsigned lt = (1u << threadIdx.x) - 1;
            dst[threadIdx.x] = k0 ? base + __popc(m0 & lt) : -1;
            dst[threadIdx.x + 32] = k1 ? base + __popc(m0) + __popc(m1 & lt) : -1;
            if (threadIdx.x == 0) cnt = __popc(m0) + __popc(m1);
        }
        __syncthreads();
        const int s = t0 + ts, d = s < n ? dst[ts] : -1;
        uint4 kv = make_uint4(0, 0, 0, 0), vv = kv;
        int32_t ps = 0;
        float ac = 0, wn = 0, ls = 0;
        if (d >= 0 && d != s) {
            const int64_t ro = slot_row(bts, s) * R.hd;
            if (ch < nch) kv = ((const uint4 *)(R.kp + ro))[ch], vv = ((const uint4 *)(R.vp + ro))[ch];
            if (ch == 0) {
                ps = P[s];
                if (R.sacc) ac = R.sacc[so + s];
                if (R.swin) wn = R.swin[so + s];
                if (R.slast) ls = R.slast[so + s];
            }
        }
        __syncthreads();
        if (d >= 0 && d != s) {
            const int64_t ro = slot_row(bts, d) * R.hd;
            if (ch < nch) ((uint4 *)(R.kp + ro))[ch] = kv, ((uint4 *)(R.vp + ro))[ch] = vv;
            if (ch == 0) {
                R.spos[so + d] = ps;
                if (R.sacc) R.sacc[so + d] = ac;
                if (R.swin) R.swin[so + d] = wn;
                if (R.slast) R.slast[so + d] = ls;
            }
        }
        base += cnt;
        __syncthreads();
    }
    if (threadIdx.x == 0) R.slen[sid] = base;
}

/* Decode statistics of layer l: p = sum over the group's heads of exp(score - lse);
 * acc[slot] += p, last[slot] = p. */
__global__ void k_decode_stats(const float *dsc, const float *lse, const int32_t *slen, const int32_t *rseq, float *sacc,
                               float *slast, int l, int n_seq, int H, int KVH, int n_ctx) {
    const int g = blockIdx.x, r = blockIdx.y, G = H / KVH;
    const int sid = (l * n_seq + rseq[r]) * KVH + g, L = slen[sid] + 1;
    for (int s = blockIdx.z * blockDim.x + threadIdx.x; s < L; s += gridDim.z * blockDim.x) {
        float p = 0;
        for (int j = 0; j < G; j++) {
            const int h = g * G + j;
            p += __expf(dsc[((int64_t)r * H + h) * n_ctx + s] - lse[(int64_t)r * H + h]);
        }
        if (sacc) sacc[(int64_t)sid * n_ctx + s] += p;
        if (slast) slast[(int64_t)sid * n_ctx + s] = p;
    }
}

/* Prefill statistics of a chunk of n rows (layer l, sequence seq): block (key tile of 64 slots,
 * KV head), 4 warps of 16 slots each. S^T = K Q^T with mma.sync over query tiles of 64 rows
 * and the group's heads; p = exp2(S * scale_log2 - lse) where the query sees the slot; acc
 * gets every visible query's p, win those at positions >= win_from. Each block owns its slots:
 * no atomics. */
template <int HD>
__global__ void __launch_bounds__(128) k_prefill_stats(const bf16 *Q, const float *lse, const bf16 *kp,
                                                       const int32_t *bt, const int32_t *slen, float *sacc,
                                                       float *swin, float *slast, int n, int H, int KVH, int mb,
                                                       int n_ctx, float scale_log2, int pos0, int win_from, int do_acc) {
    constexpr int LD = HD + 8;
    __shared__ __align__(16) bf16 sq[64 * LD];
    __shared__ float slse[64];
    const int kt = blockIdx.x, kvh = blockIdx.y, G = H / KVH;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, lm = lane >> 3, lr = lane & 7, c2 = (lane & 3) * 2;
    const int n_old = slen[kvh], n_tot = n_old + n;
    const int k0 = kt * 64;
    if (k0 >= n_tot) return;
    const int32_t *bts = bt + (int64_t)kvh * mb;
    const int key_lo = k0 + warp * 16 + (lane >> 2), key_hi = key_lo + 8;
    /* A fragments: this warp's 16 slots (rows past n_tot read a valid row and are masked) */
    uint32_t ka[HD / 16][4];
    {
        const int64_t blk = (int64_t)bts[kt] * 64;
        const uint32_t *lo = (const uint32_t *)(kp + (blk + (key_lo - k0)) * HD);
        const uint32_t *hi = (const uint32_t *)(kp + (blk + (key_hi - k0)) * HD);
#pragma unroll
        for (int kc = 0; kc < HD / 16; kc++) {
            const int d = kc * 16 + c2;
            ka[kc][0] = lo[d / 2], ka[kc][1] = hi[d / 2], ka[kc][2] = lo[(d + 8) / 2], ka[kc][3] = hi[(d + 8) / 2];
        }
    }
    const int wrow = max(0, win_from - pos0); /* first row of the observation window */
    int q_start = max(0, k0 - n_old);         /* the first row that sees this tile */
    if (!do_acc) q_start = max(q_start, slast ? min(wrow, n - 1) : wrow);
    q_start = q_start / 64 * 64;
    float a_lo = 0, a_hi = 0, w_lo = 0, w_hi = 0, l_lo = 0, l_hi = 0;
    for (int j = 0; j < G; j++) {
        const int h = kvh * G + j;
        for (int q0 = q_start; q0 < n; q0 += 64) {
            __syncthreads();
            for (int i = threadIdx.x; i < 64 * HD / 8; i += 128) {
                const int row = i / (HD / 8), col = (i % (HD / 8)) * 8;
                uint4 v = make_uint4(0, 0, 0, 0);
                if (q0 + row < n) v = *(const uint4 *)(Q + ((int64_t)(q0 + row) * H + h) * HD + col);
                *(uint4 *)(sq + row * LD + col) = v;
            }
            if (threadIdx.x < 64) slse[threadIdx.x] = q0 + threadIdx.x < n ? lse[(int64_t)(q0 + threadIdx.x) * H + h] : 0;
            __syncthreads();
#pragma unroll
            for (int nt = 0; nt < 8; nt++) {
                float s[4] = {0, 0, 0, 0};
#pragma unroll
                for (int kc = 0; kc < HD / 16; kc += 2) {
                    uint32_t b[4];
                    ldsm_x4(b, sq + (nt * 8 + lr) * LD + (kc + (lm >> 1)) * 16 + (lm & 1) * 8);
                    mma16816(s, ka[kc], b);
                    mma16816(s, ka[kc + 1], b + 2);
                }
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int qi = q0 + nt * 8 + c2 + (e & 1), key = e < 2 ? key_lo : key_hi;
                    if (qi >= n || key >= n_tot || key > n_old + qi) continue;
                    const float p = exp2f(s[e] * scale_log2 - slse[qi - q0]);
                    const bool inw = qi >= wrow, isl = qi == n - 1;
                    if (e < 2) a_lo += p, w_lo += inw ? p : 0, l_lo += isl ? p : 0;
                    else a_hi += p, w_hi += inw ? p : 0, l_hi += isl ? p : 0;
                }
            }
        }
    }
#pragma unroll
    for (int o = 1; o <= 2; o <<= 1) {
        a_lo += __shfl_xor_sync(0xffffffffu, a_lo, o), a_hi += __shfl_xor_sync(0xffffffffu, a_hi, o);
        w_lo += __shfl_xor_sync(0xffffffffu, w_lo, o), w_hi += __shfl_xor_sync(0xffffffffu, w_hi, o);
        l_lo += __shfl_xor_sync(0xffffffffu, l_lo, o), l_hi += __shfl_xor_sync(0xffffffffu, l_hi, o);
    }
    if ((lane & 3) == 0) {
        const int64_t o = (int64_t)kvh * n_ctx;
        if (key_lo < n_tot) {
            if (sacc && do_acc) sacc[o + key_lo] += a_lo;
            if (swin && win_from < pos0 + n) swin[o + key_lo] += w_lo;
            if (slast) slast[o + key_lo] = l_lo;
        }
        if (key_hi < n_tot) {
            if (sacc && do_acc) sacc[o + key_hi] += a_hi;
            if (swin && win_from < pos0 + n) swin[o + key_hi] += w_hi;
            if (slast) slast[o + key_hi] = l_hi;
        }
    }
}

/* Copy stream s of src into stream d of dst (slots, positions, statistics both keep). */
__global__ void k_copy_stream(stream_ref S, stream_ref D, int n_seq_s, int n_seq_d, int KVH) {
    const int l = blockIdx.x / KVH, g = blockIdx.x % KVH;
    const int ss = (l * n_seq_s) * KVH + g, ds = (l * n_seq_d) * KVH + g;
    const int n = S.slen[ss];
    const int32_t *sb = S.bt + (int64_t)ss * S.mb, *db = D.bt + (int64_t)ds * D.mb;
    const int nch = S.hd / 8;
    for (int i = threadIdx.x; i < n * nch; i += blockDim.x) {
        const int s = i / nch, ch = i % nch;
        const int64_t a = slot_row(sb, s) * S.hd, b = slot_row(db, s) * D.hd;
        ((uint4 *)(D.kp + b))[ch] = ((const uint4 *)(S.kp + a))[ch];
        if (D.vp) ((uint4 *)(D.vp + b))[ch] = ((const uint4 *)(S.vp + a))[ch];
    }
    for (int s = threadIdx.x; s < n; s += blockDim.x) {
        D.spos[(int64_t)ds * D.n_ctx + s] = S.spos[(int64_t)ss * S.n_ctx + s];
        if (D.sacc) D.sacc[(int64_t)ds * D.n_ctx + s] = S.sacc ? S.sacc[(int64_t)ss * S.n_ctx + s] : 0;
        if (D.swin) D.swin[(int64_t)ds * D.n_ctx + s] = S.swin ? S.swin[(int64_t)ss * S.n_ctx + s] : 0;
        if (D.slast) D.slast[(int64_t)ds * D.n_ctx + s] = S.slast ? S.slast[(int64_t)ss * S.n_ctx + s] : 0;
    }
    if (threadIdx.x == 0) D.slen[ds] = n;
}

/* A fork into a KCache context (block (layer * KVH + g), sequence 0): the V rows of the source's
 * paged pool into the destination's pinned host rows (every slot) and its device rows (every
 * slot in layers below fast_layers, whose vw is n_ctx; else the ring of the newest vw). */
__global__ void k_kc_fork_v(stream_ref S, int n_seq_s, bf16 *vh, bf16 *vd0, const int64_t *voff, const int32_t *vw,
                            int n_ctx_d, int n_seq_d, int KVH) {
    const int l = blockIdx.x / KVH, g = blockIdx.x % KVH;
    const int ss = (l * n_seq_s) * KVH + g, ds = (l * n_seq_d) * KVH + g;
    const int n = S.slen[ss], nch = S.hd / 8, w = vw[l];
    const int32_t *sb = S.bt + (int64_t)ss * S.mb;
    bf16 *vd = vd0 + (voff[l] + (int64_t)g * w) * S.hd;
    for (int i = threadIdx.x; i < n * nch; i += blockDim.x) {
        const int s = i / nch, ch = i % nch;
        const uint4 v = ((const uint4 *)(S.vp + slot_row(sb, s) * S.hd))[ch];
        ((uint4 *)(vh + ((int64_t)ds * n_ctx_d + s) * S.hd))[ch] = v;
        if (s >= n - w) ((uint4 *)(vd + (int64_t)(s % w) * S.hd))[ch] = v;
    }
}

/* out (n, hd) bf16 = the pool rows of slots rows[0..n) of one stream */
__global__ void k_gather_rows(const bf16 *pool, const int32_t *bts, const int32_t *rows, int n, int hd, bf16 *out) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n * (hd / 8); i += gridDim.x * blockDim.x) {
        const int r = i / (hd / 8), ch = i % (hd / 8);
        ((uint4 *)(out + (int64_t)r * hd))[ch] = ((const uint4 *)(pool + slot_row(bts, rows[r]) * hd))[ch];
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Host side                                                                                    */

#define ALLOC(p, n) CK(cudaMalloc((void **)&(p), (size_t)(n) * sizeof(*(p))))

static stream_ref ref_of(skv_gpu_ctx *c) {
    return stream_ref{c->kpool, c->vpool, c->bt, c->slen, c->spos, c->sacc, c->swin, c->slast, c->mb, c->g->hd, c->n_ctx};
}

static int compress_smem(const skv_gpu_ctx *c) { return (int)sizeof(uint32_t) * (c->n_ctx / 32 + 1); }

skv_status gpu_cache_alloc(skv_gpu_ctx *c) {
    const skv_gpu_model *g = c->g;
    const int64_t S = c->n_streams, rows = (int64_t)S * c->mb * BLK;
    c->n_blocks = (int32_t)(S * c->mb);
    if (!c->pol.kv_bits) ALLOC(c->kpool, rows * g->hd); /* KIVI: quantised blocks (gpu_kivi.cu), no bf16 pools */
    if (c->pol.kv_bits) {
    } else if (c->pol.vtop.on) {
        /* KCache: no V pool (gpu_kcache.cu) */
    } else if (c->pol.v_slow) {
        CK(cudaHostAlloc((void **)&c->vpool_host, sizeof(bf16) * (size_t)(rows * g->hd), cudaHostAllocMapped));
        CK(cudaHostGetDevicePointer((void **)&c->vpool, c->vpool_host, 0));
    } else {
        ALLOC(c->vpool, rows * g->hd);
    }
    ALLOC(c->bt, S * c->mb);
    ALLOC(c->slen, S);
    ALLOC(c->spos, S * c->n_ctx);
    if (c->pol.want_acc) ALLOC(c->sacc, S * c->n_ctx);
    if (c->pol.want_win) ALLOC(c->swin, S * c->n_ctx);
    if (c->pol.want_last) ALLOC(c->slast, S * c->n_ctx);
    ALLOC(c->bud, (int64_t)c->n_seq * g->CL);
    ALLOC(c->cbud, g->CL);
    ALLOC(c->fetch_rows, c->n_ctx);
    CK(cudaMemset(c->bt, 0xff, sizeof(int32_t) * (size_t)(S * c->mb)));
    CK(cudaMemset(c->slen, 0, sizeof(int32_t) * (size_t)S));
    CK(cudaMemset(c->bud, 0, sizeof(int32_t) * (size_t)c->n_seq * g->CL));
    c->h_bt = (int32_t *)malloc(sizeof(int32_t) * (size_t)(S * c->mb));
    c->h_nb = (int32_t *)calloc((size_t)S, sizeof(int32_t));
    c->h_n = (int32_t *)calloc((size_t)S, sizeof(int32_t));
    c->h_free = (int32_t *)malloc(sizeof(int32_t) * (size_t)c->n_blocks);
    c->h_bud = (int32_t *)calloc((size_t)c->n_seq * g->CL, sizeof(int32_t));
    c->h_next = (int32_t *)calloc((size_t)c->n_seq, sizeof(int32_t));
    c->win_from_h = (int32_t *)malloc(sizeof(int32_t) * (size_t)c->n_seq);
    if (!c->h_bt || !c->h_nb || !c->h_n || !c->h_free || !c->h_bud || !c->h_next || !c->win_from_h)
        return skv_set_error(SKV_ERR_NOMEM, "out of memory");
    for (int i = 0; i < c->n_seq; i++) c->win_from_h[i] = INT32_MAX;
    memset(c->h_bt, 0xff, sizeof(int32_t) * (size_t)(S * c->mb));
    for (int32_t i = 0; i < c->n_blocks; i++) c->h_free[i] = c->n_blocks - 1 - i; /* low ids first */
    if (compress_smem(c) > 48 * 1024) /* the keep bitmask of a long context */
        CK(cudaFuncSetAttribute(k_compress, cudaFuncAttributeMaxDynamicSharedMemorySize, compress_smem(c)));
    c->n_free = c->n_blocks;
    return SKV_OK;
}

void gpu_cache_free(skv_gpu_ctx *c) {
    void *ps[] = {c->kpool, c->bt, c->slen, c->spos, c->sacc, c->swin, c->slast, c->bud, c->cbud};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) cudaFree(ps[i]);
    if (c->vpool_host) cudaFreeHost(c->vpool_host);
    else cudaFree(c->vpool);
    free(c->h_bt), free(c->h_nb), free(c->h_n), free(c->h_free), free(c->h_bud), free(c->h_next), free(c->win_from_h);
}

/* blocks from the free list until stream sid holds `need` (host table; uploaded later) */
static skv_status grow(skv_gpu_ctx *c, int sid, int need) {
    while (c->h_nb[sid] < need) {
        if (c->n_free == 0) return skv_set_error(SKV_ERR_NOMEM, "CUDA cache: the pool of %d blocks is full", c->n_blocks);
        c->h_bt[(int64_t)sid * c->mb + c->h_nb[sid]++] = c->h_free[--c->n_free];
        c->bt_dirty = 1;
    }
    return SKV_OK;
}

skv_status gpu_cache_reserve(skv_gpu_ctx *c, int seq, int n) {
    for (int l = 0; l < c->g->CL; l++)
        for (int g = 0; g < c->g->KVH; g++) {
            const int sid = sid_of(c, l, seq, g);
            const int need = (c->h_n[sid] + n + BLK - 1) / BLK;
            if (need > c->mb)
                return skv_set_error(SKV_ERR_RANGE, "CUDA cache: %d more tokens exceed the context of %d",
                                     n, c->n_ctx);
            skv_status st = grow(c, sid, need);
            if (st) return st;
        }
    return SKV_OK;
}

skv_status gpu_cache_upload(skv_gpu_ctx *c) {
    if (!c->bt_dirty) return SKV_OK;
    /* synchronous: the host table may change again right after */
    CK(cudaMemcpyAsync(c->bt, c->h_bt, sizeof(int32_t) * (size_t)c->n_streams * c->mb, cudaMemcpyHostToDevice, c->st));
    CK(cudaStreamSynchronize(c->st));
    c->bt_dirty = 0;
    return SKV_OK;
}

/* give back the blocks past a stream's slots */
static void release(skv_gpu_ctx *c, int sid) {
    const int keep = (c->h_n[sid] + BLK - 1) / BLK;
    while (c->h_nb[sid] > keep) {
        int32_t *e = &c->h_bt[(int64_t)sid * c->mb + --c->h_nb[sid]];
        c->h_free[c->n_free++] = *e;
        *e = -1;
        c->bt_dirty = 1;
    }
}

void gpu_cache_advance(skv_gpu_ctx *c, int seq, int n, int decode) {
    for (int l = 0; l < c->g->CL; l++) {
        const int b = c->h_bud[seq * c->g->CL + l];
        for (int g = 0; g < c->g->KVH; g++) {
            const int sid = sid_of(c, l, seq, g);
            c->h_n[sid] += n;
            if (decode && b > 0 && c->h_n[sid] > b) c->h_n[sid] = b; /* k_step_end evicted */
        }
    }
}

skv_status gpu_cache_end_forward(skv_gpu_ctx *c, int n, int decode, int seq) {
    const skv_gpu_model *g = c->g;
    if (decode) {
        k_step_end<<<dim3(g->CL * g->KVH, n), 256, 0, c->st>>>(ref_of(c), c->bud, c->seq_d, c->pos_d, c->pol.ev, c->n_seq,
                                                               g->CL, g->KVH);
    } else {
        k_slen_add<<<(g->CL * g->KVH + 255) / 256, 256, 0, c->st>>>(c->slen, seq, n, c->n_seq, g->CL, g->KVH);
    }
    LAUNCHED();
    return SKV_OK;
}

skv_status gpu_cache_decode_stats(skv_gpu_ctx *c, int l, int n) {
    k_decode_stats<<<dim3(c->g->KVH, n, 8), 256, 0, c->st>>>(c->dsc, c->lse, c->slen, c->seq_d, c->sacc, c->slast, l, c->n_seq,
                                                              c->g->H, c->g->KVH, c->n_ctx);
    LAUNCHED();
    return SKV_OK;
}

skv_status gpu_cache_prefill_stats(skv_gpu_ctx *c, int l, int seq, int pos0, int n) {
    const skv_gpu_model *g = c->g;
    const int s0 = sid_of(c, l, seq, 0);
    int max_n = 0; /* slots before this chunk (the host mirror is advanced after it) */
    for (int k = 0; k < g->KVH; k++) max_n = c->h_n[s0 + k] > max_n ? c->h_n[s0 + k] : max_n;
    const int tiles = (max_n + n + 63) / 64;
    const int wf = c->pol.want_win ? c->win_from_h[seq] : INT32_MAX;
    if (!c->pol.want_acc && !c->pol.want_last && wf >= pos0 + n) return SKV_OK; /* no window query in this chunk */
    const float sl2 = 1.4426950408889634f / sqrtf((float)g->hd);
    float *acc = c->sacc ? c->sacc + (int64_t)s0 * c->n_ctx : NULL, *win = c->swin ? c->swin + (int64_t)s0 * c->n_ctx : NULL;
    float *last = c->slast ? c->slast + (int64_t)s0 * c->n_ctx : NULL;
    const dim3 grid(tiles, g->KVH);
#define STATS_ARGS c->qb, c->lse, c->kpool, c->bt + (int64_t)s0 * c->mb, c->slen + s0, acc, win, last, n, g->H, g->KVH, c->mb, \
                   c->n_ctx, sl2, pos0, wf, c->pol.want_acc
    if (g->hd == 128) k_prefill_stats<128><<<grid, 128, 0, c->st>>>(STATS_ARGS);
    else k_prefill_stats<64><<<grid, 128, 0, c->st>>>(STATS_ARGS);
#undef STATS_ARGS
    LAUNCHED();
    return SKV_OK;
}

extern "C" void skv_gpu_begin_call(skv_gpu_ctx *c, int32_t seq, int32_t win_from) {
    if (!c->pol.want_win) return;
    c->win_from_h[seq] = win_from;
    for (int l = 0; l < c->g->CL; l++)
        cudaMemsetAsync(c->swin + (int64_t)sid_of(c, l, seq, 0) * c->n_ctx, 0,
                        sizeof(float) * (size_t)c->g->KVH * c->n_ctx, c->st);
}

static skv_status launch_compress(skv_gpu_ctx *c, int seq, int mode, int from) {
    const skv_gpu_model *g = c->g;
    const int smem = compress_smem(c);
    k_compress<<<g->CL * g->KVH, 1024, smem, c->st>>>(ref_of(c), c->cbud, mode, c->pol.ev, from, seq, c->n_seq, g->KVH);
    LAUNCHED();
    return SKV_OK;
}

extern "C" skv_status skv_gpu_compress(skv_gpu_ctx *c, int32_t seq, const int32_t *budget) {
    const skv_gpu_model *g = c->g;
    if (seq < 0 || seq >= c->n_seq) return skv_set_error(SKV_ERR_ARG, "CUDA compress: sequence %d", seq);
    if (!c->pol.ev.evicts) return SKV_OK;
    if ((c->pol.ev.rank == SKV_RANK_ACC && !c->sacc) || (c->pol.ev.rank == SKV_RANK_WIN && !c->swin) ||
        (c->pol.ev.rank == SKV_RANK_LAST && !c->slast))
        return skv_set_error(SKV_ERR_ARG, "CUDA compress: the context does not collect the statistics its policy needs");
    for (int l = 0; l < g->CL; l++)
        if (budget[l] < 1) return skv_set_error(SKV_ERR_ARG, "CUDA compress: budget %d of layer %d", budget[l], l);
    CK(cudaStreamSynchronize(c->st));
    CK(cudaMemcpy(c->cbud, budget, sizeof(int32_t) * (size_t)g->CL, cudaMemcpyHostToDevice));
    skv_status st = launch_compress(c, seq, CMP_EVICT, 0);
    if (st) return st;
    const int step = c->pol.ev.step;
    for (int l = 0; l < g->CL; l++) {
        c->h_bud[seq * g->CL + l] = step ? budget[l] : 0;
        for (int k = 0; k < g->KVH; k++) {
            const int sid = sid_of(c, l, seq, k);
            if (c->h_n[sid] > budget[l]) c->h_n[sid] = budget[l];
            release(c, sid);
        }
    }
    CK(cudaMemcpyAsync(c->bud + (int64_t)seq * g->CL, c->h_bud + (int64_t)seq * g->CL, sizeof(int32_t) * (size_t)g->CL,
                       cudaMemcpyHostToDevice, c->st));
    return gpu_cache_upload(c);
}

extern "C" skv_status skv_gpu_truncate(skv_gpu_ctx *c, int32_t seq, int32_t from) {
    const skv_gpu_model *g = c->g;
    if (seq < 0 || seq >= c->n_seq || from < 0)
        return skv_set_error(SKV_ERR_ARG, "CUDA truncate: sequence %d from %d", seq, from);
    if (from >= c->h_next[seq]) return SKV_OK;
    CK(cudaStreamSynchronize(c->st));
    skv_status st = c->kv_bits ? gpu_kivi_truncate(c, seq, from) : launch_compress(c, seq, CMP_TRUNC, from);
    if (st) return st;
    CK(cudaMemcpyAsync(c->h_n, c->slen, sizeof(int32_t) * (size_t)c->n_streams, cudaMemcpyDeviceToHost, c->st));
    CK(cudaStreamSynchronize(c->st));
    for (int l = 0; l < g->CL; l++)
        for (int k = 0; k < g->KVH; k++) release(c, sid_of(c, l, seq, k));
    c->h_next[seq] = from;
    if (c->kc && (st = gpu_kc_truncated(c, seq, from))) return st;
    if (from == 0) {
        memset(c->h_bud + (int64_t)seq * g->CL, 0, sizeof(int32_t) * (size_t)g->CL);
        CK(cudaMemcpyAsync(c->bud + (int64_t)seq * g->CL, c->h_bud + (int64_t)seq * g->CL,
                           sizeof(int32_t) * (size_t)g->CL, cudaMemcpyHostToDevice, c->st));
    }
    return gpu_cache_upload(c);
}

extern "C" skv_status skv_gpu_ctx_copy(skv_gpu_ctx *dst, const skv_gpu_ctx *src_c) {
    skv_gpu_ctx *src = (skv_gpu_ctx *)src_c;
    const skv_gpu_model *g = src->g;
    const skv_gpu_model *gd = dst->g; /* another model of the same cache shape (a coprocessor) may take it */
    if (gd->CL != g->CL || gd->KVH != g->KVH || gd->hd != g->hd || dst->n_ctx < src->h_next[0])
        return skv_set_error(SKV_ERR_ARG, "CUDA context copy: another cache shape or too short a destination");
    if (dst->h_next[0] != 0) return skv_set_error(SKV_ERR_ARG, "CUDA context copy: the destination is not empty");
    if (src->kv_bits || dst->kv_bits)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "CUDA context copy: forks of a KIVI (int8/int4) cache run on --backend cpu");
    if (src->kc)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "CUDA context copy: a KCache context cannot be forked (its V lives in "
                             "pinned host memory); fork the full cache into KCache, or use --backend cpu");
    CK(cudaStreamSynchronize(src->st));
    for (int l = 0; l < g->CL; l++)
        for (int k = 0; k < g->KVH; k++) {
            const int d = sid_of(dst, l, 0, k), s = sid_of(src, l, 0, k);
            skv_status st = grow(dst, d, (src->h_n[s] + BLK - 1) / BLK);
            if (st) return st;
            dst->h_n[d] = src->h_n[s];
        }
    skv_status st = gpu_cache_upload(dst);
    if (st) return st;
    k_copy_stream<<<g->CL * g->KVH, 256, 0, dst->st>>>(ref_of(src), ref_of(dst), src->n_seq, dst->n_seq, g->KVH);
    LAUNCHED();
    if (dst->kc) { /* V into the host rows and the device rows (KCache refuses models sharing caches: CL = L) */
        int64_t *voff = NULL;
        int32_t *vw = NULL;
        cudaError_t e = cudaMalloc((void **)&voff, sizeof(int64_t) * (size_t)g->L);
        if (e == cudaSuccess) e = cudaMalloc((void **)&vw, sizeof(int32_t) * (size_t)g->L);
        if (e == cudaSuccess) e = cudaMemcpy(voff, dst->kc_voff, sizeof(int64_t) * (size_t)g->L, cudaMemcpyHostToDevice);
        if (e == cudaSuccess) e = cudaMemcpy(vw, dst->kc_vw, sizeof(int32_t) * (size_t)g->L, cudaMemcpyHostToDevice);
        if (e == cudaSuccess) {
            k_kc_fork_v<<<g->CL * g->KVH, 256, 0, dst->st>>>(ref_of(src), src->n_seq, dst->kc_vhost, dst->kc_vdev, voff,
                                                          vw, dst->n_ctx, dst->n_seq, g->KVH);
            e = cudaGetLastError();
        }
        if (e == cudaSuccess) e = cudaStreamSynchronize(dst->st);
        cudaFree(voff), cudaFree(vw);
        CK(e);
        dst->kc_pre_seq = -1; /* a later prefill chunk reads the earlier V back from the host rows */
    }
    dst->h_next[0] = src->h_next[0];
    dst->win_from_h[0] = src->win_from_h[0];
    CK(cudaStreamSynchronize(dst->st));
    return SKV_OK;
}

extern "C" int64_t skv_gpu_seq_blocks(const skv_gpu_ctx *c, int32_t seq) {
    if (seq < 0 || seq >= c->n_seq) return -1;
    int64_t nb = 0;
    for (int l = 0; l < c->g->CL; l++)
        for (int k = 0; k < c->g->KVH; k++) nb += c->h_nb[sid_of(c, l, seq, k)];
    return nb;
}

extern "C" void skv_gpu_kv_usage(const skv_gpu_ctx *c, int64_t *bytes, int64_t *slow_bytes, int64_t *slots) {
    int64_t nb = 0, ns = 0, used = 0;
    for (int i = 0; i < c->n_streams; i++) nb += c->h_nb[i], ns += c->h_n[i], used += c->h_n[i] > 0;
    const int64_t half = nb * BLK * c->g->hd * (int64_t)sizeof(bf16);
    if (c->kc) { /* K blocks, V rows: the slow ones in host memory only */
        int64_t slow = 0;
        skv_gpu_kc_counts(c, NULL, NULL, &slow);
        const int64_t row = c->g->hd * (int64_t)sizeof(bf16);
        if (bytes) *bytes = half + ns * row;
        if (slow_bytes) *slow_bytes = slow * row;
        if (slots) *slots = ns;
        return;
    }
    /* KIVI: the quantised blocks and each used stream's f32 residual (32 rows of K and V) */
    if (bytes) *bytes = c->kv_bits ? nb * c->kv_bb + used * 32 * c->g->hd * 8 : 2 * half;
    if (slow_bytes) *slow_bytes = c->pol.v_slow ? half : 0;
    if (slots) *slots = ns;
}

extern "C" skv_status skv_gpu_stream_read(skv_gpu_ctx *c, int32_t layer, int32_t seq, int32_t kv_head, int32_t *n,
                                          int32_t *pos, float *acc, float *win, float *last, float *k, float *v) {
    const skv_gpu_model *g = c->g;
    if (layer < 0 || layer >= g->CL || seq < 0 || seq >= c->n_seq || kv_head < 0 || kv_head >= g->KVH)
        return skv_set_error(SKV_ERR_ARG, "CUDA stream read: layer %d sequence %d KV head %d", layer, seq, kv_head);
    CK(cudaStreamSynchronize(c->st));
    const int sid = sid_of(c, layer, seq, kv_head);
    int32_t m = 0;
    CK(cudaMemcpy(&m, c->slen + sid, sizeof m, cudaMemcpyDeviceToHost));
    *n = m;
    const int64_t o = (int64_t)sid * c->n_ctx;
    if (pos) CK(cudaMemcpy(pos, c->spos + o, sizeof(int32_t) * (size_t)m, cudaMemcpyDeviceToHost));
    if (acc) {
        if (c->sacc) CK(cudaMemcpy(acc, c->sacc + o, sizeof(float) * (size_t)m, cudaMemcpyDeviceToHost));
        else memset(acc, 0, sizeof(float) * (size_t)m);
    }
    if (win) {
        if (c->swin) CK(cudaMemcpy(win, c->swin + o, sizeof(float) * (size_t)m, cudaMemcpyDeviceToHost));
        else memset(win, 0, sizeof(float) * (size_t)m);
    }
    if (last) {
        if (c->slast) CK(cudaMemcpy(last, c->slast + o, sizeof(float) * (size_t)m, cudaMemcpyDeviceToHost));
        else memset(last, 0, sizeof(float) * (size_t)m);
    }
    if (c->kv_bits && (k || v) && m > 0) return gpu_kivi_read(c, sid, m, k, v);
    if (v && c->kc && m > 0) { /* KCache: every V row is in pinned host memory */
        const bf16 *src = c->kc_vhost_h + (int64_t)sid * c->n_ctx * g->hd;
        for (int64_t i = 0; i < (int64_t)m * g->hd; i++) v[i] = __bfloat162float(src[i]);
        v = NULL;
    }
    if ((k || v) && m > 0) {
        int32_t *rows = NULL;
        bf16 *buf = NULL;
        bf16 *hb = (bf16 *)malloc(sizeof(bf16) * (size_t)m * g->hd);
        int32_t *idx = (int32_t *)malloc(sizeof(int32_t) * (size_t)m);
        if (!hb || !idx) {
            free(hb), free(idx);
            return skv_set_error(SKV_ERR_NOMEM, "out of memory");
        }
        for (int i = 0; i < m; i++) idx[i] = i;
        cudaError_t e = cudaMalloc(&rows, sizeof(int32_t) * (size_t)m);
        if (e == cudaSuccess) e = cudaMalloc(&buf, sizeof(bf16) * (size_t)m * g->hd);
        if (e == cudaSuccess) e = cudaMemcpy(rows, idx, sizeof(int32_t) * (size_t)m, cudaMemcpyHostToDevice);
        for (int w = 0; w < 2 && e == cudaSuccess; w++) {
            float *out = w ? v : k;
            if (!out) continue;
            k_gather_rows<<<64, 256, 0, c->st>>>(w ? c->vpool : c->kpool, c->bt + (int64_t)sid * c->mb, rows, m, g->hd, buf);
            e = cudaGetLastError();
            if (e == cudaSuccess) e = cudaStreamSynchronize(c->st);
            if (e == cudaSuccess) e = cudaMemcpy(hb, buf, sizeof(bf16) * (size_t)m * g->hd, cudaMemcpyDeviceToHost);
            for (int64_t i = 0; e == cudaSuccess && i < (int64_t)m * g->hd; i++) out[i] = __bfloat162float(hb[i]);
        }
        cudaFree(rows), cudaFree(buf);
        free(hb), free(idx);
        CK(e);
    }
    return SKV_OK;
}

extern "C" skv_status skv_gpu_fetch_v(skv_gpu_ctx *c, int32_t layer, int32_t seq, int32_t kv_head, const int32_t *rows,
                                      int32_t n, void *dst) {
    const skv_gpu_model *g = c->g;
    if (layer < 0 || layer >= g->CL || seq < 0 || seq >= c->n_seq || kv_head < 0 || kv_head >= g->KVH || n < 0 ||
        n > c->n_ctx)
        return skv_set_error(SKV_ERR_ARG, "CUDA fetch: layer %d sequence %d KV head %d, %d rows", layer, seq, kv_head, n);
    if (c->kc || c->kv_bits) return skv_set_error(SKV_ERR_UNSUPPORTED, "CUDA fetch: not from a KCache or KIVI context");
    const int sid = sid_of(c, layer, seq, kv_head);
    for (int i = 0; i < n; i++)
        if (rows[i] < 0 || rows[i] >= c->h_n[sid])
            return skv_set_error(SKV_ERR_ARG, "CUDA fetch: slot %d of a stream of %d", rows[i], c->h_n[sid]);
    if (n == 0) return SKV_OK;
    /* after the compute stream's writes; the slot list is staged before return */
    CK(cudaEventRecord(c->e1, c->st));
    CK(cudaStreamWaitEvent(c->cst, c->e1, 0));
    CK(cudaStreamSynchronize(c->cst));
    CK(cudaMemcpyAsync(c->fetch_rows, rows, sizeof(int32_t) * (size_t)n, cudaMemcpyHostToDevice, c->cst));
    CK(cudaStreamSynchronize(c->cst));
    k_gather_rows<<<(n * (g->hd / 8) + 255) / 256, 256, 0, c->cst>>>(c->vpool, c->bt + (int64_t)sid * c->mb,
                                                                     c->fetch_rows, n, g->hd, (bf16 *)dst);
    LAUNCHED();
    return SKV_OK;
}

extern "C" skv_status skv_gpu_fetch_wait(skv_gpu_ctx *c) {
    CK(cudaStreamSynchronize(c->cst));
    return SKV_OK;
}

extern "C" skv_status skv_gpu_scratch(int64_t bytes, void **dev) {
    CK(cudaMalloc(dev, (size_t)bytes));
    return SKV_OK;
}
extern "C" skv_status skv_gpu_download(void *host, const void *dev, int64_t bytes) {
    CK(cudaMemcpy(host, dev, (size_t)bytes, cudaMemcpyDeviceToHost));
    return SKV_OK;
}
extern "C" void skv_gpu_scratch_free(void *dev) { cudaFree(dev); }

/* rows (n, hd) f32 on the host -> the pool rows of slots 0..n-1 of stream sid */
__global__ void k_scatter_rows(bf16 *pool, const int32_t *bts, const float *src, int n, int hd) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n * hd; i += gridDim.x * blockDim.x) {
        const int r = i / hd, d = i % hd;
        pool[slot_row(bts, r) * hd + d] = __float2bfloat16(src[i]);
    }
}

extern "C" skv_status skv_gpu_set_next(skv_gpu_ctx *c, int32_t seq, int32_t pos) {
    if (seq < 0 || seq >= c->n_seq || pos < 0 || pos > c->n_ctx)
        return skv_set_error(SKV_ERR_ARG, "CUDA: next position %d of sequence %d", pos, seq);
    c->h_next[seq] = pos;
    return SKV_OK;
}

extern "C" skv_status skv_gpu_stream_write(skv_gpu_ctx *c, int32_t layer, int32_t seq, int32_t kv_head, int32_t n,
                                           const int32_t *pos, const float *acc, const float *win, const float *last,
                                           const float *k, const float *v) {
    const skv_gpu_model *g = c->g;
    if (layer < 0 || layer >= g->CL || seq < 0 || seq >= c->n_seq || kv_head < 0 || kv_head >= g->KVH || n < 0 ||
        n > c->n_ctx)
        return skv_set_error(SKV_ERR_ARG, "CUDA stream write: layer %d sequence %d KV head %d, %d slots", layer, seq,
                             kv_head, n);
    const int sid = sid_of(c, layer, seq, kv_head);
    if (c->kc) return skv_set_error(SKV_ERR_UNSUPPORTED, "CUDA stream write: a KCache context cannot import a cache");
    if (c->kv_bits) return skv_set_error(SKV_ERR_UNSUPPORTED, "CUDA stream write: a KIVI (int8/int4) cache cannot import rows");
    if (c->h_n[sid] != 0) return skv_set_error(SKV_ERR_ARG, "CUDA stream write: the stream is not empty");
    CK(cudaStreamSynchronize(c->st));
    skv_status st = grow(c, sid, (n + BLK - 1) / BLK);
    if (st || (st = gpu_cache_upload(c))) return st;
    const int64_t o = (int64_t)sid * c->n_ctx;
    float *tmp = NULL;
    CK(cudaMalloc((void **)&tmp, sizeof(float) * (size_t)((int64_t)n * g->hd > 0 ? (int64_t)n * g->hd : 1)));
    cudaError_t e = cudaSuccess;
    for (int w = 0; w < 2 && e == cudaSuccess && n > 0; w++) {
        e = cudaMemcpy(tmp, w ? v : k, sizeof(float) * (size_t)n * g->hd, cudaMemcpyHostToDevice);
        if (e == cudaSuccess) {
            k_scatter_rows<<<64, 256, 0, c->st>>>(w ? c->vpool : c->kpool, c->bt + (int64_t)sid * c->mb, tmp, n, g->hd);
            e = cudaGetLastError();
        }
        if (e == cudaSuccess) e = cudaStreamSynchronize(c->st);
    }
    cudaFree(tmp);
    CK(e);
    if (n > 0) CK(cudaMemcpy(c->spos + o, pos, sizeof(int32_t) * (size_t)n, cudaMemcpyHostToDevice));
    float *dst[3] = {c->sacc, c->swin, c->slast};
    const float *src[3] = {acc, win, last};
    for (int i = 0; i < 3; i++) {
        if (!dst[i]) continue;
        if (src[i] && n > 0) CK(cudaMemcpy(dst[i] + o, src[i], sizeof(float) * (size_t)n, cudaMemcpyHostToDevice));
        else CK(cudaMemset(dst[i] + o, 0, sizeof(float) * (size_t)(n > 0 ? n : 1)));
    }
    CK(cudaMemcpy(c->slen + sid, &n, sizeof n, cudaMemcpyHostToDevice));
    c->h_n[sid] = n;
    return SKV_OK;
}

/* Copy sequence a's streams into sequence b's (block (layer * KVH + g)): K rows, V rows (the
 * pool's, or KCache's device rows — a ring copied whole — and its host rows), positions and
 * statistics. */
__global__ void k_copy_seq(stream_ref R, int a, int b, int n_seq, int KVH, bf16 *vd0, const int64_t *voff,
                           const int32_t *vw, bf16 *vh) {
    const int l = blockIdx.x / KVH, g = blockIdx.x % KVH;
    const int sa = (l * n_seq + a) * KVH + g, sb = (l * n_seq + b) * KVH + g;
    const int n = R.slen[sa], nch = R.hd / 8;
    const int32_t *ba = R.bt + (int64_t)sa * R.mb, *bb = R.bt + (int64_t)sb * R.mb;
    for (int i = threadIdx.x; i < n * nch; i += blockDim.x) {
        const int s = i / nch, ch = i % nch;
        const int64_t x = slot_row(ba, s) * R.hd, y = slot_row(bb, s) * R.hd;
        ((uint4 *)(R.kp + y))[ch] = ((const uint4 *)(R.kp + x))[ch];
        if (R.vp) ((uint4 *)(R.vp + y))[ch] = ((const uint4 *)(R.vp + x))[ch];
    }
    if (vd0) {
        const int w = vw[l], rows = min(n, w);
        bf16 *vd = vd0 + voff[l] * R.hd;
        const int64_t xa = ((int64_t)a * KVH + g) * w * R.hd, xb = ((int64_t)b * KVH + g) * w * R.hd;
        for (int i = threadIdx.x; i < (w == R.n_ctx ? rows : w) * nch; i += blockDim.x)
            ((uint4 *)(vd + xb))[i] = ((const uint4 *)(vd + xa))[i];
        const int64_t ha = (int64_t)sa * R.n_ctx * R.hd, hb = (int64_t)sb * R.n_ctx * R.hd;
        for (int i = threadIdx.x; i < n * nch; i += blockDim.x) ((uint4 *)(vh + hb))[i] = ((const uint4 *)(vh + ha))[i];
    }
    for (int s = threadIdx.x; s < n; s += blockDim.x) {
        const int64_t x = (int64_t)sa * R.n_ctx + s, y = (int64_t)sb * R.n_ctx + s;
        R.spos[y] = R.spos[x];
        if (R.sacc) R.sacc[y] = R.sacc[x];
        if (R.swin) R.swin[y] = R.swin[x];
        if (R.slast) R.slast[y] = R.slast[x];
    }
    if (threadIdx.x == 0) R.slen[sb] = n;
}

extern "C" skv_status skv_gpu_seq_copy(skv_gpu_ctx *c, int32_t dst, int32_t src) {
    const skv_gpu_model *g = c->g;
    if (dst < 0 || dst >= c->n_seq || src < 0 || src >= c->n_seq || dst == src)
        return skv_set_error(SKV_ERR_ARG, "CUDA sequence copy: from %d into %d (%d sequences)", src, dst, c->n_seq);
    if (c->h_next[dst] != 0) return skv_set_error(SKV_ERR_ARG, "CUDA sequence copy: sequence %d is not empty", dst);
    if (c->pol.ev.evicts && c->pol.ev.step)
        return skv_set_error(SKV_ERR_UNSUPPORTED, "CUDA sequence copy: a policy that evicts every step");
    if (c->kv_bits) return skv_set_error(SKV_ERR_UNSUPPORTED, "CUDA sequence copy: not of a KIVI (int8/int4) cache");
    CK(cudaStreamSynchronize(c->st));
    for (int l = 0; l < g->CL; l++) /* cache layers */
        for (int k = 0; k < g->KVH; k++) {
            const int d = sid_of(c, l, dst, k), s = sid_of(c, l, src, k);
            skv_status st = grow(c, d, (c->h_n[s] + BLK - 1) / BLK);
            if (st) return st;
            c->h_n[d] = c->h_n[s];
        }
    skv_status st = gpu_cache_upload(c);
    if (st) return st;
    int64_t *voff = NULL;
    int32_t *vw = NULL;
    if (c->kc) {
        CK(cudaMalloc((void **)&voff, sizeof(int64_t) * (size_t)g->L));
        cudaError_t e = cudaMalloc((void **)&vw, sizeof(int32_t) * (size_t)g->L);
        if (e == cudaSuccess) e = cudaMemcpy(voff, c->kc_voff, sizeof(int64_t) * (size_t)g->L, cudaMemcpyHostToDevice);
        if (e == cudaSuccess) e = cudaMemcpy(vw, c->kc_vw, sizeof(int32_t) * (size_t)g->L, cudaMemcpyHostToDevice);
        if (e != cudaSuccess) {
            cudaFree(voff), cudaFree(vw);
            CK(e);
        }
        if (c->kc_pre_seq == dst) c->kc_pre_seq = -1;
    }
    k_copy_seq<<<g->CL * g->KVH, 512, 0, c->st>>>(ref_of(c), src, dst, c->n_seq, g->KVH, c->kc ? c->kc_vdev : NULL, voff,
                                                 vw, c->kc_vhost);
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) e = cudaStreamSynchronize(c->st);
    cudaFree(voff), cudaFree(vw);
    CK(e);
    c->h_next[dst] = c->h_next[src];
    memcpy(c->h_bud + (int64_t)dst * g->CL, c->h_bud + (int64_t)src * g->CL, sizeof(int32_t) * (size_t)g->CL);
    CK(cudaMemcpy(c->bud + (int64_t)dst * g->CL, c->h_bud + (int64_t)dst * g->CL, sizeof(int32_t) * (size_t)g->CL,
                  cudaMemcpyHostToDevice));
    return SKV_OK;
}
