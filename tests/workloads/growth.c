/*
 * Workloads with known growth shapes, one thread each, for leaktracer's growth analysis:
 *   steady_leak   keeps LEAK bytes every 20 ms (default 4096: 204800 B/s), from the start;
 *   cache_insert  fills a cache of 512 x 8 KiB blocks at 32 blocks/s (full after 16 s), then
 *                 replaces the oldest block for each insert: flat;
 *   churn_step    allocates and frees, at most 2 blocks (2 KiB) in flight: no net growth,
 *                 and no level a sample could catch rising;
 *   late_leak     idle for LATE seconds (default 30), then keeps 2048 bytes every 20 ms.
 * Usage: growth [--leak BYTES] [--late SECONDS] [--no-late]. Prints "ready" once running.
 * Rates are exact: every thread sleeps to absolute deadlines.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
#define TICK_NS 20000000L

static long leak_bytes = 4096;
static int late_seconds = 30;
static int with_late = 1;
static void *volatile sink;

static void next_tick(struct timespec *deadline, long ns) {
    deadline->tv_nsec += ns;
    while (deadline->tv_nsec >= 1000000000L) {
        deadline->tv_nsec -= 1000000000L;
        deadline->tv_sec++;
    }
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, deadline, NULL);
}

NOINLINE void steady_leak(void) { sink = malloc(leak_bytes); }

static void *steady_thread(void *arg) {
    (void)arg;
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    for (;;) {
        steady_leak();
        next_tick(&deadline, TICK_NS);
    }
    return NULL;
}

#define CACHE_SLOTS 512
static void *cache[CACHE_SLOTS];

NOINLINE void cache_insert(int slot) {
    free(cache[slot]);              /* evicts the oldest once full */
    cache[slot] = malloc(8192);
}

static void *cache_thread(void *arg) {
    (void)arg;
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    for (unsigned long i = 0;; i++) {
        cache_insert(i % CACHE_SLOTS);
        next_tick(&deadline, 1000000000L / 32);
    }
    return NULL;
}

/* Two blocks in flight at most: a 64-block ring once made a 64 KiB working set that rose in
 * the first interval and sat there, which the growth test saw as a (true) plateau. */
#define IN_FLIGHT 2
static void *ring[IN_FLIGHT];

NOINLINE void churn_step(unsigned i, unsigned *seed) {
    free(ring[i % IN_FLIGHT]);
    ring[i % IN_FLIGHT] = malloc(16 + rand_r(seed) % 1000);
}

static void *churn_thread(void *arg) {
    (void)arg;
    unsigned seed = 7;
    for (unsigned i = 0;; i++) {
        churn_step(i, &seed);
        usleep(500);
    }
    return NULL;
}

NOINLINE void late_leak(void) { sink = malloc(2048); }

static void *late_thread(void *arg) {
    (void)arg;
    sleep(late_seconds);
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    for (;;) {
        late_leak();
        next_tick(&deadline, TICK_NS);
    }
    return NULL;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--leak") && i + 1 < argc) leak_bytes = atol(argv[++i]);
        else if (!strcmp(argv[i], "--late") && i + 1 < argc) late_seconds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--no-late")) with_late = 0;
    }
    /* Started on a line read from stdin, so the tracer can attach first. */
    printf("ready\n");
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 0;
    pthread_t threads[4];
    pthread_create(&threads[0], NULL, steady_thread, NULL);
    pthread_create(&threads[1], NULL, cache_thread, NULL);
    pthread_create(&threads[2], NULL, churn_thread, NULL);
    if (with_late) pthread_create(&threads[3], NULL, late_thread, NULL);
    pthread_join(threads[0], NULL);
    return 0;
}
