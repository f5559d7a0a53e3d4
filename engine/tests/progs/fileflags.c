/* Open flags and file kinds, in argv[3] (a directory of ours):
 *   O_PATH descriptors of a file and of a directory; files opened with O_APPEND, O_NONBLOCK,
 *   O_NOATIME, O_SYNC, O_DSYNC, O_DIRECT and O_RDONLY/O_WRONLY; a pipe with O_ASYNC whose
 *   signal owner is this process (F_SETOWN_EX) and whose signal is SIGRTMIN+1 (F_SETSIG);
 *   a directory deleted while open; a sparse deleted file of 200 MiB with data at 0 and at
 *   150 MiB only (holes must stay holes); a deleted file with 80 MiB of data (over what the
 *   checkpoint's state may hold: it goes to the chunk store); a pidfd of a child and one of an
 *   exited child not reaped yet. */
#include "zaptest.h"
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>

static char dir[512];
static char *in_dir(const char *name) {
    static char p[8][700];
    static int i;
    i = (i + 1) % 8;
    snprintf(p[i], sizeof p[i], "%s/%s", dir, name);
    return p[i];
}

static volatile sig_atomic_t got_sig, got_fd;
static void on_rt(int s, siginfo_t *si, void *c) { (void)c; got_sig = s; got_fd = si->si_fd; }

#define MASK (O_ACCMODE | O_APPEND | O_NONBLOCK | O_NOATIME | O_SYNC | O_DSYNC | O_DIRECT | O_ASYNC | O_PATH)

