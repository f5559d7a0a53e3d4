//! The restore pipeline: saved pages into a process being restored.
//!
//! Windows of contiguous extents (at most 8 MiB each, built by [`crate::mem::restore_pages`])
//! are spread over rayon's threads; each goes in batches of about 1 MiB of memory: the batch's
//! chunks are looked up together and their stored bytes read into the thread's own buffer
//! (reused, never zeroed again) with one `pread` per run of chunks that lie back to back in a
//! pack ([`ImageStore::read_chunks_into`]), checked (zstd decode, BLAKE3: a sparse chunk is
//! checked on its stored form and its pages are written from the buffer, never expanded), and
//! written with one `process_vm_writev` of up to 1024 pieces while they are still in the core's
//! cache, leaving out zero pages where the memory is fresh anonymous memory (already zero).
//! Packs are never mapped: one truncated while a restore reads it is a short read, an error
//! naming the pack, not a SIGBUS. Pieces `process_vm_writev` cannot write (a read-only mapping)
//! go through `/proc/PID/mem`, which writes any mapping.
use rayon::prelude::*;
use zap_store::{Extent, ExtentData, ImageStore, ReadChunk};

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

/// Bytes of memory (uncompressed) whose chunks are read, checked and written together: small
/// enough that their stored bytes stay in a core's cache from the read to the write.
const BATCH: u64 = 1 << 20;

thread_local! {
    /// Each thread's buffer for the stored bytes of a batch, reused (never zeroed again).
    static STORED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn write_window<S: ImageStore>(store: &S, inj: &Injector, w: &Window) -> Result<u64> {
    // Batches of extents of about BATCH bytes, each read into this thread's buffer with as few
    // `pread`s as the packs allow, checked, and written at once while still in the cache.
    let mut i = 0;
    while i < w.extents.len() {
        let (mut j, mut len) = (i, 0u64);
        while j < w.extents.len() && (j == i || len + w.extents[j].len <= BATCH) {
            len += w.extents[j].len;
            j += 1;
        }
        STORED.with(|buf| write_batch(store, inj, &w.extents[i..j], w.skip_zero, &mut buf.borrow_mut()))?;
        i = j;
    }
    Ok(w.extents.last().map(|l| l.end()).unwrap_or(0) - w.extents.first().map(|f| f.start).unwrap_or(0))
}

fn write_batch<S: ImageStore>(store: &S, inj: &Injector, extents: &[Extent], skip_zero: bool, buf: &mut Vec<u8>) -> Result<()> {
    let zeros = vec![0u8; zap_chunker::PAGE_SIZE];
    // Chunks first (each read once per batch, looked up in the index together), then the
    // pieces that borrow them.
    let mut ids: Vec<zap_store::ChunkId> = Vec::new();
    for e in extents {
        if let ExtentData::Chunk { id, .. } = e.data {
            if ids.last() != Some(&id) {
                ids.push(id);
            }
        }
    }
    let read = if ids.is_empty() { Vec::new() } else { store.read_chunks_into(&ids, buf)? };
    let buf: &[u8] = buf;
    let chunks: Vec<(zap_store::ChunkId, ReadChunk)> = ids.into_iter().zip(read).collect();
    let mut pieces: Vec<(u64, std::borrow::Cow<'_, [u8]>)> = Vec::new();
    let mut k = 0usize;
    for e in extents {
        match e.data {
            ExtentData::Zero if skip_zero => {}
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
                for (off, b) in bytes.pieces(buf, from, to, skip_zero) {
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
    Ok(())
}
