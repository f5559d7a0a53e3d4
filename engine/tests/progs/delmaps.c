/* Mappings of deleted files and memfds, shared with their fds and across a fork:
 *   - a memfd "zap-shared" with an fd kept, mapped MAP_SHARED in us and in a forked child;
 *   - a memfd mapped MAP_SHARED whose fd was closed (only the mapping holds it), sealed
 *     against growing before;
 *   - a file in argv[3], mapped MAP_PRIVATE with one page written privately, then deleted;
 *   - a deleted file mapped MAP_SHARED with its fd kept.
 * After the restore: writes through an fd show in the mappings and back, the child's writes
 * show in ours, private pages keep their private bytes, contents are intact. */
#include "zaptest.h"
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>

int main(int argc, char **argv) {
    zt_init(argc, argv);
    CHECK(argc >= 4, "usage: out go dir");
    int mfd = memfd_create("zap-shared", MFD_ALLOW_SEALING);
    CHECK(mfd >= 0 && ftruncate(mfd, 8192) == 0, "memfd");
    char *shm = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    CHECK(shm != MAP_FAILED, "map memfd");
    strcpy(shm, "memfd-before");
    int lone = memfd_create("zap-lone", MFD_ALLOW_SEALING);
    CHECK(lone >= 0 && ftruncate(lone, 4096 * 3) == 0, "lone memfd");
    char *lmap = mmap(NULL, 4096 * 3, PROT_READ | PROT_WRITE, MAP_SHARED, lone, 0);
    CHECK(lmap != MAP_FAILED && fcntl(lone, F_ADD_SEALS, F_SEAL_GROW) == 0, "lone map");
    strcpy(lmap + 4096 * 2, "lone-page-3");
    close(lone);
    char path[700], path2[700];
    snprintf(path, sizeof path, "%s/private", argv[3]);
    snprintf(path2, sizeof path2, "%s/shared", argv[3]);
    int pf = open(path, O_CREAT | O_RDWR, 0600);
    char page[4096];
    memset(page, 'f', sizeof page);
    CHECK(pf >= 0 && write(pf, page, 4096) == 4096 && write(pf, page, 4096) == 4096, "private file");
    char *priv = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE, pf, 0);
    CHECK(priv != MAP_FAILED, "map private");
    priv[4096] = 'P'; /* a private copy of page 2 */
    close(pf);
    CHECK(unlink(path) == 0, "unlink private");
    int sf = open(path2, O_CREAT | O_RDWR, 0600);
    CHECK(sf >= 0 && ftruncate(sf, 4096) == 0, "shared file");
    char *smap = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, sf, 0);
    CHECK(smap != MAP_FAILED && unlink(path2) == 0, "shared deleted file");
    strcpy(smap, "deleted-shared");
    int go_child[2];
    CHECK(pipe(go_child) == 0, "pipe");
    pid_t kid = fork();
    if (kid == 0) {
        char c;
        if (read(go_child[0], &c, 1) != 1) _exit(1);
        strcpy(shm + 4096, "from-child");
        _exit(0);
    }
    say("ready");
    wait_go(argv[2]);
    CHECK(strcmp(shm, "memfd-before") == 0, "memfd contents");
    CHECK(pwrite(mfd, "via-fd", 7, 100) == 7 && strcmp(shm + 100, "via-fd") == 0, "fd and mapping share the memfd");
    strcpy(shm + 200, "via-map");
    char buf[16] = {0};
    CHECK(pread(mfd, buf, 8, 200) == 8 && strcmp(buf, "via-map") == 0, "mapping writes reach the fd");
    CHECK(fcntl(mfd, F_GET_SEALS) == 0, "memfd seals: %d", fcntl(mfd, F_GET_SEALS));
    CHECK(write(go_child[1], "g", 1) == 1, "go child");
    int st;
    CHECK(waitpid(kid, &st, 0) == kid && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child");
    CHECK(strcmp(shm + 4096, "from-child") == 0, "the child's mapping is shared with ours: %.12s", shm + 4096);
    CHECK(strcmp(lmap + 4096 * 2, "lone-page-3") == 0, "memfd held by a mapping only");
    CHECK(priv[0] == 'f' && priv[4096] == 'P' && priv[4097] == 'f', "private mapping of a deleted file");
    CHECK(strcmp(smap, "deleted-shared") == 0, "shared mapping of a deleted file");
    CHECK(pread(sf, buf, 15, 0) == 15 && strcmp(buf, "deleted-shared") == 0, "its fd sees the mapping");
    struct stat s;
    CHECK(fstat(sf, &s) == 0 && s.st_nlink == 0, "still deleted");
    say("ok");
    return 0;
}
