//! Unix sockets of every type (stream, datagram, seqpacket) and state: unconnected (bound or
//! not), listening (with its backlog limit), connected to another socket of the group (both ways,
//! or one way: a datagram client of a receiver), waiting in a listener's backlog (connected but
//! not yet accepted), or left by a peer that was closed (half-closed). Peers, names, backlogs,
//! shutdown state and socket files come from a `sock_diag` dump of the network namespace.
//!
//! **Names.** An abstract name (autobind's included) is bound again as it was. A path name is
//! bound again where its socket file is (an absolute path, or a relative one in the directory it
//! was relative to, found by matching the file's inode with sock_diag's), with the file's mode
//! and owner; when the file is gone (deleted, or replaced), the socket is bound under the same
//! name in a temporary directory that is removed afterwards, so the name comes back and no file
//! does. A socket accepted from a listener of the group is recreated by connecting to that
//! listener and accepting, so both ends carry the names they had.
//!
//! **Messages in flight.** Everything queued for reading on a socket is peeked without being
//! consumed ([`crate::sys::sock::peek_messages`]): datagram and seqpacket boundaries, each
//! sender's address and credentials (its pid in the pod), and the fds passed with `SCM_RIGHTS`,
//! each described with the files module (the same open file description as an fd of the group
//! is recorded as such). On restore the messages are sent again, in order, once every process
//! of the group has its fds ([`finish`]): by the socket's peer, or, for an unconnected receiver,
//! by the socket of the group bound to the sender's address (a temporary socket bound to it when
//! there is none), with `SCM_CREDENTIALS` naming the original sender and `SCM_RIGHTS` carrying
//! the recreated fds.
//!
//! **Credentials.** What `SO_PEERCRED` showed on each socket (and, for a pair, on its peer) is
//! saved with the pid mapped into the group ([`PeerCred`]); restore makes the pair, the connect
//! and the listen under those effective ids, in the process that pid names when it is another
//! process of the group (the kernel records the calling thread's ids and process).
//!
//! Refused, naming the pid, fd and why: a peer outside the checkpoint; a connection waiting in a
//! backlog that was written to before it was accepted, or whose client is not in the
//! checkpoint; a message sent by a process that is no longer there or is outside the pod;
//! out-of-band data pending on a stream; an fd in flight that the files module cannot save.
mod restore;

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};

use serde::{Deserialize, Serialize};

pub(crate) use restore::{finish, restore, UnixRestore};
use super::opts::SockOpts;
use super::{SocketContext, TCP_LISTEN};
use crate::files::{FdState, SaveContext};
use crate::sys::sock::{self, UnixDiag};
use crate::{EngineError, Result};

const TCP_ESTABLISHED: u8 = 1;

/// A saved unix socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixSocket {
    /// Its inode (its identity within the checkpoint).
    pub ino: u64,
    /// SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET.
    pub sock_type: i32,
    /// Its bound name.
    pub name: Option<UnixName>,
    /// What it is connected to.
    pub conn: UnixConn,
    /// Shutdown mask (1 = read, 2 = write).
    pub shutdown: u8,
    /// Messages waiting to be read on it, oldest first.
    pub queue: Vec<UnixMsg>,
    /// Options.
    pub opts: SockOpts,
    /// What `SO_PEERCRED` showed on it (a pair's maker, the process that connected to this
    /// accepted end, a listener's or its clients' listener's process as it called `listen`);
    /// None when it showed no process (unconnected). Absent from images before version 12.
    #[serde(deserialize_with = "crate::blob::absent_in_older")]
    pub peercred: Option<PeerCred>,
    /// For a connected pair: what `SO_PEERCRED` showed on its peer.
    #[serde(deserialize_with = "crate::blob::absent_in_older")]
    pub peer_peercred: Option<PeerCred>,
}

