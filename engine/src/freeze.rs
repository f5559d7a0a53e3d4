//! Stopping a process consistently: every thread is PTRACE_SEIZEd and PTRACE_INTERRUPTed, so it
//! stops without any signal being sent to it (the process cannot observe the stop the way it
//! would observe SIGSTOP). Dropping the [`Frozen`] guard detaches every thread, which then runs on;
//! [`Frozen::kill`] ends the process instead and collects the exits of its traced threads.
//!
//! Threads a restore creates in a stopped process (auto-attached through PTRACE_O_TRACECLONE) are
//! taken into the guard with [`Frozen::adopt`], so they are detached with the others.
//!
//! Threads created while we seize are caught by re-reading `/proc/PID/task` until a pass finds no
//! new thread. A signal that arrives during the stop is delivered and the thread is stopped
//! again; the interrupt stays pending until the thread reaches its event stop.
//!
//! Every thread is seized with PTRACE_O_SUSPEND_SECCOMP where the kernel grants it, so a seccomp
//! filter of the process (or strict mode) never sees the syscalls we inject; without it, a
//! process under seccomp is refused before anything is injected.
//!
//! **Stopped processes.** A process stopped by a job-control signal (`kill -STOP`, SIGTSTP,
//! SIGTTIN, SIGTTOU) reports its group stop to the seizing tracer as a PTRACE_EVENT_STOP whose
//! signal is the stop signal (an interrupt reports SIGTRAP): [`Frozen::stop_signal`] keeps it. A
//! seized thread resumed to run an injected syscall runs despite the group stop; detaching puts
//! it back into the stop. A restored process is put back into its stop by
//! [`Frozen::detach_stopped`], which queues the saved stop signal before detaching, so the stop
//! happens before any of its threads runs a user instruction and the parent's `waitpid`
//! (WUNTRACED) reports it with that signal (a group restore then takes the report back where the
//! parent had collected it before the checkpoint: [`crate::group`]). A process already traced by
//! another tracer (a debugger) cannot be seized: it is refused with an error naming the tracer.
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use crate::sys::ptrace as sys;
use crate::{EngineError, Result};

const PTRACE_EVENT_STOP: i32 = 128;

/// A process whose threads are all stopped under ptrace.
pub struct Frozen {
    pid: i32,
    threads: Vec<i32>,
    stop_signal: Option<i32>,
}

fn list_threads(pid: i32) -> Result<BTreeSet<i32>> {
    let dir = format!("/proc/{pid}/task");
    let entries = std::fs::read_dir(&dir).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            EngineError::Proc { pid, detail: "no such process".into() }
        } else {
            EngineError::io("list threads", Path::new(&dir), e)
        }
    })?;
    Ok(entries.flatten().filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok())).collect())
}

/// How long a thread may take to reach its stop. A thread that takes longer is blocked where no
/// signal reaches it (a vfork parent waiting for its child's exec, an uninterruptible wait).
const STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits for the next stop or exit of a traced thread, or fails after [`STOP_TIMEOUT`].
fn wait_stop(tid: i32) -> Result<i32> {
    match sys::wait_thread_timeout(tid, STOP_TIMEOUT) {
        Ok(Some(status)) => Ok(status),
        Ok(None) => Err(EngineError::Proc {
            pid: tid,
            detail: format!(
                "did not stop within {} s (blocked where signals do not reach it: {})",
                STOP_TIMEOUT.as_secs(),
                wchan(tid)
            ),
        }),
        Err(source) => Err(EngineError::Sys { step: "wait for stop", pid: tid, source }),
    }
}

/// Where a thread sleeps in the kernel (/proc/TID/wchan), for error messages.
pub fn wchan(tid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{tid}/wchan")).unwrap_or_default()
}

/// Fails when `pid` is a vfork parent waiting for its child to exec or exit: it would not stop,
/// and its child runs in its address space.
pub fn refuse_vfork(pid: i32) -> Result<()> {
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            // The wait is wait_for_vfork_done, often inlined into kernel_clone (nothing else
            // sleeps there).
            if std::fs::read_to_string(t.path().join("wchan")).is_ok_and(|w| w.contains("vfork") || w == "kernel_clone") {
                return Err(EngineError::Proc {
                    pid,
                    detail: "waits in vfork for its child to exec (the child runs in its address space); not supported, try again".into(),
                });
            }
        }
    }
    Ok(())
}

/// How a seized thread came to its event stop.
enum Stopped {
    /// It exited meanwhile.
    Exited,
    /// Stopped by our interrupt.
    Interrupted,
    /// In a group stop (the process is stopped by a job-control signal): that signal.
    GroupStop(i32),
}

