//! Sockets: unix sockets of every type and state ([`unix`]: pairs, listeners with their
//! backlogs, datagram receivers, half-closed sockets, with the messages queued on them and the
//! fds and credentials those carry), TCP sockets (listening, unconnected, and established or
//! half-closed connections saved with the kernel's repair mode: [`tcp`]), UDP sockets (bound,
//! perhaps connected, with the datagrams queued for reading), ICMP, raw IP and packet sockets
//! ([`raw`]), route and uevent netlink sockets ([`netlink`]), and the options of all of them
//! ([`opts`]).
//!
//! Facts are read on a duplicate of the socket taken with `pidfd_getfd` (options, addresses,
//! TCP state, queued messages peeked with `MSG_PEEK` and a peek offset, so nothing is consumed),
//! and, for unix sockets, from a `sock_diag` dump of the process's network namespace (peers,
//! names, socket files, backlogs, shutdown state).
//!
//! Every socket's owner (its inode's uid, the `sk_uid` that `/proc/net/*` shows and netfilter's
//! `meta skuid` matches) is saved with its options; restore makes the socket under that fsuid
//! ([`create_as`]), since the process still has Zap's credentials while its fds come back.
//!
//! Saving a process with many sockets reads its TCP sockets ahead over threads ([`prefetch`]),
//! with one `inet_diag` dump of the namespace ([`crate::sys::sock::tcp_sockets`], read once per
//! namespace) answering what it can for all of them: which sockets are TCP sockets, their state,
//! owner, IPv4 addresses, `TCP_INFO`, buffer sizes, congestion control, TOS, traffic class, mark
//! and IP flags; each socket is asked only the rest. Silencing and probing a pod's connections
//! ([`silence_tcp`], [`probe_tcp`]) take the sockets' kind and state from the same dump.
//!
//! Restore injects `socket`/`socketpair`, `setsockopt`, `bind`, `listen`, `connect`, `accept`
//! into the processes, except for established TCP connections: a child of Zap's in the process's
//! cgroup makes their sockets, Zap rebuilds them over threads and passes them into the process in
//! batches ([`conns`]; options set through either way by [`calls`]); unix pairs, connections and
//! listens are made under the credentials their `SO_PEERCRED` showed, by the process it named
//! when that is another of the group ([`unix`]); unix sockets are finished in a second pass, [`finish`], once every process
//! of the group has its fds (their queued messages may carry any of them). A TCP connection is
//! saved only while the network is locked ([`SocketContext::network_locked`]); with
//! [`SocketContext::tcp_close`] connections are given up instead (they come back as fresh,
//! unconnected sockets). A TCP listener with connections waiting to be accepted fails the
//! checkpoint: nothing can queue them on it again.
mod calls;
pub mod conns;
mod inet;
mod netlink;
mod opts;
mod packet;
mod raw;
pub mod tcp;
mod unix;

use std::collections::HashMap;
use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

use crate::inject::Injector;
use crate::sys::sock;
use crate::{EngineError, Result};
pub use conns::ConnFd;
pub use opts::SockOpts;
pub use tcp::{TcpConn, TcpOpts};

const TCP_LISTEN: u8 = tcp::state::LISTEN;
const TCP_CLOSE: u8 = tcp::state::CLOSE;
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
        /// TCP-level options.
        tcp: TcpOpts,
        /// The backlog given to `listen` (the kernel's `sk_max_ack_backlog`, capped by
        /// `somaxconn`).
        backlog: u32,
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
        /// TCP-level options.
        tcp: TcpOpts,
    },
    /// An established or half-closed TCP connection, with its queues and sequence numbers.
    TcpConn(Box<TcpConn>),
    /// A ping (ICMP) or raw IP socket.
    Raw(Box<raw::RawSocket>),
    /// A packet socket.
    Packet(Box<raw::PacketSocket>),
    /// A netlink socket.
    Netlink(Box<netlink::NetlinkSocket>),
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
        /// Datagrams queued for reading: (payload, sender's raw address).
        queued: Vec<(Vec<u8>, Vec<u8>)>,
    },
}

