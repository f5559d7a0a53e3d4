/* pthread mutexes held across a checkpoint. A child holds a robust, process-shared mutex in
 * shared anonymous memory and waits; the parent blocks in pthread_mutex_lock on it (a futex
 * wait with no timeout) while three threads of the parent take turns on an ordinary mutex and
 * signal a condition variable. Once restored, the test kills the child (SIGKILL, so it never
 * unlocks): the kernel walks the child's robust list, which must have come back with it, marks
 * the mutex owner-dead and wakes the parent, whose lock must return EOWNERDEAD; the threads must
 * still count. Says "ready", then (no go file: the child's death is the signal) "ok". */
#include "zaptest.h"
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <time.h>

struct shared {
    pthread_mutex_t m;
    volatile int held;
};

static pthread_mutex_t tm = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static long tcount;

static void *contender(void *arg) {
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&tm);
        tcount++;
        pthread_cond_broadcast(&cv);
        pthread_mutex_unlock(&tm);
        usleep(1000);
    }
    return NULL;
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    struct shared *s = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(s != MAP_FAILED, "mmap");
    pthread_mutexattr_t at;
    pthread_mutexattr_init(&at);
    pthread_mutexattr_setpshared(&at, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&at, PTHREAD_MUTEX_ROBUST);
    CHECK(pthread_mutex_init(&s->m, &at) == 0, "mutex init");
    pid_t child = fork();
    CHECK(child >= 0, "fork");
    if (child == 0) {
        pthread_mutex_lock(&s->m);
        s->held = 1;
        for (;;) pause();
    }
    while (!s->held) usleep(1000);
    pthread_t t[3];
    for (int i = 0; i < 3; i++) CHECK(pthread_create(&t[i], NULL, contender, NULL) == 0, "thread");
    say("child %d holds", child);
    say("ready");
    int r = pthread_mutex_lock(&s->m);
    CHECK(r == EOWNERDEAD, "lock of the dead owner's mutex returned %d (%s), not EOWNERDEAD", r, strerror(r));
    CHECK(pthread_mutex_consistent(&s->m) == 0 && pthread_mutex_unlock(&s->m) == 0, "make consistent");
    CHECK(pthread_mutex_lock(&s->m) == 0 && pthread_mutex_unlock(&s->m) == 0, "lock again");
    pthread_mutex_lock(&tm);
    long before = tcount;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 10;
    while (tcount < before + 100 && pthread_cond_timedwait(&cv, &tm, &ts) == 0) {
    }
    long after = tcount;
    pthread_mutex_unlock(&tm);
    CHECK(after >= before + 100, "the threads count on: %ld -> %ld", before, after);
    say("ok EOWNERDEAD, threads counted %ld -> %ld", before, after);
    return 0;
}
