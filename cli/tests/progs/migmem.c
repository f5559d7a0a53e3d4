/* A memory-holding program for migration tests: argv[1] MiB of anonymous memory whose page i at
 * generation g holds a pattern computed from (i, g): zero for even generation-0 pages of a half
 * of them, text-like for a quarter, random for the rest. Each 100 ms it rewrites argv[2] per mille
 * of its pages (1% per second at 10), chosen at random, moving their generation on. The table of
 * generations lives in its memory too. On SIGUSR1 it checks every page against the pattern its
 * generation gives and writes "ok PAGES WRITES" or "bad page N" to argv[3]; it says ready by
 * creating argv[4]. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t check;
static void on_usr1(int s) { (void)s; check = 1; }

static uint64_t mix(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull; x ^= x >> 33;
    return x;
}

static void fill(uint8_t *pg, size_t i, uint32_t g, int verify, int *bad) {
    uint8_t tmp[4096];
    uint8_t *out = verify ? tmp : pg;
    if (i % 4 < 2 && g == 0) {
        memset(out, 0, 4096);
    } else if (i % 4 == 2) {
        for (int j = 0; j < 4096; j++) out[j] = (uint8_t)("GET /index.html HTTP/1.1 host: zap "[(j + i + g) % 35]);
    } else {
        uint64_t x = mix(i * 0x9e3779b97f4a7c15ull + g + 1);
        for (int j = 0; j < 4096; j += 8) { x = mix(x); memcpy(out + j, &x, 8); }
    }
    if (verify && memcmp(tmp, pg, 4096) != 0) *bad = 1;
}

int main(int argc, char **argv) {
    if (argc < 5) return 2;
    size_t pages = (size_t)atoi(argv[1]) * 256;
    int permille = atoi(argv[2]);
    uint8_t *p = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint32_t *gen = mmap(NULL, pages * 4, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED || gen == MAP_FAILED) return 3;
    for (size_t i = 0; i < pages; i++) fill(p + i * 4096, i, 0, 0, NULL);
    signal(SIGUSR1, on_usr1);
    FILE *r = fopen(argv[4], "w");
    if (r) fclose(r);
    uint64_t x = (uint64_t)time(NULL) | 1, writes = 0;
    for (;;) {
        if (check) {
            check = 0;
            size_t badpage = (size_t)-1;
            for (size_t i = 0; i < pages && badpage == (size_t)-1; i++) {
                int bad = 0;
                fill(p + i * 4096, i, gen[i], 1, &bad);
                if (bad) badpage = i;
            }
            char tmp[600];
            snprintf(tmp, sizeof tmp, "%s.tmp", argv[3]);
            FILE *f = fopen(tmp, "w");
            if (f) {
                if (badpage == (size_t)-1) fprintf(f, "ok %zu %llu\n", pages, (unsigned long long)writes);
                else fprintf(f, "bad page %zu gen %u\n", badpage, gen[badpage]);
                fclose(f);
                rename(tmp, argv[3]);
            }
        }
        for (size_t k = 0; k < pages * (size_t)permille / 1000; k++) {
            x = mix(x);
            size_t i = x % pages;
            gen[i]++;
            fill(p + i * 4096, i, gen[i], 0, NULL);
            writes++;
        }
        usleep(100000);
    }
}
