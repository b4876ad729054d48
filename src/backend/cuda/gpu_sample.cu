/*
 * gpu_sample.cu — next-token sampling on the device, the same steps as src/sample/sampler.c:
 * repetition penalty on the seen ids, temperature softmax, top-k, top-p (the nucleus measured
 * against the mass after top-k, or the whole mass), then one draw u in [0, 1) from the host's
 * generator, so a GPU run and a CPU run with the same seed draw from the same stream.
 *
 * One block of 1024 threads per row. Instead of sorting the vocabulary, thresholds are found
 * by radix selection over the probabilities' float bits (p >= 0, so the bits order as the
 * values): by count for top-k, by mass for top-p and for the draw itself (the token where the
 * descending cumulative mass passes u * total; without top-k and top-p the CPU does not sort,
 * and the draw walks the ids in order as it does). Among exactly equal probabilities the lower
 * id comes first (the CPU's sort leaves their order unspecified); top-k keeps every id tied
 * with the k-th.
 */
#include "backend/cuda/gpu_ctx.cuh"

struct gsamp {
    float temperature, top_p, penalty;
    int32_t top_k, n_seen;
    double u;
};

#define SB 1024 /* threads per row */

__device__ __forceinline__ uint32_t fbits(float v) { return __float_as_uint(v); }

__device__ double block_sum_d(double v, double *sh) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        double s = 0;
        for (int w = 0; w < SB / 32; w++) s += sh[w];
        sh[32] = s;
    }
    __syncthreads();
    return sh[32];
}

/* max over the row of (ordered value, ~index): the largest value, ties to the lowest index */
__device__ unsigned long long block_max_key(unsigned long long v, unsigned long long *sh) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const unsigned long long t = __shfl_xor_sync(0xffffffffu, v, o);
        v = t > v ? t : v;
    }
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned long long m = 0;
        for (int w = 0; w < SB / 32; w++) m = sh[w] > m ? sh[w] : m;
        sh[32] = m;
    }
    __syncthreads();
    return sh[32];
}

__device__ __forceinline__ unsigned long long vkey(float v, int i) {
    uint32_t u = __float_as_uint(v);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((unsigned long long)u << 32) | (uint32_t)(0xffffffffu - (uint32_t)i);
}

/* The largest value t among candidates with (count or mass of candidates >= t) reaching the
 * target: by count (mass = 0) the target-th largest; by mass the value where the descending
 * cumulative mass reaches target (strict: passes it). *above: the count or mass strictly
 * greater than t. */
template <class C>
__device__ float select_desc(const float *p, int V, C cand, double target, int by_mass, int strict, double *hist,
                             double *sh, double *above) {
    uint32_t prefix = 0, mask = 0;
    double acc = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += SB) hist[i] = 0;
        __syncthreads();
        for (int i = threadIdx.x; i < V; i += SB) {
            if (!cand(i)) continue;
            const uint32_t u = fbits(p[i]);
            if ((u & mask) == prefix) atomicAdd(&hist[(u >> shift) & 255], by_mass ? (double)p[i] : 1.0);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int d = 255;
            for (; d > 0; d--) {
                const double m = hist[d];
                if (strict ? acc + m > target : acc + m >= target) break;
                acc += m;
            }
            sh[40] = acc;
            ((uint32_t *)&sh[42])[0] = prefix | ((uint32_t)d << shift);
        }
        __syncthreads();
        acc = sh[40];
        prefix = ((uint32_t *)&sh[42])[0];
        mask |= 255u << shift;
        __syncthreads();
    }
    *above = acc;
    return __uint_as_float(prefix);
}

