/*
 * Benchmark workload: malloc/free pairs of 16..4096 bytes made DEPTH calls deep (a recursion),
 * OPS pairs. Built without frame pointers, so every stack is walked by call-frame information.
 * Prints "ready", waits for a line on stdin (so a tracer can attach first), runs, and prints
 * "ns_per_op X": wall time per malloc+free pair, timed by itself.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static volatile int after;
static unsigned long state = 1;

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

/* Not a tail call (the add after it), so each level keeps its frame. */
__attribute__((noinline)) static void descend(int depth) {
    if (depth > 1) {
        descend(depth - 1);
    } else {
        state = state * 6364136223846793005ul + 1442695040888963407ul;
        void *p = malloc(16 + (state >> 33) % 4081);
        *(volatile char *)p = 1;
        free(p);
    }
    after++;
}

int main(int argc, char **argv) {
    int depth = argc > 1 ? atoi(argv[1]) : 30;
    long ops = argc > 2 ? atol(argv[2]) : 100000;
    printf("ready\n");
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 1;
    double start = now_ns();
    for (long i = 0; i < ops; i++) descend(depth);
    printf("ns_per_op %.2f\n", (now_ns() - start) / ops);
    return 0;
}
