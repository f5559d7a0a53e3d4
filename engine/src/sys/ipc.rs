//! System V IPC objects of another IPC namespace: a short-lived thread joins the namespace
//! (`setns(CLONE_NEWIPC)` is per thread) and reads or creates shared memory segments and
//! semaphore sets there with the ordinary calls.
use std::io;
use std::os::fd::AsRawFd;

fn check(rc: i64) -> io::Result<i64> {
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// Runs `f` on a thread that has joined the IPC namespace of process `pid`.
pub fn in_ipc_ns<T: Send>(pid: i32, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/ipc"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this scoped thread only; the fd is valid.
            check(i64::from(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWIPC) }))?;
            f()
        })
        .join()
        .map_err(|_| io::Error::other("IPC namespace thread panicked"))?
    })
}

/// Copies the contents (`size` bytes) of shared memory segment `shmid`.
pub fn shm_read(shmid: i32, size: usize) -> io::Result<Vec<u8>> {
    // SAFETY: shmat maps the segment read-only at an address the kernel picks.
    let p = unsafe { libc::shmat(shmid, std::ptr::null(), libc::SHM_RDONLY) };
    if p as isize == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the mapping is `size` bytes long (the segment's size) and readable until shmdt.
    let data = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), size) }.to_vec();
    // SAFETY: p is the address shmat returned.
    unsafe { libc::shmdt(p) };
    Ok(data)
}

/// Makes the next segment or set created get id `id` (`kind` is "shm" or "sem").
pub fn set_next_id(kind: &str, id: i32) -> io::Result<()> {
    std::fs::write(format!("/proc/sys/kernel/{kind}_next_id"), id.to_string())
}

/// Creates a shared memory segment and fills it with `data` (the rest stays zero).
pub fn shm_create(key: i32, size: usize, mode: u32, data: &[u8]) -> io::Result<i32> {
    // SAFETY: shmget takes integers.
    let id = check(i64::from(unsafe { libc::shmget(key, size, libc::IPC_CREAT | libc::IPC_EXCL | (mode & 0o777) as i32) }))? as i32;
    // SAFETY: shmat maps the new segment read-write at an address the kernel picks.
    let p = unsafe { libc::shmat(id, std::ptr::null(), 0) };
    if p as isize == -1 {
        return Err(io::Error::last_os_error());
    }
    let n = data.len().min(size);
    // SAFETY: the mapping is at least `size` bytes and writable; `data` has `n` bytes.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p.cast::<u8>(), n) };
    // SAFETY: p is the address shmat returned.
    unsafe { libc::shmdt(p) };
    Ok(id)
}

/// Sets the owner and mode of segment `shmid`.
pub fn shm_set_owner(shmid: i32, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
    // SAFETY: shmid_ds is plain data; IPC_STAT fills it, IPC_SET reads it.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: ds is a valid shmid_ds.
    check(i64::from(unsafe { libc::shmctl(shmid, libc::IPC_STAT, &mut ds) }))?;
    ds.shm_perm.uid = uid;
    ds.shm_perm.gid = gid;
    ds.shm_perm.mode = (mode & 0o777) as _;
    // SAFETY: as above.
    check(i64::from(unsafe { libc::shmctl(shmid, libc::IPC_SET, &mut ds) }))?;
    Ok(())
}

/// Marks segment `shmid` for removal (it goes when its last user detaches).
pub fn shm_remove(shmid: i32) -> io::Result<()> {
    // SAFETY: IPC_RMID takes no buffer.
    check(i64::from(unsafe { libc::shmctl(shmid, libc::IPC_RMID, std::ptr::null_mut()) }))?;
    Ok(())
}

/// The values of the `nsems` semaphores of set `semid`.
pub fn sem_getall(semid: i32, nsems: usize) -> io::Result<Vec<u16>> {
    let mut vals = vec![0u16; nsems];
    // SAFETY: GETALL writes nsems u16 values into the array.
    check(i64::from(unsafe { libc::semctl(semid, 0, libc::GETALL, vals.as_mut_ptr()) }))?;
    Ok(vals)
}

