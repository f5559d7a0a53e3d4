//! Dirty-page tracking: which pages of a process were written since the last time we asked.
//!
//! One interface, three backends, chosen at run time ([`support`] probes the kernel once):
//! - [`Backend::UffdWp`]: userfaultfd write-protection in async mode (`UFFD_FEATURE_WP_ASYNC` +
//!   `WP_UNPOPULATED`, Linux 6.7+). The userfaultfd is created inside the stopped target (an
//!   injected syscall, since it belongs to the mm of its creator; with `UFFD_USER_MODE_ONLY`, so
//!   that a process of another user may create it too), duplicated into Zap with
//!   `pidfd_getfd` and closed in the target, so the program never sees it. Zap registers the
//!   process's private anonymous mappings and write-protects them; a write then just clears the
//!   page's protection, which `PAGEMAP_SCAN` on `/proc/PID/pagemap` reports (`PAGE_IS_WRITTEN`)
//!   and re-protects in the same walk. The descriptor must outlive the checkpoint: it is kept in
//!   this process ([`Keeper::Here`], for a long-running Zap) or parked in another process of ours
//!   ([`Keeper::Process`], the pod's init).
//! - [`Backend::SoftDirty`]: soft-dirty bits (`clear_refs` 4, bit 55 of pagemap), where the
//!   kernel has CONFIG_MEM_SOFT_DIRTY.
//! - [`Backend::ContentHash`]: a BLAKE3 hash of every present page, compared with the hashes of
//!   the last time: works anywhere, but reads all memory.
//!
//! Correctness rules (a page written but not reported would corrupt a restore): only private
//! anonymous mappings are tracked; every other mapping, and any part of a mapping that is not
//! tracked now (new mappings, remapped ones — `mremap` drops the userfaultfd registration — and a
//! forked child, which inherits none), is reported *untracked*, to be saved whole. For the
//! userfaultfd backend a mapping counts as tracked only while `/proc/PID/smaps` shows its `uw`
//! flag ([`VmaState::uffd_wp`]). Pages that are not present now must be saved as zero by the caller even when not
//! reported (`MADV_DONTNEED` empties a page without writing it); [`Dirty`] documents this.
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use crate::inject::Injector;
use crate::mem::{Backing, VmaState};
use crate::sys::{proc as sysproc, uffd};
use crate::{EngineError, Result};

const PAGE: u64 = 4096;

/// A tracking backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Backend {
    /// Soft-dirty bits (CONFIG_MEM_SOFT_DIRTY).
    SoftDirty,
    /// Userfaultfd async write-protection read with PAGEMAP_SCAN (Linux 6.7+).
    UffdWp,
    /// Page hashes compared with the previous ones.
    ContentHash,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::SoftDirty => "soft-dirty",
            Backend::UffdWp => "uffd-wp",
            Backend::ContentHash => "content-hash",
        })
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "soft-dirty" => Ok(Backend::SoftDirty),
            "uffd-wp" => Ok(Backend::UffdWp),
            "content-hash" | "hash" => Ok(Backend::ContentHash),
            other => Err(format!("unknown tracker {other:?} (soft-dirty, uffd-wp, content-hash)")),
        }
    }
}

/// What this kernel supports: `Err` names what is missing.
#[derive(Debug)]
pub struct Support {
    /// Soft-dirty bits.
    pub soft_dirty: std::result::Result<(), String>,
    /// Userfaultfd async write-protection and PAGEMAP_SCAN.
    pub uffd_wp: std::result::Result<(), String>,
}

/// Probes the kernel (once per process).
pub fn support() -> &'static Support {
    static S: OnceLock<Support> = OnceLock::new();
    S.get_or_init(|| Support { soft_dirty: uffd::probe_soft_dirty(), uffd_wp: uffd::probe_uffd_wp() })
}

