//! Mounts made inside a pod: in the pod's own mount namespace and in mount namespaces its
//! processes made for themselves.
//!
//! ## What is saved
//! A namespace is saved as how it differs from where it started ([`MountNs`]): for the pod's own
//! namespace, the mounts `zap-init` had set up (`<pod dir>/mounts.base`, recorded when the pod was
//! created: the host's tree as the pod saw it, plus the pod's `/proc`, `/sys` and
//! `/sys/fs/cgroup`); for a namespace a process made (`unshare`), the pod's mounts at the
//! checkpoint. Mounts are compared by key ([`table`]): mount points from the root down, type,
//! device and root. For each namespace:
//! - *removed*: starting mounts that are gone (not those whose mount point was deleted outside
//!   the pod: the kernel detached them, the pod did not);
//! - *kept*: starting mounts whose per-mount flags (read-only, nosuid, nodev, noexec, atime,
//!   nosymfollow) changed, or whose propagation is not private;
//! - *added*: new mounts in creation order, parents first: mount point, parent, flags,
//!   propagation (peer group, master, unbindable) and source: either a directory of a starting
//!   mount (a bind mount, of a directory or a file, of a file system the pod did not create) or
//!   a directory of a file system created in the pod ([`Superblock`]: type, source, options).
//!
//! In-memory file systems (tmpfs, ramfs) are saved with their files ([`content`]); for each, the
//! smallest set of directories that covers every mount of it is read from a detached copy of a
//! mount, taken in a private copy of the namespace where covering mounts are taken away first,
//! so a mount hidden under another (stacked mounts, a mount over its mount point's parent) is
//! read whole. Other file systems the pod may create are remade empty with their options:
//! procfs, sysfs, mqueue, devpts, cgroup2, overlay (its directories must exist), debugfs,
//! tracefs, securityfs, configfs, pstore, efivarfs, fusectl, binfmt_misc, and bpf and hugetlbfs
//! when empty. Refused at checkpoint, naming the mount point: file systems on block devices the
//! host has not mounted, FUSE, network file systems, namespace files (`nsfs`), cgroup v1, a pod
//! that changed its root mount, a bpf or hugetlbfs with files in it, an overlay whose
//! directories are gone.
//!
//! ## Restore ([`restore::Restorer`])
//! In the new pod, before any of its processes is restored (in a nested namespace, as soon as
//! the first process of it has made it), from a thread of Zap that joined the namespace: every
//! mount is made private (nested namespaces, copied from the pod's, start as peers of it);
//! removed mounts are detached; new file systems are created detached with `fsopen`/`fsmount`,
//! in a helper that joined the pod's PID, network, IPC and cgroup namespaces (procfs, sysfs,
//! mqueue and cgroup2 belong to those), and in-memory ones filled before they are mounted
//! anywhere; each added mount is a detached copy (`open_tree`) of its source, given its flags
//! (`mount_setattr`) and attached under its parent (`move_mount`, relative to a descriptor of the
//! parent, so later mounts never get in the way); then flags of kept mounts, then propagation:
//! peer groups and masters are joined with `MOVE_MOUNT_SET_GROUP` (also across namespaces),
//! then made slave, shared or unbindable. The namespace is then read back and compared with what
//! was saved; a difference fails the restore.
//!
//! Limits: a pseudo file system is remade in the namespaces of the processes of the mount
//! namespace it is found in (a sysfs of another network namespace comes back as theirs); the
//! pages of a restored tmpfs are charged to Zap's memory cgroup, not the pod's; the status
//! change times and inode numbers of files are new.
pub mod content;
pub mod restore;
pub mod table;

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use serde::{Deserialize, Serialize};
use zap_chunker::ChunkerConfig;
use zap_store::{ChunkSink, Image, ImageKind};

use crate::sys::{mount as sys, ns};
use crate::{EngineError, Result};
use table::{Entry, Table};

