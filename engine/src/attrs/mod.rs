//! Process and thread attributes: what a process is besides its memory, registers, signals and
//! fds.
//!
//! - Process-wide ([`ProcAttrs`]): name, working (also one removed since: made again, entered
//!   and removed) and root directories, umask, personality,
//!   resource limits, mm boundaries and executable (`PR_SET_MM_MAP`, [`mm`]), the mm's flags
//!   (THP disable, memory-deny-write-execute, membarrier registrations, KSM merge-any, the
//!   dumpable flag), oom_score_adj, child-subreaper, and a job-control stop.
//! - Per thread ([`ThreadAttrs`], where Linux keeps them per thread): credentials ([`creds`]:
//!   uids, gids, groups, the five capability sets, securebits, no_new_privs), seccomp
//!   ([`seccomp`]: strict mode or the filter programs), scheduling ([`sched`]: policy, priority,
//!   nice, `sched_attr` flags and deadline parameters, CPU affinity, I/O priority, timer slack)
//!   and the rest ([`task`]: parent-death signal, loginuid and sessionid, speculation controls,
//!   TSC and CPUID access, MCE kill policy, I/O flusher, syscall user dispatch).
//!
//! ## Reading
//! From `/proc` what it shows (capabilities, no_new_privs, seccomp mode, loginuid, sessionid,
//! oom_score_adj, KSM, task flags), the seccomp programs through ptrace
//! (`PTRACE_SECCOMP_GET_FILTER`), everything else by asking the process itself: syscalls
//! injected into each stopped thread (`prlimit64(0, ..)`, `prctl(PR_GET_*)`,
//! `sched_getattr(0, ..)`, `getpriority`, `ioprio_get`,
//! `membarrier(MEMBARRIER_CMD_GET_REGISTRATIONS)`...). No syscall is made on another process
//! that checks the caller's rights over it (`prlimit` on another user's process needs
//! CAP_SYS_RESOURCE, which root lacks here), so processes of other users, setuid programs,
//! non-dumpable processes and processes under no_new_privs or seccomp (whose filters are
//! suspended while we trace them, see [`crate::freeze`]) are read like any other.
//!
//! ## Restore order
//! A restored process starts as a clone of our init: root, with the restorer's capabilities, no
//! seccomp. Each step needs what a later one takes away, so [`crate::process::ProcRestore`] goes:
//! 1. *Threads step*, in the main thread before the other threads are cloned from it: its
//!    loginuid, written to `/proc/thread-self/loginuid` (CAP_AUDIT_CONTROL; the threads then
//!    share its audit session again), and the seccomp filters every thread has (the common
//!    oldest ones), so the threads share them again (a later `SECCOMP_FILTER_FLAG_TSYNC` needs
//!    that). Children are cloned before, and inherit neither.
//! 2. The other threads' loginuid where it differs, before a chroot can hide `/proc`.
//! 3. Process-wide ([`ProcAttrs::restore`]): name, cwd, umask, personality, rlimits,
//!    `PR_SET_MM_MAP`, child-subreaper, THP, membarrier registrations, KSM, oom_score_adj, and last
//!    chroot (paths are the mount namespace's; the working directory is entered first).
//! 4. Per thread ([`ThreadAttrs::restore_flags`]): speculation controls, TSC, CPUID, MCE
//!    policy, I/O flusher.
//! 5. Signals, timers (not here).
//! 6. Per thread, credentials and what depends on them ([`ThreadAttrs::restore_creds`], see
//!    [`creds`]): inheritable set while the bounding set is still full, bounding set drop
//!    (needs CAP_SETPCAP), `PR_SET_KEEPCAPS`, groups, gids and uids (keepcaps keeps the
//!    permitted set through the uid change, which empties the effective set), effective set
//!    raised to the permitted one again, ambient raise (before SECBIT_NO_CAP_AMBIENT_RAISE),
//!    securebits (needs CAP_SETPCAP), scheduling ([`sched`]: affinity before the policy, since a
//!    deadline task refuses a narrower affinity, then `sched_setattr`, then I/O priority and
//!    timer slack, which follow the policy; a real-time policy, a lower nice value or a
//!    real-time I/O class need CAP_SYS_NICE, and a thread under SCHED_IDLE or a deadline budget
//!    runs the few injected syscalls left only when the scheduler lets it), the thread's own
//!    seccomp filters or strict mode (need CAP_SYS_ADMIN or no_new_privs), no_new_privs, the
//!    saved effective and permitted sets, and the parent-death signal (a uid change clears it).
//! 7. Process-wide, after every thread's uid change ([`ProcAttrs::restore_last`]): the dumpable
//!    flag (a uid change resets it to `fs.suid_dumpable`), then memory-deny-write-execute.
//! 8. After the last injected syscall, through ptrace: syscall user dispatch
//!    ([`ThreadAttrs::restore_traced`]); registers; then the job-control stop
//!    ([`crate::freeze::Frozen::detach_stopped`]).
//!
//! Seccomp filters installed in steps 1 and 6 would judge the syscalls injected after them; they
//! are suspended for our tracee (PTRACE_O_SUSPEND_SECCOMP) until it is detached.
//!
//! ## What the kernel may refuse
//! Reported in the restore's warnings, never silently dropped: a hard rlimit above the
//! restorer's (root here lacks CAP_SYS_RESOURCE), an oom_score_adj below the restorer's minimum,
//! a real-time or deadline policy where the cgroup has no real-time budget, an affinity to CPUs
//! not available, capabilities the restorer does not have, the I/O flusher flag and KSM
//! merge-any (CAP_SYS_RESOURCE), a loginuid the kernel keeps immutable, a sessionid (the kernel
//! numbers audit sessions; a restored process has the restorer's, or a new one when its loginuid
//! is set), dumpable mode 2 where the uid change did not produce it. Refused at checkpoint,
//! naming the pid and why: a seccomp filter that can hand syscalls to a user-space listener
//! (`SECCOMP_RET_USER_NOTIF`), a thread with a user shadow stack.
use serde::{Deserialize, Serialize};

