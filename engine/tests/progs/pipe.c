/* A pipe holding 10000 unread bytes, and an eventfd with a count. */
#include "zaptest.h"
#include <sys/eventfd.h>
#include <stdint.h>

int main(int argc, char **argv) {
    zt_init(argc, argv);
    int p[2];
    CHECK(pipe(p) == 0, "pipe");
    unsigned char buf[10000];
    for (int i = 0; i < 10000; i++) buf[i] = (unsigned char)(i * 7);
    CHECK(write(p[1], buf, sizeof buf) == 10000, "fill");
    int e = eventfd(42, 0);
    CHECK(e >= 0, "eventfd");
    say("ready");
    wait_go(argv[2]);
    unsigned char got[10000];
    size_t have = 0;
    while (have < sizeof got) {
        ssize_t n = read(p[0], got + have, sizeof got - have);
        CHECK(n > 0, "pipe read after %zu bytes", have);
        have += n;
    }
    CHECK(memcmp(buf, got, sizeof buf) == 0, "pipe content");
    CHECK(write(p[1], "x", 1) == 1, "pipe write end");
    uint64_t v = 0;
    CHECK(read(e, &v, 8) == 8 && v == 42, "eventfd count %lu", (unsigned long)v);
    say("ok");
    return 0;
}
