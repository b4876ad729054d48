// pcie.cu — dev experiment: zero-copy gather of random 256-byte rows from host memory, by
// allocation kind (cudaHostAlloc, THP + cudaHostRegister, hugetlbfs + cudaHostRegister) and size.
#include <cuda.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <sys/mman.h>
#include <time.h>

#define CK(x) do { cudaError_t e_ = (x); if (e_) { printf("CUDA %s at %d: %s\n", #x, __LINE__, cudaGetErrorString(e_)); exit(1); } } while (0)

static double now() { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }

// block b: stream sid[b] (n_ctx rows of 256 B); reads cnt rows idx[b*cnt + i]; lanes in groups of 16 per row,
// FU rows in flight per group
template <int FU>
__global__ void gather(const uint4 *host, const int64_t *sid, const int *idx, int cnt, int64_t n_ctx, float *out) {
    const int lane = threadIdx.x & 31, li = lane & 15, grp = threadIdx.x >> 4, NGR = blockDim.x >> 4;
    const uint4 *base = host + sid[blockIdx.x] * n_ctx * 16 + li;
    const int *ix = idx + (int64_t)blockIdx.x * cnt;
    float acc = 0;
    for (int i0 = grp; i0 < cnt; i0 += FU * NGR) {
        uint4 v[FU];
#pragma unroll
        for (int u = 0; u < FU; u++) {
            const int i = i0 + u * NGR;
            v[u] = i < cnt ? base[(int64_t)ix[i] * 16] : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < FU; u++) acc += __uint_as_float(v[u].x ^ v[u].y ^ v[u].z ^ v[u].w);
    }
    if (acc == 1.2345f) out[0] = acc;
}

/* few-SM gather: rows flattened (row i: stream sid[i / cnt], slot idx[i]) copied into stage; 16 lanes per row,
   FU rows in flight per group */
template <int FU>
__global__ void gather_few(const uint4 *host, const int64_t *sid, const int *idx, int cnt, int nrows, int64_t n_ctx, uint4 *stage) {
    const int li = threadIdx.x & 15, NG = (gridDim.x * blockDim.x) >> 4;
    const int g0 = (blockIdx.x * blockDim.x + threadIdx.x) >> 4;
    for (int i0 = g0; i0 < nrows; i0 += FU * NG) {
        uint4 v[FU];
#pragma unroll
        for (int u = 0; u < FU; u++) {
            const int i = i0 + u * NG;
            v[u] = i < nrows ? host[(sid[i / cnt] * n_ctx + idx[i]) * 16 + li] : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < FU; u++) {
            const int i = i0 + u * NG;
            if (i < nrows) stage[(int64_t)i * 16 + li] = v[u];
        }
    }
}

__global__ void stream_k(const uint4 *a, uint4 *b, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint4 v = a[i];
        v.x += 1;
        b[i] = v;
    }
}

/* Modes m = 0 the gather alone (launched by `gather` on s2), 1 the HBM copy alone (18 passes of
   stream_k on s1), 2 both together; two repetitions each. t[m] = {ms from the start to the end
   of s2's work, ms to the end of s1's work} of the last repetition. */
