/* Messages in flight on unix sockets: a stream, a datagram and a seqpacket socketpair whose
 * receivers pass credentials, with messages from this process and from a child (whose pid must
 * come back in SCM_CREDENTIALS), fds passed with SCM_RIGHTS (a pipe read end that only the
 * message holds, a file shared with this process's own fd, an eventfd), an empty datagram, and an
 * unbound datagram receiver bound to a path with datagrams from a sender with an abstract name,
 * one bound to a path and closed since, and an unbound one. After the restore every message must
 * come back in order, with its boundaries, sender, credentials and working fds.
 * argv[3] == "uffd": a userfaultfd waits in a message instead (a checkpoint must refuse it). */
#include "zaptest.h"
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>

static void send_fds(int s, const char *data, int *fds, int nfds) {
    char ctl[CMSG_SPACE(sizeof(int) * 4)] = {0};
    struct iovec iov = { (void *)data, strlen(data) };
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (nfds) {
        m.msg_control = ctl;
        m.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&m);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
    }
    CHECK(sendmsg(s, &m, 0) == (ssize_t)strlen(data), "sendmsg %s: %s", data, strerror(errno));
}

struct got {
    int n;
    char data[64];
    int fds[4];
    int nfds;
    pid_t pid;
    char from[108];
    socklen_t fromlen;
};

static struct got get(int s) {
    struct got g;
    memset(&g, 0, sizeof g);
    g.pid = -1;
    char ctl[CMSG_SPACE(sizeof(int) * 4) + CMSG_SPACE(sizeof(struct ucred))];
    struct iovec iov = { g.data, sizeof g.data - 1 };
    struct sockaddr_un from;
    struct msghdr m = { .msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl };
    g.n = recvmsg(s, &m, MSG_DONTWAIT);
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); g.n >= 0 && c; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_type == SCM_RIGHTS) {
            g.nfds = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            memcpy(g.fds, CMSG_DATA(c), sizeof(int) * g.nfds);
        } else if (c->cmsg_type == SCM_CREDENTIALS) {
            struct ucred u;
            memcpy(&u, CMSG_DATA(c), sizeof u);
            g.pid = u.pid;
        }
    }
    g.fromlen = m.msg_namelen;
    if (m.msg_namelen > sizeof(sa_family_t)) memcpy(g.from, from.sun_path, m.msg_namelen - sizeof(sa_family_t));
    return g;
}

