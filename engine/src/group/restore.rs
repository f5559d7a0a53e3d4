//! Restoring a group (see the module doc of [`crate::group`]): the tree and every member's
//! memory, parents first; then threads, fds, process groups, attributes and CPU state.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use zap_store::{CheckpointId, ImageStore, Manifest};

use super::{GroupImage, Member, MemberState};
use crate::files::RestoreContext;
use crate::freeze::Frozen;
use crate::inject::Injector;
use crate::mem::ShmContext;
use crate::process::{trampoline_addr, vpid_of, wait_ready, ProcRestore};
use crate::sys::{clone as sysclone, regs};
use crate::{EngineError, Result};

const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Creates the init of a restored group: given the top members' pids and the trampoline
/// address, starts an init (ours) in the group's namespaces that creates them with
/// `spawn_target`; returns the init's host pid.
pub trait TargetSpawner {
    /// Starts the init.
    fn spawn(&mut self, top: &[i32], tramp: u64) -> Result<i32>;

    /// Called for each live member (vpid, host pid) right after it was taken over and its
    /// address space cleared, before it creates its children (which inherit what it is given
    /// here, e.g. namespaces of its own); `ppid` is its parent's vpid (0: the init).
    fn member_taken(&mut self, _vpid: i32, _pid: i32, _ppid: i32, _inj: &mut Injector) -> Result<()> {
        Ok(())
    }

    /// Called once every member is rebuilt (vpid, host pid), still stopped, just before they
    /// are all released (a pod opens its network and places them in cgroups here). A failure
    /// ends the restore.
    fn before_release(&mut self, _pids: &[(i32, i32)]) -> Result<()> {
        Ok(())
    }
}

/// A restored group.
#[derive(Clone, Debug, Serialize)]
pub struct GroupRestored {
    /// Host pid of the namespace init (ours).
    pub init_pid: i32,
    /// (vpid, host pid) of every member, in restore order.
    pub pids: Vec<(i32, i32)>,
    /// What could not be restored exactly.
    pub warnings: Vec<String>,
    /// Time until the group runs, ms.
    pub restore_ms: f64,
}

impl GroupRestored {
    /// Host pid of member `vpid`.
    pub fn host_pid(&self, vpid: i32) -> Option<i32> {
        self.pids.iter().find(|p| p.0 == vpid).map(|p| p.1)
    }

    /// Kills the namespace init (and so the whole group) and reaps it (a child of the caller).
    pub fn kill_and_reap(&self) {
        sysclone::kill_and_reap(self.init_pid);
    }
}

/// The union of every member's mappings, sorted, for choosing a trampoline address free in all.
pub fn group_trampoline(image: &GroupImage) -> u64 {
    let mut vmas: Vec<_> = image.members.iter().filter_map(|m| m.image()).flat_map(|i| i.vmas.iter().cloned()).collect();
    vmas.sort_by_key(|v| v.start);
    trampoline_addr(&vmas)
}

/// Reads group checkpoint `id` (refusing another kind) and locks its saved connections: the group
/// shares Zap's network namespace, so they are locked one by one, under the table its checkpoint
/// left (named after the first member).
fn read_and_lock<S: ImageStore + ?Sized>(store: &S, id: &CheckpointId) -> Result<(zap_store::Manifest, GroupImage, Option<crate::pod::netlock::NetLock>)> {
    let manifest = store.manifest(id)?;
    if manifest.kind != super::KIND {
        return Err(EngineError::Proc { pid: 0, detail: format!("checkpoint {id} is a {:?} checkpoint, not a process group", manifest.kind) });
    }
    let image = GroupImage::decode(&manifest.state)?;
    let conns: Vec<_> = image.members.iter().filter_map(|m| m.image()).flat_map(crate::process::saved_connections).collect();
    let tag = image.members.iter().find_map(|m| m.image()).map_or(0, |i| i.host_pid);
    let netlock =
        if conns.is_empty() { None } else { Some(crate::pod::netlock::NetLock::connections(std::process::id() as i32, tag, &conns)?) };
    Ok((manifest, image, netlock))
}

