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

fn stop_thread(tid: i32) -> Result<bool> {
    sys::ptrace_interrupt(tid).map_err(|source| EngineError::Sys { step: "ptrace interrupt", pid: tid, source })?;
    loop {
        let status = wait_stop(tid)?;
        if sys::exited(status) {
            return Ok(false);
        }
        match sys::stopped_signal(status) {
            Some(_) if status >> 16 == PTRACE_EVENT_STOP => return Ok(true),
            Some(sig) => {
                // A signal-delivery stop came first: deliver it and wait for the interrupt stop.
                sys::ptrace_cont(tid, sig).map_err(|source| EngineError::Sys { step: "ptrace cont", pid: tid, source })?;
            }
            None => {}
        }
    }
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
        let mut frozen = Frozen { pid, threads: Vec::new() };
        let mut seen: BTreeSet<i32> = BTreeSet::new();
        loop {
            let now = list_threads(pid)?;
            let fresh: Vec<i32> = now.difference(&seen).copied().collect();
            if fresh.is_empty() {
                break;
            }
            for tid in fresh {
                seen.insert(tid);
                match sys::ptrace_seize(tid) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue, // exited meanwhile
                    Err(source) => return Err(EngineError::Sys { step: "ptrace seize", pid: tid, source }),
                }
                if stop_thread(tid)? {
                    frozen.threads.push(tid);
                }
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
        let mut frozen = Frozen { pid, threads: Vec::new() };
        for tid in list_threads(pid)? {
            match sys::ptrace_seize(tid) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue,
                Err(source) => return Err(EngineError::Sys { step: "ptrace seize", pid: tid, source }),
            }
            frozen.threads.push(tid);
            sys::ptrace_interrupt(tid).map_err(|source| EngineError::Sys { step: "ptrace interrupt", pid: tid, source })?;
        }
        Ok(frozen)
    }

    /// Waits until every thread seized by [`Frozen::seize_frozen`] is in its interrupt stop.
    pub fn wait_stopped(&mut self) -> Result<()> {
        let mut alive = Vec::new();
        for &tid in &self.threads {
            loop {
                let status = wait_stop(tid)?;
                if sys::exited(status) {
                    break;
                }
                match sys::stopped_signal(status) {
                    Some(_) if status >> 16 == PTRACE_EVENT_STOP => {
                        alive.push(tid);
                        break;
                    }
                    Some(sig) => {
                        sys::ptrace_cont(tid, sig).map_err(|source| EngineError::Sys { step: "ptrace cont", pid: tid, source })?;
                    }
                    None => {}
                }
            }
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
            if let Err(e) = sys::ptrace_detach(tid) {
                tracing::warn!(tid, error = %e, "detach failed");
            }
        }
    }
}
