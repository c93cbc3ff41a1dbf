/*
 * Processes that live and end in the ways a careless or hostile target does, each leaking
 * known blocks at a known function once the test says it is traced (the file DIR/traced).
 * Build: gcc -O0 -g -fno-omit-frame-pointer -fno-builtin -pthread lifecycles.c -o lifecycles
 *
 *   lifecycles daemon DIR
 *       Daemonizes by a double fork: the child calls setsid(), forks the daemon and exits; the
 *       parent reaps it, waits until the daemon has written DIR/daemon-pid, and exits 0. The
 *       daemon (stdin, stdout, stderr on /dev/null) waits for DIR/traced, leaks 25 x 300 B at
 *       daemon_leak, writes DIR/done, waits for DIR/stop and exits 0.
 *   lifecycles exiting DIR
 *       Forks a child that opens a file on a FUSE file system this process serves (mounted
 *       on DIR/mnt), writes DIR/child-pid, waits for DIR/traced, leaks 12 x 200 B at
 *       child_leak, and exits slowly: its exit releases its memory first, then closes the
 *       file, and the flush of that close is answered 3 s late. For those 3 s the child still
 *       runs (state S) with no memory, no executable and no command line, as a process does
 *       while the kernel tears down a large heap. Then it is reaped, the file system
 *       unmounted, and the parent exits 0.
 *   lifecycles crash BLOCKS
 *       Leaks BLOCKS x 64 KiB at leak_until_crash, one every 50 ms, then dies of SIGSEGV.
 *   lifecycles named NAME DIR
 *       Sets its comm to NAME (prctl(PR_SET_NAME): any bytes), writes DIR/ready, waits for
 *       DIR/traced, leaks 10 x 100 B at named_leak, writes DIR/done, waits for DIR/stop and
 *       exits 0.
 *
 * Waits give up after 30 s (exit 3), so nothing is left behind by a failed test.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

static void *volatile sink; /* keeps the compiler from reasoning about leaked pointers */

static void path_in(char *out, size_t size, const char *dir, const char *name) {
    snprintf(out, size, "%s/%s", dir, name);
}

static void wait_for(const char *dir, const char *name) {
    char path[4096];
    path_in(path, sizeof path, dir, name);
    for (int t = 0; access(path, F_OK) != 0; t++) {
        if (t > 3000) _exit(3);
        usleep(10000);
    }
}

/* Writes TEXT to DIR/NAME whole: into a temporary file renamed into place. */
static void put(const char *dir, const char *name, const char *text) {
    char path[4096], temp[4096];
    path_in(path, sizeof path, dir, name);
    snprintf(temp, sizeof temp, "%s.%d", path, (int)getpid());
    FILE *f = fopen(temp, "w");
    if (f == NULL) _exit(4);
    fputs(text, f);
    fclose(f);
    rename(temp, path);
}

static void put_pid(const char *dir, const char *name) {
    char text[32];
    snprintf(text, sizeof text, "%d\n", (int)getpid());
    put(dir, name, text);
}

NOINLINE void daemon_leak(void) {
    for (int i = 0; i < 25; i++) sink = malloc(300);              /* 25 x 300 B */
}

NOINLINE void child_leak(void) {
    for (int i = 0; i < 12; i++) sink = malloc(200);              /* 12 x 200 B */
}

NOINLINE void leak_until_crash(int blocks) {
    for (int i = 0; i < blocks; i++) {
        char *block = malloc(64 << 10);                          /* BLOCKS x 64 KiB */
        memset(block, 1, 64 << 10);
        sink = block;
        usleep(50000);
    }
}

NOINLINE void named_leak(void) {
    for (int i = 0; i < 10; i++) sink = malloc(100);              /* 10 x 100 B */
}

static int run_daemon(const char *dir) {
    pid_t child = fork();
    if (child < 0) return 1;
    if (child == 0) {
        setsid();
        pid_t daemon = fork();
        if (daemon != 0) _exit(daemon < 0);
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        put_pid(dir, "daemon-pid");
        wait_for(dir, "traced");
        daemon_leak();
        put(dir, "done", "done\n");
        wait_for(dir, "stop");
        _exit(0);
    }
    waitpid(child, NULL, 0);
    wait_for(dir, "daemon-pid");
    return 0;
}

/* The FUSE file system of `exiting`: one empty file, `f`, whose flush is answered late. */

static char fuse_request[1 << 17];

static void fuse_reply(int fuse, uint64_t unique, int error, const void *body, size_t size) {
    char reply[sizeof(struct fuse_out_header) + 256];
    struct fuse_out_header header = {
        .len = sizeof header + size, .error = error, .unique = unique};
    memcpy(reply, &header, sizeof header);
    memcpy(reply + sizeof header, body, size);
    if (write(fuse, reply, header.len) < 0) { /* the request was interrupted: no matter */
    }
}

