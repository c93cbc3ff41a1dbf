/*
 * Benchmark workload: mapping churn, OPS rounds of mmap(64 KiB) + a touch + munmap through the
 * C library's wrappers, then OPS rounds of the raw system calls (syscall(2)). Prints "ready",
 * waits for a line on stdin (so a tracer can attach first), runs, and prints "ns_per_op X":
 * wall time per mmap+munmap pair, timed by itself.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(int argc, char **argv) {
    long ops = argc > 1 ? atol(argv[1]) : 100000;
    const size_t size = 64 * 1024;
    printf("ready\n");
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 1;
    double start = now_ns();
    for (long i = 0; i < ops; i++) {
        char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        *(volatile char *)p = 1;
        munmap(p, size);
    }
    for (long i = 0; i < ops; i++) {
        char *p = (char *)syscall(SYS_mmap, NULL, size, PROT_READ | PROT_WRITE,
                                  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        *(volatile char *)p = 1;
        syscall(SYS_munmap, p, size);
    }
    printf("ns_per_op %.2f\n", (now_ns() - start) / (2.0 * ops));
    return 0;
}
