//! Restore of a whole pod ([`restore`]).
//!
//! A new pod is created ([`super::create`]) with the saved hostname, limits, address and MAC (a
//! copy restored under another address gets a fresh MAC); its init creates the top processes
//! with their pids and the group restore fills everything in. Files under the original pod's
//! directory (its `console.log`) are reopened under the new pod's directory, and sockets bound to
//! the old address are bound to the new one. The pod's console log travels in the checkpoint (its
//! last 16 MiB) and is put back before the processes resume. What the processes had made inside
//! the pod is made again ([`super::inside`]): names, cgroup tree and mounts before any process is
//! restored, namespaces of their own as each process is rebuilt, cgroup placement before they
//! run. The pod's clocks go on from the values saved at the checkpoint ([`super::clock`]). On
//! failure the half-made pod is removed.
//!
//! ## Connections
//! The new pod's network is locked ([`super::netlock`]) as soon as its namespace exists, before
//! its interface has the address (a peer's retransmission reaching the address before the
//! connection exists would be answered with a reset) and before any socket is made, and opened once every process is rebuilt, just before they are released,
//! so the peers of its TCP connections see nothing until the pod is whole; each connection then
//! sends a window probe (a peer that no longer knows it answers with a reset, which the
//! application sees at once: a rolled-back pod); [`PodRestoreOptions::keep_network_locked`] leaves it locked
//! for the caller to open with [`super::netlock::unlock`] (a migration does, once the source pod
//! has ended). A copy restored under another address cannot take over the original's
//! connections (their peers talk to the original): they come back closed, with `ECONNABORTED`
//! for the application, and nothing is sent to those peers. Connections with both ends in the
//! pod come back connected in the copy too.
use std::path::Path;

use serde::Serialize;
use zap_store::{CheckpointId, ImageStore, Manifest};

use super::checkpoint::{PodImage, CONSOLE_IMAGE, KIND};
use super::netlock::NetLock;
use super::inside::InsideRestore;
use super::{load, pod_dir, PodSpec};
use crate::files::RestoreContext;
use crate::group::{self, GroupRestored, TargetSpawner};
use crate::ipc::IpcState;
use crate::{EngineError, Result};

fn pod_err(pod: &str, step: impl Into<String>, detail: impl std::fmt::Display) -> EngineError {
    EngineError::Pod { pod: pod.to_string(), step: step.into(), detail: detail.to_string() }
}

/// How to restore a pod.
#[derive(Clone, Debug, Default)]
pub struct PodRestoreOptions {
    /// Name of the new pod (default: the saved name).
    pub name: Option<String>,
    /// Address of the new pod (default: the saved one).
    pub ip: Option<String>,
    /// The `zap-init` binary.
    pub init_exe: std::path::PathBuf,
    /// Leave the restored pod's network locked (for a migration's destination: unlock it with
    /// [`super::netlock::unlock`] once the source is gone). Default: unlocked once the pod runs.
    pub keep_network_locked: bool,
}

/// A restored pod.
#[derive(Clone, Debug, Serialize)]
pub struct PodRestored {
    /// Its name.
    pub name: String,
    /// Its address.
    pub ip: Option<String>,
    /// The processes.
    pub group: GroupRestored,
    /// How long the pod's network was locked during the restore, ms (until it runs, or until
    /// now when it is kept locked).
    pub network_locked_ms: f64,
}

struct PodSpawner<'a, S> {
    keep_locked: bool,
    /// How long the network was locked, ms (set when it opens).
    locked_ms: f64,
    store: &'a S,
    manifest: &'a Manifest,
    ipc: &'a IpcState,
    root: &'a Path,
    spec: PodSpec,
    main_vpid: i32,
    created: bool,
    init_pid: i32,
    netlock: Option<NetLock>,
    inside: InsideRestore<'a, S>,
    /// A lazy restore's guard (the init's end of the guard sockets), for the pod's init.
    guard: Option<std::os::fd::BorrowedFd<'a>>,
    /// The clocks the pod goes on from (none: an image without them).
    clocks: Option<super::clock::ClockTarget>,
}

