//! TCP: established and half-closed connections saved and restored with the kernel's repair mode,
//! and the TCP-level options of every TCP socket (listening, unconnected or connected); those
//! equal to a fresh socket's of the namespace (the kernel's values, which getsockopt answers for
//! options never set) are saved as unset ([`TcpOpts::beyond`]) and not set on restore.
//!
//! ## Saving a connection ([`save_conn`])
//! The pod is stopped and its network locked ([`crate::pod::netlock`]): no segment reaches or
//! leaves the connection while it is read. On Zap's duplicate of the socket (`pidfd_getfd`), repair
//! mode is turned on (`TCP_REPAIR`); then, per queue (`TCP_REPAIR_QUEUE`), the sequence number of
//! its end (`TCP_QUEUE_SEQ`) and its bytes (a `MSG_PEEK` in repair mode reads the whole send or
//! receive queue without consuming it); `SIOCOUTQNSD` tells the bytes of the send queue not yet
//! sent from those sent and not acknowledged. A send queue the `inet_diag` dump (or `SIOCOUTQ`)
//! shows empty is neither counted nor peeked. Then the options negotiated at the handshake
//! (`TCP_INFO`: MSS, window scaling, SACK, timestamps), the timestamp clock (`TCP_TIMESTAMP`,
//! which includes the connection's offset), the windows (`TCP_REPAIR_WINDOW`), buffer sizes and
//! the options the application set. Repair mode is left without a window probe
//! (`TCP_REPAIR_OFF_NO_WP`), and `SO_REUSEADDR` (which repair mode clears) is set back, so a
//! pod that runs on has its socket as it was.
//!
//! A FIN already sent or received counts in the sequence numbers: a connection whose peer closed
//! (CLOSE_WAIT, LAST_ACK, CLOSING) has `rcv_nxt` one past the last byte, one whose application
//! shut down writing (FIN_WAIT1, FIN_WAIT2, LAST_ACK, CLOSING) has `write_seq` one past it. The
//! saved sequence numbers are those of the first queued byte, the FIN left out.
//!
//! ## Restoring ([`restore_conn`])
//! On a fresh socket the process made (an injected `socket()`, [`super::conns`]), by Zap on its
//! duplicate of it: the socket options ([`super::opts`]), repair on, the two
//! queue sequence numbers, `bind` and
//! `connect` (in repair mode `connect` only sets the connection up, nothing is sent), the
//! handshake options (`TCP_REPAIR_OPTIONS`) and the timestamp (so the peer sees the same clock
//! even on a host whose clock differs), the receive queue and the sent part of the send queue
//! (written in repair mode they go straight into the queues, as received and as sent), the
//! windows, a FIN of ours again with `shutdown(SHUT_WR)`, the peer's FIN as a segment from the
//! peer (a raw packet Zap sends in the pod's namespace, marked so the network lock lets it
//! through), repair off, `SO_REUSEADDR` again (repair mode clears it), the TCP-level options,
//! then the bytes not yet sent (a plain `send`), and the buffer sizes and their locks. The network of a pod being restored is locked
//! until the whole pod is: what the restored sockets send meanwhile is dropped, and the peers'
//! retransmissions bring everything in step once it opens.
//!
//! A FIN_WAIT2 connection comes back in FIN_WAIT1 until the peer acknowledges our FIN again
//! (its first retransmission). A connection whose local address changed (a copy of a pod
//! restored under another address) cannot go on: it is restored closed with a pending
//! `ECONNABORTED` (repair mode's silent abort), so the application sees the error on its next
//! call and nothing reaches the original's peer.
use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

use super::calls::{Local, SockCalls};
use super::opts::{set_opts, SockOpts};
use crate::sys::sock;
use crate::{EngineError, Result};

const TCP_REPAIR: i32 = 19;
const TCP_REPAIR_QUEUE: i32 = 20;
const TCP_QUEUE_SEQ: i32 = 21;
const TCP_REPAIR_OPTIONS: i32 = 22;
const TCP_TIMESTAMP: i32 = 24;
const TCP_REPAIR_WINDOW: i32 = 29;
const TCP_RECV_QUEUE: i32 = 1;
const TCP_SEND_QUEUE: i32 = 2;
const TCP_REPAIR_ON: i32 = 1;
const TCP_REPAIR_OFF: i32 = 0;
const TCP_REPAIR_OFF_NO_WP: i32 = -1;
const TCPOPT_MSS: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;
const SIOCINQ: libc::c_ulong = 0x541B;
const SIOCOUTQ: libc::c_ulong = 0x5411;
const SIOCOUTQNSD: libc::c_ulong = 0x894B;
const SO_BUF_LOCK: i32 = 72;
/// Bytes written per injected `send` when refilling a queue (the receive queue takes one buffer
/// per call, which must stay small enough to allocate).
const CHUNK: usize = 64 << 10;

