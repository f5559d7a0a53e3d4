//! Pages → chunks.
//!
//! The chunker turns a run of bytes that starts at some address (a memory mapping, or a file at an
//! offset) into *extents*. Each extent covers a byte range of the run and is either
//! - **zero**: every byte in it is zero; nothing is stored, the extent only records the range;
//! - **data**: a [`Chunk`] whose id is the BLAKE3 hash of its uncompressed bytes, stored compressed
//!   with zstd, or (where compression does not pay, decided at once for pages that look random)
//!   raw, with its zero pages left out ([`Compression::Sparse`]).
//!
//! ## Granularity
//! Runs are cut at *absolute* [`ChunkerConfig::chunk_size`] boundaries (64 KiB by default); a
//! block that is all zero is a zero extent, any other is one chunk, zero pages inside it
//! included (they cost nothing stored, and restore skips them). Memory in which zero and
//! non-zero pages alternate therefore makes one chunk and one extent per block, not one per page.
//! A chunk never spans two blocks, and the same bytes at the same alignment always give the same
//! chunk id, in whatever run they were presented. An incremental dump hands the chunker only the pages
//! that were written; they become chunks of their own (a sub-range of a block), so unchanged data
//! is never rewritten, while full dumps get the speed of 64 KiB blocks. `benches/` measures the
//! trade-off (see the README for figures).
//!
//! ## Parallelism
//! [`chunk_run`] processes blocks independently; [`Parallelism::Serial`] and
//! [`Parallelism::Rayon`] run the very same per-block function, so both give identical extents,
//! ids and stored bytes (tested below).
#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::fmt;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Size of a memory page; zero detection works at this granularity.
pub const PAGE_SIZE: usize = 4096;
/// Default chunk (block) size: see the module doc for the choice.
pub const DEFAULT_CHUNK_SIZE: usize = 64 * 1024;
/// Default zstd level: level 1 is the fastest that still compresses text-like pages well.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// BLAKE3 key-derivation context of the ids of chunks that have zero pages.
const SPARSE_ID_CONTEXT: &str = "zap 2026 chunk id: length and pages, zero pages left out";

/// Content address of a chunk: BLAKE3 over its uncompressed bytes when it has no zero page;
/// otherwise BLAKE3 in key-derivation mode (its own domain, see `SPARSE_ID_CONTEXT`) over its
/// length (u64 LE) and its [`Compression::Sparse`] form (page bitmap, then the non-zero pages),
/// so that zero pages, often half of memory, are never hashed. Either way a pure function of
/// the bytes ([`ChunkId::of`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// Hashes `data` into its chunk id.
    pub fn of(data: &[u8]) -> Self {
        if pages(data).any(|(_, zero)| zero) {
            Self::of_sparse(data.len(), &sparse(data))
        } else {
            ChunkId(*blake3::hash(data).as_bytes())
        }
    }

    /// The id of the bytes whose [`Compression::Sparse`] form is `sparse` (`raw_len` bytes in
    /// all): what [`ChunkId::of`] gives for bytes with a zero page, computed without them.
    pub fn of_sparse(raw_len: usize, sparse: &[u8]) -> Self {
        // Copied behind 8 bytes of room into a buffer of this thread's, to be hashed as one
        // contiguous input (see `of_sparse_in_place`): the copy costs far less than it saves.
        SCRATCH.with(|cell| {
            let mut buf = cell.borrow_mut();
            buf.clear();
            buf.extend_from_slice(&[0; 8]);
            buf.extend_from_slice(sparse);
            Self::of_sparse_in_place(raw_len, &mut buf)
        })
    }

    /// [`ChunkId::of_sparse`] of the sparse form at `buf[8..]`, hashed where it lies: `buf[..8]`
    /// is room the length is written into (what it held is overwritten). The same id, faster:
    /// BLAKE3 hashes 1 KiB pieces of its input many at a time with SIMD only in runs aligned on
    /// the input's start; the length and the form given as two inputs put every piece out of
    /// step by 8 bytes, and hashing then costs about 2.5 times as much (measured: 16,384 sparse
    /// 64 KiB chunks of half-zero memory, 386 ms against 152 ms).
    pub fn of_sparse_in_place(raw_len: usize, buf: &mut [u8]) -> Self {
        buf[..8].copy_from_slice(&(raw_len as u64).to_le_bytes());
        let mut h = blake3::Hasher::new_derive_key(SPARSE_ID_CONTEXT);
        h.update(buf);
        ChunkId(*h.finalize().as_bytes())
    }

    /// Lower-case hex form of the id.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses a 64-character hex id.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(ChunkId(out))
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

