/*
 * Benchmark workload for attach and detach: a small glibc process (a pre-fork worker at rest)
 * that mallocs and frees 64 bytes every 10 ms until killed.
 */
#include <stdlib.h>
#include <unistd.h>

int main(void) {
    for (;;) {
        void *volatile p = malloc(64);
        free(p);
        usleep(10000);
    }
}
