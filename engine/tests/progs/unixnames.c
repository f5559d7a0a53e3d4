/* Unix socket corner cases: a listener bound to a path that was deleted since (its name stays,
 * no file comes back), one bound with a relative path from a directory the process left since
 * (the file is where it was, with its mode), an abstract name and an autobound one, a client
 * waiting in a listener's backlog (accepted after the restore), an accepted connection from a
 * named listener and one from a client bound to its own path (each end keeps its names), a
 * seqpacket connection with queued records, a datagram client connected to a named receiver, and
 * half-closed socketpairs (the peer closed: queued bytes, then end of file; one whose peer left
 * unread data, with ECONNRESET pending).
 * argv[3] == "backlog-data": a client writes before being accepted (a checkpoint must refuse).
 * argv[3] == "outside": connects to the listener at argv[4], outside the pod (likewise). */
#include "zaptest.h"
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

static socklen_t addr_of(struct sockaddr_un *a, const char *name, int abstract) {
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    int len = strlen(name);
    memcpy(a->sun_path + (abstract ? 1 : 0), name, len);
    return offsetof(struct sockaddr_un, sun_path) + len + (abstract ? 1 : (name[0] ? 1 : 0));
}

static int listener(int type, const char *name, int abstract) {
    struct sockaddr_un a;
    socklen_t l = addr_of(&a, name, abstract);
    int s = socket(AF_UNIX, type, 0);
    CHECK(s >= 0 && bind(s, (struct sockaddr *)&a, l) == 0 && listen(s, 7) == 0, "listen on %s: %s", name, strerror(errno));
    return s;
}

static int client(int type, const char *name, int abstract, const char *own) {
    struct sockaddr_un a;
    int c = socket(AF_UNIX, type, 0);
    if (own) {
        socklen_t ol = addr_of(&a, own, 0);
        unlink(own);
        CHECK(bind(c, (struct sockaddr *)&a, ol) == 0, "bind client %s: %s", own, strerror(errno));
    }
    socklen_t l = addr_of(&a, name, abstract);
    CHECK(connect(c, (struct sockaddr *)&a, l) == 0, "connect %s: %s", name, strerror(errno));
    return c;
}

