//! The dump pipeline: pages of a stopped process into the store.
//!
//! ```text
//!  reader thread            chunker thread (rayon inside)        this thread (owns the sink)
//!  process_vm_readv of  ──▶ per 64 KiB block: zero test, BLAKE3, ──▶ dedup against the index,
//!  up to 1024 runs into     "looks random" test, zstd or sparse       append to the pack,
//!  a 4 MiB buffer (from     ◀── buffers come back to the reader ──    extents per mapping
//!  a pool of 4)
//! ```
//!
//! The reader takes the runs [`crate::mem::plan_pages_since`] found present (pagemap: absent
//! pages are never read) and cuts them at absolute 64 KiB boundaries, so the blocks, hence the
//! chunks, are the same whatever the window size. A batch that `process_vm_readv` cannot read
//! whole (a page the process itself cannot read) is read through `/proc/PID/mem` instead. Pages
//! already copied out ([`crate::mem::copy_pages_since`], for a process that runs on) go straight
//! to the chunker, gathered into windows of up to 4 MiB (a delta's thousands of scattered pages
//! would otherwise cost a hand-over between the threads each). Chunks are handed to the sink by value ([`ChunkSink::put_owned`]): the store
//! writes packs with `writev` from the chunks' own buffers (no copy in user space), starts their
//! writeback as it goes and fsyncs them once, at commit.
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{channel, sync_channel};

use zap_chunker::{chunk_run, ChunkedExtent, ChunkerConfig, Parallelism};
use zap_store::{ChunkSink, Extent, ExtentData};

use crate::mem::PageCopy;
use crate::sys::proc as sysproc;
use crate::{EngineError, Result};

/// Bytes read per window.
pub const READ_WINDOW: usize = 4 << 20;
/// Windows in flight between two stages.
const DEPTH: usize = 3;
/// Block alignment the reader cuts runs at (the chunker's block size).
const BLOCK: u64 = zap_chunker::DEFAULT_CHUNK_SIZE as u64;

/// A window of bytes: pieces (mapping index, address, offset in `buf`, length), read back to back.
struct Window {
    pieces: Vec<(usize, u64, usize, usize)>,
    buf: Vec<u8>,
}