use crate::inject::Injector;
use crate::{EngineError, Result};

pub mod creds;
pub mod mm;
pub mod sched;
pub mod seccomp;
pub mod task;

pub use mm::{MmBounds, MmFlags};

/// `prctl` options used here (Debian's headers predate some).
pub(crate) mod pr {
    pub const SET_PDEATHSIG: u64 = 1;
    pub const GET_PDEATHSIG: u64 = 2;
    pub const GET_DUMPABLE: u64 = 3;
    pub const SET_DUMPABLE: u64 = 4;
    pub const SET_KEEPCAPS: u64 = 8;
    pub const SET_NAME: u64 = 15;
    pub const CAPBSET_DROP: u64 = 24;
    pub const GET_TSC: u64 = 25;
    pub const SET_TSC: u64 = 26;
    pub const GET_SECUREBITS: u64 = 27;
    pub const SET_SECUREBITS: u64 = 28;
    pub const SET_TIMERSLACK: u64 = 29;
    pub const GET_TIMERSLACK: u64 = 30;
    pub const MCE_KILL: u64 = 33;
    pub const MCE_KILL_GET: u64 = 34;
    pub const SET_MM: u64 = 35;
    pub const SET_CHILD_SUBREAPER: u64 = 36;
    pub const GET_CHILD_SUBREAPER: u64 = 37;
    pub const SET_NO_NEW_PRIVS: u64 = 38;
    pub const SET_THP_DISABLE: u64 = 41;
    pub const GET_THP_DISABLE: u64 = 42;
    pub const CAP_AMBIENT: u64 = 47;
    pub const GET_SPECULATION_CTRL: u64 = 52;
    pub const SET_SPECULATION_CTRL: u64 = 53;
    pub const SET_IO_FLUSHER: u64 = 57;
    pub const SET_MDWE: u64 = 65;
    pub const GET_MDWE: u64 = 66;
    pub const SET_MEMORY_MERGE: u64 = 67;
}

/// Saved process-wide attributes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcAttrs {
    /// `/proc/PID/comm`.
    pub comm: String,
    /// Working directory.
    pub cwd: String,
    /// Root directory.
    pub root: String,
    /// umask.
    pub umask: u32,
    /// personality(2) value.
    pub personality: u32,
    /// (resource, soft, hard) for every resource.
    pub rlimits: Vec<(u32, u64, u64)>,
    /// mm boundaries.
    pub mm: MmBounds,
    /// The mm's flags (THP, MDWE, membarrier, KSM, dumpable).
    pub mm_flags: MmFlags,
    /// `/proc/PID/oom_score_adj`.
    pub oom_score_adj: i32,
    /// `PR_SET_CHILD_SUBREAPER`.
    pub child_subreaper: bool,
    /// The job-control stop the process was in, if any.
    pub stop: Option<JobStop>,
}

