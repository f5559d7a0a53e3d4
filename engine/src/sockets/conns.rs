//! Restoring a process's established TCP connections fast: the sockets are made outside the
//! process, rebuilt by Zap, and passed into it in batches; a few injected syscalls in all
//! instead of one or more per connection.
//!
//! 1. A short-lived child of Zap's, created straight into the process's cgroup and joined to its
//!    network namespace, makes one unconnected socket per connection under the fsuid of the
//!    saved owner ([`crate::sys::sock::make_tcp_sockets`]) and passes them to Zap. So each
//!    socket's owner (the uid `/proc/net/tcp` shows), cgroup (for cgroup BPF programs and
//!    nftables `socket cgroupv2` rules) and memory cgroup (its buffers are charged there for its
//!    whole life) are what the process's own `socket()` would have given.
//! 2. Zap rebuilds each connection on its socket ([`super::tcp::restore_conn`]: options, repair
//!    mode, sequence numbers, `bind`, `connect`, queues, windows, status flags), over threads.
//! 3. The sockets go into the process: an injected `socketpair` is the channel, then one
//!    `SCM_RIGHTS` message of up to 253 sockets and one injected `recvmsg` per batch; the kernel
//!    installs them at the lowest free numbers, which are the saved ones when those are the
//!    lowest free (the usual case: the other fds are in place), so nothing moves; a socket that
//!    landed elsewhere is moved with `dup3`, and what is left over is closed with one
//!    `close_range` per run ([`pass`], [`place`]). For 1,000 connections: some 8 injected
//!    syscalls instead of 1,000.
//!
//! Where no process can be made in the cgroup (no cgroup v2, a frozen cgroup, one that takes no
//! process), each socket is made by an injected `socket()` in the process (then `dup3` when the
//! kernel did not give the saved number) and Zap rebuilds it on a `pidfd_getfd` duplicate:
//! [`restore_injected`].
use std::collections::HashSet;
use std::os::fd::OwnedFd;

use super::tcp::{self, Mode, TcpConn};
use super::{rewrite, SocketRestore};
use crate::inject::Injector;
use crate::sys::proc::{pidfd_getfd, pidfd_open};
use crate::{EngineError, Result};

/// A connection to restore at fd `fd` of the process.
pub struct ConnFd<'a> {
    /// The fd number it had.
    pub fd: i32,
    /// Close-on-exec.
    pub cloexec: bool,
    /// Status flags to set (`F_SETFL`).
    pub status: i32,
    /// The connection.
    pub conn: &'a TcpConn,
}

/// Local and peer address a saved connection is restored with, and how (see
/// [`SocketRestore::rebind`]): a connection whose address moved (a copy elsewhere) cannot go on;
/// one with both ends in the pod moves with it.
pub(super) fn addrs(c: &TcpConn, ctx: &SocketRestore) -> (Vec<u8>, Vec<u8>, Mode) {
    let (local, peer) = (rewrite(&c.local, ctx), rewrite(&c.peer, ctx));
    let mode = if local != c.local && peer == c.peer { Mode::Aborted } else { Mode::Live };
    (local, peer, mode)
}

fn new_socket(inj: &mut Injector, family: i32, uid: u32, cloexec: bool, nonblock: bool) -> Result<u64> {
    let mut ty = libc::SOCK_STREAM;
    if cloexec {
        ty |= libc::SOCK_CLOEXEC;
    }
    if nonblock {
        ty |= libc::SOCK_NONBLOCK;
    }
    super::create_as(inj, uid, "socket(tcp)", libc::SYS_socket, [family as u64, ty as u64, 0, 0, 0, 0])
}

fn take(pidfd: &OwnedFd, pid: i32, fd: u64) -> Result<OwnedFd> {
    pidfd_getfd(pidfd, fd as i32).map_err(|source| EngineError::Sys { step: "pidfd_getfd restored TCP socket", pid, source })
}

/// Recreates one connection in the process `inj` drives; returns its fd there (any number).
pub(super) fn restore_one(inj: &mut Injector, c: &TcpConn, ctx: &SocketRestore) -> Result<u64> {
    let pid = inj.tid();
    let (local, peer, mode) = addrs(c, ctx);
    let fd = new_socket(inj, c.family, c.opts.uid, false, false)?;
    let pidfd = pidfd_open(pid).map_err(|source| EngineError::Sys { step: "pidfd_open", pid, source })?;
    let dup = take(&pidfd, pid, fd)?;
    tcp::restore_conn(pid, &dup, c, &local, &peer, mode)?;
    Ok(fd)
}

