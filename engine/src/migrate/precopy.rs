//! The pre-copy loop's parts: reading a round of a running pod's memory, and sending it into a
//! [`RoundSink`].
//!
//! Round 0 stops the pod for a moment to arm a dirty-page tracker in every process
//! ([`PodReader::arm`]: the userfaultfd is created inside each stopped process and kept by this
//! process), then reads all memory while the pod runs. Each later round ([`PodReader::read`])
//! collects, per process, the pages written since the last collection (`PAGEMAP_SCAN`
//! re-protects them in the same walk, so a page written after the scan is reported next round)
//! and reads them with `process_vm_readv`; memory the tracker does not cover (new mappings, a
//! process started since) is read whole. A process whose pages could not be read (it unmapped
//! them meanwhile) is read whole next round, so nothing reported is lost. The final round reads
//! the stopped pod with [`crate::group::save`] and the same trackers.
//!
//! [`send_member`] turns one process's pages into chunks (the store's chunker: 64 KiB blocks,
//! zero pages dropped, BLAKE3 ids, zstd), offers them to the sink in batches and sends the
//! extents that use them. A [`RoundSink`] is the remote destination ([`super::source`]) or a
//! store writer ([`StoreSink`]): the same loop serves a migration and a checkpoint taken while
//! the pod runs.
use std::collections::{HashMap, HashSet};

use zap_chunker::{Chunk, ChunkerConfig};
use zap_store::{ChunkSink, Extent, ExtentData};

use super::wire::{MemberStart, RoundStart, IDS_PER_BATCH};
use super::Result;
use crate::dirty::{self, Armed, Backend, Keeper};
use crate::group::TreeShape;
use crate::mem::{Backing, PageCopy, VmaState};
use crate::pod::checkpoint::StoppedPod;
use crate::pod::{cgroup_of, PodState};

/// Where rounds go.
pub trait RoundSink {
    /// A round begins (its process tree and every process's layout).
    fn round_start(&mut self, start: &RoundStart) -> Result<()>;
    /// A process's pages follow.
    fn member_start(&mut self, member: &MemberStart) -> Result<()>;
    /// Chunks the next extents use; returns (chunks the sink had, stored bytes it took).
    fn offer(&mut self, chunks: Vec<Chunk>) -> Result<(u64, u64)>;
    /// Extents of process `vpid` (their chunks were offered).
    fn put(&mut self, vpid: i32, extents: Vec<Extent>) -> Result<()>;
    /// The process's pages are all sent.
    fn member_end(&mut self, vpid: i32) -> Result<()>;
    /// Changes in a carried directory (their chunks were offered).
    fn files(&mut self, update: super::wire::FilesUpdate) -> Result<()> {
        Err(super::mig_err("copy", update.dir, "directories are carried by migrations only"))
    }
}

/// Whether a mapping's pages are saved at all (see [`crate::mem`]).
pub fn saved(v: &VmaState) -> bool {
    match v.backing {
        Backing::Vdso | Backing::Vsyscall | Backing::SysvShm { .. } => false,
        Backing::File { .. } => !v.shared,
        _ => true,
    }
}

/// The ranges of `vmas` a copy holds whole (every saved mapping not copied as a delta, nor left
/// to another process: shared memory saved once).
pub fn whole_ranges(vmas: &[VmaState], copy: &PageCopy) -> Vec<(u64, u64)> {
    vmas.iter()
        .enumerate()
        .filter(|(i, v)| saved(v) && !copy.delta.contains_key(i) && !copy.elsewhere.contains(i))
        .map(|(_, v)| (v.start, v.end))
        .collect()
}

/// One process's part of a round.
pub struct MemberData {
    /// Its pid in the pod.
    pub vpid: i32,
    /// Its host pid.
    pub host: i32,
    /// Its mappings.
    pub vmas: Vec<VmaState>,
    /// Its copied pages.
    pub copy: PageCopy,
    /// Pages the tracker reported written.
    pub dirty_pages: u64,
    /// What reading its layout (`/proc/PID/smaps`) took, ms: the final round does not when
    /// [`PodReader::layouts`] holds it.
    pub layout_ms: f64,
}

