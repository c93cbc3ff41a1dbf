/*
 * Blocks of every reachability class, as valgrind memcheck defines them, held at a moment a
 * scanner can stop the process (tests/tests/reachability.rs; docs/design/reachability.md §6).
 * Each site is its own noinline function `site_NAME` that calls malloc itself, so a site is the
 * innermost frame of its blocks' stacks (for leaktracer and for valgrind), and every site uses
 * block sizes no other allocation uses. The expected classes live in the test, not here.
 *
 * Protocol (stdin/stdout, one line each, flushed):
 *   start:  stage 1 (the "pre-trace" block site_pre_holder), prints "stage1", waits for "go";
 *   "go":   stage 2 (every other site, three threads that park), prints "ready PID";
 *   then serves "ping" (checks the reachable structures and that malloc/free work: "pong",
 *   or "broken: WHAT") and "exit" (exit 0). End of input exits too.
 *
 * No stray copy of a lost pointer may survive: lost blocks are dropped through volatile locals,
 * every block's bytes are written (no stale heap words inside), the stack region the sites used
 * is zeroed (scrub_stack) and the vector registers are zeroed (scrub_vector_regs) before the
 * process parks.
 */
#include <pthread.h>
#include <semaphore.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

/* Requested sizes: one per site, in distinct malloc size classes (chunk = size + 8, rounded up
 * to 16), none shared with anything else the program allocates. */
#define PRE_HOLDER_SIZE 72        /* stage 1: still reachable (global pre_holder) */
#define DROPPED_SIZE 100          /* definitely lost */
#define LIST_NODE_SIZE 136        /* 3 nodes: head definitely, 2 indirectly */
#define CYCLE_NODE_SIZE 168       /* 2 nodes: one definitely, one indirectly */
#define GLOBAL_ARRAY_SIZE 200     /* 4 blocks: still reachable */
#define GLOBAL_LIST_SIZE 232      /* 3 nodes: still reachable */
#define TLS_MAIN_SIZE 264         /* still reachable (__thread, main thread) */
#define TLS_THREAD_SIZE 296       /* still reachable (__thread, parked thread) */
#define STACK_LOCAL_SIZE 328      /* still reachable (parked thread's stack local) */
#define INTERIOR_SIZE 360         /* possibly lost (only p + 16 kept) */
#define FREED_HOLDER_LOST_SIZE 392 /* definitely lost (only pointer was in a freed block) */
#define FREED_HOLDER_SIZE 424     /* the holder, freed: not outstanding */
#define VIA_PRE_HOLDER_SIZE 456   /* still reachable (pointer inside the stage-1 block) */
#define VECTOR_REG_SIZE 488       /* only in %xmm8 of a parked thread */
#define PING_SIZE 40              /* malloc + free on each ping */

#define FILL 0x5a                 /* 0x5a5a5a5a5a5a5a5a is no user-space address */
#define GLOBAL_ARRAY_LEN 4
#define GLOBAL_LIST_LEN 3

/* Roots. */
void **pre_holder;                          /* stage 1 block: slot 1 gets site_via_pre_holder's */
void *global_array[GLOBAL_ARRAY_LEN];
void *global_list;                          /* node: next pointer at offset 0 */
char *interior_pointer;                     /* block + 16 */
static __thread void *tls_pointer;          /* main thread: site_tls_main; one thread: site_tls_thread */

static sem_t threads_set_up;
static volatile int vector_thread_parked;
static void *volatile vector_handoff;

static void fill(void *p, size_t size) { memset(p, FILL, size); }

/* ---- stage 1 ---- */

NOINLINE void site_pre_holder(void) {
    pre_holder = malloc(PRE_HOLDER_SIZE);
    memset(pre_holder, 0, PRE_HOLDER_SIZE);
}

/* ---- stage 2: main thread ---- */

NOINLINE void site_dropped(void) {
    void *volatile p = malloc(DROPPED_SIZE);
    fill(p, DROPPED_SIZE);
    p = NULL;
}

NOINLINE void site_list(void) {
    void *volatile head = malloc(LIST_NODE_SIZE);
    void *volatile second = malloc(LIST_NODE_SIZE);
    void *volatile third = malloc(LIST_NODE_SIZE);
    fill(head, LIST_NODE_SIZE);
    fill(second, LIST_NODE_SIZE);
    fill(third, LIST_NODE_SIZE);
    *(void **)head = second;
    *(void **)second = third;
    *(void **)third = NULL;
    head = second = third = NULL;
}