/// How a chunk's bytes are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum Compression {
    /// Stored as is.
    None = 0,
    /// Stored as one zstd frame.
    Zstd = 1,
    /// Zero pages left out: a bitmap with one bit per page of the chunk (bit set: stored), then
    /// the stored pages back to back (the last one may be short). For chunks whose non-zero
    /// pages do not compress.
    Sparse = 2,
}

impl Compression {
    /// The on-disk code of this compression.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Decodes an on-disk code.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Compression::None),
            1 => Some(Compression::Zstd),
            2 => Some(Compression::Sparse),
            _ => None,
        }
    }
}

/// A chunk ready to be stored.
#[derive(Clone, PartialEq, Eq)]
pub struct Chunk {
    /// BLAKE3 of the uncompressed bytes.
    pub id: ChunkId,
    /// Length of the uncompressed bytes.
    pub raw_len: u32,
    /// How `data` is encoded.
    pub compression: Compression,
    /// The bytes as stored.
    pub data: Vec<u8>,
}

impl fmt::Debug for Chunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunk")
            .field("id", &self.id)
            .field("raw_len", &self.raw_len)
            .field("compression", &self.compression)
            .field("stored_len", &self.data.len())
            .finish()
    }
}

/// One piece of a chunked run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkedExtent {
    /// Absolute start (address or file offset).
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// `None` for an all-zero extent.
    pub chunk: Option<Chunk>,
}

/// Serial or parallel processing of blocks; both give identical output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parallelism {
    /// One block after the other on the calling thread.
    Serial,
    /// Blocks spread over rayon's global pool.
    Rayon,
}

/// Chunker settings.
#[derive(Clone, Copy, Debug)]
pub struct ChunkerConfig {
    /// Block size: a power of two, a multiple of [`PAGE_SIZE`].
    pub chunk_size: usize,
    /// zstd level (1..=19).
    pub zstd_level: i32,
    /// Serial or rayon.
    pub parallelism: Parallelism,
    /// Store raw when the compressed form saves less than 1/`min_saving_div` of the bytes.
    pub min_saving_div: usize,
}

impl Default for ChunkerConfig {
    fn default() -> Self {
        ChunkerConfig {
            chunk_size: DEFAULT_CHUNK_SIZE,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            parallelism: Parallelism::Rayon,
            min_saving_div: 16,
        }
    }
}

/// Errors from decoding a stored chunk.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// zstd refused the stored bytes.
    #[error("chunk {id}: zstd decompression failed: {source}")]
    Decompress {
        /// The chunk.
        id: ChunkId,
        /// zstd's error.
        source: std::io::Error,
    },
    /// A sparse chunk whose bitmap and pages do not add up.
    #[error("chunk {id}: sparse encoding does not match its length")]
    Sparse {
        /// The chunk.
        id: ChunkId,
    },
    /// The decoded length is not the recorded one.
    #[error("chunk {id}: decoded {got} bytes, expected {expected}")]
    Length {
        /// The chunk.
        id: ChunkId,
        /// Bytes decoded.
        got: usize,
        /// Bytes recorded in the index.
        expected: usize,
    },
    /// The decoded bytes do not hash to the id.
    #[error("chunk {id}: content does not match its id (hash {actual})")]
    Hash {
        /// The chunk expected.
        id: ChunkId,
        /// Hash of what was read.
        actual: ChunkId,
    },
}

