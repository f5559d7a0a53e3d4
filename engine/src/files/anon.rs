//! Descriptors of anonymous inodes: eventfds, timerfds, signalfds, inotify instances (watches
//! found again from their file handles) and epoll instances (watches added once every fd of the
//! process exists). Their state is read from `/proc/PID/fdinfo/FD` and recreated by injected
//! syscalls.
use std::collections::HashMap;

use super::{FdKind, FdState};
use crate::inject::Injector;
use crate::sys::proc as sysproc;
use crate::{EngineError, Result};

/// Saves the anonymous-inode fd `fd` of `pid` whose link reads `target`, or `None` when it is not
/// one of the kinds of this module. `info` is its fdinfo.
pub(super) fn save(pid: i32, fd: i32, target: &str, info: &HashMap<String, String>) -> Result<Option<FdKind>> {
    let fdinfo_text = || {
        let path = format!("/proc/{pid}/fdinfo/{fd}");
        std::fs::read_to_string(&path).map_err(|e| EngineError::io("read", path.as_ref(), e))
    };
    Ok(Some(match target {
        "anon_inode:[timerfd]" => {
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
        }
        "anon_inode:inotify" => {
            let text = fdinfo_text()?;
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
        }
        "anon_inode:[eventfd]" => {
            let count = u64::from_str_radix(info.get("eventfd-count").map(String::as_str).unwrap_or("0"), 16).unwrap_or(0);
            let semaphore = info.get("eventfd-semaphore").is_some_and(|v| v == "1");
            FdKind::Eventfd { count, semaphore }
        }
        _ => return Ok(None),
    }))
}

/// Recreates an fd of this module's kinds in the process `inj` drives (which sees itself as
/// `vpid`); returns the new fd, or `None` when `st` is not of these kinds. An epoll instance is
/// created empty: its watches are added by [`add_epoll_watches`].
pub(super) fn restore(inj: &mut Injector, vpid: i32, st: &FdState) -> Result<Option<u64>> {
    Ok(Some(match &st.kind {
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

/// Adds the watches of every epoll instance among `fds`, now that every fd they name exists.
pub(super) fn add_epoll_watches(inj: &mut Injector, vpid: i32, fds: &[FdState]) -> Result<()> {
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
