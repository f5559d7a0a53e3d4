//! The files of a file system that lives only in memory (tmpfs, ramfs): saved from a detached
//! copy of one of its mounts, rebuilt in a new instance before it is mounted anywhere.
//!
//! Saved per node, parents first: the path, the type (directory, regular file, symlink and its
//! target, FIFO, socket, character or block device and its number, or a further hard link to a
//! node saved earlier), permission bits (set-id and sticky included), owner, group, access and
//! modification times (ns), extended attributes (ACLs included) and inode flags (immutable,
//! append-only, ...). A regular file's data ranges are found with `SEEK_DATA`/`SEEK_HOLE`, so
//! holes stay holes; the data goes into the checkpoint's chunk store, into one image per file
//! system in which each file starts at a 64 KiB boundary (an unchanged file gives the same
//! chunks in the next checkpoint, wherever the other files moved). The status change time and
//! the inode numbers cannot be set and come back new.
//!
//! Rebuilding: nodes in order, each with owner, then mode (after the owner, which clears
//! set-id bits), then extended attributes (after the owner, which clears file capabilities);
//! files get their times and flags at once, directories at the end, children first.
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};
use zap_chunker::ChunkerConfig;
use zap_store::{ChunkSink, Extent, ImageStore};


use crate::sys::mount as sys;

/// Files are placed in the image at multiples of this.
const FILE_ALIGN: u64 = 64 << 10;
/// Data is read, chunked and written back in pieces of at most this (at file offsets that are
/// multiples of it).
const PIECE: u64 = 4 << 20;

/// What a node is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeKind {
    /// A directory.
    Dir,
    /// A regular file: its size, its data ranges (offset, length) and where its byte 0 lies in
    /// the file system's image.
    File {
        /// Size in bytes.
        size: u64,
        /// Data ranges; the rest are holes.
        ranges: Vec<(u64, u64)>,
        /// Image offset of the file's byte 0.
        base: u64,
    },
    /// A symbolic link and its target.
    Symlink(Vec<u8>),
    /// A named pipe.
    Fifo,
    /// A socket file.
    Socket,
    /// A character device.
    CharDev(u64),
    /// A block device.
    BlockDev(u64),
    /// Another name of a file saved earlier (its path from the file system's root).
    HardLink(Vec<u8>),
}

/// One node of a tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Path relative to the tree's directory (empty: the directory itself).
    pub path: Vec<u8>,
    /// Type.
    pub kind: NodeKind,
    /// Permission bits (with set-id and sticky bits).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Access time (s, ns).
    pub atime: (i64, i64),
    /// Modification time (s, ns).
    pub mtime: (i64, i64),
    /// Extended attributes (name, value).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Inode flags (`FS_IOC_GETFLAGS`).
    pub flags: u32,
}

/// The files under one directory of a file system (its root, or the root of a bind mount when
/// nothing above it is mounted anywhere).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// The directory, from the file system's root (`/` or `/a/b`).
    pub at: String,
    /// Its nodes, parents first.
    pub nodes: Vec<Node>,
}

fn join(a: &[u8], b: &[u8]) -> Vec<u8> {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_vec(),
        (_, true) => a.to_vec(),
        _ => [a, b"/", b].concat(),
    }
}

fn show(p: &[u8]) -> String {
    if p.is_empty() {
        ".".into()
    } else {
        String::from_utf8_lossy(p).into_owned()
    }
}

/// The pieces of data range `(off, len)`: file offsets and lengths.
fn pieces(off: u64, len: u64) -> impl Iterator<Item = (u64, u64)> {
    let end = off + len;
    let mut pos = off;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let next = ((pos / PIECE) + 1) * PIECE;
        let stop = next.min(end);
        let p = (pos, stop - pos);
        pos = stop;
        Some(p)
    })
}

/// The data of the files of one file system, copied out while the pod is stopped and stored
/// later ([`DataOut::store`]): pieces at their image offsets.
#[derive(Default)]
pub struct DataOut {
    /// (image offset, bytes), in increasing order.
    pub pieces: Vec<(u64, Vec<u8>)>,
    /// Next free image offset.
    pub next: u64,
    /// Inodes with several names seen so far: inode → path from the file system's root.
    pub links: HashMap<u64, Vec<u8>>,
}

impl DataOut {
    /// Bytes copied.
    pub fn bytes(&self) -> u64 {
        self.pieces.iter().map(|p| p.1.len() as u64).sum()
    }

