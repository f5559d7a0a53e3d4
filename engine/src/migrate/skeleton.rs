//! The destination's prepared pod: the pod, its processes with their pids and their memory,
//! built while the source still runs, so that the final round only has to patch what changed.
//!
//! At round 0 the destination creates the pod (its init and namespaces, no network on the LAN:
//! the interface is set up *detached*; its time namespace continues the source pod's clocks
//! from the offer, [`crate::pod::clock`]), builds the process tree bare with the saved pids
//! ([`crate::group::BareTree`]) and maps every process's memory layout; each round's pages are
//! written straight into the processes (`/proc/PID/mem`) as they arrive. Each round the layout
//! is patched: ranges still mapped the same way keep their contents (`mprotect` where only the
//! protection changed), others are unmapped, new ones mapped and filled from the process's
//! extents. The final round does the same with the last dirty pages, then fills in everything
//! else (threads, fds, attributes, registers: [`crate::group::complete`]), so its cost does not
//! grow with the pod's memory.
//!
//! What cannot be patched makes the destination rebuild the prepared pod from the extents it
//! holds (its spool): a process tree of another shape (a process started or ended, a session
//! changed), the vDSO moved, or a mapping over the trampoline page; and in the final round, a
//! session leader's controlling terminal, or what the processes made inside the pod (mounts,
//! sub-cgroups, namespaces of their own: made again through [`Hooks`] as a restore makes them,
//! [`crate::pod::inside::InsideRestore`]), which a tree built before the pod image was known
//! does not hold. A rebuild in the final round
//! costs what a full restore costs; the round's acknowledgement and the report say why it
//! happened.
//!
//! The memory model per process is [`MemberMem`]: the extents of every saved page (a chunk, or
//! zero) in address order; pages without an extent hold what their mapping gives (zero, or the
//! mapped file's bytes). The prepared process always equals its extents, which is what lets a
//! rebuild start again from them.
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use zap_store::{Extent, ExtentData};

use super::{mig_err, Result};
use crate::group::{BareTree, TreeShape};
use crate::inject::Injector;
use crate::mem::{Backing, ShmContext, VmaState};
use crate::pod::{self, net, PodState};

const PAGE: u64 = 4096;

/// Reads a chunk's raw bytes.
pub type ChunkReader<'a> = dyn Fn(&zap_chunker::ChunkId) -> Result<Arc<Vec<u8>>> + Sync + 'a;

/// What the destination knows of one process's memory.
#[derive(Clone, Debug, Default)]
pub struct MemberMem {
    /// Its mappings at the last round.
    pub vmas: Vec<VmaState>,
    /// Its saved pages: chunk and zero extents, in order.
    pub extents: Vec<Extent>,
}

/// Sorted, disjoint ranges minus sorted, disjoint ranges.
pub fn subtract(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(mut s, e) in a {
        for &(bs, be) in b {
            if be <= s || bs >= e {
                continue;
            }
            if bs > s {
                out.push((s, bs));
            }
            s = s.max(be);
            if s >= e {
                break;
            }
        }
        if s < e {
            out.push((s, e));
        }
    }
    out
}

/// Sorts and merges ranges.
pub fn normalize(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.retain(|r| r.0 < r.1);
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(l) if l.1 >= r.0 => l.1 = l.1.max(r.1),
            _ => out.push(r),
        }
    }
    out
}

/// The index range of the sorted, disjoint `extents` that overlap `[a, b)`, found by binary
/// search: a large process has hundreds of thousands of extents, and a round touches a few.
fn span(extents: &[Extent], a: u64, b: u64) -> std::ops::Range<usize> {
    let i = extents.partition_point(|e| e.end() <= a);
    i..i + extents[i..].partition_point(|e| e.start < b)
}

/// The sorted, disjoint `extents` cut to `[a, b)` ([`zap_store::clip`] without the scan).
pub fn window(extents: &[Extent], a: u64, b: u64) -> Vec<Extent> {
    zap_store::clip(&extents[span(extents, a, b)], a, b)
}

