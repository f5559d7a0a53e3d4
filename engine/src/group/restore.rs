//! Restoring a group: build the tree bare, then fill every member in (see the module doc of
//! [`crate::group`]): memory, threads, fds, process groups, then attributes and CPU state.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use zap_store::{CheckpointId, ImageStore, Manifest};

use super::{GroupImage, MemberState};
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

/// Restores group checkpoint `id` in new PID and mount namespaces whose init is ours.
pub fn restore<S: ImageStore>(store: &S, id: &CheckpointId) -> Result<GroupRestored> {
    struct PidnsSpawner;
    impl TargetSpawner for PidnsSpawner {
        fn spawn(&mut self, top: &[i32], tramp: u64) -> Result<i32> {
            sysclone::spawn_pidns_group(top, tramp)
                .map_err(|source| EngineError::Sys { step: "create pid namespace", pid: top.first().copied().unwrap_or(0), source })
        }
    }
    let manifest = store.manifest(id)?;
    if manifest.kind != super::KIND {
        return Err(EngineError::Proc { pid: 0, detail: format!("checkpoint {id} is a {:?} checkpoint, not a process group", manifest.kind) });
    }
    let image = GroupImage::decode(&manifest.state)?;
    restore_in(store, &manifest, &image, &mut PidnsSpawner, RestoreContext::new(std::process::id()))
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

fn wait_child(parent: i32, vpid: i32, tramp: u64) -> Result<i32> {
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

/// Injects `clone3` with `set_tid = [vpid]` (a fork-like child) into the process `r` drives.
fn clone_child(r: &mut ProcRestore<'_>, vpid: i32) -> Result<()> {
    let inj = r.injector();
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
    let t0 = Instant::now();
    let tramp = group_trampoline(image);
    let top = image.top();
    if image.members.iter().any(|m| m.vpid == 1) {
        return Err(EngineError::Proc { pid: 1, detail: "the group's namespace init (pid 1) cannot be a member".into() });
    }
    let init = spawner.spawn(&top, tramp)?;
    let mut frozen: Vec<Frozen> = Vec::new();
    let result = build(store, manifest, image, init, tramp, &mut frozen, files);
    match result {
        Ok((pids, warnings)) => {
            drop(frozen); // every member runs from here
            let restored = GroupRestored { init_pid: init, pids, warnings, restore_ms: t0.elapsed().as_secs_f64() * 1e3 };
            kill_signalled_zombies(image, &restored);
            Ok(restored)
        }
        Err(e) => {
            // Killed while still traced, so that no half-restored thread runs.
            for f in frozen {
                if let Err(kill) = f.kill() {
                    tracing::warn!(error = %kill, "could not kill a half-restored process");
                }
            }
            sysclone::kill_and_reap(init); // a pod init is not our child: gone is enough
            Err(e)
        }
    }
}

type Built = (Vec<(i32, i32)>, Vec<String>);

fn build<S: ImageStore>(
    store: &S,
    manifest: &Manifest,
    image: &GroupImage,
    init: i32,
    tramp: u64,
    frozen: &mut Vec<Frozen>,
    mut fctx: RestoreContext,
) -> Result<Built> {
    let mut host: HashMap<i32, i32> = HashMap::new();
    for v in image.top() {
        host.insert(v, wait_child(init, v, tramp)?);
    }
    let mut warnings = Vec::new();
    // 1. The tree, bare: each member takes its session, then creates its children.
    let mut live: Vec<ProcRestore<'_>> = Vec::new();
    let mut zombies: Vec<(i32, i32)> = Vec::new();
    for m in &image.members {
        let pid = *host.get(&m.vpid).ok_or_else(|| EngineError::Proc { pid: m.vpid, detail: "was not created".into() })?;
        frozen.push(Frozen::freeze(pid)?);
        let kids: Vec<i32> = image.members.iter().filter(|c| c.ppid == m.vpid).map(|c| c.vpid).collect();
        match &m.state {
            MemberState::Live(img) => {
                let mut r = ProcRestore::begin(img, pid, tramp)?;
                if m.sid == m.vpid {
                    r.injector().call("setsid", libc::SYS_setsid, [0; 6])?;
                    // Its controlling terminal, before its children, so that they inherit it.
                    let all = image.members.iter().filter_map(|m| m.image()).flat_map(|i| i.fds.iter());
                    crate::files::take_ctty(r.injector(), m.vpid, all, &mut fctx)?;
                }
                for &k in &kids {
                    clone_child(&mut r, k)?;
                    host.insert(k, wait_child(pid, k, tramp)?);
                }
                live.push(r);
            }
            MemberState::Zombie { status, comm } => {
                if !kids.is_empty() {
                    return Err(EngineError::Proc { pid: m.vpid, detail: "a zombie with children cannot be restored".into() });
                }
                let mut inj = Injector::new(pid, pid, tramp)?;
                let scratch = inj.put_cstr(&comm.as_bytes()[..comm.len().min(15)])?;
                inj.call("prctl(PR_SET_NAME)", libc::SYS_prctl, [libc::PR_SET_NAME as u64, scratch, 0, 0, 0, 0])?;
                inj.release_scratch()?;
                inj.forget();
                zombies.push((pid, *status));
            }
        }
    }
    // 2. Memory, in order: shared anonymous memory comes from the first member that maps it.
    let mut shm = ShmContext::default();
    for r in &mut live {
        r.memory(store, &manifest.images, &mut shm)?;
    }
    // 3. Threads.
    for r in &mut live {
        let f = frozen.iter_mut().find(|f| f.pid() == r.pid()).expect("every member is stopped");
        r.threads(f)?;
    }
    // 4. Fds in save order, then the pipe keepers go.
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
    // 5. Process groups: leaders first, then members.
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
    // 6. Every live member's attributes, credentials and CPU state.
    let mut pids: Vec<(i32, i32)> = image.members.iter().map(|m| (m.vpid, host[&m.vpid])).collect();
    for r in live {
        warnings.extend(r.finish()?);
    }
    // 7. Zombies exit with their saved status when released.
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
