/* System V and POSIX message queues held across a checkpoint (argv[3]: "all", or one kind that
 * must be refused: "notify", "full", "unlinked").
 * all: System V queue A (a key, mode 0640, msg_qbytes lowered to 4000) with four messages of
 * types 3, 1, 2, 1 (one of 1000 bytes), a private queue B with one message, and a queue C on which
 * a child is blocked in msgrcv for type 5; POSIX queue /zapq-a (mode 0640, 8 messages of at most
 * 256 bytes, O_NONBLOCK) with five messages of priorities 1, 5, 1, 5, 0, and an empty /zapq-b on
 * which a second child is blocked in mq_receive. After the restore: the same ids, keys, modes and
 * limits; the messages come out in the same order with the same types, priorities and bytes; the
 * blocked children get the messages sent after the restore. */
#include "zaptest.h"
#include <errno.h>
#include <mqueue.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/wait.h>

struct msg { long type; char text[1100]; };

static void fill(char *p, int n, int seed) { for (int i = 0; i < n; i++) p[i] = (char)('a' + (i * 7 + seed) % 26); }

static void send_v(int q, long type, const char *text, int n) {
    struct msg m = { .type = type };
    memcpy(m.text, text, n);
    CHECK(msgsnd(q, &m, n, IPC_NOWAIT) == 0, "msgsnd type %ld: errno %d", type, errno);
}

static void expect_v(int q, long type, const char *text, int n, int i) {
    struct msg m;
    ssize_t got = msgrcv(q, &m, sizeof m.text, 0, IPC_NOWAIT);
    CHECK(got == n, "System V message %d: %zd bytes (errno %d), not %d", i, got, errno, n);
    CHECK(m.type == type, "System V message %d: type %ld, not %ld", i, m.type, type);
    CHECK(memcmp(m.text, text, n) == 0, "System V message %d: other bytes", i);
}

static void expect_p(mqd_t q, const char *text, unsigned prio, int i) {
    char buf[256];
    unsigned p = 99;
    ssize_t got = mq_receive(q, buf, sizeof buf, &p);
    CHECK(got == (ssize_t)strlen(text), "POSIX message %d: %zd bytes (errno %d), not %zu", i, got, errno, strlen(text));
    CHECK(memcmp(buf, text, got) == 0 && p == prio, "POSIX message %d: '%.*s' prio %u, not '%s' prio %u", i, (int)got, buf, p, text, prio);
}

