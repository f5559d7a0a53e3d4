//! Mounts and file trees by descriptor: the new mount API (`fsopen`/`fsconfig`/`fsmount`,
//! `open_tree`, `move_mount`, `mount_setattr`), `statx` mount ids, lazy unmounts, and the `*at`
//! calls that read and rebuild a file tree relative to a directory descriptor (nodes, owners,
//! modes, times, extended attributes, inode flags, data ranges of sparse files).
//!
//! A file system whose instance depends on the caller's namespaces (procfs: PID; sysfs: network;
//! mqueue: IPC; cgroup2: cgroup) is created by [`make_fs`] in a short-lived grandchild that
//! joined another process's namespaces; the mount descriptor is taken from it with
//! `pidfd_getfd`. The children run raw syscalls only (no allocation, no locks), so this is safe
//! in a multi-threaded process.
use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use super::clone::{clone3, CloneArgs};

const FSOPEN_CLOEXEC: u32 = 1;
const FSMOUNT_CLOEXEC: u32 = 1;
const FSCONFIG_SET_FLAG: u32 = 0;
const FSCONFIG_SET_STRING: u32 = 1;
const FSCONFIG_CMD_CREATE: u32 = 6;
const FSCONFIG_CMD_RECONFIGURE: u32 = 7;
const FSPICK_CLOEXEC: u32 = 1;
const FSPICK_EMPTY_PATH: u32 = 8;
const OPEN_TREE_CLONE: u32 = 1;
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 4;
const MOVE_MOUNT_T_EMPTY_PATH: u32 = 0x40;
const MOVE_MOUNT_SET_GROUP: u32 = 0x100;
const SYS_GETXATTRAT: i64 = 464;
const SYS_LISTXATTRAT: i64 = 465;
const SYS_SETXATTRAT: i64 = 463;

/// Per-mount attributes (`MOUNT_ATTR_*`).
pub mod attr {
    /// Read-only.
    pub const RDONLY: u64 = 0x1;
    /// No set-user-id.
    pub const NOSUID: u64 = 0x2;
    /// No devices.
    pub const NODEV: u64 = 0x4;
    /// No execution.
    pub const NOEXEC: u64 = 0x8;
    /// The atime field (relatime is 0).
    pub const ATIME_MASK: u64 = 0x70;
    /// No atime updates.
    pub const NOATIME: u64 = 0x10;
    /// Always update atime.
    pub const STRICTATIME: u64 = 0x20;
    /// No directory atime updates.
    pub const NODIRATIME: u64 = 0x80;
    /// Symlinks are not followed.
    pub const NOSYMFOLLOW: u64 = 0x0020_0000;
}