/* The j-th (0-based, in id order) candidate equal to t; the last such when j is too large. */
template <class C>
__device__ int nth_equal(const float *p, int V, C cand, float t, int j, int *cnt) {
    const int chunk = (V + SB - 1) / SB, a = threadIdx.x * chunk, b = min(V, a + chunk);
    int k = 0;
    for (int i = a; i < b; i++) k += cand(i) && p[i] == t;
    cnt[threadIdx.x] = k;
    __syncthreads();
    if (threadIdx.x == 0) {
        int tot = 0;
        for (int i = 0; i < SB; i++) tot += cnt[i];
        int want = tot == 0 ? 0 : min(j, tot - 1), who = -1, before = 0;
        for (int i = 0; i < SB && who < 0; i++) {
            if (before + cnt[i] > want) who = i;
            else before += cnt[i];
        }
        cnt[SB] = who, cnt[SB + 1] = want - before;
    }
    __syncthreads();
    const int who = cnt[SB];
    if (threadIdx.x == who) {
        int r = cnt[SB + 1];
        for (int i = a; i < b; i++)
            if (cand(i) && p[i] == t && r-- == 0) {
                cnt[SB + 2] = i;
                break;
            }
    }
    __syncthreads();
    return who < 0 ? -1 : cnt[SB + 2];
}

/* The first id where the cumulative mass in id order passes target (the CPU sampler's order
 * when neither top-k nor top-p sorts); the last id when rounding leaves none. */
__device__ int draw_in_order(const float *p, int V, double target, double *csum, int *cnt) {
    const int chunk = (V + SB - 1) / SB, a = threadIdx.x * chunk, b = min(V, a + chunk);
    double t = 0;
    for (int i = a; i < b; i++) t += p[i];
    csum[threadIdx.x] = t;
    __syncthreads();
    if (threadIdx.x == 0) {
        double acc = 0;
        int who = -1;
        for (int i = 0; i < SB && who < 0; i++) {
            if (target < acc + csum[i]) who = i;
            else acc += csum[i];
        }
        cnt[SB] = who, cnt[SB + 2] = V - 1;
        csum[SB] = acc;
    }
    __syncthreads();
    if ((int)threadIdx.x == cnt[SB]) {
        double acc = csum[SB];
        for (int i = a; i < b; i++) {
            acc += p[i];
            if (target < acc) {
                cnt[SB + 2] = i;
                break;
            }
        }
    }
    __syncthreads();
    return cnt[SB + 2];
}

__global__ void __launch_bounds__(SB) k_sample(const float *logits, float *prob, const gsamp *args, const int32_t *seen,
                                               int V, int n_ctx, int32_t *next) {
    __shared__ double hist[256], sh[48], csum[SB + 1];
    __shared__ unsigned long long shk[33];
    __shared__ int cnt[SB + 3];
    const int r = blockIdx.x;
    const gsamp a = args[r];
    const float *lg = logits + (int64_t)r * V;
    float *p = prob + (int64_t)r * V;
    for (int i = threadIdx.x; i < V; i += SB) p[i] = lg[i];
    __syncthreads();
    if (a.penalty != 1.0f) /* distinct ids: no two threads touch one entry */
        for (int i = threadIdx.x; i < a.n_seen; i += SB) {
            const int id = seen[(int64_t)r * n_ctx + i];
            const float v = p[id];
            p[id] = v > 0 ? v / a.penalty : v * a.penalty;
        }
    __syncthreads();
    unsigned long long best = 0;
    for (int i = threadIdx.x; i < V; i += SB) {
        const unsigned long long k = vkey(p[i], i);
        best = k > best ? k : best;
    }
    best = block_max_key(best, shk);
    const int arg = (int)(0xffffffffu - (uint32_t)(best & 0xffffffffu));
    if (a.temperature == 0.0f) {
        if (threadIdx.x == 0) next[r] = arg;
        return;
    }
    const float inv_t = 1.0f / a.temperature, mx = p[arg];
    __syncthreads();
    double s = 0;
    for (int i = threadIdx.x; i < V; i += SB) {
        const float e = expf((p[i] - mx) * inv_t);
        p[i] = e;
        s += e;
    }
    const double sum = block_sum_d(s, sh);
    double above;
    if (!(a.top_k > 0) && !(a.top_p < 1.0f)) { /* nothing sorts: the draw walks ids in order */
        const int id = draw_in_order(p, V, a.u * sum, csum, cnt);
        if (threadIdx.x == 0) next[r] = id;
        return;
    }
    /* top-k: every id at or above the k-th largest probability */
    float tk = 0;
    const bool use_k = a.top_k > 0 && a.top_k < V;
    if (use_k) tk = select_desc(p, V, [](int) { return true; }, (double)a.top_k, 0, 0, hist, sh, &above);
    auto in_k = [&](int i) { return !use_k || p[i] >= tk; };
    double tot = sum;
    if (use_k) {
        double t = 0;
        for (int i = threadIdx.x; i < V; i += SB) t += in_k(i) ? p[i] : 0.0;
        tot = block_sum_d(t, sh);
    }
    /* top-p: the smallest head of the descending order whose mass reaches top_p * tot */
    float tp = 0;
    const bool use_p = a.top_p < 1.0f;
    if (use_p) tp = select_desc(p, V, in_k, (double)a.top_p * tot, 1, 0, hist, sh, &above);
    auto in_c = [&](int i) { return in_k(i) && (!use_p || p[i] >= tp); };
    double t = 0;
    for (int i = threadIdx.x; i < V; i += SB) t += in_c(i) ? p[i] : 0.0;
    const double fin = block_sum_d(t, sh);
    /* the draw: where the descending cumulative mass passes u * fin */
    const double target = a.u * fin;
    const float tv = select_desc(p, V, in_c, target, 1, 1, hist, sh, &above);
    const int j = tv > 0 ? (int)floor((target - above) / (double)tv) : 0;
    const int id = nth_equal(p, V, in_c, tv, j, cnt);
    if (threadIdx.x == 0) next[r] = id >= 0 ? id : arg;
}