/// True when every byte of `data` is zero.
pub fn is_zero(data: &[u8]) -> bool {
    // Or-folding 256-byte lanes of words lets the compiler vectorise with one branch per lane
    // (a zero page is 16 lanes, a non-zero one usually ends at the first); the tail bytewise.
    let mut lanes = data.chunks_exact(256);
    for lane in &mut lanes {
        let mut acc = 0u64;
        for word in lane.chunks_exact(8) {
            acc |= u64::from_ne_bytes(word.try_into().expect("8-byte word"));
        }
        if acc != 0 {
            return false;
        }
    }
    let rest = lanes.remainder();
    let mut words = rest.chunks_exact(8);
    let acc = (&mut words).fold(0u64, |a, w| a | u64::from_ne_bytes(w.try_into().expect("8-byte word")));
    acc == 0 && words.remainder().iter().all(|&b| b == 0)
}

thread_local! {
    /// Room for [`ChunkId::of_sparse`]'s contiguous input.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
}

fn compress(data: &[u8], level: i32) -> Vec<u8> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().map(|(l, _)| *l) != Some(level) {
            let c = zstd::bulk::Compressor::new(level).expect("zstd compressor with a valid level");
            *slot = Some((level, c));
        }
        let (_, c) = slot.as_mut().expect("set above");
        // Compressing into a Vec cannot fail for in-memory input of this size.
        c.compress(data).expect("zstd compress in memory")
    })
}

/// True when a page looks like random bytes, which zstd cannot shrink: 256 bytes sampled across
/// it (every 16th) take more than 140 distinct values (random data gives about 162; text,
/// code, pointers and small integers far fewer). Costs a 256-byte pass, not a compression.
pub fn looks_random(page: &[u8]) -> bool {
    if page.len() < 256 {
        return false;
    }
    let step = page.len() / 256;
    // A bitset of the values seen, four words: no load of a table in the loop's dependency chain.
    let mut seen = [0u64; 4];
    for i in 0..256 {
        let b = page[i * step];
        seen[usize::from(b >> 6)] |= 1 << (b & 63);
    }
    seen.iter().map(|w| w.count_ones()).sum::<u32>() > 140
}

/// The pages of `data` (from its start, the last one possibly short): (range, is zero).
fn pages(data: &[u8]) -> impl Iterator<Item = (std::ops::Range<usize>, bool)> + '_ {
    (0..data.len()).step_by(PAGE_SIZE).map(move |from| {
        let to = (from + PAGE_SIZE).min(data.len());
        (from..to, is_zero(&data[from..to]))
    })
}

/// The [`Compression::Sparse`] encoding of `data`.
pub fn sparse(data: &[u8]) -> Vec<u8> {
    let zero: Vec<bool> = pages(data).map(|(_, z)| z).collect();
    sparse_with(data, &zero)
}

/// The [`Compression::Sparse`] encoding of `data` whose pages' zero flags are `zero` (one per
/// page, as [`pages`] gives them): the pages are not scanned again.
fn sparse_with(data: &[u8], zero: &[bool]) -> Vec<u8> {
    let n = data.len().div_ceil(PAGE_SIZE);
    debug_assert_eq!(zero.len(), n);
    let kept = zero.iter().filter(|z| !**z).count();
    let mut out = Vec::with_capacity(n.div_ceil(8) + kept * PAGE_SIZE);
    out.resize(n.div_ceil(8), 0);
    for (i, &z) in zero.iter().enumerate() {
        if !z {
            out[i / 8] |= 1 << (i % 8);
            out.extend_from_slice(&data[i * PAGE_SIZE..((i + 1) * PAGE_SIZE).min(data.len())]);
        }
    }
    out
}

/// The non-zero pages of a [`Compression::Sparse`] chunk of `raw_len` bytes, without copying
/// them: (offset in the chunk, bytes). `None` when the encoding is malformed.
pub fn sparse_pages(stored: &[u8], raw_len: usize) -> Option<Vec<(usize, &[u8])>> {
    let n = raw_len.div_ceil(PAGE_SIZE);
    let (bitmap, mut body) = stored.split_at_checked(n.div_ceil(8))?;
    let mut out = Vec::new();
    for i in 0..n {
        if bitmap[i / 8] & (1 << (i % 8)) != 0 {
            let len = ((i + 1) * PAGE_SIZE).min(raw_len) - i * PAGE_SIZE;
            let (page, rest) = body.split_at_checked(len)?;
            out.push((i * PAGE_SIZE, page));
            body = rest;
        }
    }
    let spare = bitmap.len() * 8 - n;
    (body.is_empty() && (spare == 0 || bitmap[bitmap.len() - 1] >> (8 - spare) == 0)).then_some(out)
}

