/* A program whose executable is deleted while it runs (upgraded, say): the test removes it once
 * the program is ready. After the restore, /proc/self/exe names the deleted file as before, and
 * it is the program: a child executes /proc/self/exe and says so. Also holds an fd of a deleted
 * data file (argv[3]/data) whose link must name the deleted file as before. */
#include "zaptest.h"
#include <errno.h>
#include <sys/wait.h>

int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "child-check")) return 42;
    zt_init(argc, argv);
    char exe[600], p[600], link[700], want[700];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    CHECK(n > 0, "readlink exe");
    exe[n] = 0;
    snprintf(p, sizeof p, "%s/data", argv[3]);
    int fd = open(p, O_CREAT | O_RDWR, 0600);
    CHECK(fd >= 0 && write(fd, "data", 4) == 4 && unlink(p) == 0, "deleted data file");
    say("exe %s", exe);
    say("ready");
    wait_go(argv[2]);
    n = readlink("/proc/self/exe", link, sizeof link - 1);
    CHECK(n > 0, "readlink exe after");
    link[n] = 0;
    snprintf(want, sizeof want, "%s (deleted)", exe);
    CHECK(!strcmp(link, want), "exe link %s, not %s", link, want);
    snprintf(want, sizeof want, "%s (deleted)", p);
    char fdl[64];
    snprintf(fdl, sizeof fdl, "/proc/self/fd/%d", fd);
    n = readlink(fdl, link, sizeof link - 1);
    CHECK(n > 0, "readlink fd");
    link[n] = 0;
    CHECK(!strcmp(link, want), "data fd link %s, not %s", link, want);
    pid_t c = fork();
    if (c == 0) {
        execl("/proc/self/exe", "exegone", "child-check", (char *)NULL);
        _exit(errno);
    }
    int status;
    CHECK(waitpid(c, &status, 0) == c && WIFEXITED(status) && WEXITSTATUS(status) == 42, "exec of /proc/self/exe: status %#x", status);
    say("ok");
    return 0;
}
