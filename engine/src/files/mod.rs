//! File descriptors: regular files (path, flags, offset), directories, character devices,
//! `O_PATH` descriptors and deleted files, directories and memfds ([`regular`]), pipes and FIFOs
//! with the bytes buffered in them ([`pipes`]), character devices that keep no state per open file
//! ([`devices`]; the others are refused), eventfds, timerfds, signalfds, inotify and epoll
//! instances ([`anon`]), pseudo-terminals and controlling terminals ([`tty`]), pidfds, sockets
//! ([`crate::sockets`]), POSIX message queues (reopened by name; the queues are saved with the
//! IPC namespace, [`crate::ipc`]), and standard streams connected outside the process.
//!
//! A pipe is restored as one new pipe with its buffered data, its size and both ends where the
//! group held them; an end no process holds any more (a reader that exited, a write end closed
//! with data still buffered) stays closed, so the reader sees the data then EOF, or the writer
//! gets EPIPE, as before. Only a pipe or FIFO whose other end a process *outside* the checkpoint
//! holds ([`holders`]) is refused; a standard stream (fd 0-2) that leads outside the process (a
//! terminal, a pipe or socket to another process) is *external*: restore connects it to the same
//! fd of the `zap restore` command, as a shell job would be. Any other kind of fd fails the
//! checkpoint with an error that names the pid, the fd and the kind ([`anon`] lists the refused
//! anonymous-inode kinds).
//!
//! ## What every fd carries
//! Besides its kind, each [`FdState`] keeps the open flags (every status flag: `O_APPEND`,
//! `O_NONBLOCK`, `O_DIRECT`, `O_NOATIME`, `O_ASYNC`, `O_SYNC`/`O_DSYNC`, and `O_PATH`), the file
//! locks held through it ([`locks`]: flock, POSIX record locks, OFD locks, leases) and its signal
//! owner (`F_GETOWN_EX`, `F_GETSIG` on a duplicate). Restore sets the status
//! flags, retakes the locks and sets the owner once every fd of the process is in place, then
//! checks with `F_GETFL` that the flags came back as saved: a difference fails the restore.
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
mod devices;
mod holders;
pub mod locks;
mod pipes;
mod regular;
mod tty;

