//! Descriptors of anonymous inodes: eventfds (semaphore mode included), timerfds (unread
//! expirations come back as the same count with `TFD_IOC_SET_TICKS`; one armed with
//! `TFD_TIMER_ABSTIME` or `TFD_TIMER_CANCEL_ON_SET` is armed again with them, an absolute
//! wall-clock timer at the same time of day), signalfds, inotify
//! instances (watches found again from their file handles; an instance with events queued is
//! refused, since they cannot be read without consuming them) and epoll instances (watches
//! added once every fd of the process exists). Their state is read from `/proc/PID/fdinfo/FD`
//! and recreated by injected syscalls.
//!
//! An epoll watch names its file by the fd number it was added with; that fd may since have been
//! closed or reused while the file stays open elsewhere (a duplicate, another process).
//! `kcmp(KCMP_EPOLL_TFD)` finds where the watched file is now, and restore adds the watch through
//! that file (taken, if need be, from the process that holds it). Watch masks are kept as they
//! are, with `EPOLLET`, `EPOLLEXCLUSIVE` and a fired `EPOLLONESHOT` (its events cleared); an
//! edge-triggered watch whose file is ready reports that edge once more after a restore.
//!
//! Refused, with the reason, are the kinds whose kernel state cannot be read or rebuilt from
//! outside ([`REFUSED`]): io_uring, userfaultfd, perf_event, BPF maps, programs and links,
//! fanotify, KVM, VFIO, dma-buf, sync files, new-mount-API contexts, and any kind not listed.
use std::collections::HashMap;
use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

use super::{FdKind, FdState, SaveContext};
use crate::inject::Injector;
use crate::sys::proc as sysproc;
use crate::{EngineError, Result};

/// Anonymous-inode kinds that cannot be saved, with why.
pub const REFUSED: &[(&str, &str)] = &[
    ("[io_uring]", "io_uring rings and requests in flight cannot be rebuilt"),
    ("[userfaultfd]", "a userfaultfd's registrations and pending faults cannot be read"),
    ("[perf_event]", "perf events cannot be saved"),
    ("bpf-map", "BPF maps cannot be saved"),
    ("bpf-prog", "BPF programs cannot be saved"),
    ("bpf_link", "BPF links cannot be saved"),
    ("[fanotify]", "fanotify groups cannot be saved"),
    ("kvm-vm", "KVM virtual machines cannot be saved"),
    ("kvm-vcpu", "KVM virtual CPUs cannot be saved"),
    ("[vfio-device]", "VFIO devices cannot be saved"),
    ("dmabuf", "dma-buf buffers cannot be saved"),
    ("sync_file", "sync files cannot be saved"),
    ("[fscontext]", "new-mount-API contexts cannot be saved"),
];

/// One epoll watch: the target fd number and mask and data as fdinfo shows them, and where the
/// watched file is now when that number no longer leads to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpollWatch {
    /// The fd number the watch was added with.
    pub tfd: i32,
    /// Event mask (with EPOLLET, EPOLLONESHOT, EPOLLEXCLUSIVE...).
    pub events: u32,
    /// User data returned with the events.
    pub data: u64,
    /// Where the file is now, when not at `tfd` of the same process: (vpid, fd).
    pub moved: Option<(i32, i32)>,
}