/// Restores group checkpoint `id` in new PID and mount namespaces whose init is ours.
pub fn restore<S: ImageStore>(store: &S, id: &CheckpointId) -> Result<GroupRestored> {
    struct PidnsSpawner;
    impl TargetSpawner for PidnsSpawner {
        fn spawn(&mut self, top: &[i32], tramp: u64) -> Result<i32> {
            sysclone::spawn_pidns_group(top, tramp)
                .map_err(|source| EngineError::Sys { step: "create pid namespace", pid: top.first().copied().unwrap_or(0), source })
        }
    }
    let (manifest, image, netlock) = read_and_lock(store, id)?;
    let r = restore_in(store, &manifest, &image, &mut PidnsSpawner, RestoreContext::new(std::process::id()))?;
    if let Some(l) = netlock {
        l.unlock()?;
    }
    Ok(r)
}

/// Restores group checkpoint `id` like [`restore`], lazily: every process runs as soon as all
/// but the pages of its private anonymous memory is in place, each process's served by a pager
/// thread of the returned [`crate::lazy::Pagers`] (see [`build`] for the pages children inherit
/// from their parent: those are written before the children are made, so they stay shared).
/// The init is guarded: it dies with the calling thread until every pager is done, so that
/// thread must live until [`crate::lazy::Pagers::wait`] returns.
pub fn restore_lazy(store: std::sync::Arc<zap_store::LocalStore>, id: &CheckpointId) -> Result<(GroupRestored, crate::lazy::Pagers)> {
    use std::os::fd::{AsRawFd, OwnedFd};
    struct GuardedSpawner(OwnedFd);
    impl TargetSpawner for GuardedSpawner {
        fn spawn(&mut self, top: &[i32], tramp: u64) -> Result<i32> {
            sysclone::spawn_pidns_group_guarded(top, tramp, self.0.as_raw_fd())
                .map_err(|source| EngineError::Sys { step: "create pid namespace", pid: top.first().copied().unwrap_or(0), source })
        }
    }
    let (manifest, image, netlock) = read_and_lock(&*store, id)?;
    let (guard_read, guard_write) = sysclone::guard_pair().map_err(|source| EngineError::Sys { step: "create the guard sockets", pid: 0, source })?;
    let mut pagers = crate::lazy::Pagers::new(store.clone(), guard_write);
    let mut spawner = GuardedSpawner(guard_read);
    let r = restore_in_lazy(&*store, &manifest, &image, &mut spawner, RestoreContext::new(std::process::id()), Some(&mut pagers))?;
    drop(spawner);
    if let Some(l) = netlock {
        l.unlock()?;
    }
    pagers.running();
    Ok((r, pagers))
}

/// Host pids of `parent`'s children, by their vpid.
fn children_by_vpid(parent: i32) -> HashMap<i32, i32> {
    let mut out = HashMap::new();
    let s = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).unwrap_or_default();
    for host in s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
        if let Ok(v) = vpid_of(host) {
            out.insert(v, host);
        }
    }
    out
}