/// Cuts the planned runs into windows of at most [`READ_WINDOW`] bytes and 1024 pieces, pieces
/// cut at absolute block boundaries.
fn windows(planned: &[(usize, u64, u64)]) -> Vec<Vec<(usize, u64, usize, usize)>> {
    let mut out = Vec::new();
    let mut cur: Vec<(usize, u64, usize, usize)> = Vec::new();
    let mut fill = 0usize;
    for &(idx, from, to) in planned {
        let mut pos = from;
        while pos < to {
            let room = READ_WINDOW - fill;
            let mut end = (pos + room as u64).min(to);
            if end < to {
                end -= end % BLOCK; // cut at a block boundary...
                if end <= pos {
                    // ...unless the window has no room for the rest of this block: next window.
                    if cur.is_empty() {
                        end = (pos + room as u64).min(to);
                    } else {
                        out.push(std::mem::take(&mut cur));
                        fill = 0;
                        continue;
                    }
                }
            }
            let len = (end - pos) as usize;
            cur.push((idx, pos, fill, len));
            fill += len;
            pos = end;
            if fill == READ_WINDOW || cur.len() == 1024 {
                out.push(std::mem::take(&mut cur));
                fill = 0;
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Reads one window's pieces into `buf`.
fn read_window(pid: i32, mem: &File, names: &[&str], pieces: &[(usize, u64, usize, usize)], buf: &mut Vec<u8>) -> Result<()> {
    let total: usize = pieces.iter().map(|p| p.3).sum();
    if buf.len() < total {
        buf.resize(total.max(READ_WINDOW), 0);
    }
    let remote: Vec<(u64, usize)> = pieces.iter().map(|&(_, a, _, l)| (a, l)).collect();
    if sysproc::vm_read_into(pid, &remote, buf).ok() == Some(total) {
        return Ok(());
    }
    for &(idx, addr, off, len) in pieces {
        mem.read_exact_at(&mut buf[off..off + len], addr).map_err(|e| EngineError::Proc {
            pid,
            detail: format!("read memory at {addr:#x}+{len:#x} ({}): {e}", names.get(idx).copied().unwrap_or("?")),
        })?;
    }
    Ok(())
}

/// Chunks one window: per piece, in order.
fn chunk_window(w: &Window, cfg: &ChunkerConfig) -> Vec<(usize, Vec<ChunkedExtent>)> {
    w.pieces.iter().map(|&(idx, addr, off, len)| (idx, chunk_run(addr, &w.buf[off..off + len], cfg))).collect()
}

/// Stores chunked pieces into `sink`, appending extents per mapping (adjacent zero extents
/// merged); returns the stored bytes that were new.
fn put_all<S: ChunkSink>(sink: &mut S, per_vma: &mut [Vec<Extent>], chunked: Vec<(usize, Vec<ChunkedExtent>)>) -> Result<u64> {
    let mut new = 0u64;
    for (idx, exts) in chunked {
        for ce in exts {
            let data = match ce.chunk {
                None => ExtentData::Zero,
                Some(c) => {
                    let (id, len) = (c.id, c.data.len() as u64);
                    // By value: the store writes the chunk's bytes from its own buffer.
                    if sink.put_owned(c)? {
                        new += len;
                    }
                    ExtentData::Chunk { id, offset: 0 }
                }
            };
            let list = &mut per_vma[idx];
            match list.last_mut() {
                Some(prev) if data == ExtentData::Zero && prev.data == ExtentData::Zero && prev.end() == ce.start => prev.len += ce.len,
                _ => list.push(Extent { start: ce.start, len: ce.len, data }),
            }
        }
    }
    Ok(new)
}

/// Chunks and stores the pages of `copy` (those copied already, then the planned runs, read
/// from the process now) into `sink`. `names` are the mappings' names, by index (for errors).
/// Returns the extents of each mapping, in the order stored, and the new stored bytes.
pub fn store_copy<S: ChunkSink>(copy: &mut PageCopy, names: &[&str], sink: &mut S, cfg: &ChunkerConfig) -> Result<(Vec<Vec<Extent>>, u64)> {
    let mut per_vma: Vec<Vec<Extent>> = vec![Vec::new(); names.len()];
    let copied = std::mem::take(&mut copy.runs);
    let planned = std::mem::take(&mut copy.planned);
    let pid = copy.pid;
    let plan = windows(&planned);
    let mem = if plan.is_empty() {
        None
    } else {
        let path = format!("/proc/{pid}/mem");
        Some(File::open(&path).map_err(|e| EngineError::io("open", path.as_ref(), e))?)
    };
    // Runs copied already (a delta's scattered pages, one run each) go to the chunkers in windows
    // of up to READ_WINDOW bytes, not one by one: each hand-over between the stages costs a
    // wake-up, which for thousands of single pages cost more than chunking them. Pieces are
    // chunked one by one whatever window holds them, so the chunks are the same.
    let mut grouped: Vec<Window> = Vec::new();
    for (idx, addr, buf) in copied {
        match grouped.last_mut() {
            Some(w) if w.buf.len() + buf.len() <= READ_WINDOW => {
                w.pieces.push((idx, addr, w.buf.len(), buf.len()));
                w.buf.extend_from_slice(&buf);
            }
            _ => grouped.push(Window { pieces: vec![(idx, addr, 0, buf.len())], buf }),
        }
    }
    let copied = grouped;
    let mut new = 0u64;
    if cfg.parallelism == Parallelism::Serial || plan.len() + copied.len() <= 1 {
        // The same stages, one after the other, on this thread.
        for w in &copied {
            new += put_all(sink, &mut per_vma, chunk_window(w, cfg))?;
        }
        let mut w = Window { pieces: Vec::new(), buf: Vec::new() };
        for pieces in plan {
            read_window(pid, mem.as_ref().expect("opened for a plan"), names, &pieces, &mut w.buf)?;
            w.pieces = pieces;
            new += put_all(sink, &mut per_vma, chunk_window(&w, cfg))?;
        }
        return Ok((per_vma, new));
    }
    std::thread::scope(|s| {
        let (win_tx, win_rx) = sync_channel::<Result<Window>>(DEPTH);
        let (chunk_tx, chunk_rx) = sync_channel::<Result<(Vec<(usize, Vec<ChunkedExtent>)>, Vec<u8>)>>(DEPTH);
        let (pool_tx, pool_rx) = channel::<Vec<u8>>();
        let mem = mem.as_ref();
        s.spawn(move || {
            for w in copied {
                if win_tx.send(Ok(w)).is_err() {
                    return;
                }
            }
            for pieces in plan {
                let mut buf = pool_rx.try_recv().unwrap_or_default();
                let r = read_window(pid, mem.expect("opened for a plan"), names, &pieces, &mut buf).map(|()| Window { pieces, buf });
                let failed = r.is_err();
                if win_tx.send(r).is_err() || failed {
                    return;
                }
            }
        });
        s.spawn(move || {
            for w in win_rx {
                let msg = w.map(|w| (chunk_window(&w, cfg), w.buf));
                let failed = msg.is_err();
                if chunk_tx.send(msg).is_err() || failed {
                    return;
                }
            }
        });
        // Consuming the receiver: returning early drops it, which ends the other stages.
        for msg in chunk_rx {
            let (chunked, buf) = msg?;
            new += put_all(sink, &mut per_vma, chunked)?;
            let _ = pool_tx.send(buf);
        }
        Ok::<(), EngineError>(())
    })?;
    Ok((per_vma, new))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cut_runs_at_block_boundaries_and_cover_them() {
        let planned = vec![
            (0, 0x1000, 0x3000),
            (0, 0x10000, 0x10000 + 9 * (READ_WINDOW as u64) + 0x5000),
            (1, 0x7f00_0000_0000, 0x7f00_0000_1000),
        ];
        let w = windows(&planned);
        let mut covered: Vec<(usize, u64, u64)> = Vec::new();
        for win in &w {
            assert!(win.iter().map(|p| p.3).sum::<usize>() <= READ_WINDOW);
            let mut off = 0;
            for &(idx, a, o, l) in win {
                assert_eq!(o, off, "pieces are back to back");
                off += l;
                match covered.last_mut() {
                    Some(last) if last.0 == idx && last.2 == a => last.2 += l as u64,
                    _ => covered.push((idx, a, a + l as u64)),
                }
                // A piece ends at a block boundary unless its run ends there.
                let end = a + l as u64;
                assert!(end.is_multiple_of(BLOCK) || planned.iter().any(|r| r.2 == end), "piece ends mid-block at {end:#x}");
            }
        }
        assert_eq!(covered, planned);
    }
}