/// The backend to use: `$ZAP_TRACKER` if set, else the first the kernel supports of uffd-wp,
/// soft-dirty, content-hash.
pub fn default_backend() -> Result<Backend> {
    if let Ok(v) = std::env::var("ZAP_TRACKER") {
        let b: Backend = v.parse().map_err(|detail| EngineError::Proc { pid: 0, detail })?;
        check(b)?;
        return Ok(b);
    }
    let s = support();
    Ok(if s.uffd_wp.is_ok() {
        Backend::UffdWp
    } else if s.soft_dirty.is_ok() {
        Backend::SoftDirty
    } else {
        Backend::ContentHash
    })
}

/// Fails when the kernel lacks what `backend` needs.
pub fn check(backend: Backend) -> Result<()> {
    let s = support();
    let r = match backend {
        Backend::UffdWp => s.uffd_wp.clone(),
        Backend::SoftDirty => s.soft_dirty.clone(),
        Backend::ContentHash => Ok(()),
    };
    r.map_err(|detail| EngineError::Proc { pid: 0, detail: format!("dirty tracker {backend} unavailable: {detail}") })
}

/// Where a process's userfaultfd is kept between checkpoints.
#[derive(Clone, Copy, Debug)]
pub enum Keeper {
    /// In this process (a long-running Zap: tests, the scheduler).
    Here,
    /// Parked in another stopped process of ours (the pod's init, host pid `pid`), which sees the
    /// target as `target_vpid`.
    Process {
        /// Host pid of the keeper.
        pid: i32,
        /// The target's pid as the keeper sees it.
        target_vpid: i32,
    },
}

/// Tracking state of one process, kept between checkpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Armed {
    /// Backend.
    pub backend: Backend,
    /// Host pid of the tracked process.
    pub pid: i32,
    /// Its start time (guards against pid reuse).
    pub start_time: u64,
    /// Userfaultfd kept in another process: (its host pid, its start time, the fd there).
    pub keeper: Option<(i32, u64, i32)>,
    /// Content hashes: per tracked mapping, (start, end, one hash per page; 0 = not present).
    pub hashes: Vec<(u64, u64, Vec<u64>)>,
}

/// What a collection found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Address ranges that were tracked since the last arm/collect. Anything outside them is
    /// untracked and must be saved whole.
    pub tracked: Vec<(u64, u64)>,
    /// Inside `tracked`: the pages written since. The other pages of `tracked` hold what they
    /// held then, except pages that are not present now, which the caller must treat as zero.
    pub written: Vec<(u64, u64)>,
}

impl Dirty {
    /// Bytes of `written`.
    pub fn written_bytes(&self) -> u64 {
        self.written.iter().map(|(a, b)| b - a).sum()
    }
}

/// Userfaultfds kept by this process, by tracked pid.
fn here() -> &'static Mutex<HashMap<i32, OwnedFd>> {
    static H: OnceLock<Mutex<HashMap<i32, OwnedFd>>> = OnceLock::new();
    H.get_or_init(|| Mutex::new(HashMap::new()))
}

fn start_time(pid: i32) -> Result<u64> {
    crate::pod::proc_stat(pid).map(|(_, t)| t).ok_or_else(|| EngineError::Proc { pid, detail: "no such process (or unreadable start time)".into() })
}

fn eligible(v: &VmaState) -> bool {
    v.backing == Backing::Anon && !v.shared
}

