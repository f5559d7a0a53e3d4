//! Sockets: unix sockets connected inside the group (socketpairs and accepted/connected pairs,
//! with the bytes queued in both directions), listening and unconnected unix sockets, listening
//! TCP sockets and UDP sockets (bound, perhaps connected).
//!
//! Facts are read on a duplicate of the socket taken with `pidfd_getfd` (options, addresses,
//! TCP state, queued data peeked with `MSG_PEEK` and a peek offset, so nothing is consumed),
//! and, for unix sockets, from a `sock_diag` dump of the process's network namespace (peers,
//! names, shutdown state).
//!
//! Restore injects `socket`/`socketpair`, `setsockopt`, `bind`, `listen`, `connect` and `sendto`
//! into the process. A connected unix pair is created by the first of its two ends to be restored;
//! the other end waits in a keeper fd for its owner, as pipe ends do. Not restored yet: connections
//! waiting in a listener's backlog (they are dropped), datagrams queued on UDP sockets, and
//! established TCP connections, which fail the checkpoint unless the caller asks to close them
//! (they then come back as fresh, unconnected sockets).
use std::collections::HashMap;
use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

use crate::inject::Injector;
use crate::sys::sock::{self, UnixDiag};
use crate::{EngineError, Result};

const TCP_LISTEN: u8 = 10;
const TCP_CLOSE: u8 = 7;
const SOMAXCONN: u64 = 4096;

/// Socket options that matter to a server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SockOpts {
    /// SO_REUSEADDR.
    pub reuseaddr: bool,
    /// SO_REUSEPORT.
    pub reuseport: bool,
    /// SO_KEEPALIVE.
    pub keepalive: bool,
    /// TCP_NODELAY.
    pub nodelay: bool,
    /// IPV6_V6ONLY (IPv6 sockets only).
    pub v6only: bool,
}

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
        opts: SockOpts,
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
    /// Close established TCP connections instead of failing.
    pub tcp_close: bool,
}

fn port_of(addr: &[u8]) -> u16 {
    if addr.len() >= 4 {
        u16::from_be_bytes([addr[2], addr[3]])
    } else {
        0
    }
}

