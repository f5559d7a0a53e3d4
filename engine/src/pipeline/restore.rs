//! The restore pipeline: saved pages into a process being restored.
//!
//! Windows of contiguous extents (at most 8 MiB each, built by [`crate::mem::restore_pages`])
//! are spread over rayon's threads; each reads its chunks (in place from the mapped pack, zstd
//! decode, BLAKE3 check: a sparse chunk is checked on its stored form and its pages are written
//! from the mapping itself, never copied or expanded) and writes them with one
//! `process_vm_writev` of up to 1024 pieces, leaving out zero pages where the
//! memory is fresh anonymous memory (already zero). Pieces `process_vm_writev` cannot write (a
//! read-only mapping) go through `/proc/PID/mem`, which writes any mapping.
use rayon::prelude::*;
use zap_store::{ChunkBytes, Extent, ExtentData, ImageStore};

use crate::inject::Injector;
use crate::sys::proc as sysproc;
use crate::{EngineError, Result};

/// A window to write: extents in address order, and whether zero pages may be skipped.
pub struct Window {
    /// The extents.
    pub extents: Vec<Extent>,
    /// The memory is fresh anonymous memory: zero pages need no write.
    pub skip_zero: bool,
}

/// Writes every window into the process `inj` drives; returns the bytes the windows cover.
pub fn write_windows<S: ImageStore>(store: &S, inj: &Injector, windows: &[Window]) -> Result<u64> {
    windows.par_iter().map(|w| write_window(store, inj, w)).sum()
}

fn write_window<S: ImageStore>(store: &S, inj: &Injector, w: &Window) -> Result<u64> {
    let zeros = vec![0u8; zap_chunker::PAGE_SIZE];
    // Chunks first (each read once per window, looked up in the index together), then the
    // pieces that borrow them.
    let mut ids: Vec<zap_store::ChunkId> = Vec::new();
    for e in &w.extents {
        if let ExtentData::Chunk { id, .. } = e.data {
            if ids.last() != Some(&id) {
                ids.push(id);
            }
        }
    }
    let read = store.read_chunks_bytes(&ids)?;
    let chunks: Vec<(zap_store::ChunkId, ChunkBytes)> = ids.into_iter().zip(read).collect();
    let mut pieces: Vec<(u64, std::borrow::Cow<'_, [u8]>)> = Vec::new();
    let mut k = 0usize;
    for e in &w.extents {
        match e.data {
            ExtentData::Zero if w.skip_zero => {}
            ExtentData::Zero => {
                let mut pos = e.start;
                while pos < e.end() {
                    let n = (e.end() - pos).min(zeros.len() as u64) as usize;
                    pieces.push((pos, std::borrow::Cow::Borrowed(&zeros[..n])));
                    pos += n as u64;
                }
            }
            ExtentData::Chunk { id, offset } => {
                while chunks[k].0 != id {
                    k += 1;
                }
                let bytes = &chunks[k].1;
                let (from, to) = (offset as usize, offset as usize + e.len as usize);
                if to > bytes.len() {
                    return Err(EngineError::Store(zap_store::StoreError::Corrupt {
                        what: format!("extent at {:#x}", e.start),
                        detail: format!("wants bytes {from}..{to} of chunk {id}, which has {}", bytes.len()),
                    }));
                }
                for (off, b) in bytes.pieces(from, to, w.skip_zero) {
                    pieces.push((e.start + (off - from) as u64, b));
                }
            }
        }
    }
    let borrowed: Vec<(u64, &[u8])> = pieces.iter().map(|(a, b)| (*a, b.as_ref())).collect();
    let total: usize = borrowed.iter().map(|(_, b)| b.len()).sum();
    let mut done = sysproc::vm_write(inj.tid(), &borrowed).unwrap_or(0);
    if done < total {
        // From the first piece not written whole, through /proc/PID/mem.
        for (addr, b) in &borrowed {
            if done >= b.len() {
                done -= b.len();
                continue;
            }
            inj.write_mem(addr + done as u64, &b[done..])?;
            done = 0;
        }
    }
    Ok(w.extents.last().map(|l| l.end()).unwrap_or(0) - w.extents.first().map(|f| f.start).unwrap_or(0))
}
