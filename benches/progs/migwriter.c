/* The workload of migrate-bench: argv[1] MiB of anonymous memory, every page resident, in runs
 * of 16 pages that are either zero or random (about half each, chosen by a hash of the run), so
 * a copy that skips zero pages and does not compress random ones sends about half the memory.
 * It rewrites argv[2] per mille of its pages a second (10 = 1% a second), a tenth every 100 ms,
 * chosen at random: a random page gets new random bytes, a zero page is written with zeros
 * (dirty, still zero), so the memory keeps its make-up. A thread accepts TCP connections on port argv[4] and closes
 * them (what the bench's pinger connects to). It says ready by creating argv[3]. argv[5] (optional)
 * seeds the random pages, so that runs do not share content (a migration cache would see it). */
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static uint64_t mix(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull; x ^= x >> 33;
    return x;
}

static int zero_page(size_t i) { return mix((i / 16) * 0x9e3779b97f4a7c15ull + 7) & 1; }

static void fill(uint8_t *pg, size_t i, uint64_t salt) {
    if (zero_page(i)) { memset(pg, 0, 4096); return; }
    uint64_t x = mix(i * 0x9e3779b97f4a7c15ull + salt);
    for (int j = 0; j < 4096; j += 8) { x = mix(x); memcpy(pg + j, &x, 8); }
}

static void *serve(void *arg) {
    int s = *(int *)arg;
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c >= 0) close(c);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 5) { fprintf(stderr, "usage: migwriter MIB PERMILLE READY PORT\n"); return 2; }
    size_t pages = (size_t)atoi(argv[1]) * 256;
    int permille = atoi(argv[2]);
    uint8_t *p = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); return 3; }
    uint64_t seed = argc > 5 ? strtoull(argv[5], NULL, 10) : 1;
    for (size_t i = 0; i < pages; i++) fill(p + i * 4096, i, seed);
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[4])) };
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 128) < 0) { perror("listen"); return 4; }
    pthread_t t;
    if (pthread_create(&t, NULL, serve, &s) != 0) return 5;
    FILE *r = fopen(argv[3], "w");
    if (r) fclose(r);
    uint64_t x = mix(seed ^ (uint64_t)time(NULL)) | 1;
    for (;;) {
        for (size_t k = 0; k < pages * (size_t)permille / 10000; k++) {
            x = mix(x);
            size_t i = x % pages;
            fill(p + i * 4096, i, x);
        }
        usleep(100000);
    }
}
