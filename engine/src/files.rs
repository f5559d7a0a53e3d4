//! File descriptors: regular files (path, flags, offset), directories, character devices, pipes
//! and FIFOs (with the bytes buffered in them, read without consuming them), eventfds, and
//! standard streams connected outside the process.
//!
//! A pipe whose two ends the process holds is restored as one new pipe with both ends and its
//! data. A standard stream (fd 0-2) that leads outside the process (a terminal, a pipe or socket
//! to another process) is *external*: restore connects it to the same fd of the `zap restore`
//! command, as a shell job would be. Any other kind of fd fails the checkpoint with an error that
//! names the pid, the fd and the kind.
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::inject::Injector;
use crate::sys::proc as sysproc;
use crate::{EngineError, Result};

/// What an fd is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FdKind {
    /// A regular file or directory, reopened by path and seeked.
    Path {
        /// Path.
        path: String,
        /// Offset.
        pos: u64,
    },
    /// A character device (reopened by path).
    CharDev {
        /// Path, e.g. /dev/null.
        path: String,
    },
    /// One end of a pipe both of whose ends the process holds.
    Pipe {
        /// Pipe inode, shared by both ends.
        ino: u64,
        /// True for the write end.
        write_end: bool,
        /// Buffer size.
        size: i32,
        /// Bytes buffered (recorded on one end only).
        data: Vec<u8>,
    },
    /// A named pipe (FIFO), reopened by path.
    Fifo {
        /// Path.
        path: String,
        /// Its inode (several fds may share one FIFO).
        ino: u64,
        /// Bytes buffered (recorded on the first fd of the FIFO only).
        data: Vec<u8>,
    },
    /// An eventfd.
    Eventfd {
        /// Counter.
        count: u64,
        /// EFD_SEMAPHORE.
        semaphore: bool,
    },
    /// A standard stream leading outside the process.
    External {
        /// What it was (`pipe:[123]`, `/dev/pts/0`, `socket:[9]`).
        what: String,
    },
}

/// One saved fd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdState {
    /// Its number.
    pub fd: i32,
    /// open(2) flags as fdinfo shows them (includes O_CLOEXEC for the descriptor).
    pub flags: u32,
    /// Kind.
    pub kind: FdKind,
}

fn fdinfo(pid: i32, fd: i32) -> Result<HashMap<String, String>> {
    let path = format!("/proc/{pid}/fdinfo/{fd}");
    let text = std::fs::read_to_string(&path).map_err(|e| EngineError::io("read", path.as_ref(), e))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
        .collect())
}

fn pipe_ino(target: &str) -> Option<u64> {
    target.strip_prefix("pipe:[")?.strip_suffix(']')?.parse().ok()
}