/// Saves the anonymous-inode fd `fd` of `pid` whose link reads `target`, or `None` when it is not
/// one of the kinds of this module. `info` is its fdinfo.
pub(super) fn save(pid: i32, fd: i32, target: &str, info: &HashMap<String, String>, pidfd: &OwnedFd, ctx: &SaveContext) -> Result<Option<FdKind>> {
    let fdinfo_text = || {
        let path = format!("/proc/{pid}/fdinfo/{fd}");
        std::fs::read_to_string(&path).map_err(|e| EngineError::io("read", path.as_ref(), e))
    };
    Ok(Some(match target {
        "anon_inode:[timerfd]" => {
            // Due expirations: fdinfo counts a periodic timer's overruns only once it is read, so
            // read them (the full count) and put them back.
            let due = info.get("ticks").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            let fresh;
            let info = if due > 0 {
                let dup = sysproc::pidfd_getfd(pidfd, fd).map_err(|source| EngineError::Sys { step: "pidfd_getfd timerfd", pid, source })?;
                sysproc::timerfd_count_ticks(&dup).map_err(|source| EngineError::Sys { step: "count timerfd expirations", pid, source })?;
                fresh = super::fdinfo(pid, fd)?;
                &fresh
            } else {
                info
            };
            let pair = |key: &str| -> Option<(i64, i64)> {
                let v = info.get(key)?.trim().trim_start_matches('(').trim_end_matches(')');
                let (a, b) = v.split_once(',')?;
                Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
            };
            let bad = || EngineError::Proc { pid, detail: format!("fd {fd}: unreadable timerfd state") };
            let clockid: i32 = info.get("clockid").and_then(|v| v.parse().ok()).ok_or_else(bad)?;
            let value = pair("it_value").ok_or_else(bad)?;
            let interval = pair("it_interval").ok_or_else(bad)?;
            let ticks = info.get("ticks").and_then(|v| v.parse().ok()).unwrap_or(0);
            // "settime flags: 0%o".
            let settime_flags = info.get("settime flags").and_then(|v| u32::from_str_radix(v.trim(), 8).ok()).unwrap_or(0);
            if settime_flags == 0 {
                FdKind::Timerfd { clockid, value, interval, ticks }
            } else {
                let wall = matches!(clockid, libc::CLOCK_REALTIME | libc::CLOCK_REALTIME_ALARM);
                let wall_deadline = (settime_flags & TFD_TIMER_ABSTIME != 0 && wall && value != (0, 0)).then(|| {
                    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                    add_time((now.as_secs() as i64, i64::from(now.subsec_nanos())), value)
                });
                FdKind::TimerfdAt { clockid, value, interval, ticks, settime_flags, wall_deadline }
            }
        }
        "anon_inode:inotify" => {
            let text = fdinfo_text()?;
            let dup = sysproc::pidfd_getfd(pidfd, fd).map_err(|source| EngineError::Sys { step: "pidfd_getfd inotify", pid, source })?;
            let queued = sysproc::fionread(&dup).map_err(|source| EngineError::Sys { step: "FIONREAD inotify", pid, source })?;
            if queued > 0 {
                let what = format!("inotify instance with {queued} bytes of events queued (they cannot be read without consuming them; try again)");
                return Err(super::unsupported(pid, fd, &what, target));
            }
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
                    return Err(EngineError::Proc { pid, detail: format!("fd {fd}: unsupported kind inotify watch on a deleted file ({target})") });
                }
                watches.push((wd, target, mask));
            }
            watches.sort();
            FdKind::Inotify { watches }
        }
        "anon_inode:[signalfd]" => {
            let mask = info.get("sigmask").and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
            FdKind::Signalfd { mask: mask.ok_or_else(|| EngineError::Proc { pid, detail: format!("fd {fd}: unreadable signalfd mask") })? }
        }
        "anon_inode:[eventpoll]" => {
            let text = fdinfo_text()?;
            let mut watches: Vec<EpollWatch> = Vec::new();
            for line in text.lines().filter(|l| l.starts_with("tfd:")) {
                let words: Vec<&str> = line.split_whitespace().collect();
                let field = |key: &str| words.iter().position(|w| *w == key).and_then(|i| words.get(i + 1)).copied();
                let parsed = (|| {
                    let tfd: i32 = field("tfd:")?.parse().ok()?;
                    let events = u32::from_str_radix(field("events:")?, 16).ok()?;
                    let data = u64::from_str_radix(field("data:")?, 16).ok()?;
                    Some((tfd, events, data))
                })();
                let (tfd, events, data) = parsed.ok_or_else(|| EngineError::Proc { pid, detail: format!("fd {fd}: unreadable epoll watch {line:?}") })?;
                let toff = watches.iter().filter(|w| w.tfd == tfd).count() as u32;
                let moved = epoll_target(pid, fd, (tfd, toff), ctx)?;
                watches.push(EpollWatch { tfd, events, data, moved });
            }
            FdKind::Epoll { watches }
        }
        "anon_inode:[eventfd]" => {
            let count = u64::from_str_radix(info.get("eventfd-count").map(String::as_str).unwrap_or("0"), 16).unwrap_or(0);
            let semaphore = info.get("eventfd-semaphore").is_some_and(|v| v == "1");
            FdKind::Eventfd { count, semaphore }
        }
        t => {
            if let Some(kind) = t.strip_prefix("anon_inode:") {
                let why = REFUSED.iter().find(|(k, _)| kind.starts_with(k)).map_or("this kind of anonymous inode cannot be saved", |(_, w)| w);
                return Err(super::unsupported(pid, fd, &format!("{kind}: {why}"), target));
            }
            return Ok(None);
        }
    }))
}

