//! Socket options saved with every socket (unix, inet, raw, packet, netlink) and set again on
//! restore.
//!
//! Saving reads the options on Zap's duplicate of the socket (`pidfd_getfd`). Integer options
//! (the tables below, per level) are compared with a fresh socket of the same family, type and
//! protocol made in the pod's network namespace, and only those that differ are recorded, so a
//! restored socket keeps the kernel's defaults (and the sysctls they follow) wherever the program
//! kept them. Buffer sizes are recorded when the program set them (the kernel's `SO_BUF_LOCK`
//! bits say so; an unlocked TCP buffer is the kernel's autotuning, left to it); getsockopt
//! answers twice what was asked, so restore asks for half, with `SO_SNDBUFFORCE`/`SO_RCVBUFFORCE`
//! so that values above `wmem_max`/`rmem_max` come back too. The rest are read one by one:
//! linger, timeouts, timestamps (the variant: old or new format, micro- or nanoseconds,
//! `SO_TIMESTAMPING` flags and PHC), the bound device (by name), classic BPF filters
//! (`SO_GET_FILTER`) and their lock, `SO_TXTIME`, IP options, the IPv4 multicast interface
//! address, interface indexes (`IP_UNICAST_IF`, `IPV6_UNICAST_IF`, `IPV6_MULTICAST_IF`, saved by
//! interface name), and multicast memberships: every group of the namespace's
//! `/proc/net/igmp` and `/proc/net/igmp6` is asked of the socket with `MCAST_MSFILTER`, which
//! answers the socket's own membership with its source filter. A TCP socket cannot join a group
//! (`EPROTO`) and is not asked.
//!
//! A TCP socket is not asked the integer options it cannot hold (the kernel refuses to set them
//! on one: `SO_PASSCRED`, `IP_HDRINCL`, `IP_ROUTER_ALERT`, the multicast TTL, hops and loop...),
//! and what an `inet_diag` dump of its namespace gave (its owner, buffer sizes, `IP_TOS`,
//! `IPV6_TCLASS`, `SO_MARK` and the IP flags of `inet_diag_sockopt`) is taken from there.
//!
//! The socket's owner (its inode's uid, from `fstat`, or the dump's `sk_uid`, which follows it) is
//! saved with the options ([`SockOpts::uid`]); restore makes the socket under that fsuid
//! ([`super::create_as`]).
//!
//! Refused: an eBPF socket filter (`SO_ATTACH_BPF`: the kernel cannot give it back). Not
//! seen (the kernel shows them nowhere): reuseport BPF programs, and an IPv4 multicast interface
//! chosen by index alone (`IP_MULTICAST_IF` with an `ip_mreqn` whose address is 0).
//!
//! Restore sets everything before the socket is bound or connected (`SO_PRIORITY` after `IP_TOS`,
//! which sets the priority from the TOS bits), by injecting `setsockopt` into
//! the process or, for TCP connections, on Zap's duplicate of the process's socket
//! ([`super::calls`]); interface names are turned into the new namespace's indexes with
//! `SIOCGIFINDEX`.
use std::collections::HashMap;
use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

use super::calls::SockCalls;
use crate::sys::sock;
use crate::{EngineError, Result};

const SOL_SOCKET: i32 = libc::SOL_SOCKET;
const SOL_IP: i32 = libc::IPPROTO_IP;
const SOL_IPV6: i32 = libc::IPPROTO_IPV6;
const SOL_PACKET: i32 = 263;
const SOL_NETLINK: i32 = 270;

// SOL_SOCKET option numbers (x86-64).
const SO_SNDBUF: i32 = 7;
const SO_RCVBUF: i32 = 8;
const SO_PRIORITY: i32 = 12;
const SO_LINGER: i32 = 13;
const SO_RCVTIMEO: i32 = 20;
const SO_SNDTIMEO: i32 = 21;
const SO_BINDTODEVICE: i32 = 25;
const SO_TIMESTAMP_OLD: i32 = 29;
const SO_SNDBUFFORCE: i32 = 32;
const SO_RCVBUFFORCE: i32 = 33;
const SO_TIMESTAMPNS_OLD: i32 = 35;
const SO_TIMESTAMPING_OLD: i32 = 37;
const SO_LOCK_FILTER: i32 = 44;
const SO_TXTIME: i32 = 61;
const SO_TIMESTAMP_NEW: i32 = 63;
const SO_TIMESTAMPNS_NEW: i32 = 64;
const SO_TIMESTAMPING_NEW: i32 = 65;
const SO_BUF_LOCK: i32 = 72;
const SOF_TIMESTAMPING_BIND_PHC: u32 = 1 << 15;
const IP_OPTIONS: i32 = 4;
const SOL_ICMPV6: i32 = 58;
const ICMP6_FILTER: i32 = 1;
const IP_MULTICAST_IF: i32 = 32;
const IP_UNICAST_IF: i32 = 50;
const IPV6_MULTICAST_IF: i32 = 17;
const IPV6_UNICAST_IF: i32 = 76;
const MCAST_JOIN_GROUP: i32 = 42;
const MCAST_MSFILTER: i32 = 48;
const MCAST_EXCLUDE: u32 = 0;
const SIOCGIFNAME: libc::c_ulong = 0x8910;

