//! Pack files: many chunks in one file.
//!
//! ```text
//! header   8  magic b"ZAPPACK\0"
//!          4  format version (u32 LE) = 1
//!          4  reserved, 0
//! blobs       stored chunk bytes, back to back (offsets are recorded in the index and trailer)
//! trailer  n  postcard Vec<PackEntry>: every chunk in the pack with its offset and lengths
//! footer   8  trailer offset (u64 LE)
//!          4  trailer length (u32 LE)
//!         32  BLAKE3 of the trailer
//!          8  magic b"ZAPPEND\0"
//! ```
//!
//! The index in RocksDB is what readers use; the trailer makes a pack self-describing so that
//! `verify` can cross-check it and the index could be rebuilt from the packs. Packs are written
//! under a temporary name, fsynced, then renamed into `packs/`; a pack counts only once the index
//! records it (see [`crate::local`]).
use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zap_chunker::{Chunk, ChunkId, Compression};

use crate::{Result, StoreError};

const MAGIC: &[u8; 8] = b"ZAPPACK\0";
const END_MAGIC: &[u8; 8] = b"ZAPPEND\0";
const VERSION: u32 = 1;
/// Bytes of the pack header.
pub const HEADER_LEN: u64 = 16;
const FOOTER_LEN: u64 = 8 + 4 + 32 + 8;
/// Writeback of a pack being written is started every this many bytes.
pub const WRITEBACK_STEP: u64 = 16 << 20;
/// Bytes queued before they are written out with one `writev`.
const QUEUE_BYTES: usize = 4 << 20;
/// Pieces queued before they are written out (well under `IOV_MAX`, 1024).
const QUEUE_PIECES: usize = 512;
/// Stored chunks at least this long are queued as they are (owned chunks) instead of copied
/// into a staging buffer.
const OWN_MIN: usize = 4096;
/// Capacity of a staging buffer for small or borrowed chunks.
const STAGING: usize = 256 << 10;

/// Identifier of a pack file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PackId(pub u64);

impl PackId {
    /// File name of the pack.
    pub fn file_name(&self) -> String {
        format!("{:016x}.pack", self.0)
    }

    /// Parses a pack file name.
    pub fn from_file_name(name: &str) -> Option<Self> {
        let hex = name.strip_suffix(".pack")?;
        (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok().map(PackId)).flatten()
    }
}

impl std::fmt::Display for PackId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Where a chunk lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkLoc {
    /// The pack.
    pub pack: PackId,
    /// Byte offset of the stored bytes in the pack.
    pub offset: u64,
    /// Stored length.
    pub stored_len: u32,
    /// Uncompressed length.
    pub raw_len: u32,
    /// Encoding.
    pub compression: Compression,
}

/// A trailer entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackEntry {
    /// The chunk.
    pub id: ChunkId,
    /// Offset in the pack.
    pub offset: u64,
    /// Stored length.
    pub stored_len: u32,
    /// Uncompressed length.
    pub raw_len: u32,
    /// Compression code.
    pub compression: u8,
}

/// Appends chunks to a new pack file.
///
/// Bytes are queued and written with one `writev` per [`QUEUE_BYTES`]: a chunk handed over by
/// value ([`PackWriter::append_owned`]) is written from its own buffer, never copied in user
/// space; small and borrowed chunks are copied into a staging buffer, as a buffered writer would.
pub struct PackWriter {
    id: PackId,
    tmp_path: PathBuf,
    final_path: PathBuf,
    file: File,
    /// Buffers to write, in order; `staging` says whether the last one may take more bytes.
    queue: Vec<Vec<u8>>,
    queued: usize,
    staging: bool,
    /// Bytes appended (written or queued).
    pos: u64,
    /// Bytes whose writeback was started.
    flushed: u64,
    entries: Vec<PackEntry>,
}
/// A complete pack under its temporary name, not yet durable: [`FinishedPack::sync_and_rename`]
/// makes it so. Dropped before that, its file is removed.
pub struct FinishedPack {
    /// The pack.
    pub id: PackId,
    /// File size.
    pub size: u64,
    /// Its chunks.
    pub entries: Vec<PackEntry>,
    file: File,
    tmp_path: PathBuf,
    final_path: PathBuf,
    renamed: bool,
}

impl FinishedPack {
    /// fsyncs the pack and renames it into place. The caller fsyncs the directory.
    pub fn sync_and_rename(&mut self) -> Result<()> {
        self.file.sync_all().map_err(|e| StoreError::io("fsync pack", &self.tmp_path, e))?;
        std::fs::rename(&self.tmp_path, &self.final_path).map_err(|e| StoreError::io("rename pack into place", &self.final_path, e))?;
        self.renamed = true;
        Ok(())
    }
}

impl Drop for FinishedPack {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}