impl<S: ImageStore> TargetSpawner for PodSpawner<'_, S> {
    fn spawn(&mut self, top: &[i32], tramp: u64) -> Result<i32> {
        let main_vpid = if top.contains(&self.main_vpid) { self.main_vpid } else { top[0] };
        self.spec.launch = super::Launch::Restore { top: top.to_vec(), tramp, main_vpid, guarded: self.guard.is_some(), clocks: self.clocks };
        // Locked before its interface has the address and before any socket of the pod exists.
        let (state, lock) = super::create_locked_guarded(self.root, &self.spec, self.guard)?;
        self.created = true;
        self.init_pid = state.init_pid;
        self.netlock = Some(lock);
        // The console log as it was, so the processes' appends continue it.
        if let Some(img) = self.manifest.images.iter().find(|i| i.name == CONSOLE_IMAGE) {
            let len = img.extents.iter().map(|e| e.end()).max().unwrap_or(0);
            let mut buf = vec![0u8; len as usize];
            zap_store::materialize(self.store, &img.extents, 0, &mut buf)?;
            let log = pod_dir(self.root, &self.spec.name).join("console.log");
            std::fs::write(&log, &buf).map_err(|e| EngineError::io("write", &log, e))?;
        }
        // The IPC objects exist before any process attaches them.
        self.ipc.restore(self.store, &self.manifest.images, state.init_pid)?;
        // Names, cgroup tree and mounts exist before any process is restored.
        self.inside.pod_created(&state)?;
        let log = pod_dir(self.root, &self.spec.name).join("console.log");
        std::fs::OpenOptions::new().create(true).append(true).open(&log).map_err(|e| EngineError::io("create", &log, e))?;
        Ok(state.init_pid)
    }

    fn member_taken(&mut self, vpid: i32, pid: i32, ppid: i32, inj: &mut crate::inject::Injector) -> Result<()> {
        self.inside.member_taken(vpid, pid, ppid, inj)
    }

    /// Every process is rebuilt and still stopped: they are placed in their cgroups, then the
    /// network opens (unless kept locked) and each connection sends a window probe, so that a
    /// peer that no longer has it resets it at once rather than when the application next sends.
    fn before_release(&mut self, pids: &[(i32, i32)]) -> Result<()> {
        self.inside.before_release(pids)?;
        let Some(lock) = self.netlock.take() else { return Ok(()) };
        self.locked_ms = lock.held_ms() + lock.lock_ms;
        if self.keep_locked {
            lock.keep();
            return Ok(());
        }
        lock.unlock()?;
        let pids: Vec<i32> = crate::group::tree_of(self.init_pid).into_iter().filter(|&p| p != self.init_pid).collect();
        let probed = crate::sockets::probe_tcp(&pids)?;
        tracing::debug!(pod = self.spec.name, probed, locked_ms = self.locked_ms, "network opened");
        Ok(())
    }
}

fn ipv4_of(cidr: &str) -> Option<[u8; 4]> {
    cidr.split('/').next()?.parse::<std::net::Ipv4Addr>().ok().map(|a| a.octets())
}

/// Restores pod checkpoint `id` as a new pod in run directory `root`.
pub fn restore<S: ImageStore>(store: &S, root: &Path, id: &CheckpointId, opts: &PodRestoreOptions) -> Result<PodRestored> {
    restore_with(store, root, id, opts, None)
}

/// Restores pod checkpoint `id` like [`restore`], lazily: every process runs as soon as all but
/// the pages of its private anonymous memory is in place, served by the pagers returned
/// ([`crate::group::restore_in_lazy`]; children share the pages they inherit, as in an eager
/// restore). The pod's init is guarded ([`super::init`]): if this process dies before
/// [`crate::lazy::Pagers::wait`] has returned, the init kills every process of the pod, writes
/// why in `<pod dir>/failed` and exits (137); `zap rm` removes the pod. While pages load, the
/// pod directory holds `loading` (this process's pid), removed by [`finish_loading`].
pub fn restore_lazy(store: std::sync::Arc<zap_store::LocalStore>, root: &Path, id: &CheckpointId, opts: &PodRestoreOptions) -> Result<(PodRestored, crate::lazy::Pagers)> {
    use std::os::fd::AsFd;
    let (guard_read, guard_write) = crate::sys::clone::guard_pair().map_err(|source| EngineError::Sys { step: "create the guard sockets", pid: 0, source })?;
    let mut pagers = crate::lazy::Pagers::new(store.clone(), guard_write);
    let restored = restore_with(&*store, root, id, opts, Some((&mut pagers, guard_read.as_fd())))?;
    drop(guard_read);
    let loading = pod_dir(root, &restored.name).join(LOADING_FILE);
    std::fs::write(&loading, format!("{}\n", std::process::id())).map_err(|e| EngineError::io("write", &loading, e))?;
    pagers.running();
    Ok((restored, pagers))
}

/// The file of a pod directory that says its memory is still loading (the pager's pid).
pub const LOADING_FILE: &str = "loading";