/// Recreates the connections `conns` at their fd numbers in the process `inj` drives (whose fds
/// with lower numbers are in place; none of the numbers of `conns` is taken). Returns, for each,
/// its fd and the status flags it then has.
///
/// The sockets are made by a short-lived child of Zap's in the process's cgroup and network
/// namespace ([`crate::sys::sock::make_tcp_sockets`]), rebuilt by Zap over threads, and passed
/// into the process in batches ([`pass`]). When no such child can be made there (no cgroup v2, a
/// frozen cgroup, one that refuses processes), each socket is made by an injected `socket()`
/// instead ([`restore_injected`]).
pub fn restore_all(inj: &mut Injector, conns: &mut [ConnFd], ctx: &SocketRestore) -> Result<Vec<(i32, i32)>> {
    let pid = inj.tid();
    conns.sort_by_key(|c| c.fd);
    let t = std::time::Instant::now();
    let made = match make_in_cgroup(pid, conns) {
        Ok(made) => made,
        Err(e) => {
            tracing::debug!(pid, error = %e, "TCP sockets cannot be made in the process's cgroup: made by injection, one by one");
            return restore_injected(inj, conns, ctx);
        }
    };
    let made_ms = t.elapsed().as_secs_f64() * 1e3;
    let work: Vec<(&ConnFd, &OwnedFd)> = conns.iter().zip(&made).collect();
    let out = rebuild(pid, &work, ctx)?;
    let rebuilt_ms = t.elapsed().as_secs_f64() * 1e3;
    pass(inj, conns, made)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    tracing::debug!(pid, connections = conns.len(), made_ms, rebuilt_ms, ms, "TCP connections restored");
    Ok(out)
}

/// The cgroup v2 directory process `pid` is in, open.
fn cgroup_of(pid: i32) -> std::io::Result<std::fs::File> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no cgroup v2 line in /proc/PID/cgroup"))?;
    let root = crate::pod::cgroup::v2_root().map_err(std::io::Error::other)?;
    let dir = root.join(rel.trim_start_matches('/'));
    // A process made into a frozen cgroup would not run until it thaws.
    let events = std::fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
    let freeze = std::fs::read_to_string(dir.join("cgroup.freeze")).unwrap_or_default();
    if events.lines().any(|l| l == "frozen 1") || freeze.trim() == "1" {
        return Err(std::io::Error::other(format!("cgroup {} is frozen", dir.display())));
    }
    std::fs::File::open(&dir)
}

/// The sockets of `conns` (unconnected), made in the cgroup and network namespace of `pid` under
/// their saved owners, in the order of `conns`.
fn make_in_cgroup(pid: i32, conns: &[ConnFd]) -> std::io::Result<Vec<OwnedFd>> {
    let cgroup = cgroup_of(pid)?;
    let netns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    let specs: Vec<(i32, u32)> = conns.iter().map(|c| (c.conn.family, c.conn.opts.uid)).collect();
    crate::sys::sock::make_tcp_sockets(&cgroup, &netns, &specs, MAKER_TIMEOUT_MS)
}

/// How long the socket maker may take for each batch before its cgroup is taken for frozen.
const MAKER_TIMEOUT_MS: i32 = 5000;

/// Rebuilds each connection of `work` on its socket (Zap's), over threads, and sets its status
/// flags; returns each one's fd number and the flags it then has.
fn rebuild(pid: i32, work: &[(&ConnFd, &OwnedFd)], ctx: &SocketRestore) -> Result<Vec<(i32, i32)>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4).min(work.len().div_ceil(16).max(1));
    let per = work.len().div_ceil(threads).max(1);
    let results: Vec<Result<Vec<(i32, i32)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = work
            .chunks(per)
            .map(|part| {
                s.spawn(move || -> Result<Vec<(i32, i32)>> {
                    let mut out = Vec::with_capacity(part.len());
                    for (c, dup) in part {
                        let (local, peer, mode) = addrs(c.conn, ctx);
                        tcp::restore_conn(pid, dup, c.conn, &local, &peer, mode)
                            .map_err(|e| EngineError::Proc { pid, detail: format!("fd {}: {e}", c.fd) })?;
                        let got = crate::sys::sock::set_status_flags(dup, c.status)
                            .map_err(|source| EngineError::Sys { step: "set status flags of a restored TCP socket", pid, source })?;
                        out.push((c.fd, got));
                    }
                    Ok(out)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(EngineError::Proc { pid, detail: "TCP restore thread panicked".into() }))).collect()
    });
    let mut out = Vec::with_capacity(work.len());
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}

