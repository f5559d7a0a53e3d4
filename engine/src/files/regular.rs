//! Descriptors that name a file: regular files and directories (reopened by path and seeked),
//! character devices (reopened by path, when [`super::devices`] finds they keep no state per
//! open file), `O_PATH` descriptors of any file (reopened by path),
//! directories deleted while open (recreated and removed again), and files deleted while open,
//! `O_TMPFILE` files and memfds, whose contents are saved (at most [`DELETED_FILE_LIMIT`] bytes
//! of data; holes, found with `SEEK_DATA`/`SEEK_HOLE`, stay holes) and restored into an unnamed
//! file in the same directory (or /tmp), or a memfd of the same name with the same seals.
//!
//! A path that leads to another file than the one open (device and inode differ: something was
//! mounted over it) is refused rather than reopened, as is a file deleted at its path but still
//! linked elsewhere (its other name would be cut off from the copy), and `memfd_secret` memory.
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

use serde::{Deserialize, Serialize};

use super::{FdKind, FdState};
use crate::inject::Injector;
use crate::sys::proc as sysproc;
use crate::{EngineError, Result};

/// The most data (bytes outside holes) of a deleted-but-open file a checkpoint keeps (its bytes
/// are held in memory while the checkpoint is taken, then go into the chunk store).
pub const DELETED_FILE_LIMIT: u64 = 4 << 30;

fn pos_of(info: &HashMap<String, String>) -> u64 {
    info.get("pos").and_then(|p| p.parse().ok()).unwrap_or(0)
}

/// Saves fd `fd` of `pid` whose link `target` is an absolute path that exists: a regular file,
/// directory, character device or FIFO. The path is looked up in the process's own view of the
/// filesystem and must still lead to the open file.
pub(super) fn save_path(
    pid: i32,
    fd: i32,
    target: &str,
    info: &HashMap<String, String>,
    pidfd: &OwnedFd,
    ctx: &mut super::SaveContext,
) -> Result<FdKind> {
    use std::os::unix::fs::FileTypeExt;
    let dup = sysproc::pidfd_getfd(pidfd, fd).map_err(|source| EngineError::Sys { step: "pidfd_getfd file", pid, source })?;
    if crate::sys::ipc::is_mqueue(&dup).map_err(|source| EngineError::Sys { step: "fstatfs", pid, source })? {
        return mqueue(target);
    }
    let file = std::fs::File::from(dup);
    let open = file.metadata().map_err(|e| EngineError::io("stat open file", target.as_ref(), e))?;
    let seen = super::seen_by(pid, target);
    let at_path = std::fs::metadata(&seen).map_err(|e| EngineError::io("stat fd target", target.as_ref(), e))?;
    if (open.dev(), open.ino()) != (at_path.dev(), at_path.ino()) {
        let what = format!(
            "file whose path now leads to another file (open: device {:#x} inode {}, at the path: device {:#x} inode {})",
            open.dev(),
            open.ino(),
            at_path.dev(),
            at_path.ino()
        );
        return Err(super::unsupported(pid, fd, &what, target));
    }
    let ft = open.file_type();
    if ft.is_file() || ft.is_dir() {
        Ok(FdKind::Path { path: target.to_string(), pos: pos_of(info) })
    } else if ft.is_char_device() {
        super::devices::check(pid, fd, target, open.rdev(), super::fd_flags(info), &OwnedFd::from(file))?;
        Ok(FdKind::CharDev { path: target.to_string() })
    } else if ft.is_fifo() {
        let write_only = super::fd_flags(info) & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32;
        super::pipes::save_fifo(pid, fd, (target, false, write_only), (open.dev(), open.ino()), pidfd, ctx)
    } else {
        Err(super::unsupported(pid, fd, "special file", target))
    }
}

/// A descriptor of a POSIX message queue (a file of an mqueue file system, opened with
/// `mq_open` or through a mount of it): reopened by its name in the process's IPC namespace,
/// where the queue itself is saved with its messages ([`crate::ipc`]; a `--pid` or `--tree`
/// checkpoint saves only the descriptor, as for a file).
fn mqueue(target: &str) -> Result<FdKind> {
    let name = target.rsplit('/').next().unwrap_or_default().to_string();
    Ok(FdKind::Mqueue { name })
}