fn uffd_of(armed: &Armed) -> Result<OwnedFd> {
    let pid = armed.pid;
    match armed.keeper {
        None => here()
            .lock()
            .expect("tracker registry")
            .get(&pid)
            .map(|fd| fd.try_clone())
            .transpose()
            .map_err(|source| EngineError::Sys { step: "dup userfaultfd", pid, source })?
            .ok_or_else(|| EngineError::Proc { pid, detail: "tracking lost: this process holds no userfaultfd for it".into() }),
        Some((kpid, kstart, kfd)) => {
            if start_time(kpid).ok() != Some(kstart) {
                return Err(EngineError::Proc { pid, detail: format!("tracking lost: keeper {kpid} is gone") });
            }
            let link = std::fs::read_link(format!("/proc/{kpid}/fd/{kfd}")).map(|l| l.to_string_lossy().into_owned()).unwrap_or_default();
            if link != "anon_inode:[userfaultfd]" {
                return Err(EngineError::Proc { pid, detail: format!("tracking lost: keeper {kpid} fd {kfd} is {link:?}") });
            }
            let pidfd = sysproc::pidfd_open(kpid).map_err(|source| EngineError::Sys { step: "pidfd_open keeper", pid: kpid, source })?;
            sysproc::pidfd_getfd(&pidfd, kfd).map_err(|source| EngineError::Sys { step: "pidfd_getfd userfaultfd", pid: kpid, source })
        }
    }
}

/// Registers and write-protects the eligible mappings of `vmas` not tracked yet (`vmas` as
/// read before, with their `uffd_wp` flags).
fn register_new(pid: i32, uffd_fd: &OwnedFd, vmas: &[VmaState]) -> Result<()> {
    for v in vmas.iter().filter(|v| eligible(v) && !v.uffd_wp) {
        let len = v.end - v.start;
        // A mapping the kernel refuses (e.g. VM_PFNMAP) simply stays untracked.
        if uffd::register_wp(uffd_fd, v.start, len).is_ok() {
            uffd::write_protect(uffd_fd, v.start, len)
                .map_err(|source| EngineError::Sys { step: "userfaultfd write-protect", pid, source })?;
        }
    }
    Ok(())
}

fn page_hashes(pid: i32, mem: &File, pm: &File, start: u64, end: u64) -> Result<Vec<u64>> {
    let pages = ((end - start) / PAGE) as usize;
    let mut raw = vec![0u8; pages * 8];
    pm.read_exact_at(&mut raw, start / PAGE * 8).map_err(|source| EngineError::Sys { step: "read pagemap", pid, source })?;
    let mut out = vec![0u64; pages];
    let mut buf = vec![0u8; PAGE as usize];
    for (i, e) in raw.chunks_exact(8).enumerate() {
        let e = u64::from_le_bytes(e.try_into().expect("8"));
        if e & (3 << 62) == 0 {
            continue; // not present, not swapped
        }
        let addr = start + i as u64 * PAGE;
        mem.read_exact_at(&mut buf, addr).map_err(|source| EngineError::Sys { step: "read memory", pid, source })?;
        let h = blake3::hash(&buf);
        out[i] = u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8")) | 1;
    }
    Ok(out)
}

fn hash_all(pid: i32, vmas: &[VmaState]) -> Result<Vec<(u64, u64, Vec<u64>)>> {
    let mem = File::open(format!("/proc/{pid}/mem")).map_err(|e| EngineError::io("open", format!("/proc/{pid}/mem").as_ref(), e))?;
    let pm = File::open(format!("/proc/{pid}/pagemap")).map_err(|e| EngineError::io("open", format!("/proc/{pid}/pagemap").as_ref(), e))?;
    vmas.iter().filter(|v| eligible(v)).map(|v| Ok((v.start, v.end, page_hashes(pid, &mem, &pm, v.start, v.end)?))).collect()
}