/// Lays `changed` (sorted, disjoint) over the sorted, disjoint `extents` in place
/// ([`zap_store::overlay`] on the part they cover only).
///
/// Changes that keep the extents as they are laid out are made where they fall, found by binary
/// search: a page's chunk over a page's chunk, zeros over zeros. (A round's scattered pages would
/// otherwise rebuild every extent between the first and the last: the whole memory, each round.)
pub fn overlay_in(extents: &mut Vec<Extent>, changed: &[Extent]) {
    let mut rest: Vec<Extent> = Vec::new();
    for c in changed {
        let i = extents.partition_point(|e| e.end() <= c.start);
        match extents.get_mut(i) {
            Some(e) if (e.start, e.len) == (c.start, c.len) && matches!(e.data, ExtentData::Chunk { .. }) && matches!(c.data, ExtentData::Chunk { .. }) => *e = *c,
            Some(e) if e.data == ExtentData::Zero && c.data == ExtentData::Zero && e.start <= c.start && c.end() <= e.end() => {}
            _ => rest.push(*c),
        }
    }
    let (Some(lo), Some(hi)) = (rest.iter().map(|e| e.start).min(), rest.iter().map(Extent::end).max()) else { return };
    let r = span(extents, lo, hi);
    let mid = zap_store::overlay(&extents[r.clone()], &rest);
    extents.splice(r, mid);
}

/// The extents with the bytes `[a, b)` cut out.
pub fn cut_out(extents: &[Extent], a: u64, b: u64) -> Vec<Extent> {
    let r = span(extents, a, b);
    let mut out = extents[..r.start].to_vec();
    out.extend(zap_store::clip(&extents[r.clone()], 0, a));
    out.extend(zap_store::clip(&extents[r.clone()], b, u64::MAX));
    out.extend_from_slice(&extents[r.end..]);
    out
}

/// The extents with every range of the sorted, disjoint `gaps` cut out, in one pass (cutting
/// them one by one copies all extents per gap: a round 0 of a large process has thousands).
pub fn cut_out_all(extents: &[Extent], gaps: &[(u64, u64)]) -> Vec<Extent> {
    let (Some(first), Some(last)) = (extents.first(), extents.last()) else { return Vec::new() };
    if gaps.is_empty() {
        return extents.to_vec();
    }
    let mut out = Vec::with_capacity(extents.len());
    let mut pos = first.start;
    for &(a, b) in gaps.iter().chain(std::iter::once(&(last.end(), u64::MAX))) {
        if a > pos {
            out.extend(window(extents, pos, a));
        }
        pos = pos.max(b);
    }
    out
}

/// Past this many gaps that meet an extent, [`cut_out_in`] makes one pass over all extents
/// instead: each cut in place may move every extent after it.
const CUT_IN_PLACE_MAX: usize = 16;

/// [`cut_out_all`] in place: when a few gaps meet extents (found by binary search), only those
/// extents are touched, so a round that empties a few ranges of a large process does not copy its
/// whole extent list (640,000 extents at 4 GiB: 34-70 ms each round); past
/// [`CUT_IN_PLACE_MAX`], one pass.
pub fn cut_out_in(extents: &mut Vec<Extent>, gaps: &[(u64, u64)]) {
    let meeting: Vec<(u64, u64)> = gaps.iter().copied().filter(|&(a, b)| !span(extents, a, b).is_empty()).collect();
    if meeting.len() > CUT_IN_PLACE_MAX {
        *extents = cut_out_all(extents, &meeting);
        return;
    }
    // From the last gap back, so an extent split by a later gap is found again by an earlier one.
    for &(a, b) in meeting.iter().rev() {
        let r = span(extents, a, b);
        let (first, last) = (extents[r.start], extents[r.end - 1]);
        let mut keep = Vec::with_capacity(2);
        if first.start < a {
            keep.extend(zap_store::clip(&[first], first.start, a));
        }
        if last.end() > b {
            keep.extend(zap_store::clip(&[last], b, last.end()));
        }
        extents.splice(r, keep);
    }
}