/// Creates a semaphore set with `vals`, owned by uid/gid with `mode`.
pub fn sem_create(key: i32, vals: &[u16], uid: u32, gid: u32, mode: u32) -> io::Result<i32> {
    // SAFETY: semget takes integers.
    let id = check(i64::from(unsafe {
        libc::semget(key, vals.len() as i32, libc::IPC_CREAT | libc::IPC_EXCL | (mode & 0o777) as i32)
    }))? as i32;
    // SAFETY: SETALL reads nsems u16 values from the array.
    check(i64::from(unsafe { libc::semctl(id, 0, libc::SETALL, vals.as_ptr()) }))?;
    // SAFETY: semid_ds is plain data; IPC_STAT fills it, IPC_SET reads it.
    let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: ds is a valid semid_ds.
    check(i64::from(unsafe { libc::semctl(id, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds) }))?;
    ds.sem_perm.uid = uid;
    ds.sem_perm.gid = gid;
    ds.sem_perm.mode = (mode & 0o777) as _;
    // SAFETY: as above.
    check(i64::from(unsafe { libc::semctl(id, 0, libc::IPC_SET, &mut ds as *mut libc::semid_ds) }))?;
    Ok(id)
}

/// A System V message queue's `msqid_ds` fields Zap keeps: (uid, gid, mode, msg_qbytes,
/// msg_cbytes).
pub fn msg_stat(msqid: i32) -> io::Result<(u32, u32, u32, u64, u64)> {
    // SAFETY: msqid_ds is plain data; IPC_STAT fills it.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: ds is a valid msqid_ds.
    check(i64::from(unsafe { libc::msgctl(msqid, libc::IPC_STAT, &mut ds) }))?;
    Ok((ds.msg_perm.uid, ds.msg_perm.gid, u32::from(ds.msg_perm.mode), ds.msg_qbytes as u64, ds.__msg_cbytes as u64))
}

const MSG_COPY: i32 = 0o40000;

/// Message number `index` (0: the oldest) of queue `msqid`, copied without taking it out
/// (`MSG_COPY`, which needs CONFIG_CHECKPOINT_RESTORE): its type and bytes. `max` is the largest
/// size it can have.
pub fn msg_copy(msqid: i32, index: usize, max: usize) -> io::Result<(i64, Vec<u8>)> {
    let mut buf = vec![0u8; 8 + max];
    // SAFETY: buf holds a long (mtype) and `max` bytes of text; MSG_COPY | IPC_NOWAIT copies the
    // message at position `index` into it without dequeuing it.
    let n = check(unsafe {
        libc::msgrcv(msqid, buf.as_mut_ptr().cast(), max, index as libc::c_long, MSG_COPY | libc::IPC_NOWAIT) as i64
    })? as usize;
    let mtype = i64::from_ne_bytes(buf[..8].try_into().expect("8 bytes"));
    buf.drain(..8);
    buf.truncate(n);
    Ok((mtype, buf))
}

/// Creates a System V message queue with key `key` and mode `mode` (the id is the one
/// `msg_next_id` says).
pub fn msg_create(key: i32, mode: u32) -> io::Result<i32> {
    // SAFETY: msgget takes integers.
    Ok(check(i64::from(unsafe { libc::msgget(key, libc::IPC_CREAT | libc::IPC_EXCL | (mode & 0o777) as i32) }))? as i32)
}

/// Sets the owner, mode and byte limit of queue `msqid`.
pub fn msg_set(msqid: i32, uid: u32, gid: u32, mode: u32, qbytes: u64) -> io::Result<()> {
    // SAFETY: msqid_ds is plain data; IPC_STAT fills it, IPC_SET reads it.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: ds is a valid msqid_ds.
    check(i64::from(unsafe { libc::msgctl(msqid, libc::IPC_STAT, &mut ds) }))?;
    ds.msg_perm.uid = uid;
    ds.msg_perm.gid = gid;
    ds.msg_perm.mode = (mode & 0o777) as _;
    ds.msg_qbytes = qbytes as _;
    // SAFETY: as above.
    check(i64::from(unsafe { libc::msgctl(msqid, libc::IPC_SET, &mut ds) }))?;
    Ok(())
}