/// Waits for the event stop of a seized and interrupted thread, delivering signals that come
/// first (a stop signal among them puts the thread into a group stop, reported as such).
fn wait_event_stop(tid: i32) -> Result<Stopped> {
    loop {
        let status = wait_stop(tid)?;
        if sys::exited(status) {
            return Ok(Stopped::Exited);
        }
        match sys::stopped_signal(status) {
            Some(libc::SIGTRAP) if status >> 16 == PTRACE_EVENT_STOP => return Ok(Stopped::Interrupted),
            Some(sig) if status >> 16 == PTRACE_EVENT_STOP => return Ok(Stopped::GroupStop(sig)),
            Some(sig) => {
                // A signal-delivery stop came first: deliver it and wait for the interrupt stop.
                sys::ptrace_cont(tid, sig).map_err(|source| EngineError::Sys { step: "ptrace cont", pid: tid, source })?;
            }
            None => {}
        }
    }
}

/// Seizes thread `tid`: `Ok(false)` if it exited meanwhile. A thread another tracer holds is
/// refused by name.
fn seize(tid: i32) -> Result<bool> {
    match sys::ptrace_seize(tid) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(false), // exited meanwhile
        Err(source) => {
            if let Some(tracer) = tracer_of(tid).filter(|&t| t != 0) {
                let comm = std::fs::read_to_string(format!("/proc/{tracer}/comm")).unwrap_or_default();
                return Err(EngineError::Proc {
                    pid: tid,
                    detail: format!(
                        "is traced by process {tracer} ({}), a debugger or another tracer; a traced process cannot be checkpointed (detach it first)",
                        comm.trim()
                    ),
                });
            }
            Err(EngineError::Sys { step: "ptrace seize", pid: tid, source })
        }
    }
}

/// The pid of the tracer of `tid` (0: none), from `/proc/TID/status`.
pub fn tracer_of(tid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("TracerPid:")).and_then(|v| v.trim().parse().ok())
}

/// Fails when thread `tid` (just seized) runs under seccomp and its filters are not suspended
/// while we trace it: they would judge the syscalls we inject.
fn refuse_unsuspended_seccomp(tid: i32) -> Result<()> {
    if sys::seccomp_suspended() {
        return Ok(());
    }
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).unwrap_or_default();
    let mode = status.lines().find_map(|l| l.strip_prefix("Seccomp:")).map(str::trim).unwrap_or("0");
    if mode != "0" {
        return Err(EngineError::Proc {
            pid: tid,
            detail: format!(
                "runs under seccomp (mode {mode}) and this kernel does not let a tracer suspend it (PTRACE_O_SUSPEND_SECCOMP needs CONFIG_CHECKPOINT_RESTORE and CAP_SYS_ADMIN)"
            ),
        });
    }
    Ok(())
}

