/*
 * Leaks known to the byte, made only once this process is traced, for allocator and container
 * tests. Portable C: builds against glibc, statically against musl, runs under jemalloc,
 * tcmalloc or mimalloc (LD_PRELOAD).
 *
 *   alloc_sites sites [FLAG]
 *                         wait until traced (until the file FLAG exists, when given: tests make
 *                         it once leaktracer says it is tracing this process), leak (below),
 *                         print "done", wait for a signal
 *   alloc_sites sampling FLAG
 *                         once FLAG exists: leak_small_many 100000 x 4096 B, leak_large 20 x
 *                         1 MiB, then as sites
 *   alloc_sites fork N DIR
 *                         wait until traced, fork N workers 300 ms apart; each prints
 *                         "worker I pid P forked", waits for the file DIR/traced-P (the test
 *                         makes it once leaktracer says it attached to P), leaks (10 + i) x 256
 *                         bytes in worker_leak, prints "worker I pid P done", and waits for a
 *                         signal
 *
 * sites leaks: leak_malloc 40 x 128 B, leak_calloc 20 x 512 B, leak_realloc 10 x 1000 B,
 * leak_aligned 10 x 2048 B.
 *
 * Without FLAG, "traced" means malloc's first instruction is a breakpoint (0xCC): handy by hand,
 * but a return probe puts it there before every entry probe is attached, so tests use files.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

static void *volatile sink;

static void wait_for_file(const char *flag) {
    for (int t = 0; access(flag, F_OK) != 0; t++) {
        if (t > 3000) {
            fprintf(stderr, "alloc_sites: %s did not appear in 30 s\n", flag);
            exit(3);
        }
        usleep(10000);
    }
}

static void wait_until_traced(void) {
    volatile unsigned char *entry = (volatile unsigned char *)(void *)malloc;
    for (int i = 0; i < 3000; i++) {
        free(malloc(1));
        if (*entry == 0xcc) return;
        usleep(10000);
    }
    fprintf(stderr, "alloc_sites: not traced after 30 s\n");
    exit(3);
}

NOINLINE void leak_malloc(void) {
    for (int i = 0; i < 40; i++) sink = malloc(128);
}

NOINLINE void leak_calloc(void) {
    for (int i = 0; i < 20; i++) sink = calloc(8, 64);
}

NOINLINE void leak_realloc(void) {
    for (int i = 0; i < 10; i++) {
        void *p = realloc(NULL, 64);
        sink = realloc(p, 1000);
    }
}

NOINLINE void leak_aligned(void) {
    for (int i = 0; i < 10; i++) {
        void *p = NULL;
        if (posix_memalign(&p, 64, 2048) == 0) sink = p;
    }
}

NOINLINE void balanced(void) {
    for (int i = 0; i < 1000; i++) {
        char *p = malloc(16 + i % 512);
        memset(p, 0, 16);
        free(p);
    }
}

NOINLINE void leak_small_many(void) {
    for (int i = 0; i < 100000; i++) sink = malloc(4096);          /* 100000 x 4096 B */
}

NOINLINE void leak_large(void) {
    for (int i = 0; i < 20; i++) sink = malloc(1 << 20);           /* 20 x 1 MiB */
}

NOINLINE void worker_leak(int count) {
    for (int i = 0; i < count; i++) sink = malloc(256);
}

static void hold(void) {
    for (;;) pause();
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "sites")) {
        if (argc >= 3) wait_for_file(argv[2]);
        else wait_until_traced();
        leak_malloc();
        leak_calloc();
        leak_realloc();
        leak_aligned();
        balanced();
        printf("done\n");
        fflush(stdout);
        hold();
    }
    if (argc >= 3 && !strcmp(argv[1], "sampling")) {
        wait_for_file(argv[2]);
        leak_small_many();
        leak_large();
        balanced();
        printf("done\n");
        fflush(stdout);
        hold();
    }
    if (argc >= 4 && !strcmp(argv[1], "fork")) {
        int workers = atoi(argv[2]);
        const char *dir = argv[3];
        wait_until_traced();
        for (int i = 0; i < workers; i++) {
            pid_t pid = fork();
            if (pid == 0) {
                char flag[4096];
                snprintf(flag, sizeof flag, "%s/traced-%d", dir, (int)getpid());
                printf("worker %d pid %d forked\n", i, (int)getpid());
                fflush(stdout);
                wait_for_file(flag);
                worker_leak(10 + i);
                balanced();
                printf("worker %d pid %d done\n", i, (int)getpid());
                fflush(stdout);
                hold();
            }
            usleep(300000);
        }
        hold();
    }
    fprintf(stderr, "usage: alloc_sites sites [FLAG] | sampling FLAG | fork N DIR\n");
    return 2;
}