/// TCP states (`tcpi_state`).
pub mod state {
    /// Established.
    pub const ESTABLISHED: u8 = 1;
    /// SYN sent, no answer yet.
    pub const SYN_SENT: u8 = 2;
    /// SYN received (a fast-open child accepted before the handshake ended).
    pub const SYN_RECV: u8 = 3;
    /// Our FIN sent, not acknowledged.
    pub const FIN_WAIT1: u8 = 4;
    /// Our FIN acknowledged, the peer's not received.
    pub const FIN_WAIT2: u8 = 5;
    /// Both closed, waiting.
    pub const TIME_WAIT: u8 = 6;
    /// Closed or never connected.
    pub const CLOSE: u8 = 7;
    /// The peer's FIN received, ours not sent.
    pub const CLOSE_WAIT: u8 = 8;
    /// Both FINs sent, ours not acknowledged.
    pub const LAST_ACK: u8 = 9;
    /// Listening.
    pub const LISTEN: u8 = 10;
    /// Both FINs sent at once.
    pub const CLOSING: u8 = 11;
}

/// The name of a TCP state, for messages.
pub fn state_name(s: u8) -> &'static str {
    match s {
        state::ESTABLISHED => "ESTABLISHED",
        state::SYN_SENT => "SYN_SENT",
        state::SYN_RECV => "SYN_RECV",
        state::FIN_WAIT1 => "FIN_WAIT1",
        state::FIN_WAIT2 => "FIN_WAIT2",
        state::TIME_WAIT => "TIME_WAIT",
        state::CLOSE => "CLOSE",
        state::CLOSE_WAIT => "CLOSE_WAIT",
        state::LAST_ACK => "LAST_ACK",
        state::LISTEN => "LISTEN",
        state::CLOSING => "CLOSING",
        _ => "unknown",
    }
}

/// States whose connection repair mode can save and restore.
pub fn repairable(s: u8) -> bool {
    matches!(s, state::ESTABLISHED | state::FIN_WAIT1 | state::FIN_WAIT2 | state::CLOSE_WAIT | state::LAST_ACK | state::CLOSING)
}

fn fin_sent(s: u8) -> bool {
    matches!(s, state::FIN_WAIT1 | state::FIN_WAIT2 | state::LAST_ACK | state::CLOSING)
}

fn fin_received(s: u8) -> bool {
    matches!(s, state::CLOSE_WAIT | state::LAST_ACK | state::CLOSING)
}

/// TCP-level options an application sets (`IPPROTO_TCP`), saved with every TCP socket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpOpts {
    /// TCP_NODELAY.
    pub nodelay: bool,
    /// TCP_CORK.
    pub cork: bool,
    /// TCP_KEEPIDLE, s.
    pub keepidle: i32,
    /// TCP_KEEPINTVL, s.
    pub keepintvl: i32,
    /// TCP_KEEPCNT.
    pub keepcnt: i32,
    /// TCP_USER_TIMEOUT, ms (0: the kernel's).
    pub user_timeout: i32,
    /// TCP_CONGESTION.
    pub congestion: String,
    /// TCP_NOTSENT_LOWAT (0: unset).
    pub notsent_lowat: i32,
    /// TCP_WINDOW_CLAMP (0: unset).
    pub window_clamp: i32,
    /// TCP_MAXSEG set by the application (unconnected and listening sockets only; 0: unset).
    pub maxseg: i32,
    /// TCP_SYNCNT (0: the kernel's).
    pub syncnt: i32,
    /// TCP_LINGER2, s.
    pub linger2: i32,
    /// TCP_DEFER_ACCEPT, s (listeners).
    pub defer_accept: i32,
    /// TCP_FASTOPEN queue length (listeners; 0: off).
    pub fastopen: i32,
}

/// The MSS an unconnected socket reports when the application set none.
const DEFAULT_MSS: i32 = 536;

