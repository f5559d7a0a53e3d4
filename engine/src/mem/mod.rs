//! Memory of a process: the mapping table and the pages that have to be saved.
//!
//! Which pages are saved is read from `/proc/PID/pagemap` (bit 63 present, 62 swapped, 61
//! file-backed or shared, 58 guard page):
//! - private anonymous mappings (heap, stacks): every present or swapped page, but those still
//!   shared copy-on-write with the parent process when it is saved too ([`cow`]);
//! - private file mappings (the binary, libraries): only pages that were written (present and no
//!   longer file pages), so unchanged code and data are read back from the file on restore;
//! - shared anonymous mappings: every page their shmem object holds (`SEEK_DATA` on it through
//!   `/proc/PID/map_files`), also those only other processes touched, or that were written by
//!   a process that has exited since; in a group checkpoint (and a migration's round) a mapping
//!   wholly inside what processes saved before it map of the object is left to them, and a
//!   restore writes each process's part into the one object its first restored process made.
//!   Never tracked by the dirty tracker (it sees page tables, not the object): saved whole at
//!   each checkpoint;
//! - shared file mappings: nothing (the file holds the data);
//! - AIO rings: every page, with the kernel's position in them ([`aio`]);
//! - `[vdso]`, `[vvar]`: nothing; restore maps this kernel's vDSO at the saved address
//!   (`arch_prctl(ARCH_MAP_VDSO_64)`), so clock calls keep working;
//! - guard pages (`MADV_GUARD_INSTALL`): no page, recorded as runs and installed again;
//! - PTE markers (swap type 31: the dirty tracker's write-protection of pages never written,
//!   which pagemap shows as swapped): no page, read as a hole, so a mapping that is new since the
//!   last checkpoint costs what it holds, not its size.
//!
//! A private anonymous mapping copied as a delta (a dirty tracker's report) reads the pagemap
//! only where it matters: one `PAGEMAP_SCAN` finds its pages that are not present, and only their
//! entries and those of the pages to copy are read (the rest is resident and unchanged), so its
//! cost follows what was written, not its size (the kernel's walk of the page tables aside).
//! Likewise [`layout_reusing`] takes a layout read earlier over when `/proc/PID/maps` shows it
//! unchanged, without reading `/proc/PID/smaps` (whose read walks every page table); such a
//! layout is checked with [`check_details`] while the process is still stopped (a migration), or
//! with [`check_taken`] against a read made after it went on ([`read_details`]: an incremental
//! pod checkpoint, which takes the layout read after the last checkpoint over).
//!
//! Each mapping also keeps its flags (smaps `VmFlags`: madvise advice, locks, `MAP_NORESERVE`,
//! seals), its protection key and, for hugetlb, its page size ([`flags`]). Refused up front,
//! naming the pid and the mapping: io_uring rings and other kernel objects mapped from an
//! `anon_inode`, special mappings other than the vDSO and `[vsyscall]`, and an AIO ring that is
//! not a context of the process itself.
//!
//! Restore recreates each mapping at its address with `mmap(MAP_FIXED)` injected into the new
//! process (hugetlb ones with `MAP_HUGETLB` and their page size: the machine must have free huge
//! pages, or the restore fails saying how many it needs), sets its advice and protection key,
//! then writes the saved pages through `/proc/PID/mem` (which also writes read-only mappings,
//! making private copies of file pages as the original had), then restores AIO rings, guard
//! pages, locks and `mlockall(MCL_FUTURE)`; what changes what `fork` copies, and seals, come last
//! ([`restore_late`]), once the process has made its children. The injector's scratch page is
//! placed in a gap of the saved layout ([`scratch_place`]) so no saved mapping lands on it.
pub mod aio;
pub mod cow;
pub mod flags;
mod pages;

use serde::{Deserialize, Serialize};

pub use flags::{MmModes, VmFlags};
pub use pages::{base_runs, copy_pages, copy_pages_since, full_scan, plan_pages_since, store_pages, CopyPlan, MemDumpFigures, PageCopy, ShmSaved};
use zap_store::{clip, Extent, ExtentData, Image, ImageStore};

