/* The credential states of setuid programs and of root without capabilities:
 *   main:   real uid nobody, effective and saved uid 0 (a setuid-root program run by nobody),
 *           real gid nobody, effective gid 0; full capabilities follow the effective uid 0
 *   thread: the same program after seteuid(nobody) (raw, this thread only): no effective
 *           capabilities, permitted kept by the saved uid 0; after the restore it takes them back
 *           with seteuid(0), as such a program does
 *   child:  uid 0 that dropped every capability, bounding set included (chown then fails)
 * Each checks its state after the restore and the child says "child ok". */
#include "zaptest.h"
#include <errno.h>
#include <linux/capability.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

static unsigned long long caps(int which) { /* 0 effective, 1 permitted, 2 inheritable */
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2];
    if (syscall(SYS_capget, &h, d) != 0) return ~0ull;
    unsigned lo = which == 0 ? d[0].effective : which == 1 ? d[0].permitted : d[0].inheritable;
    unsigned hi = which == 0 ? d[1].effective : which == 1 ? d[1].permitted : d[1].inheritable;
    return lo | (unsigned long long)hi << 32;
}

static void uids(uid_t r, uid_t e, uid_t s, const char *who) {
    uid_t a, b, c;
    CHECK(getresuid(&a, &b, &c) == 0 && a == r && b == e && c == s, "%s: uids %d %d %d, want %d %d %d", who, a, b, c, r, e, s);
}

static const char *go, *file;
static volatile int ready, thread_ok;
static unsigned long long full;

static void *seteuid_thread(void *arg) {
    (void)arg;
    if (syscall(SYS_setresuid, -1, 65534, -1) != 0) _exit(7);
    ready = 1;
    wait_go(go);
    uids(65534, 65534, 0, "thread");
    CHECK(caps(0) == 0 && caps(1) == full, "thread: effective %llx permitted %llx, want 0 and %llx", caps(0), caps(1), full);
    CHECK(syscall(SYS_setresuid, -1, 0, -1) == 0, "thread: seteuid(0) back: %s", strerror(errno));
    CHECK(caps(0) == full, "thread: effective %llx after seteuid(0)", caps(0));
    thread_ok = 1;
    return NULL;
}

static void child(void) {
    for (int c = 0; c <= 40; c++) prctl(PR_CAPBSET_DROP, c);
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2] = {{0, 0, 0}, {0, 0, 0}};
    CHECK(syscall(SYS_capset, &h, d) == 0, "child capset");
    CHECK(chown(file, 1, 1) == -1 && errno == EPERM, "child: chown without CAP_CHOWN");
    say("child ready");
    wait_go(go);
    uids(0, 0, 0, "child");
    CHECK(caps(0) == 0 && caps(1) == 0 && caps(2) == 0, "child: capabilities came back");
    CHECK(prctl(PR_CAPBSET_READ, CAP_CHOWN) == 0 && prctl(PR_CAPBSET_READ, CAP_SYS_ADMIN) == 0, "child: bounding set came back");
    errno = 0;
    CHECK(chown(file, 1, 1) == -1 && errno == EPERM, "child: chown as uid 0 without capabilities: %s", strerror(errno));
    say("child ok");
    _exit(0);
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    go = argv[2];
    file = argv[3];
    full = caps(1);
    pid_t kid = fork();
    CHECK(kid >= 0, "fork");
    if (kid == 0) child();
    CHECK(setresgid(65534, 0, 0) == 0 && setresuid(65534, 0, 0) == 0, "become a setuid program");
    CHECK(caps(0) == full && caps(1) == full, "still privileged by the effective uid 0");
    pthread_t t;
    CHECK(pthread_create(&t, NULL, seteuid_thread, NULL) == 0, "thread");
    while (!ready) usleep(1000);
    say("ready");
    wait_go(go);
    uids(65534, 0, 0, "main");
    gid_t a, b, c;
    CHECK(getresgid(&a, &b, &c) == 0 && a == 65534 && b == 0 && c == 0, "main gids");
    CHECK(caps(0) == full && caps(1) == full, "main: capabilities %llx %llx", caps(0), caps(1));
    pthread_join(t, NULL);
    CHECK(thread_ok, "thread checks");
    int st;
    CHECK(waitpid(kid, &st, 0) == kid && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child");
    say("ok");
    return 0;
}
