//! Pages of a process: which to save (from `/proc/PID/pagemap`), copying them out of the stopped
//! process, and storing them as chunked images (see the module doc of [`crate::mem`]).
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use zap_chunker::{ChunkerConfig, PAGE_SIZE};
use zap_store::{clip, ChunkSink, Extent, ExtentData, Image, ImageKind};

use super::{Backing, VmaState};
use crate::sys::proc as sysproc;
use crate::{EngineError, Result};

const WINDOW: u64 = 64 << 20;

/// Reads the pagemap entries of `[start, end)`.
fn pagemap(pagemap: &File, path: &Path, start: u64, end: u64) -> Result<Vec<u64>> {
    let pages = ((end - start) / PAGE_SIZE as u64) as usize;
    let mut raw = vec![0u8; pages * 8];
    pagemap
        .read_exact_at(&mut raw, start / PAGE_SIZE as u64 * 8)
        .map_err(|e| EngineError::io("read pagemap", path, e))?;
    Ok(raw.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8"))).collect())
}

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;
/// A guard page (`MADV_GUARD_INSTALL`, Linux 6.15+ reports it): a marker, no page.
const PM_GUARD: u64 = 1 << 58;

/// Bits 0-4 of a swapped entry: its swap type (shown to a reader with CAP_SYS_ADMIN; zero
/// otherwise).
const PM_SWAP_TYPE: u64 = 0x1f;
/// The swap type of a PTE marker (`SWP_PTE_MARKER`: the last of the 5-bit types). A dirty
/// tracker's write-protection of unpopulated memory (`UFFD_FEATURE_WP_UNPOPULATED`) leaves such
/// a marker in every page it covers that was never written; pagemap shows it as swapped, but no
/// page is behind it: it reads zero.
const SWP_PTE_MARKER: u64 = 31;

/// A page that holds data: present, or swapped out. A guard marker and a PTE marker also show as
/// swapped and hold nothing (without CAP_SYS_ADMIN the swap type reads 0: such entries count as
/// pages, which is safe, only slower).
fn has_page(e: u64) -> bool {
    e & PM_PRESENT != 0 || (e & PM_SWAPPED != 0 && e & PM_GUARD == 0 && e & PM_SWAP_TYPE != SWP_PTE_MARKER)
}

/// A dirty tracker's write-protection marker: the page reads zero (never written since the
/// tracker protected it, or emptied since by `MADV_DONTNEED`).
fn is_wp_marker(e: u64) -> bool {
    e & PM_PRESENT == 0 && e & PM_SWAPPED != 0 && e & PM_GUARD == 0 && e & PM_SWAP_TYPE == SWP_PTE_MARKER
}

/// `$ZAP_FULL_SCAN=1`: deltas read the whole pagemap and a migration's final round reads smaps,
/// as before they learnt not to (for comparisons).
pub fn full_scan() -> bool {
    static F: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *F.get_or_init(|| std::env::var("ZAP_FULL_SCAN").is_ok_and(|v| v == "1"))
}

/// What a delta copy of one private anonymous mapping takes.
#[derive(Debug, PartialEq, Eq)]
struct Delta {
    /// Runs of pages to copy.
    runs: Vec<(u64, u64)>,
    /// Runs of pages that read zero now and are saved so (see [`copy_pages_since`]).
    absent: Vec<(u64, u64)>,
    /// Guard pages.
    guards: Vec<(u64, u64)>,
}

/// The delta of a mapping from its pagemap `entries` (from `start`): of the pages holding data
/// (`runs`, from [`runs_to_save`]) those `wanted`; pages not present now are zero wherever they
/// are (laid over the parent, they hide what it held), but a tracker marker's page is zero only
/// where the parent checkpoint (`base`) holds something (it may have been emptied since): over
/// the parent's holes it was never written, and the image stays the same as a dump's.
fn delta_of(start: u64, entries: &[u64], runs: Vec<(u64, u64)>, wanted: &[(u64, u64)], base: Option<&[(u64, u64)]>) -> Delta {
    let mut absent = runs_from(start, entries, |e| !has_page(e) && !is_wp_marker(e));
    absent.extend(intersect(&runs_from(start, entries, is_wp_marker), base.unwrap_or(&[(0, u64::MAX)])));
    Delta { runs: intersect(&runs, wanted), absent: merge(absent), guards: runs_from(start, entries, |e| e & PM_GUARD != 0) }
}

/// Pages that held nothing at the last copy, and the pages written since (see `sparse_delta`).
type KnownAbsent<'a> = (&'a [(u64, u64)], &'a [(u64, u64)]);

/// A mapping with more holes than one per this many pages is read whole by a delta copy (see
/// [`sparse_delta`]).
const SPARSE_PAGES_PER_HOLE: u64 = 64;

/// [`delta_of`] without reading the pagemap of clean resident memory (8 bytes a page): one
/// `PAGEMAP_SCAN` (a walk of the page tables in the kernel that copies out only what matches)
/// finds the pages of `vma` that are not present, whose entries are read with those of the
/// `wanted` pages; every other page is present, which is all the delta asks of it. None where
/// the kernel lacks `PAGEMAP_SCAN`, or where the mapping has so many holes (more than one per
/// [`SPARSE_PAGES_PER_HOLE`] pages: memory filled in part, say by a restore that left zero pages
/// out) that one read of all entries costs less than a read per hole (the caller reads them all).
///
/// `still_absent` (see [`CopyPlan::absent`]): pages known to have held nothing at the last copy
/// and written to by nothing since (`written`: what the tracker reported): the holes among them
/// are taken as still absent (a page can only be swapped out, or hold anything, after a write)
/// without reading their entries, except guard pages (found by one more `PAGEMAP_SCAN`; where
/// the kernel cannot say, every hole is read). A pod that arrived by migration has a hole per
/// zero run (32,768 in a 4 GiB test pod): each round read their entries one by one, or (past
/// [`SPARSE_PAGES_PER_HOLE`]) the whole pagemap, 0.1-0.3 s a round for 4 GiB under load.
fn sparse_delta(pm: &File, path: &Path, vma: &VmaState, wanted: &[(u64, u64)], base: Option<&[(u64, u64)]>, still_absent: Option<KnownAbsent<'_>>) -> Result<Option<Delta>> {
    let Ok(not_present) = crate::sys::uffd::scan_not_present(pm, vma.start, vma.end) else { return Ok(None) };
    // Markers count as absent only where the base covers them (see `delta_of`): known holes
    // are skipped only where it covers the whole mapping.
    let covered = base.is_none_or(|b| super::cow::outside(b, vma.start, vma.end).is_empty());
    let skip = match still_absent.filter(|_| covered) {
        Some((known, written)) if !known.is_empty() => match crate::sys::uffd::scan_guards(pm, vma.start, vma.end) {
            Ok(guards) => {
                let unwritten = super::cow::outside(&merge(written.to_vec()), vma.start, vma.end);
                let quiet = intersect(&intersect(&not_present, known), &unwritten);
                intersect(&quiet, &super::cow::outside(&guards, vma.start, vma.end))
            }
            Err(_) => Vec::new(),
        },
        _ => Vec::new(),
    };
    let to_read = if skip.is_empty() { not_present.clone() } else { intersect(&not_present, &super::cow::outside(&skip, vma.start, vma.end)) };
    if to_read.len() as u64 * SPARSE_PAGES_PER_HOLE > (vma.end - vma.start) / PAGE_SIZE as u64 {
        return Ok(None);
    }
    let mut d = Delta { runs: intersect(wanted, &super::cow::outside(&not_present, vma.start, vma.end)), absent: skip, guards: Vec::new() };
    for (a, b) in merge(to_read) {
        let entries = pagemap(pm, path, a, b)?;
        // The wanted runs near this hole only (found by binary search).
        let near = &wanted[wanted.partition_point(|r| r.1 <= a)..wanted.partition_point(|r| r.0 < b)];
        let part = delta_of(a, &entries, runs_from(a, &entries, has_page), near, base);
        d.runs.extend(part.runs);
        d.absent.extend(part.absent);
        d.guards.extend(part.guards);
    }
    d.runs = merge(d.runs);
    d.absent = merge(d.absent);
    d.guards = merge(d.guards);
    Ok(Some(d))
}

/// Runs of the pages of `vma` (pagemap `entries` from its start) for which `pick` holds.
fn runs_where(vma: &VmaState, entries: &[u64], pick: impl Fn(u64) -> bool) -> Vec<(u64, u64)> {
    runs_from(vma.start, entries, pick)
}

/// Runs of the pages from `start` (pagemap `entries`) for which `pick` holds.
fn runs_from(start: u64, entries: &[u64], pick: impl Fn(u64) -> bool) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (i, &e) in entries.iter().enumerate() {
        if pick(e) {
            let a = start + (i * PAGE_SIZE) as u64;
            match runs.last_mut() {
                Some(r) if r.1 == a => r.1 = a + PAGE_SIZE as u64,
                _ => runs.push((a, a + PAGE_SIZE as u64)),
            }
        }
    }
    runs
}