/// A process stopped by a job-control signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStop {
    /// The signal that stopped it (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU).
    pub signal: i32,
    /// Its parent could still collect the stop with `waitpid(WUNTRACED)` (it had not yet). A
    /// restored stop is reported again only then; one the parent had collected is collected
    /// again, in the restored parent, before it runs ([`crate::group`]).
    pub parent_may_wait: bool,
}

/// Saved attributes of one thread.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadAttrs {
    /// Credentials, capabilities, securebits, no_new_privs.
    pub creds: creds::Creds,
    /// Seccomp mode and filters.
    pub seccomp: seccomp::Seccomp,
    /// Scheduling, affinity, I/O priority, timer slack.
    pub sched: sched::Sched,
    /// The rest of the thread's own state.
    pub task: task::TaskAttrs,
}

pub(crate) fn read(pid: i32, what: &str) -> Result<String> {
    let path = format!("/proc/{pid}/{what}");
    std::fs::read_to_string(&path).map_err(|e| EngineError::io("read", path.as_ref(), e))
}

fn link(pid: i32, what: &str) -> Result<String> {
    let path = format!("/proc/{pid}/{what}");
    std::fs::read_link(&path)
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| EngineError::io("readlink", path.as_ref(), e))
}

/// The working directory of `pid` as its link shows it. A directory removed since shows as
/// "PATH (deleted)" and is kept so ([`ProcAttrs::restore`] makes one again); one whose path now
/// leads to another directory (something was mounted over it) is refused, since the restored
/// process would work in the other one. (A renamed one shows its new path.)
fn cwd_link(pid: i32) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let text = link(pid, "cwd")?;
    let open = std::fs::metadata(format!("/proc/{pid}/cwd")).map_err(|e| EngineError::io("stat", format!("/proc/{pid}/cwd").as_ref(), e))?;
    if open.nlink() == 0 {
        return Ok(text);
    }
    let at_path = std::fs::metadata(crate::files::seen_by(pid, &text));
    match at_path {
        Ok(m) if (m.dev(), m.ino()) == (open.dev(), open.ino()) => Ok(text),
        _ => Err(EngineError::Proc {
            pid,
            detail: format!(
                "working directory {text}: its path now leads to another directory or to none (device {:#x} inode {} is open); not supported",
                open.dev(),
                open.ino()
            ),
        }),
    }
}

/// Makes the process `inj` drives work in a directory like one removed while it worked in it
/// (`gone`: its former path): a new directory beside where it was (or in /tmp when that is gone
/// too), entered and removed again, so that, as before, relative paths resolve in an empty
/// directory where nothing can be created and `getcwd` fails.
fn enter_removed_dir(inj: &mut Injector, host_pid: i32, gone: &str) -> Result<()> {
    let parent = std::path::Path::new(gone).parent().and_then(|d| d.to_str()).unwrap_or("/tmp").to_string();
    for d in [parent.as_str(), "/tmp"] {
        let name = format!("{}/.zap-cwd-{host_pid}", d.trim_end_matches('/'));
        let p = inj.put_cstr(name.as_bytes())?;
        if inj.syscall(libc::SYS_mkdir, [p, 0o700, 0, 0, 0, 0])? < 0 {
            continue;
        }
        let rc = inj.syscall(libc::SYS_chdir, [p, 0, 0, 0, 0, 0])?;
        inj.call("rmdir (removed working directory)", libc::SYS_rmdir, [p, 0, 0, 0, 0, 0])?;
        if rc == 0 {
            return Ok(());
        }
    }
    Err(EngineError::Proc { pid: host_pid, detail: format!("could not make again the removed working directory {gone} (in {parent} or /tmp)") })
}

pub(crate) fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|l| l.strip_prefix(key)).map(str::trim)
}

