//! Saving a group: its members' places in the tree and each live member's state.
use std::collections::{BTreeMap, HashMap};

use super::{GroupImage, Member, MemberState};
use crate::files::SaveContext;
use crate::freeze::Frozen;
use crate::inject::{find_syscall_insn, Injector};
use crate::mem::PageCopy;
use crate::process::save_process;
use crate::{EngineError, Result};

/// Dirty-page tracking of a group's members between checkpoints.
#[derive(Default)]
pub struct Tracking {
    /// Tracker state by host pid, as armed at the parent checkpoint.
    pub armed: std::collections::HashMap<i32, crate::dirty::Armed>,
    /// Members (vpids) saved as deltas on the parent.
    pub incremental: Vec<i32>,
    /// Members saved whole although tracked before, and why.
    pub lost: Vec<(i32, String)>,
    /// Re-arm the trackers but save every member whole (a `--full` checkpoint of a tracked pod).
    pub whole: bool,
    /// Tracker states given up (processes gone, or whose tracking was lost), to be disarmed.
    pub dropped: Vec<crate::dirty::Armed>,
    /// The images of the parent checkpoint: what it holds of each member's memory.
    pub parent_images: Vec<zap_store::Image>,
    /// Whoever gets this copy holds every page of the earlier ones (a migration's destination,
    /// filled by the pre-copy rounds): a tracked mapping's copy is only its written pages.
    pub holds_all: bool,
    /// Layouts read with smaps since the trackers were armed (a migration's last pre-copy
    /// round), by host pid: a tracked member whose mappings `/proc/PID/maps` still shows the
    /// same takes their flags from here instead of reading smaps ([`crate::mem::layout_reusing`]).
    pub known_layouts: std::collections::HashMap<i32, Vec<crate::mem::VmaState>>,
    /// Host pids of the members whose layout was taken so: their flags are still to be checked
    /// ([`crate::mem::check_details`]) before the image is used.
    pub reused_layouts: Vec<i32>,
    /// By host pid: the pages that held nothing at the trackers' last collection (a
    /// migration's last pre-copy round): not written since, they are not looked at again
    /// ([`crate::mem::CopyPlan::absent`]).
    pub known_absent: std::collections::HashMap<i32, Vec<(u64, u64)>>,
}

/// A saved group: the image and, per live member (by vpid), its copied pages.
pub struct SavedGroup {
    /// The image (memory not yet stored).
    pub image: GroupImage,
    /// Copied pages per live member vpid.
    pub copies: Vec<(i32, PageCopy)>,
    /// Bytes copied.
    pub bytes_read: u64,
}

struct Place {
    host: i32,
    vpid: i32,
    host_ppid: i32,
    pgid: i32,
    sid: i32,
    zombie: Option<i32>,
}

fn last_field(status: &str, key: &str) -> Option<i32> {
    status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().last()).and_then(|v| v.parse().ok())
}

fn place_of(pid: i32) -> Result<Place> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| EngineError::io("read", path.as_ref(), e))?;
    let missing = |what: &str| EngineError::Proc { pid, detail: format!("no {what} in /proc/{pid}/status") };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    // Fields after the command name start at field 3 (state); exit_code is field 52.
    let zombie = (fields.first() == Some(&"Z")).then(|| fields.get(49).and_then(|c| c.parse().ok()).unwrap_or(0));
    Ok(Place {
        host: pid,
        vpid: last_field(&status, "NSpid:").ok_or_else(|| missing("NSpid"))?,
        host_ppid: last_field(&status, "PPid:").ok_or_else(|| missing("PPid"))?,
        pgid: last_field(&status, "NSpgid:").ok_or_else(|| missing("NSpgid"))?,
        sid: last_field(&status, "NSsid:").ok_or_else(|| missing("NSsid"))?,
        zombie,
    })
}

fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    out.sort_unstable();
    out
}

