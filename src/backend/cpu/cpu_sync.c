/*
 * cpu_sync.c — the barrier of the single-token decode pass (cpu.h: skv_cpu_bar).
 *
 * A decode step of a small model crosses ~10 barriers per layer, each a few microseconds of
 * work apart. OpenMP's barrier under OMP_WAIT_POLICY=passive (how a shared machine is run) puts
 * a waiting thread to sleep at once; waking it again costs tens of microseconds on a virtual
 * machine (an inter-processor interrupt to a halted vCPU), which made up two thirds of a kvt-l
 * step at depth 1984 with 2 threads. This barrier polls first, then sleeps on a futex. It polls
 * with a few pauses and then sched_yield: on a quiet machine the yield returns at once (a poll
 * every microsecond or so), on a loaded one it hands the core to whoever waits for it (maybe
 * the partner thread; a pause loop there made a step up to 2x slower than sleeping at once).
 * How long it polls adapts: every wait is timed, and a wait that ended within SKV_BAR_SPIN_MAX
 * (the partner was running and arrived soon) lets the budget grow back slowly towards that
 * maximum, while a longer one (on a loaded machine, a partner descheduled for a time slice)
 * halves it,
 * so that an oversubscribed machine sees the sleeping barrier and a quiet one the spinning.
 *
 * Sense by generation: the last thread to arrive resets the count and advances `gen`; the others
 * wait for `gen` to move. `sleepers` counts threads in the futex wait, so the last thread makes
 * the wake-up system call only when someone sleeps (both sides use sequentially consistent
 * operations: a sleeper either sees the new generation or is seen by the waker).
 */
#include "backend/cpu/cpu.h"

#include <limits.h>
#include <sched.h>
#include <stdlib.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SKV_PAUSE() _mm_pause()
#else
#define SKV_PAUSE() ((void)0)
#endif

#define SKV_BAR_SPIN_MAX 100000 /* ns: the most a wait spins before sleeping */

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void skv_cpu_bar_init(skv_cpu_bar *b) {
    atomic_init(&b->count, 0);
    atomic_init(&b->gen, 0);
    atomic_init(&b->sleepers, 0);
    atomic_init(&b->spin_ns, SKV_BAR_SPIN_MAX / 2);
}

void skv_cpu_bar_wait(skv_cpu_bar *b, int n) {
    if (n <= 1) return;
    const unsigned g = atomic_load(&b->gen);
    if (atomic_fetch_add(&b->count, 1) == n - 1) {
        atomic_store(&b->count, 0);
        atomic_fetch_add(&b->gen, 1);
        if (atomic_load(&b->sleepers) > 0) syscall(SYS_futex, &b->gen, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
        return;
    }
    /* poll (the clock read every 8 polls), then sleep */
    const int64_t t0 = now_ns(), budget = atomic_load_explicit(&b->spin_ns, memory_order_relaxed);
    int done = 0;
    for (unsigned i = 1; budget > 0; i++) {
        if (atomic_load_explicit(&b->gen, memory_order_acquire) != g) {
            done = 1;
            break;
        }
        if (i < 64) SKV_PAUSE();
        else sched_yield();
        if ((i & 7) == 0 && now_ns() - t0 > budget) break;
    }
    if (!done) {
        atomic_fetch_add(&b->sleepers, 1);
        while (atomic_load(&b->gen) == g) syscall(SYS_futex, &b->gen, FUTEX_WAIT_PRIVATE, g, NULL, NULL, 0);
        atomic_fetch_sub(&b->sleepers, 1);
    }
    /* the budget: grows back slowly after a short wait (by 1/8 and 1 us), halves after a long
     * one (relaxed: a lost update between threads only delays the adaptation by one wait) */
    const int64_t w = now_ns() - t0;
    const int nb = w <= SKV_BAR_SPIN_MAX ? (int)SKV_MIN(SKV_BAR_SPIN_MAX, budget + budget / 8 + 1000) : (int)(budget / 2);
    if (nb != budget) atomic_store_explicit(&b->spin_ns, nb, memory_order_relaxed);
}
