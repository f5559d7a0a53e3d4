//! ptrace requests that start, stop and resume threads, and wait(2) for them.
use std::io;

/// The result of ptrace or wait call `what` on `pid`. The error is the OS error itself, so that
/// callers can tell its code (`raw_os_error`: ESRCH for a thread that exited meanwhile); they add
/// the step and the pid when they report it.
fn check(rc: libc::c_long, what: &str, pid: i32) -> io::Result<libc::c_long> {
    if rc == -1 {
        let e = io::Error::last_os_error();
        tracing::trace!(pid, error = %e, "{what} failed");
        Err(e)
    } else {
        Ok(rc)
    }
}

/// PTRACE_O_SUSPEND_SECCOMP: the tracee's seccomp filters (and strict mode) do not apply while
/// we trace it, so that a filter cannot block or kill on the syscalls we inject. Needs
/// CAP_SYS_ADMIN and a kernel with CONFIG_CHECKPOINT_RESTORE.
const PTRACE_O_SUSPEND_SECCOMP: i32 = 1 << 21;

/// Whether PTRACE_O_SUSPEND_SECCOMP was refused once (then it is not asked for again).
static NO_SUSPEND_SECCOMP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// True when the threads we seize have their seccomp filters suspended.
pub fn seccomp_suspended() -> bool {
    !NO_SUSPEND_SECCOMP.load(std::sync::atomic::Ordering::Relaxed)
}

/// The options every thread we trace carries: syscall stops reported with bit 7 set in the signal
/// (PTRACE_O_TRACESYSGOOD) and, where the kernel grants it, seccomp suspended.
pub fn base_options() -> i32 {
    if seccomp_suspended() {
        libc::PTRACE_O_TRACESYSGOOD | PTRACE_O_SUSPEND_SECCOMP
    } else {
        libc::PTRACE_O_TRACESYSGOOD
    }
}

/// PTRACE_SEIZE the thread `tid` (no signal is sent; the thread keeps running) with
/// [`base_options`]. A kernel that refuses PTRACE_O_SUSPEND_SECCOMP gets a seize without it, and
/// later seizes do not ask for it again ([`seccomp_suspended`] says so).
pub fn ptrace_seize(tid: i32) -> io::Result<()> {
    let seize = |opts: i32| {
        // SAFETY: PTRACE_SEIZE takes no pointers; data carries the options by value.
        let rc = unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0usize, opts as usize) };
        check(rc, "ptrace(SEIZE)", tid).map(drop)
    };
    match seize(base_options()) {
        Err(e) if seccomp_suspended() && matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::EPERM)) => {
            // EPERM is also what an already traced thread gives: only a seize without the option
            // that succeeds tells the option was the cause.
            seize(libc::PTRACE_O_TRACESYSGOOD)?;
            NO_SUSPEND_SECCOMP.store(true, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
        r => r,
    }
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
/// A ptrace stop usually comes within microseconds (an injected syscall's entry and exit): the
/// first 100 µs are polled yielding the CPU, then every 200 µs.
pub fn wait_thread_timeout(tid: i32, timeout: std::time::Duration) -> io::Result<Option<i32>> {
    const SPIN: std::time::Duration = std::time::Duration::from_micros(100);
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
        let waited = start.elapsed();
        if waited >= timeout {
            return Ok(None);
        }
        if waited < SPIN {
            std::thread::yield_now();
        } else {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }
}

const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
const PTRACE_SECCOMP_GET_METADATA: libc::c_uint = 0x420d;
const PTRACE_SET_SYSCALL_USER_DISPATCH_CONFIG: libc::c_uint = 0x4210;
const PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG: libc::c_uint = 0x4211;

/// The classic BPF program of seccomp filter `index` of the stopped thread `tid` (0 is the filter
/// installed first), as raw `struct sock_filter` entries (8 bytes each); `None` past the last one.
pub fn seccomp_filter(tid: i32, index: u64) -> io::Result<Option<Vec<u8>>> {
    // SAFETY: with a null data pointer the kernel only returns the number of instructions.
    let n = unsafe { libc::ptrace(PTRACE_SECCOMP_GET_FILTER, tid, index as usize, std::ptr::null_mut::<u8>()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOENT) {
            return Ok(None);
        }
        return Err(io::Error::new(e.kind(), format!("ptrace(SECCOMP_GET_FILTER {index}) tid {tid}: {e}")));
    }
    let mut buf = vec![0u8; n as usize * 8];
    // SAFETY: `buf` has room for the `n` sock_filter entries (8 bytes each) the kernel copies.
    let got = unsafe { libc::ptrace(PTRACE_SECCOMP_GET_FILTER, tid, index as usize, buf.as_mut_ptr()) };
    if got < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("ptrace(SECCOMP_GET_FILTER {index}) tid {tid}: {e}")));
    }
    buf.truncate(got as usize * 8);
    Ok(Some(buf))
}

/// The flags of seccomp filter `index` of the stopped thread `tid` (SECCOMP_FILTER_FLAG_LOG is
/// the one the kernel reports).
pub fn seccomp_filter_flags(tid: i32, index: u64) -> io::Result<u64> {
    let mut md = [index, 0u64];
    // SAFETY: addr is the size of struct seccomp_metadata (two u64: filter_off, flags), data
    // points to one, which the kernel reads and fills.
    let rc = unsafe { libc::ptrace(PTRACE_SECCOMP_GET_METADATA, tid, 16usize, md.as_mut_ptr()) };
    check(rc, "ptrace(SECCOMP_GET_METADATA)", tid)?;
    Ok(md[1])
}

/// A thread's syscall user dispatch (`PR_SET_SYSCALL_USER_DISPATCH`): mode, selector address,
/// and the range of code whose syscalls are let through (struct ptrace_sud_config).
pub type SudConfig = [u64; 4];

/// Reads the syscall user dispatch configuration of the stopped thread `tid`; `None` where the
/// kernel cannot tell (before Linux 6.11).
pub fn get_sud_config(tid: i32) -> io::Result<Option<SudConfig>> {
    let mut cfg: SudConfig = [0; 4];
    // SAFETY: addr is the size of struct ptrace_sud_config (four u64), data points to one.
    let rc = unsafe { libc::ptrace(PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG, tid, 32usize, cfg.as_mut_ptr()) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL)) {
            return Ok(None);
        }
        return Err(io::Error::new(e.kind(), format!("ptrace(GET_SYSCALL_USER_DISPATCH_CONFIG) tid {tid}: {e}")));
    }
    Ok(Some(cfg))
}

/// Sets the syscall user dispatch configuration of the stopped thread `tid`.
pub fn set_sud_config(tid: i32, cfg: &SudConfig) -> io::Result<()> {
    // SAFETY: addr is the size of struct ptrace_sud_config, data points to one the kernel reads.
    let rc = unsafe { libc::ptrace(PTRACE_SET_SYSCALL_USER_DISPATCH_CONFIG, tid, 32usize, cfg.as_ptr()) };
    check(rc, "ptrace(SET_SYSCALL_USER_DISPATCH_CONFIG)", tid).map(drop)
}
