//! Rebuilding saved mount namespaces (see the module doc of [`super`]).
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use zap_store::{Image, ImageStore};

use super::table::{self, Table};
use super::{content, ns_file, own_table, MountNs, MountRef, MountsImage, Parent, Propagation, Source};
use crate::sys::{mount as sys, ns, proc as sysproc};
use crate::{EngineError, Result};

/// Namespaces a new file system is created in (those of a process of the mount namespace).
const FS_NAMESPACES: i32 = libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWCGROUP;

fn pod_err(pod: &str, step: impl Into<String>, detail: impl std::fmt::Display) -> EngineError {
    EngineError::Pod { pod: pod.to_string(), step: step.into(), detail: detail.to_string() }
}

/// A mount whose master peer group had no restored mount yet.
struct Pending {
    fd: OwnedFd,
    prop: Propagation,
    mountpoint: String,
}

/// Restores the mount namespaces of a pod, one after the other, sharing the file systems created
/// and the peer groups joined so far.
pub struct Restorer<'a, S> {
    pod: String,
    image: &'a MountsImage,
    store: &'a S,
    images: &'a [Image],
    /// Created file systems: index → detached instance.
    instances: HashMap<usize, OwnedFd>,
    /// Saved peer group → a restored mount in it.
    reps: HashMap<u64, OwnedFd>,
    pending: Vec<Pending>,
}

impl<'a, S: ImageStore> Restorer<'a, S> {
    /// A restorer of `image` whose file data is in `images` of `store`.
    pub fn new(pod: &str, image: &'a MountsImage, store: &'a S, images: &'a [Image]) -> Self {
        Restorer { pod: pod.to_string(), image, store, images, instances: HashMap::new(), reps: HashMap::new(), pending: Vec::new() }
    }

    /// The instance of file system `sb`, created (and filled) on first use in the namespaces of
    /// process `pid`.
    fn instance(&mut self, sb: usize, pid: i32) -> Result<()> {
        if self.instances.contains_key(&sb) {
            return Ok(());
        }
        let s = self.image.superblocks.get(sb).ok_or_else(|| pod_err(&self.pod, "restore mounts", format!("no file system {sb} in the image")))?;
        let step = format!("create {} file system ({})", s.fstype, s.source);
        let pidfd = sysproc::pidfd_open(pid).map_err(|e| pod_err(&self.pod, &step, format!("pidfd of {pid}: {e}")))?;
        let fd = sys::make_fs(Some(pidfd.as_fd()), FS_NAMESPACES, &s.fstype, &s.source, &s.options).map_err(|e| pod_err(&self.pod, &step, e))?;
        if !s.trees.is_empty() {
            let extents = match &s.image {
                Some(name) => {
                    let img = self.images.iter().find(|i| &i.name == name);
                    img.ok_or_else(|| pod_err(&self.pod, &step, format!("the checkpoint lacks image {name}")))?.extents.as_slice()
                }
                None => &[],
            };
            for t in &s.trees {
                content::restore_tree(self.store, fd.as_fd(), t, extents).map_err(|e| pod_err(&self.pod, format!("{step}: fill {}", t.at), e))?;
            }
        }
        if s.readonly {
            sys::make_fs_readonly(fd.as_fd()).map_err(|e| pod_err(&self.pod, &step, format!("make it read-only: {e}")))?;
        }
        self.instances.insert(sb, fd);
        Ok(())
    }

