//! Pipes and FIFOs: saved with the bytes buffered in them (read without consuming them, with
//! `tee` from a `pidfd_getfd` duplicate) and their buffer size, restored as one new pipe whose
//! ends are handed to every holder, or by reopening the FIFO with a keeper of our own holding it
//! open. Either end of a pipe may be missing (nobody holds it any more): the new pipe's end of
//! that side is closed with the keepers, so a reader sees the buffered bytes then EOF and a
//! writer gets EPIPE, as before. A FIFO deleted while open is recreated under a temporary name
//! (`mknod`), opened by a keeper and unlinked at once; its holders reopen it through the keeper
//! (`/proc/self/fd/N`). A FIFO held by a process outside the checkpoint is refused.
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;

use super::{park, take_fd, FdKind, FdState, RestoreContext, SaveContext};
use crate::inject::Injector;
use crate::sys::proc as sysproc;
use crate::{EngineError, Result};

/// The inode of a pipe from its `/proc/PID/fd` link target (`pipe:[123]`).
pub(super) fn pipe_ino(target: &str) -> Option<u64> {
    target.strip_prefix("pipe:[")?.strip_suffix(']')?.parse().ok()
}

/// Saves fd `fd` of `pid`, one end of pipe `ino` (`write_end` for the write end), both of whose
/// ends the group holds; the buffered bytes are recorded with the first end saved.
pub(super) fn save_pipe(pid: i32, fd: i32, ino: u64, write_end: bool, pidfd: &OwnedFd, ctx: &mut SaveContext) -> Result<FdKind> {
    let dup = sysproc::pidfd_getfd(pidfd, fd).map_err(|source| EngineError::Sys { step: "pidfd_getfd pipe", pid, source })?;
    let size = sysproc::pipe_size(&dup).map_err(|source| EngineError::Sys { step: "pipe size", pid, source })?;
    let parts = if ctx.data_taken.insert(ino) {
        // The bytes are read from a read end: through /proc, a write end opens one.
        let read_end = if write_end {
            let path = format!("/proc/{pid}/fd/{fd}");
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path)
                .map_err(|e| EngineError::io("open read end of pipe", path.as_ref(), e))?
                .into()
        } else {
            dup.try_clone().map_err(|source| EngineError::Sys { step: "dup pipe", pid, source })?
        };
        sysproc::pipe_peek(&read_end).map_err(|source| EngineError::Sys { step: "read pipe buffer", pid, source })?
    } else {
        Vec::new()
    };
    let (data, packets) = packets_of(parts, ctx.packet_mode.contains(&ino));
    Ok(FdKind::Pipe { ino, write_end, size, data, packets })
}

/// Saves fd `fd` of `pid`, a FIFO at `path` (`deleted`: the path it had; `write_only`: opened
/// `O_WRONLY`) with device `dev` and inode `ino`; its buffered bytes are recorded with the first
/// fd of the FIFO saved. A FIFO that a process outside the group holds is refused.
pub(super) fn save_fifo(
    pid: i32,
    fd: i32,
    (path, deleted, write_only): (&str, bool, bool),
    (dev, ino): (u64, u64),
    pidfd: &OwnedFd,
    ctx: &mut SaveContext,
) -> Result<FdKind> {
    if let Some(other) = ctx.outside_holder(super::holders::Key::Fifo(dev, ino)) {
        return Err(super::unsupported(pid, fd, &format!("FIFO that process {other} outside the checkpoint holds too"), path));
    }
    let dup = sysproc::pidfd_getfd(pidfd, fd).map_err(|source| EngineError::Sys { step: "pidfd_getfd fifo", pid, source })?;
    let size = sysproc::pipe_size(&dup).map_err(|source| EngineError::Sys { step: "fifo size", pid, source })?;
    let parts = if ctx.data_taken.insert(ino) {
        // Like a pipe's write end, a write-only FIFO fd is read through a read end of our own.
        let read_end: OwnedFd = if write_only {
            let proc_path = format!("/proc/{pid}/fd/{fd}");
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&proc_path)
                .map_err(|e| EngineError::io("open read end of fifo", proc_path.as_ref(), e))?
                .into()
        } else {
            dup
        };
        sysproc::pipe_peek(&read_end).map_err(|source| EngineError::Sys { step: "read fifo buffer", pid, source })?
    } else {
        Vec::new()
    };
    // A lone packet in a FIFO reads like plain bytes: only boundaries tell packets apart here.
    let (data, packets) = packets_of(parts, false);
    Ok(FdKind::Fifo { path: path.to_string(), ino, data, packets, size, deleted })
}

