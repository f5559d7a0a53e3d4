/* POSIX timers: a periodic one signalling SIGUSR2 (20 ms) and a long one-shot SIGEV_NONE timer.
 * After the restore both keep their ids: the periodic one still signals, the other still has
 * most of its time left. */
#include "zaptest.h"
#include <signal.h>
#include <time.h>

static volatile sig_atomic_t fired;
static void on_usr2(int s) { (void)s; fired++; }

int main(int argc, char **argv) {
    zt_init(argc, argv);
    signal(SIGUSR2, on_usr2);
    timer_t periodic, idle;
    struct sigevent ev = {.sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGUSR2};
    CHECK(timer_create(CLOCK_MONOTONIC, &ev, &periodic) == 0, "timer_create periodic");
    struct sigevent none = {.sigev_notify = SIGEV_NONE};
    CHECK(timer_create(CLOCK_REALTIME, &none, &idle) == 0, "timer_create idle");
    struct itimerspec p = {{0, 20000000}, {0, 20000000}}, l = {{0, 0}, {600, 0}};
    CHECK(timer_settime(periodic, 0, &p, NULL) == 0 && timer_settime(idle, 0, &l, NULL) == 0, "settime");
    while (fired < 3) usleep(1000);
    say("ready");
    wait_go(argv[2]);
    int before = fired;
    for (int i = 0; i < 200 && fired < before + 5; i++) usleep(10000);
    CHECK(fired >= before + 5, "periodic timer signals after the restore (%d -> %d)", before, (int)fired);
    struct itimerspec cur;
    CHECK(timer_gettime(idle, &cur) == 0 && cur.it_value.tv_sec > 500, "idle timer kept its id and time");
    say("ok");
    return 0;
}
