//! The rest of a thread's own attributes: parent-death signal, audit loginuid and sessionid,
//! speculation controls (store bypass, indirect branch, L1D flush), TSC access (`PR_SET_TSC`),
//! CPUID faulting (`ARCH_SET_CPUID`), machine-check kill policy (`PR_MCE_KILL`), the I/O flusher
//! flag (`PR_SET_IO_FLUSHER`, seen in `/proc/PID/task/TID/stat`'s flags since reading it back
//! needs CAP_SYS_RESOURCE) and syscall user dispatch (read and set through ptrace, Linux 6.11+).
//!
//! The loginuid is written by the thread itself to `/proc/thread-self/loginuid` (the kernel
//! lets only the task change its own; CAP_AUDIT_CONTROL), and only where it differs from the one
//! inherited from the restorer. Writing it starts a new audit session: the sessionid cannot be
//! chosen, so a sessionid that comes back different is reported in the warnings.
//!
//! A thread with a user shadow stack enabled (`ARCH_SHSTK_STATUS`) is refused at checkpoint: its
//! shadow stack and SSP are not saved.
use serde::{Deserialize, Serialize};

use super::{errno_text, pr, read};
use crate::inject::Injector;
use crate::{EngineError, Result};

/// Saved per-thread attributes not covered elsewhere.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskAttrs {
    /// `PR_GET_PDEATHSIG`.
    pub pdeathsig: i32,
    /// Audit loginuid (`u32::MAX`: unset).
    pub loginuid: u32,
    /// Audit session id (`u32::MAX`: none).
    pub sessionid: u32,
    /// `PR_GET_SPECULATION_CTRL` for store bypass, indirect branch and L1D flush (-1: unknown).
    pub speculation: [i64; 3],
    /// `PR_GET_TSC`: 1 (enabled) or 2 (SIGSEGV).
    pub tsc: u32,
    /// `PR_MCE_KILL_GET`.
    pub mce_kill: u64,
    /// `ARCH_GET_CPUID`: 1 (cpuid allowed) or 0 (faulting).
    pub cpuid: u64,
    /// PF_MEMALLOC_NOIO and PF_LOCAL_THROTTLE both set (`PR_SET_IO_FLUSHER`).
    pub io_flusher: bool,
    /// Syscall user dispatch configuration (mode, selector, offset, length), if enabled.
    pub sud: Option<[u64; 4]>,
}

const PR_SPEC_PRCTL: i64 = 1;
/// The state bits `PR_SET_SPECULATION_CTRL` takes: enable, disable, force-disable, disable-noexec.
const PR_SPEC_STATE: i64 = 0x2 | 0x4 | 0x8 | 0x10;
const PR_MCE_KILL_SET: u64 = 1;
const PR_MCE_KILL_DEFAULT: u64 = 2;
const ARCH_GET_CPUID: u64 = 0x1011;
const ARCH_SET_CPUID: u64 = 0x1012;
const ARCH_SHSTK_STATUS: u64 = 0x5005;
const PF_MEMALLOC_NOIO: u64 = 0x0008_0000;
const PF_LOCAL_THROTTLE: u64 = 0x0010_0000;