    /// Rebuilds `ns` in the mount namespace of process `pid` (host pid; the pod's init for the
    /// pod's own namespace). `nested`: the namespace is a copy of the pod's, whose mounts start
    /// as peers of the pod's and are made private first.
    pub fn restore_ns(&mut self, ns: &MountNs, pid: i32, nested: bool) -> Result<()> {
        let pod = self.pod.clone();
        if ns.is_empty() && !nested {
            return Ok(());
        }
        let nsf = ns_file(pid).map_err(|e| pod_err(&pod, format!("open mount namespace of pid {pid}"), e))?;
        // Sources: detached copies of directories of starting mounts, taken before anything is
        // removed (by added mount), and the file systems created in the pod.
        let mut base_src: HashMap<usize, OwnedFd> = HashMap::new();
        let mut live_before: Option<Table> = None;
        for (n, a) in ns.added.iter().enumerate() {
            match &a.source {
                Source::Base { at, path } => {
                    if live_before.is_none() {
                        live_before = Some(super::read_table(pid).map_err(|e| pod_err(&pod, "read mount table", e))?);
                    }
                    let live = live_before.as_ref().expect("read above");
                    let keys = live.keys();
                    let i = live.find(&keys, &at.key, &at.fstype).ok_or_else(|| {
                        pod_err(&pod, format!("restore mount {}", a.mountpoint), format!("its source, mount {} ({}), is not on this host", at.mountpoint(), at.fstype))
                    })?;
                    let fd = super::clone_mount(&nsf, &at.key, &at.fstype, &live.mounts[i].root, path)
                        .map_err(|e| pod_err(&pod, format!("restore mount {}: copy its source {}/{path}", a.mountpoint, at.mountpoint()), e))?;
                    base_src.insert(n, fd);
                }
                Source::Fresh { sb, .. } => self.instance(*sb, pid)?,
            }
        }
        let instances = &self.instances;
        let proc = super::host_proc().map_err(|e| pod_err(&pod, "open /proc", e))?;
        let mut work = |reps: &mut HashMap<u64, OwnedFd>, pending: &mut Vec<Pending>| -> std::result::Result<(), String> {
            if nested {
                sys::make_all_private().map_err(|e| format!("make mounts private: {e}"))?;
            }
            let live = own_table(&proc).map_err(|e| format!("read mount table: {e}"))?;
            let keys = live.keys();
            let find = |r: &MountRef| live.find(&keys, &r.key, &r.fstype);
            // Starting mounts the namespace no longer had, deepest first.
            for r in ns.removed.iter().rev() {
                if let Some(i) = find(r) {
                    let mp = OsStr::new(&live.mounts[i].mountpoint);
                    match sys::mount_id_at(sys::CWD, mp) {
                        Ok(id) if id == live.mounts[i].id => sys::umount_detach(mp).map_err(|e| format!("unmount {}: {e}", r.mountpoint()))?,
                        _ => {} // gone with a parent detached before, or covered: not reachable anyway
                    }
                }
            }
            // Descriptors of starting mounts that are parents or change.
            let mut base_fd: HashMap<&MountRef, OwnedFd> = HashMap::new();
            let wanted = ns.added.iter().filter_map(|a| match &a.parent {
                Parent::Base(r) => Some(r),
                Parent::Added(_) => None,
            });
            let wanted: Vec<&MountRef> = wanted.chain(ns.kept.iter().map(|k| &k.at)).collect();
            // Covered ones first (a starting mount under the pod's /proc or /sys, changed by a
            // recursive operation such as `mount --make-rshared /`): reaching them replaces the
            // mounts that cover them by copies.
            for r in &wanted {
                let i = find(r).ok_or_else(|| format!("mount {} ({}) is not on this host", r.mountpoint(), r.fstype))?;
                if !base_fd.contains_key(r) && !live.hiders(i).is_empty() {
                    let fd = uncover(&proc, r).map_err(|e| format!("reach mount {} under the mounts that cover it: {e}", r.mountpoint()))?;
                    base_fd.insert(r, fd);
                }
            }
            let live = own_table(&proc).map_err(|e| format!("read mount table: {e}"))?;
            let keys = live.keys();
            let find = |r: &MountRef| live.find(&keys, &r.key, &r.fstype);
            for (r, fd) in &base_fd {
                let id = sys::mount_id_at(fd.as_raw_fd(), OsStr::new("")).map_err(|e| format!("open mount {}: {e}", r.mountpoint()))?;
                if find(r).map(|i| live.mounts[i].id) != Some(id) {
                    return Err(format!("mount {} was replaced while reaching another covered mount", r.mountpoint()));
                }
            }
            for r in wanted {
                if base_fd.contains_key(r) {
                    continue;
                }
                let i = find(r).ok_or_else(|| format!("mount {} ({}) is not on this host", r.mountpoint(), r.fstype))?;
                let mp = OsStr::new(&live.mounts[i].mountpoint);
                let fd = sys::open_tree(sys::CWD, mp, false).map_err(|e| format!("open mount {}: {e}", r.mountpoint()))?;
                let id = sys::mount_id_at(fd.as_raw_fd(), OsStr::new("")).map_err(|e| format!("open mount {}: {e}", r.mountpoint()))?;
                if id != live.mounts[i].id {
                    return Err(format!("mount {} is covered by another mount", r.mountpoint()));
                }
                base_fd.insert(r, fd);
            }
            // Added mounts, parents first.
            let mut added: Vec<OwnedFd> = Vec::with_capacity(ns.added.len());
            for (n, a) in ns.added.iter().enumerate() {
                let what = |step: &'static str| move |e: std::io::Error| format!("mount {} ({}): {step}: {e}", a.mountpoint, a.fstype);
                let clone = match &a.source {
                    Source::Base { .. } => base_src.remove(&n).ok_or_else(|| std::io::Error::other("no copy of its source")),
                    Source::Fresh { sb, root } => sys::open_tree(instances[sb].as_raw_fd(), OsStr::new(root.trim_start_matches('/')), true),
                }
                .map_err(what("copy its source"))?;
                let clr = (table::ALL_FLAGS & !a.flags) | sys::attr::ATIME_MASK;
                sys::mount_setattr(clone.as_fd(), a.flags, clr, 0).map_err(what("set its flags"))?;
                let (pfd, pmp) = match &a.parent {
                    Parent::Base(r) => (base_fd[r].as_raw_fd(), r.mountpoint()),
                    Parent::Added(k) => (added[*k].as_raw_fd(), ns.added[*k].mountpoint.as_str()),
                };
                let rel = table::relative(&a.mountpoint, pmp);
                sys::move_mount(clone.as_fd(), pfd, OsStr::new(&rel)).map_err(what("attach it"))?;
                added.push(clone);
            }
            for k in &ns.kept {
                if let Some(flags) = k.flags {
                    let clr = (table::ALL_FLAGS & !flags) | sys::attr::ATIME_MASK;
                    sys::mount_setattr(base_fd[&k.at].as_fd(), flags, clr, 0).map_err(|e| format!("set the flags of {}: {e}", k.at.mountpoint()))?;
                }
            }
            // Propagation, in saved order: starting mounts, then added ones.
            let targets = ns.kept.iter().map(|k| (&base_fd[&k.at], &k.prop, k.at.mountpoint())).chain(
                ns.added.iter().zip(&added).map(|(a, fd)| (fd, &a.prop, a.mountpoint.as_str())),
            );
            for (fd, prop, mp) in targets {
                if !prop.is_private() {
                    let fd = fd.try_clone().map_err(|e| format!("{mp}: {e}"))?;
                    apply_propagation(reps, pending, fd, prop, mp)?;
                }
            }
            Ok(())
        };
        let (reps, pending) = (&mut self.reps, &mut self.pending);
        ns::in_namespaces(&[(nsf.as_fd(), libc::CLONE_NEWNS)], false, || work(reps, pending).map_err(std::io::Error::other))
            .map_err(|e| pod_err(&pod, "restore mounts", e))?;
        self.retry_pending()?;
        verify(&pod, ns, pid)
    }

