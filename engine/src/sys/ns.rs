//! Namespaces, mounts and process creation for pods: `clone3` into new namespaces and a cgroup,
//! `setns`, `mount`, `sethostname`, signalfd, and the fork+exec of the pod's command.
//!
//! Every function that forks prepares all its memory (C strings, pointer arrays) before the
//! `clone3`, and the child runs raw syscalls only until `execve` or `_exit`: no allocation, no
//! locks, so the callers may be multi-threaded.
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::clone::{clone3, CloneArgs};

/// `CLONE_INTO_CGROUP` (the libc constant has the wrong width).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A NULL-terminated array of pointers into `strings` (which must outlive it).
fn ptrs(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings.iter().map(|s| s.as_ptr()).chain(std::iter::once(std::ptr::null())).collect()
}

/// A pipe, both ends close-on-exec: (read, write).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 just created these fds; we take sole ownership.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Takes ownership of an fd this process inherited (e.g. fd 3 of the pod's init), marking it
/// close-on-exec. Fails if `fd` is not open.
pub fn take_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_SETFD on an integer fd; fails with EBADF when it is not open.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) })?;
    // SAFETY: the fd is open (checked above) and was handed to this process for it to own;
    // nothing else in the process refers to it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Closes every fd from `first` up.
pub fn close_fds_from(first: u32) -> io::Result<()> {
    // SAFETY: close_range takes integers; no fd owned by Rust code is at or above `first` when
    // the callers use it (at process start).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What [`spawn_init`] starts: the binary, its argv and envp, the namespaces and the cgroup.
pub struct InitLaunch<'a> {
    /// `CLONE_NEW*` flags.
    pub ns_flags: u64,
    /// An fd of the cgroup v2 directory the child starts in (`CLONE_INTO_CGROUP`).
    pub cgroup: BorrowedFd<'a>,
    /// The program.
    pub exe: &'a CStr,
    /// Its arguments (argv[0] included).
    pub argv: &'a [CString],
    /// Its environment.
    pub envp: &'a [CString],
    /// The fd that becomes the child's stdin, stdout and stderr (e.g. `/dev/null`, so the child
    /// does not keep the caller's terminal or pipes).
    pub stdio: BorrowedFd<'a>,
    /// Fds that become 3, 4, ... in the child (in this order); all others are closed on exec.
    pub fds: &'a [BorrowedFd<'a>],
}

/// Starts `launch.exe` in new namespaces and in a cgroup with `clone3` (+`CLONE_INTO_CGROUP`)
/// followed at once by `execve`. Returns the child's host pid. If the exec fails, the child
/// exits with status 127.
pub fn spawn_init(launch: &InitLaunch<'_>) -> io::Result<i32> {
    // Move the fds out of the way of 3, 4, ... so the dup3 calls in the child cannot clobber
    // one another.
    let mut high = Vec::with_capacity(launch.fds.len() + 1);
    for fd in launch.fds.iter().chain(std::iter::once(&launch.stdio)) {
        // SAFETY: F_DUPFD_CLOEXEC on a valid fd returns a new fd (>= 64) or -1.
        let n = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 64) })?;
        // SAFETY: fcntl just created this fd; we own it.
        high.push(unsafe { OwnedFd::from_raw_fd(n) });
    }
    let (stdio, fds) = high.split_last().expect("stdio is in the list");
    let argv = ptrs(launch.argv);
    let envp = ptrs(launch.envp);
    let args = CloneArgs {
        flags: launch.ns_flags | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: launch.cgroup.as_raw_fd() as u64,
        ..Default::default()
    };
    let rc = clone3(&args);
    if rc == 0 {
        // Child: raw syscalls only.
        // SAFETY: dup3/execve/_exit on integers and on pointers prepared before the clone (the
        // child has its own copy of this memory).
        unsafe {
            for target in 0..3 {
                if libc::dup3(stdio.as_raw_fd(), target, 0) < 0 {
                    libc::_exit(126);
                }
            }
            for (i, fd) in fds.iter().enumerate() {
                if libc::dup3(fd.as_raw_fd(), 3 + i as i32, 0) < 0 {
                    libc::_exit(126);
                }
            }
            libc::execve(launch.exe.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
    }
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as i32)
}

