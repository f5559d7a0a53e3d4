/* Memory of every kind the dump and restore pipelines treat differently: 40 MiB in which zero,
 * text-like and random pages alternate in runs, a region made PROT_NONE after it was filled
 * (process_vm_readv cannot read it), a read-only region (process_vm_writev cannot write it)
 * and a region with a hole (pages never touched are absent and never read). Deterministic:
 * two runs under ADDR_NO_RANDOMIZE have the same memory at the same addresses. Checked after
 * restore. */
#include "zaptest.h"
#include <stdint.h>
#include <sys/mman.h>

#define MIB (1u << 20)
static uint64_t rnd = 0x2545f4914f6cdd1dull;
static uint64_t next(void) { rnd ^= rnd << 13; rnd ^= rnd >> 7; rnd ^= rnd << 17; return rnd; }

static void fill(uint8_t *p, size_t len, uint64_t seed, int check, const char *what) {
    uint64_t r = seed;
    for (size_t pg = 0; pg < len / 4096; pg++) {
        uint8_t *q = p + pg * 4096;
        int kind = (int)((pg * 7 + pg / 5) % 3); /* runs of mixed kinds */
        for (int j = 0; j < 4096; j += 8) {
            uint64_t v = 0;
            if (kind == 1) v = 0x2072656b6f7a2061ull + (uint64_t)(j % 64); /* text-like */
            if (kind == 2) { r ^= r << 13; r ^= r >> 7; r ^= r << 17; v = r; }
            if (!check) memcpy(q + j, &v, 8);
            else CHECK(!memcmp(q + j, &v, 8), "%s page %zu word %d", what, pg, j);
        }
    }
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    (void)next;
    int prw = PROT_READ | PROT_WRITE, flags = MAP_PRIVATE | MAP_ANONYMOUS;
    uint8_t *a = mmap(0, 40 * MIB, prw, flags, -1, 0);
    uint8_t *none = mmap(0, 1 * MIB, prw, flags, -1, 0);
    uint8_t *ro = mmap(0, 1 * MIB, prw, flags, -1, 0);
    uint8_t *holes = mmap(0, 8 * MIB, prw, flags, -1, 0);
    CHECK(a != MAP_FAILED && none != MAP_FAILED && ro != MAP_FAILED && holes != MAP_FAILED, "mmap");
    fill(a, 40 * MIB, 1, 0, "a");
    fill(none, 1 * MIB, 2, 0, "none");
    fill(ro, 1 * MIB, 3, 0, "ro");
    fill(holes + 3 * MIB, 2 * MIB, 4, 0, "holes");
    CHECK(mprotect(none, 1 * MIB, PROT_NONE) == 0 && mprotect(ro, 1 * MIB, PROT_READ) == 0, "mprotect");
    say("ready");
    wait_go(argv[2]);
    fill(a, 40 * MIB, 1, 1, "a");
    CHECK(mprotect(none, 1 * MIB, PROT_READ) == 0, "mprotect back");
    fill(none, 1 * MIB, 2, 1, "none");
    fill(ro, 1 * MIB, 3, 1, "ro");
    fill(holes + 3 * MIB, 2 * MIB, 4, 1, "holes");
    for (size_t i = 0; i < 8 * MIB; i += 4096)
        if (i < 3 * MIB || i >= 5 * MIB) CHECK(holes[i] == 0, "hole at %zu", i);
    say("ok");
    return 0;
}
