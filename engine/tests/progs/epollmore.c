/* Epoll corner cases and counters:
 *   - an epoll watch whose fd was closed while a dup of the file stays open (the watch lives on
 *     under the old number), and one whose file only a forked child still holds;
 *   - an EPOLLONESHOT watch that already fired (disarmed: no event until EPOLL_CTL_MOD);
 *   - an EPOLLEXCLUSIVE watch (EPOLL_CTL_MOD must still refuse it) and an edge-triggered one;
 *   - a periodic 2 ms timerfd left unread for 60 ms (about 30 expirations must come back as the
 *     same count), and an expired one-shot timerfd;
 *   - an eventfd in semaphore mode holding 3; a signalfd with SFD_NONBLOCK|SFD_CLOEXEC. */
#include "zaptest.h"
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <time.h>

static int wait_one(int ep, int ms, uint64_t *data) {
    struct epoll_event ev;
    int n = epoll_wait(ep, &ev, 1, ms);
    if (n == 1 && data) *data = ev.data.u64;
    return n;
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    int ep = epoll_create1(0);
    int moved[2], kidp[2];
    CHECK(ep >= 0 && pipe(moved) == 0 && pipe(kidp) == 0, "setup");
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0x1111};
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, moved[0], &ev) == 0, "watch moved");
    int kept = dup(moved[0]);
    CHECK(kept >= 0 && close(moved[0]) == 0, "close the watched number");
    ev.data.u64 = 0x2222;
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, kidp[0], &ev) == 0, "watch kid pipe");
    pid_t kid = fork();
    if (kid == 0)
        for (;;) pause(); /* holds kidp[0] */
    CHECK(close(kidp[0]) == 0, "only the child holds it now");
    int one = eventfd(1, 0);
    ev.events = EPOLLIN | EPOLLONESHOT;
    ev.data.u64 = 0x3333;
    CHECK(one >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, one, &ev) == 0, "oneshot");
    uint64_t d = 0;
    CHECK(wait_one(ep, 1000, &d) == 1 && d == 0x3333, "oneshot fires once");
    int excl = eventfd(0, 0);
    ev.events = EPOLLIN | EPOLLEXCLUSIVE;
    ev.data.u64 = 0x4444;
    CHECK(excl >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, excl, &ev) == 0, "exclusive");
    int edge = eventfd(0, 0);
    ev.events = EPOLLIN | EPOLLET;
    ev.data.u64 = 0x5555;
    CHECK(edge >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, edge, &ev) == 0, "edge");
    CHECK(wait_one(ep, 0, NULL) == 0, "nothing ready before");
    int per = timerfd_create(CLOCK_MONOTONIC, 0);
    struct itimerspec its = {{0, 2000000}, {0, 2000000}};
    CHECK(per >= 0 && timerfd_settime(per, 0, &its, NULL) == 0, "periodic timer");
    int shot = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct itimerspec once = {{0, 0}, {0, 1000000}};
    CHECK(shot >= 0 && timerfd_settime(shot, 0, &once, NULL) == 0, "one-shot timer");
    usleep(60000);
    int sem = eventfd(3, EFD_SEMAPHORE);
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR2);
    sigprocmask(SIG_BLOCK, &m, NULL);
    int sfd = signalfd(-1, &m, SFD_NONBLOCK | SFD_CLOEXEC);
    CHECK(sem >= 0 && sfd >= 0, "eventfd, signalfd");
    say("ready");
    wait_go(argv[2]);
    uint64_t n = 0;
    CHECK(read(per, &n, 8) == 8 && n >= 29, "periodic timer: %llu expirations unread, want about 30 or more", (unsigned long long)n);
    CHECK(read(per, &n, 8) == 8 && n >= 1 && n < 1000, "periodic timer runs on: %llu", (unsigned long long)n);
    CHECK(read(shot, &n, 8) == 8 && n == 1, "one-shot expiration kept");
    CHECK(read(shot, &n, 8) == -1 && errno == EAGAIN, "one-shot read once");
    for (int i = 0; i < 3; i++) CHECK(read(sem, &n, 8) == 8 && n == 1, "semaphore read %d", i);
    CHECK(fcntl(sem, F_SETFL, O_NONBLOCK) == 0 && read(sem, &n, 8) == -1 && errno == EAGAIN, "semaphore empty");
    CHECK((fcntl(sfd, F_GETFL) & O_NONBLOCK) && (fcntl(sfd, F_GETFD) & FD_CLOEXEC), "signalfd flags");
    struct signalfd_siginfo si;
    CHECK(read(sfd, &si, sizeof si) == -1 && errno == EAGAIN, "signalfd non-blocking");
    CHECK(wait_one(ep, 50, NULL) == 0, "nothing ready after the restore (oneshot stays disarmed)");
    CHECK(write(moved[1], "m", 1) == 1 && wait_one(ep, 1000, &d) == 1 && d == 0x1111, "watch of the closed number: %llx", (unsigned long long)d);
    char c;
    CHECK(read(kept, &c, 1) == 1, "drain");
    CHECK(write(kidp[1], "k", 1) == 1 && wait_one(ep, 1000, &d) == 1 && d == 0x2222, "watch of the child's file: %llx", (unsigned long long)d);
    kill(kid, SIGKILL);
    waitpid(kid, NULL, 0);
    CHECK(wait_one(ep, 50, NULL) == 0, "the watch went with the file");
    ev.events = EPOLLIN | EPOLLONESHOT;
    ev.data.u64 = 0x3333;
    CHECK(epoll_ctl(ep, EPOLL_CTL_MOD, one, &ev) == 0 && wait_one(ep, 1000, &d) == 1 && d == 0x3333, "oneshot re-armed");
    ev.events = EPOLLIN;
    CHECK(epoll_ctl(ep, EPOLL_CTL_MOD, excl, &ev) == -1 && errno == EINVAL, "EPOLLEXCLUSIVE kept (MOD refused)");
    n = 1;
    CHECK(write(edge, &n, 8) == 8 && wait_one(ep, 1000, &d) == 1 && d == 0x5555, "edge fires");
    CHECK(wait_one(ep, 50, NULL) == 0, "edge-triggered: once");
    say("ok");
    return 0;
}
