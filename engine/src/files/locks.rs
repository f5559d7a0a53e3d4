//! File locks: `flock` locks, POSIX record locks (`F_SETLK`, owned by a process), OFD locks
//! (`F_OFD_SETLK`, owned by an open file description) and leases (`F_SETLEASE`).
//!
//! ## Save
//! The kernel lists, in `/proc/PID/fdinfo/FD`, a `lock:` line for every lock taken through that
//! fd's open file description: flock and OFD locks and leases (owned by the description) show on
//! every fd of it in every process, POSIX locks (owned by the process) only in the owning
//! process. [`crate::files::save`] keeps flock/OFD/lease locks with the first fd of a description
//! it saves, and POSIX locks with each process's first fd of it, so every lock is retaken once,
//! by the right owner. Mandatory locks, leases being broken and NFS delegations cannot be
//! retaken and fail the checkpoint; so does a lock on an fd that is not a file reopened by path,
//! a deleted file, a directory or a device.
//!
//! ## Restore
//! Once every fd of a process is in place, its locks are retaken by injection (non-blocking:
//! `flock(LOCK_NB)`, `F_SETLK`, `F_OFD_SETLK`, `F_SETLEASE`) before it runs: should another
//! process have taken a conflicting lock since the checkpoint, the restore fails and says so.
use serde::{Deserialize, Serialize};

use super::FdKind;
use crate::inject::Injector;
use crate::{EngineError, Result};

/// Which kind of lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockKind {
    /// `flock(2)`, whole file, owned by the open file description.
    Flock,
    /// POSIX record lock (`fcntl(F_SETLK)`, `lockf`), owned by the process.
    Posix,
    /// Open file description lock (`F_OFD_SETLK`).
    Ofd,
    /// A lease (`F_SETLEASE`), owned by the open file description.
    Lease,
}

/// One lock held through an fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileLock {
    /// Kind.
    pub kind: LockKind,
    /// A write (exclusive) lock rather than a read (shared) one.
    pub write: bool,
    /// First byte locked.
    pub start: u64,
    /// Last byte locked; `None`: to the end of the file, however far it grows.
    pub end: Option<u64>,
}

/// Parses the `lock:` lines of the fdinfo `text` of fd `fd` of `pid` (link `target`).
pub(super) fn parse(pid: i32, fd: i32, target: &str, text: &str) -> Result<Vec<FileLock>> {
    let mut out = Vec::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("lock:")) {
        let refuse = |why: &str| EngineError::Proc { pid, detail: format!("fd {fd} ({target}): {why}: {}", line.trim()) };
        // "1: POSIX  ADVISORY  WRITE 1234 fe:00:567 0 EOF"
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.len() < 8 {
            return Err(refuse("unreadable lock"));
        }
        let kind = match w[1] {
            "FLOCK" => LockKind::Flock,
            "POSIX" => LockKind::Posix,
            "OFDLCK" => LockKind::Ofd,
            "LEASE" => LockKind::Lease,
            "DELEG" => return Err(refuse("an NFS delegation cannot be restored")),
            _ => return Err(refuse("lock of a kind that cannot be restored")),
        };
        match (kind, w[2]) {
            (LockKind::Lease, "ACTIVE") => {}
            (LockKind::Lease, "BREAKING" | "BREAKER") => return Err(refuse("a lease being broken cannot be restored; try again once it is")),
            (LockKind::Lease, _) => return Err(refuse("lease in a state that cannot be restored")),
            (_, "ADVISORY") => {}
            (_, "MANDATORY") => return Err(refuse("mandatory locks cannot be restored")),
            _ => return Err(refuse("lock of a mode that cannot be restored")),
        }
        let write = match w[3] {
            "WRITE" => true,
            "READ" => false,
            _ => return Err(refuse("lock of a type that cannot be restored")),
        };
        let start = w[6].parse().map_err(|_| refuse("unreadable lock start"))?;
        let end = match w[7] {
            "EOF" => None,
            e => Some(e.parse().map_err(|_| refuse("unreadable lock end"))?),
        };
        out.push(FileLock { kind, write, start, end });
    }
    Ok(out)
}