/// Ranges of `extents` that hold chunk data, inside `[a, b)`.
fn chunk_ranges(extents: &[Extent], a: u64, b: u64) -> Vec<(u64, u64)> {
    window(extents, a, b).iter().filter(|e| e.data != ExtentData::Zero).map(|e| (e.start, e.end())).collect()
}

/// Whether an old mapping keeps its contents where a new one overlaps it: same kind of memory
/// at the same place (for files and shared memory, the same object at the same offset).
fn compatible(old: &VmaState, new: &VmaState, at: u64) -> bool {
    if old.shared != new.shared || old.growsdown != new.growsdown {
        return false;
    }
    match (&old.backing, &new.backing) {
        (Backing::Anon, Backing::Anon) => true,
        (Backing::File { path: p1, offset: o1 }, Backing::File { path: p2, offset: o2 }) => {
            p1 == p2 && o1 + (at - old.start) == o2 + (at - new.start)
        }
        (Backing::Shmem { ino: i1, offset: o1 }, Backing::Shmem { ino: i2, offset: o2 }) => {
            i1 == i2 && o1 + (at - old.start) == o2 + (at - new.start)
        }
        (Backing::SysvShm { shmid: a }, Backing::SysvShm { shmid: b }) => a == b && old.start == new.start && old.end == new.end,
        (Backing::Vdso, Backing::Vdso) => old.start == new.start && old.end == new.end,
        (Backing::Vsyscall, Backing::Vsyscall) => true,
        _ => false,
    }
}

/// A part `[a, b)` of mapping `v`, with its file or shared-memory offset moved along.
fn part(v: &VmaState, a: u64, b: u64) -> VmaState {
    let mut p = v.clone();
    p.start = a;
    p.end = b;
    match &mut p.backing {
        Backing::File { offset, .. } | Backing::Shmem { offset, .. } => *offset += a - v.start,
        _ => {}
    }
    p
}

/// Why a layout cannot be patched in place (the prepared pod must be rebuilt).
pub fn unpatchable(old: &[VmaState], new: &[VmaState], tramp: u64) -> Option<String> {
    if let Some(v) = new.iter().find(|v| v.start < tramp + PAGE && v.end > tramp) {
        return Some(format!("mapping {:#x}-{:#x} ({}) covers the prepared pod's trampoline", v.start, v.end, v.name));
    }
    let vdso = |vs: &[VmaState]| vs.iter().filter(|v| v.backing == Backing::Vdso).map(|v| (v.start, v.end)).collect::<Vec<_>>();
    if !old.is_empty() && vdso(old) != vdso(new) {
        return Some("the vDSO moved".into());
    }
    None
}

/// The prepared pod.
pub struct Skeleton {
    /// The pod's state (`pod.json`).
    pub state: PodState,
    /// Its processes, bare, stopped under ptrace.
    pub tree: BareTree,
    /// The shape they were built from.
    pub shape: TreeShape,
    /// Each live process's mappings as they are in the prepared process (System V segments
    /// wait for the final round, when the IPC namespace is restored).
    pub mapped: HashMap<i32, Vec<VmaState>>,
    shm: ShmContext,
    root: std::path::PathBuf,
}

/// What the creation of the prepared pod calls back.
pub trait Hooks {
    /// The pod (`state`) exists, its init waits; no process is built yet.
    fn pod_created(&mut self, _state: &PodState) -> crate::Result<()> {
        Ok(())
    }

    /// A process was taken over (see [`BareTree::build`]), before its children exist.
    fn member_taken(&mut self, _inj: &mut Injector, _taken: crate::group::Taken) -> crate::Result<()> {
        Ok(())
    }
}