/// The multicast groups of a network namespace, shared by the threads that read its sockets.
type Groups = std::sync::Arc<Vec<opts::Group>>;

/// What saving sockets needs to know about the group.
#[derive(Default)]
pub struct SocketContext {
    /// Unix sockets: the namespace's sock_diag dump, targets saved, fds in flight.
    pub(crate) unix: unix::UnixContext,
    /// Where each socket inode of the group is held: (host pid, fd).
    pub(crate) holders: HashMap<u64, (i32, i32)>,
    /// The processes of the group: host pid -> pid in the group's namespace.
    pub(crate) members: HashMap<i32, i32>,
    /// Close established TCP connections instead of saving them.
    pub tcp_close: bool,
    /// The network of the processes is locked ([`crate::pod::netlock`]): established TCP
    /// connections may be saved. Without the lock they fail the checkpoint (unless `tcp_close`).
    pub network_locked: bool,
    /// Integer options of fresh sockets by (family, type, protocol), read on first need.
    pub(crate) defaults: HashMap<(i32, i32, i32), Option<opts::Defaults>>,
    /// Multicast groups of the network namespace of a process, by (host pid, family), read on
    /// first need (every inet socket is asked about each).
    pub(crate) groups: std::sync::Mutex<HashMap<(i32, i32), Groups>>,
    /// Sockets saved ahead, over threads ([`prefetch`]), by inode: what [`save`] would answer.
    pub(crate) prefetched: HashMap<u64, Result<SocketState>>,
    /// Signal owners read ahead with them ([`crate::sys::proc::fd_owner`]), by (host pid, fd).
    pub(crate) owners: HashMap<(i32, i32), (i32, i32, i32)>,
    /// The TCP sockets of each network namespace (by the namespace's inode) from one
    /// `inet_diag` dump ([`sock::tcp_sockets`]), by socket inode, for [`prefetch`].
    pub(crate) tcp_diag: HashMap<u64, std::sync::Arc<HashMap<u64, sock::TcpDiag>>>,
    /// [`tcp_diag`] needs only the sockets' kinds and states (not a save).
    pub(crate) states_only: bool,
}

impl SocketContext {
    /// The defaults of a fresh socket of (`family`, `sock_type`, `protocol`), made in the network
    /// namespace of `pid` on first need.
    fn ensure_defaults(&mut self, pid: i32, family: i32, sock_type: i32, protocol: i32) {
        self.defaults.entry((family, sock_type, protocol)).or_insert_with(|| opts::fresh_defaults(pid, family, sock_type, protocol));
    }

    /// The multicast groups of the network namespace of `pid` for `family`.
    fn groups(&self, pid: i32, family: i32) -> Groups {
        let mut cache = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        cache.entry((pid, family)).or_insert_with(|| std::sync::Arc::new(opts::namespace_groups(pid, family))).clone()
    }
}

/// Reads the options of socket `fd` of `pid` (duplicated into Zap as `dup`), comparing them with
/// a fresh socket of the same kind; TCP-level ones when `tcp`.
pub(crate) fn options(pid: i32, fd: i32, dup: &OwnedFd, family: i32, sock_type: i32, tcp: bool, ctx: &mut SocketContext) -> Result<SockOpts> {
    let protocol = sock::getsockopt_int(dup, libc::SOL_SOCKET, libc::SO_PROTOCOL).unwrap_or(0);
    ctx.ensure_defaults(pid, family, sock_type, protocol);
    options_known(pid, fd, dup, (family, tcp), (sock_type, protocol), None, ctx)
}

/// [`options`] for a socket whose kind's defaults `ctx` holds already (see
/// [`SocketContext::ensure_defaults`]); `known`: what an `inet_diag` dump says of it (a TCP
/// socket), asked of the socket only where it is silent.
fn options_known(
    pid: i32,
    fd: i32,
    dup: &OwnedFd,
    (family, tcp): (i32, bool),
    (sock_type, protocol): (i32, i32),
    known: Option<&sock::TcpDiag>,
    ctx: &SocketContext,
) -> Result<SockOpts> {
    let defaults = ctx.defaults.get(&(family, sock_type, protocol)).and_then(Option::as_ref);
    opts::opts_of(pid, fd, dup, (family, tcp), defaults, known, &ctx.groups(pid, family))
}