/// Saves fd `fd` of `pid`, a file deleted while open (or a memfd) once at `path`: its contents
/// (data ranges only), or, for a directory or FIFO, what it takes to make another.
pub(super) fn save_deleted(
    pid: i32,
    fd: i32,
    path: &str,
    info: &HashMap<String, String>,
    pidfd: &OwnedFd,
    ctx: &mut super::SaveContext,
) -> Result<FdKind> {
    use std::os::unix::fs::FileTypeExt;
    let target = format!("{path} (deleted)");
    if path == "/secretmem" {
        return Err(super::unsupported(pid, fd, "memfd_secret memory (the kernel lets nobody else read it)", &target));
    }
    let dup = sysproc::pidfd_getfd(pidfd, fd).map_err(|source| EngineError::Sys { step: "pidfd_getfd deleted file", pid, source })?;
    if crate::sys::ipc::is_mqueue(&dup).map_err(|source| EngineError::Sys { step: "fstatfs", pid, source })? {
        return Err(super::unsupported(pid, fd, "POSIX message queue removed with mq_unlink while open", &target));
    }
    let file = std::fs::File::from(dup);
    let meta = file.metadata().map_err(|e| EngineError::io("stat deleted file", path.as_ref(), e))?;
    if meta.is_dir() {
        return Ok(FdKind::DeletedDir { path: path.to_string() });
    }
    if meta.file_type().is_fifo() {
        let write_only = super::fd_flags(info) & libc::O_ACCMODE as u32 == libc::O_WRONLY as u32;
        return super::pipes::save_fifo(pid, fd, (path, true, write_only), (meta.dev(), meta.ino()), pidfd, ctx);
    }
    if !meta.is_file() {
        return Err(super::unsupported(pid, fd, "deleted special file", &target));
    }
    let memfd = path.starts_with("/memfd:");
    if meta.nlink() > 0 && !memfd {
        let what = format!("file removed from this path but still linked elsewhere ({} links; inode {})", meta.nlink(), meta.ino());
        return Err(super::unsupported(pid, fd, &what, &target));
    }
    let memfd_seals = memfd
        .then(|| sysproc::memfd_seals(&file))
        .transpose()
        .map_err(|source| EngineError::Sys { step: "F_GET_SEALS", pid, source })?;
    // One copy per file: a mapping of it (restored before any fd) or an fd saved before carries
    // the contents.
    let key = (meta.dev(), meta.ino());
    let reopen = match ctx.deleted_copy(key, pid)? {
        Some(r) => Some(r),
        // A copy Zap holds of an fd in flight in a unix socket message has no fd of the group
        // to be reopened from.
        None if pid == std::process::id() as i32 => None,
        None => {
            ctx.deleted.insert(key, (crate::process::vpid_of(pid)?, format!("fd/{fd}")));
            None
        }
    };
    let contents = match reopen {
        Some(_) => None,
        None => Some(FileContents::read(&file, path).map_err(|detail| EngineError::Proc { pid, detail: format!("fd {fd} ({target}): {detail}") })?),
    };
    Ok(FdKind::Deleted { path: path.to_string(), pos: pos_of(info), contents, reopen, memfd_seals })
}

/// The contents of a deleted file or memfd: its size and data ranges (holes left out). The bytes
/// are read at save time and go into the checkpoint's chunk store as an image of their own
/// ([`store_contents`]), named in `image`; restore reads them back from there
/// ([`load_contents`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileContents {
    /// Size in bytes.
    pub size: u64,
    /// Data ranges: (offset, length); the rest is holes.
    pub ranges: Vec<(u64, u64)>,
    /// The image holding the data ranges (at their offsets in the file).
    pub image: String,
    /// The bytes of the ranges, one after the other, between reading and storing, and again
    /// once loaded for a restore.
    #[serde(skip)]
    pub data: Vec<u8>,
}

impl FileContents {
    /// Reads `file` (once at `path`); fails past [`DELETED_FILE_LIMIT`] bytes of data.
    pub fn read(file: &std::fs::File, path: &str) -> std::result::Result<Self, String> {
        let size = file.metadata().map_err(|e| format!("stat deleted {path}: {e}"))?.len();
        let extents = read_data(file, size).map_err(|e| format!("read deleted {path}: {e}"))?;
        let bytes: u64 = extents.iter().map(|(_, d)| d.len() as u64).sum();
        if bytes > DELETED_FILE_LIMIT {
            return Err(format!("deleted file {path} with {bytes} bytes of data (the limit is {DELETED_FILE_LIMIT})"));
        }
        let ranges = extents.iter().map(|(o, d)| (*o, d.len() as u64)).collect();
        let data = extents.into_iter().flat_map(|(_, d)| d).collect();
        Ok(FileContents { size, ranges, image: String::new(), data })
    }
}

