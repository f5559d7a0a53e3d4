/* Memory actions for the dirty-page tracker tests. argv[1] out file, argv[2] a directory: the
 * program waits for file <dir>/N, performs step N, says "done N", for N = 1.. until 10. */
#define _GNU_SOURCE
#include "zaptest.h"
#include <pthread.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <signal.h>

#define MB (1 << 20)
static volatile unsigned char *heap, *region, *moved, *thp, *guard;
static volatile int thread_go;

static void *writer(void *arg) {
    (void)arg;
    while (!thread_go) usleep(1000);
    for (int i = 0; i < 16; i++) heap[(size_t)i * 4096 * 37 + 5] = 0x77;
    thread_go = 2;
    for (;;) pause();
}

static void wait_step(const char *dir, int n) {
    char p[512];
    snprintf(p, sizeof p, "%s/%d", dir, n);
    wait_go(p);
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    heap = malloc(16 * MB);
    for (size_t i = 0; i < 16 * MB; i++) heap[i] = (unsigned char)(i * 13);
    region = mmap(NULL, 4 * MB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < 4 * MB; i += 512) region[i] = 1;
    moved = mmap(NULL, 2 * MB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset((void *)moved, 0x42, 2 * MB);
    guard = mmap(NULL, 1 * MB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset((void *)guard, 0x11, MB);
    unsigned char *t = mmap(NULL, 8 * MB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    thp = (unsigned char *)(((uintptr_t)t + 2 * MB - 1) & ~(uintptr_t)(2 * MB - 1));
    madvise((void *)thp, 4 * MB, MADV_HUGEPAGE);
    memset((void *)thp, 0x33, 4 * MB);
    pthread_t th;
    pthread_create(&th, NULL, writer, NULL);
    say("ready");
    /* 1: write 1% of the heap's pages. */
    wait_step(argv[2], 1);
    for (int i = 0; i < 40; i++) heap[(size_t)i * 4096 * 97 + 100] ^= 0xff;
    say("done 1");
    /* 2: a new mapping, written. */
    wait_step(argv[2], 2);
    volatile unsigned char *fresh = mmap(NULL, MB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < MB; i += 4096) fresh[i] = 9;
    say("done 2");
    /* 3: unmap part of a tracked region and map new memory there with new contents. */
    wait_step(argv[2], 3);
    munmap((void *)region, MB);
    volatile unsigned char *re = mmap((void *)region, MB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    for (size_t i = 0; i < MB; i += 4096) re[i] = 0x5a;
    say("done 3");
    /* 4: move a region (mremap) and write one page of it. */
    wait_step(argv[2], 4);
    void *dst = mmap(NULL, 4 * MB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    moved = mremap((void *)moved, 2 * MB, 2 * MB, MREMAP_MAYMOVE | MREMAP_FIXED, (char *)dst + MB);
    CHECK(moved != MAP_FAILED, "mremap");
    moved[4096 * 3] = 0x43;
    say("done 4");
    /* 5: read-only, then writable again, and written. */
    wait_step(argv[2], 5);
    mprotect((void *)guard, MB, PROT_READ);
    mprotect((void *)guard, MB, PROT_READ | PROT_WRITE);
    guard[4096 * 7] = 0x12;
    say("done 5");
    /* 6: the heap grows (brk) and the new part is written. */
    wait_step(argv[2], 6);
    unsigned char *top = sbrk(0);
    CHECK(sbrk(2 * MB) != (void *)-1, "sbrk");
    for (size_t i = 0; i < 2 * MB; i += 4096) top[i] = 0x66;
    say("done 6");
    /* 7: another thread writes. */
    wait_step(argv[2], 7);
    thread_go = 1;
    while (thread_go != 2) usleep(1000);
    say("done 7");
    /* 8: one byte in a transparent huge page. */
    wait_step(argv[2], 8);
    thp[2 * MB + 12345] = 0x34;
    say("done 8");
    /* 9: a written page is thrown away (MADV_DONTNEED): it reads zero now, without a write. */
    wait_step(argv[2], 9);
    madvise((void *)(heap + 4096 * 200), 4096 * 4, MADV_DONTNEED);
    say("done 9");
    /* 10: fork; the child writes its copy and waits; the parent writes a page too. */
    wait_step(argv[2], 10);
    int p[2];
    CHECK(pipe(p) == 0, "pipe");
    pid_t c = fork();
    if (c == 0) {
        for (int i = 0; i < 8; i++) heap[(size_t)i * 4096 * 11] = 0x99;
        CHECK(write(p[1], "c", 1) == 1, "child write");
        for (;;) pause();
    }
    char b;
    CHECK(read(p[0], &b, 1) == 1, "child ready");
    heap[4096 * 1000 + 1] = 0xab;
    say("done 10 %d", c);
    for (;;) pause();
}