/// Which pages of `vma` must be saved, as runs of (start, end).
fn runs_to_save(vma: &VmaState, entries: &[u64]) -> Vec<(u64, u64)> {
    let keep = |e: u64| match (&vma.backing, vma.shared) {
        (Backing::Vdso | Backing::Vsyscall | Backing::SysvShm { .. }, _) => false,
        (Backing::File { .. } | Backing::Deleted { .. }, true) => false,
        (Backing::File { .. } | Backing::Deleted { .. }, false) => has_page(e) && (e & PM_PRESENT == 0 || e & PM_FILE == 0),
        (Backing::Anon | Backing::Shmem { .. } | Backing::Aio { .. }, _) => has_page(e),
    };
    runs_where(vma, entries, keep)
}

/// What a copy knows besides the process itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct CopyPlan<'a> {
    /// What a dirty-page tracker reported since the parent checkpoint: tracked private
    /// anonymous mappings are copied as deltas (see [`copy_pages_since`]).
    pub dirty: Option<&'a crate::dirty::Dirty>,
    /// With `dirty`: the address runs the parent checkpoint holds pages of for this process (its
    /// images' extents). Pages outside them were not saved then (they were shared with the
    /// parent process, or absent) and are copied whether written or not.
    pub base: Option<&'a [(u64, u64)]>,
    /// The process's parent, saved in the same checkpoint and stopped: its host pid and mapping
    /// table. Pages still shared with it since a fork are not copied ([`super::cow`]).
    pub parent: Option<(i32, &'a [VmaState])>,
    /// Shared anonymous memory saved by the processes of the same checkpoint (or round) read
    /// before this one: shmem inode -> the runs of the object their mappings covered. A mapping
    /// wholly inside those is left to them ([`PageCopy::elsewhere`]: a restore writes their
    /// pages into the one object this process maps too); any other is saved whole and claims
    /// its range. Without it every process's image holds all the pages of the object its
    /// mappings cover.
    pub shm_saved: Option<&'a std::cell::RefCell<ShmSaved>>,
    /// With `dirty`: the pages that held nothing at the tracker's previous collection (a
    /// migration's last round: [`crate::migrate::precopy::zero_after`]). Those not written since
    /// hold nothing still, and a delta does not read their pagemap entries (see `sparse_delta`).
    pub absent: Option<&'a [(u64, u64)]>,
}

