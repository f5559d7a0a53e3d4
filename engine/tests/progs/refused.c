/* Holds one kind of descriptor a checkpoint must refuse (argv[4] names it), says "ready", and
 * after the go file says "ok": a refused checkpoint must leave it running.
 *   uring     an io_uring instance          uffd      a userfaultfd
 *   inotify   an inotify instance with an event queued
 *   linked    a file removed from its path but still linked under another name
 *   fifo-out  a FIFO (argv[3]/fifo) that a process outside the pod holds open too
 *   secret    memfd_secret memory (prints SKIP when the kernel has none)
 *   replaced  a file whose path another file was mounted over since it was opened
 *   pidfd-out a pidfd of a process outside the pod (its init)
 *   tun       /dev/net/tun attached to an interface (zt0, in the pod's network namespace)
 *   kmsg      /dev/kmsg opened for reading, one record read */
#include "zaptest.h"
#include <errno.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/syscall.h>

int main(int argc, char **argv) {
    zt_init(argc, argv);
    CHECK(argc >= 5, "usage: out go dir kind");
    const char *kind = argv[4];
    char p[700], q[700];
    int fd = -1;
    if (!strcmp(kind, "uring")) {
        char params[120] = {0};
        fd = syscall(425 /* io_uring_setup */, 4, params);
    } else if (!strcmp(kind, "uffd")) {
        fd = syscall(SYS_userfaultfd, 0);
    } else if (!strcmp(kind, "inotify")) {
        fd = inotify_init1(0);
        snprintf(p, sizeof p, "%s/watched", argv[3]);
        close(open(p, O_CREAT | O_WRONLY, 0600));
        CHECK(inotify_add_watch(fd, p, IN_ATTRIB) > 0, "watch");
        CHECK(chmod(p, 0640) == 0, "chmod queues an event");
    } else if (!strcmp(kind, "linked")) {
        snprintf(p, sizeof p, "%s/a", argv[3]);
        snprintf(q, sizeof q, "%s/b", argv[3]);
        fd = open(p, O_CREAT | O_RDWR, 0600);
        CHECK(fd >= 0 && link(p, q) == 0 && unlink(p) == 0, "link, unlink");
    } else if (!strcmp(kind, "fifo-out")) {
        snprintf(p, sizeof p, "%s/fifo", argv[3]);
        fd = open(p, O_RDWR);
    } else if (!strcmp(kind, "replaced")) {
        snprintf(p, sizeof p, "%s/a", argv[3]);
        snprintf(q, sizeof q, "%s/b", argv[3]);
        fd = open(p, O_CREAT | O_RDWR, 0600);
        close(open(q, O_CREAT | O_RDWR, 0600));
        CHECK(mount(q, p, NULL, MS_BIND, NULL) == 0, "bind mount over the open file: errno %d", errno);
    } else if (!strcmp(kind, "pidfd-out")) {
        fd = syscall(SYS_pidfd_open, getppid(), 0);
    } else if (!strcmp(kind, "tun")) {
        fd = open("/dev/net/tun", O_RDWR);
        CHECK(fd >= 0, "open /dev/net/tun: errno %d", errno);
        struct ifreq ifr = {0};
        strcpy(ifr.ifr_name, "zt0");
        ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
        CHECK(ioctl(fd, TUNSETIFF, &ifr) == 0, "TUNSETIFF: errno %d", errno);
    } else if (!strcmp(kind, "kmsg")) {
        fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK);
        char rec[8192];
        CHECK(fd >= 0 && read(fd, rec, sizeof rec) > 0, "read a record of /dev/kmsg: errno %d", errno);
    } else if (!strcmp(kind, "secret")) {
        fd = syscall(447 /* memfd_secret */, 0);
        if (fd < 0) {
            say("ready");
            say("SKIP memfd_secret: errno %d", errno);
            wait_go(argv[2]);
            say("ok");
            return 0;
        }
        CHECK(ftruncate(fd, 4096) == 0, "size the secret");
    }
    CHECK(fd >= 0, "%s: errno %d", kind, errno);
    say("ready");
    wait_go(argv[2]);
    say("ok");
    return 0;
}
