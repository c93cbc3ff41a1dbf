/*
 * A workload whose leaks are exactly computable, for leaktracer's end-to-end tests.
 * Build: gcc -O0 -g -fno-omit-frame-pointer -fno-builtin -pthread leaky.c -o leaky
 *
 *   leaky sites [--count N] [--ready FILE] [--hold]
 *       Runs every leak site once (leak_malloc leaks N blocks, default 100), runs balanced churn
 *       on two threads, then writes FILE (if given) and exits, or with --hold waits for a signal.
 *   leaky attach
 *       Leaks and keeps blocks, prints "ready", waits for a line on stdin (the tracer attaches
 *       meanwhile), frees the kept blocks, leaks at after_attach, prints "done", then waits for
 *       stdin to close.
 *   leaky idle SECONDS
 *       Balanced churn only, for SECONDS, then exits.
 *   leaky exec-self N
 *       Leaks 100 x 64 B at leak_before_exec, then execs itself as `leaky sites --count N`: the
 *       old image's blocks vanish with it, without a free.
 *
 * Every run prints "malloc=<addr> free=<addr>" first, so a test can check the probes' int3.
 */
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

static void *volatile sink; /* keeps the compiler from reasoning about leaked pointers */

NOINLINE void leak_malloc(int count) {
    for (int i = 0; i < count; i++) sink = malloc(128);            /* count x 128 B */
}

NOINLINE void leak_calloc(void) {
    for (int i = 0; i < 50; i++) sink = calloc(16, 32);            /* 50 x 512 B */
}

NOINLINE void *grow(void *p, size_t size) { return realloc(p, size); }

NOINLINE void leak_realloc_chain(void) {
    for (int i = 0; i < 10; i++) {
        void *p = realloc(NULL, 64);                               /* realloc(NULL) allocates */
        p = realloc(p, 256);
        p = realloc(p, 1024);
        sink = grow(p, 4096);                                      /* 10 x 4096 B under grow */
    }
}

NOINLINE void leak_posix_memalign(void) {
    for (int i = 0; i < 20; i++) {
        void *p = NULL;
        if (posix_memalign(&p, 64, 1000) == 0) sink = p;           /* 20 x 1000 B */
    }
}

NOINLINE void leak_aligned_alloc(void) {
    for (int i = 0; i < 30; i++) sink = aligned_alloc(256, 512);   /* 30 x 512 B */
}

NOINLINE void leak_mmap(void) {
    sink = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
}

NOINLINE void trim_mmap_tail(void) {
    char *p = mmap(NULL, 16384, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(p + 8192, 8192);                                        /* 8192 B left */
}

NOINLINE void trim_mmap_head(void) {
    char *p = mmap(NULL, 16384, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(p, 4096);                                               /* 12288 B left */
}

/* Everything below is released again: none of it may be reported. */
NOINLINE void balanced_sites(void) {
    void *m = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(m, 65536);
    void *a = malloc(100);
    sink = realloc(a, 0);                                          /* realloc(p, 0) frees */
    sink = malloc((size_t)1 << 62);                                /* fails: records nothing */
    void *big = malloc(1 << 20);                                   /* allocator mmaps itself */
    free(big);
    void *c = calloc(3, 1000);
    free(c);
}

NOINLINE void keep_after_failed_realloc(void) {
    void *p = malloc(100);                                         /* 100 B stays */
    void *q = realloc(p, (size_t)1 << 62);                         /* fails: p not freed */
    sink = q ? q : p;
}

NOINLINE void *churn_worker(void *arg) {
    unsigned seed = (unsigned)(uintptr_t)arg;
    for (int i = 0; i < 20000; i++) {
        size_t size = 16 + (rand_r(&seed) % 4081);
        void *p = malloc(size);
        memset(p, 1, 8);
        p = realloc(p, size * 2);
        free(p);
    }
    return NULL;
}

static void churn(void) {
    pthread_t threads[2];
    for (long i = 0; i < 2; i++) pthread_create(&threads[i], NULL, churn_worker, (void *)(i + 1));
    for (int i = 0; i < 2; i++) pthread_join(threads[i], NULL);
}

NOINLINE void before_attach(void **kept, int n) {
    for (int i = 0; i < 50; i++) sink = malloc(256);
    for (int i = 0; i < n; i++) kept[i] = malloc(300);
}

NOINLINE void after_attach(void) {
    for (int i = 0; i < 40; i++) sink = malloc(64);                /* 40 x 64 B */
}

static void wait_line(void) {
    char line[64];
    if (!fgets(line, sizeof line, stdin)) exit(0);
}

static void on_term(int sig) { (void)sig; _exit(0); }

NOINLINE void leak_before_exec(void) {
    for (int i = 0; i < 100; i++) sink = malloc(64);               /* 100 x 64 B, then exec */
}

int main(int argc, char **argv) {
    printf("malloc=%p free=%p\n", (void *)malloc, (void *)free);
    fflush(stdout);
    if (argc < 2) return 2;
    if (!strcmp(argv[1], "sites")) {
        int count = 100, hold = 0;
        const char *ready = NULL;
        for (int i = 2; i < argc; i++) {
            if (!strcmp(argv[i], "--count") && i + 1 < argc) count = atoi(argv[++i]);
            else if (!strcmp(argv[i], "--ready") && i + 1 < argc) ready = argv[++i];
            else if (!strcmp(argv[i], "--hold")) hold = 1;
        }
        leak_malloc(count);
        leak_calloc();
        leak_realloc_chain();
        leak_posix_memalign();
        leak_aligned_alloc();
        leak_mmap();
        trim_mmap_tail();
        trim_mmap_head();
        balanced_sites();
        keep_after_failed_realloc();
        churn();
        if (ready) {
            FILE *f = fopen(ready, "w");
            if (f) fclose(f);
        }
        if (hold) {
            signal(SIGTERM, on_term);
            for (;;) pause();
        }
        return 0;
    }
    if (!strcmp(argv[1], "attach")) {
        void *kept[100];
        before_attach(kept, 100);
        printf("ready\n");
        fflush(stdout);
        wait_line();
        for (int i = 0; i < 100; i++) free(kept[i]);               /* frees of unknown pointers */
        after_attach();
        churn();
        printf("done\n");
        fflush(stdout);
        wait_line();
        return 0;
    }
    if (!strcmp(argv[1], "exec-self") && argc > 2) {
        leak_before_exec();
        char *again[] = {argv[0], "sites", "--count", argv[2], NULL};
        execv("/proc/self/exe", again);
        return 3;
    }
    if (!strcmp(argv[1], "idle") && argc > 2) {
        int seconds = atoi(argv[2]);
        for (int s = 0; s < seconds * 10; s++) {
            churn_worker((void *)(uintptr_t)s);
            usleep(100000);
        }
        return 0;
    }
    return 2;
}
