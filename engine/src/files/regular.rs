//! Descriptors that name a file: regular files and directories (reopened by path and seeked),
//! character devices (reopened by path), and files deleted while open, `O_TMPFILE` files and
//! memfds, whose contents are saved (at most [`DELETED_FILE_LIMIT`] bytes) and restored into an
//! unnamed file in the same directory (or /tmp), or a memfd of the same name with the same seals.
use std::collections::HashMap;
use std::os::fd::OwnedFd;

use super::{FdKind, FdState};
use crate::inject::Injector;
use crate::sys::proc as sysproc;
use crate::{EngineError, Result};

/// The largest deleted-but-open file a checkpoint keeps (its bytes go into the image state).
pub const DELETED_FILE_LIMIT: u64 = 64 << 20;

fn pos_of(info: &HashMap<String, String>) -> u64 {
    info.get("pos").and_then(|p| p.parse().ok()).unwrap_or(0)
}

/// Saves fd `fd` of `pid` whose link `target` is an absolute path that exists: a regular file,
/// directory, character device or FIFO.
pub(super) fn save_path(
    pid: i32,
    fd: i32,
    target: &str,
    info: &HashMap<String, String>,
    pidfd: &OwnedFd,
    ctx: &mut super::SaveContext,
) -> Result<FdKind> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    // The path as the process sees it (its root, its mount namespace).
    let meta = std::fs::metadata(format!("/proc/{pid}/root{target}")).map_err(|e| EngineError::io("stat fd target", target.as_ref(), e))?;
    let ft = meta.file_type();
    if ft.is_file() || ft.is_dir() {
        Ok(FdKind::Path { path: target.to_string(), pos: pos_of(info) })
    } else if ft.is_char_device() {
        Ok(FdKind::CharDev { path: target.to_string() })
    } else if ft.is_fifo() {
        super::pipes::save_fifo(pid, fd, target, meta.ino(), pidfd, ctx)
    } else {
        Err(super::unsupported(pid, fd, "special file", target))
    }
}

/// Saves fd `fd` of `pid`, a file deleted while open (or a memfd) once at `path`: its contents.
pub(super) fn save_deleted(pid: i32, fd: i32, path: &str, info: &HashMap<String, String>, pidfd: &OwnedFd) -> Result<FdKind> {
    let target = format!("{path} (deleted)");
    let dup = sysproc::pidfd_getfd(pidfd, fd).map_err(|source| EngineError::Sys { step: "pidfd_getfd deleted file", pid, source })?;
    let file = std::fs::File::from(dup);
    let meta = file.metadata().map_err(|e| EngineError::io("stat deleted file", path.as_ref(), e))?;
    if !meta.is_file() {
        return Err(super::unsupported(pid, fd, "deleted special file", &target));
    }
    if meta.len() > DELETED_FILE_LIMIT {
        let what = format!("deleted file of {} bytes (the limit is {DELETED_FILE_LIMIT})", meta.len());
        return Err(super::unsupported(pid, fd, &what, &target));
    }
    let mut data = vec![0u8; meta.len() as usize];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut data, 0).map_err(|e| EngineError::io("read deleted file", path.as_ref(), e))?;
    let memfd_seals = path
        .starts_with("/memfd:")
        .then(|| sysproc::memfd_seals(&file))
        .transpose()
        .map_err(|source| EngineError::Sys { step: "F_GET_SEALS", pid, source })?;
    Ok(FdKind::Deleted { path: path.to_string(), pos: pos_of(info), data, memfd_seals })
}

/// Recreates a deleted file or memfd (`FdKind::Deleted`) in the process `inj` drives; returns
/// the new fd.
pub(super) fn restore_deleted(
    inj: &mut Injector,
    vpid: i32,
    st: &FdState,
    (path, pos, data, memfd_seals): (&str, u64, &[u8], Option<u32>),
) -> Result<u64> {
    let dir = std::path::Path::new(path).parent().and_then(|d| d.to_str()).unwrap_or("/tmp").to_string();
    let tmpfile = (libc::O_TMPFILE | libc::O_RDWR) as u64;
    let mut fd = None;
    if let (Some(name), Some(_)) = (path.strip_prefix("/memfd:"), memfd_seals) {
        let scratch = inj.put_cstr(name.as_bytes())?;
        let flags = libc::MFD_ALLOW_SEALING as u64;
        fd = Some(inj.call("memfd_create", libc::SYS_memfd_create, [scratch, flags, 0, 0, 0, 0])?);
    }
    for d in [dir.as_str(), "/tmp"].into_iter().filter(|_| fd.is_none()) {
        let scratch = inj.put_cstr(d.as_bytes())?;
        let rc = inj.syscall(libc::SYS_open, [scratch, tmpfile, 0o600, 0, 0, 0])?;
        if rc >= 0 {
            fd = Some(rc as u64);
            break;
        }
    }
    let fd = fd.ok_or_else(|| EngineError::Proc { pid: vpid, detail: format!("fd {}: no unnamed file for deleted {path}", st.fd) })?;
    let scratch = inj.scratch((data.len() as u64).min(4 << 20) + 8192)?;
    let mut done = 0usize;
    while done < data.len() {
        let n = (data.len() - done).min(4 << 20);
        inj.write_mem(scratch, &data[done..done + n])?;
        let w = inj.call("write deleted file", libc::SYS_pwrite64, [fd, scratch, n as u64, done as u64, 0, 0])?;
        done += w as usize;
    }
    inj.call("lseek", libc::SYS_lseek, [fd, pos, libc::SEEK_SET as u64, 0, 0, 0])?;
    if let Some(seals) = memfd_seals.filter(|s| *s != 0) {
        inj.call("fcntl(F_ADD_SEALS)", libc::SYS_fcntl, [fd, libc::F_ADD_SEALS as u64, u64::from(seals), 0, 0, 0])?;
    }
    let status = st.flags & (libc::O_APPEND | libc::O_NONBLOCK) as u32;
    inj.call("fcntl(F_SETFL)", libc::SYS_fcntl, [fd, libc::F_SETFL as u64, u64::from(status), 0, 0, 0])?;
    Ok(fd)
}