fn cvt(rc: i64) -> io::Result<i64> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn cpath(p: &OsStr) -> io::Result<CString> {
    CString::new(p.as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the caller passes a descriptor a syscall just returned to us; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// `AT_FDCWD` as a descriptor argument.
pub const CWD: RawFd = libc::AT_FDCWD;

/// Opens `path` relative to `dir` with `flags` (close-on-exec added).
pub fn open_at(dir: RawFd, path: &OsStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = cpath(path)?;
    // SAFETY: c is a valid C string; openat takes integers otherwise.
    let fd = cvt(i64::from(unsafe { libc::openat(dir, c.as_ptr(), flags | libc::O_CLOEXEC, mode) }))?;
    Ok(owned(fd))
}

/// What `fstatat` says about a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Device of the file system.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Type and permission bits.
    pub mode: u32,
    /// Hard links.
    pub nlink: u64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number of a device node.
    pub rdev: u64,
    /// Size in bytes.
    pub size: u64,
    /// Access time (s, ns).
    pub atime: (i64, i64),
    /// Modification time (s, ns).
    pub mtime: (i64, i64),
}

/// `fstatat(dir, path)` without following a final symlink (`path` empty: `dir` itself).
pub fn stat_at(dir: RawFd, path: &OsStr) -> io::Result<Stat> {
    let c = cpath(path)?;
    // SAFETY: stat is plain data, filled by fstatat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let flags = libc::AT_SYMLINK_NOFOLLOW | if path.is_empty() { libc::AT_EMPTY_PATH } else { 0 };
    // SAFETY: c and st are valid for the call.
    cvt(i64::from(unsafe { libc::fstatat(dir, c.as_ptr(), &mut st, flags) }))?;
    Ok(Stat {
        dev: st.st_dev,
        ino: st.st_ino,
        mode: st.st_mode,
        nlink: st.st_nlink,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev,
        size: st.st_size as u64,
        atime: (st.st_atime, st.st_atime_nsec),
        mtime: (st.st_mtime, st.st_mtime_nsec),
    })
}

/// The mount id (`STATX_MNT_ID`, as in mountinfo) of the mount `path` (relative to `dir`, empty
/// for `dir` itself) lies on, following symlinks but not automounts.
pub fn mount_id_at(dir: RawFd, path: &OsStr) -> io::Result<u64> {
    let c = cpath(path)?;
    // SAFETY: statx is plain data, filled by the call.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let flags = libc::AT_NO_AUTOMOUNT | if path.is_empty() { libc::AT_EMPTY_PATH } else { 0 };
    // SAFETY: c and stx are valid for the call.
    cvt(i64::from(unsafe { libc::statx(dir, c.as_ptr(), flags, libc::STATX_MNT_ID, &mut stx) }))?;
    if stx.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "statx gives no mount id"));
    }
    Ok(stx.stx_mnt_id)
}

/// The names in directory `dir` (an open directory, not `O_PATH`; without `.` and `..`), sorted.
pub fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    // SAFETY: fcntl duplicates a valid descriptor (fdopendir takes ownership of the copy).
    let dup = cvt(i64::from(unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) }))? as RawFd;
    // SAFETY: dup is an open directory descriptor we own; fdopendir takes it over.
    let d = unsafe { libc::fdopendir(dup) };
    if d.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so dup is still ours to close.
        unsafe { libc::close(dup) };
        return Err(e);
    }
    // SAFETY: d is a valid DIR stream; rewinddir takes it to the start (the copy shares the
    // offset of `dir`).
    unsafe { libc::rewinddir(d) };
    let mut out = Vec::new();
    loop {
        // SAFETY: errno is thread-local; clearing it tells end of stream from an error.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: d is valid; the returned entry is valid until the next readdir.
        let ent = unsafe { libc::readdir64(d) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: d is valid and closed once (this also closes dup).
            unsafe { libc::closedir(d) };
            if e.raw_os_error().unwrap_or(0) != 0 {
                return Err(e);
            }
            break;
        }
        // SAFETY: d_name is a NUL-terminated name inside the entry.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        let b = name.to_bytes();
        if b != b"." && b != b".." {
            out.push(OsString::from_vec(b.to_vec()));
        }
    }
    out.sort();
    Ok(out)
}

/// The target of symlink `path` in `dir`.
pub fn readlink_at(dir: RawFd, path: &OsStr) -> io::Result<Vec<u8>> {
    let c = cpath(path)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: buf is valid for buf.len() bytes.
    let n = cvt(unsafe { libc::readlinkat(dir, c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) } as i64)? as usize;
    buf.truncate(n);
    Ok(buf)
}

/// The data ranges `(offset, len)` of the regular file `fd` of `size` bytes (holes left out;
/// the whole file when the file system cannot tell).
pub fn data_ranges(fd: BorrowedFd<'_>, size: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        // SAFETY: lseek takes integers.
        let data = unsafe { libc::lseek(fd.as_raw_fd(), pos as i64, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole up to the end
            }
            if e.raw_os_error() == Some(libc::EINVAL) {
                return Ok(vec![(0, size)]);
            }
            return Err(e);
        }
        // SAFETY: lseek takes integers.
        let hole = cvt(unsafe { libc::lseek(fd.as_raw_fd(), data, libc::SEEK_HOLE) })? as u64;
        let end = hole.min(size);
        if end > data as u64 {
            out.push((data as u64, end - data as u64));
        }
        pos = hole.max(data as u64 + 1);
    }
    Ok(out)
}