/// Saves every fd of the stopped process `pid`.
pub fn save(pid: i32) -> Result<Vec<FdState>> {
    let dir = format!("/proc/{pid}/fd");
    let mut fds: Vec<(i32, String)> = std::fs::read_dir(&dir)
        .map_err(|e| EngineError::io("list fds", dir.as_ref(), e))?
        .flatten()
        .filter_map(|e| {
            let fd: i32 = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?.to_string_lossy().into_owned();
            Some((fd, target))
        })
        .collect();
    fds.sort();
    // Pipes: which inodes have both ends here.
    let mut ends: HashMap<u64, (bool, bool)> = HashMap::new();
    let mut infos = HashMap::new();
    for (fd, target) in &fds {
        let info = fdinfo(pid, *fd)?;
        if let Some(ino) = pipe_ino(target) {
            let flags = u32::from_str_radix(info.get("flags").map(String::as_str).unwrap_or("0"), 8).unwrap_or(0);
            let e = ends.entry(ino).or_default();
            if flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32 {
                e.1 = true;
            } else {
                e.0 = true;
            }
        }
        infos.insert(*fd, info);
    }
    let pidfd = sysproc::pidfd_open(pid).map_err(|source| EngineError::Sys { step: "pidfd_open", pid, source })?;
    let mut data_taken: Vec<u64> = Vec::new();
    let mut out = Vec::new();
    for (fd, target) in fds {
        let info = &infos[&fd];
        let flags = u32::from_str_radix(info.get("flags").map(String::as_str).unwrap_or("0"), 8).unwrap_or(0);
        let unsupported = |kind: &str| EngineError::Proc { pid, detail: format!("fd {fd}: unsupported kind {kind} ({target})") };
        let kind = if let Some(ino) = pipe_ino(&target) {
            if ends[&ino] == (true, true) {
                let write_end = flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32;
                let dup = sysproc::pidfd_getfd(&pidfd, fd)
                    .map_err(|source| EngineError::Sys { step: "pidfd_getfd pipe", pid, source })?;
                let size = sysproc::pipe_size(&dup).map_err(|source| EngineError::Sys { step: "pipe size", pid, source })?;
                let data = if !data_taken.contains(&ino) {
                    data_taken.push(ino);
                    sysproc::pipe_peek(&dup).map_err(|source| EngineError::Sys { step: "read pipe buffer", pid, source })?
                } else {
                    Vec::new()
                };
                FdKind::Pipe { ino, write_end, size, data }
            } else if fd <= 2 {
                FdKind::External { what: target.clone() }
            } else {
                return Err(unsupported("pipe to another process"));
            }
        } else if target.starts_with("socket:") || target.starts_with("/dev/pts/") || target == "/dev/tty" {
            if fd <= 2 {
                FdKind::External { what: target.clone() }
            } else {
                return Err(unsupported(if target.starts_with("socket:") { "socket" } else { "terminal" }));
            }
        } else if target == "anon_inode:[eventfd]" {
            let count = u64::from_str_radix(info.get("eventfd-count").map(String::as_str).unwrap_or("0"), 16).unwrap_or(0);
            let semaphore = info.get("eventfd-semaphore").is_some_and(|v| v == "1");
            FdKind::Eventfd { count, semaphore }
        } else if target.starts_with('/') && !target.ends_with(" (deleted)") {
            let meta = std::fs::metadata(&target).map_err(|e| EngineError::io("stat fd target", target.as_ref(), e))?;
            use std::os::unix::fs::FileTypeExt;
            let ft = meta.file_type();
            if ft.is_file() || ft.is_dir() {
                let pos = info.get("pos").and_then(|p| p.parse().ok()).unwrap_or(0);
                FdKind::Path { path: target.clone(), pos }
            } else if ft.is_char_device() {
                FdKind::CharDev { path: target.clone() }
            } else if ft.is_fifo() {
                use std::os::unix::fs::MetadataExt;
                let ino = meta.ino();
                let data = if !data_taken.contains(&ino) {
                    data_taken.push(ino);
                    let dup = sysproc::pidfd_getfd(&pidfd, fd)
                        .map_err(|source| EngineError::Sys { step: "pidfd_getfd fifo", pid, source })?;
                    sysproc::pipe_peek(&dup).map_err(|source| EngineError::Sys { step: "read fifo buffer", pid, source })?
                } else {
                    Vec::new()
                };
                FdKind::Fifo { path: target.clone(), ino, data }
            } else {
                return Err(unsupported("special file"));
            }
        } else if target.ends_with(" (deleted)") {
            return Err(unsupported("deleted file"));
        } else {
            return Err(unsupported(target.split(':').next().unwrap_or("unknown")));
        };
        out.push(FdState { fd, flags, kind });
    }
    Ok(out)
}

