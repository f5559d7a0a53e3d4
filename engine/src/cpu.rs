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
//! does when a signal without handler interrupts it. A syscall that would restart through the
//! kernel's restart block (`nanosleep`, `clock_nanosleep`, `poll`, a `futex` wait with a timeout)
//! is made again from its own registers after a restore, since that block does not survive: an
//! absolute deadline stays the same, a relative sleep with a `rem` argument sleeps for the time
//! it had left (the kernel wrote it there as it stopped), other relative timeouts start again from
//! their full length (the thread waits longer than it would have, as on a busy machine). It never returns EINTR the
//! program could not have seen otherwise: `script` (util-linux), which takes its signals through
//! a signalfd, ends its session on an EINTR from `poll`. A thread found set to make
//! `restart_syscall` (by the kernel on its way out, or by an earlier injection into the same
//! stopped thread, which keeps the interrupted syscall's number in `orig_rax` for this) makes the
//! interrupted syscall again too ([`restart_prepared`]). A thread caught inside
//! `restart_syscall` itself (the freeze can let it restart once before it stops, and so does
//! every stop of ours that lets it run on, such as a pre-copy's arming stop) no longer has the
//! syscall's number in its registers: it comes from what that stop of ours noted
//! ([`note_restart`], same `zap` process), else from the `mov $NR, %eax` before its `syscall`
//! instruction when that is how the code makes it ([`restarted_syscall`]; C libraries' wrappers
//! do), else the thread gets EINTR.
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
    /// A restored process: restart-block syscalls are made again from their registers
    /// (`restart_syscall` itself returns EINTR).
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
                // The syscall's arguments are still in its registers: it is made again (the
                // restart block, with the time left, is the old kernel thread's; a relative
                // sleep's time left is in its `rem` argument, when it has one).
                Rewind::Restored if r.orig_rax != libc::SYS_restart_syscall as u64 => {
                    sleep_for_what_is_left(&mut r);
                    r.rax = r.orig_rax;
                    r.rip -= 2;
                }
                Rewind::Restored => r.rax = (-(libc::EINTR as i64)) as u64,
            },
            _ => {}
        }
    }
    // A thread set to make restart_syscall keeps the number of the syscall it restarts in
    // orig_rax (the kernel ignores it there: rax is no error code), so that a later save of the
    // same stopped thread ([`restart_prepared`]) can still make that syscall again.
    if !(mode == Rewind::SameProcess && r.rax == libc::SYS_restart_syscall as u64) {
        r.orig_rax = u64::MAX;
    }
    r
}

/// A relative `nanosleep` or `clock_nanosleep` interrupted by a stop: the kernel wrote the time
/// left into its `rem` argument (when there is one) as it stopped; the sleep made again after a
/// restore waits for that rather than the whole request.
fn sleep_for_what_is_left(r: &mut Regs) {
    const TIMER_ABSTIME: u64 = 1;
    match r.orig_rax as i64 {
        libc::SYS_nanosleep if r.rsi != 0 => r.rdi = r.rsi,
        libc::SYS_clock_nanosleep if r.rsi & TIMER_ABSTIME == 0 && r.r10 != 0 => r.rdx = r.r10,
        _ => {}
    }
}

/// Syscalls this process let restart through `restart_syscall` after one of its stops, by the
/// (instruction after the `syscall`, stack pointer) of the thread that made them: a later save
/// of that thread, still waiting there (the pre-copy's arming stop, then its final stop), names
/// the syscall from here, whatever code made it.
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

/// The notes of [`note_restart`] as text, a line "rip rsp nr" (hex) each: a pod keeps them in its
/// directory after a checkpoint it runs on from, so that its next `zap` command can name the
/// syscalls its threads restart ([`learn_restart_notes`]).
pub(crate) fn restart_notes() -> String {
    let Ok(m) = RESTARTED.lock() else { return String::new() };
    m.iter().flatten().map(|((rip, rsp), nr)| format!("{rip:x} {rsp:x} {nr:x}\n")).collect()
}

/// Takes in notes written by [`restart_notes`] (lines that do not parse are skipped).
pub(crate) fn learn_restart_notes(text: &str) {
    let Ok(mut m) = RESTARTED.lock() else { return };
    let m = m.get_or_insert_with(Default::default);
    for line in text.lines() {
        let mut f = line.split_whitespace().map(|w| u64::from_str_radix(w, 16).ok());
        if let (Some(Some(rip)), Some(Some(rsp)), Some(Some(nr))) = (f.next(), f.next(), f.next()) {
            if RESTART_BLOCK_SYSCALLS.contains(&(nr as i64)) {
                m.insert((rip, rsp), nr);
            }
        }
    }
}

/// For a thread caught inside `restart_syscall` whose stop one of ours let it restart
/// ([`note_restart`]): the syscall it restarts, in `orig_rax`.
fn noted_restart(mut r: Regs) -> Regs {
    if r.orig_rax == libc::SYS_restart_syscall as u64 && -(r.rax as i64) == ERESTART_RESTARTBLOCK {
        if let Some(nr) = RESTARTED.lock().ok().and_then(|m| m.as_ref()?.get(&(r.rip, r.rsp)).copied()) {
            r.orig_rax = nr;
        }
    }
    r
}