/// `mkdirat`.
pub fn mkdir_at(dir: RawFd, path: &OsStr, mode: u32) -> io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: c is a valid C string.
    cvt(i64::from(unsafe { libc::mkdirat(dir, c.as_ptr(), mode) }))?;
    Ok(())
}

/// `mknodat` (FIFOs, sockets, device nodes).
pub fn mknod_at(dir: RawFd, path: &OsStr, mode: u32, rdev: u64) -> io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: c is a valid C string.
    cvt(i64::from(unsafe { libc::mknodat(dir, c.as_ptr(), mode, rdev) }))?;
    Ok(())
}

/// `symlinkat`: a symlink `path` in `dir` pointing at `target`.
pub fn symlink_at(target: &[u8], dir: RawFd, path: &OsStr) -> io::Result<()> {
    let t = cpath(OsStr::from_bytes(target))?;
    let c = cpath(path)?;
    // SAFETY: both are valid C strings.
    cvt(i64::from(unsafe { libc::symlinkat(t.as_ptr(), dir, c.as_ptr()) }))?;
    Ok(())
}

/// `linkat`: a hard link `new` to `old`, both in `dir`.
pub fn link_at(dir: RawFd, old: &OsStr, new: &OsStr) -> io::Result<()> {
    let o = cpath(old)?;
    let n = cpath(new)?;
    // SAFETY: both are valid C strings.
    cvt(i64::from(unsafe { libc::linkat(dir, o.as_ptr(), dir, n.as_ptr(), 0) }))?;
    Ok(())
}

/// `fchownat` without following a final symlink.
pub fn chown_at(dir: RawFd, path: &OsStr, uid: u32, gid: u32) -> io::Result<()> {
    let c = cpath(path)?;
    let flags = libc::AT_SYMLINK_NOFOLLOW | if path.is_empty() { libc::AT_EMPTY_PATH } else { 0 };
    // SAFETY: c is a valid C string.
    cvt(i64::from(unsafe { libc::fchownat(dir, c.as_ptr(), uid, gid, flags) }))?;
    Ok(())
}

/// `fchmod` of an open node.
pub fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: fchmod takes integers.
    cvt(i64::from(unsafe { libc::fchmod(fd.as_raw_fd(), mode) }))?;
    Ok(())
}

/// `fchmodat` (a final symlink is followed: never call it on a symlink).
pub fn chmod_at(dir: RawFd, path: &OsStr, mode: u32) -> io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: c is a valid C string.
    cvt(i64::from(unsafe { libc::fchmodat(dir, c.as_ptr(), mode, 0) }))?;
    Ok(())
}

/// Sets access and modification times without following a final symlink (`path` empty: `dir`
/// itself).
pub fn set_times_at(dir: RawFd, path: &OsStr, atime: (i64, i64), mtime: (i64, i64)) -> io::Result<()> {
    let c = cpath(path)?;
    let ts = [libc::timespec { tv_sec: atime.0, tv_nsec: atime.1 }, libc::timespec { tv_sec: mtime.0, tv_nsec: mtime.1 }];
    let flags = libc::AT_SYMLINK_NOFOLLOW | if path.is_empty() { libc::AT_EMPTY_PATH } else { 0 };
    // SAFETY: c and ts are valid for the call.
    cvt(i64::from(unsafe { libc::utimensat(dir, c.as_ptr(), ts.as_ptr(), flags) }))?;
    Ok(())
}