/// No hooks: a bare prepared pod (pre-copy).
pub struct NoHooks;

impl Hooks for NoHooks {}

/// How to create the prepared pod.
pub struct PodPlan<'a> {
    /// Its name.
    pub name: &'a str,
    /// Hostname.
    pub hostname: &'a str,
    /// Address (ADDR/PREFIX) and MAC.
    pub ip: Option<&'a str>,
    /// MAC.
    pub mac: Option<&'a str>,
    /// Limits.
    pub memory_limit: Option<u64>,
    /// CPU limit.
    pub cpus: Option<f64>,
    /// The process whose exit ends the pod.
    pub main_vpid: i32,
    /// `zap-init`.
    pub init_exe: &'a Path,
    /// The clocks the pod goes on from ([`pod::clock`]); none: no time namespace.
    pub clocks: Option<pod::clock::ClockTarget>,
}

impl Skeleton {
    /// Creates the pod (network detached) and its process tree of `shape`, with trampoline
    /// `tramp`, calling `hooks` on the way.
    pub fn create(root: &Path, plan: &PodPlan<'_>, shape: &TreeShape, tramp: u64, hooks: &mut dyn Hooks) -> Result<Skeleton> {
        let top = shape.top();
        let main_vpid = if top.contains(&plan.main_vpid) { plan.main_vpid } else { top.first().copied().unwrap_or(plan.main_vpid) };
        let spec = pod::PodSpec {
            name: plan.name.to_string(),
            hostname: Some(plan.hostname.to_string()),
            ip: None,
            mac: None,
            memory_limit: plan.memory_limit,
            cpus: plan.cpus,
            launch: pod::Launch::Restore { top: top.clone(), tramp, main_vpid, guarded: false, clocks: plan.clocks },
            init_exe: plan.init_exe.to_path_buf(),
        };
        let mut state = pod::create(root, &spec)?;
        let built = (|| {
            if let Some(ip) = plan.ip {
                let cidr = net::Cidr::parse(ip)?;
                state.veth_host = Some(net::setup_detached(plan.name, state.init_pid, &cidr, plan.mac)?);
                state.ip = Some(cidr.to_string());
                state.mac = plan.mac.map(str::to_string);
                pod::save(root, &state)?;
            }
            hooks.pod_created(&state)?;
            let mut tree = BareTree::new(state.init_pid, tramp);
            if let Err(e) = tree.build(shape, &mut |inj, taken| hooks.member_taken(inj, taken)) {
                tree.abandon();
                return Err(e.into());
            }
            Ok(tree)
        })();
        match built {
            Ok(tree) => Ok(Skeleton { state, tree, shape: shape.clone(), mapped: HashMap::new(), shm: ShmContext::default(), root: root.to_path_buf() }),
            Err(e) => {
                if let Err(e2) = pod::rm(root, plan.name, true) {
                    tracing::warn!(pod = plan.name, error = %e2, "cleanup of a prepared pod that could not be built");
                }
                Err(e)
            }
        }
    }

    /// Kills the prepared processes and removes the pod.
    pub fn destroy(self) -> Result<()> {
        let name = self.state.name.clone();
        self.tree.abandon();
        pod::rm(&self.root, &name, true)?;
        Ok(())
    }

    fn inj(&mut self, vpid: i32) -> Result<&mut Injector> {
        self.tree.injectors.get_mut(&vpid).ok_or_else(|| mig_err("prepare memory", format!("pid {vpid}"), "not a live process of the prepared pod"))
    }

