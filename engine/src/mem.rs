//! Memory of a process: the mapping table and the pages that have to be saved.
//!
//! Which pages are saved is read from `/proc/PID/pagemap` (bit 63 present, 62 swapped, 61
//! file-backed or shared):
//! - private anonymous mappings (heap, stacks): every present or swapped page;
//! - private file mappings (the binary, libraries): only pages that were written (present and no
//!   longer file pages), so unchanged code and data are read back from the file on restore;
//! - shared anonymous mappings: every present or swapped page;
//! - shared file mappings: nothing (the file holds the data);
//! - `[vdso]`, `[vvar]`: nothing; restore maps this kernel's vDSO at the saved address
//!   (`arch_prctl(ARCH_MAP_VDSO_64)`), so clock calls keep working.
//!
//! Restore recreates each mapping at its address with `mmap(MAP_FIXED)` injected into the new
//! process, then writes the saved pages through `/proc/PID/mem` (which also writes read-only
//! mappings, making private copies of file pages as the original had).
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use zap_chunker::{ChunkerConfig, PAGE_SIZE};
use zap_store::{clip, ChunkSink, Extent, ExtentData, Image, ImageKind, ImageStore};

use crate::inject::Injector;
use crate::maps::{read_maps, Mapping};
use crate::sys::proc as sysproc;
use crate::{EngineError, Result};

const WINDOW: u64 = 64 << 20;
const ARCH_MAP_VDSO_64: u64 = 0x2003;

/// What backs a mapping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Backing {
    /// Anonymous memory (heap, stack, mmap'd anonymous).
    Anon,
    /// A file, at `offset`.
    File {
        /// Path of the file.
        path: String,
        /// Offset of the mapping's first byte in the file.
        offset: u64,
    },
    /// The kernel's vDSO and its data pages (`[vdso]`, `[vvar]`, `[vvar_vclock]`).
    Vdso,
    /// `[vsyscall]`: fixed by the kernel, nothing to restore.
    Vsyscall,
    /// Shared anonymous memory (`MAP_SHARED|MAP_ANONYMOUS`, shown as `/dev/zero (deleted)`): a
    /// kernel shmem object that processes forked after the mapping share.
    Shmem {
        /// Inode of the shmem object: mappings with the same inode share memory.
        ino: u64,
        /// Offset of the mapping's first byte in the object.
        offset: u64,
    },
    /// A System V shared memory segment (`/SYSV<key> (deleted)`), attached with `shmat`. Its
    /// contents are saved once, with the IPC namespace ([`crate::ipc`]), not per process.
    SysvShm {
        /// The segment id (the inode number /proc/PID/maps shows).
        shmid: i32,
    },
}

/// One mapping of the saved process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmaState {
    /// First address.
    pub start: u64,
    /// One past the last.
    pub end: u64,
    /// PROT_* bits.
    pub prot: u32,
    /// MAP_SHARED rather than MAP_PRIVATE.
    pub shared: bool,
    /// Grows down (a stack).
    pub growsdown: bool,
    /// Backing.
    pub backing: Backing,
    /// Name in /proc/PID/maps (`[heap]`, `[stack]`, a path...).
    pub name: String,
    /// Name of the image holding its saved pages, if any.
    pub image: Option<String>,
    /// Registered for userfaultfd write-protect tracking now (smaps `uw`); not saved.
    #[serde(skip)]
    pub uffd_wp: bool,
}

fn prot_of(perms: &str) -> u32 {
    let b = perms.as_bytes();
    let mut p = 0;
    if b.first() == Some(&b'r') {
        p |= libc::PROT_READ;
    }
    if b.get(1) == Some(&b'w') {
        p |= libc::PROT_WRITE;
    }
    if b.get(2) == Some(&b'x') {
        p |= libc::PROT_EXEC;
    }
    p as u32
}

/// VmFlags of every mapping, from /proc/PID/smaps, in maps order.
fn vm_flags(pid: i32) -> Result<Vec<(u64, Vec<String>)>> {
    let path = format!("/proc/{pid}/smaps");
    let text = std::fs::read_to_string(&path).map_err(|e| EngineError::io("read", path.as_ref(), e))?;
    let mut out = Vec::new();
    let mut start = None;
    for line in text.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(s) = start.take() {
                out.push((s, flags.split_whitespace().map(String::from).collect()));
            }
        } else if let Some((range, _)) = line.split_once(' ') {
            if let Some((s, _)) = range.split_once('-') {
                if let Ok(s) = u64::from_str_radix(s, 16) {
                    if !line.contains(':') || line.split_whitespace().count() >= 5 {
                        start = Some(s);
                    }
                }
            }
        }
    }
    Ok(out)
}