/// Integer options saved when they differ from a fresh socket's: (level, option, name).
const SOCKET_INTS: &[(i32, i32, &str)] = &[
    (SOL_SOCKET, 1, "SO_DEBUG"),
    (SOL_SOCKET, 2, "SO_REUSEADDR"),
    (SOL_SOCKET, 5, "SO_DONTROUTE"),
    (SOL_SOCKET, 6, "SO_BROADCAST"),
    (SOL_SOCKET, 9, "SO_KEEPALIVE"),
    (SOL_SOCKET, 10, "SO_OOBINLINE"),
    (SOL_SOCKET, 11, "SO_NO_CHECK"),
    (SOL_SOCKET, 12, "SO_PRIORITY"),
    (SOL_SOCKET, 15, "SO_REUSEPORT"),
    (SOL_SOCKET, 16, "SO_PASSCRED"),
    (SOL_SOCKET, 18, "SO_RCVLOWAT"),
    (SOL_SOCKET, 34, "SO_PASSSEC"),
    (SOL_SOCKET, 36, "SO_MARK"),
    (SOL_SOCKET, 40, "SO_RXQ_OVFL"),
    (SOL_SOCKET, 41, "SO_WIFI_STATUS"),
    (SOL_SOCKET, 42, "SO_PEEK_OFF"),
    (SOL_SOCKET, 43, "SO_NOFCS"),
    (SOL_SOCKET, 45, "SO_SELECT_ERR_QUEUE"),
    (SOL_SOCKET, 46, "SO_BUSY_POLL"),
    (SOL_SOCKET, 47, "SO_MAX_PACING_RATE"),
    (SOL_SOCKET, 49, "SO_INCOMING_CPU"),
    (SOL_SOCKET, 60, "SO_ZEROCOPY"),
    (SOL_SOCKET, 69, "SO_PREFER_BUSY_POLL"),
    (SOL_SOCKET, 70, "SO_BUSY_POLL_BUDGET"),
    (SOL_SOCKET, 73, "SO_RESERVE_MEM"),
    (SOL_SOCKET, 74, "SO_TXREHASH"),
    (SOL_SOCKET, 75, "SO_RCVMARK"),
    (SOL_SOCKET, 76, "SO_PASSPIDFD"),
    (SOL_SOCKET, 82, "SO_RCVPRIORITY"),
    (SOL_SOCKET, 83, "SO_PASSRIGHTS"),
    (SOL_SOCKET, 84, "SO_INQ"),
];
const IP_INTS: &[(i32, i32, &str)] = &[
    (SOL_IP, 1, "IP_TOS"),
    (SOL_IP, 2, "IP_TTL"),
    (SOL_IP, 3, "IP_HDRINCL"),
    (SOL_IP, 5, "IP_ROUTER_ALERT"),
    (SOL_IP, 6, "IP_RECVOPTS"),
    (SOL_IP, 7, "IP_RETOPTS"),
    (SOL_IP, 8, "IP_PKTINFO"),
    (SOL_IP, 10, "IP_MTU_DISCOVER"),
    (SOL_IP, 11, "IP_RECVERR"),
    (SOL_IP, 12, "IP_RECVTTL"),
    (SOL_IP, 13, "IP_RECVTOS"),
    (SOL_IP, 15, "IP_FREEBIND"),
    (SOL_IP, 18, "IP_PASSSEC"),
    (SOL_IP, 19, "IP_TRANSPARENT"),
    (SOL_IP, 20, "IP_RECVORIGDSTADDR"),
    (SOL_IP, 21, "IP_MINTTL"),
    (SOL_IP, 22, "IP_NODEFRAG"),
    (SOL_IP, 23, "IP_CHECKSUM"),
    (SOL_IP, 24, "IP_BIND_ADDRESS_NO_PORT"),
    (SOL_IP, 25, "IP_RECVFRAGSIZE"),
    (SOL_IP, 26, "IP_RECVERR_RFC4884"),
    (SOL_IP, 33, "IP_MULTICAST_TTL"),
    (SOL_IP, 34, "IP_MULTICAST_LOOP"),
    (SOL_IP, 49, "IP_MULTICAST_ALL"),
    (SOL_IP, 51, "IP_LOCAL_PORT_RANGE"),
    (255, 1, "ICMP_FILTER"),
];
const IPV6_INTS: &[(i32, i32, &str)] = &[
    (SOL_IPV6, 26, "IPV6_V6ONLY"),
    (SOL_IPV6, 7, "IPV6_CHECKSUM"),
    (SOL_IPV6, 16, "IPV6_UNICAST_HOPS"),
    (SOL_IPV6, 18, "IPV6_MULTICAST_HOPS"),
    (SOL_IPV6, 19, "IPV6_MULTICAST_LOOP"),
    (SOL_IPV6, 22, "IPV6_ROUTER_ALERT"),
    (SOL_IPV6, 23, "IPV6_MTU_DISCOVER"),
    (SOL_IPV6, 25, "IPV6_RECVERR"),
    (SOL_IPV6, 29, "IPV6_MULTICAST_ALL"),
    (SOL_IPV6, 30, "IPV6_ROUTER_ALERT_ISOLATE"),
    (SOL_IPV6, 31, "IPV6_RECVERR_RFC4884"),
    (SOL_IPV6, 33, "IPV6_FLOWINFO_SEND"),
    (SOL_IPV6, 36, "IPV6_HDRINCL"),
    (SOL_IPV6, 49, "IPV6_RECVPKTINFO"),
    (SOL_IPV6, 51, "IPV6_RECVHOPLIMIT"),
    (SOL_IPV6, 53, "IPV6_RECVHOPOPTS"),
    (SOL_IPV6, 56, "IPV6_RECVRTHDR"),
    (SOL_IPV6, 58, "IPV6_RECVDSTOPTS"),
    (SOL_IPV6, 60, "IPV6_RECVPATHMTU"),
    (SOL_IPV6, 62, "IPV6_DONTFRAG"),
    (SOL_IPV6, 66, "IPV6_RECVTCLASS"),
    (SOL_IPV6, 67, "IPV6_TCLASS"),
    (SOL_IPV6, 70, "IPV6_AUTOFLOWLABEL"),
    (SOL_IPV6, 72, "IPV6_ADDR_PREFERENCES"),
    (SOL_IPV6, 73, "IPV6_MINHOPCOUNT"),
    (SOL_IPV6, 74, "IPV6_RECVORIGDSTADDR"),
    (SOL_IPV6, 75, "IPV6_TRANSPARENT"),
    (SOL_IPV6, 77, "IPV6_RECVFRAGSIZE"),
    (SOL_IPV6, 78, "IPV6_FREEBIND"),
];
const PACKET_INTS: &[(i32, i32, &str)] = &[
    (SOL_PACKET, 8, "PACKET_AUXDATA"),
    (SOL_PACKET, 9, "PACKET_ORIGDEV"),
    (SOL_PACKET, 10, "PACKET_VERSION"),
    (SOL_PACKET, 12, "PACKET_RESERVE"),
    (SOL_PACKET, 14, "PACKET_LOSS"),
    (SOL_PACKET, 15, "PACKET_VNET_HDR"),
    (SOL_PACKET, 17, "PACKET_TIMESTAMP"),
    (SOL_PACKET, 20, "PACKET_QDISC_BYPASS"),
    (SOL_PACKET, 23, "PACKET_IGNORE_OUTGOING"),
];
const NETLINK_INTS: &[(i32, i32, &str)] = &[
    (SOL_NETLINK, 3, "NETLINK_PKTINFO"),
    (SOL_NETLINK, 4, "NETLINK_BROADCAST_ERROR"),
    (SOL_NETLINK, 5, "NETLINK_NO_ENOBUFS"),
    (SOL_NETLINK, 8, "NETLINK_LISTEN_ALL_NSID"),
    (SOL_NETLINK, 10, "NETLINK_CAP_ACK"),
    (SOL_NETLINK, 11, "NETLINK_EXT_ACK"),
    (SOL_NETLINK, 12, "NETLINK_GET_STRICT_CHK"),
];

