//! Restoring a process's established TCP connections fast: only the socket's creation is
//! injected into the process; everything else is done by Zap on its duplicate of the socket.
//!
//! For each connection, in the order of its fd number: an injected `socket()` (with
//! `SOCK_CLOEXEC`/`SOCK_NONBLOCK` as the fd had them), made by the process itself (under the fsuid
//! of the saved owner: [`super::create_as`]), so the socket's owner (the uid `/proc/net/tcp`
//! shows) is the saved one and its cgroup (for cgroup BPF programs and nftables `socket cgroupv2`
//! rules) and the memory cgroup its buffers are charged to are the process's own, as with a fully
//! injected restore; then, only when the kernel did not give the
//! saved number, an injected `dup3` to it. Zap takes the socket with `pidfd_getfd` and restores
//! the connection on its duplicate ([`super::tcp::restore_conn`]: options, repair mode, sequence
//! numbers, `bind`, `connect`, queues, windows; all ordinary syscalls in Zap, spread over
//! threads). The numbers the kernel gave and that were not the saved ones are closed at the end
//! with one `close_range` per run. Per connection that is one or two injected syscalls instead
//! of some 25.
//!
//! Creating the sockets in Zap and passing them with `SCM_RIGHTS` would save the injected
//! `socket()` too, but sockets made by Zap belong to Zap's cgroup and memory cgroup, not the
//! pod's.
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
pub fn restore_all(inj: &mut Injector, conns: &mut [ConnFd], ctx: &SocketRestore) -> Result<Vec<(i32, i32)>> {
    let pid = inj.tid();
    conns.sort_by_key(|c| c.fd);
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
    // The connections, on Zap's duplicates, over threads.
    let work: Vec<(&ConnFd, &OwnedFd)> = conns.iter().zip(&dups).collect();
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
    let mut out = Vec::with_capacity(conns.len());
    for r in results {
        out.extend(r?);
    }
    Ok(out)
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