fn id_file(pid: i32, tid: i32, name: &str) -> u32 {
    read(pid, &format!("task/{tid}/{name}")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(u32::MAX)
}

impl TaskAttrs {
    /// Reads the attributes of thread `tid` of the stopped process `pid` (`inj` drives it).
    pub fn save(pid: i32, tid: i32, inj: &mut Injector) -> Result<TaskAttrs> {
        let scratch = inj.scratch(4096)?;
        inj.write_mem(scratch, &[0u8; 8])?;
        let rc = inj.syscall(libc::SYS_arch_prctl, [ARCH_SHSTK_STATUS, scratch, 0, 0, 0, 0])?;
        if rc == 0 && inj.read_mem(scratch, 8)?.iter().any(|&b| b != 0) {
            return Err(EngineError::Proc { pid: tid, detail: "has a user shadow stack enabled (x86 CET); not supported".into() });
        }
        inj.call("prctl(PR_GET_PDEATHSIG)", libc::SYS_prctl, [pr::GET_PDEATHSIG, scratch, 0, 0, 0, 0])?;
        let pdeathsig = i32::from_le_bytes(inj.read_mem(scratch, 4)?.try_into().expect("4"));
        let mut speculation = [-1i64; 3];
        for (which, v) in speculation.iter_mut().enumerate() {
            let rc = inj.syscall(libc::SYS_prctl, [pr::GET_SPECULATION_CTRL, which as u64, 0, 0, 0, 0])?;
            if rc >= 0 {
                *v = rc;
            }
        }
        inj.call("prctl(PR_GET_TSC)", libc::SYS_prctl, [pr::GET_TSC, scratch, 0, 0, 0, 0])?;
        let tsc = u32::from_le_bytes(inj.read_mem(scratch, 4)?.try_into().expect("4"));
        let mce_kill = inj.call("prctl(PR_MCE_KILL_GET)", libc::SYS_prctl, [pr::MCE_KILL_GET, 0, 0, 0, 0, 0])?;
        let cpuid = inj.syscall(libc::SYS_arch_prctl, [ARCH_GET_CPUID, 0, 0, 0, 0, 0])?;
        let stat = read(pid, &format!("task/{tid}/stat"))?;
        let flags: u64 = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(6)).and_then(|f| f.parse().ok()).unwrap_or(0);
        let sud = crate::sys::ptrace::get_sud_config(tid)
            .map_err(|source| EngineError::Sys { step: "read syscall user dispatch", pid: tid, source })?
            .filter(|c| c[0] != 0);
        Ok(TaskAttrs {
            pdeathsig,
            loginuid: id_file(pid, tid, "loginuid"),
            sessionid: id_file(pid, tid, "sessionid"),
            speculation,
            tsc,
            mce_kill,
            cpuid: if cpuid < 0 { 1 } else { cpuid as u64 },
            io_flusher: flags & (PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE) == PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE,
            sud,
        })
    }

    /// Sets the loginuid (where it differs) in the restored thread `inj` drives (host tid); first
    /// of all, before a chroot can hide `/proc`. With `report_session`, a sessionid that does not
    /// come back is reported (once per process: the threads share the main thread's).
    pub fn restore_loginuid(&self, inj: &mut Injector, report_session: bool, warnings: &mut Vec<String>) -> Result<()> {
        let tid = inj.tid();
        if id_file(tid, tid, "loginuid") != self.loginuid {
            let path = inj.put_cstr(b"/proc/thread-self/loginuid")?;
            let fd = inj.syscall(libc::SYS_open, [path, (libc::O_WRONLY | libc::O_CLOEXEC) as u64, 0, 0, 0, 0])?;
            let rc = if fd < 0 {
                fd
            } else {
                let text = self.loginuid.to_string();
                let buf = inj.put_cstr(text.as_bytes())?;
                let rc = inj.syscall(libc::SYS_write, [fd as u64, buf, text.len() as u64, 0, 0, 0])?;
                inj.call("close loginuid", libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0])?;
                rc
            };
            if rc < 0 {
                warnings.push(format!("thread {tid}: loginuid {} not restored: {}", self.loginuid, errno_text(rc)));
            }
        }
        let session = id_file(tid, tid, "sessionid");
        if report_session && session != self.sessionid {
            warnings.push(format!(
                "thread {tid}: audit sessionid {} comes back as {session} (the kernel numbers audit sessions)",
                self.sessionid
            ));
        }
        Ok(())
    }

    /// Speculation controls, TSC, CPUID faulting, MCE policy and I/O flusher, in the restored
    /// thread `inj` drives.
    pub fn restore_flags(&self, inj: &mut Injector, warnings: &mut Vec<String>) -> Result<()> {
        let tid = inj.tid();
        for (which, &saved) in self.speculation.iter().enumerate() {
            if saved < 0 || saved & PR_SPEC_PRCTL == 0 {
                continue; // not controllable per task here
            }
            let now = inj.syscall(libc::SYS_prctl, [pr::GET_SPECULATION_CTRL, which as u64, 0, 0, 0, 0])?;
            if now != saved {
                let rc = inj.syscall(libc::SYS_prctl, [pr::SET_SPECULATION_CTRL, which as u64, (saved & PR_SPEC_STATE) as u64, 0, 0, 0])?;
                if rc < 0 {
                    warnings.push(format!("thread {tid}: speculation control {which} ({saved:#x}) not restored: {}", errno_text(rc)));
                }
            }
        }
        if self.tsc != 0 {
            inj.call("prctl(PR_SET_TSC)", libc::SYS_prctl, [pr::SET_TSC, u64::from(self.tsc), 0, 0, 0, 0])?;
        }
        if self.mce_kill == PR_MCE_KILL_DEFAULT {
            inj.call("prctl(PR_MCE_KILL_CLEAR)", libc::SYS_prctl, [pr::MCE_KILL, 0, 0, 0, 0, 0])?;
        } else {
            inj.call("prctl(PR_MCE_KILL)", libc::SYS_prctl, [pr::MCE_KILL, PR_MCE_KILL_SET, self.mce_kill, 0, 0, 0])?;
        }
        if self.cpuid == 0 {
            let rc = inj.syscall(libc::SYS_arch_prctl, [ARCH_SET_CPUID, 0, 0, 0, 0, 0])?;
            if rc < 0 {
                warnings.push(format!("thread {tid}: CPUID faulting not restored: {}", errno_text(rc)));
            }
        }
        if self.io_flusher {
            let rc = inj.syscall(libc::SYS_prctl, [pr::SET_IO_FLUSHER, 1, 0, 0, 0, 0])?;
            if rc < 0 {
                warnings.push(format!("thread {tid}: I/O flusher flag not restored (needs CAP_SYS_RESOURCE): {}", errno_text(rc)));
            }
        }
        Ok(())
    }

    /// The parent-death signal, after the thread's credentials (a uid change clears it).
    pub fn restore_pdeathsig(&self, inj: &mut Injector) -> Result<()> {
        inj.call("prctl(PR_SET_PDEATHSIG)", libc::SYS_prctl, [pr::SET_PDEATHSIG, self.pdeathsig as u64, 0, 0, 0, 0])?;
        Ok(())
    }

    /// Syscall user dispatch, set through ptrace on the stopped thread `tid` once nothing more is
    /// injected into it (our injected syscalls would be dispatched).
    pub fn restore_traced(&self, tid: i32) -> Result<()> {
        if let Some(cfg) = &self.sud {
            crate::sys::ptrace::set_sud_config(tid, cfg)
                .map_err(|source| EngineError::Sys { step: "set syscall user dispatch", pid: tid, source })?;
        }
        Ok(())
    }
}