    /// Chunks and stores the copied data; returns the image's extents.
    pub fn store<W: ChunkSink>(self, sink: &mut W, cfg: &ChunkerConfig) -> zap_store::Result<Vec<Extent>> {
        let mut extents = Vec::new();
        for (start, data) in self.pieces {
            let (mut ext, _) = zap_store::store_run(sink, cfg, start, &data)?;
            extents.append(&mut ext);
        }
        Ok(extents)
    }
}

/// Saves the files under directory `dir` (a descriptor of the root of a detached mount whose
/// root is `at` in its file system), copying file data into `out`.
pub fn save_tree(dir: BorrowedFd<'_>, at: &str, out: &mut DataOut) -> Result<Tree, String> {
    let at_path = at.trim_start_matches('/').as_bytes().to_vec();
    let mut nodes = Vec::new();
    // A real descriptor of the directory (that of a detached mount is O_PATH).
    let first = sys::open_at(dir.as_raw_fd(), OsStr::new("."), libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(|e| format!("open {at}: {e}"))?;
    let root_stat = sys::stat_at(first.as_raw_fd(), OsStr::new("")).map_err(|e| format!("stat {at}: {e}"))?;
    nodes.push(save_node(first.as_fd(), b"", first.as_raw_fd(), OsStr::new(""), root_stat, &at_path, out, None)?);
    // Directories still to list: (descriptor, path relative to `at`).
    let mut stack: Vec<(OwnedFd, Vec<u8>)> = vec![(first, Vec::new())];
    while let Some((dfd, rel)) = stack.pop() {
        let names = sys::list_dir(dfd.as_fd()).map_err(|e| format!("list {}: {e}", show(&rel)))?;
        let mut subdirs = Vec::new();
        for name in names {
            let path = join(&rel, name.as_bytes());
            let st = sys::stat_at(dfd.as_raw_fd(), &name).map_err(|e| format!("stat {}: {e}", show(&path)))?;
            let node = save_node(dfd.as_fd(), &path, dfd.as_raw_fd(), &name, st, &at_path, out, Some(&mut subdirs))?;
            nodes.push(node);
        }
        // Depth first, in name order: push in reverse.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(Tree { at: at.to_string(), nodes })
}

#[allow(clippy::too_many_arguments)]
fn save_node(
    parent: BorrowedFd<'_>,
    path: &[u8],
    dirfd: i32,
    name: &OsStr,
    st: sys::Stat,
    at_path: &[u8],
    out: &mut DataOut,
    subdirs: Option<&mut Vec<(OwnedFd, Vec<u8>)>>,
) -> Result<Node, String> {
    let fmt = st.mode & libc::S_IFMT;
    let mut node = Node {
        path: path.to_vec(),
        kind: NodeKind::Dir,
        mode: st.mode & 0o7777,
        uid: st.uid,
        gid: st.gid,
        atime: st.atime,
        mtime: st.mtime,
        xattrs: Vec::new(),
        flags: 0,
    };
    if fmt != libc::S_IFDIR && st.nlink > 1 {
        let full = join(at_path, path);
        if let Some(first) = out.links.get(&st.ino) {
            node.kind = NodeKind::HardLink(first.clone());
            return Ok(node);
        }
        out.links.insert(st.ino, full);
    }
    let err = |what: &str, e: std::io::Error| format!("{what} {}: {e}", show(path));
    // Directories and regular files are opened (flags, data, and extended attributes on old
    // kernels); other nodes are never opened (a device or FIFO open has side effects).
    let opened = match fmt {
        libc::S_IFDIR if path.is_empty() => Some(sys::open_at(parent.as_raw_fd(), OsStr::new("."), libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(|e| err("open", e))?),
        libc::S_IFDIR => Some(sys::open_at(dirfd, name, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0).map_err(|e| err("open", e))?),
        libc::S_IFREG => Some(sys::open_at(dirfd, name, libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK, 0).map_err(|e| err("open", e))?),
        _ => None,
    };
    node.xattrs = match sys::xattrs_at(dirfd, name).map_err(|e| err("read extended attributes of", e))? {
        Some(x) => x,
        None => match &opened {
            Some(fd) => sys::xattrs_fd(fd.as_fd()).map_err(|e| err("read extended attributes of", e))?,
            None => {
                tracing::warn!(path = %show(path), "extended attributes of special files need Linux 6.13+; not read");
                Vec::new()
            }
        },
    };
    if let Some(fd) = &opened {
        node.flags = sys::inode_flags(fd.as_fd()).map_err(|e| err("read inode flags of", e))?;
    }
    node.kind = match fmt {
        libc::S_IFDIR => {
            if let (Some(subdirs), Some(fd)) = (subdirs, opened) {
                subdirs.push((fd, path.to_vec()));
            }
            NodeKind::Dir
        }
        libc::S_IFREG => {
            let fd = opened.expect("regular files are opened");
            let ranges = sys::data_ranges(fd.as_fd(), st.size).map_err(|e| err("find data in", e))?;
            let base = out.next;
            let file = std::fs::File::from(fd);
            for &(off, len) in &ranges {
                for (p, n) in pieces(off, len) {
                    let mut buf = vec![0u8; n as usize];
                    file.read_exact_at(&mut buf, p).map_err(|e| err("read", e))?;
                    out.pieces.push((base + p, buf));
                }
            }
            if st.size > 0 {
                out.next = (base + st.size).div_ceil(FILE_ALIGN) * FILE_ALIGN;
            }
            NodeKind::File { size: st.size, ranges, base }
        }
        libc::S_IFLNK => NodeKind::Symlink(sys::readlink_at(dirfd, name).map_err(|e| err("read link", e))?),
        libc::S_IFIFO => NodeKind::Fifo,
        libc::S_IFSOCK => NodeKind::Socket,
        libc::S_IFCHR => NodeKind::CharDev(st.rdev),
        libc::S_IFBLK => NodeKind::BlockDev(st.rdev),
        other => return Err(format!("{}: unknown file type {other:o}", show(path))),
    };
    Ok(node)
}

/// Creates the directories of `at` (from the file system's root `root`) that are missing.
fn make_dirs(root: BorrowedFd<'_>, at: &str) -> Result<(), String> {
    let mut cur = String::new();
    for comp in at.split('/').filter(|c| !c.is_empty()) {
        cur = if cur.is_empty() { comp.to_string() } else { format!("{cur}/{comp}") };
        match sys::mkdir_at(root.as_raw_fd(), OsStr::new(&cur), 0o755) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("create directory {cur}: {e}")),
        }
    }
    Ok(())
}

/// Rebuilds `tree` in the file system whose root directory is `root` (an empty, writable new
/// instance), reading file data from `extents` (the file system's image).
pub fn restore_tree<S: ImageStore>(store: &S, root: BorrowedFd<'_>, tree: &Tree, extents: &[Extent]) -> Result<(), String> {
    make_dirs(root, &tree.at)?;
    let at_rel = tree.at.trim_start_matches('/');
    let at = if at_rel.is_empty() {
        sys::open_at(root.as_raw_fd(), OsStr::new("."), libc::O_RDONLY | libc::O_DIRECTORY, 0)
    } else {
        sys::open_at(root.as_raw_fd(), OsStr::new(at_rel), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)
    }
    .map_err(|e| format!("open {}: {e}", tree.at))?;
    let atfd = at.as_raw_fd();
    let mut dirs = Vec::new();
    for n in &tree.nodes {
        let p = OsStr::from_bytes(&n.path);
        let err = |what: &str, e: std::io::Error| format!("{what} {}: {e}", show(&n.path));
        let ifmt = match &n.kind {
            NodeKind::Dir => {
                if !n.path.is_empty() {
                    sys::mkdir_at(atfd, p, 0o700).map_err(|e| err("create directory", e))?;
                }
                dirs.push(n);
                libc::S_IFDIR
            }
            NodeKind::File { size, ranges, base } => {
                let fd = sys::open_at(atfd, p, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW, 0o600).map_err(|e| err("create", e))?;
                let file = std::fs::File::from(fd);
                file.set_len(*size).map_err(|e| err("set the size of", e))?;
                let mut buf = Vec::new();
                for &(off, len) in ranges {
                    for (pos, len) in pieces(off, len) {
                        let start = base + pos;
                        let a = extents.partition_point(|e| e.start < start);
                        let b = extents.partition_point(|e| e.start < start + len);
                        buf.clear();
                        buf.resize(len as usize, 0);
                        zap_store::materialize(store, &extents[a..b], start, &mut buf).map_err(|e| format!("read data of {}: {e}", show(&n.path)))?;
                        file.write_all_at(&buf, pos).map_err(|e| err("write", e))?;
                    }
                }
                libc::S_IFREG
            }
            NodeKind::Symlink(target) => {
                sys::symlink_at(target, atfd, p).map_err(|e| err("create symlink", e))?;
                libc::S_IFLNK
            }
            NodeKind::HardLink(first) => {
                let new = join(at_rel.as_bytes(), &n.path);
                sys::link_at(root.as_raw_fd(), OsStr::from_bytes(first), OsStr::from_bytes(&new)).map_err(|e| err("link", e))?;
                continue;
            }
            NodeKind::Fifo | NodeKind::Socket | NodeKind::CharDev(_) | NodeKind::BlockDev(_) => {
                let (t, rdev) = match n.kind {
                    NodeKind::Fifo => (libc::S_IFIFO, 0),
                    NodeKind::Socket => (libc::S_IFSOCK, 0),
                    NodeKind::CharDev(d) => (libc::S_IFCHR, d),
                    NodeKind::BlockDev(d) => (libc::S_IFBLK, d),
                    _ => unreachable!(),
                };
                sys::mknod_at(atfd, p, t | 0o600, rdev).map_err(|e| err("create node", e))?;
                t
            }
        };
        sys::chown_at(atfd, p, n.uid, n.gid).map_err(|e| err("set the owner of", e))?;
        if ifmt != libc::S_IFLNK {
            if n.path.is_empty() {
                sys::chmod_fd(at.as_fd(), n.mode).map_err(|e| err("set the mode of", e))?;
            } else {
                sys::chmod_at(atfd, p, n.mode).map_err(|e| err("set the mode of", e))?;
            }
        }
        set_xattrs(atfd, n, ifmt)?;
        if ifmt != libc::S_IFDIR {
            sys::set_times_at(atfd, p, n.atime, n.mtime).map_err(|e| err("set the times of", e))?;
            if n.flags != 0 && ifmt == libc::S_IFREG {
                let fd = sys::open_at(atfd, p, libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK, 0).map_err(|e| err("open", e))?;
                sys::set_inode_flags(fd.as_fd(), n.flags).map_err(|e| err("set the inode flags of", e))?;
            }
        }
    }
    // Directories last, deepest first: adding their entries changed their times.
    for n in dirs.iter().rev() {
        let p = OsStr::from_bytes(&n.path);
        let err = |what: &str, e: std::io::Error| format!("{what} {}: {e}", show(&n.path));
        sys::set_times_at(atfd, p, n.atime, n.mtime).map_err(|e| err("set the times of", e))?;
        if n.flags != 0 {
            let fd = if n.path.is_empty() {
                sys::open_at(atfd, OsStr::new("."), libc::O_RDONLY | libc::O_DIRECTORY, 0)
            } else {
                sys::open_at(atfd, p, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW, 0)
            }
            .map_err(|e| err("open", e))?;
            sys::set_inode_flags(fd.as_fd(), n.flags).map_err(|e| err("set the inode flags of", e))?;
        }
    }
    Ok(())
}

fn set_xattrs(atfd: i32, n: &Node, ifmt: u32) -> Result<(), String> {
    let p = OsStr::from_bytes(&n.path);
    for (name, value) in &n.xattrs {
        let r = match sys::set_xattr(atfd, p, None, name, value) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) && (ifmt == libc::S_IFREG || ifmt == libc::S_IFDIR) => {
                let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK;
                let fd = if n.path.is_empty() { sys::open_at(atfd, OsStr::new("."), flags, 0) } else { sys::open_at(atfd, p, flags, 0) };
                fd.and_then(|fd| sys::set_xattr(atfd, p, Some(fd.as_fd()), name, value))
            }
            r => r,
        };
        r.map_err(|e| format!("set extended attribute {} of {}: {e}", String::from_utf8_lossy(name), show(&n.path)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_ranges() {
        let v: Vec<_> = pieces(PIECE - 10, 20).collect();
        assert_eq!(v, vec![(PIECE - 10, 10), (PIECE, 10)]);
        let v: Vec<_> = pieces(0, 3 * PIECE).collect();
        assert_eq!(v.len(), 3);
        assert_eq!(pieces(5, 0).count(), 0);
        assert_eq!(join(b"", b"a"), b"a");
        assert_eq!(join(b"a", b"b"), b"a/b");
    }
}