use crate::inject::Injector;
use crate::maps::{read_maps, Mapping};
use crate::{EngineError, Result};

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
    /// The completion ring of an AIO context (`io_setup`, `/[aio] (deleted)`); its address is the
    /// context id the program holds ([`aio`]).
    Aio {
        /// Inode of the ring's file: a child made by `fork` maps the same one.
        ino: u64,
        /// The ring of a context of this process; false for a child's copy of its parent's ring
        /// (the mapping without the context), mapped again from the restored owner.
        own: bool,
    },
    /// A file deleted while mapped, or a memfd. The first mapping of the file in the process
    /// carries its contents; restore makes one copy per group ([`crate::files::make_copy`]) and
    /// maps it wherever the file was mapped, shared with the fds of the same file.
    Deleted {
        /// Its path before it was deleted (`/memfd:NAME` for a memfd).
        path: String,
        /// Device and inode: mappings and fds of the same file share one copy.
        file: (u64, u64),
        /// Offset of the mapping's first byte in the file.
        offset: u64,
        /// The file's contents, on the process's first mapping of it.
        contents: Option<crate::files::FileContents>,
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
    /// Flags restore sets again (smaps `VmFlags`, see [`flags`]).
    pub flags: VmFlags,
    /// Protection key (`pkey_mprotect`); 0 is the default key.
    pub pkey: u32,
    /// Page size of a hugetlb mapping (`MAP_HUGETLB`, hugetlbfs), bytes; 0 for normal pages.
    pub huge: u64,
    /// Runs of pages that were the very pages the parent process held at the same addresses
    /// (shared copy-on-write since a fork): not stored, inherited from the restored parent
    /// ([`cow`]).
    pub inherited: Vec<(u64, u64)>,
    /// Runs of guard pages (`MADV_GUARD_INSTALL`).
    pub guards: Vec<(u64, u64)>,
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
        // Hugetlb anonymous memory (MAP_HUGETLB): a file of the kernel's internal hugetlbfs.
        "/anon_hugepage (deleted)" if m.shared() => Backing::Shmem { ino: m.inode, offset: m.offset },
        "/anon_hugepage (deleted)" => Backing::Anon,
        "/[aio] (deleted)" if m.shared() && m.offset == 0 => Backing::Aio { ino: m.inode, own: true },
        "/[aio] (deleted)" => {
            return Err(EngineError::Proc { pid, detail: format!("mapping {:#x}-{:#x}: part of an AIO ring: not supported", m.start, m.end) })
        }
        p if p.starts_with("anon_inode:") => {
            let why = if p == "anon_inode:[io_uring]" {
                "io_uring rings cannot be checkpointed (the kernel offers no way to save or recreate their state)"
            } else {
                "mappings of kernel objects (anon_inode) are not supported"
            };
            return Err(EngineError::Proc { pid, detail: format!("mapping {:#x}-{:#x} {p}: {why}", m.start, m.end) });
        }
        p if p.starts_with('[') => {
            return Err(EngineError::Proc { pid, detail: format!("mapping {:#x} {p}: unsupported special mapping", m.start) })
        }
        p if p.starts_with("/SYSV") && m.offset == 0 => Backing::SysvShm { shmid: m.inode as i32 },
        p if (p.ends_with(" (deleted)") || p.starts_with("/memfd:")) && !p.starts_with("/SYSV") => {
            let path = p.strip_suffix(" (deleted)").unwrap_or(p).to_string();
            let map_file = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
            let file = std::fs::File::open(&map_file).map_err(|e| EngineError::io("open mapped deleted file", map_file.as_ref(), e))?;
            let meta = file.metadata().map_err(|e| EngineError::io("stat mapped deleted file", map_file.as_ref(), e))?;
            use std::os::unix::fs::MetadataExt;
            if meta.nlink() > 0 && !p.starts_with("/memfd:") {
                // Removed from this path but linked under another name: glibc's sem_open makes a
                // named semaphore's file under a temporary name, maps it and links it to the
                // semaphore's name, so its creator's mapping shows the temporary name deleted
                // while other processes map it by its name. It is that file, found by its inode
                // in the same directory; elsewhere it cannot be found, and is refused (a copy
                // would no longer be shared with the processes that map it by name).
                return match other_name(pid, &path, (meta.dev(), meta.ino())) {
                    Some(live) => Ok(Backing::File { path: live, offset: m.offset }),
                    None => Err(EngineError::Proc {
                        pid,
                        detail: format!(
                            "mapping {:#x} {p}: file removed from this path but still linked elsewhere ({} links; inode {}): not supported",
                            m.start,
                            meta.nlink(),
                            meta.ino()
                        ),
                    }),
                };
            }
            Backing::Deleted { path, file: (meta.dev(), meta.ino()), offset: m.offset, contents: None }
        }
        p if p.ends_with(" (deleted)") || p.starts_with("/memfd:") || p.starts_with("/SYSV") => {
            return Err(EngineError::Proc {
                pid,
                detail: format!(
                    "mapping {:#x} {p}: mappings of part of a System V segment are not supported",
                    m.start
                ),
            })
        }
        "/dev/zero" => Backing::Anon,
        p => Backing::File { path: p.to_string(), offset: m.offset },
    })
}

