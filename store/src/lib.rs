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

/// Stored bytes of a chunk read in place from a mapped pack (no copy).
#[derive(Clone)]
pub struct MappedBytes {
    map: std::sync::Arc<sys::Mapping>,
    range: std::ops::Range<usize>,
}

impl MappedBytes {
    fn new(map: std::sync::Arc<sys::Mapping>, range: std::ops::Range<usize>) -> Self {
        MappedBytes { map, range }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.map.bytes()[self.range.clone()]
    }
}

impl std::fmt::Debug for MappedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MappedBytes({} bytes at {})", self.range.len(), self.range.start)
    }
}

impl PartialEq for MappedBytes {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for MappedBytes {}

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
    /// The same, read in place from a mapped pack, already checked.
    SparseMapped {
        /// Uncompressed length.
        raw_len: usize,
        /// Page bitmap, then the non-zero pages.
        stored: MappedBytes,
    },
}

impl ChunkBytes {
    /// Uncompressed length.
    pub fn len(&self) -> usize {
        match self {
            ChunkBytes::Raw(v) => v.len(),
            ChunkBytes::Sparse { raw_len, .. } | ChunkBytes::SparseMapped { raw_len, .. } => *raw_len,
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
        let (raw_len, stored) = match self {
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
                return out;
            }
            ChunkBytes::Sparse { raw_len, stored } => (*raw_len, stored.as_slice()),
            ChunkBytes::SparseMapped { raw_len, stored } => (*raw_len, stored.as_slice()),
        };
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
    /// Loads a checkpoint's manifest.
    fn manifest(&self, id: &CheckpointId) -> Result<Manifest>;
    /// Lists checkpoints, oldest first.
    fn list(&self) -> Result<Vec<CheckpointSummary>>;
    /// Finds the checkpoint whose id starts with `prefix` (at least 4 hex digits).
    fn resolve(&self, prefix: &str) -> Result<CheckpointId>;
    /// Deletes a checkpoint's manifest; its chunks are freed by the next GC if unreferenced.
    fn delete(&self, id: &CheckpointId) -> Result<()>;
}
