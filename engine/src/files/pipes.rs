//! Pipes and FIFOs: saved with the bytes buffered in them (read without consuming them, with
//! `tee` from a `pidfd_getfd` duplicate), restored as one new pipe whose ends are handed to every
//! holder, or by reopening the FIFO with a keeper of our own holding it open.
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
    let data = if ctx.data_taken.insert(ino) {
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
    Ok(FdKind::Pipe { ino, write_end, size, data })
}

/// Saves fd `fd` of `pid`, a FIFO at `path` with inode `ino`; its buffered bytes are recorded
/// with the first fd of the FIFO saved.
pub(super) fn save_fifo(pid: i32, fd: i32, path: &str, ino: u64, pidfd: &OwnedFd, ctx: &mut SaveContext) -> Result<FdKind> {
    let data = if ctx.data_taken.insert(ino) {
        let dup = sysproc::pidfd_getfd(pidfd, fd).map_err(|source| EngineError::Sys { step: "pidfd_getfd fifo", pid, source })?;
        sysproc::pipe_peek(&dup).map_err(|source| EngineError::Sys { step: "read fifo buffer", pid, source })?
    } else {
        Vec::new()
    };
    Ok(FdKind::Fifo { path: path.to_string(), ino, data })
}

/// Writes the saved buffered bytes of a pipe or FIFO back into it through `fd` in the target.
pub(super) fn refill(inj: &mut Injector, fd: u64, data: &[u8], what: &str) -> Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let buf = inj.scratch(data.len() as u64 + 8192)?;
    inj.write_mem(buf + 8192, data)?;
    let n = inj.call("refill pipe buffer", libc::SYS_write, [fd, buf + 8192, data.len() as u64, 0, 0, 0])?;
    if n != data.len() as u64 {
        return Err(EngineError::Proc { pid: 0, detail: format!("{what}: refilled {n} of {} bytes", data.len()) });
    }
    Ok(())
}

/// Recreates a FIFO fd (`FdKind::Fifo`) in the process `inj` drives; returns the new fd.
pub(super) fn restore_fifo(inj: &mut Injector, vpid: i32, st: &FdState, path: &str, ino: u64, data: &[u8], ctx: &mut RestoreContext) -> Result<u64> {
    // A read-write end of our own keeps the FIFO open, so that reopening either end does not
    // block and refilled bytes stay buffered.
    if let std::collections::hash_map::Entry::Vacant(slot) = ctx.fifos.entry(ino) {
        let k = super::open_path(inj, path, (libc::O_RDWR | libc::O_NONBLOCK) as u32)?;
        let k = park(inj, k)?;
        slot.insert((vpid, k));
        refill(inj, k, data, &format!("fifo {path}"))?;
    }
    let fd = super::open_path(inj, path, st.flags | libc::O_NONBLOCK as u32)?;
    let status = st.flags & (libc::O_NONBLOCK | libc::O_APPEND) as u32;
    inj.call("fcntl(F_SETFL)", libc::SYS_fcntl, [fd, libc::F_SETFL as u64, u64::from(status), 0, 0, 0])?;
    Ok(fd)
}

/// Recreates a pipe end (`FdKind::Pipe`): the first holder creates the pipe (with its size and
/// buffered bytes) and parks both ends; every holder takes its end from there.
pub(super) fn restore_pipe(
    inj: &mut Injector,
    vpid: i32,
    st: &FdState,
    (ino, write_end, size, data): (u64, bool, i32, &[u8]),
    ctx: &mut RestoreContext,
) -> Result<u64> {
    let (owner, r, w) = match ctx.pipes.get(&ino) {
        Some(&(owner, r, w)) => {
            // The bytes were recorded with an end restored after the one that made the pipe (an
            // end passed in a unix socket message is saved before and restored after the rest).
            if !data.is_empty() {
                let wfd = take_fd(inj, vpid, owner, w)?;
                refill(inj, wfd, data, &format!("pipe {ino}"))?;
                inj.call("close", libc::SYS_close, [wfd, 0, 0, 0, 0, 0])?;
            }
            (owner, r, w)
        }
        None => {
            let scratch = inj.scratch(8192)?;
            inj.call("pipe2", libc::SYS_pipe2, [scratch, 0, 0, 0, 0, 0])?;
            let b = inj.read_mem(scratch, 8)?;
            let r = u64::from(u32::from_le_bytes(b[0..4].try_into().expect("4")));
            let w = u64::from(u32::from_le_bytes(b[4..8].try_into().expect("4")));
            let (r, w) = (park(inj, r)?, park(inj, w)?);
            inj.call("fcntl(F_SETPIPE_SZ)", libc::SYS_fcntl, [w, libc::F_SETPIPE_SZ as u64, size as u64, 0, 0, 0])?;
            refill(inj, w, data, &format!("pipe {ino}"))?;
            ctx.pipes.insert(ino, (vpid, r, w));
            (vpid, r, w)
        }
    };
    let end = if write_end { w } else { r };
    let fd = take_fd(inj, vpid, owner, end)?;
    let status = st.flags & (libc::O_NONBLOCK as u32);
    inj.call("fcntl(F_SETFL)", libc::SYS_fcntl, [fd, libc::F_SETFL as u64, u64::from(status), 0, 0, 0])?;
    Ok(fd)
}