/// Ranges of shared anonymous memory objects saved so far: shmem inode -> sorted runs of
/// offsets in the object.
pub type ShmSaved = std::collections::HashMap<u64, Vec<(u64, u64)>>;

/// The pages of the shmem object behind the shared anonymous mapping `vma` (`offset`: where the
/// mapping starts in it) that hold data, as address runs of the mapping: every page the object
/// holds, in memory or swapped out, found with `SEEK_DATA`/`SEEK_HOLE` on the object opened
/// through `/proc/PID/map_files`. A process's page table shows only the pages it touched itself:
/// a page another process wrote (one that has exited since, say) is in the object, not there.
fn shmem_data(pid: i32, vma: &VmaState, offset: u64) -> Result<Vec<(u64, u64)>> {
    let path = format!("/proc/{pid}/map_files/{:x}-{:x}", vma.start, vma.end);
    let err = |what: &str, e: std::io::Error| EngineError::Proc {
        pid,
        detail: format!("{what} of shared anonymous memory {:#x}-{:#x} ({path}): {e}", vma.start, vma.end),
    };
    let obj = File::open(&path).map_err(|e| err("open the object", e))?;
    let page = PAGE_SIZE as u64;
    let end = offset + (vma.end - vma.start);
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut pos = offset;
    while pos < end {
        let Some(data) = sysproc::seek_data(&obj, pos).map_err(|e| err("find the data", e))? else { break };
        if data >= end {
            break;
        }
        let hole = sysproc::seek_hole(&obj, data).map_err(|e| err("find the holes", e))?.min(end);
        let (a, b) = (data / page * page, hole.div_ceil(page) * page);
        if b <= a {
            break;
        }
        runs.push((a.max(offset) - offset + vma.start, b.min(end) - offset + vma.start));
        pos = b;
    }
    Ok(runs)
}