fn unsparse(stored: &[u8], raw_len: usize) -> Option<Vec<u8>> {
    let n = raw_len.div_ceil(PAGE_SIZE);
    let (bitmap, mut body) = stored.split_at_checked(n.div_ceil(8))?;
    let mut out = vec![0u8; raw_len];
    for i in 0..n {
        if bitmap[i / 8] & (1 << (i % 8)) != 0 {
            let to = ((i + 1) * PAGE_SIZE).min(raw_len);
            let len = to - i * PAGE_SIZE;
            let (page, rest) = body.split_at_checked(len)?;
            out[i * PAGE_SIZE..to].copy_from_slice(page);
            body = rest;
        }
    }
    // Unused bitmap bits must be clear and nothing may follow the last page: one encoding each.
    let spare = bitmap.len() * 8 - n;
    (body.is_empty() && (spare == 0 || bitmap[bitmap.len() - 1] >> (8 - spare) == 0)).then_some(out)
}

/// Hashes and encodes one chunk's bytes: zstd where it saves at least 1/`min_saving_div` of
/// them; otherwise, or at once when every non-zero page looks random ([`looks_random`]), the
/// bytes as they are, with zero pages left out ([`Compression::Sparse`]) if it has any.
pub fn make_chunk(data: &[u8], cfg: &ChunkerConfig) -> Chunk {
    let (mut zero, mut random, mut other) = (0usize, 0usize, 0usize);
    // Each page is scanned once: its zero flag serves the sparse form below.
    let mut flags = Vec::with_capacity(data.len().div_ceil(PAGE_SIZE));
    for (range, z) in pages(data) {
        flags.push(z);
        if z {
            zero += 1;
        } else if looks_random(&data[range]) {
            random += 1;
        } else {
            other += 1;
        }
    }
    let sparse_form = (zero > 0).then(|| sparse_with(data, &flags));
    let id = match &sparse_form {
        Some(s) => ChunkId::of_sparse(data.len(), s),
        None => ChunkId(*blake3::hash(data).as_bytes()),
    };
    let packed = (other > 0 || random == 0).then(|| compress(data, cfg.zstd_level));
    let (compression, stored) = match (packed, sparse_form) {
        (Some(p), _) if p.len() + data.len() / cfg.min_saving_div.max(1) < data.len() => (Compression::Zstd, p),
        (_, Some(s)) => (Compression::Sparse, s),
        _ => (Compression::None, data.to_vec()),
    };
    Chunk {
        id,
        raw_len: u32::try_from(data.len()).expect("chunk larger than 4 GiB"),
        compression,
        data: stored,
    }
}

/// Decodes a stored chunk and checks it against its id.
pub fn decode_chunk(
    id: &ChunkId,
    compression: Compression,
    raw_len: usize,
    stored: &[u8],
) -> Result<Vec<u8>, ChunkError> {
    let raw = match compression {
        Compression::None => stored.to_vec(),
        Compression::Zstd => zstd::bulk::decompress(stored, raw_len)
            .map_err(|source| ChunkError::Decompress { id: *id, source })?,
        Compression::Sparse => {
            // Checked on the stored form itself, which is what its id hashes.
            let actual = ChunkId::of_sparse(raw_len, stored);
            if actual != *id {
                return Err(ChunkError::Hash { id: *id, actual });
            }
            return unsparse(stored, raw_len).ok_or(ChunkError::Sparse { id: *id });
        }
    };
    if raw.len() != raw_len {
        return Err(ChunkError::Length { id: *id, got: raw.len(), expected: raw_len });
    }
    let actual = ChunkId::of(&raw);
    if actual != *id {
        return Err(ChunkError::Hash { id: *id, actual });
    }
    Ok(raw)
}

