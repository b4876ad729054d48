/*
 * gpu_prof.cu — the decode step's per-stage profile (SKV_CUDA_PROF=N, see gpu_ctx.cuh): the
 * step's launches run eagerly behind a kernel that holds the stream for 5 ms, so the host has
 * queued the whole step (and an event after each launch) before the device starts it; an
 * event's time minus the previous one's is then the stage's kernel time plus its launch gap on
 * the device, with no host time in it. Stages are summed by name over N steps and printed to
 * stderr (per step), then the sums start again.
 */
#include "backend/cuda/gpu_ctx.cuh"

#define PROF_MARKS 2048
#define PROF_NAMES 32

struct gpu_prof {
    cudaEvent_t ev[PROF_MARKS + 1];
    const char *what[PROF_MARKS];
    int n;                                 /* marks this step */
    const char *name[PROF_NAMES];
    double ms[PROF_NAMES];
    int calls[PROF_NAMES], n_names, steps, pos_lo, pos_hi;
};

__global__ void k_spin(unsigned long long ns) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do {
        __nanosleep(1000);
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    } while (t - t0 < ns);
}

skv_status gpu_prof_begin(skv_gpu_ctx *c) {
    if (!c->pf) {
        c->pf = (gpu_prof *)calloc(1, sizeof(gpu_prof));
        if (!c->pf) return skv_set_error(SKV_ERR_NOMEM, "out of memory");
        for (int i = 0; i <= PROF_MARKS; i++) CK(cudaEventCreate(&c->pf->ev[i]));
    }
    k_spin<<<1, 1, 0, c->st>>>(5000000ull);
    LAUNCHED();
    CK(cudaEventRecord(c->pf->ev[0], c->st));
    c->pf->n = 0;
    return SKV_OK;
}

void gpu_prof_mark(skv_gpu_ctx *c, const char *what) {
    gpu_prof *p = c->pf;
    if (!p || p->n >= PROF_MARKS) return;
    p->what[p->n] = what;
    cudaEventRecord(p->ev[++p->n], c->st);
}

skv_status gpu_prof_end(skv_gpu_ctx *c, int pos) {
    gpu_prof *p = c->pf;
    CK(cudaEventSynchronize(p->ev[p->n]));
    for (int i = 0; i < p->n; i++) {
        float ms = 0;
        CK(cudaEventElapsedTime(&ms, p->ev[i], p->ev[i + 1]));
        int k = 0;
        while (k < p->n_names && strcmp(p->name[k], p->what[i])) k++;
        if (k == p->n_names) {
            if (k == PROF_NAMES) continue;
            p->name[p->n_names++] = p->what[i];
        }
        p->ms[k] += ms, p->calls[k]++;
    }
    if (p->steps++ == 0) p->pos_lo = pos;
    p->pos_hi = pos;
    if (p->steps < c->prof) return SKV_OK;
    double tot = 0;
    for (int k = 0; k < p->n_names; k++) tot += p->ms[k];
    fprintf(stderr, "decode profile: %d steps at positions %d..%d, %.4f ms per step (eager launches)\n", p->steps,
            p->pos_lo, p->pos_hi, tot / p->steps);
    for (int k = 0; k < p->n_names; k++)
        fprintf(stderr, "  %-14s %4d launches %9.4f ms %5.1f%%\n", p->name[k], p->calls[k] / p->steps,
                p->ms[k] / p->steps, 100 * p->ms[k] / tot);
    p->n_names = p->steps = 0;
    memset(p->ms, 0, sizeof p->ms), memset(p->calls, 0, sizeof p->calls);
    return SKV_OK;
}

void gpu_prof_free(skv_gpu_ctx *c) {
    if (!c->pf) return;
    for (int i = 0; i <= PROF_MARKS; i++) cudaEventDestroy(c->pf->ev[i]);
    free(c->pf);
    c->pf = NULL;
}