/// A round read from the running pod.
pub struct RoundData {
    /// The process tree.
    pub shape: TreeShape,
    /// The live processes' pages (processes that vanished meanwhile are left out).
    pub members: Vec<MemberData>,
}

/// Reads a running pod's memory round after round.
pub struct PodReader {
    state: PodState,
    /// Tracker state per host pid.
    pub armed: HashMap<i32, Armed>,
    /// Processes to read whole next round.
    whole_next: HashSet<i32>,
    backend: Option<Backend>,
    /// The layouts read by the last round, by host pid, of the processes whose every private
    /// anonymous mapping was tracked by then: the final round takes their flags from here when
    /// `/proc/PID/maps` shows them unchanged (see [`crate::group::Tracking::known_layouts`]).
    pub layouts: HashMap<i32, Vec<VmaState>>,
    /// Per host pid, the pages the destination holds as zero after the last round
    /// ([`zero_after`]): a page absent then and now is not sent as zero again
    /// ([`drop_known_absent`]). A pod that arrived by migration has its zero pages absent (the
    /// destination writes none); without this every round re-sent them all.
    pub zero: HashMap<i32, Vec<(u64, u64)>>,
    /// The check of the layouts this round took from the last one ([`PodReader::read`]),
    /// running beside the round: it returns the host pids whose flags changed.
    check: Option<std::thread::JoinHandle<HashSet<i32>>>,
}

/// How often a round lists a running pod's processes again when one ended while listed.
const SHAPE_RETRIES: u32 = 50;

impl PodReader {
    /// A reader of the pod `state`.
    pub fn new(state: PodState) -> Self {
        PodReader { state, armed: HashMap::new(), whole_next: HashSet::new(), backend: None, layouts: HashMap::new(), zero: HashMap::new(), check: None }
    }

    /// Arms the tracker in every process of the stopped pod (round 0). A process that cannot be
    /// armed is read whole each round. Returns the tracker used.
    pub fn arm(&mut self, stopped: &StoppedPod) -> Result<Backend> {
        let backend = dirty::default_backend()?;
        self.backend = Some(backend);
        for f in stopped.frozen() {
            let pid = f.pid();
            let armed = (|| {
                let vmas = crate::mem::save_layout(pid)?;
                let mut inj = crate::inject::Injector::new(pid, pid, crate::inject::find_syscall_insn(pid)?)?;
                let r = dirty::arm(pid, &mut inj, backend, Keeper::Here, &vmas);
                inj.finish()?;
                r
            })();
            match armed {
                Ok(a) => {
                    self.armed.insert(pid, a);
                }
                Err(e) => tracing::warn!(pid, error = %e, "dirty tracking not armed; the process is read whole every round"),
            }
        }
        Ok(backend)
    }

    /// The pod's processes now (host pids, zombies included, not the init).
    pub fn pids(&self) -> Vec<i32> {
        let init = self.state.init_pid;
        let mut pids: Vec<i32> = cgroup_of(&self.state).procs().into_iter().filter(|&p| p != init).collect();
        for p in crate::group::tree_of(init) {
            if p != init && !pids.contains(&p) {
                pids.push(p);
            }
        }
        pids
    }

    /// Waits for the check of the layouts the last round reused, and forgets those whose flags
    /// changed: the next round (or the final one) reads them from smaps. Returns their pids.
    pub fn settle(&mut self) -> HashSet<i32> {
        let stale = self.check.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default();
        for host in &stale {
            tracing::debug!(pid = host, "a mapping's flags changed since its layout was read: read again");
            self.layouts.remove(host);
        }
        stale
    }

