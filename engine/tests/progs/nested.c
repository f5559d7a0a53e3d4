/* Namespaces processes of a pod make for themselves, checked after a restore.
 * argv: out go W (an empty host directory). Pairs of processes share each namespace:
 *   U1/U2  a UTS namespace with their own hostname and domain name;
 *   N1/N2  a network namespace with lo up and 10.123.0.1/32 on it; N1 listens there, N2
 *          connects after the restore;
 *   T1/T2  a time namespace (monotonic +1 day, boottime +2 days): T1 made it for its children,
 *          T2 is in it;
 *   I1/I2  an IPC namespace with a System V segment both have attached;
 *   M1/M2  a mount namespace without the pod's tmpfs W/pm and with a tmpfs W/nm of its own;
 *   C1/C2  a cgroup namespace rooted at the pod's cgroup /cgns.
 * The pod's own hostname and domain name are changed too. Every process checks its namespace
 * and its partner's after the restore; the main process checks the pod's. */
#include "zaptest.h"
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/ipc.h>
#include <sys/mount.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

static char W[400];
static const char *go;

static void must(int ok, const char *what) {
    if (!ok) {
        say("FAIL setup %s: %s", what, strerror(errno));
        _exit(1);
    }
}

static int same_ns(int a, int b, const char *kind) {
    char pa[64], pb[64], la[64] = {0}, lb[64] = {0};
    snprintf(pa, sizeof pa, "/proc/%d/ns/%s", a, kind);
    snprintf(pb, sizeof pb, "/proc/%d/ns/%s", b, kind);
    if (readlink(pa, la, sizeof la - 1) < 0 || readlink(pb, lb, sizeof lb - 1) < 0) return -1;
    return strcmp(la, lb) == 0;
}

static int has(const char *path, const char *want) {
    char buf[128] = {0};
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    return n > 0 && strcmp(buf, want) == 0;
}

static void put(const char *path, const char *s) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    must(fd >= 0 && write(fd, s, strlen(s)) == (ssize_t)strlen(s), path);
    close(fd);
}

static double clock_diff(clockid_t a, clockid_t b) {
    struct timespec x, y;
    clock_gettime(a, &x);
    clock_gettime(b, &y);
    return (x.tv_sec - y.tv_sec) + (x.tv_nsec - y.tv_nsec) / 1e9;
}

/* Forks; the child runs f(arg) after the go file appears and exits with its result. */
static int spawn(int (*f)(int), int arg) {
    int pid = fork();
    if (pid == 0) {
        wait_go(go);
        int r = f(arg);
        sleep(2); /* stays for its partner's checks */
        _exit(r);
    }
    return pid;
}

static int uts_check(int partner) {
    char h[64] = {0}, d[64] = {0};
    gethostname(h, sizeof h);
    getdomainname(d, sizeof d);
    CHECK(strcmp(h, "inner-uts") == 0 && strcmp(d, "inner-dom") == 0, "uts names %s %s", h, d);
    if (partner) CHECK(same_ns(getpid(), partner, "uts") == 1, "uts not shared");
    CHECK(same_ns(getpid(), 1, "uts") == 0, "uts is the pod's");
    return 0;
}

static int lo_up(void) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct ifreq r;
    memset(&r, 0, sizeof r);
    strcpy(r.ifr_name, "lo");
    int ok = ioctl(s, SIOCGIFFLAGS, &r) == 0 && (r.ifr_flags & IFF_UP);
    close(s);
    return ok;
}

static int listen_fd = -1;
static int net_server(int partner) {
    CHECK(lo_up(), "lo down in the nested network namespace");
    CHECK(same_ns(getpid(), partner, "net") == 1, "net not shared");
    CHECK(same_ns(getpid(), 1, "net") == 0, "net is the pod's");
    int c = accept(listen_fd, NULL, NULL);
    CHECK(c >= 0, "accept: %s", strerror(errno));
    char buf[8] = {0};
    CHECK(read(c, buf, 4) == 4 && strcmp(buf, "ping") == 0, "server got %s", buf);
    CHECK(write(c, "pong", 4) == 4, "reply");
    close(c);
    return 0;
}

static int net_client(int unused) {
    (void)unused;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(7777)};
    inet_pton(AF_INET, "10.123.0.1", &a.sin_addr);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(connect(s, (struct sockaddr *)&a, sizeof a) == 0, "connect 10.123.0.1:7777: %s", strerror(errno));
    char buf[8] = {0};
    CHECK(write(s, "ping", 4) == 4 && read(s, buf, 4) == 4 && strcmp(buf, "pong") == 0, "client got %s", buf);
    return 0;
}