skv_status gpu_sample_alloc(skv_gpu_ctx *c) {
    const int64_t n = c->n_seq;
    CK(cudaMalloc((void **)&c->prob, sizeof(float) * (size_t)(n * c->g->V)));
    CK(cudaMalloc(&c->samp_d, sizeof(gsamp) * (size_t)n));
    CK(cudaMallocHost(&c->samp_h, sizeof(gsamp) * (size_t)n));
    CK(cudaMalloc((void **)&c->seen_d, sizeof(int32_t) * (size_t)(n * c->n_ctx)));
    CK(cudaMallocHost((void **)&c->seen_h, sizeof(int32_t) * (size_t)(n * c->n_ctx)));
    return SKV_OK;
}

skv_status gpu_sample_stage(skv_gpu_ctx *c, const skv_gpu_sample *s, int n) {
    gsamp *h = (gsamp *)c->samp_h;
    int most = 0;
    for (int r = 0; r < n; r++) {
        if (s[r].n_seen > c->n_ctx || s[r].n_seen < 0)
            return skv_set_error(SKV_ERR_ARG, "CUDA sampling: %d seen ids (at most %d)", s[r].n_seen, c->n_ctx);
        if (!(s[r].u >= 0 && s[r].u < 1)) return skv_set_error(SKV_ERR_ARG, "CUDA sampling: draw %g outside [0, 1)", s[r].u);
        h[r] = gsamp{s[r].temperature, s[r].top_p, s[r].penalty, s[r].top_k, s[r].n_seen, s[r].u};
        for (int i = 0; i < s[r].n_seen; i++) {
            const int32_t id = s[r].seen[i];
            if (id < 0 || id >= c->g->V) return skv_set_error(SKV_ERR_ARG, "CUDA sampling: seen id %d", id);
            c->seen_h[(int64_t)r * c->n_ctx + i] = id;
        }
        most = s[r].n_seen > most ? s[r].n_seen : most;
    }
    CK(cudaMemcpyAsync(c->samp_d, c->samp_h, sizeof(gsamp) * (size_t)n, cudaMemcpyHostToDevice, c->st));
    if (most > 0)
        CK(cudaMemcpy2DAsync(c->seen_d, sizeof(int32_t) * (size_t)c->n_ctx, c->seen_h, sizeof(int32_t) * (size_t)c->n_ctx,
                             sizeof(int32_t) * (size_t)most, (size_t)n, cudaMemcpyHostToDevice, c->st));
    return SKV_OK;
}

skv_status gpu_sample_launch(skv_gpu_ctx *c, int n) {
    k_sample<<<n, SB, 0, c->st>>>(c->logits, c->prob, (const gsamp *)c->samp_d, c->seen_d, c->g->V, c->n_ctx, c->next_d);
    LAUNCHED();
    return SKV_OK;
}
