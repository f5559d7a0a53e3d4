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
/// Session, stdio on /dev/null, and every fd from `keep_below` up closed.
fn init_setup(keep_below: i32) {
    // SAFETY: plain syscalls on integers and on a string literal.
    unsafe {
        libc::setsid();
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
        }
        libc::syscall(libc::SYS_close_range, keep_below as u32, u32::MAX, 0u32);
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
    init_setup(3);
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
    spawn_group_init(top, tramp, None)
}

/// Like [`spawn_pidns_group`], for a lazy restore: the init is guarded by `guard` (its end of a
/// [`guard_pair`]) as [`spawn_pidns_target_guarded`]'s is: it dies with the calling thread, and kills
/// its namespace on the pipe's EOF, until it reads `b'D'` ([`release_guard`]).
pub fn spawn_pidns_group_guarded(top: &[i32], tramp: u64, guard: i32) -> io::Result<i32> {
    spawn_group_init(top, tramp, Some(guard))
}

fn spawn_group_init(top: &[i32], tramp: u64, guard: Option<i32>) -> io::Result<i32> {
    let flags = (libc::CLONE_NEWPID | libc::CLONE_NEWNS) as u64;
    let args = CloneArgs { flags, exit_signal: libc::SIGCHLD as u64, ..Default::default() };
    let rc = clone3(&args);
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if rc == 0 {
        group_init(top, tramp, guard);
    }
    Ok(rc as i32)
}

fn group_init(top: &[i32], tramp: u64, guard: Option<i32>) -> ! {
    // SAFETY: mount takes pointers to string literals or null; prctl, dup2 and _exit take integers.
    unsafe {
        if let Some(g) = guard {
            // As in spawn_pidns_target_guarded: an EOF seen below covers a parent that died first.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
            libc::dup2(g, GUARD_FD);
        }
        let rc = libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null());
        if rc != 0 || libc::mount(c"proc".as_ptr(), c"/proc".as_ptr(), c"proc".as_ptr(), 0, std::ptr::null()) != 0 {
            libc::_exit(INIT_EXIT_MOUNT_FAILED);
        }
    }
    init_setup(if guard.is_some() { GUARD_FD + 1 } else { 3 });
    for &vpid in top {
        if spawn_target(vpid, tramp).is_err() {
            // SAFETY: _exit takes an integer.
            unsafe { libc::_exit(INIT_EXIT_CLONE_FAILED) };
        }
    }
    match guard {
        Some(_) => guarded_reap(GUARD_FD),
        None => reap_until_empty(),
    }
}

/// Where a guarded group init keeps its guard.
const GUARD_FD: i32 = 3;

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

/// Like [`spawn_pidns_target`], for a lazy restore: the init dies with the thread that calls
/// this (`PR_SET_PDEATHSIG` SIGKILL), taking its whole PID namespace with it, until it reads
/// `b'D'` from `guard` (its end of a [`guard_pair`]; the caller keeps the other). It then clears
/// that, closes the userfaultfds it was handed meanwhile ([`hold_fd`]) and its end, which the
/// writer sees as POLLHUP (see [`release_guard`]). EOF without `b'D'` kills the namespace too.
/// So a pager that dies before every page is in never leaves a process waiting for a page that
/// cannot come, nor lets one read a page it did not fill.
pub fn spawn_pidns_target_guarded(vpid: i32, tramp: u64, guard: i32) -> io::Result<i32> {
    let args = CloneArgs { flags: libc::CLONE_NEWPID as u64, exit_signal: libc::SIGCHLD as u64, ..Default::default() };
    let rc = clone3(&args);
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if rc == 0 {
        // SAFETY: plain syscalls on integers; the guard fd is ours, inherited.
        unsafe {
            // Had the parent died before this, the guard's write end is closed already and the
            // loop below sees EOF (getppid says 0 across the namespace boundary either way).
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
            libc::dup2(guard, 3);
            libc::setsid();
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            if null >= 0 {
                libc::dup2(null, 0);
                libc::dup2(null, 1);
                libc::dup2(null, 2);
            }
            libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
            if spawn_target(vpid, tramp).is_err() {
                libc::_exit(INIT_EXIT_CLONE_FAILED);
            }
        }
        guarded_reap(3)
    }
    Ok(rc as i32)
}

/// How many userfaultfds a guarded init holds at most (those past it are not held: for them a
/// pager's death leaves the window the holding closes, see [`hold_fd`]).
const HELD_MAX: usize = 1024;

