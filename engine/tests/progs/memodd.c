/* Layouts that are unusual but legal: a region grown and moved by mremap and part of it moved
 * again to a fixed address, MAP_FIXED_NOREPLACE, MAP_32BIT, thousands of small mappings (argv[3]:
 * how many), a brk heap grown and shrunk again, mlockall(MCL_FUTURE | MCL_ONFAULT), KSM's
 * merge-any mode, and personality(ADDR_NO_RANDOMIZE) (the program re-executes itself with it, so
 * its layout is the fixed one). After the restore: contents, addresses, the brk end and its
 * growth, the count of mappings, that a new mapping is locked, the modes and the personality. */
#include "zaptest.h"
#include "memflags.h"
#include <errno.h>
#include <sys/personality.h>
#include <sys/prctl.h>

#define P 4096UL

static unsigned char *moved, *again, *noreplace, *low, **many;
static void *brk_end;
static int nmany;

static int count_maps(void) {
    FILE *f = fopen("/proc/self/maps", "r");
    int n = 0, c;
    while ((c = fgetc(f)) != EOF) n += c == '\n';
    fclose(f);
    return n;
}

static void check(const char *when) {
    for (unsigned long i = 0; i < 96; i++) CHECK(moved[i * P] == (unsigned char)(i + 1), "%s: moved page %lu", when, i);
    for (unsigned long i = 0; i < 32; i++) CHECK(again[i * P] == (unsigned char)(i + 97), "%s: remapped page %lu", when, i);
    CHECK(noreplace[0] == 'N' && low[0] == 'L' && (unsigned long)low < (2UL << 30), "%s: noreplace/32bit", when);
    for (int i = 0; i < nmany; i++) CHECK(many[i][0] == (unsigned char)i && many[i][1] == (unsigned char)(i >> 8), "%s: mapping %d of many", when, i);
    CHECK(sbrk(0) == brk_end, "%s: brk at %p, was %p", when, sbrk(0), brk_end);
    unsigned char *heap = (unsigned char *)brk_end - 64 * P;
    for (unsigned long i = 0; i < 64; i++) CHECK(heap[i * P] == (unsigned char)(i * 3), "%s: heap page %lu", when, i);
}

int main(int argc, char **argv) {
    if (!(personality(0xffffffff) & ADDR_NO_RANDOMIZE)) {
        personality(ADDR_NO_RANDOMIZE);
        execv("/proc/self/exe", argv);
        return 3;
    }
    zt_init(argc, argv);
    nmany = argc > 3 ? atoi(argv[3]) : 3000;
    /* mremap: grow a 64-page region (it moves), then move 32 pages of it to a fixed address. */
    unsigned char *r = mmap(0, 64 * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned char *hole = mmap(0, 256 * P, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(r != MAP_FAILED && hole != MAP_FAILED, "map");
    for (unsigned long i = 0; i < 64; i++) r[i * P] = (unsigned char)(i + 1);
    moved = mremap(r, 64 * P, 128 * P, MREMAP_MAYMOVE);
    CHECK(moved != MAP_FAILED, "mremap grow: %s", strerror(errno));
    for (unsigned long i = 64; i < 128; i++) moved[i * P] = (unsigned char)(i + 1);
    again = mremap(moved + 96 * P, 32 * P, 32 * P, MREMAP_MAYMOVE | MREMAP_FIXED, hole + 100 * P);
    CHECK(again == hole + 100 * P, "mremap fixed");
    for (unsigned long i = 0; i < 32; i++) again[i * P] = (unsigned char)(i + 97);
    noreplace = mmap(hole + 10 * P, P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    CHECK(noreplace == MAP_FAILED && errno == EEXIST, "MAP_FIXED_NOREPLACE over a mapping must fail");
    munmap(hole + 10 * P, P);
    noreplace = mmap(hole + 10 * P, P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    CHECK(noreplace == hole + 10 * P, "MAP_FIXED_NOREPLACE");
    noreplace[0] = 'N';
    low = mmap(0, P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
    CHECK(low != MAP_FAILED, "MAP_32BIT");
    low[0] = 'L';
    /* Many mappings: alternate protections so that none merges with its neighbour. */
    many = calloc(nmany, sizeof *many);
    unsigned char *area = mmap(0, 2UL * nmany * P, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    CHECK(area != MAP_FAILED, "area");
    for (int i = 0; i < nmany; i++) {
        many[i] = mmap(area + 2UL * i * P, P, PROT_READ | PROT_WRITE | (i % 2 ? PROT_EXEC : 0), MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        CHECK(many[i] != MAP_FAILED, "mapping %d", i);
        many[i][0] = (unsigned char)i;
        many[i][1] = (unsigned char)(i >> 8);
    }
    /* brk grown by 128 pages, written, shrunk by 64. */
    unsigned char *heap = sbrk(128 * P);
    CHECK(heap != (void *)-1, "sbrk");
    for (unsigned long i = 0; i < 128; i++) heap[i * P] = (unsigned char)(i * 3);
    CHECK(sbrk(-64 * (long)P) != (void *)-1, "sbrk shrink");
    brk_end = sbrk(0);
    check("before");
    int merge = prctl(67 /* PR_SET_MEMORY_MERGE */, 1, 0, 0, 0) == 0;
    if (!merge) say("skip merge-any (%s)", strerror(errno));
    CHECK(mlockall(MCL_FUTURE | MCL_ONFAULT) == 0, "mlockall: %s", strerror(errno));
    int maps = count_maps();
    say("ready %d", maps);
    wait_go(argv[2]);
    check("after");
    CHECK(count_maps() >= maps, "%d mappings, were %d", count_maps(), maps);
    CHECK(personality(0xffffffff) & ADDR_NO_RANDOMIZE, "personality lost ADDR_NO_RANDOMIZE");
    if (merge) CHECK(prctl(68 /* PR_GET_MEMORY_MERGE */, 0, 0, 0, 0) == 1, "KSM merge-any mode lost");
    unsigned char *fresh = mmap(0, 4 * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    struct vma_info v;
    CHECK(fresh != MAP_FAILED && vma_of(fresh, &v) && has_flag(&v, "lo") && has_flag(&v, "lf"), "mlockall(MCL_FUTURE|MCL_ONFAULT) lost: %s", v.flags);
    /* brk grows on from where it was; the new page is zero. */
    unsigned char *more = sbrk(P);
    CHECK(more == brk_end && more[0] == 0 && more[P - 1] == 0, "brk growth after restore");
    more[0] = 1;
    say("ok");
    return 0;
}
