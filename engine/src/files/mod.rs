//! File descriptors: regular files (path, flags, offset), directories, character devices and
//! deleted files ([`regular`]), pipes and FIFOs with the bytes buffered in them ([`pipes`]),
//! eventfds, timerfds, signalfds, inotify and epoll instances ([`anon`]), sockets
//! ([`crate::sockets`]), and standard streams connected outside the process.
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
mod anon;
mod pipes;
mod regular;

use std::collections::{HashMap, HashSet};

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
    /// [`regular::DELETED_FILE_LIMIT`] bytes) are saved. Restore makes an unnamed file (`O_TMPFILE`) with
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

/// What the fds saved so far look like, for processes saved together.
#[derive(Default)]
pub struct SaveContext {
    /// Pipe inode -> (has a read end, has a write end) over every process of the group.
    pub(crate) pipe_ends: HashMap<u64, (bool, bool)>,
    /// Fds saved so far: (host pid, vpid, fd, link target).
    saved: Vec<(i32, i32, i32, String)>,
    /// Pipes and FIFOs whose buffered bytes were recorded already.
    pub(crate) data_taken: HashSet<u64>,
    /// Sockets of the group.
    pub sockets: crate::sockets::SocketContext,
    /// Every fd of the group: (host pid, vpid, fd, link target), for finding the fds passed in
    /// unix socket messages among them.
    all_fds: Vec<(i32, i32, i32, String)>,
}

