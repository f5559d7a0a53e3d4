/* A family for lazy restores of pods and trees: memory shared copy-on-write and memory of each
 * process's own.
 *   argv[1] out, argv[2] go (zaptest.h); argv[3] (optional) MiB of each process's own region
 *   (default 4).
 * The parent fills an 8 MiB region S, then forks three children. Child i (1-3) writes 64 pages
 * of S of its own (pages 256*i ..) and maps and fills a region of its own; the parent, after
 * the forks, writes 64 pages of S (pages 1792 ..) and maps and fills a region of its own. So
 * each child shares 1920 pages of S with the parent (neither wrote them). After go each process
 * checks every page of S and of its own region, says "ok NAME" (P, 1, 2, 3), and counts on in
 * its own memory for a while ("count NAME N"); the parent says "ok all" once its children
 * exited with 0. "ready S-ADDRESS" once all four are set up. */
#include "zaptest.h"
#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>

#define SPAGES 2048 /* 8 MiB */
#define OWN 64      /* pages of S each process writes after the fork */

static volatile int *ready_count;
static unsigned char *shared;

static uint32_t val(long page, int who, int gen) { return (uint32_t)page * 2654435761u ^ (uint32_t)who * 40503u ^ (uint32_t)gen * 977u; }

static void fill(unsigned char *base, long from, long to, int who, int gen) {
    for (long p = from; p < to; p++)
        for (int w = 0; w < 4096 / 4; w += 61) ((uint32_t *)(base + p * 4096))[w] = val(p, who, gen) + w;
}

static long check(unsigned char *base, long from, long to, int who, int gen) {
    for (long p = from; p < to; p++)
        for (int w = 0; w < 4096 / 4; w += 61)
            if (((uint32_t *)(base + p * 4096))[w] != val(p, who, gen) + w) return p;
    return -1;
}

/* First page of S written by process `who` (0: the parent) after the fork. */
static long own_first(int who) { return who == 0 ? 1792 : 256L * who; }

static void verify(int who, unsigned char *own, long own_pages) {
    for (long p = 0; p < SPAGES; p++) {
        int mine = p >= own_first(who) && p < own_first(who) + OWN;
        long bad = mine ? check(shared, p, p + 1, who, 1) : check(shared, p, p + 1, 0, 0);
        CHECK(bad < 0, "%d: page %ld of S is wrong", who, p);
    }
    long bad = check(own, 0, own_pages, who, 2);
    CHECK(bad < 0, "%d: page %ld of its own region is wrong", who, bad);
}

static void run(int who, long own_pages, const char *go) {
    unsigned char *own = mmap(0, own_pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(own != MAP_FAILED, "%d: mmap", who);
    fill(shared, own_first(who), own_first(who) + OWN, who, 1);
    fill(own, 0, own_pages, who, 2);
    __sync_fetch_and_add(ready_count, 1);
    wait_go(go);
    verify(who, own, own_pages);
    char name = who == 0 ? 'P' : (char)('0' + who);
    say("ok %c", name);
    /* A counter that goes on in memory restored lazily. */
    volatile uint64_t *counter = (volatile uint64_t *)(own + (own_pages / 2) * 4096 + 8);
    uint64_t start = *counter;
    for (int i = 0; i < 200; i++) {
        *counter += 1;
        usleep(1000);
    }
    CHECK(*counter == start + 200, "%d: counter", who);
    say("count %c %lu", name, (unsigned long)*counter);
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    long own_pages = (argc > 3 ? atol(argv[3]) : 4) * 256;
    ready_count = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    shared = mmap(0, SPAGES * 4096L, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(ready_count != MAP_FAILED && shared != MAP_FAILED, "setup");
    fill(shared, 0, SPAGES, 0, 0);
    pid_t kids[3];
    for (int i = 1; i <= 3; i++) {
        kids[i - 1] = fork();
        CHECK(kids[i - 1] >= 0, "fork");
        if (kids[i - 1] == 0) {
            run(i, own_pages, argv[2]);
            _exit(0);
        }
    }
    /* The parent's part, then "ready" once all four are set up (run() counts for it too). */
    unsigned char *own = mmap(0, own_pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(own != MAP_FAILED, "P: mmap");
    fill(shared, own_first(0), own_first(0) + OWN, 0, 1);
    fill(own, 0, own_pages, 0, 2);
    while (*ready_count < 3) usleep(1000);
    say("ready %lx", (unsigned long)shared);
    wait_go(argv[2]);
    verify(0, own, own_pages);
    say("ok P");
    for (int i = 0; i < 3; i++) {
        int st;
        CHECK(waitpid(kids[i], &st, 0) == kids[i] && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %d ended badly", i + 1);
    }
    say("ok all");
    return 0;
}