/// Credentials a unix socket's `SO_PEERCRED` shows: those of the process that made the pair,
/// connected, or listened, as they were then.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCred {
    /// That process's pid in the group's PID namespace; 0 when it is not in the checkpoint (it
    /// exited, or is outside).
    pub pid: i32,
    /// Its effective uid then.
    pub uid: u32,
    /// Its effective gid then.
    pub gid: u32,
}

/// What `SO_PEERCRED` shows on `dup`, with the pid mapped into the group's namespace.
fn peercred_of(dup: &OwnedFd, ctx: &SocketContext) -> Option<PeerCred> {
    let (pid, uid, gid) = sock::peercred(dup).ok()?;
    // No process: an unconnected socket (the kernel answers pid 0 and the overflow ids).
    if pid == 0 {
        return None;
    }
    Some(PeerCred { pid: member_vpid(pid, ctx).unwrap_or(0), uid, gid })
}
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixName {
    /// The name as bound: an abstract name starts with NUL; a path has no trailing NUL.
    pub raw: Vec<u8>,
    /// Its socket file.
    pub file: NameFile,
}

/// Where the socket file of a name is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NameFile {
    /// An abstract name: no file.
    Abstract,
    /// The file is where the name leads: for a relative name, in directory `dir`.
    At {
        /// The directory a relative name is relative to.
        dir: Option<String>,
        /// Permission bits of the file.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
    /// The file is gone (deleted or replaced): the name comes back without it.
    Gone,
}

/// What a unix socket is connected to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnixConn {
    /// Nothing.
    Unconnected,
    /// Listening, with this backlog limit.
    Listen {
        /// The `listen` backlog.
        backlog: u32,
    },
    /// Connected both ways to `peer`, another socket of the group.
    Pair {
        /// The peer's inode.
        peer: u64,
        /// The peer's name.
        peer_name: Option<UnixName>,
        /// The listener of the group one end was accepted from (its state without messages),
        /// through which the pair is recreated.
        listener: Option<Box<UnixSocket>>,
    },
    /// A datagram socket connected one way to a receiver of the group (its state without
    /// messages).
    To {
        /// The receiver.
        peer: Box<UnixSocket>,
    },
    /// A client whose connection waits in the backlog of a listener of the group (its state
    /// without messages).
    Pending {
        /// The listener.
        listener: Box<UnixSocket>,
    },
    /// Its peer was closed: reads give what is queued, then end of file; with `reset`, the peer
    /// left unread data behind (the socket has ECONNRESET pending).
    PeerGone {
        /// ECONNRESET pending.
        reset: bool,
    },
}

/// A message queued on a unix socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixMsg {
    /// Its bytes.
    pub data: Vec<u8>,
    /// The fds passed with it.
    pub fds: Vec<FlightFd>,
    /// The sender's credentials: (pid in the group's namespace, uid, gid).
    pub creds: Option<(i32, u32, u32)>,
    /// The sender's bound name (datagrams), if it had one.
    pub from: Option<Vec<u8>>,
}

/// An fd passed in a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FlightFd {
    /// Described here for the first time (`id` numbers it within the checkpoint).
    New {
        /// Its number.
        id: u32,
        /// What it is.
        fd: Box<FdState>,
    },
    /// The same open file description as the fd in flight numbered `id`.
    Again {
        /// That number.
        id: u32,
    },
}

/// What saving unix sockets keeps across the group.
#[derive(Default)]
pub struct UnixContext {
    /// Unix sockets of the network namespace (sock_diag), by inode, read on first need.
    pub(crate) diag: Option<HashMap<u32, UnixDiag>>,
    /// States of listeners and receivers saved as targets of other sockets (without messages).
    copies: HashMap<u64, UnixSocket>,
    /// Fds in flight saved so far: (Zap's copy, its number).
    flight: Vec<(OwnedFd, u32)>,
    /// Queues peeked before saving (to know the sockets and pipes their messages hold), by
    /// socket inode, used when the socket is saved: a zero-length datagram peeked once is
    /// skipped by later peeks.
    peeked: HashMap<u64, Vec<sock::Peeked>>,
}

