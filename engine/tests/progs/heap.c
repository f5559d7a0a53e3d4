/* 256 MiB heap filled with a pattern; re-checked after restore. */
#include "zaptest.h"
#include <stdint.h>

int main(int argc, char **argv) {
    zt_init(argc, argv);
    size_t n = (256u << 20) / 8;
    uint64_t *p = malloc(n * 8);
    CHECK(p, "malloc");
    for (size_t i = 0; i < n; i++) p[i] = (i * 0x9E3779B97F4A7C15ull) ^ (i % 3 == 0 ? 0 : i);
    /* a quarter of the pages stay zero */
    for (size_t i = 0; i < n; i += 2048) memset(&p[i], 0, 4096);
    say("ready");
    wait_go(argv[2]);
    for (size_t i = 0; i < n; i++) {
        uint64_t want = (i % 2048 < 512) ? 0 : ((i * 0x9E3779B97F4A7C15ull) ^ (i % 3 == 0 ? 0 : i));
        CHECK(p[i] == want, "heap word %zu", i);
    }
    say("ok");
    return 0;
}