/// The integer options that apply to sockets of `family`.
fn int_table(family: i32) -> impl Iterator<Item = &'static (i32, i32, &'static str)> {
    let extra: &[(i32, i32, &str)] = match family {
        libc::AF_INET => IP_INTS,
        libc::AF_INET6 => IPV6_INTS,
        libc::AF_PACKET => PACKET_INTS,
        libc::AF_NETLINK => NETLINK_INTS,
        _ => &[],
    };
    SOCKET_INTS.iter().chain(extra)
}

/// The name of an option, for errors.
fn opt_name(level: i32, name: i32) -> String {
    SOCKET_INTS
        .iter()
        .chain(IP_INTS)
        .chain(IPV6_INTS)
        .chain(PACKET_INTS)
        .chain(NETLINK_INTS)
        .find(|o| o.0 == level && o.1 == name)
        .map(|o| o.2.to_string())
        .unwrap_or_else(|| format!("option {name} of level {level}"))
}

/// One multicast group a socket joined, with its source filter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// IPPROTO_IP or IPPROTO_IPV6.
    pub level: i32,
    /// The interface, by name.
    pub ifname: String,
    /// The group (raw sockaddr_in or sockaddr_in6).
    pub group: Vec<u8>,
    /// MCAST_INCLUDE or MCAST_EXCLUDE.
    pub mode: u32,
    /// The sources included or excluded (raw sockaddrs).
    pub sources: Vec<Vec<u8>>,
}

