//! Syscalls on other processes that need no ptrace stop.
use std::io;

/// A pidfd for process `pid` (closed on drop).
pub fn pidfd_open(pid: i32) -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: pidfd_open takes plain integers and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) })
}

/// A duplicate, in this process, of fd `target_fd` of the process behind `pidfd`.
pub fn pidfd_getfd(pidfd: &std::os::fd::OwnedFd, target_fd: i32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_getfd takes plain integers and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target_fd, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) })
}

/// Copies the bytes buffered in the pipe `src` without consuming them, as the reads a reader
/// would make: a packet (written to a packet-mode pipe, `O_DIRECT`) ends a read, so more than one
/// part means the pipe holds packets, each part ending with one.
pub fn pipe_peek(src: &std::os::fd::OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut fds = [0i32; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just created these fds; we take sole ownership.
    let (r, w) = unsafe { (std::fs::File::from_raw_fd(fds[0]), std::os::fd::OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: both fds are valid; F_GETPIPE_SZ/F_SETPIPE_SZ take integers.
    let size = unsafe { libc::fcntl(src.as_raw_fd(), libc::F_GETPIPE_SZ) };
    if size > 0 {
        // SAFETY: as above.
        unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
    }
    // SAFETY: tee between two valid pipe fds; no pointers. tee keeps each buffer's packet flag.
    let n = unsafe { libc::tee(src.as_raw_fd(), w.as_raw_fd(), usize::MAX >> 1, libc::SPLICE_F_NONBLOCK) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EAGAIN) {
            return Ok(Vec::new()); // empty pipe
        }
        return Err(e);
    }
    drop(w);
    let mut parts = Vec::new();
    let mut buf = vec![0u8; n as usize + 1];
    loop {
        let got = (&r).read(&mut buf)?;
        if got == 0 {
            return Ok(parts);
        }
        parts.push(buf[..got].to_vec());
    }
}

/// The buffer size of the pipe `fd`.
pub fn pipe_size(fd: &std::os::fd::OwnedFd) -> io::Result<i32> {
    use std::os::fd::AsRawFd;
    // SAFETY: F_GETPIPE_SZ takes no argument.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n)
}

/// True when processes `pid1` and `pid2` share the resource `kind` (`KCMP_VM` = 1: an address
/// space, `KCMP_FILES` = 2: an fd table).
pub fn share(pid1: i32, pid2: i32, kind: i32) -> io::Result<bool> {
    // SAFETY: kcmp takes plain integers.
    let rc = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, kind, 0, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc == 0)
}

/// How the open file description of fd `fd1` of `pid1` compares with that of fd `fd2` of `pid2`
/// in the order `kcmp(KCMP_FILE)` gives descriptions (an arbitrary total order, stable while both
/// are open): `Equal` when they are the same description.
pub fn file_order(pid1: i32, fd1: i32, pid2: i32, fd2: i32) -> io::Result<std::cmp::Ordering> {
    const KCMP_FILE: i32 = 0;
    // SAFETY: kcmp takes plain integers.
    let rc = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, KCMP_FILE, fd1, fd2) };
    match rc {
        0 => Ok(std::cmp::Ordering::Equal),
        1 => Ok(std::cmp::Ordering::Less),
        2 => Ok(std::cmp::Ordering::Greater),
        r if r < 0 => Err(io::Error::last_os_error()),
        r => Err(io::Error::other(format!("kcmp(KCMP_FILE) gave no order ({r})"))),
    }
}

/// True when fd `fd1` of `pid1` and fd `fd2` of `pid2` are the same open file description
/// (`kcmp(KCMP_FILE)`).
pub fn same_file(pid1: i32, fd1: i32, pid2: i32, fd2: i32) -> io::Result<bool> {
    const KCMP_FILE: i32 = 0;
    // SAFETY: kcmp takes plain integers.
    let rc = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, KCMP_FILE, fd1, fd2) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc == 0)
}

