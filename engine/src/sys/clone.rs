//! Creating the restore target: a new PID namespace whose init (ours) clones a child with a
//! chosen PID (`clone3` with `set_tid`) that maps a one-page syscall trampoline and stops itself.
//!
//! The two children run between fork and their end with raw syscalls only (no allocation, no
//! locks), so this is safe to call from a multi-threaded process.
use std::io;

/// The `clone_args` structure of `clone3(2)` (version 2, with `cgroup`).
#[repr(C)]
#[derive(Default)]
pub(crate) struct CloneArgs {
    pub(crate) flags: u64,
    pub(crate) pidfd: u64,
    pub(crate) child_tid: u64,
    pub(crate) parent_tid: u64,
    pub(crate) exit_signal: u64,
    pub(crate) stack: u64,
    pub(crate) stack_size: u64,
    pub(crate) tls: u64,
    pub(crate) set_tid: u64,
    pub(crate) set_tid_size: u64,
    pub(crate) cgroup: u64,
}

/// Bytes of the trampoline: `syscall` (the injection point), then a `pause` loop
/// (`mov eax, SYS_pause; syscall; jmp back`). An injecting thread never runs past the first
/// `syscall` (we stop it at syscall exit); a child created by an injected `fork`-like `clone3`
/// does, and waits in the loop until it is taken over in turn.
pub const TRAMPOLINE: [u8; 11] = [0x0f, 0x05, 0xb8, libc::SYS_pause as u8, 0, 0, 0, 0x0f, 0x05, 0xeb, 0xf7];

/// Raw `clone3`: the child's pid in the parent, 0 in the child, -1 with errno on failure.
pub(crate) fn clone3(args: &CloneArgs) -> i64 {
    // SAFETY: clone3 reads `args` (valid, correctly sized); without CLONE_VM and without a stack
    // it behaves like fork: the child continues on a copy of this stack.
    unsafe { libc::syscall(libc::SYS_clone3, args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(1)
}

/// Exit codes of the init process, so the parent can say what failed.
pub const INIT_EXIT_CLONE_FAILED: i32 = 100;
/// The group init could not mount its /proc.
pub const INIT_EXIT_MOUNT_FAILED: i32 = 102;
/// The target could not map its trampoline (the address was taken).
pub const TARGET_EXIT_TRAMPOLINE: i32 = 101;

/// Body of the target child: map the trampoline at `tramp`, then wait to be taken over (in
/// `pause`, so no stop state lingers after we detach). If nobody takes it over within 30 s, the
/// alarm ends it. Raw syscalls only.
fn target_child(tramp: u64) -> ! {
    // SAFETY: mmap with MAP_FIXED_NOREPLACE at a page-aligned address; no existing mapping is
    // touched (the call fails instead). The page is then written through the returned pointer,
    // which is valid for 4096 bytes. kill/_exit take integers.
    unsafe {
        let p = libc::mmap(
            tramp as *mut libc::c_void,
            4096,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        );
        if p == libc::MAP_FAILED || p as u64 != tramp {
            libc::_exit(TARGET_EXIT_TRAMPOLINE);
        }
        let code = p.cast::<u8>();
        for (i, b) in TRAMPOLINE.iter().enumerate() {
            *code.add(i) = *b;
        }
        libc::syscall(libc::SYS_alarm, 30);
        loop {
            libc::syscall(libc::SYS_pause);
        }
    }
}

/// The start of every init of ours: a session of its own, stdio on /dev/null, no other fd.
fn init_setup() {
    // SAFETY: plain syscalls on integers and on a string literal.
    unsafe {
        libc::setsid();
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
        }
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
    }
}

/// The rest of every init of ours: reap children until none is left, then exit.
fn reap_until_empty() -> ! {
    loop {
        let mut status = 0;
        // SAFETY: status is a valid i32; waitpid and _exit take integers.
        unsafe {
            if libc::waitpid(-1, &mut status, 0) < 0 && errno() == libc::ECHILD {
                libc::_exit(0);
            }
        }
    }
}

/// Body of the namespace's init: start the target with PID `vpid`, then reap until no child is
/// left. Raw syscalls only.
fn init_child(vpid: i32, tramp: u64) -> ! {
    init_setup();
    if spawn_target(vpid, tramp).is_err() {
        // SAFETY: _exit takes an integer.
        unsafe { libc::_exit(INIT_EXIT_CLONE_FAILED) };
    }
    reap_until_empty()
}

/// Creates a restore target as a child of the calling process: a process with PID `vpid` (in the
/// caller's PID namespace; the caller must be that namespace's init or have CAP_SYS_ADMIN over
/// it) that maps the trampoline at `tramp` and waits in `pause` to be taken over (30 s at most).
/// Returns the child's pid. Safe to call from a single-threaded process only (fork semantics).
pub fn spawn_target(vpid: i32, tramp: u64) -> io::Result<i32> {
    let tids = [vpid];
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: tids.as_ptr() as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    let rc = clone3(&args);
    if rc == 0 {
        target_child(tramp);
    }
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as i32)
}