/// Socket options: those the program changed from the kernel's defaults; and the socket's owner.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SockOpts {
    /// The uid owning the socket (its inode's, the `sk_uid` `/proc/net/*` shows and netfilter's
    /// `meta skuid` matches); restore makes the socket under that fsuid ([`super::create_as`]).
    pub uid: u32,
    /// TCP_NODELAY.
    pub nodelay: bool,
    /// Integer options that differ from a fresh socket's: (level, option, value).
    pub ints: Vec<(i32, i32, i32)>,
    /// SO_SNDBUF as getsockopt reported it, when the program set it (locked).
    pub sndbuf: Option<i32>,
    /// SO_RCVBUF likewise.
    pub rcvbuf: Option<i32>,
    /// SO_BUF_LOCK bits (1 send, 2 receive).
    pub buf_lock: i32,
    /// SO_LINGER (onoff, seconds), when on.
    pub linger: Option<(i32, i32)>,
    /// SO_RCVTIMEO (seconds, microseconds), when set.
    pub rcvtimeo: Option<(i64, i64)>,
    /// SO_SNDTIMEO likewise.
    pub sndtimeo: Option<(i64, i64)>,
    /// The one of SO_TIMESTAMP{,NS}_{OLD,NEW} that is on.
    pub timestamp: Option<i32>,
    /// SO_TIMESTAMPING: flags, bound PHC index, new (64-bit time) variant.
    pub timestamping: Option<(u32, i32, bool)>,
    /// SO_BINDTODEVICE interface name.
    pub device: Option<String>,
    /// Classic BPF filter (struct sock_filter array).
    pub filter: Option<Vec<u8>>,
    /// SO_LOCK_FILTER.
    pub lock_filter: bool,
    /// SO_TXTIME (struct sock_txtime).
    pub txtime: Option<Vec<u8>>,
    /// IP_OPTIONS bytes.
    pub ip_options: Option<Vec<u8>>,
    /// IP_MULTICAST_IF address.
    pub multicast_if: Option<[u8; 4]>,
    /// ICMP6_FILTER of a raw ICMPv6 socket (struct icmp6_filter), when it blocks anything.
    pub icmp6_filter: Option<Vec<u8>>,
    /// Options holding an interface index, saved by interface name: (level, option, name).
    pub ifindex_opts: Vec<(i32, i32, String)>,
    /// Multicast memberships.
    pub memberships: Vec<Membership>,
}

/// What a fresh socket of one kind has, for comparison.
#[derive(Debug, Default)]
pub(crate) struct Defaults {
    /// Its integer options.
    pub(crate) ints: HashMap<(i32, i32), i32>,
    /// A TCP socket's TCP-level options ([`super::tcp::tcp_opts_of`]).
    pub(crate) tcp: Option<super::tcp::TcpOpts>,
}

/// The defaults of a fresh socket of (`family`, `sock_type`, `protocol`) in the network namespace
/// of `pid`; None when such a socket cannot be made (a ping socket outside `ping_group_range`
/// falls back to a UDP socket's).
pub(super) fn fresh_defaults(pid: i32, family: i32, sock_type: i32, protocol: i32) -> Option<Defaults> {
    let make = |proto: i32| sock::in_netns(pid, move || sock::socket(family, sock_type, proto));
    let fresh = make(protocol)
        .or_else(|e| if protocol == libc::IPPROTO_ICMP || protocol == libc::IPPROTO_ICMPV6 { make(libc::IPPROTO_UDP) } else { Err(e) })
        .ok()?;
    let ints = int_table(family).filter_map(|&(l, n, _)| sock::getsockopt_int(&fresh, l, n).ok().map(|v| ((l, n), v))).collect();
    let tcp = (sock_type == libc::SOCK_STREAM && protocol == libc::IPPROTO_TCP).then(|| super::tcp::tcp_opts_of(&fresh, super::tcp::state::CLOSE, None, None));
    Some(Defaults { ints, tcp })
}

/// Integer options a TCP socket cannot hold (the kernel refuses to set them on one, or answers
/// nothing), or that saving a stream socket drops anyway (multicast: [`super::inet`]): never
/// asked of a TCP socket.
fn tcp_cannot_hold(level: i32, name: i32) -> bool {
    match level {
        // SO_PASSCRED, SO_PASSSEC, SO_BUSY_POLL_BUDGET (set only), SO_PASSPIDFD, SO_PASSRIGHTS,
        // SO_INQ: unix and datagram sockets.
        SOL_SOCKET => matches!(name, 16 | 34 | 70 | 76 | 83 | 84),
        // IP_HDRINCL, IP_ROUTER_ALERT, IP_NODEFRAG, IP_RECVFRAGSIZE (raw and datagram),
        // IP_MULTICAST_TTL, IP_MULTICAST_LOOP.
        SOL_IP => matches!(name, 3 | 5 | 22 | 25 | 33 | 34),
        // ICMP_FILTER.
        255 => true,
        // IPV6_CHECKSUM, IPV6_MULTICAST_HOPS, IPV6_MULTICAST_LOOP, IPV6_ROUTER_ALERT,
        // IPV6_HDRINCL.
        SOL_IPV6 => matches!(name, 7 | 18 | 19 | 22 | 36),
        _ => false,
    }
}

fn ifname_of(index: i32, dup: &OwnedFd) -> Option<String> {
    // struct ifreq: name[16], then the index.
    let mut req = [0u8; 40];
    req[16..20].copy_from_slice(&index.to_ne_bytes());
    sock::ioctl_bytes(dup, SIOCGIFNAME, &mut req).ok()?;
    let end = req[..16].iter().position(|&b| b == 0).unwrap_or(16);
    Some(String::from_utf8_lossy(&req[..end]).into_owned())
}

/// A multicast group of a network namespace: (level, ifindex, ifname, raw group sockaddr).
pub(super) type Group = (i32, u32, String, Vec<u8>);