fn strip_nuls(raw: &[u8]) -> &[u8] {
    let end = raw.iter().rposition(|&b| b != 0).map(|i| i + 1).unwrap_or(0);
    &raw[..end]
}

/// A name as compared and bound: an abstract name as it is, a path without trailing NULs.
fn name_bytes(raw: &[u8]) -> Vec<u8> {
    if raw.first() == Some(&0) {
        raw.to_vec()
    } else {
        strip_nuls(raw).to_vec()
    }
}

/// Where the socket file of `raw` (a name of socket `dup` of `pid`, whose file sock_diag gave as
/// `vfs`) is: the kernel opens the file itself (SIOCUNIXFILE), which tells where a relative name
/// led however the process moved since, and whether the file was deleted; it is checked against
/// the process's view of the file system.
fn name_of(pid: i32, dup: Option<&OwnedFd>, raw: &[u8], vfs: Option<(u32, u32)>) -> UnixName {
    if raw.first() == Some(&0) {
        return UnixName { raw: raw.to_vec(), file: NameFile::Abstract };
    }
    let path = String::from_utf8_lossy(strip_nuls(raw)).into_owned();
    let relative = !path.starts_with('/');
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let matches = |full: &str| match (std::fs::symlink_metadata(format!("/proc/{pid}/root{full}")), vfs) {
        (Ok(m), Some((ino, dev))) => {
            let same = m.file_type().is_socket() && m.ino() == u64::from(ino) && libc::major(m.dev()) == dev >> 20 && libc::minor(m.dev()) == dev & 0xfffff;
            same.then(|| (m.mode() & 0o7777, m.uid(), m.gid()))
        }
        _ => None,
    };
    // Where the kernel says the file is.
    let at = dup.and_then(|d| sock::unix_file(d).ok()).filter(|p| !p.ends_with(" (deleted)"));
    let found = match at {
        Some(full) if !relative && full == path => matches(&full).map(|m| (None, m)),
        Some(full) if relative => full
            .strip_suffix(&path)
            .filter(|d| d.ends_with('/'))
            .map(|d| d.trim_end_matches('/').to_string())
            .and_then(|d| matches(&full).map(|m| (Some(if d.is_empty() { "/".to_string() } else { d }), m))),
        Some(_) => None,
        // No answer from the kernel: look where the name leads now.
        None if !relative => matches(&path).map(|m| (None, m)),
        None => std::fs::read_link(format!("/proc/{pid}/cwd"))
            .ok()
            .map(|c| c.to_string_lossy().into_owned())
            .and_then(|cwd| matches(&format!("{}/{path}", cwd.trim_end_matches('/'))).map(|m| (Some(cwd), m))),
    };
    let file = match found {
        Some((dir, (mode, uid, gid))) => NameFile::At { dir, mode, uid, gid },
        None => NameFile::Gone,
    };
    UnixName { raw: strip_nuls(raw).to_vec(), file }
}

fn diag_of(ctx: &mut SocketContext, pid: i32, ino: u64) -> Result<UnixDiag> {
    if ctx.unix.diag.is_none() {
        ctx.unix.diag = Some(sock::unix_sockets(pid).map_err(|source| EngineError::Sys { step: "sock_diag unix sockets", pid, source })?);
    }
    Ok(ctx.unix.diag.as_ref().expect("read above").get(&(ino as u32)).cloned().unwrap_or_default())
}

