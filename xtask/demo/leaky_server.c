/*
 * leaktracer's demo: a toy request handler with a leak.
 *
 * Every request parses a header block and builds a response (both freed again), and creates a
 * session. Sessions of keep-alive requests are meant to be dropped when the connection closes,
 * but close_connection() forgets to free them: remember_session() leaks 1 KiB per keep-alive
 * request, about 40 KiB/s. Runs until killed.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct session {
    int id;
    char user[1020];
};

static struct session *open_sessions[64];

__attribute__((noinline)) static char *parse_headers(int request) {
    char *headers = malloc(512 + request % 256);
    snprintf(headers, 512, "GET /item/%d HTTP/1.1", request);
    return headers;
}

__attribute__((noinline)) static char *build_response(const char *headers) {
    char *body = calloc(1, 2048);
    snprintf(body, 2048, "200 OK for %s", headers);
    return body;
}

__attribute__((noinline)) static struct session *remember_session(int request) {
    struct session *s = malloc(sizeof *s);
    s->id = request;
    snprintf(s->user, sizeof s->user, "user-%d", request % 97);
    return s;
}

__attribute__((noinline)) static void close_connection(int request) {
    /* BUG: the session is forgotten, never freed. */
    open_sessions[request % 64] = NULL;
}

__attribute__((noinline)) static void handle_request(int request) {
    char *headers = parse_headers(request);
    char *response = build_response(headers);
    struct session *s = remember_session(request);
    open_sessions[request % 64] = s;
    if (request % 4 != 0) {
        close_connection(request);      /* keep-alive: leaks the session */
    } else {
        free(s);                         /* one-shot request: freed properly */
        open_sessions[request % 64] = NULL;
    }
    free(response);
    free(headers);
}

static volatile sig_atomic_t running = 1;
static void stop(int sig) { (void)sig; running = 0; }

int main(void) {
    signal(SIGTERM, stop);
    signal(SIGINT, stop);
    printf("leaky-server: pid %d handling requests\n", getpid());
    fflush(stdout);
    for (int request = 0; running; request++) {
        handle_request(request);
        usleep(20000); /* ~50 requests/s */
    }
    return 0;
}
