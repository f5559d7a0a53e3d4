/* Socket options on every kind of socket: sets a broad set of SOL_SOCKET, IP and IPv6 options
 * (buffer sizes above the sysctl maximum, priority, mark, credentials passing, timestamps,
 * linger, timeouts, bound device, busy polling, a classic BPF filter locked in place, TOS, TTL,
 * multicast settings and a multicast group membership with a source filter, IPv6 traffic class
 * and packet info) on unix, UDP, TCP and UDPv6 sockets, then after the restore reads every one
 * back and checks that a datagram the filter drops stays dropped.
 * With argv[3] == "ebpf": attaches an eBPF filter instead (a checkpoint must refuse it). */
#include "zaptest.h"
#include <arpa/inet.h>
#include <errno.h>
#include <linux/bpf.h>
#include <linux/filter.h>
#include <linux/net_tstamp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>

#ifndef SO_PASSPIDFD
#define SO_PASSPIDFD 76
#endif
#ifndef SO_BUF_LOCK
#define SO_BUF_LOCK 72
#endif

static int geti(int fd, int level, int name) {
    int v = -12345;
    socklen_t l = sizeof v;
    if (getsockopt(fd, level, name, &v, &l) != 0) return -12346;
    return v;
}

static void seti(int fd, int level, int name, int v, const char *what) {
    CHECK(setsockopt(fd, level, name, &v, sizeof v) == 0, "set %s: %s", what, strerror(errno));
}

