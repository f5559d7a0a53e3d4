/* A periodic timerfd (20 ms), a disarmed non-blocking timerfd, and a signalfd for a blocked
 * SIGUSR1: after the restore the timer still fires, the disarmed one stays disarmed and keeps
 * O_NONBLOCK, and the signalfd reads a SIGUSR1 sent then. */
#include "zaptest.h"
#include <signal.h>
#include <stdint.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>

int main(int argc, char **argv) {
    zt_init(argc, argv);
    int t = timerfd_create(CLOCK_MONOTONIC, 0);
    struct itimerspec its = {{0, 20000000}, {0, 20000000}};
    CHECK(t >= 0 && timerfd_settime(t, 0, &its, NULL) == 0, "timerfd");
    int idle = timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK);
    CHECK(idle >= 0, "idle timerfd");
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR1);
    CHECK(sigprocmask(SIG_BLOCK, &m, NULL) == 0, "block");
    int s = signalfd(-1, &m, 0);
    CHECK(s >= 0, "signalfd");
    uint64_t n;
    CHECK(read(t, &n, 8) == 8, "first tick");
    say("ready");
    wait_go(argv[2]);
    CHECK(read(t, &n, 8) == 8 && n >= 1, "tick after restore");
    CHECK(read(t, &n, 8) == 8 && n >= 1, "another tick");
    struct itimerspec cur;
    CHECK(timerfd_gettime(idle, &cur) == 0 && cur.it_value.tv_sec == 0 && cur.it_value.tv_nsec == 0, "idle timer stays disarmed");
    CHECK(read(idle, &n, 8) == -1, "idle timer is non-blocking");
    CHECK(kill(getpid(), SIGUSR1) == 0, "kill");
    struct signalfd_siginfo si;
    CHECK(read(s, &si, sizeof si) == sizeof si && si.ssi_signo == SIGUSR1, "signalfd reads SIGUSR1");
    say("ok");
    return 0;
}
