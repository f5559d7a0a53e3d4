//! What a pod's processes made inside it, saved with its checkpoint and restored with it: mounts
//! ([`super::mounts`]), sub-cgroups ([`super::cgroups`]) and namespaces of their own
//! ([`super::nested`]), plus the pod's hostname and domain name as they are at the checkpoint.
//!
//! The checkpoint calls [`save`] while the pod is stopped. The restore drives an
//! [`InsideRestore`] from the pod restore's spawner: [`InsideRestore::pod_created`] once the new
//! pod exists and before any process is restored (names, cgroup tree, the pod's mounts),
//! [`InsideRestore::member_taken`] for each process as it is rebuilt (its namespaces, and the
//! System V objects and mounts of the namespaces it makes), and
//! [`InsideRestore::before_release`] before the processes run (cgroup placement, controllers,
//! settings, freezing).
use std::path::Path;

use serde::{Deserialize, Serialize};
use zap_chunker::ChunkerConfig;
use zap_store::{ChunkSink, Image, ImageStore};

use super::cgroup::Cgroup;
use super::cgroups::{self, CgroupTree};
use super::mounts::{self, MountsImage};
use super::nested::{self, NestedImage, NsRestore};
use super::{cgroup_of, pod_dir, PodState};
use crate::group::GroupImage;
use crate::inject::Injector;
use crate::{EngineError, Result};

/// Everything of [`self`](self) in a pod image.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InsideImage {
    /// Mounts of the pod's and its processes' mount namespaces.
    pub mounts: MountsImage,
    /// The pod's cgroup tree.
    pub cgroups: CgroupTree,
    /// Namespaces made inside the pod, and the pod's names.
    pub nested: NestedImage,
}

/// Saves what the processes of stopped pod `state` (run directory `root`) made inside it;
/// `group` is the saved process group, `frozen` the sub-cgroups the pod had frozen (thawed while
/// it is stopped). System V objects of nested namespaces are stored through `sink` (their
/// images are returned); the files of in-memory file systems are copied out, to be stored with
/// [`mounts::FileData::store`] once the pod may run on.
pub fn save<W: ChunkSink>(
    root: &Path,
    state: &PodState,
    group: &GroupImage,
    frozen: &[String],
    sink: &mut W,
    cfg: &ChunkerConfig,
) -> Result<(InsideImage, Vec<Image>, mounts::FileData)> {
    let name = state.name.as_str();
    let members: Vec<(i32, i32)> = group.members.iter().filter_map(|m| m.image().map(|i| (m.vpid, i.host_pid))).collect();
    let t = std::time::Instant::now();
    let step = |what: &str| tracing::debug!(pod = name, ms = t.elapsed().as_secs_f64() * 1e3, "inside save: {what}");
    let cg = cgroup_of(state);
    let tree = cgroups::save(name, &cg, state.init_pid, &members, frozen)?;
    step("sub-cgroups");
    let pod_cgroup = cgroups::hierarchy_path(&cg)?;
    let saved = nested::save(name, state.init_pid, &members, &pod_cgroup, sink, cfg)?;
    step("namespaces");
    let images = saved.images;
    let mut saver = mounts::Saver::new(name);
    let pod_err = |step: &str, e: std::io::Error| EngineError::Pod { pod: name.to_string(), step: step.to_string(), detail: e.to_string() };
    let pod_table = mounts::read_table(state.init_pid).map_err(|e| pod_err("read the pod's mounts", e))?;
    let (base, by_dev) = mounts::base_table(&pod_dir(root, name))?;
    let pod_ns = saver.save_ns(state.init_pid, &base, &pod_table, by_dev)?;
    let mut nested_mnt = Vec::new();
    for &pid in &saved.mnt_pids {
        let now = mounts::read_table(pid).map_err(|e| pod_err(&format!("read the mounts of pid {pid}"), e))?;
        nested_mnt.push(saver.save_ns(pid, &pod_table, &now, true)?);
    }
    step("mount tables");
    let (superblocks, data) = saver.finish()?;
    step("mounts");
    let mounts = MountsImage { superblocks, pod: pod_ns, nested: nested_mnt };
    Ok((InsideImage { mounts, cgroups: tree, nested: saved.image }, images, data))
}