/// Reads the TCP-level options of `fd` (a duplicate in Zap) in TCP state `st`; `nodelay` and
/// `congestion` when the caller knows them already (from [`super::opts::opts_of`] and an
/// `inet_diag` dump).
pub(super) fn tcp_opts_of(fd: &OwnedFd, st: u8, nodelay: Option<bool>, congestion: Option<&str>) -> TcpOpts {
    let get = |name| sock::getsockopt_int(fd, libc::IPPROTO_TCP, name).unwrap_or(0);
    let congestion = match congestion {
        Some(c) => c.to_string(),
        None => sock::getsockopt_bytes(fd, libc::IPPROTO_TCP, libc::TCP_CONGESTION, 16)
            .map(|b| String::from_utf8_lossy(b.split(|&c| c == 0).next().unwrap_or_default()).into_owned())
            .unwrap_or_default(),
    };
    let unconnected = matches!(st, state::CLOSE | state::LISTEN);
    TcpOpts {
        nodelay: nodelay.unwrap_or_else(|| get(libc::TCP_NODELAY) != 0),
        cork: get(libc::TCP_CORK) != 0,
        keepidle: get(libc::TCP_KEEPIDLE),
        keepintvl: get(libc::TCP_KEEPINTVL),
        keepcnt: get(libc::TCP_KEEPCNT),
        user_timeout: get(libc::TCP_USER_TIMEOUT),
        congestion,
        notsent_lowat: get(libc::TCP_NOTSENT_LOWAT),
        window_clamp: get(libc::TCP_WINDOW_CLAMP),
        maxseg: if unconnected { get(libc::TCP_MAXSEG) } else { 0 },
        syncnt: get(libc::TCP_SYNCNT),
        linger2: get(libc::TCP_LINGER2),
        defer_accept: if st == state::LISTEN { get(libc::TCP_DEFER_ACCEPT) } else { 0 },
        fastopen: if st == state::LISTEN { get(libc::TCP_FASTOPEN) } else { 0 },
    }
}

impl TcpOpts {
    /// These options with those that equal `fresh`'s (a fresh TCP socket's of the same
    /// namespace: the kernel's values, which getsockopt answers for options never set, such as
    /// the keepalive timers, the SYN retries and the congestion control) left unset, so that a
    /// restore does not set them (one call less each per connection) and they keep following
    /// the kernel's settings, as the socket's other options do ([`super::opts`]).
    pub(super) fn beyond(mut self, fresh: &TcpOpts) -> TcpOpts {
        if self.congestion == fresh.congestion {
            self.congestion.clear();
        }
        for (v, d) in [
            (&mut self.keepidle, fresh.keepidle),
            (&mut self.keepintvl, fresh.keepintvl),
            (&mut self.keepcnt, fresh.keepcnt),
            (&mut self.user_timeout, fresh.user_timeout),
            (&mut self.notsent_lowat, fresh.notsent_lowat),
            (&mut self.syncnt, fresh.syncnt),
            (&mut self.linger2, fresh.linger2),
        ] {
            if *v == d {
                *v = 0;
            }
        }
        self
    }
}

fn setopt<C: SockCalls + ?Sized>(inj: &mut C, fd: u64, level: i32, name: i32, val: &[u8], what: &'static str) -> Result<()> {
    let rc = inj.setsockopt(fd, level, name, val)?;
    if rc < 0 {
        return Err(EngineError::Sys { step: what, pid: inj.pid(), source: std::io::Error::from_raw_os_error(-rc as i32) });
    }
    Ok(())
}

fn setopt_int<C: SockCalls + ?Sized>(inj: &mut C, fd: u64, level: i32, name: i32, v: i32, what: &'static str) -> Result<()> {
    setopt(inj, fd, level, name, &v.to_ne_bytes(), what)
}

