/* The side-by-side bench's program (criu-bench): holds argv[1] MiB of anonymous memory, every
 * other page zero and the others random (xorshift), every page touched; creates the file argv[2]
 * when ready and sleeps. On SIGUSR1 it checks every page against what it wrote and creates
 * argv[2].ok or argv[2].bad, so a restored copy can be
 * checked page by page by the program itself, whatever restored it. Each SIGUSR2 changes 1% of
 * its pages, spread at random (the first word of each is XORed with a new value, recorded in a
 * table of its own so that the check still holds), then creates argv[2].N for round N. On
 * SIGWINCH it reads one word of every page, in a scattered order (a stride coprime with the page
 * count), and writes how long that took, in microseconds, to argv[2].touch (through a temporary
 * file and a rename): the bench's measure of the program's speed while its pages stream in
 * after a lazy restore (each first touch a fault the pager serves) and once they are all in. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t checks, dirties, touches;
static void on_usr1(int s) { (void)s; checks++; }
static void on_usr2(int s) { (void)s; dirties++; }
static void on_winch(int s) { (void)s; touches++; }

static size_t gcd(size_t a, size_t b) { while (b) { size_t t = a % b; a = b; b = t; } return a; }

/* Reads one word of every page in a scattered order; returns the microseconds it took. */
static long touch_all(const uint8_t *p, size_t pages) {
    size_t stride = 1000003;
    while (gcd(stride, pages) != 1) stride += 2;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    volatile uint64_t sum = 0;
    for (size_t k = 0, i = 0; k < pages; k++, i = (i + stride) % pages) sum += *(const volatile uint64_t *)(p + i * 4096);
    clock_gettime(CLOCK_MONOTONIC, &b);
    (void)sum;
    return (long)((b.tv_sec - a.tv_sec) * 1000000L + (b.tv_nsec - a.tv_nsec) / 1000);
}

static uint64_t *delta; /* per page: what its first word was XORed with */

static long walk(uint8_t *p, size_t pages, int check) {
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < pages; i++) {
        uint8_t *pg = p + i * 4096;
        if (i % 2 == 0) {
            if (!check) memset(pg, 0, 4096);
            else for (int j = 0; j < 4096; j += 8) if (*(uint64_t *)(pg + j) != (j ? 0 : delta[i])) return (long)i;
            continue;
        }
        for (int j = 0; j < 4096; j += 8) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            uint64_t want = j ? x : x ^ delta[i];
            if (!check) memcpy(pg + j, &x, 8);
            else if (memcmp(pg + j, &want, 8)) return (long)i;
        }
    }
    return -1;
}

static void mark(const char *base, const char *what) {
    char path[4096];
    snprintf(path, sizeof path, "%s.%s", base, what);
    FILE *f = fopen(path, "w");
    if (f) fclose(f);
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    size_t pages = strtoul(argv[1], 0, 10) * 256;
    uint8_t *p = mmap(0, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 1;
    delta = calloc(pages, sizeof *delta);
    if (!delta) return 1;
    walk(p, pages, 0);
    signal(SIGUSR1, on_usr1);
    signal(SIGUSR2, on_usr2);
    signal(SIGWINCH, on_winch);
    FILE *f = fopen(argv[2], "w");
    if (!f) return 3;
    fclose(f);
    int checked = 0, dirtied = 0, touched = 0;
    uint64_t r = 0x2545f4914f6cdd1dull;
    char what[32];
    for (;;) {
        /* Polling rather than pause(): no wake-up is lost, whatever restored the process. */
        while (checked == checks && dirtied == dirties && touched == touches) usleep(1000);
        if (touched != touches) {
            touched++;
            long us = touch_all(p, pages);
            char tmp[4096], dst[4096];
            snprintf(tmp, sizeof tmp, "%s.touch.tmp", argv[2]);
            snprintf(dst, sizeof dst, "%s.touch", argv[2]);
            FILE *t = fopen(tmp, "w");
            if (t) {
                fprintf(t, "%ld\n", us);
                fclose(t);
                rename(tmp, dst);
            }
        }
        if (checked != checks) {
            checked++;
            mark(argv[2], walk(p, pages, 1) < 0 ? "ok" : "bad");
        }
        if (dirtied != dirties) {
            dirtied++;
            for (size_t k = 0; k < pages / 100; k++) {
                r ^= r << 13; r ^= r >> 7; r ^= r << 17;
                size_t i = r % pages;
                uint64_t v = r | 1;
                *(uint64_t *)(p + i * 4096) ^= v;
                delta[i] ^= v;
            }
            snprintf(what, sizeof what, "%d", dirtied);
            mark(argv[2], what);
        }
    }
}