static int time_pipe[2];
static int time_parent(int child) {
    /* T1 itself is in the pod's time namespace; its children go to the new one. */
    CHECK(same_ns(getpid(), 1, "time") == 1, "T1 left the pod's time namespace");
    char a[64], l1[64] = {0}, l2[64] = {0};
    snprintf(a, sizeof a, "/proc/%d/ns/time", child);
    CHECK(readlink("/proc/self/ns/time_for_children", l1, sizeof l1 - 1) > 0 && readlink(a, l2, sizeof l2 - 1) > 0 && strcmp(l1, l2) == 0,
          "T2 is not in T1's children's time namespace (%s, %s)", l1, l2);
    return 0;
}

static int time_child(int unused) {
    (void)unused;
    double d[2] = {clock_diff(CLOCK_REALTIME, CLOCK_MONOTONIC), clock_diff(CLOCK_REALTIME, CLOCK_BOOTTIME)};
    CHECK(write(time_pipe[1], d, sizeof d) == sizeof d, "time pipe");
    return 0;
}

static char *shm;
static int ipc_check(int partner) {
    CHECK(shm && strcmp(shm, "nested-ipc") == 0, "segment content");
    CHECK(shmget(0x5a9, 0, 0) >= 0, "segment key gone");
    if (partner) CHECK(same_ns(getpid(), partner, "ipc") == 1, "ipc not shared");
    return 0;
}

static int mnt_check(int partner) {
    char p[600];
    snprintf(p, sizeof p, "%s/nm/inner", W);
    CHECK(has(p, "inner-mnt"), "nested tmpfs file");
    snprintf(p, sizeof p, "%s/pm/podfile", W);
    CHECK(access(p, F_OK) != 0, "the pod's tmpfs is mounted in the nested namespace");
    if (partner) {
        char a[64], b[64], la[64] = {0}, lb[64] = {0};
        snprintf(a, sizeof a, "/proc/%d/ns/mnt", getpid());
        snprintf(b, sizeof b, "/proc/%d/ns/mnt", partner);
        int ra = readlink(a, la, sizeof la - 1), rb = readlink(b, lb, sizeof lb - 1);
        CHECK(ra > 0 && rb > 0 && strcmp(la, lb) == 0, "mnt not shared: %s %s (%s)", la, lb, strerror(errno));
    }
    return 0;
}

/* The cgroup v2 line ("0::PATH") of a /proc/PID/cgroup file, without "0::". */
static void text_of(const char *path, char *buf, size_t len) {
    char all[1024] = {0};
    memset(buf, 0, len);
    int fd = open(path, O_RDONLY);
    if (fd >= 0 && read(fd, all, sizeof all - 1) < 0) all[0] = 0;
    if (fd >= 0) close(fd);
    char *l = strstr(all, "0::");
    if (l && (l == all || l[-1] == '\n')) snprintf(buf, len, "%s", l + 3);
}