    /// Makes the layout of process `vpid` `new` (see the module doc) and fills what was mapped
    /// anew from `mem` (the extents as of before this round's pages). `sysv`: map System V
    /// segments too (the final round, after the IPC restore). Returns the bytes written.
    pub fn patch_layout(&mut self, vpid: i32, new: &[VmaState], sysv: bool, mem: &MemberMem, read: &ChunkReader<'_>) -> Result<u64> {
        let want: Vec<VmaState> = new.iter().filter(|v| sysv || !matches!(v.backing, Backing::SysvShm { .. })).cloned().collect();
        let old = self.mapped.get(&vpid).cloned().unwrap_or_default();
        // Kept ranges (contents stay), with the protection they need.
        let mut kept: Vec<(u64, u64)> = Vec::new();
        let mut reprotect: Vec<(u64, u64, u32)> = Vec::new();
        for n in &want {
            for o in old.iter().filter(|o| o.end > n.start && o.start < n.end) {
                let (a, b) = (o.start.max(n.start), o.end.min(n.end));
                if compatible(o, n, a) {
                    kept.push((a, b));
                    if o.prot != n.prot {
                        reprotect.push((a, b, n.prot));
                    }
                }
            }
        }
        let kept = normalize(kept);
        let old_ranges = normalize(old.iter().map(|v| (v.start, v.end)).collect());
        let unmap = subtract(&old_ranges, &kept);
        let mut fresh: Vec<VmaState> = Vec::new();
        for n in &want {
            for (a, b) in subtract(&[(n.start, n.end)], &kept) {
                fresh.push(part(n, a, b));
            }
        }
        let first = old.is_empty();
        let inj = self.inj(vpid)?;
        for (a, b) in unmap {
            inj.call("munmap (layout changed)", libc::SYS_munmap, [a, b - a, 0, 0, 0, 0])?;
        }
        for (a, b, prot) in reprotect {
            inj.call("mprotect (protection changed)", libc::SYS_mprotect, [a, b - a, u64::from(prot), 0, 0, 0])?;
        }
        // The vDSO is mapped once, when the process is first laid out (unpatchable() catches a move).
        let fresh: Vec<VmaState> = fresh.into_iter().filter(|v| first || v.backing != Backing::Vdso).collect();
        let mut shm = std::mem::take(&mut self.shm);
        let r = crate::mem::restore_layout(self.inj(vpid)?, vpid, &fresh, &mut shm, None);
        self.shm = shm;
        let write = r?;
        self.mapped.insert(vpid, want);
        // Fill what is new from the extents known so far.
        let mut bytes = 0;
        for (v, w) in fresh.iter().zip(write) {
            if !w || matches!(v.backing, Backing::Vdso | Backing::Vsyscall) || (v.shared && matches!(v.backing, Backing::File { .. })) {
                continue;
            }
            let anon = matches!(v.backing, Backing::Anon | Backing::Shmem { .. });
            let exts: Vec<Extent> = window(&mem.extents, v.start, v.end).into_iter().filter(|e| !(anon && e.data == ExtentData::Zero)).collect();
            bytes += self.write(vpid, &exts, read)?;
        }
        Ok(bytes)
    }

    /// Writes `extents` (chunk extents with their bytes, zero extents as zeros; in address order)
    /// into process `vpid`: contiguous extents go in one write of at most 8 MiB, writes in
    /// parallel.
    pub fn write(&mut self, vpid: i32, extents: &[Extent], read: &ChunkReader<'_>) -> Result<u64> {
        use rayon::prelude::*;
        const RUN: u64 = 8 << 20;
        let inj = self.tree.injectors.get(&vpid).ok_or_else(|| mig_err("prepare memory", format!("pid {vpid}"), "not a live process of the prepared pod"))?;
        let mut sorted: Vec<Extent> = extents.to_vec();
        sorted.sort_by_key(|e| e.start);
        let mut runs: Vec<&[Extent]> = Vec::new();
        let mut i = 0;
        while i < sorted.len() {
            let mut j = i;
            while j + 1 < sorted.len() && sorted[j + 1].start == sorted[j].end() && sorted[j + 1].end() - sorted[i].start <= RUN {
                j += 1;
            }
            runs.push(&sorted[i..=j]);
            i = j + 1;
        }
        runs.par_iter()
            .map(|run| {
                let base = run[0].start;
                let mut buf = vec![0u8; (run[run.len() - 1].end() - base) as usize];
                for e in run.iter() {
                    if let ExtentData::Chunk { id, offset } = e.data {
                        let raw = read(&id)?;
                        let (from, to) = (offset as usize, offset as usize + e.len as usize);
                        let bytes = raw.get(from..to).ok_or_else(|| {
                            mig_err("prepare memory", format!("pid {vpid} at {:#x}", e.start), format!("chunk {id} has {} bytes, the extent wants {from}..{to}", raw.len()))
                        })?;
                        let at = (e.start - base) as usize;
                        buf[at..at + bytes.len()].copy_from_slice(bytes);
                    }
                }
                inj.write_mem(base, &buf)?;
                Ok(buf.len() as u64)
            })
            .sum()
    }