/// File name of the starting mount table in the pod directory.
pub const BASE_FILE: &str = "mounts.base";

/// A mount of the namespace's starting set, by key and type.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MountRef {
    /// Mount points from the root mount down to it.
    pub key: Vec<String>,
    /// File system type.
    pub fstype: String,
}

impl MountRef {
    /// Its mount point.
    pub fn mountpoint(&self) -> &str {
        self.key.last().map_or("/", String::as_str)
    }
}

/// How a mount propagates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Propagation {
    /// Its peer group (`shared:N`, as numbered at the checkpoint).
    pub shared: Option<u64>,
    /// The peer group it receives from (`master:N`).
    pub master: Option<u64>,
    /// `unbindable`.
    pub unbindable: bool,
}

impl Propagation {
    fn of(e: &Entry) -> Self {
        Propagation { shared: e.shared, master: e.master, unbindable: e.unbindable }
    }

    /// True for a private mount.
    pub fn is_private(&self) -> bool {
        self.shared.is_none() && self.master.is_none() && !self.unbindable
    }
}

/// What an added mount shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// A directory (or file) of a starting mount: its path below that mount's root.
    Base {
        /// The starting mount.
        at: MountRef,
        /// Path below its root (empty: its root).
        path: String,
    },
    /// A directory of a file system created in the pod.
    Fresh {
        /// Index in [`MountsImage::superblocks`].
        sb: usize,
        /// The directory, from the file system's root.
        root: String,
    },
}

/// Where an added mount is attached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Parent {
    /// On a starting mount.
    Base(MountRef),
    /// On an added mount of the same namespace (its index).
    Added(usize),
}

/// A mount added in the namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Added {
    /// Mount point.
    pub mountpoint: String,
    /// Parent mount.
    pub parent: Parent,
    /// What it shows.
    pub source: Source,
    /// Per-mount flags.
    pub flags: u64,
    /// Propagation.
    pub prop: Propagation,
    /// File system type (for checks and messages).
    pub fstype: String,
    /// Its root in its file system (for checks).
    pub root: String,
}

/// A starting mount whose flags changed or that propagates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    /// The mount.
    pub at: MountRef,
    /// Its flags, when they changed.
    pub flags: Option<u64>,
    /// Its propagation.
    pub prop: Propagation,
}

/// One mount namespace, as it differs from where it started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountNs {
    /// Starting mounts that are gone.
    pub removed: Vec<MountRef>,
    /// Starting mounts with other flags or propagation.
    pub kept: Vec<Kept>,
    /// New mounts, parents first.
    pub added: Vec<Added>,
}

impl MountNs {
    /// True when nothing differs.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.kept.is_empty() && self.added.is_empty()
    }
}

/// A file system created in the pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Superblock {
    /// Type.
    pub fstype: String,
    /// Source (as the mount table shows it).
    pub source: String,
    /// Options (`key` or `key=value`), `rw`/`ro` left out.
    pub options: Vec<(String, Option<String>)>,
    /// Read-only file system.
    pub readonly: bool,
    /// Its files (in-memory file systems).
    pub trees: Vec<content::Tree>,
    /// Name of the image holding file data, if any.
    pub image: Option<String>,
}

/// Every mount namespace of a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountsImage {
    /// File systems created in the pod.
    pub superblocks: Vec<Superblock>,
    /// The pod's own mount namespace.
    pub pod: MountNs,
    /// Mount namespaces processes made, in the order of [`crate::pod::nested`]'s namespaces.
    pub nested: Vec<MountNs>,
}

fn pod_err(pod: &str, step: impl Into<String>, detail: impl std::fmt::Display) -> EngineError {
    EngineError::Pod { pod: pod.to_string(), step: step.into(), detail: detail.to_string() }
}

/// Opens `/proc/PID/ns/mnt`.
pub(crate) fn ns_file(pid: i32) -> std::io::Result<std::fs::File> {
    std::fs::File::open(format!("/proc/{pid}/ns/mnt"))
}