/// Sets the saved TCP options `o` on socket `fd` of the process `inj` drives (or on Zap's
/// duplicate). Options left at the kernel's value are not set (so they keep following its
/// settings).
pub(super) fn set_tcp_opts<C: SockCalls + ?Sized>(inj: &mut C, fd: u64, o: &TcpOpts) -> Result<()> {
    let t = libc::IPPROTO_TCP;
    if !o.congestion.is_empty() {
        // A congestion control the host lacks is reported, not ignored.
        setopt(inj, fd, t, libc::TCP_CONGESTION, o.congestion.as_bytes(), "setsockopt(TCP_CONGESTION)")?;
    }
    if o.nodelay {
        setopt_int(inj, fd, t, libc::TCP_NODELAY, 1, "setsockopt(TCP_NODELAY)")?;
    }
    if o.cork {
        setopt_int(inj, fd, t, libc::TCP_CORK, 1, "setsockopt(TCP_CORK)")?;
    }
    for (name, v, what) in [
        (libc::TCP_KEEPIDLE, o.keepidle, "setsockopt(TCP_KEEPIDLE)"),
        (libc::TCP_KEEPINTVL, o.keepintvl, "setsockopt(TCP_KEEPINTVL)"),
        (libc::TCP_KEEPCNT, o.keepcnt, "setsockopt(TCP_KEEPCNT)"),
        (libc::TCP_USER_TIMEOUT, o.user_timeout, "setsockopt(TCP_USER_TIMEOUT)"),
        (libc::TCP_NOTSENT_LOWAT, o.notsent_lowat, "setsockopt(TCP_NOTSENT_LOWAT)"),
        (libc::TCP_WINDOW_CLAMP, o.window_clamp, "setsockopt(TCP_WINDOW_CLAMP)"),
        (libc::TCP_SYNCNT, o.syncnt, "setsockopt(TCP_SYNCNT)"),
        (libc::TCP_LINGER2, o.linger2, "setsockopt(TCP_LINGER2)"),
        (libc::TCP_DEFER_ACCEPT, o.defer_accept, "setsockopt(TCP_DEFER_ACCEPT)"),
        (libc::TCP_FASTOPEN, o.fastopen, "setsockopt(TCP_FASTOPEN)"),
    ] {
        if v > 0 {
            setopt_int(inj, fd, t, name, v, what)?;
        }
    }
    if o.maxseg > 0 && o.maxseg != DEFAULT_MSS {
        setopt_int(inj, fd, t, libc::TCP_MAXSEG, o.maxseg, "setsockopt(TCP_MAXSEG)")?;
    }
    Ok(())
}

/// An established or half-closed TCP connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpConn {
    /// AF_INET or AF_INET6.
    pub family: i32,
    /// Local address (raw sockaddr).
    pub local: Vec<u8>,
    /// Peer address (raw sockaddr).
    pub peer: Vec<u8>,
    /// TCP state at checkpoint time.
    pub state: u8,
    /// Sequence number of the first byte of `sent` (the oldest unacknowledged byte).
    pub snd_seq: u32,
    /// Sequence number of the first byte of `recv` (the next byte the application reads).
    pub rcv_seq: u32,
    /// Bytes sent and not acknowledged.
    pub sent: Vec<u8>,
    /// Bytes queued and not yet sent.
    pub unsent: Vec<u8>,
    /// Bytes received and not yet read.
    pub recv: Vec<u8>,
    /// MSS (TCP_MAXSEG of the connection).
    pub mss: u32,
    /// Send and receive window scale.
    pub wscale: (u8, u8),
    /// `tcpi_options`: timestamps, SACK, window scaling negotiated.
    pub options: u8,
    /// The connection's timestamp clock (TCP_TIMESTAMP: the host clock plus the offset).
    pub timestamp: u32,
    /// TCP_REPAIR_WINDOW: snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup.
    pub window: Option<[u32; 5]>,
    /// SO_SNDBUF, SO_RCVBUF (as getsockopt reports them) and SO_BUF_LOCK.
    pub buffers: (i32, i32, i32),
    /// TCP-level options.
    pub tcp: TcpOpts,
    /// Socket options.
    pub opts: SockOpts,
}

pub(super) fn ip_port(addr: &[u8]) -> String {
    if addr.len() >= 8 && u16::from_ne_bytes([addr[0], addr[1]]) == libc::AF_INET as u16 {
        let ip = std::net::Ipv4Addr::new(addr[4], addr[5], addr[6], addr[7]);
        format!("{ip}:{}", u16::from_be_bytes([addr[2], addr[3]]))
    } else if addr.len() >= 24 && u16::from_ne_bytes([addr[0], addr[1]]) == libc::AF_INET6 as u16 {
        let b: [u8; 16] = addr[8..24].try_into().expect("16");
        format!("[{}]:{}", std::net::Ipv6Addr::from(b), u16::from_be_bytes([addr[2], addr[3]]))
    } else {
        format!("{addr:?}")
    }
}