/// `/proc/PID/task/TID/status` of thread `tid` of `pid`.
pub(crate) fn task_status(pid: i32, tid: i32) -> Result<String> {
    read(pid, &format!("task/{tid}/status"))
}

/// The OS error of a negative syscall result.
pub(crate) fn errno_text(rc: i64) -> std::io::Error {
    std::io::Error::from_raw_os_error((-rc) as i32)
}

/// Number of rlimit resources (RLIMIT_NLIMITS).
const NLIMITS: u32 = 16;

impl ProcAttrs {
    /// Reads the process-wide attributes of a stopped process; `inj` drives its main thread and
    /// answers what /proc does not (brk, limits, prctl flags). `stop_signal` is what the freeze
    /// saw ([`crate::freeze::Frozen::stop_signal`]); whether the parent collected the stop is
    /// for the caller to tell (a parent in the same checkpoint is asked by [`crate::group`]).
    pub fn save(pid: i32, inj: &mut Injector, stop_signal: Option<i32>) -> Result<ProcAttrs> {
        let status = read(pid, "status")?;
        let bad = |what: &str| EngineError::Proc { pid, detail: format!("cannot parse {what}") };
        let umask = u32::from_str_radix(status_field(&status, "Umask:").ok_or_else(|| bad("Umask"))?, 8)
            .map_err(|_| bad("Umask"))?;
        let personality = u32::from_str_radix(read(pid, "personality")?.trim(), 16).map_err(|_| bad("personality"))?;
        // Limits as the process sees them: asked of the process itself, since prlimit on a process
        // of another user needs CAP_SYS_RESOURCE.
        let scratch = inj.scratch(4096)?;
        let mut rlimits = Vec::new();
        for res in 0..NLIMITS {
            inj.call("prlimit64 (read own limit)", libc::SYS_prlimit64, [0, u64::from(res), 0, scratch, 0, 0])?;
            let b = inj.read_mem(scratch, 16)?;
            let soft = u64::from_le_bytes(b[..8].try_into().expect("8"));
            let hard = u64::from_le_bytes(b[8..].try_into().expect("8"));
            rlimits.push((res, soft, hard));
        }
        let oom_score_adj = read(pid, "oom_score_adj")?.trim().parse().map_err(|_| bad("oom_score_adj"))?;
        inj.call("prctl(PR_GET_CHILD_SUBREAPER)", libc::SYS_prctl, [pr::GET_CHILD_SUBREAPER, scratch, 0, 0, 0, 0])?;
        let child_subreaper = inj.read_mem(scratch, 4)?.iter().any(|&b| b != 0);
        Ok(ProcAttrs {
            comm: read(pid, "comm")?.trim_end().to_string(),
            cwd: cwd_link(pid)?,
            root: link(pid, "root")?,
            umask,
            personality,
            rlimits,
            mm: MmBounds::save(pid, inj)?,
            mm_flags: MmFlags::save(pid, inj)?,
            oom_score_adj,
            child_subreaper,
            stop: stop_signal.map(|signal| JobStop { signal, parent_may_wait: true }),
        })
    }

