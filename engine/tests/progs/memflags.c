/* Stacks and mapping flags, each on a mapping of its own: MAP_GROWSDOWN, the main stack,
 * MADV_DONTFORK, MADV_WIPEONFORK, MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_DONTDUMP, MADV_MERGEABLE,
 * mlock, mlock2(MLOCK_ONFAULT), MAP_LOCKED, MADV_SEQUENTIAL, MADV_RANDOM, MAP_NORESERVE, mseal, a
 * protection key with its access rights, a PROT_NONE guard region and guard pages
 * (MADV_GUARD_INSTALL). Each mapping is checked before the checkpoint (so the kernel does what we
 * expect) and after the restore: its flags in smaps, its bounds, its pages, and its behaviour
 * (fork, munmap of a sealed mapping, faults, growth of the stacks).
 * Kinds this kernel lacks are reported "skip KIND" and not checked. */
#include "zaptest.h"
#include "memflags.h"
#include <errno.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#define P 4096UL
#define SLOT (64 * P) /* each mapping gets a slot; the rest of a slot stays PROT_NONE */

struct kind {
    const char *name, *want;
    size_t pages;
    unsigned char *p;
    int skip;
};

static struct kind kinds[] = {
    {"dontfork", "dc", 4}, {"wipeonfork", "wf", 4}, {"hugepage", "hg", 16}, {"nohugepage", "nh", 4},
    {"dontdump", "dd", 4}, {"mergeable", "mg", 4},  {"mlock", "lo", 4},     {"onfault", "lo lf", 8},
    {"maplocked", "lo", 4}, {"sequential", "sr", 4}, {"random", "rr", 4},    {"noreserve", "nr", 8},
    {"sealed", "sl", 4},   {"growsdown", "gd", 8},   {"pkey", "", 4},        {"guards", "", 8},
    {"protnone", "", 4},
};
#define NK (sizeof kinds / sizeof kinds[0])

static struct kind *k(const char *name) {
    for (size_t i = 0; i < NK; i++)
        if (!strcmp(kinds[i].name, name)) return &kinds[i];
    _exit(99);
}

static int pkey = -1;
static unsigned long stack_before;

static void fill(struct kind *x) {
    for (size_t i = 0; i < x->pages; i++) {
        if (!strcmp(x->name, "guards") && (i == 2 || i == 3)) continue;
        if (!strcmp(x->name, "onfault") && i >= x->pages / 2) continue; /* left unfaulted */
        if (!strcmp(x->name, "protnone")) continue;
        x->p[i * P] = (unsigned char)(i * 7 + x->name[0]);
        x->p[i * P + P - 1] = (unsigned char)(i + 1);
    }
}

static void check_pages(struct kind *x) {
    for (size_t i = 0; i < x->pages; i++) {
        if (!strcmp(x->name, "guards") && (i == 2 || i == 3)) continue;
        if (!strcmp(x->name, "onfault") && i >= x->pages / 2) continue;
        if (!strcmp(x->name, "protnone")) continue;
        CHECK(x->p[i * P] == (unsigned char)(i * 7 + x->name[0]) && x->p[i * P + P - 1] == (unsigned char)(i + 1), "%s: page %zu", x->name,
              i);
    }
}

/* The mapping of kind x: exact bounds and exactly the wanted flags among the interesting ones. */
static void check_vma(struct kind *x, const char *when) {
    struct vma_info v;
    char got[128];
    CHECK(vma_of(x->p, &v), "%s %s: unmapped", x->name, when);
    CHECK(v.start == (unsigned long)x->p && v.end == (unsigned long)x->p + x->pages * P, "%s %s: mapping %lx-%lx, not %lx-%lx", x->name, when,
          v.start, v.end, (unsigned long)x->p, (unsigned long)x->p + x->pages * P);
    flags_among(x->p, got, sizeof got);
    CHECK(!strcmp(got, x->want), "%s %s: flags [%s], want [%s] (VmFlags:%s)", x->name, when, got, x->want, v.flags);
    if (!strcmp(x->name, "mlock") || !strcmp(x->name, "maplocked"))
        CHECK(v.locked_kb == (long)(x->pages * 4), "%s %s: %ld kB locked", x->name, when, v.locked_kb);
    if (!strcmp(x->name, "onfault")) CHECK(v.locked_kb == (long)(x->pages / 2 * 4), "%s %s: %ld kB locked on fault", x->name, when, v.locked_kb);
    if (!strcmp(x->name, "pkey")) CHECK(v.pkey == pkey, "pkey %s: key %d, want %d", when, v.pkey, pkey);
}