/// Another name of the file (device, inode) `file` in the directory of `path`, as process `pid`
/// sees its file system.
fn other_name(pid: i32, path: &str, file: (u64, u64)) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let dir = std::path::Path::new(path).parent()?.to_str()?;
    let entries = std::fs::read_dir(crate::files::seen_by(pid, dir)).ok()?;
    entries.flatten().find_map(|e| {
        let m = e.metadata().ok()?;
        ((m.dev(), m.ino()) == file).then(|| format!("{}/{}", dir.trim_end_matches('/'), e.file_name().to_string_lossy()))
    })
}

/// The mapping table of a stopped process. A deleted file mapped several times carries its
/// contents on its first mapping only.
pub fn save_layout(pid: i32) -> Result<Vec<VmaState>> {
    let mut vmas = layout_of(pid)?;
    read_deleted(pid, &mut vmas)?;
    Ok(vmas)
}

/// Reads the contents of the deleted files `vmas` map (once per file).
fn read_deleted(pid: i32, vmas: &mut [VmaState]) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for v in vmas {
        if let Backing::Deleted { file, contents, path, .. } = &mut v.backing {
            if seen.insert(*file) {
                let map_file = format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end);
                let f = std::fs::File::open(&map_file).map_err(|e| EngineError::io("open mapped deleted file", map_file.as_ref(), e))?;
                let read = crate::files::FileContents::read(&f, path);
                *contents = Some(read.map_err(|e| EngineError::Proc { pid, detail: format!("mapping {:#x} {}: {e}", v.start, v.name) })?);
            }
        }
    }
    Ok(())
}

/// Like [`save_layout`], but without reading `/proc/PID/smaps` (whose read walks the page tables
/// of every mapping: about 12 ms per GiB resident) when `/proc/PID/maps` shows every mapping as
/// it is in `known`, a layout of the same process read earlier with [`save_layout`]: what smaps
/// adds (flags, protection key, huge page size, `growsdown`, the tracker's registration) is then
/// taken from `known`. None when a mapping is new or differs in bounds, protection, sharing,
/// backing or name (the caller reads the layout whole). A flag changed on a whole mapping
/// without changing its bounds is not seen here: whoever sends such a layout checks it with
/// [`check_details`] before anything depends on it.
pub fn layout_reusing(pid: i32, known: &[VmaState]) -> Result<Option<Vec<VmaState>>> {
    let maps = read_maps(pid)?;
    let none = flags::SmapsEntry::default();
    let mut vmas = Vec::with_capacity(maps.len());
    for m in &maps {
        let mut v = vma_of(pid, m, &none)?;
        let Some(k) = known.iter().find(|k| k.start == v.start) else { return Ok(None) };
        if (k.end, k.prot, k.shared, &k.name) != (v.end, v.prot, v.shared, &v.name) || !same_backing(&k.backing, &v.backing) {
            return Ok(None);
        }
        (v.growsdown, v.huge, v.flags, v.pkey, v.uffd_wp) = (k.growsdown, k.huge, k.flags, k.pkey, k.uffd_wp);
        vmas.push(v);
    }
    read_deleted(pid, &mut vmas)?;
    Ok(Some(vmas))
}

