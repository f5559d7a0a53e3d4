//! The few raw syscalls the store needs, behind safe functions.
use std::fs::File;
use std::os::fd::AsRawFd;

/// Tightens the process umask so that every file and directory created from now on (ours and
/// RocksDB's) is owner-only. Memory images hold secrets.
pub fn tighten_umask() {
    // SAFETY: umask(2) only swaps the process's file-mode mask; it cannot fail or touch memory.
    let old = unsafe { libc::umask(0o077) };
    // SAFETY: as above; keep any bits the caller had set in addition to ours.
    unsafe { libc::umask(old | 0o077) };
}

/// Tries to take an exclusive advisory lock on `file` without blocking. `Ok(false)` when another
/// open file description holds it.
pub fn try_lock_exclusive(file: &File) -> std::io::Result<bool> {
    // SAFETY: flock(2) on a valid fd owned by `file` for the duration of the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// 64 random bits from the kernel, for pack and checkpoint ids.
pub fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`, which lives on this
        // stack frame for the whole call.
        let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            panic!("getrandom failed: {}", std::io::Error::last_os_error());
        }
    }
    u64::from_le_bytes(buf)
}

/// Starts writing back `len` bytes of `file` from `offset` to the disk without waiting for
/// them (`sync_file_range(SYNC_FILE_RANGE_WRITE)`), so that the fsync that makes them durable
/// later has little left to do. Durability still comes from that fsync alone.
pub fn start_writeback(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: sync_file_range(2) on a valid fd owned by `file`; it touches no memory of ours.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, libc::SYNC_FILE_RANGE_WRITE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
