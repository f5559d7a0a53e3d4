/* Four threads, each blocked most of the time in a wait the kernel restarts through its restart
 * block when a tracer stops it (poll with a timeout, nanosleep, relative clock_nanosleep, a futex
 * wait with a timeout), none retrying on EINTR: after each wait a thread writes "NAME N" to
 * stdout; on EINTR it writes "EINTR NAME" and the program exits 3. A checkpoint/restore must
 * never make these waits fail. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static void say(const char *what, long n) {
    char line[64];
    int len = snprintf(line, sizeof line, "%s %ld\n", what, n);
    if (write(1, line, len) != len) exit(4);
}

static void eintr(const char *what) {
    say("EINTR", 0);
    say(what, -1);
    exit(3);
}

static void *poller(void *arg) {
    (void)arg;
    int p[2];
    if (pipe(p)) exit(5);
    for (long n = 1;; n++) {
        struct pollfd pf = { .fd = p[0], .events = POLLIN };
        if (poll(&pf, 1, 150) < 0) eintr("poll");
        say("poll", n);
    }
}

static void *sleeper(void *arg) {
    (void)arg;
    for (long n = 1;; n++) {
        struct timespec req = { 0, 170 * 1000000L }, rem;
        if (syscall(SYS_nanosleep, &req, &rem) < 0) eintr("nanosleep");
        say("nanosleep", n);
    }
}

static void *clocker(void *arg) {
    (void)arg;
    for (long n = 1;; n++) {
        struct timespec req = { 0, 190 * 1000000L }, rem;
        int r = clock_nanosleep(CLOCK_MONOTONIC, 0, &req, &rem);
        if (r == EINTR) eintr("clock_nanosleep");
        say("clock_nanosleep", n);
    }
}

static int word;

static void *waiter(void *arg) {
    (void)arg;
    for (long n = 1;; n++) {
        struct timespec t = { 0, 210 * 1000000L };
        long r = syscall(SYS_futex, &word, FUTEX_WAIT_PRIVATE, 0, &t, NULL, 0);
        if (r < 0 && errno == EINTR) eintr("futex");
        say("futex", n);
    }
}

int main(void) {
    pthread_t t[4];
    void *(*fns[4])(void *) = { poller, sleeper, clocker, waiter };
    for (int i = 0; i < 4; i++)
        if (pthread_create(&t[i], NULL, fns[i], NULL)) return 6;
    pthread_join(t[0], NULL);
    return 0;
}
