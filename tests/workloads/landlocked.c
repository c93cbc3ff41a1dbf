/*
 * Runs a command inside a new Landlock domain that forbids nothing it does (only creating
 * character devices): root keeps every capability, CAP_SYS_PTRACE included, yet the kernel
 * refuses it the memory of processes outside the domain (Landlock's ptrace rule), as a
 * sandbox's security policy does. For leaktracer's test of that refusal's message.
 * Build: gcc -O0 -g landlocked.c -o landlocked
 *
 *   landlocked PROGRAM [ARGS...]
 */
#include <linux/landlock.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: landlocked PROGRAM [ARGS...]\n");
        return 2;
    }
    struct landlock_ruleset_attr attr = {.handled_access_fs = LANDLOCK_ACCESS_FS_MAKE_CHAR};
    int ruleset = syscall(SYS_landlock_create_ruleset, &attr, sizeof attr, 0);
    if (ruleset < 0) {
        perror("landlocked: landlock_create_ruleset");
        return 125;
    }
    if (syscall(SYS_landlock_restrict_self, ruleset, 0) != 0) {
        perror("landlocked: landlock_restrict_self");
        return 125;
    }
    close(ruleset);
    execvp(argv[1], argv + 1);
    perror("landlocked: exec");
    return 126;
}