/// The buffered bytes from the parts [`sysproc::pipe_peek`] read, and the packet lengths when
/// the pipe holds packets (several parts, or a packet-mode writer: `direct`).
fn packets_of(parts: Vec<Vec<u8>>, direct: bool) -> (Vec<u8>, Vec<u32>) {
    let packets = if parts.len() > 1 || (direct && !parts.is_empty()) { parts.iter().map(|p| p.len() as u32).collect() } else { Vec::new() };
    (parts.concat(), packets)
}

/// Writes the saved buffered bytes of a pipe or FIFO back into it through `fd` in the target; as
/// packets of the saved lengths when `packets` is not empty (the fd is put in packet mode for
/// that; its own flags are set later).
pub(super) fn refill(inj: &mut Injector, fd: u64, data: &[u8], packets: &[u32], what: &str) -> Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let buf = inj.scratch(data.len() as u64 + 8192)?;
    inj.write_mem(buf + 8192, data)?;
    let whole = [data.len() as u32];
    let writes: &[u32] = if packets.is_empty() {
        &whole
    } else {
        inj.call("fcntl(F_SETFL O_DIRECT)", libc::SYS_fcntl, [fd, libc::F_SETFL as u64, libc::O_DIRECT as u64, 0, 0, 0])?;
        packets
    };
    let mut at = 0u64;
    for &len in writes {
        let n = inj.call("refill pipe buffer", libc::SYS_write, [fd, buf + 8192 + at, u64::from(len), 0, 0, 0])?;
        if n != u64::from(len) {
            return Err(EngineError::Proc { pid: 0, detail: format!("{what}: refilled {n} of {len} bytes") });
        }
        at += n;
    }
    if !packets.is_empty() {
        inj.call("fcntl(F_SETFL)", libc::SYS_fcntl, [fd, libc::F_SETFL as u64, 0, 0, 0, 0])?;
    }
    Ok(())
}

/// Recreates a FIFO fd (`FdKind::Fifo`) in the process `inj` drives; returns the new fd.
pub(super) fn restore_fifo(inj: &mut Injector, vpid: i32, st: &FdState, ctx: &mut RestoreContext) -> Result<u64> {
    let FdKind::Fifo { path, ino, data, packets, size, deleted } = &st.kind else { unreachable!("a fifo") };
    let (ino, size, deleted) = (*ino, *size, *deleted);
    let path = ctx.rewrite(path);
    // A read-write end of our own keeps the FIFO open, so that reopening either end does not
    // block and refilled bytes stay buffered.
    if let std::collections::hash_map::Entry::Vacant(slot) = ctx.fifos.entry(ino) {
        let k = if deleted {
            let dir = std::path::Path::new(&path).parent().and_then(|d| d.to_str()).unwrap_or("/tmp").to_string();
            make_temp_fifo(inj, vpid, st.fd, &[dir.as_str(), "/tmp"], ino)?
        } else {
            super::open_path(inj, &path, (libc::O_RDWR | libc::O_NONBLOCK) as u32)?
        };
        let k = park(inj, k)?;
        slot.insert((vpid, k));
        if size > 0 {
            inj.call("fcntl(F_SETPIPE_SZ)", libc::SYS_fcntl, [k, libc::F_SETPIPE_SZ as u64, size as u64, 0, 0, 0])
                .map_err(|e| EngineError::Proc { pid: vpid, detail: format!("fd {}: set the size of fifo {path} to {size}: {e}", st.fd) })?;
        }
        refill(inj, k, data, packets, &format!("fifo {path}"))?;
    }
    let fd = if deleted {
        // Reopened through the keeper: the FIFO has no name any more.
        let (owner, k) = ctx.fifos[&ino];
        let tmp = take_fd(inj, vpid, owner, k)?;
        let fd = super::open_path(inj, &format!("/proc/self/fd/{tmp}"), st.flags | libc::O_NONBLOCK as u32)?;
        inj.call("close", libc::SYS_close, [tmp, 0, 0, 0, 0, 0])?;
        fd
    } else {
        super::open_path(inj, &path, st.flags | libc::O_NONBLOCK as u32)?
    };
    let status = st.flags & (libc::O_NONBLOCK | libc::O_APPEND) as u32;
    inj.call("fcntl(F_SETFL)", libc::SYS_fcntl, [fd, libc::F_SETFL as u64, u64::from(status), 0, 0, 0])?;
    Ok(fd)
}

