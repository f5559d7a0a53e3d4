//! Sockets: unix sockets of every type and state ([`unix`]: pairs, listeners with their
//! backlogs, datagram receivers, half-closed sockets, with the messages queued on them and the
//! fds and credentials those carry), listening TCP sockets and UDP sockets (bound, perhaps
//! connected), and the options of all of them ([`opts`]).
//!
//! Facts are read on a duplicate of the socket taken with `pidfd_getfd` (options, addresses,
//! TCP state, queued messages peeked with `MSG_PEEK` and a peek offset, so nothing is consumed),
//! and, for unix sockets, from a `sock_diag` dump of the process's network namespace (peers,
//! names, socket files, backlogs, shutdown state).
//!
//! Restore injects `socket`/`socketpair`, `setsockopt`, `bind`, `listen`, `connect`, `accept`
//! into the processes; unix sockets are finished in a second pass, [`finish`], once every process
//! of the group has its fds (their queued messages may carry any of them). Not restored yet:
//! datagrams queued on UDP sockets, and established TCP connections, which fail the checkpoint
//! unless the caller asks to close them (they then come back as fresh, unconnected sockets).
mod inet;
mod opts;
mod unix;

use std::collections::HashMap;
use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

use crate::inject::Injector;
use crate::sys::sock;
use crate::{EngineError, Result};
pub use opts::SockOpts;

const TCP_LISTEN: u8 = 10;
const TCP_CLOSE: u8 = 7;
const SOMAXCONN: u64 = 4096;

/// A saved socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SocketState {
    /// A unix socket.
    Unix(Box<unix::UnixSocket>),
    /// A listening TCP socket.
    TcpListen {
        /// AF_INET or AF_INET6.
        family: i32,
        /// Bound address (raw sockaddr).
        addr: Vec<u8>,
        /// Options.
        opts: Box<SockOpts>,
    },
    /// A TCP socket neither listening nor connected (or an established connection the caller
    /// chose to close): restored unconnected, bound again if it was bound to a port.
    TcpFresh {
        /// Family.
        family: i32,
        /// Bound address, if bound to a port.
        addr: Option<Vec<u8>>,
        /// Options.
        opts: Box<SockOpts>,
    },
    /// A UDP socket.
    Udp {
        /// Family.
        family: i32,
        /// Bound address, if bound to a port.
        addr: Option<Vec<u8>>,
        /// Connected peer.
        peer: Option<Vec<u8>>,
        /// Options.
        opts: Box<SockOpts>,
    },
}

/// What saving sockets needs to know about the group.
#[derive(Default)]
pub struct SocketContext {
    /// Unix sockets: the namespace's sock_diag dump, targets saved, fds in flight.
    pub(crate) unix: unix::UnixContext,
    /// Where each socket inode of the group is held: (host pid, fd).
    pub(crate) holders: HashMap<u64, (i32, i32)>,
    /// The processes of the group: host pid -> pid in the group's namespace.
    pub(crate) members: HashMap<i32, i32>,
    /// Close established TCP connections instead of failing.
    pub tcp_close: bool,
    /// Integer options of fresh sockets by (family, type, protocol), read on first need.
    pub(crate) defaults: HashMap<(i32, i32, i32), Option<opts::Defaults>>,
}

/// Reads the options of socket `fd` of `pid` (duplicated into Zap as `dup`), comparing them with
/// a fresh socket of the same kind; TCP-level ones when `tcp`.
pub(crate) fn options(pid: i32, fd: i32, dup: &OwnedFd, family: i32, sock_type: i32, tcp: bool, ctx: &mut SocketContext) -> Result<SockOpts> {
    let protocol = sock::getsockopt_int(dup, libc::SOL_SOCKET, libc::SO_PROTOCOL).unwrap_or(0);
    let defaults = ctx.defaults.entry((family, sock_type, protocol)).or_insert_with(|| opts::fresh_defaults(pid, family, sock_type, protocol));
    opts::opts_of(pid, fd, dup, family, tcp, defaults.as_ref())
}

fn port_of(addr: &[u8]) -> u16 {
    if addr.len() >= 4 {
        u16::from_be_bytes([addr[2], addr[3]])
    } else {
        0
    }
}

/// Saves socket `ino`, duplicated into Zap as `dup`, held by `pid` at `fd`.
pub fn save(pid: i32, fd: i32, ino: u64, dup: &OwnedFd, fctx: &mut crate::files::SaveContext) -> Result<SocketState> {
    let sys = |step: &'static str| move |source| EngineError::Sys { step, pid, source };
    let unsupported = |what: String| EngineError::Proc { pid, detail: format!("fd {fd}: {what}") };
    let family = sock::getsockopt_int(dup, libc::SOL_SOCKET, libc::SO_DOMAIN).map_err(sys("socket family"))?;
    let sock_type = sock::getsockopt_int(dup, libc::SOL_SOCKET, libc::SO_TYPE).map_err(sys("socket type"))?;
    match family {
        libc::AF_UNIX => unix::save(pid, fd, ino, sock_type, dup, fctx),
        libc::AF_INET | libc::AF_INET6 => inet::save(pid, fd, family, sock_type, dup, &mut fctx.sockets),
        other => Err(unsupported(format!("socket family {other}"))),
    }
}

/// Before a group is saved: notes what the messages queued on unix socket `fd` of `pid` carry
/// (see [`unix`]).
pub(crate) fn prescan_inflight(pid: i32, fd: i32, ctx: &mut crate::files::SaveContext) -> Result<()> {
    unix::prescan(pid, fd, ctx)
}

/// What restoring sockets has created so far, for processes restored together.
#[derive(Default)]
pub struct SocketRestore {
    /// Unix sockets created so far, and what waits for [`finish`].
    pub(crate) unix: unix::UnixRestore,
    /// IPv4 addresses to rewrite when binding (a copy restored under another address).
    pub rebind: Vec<([u8; 4], [u8; 4])>,
}

fn put(inj: &mut Injector, bytes: &[u8]) -> Result<u64> {
    let scratch = inj.scratch(bytes.len() as u64 + 4096)?;
    inj.write_mem(scratch, bytes)?;
    Ok(scratch)
}

fn bind(inj: &mut Injector, fd: u64, addr: &[u8], ctx: &SocketRestore) -> Result<()> {
    let mut addr = addr.to_vec();
    if addr.len() >= 8 && u16::from_ne_bytes([addr[0], addr[1]]) == libc::AF_INET as u16 {
        if let Some((_, new)) = ctx.rebind.iter().find(|(old, _)| old[..] == addr[4..8]) {
            addr[4..8].copy_from_slice(new);
        }
    }
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
    if let SocketState::Unix(s) = st {
        return unix::restore(inj, vpid, s, ctx, take);
    }
    match inet::restore(inj, vpid, st, ctx)? {
        Some(fd) => Ok(fd),
        None => unreachable!("every socket kind is unix or inet"),
    }
}

impl SocketRestore {
    /// Keeper fds of sockets left in process `vpid`, to be closed once every process of the group
    /// has its fds and [`finish`] ran.
    pub fn keepers(&self, vpid: i32) -> Vec<u64> {
        self.unix.keepers(vpid)
    }
}

/// The second pass of a restore, once every process of the group (`procs`: vpid and injector of
/// each) has its fds: messages queued on unix sockets are sent again (with the fds and
/// credentials they carried), errors and shutdowns applied, temporary files removed. Then close
/// the keepers.
pub fn finish(procs: &mut [(i32, &mut Injector)], ctx: &mut crate::files::RestoreContext) -> Result<()> {
    unix::finish(procs, ctx)
}
