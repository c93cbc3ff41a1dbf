/*
 * A process that forks and reaps short-lived children rapidly, for leaktracer's
 * --follow-children: children appear and exit while the tracer discovers and attaches them.
 * Build: gcc -O0 -g -fno-omit-frame-pointer -fno-builtin -pthread forker.c -o forker
 *
 *   forker SECONDS
 *       For SECONDS, keeps up to 8 children alive, each allocating a little and exiting: most
 *       at once (gone before anyone looks), one in 500 after 20 to 80 ms (found by the tracer's
 *       100 ms poll now and then, and dying while it attaches), reaping each; then exits 0.
 *       (Few are ever attached: detaching takes the kernel ~0.1 s per probe per process.)
 */
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

static void *volatile sink;

NOINLINE void child_work(int n) {
    for (int i = 0; i < 8; i++) sink = malloc(64 + i);
    if (n % 500 == 499) usleep((20 + (n / 500 * 13) % 61) * 1000);
    sink = malloc(32);
    _exit(0);
}

static double elapsed(const struct timespec *start) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - start->tv_sec) + (now.tv_nsec - start->tv_nsec) / 1e9;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 2.0;
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    int live = 0;
    for (int n = 0; elapsed(&start) < seconds; n++) {
        if (live == 8) {
            if (wait(NULL) > 0) live--;
        }
        pid_t pid = fork();
        if (pid == 0) child_work(n);
        if (pid > 0) live++;
    }
    while (wait(NULL) > 0) {}
    return 0;
}