/// The state of socket `ino` held by a process of the group, without its messages: the target
/// of another socket (a listener, a datagram receiver), saved from its holder.
fn target(ino: u64, ctx: &mut SocketContext, what: &str, pid: i32, fd: i32) -> Result<UnixSocket> {
    if let Some(s) = ctx.unix.copies.get(&ino) {
        return Ok(s.clone());
    }
    let Some(&(hpid, hfd)) = ctx.holders.get(&ino) else {
        return Err(EngineError::Proc { pid, detail: format!("fd {fd}: unix socket connected to {what} {ino}, which no process of the checkpoint holds") });
    };
    let pidfd = crate::sys::proc::pidfd_open(hpid).map_err(|source| EngineError::Sys { step: "pidfd_open", pid: hpid, source })?;
    let dup = crate::sys::proc::pidfd_getfd(&pidfd, hfd).map_err(|source| EngineError::Sys { step: "pidfd_getfd unix socket", pid: hpid, source })?;
    let sock_type = sock::getsockopt_int(&dup, libc::SOL_SOCKET, libc::SO_TYPE).map_err(|source| EngineError::Sys { step: "socket type", pid: hpid, source })?;
    let d = diag_of(ctx, hpid, ino)?;
    let name = d.name.as_deref().map(|raw| name_of(hpid, Some(&dup), raw, d.vfs));
    let conn = if d.state == TCP_LISTEN { UnixConn::Listen { backlog: d.rqlen.1 } } else { UnixConn::Unconnected };
    let opts = super::options(hpid, hfd, &dup, libc::AF_UNIX, sock_type, false, ctx)?;
    let peercred = peercred_of(&dup, ctx);
    let s = UnixSocket { ino, sock_type, name, conn, shutdown: d.shutdown, queue: Vec::new(), opts, peercred, peer_peercred: None };
    ctx.unix.copies.insert(ino, s.clone());
    Ok(s)
}

/// Host pid -> pid in the group's namespace, for the members of the group.
fn member_vpid(host: i32, ctx: &SocketContext) -> Option<i32> {
    ctx.members.get(&host).copied()
}