fn classify(pid: i32, m: &Mapping) -> Result<Backing> {
    Ok(match m.path.as_str() {
        "[vdso]" | "[vvar]" | "[vvar_vclock]" => Backing::Vdso,
        "[vsyscall]" => Backing::Vsyscall,
        "" | "[heap]" | "[stack]" => Backing::Anon,
        // Shared anonymous memory is a shmem file the kernel names this way.
        p if m.shared() && (p == "/dev/zero (deleted)" || p.starts_with("[anon_shmem:")) => {
            Backing::Shmem { ino: m.inode, offset: m.offset }
        }
        p if p.starts_with("[anon:") || p.starts_with("[anon_shmem:") => Backing::Anon,
        "/dev/zero (deleted)" => Backing::Anon,
        p if p.starts_with('[') => {
            return Err(EngineError::Proc { pid, detail: format!("mapping {:#x} {p}: unsupported special mapping", m.start) })
        }
        p if p.starts_with("/SYSV") && m.offset == 0 => Backing::SysvShm { shmid: m.inode as i32 },
        p if p.ends_with(" (deleted)") || p.starts_with("/memfd:") || p.starts_with("/SYSV") => {
            return Err(EngineError::Proc {
                pid,
                detail: format!(
                    "mapping {:#x} {p}: mappings of deleted files, memfds and partial System V segments are not supported yet",
                    m.start
                ),
            })
        }
        "/dev/zero" => Backing::Anon,
        p => Backing::File { path: p.to_string(), offset: m.offset },
    })
}

/// The mapping table of a stopped process.
pub fn save_layout(pid: i32) -> Result<Vec<VmaState>> {
    let maps = read_maps(pid)?;
    let flags = vm_flags(pid)?;
    maps.iter()
        .map(|m| {
            let vm = flags.iter().find(|(s, _)| *s == m.start).map(|(_, f)| f.as_slice()).unwrap_or_default();
            let growsdown = vm.iter().any(|x| x == "gd");
            let uffd_wp = vm.iter().any(|x| x == "uw");
            Ok(VmaState {
                start: m.start,
                end: m.end,
                prot: prot_of(&m.perms),
                shared: m.shared(),
                growsdown,
                backing: classify(pid, m)?,
                name: m.path.clone(),
                image: None,
                uffd_wp,
            })
        })
        .collect()
}

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