/// Extended attributes: (name, value).
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// Extended attributes of `path` in `dir` (not following a final symlink). `None` when this
/// kernel cannot read them without opening the node (before Linux 6.13).
pub fn xattrs_at(dir: RawFd, path: &OsStr) -> io::Result<Option<Xattrs>> {
    let c = cpath(path)?;
    let flags = libc::AT_SYMLINK_NOFOLLOW as u64 | if path.is_empty() { libc::AT_EMPTY_PATH as u64 } else { 0 };
    let mut names = vec![0u8; 4096];
    let n = loop {
        // SAFETY: names is valid for names.len() bytes.
        let n = unsafe { libc::syscall(SYS_LISTXATTRAT, dir, c.as_ptr(), flags, names.as_mut_ptr(), names.len()) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOSYS) => return Ok(None),
            Some(libc::ERANGE) if names.len() < (1 << 20) => names.resize(names.len() * 4, 0),
            Some(libc::EOPNOTSUPP) => return Ok(Some(Vec::new())),
            _ => return Err(e),
        }
    };
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let cname = CString::new(name).expect("names have no NUL");
        let mut val = vec![0u8; 4096];
        let len = loop {
            // struct xattr_args { value, size, flags }.
            let args: [u64; 2] = [val.as_mut_ptr() as u64, val.len() as u64];
            // SAFETY: args describes val, valid for its length; the other pointers are C strings.
            let n = unsafe { libc::syscall(SYS_GETXATTRAT, dir, c.as_ptr(), flags, cname.as_ptr(), args.as_ptr(), 16usize) };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) && val.len() < (1 << 20) {
                val.resize(val.len() * 16, 0);
                continue;
            }
            return Err(e);
        };
        val.truncate(len);
        out.push((name.to_vec(), val));
    }
    Ok(Some(out))
}

/// Extended attributes of an open file or directory: (name, value).
pub fn xattrs_fd(fd: BorrowedFd<'_>) -> io::Result<Xattrs> {
    let mut names = vec![0u8; 65536];
    // SAFETY: names is valid for its length.
    let n = unsafe { libc::flistxattr(fd.as_raw_fd(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::EOPNOTSUPP) { Ok(Vec::new()) } else { Err(e) };
    }
    let mut out = Vec::new();
    for name in names[..n as usize].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let cname = CString::new(name).expect("names have no NUL");
        let mut val = vec![0u8; 65536];
        // SAFETY: val is valid for its length; cname is a C string.
        let len = cvt(unsafe { libc::fgetxattr(fd.as_raw_fd(), cname.as_ptr(), val.as_mut_ptr().cast(), val.len()) } as i64)?;
        val.truncate(len as usize);
        out.push((name.to_vec(), val));
    }
    Ok(out)
}

/// Sets extended attribute `name` of `path` in `dir` (not following a final symlink), or of the
/// open node `fd` when given (kernels before 6.13).
pub fn set_xattr(dir: RawFd, path: &OsStr, fd: Option<BorrowedFd<'_>>, name: &[u8], value: &[u8]) -> io::Result<()> {
    let cname = CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "attribute name contains a NUL byte"))?;
    if let Some(fd) = fd {
        // SAFETY: value is valid for its length; cname is a C string.
        cvt(i64::from(unsafe { libc::fsetxattr(fd.as_raw_fd(), cname.as_ptr(), value.as_ptr().cast(), value.len(), 0) }))?;
        return Ok(());
    }
    let c = cpath(path)?;
    let flags = libc::AT_SYMLINK_NOFOLLOW as u64 | if path.is_empty() { libc::AT_EMPTY_PATH as u64 } else { 0 };
    // struct xattr_args { value, size, flags } (value and size packed in the first two words).
    let args: [u64; 2] = [value.as_ptr() as u64, value.len() as u64];
    // SAFETY: args describes value, valid for its length; the other pointers are C strings.
    cvt(unsafe { libc::syscall(SYS_SETXATTRAT, dir, c.as_ptr(), flags, cname.as_ptr(), args.as_ptr(), 16usize) })?;
    Ok(())
}

