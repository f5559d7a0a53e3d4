/* Holds argv[1] MiB of anonymous memory: half zero pages, a quarter text-like, a quarter random
 * (xorshift), every page touched; then creates the file argv[2] and sleeps. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static const char TEXT[] = "GET /index.html HTTP/1.1\r\nHost: pod.local\r\nuser_id=1234;session=abcdef; ";

static void fill(uint8_t *p, size_t pages, int check, int *bad) {
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < pages; i++) {
        uint8_t *pg = p + i * 4096;
        switch (i % 4) {
        case 0:
        case 1:
            if (!check) memset(pg, 0, 4096);
            else for (int j = 0; j < 4096; j++) if (pg[j]) { *bad = 1; return; }
            break;
        case 2:
            for (int j = 0; j < 4096; j++) {
                uint8_t v = (uint8_t)TEXT[(j + i) % (sizeof TEXT - 1)];
                if (!check) pg[j] = v; else if (pg[j] != v) { *bad = 1; return; }
            }
            break;
        default:
            for (int j = 0; j < 4096; j += 8) {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                if (!check) memcpy(pg + j, &x, 8); else if (memcmp(pg + j, &x, 8)) { *bad = 1; return; }
            }
        }
    }
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    size_t pages = strtoul(argv[1], 0, 10) * 256;
    uint8_t *p = mmap(0, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 1;
    int bad = 0;
    fill(p, pages, 0, &bad);
    FILE *f = fopen(argv[2], "w");
    if (!f) return 3;
    fclose(f);
    for (;;) pause();
}
