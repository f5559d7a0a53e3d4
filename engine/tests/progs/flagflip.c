/* Changes a mapping's flags between checkpoints: maps an 8 MiB anonymous buffer (a mapping of
 * its own, between inaccessible pages), fills it and says "started ADDRESS". When argv[3] appears, sets
 * MADV_DONTFORK on the whole mapping (no change in /proc/PID/maps), rewrites its first page and
 * says "flipped"; when argv[4] appears, makes the second half read-only (the mapping splits)
 * and says "protected". After the go file it checks the contents, that the flag and the
 * protection are what it set (its own /proc/self/smaps), and says "ok" or "FAIL". */
#include "zaptest.h"
#include <stdint.h>
#include <sys/mman.h>

#define LEN (8u << 20)

/* The VmFlags line and the permissions of the mapping starting at `at`, from /proc/self/smaps. */
static void smaps_of(uintptr_t at, char *perms, char *flags, size_t cap) {
    FILE *f = fopen("/proc/self/smaps", "r");
    CHECK(f, "open smaps");
    char line[512];
    int in = 0;
    perms[0] = flags[0] = 0;
    while (fgets(line, sizeof line, f)) {
        uintptr_t a, b;
        char p[8];
        if (sscanf(line, "%lx-%lx %7s", &a, &b, p) == 3 && strchr(line, '-') < strchr(line, ' ')) {
            in = a == at;
            if (in) snprintf(perms, 8, "%s", p);
        } else if (in && strncmp(line, "VmFlags:", 8) == 0) {
            snprintf(flags, cap, "%s", line + 8);
        }
    }
    fclose(f);
}

static uint8_t expect(size_t i, int round) { return (uint8_t)(i * 7 + (i >> 12) + round); }

int main(int argc, char **argv) {
    zt_init(argc, argv);
    CHECK(argc > 4, "usage");
    /* Inaccessible pages on both sides keep the buffer a mapping of its own. */
    uint8_t *area = mmap(NULL, LEN + 8192, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(area != MAP_FAILED, "mmap");
    uint8_t *buf = area + 4096;
    CHECK(mprotect(buf, LEN, PROT_READ | PROT_WRITE) == 0, "mprotect rw");
    for (size_t i = 0; i < LEN; i++) buf[i] = expect(i, 0);
    say("started %#lx", (unsigned long)(uintptr_t)buf);
    wait_go(argv[3]);
    CHECK(madvise(buf, LEN, MADV_DONTFORK) == 0, "madvise");
    for (size_t i = 0; i < 4096; i++) buf[i] = expect(i, 1);
    say("flipped");
    wait_go(argv[4]);
    for (size_t i = LEN / 2; i < LEN / 2 + 4096; i++) buf[i] = expect(i, 2);
    CHECK(mprotect(buf + LEN / 2, LEN / 2, PROT_READ) == 0, "mprotect");
    say("protected");
    wait_go(argv[2]);
    for (size_t i = 0; i < LEN; i++) {
        int round = i < 4096 ? 1 : (i >= LEN / 2 && i < LEN / 2 + 4096) ? 2 : 0;
        CHECK(buf[i] == expect(i, round), "byte %zu", i);
    }
    char perms[8], flags[256];
    smaps_of((uintptr_t)buf, perms, flags, sizeof flags);
    CHECK(strcmp(perms, "rw-p") == 0 && strstr(flags, " dc"), "first half: %s, flags%s", perms, flags);
    smaps_of((uintptr_t)buf + LEN / 2, perms, flags, sizeof flags);
    CHECK(strcmp(perms, "r--p") == 0 && strstr(flags, " dc"), "second half: %s, flags%s", perms, flags);
    say("ok");
    return 0;
}