    /// Makes `[a, b)` of process `vpid` hold nothing saved: zero (`to_zero`, or any anonymous
    /// memory) or, for a private file mapping, the file's bytes again.
    pub fn clear(&mut self, vpid: i32, a: u64, b: u64, to_zero: bool) -> Result<()> {
        let vmas: Vec<VmaState> = self.mapped.get(&vpid).cloned().unwrap_or_default();
        for v in vmas.iter().filter(|v| v.end > a && v.start < b) {
            let (s, e) = (v.start.max(a), v.end.min(b));
            let private_drop = !v.shared && (v.backing == Backing::Anon || (!to_zero && matches!(v.backing, Backing::File { .. })));
            if private_drop {
                self.inj(vpid)?.call("madvise(MADV_DONTNEED)", libc::SYS_madvise, [s, e - s, libc::MADV_DONTNEED as u64, 0, 0, 0])?;
            } else if !(v.shared && matches!(v.backing, Backing::File { .. })) {
                let inj = self.inj(vpid)?;
                let zeros = vec![0u8; (e - s).min(8 << 20) as usize];
                let mut pos = s;
                while pos < e {
                    let n = (e - pos).min(zeros.len() as u64);
                    inj.write_mem(pos, &zeros[..n as usize])?;
                    pos += n;
                }
            }
        }
        Ok(())
    }

    /// Applies extents received for process `vpid` to it and to `mem`: chunk data is written;
    /// a zero extent clears what the process held there, and over a private file mapping (whose
    /// untouched pages hold the file's bytes) it is written as zeros. Returns the bytes written.
    pub fn put(&mut self, vpid: i32, mem: &mut MemberMem, extents: &[Extent], read: &ChunkReader<'_>) -> Result<u64> {
        let vmas = self.mapped.get(&vpid).cloned().unwrap_or_default();
        let mut zeros: Vec<Extent> = Vec::new();
        for z in extents.iter().filter(|e| e.data == ExtentData::Zero) {
            for v in vmas.iter().filter(|v| v.end > z.start && v.start < z.end()) {
                let (a, b) = (v.start.max(z.start), v.end.min(z.end()));
                if matches!(v.backing, Backing::File { .. }) && !v.shared {
                    zeros.push(Extent { start: a, len: b - a, data: ExtentData::Zero });
                } else {
                    for (x, y) in chunk_ranges(&mem.extents, a, b) {
                        self.clear(vpid, x, y, true)?;
                    }
                }
            }
        }
        let mut data: Vec<Extent> = extents.iter().filter(|e| e.data != ExtentData::Zero).copied().collect();
        data.extend(zeros);
        let n = self.write(vpid, &data, read)?;
        overlay_in(&mut mem.extents, extents);
        Ok(n)
    }

