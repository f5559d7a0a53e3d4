/* Shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS) written by processes other than the one
 * that holds it, as a database's shared buffers are (PostgreSQL's postmaster maps them, its
 * backends write them and exit).
 *   argv[1] out, argv[2] go (zaptest.h); argv[3] go1: a second phase before go.
 * The parent maps a 4 MiB region and never touches the first three quarters of it itself:
 *   - child A writes pages [0, 256) (generation 1) and exits;
 *   - child B writes pages [256, 512) (generation 1) and stays;
 *   - the parent writes pages [768, 1024) (generation 1); [512, 768) stay zero.
 * "ready". With go1 (after a first checkpoint): child C writes pages [0, 64) (generation 2)
 * and exits, B rewrites pages [256, 320) (generation 2) and writes [512, 520) for the first
 * time; "ready2". After go, the parent and B check every page of the region and say "ok NAME";
 * the parent says "ok all" once B exited with 0. */
#include "zaptest.h"
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>

#define PAGES 1024

static unsigned char *region;

static uint32_t val(int page, int gen) { return (uint32_t)page * 2654435761u ^ (uint32_t)gen * 40503u; }

static void fill(int from, int to, int gen) {
    for (int p = from; p < to; p++)
        for (int w = 0; w < 4096 / 4; w += 32) ((uint32_t *)(region + (size_t)p * 4096))[w] = val(p, gen) + w;
}

/* Generation each page must hold (0: zero) after the phases run so far. */
static int gen_of(int p, int phase2) {
    if (phase2 && (p < 64 || (p >= 256 && p < 320) || (p >= 512 && p < 520))) return 2;
    if (p < 512 || p >= 768) return 1;
    return 0;
}

static int check(int phase2) {
    for (int p = 0; p < PAGES; p++) {
        int g = gen_of(p, phase2);
        for (int w = 0; w < 4096 / 4; w += 32) {
            uint32_t want = g ? val(p, g) + w : 0, got = ((uint32_t *)(region + (size_t)p * 4096))[w];
            if (got != want) return p;
        }
    }
    return -1;
}

static pid_t child(void (*fn)(void)) {
    pid_t pid = fork();
    if (pid == 0) {
        fn();
        _exit(0);
    }
    return pid;
}

static void a_writes(void) { fill(0, 256, 1); }
static void c_writes(void) { fill(0, 64, 2); }

static const char *go1_path, *go_path;

static void b_lives(void) {
    fill(256, 512, 1);
    wait_go(go1_path);
    fill(256, 320, 2);
    fill(512, 520, 2);
    /* The parent says "ready2" once this file exists. */
    char done[4096];
    snprintf(done, sizeof done, "%s.b", go1_path);
    close(open(done, O_WRONLY | O_CREAT, 0600));
    wait_go(go_path);
    int bad = check(1);
    CHECK(bad < 0, "B: page %d of the shared region", bad);
    say("ok B");
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    CHECK(argc > 3, "usage: shmfork OUT GO GO1");
    go_path = argv[2];
    go1_path = argv[3];
    region = mmap(0, PAGES * 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(region != MAP_FAILED, "mmap");
    int st;
    pid_t a = child(a_writes);
    CHECK(waitpid(a, &st, 0) == a && st == 0, "child A");
    pid_t b = child(b_lives);
    fill(768, 1024, 1);
    /* B must have written its pages before the checkpoint: poll the last one. */
    while (((volatile uint32_t *)(region + 511 * 4096))[0] != val(511, 1)) usleep(1000);
    say("ready");
    wait_go(go1_path);
    pid_t c = child(c_writes);
    CHECK(waitpid(c, &st, 0) == c && st == 0, "child C");
    char done[4096];
    snprintf(done, sizeof done, "%s.b", go1_path);
    wait_go(done);
    say("ready2");
    wait_go(go_path);
    int bad = check(1);
    CHECK(bad < 0, "parent: page %d of the shared region", bad);
    say("ok parent");
    CHECK(waitpid(b, &st, 0) == b && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child B exited with %d", st);
    say("ok all");
    return 0;
}