impl PackWriter {
    /// Starts pack `id` under `dir`, writing to a temporary name first.
    pub fn create(dir: &Path, id: PackId) -> Result<Self> {
        let final_path = dir.join(id.file_name());
        let tmp_path = dir.join(format!("{}.tmp", id.file_name()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp_path)
            .map_err(|e| StoreError::io("create pack", &tmp_path, e))?;
        let mut w = PackWriter {
            id,
            tmp_path,
            final_path,
            file,
            queue: Vec::new(),
            queued: 0,
            staging: false,
            pos: 0,
            flushed: 0,
            entries: Vec::new(),
        };
        let mut header = Vec::with_capacity(HEADER_LEN as usize);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        w.push_copy(&header);
        Ok(w)
    }

    /// The pack being written.
    pub fn id(&self) -> PackId {
        self.id
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.pos
    }

    /// True when no chunk was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Queues a copy of `bytes` (into the last staging buffer while it has room).
    fn push_copy(&mut self, bytes: &[u8]) {
        match self.queue.last_mut() {
            Some(last) if self.staging && last.capacity() - last.len() >= bytes.len() => last.extend_from_slice(bytes),
            _ => {
                let mut buf = Vec::with_capacity(STAGING.max(bytes.len()));
                buf.extend_from_slice(bytes);
                self.queue.push(buf);
                self.staging = true;
            }
        }
        self.queued += bytes.len();
        self.pos += bytes.len() as u64;
    }

    /// Queues `bytes` as they are.
    fn push_owned(&mut self, bytes: Vec<u8>) {
        if bytes.len() < OWN_MIN {
            return self.push_copy(&bytes);
        }
        self.queued += bytes.len();
        self.pos += bytes.len() as u64;
        self.queue.push(bytes);
        self.staging = false;
    }

    /// Writes the queue out, all of it, with `writev`.
    fn write_queue(&mut self) -> Result<()> {
        let mut slices: Vec<IoSlice<'_>> = self.queue.iter().map(|b| IoSlice::new(b)).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match self.file.write_vectored(rest) {
                Ok(0) => {
                    let e = std::io::Error::new(std::io::ErrorKind::WriteZero, "writev wrote nothing");
                    return Err(StoreError::io("write chunk to pack", &self.tmp_path, e));
                }
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(StoreError::io("write chunk to pack", &self.tmp_path, e)),
            }
        }
        self.queue.clear();
        self.queued = 0;
        self.staging = false;
        Ok(())
    }

    /// After a chunk was queued: writes the queue when it is full, and starts the writeback of
    /// every [`WRITEBACK_STEP`] written.
    fn after_append(&mut self) -> Result<()> {
        if self.queued >= QUEUE_BYTES || self.queue.len() >= QUEUE_PIECES {
            self.write_queue()?;
            if self.pos - self.flushed >= WRITEBACK_STEP {
                // Only a head start for the final fsync: a failure here changes nothing.
                let _ = crate::sys::start_writeback(&self.file, self.flushed, self.pos - self.flushed);
                self.flushed = self.pos;
            }
        }
        Ok(())
    }

    /// Records `chunk` (its stored bytes `len` long) as appended at the current end.
    fn record(&mut self, chunk: &Chunk, len: usize) -> ChunkLoc {
        let loc = ChunkLoc { pack: self.id, offset: self.pos, stored_len: len as u32, raw_len: chunk.raw_len, compression: chunk.compression };
        self.entries.push(PackEntry {
            id: chunk.id,
            offset: self.pos,
            stored_len: loc.stored_len,
            raw_len: chunk.raw_len,
            compression: chunk.compression.code(),
        });
        loc
    }

    /// Appends a chunk and returns where it is (its bytes are copied).
    pub fn append(&mut self, chunk: &Chunk) -> Result<ChunkLoc> {
        let loc = self.record(chunk, chunk.data.len());
        self.push_copy(&chunk.data);
        self.after_append()?;
        Ok(loc)
    }

    /// Appends a chunk handed over by value and returns where it is: its bytes are written from
    /// its own buffer.
    pub fn append_owned(&mut self, mut chunk: Chunk) -> Result<ChunkLoc> {
        let loc = self.record(&chunk, chunk.data.len());
        self.push_owned(std::mem::take(&mut chunk.data));
        self.after_append()?;
        Ok(loc)
    }

    /// Writes the trailer, fsyncs and renames the pack into place. The caller fsyncs the directory.
    pub fn finish(self) -> Result<(PackId, u64, Vec<PackEntry>)> {
        let mut done = self.complete()?;
        done.sync_and_rename()?;
        Ok((done.id, done.size, std::mem::take(&mut done.entries)))
    }

    /// Writes the trailer and starts its writeback, without waiting: the pack is complete but
    /// not durable until [`FinishedPack::sync_and_rename`].
    pub fn complete(mut self) -> Result<FinishedPack> {
        let trailer = postcard::to_stdvec(&self.entries).expect("postcard encodes pack entries");
        let mut footer = Vec::with_capacity(FOOTER_LEN as usize);
        footer.extend_from_slice(&self.pos.to_le_bytes());
        footer.extend_from_slice(&(trailer.len() as u32).to_le_bytes());
        footer.extend_from_slice(blake3::hash(&trailer).as_bytes());
        footer.extend_from_slice(END_MAGIC);
        let size = self.pos + trailer.len() as u64 + FOOTER_LEN;
        self.push_owned(trailer);
        self.push_copy(&footer);
        self.write_queue()?;
        let _ = crate::sys::start_writeback(&self.file, self.flushed, size - self.flushed);
        let path = self.tmp_path.clone();
        let file = self.file.try_clone().map_err(|e| StoreError::io("flush pack", &path, e))?;
        let done = FinishedPack {
            id: self.id,
            size,
            entries: std::mem::take(&mut self.entries),
            file,
            tmp_path: self.tmp_path.clone(),
            final_path: self.final_path.clone(),
            renamed: false,
        };
        // From here on the finished pack owns the temporary file; this writer's drop must not
        // remove it.
        self.tmp_path = PathBuf::new();
        Ok(done)
    }
}

