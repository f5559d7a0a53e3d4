/* argv[3] MiB of anonymous memory, every other page zero and the others random (xorshift);
 * after the go file, checks every page (then forks a child that checks them all again, to
 * exercise a fork while a lazy restore is still loading) and says ok. */
#include "zaptest.h"
#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>

static long walk(uint8_t *p, size_t pages, int check) {
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < pages; i++) {
        uint8_t *pg = p + i * 4096;
        if (i % 2 == 0) {
            if (!check) memset(pg, 0, 4096);
            else for (int j = 0; j < 4096; j += 8) if (*(uint64_t *)(pg + j)) return (long)i;
            continue;
        }
        for (int j = 0; j < 4096; j += 8) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            if (!check) memcpy(pg + j, &x, 8);
            else if (memcmp(pg + j, &x, 8)) return (long)i;
        }
    }
    return -1;
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    size_t pages = strtoul(argc > 3 ? argv[3] : "64", 0, 10) * 256;
    uint8_t *p = mmap(0, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(p != MAP_FAILED, "mmap");
    walk(p, pages, 0);
    say("ready");
    wait_go(argv[2]);
    pid_t child = fork();
    CHECK(child >= 0, "fork");
    long bad = walk(p, pages, 1);
    if (child == 0) _exit(bad < 0 ? 0 : 1);
    CHECK(bad < 0, "page %ld differs", bad);
    int st = 0;
    CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child saw other memory (status %d)", st);
    say("ok");
    return 0;
}
