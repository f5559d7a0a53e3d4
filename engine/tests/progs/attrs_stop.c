/* Stopped processes: five children, each in a process group of its own and counting in shared
 * memory, stopped by the parent with SIGSTOP (the first has two counting threads), SIGTSTP,
 * SIGTTIN, SIGTTOU and SIGSTOP. The parent blocks SIGCHLD. It checks with waitid(WNOWAIT) that
 * the first four are stopped without collecting their stops, collects the fifth's with waitpid,
 * and takes the SIGCHLDs the stops queued. After the restore it checks that no SIGCHLD is pending
 * (nothing happened since), that each child is still stopped (state T, its counter does not
 * move), that waitpid(WUNTRACED) reports the first four with their stop signals and nothing for
 * the fifth (collected before), then resumes each with SIGCONT (waitpid reports WIFCONTINUED, the
 * counter moves again) and ends it. */
#include "zaptest.h"
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>

static const int sigs[] = {SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU, SIGSTOP};
#define N 5
#define COLLECTED 4 /* the child whose stop the parent collects before the checkpoint */
static volatile long *counters; /* N counters, then the second thread's of child 0 */

static void *count_more(void *arg) {
    volatile long *c = arg;
    for (;;) {
        (*c)++;
        usleep(1000);
    }
    return NULL;
}

static char state(pid_t pid) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return '?';
    int n = read(fd, buf, sizeof buf - 1);
    close(fd);
    buf[n > 0 ? n : 0] = 0;
    char *p = strrchr(buf, ')');
    return p && p[1] ? p[2] : '?';
}

static long moved(int i, int ms) {
    long a = counters[i] + (i == 0 ? counters[N] : 0);
    usleep(ms * 1000);
    return counters[i] + (i == 0 ? counters[N] : 0) - a;
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    counters = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(counters != MAP_FAILED, "mmap");
    pid_t kids[N];
    for (int i = 0; i < N; i++) {
        kids[i] = fork();
        CHECK(kids[i] >= 0, "fork");
        if (kids[i] == 0) {
            sigprocmask(SIG_UNBLOCK, &chld, NULL);
            setpgid(0, 0); /* its own group, not orphaned: SIGTSTP, SIGTTIN and SIGTTOU stop it */
            if (i == 0) {
                pthread_t t;
                pthread_create(&t, NULL, count_more, (void *)&counters[N]);
            }
            count_more((void *)&counters[i]);
        }
        setpgid(kids[i], kids[i]);
    }
    for (int i = 0; i < N; i++) {
        while (counters[i] < 3 || (i == 0 && counters[N] < 3)) usleep(1000);
        CHECK(kill(kids[i], sigs[i]) == 0, "kill");
        siginfo_t si = {0};
        CHECK(waitid(P_PID, kids[i], &si, WSTOPPED | (i == COLLECTED ? 0 : WNOWAIT)) == 0 && si.si_code == CLD_STOPPED && si.si_status == sigs[i],
              "child %d not stopped by %d (code %d status %d)", i, sigs[i], si.si_code, si.si_status);
    }
    struct timespec zero = {0, 0};
    while (sigtimedwait(&chld, NULL, &zero) == SIGCHLD) {
    }
    for (int i = 0; i < N; i++) {
        while (state(kids[i]) != 'T') usleep(1000);
        CHECK(moved(i, 50) == 0, "child %d counts while stopped", i);
    }
    say("ready");
    wait_go(argv[2]);
    sigset_t pending;
    sigpending(&pending);
    CHECK(!sigismember(&pending, SIGCHLD), "a SIGCHLD is pending after the restore, none was before");
    for (int i = 0; i < N; i++) {
        CHECK(state(kids[i]) == 'T', "child %d: state %c after the restore, want T", i, state(kids[i]));
        CHECK(moved(i, 100) == 0, "child %d counts after the restore", i);
        int st = 0;
        if (i == COLLECTED) {
            CHECK(waitpid(kids[i], &st, WUNTRACED | WNOHANG) == 0, "child %d: its stop, collected before, is reported again (%#x)", i, st);
            continue;
        }
        CHECK(waitpid(kids[i], &st, WUNTRACED | WNOHANG) == kids[i] && WIFSTOPPED(st) && WSTOPSIG(st) == sigs[i],
              "child %d: waitpid reports status %#x, want stopped by %d", i, st, sigs[i]);
    }
    for (int i = 0; i < N; i++) {
        CHECK(kill(kids[i], SIGCONT) == 0, "SIGCONT");
        int st = 0;
        CHECK(waitpid(kids[i], &st, WCONTINUED) == kids[i] && WIFCONTINUED(st), "child %d: not reported continued (%#x)", i, st);
        long m = 0;
        for (int k = 0; k < 100 && m == 0; k++) m = moved(i, 20);
        CHECK(m > 0, "child %d does not count after SIGCONT", i);
        if (i == 0) {
            long a = counters[N];
            for (int k = 0; k < 100 && counters[N] == a; k++) usleep(10000);
            CHECK(counters[N] != a, "child 0's second thread does not count after SIGCONT");
        }
        kill(kids[i], SIGKILL);
        CHECK(waitpid(kids[i], &st, 0) == kids[i] && WIFSIGNALED(st), "reap child %d", i);
    }
    say("ok");
    return 0;
}
