/* Write-heavy workload for the tracker's overhead: holds argv[1] MiB (every page touched),
 * creates argv[2] when ready, waits for SIGUSR1, then writes 8 bytes into argv[3] million
 * random pages (every page is written many times) and writes the elapsed nanoseconds into
 * argv[4]. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }

static uint64_t now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 5) return 2;
    size_t pages = (size_t)atoi(argv[1]) * 256;
    uint64_t *p = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 3;
    for (size_t i = 0; i < pages; i++) p[i * 512] = i;
    signal(SIGUSR1, on_usr1);
    FILE *r = fopen(argv[2], "w");
    if (r) fclose(r);
    while (!go) pause();
    uint64_t x = 88172645463325252ull, n = (uint64_t)atoi(argv[3]) * 1000000ull, t0 = now();
    for (uint64_t k = 0; k < n; k++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        p[(x % pages) * 512 + (x >> 60)] = k;
    }
    uint64_t dt = now() - t0;
    FILE *f = fopen(argv[4], "w");
    if (!f) return 4;
    fprintf(f, "%llu\n", (unsigned long long)dt);
    fclose(f);
    return 0;
}
