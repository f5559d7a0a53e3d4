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

/// The parts of `extents` that fall inside `[from, to)`, cut at the edges (chunk extents keep
/// pointing at the right bytes of their chunk).
pub fn clip(extents: &[Extent], from: u64, to: u64) -> Vec<Extent> {
    extents
        .iter()
        .filter(|e| e.end() > from && e.start < to)
        .map(|e| cut(e, e.start.max(from), e.end().min(to)))
        .collect()
}

/// The bytes `[from, to)` of extent `e`, which must contain them.
fn cut(e: &Extent, from: u64, to: u64) -> Extent {
    let data = match e.data {
        ExtentData::Zero => ExtentData::Zero,
        ExtentData::Chunk { id, offset } => ExtentData::Chunk { id, offset: offset + (from - e.start) as u32 },
    };
    Extent { start: from, len: to - from, data }
}

/// Lays `changed` extents (new data for some ranges) over a parent image's `base` extents and
/// returns the child's extents: the parent's everywhere nothing changed (its chunk references are
/// kept, cut where needed by adjusting the chunk offset), the new ones where something did. Both
/// inputs must be ordered and non-overlapping; so is the output. Adjacent zero extents are merged.
pub fn overlay(base: &[Extent], changed: &[Extent]) -> Vec<Extent> {
    let mut pieces: Vec<Extent> = Vec::with_capacity(base.len() + changed.len());
    let mut k = 0;
    for b in base {
        while k < changed.len() && changed[k].end() <= b.start {
            k += 1;
        }
        // The parts of `b` that no changed extent covers.
        let mut pos = b.start;
        for c in changed[k..].iter().take_while(|c| c.start < b.end()) {
            if c.start > pos {
                pieces.push(cut(b, pos, c.start));
            }
            pos = pos.max(c.end());
        }
        if pos < b.end() {
            pieces.push(cut(b, pos, b.end()));
        }
    }
    pieces.extend_from_slice(changed);
    pieces.sort_by_key(|e| e.start);
    let mut out: Vec<Extent> = Vec::with_capacity(pieces.len());
    for e in pieces {
        match out.last_mut() {
            Some(prev) if prev.data == ExtentData::Zero && e.data == ExtentData::Zero && prev.end() == e.start => {
                prev.len += e.len
            }
            _ => out.push(e),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use zap_chunker::ChunkId;

    fn chunk(n: u8, start: u64, len: u64, offset: u32) -> Extent {
        Extent { start, len, data: ExtentData::Chunk { id: ChunkId([n; 32]), offset } }
    }
    fn zero(start: u64, len: u64) -> Extent {
        Extent { start, len, data: ExtentData::Zero }
    }

    /// Reference: expand to a per-byte map of (chunk, byte in chunk) and compare.
    fn expand(exts: &[Extent]) -> std::collections::BTreeMap<u64, Option<(u8, u64)>> {
        let mut m = std::collections::BTreeMap::new();
        for e in exts {
            for a in e.start..e.end() {
                let v = match e.data {
                    ExtentData::Zero => None,
                    ExtentData::Chunk { id, offset } => Some((id.0[0], u64::from(offset) + a - e.start)),
                };
                assert!(m.insert(a, v).is_none(), "overlap at {a}");
            }
        }
        m
    }

    #[test]
    fn overlay_matches_reference() {
        let base = vec![chunk(1, 0, 64, 0), zero(64, 100), chunk(2, 200, 64, 0), chunk(3, 264, 32, 8)];
        let cases: Vec<Vec<Extent>> = vec![
            vec![],
            vec![chunk(9, 8, 8, 0)],
            vec![chunk(9, 0, 64, 0)],
            vec![chunk(9, 60, 10, 0), chunk(8, 190, 20, 0)],
            vec![chunk(9, 170, 20, 0)],
            vec![zero(0, 300)],
            vec![chunk(9, 300, 4, 0)],
            vec![chunk(9, 10, 2, 0), chunk(8, 20, 2, 0), chunk(7, 263, 10, 0)],
        ];
        for changed in cases {
            let got = overlay(&base, &changed);
            let mut want = expand(&base);
            for (a, v) in expand(&changed) {
                want.insert(a, v);
            }
            assert_eq!(expand(&got), want, "changed = {changed:?}");
            for w in got.windows(2) {
                assert!(w[0].end() <= w[1].start);
            }
        }
    }
}