/// Where the file that epoll fd `epfd` of `pid` watches as (`tfd`, `toff`) is: `None` when fd
/// `tfd` of `pid` is that file, else the first fd of a process of the group that is (as (vpid,
/// fd)). A file no process of the group holds is refused.
fn epoll_target(pid: i32, epfd: i32, (tfd, toff): (i32, u32), ctx: &SaveContext) -> Result<Option<(i32, i32)>> {
    if sysproc::is_epoll_target(pid, tfd, pid, epfd, (tfd, toff)).unwrap_or(false) {
        return Ok(None);
    }
    let mut candidates = vec![pid];
    candidates.extend(ctx.group.iter().copied().filter(|&p| p != pid));
    for p in candidates {
        for (fd, _) in super::list_fds(p)? {
            if sysproc::is_epoll_target(p, fd, pid, epfd, (tfd, toff)).unwrap_or(false) {
                return Ok(Some((crate::process::vpid_of(p)?, fd)));
            }
        }
    }
    Err(EngineError::Proc {
        pid,
        detail: format!("fd {epfd}: epoll watch of fd {tfd}, closed since, watches a file no process of the checkpoint holds"),
    })
}

const TFD_TIMER_ABSTIME: u32 = 1;

/// `a + b` for (s, ns) times.
fn add_time(a: (i64, i64), b: (i64, i64)) -> (i64, i64) {
    let ns = a.1 + b.1;
    (a.0 + b.0 + ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000))
}

/// Makes a timerfd again in the process `inj` drives: clock `clockid`, `value` left to run (zero:
/// disarmed), `interval`, `ticks` unread expirations, armed with `settime_flags`. An absolute
/// timer gets its deadline back: `wall_deadline` on the wall clock, or its time left from now on
/// its clock as the process sees it (asked of the process, so a time namespace counts).
fn restore_timerfd(inj: &mut Injector, vpid: i32, st: &FdState, timer: (i32, (i64, i64), (i64, i64), u64), settime_flags: u32, wall_deadline: Option<(i64, i64)>) -> Result<u64> {
    let (clockid, value, interval, ticks) = timer;
    let flags = u64::from(st.flags & libc::O_NONBLOCK as u32);
    let fd = inj.call("timerfd_create", libc::SYS_timerfd_create, [clockid as u64, flags, 0, 0, 0, 0])?;
    let scratch = inj.scratch(4096)?;
    // A periodic timer that expired and was not read since shows no time left (the kernel moves
    // it on at the next read): it runs on from one interval from now, with its unread
    // expirations set below.
    let left = match (value, ticks) {
        ((0, 0), 0) if interval != (0, 0) => (0, 1),
        ((0, 0), _) => interval,
        (v, _) => v,
    };
    if left != (0, 0) {
        let it_value = match wall_deadline {
            Some(d) if settime_flags & TFD_TIMER_ABSTIME != 0 && value != (0, 0) => d,
            _ if settime_flags & TFD_TIMER_ABSTIME != 0 => {
                inj.call("clock_gettime (absolute timerfd)", libc::SYS_clock_gettime, [clockid as u64, scratch + 128, 0, 0, 0, 0])?;
                let b = inj.read_mem(scratch + 128, 16)?;
                let now = (i64::from_ne_bytes(b[..8].try_into().expect("8")), i64::from_ne_bytes(b[8..].try_into().expect("8")));
                add_time(now, left)
            }
            _ => left,
        };
        let spec: Vec<u8> = [interval.0, interval.1, it_value.0, it_value.1].iter().flat_map(|w| w.to_ne_bytes()).collect();
        inj.write_mem(scratch, &spec)?;
        inj.call("timerfd_settime", libc::SYS_timerfd_settime, [fd, u64::from(settime_flags), scratch, 0, 0, 0])?;
    }
    if ticks > 0 {
        // TFD_IOC_SET_TICKS = _IOW('T', 0, u64).
        const TFD_IOC_SET_TICKS: u64 = 0x4008_5400;
        inj.write_mem(scratch + 64, &ticks.to_ne_bytes())?;
        inj.call("ioctl(TFD_IOC_SET_TICKS)", libc::SYS_ioctl, [fd, TFD_IOC_SET_TICKS, scratch + 64, 0, 0, 0]).map_err(|e| {
            let detail = format!("fd {}: set {ticks} unread timerfd expirations (needs CONFIG_CHECKPOINT_RESTORE): {e}", st.fd);
            EngineError::Proc { pid: vpid, detail }
        })?;
    }
    Ok(fd)
}