/// Offsets in the scratch area of the injected `recvmsg`: its `msghdr`, `iovec`, data byte and
/// control buffer (room for [`SCM_MAX_FD`] fds).
const MSG_AT: u64 = 0;
const IOV_AT: u64 = 64;
const BYTE_AT: u64 = 96;
const CONTROL_AT: u64 = 128;
const CONTROL_LEN: u64 = 16 + 4 * SCM_MAX_FD as u64;

use crate::sys::sock::SCM_MAX_FD;

/// Passes Zap's sockets `made` (one per connection of `conns`) into the process `inj` drives and
/// puts each at its fd number with its close-on-exec flag: an injected `socketpair` is the
/// channel (Zap takes one end), then one `SCM_RIGHTS` message and one injected `recvmsg` per
/// batch of up to [`SCM_MAX_FD`] sockets. The kernel installs passed fds at the lowest free
/// numbers, which are the saved ones when they are the lowest free (the connections whose
/// numbers the channel took go last); any other lands where it can and is moved with `dup3`, and
/// the numbers left over (the channel's among them) are closed with one `close_range` per run.
fn pass(inj: &mut Injector, conns: &[ConnFd], made: Vec<OwnedFd>) -> Result<()> {
    let pid = inj.tid();
    let fail = |step: &str, e: &dyn std::fmt::Display| EngineError::Proc { pid, detail: format!("pass restored TCP sockets: {step}: {e}") };
    let scratch = inj.scratch(CONTROL_AT + CONTROL_LEN + 64)?;
    let pair = (libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC) as u64;
    inj.call("socketpair (channel for restored TCP sockets)", libc::SYS_socketpair, [libc::AF_UNIX as u64, pair, 0, scratch, 0, 0])?;
    let ends = inj.read_mem(scratch, 8)?;
    let a = u64::from(u32::from_ne_bytes(ends[..4].try_into().expect("4")));
    let b = u64::from(u32::from_ne_bytes(ends[4..].try_into().expect("4")));
    let pidfd = pidfd_open(pid).map_err(|source| EngineError::Sys { step: "pidfd_open", pid, source })?;
    let sender = take(&pidfd, pid, b)?;
    // Sent in the order of their numbers, those the channel holds last.
    let mut order: Vec<usize> = (0..conns.len()).collect();
    order.sort_by_key(|&i| (conns[i].fd as u64 == a || conns[i].fd as u64 == b, conns[i].fd));
    let mut landed = vec![0u64; conns.len()];
    let mut k = 0;
    while k < order.len() {
        let cloexec = conns[order[k]].cloexec;
        let mut end = k + 1;
        while end < order.len() && end - k < SCM_MAX_FD && conns[order[end]].cloexec == cloexec {
            end += 1;
        }
        let batch = &order[k..end];
        let fds: Vec<std::os::fd::BorrowedFd> = batch.iter().map(|&i| std::os::fd::AsFd::as_fd(&made[i])).collect();
        crate::sys::sock::send_fds(&sender, b'T', &fds).map_err(|e| fail("send a batch", &e))?;
        let got = recv_in(inj, scratch, a, cloexec)?;
        if got.len() != batch.len() {
            return Err(fail("receive a batch", &format!("{} fds of {} arrived (RLIMIT_NOFILE?)", got.len(), batch.len())));
        }
        for (&i, fd) in batch.iter().zip(got) {
            landed[i] = fd;
        }
        k = end;
    }
    drop(sender);
    drop(made);
    place(inj, conns, &mut landed, (a, b))
}

