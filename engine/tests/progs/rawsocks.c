/* ICMP, raw, packet and netlink sockets: sets the pod's ping_group_range, makes a ping socket
 * bound to an ICMP identifier, a raw ICMP socket with an ICMP_FILTER, an IPPROTO_RAW socket, a
 * packet socket bound to lo with an option and a fanout group, a NETLINK_ROUTE listener bound to
 * groups (one joined past the first 32 bits' range) and a uevent listener. After the restore:
 * the sysctl is as it was, a ping to 127.0.0.1 is answered to the same identifier (and seen by
 * the raw socket), the packet socket is bound where it was, and the route listener hears about
 * an address added to lo.
 * argv[3] == "netlink-other": holds a NETLINK_SOCK_DIAG socket (a checkpoint must refuse). */
#include "zaptest.h"
#include <arpa/inet.h>
#include <errno.h>
#include <linux/filter.h>
#include <linux/if_packet.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/ip_icmp.h>
#include <poll.h>
#include <sys/socket.h>

#ifndef ICMP_FILTER
#define ICMP_FILTER 1
#endif
struct icmp_filter { uint32_t data; };

#ifndef NETLINK_LIST_MEMBERSHIPS
#define NETLINK_LIST_MEMBERSHIPS 9
#endif

static int geti(int fd, int level, int name) {
    int v = -1;
    socklen_t l = sizeof v;
    return getsockopt(fd, level, name, &v, &l) == 0 ? v : -12345;
}

static void read_range(char *buf, int len) {
    int f = open("/proc/sys/net/ipv4/ping_group_range", O_RDONLY);
    int n = f >= 0 ? read(f, buf, len - 1) : -1;
    buf[n > 0 ? n : 0] = 0;
    if (f >= 0) close(f);
}

