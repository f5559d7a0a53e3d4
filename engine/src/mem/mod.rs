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
mod pages;

use serde::{Deserialize, Serialize};

pub use pages::{copy_pages, copy_pages_since, plan_pages_since, store_pages, MemDumpFigures, PageCopy};
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
        p if (p.ends_with(" (deleted)") || p.starts_with("/memfd:")) && !p.starts_with("/SYSV") => {
            let path = p.strip_suffix(" (deleted)").unwrap_or(p).to_string();
            let map_file = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
            let file = std::fs::File::open(&map_file).map_err(|e| EngineError::io("open mapped deleted file", map_file.as_ref(), e))?;
            let meta = file.metadata().map_err(|e| EngineError::io("stat mapped deleted file", map_file.as_ref(), e))?;
            use std::os::unix::fs::MetadataExt;
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

/// The mapping table of a stopped process. A deleted file mapped several times carries its
/// contents on its first mapping only.
pub fn save_layout(pid: i32) -> Result<Vec<VmaState>> {
    let mut vmas = layout_of(pid)?;
    let mut seen = std::collections::HashSet::new();
    for v in &mut vmas {
        if let Backing::Deleted { file, contents, path, .. } = &mut v.backing {
            if seen.insert(*file) {
                let map_file = format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end);
                let f = std::fs::File::open(&map_file).map_err(|e| EngineError::io("open mapped deleted file", map_file.as_ref(), e))?;
                let read = crate::files::FileContents::read(&f, path);
                *contents = Some(read.map_err(|e| EngineError::Proc { pid, detail: format!("mapping {:#x} {}: {e}", v.start, v.name) })?);
            }
        }
    }
    Ok(vmas)
}

fn layout_of(pid: i32) -> Result<Vec<VmaState>> {
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

/// Shared anonymous memory already recreated by processes restored together: shmem inode ->
/// (vpid of the process that created it, the address range it is mapped at there).
#[derive(Default)]
pub struct ShmContext {
    owners: std::collections::HashMap<u64, (i32, u64, u64)>,
    /// Deleted files and memfds recreated so far: (device, inode) -> where they are mapped.
    deleted: std::collections::HashMap<(u64, u64), (i32, u64, u64)>,
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
                        crate::files::make_copy(inj, vpid, path, c)?
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