/// The TCP sockets of the network namespace of `pid` from one `inet_diag` dump (with every
/// extension when `ctx` is a save's; only kinds and states when it is not, see
/// [`for_each_tcp`]), read once per namespace. None when the dump fails (the sockets are then
/// read one call at a time).
fn tcp_diag(pid: i32, ctx: &mut SocketContext) -> Option<std::sync::Arc<HashMap<u64, sock::TcpDiag>>> {
    use std::os::unix::fs::MetadataExt;
    let netns = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?.ino();
    if let Some(d) = ctx.tcp_diag.get(&netns) {
        return Some(d.clone());
    }
    match sock::tcp_sockets(pid, !ctx.states_only) {
        Ok(d) => Some(ctx.tcp_diag.entry(netns).or_insert(std::sync::Arc::new(d)).clone()),
        Err(e) => {
            tracing::debug!(pid, error = %e, "inet_diag dump of the TCP sockets failed: reading them one by one");
            None
        }
    }
}

/// The socket `ino` as [`prefetch`] saved it, if it did (once: it is taken).
pub(crate) fn take_prefetched(ino: u64, fctx: &mut crate::files::SaveContext) -> Option<Result<SocketState>> {
    fctx.sockets.prefetched.remove(&ino)
}

/// The TCP sockets of the namespace of `pid` ([`tcp_diag`]) when `fds` (its fds and their
/// targets) hold [`PREFETCH_MIN`] sockets or more: a process with few sockets is not worth a
/// dump of the whole namespace.
pub(crate) fn tcp_inodes_if_many(pid: i32, fds: &[(i32, String)], ctx: &mut SocketContext) -> Option<std::sync::Arc<HashMap<u64, sock::TcpDiag>>> {
    let sockets = fds.iter().filter(|(_, t)| t.starts_with("socket:[")).count();
    (sockets >= PREFETCH_MIN).then(|| tcp_diag(pid, ctx)).flatten()
}

/// Below this many sockets in a process, [`prefetch`] leaves them to [`save`], one by one.
const PREFETCH_MIN: usize = 16;