static int refused_kind(const char *kind, const char *go) {
    struct mq_attr a = { .mq_maxmsg = 2, .mq_msgsize = 64 };
    mq_unlink("/zapq-r");
    mqd_t q = mq_open("/zapq-r", O_CREAT | O_RDWR | O_NONBLOCK, 0600, &a);
    CHECK(q != (mqd_t)-1, "mq_open: errno %d", errno);
    CHECK(mq_send(q, "one", 3, 1) == 0, "mq_send");
    if (!strcmp(kind, "notify")) {
        /* A registration needs an empty queue to fire on: take the message out again. */
        char b[64];
        CHECK(mq_receive(q, b, sizeof b, NULL) == 3, "mq_receive");
        struct sigevent ev = { .sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGUSR1 };
        signal(SIGUSR1, SIG_IGN);
        CHECK(mq_notify(q, &ev) == 0, "mq_notify: errno %d", errno);
    } else if (!strcmp(kind, "full")) {
        CHECK(mq_send(q, "two", 3, 2) == 0, "mq_send 2");
    } else if (!strcmp(kind, "unlinked")) {
        CHECK(mq_unlink("/zapq-r") == 0, "mq_unlink");
    } else {
        CHECK(0, "unknown kind %s", kind);
    }
    say("ready");
    wait_go(go);
    /* The refused checkpoint left the queue as it was. */
    struct mq_attr now;
    CHECK(mq_getattr(q, &now) == 0, "mq_getattr");
    char b[64];
    unsigned p;
    if (!strcmp(kind, "full")) {
        CHECK(now.mq_curmsgs == 2, "%ld messages after the refused checkpoint", now.mq_curmsgs);
        CHECK(mq_receive(q, b, sizeof b, &p) == 3 && p == 2 && !memcmp(b, "two", 3), "first message after the refused checkpoint");
        CHECK(mq_receive(q, b, sizeof b, &p) == 3 && p == 1 && !memcmp(b, "one", 3), "second message after the refused checkpoint");
    } else if (!strcmp(kind, "unlinked")) {
        CHECK(now.mq_curmsgs == 1 && mq_receive(q, b, sizeof b, &p) == 3 && p == 1, "message after the refused checkpoint");
    } else {
        CHECK(now.mq_curmsgs == 0, "%ld messages after the refused checkpoint", now.mq_curmsgs);
        /* Still registered: a second registration is refused with EBUSY. */
        struct sigevent ev = { .sigev_notify = SIGEV_NONE };
        CHECK(mq_notify(q, &ev) == -1 && errno == EBUSY, "the registration was lost (errno %d)", errno);
    }
    mq_unlink("/zapq-r");
    say("ok");
    return 0;
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    CHECK(argc >= 4, "usage: out go kind");
    if (strcmp(argv[3], "all")) return refused_kind(argv[3], argv[2]);

    key_t key = 0x5a500001;
    int a = msgget(key, IPC_CREAT | IPC_EXCL | 0640);
    CHECK(a >= 0, "msgget A: errno %d", errno);
    int b = msgget(IPC_PRIVATE, 0600);
    int c = msgget(IPC_PRIVATE, 0600);
    CHECK(b >= 0 && c >= 0, "msgget B, C: errno %d", errno);
    struct msqid_ds ds;
    CHECK(msgctl(a, IPC_STAT, &ds) == 0, "IPC_STAT");
    ds.msg_qbytes = 4000;
    CHECK(msgctl(a, IPC_SET, &ds) == 0, "IPC_SET: errno %d", errno);
    char big[1000];
    fill(big, sizeof big, 3);
    send_v(a, 3, "first, type 3", 13);
    send_v(a, 1, big, sizeof big);
    send_v(a, 2, "", 0);
    send_v(a, 1, "last, type 1", 12);
    send_v(b, 7, "private", 7);

    struct mq_attr pa = { .mq_maxmsg = 8, .mq_msgsize = 256 };
    mq_unlink("/zapq-a");
    mq_unlink("/zapq-b");
    mode_t old = umask(0);
    mqd_t pq = mq_open("/zapq-a", O_CREAT | O_EXCL | O_RDWR | O_NONBLOCK, 0640, &pa);
    mqd_t pb = mq_open("/zapq-b", O_CREAT | O_EXCL | O_WRONLY, 0600, &pa);
    umask(old);
    CHECK(pq != (mqd_t)-1 && pb != (mqd_t)-1, "mq_open: errno %d", errno);
    const char *texts[] = { "a1", "b5", "c1", "d5", "e0" };
    unsigned prios[] = { 1, 5, 1, 5, 0 };
    for (int i = 0; i < 5; i++) CHECK(mq_send(pq, texts[i], strlen(texts[i]), prios[i]) == 0, "mq_send %d: errno %d", i, errno);

    pid_t vchild = fork();
    if (vchild == 0) {
        struct msg m;
        ssize_t n = msgrcv(c, &m, sizeof m.text, 5, 0); /* blocks until after the restore */
        _exit(n == 4 && m.type == 5 && !memcmp(m.text, "late", 4) ? 0 : 1);
    }
    pid_t pchild = fork();
    if (pchild == 0) {
        mqd_t r = mq_open("/zapq-b", O_RDONLY);
        char buf[256];
        unsigned p;
        ssize_t n = mq_receive(r, buf, sizeof buf, &p); /* blocks until after the restore */
        _exit(n == 4 && p == 9 && !memcmp(buf, "late", 4) ? 0 : 1);
    }
    usleep(100000); /* both children blocked */
    say("ready");
    wait_go(argv[2]);

    CHECK(msgget(key, 0) == a, "queue of key %#x is %d, not %d", key, msgget(key, 0), a);
    CHECK(msgctl(a, IPC_STAT, &ds) == 0, "IPC_STAT A after: errno %d", errno);
    CHECK((ds.msg_perm.mode & 0777) == 0640, "mode %o", ds.msg_perm.mode & 0777);
    CHECK(ds.msg_qbytes == 4000, "msg_qbytes %lu", (unsigned long)ds.msg_qbytes);
    CHECK(ds.msg_qnum == 4 && ds.__msg_cbytes == 1025, "A holds %lu messages, %lu bytes", (unsigned long)ds.msg_qnum, (unsigned long)ds.__msg_cbytes);
    expect_v(a, 3, "first, type 3", 13, 0);
    expect_v(a, 1, big, sizeof big, 1);
    expect_v(a, 2, "", 0, 2);
    expect_v(a, 1, "last, type 1", 12, 3);
    expect_v(b, 7, "private", 7, 4);
    send_v(c, 5, "late", 4);
    int st;
    CHECK(waitpid(vchild, &st, 0) == vchild && WIFEXITED(st) && WEXITSTATUS(st) == 0, "blocked msgrcv child: status %#x", st);

    CHECK((fcntl(pq, F_GETFL) & O_NONBLOCK) && !(fcntl(pb, F_GETFL) & O_NONBLOCK), "O_NONBLOCK not as it was");
    struct mq_attr now;
    CHECK(mq_getattr(pq, &now) == 0, "mq_getattr: errno %d", errno);
    CHECK(now.mq_maxmsg == 8 && now.mq_msgsize == 256 && now.mq_curmsgs == 5, "attributes %ld %ld %ld", now.mq_maxmsg, now.mq_msgsize, now.mq_curmsgs);
    struct stat sb;
    CHECK(fstat(pq, &sb) == 0 && (sb.st_mode & 0777) == 0640, "queue mode %o", sb.st_mode & 0777);
    const char *order[] = { "b5", "d5", "a1", "c1", "e0" };
    unsigned oprio[] = { 5, 5, 1, 1, 0 };
    for (int i = 0; i < 5; i++) expect_p(pq, order[i], oprio[i], i);
    char buf[256];
    CHECK(mq_receive(pq, buf, sizeof buf, NULL) == -1 && errno == EAGAIN, "queue not empty, or not non-blocking");
    CHECK(mq_send(pb, "late", 4, 9) == 0, "mq_send late: errno %d", errno);
    CHECK(waitpid(pchild, &st, 0) == pchild && WIFEXITED(st) && WEXITSTATUS(st) == 0, "blocked mq_receive child: status %#x", st);
    msgctl(a, IPC_RMID, NULL);
    msgctl(b, IPC_RMID, NULL);
    msgctl(c, IPC_RMID, NULL);
    mq_unlink("/zapq-a");
    mq_unlink("/zapq-b");
    say("ok");
    return 0;
}