/// Makes every mount of this process's mount namespace private (no propagation to or from the
/// host).
pub fn make_mounts_private() -> io::Result<()> {
    // SAFETY: mount with a null source/type/data and valid C strings; no memory is written.
    cvt(unsafe {
        libc::mount(c"".as_ptr(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null())
    })?;
    Ok(())
}

/// Mounts a fresh procfs on `/proc` (it shows the caller's PID namespace).
pub fn mount_proc() -> io::Result<()> {
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // SAFETY: all pointers are valid NUL-terminated strings or null.
    cvt(unsafe { libc::mount(c"proc".as_ptr(), c"/proc".as_ptr(), c"proc".as_ptr(), flags, std::ptr::null()) })?;
    Ok(())
}

/// Mounts a fresh sysfs on /sys (it shows the caller's network namespace's interfaces) and the
/// cgroup2 hierarchy on /sys/fs/cgroup (seen from the caller's cgroup namespace: the pod's own
/// cgroup as its root).
pub fn mount_sys() -> io::Result<()> {
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // SAFETY: all pointers are valid NUL-terminated strings or null.
    cvt(unsafe { libc::mount(c"sysfs".as_ptr(), c"/sys".as_ptr(), c"sysfs".as_ptr(), flags, std::ptr::null()) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::mount(c"cgroup2".as_ptr(), c"/sys/fs/cgroup".as_ptr(), c"cgroup2".as_ptr(), flags, std::ptr::null()) })?;
    Ok(())
}

/// Mounts a devpts instance of the pod's own on /dev/pts, with the slave mode and group of the
/// devpts mounted there now (`options`: e.g. "mode=620,gid=5"), so that the pod's pseudo-terminals
/// are numbered apart from the host's: opening /dev/ptmx finds the instance mounted on the `pts`
/// next to it (Linux 4.7+). A host without /dev/pts is left as it is.
pub fn mount_devpts(options: &str) -> io::Result<()> {
    if !std::path::Path::new("/dev/pts").is_dir() {
        return Ok(());
    }
    let data = std::ffi::CString::new(format!("newinstance,ptmxmode=0666{}{options}", if options.is_empty() { "" } else { "," }))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "devpts options with a NUL byte"))?;
    let flags = libc::MS_NOSUID | libc::MS_NOEXEC;
    // SAFETY: all pointers are valid NUL-terminated strings.
    cvt(unsafe { libc::mount(c"devpts".as_ptr(), c"/dev/pts".as_ptr(), c"devpts".as_ptr(), flags, data.as_ptr().cast()) })?;
    Ok(())
}

/// The `mode=` and `gid=` options of the devpts mounted last on /dev/pts in `mountinfo` (the
/// text of /proc/self/mountinfo), joined with commas; empty when there is none.
pub fn devpts_options(mountinfo: &str) -> String {
    let Some(line) = mountinfo.lines().rev().find(|l| l.split_whitespace().nth(4) == Some("/dev/pts") && l.contains(" - devpts ")) else {
        return String::new();
    };
    let sup = line.split(" - ").nth(1).and_then(|r| r.split_whitespace().nth(2)).unwrap_or("");
    sup.split(',').filter(|o| o.starts_with("mode=") || o.starts_with("gid=")).collect::<Vec<_>>().join(",")
}

/// Sets the hostname of the caller's UTS namespace.
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    cvt(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })?;
    Ok(())
}

/// Starts a new session (the caller becomes its leader, away from any terminal's signals).
pub fn setsid() {
    // SAFETY: setsid takes no argument; failing (already a group leader) is harmless.
    unsafe { libc::setsid() };
}

fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it in place.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks `signals` and returns a close-on-exec signalfd that reads them.
pub fn signalfd(signals: &[i32]) -> io::Result<OwnedFd> {
    let set = sigset(signals);
    // SAFETY: set is initialised; the old mask is not wanted (null).
    cvt(unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) })?;
    // SAFETY: -1 asks for a new fd; set is valid.
    let fd = cvt(unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) })?;
    // SAFETY: signalfd just created this fd; we own it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Blocks until a signal arrives on `fd` (from [`signalfd`]); returns its number.
pub fn read_signal(fd: &OwnedFd) -> io::Result<i32> {
    // SAFETY: signalfd_siginfo is plain data.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    loop {
        // SAFETY: info is valid for `size` bytes.
        let n = unsafe { libc::read(fd.as_raw_fd(), (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
        if n == size as isize {
            return Ok(info.ssi_signo as i32);
        }
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        return Err(if n < 0 { io::Error::last_os_error() } else { io::Error::from(io::ErrorKind::UnexpectedEof) });
    }
}

/// Reaps one exited child without blocking: `Some((pid, wait status))`, or `None` if no child
/// has exited (or there are no children).
pub fn reap_any() -> Option<(i32, i32)> {
    let mut status = 0;
    // SAFETY: status is a valid i32; WNOHANG makes this non-blocking.
    let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    (r > 0).then_some((r, status))
}

/// Reaps child `pid` if it has ended: `Ok(Some(wait status))`, `Ok(None)` while it runs, and an
/// error (ECHILD) when it is not a child of this process.
pub fn try_reap_child(pid: i32) -> io::Result<Option<i32>> {
    let mut status = 0;
    // SAFETY: status is a valid i32; WNOHANG makes this non-blocking.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    match r {
        _ if r == pid => Ok(Some(status)),
        0 => Ok(None),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Waits (blocking) for child `pid`; returns its wait status.
pub fn wait_pid(pid: i32) -> io::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid i32.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(status);
        }
        if r < 0 && errno() != libc::EINTR {
            return Err(io::Error::last_os_error());
        }
    }
}

