/* Hugetlb mappings: private anonymous (MAP_HUGETLB), shared anonymous shared with a child made by
 * fork (which also keeps the parent's private one), and, given a hugetlbfs directory (argv[3]), a
 * file there mapped shared and privately (with a page written). Each is checked after the restore:
 * huge pages (smaps ht, KernelPageSize), contents, and the sharing between the two processes. */
#include "zaptest.h"
#include "memflags.h"
#include <sys/wait.h>

#define HP (2UL << 20)

static unsigned char *priv, *shared, *fshared, *fpriv;

static int huge_vma(void *p) {
    struct vma_info v;
    return vma_of(p, &v) && has_flag(&v, "ht") && v.start == (unsigned long)p && v.end == (unsigned long)p + HP;
}

static void check(const char *who) {
    CHECK(huge_vma(priv) && huge_vma(shared), "%s: anonymous hugetlb mappings are not huge any more", who);
    for (unsigned long i = 0; i < HP; i += 4096) CHECK(priv[i] == (unsigned char)(i >> 12), "%s: private byte %lu", who, i);
    if (fshared) {
        CHECK(huge_vma(fshared) && huge_vma(fpriv), "%s: hugetlbfs mappings are not huge", who);
        CHECK(fshared[0] == 'F' && fpriv[0] == 'P' && fpriv[4096] == 'p', "%s: hugetlbfs contents %c %c %c", who, fshared[0], fpriv[0], fpriv[4096]);
    }
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    priv = mmap(0, HP, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
    shared = mmap(0, HP, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
    CHECK(priv != MAP_FAILED && shared != MAP_FAILED, "MAP_HUGETLB: no huge pages free");
    for (unsigned long i = 0; i < HP; i += 4096) priv[i] = (unsigned char)(i >> 12);
    shared[0] = 1;
    if (argc > 3) {
        char path[512];
        snprintf(path, sizeof path, "%s/memhuge", argv[3]);
        int fd = open(path, O_RDWR | O_CREAT, 0600);
        CHECK(fd >= 0 && ftruncate(fd, HP) == 0, "hugetlbfs file %s", path);
        fshared = mmap(0, HP, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        fpriv = mmap(0, HP, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
        CHECK(fshared != MAP_FAILED && fpriv != MAP_FAILED, "map hugetlbfs file");
        close(fd);
        fshared[0] = 'F';
        fpriv[0] = 'P';
        fpriv[4096] = 'p';
    }
    pid_t c = fork();
    if (c == 0) {
        shared[8] = 2;
        while (shared[16] != 3) usleep(1000);
        check("child");
        shared[24] = 4; /* seen by the parent: still shared after the restore */
        while (shared[32] != 5) usleep(1000);
        _exit(0);
    }
    while (shared[8] != 2) usleep(1000);
    say("ready %lx", (unsigned long)priv);
    wait_go(argv[2]);
    check("parent");
    shared[16] = 3;
    for (int i = 0; i < 5000 && shared[24] != 4; i++) usleep(1000);
    CHECK(shared[24] == 4, "the shared hugetlb mapping is not shared with the child any more");
    shared[32] = 5;
    int st;
    CHECK(waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child failed");
    say("ok");
    return 0;
}