NOINLINE void site_cycle(void) {
    void *volatile a = malloc(CYCLE_NODE_SIZE);
    void *volatile b = malloc(CYCLE_NODE_SIZE);
    fill(a, CYCLE_NODE_SIZE);
    fill(b, CYCLE_NODE_SIZE);
    *(void **)a = b;
    *(void **)b = a;
    a = b = NULL;
}

NOINLINE void site_global_array(void) {
    for (int i = 0; i < GLOBAL_ARRAY_LEN; i++) {
        global_array[i] = malloc(GLOBAL_ARRAY_SIZE);
        fill(global_array[i], GLOBAL_ARRAY_SIZE);
    }
}

NOINLINE void site_global_list(void) {
    for (int i = 0; i < GLOBAL_LIST_LEN; i++) {
        void *volatile node = malloc(GLOBAL_LIST_SIZE);
        fill(node, GLOBAL_LIST_SIZE);
        *(void **)node = global_list;
        global_list = node;
        node = NULL;
    }
}

NOINLINE void site_tls_main(void) {
    tls_pointer = malloc(TLS_MAIN_SIZE);
    fill(tls_pointer, TLS_MAIN_SIZE);
}

NOINLINE void site_interior(void) {
    char *volatile p = malloc(INTERIOR_SIZE);
    fill(p, INTERIOR_SIZE);
    interior_pointer = p + 16;
    p = NULL;
}

NOINLINE void site_freed_holder(void) {
    void *volatile holder = malloc(FREED_HOLDER_SIZE);
    void *volatile lost = malloc(FREED_HOLDER_LOST_SIZE);
    fill(holder, FREED_HOLDER_SIZE);
    fill(lost, FREED_HOLDER_LOST_SIZE);
    /* Offset 32: past what glibc's free overwrites (tcache next and key, offsets 0 and 8), so
     * the stale pointer stays in the free chunk, where a scanner must not count it. */
    ((void **)holder)[4] = lost;
    lost = NULL;
    free(holder);
    holder = NULL;
}

NOINLINE void site_via_pre_holder(void) {
    pre_holder[1] = malloc(VIA_PRE_HOLDER_SIZE);
    fill(pre_holder[1], VIA_PRE_HOLDER_SIZE);
}

/* ---- stage 2: threads ---- */

NOINLINE void site_tls_thread(void) {
    tls_pointer = malloc(TLS_THREAD_SIZE);
    fill(tls_pointer, TLS_THREAD_SIZE);
}

NOINLINE void *site_stack_local(void) {
    void *p = malloc(STACK_LOCAL_SIZE);
    fill(p, STACK_LOCAL_SIZE);
    return p;
}

NOINLINE void *site_vector_reg(void) {
    void *p = malloc(VECTOR_REG_SIZE);
    fill(p, VECTOR_REG_SIZE);
    return p;
}

/* Zeroes a large stack area below the caller's frame: the dead frames of the sites it called. */
NOINLINE void scrub_stack(void) {
    volatile char area[32768];
    memset((char *)area, 0, sizeof area);
}