/// Waits up to `timeout_ms` for `fd` to become readable (or hung up). False on timeout.
pub fn poll_readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    loop {
        // SAFETY: p is one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        if n >= 0 {
            return Ok(n > 0);
        }
        if errno() != libc::EINTR {
            return Err(io::Error::last_os_error());
        }
    }
}

/// Waits up to `timeout_ms` (-1: no limit) until `a` or `b` is readable (or at EOF); says which.
pub fn poll_either(a: BorrowedFd<'_>, b: BorrowedFd<'_>, timeout_ms: i32) -> io::Result<(bool, bool)> {
    let mut p = [
        libc::pollfd { fd: a.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: b.as_raw_fd(), events: libc::POLLIN, revents: 0 },
    ];
    loop {
        // SAFETY: p is an array of two valid pollfds.
        let n = unsafe { libc::poll(p.as_mut_ptr(), 2, timeout_ms) };
        if n >= 0 {
            return Ok((p[0].revents != 0, p[1].revents != 0));
        }
        if errno() != libc::EINTR {
            return Err(io::Error::last_os_error());
        }
    }
}

/// Which step of the child failed before its program ran, as reported through the error pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildStep {
    /// `chdir` to the working directory.
    Chdir,
    /// Joining the namespaces (`setns`).
    Setns,
    /// Creating the process inside the namespaces and the cgroup (`clone3`).
    Clone,
    /// `execve` of the program.
    Exec,
}

impl ChildStep {
    fn code(self) -> i32 {
        match self {
            ChildStep::Chdir => 1,
            ChildStep::Setns => 2,
            ChildStep::Clone => 3,
            ChildStep::Exec => 4,
        }
    }

    fn from_code(c: i32) -> Self {
        match c {
            1 => ChildStep::Chdir,
            2 => ChildStep::Setns,
            3 => ChildStep::Clone,
            _ => ChildStep::Exec,
        }
    }
}

/// The program of a command to run: everything prepared before the fork.
pub struct Program<'a> {
    /// Absolute path of the program.
    pub path: &'a CStr,
    /// argv (argv[0] included).
    pub argv: &'a [CString],
    /// Environment.
    pub envp: &'a [CString],
}

/// Reports `(step, errno)` on the error pipe and exits 127. Raw syscalls only.
fn child_fail(pipe: RawFd, step: ChildStep) -> ! {
    let msg = [step.code(), errno()];
    // SAFETY: msg is 8 valid bytes; write/_exit take integers otherwise.
    unsafe {
        libc::write(pipe, msg.as_ptr().cast(), 8);
        libc::_exit(127)
    }
}

/// Reads the error pipe after the child closed it (by exec or exit): `Err` names the step.
fn read_child_error(r: OwnedFd) -> Result<(), (ChildStep, io::Error)> {
    use std::io::Read;
    let mut buf = [0u8; 8];
    let mut f = std::fs::File::from(r);
    let mut got = 0;
    while got < 8 {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err((ChildStep::Exec, e)),
        }
    }
    if got < 8 {
        return Ok(());
    }
    let step = i32::from_ne_bytes(buf[..4].try_into().expect("4 bytes"));
    let err = i32::from_ne_bytes(buf[4..].try_into().expect("4 bytes"));
    Err((ChildStep::from_code(step), io::Error::from_raw_os_error(err)))
}