static int cg_check(int partner) {
    char t[128];
    text_of("/proc/self/cgroup", t, sizeof t);
    CHECK(strcmp(t, "/\n") == 0, "cgroup namespace root: %s", t);
    if (partner) CHECK(same_ns(getpid(), partner, "cgroup") == 1, "cgroup not shared");
    CHECK(same_ns(getpid(), 1, "cgroup") == 0, "cgroup namespace is the pod's");
    return 0;
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    if (argc < 4) _exit(2);
    go = argv[2];
    snprintf(W, sizeof W, "%s", argv[3]);
    char p[600];
    int kids[16], nk = 0;

    must(sethostname("changed-host", 12) == 0, "sethostname");
    must(setdomainname("pod-dom", 7) == 0, "setdomainname");

    /* UTS. */
    int u1 = fork();
    if (u1 == 0) {
        must(unshare(CLONE_NEWUTS) == 0, "unshare uts");
        must(sethostname("inner-uts", 9) == 0 && setdomainname("inner-dom", 9) == 0, "inner names");
        int u2 = spawn(uts_check, 0);
        wait_go(go);
        int r = uts_check(u2), st;
        waitpid(u2, &st, 0);
        _exit(r || !WIFEXITED(st) || WEXITSTATUS(st));
    }
    kids[nk++] = u1;

    /* Network. */
    int n1 = fork();
    if (n1 == 0) {
        must(unshare(CLONE_NEWNET) == 0, "unshare net");
        must(system("ip link set lo up && ip addr add 10.123.0.1/32 dev lo") == 0, "ip");
        listen_fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(7777)};
        inet_pton(AF_INET, "10.123.0.1", &a.sin_addr);
        must(bind(listen_fd, (struct sockaddr *)&a, sizeof a) == 0 && listen(listen_fd, 4) == 0, "listen");
        int n2 = spawn(net_client, 0);
        wait_go(go);
        int r = net_server(n2), st;
        waitpid(n2, &st, 0);
        _exit(r || !WIFEXITED(st) || WEXITSTATUS(st));
    }
    kids[nk++] = n1;

    /* Time. */
    must(pipe(time_pipe) == 0, "pipe");
    int t1 = fork();
    if (t1 == 0) {
        must(unshare(CLONE_NEWTIME) == 0, "unshare time");
        int fd = open("/proc/self/timens_offsets", O_WRONLY);
        const char *off = "monotonic 86400 0\nboottime 172800 0\n";
        must(fd >= 0 && write(fd, off, strlen(off)) == (ssize_t)strlen(off), "timens_offsets");
        close(fd);
        int t2 = spawn(time_child, 0);
        wait_go(go);
        int r = time_parent(t2), st;
        waitpid(t2, &st, 0);
        _exit(r || !WIFEXITED(st) || WEXITSTATUS(st));
    }
    kids[nk++] = t1;

    /* IPC. */
    int i1 = fork();
    if (i1 == 0) {
        must(unshare(CLONE_NEWIPC) == 0, "unshare ipc");
        int id = shmget(0x5a9, 4096, IPC_CREAT | 0600);
        must(id >= 0, "shmget");
        shm = shmat(id, NULL, 0);
        must(shm != (void *)-1, "shmat");
        strcpy(shm, "nested-ipc");
        int i2 = spawn(ipc_check, 0);
        wait_go(go);
        int r = ipc_check(i2), st;
        waitpid(i2, &st, 0);
        _exit(r || !WIFEXITED(st) || WEXITSTATUS(st));
    }
    kids[nk++] = i1;

    /* Mount: the pod's tmpfs W/pm is not in the nested namespace, W/nm is only there. */
    snprintf(p, sizeof p, "%s/pm", W);
    must(mkdir(p, 0755) == 0 && mount("pm", p, "tmpfs", 0, "size=1m") == 0, "pod tmpfs");
    snprintf(p, sizeof p, "%s/pm/podfile", W);
    put(p, "pod");
    snprintf(p, sizeof p, "%s/nm", W);
    must(mkdir(p, 0755) == 0, "mkdir nm");
    int m1 = fork();
    if (m1 == 0) {
        must(unshare(CLONE_NEWNS) == 0, "unshare mnt");
        must(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0, "make private");
        snprintf(p, sizeof p, "%s/pm", W);
        must(umount(p) == 0, "umount pm");
        snprintf(p, sizeof p, "%s/nm", W);
        must(mount("nm", p, "tmpfs", 0, "size=1m") == 0, "nested tmpfs");
        snprintf(p, sizeof p, "%s/nm/inner", W);
        put(p, "inner-mnt");
        int m2 = spawn(mnt_check, 0);
        wait_go(go);
        int r = mnt_check(m2), st;
        waitpid(m2, &st, 0);
        _exit(r || !WIFEXITED(st) || WEXITSTATUS(st));
    }
    kids[nk++] = m1;

    /* Cgroup. */
    must(mkdir("/sys/fs/cgroup/cgns", 0755) == 0, "mkdir cgns");
    int c1 = fork();
    if (c1 == 0) {
        put("/sys/fs/cgroup/cgns/cgroup.procs", "0");
        must(unshare(CLONE_NEWCGROUP) == 0, "unshare cgroup");
        int c2 = spawn(cg_check, 0);
        wait_go(go);
        int r = cg_check(c2), st;
        waitpid(c2, &st, 0);
        _exit(r || !WIFEXITED(st) || WEXITSTATUS(st));
    }
    kids[nk++] = c1;

    usleep(500000);
    say("ready");
    wait_go(go);

    char h[64] = {0}, d[64] = {0};
    gethostname(h, sizeof h);
    getdomainname(d, sizeof d);
    CHECK(strcmp(h, "changed-host") == 0 && strcmp(d, "pod-dom") == 0, "pod names %s %s", h, d);
    CHECK(shmget(0x5a9, 0, 0) < 0 && errno == ENOENT, "nested segment in the pod's IPC namespace");
    snprintf(p, sizeof p, "%s/pm/podfile", W);
    CHECK(has(p, "pod"), "the pod's tmpfs");
    snprintf(p, sizeof p, "%s/nm/inner", W);
    CHECK(access(p, F_OK) != 0, "the nested tmpfs is in the pod's namespace");
    snprintf(p, sizeof p, "/proc/%d/cgroup", c1);
    char t[128];
    text_of(p, t, sizeof t);
    CHECK(strcmp(t, "/cgns\n") == 0, "C1's cgroup: %s", t);
    double dt[2];
    CHECK(read(time_pipe[0], dt, sizeof dt) == sizeof dt, "time report");
    double d0 = clock_diff(CLOCK_REALTIME, CLOCK_MONOTONIC), b0 = clock_diff(CLOCK_REALTIME, CLOCK_BOOTTIME);
    CHECK(d0 - dt[0] > 86400 - 2 && d0 - dt[0] < 86400 + 2, "monotonic offset %.1f", d0 - dt[0]);
    CHECK(b0 - dt[1] > 172800 - 2 && b0 - dt[1] < 172800 + 2, "boottime offset %.1f", b0 - dt[1]);
    for (int i = 0; i < nk; i++) {
        int st;
        CHECK(waitpid(kids[i], &st, 0) == kids[i] && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %d failed (%x)", i, st);
    }
    say("ok");
    return 0;
}