/// Appends a message of type `mtype` to queue `msqid` (never waits).
pub fn msg_send(msqid: i32, mtype: i64, text: &[u8]) -> io::Result<()> {
    let mut buf = mtype.to_ne_bytes().to_vec();
    buf.extend_from_slice(text);
    // SAFETY: buf holds a long and text.len() bytes of text.
    check(i64::from(unsafe { libc::msgsnd(msqid, buf.as_ptr().cast(), text.len(), libc::IPC_NOWAIT) }))?;
    Ok(())
}

/// `struct mq_attr`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct MqAttr {
    /// Flags (O_NONBLOCK).
    pub flags: i64,
    /// Most messages.
    pub maxmsg: i64,
    /// Largest message.
    pub msgsize: i64,
    /// Messages queued.
    pub curmsgs: i64,
    reserved: [i64; 4],
}

/// The attributes of the POSIX message queue open on `fd`.
pub fn mq_getattr(fd: &impl AsRawFd) -> io::Result<MqAttr> {
    let mut a = MqAttr::default();
    // SAFETY: a is a valid mq_attr for the kernel to fill; no new attributes are set.
    check(unsafe { libc::syscall(libc::SYS_mq_getsetattr, fd.as_raw_fd(), std::ptr::null::<MqAttr>(), &mut a as *mut MqAttr) })?;
    Ok(a)
}

/// Takes the first message (highest priority, oldest first) out of the queue open on `fd`
/// without waiting: its bytes and priority; `None` when the queue is empty.
pub fn mq_take(fd: &impl AsRawFd, msgsize: usize) -> io::Result<Option<(Vec<u8>, u32)>> {
    let mut buf = vec![0u8; msgsize];
    let mut prio = 0u32;
    let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: buf has msgsize bytes; prio and the (already past) timeout are valid.
    let n = unsafe { libc::syscall(libc::SYS_mq_timedreceive, fd.as_raw_fd(), buf.as_mut_ptr(), msgsize, &mut prio as *mut u32, &zero) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::ETIMEDOUT)) { Ok(None) } else { Err(e) };
    }
    buf.truncate(n as usize);
    Ok(Some((buf, prio)))
}

/// Appends a message with priority `prio` to the queue open on `fd` without waiting.
pub fn mq_put(fd: &impl AsRawFd, data: &[u8], prio: u32) -> io::Result<()> {
    let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: data is valid for its length; the timeout is valid.
    check(unsafe { libc::syscall(libc::SYS_mq_timedsend, fd.as_raw_fd(), data.as_ptr(), data.len(), prio, &zero) })?;
    Ok(())
}

/// Creates POSIX message queue `name` (without its leading '/') in the IPC namespace of the
/// calling thread, with `mode` and room for `maxmsg` messages of `msgsize` bytes; returns it open
/// for writing.
pub fn mq_create(name: &str, mode: u32, maxmsg: i64, msgsize: i64) -> io::Result<std::os::fd::OwnedFd> {
    let c = std::ffi::CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "queue name with a NUL byte"))?;
    let attr = MqAttr { maxmsg, msgsize, ..Default::default() };
    // SAFETY: c is a C string, attr a valid mq_attr.
    let fd = check(unsafe {
        libc::syscall(libc::SYS_mq_open, c.as_ptr(), libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC, mode & 0o7777, &attr as *const MqAttr)
    })?;
    // SAFETY: the fd was just opened and is ours.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

/// Sets the owner and mode of the queue open on `fd` (mq_open's mode goes through the umask).
pub fn mq_set_owner(fd: &impl AsRawFd, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
    // SAFETY: fchown and fchmod take integers.
    check(i64::from(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) }))?;
    // SAFETY: as above.
    check(i64::from(unsafe { libc::fchmod(fd.as_raw_fd(), mode & 0o7777) }))?;
    Ok(())
}

/// The magic number of the mqueue file system (`statfs.f_type`).
pub const MQUEUE_MAGIC: i64 = 0x1980_0202;

/// True when `fd` is a file of the mqueue file system (a POSIX message queue).
pub fn is_mqueue(fd: &impl AsRawFd) -> io::Result<bool> {
    // SAFETY: statfs is plain data for the kernel to fill.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: s is valid.
    check(i64::from(unsafe { libc::fstatfs(fd.as_raw_fd(), &mut s) }))?;
    Ok(s.f_type as i64 == MQUEUE_MAGIC)
}
