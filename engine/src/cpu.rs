//! CPU and per-thread state: general registers, the XSAVE area (x87/SSE/AVX), FS/GS bases (part
//! of the general registers on x86-64), the blocked mask, the thread's queued signals, its rseq
//! registration, tid address, robust list, alternate stack and name, the thread id the process
//! sees (`vtid`), and the thread's attributes ([`crate::attrs::ThreadAttrs`]: credentials,
//! capabilities, seccomp, scheduling...), restored by [`crate::process::ProcRestore::finish`].
//! What takes a syscall inside the thread is read and written with an [`Injector`] driving that
//! very thread ([`ThreadState::save`], [`ThreadState::restore_kernel_state`]); the CPU state is
//! loaded last through ptrace ([`ThreadState::load_cpu`]).
//!
//! A thread stopped inside an interruptible syscall shows `rax = -ERESTART*`. [`rewind`] turns
//! that into the registers of a thread about to make the same syscall again, as the kernel itself
//! does when a signal without handler interrupts it; a syscall that would restart through the
//! kernel's restart block (nanosleep, poll with a timeout, futex waits), whose block does not
//! survive a restore, is made again from its registers (a sleep for the time it had left, which
//! the kernel wrote to its `rem` argument; see [`remake_restartable`]); only a thread caught in
//! `restart_syscall` itself gets EINTR.
use serde::{Deserialize, Serialize};

use crate::attrs::ThreadAttrs;
use crate::inject::Injector;
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
                    note_restart(&r);
                    r.rax = libc::SYS_restart_syscall as u64;
                    r.rip -= 2;
                }
                // The restart block does not survive, but the syscall can be made again from
                // its registers: what the program sees is a wait that went on, never an EINTR
                // it may not expect (util-linux's `script` ends its session on one).
                Rewind::Restored if remake_restartable(&mut r) => {
                    r.rax = r.orig_rax;
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

/// Syscalls this process let restart through `restart_syscall` after one of its stops, by the
/// (instruction after the `syscall`, stack pointer) of the thread that made them: a later save
/// of that thread, still waiting there, names the syscall from here.
static RESTARTED: std::sync::Mutex<Option<std::collections::HashMap<(u64, u64), u64>>> = std::sync::Mutex::new(None);

/// Notes that the thread whose registers are `r` (stopped in syscall `r.orig_rax`, which
/// returned `-ERESTART_RESTARTBLOCK`) goes on through `restart_syscall`.
pub(crate) fn note_restart(r: &Regs) {
    if (r.orig_rax as i64) < 0 || r.orig_rax == libc::SYS_restart_syscall as u64 || -(r.rax as i64) != ERESTART_RESTARTBLOCK {
        return;
    }
    if let Ok(mut m) = RESTARTED.lock() {
        let m = m.get_or_insert_with(Default::default);
        // Bounded: a long-lived scheduler notes a few per checkpoint.
        if m.len() > 65_536 {
            m.clear();
        }
        m.insert((r.rip, r.rsp), r.orig_rax);
    }
}

/// The syscall a thread caught in `restart_syscall` at registers `r` restarts, when one of this
/// process's stops let it restart there ([`note_restart`]).
fn restarted_from(r: &Regs) -> Option<u64> {
    RESTARTED.lock().ok()?.as_ref()?.get(&(r.rip, r.rsp)).copied()
}

/// The syscall number a `mov $NR, %eax` (`b8` + imm32) right before a `syscall` (`0f 05`) loads,
/// from the 7 bytes that end at the instruction after the `syscall`; only the waits
/// [`remake_restartable`] knows are taken.
fn syscall_loaded_before(code: &[u8]) -> Option<u64> {
    let [0xb8, a, b, c, d, 0x0f, 0x05] = *code else { return None };
    let nr = i64::from(u32::from_le_bytes([a, b, c, d]));
    [libc::SYS_poll, libc::SYS_futex, libc::SYS_nanosleep, libc::SYS_clock_nanosleep].contains(&nr).then_some(nr as u64)
}

/// For a restored thread stopped in a syscall that would have restarted through the kernel's
/// restart block: sets its arguments so that making it again waits as it still had to, and says
/// whether it can be made again.
/// - `nanosleep`, `clock_nanosleep` (relative): the kernel wrote the time left into the `rem`
///   argument when it stopped; the sleep is made again for that (the full request without one).
/// - `poll` with a timeout, `futex` waits: made again with their arguments (a poll's or a relative
///   futex wait's full timeout again: a wait that may last longer, which both allow).
/// - anything else (`restart_syscall`, a syscall already restarted once through its block after
///   an earlier `--leave-running` checkpoint) cannot be named again: EINTR.
fn remake_restartable(r: &mut Regs) -> bool {
    const TIMER_ABSTIME: u64 = 1;
    match r.orig_rax as i64 {
        libc::SYS_poll | libc::SYS_futex => true,
        libc::SYS_nanosleep => {
            if r.rsi != 0 {
                r.rdi = r.rsi;
            }
            true
        }
        libc::SYS_clock_nanosleep => {
            if r.rsi & TIMER_ABSTIME == 0 && r.r10 != 0 {
                r.rdx = r.r10;
            }
            true
        }
        _ => false,
    }
}

/// Saved state of one thread.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadState {
    /// Host thread id at checkpoint time.
    pub tid: i32,
    /// Thread id as the process saw it (innermost PID namespace; the last field of `NSpid`).
    pub vtid: i32,
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
    /// Credentials, capabilities, seccomp, scheduling and the thread's other attributes.
    pub attrs: ThreadAttrs,
}