/// The inode flags (`FS_IOC_GETFLAGS`: immutable, append-only, ...) of an open node; 0 when the
/// file system has none.
pub fn inode_flags(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOTTY) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => Ok(0),
            _ => Err(e),
        };
    }
    Ok(flags as u32)
}

/// Sets the inode flags of an open node.
pub fn set_inode_flags(fd: BorrowedFd<'_>, flags: u32) -> io::Result<()> {
    let v = flags as libc::c_int;
    // SAFETY: FS_IOC_SETFLAGS reads one int.
    cvt(i64::from(unsafe { libc::ioctl(fd.as_raw_fd(), libc::FS_IOC_SETFLAGS, &v) }))?;
    Ok(())
}

/// `open_tree`: with `clone`, a detached copy of the mount at `path` (relative to `dir`, empty for
/// `dir` itself) without its submounts; otherwise an `O_PATH` descriptor of it.
pub fn open_tree(dir: RawFd, path: &OsStr, clone: bool) -> io::Result<OwnedFd> {
    let c = cpath(path)?;
    let mut flags = libc::O_CLOEXEC as u32 | if clone { OPEN_TREE_CLONE } else { 0 };
    if path.is_empty() {
        flags |= libc::AT_EMPTY_PATH as u32;
    }
    // SAFETY: c is a valid C string; open_tree takes integers otherwise.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_open_tree, dir, c.as_ptr(), flags) })?;
    Ok(owned(fd))
}

/// A detached copy of the mount at `path` (relative to `dir`) with everything mounted under it
/// (`OPEN_TREE_CLONE | AT_RECURSIVE`).
pub fn open_tree_recursive(dir: RawFd, path: &OsStr) -> io::Result<OwnedFd> {
    let c = cpath(path)?;
    let flags = libc::O_CLOEXEC as u32 | OPEN_TREE_CLONE | libc::AT_RECURSIVE as u32;
    // SAFETY: c is a valid C string; open_tree takes integers otherwise.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_open_tree, dir, c.as_ptr(), flags) })?;
    Ok(owned(fd))
}

/// Attaches (or moves) mount `from` at `path` relative to `to_dir` (empty: on `to_dir` itself).
pub fn move_mount(from: BorrowedFd<'_>, to_dir: RawFd, path: &OsStr) -> io::Result<()> {
    let c = cpath(path)?;
    let flags = MOVE_MOUNT_F_EMPTY_PATH | if path.is_empty() { MOVE_MOUNT_T_EMPTY_PATH } else { 0 };
    // SAFETY: both paths are valid C strings.
    cvt(unsafe { libc::syscall(libc::SYS_move_mount, from.as_raw_fd(), c"".as_ptr(), to_dir, c.as_ptr(), flags) })?;
    Ok(())
}

/// Puts the (private) mount `to` into the peer group (and under the master) of mount `from`
/// (`MOVE_MOUNT_SET_GROUP`, Linux 5.15+).
pub fn set_group(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> io::Result<()> {
    let flags = MOVE_MOUNT_SET_GROUP | MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH;
    // SAFETY: empty C strings; the descriptors are valid.
    cvt(unsafe { libc::syscall(libc::SYS_move_mount, from.as_raw_fd(), c"".as_ptr(), to.as_raw_fd(), c"".as_ptr(), flags) })?;
    Ok(())
}

/// `struct mount_attr`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Sets (`set`) and clears (`clr`) per-mount attributes of the mount `fd` (not its submounts),
/// and its propagation when `propagation` is not 0 (`MS_SHARED`, `MS_SLAVE`, `MS_PRIVATE`,
/// `MS_UNBINDABLE`).
pub fn mount_setattr(fd: BorrowedFd<'_>, set: u64, clr: u64, propagation: u64) -> io::Result<()> {
    let a = MountAttr { attr_set: set, attr_clr: clr, propagation, userns_fd: 0 };
    // SAFETY: a is a valid mount_attr of the size passed.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &a as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    Ok(())
}

/// Detaches the mount at `path` (the topmost there) and everything below it (`MNT_DETACH`).
pub fn umount_detach(path: &OsStr) -> io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: c is a valid C string.
    cvt(i64::from(unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) }))?;
    Ok(())
}

