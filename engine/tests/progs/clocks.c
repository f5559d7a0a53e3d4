/* The clocks a pod's process sees, for the time namespace tests.
 *
 *   clocks print          every 10 ms (at most 100,000 times) writes one line to stdout:
 *                         "c MONOTONIC_NS BOOTTIME_NS UPTIME_CENTISECONDS" (the first field of
 *                         /proc/uptime), with write(2): nothing is buffered.
 *   clocks timer DELAY_MS arms a timerfd on CLOCK_MONOTONIC with an absolute time DELAY_MS from
 *                         now (TFD_TIMER_ABSTIME), writes "armed DEADLINE_NS", waits for it and
 *                         writes "fired MONOTONIC_NS EXPIRATIONS", then goes on as `print`.
 *   clocks sleep DELAY_MS sleeps with clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) until
 *                         DELAY_MS from now, writing "asleep DEADLINE_NS" before and
 *                         "woke MONOTONIC_NS" after, then goes on as `print`.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ns(clockid_t c) {
    struct timespec ts;
    if (clock_gettime(c, &ts) != 0) {
        perror("clock_gettime");
        exit(1);
    }
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void say(const char *line) {
    size_t len = strlen(line), off = 0;
    while (off < len) {
        ssize_t n = write(1, line + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            exit(1);
        off += (size_t)n;
    }
}

static long uptime_cs(void) {
    char buf[128];
    int fd = open("/proc/uptime", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    long s = 0, cs = 0;
    if (sscanf(buf, "%ld.%ld", &s, &cs) != 2)
        return -1;
    return s * 100 + cs;
}

static void print_loop(void) {
    char line[128];
    for (int i = 0; i < 100000; i++) {
        int64_t m = now_ns(CLOCK_MONOTONIC), b = now_ns(CLOCK_BOOTTIME);
        snprintf(line, sizeof line, "c %lld %lld %ld\n", (long long)m, (long long)b, uptime_cs());
        say(line);
        struct timespec d = {0, 10 * 1000 * 1000};
        while (nanosleep(&d, &d) != 0 && errno == EINTR) {
        }
    }
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "print") == 0) {
        print_loop();
        return 0;
    }
    if (argc >= 3 && strcmp(argv[1], "timer") == 0) {
        int fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
        if (fd < 0) {
            perror("timerfd_create");
            return 1;
        }
        int64_t deadline = now_ns(CLOCK_MONOTONIC) + (int64_t)atol(argv[2]) * 1000000;
        struct itimerspec its = {{0, 0}, {deadline / 1000000000, deadline % 1000000000}};
        if (timerfd_settime(fd, TFD_TIMER_ABSTIME, &its, NULL) != 0) {
            perror("timerfd_settime");
            return 1;
        }
        char line[128];
        snprintf(line, sizeof line, "armed %lld\n", (long long)deadline);
        say(line);
        uint64_t n = 0;
        while (read(fd, &n, sizeof n) != (ssize_t)sizeof n) {
            if (errno != EINTR) {
                perror("read timerfd");
                return 1;
            }
        }
        snprintf(line, sizeof line, "fired %lld %llu\n", (long long)now_ns(CLOCK_MONOTONIC), (unsigned long long)n);
        say(line);
        print_loop();
        return 0;
    }
    if (argc >= 3 && strcmp(argv[1], "sleep") == 0) {
        int64_t deadline = now_ns(CLOCK_MONOTONIC) + (int64_t)atol(argv[2]) * 1000000;
        struct timespec until = {deadline / 1000000000, deadline % 1000000000};
        char line[128];
        snprintf(line, sizeof line, "asleep %lld\n", (long long)deadline);
        say(line);
        int r;
        while ((r = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL)) == EINTR) {
        }
        if (r != 0) {
            fprintf(stderr, "clock_nanosleep: %s\n", strerror(r));
            return 1;
        }
        snprintf(line, sizeof line, "woke %lld\n", (long long)now_ns(CLOCK_MONOTONIC));
        say(line);
        print_loop();
        return 0;
    }
    fprintf(stderr, "usage: clocks print | clocks timer DELAY_MS | clocks sleep DELAY_MS\n");
    return 2;
}