fn sys_err(step: &'static str, pid: i32) -> impl FnOnce(std::io::Error) -> EngineError {
    move |source| EngineError::Sys { step, pid, source }
}

/// The id of thread `tid` of process `pid` in the innermost PID namespace (last field of `NSpid`).
pub fn vtid_of(pid: i32, tid: i32) -> Result<i32> {
    let path = format!("/proc/{pid}/task/{tid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| EngineError::io("read", std::path::Path::new(&path), e))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|v| v.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| EngineError::Proc { pid: tid, detail: "no NSpid in /proc status".into() })
}

impl ThreadState {
    /// Saves what ptrace can read of the stopped thread `tid` of process `pid`; `inj`, which must
    /// drive that same thread, fills in what takes a syscall inside it (tid address, alternate
    /// stack, robust list, the thread's attributes: [`ThreadAttrs`]).
    pub fn save(pid: i32, tid: i32, inj: &mut Injector) -> Result<ThreadState> {
        if inj.tid() != tid {
            return Err(EngineError::Proc { pid: tid, detail: format!("thread state read through thread {}", inj.tid()) });
        }
        let vtid = vtid_of(pid, tid)?;
        let name = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default().trim_end().to_string();
        let mut saved = *inj.saved_regs();
        // A thread caught in `restart_syscall` (a wait an earlier stop of ours, such as a
        // pre-copy's arming stop, restarted through its block): name the syscall it restarts
        // from the instruction that loaded its number before the `syscall` (glibc's wrappers:
        // `mov $NR, %eax; syscall`), so that it too is made again rather than failing.
        if saved.orig_rax == libc::SYS_restart_syscall as u64 && -(saved.rax as i64) == ERESTART_RESTARTBLOCK {
            let known = restarted_from(&saved);
            if let Some(nr) = known.or_else(|| {
                saved.rip.checked_sub(7).and_then(|at| inj.read_mem(at, 7).ok()).and_then(|code| syscall_loaded_before(&code))
            }) {
                saved.orig_rax = nr;
            }
        }
        let regs = regs::regs_to_words(&rewind(saved, Rewind::Restored));
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
        let attrs = ThreadAttrs::save(pid, tid, inj)?;
        Ok(ThreadState { tid, vtid, name, regs, xstate, sigmask, pending, rseq, robust_list, tid_address, altstack, attrs })
    }

    /// Sets the thread's own kernel state from inside it (`inj` drives the restored thread): tid
    /// address, robust list, alternate stack, rseq registration and name. Queued signals, the
    /// mask and the CPU state come later.
    pub fn restore_kernel_state(&self, inj: &mut Injector) -> Result<()> {
        inj.call("set_tid_address", libc::SYS_set_tid_address, [self.tid_address, 0, 0, 0, 0, 0])?;
        if self.robust_list.0 != 0 {
            inj.call("set_robust_list", libc::SYS_set_robust_list, [self.robust_list.0, self.robust_list.1, 0, 0, 0, 0])?;
        }
        let scratch = inj.scratch(4096)?;
        // Always set: a disabled stack must also replace one the restore target inherited.
        let (sp, flags, size) = if self.altstack.1 & libc::SS_DISABLE == 0 { self.altstack } else { (0, libc::SS_DISABLE, 0) };
        let mut ss = Vec::with_capacity(24);
        ss.extend_from_slice(&sp.to_le_bytes());
        ss.extend_from_slice(&flags.to_le_bytes());
        ss.extend_from_slice(&[0u8; 4]);
        ss.extend_from_slice(&size.to_le_bytes());
        inj.write_mem(scratch, &ss)?;
        inj.call("sigaltstack", libc::SYS_sigaltstack, [scratch, 0, 0, 0, 0, 0])?;
        if self.rseq.rseq_abi_pointer != 0 {
            inj.call(
                "rseq register",
                libc::SYS_rseq,
                [self.rseq.rseq_abi_pointer, u64::from(self.rseq.rseq_abi_size), 0, u64::from(self.rseq.signature), 0, 0],
            )?;
        }
        if !self.name.is_empty() {
            let mut name: Vec<u8> = self.name.bytes().take(15).collect();
            name.push(0);
            inj.write_mem(scratch, &name)?;
            inj.call("prctl(PR_SET_NAME)", libc::SYS_prctl, [libc::PR_SET_NAME as u64, scratch, 0, 0, 0, 0])?;
        }
        Ok(())
    }

    /// Loads the XSAVE area, the blocked mask and, last, the general registers into the stopped
    /// host thread `tid`. Nothing may be injected into it afterwards.
    pub fn load_cpu(&self, tid: i32) -> Result<()> {
        regs::set_xstate(tid, &self.xstate).map_err(sys_err("load xstate", tid))?;
        regs::set_sigmask(tid, self.sigmask).map_err(sys_err("load signal mask", tid))?;
        regs::set_regs(tid, &self.regs()?).map_err(sys_err("load registers", tid))
    }

    /// The general registers.
    pub fn regs(&self) -> Result<Regs> {
        regs::regs_from_words(&self.regs)
            .ok_or_else(|| EngineError::Proc { pid: self.tid, detail: format!("saved registers have {} words", self.regs.len()) })
    }
}