/// Saves unix socket `ino` (duplicated into Zap as `dup`, of type `sock_type`) held by `pid` at
/// `fd`.
pub(super) fn save(pid: i32, fd: i32, ino: u64, sock_type: i32, dup: &OwnedFd, fctx: &mut SaveContext) -> Result<super::SocketState> {
    let unsupported = |what: String| EngineError::Proc { pid, detail: format!("fd {fd}: {what}") };
    let ctx = &mut fctx.sockets;
    let d = diag_of(ctx, pid, ino)?;
    let name = d.name.as_deref().map(|raw| name_of(pid, Some(dup), raw, d.vfs));
    // The listener of the group a connected socket was accepted from shares its name.
    let listener_named = |ctx: &SocketContext, raw: &[u8]| -> Option<u64> {
        ctx.unix.diag.as_ref()?.iter().find_map(|(i, l)| {
            let same = l.name.as_deref().map(name_bytes) == Some(name_bytes(raw));
            (l.state == TCP_LISTEN && i32::from(l.sock_type) == sock_type && same && ctx.holders.contains_key(&u64::from(*i))).then_some(u64::from(*i))
        })
    };
    let mut peer_peercred = None;
    let conn = if d.state == TCP_LISTEN {
        for &client in &d.icons {
            if !ctx.holders.contains_key(&u64::from(client)) {
                return Err(unsupported(format!(
                    "listening unix socket has a connection waiting to be accepted from socket {client}, which no process of the checkpoint holds (closed, or outside the pod)"
                )));
            }
        }
        UnixConn::Listen { backlog: d.rqlen.1 }
    } else if d.peer != 0 {
        let peer = u64::from(d.peer);
        if !ctx.holders.contains_key(&peer) {
            return Err(unsupported(format!("unix socket connected to a process outside the checkpoint (peer socket {peer})")));
        }
        let pd = diag_of(ctx, pid, peer)?;
        if u64::from(pd.peer) == ino {
            let &(ppid, pfd) = ctx.holders.get(&peer).expect("checked");
            let pdup = crate::sys::proc::pidfd_open(ppid).and_then(|p| crate::sys::proc::pidfd_getfd(&p, pfd)).ok();
            let peer_name = pd.name.as_deref().map(|raw| name_of(ppid, pdup.as_ref(), raw, pd.vfs));
            peer_peercred = pdup.as_ref().and_then(|p| peercred_of(p, ctx));
            let via = [&name, &peer_name].into_iter().flatten().find_map(|n| listener_named(ctx, &n.raw));
            let listener = match via {
                Some(l) if sock_type != libc::SOCK_DGRAM => Some(Box::new(target(l, ctx, "listener", pid, fd)?)),
                _ => None,
            };
            UnixConn::Pair { peer, peer_name, listener }
        } else {
            UnixConn::To { peer: Box::new(target(peer, ctx, "receiver", pid, fd)?) }
        }
    } else if d.has_peer {
        // A peer of inode 0: a connection not yet accepted (its other end has no file yet), or
        // a peer that was closed. (A datagram receiver that others connected to is marked
        // established too, but has no peer.)
        let waiting = ctx.unix.diag.as_ref().and_then(|m| m.iter().find(|(_, l)| l.icons.contains(&(ino as u32))).map(|(i, _)| u64::from(*i)));
        match waiting {
            Some(l) => {
                if d.rqlen.1 > 0 {
                    return Err(unsupported(format!(
                        "unix connection waiting in the backlog of listener {l} has {} bytes written before it was accepted; they cannot be read without accepting it",
                        d.rqlen.1
                    )));
                }
                UnixConn::Pending { listener: Box::new(target(l, ctx, "listener", pid, fd)?) }
            }
            // A closed stream peer shut this end down both ways; a stream whose peer is neither
            // that nor in a backlog of the group waits in the backlog of a listener elsewhere.
            None if sock_type == libc::SOCK_DGRAM || d.shutdown == 3 => UnixConn::PeerGone { reset: sock::has_pending_error(dup) },
            None => {
                return Err(unsupported(
                    "unix socket connected to a process outside the checkpoint (peer socket not yet accepted by its listener)".into(),
                ))
            }
        }
    } else {
        UnixConn::Unconnected
    };
    // Streams and seqpackets have a queue only once connected.
    let has_queue = sock_type == libc::SOCK_DGRAM || d.state == TCP_ESTABLISHED;
    let queue = if has_queue { save_queue(pid, fd, ino, sock_type, dup, fctx)? } else { Vec::new() };
    let opts = super::options(pid, fd, dup, libc::AF_UNIX, sock_type, false, &mut fctx.sockets)?;
    let peercred = peercred_of(dup, &fctx.sockets);
    Ok(super::SocketState::Unix(Box::new(UnixSocket { ino, sock_type, name, conn, shutdown: d.shutdown, queue, opts, peercred, peer_peercred })))
}

