/* Thousands of open file descriptions of one file (argv[3]/f), each at its own offset, some
 * dup'ed, all inherited by a child: after the restore each description must be one again
 * (dups and the child's copies share its offset, different descriptions do not). The checkpoint
 * matches descriptions with kcmp's order (O(log n) per fd), not pairwise. */
#include "zaptest.h"
#include <errno.h>
#include <sys/resource.h>
#include <sys/wait.h>

#define N 3000
#define BASE 100

int main(int argc, char **argv) {
    zt_init(argc, argv);
    struct rlimit rl = {2 * N + BASE + 64, 2 * N + BASE + 64};
    CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0, "raise the fd limit: errno %d", errno);
    char p[600];
    snprintf(p, sizeof p, "%s/f", argv[3]);
    int fd0 = open(p, O_CREAT | O_RDWR, 0600);
    CHECK(fd0 >= 0 && ftruncate(fd0, 1 << 20) == 0, "make f");
    close(fd0);
    for (int i = 0; i < N; i++) {
        int fd = open(p, O_RDWR);
        CHECK(fd >= 0 && dup2(fd, BASE + i) == BASE + i, "open %d: errno %d", i, errno);
        close(fd);
        CHECK(lseek(BASE + i, i * 7, SEEK_SET) == i * 7, "seek %d", i);
        if (i % 10 == 0) CHECK(dup2(BASE + i, BASE + N + i) == BASE + N + i, "dup %d", i);
    }
    int go[2], done[2];
    CHECK(pipe(go) == 0 && pipe(done) == 0, "pipes");
    pid_t child = fork();
    if (child == 0) {
        char c;
        CHECK(read(go[0], &c, 1) == 1, "child go");
        /* Moves every 100th description through its own copy. */
        for (int i = 0; i < N; i += 100) CHECK(lseek(BASE + i, 1, SEEK_CUR) >= 0, "child seek %d", i);
        CHECK(write(done[1], "d", 1) == 1, "child done");
        _exit(0);
    }
    say("ready");
    wait_go(argv[2]);
    for (int i = 0; i < N; i++)
        CHECK(lseek(BASE + i, 0, SEEK_CUR) == i * 7, "description %d at %ld, not %d", i, (long)lseek(BASE + i, 0, SEEK_CUR), i * 7);
    for (int i = 0; i < N; i += 10) {
        CHECK(lseek(BASE + N + i, 3, SEEK_CUR) == i * 7 + 3, "dup of %d", i);
        CHECK(lseek(BASE + i, 0, SEEK_CUR) == i * 7 + 3, "the dup of %d shares its offset", i);
        CHECK(lseek(BASE + i, -3, SEEK_CUR) == i * 7, "back");
    }
    CHECK(write(go[1], "g", 1) == 1, "go child");
    char c;
    CHECK(read(done[0], &c, 1) == 1, "child done");
    for (int i = 0; i < N; i++) {
        long want = i * 7 + (i % 100 == 0);
        CHECK(lseek(BASE + i, 0, SEEK_CUR) == want, "after the child: description %d at %ld, not %ld", i, (long)lseek(BASE + i, 0, SEEK_CUR), want);
    }
    int status;
    CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
    say("ok");
    return 0;
}
