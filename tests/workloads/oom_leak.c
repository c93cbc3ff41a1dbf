/*
 * A workload that leaks until the OOM killer ends it, for leaktracer's end-to-end tests.
 * Build: gcc -O0 -g -fno-omit-frame-pointer -fno-builtin -pthread oom_leak.c -o oom_leak
 *
 *   oom_leak [--wait] leak PAUSE_MS
 *       Leaks 1 MiB blocks at leak_chunk, each filled (every page touched, so charged to the
 *       memory cgroup), one every PAUSE_MS milliseconds, for ever: in a cgroup with a memory
 *       limit and no swap, until the OOM killer ends it.
 *   oom_leak [--wait] exit CODE
 *       Leaks 4 blocks at leak_chunk, then exits with CODE.
 *
 * With --wait it first prints "ready" and waits for a line on stdin (the tracer attaches
 * meanwhile).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
#define CHUNK (1 << 20)

static void *volatile sink; /* keeps the compiler from reasoning about leaked pointers */

NOINLINE void leak_chunk(void) {
    char *block = malloc(CHUNK);
    if (block == NULL) abort();
    memset(block, 0xab, CHUNK);
    sink = block;
}

int main(int argc, char **argv) {
    int arg = 1;
    if (arg < argc && strcmp(argv[arg], "--wait") == 0) {
        arg++;
        printf("ready\n");
        fflush(stdout);
        char line[16];
        if (fgets(line, sizeof line, stdin) == NULL) return 1;
    }
    if (arg + 1 >= argc) {
        fprintf(stderr, "usage: oom_leak [--wait] leak PAUSE_MS | exit CODE\n");
        return 2;
    }
    int value = atoi(argv[arg + 1]);
    if (strcmp(argv[arg], "exit") == 0) {
        for (int i = 0; i < 4; i++) leak_chunk();
        exit(value);
    }
    for (;;) {
        leak_chunk();
        usleep(value * 1000);
    }
}
