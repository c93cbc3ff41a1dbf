/*
 * Benchmark workload: malloc/free pairs of 16..4096 bytes, on THREADS threads, OPS pairs each.
 * Prints "ready", waits for a line on stdin (so a tracer can attach first), runs, and prints
 * "ns_per_op X": wall time per malloc+free pair, averaged over threads, timed by itself.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static long ops;

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

static void *worker(void *arg) {
    unsigned long state = (unsigned long)arg * 2654435761u + 1;
    double start = now_ns();
    for (long i = 0; i < ops; i++) {
        state = state * 6364136223846793005ul + 1442695040888963407ul;
        size_t size = 16 + (state >> 33) % 4081;
        void *p = malloc(size);
        *(volatile char *)p = 1;
        free(p);
    }
    double *elapsed = malloc(sizeof *elapsed);
    *elapsed = (now_ns() - start) / ops;
    return elapsed;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    ops = argc > 2 ? atol(argv[2]) : 1000000;
    printf("ready\n");
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 1;
    pthread_t ids[64];
    for (long i = 0; i < threads; i++) pthread_create(&ids[i], NULL, worker, (void *)(i + 1));
    double total = 0;
    for (int i = 0; i < threads; i++) {
        void *result;
        pthread_join(ids[i], &result);
        total += *(double *)result;
    }
    printf("ns_per_op %.2f\n", total / threads);
    return 0;
}