/// `root` and all its descendants (host pids), parents before children.
pub fn tree_of(root: i32) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        for k in children(out[i]) {
            if !out.contains(&k) {
                out.push(k);
            }
        }
        i += 1;
    }
    out
}

/// True when `pid` is a zombie.
pub fn is_zombie_pid(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()) == Some("Z"))
        .unwrap_or(false)
}

/// Stops the tree rooted at `root` with ptrace, parents first, until a pass finds no new
/// process (a child forked while we stopped its parent is caught on the next pass). Zombies are
/// listed but not stopped. For groups that no cgroup holds; a pod uses its cgroup freezer.
pub fn freeze_tree(root: i32) -> Result<(Vec<i32>, Vec<Frozen>)> {
    let mut pids: Vec<i32> = Vec::new();
    let mut frozen: Vec<Frozen> = Vec::new();
    loop {
        let now = tree_of(root);
        let fresh: Vec<i32> = now.iter().copied().filter(|p| !pids.contains(p)).collect();
        if fresh.is_empty() {
            return Ok((pids, frozen));
        }
        for pid in fresh {
            if !is_zombie_pid(pid) {
                frozen.push(Frozen::freeze(pid)?);
            }
            pids.push(pid);
        }
    }
}

/// The members in restore order: parents first (breadth-first from the top members), siblings
/// by vpid.
fn restore_order<'p>(pids: &[i32], places: &'p [Place], vpid_of_host: &HashMap<i32, i32>) -> Result<Vec<&'p Place>> {
    let mut kids: BTreeMap<i32, Vec<&Place>> = BTreeMap::new();
    for p in places {
        let parent = vpid_of_host.get(&p.host_ppid).copied().unwrap_or(0);
        kids.entry(parent).or_default().push(p);
    }
    for v in kids.values_mut() {
        v.sort_by_key(|p| p.vpid);
    }
    let mut order: Vec<&Place> = kids.get(&0).cloned().unwrap_or_default();
    let mut i = 0;
    while i < order.len() {
        if let Some(k) = kids.get(&order[i].vpid) {
            order.extend(k.iter().copied());
        }
        i += 1;
    }
    if order.len() != places.len() {
        return Err(EngineError::Proc { pid: pids.first().copied().unwrap_or(0), detail: "process tree has a cycle".into() });
    }
    Ok(order)
}

/// The shape of the tree of processes `pids` (host pids, running or not) as a restore would
/// build it, and the (vpid, host pid) of its members in that order. A migration reads it while
/// the pod runs, for the destination to prepare the processes early.
pub fn shape_of(pids: &[i32]) -> Result<(super::TreeShape, Vec<(i32, i32)>)> {
    let places: Vec<Place> = pids.iter().map(|&p| place_of(p)).collect::<Result<_>>()?;
    let vpid_of_host: HashMap<i32, i32> = places.iter().map(|p| (p.host, p.vpid)).collect();
    let order = restore_order(pids, &places, &vpid_of_host)?;
    let members = order
        .iter()
        .map(|p| (p.vpid, vpid_of_host.get(&p.host_ppid).copied().unwrap_or(0), p.sid == p.vpid, p.zombie.is_none()))
        .collect();
    Ok((super::TreeShape { members }, order.iter().map(|p| (p.vpid, p.host)).collect()))
}

/// How [`save`] treats what it finds.
#[derive(Clone, Copy, Debug, Default)]
pub struct SaveOptions {
    /// Established TCP connections are saved as closed sockets; otherwise they are saved with
    /// their state, which needs `network_locked`, or fail the checkpoint.
    pub tcp_close: bool,
    /// The caller holds a [`crate::pod::netlock::NetLock`] over the processes' network.
    pub network_locked: bool,
    /// Every member's pages are saved whole, even those it still shares copy-on-write with its
    /// parent (a migration's destination builds the tree before it knows the memory, so no child
    /// can inherit pages there).
    pub no_cow: bool,
}

