// The untraced process of `cargo xtask bench` (issue 27): N 1-byte read(2)s from /dev/zero,
// timed with clock_gettime; prints "ns_per_call WALL CPU": wall time (CLOCK_MONOTONIC) and the
// thread's own CPU time (CLOCK_THREAD_CPUTIME_ID, which a busy machine's preemption leaves out). What a machine-wide program (a raw syscall
// tracepoint) adds to every system call of a process nobody traces shows here.
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long calls = argc > 1 ? atol(argv[1]) : 1000000;
    int fd = open("/dev/zero", O_RDONLY);
    if (fd < 0 || calls <= 0) {
        perror("open /dev/zero");
        return 1;
    }
    char byte;
    // Warm-up: page in the loop and the vDSO.
    for (int i = 0; i < 10000; i++)
        if (read(fd, &byte, 1) != 1)
            return 1;
    struct timespec start, end, cpu_start, cpu_end;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu_start);
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (long i = 0; i < calls; i++)
        if (read(fd, &byte, 1) != 1)
            return 1;
    clock_gettime(CLOCK_MONOTONIC, &end);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu_end);
    double ns = (end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec);
    double cpu = (cpu_end.tv_sec - cpu_start.tv_sec) * 1e9 + (cpu_end.tv_nsec - cpu_start.tv_nsec);
    printf("ns_per_call %.1f %.1f\n", ns / calls, cpu / calls);
    return 0;
}
