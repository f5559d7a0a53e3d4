/* Scheduling and the other per-thread and per-process attributes, each thread with its own:
 *   main:  SCHED_BATCH nice 5, I/O priority best-effort 6, timer slack 123456 ns, parent-death
 *          signal SIGUSR2, speculative store bypass disabled (where the kernel lets a task
 *          choose), MCE kill policy early
 *   idle:  SCHED_IDLE, I/O class idle, timer slack 777000 ns, parent-death signal SIGUSR1,
 *          affinity to the last CPU
 *   fifo:  SCHED_FIFO priority 10 with reset-on-fork, I/O class real-time level 2 (both skipped
 *          with a note where the kernel refuses them before the checkpoint)
 *   rr:    SCHED_RR priority 5, over nice 3 (kept for when it goes back to a fair policy)
 *   other: SCHED_OTHER nice -5, I/O priority left to follow the nice value
 *   dl:    SCHED_DEADLINE runtime 1 ms, deadline 10 ms, period 20 ms (skipped with a note where
 *          the kernel refuses it)
 * and, process-wide: oom_score_adj 345, child subreaper, THP disabled, membarrier registrations
 * (private expedited, global expedited), not dumpable, loginuid 4242 where it can be set,
 * memory-deny-write-execute (a writable and executable mapping is then refused).
 * After the restore every thread checks its own values and main checks the process's. */
#include "zaptest.h"
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>

struct attr {
    unsigned size, policy;
    unsigned long long flags;
    int nice;
    unsigned prio;
    unsigned long long runtime, deadline, period;
    unsigned util_min, util_max;
};

#define IOPRIO(class, data) (((class) << 13) | (data))
#define RESET_ON_FORK 1ull

static int ncpu;

#define DL_RUNTIME 1000000ull
#define DL_DEADLINE 10000000ull
#define DL_PERIOD 20000000ull

static int setattr(int policy, int prio, int nice, unsigned long long flags) {
    struct attr a = {sizeof a, policy, flags, nice, prio, 0, 0, 0, 0, 0};
    if (policy == SCHED_DEADLINE) {
        a.runtime = DL_RUNTIME;
        a.deadline = DL_DEADLINE;
        a.period = DL_PERIOD;
    }
    return syscall(SYS_sched_setattr, 0, &a, 0);
}

static struct attr getattr(void) {
    struct attr a;
    memset(&a, 0, sizeof a);
    if (syscall(SYS_sched_getattr, 0, &a, sizeof a, 0) != 0) { say("FAIL sched_getattr: %s", strerror(errno)); _exit(1); }
    return a;
}

static int ioprio(void) { return syscall(SYS_ioprio_get, 1, 0); }
static int pdeathsig(void) {
    int s = -1;
    prctl(PR_GET_PDEATHSIG, &s);
    return s;
}

struct spec {
    const char *name;
    int policy, prio, nice;
    unsigned long long flags;
    int io;    /* -1: left alone (it follows the nice value and policy, as before the checkpoint) */
    int slack; /* 0: left alone */
    int death;
    int cpu;   /* -1: all CPUs */
    int skip;  /* set: the kernel refused this setup before the checkpoint */
    int io_seen;
    cpu_set_t aff;
    int ready, ok;
};

static struct spec specs[] = {
    {"main", SCHED_BATCH, 0, 5, 0, IOPRIO(2, 6), 123456, SIGUSR2, -1},
    {"idle", SCHED_IDLE, 0, 0, 0, IOPRIO(3, 0), 777000, SIGUSR1, -2},
    {"fifo", SCHED_FIFO, 10, 0, RESET_ON_FORK, IOPRIO(1, 2), 0, 0, -1},
    {"rr", SCHED_RR, 5, 3, 0, -1, 0, 0, -1},
    {"other", SCHED_OTHER, 0, -5, 0, -1, 0, 0, -1},
    {"dl", SCHED_DEADLINE, 0, 0, 0, -1, 0, 0, -1},
};
#define NSPEC (sizeof specs / sizeof specs[0])

