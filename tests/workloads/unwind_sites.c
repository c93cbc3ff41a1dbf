/*
 * Leaks known to the byte at known call depths, for the unwinder's tests. Built twice by the
 * tests, -O2 with and without frame pointers: both builds must give the same stacks.
 *
 *   unwind_sites          leak (below), then exit 0
 *   unwind_sites wait     leak, print "done", wait for a signal
 *
 * leak_shallow: 30 x 200 B     main -> run_sites -> leak_shallow
 * leak_deep:    20 x 300 B     main -> run_sites -> descend x 30 -> leak_deep
 * churn:        1000 x 64 B    allocated and freed (never a leak)
 * leak_in_handler: 10 x 128 B  in a SIGUSR1 handler, raised by main: the stack is the handler
 *                              and the signal trampoline (__restore_rt), where the walk stops
 *
 * Every call is followed by work on a volatile, so -O2 makes none of them a tail call (a tail
 * call leaves no frame, for gdb as for us).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

static void *volatile sink;
static volatile int after;

NOINLINE void leak_shallow(void) {
    for (int i = 0; i < 30; i++) sink = malloc(200);
    after++;
}

NOINLINE void leak_deep(void) {
    for (int i = 0; i < 20; i++) sink = malloc(300);
    after++;
}

NOINLINE void descend(int depth) {
    if (depth > 1)
        descend(depth - 1);
    else
        leak_deep();
    after++;
}

NOINLINE void churn(void) {
    for (int i = 0; i < 1000; i++) {
        void *p = malloc(64);
        sink = p;
        free(p);
    }
    after++;
}

NOINLINE void leak_in_handler(int signal) {
    (void)signal;
    for (int i = 0; i < 10; i++) sink = malloc(128);
    after++;
}

NOINLINE void run_sites(void) {
    leak_shallow();
    descend(30);
    churn();
    after++;
}

int main(int argc, char **argv) {
    run_sites();
    signal(SIGUSR1, leak_in_handler);
    raise(SIGUSR1);
    if (argc > 1 && strcmp(argv[1], "wait") == 0) {
        puts("done");
        fflush(stdout);
        pause();
    }
    after++;
    return 0;
}