/// Forks and runs `prog` in `cwd`, with stdin from `stdin` and stdout+stderr to `out`, no
/// blocked signals, in its own process group, and no other fd. Returns the child's pid once the
/// program runs; if `chdir` or `execve` fails, reaps the child and says which step failed.
pub fn fork_exec(
    prog: &Program<'_>,
    cwd: &CStr,
    stdin: BorrowedFd<'_>,
    out: BorrowedFd<'_>,
) -> Result<i32, (ChildStep, io::Error)> {
    let (r, w) = pipe().map_err(|e| (ChildStep::Clone, e))?;
    let argv = ptrs(prog.argv);
    let envp = ptrs(prog.envp);
    let args = CloneArgs { exit_signal: libc::SIGCHLD as u64, ..Default::default() };
    let rc = clone3(&args);
    if rc == 0 {
        let wfd = w.as_raw_fd();
        // SAFETY: raw syscalls on integers and on memory prepared before the clone.
        unsafe {
            let empty = sigset(&[]);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::setpgid(0, 0);
            libc::dup2(stdin.as_raw_fd(), 0);
            libc::dup2(out.as_raw_fd(), 1);
            libc::dup2(out.as_raw_fd(), 2);
            if libc::chdir(cwd.as_ptr()) < 0 {
                child_fail(wfd, ChildStep::Chdir);
            }
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
            libc::execve(prog.path.as_ptr(), argv.as_ptr(), envp.as_ptr());
            child_fail(wfd, ChildStep::Exec);
        }
    }
    if rc < 0 {
        return Err((ChildStep::Clone, io::Error::last_os_error()));
    }
    drop(w);
    let pid = rc as i32;
    match read_child_error(r) {
        Ok(()) => Ok(pid),
        Err(e) => {
            let _ = wait_pid(pid);
            Err(e)
        }
    }
}

/// Runs `prog` inside the namespaces of the process behind `pidfd` (all of `ns_flags`, joined
/// with one `setns`), in the cgroup v2 `cgroup` and the cgroups v1 whose `cgroup.procs` files are
/// open as `v1_procs`, with this process's fds 0-2, and waits for it.
///
/// Two children: the first joins the namespaces (a PID namespace applies to children only), the
/// second is created by it with `CLONE_INTO_CGROUP` and execs `prog`; the first waits for it and
/// exits with its exit code (128+signal if killed). Returns that code.
pub fn run_in_namespaces(
    pidfd: BorrowedFd<'_>,
    ns_flags: i32,
    cgroup: BorrowedFd<'_>,
    v1_procs: &[BorrowedFd<'_>],
    prog: &Program<'_>,
) -> Result<i32, (ChildStep, io::Error)> {
    let (r, w) = pipe().map_err(|e| (ChildStep::Clone, e))?;
    let argv = ptrs(prog.argv);
    let envp = ptrs(prog.envp);
    let outer = CloneArgs { exit_signal: libc::SIGCHLD as u64, ..Default::default() };
    let inner = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..Default::default()
    };
    let rc = clone3(&outer);
    if rc == 0 {
        let wfd = w.as_raw_fd();
        // SAFETY: raw syscalls on integers and on memory prepared before the clone.
        unsafe {
            // "0" moves the writer itself into a v1 cgroup; its child inherits it.
            for fd in v1_procs {
                if libc::write(fd.as_raw_fd(), c"0".as_ptr().cast(), 1) < 0 {
                    child_fail(wfd, ChildStep::Clone);
                }
            }
            if libc::setns(pidfd.as_raw_fd(), ns_flags) < 0 {
                child_fail(wfd, ChildStep::Setns);
            }
            let pid = clone3(&inner);
            if pid == 0 {
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC);
                libc::execve(prog.path.as_ptr(), argv.as_ptr(), envp.as_ptr());
                child_fail(wfd, ChildStep::Exec);
            }
            if pid < 0 {
                child_fail(wfd, ChildStep::Clone);
            }
            libc::close(wfd);
            let mut status = 0;
            loop {
                let r = libc::waitpid(pid as i32, &mut status, 0);
                if r == pid as i32 {
                    break;
                }
                if r < 0 && errno() != libc::EINTR {
                    libc::_exit(127);
                }
            }
            let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
            libc::_exit(code);
        }
    }
    if rc < 0 {
        return Err((ChildStep::Clone, io::Error::last_os_error()));
    }
    drop(w);
    let pid = rc as i32;
    let reported = read_child_error(r);
    let status = wait_pid(pid).map_err(|e| (ChildStep::Clone, e))?;
    reported?;
    Ok(if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) })
}

/// Runs `cmd` with its process joined to the network namespace `netns` (an fd of
/// `/proc/PID/ns/net`) before exec; returns its output.
pub fn command_in_netns(cmd: &mut std::process::Command, netns: &OwnedFd) -> io::Result<std::process::Output> {
    use std::os::unix::process::CommandExt;
    let fd = netns.as_raw_fd();
    // SAFETY: the hook runs in the forked child before exec and calls only setns, which is
    // async-signal-safe; `fd` stays open in the child (it is inherited, close-on-exec).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    };
    cmd.output()
}

