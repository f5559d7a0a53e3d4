/* Handlers for SIGUSR1/SIGUSR2, SIGUSR2 blocked and pending, SIGPIPE ignored, an alternate stack. */
#include "zaptest.h"
#include <signal.h>

static volatile int usr1, usr2;
static void on_usr1(int s) { (void)s; usr1++; }
static void on_usr2(int s) { (void)s; usr2++; }
static char altstack[65536];

int main(int argc, char **argv) {
    zt_init(argc, argv);
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, 0);
    sa.sa_handler = on_usr2;
    sa.sa_flags = SA_ONSTACK;
    sigaction(SIGUSR2, &sa, 0);
    signal(SIGPIPE, SIG_IGN);
    stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack};
    CHECK(sigaltstack(&ss, 0) == 0, "sigaltstack");
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR2);
    sigprocmask(SIG_BLOCK, &block, 0);
    raise(SIGUSR2);
    say("ready");
    wait_go(argv[2]);
    sigset_t pend;
    sigpending(&pend);
    CHECK(sigismember(&pend, SIGUSR2), "SIGUSR2 no longer pending");
    CHECK(usr2 == 0, "SIGUSR2 delivered while blocked");
    stack_t cur;
    sigaltstack(0, &cur);
    CHECK(cur.ss_sp == altstack && cur.ss_size == sizeof altstack, "alternate stack");
    struct sigaction old;
    sigaction(SIGPIPE, 0, &old);
    CHECK(old.sa_handler == SIG_IGN, "SIGPIPE disposition");
    sigaction(SIGUSR1, 0, &old);
    CHECK(old.sa_handler == on_usr1 && (old.sa_flags & SA_RESTART), "SIGUSR1 handler");
    raise(SIGUSR1);
    CHECK(usr1 == 1, "SIGUSR1 handler ran %d times", usr1);
    sigprocmask(SIG_UNBLOCK, &block, 0);
    CHECK(usr2 == 1, "pending SIGUSR2 handled %d times", usr2);
    say("ok");
    return 0;
}