/// Recreates an fd of this module's kinds in the process `inj` drives (which sees itself as
/// `vpid`); returns the new fd, or `None` when `st` is not of these kinds. An epoll instance is
/// created empty: its watches are added by [`add_epoll_watches`].
pub(super) fn restore(inj: &mut Injector, vpid: i32, st: &FdState) -> Result<Option<u64>> {
    Ok(Some(match &st.kind {
        FdKind::Epoll { .. } => inj.call("epoll_create1", libc::SYS_epoll_create1, [0, 0, 0, 0, 0, 0])?,
        FdKind::Timerfd { clockid, value, interval, ticks } => restore_timerfd(inj, vpid, st, (*clockid, *value, *interval, *ticks), 0, None)?,
        FdKind::TimerfdAt { clockid, value, interval, ticks, settime_flags, wall_deadline } => {
            restore_timerfd(inj, vpid, st, (*clockid, *value, *interval, *ticks), *settime_flags, *wall_deadline)?
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
        _ => return Ok(None),
    }))
}

/// An epoll watch whose file is held by a process restored after the epoll's owner: added by
/// that process once its fds exist, through a duplicate of the epoll fd.
pub(crate) struct PendingWatch {
    /// The epoll's owner (vpid) and its epoll fd.
    epoll: (i32, i32),
    /// The process holding the file (vpid) and its fd.
    holder: (i32, i32),
    events: u32,
    data: u64,
}

fn epoll_add(inj: &mut Injector, vpid: i32, (epfd, target): (u64, u64), events: u32, data: u64, what: &str) -> Result<()> {
    let scratch = inj.scratch(4096)?;
    let mut ev = events.to_ne_bytes().to_vec();
    ev.extend_from_slice(&data.to_ne_bytes());
    inj.write_mem(scratch, &ev)?;
    inj.call("epoll_ctl(ADD)", libc::SYS_epoll_ctl, [epfd, libc::EPOLL_CTL_ADD as u64, target, scratch, 0, 0])
        .map_err(|e| EngineError::Proc { pid: vpid, detail: format!("fd {epfd}: watch {what} again: {e}") })?;
    Ok(())
}

/// Adds the watches of every epoll instance among `fds`, now that every fd they name exists. A
/// watch whose file has moved is added through a duplicate of that file (taken from where it is
/// now), which is closed again: as before, the watch outlives the fd number it was added with.
/// A file held by a process not restored yet is left to that process
/// ([`add_pending_epoll_watches`]).
pub(super) fn add_epoll_watches(inj: &mut Injector, vpid: i32, fds: &[FdState], ctx: &mut super::RestoreContext) -> Result<()> {
    let used: Vec<i32> = fds.iter().map(|f| f.fd).collect();
    for st in fds {
        let FdKind::Epoll { watches } = &st.kind else { continue };
        for w in watches {
            let what = format!("fd {}", w.tfd);
            let Some((owner, fd)) = w.moved else {
                epoll_add(inj, vpid, (st.fd as u64, w.tfd as u64), w.events, w.data, &what)?;
                continue;
            };
            if owner != vpid && !ctx.done.contains(&owner) {
                ctx.pending_epoll.push(PendingWatch { epoll: (vpid, st.fd), holder: (owner, fd), events: w.events, data: w.data });
                continue;
            }
            let got = super::take_fd(inj, vpid, owner, fd as u64)?;
            // Under its old number when that is free, so that fdinfo reads the same.
            let tmp = if used.contains(&w.tfd) {
                got
            } else {
                inj.call("dup2", libc::SYS_dup2, [got, w.tfd as u64, 0, 0, 0, 0])?;
                inj.call("close", libc::SYS_close, [got, 0, 0, 0, 0, 0])?;
                w.tfd as u64
            };
            let added = epoll_add(inj, vpid, (st.fd as u64, tmp), w.events, w.data, &what);
            inj.call("close", libc::SYS_close, [tmp, 0, 0, 0, 0, 0])?;
            added?;
        }
    }
    Ok(())
}

/// Adds the watches left to the process `vpid` (whose fds now exist) by epoll instances of
/// processes restored before it.
pub(super) fn add_pending_epoll_watches(inj: &mut Injector, vpid: i32, ctx: &mut super::RestoreContext) -> Result<()> {
    let mine: Vec<PendingWatch> = {
        let (mine, rest) = std::mem::take(&mut ctx.pending_epoll).into_iter().partition(|p| p.holder.0 == vpid);
        ctx.pending_epoll = rest;
        mine
    };
    for p in mine {
        let ep = super::take_fd(inj, vpid, p.epoll.0, p.epoll.1 as u64)?;
        let what = format!("fd {} of process {vpid}", p.holder.1);
        let added = epoll_add(inj, vpid, (ep, p.holder.1 as u64), p.events, p.data, &what);
        inj.call("close", libc::SYS_close, [ep, 0, 0, 0, 0, 0])?;
        added?;
    }
    Ok(())
}