/// Starts an init in new PID and mount namespaces, with a fresh /proc of its PID namespace, that
/// creates one restore target per pid of `top` (in order, see [`spawn_target`]) and then reaps
/// until no child is left. Returns the init's host pid.
pub fn spawn_pidns_group(top: &[i32], tramp: u64) -> io::Result<i32> {
    let flags = (libc::CLONE_NEWPID | libc::CLONE_NEWNS) as u64;
    let args = CloneArgs { flags, exit_signal: libc::SIGCHLD as u64, ..Default::default() };
    let rc = clone3(&args);
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if rc == 0 {
        group_init(top, tramp);
    }
    Ok(rc as i32)
}

fn group_init(top: &[i32], tramp: u64) -> ! {
    // SAFETY: mount takes pointers to string literals or null; _exit takes an integer.
    unsafe {
        let rc = libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null());
        if rc != 0 || libc::mount(c"proc".as_ptr(), c"/proc".as_ptr(), c"proc".as_ptr(), 0, std::ptr::null()) != 0 {
            libc::_exit(INIT_EXIT_MOUNT_FAILED);
        }
    }
    init_setup();
    for &vpid in top {
        if spawn_target(vpid, tramp).is_err() {
            // SAFETY: _exit takes an integer.
            unsafe { libc::_exit(INIT_EXIT_CLONE_FAILED) };
        }
    }
    reap_until_empty()
}

/// Starts an init in a new PID namespace that creates the target with `vpid` and a trampoline
/// page at `tramp`. Returns the init's host pid.
pub fn spawn_pidns_target(vpid: i32, tramp: u64) -> io::Result<i32> {
    let args = CloneArgs { flags: libc::CLONE_NEWPID as u64, exit_signal: libc::SIGCHLD as u64, ..Default::default() };
    let rc = clone3(&args);
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if rc == 0 {
        init_child(vpid, tramp);
    }
    Ok(rc as i32)
}

/// Kills `pid` and reaps it if it is our child, waiting up to 5 s (a process that is not our
/// child is waited for until it is gone).
pub fn kill_and_reap(pid: i32) {
    let _ = kill(pid, libc::SIGKILL);
    let start = std::time::Instant::now();
    while try_reap(pid).is_none() && start.elapsed() < std::time::Duration::from_secs(5) {
        if std::fs::metadata(format!("/proc/{pid}")).is_err() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Reaps `pid` if it has exited; returns its wait status.
pub fn try_reap(pid: i32) -> Option<i32> {
    let mut status = 0;
    // SAFETY: status is a valid i32; WNOHANG makes this non-blocking.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    (r == pid).then_some(status)
}

/// Sends a signal to a process.
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: kill takes integers.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