pub use regular::{load_contents, make_copy, store_contents, FileContents};
pub use tty::{set_foreground, take_ctty, PtyState};

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
        /// In a packet-mode pipe, the lengths of the packets `data` holds.
        packets: Vec<u32>,
    },
    /// A named pipe (FIFO), reopened by path; one deleted while open is recreated under a
    /// temporary name in the same directory (or /tmp) and unlinked at once.
    Fifo {
        /// Path (for a deleted FIFO, the path it had).
        path: String,
        /// Its inode (several fds may share one FIFO).
        ino: u64,
        /// Bytes buffered (recorded on the first fd of the FIFO only).
        data: Vec<u8>,
        /// In packet mode, the lengths of the packets `data` holds.
        packets: Vec<u32>,
        /// Buffer size (F_GETPIPE_SZ).
        size: i32,
        /// Deleted while open.
        deleted: bool,
    },
    /// A directory deleted while open (it is empty): recreated as a new directory that is
    /// removed again at once.
    DeletedDir {
        /// The path it had.
        path: String,
    },
    /// A pidfd (`pidfd_open`) of a process of the group, reopened on the restored process.
    Pidfd {
        /// The process, as the group sees it.
        vpid: i32,
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
    /// A regular file that was deleted while open, or a memfd: its size and data ranges (at
    /// most [`regular::DELETED_FILE_LIMIT`] bytes; holes stay holes) are saved once per file.
    /// Restore makes an unnamed file (`O_TMPFILE`) with them in the same directory (or /tmp when
    /// that is gone), or a memfd of the same name with the same seals; other fds and mappings of
    /// the same file share that copy.
    Deleted {
        /// Its path before it was deleted (`/memfd:NAME` for a memfd).
        path: String,
        /// Offset.
        pos: u64,
        /// Its contents, unless another fd or a mapping carries them (`reopen`).
        contents: Option<FileContents>,
        /// Where the copy made for an earlier fd or a mapping is found: (vpid, path under
        /// /proc/VPID/: `fd/N` or `map_files/START-END`).
        reopen: Option<(i32, String)>,
        /// For a memfd: its seals (F_GET_SEALS).
        memfd_seals: Option<u32>,
    },
    /// A socket.
    Socket(crate::sockets::SocketState),
    /// A timerfd: its clock and, as left to run, the time to the next expiration and the
    /// interval. Expirations not yet read (`ticks`) come back as the same count
    /// (`TFD_IOC_SET_TICKS`).
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
    /// An inotify instance and its watches: (watch descriptor, path, mask). An instance with
    /// events queued at checkpoint time is refused (they cannot be read without consuming them).
    Inotify {
        /// The watches.
        watches: Vec<(i32, String, u32)>,
    },
    /// A signalfd and the signals it reads.
    Signalfd {
        /// Signal mask.
        mask: u64,
    },
    /// An epoll instance and what it watches. The watches are added once every fd of the
    /// process exists.
    Epoll {
        /// The watched files.
        watches: Vec<anon::EpollWatch>,
    },
    /// The master of a pseudo-terminal (`/dev/ptmx`), recreated with the same index.
    PtyMaster {
        /// Its index.
        index: u32,
        /// The pty's state, on the first fd of the pty saved.
        state: Option<PtyState>,
    },
    /// A slave (`/dev/pts/N`) of a pseudo-terminal whose master the group holds.
    PtySlave {
        /// Its index.
        index: u32,
        /// The pty's state, on the first fd of the pty saved.
        state: Option<PtyState>,
    },
    /// `/dev/tty` of a process whose controlling terminal is one of the group's ptys.
    DevTty,
    /// A standard stream leading outside the process.
    External {
        /// What it was (`pipe:[123]`, `/dev/pts/0`, `socket:[9]`).
        what: String,
    },
    /// A POSIX message queue (`mq_open`), reopened by name in the process's IPC namespace (the
    /// queue and its messages are saved with the namespace, [`crate::ipc`]); `O_NONBLOCK` is
    /// one of the saved status flags.
    Mqueue {
        /// Its name, without the leading '/'.
        name: String,
    },
    /// A timerfd armed with `timerfd_settime` flags (`TFD_TIMER_ABSTIME`,
    /// `TFD_TIMER_CANCEL_ON_SET`): as [`FdKind::Timerfd`], armed again with the same flags, so
    /// an absolute timer stays absolute (it follows changes of its clock) and a cancel-on-set
    /// one still reports `ECANCELED` when the wall clock is set. (Appended: process image 12.)
    TimerfdAt {
        /// CLOCK_* id.
        clockid: i32,
        /// Time to the next expiration (s, ns), as fdinfo shows it; zero when disarmed.
        value: (i64, i64),
        /// Interval (s, ns).
        interval: (i64, i64),
        /// Expirations not yet read.
        ticks: u64,
        /// The `timerfd_settime` flags it was armed with.
        settime_flags: u32,
        /// An absolute timer of the wall clock (`CLOCK_REALTIME`, `CLOCK_REALTIME_ALARM`): its
        /// deadline on that clock, set again as it was (the wall clock is not a pod's own, and
        /// a deadline is a time of day). Other absolute timers are set again at the time they
        /// had left, from the restored process's view of their clock.
        wall_deadline: Option<(i64, i64)>,
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
    /// Locks held through this fd (see [`locks`] for which fd of a shared description holds
    /// them).
    pub locks: Vec<locks::FileLock>,
    /// Who gets its I/O signals (`F_SETOWN_EX`) and which signal (`F_SETSIG`), when set.
    pub owner: Option<FdOwner>,
}

/// The signal owner of an open file description: `F_GETOWN_EX` and `F_GETSIG`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdOwner {
    /// F_OWNER_TID, F_OWNER_PID or F_OWNER_PGRP.
    pub kind: i32,
    /// The thread, process or process group, as the process sees it (0: none).
    pub pid: i32,
    /// The signal sent (0: SIGIO).
    pub sig: i32,
}

/// The fdinfo of fd `fd` of `pid`: its `key: value` lines (the last of a repeated key) and the
/// whole text (for the repeated `lock:` lines).
fn fdinfo_full(pid: i32, fd: i32) -> Result<(HashMap<String, String>, String)> {
    let path = format!("/proc/{pid}/fdinfo/{fd}");
    let text = std::fs::read_to_string(&path).map_err(|e| EngineError::io("read", path.as_ref(), e))?;
    let map = text
        .lines()
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
        .collect();
    Ok((map, text))
}

fn fdinfo(pid: i32, fd: i32) -> Result<HashMap<String, String>> {
    Ok(fdinfo_full(pid, fd)?.0)
}