    fn retry_pending(&mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        for p in pending {
            apply_propagation(&mut self.reps, &mut self.pending, p.fd, &p.prop, &p.mountpoint).map_err(|e| pod_err(&self.pod, "restore mount propagation", e))?;
        }
        Ok(())
    }

    /// Fails if a mount still waits for the peer group it is a slave of.
    pub fn finish(mut self) -> Result<()> {
        self.retry_pending()?;
        if let Some(p) = self.pending.first() {
            return Err(pod_err(
                &self.pod,
                format!("restore the propagation of mount {}", p.mountpoint),
                format!("no mount of its master peer group {} was restored", p.prop.master.unwrap_or(0)),
            ));
        }
        Ok(())
    }
}

/// A descriptor of mount `r` of the calling thread's mount namespace, which other mounts cover:
/// each covering mount (the topmost at its mount point, with what is mounted under it) is
/// copied and detached, `r` opened, and the copies attached back where they were, last detached
/// first. The namespace then has the same mounts, those that covered `r` as new copies. Every
/// mount is private at this point of a restore, so nothing propagates.
fn uncover(proc: &OwnedFd, r: &MountRef) -> std::io::Result<OwnedFd> {
    let mut copies: Vec<(String, OwnedFd)> = Vec::new();
    let result = (|| {
        for _ in 0..256 {
            let t = own_table(proc)?;
            let keys = t.keys();
            let i = t.find(&keys, &r.key, &r.fstype).ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "gone"))?;
            let mut hiders = t.hiders(i);
            if hiders.is_empty() {
                let fd = sys::open_tree(sys::CWD, OsStr::new(&t.mounts[i].mountpoint), false)?;
                if sys::mount_id_at(fd.as_raw_fd(), OsStr::new(""))? != t.mounts[i].id {
                    return Err(std::io::Error::other("still covered"));
                }
                return Ok(fd);
            }
            hiders.sort_by_key(|&h| t.mounts[h].mountpoint.len());
            let mp = t.mounts[hiders[0]].mountpoint.clone();
            let copy = sys::open_tree_recursive(sys::CWD, OsStr::new(&mp))?;
            sys::umount_detach(OsStr::new(&mp))?;
            copies.push((mp, copy));
        }
        Err(std::io::Error::other("too many covering mounts"))
    })();
    for (mp, copy) in copies.into_iter().rev() {
        sys::move_mount(copy.as_fd(), sys::CWD, OsStr::new(&mp))?;
    }
    result
}

