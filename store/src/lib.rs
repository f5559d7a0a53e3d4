//! The Zap image store: a content-addressed chunk store for checkpoint images.
//!
//! ```text
//!   engine / cli ──chunks──▶ ChunkSink (writer) ──▶ packs/<id>.pack   (chunk bytes, zstd or raw)
//!                 ──manifest─▶ commit ──one synced RocksDB batch──▶ index/ (chunk → pack location,
//!                                                                   packs, manifests, summaries)
//!   restore ◀── materialize ◀── read_chunk (verify BLAKE3) ◀── packs + index
//! ```
//!
//! - [`ImageStore`] and [`ChunkSink`] are the narrow interface the engine uses; [`LocalStore`]
//!   (packs on the local disk, RocksDB index) is the embedded implementation. An object-store
//!   backend for many hosts would implement the same two traits.
//! - A chunk is stored once however many checkpoints reference it (the index is consulted before
//!   writing). Manifests ([`manifest`]) map images to chunks; they are sealed in a versioned,
//!   checksummed [`envelope`]. Pack files have their own header and checksummed trailer ([`pack`]).
//! - Atomicity: chunks go to pack files under temporary names, are fsynced and renamed; then a
//!   single synced RocksDB write batch records the chunks, the packs, the manifest and its summary.
//!   Nothing is visible before that batch; a writer killed at any point leaves only files that no
//!   index entry names, and the next open removes them.
//! - Every read checks the chunk against its id. `verify` reads everything; `gc` frees what no
//!   manifest references, rewriting or dropping packs.
#![deny(missing_docs)]

pub mod envelope;
mod error;
pub mod image;
mod index;
pub mod local;
mod maint;
pub mod manifest;
pub mod pack;
mod sys;
pub mod tree;

pub use error::{Result, StoreError};
pub use image::{clip, materialize, overlay, store_run};
pub use local::{read_located, DeferredImages, LocalStore, LocalWriter, StoreOptions};

pub use maint::{GcReport, StoreStats, VerifyProblem, VerifyReport};
pub use manifest::{CheckpointId, CheckpointSummary, Extent, ExtentData, Image, ImageKind, Manifest};
pub use zap_chunker::{Chunk, ChunkId};


/// The writing half of a store: chunks in, then one manifest that makes them a checkpoint.
pub trait ChunkSink {
    /// True when the store (or this writer) already holds `id`.
    fn contains(&mut self, id: &ChunkId) -> Result<bool>;
    /// Stores `chunk` unless it is already there. Returns true when it was new.
    fn put(&mut self, chunk: &Chunk) -> Result<bool>;
    /// [`ChunkSink::put`] of a chunk handed over by value, which a writer may store without
    /// copying its bytes. Returns true when it was new.
    fn put_owned(&mut self, chunk: Chunk) -> Result<bool> {
        self.put(&chunk)
    }
    /// Makes the chunks durable and the manifest visible, atomically. Consumes the writer.
    fn commit(self, manifest: Manifest) -> Result<CheckpointSummary>;
}

/// A chunk's bytes as read: whole, or sparse (zero pages left out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkBytes {
    /// The uncompressed bytes.
    Raw(Vec<u8>),
    /// The [`zap_chunker::Compression::Sparse`] form of `raw_len` bytes, already checked.
    Sparse {
        /// Uncompressed length.
        raw_len: usize,
        /// Page bitmap, then the non-zero pages.
        stored: Vec<u8>,
    },
}

/// A chunk read by [`ImageStore::read_chunks_into`], checked against its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadChunk {
    /// Its bytes, owned (whole, or sparse).
    Owned(ChunkBytes),
    /// Its [`zap_chunker::Compression::Sparse`] form, `raw_len` bytes in all, at `at` in the
    /// caller's buffer (read there without a copy of its own).
    SparseAt {
        /// Uncompressed length.
        raw_len: usize,
        /// Where its stored form lies in the buffer.
        at: std::ops::Range<usize>,
    },
}

impl ReadChunk {
    /// Uncompressed length.
    pub fn len(&self) -> usize {
        match self {
            ReadChunk::Owned(b) => b.len(),
            ReadChunk::SparseAt { raw_len, .. } => *raw_len,
        }
    }

    /// True for a chunk of no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// [`ChunkBytes::pieces`] of this chunk, whose buffer (if any) is `buf`.
    pub fn pieces<'a>(&'a self, buf: &'a [u8], from: usize, to: usize, skip_zero: bool) -> Vec<(usize, std::borrow::Cow<'a, [u8]>)> {
        match self {
            ReadChunk::Owned(b) => b.pieces(from, to, skip_zero),
            ReadChunk::SparseAt { raw_len, at } => sparse_pieces(*raw_len, &buf[at.clone()], from, to, skip_zero),
        }
    }
}