/// The messages queued on `dup` (fd `fd` of `pid`), with their fds described.
fn save_queue(pid: i32, fd: i32, ino: u64, sock_type: i32, dup: &OwnedFd, fctx: &mut SaveContext) -> Result<Vec<UnixMsg>> {
    let unsupported = |what: String| EngineError::Proc { pid, detail: format!("fd {fd}: {what}") };
    let stream = sock_type == libc::SOCK_STREAM;
    if !stream && sock::has_pending_error(dup) {
        // A datagram peek takes a pending error first; with nothing queued there is nothing to
        // peek.
        if sock::inq(dup).unwrap_or(1) != 0 {
            return Err(unsupported("unix datagram socket has messages queued and an error pending, which peeking would consume".into()));
        }
        return Ok(Vec::new());
    }
    let peeked = match fctx.sockets.unix.peeked.remove(&ino) {
        Some(p) => p,
        None => sock::peek_messages(dup, stream).map_err(|source| EngineError::Sys { step: "peek unix socket queue", pid, source })?,
    };
    if stream {
        // Out-of-band data is skipped by peeks: the queue would come back without it.
        let queued: usize = peeked.iter().map(|m| m.data.len()).sum();
        if let Ok(inq) = sock::inq(dup) {
            if inq as usize != queued {
                return Err(unsupported(format!("unix stream socket has out-of-band data pending ({inq} bytes queued, {queued} readable in band)")));
            }
        }
    }
    let mut out = Vec::with_capacity(peeked.len());
    for (i, m) in peeked.into_iter().enumerate() {
        let creds = match m.creds {
            None => None,
            // No credentials were attached (neither end asked for them when it was sent).
            Some((0, 65534, 65534)) => None,
            Some((host, uid, gid)) => match member_vpid(host, &fctx.sockets) {
                Some(v) => Some((v, uid, gid)),
                None => {
                    return Err(unsupported(format!(
                        "message {i} queued on the unix socket was sent by pid {host}, which is not in the checkpoint (exited, or outside the pod); its credentials cannot be restored"
                    )))
                }
            },
        };
        let from = (m.from.len() > 2).then(|| name_bytes(&m.from[2..]));
        let mut fds = Vec::with_capacity(m.fds.len());
        for (k, f) in m.fds.into_iter().enumerate() {
            fds.push(flight_fd(f, fctx).map_err(|e| unsupported(format!("fd {k} passed in message {i} queued on the unix socket: {e}")))?);
        }
        out.push(UnixMsg { data: m.data, fds, creds, from });
    }
    Ok(out)
}

/// Describes an fd in flight (Zap's copy `f`): the same description as one saved in flight
/// before, or a new one, described by the files module.
fn flight_fd(f: OwnedFd, fctx: &mut SaveContext) -> Result<FlightFd> {
    let me = std::process::id() as i32;
    for (g, id) in &fctx.sockets.unix.flight {
        if crate::sys::proc::same_file(me, g.as_raw_fd(), me, f.as_raw_fd()).unwrap_or(false) {
            return Ok(FlightFd::Again { id: *id });
        }
    }
    let st = crate::files::save_inflight(&f, fctx)?;
    let id = fctx.sockets.unix.flight.len() as u32;
    fctx.sockets.unix.flight.push((f, id));
    Ok(FlightFd::New { id, fd: Box::new(st) })
}

/// Before a group is saved: notes the sockets and pipe ends passed in messages queued on unix
/// socket `fd` (inode `ino`) of `pid` as held by the group (a peer or pipe end that only a
/// message holds is then saved, not refused); the messages are kept for when the socket is saved.
pub(crate) fn prescan(pid: i32, fd: i32, ino: u64, fctx: &mut SaveContext) -> Result<()> {
    let pidfd = crate::sys::proc::pidfd_open(pid).map_err(|source| EngineError::Sys { step: "pidfd_open", pid, source })?;
    let dup = crate::sys::proc::pidfd_getfd(&pidfd, fd).map_err(|source| EngineError::Sys { step: "pidfd_getfd socket", pid, source })?;
    let sock_type = sock::getsockopt_int(&dup, libc::SOL_SOCKET, libc::SO_TYPE).map_err(|source| EngineError::Sys { step: "socket type", pid, source })?;
    // A listener's count is of fds sent on connections not yet accepted (refused when saved); a
    // datagram peek would take a pending error (also refused when saved).
    let listening = sock::getsockopt_int(&dup, libc::SOL_SOCKET, libc::SO_ACCEPTCONN).unwrap_or(0) != 0;
    if listening || (sock_type != libc::SOCK_STREAM && sock::has_pending_error(&dup)) {
        return Ok(());
    }
    let peeked = sock::peek_messages(&dup, sock_type == libc::SOCK_STREAM).map_err(|source| EngineError::Sys { step: "peek unix socket queue", pid, source })?;
    let me = std::process::id() as i32;
    for m in &peeked {
        for f in &m.fds {
            let target = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
            crate::files::note_inflight(me, f.as_raw_fd(), &target, fctx)?;
        }
    }
    fctx.sockets.unix.peeked.insert(ino, peeked);
    Ok(())
}
