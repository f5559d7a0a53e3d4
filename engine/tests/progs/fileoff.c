/* A file written without O_APPEND (the offset must continue), and a read-only fd at an offset. */
#include "zaptest.h"

int main(int argc, char **argv) {
    zt_init(argc, argv);
    int w = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int r = open(argv[4], O_RDONLY);
    CHECK(w >= 0 && r >= 0, "open");
    char a[1000];
    memset(a, 'A', sizeof a);
    CHECK(write(w, a, sizeof a) == 1000, "write A");
    char tmp[123];
    CHECK(read(r, tmp, sizeof tmp) == 123, "read");
    say("ready");
    wait_go(argv[2]);
    memset(a, 'B', sizeof a);
    CHECK(write(w, a, sizeof a) == 1000, "write B");
    char c;
    CHECK(read(r, &c, 1) == 1 && c == (char)('a' + 123 % 26), "read at offset 123 gave %d", c);
    CHECK(lseek(w, 0, SEEK_CUR) == 2000, "offset");
    say("ok");
    return 0;
}