/// Saves ahead, over threads (one per core, at most 4), the TCP sockets among `socks` ((fd,
/// inode) of the stopped process `pid`, whose pidfd is `pidfd`), with the signal owner of each:
/// [`save`] and the fd dump then take the results from `ctx` instead of reading the sockets one
/// by one. A process with few sockets is left alone. Other sockets (unix, UDP, raw...) are
/// saved by [`save`] as before: they may need the group's context.
pub(crate) fn prefetch(pid: i32, pidfd: &OwnedFd, socks: &[(i32, u64)], fctx: &mut crate::files::SaveContext) {
    let ctx = &mut fctx.sockets;
    // A socket another process holds too may have been saved with it already.
    let socks: Vec<(i32, u64)> = socks.iter().copied().filter(|(_, ino)| ctx.holders.get(ino).is_none_or(|h| h.0 == pid)).collect();
    if socks.len() < PREFETCH_MIN {
        return;
    }
    for family in [libc::AF_INET, libc::AF_INET6] {
        ctx.ensure_defaults(pid, family, libc::SOCK_STREAM, libc::IPPROTO_TCP);
    }
    let started = std::time::Instant::now();
    // One dump of the namespace's TCP sockets answers most of what each would be asked.
    let diag = tcp_diag(pid, ctx);
    let dumped_ms = started.elapsed().as_secs_f64() * 1e3;
    let diag = diag.as_deref();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4);
    let per = socks.len().div_ceil(threads);
    let shared: &SocketContext = ctx;
    type Found = Vec<(u64, i32, Result<SocketState>, Option<(i32, i32, i32)>)>;
    let found: Vec<Found> = std::thread::scope(|s| {
        let handles: Vec<_> = socks
            .chunks(per)
            .map(|chunk| {
                s.spawn(move || {
                    let mut out = Vec::new();
                    for &(fd, ino) in chunk {
                        // Anything unexpected is left to the one-by-one path, which reports it.
                        // With the dump, a socket it does not list is no TCP socket.
                        let known = diag.map(|d| d.get(&ino));
                        if matches!(known, Some(None)) {
                            continue;
                        }
                        let known = known.flatten();
                        let Ok(dup) = crate::sys::proc::pidfd_getfd(pidfd, fd) else { continue };
                        let family = match known {
                            Some(k) => k.family,
                            None => {
                                let int = |name| sock::getsockopt_int(&dup, libc::SOL_SOCKET, name).ok();
                                let (Some(family), Some(sock_type), Some(protocol)) =
                                    (int(libc::SO_DOMAIN), int(libc::SO_TYPE), int(libc::SO_PROTOCOL))
                                else {
                                    continue;
                                };
                                if !matches!(family, libc::AF_INET | libc::AF_INET6) || sock_type != libc::SOCK_STREAM || protocol != libc::IPPROTO_TCP {
                                    continue;
                                }
                                family
                            }
                        };
                        let st = inet::save_tcp(pid, fd, ino, (family, libc::IPPROTO_TCP), &dup, known, shared);
                        out.push((ino, fd, st, crate::sys::proc::fd_owner(&dup).ok()));
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    tracing::debug!(pid, sockets = socks.len(), threads, dumped_ms, ms = started.elapsed().as_secs_f64() * 1e3, "TCP sockets read ahead");
    for (ino, fd, st, owner) in found.into_iter().flatten() {
        ctx.prefetched.insert(ino, st);
        if let Some(o) = owner {
            ctx.owners.insert((pid, fd), o);
        }
    }
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
    let protocol = sock::getsockopt_int(dup, libc::SOL_SOCKET, libc::SO_PROTOCOL).unwrap_or(0);
    let ctx = &mut fctx.sockets;
    match family {
        libc::AF_UNIX => unix::save(pid, fd, ino, sock_type, dup, fctx),
        libc::AF_INET | libc::AF_INET6 if raw::is_raw(sock_type, protocol) => {
            Ok(SocketState::Raw(Box::new(raw::save(pid, fd, family, sock_type, protocol, dup, ctx)?)))
        }
        libc::AF_INET | libc::AF_INET6 => inet::save(pid, fd, ino, family, sock_type, dup, ctx),
        libc::AF_PACKET => Ok(SocketState::Packet(Box::new(raw::save_packet(pid, fd, sock_type, dup, ctx)?))),
        libc::AF_NETLINK => Ok(SocketState::Netlink(Box::new(netlink::save(pid, fd, ino, sock_type, dup, ctx)?))),
        other => Err(unsupported(format!("socket family {other}"))),
    }
}

/// Before a group is saved: notes what the messages queued on unix socket `fd` (inode `ino`) of
/// `pid` carry
/// (see [`unix`]).
pub(crate) fn prescan_inflight(pid: i32, fd: i32, ino: u64, ctx: &mut crate::files::SaveContext) -> Result<()> {
    unix::prescan(pid, fd, ino, ctx)
}

/// What restoring sockets has created so far, for processes restored together.
#[derive(Default)]
pub struct SocketRestore {
    /// Unix sockets created so far, and what waits for [`finish`].
    pub(crate) unix: unix::UnixRestore,
    /// IPv4 addresses to rewrite when binding (a copy restored under another address).
    pub rebind: Vec<([u8; 4], [u8; 4])>,
    /// The processes restored together, stopped, with their memory and threads in place: pid in
    /// the group -> host pid; with [`SocketRestore::tramp`], a unix socket whose `SO_PEERCRED`
    /// must name another of them is made by that one. Empty for a lone process.
    pub members: HashMap<i32, i32>,
    /// The syscall trampoline the processes of [`SocketRestore::members`] share (0: none).
    pub tramp: u64,
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

/// Makes a socket in the process `inj` drives (the injected syscall `nr` with `args`, named
/// `what`) owned by `uid`: a socket belongs to the fsuid of the thread that makes it, and the
/// process still has Zap's credentials while its fds are restored, so for another uid the call is
/// made under that fsuid (`setfsuid` before, and back after).
fn create_as(inj: &mut Injector, uid: u32, what: &'static str, nr: i64, args: [u64; 6]) -> Result<u64> {
    if uid == 0 {
        return inj.call(what, nr, args);
    }
    // setfsuid answers the previous fsuid, whether it changed it or not: check it took.
    let before = inj.call("setfsuid (socket owner)", libc::SYS_setfsuid, [u64::from(uid), 0, 0, 0, 0, 0])?;
    let now = inj.call("setfsuid (socket owner)", libc::SYS_setfsuid, [u64::from(uid), 0, 0, 0, 0, 0])?;
    let made = if now == u64::from(uid) {
        inj.call(what, nr, args)
    } else {
        Err(EngineError::Proc { pid: calls::SockCalls::pid(inj), detail: format!("{what}: cannot take fsuid {uid} to make the socket owned by it") })
    };
    inj.call("setfsuid (back)", libc::SYS_setfsuid, [before, 0, 0, 0, 0, 0])?;
    made
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
    match st {
        SocketState::Unix(s) => return unix::restore(inj, vpid, s, ctx, take),
        SocketState::Raw(s) => return raw::restore(inj, s, ctx),
        SocketState::Packet(s) => return raw::restore_packet(inj, s),
        SocketState::Netlink(s) => return netlink::restore(inj, s),
        _ => {}
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

/// Every TCP connection (not listening, not closed) held by the processes `pids`: (local, peer)
/// raw addresses, for locking them one by one.
pub fn tcp_connections(pids: &[i32]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    for_each_tcp(pids, |_, _, dup, st| {
        let st = st.map_or_else(|| sock::tcp_state(dup), Ok)?;
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
    for_each_tcp(pids, |pid, fd, dup, st| {
        tcp::silence(dup, st).map_err(|e| std::io::Error::other(format!("pid {pid} fd {fd}: {e}")))?;
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
    for_each_tcp(pids, |_, _, dup, st| {
        if tcp::repairable(st.map_or_else(|| sock::tcp_state(dup), Ok)?) {
            tcp::probe(dup)?;
            n += 1;
        }
        Ok(())
    })?;
    Ok(n)
}

/// Calls `f(pid, fd, duplicate, state)` for every TCP socket held by `pids` (each socket once),
/// with its TCP state when an `inet_diag` dump of its namespace gave it (the processes are
/// stopped: the dump, one per namespace, tells which sockets are TCP sockets and their state,
/// instead of three calls per socket).
fn for_each_tcp(pids: &[i32], mut f: impl FnMut(i32, i32, &OwnedFd, Option<u8>) -> std::io::Result<()>) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    let mut dumps = SocketContext { states_only: true, ..Default::default() };
    for &pid in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        let Ok(pidfd) = crate::sys::proc::pidfd_open(pid) else { continue };
        let diag = tcp_diag(pid, &mut dumps);
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
            let known = diag.as_deref().map(|d| d.get(&ino).map(|k| k.state));
            if matches!(known, Some(None)) {
                continue;
            }
            let dup = crate::sys::proc::pidfd_getfd(&pidfd, fd).map_err(|source| EngineError::Sys { step: "pidfd_getfd socket", pid, source })?;
            let state = match known {
                Some(state) => state,
                None => {
                    let family = sock::getsockopt_int(&dup, libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap_or(0);
                    let proto = sock::getsockopt_int(&dup, libc::SOL_SOCKET, libc::SO_PROTOCOL).unwrap_or(0);
                    if !matches!(family, libc::AF_INET | libc::AF_INET6) || proto != libc::IPPROTO_TCP {
                        continue;
                    }
                    None
                }
            };
            f(pid, fd, &dup, state).map_err(|source| EngineError::Sys { step: "TCP socket", pid, source })?;
        }
    }
    Ok(())
}