/// The pieces of bytes `[from, to)` of the chunk of `raw_len` bytes whose sparse form is
/// `stored` (see [`ChunkBytes::pieces`]).
fn sparse_pieces(raw_len: usize, stored: &[u8], from: usize, to: usize, skip_zero: bool) -> Vec<(usize, std::borrow::Cow<'_, [u8]>)> {
    use std::borrow::Cow;
    let mut out: Vec<(usize, Cow<'_, [u8]>)> = Vec::new();
    let pages = zap_chunker::sparse_pages(stored, raw_len).unwrap_or_default();
    let mut pos = from;
    for (off, bytes) in pages {
        let (a, b) = (off.max(from), (off + bytes.len()).min(to));
        if a >= b {
            continue;
        }
        if !skip_zero && a > pos {
            out.push((pos, Cow::Owned(vec![0; a - pos])));
        }
        out.push((a, Cow::Borrowed(&bytes[a - off..b - off])));
        pos = b;
    }
    if !skip_zero && pos < to {
        out.push((pos, Cow::Owned(vec![0; to - pos])));
    }
    out
}

impl ChunkBytes {
    /// Uncompressed length.
    pub fn len(&self) -> usize {
        match self {
            ChunkBytes::Raw(v) => v.len(),
            ChunkBytes::Sparse { raw_len, .. } => *raw_len,
        }
    }

    /// True for a chunk of no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pieces of bytes `[from, to)` of the chunk that must be written over memory that is
    /// zero already: (offset in the chunk, bytes). With `skip_zero`, all-zero pages (of the
    /// chunk's page grid) are left out; otherwise every byte is covered (zero pages as zeros).
    pub fn pieces(&self, from: usize, to: usize, skip_zero: bool) -> Vec<(usize, std::borrow::Cow<'_, [u8]>)> {
        use std::borrow::Cow;
        let page = zap_chunker::PAGE_SIZE;
        let mut out: Vec<(usize, Cow<'_, [u8]>)> = Vec::new();
        match self {
            ChunkBytes::Raw(v) => {
                let mut pos = from;
                while pos < to {
                    let end = ((pos / page + 1) * page).min(to);
                    let part = &v[pos..end];
                    if !(skip_zero && zap_chunker::is_zero(part)) {
                        match out.last_mut() {
                            Some((off, Cow::Borrowed(prev))) if *off + prev.len() == pos => *prev = &v[*off..end],
                            _ => out.push((pos, Cow::Borrowed(part))),
                        }
                    }
                    pos = end;
                }
                out
            }
            ChunkBytes::Sparse { raw_len, stored } => sparse_pieces(*raw_len, stored, from, to, skip_zero),
        }
    }
}

/// The narrow interface over a checkpoint image store.
pub trait ImageStore: Sync {
    /// The writer type.
    type Writer<'a>: ChunkSink
    where
        Self: 'a;
    /// Starts writing a checkpoint. Chunks written are invisible until commit.
    fn writer(&self) -> Result<Self::Writer<'_>>;
    /// Reads a chunk's uncompressed bytes, checked against its id.
    fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>>;
    /// Reads a chunk, checked against its id, in the form cheapest to get: a
    /// [`zap_chunker::Compression::Sparse`] chunk stays sparse (its zero pages need not be
    /// written anywhere). By default, the uncompressed bytes.
    fn read_chunk_bytes(&self, id: &ChunkId) -> Result<ChunkBytes> {
        self.read_chunk(id).map(ChunkBytes::Raw)
    }
    /// [`ImageStore::read_chunk_bytes`] of several chunks, in order; a store may look them all up
    /// at once. By default, one after the other.
    fn read_chunks_bytes(&self, ids: &[ChunkId]) -> Result<Vec<ChunkBytes>> {
        ids.iter().map(|id| self.read_chunk_bytes(id)).collect()
    }
    /// [`ImageStore::read_chunks_bytes`] into the caller's buffer `buf`, which is reused from
    /// call to call (its length only grows; what it held is overwritten): a store may read the
    /// chunks' stored bytes there with as few reads as they allow and hand sparse chunks out as
    /// ranges of it ([`ReadChunk::SparseAt`]), so that a restore reads, checks and writes them
    /// while they are in the CPU's cache. By default, [`ImageStore::read_chunks_bytes`].
    fn read_chunks_into(&self, ids: &[ChunkId], buf: &mut Vec<u8>) -> Result<Vec<ReadChunk>> {
        let _ = buf;
        Ok(self.read_chunks_bytes(ids)?.into_iter().map(ReadChunk::Owned).collect())
    }
    /// Loads a checkpoint's manifest.
    fn manifest(&self, id: &CheckpointId) -> Result<Manifest>;
    /// Lists checkpoints, oldest first.
    fn list(&self) -> Result<Vec<CheckpointSummary>>;
    /// Finds the checkpoint whose id starts with `prefix` (at least 4 hex digits).
    fn resolve(&self, prefix: &str) -> Result<CheckpointId>;
    /// Deletes a checkpoint's manifest; its chunks are freed by the next GC if unreferenced.
    fn delete(&self, id: &CheckpointId) -> Result<()>;
}
