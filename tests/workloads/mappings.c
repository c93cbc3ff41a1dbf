/* Mappings made by the system calls themselves, through syscall(2) rather than the C library's
 * mmap wrapper (as Go's runtime, static binaries and JITs do). Every figure is exact:
 *   map_five             5 x 1 MiB kept                    -> 5 MiB in 5
 *   map_and_unmap_three  3 x 1 MiB mapped and unmapped     -> nothing
 *   open_reserved        16 MiB PROT_NONE, 2 MiB opened by mprotect, 1 MiB opened and closed
 *                                                          -> 2 MiB in 1
 *   move_mapping         64 KiB moved and grown by mremap  -> 256 KiB in 1
 *   map_to_replace       128 KiB, replaced by a MAP_FIXED mapping in replace_fixed
 *                                                          -> nothing
 *   replace_fixed        128 KiB MAP_FIXED over it         -> 128 KiB in 1
 *   map_file             a file mapping (page cache)       -> nothing
 *   grow_break           brk raised by 64 KiB              -> 64 KiB in 1
 *   map_where_a_file_was 8 KiB where a file mapping was just unmapped (the unmap reaches the
 *                        tracer after this mapping does)   -> 8 KiB in 1
 *   fixed_over_file      8 KiB MAP_FIXED over a file mapping, as the loader maps a library's
 *                        .bss                              -> 8 KiB in 1
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))
#define KIB 1024L
#define MIB (1024L * 1024L)

static void *volatile sink[16];

/* A macro, so the mapping's site is the function that maps. */
#define raw_mmap(addr, length, prot, flags) \
    ((char *)syscall(SYS_mmap, (addr), (long)(length), (long)(prot), (long)(flags), -1L, 0L))

NOINLINE void map_five(void) {
    for (int i = 0; i < 5; i++) {
        char *p = raw_mmap(NULL, MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
        memset(p, 1, 4096);
        sink[i] = p;
    }
}

NOINLINE void map_and_unmap_three(void) {
    for (int i = 0; i < 3; i++) {
        char *p = raw_mmap(NULL, MIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
        memset(p, 1, 4096);
        syscall(SYS_munmap, p, MIB);
    }
}

NOINLINE void open_reserved(void) {
    char *r = raw_mmap(NULL, 16 * MIB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE);
    syscall(SYS_mprotect, r + 4 * MIB, 2 * MIB, PROT_READ | PROT_WRITE);
    syscall(SYS_mprotect, r + 8 * MIB, MIB, PROT_READ | PROT_WRITE);
    syscall(SYS_mprotect, r + 8 * MIB, MIB, PROT_NONE);
    sink[5] = r;
}

NOINLINE void move_mapping(void) {
    char *p = raw_mmap(NULL, 64 * KIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    sink[6] = (void *)syscall(SYS_mremap, p, 64 * KIB, 256 * KIB, MREMAP_MAYMOVE);
}

NOINLINE char *map_to_replace(void) {
    return raw_mmap(NULL, 128 * KIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
}

NOINLINE void replace_fixed(char *p) {
    sink[7] = raw_mmap(p, 128 * KIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED);
}

NOINLINE void map_file(void) {
    int fd = open("/proc/self/exe", O_RDONLY);
    sink[8] = (void *)syscall(SYS_mmap, NULL, 4096L, (long)PROT_READ, (long)MAP_PRIVATE, (long)fd, 0L);
    close(fd);
}

NOINLINE void grow_break(void) {
    long now = syscall(SYS_brk, 0L);
    sink[9] = (void *)syscall(SYS_brk, now + 64 * KIB);
}

static char *map_exe_pages(long length) {
    int fd = open("/proc/self/exe", O_RDONLY);
    char *p = (char *)syscall(SYS_mmap, NULL, length, (long)PROT_READ, (long)MAP_PRIVATE, (long)fd, 0L);
    close(fd);
    return p;
}

NOINLINE void map_where_a_file_was(void) {
    char *file = map_exe_pages(8 * KIB);
    syscall(SYS_munmap, file, 8 * KIB);
    char *p = raw_mmap(file, 8 * KIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    if (p != file) fprintf(stderr, "map_where_a_file_was: the hint was not taken\n");
    sink[10] = p;
}

NOINLINE void fixed_over_file(void) {
    char *file = map_exe_pages(8 * KIB);
    sink[11] = raw_mmap(file, 8 * KIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED);
}

int main(void) {
    map_five();
    map_and_unmap_three();
    open_reserved();
    move_mapping();
    replace_fixed(map_to_replace());
    map_file();
    grow_break();
    map_where_a_file_was();
    fixed_over_file();
    puts("mapped");
    fflush(stdout);
    return 0;
}
