/*
 * Thread stacks beside a leak, driven line by line on stdin (the test paces it):
 *   leak_step  keeps 2048 bytes every 20 ms (102400 B/s) from the start, on a thread started
 *              before "ready" (so before any tracer attaches); not with --no-leak;
 *   "t"        starts an idle thread (blocked for ever reading a pipe nobody writes), then
 *              prints "thread N" (N: idle threads started so far);
 *   "j"        starts a thread that returns at once and joins it: glibc keeps its stack for
 *              the next thread (its stack cache), then prints "joined".
 * Every thread of "t" and "j" is started by spawn_thread, from one place in main, with an
 * 8 MiB stack (guard page besides), so each stack the C library maps is exactly 8 MiB and all
 * are recorded at one stack. Prints "ready" first.
 * Rates are exact: the leaking thread sleeps to absolute deadlines.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
#define TICK_NS 20000000L
#define STACK_BYTES (8L << 20)

static void *volatile sink;
static int idle_pipe[2];

NOINLINE void leak_step(void) { sink = malloc(2048); }

static void *leak_thread(void *arg) {
    (void)arg;
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    for (;;) {
        leak_step();
        deadline.tv_nsec += TICK_NS;
        while (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_nsec -= 1000000000L;
            deadline.tv_sec++;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &deadline, NULL);
    }
    return NULL;
}

static void *idle(void *arg) {
    (void)arg;
    char byte;
    for (;;) read(idle_pipe[0], &byte, 1);
    return NULL;
}

static void *done_at_once(void *arg) { return arg; }

NOINLINE pthread_t spawn_thread(void *(*body)(void *)) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, STACK_BYTES);
    pthread_t thread;
    if (pthread_create(&thread, &attr, body, NULL) != 0) {
        perror("pthread_create");
        exit(1);
    }
    pthread_attr_destroy(&attr);
    return thread;
}

int main(int argc, char **argv) {
    int leak = !(argc > 1 && !strcmp(argv[1], "--no-leak"));
    if (pipe(idle_pipe) != 0) return 1;
    if (leak) {
        pthread_t leaker;
        pthread_create(&leaker, NULL, leak_thread, NULL);
    }
    printf("ready\n");
    fflush(stdout);
    char line[16];
    int idle_threads = 0;
    while (fgets(line, sizeof line, stdin)) {
        int idle_thread = line[0] == 't';
        if (!idle_thread && line[0] != 'j') continue;
        /* One call site for both kinds: their stacks are recorded at one stack. */
        pthread_t thread = spawn_thread(idle_thread ? idle : done_at_once);
        if (idle_thread) {
            printf("thread %d\n", ++idle_threads);
        } else {
            pthread_join(thread, NULL);
            printf("joined\n");
        }
        fflush(stdout);
    }
    return 0;
}
