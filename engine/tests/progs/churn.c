/* Writes to random pages of a buffer of argv[3] MiB and records what each page must hold; some
 * pages are thrown away (MADV_DONTNEED: they must read zero), and a scratch mapping comes and
 * goes. Reports progress in argv[1]; when the file argv[2] appears, checks every page against
 * the record and says "ok" or "FAIL". Used to check that incremental checkpoints restore exactly. */
#include "zaptest.h"
#include <stdint.h>
#include <sys/mman.h>

static uint64_t x = 88172645463325252ull;
static uint64_t next(void) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; return x; }

static void fill(uint32_t *p, uint32_t v) {
    for (int w = 0; w < 1024; w++) p[w] = v ? v * 2654435761u + (uint32_t)w : 0;
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    size_t pages = (size_t)atoi(argv[3]) * 256;
    uint32_t *buf = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint32_t *rec = calloc(pages, sizeof *rec);
    CHECK(buf != MAP_FAILED && rec, "alloc");
    for (size_t i = 0; i < pages; i++) { rec[i] = (uint32_t)i + 1; fill(buf + i * 1024, rec[i]); }
    uint32_t *scratch = NULL;
    uint32_t scratch_val = 0;
    struct stat st;
    for (uint32_t n = 1;; n++) {
        size_t i = next() % pages;
        if (n % 97 == 0) {
            madvise(buf + i * 1024, 4096, MADV_DONTNEED);
            rec[i] = 0;
        } else {
            rec[i] = n + (uint32_t)pages;
            fill(buf + i * 1024, rec[i]);
        }
        if (n % 500 == 0) {
            if (scratch) munmap(scratch, 64 * 4096);
            scratch = mmap(NULL, 64 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            scratch_val = n;
            for (int p = 0; p < 64; p++) fill(scratch + p * 1024, scratch_val + (uint32_t)p);
        }
        if (n % 10 == 0) usleep(5000); /* about 2000 pages a second */
        if (n % 100 == 0) {
            say("%u", n);
            if (stat(argv[2], &st) == 0) break;
        }
    }
    for (size_t i = 0; i < pages; i++)
        for (int w = 0; w < 1024; w += 97)
            CHECK(buf[i * 1024 + w] == (rec[i] ? rec[i] * 2654435761u + (uint32_t)w : 0), "page %zu word %d", i, w);
    if (scratch)
        for (int p = 0; p < 64; p++) CHECK(scratch[p * 1024 + 5] == (scratch_val + (uint32_t)p) * 2654435761u + 5, "scratch %d", p);
    say("ok");
    return 0;
}
