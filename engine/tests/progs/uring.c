/* An io_uring with its rings mapped: a checkpoint must refuse it (naming the pid and the mapping)
 * and leave the program running. It says "ready", and "ok" once the go file exists. */
#include "zaptest.h"
#include <linux/io_uring.h>
#include <sys/mman.h>
#include <sys/syscall.h>

int main(int argc, char **argv) {
    zt_init(argc, argv);
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    int fd = syscall(SYS_io_uring_setup, 4, &p);
    CHECK(fd >= 0, "io_uring_setup");
    void *sq = mmap(0, p.sq_off.array + p.sq_entries * 4, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
    CHECK(sq != MAP_FAILED, "mmap sq ring");
    say("ready");
    wait_go(argv[2]);
    say("ok");
    return 0;
}