/// The peer of socket `ino` from `/proc/PID/net/tcp{,6}` (a connection still opening has no
/// `getpeername` yet), as a raw sockaddr.
pub(super) fn peer_from_proc(pid: i32, ino: u64, family: i32) -> Option<Vec<u8>> {
    let file = if family == libc::AF_INET6 { "tcp6" } else { "tcp" };
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")).ok()?;
    let line = text.lines().skip(1).find(|l| l.split_whitespace().nth(9).and_then(|i| i.parse::<u64>().ok()) == Some(ino))?;
    let (addr, port) = line.split_whitespace().nth(2)?.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // The address is printed as 32-bit words in host order.
    let mut bytes = Vec::new();
    for w in 0..addr.len() / 8 {
        bytes.extend_from_slice(&u32::from_str_radix(&addr[w * 8..w * 8 + 8], 16).ok()?.to_ne_bytes());
    }
    let mut sa = (family as u16).to_ne_bytes().to_vec();
    sa.extend_from_slice(&port.to_be_bytes());
    if family == libc::AF_INET6 {
        sa.extend_from_slice(&[0; 4]);
        sa.extend_from_slice(&bytes);
        sa.extend_from_slice(&[0; 4]);
    } else {
        sa.extend_from_slice(&bytes);
        sa.extend_from_slice(&[0; 8]);
    }
    Some(sa)
}

/// `local -> peer` for messages.
pub fn describe(local: &[u8], peer: &[u8]) -> String {
    format!("{} -> {}", ip_port(local), ip_port(peer))
}