/* Zeroes every vector register (whole YMM registers where AVX exists). */
NOINLINE void scrub_vector_regs(void) {
    if (__builtin_cpu_supports("avx")) {
        __asm__ volatile("vzeroall" ::: "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5",
                         "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13",
                         "xmm14", "xmm15");
    } else {
        __asm__ volatile("pxor %%xmm0, %%xmm0\n\tpxor %%xmm1, %%xmm1\n\t"
                         "pxor %%xmm2, %%xmm2\n\tpxor %%xmm3, %%xmm3\n\t"
                         "pxor %%xmm4, %%xmm4\n\tpxor %%xmm5, %%xmm5\n\t"
                         "pxor %%xmm6, %%xmm6\n\tpxor %%xmm7, %%xmm7\n\t"
                         "pxor %%xmm8, %%xmm8\n\tpxor %%xmm9, %%xmm9\n\t"
                         "pxor %%xmm10, %%xmm10\n\tpxor %%xmm11, %%xmm11\n\t"
                         "pxor %%xmm12, %%xmm12\n\tpxor %%xmm13, %%xmm13\n\t"
                         "pxor %%xmm14, %%xmm14\n\tpxor %%xmm15, %%xmm15" ::: "xmm0", "xmm1",
                         "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
                         "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
    }
}

static NOINLINE void park(void) {
    for (;;) pause();
}

static void *tls_thread(void *arg) {
    (void)arg;
    site_tls_thread();
    scrub_stack();
    sem_post(&threads_set_up);
    park();
    return NULL;
}

static void *stack_local_thread(void *arg) {
    (void)arg;
    void *volatile local = site_stack_local();
    scrub_stack();
    sem_post(&threads_set_up);
    park();
    return (void *)local;
}

static void *vector_reg_thread(void *arg) {
    (void)arg;
    vector_handoff = site_vector_reg();
    scrub_stack();
    scrub_vector_regs();
    /* The block's only copy goes into %xmm8: the handoff slot and every general-purpose register
     * but rsp/rbp are zeroed, the thread says it is parked, and then it loops on the raw pause
     * syscall (34), which touches no vector register, for ever. */
    __asm__ volatile(
        "movq %[handoff], %%xmm8\n\t"
        "movq $0, %[handoff]\n\t"
        "xorl %%eax, %%eax\n\t"
        "xorl %%ebx, %%ebx\n\t"
        "xorl %%ecx, %%ecx\n\t"
        "xorl %%edx, %%edx\n\t"
        "xorl %%esi, %%esi\n\t"
        "xorl %%edi, %%edi\n\t"
        "xorl %%r8d, %%r8d\n\t"
        "xorl %%r9d, %%r9d\n\t"
        "xorl %%r10d, %%r10d\n\t"
        "xorl %%r11d, %%r11d\n\t"
        "xorl %%r12d, %%r12d\n\t"
        "xorl %%r13d, %%r13d\n\t"
        "xorl %%r14d, %%r14d\n\t"
        "xorl %%r15d, %%r15d\n\t"
        "movl $1, %[parked]\n\t"
        "1:\n\t"
        "movl $34, %%eax\n\t"
        "syscall\n\t"
        "jmp 1b"
        : [handoff] "+m"(vector_handoff), [parked] "=m"(vector_thread_parked)
        :
        : "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
          "r14", "r15", "xmm8", "memory");
    return NULL;
}

static NOINLINE void start_threads(void) {
    void *(*bodies[])(void *) = {tls_thread, stack_local_thread, vector_reg_thread};
    for (unsigned i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        pthread_t thread;
        if (pthread_create(&thread, NULL, bodies[i], NULL) != 0) {
            perror("pthread_create");
            exit(1);
        }
        pthread_detach(thread);
    }
    sem_wait(&threads_set_up);
    sem_wait(&threads_set_up);
    while (!vector_thread_parked) usleep(1000);
}

static NOINLINE void stage2(void) {
    site_dropped();
    site_list();
    site_cycle();
    site_global_array();
    site_global_list();
    site_tls_main();
    site_interior();
    site_freed_holder();
    site_via_pre_holder();
    start_threads();
}

static int filled_with(const void *block, size_t from, size_t size) {
    const unsigned char *bytes = block;
    for (size_t i = from; i < size; i++)
        if (bytes[i] != FILL) return 0;
    return 1;
}

/* NULL when every reachable structure of the main thread is intact and malloc/free work. */
static NOINLINE const char *check(void) {
    for (int i = 0; i < GLOBAL_ARRAY_LEN; i++)
        if (!global_array[i] || !filled_with(global_array[i], 0, GLOBAL_ARRAY_SIZE))
            return "global_array";
    int nodes = 0;
    for (void **node = global_list; node; node = *node) {
        if (!filled_with(node, sizeof(void *), GLOBAL_LIST_SIZE)) return "global_list";
        nodes++;
    }
    if (nodes != GLOBAL_LIST_LEN) return "global_list length";
    if (!tls_pointer || !filled_with(tls_pointer, 0, TLS_MAIN_SIZE)) return "tls_main";
    if (!interior_pointer || !filled_with(interior_pointer - 16, 0, INTERIOR_SIZE))
        return "interior";
    if (!pre_holder || !pre_holder[1] || !filled_with(pre_holder[1], 0, VIA_PRE_HOLDER_SIZE))
        return "via_pre_holder";
    void *volatile p = malloc(PING_SIZE);
    if (!p) return "malloc";
    fill(p, PING_SIZE);
    free(p);
    return NULL;
}

static void say(const char *line) {
    fputs(line, stdout);
    fputc('\n', stdout);
    fflush(stdout);
}

int main(void) {
    sem_init(&threads_set_up, 0, 0);
    site_pre_holder();
    say("stage1");
    char line[64];
    for (;;) {
        if (!fgets(line, sizeof line, stdin)) return 0;
        if (!strcmp(line, "go\n")) break;
        say("expected go");
    }
    stage2();
    scrub_stack();
    scrub_vector_regs();
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        if (!strcmp(line, "ping\n")) {
            const char *broken = check();
            if (broken) {
                printf("broken: %s\n", broken);
                fflush(stdout);
            } else {
                say("pong");
            }
        } else if (!strcmp(line, "exit\n")) {
            exit(0);
        } else {
            say("unknown command");
        }
    }
    return 0;
}