int main(int argc, char **argv) {
    zt_init(argc, argv);
    CHECK(argc >= 4, "usage: out go dir");
    snprintf(dir, sizeof dir, "%s", argv[3]);
    int w = open(in_dir("plain"), O_CREAT | O_RDWR, 0600);
    CHECK(w >= 0 && write(w, "0123456789", 10) == 10, "plain");
    int opath = open(in_dir("plain"), O_PATH);
    int dpath = open(dir, O_PATH | O_DIRECTORY);
    int app = open(in_dir("plain"), O_WRONLY | O_APPEND);
    int nb = open(in_dir("plain"), O_RDONLY | O_NONBLOCK | O_NOATIME);
    int sync = open(in_dir("plain"), O_WRONLY | O_SYNC);
    int dsync = open(in_dir("plain"), O_RDWR | O_DSYNC);
    int direct = open(in_dir("direct"), O_CREAT | O_RDWR | O_DIRECT, 0600);
    CHECK(opath >= 0 && dpath >= 0 && app >= 0 && nb >= 0 && sync >= 0 && dsync >= 0, "opens");
    int fds[] = {opath, dpath, app, nb, sync, dsync, direct};
    int want[7];
    for (int i = 0; i < 7; i++) want[i] = fds[i] < 0 ? -1 : (fcntl(fds[i], F_GETFL) & MASK);
    /* O_ASYNC pipe signalling us with SIGRTMIN+1. */
    struct sigaction sa = {.sa_sigaction = on_rt, .sa_flags = SA_SIGINFO};
    sigaction(SIGRTMIN + 1, &sa, NULL);
    int ap[2];
    CHECK(pipe(ap) == 0, "pipe");
    struct f_owner_ex own = {.type = F_OWNER_PID, .pid = getpid()};
    CHECK(fcntl(ap[0], F_SETOWN_EX, &own) == 0 && fcntl(ap[0], F_SETSIG, SIGRTMIN + 1) == 0, "owner");
    CHECK(fcntl(ap[0], F_SETFL, O_ASYNC | O_NONBLOCK) == 0, "O_ASYNC");
    /* A directory deleted while open. */
    CHECK(mkdir(in_dir("gone-dir"), 0700) == 0, "mkdir");
    int gd = open(in_dir("gone-dir"), O_RDONLY | O_DIRECTORY);
    CHECK(gd >= 0 && rmdir(in_dir("gone-dir")) == 0, "rmdir");
    /* A sparse deleted file. */
    int sp = open(in_dir("sparse"), O_CREAT | O_RDWR, 0600);
    CHECK(sp >= 0 && pwrite(sp, "head", 4, 0) == 4 && pwrite(sp, "tail", 4, 150 << 20) == 4, "sparse");
    CHECK(ftruncate(sp, 200 << 20) == 0 && unlink(in_dir("sparse")) == 0 && lseek(sp, 7, SEEK_SET) == 7, "sparse size");
    /* 80 MiB of data in a deleted file. */
    int big = open(in_dir("big"), O_CREAT | O_RDWR, 0600);
    CHECK(big >= 0 && unlink(in_dir("big")) == 0, "big");
    static unsigned blk[1 << 18]; /* 1 MiB */
    unsigned long long sum = 0;
    for (int m = 0; m < 80; m++) {
        for (int i = 0; i < (1 << 18); i++) blk[i] = (unsigned)(m * 2654435761u + i * 40503u);
        CHECK(write(big, blk, sizeof blk) == (ssize_t)sizeof blk, "write big");
        for (int i = 0; i < (1 << 18); i++) sum += blk[i];
    }
    /* A pidfd of a child. */
    pid_t kid = fork();
    if (kid == 0)
        for (;;) pause();
    int pfd = syscall(SYS_pidfd_open, kid, 0);
    CHECK(pfd >= 0, "pidfd_open");
    /* And of a child that has exited, not reaped yet (a zombie). */
    pid_t gone = fork();
    if (gone == 0) _exit(7);
    int zfd = syscall(SYS_pidfd_open, gone, 0);
    CHECK(zfd >= 0, "pidfd_open zombie");
    siginfo_t zi = {0};
    CHECK(waitid(P_PID, gone, &zi, WEXITED | WNOWAIT) == 0, "zombie");
    say("ready");
    wait_go(argv[2]);
    for (int i = 0; i < 7; i++)
        if (fds[i] >= 0) CHECK((fcntl(fds[i], F_GETFL) & MASK) == want[i], "fd %d flags %o, want %o", fds[i], fcntl(fds[i], F_GETFL) & MASK, want[i]);
    struct stat a, b;
    CHECK(fstat(opath, &a) == 0 && stat(in_dir("plain"), &b) == 0 && a.st_ino == b.st_ino, "O_PATH file");
    CHECK(fstatat(dpath, "plain", &a, 0) == 0 && a.st_ino == b.st_ino, "O_PATH directory");
    CHECK(write(app, "AB", 2) == 2 && pread(w, &a, 2, 10) == 2 && memcmp(&a, "AB", 2) == 0, "O_APPEND writes at the end");
    CHECK(fcntl(ap[0], F_GETSIG) == SIGRTMIN + 1, "F_SETSIG kept");
    CHECK(fcntl(ap[0], F_GETOWN_EX, &own) == 0 && own.type == F_OWNER_PID && own.pid == getpid(), "owner kept: %d/%d", own.type, own.pid);
    CHECK(write(ap[1], "s", 1) == 1, "write to the async pipe");
    for (int i = 0; i < 500 && !got_sig; i++) usleep(1000);
    CHECK(got_sig == SIGRTMIN + 1 && got_fd == ap[0], "I/O signal %d for fd %d", got_sig, got_fd);
    CHECK(fstat(gd, &a) == 0 && S_ISDIR(a.st_mode) && a.st_nlink == 0, "deleted directory (nlink %ld)", (long)a.st_nlink);
    DIR *d = fdopendir(dup(gd));
    int entries = 0;
    for (struct dirent *e; d && (e = readdir(d));) entries += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    CHECK(d && entries == 0, "deleted directory is empty");
    CHECK(fstat(sp, &a) == 0 && a.st_size == (200 << 20) && a.st_nlink == 0, "sparse size %lld", (long long)a.st_size);
    CHECK(a.st_blocks * 512 < (4 << 20), "holes stay holes: %lld bytes allocated", (long long)a.st_blocks * 512);
    char buf[8] = {0};
    CHECK(pread(sp, buf, 4, 0) == 4 && memcmp(buf, "head", 4) == 0 && pread(sp, buf, 4, 150 << 20) == 4 && memcmp(buf, "tail", 4) == 0, "sparse data");
    CHECK(lseek(sp, 0, SEEK_CUR) == 7, "sparse offset");
    CHECK(lseek(sp, 4096, SEEK_HOLE) < (150 << 20), "a hole after the head");
    unsigned long long back = 0;
    CHECK(lseek(big, 0, SEEK_CUR) == 80 << 20 && lseek(big, 0, SEEK_END) == 80 << 20, "big offset and size");
    for (int m = 0; m < 80; m++) {
        CHECK(pread(big, blk, sizeof blk, (off_t)m << 20) == (ssize_t)sizeof blk, "read big");
        for (int i = 0; i < (1 << 18); i++) back += blk[i];
    }
    CHECK(back == sum, "big contents");
    CHECK(syscall(SYS_pidfd_send_signal, pfd, SIGTERM, NULL, 0) == 0, "pidfd_send_signal (errno %d)", errno);
    int st;
    CHECK(waitpid(kid, &st, 0) == kid && WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM, "the pidfd named our child");
    zi.si_pid = 0;
    CHECK(waitid(P_PIDFD, zfd, &zi, WEXITED) == 0 && zi.si_pid == gone && zi.si_status == 7, "the pidfd of the zombie reaps it: %d %d", zi.si_pid, zi.si_status);
    say("ok");
    return 0;
}