/// Multicast groups of the namespace of `pid` (from /proc/PID/net/igmp and igmp6).
pub(super) fn namespace_groups(pid: i32, family: i32) -> Vec<Group> {
    let mut out = Vec::new();
    if family == libc::AF_INET {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/igmp")).unwrap_or_default();
        let mut dev: Option<(u32, String)> = None;
        for line in text.lines().skip(1) {
            if !line.starts_with(['\t', ' ']) {
                let mut it = line.split_whitespace();
                dev = it.next().and_then(|i| i.parse().ok()).zip(it.next().map(str::to_string));
            } else if let (Some((idx, name)), Some(hex)) = (&dev, line.split_whitespace().next()) {
                if let Ok(v) = u32::from_str_radix(hex, 16) {
                    let mut sa = vec![0u8; 16];
                    sa[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
                    // The kernel prints the network-order word as a host integer.
                    sa[4..8].copy_from_slice(&v.to_ne_bytes());
                    out.push((SOL_IP, *idx, name.clone(), sa));
                }
            }
        }
    } else if family == libc::AF_INET6 {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/igmp6")).unwrap_or_default();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 3 || f[2].len() != 32 {
                continue;
            }
            let Ok(idx) = f[0].parse::<u32>() else { continue };
            let mut sa = vec![0u8; 28];
            sa[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            for i in 0..16 {
                sa[8 + i] = u8::from_str_radix(&f[2][2 * i..2 * i + 2], 16).unwrap_or(0);
            }
            out.push((SOL_IPV6, idx, f[1].to_string(), sa));
        }
    }
    out
}

/// Reads the options of socket `fd` of `pid` (duplicated into Zap as `dup`) of `family`; a TCP
/// socket's when `tcp` (its TCP_NODELAY too; options it cannot hold are not asked). `defaults`
/// are a fresh socket's of the same kind (None: record every readable integer option); `known`
/// what an `inet_diag` dump says of the socket (owner, buffer sizes, TOS, traffic class, mark and
/// the IP flags of `struct inet_diag_sockopt`), asked of the socket only where it is silent;
/// `groups` the multicast groups of its namespace ([`namespace_groups`]), each asked of the socket.
pub(super) fn opts_of(
    pid: i32,
    fd: i32,
    dup: &OwnedFd,
    (family, tcp): (i32, bool),
    defaults: Option<&Defaults>,
    known: Option<&sock::TcpDiag>,
    groups: &[Group],
) -> Result<SockOpts> {
    let refuse = |what: String| EngineError::Proc { pid, detail: format!("fd {fd}: {what}") };
    let sys = |step: &'static str| move |source| EngineError::Sys { step, pid, source };
    let int = |level, name| sock::getsockopt_int(dup, level, name).ok();
    let uid = match known {
        Some(k) => k.uid,
        None => sock::owner_uid(dup).map_err(sys("fstat (socket owner)"))?,
    };
    let mut o = SockOpts { uid, nodelay: tcp && int(libc::IPPROTO_TCP, libc::TCP_NODELAY).unwrap_or(0) != 0, ..Default::default() };
    for &(level, name, _) in int_table(family) {
        if tcp && tcp_cannot_hold(level, name) {
            continue;
        }
        if let Some(v) = known.and_then(|k| k.int_opt(level, name)).or_else(|| int(level, name)) {
            if defaults.and_then(|d| d.ints.get(&(level, name))) != Some(&v) {
                o.ints.push((level, name, v));
            }
        }
    }
    // Buffers: saved when the program set them; SO_BUF_LOCK tells (Linux 5.14+).
    let buffers = known.and_then(|k| k.buffers);
    match int(SOL_SOCKET, SO_BUF_LOCK) {
        Some(lock) => {
            o.buf_lock = lock;
            o.sndbuf = if lock & 1 != 0 { buffers.map(|b| b.0).or_else(|| int(SOL_SOCKET, SO_SNDBUF)) } else { None };
            o.rcvbuf = if lock & 2 != 0 { buffers.map(|b| b.1).or_else(|| int(SOL_SOCKET, SO_RCVBUF)) } else { None };
        }
        None => return Err(refuse("cannot tell whether its buffer sizes were set (no SO_BUF_LOCK: kernel older than 5.14)".into())),
    }
    let bytes = |level, name, cap| sock::getsockopt_bytes(dup, level, name, cap).ok();
    if let Some(b) = bytes(SOL_SOCKET, SO_LINGER, 8).filter(|b| b.len() == 8) {
        let on = i32::from_ne_bytes(b[0..4].try_into().expect("4"));
        if on != 0 {
            o.linger = Some((on, i32::from_ne_bytes(b[4..8].try_into().expect("4"))));
        }
    }
    let timeval = |name| {
        bytes(SOL_SOCKET, name, 16).filter(|b| b.len() == 16).and_then(|b| {
            let (s, us) = (i64::from_ne_bytes(b[0..8].try_into().expect("8")), i64::from_ne_bytes(b[8..16].try_into().expect("8")));
            (s != 0 || us != 0).then_some((s, us))
        })
    };
    o.rcvtimeo = timeval(SO_RCVTIMEO);
    o.sndtimeo = timeval(SO_SNDTIMEO);
    o.timestamp = [SO_TIMESTAMP_OLD, SO_TIMESTAMP_NEW, SO_TIMESTAMPNS_OLD, SO_TIMESTAMPNS_NEW]
        .into_iter()
        .find(|&n| int(SOL_SOCKET, n).unwrap_or(0) != 0);
    if let Some(b) = bytes(SOL_SOCKET, SO_TIMESTAMPING_OLD, 8).filter(|b| b.len() >= 4) {
        let flags = u32::from_ne_bytes(b[0..4].try_into().expect("4"));
        if flags != 0 {
            let phc = if b.len() == 8 { i32::from_ne_bytes(b[4..8].try_into().expect("4")) } else { 0 };
            // The new variant answers only when it was the one set (its time-format flag is on).
            let new = bytes(SOL_SOCKET, SO_TIMESTAMPING_NEW, 8).is_some_and(|b| b.len() >= 4 && b[..4] != [0; 4]);
            o.timestamping = Some((flags, phc, new));
        }
    }
    if let Some(b) = bytes(SOL_SOCKET, SO_BINDTODEVICE, 16).filter(|b| !b.is_empty()) {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        if end > 0 {
            o.device = Some(String::from_utf8_lossy(&b[..end]).into_owned());
        }
    }
    match sock::socket_filter(dup) {
        Ok(f) => o.filter = f,
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
            return Err(refuse("an eBPF socket filter is attached (SO_ATTACH_BPF); the kernel cannot give it back".into()))
        }
        Err(e) => return Err(sys("SO_GET_FILTER")(e)),
    }
    o.lock_filter = int(SOL_SOCKET, SO_LOCK_FILTER).unwrap_or(0) != 0;
    o.txtime = bytes(SOL_SOCKET, SO_TXTIME, 8).filter(|b| b.len() == 8 && b.iter().any(|&c| c != 0));
    if family == libc::AF_INET {
        o.ip_options = bytes(SOL_IP, IP_OPTIONS, 40).filter(|b| !b.is_empty());
        // A stream socket's multicast interface is dropped (see `tcp_cannot_hold`).
        if !tcp {
            o.multicast_if = bytes(SOL_IP, IP_MULTICAST_IF, 4).filter(|b| b.len() == 4 && b != &[0; 4]).map(|b| b[..4].try_into().expect("4"));
        }
    }
    // ICMPv6 filters are raw ICMPv6 sockets' only.
    if family == libc::AF_INET6 && !tcp {
        o.icmp6_filter = bytes(SOL_ICMPV6, ICMP6_FILTER, 32).filter(|b| b.len() == 32 && b.iter().any(|&c| c != 0));
    }
    let index_opts: &[(i32, i32)] = match family {
        libc::AF_INET => &[(SOL_IP, IP_UNICAST_IF)],
        libc::AF_INET6 if tcp => &[(SOL_IPV6, IPV6_UNICAST_IF)],
        libc::AF_INET6 => &[(SOL_IPV6, IPV6_UNICAST_IF), (SOL_IPV6, IPV6_MULTICAST_IF)],
        _ => &[],
    };
    for &(level, name) in index_opts {
        if let Some(idx) = int(level, name).filter(|&i| i > 0) {
            let ifname = ifname_of(idx, dup).ok_or_else(|| refuse(format!("{} names interface {idx}, which has no name", opt_name(level, name))))?;
            o.ifindex_opts.push((level, name, ifname));
        }
    }
    // A TCP socket cannot join a multicast group (the kernel answers EPROTO, IPv4 and IPv6):
    // it is not asked about each group of the namespace.
    let groups = if tcp { &[][..] } else { groups };
    for &(level, ifindex, ref ifname, ref group) in groups {
        if let Some((mode, sources)) = sock::multicast_filter(dup, level, ifindex, group).map_err(sys("MCAST_MSFILTER"))? {
            let keep = if level == SOL_IP { 16 } else { 28 };
            let sources = sources.into_iter().map(|s| s[..keep].to_vec()).collect();
            o.memberships.push(Membership { level, ifname: ifname.clone(), group: group.clone(), mode, sources });
        }
    }
    Ok(o)
}