impl Drop for PackWriter {
    fn drop(&mut self) {
        // An abandoned pack (error or panic before finish) is removed; after complete() the
        // finished pack owns the file and this is a no-op.
        if !self.tmp_path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}

/// Reads the stored bytes of one chunk from an open pack.
pub fn read_stored(file: &File, path: &Path, loc: &ChunkLoc) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; loc.stored_len as usize];
    read_run(file, path, loc.offset, &mut buf)?;
    Ok(buf)
}

/// Reads `buf.len()` bytes of an open pack from `offset` (the stored bytes of one chunk or of
/// several back to back). A pack shorter than that (truncated, even while a restore reads it)
/// is an error naming it.
pub fn read_run(file: &File, path: &Path, offset: u64, buf: &mut [u8]) -> Result<()> {
    file.read_exact_at(buf, offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            let size = file.metadata().map(|m| format!("{} bytes", m.len())).unwrap_or_else(|_| "unknown size".into());
            StoreError::Corrupt {
                what: format!("pack {}", path.display()),
                detail: format!("truncated: chunk bytes at offset {offset} length {} lie past the end (the file has {size})", buf.len()),
            }
        } else {
            StoreError::io("read chunk from pack", path, e)
        }
    })
}

/// Reads and checks a pack's header and trailer.
pub fn read_trailer(file: &File, path: &Path) -> Result<Vec<PackEntry>> {
    let corrupt = |detail: String| StoreError::Corrupt { what: format!("pack {}", path.display()), detail };
    let size = file.metadata().map_err(|e| StoreError::io("stat pack", path, e))?.len();
    if size < HEADER_LEN + FOOTER_LEN {
        return Err(corrupt(format!("truncated: {size} bytes")));
    }
    let mut header = [0u8; HEADER_LEN as usize];
    file.read_exact_at(&mut header, 0).map_err(|e| StoreError::io("read pack header", path, e))?;
    if &header[..8] != MAGIC {
        return Err(corrupt("bad header magic".into()));
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(corrupt(format!("unsupported pack version {version}")));
    }
    if header[12..16] != [0, 0, 0, 0] {
        return Err(corrupt("reserved header bytes are not zero".into()));
    }
    let mut footer = [0u8; FOOTER_LEN as usize];
    file.read_exact_at(&mut footer, size - FOOTER_LEN)
        .map_err(|e| StoreError::io("read pack footer", path, e))?;
    if &footer[44..52] != END_MAGIC {
        return Err(corrupt("bad footer magic (truncated or overwritten)".into()));
    }
    let t_off = u64::from_le_bytes(footer[0..8].try_into().expect("8 bytes"));
    let t_len = u64::from(u32::from_le_bytes(footer[8..12].try_into().expect("4 bytes")));
    if t_off < HEADER_LEN || t_off + t_len + FOOTER_LEN != size {
        return Err(corrupt(format!("trailer at {t_off}+{t_len} does not fit a {size}-byte pack")));
    }
    let mut trailer = vec![0u8; t_len as usize];
    file.read_exact_at(&mut trailer, t_off).map_err(|e| StoreError::io("read pack trailer", path, e))?;
    if blake3::hash(&trailer).as_bytes() != &footer[12..44] {
        return Err(corrupt("trailer checksum mismatch".into()));
    }
    let entries: Vec<PackEntry> =
        postcard::from_bytes(&trailer).map_err(|e| corrupt(format!("trailer does not decode: {e}")))?;
    for e in &entries {
        if e.offset < HEADER_LEN || e.offset + u64::from(e.stored_len) > t_off {
            return Err(corrupt(format!("entry {} at {}+{} outside the blob area", e.id, e.offset, e.stored_len)));
        }
    }
    Ok(entries)
}
