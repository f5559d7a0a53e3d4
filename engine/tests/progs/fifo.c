/* A named pipe (argv[3], made by the test) opened for reading and for writing, holding bytes. */
#include "zaptest.h"

int main(int argc, char **argv) {
    zt_init(argc, argv);
    int r = open(argv[3], O_RDONLY | O_NONBLOCK);
    int w = open(argv[3], O_WRONLY);
    CHECK(r >= 0 && w >= 0, "open fifo");
    CHECK(write(w, "hello fifo", 10) == 10, "write");
    say("ready");
    wait_go(argv[2]);
    char buf[16] = {0};
    CHECK(read(r, buf, sizeof buf) == 10 && memcmp(buf, "hello fifo", 10) == 0, "fifo content '%s'", buf);
    CHECK(write(w, "again", 5) == 5 && read(r, buf, 5) == 5 && memcmp(buf, "again", 5) == 0, "fifo reuse");
    say("ok");
    return 0;
}