/// Syscalls whose restart goes through the kernel's restart block.
const RESTART_BLOCK_SYSCALLS: [i64; 4] = [libc::SYS_poll, libc::SYS_nanosleep, libc::SYS_clock_nanosleep, libc::SYS_futex];

/// For a thread caught inside `restart_syscall` (the freeze let it restart once before it
/// stopped), whose registers no longer name the syscall it restarts: that syscall, when the code
/// before `rip` (`code`: the 7 bytes ending at `rip`) is `mov $NR, %eax; syscall` (as C
/// libraries' wrappers are) and NR is a restart-block syscall. Its arguments are still in the
/// registers, so it can be made again; otherwise the thread gets EINTR.
pub fn restarted_syscall(mut r: Regs, code: &[u8]) -> Regs {
    if r.orig_rax == libc::SYS_restart_syscall as u64 && -(r.rax as i64) == ERESTART_RESTARTBLOCK && code.len() == 7 && code[0] == 0xb8 && code[5..] == [0x0f, 0x05] {
        let nr = i64::from(u32::from_le_bytes(code[1..5].try_into().expect("4 bytes")));
        if RESTART_BLOCK_SYSCALLS.contains(&nr) {
            r.orig_rax = nr as u64;
        }
    }
    r
}

/// For a thread whose registers say it is about to make `restart_syscall` for the syscall in
/// `orig_rax` (the kernel set that up on its way out, or an earlier injection in the same stop
/// rewound it so), with the `syscall` instruction at `rip` (`insn`: the two bytes there): the
/// registers that make the interrupted syscall itself again, for a restore.
pub fn restart_prepared(mut r: Regs, insn: &[u8]) -> Regs {
    let restart = libc::SYS_restart_syscall as u64;
    if r.rax == restart && (r.orig_rax as i64) >= 0 && r.orig_rax != restart && insn == [0x0f, 0x05] {
        r.rax = r.orig_rax;
        r.orig_rax = u64::MAX;
    }
    r
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
        let raw = *inj.saved_regs();
        let insn = if raw.rax == libc::SYS_restart_syscall as u64 { inj.read_mem(raw.rip, 2).unwrap_or_default() } else { Vec::new() };
        let code = if raw.orig_rax == libc::SYS_restart_syscall as u64 { inj.read_mem(raw.rip.wrapping_sub(7), 7).unwrap_or_default() } else { Vec::new() };
        let regs = regs::regs_to_words(&rewind(restarted_syscall(noted_restart(restart_prepared(raw, &insn)), &code), Rewind::Restored));
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

#[cfg(test)]
mod restart_tests {
    use super::*;

    fn in_syscall(nr: i64, rax: i64) -> Regs {
        // SAFETY: user_regs_struct is plain data.
        let mut r: Regs = unsafe { std::mem::zeroed() };
        r.orig_rax = nr as u64;
        r.rax = rax as u64;
        r.rip = 0x1002;
        r
    }

    #[test]
    fn restart_block_syscalls_are_made_again_after_a_restore() {
        let poll = in_syscall(libc::SYS_poll, -ERESTART_RESTARTBLOCK);
        let r = rewind(poll, Rewind::Restored);
        assert_eq!((r.rax, r.rip, r.orig_rax), (libc::SYS_poll as u64, 0x1000, u64::MAX));
        // The same process goes on through restart_syscall, keeping the syscall's number...
        let same = rewind(poll, Rewind::SameProcess);
        assert_eq!((same.rax, same.rip, same.orig_rax), (libc::SYS_restart_syscall as u64, 0x1000, libc::SYS_poll as u64));
        // ... so that a later save of the same stop still makes poll itself again.
        let again = rewind(restart_prepared(same, &[0x0f, 0x05]), Rewind::Restored);
        assert_eq!((again.rax, again.rip, again.orig_rax), (libc::SYS_poll as u64, 0x1000, u64::MAX));
        // A syscall that returned 219 (no `syscall` at rip) is left alone.
        let done = in_syscall(libc::SYS_read, libc::SYS_restart_syscall);
        assert_eq!(rewind(restart_prepared(done, &[0x48, 0x3d]), Rewind::Restored).rax, libc::SYS_restart_syscall as u64);
        // Inside restart_syscall itself: the syscall named by `mov $7, %eax; syscall` before rip
        // is made again; without such code, EINTR.
        let inside = in_syscall(libc::SYS_restart_syscall, -ERESTART_RESTARTBLOCK);
        let code = [0xb8, 7, 0, 0, 0, 0x0f, 0x05];
        let r = rewind(restarted_syscall(inside, &code), Rewind::Restored);
        assert_eq!((r.rax, r.rip), (libc::SYS_poll as u64, 0x1000));
        assert_eq!(rewind(restarted_syscall(inside, &[0x90; 7]), Rewind::Restored).rax as i64, -(libc::EINTR as i64));
        let read = [0xb8, 0, 0, 0, 0, 0x0f, 0x05];
        assert_eq!(rewind(restarted_syscall(inside, &read), Rewind::Restored).rax as i64, -(libc::EINTR as i64));
    }
}