/* The name of a socket (or of its peer) as a printable string; abstract names get '@'. */
static const char *name_of(int s, int peer) {
    static char out[2][128];
    static int which;
    char *o = out[which++ & 1];
    struct sockaddr_un a;
    socklen_t l = sizeof a;
    memset(&a, 0, sizeof a);
    if ((peer ? getpeername(s, (struct sockaddr *)&a, &l) : getsockname(s, (struct sockaddr *)&a, &l)) != 0) return "error";
    int n = l - offsetof(struct sockaddr_un, sun_path);
    if (n <= 0) return "";
    if (a.sun_path[0] == 0) {
        o[0] = '@';
        memcpy(o + 1, a.sun_path + 1, n - 1);
        o[n] = 0;
    } else {
        snprintf(o, 128, "%s", a.sun_path);
    }
    return o;
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    char base[4096], del[4200], dir[4200], rel_full[4300], lpath[4200], cpath[4200], rpath[4200], abs_name[64];
    snprintf(base, sizeof base, "%s", argv[1]);
    snprintf(del, sizeof del, "%s.del", base);
    snprintf(dir, sizeof dir, "%s.dir", base);
    snprintf(rel_full, sizeof rel_full, "%s/rel.sock", dir);
    snprintf(lpath, sizeof lpath, "%s.l", base);
    snprintf(cpath, sizeof cpath, "%s.c", base);
    snprintf(rpath, sizeof rpath, "%s.r", base);
    snprintf(abs_name, sizeof abs_name, "zap-names-%d", getpid());
    unlink(del);
    unlink(lpath);
    unlink(rpath);
    mkdir(dir, 0755);
    unlink(rel_full);

    if (argc > 4 && strcmp(argv[3], "outside") == 0) {
        int c = client(SOCK_STREAM, argv[4], 0, NULL);
        say("ready");
        wait_go(argv[2]);
        CHECK(write(c, "x", 1) == 1, "still connected");
        say("ok");
        return 0;
    }
    if (argc > 3 && strcmp(argv[3], "backlog-data") == 0) {
        int l = listener(SOCK_STREAM, lpath, 0);
        int c = client(SOCK_STREAM, lpath, 0, NULL);
        CHECK(write(c, "early", 5) == 5, "write before accept");
        say("ready");
        wait_go(argv[2]);
        int s = accept(l, NULL, NULL);
        char b[8] = {0};
        CHECK(s >= 0 && read(s, b, sizeof b) == 5, "accept and read");
        say("ok");
        return 0;
    }

    int ldel = listener(SOCK_STREAM, del, 0);
    CHECK(unlink(del) == 0, "unlink bound path");
    CHECK(chdir(dir) == 0, "chdir");
    mode_t old = umask(0);
    int lrel = listener(SOCK_STREAM, "rel.sock", 0);
    umask(old);
    CHECK(chmod("rel.sock", 0640) == 0, "chmod");
    CHECK(chdir("/") == 0, "chdir back");
    int labs = listener(SOCK_STREAM, abs_name, 1);
    int autob = socket(AF_UNIX, SOCK_DGRAM, 0);
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    CHECK(bind(autob, (struct sockaddr *)&a, sizeof(sa_family_t)) == 0, "autobind");
    char autoname[16];
    snprintf(autoname, sizeof autoname, "%s", name_of(autob, 0));
    CHECK(autoname[0] == '@' && strlen(autoname) == 6, "autobind name '%s'", autoname);

    /* A named listener: one client accepted, one bound to its own path and accepted, one waiting. */
    int l = listener(SOCK_STREAM, lpath, 0);
    int c1 = client(SOCK_STREAM, lpath, 0, NULL);
    int s1 = accept(l, NULL, NULL);
    int c2 = client(SOCK_STREAM, lpath, 0, cpath);
    int s2 = accept(l, NULL, NULL);
    int cw = client(SOCK_STREAM, lpath, 0, NULL);
    CHECK(s1 >= 0 && s2 >= 0, "accepts");
    CHECK(write(c1, "c1-to-s1", 8) == 8 && write(s2, "s2-to-c2", 8) == 8, "queued on accepted connections");
    /* The abstract listener with a waiting client too. */
    int caw = client(SOCK_STREAM, abs_name, 1, NULL);

    /* Seqpacket. */
    char qname[64];
    snprintf(qname, sizeof qname, "zap-names-q-%d", getpid());
    int lq = listener(SOCK_SEQPACKET, qname, 1);
    int cq = client(SOCK_SEQPACKET, qname, 1, NULL);
    int sq = accept(lq, NULL, NULL);
    CHECK(send(cq, "rec-1", 5, 0) == 5 && send(cq, "record-2", 8, 0) == 8, "seqpacket sends");

    /* A datagram client connected to a named receiver. */
    int r = socket(AF_UNIX, SOCK_DGRAM, 0);
    socklen_t rl = addr_of(&a, rpath, 0);
    CHECK(bind(r, (struct sockaddr *)&a, rl) == 0, "bind receiver");
    int dc = socket(AF_UNIX, SOCK_DGRAM, 0);
    CHECK(connect(dc, (struct sockaddr *)&a, rl) == 0 && send(dc, "to-r", 4, 0) == 4, "dgram client");

    /* Half-closed pairs. */
    int h[2], h2[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, h) == 0 && socketpair(AF_UNIX, SOCK_STREAM, 0, h2) == 0, "pairs");
    CHECK(write(h[1], "bye", 3) == 3, "last words");
    close(h[1]);
    CHECK(write(h2[0], "unread", 6) == 6, "unread by the peer");
    close(h2[1]);
    say("ready");
    wait_go(argv[2]);

    struct stat st;
    CHECK(strcmp(name_of(ldel, 0), del) == 0, "deleted path name '%s'", name_of(ldel, 0));
    CHECK(stat(del, &st) != 0, "deleted path stays deleted");
    int acc = -1;
    socklen_t al = sizeof acc;
    CHECK(getsockopt(ldel, SOL_SOCKET, SO_ACCEPTCONN, &acc, &al) == 0 && acc == 1, "deleted-path socket listens");
    CHECK(strcmp(name_of(lrel, 0), "rel.sock") == 0, "relative name '%s'", name_of(lrel, 0));
    CHECK(stat(rel_full, &st) == 0 && S_ISSOCK(st.st_mode) && (st.st_mode & 07777) == 0640, "relative socket file %s mode %o", rel_full, st.st_mode);
    int crel = client(SOCK_STREAM, rel_full, 0, NULL);
    int srel = accept(lrel, NULL, NULL);
    CHECK(srel >= 0 && write(crel, "r", 1) == 1, "relative listener accepts");
    CHECK(name_of(labs, 0)[0] == '@' && strcmp(name_of(labs, 0) + 1, abs_name) == 0, "abstract name '%s'", name_of(labs, 0));
    CHECK(strcmp(name_of(autob, 0), autoname) == 0, "autobind name '%s' (was '%s')", name_of(autob, 0), autoname);

    char b[32] = {0};
    CHECK(read(s1, b, sizeof b) == 8 && memcmp(b, "c1-to-s1", 8) == 0, "accepted 1 queue '%s'", b);
    CHECK(read(c2, b, sizeof b) == 8 && memcmp(b, "s2-to-c2", 8) == 0, "accepted 2 queue '%s'", b);
    CHECK(strcmp(name_of(s1, 0), lpath) == 0 && strcmp(name_of(c1, 1), lpath) == 0, "accepted names '%s' '%s'", name_of(s1, 0), name_of(c1, 1));
    CHECK(strcmp(name_of(s1, 1), "") == 0 && strcmp(name_of(c1, 0), "") == 0, "unbound client names");
    CHECK(strcmp(name_of(s2, 1), cpath) == 0 && strcmp(name_of(c2, 0), cpath) == 0, "bound client names '%s' '%s'", name_of(s2, 1), name_of(c2, 0));
    CHECK(write(s1, "pong", 4) == 4 && read(c1, b, sizeof b) == 4, "accepted connection works both ways");
    /* The waiting clients are accepted now. */
    int sw = accept(l, NULL, NULL);
    CHECK(sw >= 0, "accept the waiting client: %s", strerror(errno));
    CHECK(write(cw, "late", 4) == 4 && read(sw, b, sizeof b) == 4 && memcmp(b, "late", 4) == 0, "waiting client talks");
    CHECK(strcmp(name_of(cw, 1), lpath) == 0, "waiting client's peer '%s'", name_of(cw, 1));
    int saw = accept(labs, NULL, NULL);
    CHECK(saw >= 0 && write(saw, "x", 1) == 1 && read(caw, b, 1) == 1, "abstract waiting client");

    CHECK(recv(sq, b, sizeof b, 0) == 5 && memcmp(b, "rec-1", 5) == 0, "seqpacket record 1");
    CHECK(recv(sq, b, sizeof b, 0) == 8 && memcmp(b, "record-2", 8) == 0, "seqpacket record 2");

    CHECK(recv(r, b, sizeof b, MSG_DONTWAIT) == 4 && memcmp(b, "to-r", 4) == 0, "receiver queue");
    CHECK(send(dc, "again", 5, 0) == 5 && recv(r, b, sizeof b, MSG_DONTWAIT) == 5, "dgram client still connected");
    CHECK(strcmp(name_of(dc, 1), rpath) == 0, "dgram client's peer '%s'", name_of(dc, 1));

    CHECK(read(h[0], b, sizeof b) == 3 && memcmp(b, "bye", 3) == 0, "half-closed: queued bytes");
    CHECK(read(h[0], b, sizeof b) == 0, "half-closed: end of file");
    CHECK(write(h[0], "x", 1) < 0 && errno == EPIPE, "half-closed: EPIPE");
    int err = 0;
    socklen_t el = sizeof err;
    CHECK(getsockopt(h2[0], SOL_SOCKET, SO_ERROR, &err, &el) == 0 && err == ECONNRESET, "reset pending: %d", err);
    unlink(rel_full);
    rmdir(dir);
    unlink(lpath);
    unlink(cpath);
    unlink(rpath);
    say("ok");
    return 0;
}
