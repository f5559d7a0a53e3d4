/* Memory shared copy-on-write after fork, over three generations.
 *   argv[1] out, argv[2] go (zaptest.h); argv[3] (optional) go1: a second phase before go.
 * The parent fills a 32 MiB anonymous region, 4 MiB of brk heap and a page of a private file
 * mapping, then forks A (which forks G) and B. B writes the last quarter of the region, G eight
 * pages in the middle. With go1: once it exists the parent writes the first eighth (copy-on-write
 * breaks in the parent: A, B and G keep the old pages) and A the second eighth. After go every
 * process checks every page against what it must hold and says "ok NAME"; the parent says
 * "ok all" once its children exited with 0.
 * "ready REGION" gives the region's address (for the test's page-frame comparison). */
#include "zaptest.h"
#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>

#define PAGES 8192 /* 32 MiB */
#define HEAP (4 << 20)

static volatile int *shared_count;
static unsigned char *region, *heap, *filepage;

static uint32_t val(int page, int gen) { return (uint32_t)page * 2654435761u ^ (uint32_t)gen * 40503u; }

static void fill(int from, int to, int gen) {
    for (int p = from; p < to; p++)
        for (int w = 0; w < 4096 / 4; w += 64) ((uint32_t *)(region + (size_t)p * 4096))[w] = val(p, gen) + w;
}

static int check(int from, int to, int gen) {
    for (int p = from; p < to; p++)
        for (int w = 0; w < 4096 / 4; w += 64)
            if (((uint32_t *)(region + (size_t)p * 4096))[w] != val(p, gen) + w) return p;
    return -1;
}

/* Expected generation of each page, per process: 0 = the parent's first fill. */
static int gen_of(char who, int phase2, int p) {
    int q = PAGES / 8;
    if (who == 'B' && p >= 6 * q) return 2;
    if (who == 'G' && p >= 4 * q && p < 4 * q + 8) return 3;
    if (phase2 && who == 'P' && p < q) return 4;
    if (phase2 && who == 'A' && p >= q && p < 2 * q) return 5;
    return 0;
}

static void verify(char who, int phase2) {
    for (int p = 0; p < PAGES; p++) {
        int g = gen_of(who, phase2, p);
        CHECK(check(p, p + 1, g) < 0, "%c: page %d is not generation %d", who, p, g);
    }
    for (int i = 0; i < HEAP; i += 4096) CHECK(heap[i] == (unsigned char)(i >> 12), "%c: heap byte %d", who, i);
    CHECK(filepage[0] == 'Z' && filepage[1] == 'A' + (who == 'B'), "%c: file page %c%c", who, filepage[0], filepage[1]);
}

static void child_loop(char who, const char *go1, const char *go) {
    __sync_fetch_and_add(shared_count, 1);
    if (go1) {
        wait_go(go1);
        if (who == 'A') fill(PAGES / 8, PAGES / 4, 5);
        __sync_fetch_and_add(shared_count, 1);
    }
    wait_go(go);
    verify(who, go1 != NULL);
    say("ok %c", who);
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    const char *go1 = argc > 3 ? argv[3] : NULL;
    shared_count = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    region = mmap(0, (size_t)PAGES * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    heap = sbrk(HEAP);
    int fd = open(argv[0], O_RDONLY);
    filepage = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    CHECK(region != MAP_FAILED && heap != (void *)-1 && filepage != MAP_FAILED, "setup");
    close(fd);
    fill(0, PAGES, 0);
    for (int i = 0; i < HEAP; i += 4096) heap[i] = (unsigned char)(i >> 12);
    filepage[0] = 'Z';
    filepage[1] = 'A';
    pid_t a = fork();
    if (a == 0) {
        pid_t g = fork();
        if (g == 0) {
            fill(PAGES / 2, PAGES / 2 + 8, 3);
            child_loop('G', go1, argv[2]);
            _exit(0);
        }
        child_loop('A', go1, argv[2]);
        int st;
        CHECK(waitpid(g, &st, 0) == g && WIFEXITED(st) && WEXITSTATUS(st) == 0, "A: G ended badly");
        _exit(0);
    }
    pid_t b = fork();
    if (b == 0) {
        fill(3 * PAGES / 4, PAGES, 2);
        filepage[1] = 'B';
        child_loop('B', go1, argv[2]);
        _exit(0);
    }
    while (*shared_count < 3) usleep(1000);
    say("ready %lx", (unsigned long)region);
    if (go1) {
        wait_go(go1);
        fill(0, PAGES / 8, 4);
        while (*shared_count < 6) usleep(1000);
        say("ready2");
    }
    wait_go(argv[2]);
    verify('P', go1 != NULL);
    say("ok P");
    int st;
    CHECK(waitpid(a, &st, 0) == a && WIFEXITED(st) && WEXITSTATUS(st) == 0, "A ended badly");
    CHECK(waitpid(b, &st, 0) == b && WIFEXITED(st) && WEXITSTATUS(st) == 0, "B ended badly");
    say("ok all");
    return 0;
}
