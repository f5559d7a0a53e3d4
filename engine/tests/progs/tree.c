/* A process tree: a session leader with a pipe to a counting child, a child in its own process
 * group, shared anonymous memory written by two processes, a file opened before fork whose
 * offset they share, and an unreaped zombie. */
#include "zaptest.h"
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>

int main(int argc, char **argv) {
    zt_init(argc, argv);
    if (setsid() < 0) {
        /* A process group leader (a pod's main process) cannot start a session: a child does,
         * and the leader waits for it (a process blocked in wait4 across the restore). */
        pid_t c = fork();
        CHECK(c >= 0, "fork");
        if (c > 0) {
            int st = 0;
            CHECK(waitpid(c, &st, 0) == c, "wait for the session leader");
            return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
        }
        CHECK(setsid() > 0, "setsid");
    }
    volatile uint64_t *shm = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(shm != MAP_FAILED, "mmap shared");
    int shared_file = open(argv[3], O_RDWR);
    CHECK(shared_file >= 0, "open shared file");
    int p[2];
    CHECK(pipe(p) == 0, "pipe");
    pid_t counter = fork();
    if (counter == 0) {
        close(p[0]);
        for (uint64_t i = 1;; i++) {
            shm[0] = i;                       /* the child writes slot 0 */
            if (write(p[1], &i, 8) != 8) _exit(5);
            usleep(20000);
            if (shm[1] == 999) {              /* the parent says stop */
                char c;
                CHECK(read(shared_file, &c, 1) == 1 && c == 'b', "child shared offset");
                _exit(0);
            }
        }
    }
    close(p[1]);
    pid_t grouped = fork();
    if (grouped == 0) {
        setpgid(0, 0);
        for (;;) pause();
    }
    pid_t zombie = fork();
    if (zombie == 0) _exit(7);
    CHECK(setpgid(grouped, grouped) == 0 || getpgid(grouped) == grouped, "setpgid");
    char c;
    CHECK(read(shared_file, &c, 1) == 1 && c == 'a', "first byte");
    uint64_t last = 0;
    while (last < 5) CHECK(read(p[0], &last, 8) == 8, "pipe read");
    shm[1] = 1;
    usleep(50000); /* let the zombie exit */
    say("ready");
    wait_go(argv[2]);
    /* After the restore: the tree, sessions, groups and shared state are as before. */
    CHECK(getsid(0) == getpid(), "session leader");
    CHECK(getpgid(grouped) == grouped, "grouped child in its own group (%d)", getpgid(grouped));
    CHECK(getsid(grouped) == getpid(), "grouped child in our session");
    CHECK(getpgid(counter) == getpid(), "counter in our group");
    int status = 0;
    CHECK(waitpid(zombie, &status, 0) == zombie, "reap zombie");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 7, "zombie status %x", status);
    uint64_t next = 0;
    CHECK(read(p[0], &next, 8) == 8, "pipe after restore");
    CHECK(next == last + 1 || next > last, "counter continues (%lu after %lu)", (unsigned long)next, (unsigned long)last);
    for (int i = 0; i < 5; i++) CHECK(read(p[0], &next, 8) == 8, "pipe more");
    CHECK(shm[0] >= next, "shared memory written by the child is seen (%lu < %lu)", (unsigned long)shm[0], (unsigned long)next);
    shm[1] = 999;
    CHECK(waitpid(counter, &status, 0) == counter && WIFEXITED(status) && WEXITSTATUS(status) == 0, "counter exit %x", status);
    kill(grouped, SIGKILL);
    CHECK(waitpid(grouped, &status, 0) == grouped, "reap grouped");
    say("ok %lu", (unsigned long)next);
    return 0;
}
