/* A chrooted process (root argv[3]/jail, working in /sub there) with a file opened before the
 * chroot (argv[3]/outside, at offset 3) and one after it (/sub/f in the jail, at offset 5).
 * After the restore: the root is still the jail (argv[3]/outside is not reachable by its path,
 * /sub is), the working directory is /sub, and both files are the same, at their offsets.
 * Needs root (chroot). */
#include "zaptest.h"
#include <errno.h>

int main(int argc, char **argv) {
    zt_init(argc, argv);
    char p[600];
    snprintf(p, sizeof p, "%s/outside", argv[3]);
    int out = open(p, O_CREAT | O_RDWR, 0600);
    CHECK(out >= 0 && write(out, "outside", 7) == 7 && lseek(out, 3, SEEK_SET) == 3, "outside file");
    snprintf(p, sizeof p, "%s/jail/sub", argv[3]);
    CHECK(mkdir(p, 0755) == 0 || errno == EEXIST, "mkdir jail/sub: errno %d", errno);
    snprintf(p, sizeof p, "%s/jail", argv[3]);
    CHECK(chroot(p) == 0 && chdir("/sub") == 0, "chroot: errno %d", errno);
    int in = open("/sub/f", O_CREAT | O_RDWR, 0600);
    CHECK(in >= 0 && write(in, "inside-jail", 11) == 11 && lseek(in, 5, SEEK_SET) == 5, "inside file");
    say("ready");
    wait_go("/sub/go");
    char buf[64];
    CHECK(getcwd(buf, sizeof buf) && !strcmp(buf, "/sub"), "cwd %s", buf);
    snprintf(p, sizeof p, "%s/outside", argv[3]);
    CHECK(access(p, F_OK) < 0 && access("/sub/f", F_OK) == 0, "the root is the jail");
    CHECK(pread(out, buf, 4, 0) == 4 && !memcmp(buf, "outs", 4) && lseek(out, 0, SEEK_CUR) == 3, "outside fd");
    CHECK(pread(in, buf, 6, 0) == 6 && !memcmp(buf, "inside", 6) && lseek(in, 0, SEEK_CUR) == 5, "inside fd");
    say("ok");
    return 0;
}