impl InsideImage {
    /// What of this goes beyond the pod's names (mounts, sub-cgroups, namespaces of its
    /// processes), named; `None` when the pod made nothing but its names. A migration's
    /// destination makes these again as a restore does, in a prepared pod rebuilt for them.
    pub fn beyond_names(&self) -> Option<String> {
        let mut what = Vec::new();
        let m = &self.mounts;
        let mounts: Vec<String> = m
            .pod
            .added
            .iter()
            .map(|a| format!("{} ({})", a.mountpoint, a.fstype))
            .chain(m.pod.removed.iter().map(|r| format!("{} removed", r.mountpoint())))
            .chain(m.pod.kept.iter().map(|k| format!("{} changed", k.at.mountpoint())))
            .chain((!m.nested.is_empty()).then(|| format!("{} mount namespaces", m.nested.len())))
            .collect();
        let listed;
        if !m.superblocks.is_empty() || !mounts.is_empty() {
            let more = if mounts.len() > 4 { format!(" and {} more", mounts.len() - 4) } else { String::new() };
            listed = format!("mounts made in the pod: {}{more}", mounts.iter().take(4).cloned().collect::<Vec<_>>().join(", "));
            what.push(listed.as_str());
        }
        if !self.cgroups.is_trivial() {
            what.push("sub-cgroups made in the pod");
        }
        let n = &self.nested;
        if !n.members.is_empty() || !n.uts.is_empty() || !n.ipc.is_empty() || !n.net.is_empty() || !n.time.is_empty() || !n.cgroup.is_empty() || n.mnt > 0 {
            what.push("namespaces made in the pod");
        }
        (!what.is_empty()).then(|| what.join(", "))
    }

    /// Gives the new pod whose init is `init_pid` the hostname and domain name its processes had
    /// set (a migration's destination; a restore does it in [`InsideRestore::pod_created`]).
    pub fn restore_names(&self, pod: &str, init_pid: i32) -> Result<()> {
        let names = &self.nested.pod_uts;
        if names.hostname.is_empty() {
            return Ok(());
        }
        nested::write_uts(init_pid, names)
            .map_err(|e| EngineError::Pod { pod: pod.to_string(), step: "restore hostname and domain name".into(), detail: e.to_string() })
    }
}

/// Fails for processes (host pids, zombies skipped) of a stopped pod whose init is `init_pid`
/// that are in namespaces the restore cannot make (see [`nested::refuse_unrestorable`]);
/// called before anything else is saved.
pub fn refuse_early(pod: &str, init_pid: i32, pids: &[i32]) -> Result<()> {
    nested::refuse_unrestorable(pod, init_pid, pids)
}

/// The restore of an [`InsideImage`] (see the module doc).
pub struct InsideRestore<'a, S> {
    pod: String,
    image: &'a InsideImage,
    store: &'a S,
    images: &'a [Image],
    mounts: mounts::restore::Restorer<'a, S>,
    ns: NsRestore<'a>,
    cgroup: Option<Cgroup>,
    init_pid: i32,
    /// Host pid of the first process of each nested IPC namespace.
    ipc_pids: Vec<(usize, i32)>,
    /// The pod's time namespace offsets at the checkpoint (none: an image without clocks).
    saved_time: Option<super::clock::Clocks>,
}

impl<'a, S: ImageStore> InsideRestore<'a, S> {
    /// A restore of `image` for pod `pod`; data is read from `images` of `store`.
    pub fn new(pod: &str, image: &'a InsideImage, store: &'a S, images: &'a [Image]) -> Self {
        InsideRestore {
            pod: pod.to_string(),
            image,
            store,
            images,
            mounts: mounts::restore::Restorer::new(pod, &image.mounts, store, images),
            ns: NsRestore::new(pod, &image.nested),
            cgroup: None,
            init_pid: 0,
            ipc_pids: Vec::new(),
            saved_time: None,
        }
    }

    /// The offsets the pod's time namespace had at the checkpoint: the namespaces the
    /// processes made get theirs moved by what the restored pod's differ by (time namespace
    /// offsets are relative to the host's clocks).
    pub fn saved_time_offsets(&mut self, offsets: Option<super::clock::Clocks>) {
        self.saved_time = offsets;
    }

