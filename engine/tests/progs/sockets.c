/* Sockets: a stream socketpair with bytes queued in both directions, a datagram socketpair with
 * three queued messages, a listening TCP socket on 127.0.0.1 (argv[3] = port) that must accept a
 * new client after the restore, and a bound UDP socket. */
#include "zaptest.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

int main(int argc, char **argv) {
    zt_init(argc, argv);
    int s[2], d[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0, "socketpair stream");
    CHECK(socketpair(AF_UNIX, SOCK_DGRAM, 0, d) == 0, "socketpair dgram");
    CHECK(write(s[0], "to-one", 6) == 6 && write(s[1], "to-zero!", 8) == 8, "stream writes");
    CHECK(send(d[0], "m1", 2, 0) == 2 && send(d[0], "msg-2", 5, 0) == 5 && send(d[0], "third", 5, 0) == 5, "dgram sends");
    int l = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[3])) };
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    CHECK(bind(l, (struct sockaddr *)&a, sizeof a) == 0, "bind tcp");
    CHECK(listen(l, 8) == 0, "listen");
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in ua = a;
    ua.sin_port = htons(atoi(argv[3]) + 1);
    CHECK(bind(u, (struct sockaddr *)&ua, sizeof ua) == 0, "bind udp");
    say("ready");
    wait_go(argv[2]);
    char buf[64] = {0};
    CHECK(read(s[1], buf, sizeof buf) == 6 && memcmp(buf, "to-one", 6) == 0, "stream to one: %s", buf);
    CHECK(read(s[0], buf, sizeof buf) == 8 && memcmp(buf, "to-zero!", 8) == 0, "stream to zero: %s", buf);
    CHECK(recv(d[1], buf, sizeof buf, 0) == 2 && memcmp(buf, "m1", 2) == 0, "dgram 1");
    CHECK(recv(d[1], buf, sizeof buf, 0) == 5 && memcmp(buf, "msg-2", 5) == 0, "dgram 2");
    CHECK(recv(d[1], buf, sizeof buf, 0) == 5 && memcmp(buf, "third", 5) == 0, "dgram 3");
    CHECK(write(s[0], "again", 5) == 5 && read(s[1], buf, sizeof buf) == 5, "pair still connected");
    struct sockaddr_in got;
    socklen_t gl = sizeof got;
    CHECK(getsockname(u, (struct sockaddr *)&got, &gl) == 0 && got.sin_port == ua.sin_port, "udp port");
    say("listening");
    int c = accept(l, NULL, NULL);
    CHECK(c >= 0, "accept after restore");
    int n = read(c, buf, sizeof buf);
    CHECK(n == 4 && memcmp(buf, "ping", 4) == 0, "client bytes");
    CHECK(write(c, "pong", 4) == 4, "reply");
    close(c);
    say("ok");
    return 0;
}