/// The same backing, a deleted file's contents aside.
fn same_backing(a: &Backing, b: &Backing) -> bool {
    match (a, b) {
        (Backing::Deleted { path, file, offset, .. }, Backing::Deleted { path: p2, file: f2, offset: o2, .. }) => (path, file, offset) == (p2, f2, o2),
        _ => a == b,
    }
}

/// Checks that what `/proc/PID/smaps` shows now of the mappings `vmas` of the stopped process
/// `pid` (flags, protection key, huge page size, `growsdown`, the tracker's registration) is
/// what they say: the check of a layout made by [`layout_reusing`]. The error names the pid
/// and the first mapping that differs.
pub fn check_details(pid: i32, vmas: &[VmaState]) -> Result<()> {
    let smaps = flags::read_smaps(pid)?;
    for v in vmas {
        let Some(sm) = smaps.get(&v.start) else {
            return Err(EngineError::Proc { pid, detail: format!("mapping {:#x}-{:#x} {}: gone from /proc/{pid}/smaps", v.start, v.end, v.name) });
        };
        let now = details(sm, matches!(v.backing, Backing::Vdso | Backing::Vsyscall));
        let was = (v.growsdown, v.uffd_wp, v.huge, v.flags, v.pkey);
        if now != was {
            return Err(EngineError::Proc {
                pid,
                detail: format!(
                    "mapping {:#x}-{:#x} {}: its flags changed after its layout was read (growsdown, tracked, huge page, flags, key: {was:?} then, {now:?} now)",
                    v.start, v.end, v.name
                ),
            });
        }
    }
    Ok(())
}

/// The mapping table of process `pid` with what `/proc/PID/smaps` shows of each mapping (its
/// `uffd_wp` registration too), without the contents of deleted files: the layout a later
/// checkpoint of the same process, run as a separate command, takes over with
/// [`layout_reusing`] (a pod's tracker state keeps it between checkpoints).
pub fn read_details(pid: i32) -> Result<Vec<VmaState>> {
    layout_of(pid)
}

/// Checks a layout taken over with [`layout_reusing`] and used at a stop (`used`) against one
/// read with smaps afterwards (`now`, [`read_details`]), for a process that may have run in
/// between: every mapping of `used` still at its address must show the same flags, protection
/// key, huge page size and `growsdown`, and be registered with the tracker if `used` said so
/// (one registered since, by that stop's collection, is fine: it was saved whole). A mapping
/// gone since cannot be checked and is passed over. The error names the pid and the mapping.
pub fn check_taken(pid: i32, used: &[VmaState], now: &[VmaState]) -> Result<()> {
    for v in used {
        let Some(n) = now.iter().find(|n| n.start == v.start) else { continue };
        let was = (v.growsdown, v.huge, v.flags, v.pkey);
        let is = (n.growsdown, n.huge, n.flags, n.pkey);
        if was != is || (v.uffd_wp && !n.uffd_wp) {
            return Err(EngineError::Proc {
                pid,
                detail: format!(
                    "mapping {:#x}-{:#x} {}: its flags changed without a change in /proc/{pid}/maps (growsdown, huge page, flags, key: {was:?} taken over from the last checkpoint, {is:?} now; tracked {} then, {} now)",
                    v.start, v.end, v.name, v.uffd_wp, n.uffd_wp
                ),
            });
        }
    }
    Ok(())
}

