/* Holds argv[1] MiB like bigmem (half zero pages, a quarter text-like, a quarter random), says
 * ready by creating argv[2]/argv[3].0; then each SIGUSR1 makes it write to 1% of its pages
 * (spread at random) and create argv[2]/argv[3].N for the N-th round. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static volatile sig_atomic_t rounds;
static void on_usr1(int s) { (void)s; rounds++; }

static void mark(const char *dir, const char *id, int n) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s.%d", dir, id, n);
    FILE *f = fopen(p, "w");
    if (f) fclose(f);
}

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    size_t pages = (size_t)atoi(argv[1]) * 256;
    uint8_t *p = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 3;
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < pages; i++) {
        uint8_t *pg = p + i * 4096;
        switch (i % 4) {
        case 0: case 1: memset(pg, 0, 4096); break;
        case 2: for (int j = 0; j < 4096; j++) pg[j] = (uint8_t)("GET /index.html HTTP/1.1 "[(j + i) % 25]); break;
        default: for (int j = 0; j < 4096; j += 8) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; memcpy(pg + j, &x, 8); }
        }
    }
    signal(SIGUSR1, on_usr1);
    mark(argv[2], argv[3], 0);
    int done = 0;
    for (;;) {
        while (done == rounds) pause();
        done++;
        for (size_t k = 0; k < pages / 100; k++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            uint8_t *pg = p + (x % pages) * 4096;
            for (int j = 0; j < 4096; j += 512) pg[j] = (uint8_t)(x >> (j % 56));
        }
        mark(argv[2], argv[3], done);
    }
}