    /// Ends a round of process `vpid`: in the ranges sent whole, what the round did not cover
    /// holds nothing saved any more.
    pub fn end_member(&mut self, vpid: i32, mem: &mut MemberMem, whole: &[(u64, u64)], covered: &[(u64, u64)]) -> Result<()> {
        let t = std::time::Instant::now();
        let gone = subtract(&normalize(whole.to_vec()), &normalize(covered.to_vec()));
        let mut cleared = 0usize;
        for &(a, b) in &gone {
            for (x, y) in chunk_ranges(&mem.extents, a, b) {
                self.clear(vpid, x, y, false)?;
                cleared += 1;
            }
        }
        let cleared_ms = t.elapsed().as_secs_f64() * 1e3;
        cut_out_in(&mut mem.extents, &gone);
        tracing::debug!(vpid, gone = gone.len(), cleared, extents = mem.extents.len(), cleared_ms, ms = t.elapsed().as_secs_f64() * 1e3, "end of a process's pages: ranges gone");
        Ok(())
    }
}

/// Drops the extents of `mem` outside its mappings `vmas`.
pub fn clip_to(mem: &mut MemberMem, vmas: &[VmaState]) {
    let ranges = normalize(vmas.iter().map(|v| (v.start, v.end)).collect());
    if ranges == normalize(mem.vmas.iter().map(|v| (v.start, v.end)).collect()) {
        // The same ranges as when the extents were last clipped: none is outside (a copy of
        // every extent, each round, otherwise).
        mem.vmas = vmas.to_vec();
        return;
    }
    let mut out = Vec::new();
    for (a, b) in ranges {
        out.extend(window(&mem.extents, a, b));
    }
    mem.extents = out;
    mem.vmas = vmas.to_vec();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_arithmetic() {
        assert_eq!(subtract(&[(0, 100)], &[(10, 20), (50, 60)]), vec![(0, 10), (20, 50), (60, 100)]);
        assert_eq!(subtract(&[(0, 100)], &[(0, 100)]), vec![]);
        assert_eq!(subtract(&[(0, 10), (20, 30)], &[(5, 25)]), vec![(0, 5), (25, 30)]);
        assert_eq!(normalize(vec![(5, 9), (0, 5), (20, 30), (25, 27)]), vec![(0, 9), (20, 30)]);
        let ext = vec![Extent { start: 0, len: 8192, data: ExtentData::Zero }, Extent { start: 8192, len: 4096, data: ExtentData::Zero }];
        let c = cut_out(&ext, 4096, 8192);
        assert_eq!(c.iter().map(|e| (e.start, e.len)).collect::<Vec<_>>(), vec![(0, 4096), (8192, 4096)]);
    }

    #[test]
    fn windowed_extent_operations_match_the_scans() {
        let id = zap_chunker::ChunkId::of(b"x");
        let ext: Vec<Extent> = (0..64u64)
            .map(|i| Extent { start: i * 8192, len: 4096 * (1 + i % 2), data: if i % 3 == 0 { ExtentData::Zero } else { ExtentData::Chunk { id, offset: 0 } } })
            .collect();
        for (a, b) in [(0, 1), (5000, 70000), (4096, 8192), (0, u64::MAX), (600_000, 700_000), (123, 456_789)] {
            assert_eq!(window(&ext, a, b), zap_store::clip(&ext, a, b), "window {a}..{b}");
            let mut scan = zap_store::clip(&ext, 0, a);
            scan.extend(zap_store::clip(&ext, b, u64::MAX));
            assert_eq!(cut_out(&ext, a, b), scan, "cut_out {a}..{b}");
            assert_eq!(cut_out_all(&ext, &[(a, b)]), scan, "cut_out_all {a}..{b}");
        }
        let gaps = [(5000, 9000), (20_000, 30_000), (100_000, 100_001), (500_000, 520_000)];
        let mut one_by_one = ext.clone();
        for &(a, b) in &gaps {
            one_by_one = cut_out(&one_by_one, a, b);
        }
        assert_eq!(cut_out_all(&ext, &gaps), one_by_one, "cut_out_all of several gaps");
        // In place, the same; also with gaps that split one extent twice, meet nothing, or lie
        // past the end.
        let sets: [&[(u64, u64)]; 5] = [&gaps[..], &[(8192 + 100, 8192 + 200), (8192 + 1000, 8192 + 2000)], &[(4096, 8192)], &[(600_000, 700_000)], &[(0, 1), (123, 456_789)]];
        for gaps in sets {
            let mut inplace = ext.clone();
            cut_out_in(&mut inplace, gaps);
            assert_eq!(inplace, cut_out_all(&ext, gaps), "cut_out_in {gaps:?}");
        }
        // More gaps meeting extents than are cut in place: one pass, the same as one by one.
        let many: Vec<(u64, u64)> = (0..40u64).map(|i| (i * 12_288 + 100, i * 12_288 + 5000)).collect();
        let mut one_by_one = ext.clone();
        for &(a, b) in &many {
            one_by_one = cut_out(&one_by_one, a, b);
        }
        let mut inplace = ext.clone();
        cut_out_in(&mut inplace, &many);
        assert_eq!(inplace, one_by_one, "cut_out_in of {} gaps", many.len());
        let changed = vec![Extent { start: 12288, len: 8192, data: ExtentData::Chunk { id, offset: 0 } }, Extent { start: 40960, len: 4096, data: ExtentData::Zero }];
        let mut inplace = ext.clone();
        overlay_in(&mut inplace, &changed);
        let full = zap_store::overlay(&ext, &changed);
        // The same extents, once adjacent zero extents are merged (the windowed one may leave
        // them apart at its edges).
        let merged = |v: &[Extent]| zap_store::overlay(&[], v);
        assert_eq!(merged(&inplace), merged(&full));
        // Scattered changes made in place (a chunk over a chunk of the same bounds, zeros inside
        // zeros) mixed with one that is not: the same as the whole overlay.
        let other = zap_chunker::ChunkId::of(b"y");
        let scattered = vec![
            Extent { start: 8192, len: 8192, data: ExtentData::Chunk { id: other, offset: 0 } },
            Extent { start: 24576, len: 4096, data: ExtentData::Zero },
            Extent { start: 100_000, len: 4096, data: ExtentData::Chunk { id: other, offset: 0 } },
            Extent { start: 49152, len: 4096, data: ExtentData::Zero },
        ];
        let mut scattered = scattered;
        scattered.sort_by_key(|e| e.start);
        let mut inplace = ext.clone();
        overlay_in(&mut inplace, &scattered);
        assert_eq!(merged(&inplace), merged(&zap_store::overlay(&ext, &scattered)), "scattered changes");
    }

    fn vma(start: u64, end: u64, backing: Backing, prot: u32) -> VmaState {
        VmaState { start, end, prot, shared: false, growsdown: false, backing, name: String::new(), image: None, flags: Default::default(), pkey: 0, huge: 0, inherited: Vec::new(), guards: Vec::new(), uffd_wp: false }
    }

    #[test]
    fn compatibility() {
        let f1 = vma(0x1000, 0x5000, Backing::File { path: "/a".into(), offset: 0 }, 5);
        let f2 = vma(0x3000, 0x5000, Backing::File { path: "/a".into(), offset: 0x2000 }, 1);
        assert!(compatible(&f1, &f2, 0x3000), "same file, same offset at the same address");
        let f3 = vma(0x3000, 0x5000, Backing::File { path: "/a".into(), offset: 0 }, 1);
        assert!(!compatible(&f1, &f3, 0x3000));
        assert!(compatible(&vma(0, 10, Backing::Anon, 3), &vma(0, 20, Backing::Anon, 1), 0));
        assert!(!compatible(&vma(0, 10, Backing::Anon, 3), &f1, 0));
        let p = part(&f1, 0x2000, 0x3000);
        assert_eq!(p.backing, Backing::File { path: "/a".into(), offset: 0x1000 });
        assert!(unpatchable(&[], &[vma(0x10000, 0x12000, Backing::Anon, 3)], 0x11000).is_some());
    }
}