/// What the fds saved so far look like, for processes saved together.
#[derive(Default)]
pub struct SaveContext {
    /// Pipe inode -> (has a read end, has a write end) over every process of the group.
    pub(crate) pipe_ends: HashMap<u64, (bool, bool)>,
    /// Fds saved so far: (host pid, vpid, fd, link target).
    saved: Vec<(i32, i32, i32, String)>,
    /// Per link target, where in `saved` the first fd of each open file description with that
    /// target is, in kcmp's order of descriptions (so a fd is matched with O(log n) kcmp calls:
    /// a process with thousands of descriptions of one file is not compared pairwise).
    saved_by_target: HashMap<String, Vec<usize>>,
    /// Pipes and FIFOs whose buffered bytes were recorded already.
    pub(crate) data_taken: HashSet<u64>,
    /// Pipes with a packet-mode (O_DIRECT) write end.
    pub(crate) packet_mode: HashSet<u64>,
    /// Pty masters held by the group: index -> (host pid, fd), found on first need.
    pub(crate) pty_masters: Option<HashMap<u32, (i32, i32)>>,
    /// Ptys whose state was recorded already.
    pub(crate) ptys_saved: HashSet<u32>,
    /// Deleted files and memfds whose copy an fd saved so far or a mapping of the group makes:
    /// (device, inode) -> (vpid, path under /proc/VPID/).
    pub(crate) deleted: HashMap<(u64, u64), (i32, String)>,
    /// Sockets of the group.
    pub sockets: crate::sockets::SocketContext,
    /// Host pids of the processes saved together (every other process is outside).
    pub(crate) group: Vec<i32>,
    /// Pipes and FIFOs held by processes outside the group, found on first need.
    pub(crate) outside: Option<holders::Outside>,
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
        let mut ctx = SaveContext { group: pids.to_vec(), ..Default::default() };
        let mut queued = Vec::new();
        for &pid in pids {
            let vpid = ns_pid(pid).unwrap_or(pid);
            ctx.sockets.members.insert(pid, vpid);
            let fds = list_fds(pid)?;
            // Many sockets (a server's connections): the TCP ones, which queue no fds, are known
            // from one dump of the namespace instead of one fdinfo read each.
            let tcp = crate::sockets::tcp_inodes_if_many(pid, &fds, &mut ctx.sockets);
            for (fd, target) in fds {
                if let Some(ino) = socket_ino(&target) {
                    ctx.sockets.holders.entry(ino).or_insert((pid, fd));
                    let is_tcp = tcp.as_ref().is_some_and(|t| t.contains_key(&ino));
                    // Unix sockets show how many fds wait in their queues.
                    if !is_tcp
                        && !queued.iter().any(|q: &(i32, i32, u64)| q.2 == ino)
                        && fdinfo(pid, fd)?.get("scm_fds").is_some_and(|n| n != "0")
                    {
                        queued.push((pid, fd, ino));
                    }
                }
                ctx.all_fds.push((pid, vpid, fd, target.clone()));
                if let Some(ino) = pipes::pipe_ino(&target) {
                    let flags = fd_flags(&fdinfo(pid, fd)?);
                    let write = flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32;
                    if write && flags & libc::O_DIRECT as u32 != 0 {
                        ctx.packet_mode.insert(ino);
                    }
                    let e = ctx.pipe_ends.entry(ino).or_default();
                    if write {
                        e.1 = true;
                    } else {
                        e.0 = true;
                    }
                }
            }
        }
        for (pid, fd, ino) in queued {
            crate::sockets::prescan_inflight(pid, fd, ino, &mut ctx)?;
        }
        Ok(ctx)
    }

    /// The earlier saved fd (vpid, fd) that is the same open file description as `fd` of `pid`,
    /// or where a new description goes in `saved_by_target[target]`.
    fn find_description(&self, pid: i32, fd: i32, target: &str) -> Result<std::result::Result<(i32, i32), usize>> {
        let Some(list) = self.saved_by_target.get(target) else { return Ok(Err(0)) };
        let (mut lo, mut hi) = (0, list.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            let (p, vpid, f, _) = &self.saved[list[mid]];
            match sysproc::file_order(*p, *f, pid, fd).map_err(|source| EngineError::Sys { step: "kcmp", pid, source })? {
                std::cmp::Ordering::Equal => return Ok(Ok((*vpid, *f))),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Ok(Err(lo))
    }

    /// An earlier saved fd that is the same open file description as `fd` of `pid`.
    fn earlier(&self, pid: i32, fd: i32, target: &str) -> Result<Option<(i32, i32)>> {
        Ok(self.find_description(pid, fd, target)?.ok())
    }
}

/// Saves every fd of the stopped process `pid` (which sees itself as `vpid`).
pub fn save(pid: i32, vpid: i32, ctx: &mut SaveContext) -> Result<Vec<FdState>> {
    if !ctx.group.contains(&pid) {
        ctx.group.push(pid);
    }
    let fds = list_fds(pid)?;
    ctx.sockets.members.entry(pid).or_insert(vpid);
    // Pipes of this process alone count when no group context knows them.
    let mut infos = HashMap::new();
    for (fd, target) in &fds {
        let (info, text) = fdinfo_full(pid, *fd)?;
        if let Some(ino) = socket_ino(target) {
            ctx.sockets.holders.entry(ino).or_insert((pid, *fd));
        }
        if let Some(ino) = pipes::pipe_ino(target) {
            let write = fd_flags(&info) & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32;
            if write && fd_flags(&info) & libc::O_DIRECT as u32 != 0 {
                ctx.packet_mode.insert(ino);
            }
            let e = ctx.pipe_ends.entry(ino).or_default();
            if write {
                e.1 = true;
            } else {
                e.0 = true;
            }
        }
        infos.insert(*fd, (info, text));
    }
    let pidfd = sysproc::pidfd_open(pid).map_err(|source| EngineError::Sys { step: "pidfd_open", pid, source })?;
    // Many sockets (a server's connections) are read ahead over threads.
    let socks: Vec<(i32, u64)> = fds.iter().filter_map(|(fd, t)| socket_ino(t).map(|ino| (*fd, ino))).collect();
    crate::sockets::prefetch(pid, &pidfd, &socks, ctx);
    let mut out = Vec::new();
    for (fd, target) in fds {
        let (info, text) = &infos[&fd];
        let flags = fd_flags(info);
        let held = locks::parse(pid, fd, &target, text)?;
        let (kind, locks) = match ctx.earlier(pid, fd, &target)? {
            // Locks of a description show on every fd of it: flock, OFD locks and leases are kept
            // with the first fd saved, POSIX locks (owned by a process) with the process's first.
            Some((owner, owner_fd)) if owner == vpid => (FdKind::Dup { vpid: owner, fd: owner_fd }, Vec::new()),
            Some((owner, owner_fd)) => (FdKind::Dup { vpid: owner, fd: owner_fd }, held.into_iter().filter(|l| l.kind == locks::LockKind::Posix).collect()),
            None => (classify(pid, fd, &target, info, flags, &pidfd, ctx)?, held),
        };
        if !locks.is_empty() {
            locks::check_kind(pid, fd, &target, &kind, &locks)?;
        }
        let owner = if matches!(kind, FdKind::Dup { .. }) || flags & libc::O_PATH as u32 != 0 { None } else { owner_of(pid, fd, &pidfd, ctx)? };
        out.push(FdState { fd, flags, kind, locks, owner });
        if let Err(at) = ctx.find_description(pid, fd, &target)? {
            let index = ctx.saved.len();
            ctx.saved_by_target.entry(target.clone()).or_default().insert(at, index);
        }
        ctx.saved.push((pid, vpid, fd, target));
    }
    Ok(out)
}

const F_SETSIG: u64 = 10;
const F_SETOWN_EX: u64 = 15;

/// The signal owner and signal of fd `fd` of `pid` (its open file description's), read through a
/// duplicate of it: `None` when it has none. The owner (a pid or process group as Zap sees it)
/// must be a process or group of the checkpoint; an owner that has exited since is dropped,
/// since signals to it reach nobody.
fn owner_of(pid: i32, fd: i32, pidfd: &std::os::fd::OwnedFd, ctx: &SaveContext) -> Result<Option<FdOwner>> {
    let (kind, host, sig) = match ctx.sockets.owners.get(&(pid, fd)) {
        Some(&read_ahead) => read_ahead,
        None => {
            let dup = sysproc::pidfd_getfd(pidfd, fd).map_err(|source| EngineError::Sys { step: "pidfd_getfd (signal owner)", pid, source })?;
            sysproc::fd_owner(&dup).map_err(|source| EngineError::Sys { step: "F_GETOWN_EX", pid, source })?
        }
    };
    if host == 0 {
        return Ok((sig != 0).then_some(FdOwner { kind, pid: 0, sig }));
    }
    let status = |p: i32| std::fs::read_to_string(format!("/proc/{p}/status")).ok();
    let field = |text: &str, key: &str, last: bool| {
        let v = text.lines().find_map(|l| l.strip_prefix(key))?;
        let mut w = v.split_whitespace();
        (if last { w.next_back() } else { w.next() })?.parse::<i32>().ok()
    };
    const F_OWNER_PGRP: i32 = 2;
    let group_pgrp = F_OWNER_PGRP;
    let found = if kind == group_pgrp {
        ctx.group.iter().find_map(|&p| {
            let st = status(p)?;
            (field(&st, "NSpgid:", false) == Some(host)).then(|| field(&st, "NSpgid:", true)).flatten()
        })
    } else {
        // A process or one of its threads (F_OWNER_TID): its id as the group sees it.
        ctx.group.iter().find_map(|&p| {
            let st = std::fs::read_to_string(format!("/proc/{p}/task/{host}/status")).ok()?;
            field(&st, "NSpid:", true)
        })
    };
    match found {
        Some(v) => Ok(Some(FdOwner { kind, pid: v, sig })),
        None if kind != group_pgrp && status(host).is_none() => Ok(None),
        None => Err(unsupported(pid, fd, &format!("descriptor whose signal owner ({host}) is outside the checkpoint"), "F_SETOWN")),
    }
}

/// Where Zap finds `path` (a path as the links of `/proc/PID/fd`, `cwd` and `maps` show it, from
/// the root of the process's mount namespace) as process `pid` sees its file system:
/// `/proc/PID/root` and the path, climbing first out of a root the process chrooted into
/// (`/proc/PID/root` leads to that directory, and `..` from it goes up in the process's mount
/// namespace, up to its root).
pub(crate) fn seen_by(pid: i32, path: &str) -> String {
    let root = std::fs::read_link(format!("/proc/{pid}/root")).map(|p| p.to_string_lossy().into_owned()).unwrap_or_else(|_| "/".into());
    let up = root.split('/').filter(|c| !c.is_empty()).count();
    format!("/proc/{pid}/root{}{path}", "/..".repeat(up))
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
    if flags & libc::O_PATH as u32 != 0 {
        // An O_PATH descriptor only names a file: any kind is reopened by its path.
        return match target.strip_suffix(" (deleted)") {
            Some(_) => Err(unsupported(pid, fd, "O_PATH descriptor of a deleted file", target)),
            None if target.starts_with('/') => Ok(FdKind::Path { path: target.to_string(), pos: 0 }),
            None => Err(unsupported(pid, fd, "O_PATH descriptor of an object without a path", target)),
        };
    }
    if let Some(ino) = pipes::pipe_ino(target) {
        if ctx.pipe_ends[&ino] != (true, true) {
            if let Some(other) = ctx.outside_holder(holders::Key::Pipe(ino)) {
                if fd <= 2 {
                    return Ok(FdKind::External { what: target.to_string() });
                }
                // The other end lives on outside (often a descriptor a shell or a test harness
                // leaked into the program, which never uses it): the pipe is saved with its
                // bytes and restored half-open, its other end closed, as CRIU does too.
                tracing::warn!(
                    pid,
                    fd,
                    outside = other,
                    "{target} is shared with process {other} outside the checkpoint: it is restored as a pipe whose other end is closed"
                );
            }
        }
        let write_end = flags & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32;
        return pipes::save_pipe(pid, fd, ino, write_end, pidfd, ctx);
    }
    if let Some(ino) = socket_ino(target) {
        let saved = match crate::sockets::take_prefetched(ino, ctx) {
            Some(read_ahead) => read_ahead,
            None => {
                let dup = sysproc::pidfd_getfd(pidfd, fd).map_err(|source| EngineError::Sys { step: "pidfd_getfd socket", pid, source })?;
                crate::sockets::save(pid, fd, ino, &dup, ctx)
            }
        };
        return match saved {
            Ok(st) => Ok(FdKind::Socket(st)),
            Err(_) if fd <= 2 => Ok(FdKind::External { what: target.to_string() }),
            Err(e) => Err(e),
        };
    }
    if let Some(kind) = tty::save(pid, fd, target, info, pidfd, ctx)? {
        return Ok(kind);
    }
    if target.starts_with("/dev/pts/") || target == "/dev/tty" || target == "/dev/ptmx" {
        return if fd <= 2 { Ok(FdKind::External { what: target.to_string() }) } else { Err(unsupported(pid, fd, "terminal", target)) };
    }
    if target == "anon_inode:[pidfd]" {
        return pidfd_target(pid, fd, info, ctx);
    }
    if let Some(kind) = anon::save(pid, fd, target, info, pidfd, ctx)? {
        return Ok(kind);
    }
    if target.starts_with('/') && !target.ends_with(" (deleted)") {
        return regular::save_path(pid, fd, target, info, pidfd, ctx);
    }
    if let Some(path) = target.strip_suffix(" (deleted)").filter(|p| p.starts_with('/')) {
        return regular::save_deleted(pid, fd, path, info, pidfd, ctx);
    }
    Err(unsupported(pid, fd, target.split(':').next().unwrap_or("unknown"), target))
}

/// A pidfd: the process it refers to must be one of the group (it is reopened on the restored
/// process); a pidfd of an outside or reaped process is refused.
fn pidfd_target(pid: i32, fd: i32, info: &HashMap<String, String>, ctx: &SaveContext) -> Result<FdKind> {
    let host: i32 = info.get("Pid").and_then(|v| v.parse().ok()).unwrap_or(-1);
    if host <= 0 {
        return Err(unsupported(pid, fd, "pidfd of a process that has been reaped", "anon_inode:[pidfd]"));
    }
    // A zombie child of the group is restored as a zombie, and exists while fds are restored.
    let zombie_child = || {
        let stat = std::fs::read_to_string(format!("/proc/{host}/stat")).unwrap_or_default();
        let mut f = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace()).into_iter().flatten();
        f.next() == Some("Z") && f.next().and_then(|pp| pp.parse().ok()).is_some_and(|pp: i32| ctx.group.contains(&pp))
    };
    if !ctx.group.contains(&host) && !zombie_child() {
        return Err(unsupported(pid, fd, &format!("pidfd of process {host} outside the checkpoint (or not running)"), "anon_inode:[pidfd]"));
    }
    let vpid = info
        .get("NSpid")
        .and_then(|v| v.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| EngineError::Proc { pid, detail: format!("fd {fd}: pidfd without NSpid in its fdinfo") })?;
    Ok(FdKind::Pidfd { vpid })
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
            return Ok(FdState { fd: -1, flags, kind: FdKind::Dup { vpid: *vpid, fd: *pfd }, locks: Vec::new(), owner: None });
        }
    }
    note_inflight(me, fd, &target, ctx)?;
    let pidfd = sysproc::pidfd_open(me).map_err(|source| EngineError::Sys { step: "pidfd_open", pid: me, source })?;
    let kind = classify(me, fd, &target, &info, flags, &pidfd, ctx)?;
    // Locks held through the passed description would have no fd of the group to come back by.
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
    if let Some(l) = locks::parse(me, fd, &target, &text)?.first() {
        let what = format!("file passed in a unix socket message that holds a {:?} lock", l.kind);
        return Err(EngineError::Proc { pid: me, detail: format!("in-flight fd: unsupported kind {what} ({target})") });
    }
    let owner = if flags & libc::O_PATH as u32 != 0 { None } else { owner_of(me, fd, &pidfd, ctx)? };
    Ok(FdState { fd: -1, flags, kind, locks: Vec::new(), owner })
}

