/* A process that drops privileges as a server would: started as root, it sets nonstandard
 * rlimits, drops capabilities from its bounding set, becomes nobody (uid/gid 65534, groups
 * 65534 and 100) keeping a few capabilities (permitted NET_BIND_SERVICE, NET_RAW, KILL;
 * effective NET_BIND_SERVICE; inheritable NET_BIND_SERVICE, KILL; ambient NET_BIND_SERVICE),
 * locks securebits (NOROOT), sets no_new_privs and a seccomp filter (getcpu -> errno 77); it is
 * not dumpable after the uid change. A second thread, started after that, empties its own
 * effective set and adds a filter of its own (getcpu -> errno 78). After the restore each
 * thread checks its credentials, capabilities, securebits, seccomp, limits, and that binding a
 * port below 1024 works where NET_BIND_SERVICE is effective and fails where it is not.
 *   argv[3]: port for the main thread's bind test (the second thread uses argv[3] + 1). */
#include "zaptest.h"
#include <errno.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/fsuid.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>

#define BIT(c) (1ull << (c))
#define PRM (BIT(CAP_NET_BIND_SERVICE) | BIT(CAP_NET_RAW) | BIT(CAP_KILL))
#define INH (BIT(CAP_NET_BIND_SERVICE) | BIT(CAP_KILL))
#define EFF BIT(CAP_NET_BIND_SERVICE)
#define SECBITS ((1 << 0) | (1 << 1)) /* SECBIT_NOROOT | SECBIT_NOROOT_LOCKED */

static int port;

static int capset3(unsigned long long eff, unsigned long long prm, unsigned long long inh) {
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2] = {{(unsigned)eff, (unsigned)prm, (unsigned)inh},
                                          {(unsigned)(eff >> 32), (unsigned)(prm >> 32), (unsigned)(inh >> 32)}};
    return syscall(SYS_capset, &h, d);
}

static void capget3(unsigned long long *eff, unsigned long long *prm, unsigned long long *inh) {
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2];
    if (syscall(SYS_capget, &h, d) != 0) { say("FAIL capget"); _exit(1); }
    *eff = d[0].effective | (unsigned long long)d[1].effective << 32;
    *prm = d[0].permitted | (unsigned long long)d[1].permitted << 32;
    *inh = d[0].inheritable | (unsigned long long)d[1].inheritable << 32;
}

static void getcpu_errno(int err) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getcpu, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | err),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog p = {sizeof f / sizeof f[0], f};
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &p) != 0) { say("FAIL seccomp filter: %s", strerror(errno)); _exit(1); }
}

/* Binding a port below 1024 as nobody: works only with NET_BIND_SERVICE effective. */
static int bind_low(int p) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(p)};
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    int r = bind(s, (struct sockaddr *)&a, sizeof a) == 0 ? 0 : errno;
    close(s);
    return r;
}

static int status_num(const char *key) {
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/thread-self/status");
    int fd = open(path, O_RDONLY);
    int n = read(fd, buf, sizeof buf - 1);
    close(fd);
    buf[n > 0 ? n : 0] = 0;
    char *p = strstr(buf, key);
    return p ? atoi(p + strlen(key)) : -1;
}

static void check_common(const char *who) {
    uid_t r, e, s;
    gid_t gr, ge, gs;
    CHECK(getresuid(&r, &e, &s) == 0 && r == 65534 && e == 65534 && s == 65534, "%s uids %d %d %d", who, r, e, s);
    CHECK(getresgid(&gr, &ge, &gs) == 0 && gr == 65534 && ge == 65534 && gs == 65534, "%s gids", who);
    CHECK(setfsuid(-1) == 65534 && setfsgid(-1) == 65534, "%s fsuid/fsgid", who);
    gid_t groups[8];
    int n = getgroups(8, groups);
    CHECK(n == 2 && ((groups[0] == 65534 && groups[1] == 100) || (groups[0] == 100 && groups[1] == 65534)), "%s groups (%d)", who, n);
    CHECK(prctl(PR_CAPBSET_READ, CAP_SYS_MODULE) == 0 && prctl(PR_CAPBSET_READ, CAP_MKNOD) == 0 && prctl(PR_CAPBSET_READ, CAP_SYS_BOOT) == 0,
          "%s bounding set: dropped capabilities came back", who);
    CHECK(prctl(PR_CAPBSET_READ, CAP_CHOWN) == 1 && prctl(PR_CAPBSET_READ, CAP_NET_RAW) == 1, "%s bounding set lost capabilities", who);
    CHECK(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, CAP_NET_BIND_SERVICE, 0, 0) == 1, "%s ambient NET_BIND_SERVICE", who);
    CHECK(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, CAP_KILL, 0, 0) == 0, "%s ambient KILL must not be set", who);
    CHECK(prctl(PR_GET_SECUREBITS) == SECBITS, "%s securebits %d", who, prctl(PR_GET_SECUREBITS));
    CHECK(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1, "%s no_new_privs", who);
    CHECK(status_num("Seccomp:\t") == 2, "%s seccomp mode", who);
    struct rlimit rl;
    CHECK(getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur == 200 && rl.rlim_max == 300, "%s RLIMIT_NOFILE %lu/%lu", who,
          (unsigned long)rl.rlim_cur, (unsigned long)rl.rlim_max);
    CHECK(getrlimit(RLIMIT_CORE, &rl) == 0 && rl.rlim_cur == 0 && rl.rlim_max == 4096, "%s RLIMIT_CORE", who);
    CHECK(getrlimit(RLIMIT_MSGQUEUE, &rl) == 0 && rl.rlim_cur == 4000 && rl.rlim_max == 8000, "%s RLIMIT_MSGQUEUE", who);
    CHECK(prctl(PR_GET_DUMPABLE) == 0, "%s dumpable %d", who, prctl(PR_GET_DUMPABLE));
}