fn opts_of(fd: &OwnedFd, family: i32, tcp: bool) -> SockOpts {
    let get = |level, name| sock::getsockopt_int(fd, level, name).map(|v| v != 0).unwrap_or(false);
    SockOpts {
        reuseaddr: get(libc::SOL_SOCKET, libc::SO_REUSEADDR),
        reuseport: get(libc::SOL_SOCKET, libc::SO_REUSEPORT),
        keepalive: get(libc::SOL_SOCKET, libc::SO_KEEPALIVE),
        nodelay: tcp && get(libc::IPPROTO_TCP, libc::TCP_NODELAY),
        v6only: family == libc::AF_INET6 && get(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
    }
}

/// Saves socket `ino`, duplicated into Zap as `dup`, held by `pid` at `fd`.
pub fn save(pid: i32, fd: i32, ino: u64, dup: &OwnedFd, ctx: &mut SocketContext) -> Result<SocketState> {
    let sys = |step: &'static str| move |source| EngineError::Sys { step, pid, source };
    let unsupported = |what: String| EngineError::Proc { pid, detail: format!("fd {fd}: {what}") };
    let family = sock::getsockopt_int(dup, libc::SOL_SOCKET, libc::SO_DOMAIN).map_err(sys("socket family"))?;
    let sock_type = sock::getsockopt_int(dup, libc::SOL_SOCKET, libc::SO_TYPE).map_err(sys("socket type"))?;
    match family {
        libc::AF_UNIX => {
            if ctx.unix.is_none() {
                ctx.unix = Some(sock::unix_sockets(pid).map_err(sys("sock_diag unix sockets"))?);
            }
            let diag = ctx.unix.as_ref().expect("read above").get(&(ino as u32)).cloned().unwrap_or_default();
            if diag.state == TCP_LISTEN {
                let name = diag.name.ok_or_else(|| unsupported("listening unix socket without a name".into()))?;
                return Ok(SocketState::UnixListen { sock_type, name });
            }
            if diag.peer == 0 {
                return Ok(SocketState::UnixUnconnected { sock_type, name: diag.name });
            }
            let peer = u64::from(diag.peer);
            let Some(&(peer_pid, peer_fd)) = ctx.holders.get(&peer) else {
                return Err(unsupported(format!("unix socket connected to a process outside the checkpoint (peer socket {peer})")));
            };
            let queued = if ctx.pairs_done.contains(&peer) {
                (Vec::new(), Vec::new())
            } else {
                let mine = sock::peek_queue(dup).map_err(sys("peek unix socket queue"))?;
                let pidfd = crate::sys::proc::pidfd_open(peer_pid).map_err(sys("pidfd_open peer"))?;
                let peer_dup = crate::sys::proc::pidfd_getfd(&pidfd, peer_fd).map_err(sys("pidfd_getfd peer socket"))?;
                let theirs = sock::peek_queue(&peer_dup).map_err(sys("peek peer socket queue"))?;
                (mine, theirs)
            };
            ctx.pairs_done.insert(ino);
            Ok(SocketState::UnixPair { ino, peer, sock_type, queued, shutdown: diag.shutdown })
        }
        libc::AF_INET | libc::AF_INET6 => {
            let addr = sock::sockaddr(dup, false).map_err(sys("getsockname"))?;
            let bound = (port_of(&addr) != 0).then(|| addr.clone());
            if sock_type == libc::SOCK_STREAM {
                let opts = opts_of(dup, family, true);
                match sock::tcp_state(dup).map_err(sys("TCP_INFO"))? {
                    TCP_LISTEN => Ok(SocketState::TcpListen { family, addr, opts }),
                    TCP_CLOSE => Ok(SocketState::TcpFresh { family, addr: bound, opts }),
                    _ if ctx.tcp_close => Ok(SocketState::TcpFresh { family, addr: None, opts }),
                    state => Err(unsupported(format!(
                        "established TCP connection (state {state}); live TCP connections are not checkpointed yet (close them with --tcp-close)"
                    ))),
                }
            } else if sock_type == libc::SOCK_DGRAM {
                let peer = sock::sockaddr(dup, true).ok();
                Ok(SocketState::Udp { family, addr: bound, peer, opts: opts_of(dup, family, false) })
            } else {
                Err(unsupported(format!("inet socket of type {sock_type}")))
            }
        }
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

fn set_opts(inj: &mut Injector, fd: u64, family: i32, tcp: bool, o: &SockOpts) -> Result<()> {
    let mut set = |level: i32, name: i32, on: bool| -> Result<()> {
        if on {
            let p = put(inj, &1i32.to_ne_bytes())?;
            inj.call("setsockopt", libc::SYS_setsockopt, [fd, level as u64, name as u64, p, 4, 0])?;
        }
        Ok(())
    };
    set(libc::SOL_SOCKET, libc::SO_REUSEADDR, o.reuseaddr)?;
    set(libc::SOL_SOCKET, libc::SO_REUSEPORT, o.reuseport)?;
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, o.keepalive)?;
    set(libc::IPPROTO_TCP, libc::TCP_NODELAY, tcp && o.nodelay)?;
    set(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, family == libc::AF_INET6 && o.v6only)?;
    Ok(())
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

/// Removes the file of a unix socket bound to a path (the original's is still there, and bind
/// needs it gone); abstract names (starting with NUL) have none.
fn unlink_socket_file(inj: &mut Injector, name: &[u8]) -> Result<()> {
    if name.first().is_some_and(|&b| b != 0) {
        let p = inj.put_cstr(name)?;
        let _ = inj.syscall(libc::SYS_unlink, [p, 0, 0, 0, 0, 0]);
    }
    Ok(())
}

fn unix_addr(name: &[u8]) -> Vec<u8> {
    let mut a = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
    a.extend_from_slice(name);
    a
}

fn send_all(inj: &mut Injector, fd: u64, msgs: &[Vec<u8>], what: &str) -> Result<()> {
    for m in msgs {
        let p = put(inj, m)?;
        let n = inj.call("send queued data", libc::SYS_sendto, [fd, p, m.len() as u64, libc::MSG_DONTWAIT as u64, 0, 0])?;
        if n != m.len() as u64 {
            return Err(EngineError::Proc { pid: 0, detail: format!("{what}: requeued {n} of {} bytes", m.len()) });
        }
    }
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
    match st {
        SocketState::UnixPair { ino, peer, sock_type, queued, shutdown } => {
            let fd = if let Some((owner, keeper)) = ctx.parked.get(ino).copied() {
                take(inj, owner, keeper)?
            } else {
                let p = put(inj, &[0u8; 8])?;
                inj.call("socketpair", libc::SYS_socketpair, [libc::AF_UNIX as u64, *sock_type as u64, 0, p, 0, 0])?;
                let b = inj.read_mem(p, 8)?;
                let mine = u64::from(u32::from_ne_bytes(b[0..4].try_into().expect("4")));
                let theirs = u64::from(u32::from_ne_bytes(b[4..8].try_into().expect("4")));
                send_all(inj, theirs, &queued.0, "unix socket")?;
                send_all(inj, mine, &queued.1, "unix socket peer")?;
                let keeper = inj.call("fcntl(F_DUPFD)", libc::SYS_fcntl, [theirs, libc::F_DUPFD_CLOEXEC as u64, 10000, 0, 0, 0])?;
                inj.call("close", libc::SYS_close, [theirs, 0, 0, 0, 0, 0])?;
                ctx.parked.insert(*peer, (vpid, keeper));
                mine
            };
            if *shutdown != 0 {
                // SHUT_RD = 0, SHUT_WR = 1, SHUT_RDWR = 2; the mask has bit 0 for read, 1 for write.
                let how = match shutdown & 3 {
                    1 => libc::SHUT_RD,
                    2 => libc::SHUT_WR,
                    _ => libc::SHUT_RDWR,
                };
                inj.call("shutdown", libc::SYS_shutdown, [fd, how as u64, 0, 0, 0, 0])?;
            }
            Ok(fd)
        }
        SocketState::UnixListen { sock_type, name } => {
            let fd = inj.call("socket(AF_UNIX)", libc::SYS_socket, [libc::AF_UNIX as u64, *sock_type as u64, 0, 0, 0, 0])?;
            unlink_socket_file(inj, name)?;
            bind(inj, fd, &unix_addr(name), ctx)?;
            inj.call("listen", libc::SYS_listen, [fd, SOMAXCONN, 0, 0, 0, 0])?;
            Ok(fd)
        }
        SocketState::UnixUnconnected { sock_type, name } => {
            let fd = inj.call("socket(AF_UNIX)", libc::SYS_socket, [libc::AF_UNIX as u64, *sock_type as u64, 0, 0, 0, 0])?;
            if let Some(name) = name {
                unlink_socket_file(inj, name)?;
                bind(inj, fd, &unix_addr(name), ctx)?;
            }
            Ok(fd)
        }
        SocketState::TcpListen { family, addr, opts } => {
            let fd = inj.call("socket(tcp)", libc::SYS_socket, [*family as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0])?;
            set_opts(inj, fd, *family, true, opts)?;
            bind(inj, fd, addr, ctx).map_err(|e| EngineError::Proc { pid: vpid, detail: format!("rebind listening TCP socket: {e}") })?;
            inj.call("listen", libc::SYS_listen, [fd, SOMAXCONN, 0, 0, 0, 0])?;
            Ok(fd)
        }
        SocketState::TcpFresh { family, addr, opts } => {
            let fd = inj.call("socket(tcp)", libc::SYS_socket, [*family as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0])?;
            set_opts(inj, fd, *family, true, opts)?;
            if let Some(a) = addr {
                bind(inj, fd, a, ctx)?;
            }
            Ok(fd)
        }
        SocketState::Udp { family, addr, peer, opts } => {
            let fd = inj.call("socket(udp)", libc::SYS_socket, [*family as u64, libc::SOCK_DGRAM as u64, 0, 0, 0, 0])?;
            set_opts(inj, fd, *family, false, opts)?;
            if let Some(a) = addr {
                bind(inj, fd, a, ctx)?;
            }
            if let Some(p) = peer {
                let ptr = put(inj, p)?;
                inj.call("connect", libc::SYS_connect, [fd, ptr, p.len() as u64, 0, 0, 0])?;
            }
            Ok(fd)
        }
    }
}