/// Starts tracking the stopped process `pid` (whose main thread `inj` drives) with `backend`.
/// `vmas` is its current mapping table.
pub fn arm(pid: i32, inj: &mut Injector, backend: Backend, keeper: Keeper, vmas: &[VmaState]) -> Result<Armed> {
    check(backend)?;
    let mut armed = Armed { backend, pid, start_time: start_time(pid)?, keeper: None, hashes: Vec::new() };
    match backend {
        Backend::SoftDirty => {
            let path = format!("/proc/{pid}/clear_refs");
            std::fs::write(&path, "4").map_err(|e| EngineError::io("clear soft-dirty bits", path.as_ref(), e))?;
        }
        Backend::ContentHash => armed.hashes = hash_all(pid, vmas)?,
        Backend::UffdWp => {
            // UFFD_USER_MODE_ONLY: a process without CAP_SYS_PTRACE (another user's) may create
            // one under vm.unprivileged_userfaultfd = 0; async write-protection resolves every
            // fault in the kernel, from user or kernel mode, so it tracks the same.
            const UFFD_USER_MODE_ONLY: u64 = 1;
            let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
            let tfd = match inj.syscall(libc::SYS_userfaultfd, [flags | UFFD_USER_MODE_ONLY, 0, 0, 0, 0, 0])? {
                rc if rc == -(libc::EINVAL as i64) => inj.call("userfaultfd", libc::SYS_userfaultfd, [flags, 0, 0, 0, 0, 0])?,
                rc if rc < 0 => {
                    return Err(EngineError::Sys { step: "userfaultfd", pid, source: std::io::Error::from_raw_os_error((-rc) as i32) })
                }
                rc => rc as u64,
            };
            let result = (|| {
                let pidfd = sysproc::pidfd_open(pid).map_err(|source| EngineError::Sys { step: "pidfd_open", pid, source })?;
                let fd = sysproc::pidfd_getfd(&pidfd, tfd as i32)
                    .map_err(|source| EngineError::Sys { step: "pidfd_getfd userfaultfd", pid, source })?;
                uffd::api(&fd, uffd::UFFD_FEATURE_WP_ASYNC | uffd::UFFD_FEATURE_WP_UNPOPULATED)
                    .map_err(|source| EngineError::Sys { step: "userfaultfd API", pid, source })?;
                register_new(pid, &fd, vmas)?;
                match keeper {
                    Keeper::Here => {
                        here().lock().expect("tracker registry").insert(pid, fd);
                    }
                    Keeper::Process { pid: kpid, target_vpid } => {
                        armed.keeper = Some((kpid, start_time(kpid)?, park(kpid, target_vpid, tfd)?));
                    }
                }
                Ok::<(), EngineError>(())
            })();
            inj.call("close userfaultfd", libc::SYS_close, [tfd, 0, 0, 0, 0, 0])?;
            result?;
        }
    }
    Ok(armed)
}

/// Takes fd `tfd` of the target (pid `target_vpid` in the keeper's view) into keeper `kpid`, a
/// process of ours that is stopped for the purpose; returns the fd number there.
fn park(kpid: i32, target_vpid: i32, tfd: u64) -> Result<i32> {
    crate::inject::in_stopped_process(kpid, |inj| {
        let pidfd = inj.call("pidfd_open", libc::SYS_pidfd_open, [target_vpid as u64, 0, 0, 0, 0, 0])?;
        let got = inj.call("pidfd_getfd", libc::SYS_pidfd_getfd, [pidfd, tfd, 0, 0, 0, 0]);
        inj.call("close pidfd", libc::SYS_close, [pidfd, 0, 0, 0, 0, 0])?;
        got.map(|fd| fd as i32)
    })
}

/// Drops the tracking of `armed`: closes the userfaultfd this process holds for it, or the one
/// parked in its keeper (which is stopped for a moment to close it).
pub fn disarm(armed: &Armed) -> Result<()> {
    match armed.keeper {
        None => {
            here().lock().expect("tracker registry").remove(&armed.pid);
            Ok(())
        }
        Some((kpid, kstart, kfd)) => {
            if start_time(kpid).ok() != Some(kstart) {
                return Ok(()); // the keeper is gone, and the descriptor with it
            }
            crate::inject::in_stopped_process(kpid, |inj| {
                inj.call("close parked userfaultfd", libc::SYS_close, [kfd as u64, 0, 0, 0, 0, 0]).map(|_| ())
            })
        }
    }
}