static volatile int second_ok;

static void *second(void *arg) {
    const char *go = arg;
    /* Its own effective set (raw capset acts on this thread only) and its own filter. */
    if (capset3(0, PRM, INH) != 0) { say("FAIL thread capset: %s", strerror(errno)); _exit(1); }
    getcpu_errno(78);
    second_ok = 1;
    wait_go(go);
    check_common("thread");
    unsigned long long eff, prm, inh;
    capget3(&eff, &prm, &inh);
    CHECK(eff == 0 && prm == PRM && inh == INH, "thread caps eff %llx prm %llx inh %llx", eff, prm, inh);
    CHECK(status_num("Seccomp_filters:\t") == 2, "thread has 2 filters (%d)", status_num("Seccomp_filters:\t"));
    errno = 0;
    CHECK(syscall(SYS_getcpu, NULL, NULL, NULL) == -1 && errno == 78, "thread: its own filter decides getcpu (errno %d)", errno);
    int b = bind_low(port + 1);
    CHECK(b == EACCES, "thread without NET_BIND_SERVICE effective binds port %d: %s", port + 1, strerror(b));
    second_ok = 2;
    return NULL;
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    port = argc > 3 ? atoi(argv[3]) : 81;
    struct rlimit nofile = {200, 300}, core = {0, 4096}, mq = {4000, 8000};
    CHECK(setrlimit(RLIMIT_NOFILE, &nofile) == 0 && setrlimit(RLIMIT_CORE, &core) == 0 && setrlimit(RLIMIT_MSGQUEUE, &mq) == 0, "setrlimit");
    CHECK(prctl(PR_CAPBSET_DROP, CAP_SYS_MODULE) == 0 && prctl(PR_CAPBSET_DROP, CAP_MKNOD) == 0 && prctl(PR_CAPBSET_DROP, CAP_SYS_BOOT) == 0,
          "drop bounding");
    CHECK(prctl(PR_SET_KEEPCAPS, 1) == 0, "keepcaps");
    gid_t groups[] = {65534, 100};
    CHECK(setgroups(2, groups) == 0 && setresgid(65534, 65534, 65534) == 0 && setresuid(65534, 65534, 65534) == 0, "become nobody");
    CHECK(capset3(BIT(CAP_SETPCAP), PRM | BIT(CAP_SETPCAP), INH) == 0, "capset 1: %s", strerror(errno));
    CHECK(prctl(PR_SET_SECUREBITS, SECBITS) == 0, "securebits: %s", strerror(errno));
    CHECK(capset3(EFF, PRM, INH) == 0, "capset 2: %s", strerror(errno));
    CHECK(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0) == 0, "ambient: %s", strerror(errno));
    CHECK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0, "no_new_privs");
    getcpu_errno(77);
    CHECK(prctl(PR_GET_DUMPABLE) == 0, "not dumpable after the uid change (fs.suid_dumpable 0)");
    pthread_t t;
    CHECK(pthread_create(&t, NULL, second, argv[2]) == 0, "pthread_create");
    while (!second_ok) usleep(1000);
    check_common("before");
    say("ready");
    wait_go(argv[2]);
    check_common("main");
    unsigned long long eff, prm, inh;
    capget3(&eff, &prm, &inh);
    CHECK(eff == EFF && prm == PRM && inh == INH, "main caps eff %llx prm %llx inh %llx", eff, prm, inh);
    CHECK(status_num("Seccomp_filters:\t") == 1, "main has 1 filter (%d)", status_num("Seccomp_filters:\t"));
    errno = 0;
    CHECK(syscall(SYS_getcpu, NULL, NULL, NULL) == -1 && errno == 77, "main: the filter decides getcpu (errno %d)", errno);
    int b = bind_low(port);
    CHECK(b == 0, "main with NET_BIND_SERVICE binds port %d: %s", port, strerror(b));
    pthread_join(t, NULL);
    CHECK(second_ok == 2, "thread checks");
    say("ok");
    return 0;
}
