/* AIO contexts (io_setup): one whose ring has wrapped around and holds three completed events not
 * yet reaped, one never used, and a child made by fork that keeps a copy of the first ring's
 * mapping (without the context). After the restore the context ids are the same, the three events
 * come out with their data and results, the ring header agrees, both contexts take and complete
 * new requests, and in the child the copy shows the parent's ring while io_getevents on it
 * fails as before.  argv[3]: a scratch file. */
#include "zaptest.h"
#include <errno.h>
#include <linux/aio_abi.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <sys/wait.h>

struct ring {
    unsigned id, nr, head, tail, magic, compat, incompat, header_length;
    struct io_event events[];
};

static long io_setup(unsigned n, aio_context_t *c) { return syscall(SYS_io_setup, n, c); }
static long io_submit(aio_context_t c, long n, struct iocb **v) { return syscall(SYS_io_submit, c, n, v); }
static long io_getevents(aio_context_t c, long min, long n, struct io_event *e) { return syscall(SYS_io_getevents, c, min, n, e, NULL); }

static char buf[8][64];

static void submit(aio_context_t ctx, int fd, int n, int tag) {
    struct iocb cbs[8], *ptrs[8];
    for (int i = 0; i < n; i++) {
        memset(&cbs[i], 0, sizeof cbs[i]);
        cbs[i].aio_data = (uint64_t)(tag + i);
        cbs[i].aio_lio_opcode = IOCB_CMD_PREAD;
        cbs[i].aio_fildes = fd;
        cbs[i].aio_buf = (uint64_t)(uintptr_t)buf[i];
        cbs[i].aio_nbytes = 8 + i;
        cbs[i].aio_offset = i;
        ptrs[i] = &cbs[i];
    }
    long r = io_submit(ctx, n, ptrs);
    CHECK(r == n, "io_submit %d: %ld (%s)", n, r, strerror(errno));
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    CHECK(argc > 3, "usage");
    int fd = open(argv[3], O_RDWR | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0 && write(fd, "0123456789abcdefghij", 20) == 20, "scratch file");
    aio_context_t ctx = 0, idle = 0;
    CHECK(io_setup(16, &ctx) == 0 && io_setup(4, &idle) == 0, "io_setup: %s", strerror(errno));
    struct ring *r = (struct ring *)ctx;
    struct io_event ev[8];
    pid_t child = fork();
    if (child == 0) {
        wait_go(argv[2]);
        CHECK(r->magic == 0xa10a10a1 && r->nr > 3, "child: the ring copy is gone");
        CHECK(io_getevents(ctx, 0, 1, ev) < 0 && errno == EINVAL, "child: the parent's context works in the child");
        _exit(0);
    }
    /* Wrap the ring around once, then leave three completions unreaped. */
    int rounds = r->nr / 4 + 3;
    for (int i = 0; i < rounds; i++) {
        submit(ctx, fd, 4, 1000);
        CHECK(io_getevents(ctx, 4, 4, ev) == 4, "reap");
    }
    submit(ctx, fd, 3, 100);
    unsigned head = r->head, tail = r->tail;
    CHECK((tail + r->nr - head) % r->nr == 3, "three pending: head %u tail %u", head, tail);
    say("ready %lx %lx head %u tail %u nr %u", (unsigned long)ctx, (unsigned long)idle, head, tail, r->nr);
    wait_go(argv[2]);
    CHECK(r->head == head && r->tail == tail, "ring header: head %u tail %u, was %u %u", r->head, r->tail, head, tail);
    memset(buf, 0, sizeof buf);
    long n = io_getevents(ctx, 3, 8, ev);
    CHECK(n == 3, "io_getevents after restore: %ld (%s)", n, strerror(errno));
    for (int i = 0; i < 3; i++) CHECK(ev[i].data == (uint64_t)(100 + i) && ev[i].res == 8 + i, "event %d: data %llu res %lld", i, ev[i].data, ev[i].res);
    /* New requests on both contexts. */
    for (int k = 0; k < 2; k++) {
        aio_context_t c = k ? idle : ctx;
        submit(c, fd, 2, 500);
        n = io_getevents(c, 2, 2, ev);
        CHECK(n == 2 && ev[0].data == 500 && ev[1].res == 9 && !memcmp(buf[1], "12345678", 8), "context %d after restore: %ld", k, n);
    }
    CHECK(syscall(SYS_io_destroy, ctx) == 0 && syscall(SYS_io_destroy, idle) == 0, "io_destroy");
    int st;
    CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0, "child failed");
    say("ok");
    return 0;
}