/// Makes every mount of the calling thread's mount namespace private.
pub fn make_all_private() -> io::Result<()> {
    // SAFETY: mount with null source/type/data and a valid C string.
    cvt(i64::from(unsafe {
        libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null())
    }))?;
    Ok(())
}

/// Makes the file system of mount `fd` read-only (a superblock option, for every mount of it).
pub fn make_fs_readonly(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: empty C string; fspick takes integers otherwise.
    let fs = owned(cvt(unsafe { libc::syscall(libc::SYS_fspick, fd.as_raw_fd(), c"".as_ptr(), FSPICK_CLOEXEC | FSPICK_EMPTY_PATH) })?);
    // SAFETY: "ro" is a C string; the value is null for a flag.
    cvt(unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), FSCONFIG_SET_FLAG, c"ro".as_ptr(), std::ptr::null::<u8>(), 0) })?;
    // SAFETY: a command takes no key or value.
    cvt(unsafe {
        libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), FSCONFIG_CMD_RECONFIGURE, std::ptr::null::<u8>(), std::ptr::null::<u8>(), 0)
    })?;
    Ok(())
}

/// Why [`make_fs`] failed: the step, the error, and the file system's own message if it gave one.
#[derive(Debug)]
pub struct FsError {
    /// `fsopen`, `fsconfig KEY`, `create`, `fsmount` or a setup step.
    pub step: String,
    /// The OS error.
    pub error: io::Error,
    /// What the file system logged (e.g. `tmpfs: Bad value for 'size'`).
    pub log: String,
}

impl std::fmt::Display for FsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, self.error)?;
        if !self.log.is_empty() {
            write!(f, " ({})", self.log)?;
        }
        Ok(())
    }
}

/// The report of the grandchild of [`make_fs`].
#[repr(C)]
struct FsReport {
    step: i32,
    errno: i32,
    fd: i32,
    log_len: i32,
    log: [u8; 256],
}

const STEP_SETNS: i32 = -1;
const STEP_CLONE: i32 = -2;
const STEP_FSOPEN: i32 = -3;
const STEP_CREATE: i32 = -4;
const STEP_FSMOUNT: i32 = -5;

/// Makes a detached mount of a new `fstype` file system with no option but its source, in the
/// namespaces of the calling thread (join them first, e.g. with
/// [`super::ns::in_namespaces`]): no helper process, so nothing is copied of this process's
/// address space (a file system that needs a PID namespace's children, or options, takes
/// [`make_fs`]).
pub fn make_plain_fs_here(fstype: &str, source: &str) -> io::Result<OwnedFd> {
    let c_type = CString::new(fstype).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file system type contains a NUL byte"))?;
    let c_source = CString::new(source).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "source contains a NUL byte"))?;
    // SAFETY: c_type is a C string.
    let fs = owned(cvt(unsafe { libc::syscall(libc::SYS_fsopen, c_type.as_ptr(), FSOPEN_CLOEXEC) })?);
    // SAFETY: key and value are C strings; fs is an fs context.
    cvt(unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), FSCONFIG_SET_STRING, c"source".as_ptr(), c_source.as_ptr(), 0) })?;
    // SAFETY: a command takes no key or value.
    cvt(unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), FSCONFIG_CMD_CREATE, std::ptr::null::<u8>(), std::ptr::null::<u8>(), 0) })?;
    // SAFETY: integers only.
    Ok(owned(cvt(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, 0) })?))
}