/// The pid process `pid` has in its innermost namespace.
fn ns_pid(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("NSpid:")).and_then(|v| v.split_whitespace().last()).and_then(|v| v.parse().ok())
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
        let mut queued = Vec::new();
        for &pid in pids {
            let vpid = ns_pid(pid).unwrap_or(pid);
            ctx.sockets.members.insert(pid, vpid);
            for (fd, target) in list_fds(pid)? {
                if let Some(ino) = socket_ino(&target) {
                    ctx.sockets.holders.entry(ino).or_insert((pid, fd));
                    // Unix sockets show how many fds wait in their queues.
                    if fdinfo(pid, fd)?.get("scm_fds").is_some_and(|n| n != "0") {
                        queued.push((pid, fd));
                    }
                }
                ctx.all_fds.push((pid, vpid, fd, target.clone()));
                if let Some(ino) = pipes::pipe_ino(&target) {
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
        for (pid, fd) in queued {
            crate::sockets::prescan_inflight(pid, fd, &mut ctx)?;
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
    ctx.sockets.members.entry(pid).or_insert(vpid);
    // Pipes of this process alone count when no group context knows them.
    let mut infos = HashMap::new();
    for (fd, target) in &fds {
        let info = fdinfo(pid, *fd)?;
        if let Some(ino) = socket_ino(target) {
            ctx.sockets.holders.entry(ino).or_insert((pid, *fd));
        }
        if let Some(ino) = pipes::pipe_ino(target) {
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
        let kind = classify(pid, fd, &target, info, flags, &pidfd, ctx)?;
        out.push(FdState { fd, flags, kind });
        ctx.saved.push((pid, vpid, fd, target));
    }
    Ok(out)
}

/// The error for an fd of a kind that cannot be saved.
pub(crate) fn unsupported(pid: i32, fd: i32, kind: &str, target: &str) -> EngineError {
    EngineError::Proc { pid, detail: format!("fd {fd}: unsupported kind {kind} ({target})") }
}

/// What fd `fd` of `pid` (link target `target`, fdinfo `info`, open flags `flags`) is.
fn classify(
    pid: i32,
    fd: i32,
    target: &str,
    info: &HashMap<String, String>,
    flags: u32,
    pidfd: &std::os::fd::OwnedFd,
    ctx: &mut SaveContext,
) -> Result<FdKind> {
    if let Some(ino) = pipes::pipe_ino(target) {
        return if ctx.pipe_ends[&ino] == (true, true) {
            let write_end = flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32;
            pipes::save_pipe(pid, fd, ino, write_end, pidfd, ctx)
        } else if fd <= 2 {
            Ok(FdKind::External { what: target.to_string() })
        } else {
            Err(unsupported(pid, fd, "pipe to a process outside the checkpoint", target))
        };
    }
    if let Some(ino) = socket_ino(target) {
        let dup = sysproc::pidfd_getfd(pidfd, fd).map_err(|source| EngineError::Sys { step: "pidfd_getfd socket", pid, source })?;
        return match crate::sockets::save(pid, fd, ino, &dup, ctx) {
            Ok(st) => Ok(FdKind::Socket(st)),
            Err(_) if fd <= 2 => Ok(FdKind::External { what: target.to_string() }),
            Err(e) => Err(e),
        };
    }
    if target.starts_with("/dev/pts/") || target == "/dev/tty" {
        return if fd <= 2 { Ok(FdKind::External { what: target.to_string() }) } else { Err(unsupported(pid, fd, "terminal", target)) };
    }
    if let Some(kind) = anon::save(pid, fd, target, info)? {
        return Ok(kind);
    }
    if target.starts_with('/') && !target.ends_with(" (deleted)") {
        return regular::save_path(pid, fd, target, info, pidfd, ctx);
    }
    if let Some(path) = target.strip_suffix(" (deleted)").filter(|p| p.starts_with('/')) {
        return regular::save_deleted(pid, fd, path, info, pidfd);
    }
    Err(unsupported(pid, fd, target.split(':').next().unwrap_or("unknown"), target))
}

/// Notes fd `fd` of `pid` (a copy of an fd passed in a unix socket message, link target
/// `target`) as held by the group before it is saved: a pipe end or socket that only a message
/// holds is then not taken for one held outside the checkpoint.
pub(crate) fn note_inflight(pid: i32, fd: i32, target: &str, ctx: &mut SaveContext) -> Result<()> {
    if let Some(ino) = socket_ino(target) {
        ctx.sockets.holders.entry(ino).or_insert((pid, fd));
    }
    if let Some(ino) = pipes::pipe_ino(target) {
        let write = fd_flags(&fdinfo(pid, fd)?) & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32;
        let e = ctx.pipe_ends.entry(ino).or_default();
        if write {
            e.1 = true;
        } else {
            e.0 = true;
        }
    }
    Ok(())
}

/// Describes an fd passed in a unix socket message, whose copy Zap holds as `f` (installed by a
/// peek): the same open file description as an fd of the group ([`FdKind::Dup`]), or a file
/// saved like any fd. Its number is Zap's, meaningless on restore.
pub(crate) fn save_inflight(f: &std::os::fd::OwnedFd, ctx: &mut SaveContext) -> Result<FdState> {
    use std::os::fd::AsRawFd;
    let me = std::process::id() as i32;
    let fd = f.as_raw_fd();
    let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    let info = fdinfo(me, fd)?;
    let flags = fd_flags(&info);
    for (p, vpid, pfd, t) in &ctx.all_fds {
        if *t == target && sysproc::same_file(me, fd, *p, *pfd).unwrap_or(false) {
            return Ok(FdState { fd: -1, flags, kind: FdKind::Dup { vpid: *vpid, fd: *pfd } });
        }
    }
    note_inflight(me, fd, &target, ctx)?;
    let pidfd = sysproc::pidfd_open(me).map_err(|source| EngineError::Sys { step: "pidfd_open", pid: me, source })?;
    let kind = classify(me, fd, &target, &info, flags, &pidfd, ctx)?;
    Ok(FdState { fd: -1, flags, kind })
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
    pub(crate) zap_pid: u32,
    /// Pipe inode -> (vpid of the process that created it, its read and write keeper fds).
    pub(crate) pipes: HashMap<u64, (i32, u64, u64)>,
    /// FIFO inode -> (vpid, keeper fd).
    pub(crate) fifos: HashMap<u64, (i32, u64)>,
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

    pub(crate) fn rewrite(&self, path: &str) -> String {
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
        v.extend(self.sockets.keepers(vpid));
        v
    }
}

/// Takes fd `fd` of process `vpid` (same PID namespace) into the process `inj` drives.
pub(crate) fn take_fd(inj: &mut Injector, self_vpid: i32, vpid: i32, fd: u64) -> Result<u64> {
    if vpid == self_vpid {
        return inj.call("fcntl(F_DUPFD)", libc::SYS_fcntl, [fd, libc::F_DUPFD as u64, 0, 0, 0, 0]);
    }
    let pidfd = inj.call("pidfd_open", libc::SYS_pidfd_open, [vpid as u64, 0, 0, 0, 0, 0])?;
    let got = inj.call("pidfd_getfd", libc::SYS_pidfd_getfd, [pidfd, fd, 0, 0, 0, 0]);
    inj.call("close pidfd", libc::SYS_close, [pidfd, 0, 0, 0, 0, 0])?;
    got
}

/// Parks fd `fd` at a number of 10000 or more, away from the numbers still to be placed.
pub(crate) fn park(inj: &mut Injector, fd: u64) -> Result<u64> {
    let hi = inj.call("fcntl(F_DUPFD)", libc::SYS_fcntl, [fd, libc::F_DUPFD_CLOEXEC as u64, 10000, 0, 0, 0])?;
    inj.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
    Ok(hi)
}

/// Opens `path` in the process `inj` drives with the saved open flags (those that create or
/// truncate left out), for reopening a saved fd.
pub(crate) fn open_path(inj: &mut Injector, path: &str, flags: u32) -> Result<u64> {
    let scratch = inj.put_cstr(path.as_bytes())?;
    let flags = flags & !((libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_CLOEXEC) as u32);
    inj.call("open", libc::SYS_open, [scratch, u64::from(flags), 0, 0, 0, 0])
        .map_err(|e| EngineError::Proc { pid: 0, detail: format!("reopen {path}: {e}") })
}

/// Recreates the saved fd `st` in the process `inj` drives (which sees itself as `vpid`) at
/// whatever number the kernel gives, and returns that number; [`restore`] then moves it to its
/// saved number. Epoll watches are added separately, once every fd exists.
pub fn open_one(inj: &mut Injector, vpid: i32, st: &FdState, ctx: &mut RestoreContext) -> Result<u64> {
    if let Some(fd) = anon::restore(inj, vpid, st)? {
        return Ok(fd);
    }
    Ok(match &st.kind {
        FdKind::Path { path, pos } => {
            let fd = open_path(inj, &ctx.rewrite(path), st.flags)?;
            inj.call("lseek", libc::SYS_lseek, [fd, *pos, libc::SEEK_SET as u64, 0, 0, 0])?;
            fd
        }
        FdKind::CharDev { path } => open_path(inj, path, st.flags)?,
        FdKind::Deleted { path, pos, data, memfd_seals } => regular::restore_deleted(inj, vpid, st, (path, *pos, data, *memfd_seals))?,
        FdKind::Dup { vpid: owner, fd } => take_fd(inj, vpid, *owner, *fd as u64)
            .map_err(|e| EngineError::Proc { pid: vpid, detail: format!("fd {}: take shared fd {fd} of pid {owner}: {e}", st.fd) })?,
        FdKind::Fifo { path, ino, data } => pipes::restore_fifo(inj, vpid, st, path, *ino, data, ctx)?,
        FdKind::Socket(sock) => {
            let fd = crate::sockets::restore(inj, vpid, sock, &mut ctx.sockets, &mut |inj, owner, fd| take_fd(inj, vpid, owner, fd))?;
            let status = st.flags & (libc::O_NONBLOCK as u32);
            inj.call("fcntl(F_SETFL)", libc::SYS_fcntl, [fd, libc::F_SETFL as u64, u64::from(status), 0, 0, 0])?;
            fd
        }
        FdKind::External { .. } => open_path(inj, &format!("/proc/{}/fd/{}", ctx.zap_pid, st.fd), st.flags)?,
        FdKind::Pipe { ino, write_end, size, data } => pipes::restore_pipe(inj, vpid, st, (*ino, *write_end, *size, data), ctx)?,
        FdKind::Epoll { .. } | FdKind::Timerfd { .. } | FdKind::Inotify { .. } | FdKind::Signalfd { .. } | FdKind::Eventfd { .. } => {
            unreachable!("restored by files::anon")
        }
    })
}

/// Recreates the fds in the process being restored (which sees itself as `vpid` and whose fd
/// table is empty). Pipe and FIFO keepers stay open; close them with [`RestoreContext::keepers`]
/// once every process of the group has its fds.
pub fn restore(inj: &mut Injector, vpid: i32, fds: &[FdState], ctx: &mut RestoreContext) -> Result<()> {
    for st in fds {
        let tmp = open_one(inj, vpid, st, ctx)?;
        place(inj, tmp, st)?;
    }
    anon::add_epoll_watches(inj, vpid, fds)
}

/// Closes fds `fds` in the process `inj` drives (the keepers of [`RestoreContext::keepers`]).
pub fn close_all(inj: &mut Injector, fds: &[u64]) -> Result<()> {
    for &fd in fds {
        inj.call("close keeper", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
    }
    Ok(())
}
