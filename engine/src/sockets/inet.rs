//! Internet sockets: listening TCP sockets, TCP sockets neither listening nor connected,
//! established and half-closed TCP connections ([`super::tcp`]; or, when the caller chose to
//! close them, fresh unconnected sockets), and UDP sockets (bound, perhaps connected) with the
//! datagrams queued for reading, which come back in order from their saved senders
//! ([`super::packet`]).
use std::os::fd::OwnedFd;

use super::opts::set_opts;
use super::tcp;
use super::{bind, create_as, port_of, put, rewrite, SocketContext, SocketRestore, SocketState, SOMAXCONN, TCP_CLOSE, TCP_LISTEN};
use crate::inject::Injector;
use crate::sys::sock;
use crate::{EngineError, Result};

/// Saves inet socket `ino` (duplicated into Zap as `dup`, of `family` and `sock_type`) held by
/// `pid` at `fd`.
pub(super) fn save(pid: i32, fd: i32, ino: u64, family: i32, sock_type: i32, dup: &OwnedFd, ctx: &mut SocketContext) -> Result<SocketState> {
    let sys = |step: &'static str| move |source| EngineError::Sys { step, pid, source };
    let unsupported = |what: String| EngineError::Proc { pid, detail: format!("fd {fd}: {what}") };
    if sock_type == libc::SOCK_STREAM {
        let protocol = sock::getsockopt_int(dup, libc::SOL_SOCKET, libc::SO_PROTOCOL).unwrap_or(0);
        ctx.ensure_defaults(pid, family, sock_type, protocol);
        save_tcp(pid, fd, ino, (family, protocol), dup, None, ctx)
    } else if sock_type == libc::SOCK_DGRAM {
        let addr = sock::sockaddr(dup, false).map_err(sys("getsockname"))?;
        let bound = (port_of(&addr) != 0).then(|| addr.clone());
        let peer = sock::sockaddr(dup, true).ok();
        let queued = sock::peek_datagrams(dup).map_err(sys("peek queued datagrams"))?;
        let opts = Box::new(super::options(pid, fd, dup, family, sock_type, false, ctx)?);
        Ok(SocketState::Udp { family, addr: bound, peer, opts, queued })
    } else {
        Err(unsupported(format!("inet socket of type {sock_type}")))
    }
}

/// Saves TCP socket `ino` (duplicated into Zap as `dup`, of `family` and `protocol`) held by
/// `pid` at `fd`, in whatever state it is; `known`: what an `inet_diag` dump of its namespace
/// says of it (addresses, owner, TCP_INFO, buffers, some options), asked of the socket only
/// where the dump is silent. `ctx` holds the defaults of its kind already (this runs on several
/// threads at once: [`super::prefetch`]).
pub(super) fn save_tcp(
    pid: i32,
    fd: i32,
    ino: u64,
    (family, protocol): (i32, i32),
    dup: &OwnedFd,
    known: Option<&sock::TcpDiag>,
    ctx: &SocketContext,
) -> Result<SocketState> {
    let sys = |step: &'static str| move |source| EngineError::Sys { step, pid, source };
    let unsupported = |what: String| EngineError::Proc { pid, detail: format!("fd {fd}: {what}") };
    let addr = match known.and_then(|k| k.addrs.as_ref()) {
        Some((local, _)) => local.clone(),
        None => sock::sockaddr(dup, false).map_err(sys("getsockname"))?,
    };
    let bound = (port_of(&addr) != 0).then(|| addr.clone());
    let opts = Box::new(stream_opts(super::options_known(pid, fd, dup, (family, true), (libc::SOCK_STREAM, protocol), known, ctx)?));
    // One TCP_INFO for the state, a listener's queue and a connection's negotiated options.
    let info = match known.filter(|k| k.info.len() >= 104) {
        Some(k) => k.info[..104].to_vec(),
        None => sock::getsockopt_bytes(dup, libc::IPPROTO_TCP, libc::TCP_INFO, 104).map_err(sys("TCP_INFO"))?,
    };
    let st = *info.first().ok_or_else(|| unsupported("TCP_INFO answered nothing".into()))?;
    let fresh = ctx.defaults.get(&(family, libc::SOCK_STREAM, protocol)).and_then(|d| d.as_ref()).and_then(|d| d.tcp.as_ref());
    let tcp = tcp::tcp_opts_of(dup, st, Some(opts.nodelay), known.and_then(|k| k.congestion.as_deref()));
    let tcp = match fresh {
        Some(f) => tcp.beyond(f),
        None => tcp,
    };
    match st {
        TCP_LISTEN => {
            // Connections the kernel accepted and the application has not: no interface
            // queues a connection on a listener again, so they cannot come back. Refused
            // rather than dropped (unless the caller gives connections up).
            // For a listener, tcpi_unacked is its accept queue's length and tcpi_sacked
            // the backlog it was given.
            let word = |at: usize| info.get(at..at + 4).map_or(0, |b| u32::from_ne_bytes(b.try_into().expect("4")));
            let (waiting, backlog) = (word(24), word(28));
            if waiting > 0 && !ctx.tcp_close {
                return Err(unsupported(format!(
                    "listening TCP socket {} has {waiting} connection(s) waiting to be accepted; they cannot be put back in \
                     its backlog on restore (let the application accept them and try again, or give them up with --tcp-close)",
                    tcp::ip_port(&addr)
                )));
            }
            Ok(SocketState::TcpListen { family, addr, opts, tcp, backlog })
        }
        TCP_CLOSE => Ok(SocketState::TcpFresh { family, addr: bound, opts, tcp }),
        _ if ctx.tcp_close => Ok(SocketState::TcpFresh { family, addr: None, opts, tcp }),
        st if !ctx.network_locked && tcp::repairable(st) => {
            let peer = sock::sockaddr(dup, true).unwrap_or_default();
            Err(unsupported(format!(
                "TCP connection {} in state {}: the network is not locked, so it cannot be saved here (or close it with --tcp-close)",
                tcp::describe(&addr, &peer),
                tcp::state_name(st)
            )))
        }
        st => Ok(SocketState::TcpConn(Box::new(tcp::save_conn(pid, fd, ino, (family, &addr), (st, &info), dup, (*opts, tcp, known))?))),
    }
}