    /// Reads a round from the running pod: the pages written since the last round (all pages of
    /// what is not tracked), or with `all` (round 0) every page (the trackers are collected
    /// first all the same, so that what is written from here on is reported next round).
    ///
    /// A process whose `/proc/PID/maps` shows the same mappings as at the last round keeps that
    /// round's layout (its flags: [`crate::mem::layout_reusing`]) instead of reading smaps, whose
    /// walk of every page table grows with memory (50-200 ms a round for 4 GiB under load); a
    /// thread checks those flags against smaps beside the rest of the round, and a process whose
    /// flags changed is read from smaps next round ([`PodReader::settle`], which the final round
    /// calls too, so its own check finds the last round's layouts right).
    pub fn read(&mut self, all: bool) -> Result<RoundData> {
        let stale = self.settle();
        // The pod runs: a process may end between the listing and the reading of its status (a
        // shell loop's `sleep`), which fails the shape; list again then.
        let mut attempt = 0;
        let (shape, order) = loop {
            match crate::group::shape_of(&self.pids()) {
                Ok(s) => break s,
                Err(e) if attempt >= SHAPE_RETRIES => return Err(e.into()),
                Err(e) => {
                    tracing::debug!(error = %e, attempt, "the pod's processes changed while listed; listing again");
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        };
        let mut members = Vec::new();
        let last = std::mem::take(&mut self.layouts);
        let mut reused: Vec<(i32, Vec<VmaState>)> = Vec::new();
        let shm_saved = std::cell::RefCell::new(crate::mem::ShmSaved::new());
        for &(vpid, host) in &order {
            if !shape.members.iter().any(|m| m.0 == vpid && m.3) {
                continue; // a zombie: no memory
            }
            let read = (|| {
                let t = std::time::Instant::now();
                let known = last.get(&host).filter(|_| !all && !crate::mem::full_scan() && !stale.contains(&host));
                let mut vmas = match known.map(|k| crate::mem::layout_reusing(host, k)).transpose()?.flatten() {
                    Some(v) => {
                        reused.push((host, v.clone()));
                        v
                    }
                    None => crate::mem::save_layout(host)?,
                };
                let layout_ms = t.elapsed().as_secs_f64() * 1e3;
                let whole = self.whole_next.remove(&host) || all;
                let dirty = match self.armed.get_mut(&host) {
                    Some(a) => match dirty::collect(a, &vmas) {
                        Ok(d) if !whole => Some(d),
                        Ok(_) => None,
                        Err(e) => {
                            tracing::warn!(pid = host, error = %e, "tracking lost; the process is read whole");
                            self.armed.remove(&host);
                            None
                        }
                    },
                    None => None,
                };
                let collect_ms = t.elapsed().as_secs_f64() * 1e3 - layout_ms;
                // Mappings registered by this collection show `uw` only from now on: a layout
                // read before is kept only if it had none to register.
                if self.armed.contains_key(&host) && vmas.iter().all(|v| v.backing != Backing::Anon || v.shared || v.uffd_wp) {
                    self.layouts.insert(host, vmas.clone());
                }
                let dirty_pages = dirty.as_ref().map_or(0, |d| d.written_bytes() / 4096);
                // The destination holds every page of earlier rounds: a tracked mapping sends
                // only what was written since (no parent process: no page is left to it).
                const ALL: &[(u64, u64)] = &[(0, u64::MAX)];
                // Pages absent at the last round and not written since are not looked at again.
                let absent = self.zero.get(&host).map(Vec::as_slice);
                let plan = crate::mem::CopyPlan { dirty: dirty.as_ref(), base: Some(ALL), shm_saved: Some(&shm_saved), absent, ..Default::default() };
                let mut copy = crate::mem::copy_pages_since(host, &mut vmas, &plan)?;
                let zero = zero_after(&vmas, &copy);
                drop_known_absent(self.zero.get(&host).map(Vec::as_slice), &mut copy);
                self.zero.insert(host, zero);
                tracing::debug!(pid = host, layout_ms, collect_ms, ms = t.elapsed().as_secs_f64() * 1e3, dirty_pages, bytes = copy.bytes, "round: pages read");
                Ok::<_, crate::EngineError>(MemberData { vpid, host, vmas, copy, dirty_pages, layout_ms })
            })();
            match read {
                Ok(m) => members.push(m),
                Err(e) => {
                    // Unmapped or gone while read: whole next round (if it is still there).
                    tracing::debug!(pid = host, error = %e, "pages not read this round");
                    self.whole_next.insert(host);
                }
            }
        }
        if !reused.is_empty() {
            let check = std::thread::Builder::new().name("zap-layout-check".into()).spawn(move || {
                reused.into_iter().filter(|(host, vmas)| crate::mem::check_details(*host, vmas).is_err()).map(|(host, _)| host).collect()
            });
            match check {
                Ok(h) => self.check = Some(h),
                // Unchecked: read from smaps next round.
                Err(_) => self.layouts.clear(),
            }
        }
        Ok(RoundData { shape, members })
    }

    /// Closes every tracker (the migration is over, whichever way).
    pub fn disarm(&mut self) {
        for (_, a) in self.armed.drain() {
            if let Err(e) = dirty::disarm(&a) {
                tracing::warn!(pid = a.pid, error = %e, "could not close a tracker");
            }
        }
    }
}

impl Drop for PodReader {
    fn drop(&mut self) {
        self.disarm();
    }
}

/// `a` minus `b` (both sorted and disjoint), in one pass over both.
fn minus(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut j = 0;
    for &(start, end) in a {
        let mut s = start;
        while j < b.len() && b[j].1 <= s {
            j += 1;
        }
        let mut k = j;
        while k < b.len() && b[k].0 < end && s < end {
            if b[k].0 > s {
                out.push((s, b[k].0));
            }
            s = s.max(b[k].1);
            k += 1;
        }
        if s < end {
            out.push((s, end));
        }
    }
    out
}

/// The pages the destination holds as zero once it applied `copy` of a process with mappings
/// `vmas`: every page absent from a delta mapping (sent as zero now or in an earlier round), and
/// in the ranges sent whole the pages not copied (the destination drops what a whole range does
/// not cover).
pub fn zero_after(vmas: &[VmaState], copy: &PageCopy) -> Vec<(u64, u64)> {
    let mut zero: Vec<(u64, u64)> = copy.delta.values().flatten().copied().collect();
    let whole = super::skeleton::normalize(whole_ranges(vmas, copy));
    let copied = super::skeleton::normalize(copy.runs().map(|(_, a, b)| (a, a + b.len() as u64)).collect());
    zero.extend(minus(&whole, &copied));
    super::skeleton::normalize(zero)
}

/// Leaves out of `copy`'s absent pages (sent as zero) those the destination holds as zero
/// already (`known`, [`zero_after`] of the round before): only pages emptied since are sent.
pub fn drop_known_absent(known: Option<&[(u64, u64)]>, copy: &mut PageCopy) {
    let Some(known) = known.filter(|k| !k.is_empty()) else { return };
    for absent in copy.delta.values_mut() {
        *absent = minus(absent, known);
    }
}

/// Figures of one process's part of a round.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemberFigures {
    /// Chunks offered.
    pub chunks: u64,
    /// Chunks the sink had.
    pub had: u64,
    /// Stored bytes sent.
    pub chunk_bytes: u64,
}

/// Sends process `vpid`'s copied pages to `sink`: chunks in batches, then the extents using
/// them (absent pages of delta mappings as zero extents), and the end of the process.
pub fn send_member<S: RoundSink + ?Sized>(sink: &mut S, vpid: i32, vmas: &[VmaState], copy: &PageCopy, cfg: &ChunkerConfig) -> Result<MemberFigures> {
    sink.member_start(&MemberStart { vpid, whole: whole_ranges(vmas, copy) })?;
    let mut fig = MemberFigures::default();
    let mut pending: Vec<Chunk> = Vec::new();
    let mut pending_ids = HashSet::new();
    let mut extents: Vec<Extent> = Vec::new();
    let flush = |sink: &mut S, pending: &mut Vec<Chunk>, pending_ids: &mut HashSet<zap_chunker::ChunkId>, extents: &mut Vec<Extent>, fig: &mut MemberFigures| -> Result<()> {
        if !pending.is_empty() {
            fig.chunks += pending.len() as u64;
            let (had, bytes) = sink.offer(std::mem::take(pending))?;
            fig.had += had;
            fig.chunk_bytes += bytes;
            pending_ids.clear();
        }
        if !extents.is_empty() {
            let mut ex = std::mem::take(extents);
            ex.sort_by_key(|e| e.start);
            sink.put(vpid, ex)?;
        }
        Ok(())
    };
    for (_, addr, bytes) in copy.runs() {
        for ce in zap_chunker::chunk_run(addr, bytes, cfg) {
            let data = match ce.chunk {
                None => ExtentData::Zero,
                Some(c) => {
                    let id = c.id;
                    if pending_ids.insert(id) {
                        pending.push(c);
                    }
                    ExtentData::Chunk { id, offset: 0 }
                }
            };
            extents.push(Extent { start: ce.start, len: ce.len, data });
        }
        if pending.len() >= IDS_PER_BATCH || extents.len() >= 4 * IDS_PER_BATCH {
            flush(sink, &mut pending, &mut pending_ids, &mut extents, &mut fig)?;
        }
    }
    for absent in copy.delta.values() {
        extents.extend(absent.iter().map(|&(a, b)| Extent { start: a, len: b - a, data: ExtentData::Zero }));
    }
    flush(sink, &mut pending, &mut pending_ids, &mut extents, &mut fig)?;
    sink.member_end(vpid)?;
    Ok(fig)
}

/// A [`RoundSink`] into a store writer: chunks go to the writer, each process's extents are laid
/// over the previous rounds', and [`StoreSink::images`] gives the memory images of the last
/// state (for a checkpoint taken in rounds while the pod runs).
pub struct StoreSink<'w, W: ChunkSink> {
    writer: &'w mut W,
    members: HashMap<i32, (Vec<VmaState>, Vec<Extent>)>,
    layouts: HashMap<i32, Vec<VmaState>>,
    whole: Vec<(u64, u64)>,
    covered: Vec<(u64, u64)>,
}

