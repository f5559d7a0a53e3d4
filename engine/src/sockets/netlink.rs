//! Netlink sockets: `NETLINK_ROUTE` and `NETLINK_KOBJECT_UEVENT` sockets (route, link and
//! address listeners, `ip monitor`, udev-style uevent listeners) come back bound to the same port
//! id with the same multicast groups (all of them, `NETLINK_LIST_MEMBERSHIPS`), connected peer
//! and options. Notifications sent while the pod was not running are not replayed (as for any
//! network traffic).
//!
//! Refused: other netlink protocols (their kernel-side state, e.g. audit or netfilter
//! subscriptions, cannot be rebuilt from the socket), messages queued for reading, and a dump in
//! progress (both from the namespace's `/proc/net/netlink`).
use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

use super::opts::{set_opts, SockOpts};
use super::{put, SocketContext};
use crate::inject::Injector;
use crate::sys::sock;
use crate::{EngineError, Result};

const NETLINK_ROUTE: i32 = 0;
const NETLINK_KOBJECT_UEVENT: i32 = 15;
const SOL_NETLINK: i32 = 270;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;
const NETLINK_LIST_MEMBERSHIPS: i32 = 9;

/// A netlink socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetlinkSocket {
    /// SOCK_RAW or SOCK_DGRAM.
    pub sock_type: i32,
    /// NETLINK_ROUTE or NETLINK_KOBJECT_UEVENT.
    pub protocol: i32,
    /// Port id it is bound to (0: not bound yet).
    pub portid: u32,
    /// Multicast groups joined (numbered from 1).
    pub groups: Vec<u32>,
    /// Connected peer (port id, group), when connected.
    pub peer: Option<(u32, u32)>,
    /// Options.
    pub opts: SockOpts,
}

/// Saves netlink socket `dup` (fd `fd` of `pid`, inode `ino`).
pub(super) fn save(pid: i32, fd: i32, ino: u64, sock_type: i32, dup: &OwnedFd, ctx: &mut SocketContext) -> Result<NetlinkSocket> {
    let refuse = |what: String| EngineError::Proc { pid, detail: format!("fd {fd}: {what}") };
    let sys = |step: &'static str| move |source| EngineError::Sys { step, pid, source };
    let protocol = sock::getsockopt_int(dup, libc::SOL_SOCKET, libc::SO_PROTOCOL).map_err(sys("socket protocol"))?;
    if protocol != NETLINK_ROUTE && protocol != NETLINK_KOBJECT_UEVENT {
        return Err(refuse(format!("netlink socket of protocol {protocol}: only NETLINK_ROUTE and NETLINK_KOBJECT_UEVENT sockets are saved")));
    }
    // /proc/net/netlink: sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/netlink")).unwrap_or_default();
    if let Some(f) = table.lines().map(|l| l.split_whitespace().collect::<Vec<_>>()).find(|f| f.len() >= 10 && f[9] == ino.to_string()) {
        if f[4] != "0" {
            return Err(refuse(format!("netlink socket has {} bytes of messages queued for reading; they cannot be saved", f[4])));
        }
        if f[6] != "0" {
            return Err(refuse("netlink socket is in the middle of a dump".into()));
        }
    }
    // struct sockaddr_nl: family (u16), pad (u16), pid (u32), groups (u32).
    let me = sock::sockaddr(dup, false).map_err(sys("getsockname netlink"))?;
    let portid = if me.len() >= 8 { u32::from_ne_bytes(me[4..8].try_into().expect("4")) } else { 0 };
    let peer = sock::sockaddr(dup, true)
        .ok()
        .filter(|p| p.len() >= 12)
        .map(|p| (u32::from_ne_bytes(p[4..8].try_into().expect("4")), u32::from_ne_bytes(p[8..12].try_into().expect("4"))))
        .filter(|&(pid, groups)| pid != 0 || groups != 0);
    let mask = sock::getsockopt_bytes(dup, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, 1024).map_err(sys("NETLINK_LIST_MEMBERSHIPS"))?;
    let mut groups = Vec::new();
    for (i, w) in mask.chunks_exact(4).enumerate() {
        let w = u32::from_ne_bytes(w.try_into().expect("4"));
        for bit in 0..32 {
            if w & (1 << bit) != 0 {
                groups.push(i as u32 * 32 + bit + 1);
            }
        }
    }
    let opts = super::options(pid, fd, dup, libc::AF_NETLINK, sock_type, false, ctx)?;
    Ok(NetlinkSocket { sock_type, protocol, portid, groups, peer, opts })
}

/// Recreates netlink socket `s` in the process `inj` drives.
pub(super) fn restore(inj: &mut Injector, s: &NetlinkSocket) -> Result<u64> {
    let fd = super::create_as(inj, s.opts.uid, "socket(AF_NETLINK)", libc::SYS_socket, [libc::AF_NETLINK as u64, s.sock_type as u64, s.protocol as u64, 0, 0, 0])?;
    set_opts(inj, fd, libc::AF_NETLINK, false, &s.opts)?;
    let nl = |pid: u32, groups: u32| {
        let mut a = vec![0u8; 12];
        a[0..2].copy_from_slice(&(libc::AF_NETLINK as u16).to_ne_bytes());
        a[4..8].copy_from_slice(&pid.to_ne_bytes());
        a[8..12].copy_from_slice(&groups.to_ne_bytes());
        a
    };
    if s.portid != 0 {
        let a = nl(s.portid, 0);
        let p = put(inj, &a)?;
        let rc = inj.syscall(libc::SYS_bind, [fd, p, 12, 0, 0, 0])?;
        if rc < 0 {
            return Err(EngineError::Proc {
                pid: inj.tid(),
                detail: format!("bind netlink socket to port id {}: {}", s.portid, std::io::Error::from_raw_os_error(-rc as i32)),
            });
        }
    }
    for g in &s.groups {
        let p = put(inj, &g.to_ne_bytes())?;
        inj.call("setsockopt(NETLINK_ADD_MEMBERSHIP)", libc::SYS_setsockopt, [fd, SOL_NETLINK as u64, NETLINK_ADD_MEMBERSHIP as u64, p, 4, 0])?;
    }
    if let Some((pid, groups)) = s.peer {
        let a = nl(pid, groups);
        let p = put(inj, &a)?;
        inj.call("connect netlink socket", libc::SYS_connect, [fd, p, 12, 0, 0, 0])?;
    }
    Ok(fd)
}
