/* 8 worker threads, each named "worker-N", counting in an array slot and in a TLS variable, and
 * passing a token round the ring under one mutex + condvar (each handoff advances a shared
 * counter). The main thread waits in pthread_join. Worker 0 appends "progress c0 .. c7 handoffs"
 * lines; once the go file exists it waits for every counter and the handoffs to move on and
 * stops everyone; main joins all and says "ok". Every worker keeps checking its tid, its name
 * and its TLS counter. Worker 7 waits for its turn with a timeout. Worker 2 has an alternate
 * signal stack; worker 3 blocks SIGUSR1, which main queues for it alone, and after the go file
 * checks it is still pending and handles it.
 * Build with -pthread. */
#include "zaptest.h"
#include <errno.h>
#include <pthread.h>
#include <time.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#define N 8
static pthread_t th[N];
static pid_t tids[N];
static volatile unsigned long counter[N];
static __thread unsigned long tls_count;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int turn;
static unsigned long handoffs;
static volatile int stop;
static const char *go_path;
static volatile int go_seen, usr1_checked;
static volatile pid_t usr1_in; /* tid of the thread that handled SIGUSR1 */
static char altstack[65536];
static void on_usr1(int s) { (void)s; usr1_in = (pid_t)syscall(SYS_gettid); }

static pid_t my_tid(void) { return (pid_t)syscall(SYS_gettid); }

static unsigned long get_handoffs(void) {
    pthread_mutex_lock(&mu);
    unsigned long h = handoffs;
    pthread_mutex_unlock(&mu);
    return h;
}

static void progress(void) {
    char buf[400];
    int n = snprintf(buf, sizeof buf, "progress");
    for (int i = 0; i < N; i++) n += snprintf(buf + n, sizeof buf - n, " %lu", counter[i]);
    snprintf(buf + n, sizeof buf - n, " %lu", get_handoffs());
    say("%s", buf);
}

/* Worker 0's extra duty once the go file exists: when every counter and the handoffs have
 * moved on since then, stop everyone. Returns 1 when it stopped them. */
static int check_after_go(void) {
    static unsigned long base[N], h0;
    static int have_base;
    if (!have_base) {
        for (int i = 0; i < N; i++) base[i] = counter[i];
        h0 = get_handoffs();
        have_base = 1;
        return 0;
    }
    for (int i = 0; i < N; i++)
        if (counter[i] < base[i] + 20) return 0;
    if (get_handoffs() < h0 + 2 * N || !usr1_checked) return 0;
    progress();
    pthread_mutex_lock(&mu);
    stop = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    return 1;
}

static int stop_pending_check(void) { return go_seen && !usr1_checked; }

static void *worker(void *arg) {
    int i = (int)(long)arg;
    char name[16];
    snprintf(name, sizeof name, "worker-%d", i);
    pthread_setname_np(pthread_self(), name);
    tids[i] = my_tid();
    if (i == 2) {
        /* An alternate signal stack of this thread only. */
        stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack};
        CHECK(sigaltstack(&ss, 0) == 0, "sigaltstack");
    }
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    if (i == 3) pthread_sigmask(SIG_BLOCK, &usr1, 0); /* main queues SIGUSR1 for this thread */
    struct stat st;
    int go = 0;
    while (!stop) {
        counter[i]++;
        tls_count++;
        CHECK(tls_count == counter[i], "worker %d: TLS %lu != %lu", i, tls_count, counter[i]);
        CHECK(my_tid() == tids[i], "worker %d: tid %d became %d", i, tids[i], my_tid());
        if (counter[i] % 50 == 0) {
            /* Own name through prctl: pthread_getname_np on another thread reads /proc/self/task,
             * which names host tids after a restore into a new PID namespace. */
            char now[16] = "";
            prctl(PR_GET_NAME, now);
            CHECK(strcmp(now, name) == 0, "worker %d is named %s", i, now);
        }
        if (counter[i] % 2 == 0) { /* every other step: wait for the token */
            pthread_mutex_lock(&mu);
            while (turn != i && !stop) {
                if (i == N - 1) {
                    /* One worker waits with a timeout (a futex wait that restarts through the
                     * kernel's restart block, made again after a restore). */
                    struct timespec ts;
                    clock_gettime(CLOCK_REALTIME, &ts);
                    ts.tv_nsec += 20 * 1000 * 1000;
                    if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
                    int rc = pthread_cond_timedwait(&cv, &mu, &ts);
                    CHECK(rc == 0 || rc == ETIMEDOUT, "pthread_cond_timedwait: %d", rc);
                } else {
                    pthread_cond_wait(&cv, &mu);
                }
            }
            if (!stop) {
                handoffs++;
                turn = (i + 1) % N;
                pthread_cond_broadcast(&cv);
            }
            pthread_mutex_unlock(&mu);
        }
        if (i == 3 && stop_pending_check()) {
            /* After the restore: SIGUSR1 is still queued for this thread, and handled here. */
            sigset_t pend;
            sigpending(&pend);
            CHECK(sigismember(&pend, SIGUSR1), "SIGUSR1 no longer pending in worker 3");
            CHECK(usr1_in == 0, "SIGUSR1 handled while blocked");
            pthread_sigmask(SIG_UNBLOCK, &usr1, 0);
            CHECK(usr1_in == tids[3], "SIGUSR1 handled in %d, not in worker 3", usr1_in);
            usr1_checked = 1;
        }
        if (i == 0 && counter[0] % 10 == 0) {
            progress();
            if (!go) go = go_seen = stat(go_path, &st) == 0;
            if (go && check_after_go()) break;
        }
        usleep(500);
    }
    return 0;
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    go_path = argv[2];
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, 0);
    for (long i = 0; i < N; i++) CHECK(pthread_create(&th[i], 0, worker, (void *)i) == 0, "pthread_create");
    while (get_handoffs() < 4 * N) usleep(1000);
    CHECK(pthread_kill(th[3], SIGUSR1) == 0, "pthread_kill");
    char buf[200];
    int n = snprintf(buf, sizeof buf, "tids");
    for (int i = 0; i < N; i++) n += snprintf(buf + n, sizeof buf - n, " %d", tids[i]);
    say("%s", buf);
    say("ready");
    for (int i = 0; i < N; i++) CHECK(pthread_join(th[i], 0) == 0, "join %d", i);
    CHECK(my_tid() == getpid(), "main tid");
    say("ok handoffs=%lu", get_handoffs());
    return 0;
}