/// Reports the pages of the stopped process `armed.pid` written since [`arm`] or the last
/// collection, and re-arms (new eligible mappings are tracked from now on). `vmas` is its
/// current mapping table ([`crate::mem::save_layout`], which reads the `uw` flags).
pub fn collect(armed: &mut Armed, vmas: &[VmaState]) -> Result<Dirty> {
    let pid = armed.pid;
    if start_time(pid)? != armed.start_time {
        return Err(EngineError::Proc { pid, detail: "tracking lost: the process was replaced".into() });
    }
    let mut d = Dirty::default();
    match armed.backend {
        Backend::UffdWp => {
            let fd = uffd_of(armed)?;
            let pm_path = format!("/proc/{pid}/pagemap");
            let pm = File::open(&pm_path).map_err(|e| EngineError::io("open", pm_path.as_ref(), e))?;
            // Only eligible mappings count: `uw` alone could come from the program's own
            // userfaultfd on another kind of mapping.
            // A mapping said to be tracked that the kernel finds unregistered (EPERM from the
            // scan's PM_SCAN_CHECK_WPASYNC: unmapped and mapped again at the same place, which a
            // layout taken over from an earlier read cannot tell) is untracked: saved whole and
            // registered now.
            let mut unregistered = Vec::new();
            for v in vmas.iter().filter(|v| eligible(v) && v.uffd_wp) {
                let (a, b) = (v.start, v.end);
                match uffd::scan_written(&pm, a, b) {
                    Ok(w) => {
                        d.tracked.push((a, b));
                        d.written.extend(w);
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => unregistered.push(VmaState { uffd_wp: false, ..v.clone() }),
                    Err(source) => return Err(EngineError::Sys { step: "PAGEMAP_SCAN", pid, source }),
                }
            }
            register_new(pid, &fd, vmas)?;
            register_new(pid, &fd, &unregistered)?;
        }
        Backend::SoftDirty => {
            let pm_path = format!("/proc/{pid}/pagemap");
            let pm = File::open(&pm_path).map_err(|e| EngineError::io("open", pm_path.as_ref(), e))?;
            for v in vmas.iter().filter(|v| eligible(v)) {
                let pages = ((v.end - v.start) / PAGE) as usize;
                let mut raw = vec![0u8; pages * 8];
                pm.read_exact_at(&mut raw, v.start / PAGE * 8).map_err(|source| EngineError::Sys { step: "read pagemap", pid, source })?;
                d.tracked.push((v.start, v.end));
                for (i, e) in raw.chunks_exact(8).enumerate() {
                    if u64::from_le_bytes(e.try_into().expect("8")) & (1 << 55) != 0 {
                        push_page(&mut d.written, v.start + i as u64 * PAGE);
                    }
                }
            }
            let path = format!("/proc/{pid}/clear_refs");
            std::fs::write(&path, "4").map_err(|e| EngineError::io("clear soft-dirty bits", path.as_ref(), e))?;
        }
        Backend::ContentHash => {
            let now = hash_all(pid, vmas)?;
            for (start, _, hashes) in &now {
                for (i, h) in hashes.iter().enumerate() {
                    let addr = start + i as u64 * PAGE;
                    let before = armed.hashes.iter().find(|(a, b, _)| *a <= addr && addr < *b).map(|(a, _, hs)| hs[((addr - a) / PAGE) as usize]);
                    if let Some(old) = before {
                        push_page(&mut d.tracked, addr);
                        if old != *h {
                            push_page(&mut d.written, addr);
                        }
                    } // else a new page range: untracked
                }
            }
            armed.hashes = now;
        }
    }
    Ok(d)
}

fn push_page(runs: &mut Vec<(u64, u64)>, addr: u64) {
    match runs.last_mut() {
        Some(r) if r.1 == addr => r.1 += PAGE,
        _ => runs.push((addr, addr + PAGE)),
    }
}