/// What smaps adds to a mapping: (`growsdown`, registered with a write-protect userfaultfd,
/// hugetlb page size or 0, flags, protection key).
fn details(sm: &flags::SmapsEntry, special: bool) -> (bool, bool, u64, VmFlags, u32) {
    let vm = &sm.names;
    let growsdown = vm.iter().any(|x| x == "gd");
    let uffd_wp = vm.iter().any(|x| x == "uw");
    let huge = if vm.iter().any(|x| x == "ht") { sm.kernel_page } else { 0 };
    let flags = if special { VmFlags::default() } else { VmFlags::from_mnemonics(vm.iter().map(String::as_str)) };
    (growsdown, uffd_wp, huge, flags, sm.pkey)
}

fn layout_of(pid: i32) -> Result<Vec<VmaState>> {
    let maps = read_maps(pid)?;
    let smaps = flags::read_smaps(pid)?;
    let none = flags::SmapsEntry::default();
    maps.iter().map(|m| vma_of(pid, m, smaps.get(&m.start).unwrap_or(&none))).collect()
}

fn vma_of(pid: i32, m: &Mapping, sm: &flags::SmapsEntry) -> Result<VmaState> {
    let backing = classify(pid, m)?;
    let special = matches!(backing, Backing::Vdso | Backing::Vsyscall);
    let (growsdown, uffd_wp, huge, flags, pkey) = details(sm, special);
    if let (Backing::SysvShm { shmid }, true) = (&backing, huge != 0) {
        return Err(EngineError::Proc {
            pid,
            detail: format!(
                "mapping {:#x}-{:#x} attaches System V segment {shmid} of huge pages (SHM_HUGETLB): not supported (it would come back with normal pages)",
                m.start, m.end
            ),
        });
    }
    Ok(VmaState {
        start: m.start,
        end: m.end,
        prot: prot_of(&m.perms),
        shared: m.shared(),
        growsdown,
        backing,
        name: m.path.clone(),
        image: None,
        flags,
        pkey,
        huge,
        inherited: Vec::new(),
        guards: Vec::new(),
        uffd_wp,
    })
}

/// Shared anonymous memory already recreated by processes restored together: shmem inode ->
/// (vpid of the process that created it, the address range it is mapped at there).
#[derive(Default)]
pub struct ShmContext {
    owners: std::collections::HashMap<u64, (i32, u64, u64)>,
    /// Deleted files and memfds recreated so far: (device, inode) -> where they are mapped.
    deleted: std::collections::HashMap<(u64, u64), (i32, u64, u64)>,
}