static void fuse_file_attr(struct fuse_attr *attr, uint64_t node) {
    memset(attr, 0, sizeof *attr);
    attr->ino = node;
    attr->mode = node == FUSE_ROOT_ID ? (S_IFDIR | 0755) : (S_IFREG | 0644);
    attr->nlink = node == FUSE_ROOT_ID ? 2 : 1;
}

/* Answers one request; false once the file system is gone. */
static int fuse_serve_one(int fuse) {
    ssize_t got = read(fuse, fuse_request, sizeof fuse_request);
    if (got < (ssize_t)sizeof(struct fuse_in_header)) return got < 0 && errno == EINTR;
    struct fuse_in_header *in = (struct fuse_in_header *)fuse_request;
    const char *body = fuse_request + sizeof *in;
    switch (in->opcode) {
    case FUSE_INIT: {
        const struct fuse_init_in *init = (const struct fuse_init_in *)body;
        struct fuse_init_out out = {.major = FUSE_KERNEL_VERSION,
                                    .minor = init->minor < FUSE_KERNEL_MINOR_VERSION
                                                 ? init->minor
                                                 : FUSE_KERNEL_MINOR_VERSION,
                                    .max_write = 4096,
                                    .time_gran = 1};
        fuse_reply(fuse, in->unique, 0, &out, sizeof out);
        break;
    }
    case FUSE_LOOKUP: {
        if (in->nodeid != FUSE_ROOT_ID || strcmp(body, "f") != 0) {
            fuse_reply(fuse, in->unique, -ENOENT, NULL, 0);
            break;
        }
        struct fuse_entry_out out = {.nodeid = 2, .generation = 1};
        fuse_file_attr(&out.attr, 2);
        fuse_reply(fuse, in->unique, 0, &out, sizeof out);
        break;
    }
    case FUSE_GETATTR: {
        struct fuse_attr_out out = {0};
        fuse_file_attr(&out.attr, in->nodeid);
        fuse_reply(fuse, in->unique, 0, &out, sizeof out);
        break;
    }
    case FUSE_OPEN: {
        struct fuse_open_out out = {.fh = 1};
        fuse_reply(fuse, in->unique, 0, &out, sizeof out);
        break;
    }
    case FUSE_FLUSH:
        sleep(3);
        fuse_reply(fuse, in->unique, 0, NULL, 0);
        break;
    case FUSE_RELEASE:
        fuse_reply(fuse, in->unique, 0, NULL, 0);
        break;
    case FUSE_FORGET:
    case FUSE_BATCH_FORGET:
    case FUSE_INTERRUPT:
        break; /* no reply */
    default:
        fuse_reply(fuse, in->unique, -ENOSYS, NULL, 0);
    }
    return 1;
}

static int run_exiting(const char *dir) {
    char mount_point[4096], file[4096], options[128];
    path_in(mount_point, sizeof mount_point, dir, "mnt");
    path_in(file, sizeof file, mount_point, "f");
    mkdir(mount_point, 0755);
    int fuse = open("/dev/fuse", O_RDWR | O_CLOEXEC);
    if (fuse < 0) return 6;
    snprintf(options, sizeof options, "fd=%d,rootmode=40000,user_id=0,group_id=0", fuse);
    if (mount("lifecycles", mount_point, "fuse.lifecycles", MS_NOSUID | MS_NODEV, options) != 0)
        return 7;
    pid_t child = fork();
    if (child < 0) return 1;
    if (child == 0) {
        put_pid(dir, "child-pid");
        wait_for(dir, "traced");
        child_leak();
        /* Opened last: the parent serves the file system from here on. */
        if (open(file, O_RDONLY) < 0) _exit(8);
        _exit(0);
    }
    int status = 0;
    while (waitpid(child, &status, WNOHANG) == 0) {
        struct pollfd ready = {.fd = fuse, .events = POLLIN};
        if (poll(&ready, 1, 100) > 0 && !fuse_serve_one(fuse)) break;
    }
    umount2(mount_point, MNT_DETACH);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

static int run_named(const char *name, const char *dir) {
    prctl(PR_SET_NAME, name, 0, 0, 0);
    put_pid(dir, "ready");
    wait_for(dir, "traced");
    named_leak();
    put(dir, "done", "done\n");
    wait_for(dir, "stop");
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "daemon") == 0) return run_daemon(argv[2]);
    if (argc == 3 && strcmp(argv[1], "exiting") == 0) return run_exiting(argv[2]);
    if (argc == 3 && strcmp(argv[1], "crash") == 0) {
        struct rlimit no_core = {0, 0}; /* a crash on purpose leaves no core file */
        setrlimit(RLIMIT_CORE, &no_core);
        leak_until_crash(atoi(argv[2]));
        *(volatile int *)0 = 1;
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "named") == 0) return run_named(argv[2], argv[3]);
    fprintf(stderr, "usage: lifecycles daemon|exiting DIR | crash BLOCKS | named NAME DIR\n");
    return 2;
}