static int recurse(int depth, volatile char *sink) {
    volatile char buf[4096];
    buf[0] = (char)depth;
    buf[4095] = (char)depth;
    if (depth == 0) return buf[0];
    int r = recurse(depth - 1, buf);
    return r + buf[4095] - (char)depth + (sink ? 0 : 0);
}

static void behaviour(void) {
    /* fork: dontfork is gone in the child, wipeonfork is zero there. */
    pid_t c = fork();
    if (c == 0) {
        unsigned char vec;
        int gone = mincore(k("dontfork")->p, P, &vec) < 0;
        int wiped = k("wipeonfork")->p[0] == 0;
        _exit(gone && wiped ? 0 : 1 + !gone);
    }
    int st;
    CHECK(waitpid(c, &st, 0) == c && WIFEXITED(st), "fork child");
    CHECK(WEXITSTATUS(st) == 0, "child: %s", WEXITSTATUS(st) == 2 ? "dontfork mapping was copied" : "wipeonfork mapping not wiped");
    /* A sealed mapping cannot be unmapped. */
    if (!k("sealed")->skip) CHECK(munmap(k("sealed")->p, P) < 0 && errno == EPERM, "sealed mapping could be unmapped");
    /* Protection key: reads work, writes fault with SEGV_PKUERR (the key's rights: no write). */
    if (!k("pkey")->skip) {
        CHECK(try_access(k("pkey")->p, 0) == 0, "pkey: read faults");
        int code = try_access(k("pkey")->p, 1);
        CHECK(code == 4 /* SEGV_PKUERR */, "pkey: write gave si_code %d, want SEGV_PKUERR", code);
    }
    CHECK(try_access(k("protnone")->p, 0) == SEGV_ACCERR, "PROT_NONE region readable");
    if (!k("guards")->skip) {
        CHECK(try_access(k("guards")->p + 2 * P, 0) != 0, "guard page readable");
        CHECK(try_access(k("guards")->p + 4 * P, 0) == 0, "page after the guard pages faults");
    }
    /* The MAP_GROWSDOWN mapping grows when the page below it is touched. */
    struct kind *g = k("growsdown");
    g->p[-1] = 42;
    struct vma_info v;
    CHECK(vma_of(g->p, &v) && v.start <= (unsigned long)g->p - P && g->p[-1] == 42, "growsdown mapping did not grow (starts %lx)", v.start);
    /* The main stack grows by 4 MiB more than it had. */
    CHECK(recurse(1024, NULL) == 0, "recursion");
    char here;
    CHECK(vma_of(&here, &v) && v.end - v.start >= stack_before + (4UL << 20) - 64 * P, "[stack] is %lu bytes, was %lu", v.end - v.start,
          stack_before);
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    unsigned char *base = mmap(0, NK * SLOT + SLOT, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    CHECK(base != MAP_FAILED, "reserve");
    unsigned char *slot = (unsigned char *)(((unsigned long)base + SLOT - 1) & ~(SLOT - 1));
    for (size_t i = 0; i < NK; i++) {
        struct kind *x = &kinds[i];
        int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;
        if (!strcmp(x->name, "maplocked")) flags |= MAP_LOCKED;
        if (!strcmp(x->name, "noreserve")) flags |= MAP_NORESERVE;
        if (!strcmp(x->name, "growsdown")) flags |= MAP_GROWSDOWN;
        int prot = strcmp(x->name, "protnone") ? PROT_READ | PROT_WRITE : PROT_NONE;
        /* The growsdown mapping sits at the top of its slot, with room below to grow. */
        unsigned char *at = slot + i * SLOT + (!strcmp(x->name, "growsdown") ? SLOT - x->pages * P : 0);
        x->p = mmap(at, x->pages * P, prot, flags, -1, 0);
        CHECK(x->p == at, "map %s", x->name);
        /* Below a growsdown mapping the address space must be free for it to grow into. */
        if (!strcmp(x->name, "growsdown")) CHECK(munmap(at - 16 * P, 16 * P) == 0, "unmap below growsdown");
    }
    for (size_t i = 0; i < NK; i++) fill(&kinds[i]);
    CHECK(madvise(k("dontfork")->p, 4 * P, MADV_DONTFORK) == 0, "dontfork");
    CHECK(madvise(k("wipeonfork")->p, 4 * P, MADV_WIPEONFORK) == 0, "wipeonfork");
    CHECK(madvise(k("hugepage")->p, 16 * P, MADV_HUGEPAGE) == 0, "hugepage");
    CHECK(madvise(k("nohugepage")->p, 4 * P, MADV_NOHUGEPAGE) == 0, "nohugepage");
    CHECK(madvise(k("dontdump")->p, 4 * P, MADV_DONTDUMP) == 0, "dontdump");
    if (madvise(k("mergeable")->p, 4 * P, MADV_MERGEABLE) != 0) {
        say("skip mergeable (no KSM)");
        k("mergeable")->skip = 1;
    }
    CHECK(mlock(k("mlock")->p, 4 * P) == 0, "mlock: %s", strerror(errno));
    CHECK(syscall(SYS_mlock2, k("onfault")->p, 8 * P, 1 /* MLOCK_ONFAULT */) == 0, "mlock2 onfault");
    CHECK(madvise(k("sequential")->p, 4 * P, MADV_SEQUENTIAL) == 0, "sequential");
    CHECK(madvise(k("random")->p, 4 * P, MADV_RANDOM) == 0, "random");
    if (syscall(462 /* mseal */, k("sealed")->p, 4 * P, 0) != 0) {
        say("skip sealed (mseal: %s)", strerror(errno));
        k("sealed")->skip = 1;
    }
    pkey = syscall(SYS_pkey_alloc, 0, 0);
    if (pkey < 0 || syscall(SYS_pkey_mprotect, k("pkey")->p, 4 * P, PROT_READ | PROT_WRITE, pkey) != 0) {
        say("skip pkey (%s)", strerror(errno));
        k("pkey")->skip = 1;
    } else {
        /* PKRU: this key may be read, not written (two bits per key: access, write disable). */
        unsigned int pkru;
        __asm__ volatile(".byte 0x0f,0x01,0xee" : "=a"(pkru) : "c"(0) : "rdx");
        pkru |= 2u << (2 * pkey);
        __asm__ volatile(".byte 0x0f,0x01,0xef" : : "a"(pkru), "c"(0), "d"(0));
    }
    if (madvise(k("guards")->p + 2 * P, 2 * P, 102 /* MADV_GUARD_INSTALL */) != 0) {
        say("skip guards (MADV_GUARD_INSTALL: %s)", strerror(errno));
        k("guards")->skip = 1;
    }
    for (size_t i = 0; i < NK; i++)
        if (!kinds[i].skip) check_vma(&kinds[i], "before");
    char here;
    struct vma_info sv;
    CHECK(vma_of(&here, &sv), "stack");
    stack_before = sv.end - sv.start;
    say("ready");
    wait_go(argv[2]);
    for (size_t i = 0; i < NK; i++)
        if (!kinds[i].skip) {
            check_vma(&kinds[i], "after");
            check_pages(&kinds[i]);
        }
    behaviour();
    say("ok");
    return 0;
}