/// Injects one `recvmsg` on the channel end `chan` (a message Zap has queued) and returns the fd
/// numbers it installed.
fn recv_in(inj: &mut Injector, scratch: u64, chan: u64, cloexec: bool) -> Result<Vec<u64>> {
    let pid = inj.tid();
    // struct msghdr: name, namelen (+pad), iov, iovlen, control, controllen, flags (+pad).
    let mut msg = Vec::with_capacity(IOV_AT as usize + 16);
    for v in [0u64, 0, scratch + IOV_AT, 1, scratch + CONTROL_AT, CONTROL_LEN, 0, 0] {
        msg.extend_from_slice(&v.to_ne_bytes());
    }
    msg.extend_from_slice(&(scratch + BYTE_AT).to_ne_bytes());
    msg.extend_from_slice(&1u64.to_ne_bytes());
    inj.write_mem(scratch + MSG_AT, &msg)?;
    let flags = libc::MSG_DONTWAIT | if cloexec { libc::MSG_CMSG_CLOEXEC } else { 0 };
    let n = inj.call("recvmsg (restored TCP sockets)", libc::SYS_recvmsg, [chan, scratch + MSG_AT, flags as u64, 0, 0, 0])?;
    let head = inj.read_mem(scratch + MSG_AT, 56)?;
    let controllen = u64::from_ne_bytes(head[40..48].try_into().expect("8"));
    let msg_flags = i32::from_ne_bytes(head[48..52].try_into().expect("4"));
    if n != 1 || msg_flags & libc::MSG_CTRUNC != 0 || controllen < 16 {
        return Err(EngineError::Proc { pid, detail: format!("pass restored TCP sockets: recvmsg got {n} bytes, flags {msg_flags:#x}, {controllen} control bytes") });
    }
    let control = inj.read_mem(scratch + CONTROL_AT, controllen.min(CONTROL_LEN) as usize)?;
    let len = u64::from_ne_bytes(control[..8].try_into().expect("8")) as usize;
    let level = i32::from_ne_bytes(control[8..12].try_into().expect("4"));
    let kind = i32::from_ne_bytes(control[12..16].try_into().expect("4"));
    if level != libc::SOL_SOCKET || kind != libc::SCM_RIGHTS || len < 16 || len > control.len() {
        return Err(EngineError::Proc { pid, detail: format!("pass restored TCP sockets: unexpected control message (level {level}, type {kind}, {len} bytes)") });
    }
    Ok(control[16..len].chunks_exact(4).map(|c| u64::from(u32::from_ne_bytes(c.try_into().expect("4")))).collect())
}

/// What holds an fd number of the process while [`place`] moves the passed sockets.
#[derive(Clone, Copy, PartialEq)]
enum Holder {
    /// Connection `i`, not yet at its number.
    Waiting(usize),
    /// Something that goes (a channel end, a copy of a connection that was moved).
    Spare,
    /// Connection `i` at its number.
    Placed(usize),
}

/// Moves each connection from where it landed (`landed`) to its number, with `dup3` (and its
/// close-on-exec flag), in an order that never overwrites a connection still to be moved (a
/// cycle is broken through a free number above all), then closes every number that is not a
/// connection's (the channel's `ends` among them).
fn place(inj: &mut Injector, conns: &[ConnFd], landed: &mut [u64], ends: (u64, u64)) -> Result<()> {
    let wanted: Vec<(u64, bool)> = conns.iter().map(|c| (c.fd as u64, c.cloexec)).collect();
    let spare = plan_places(&mut Injected(inj), &wanted, landed, ends)?;
    close_runs(inj, &spare)
}

/// The fd moves [`plan_places`] makes.
trait FdMoves {
    /// `dup3(from, to, O_CLOEXEC if cloexec)`.
    fn dup3(&mut self, from: u64, to: u64, cloexec: bool) -> Result<()>;
    /// `fcntl(from, F_DUPFD_CLOEXEC, min)`: a copy at the lowest free number from `min` up.
    fn dup_above(&mut self, from: u64, min: u64) -> Result<u64>;
}

/// [`FdMoves`] in the process an injector drives.
struct Injected<'a>(&'a mut Injector);