#define EXPECT(fd, level, name, want) do { int got_ = geti(fd, level, name); \
    CHECK(got_ == (want), #name " on " #fd ": got %d want %d", got_, (int)(want)); } while (0)

int main(int argc, char **argv) {
    zt_init(argc, argv);
    int u = socket(AF_UNIX, SOCK_STREAM, 0);
    int d = socket(AF_INET, SOCK_DGRAM, 0);
    int t = socket(AF_INET, SOCK_STREAM, 0);
    int d6 = socket(AF_INET6, SOCK_DGRAM, 0);
    CHECK(u >= 0 && d >= 0 && t >= 0 && d6 >= 0, "sockets");
    if (argc > 3 && strcmp(argv[3], "ebpf") == 0) {
        struct bpf_insn prog[] = {
            { .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = 0, .imm = 0 },
            { .code = BPF_JMP | BPF_EXIT },
        };
        union bpf_attr a;
        memset(&a, 0, sizeof a);
        a.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
        a.insns = (unsigned long)prog;
        a.insn_cnt = 2;
        a.license = (unsigned long)"GPL";
        int pfd = syscall(SYS_bpf, BPF_PROG_LOAD, &a, sizeof a);
        CHECK(pfd >= 0, "load eBPF program: %s", strerror(errno));
        CHECK(setsockopt(d, SOL_SOCKET, SO_ATTACH_BPF, &pfd, sizeof pfd) == 0, "attach eBPF: %s", strerror(errno));
        close(pfd);
        say("ready");
        wait_go(argv[2]);
        say("ok");
        return 0;
    }
    /* Unix stream: buffers (one above rmem_max with FORCE), credentials and pidfd passing, timeouts. */
    seti(u, SOL_SOCKET, SO_SNDBUF, 50000, "unix sndbuf");
    seti(u, SOL_SOCKET, SO_RCVBUFFORCE, 6 << 20, "unix rcvbuf force");
    seti(u, SOL_SOCKET, SO_PASSCRED, 1, "passcred");
    int has_pidfd = setsockopt(u, SOL_SOCKET, SO_PASSPIDFD, &(int){1}, sizeof(int)) == 0;
    seti(u, SOL_SOCKET, SO_PRIORITY, 5, "unix priority");
    struct timeval tv = { 3, 250000 }, tv2 = { 0, 700000 };
    CHECK(setsockopt(u, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0, "rcvtimeo");
    CHECK(setsockopt(u, SOL_SOCKET, SO_SNDTIMEO, &tv2, sizeof tv2) == 0, "sndtimeo");
    seti(u, SOL_SOCKET, SO_PEEK_OFF, 0, "peek_off");
    /* UDP: mark, timestamps, broadcast, device, busy poll, incoming CPU, IP options, multicast,
     * and a classic BPF filter that drops datagrams starting with 'X', locked. */
    seti(d, SOL_SOCKET, SO_MARK, 42, "mark");
    seti(d, SOL_SOCKET, SO_TIMESTAMPNS, 1, "timestampns");
    int tsflags = SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE | SOF_TIMESTAMPING_OPT_ID;
    seti(d, SOL_SOCKET, SO_TIMESTAMPING, tsflags, "timestamping");
    seti(d, SOL_SOCKET, SO_BROADCAST, 1, "broadcast");
    seti(d, SOL_SOCKET, SO_DONTROUTE, 1, "dontroute");
    CHECK(setsockopt(d, SOL_SOCKET, SO_BINDTODEVICE, "lo", 3) == 0, "bindtodevice: %s", strerror(errno));
    seti(d, SOL_SOCKET, SO_BUSY_POLL, 50, "busy_poll");
    seti(d, SOL_SOCKET, SO_INCOMING_CPU, 1, "incoming_cpu");
    seti(d, IPPROTO_IP, IP_TOS, 0x10, "tos");
    seti(d, IPPROTO_IP, IP_TTL, 33, "ttl");
    seti(d, IPPROTO_IP, IP_RECVERR, 1, "recverr");
    seti(d, IPPROTO_IP, IP_PKTINFO, 1, "pktinfo");
    seti(d, IPPROTO_IP, IP_FREEBIND, 1, "freebind");
    seti(d, IPPROTO_IP, IP_TRANSPARENT, 1, "transparent");
    seti(d, IPPROTO_IP, IP_MULTICAST_TTL, 5, "mcast ttl");
    seti(d, IPPROTO_IP, IP_MULTICAST_LOOP, 0, "mcast loop");
    struct in_addr lo4;
    inet_pton(AF_INET, "127.0.0.1", &lo4);
    CHECK(setsockopt(d, IPPROTO_IP, IP_MULTICAST_IF, &lo4, sizeof lo4) == 0, "mcast if");
    struct ip_mreqn mreq = { .imr_ifindex = (int)if_nametoindex("lo") };
    inet_pton(AF_INET, "239.1.2.3", &mreq.imr_multiaddr);
    CHECK(setsockopt(d, IPPROTO_IP, IP_ADD_MEMBERSHIP, &mreq, sizeof mreq) == 0, "join 239.1.2.3: %s", strerror(errno));
    struct ip_mreq_source ms = {0};
    inet_pton(AF_INET, "239.1.2.4", &ms.imr_multiaddr);
    inet_pton(AF_INET, "10.9.8.7", &ms.imr_sourceaddr);
    ms.imr_interface = lo4;
    CHECK(setsockopt(d, IPPROTO_IP, IP_ADD_SOURCE_MEMBERSHIP, &ms, sizeof ms) == 0, "join source 239.1.2.4: %s", strerror(errno));
    struct sockaddr_in da = { .sin_family = AF_INET, .sin_port = 0 };
    da.sin_addr = lo4;
    CHECK(bind(d, (struct sockaddr *)&da, sizeof da) == 0, "bind udp");
    socklen_t dl = sizeof da;
    getsockname(d, (struct sockaddr *)&da, &dl);
    struct sock_filter code[] = {
        { BPF_LD | BPF_B | BPF_ABS, 0, 0, 8 }, /* first payload byte, after the UDP header */
        { BPF_JMP | BPF_JEQ | BPF_K, 0, 1, 'X' },
        { BPF_RET | BPF_K, 0, 0, 0 },
        { BPF_RET | BPF_K, 0, 0, 0xffff },
    };
    struct sock_fprog fprog = { 4, code };
    CHECK(setsockopt(d, SOL_SOCKET, SO_ATTACH_FILTER, &fprog, sizeof fprog) == 0, "attach filter");
    seti(d, SOL_SOCKET, SO_LOCK_FILTER, 1, "lock filter");
    /* TCP listener: linger, keepalive, OOB inline, receive low water, reuse, TOS. */
    struct linger lg = { 1, 7 };
    CHECK(setsockopt(t, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0, "linger");
    seti(t, SOL_SOCKET, SO_KEEPALIVE, 1, "keepalive");
    seti(t, SOL_SOCKET, SO_OOBINLINE, 1, "oobinline");
    seti(t, SOL_SOCKET, SO_RCVLOWAT, 3, "rcvlowat");
    seti(t, SOL_SOCKET, SO_REUSEADDR, 1, "reuseaddr");
    seti(t, SOL_SOCKET, SO_REUSEPORT, 1, "reuseport");
    seti(t, SOL_SOCKET, SO_SNDBUF, 300000, "tcp sndbuf");
    seti(t, IPPROTO_IP, IP_TOS, 0x08, "tcp tos");
    struct sockaddr_in ta = { .sin_family = AF_INET };
    ta.sin_addr = lo4;
    CHECK(bind(t, (struct sockaddr *)&ta, sizeof ta) == 0 && listen(t, 5) == 0, "tcp listen");
    /* UDPv6: v6only, traffic class, packet info, hop limits. */
    seti(d6, IPPROTO_IPV6, IPV6_V6ONLY, 1, "v6only");
    seti(d6, IPPROTO_IPV6, IPV6_TCLASS, 0x20, "tclass");
    seti(d6, IPPROTO_IPV6, IPV6_RECVPKTINFO, 1, "recvpktinfo");
    seti(d6, IPPROTO_IPV6, IPV6_UNICAST_HOPS, 17, "unicast hops");
    seti(d6, IPPROTO_IPV6, IPV6_MULTICAST_HOPS, 9, "mcast hops");
    int sndbuf_u = geti(u, SOL_SOCKET, SO_SNDBUF), rcvbuf_u = geti(u, SOL_SOCKET, SO_RCVBUF), sndbuf_t = geti(t, SOL_SOCKET, SO_SNDBUF);
    int rcvbuf_d = geti(d, SOL_SOCKET, SO_RCVBUF);
    int cpu = geti(d, SOL_SOCKET, SO_INCOMING_CPU);
    /* Timeouts come back rounded to the kernel's tick: compare with what it answered. */
    struct timeval rto, sto;
    socklen_t tl = sizeof rto;
    getsockopt(u, SOL_SOCKET, SO_RCVTIMEO, &rto, &tl);
    tl = sizeof sto;
    getsockopt(u, SOL_SOCKET, SO_SNDTIMEO, &sto, &tl);
    CHECK(rto.tv_sec == 3 && sto.tv_sec == 0 && sto.tv_usec >= 700000, "timeouts as set");
    say("ready");
    wait_go(argv[2]);

    EXPECT(u, SOL_SOCKET, SO_SNDBUF, sndbuf_u);
    EXPECT(u, SOL_SOCKET, SO_RCVBUF, rcvbuf_u);
    CHECK(rcvbuf_u == 12 << 20, "rcvbuf above rmem_max was %d", rcvbuf_u);
    EXPECT(u, SOL_SOCKET, SO_BUF_LOCK, 3);
    EXPECT(u, SOL_SOCKET, SO_PASSCRED, 1);
    if (has_pidfd) EXPECT(u, SOL_SOCKET, SO_PASSPIDFD, 1);
    EXPECT(u, SOL_SOCKET, SO_PRIORITY, 5);
    EXPECT(u, SOL_SOCKET, SO_PEEK_OFF, 0);
    struct timeval g;
    socklen_t gl = sizeof g;
    CHECK(getsockopt(u, SOL_SOCKET, SO_RCVTIMEO, &g, &gl) == 0 && g.tv_sec == rto.tv_sec && g.tv_usec == rto.tv_usec, "rcvtimeo %ld.%06ld", g.tv_sec, g.tv_usec);
    gl = sizeof g;
    CHECK(getsockopt(u, SOL_SOCKET, SO_SNDTIMEO, &g, &gl) == 0 && g.tv_sec == sto.tv_sec && g.tv_usec == sto.tv_usec, "sndtimeo %ld.%06ld", g.tv_sec, g.tv_usec);

    EXPECT(d, SOL_SOCKET, SO_MARK, 42);
    EXPECT(d, SOL_SOCKET, SO_TIMESTAMPNS, 1);
    EXPECT(d, SOL_SOCKET, SO_TIMESTAMP, 0);
    EXPECT(d, SOL_SOCKET, SO_TIMESTAMPING, tsflags);
    EXPECT(d, SOL_SOCKET, SO_BROADCAST, 1);
    EXPECT(d, SOL_SOCKET, SO_DONTROUTE, 1);
    EXPECT(d, SOL_SOCKET, SO_BUSY_POLL, 50);
    EXPECT(d, SOL_SOCKET, SO_INCOMING_CPU, cpu);
    EXPECT(d, SOL_SOCKET, SO_RCVBUF, rcvbuf_d);
    EXPECT(d, SOL_SOCKET, SO_BUF_LOCK, 0);
    EXPECT(d, SOL_SOCKET, SO_LOCK_FILTER, 1);
    char dev[IFNAMSIZ] = {0};
    socklen_t devl = sizeof dev;
    CHECK(getsockopt(d, SOL_SOCKET, SO_BINDTODEVICE, dev, &devl) == 0 && strcmp(dev, "lo") == 0, "device '%s'", dev);
    EXPECT(d, IPPROTO_IP, IP_TOS, 0x10);
    EXPECT(d, IPPROTO_IP, IP_TTL, 33);
    EXPECT(d, IPPROTO_IP, IP_RECVERR, 1);
    EXPECT(d, IPPROTO_IP, IP_PKTINFO, 1);
    EXPECT(d, IPPROTO_IP, IP_FREEBIND, 1);
    EXPECT(d, IPPROTO_IP, IP_TRANSPARENT, 1);
    EXPECT(d, IPPROTO_IP, IP_MULTICAST_TTL, 5);
    EXPECT(d, IPPROTO_IP, IP_MULTICAST_LOOP, 0);
    struct in_addr mif = {0};
    socklen_t ml = sizeof mif;
    CHECK(getsockopt(d, IPPROTO_IP, IP_MULTICAST_IF, &mif, &ml) == 0 && mif.s_addr == lo4.s_addr, "multicast if");
    /* Memberships: the socket's own source filter for each group. */
    struct ip_msfilter *f = calloc(1, IP_MSFILTER_SIZE(4));
    socklen_t fl = IP_MSFILTER_SIZE(4);
    f->imsf_multiaddr = mreq.imr_multiaddr;
    f->imsf_interface = lo4;
    f->imsf_numsrc = 4;
    CHECK(getsockopt(d, IPPROTO_IP, IP_MSFILTER, f, &fl) == 0 && f->imsf_fmode == MCAST_EXCLUDE && f->imsf_numsrc == 0,
          "membership 239.1.2.3: %s", strerror(errno));
    fl = IP_MSFILTER_SIZE(4);
    f->imsf_multiaddr = ms.imr_multiaddr;
    f->imsf_numsrc = 4;
    CHECK(getsockopt(d, IPPROTO_IP, IP_MSFILTER, f, &fl) == 0 && f->imsf_fmode == MCAST_INCLUDE && f->imsf_numsrc == 1 &&
          f->imsf_slist[0].s_addr == ms.imr_sourceaddr.s_addr, "source membership 239.1.2.4: %s", strerror(errno));
    /* The filter still drops 'X' datagrams and passes others. */
    int c = socket(AF_INET, SOCK_DGRAM, 0);
    sendto(c, "Xdrop", 5, 0, (struct sockaddr *)&da, sizeof da);
    sendto(c, "keep", 4, 0, (struct sockaddr *)&da, sizeof da);
    char buf[16] = {0};
    struct timeval wait = { 2, 0 };
    setsockopt(d, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
    int n = recv(d, buf, sizeof buf, 0);
    CHECK(n == 4 && memcmp(buf, "keep", 4) == 0, "filtered receive: %d '%s'", n, buf);

    EXPECT(t, SOL_SOCKET, SO_KEEPALIVE, 1);
    EXPECT(t, SOL_SOCKET, SO_OOBINLINE, 1);
    EXPECT(t, SOL_SOCKET, SO_RCVLOWAT, 3);
    EXPECT(t, SOL_SOCKET, SO_REUSEADDR, 1);
    EXPECT(t, SOL_SOCKET, SO_REUSEPORT, 1);
    EXPECT(t, SOL_SOCKET, SO_SNDBUF, sndbuf_t);
    EXPECT(t, IPPROTO_IP, IP_TOS, 0x08);
    struct linger lg2 = {0};
    socklen_t ll = sizeof lg2;
    CHECK(getsockopt(t, SOL_SOCKET, SO_LINGER, &lg2, &ll) == 0 && lg2.l_onoff == 1 && lg2.l_linger == 7, "linger");

    EXPECT(d6, IPPROTO_IPV6, IPV6_V6ONLY, 1);
    EXPECT(d6, IPPROTO_IPV6, IPV6_TCLASS, 0x20);
    EXPECT(d6, IPPROTO_IPV6, IPV6_RECVPKTINFO, 1);
    EXPECT(d6, IPPROTO_IPV6, IPV6_UNICAST_HOPS, 17);
    EXPECT(d6, IPPROTO_IPV6, IPV6_MULTICAST_HOPS, 9);
    say("ok");
    return 0;
}