static void setup(struct spec *s) {
    if (s->cpu != -1) {
        CPU_ZERO(&s->aff);
        CPU_SET(ncpu - 1, &s->aff);
        CHECK(sched_setaffinity(0, sizeof s->aff, &s->aff) == 0, "%s affinity", s->name);
    }
    sched_getaffinity(0, sizeof s->aff, &s->aff);
    if (s->policy == SCHED_FIFO || s->policy == SCHED_RR) CHECK(setattr(SCHED_OTHER, 0, s->nice, 0) == 0, "%s nice", s->name);
    if (setattr(s->policy, s->prio, s->nice, s->flags) != 0) {
        CHECK((errno == EPERM || errno == EBUSY) && s->policy != SCHED_OTHER && s->policy != SCHED_BATCH && s->policy != SCHED_IDLE,
              "%s sched_setattr: %s", s->name, strerror(errno));
        say("note: %s: the kernel refuses policy %d here (%s): not checked", s->name, s->policy, strerror(errno));
        s->skip = 1;
    }
    if (s->io >= 0 && syscall(SYS_ioprio_set, 1, 0, s->io) != 0) {
        say("note: %s: I/O priority %x refused (%s): not checked", s->name, s->io, strerror(errno));
        s->io = -2;
    }
    if (s->slack) CHECK(prctl(PR_SET_TIMERSLACK, s->slack) == 0, "%s timer slack", s->name);
    s->io_seen = ioprio();
    if (s->death) CHECK(prctl(PR_SET_PDEATHSIG, s->death) == 0, "%s pdeathsig", s->name);
}

static void check(struct spec *s, const char *when) {
    struct attr a = getattr();
    if (!s->skip) {
        CHECK(a.policy == (unsigned)s->policy, "%s %s: policy %u, want %d", when, s->name, a.policy, s->policy);
        CHECK(a.prio == (unsigned)s->prio, "%s %s: priority %u, want %d", when, s->name, a.prio, s->prio);
        CHECK((a.flags & RESET_ON_FORK) == s->flags, "%s %s: flags %llx", when, s->name, a.flags);
        if (s->policy == SCHED_DEADLINE)
            CHECK(a.runtime == DL_RUNTIME && a.deadline == DL_DEADLINE && a.period == DL_PERIOD, "%s %s: deadline parameters %llu %llu %llu",
                  when, s->name, a.runtime, a.deadline, a.period);
    }
    errno = 0;
    int nice = getpriority(PRIO_PROCESS, 0); /* sched_getattr shows it only under a fair policy */
    CHECK(errno == 0 && nice == s->nice, "%s %s: nice %d, want %d", when, s->name, nice, s->nice);
    if (s->io >= 0 && !s->skip) CHECK(ioprio() == s->io, "%s %s: ioprio %x, want %x", when, s->name, ioprio(), s->io);
    if (s->io == -1) CHECK(ioprio() == s->io_seen, "%s %s: ioprio %x, want %x (derived)", when, s->name, ioprio(), s->io_seen);
    if (s->slack) CHECK(prctl(PR_GET_TIMERSLACK) == s->slack, "%s %s: timer slack %d", when, s->name, prctl(PR_GET_TIMERSLACK));
    CHECK(pdeathsig() == s->death, "%s %s: pdeathsig %d, want %d", when, s->name, pdeathsig(), s->death);
    cpu_set_t now;
    sched_getaffinity(0, sizeof now, &now);
    CHECK(CPU_EQUAL(&now, &s->aff), "%s %s: affinity (%d CPUs, want %d)", when, s->name, CPU_COUNT(&now), CPU_COUNT(&s->aff));
}

static const char *go;