impl FdMoves for Injected<'_> {
    fn dup3(&mut self, from: u64, to: u64, cloexec: bool) -> Result<()> {
        let pid = self.0.tid();
        let flags = if cloexec { libc::O_CLOEXEC as u64 } else { 0 };
        self.0
            .call("dup3", libc::SYS_dup3, [from, to, flags, 0, 0, 0])
            .map(|_| ())
            .map_err(|e| EngineError::Proc { pid, detail: format!("fd {to}: place restored TCP socket: {e}") })
    }

    fn dup_above(&mut self, from: u64, min: u64) -> Result<u64> {
        self.0.call("fcntl(F_DUPFD_CLOEXEC)", libc::SYS_fcntl, [from, libc::F_DUPFD_CLOEXEC as u64, min, 0, 0, 0])
    }
}

/// Puts the socket that landed at `landed[i]` at `wanted[i]` (number, close-on-exec) for every
/// `i`; `ends` are numbers of ours that go too. Returns the numbers to close afterwards (where
/// sockets landed and were moved from, and the `ends` no socket was moved onto).
fn plan_places(ops: &mut impl FdMoves, wanted: &[(u64, bool)], landed: &mut [u64], ends: (u64, u64)) -> Result<Vec<u64>> {
    let mut holders: std::collections::HashMap<u64, Holder> = std::collections::HashMap::new();
    holders.insert(ends.0, Holder::Spare);
    holders.insert(ends.1, Holder::Spare);
    let mut waiting = Vec::new();
    for (i, &(fd, _)) in wanted.iter().enumerate() {
        if landed[i] == fd {
            holders.insert(landed[i], Holder::Placed(i));
        } else {
            holders.insert(landed[i], Holder::Waiting(i));
            waiting.push(i);
        }
    }
    while !waiting.is_empty() {
        let free = waiting.iter().position(|&i| !matches!(holders.get(&wanted[i].0), Some(Holder::Waiting(j)) if *j != i));
        match free {
            Some(p) => {
                let i = waiting.swap_remove(p);
                let (from, (to, cloexec)) = (landed[i], wanted[i]);
                ops.dup3(from, to, cloexec)?;
                holders.insert(from, Holder::Spare);
                holders.insert(to, Holder::Placed(i));
            }
            None => {
                // Every connection still to move points at another's number: a cycle.
                let i = waiting[0];
                let above = holders.keys().copied().chain(wanted.iter().map(|w| w.0)).max().unwrap_or(0) + 1;
                let moved = ops.dup_above(landed[i], above)?;
                holders.insert(landed[i], Holder::Spare);
                holders.insert(moved, Holder::Waiting(i));
                landed[i] = moved;
            }
        }
    }
    Ok(holders.iter().filter(|(_, h)| **h == Holder::Spare).map(|(n, _)| *n).collect())
}

/// Recreates the connections `conns` (sorted by number) like [`restore_all`], each socket made by
/// an injected `socket()` in the process (under the fsuid of the saved owner) and placed with
/// `dup3` when the kernel did not give its number; Zap takes it with `pidfd_getfd` to rebuild it.
fn restore_injected(inj: &mut Injector, conns: &mut [ConnFd], ctx: &SocketRestore) -> Result<Vec<(i32, i32)>> {
    let pid = inj.tid();
    let pidfd = pidfd_open(pid).map_err(|source| EngineError::Sys { step: "pidfd_open", pid, source })?;
    // Sockets at their numbers. The kernel gives the lowest free number, which is at most the
    // saved one (free) and below every later one, so a number it gives instead is never a
    // saved number still to be placed.
    let mut dups = Vec::with_capacity(conns.len());
    let mut spare = Vec::new();
    for c in conns.iter() {
        let want = c.fd as u64;
        let got = new_socket(inj, c.conn.family, c.conn.opts.uid, c.cloexec, c.status & libc::O_NONBLOCK != 0)?;
        if got != want {
            let flags = if c.cloexec { libc::O_CLOEXEC as u64 } else { 0 };
            inj.call("dup3", libc::SYS_dup3, [got, want, flags, 0, 0, 0])
                .map_err(|e| EngineError::Proc { pid, detail: format!("fd {want}: place restored TCP socket: {e}") })?;
            spare.push(got);
        }
        dups.push(take(&pidfd, pid, want)?);
    }
    close_runs(inj, &spare)?;
    let work: Vec<(&ConnFd, &OwnedFd)> = conns.iter().zip(&dups).collect();
    rebuild(pid, &work, ctx)
}