/// An exclusive `flock` on `file`, released when the file is closed.
pub fn flock_exclusive(file: &std::fs::File) -> io::Result<()> {
    loop {
        // SAFETY: flock takes integers.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        if errno() != libc::EINTR {
            return Err(io::Error::last_os_error());
        }
    }
}


/// Runs `f` on a short-lived thread that first joined the namespaces `ns` (descriptors of
/// `/proc/PID/ns/*` files, each with its `CLONE_NEW*` type) and, with `copy_mounts`, then made
/// itself a private copy of the mount namespace it joined (whatever `f` mounts or unmounts there
/// reaches no other namespace). Joining a mount namespace resets the thread's root and working
/// directory to that namespace's root.
pub fn in_namespaces<T: Send>(ns: &[(BorrowedFd<'_>, i32)], copy_mounts: bool, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            if copy_mounts || ns.iter().any(|(_, t)| *t == libc::CLONE_NEWNS) {
                // SAFETY: unshare on this thread only (a mount namespace can be joined only by a
                // thread that shares its root and working directory with no other).
                cvt(unsafe { libc::unshare(libc::CLONE_FS) })?;
            }
            for (fd, t) in ns {
                // SAFETY: setns on this thread only; the descriptor is valid.
                cvt(unsafe { libc::setns(fd.as_raw_fd(), *t) })?;
            }
            if copy_mounts {
                // SAFETY: unshare on this thread only.
                cvt(unsafe { libc::unshare(libc::CLONE_NEWNS) })?;
                super::mount::make_all_private()?;
            }
            f()
        })
        .join()
        .map_err(|_| io::Error::other("namespace thread panicked"))?
    })
}

/// The time of clock `clock` (`CLOCK_MONOTONIC`, `CLOCK_BOOTTIME`...) as the caller sees it
/// (in its time namespace), ns.
pub fn clock_ns(clock: libc::clockid_t) -> io::Result<i64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec for clock_gettime to fill.
    cvt(unsafe { libc::clock_gettime(clock, &mut ts) })?;
    Ok(ts.tv_sec * 1_000_000_000 + ts.tv_nsec)
}

/// Makes a new time namespace for the caller's children to come (`unshare(CLONE_NEWTIME)`):
/// its offsets are the caller's namespace's until written to `/proc/self/timens_offsets`,
/// which the kernel allows only before any process is in it.
pub fn unshare_time() -> io::Result<()> {
    // SAFETY: unshare takes an integer; it changes only this process's namespaces.
    cvt(unsafe { libc::unshare(libc::CLONE_NEWTIME) })?;
    Ok(())
}

/// Moves the caller into the time namespace its children go to (`setns` on
/// `/proc/self/ns/time_for_children`), so that it and every process it starts see the same
/// clocks. The caller must have a single thread.
pub fn enter_time_for_children() -> io::Result<()> {
    let ns = std::fs::File::open("/proc/self/ns/time_for_children")?;
    // SAFETY: setns on a valid namespace descriptor, for this (single-threaded) process.
    cvt(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWTIME) })?;
    Ok(())
}

/// The inode of the network namespace socket `sock` belongs to (`SIOCGSKNS`).
pub fn socket_netns(sock: BorrowedFd<'_>) -> io::Result<u64> {
    const SIOCGSKNS: libc::c_ulong = 0x894C;
    // SAFETY: SIOCGSKNS takes no argument and returns a new descriptor.
    let fd = cvt(unsafe { libc::ioctl(sock.as_raw_fd(), SIOCGSKNS) })?;
    // SAFETY: the ioctl just created this descriptor; we own it.
    let ns = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    use std::os::unix::fs::MetadataExt;
    Ok(ns.metadata()?.ino())
}

#[cfg(test)]
mod tests {
    use super::devpts_options;

    #[test]
    fn devpts_options_come_from_the_last_devpts_on_dev_pts() {
        let info = "24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=1k,mode=755\n\
                    26 24 0:24 / /dev/pts rw,relatime - devpts devpts rw,gid=5,mode=620,ptmxmode=000\n\
                    29 26 0:26 / /dev/pts rw,relatime - devpts devpts rw,mode=600,ptmxmode=000\n";
        assert_eq!(devpts_options(info), "mode=600");
        assert_eq!(devpts_options(&info.lines().take(2).collect::<Vec<_>>().join("\n")), "gid=5,mode=620");
        assert_eq!(devpts_options("24 27 0:6 / /dev rw - devtmpfs devtmpfs rw\n"), "");
    }
}
