//! Creating the threads of a process being restored.
//!
//! The process's main thread is stopped under ptrace with PTRACE_O_TRACECLONE set; for each
//! saved extra thread we inject `clone3` in it with the flags of a pthread
//! (`CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM`) and
//! `set_tid` = the saved vtid, so the thread gets the id it had in its PID namespace. The
//! `struct clone_args` and the tid array live in the injector's scratch page. No stack, TLS or
//! child-tid pointers are passed: the new thread never runs a user instruction of its own before
//! we load all of its registers (FS base included) and set its tid address from inside it.
//!
//! The main thread passes a PTRACE_EVENT_CLONE stop on the way out of `clone3` (the injector
//! steps over it). The new thread is auto-attached and first stops in a PTRACE_EVENT_STOP
//! before it returns to user space; it is a thread, not a child, so it is waited for with
//! `__WALL`, and with a time limit. It inherits the main thread's mask, which blocks everything
//! while we work.
use std::time::Duration;

use crate::cpu::vtid_of;
use crate::inject::Injector;
use crate::sys::ptrace as pt;
use crate::{EngineError, Result};

const PTRACE_EVENT_STOP: i32 = 128;
const CLONE_ARGS_SIZE: usize = 88;
/// Where in the scratch page the tid array goes (after the clone_args).
const SET_TID_OFFSET: u64 = 512;

/// `clone3` flags of a thread as glibc's `pthread_create` makes them, minus the ones whose
/// effect we set up ourselves (TLS, parent and child tid pointers).
const THREAD_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM) as u64;

/// Lets the main thread `tid` report the threads it creates (PTRACE_O_TRACECLONE), or stops that.
/// The options we seize with (seccomp suspended) are kept; new threads inherit them.
pub fn trace_clones(tid: i32, on: bool) -> Result<()> {
    let mut opts = pt::base_options();
    if on {
        opts |= libc::PTRACE_O_TRACECLONE;
    }
    pt::ptrace_setoptions(tid, opts).map_err(|source| EngineError::Sys { step: "ptrace set options", pid: tid, source })
}

/// Host tid of the thread of `pid` whose id in the process's namespace is `vtid`, looking only at
/// threads not in `known`.
fn host_tid(pid: i32, vtid: i32, known: &[i32]) -> Result<i32> {
    let dir = format!("/proc/{pid}/task");
    let entries = std::fs::read_dir(&dir).map_err(|e| EngineError::io("list threads", std::path::Path::new(&dir), e))?;
    for tid in entries.flatten().filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok())) {
        if !known.contains(&tid) && vtid_of(pid, tid).ok() == Some(vtid) {
            return Ok(tid);
        }
    }
    Err(EngineError::Proc { pid, detail: format!("created thread {vtid} is not in /proc/{pid}/task") })
}

/// Creates a thread with id `vtid` (in the process's PID namespace) in process `pid`, by
/// injecting `clone3` through `main` (the injector of the main thread, which must trace clones:
/// [`trace_clones`]). Returns the new thread's host tid (one not in `known`, the threads we
/// already hold); it is traced by us and on its way to its first stop ([`wait_first_stop`]).
pub fn create(main: &mut Injector, pid: i32, vtid: i32, known: &[i32]) -> Result<i32> {
    let scratch = main.scratch(4096)?;
    let set_tid = scratch + SET_TID_OFFSET;
    // struct clone_args: flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size,
    // tls, set_tid, set_tid_size, cgroup.
    let args: [u64; CLONE_ARGS_SIZE / 8] = [THREAD_FLAGS, 0, 0, 0, 0, 0, 0, 0, set_tid, 1, 0];
    let bytes: Vec<u8> = args.iter().flat_map(|w| w.to_le_bytes()).collect();
    main.write_mem(scratch, &bytes)?;
    main.write_mem(set_tid, &vtid.to_le_bytes())?;
    let rc = main.syscall(libc::SYS_clone3, [scratch, CLONE_ARGS_SIZE as u64, 0, 0, 0, 0])?;
    if rc < 0 {
        return Err(EngineError::Sys {
            step: "clone3 (create thread with its saved tid)",
            pid: vtid,
            source: std::io::Error::from_raw_os_error(-rc as i32),
        });
    }
    if rc != i64::from(vtid) {
        return Err(EngineError::Proc { pid, detail: format!("thread created as {rc}, not with its saved tid {vtid}") });
    }
    host_tid(pid, vtid, known)
}

/// Waits (at most `timeout`) for the thread `tid` just created by [`create`] to reach its first
/// stop, the PTRACE_EVENT_STOP of an auto-attached thread.
pub fn wait_first_stop(tid: i32, timeout: Duration) -> Result<()> {
    loop {
        let status = pt::wait_thread_timeout(tid, timeout)
            .map_err(|source| EngineError::Sys { step: "wait for new thread", pid: tid, source })?
            .ok_or_else(|| EngineError::Proc { pid: tid, detail: "new thread did not stop".into() })?;
        if pt::exited(status) {
            return Err(EngineError::Proc { pid: tid, detail: "new thread died before it stopped".into() });
        }
        match pt::stopped_signal(status) {
            Some(_) if status >> 16 == PTRACE_EVENT_STOP => return Ok(()),
            Some(sig) => {
                return Err(EngineError::Proc { pid: tid, detail: format!("new thread stopped with {sig} (status {status:#x})") })
            }
            None => {}
        }
    }
}