/// Closes the fds `fds` of the process `inj` drives, one `close_range` per run of consecutive
/// numbers.
fn close_runs(inj: &mut Injector, fds: &[u64]) -> Result<()> {
    let set: HashSet<u64> = fds.iter().copied().collect();
    let mut sorted: Vec<u64> = set.into_iter().collect();
    sorted.sort_unstable();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        inj.call("close_range", libc::SYS_close_range, [sorted[i], sorted[j], 0, 0, 0, 0])?;
        i = j + 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A process's fd table: number -> (file, close-on-exec).
    #[derive(Default)]
    struct Table(HashMap<u64, (u32, bool)>);

    impl FdMoves for Table {
        fn dup3(&mut self, from: u64, to: u64, cloexec: bool) -> Result<()> {
            assert_ne!(from, to, "dup3 onto itself");
            let file = self.0.get(&from).expect("dup3 from an open fd").0;
            self.0.insert(to, (file, cloexec));
            Ok(())
        }

        fn dup_above(&mut self, from: u64, min: u64) -> Result<u64> {
            let file = self.0.get(&from).expect("dup from an open fd").0;
            let n = (min..).find(|n| !self.0.contains_key(n)).expect("a free number");
            self.0.insert(n, (file, true));
            Ok(n)
        }
    }

    /// Passes sockets 100, 101... for `wanted` into a table holding `others` (file 1 each) and
    /// the channel at `ends` (files 7 and 8), in the order `order`, as the kernel does (lowest free
    /// numbers), places them, and checks the result: every wanted number holds its socket with its
    /// flag, the others are untouched, nothing else is left open.
    fn check(others: &[u64], wanted: &[(u64, bool)], ends: (u64, u64), order: &[usize]) -> usize {
        let mut t = Table::default();
        for &o in others {
            t.0.insert(o, (1, false));
        }
        t.0.insert(ends.0, (7, true));
        t.0.insert(ends.1, (8, true));
        let mut landed = vec![0; wanted.len()];
        for &i in order {
            let n = (0..).find(|n| !t.0.contains_key(n)).unwrap();
            t.0.insert(n, (100 + i as u32, wanted[i].1));
            landed[i] = n;
        }
        let in_place = landed.iter().zip(wanted).filter(|(l, w)| **l == w.0).count();
        let spare = plan_places(&mut t, wanted, &mut landed, ends).unwrap();
        for n in spare {
            t.0.remove(&n).expect("a spare number is open");
        }
        for (i, &(fd, cloexec)) in wanted.iter().enumerate() {
            assert_eq!(t.0.get(&fd), Some(&(100 + i as u32, cloexec)), "fd {fd}");
        }
        for o in others {
            assert_eq!(t.0.get(o), Some(&(1, false)), "other fd {o} untouched");
        }
        assert_eq!(t.0.len(), others.len() + wanted.len(), "nothing else open: {:?}", t.0);
        in_place
    }

    #[test]
    fn sockets_land_at_their_numbers_when_those_are_the_lowest_free() {
        // fds 0-4 in place, the channel at 5 and 6, connections 5..=12: those at the channel's
        // numbers go last, the rest land where they belong.
        let wanted: Vec<(u64, bool)> = (5..=12).map(|n| (n, n % 2 == 0)).collect();
        let order: Vec<usize> = (2..wanted.len()).chain([0, 1]).collect();
        assert_eq!(check(&[0, 1, 2, 3, 4], &wanted, (5, 6), &order), 6);
    }

    #[test]
    fn gaps_chains_and_cycles_are_placed() {
        // Gaps (numbers placed later by others), a chain (a socket landed on another's number),
        // and plain sort orders that make cycles.
        let wanted = [(3, false), (7, true), (8, false), (20, true)];
        check(&[0, 1, 2, 5], &wanted, (4, 6), &[0, 1, 2, 3]);
        check(&[0, 1, 2, 5], &wanted, (4, 6), &[3, 2, 1, 0]);
        check(&[0], &[(2, false), (1, false)], (5, 6), &[0, 1]);
        check(&[], &[(1, false), (2, false), (0, true)], (3, 4), &[0, 1, 2]);
    }
}
