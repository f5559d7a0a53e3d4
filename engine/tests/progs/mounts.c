/* Mounts made inside a pod (its own mount namespace), checked after a restore.
 * argv: out go W, where W is an empty directory of the host (made by the test).
 * Sets up: a tmpfs with every kind of node (owners, modes, times, xattr, hard link, sparse and
 * large files, an immutable file, devices, FIFO, socket file) with a file kept open and the
 * working directory in it; a read-only bind mount of a host directory; a bind mount of a file
 * over a file; a bind of a tmpfs subdirectory; two tmpfs stacked on one mount point (the lower
 * one's files hidden); a tmpfs inside the tmpfs; mqueue, devpts, proc, sysfs and cgroup2
 * instances; shared, peer, slave and unbindable mounts; nosuid/nodev/noexec/noatime; the pod's
 * /sys made read-only and its /sys/fs/cgroup unmounted. */
#include "zaptest.h"
#include <errno.h>
#include <linux/fs.h>
#include <linux/magic.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#ifndef MQUEUE_MAGIC
#define MQUEUE_MAGIC 0x19800202
#endif
#ifndef DEVPTS_SUPER_MAGIC
#define DEVPTS_SUPER_MAGIC 0x1cd1
#endif
#ifndef CGROUP2_SUPER_MAGIC
#define CGROUP2_SUPER_MAGIC 0x63677270
#endif

static char W[400];
static char P[64][600];
static int np = 0;

static const char *p(const char *rel) {
    char *s = P[np++ % 64];
    snprintf(s, 600, "%s/%s", W, rel);
    return s;
}

static void must(int rc, const char *what) {
    if (rc != 0) {
        say("FAIL setup %s: %s", what, strerror(errno));
        _exit(1);
    }
}

static void put(const char *path, const char *data, mode_t mode) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    must(fd < 0, path);
    if (write(fd, data, strlen(data)) != (ssize_t)strlen(data)) _exit(4);
    close(fd);
}

static int has(const char *path, const char *want) {
    char buf[256] = {0};
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    return n >= 0 && strcmp(buf, want) == 0;
}

/* The topmost mount at `mp` in /proc/self/mountinfo: per-mount options, optional fields,
 * type and super options. */
static int mountinfo(const char *mp, char *opts, char *optional, char *fstype, char *super) {
    FILE *f = fopen("/proc/self/mountinfo", "r");
    char line[2048];
    int found = 0;
    while (f && fgets(line, sizeof line, f)) {
        char m[600], o[256], rest[1500];
        if (sscanf(line, "%*d %*d %*s %*s %599s %255s %1499[^\n]", m, o, rest) != 3) continue;
        if (strcmp(m, mp) != 0) continue;
        found = 1;
        strcpy(opts, o);
        /* Optional fields (maybe none), then " - type source super". */
        char *dash = strncmp(rest, "- ", 2) == 0 ? rest : strstr(rest, " - ");
        if (!dash) continue;
        char *after = dash == rest ? rest + 2 : dash + 3;
        *dash = 0;
        strcpy(optional, rest);
        fstype[0] = super[0] = 0;
        sscanf(after, "%63s %*s %255s", fstype, super);
    }
    if (f) fclose(f);
    return found;
}

static long group_of(const char *optional, const char *tag) {
    const char *s = strstr(optional, tag);
    return s ? atol(s + strlen(tag)) : -1;
}