/// Every [`FileContents`] of a process image: in deleted-file fds and in mappings of deleted
/// files.
fn contents_of<'a>(fds: &'a mut [FdState], vmas: &'a mut [crate::mem::VmaState]) -> impl Iterator<Item = &'a mut FileContents> {
    let from_fds = fds.iter_mut().filter_map(|f| match &mut f.kind {
        FdKind::Deleted { contents: Some(c), .. } => Some(c),
        _ => None,
    });
    let from_vmas = vmas.iter_mut().filter_map(|v| match &mut v.backing {
        crate::mem::Backing::Deleted { contents: Some(c), .. } => Some(c),
        _ => None,
    });
    from_fds.chain(from_vmas)
}

/// Chunks and stores the contents of the deleted files of a process image (its `fds` and
/// `vmas`) into `sink`, one image each named `{prefix}file/N`; the bytes leave the image.
pub fn store_contents<S: zap_store::ChunkSink>(
    fds: &mut [FdState],
    vmas: &mut [crate::mem::VmaState],
    sink: &mut S,
    cfg: &zap_chunker::ChunkerConfig,
    prefix: &str,
) -> Result<Vec<zap_store::Image>> {
    let mut images = Vec::new();
    for (n, c) in contents_of(fds, vmas).enumerate() {
        let data = std::mem::take(&mut c.data);
        let mut extents = Vec::new();
        let mut at = 0usize;
        for &(off, len) in &c.ranges {
            let (mut e, _) = zap_store::store_run(sink, cfg, off, &data[at..at + len as usize])?;
            extents.append(&mut e);
            at += len as usize;
        }
        c.image = format!("{prefix}file/{n}");
        images.push(zap_store::Image { name: c.image.clone(), kind: zap_store::ImageKind::File, extents });
    }
    Ok(images)
}

/// Reads back from `store` (the manifest's `images`) the contents of the deleted files of a
/// process image, for its restore.
pub fn load_contents<S: zap_store::ImageStore>(
    store: &S,
    images: &[zap_store::Image],
    fds: &mut [FdState],
    vmas: &mut [crate::mem::VmaState],
) -> Result<()> {
    for c in contents_of(fds, vmas) {
        let img = images.iter().find(|i| i.name == c.image).ok_or_else(|| EngineError::Proc {
            pid: 0,
            detail: format!("checkpoint lacks image {} of a deleted file's contents", c.image),
        })?;
        let mut data = Vec::with_capacity(c.ranges.iter().map(|r| r.1 as usize).sum());
        for &(off, len) in &c.ranges {
            let mut buf = vec![0u8; len as usize];
            zap_store::materialize(store, &zap_store::clip(&img.extents, off, off + len), off, &mut buf)?;
            data.append(&mut buf);
        }
        c.data = data;
    }
    Ok(())
}

impl super::SaveContext {
    /// Where a copy of the deleted file `key` (device, inode) will be found at restore, if a
    /// mapping of the group or an fd saved before holds it: (vpid, path under /proc/VPID/).
    fn deleted_copy(&mut self, key: (u64, u64), pid: i32) -> Result<Option<(i32, String)>> {
        if let Some(r) = self.deleted.get(&key) {
            return Ok(Some(r.clone()));
        }
        let mut pids = vec![pid];
        pids.extend(self.group.iter().copied().filter(|&p| p != pid));
        for p in pids {
            for m in crate::maps::read_maps(p)? {
                if m.inode != key.1 || !(m.path.ends_with(" (deleted)") || m.path.starts_with("/memfd:")) {
                    continue;
                }
                let map_file = format!("/proc/{p}/map_files/{:x}-{:x}", m.start, m.end);
                match std::fs::metadata(&map_file) {
                    Ok(meta) if (meta.dev(), meta.ino()) == key => {
                        let found = (crate::process::vpid_of(p)?, format!("map_files/{:x}-{:x}", m.start, m.end));
                        self.deleted.insert(key, found.clone());
                        return Ok(Some(found));
                    }
                    _ => {}
                }
            }
        }
        Ok(None)
    }
}