/// Waits until `parent` has a child of pid `vpid` (in its namespace) ready in the trampoline;
/// returns its host pid.
pub fn wait_child(parent: i32, vpid: i32, tramp: u64) -> Result<i32> {
    let start = Instant::now();
    loop {
        if let Some(&host) = children_by_vpid(parent).get(&vpid) {
            wait_ready(host, tramp, READY_TIMEOUT)?;
            return Ok(host);
        }
        if start.elapsed() > READY_TIMEOUT {
            return Err(EngineError::Proc { pid: vpid, detail: format!("was not created under its parent (host pid {parent})") });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Injects `clone3` with `set_tid = [vpid]` (a fork-like child) into the process `inj` drives.
pub fn clone_child(inj: &mut Injector, vpid: i32) -> Result<()> {
    let scratch = inj.scratch(4096)?;
    // struct clone_args (11 u64) followed by the set_tid array.
    let mut args = [0u64; 12];
    args[4] = libc::SIGCHLD as u64; // exit_signal
    args[8] = scratch + 88; // set_tid
    args[9] = 1; // set_tid_size
    args[11] = vpid as u64;
    let bytes: Vec<u8> = args.iter().flat_map(|w| w.to_le_bytes()).collect();
    inj.write_mem(scratch, &bytes)?;
    let got = inj.call("clone3 child with its pid", libc::SYS_clone3, [scratch, 88, 0, 0, 0, 0])?;
    if got != vpid as u64 {
        return Err(EngineError::Proc { pid: vpid, detail: format!("clone3 with set_tid gave pid {got}") });
    }
    Ok(())
}

/// Restores `image` (from `manifest`) with an init started by `spawner`; `files` carries the
/// fd restore settings (paths and addresses to rewrite). On failure the init (and with it
/// everything created) is killed before the error is returned.
pub fn restore_in<S: ImageStore>(
    store: &S,
    manifest: &Manifest,
    image: &GroupImage,
    spawner: &mut dyn TargetSpawner,
    files: RestoreContext,
) -> Result<GroupRestored> {
    restore_in_lazy(store, manifest, image, spawner, files, None)
}

/// [`restore_in`], lazily when `lazy` is given: the private anonymous memory of each process is
/// left to a pager of `lazy`, started as soon as the process's mappings are registered ([`build`]).
/// The init `spawner` starts must be guarded by the pipe whose write end `lazy` holds. The
/// pagers serve only faults until the caller says the group runs ([`crate::lazy::Pagers::running`]).
pub fn restore_in_lazy<S: ImageStore>(
    store: &S,
    manifest: &Manifest,
    image: &GroupImage,
    spawner: &mut dyn TargetSpawner,
    files: RestoreContext,
    mut lazy: Option<&mut crate::lazy::Pagers>,
) -> Result<GroupRestored> {
    let t0 = Instant::now();
    let tramp = group_trampoline(image);
    if image.members.iter().any(|m| m.vpid == 1) {
        return Err(EngineError::Proc { pid: 1, detail: "the group's namespace init (pid 1) cannot be a member".into() });
    }
    let init = spawner.spawn(&image.top(), tramp)?;
    if let Some(l) = lazy.as_deref_mut() {
        l.set_init(init);
    }
    let mut tree = BareTree::new(init, tramp);
    let result = build(store, manifest, image, &mut tree, files, spawner, lazy)
        .and_then(|(pids, warnings)| spawner.before_release(&pids).map(|()| (pids, warnings)));
    tree.finish(image, result, t0)
}

/// Gives session leader `vpid` its controlling terminal back, if it had one among the group's
/// pseudo-terminals ([`crate::files::take_ctty`]).
pub fn take_ctty(image: &GroupImage, inj: &mut Injector, vpid: i32, files: &mut RestoreContext) -> Result<()> {
    let all = image.members.iter().filter_map(|m| m.image()).flat_map(|i| i.fds.iter());
    crate::files::take_ctty(inj, vpid, all, files)
}

/// True when a session leader of `image` had a controlling terminal, which it must take before
/// its children exist (a tree built without the image lacks it).
pub fn has_ctty(image: &GroupImage) -> bool {
    image.members.iter().filter_map(|m| m.image()).flat_map(|i| i.fds.iter()).any(|f| match &f.kind {
        crate::files::FdKind::PtyMaster { state: Some(s), .. } | crate::files::FdKind::PtySlave { state: Some(s), .. } => {
            s.session.is_some_and(|(sid, _)| image.members.iter().any(|m| m.vpid == sid && m.sid == sid))
        }
        _ => false,
    })
}

/// The shape of a process tree: what a bare tree is built from ([`BareTree::build`]), known
/// before the processes' images are (a migration reads it from `/proc` while the source runs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TreeShape {
    /// Members in restore order (parents first): (vpid, parent vpid or 0, leads its session,
    /// alive (not a zombie)).
    pub members: Vec<(i32, i32, bool, bool)>,
}

impl TreeShape {
    /// The shape of a saved group.
    pub fn of(image: &GroupImage) -> Self {
        TreeShape { members: image.members.iter().map(|m| (m.vpid, m.ppid, m.sid == m.vpid, m.image().is_some())).collect() }
    }

    /// Members whose parent is not in the group, in order.
    pub fn top(&self) -> Vec<i32> {
        self.members.iter().filter(|m| m.1 == 0).map(|m| m.0).collect()
    }
}

/// A member of a bare tree just taken over ([`BareTree::build`]).
#[derive(Clone, Copy, Debug)]
pub struct Taken {
    /// Its pid in the pod.
    pub vpid: i32,
    /// Its host pid.
    pub pid: i32,
    /// Its parent's pid in the pod (0: the namespace init).
    pub ppid: i32,
    /// It leads its session.
    pub leads_session: bool,
}

/// A group's processes created with their pids, stopped under ptrace: by [`BareTree::build`]
/// bare (live members taken over and cleared down to the trampoline, zombies-to-be waiting), or
/// by a whole restore ([`restore_in`]) with their memory.
pub struct BareTree {
    /// Host pid of the namespace init (ours).
    pub init: i32,
    /// The trampoline address.
    pub tramp: u64,
    /// Host pid of each member, by vpid.
    pub host: HashMap<i32, i32>,
    /// The stopped members.
    pub frozen: Vec<Frozen>,
    /// The injector driving each live member, by vpid (until [`complete`] takes it).
    pub injectors: HashMap<i32, Injector>,
}

impl BareTree {
    /// An empty tree under init `init` (whose top members exist or are being created).
    pub fn new(init: i32, tramp: u64) -> Self {
        BareTree { init, tramp, host: HashMap::new(), frozen: Vec::new(), injectors: HashMap::new() }
    }

    /// Builds the tree bare: each member is taken over, takes its session, is handed to
    /// `on_taken` (with its vpid, host pid, parent's vpid and whether it leads its session: a
    /// session leader takes its controlling terminal there, and any member enters the
    /// namespaces it had, before its children exist), then creates its own children (`clone3` +
    /// `set_tid`). No child inherits memory from its parent here (a migration writes every
    /// process's pages).
    pub fn build(&mut self, shape: &TreeShape, on_taken: &mut dyn FnMut(&mut Injector, Taken) -> Result<()>) -> Result<()> {
        for v in shape.top() {
            self.host.insert(v, wait_child(self.init, v, self.tramp)?);
        }
        for &(vpid, ppid, leads_session, live) in &shape.members {
            let pid = *self.host.get(&vpid).ok_or_else(|| EngineError::Proc { pid: vpid, detail: "was not created".into() })?;
            self.frozen.push(Frozen::freeze(pid)?);
            let kids: Vec<i32> = shape.members.iter().filter(|c| c.1 == vpid).map(|c| c.0).collect();
            if live {
                let mut inj = ProcRestore::take_over(pid, self.tramp, &[])?;
                if leads_session {
                    inj.call("setsid", libc::SYS_setsid, [0; 6])?;
                }
                on_taken(&mut inj, Taken { vpid, pid, ppid, leads_session })?;
                for &k in &kids {
                    clone_child(&mut inj, k)?;
                    self.host.insert(k, wait_child(pid, k, self.tramp)?);
                }
                self.injectors.insert(vpid, inj);
            } else if !kids.is_empty() {
                return Err(EngineError::Proc { pid: vpid, detail: "a zombie with children cannot be restored".into() });
            }
        }
        Ok(())
    }

    /// Ends the restore: on success every member runs from here, those saved in a job-control
    /// stop stopped again ([`release`]; the result says how long it took since `t0`); on
    /// failure every member is killed while still traced and the init with them.
    pub fn finish(self, image: &GroupImage, result: Result<Built>, t0: Instant) -> Result<GroupRestored> {
        let BareTree { init, frozen, .. } = self;
        match result {
            Ok((pids, mut warnings)) => {
                release(image, &pids, frozen, &mut warnings);
                let restored = GroupRestored { init_pid: init, pids, warnings, restore_ms: t0.elapsed().as_secs_f64() * 1e3 };
                kill_signalled_zombies(image, &restored);
                Ok(restored)
            }
            Err(e) => {
                kill_tree(init, frozen);
                Err(e)
            }
        }
    }

    /// Kills every member (while still traced, so that no half-restored thread runs) and the init.
    pub fn abandon(self) {
        kill_tree(self.init, self.frozen)
    }
}

fn kill_tree(init: i32, frozen: Vec<Frozen>) {
    for f in frozen {
        if let Err(kill) = f.kill() {
            tracing::warn!(error = %kill, "could not kill a half-restored process");
        }
    }
    sysclone::kill_and_reap(init); // a pod init is not our child: gone is enough
}

/// (vpid, host pid) of every member, and the warnings of the restore.
pub type Built = (Vec<(i32, i32)>, Vec<String>);

/// The whole restore's first step: the tree and the memory, parents first. Each member takes
/// its session, is handed to the spawner ([`TargetSpawner::member_taken`]), makes the children
/// that inherit none of its memory, gets its own memory (shared anonymous memory comes from the
/// first member that maps it), makes the children that inherit pages from it (copy-on-write, see
/// [`crate::mem::cow`]), and only then sets what changes what fork copies. Then [`fill`].
///
/// Lazily (`lazy` given): the mappings of a member that its children inherit pages of are
/// written before it makes those children, as in an eager restore, so the pages stay shared
/// copy-on-write as they were; its other lazy-servable mappings ([`ProcRestore::memory_lazy`])
/// are registered with a userfaultfd once those children exist (so their making raises no fork
/// event), and its pager starts at once. A child's mappings that inherit pages are written
/// (its own pages on top of its parent's); the rest of its memory is lazy too.
fn build<S: ImageStore>(
    store: &S,
    manifest: &Manifest,
    image: &GroupImage,
    tree: &mut BareTree,
    mut fctx: RestoreContext,
    spawner: &mut dyn TargetSpawner,
    mut lazy: Option<&mut crate::lazy::Pagers>,
) -> Result<Built> {
    let tramp = tree.tramp;
    for v in image.top() {
        tree.host.insert(v, wait_child(tree.init, v, tramp)?);
    }
    let mut live: Vec<ProcRestore<'_>> = Vec::new();
    let mut zombies: Vec<(i32, i32)> = Vec::new();
    let mut shm = ShmContext::default();
    for m in &image.members {
        let pid = *tree.host.get(&m.vpid).ok_or_else(|| EngineError::Proc { pid: m.vpid, detail: "was not created".into() })?;
        tree.frozen.push(Frozen::freeze(pid)?);
        let kids: Vec<&Member> = image.members.iter().filter(|c| c.ppid == m.vpid).collect();
        let inherits = |c: &Member| c.image().is_some_and(|i| i.vmas.iter().any(|v| !v.inherited.is_empty()));
        match &m.state {
            MemberState::Live(img) => {
                let mut r = ProcRestore::begin(img, pid, tramp)?;
                if m.sid == m.vpid {
                    r.injector().call("setsid", libc::SYS_setsid, [0; 6])?;
                    // Its controlling terminal, before its children, so that they inherit it.
                    take_ctty(image, r.injector(), m.vpid, &mut fctx)?;
                }
                spawner.member_taken(m.vpid, pid, m.ppid, r.injector())?;
                for k in kids.iter().filter(|c| !inherits(c)) {
                    clone_child(r.injector(), k.vpid)?;
                    tree.host.insert(k.vpid, wait_child(pid, k.vpid, tramp)?);
                }
                let parent = image.members.iter().find(|p| p.vpid == m.ppid).and_then(Member::image).filter(|_| inherits(m));
                let ranges = match lazy.as_deref_mut() {
                    None => {
                        r.memory(store, &manifest.images, &mut shm, parent)?;
                        Vec::new()
                    }
                    Some(_) => {
                        let eager: Vec<(u64, u64)> =
                            kids.iter().filter(|c| inherits(c)).filter_map(|c| c.image()).flat_map(|i| crate::mem::cow::keep_ranges(&i.vmas)).collect();
                        r.memory_lazy_layout(store, &manifest.images, &mut shm, parent, &eager)?
                    }
                };
                for k in kids.iter().filter(|c| inherits(c)) {
                    clone_child(r.injector(), k.vpid)?;
                    tree.host.insert(k.vpid, wait_child(pid, k.vpid, tramp)?);
                }
                if let Some(pagers) = lazy.as_deref_mut().filter(|_| !ranges.is_empty()) {
                    let uffd = r.register_lazy(&ranges)?;
                    pagers.start(m.vpid, uffd, ranges)?;
                }
                r.memory_late()?;
                live.push(r);
            }
            MemberState::Zombie { status, comm } => {
                if !kids.is_empty() {
                    return Err(EngineError::Proc { pid: m.vpid, detail: "a zombie with children cannot be restored".into() });
                }
                zombies.push(zombie(pid, tramp, comm, *status)?);
            }
        }
    }
    fill(tree, image, fctx, live, zombies)
}

/// Gives the zombie-to-be `pid` its name; returns (pid, exit status) for [`fill`].
fn zombie(pid: i32, tramp: u64, comm: &str, status: i32) -> Result<(i32, i32)> {
    let mut inj = Injector::new(pid, pid, tramp)?;
    let scratch = inj.put_cstr(&comm.as_bytes()[..comm.len().min(15)])?;
    inj.call("prctl(PR_SET_NAME)", libc::SYS_prctl, [libc::PR_SET_NAME as u64, scratch, 0, 0, 0, 0])?;
    inj.release_scratch()?;
    inj.forget();
    Ok((pid, status))
}

/// Fills every member of the bare `tree` in from `image`: `memory` for each live member (in
/// order; a migration, whose mappings and pages are in place already, passes what is left of
/// the memory: [`ProcRestore::memory_in_place`]), then threads, fds, process groups,
/// attributes and CPU state, zombies ([`fill`]). The members stay stopped;
/// [`BareTree::finish`] releases them.
pub fn complete(
    tree: &mut BareTree,
    image: &GroupImage,
    fctx: RestoreContext,
    mut memory: impl FnMut(&mut ProcRestore<'_>) -> Result<()>,
) -> Result<Built> {
    let tramp = tree.tramp;
    let mut live: Vec<ProcRestore<'_>> = Vec::new();
    let mut zombies: Vec<(i32, i32)> = Vec::new();
    for m in &image.members {
        let pid = *tree.host.get(&m.vpid).ok_or_else(|| EngineError::Proc { pid: m.vpid, detail: "was not created".into() })?;
        match &m.state {
            MemberState::Live(img) => {
                let inj = tree
                    .injectors
                    .remove(&m.vpid)
                    .ok_or_else(|| EngineError::Proc { pid: m.vpid, detail: "was not taken over (a zombie in the bare tree?)".into() })?;
                let mut r = ProcRestore::adopt(img, pid, tramp, inj);
                memory(&mut r)?;
                live.push(r);
            }
            MemberState::Zombie { status, comm } => zombies.push(zombie(pid, tramp, comm, *status)?),
        }
    }
    fill(tree, image, fctx, live, zombies)
}

/// The steps after the memory, for members whose memory is in place: threads, fds, process
/// groups, attributes and CPU state; zombies get their exit.
fn fill(tree: &mut BareTree, image: &GroupImage, mut fctx: RestoreContext, mut live: Vec<ProcRestore<'_>>, zombies: Vec<(i32, i32)>) -> Result<Built> {
    let tramp = tree.tramp;
    let mut warnings = Vec::new();
    // 2. Threads.
    for r in &mut live {
        let f = tree.frozen.iter_mut().find(|f| f.pid() == r.pid()).expect("every member is stopped");
        r.threads(f)?;
    }
    // 3. Fds in save order, then the pipe keepers go. A unix socket may be made by another
    // member than the one restoring it (the process its SO_PEERCRED names).
    fctx.sockets.members = live.iter().map(|r| (r.image().vpid, r.pid())).collect();
    fctx.sockets.tramp = tramp;
    for r in &mut live {
        r.files(&mut fctx)?;
    }
    {
        // Messages queued on unix sockets, once every fd they may carry exists.
        let mut procs: Vec<(i32, &mut Injector)> = live.iter_mut().map(|r| (r.image().vpid, r.injector())).collect();
        crate::sockets::finish(&mut procs, &mut fctx)?;
    }
    for r in &mut live {
        let keep = fctx.keepers(r.image().vpid);
        r.close_fds(&keep)?;
    }
    // 4. Process groups: leaders first, then members.
    let member = |vpid: i32| image.members.iter().find(|m| m.vpid == vpid).expect("member of the image");
    for leaders in [true, false] {
        for r in &mut live {
            let m = member(r.image().vpid);
            if m.pgid == 0 || m.sid == m.vpid || (m.pgid == m.vpid) != leaders {
                continue;
            }
            let target = if leaders { 0 } else { m.pgid as u64 };
            if let Err(e) = r.injector().call("setpgid", libc::SYS_setpgid, [0, target, 0, 0, 0, 0]) {
                warnings.push(format!("pid {}: could not join process group {}: {e}", m.vpid, m.pgid));
            }
        }
    }
    // Terminals get their foreground process groups back.
    for r in &mut live {
        let vpid = r.image().vpid;
        crate::files::set_foreground(r.injector(), vpid, &mut fctx)?;
    }
    // 5. Every live member's attributes, credentials and CPU state.
    let mut pids: Vec<(i32, i32)> = image.members.iter().map(|m| (m.vpid, tree.host[&m.vpid])).collect();
    for r in live {
        warnings.extend(r.finish()?);
    }
    // 6. Zombies exit with their saved status when released.
    for (pid, status) in zombies {
        let sys_err = |step: &'static str| move |source| EngineError::Sys { step, pid, source };
        let mut r = regs::get_regs(pid).map_err(sys_err("read registers"))?;
        if status & 0x7f == 0 {
            r.rip = tramp;
            r.rax = libc::SYS_exit_group as u64;
            r.rdi = ((status >> 8) & 0xff) as u64;
            r.orig_rax = u64::MAX;
            regs::set_regs(pid, &r).map_err(sys_err("load exit_group"))?;
        } else {
            // Killed by a signal: unblock it; it is sent once the process is released.
            regs::set_sigmask(pid, 0).map_err(sys_err("unblock signals"))?;
        }
    }
    pids.shrink_to_fit();
    Ok((pids, warnings))
}

/// Sends the killing signals of zombies that died by a signal (after the group was released).
fn kill_signalled_zombies(image: &GroupImage, restored: &GroupRestored) {
    for m in &image.members {
        if let MemberState::Zombie { status, .. } = m.state {
            if status & 0x7f != 0 {
                if let Some(pid) = restored.host_pid(m.vpid) {
                    let _ = sysclone::kill(pid, status & 0x7f);
                }
            }
        }
    }
}

/// Lets every member run (step 8 of [`crate::attrs`]'s order), those saved stopped back into
/// their job-control stop. Children go before parents, so that a parent is still held when its
/// children's stops complete: it collects again, with an injected `waitid`, each stop it had
/// collected before the checkpoint, and loses the SIGCHLD the stops queued unless one was
/// pending for it then. What cannot be put back is reported in `warnings`.
fn release(image: &GroupImage, pids: &[(i32, i32)], frozen: Vec<Frozen>, warnings: &mut Vec<String>) {
    let host = |vpid: i32| pids.iter().find(|p| p.0 == vpid).map(|p| p.1);
    let mut held: HashMap<i32, Frozen> = frozen.into_iter().map(|f| (f.pid(), f)).collect();
    for m in image.members.iter().rev() {
        let (Some(img), Some(h)) = (m.image(), host(m.vpid)) else { continue };
        let stopped: Vec<(i32, i32, bool)> = image
            .members
            .iter()
            .filter(|c| c.ppid == m.vpid)
            .filter_map(|c| Some((c.vpid, host(c.vpid)?, c.image()?.attrs.stop?.parent_may_wait)))
            .collect();
        if !stopped.is_empty() {
            if let Err(e) = recollect(h, img, &stopped) {
                warnings.push(format!("pid {}: the stops of its children may be reported to it again: {e}", m.vpid));
            }
        }
        if let Some(stop) = img.attrs.stop {
            if let Some(f) = held.remove(&h) {
                if let Err(e) = f.detach_stopped(stop.signal) {
                    warnings.push(format!("pid {}: not put back into its stop (signal {}): {e}", m.vpid, stop.signal));
                }
            }
        }
    }
    drop(held); // the others run
}

/// In the restored parent `parent` (host pid; still held, registers loaded), once its stopped
/// children (vpid, host pid, whether it could still collect the stop) are all stopped: collects
/// the stops it had collected before, and drops the SIGCHLD they queued if it had none pending.
fn recollect(parent: i32, img: &crate::process::ProcessImage, children: &[(i32, i32, bool)]) -> Result<()> {
    const P_PID: u64 = 1;
    const WNOHANG: u64 = 1;
    const WSTOPPED: u64 = 2;
    const SIGCHLD_BIT: u64 = 1 << (libc::SIGCHLD - 1);
    let t0 = Instant::now();
    for &(vpid, h, _) in children {
        while !all_threads_stopped(h) {
            if t0.elapsed() > READY_TIMEOUT {
                return Err(EngineError::Proc { pid: vpid, detail: "did not stop again".into() });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let is_sigchld = |info: &Vec<u8>| info.get(..4).is_some_and(|b| i32::from_le_bytes(b.try_into().expect("4")) == libc::SIGCHLD);
    let had_sigchld = img.signals.shared_pending.iter().chain(img.threads.iter().flat_map(|t| t.pending.iter())).any(is_sigchld);
    // Whether the stops queue a SIGCHLD for the parent: not with SA_NOCLDSTOP or SIG_IGN, and at
    // the default action (ignore) only where the thread that cloned the children (the main one)
    // blocks it.
    let act = img.signals.actions.iter().find(|(s, _)| *s == libc::SIGCHLD).map(|(_, a)| *a).unwrap_or_default();
    let main_mask = img.threads.first().map_or(0, |t| t.sigmask);
    let queued = act.handler != 1 && act.flags & libc::SA_NOCLDSTOP as u64 == 0 && (act.handler != 0 || main_mask & SIGCHLD_BIT != 0);
    let recollect: Vec<i32> = children.iter().filter(|c| !c.2).map(|c| c.0).collect();
    if recollect.is_empty() && (had_sigchld || !queued) {
        return Ok(());
    }
    let sys_err = |step: &'static str| move |source| EngineError::Sys { step, pid: parent, source };
    // Every signal blocked while we inject, so that the SIGCHLD is not delivered meanwhile.
    let mask = regs::get_sigmask(parent).map_err(sys_err("read signal mask"))?;
    regs::set_sigmask(parent, !0u64).map_err(sys_err("block signals"))?;
    let mut inj = Injector::new(parent, parent, crate::inject::find_syscall_insn(parent)?)?;
    let done = (|| {
        let scratch = inj.scratch(4096)?;
        for vpid in recollect {
            inj.call("waitid (collect a stop again)", libc::SYS_waitid, [P_PID, vpid as u64, scratch, WSTOPPED | WNOHANG, 0, 0])?;
        }
        if queued && !had_sigchld {
            while shared_pending(parent) & SIGCHLD_BIT == 0 {
                if t0.elapsed() > READY_TIMEOUT {
                    return Err(EngineError::Proc { pid: parent, detail: "the SIGCHLD of its children's stops did not come".into() });
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            // sigset {SIGCHLD}, then a zero timeout.
            inj.write_mem(scratch, &SIGCHLD_BIT.to_le_bytes())?;
            inj.write_mem(scratch + 8, &[0u8; 16])?;
            inj.call("rt_sigtimedwait (drop SIGCHLD)", libc::SYS_rt_sigtimedwait, [scratch, 0, scratch + 8, 8, 0, 0])?;
        }
        Ok::<(), EngineError>(())
    })();
    inj.finish()?;
    regs::set_sigmask(parent, mask).map_err(sys_err("restore signal mask"))?;
    done
}

fn all_threads_stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .is_ok_and(|s| s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()) == Some("T"))
    })
}

/// The process-wide pending signals of `pid` (`ShdPnd` of /proc/PID/status).
fn shared_pending(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("ShdPnd:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok()))
        .unwrap_or(0)
}