/// Reads the remote ranges `(address, length)` of process `pid` into `bufs` (one buffer of the
/// same length per range) with one `process_vm_readv`; returns the bytes read (short when a
/// range is unreadable: the caller falls back to /proc/PID/mem).
pub fn vm_read(pid: i32, remote: &[(u64, usize)], bufs: &mut [Vec<u8>]) -> io::Result<usize> {
    let local: Vec<libc::iovec> = bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
    let rem: Vec<libc::iovec> = remote.iter().map(|&(a, l)| libc::iovec { iov_base: a as *mut libc::c_void, iov_len: l }).collect();
    // SAFETY: each local iovec describes a live buffer of ours of the given length; the remote
    // iovecs are only addresses in the other process, checked by the kernel.
    let n = unsafe { libc::process_vm_readv(pid, local.as_ptr(), local.len() as _, rem.as_ptr(), rem.len() as _, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Reads the remote ranges `(address, length)` of process `pid`, back to back, into `local`
/// (at least as long as their sum) with one `process_vm_readv` (at most `IOV_MAX` ranges);
/// returns the bytes read, short when a range is unreadable.
pub fn vm_read_into(pid: i32, remote: &[(u64, usize)], local: &mut [u8]) -> io::Result<usize> {
    let want: usize = remote.iter().map(|&(_, l)| l).sum();
    assert!(want <= local.len() && remote.len() <= 1024, "vm_read_into: {want} bytes in {} ranges", remote.len());
    let liov = libc::iovec { iov_base: local.as_mut_ptr().cast(), iov_len: want };
    let rem: Vec<libc::iovec> = remote.iter().map(|&(a, l)| libc::iovec { iov_base: a as *mut libc::c_void, iov_len: l }).collect();
    // SAFETY: the local iovec lies inside `local`, a live buffer we hold mutably; the remote
    // iovecs are only addresses in the other process, checked by the kernel.
    let n = unsafe { libc::process_vm_readv(pid, &liov, 1, rem.as_ptr(), rem.len() as _, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Writes each `(remote address, bytes)` piece into process `pid` with `process_vm_writev`, at
/// most `IOV_MAX` pieces per call; returns the bytes written, short when a remote range is not
/// writable (a read-only mapping: the caller falls back to /proc/PID/mem from there).
pub fn vm_write(pid: i32, pieces: &[(u64, &[u8])]) -> io::Result<usize> {
    let mut done = 0usize;
    for batch in pieces.chunks(1024) {
        let local: Vec<libc::iovec> = batch.iter().map(|(_, b)| libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() }).collect();
        let rem: Vec<libc::iovec> = batch.iter().map(|&(a, b)| libc::iovec { iov_base: a as *mut libc::c_void, iov_len: b.len() }).collect();
        // SAFETY: every local iovec describes a live slice we hold (the kernel only reads it);
        // the remote iovecs are addresses in the other process, checked by the kernel.
        let n = unsafe { libc::process_vm_writev(pid, local.as_ptr(), local.len() as _, rem.as_ptr(), rem.len() as _, 0) };
        if n < 0 {
            return if done > 0 { Ok(done) } else { Err(io::Error::last_os_error()) };
        }
        done += n as usize;
        if (n as usize) < batch.iter().map(|(_, b)| b.len()).sum::<usize>() {
            break;
        }
    }
    Ok(done)
}

/// The path (in Zap's view) of the file an inotify watch of process `pid` names: its
/// filesystem's device `sdev` (kernel encoding, major << 20 | minor) and file handle. The handle
/// is opened (`open_by_handle_at`) relative to that filesystem's mount in `pid`'s mount table.
pub fn path_of_handle(pid: i32, sdev: u64, handle_type: i32, handle: &[u8]) -> io::Result<String> {
    use std::os::fd::AsRawFd;
    let (major, minor) = (sdev >> 20, sdev & 0xfffff);
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let mount = mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2)? == &format!("{major}:{minor}").as_str()).then(|| f.get(4).map(|m| m.to_string()))?
        })
        .next()
        .ok_or_else(|| io::Error::other(format!("no mount of device {major}:{minor}")))?;
    let dir = std::fs::File::open(format!("/proc/{pid}/root{mount}"))?;
    let mut fh = Vec::with_capacity(8 + handle.len());
    fh.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
    fh.extend_from_slice(&handle_type.to_ne_bytes());
    fh.extend_from_slice(handle);
    // SAFETY: `fh` is a struct file_handle (handle_bytes, handle_type, then that many bytes);
    // the kernel only reads it. The result is a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_by_handle_at, dir.as_raw_fd(), fh.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us.
    let file: std::os::fd::OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) };
    let path = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    Ok(path.to_string_lossy().into_owned())
}