/// The data ranges of `file` (`len` bytes long), each with its bytes: holes are left out.
fn read_data(file: &std::fs::File, len: u64) -> std::io::Result<Vec<(u64, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        let Some(start) = sysproc::seek_data(file, pos)? else { break };
        let end = sysproc::seek_hole(file, start)?.min(len);
        let mut data = vec![0u8; (end - start) as usize];
        std::os::unix::fs::FileExt::read_exact_at(file, &mut data, start)?;
        out.push((start, data));
        pos = end;
    }
    Ok(out)
}

/// Recreates a directory deleted while open (`FdKind::DeletedDir`): a new directory next to
/// where it was (or in /tmp), opened with the saved flags and removed again.
pub(super) fn restore_deleted_dir(inj: &mut Injector, vpid: i32, st: &FdState, path: &str) -> Result<u64> {
    let dir = std::path::Path::new(path).parent().and_then(|d| d.to_str()).unwrap_or("/tmp").to_string();
    for d in [dir.as_str(), "/tmp"] {
        let name = format!("{d}/.zap-dir-{}-{}", st.fd, std::process::id());
        let p = inj.put_cstr(name.as_bytes())?;
        if inj.syscall(libc::SYS_mkdir, [p, 0o700, 0, 0, 0, 0])? < 0 {
            continue;
        }
        let fd = inj.syscall(libc::SYS_open, [p, u64::from(st.flags & !(libc::O_CLOEXEC as u32)) | libc::O_DIRECTORY as u64, 0, 0, 0, 0])?;
        inj.call("rmdir", libc::SYS_rmdir, [p, 0, 0, 0, 0, 0])?;
        if fd >= 0 {
            return Ok(fd as u64);
        }
    }
    Err(EngineError::Proc { pid: vpid, detail: format!("fd {}: could not recreate the deleted directory {path}", st.fd) })
}

