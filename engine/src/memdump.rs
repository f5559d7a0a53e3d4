//! Memory images: store the readable memory of a live process and check it back.
//!
//! This is the memory half of a checkpoint on its own, used by `zap memdump` and the demo: the
//! process is frozen ([`crate::freeze`]), every readable mapping (except the kernel's `[vvar]` and
//! `[vsyscall]`) is read through `/proc/PID/mem` in windows, chunked and stored, and the manifest
//! records one image per mapping plus the mapping table. With `verify`, the image is read back
//! from the store while the process is still frozen and compared byte for byte with its memory.
//! Pages the kernel refuses to read (a file mapping past the end of its file) are left out of the
//! image as holes.
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use zap_chunker::{ChunkerConfig, PAGE_SIZE};
use zap_store::{
    materialize, store_run, CheckpointId, CheckpointSummary, ChunkSink, Image, ImageKind, ImageStore, Manifest,
};

use crate::freeze::Frozen;
use crate::maps::{read_maps, Mapping};
use crate::{EngineError, Result};

/// Read window: memory is read and chunked this many bytes at a time.
const WINDOW: u64 = 64 << 20;
/// Version of the engine state blob of a memory image.
const STATE_VERSION: u8 = 1;

/// What to do.
#[derive(Clone, Debug, Default)]
pub struct MemDumpOptions {
    /// Checkpoint name (defaults to the process's comm).
    pub name: Option<String>,
    /// Parent checkpoint to record.
    pub parent: Option<CheckpointId>,
    /// Read the image back and compare it with the frozen process.
    pub verify: bool,
    /// Chunker settings.
    pub chunker: ChunkerConfig,
}

/// What happened.
#[derive(Clone, Debug, Serialize)]
pub struct MemDumpReport {
    /// The committed checkpoint.
    pub summary: CheckpointSummary,
    /// Mappings stored.
    pub mappings: usize,
    /// Bytes read from the process.
    pub bytes_read: u64,
    /// Time the process was stopped, in ms.
    pub frozen_ms: f64,
    /// Time to read, chunk and commit, in ms.
    pub dump_ms: f64,
    /// Time to read the image back and compare, in ms (with `verify`).
    pub verify_ms: Option<f64>,
}

#[derive(Serialize, Deserialize)]
struct MemState {
    pid: i32,
    mappings: Vec<Mapping>,
}

/// Reads `[start, start + buf.len())` of the process into `buf`. Returns the sub-ranges actually
/// read (pages the kernel refuses are skipped).
fn read_range(mem: &File, path: &Path, start: u64, buf: &mut [u8]) -> Result<Vec<(u64, u64)>> {
    match mem.read_exact_at(buf, start) {
        Ok(()) => return Ok(vec![(start, start + buf.len() as u64)]),
        Err(e) if e.raw_os_error() == Some(libc::EIO) || e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(EngineError::io("read process memory", path, e)),
    }
    // Page by page, keeping what can be read.
    let mut ok: Vec<(u64, u64)> = Vec::new();
    for (i, page) in buf.chunks_mut(PAGE_SIZE).enumerate() {
        let addr = start + (i * PAGE_SIZE) as u64;
        if mem.read_exact_at(page, addr).is_ok() {
            match ok.last_mut() {
                Some(last) if last.1 == addr => last.1 = addr + page.len() as u64,
                _ => ok.push((addr, addr + page.len() as u64)),
            }
        }
    }
    Ok(ok)
}

fn image_name(m: &Mapping) -> String {
    format!("mem/{:x}-{:x} {}", m.start, m.end, m.path)
}

fn stored_mappings(pid: i32) -> Result<Vec<Mapping>> {
    Ok(read_maps(pid)?.into_iter().filter(|m| m.readable() && !m.is_special()).collect())
}