/// Recreates the mapping table in the process being restored (`vpid`, whose address space holds
/// nothing but the injection trampoline and, for a child that inherits pages, the ranges of its
/// parent's mappings it keeps, see [`cow`]; `parent` is that parent's mapping table). Shared
/// anonymous memory that another process of the group recreated already (`shm`) is mapped from
/// that process's `/proc/VPID/map_files` entry (the restoring process's /proc must be of its own
/// PID namespace), so it is shared again. Flags are set as they were, but locks, seals and the
/// fork flags ([`restore_after_pages`], [`restore_late`]). Returns, per mapping, whether its
/// saved pages still have to be written ([`restore_pages`]).
pub fn restore_layout(inj: &mut Injector, vpid: i32, vmas: &[VmaState], shm: &mut ShmContext, parent: Option<&[VmaState]>) -> Result<Vec<bool>> {
    let mut write = vec![true; vmas.len()];
    // Protection keys before any mapping uses one; keys copied from the parent are given back.
    let mut inherited_keys: Vec<u32> = parent.unwrap_or(&[]).iter().filter(|p| flags::pkey_settable(p)).map(|p| p.pkey).collect();
    inherited_keys.sort_unstable();
    inherited_keys.dedup();
    if vmas.iter().any(flags::pkey_settable) || !inherited_keys.is_empty() {
        flags::restore_pkeys(inj, vpid, vmas, &inherited_keys)?;
    }
    // The vDSO block ([vvar], [vvar_vclock], [vdso]) goes first, at its saved start.
    if let Some(v) = vmas.iter().find(|v| v.backing == Backing::Vdso) {
        inj.call("arch_prctl(ARCH_MAP_VDSO_64)", libc::SYS_arch_prctl, [ARCH_MAP_VDSO_64, v.start, 0, 0, 0, 0])?;
    }
    for (i, v) in vmas.iter().enumerate() {
        let len = v.end - v.start;
        let prot = u64::from(v.prot);
        if let Backing::Aio { own: false, .. } = v.backing {
            // A copy of the parent's ring, copied again by fork from the restored parent.
            aio::check_copy(vpid, v, parent)?;
            write[i] = false;
            continue;
        }
        if !v.inherited.is_empty() {
            cow::adopt(inj, vpid, v, parent)?;
            continue;
        }
        let share = if v.shared { libc::MAP_SHARED } else { libc::MAP_PRIVATE };
        let grows = flags::mmap_extra(v) as i32;
        match &v.backing {
            Backing::Vdso | Backing::Vsyscall => {}
            Backing::Anon => {
                let flags = (share | libc::MAP_ANONYMOUS | libc::MAP_FIXED | grows) as u64;
                inj.call("mmap anonymous", libc::SYS_mmap, [v.start, len, prot, flags, u64::MAX, 0]).map_err(|e| mmap_err(vpid, v, e))?;
            }
            Backing::Aio { .. } => {
                aio::create(inj, vpid, v)?;
                write[i] = false;
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
                    // Its saved pages (those no process saved before it) go into the same object.
                }
                _ => {
                    let flags = (libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_FIXED | grows) as u64;
                    inj.call("mmap shared anonymous", libc::SYS_mmap, [v.start, len, prot, flags, u64::MAX, 0])
                        .map_err(|e| mmap_err(vpid, v, e))?;
                    shm.owners.entry(*ino).or_insert((vpid, v.start, v.end));
                }
            },
            Backing::Deleted { path, file, offset, contents } => {
                let writable = v.shared && v.prot & libc::PROT_WRITE as u32 != 0;
                let fd = match shm.deleted.get(file) {
                    // Another mapping of the same file, recreated already: share it.
                    Some(&(owner, s, e)) => {
                        let who = if owner == vpid { "self".to_string() } else { owner.to_string() };
                        let mode = if writable { libc::O_RDWR } else { libc::O_RDONLY };
                        crate::files::open_path(inj, &format!("/proc/{who}/map_files/{s:x}-{e:x}"), mode as u32)?
                    }
                    None => {
                        let c = contents.as_ref().ok_or_else(|| EngineError::Proc {
                            pid: vpid,
                            detail: format!("mapping {:#x} of deleted {path}: no saved contents", v.start),
                        })?;
                        let copy = crate::files::make_copy(inj, vpid, path, c)?;
                        if writable {
                            copy
                        } else {
                            // Mapped through a read-only open: the mapping keeps its file open,
                            // and a writable one would keep the copy from being an executable
                            // (PR_SET_MM_MAP's exe link, for a deleted executable).
                            let ro = crate::files::open_path(inj, &format!("/proc/self/fd/{copy}"), libc::O_RDONLY as u32)?;
                            inj.call("close copy", libc::SYS_close, [copy, 0, 0, 0, 0, 0])?;
                            ro
                        }
                    }
                };
                let flags = (share | libc::MAP_FIXED | grows) as u64;
                let r = inj.call("mmap deleted file", libc::SYS_mmap, [v.start, len, prot, flags, fd, *offset]);
                inj.call("close mapped file", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
                r.map_err(|e| EngineError::Proc { pid: vpid, detail: format!("map deleted {path} at {:#x}: {e}", v.start) })?;
                shm.deleted.entry(*file).or_insert((vpid, v.start, v.end));
            }
            Backing::File { path, offset } => {
                let scratch = inj.put_cstr(path.as_bytes())?;
                let mode = if v.shared && v.prot & libc::PROT_WRITE as u32 != 0 { libc::O_RDWR } else { libc::O_RDONLY };
                let fd = inj.call("open mapped file", libc::SYS_open, [scratch, (mode | libc::O_CLOEXEC) as u64, 0, 0, 0, 0])?;
                let flags = (share | libc::MAP_FIXED | grows) as u64;
                let r = inj.call("mmap file", libc::SYS_mmap, [v.start, len, prot, flags, fd, *offset]);
                inj.call("close mapped file", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
                r.map_err(|e| mmap_err(vpid, v, e))?;
            }
        }
        if !matches!(v.backing, Backing::Vdso | Backing::Vsyscall) {
            flags::apply_early(inj, vpid, v, v.start, len, VmFlags::default())?;
            if flags::pkey_settable(v) {
                flags::apply_pkey(inj, vpid, v, v.start, len)?;
            }
            restore_anon_name(inj, vpid, v)?;
        }
    }
    Ok(write)
}

fn mmap_err(vpid: i32, v: &VmaState, e: EngineError) -> EngineError {
    let hint = if v.huge != 0 {
        format!(
            " (a hugetlb mapping: it needs {} free huge pages of {} KiB, see /proc/sys/vm/nr_hugepages)",
            (v.end - v.start).div_ceil(v.huge),
            v.huge >> 10
        )
    } else {
        String::new()
    };
    EngineError::Proc { pid: vpid, detail: format!("map {:#x}-{:#x} {}: {e}{hint}", v.start, v.end, v.name) }
}

/// Names anonymous memory again (`[anon:NAME]`, `[anon_shmem:NAME]`: `PR_SET_VMA_ANON_NAME`).
fn restore_anon_name(inj: &mut Injector, vpid: i32, v: &VmaState) -> Result<()> {
    const PR_SET_VMA: u64 = 0x5356_4d41;
    const PR_SET_VMA_ANON_NAME: u64 = 0;
    let name = match (&v.backing, v.name.strip_suffix(']')) {
        (Backing::Anon, Some(n)) => n.strip_prefix("[anon:"),
        (Backing::Shmem { .. }, Some(n)) => n.strip_prefix("[anon_shmem:"),
        _ => None,
    };
    let Some(name) = name else { return Ok(()) };
    let ptr = inj.put_cstr(name.as_bytes())?;
    inj.call("prctl(PR_SET_VMA_ANON_NAME)", libc::SYS_prctl, [PR_SET_VMA, PR_SET_VMA_ANON_NAME, v.start, v.end - v.start, ptr, 0])
        .map(|_| ())
        .map_err(|e| EngineError::Proc { pid: vpid, detail: format!("name mapping {:#x} {:?} again: {e}", v.start, v.name) })
}

/// Once the pages are written (restore): the AIO rings' contents and kernel positions ([`aio`]),
/// guard pages, locks, and `mlockall(MCL_FUTURE)`.
pub fn restore_after_pages<S: ImageStore>(
    store: &S,
    inj: &mut Injector,
    vpid: i32,
    vmas: &[VmaState],
    images: &[Image],
    modes: &MmModes,
) -> Result<()> {
    const MADV_GUARD_INSTALL: u64 = 102;
    for v in vmas {
        if matches!(v.backing, Backing::Aio { own: true, .. }) {
            aio::restore_ring(store, inj, vpid, v, images)?;
        }
        for &(a, b) in &v.guards {
            inj.call("madvise(MADV_GUARD_INSTALL)", libc::SYS_madvise, [a, b - a, MADV_GUARD_INSTALL, 0, 0, 0]).map_err(|e| {
                EngineError::Proc { pid: vpid, detail: format!("install guard pages {a:#x}-{b:#x} again (Linux 6.13+): {e}") }
            })?;
        }
        flags::apply_lock(inj, vpid, v)?;
    }
    modes.restore_lock(inj, vpid)
}

/// Once the restored process has made its children: the flags that change what `fork` copies
/// (`MADV_DONTFORK`, `MADV_WIPEONFORK`) and seals.
pub fn restore_late(inj: &mut Injector, vpid: i32, vmas: &[VmaState]) -> Result<()> {
    for v in vmas.iter().filter(|v| !matches!(v.backing, Backing::Vdso | Backing::Vsyscall)) {
        flags::apply_late(inj, vpid, v)?;
    }
    Ok(())
}

/// A free place of `len` bytes for the injector's scratch area in the restored layout `vmas`
/// (sorted), away from the trampoline page at `tramp`: the first gap that holds it.
pub fn scratch_place(vmas: &[VmaState], tramp: u64, len: u64) -> u64 {
    const LOW: u64 = 0x10000;
    let mut taken: Vec<(u64, u64)> = vmas.iter().map(|v| (v.start, v.end)).collect();
    taken.push((tramp, tramp + 4096));
    taken.sort_unstable();
    let mut pos = LOW;
    for (a, b) in taken {
        if a >= pos + len {
            break;
        }
        pos = pos.max(b);
    }
    pos
}

/// Restore writes go in windows of this size, several at once.
const RESTORE_WINDOW: u64 = 8 << 20;

/// Writes the saved pages into the restored process. Zero extents and zero pages of anonymous
/// memory are skipped (fresh anonymous memory is zero); over file pages they are written.
/// Windows are rebuilt from the store and written in parallel ([`crate::pipeline::restore`]).
pub fn restore_pages<S: ImageStore>(store: &S, inj: &Injector, vmas: &[VmaState], write: &[bool], images: &[Image]) -> Result<u64> {
    use crate::pipeline::restore::{write_windows, Window};
    let by_name: std::collections::HashMap<&str, &Image> = images.iter().map(|i| (i.name.as_str(), i)).collect();
    let mut windows: Vec<Window> = Vec::new();
    for (v, _) in vmas.iter().zip(write).filter(|(_, w)| **w) {
        let Some(name) = &v.image else { continue };
        let img = by_name.get(name.as_str()).ok_or_else(|| EngineError::Proc {
            pid: 0,
            detail: format!("checkpoint lacks image {name} for mapping {:#x}", v.start),
        })?;
        let anon = matches!(v.backing, Backing::Anon | Backing::Shmem { .. });
        // Pages inherited from the parent process are there already.
        let own = if v.inherited.is_empty() { img.extents.clone() } else { pages::within(&img.extents, &cow::outside(&v.inherited, v.start, v.end)) };
        // Pieces of at most one window, then runs of contiguous pieces of at most one window.
        let mut pieces: Vec<Extent> = Vec::new();
        for e in own.iter().filter(|e| !(anon && e.data == ExtentData::Zero)) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A layout taken over from an earlier read is the same as a fresh one while nothing
    /// changed; a flag that differs from what smaps shows is caught by the check, naming the
    /// mapping; a mapping that moved makes the layout be read whole.
    #[test]
    fn reused_layout_is_checked_against_smaps() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
        let pid = child.id() as i32;
        // Wait until the program sleeps: its exec is done and the dynamic loader has mapped its
        // libraries (the layout changes until then). `/proc/PID/syscall` names the system call
        // it is blocked in: clock_nanosleep (230) or nanosleep (35).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let sleeping = || {
            std::fs::read_to_string(format!("/proc/{pid}/syscall"))
                .map(|s| matches!(s.split_whitespace().next(), Some("230") | Some("35")))
                .unwrap_or(false)
        };
        while !sleeping() {
            assert!(std::time::Instant::now() < deadline, "sleep did not start sleeping");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let fresh = save_layout(pid).unwrap();
        let reused = layout_reusing(pid, &fresh).unwrap().expect("nothing changed");
        assert_eq!(reused, fresh);
        check_details(pid, &reused).unwrap();
        let mut wrong = fresh.clone();
        let i = wrong.iter().position(|v| v.backing == Backing::Anon).expect("an anonymous mapping");
        wrong[i].flags = VmFlags(wrong[i].flags.0 ^ VmFlags::DONTDUMP);
        let taken = layout_reusing(pid, &wrong).unwrap().expect("maps unchanged");
        let err = check_details(pid, &taken).unwrap_err().to_string();
        assert!(err.contains(&format!("{:#x}", wrong[i].start)) && err.contains("flags changed"), "{err}");
        let mut moved = fresh.clone();
        moved[i].end += 4096;
        assert!(layout_reusing(pid, &moved).unwrap().is_none(), "a changed mapping is not taken over");
        let _ = child.kill();
        let _ = child.wait();
    }
}