/// One block (never crossing a `chunk_size` boundary): a zero extent when all its bytes are
/// zero, else one chunk (zero pages inside it cost nothing stored: see [`make_chunk`]).
fn chunk_block(start: u64, block: &[u8], cfg: &ChunkerConfig) -> ChunkedExtent {
    let chunk = (!is_zero(block)).then(|| make_chunk(block, cfg));
    ChunkedExtent { start, len: block.len() as u64, chunk }
}

/// Cuts `data`, which starts at absolute position `start`, into blocks at `chunk_size` boundaries.
fn blocks(start: u64, data: &[u8], chunk_size: usize) -> Vec<(u64, &[u8])> {
    let mut out = Vec::with_capacity(data.len() / chunk_size + 2);
    let mut pos = 0usize;
    while pos < data.len() {
        let abs = start + pos as u64;
        let to_boundary = chunk_size - (abs % chunk_size as u64) as usize;
        let end = (pos + to_boundary).min(data.len());
        out.push((abs, &data[pos..end]));
        pos = end;
    }
    out
}

/// Chunks a run of bytes starting at `start`. Extents come out in address order, cover the run
/// exactly, and adjacent zero extents are merged.
pub fn chunk_run(start: u64, data: &[u8], cfg: &ChunkerConfig) -> Vec<ChunkedExtent> {
    assert!(
        cfg.chunk_size.is_power_of_two() && cfg.chunk_size.is_multiple_of(PAGE_SIZE),
        "chunk size must be a power-of-two multiple of the page size"
    );
    let blocks = blocks(start, data, cfg.chunk_size);
    let per_block: Vec<ChunkedExtent> = match cfg.parallelism {
        Parallelism::Serial => blocks.iter().map(|(s, b)| chunk_block(*s, b, cfg)).collect(),
        Parallelism::Rayon => blocks.par_iter().map(|(s, b)| chunk_block(*s, b, cfg)).collect(),
    };
    let mut out: Vec<ChunkedExtent> = Vec::with_capacity(per_block.len());
    for ext in per_block {
        match out.last_mut() {
            Some(prev) if prev.chunk.is_none() && ext.chunk.is_none() => prev.len += ext.len,
            _ => out.push(ext),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn sample(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut data = vec![0u8; len];
        for (i, page) in data.chunks_mut(PAGE_SIZE).enumerate() {
            match i % 4 {
                0 | 1 => {}
                2 => {
                    for (j, b) in page.iter_mut().enumerate() {
                        *b = b"the quick brown fox "[j % 20];
                    }
                }
                _ => rng.fill(page),
            }
        }
        data
    }

    fn reassemble(start: u64, len: usize, exts: &[ChunkedExtent]) -> Vec<u8> {
        let mut out = vec![0u8; len];
        let mut expect = start;
        for e in exts {
            assert_eq!(e.start, expect, "extents must be contiguous");
            expect += e.len;
            if let Some(c) = &e.chunk {
                let raw = decode_chunk(&c.id, c.compression, c.raw_len as usize, &c.data).unwrap();
                assert_eq!(raw.len() as u64, e.len);
                let off = (e.start - start) as usize;
                out[off..off + raw.len()].copy_from_slice(&raw);
            }
        }
        assert_eq!(expect, start + len as u64);
        out
    }

    #[test]
    fn round_trip_and_cover() {
        let data = sample(3 * 1024 * 1024 + 5000, 7);
        for start in [0u64, 0x7f00_0000_0000, 4096 * 3, 123] {
            let exts = chunk_run(start, &data, &ChunkerConfig::default());
            assert_eq!(reassemble(start, data.len(), &exts), data);
            for e in &exts {
                if let Some(c) = &e.chunk {
                    let block = e.start / DEFAULT_CHUNK_SIZE as u64;
                    let last = (e.start + e.len - 1) / DEFAULT_CHUNK_SIZE as u64;
                    assert_eq!(block, last, "a chunk never spans two blocks");
                    assert!(c.raw_len as usize <= DEFAULT_CHUNK_SIZE);
                }
            }
        }
    }

    #[test]
    fn serial_and_parallel_are_identical() {
        let mut data = sample(8 * 1024 * 1024, 11);
        // A block of pure noise, which must be stored raw.
        let mut rng = rand::rngs::StdRng::seed_from_u64(99);
        let mut noise = vec![0u8; DEFAULT_CHUNK_SIZE];
        rng.fill(&mut noise[..]);
        data.extend_from_slice(&noise);
        data.extend_from_slice(&vec![0u8; DEFAULT_CHUNK_SIZE]);
        let serial = ChunkerConfig { parallelism: Parallelism::Serial, ..Default::default() };
        let par = ChunkerConfig { parallelism: Parallelism::Rayon, ..Default::default() };
        let a = chunk_run(0x1000_0000, &data, &serial);
        let b = chunk_run(0x1000_0000, &data, &par);
        assert_eq!(a, b);
        assert!(a.iter().any(|e| e.chunk.is_none()));
        assert!(a.iter().any(|e| matches!(&e.chunk, Some(c) if c.compression == Compression::Zstd)));
        assert!(a.iter().any(|e| matches!(&e.chunk, Some(c) if c.compression == Compression::None)));
    }

    #[test]
    fn zero_pages_inside_a_block_cost_nothing_and_random_pages_skip_zstd() {
        // Every other page zero, the others random: one sparse chunk per block, half its size.
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        let mut data = vec![0u8; 4 * DEFAULT_CHUNK_SIZE];
        for page in data.chunks_mut(PAGE_SIZE).skip(1).step_by(2) {
            rng.fill(page);
        }
        let exts = chunk_run(0x40_0000, &data, &ChunkerConfig::default());
        assert_eq!(exts.len(), 4);
        for e in &exts {
            let c = e.chunk.as_ref().unwrap();
            assert_eq!(c.compression, Compression::Sparse);
            assert_eq!(c.data.len(), DEFAULT_CHUNK_SIZE / 2 + 2);
        }
        assert_eq!(reassemble(0x40_0000, data.len(), &exts), data);
        // Every corruption of a sparse chunk is caught (bitmap, pages, length).
        let c = exts[0].chunk.clone().unwrap();
        for i in [0, 1, 2, 100, c.data.len() - 1] {
            let mut bad = c.data.clone();
            bad[i] ^= 0x10;
            assert!(decode_chunk(&c.id, c.compression, c.raw_len as usize, &bad).is_err(), "flip at {i}");
        }
        assert!(decode_chunk(&c.id, c.compression, c.raw_len as usize, &c.data[1..]).is_err());
        // A short last page and an unused bitmap bit.
        let odd: Vec<u8> = (0..3 * PAGE_SIZE + 100).map(|i| if i / PAGE_SIZE == 1 { 0 } else { rng.gen() }).collect();
        let id = ChunkId::of(&odd);
        let stored = sparse(&odd);
        assert_eq!(id, ChunkId::of_sparse(odd.len(), &stored));
        assert_ne!(id, ChunkId(*blake3::hash(&odd).as_bytes()), "sparse ids have their own domain");
        assert_eq!(stored.len(), 1 + odd.len() - PAGE_SIZE);
        assert_eq!(decode_chunk(&id, Compression::Sparse, odd.len(), &stored).unwrap(), odd);
        let mut bad = stored.clone();
        bad[0] |= 0x80;
        assert!(decode_chunk(&id, Compression::Sparse, odd.len(), &bad).is_err());
        // Text is not random.
        assert!(!looks_random(&b"the quick brown fox ".repeat(205)[..PAGE_SIZE]));
    }

    #[test]
    fn zero_pages_are_not_stored_and_merge() {
        let data = vec![0u8; 10 * DEFAULT_CHUNK_SIZE];
        let exts = chunk_run(0, &data, &ChunkerConfig::default());
        assert_eq!(exts.len(), 1);
        assert_eq!(exts[0].len, data.len() as u64);
        assert!(exts[0].chunk.is_none());
    }

    #[test]
    fn same_bytes_same_alignment_same_id() {
        let data = sample(4 * DEFAULT_CHUNK_SIZE, 3);
        let whole = chunk_run(0, &data, &ChunkerConfig::default());
        // Presenting the second half on its own gives the same chunks for it.
        let half = chunk_run(2 * DEFAULT_CHUNK_SIZE as u64, &data[2 * DEFAULT_CHUNK_SIZE..], &ChunkerConfig::default());
        let tail: Vec<_> = whole.iter().filter(|e| e.start >= 2 * DEFAULT_CHUNK_SIZE as u64).cloned().collect();
        assert_eq!(tail, half);
    }

    #[test]
    fn sparse_ids_hashed_in_one_piece_are_the_length_then_the_form() {
        // The definition: BLAKE3 in key-derivation mode over the length, then the sparse form.
        let reference = |raw_len: usize, sparse: &[u8]| {
            let mut h = blake3::Hasher::new_derive_key(SPARSE_ID_CONTEXT);
            h.update(&(raw_len as u64).to_le_bytes());
            h.update(sparse);
            ChunkId(*h.finalize().as_bytes())
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(23);
        for len in [0usize, 1, 2, 1015, 1016, 1017, 1024, 4098, 32770, 65538, 200_000] {
            let form: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let want = reference(len * 2, &form);
            assert_eq!(ChunkId::of_sparse(len * 2, &form), want, "{len} bytes");
            let mut room = vec![0xeeu8; 8];
            room.extend_from_slice(&form);
            assert_eq!(ChunkId::of_sparse_in_place(len * 2, &mut room), want, "{len} bytes in place");
        }
    }

    #[test]
    fn known_vector() {
        // BLAKE3 of the empty input, from the BLAKE3 reference test vectors.
        assert_eq!(
            ChunkId::of(b"").to_hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        let page = vec![0xabu8; PAGE_SIZE];
        assert_eq!(ChunkId::of(&page), ChunkId(*blake3::hash(&page).as_bytes()));
    }

    #[test]
    fn corrupt_chunk_is_detected() {
        let data = sample(DEFAULT_CHUNK_SIZE, 5);
        let exts = chunk_run(0, &data, &ChunkerConfig::default());
        let c = exts.iter().find_map(|e| e.chunk.clone()).unwrap();
        let mut bad = c.data.clone();
        let n = bad.len();
        bad[n / 2] ^= 0x40;
        assert!(decode_chunk(&c.id, c.compression, c.raw_len as usize, &bad).is_err());
        assert!(decode_chunk(&c.id, c.compression, c.raw_len as usize, &c.data[..n - 1]).is_err());
    }

    #[test]
    fn is_zero_finds_a_byte_anywhere() {
        // Lanes, the words of the tail and its last bytes.
        for len in [0usize, 7, 8, 255, 256, 4096, 4099, 4096 + 300] {
            let mut v = vec![0u8; len];
            assert!(is_zero(&v));
            for i in 0..len {
                v[i] = 0x80;
                assert!(!is_zero(&v), "len {len}, byte {i}");
                v[i] = 0;
            }
        }
    }

    #[test]
    fn looks_random_counts_distinct_sampled_bytes() {
        // The same verdict as counting with a table of the 256 values.
        let reference = |page: &[u8]| {
            let step = page.len() / 256;
            let mut seen = [false; 256];
            for i in 0..256 {
                seen[page[i * step] as usize] = true;
            }
            seen.iter().filter(|s| **s).count() > 140
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for k in 0..400 {
            // From few distinct values to many: the verdict flips around 140.
            let values = 1 + k % 256;
            let page: Vec<u8> = (0..PAGE_SIZE).map(|_| rng.gen_range(0..values) as u8).collect();
            assert_eq!(looks_random(&page), reference(&page), "{values} values");
        }
    }

    #[test]
    fn is_zero_edges() {
        assert!(is_zero(&[]));
        let mut v = vec![0u8; 4099];
        assert!(is_zero(&v));
        v[4098] = 1;
        assert!(!is_zero(&v));
        v[4098] = 0;
        v[0] = 1;
        assert!(!is_zero(&v));
    }
}
