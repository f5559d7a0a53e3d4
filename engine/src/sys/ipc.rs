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
