/* A statically linked program that calls the legacy vsyscall page (time() at 0xffffffffff600400
 * and gettimeofday() at 0xffffffffff600000, as very old static binaries do) before and after
 * the restore. */
#include "zaptest.h"
#include <sys/time.h>
#include <time.h>

typedef long (*vtime_t)(long *);
typedef int (*vgtod_t)(struct timeval *, void *);

static int sane(void) {
    vtime_t vt = (vtime_t)0xffffffffff600400UL;
    vgtod_t vg = (vgtod_t)0xffffffffff600000UL;
    struct timeval tv;
    long t1 = vt(NULL);
    int r = vg(&tv, NULL);
    long now = time(NULL);
    return r == 0 && t1 > 1600000000 && t1 <= now && now - tv.tv_sec < 5;
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    CHECK(sane(), "vsyscall before");
    say("ready");
    wait_go(argv[2]);
    CHECK(sane(), "vsyscall after");
    say("ok");
    return 0;
}
