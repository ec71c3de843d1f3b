/*
 * The fault shim of the end-to-end tests (tests/e2e/spool_faults.rs, the
 * fault run in tests/e2e/spool_chaos.rs): loaded into persona-guard with
 * LD_PRELOAD, it makes chosen file operations fail with a chosen errno, the
 * way a failing or read-only disk would, whoever the process runs as (root
 * ignores permission bits), or makes every fsync slow.
 *
 * The rules are read from the file named by PG_FAULTS on every call, so a
 * test arms and disarms faults while the process runs. One rule a line:
 *
 *     <op> <errno> <substring>
 *
 * op: "open" (open, open64, openat, openat64), "open1" (the same, but only
 * for the first path that matches, and that one path ever after), "unlink"
 * (unlink, unlinkat), "fsync" (fsync, fdatasync; matched against the path
 * of the descriptor). The substring is matched anywhere in the path, or at
 * its end when it ends with '$'. Every injected failure is appended to the
 * file named by PG_FAULTS_LOG, if set ("<op> <path>"), so a test can tell
 * that the fault did fire.
 *
 * PG_FAULT_FSYNC_DELAY_MS=N makes every fsync and fdatasync take N ms
 * longer (a slow disk).
 *
 * A test fixture, compiled by the test harness (tests/e2e/harness/shim.rs):
 *     cc -shared -fPIC -o faults.so faults.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char first_path[4096];

static void note(const char *op, const char *path) {
    const char *log = getenv("PG_FAULTS_LOG");
    if (!log) return;
    int fd = (int)syscall(SYS_openat, AT_FDCWD, log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return;
    char line[4200];
    int n = snprintf(line, sizeof line, "%s %s\n", op, path);
    if (n > 0) {
        ssize_t w = write(fd, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
        (void)w;
    }
    close(fd);
}

/* The errno to fail `op` on `path` with, or 0. */
static int faulty(const char *op, const char *path) {
    const char *rules = getenv("PG_FAULTS");
    if (!rules || !path) return 0;
    int saved = errno;
    char buf[8192];
    int fd = (int)syscall(SYS_openat, AT_FDCWD, rules, O_RDONLY | O_CLOEXEC);
    if (fd < 0) { errno = saved; return 0; }
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    errno = saved;
    if (n <= 0) return 0;
    buf[n] = 0;
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char rop[16], sub[1024];
        int err;
        if (sscanf(line, "%15s %d %1023s", rop, &err, sub) != 3) continue;
        int once = !strcmp(rop, "open1");
        if (strcmp(rop, op) && !(once && !strcmp(op, "open"))) continue;
        size_t sl = strlen(sub), pl = strlen(path);
        int hit;
        if (sl && sub[sl - 1] == '$') {
            sub[--sl] = 0;
            hit = pl >= sl && !strcmp(path + pl - sl, sub);
        } else {
            hit = strstr(path, sub) != NULL;
        }
        if (!hit) continue;
        if (once) {
            pthread_mutex_lock(&lock);
            if (!first_path[0]) snprintf(first_path, sizeof first_path, "%s", path);
            hit = !strcmp(first_path, path);
            pthread_mutex_unlock(&lock);
            if (!hit) continue;
        }
        note(rop, path);
        return err;
    }
    return 0;
}

static mode_t mode_arg(int flags, va_list ap) {
    if (flags & (O_CREAT | O_TMPFILE)) return (mode_t)va_arg(ap, int);
    return 0;
}

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);
typedef int (*unlink_fn)(const char *);
typedef int (*unlinkat_fn)(int, const char *, int);
typedef int (*fsync_fn)(int);

#define REAL(name, type) \
    static type real_##name; \
    if (!real_##name) real_##name = (type)dlsym(RTLD_NEXT, #name)

int open(const char *path, int flags, ...) {
    va_list ap; va_start(ap, flags); mode_t m = mode_arg(flags, ap); va_end(ap);
    int e = faulty("open", path);
    if (e) { errno = e; return -1; }
    REAL(open, open_fn);
    return real_open(path, flags, m);
}

int open64(const char *path, int flags, ...) {
    va_list ap; va_start(ap, flags); mode_t m = mode_arg(flags, ap); va_end(ap);
    int e = faulty("open", path);
    if (e) { errno = e; return -1; }
    REAL(open64, open_fn);
    return real_open64(path, flags, m);
}

int openat(int dirfd, const char *path, int flags, ...) {
    va_list ap; va_start(ap, flags); mode_t m = mode_arg(flags, ap); va_end(ap);
    int e = faulty("open", path);
    if (e) { errno = e; return -1; }
    REAL(openat, openat_fn);
    return real_openat(dirfd, path, flags, m);
}

int openat64(int dirfd, const char *path, int flags, ...) {
    va_list ap; va_start(ap, flags); mode_t m = mode_arg(flags, ap); va_end(ap);
    int e = faulty("open", path);
    if (e) { errno = e; return -1; }
    REAL(openat64, openat_fn);
    return real_openat64(dirfd, path, flags, m);
}

int unlink(const char *path) {
    int e = faulty("unlink", path);
    if (e) { errno = e; return -1; }
    REAL(unlink, unlink_fn);
    return real_unlink(path);
}

int unlinkat(int dirfd, const char *path, int flags) {
    int e = faulty("unlink", path);
    if (e) { errno = e; return -1; }
    REAL(unlinkat, unlinkat_fn);
    return real_unlinkat(dirfd, path, flags);
}

static int fd_faulty(int fd) {
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    int saved = errno;
    ssize_t n = readlink(link, path, sizeof path - 1);
    errno = saved;
    if (n <= 0) return 0;
    path[n] = 0;
    return faulty("fsync", path);
}

/* A slow disk: PG_FAULT_FSYNC_DELAY_MS. */
static void fsync_delay(void) {
    const char *v = getenv("PG_FAULT_FSYNC_DELAY_MS");
    long ms = v ? atol(v) : 0;
    if (ms > 0) {
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
}

int fsync(int fd) {
    fsync_delay();
    int e = fd_faulty(fd);
    if (e) { errno = e; return -1; }
    REAL(fsync, fsync_fn);
    return real_fsync(fd);
}

int fdatasync(int fd) {
    fsync_delay();
    int e = fd_faulty(fd);
    if (e) { errno = e; return -1; }
    REAL(fdatasync, fsync_fn);
    return real_fdatasync(fd);
}