/// The guarded init's loop: reap, and watch the guard until it says done. The userfaultfds the
/// pager hands it ([`hold_fd`]) are kept open until then, so that a pager's death never
/// releases them before the processes are killed; on done they are closed.
fn guarded_reap(guard: i32) -> ! {
    let mut watching = true;
    // No allocation here: this runs in a child of a multi-threaded process.
    let mut held = [-1i32; HELD_MAX];
    let mut nheld = 0usize;
    loop {
        let mut status = 0;
        // SAFETY: status is a valid i32; waitpid, poll, recvmsg, close, prctl, kill and _exit
        // take integers or pointers to our stack.
        unsafe {
            loop {
                let r = libc::waitpid(-1, &mut status, libc::WNOHANG);
                if r < 0 && errno() == libc::ECHILD {
                    libc::_exit(0);
                }
                if r <= 0 {
                    break;
                }
            }
            if !watching {
                libc::waitpid(-1, &mut status, 0);
                continue;
            }
            let mut pfd = libc::pollfd { fd: guard, events: libc::POLLIN, revents: 0 };
            if libc::poll(&mut pfd, 1, 50) > 0 {
                match guard_recv(guard, &mut |fd| {
                    if nheld < HELD_MAX {
                        held[nheld] = fd;
                        nheld += 1;
                    } else {
                        libc::close(fd);
                    }
                }) {
                    GuardMsg::Done => {
                        libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0);
                        for &fd in &held[..nheld] {
                            libc::close(fd);
                        }
                        nheld = 0;
                        libc::close(guard);
                        watching = false;
                    }
                    GuardMsg::Eof => {
                        // The pager let go without saying done: its pages will never come. The
                        // userfaultfds stay open until every process is dead (at our exit).
                        libc::kill(-1, libc::SIGKILL);
                        libc::_exit(INIT_EXIT_CLONE_FAILED);
                    }
                    GuardMsg::Other => {}
                }
            }
        }
    }
}

/// What a guarded init read from its guard.
pub enum GuardMsg {
    /// `D`: every page is in; the init no longer depends on the pager.
    Done,
    /// End of file: the pager is gone.
    Eof,
    /// Anything else (`H`: a userfaultfd to hold, given to the callback; an interrupted read).
    Other,
}

/// Reads one message of a guard (a guarded init's end of [`guard_pair`]) without allocating;
/// file descriptors sent with it are given to `keep`.
pub fn guard_recv(guard: i32, keep: &mut dyn FnMut(i32)) -> GuardMsg {
    let mut b = 0u8;
    let mut iov = libc::iovec { iov_base: (&mut b as *mut u8).cast(), iov_len: 1 };
    // Room for a few fds (one is sent at a time).
    let mut cbuf = [0u64; 8];
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    // SAFETY: recvmsg fills the buffers msg points to, all on our stack and of the sizes given.
    let n = unsafe { libc::recvmsg(guard, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    // SAFETY: the CMSG macros walk the control buffer recvmsg filled, within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const i32;
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<i32>();
                for i in 0..count {
                    keep(std::ptr::read_unaligned(data.add(i)));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    match n {
        0 => GuardMsg::Eof,
        1 if b == b'D' => GuardMsg::Done,
        n if n < 0 && errno() != libc::EINTR && errno() != libc::EAGAIN => GuardMsg::Eof,
        _ => GuardMsg::Other,
    }
}

/// Hands `fd` (a userfaultfd of a lazily restored process) to the guarded init at the other end
/// of `guard` (the pager's end of [`guard_pair`]), which keeps it open until the pager says done.
/// A pager's death then never releases the userfaultfd (the kernel lets a waiting fault go on
/// with a zero page once it is released) before the init has killed the processes.
pub fn hold_fd(guard: &std::os::fd::OwnedFd, fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let b = b'H';
    let mut iov = libc::iovec { iov_base: (&b as *const u8).cast_mut().cast(), iov_len: 1 };
    let mut cbuf = [0u64; 4];
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE/CMSG_LEN compute sizes; the header written lies in cbuf (32 bytes,
    // more than CMSG_SPACE of one int).
    unsafe {
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) as usize;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut i32, fd.as_raw_fd());
    }
    // SAFETY: sendmsg reads the buffers msg points to, all alive on our stack.
    if unsafe { libc::sendmsg(guard.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) } != 1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The guard of a lazy restore: a connected pair of unix sockets (close-on-exec), (the init's
/// end, the pager's end). The pager says `D` when every page is in, and hands the init the
/// userfaultfds to hold meanwhile ([`hold_fd`]); its death is the init's end of file.
pub fn guard_pair() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0i32; 2];
    // SAFETY: socketpair fills two ints in our array.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (std::os::fd::OwnedFd::from_raw_fd(fds[0]), std::os::fd::OwnedFd::from_raw_fd(fds[1])) })
}

/// Tells a guarded init ([`spawn_pidns_target_guarded`]) that it no longer depends on us, and
/// waits (up to `timeout`) until it has cleared its death signal and closed its end (of a pipe,
/// or of a [`guard_pair`]).
pub fn release_guard(write_end: &std::os::fd::OwnedFd, timeout: std::time::Duration) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: writing one byte from our stack to a pipe or socket fd we own.
    if unsafe { libc::write(write_end.as_raw_fd(), b"D".as_ptr().cast(), 1) } != 1 {
        let e = io::Error::last_os_error();
        // The init is gone already: every process of its namespace ended (it exits when it has
        // no child left), so nothing depends on us any more.
        if e.raw_os_error() == Some(libc::EPIPE) {
            return Ok(());
        }
        return Err(e);
    }
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        let mut pfd = libc::pollfd { fd: write_end.as_raw_fd(), events: 0, revents: 0 };
        // SAFETY: one valid pollfd on our stack.
        if unsafe { libc::poll(&mut pfd, 1, 20) } > 0 && pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
            return Ok(());
        }
    }
    Err(io::Error::new(io::ErrorKind::TimedOut, "the namespace init did not take the release"))
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
