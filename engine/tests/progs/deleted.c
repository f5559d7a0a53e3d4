/* Files that are open but have no name: a file deleted after it was opened (read offset in the
 * middle), an O_TMPFILE file, and a sealed memfd. After the restore their contents, offsets,
 * memfd name and seals are back. */
#include "zaptest.h"
#include <sys/mman.h>
#include <libgen.h>

int main(int argc, char **argv) {
    zt_init(argc, argv);
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s", argv[1]);
    dirname(dir);
    snprintf(path, sizeof path, "%s/soon-gone", dir);
    int d = open(path, O_CREAT | O_RDWR, 0600);
    CHECK(d >= 0 && write(d, "hello-deleted", 13) == 13, "deleted file");
    CHECK(unlink(path) == 0 && lseek(d, 6, SEEK_SET) == 6, "unlink");
    int t = open(dir, O_TMPFILE | O_RDWR, 0600);
    CHECK(t >= 0 && write(t, "anonymous", 9) == 9, "O_TMPFILE");
    int m = memfd_create("zapmem", MFD_ALLOW_SEALING);
    CHECK(m >= 0 && write(m, "sealed-contents", 15) == 15, "memfd");
    CHECK(fcntl(m, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK) == 0, "seal");
    say("ready");
    wait_go(argv[2]);
    char buf[32] = {0};
    CHECK(read(d, buf, sizeof buf) == 7 && memcmp(buf, "deleted", 7) == 0, "deleted file content after offset: %s", buf);
    memset(buf, 0, sizeof buf);
    CHECK(pread(t, buf, sizeof buf, 0) == 9 && memcmp(buf, "anonymous", 9) == 0, "tmpfile content");
    CHECK(lseek(t, 0, SEEK_CUR) == 9, "tmpfile offset");
    memset(buf, 0, sizeof buf);
    CHECK(pread(m, buf, sizeof buf, 0) == 15 && memcmp(buf, "sealed-contents", 15) == 0, "memfd content");
    CHECK(fcntl(m, F_GET_SEALS) == (F_SEAL_GROW | F_SEAL_SHRINK), "memfd seals %x", fcntl(m, F_GET_SEALS));
    CHECK(ftruncate(m, 100) == -1, "sealed memfd cannot grow");
    char link[64], target[256] = {0};
    snprintf(link, sizeof link, "/proc/self/fd/%d", m);
    CHECK(readlink(link, target, sizeof target - 1) > 0 && strncmp(target, "/memfd:zapmem", 13) == 0, "memfd name: %s", target);
    say("ok");
    return 0;
}
