//! Checkpoint and restore of a whole pod.
//!
//! ## Checkpoint ([`checkpoint`])
//! The pod's cgroup is frozen (`cgroup.freeze`), so no process can fork or exit past the
//! freeze. Every thread of every process but our init is then seized and interrupted with ptrace
//! and the cgroup thawed (with the sub-cgroups the pod froze itself, which are frozen again
//! before the processes are let go): the threads enter their ptrace stops before returning to
//! user space, so the pod stays stopped as one. The processes are saved as a group
//! ([`crate::group`]), the pod's network configuration (address, MAC, routes) is read, what the
//! processes made inside the pod (mounts and the files of in-memory file systems, sub-cgroups,
//! namespaces of their own: [`super::inside`]) is saved, and the pages are copied out. With
//! `leave_running` the pod goes on from here; otherwise it stays stopped until the checkpoint is
//! committed, and is then killed and removed (its state now lives in the checkpoint).
//!
//! ## Stopped pods ([`StoppedPod`])
//! The stop is a value: [`StoppedPod::stop`] takes the pod's checkpoint lock, stops the pod and,
//! when it has TCP sockets, locks its network ([`super::netlock`]: from here on no packet reaches
//! or leaves the pod, so its TCP connections can be saved); [`StoppedPod::resume`] lets it run on and unlocks the
//! network, [`StoppedPod::end`] removes it (its state now lives elsewhere: a committed
//! checkpoint, or a destination host). Dropping a `StoppedPod` resumes the pod, so an error
//! anywhere between the stop and the end leaves the pod running with its network open.
//!
//! For a migration (whose final round is built on the same value) this means:
//! - the network stays locked for as long as the caller keeps the pod stopped, and nothing of the
//!   pod's connections moves meanwhile (what peers send is dropped and retransmitted later);
//! - [`StoppedPod::end`] is silent on the wire: every TCP socket of the pod is put in repair mode
//!   before the processes are killed, so closing them sends no FIN or RST, and the lock stays
//!   until the namespace is gone;
//! - the destination restores with [`PodRestoreOptions::keep_network_locked`] and opens its
//!   network with [`super::netlock::unlock`] once the source has ended.
//!
//! Restore is in [`super::restore`] (re-exported here).
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use zap_chunker::ChunkerConfig;
use zap_store::{CheckpointId, ImageStore, Manifest};

use super::net::{self, NetConfig};
use super::netlock::NetLock;
use super::{cgroup_of, load, pod_dir, status, PodState, PodStatus};
pub use super::restore::{finish_loading, loading, restore, restore_lazy, Loading, PodRestoreOptions, PodRestored};
use crate::freeze::Frozen;
use crate::group::{self, GroupImage};
use crate::ipc::{self, IpcState};
use crate::dirty;
use crate::process::CheckpointReport;
use crate::{EngineError, Result};

/// Manifest kind of a pod checkpoint.
pub const KIND: &str = "pod";
/// Version of the [`PodImage`] encoding (first byte of the state blob). 2: TCP connections and
/// the network lock; 3: what the processes made inside the pod ([`PodImage::inside`]); 4: System V and
/// POSIX message queues ([`IpcState::msg`], [`IpcState::mq`]) and POSIX queue fds; 5: what
/// `SO_PEERCRED` showed on each unix socket, the pod's clocks ([`PodImage::clocks`]) and timerfds
/// armed with settime flags (`FdKind::TimerfdAt`, appended); version 4 images read without them.
pub const POD_IMAGE_VERSION: u8 = 5;
const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything about a pod except page contents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PodImage {
    /// The pod's name.
    pub name: String,
    /// Hostname.
    pub hostname: String,
    /// Address with prefix.
    pub ip: Option<String>,
    /// The interface as it was (MAC, addresses, routes).
    pub net: Option<NetConfig>,
    /// Memory limit.
    pub memory_limit: Option<u64>,
    /// CPU limit.
    pub cpus: Option<f64>,
    /// The command the pod was started with.
    pub argv: Vec<String>,
    /// The process whose exit ends the pod.
    pub main_vpid: i32,
    /// The pod's run directory when saved (files under it are reopened in the new pod's).
    pub pod_dir: String,
    /// The processes.
    pub group: GroupImage,
    /// System V IPC objects of the pod's IPC namespace.
    pub ipc: IpcState,
    /// What the processes made inside the pod: mounts, sub-cgroups, namespaces of their own.
    pub inside: super::inside::InsideImage,
    /// The pod's clocks when it stopped ([`super::clock`]); none in images of version 4.
    #[serde(deserialize_with = "crate::blob::absent_in_older")]
    pub clocks: Option<super::clock::ClockImage>,
}

impl PodImage {
    /// Encodes into a manifest state blob.
    pub fn encode(&self) -> Vec<u8> {
        crate::blob::encode(POD_IMAGE_VERSION, self)
    }

    /// Decodes a manifest state blob.
    pub fn decode(blob: &[u8]) -> Result<Self> {
        crate::blob::decode_compatible(POD_IMAGE_VERSION, &[4], "pod image", blob)
    }
}

/// How to checkpoint a pod.
#[derive(Clone, Debug, Default)]
pub struct PodCheckpointOptions {
    /// Let the pod run on (default: kill and remove it once the checkpoint is committed).
    pub leave_running: bool,
    /// Give established TCP connections up (saved as closed sockets; the application sees them
    /// fail) instead of saving them with their state.
    pub tcp_close: bool,
    /// Checkpoint name (default: the pod's name).
    pub name: Option<String>,
    /// Parent checkpoint to record.
    pub parent: Option<CheckpointId>,
    /// Chunker settings.
    pub chunker: ChunkerConfig,
    /// Save all memory even when the pod is tracked (default: incremental when possible).
    pub full: bool,
    /// Extra manifest labels (the labels the pod checkpoint sets itself, `pod`, `processes` and
    /// `ip`, take precedence).
    pub labels: BTreeMap<String, String>,
    /// A full checkpoint with `leave_running` copies the memory while the pod runs and stops it
    /// only for what was written meanwhile ([`super::precopy`]); this turns that off (the pod
    /// stops while all its memory is read).
    pub no_precopy: bool,
}

