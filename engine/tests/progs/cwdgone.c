/* Working directories removed while processes work in them. argv[3] is a directory of the
 * test's. The parent works in argv[3]/gone, removed; a child in argv[3]/tree/sub, whose whole
 * tree is removed (the new directory cannot go beside it). After the restore both must still
 * be in a removed directory: getcwd fails with ENOENT, "." is a directory with no links, and
 * nothing can be created in it; the parent can still reach argv[3] by its absolute path.
 * With argv[4] = "covered": the process works in argv[3]/a and then mounts argv[3]/b over that
 * path (in the pod's mount namespace): the path now leads to another directory, and the
 * checkpoint must be refused. */
#include "zaptest.h"
#include <errno.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>

static void in_removed(const char *who) {
    char buf[4096];
    struct stat st;
    CHECK(getcwd(buf, sizeof buf) == NULL && errno == ENOENT, "%s: getcwd gives %s (errno %d)", who, buf, errno);
    CHECK(stat(".", &st) == 0 && S_ISDIR(st.st_mode) && st.st_nlink == 0, "%s: . is a removed directory (links %ld)", who, (long)st.st_nlink);
    CHECK(open("new", O_CREAT | O_WRONLY, 0600) < 0 && errno == ENOENT, "%s: creating in it fails with ENOENT (errno %d)", who, errno);
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    char p[600], q[600];
    if (argc > 4 && !strcmp(argv[4], "covered")) {
        snprintf(p, sizeof p, "%s/a", argv[3]);
        snprintf(q, sizeof q, "%s/b", argv[3]);
        CHECK(mkdir(p, 0755) == 0 && mkdir(q, 0755) == 0 && chdir(p) == 0, "enter a");
        CHECK(mount(q, p, NULL, MS_BIND, NULL) == 0, "bind b over a: errno %d", errno);
        say("ready");
        wait_go(argv[2]);
        say("ok");
        return 0;
    }
    snprintf(p, sizeof p, "%s/tree", argv[3]);
    snprintf(q, sizeof q, "%s/tree/sub", argv[3]);
    CHECK(mkdir(p, 0755) == 0 && mkdir(q, 0755) == 0, "mkdir tree");
    int ready[2], verdict[2];
    CHECK(pipe(ready) == 0 && pipe(verdict) == 0, "pipes");
    pid_t child = fork();
    if (child == 0) {
        CHECK(chdir(q) == 0 && rmdir(q) == 0 && rmdir(p) == 0, "child: enter and remove the tree");
        CHECK(write(ready[1], "r", 1) == 1, "child ready");
        char c;
        CHECK(read(verdict[0], &c, 1) == 1, "child go");
        in_removed("child");
        _exit(0);
    }
    char c;
    CHECK(read(ready[0], &c, 1) == 1, "wait for the child");
    snprintf(p, sizeof p, "%s/gone", argv[3]);
    CHECK(mkdir(p, 0755) == 0 && chdir(p) == 0 && rmdir(p) == 0, "enter and remove gone");
    say("ready");
    wait_go(argv[2]);
    in_removed("parent");
    snprintf(p, sizeof p, "%s/made-after", argv[3]);
    int fd = open(p, O_CREAT | O_WRONLY, 0600);
    CHECK(fd >= 0, "create by absolute path: errno %d", errno);
    close(fd);
    CHECK(write(verdict[1], "g", 1) == 1, "go child");
    int status;
    CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child checked itself: status %#x", status);
    say("ok");
    return 0;
}
