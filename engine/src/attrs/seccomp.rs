//! Seccomp state of a thread: strict mode (mode 1) or its stack of classic BPF filters (mode 2).
//!
//! The mode comes from `/proc/PID/task/TID/status`; each filter's program from
//! `PTRACE_SECCOMP_GET_FILTER` (index 0 is the one installed first: the kernel counts from the
//! root of the thread's filter chain, whatever ptrace(2) says) and its flags from
//! `PTRACE_SECCOMP_GET_METADATA` (`SECCOMP_FILTER_FLAG_LOG`). Filters are kept oldest first and
//! reinstalled in that order, so the last one installed is again the one whose
//! `SECCOMP_RET_DATA` wins among results of the same precedence.
//!
//! Threads usually share their filters (installed before the threads were created, or with
//! `SECCOMP_FILTER_FLAG_TSYNC`). The oldest filters common to every thread are installed once,
//! in the main thread, before the other threads are cloned ([`install_shared`]), so they share
//! them again; each thread then installs the rest of its own stack ([`Seccomp::restore_own`]).
//! Filters are installed with `SECCOMP_FILTER_FLAG_SPEC_ALLOW` and the thread's speculation
//! controls are restored on their own ([`super::task`]), so installing a filter does not change
//! them.
//!
//! Refused at checkpoint: a filter that can return `SECCOMP_RET_USER_NOTIF` (its syscalls go to a
//! listener fd held by some supervisor; reinstalled without one they would fail with ENOSYS).
use serde::{Deserialize, Serialize};

use super::status_field;
use crate::inject::Injector;
use crate::{EngineError, Result};

/// One filter: its program (raw `struct sock_filter` entries, 8 bytes each) and flags.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// The classic BPF program.
    pub prog: Vec<u8>,
    /// Installed with `SECCOMP_FILTER_FLAG_LOG`.
    pub log: bool,
}

/// Seccomp state of a thread.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seccomp {
    /// 0 (none), 1 (strict) or 2 (filters).
    pub mode: u8,
    /// Mode 2: the filters, oldest first.
    pub filters: Vec<Filter>,
}

const SECCOMP_SET_MODE_STRICT: u64 = 0;
const SECCOMP_SET_MODE_FILTER: u64 = 1;
const SECCOMP_FILTER_FLAG_LOG: u64 = 1 << 1;
const SECCOMP_FILTER_FLAG_SPEC_ALLOW: u64 = 1 << 2;
const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
const SECCOMP_RET_ACTION_FULL: u32 = 0xffff_0000;

/// True when `prog` has a `return` of the constant `SECCOMP_RET_USER_NOTIF`.
fn may_notify(prog: &[u8]) -> bool {
    prog.chunks_exact(8).any(|insn| {
        let code = u16::from_le_bytes([insn[0], insn[1]]);
        let k = u32::from_le_bytes(insn[4..8].try_into().expect("4"));
        // BPF_RET | BPF_K
        code & 0x07 == 0x06 && code & 0x18 == 0x00 && k & SECCOMP_RET_ACTION_FULL == SECCOMP_RET_USER_NOTIF
    })
}

impl Seccomp {
    /// Reads the seccomp state of the stopped thread `tid` (`status` is its `/proc` status).
    pub fn save(tid: i32, status: &str) -> Result<Seccomp> {
        let mode: u8 = status_field(status, "Seccomp:").and_then(|m| m.parse().ok()).unwrap_or(0);
        let mut filters = Vec::new();
        if mode == 2 {
            let sys = |source| EngineError::Sys { step: "read seccomp filter (PTRACE_SECCOMP_GET_FILTER)", pid: tid, source };
            let mut index = 0;
            while let Some(prog) = crate::sys::ptrace::seccomp_filter(tid, index).map_err(sys)? {
                if may_notify(&prog) {
                    return Err(EngineError::Proc {
                        pid: tid,
                        detail: format!(
                            "seccomp filter {index} (0 = first installed) can hand syscalls to a user-space listener (SECCOMP_RET_USER_NOTIF); not supported"
                        ),
                    });
                }
                let flags = crate::sys::ptrace::seccomp_filter_flags(tid, index).map_err(sys)?;
                filters.push(Filter { prog, log: flags & SECCOMP_FILTER_FLAG_LOG != 0 });
                index += 1;
            }
            let count: Option<usize> = status_field(status, "Seccomp_filters:").and_then(|c| c.parse().ok());
            if count.is_some_and(|c| c != filters.len()) {
                return Err(EngineError::Proc {
                    pid: tid,
                    detail: format!("read {} seccomp filters, /proc says {count:?}", filters.len()),
                });
            }
        }
        Ok(Seccomp { mode, filters })
    }

    /// Installs the thread's own filters (all but the first `shared`, installed by
    /// [`install_shared`]) or strict mode, in the restored thread `inj` drives.
    pub fn restore_own(&self, inj: &mut Injector, shared: usize) -> Result<()> {
        match self.mode {
            1 => {
                inj.call("seccomp(SECCOMP_SET_MODE_STRICT)", libc::SYS_seccomp, [SECCOMP_SET_MODE_STRICT, 0, 0, 0, 0, 0])?;
            }
            2 => install(inj, self.filters.get(shared..).unwrap_or(&[]))?,
            _ => {}
        }
        Ok(())
    }
}

/// How many of the oldest filters every thread has (in mode 2): those [`install_shared`]
/// installs.
pub fn shared_count(threads: &[&Seccomp]) -> usize {
    let Some(first) = threads.first() else { return 0 };
    if threads.iter().any(|t| t.mode != 2) {
        return 0;
    }
    (0..first.filters.len()).take_while(|&i| threads.iter().all(|t| t.filters.get(i) == Some(&first.filters[i]))).count()
}

/// Installs the first `count` filters of `main` in the main thread `inj` drives, before the other
/// threads are cloned from it.
pub fn install_shared(inj: &mut Injector, main: &Seccomp, count: usize) -> Result<()> {
    install(inj, &main.filters[..count.min(main.filters.len())])
}

fn install(inj: &mut Injector, filters: &[Filter]) -> Result<()> {
    for f in filters {
        let len = f.prog.len() / 8;
        let scratch = inj.scratch(f.prog.len() as u64 + 16)?;
        // struct sock_fprog: unsigned short len, then (aligned) the pointer to the program.
        let mut fprog = [0u8; 16];
        fprog[..2].copy_from_slice(&(len as u16).to_le_bytes());
        fprog[8..].copy_from_slice(&(scratch + 16).to_le_bytes());
        inj.write_mem(scratch, &fprog)?;
        inj.write_mem(scratch + 16, &f.prog)?;
        let flags = SECCOMP_FILTER_FLAG_SPEC_ALLOW | if f.log { SECCOMP_FILTER_FLAG_LOG } else { 0 };
        inj.call("seccomp(SECCOMP_SET_MODE_FILTER)", libc::SYS_seccomp, [SECCOMP_SET_MODE_FILTER, flags, scratch, 0, 0, 0])?;
    }
    Ok(())
}
