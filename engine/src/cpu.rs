//! CPU and per-thread state: general registers, the XSAVE area (x87/SSE/AVX), FS/GS bases (part
//! of the general registers on x86-64), the blocked mask, the thread's queued signals, and its
//! rseq registration.
//!
//! A thread stopped inside an interruptible syscall shows `rax = -ERESTART*`. [`rewind`] turns
//! that into the registers of a thread about to make the same syscall again, as the kernel itself
//! does when a signal without handler interrupts it; a syscall that would restart through the
//! kernel's restart block (nanosleep, poll with a timeout) returns EINTR instead after a restore,
//! since that block does not survive.
use serde::{Deserialize, Serialize};

use crate::sys::regs::{self, Regs, RseqConfig};
use crate::{EngineError, Result};

const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;
const ERESTART_RESTARTBLOCK: i64 = 516;

/// What [`rewind`] is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Rewind {
    /// The same process goes on: restart-block syscalls restart through `restart_syscall`.
    SameProcess,
    /// A restored process: restart-block syscalls return EINTR.
    Restored,
}

/// Registers to resume with so that an interrupted syscall is made again.
pub fn rewind(mut r: Regs, mode: Rewind) -> Regs {
    if (r.orig_rax as i64) >= 0 {
        match -(r.rax as i64) {
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
                r.rax = r.orig_rax;
                r.rip -= 2;
            }
            ERESTART_RESTARTBLOCK => match mode {
                Rewind::SameProcess => {
                    r.rax = libc::SYS_restart_syscall as u64;
                    r.rip -= 2;
                }
                Rewind::Restored => r.rax = (-(libc::EINTR as i64)) as u64,
            },
            _ => {}
        }
    }
    r.orig_rax = u64::MAX;
    r
}

/// Saved state of one thread.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadState {
    /// Thread id as the process saw it.
    pub tid: i32,
    /// Thread name (`/proc/TID/comm`).
    pub name: String,
    /// General registers, kernel field order, already rewound for a restore.
    pub regs: Vec<u64>,
    /// XSAVE area.
    pub xstate: Vec<u8>,
    /// Blocked signals.
    pub sigmask: u64,
    /// Signals queued for this thread (raw siginfo).
    pub pending: Vec<Vec<u8>>,
    /// rseq registration.
    pub rseq: RseqConfig,
    /// `set_robust_list` head and length.
    pub robust_list: (u64, u64),
    /// `set_tid_address` pointer (clear_child_tid).
    pub tid_address: u64,
    /// Alternate signal stack: (sp, flags, size).
    pub altstack: (u64, i32, u64),
}

fn sys_err(step: &'static str, pid: i32) -> impl FnOnce(std::io::Error) -> EngineError {
    move |source| EngineError::Sys { step, pid, source }
}

impl ThreadState {
    /// Saves what ptrace can read of a stopped thread; `inj` fills in what takes a syscall inside
    /// it (tid address, alternate stack, robust list).
    pub fn save(tid: i32, inj: &mut crate::inject::Injector) -> Result<ThreadState> {
        let name = std::fs::read_to_string(format!("/proc/{tid}/comm")).unwrap_or_default().trim_end().to_string();
        let regs = regs::regs_to_words(&rewind(*inj.saved_regs(), Rewind::Restored));
        let xstate = regs::get_xstate(tid).map_err(sys_err("read xstate", tid))?;
        let sigmask = regs::get_sigmask(tid).map_err(sys_err("read signal mask", tid))?;
        let pending =
            regs::peek_siginfo(tid, false).map_err(sys_err("read pending signals", tid))?.iter().map(|s| s.to_vec()).collect();
        let rseq = regs::get_rseq(tid).map_err(sys_err("read rseq configuration", tid))?;
        let scratch = inj.scratch(4096)?;
        inj.call("prctl(PR_GET_TID_ADDRESS)", libc::SYS_prctl, [libc::PR_GET_TID_ADDRESS as u64, scratch, 0, 0, 0, 0])?;
        let tid_address = u64::from_le_bytes(inj.read_mem(scratch, 8)?.try_into().expect("8 bytes"));
        inj.call("sigaltstack", libc::SYS_sigaltstack, [0, scratch, 0, 0, 0, 0])?;
        let ss = inj.read_mem(scratch, 24)?;
        let altstack = (
            u64::from_le_bytes(ss[0..8].try_into().expect("8")),
            i32::from_le_bytes(ss[8..12].try_into().expect("4")),
            u64::from_le_bytes(ss[16..24].try_into().expect("8")),
        );
        inj.call("get_robust_list", libc::SYS_get_robust_list, [0, scratch, scratch + 8, 0, 0, 0])?;
        let rl = inj.read_mem(scratch, 16)?;
        let robust_list =
            (u64::from_le_bytes(rl[0..8].try_into().expect("8")), u64::from_le_bytes(rl[8..16].try_into().expect("8")));
        Ok(ThreadState { tid, name, regs, xstate, sigmask, pending, rseq, robust_list, tid_address, altstack })
    }

    /// The general registers.
    pub fn regs(&self) -> Result<Regs> {
        regs::regs_from_words(&self.regs)
            .ok_or_else(|| EngineError::Proc { pid: self.tid, detail: format!("saved registers have {} words", self.regs.len()) })
    }
}