impl Frozen {
    /// Stops every thread of `pid`. A process caught in vfork (until its child execs) is waited
    /// for, up to 2 s.
    pub fn freeze(pid: i32) -> Result<Frozen> {
        let mut attempt = 0;
        while let Err(e) = refuse_vfork(pid) {
            if attempt >= 400 {
                return Err(e);
            }
            attempt += 1;
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut frozen = Frozen { pid, threads: Vec::new(), stop_signal: None };
        let mut seen: BTreeSet<i32> = BTreeSet::new();
        loop {
            let now = list_threads(pid)?;
            let fresh: Vec<i32> = now.difference(&seen).copied().collect();
            if fresh.is_empty() {
                break;
            }
            for tid in fresh {
                seen.insert(tid);
                if !seize(tid)? {
                    continue;
                }
                sys::ptrace_interrupt(tid).map_err(|source| EngineError::Sys { step: "ptrace interrupt", pid: tid, source })?;
                match wait_event_stop(tid)? {
                    Stopped::Exited => continue,
                    Stopped::Interrupted => {}
                    Stopped::GroupStop(sig) => frozen.stop_signal = Some(sig),
                }
                frozen.threads.push(tid);
                refuse_unsuspended_seccomp(tid)?;
            }
        }
        if frozen.threads.is_empty() {
            return Err(EngineError::Proc { pid, detail: "process exited while being frozen".into() });
        }
        Ok(frozen)
    }

    /// Seizes and interrupts every thread of `pid` without waiting for the stops: for processes
    /// held by a frozen cgroup, which reach their stop only once the cgroup is thawed (the
    /// interrupt is handled before they return to user space). Call [`Frozen::wait_stopped`]
    /// after the thaw. The cgroup freezer keeps the thread list stable meanwhile.
    pub fn seize_frozen(pid: i32) -> Result<Frozen> {
        let mut frozen = Frozen { pid, threads: Vec::new(), stop_signal: None };
        for tid in list_threads(pid)? {
            if !seize(tid)? {
                continue;
            }
            frozen.threads.push(tid);
            refuse_unsuspended_seccomp(tid)?;
            sys::ptrace_interrupt(tid).map_err(|source| EngineError::Sys { step: "ptrace interrupt", pid: tid, source })?;
        }
        Ok(frozen)
    }

    /// Waits until every thread seized by [`Frozen::seize_frozen`] is in its interrupt stop.
    pub fn wait_stopped(&mut self) -> Result<()> {
        let mut alive = Vec::new();
        for &tid in &self.threads {
            match wait_event_stop(tid)? {
                Stopped::Exited => continue,
                Stopped::Interrupted => {}
                Stopped::GroupStop(sig) => self.stop_signal = Some(sig),
            }
            alive.push(tid);
        }
        self.threads = alive;
        if self.threads.is_empty() {
            return Err(EngineError::Proc { pid: self.pid, detail: "process exited while being frozen".into() });
        }
        Ok(())
    }

    /// The process.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The job-control signal (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU) that had stopped the process
    /// when we seized it, if it was stopped.
    pub fn stop_signal(&self) -> Option<i32> {
        self.stop_signal
    }

    /// Detaches every thread like dropping the guard, but leaves the process stopped by `sig`
    /// (a job-control stop signal): the signal is queued to the process while all its threads
    /// are still held, so whichever thread runs first takes it and stops the others before any
    /// of them returns to user space. Threads that block `sig` are detached last, so that one
    /// that can take it is always released before them. The parent is told of the stop
    /// (SIGCHLD, `waitpid` with WUNTRACED) as for any stop.
    pub fn detach_stopped(mut self, sig: i32) -> Result<()> {
        let pid = self.pid;
        crate::sys::clone::kill(pid, sig).map_err(|source| EngineError::Sys { step: "queue the saved stop signal", pid, source })?;
        let mut order = std::mem::take(&mut self.threads);
        order.sort_by_key(|&tid| crate::sys::regs::get_sigmask(tid).map(|m| m & (1 << (sig - 1)) != 0).unwrap_or(true));
        let mut first_err = None;
        for tid in order {
            if let Err(source) = sys::ptrace_detach(tid) {
                first_err.get_or_insert(EngineError::Sys { step: "ptrace detach", pid: tid, source });
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Gives up the threads without detaching (the process was killed).
    pub fn forget(mut self) {
        self.threads.clear();
    }

    /// Kills the process (SIGKILL) and collects the exits of its traced threads: a traced thread
    /// that exits stays a zombie until its tracer (us) waits for it, and the main thread cannot
    /// be reaped by its parent before all the others are gone. The main thread's exit is
    /// collected too unless we are its parent, which then reaps it as it would any child.
    pub fn kill(mut self) -> Result<()> {
        let pid = self.pid;
        let threads = std::mem::take(&mut self.threads);
        let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok())));
        let main_too = ppid != Some(std::process::id());
        crate::sys::clone::kill(pid, libc::SIGKILL).map_err(|source| EngineError::Sys { step: "kill", pid, source })?;
        // The other threads first: the main thread's exit is reported only once they are gone.
        let others = threads.iter().copied().filter(|&t| t != pid);
        for tid in others.chain(threads.iter().copied().filter(|&t| t == pid && main_too)) {
            loop {
                match sys::wait_thread_timeout(tid, Duration::from_secs(5)) {
                    Ok(Some(status)) if !sys::exited(status) => continue,
                    Ok(Some(_)) => break,
                    Ok(None) => {
                        tracing::warn!(tid, "killed thread did not exit within 5 s");
                        break;
                    }
                    Err(_) => break, // already collected
                }
            }
        }
        Ok(())
    }

    /// Its stopped threads.
    pub fn threads(&self) -> &[i32] {
        &self.threads
    }

    /// Takes `tid` into the guard: a thread of the process that is already traced and stopped by
    /// us (one auto-attached through PTRACE_O_TRACECLONE during a restore). It is detached with
    /// the others.
    pub fn adopt(&mut self, tid: i32) {
        if !self.threads.contains(&tid) {
            self.threads.push(tid);
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for &tid in &self.threads {
            // A thread stopped in a wait the kernel restarts through its restart block goes on
            // in `restart_syscall`: note which syscall that is, for a later save of it.
            if let Ok(r) = crate::sys::regs::get_regs(tid) {
                crate::cpu::note_restart(&r);
            }
            if let Err(e) = sys::ptrace_detach(tid) {
                tracing::warn!(tid, error = %e, "detach failed");
            }
        }
    }
}
