//! Internet sockets: listening TCP sockets, TCP sockets neither listening nor connected (and
//! established connections the caller chose to close), and UDP sockets (bound, perhaps
//! connected).
use std::os::fd::OwnedFd;

use super::opts::set_opts;
use super::{bind, port_of, put, SocketContext, SocketRestore, SocketState, SOMAXCONN, TCP_CLOSE, TCP_LISTEN};
use crate::inject::Injector;
use crate::sys::sock;
use crate::{EngineError, Result};

/// Saves inet socket (duplicated into Zap as `dup`, of `family` and `sock_type`) held by `pid`
/// at `fd`.
pub(super) fn save(pid: i32, fd: i32, family: i32, sock_type: i32, dup: &OwnedFd, ctx: &mut SocketContext) -> Result<SocketState> {
    let sys = |step: &'static str| move |source| EngineError::Sys { step, pid, source };
    let unsupported = |what: String| EngineError::Proc { pid, detail: format!("fd {fd}: {what}") };
    let addr = sock::sockaddr(dup, false).map_err(sys("getsockname"))?;
    let bound = (port_of(&addr) != 0).then(|| addr.clone());
    if sock_type == libc::SOCK_STREAM {
        let opts = Box::new(super::options(pid, fd, dup, family, sock_type, true, ctx)?);
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
        let opts = Box::new(super::options(pid, fd, dup, family, sock_type, false, ctx)?);
        Ok(SocketState::Udp { family, addr: bound, peer, opts })
    } else {
        Err(unsupported(format!("inet socket of type {sock_type}")))
    }
}

/// Recreates inet socket `st` in the process `inj` drives (`vpid`). `None` when `st` is not an
/// inet socket.
pub(super) fn restore(inj: &mut Injector, vpid: i32, st: &SocketState, ctx: &mut SocketRestore) -> Result<Option<u64>> {
    let fd = match st {
        SocketState::TcpListen { family, addr, opts } => {
            let fd = inj.call("socket(tcp)", libc::SYS_socket, [*family as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0])?;
            set_opts(inj, fd, *family, true, opts)?;
            bind(inj, fd, addr, ctx).map_err(|e| EngineError::Proc { pid: vpid, detail: format!("rebind listening TCP socket: {e}") })?;
            inj.call("listen", libc::SYS_listen, [fd, SOMAXCONN, 0, 0, 0, 0])?;
            fd
        }
        SocketState::TcpFresh { family, addr, opts } => {
            let fd = inj.call("socket(tcp)", libc::SYS_socket, [*family as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0])?;
            set_opts(inj, fd, *family, true, opts)?;
            if let Some(a) = addr {
                bind(inj, fd, a, ctx)?;
            }
            fd
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
            fd
        }
        _ => return Ok(None),
    };
    Ok(Some(fd))
}
