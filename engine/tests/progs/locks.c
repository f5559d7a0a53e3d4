/* File locks of every kind, in argv[3] (a directory of ours):
 *   flock-ex   flock(LOCK_EX) on a description a forked child shares (the lock is held once);
 *   flock-sh   flock(LOCK_SH);
 *   posix      POSIX write lock on bytes 0-9, read lock from 100 to EOF; a second fd on the same
 *              file (a dup) so the lock shows twice in fdinfo;
 *   ofd        OFD write lock on bytes 5-14;
 *   lease      a read lease (F_SETLEASE) on a file opened read-only.
 * After the restore a new process (a forked checker, with fresh opens) must be refused every
 * lock that conflicts, and be granted the ones that do not. The test also tries from outside. */
#include "zaptest.h"
#include <errno.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>

static char dir[512];

static int open_in(const char *name, int flags) {
    char p[700];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return open(p, flags | O_CREAT, 0600);
}

static int posix_test(int fd, int cmd, short type, off_t start, off_t len, struct flock *out) {
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
    int rc = fcntl(fd, cmd, &fl);
    if (out) *out = fl;
    return rc;
}

/* Runs in a forked child: returns 0 when every conflict is seen. */
static int check_from_another_process(pid_t holder) {
    int a = open_in("flock-ex", O_RDWR);
    if (flock(a, LOCK_SH | LOCK_NB) == 0 || errno != EWOULDBLOCK) return 1;
    int b = open_in("flock-sh", O_RDWR);
    if (flock(b, LOCK_SH | LOCK_NB) != 0) return 2;
    if (flock(b, LOCK_EX | LOCK_NB) == 0) return 3;
    flock(b, LOCK_UN);
    int p = open_in("posix", O_RDWR);
    struct flock got;
    if (posix_test(p, F_GETLK, F_RDLCK, 0, 10, &got) != 0 || got.l_type != F_WRLCK || got.l_pid != holder) return 4;
    if (posix_test(p, F_GETLK, F_WRLCK, 200, 10, &got) != 0 || got.l_type != F_RDLCK || got.l_start != 100 || got.l_len != 0) return 5;
    if (posix_test(p, F_SETLK, F_RDLCK, 200, 10, NULL) != 0) return 6; /* read on read: fine */
    if (posix_test(p, F_SETLK, F_WRLCK, 50, 10, NULL) != 0) return 7;  /* unlocked range */
    int o = open_in("ofd", O_RDWR);
    if (posix_test(o, F_OFD_GETLK, F_RDLCK, 0, 100, &got) != 0 || got.l_type != F_WRLCK || got.l_start != 5 || got.l_len != 10) return 8;
    if (posix_test(o, F_OFD_SETLK, F_WRLCK, 20, 5, NULL) != 0) return 9;
    int l = open_in("lease", O_RDWR | O_NONBLOCK);
    if (l >= 0 || errno != EWOULDBLOCK) return 10; /* a write open breaks the read lease */
    return 0;
}

static volatile sig_atomic_t lease_broken;
static void on_io(int s) { (void)s; lease_broken = 1; }

int main(int argc, char **argv) {
    zt_init(argc, argv);
    CHECK(argc >= 4, "usage: out go dir");
    snprintf(dir, sizeof dir, "%s", argv[3]);
    signal(SIGIO, on_io);
    int ex = open_in("flock-ex", O_RDWR);
    CHECK(ex >= 0 && flock(ex, LOCK_EX | LOCK_NB) == 0, "flock ex");
    pid_t sharer = fork();
    if (sharer == 0)
        for (;;) pause(); /* shares the flock'ed description */
    close(ex); /* the child's copy holds the lock now */
    int sh = open_in("flock-sh", O_RDWR);
    CHECK(sh >= 0 && flock(sh, LOCK_SH | LOCK_NB) == 0, "flock sh");
    int px = open_in("posix", O_RDWR);
    CHECK(px >= 0 && posix_test(px, F_SETLK, F_WRLCK, 0, 10, NULL) == 0, "posix write lock");
    CHECK(posix_test(px, F_SETLK, F_RDLCK, 100, 0, NULL) == 0, "posix read lock to EOF");
    int px2 = dup(px);
    CHECK(px2 >= 0, "dup");
    int ofd = open_in("ofd", O_RDWR);
    CHECK(ofd >= 0 && posix_test(ofd, F_OFD_SETLK, F_WRLCK, 5, 10, NULL) == 0, "ofd lock");
    int le = open_in("lease", O_RDONLY);
    CHECK(le >= 0 && fcntl(le, F_SETLEASE, F_RDLCK) == 0, "lease (errno %d)", errno);
    say("ready");
    wait_go(argv[2]);
    CHECK(fcntl(le, F_GETLEASE) == F_RDLCK, "lease kept: %d", fcntl(le, F_GETLEASE));
    pid_t checker = fork();
    if (checker == 0) _exit(check_from_another_process(getppid()));
    int status;
    CHECK(waitpid(checker, &status, 0) == checker && WIFEXITED(status), "checker");
    CHECK(WEXITSTATUS(status) == 0, "another process was granted a lock it must be refused (check %d)", WEXITSTATUS(status));
    /* Our own POSIX locks are ours: we may change them. */
    CHECK(posix_test(px2, F_SETLK, F_UNLCK, 0, 0, NULL) == 0, "unlock");
    CHECK(fcntl(le, F_SETLEASE, F_UNLCK) == 0, "lease released");
    kill(sharer, SIGKILL);
    waitpid(sharer, NULL, 0);
    say("ok");
    return 0;
}
