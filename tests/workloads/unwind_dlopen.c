/*
 *   unwind_dlopen PLUGIN
 *
 * dlopens PLUGIN (unwind_plugin), waits 2.5 s (the tracer checks traced processes' mappings
 * every second and writes the unwind tables of what they mapped since), then calls the
 * plugin's plugin_leak through call_plugin (25 x 400 B) and exits.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>

static volatile int after;

__attribute__((noinline)) void call_plugin(void (*leak)(void)) {
    leak();
    after++;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    void *plugin = dlopen(argv[1], RTLD_NOW);
    if (!plugin) {
        fprintf(stderr, "unwind_dlopen: %s\n", dlerror());
        return 2;
    }
    void (*leak)(void) = (void (*)(void))dlsym(plugin, "plugin_leak");
    if (!leak) return 2;
    usleep(2500000);
    call_plugin(leak);
    after++;
    return 0;
}