/// Saves the connection `dup` (Zap's duplicate of fd `fd` of `pid`, of `family`, bound to `local`)
/// in TCP state `st` (`info`: its TCP_INFO), with its socket and TCP-level options as the caller
/// read them and what an `inet_diag` dump said of it (peer address, buffer sizes), if the caller
/// had one. The caller has locked the network. Fails, naming pid, fd, addresses and state, for a state
/// repair mode cannot restore.
pub(super) fn save_conn(
    pid: i32,
    fd: i32,
    ino: u64,
    (family, local): (i32, &[u8]),
    (st, info): (u8, &[u8]),
    dup: &OwnedFd,
    (opts, tcp, known): (SockOpts, TcpOpts, Option<&sock::TcpDiag>),
) -> Result<TcpConn> {
    let peer = match known.and_then(|k| k.addrs.as_ref()) {
        Some((_, peer)) => peer.clone(),
        None => sock::sockaddr(dup, true).ok().or_else(|| peer_from_proc(pid, ino, family)).unwrap_or_default(),
    };
    let what = || format!("fd {fd}: TCP connection {} in state {}", describe(local, &peer), state_name(st));
    let fail = |why: String| EngineError::Proc { pid, detail: format!("{}: {why}", what()) };
    if !repairable(st) {
        let why = match st {
            state::SYN_SENT => "a connection still being opened (SYN sent, perhaps with TCP fast-open data) cannot be saved; try again once it is established".to_string(),
            state::SYN_RECV => "a connection whose handshake has not finished (a fast-open child) cannot be saved; try again".to_string(),
            other => format!("state {other} cannot be saved"),
        };
        return Err(fail(why));
    }
    // SO_REUSEADDR (repair mode clears it) is among the options read already: recorded when it
    // differs from a fresh socket's 0.
    let reuse = opts.ints.iter().find(|&&(l, n, _)| l == libc::SOL_SOCKET && n == libc::SO_REUSEADDR).map_or(0, |&(_, _, v)| v);
    if info.len() < 8 {
        return Err(fail(format!("TCP_INFO of {} bytes", info.len())));
    }
    let buffers = match known.and_then(|k| k.buffers) {
        Some((snd, rcv)) => (snd, rcv, opts.buf_lock),
        None => (
            sock::getsockopt_int(dup, libc::SOL_SOCKET, libc::SO_SNDBUF).unwrap_or(0),
            sock::getsockopt_int(dup, libc::SOL_SOCKET, libc::SO_RCVBUF).unwrap_or(0),
            sock::getsockopt_int(dup, libc::SOL_SOCKET, SO_BUF_LOCK).unwrap_or(0),
        ),
    };
    sock::setsockopt_int(dup, libc::IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON)
        .map_err(|e| fail(format!("the kernel refuses repair mode (TCP_REPAIR needs CAP_NET_ADMIN): {e}")))?;
    let read = (|| -> std::io::Result<TcpConn> {
        sock::setsockopt_int(dup, libc::IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)?;
        let write_seq = sock::getsockopt_int(dup, libc::IPPROTO_TCP, TCP_QUEUE_SEQ)? as u32;
        // An empty send queue in the dump stays empty: the process is stopped (it cannot write)
        // and an ACK can only shrink the queue. Then there is nothing to count or peek.
        let (unsq, sendq) = if known.and_then(|k| k.send_queue) == Some(0) {
            (0, Vec::new())
        } else {
            let outq = sock::ioctl_int(dup, SIOCOUTQ)?.max(0) as usize;
            let unsq = if outq == 0 { 0 } else { sock::ioctl_int(dup, SIOCOUTQNSD)?.max(0) as usize };
            (unsq, if outq == 0 { Vec::new() } else { sock::peek(dup, outq + 1)? })
        };
        sock::setsockopt_int(dup, libc::IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)?;
        let rcv_nxt = sock::getsockopt_int(dup, libc::IPPROTO_TCP, TCP_QUEUE_SEQ)? as u32;
        let inq = sock::ioctl_int(dup, SIOCINQ)?.max(0) as usize;
        let recv = sock::peek(dup, inq + 1)?;
        let options = info[5];
        let timestamp = if options & TCPI_OPT_TIMESTAMPS != 0 {
            sock::getsockopt_int(dup, libc::IPPROTO_TCP, TCP_TIMESTAMP)? as u32
        } else {
            0
        };
        let window = sock::getsockopt_bytes(dup, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, 20).ok().filter(|w| w.len() == 20).map(|w| {
            let mut v = [0u32; 5];
            for (i, x) in v.iter_mut().enumerate() {
                *x = u32::from_ne_bytes(w[i * 4..i * 4 + 4].try_into().expect("4"));
            }
            v
        });
        let mss = sock::getsockopt_int(dup, libc::IPPROTO_TCP, libc::TCP_MAXSEG)? as u32;
        let fin_out = u32::from(fin_sent(st));
        // The FIN, if queued and not yet sent, is the last unsent sequence number.
        let unsent_len = if fin_out == 1 && unsq > 0 { unsq - 1 } else { unsq }.min(sendq.len());
        let sent_len = sendq.len() - unsent_len;
        Ok(TcpConn {
            family,
            local: local.to_vec(),
            peer: peer.clone(),
            state: st,
            snd_seq: write_seq.wrapping_sub(fin_out).wrapping_sub(sendq.len() as u32),
            rcv_seq: rcv_nxt.wrapping_sub(u32::from(fin_received(st))).wrapping_sub(recv.len() as u32),
            sent: sendq[..sent_len].to_vec(),
            unsent: sendq[sent_len..].to_vec(),
            recv,
            mss,
            wscale: (info[6] & 0xf, info[6] >> 4),
            options,
            timestamp,
            window,
            buffers,
            tcp,
            opts,
        })
    })();
    // Leave repair mode without a window probe; repair mode cleared SO_REUSEADDR.
    let off = sock::setsockopt_int(dup, libc::IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP);
    if reuse != 0 {
        let _ = sock::setsockopt_int(dup, libc::SOL_SOCKET, libc::SO_REUSEADDR, reuse);
    }
    let conn = read.map_err(|e| fail(format!("reading it in repair mode: {e}")))?;
    off.map_err(|e| fail(format!("leaving repair mode: {e}")))?;
    Ok(conn)
}

/// Puts the socket `dup` (TCP, in state `st` when the caller knows it) into repair mode, so that
/// closing it sends nothing (no FIN, no RST). For a pod whose checkpoint ends it.
pub fn silence(dup: &OwnedFd, st: Option<u8>) -> std::io::Result<()> {
    match st.map_or_else(|| sock::tcp_state(dup), Ok)? {
        state::LISTEN | state::CLOSE => Ok(()),
        _ => sock::setsockopt_int(dup, libc::IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON),
    }
}