static void *thread(void *arg) {
    struct spec *s = arg;
    char name[16];
    snprintf(name, sizeof name, "t-%s", s->name);
    prctl(PR_SET_NAME, name);
    setup(s);
    check(s, "before");
    __atomic_store_n(&s->ready, 1, __ATOMIC_SEQ_CST);
    wait_go(go);
    check(s, "after");
    __atomic_store_n(&s->ok, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

static long read_num(const char *path) {
    char buf[64] = {0};
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    int n = read(fd, buf, sizeof buf - 1);
    close(fd);
    return n > 0 ? strtol(buf, NULL, 10) : -1;
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    go = argv[2];
    ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    /* Process-wide. */
    int fd = open("/proc/self/oom_score_adj", O_WRONLY);
    CHECK(fd >= 0 && write(fd, "345", 3) == 3, "oom_score_adj");
    close(fd);
    CHECK(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0, "subreaper");
    CHECK(prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0, "THP disable");
    long regs = 0;
    if (syscall(SYS_membarrier, 16 /* REGISTER_PRIVATE_EXPEDITED */, 0, 0) == 0) regs |= 16;
    if (syscall(SYS_membarrier, 4 /* REGISTER_GLOBAL_EXPEDITED */, 0, 0) == 0) regs |= 4;
    long have = syscall(SYS_membarrier, 512 /* GET_REGISTRATIONS */, 0, 0);
    if (have < 0) say("note: no MEMBARRIER_CMD_GET_REGISTRATIONS: registrations not checked");
    int loginuid = 0;
    fd = open("/proc/self/loginuid", O_WRONLY);
    if (fd >= 0 && write(fd, "4242", 4) == 4) loginuid = 1;
    else say("note: loginuid cannot be set here (%s): not checked", strerror(errno));
    if (fd >= 0) close(fd);
    int ssb = prctl(PR_GET_SPECULATION_CTRL, PR_SPEC_STORE_BYPASS, 0, 0, 0);
    int ssb_set = 0;
    if (ssb >= 0 && (ssb & PR_SPEC_PRCTL) && prctl(PR_SET_SPECULATION_CTRL, PR_SPEC_STORE_BYPASS, PR_SPEC_DISABLE, 0, 0) == 0) ssb_set = 1;
    else say("note: store bypass control not settable per task here: not checked");
    int mce = prctl(PR_MCE_KILL, PR_MCE_KILL_SET, PR_MCE_KILL_EARLY, 0, 0) == 0;
    /* Threads, then main's own. */
    pthread_t t[NSPEC];
    for (unsigned i = 1; i < NSPEC; i++) {
        CHECK(pthread_create(&t[i], NULL, thread, &specs[i]) == 0, "pthread_create");
        while (!__atomic_load_n(&specs[i].ready, __ATOMIC_SEQ_CST)) usleep(1000);
    }
    setup(&specs[0]);
    check(&specs[0], "before");
    CHECK(prctl(PR_SET_DUMPABLE, 0) == 0, "dumpable");
    int mdwe = prctl(65 /* PR_SET_MDWE */, 1 /* PR_MDWE_REFUSE_EXEC_GAIN */, 0, 0, 0) == 0;
    if (!mdwe) say("note: no memory-deny-write-execute here (%s): not checked", strerror(errno));
    say("ready");
    wait_go(go);
    check(&specs[0], "after");
    CHECK(read_num("/proc/self/oom_score_adj") == 345, "oom_score_adj %ld", read_num("/proc/self/oom_score_adj"));
    int sub = 0;
    CHECK(prctl(PR_GET_CHILD_SUBREAPER, &sub) == 0 && sub == 1, "child subreaper");
    CHECK(prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1, "THP disable %d", prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0));
    if (have >= 0) CHECK(syscall(SYS_membarrier, 512, 0, 0) == have, "membarrier registrations %ld, want %ld", syscall(SYS_membarrier, 512, 0, 0), have);
    CHECK(syscall(SYS_membarrier, 8 /* PRIVATE_EXPEDITED */, 0, 0) == (regs & 16 ? 0 : -1), "private expedited membarrier");
    if (loginuid) CHECK(read_num("/proc/self/loginuid") == 4242, "loginuid %ld", read_num("/proc/self/loginuid"));
    if (ssb_set) CHECK(prctl(PR_GET_SPECULATION_CTRL, PR_SPEC_STORE_BYPASS, 0, 0, 0) == (PR_SPEC_PRCTL | PR_SPEC_DISABLE), "store bypass %d",
                       prctl(PR_GET_SPECULATION_CTRL, PR_SPEC_STORE_BYPASS, 0, 0, 0));
    if (mce) CHECK(prctl(PR_MCE_KILL_GET, 0, 0, 0, 0) == PR_MCE_KILL_EARLY, "MCE kill policy");
    CHECK(prctl(PR_GET_DUMPABLE) == 0, "dumpable %d", prctl(PR_GET_DUMPABLE));
    if (mdwe) {
        CHECK(prctl(66 /* PR_GET_MDWE */, 0, 0, 0, 0) == 1, "memory-deny-write-execute %d", prctl(66, 0, 0, 0, 0));
        void *wx = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        CHECK(wx == MAP_FAILED, "a writable and executable mapping is refused under MDWE");
    }
    for (unsigned i = 1; i < NSPEC; i++) {
        pthread_join(t[i], NULL);
        CHECK(specs[i].ok, "thread %s", specs[i].name);
    }
    say("ok");
    return 0;
}