/// Saves the stopped processes `pids` (host pids; every live one stopped by an entry of
/// `frozen`, zombies not). Members come out parents first, siblings by pid. A child's pages it
/// still shares with its parent are left to the parent's image ([`crate::mem::cow`]) unless
/// `opts.no_cow`.
///
/// With `tracking`, a member whose tracker state is valid is saved as a delta on the parent
/// checkpoint (only the pages written since are copied), and its tracker is re-armed.
pub fn save(pids: &[i32], frozen: &[Frozen], opts: SaveOptions, mut tracking: Option<&mut Tracking>) -> Result<SavedGroup> {
    let places: Vec<Place> = pids.iter().map(|&p| place_of(p)).collect::<Result<_>>()?;
    let vpid_of_host: HashMap<i32, i32> = places.iter().map(|p| (p.host, p.vpid)).collect();
    let order = restore_order(pids, &places, &vpid_of_host)?;
    let live: Vec<i32> = order.iter().filter(|p| p.zombie.is_none()).map(|p| p.host).collect();
    // Processes that share an address space or an fd table (a vfork or posix_spawn caught
    // between its clone and its exec, or CLONE_VM without CLONE_THREAD) cannot be saved one by
    // one: refuse rather than restore them apart.
    for (i, &a) in live.iter().enumerate() {
        for &b in &live[i + 1..] {
            for (kind, what) in [(1, "address space"), (2, "fd table")] {
                if crate::sys::proc::share(a, b, kind).unwrap_or(false) {
                    return Err(EngineError::Proc {
                        pid: a,
                        detail: format!("shares its {what} with process {b} (vfork or posix_spawn in progress?); not supported, try again"),
                    });
                }
            }
        }
    }
    let mut ctx = SaveContext::for_group(&live)?;
    ctx.sockets.tcp_close = opts.tcp_close;
    ctx.sockets.network_locked = opts.network_locked;
    let mut members = Vec::new();
    let mut copies = Vec::new();
    let mut bytes_read = 0;
    let shm_saved = std::cell::RefCell::new(crate::mem::ShmSaved::new());
    let in_group = |v: i32| places.iter().any(|p| p.vpid == v);
    for p in order {
        let ppid = vpid_of_host.get(&p.host_ppid).copied().unwrap_or(0);
        let state = match p.zombie {
            Some(status) => MemberState::Zombie {
                status,
                comm: std::fs::read_to_string(format!("/proc/{}/comm", p.host)).unwrap_or_default().trim_end().to_string(),
            },
            None => {
                let f = frozen.iter().find(|f| f.pid() == p.host).ok_or_else(|| EngineError::Proc {
                    pid: p.host,
                    detail: "process is not stopped (it appeared after the freeze?)".into(),
                })?;
                let t = std::time::Instant::now();
                let mut dirty = None;
                let mut layout = None;
                if let Some(tr) = tracking.as_deref_mut() {
                    if let Some(armed) = tr.armed.get_mut(&p.host) {
                        let reused = match tr.known_layouts.get(&p.host) {
                            Some(known) => crate::mem::layout_reusing(p.host, known)?,
                            None => None,
                        };
                        if reused.is_some() {
                            tr.reused_layouts.push(p.host);
                        }
                        let vmas = match reused {
                            Some(v) => v,
                            None => crate::mem::save_layout(p.host)?,
                        };
                        match crate::dirty::collect(armed, &vmas) {
                            Ok(d) if !tr.whole => {
                                tr.incremental.push(p.vpid);
                                dirty = Some(d);
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tr.dropped.extend(tr.armed.remove(&p.host));
                                tr.lost.push((p.vpid, e.to_string()));
                            }
                        }
                        layout = Some(vmas);
                    }
                }
                let collect_ms = t.elapsed().as_secs_f64() * 1e3;
                // What the parent checkpoint holds of this member, for a delta; its parent's
                // image (saved before it), whose pages it may still share since a fork.
                let base = match (&dirty, tracking.as_deref()) {
                    (Some(_), Some(tr)) if tr.holds_all => Some(vec![(0, u64::MAX)]),
                    (Some(_), Some(tr)) => Some(crate::mem::base_runs(&tr.parent_images, &GroupImage::prefix(p.vpid))),
                    _ => None,
                };
                let parent = members
                    .iter()
                    .find(|m: &&Member| m.vpid == ppid && !opts.no_cow)
                    .and_then(Member::image)
                    .map(|i| (i.host_pid, i.vmas.as_slice()));
                let absent = tracking.as_deref().and_then(|tr| tr.known_absent.get(&p.host)).map(Vec::as_slice);
                let plan = crate::mem::CopyPlan { dirty: dirty.as_ref(), base: base.as_deref(), parent, shm_saved: Some(&shm_saved), absent };
                let (image, copy) = save_process(p.host, f, &mut ctx, &plan, layout)?;
                tracing::debug!(pid = p.host, collect_ms, ms = t.elapsed().as_secs_f64() * 1e3, bytes = copy.bytes, "process saved");
                bytes_read += copy.bytes;
                copies.push((p.vpid, copy));
                MemberState::Live(Box::new(image))
            }
        };
        let pgid = if in_group(p.pgid) { p.pgid } else { 0 };
        let sid = if in_group(p.sid) { p.sid } else { 0 };
        members.push(Member { vpid: p.vpid, ppid, pgid, sid, state });
    }
    note_collected_stops(&mut members, &vpid_of_host)?;
    if let Some(tr) = tracking {
        let gone: Vec<i32> = tr.armed.keys().copied().filter(|pid| !live.contains(pid)).collect();
        for pid in gone {
            tr.dropped.extend(tr.armed.remove(&pid));
        }
    }
    Ok(SavedGroup { image: GroupImage { members }, copies, bytes_read })
}

