/* A pseudo-terminal made in the pod, as `script` or a terminal emulator makes one: we hold the
 * master (packet mode on, window 33x111), a child session leader has the slave as its
 * controlling terminal on fds 0-2 (echo off) and /dev/tty open, its child (a grandchild of ours)
 * runs in its own process group, which is the terminal's foreground group; a second pty stays
 * locked. After the restore: the same ptsname, termios, window size, packet mode, lock state;
 * the leader still has its controlling terminal, session and foreground group; the grandchild
 * can open /dev/tty; a line written to the master reaches the foreground job, whose answer comes
 * back through the master. */
#include "zaptest.h"
#include <errno.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>

static char name[64], name2[64];

static int grandchild(void) {
    char line[64];
    /* Waits for the line the parent types after the restore. */
    ssize_t n = read(0, line, sizeof line - 1);
    if (n <= 0) return 10;
    line[n] = 0;
    if (strncmp(line, "hello", 5)) return 11;
    int t = open("/dev/tty", O_RDWR);
    if (t < 0) return 12;
    if (tcgetpgrp(t) != getpgrp()) return 13;
    dprintf(1, "answer %s\n", ttyname(0) && strcmp(ttyname(0), name) == 0 ? "same-tty" : "OTHER-TTY");
    return 0;
}

static int leader(void) {
    if (setsid() < 0) return 20;
    int s = open(name, O_RDWR); /* becomes the controlling terminal */
    if (s < 0) return 21;
    dup2(s, 0), dup2(s, 1), dup2(s, 2);
    if (s > 2) close(s);
    struct termios t;
    tcgetattr(0, &t);
    t.c_lflag &= ~ECHO;
    tcsetattr(0, TCSANOW, &t);
    int tty = open("/dev/tty", O_RDWR);
    if (tty < 0) return 22;
    pid_t g = fork();
    if (g == 0) {
        setpgid(0, 0);
        _exit(grandchild());
    }
    setpgid(g, g);
    signal(SIGTTOU, SIG_IGN);
    if (tcsetpgrp(0, g) != 0) return 23;
    int st;
    if (waitpid(g, &st, 0) != g || !WIFEXITED(st)) return 24;
    if (WEXITSTATUS(st)) return WEXITSTATUS(st);
    /* After the job: the leader's view of its terminal. */
    if (tcgetsid(0) != getsid(0) || getsid(0) != getpid()) return 25;
    if (tcgetattr(tty, &t) != 0 || (t.c_lflag & ECHO)) return 26;
    struct winsize ws;
    if (ioctl(0, TIOCGWINSZ, &ws) != 0 || ws.ws_row != 33 || ws.ws_col != 111) return 27;
    return 0;
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    int m = posix_openpt(O_RDWR | O_NOCTTY);
    CHECK(m >= 0 && grantpt(m) == 0 && unlockpt(m) == 0, "posix_openpt");
    snprintf(name, sizeof name, "%s", ptsname(m));
    struct winsize ws = {.ws_row = 33, .ws_col = 111};
    CHECK(ioctl(m, TIOCSWINSZ, &ws) == 0, "window size");
    int one = 1;
    CHECK(ioctl(m, TIOCPKT, &one) == 0, "packet mode");
    int locked = posix_openpt(O_RDWR | O_NOCTTY);
    CHECK(locked >= 0, "second pty");
    snprintf(name2, sizeof name2, "%s", ptsname(locked));
    pid_t l = fork();
    if (l == 0) _exit(leader());
    /* Wait until the job is in the foreground (its pgrp differs from the leader's). */
    for (int i = 0; i < 500; i++) {
        pid_t fg = -1;
        if (ioctl(m, TIOCGPGRP, &fg) == 0 && fg > 0 && fg != l) break;
        usleep(2000);
    }
    say("ready");
    wait_go(argv[2]);
    CHECK(strcmp(ptsname(m), name) == 0, "same pty: %s, was %s", ptsname(m), name);
    CHECK(strcmp(ptsname(locked), name2) == 0, "same second pty: %s, was %s", ptsname(locked), name2);
    int lk = 0;
    CHECK(ioctl(locked, TIOCGPTLCK, &lk) == 0 && lk == 1, "second pty still locked");
    int pk = 0;
    CHECK(ioctl(m, TIOCGPKT, &pk) == 0 && pk == 1, "packet mode kept");
    pid_t sid = -1;
    CHECK(ioctl(m, TIOCGSID, &sid) == 0 && sid == l, "session %d, want %d", sid, l);
    CHECK(write(m, "hello\n", 6) == 6, "type a line");
    char buf[256] = {0};
    size_t got = 0;
    for (int i = 0; i < 200 && !strstr(buf, "\n"); i++) {
        ssize_t n = read(m, buf + got, sizeof buf - 1 - got);
        if (n > 0 && buf[got] == 0) { /* packet header TIOCPKT_DATA */
            memmove(buf + got, buf + got + 1, n - 1);
            got += n - 1;
        } else if (n > 0) {
            continue; /* a control packet */
        }
        buf[got] = 0;
    }
    CHECK(strstr(buf, "answer same-tty") != NULL, "the foreground job answered: %s", buf);
    int st;
    CHECK(waitpid(l, &st, 0) == l && WIFEXITED(st), "leader");
    CHECK(WEXITSTATUS(st) == 0, "leader check %d", WEXITSTATUS(st));
    say("ok");
    return 0;
}