int main(int argc, char **argv) {
    zt_init(argc, argv);
    if (argc > 3 && strcmp(argv[3], "netlink-other") == 0) {
        int d = socket(AF_NETLINK, SOCK_DGRAM, 4 /* NETLINK_SOCK_DIAG */);
        CHECK(d >= 0, "sock_diag socket");
        say("ready");
        wait_go(argv[2]);
        say("ok");
        return 0;
    }
    int f = open("/proc/sys/net/ipv4/ping_group_range", O_WRONLY);
    CHECK(f >= 0 && write(f, "0 4242", 6) == 6, "set ping_group_range: %s", strerror(errno));
    close(f);
    char range[64];
    read_range(range, sizeof range);

    int ping = socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP);
    CHECK(ping >= 0, "ping socket: %s", strerror(errno));
    struct sockaddr_in pa = { .sin_family = AF_INET, .sin_port = htons(4321) };
    inet_pton(AF_INET, "127.0.0.1", &pa.sin_addr);
    CHECK(bind(ping, (struct sockaddr *)&pa, sizeof pa) == 0, "bind ping: %s", strerror(errno));
    setsockopt(ping, IPPROTO_IP, IP_TTL, &(int){ 21 }, sizeof(int));

    int raw = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
    CHECK(raw >= 0, "raw icmp");
    struct icmp_filter flt = { .data = 1 << ICMP_ECHO };  /* drop echo requests, keep replies */
    CHECK(setsockopt(raw, SOL_RAW, ICMP_FILTER, &flt, sizeof flt) == 0, "icmp filter");
    int raw6 = socket(AF_INET6, SOCK_RAW, IPPROTO_ICMPV6);
    CHECK(raw6 >= 0, "raw icmpv6");
    uint32_t f6[8];
    memset(f6, 0, sizeof f6);
    f6[128 >> 5] |= 1u << (128 & 31); /* block echo requests (type 128) */
    CHECK(setsockopt(raw6, 58 /* SOL_ICMPV6 */, 1 /* ICMP6_FILTER */, f6, sizeof f6) == 0, "icmp6 filter: %s", strerror(errno));
    int rawip = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
    CHECK(rawip >= 0 && geti(rawip, IPPROTO_IP, IP_HDRINCL) == 1, "IPPROTO_RAW");

    int pk = socket(AF_PACKET, SOCK_DGRAM, htons(ETH_P_IP));
    CHECK(pk >= 0, "packet socket");
    struct sockaddr_ll ll = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_IP), .sll_ifindex = (int)if_nametoindex("lo") };
    CHECK(bind(pk, (struct sockaddr *)&ll, sizeof ll) == 0, "bind packet: %s", strerror(errno));
    setsockopt(pk, SOL_PACKET, PACKET_AUXDATA, &(int){ 1 }, sizeof(int));
    int fan = 77 | (PACKET_FANOUT_HASH << 16);
    CHECK(setsockopt(pk, SOL_PACKET, PACKET_FANOUT, &fan, sizeof fan) == 0, "fanout: %s", strerror(errno));

    int nl = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
    struct sockaddr_nl na = { .nl_family = AF_NETLINK, .nl_groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR };
    CHECK(nl >= 0 && bind(nl, (struct sockaddr *)&na, sizeof na) == 0, "bind route netlink");
    int g = RTNLGRP_IPV6_ROUTE;
    CHECK(setsockopt(nl, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &g, sizeof g) == 0, "join group");
    struct sockaddr_nl got;
    socklen_t gl = sizeof got;
    getsockname(nl, (struct sockaddr *)&got, &gl);
    unsigned portid = got.nl_pid;
    unsigned groups[4] = {0};
    socklen_t grl = sizeof groups;
    CHECK(getsockopt(nl, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, groups, &grl) == 0, "list memberships");
    int ue = socket(AF_NETLINK, SOCK_DGRAM, NETLINK_KOBJECT_UEVENT);
    struct sockaddr_nl ua = { .nl_family = AF_NETLINK, .nl_pid = 0, .nl_groups = 1 };
    CHECK(ue >= 0 && bind(ue, (struct sockaddr *)&ua, sizeof ua) == 0, "bind uevent: %s", strerror(errno));
    say("ready");
    wait_go(argv[2]);

    char now[64];
    read_range(now, sizeof now);
    CHECK(strcmp(now, range) == 0, "ping_group_range '%s' was '%s'", now, range);
    struct sockaddr_in pb;
    socklen_t pl = sizeof pb;
    CHECK(getsockname(ping, (struct sockaddr *)&pb, &pl) == 0 && pb.sin_port == htons(4321), "ping identifier");
    CHECK(geti(ping, IPPROTO_IP, IP_TTL) == 21, "ping ttl");
    struct icmphdr echo = { .type = ICMP_ECHO, .un.echo.sequence = htons(1) };
    CHECK(sendto(ping, &echo, sizeof echo, 0, (struct sockaddr *)&pa, sizeof pa) == sizeof echo, "ping: %s", strerror(errno));
    struct pollfd pf = { ping, POLLIN, 0 };
    CHECK(poll(&pf, 1, 3000) == 1, "no echo reply");
    char buf[256];
    struct icmphdr *rep = (struct icmphdr *)buf;
    CHECK(recv(ping, buf, sizeof buf, 0) >= (int)sizeof *rep && rep->type == ICMP_ECHOREPLY && rep->un.echo.id == htons(4321), "echo reply");
    struct icmp_filter f2 = {0};
    socklen_t fl = sizeof f2;
    CHECK(getsockopt(raw, SOL_RAW, ICMP_FILTER, &f2, &fl) == 0 && f2.data == flt.data, "icmp filter kept");
    pf.fd = raw;
    CHECK(poll(&pf, 1, 3000) == 1, "raw socket hears the reply");
    int n = recv(raw, buf, sizeof buf, 0);
    struct iphdr *ip = (struct iphdr *)buf;
    CHECK(n > (int)sizeof *ip && ((struct icmphdr *)(buf + ip->ihl * 4))->type == ICMP_ECHOREPLY, "raw sees only the reply (filter)");
    CHECK(geti(rawip, IPPROTO_IP, IP_HDRINCL) == 1, "IPPROTO_RAW hdrincl");
    uint32_t g6[8];
    socklen_t g6l = sizeof g6;
    CHECK(getsockopt(raw6, 58, 1, g6, &g6l) == 0 && memcmp(g6, f6, sizeof f6) == 0, "icmp6 filter kept");

    struct sockaddr_ll lb;
    socklen_t lbl = sizeof lb;
    CHECK(getsockname(pk, (struct sockaddr *)&lb, &lbl) == 0 && lb.sll_ifindex == (int)if_nametoindex("lo") && lb.sll_protocol == htons(ETH_P_IP), "packet socket bound to lo");
    CHECK(geti(pk, SOL_PACKET, PACKET_AUXDATA) == 1, "packet auxdata");
    CHECK(geti(pk, SOL_PACKET, PACKET_FANOUT) == fan, "fanout %x want %x", geti(pk, SOL_PACKET, PACKET_FANOUT), fan);

    gl = sizeof got;
    CHECK(getsockname(nl, (struct sockaddr *)&got, &gl) == 0 && got.nl_pid == portid, "netlink port id %u was %u", got.nl_pid, portid);
    unsigned groups2[4] = {0};
    grl = sizeof groups2;
    CHECK(getsockopt(nl, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, groups2, &grl) == 0 && memcmp(groups, groups2, sizeof groups) == 0, "netlink groups %x %x", groups2[0], groups[0]);
    CHECK(system("ip addr add 127.0.0.9/8 dev lo") == 0, "add an address");
    pf.fd = nl;
    int heard = 0;
    for (int i = 0; i < 20 && !heard && poll(&pf, 1, 1000) == 1; i++) {
        n = recv(nl, buf, sizeof buf, 0);
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (unsigned)n); h = NLMSG_NEXT(h, n))
            if (h->nlmsg_type == RTM_NEWADDR) heard = 1;
    }
    CHECK(heard, "route listener heard RTM_NEWADDR");
    unsigned ug = 0;
    socklen_t ugl = sizeof ug;
    CHECK(getsockopt(ue, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, &ug, &ugl) == 0 && ug == 1, "uevent group %x", ug);
    say("ok");
    return 0;
}