/// Sends a window probe on connection `dup` (repair mode on, then off with a probe), keeping its
/// `SO_REUSEADDR`.
pub fn probe(dup: &OwnedFd) -> std::io::Result<()> {
    let reuse = sock::getsockopt_int(dup, libc::SOL_SOCKET, libc::SO_REUSEADDR)?;
    sock::setsockopt_int(dup, libc::IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON)?;
    let off = sock::setsockopt_int(dup, libc::IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_OFF);
    if reuse != 0 {
        sock::setsockopt_int(dup, libc::SOL_SOCKET, libc::SO_REUSEADDR, reuse)?;
    }
    off
}

/// Writes all of `data` on `fd` with `flags`, in chunks (the receive queue of a socket in repair
/// mode takes one buffer per call, which must stay small enough to allocate).
fn sendall(fd: &OwnedFd, data: &[u8], flags: i32) -> std::io::Result<()> {
    for chunk in data.chunks(CHUNK) {
        let mut done = 0;
        while done < chunk.len() {
            let n = sock::send(fd, &chunk[done..], flags)?;
            if n == 0 {
                return Err(std::io::Error::other("the queue takes no more bytes"));
            }
            done += n;
        }
    }
    Ok(())
}

/// How a connection is restored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// Live, with its state.
    Live,
    /// Closed, with ECONNABORTED pending (its address changed: a copy elsewhere).
    Aborted,
}

