/* A process tree: a session leader with a pipe to a counting child, a child in its own process
 * group connected by a unix socketpair with bytes in flight, shared anonymous memory written by
 * two processes, a file opened before fork whose offset they share, and an unreaped zombie. */
#include "zaptest.h"
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/socket.h>
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
    int p[2], us[2];
    CHECK(pipe(p) == 0, "pipe");
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, us) == 0, "socketpair");
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
        /* Bytes in flight both ways on a unix socketpair shared with the parent; after the
         * restore the child answers one message. */
        close(us[0]);
        setpgid(0, 0);
        CHECK(write(us[1], "from-child", 10) == 10, "socket write");
        char m[16] = {0};
        CHECK(read(us[1], m, 11) == 11 && memcmp(m, "from-parent", 11) == 0, "child socket read: %s", m);
        CHECK(write(us[1], "answer", 6) == 6, "socket answer");
        for (;;) pause();
    }
    close(us[1]);
    CHECK(write(us[0], "from-parent", 11) == 11, "socket write parent");
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
    char m[16] = {0};
    CHECK(read(us[0], m, 10) == 10 && memcmp(m, "from-child", 10) == 0, "parent socket read: %s", m);
    CHECK(read(us[0], m, 6) == 6 && memcmp(m, "answer", 6) == 0, "socket answer read");
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