/// Gives mount `fd` its saved propagation: the peer group of a mount restored in it already
/// (`MOVE_MOUNT_SET_GROUP`), or its master's then slave, then a new peer group, then unbindable.
fn apply_propagation(
    reps: &mut HashMap<u64, OwnedFd>,
    pending: &mut Vec<Pending>,
    fd: OwnedFd,
    prop: &Propagation,
    mountpoint: &str,
) -> std::result::Result<(), String> {
    let err = |what: &str, e: std::io::Error| format!("{what} {mountpoint}: {e}");
    if let Some(rep) = prop.shared.and_then(|s| reps.get(&s)) {
        return sys::set_group(rep.as_fd(), fd.as_fd()).map_err(|e| err("join the peer group of", e));
    }
    if let Some(m) = prop.master {
        let Some(rep) = reps.get(&m) else {
            pending.push(Pending { fd, prop: prop.clone(), mountpoint: mountpoint.to_string() });
            return Ok(());
        };
        sys::set_group(rep.as_fd(), fd.as_fd()).map_err(|e| err("join the master group of", e))?;
        sys::mount_setattr(fd.as_fd(), 0, 0, libc::MS_SLAVE).map_err(|e| err("make slave", e))?;
    }
    if let Some(s) = prop.shared {
        sys::mount_setattr(fd.as_fd(), 0, 0, libc::MS_SHARED).map_err(|e| err("make shared", e))?;
        reps.insert(s, fd.try_clone().map_err(|e| err("keep", e))?);
    }
    if prop.unbindable {
        sys::mount_setattr(fd.as_fd(), 0, 0, libc::MS_UNBINDABLE).map_err(|e| err("make unbindable", e))?;
    }
    Ok(())
}

/// Reads the namespace back and checks every added and changed mount is there as saved.
fn verify(pod: &str, ns: &MountNs, pid: i32) -> Result<()> {
    let live: Table = super::read_table(pid).map_err(|e| pod_err(pod, "read back mounts", e))?;
    let keys = live.keys();
    let shape = |p: &Propagation| (p.shared.is_some(), p.master.is_some(), p.unbindable);
    for a in &ns.added {
        let key = added_key(ns, a);
        let i = (0..live.mounts.len()).rev().find(|&i| keys[i] == key && live.mounts[i].fstype == a.fstype && live.mounts[i].root == a.root);
        let Some(i) = i else {
            return Err(pod_err(pod, format!("restore mount {} ({})", a.mountpoint, a.fstype), "not found where it belongs after the restore"));
        };
        let m = &live.mounts[i];
        let mask = table::ALL_FLAGS;
        if m.flags & mask != a.flags & mask || shape(&Propagation::of(m)) != shape(&a.prop) {
            return Err(pod_err(
                pod,
                format!("restore mount {} ({})", a.mountpoint, a.fstype),
                format!("came back with flags {:#x} and propagation {:?}, saved {:#x} and {:?}", m.flags, Propagation::of(m), a.flags, a.prop),
            ));
        }
    }
    for k in &ns.kept {
        if let Some(i) = live.find(&keys, &k.at.key, &k.at.fstype) {
            let m = &live.mounts[i];
            if k.flags.is_some_and(|f| f != m.flags) || shape(&Propagation::of(m)) != shape(&k.prop) {
                return Err(pod_err(pod, format!("restore mount {}", k.at.mountpoint()), "its flags or propagation did not come back"));
            }
        }
    }
    Ok(())
}

/// The key an added mount has in the restored namespace.
fn added_key(ns: &MountNs, a: &super::Added) -> Vec<String> {
    let mut key = match &a.parent {
        Parent::Base(r) => r.key.clone(),
        Parent::Added(k) => added_key(ns, &ns.added[*k]),
    };
    key.push(a.mountpoint.clone());
    key
}