static int stat_at_mode(const char *path, mode_t want, uid_t uid, gid_t gid) {
    struct stat st;
    return lstat(path, &st) == 0 && st.st_mode == want && st.st_uid == uid && st.st_gid == gid;
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    if (argc < 4) _exit(2);
    snprintf(W, sizeof W, "%s", argv[3]);
    umask(0);
    char opts[256], optional[1500], fstype[64], super[256];
    struct stat st;

    /* The pod's namespace starts as the host's copy, made private by zap-init. */
    const char *dirs[] = {"t", "bind", "src", "b2", "t2", "mq", "pts", "proc", "sys", "cg", "shared", "peer", "slave", "unb", "flags", NULL};
    for (int i = 0; dirs[i]; i++) must(mkdir(p(dirs[i]), 0755) && errno != EEXIST, dirs[i]);
    put(p("src/hostfile"), "from-host", 0644);
    put(p("srcfile"), "file-bound", 0644);

    /* 1. A tmpfs with everything in it. */
    must(mount("tm1", p("t"), "tmpfs", 0, "size=16m,mode=751,uid=12,gid=34"), "mount tmpfs");
    put(p("t/plain"), "hello", 0640);
    must(chown(p("t/plain"), 1234, 5678), "chown plain");
    must(setxattr(p("t/plain"), "user.zap", "v1", 2, 0), "setxattr");
    must(link(p("t/plain"), p("t/hard")), "link");
    must(mkdir(p("t/sub"), 02705), "mkdir sub");
    must(chmod(p("t/sub"), 02705), "chmod sub");
    put(p("t/sub/x"), "in-sub", 0600);
    must(symlink("sub/x", p("t/link")), "symlink");
    must(lchown(p("t/link"), 42, 43), "lchown");
    must(mkfifo(p("t/fifo"), 0620), "mkfifo");
    must(mknod(p("t/sock"), S_IFSOCK | 0700, 0), "mknod sock");
    must(mknod(p("t/null"), S_IFCHR | 0666, makedev(1, 3)), "mknod chr");
    must(mknod(p("t/blk"), S_IFBLK | 0600, makedev(7, 200)), "mknod blk");
    put(p("t/suid"), "#!/bin/sh\n", 0755);
    must(chown(p("t/suid"), 1000, 1000), "chown suid");
    must(chmod(p("t/suid"), 04755), "chmod suid");
    put(p("t/immutable"), "frozen-data", 0644);
    int ifd = open(p("t/immutable"), O_RDONLY);
    int fl = FS_IMMUTABLE_FL;
    must(ifd < 0 || ioctl(ifd, FS_IOC_SETFLAGS, &fl), "chattr +i");
    close(ifd);
    /* Sparse: 8 MiB with data at 0 and at 6 MiB. */
    int sfd = open(p("t/sparse"), O_RDWR | O_CREAT, 0644);
    must(sfd < 0 || ftruncate(sfd, 8 << 20), "sparse");
    if (pwrite(sfd, "head", 4, 0) != 4 || pwrite(sfd, "tail", 4, 6 << 20) != 4) _exit(5);
    close(sfd);
    /* Large: 5 MiB of a pattern (more than one piece). */
    int bfd = open(p("t/large"), O_RDWR | O_CREAT, 0644);
    static unsigned char big[5 << 20];
    for (size_t i = 0; i < sizeof big; i++) big[i] = (unsigned char)(i * 7 + i / 4096);
    if (write(bfd, big, sizeof big) != (ssize_t)sizeof big) _exit(6);
    close(bfd);
    struct timespec ts[2] = {{1000000000, 123}, {1100000000, 456}};
    must(utimensat(AT_FDCWD, p("t/plain"), ts, 0), "utimensat plain");
    must(utimensat(AT_FDCWD, p("t/link"), ts, AT_SYMLINK_NOFOLLOW), "utimensat link");
    must(utimensat(AT_FDCWD, p("t/sub"), ts, 0), "utimensat sub");
    /* A file kept open, and the working directory, on the tmpfs. */
    int keep = open(p("t/open"), O_RDWR | O_CREAT, 0600);
    if (write(keep, "abc", 3) != 3) _exit(7);
    must(chdir(p("t/sub")), "chdir");

    /* 2. A read-only bind of a host directory. */
    must(mount(p("src"), p("bind"), NULL, MS_BIND, NULL), "bind dir");
    must(mount(NULL, p("bind"), NULL, MS_BIND | MS_REMOUNT | MS_RDONLY, NULL), "remount ro");
    /* 3. A file bound over a file (on the tmpfs). */
    put(p("t/filemp"), "underneath", 0644);
    must(mount(p("srcfile"), p("t/filemp"), NULL, MS_BIND, NULL), "bind file");
    /* 4. A bind of a tmpfs subdirectory. */
    must(mount(p("t/sub"), p("b2"), NULL, MS_BIND, NULL), "bind subdir");
    /* 5. Two tmpfs stacked on one mount point. */
    must(mount("low", p("t2"), "tmpfs", 0, "size=1m"), "lower tmpfs");
    put(p("t2/lower"), "lower-file", 0644);
    must(mount("up", p("t2"), "tmpfs", 0, "size=1m"), "upper tmpfs");
    put(p("t2/upper"), "upper-file", 0644);
    /* 6. A tmpfs inside the tmpfs. */
    must(mkdir(p("t/inner"), 0755), "mkdir inner");
    must(mount("inner", p("t/inner"), "tmpfs", MS_NOSUID, "size=1m,nr_inodes=100"), "inner tmpfs");
    put(p("t/inner/i"), "inner-file", 0644);
    /* 7. Pseudo file systems. */
    must(mount("mqueue", p("mq"), "mqueue", 0, NULL), "mqueue");
    must(mount("devpts", p("pts"), "devpts", 0, "newinstance,ptmxmode=0666,mode=620"), "devpts");
    must(mount("proc", p("proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=invisible"), "proc");
    must(mount("sysfs", p("sys"), "sysfs", MS_RDONLY, NULL), "sysfs");
    must(mount("cgroup2", p("cg"), "cgroup2", 0, NULL), "cgroup2");
    /* 8. Propagation. */
    must(mount("sh", p("shared"), "tmpfs", 0, "size=1m"), "shared tmpfs");
    must(mount(NULL, p("shared"), NULL, MS_SHARED, NULL), "make shared");
    must(mount(p("shared"), p("peer"), NULL, MS_BIND, NULL), "peer");
    must(mount(p("shared"), p("slave"), NULL, MS_BIND, NULL), "slave bind");
    must(mount(NULL, p("slave"), NULL, MS_SLAVE, NULL), "make slave");
    must(mount("ub", p("unb"), "tmpfs", 0, "size=1m"), "unbindable tmpfs");
    must(mount(NULL, p("unb"), NULL, MS_UNBINDABLE, NULL), "make unbindable");
    /* 9. Flags. */
    must(mount("fl", p("flags"), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME, "size=1m"), "flags tmpfs");
    /* 10. Starting mounts changed: /sys read-only, /sys/fs/cgroup gone. */
    must(umount("/sys/fs/cgroup"), "umount /sys/fs/cgroup");
    must(mount(NULL, "/sys", NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL), "remount /sys ro");

    say("ready");
    wait_go(argv[2]);

    /* The tmpfs and its nodes. */
    CHECK(mountinfo(p("t"), opts, optional, fstype, super), "tmpfs gone");
    CHECK(strcmp(fstype, "tmpfs") == 0 && strstr(super, "size=16384k") && strstr(super, "mode=751") && strstr(super, "uid=12") && strstr(super, "gid=34"),
          "tmpfs options %s %s", fstype, super);
    /* Times first: reading the file updates its access time (relatime, atime < mtime). */
    CHECK(lstat(p("t/plain"), &st) == 0 && st.st_mtim.tv_sec == 1100000000 && st.st_mtim.tv_nsec == 456 && st.st_atim.tv_sec == 1000000000 &&
              st.st_atim.tv_nsec == 123,
          "plain times %ld.%ld %ld.%ld", (long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec, (long)st.st_atim.tv_sec, st.st_atim.tv_nsec);
    CHECK(has(p("t/plain"), "hello"), "plain content");
    CHECK(stat_at_mode(p("t/plain"), S_IFREG | 0640, 1234, 5678), "plain mode/owner");
    CHECK(lstat(p("t/plain"), &st) == 0, "stat plain");
    CHECK(st.st_nlink == 2, "hard link count %ld", (long)st.st_nlink);
    struct stat st2;
    CHECK(lstat(p("t/hard"), &st2) == 0 && st2.st_ino == st.st_ino, "hard link is another file");
    char xv[16] = {0};
    CHECK(getxattr(p("t/plain"), "user.zap", xv, sizeof xv) == 2 && strcmp(xv, "v1") == 0, "xattr");
    CHECK(stat_at_mode(p("t/sub"), S_IFDIR | 02705, 0, 0), "sub mode");
    CHECK(lstat(p("t/sub"), &st) == 0 && st.st_mtim.tv_sec == 1100000000, "sub mtime");
    char lt[64] = {0};
    CHECK(readlink(p("t/link"), lt, sizeof lt) == 5 && strcmp(lt, "sub/x") == 0, "symlink target");
    CHECK(stat_at_mode(p("t/link"), S_IFLNK | 0777, 42, 43), "symlink owner");
    CHECK(lstat(p("t/link"), &st) == 0 && st.st_mtim.tv_sec == 1100000000, "symlink mtime");
    CHECK(stat_at_mode(p("t/fifo"), S_IFIFO | 0620, 0, 0), "fifo");
    CHECK(stat_at_mode(p("t/sock"), S_IFSOCK | 0700, 0, 0), "socket file");
    CHECK(lstat(p("t/null"), &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3), "char device");
    CHECK(lstat(p("t/blk"), &st) == 0 && S_ISBLK(st.st_mode) && st.st_rdev == makedev(7, 200), "block device");
    CHECK(stat_at_mode(p("t/suid"), S_IFREG | 04755, 1000, 1000), "setuid file");
    ifd = open(p("t/immutable"), O_RDONLY);
    fl = 0;
    CHECK(ifd >= 0 && ioctl(ifd, FS_IOC_GETFLAGS, &fl) == 0 && (fl & FS_IMMUTABLE_FL), "immutable flag");
    close(ifd);
    CHECK(open(p("t/immutable"), O_WRONLY) < 0 && errno == EPERM, "immutable file writable");
    CHECK(has(p("t/immutable"), "frozen-data"), "immutable content");
    CHECK(stat(p("t/sparse"), &st) == 0 && st.st_size == (8 << 20) && st.st_blocks <= 64, "sparse size %ld blocks %ld", (long)st.st_size, (long)st.st_blocks);
    sfd = open(p("t/sparse"), O_RDONLY);
    char hb[5] = {0};
    CHECK(pread(sfd, hb, 4, 6 << 20) == 4 && strcmp(hb, "tail") == 0, "sparse tail");
    CHECK(lseek(sfd, 4096, SEEK_DATA) == (6 << 20), "hole not kept");
    close(sfd);
    static unsigned char back[5 << 20];
    bfd = open(p("t/large"), O_RDONLY);
    CHECK(read(bfd, back, sizeof back) == (ssize_t)sizeof back && memcmp(back, big, sizeof big) == 0, "large content");
    close(bfd);
    /* The open file and the working directory. */
    CHECK(write(keep, "def", 3) == 3, "write open file");
    CHECK(has(p("t/open"), "abcdef"), "open file is the tmpfs file");
    char cwd[600];
    CHECK(getcwd(cwd, sizeof cwd) && strcmp(cwd, p("t/sub")) == 0, "cwd %s", cwd);
    CHECK(has("x", "in-sub"), "relative path in cwd");

    /* Binds. */
    CHECK(has(p("bind/hostfile"), "from-host"), "dir bind");
    CHECK(mountinfo(p("bind"), opts, optional, fstype, super) && strncmp(opts, "ro", 2) == 0, "bind not read-only: %s", opts);
    CHECK(open(p("bind/new"), O_WRONLY | O_CREAT, 0644) < 0 && errno == EROFS, "bind writable");
    CHECK(has(p("t/filemp"), "file-bound"), "file over file");
    CHECK(has(p("b2/x"), "in-sub"), "bind of tmpfs subdir");
    put(p("b2/shared-write"), "same-fs", 0644);
    CHECK(has(p("t/sub/shared-write"), "same-fs"), "subdir bind is another file system");
    /* Stacked: upper on top, lower underneath with its own file. */
    CHECK(has(p("t2/upper"), "upper-file") && access(p("t2/lower"), F_OK) != 0, "stacked top");
    CHECK(umount(p("t2")) == 0, "umount upper: %s", strerror(errno));
    CHECK(has(p("t2/lower"), "lower-file"), "stacked lower");
    /* Inner tmpfs. */
    CHECK(has(p("t/inner/i"), "inner-file"), "inner tmpfs");
    CHECK(mountinfo(p("t/inner"), opts, optional, fstype, super) && strstr(opts, "nosuid") && strstr(super, "nr_inodes=100"), "inner %s %s", opts, super);
    /* Pseudo file systems. */
    struct statfs sf;
    CHECK(statfs(p("mq"), &sf) == 0 && sf.f_type == MQUEUE_MAGIC, "mqueue");
    CHECK(statfs(p("pts"), &sf) == 0 && sf.f_type == DEVPTS_SUPER_MAGIC, "devpts");
    CHECK(mountinfo(p("pts"), opts, optional, fstype, super) && strstr(super, "ptmxmode=666") && strstr(super, "mode=620"), "devpts %s", super);
    CHECK(statfs(p("proc"), &sf) == 0 && sf.f_type == PROC_SUPER_MAGIC, "proc");
    CHECK(mountinfo(p("proc"), opts, optional, fstype, super) && strstr(super, "hidepid=invisible") && strstr(opts, "noexec"), "proc %s %s", opts, super);
    char selfp[700];
    snprintf(selfp, sizeof selfp, "%s/%d", p("proc"), getpid());
    CHECK(access(selfp, F_OK) == 0, "proc shows the pod's pids");
    CHECK(statfs(p("sys"), &sf) == 0 && sf.f_type == SYSFS_MAGIC, "sysfs");
    CHECK(mountinfo(p("sys"), opts, optional, fstype, super) && strncmp(opts, "ro", 2) == 0, "sysfs ro %s", opts);
    CHECK(statfs(p("cg"), &sf) == 0 && sf.f_type == CGROUP2_SUPER_MAGIC, "cgroup2");
    CHECK(access(p("cg/cgroup.procs"), F_OK) == 0, "cgroup2 files");
    /* Propagation. */
    CHECK(mountinfo(p("shared"), opts, optional, fstype, super), "shared gone");
    long g = group_of(optional, "shared:");
    CHECK(g > 0, "shared not shared: %s", optional);
    CHECK(mountinfo(p("peer"), opts, optional, fstype, super) && group_of(optional, "shared:") == g, "peer: %s", optional);
    CHECK(mountinfo(p("slave"), opts, optional, fstype, super) && group_of(optional, "master:") == g && group_of(optional, "shared:") < 0, "slave: %s", optional);
    CHECK(mountinfo(p("unb"), opts, optional, fstype, super) && strstr(optional, "unbindable"), "unbindable: %s", optional);
    must(mkdir(p("shared/x"), 0755), "mkdir shared/x");
    CHECK(mount("prop", p("shared/x"), "tmpfs", 0, "size=1m") == 0, "mount under shared");
    CHECK(mountinfo(p("peer/x"), opts, optional, fstype, super) && mountinfo(p("slave/x"), opts, optional, fstype, super), "no propagation to peer/slave");
    must(mkdir(p("slave/y"), 0755), "mkdir slave/y");
    CHECK(mount("back", p("slave/y"), "tmpfs", 0, "size=1m") == 0, "mount under slave");
    CHECK(!mountinfo(p("shared/y"), opts, optional, fstype, super), "slave propagated back");
    CHECK(mount(p("unb"), p("t/inner"), NULL, MS_BIND, NULL) != 0 && errno == EINVAL, "unbindable bound");
    /* Flags. */
    CHECK(mountinfo(p("flags"), opts, optional, fstype, super) && strstr(opts, "nosuid") && strstr(opts, "nodev") && strstr(opts, "noexec") && strstr(opts, "noatime"),
          "flags %s", opts);
    /* Starting mounts as the pod left them. */
    struct statvfs sv;
    CHECK(statvfs("/sys", &sv) == 0 && (sv.f_flag & ST_RDONLY), "/sys not read-only");
    CHECK(statfs("/sys/fs/cgroup", &sf) == 0 && sf.f_type == SYSFS_MAGIC, "/sys/fs/cgroup mounted again");
    say("ok");
    return 0;
}