/// Recreates connection `c` on `fd`, a fresh TCP socket of the process `pid` (host pid) that Zap
/// holds a duplicate of, with local address `local` and peer `peer` (rewritten for a copy). Every
/// call is made by Zap on its duplicate: what is set is set on the process's socket.
pub(super) fn restore_conn(pid: i32, fd: &OwnedFd, c: &TcpConn, local: &[u8], peer: &[u8], mode: Mode) -> Result<()> {
    let what = describe(local, peer);
    let ctx = |e: EngineError| EngineError::Proc { pid, detail: format!("restore TCP connection {what}: {e}") };
    let io = |step: &'static str| move |source| EngineError::Sys { step, pid, source };
    let t = libc::IPPROTO_TCP;
    let int = |level: i32, name: i32, v: i32, step: &'static str| sock::setsockopt_int(fd, level, name, v).map_err(io(step));
    // Socket options go before the socket is bound (IPV6_V6ONLY must); SO_REUSEADDR, which
    // repair mode clears, is set again when it ends.
    let reuse = c.opts.ints.iter().find(|&&(l, n, _)| l == libc::SOL_SOCKET && n == libc::SO_REUSEADDR).map(|&(_, _, v)| v);
    let mut local_calls = Local { fd, pid };
    // Repair mode overrides SO_REUSEADDR as soon as it is on (and clears it when it goes off):
    // setting it before is a call for nothing.
    let without_reuse;
    let opts = if reuse.is_some() {
        let mut o = c.opts.clone();
        o.ints.retain(|&(l, n, _)| !(l == libc::SOL_SOCKET && n == libc::SO_REUSEADDR));
        without_reuse = o;
        &without_reuse
    } else {
        &c.opts
    };
    (|| -> Result<()> {
        set_opts(&mut local_calls, 0, c.family, true, opts)?;
        int(t, TCP_REPAIR, TCP_REPAIR_ON, "setsockopt(TCP_REPAIR)")?;
        int(t, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE, "setsockopt(TCP_REPAIR_QUEUE)")?;
        int(t, TCP_QUEUE_SEQ, c.snd_seq as i32, "setsockopt(TCP_QUEUE_SEQ send)")?;
        int(t, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE, "setsockopt(TCP_REPAIR_QUEUE)")?;
        int(t, TCP_QUEUE_SEQ, c.rcv_seq as i32, "setsockopt(TCP_QUEUE_SEQ receive)")?;
        sock::bind(fd, local).map_err(io("bind"))?;
        sock::connect(fd, peer).map_err(io("connect (repair)"))?;
        if mode == Mode::Aborted {
            // connect(AF_UNSPEC) in repair mode: closed at once, ECONNABORTED pending, nothing sent.
            sock::connect(fd, &(libc::AF_UNSPEC as u16).to_ne_bytes()).map_err(io("connect(AF_UNSPEC)"))?;
            int(t, TCP_REPAIR, TCP_REPAIR_OFF_NO_WP, "setsockopt(TCP_REPAIR off)")?;
            if let Some(v) = reuse {
                int(libc::SOL_SOCKET, libc::SO_REUSEADDR, v, "setsockopt(SO_REUSEADDR)")?;
            }
            return Ok(());
        }
        let mut ropts: Vec<u8> = Vec::new();
        let mut opt = |code: u32, val: u32| {
            ropts.extend_from_slice(&code.to_ne_bytes());
            ropts.extend_from_slice(&val.to_ne_bytes());
        };
        opt(TCPOPT_MSS, c.mss);
        if c.options & TCPI_OPT_WSCALE != 0 {
            opt(TCPOPT_WINDOW, u32::from(c.wscale.0) | (u32::from(c.wscale.1) << 16));
        }
        if c.options & TCPI_OPT_SACK != 0 {
            opt(TCPOPT_SACK_PERM, 0);
        }
        if c.options & TCPI_OPT_TIMESTAMPS != 0 {
            opt(TCPOPT_TIMESTAMP, 0);
        }
        sock::setsockopt_bytes(fd, t, TCP_REPAIR_OPTIONS, &ropts).map_err(io("setsockopt(TCP_REPAIR_OPTIONS)"))?;
        if c.options & TCPI_OPT_TIMESTAMPS != 0 {
            int(t, TCP_TIMESTAMP, c.timestamp as i32, "setsockopt(TCP_TIMESTAMP)")?;
        }
        // Room for the queues while they are refilled (an empty one needs none); the saved
        // sizes are set at the end.
        let need = |n: usize| ((n + (256 << 10)).min(i32::MAX as usize / 4)) as i32;
        if !c.recv.is_empty() {
            int(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, need(c.recv.len()), "setsockopt(SO_RCVBUFFORCE)")?;
        }
        if !c.sent.is_empty() || !c.unsent.is_empty() {
            int(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, need(c.sent.len() + c.unsent.len()), "setsockopt(SO_SNDBUFFORCE)")?;
        }
        // The receive queue is still the one repair mode writes to (chosen last, for its
        // sequence number).
        if !c.recv.is_empty() {
            sendall(fd, &c.recv, 0).map_err(io("refill receive queue"))?;
        }
        if !c.sent.is_empty() {
            int(t, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE, "setsockopt(TCP_REPAIR_QUEUE)")?;
            sendall(fd, &c.sent, 0).map_err(io("refill send queue"))?;
        }
        // The peer's FIN first: the saved windows count it.
        if fin_received(c.state) {
            let seq = c.rcv_seq.wrapping_add(c.recv.len() as u32);
            let ack = c.snd_seq;
            super::packet::send_fin(pid, peer, local, seq, ack, c.options & TCPI_OPT_TIMESTAMPS != 0)
                .map_err(|e| EngineError::Proc { pid, detail: format!("send the peer's FIN: {e}") })?;
        }
        if let Some(w) = c.window {
            let bytes: Vec<u8> = w.iter().flat_map(|x| x.to_ne_bytes()).collect();
            sock::setsockopt_bytes(fd, t, TCP_REPAIR_WINDOW, &bytes).map_err(io("setsockopt(TCP_REPAIR_WINDOW)"))?;
        }
        if fin_sent(c.state) && c.unsent.is_empty() {
            sock::shutdown(fd, libc::SHUT_WR).map_err(io("shutdown(SHUT_WR) (repair)"))?;
        }
        int(t, TCP_REPAIR, TCP_REPAIR_OFF, "setsockopt(TCP_REPAIR off)")?;
        if let Some(v) = reuse {
            int(libc::SOL_SOCKET, libc::SO_REUSEADDR, v, "setsockopt(SO_REUSEADDR)")?;
        }
        set_tcp_opts(&mut local_calls, 0, &c.tcp)?;
        if !c.unsent.is_empty() {
            sendall(fd, &c.unsent, libc::MSG_DONTWAIT).map_err(io("send unsent bytes"))?;
            if fin_sent(c.state) {
                sock::shutdown(fd, libc::SHUT_WR).map_err(io("shutdown(SHUT_WR)"))?;
            }
        }
        let (snd, rcv, lock) = c.buffers;
        if snd > 0 {
            int(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, snd / 2, "setsockopt(SO_SNDBUFFORCE)")?;
        }
        if rcv > 0 {
            int(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, rcv / 2, "setsockopt(SO_RCVBUFFORCE)")?;
        }
        // Buffers the kernel sized by itself stay auto-tuned.
        int(libc::SOL_SOCKET, SO_BUF_LOCK, lock, "setsockopt(SO_BUF_LOCK)")?;
        Ok(())
    })()
    .map_err(ctx)
}