/// Creates a detached mount of a new instance of file system `fstype` with `params` (`key` or
/// `key=value` options) and `source`, in a grandchild that joined, through the pidfd `ns_of`,
/// the namespaces `ns_flags` of that process (the PID namespace applies to the grandchild, which
/// is created after the join). Returns the mount's descriptor.
pub fn make_fs(
    ns_of: Option<BorrowedFd<'_>>,
    ns_flags: i32,
    fstype: &str,
    source: &str,
    params: &[(String, Option<String>)],
) -> Result<OwnedFd, FsError> {
    let fail = |step: &str, error: io::Error| FsError { step: step.to_string(), error, log: String::new() };
    let bad = |what: &str| FsError {
        step: format!("prepare {what}"),
        error: io::Error::new(io::ErrorKind::InvalidInput, "contains a NUL byte"),
        log: String::new(),
    };
    let c_type = CString::new(fstype).map_err(|_| bad("file system type"))?;
    let mut keys = vec![(CString::new("source").expect("no NUL"), Some(CString::new(source).map_err(|_| bad("source"))?))];
    for (k, v) in params {
        let key = CString::new(k.as_str()).map_err(|_| bad("option"))?;
        let val = v.as_deref().map(CString::new).transpose().map_err(|_| bad("option value"))?;
        keys.push((key, val));
    }
    let (rep_r, rep_w) = super::ns::pipe().map_err(|e| fail("pipe", e))?;
    let (pid_r, pid_w) = super::ns::pipe().map_err(|e| fail("pipe", e))?;
    let (hold_r, hold_w) = super::ns::pipe().map_err(|e| fail("pipe", e))?;
    let ns_fd = ns_of.map_or(-1, |f| f.as_raw_fd());
    let args = CloneArgs { exit_signal: libc::SIGCHLD as u64, ..Default::default() };
    let child = clone3(&args);
    if child == 0 {
        // Child: raw syscalls only.
        // SAFETY: syscalls on integers and on memory prepared before the clone.
        unsafe {
            libc::close(hold_w.as_raw_fd());
            let report = |step: i32, fd: i32, log_from: i32| -> ! {
                let mut r = FsReport { step, errno: *libc::__errno_location(), fd, log_len: 0, log: [0; 256] };
                if log_from >= 0 {
                    let n = libc::read(log_from, r.log.as_mut_ptr().cast(), r.log.len());
                    r.log_len = n.max(0) as i32;
                }
                libc::write(rep_w.as_raw_fd(), (&r as *const FsReport).cast(), std::mem::size_of::<FsReport>());
                if step == 0 {
                    // Hold the mount until the parent has taken it.
                    let mut b = 0u8;
                    while libc::read(hold_r.as_raw_fd(), (&mut b as *mut u8).cast(), 1) > 0 {}
                }
                libc::_exit(0)
            };
            if ns_fd >= 0 && libc::setns(ns_fd, ns_flags) < 0 {
                report(STEP_SETNS, -1, -1);
            }
            let grand = clone3(&args);
            if grand == 0 {
                let fs = libc::syscall(libc::SYS_fsopen, c_type.as_ptr(), FSOPEN_CLOEXEC) as i32;
                if fs < 0 {
                    report(STEP_FSOPEN, -1, -1);
                }
                for (i, (k, v)) in keys.iter().enumerate() {
                    let (cmd, val) = match v {
                        Some(v) => (FSCONFIG_SET_STRING, v.as_ptr()),
                        None => (FSCONFIG_SET_FLAG, std::ptr::null()),
                    };
                    if libc::syscall(libc::SYS_fsconfig, fs, cmd, k.as_ptr(), val, 0) < 0 {
                        report(i as i32 + 1, -1, fs);
                    }
                }
                if libc::syscall(libc::SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, std::ptr::null::<u8>(), std::ptr::null::<u8>(), 0) < 0 {
                    report(STEP_CREATE, -1, fs);
                }
                let m = libc::syscall(libc::SYS_fsmount, fs, FSMOUNT_CLOEXEC, 0) as i32;
                if m < 0 {
                    report(STEP_FSMOUNT, -1, fs);
                }
                *libc::__errno_location() = 0;
                report(0, m, -1);
            }
            if grand < 0 {
                report(STEP_CLONE, -1, -1);
            }
            let g = grand as i32;
            libc::write(pid_w.as_raw_fd(), (&g as *const i32).cast(), 4);
            let mut status = 0;
            while libc::waitpid(g, &mut status, 0) < 0 && *libc::__errno_location() == libc::EINTR {}
            libc::_exit(0);
        }
    }
    if child < 0 {
        return Err(fail("fork", io::Error::last_os_error()));
    }
    drop((rep_w, pid_w, hold_r));
    let child = child as i32;
    let result = (|| {
        let mut rep = FsReport { step: 0, errno: 0, fd: -1, log_len: 0, log: [0; 256] };
        let size = std::mem::size_of::<FsReport>();
        // SAFETY: rep is valid for `size` bytes.
        let n = unsafe { libc::read(rep_r.as_raw_fd(), (&mut rep as *mut FsReport).cast(), size) };
        if n != size as isize {
            return Err(fail("create file system", io::Error::other("the helper process ended without a report")));
        }
        if rep.step != 0 {
            let step = match rep.step {
                STEP_SETNS => "join namespaces".to_string(),
                STEP_CLONE => "fork into the PID namespace".to_string(),
                STEP_FSOPEN => "fsopen".to_string(),
                STEP_CREATE => "create".to_string(),
                STEP_FSMOUNT => "fsmount".to_string(),
                i => format!("option {:?}", keys.get(i as usize - 1).map(|k| k.0.to_string_lossy().into_owned()).unwrap_or_default()),
            };
            let log = String::from_utf8_lossy(&rep.log[..rep.log_len.clamp(0, 256) as usize]).trim().to_string();
            return Err(FsError { step, error: io::Error::from_raw_os_error(rep.errno), log });
        }
        let mut g = 0i32;
        // SAFETY: g is valid for 4 bytes.
        let n = unsafe { libc::read(pid_r.as_raw_fd(), (&mut g as *mut i32).cast(), 4) };
        if n != 4 {
            return Err(fail("create file system", io::Error::other("the helper process did not say its pid")));
        }
        let pidfd = super::proc::pidfd_open(g).map_err(|e| fail("pidfd_open helper", e))?;
        super::proc::pidfd_getfd(&pidfd, rep.fd).map_err(|e| fail("take the mount from the helper", e))
    })();
    drop(hold_w);
    let _ = super::ns::wait_pid(child);
    result
}

