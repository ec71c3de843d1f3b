/*
 * Fault injection for the end-to-end tests: preloaded into the proxy
 * (LD_PRELOAD), it makes chosen filesystem calls slow or fail, as a slow or
 * failing disk would. Every behaviour is off unless its variable is set in
 * the proxy's environment, so the shim is harmless when preloaded alone.
 *
 *   PG_FAULT_FSYNC_DELAY_MS=N   fsync and fdatasync take N ms longer
 *
 * Built by the test harness (tests/e2e/harness/shim.rs) with the machine's
 * C compiler; never part of the proxy.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>

static long env_ms(const char *name) {
    const char *v = getenv(name);
    return v ? atol(v) : 0;
}

static void fsync_delay(void) {
    long ms = env_ms("PG_FAULT_FSYNC_DELAY_MS");
    if (ms > 0) {
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    fsync_delay();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    fsync_delay();
    return real(fd);
}
