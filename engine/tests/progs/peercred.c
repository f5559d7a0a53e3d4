/* SO_PEERCRED of unix sockets after a restore. The main process M (root) listens on an abstract
 * name; a child U becomes uid 1001/gid 1002 and connects to it, and M accepts: M's accepted end
 * must show U (pid, 1001, 1002), U's end must show M as it listened (pid, 0, 0), and so must the
 * listener. A child Q becomes uid 2001/gid 2002, makes a socketpair and forks R; Q keeps one end
 * and R the other: both must show Q (pid, 2001, 2002). After the restore each process checks its
 * socket and sends a byte across it; the children say "fine ..." and M says "ok" once both have
 * exited cleanly. The children wait on a pipe rather than the go file (they cannot reach it). */
#include "zaptest.h"
#include <errno.h>
#include <grp.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

static void expect(const char *who, int s, pid_t pid, uid_t uid, gid_t gid) {
    struct ucred u;
    socklen_t len = sizeof u;
    CHECK(getsockopt(s, SOL_SOCKET, SO_PEERCRED, &u, &len) == 0, "%s: SO_PEERCRED: %s", who, strerror(errno));
    CHECK(u.pid == pid && u.uid == uid && u.gid == gid, "%s: SO_PEERCRED shows pid %d uid %u gid %u, not pid %d uid %u gid %u", who, u.pid, u.uid,
          u.gid, pid, uid, gid);
}

static void become(uid_t uid, gid_t gid) {
    CHECK(setgroups(0, NULL) == 0 && setresgid(gid, gid, gid) == 0 && setresuid(uid, uid, uid) == 0, "become uid %u: %s", uid, strerror(errno));
}

/* Sends `mine` and reads the peer's byte, `theirs`. */
static void exchange(const char *who, int s, char mine, char theirs) {
    char c = 0;
    CHECK(write(s, &mine, 1) == 1, "%s: write: %s", who, strerror(errno));
    CHECK(read(s, &c, 1) == 1, "%s: read: %s", who, strerror(errno));
    CHECK(c == theirs, "%s: read %c, not %c", who, c, theirs);
}

static void wait_pipe(int fd) {
    char c;
    CHECK(read(fd, &c, 1) == 1, "wait for go: %s", strerror(errno));
}

static void reap(pid_t pid, const char *who) {
    int st;
    CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s ended badly (%#x)", who, st);
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    pid_t m = getpid();
    int ready[2], go[2];
    CHECK(pipe(ready) == 0 && pipe(go) == 0, "pipe: %s", strerror(errno));
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    memcpy(a.sun_path, "\0zt-peercred", 12);
    socklen_t alen = offsetof(struct sockaddr_un, sun_path) + 12;
    int l = socket(AF_UNIX, SOCK_STREAM, 0);
    CHECK(l >= 0 && bind(l, (struct sockaddr *)&a, alen) == 0 && listen(l, 8) == 0, "listen: %s", strerror(errno));

    pid_t u = fork();
    CHECK(u >= 0, "fork: %s", strerror(errno));
    if (u == 0) {
        close(l);
        become(1001, 1002);
        int c = socket(AF_UNIX, SOCK_STREAM, 0);
        CHECK(c >= 0 && connect(c, (struct sockaddr *)&a, alen) == 0, "connect: %s", strerror(errno));
        CHECK(write(ready[1], "u", 1) == 1, "ready: %s", strerror(errno));
        wait_pipe(go[0]);
        expect("client of another user", c, m, 0, 0);
        exchange("client", c, 'u', 'm');
        say("fine client");
        _exit(0);
    }
    int ma = accept(l, NULL, NULL);
    CHECK(ma >= 0, "accept: %s", strerror(errno));

    pid_t q = fork();
    CHECK(q >= 0, "fork: %s", strerror(errno));
    if (q == 0) {
        close(l);
        close(ma);
        become(2001, 2002);
        pid_t me = getpid();
        int sv[2];
        CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0, "socketpair: %s", strerror(errno));
        pid_t r = fork();
        CHECK(r >= 0, "fork: %s", strerror(errno));
        if (r == 0) {
            close(sv[0]);
            CHECK(write(ready[1], "r", 1) == 1, "ready: %s", strerror(errno));
            wait_pipe(go[0]);
            expect("pair, the child's end", sv[1], me, 2001, 2002);
            exchange("pair child", sv[1], 'r', 'q');
            say("fine pair child");
            _exit(0);
        }
        close(sv[1]);
        CHECK(write(ready[1], "q", 1) == 1, "ready: %s", strerror(errno));
        wait_pipe(go[0]);
        expect("pair, the maker's end", sv[0], me, 2001, 2002);
        exchange("pair maker", sv[0], 'q', 'r');
        reap(r, "pair child");
        say("fine pair maker");
        _exit(0);
    }
    char buf[3];
    for (int got = 0; got < 3;) {
        ssize_t n = read(ready[0], buf, sizeof buf - got);
        CHECK(n > 0, "wait for the children: %s", strerror(errno));
        got += n;
    }
    say("ready");
    wait_go(argv[2]);
    CHECK(write(go[1], "ggg", 3) == 3, "go: %s", strerror(errno));
    expect("accepted from another user", ma, u, 1001, 1002);
    expect("listener", l, m, 0, 0);
    exchange("server", ma, 'm', 'u');
    reap(u, "client");
    reap(q, "pair maker");
    say("ok");
    return 0;
}