/// Writes the saved buffered bytes of a pipe or FIFO back into it through `fd` in the target.
fn refill(inj: &mut Injector, fd: u64, data: &[u8], what: &str) -> Result<()> {
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

/// Places fd `tmp` at number `fd` with the saved descriptor flags.
fn place(inj: &mut Injector, tmp: u64, st: &FdState) -> Result<()> {
    let cloexec = st.flags & libc::O_CLOEXEC as u32 != 0;
    if tmp != st.fd as u64 {
        inj.call("dup3", libc::SYS_dup3, [tmp, st.fd as u64, if cloexec { libc::O_CLOEXEC as u64 } else { 0 }, 0, 0, 0])?;
        inj.call("close", libc::SYS_close, [tmp, 0, 0, 0, 0, 0])?;
    } else if !cloexec {
        inj.call("fcntl(F_SETFD)", libc::SYS_fcntl, [tmp, libc::F_SETFD as u64, 0, 0, 0, 0])?;
    }
    Ok(())
}

/// Recreates the fds in the process being restored, whose fd table is empty. External standard
/// streams are connected to fd N of `zap_pid` (the restoring command), opened through /proc.
pub fn restore(inj: &mut Injector, fds: &[FdState], zap_pid: u32) -> Result<()> {
    let mut pipes: HashMap<u64, (u64, u64)> = HashMap::new();
    let mut fifo_keepers: HashMap<u64, u64> = HashMap::new();
    let open_path = |inj: &mut Injector, path: &str, flags: u32| -> Result<u64> {
        let scratch = inj.scratch(8192)?;
        let mut p = path.as_bytes().to_vec();
        p.push(0);
        inj.write_mem(scratch, &p)?;
        let flags = flags & !((libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_CLOEXEC) as u32);
        inj.call("open", libc::SYS_open, [scratch, u64::from(flags), 0, 0, 0, 0])
            .map_err(|e| EngineError::Proc { pid: 0, detail: format!("reopen {path}: {e}") })
    };
    for st in fds {
        let tmp = match &st.kind {
            FdKind::Path { path, pos } => {
                let fd = open_path(inj, path, st.flags)?;
                inj.call("lseek", libc::SYS_lseek, [fd, *pos, libc::SEEK_SET as u64, 0, 0, 0])?;
                fd
            }
            FdKind::CharDev { path } => open_path(inj, path, st.flags)?,
            FdKind::Fifo { path, ino, data } => {
                // A read-write end of our own keeps the FIFO open, so that reopening either end
                // does not block and refilled bytes stay buffered.
                let keeper = match fifo_keepers.get(ino) {
                    Some(k) => *k,
                    None => {
                        let k = open_path(inj, path, (libc::O_RDWR | libc::O_NONBLOCK) as u32)?;
                        let k = inj.call("fcntl(F_DUPFD)", libc::SYS_fcntl, [k, libc::F_DUPFD as u64, 10000, 0, 0, 0])
                            .and_then(|hi| inj.call("close", libc::SYS_close, [k, 0, 0, 0, 0, 0]).map(|_| hi))?;
                        fifo_keepers.insert(*ino, k);
                        k
                    }
                };
                refill(inj, keeper, data, &format!("fifo {path}"))?;
                let fd = open_path(inj, path, st.flags | libc::O_NONBLOCK as u32)?;
                let status = st.flags & (libc::O_NONBLOCK | libc::O_APPEND) as u32;
                inj.call("fcntl(F_SETFL)", libc::SYS_fcntl, [fd, libc::F_SETFL as u64, u64::from(status), 0, 0, 0])?;
                fd
            }
            FdKind::External { .. } => open_path(inj, &format!("/proc/{zap_pid}/fd/{}", st.fd), st.flags)?,
            FdKind::Eventfd { count, semaphore } => {
                let mut flags = st.flags & libc::O_NONBLOCK as u32;
                if *semaphore {
                    flags |= libc::EFD_SEMAPHORE as u32;
                }
                // eventfd2 takes a 32-bit initial value; a larger counter is added with a write.
                let scratch = inj.scratch(8192)?;
                let fd = inj.call("eventfd2", libc::SYS_eventfd2, [0, u64::from(flags), 0, 0, 0, 0])?;
                if *count > 0 {
                    inj.write_mem(scratch, &count.to_le_bytes())?;
                    inj.call("write eventfd", libc::SYS_write, [fd, scratch, 8, 0, 0, 0])?;
                }
                fd
            }
            FdKind::Pipe { ino, write_end, size, data } => {
                let (r, w) = match pipes.get(ino) {
                    Some(p) => *p,
                    None => {
                        let scratch = inj.scratch(8192)?;
                        inj.call("pipe2", libc::SYS_pipe2, [scratch, 0, 0, 0, 0, 0])?;
                        let b = inj.read_mem(scratch, 8)?;
                        let r = u64::from(u32::from_le_bytes(b[0..4].try_into().expect("4")));
                        let w = u64::from(u32::from_le_bytes(b[4..8].try_into().expect("4")));
                        // Keep both ends away from the numbers still to be placed.
                        let hi_r = inj.call("fcntl(F_DUPFD)", libc::SYS_fcntl, [r, libc::F_DUPFD as u64, 10000, 0, 0, 0])?;
                        let hi_w = inj.call("fcntl(F_DUPFD)", libc::SYS_fcntl, [w, libc::F_DUPFD as u64, 10000, 0, 0, 0])?;
                        inj.call("close", libc::SYS_close, [r, 0, 0, 0, 0, 0])?;
                        inj.call("close", libc::SYS_close, [w, 0, 0, 0, 0, 0])?;
                        inj.call("fcntl(F_SETPIPE_SZ)", libc::SYS_fcntl, [hi_w, libc::F_SETPIPE_SZ as u64, *size as u64, 0, 0, 0])?;
                        pipes.insert(*ino, (hi_r, hi_w));
                        (hi_r, hi_w)
                    }
                };
                refill(inj, w, data, &format!("pipe {ino}"))?;
                let end = if *write_end { w } else { r };
                let fd = inj.call("fcntl(F_DUPFD)", libc::SYS_fcntl, [end, libc::F_DUPFD as u64, 0, 0, 0, 0])?;
                let status = st.flags & (libc::O_NONBLOCK as u32);
                inj.call("fcntl(F_SETFL)", libc::SYS_fcntl, [fd, libc::F_SETFL as u64, u64::from(status), 0, 0, 0])?;
                fd
            }
        };
        place(inj, tmp, st)?;
    }
    for k in fifo_keepers.into_values() {
        inj.call("close", libc::SYS_close, [k, 0, 0, 0, 0, 0])?;
    }
    for (r, w) in pipes.into_values() {
        inj.call("close", libc::SYS_close, [r, 0, 0, 0, 0, 0])?;
        inj.call("close", libc::SYS_close, [w, 0, 0, 0, 0, 0])?;
    }
    Ok(())
}