impl<'w, W: ChunkSink> StoreSink<'w, W> {
    /// A sink into `writer`.
    pub fn new(writer: &'w mut W) -> Self {
        StoreSink { writer, members: HashMap::new(), layouts: HashMap::new(), whole: Vec::new(), covered: Vec::new() }
    }

    /// The memory images of process `vpid` as of the last round, named `{prefix}mem/{start:x}`
    /// (one per mapping with saved pages), with its mappings' image names set.
    pub fn images(&self, vpid: i32, prefix: &str) -> (Vec<VmaState>, Vec<zap_store::Image>) {
        let Some((vmas, extents)) = self.members.get(&vpid) else { return (Vec::new(), Vec::new()) };
        let mut vmas = vmas.clone();
        let mut images = Vec::new();
        for v in &mut vmas {
            let ex = zap_store::clip(extents, v.start, v.end);
            if !ex.is_empty() {
                let name = format!("{prefix}mem/{:x}", v.start);
                v.image = Some(name.clone());
                images.push(zap_store::Image { name, kind: zap_store::ImageKind::Memory, extents: ex });
            }
        }
        (vmas, images)
    }
}

impl<W: ChunkSink> RoundSink for StoreSink<'_, W> {
    fn round_start(&mut self, start: &RoundStart) -> Result<()> {
        self.layouts = start.layouts.iter().cloned().collect();
        let live: HashSet<i32> = start.layouts.iter().map(|l| l.0).collect();
        self.members.retain(|v, _| live.contains(v));
        for (vpid, vmas) in &start.layouts {
            let entry = self.members.entry(*vpid).or_default();
            let ranges = super::skeleton::normalize(vmas.iter().map(|v| (v.start, v.end)).collect());
            entry.1 = ranges.iter().flat_map(|&(a, b)| zap_store::clip(&entry.1, a, b)).collect();
            entry.0 = vmas.clone();
        }
        Ok(())
    }

    fn member_start(&mut self, member: &MemberStart) -> Result<()> {
        self.whole = member.whole.clone();
        self.covered.clear();
        Ok(())
    }

    fn offer(&mut self, chunks: Vec<Chunk>) -> Result<(u64, u64)> {
        let (mut had, mut bytes) = (0, 0);
        for c in &chunks {
            if self.writer.put(c)? {
                bytes += c.data.len() as u64;
            } else {
                had += 1;
            }
        }
        Ok((had, bytes))
    }

    fn put(&mut self, vpid: i32, extents: Vec<Extent>) -> Result<()> {
        let entry = self.members.entry(vpid).or_default();
        self.covered.extend(extents.iter().map(|e| (e.start, e.end())));
        entry.1 = zap_store::overlay(&entry.1, &extents);
        Ok(())
    }

    fn member_end(&mut self, vpid: i32) -> Result<()> {
        let entry = self.members.entry(vpid).or_default();
        let gone = super::skeleton::subtract(&super::skeleton::normalize(self.whole.clone()), &super::skeleton::normalize(self.covered.clone()));
        super::skeleton::cut_out_in(&mut entry.1, &gone);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vma(start: u64, end: u64) -> VmaState {
        VmaState { start, end, prot: 3, shared: false, growsdown: false, backing: Backing::Anon, name: String::new(), image: None, flags: Default::default(), pkey: 0, huge: 0, inherited: Vec::new(), guards: Vec::new(), uffd_wp: false }
    }

    #[test]
    fn minus_and_known_absent() {
        assert_eq!(minus(&[(0, 100), (200, 300)], &[(10, 20), (50, 250), (290, 400)]), vec![(0, 10), (20, 50), (250, 290)]);
        assert_eq!(minus(&[(0, 10)], &[]), vec![(0, 10)]);
        assert_eq!(minus(&[(0, 10), (20, 30)], &[(0, 10), (20, 30)]), vec![]);
        // Absent pages known to be zero at the destination are not sent again; newly emptied ones are.
        let mut copy = PageCopy { runs: Vec::new(), planned: Vec::new(), pid: 0, bytes: 0, delta: Default::default(), elsewhere: Vec::new() };
        copy.delta.insert(0, vec![(0x1000, 0x3000), (0x8000, 0x9000)]);
        drop_known_absent(Some(&[(0x0, 0x2000), (0x8000, 0x9000)]), &mut copy);
        assert_eq!(copy.delta[&0], vec![(0x2000, 0x3000)]);
    }

    /// Rounds into a store sink: the last state wins, pages dropped in a whole range vanish.
    #[test]
    fn store_sink_keeps_the_last_state() {
        struct Mem(HashMap<zap_chunker::ChunkId, Chunk>);
        impl ChunkSink for Mem {
            fn contains(&mut self, id: &zap_chunker::ChunkId) -> zap_store::Result<bool> {
                Ok(self.0.contains_key(id))
            }
            fn put(&mut self, c: &Chunk) -> zap_store::Result<bool> {
                Ok(self.0.insert(c.id, c.clone()).is_none())
            }
            fn commit(self, _: zap_store::Manifest) -> zap_store::Result<zap_store::CheckpointSummary> {
                unreachable!()
            }
        }
        let mut w = Mem(HashMap::new());
        let mut sink = StoreSink::new(&mut w);
        let cfg = ChunkerConfig::default();
        let shape = TreeShape { members: vec![(2, 0, true, true)] };
        let page = |b: u8| vec![b; 4096];
        // Round 0: two pages whole.
        sink.round_start(&RoundStart { n: 0, last: false, shape: shape.clone(), main_vpid: 2, layouts: vec![(2, vec![vma(0x10000, 0x12000)])] }).unwrap();
        sink.member_start(&MemberStart { vpid: 2, whole: vec![(0x10000, 0x12000)] }).unwrap();
        let mut ex = Vec::new();
        let mut chunks = Vec::new();
        for ce in zap_chunker::chunk_run(0x10000, &[page(1), page(2)].concat(), &cfg) {
            let c = ce.chunk.unwrap();
            ex.push(Extent { start: ce.start, len: ce.len, data: ExtentData::Chunk { id: c.id, offset: 0 } });
            chunks.push(c);
        }
        assert_eq!(sink.offer(chunks.clone()).unwrap().0, 0);
        sink.put(2, ex).unwrap();
        sink.member_end(2).unwrap();
        // Round 1: the second page written with zeros, nothing else.
        sink.round_start(&RoundStart { n: 1, last: false, shape, main_vpid: 2, layouts: vec![(2, vec![vma(0x10000, 0x12000)])] }).unwrap();
        sink.member_start(&MemberStart { vpid: 2, whole: vec![] }).unwrap();
        sink.put(2, vec![Extent { start: 0x11000, len: 4096, data: ExtentData::Zero }]).unwrap();
        sink.member_end(2).unwrap();
        assert_eq!(sink.offer(chunks).unwrap().0, 1, "had the chunk");
        let (vmas, images) = sink.images(2, "p2/");
        assert_eq!(vmas[0].image.as_deref(), Some("p2/mem/10000"));
        let ext = &images[0].extents;
        assert_eq!(ext.last().unwrap().data, ExtentData::Zero);
        assert_eq!(ext.iter().map(|e| e.len).sum::<u64>(), 0x2000);
    }
}