/// Makes a FIFO under a temporary name in the first of `dirs` that takes it, opens it read-write
/// and unlinks it; returns the open fd.
fn make_temp_fifo(inj: &mut Injector, vpid: i32, fd: i32, dirs: &[&str], ino: u64) -> Result<u64> {
    for dir in dirs {
        let name = format!("{dir}/.zap-fifo-{ino}-{}", std::process::id());
        let p = inj.put_cstr(name.as_bytes())?;
        let rc = inj.syscall(libc::SYS_mknodat, [libc::AT_FDCWD as u64, p, u64::from(libc::S_IFIFO | 0o600), 0, 0, 0])?;
        if rc < 0 {
            continue;
        }
        let k = inj.syscall(libc::SYS_open, [p, (libc::O_RDWR | libc::O_NONBLOCK) as u64, 0, 0, 0, 0])?;
        inj.call("unlink temporary fifo", libc::SYS_unlink, [p, 0, 0, 0, 0, 0])?;
        if k >= 0 {
            return Ok(k as u64);
        }
    }
    Err(EngineError::Proc { pid: vpid, detail: format!("fd {fd}: could not recreate a deleted fifo in {dirs:?}") })
}

/// Recreates a pipe end (`FdKind::Pipe`): the first holder creates the pipe (with its size and
/// buffered bytes) and parks both ends; every holder takes its end from there.
pub(super) fn restore_pipe(
    inj: &mut Injector,
    vpid: i32,
    (ino, write_end, size, data, packets): (u64, bool, i32, &[u8], &[u32]),
    ctx: &mut RestoreContext,
) -> Result<u64> {
    let (owner, r, w) = match ctx.pipes.get(&ino) {
        Some(p) => *p,
        None => {
            let scratch = inj.scratch(8192)?;
            // Packet mode (O_DIRECT) is set per end with the other status flags.
            inj.call("pipe2", libc::SYS_pipe2, [scratch, 0, 0, 0, 0, 0])?;
            let b = inj.read_mem(scratch, 8)?;
            let r = u64::from(u32::from_le_bytes(b[0..4].try_into().expect("4")));
            let w = u64::from(u32::from_le_bytes(b[4..8].try_into().expect("4")));
            let (r, w) = (park(inj, r)?, park(inj, w)?);
            inj.call("fcntl(F_SETPIPE_SZ)", libc::SYS_fcntl, [w, libc::F_SETPIPE_SZ as u64, size as u64, 0, 0, 0])?;
            refill(inj, w, data, packets, &format!("pipe {ino}"))?;
            ctx.pipes.insert(ino, (vpid, r, w));
            (vpid, r, w)
        }
    };
    let end = if write_end { w } else { r };
    take_fd(inj, vpid, owner, end)
}