/// For each member stopped by a job-control signal whose parent is a member too, asks the parent
/// (still stopped by us) whether it can still collect the stop: a `waitid(P_PID, child,
/// WSTOPPED | WNOWAIT | WNOHANG)` injected into it, which leaves the state as it was. A stop the
/// parent has collected already must not be reported to it again after the restore.
fn note_collected_stops(members: &mut [Member], vpid_of_host: &HashMap<i32, i32>) -> Result<()> {
    const P_PID: u64 = 1;
    const WNOHANG: u64 = 1;
    const WSTOPPED: u64 = 2;
    const WNOWAIT: u64 = 0x0100_0000;
    const CLD_STOPPED: i32 = 5;
    let host_of = |vpid: i32| vpid_of_host.iter().find(|(_, &v)| v == vpid).map(|(&h, _)| h);
    for member in members.iter_mut() {
        let (vpid, ppid) = (member.vpid, member.ppid);
        let MemberState::Live(img) = &mut member.state else { continue };
        let (Some(stop), Some(parent)) = (img.attrs.stop.as_mut(), (ppid != 0).then(|| host_of(ppid)).flatten()) else { continue };
        let mut inj = Injector::new(parent, parent, find_syscall_insn(parent)?)?;
        let asked = (|| {
            let scratch = inj.scratch(4096)?;
            inj.write_mem(scratch, &[0u8; 128])?;
            inj.call("waitid (WNOWAIT: may the parent collect the stop?)", libc::SYS_waitid, [
                P_PID,
                vpid as u64,
                scratch,
                WSTOPPED | WNOWAIT | WNOHANG,
                0,
                0,
            ])?;
            let info = inj.read_mem(scratch, 20)?;
            let code = i32::from_le_bytes(info[8..12].try_into().expect("4"));
            let pid = i32::from_le_bytes(info[16..20].try_into().expect("4"));
            Ok::<bool, EngineError>(pid == vpid && code == CLD_STOPPED)
        })();
        inj.finish()?;
        stop.parent_may_wait = asked?;
    }
    Ok(())
}