/// Reads the mount table of the thread's own mount namespace through the host's `/proc`
/// (`proc` is a descriptor of it opened before the thread joined another namespace).
fn own_table(proc: &OwnedFd) -> std::io::Result<Table> {
    let fd = sys::open_at(proc.as_raw_fd(), std::ffi::OsStr::new("thread-self/mountinfo"), libc::O_RDONLY, 0)?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut text)?;
    Table::parse(&text).map_err(std::io::Error::other)
}

fn host_proc() -> std::io::Result<OwnedFd> {
    sys::open_at(sys::CWD, std::ffi::OsStr::new("/proc"), libc::O_PATH | libc::O_DIRECTORY, 0)
}

/// The mount table of the mount namespace of process `pid`, as seen from that namespace's root
/// (whatever the process's own root).
pub fn read_table(pid: i32) -> std::io::Result<Table> {
    let ns = ns_file(pid)?;
    let proc = host_proc()?;
    ns::in_namespaces(&[(ns.as_fd(), libc::CLONE_NEWNS)], false, || own_table(&proc))
}

/// A detached copy (without submounts) of directory `sub` (empty: the root) of the mount `key`
/// (type `fstype`, root `root`) of the mount namespace `ns`: made in a private copy of the
/// namespace in which the mounts that cover it are detached first. (The kernel lets a detached
/// copy be copied again only from the namespace it was made in, so `sub` is taken there.)
pub(crate) fn clone_mount(ns: &std::fs::File, key: &[String], fstype: &str, root: &str, sub: &str) -> std::io::Result<OwnedFd> {
    let proc = host_proc()?;
    ns::in_namespaces(&[(ns.as_fd(), libc::CLONE_NEWNS)], true, || {
        let missing = || std::io::Error::new(std::io::ErrorKind::NotFound, format!("no mount {} ({fstype})", key.join(" > ")));
        for _ in 0..4096 {
            let t = own_table(&proc)?;
            let keys = t.keys();
            let i = (0..t.mounts.len()).find(|&i| keys[i] == key && t.mounts[i].fstype == fstype && t.mounts[i].root == root).ok_or_else(missing)?;
            let mut hiders = t.hiders(i);
            if hiders.is_empty() {
                let mp = std::ffi::OsStr::new(&t.mounts[i].mountpoint);
                let id = sys::mount_id_at(sys::CWD, mp)?;
                if id != t.mounts[i].id {
                    return Err(std::io::Error::other(format!("{} leads to mount {id}, not {}", t.mounts[i].mountpoint, t.mounts[i].id)));
                }
                let whole = sys::open_tree(sys::CWD, mp, true)?;
                return if sub.is_empty() { Ok(whole) } else { sys::open_tree(whole.as_raw_fd(), std::ffi::OsStr::new(sub), true) };
            }
            hiders.sort_by_key(|&h| t.mounts[h].mountpoint.len());
            let mut done = false;
            for h in hiders {
                if sys::umount_detach(std::ffi::OsStr::new(&t.mounts[h].mountpoint)).is_ok() {
                    done = true;
                    break;
                }
            }
            if !done {
                return Err(std::io::Error::other(format!("cannot uncover {}", t.mounts[i].mountpoint)));
            }
        }
        Err(std::io::Error::other("too many covering mounts"))
    })
}

/// What Zap can remake of a file system the pod created: `Some(true)` with its files (in-memory
/// file systems), `Some(false)` empty, `None` not at all.
fn remakeable(fstype: &str) -> Option<bool> {
    match fstype {
        "tmpfs" | "ramfs" => Some(true),
        "proc" | "sysfs" | "mqueue" | "devpts" | "cgroup2" | "overlay" | "debugfs" | "tracefs" | "securityfs" | "configfs" | "pstore"
        | "efivarfs" | "fusectl" | "binfmt_misc" | "bpf" | "hugetlbfs" => Some(false),
        _ => None,
    }
}

