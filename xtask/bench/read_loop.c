// The untraced process of `cargo xtask bench` (issue 27): N system calls timed with
// clock_gettime, by a process no trace follows; what a machine-wide program adds to them shows
// here. `read_loop N` makes 1-byte read(2)s from /dev/zero (any system call: the raw syscall
// tracepoints run on all of them); `read_loop N mmap` makes mmap+munmap pairs of 4 KiB, left
// untouched (the mapping calls, which a trace watches on every process even where it attaches
// to the kernel's functions instead). Prints "ns_per_call WALL CPU": wall time
// (CLOCK_MONOTONIC) and the thread's own CPU time (CLOCK_THREAD_CPUTIME_ID, which a busy
// machine's preemption leaves out); for mmap, per pair.
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static int fd;

static int one_read(void) {
    char byte;
    return read(fd, &byte, 1) == 1 ? 0 : -1;
}

static int one_mapping(void) {
    void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -1;
    return munmap(p, 4096);
}

int main(int argc, char **argv) {
    long calls = argc > 1 ? atol(argv[1]) : 1000000;
    int (*call)(void) = argc > 2 && strcmp(argv[2], "mmap") == 0 ? one_mapping : one_read;
    fd = open("/dev/zero", O_RDONLY);
    if (fd < 0 || calls <= 0) {
        perror("open /dev/zero");
        return 1;
    }
    // Warm-up: page in the loop and the vDSO.
    for (int i = 0; i < 10000; i++)
        if (call())
            return 1;
    struct timespec start, end, cpu_start, cpu_end;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu_start);
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (long i = 0; i < calls; i++)
        if (call())
            return 1;
    clock_gettime(CLOCK_MONOTONIC, &end);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu_end);
    double ns = (end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec);
    double cpu = (cpu_end.tv_sec - cpu_start.tv_sec) * 1e9 + (cpu_end.tv_nsec - cpu_start.tv_nsec);
    printf("ns_per_call %.1f %.1f\n", ns / calls, cpu / calls);
    return 0;
}
