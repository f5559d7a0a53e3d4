/* A process stopped while traced by another (this program's parent acting as a debugger): the
 * child asks to be traced and stops itself; the parent holds it stopped. A checkpoint must be
 * refused naming the tracer, and leave both running: after the go file the parent lets the child
 * go, the child says so, and the parent says "ok". */
#include "zaptest.h"
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/wait.h>

int main(int argc, char **argv) {
    zt_init(argc, argv);
    pid_t kid = fork();
    CHECK(kid >= 0, "fork");
    if (kid == 0) {
        ptrace(PTRACE_TRACEME, 0, 0, 0);
        raise(SIGSTOP);
        say("child runs");
        _exit(0);
    }
    int st;
    CHECK(waitpid(kid, &st, 0) == kid && WIFSTOPPED(st), "child did not stop");
    say("ready");
    wait_go(argv[2]);
    CHECK(ptrace(PTRACE_DETACH, kid, 0, 0) == 0, "detach");
    CHECK(waitpid(kid, &st, 0) == kid && WIFEXITED(st), "child exit");
    say("ok");
    return 0;
}
