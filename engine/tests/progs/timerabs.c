/* Timerfds armed with settime flags. fd 10: CLOCK_REALTIME, TFD_TIMER_ABSTIME |
 * TFD_TIMER_CANCEL_ON_SET, deadline D = now + 3600 s; fd 11: CLOCK_REALTIME, absolute, deadline
 * now + 300 s, then every 7 s; fd 12: CLOCK_MONOTONIC, absolute, now + 1800 s; fd 13:
 * CLOCK_MONOTONIC, relative, 900 s. The test waits a few seconds between the checkpoint and
 * the restore. After it: each timer's flags are as armed (fdinfo "settime flags"); the
 * wall-clock ones still expire at their time of day (time left = deadline - now, not the time
 * left at the checkpoint); the others have at most the time they had left. */
#include "zaptest.h"
#include <errno.h>
#include <stdint.h>
#include <sys/timerfd.h>
#include <time.h>

static double now(clockid_t c) {
    struct timespec t;
    clock_gettime(c, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void arm(int want, clockid_t c, int flags, double value, double interval) {
    int fd = timerfd_create(c, TFD_NONBLOCK);
    CHECK(fd >= 0 && dup2(fd, want) == want, "timerfd_create");
    close(fd);
    struct itimerspec its = {{(time_t)interval, 0}, {(time_t)value, (long)((value - (time_t)value) * 1e9)}};
    CHECK(timerfd_settime(want, flags, &its, NULL) == 0, "timerfd_settime %d: errno %d", want, errno);
}

static unsigned settime_flags(int fd) {
    char p[64], buf[1024];
    snprintf(p, sizeof p, "/proc/self/fdinfo/%d", fd);
    int f = open(p, O_RDONLY);
    ssize_t n = read(f, buf, sizeof buf - 1);
    close(f);
    CHECK(n > 0, "read fdinfo %d", fd);
    buf[n] = 0;
    char *s = strstr(buf, "settime flags:");
    CHECK(s, "fdinfo %d has settime flags", fd);
    return (unsigned)strtoul(s + 14, NULL, 8);
}

static double left(int fd) {
    struct itimerspec its;
    CHECK(timerfd_gettime(fd, &its) == 0, "timerfd_gettime %d", fd);
    return its.it_value.tv_sec + its.it_value.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    double d10 = (time_t)now(CLOCK_REALTIME) + 3600, d11 = (time_t)now(CLOCK_REALTIME) + 300;
    arm(10, CLOCK_REALTIME, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, d10, 0);
    arm(11, CLOCK_REALTIME, TFD_TIMER_ABSTIME, d11, 7);
    double mono = now(CLOCK_MONOTONIC);
    arm(12, CLOCK_MONOTONIC, TFD_TIMER_ABSTIME, (time_t)mono + 1800, 0);
    arm(13, CLOCK_MONOTONIC, 0, 900, 0);
    double l12 = left(12), l13 = left(13);
    say("ready");
    wait_go(argv[2]);
    CHECK(settime_flags(10) == (TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET), "fd 10 flags %o", settime_flags(10));
    CHECK(settime_flags(11) == TFD_TIMER_ABSTIME, "fd 11 flags %o", settime_flags(11));
    CHECK(settime_flags(12) == TFD_TIMER_ABSTIME, "fd 12 flags %o", settime_flags(12));
    CHECK(settime_flags(13) == 0, "fd 13 flags %o", settime_flags(13));
    double t = now(CLOCK_REALTIME);
    CHECK(left(10) > d10 - t - 0.5 && left(10) < d10 - t + 0.5, "fd 10 expires at its time of day: %.3f s left, %.3f to go", left(10), d10 - t);
    CHECK(left(11) > d11 - t - 0.5 && left(11) < d11 - t + 0.5, "fd 11 expires at its time of day: %.3f s left, %.3f to go", left(11), d11 - t);
    CHECK(left(12) <= l12 && left(12) > l12 - 600, "fd 12: %.3f s left, had %.3f", left(12), l12);
    CHECK(left(13) <= l13 && left(13) > l13 - 600, "fd 13: %.3f s left, had %.3f", left(13), l13);
    uint64_t ticks;
    CHECK(read(10, &ticks, 8) < 0 && errno == EAGAIN, "fd 10 has not expired (errno %d)", errno);
    say("ok");
    return 0;
}