/// The seals of a memfd (`F_GET_SEALS`).
pub fn memfd_seals(file: &std::fs::File) -> io::Result<u32> {
    use std::os::fd::AsRawFd;
    // SAFETY: F_GET_SEALS takes no argument.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as u32)
}

fn seek(file: &std::fs::File, pos: u64, whence: i32) -> io::Result<Option<u64>> {
    use std::os::fd::AsRawFd;
    // SAFETY: lseek takes plain integers.
    let rc = unsafe { libc::lseek64(file.as_raw_fd(), pos as i64, whence) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENXIO) { Ok(None) } else { Err(e) };
    }
    Ok(Some(rc as u64))
}

/// The first byte of data at or after `pos` (`SEEK_DATA`), or `None` when only a hole follows.
pub fn seek_data(file: &std::fs::File, pos: u64) -> io::Result<Option<u64>> {
    seek(file, pos, libc::SEEK_DATA)
}

/// The first byte of a hole at or after `pos` (`SEEK_HOLE`; the end of the file counts as one).
pub fn seek_hole(file: &std::fs::File, pos: u64) -> io::Result<u64> {
    Ok(seek(file, pos, libc::SEEK_HOLE)?.unwrap_or(pos))
}

/// The queued bytes of an fd (`FIONREAD`): unread inotify events, for one.
pub fn fionread(fd: &std::os::fd::OwnedFd) -> io::Result<i32> {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer, which points to `n`.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n)
}

/// True when the file at fd `fd` of `pid` is the file an epoll instance (fd `epfd` of `epid`)
/// watches under target fd number `tfd` (the `toff`-th watch with that number, in the order
/// fdinfo lists them) (`kcmp(KCMP_EPOLL_TFD)`).
pub fn is_epoll_target(pid: i32, fd: i32, epid: i32, epfd: i32, (tfd, toff): (i32, u32)) -> io::Result<bool> {
    const KCMP_EPOLL_TFD: i32 = 7;
    #[repr(C)]
    struct Slot {
        efd: u32,
        tfd: u32,
        toff: u32,
    }
    let slot = Slot { efd: epfd as u32, tfd: tfd as u32, toff };
    // SAFETY: kcmp only reads the slot, which lives for the call.
    let rc = unsafe { libc::syscall(libc::SYS_kcmp, pid, epid, KCMP_EPOLL_TFD, fd, &slot as *const Slot) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc == 0)
}

/// Reads the unread expirations of the timerfd `fd` and puts the same count back
/// (`TFD_IOC_SET_TICKS`), so the count is known without losing it; the read also moves a periodic
/// timer on to its next expiration, as the owner's next read would. The timerfd's owner must be
/// stopped. Returns the count (0 when none were due).
pub fn timerfd_count_ticks(fd: &std::os::fd::OwnedFd) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;
    let mut ticks = 0u64;
    // First make sure the count can be put back: TFD_IOC_SET_TICKS refuses 0 with EINVAL when
    // the kernel has it (CONFIG_CHECKPOINT_RESTORE) and ENOTTY when not.
    // SAFETY: TFD_IOC_SET_TICKS reads one u64 from the pointer.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TFD_IOC_SET_TICKS, &ticks) } == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        return Err(io::Error::other("the kernel cannot set timerfd expirations (TFD_IOC_SET_TICKS, CONFIG_CHECKPOINT_RESTORE)"));
    }
    // SAFETY: a timerfd reads exactly 8 bytes into `ticks`. MSG_DONTWAIT does not apply to
    // read, so a timerfd opened blocking is only read when fdinfo showed ticks due.
    let n = unsafe { libc::read(fd.as_raw_fd(), (&mut ticks as *mut u64).cast(), 8) };
    if n != 8 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::EAGAIN) { Ok(0) } else { Err(e) };
    }
    // SAFETY: TFD_IOC_SET_TICKS reads one u64 from the pointer.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TFD_IOC_SET_TICKS, &ticks) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ticks)
}