/// Gives the unnamed file `fd` (of the process `inj` drives) the name `path` of the deleted file
/// it copies, as a deleted file: linked there, opened there, unlinked. Returns the fd to use (the
/// new one, `fd` closed; or `fd` itself when `path` is taken or its directory is not the file's).
fn name_as_deleted(inj: &mut Injector, vpid: i32, fd: u64, path: &str) -> Result<u64> {
    let from = format!("/proc/self/fd/{fd}");
    let mut both = from.as_bytes().to_vec();
    both.push(0);
    let to_off = both.len() as u64;
    both.extend_from_slice(path.as_bytes());
    both.push(0);
    let scratch = inj.scratch(both.len() as u64 + 8192)?;
    inj.write_mem(scratch, &both)?;
    let (from_p, to_p) = (scratch, scratch + to_off);
    let at_fdcwd = libc::AT_FDCWD as u64;
    let rc = inj.syscall(libc::SYS_linkat, [at_fdcwd, from_p, at_fdcwd, to_p, libc::AT_SYMLINK_FOLLOW as u64, 0])?;
    if rc < 0 {
        // The path is taken (a new file there), or this is the /tmp fallback on another file system.
        return Ok(fd);
    }
    let named = inj.syscall(libc::SYS_open, [to_p, (libc::O_RDWR | libc::O_CLOEXEC) as u64, 0, 0, 0, 0])?;
    let unlinked = inj.syscall(libc::SYS_unlink, [to_p, 0, 0, 0, 0, 0])?;
    if unlinked < 0 {
        let err = std::io::Error::from_raw_os_error((-unlinked) as i32);
        return Err(EngineError::Proc { pid: vpid, detail: format!("copy of deleted {path}: linked at its path for a moment, then unlink failed: {err}") });
    }
    if named < 0 {
        return Ok(fd);
    }
    inj.call("close unnamed copy", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
    Ok(named as u64)
}

/// Makes a copy of a deleted file (once at `path`) with `contents` in the process `inj` drives
/// (which sees itself as `vpid`): a memfd of the same name for a memfd (sealing allowed), else an
/// unnamed file (`O_TMPFILE`) in the same directory, or /tmp when that is gone. An unnamed file
/// in the same directory is linked at `path` a moment (when nothing is there), opened there and
/// unlinked again, so its fds and mappings name the deleted file as before ("PATH (deleted)":
/// `/proc/PID/exe`, `/proc/PID/fd`, maps), not "#INODE". Returns its fd, open read-write.
pub fn make_copy(inj: &mut Injector, vpid: i32, path: &str, contents: &FileContents) -> Result<u64> {
    let dir = std::path::Path::new(path).parent().and_then(|d| d.to_str()).unwrap_or("/tmp").to_string();
    let tmpfile = (libc::O_TMPFILE | libc::O_RDWR) as u64;
    let mut fd = None;
    if let Some(name) = path.strip_prefix("/memfd:") {
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
    let mut fd = fd.ok_or_else(|| EngineError::Proc { pid: vpid, detail: format!("no unnamed file for a copy of deleted {path}") })?;
    if !path.starts_with("/memfd:") {
        fd = name_as_deleted(inj, vpid, fd, path)?;
    }
    inj.call("ftruncate deleted file", libc::SYS_ftruncate, [fd, contents.size, 0, 0, 0, 0])?;
    let largest = contents.ranges.iter().map(|r| r.1).max().unwrap_or(0);
    let have: u64 = contents.ranges.iter().map(|r| r.1).sum();
    if contents.data.len() as u64 != have {
        return Err(EngineError::Proc { pid: vpid, detail: format!("copy of deleted {path}: {} of {have} bytes loaded", contents.data.len()) });
    }
    let scratch = inj.scratch(largest.min(4 << 20) + 8192)?;
    let mut at = 0usize;
    for &(start, len) in &contents.ranges {
        let data = &contents.data[at..at + len as usize];
        at += len as usize;
        let mut done = 0usize;
        while done < data.len() {
            let n = (data.len() - done).min(4 << 20);
            inj.write_mem(scratch, &data[done..done + n])?;
            let w = inj.call("write deleted file", libc::SYS_pwrite64, [fd, scratch, n as u64, start + done as u64, 0, 0])?;
            if w == 0 {
                return Err(EngineError::Proc { pid: vpid, detail: format!("copy of deleted {path}: short write") });
            }
            done += w as usize;
        }
    }
    Ok(fd)
}

/// Recreates a deleted file or memfd (`FdKind::Deleted`) in the process `inj` drives: a new copy,
/// or the copy a mapping or an earlier fd made (reopened through /proc); returns the new fd, open
/// with the saved flags, at the saved offset, with the saved seals.
pub(super) fn restore_deleted(inj: &mut Injector, vpid: i32, st: &FdState) -> Result<u64> {
    let FdKind::Deleted { path, pos, contents, reopen, memfd_seals } = &st.kind else { unreachable!("a deleted file") };
    let fd = match (reopen, contents) {
        (Some((owner, at)), _) => {
            let who = if *owner == vpid { "self".to_string() } else { owner.to_string() };
            super::open_path(inj, &format!("/proc/{who}/{at}"), st.flags)
                .map_err(|e| EngineError::Proc { pid: vpid, detail: format!("fd {}: reopen the copy of deleted {path}: {e}", st.fd) })?
        }
        (None, Some(c)) => {
            let fd = make_copy(inj, vpid, path, c)?;
            // The copy was made read-write: reopen it with the saved access mode.
            if st.flags & libc::O_ACCMODE as u32 != libc::O_RDWR as u32 {
                let again = super::open_path(inj, &format!("/proc/self/fd/{fd}"), st.flags)
                    .map_err(|e| EngineError::Proc { pid: vpid, detail: format!("fd {}: reopen the copy of deleted {path}: {e}", st.fd) })?;
                inj.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
                again
            } else {
                fd
            }
        }
        (None, None) => return Err(EngineError::Proc { pid: vpid, detail: format!("fd {}: deleted {path} saved without contents", st.fd) }),
    };
    if let Some(seals) = memfd_seals.filter(|s| *s != 0) {
        let have = inj.call("fcntl(F_GET_SEALS)", libc::SYS_fcntl, [fd, libc::F_GET_SEALS as u64, 0, 0, 0, 0])? as u32;
        if have & seals != seals {
            inj.call("fcntl(F_ADD_SEALS)", libc::SYS_fcntl, [fd, libc::F_ADD_SEALS as u64, u64::from(seals & !have), 0, 0, 0])
                .map_err(|e| EngineError::Proc { pid: vpid, detail: format!("fd {}: seal the copy of {path} with {seals:#x}: {e}", st.fd) })?;
        }
    }
    inj.call("lseek", libc::SYS_lseek, [fd, *pos, libc::SEEK_SET as u64, 0, 0, 0])?;
    Ok(fd)
}
