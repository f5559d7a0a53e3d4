//! Helpers between chunker output, manifests and memory: store a run, rebuild bytes from extents.
use rayon::prelude::*;
use zap_chunker::{chunk_run, ChunkerConfig};

use crate::manifest::{Extent, ExtentData};
use crate::{ChunkSink, ImageStore, Result, StoreError};

/// Chunks `data` (starting at absolute `start`), writes the new chunks to `sink` and returns the
/// extents describing it, plus the stored bytes newly written.
pub fn store_run<S: ChunkSink>(
    sink: &mut S,
    cfg: &ChunkerConfig,
    start: u64,
    data: &[u8],
) -> Result<(Vec<Extent>, u64)> {
    let chunked = chunk_run(start, data, cfg);
    let mut extents = Vec::with_capacity(chunked.len());
    let mut new_bytes = 0u64;
    for ce in chunked {
        let data = match &ce.chunk {
            None => ExtentData::Zero,
            Some(c) => {
                if sink.put(c)? {
                    new_bytes += c.data.len() as u64;
                }
                ExtentData::Chunk { id: c.id, offset: 0 }
            }
        };
        extents.push(Extent { start: ce.start, len: ce.len, data });
    }
    Ok((extents, new_bytes))
}

/// Fills `out`, which stands for the bytes `[base, base + out.len())`, from `extents`, reading
/// chunks in parallel. Every extent must lie inside that range; bytes no extent covers are left
/// as they are.
pub fn materialize<S: ImageStore>(store: &S, extents: &[Extent], base: u64, out: &mut [u8]) -> Result<()> {
    let end = base + out.len() as u64;
    let mut jobs: Vec<(&Extent, &mut [u8])> = Vec::with_capacity(extents.len());
    let mut rest = out;
    let mut pos = base;
    for e in extents {
        if e.start < pos || e.end() > end {
            return Err(StoreError::Invalid(format!(
                "extent {:#x}+{:#x} lies outside {base:#x}..{end:#x} or out of order",
                e.start, e.len
            )));
        }
        let (_, tail) = std::mem::take(&mut rest).split_at_mut((e.start - pos) as usize);
        let (mine, tail) = tail.split_at_mut(e.len as usize);
        rest = tail;
        pos = e.end();
        jobs.push((e, mine));
    }
    jobs.into_par_iter().try_for_each(|(e, buf)| match e.data {
        ExtentData::Zero => {
            buf.fill(0);
            Ok(())
        }
        ExtentData::Chunk { id, offset } => {
            let raw = store.read_chunk(&id)?;
            let from = offset as usize;
            let to = from + buf.len();
            if to > raw.len() {
                return Err(StoreError::Corrupt {
                    what: format!("extent at {:#x}", e.start),
                    detail: format!("wants bytes {from}..{to} of chunk {id}, which has {}", raw.len()),
                });
            }
            buf.copy_from_slice(&raw[from..to]);
            Ok(())
        }
    })
}
