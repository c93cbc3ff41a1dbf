/* What one system call costs a process nobody traces: ns per 1-byte read(2) from /dev/zero.
 *
 *   read_cost [READS [ROUNDS]]    (defaults: 1000000 reads, 9 rounds)
 *
 * Times ROUNDS rounds of READS reads each and prints the median round, in ns per read, as
 * `ns_per_read <median> min <min> max <max>` on one line. Run it with and without a leaktracer
 * trace of another process: the ratio is what the trace costs everything beside it.
 *
 * Time is this thread's CPU time (CLOCK_THREAD_CPUTIME_ID), kernel time included: the time
 * other processes of a busy machine run instead of this one does not count. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    long reads = argc > 1 ? atol(argv[1]) : 1000000;
    int rounds = argc > 2 ? atoi(argv[2]) : 9;
    if (reads <= 0 || rounds <= 0 || rounds > 1000) {
        fprintf(stderr, "usage: %s [READS [ROUNDS]]\n", argv[0]);
        return 2;
    }
    int fd = open("/dev/zero", O_RDONLY);
    if (fd < 0) {
        perror("/dev/zero");
        return 1;
    }
    double per_read[1000];
    char byte;
    for (long i = 0; i < reads / 10; i++) /* warm up */
        if (read(fd, &byte, 1) != 1)
            return 1;
    for (int r = 0; r < rounds; r++) {
        double start = now_ns();
        for (long i = 0; i < reads; i++)
            if (read(fd, &byte, 1) != 1)
                return 1;
        per_read[r] = (now_ns() - start) / (double)reads;
    }
    qsort(per_read, rounds, sizeof per_read[0], by_value);
    printf("ns_per_read %.1f min %.1f max %.1f\n", per_read[rounds / 2], per_read[0],
           per_read[rounds - 1]);
    return 0;
}
