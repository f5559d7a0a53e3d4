//! Sockets: unix sockets connected inside the group (socketpairs and accepted/connected pairs,
//! with the bytes queued in both directions), listening and unconnected unix sockets, TCP
//! sockets (listening, unconnected, and established or half-closed connections saved with the
//! kernel's repair mode: [`tcp`]) and UDP sockets (bound, perhaps connected, with the datagrams
//! queued for reading).
//!
//! Facts are read on a duplicate of the socket taken with `pidfd_getfd` (options, addresses,
//! TCP state, queued data peeked with `MSG_PEEK` and a peek offset, so nothing is consumed),
//! and, for unix sockets, from a `sock_diag` dump of the process's network namespace (peers,
//! names, shutdown state).
//!
//! Restore injects `socket`/`socketpair`, `setsockopt`, `bind`, `listen`, `connect` and `sendto`
//! into the process. A connected unix pair is created by the first of its two ends to be restored;
//! the other end waits in a keeper fd for its owner, as pipe ends do. A TCP connection is saved
//! only while the network is locked ([`SocketContext::network_locked`]); with
//! [`SocketContext::tcp_close`] connections are given up instead (they come back as fresh,
//! unconnected sockets). Not restored yet: connections waiting in a listener's backlog (they are
//! dropped).
mod packet;
mod inet;
mod opts;
pub mod tcp;
mod unix;

use std::collections::HashMap;
use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

use crate::inject::Injector;
use crate::sys::sock::{self, UnixDiag};
use crate::{EngineError, Result};
pub use opts::SockOpts;
pub use tcp::{TcpConn, TcpOpts};

const TCP_LISTEN: u8 = tcp::state::LISTEN;
const TCP_CLOSE: u8 = tcp::state::CLOSE;
const SOMAXCONN: u64 = 4096;

/// A saved socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SocketState {
    /// One end of a connected unix pair whose other end is in the group.
    UnixPair {
        /// This end's inode.
        ino: u64,
        /// The other end's inode.
        peer: u64,
        /// SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET.
        sock_type: i32,
        /// Messages queued for reading at this end, then at the peer (recorded on the end saved
        /// first only).
        queued: (Vec<Vec<u8>>, Vec<Vec<u8>>),
        /// Shutdown mask of this end (1 = read, 2 = write).
        shutdown: u8,
    },
    /// A listening unix socket.
    UnixListen {
        /// Type.
        sock_type: i32,
        /// Bound name (a path, or an abstract name starting with NUL).
        name: Vec<u8>,
    },
    /// An unconnected unix socket, bound or not.
    UnixUnconnected {
        /// Type.
        sock_type: i32,
        /// Bound name.
        name: Option<Vec<u8>>,
    },
    /// A listening TCP socket.
    TcpListen {
        /// AF_INET or AF_INET6.
        family: i32,
        /// Bound address (raw sockaddr).
        addr: Vec<u8>,
        /// Options.
        opts: SockOpts,
        /// TCP-level options.
        tcp: TcpOpts,
    },
    /// A TCP socket neither listening nor connected (or an established connection the caller
    /// chose to close): restored unconnected, bound again if it was bound to a port.
    TcpFresh {
        /// Family.
        family: i32,
        /// Bound address, if bound to a port.
        addr: Option<Vec<u8>>,
        /// Options.
        opts: SockOpts,
        /// TCP-level options.
        tcp: TcpOpts,
    },
    /// An established or half-closed TCP connection, with its queues and sequence numbers.
    TcpConn(Box<TcpConn>),
    /// A UDP socket.
    Udp {
        /// Family.
        family: i32,
        /// Bound address, if bound to a port.
        addr: Option<Vec<u8>>,
        /// Connected peer.
        peer: Option<Vec<u8>>,
        /// Options.
        opts: SockOpts,
        /// Datagrams queued for reading: (payload, sender's raw address).
        queued: Vec<(Vec<u8>, Vec<u8>)>,
    },
}

/// What saving sockets needs to know about the group.
#[derive(Default)]
pub struct SocketContext {
    /// Unix sockets of the network namespace (sock_diag), by inode, read on first need.
    pub(crate) unix: Option<HashMap<u32, UnixDiag>>,
    /// Where each socket inode of the group is held: (host pid, fd).
    pub(crate) holders: HashMap<u64, (i32, i32)>,
    /// Unix pair ends already saved (their queues were recorded with the first end).
    pub(crate) pairs_done: std::collections::HashSet<u64>,
    /// Close established TCP connections instead of saving them.
    pub tcp_close: bool,
    /// The network of the processes is locked ([`crate::pod::netlock`]): established TCP
    /// connections may be saved. Without the lock they fail the checkpoint (unless `tcp_close`).
    pub network_locked: bool,
}

fn port_of(addr: &[u8]) -> u16 {
    if addr.len() >= 4 {
        u16::from_be_bytes([addr[2], addr[3]])
    } else {
        0
    }
}

/// Saves socket `ino`, duplicated into Zap as `dup`, held by `pid` at `fd`.
pub fn save(pid: i32, fd: i32, ino: u64, dup: &OwnedFd, ctx: &mut SocketContext) -> Result<SocketState> {
    let sys = |step: &'static str| move |source| EngineError::Sys { step, pid, source };
    let unsupported = |what: String| EngineError::Proc { pid, detail: format!("fd {fd}: {what}") };
    let family = sock::getsockopt_int(dup, libc::SOL_SOCKET, libc::SO_DOMAIN).map_err(sys("socket family"))?;
    let sock_type = sock::getsockopt_int(dup, libc::SOL_SOCKET, libc::SO_TYPE).map_err(sys("socket type"))?;
    match family {
        libc::AF_UNIX => unix::save(pid, fd, ino, sock_type, dup, ctx),
        libc::AF_INET | libc::AF_INET6 => inet::save(pid, fd, ino, family, sock_type, dup, ctx),
        other => Err(unsupported(format!("socket family {other}"))),
    }
}

