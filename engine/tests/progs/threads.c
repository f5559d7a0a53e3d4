/* 8 worker threads, each named "worker-N", counting in an array slot and in a TLS variable, and
 * passing a token round the ring under one mutex + condvar (each handoff advances a shared
 * counter). The main thread waits in pthread_join. Worker 0 appends "progress c0 .. c7 handoffs"
 * lines; once the go file exists it waits for every counter and the handoffs to move on and
 * stops everyone; main joins all and says "ok". Every worker keeps checking its tid, its name
 * and its TLS counter.
 * Build with -pthread. */
#include "zaptest.h"
#include <pthread.h>
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
    if (get_handoffs() < h0 + 2 * N) return 0;
    progress();
    pthread_mutex_lock(&mu);
    stop = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    return 1;
}

static void *worker(void *arg) {
    int i = (int)(long)arg;
    char name[16];
    snprintf(name, sizeof name, "worker-%d", i);
    pthread_setname_np(pthread_self(), name);
    tids[i] = my_tid();
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
        if (counter[i] % 5 == 0) {
            pthread_mutex_lock(&mu);
            while (turn != i && !stop) pthread_cond_wait(&cv, &mu);
            if (!stop) {
                handoffs++;
                turn = (i + 1) % N;
                pthread_cond_broadcast(&cv);
            }
            pthread_mutex_unlock(&mu);
        }
        if (i == 0 && counter[0] % 10 == 0) {
            progress();
            if (!go) go = stat(go_path, &st) == 0;
            if (go && check_after_go()) break;
        }
        usleep(500);
    }
    return 0;
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    go_path = argv[2];
    for (long i = 0; i < N; i++) CHECK(pthread_create(&th[i], 0, worker, (void *)i) == 0, "pthread_create");
    while (get_handoffs() < 4 * N) usleep(1000);
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
