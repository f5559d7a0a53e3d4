/* Character devices that keep no state per open file, held across a checkpoint: /dev/null,
 * /dev/zero, /dev/full, /dev/urandom, /dev/kmsg opened write-only and /dev/net/tun not attached
 * to an interface. After the restore each fd is the same device with the same access mode and
 * behaves as one: null swallows, zero reads zeros, full refuses with ENOSPC, urandom gives bytes,
 * kmsg takes a line, and the tun fd attaches to a new interface (zt1). */
#include "zaptest.h"
#include <errno.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sys/ioctl.h>
#include <sys/sysmacros.h>

static int at(int want, const char *path, int flags) {
    int fd = open(path, flags);
    if (fd < 0) return -1;
    CHECK(dup2(fd, want) == want, "dup2 %s", path);
    close(fd);
    return want;
}

static void same_dev(int fd, unsigned maj, unsigned min, const char *what) {
    struct stat st;
    CHECK(fstat(fd, &st) == 0 && S_ISCHR(st.st_mode), "%s: fstat", what);
    CHECK(major(st.st_rdev) == maj && minor(st.st_rdev) == min, "%s: device %u:%u", what, major(st.st_rdev), minor(st.st_rdev));
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    CHECK(at(20, "/dev/null", O_WRONLY) == 20, "open /dev/null");
    CHECK(at(21, "/dev/zero", O_RDONLY) == 21, "open /dev/zero");
    CHECK(at(22, "/dev/full", O_RDWR) == 22, "open /dev/full");
    CHECK(at(23, "/dev/urandom", O_RDONLY) == 23, "open /dev/urandom");
    CHECK(at(24, "/dev/kmsg", O_WRONLY) == 24, "open /dev/kmsg write-only: errno %d", errno);
    int tun = at(25, "/dev/net/tun", O_RDWR);
    say("ready");
    wait_go(argv[2]);
    char buf[64];
    same_dev(20, 1, 3, "null");
    same_dev(21, 1, 5, "zero");
    same_dev(22, 1, 7, "full");
    same_dev(23, 1, 9, "urandom");
    same_dev(24, 1, 11, "kmsg");
    CHECK(write(20, "x", 1) == 1, "write /dev/null");
    memset(buf, 7, sizeof buf);
    CHECK(read(21, buf, sizeof buf) == sizeof buf && buf[0] == 0 && buf[63] == 0, "read zeros");
    CHECK(write(22, "x", 1) < 0 && errno == ENOSPC, "/dev/full refuses with ENOSPC: errno %d", errno);
    CHECK(read(23, buf, sizeof buf) == sizeof buf, "read /dev/urandom");
    CHECK((fcntl(24, F_GETFL) & O_ACCMODE) == O_WRONLY, "kmsg write-only");
    CHECK(write(24, "<6>zap devices test\n", 20) == 20, "write /dev/kmsg: errno %d", errno);
    if (tun == 25) {
        same_dev(25, 10, 200, "tun");
        struct ifreq ifr = {0};
        strcpy(ifr.ifr_name, "zt1");
        ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
        CHECK(ioctl(25, TUNSETIFF, &ifr) == 0, "TUNSETIFF after the restore: errno %d", errno);
        memset(&ifr, 0, sizeof ifr);
        CHECK(ioctl(25, TUNGETIFF, &ifr) == 0 && !strcmp(ifr.ifr_name, "zt1"), "attached to zt1");
    } else {
        CHECK(fcntl(25, F_GETFD) < 0, "no tun fd");
    }
    say("ok");
    return 0;
}
