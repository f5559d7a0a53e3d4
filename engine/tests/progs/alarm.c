/* Armed interval timers: alarm() with a SIGALRM handler, and a virtual-time interval timer.
 * After the restore the alarm still goes off (with the time it had left) and the virtual timer
 * is still armed. */
#include "zaptest.h"
#include <signal.h>
#include <sys/time.h>

static volatile sig_atomic_t rang;
static void on_alarm(int s) { (void)s; rang = 1; }

int main(int argc, char **argv) {
    zt_init(argc, argv);
    signal(SIGALRM, on_alarm);
    alarm(2);
    struct itimerval v = {{5, 0}, {500, 0}};
    CHECK(setitimer(ITIMER_VIRTUAL, &v, NULL) == 0, "setitimer");
    say("ready");
    wait_go(argv[2]);
    CHECK(!rang, "alarm went off too early");
    struct itimerval cur;
    CHECK(getitimer(ITIMER_VIRTUAL, &cur) == 0 && cur.it_value.tv_sec > 400 && cur.it_interval.tv_sec == 5, "virtual timer kept");
    for (int i = 0; i < 400 && !rang; i++) usleep(10000);
    CHECK(rang, "alarm did not go off after the restore");
    say("ok");
    return 0;
}
