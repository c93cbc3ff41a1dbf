/* A heap for reachability scans: N MiB of 4 KiB blocks, every one held by a global array
 * (so all are still reachable), plus optional churn of threads that keep being created and
 * exiting while the target is scanned.
 *
 *   reach_heap MIB [churn THREADS]
 *
 * Prints "ready BLOCKS" once the heap is built (after "go" on stdin), then answers "ping"
 * with "pong N" where N is the number of blocks whose contents are intact, and exits on
 * "exit" or end of input. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 4096

static unsigned char **blocks;
static long block_count;
static atomic_int churning = 1;
static atomic_long threads_made;

__attribute__((noinline)) static void build_heap(long count) {
    blocks = calloc(count, sizeof *blocks);
    for (long i = 0; i < count; i++) {
        blocks[i] = malloc(BLOCK);
        memset(blocks[i], (int)(i & 0xff), BLOCK);
    }
}

static void *short_lived(void *arg) {
    (void)arg;
    /* Balanced churn: nothing outlives the thread. */
    void *p = malloc(64);
    memset(p, 1, 64);
    free(p);
    return NULL;
}

/* Keeps THREADS threads coming and going until told to stop. */
static void *churner(void *arg) {
    long threads = (long)arg;
    pthread_t *ids = calloc(threads, sizeof *ids);
    while (atomic_load(&churning)) {
        for (long i = 0; i < threads; i++)
            pthread_create(&ids[i], NULL, short_lived, NULL);
        for (long i = 0; i < threads; i++)
            pthread_join(ids[i], NULL);
        atomic_fetch_add(&threads_made, threads);
    }
    free(ids);
    return NULL;
}

static long intact(void) {
    long ok = 0;
    for (long i = 0; i < block_count; i++) {
        unsigned char want = (unsigned char)(i & 0xff);
        ok += blocks[i][0] == want && blocks[i][BLOCK - 1] == want;
    }
    return ok;
}

int main(int argc, char **argv) {
    long mib = argc > 1 ? atol(argv[1]) : 16;
    long churn = argc > 3 && strcmp(argv[2], "churn") == 0 ? atol(argv[3]) : 0;
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("started\n");
    if (!fgets(line, sizeof line, stdin))
        return 1;
    block_count = mib * 1024 * 1024 / BLOCK;
    build_heap(block_count);
    pthread_t churn_thread;
    if (churn > 0)
        pthread_create(&churn_thread, NULL, churner, (void *)churn);
    printf("ready %ld\n", block_count);
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "ping", 4) == 0)
            printf("pong %ld\n", intact());
        else if (strncmp(line, "exit", 4) == 0)
            break;
    }
    atomic_store(&churning, 0);
    if (churn > 0)
        pthread_join(churn_thread, NULL);
    return 0;
}