/// Which pages of `vma` must be saved, as runs of (start, end).
fn runs_to_save(vma: &VmaState, entries: &[u64]) -> Vec<(u64, u64)> {
    let keep = |e: u64| match (&vma.backing, vma.shared) {
        (Backing::Vdso | Backing::Vsyscall | Backing::SysvShm { .. }, _) => false,
        (Backing::File { .. }, true) => false,
        (Backing::File { .. }, false) => e & PM_SWAPPED != 0 || (e & PM_PRESENT != 0 && e & PM_FILE == 0),
        (Backing::Anon | Backing::Shmem { .. }, _) => e & (PM_PRESENT | PM_SWAPPED) != 0,
    };
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (i, &e) in entries.iter().enumerate() {
        if keep(e) {
            let a = vma.start + (i * PAGE_SIZE) as u64;
            match runs.last_mut() {
                Some(r) if r.1 == a => r.1 = a + PAGE_SIZE as u64,
                _ => runs.push((a, a + PAGE_SIZE as u64)),
            }
        }
    }
    runs
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
/// ([`store_pages`]).
pub fn copy_pages(pid: i32, vmas: &[VmaState]) -> Result<PageCopy> {
    copy_pages_since(pid, vmas, None)
}

/// Like [`copy_pages`], but with what a dirty-page tracker reported since the parent checkpoint:
/// a private anonymous mapping that was tracked, wholly or in part, is saved as a delta on the
/// parent (the written pages of its tracked parts, every page of its untracked parts, and its
/// pages that are not present now as zero); every other mapping whole.
pub fn copy_pages_since(pid: i32, vmas: &[VmaState], dirty: Option<&crate::dirty::Dirty>) -> Result<PageCopy> {
    let mut plan = plan_pages_since(pid, vmas, dirty)?;
    let planned = std::mem::take(&mut plan.planned);
    let mem_path = format!("/proc/{pid}/mem");
    let mem = File::open(&mem_path).map_err(|e| EngineError::io("open", mem_path.as_ref(), e))?;
    let mut i = 0;
    while i < planned.len() {
        let idx = planned[i].0;
        let mut j = i;
        while j < planned.len() && planned[j].0 == idx {
            j += 1;
        }
        read_runs(pid, &mem, &vmas[idx], idx, &planned[i..j], &mut plan)?;
        i = j;
    }
    Ok(plan)
}

/// Like [`copy_pages_since`], but copies nothing yet: the runs to save are left in the returned
/// [`PageCopy`] for the dump pipeline to read while it stores them. The process must stay
/// stopped until they are stored.
pub fn plan_pages_since(pid: i32, vmas: &[VmaState], dirty: Option<&crate::dirty::Dirty>) -> Result<PageCopy> {
    let pm_path = format!("/proc/{pid}/pagemap");
    let pm = File::open(&pm_path).map_err(|e| EngineError::io("open", pm_path.as_ref(), e))?;
    let mut copy = PageCopy { runs: Vec::new(), planned: Vec::new(), pid, bytes: 0, delta: Default::default() };
    for (idx, vma) in vmas.iter().enumerate() {
        if matches!(vma.backing, Backing::Vdso | Backing::Vsyscall | Backing::SysvShm { .. }) {
            continue;
        }
        let entries = pagemap(&pm, pm_path.as_ref(), vma.start, vma.end)?;
        let mut runs = runs_to_save(vma, &entries);
        let tracked: Vec<(u64, u64)> = match dirty {
            Some(d) if vma.backing == Backing::Anon && !vma.shared => intersect(&[(vma.start, vma.end)], &d.tracked),
            _ => Vec::new(),
        };
        if let (Some(d), false) = (dirty, tracked.is_empty()) {
            // Tracked parts: only written pages; untracked parts: every page. Pages not present
            // now are zero, wherever they are (laid over the parent, they hide what it held).
            let mut wanted = intersect(&tracked, &d.written);
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
            wanted.sort_unstable();
            runs = intersect(&runs, &wanted);
            let mut absent: Vec<(u64, u64)> = Vec::new();
            for (i, &e) in entries.iter().enumerate() {
                if e & (PM_PRESENT | PM_SWAPPED) == 0 {
                    let a = vma.start + (i * PAGE_SIZE) as u64;
                    match absent.last_mut() {
                        Some(r) if r.1 == a => r.1 = a + PAGE_SIZE as u64,
                        _ => absent.push((a, a + PAGE_SIZE as u64)),
                    }
                }
            }
            copy.delta.insert(idx, absent);
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

/// Shared anonymous memory already recreated by processes restored together: shmem inode ->
/// (vpid of the process that created it, the address range it is mapped at there).
#[derive(Default)]
pub struct ShmContext {
    owners: std::collections::HashMap<u64, (i32, u64, u64)>,
}

/// Recreates the mapping table in the process being restored (`vpid`, whose address space holds
/// nothing but the injection trampoline). Shared anonymous memory that another process of the
/// group recreated already (`shm`) is mapped from that process's `/proc/VPID/map_files` entry
/// (the restoring process's /proc must be of its own PID namespace), so it is shared again.
/// Returns, per mapping, whether its saved pages still have to be written ([`restore_pages`]).
pub fn restore_layout(inj: &mut Injector, vpid: i32, vmas: &[VmaState], shm: &mut ShmContext) -> Result<Vec<bool>> {
    let mut write = vec![true; vmas.len()];
    // The vDSO block ([vvar], [vvar_vclock], [vdso]) goes first, at its saved start.
    if let Some(v) = vmas.iter().find(|v| v.backing == Backing::Vdso) {
        inj.call("arch_prctl(ARCH_MAP_VDSO_64)", libc::SYS_arch_prctl, [ARCH_MAP_VDSO_64, v.start, 0, 0, 0, 0])?;
    }
    for (i, v) in vmas.iter().enumerate() {
        let len = v.end - v.start;
        let prot = u64::from(v.prot);
        let share = if v.shared { libc::MAP_SHARED } else { libc::MAP_PRIVATE };
        let grows = if v.growsdown { libc::MAP_GROWSDOWN } else { 0 };
        match &v.backing {
            Backing::Vdso | Backing::Vsyscall => {}
            Backing::Anon => {
                let flags = (share | libc::MAP_ANONYMOUS | libc::MAP_FIXED | grows) as u64;
                inj.call("mmap anonymous", libc::SYS_mmap, [v.start, len, prot, flags, u64::MAX, 0])?;
            }
            Backing::SysvShm { shmid } => {
                let mut flags = 0;
                if v.prot & libc::PROT_WRITE as u32 == 0 {
                    flags |= libc::SHM_RDONLY;
                }
                if v.prot & libc::PROT_EXEC as u32 != 0 {
                    flags |= libc::SHM_EXEC;
                }
                let at = inj
                    .call("shmat", libc::SYS_shmat, [*shmid as u64, v.start, flags as u64, 0, 0, 0])
                    .map_err(|e| EngineError::Proc { pid: vpid, detail: format!("attach shared memory segment {shmid} at {:#x}: {e}", v.start) })?;
                if at != v.start {
                    return Err(EngineError::Proc { pid: vpid, detail: format!("segment {shmid} attached at {at:#x}, not {:#x}", v.start) });
                }
                write[i] = false;
            }
            Backing::Shmem { ino, offset } => match shm.owners.get(ino) {
                Some(&(owner, ostart, oend)) if owner != vpid => {
                    let path = format!("/proc/{owner}/map_files/{ostart:x}-{oend:x}");
                    let scratch = inj.put_cstr(path.as_bytes())?;
                    let fd = inj
                        .call("open shared memory", libc::SYS_open, [scratch, (libc::O_RDWR | libc::O_CLOEXEC) as u64, 0, 0, 0, 0])
                        .map_err(|e| EngineError::Proc { pid: vpid, detail: format!("open {path} (shared memory of pid {owner}): {e}") })?;
                    let flags = (libc::MAP_SHARED | libc::MAP_FIXED | grows) as u64;
                    let r = inj.call("mmap shared memory", libc::SYS_mmap, [v.start, len, prot, flags, fd, *offset]);
                    inj.call("close shared memory", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
                    r.map_err(|e| EngineError::Proc { pid: vpid, detail: format!("map {path} at {:#x}: {e}", v.start) })?;
                    write[i] = false;
                }
                _ => {
                    let flags = (libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_FIXED | grows) as u64;
                    inj.call("mmap shared anonymous", libc::SYS_mmap, [v.start, len, prot, flags, u64::MAX, 0])?;
                    shm.owners.entry(*ino).or_insert((vpid, v.start, v.end));
                }
            },
            Backing::File { path, offset } => {
                let scratch = inj.put_cstr(path.as_bytes())?;
                let mode = if v.shared && v.prot & libc::PROT_WRITE as u32 != 0 { libc::O_RDWR } else { libc::O_RDONLY };
                let fd = inj.call("open mapped file", libc::SYS_open, [scratch, (mode | libc::O_CLOEXEC) as u64, 0, 0, 0, 0])?;
                let flags = (share | libc::MAP_FIXED | grows) as u64;
                let r = inj.call("mmap file", libc::SYS_mmap, [v.start, len, prot, flags, fd, *offset]);
                inj.call("close mapped file", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
                r.map_err(|e| EngineError::Proc { pid: 0, detail: format!("map {path} at {:#x}: {e}", v.start) })?;
            }
        }
    }
    Ok(write)
}

/// Restore writes go in windows of this size, several at once.
const RESTORE_WINDOW: u64 = 8 << 20;

/// Writes the saved pages into the restored process. Zero extents and zero pages of anonymous
/// memory are skipped (fresh anonymous memory is zero); over file pages they are written.
/// Windows are rebuilt from the store and written in parallel ([`crate::pipeline::restore`]).
pub fn restore_pages<S: ImageStore>(store: &S, inj: &Injector, vmas: &[VmaState], write: &[bool], images: &[Image]) -> Result<u64> {
    use crate::pipeline::restore::{write_windows, Window};
    let mut windows: Vec<Window> = Vec::new();
    for (v, _) in vmas.iter().zip(write).filter(|(_, w)| **w) {
        let Some(name) = &v.image else { continue };
        let img = images.iter().find(|i| &i.name == name).ok_or_else(|| EngineError::Proc {
            pid: 0,
            detail: format!("checkpoint lacks image {name} for mapping {:#x}", v.start),
        })?;
        let anon = matches!(v.backing, Backing::Anon | Backing::Shmem { .. });
        // Pieces of at most one window, then runs of contiguous pieces of at most one window.
        let mut pieces: Vec<Extent> = Vec::new();
        for e in img.extents.iter().filter(|e| !(anon && e.data == ExtentData::Zero)) {
            let mut pos = e.start;
            while pos < e.end() {
                let end = (pos + RESTORE_WINDOW).min(e.end());
                pieces.extend(clip(std::slice::from_ref(e), pos, end));
                pos = end;
            }
        }
        let mut i = 0;
        while i < pieces.len() {
            let start = pieces[i].start;
            let mut j = i;
            while j + 1 < pieces.len()
                && pieces[j + 1].start == pieces[j].end()
                && pieces[j + 1].end() - start <= RESTORE_WINDOW
            {
                j += 1;
            }
            windows.push(Window { extents: pieces[i..=j].to_vec(), skip_zero: anon });
            i = j + 1;
        }
    }
    write_windows(store, inj, &windows)
}

/// Fails when the mappings attach a System V shared memory segment: such segments are saved
/// with their IPC namespace, which only a pod checkpoint does.
pub fn refuse_sysv_outside_pod(pid: i32, vmas: &[VmaState]) -> Result<()> {
    match vmas.iter().find_map(|v| if let Backing::SysvShm { shmid } = v.backing { Some((shmid, v.start)) } else { None }) {
        Some((shmid, start)) => Err(EngineError::Proc {
            pid,
            detail: format!(
                "mapping {start:#x} attaches System V shared memory segment {shmid}: checkpoint its pod (zap checkpoint NAME), which saves the IPC namespace"
            ),
        }),
        None => Ok(()),
    }
}
