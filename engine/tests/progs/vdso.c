/* clock_gettime and gettimeofday through the vDSO in a loop: after restore the calls must keep
 * working and the monotonic clock keep moving forward. */
#include "zaptest.h"
#include <sys/time.h>
#include <time.h>

int main(int argc, char **argv) {
    zt_init(argc, argv);
    struct timespec last = {0};
    unsigned long calls = 0;
    say("ready");
    for (;;) {
        struct timespec now;
        struct timeval tv;
        clock_gettime(CLOCK_MONOTONIC, &now);
        gettimeofday(&tv, 0);
        CHECK(tv.tv_sec > 1600000000, "gettimeofday %ld", (long)tv.tv_sec);
        CHECK(now.tv_sec > last.tv_sec || (now.tv_sec == last.tv_sec && now.tv_nsec >= last.tv_nsec), "monotonic went back");
        last = now;
        if (++calls % 200000 == 0) {
            struct stat st;
            if (stat(argv[2], &st) == 0) { say("ok %lu", calls); return 0; }
        }
    }
}
