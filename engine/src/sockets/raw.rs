//! ICMP ("ping") sockets, raw IP sockets and packet sockets.
//!
//! A ping socket (`socket(AF_INET[6], SOCK_DGRAM, IPPROTO_ICMP[V6])`) can be made only by a
//! group in the network namespace's `net.ipv4.ping_group_range`: the sysctl is saved with the
//! socket and set again in the restored namespace (restore widens it to root's group for as long
//! as it makes the socket). Its bound address (the port is the ICMP identifier) and connected
//! peer come back. A raw IP socket comes back with its protocol, address, peer and options
//! (`IP_HDRINCL`, `ICMP_FILTER` among them). A packet socket comes back with its type, protocol,
//! the interface it is bound to (by name), its options and its fanout group.
//!
//! Refused: packets queued for reading on any of them (they cannot be peeked in order: the
//! kernel has no peek offset for these sockets), and packet sockets with mapped rings.
use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

use super::opts::{set_opts, SockOpts};
use super::{put, SocketContext, SocketRestore};
use crate::inject::Injector;
use crate::sys::sock;
use crate::{EngineError, Result};

const PING_RANGE: &str = "/proc/sys/net/ipv4/ping_group_range";
const SOL_PACKET: i32 = 263;
const PACKET_FANOUT: i32 = 18;

/// A ping socket or a raw IP socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawSocket {
    /// AF_INET or AF_INET6.
    pub family: i32,
    /// SOCK_DGRAM (ping) or SOCK_RAW.
    pub sock_type: i32,
    /// IP protocol.
    pub protocol: i32,
    /// Bound address (raw sockaddr), when bound.
    pub addr: Option<Vec<u8>>,
    /// Connected peer.
    pub peer: Option<Vec<u8>>,
    /// For a ping socket: the namespace's `ping_group_range`.
    pub ping_group_range: Option<(u32, u32)>,
    /// Options.
    pub opts: SockOpts,
}

/// A packet socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketSocket {
    /// SOCK_RAW or SOCK_DGRAM.
    pub sock_type: i32,
    /// Protocol (ethertype, network byte order).
    pub protocol: u16,
    /// The interface it is bound to, by name.
    pub ifname: Option<String>,
    /// PACKET_FANOUT argument (group id | type << 16), when in a fanout group.
    pub fanout: Option<u32>,
    /// Options.
    pub opts: SockOpts,
}

fn nothing_queued(pid: i32, fd: i32, dup: &OwnedFd, what: &str) -> Result<()> {
    match sock::inq(dup) {
        Ok(n) if n > 0 => Err(EngineError::Proc {
            pid,
            detail: format!("fd {fd}: {what} has packets queued for reading ({n} bytes in the first); they cannot be saved"),
        }),
        _ => Ok(()),
    }
}

fn ping_range(pid: i32) -> Result<(u32, u32)> {
    let text = sock::in_netns(pid, || std::fs::read_to_string(PING_RANGE)).map_err(|source| EngineError::Sys { step: "read ping_group_range", pid, source })?;
    let mut it = text.split_whitespace().filter_map(|v| v.parse::<u32>().ok());
    match (it.next(), it.next()) {
        (Some(lo), Some(hi)) => Ok((lo, hi)),
        _ => Err(EngineError::Proc { pid, detail: format!("cannot parse {PING_RANGE}: {text:?}") }),
    }
}

/// True for the sockets this module saves among AF_INET/AF_INET6 ones.
pub(super) fn is_raw(sock_type: i32, protocol: i32) -> bool {
    sock_type == libc::SOCK_RAW || (sock_type == libc::SOCK_DGRAM && (protocol == libc::IPPROTO_ICMP || protocol == libc::IPPROTO_ICMPV6))
}

/// Saves ping or raw IP socket `dup` (fd `fd` of `pid`).
pub(super) fn save(pid: i32, fd: i32, family: i32, sock_type: i32, protocol: i32, dup: &OwnedFd, ctx: &mut SocketContext) -> Result<RawSocket> {
    let ping = sock_type == libc::SOCK_DGRAM;
    nothing_queued(pid, fd, dup, if ping { "ICMP socket" } else { "raw socket" })?;
    let any = |a: &Vec<u8>| a.len() >= 4 && (a[2..4] != [0, 0] || a[4..].iter().any(|&b| b != 0));
    let addr = sock::sockaddr(dup, false).ok().filter(any);
    let peer = sock::sockaddr(dup, true).ok();
    let ping_group_range = if ping { Some(ping_range(pid)?) } else { None };
    let opts = super::options(pid, fd, dup, family, sock_type, false, ctx)?;
    Ok(RawSocket { family, sock_type, protocol, addr, peer, ping_group_range, opts })
}