/// `ioctl(fd, request, buf)` for a request that fills `buf` (whose size must be the one the
/// request encodes or expects).
pub fn ioctl_get(fd: &std::os::fd::OwnedFd, request: libc::c_ulong, buf: &mut [u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the caller passes a buffer of the size the request writes; the kernel writes no more.
    if unsafe { libc::ioctl(fd.as_raw_fd(), request, buf.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `ioctl(fd, request, &int)` for a request that returns one int.
pub fn ioctl_int(fd: &std::os::fd::OwnedFd, request: libc::c_ulong) -> io::Result<i32> {
    let mut b = [0u8; 4];
    ioctl_get(fd, request, &mut b)?;
    Ok(i32::from_ne_bytes(b))
}

/// The signal owner of the open file description of `fd` (`F_GETOWN_EX`: kind and id, as this
/// process sees it, 0 for none) and its signal (`F_GETSIG`).
pub fn fd_owner(fd: &std::os::fd::OwnedFd) -> io::Result<(i32, i32, i32)> {
    use std::os::fd::AsRawFd;
    let mut owner = [0i32; 2];
    // SAFETY: F_GETOWN_EX (16) writes a struct f_owner_ex (two ints) to the pointer.
    if unsafe { libc::fcntl(fd.as_raw_fd(), 16, owner.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_GETSIG (11) takes no argument.
    let sig = unsafe { libc::fcntl(fd.as_raw_fd(), 11) };
    if sig < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((owner[0], owner[1], sig))
}

/// `sched_getattr` of thread `tid` (another process's thread: reading needs no privilege): the
/// raw `struct sched_attr` of `size` bytes.
pub fn sched_getattr(tid: i32, size: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; size];
    // SAFETY: `buf` has room for `size` bytes, which is the size we pass; flags are 0.
    let rc = unsafe { libc::syscall(libc::SYS_sched_getattr, tid, buf.as_mut_ptr(), size as u32, 0u32) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(buf)
}

/// The CPU affinity mask of thread `tid`, as many bytes as the kernel's cpumask.
pub fn sched_getaffinity(tid: i32) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 1024];
    // SAFETY: the raw syscall writes at most `buf.len()` bytes into `buf` and returns how many.
    let rc = unsafe { libc::syscall(libc::SYS_sched_getaffinity, tid, buf.len(), buf.as_mut_ptr()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(rc as usize);
    Ok(buf)
}

/// The I/O priority of thread `tid` (`ioprio_get(IOPRIO_WHO_PROCESS, tid)`).
pub fn ioprio_get(tid: i32) -> io::Result<u32> {
    const IOPRIO_WHO_PROCESS: i32 = 1;
    // SAFETY: ioprio_get takes integers.
    let rc = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, tid) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as u32)
}

/// Gives the calling thread the lowest CPU priority (nice 19) and the lowest best-effort I/O
/// priority, for background work that must not slow the processes it runs beside.
pub fn lower_own_priority() -> io::Result<()> {
    const IOPRIO_WHO_PROCESS: i32 = 1;
    const IOPRIO_CLASS_BE: i32 = 2;
    // SAFETY: setpriority takes integers; `who` 0 is the calling thread on Linux.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ioprio_set takes integers; `who` 0 is the calling thread.
    if unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, (IOPRIO_CLASS_BE << 13) | 7) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The nice value of thread `tid`, whatever its policy (the raw `getpriority` returns 20 - nice).
pub fn nice_of(tid: i32) -> io::Result<i32> {
    // SAFETY: getpriority takes integers.
    let rc = unsafe { libc::syscall(libc::SYS_getpriority, libc::PRIO_PROCESS, tid) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(20 - rc as i32)
}