template <class G>
static void time_modes(G gather, const uint4 *xa, uint4 *xb, size_t nb, cudaStream_t s1, cudaStream_t s2,
                       cudaEvent_t e0, cudaEvent_t e1, cudaEvent_t e2, float t[3][2]) {
    for (int m = 0; m < 3; m++) for (int rep = 0; rep < 2; rep++) {
        cudaEventRecord(e0, s1);
        cudaStreamWaitEvent(s2, e0, 0);
        if (m != 1) gather();
        if (m != 0) for (int k = 0; k < 18; k++) stream_k<<<132 * 8, 256, 0, s1>>>(xa, xb, nb / 16);
        cudaEventRecord(e1, s2);
        cudaEventRecord(e2, s1);
        cudaEventSynchronize(e1), cudaEventSynchronize(e2);
        cudaEventElapsedTime(&t[m][0], e0, e1), cudaEventElapsedTime(&t[m][1], e0, e2);
    }
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "alloc";
    const double gb = argc > 2 ? atof(argv[2]) : 4;
    const int blocks = argc > 3 ? atoi(argv[3]) : 368, cnt = argc > 4 ? atoi(argv[4]) : 64;
    const int64_t n_ctx = 32768, stream_bytes = n_ctx * 256;
    const size_t S = (size_t)(gb * 1e9) / stream_bytes * stream_bytes;
    const int64_t nstreams = S / stream_bytes;
    double t0 = now();
    void *h = NULL;
    void *dvm = NULL;
    if (!strcmp(mode, "alloc")) {
        CK(cudaHostAlloc(&h, S, cudaHostAllocMapped));
    } else if (!strcmp(mode, "vmm") || !strcmp(mode, "vmmnuma")) {
        CK(cudaFree(0));
        CUmemAllocationProp p;
        memset(&p, 0, sizeof p);
        p.type = CU_MEM_ALLOCATION_TYPE_PINNED;
        p.location.type = !strcmp(mode, "vmm") ? CU_MEM_LOCATION_TYPE_HOST : CU_MEM_LOCATION_TYPE_HOST_NUMA;
        p.location.id = 0;
        size_t gr = 0, grm = 0;
        CUresult r = cuMemGetAllocationGranularity(&gr, &p, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED);
        cuMemGetAllocationGranularity(&grm, &p, CU_MEM_ALLOC_GRANULARITY_MINIMUM);
        printf("vmm granularity rec %zu min %zu (r %d)\n", gr, grm, (int)r);
        const size_t SZ = (S + gr - 1) / gr * gr;
        CUmemGenericAllocationHandle hd;
        r = cuMemCreate(&hd, SZ, &p, 0);
        if (r) { printf("cuMemCreate %d\n", (int)r); return 1; }
        CUdeviceptr va;
        r = cuMemAddressReserve(&va, SZ, gr, 0, 0);
        if (r) { printf("reserve %d\n", (int)r); return 1; }
        r = cuMemMap(va, SZ, 0, hd, 0);
        if (r) { printf("map %d\n", (int)r); return 1; }
        CUmemAccessDesc ad[2];
        memset(ad, 0, sizeof ad);
        ad[0].location.type = CU_MEM_LOCATION_TYPE_DEVICE, ad[0].location.id = 0, ad[0].flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
        ad[1].location.type = CU_MEM_LOCATION_TYPE_HOST, ad[1].location.id = 0, ad[1].flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
        r = cuMemSetAccess(va, SZ, ad, 2);
        if (r) { printf("setaccess host+dev %d; device only\n", (int)r); r = cuMemSetAccess(va, SZ, ad, 1); }
        if (r) { printf("setaccess %d\n", (int)r); return 1; }
        dvm = (void *)va;
        h = NULL;
    } else {
        int flags = MAP_PRIVATE | MAP_ANONYMOUS;
        if (!strcmp(mode, "hugetlb")) flags |= MAP_HUGETLB | (21 << 26);
        if (!strcmp(mode, "huge1g")) flags |= MAP_HUGETLB | (30 << 26);
        h = mmap(NULL, S, PROT_READ | PROT_WRITE, flags, -1, 0);
        if (h == MAP_FAILED) { perror("mmap"); return 1; }
        if (!strcmp(mode, "thp")) madvise(h, S, MADV_HUGEPAGE);
        memset(h, 1, S);
        CK(cudaHostRegister(h, S, cudaHostRegisterMapped));
    }
    double t1 = now();
    void *d = dvm;
    if (h) {
        memset(h, 0x3c, 4096);
        CK(cudaHostGetDevicePointer(&d, h, 0));
    } else {
        CK(cudaMemset(d, 0x3c, 4096));
        h = d; /* host pointer for the bulk copy: the same VA (cudaMemcpy handles it) */
    }
    // indices: per layer-like launch, blocks pick distinct random streams; rows random within the stream
    const int launches = 32;
    int64_t *sid_h = (int64_t *)malloc(sizeof(int64_t) * blocks * launches);
    int *idx_h = (int *)malloc(sizeof(int) * (size_t)blocks * cnt * launches);
    srand(7);
    for (int i = 0; i < blocks * launches; i++) sid_h[i] = ((int64_t)rand() * 7919 + rand()) % nstreams;
    for (size_t i = 0; i < (size_t)blocks * cnt * launches; i++) idx_h[i] = rand() % (int)n_ctx;
    int64_t *sid_d; int *idx_d; float *out;
    CK(cudaMalloc(&sid_d, sizeof(int64_t) * blocks * launches));
    CK(cudaMalloc(&idx_d, sizeof(int) * (size_t)blocks * cnt * launches));
    CK(cudaMalloc(&out, 4));
    CK(cudaMemcpy(sid_d, sid_h, sizeof(int64_t) * blocks * launches, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(idx_d, idx_h, sizeof(int) * (size_t)blocks * cnt * launches, cudaMemcpyHostToDevice));
    cudaEvent_t a, b;
    cudaEventCreate(&a), cudaEventCreate(&b);
    const double bytes = (double)blocks * cnt * 256 * launches;
    printf("%-7s %6.1f GB (pin/register %.1f s) blocks %d rows %d:", mode, S / 1e9, t1 - t0, blocks, cnt);
    for (int fu = 0; fu < 3; fu++) {
        float best = 1e9;
        for (int rep = 0; rep < 4; rep++) {
            cudaEventRecord(a);
            for (int L = 0; L < launches; L++) {
                const uint4 *hp = (const uint4 *)d;
                if (fu == 0) gather<4><<<blocks, 128>>>(hp, sid_d + L * blocks, idx_d + (size_t)L * blocks * cnt, cnt, n_ctx, out);
                if (fu == 1) gather<8><<<blocks, 128>>>(hp, sid_d + L * blocks, idx_d + (size_t)L * blocks * cnt, cnt, n_ctx, out);
                if (fu == 2) gather<8><<<blocks, 256>>>(hp, sid_d + L * blocks, idx_d + (size_t)L * blocks * cnt, cnt, n_ctx, out);
            }
            cudaEventRecord(b);
            CK(cudaEventSynchronize(b));
            float ms;
            cudaEventElapsedTime(&ms, a, b);
            if (ms < best) best = ms;
        }
        printf("  %s %.2f ms %.1f GB/s", fu == 0 ? "fu4" : fu == 1 ? "fu8" : "fu8x256", best, bytes / best / 1e6);
    }
    { /* concurrency: gather (fu4) on s2 alongside an HBM copy kernel on s1 (2 x 2 GB per pass) */
        cudaStream_t s1, s2;
        cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking), cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking);
        const size_t nb = (size_t)2 << 30;
        uint4 *xa, *xb;
        CK(cudaMalloc(&xa, nb)); CK(cudaMalloc(&xb, nb));
        cudaEvent_t e0, e1, e2;
        cudaEventCreate(&e0), cudaEventCreate(&e1), cudaEventCreate(&e2);
        float t[3][2];
        time_modes([&] {
            for (int L = 0; L < launches; L++)
                gather<4><<<blocks, 128, 0, s2>>>((const uint4 *)d, sid_d + L * blocks, idx_d + (size_t)L * blocks * cnt, cnt, n_ctx, out);
        }, xa, xb, nb, s1, s2, e0, e1, e2, t);
        uint4 *stage;
        CK(cudaMalloc(&stage, (size_t)blocks * cnt * 256));
        const int cfgs[][3] = {{2, 256, 16}, {4, 256, 16}, {4, 256, 32}, {4, 512, 16}, {8, 256, 8}, {8, 256, 16}, {8, 256, 32}, {8, 512, 16}, {16, 256, 8}, {16, 128, 16}};
        for (int ci = 0; ci < 10; ci++) for (int q = 1; q <= 4; q *= 4) {
            const int nbk = cfgs[ci][0], nt = cfgs[ci][1], fu = cfgs[ci][2];
            float tt[3][2];
            time_modes([&] {
                for (int L = 0; L < launches; L++) for (int qq = 0; qq < q; qq++) {
                    const int nr = blocks * cnt / q;
                    const int64_t *sp = sid_d + L * blocks + qq * blocks / q;
                    const int *ip = idx_d + (size_t)L * blocks * cnt + (size_t)qq * nr;
                    if (fu == 8) gather_few<8><<<nbk, nt, 0, s2>>>((const uint4 *)d, sp, ip, cnt, nr, n_ctx, stage);
                    if (fu == 16) gather_few<16><<<nbk, nt, 0, s2>>>((const uint4 *)d, sp, ip, cnt, nr, n_ctx, stage);
                    if (fu == 32) gather_few<32><<<nbk, nt, 0, s2>>>((const uint4 *)d, sp, ip, cnt, nr, n_ctx, stage);
                }
            }, xa, xb, nb, s1, s2, e0, e1, e2, tt);
            printf("\n    few %2d x%3d fu%2d launches/layer %d: gather alone %.2f ms (%.1f GB/s) | hbm alone %.2f | together gather %.2f hbm %.2f",
                   nbk, nt, fu, q, tt[0][0], bytes / tt[0][0] / 1e6, tt[1][1], tt[2][0], tt[2][1]);
            fflush(stdout);
        }
        printf("\n  [gather alone %.2f ms | hbm alone %.2f ms (%.0f GB/s) | together: gather %.2f ms, hbm %.2f ms]", t[0][0], t[1][1],
               6 * 2.0 * nb / t[1][1] / 1e6, t[2][0], t[2][1]);
        cudaFree(xa), cudaFree(xb);
    }
    // bulk copy reference (256 MB)
    void *dd;
    const size_t B = 256 << 20;
    CK(cudaMalloc(&dd, B));
    float best = 1e9;
    for (int rep = 0; rep < 3; rep++) {
        cudaEventRecord(a);
        CK(cudaMemcpyAsync(dd, (char *)h + (S / 2 / 4096) * 4096, B, cudaMemcpyHostToDevice));
        cudaEventRecord(b);
        cudaEventSynchronize(b);
        float ms;
        cudaEventElapsedTime(&ms, a, b);
        if (ms < best) best = ms;
    }
    printf("  bulk %.1f GB/s\n", B / best / 1e6);
    fflush(stdout);
    return 0;
}