/// Places fd `tmp` at number `fd` with the saved descriptor flags.
fn place(inj: &mut Injector, tmp: u64, st: &FdState) -> Result<()> {
    let cloexec = st.flags & libc::O_CLOEXEC as u32 != 0;
    if tmp != st.fd as u64 {
        inj.call("dup3", libc::SYS_dup3, [tmp, st.fd as u64, if cloexec { libc::O_CLOEXEC as u64 } else { 0 }, 0, 0, 0])?;
        inj.call("close", libc::SYS_close, [tmp, 0, 0, 0, 0, 0])?;
    } else {
        let fd_flags = if cloexec { libc::FD_CLOEXEC as u64 } else { 0 };
        inj.call("fcntl(F_SETFD)", libc::SYS_fcntl, [tmp, libc::F_SETFD as u64, fd_flags, 0, 0, 0])?;
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
    /// Processes whose fds are all in place.
    pub(crate) done: HashSet<i32>,
    /// Epoll watches waiting for the process that holds their file.
    pub(crate) pending_epoll: Vec<anon::PendingWatch>,
    /// Ptys recreated: index -> (vpid, master keeper fd).
    pub(crate) ptys: HashMap<u32, (i32, u64)>,
    /// Session leaders that took their controlling terminal back: vpid -> (slave keeper fd,
    /// foreground process group to give it).
    pub(crate) cttys: HashMap<i32, (u64, i32)>,
}

impl RestoreContext {
    /// A context for a restore run by the process `zap_pid` (external standard streams are
    /// reopened through its /proc fds).
    pub fn new(zap_pid: u32) -> Self {
        RestoreContext {
            zap_pid,
            pipes: HashMap::new(),
            fifos: HashMap::new(),
            sockets: Default::default(),
            path_map: Vec::new(),
            done: HashSet::new(),
            pending_epoll: Vec::new(),
            ptys: HashMap::new(),
            cttys: HashMap::new(),
        }
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
        v.extend(self.ptys.values().filter(|p| p.0 == vpid).map(|p| p.1));
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
/// truncate left out), for reopening a saved fd. A path under /proc (a copy reopened through
/// `/proc/PID/fd` or `map_files`) is a link to follow: `O_NOFOLLOW` (which `mkstemp` uses, and
/// so Python's multiprocessing for its shared memory) is left out there.
pub fn open_path(inj: &mut Injector, path: &str, flags: u32) -> Result<u64> {
    let scratch = inj.put_cstr(path.as_bytes())?;
    let mut flags = flags & !((libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_CLOEXEC) as u32);
    if path.starts_with("/proc/") {
        flags &= !(libc::O_NOFOLLOW as u32);
    }
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
    if let Some(fd) = tty::restore(inj, vpid, st, ctx)? {
        return Ok(fd);
    }
    Ok(match &st.kind {
        FdKind::Path { path, pos } => {
            let fd = open_path(inj, &ctx.rewrite(path), st.flags)?;
            if st.flags & libc::O_PATH as u32 == 0 {
                inj.call("lseek", libc::SYS_lseek, [fd, *pos, libc::SEEK_SET as u64, 0, 0, 0])?;
            }
            fd
        }
        FdKind::CharDev { path } => open_path(inj, path, st.flags)?,
        FdKind::Deleted { .. } => regular::restore_deleted(inj, vpid, st)?,
        FdKind::DeletedDir { path } => regular::restore_deleted_dir(inj, vpid, st, &ctx.rewrite(path))?,
        FdKind::Pidfd { vpid: target } => {
            let flags = u64::from(st.flags & (libc::O_NONBLOCK | libc::O_EXCL) as u32);
            inj.call("pidfd_open", libc::SYS_pidfd_open, [*target as u64, flags, 0, 0, 0, 0])
                .map_err(|e| EngineError::Proc { pid: vpid, detail: format!("fd {}: pidfd of process {target}: {e}", st.fd) })?
        }
        FdKind::Dup { vpid: owner, fd } => take_fd(inj, vpid, *owner, *fd as u64)
            .map_err(|e| EngineError::Proc { pid: vpid, detail: format!("fd {}: take shared fd {fd} of pid {owner}: {e}", st.fd) })?,
        FdKind::Fifo { .. } => pipes::restore_fifo(inj, vpid, st, ctx)?,
        FdKind::Socket(sock) => {
            let fd = crate::sockets::restore(inj, vpid, sock, &mut ctx.sockets, &mut |inj, owner, fd| take_fd(inj, vpid, owner, fd))?;
            let status = st.flags & (libc::O_NONBLOCK as u32);
            inj.call("fcntl(F_SETFL)", libc::SYS_fcntl, [fd, libc::F_SETFL as u64, u64::from(status), 0, 0, 0])?;
            fd
        }
        FdKind::External { .. } => open_path(inj, &format!("/proc/{}/fd/{}", ctx.zap_pid, st.fd), st.flags)?,
        FdKind::Mqueue { name } => {
            let scratch = inj.put_cstr(name.as_bytes())?;
            let flags = u64::from(st.flags & (libc::O_ACCMODE | libc::O_NONBLOCK) as u32);
            inj.call("mq_open", libc::SYS_mq_open, [scratch, flags, 0, 0, 0, 0])
                .map_err(|e| EngineError::Proc { pid: vpid, detail: format!("fd {}: reopen POSIX message queue /{name}: {e}", st.fd) })?
        }
        FdKind::Pipe { ino, write_end, size, data, packets } => pipes::restore_pipe(inj, vpid, (*ino, *write_end, *size, data, packets), ctx)?,
        FdKind::Epoll { .. } | FdKind::Timerfd { .. } | FdKind::TimerfdAt { .. } | FdKind::Inotify { .. } | FdKind::Signalfd { .. } | FdKind::Eventfd { .. } => {
            unreachable!("restored by files::anon")
        }
        FdKind::PtyMaster { .. } | FdKind::PtySlave { .. } | FdKind::DevTty => unreachable!("restored by files::tty"),
    })
}

/// Recreates the fds in the process being restored (which sees itself as `vpid` and whose fd
/// table is empty). Pipe and FIFO keepers stay open; close them with [`RestoreContext::keepers`]
/// once every process of the group has its fds.
pub fn restore(inj: &mut Injector, vpid: i32, fds: &[FdState], ctx: &mut RestoreContext) -> Result<()> {
    // Established TCP connections are made together once the other fds are in place (their
    // listeners among them, which must be bound before the connections that share their port),
    // then the fds that share them (crate::sockets::conns); their status flags are set and
    // checked there.
    let is_conn = |f: &FdState| matches!(&f.kind, FdKind::Socket(crate::sockets::SocketState::TcpConn(_)));
    let conn_fds: HashSet<i32> = fds.iter().filter(|f| is_conn(f)).map(|f| f.fd).collect();
    let shares_conn = |f: &FdState| matches!(f.kind, FdKind::Dup { vpid: owner, fd } if owner == vpid && conn_fds.contains(&fd));
    for st in fds {
        if is_conn(st) || shares_conn(st) {
            continue;
        }
        let tmp = open_one(inj, vpid, st, ctx)?;
        place(inj, tmp, st)?;
    }
    let mut conns_done = HashSet::new();
    if !conn_fds.is_empty() {
        restore_conns(inj, vpid, fds, ctx, &mut conns_done)?;
        for st in fds.iter().filter(|f| shares_conn(f)) {
            let tmp = open_one(inj, vpid, st, ctx)?;
            place(inj, tmp, st)?;
        }
    }
    anon::add_epoll_watches(inj, vpid, fds, ctx)?;
    ctx.done.insert(vpid);
    anon::add_pending_epoll_watches(inj, vpid, ctx)?;
    // Last, since closing any fd of a file drops the process's POSIX locks on it: status flags,
    // locks, then the signal owner (a lease sets the owner to its taker).
    for st in fds {
        if !conns_done.contains(&st.fd) {
            set_status(inj, vpid, st)?;
        }
        if !st.locks.is_empty() {
            let path = match &st.kind {
                FdKind::Path { path, .. } | FdKind::Deleted { path, .. } | FdKind::CharDev { path } | FdKind::DeletedDir { path } => path.clone(),
                other => format!("{other:?}").chars().take(60).collect(),
            };
            locks::restore(inj, vpid, st.fd, &path, &st.locks)?;
        }
        if let Some(o) = st.owner {
            let scratch = inj.scratch(4096)?;
            let mut raw = o.kind.to_ne_bytes().to_vec();
            raw.extend_from_slice(&o.pid.to_ne_bytes());
            inj.write_mem(scratch, &raw)?;
            let fd = st.fd as u64;
            inj.call("fcntl(F_SETOWN_EX)", libc::SYS_fcntl, [fd, F_SETOWN_EX, scratch, 0, 0, 0])
                .map_err(|e| EngineError::Proc { pid: vpid, detail: format!("fd {fd}: set its signal owner to {:?}: {e}", o) })?;
            inj.call("fcntl(F_SETSIG)", libc::SYS_fcntl, [fd, F_SETSIG, o.sig as u64, 0, 0, 0])?;
        }
    }
    Ok(())
}

/// Recreates every established TCP connection of `fds` at its number ([`crate::sockets::conns`]),
/// checks their status flags, and notes their numbers in `done`.
fn restore_conns(inj: &mut Injector, vpid: i32, fds: &[FdState], ctx: &mut RestoreContext, done: &mut HashSet<i32>) -> Result<()> {
    let mut conns: Vec<crate::sockets::ConnFd> = fds
        .iter()
        .filter_map(|f| match &f.kind {
            FdKind::Socket(crate::sockets::SocketState::TcpConn(c)) => Some(crate::sockets::ConnFd {
                fd: f.fd,
                cloexec: f.flags & libc::O_CLOEXEC as u32 != 0,
                status: (f.flags & SETFL_MASK) as i32,
                conn: c,
            }),
            _ => None,
        })
        .collect();
    for (fd, got) in crate::sockets::conns::restore_all(inj, &mut conns, &ctx.sockets)? {
        let want = fds.iter().find(|f| f.fd == fd).map_or(0, |f| f.flags);
        if got as u32 & CHECKED != want & CHECKED {
            return Err(EngineError::Proc {
                pid: vpid,
                detail: format!("fd {fd}: came back with flags {:#o}, not {:#o} as saved (TCP connection)", got as u32 & CHECKED, want & CHECKED),
            });
        }
        done.insert(fd);
    }
    Ok(())
}

/// Status flags `F_SETFL` can change.
const SETFL_MASK: u32 = (libc::O_APPEND | libc::O_NONBLOCK | libc::O_DIRECT | libc::O_NOATIME | libc::O_ASYNC) as u32;
/// Flags checked after a restore: the access mode and every status flag.
const CHECKED: u32 = SETFL_MASK | (libc::O_ACCMODE | libc::O_SYNC | libc::O_DSYNC | libc::O_PATH) as u32;

/// Sets the status flags of the restored fd `st` as saved, then checks that its flags are the
/// saved ones (access mode, O_SYNC/O_DSYNC, O_PATH included): a difference fails the restore.
fn set_status(inj: &mut Injector, vpid: i32, st: &FdState) -> Result<()> {
    let fd = st.fd as u64;
    if st.flags & libc::O_PATH as u32 == 0 {
        inj.call("fcntl(F_SETFL)", libc::SYS_fcntl, [fd, libc::F_SETFL as u64, u64::from(st.flags & SETFL_MASK), 0, 0, 0])
            .map_err(|e| EngineError::Proc { pid: vpid, detail: format!("fd {fd}: set status flags {:#o}: {e}", st.flags & SETFL_MASK) })?;
    }
    let got = inj.call("fcntl(F_GETFL)", libc::SYS_fcntl, [fd, libc::F_GETFL as u64, 0, 0, 0, 0])? as u32;
    if got & CHECKED != st.flags & CHECKED {
        return Err(EngineError::Proc {
            pid: vpid,
            detail: format!("fd {fd}: came back with flags {:#o}, not {:#o} as saved ({:?})", got & CHECKED, st.flags & CHECKED, st.kind_name()),
        });
    }
    Ok(())
}

impl FdState {
    /// The kind's name, for messages.
    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            FdKind::Path { .. } => "file",
            FdKind::CharDev { .. } => "device",
            FdKind::Pipe { .. } => "pipe",
            FdKind::Fifo { .. } => "fifo",
            FdKind::DeletedDir { .. } => "deleted directory",
            FdKind::Pidfd { .. } => "pidfd",
            FdKind::Eventfd { .. } => "eventfd",
            FdKind::Dup { .. } => "shared description",
            FdKind::Deleted { .. } => "deleted file",
            FdKind::Socket(_) => "socket",
            FdKind::Timerfd { .. } | FdKind::TimerfdAt { .. } => "timerfd",
            FdKind::Inotify { .. } => "inotify",
            FdKind::Signalfd { .. } => "signalfd",
            FdKind::Epoll { .. } => "epoll",
            FdKind::External { .. } => "external stream",
            FdKind::PtyMaster { .. } => "pty master",
            FdKind::PtySlave { .. } => "pty slave",
            FdKind::DevTty => "/dev/tty",
            FdKind::Mqueue { .. } => "POSIX message queue",
        }
    }
}

/// Closes fds `fds` in the process `inj` drives (the keepers of [`RestoreContext::keepers`]).
pub fn close_all(inj: &mut Injector, fds: &[u64]) -> Result<()> {
    for &fd in fds {
        inj.call("close keeper", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
    }
    Ok(())
}

/// Bytes queued for process `pid` to read on its inotify instances and pseudo-terminals (either
/// end), which a checkpoint cannot read without consuming and so refuses. A stopped pod with some
/// runs on a moment to read them ([`crate::pod::checkpoint`]'s stop). Best effort: an fd that
/// cannot be looked at counts nothing (the save that follows reports it).
pub(crate) fn queued_unread(pid: i32) -> u64 {
    let Ok(fds) = list_fds(pid) else { return 0 };
    let queues: Vec<i32> =
        fds.into_iter().filter(|(_, t)| t == "anon_inode:inotify" || t == "/dev/ptmx" || t.starts_with("/dev/pts/")).map(|(fd, _)| fd).collect();
    if queues.is_empty() {
        return 0;
    }
    let Ok(pidfd) = sysproc::pidfd_open(pid) else { return 0 };
    queues
        .into_iter()
        .filter_map(|fd| sysproc::pidfd_getfd(&pidfd, fd).ok())
        .map(|dup| sysproc::fionread(&dup).map_or(0, |n| n.max(0) as u64))
        .sum()
}