/// Refuses locks on an fd that restore does not reopen as the same file.
pub(super) fn check_kind(pid: i32, fd: i32, target: &str, kind: &FdKind, locks: &[FileLock]) -> Result<()> {
    match kind {
        FdKind::Path { .. } | FdKind::Deleted { .. } | FdKind::CharDev { .. } | FdKind::DeletedDir { .. } | FdKind::Dup { .. } => Ok(()),
        _ => Err(EngineError::Proc {
            pid,
            detail: format!("fd {fd} ({target}): holds {} lock(s) ({:?}...) on a kind of file whose locks cannot be restored", locks.len(), locks[0].kind),
        }),
    }
}

/// Retakes `locks` through fd `fd` of the process `inj` drives (which sees itself as `vpid`);
/// `path` names the file in errors.
pub(super) fn restore(inj: &mut Injector, vpid: i32, fd: i32, path: &str, locks: &[FileLock]) -> Result<()> {
    let scratch = inj.scratch(4096)?;
    for l in locks {
        let fail = |e: EngineError| EngineError::Proc {
            pid: vpid,
            detail: format!(
                "fd {fd} ({path}): retake {:?} {} lock {}..{:?}: {e} (taken by another process since the checkpoint?)",
                l.kind,
                if l.write { "write" } else { "read" },
                l.start,
                l.end
            ),
        };
        let fd = fd as u64;
        match l.kind {
            LockKind::Flock => {
                let op = if l.write { libc::LOCK_EX } else { libc::LOCK_SH } | libc::LOCK_NB;
                inj.call("flock", libc::SYS_flock, [fd, op as u64, 0, 0, 0, 0]).map_err(fail)?;
            }
            LockKind::Posix | LockKind::Ofd => {
                // struct flock: l_type, l_whence (shorts), l_start, l_len (64-bit), l_pid.
                let mut fl = [0u8; 32];
                let ty = if l.write { libc::F_WRLCK } else { libc::F_RDLCK } as i16;
                fl[0..2].copy_from_slice(&ty.to_ne_bytes());
                fl[2..4].copy_from_slice(&(libc::SEEK_SET as i16).to_ne_bytes());
                fl[8..16].copy_from_slice(&l.start.to_ne_bytes());
                let len = l.end.map_or(0, |e| e + 1 - l.start);
                fl[16..24].copy_from_slice(&len.to_ne_bytes());
                inj.write_mem(scratch, &fl)?;
                let cmd = if l.kind == LockKind::Posix { libc::F_SETLK } else { libc::F_OFD_SETLK };
                inj.call("fcntl(F_SETLK)", libc::SYS_fcntl, [fd, cmd as u64, scratch, 0, 0, 0]).map_err(fail)?;
            }
            LockKind::Lease => {
                let ty = if l.write { libc::F_WRLCK } else { libc::F_RDLCK };
                inj.call("fcntl(F_SETLEASE)", libc::SYS_fcntl, [fd, libc::F_SETLEASE as u64, ty as u64, 0, 0, 0]).map_err(fail)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_and_refuses_what_cannot_come_back() {
        let text = "pos:\t0\nflags:\t02\nlock:\t1: FLOCK  ADVISORY  WRITE 23140 fe:00:10010689 0 EOF\n\
                    lock:\t2: POSIX  ADVISORY  READ 23140 fe:00:10010689 5 14\n\
                    lock:\t3: OFDLCK ADVISORY  WRITE -1 fe:00:10010689 200 249\n\
                    lock:\t4: LEASE  ACTIVE    READ 23140 fe:00:10010714 0 EOF\n";
        let got = parse(1, 3, "/f", text).unwrap();
        assert_eq!(
            got,
            vec![
                FileLock { kind: LockKind::Flock, write: true, start: 0, end: None },
                FileLock { kind: LockKind::Posix, write: false, start: 5, end: Some(14) },
                FileLock { kind: LockKind::Ofd, write: true, start: 200, end: Some(249) },
                FileLock { kind: LockKind::Lease, write: false, start: 0, end: None },
            ]
        );
        for (line, why) in [
            ("lock:\t1: LEASE  BREAKING  READ 1 fe:00:1 0 EOF\n", "being broken"),
            ("lock:\t1: POSIX  MANDATORY WRITE 1 fe:00:1 0 EOF\n", "mandatory"),
            ("lock:\t1: DELEG  ACTIVE    READ 1 fe:00:1 0 EOF\n", "delegation"),
            ("lock:\t1: POSIX  ADVISORY\n", "unreadable"),
        ] {
            let err = parse(7, 4, "/f", line).unwrap_err().to_string();
            assert!(err.contains(why) && err.contains("fd 4"), "{line}: {err}");
        }
    }
}