/// Freezes `pid`, stores its memory image as a checkpoint, and lets it run again.
pub fn dump_memory<S: ImageStore>(store: &S, pid: i32, opts: &MemDumpOptions) -> Result<MemDumpReport> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|s| s.trim().to_string()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            EngineError::Proc { pid, detail: "no such process".into() }
        } else {
            EngineError::io("read comm", Path::new(&format!("/proc/{pid}/comm")), e)
        }
    })?;
    let t0 = Instant::now();
    let frozen = Frozen::freeze(pid)?;
    let mem_path = format!("/proc/{pid}/mem");
    let mem = File::open(&mem_path).map_err(|e| EngineError::io("open process memory", Path::new(&mem_path), e))?;
    let mappings = stored_mappings(pid)?;
    let mut writer = store.writer()?;
    let mut manifest = Manifest::new(opts.name.clone().unwrap_or_else(|| comm.clone()), "memory");
    manifest.parent = opts.parent;
    manifest.labels.insert("pid".into(), pid.to_string());
    manifest.labels.insert("comm".into(), comm);
    let mut buf = Vec::new();
    let mut bytes_read = 0u64;
    for m in &mappings {
        let mut extents = Vec::new();
        let mut pos = m.start;
        while pos < m.end {
            let len = (m.end - pos).min(WINDOW);
            buf.resize(len as usize, 0);
            for (from, to) in read_range(&mem, Path::new(&mem_path), pos, &mut buf)? {
                let slice = &buf[(from - pos) as usize..(to - pos) as usize];
                bytes_read += slice.len() as u64;
                let (mut ext, _) = store_run(&mut writer, &opts.chunker, from, slice)?;
                extents.append(&mut ext);
            }
            pos += len;
        }
        manifest.images.push(Image { name: image_name(m), kind: ImageKind::Memory, extents });
    }
    let mut state = vec![STATE_VERSION];
    state.extend(postcard::to_stdvec(&MemState { pid, mappings: mappings.clone() }).expect("postcard encodes"));
    manifest.state = state;
    let summary = writer.commit(manifest)?;
    let dump_ms = t0.elapsed().as_secs_f64() * 1e3;
    let verify_ms = if opts.verify {
        let t = Instant::now();
        verify_frozen(store, &frozen, &mem, Path::new(&mem_path), &summary.id)?;
        Some(t.elapsed().as_secs_f64() * 1e3)
    } else {
        None
    };
    drop(frozen);
    let frozen_ms = t0.elapsed().as_secs_f64() * 1e3;
    Ok(MemDumpReport { summary, mappings: mappings.len(), bytes_read, frozen_ms, dump_ms, verify_ms })
}

/// Compares every image of checkpoint `id` with the memory of the frozen process.
fn verify_frozen<S: ImageStore>(store: &S, frozen: &Frozen, mem: &File, path: &Path, id: &CheckpointId) -> Result<()> {
    let pid = frozen.pid();
    let manifest = store.manifest(id)?;
    // The kernel writes each thread's rseq area (cpu id) whenever it returns to user space: those
    // bytes legitimately differ from any saved copy.
    let rseq: Vec<(u64, u64)> = frozen
        .threads()
        .iter()
        .filter_map(|&t| crate::sys::regs::get_rseq(t).ok())
        .filter(|r| r.rseq_abi_pointer != 0)
        .map(|r| (r.rseq_abi_pointer, r.rseq_abi_pointer + u64::from(r.rseq_abi_size.max(32))))
        .collect();
    let mut want = Vec::new();
    let mut live = Vec::new();
    for img in &manifest.images {
        for ext in &img.extents {
            // Compare extent by extent, in windows, so memory use stays bounded.
            let mut pos = ext.start;
            while pos < ext.end() {
                let len = (ext.end() - pos).min(WINDOW);
                want.resize(len as usize, 0);
                live.resize(len as usize, 0);
                let clipped = zap_store::clip(std::slice::from_ref(ext), pos, pos + len);
                materialize(store, &clipped, pos, &mut want)?;
                mem.read_exact_at(&mut live, pos).map_err(|e| EngineError::io("re-read process memory", path, e))?;
                let differs = want.iter().zip(&live).enumerate().filter(|(_, (a, b))| a != b).map(|(i, _)| pos + i as u64);
                for addr in differs {
                    if !rseq.iter().any(|&(from, to)| addr >= from && addr < to) {
                        return Err(EngineError::Mismatch { pid, addr, mapping: img.name.clone() });
                    }
                }
                pos += len;
            }
        }
    }
    Ok(())
}

/// Freezes `pid` and compares its memory with the memory images of checkpoint `id` (a process
/// or memory checkpoint), byte for byte. Used to check restores.
pub fn verify_against<S: ImageStore>(store: &S, pid: i32, id: &CheckpointId) -> Result<()> {
    let frozen = Frozen::freeze(pid)?;
    let mem_path = format!("/proc/{pid}/mem");
    let mem = File::open(&mem_path).map_err(|e| EngineError::io("open process memory", Path::new(&mem_path), e))?;
    verify_frozen(store, &frozen, &mem, Path::new(&mem_path), id)
}