/// Saves packet socket `dup` (fd `fd` of `pid`).
pub(super) fn save_packet(pid: i32, fd: i32, sock_type: i32, dup: &OwnedFd, ctx: &mut SocketContext) -> Result<PacketSocket> {
    nothing_queued(pid, fd, dup, "packet socket")?;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let ino = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    if ino.starts_with("socket:[") && maps.lines().any(|l| l.contains(&format!("socket:[{}", &ino[8..]))) {
        return Err(EngineError::Proc { pid, detail: format!("fd {fd}: packet socket with a mapped ring (PACKET_RX_RING/TX_RING) is not supported") });
    }
    // struct sockaddr_ll: family (u16), protocol (be16), ifindex (i32), ...
    let ll = sock::sockaddr(dup, false).map_err(|source| EngineError::Sys { step: "getsockname packet socket", pid, source })?;
    let protocol = if ll.len() >= 4 { u16::from_ne_bytes([ll[2], ll[3]]) } else { 0 };
    let ifindex = if ll.len() >= 8 { i32::from_ne_bytes(ll[4..8].try_into().expect("4")) } else { 0 };
    let ifname = if ifindex > 0 { ifname_in(pid, ifindex) } else { None };
    if ifindex > 0 && ifname.is_none() {
        return Err(EngineError::Proc { pid, detail: format!("fd {fd}: packet socket bound to interface {ifindex}, which has no name") });
    }
    let fanout = sock::getsockopt_int(dup, SOL_PACKET, PACKET_FANOUT).ok().filter(|&v| v != 0).map(|v| v as u32);
    let opts = super::options(pid, fd, dup, libc::AF_PACKET, sock_type, false, ctx)?;
    Ok(PacketSocket { sock_type, protocol, ifname, fanout, opts })
}

/// The name of interface `index` in the network namespace of `pid`.
fn ifname_in(pid: i32, index: i32) -> Option<String> {
    sock::in_netns(pid, move || {
        let s = sock::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
        let mut req = [0u8; 40];
        req[16..20].copy_from_slice(&index.to_ne_bytes());
        sock::ioctl_bytes(&s, 0x8910, &mut req)?;
        let end = req[..16].iter().position(|&b| b == 0).unwrap_or(16);
        Ok(String::from_utf8_lossy(&req[..end]).into_owned())
    })
    .ok()
}

/// Sets `ping_group_range` in the network namespace of thread `tid`.
fn set_ping_range(tid: i32, range: (u32, u32)) -> Result<()> {
    let v = format!("{} {}\n", range.0, range.1);
    sock::in_netns(tid, move || std::fs::write(PING_RANGE, v.as_bytes())).map_err(|source| EngineError::Sys { step: "write ping_group_range", pid: tid, source })
}

fn connect(inj: &mut Injector, fd: u64, addr: &[u8]) -> Result<()> {
    let p = put(inj, addr)?;
    inj.call("connect", libc::SYS_connect, [fd, p, addr.len() as u64, 0, 0, 0]).map(|_| ())
}

/// Recreates ping or raw IP socket `s` in the process `inj` drives.
pub(super) fn restore(inj: &mut Injector, s: &RawSocket, ctx: &mut SocketRestore) -> Result<u64> {
    let tid = inj.tid();
    let fd = match s.ping_group_range {
        Some(range) => {
            // The restorer is root (gid 0) until the process's credentials are set: let group 0
            // make the socket, then leave the saved range.
            set_ping_range(tid, (0, range.1.max(1)))?;
            let fd = super::create_as(inj, s.opts.uid, "socket(ICMP)", libc::SYS_socket, [s.family as u64, s.sock_type as u64, s.protocol as u64, 0, 0, 0]);
            set_ping_range(tid, range)?;
            fd?
        }
        None => super::create_as(inj, s.opts.uid, "socket(SOCK_RAW)", libc::SYS_socket, [s.family as u64, s.sock_type as u64, s.protocol as u64, 0, 0, 0])?,
    };
    set_opts(inj, fd, s.family, false, &s.opts)?;
    if let Some(a) = &s.addr {
        super::bind(inj, fd, a, ctx)?;
    }
    if let Some(p) = &s.peer {
        connect(inj, fd, p)?;
    }
    Ok(fd)
}

/// Recreates packet socket `s` in the process `inj` drives.
pub(super) fn restore_packet(inj: &mut Injector, s: &PacketSocket) -> Result<u64> {
    let fd = super::create_as(inj, s.opts.uid, "socket(AF_PACKET)", libc::SYS_socket, [libc::AF_PACKET as u64, s.sock_type as u64, u64::from(s.protocol), 0, 0, 0])?;
    set_opts(inj, fd, libc::AF_PACKET, false, &s.opts)?;
    if let Some(name) = &s.ifname {
        let idx = super::opts::ifindex(inj, fd, name)?;
        // struct sockaddr_ll (20 bytes).
        let mut ll = vec![0u8; 20];
        ll[0..2].copy_from_slice(&(libc::AF_PACKET as u16).to_ne_bytes());
        ll[2..4].copy_from_slice(&s.protocol.to_ne_bytes());
        ll[4..8].copy_from_slice(&idx.to_ne_bytes());
        let p = put(inj, &ll)?;
        inj.call("bind packet socket", libc::SYS_bind, [fd, p, 20, 0, 0, 0])?;
    }
    if let Some(f) = s.fanout {
        let p = put(inj, &f.to_ne_bytes())?;
        inj.call("setsockopt(PACKET_FANOUT)", libc::SYS_setsockopt, [fd, SOL_PACKET as u64, PACKET_FANOUT as u64, p, 4, 0])?;
    }
    Ok(fd)
}