    /// The new pod `state` exists, its init's restore targets wait: set its names, make its
    /// cgroup tree and its mounts.
    pub fn pod_created(&mut self, state: &PodState) -> Result<()> {
        self.init_pid = state.init_pid;
        if let Some(saved) = self.saved_time {
            let now = super::clock::offsets_of(&state.init_pid.to_string())
                .map_err(|e| EngineError::Pod { pod: self.pod.clone(), step: "read the restored pod's clock offsets".into(), detail: e.to_string() })?;
            self.ns.shift_time(now.minus(saved));
        }
        let cg = cgroup_of(state);
        let names = &self.image.nested.pod_uts;
        if !names.hostname.is_empty() {
            nested::write_uts(state.init_pid, names)
                .map_err(|e| EngineError::Pod { pod: self.pod.clone(), step: "restore hostname and domain name".into(), detail: e.to_string() })?;
        }
        cgroups::prepare(&self.pod, &cg, &self.image.cgroups)?;
        self.cgroup = Some(cg);
        self.mounts.restore_ns(&self.image.mounts.pod, state.init_pid, false)
    }

    /// Process `vpid` (host pid `pid`, child of `ppid`) was taken over: put it into its
    /// namespaces, and fill those it made.
    pub fn member_taken(&mut self, vpid: i32, pid: i32, ppid: i32, inj: &mut Injector) -> Result<()> {
        let cg = self.cgroup.clone();
        let pod = self.pod.clone();
        let to_cgroup = |path: &str, host: i32| -> Result<()> {
            let cg = cg.as_ref().ok_or_else(|| EngineError::Pod { pod: pod.clone(), step: "restore cgroup namespace".into(), detail: "no pod cgroup".into() })?;
            let dir = if path.is_empty() { cg.v2.clone() } else { cg.v2.join(path) };
            let procs = dir.join("cgroup.procs");
            std::fs::write(&procs, host.to_string()).map_err(|e| EngineError::io("move a process to", &procs, e))
        };
        let made = self.ns.enter(vpid, pid, ppid, inj, &to_cgroup)?;
        for (kind, n) in made {
            if kind == nested::IPC {
                let st = self.image.nested.ipc.get(n).ok_or_else(|| EngineError::Pod {
                    pod: self.pod.clone(),
                    step: format!("restore IPC namespace {n}"),
                    detail: "not in the image".into(),
                })?;
                st.restore(self.store, self.images, pid)?;
                self.ipc_pids.push((n, pid));
            } else if kind == nested::MNT {
                let ns = self.image.mounts.nested.get(n).ok_or_else(|| EngineError::Pod {
                    pod: self.pod.clone(),
                    step: format!("restore mount namespace {n}"),
                    detail: "not in the image".into(),
                })?;
                self.mounts.restore_ns(ns, pid, true)?;
            }
        }
        Ok(())
    }

    /// Every process exists, none runs yet: System V segments marked for removal again, mount
    /// propagation finished, processes moved to their cgroups, controllers and settings written.
    pub fn before_release(&mut self, pids: &[(i32, i32)]) -> Result<()> {
        for &(n, pid) in &self.ipc_pids {
            if let Some(st) = self.image.nested.ipc.get(n) {
                st.finish(pid)?;
            }
        }
        let mounts = std::mem::replace(&mut self.mounts, mounts::restore::Restorer::new(&self.pod, &self.image.mounts, self.store, self.images));
        mounts.finish()?;
        let Some(cg) = &self.cgroup else { return Ok(()) };
        let init = self.init_pid;
        let host_of = |vpid: i32| if vpid == 1 { Some(init) } else { pids.iter().find(|p| p.0 == vpid).map(|p| p.1) };
        let host_tid = |vpid: i32, vtid: i32| {
            let pid = host_of(vpid)?;
            std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten().find_map(|t| {
                let tid: i32 = t.file_name().to_string_lossy().parse().ok()?;
                (crate::cpu::vtid_of(pid, tid).ok()? == vtid).then_some(tid)
            })
        };
        cgroups::place(&self.pod, cg, &self.image.cgroups, &host_of, &host_tid)
    }
}