/// What restoring sockets has created so far, for processes restored together.
#[derive(Default)]
pub struct SocketRestore {
    /// Unix pair end inode -> (vpid holding it in a keeper fd, that fd).
    pub(crate) parked: HashMap<u64, (i32, u64)>,
    /// IPv4 addresses to rewrite when binding (a copy restored under another address).
    pub rebind: Vec<([u8; 4], [u8; 4])>,
}

fn put(inj: &mut Injector, bytes: &[u8]) -> Result<u64> {
    let scratch = inj.scratch(bytes.len() as u64 + 4096)?;
    inj.write_mem(scratch, bytes)?;
    Ok(scratch)
}

/// `addr` with its IPv4 address rewritten as `ctx.rebind` says (a copy under another address).
fn rewrite(addr: &[u8], ctx: &SocketRestore) -> Vec<u8> {
    let mut addr = addr.to_vec();
    if addr.len() >= 8 && u16::from_ne_bytes([addr[0], addr[1]]) == libc::AF_INET as u16 {
        if let Some((_, new)) = ctx.rebind.iter().find(|(old, _)| old[..] == addr[4..8]) {
            addr[4..8].copy_from_slice(new);
        }
    }
    addr
}

fn bind(inj: &mut Injector, fd: u64, addr: &[u8], ctx: &SocketRestore) -> Result<()> {
    let addr = rewrite(addr, ctx);
    let p = put(inj, &addr)?;
    inj.call("bind", libc::SYS_bind, [fd, p, addr.len() as u64, 0, 0, 0])?;
    Ok(())
}

/// Recreates socket `st` in the process `inj` drives (`vpid`), returning its fd there.
/// `take` takes a keeper fd of another process.
pub fn restore(
    inj: &mut Injector,
    vpid: i32,
    st: &SocketState,
    ctx: &mut SocketRestore,
    take: &mut dyn FnMut(&mut Injector, i32, u64) -> Result<u64>,
) -> Result<u64> {
    if let Some(fd) = unix::restore(inj, vpid, st, ctx, take)? {
        return Ok(fd);
    }
    match inet::restore(inj, vpid, st, ctx)? {
        Some(fd) => Ok(fd),
        None => unreachable!("every socket kind is unix or inet"),
    }
}

/// Every TCP connection (not listening, not closed) held by the processes `pids`: (local, peer)
/// raw addresses, for locking them one by one.
pub fn tcp_connections(pids: &[i32]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    for_each_tcp(pids, |_, _, dup| {
        let st = sock::tcp_state(dup)?;
        if st != TCP_LISTEN && st != TCP_CLOSE {
            out.push((sock::sockaddr(dup, false)?, sock::sockaddr(dup, true).unwrap_or_default()));
        }
        Ok(())
    })?;
    Ok(out)
}

/// Puts every TCP socket of the processes `pids` in repair mode ([`tcp::silence`]), so that their
/// end sends no FIN or RST. Returns how many connections were silenced.
pub fn silence_tcp(pids: &[i32]) -> Result<usize> {
    let mut n = 0;
    for_each_tcp(pids, |pid, fd, dup| {
        tcp::silence(dup).map_err(|e| std::io::Error::other(format!("pid {pid} fd {fd}: {e}")))?;
        n += 1;
        Ok(())
    })?;
    Ok(n)
}

/// Makes every TCP connection of the (stopped) processes `pids` send a window probe now: repair
/// mode on and off again (`SO_REUSEADDR`, which repair mode clears, is set back). Used when a
/// restored pod's network opens: a peer that still has the connection answers with an ACK, one
/// that does not (a rolled-back connection) with a reset, which the application then sees at
/// once. Returns how many were probed.
pub fn probe_tcp(pids: &[i32]) -> Result<usize> {
    let mut n = 0;
    for_each_tcp(pids, |_, _, dup| {
        if tcp::repairable(sock::tcp_state(dup)?) {
            tcp::probe(dup)?;
            n += 1;
        }
        Ok(())
    })?;
    Ok(n)
}

/// Calls `f(pid, fd, duplicate)` for every TCP socket held by `pids` (each socket once).
fn for_each_tcp(pids: &[i32], mut f: impl FnMut(i32, i32, &OwnedFd) -> std::io::Result<()>) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for &pid in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        let Ok(pidfd) = crate::sys::proc::pidfd_open(pid) else { continue };
        for e in dir.flatten() {
            let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            let Ok(target) = std::fs::read_link(e.path()) else { continue };
            let t = target.to_string_lossy();
            let Some(ino) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')).and_then(|s| s.parse::<u64>().ok()) else {
                continue;
            };
            if !seen.insert(ino) {
                continue;
            }
            let dup = crate::sys::proc::pidfd_getfd(&pidfd, fd).map_err(|source| EngineError::Sys { step: "pidfd_getfd socket", pid, source })?;
            let family = sock::getsockopt_int(&dup, libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap_or(0);
            let proto = sock::getsockopt_int(&dup, libc::SOL_SOCKET, libc::SO_PROTOCOL).unwrap_or(0);
            if (family == libc::AF_INET || family == libc::AF_INET6) && proto == libc::IPPROTO_TCP {
                f(pid, fd, &dup).map_err(|source| EngineError::Sys { step: "TCP socket", pid, source })?;
            }
        }
    }
    Ok(())
}
