/* POSIX timers that signal a given thread (SIGEV_THREAD_ID): a worker thread owns a periodic
 * timer that signals it (SIGRTMIN+1, 10 ms) and main one that signals main (SIGRTMIN+2). Every
 * thread blocks both signals and takes its own with sigtimedwait, so a timer that came back
 * aimed at another thread (or at the process) is never taken by its owner. After the restore
 * /proc/self/timers must name each timer's thread by its id, and both threads keep receiving. */
#include "zaptest.h"
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <time.h>

#ifndef sigev_notify_thread_id
#define sigev_notify_thread_id _sigev_un._tid
#endif

static const char *go;
static volatile int worker_tid, worker_ready, worker_ok;
static timer_t worker_timer, main_timer;

static timer_t make_timer(int sig) {
    struct sigevent ev = {0};
    ev.sigev_notify = SIGEV_THREAD_ID;
    ev.sigev_signo = sig;
    ev.sigev_notify_thread_id = syscall(SYS_gettid);
    timer_t t;
    if (timer_create(CLOCK_MONOTONIC, &ev, &t) != 0) { say("FAIL timer_create: %s", strerror(errno)); _exit(1); }
    struct itimerspec p = {{0, 10000000}, {0, 10000000}};
    if (timer_settime(t, 0, &p, NULL) != 0) { say("FAIL timer_settime"); _exit(1); }
    return t;
}

static int take(int sig, int n) {
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, sig);
    struct timespec to = {2, 0};
    int got = 0;
    for (int i = 0; i < n; i++) {
        siginfo_t si;
        if (sigtimedwait(&s, &si, &to) == sig) got++;
    }
    return got;
}

static void *worker(void *arg) {
    (void)arg;
    worker_tid = syscall(SYS_gettid);
    worker_timer = make_timer(SIGRTMIN + 1);
    CHECK(take(SIGRTMIN + 1, 3) == 3, "worker: timer signals before the checkpoint");
    worker_ready = 1;
    wait_go(go);
    CHECK(take(SIGRTMIN + 1, 5) == 5, "worker: its timer does not signal it after the restore");
    worker_ok = 1;
    return NULL;
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    go = argv[2];
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGRTMIN + 1);
    sigaddset(&s, SIGRTMIN + 2);
    pthread_sigmask(SIG_BLOCK, &s, NULL); /* inherited by the worker */
    pthread_t t;
    CHECK(pthread_create(&t, NULL, worker, NULL) == 0, "pthread_create");
    main_timer = make_timer(SIGRTMIN + 2);
    CHECK(take(SIGRTMIN + 2, 3) == 3, "main: timer signals before the checkpoint");
    while (!worker_ready) usleep(1000);
    say("ready");
    wait_go(go);
    /* /proc/self/timers names the thread each timer signals. */
    char buf[4096] = {0}, want[64];
    int fd = open("/proc/self/timers", O_RDONLY);
    CHECK(fd >= 0 && read(fd, buf, sizeof buf - 1) > 0, "read /proc/self/timers");
    close(fd);
    snprintf(want, sizeof want, "notify: signal/tid.%d", worker_tid);
    CHECK(strstr(buf, want), "the worker's timer: want %s in %s", want, buf);
    snprintf(want, sizeof want, "notify: signal/tid.%d", getpid());
    CHECK(strstr(buf, want), "main's timer: want %s in %s", want, buf);
    CHECK(take(SIGRTMIN + 2, 5) == 5, "main: its timer does not signal it after the restore");
    pthread_join(t, NULL);
    CHECK(worker_ok, "worker");
    say("ok");
    return 0;
}