/// Ends the loading of pod `name` (its pagers are done): removes `loading`; on a failure (the
/// pod was killed) writes why in `failed`.
pub fn finish_loading(root: &Path, name: &str, failure: Option<&str>) {
    let dir = pod_dir(root, name);
    if let Some(why) = failure {
        let _ = std::fs::write(dir.join(super::init::FAILED_FILE), format!("lazy restore: {why}\n"));
    }
    let _ = std::fs::remove_file(dir.join(LOADING_FILE));
}

/// Where the lazy restore of a pod stands, when it was restored lazily and is not all in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Loading {
    /// Its memory is loading; the pager's pid.
    Loading(i32),
    /// The restore failed while loading, and the pod's processes were killed: why.
    Failed(String),
}

/// Where the lazy restore of pod `name` stands (`None`: not restored lazily, or all in).
pub fn loading(root: &Path, name: &str) -> Option<Loading> {
    let dir = pod_dir(root, name);
    if let Ok(why) = std::fs::read_to_string(dir.join(super::init::FAILED_FILE)) {
        return Some(Loading::Failed(why.trim().to_string()));
    }
    let pid: i32 = std::fs::read_to_string(dir.join(LOADING_FILE)).ok()?.trim().parse().ok()?;
    match super::proc_stat(pid) {
        Some((state, _)) if state != 'Z' && state != 'X' => Some(Loading::Loading(pid)),
        _ => Some(Loading::Failed(format!("the pager (pid {pid}) ended before every page was in"))),
    }
}

fn restore_with<S: ImageStore>(
    store: &S,
    root: &Path,
    id: &CheckpointId,
    opts: &PodRestoreOptions,
    lazy: Option<(&mut crate::lazy::Pagers, std::os::fd::BorrowedFd<'_>)>,
) -> Result<PodRestored> {
    let (pagers, guard) = match lazy {
        Some((p, g)) => (Some(p), Some(g)),
        None => (None, None),
    };
    let manifest = store.manifest(id)?;
    if manifest.kind != KIND {
        return Err(EngineError::Proc { pid: 0, detail: format!("checkpoint {id} is a {:?} checkpoint, not a pod", manifest.kind) });
    }
    let image = PodImage::decode(&manifest.state)?;
    let name = opts.name.clone().unwrap_or_else(|| image.name.clone());
    super::validate_name(&name)?;
    if load(root, &name).is_ok() {
        return Err(pod_err(&name, "restore", "a pod of this name exists (remove it, or restore with another --name)"));
    }
    let ip = opts.ip.clone().or_else(|| image.ip.clone());
    let same_address = opts.ip.is_none() || opts.ip == image.ip;
    let mac = if same_address { image.net.as_ref().map(|n| n.mac.clone()) } else { None };
    let spec = PodSpec {
        name: name.clone(),
        hostname: Some(image.hostname.clone()),
        ip: ip.clone(),
        mac,
        memory_limit: image.memory_limit,
        cpus: image.cpus,
        launch: super::Launch::Restore { top: Vec::new(), tramp: 0, main_vpid: image.main_vpid, guarded: false, clocks: None },
        init_exe: opts.init_exe.clone(),
    };
    let mut files = RestoreContext::new(std::process::id());
    files.path_map.push((image.pod_dir.clone(), format!("{}/", pod_dir(root, &name).display())));
    if let (Some(old), Some(new)) = (image.ip.as_deref().and_then(ipv4_of), ip.as_deref().and_then(ipv4_of)) {
        if old != new {
            files.sockets.rebind.push((old, new));
        }
    }
    let mut inside = InsideRestore::new(&name, &image.inside, store, &manifest.images);
    inside.saved_time_offsets(image.clocks.map(|c| c.offsets));
    let mut spawner = PodSpawner {
        store,
        manifest: &manifest,
        ipc: &image.ipc,
        root,
        spec,
        main_vpid: image.main_vpid,
        created: false,
        init_pid: 0,
        netlock: None,
        keep_locked: opts.keep_network_locked,
        locked_ms: 0.0,
        inside,
        guard,
        clocks: image.clocks.map(|c| super::clock::ClockTarget::resume(c.at_stop)),
    };
    let result = group::restore_in_lazy(store, &manifest, &image.group, &mut spawner, files, pagers)
        .and_then(|group| image.ipc.finish(spawner.init_pid).map(|()| group))
        .and_then(|group| {
            super::set_last_checkpoint(root, &name, &id.to_string())?;
            Ok((group, spawner.locked_ms))
        });
    match result {
        Ok((group, network_locked_ms)) => Ok(PodRestored { name, ip, group, network_locked_ms }),
        Err(e) => {
            if spawner.created {
                if let Err(e2) = super::rm(root, &name, true) {
                    tracing::warn!(pod = name, error = %e2, "cleanup after failed restore");
                }
            }
            Err(e)
        }
    }
}