/// `o` without the multicast options, which a stream socket cannot have set: an accepted
/// connection inherits them from the segment that opened it (its TTL and incoming interface),
/// so they differ from a fresh socket's, but the kernel refuses to set them on TCP sockets.
fn stream_opts(mut o: super::SockOpts) -> super::SockOpts {
    const IP_MULTICAST: [i32; 3] = [libc::IP_MULTICAST_IF, libc::IP_MULTICAST_TTL, libc::IP_MULTICAST_LOOP];
    const IPV6_MULTICAST: [i32; 3] = [libc::IPV6_MULTICAST_IF, libc::IPV6_MULTICAST_HOPS, libc::IPV6_MULTICAST_LOOP];
    let multicast = |level: i32, name: i32| {
        (level == libc::IPPROTO_IP && IP_MULTICAST.contains(&name)) || (level == libc::IPPROTO_IPV6 && IPV6_MULTICAST.contains(&name))
    };
    o.ints.retain(|&(l, n, _)| !multicast(l, n));
    o.ifindex_opts.retain(|(l, n, _)| !multicast(*l, *n));
    o.multicast_if = None;
    o
}

/// The address datagrams for a socket bound to `addr` are sent to: its own, or loopback for a
/// wildcard address.
fn delivery_addr(addr: &[u8]) -> Vec<u8> {
    let mut a = addr.to_vec();
    let family = u16::from_ne_bytes([a[0], a[1]]);
    if family == libc::AF_INET as u16 && a.len() >= 8 && a[4..8] == [0, 0, 0, 0] {
        a[4..8].copy_from_slice(&[127, 0, 0, 1]);
    } else if family == libc::AF_INET6 as u16 && a.len() >= 24 && a[8..24].iter().all(|&b| b == 0) {
        a[23] = 1;
    }
    a
}

/// Recreates inet socket `st` in the process `inj` drives (`vpid`). `None` when `st` is not an
/// inet socket.
pub(super) fn restore(inj: &mut Injector, vpid: i32, st: &SocketState, ctx: &mut SocketRestore) -> Result<Option<u64>> {
    let fd = match st {
        SocketState::TcpListen { family, addr, opts, tcp, backlog } => {
            let fd = create_as(inj, opts.uid, "socket(tcp)", libc::SYS_socket, [*family as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0])?;
            set_opts(inj, fd, *family, true, opts)?;
            tcp::set_tcp_opts(inj, fd, tcp)?;
            bind(inj, fd, addr, ctx).map_err(|e| EngineError::Proc { pid: vpid, detail: format!("rebind listening TCP socket {}: {e}", tcp::ip_port(&rewrite(addr, ctx))) })?;
            let backlog = if *backlog == 0 { SOMAXCONN } else { u64::from(*backlog) };
            inj.call("listen", libc::SYS_listen, [fd, backlog, 0, 0, 0, 0])?;
            fd
        }
        SocketState::TcpFresh { family, addr, opts, tcp } => {
            let fd = create_as(inj, opts.uid, "socket(tcp)", libc::SYS_socket, [*family as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0])?;
            set_opts(inj, fd, *family, true, opts)?;
            tcp::set_tcp_opts(inj, fd, tcp)?;
            if let Some(a) = addr {
                bind(inj, fd, a, ctx)?;
            }
            fd
        }
        SocketState::TcpConn(c) => super::conns::restore_one(inj, c, ctx)?,
        SocketState::Udp { family, addr, peer, opts, queued } => {
            let fd = create_as(inj, opts.uid, "socket(udp)", libc::SYS_socket, [*family as u64, libc::SOCK_DGRAM as u64, 0, 0, 0, 0])?;
            set_opts(inj, fd, *family, false, opts)?;
            if let Some(a) = addr {
                bind(inj, fd, a, ctx)?;
            }
            if let Some(p) = peer {
                let ptr = put(inj, p)?;
                inj.call("connect", libc::SYS_connect, [fd, ptr, p.len() as u64, 0, 0, 0])?;
            }
            if !queued.is_empty() {
                let Some(a) = addr else {
                    return Err(EngineError::Proc { pid: vpid, detail: "UDP socket with queued datagrams but no port".into() });
                };
                let to = delivery_addr(&rewrite(a, ctx));
                for (data, from) in queued {
                    super::packet::send_udp(inj.tid(), from, &to, data).map_err(|e| EngineError::Proc {
                        pid: vpid,
                        detail: format!("requeue a datagram of {} bytes on UDP socket {}: {e}", data.len(), tcp::describe(&to, from)),
                    })?;
                }
            }
            fd
        }
        _ => return Ok(None),
    };
    Ok(Some(fd))
}
