/* Seccomp filters, their order, and strict mode, in two processes:
 *   parent: main installs three filters, in order: A (getppid -> errno 11), B (getppid -> errno
 *           22), C (kills the process on any of the syscalls a checkpoint or restore injects:
 *           mmap, munmap, brk, prctl, rt_sigaction, getitimer, prlimit64, sched_getattr,
 *           capget, capset, setresuid, clone3, arch_prctl, membarrier...), installed with TSYNC
 *           in a thread started before it too, which then adds D (getppid -> errno 33). Among ERRNO results the filter
 *           installed last wins: main sees 22, the thread 33; a restore that reverses the order
 *           gives 11. Nothing injected may be judged by C, or the process dies.
 *   child:  a thread in strict mode (only read, write, exit, sigreturn), blocked in read() on a
 *           pipe at the checkpoint; after the restore it reads, answers and exits.
 * Each process checks its own after the restore; the child says "child ok". */
#include "zaptest.h"
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

static int install_flags(struct sock_filter *f, unsigned short n, unsigned flags) {
    struct sock_fprog p = {n, f};
    return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &p);
}

static int install(struct sock_filter *f, unsigned short n) { return install_flags(f, n, 0); }

static int getppid_errno(int err) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | err),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    return install(f, sizeof f / sizeof f[0]);
}

static int kill_injected(void) {
    static const int nrs[] = {SYS_mmap, SYS_munmap, SYS_mprotect, SYS_brk, SYS_prctl, SYS_rt_sigaction, SYS_getitimer,
                              SYS_setitimer, SYS_timer_gettime, SYS_prlimit64, SYS_sched_getattr, SYS_sched_setattr,
                              SYS_sched_getaffinity, SYS_ioprio_get, SYS_capget, SYS_capset, SYS_setresuid, SYS_setgroups,
                              SYS_clone3, SYS_arch_prctl, SYS_membarrier, SYS_sigaltstack, SYS_get_robust_list,
                              SYS_set_robust_list, SYS_set_tid_address, SYS_rseq, SYS_userfaultfd, SYS_close_range};
    enum { N = sizeof nrs / sizeof nrs[0] };
    struct sock_filter f[N + 3];
    f[0] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
    for (int i = 0; i < N; i++) f[1 + i] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nrs[i], N - i, 0);
    f[N + 1] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    f[N + 2] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
    /* every thread at once: the thread started before shares it (and A and B) */
    return install_flags(f, N + 3, SECCOMP_FILTER_FLAG_TSYNC);
}

static int count(const char *task, const char *key) {
    char path[96], buf[4096];
    snprintf(path, sizeof path, "/proc/self/task/%s/status", task);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    int n = read(fd, buf, sizeof buf - 1);
    close(fd);
    buf[n > 0 ? n : 0] = 0;
    char *p = strstr(buf, key);
    return p ? atoi(p + strlen(key)) : -1;
}

static int errno_of_getppid(void) {
    errno = 0;
    long r = syscall(SYS_getppid);
    return r == -1 ? errno : 0;
}

static const char *go;
static volatile int thread_ready, thread_ok;
static char thread_tid[32];

static volatile int thread_go;

static void *filtered(void *arg) {
    (void)arg;
    snprintf(thread_tid, sizeof thread_tid, "%ld", syscall(SYS_gettid));
    thread_ready = 1;
    while (!thread_go) usleep(1000);
    if (getppid_errno(33) != 0) { say("FAIL thread filter: %s", strerror(errno)); _exit(1); }
    thread_ready = 2;
    wait_go(go);
    CHECK(count(thread_tid, "Seccomp_filters:\t") == 4, "thread: %d filters", count(thread_tid, "Seccomp_filters:\t"));
    CHECK(errno_of_getppid() == 33, "thread: getppid errno %d, want 33 (its own filter, installed last)", errno_of_getppid());
    thread_ok = 1;
    return NULL;
}

static int to_strict[2], from_strict[2];
static volatile int strict_tid;

static void *strict(void *arg) {
    (void)arg;
    strict_tid = syscall(SYS_gettid);
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT) != 0) _exit(5);
    char c;
    if (read(to_strict[0], &c, 1) != 1) syscall(SYS_exit, 1);
    c++;
    write(from_strict[1], &c, 1);
    syscall(SYS_exit, 0);
    return NULL;
}

static void child(void) {
    CHECK(pipe(to_strict) == 0 && pipe(from_strict) == 0, "pipes");
    pthread_t t;
    CHECK(pthread_create(&t, NULL, strict, NULL) == 0, "strict thread");
    char tid[32], own[32];
    snprintf(own, sizeof own, "%d", getpid());
    for (int i = 0; i < 5000 && !strict_tid; i++) usleep(1000);
    snprintf(tid, sizeof tid, "%d", strict_tid);
    for (int i = 0; i < 5000 && count(tid, "Seccomp:\t") != 1; i++) usleep(1000);
    CHECK(count(tid, "Seccomp:\t") == 1, "the strict thread did not enter strict mode");
    CHECK(count(own, "Seccomp:\t") == 0, "child main: no seccomp");
    say("child ready");
    wait_go(go);
    CHECK(count(tid, "Seccomp:\t") == 1, "strict thread: mode %d", count(tid, "Seccomp:\t"));
    CHECK(count(own, "Seccomp:\t") == 0, "child main: seccomp mode %d", count(own, "Seccomp:\t"));
    char c = 'a';
    CHECK(write(to_strict[1], &c, 1) == 1, "write to the strict thread");
    CHECK(read(from_strict[0], &c, 1) == 1 && c == 'b', "the strict thread answers");
    pthread_join(t, NULL);
    say("child ok");
    _exit(0);
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    go = argv[2];
    pid_t kid = fork();
    CHECK(kid >= 0, "fork");
    if (kid == 0) child();
    CHECK(getppid_errno(11) == 0 && getppid_errno(22) == 0, "filters A and B: %s", strerror(errno));
    pthread_t t;
    CHECK(pthread_create(&t, NULL, filtered, NULL) == 0, "thread");
    while (!thread_ready) usleep(1000);
    CHECK(kill_injected() == 0, "filter C: %s", strerror(errno));
    thread_go = 1;
    while (thread_ready != 2) usleep(1000);
    CHECK(errno_of_getppid() == 22, "main: getppid errno %d, want 22", errno_of_getppid());
    say("ready");
    wait_go(go);
    char own[32];
    snprintf(own, sizeof own, "%d", getpid());
    CHECK(count(own, "Seccomp:\t") == 2 && count(own, "Seccomp_filters:\t") == 3, "main: mode %d, %d filters", count(own, "Seccomp:\t"),
          count(own, "Seccomp_filters:\t"));
    CHECK(errno_of_getppid() == 22, "main: getppid errno %d, want 22 (B, installed after A)", errno_of_getppid());
    pthread_join(t, NULL);
    CHECK(thread_ok, "thread checks");
    int st;
    CHECK(waitpid(kid, &st, 0) == kid && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child exit status %x", st);
    say("ok");
    return 0;
}
