/* A periodic timerfd (20 ms), a disarmed non-blocking timerfd, a signalfd for a blocked
 * SIGUSR1, and an inotify instance with a gap in its watch descriptors (and no events queued
 * at the checkpoint, which would refuse it): after the restore the
 * timer still fires, the disarmed one stays disarmed and keeps O_NONBLOCK, the signalfd reads a
 * SIGUSR1 sent then, and a file created in the watched directory is reported with its wd. */
#include "zaptest.h"
#include <signal.h>
#include <stdint.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <sys/inotify.h>
#include <libgen.h>

int main(int argc, char **argv) {
    zt_init(argc, argv);
    int t = timerfd_create(CLOCK_MONOTONIC, 0);
    struct itimerspec its = {{0, 20000000}, {0, 20000000}};
    CHECK(t >= 0 && timerfd_settime(t, 0, &its, NULL) == 0, "timerfd");
    int idle = timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK);
    CHECK(idle >= 0, "idle timerfd");
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR1);
    CHECK(sigprocmask(SIG_BLOCK, &m, NULL) == 0, "block");
    int s = signalfd(-1, &m, 0);
    CHECK(s >= 0, "signalfd");
    char dir[512];
    snprintf(dir, sizeof dir, "%s", argv[1]);
    dirname(dir);
    /* A directory of our own: what the test makes next to the output file after "ready" (the
     * store) must not queue events, since a checkpoint refuses queued inotify events. */
    strcat(dir, "/watched");
    CHECK(mkdir(dir, 0700) == 0, "mkdir watched");
    int in = inotify_init1(0);
    CHECK(in >= 0, "inotify");
    int w1 = inotify_add_watch(in, dir, IN_CREATE);
    int w2 = inotify_add_watch(in, argv[1], IN_DELETE_SELF);
    CHECK(w1 > 0 && w2 > 0 && inotify_rm_watch(in, w1) == 0, "watches");
    int w3 = inotify_add_watch(in, dir, IN_CREATE);
    CHECK(w3 > w2, "wd after the gap");
    char evbuf[4096];
    /* Drain what the setup queued (IN_IGNORED for w1, IN_MODIFY from our own writes). */
    int fl = fcntl(in, F_GETFL);
    fcntl(in, F_SETFL, fl | O_NONBLOCK);
    while (read(in, evbuf, sizeof evbuf) > 0) {}
    fcntl(in, F_SETFL, fl);
    uint64_t n;
    CHECK(read(t, &n, 8) == 8, "first tick");
    say("ready");
    wait_go(argv[2]);
    CHECK(read(t, &n, 8) == 8 && n >= 1, "tick after restore");
    CHECK(read(t, &n, 8) == 8 && n >= 1, "another tick");
    struct itimerspec cur;
    CHECK(timerfd_gettime(idle, &cur) == 0 && cur.it_value.tv_sec == 0 && cur.it_value.tv_nsec == 0, "idle timer stays disarmed");
    CHECK(read(idle, &n, 8) == -1, "idle timer is non-blocking");
    CHECK(kill(getpid(), SIGUSR1) == 0, "kill");
    struct signalfd_siginfo si;
    CHECK(read(s, &si, sizeof si) == sizeof si && si.ssi_signo == SIGUSR1, "signalfd reads SIGUSR1");
    char made[600];
    snprintf(made, sizeof made, "%s/created-after-restore", dir);
    int c = open(made, O_CREAT | O_WRONLY, 0600);
    CHECK(c >= 0, "create");
    close(c);
    /* The test's own "go" file comes first; look for ours. */
    int found = 0;
    for (int tries = 0; tries < 10 && !found; tries++) {
        ssize_t got = read(in, evbuf, sizeof evbuf);
        CHECK(got > 0, "inotify event");
        for (char *q = evbuf; q < evbuf + got;) {
            struct inotify_event *ev = (struct inotify_event *)q;
            if (ev->len && strcmp(ev->name, "created-after-restore") == 0) {
                CHECK(ev->wd == w3 && (ev->mask & IN_CREATE), "event wd %d (want %d)", ev->wd, w3);
                found = 1;
            }
            q += sizeof *ev + ev->len;
        }
    }
    CHECK(found, "inotify reported the new file");
    say("ok");
    return 0;
}
