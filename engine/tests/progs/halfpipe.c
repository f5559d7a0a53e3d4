/* Half-open pipes and FIFOs, pipe sizes and packet mode:
 *   - a pipe whose write end was closed with "tail-data" still buffered: the reader must see the
 *     data, then EOF;
 *   - a pipe whose reader is gone (closed): a write fails with EPIPE;
 *   - a pipe whose reader, a child, exited, and whose write end a forked child still holds;
 *   - a pipe of 1 MiB (F_SETPIPE_SZ) holding 100000 bytes, and a packet-mode pipe (O_DIRECT)
 *     with two packets queued;
 *   - a FIFO whose writer closed after writing "fifo-data" (argv[3] is a directory of ours);
 *   - a FIFO of 256 KiB opened read-write;
 *   - a FIFO deleted while open with "gone-data" buffered.
 * After the restore every one must be as it was. */
#include "zaptest.h"
#include <errno.h>
#include <signal.h>
#include <sys/wait.h>

static void must_read(int fd, const char *want, const char *what) {
    char buf[64] = {0};
    ssize_t n = read(fd, buf, sizeof buf - 1);
    CHECK(n == (ssize_t)strlen(want) && memcmp(buf, want, n) == 0, "%s: read %zd bytes %.20s", what, n, buf);
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    CHECK(argc >= 4, "usage: out go dir");
    signal(SIGPIPE, SIG_IGN);
    int eof[2], noreader[2], big[2], pkt[2], kid[2];
    CHECK(pipe(eof) == 0 && write(eof[1], "tail-data", 9) == 9 && close(eof[1]) == 0, "eof pipe");
    CHECK(pipe(noreader) == 0 && close(noreader[0]) == 0, "reader-less pipe");
    CHECK(pipe(big) == 0 && fcntl(big[1], F_SETPIPE_SZ, 1 << 20) >= (1 << 20), "F_SETPIPE_SZ");
    static char blob[100000];
    for (int i = 0; i < (int)sizeof blob; i++) blob[i] = (char)(i * 7);
    CHECK(write(big[1], blob, sizeof blob) == (ssize_t)sizeof blob, "fill big pipe");
    CHECK(pipe2(pkt, O_DIRECT) == 0 && write(pkt[1], "one", 3) == 3 && write(pkt[1], "two!", 4) == 4, "packet pipe");
    /* A reader child that exits at once; a writer child that keeps the write end. */
    CHECK(pipe(kid) == 0, "kid pipe");
    pid_t reader = fork();
    if (reader == 0) _exit(0);
    CHECK(waitpid(reader, NULL, 0) == reader && close(kid[0]) == 0, "reader gone");
    pid_t writer = fork();
    if (writer == 0)
        for (;;) pause(); /* keeps its inherited write end of kid */
    char path[600], sized[600], gone[600];
    snprintf(path, sizeof path, "%s/fifo", argv[3]);
    snprintf(sized, sizeof sized, "%s/fifo-sized", argv[3]);
    snprintf(gone, sizeof gone, "%s/fifo-gone", argv[3]);
    CHECK(mkfifo(path, 0600) == 0 && mkfifo(sized, 0600) == 0 && mkfifo(gone, 0600) == 0, "mkfifo");
    int fr = open(path, O_RDONLY | O_NONBLOCK);
    int fw = open(path, O_WRONLY);
    CHECK(fr >= 0 && fw >= 0 && write(fw, "fifo-data", 9) == 9 && close(fw) == 0, "fifo writer closed");
    int fs = open(sized, O_RDWR);
    CHECK(fs >= 0 && fcntl(fs, F_SETPIPE_SZ, 256 << 10) >= (256 << 10), "fifo size");
    int fg = open(gone, O_RDWR | O_NONBLOCK);
    CHECK(fg >= 0 && write(fg, "gone-data", 9) == 9 && unlink(gone) == 0, "deleted fifo");
    say("ready");
    wait_go(argv[2]);
    must_read(eof[0], "tail-data", "eof pipe data");
    char c;
    CHECK(read(eof[0], &c, 1) == 0, "eof pipe: EOF after the data");
    errno = 0;
    CHECK(write(noreader[1], "x", 1) == -1 && errno == EPIPE, "reader-less pipe: EPIPE (errno %d)", errno);
    CHECK(fcntl(big[0], F_GETPIPE_SZ) == (1 << 20), "big pipe size %d", fcntl(big[0], F_GETPIPE_SZ));
    static char back[100000];
    size_t got = 0;
    while (got < sizeof back) {
        ssize_t n = read(big[0], back + got, sizeof back - got);
        CHECK(n > 0, "big pipe read");
        got += n;
    }
    CHECK(memcmp(back, blob, sizeof blob) == 0, "big pipe data");
    CHECK(fcntl(pkt[1], F_GETFL) & O_DIRECT, "packet mode kept"); /* pipe2 sets it on the write end */
    char pbuf[16];
    CHECK(read(pkt[0], pbuf, sizeof pbuf) == 3 && read(pkt[0], pbuf, sizeof pbuf) == 4, "packets read one by one");
    errno = 0;
    CHECK(write(kid[1], "x", 1) == -1 && errno == EPIPE, "kid pipe: no reader (errno %d)", errno);
    must_read(fr, "fifo-data", "fifo data");
    CHECK(read(fr, &c, 1) == 0, "fifo: EOF after the data");
    CHECK(fcntl(fs, F_GETPIPE_SZ) == (256 << 10), "fifo size %d", fcntl(fs, F_GETPIPE_SZ));
    struct stat st;
    CHECK(fstat(fg, &st) == 0 && S_ISFIFO(st.st_mode) && st.st_nlink == 0, "deleted fifo stays deleted");
    must_read(fg, "gone-data", "deleted fifo data");
    CHECK(write(fg, "again", 5) == 5, "deleted fifo writable");
    must_read(fg, "again", "deleted fifo reads back");
    kill(writer, SIGKILL);
    waitpid(writer, NULL, 0);
    say("ok");
    return 0;
}