fn pod_err(pod: &str, step: impl Into<String>, detail: impl std::fmt::Display) -> EngineError {
    EngineError::Pod { pod: pod.to_string(), step: step.into(), detail: detail.to_string() }
}

/// Stops every process of the pod but its init: freeze the cgroup, seize and interrupt every
/// thread, thaw (with the sub-cgroups the pod froze itself, which are frozen again before the
/// processes are released), wait for the ptrace stops. Returns the host pids (zombies included,
/// not stopped), the stopped processes and the sub-cgroups thawed.
fn stop_pod(name: &str, cg: &super::cgroup::Cgroup, init_pid: i32) -> Result<(Vec<i32>, Vec<Frozen>, Vec<String>)> {
    let t0 = Instant::now();
    // A process caught in vfork (a shell starting a command) would not reach its ptrace stop
    // until its child execs: let the pod run a moment and freeze again.
    let mut attempt = 0;
    let pids = loop {
        cg.freeze(FREEZE_TIMEOUT)?;
        // Zombies have left the cgroup already: the tree under the init has them.
        let mut pids: Vec<i32> = cg.procs().into_iter().filter(|&p| p != init_pid).collect();
        for p in group::tree_of(init_pid) {
            if p != init_pid && !pids.contains(&p) {
                pids.push(p);
            }
        }
        match pids.iter().try_for_each(|&p| crate::freeze::refuse_vfork(p)) {
            Ok(()) => break pids,
            Err(e) if attempt >= VFORK_RETRIES => {
                cg.thaw()?;
                return Err(e);
            }
            Err(_) => {
                cg.thaw()?;
                attempt += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    };
    let frozen_at = t0.elapsed().as_secs_f64() * 1e3;
    let seized = (|| {
        let mut frozen = Vec::new();
        for &pid in &pids {
            if !group::is_zombie_pid(pid) {
                frozen.push(Frozen::seize_frozen(pid)?);
            }
        }
        Ok::<_, EngineError>(frozen)
    })();
    let children = match &seized {
        Ok(_) => cg.thaw_children(),
        Err(_) => Ok(Vec::new()),
    };
    let thawed = cg.thaw();
    let (mut frozen, children) = match (seized, children) {
        (Ok(f), Ok(c)) => (f, c),
        (Err(e), _) | (Ok(_), Err(e)) => return Err(e),
    };
    if let Err(e) = thawed {
        let _ = cg.refreeze(&children);
        return Err(e);
    }
    let thawed_at = t0.elapsed().as_secs_f64() * 1e3;
    for f in &mut frozen {
        if let Err(e) = f.wait_stopped() {
            let _ = cg.refreeze(&children);
            return Err(e);
        }
    }
    tracing::debug!(pod = name, attempt, frozen_at, thawed_at, stopped_at = t0.elapsed().as_secs_f64() * 1e3, "pod stopped");
    if pids.is_empty() {
        return Err(pod_err(name, "checkpoint", "the pod has no process besides its init"));
    }
    Ok((pids, frozen, children))
}

/// How often a freeze is retried while a process of the pod is caught in vfork (5 ms apart).
const VFORK_RETRIES: u32 = 400;

/// Closes the userfaultfds of tracker states that will not be kept (a checkpoint that failed).
struct DisarmOnFailure(Vec<dirty::Armed>);

impl Drop for DisarmOnFailure {
    fn drop(&mut self) {
        for a in &self.0 {
            if let Err(e) = dirty::disarm(a) {
                tracing::warn!(pid = a.pid, error = %e, "could not close a parked userfaultfd");
            }
        }
    }
}

/// Dirty-page tracking of a pod between checkpoints, kept in `<pod dir>/tracker.bin`: the
/// checkpoint it is relative to, the tracker state of each process and, since version 2, each
/// tracked process's layout as smaps showed it once the pod went on after that checkpoint
/// ([`KnownLayout`]).
#[derive(Serialize, Deserialize)]
struct TrackerFile {
    parent: String,
    members: Vec<dirty::Armed>,
    layouts: Vec<KnownLayout>,
}

/// Version 1 of the tracker state: no layouts (the next checkpoint reads smaps).
#[derive(Deserialize)]
struct TrackerFileV1 {
    parent: String,
    members: Vec<dirty::Armed>,
}

/// The layout of a tracked process (host `pid`) read with smaps after a checkpoint
/// ([`crate::mem::read_details`]; deleted files' contents left out), which the next incremental
/// checkpoint takes over instead of reading smaps while the pod is stopped when
/// `/proc/PID/maps` shows it unchanged ([`crate::mem::layout_reusing`]). `tracked` lists the
/// starts of the mappings registered with the tracker (`VmaState::uffd_wp`, not serialized).
#[derive(Clone, Serialize, Deserialize)]
struct KnownLayout {
    pid: i32,
    vmas: Vec<crate::mem::VmaState>,
    tracked: Vec<u64>,
}

impl KnownLayout {
    fn new(pid: i32, mut vmas: Vec<crate::mem::VmaState>) -> Self {
        let tracked = vmas.iter().filter(|v| v.uffd_wp).map(|v| v.start).collect();
        for v in &mut vmas {
            if let crate::mem::Backing::Deleted { contents, .. } = &mut v.backing {
                *contents = None;
            }
        }
        KnownLayout { pid, vmas, tracked }
    }

    fn into_vmas(self) -> Vec<crate::mem::VmaState> {
        let mut vmas = self.vmas;
        for v in &mut vmas {
            v.uffd_wp = self.tracked.contains(&v.start);
        }
        vmas
    }
}

const TRACKER_VERSION: u8 = 2;

/// Drops the pod's dirty-page tracking between checkpoints (its parked userfaultfds are closed
/// and its tracker state deleted): another tracker (a migration's) is about to take the pod's
/// memory, and the pod's next checkpoint will be full.
pub fn drop_tracking(root: &Path, name: &str) {
    if let Some(t) = read_tracker(root, name) {
        for a in &t.members {
            if let Err(e) = dirty::disarm(a) {
                tracing::warn!(pid = a.pid, error = %e, "could not close a parked userfaultfd");
            }
        }
    }
    let _ = std::fs::remove_file(tracker_path(root, name));
}

fn tracker_path(root: &Path, name: &str) -> std::path::PathBuf {
    pod_dir(root, name).join("tracker.bin")
}

fn read_tracker(root: &Path, name: &str) -> Option<TrackerFile> {
    let bytes = std::fs::read(tracker_path(root, name)).ok()?;
    if bytes.first() == Some(&1) {
        let old: TrackerFileV1 = crate::blob::decode(1, "tracker state", &bytes).ok()?;
        return Some(TrackerFile { parent: old.parent, members: old.members, layouts: Vec::new() });
    }
    crate::blob::decode(TRACKER_VERSION, "tracker state", &bytes).ok()
}

fn write_tracker(root: &Path, name: &str, t: &TrackerFile) -> Result<()> {
    let path = tracker_path(root, name);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, crate::blob::encode(TRACKER_VERSION, t)).map_err(|e| EngineError::io("write", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| EngineError::io("rename", &path, e))
}

/// The incremental base of a checkpoint: the parent and the tracker states, or why there is none.
fn incremental_base<S: ImageStore>(
    store: &S,
    root: &Path,
    name: &str,
    last: Option<&str>,
    full: bool,
) -> std::result::Result<(Manifest, group::Tracking), String> {
    let t = read_tracker(root, name)
        .ok_or("no tracked earlier checkpoint of this pod (first checkpoint, restored pod, or the last one ended the pod)")?;
    // The state is used once: a checkpoint that fails after the tracker re-armed must not leave
    // it behind, or the next checkpoint would miss the pages written before the failure.
    let _ = std::fs::remove_file(tracker_path(root, name));
    if last != Some(t.parent.as_str()) {
        return Err(format!("the tracker state belongs to checkpoint {}, not to the pod's last one", t.parent));
    }
    let id = CheckpointId::from_hex(&t.parent).ok_or_else(|| format!("tracker state names a bad checkpoint id {}", t.parent))?;
    let parent = store.manifest(&id).map_err(|e| format!("parent checkpoint {id} is unreadable: {e}"))?;
    let armed = t.members.into_iter().map(|a| (a.pid, a)).collect();
    let parent_images = parent.images.clone();
    let known_layouts =
        if crate::mem::full_scan() { Default::default() } else { t.layouts.into_iter().map(|k| (k.pid, k.into_vmas())).collect() };
    Ok((parent, group::Tracking { armed, whole: full, parent_images, known_layouts, ..Default::default() }))
}

/// Arms tracking on every live member of the stopped pod that is not tracked yet (their pages
/// were just copied, so the next checkpoint can be relative to this one). Failures only make the
/// next checkpoint of that process full.
fn arm_members(
    pids: &[i32],
    frozen: &[Frozen],
    init_pid: i32,
    tracking: &mut group::Tracking,
    image: &GroupImage,
) -> Result<dirty::Backend> {
    let backend = dirty::default_backend()?;
    for &pid in pids {
        if tracking.armed.contains_key(&pid) || !frozen.iter().any(|f| f.pid() == pid) {
            continue;
        }
        let Some(vpid) = image.members.iter().find(|m| m.image().is_some_and(|i| i.host_pid == pid)).map(|m| m.vpid) else {
            continue;
        };
        match crate::precopy::arm_stopped(pid, backend, dirty::Keeper::Process { pid: init_pid, target_vpid: vpid }) {
            Ok(a) => {
                tracking.armed.insert(pid, a);
            }
            Err(e) => tracing::warn!(pid, error = %e, "dirty tracking not armed; its next checkpoint is full"),
        }
    }
    Ok(backend)
}

/// Waits for the layouts read after the stop and checks against them those the save took over
/// from the last checkpoint (`reused`, host pids; [`crate::mem::check_taken`]): a difference
/// fails the checkpoint before it is committed. Returns the layouts to keep for the next one (a
/// process whose read failed, having ended meanwhile, has none and is not checked).
fn check_layouts(
    pod: &str,
    read: std::thread::JoinHandle<Vec<(i32, Result<Vec<crate::mem::VmaState>>)>>,
    reused: &[i32],
    image: &GroupImage,
) -> Result<Vec<KnownLayout>> {
    let t = Instant::now();
    let read = read.join().map_err(|_| pod_err(pod, "read the layouts after the stop", "the reading thread panicked"))?;
    let mut keep = Vec::with_capacity(read.len());
    for (pid, vmas) in read {
        match vmas {
            Ok(vmas) => {
                if reused.contains(&pid) {
                    if let Some(used) = image.members.iter().filter_map(|m| m.image()).find(|i| i.host_pid == pid) {
                        crate::mem::check_taken(pid, &used.vmas, &vmas)
                            .map_err(|e| pod_err(pod, "check the memory layout taken over from the last checkpoint", e))?;
                    }
                }
                keep.push(KnownLayout::new(pid, vmas));
            }
            // Ended since the stop (its layout cannot be checked: passed over, as a mapping
            // unmapped since is), or unreadable: the next checkpoint reads its smaps.
            Err(e) => tracing::debug!(pid, error = %e, "layout not read after the checkpoint; the next one reads smaps"),
        }
    }
    tracing::debug!(pod, reused = reused.len(), kept = keep.len(), wait_ms = t.elapsed().as_secs_f64() * 1e3, "layouts checked");
    Ok(keep)
}

/// Name of the image holding the pod's console log.
pub(crate) const CONSOLE_IMAGE: &str = "console.log";
/// How much of the end of a console log a checkpoint keeps.
const CONSOLE_KEEP: u64 = 16 << 20;

pub(crate) fn read_console(path: &Path) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else { return Vec::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut out = Vec::new();
    if f.seek(SeekFrom::Start(len.saturating_sub(CONSOLE_KEEP))).is_ok() {
        let _ = f.take(CONSOLE_KEEP).read_to_end(&mut out);
    }
    out
}

/// Fails when a process of the pod has a standard stream that leads outside it (a `zap exec`
/// session attached to a terminal or to `zap exec`'s pipes): nothing in a restored pod could
/// connect it again.
pub(crate) fn refuse_external_streams(name: &str, image: &GroupImage) -> Result<()> {
    for m in &image.members {
        if let Some(fd) = m.image().and_then(|i| i.fds.iter().find(|f| matches!(f.kind, crate::files::FdKind::External { .. }))) {
            let crate::files::FdKind::External { what } = &fd.kind else { unreachable!() };
            return Err(pod_err(
                name,
                "checkpoint",
                format!("pid {} has fd {} connected outside the pod ({what}), e.g. a running `zap exec`; wait for it to end", m.vpid, fd.fd),
            ));
        }
    }
    Ok(())
}

/// A pod stopped as one (see the module doc): its checkpoint lock is held and every process but
/// its init is stopped under ptrace. Dropping it resumes the pod.
pub struct StoppedPod {
    root: std::path::PathBuf,
    name: String,
    state: PodState,
    /// Host pids of the pod's processes but its init (zombies included).
    pids: Vec<i32>,
    /// The stopped processes; `None` once resumed or ended.
    frozen: Option<Vec<Frozen>>,
    /// How long the stop took, ms.
    stop_ms: f64,
    /// The pod's network lock; `None` once unlocked or kept for the end.
    netlock: Option<NetLock>,
    /// Sub-cgroups the pod had frozen itself, thawed for the stop (see [`stop_pod`]).
    thawed: Vec<String>,
    /// The checkpoint lock (taken back by [`StoppedPod::into_lock`]).
    lock: Option<PodLock>,
    /// The pod's clocks when it stopped.
    clocks: super::clock::ClockImage,
}

/// A pod's checkpoint lock (`<pod dir>/checkpoint.lock`, `flock`): one checkpoint or migration of
/// a pod at a time; a second waits for the first. Released on drop.
pub struct PodLock(#[allow(dead_code)] std::fs::File);

impl PodLock {
    /// Takes the lock of pod `name`, waiting for its holder.
    pub fn acquire(root: &Path, name: &str) -> Result<PodLock> {
        load(root, name)?; // a clear error for an unknown pod before anything is created
        let lock_path = pod_dir(root, name).join("checkpoint.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| EngineError::io("open", &lock_path, e))?;
        crate::sys::ns::flock_exclusive(&lock).map_err(|e| EngineError::io("lock", &lock_path, e))?;
        Ok(PodLock(lock))
    }
}

impl StoppedPod {
    /// Stops running pod `name` of run directory `root`. Waits for a checkpoint of the pod that
    /// is under way (the scheduler's, say) to end first.
    pub fn stop(root: &Path, name: &str) -> Result<StoppedPod> {
        Self::stop_locked(root, name, PodLock::acquire(root, name)?)
    }

    /// Stops running pod `name` whose checkpoint lock the caller holds.
    pub fn stop_locked(root: &Path, name: &str, lock: PodLock) -> Result<StoppedPod> {
        let state = load(root, name)?;
        if status(root, &state) != PodStatus::Running {
            return Err(pod_err(name, "stop", format!("the pod is {}", status(root, &state))));
        }
        let t = Instant::now();
        let cg = cgroup_of(&state);
        let (mut pids, mut frozen, mut thawed) = stop_pod(name, &cg, state.init_pid)?;
        // The network is locked before anything of the pod is read, so that the kernel
        // acknowledges nothing the checkpoint will not hold; a pod without a TCP socket (no
        // process can make one while it is stopped) needs no lock, which saves the two `nft`
        // runs. A failure to lock resumes the pod.
        let netlock = if has_tcp_sockets(state.init_pid) {
            match NetLock::namespace(&format!("pod {name}"), state.init_pid) {
                Ok(l) => Some(l),
                Err(e) => {
                    if let Err(e) = cg.refreeze(&thawed) {
                        tracing::warn!(pod = name, error = %e, "could not freeze again a cgroup the pod had frozen");
                    }
                    drop(frozen);
                    return Err(e);
                }
            }
        } else {
            None
        };
        // Connections a listener's backlog holds cannot be put back in one (no interface does
        // that), nor can inotify events or bytes queued on a pseudo-terminal be read without
        // consuming them: the processes run on a moment to accept and read them. The network
        // is locked, so no new connection completes meanwhile; a checkpoint still finds some
        // after that refuses them, naming them.
        for round in 1..=DRAIN_ROUNDS {
            let waiting = if netlock.is_some() { listeners_waiting(state.init_pid) } else { 0 };
            let readers: Vec<i32> = pids.iter().copied().filter(|&p| crate::files::queued_unread(p) > 0).collect();
            if waiting == 0 && readers.is_empty() {
                break;
            }
            tracing::debug!(
                pod = name,
                waiting,
                ?readers,
                round,
                "connections waiting in listen backlogs or bytes queued on inotify/pty: letting the pod take them"
            );
            // Only queued bytes: their readers alone run on, the rest stays stopped (a writer
            // that never pauses would queue more for them in every round otherwise).
            if waiting == 0 && run_alone(&mut frozen, &readers, Duration::from_millis(5 * u64::from(round))) && cg.procs().iter().all(|p| *p == state.init_pid || pids.contains(p)) {
                continue;
            }
            if let Err(e) = cg.refreeze(&thawed) {
                tracing::warn!(pod = name, error = %e, "could not freeze again a cgroup the pod had frozen");
            }
            drop(frozen);
            std::thread::sleep(Duration::from_millis(5 * u64::from(round)));
            (pids, frozen, thawed) = stop_pod(name, &cg, state.init_pid)?;
        }
        let stop_ms = t.elapsed().as_secs_f64() * 1e3;
        let mut stopped = StoppedPod {
            root: root.to_path_buf(),
            name: name.to_string(),
            state,
            pids,
            frozen: Some(frozen),
            stop_ms,
            netlock,
            thawed,
            lock: Some(lock),
            clocks: Default::default(),
        };
        // The pod's clocks as it stopped for good (a failure resumes it: the drop).
        stopped.clocks = super::clock::save(stopped.state.init_pid).map_err(|e| pod_err(name, "read the pod's clocks", e))?;
        Ok(stopped)
    }

    /// The pod's clocks when it stopped, or when [`StoppedPod::read_clocks`] read them last
    /// ([`super::clock`]).
    pub fn clocks(&self) -> super::clock::ClockImage {
        self.clocks
    }

    /// Reads the pod's clocks again (still stopped), once its timers were read: a restore
    /// makes the pod's clocks go on from these, and re-arms each timer with the time it had left
    /// when read, so none ends before its time by the pod's clock.
    pub fn read_clocks(&mut self) -> Result<super::clock::ClockImage> {
        self.clocks = super::clock::save(self.state.init_pid).map_err(|e| pod_err(&self.name, "read the pod's clocks", e))?;
        Ok(self.clocks)
    }

    /// Whether the pod's network is locked (it is when the pod had a TCP socket when it stopped).
    pub fn network_locked(&self) -> bool {
        self.netlock.is_some()
    }

    /// How long taking the network lock took, ms (0 when there was none to take).
    pub fn netlock_ms(&self) -> f64 {
        self.netlock.as_ref().map_or(0.0, |l| l.lock_ms)
    }

    /// The pod's recorded state.
    pub fn state(&self) -> &PodState {
        &self.state
    }

    /// The pod's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Host pids of the pod's processes (zombies included; not the init).
    pub fn pids(&self) -> &[i32] {
        &self.pids
    }

    /// The stopped processes (empty once resumed).
    pub fn frozen(&self) -> &[Frozen] {
        self.frozen.as_deref().unwrap_or(&[])
    }

    /// How long stopping the pod took, ms.
    pub fn stop_ms(&self) -> f64 {
        self.stop_ms
    }

    /// Lets the processes run on (an interrupted syscall is made again) and unlocks the
    /// network. The checkpoint lock is kept until the value is dropped.
    pub fn resume(&mut self) -> Result<()> {
        if let Some(frozen) = self.frozen.take() {
            // Frozen again while still stopped: those processes go from ptrace to the freezer.
            if let Err(e) = cgroup_of(&self.state).refreeze(&self.thawed) {
                tracing::warn!(pod = self.name, error = %e, "could not freeze again a cgroup the pod had frozen");
            }
            drop(frozen);
        }
        match self.netlock.take() {
            Some(l) => l.unlock(),
            None => Ok(()),
        }
    }

    /// Sub-cgroups (paths under the pod's cgroup) the pod had frozen itself; they are thawed
    /// while the pod is stopped (see [`stop_pod`]) and frozen again when it resumes.
    pub fn frozen_subcgroups(&self) -> &[String] {
        &self.thawed
    }

    /// Lets the processes run on, with their network open again, and gives the checkpoint lock
    /// back to the caller, who goes on working on the pod (a migration between its rounds).
    pub fn into_lock(mut self) -> Result<PodLock> {
        self.resume()?;
        Ok(self.lock.take().expect("a stopped pod holds its lock"))
    }

    /// Leaves the pod stopped after this value is gone: the caller froze its cgroup (a
    /// migration whose handover has an unknown outcome); the processes are let go by ptrace but
    /// stay frozen until someone thaws the cgroup, and the network stays locked until
    /// [`super::netlock::unlock`].
    pub fn leave_frozen(mut self) {
        if let Some(l) = self.netlock.take() {
            l.keep();
        }
        drop(self.frozen.take());
    }

    /// Ends the pod: puts its TCP sockets in repair mode (closing them sends nothing), kills its
    /// processes and removes everything of it (as `zap rm -f`). The network stays locked until
    /// the namespace is gone.
    pub fn end(mut self) -> Result<()> {
        let live: Vec<i32> = self.pids.iter().copied().filter(|&p| !group::is_zombie_pid(p)).collect();
        let silenced = crate::sockets::silence_tcp(&live)?;
        tracing::debug!(pod = self.name, silenced, "TCP sockets in repair mode before the end");
        if let Some(l) = self.netlock.take() {
            l.keep();
        }
        let frozen = self.frozen.take();
        let r = super::rm(&self.root, &self.name, true);
        if let Some(frozen) = frozen {
            if r.is_ok() {
                for f in frozen {
                    f.forget();
                }
            }
        }
        r
    }
}

impl Drop for StoppedPod {
    fn drop(&mut self) {
        if let Err(e) = self.resume() {
            tracing::warn!(pod = self.name, error = %e, "resuming the pod");
        }
    }
}

/// Lets the stopped processes `pids` (of `frozen`) run on alone for `time`, then stops them again;
/// the other processes stay stopped. False when one of them could not be stopped again (it
/// exited, say) or was stopped by a signal of its own (it cannot run on): the caller stops the
/// whole pod again.
fn run_alone(frozen: &mut Vec<Frozen>, pids: &[i32], time: Duration) -> bool {
    if frozen.iter().any(|f| pids.contains(&f.pid()) && f.stop_signal().is_some()) {
        return false;
    }
    let released: Vec<i32> = frozen.iter().map(Frozen::pid).filter(|p| pids.contains(p)).collect();
    // Dropping a guard detaches its threads: the process runs.
    frozen.retain(|f| !released.contains(&f.pid()));
    std::thread::sleep(time);
    let mut all = true;
    for pid in released {
        match Frozen::freeze(pid) {
            Ok(f) => frozen.push(f),
            Err(e) => {
                tracing::debug!(pid, error = %e, "a process let run alone could not be stopped again");
                all = false;
            }
        }
    }
    all
}

/// The file in a pod's directory with the syscalls its threads restart after a checkpoint it ran
/// on from ([`crate::cpu::restart_notes`]).
const RESTARTS_FILE: &str = "restarts";

/// How many times a stop lets the pod run on to accept the connections waiting in its
/// listeners' backlogs and read what is queued on its inotify instances and pseudo-terminals
/// ([`StoppedPod::stop_locked`]).
pub(crate) const DRAIN_ROUNDS: u32 = 4;

/// True when the network namespace of process `pid` has a TCP socket of any state (listening,
/// connected, closing, in TIME_WAIT), or when that cannot be read.
fn has_tcp_sockets(pid: i32) -> bool {
    // The header line and the first socket's come in the first page: no need to read on (each
    // further page walks the connections again).
    ["tcp", "tcp6"].iter().any(|f| {
        let Ok(mut file) = std::fs::File::open(format!("/proc/{pid}/net/{f}")) else { return true };
        let mut page = vec![0u8; 4096];
        std::io::Read::read(&mut file, &mut page).map_or(true, |n| page[..n].iter().filter(|&&b| b == b'\n').count() > 1)
    })
}

/// Connections waiting to be accepted on the TCP listeners of the network namespace of process
/// `pid` (a `sock_diag` dump of its listeners: a listener's receive queue is its accept queue's
/// length). When the dump fails, read from `/proc/PID/net/tcp{,6}` instead.
fn listeners_waiting(pid: i32) -> u64 {
    if let Ok(n) = crate::sys::sock::tcp_listeners_waiting(pid) {
        return n;
    }
    listeners_waiting_in(pid, None)
}

/// Like [`listeners_waiting`] from `/proc/PID/net/tcp{,6}`, counting only the listeners whose
/// socket inode is in `only` when given (the sockets of one process, whose namespace may hold
/// other processes' listeners).
pub(crate) fn listeners_waiting_in(pid: i32, only: Option<&std::collections::HashSet<u64>>) -> u64 {
    proc_tcp_listeners(pid, only).iter().map(|l| l.waiting).sum()
}

/// A TCP listener as `/proc/PID/net/tcp{,6}` shows it.
pub(crate) struct ProcListener {
    /// Its address.
    pub addr: std::net::IpAddr,
    /// Its port.
    pub port: u16,
    /// Connections in its accept queue (`rx_queue`).
    pub waiting: u64,
}

/// The TCP listeners of the network namespace of process `pid` (only those whose socket inode is
/// in `only`, when given), from `/proc/PID/net/tcp{,6}`.
pub(crate) fn proc_tcp_listeners(pid: i32, only: Option<&std::collections::HashSet<u64>>) -> Vec<ProcListener> {
    let mut out = Vec::new();
    for file in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let mine = only.is_none_or(|set| f.get(9).and_then(|i| i.parse::<u64>().ok()).is_some_and(|i| set.contains(&i)));
            if f.get(3) != Some(&"0A") || !mine {
                continue;
            }
            let Some((addr, port)) = f.get(1).and_then(|a| a.split_once(':')) else { continue };
            let Ok(port) = u16::from_str_radix(port, 16) else { continue };
            // The address is printed as 32-bit words in host (little-endian) order.
            let bytes: Vec<u8> =
                (0..addr.len() / 8).filter_map(|i| u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).ok()).flat_map(u32::to_le_bytes).collect();
            let addr = match bytes.len() {
                4 => std::net::IpAddr::from(<[u8; 4]>::try_from(bytes.as_slice()).expect("4 bytes")),
                16 => std::net::IpAddr::from(<[u8; 16]>::try_from(bytes.as_slice()).expect("16 bytes")),
                _ => continue,
            };
            let waiting = f.get(4).and_then(|q| q.split_once(':')).and_then(|(_, rx)| u64::from_str_radix(rx, 16).ok()).unwrap_or(0);
            out.push(ProcListener { addr, port, waiting });
        }
    }
    out
}

/// A failure injected for tests: `ZAP_FAIL_AT=<point>` makes the checkpoint fail at `point`
/// (`after-netlock`: the pod stopped and its network locked).
fn fail_point(name: &str, point: &str) -> Result<()> {
    if std::env::var("ZAP_FAIL_AT").is_ok_and(|v| v == point) {
        return Err(pod_err(name, "checkpoint", format!("failure injected at {point} (ZAP_FAIL_AT)")));
    }
    Ok(())
}

/// Checkpoints pod `name` (in run directory `root`) into `store`. When the pod's last
/// checkpoint armed dirty-page tracking, this one is incremental: only pages written since are
/// read, and unchanged memory refers to the parent's chunks (the report's `mode` says which).
pub fn checkpoint<S: ImageStore>(store: &S, root: &Path, name: &str, opts: &PodCheckpointOptions) -> Result<CheckpointReport> {
    let t0 = Instant::now();
    let lock = PodLock::acquire(root, name)?;
    let state = load(root, name)?;
    if status(root, &state) != PodStatus::Running {
        return Err(pod_err(name, "checkpoint", format!("the pod is {}", status(root, &state))));
    }
    // Which syscalls the pod's threads restart since the last checkpoint let it run on (a thread
    // caught in `restart_syscall` is made to wait again after a restore, not to fail: `cpu`).
    crate::cpu::learn_restart_notes(&std::fs::read_to_string(pod_dir(root, name).join(RESTARTS_FILE)).unwrap_or_default());
    let base = incremental_base(store, root, name, state.last_checkpoint.as_deref(), opts.full);
    let mut writer = store.writer()?;
    // A full checkpoint of a pod that runs on: its memory is copied while it runs first.
    let (lock, mut pre) = if base.is_err() && opts.leave_running && !opts.no_precopy {
        let (lock, pre) = super::precopy::run(root, name, lock, &mut writer, &opts.chunker)?;
        (lock, Some(pre))
    } else {
        (lock, None)
    };
    // The pod's stop is timed from here: what came before (reading the parent) ran beside it.
    let tf = Instant::now();
    let mut stopped = StoppedPod::stop_locked(root, name, lock)?;
    fail_point(name, "after-netlock")?;
    let state = stopped.state().clone();
    let stopped_ms = tf.elapsed().as_secs_f64() * 1e3;
    let pids = stopped.pids().to_vec();
    let net = match &state.ip {
        Some(_) => Some(net::read_config(state.init_pid)?),
        None => None,
    };
    let (parent, mut tracking, mut mode) = match base {
        // --full: the trackers are re-armed (kept), the memory saved whole.
        Ok((_, t)) if opts.full => (None, t, "full: --full".to_string()),
        Ok((m, t)) => (Some(m), t, String::new()),
        Err(why) => match pre.as_mut() {
            // The rounds' images move into the tracking (the trackers stay in `pre` too until
            // the guard below holds them).
            Some(p) => {
                let t = group::Tracking { armed: p.armed.clone(), parent_images: std::mem::take(&mut p.images), ..Default::default() };
                (None, t, format!("full: {why}"))
            }
            None => (None, group::Tracking::default(), format!("full: {why}")),
        },
    };
    // Namespaces the processes cannot be restored in (nested PID or user) are refused first.
    super::inside::refuse_early(name, state.init_pid, &pids)?;
    let mut saved = group::save(&pids, stopped.frozen(), group::SaveOptions { tcp_close: opts.tcp_close, network_locked: stopped.network_locked(), no_cow: false }, Some(&mut tracking))?;
    refuse_external_streams(name, &saved.image)?;
    let live = saved.image.members.iter().filter(|m| m.image().is_some()).count();
    if parent.is_some() {
        mode = format!("incremental: {} of {live} processes from their dirty pages", tracking.incremental.len());
    } else if let Some(p) = &pre {
        mode.push_str(&format!("; {}: {} of {live} processes as deltas", p.describe(saved.bytes_read), tracking.incremental.len()));
    }
    if parent.is_some() || pre.is_some() {
        for (vpid, why) in &tracking.lost {
            mode.push_str(&format!("; pid {vpid} whole ({why})"));
        }
    }
    let saved_ms = tf.elapsed().as_secs_f64() * 1e3;
    let (ipc_state, mut ipc_images) = ipc::save(state.init_pid, &mut writer, &opts.chunker)?;
    // Mounts, sub-cgroups and nested namespaces, read while the pod is stopped.
    let (inside, mut inside_images, file_data) =
        super::inside::save(root, &state, &saved.image, stopped.frozen_subcgroups(), &mut writer, &opts.chunker)?;
    ipc_images.append(&mut inside_images);
    // The pod's console log, read while the pod is stopped (its end is where the processes'
    // appends continue after a restore); only its last CONSOLE_KEEP bytes are kept.
    let console = read_console(&pod_dir(root, name).join("console.log"));
    // The clocks the restore goes on from: read after the timers' time left (group::save).
    let clocks = stopped.read_clocks()?;
    let ipc_ms = tf.elapsed().as_secs_f64() * 1e3;
    // What the pre-copy rounds read counts too (the mode says how much was read while stopped).
    let bytes_read = saved.bytes_read + pre.as_ref().map_or(0, |p| p.bytes_read);
    let backend =
        if opts.leave_running { Some(arm_members(&pids, stopped.frozen(), state.init_pid, &mut tracking, &saved.image)?) } else { None };
    // Should anything fail from here on, no tracker state is kept: the descriptors parked for
    // it are closed rather than left in the init.
    let mut disarm_guard = DisarmOnFailure(tracking.armed.values().chain(&tracking.dropped).cloned().collect());
    // The pre-copy's trackers are in `tracking` now (or dropped by the save): one guard.
    if let Some(p) = pre.as_mut() {
        p.release();
    }
    if let Some(b) = backend {
        if parent.is_some() {
            mode.push_str(&format!(" (tracker {b})"));
        }
    }
    // With leave_running the pod goes on now. Otherwise it stays stopped until the checkpoint
    // is committed, so that a failure to store leaves it running rather than lost.
    if opts.leave_running {
        stopped.resume()?;
        // Best effort: without them, a thread still restarting at the next checkpoint is named
        // from its code, or gets EINTR after a restore.
        let _ = std::fs::write(pod_dir(root, name).join(RESTARTS_FILE), crate::cpu::restart_notes());
    }
    let copied_ms = tf.elapsed().as_secs_f64() * 1e3;
    // The tracked processes' layouts with smaps, read beside the storing (once the pod goes on,
    // or still stopped without leave_running): kept for the next checkpoint, and the check of
    // the layouts this one took over from the last.
    let layouts_read = {
        // Without leave_running no tracker state is kept: only the check needs a read.
        let pids: Vec<i32> =
            tracking.armed.keys().copied().filter(|p| opts.leave_running || tracking.reused_layouts.contains(p)).collect();
        std::thread::spawn(move || pids.into_iter().map(|pid| (pid, crate::mem::read_details(pid))).collect::<Vec<_>>())
    };
    tracing::info!(pod = name, processes = pids.len(), stopped_ms, saved_ms, ipc_ms, copied_ms, bytes_read, mode, "pod stopped and saved");
    let ts = Instant::now();
    // The images the saved deltas lie on: the parent's, or what the pre-copy rounds copied.
    let base_images = match (&parent, &pre) {
        (Some(m), _) => Some(m.images.as_slice()),
        (None, Some(_)) => Some(tracking.parent_images.as_slice()),
        (None, None) => None,
    };
    let (mut images, _) = group::store_memory(&mut saved, &mut writer, &opts.chunker, base_images)?;
    images.append(&mut ipc_images);
    // Files of the pod's in-memory file systems, copied while it was stopped.
    images.append(&mut file_data.store(&mut writer, &opts.chunker)?);
    if !console.is_empty() {
        let (extents, _) = zap_store::store_run(&mut writer, &opts.chunker, 0, &console)?;
        images.push(zap_store::Image { name: CONSOLE_IMAGE.into(), kind: zap_store::ImageKind::File, extents });
    }
    let stored_ms = ts.elapsed().as_secs_f64() * 1e3;
    let processes = saved.image.members.len();
    let image = PodImage {
        name: name.to_string(),
        hostname: state.hostname.clone(),
        ip: state.ip.clone(),
        net,
        memory_limit: state.memory_limit,
        cpus: state.cpus,
        argv: state.argv.clone(),
        main_vpid: state.main_vpid,
        pod_dir: format!("{}/", pod_dir(root, name).display()),
        group: saved.image,
        ipc: ipc_state,
        inside,
        clocks: Some(clocks),
    };
    let mut manifest = Manifest::new(opts.name.clone().unwrap_or_else(|| name.to_string()), KIND);
    manifest.parent = parent.as_ref().map(|m| m.id).or(opts.parent);
    manifest.labels.extend(opts.labels.clone());
    manifest.labels.insert("pod".into(), name.to_string());
    manifest.labels.insert("processes".into(), processes.to_string());
    manifest.labels.insert("mode".into(), if parent.is_some() { "incremental".into() } else { "full".into() });
    if let Some(ip) = &state.ip {
        manifest.labels.insert("ip".into(), ip.clone());
    }
    manifest.images = images;
    manifest.state = image.encode();
    let layouts = check_layouts(name, layouts_read, &tracking.reused_layouts, &image.group)?;
    let summary = zap_store::ChunkSink::commit(writer, manifest)?;
    let total_ms = t0.elapsed().as_secs_f64() * 1e3;
    tracing::debug!(pod = name, stored_ms, commit_ms = ts.elapsed().as_secs_f64() * 1e3 - stored_ms, total_ms, "checkpoint committed");
    let stopped_until_commit_ms = tf.elapsed().as_secs_f64() * 1e3;
    if opts.leave_running {
        super::set_last_checkpoint(root, name, &summary.id.to_string())?;
        let members = tracking.armed.into_values().collect();
        write_tracker(root, name, &TrackerFile { parent: summary.id.to_string(), members, layouts })?;
        disarm_guard.0.clear();
        // Descriptors parked for processes that are gone or lost their tracking.
        for a in &tracking.dropped {
            if let Err(e) = dirty::disarm(a) {
                tracing::warn!(pid = a.pid, error = %e, "could not close a parked userfaultfd");
            }
        }
    } else {
        // The checkpoint holds the pod now: end it and remove what is left of it.
        stopped.end()?;
        disarm_guard.0.clear(); // went with the pod
    }
    let frozen_ms = if opts.leave_running { copied_ms } else { stopped_until_commit_ms };
    Ok(CheckpointReport { summary, frozen_ms, total_ms, bytes_read, mode })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(clocks: Option<super::super::clock::ClockImage>) -> PodImage {
        PodImage {
            name: "p".into(),
            hostname: "h".into(),
            ip: Some("10.77.0.9/24".into()),
            net: None,
            memory_limit: Some(1 << 20),
            cpus: None,
            argv: vec!["sleep".into(), "9".into()],
            main_vpid: 2,
            pod_dir: "/run/zap/pods/p/".into(),
            group: GroupImage { members: Vec::new() },
            ipc: IpcState::default(),
            inside: Default::default(),
            clocks,
        }
    }

    #[test]
    fn version_4_images_read_as_without_clocks() {
        let old = image(None);
        // A version 4 blob is a version 5 one without the last field.
        let mut v4 = old.encode();
        assert_eq!(v4.pop(), Some(0));
        v4[0] = 4;
        assert_eq!(PodImage::decode(&v4).unwrap(), old);
        let new = image(Some(super::super::clock::ClockImage {
            at_stop: super::super::clock::Clocks { monotonic: 5_000_000_123, boottime: 6_000_000_456 },
            offsets: super::super::clock::Clocks { monotonic: -7, boottime: 8 },
        }));
        assert_eq!(PodImage::decode(&new.encode()).unwrap(), new);
        let mut v3 = new.encode();
        v3[0] = 3;
        assert!(PodImage::decode(&v3).unwrap_err().to_string().contains("version 3 not supported"));
    }
}
