/*
 * test_sync.c — the decode pass's barrier (backend/cpu/cpu_sync.c): no thread passes a barrier
 * before every thread has reached it, over many rounds, both when the threads arrive close
 * together (the polling path) and when one arrives late enough for the others to sleep (the
 * futex path), and the barrier is reusable across teams of different sizes.
 */
#include "harness.h"
#include "backend/cpu/cpu.h"

#include <time.h>

static void nap_us(long us) {
    struct timespec ts = {0, us * 1000};
    nanosleep(&ts, NULL);
}

/* Each thread writes the round into its slot, waits, and checks every slot holds the round;
 * waits again before the next round's writes. Thread `late` sleeps before arriving every
 * `every` rounds (0: never). Returns the number of violations seen. */
static int rounds(skv_cpu_bar *b, int nt, int n_rounds, int late, int every, long late_us) {
    volatile int slot[8] = {0};
    int bad = 0;
#pragma omp parallel num_threads(nt) reduction(+ : bad)
    {
        const int t = omp_get_thread_num(), n = omp_get_num_threads();
        for (int r = 1; r <= n_rounds; r++) {
            if (every && t == late && r % every == 0) nap_us(late_us);
            slot[t] = r;
            skv_cpu_bar_wait(b, n);
            for (int u = 0; u < n; u++) bad += slot[u] != r;
            skv_cpu_bar_wait(b, n);
        }
    }
    return bad;
}

static void test_barrier(void) {
    skv_cpu_bar b;
    skv_cpu_bar_init(&b);
    CHECKF(rounds(&b, 2, 20000, 0, 0, 0) == 0, "2 threads, close arrivals: a thread passed the barrier early");
    CHECKF(rounds(&b, 2, 200, 1, 3, 400) == 0, "2 threads, one 0.4 ms late every 3rd round: a thread passed early");
    CHECKF(atomic_load(&b.sleepers) == 0, "threads still counted asleep after the team finished");
    /* one thread 0.4 ms late at every round: the waits stop spinning (ok falls below 90 %), and
     * the sleepers' wake-up time is measured */
    skv_cpu_bar_init(&b);
    CHECKF(rounds(&b, 2, 50, 1, 1, 400) == 0, "2 threads, one late every round: a thread passed early");
    CHECKF(atomic_load(&b.ok) < 922, "the barrier still counts spinning as worthwhile (ok %d of 1024)", atomic_load(&b.ok));
    CHECKF(atomic_load(&b.wake_ns) > 0 && atomic_load(&b.wake_ns) < 1000000, "wake-up time %d ns", atomic_load(&b.wake_ns));
    CHECKF(rounds(&b, 4, 3000, 2, 7, 300) == 0, "4 threads: a thread passed early");
    CHECKF(rounds(&b, 3, 3000, 0, 0, 0) == 0, "3 threads on the same barrier: a thread passed early");
    CHECKF(atomic_load(&b.count) == 0, "count left at %d between uses", atomic_load(&b.count));
    skv_cpu_bar_wait(&b, 1); /* a team of one never waits */
}

void register_sync(void) { skv_test_add("sync/decode barrier: nobody passes early, polling and sleeping, any team size", test_barrier); }
