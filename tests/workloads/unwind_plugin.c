/*
 * A shared library without frame pointers, loaded with dlopen by unwind_dlopen: plugin_leak
 * leaks 25 x 400 B through plugin_store.
 */
#include <stdlib.h>

static void *volatile sink;
static volatile int after;

__attribute__((noinline)) static void plugin_store(void) {
    for (int i = 0; i < 25; i++) sink = malloc(400);
    after++;
}

void plugin_leak(void) {
    plugin_store();
    after++;
}