/// Whether a descriptor is still open (for tests of this module).
#[cfg(test)]
fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD on an integer.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn tmpfs_detached_and_populated() {
        // SAFETY: geteuid takes no argument.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP: needs root");
            return;
        }
        let m = match make_fs(None, 0, "tmpfs", "zaptest", &[("size".into(), Some("1m".into())), ("mode".into(), Some("700".into()))]) {
            Ok(m) => m,
            Err(e) => panic!("make tmpfs: {e}"),
        };
        assert!(is_open(m.as_raw_fd()));
        mkdir_at(m.as_raw_fd(), OsStr::new("d"), 0o755).unwrap();
        symlink_at(b"d", m.as_raw_fd(), OsStr::new("l")).unwrap();
        let st = stat_at(m.as_raw_fd(), OsStr::new("")).unwrap();
        assert_eq!(st.mode & 0o7777, 0o700);
        let dir = open_at(m.as_raw_fd(), OsStr::new("."), libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap();
        assert_eq!(list_dir(dir.as_fd()).unwrap(), vec![OsString::from("d"), OsString::from("l")]);
        assert_eq!(readlink_at(m.as_raw_fd(), OsStr::new("l")).unwrap(), b"d");
        let e = make_fs(None, 0, "tmpfs", "zaptest", &[("size".into(), Some("lots".into()))]).unwrap_err();
        assert!(e.step.contains("size"), "{e}");
    }
}
