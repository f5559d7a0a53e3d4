//! Unix sockets: connected pairs whose two ends are in the group (socketpairs and
//! accepted/connected pairs, with the messages queued in both directions), listening sockets and
//! unconnected ones, bound or not. Peers, names and shutdown state come from a `sock_diag` dump of
//! the network namespace.
use std::os::fd::OwnedFd;

use super::{bind, put, SocketContext, SocketRestore, SocketState, TCP_LISTEN, SOMAXCONN};
use crate::inject::Injector;
use crate::sys::sock;
use crate::{EngineError, Result};

/// Saves unix socket `ino` (duplicated into Zap as `dup`, of type `sock_type`) held by `pid` at `fd`.
pub(super) fn save(pid: i32, fd: i32, ino: u64, sock_type: i32, dup: &OwnedFd, ctx: &mut SocketContext) -> Result<SocketState> {
    let sys = |step: &'static str| move |source| EngineError::Sys { step, pid, source };
    let unsupported = |what: String| EngineError::Proc { pid, detail: format!("fd {fd}: {what}") };
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

/// Recreates unix socket `st` in the process `inj` drives (`vpid`); `take` takes a keeper fd of
/// another process. `None` when `st` is not a unix socket.
pub(super) fn restore(
    inj: &mut Injector,
    vpid: i32,
    st: &SocketState,
    ctx: &mut SocketRestore,
    take: &mut dyn FnMut(&mut Injector, i32, u64) -> Result<u64>,
) -> Result<Option<u64>> {
    let fd = match st {
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
            fd
        }
        SocketState::UnixListen { sock_type, name } => {
            let fd = inj.call("socket(AF_UNIX)", libc::SYS_socket, [libc::AF_UNIX as u64, *sock_type as u64, 0, 0, 0, 0])?;
            unlink_socket_file(inj, name)?;
            bind(inj, fd, &unix_addr(name), ctx)?;
            inj.call("listen", libc::SYS_listen, [fd, SOMAXCONN, 0, 0, 0, 0])?;
            fd
        }
        SocketState::UnixUnconnected { sock_type, name } => {
            let fd = inj.call("socket(AF_UNIX)", libc::SYS_socket, [libc::AF_UNIX as u64, *sock_type as u64, 0, 0, 0, 0])?;
            if let Some(name) = name {
                unlink_socket_file(inj, name)?;
                bind(inj, fd, &unix_addr(name), ctx)?;
            }
            fd
        }
        _ => return Ok(None),
    };
    Ok(Some(fd))
}
