//! ptrace requests that start, stop and resume threads, and wait(2) for them.
use std::io;

fn check(rc: libc::c_long, what: &str, pid: i32) -> io::Result<libc::c_long> {
    if rc == -1 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what} pid {pid}: {e}")))
    } else {
        Ok(rc)
    }
}

/// PTRACE_SEIZE the thread `tid` (no signal is sent; the thread keeps running). Syscall stops
/// are reported with bit 7 set in the signal (PTRACE_O_TRACESYSGOOD).
pub fn ptrace_seize(tid: i32) -> io::Result<()> {
    // SAFETY: PTRACE_SEIZE takes no pointers; data carries the options by value.
    let rc = unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0usize, libc::PTRACE_O_TRACESYSGOOD as usize) };
    check(rc, "ptrace(SEIZE)", tid).map(drop)
}

/// PTRACE_INTERRUPT a seized thread: it stops at the next opportunity.
pub fn ptrace_interrupt(tid: i32) -> io::Result<()> {
    // SAFETY: PTRACE_INTERRUPT takes no pointers.
    let rc = unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0usize, 0usize) };
    check(rc, "ptrace(INTERRUPT)", tid).map(drop)
}

/// PTRACE_DETACH a stopped thread, letting it run on.
pub fn ptrace_detach(tid: i32) -> io::Result<()> {
    // SAFETY: PTRACE_DETACH with data 0 (no signal to deliver) takes no pointers.
    let rc = unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, 0usize, 0usize) };
    check(rc, "ptrace(DETACH)", tid).map(drop)
}

/// Decodes a wait status: `Some(signal)` when the thread is in a ptrace stop.
pub fn stopped_signal(status: i32) -> Option<i32> {
    libc::WIFSTOPPED(status).then(|| libc::WSTOPSIG(status))
}

/// True when the status says the thread has exited or was killed.
pub fn exited(status: i32) -> bool {
    libc::WIFEXITED(status) || libc::WIFSIGNALED(status)
}

/// PTRACE_CONT a thread in a ptrace stop, delivering `sig` (0 for none).
pub fn ptrace_cont(tid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: PTRACE_CONT's data is a signal number passed by value; no pointers.
    let rc = unsafe { libc::ptrace(libc::PTRACE_CONT, tid, 0usize, sig as usize) };
    check(rc, "ptrace(CONT)", tid).map(drop)
}

/// PTRACE_SYSCALL: resume until the next syscall entry or exit, delivering `sig` (0 for none).
pub fn ptrace_syscall(tid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: PTRACE_SYSCALL's data is a signal number passed by value; no pointers.
    let rc = unsafe { libc::ptrace(libc::PTRACE_SYSCALL, tid, 0usize, sig as usize) };
    check(rc, "ptrace(SYSCALL)", tid).map(drop)
}

/// Sends `sig` to thread `tid` (tgkill, with the thread group read from /proc).
pub fn tgkill(tid: i32, sig: i32) -> io::Result<()> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status"))?;
    let tgid: i32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("no Tgid for tid {tid}")))?;
    // SAFETY: tgkill takes plain integers.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, tgid, tid, sig) };
    check(rc, "tgkill", tid).map(drop)
}

/// PTRACE_SETOPTIONS on a stopped thread (e.g. `PTRACE_O_TRACESYSGOOD | PTRACE_O_TRACECLONE`).
pub fn ptrace_setoptions(tid: i32, options: i32) -> io::Result<()> {
    // SAFETY: PTRACE_SETOPTIONS takes the options by value in data; no pointers.
    let rc = unsafe { libc::ptrace(libc::PTRACE_SETOPTIONS, tid, 0usize, options as usize) };
    check(rc, "ptrace(SETOPTIONS)", tid).map(drop)
}

/// Like [`wait_thread`], but gives up after `timeout`: `Ok(None)` if `tid` reported nothing.
pub fn wait_thread_timeout(tid: i32, timeout: std::time::Duration) -> io::Result<Option<i32>> {
    let start = std::time::Instant::now();
    loop {
        let mut status = 0i32;
        // SAFETY: `status` is a valid, writable i32; WNOHANG makes the call non-blocking.
        let rc = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
        if rc == tid {
            return Ok(Some(status));
        }
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(io::Error::new(e.kind(), format!("waitpid tid {tid}: {e}")));
            }
        }
        if start.elapsed() >= timeout {
            return Ok(None);
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}