/// Why a file system cannot be remade, for the error.
fn why_not(e: &Entry) -> String {
    match e.fstype.as_str() {
        "nsfs" => "a namespace file bound to a path (e.g. `ip netns add`) is not supported".into(),
        "cgroup" => "cgroup v1 hierarchies are not supported".into(),
        t if t == "fuse" || t == "fuseblk" || t.starts_with("fuse.") => "FUSE file systems are not supported (their server's state cannot be saved)".into(),
        t if ["nfs", "nfs4", "cifs", "smb3", "9p", "ceph", "virtiofs"].contains(&t) => format!("network file systems ({t}) are not supported"),
        t if e.source.starts_with("/dev/") => format!("a {t} file system on block device {} that the host has not mounted is not supported", e.source),
        t => format!("file system type {t} is not supported"),
    }
}

/// Splits super block options at commas that are not escaped.
fn split_options(s: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut esc = false;
    for c in s.chars() {
        if esc {
            cur.push(c);
            esc = false;
        } else if c == '\\' {
            cur.push(c);
            esc = true;
        } else if c == ',' {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out.into_iter()
        .filter(|o| !o.is_empty() && o != "rw" && o != "ro" && o != "seclabel")
        .map(|o| match o.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (o, None),
        })
        .collect()
}

/// Where a file system created in the pod is mounted, for reading its files.
struct SbMount {
    ns: usize,
    key: Vec<String>,
    root: String,
    mountpoint: String,
}

/// Saves the mount namespaces of a stopped pod: [`Saver::save_ns`] for each, then
/// [`Saver::finish`] reads the files of the in-memory file systems.
pub struct Saver {
    pod: String,
    superblocks: Vec<Superblock>,
    dev_sb: HashMap<(u32, u32), usize>,
    sb_mounts: Vec<Vec<SbMount>>,
    namespaces: Vec<std::fs::File>,
}

impl Saver {
    /// A saver for pod `pod`.
    pub fn new(pod: &str) -> Self {
        Saver { pod: pod.to_string(), superblocks: Vec::new(), dev_sb: HashMap::new(), sb_mounts: Vec::new(), namespaces: Vec::new() }
    }

    /// Saves the mount namespace of process `pid` (host pid) as it differs from `base` (compared
    /// with devices when `by_dev`); `now` is its table read already.
    pub fn save_ns(&mut self, pid: i32, base: &Table, now: &Table, by_dev: bool) -> Result<MountNs> {
        let pod = self.pod.clone();
        let ns_index = self.namespaces.len();
        self.namespaces.push(ns_file(pid).map_err(|e| pod_err(&pod, format!("open mount namespace of pid {pid}"), e))?);
        let (map, gone) = table::diff(base, now, by_dev);
        let kb = base.keys();
        let kn = now.keys();
        let mut out = MountNs::default();
        let base_ref = |j: usize| MountRef { key: kb[j].clone(), fstype: base.mounts[j].fstype.clone() };
        // Indices of `now` in the order added mounts are saved: parents first.
        let mut added_at: HashMap<usize, usize> = HashMap::new();
        let order = parents_first(now);
        for i in order {
            let e = &now.mounts[i];
            let what = || format!("save mount {} ({})", e.mountpoint, e.fstype);
            if let Some(j) = map[i] {
                let flags = (e.flags != base.mounts[j].flags).then_some(e.flags);
                let prop = Propagation::of(e);
                if flags.is_some() || !prop.is_private() {
                    out.kept.push(Kept { at: base_ref(j), flags, prop });
                }
                continue;
            }
            let parent = match now.parent_of(i) {
                None => return Err(pod_err(&pod, what(), "the pod replaced its root mount (pivot_root): not supported")),
                Some(p) => match (map[p], added_at.get(&p)) {
                    (Some(j), _) => Parent::Base(base_ref(j)),
                    (None, Some(&k)) => Parent::Added(k),
                    (None, None) => return Err(pod_err(&pod, what(), "its parent mount was not saved first")),
                },
            };
            let source = self.source_of(e, base, &kb, &map, ns_index, &kn[i]).map_err(|d| pod_err(&pod, what(), d))?;
            if e.fstype == "overlay" {
                check_overlay(pid, e).map_err(|d| pod_err(&pod, what(), d))?;
            }
            added_at.insert(i, out.added.len());
            out.added.push(Added {
                mountpoint: e.mountpoint.clone(),
                parent,
                source,
                flags: e.flags,
                prop: Propagation::of(e),
                fstype: e.fstype.clone(),
                root: e.root.clone(),
            });
        }
        // A starting mount whose mount point is gone was not unmounted by the pod: deleting a
        // mount point outside (the host's `ip netns del` of a namespace file that existed when
        // the pod was made) detaches the mounts on it in every namespace.
        let root = format!("/proc/{pid}/root");
        out.removed = gone
            .into_iter()
            .filter(|&j| std::fs::symlink_metadata(format!("{root}{}", base.mounts[j].mountpoint)).is_ok())
            .map(base_ref)
            .collect();
        Ok(out)
    }

    /// The source of added mount `e`: a starting mount of the same file system whose root holds
    /// its root, or a file system created in the pod (registered on first sight).
    fn source_of(&mut self, e: &Entry, base: &Table, kb: &[Vec<String>], map: &[Option<usize>], ns: usize, key: &[String]) -> std::result::Result<Source, String> {
        // Only starting mounts still mounted: a device number of a file system that is gone may
        // have been given to one the pod created since.
        let mut candidates: Vec<usize> = map
            .iter()
            .flatten()
            .copied()
            .filter(|&j| base.mounts[j].dev == e.dev && base.mounts[j].fstype == e.fstype && table::path_within(&e.root, &base.mounts[j].root))
            .collect();
        candidates.sort_by_key(|&j| (kb[j].len(), j));
        if let Some(&j) = candidates.first() {
            let path = table::relative(&e.root, &base.mounts[j].root);
            return Ok(Source::Base { at: MountRef { key: kb[j].clone(), fstype: base.mounts[j].fstype.clone() }, path });
        }
        let sb = match self.dev_sb.get(&e.dev) {
            Some(&sb) => sb,
            None => {
                if remakeable(&e.fstype).is_none() {
                    return Err(why_not(e));
                }
                let opts = split_options(&e.super_opts);
                let readonly = e.super_opts.split(',').any(|o| o == "ro");
                self.superblocks.push(Superblock {
                    fstype: e.fstype.clone(),
                    source: e.source.clone(),
                    options: opts,
                    readonly,
                    trees: Vec::new(),
                    image: None,
                });
                self.sb_mounts.push(Vec::new());
                self.dev_sb.insert(e.dev, self.superblocks.len() - 1);
                self.superblocks.len() - 1
            }
        };
        self.sb_mounts[sb].push(SbMount { ns, key: key.to_vec(), root: e.root.clone(), mountpoint: e.mountpoint.clone() });
        Ok(Source::Fresh { sb, root: e.root.clone() })
    }

    /// Reads the files of every in-memory file system created in the pod (and checks that those
    /// remade empty are empty), copying file data out (the pod may run on once this returns;
    /// [`FileData::store`] stores it). Returns the file systems and their data.
    pub fn finish(self) -> Result<(Vec<Superblock>, FileData)> {
        let Saver { pod, mut superblocks, sb_mounts, namespaces, .. } = self;
        let mut data = FileData::default();
        for (n, (sb, mounts)) in superblocks.iter_mut().zip(&sb_mounts).enumerate() {
            let must_be_empty = matches!(sb.fstype.as_str(), "bpf" | "hugetlbfs");
            if remakeable(&sb.fstype) != Some(true) && !must_be_empty {
                continue;
            }
            // The smallest set of directories that holds every mounted one.
            let mut roots: Vec<&SbMount> = Vec::new();
            for m in mounts {
                if !mounts.iter().any(|o| o.root != m.root && table::path_within(&m.root, &o.root)) && !roots.iter().any(|r| r.root == m.root) {
                    roots.push(m);
                }
            }
            let mut out = content::DataOut::default();
            for m in roots {
                let step = format!("save the files of {} mounted at {}", sb.fstype, m.mountpoint);
                let fd = clone_mount(&namespaces[m.ns], &m.key, &sb.fstype, &m.root, "").map_err(|e| pod_err(&pod, &step, e))?;
                // Reading must not change access times.
                sys::mount_setattr(fd.as_fd(), sys::attr::NOATIME, sys::attr::ATIME_MASK, 0).map_err(|e| pod_err(&pod, &step, e))?;
                if must_be_empty {
                    let dir = sys::open_at(fd.as_raw_fd(), std::ffi::OsStr::new("."), libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(|e| pod_err(&pod, &step, e))?;
                    let names = sys::list_dir(dir.as_fd()).map_err(|e| pod_err(&pod, &step, e))?;
                    if let Some(first) = names.first() {
                        let what = format!("it holds {} ({} entries); only an empty {} is restored", first.to_string_lossy(), names.len(), sb.fstype);
                        return Err(pod_err(&pod, format!("save mount {} ({})", m.mountpoint, sb.fstype), what));
                    }
                    continue;
                }
                let tree = content::save_tree(fd.as_fd(), &m.root, &mut out).map_err(|e| pod_err(&pod, &step, e))?;
                sb.trees.push(tree);
            }
            if !out.pieces.is_empty() {
                let name = format!("mounts/fs{n}");
                sb.image = Some(name.clone());
                data.0.push((name, out));
            }
        }
        Ok((superblocks, data))
    }
}

/// File data of the in-memory file systems of a pod, copied out and not yet stored: (image
/// name, data).
#[derive(Default)]
pub struct FileData(Vec<(String, content::DataOut)>);

impl FileData {
    /// Bytes copied.
    pub fn bytes(&self) -> u64 {
        self.0.iter().map(|d| d.1.bytes()).sum()
    }

    /// Chunks and stores the data through `sink`; returns the images.
    pub fn store<W: ChunkSink>(self, sink: &mut W, cfg: &ChunkerConfig) -> Result<Vec<Image>> {
        let mut images = Vec::new();
        for (name, d) in self.0 {
            let extents = d.store(sink, cfg)?;
            images.push(Image { name, kind: ImageKind::File, extents });
        }
        Ok(images)
    }
}

/// Checks that the directories an overlay was made of still exist (seen from the namespace of
/// `pid`).
fn check_overlay(pid: i32, e: &Entry) -> std::result::Result<(), String> {
    let mut dirs = Vec::new();
    for (k, v) in split_options(&e.super_opts) {
        if let Some(v) = v {
            match k.as_str() {
                "lowerdir" | "lowerdir+" | "datadir+" => dirs.extend(v.split(':').filter(|d| !d.is_empty()).map(|d| d.replace("\\:", ":"))),
                "upperdir" | "workdir" => dirs.push(v),
                _ => {}
            }
        }
    }
    let ns = ns_file(pid).map_err(|e| e.to_string())?;
    let missing = ns::in_namespaces(&[(ns.as_fd(), libc::CLONE_NEWNS)], false, || {
        Ok(dirs.iter().find(|d| sys::stat_at(sys::CWD, std::ffi::OsStr::new(d.as_str())).is_err()).cloned())
    })
    .map_err(|e| e.to_string())?;
    match missing {
        Some(d) => Err(format!("the overlay's directory {d} no longer exists")),
        None => Ok(()),
    }
}

/// Indices of `t` with every mount after its parent, otherwise in table order.
fn parents_first(t: &Table) -> Vec<usize> {
    let mut done = vec![false; t.mounts.len()];
    let mut out = Vec::with_capacity(t.mounts.len());
    for i in 0..t.mounts.len() {
        let mut stack = vec![i];
        while let Some(&x) = stack.last() {
            if done[x] {
                stack.pop();
                continue;
            }
            match t.parent_of(x).filter(|&p| !done[p] && !stack.contains(&p)) {
                Some(p) => stack.push(p),
                None => {
                    done[x] = true;
                    out.push(x);
                    stack.pop();
                }
            }
        }
    }
    out
}

/// The starting table of the pod's mount namespace: `<pod dir>/mounts.base` as recorded at
/// creation, or, for pods created before it was recorded, the host's table with the mounts
/// `zap-init` adds (compared without devices). Returns the table and whether to compare devices.
pub fn base_table(pod_dir: &std::path::Path) -> Result<(Table, bool)> {
    let path = pod_dir.join(BASE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok((Table::parse(&text).map_err(|e| EngineError::Proc { pid: 0, detail: format!("{}: {e}", path.display()) })?, true)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| EngineError::io("read", "/proc/self/mountinfo".as_ref(), e))?;
            let mut t = Table::parse(&text).map_err(|e| EngineError::Proc { pid: 0, detail: e })?;
            let keys = t.keys();
            let top = |mp: &str| (0..t.mounts.len()).rev().find(|&i| keys[i].last().map(String::as_str) == Some(mp) && keys[i].len() == 2);
            let fake = |id: u64, parent: u64, mp: &str, fstype: &str| Entry {
                id,
                parent,
                dev: (0, 0),
                root: "/".into(),
                mountpoint: mp.into(),
                flags: table::mount_flags("rw,nosuid,nodev,noexec,relatime"),
                shared: None,
                master: None,
                unbindable: false,
                fstype: fstype.into(),
                source: fstype.into(),
                super_opts: "rw".into(),
            };
            let ids = u64::MAX - 3;
            if let (Some(p), Some(s)) = (top("/proc"), top("/sys")) {
                let (pp, sp) = (t.mounts[p].id, t.mounts[s].id);
                t.mounts.push(fake(ids, pp, "/proc", "proc"));
                t.mounts.push(fake(ids + 1, sp, "/sys", "sysfs"));
                t.mounts.push(fake(ids + 2, ids + 1, "/sys/fs/cgroup", "cgroup2"));
            }
            Ok((t, false))
        }
        Err(e) => Err(EngineError::io("read", &path, e)),
    }
}

/// Records the starting mount table of a new pod whose init is `init_pid` (after its setup).
pub fn record_base(pod_dir: &std::path::Path, init_pid: i32) -> Result<()> {
    let path = format!("/proc/{init_pid}/mountinfo");
    let text = std::fs::read_to_string(&path).map_err(|e| EngineError::io("read", path.as_ref(), e))?;
    let out = pod_dir.join(BASE_FILE);
    std::fs::write(&out, text).map_err(|e| EngineError::io("write", &out, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        assert_eq!(
            split_options("rw,size=1024k,mode=755,inode64"),
            vec![("size".into(), Some("1024k".into())), ("mode".into(), Some("755".into())), ("inode64".into(), None)]
        );
        assert_eq!(split_options("ro,lowerdir=/a\\,b:/c"), vec![("lowerdir".into(), Some("/a\\,b:/c".into()))]);
        let t = Table::parse(
            "1 0 8:1 / / rw - ext4 /dev/sda rw\n5 4 0:9 / /a/b rw - tmpfs t rw\n4 1 0:8 / /a rw - tmpfs t rw\n6 1 0:10 / /c rw - tmpfs t rw\n",
        )
        .unwrap();
        assert_eq!(parents_first(&t), vec![0, 2, 1, 3]);
    }
}