static int bind_to(int s, const char *path, int abstract) {
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    int len = strlen(path);
    memcpy(a.sun_path + (abstract ? 1 : 0), path, len);
    return bind(s, (struct sockaddr *)&a, offsetof(struct sockaddr_un, sun_path) + len + (abstract ? 1 : 0));
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    int one = 1;
    if (argc > 3 && strcmp(argv[3], "uffd") == 0) {
        int p[2];
        int pfd = syscall(SYS_userfaultfd, O_CLOEXEC);
        CHECK(pfd >= 0 && socketpair(AF_UNIX, SOCK_DGRAM, 0, p) == 0, "userfaultfd and pair: %s", strerror(errno));
        send_fds(p[0], "uffd", &pfd, 1);
        close(pfd); /* only the message holds it */
        say("ready");
        wait_go(argv[2]);
        say("ok");
        return 0;
    }
    int s[2], g[2], q[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0 && socketpair(AF_UNIX, SOCK_DGRAM, 0, g) == 0 && socketpair(AF_UNIX, SOCK_SEQPACKET, 0, q) == 0, "pairs");
    setsockopt(s[1], SOL_SOCKET, SO_PASSCRED, &one, sizeof one);
    setsockopt(g[1], SOL_SOCKET, SO_PASSCRED, &one, sizeof one);
    int sync[2];
    CHECK(pipe(sync) == 0, "pipe");
    pid_t child = fork();
    if (child == 0) {
        CHECK(write(s[0], "from-child", 10) == 10 && send(g[0], "child-dgram", 11, 0) == 11, "child sends");
        /* A file only the child holds, passed too: saved as the child's description. */
        char cpath[4096];
        snprintf(cpath, sizeof cpath, "%s.child", argv[1]);
        int cf = open(cpath, O_RDWR | O_CREAT | O_TRUNC, 0600);
        CHECK(cf >= 0 && write(cf, "0123456789", 10) == 10 && lseek(cf, 3, SEEK_SET) == 3, "child file");
        send_fds(g[0], "child-fd", &cf, 1);
        char n = (char)cf;
        CHECK(write(sync[1], &n, 1) == 1, "sync");
        for (;;) pause();
    }
    char b;
    CHECK(read(sync[0], &b, 1) == 1, "child done");
    int child_fd = b;
    int pp[2];
    CHECK(pipe(pp) == 0 && write(pp[1], "pipe-data", 9) == 9, "data pipe");
    char path[4096];
    snprintf(path, sizeof path, "%s.file", argv[1]);
    int f = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK(f >= 0 && write(f, "0123456789", 10) == 10 && lseek(f, 4, SEEK_SET) == 4, "file");
    int ev = eventfd(7, 0);
    int two[2] = { pp[0], f };
    send_fds(s[0], "with-fds", two, 2);
    close(pp[0]); /* the pipe's read end is now held only by the message */
    CHECK(write(s[0], "tail", 4) == 4, "tail");
    send_fds(g[0], "d1", NULL, 0);
    send_fds(g[0], "d2", &ev, 1);
    close(ev);
    CHECK(send(g[0], "", 0, 0) == 0, "empty datagram");
    /* A connected socket passed in flight (as a server hands a connection to a worker), with
     * bytes queued on it: only the message holds that end. */
    int xp[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, xp) == 0 && write(xp[1], "inner", 5) == 5, "inner pair");
    send_fds(g[0], "sock", &xp[0], 1);
    close(xp[0]);
    send_fds(q[0], "q1", NULL, 0);
    send_fds(q[0], "q2-longer", &f, 1);
    /* An unbound receiver bound to a path, with datagrams from three senders. */
    char rpath[4096], bpath[4096], aname[64];
    snprintf(rpath, sizeof rpath, "%s.r", argv[1]);
    snprintf(bpath, sizeof bpath, "%s.b", argv[1]);
    snprintf(aname, sizeof aname, "zap-unixmsg-%d", getpid());
    unlink(rpath);
    unlink(bpath);
    int r = socket(AF_UNIX, SOCK_DGRAM, 0), sa = socket(AF_UNIX, SOCK_DGRAM, 0), sb = socket(AF_UNIX, SOCK_DGRAM, 0), su = socket(AF_UNIX, SOCK_DGRAM, 0);
    CHECK(bind_to(r, rpath, 0) == 0 && bind_to(sa, aname, 1) == 0 && bind_to(sb, bpath, 0) == 0, "binds: %s", strerror(errno));
    struct sockaddr_un ra = { .sun_family = AF_UNIX };
    strcpy(ra.sun_path, rpath);
    CHECK(sendto(sa, "from-a", 6, 0, (struct sockaddr *)&ra, sizeof ra) == 6, "from a");
    CHECK(sendto(sb, "from-b", 6, 0, (struct sockaddr *)&ra, sizeof ra) == 6, "from b");
    CHECK(sendto(su, "from-u", 6, 0, (struct sockaddr *)&ra, sizeof ra) == 6, "from u");
    close(sb);
    unlink(bpath);
    /* A large stream queue: requeueing it needs more than the writer's default buffer. */
    int big[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, big) == 0, "big pair");
    fcntl(big[0], F_SETFL, O_NONBLOCK);
    static char blob[150000];
    for (int i = 0; i < (int)sizeof blob; i++) blob[i] = (char)(i * 7 + i / 251);
    int queued = 0;
    while (queued < (int)sizeof blob) {
        int n = write(big[0], blob + queued, sizeof blob - queued);
        if (n <= 0) break;
        queued += n;
    }
    CHECK(queued > 100000, "queued %d bytes", queued);
    say("ready");
    wait_go(argv[2]);

    struct got x = get(s[1]);
    CHECK(x.n == 10 && memcmp(x.data, "from-child", 10) == 0 && x.pid == child, "stream 1: %d '%s' pid %d (child %d)", x.n, x.data, x.pid, child);
    x = get(s[1]);
    CHECK(x.n == 8 && memcmp(x.data, "with-fds", 8) == 0 && x.nfds == 2 && x.pid == getpid(), "stream 2: %d '%s' %d fds pid %d", x.n, x.data, x.nfds, x.pid);
    char buf[64] = {0};
    CHECK(read(x.fds[0], buf, sizeof buf) == 9 && memcmp(buf, "pipe-data", 9) == 0, "pipe end in flight: '%s'", buf);
    CHECK(write(pp[1], "more", 4) == 4 && read(x.fds[0], buf, sizeof buf) == 4 && memcmp(buf, "more", 4) == 0, "same pipe as our write end");
    CHECK(lseek(x.fds[1], 0, SEEK_CUR) == 4, "file offset in flight: %ld", (long)lseek(x.fds[1], 0, SEEK_CUR));
    lseek(f, 6, SEEK_SET);
    CHECK(lseek(x.fds[1], 0, SEEK_CUR) == 6, "file in flight shares our description");
    x = get(s[1]);
    CHECK(x.n == 4 && memcmp(x.data, "tail", 4) == 0 && x.nfds == 0, "stream 3: %d '%s'", x.n, x.data);
    x = get(s[1]);
    CHECK(x.n < 0 && errno == EAGAIN, "stream empty: %d", x.n);

    x = get(g[1]);
    CHECK(x.n == 11 && memcmp(x.data, "child-dgram", 11) == 0 && x.pid == child, "dgram 1: %d '%s' pid %d", x.n, x.data, x.pid);
    x = get(g[1]);
    CHECK(x.n == 8 && memcmp(x.data, "child-fd", 8) == 0 && x.nfds == 1 && x.pid == child, "dgram child-fd: %d '%s'", x.n, x.data);
    CHECK(lseek(x.fds[0], 0, SEEK_CUR) == 3, "child's file offset in flight");
    lseek(x.fds[0], 7, SEEK_SET);
    char info[128], text[512] = {0};
    snprintf(info, sizeof info, "/proc/%d/fdinfo/%d", child, child_fd);
    int fi = open(info, O_RDONLY);
    CHECK(fi >= 0 && read(fi, text, sizeof text - 1) > 0 && strncmp(text, "pos:\t7", 6) == 0, "shared with the child's fd: %s", text);
    close(fi);
    x = get(g[1]);
    CHECK(x.n == 2 && memcmp(x.data, "d1", 2) == 0 && x.nfds == 0, "dgram 2: %d '%s'", x.n, x.data);
    x = get(g[1]);
    CHECK(x.n == 2 && memcmp(x.data, "d2", 2) == 0 && x.nfds == 1, "dgram 3: %d '%s' %d fds", x.n, x.data, x.nfds);
    uint64_t cnt = 0;
    CHECK(read(x.fds[0], &cnt, 8) == 8 && cnt == 7, "eventfd in flight: %lu", (unsigned long)cnt);
    x = get(g[1]);
    CHECK(x.n == 0, "empty datagram: %d", x.n);
    x = get(g[1]);
    CHECK(x.n == 4 && memcmp(x.data, "sock", 4) == 0 && x.nfds == 1, "dgram 5: %d '%s'", x.n, x.data);
    CHECK(read(x.fds[0], buf, sizeof buf) == 5 && memcmp(buf, "inner", 5) == 0, "socket in flight kept its queue");
    CHECK(write(x.fds[0], "out", 3) == 3 && read(xp[1], buf, sizeof buf) == 3, "socket in flight still connected to its peer");
    x = get(g[1]);
    CHECK(x.n < 0 && errno == EAGAIN, "dgram empty: %d", x.n);

    x = get(q[1]);
    CHECK(x.n == 2 && memcmp(x.data, "q1", 2) == 0, "seqpacket 1: %d '%s'", x.n, x.data);
    x = get(q[1]);
    CHECK(x.n == 9 && memcmp(x.data, "q2-longer", 9) == 0 && x.nfds == 1, "seqpacket 2: %d '%s'", x.n, x.data);
    CHECK(lseek(x.fds[0], 0, SEEK_CUR) == 6, "seqpacket fd shares our file");

    x = get(r);
    CHECK(x.n == 6 && memcmp(x.data, "from-a", 6) == 0 && x.from[0] == 0 && strcmp(x.from + 1, aname) == 0, "receiver 1: '%s' from '%s'", x.data, x.from + 1);
    x = get(r);
    CHECK(x.n == 6 && memcmp(x.data, "from-b", 6) == 0 && strcmp(x.from, bpath) == 0, "receiver 2: '%s' from '%s'", x.data, x.from);
    x = get(r);
    CHECK(x.n == 6 && memcmp(x.data, "from-u", 6) == 0 && x.fromlen <= sizeof(sa_family_t), "receiver 3: '%s' namelen %d", x.data, x.fromlen);
    struct stat st;
    CHECK(stat(bpath, &st) != 0, "the closed sender's file stays gone");
    static char back[150000];
    int got = 0;
    fcntl(big[1], F_SETFL, O_NONBLOCK);
    while (got < queued) {
        int n = read(big[1], back + got, queued - got);
        if (n <= 0) break;
        got += n;
    }
    CHECK(got == queued && memcmp(back, blob, queued) == 0, "large stream queue: %d of %d bytes", got, queued);
    /* Still connected both ways. */
    CHECK(write(s[1], "back", 4) == 4 && read(s[0], buf, sizeof buf) == 4, "pair still connected");
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    unlink(path);
    unlink(rpath);
    say("ok");
    return 0;
}