fn setsockopt<C: SockCalls + ?Sized>(inj: &mut C, fd: u64, level: i32, name: i32, val: &[u8]) -> Result<()> {
    let rc = inj.setsockopt(fd, level, name, val)?;
    if rc < 0 {
        return Err(EngineError::Proc {
            pid: inj.pid(),
            detail: format!("restore socket option {} on fd {fd}: {}", opt_name(level, name), std::io::Error::from_raw_os_error(-rc as i32)),
        });
    }
    Ok(())
}

/// The index of interface `name` in the network namespace of the socket `fd` of the process
/// `inj` drives.
pub(super) fn ifindex<C: SockCalls + ?Sized>(inj: &mut C, fd: u64, name: &str) -> Result<i32> {
    let rc = inj.ifindex(fd, name)?;
    if rc < 0 {
        return Err(EngineError::Proc {
            pid: inj.pid(),
            detail: format!("interface {name} (used by socket fd {fd}) is not in the restored network namespace: {}", std::io::Error::from_raw_os_error(-rc as i32)),
        });
    }
    Ok(rc as i32)
}

/// Sets the saved options `o` on the socket `fd` of the process `inj` drives (before it is bound
/// or connected).
pub(super) fn set_opts<C: SockCalls + ?Sized>(inj: &mut C, fd: u64, _family: i32, tcp: bool, o: &SockOpts) -> Result<()> {
    let int = |v: i32| v.to_ne_bytes();
    // IP_TOS sets the socket's priority too (from the TOS bits): SO_PRIORITY goes after it.
    let priority = |&&(level, name, _): &&(i32, i32, i32)| level == SOL_SOCKET && name == SO_PRIORITY;
    for &(level, name, v) in o.ints.iter().filter(|i| !priority(i)).chain(o.ints.iter().filter(priority)) {
        setsockopt(inj, fd, level, name, &int(v))?;
    }
    if tcp && o.nodelay {
        setsockopt(inj, fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, &int(1))?;
    }
    for (val, plain, force) in [(o.sndbuf, SO_SNDBUF, SO_SNDBUFFORCE), (o.rcvbuf, SO_RCVBUF, SO_RCVBUFFORCE)] {
        if let Some(v) = val {
            // The kernel doubles what it is given; FORCE lifts the rmem_max/wmem_max cap.
            if setsockopt(inj, fd, SOL_SOCKET, force, &int(v / 2)).is_err() {
                setsockopt(inj, fd, SOL_SOCKET, plain, &int(v / 2))?;
            }
        }
    }
    if o.buf_lock != 0 || o.sndbuf.is_some() || o.rcvbuf.is_some() {
        setsockopt(inj, fd, SOL_SOCKET, SO_BUF_LOCK, &int(o.buf_lock))?;
    }
    if let Some((on, secs)) = o.linger {
        let mut b = on.to_ne_bytes().to_vec();
        b.extend_from_slice(&secs.to_ne_bytes());
        setsockopt(inj, fd, SOL_SOCKET, SO_LINGER, &b)?;
    }
    for (t, name) in [(o.rcvtimeo, SO_RCVTIMEO), (o.sndtimeo, SO_SNDTIMEO)] {
        if let Some((s, us)) = t {
            let mut b = s.to_ne_bytes().to_vec();
            b.extend_from_slice(&us.to_ne_bytes());
            setsockopt(inj, fd, SOL_SOCKET, name, &b)?;
        }
    }
    if let Some((flags, phc, new)) = o.timestamping {
        let name = if new { SO_TIMESTAMPING_NEW } else { SO_TIMESTAMPING_OLD };
        if flags & SOF_TIMESTAMPING_BIND_PHC != 0 {
            let mut b = flags.to_ne_bytes().to_vec();
            b.extend_from_slice(&phc.to_ne_bytes());
            setsockopt(inj, fd, SOL_SOCKET, name, &b)?;
        } else {
            setsockopt(inj, fd, SOL_SOCKET, name, &flags.to_ne_bytes())?;
        }
    }
    // After SO_TIMESTAMPING, whose variant also sets the time format flag.
    if let Some(name) = o.timestamp {
        setsockopt(inj, fd, SOL_SOCKET, name, &int(1))?;
    }
    if let Some(dev) = &o.device {
        setsockopt(inj, fd, SOL_SOCKET, SO_BINDTODEVICE, dev.as_bytes())?;
    }
    if let Some(filter) = &o.filter {
        let rc = inj.attach_filter(fd, filter)?;
        if rc < 0 {
            return Err(EngineError::Proc {
                pid: inj.pid(),
                detail: format!("restore the BPF filter of socket fd {fd}: {}", std::io::Error::from_raw_os_error(-rc as i32)),
            });
        }
    }
    if o.lock_filter {
        setsockopt(inj, fd, SOL_SOCKET, SO_LOCK_FILTER, &int(1))?;
    }
    if let Some(t) = &o.txtime {
        setsockopt(inj, fd, SOL_SOCKET, SO_TXTIME, t)?;
    }
    if let Some(b) = &o.ip_options {
        setsockopt(inj, fd, SOL_IP, IP_OPTIONS, b)?;
    }
    if let Some(a) = o.multicast_if {
        setsockopt(inj, fd, SOL_IP, IP_MULTICAST_IF, &a)?;
    }
    if let Some(f) = &o.icmp6_filter {
        setsockopt(inj, fd, SOL_ICMPV6, ICMP6_FILTER, f)?;
    }
    for (level, name, ifname) in &o.ifindex_opts {
        let idx = ifindex(inj, fd, ifname)?;
        // IPv4's IP_UNICAST_IF takes the index in network byte order.
        let v = if *name == IP_UNICAST_IF { (idx as u32).to_be() as i32 } else { idx };
        setsockopt(inj, fd, *level, *name, &int(v))?;
    }
    for m in &o.memberships {
        let idx = ifindex(inj, fd, &m.ifname)? as u32;
        // struct group_req: interface (u32, padded to 8), group (sockaddr_storage).
        let mut req = vec![0u8; 136];
        req[0..4].copy_from_slice(&idx.to_ne_bytes());
        req[8..8 + m.group.len()].copy_from_slice(&m.group);
        setsockopt(inj, fd, m.level, MCAST_JOIN_GROUP, &req)?;
        if m.mode != MCAST_EXCLUDE || !m.sources.is_empty() {
            // struct group_filter with the sources.
            let mut f = vec![0u8; 144 + m.sources.len().max(1) * 128];
            f[0..4].copy_from_slice(&idx.to_ne_bytes());
            f[8..8 + m.group.len()].copy_from_slice(&m.group);
            f[136..140].copy_from_slice(&m.mode.to_ne_bytes());
            f[140..144].copy_from_slice(&(m.sources.len() as u32).to_ne_bytes());
            for (i, s) in m.sources.iter().enumerate() {
                f[144 + i * 128..144 + i * 128 + s.len()].copy_from_slice(s);
            }
            setsockopt(inj, fd, m.level, MCAST_MSFILTER, &f)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn inode(fd: &OwnedFd) -> u64 {
        std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap().ino()
    }

    /// A connected pair on `addr` (loopback of one family).
    fn pair(addr: &str) -> Option<(OwnedFd, OwnedFd)> {
        let l = TcpListener::bind(addr).ok()?;
        let c = TcpStream::connect(l.local_addr().ok()?).ok()?;
        let (a, _) = l.accept().ok()?;
        Some((c.into(), a.into()))
    }

    /// What one `inet_diag` dump says of a socket is what getsockopt answers: for every integer
    /// option the dump answers, the owner, buffer sizes, congestion control, state, negotiated
    /// options and IPv4 addresses, on sockets with those options changed from their defaults
    /// and on sockets left as they were. Saving a TCP socket relies on it (`opts_of`, `save_tcp`).
    #[test]
    fn inet_diag_answers_what_getsockopt_does() {
        let (c, a) = pair("127.0.0.1:0").expect("IPv4 loopback pair");
        let set = |fd: &OwnedFd, level, name, v| sock::setsockopt_int(fd, level, name, v).unwrap();
        set(&c, SOL_IP, libc::IP_TOS, 0x28);
        set(&c, SOL_SOCKET, libc::SO_MARK, 77);
        set(&c, SOL_IP, libc::IP_RECVERR, 1);
        set(&c, SOL_IP, libc::IP_FREEBIND, 1);
        set(&c, SOL_IP, libc::IP_TRANSPARENT, 1);
        set(&c, SOL_IP, libc::IP_MULTICAST_ALL, 0);
        set(&c, SOL_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1);
        set(&c, SOL_IP, 26, 1); // IP_RECVERR_RFC4884
        set(&c, SOL_SOCKET, libc::SO_SNDBUF, 100_000);
        set(&c, SOL_SOCKET, libc::SO_RCVBUF, 70_000);
        let other = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control")
            .unwrap_or_default()
            .split_whitespace()
            .find(|&x| x != std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control").unwrap_or_default().trim())
            .map(str::to_string);
        if let Some(cc) = &other {
            sock::setsockopt_bytes(&c, libc::IPPROTO_TCP, libc::TCP_CONGESTION, cc.as_bytes()).unwrap();
        }
        let mut socks = vec![(c, libc::AF_INET), (a, libc::AF_INET)];
        match pair("[::1]:0") {
            Some((c6, a6)) => {
                set(&c6, SOL_IPV6, libc::IPV6_TCLASS, 0x40);
                set(&c6, SOL_IP, libc::IP_TOS, 0x10);
                socks.push((c6, libc::AF_INET6));
                socks.push((a6, libc::AF_INET6));
            }
            None => eprintln!("NOTE: no IPv6 loopback here: the IPv6 traffic class is not compared"),
        }
        let diag = sock::tcp_sockets(std::process::id() as i32, true).expect("inet_diag dump");
        for (fd, family) in &socks {
            let k = diag.get(&inode(fd)).expect("the socket is in the dump");
            let what = format!("socket {} (family {family})", fd.as_raw_fd());
            assert_eq!(k.family, *family, "{what}");
            let mut answered = 0;
            for &(level, name, label) in int_table(*family).chain(IP_INTS) {
                if let Some(v) = k.int_opt(level, name) {
                    assert_eq!(Ok(v), sock::getsockopt_int(fd, level, name).map_err(|e| e.to_string()), "{what}: {label}");
                    answered += 1;
                }
            }
            assert!(answered >= 10, "{what}: the dump answered {answered} options");
            assert_eq!(k.uid, sock::owner_uid(fd).unwrap(), "{what}: owner");
            let int = |level, name| sock::getsockopt_int(fd, level, name).unwrap();
            assert_eq!(k.buffers, Some((int(SOL_SOCKET, libc::SO_SNDBUF), int(SOL_SOCKET, libc::SO_RCVBUF))), "{what}: buffers");
            let cc = sock::getsockopt_bytes(fd, libc::IPPROTO_TCP, libc::TCP_CONGESTION, 16).unwrap();
            assert_eq!(k.congestion.as_deref().map(str::as_bytes), cc.split(|&b| b == 0).next(), "{what}: congestion control");
            let info = sock::getsockopt_bytes(fd, libc::IPPROTO_TCP, libc::TCP_INFO, 104).unwrap();
            assert!(k.info.len() >= 104, "{what}: tcp_info of {} bytes", k.info.len());
            // State, retransmits, probes, backoff, options, window scales.
            assert_eq!(k.info[..1], info[..1], "{what}: state");
            assert_eq!(k.info[5..7], info[5..7], "{what}: negotiated options and window scales");
            assert_eq!(k.state, info[0], "{what}: state");
            if *family == libc::AF_INET {
                let addrs = (sock::sockaddr(fd, false).unwrap(), sock::sockaddr(fd, true).unwrap());
                assert_eq!(k.addrs.as_ref(), Some(&addrs), "{what}: addresses");
            }
        }
        // The options set above are the ones the dump gave.
        let k = &diag[&inode(&socks[0].0)];
        assert_eq!((k.tos, k.mark), (Some(0x28), Some(77)));
        assert_eq!(k.int_opt(SOL_IP, libc::IP_TRANSPARENT), Some(1));
        if let Some(cc) = &other {
            assert_eq!(k.congestion.as_ref(), Some(cc));
        }
        if let Some((c6, _)) = socks.get(2) {
            assert_eq!(diag[&inode(c6)].tclass, Some(0x40));
        }
    }
}