/// Figures of a memory dump.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemDumpFigures {
    /// Bytes read from the process.
    pub bytes_read: u64,
    /// Stored bytes that were new.
    pub new_bytes: u64,
}

/// Pages copied out of a stopped process: per mapping, runs of (address, bytes).
pub struct PageCopy {
    pub(crate) runs: Vec<(usize, u64, Vec<u8>)>,
    /// Runs to save that are not copied yet, (mapping index, start, end): the dump pipeline
    /// ([`crate::pipeline`]) reads them while it stores, so the process must stay stopped until
    /// then (see [`plan_pages_since`]).
    pub(crate) planned: Vec<(usize, u64, u64)>,
    /// The process they are read from.
    pub(crate) pid: i32,
    /// Bytes copied (or, for planned runs, to be read).
    pub bytes: u64,
    /// Mappings saved as a delta on the parent checkpoint (by index), with their runs of pages
    /// that are not present now (saved as zero).
    pub delta: std::collections::BTreeMap<usize, Vec<(u64, u64)>>,
    /// Shared anonymous mappings (by index) whose pages another process of the same save holds
    /// ([`CopyPlan::shm_saved`]): nothing of them is saved here, and they are not whole.
    pub elsewhere: Vec<usize>,
}

/// `runs` sorted, with overlapping and touching runs joined.
fn merge(mut runs: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    runs.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(runs.len());
    for (a, b) in runs {
        match out.last_mut() {
            Some(r) if a <= r.1 => r.1 = r.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

impl PageCopy {
    /// The copied runs: (index of the mapping, address, bytes).
    pub fn runs(&self) -> impl Iterator<Item = (usize, u64, &[u8])> {
        self.runs.iter().map(|(i, a, b)| (*i, *a, b.as_slice()))
    }
}

/// The parts of the sorted runs `a` that lie in the sorted runs `b`.
fn intersect(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (lo, hi) = (a[i].0.max(b[j].0), a[i].1.min(b[j].1));
        if lo < hi {
            out.push((lo, hi));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// Copies the pages that must be saved (see the module doc) out of the stopped process `pid`.
/// This is all the process has to be stopped for; chunking and storing happen afterwards
/// ([`store_pages`]). Records each mapping's guard pages.
pub fn copy_pages(pid: i32, vmas: &mut [VmaState]) -> Result<PageCopy> {
    copy_pages_since(pid, vmas, &CopyPlan::default())
}

/// Like [`copy_pages`], with what `plan` knows. With a dirty-page tracker's report, a private
/// anonymous mapping that was tracked, wholly or in part, is saved as a delta on the parent
/// checkpoint (the written pages of its tracked parts, the pages the parent checkpoint does not
/// hold, every page of its untracked parts, and its pages that are not present now as zero);
/// every other mapping whole. With the parent process, the pages of private mappings it still
/// shares with it are left out and recorded in [`VmaState::inherited`].
pub fn copy_pages_since(pid: i32, vmas: &mut [VmaState], plan: &CopyPlan<'_>) -> Result<PageCopy> {
    let mut copy = plan_pages_since(pid, vmas, plan)?;
    let planned = std::mem::take(&mut copy.planned);
    let mem_path = format!("/proc/{pid}/mem");
    let mem = File::open(&mem_path).map_err(|e| EngineError::io("open", mem_path.as_ref(), e))?;
    let mut i = 0;
    while i < planned.len() {
        let idx = planned[i].0;
        let mut j = i;
        while j < planned.len() && planned[j].0 == idx {
            j += 1;
        }
        read_runs(pid, &mem, &vmas[idx], idx, &planned[i..j], &mut copy)?;
        i = j;
    }
    Ok(copy)
}

/// Like [`copy_pages_since`] (the same pages, inherited runs and guard pages), but copies
/// nothing yet: the runs to save are left in the returned [`PageCopy`] for the dump pipeline to
/// read while it stores them. The process (and, with `plan.parent`, its parent) must stay
/// stopped until they are stored.
pub fn plan_pages_since(pid: i32, vmas: &mut [VmaState], plan: &CopyPlan<'_>) -> Result<PageCopy> {
    let pm_path = format!("/proc/{pid}/pagemap");
    let pm = File::open(&pm_path).map_err(|e| EngineError::io("open", pm_path.as_ref(), e))?;
    let parent_pm = match plan.parent {
        Some((ppid, _)) => {
            let path = format!("/proc/{ppid}/pagemap");
            Some((File::open(&path).map_err(|e| EngineError::io("open", path.as_ref(), e))?, path))
        }
        None => None,
    };
    let mut copy = PageCopy { runs: Vec::new(), planned: Vec::new(), pid, bytes: 0, delta: Default::default(), elsewhere: Vec::new() };
    for (idx, vma) in vmas.iter_mut().enumerate() {
        vma.inherited.clear();
        vma.guards.clear();
        if matches!(vma.backing, Backing::Vdso | Backing::Vsyscall | Backing::SysvShm { .. }) {
            continue;
        }
        if let Backing::Aio { own: false, .. } = vma.backing {
            // A child's copy of its parent's ring: mapped again by fork from the restored parent.
            super::aio::check_copy(pid, vma, plan.parent.map(|(_, p)| p))?;
            vma.inherited = vec![(vma.start, vma.end)];
            continue;
        }
        let tracked: Vec<(u64, u64)> = match plan.dirty {
            Some(d) if vma.backing == Backing::Anon && !vma.shared => intersect(&[(vma.start, vma.end)], &d.tracked),
            _ => Vec::new(),
        };
        // A delta's pages: of its tracked parts only written pages and what the parent
        // checkpoint lacks; of its untracked parts every page.
        let wanted = match (plan.dirty, tracked.is_empty()) {
            (Some(d), false) => {
                let mut wanted = intersect(&tracked, &d.written);
                let base = plan.base.unwrap_or(&[]);
                for r in &tracked {
                    wanted.extend(super::cow::outside(base, r.0, r.1));
                }
                let mut pos = vma.start;
                for &(a, b) in &tracked {
                    if a > pos {
                        wanted.push((pos, a));
                    }
                    pos = b;
                }
                if pos < vma.end {
                    wanted.push((pos, vma.end));
                }
                Some(merge(wanted))
            }
            _ => None,
        };
        let inheritable = matches!((plan.parent, &parent_pm), (Some((_, pvmas)), Some(_)) if super::cow::inheritable(vma, pvmas));
        if let (Some(wanted), false) = (&wanted, inheritable || full_scan()) {
            // A delta with no page shared with a parent process: the page tables are walked by
            // the kernel, and only the entries that matter are read.
            let still_absent = plan.absent.zip(plan.dirty).map(|(k, d)| (k, d.written.as_slice()));
            if let Some(d) = sparse_delta(&pm, pm_path.as_ref(), vma, wanted, plan.base, still_absent)? {
                vma.guards = d.guards;
                copy.delta.insert(idx, d.absent);
                copy.bytes += d.runs.iter().map(|(a, b)| b - a).sum::<u64>();
                copy.planned.extend(d.runs.into_iter().map(|(a, b)| (idx, a, b)));
                continue;
            }
        }
        let entries = pagemap(&pm, pm_path.as_ref(), vma.start, vma.end)?;
        vma.guards = runs_where(vma, &entries, |e| e & PM_GUARD != 0);
        let mut runs = runs_to_save(vma, &entries);
        if let Backing::Shmem { ino, offset } = vma.backing {
            let range = (offset, offset + (vma.end - vma.start));
            let claimed = plan.shm_saved.map(|saved| {
                let mut saved = saved.borrow_mut();
                let done = saved.entry(ino).or_default();
                let inside = super::cow::outside(done, range.0, range.1).is_empty();
                if !inside {
                    done.push(range);
                    *done = merge(std::mem::take(done));
                }
                inside
            });
            if claimed == Some(true) {
                // Another process of this save holds every page this mapping shows.
                copy.elsewhere.push(idx);
                continue;
            }
            runs.extend(shmem_data(pid, vma, offset)?);
            runs = merge(runs);
        }
        if let (Some((_, pvmas)), Some((ppm, ppath))) = (plan.parent, &parent_pm) {
            if super::cow::inheritable(vma, pvmas) {
                let pentries = pagemap(ppm, ppath.as_ref(), vma.start, vma.end)?;
                vma.inherited = super::cow::same_pages(vma, &entries, &pentries);
                runs = intersect(&runs, &super::cow::outside(&vma.inherited, vma.start, vma.end));
            }
        }
        if let Some(wanted) = wanted {
            let d = delta_of(vma.start, &entries, runs, &wanted, plan.base);
            runs = d.runs;
            copy.delta.insert(idx, d.absent);
        }
        copy.bytes += runs.iter().map(|(a, b)| b - a).sum::<u64>();
        copy.planned.extend(runs.into_iter().map(|(a, b)| (idx, a, b)));
    }
    Ok(copy)
}

/// Copies the planned `runs` of mapping `vma` (index `idx`) into `copy`.
fn read_runs(pid: i32, mem: &File, vma: &VmaState, idx: usize, runs: &[(usize, u64, u64)], copy: &mut PageCopy) -> Result<()> {
    // Small runs (the scattered pages of a delta) are read many at a time with
    // process_vm_readv; large ones, and any batch it cannot read whole, through
    // /proc/PID/mem (which also reads pages the process cannot).
    let mut small: Vec<(u64, usize)> = Vec::new();
    let flush = |small: &mut Vec<(u64, usize)>, copy: &mut PageCopy| -> Result<()> {
        if small.is_empty() {
            return Ok(());
        }
        let mut bufs: Vec<Vec<u8>> = small.iter().map(|&(_, l)| vec![0u8; l]).collect();
        let want: usize = small.iter().map(|&(_, l)| l).sum();
        if sysproc::vm_read(pid, small, &mut bufs).ok() != Some(want) {
            for ((a, l), b) in small.iter().zip(bufs.iter_mut()) {
                mem.read_exact_at(b, *a).map_err(|e| EngineError::Proc {
                    pid,
                    detail: format!("read memory at {a:#x}+{l:#x} ({}): {e}", vma.name),
                })?;
            }
        }
        for ((a, _), b) in small.drain(..).zip(bufs) {
            copy.runs.push((idx, a, b));
        }
        Ok(())
    };
    for &(_, from, to) in runs {
        if to - from <= 64 * 1024 {
            small.push((from, (to - from) as usize));
            if small.len() == 1024 {
                flush(&mut small, copy)?;
            }
            continue;
        }
        let mut pos = from;
        while pos < to {
            // Cut at absolute window boundaries: the blocks, hence the chunks, are the same as
            // when the dump pipeline reads the same run.
            let len = (to - pos).min(WINDOW - pos % WINDOW);
            let mut buf = vec![0u8; len as usize];
            mem.read_exact_at(&mut buf, pos).map_err(|e| EngineError::Proc {
                pid,
                detail: format!("read memory at {pos:#x}+{len:#x} ({}): {e}", vma.name),
            })?;
            copy.runs.push((idx, pos, buf));
            pos += len;
        }
    }
    flush(&mut small, copy)
}

/// Chunks and stores copied pages into `sink`, returning one image per mapping that has saved
/// pages (and setting `vma.image`). Image names are `{prefix}mem/{start:x}`. Mappings copied as
/// a delta are laid over the same process's images in `parent` (its images named
/// `{prefix}mem/...`): unchanged pages keep the parent's chunks.
pub fn store_pages<S: ChunkSink>(
    mut copy: PageCopy,
    vmas: &mut [VmaState],
    sink: &mut S,
    cfg: &ChunkerConfig,
    prefix: &str,
    parent: Option<&[Image]>,
) -> Result<(Vec<Image>, MemDumpFigures)> {
    let mut figures = MemDumpFigures { bytes_read: copy.bytes, new_bytes: 0 };
    let names: Vec<&str> = vmas.iter().map(|v| v.name.as_str()).collect();
    let (mut per_vma, new) = crate::pipeline::dump::store_copy(&mut copy, &names, sink, cfg)?;
    figures.new_bytes = new;
    for v in &mut per_vma {
        v.sort_by_key(|e| e.start); // runs may be copied out of address order
    }
    if !copy.delta.is_empty() {
        let parent = parent.ok_or_else(|| EngineError::Proc { pid: 0, detail: "a delta copy needs its parent checkpoint".into() })?;
        let mine = format!("{prefix}mem/");
        let mut base: Vec<Extent> = parent.iter().filter(|i| i.name.starts_with(&mine)).flat_map(|i| i.extents.iter().cloned()).collect();
        base.sort_by_key(|e| e.start);
        for (idx, absent) in copy.delta {
            let v = &vmas[idx];
            let mut changed = std::mem::take(&mut per_vma[idx]);
            changed.extend(absent.iter().map(|&(a, b)| Extent { start: a, len: b - a, data: ExtentData::Zero }));
            changed.sort_by_key(|e| e.start);
            per_vma[idx] = zap_store::overlay(&clip(&base, v.start, v.end), &changed);
        }
    }
    // Pages shared with the parent process are never in the child's image (a parent checkpoint
    // may have held them when they were still the child's own).
    for (v, extents) in vmas.iter().zip(per_vma.iter_mut()) {
        if !v.inherited.is_empty() {
            *extents = within(extents, &super::cow::outside(&v.inherited, v.start, v.end));
        }
    }
    let mut images = Vec::new();
    for (vma, extents) in vmas.iter_mut().zip(per_vma) {
        if !extents.is_empty() {
            let name = format!("{prefix}mem/{:x}", vma.start);
            vma.image = Some(name.clone());
            images.push(Image { name, kind: ImageKind::Memory, extents });
        }
    }
    Ok((images, figures))
}

/// The parts of the sorted extents `extents` inside the sorted runs `runs`.
pub(crate) fn within(extents: &[Extent], runs: &[(u64, u64)]) -> Vec<Extent> {
    let mut out = Vec::new();
    for &(a, b) in runs {
        let first = extents.partition_point(|e| e.end() <= a);
        let last = extents.partition_point(|e| e.start < b);
        if first < last {
            out.extend(clip(&extents[first..last], a, b));
        }
    }
    out
}

/// The address runs of the pages a checkpoint's `images` hold for the process whose image names
/// start with `prefix` (`p{vpid}/` in a group, empty for a single process): the extents of its
/// memory images, joined.
pub fn base_runs(images: &[Image], prefix: &str) -> Vec<(u64, u64)> {
    let mine = format!("{prefix}mem/");
    merge(images.iter().filter(|i| i.name.starts_with(&mine)).flat_map(|i| i.extents.iter().map(|e| (e.start, e.end()))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Transparent huge pages always on may fill a buffer's unwritten pages.
    fn thp_always() -> bool {
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").is_ok_and(|t| t.contains("[always]"))
    }

    /// The delta of a mapping found with PAGEMAP_SCAN (entries read only where pages are absent
    /// or wanted) is the one found from the whole pagemap.
    #[test]
    fn sparse_delta_agrees_with_the_whole_pagemap() {
        if crate::sys::uffd::probe_uffd_wp().is_err() {
            println!("SKIP: PAGEMAP_SCAN");
            return;
        }
        // A fresh large allocation is mapped on its own; its pages are absent until written.
        // (Only its pages are compared: other tests' threads may use the rest of the mapping.)
        const N: u64 = 8192;
        let page = PAGE_SIZE as u64;
        let mut buf = vec![0u8; (N as usize + 1) * PAGE_SIZE];
        let skip = (page - buf.as_ptr() as u64 % page) % page;
        let base = buf.as_ptr() as u64 + skip;
        let written = |i: u64| !((50..60).contains(&i) || (300..302).contains(&i) || i % 1000 == 999);
        for i in (0..N).filter(|&i| written(i)) {
            buf[(skip + i * page) as usize] = 1;
        }
        let ours = [(base, base + N * page)];
        let pid = std::process::id() as i32;
        let vma = crate::mem::save_layout(pid).unwrap().into_iter().find(|v| v.start <= base && base < v.end).expect("the buffer's mapping");
        let path = format!("/proc/{pid}/pagemap");
        let pm = File::open(&path).unwrap();
        let wanted = merge(vec![(base + 10 * page, base + 20 * page), (base + 40 * page, base + 70 * page), (base + 990 * page, base + 1200 * page)]);
        let parent = [(base, base + 64 * page)];
        for holds in [None, Some(&parent[..])] {
            let sparse = sparse_delta(&pm, path.as_ref(), &vma, &wanted, holds, None).unwrap().expect("PAGEMAP_SCAN, few holes");
            let entries = pagemap(&pm, path.as_ref(), vma.start, vma.end).unwrap();
            let whole = delta_of(vma.start, &entries, runs_to_save(&vma, &entries), &wanted, holds);
            let mine = |r: &[(u64, u64)]| intersect(r, &ours);
            assert_eq!(mine(&sparse.runs), mine(&whole.runs), "runs to copy");
            assert_eq!(mine(&sparse.absent), mine(&whole.absent), "absent runs");
            assert_eq!(mine(&sparse.guards), mine(&whole.guards), "guard runs");
            let copied: u64 = mine(&sparse.runs).iter().map(|(a, b)| (b - a) / page).sum();
            assert!(copied == (10..20).chain(40..70).chain(990..1200).filter(|&i| written(i)).count() as u64 || thp_always(), "the wanted pages that hold data");
            let absent: u64 = mine(&sparse.absent).iter().map(|(a, b)| (b - a) / page).sum();
            assert!(absent == (0..N).filter(|&i| !written(i)).count() as u64 || thp_always(), "the pages never written read zero");
        }
        // Holes every few pages: the sparse read gives way to one read of all entries.
        let mut holed = vec![0u8; (N as usize + 1) * PAGE_SIZE];
        let hskip = (page - holed.as_ptr() as u64 % page) % page;
        for i in (0..N).filter(|i| i.is_multiple_of(3)) {
            holed[(hskip + i * page) as usize] = 1;
        }
        let hbase = holed.as_ptr() as u64 + hskip;
        let hvma = crate::mem::save_layout(pid).unwrap().into_iter().find(|v| v.start <= hbase && hbase < v.end).expect("the second buffer's mapping");
        assert!(sparse_delta(&pm, path.as_ref(), &hvma, &wanted, None, None).unwrap().is_none() || thp_always(), "a mapping full of holes is read whole");
        // Unless its holes are known to have held nothing since a collection that saw them, with
        // no write since: the same delta, without reading their entries. A hole reported written
        // meanwhile (page 1 here) is read all the same.
        let hpages = |f: &dyn Fn(u64) -> bool| merge((0..N).filter(|&i| f(i)).map(|i| (hbase + i * page, hbase + (i + 1) * page)).collect());
        let known = hpages(&|i| !i.is_multiple_of(3));
        let hwanted = hpages(&|i| i < 100);
        let hours = [(hbase, hbase + N * page)];
        let entries = pagemap(&pm, path.as_ref(), hvma.start, hvma.end).unwrap();
        let whole = delta_of(hvma.start, &entries, runs_to_save(&hvma, &entries), &hwanted, None);
        for written in [Vec::new(), vec![(hbase + page, hbase + 2 * page)]] {
            let known_holes = sparse_delta(&pm, path.as_ref(), &hvma, &hwanted, None, Some((&known, &written))).unwrap();
            if crate::sys::uffd::scan_guards(&pm, hbase, hbase + page).is_err() {
                println!("SKIP: PAGEMAP_SCAN without PAGE_IS_GUARD (Linux 6.15+): known holes are read");
                break;
            }
            if thp_always() {
                break;
            }
            let d = known_holes.expect("known holes: not read whole");
            let mine = |r: &[(u64, u64)]| intersect(r, &hours);
            assert_eq!(mine(&d.runs), mine(&whole.runs), "runs to copy");
            assert_eq!(mine(&d.absent), mine(&whole.absent), "absent runs");
            assert_eq!(mine(&d.absent), known, "every hole absent");
            assert_eq!(mine(&d.guards), mine(&whole.guards), "guard runs");
        }
        drop(holed);
        drop(buf);
    }
}
