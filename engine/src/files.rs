//! File descriptors: regular files (path, flags, offset), directories, character devices, pipes
//! and FIFOs (with the bytes buffered in them, read without consuming them), eventfds, timerfds,
//! signalfds, inotify instances (watches found again from their file handles), epoll instances, sockets ([`crate::sockets`]), and standard streams connected
//! outside the process.
//!
//! A pipe whose two ends the process holds is restored as one new pipe with both ends and its
//! data. A standard stream (fd 0-2) that leads outside the process (a terminal, a pipe or socket
//! to another process) is *external*: restore connects it to the same fd of the `zap restore`
//! command, as a shell job would be. Any other kind of fd fails the checkpoint with an error that
//! names the pid, the fd and the kind.
//!
//! ## Shared descriptions
//! Processes saved together (a pod) share a [`SaveContext`]. An fd that is the same open file
//! description as an fd saved earlier (found with `kcmp(KCMP_FILE)`: a file opened before
//! `fork`, a `dup`) is saved as [`FdKind::Dup`] and restored by taking that fd from the process
//! that recreated it (`pidfd_getfd` injected into the restoring process), so offsets and status
//! flags stay shared. A pipe whose ends are held by different processes of the group is created
//! by the first of them; its other end is parked at a high fd (a *keeper*) until every process of
//! the group has taken what it needs, then closed ([`RestoreContext::keepers`]).
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::OpenOptionsExt;

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
    /// The same open file description as fd `fd` of process `vpid`, saved before this one.
    Dup {
        /// The process holding the first fd (its pid as the group sees it).
        vpid: i32,
        /// That fd.
        fd: i32,
    },
    /// A regular file that was deleted while open, or a memfd: its contents (at most
    /// [`DELETED_FILE_LIMIT`] bytes) are saved. Restore makes an unnamed file (`O_TMPFILE`) with
    /// them in the same directory (or /tmp when that is gone), or a memfd of the same name with
    /// the same seals.
    Deleted {
        /// Its path before it was deleted (`/memfd:NAME` for a memfd).
        path: String,
        /// Offset.
        pos: u64,
        /// Contents.
        data: Vec<u8>,
        /// For a memfd: its seals (F_GET_SEALS).
        memfd_seals: Option<u32>,
    },
    /// A socket.
    Socket(crate::sockets::SocketState),
    /// A timerfd: its clock and, as left to run, the time to the next expiration and the
    /// interval. Expirations not yet read (`ticks`) come back as one immediate expiration.
    Timerfd {
        /// CLOCK_* id.
        clockid: i32,
        /// Time to the next expiration (s, ns); zero when disarmed.
        value: (i64, i64),
        /// Interval (s, ns).
        interval: (i64, i64),
        /// Expirations not yet read.
        ticks: u64,
    },
    /// An inotify instance and its watches: (watch descriptor, path, mask). Events queued at
    /// checkpoint time are not kept.
    Inotify {
        /// The watches.
        watches: Vec<(i32, String, u32)>,
    },
    /// A signalfd and the signals it reads.
    Signalfd {
        /// Signal mask.
        mask: u64,
    },
    /// An epoll instance and what it watches: (target fd, event mask, user data). The watches
    /// are added once every fd of the process exists.
    Epoll {
        /// The watched fds.
        watches: Vec<(i32, u32, u64)>,
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

/// The largest deleted-but-open file a checkpoint keeps (its bytes go into the image state).
pub const DELETED_FILE_LIMIT: u64 = 64 << 20;

/// What the fds saved so far look like, for processes saved together.
#[derive(Default)]
pub struct SaveContext {
    /// Pipe inode -> (has a read end, has a write end) over every process of the group.
    pipe_ends: HashMap<u64, (bool, bool)>,
    /// Fds saved so far: (host pid, vpid, fd, link target).
    saved: Vec<(i32, i32, i32, String)>,
    /// Pipes and FIFOs whose buffered bytes were recorded already.
    data_taken: HashSet<u64>,
    /// Sockets of the group.
    pub sockets: crate::sockets::SocketContext,
}

fn socket_ino(target: &str) -> Option<u64> {
    target.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

fn list_fds(pid: i32) -> Result<Vec<(i32, String)>> {
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
    Ok(fds)
}

fn fd_flags(info: &HashMap<String, String>) -> u32 {
    u32::from_str_radix(info.get("flags").map(String::as_str).unwrap_or("0"), 8).unwrap_or(0)
}

impl SaveContext {
    /// A context for the group of (stopped) processes `pids`: pipes between them are allowed.
    pub fn for_group(pids: &[i32]) -> Result<Self> {
        let mut ctx = SaveContext::default();
        for &pid in pids {
            for (fd, target) in list_fds(pid)? {
                if let Some(ino) = socket_ino(&target) {
                    ctx.sockets.holders.entry(ino).or_insert((pid, fd));
                }
                if let Some(ino) = pipe_ino(&target) {
                    let write = fd_flags(&fdinfo(pid, fd)?) & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32;
                    let e = ctx.pipe_ends.entry(ino).or_default();
                    if write {
                        e.1 = true;
                    } else {
                        e.0 = true;
                    }
                }
            }
        }
        Ok(ctx)
    }

    /// An earlier saved fd that is the same open file description as `fd` of `pid`.
    fn earlier(&self, pid: i32, fd: i32, target: &str) -> Result<Option<(i32, i32)>> {
        for (p, vpid, f, t) in &self.saved {
            if t == target {
                let same = sysproc::same_file(*p, *f, pid, fd).map_err(|source| EngineError::Sys { step: "kcmp", pid, source })?;
                if same {
                    return Ok(Some((*vpid, *f)));
                }
            }
        }
        Ok(None)
    }
}

/// Saves every fd of the stopped process `pid` (which sees itself as `vpid`).
pub fn save(pid: i32, vpid: i32, ctx: &mut SaveContext) -> Result<Vec<FdState>> {
    let fds = list_fds(pid)?;
    // Pipes of this process alone count when no group context knows them.
    let mut infos = HashMap::new();
    for (fd, target) in &fds {
        let info = fdinfo(pid, *fd)?;
        if let Some(ino) = socket_ino(target) {
            ctx.sockets.holders.entry(ino).or_insert((pid, *fd));
        }
        if let Some(ino) = pipe_ino(target) {
            let write = fd_flags(&info) & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32;
            let e = ctx.pipe_ends.entry(ino).or_default();
            if write {
                e.1 = true;
            } else {
                e.0 = true;
            }
        }
        infos.insert(*fd, info);
    }
    let pidfd = sysproc::pidfd_open(pid).map_err(|source| EngineError::Sys { step: "pidfd_open", pid, source })?;
    let mut out = Vec::new();
    for (fd, target) in fds {
        let info = &infos[&fd];
        let flags = fd_flags(info);
        if let Some((owner, owner_fd)) = ctx.earlier(pid, fd, &target)? {
            out.push(FdState { fd, flags, kind: FdKind::Dup { vpid: owner, fd: owner_fd } });
            ctx.saved.push((pid, vpid, fd, target));
            continue;
        }
        let unsupported = |kind: &str| EngineError::Proc { pid, detail: format!("fd {fd}: unsupported kind {kind} ({target})") };
        let kind = if let Some(ino) = pipe_ino(&target) {
            if ctx.pipe_ends[&ino] == (true, true) {
                let write_end = flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32;
                let dup = sysproc::pidfd_getfd(&pidfd, fd)
                    .map_err(|source| EngineError::Sys { step: "pidfd_getfd pipe", pid, source })?;
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
                FdKind::Pipe { ino, write_end, size, data }
            } else if fd <= 2 {
                FdKind::External { what: target.clone() }
            } else {
                return Err(unsupported("pipe to a process outside the checkpoint"));
            }
        } else if let Some(ino) = socket_ino(&target) {
            let dup = sysproc::pidfd_getfd(&pidfd, fd).map_err(|source| EngineError::Sys { step: "pidfd_getfd socket", pid, source })?;
            match crate::sockets::save(pid, fd, ino, &dup, &mut ctx.sockets) {
                Ok(st) => FdKind::Socket(st),
                Err(_) if fd <= 2 => FdKind::External { what: target.clone() },
                Err(e) => return Err(e),
            }
        } else if target.starts_with("/dev/pts/") || target == "/dev/tty" {
            if fd <= 2 {
                FdKind::External { what: target.clone() }
            } else {
                return Err(unsupported(if target.starts_with("socket:") { "socket" } else { "terminal" }));
            }
        } else if target == "anon_inode:[timerfd]" {
            let pair = |key: &str| -> Option<(i64, i64)> {
                let v = info.get(key)?.trim().trim_start_matches('(').trim_end_matches(')');
                let (a, b) = v.split_once(',')?;
                Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
            };
            let bad = || EngineError::Proc { pid, detail: format!("fd {fd}: unreadable timerfd state") };
            FdKind::Timerfd {
                clockid: info.get("clockid").and_then(|v| v.parse().ok()).ok_or_else(bad)?,
                value: pair("it_value").ok_or_else(bad)?,
                interval: pair("it_interval").ok_or_else(bad)?,
                ticks: info.get("ticks").and_then(|v| v.parse().ok()).unwrap_or(0),
            }
        } else if target == "anon_inode:inotify" {
            let path = format!("/proc/{pid}/fdinfo/{fd}");
            let text = std::fs::read_to_string(&path).map_err(|e| EngineError::io("read", path.as_ref(), e))?;
            let mut watches = Vec::new();
            for line in text.lines().filter_map(|l| l.strip_prefix("inotify ")) {
                let field = |key: &str| line.split_whitespace().find_map(|w| w.strip_prefix(key));
                let bad = || EngineError::Proc { pid, detail: format!("fd {fd}: unreadable inotify watch {line:?}") };
                let wd: i32 = field("wd:").and_then(|v| v.parse().ok()).ok_or_else(bad)?;
                let sdev = field("sdev:").and_then(|v| u64::from_str_radix(v, 16).ok()).ok_or_else(bad)?;
                let mask = field("mask:").and_then(|v| u32::from_str_radix(v, 16).ok()).ok_or_else(bad)?;
                let htype: i32 = field("fhandle-type:").and_then(|v| v.parse().ok()).ok_or_else(bad)?;
                let handle = field("f_handle:")
                    .and_then(|v| (0..v.len() / 2).map(|i| u8::from_str_radix(&v[2 * i..2 * i + 2], 16).ok()).collect::<Option<Vec<u8>>>())
                    .ok_or_else(bad)?;
                let target = sysproc::path_of_handle(pid, sdev, htype, &handle)
                    .map_err(|e| EngineError::Proc { pid, detail: format!("fd {fd}: inotify watch {wd}: find its file: {e}") })?;
                if target.ends_with(" (deleted)") {
                    return Err(unsupported("inotify watch on a deleted file"));
                }
                watches.push((wd, target, mask));
            }
            watches.sort();
            FdKind::Inotify { watches }
        } else if target == "anon_inode:[signalfd]" {
            let mask = info.get("sigmask").and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
            FdKind::Signalfd { mask: mask.ok_or_else(|| EngineError::Proc { pid, detail: format!("fd {fd}: unreadable signalfd mask") })? }
        } else if target == "anon_inode:[eventpoll]" {
            let path = format!("/proc/{pid}/fdinfo/{fd}");
            let text = std::fs::read_to_string(&path).map_err(|e| EngineError::io("read", path.as_ref(), e))?;
            let mut watches = Vec::new();
            for line in text.lines().filter(|l| l.starts_with("tfd:")) {
                let words: Vec<&str> = line.split_whitespace().collect();
                let field = |key: &str| words.iter().position(|w| *w == key).and_then(|i| words.get(i + 1)).copied();
                let parsed = (|| {
                    let tfd: i32 = field("tfd:")?.parse().ok()?;
                    let events = u32::from_str_radix(field("events:")?, 16).ok()?;
                    let data = u64::from_str_radix(field("data:")?, 16).ok()?;
                    Some((tfd, events, data))
                })();
                watches.push(parsed.ok_or_else(|| EngineError::Proc { pid, detail: format!("fd {fd}: unreadable epoll watch {line:?}") })?);
            }
            FdKind::Epoll { watches }
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
                let data = if ctx.data_taken.insert(ino) {
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
        } else if let Some(path) = target.strip_suffix(" (deleted)").filter(|p| p.starts_with('/')) {
            let dup = sysproc::pidfd_getfd(&pidfd, fd).map_err(|source| EngineError::Sys { step: "pidfd_getfd deleted file", pid, source })?;
            let file = std::fs::File::from(dup);
            let meta = file.metadata().map_err(|e| EngineError::io("stat deleted file", path.as_ref(), e))?;
            if !meta.is_file() {
                return Err(unsupported("deleted special file"));
            }
            if meta.len() > DELETED_FILE_LIMIT {
                return Err(unsupported(&format!("deleted file of {} bytes (the limit is {DELETED_FILE_LIMIT})", meta.len())));
            }
            let mut data = vec![0u8; meta.len() as usize];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut data, 0).map_err(|e| EngineError::io("read deleted file", path.as_ref(), e))?;
            let pos = info.get("pos").and_then(|p| p.parse().ok()).unwrap_or(0);
            let memfd_seals = path.starts_with("/memfd:").then(|| sysproc::memfd_seals(&file)).transpose()
                .map_err(|source| EngineError::Sys { step: "F_GET_SEALS", pid, source })?;
            FdKind::Deleted { path: path.to_string(), pos, data, memfd_seals }
        } else {
            return Err(unsupported(target.split(':').next().unwrap_or("unknown")));
        };
        out.push(FdState { fd, flags, kind });
        ctx.saved.push((pid, vpid, fd, target));
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

/// What the processes restored so far created, for processes restored together.
pub struct RestoreContext {
    zap_pid: u32,
    /// Pipe inode -> (vpid of the process that created it, its read and write keeper fds).
    pipes: HashMap<u64, (i32, u64, u64)>,
    /// FIFO inode -> (vpid, keeper fd).
    fifos: HashMap<u64, (i32, u64)>,
    /// Sockets created so far.
    pub sockets: crate::sockets::SocketRestore,
    /// Path prefixes to rewrite when reopening files: (saved prefix, prefix to open instead).
    pub path_map: Vec<(String, String)>,
}

impl RestoreContext {
    /// A context for a restore run by the process `zap_pid` (external standard streams are
    /// reopened through its /proc fds).
    pub fn new(zap_pid: u32) -> Self {
        RestoreContext { zap_pid, pipes: HashMap::new(), fifos: HashMap::new(), sockets: Default::default(), path_map: Vec::new() }
    }

    fn rewrite(&self, path: &str) -> String {
        for (from, to) in &self.path_map {
            if let Some(rest) = path.strip_prefix(from.as_str()) {
                return format!("{to}{rest}");
            }
        }
        path.to_string()
    }

    /// The keeper fds left in process `vpid`, to be closed once every process has its fds.
    pub fn keepers(&self, vpid: i32) -> Vec<u64> {
        let mut v: Vec<u64> = self.pipes.values().filter(|p| p.0 == vpid).flat_map(|p| [p.1, p.2]).collect();
        v.extend(self.fifos.values().filter(|f| f.0 == vpid).map(|f| f.1));
        v.extend(self.sockets.parked.values().filter(|s| s.0 == vpid).map(|s| s.1));
        v
    }
}

/// Takes fd `fd` of process `vpid` (same PID namespace) into the process `inj` drives.
fn take_fd(inj: &mut Injector, self_vpid: i32, vpid: i32, fd: u64) -> Result<u64> {
    if vpid == self_vpid {
        return inj.call("fcntl(F_DUPFD)", libc::SYS_fcntl, [fd, libc::F_DUPFD as u64, 0, 0, 0, 0]);
    }
    let pidfd = inj.call("pidfd_open", libc::SYS_pidfd_open, [vpid as u64, 0, 0, 0, 0, 0])?;
    let got = inj.call("pidfd_getfd", libc::SYS_pidfd_getfd, [pidfd, fd, 0, 0, 0, 0]);
    inj.call("close pidfd", libc::SYS_close, [pidfd, 0, 0, 0, 0, 0])?;
    got
}

/// Parks fd `fd` at a number of 10000 or more, away from the numbers still to be placed.
fn park(inj: &mut Injector, fd: u64) -> Result<u64> {
    let hi = inj.call("fcntl(F_DUPFD)", libc::SYS_fcntl, [fd, libc::F_DUPFD_CLOEXEC as u64, 10000, 0, 0, 0])?;
    inj.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
    Ok(hi)
}

/// Recreates the fds in the process being restored (which sees itself as `vpid` and whose fd
/// table is empty). Pipe and FIFO keepers stay open; close them with [`RestoreContext::keepers`]
/// once every process of the group has its fds.
pub fn restore(inj: &mut Injector, vpid: i32, fds: &[FdState], ctx: &mut RestoreContext) -> Result<()> {
    let open_path = |inj: &mut Injector, path: &str, flags: u32| -> Result<u64> {
        let scratch = inj.put_cstr(path.as_bytes())?;
        let flags = flags & !((libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_CLOEXEC) as u32);
        inj.call("open", libc::SYS_open, [scratch, u64::from(flags), 0, 0, 0, 0])
            .map_err(|e| EngineError::Proc { pid: 0, detail: format!("reopen {path}: {e}") })
    };
    for st in fds {
        let tmp = match &st.kind {
            FdKind::Path { path, pos } => {
                let fd = open_path(inj, &ctx.rewrite(path), st.flags)?;
                inj.call("lseek", libc::SYS_lseek, [fd, *pos, libc::SEEK_SET as u64, 0, 0, 0])?;
                fd
            }
            FdKind::CharDev { path } => open_path(inj, path, st.flags)?,
            FdKind::Deleted { path, pos, data, memfd_seals } => {
                let dir = std::path::Path::new(path).parent().and_then(|d| d.to_str()).unwrap_or("/tmp").to_string();
                let tmpfile = (libc::O_TMPFILE | libc::O_RDWR) as u64;
                let mut fd = None;
                if let (Some(name), Some(_)) = (path.strip_prefix("/memfd:"), memfd_seals) {
                    let scratch = inj.put_cstr(name.as_bytes())?;
                    let flags = libc::MFD_ALLOW_SEALING as u64;
                    fd = Some(inj.call("memfd_create", libc::SYS_memfd_create, [scratch, flags, 0, 0, 0, 0])?);
                }
                for d in [dir.as_str(), "/tmp"].into_iter().filter(|_| fd.is_none()) {
                    let scratch = inj.put_cstr(d.as_bytes())?;
                    let rc = inj.syscall(libc::SYS_open, [scratch, tmpfile, 0o600, 0, 0, 0])?;
                    if rc >= 0 {
                        fd = Some(rc as u64);
                        break;
                    }
                }
                let fd = fd.ok_or_else(|| EngineError::Proc { pid: vpid, detail: format!("fd {}: no unnamed file for deleted {path}", st.fd) })?;
                let scratch = inj.scratch((data.len() as u64).min(4 << 20) + 8192)?;
                let mut done = 0usize;
                while done < data.len() {
                    let n = (data.len() - done).min(4 << 20);
                    inj.write_mem(scratch, &data[done..done + n])?;
                    let w = inj.call("write deleted file", libc::SYS_pwrite64, [fd, scratch, n as u64, done as u64, 0, 0])?;
                    done += w as usize;
                }
                inj.call("lseek", libc::SYS_lseek, [fd, *pos, libc::SEEK_SET as u64, 0, 0, 0])?;
                if let Some(seals) = memfd_seals.filter(|s| *s != 0) {
                    inj.call("fcntl(F_ADD_SEALS)", libc::SYS_fcntl, [fd, libc::F_ADD_SEALS as u64, u64::from(seals), 0, 0, 0])?;
                }
                let status = st.flags & (libc::O_APPEND | libc::O_NONBLOCK) as u32;
                inj.call("fcntl(F_SETFL)", libc::SYS_fcntl, [fd, libc::F_SETFL as u64, u64::from(status), 0, 0, 0])?;
                fd
            }
            FdKind::Dup { vpid: owner, fd } => take_fd(inj, vpid, *owner, *fd as u64)
                .map_err(|e| EngineError::Proc { pid: vpid, detail: format!("fd {}: take shared fd {fd} of pid {owner}: {e}", st.fd) })?,
            FdKind::Fifo { path, ino, data } => {
                // A read-write end of our own keeps the FIFO open, so that reopening either end
                // does not block and refilled bytes stay buffered.
                if !ctx.fifos.contains_key(ino) {
                    let k = open_path(inj, path, (libc::O_RDWR | libc::O_NONBLOCK) as u32)?;
                    let k = park(inj, k)?;
                    ctx.fifos.insert(*ino, (vpid, k));
                    refill(inj, k, data, &format!("fifo {path}"))?;
                }
                let fd = open_path(inj, path, st.flags | libc::O_NONBLOCK as u32)?;
                let status = st.flags & (libc::O_NONBLOCK | libc::O_APPEND) as u32;
                inj.call("fcntl(F_SETFL)", libc::SYS_fcntl, [fd, libc::F_SETFL as u64, u64::from(status), 0, 0, 0])?;
                fd
            }
            FdKind::Socket(sock) => {
                let fd = crate::sockets::restore(inj, vpid, sock, &mut ctx.sockets, &mut |inj, owner, fd| take_fd(inj, vpid, owner, fd))?;
                let status = st.flags & (libc::O_NONBLOCK as u32);
                inj.call("fcntl(F_SETFL)", libc::SYS_fcntl, [fd, libc::F_SETFL as u64, u64::from(status), 0, 0, 0])?;
                fd
            }
            FdKind::Epoll { .. } => inj.call("epoll_create1", libc::SYS_epoll_create1, [0, 0, 0, 0, 0, 0])?,
            FdKind::Timerfd { clockid, value, interval, ticks } => {
                let flags = u64::from(st.flags & libc::O_NONBLOCK as u32);
                let fd = inj.call("timerfd_create", libc::SYS_timerfd_create, [*clockid as u64, flags, 0, 0, 0, 0])?;
                // Unread expirations come back as one that is due at once.
                let value = if *ticks > 0 { (0, 1) } else { *value };
                if value != (0, 0) {
                    let scratch = inj.scratch(4096)?;
                    let spec: Vec<u8> = [interval.0, interval.1, value.0, value.1].iter().flat_map(|w| w.to_ne_bytes()).collect();
                    inj.write_mem(scratch, &spec)?;
                    inj.call("timerfd_settime", libc::SYS_timerfd_settime, [fd, 0, scratch, 0, 0, 0])?;
                }
                fd
            }
            FdKind::Inotify { watches } => {
                // Watch descriptors are handed out in increasing order: throwaway watches on "/"
                // fill the gaps, and the events their removal queues are read away.
                let fd = inj.call("inotify_init1", libc::SYS_inotify_init1, [libc::IN_NONBLOCK as u64, 0, 0, 0, 0, 0])?;
                let scratch = inj.scratch(8192)?;
                let mut cur = 0i32;
                for (wd, path, mask) in watches {
                    while cur + 1 < *wd {
                        let root = inj.put_cstr(b"/")?;
                        let d = inj.call("inotify_add_watch (gap)", libc::SYS_inotify_add_watch, [fd, root, libc::IN_ATTRIB as u64, 0, 0, 0])?;
                        inj.call("inotify_rm_watch (gap)", libc::SYS_inotify_rm_watch, [fd, d, 0, 0, 0, 0])?;
                        cur = d as i32;
                    }
                    let p = inj.put_cstr(path.as_bytes())?;
                    let got = inj
                        .call("inotify_add_watch", libc::SYS_inotify_add_watch, [fd, p, u64::from(*mask), 0, 0, 0])
                        .map_err(|e| EngineError::Proc { pid: vpid, detail: format!("fd {}: watch {path} again: {e}", st.fd) })?;
                    if got as i32 != *wd {
                        return Err(EngineError::Proc { pid: vpid, detail: format!("fd {}: watch {path} came back as {got}, not {wd}", st.fd) });
                    }
                    cur = *wd;
                }
                while inj.syscall(libc::SYS_read, [fd, scratch, 8192, 0, 0, 0])? > 0 {}
                let status = u64::from(st.flags & libc::O_NONBLOCK as u32);
                inj.call("fcntl(F_SETFL)", libc::SYS_fcntl, [fd, libc::F_SETFL as u64, status, 0, 0, 0])?;
                fd
            }
            FdKind::Signalfd { mask } => {
                let scratch = inj.scratch(4096)?;
                inj.write_mem(scratch, &mask.to_ne_bytes())?;
                let flags = u64::from(st.flags & libc::O_NONBLOCK as u32);
                inj.call("signalfd4", libc::SYS_signalfd4, [u64::MAX, scratch, 8, flags, 0, 0])?
            }
            FdKind::External { .. } => open_path(inj, &format!("/proc/{}/fd/{}", ctx.zap_pid, st.fd), st.flags)?,
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
                let (owner, r, w) = match ctx.pipes.get(ino) {
                    Some(p) => *p,
                    None => {
                        let scratch = inj.scratch(8192)?;
                        inj.call("pipe2", libc::SYS_pipe2, [scratch, 0, 0, 0, 0, 0])?;
                        let b = inj.read_mem(scratch, 8)?;
                        let r = u64::from(u32::from_le_bytes(b[0..4].try_into().expect("4")));
                        let w = u64::from(u32::from_le_bytes(b[4..8].try_into().expect("4")));
                        let (r, w) = (park(inj, r)?, park(inj, w)?);
                        inj.call("fcntl(F_SETPIPE_SZ)", libc::SYS_fcntl, [w, libc::F_SETPIPE_SZ as u64, *size as u64, 0, 0, 0])?;
                        refill(inj, w, data, &format!("pipe {ino}"))?;
                        ctx.pipes.insert(*ino, (vpid, r, w));
                        (vpid, r, w)
                    }
                };
                let end = if *write_end { w } else { r };
                let fd = take_fd(inj, vpid, owner, end)?;
                let status = st.flags & (libc::O_NONBLOCK as u32);
                inj.call("fcntl(F_SETFL)", libc::SYS_fcntl, [fd, libc::F_SETFL as u64, u64::from(status), 0, 0, 0])?;
                fd
            }
        };
        place(inj, tmp, st)?;
    }
    // Epoll watches, now that every fd they name exists.
    for st in fds {
        if let FdKind::Epoll { watches } = &st.kind {
            for &(tfd, events, data) in watches {
                let scratch = inj.scratch(4096)?;
                let mut ev = events.to_ne_bytes().to_vec();
                ev.extend_from_slice(&data.to_ne_bytes());
                inj.write_mem(scratch, &ev)?;
                let args = [st.fd as u64, libc::EPOLL_CTL_ADD as u64, tfd as u64, scratch, 0, 0];
                inj.call("epoll_ctl(ADD)", libc::SYS_epoll_ctl, args)
                    .map_err(|e| EngineError::Proc { pid: vpid, detail: format!("fd {}: watch fd {tfd} again: {e}", st.fd) })?;
            }
        }
    }
    Ok(())
}

/// Closes fds `fds` in the process `inj` drives (the keepers of [`RestoreContext::keepers`]).
pub fn close_all(inj: &mut Injector, fds: &[u64]) -> Result<()> {
    for &fd in fds {
        inj.call("close keeper", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
    }
    Ok(())
}
