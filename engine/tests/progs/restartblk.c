/* Threads that block every signal (as programs that take their signals through a signalfd do)
 * and wait in syscalls the kernel restarts through its restart block: poll with a timeout,
 * nanosleep, clock_nanosleep (relative and absolute) and a futex wait with a timeout
 * (sem_timedwait). Such a program can never see EINTR: after the restore each wait must go on
 * or end as it would (0 from poll, a timeout from sem_timedwait), never with EINTR. */
#include "zaptest.h"
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <time.h>

static volatile int stop;
static sem_t sem;
static const char *go;

static void *waiter(void *arg) {
    long kind = (long)arg;
    int pfd[2];
    if (pipe(pfd)) return (void *)1;
    while (!stop) {
        int rc = 0;
        if (kind == 0) {
            struct pollfd p = { .fd = pfd[0], .events = POLLIN };
            rc = poll(&p, 1, 300);
            CHECK(rc == 0, "poll with a timeout: %d, errno %d", rc, errno);
        } else if (kind == 1) {
            struct timespec ts = { 0, 300 * 1000 * 1000 };
            rc = nanosleep(&ts, NULL);
            CHECK(rc == 0, "nanosleep: errno %d", errno);
        } else if (kind == 2) {
            struct timespec ts = { 0, 300 * 1000 * 1000 };
            rc = clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, NULL);
            CHECK(rc == 0, "clock_nanosleep (relative): %d", rc);
        } else if (kind == 3) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_nsec += 300 * 1000 * 1000;
            if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
            rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
            CHECK(rc == 0, "clock_nanosleep (absolute): %d", rc);
        } else {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 300 * 1000 * 1000;
            if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
            rc = sem_timedwait(&sem, &ts);
            CHECK(rc == -1 && errno == ETIMEDOUT, "sem_timedwait: %d, errno %d", rc, errno);
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    go = argv[2];
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    sem_init(&sem, 0, 0);
    pthread_t t[5];
    for (long i = 0; i < 5; i++) CHECK(pthread_create(&t[i], NULL, waiter, (void *)i) == 0, "pthread_create");
    usleep(100000);
    say("ready");
    wait_go(go);
    usleep(700000); /* every waiter has gone round at least once since the restore */
    stop = 1;
    for (int i = 0; i < 5; i++) pthread_join(t[i], NULL);
    say("ok");
    return 0;
}
