/*
 * cpu_sync.c — the barrier of the single-token decode pass (cpu.h: skv_cpu_bar).
 *
 * A decode step of a small model crosses ~10 barriers per layer, each a few microseconds of
 * work apart. OpenMP's barrier under OMP_WAIT_POLICY=passive (how a shared machine is run) puts
 * a waiting thread to sleep at once; waking it again costs tens of microseconds on a virtual
 * machine (an inter-processor interrupt to a halted vCPU), which made up two thirds of a kvt-l
 * step at depth 1984 with 2 threads. This barrier spins (pause) for up to SKV_BAR_SPIN_MAX
 * before it sleeps on a futex, but only while spinning pays, which it measures:
 *   - `ok`: how often the last thread arrived within SKV_BAR_SPIN_MAX of a waiter (an average
 *     over the last ~16 waits, in 1/1024), whether the waiter spun or slept;
 *   - `wake_ns`: how long a sleeper took to run again after the last thread released it.
 * It spins while ok >= 90 % and waking costs >= SKV_BAR_WAKE_COSTLY (a quiet virtual machine,
 * where the partner is running and a halted vCPU wakes slowly); otherwise it sleeps at once (a
 * loaded machine, where the partner is often descheduled and a spinning vCPU only delays it:
 * there even 5 us of spinning per barrier cost 10 % of a step, and a pause loop can make the
 * hypervisor deschedule the spinning vCPU). (Polling with sched_yield was slower still: a yield
 * can hand the core away for a whole time slice.)
 *
 * Sense by generation: the last thread to arrive resets the count and advances `gen`; the others
 * wait for `gen` to move. `sleepers` counts threads in the futex wait, so the last thread makes
 * the wake-up system call only when someone sleeps (both sides use sequentially consistent
 * operations: a sleeper either sees the new generation or is seen by the waker).
 */
#include "backend/cpu/cpu.h"

#include <limits.h>
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

#define SKV_BAR_SPIN_MAX 50000   /* ns: the most a wait spins before sleeping */
#define SKV_BAR_WAKE_COSTLY 15000 /* ns: a wake-up this slow is worth avoiding by spinning */
#define SKV_BAR_OK_SPIN 922       /* spin while ok >= 0.9 (of 1024) */

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void skv_cpu_bar_init(skv_cpu_bar *b) {
    atomic_init(&b->count, 0);
    atomic_init(&b->gen, 0);
    atomic_init(&b->sleepers, 0);
    atomic_init(&b->ok, 1024);
    atomic_init(&b->wake_ns, 2 * SKV_BAR_WAKE_COSTLY);
    atomic_init(&b->release_ns, 0);
}

void skv_cpu_bar_wait(skv_cpu_bar *b, int n) {
    if (n <= 1) return;
    const unsigned g = atomic_load(&b->gen);
    const int64_t t0 = now_ns();
    if (atomic_fetch_add(&b->count, 1) == n - 1) {
        atomic_store(&b->count, 0);
        atomic_store_explicit(&b->release_ns, t0, memory_order_relaxed); /* ordered by the gen update */
        atomic_fetch_add(&b->gen, 1);
        if (atomic_load(&b->sleepers) > 0) syscall(SYS_futex, &b->gen, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
        return;
    }
    const int spin = atomic_load_explicit(&b->ok, memory_order_relaxed) >= SKV_BAR_OK_SPIN && atomic_load_explicit(&b->wake_ns, memory_order_relaxed) >= SKV_BAR_WAKE_COSTLY;
    int done = 0;
    for (unsigned i = 1; spin; i++) { /* the clock read every 16 pauses */
        if (atomic_load_explicit(&b->gen, memory_order_acquire) != g) {
            done = 1;
            break;
        }
        SKV_PAUSE();
        if ((i & 15) == 0 && now_ns() - t0 > SKV_BAR_SPIN_MAX) break;
    }
    if (!done) {
        atomic_fetch_add(&b->sleepers, 1);
        while (atomic_load(&b->gen) == g) syscall(SYS_futex, &b->gen, FUTEX_WAIT_PRIVATE, g, NULL, NULL, 0);
        atomic_fetch_sub(&b->sleepers, 1);
    }
    /* the averages, updated with compare-and-swap: a plain store could let the partner's update
     * from a wait that began earlier overwrite this one (a slow waker's long waits were lost so) */
    const int64_t rel = atomic_load_explicit(&b->release_ns, memory_order_relaxed);
    const int good = rel - t0 <= SKV_BAR_SPIN_MAX;
    int o = atomic_load_explicit(&b->ok, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(&b->ok, &o, o - o / 16 + (good ? 64 : 0), memory_order_relaxed,
                                                  memory_order_relaxed)) {
    }
    if (!done) {
        const int lat = (int)SKV_MIN(now_ns() - rel, 1000000);
        int w = atomic_load_explicit(&b->wake_ns, memory_order_relaxed);
        while (!atomic_compare_exchange_weak_explicit(&b->wake_ns, &w, w - w / 8 + lat / 8, memory_order_relaxed,
                                                      memory_order_relaxed)) {
        }
    }
}