    /// Applies the process-wide attributes inside the process being restored (host pid
    /// `host_pid`, main thread driven by `inj`), step 3 of the order in the module doc. Returns
    /// warnings for what the kernel refused.
    pub fn restore(&self, inj: &mut Injector, host_pid: i32) -> Result<Vec<String>> {
        let mut warnings = Vec::new();
        let comm = inj.put_cstr(self.comm.as_bytes())?;
        inj.call("prctl(PR_SET_NAME)", libc::SYS_prctl, [pr::SET_NAME, comm, 0, 0, 0, 0])?;
        // The working directory and the root are paths from the mount namespace's root: the
        // root is changed last (below; chroot leaves the working directory where it is), once
        // nothing here needs a path (the executable, /proc).
        let cwd = inj.put_cstr(self.cwd.as_bytes())?;
        let rc = inj.syscall(libc::SYS_chdir, [cwd, 0, 0, 0, 0, 0])?;
        match self.cwd.strip_suffix(" (deleted)") {
            _ if rc == 0 => {}
            Some(gone) if rc == -i64::from(libc::ENOENT) => enter_removed_dir(inj, host_pid, gone)?,
            _ => {
                return Err(EngineError::Proc { pid: host_pid, detail: format!("chdir to working directory {}: {}", self.cwd, errno_text(rc)) });
            }
        }
        inj.call("umask", libc::SYS_umask, [u64::from(self.umask), 0, 0, 0, 0, 0])?;
        inj.call("personality", libc::SYS_personality, [u64::from(self.personality), 0, 0, 0, 0, 0])?;
        let scratch = inj.scratch(8192)?;
        for (res, soft, hard) in &self.rlimits {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&soft.to_le_bytes());
            b[8..].copy_from_slice(&hard.to_le_bytes());
            inj.write_mem(scratch, &b)?;
            let rc = inj.syscall(libc::SYS_prlimit64, [0, u64::from(*res), scratch, 0, 0, 0])?;
            if rc < 0 {
                warnings.push(format!("rlimit {res} ({soft}/{hard}) not restored: {}", errno_text(rc)));
            }
        }
        self.mm.restore(inj, host_pid, &mut warnings)?;
        inj.call("prctl(PR_SET_CHILD_SUBREAPER)", libc::SYS_prctl, [pr::SET_CHILD_SUBREAPER, u64::from(self.child_subreaper), 0, 0, 0, 0])?;
        self.mm_flags.restore(inj, &mut warnings)?;
        let oom_path = format!("/proc/{host_pid}/oom_score_adj");
        let now: Option<i32> = std::fs::read_to_string(&oom_path).ok().and_then(|s| s.trim().parse().ok());
        if now != Some(self.oom_score_adj) {
            if let Err(e) = std::fs::write(&oom_path, self.oom_score_adj.to_string()) {
                warnings.push(format!(
                    "oom_score_adj {} not restored (below the restorer's minimum needs CAP_SYS_RESOURCE): {e}; it is {}",
                    self.oom_score_adj,
                    now.map_or("unknown".to_string(), |n| n.to_string())
                ));
            }
        }
        if self.root != "/" {
            let root = inj.put_cstr(self.root.as_bytes())?;
            inj.call("chroot", libc::SYS_chroot, [root, 0, 0, 0, 0, 0])?;
        }
        Ok(warnings)
    }

    /// Step 7 of the order in the module doc, after every thread's credentials: the dumpable
    /// flag and memory-deny-write-execute.
    pub fn restore_last(&self, inj: &mut Injector, warnings: &mut Vec<String>) -> Result<()> {
        self.mm_flags.restore_last(inj, warnings)
    }
}

impl ThreadAttrs {
    /// Reads the attributes of thread `tid` of the stopped process `pid`; `inj` drives that
    /// thread.
    pub fn save(pid: i32, tid: i32, inj: &mut Injector) -> Result<ThreadAttrs> {
        let status = task_status(pid, tid)?;
        Ok(ThreadAttrs {
            creds: creds::Creds::save(tid, &status, inj)?,
            seccomp: seccomp::Seccomp::save(tid, &status)?,
            sched: sched::Sched::save(inj)?,
            task: task::TaskAttrs::save(pid, tid, inj)?,
        })
    }

    /// Step 4 of the order in the module doc, in the restored thread `inj` drives.
    pub fn restore_flags(&self, inj: &mut Injector, warnings: &mut Vec<String>) -> Result<()> {
        self.task.restore_flags(inj, warnings)
    }

    /// Step 6 of the order in the module doc, in the restored thread `inj` drives:
    /// credentials, then, while the thread still has its capabilities, its scheduling and its
    /// seccomp filters after the first `shared_filters` (those installed in the threads step),
    /// then no_new_privs, the final capabilities and the parent-death signal.
    pub fn restore_creds(&self, inj: &mut Injector, shared_filters: usize, warnings: &mut Vec<String>) -> Result<()> {
        let (sched, seccomp) = (&self.sched, &self.seccomp);
        self.creds.restore(inj, warnings, |inj, warnings| {
            sched.restore(inj, warnings)?;
            seccomp.restore_own(inj, shared_filters)
        })?;
        self.task.restore_pdeathsig(inj)
    }

    /// Step 8 of the order in the module doc: what is set through ptrace once nothing more is
    /// injected into the stopped thread `tid`.
    pub fn restore_traced(&self, tid: i32) -> Result<()> {
        self.task.restore_traced(tid)
    }
}
