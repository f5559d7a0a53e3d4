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
use std::io::{BufWriter, Write};
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
pub struct PackWriter {
    id: PackId,
    tmp_path: PathBuf,
    final_path: PathBuf,
    out: BufWriter<File>,
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
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut header = Vec::with_capacity(HEADER_LEN as usize);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&0u32.to_le_bytes());
        out.write_all(&header).map_err(|e| StoreError::io("write pack header", &tmp_path, e))?;
        Ok(PackWriter { id, tmp_path, final_path, out, pos: HEADER_LEN, flushed: 0, entries: Vec::new() })
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

    /// Appends a chunk and returns where it is.
    pub fn append(&mut self, chunk: &Chunk) -> Result<ChunkLoc> {
        self.out
            .write_all(&chunk.data)
            .map_err(|e| StoreError::io("write chunk to pack", &self.tmp_path, e))?;
        let loc = ChunkLoc {
            pack: self.id,
            offset: self.pos,
            stored_len: chunk.data.len() as u32,
            raw_len: chunk.raw_len,
            compression: chunk.compression,
        };
        self.entries.push(PackEntry {
            id: chunk.id,
            offset: self.pos,
            stored_len: loc.stored_len,
            raw_len: chunk.raw_len,
            compression: chunk.compression.code(),
        });
        self.pos += chunk.data.len() as u64;
        if self.pos - self.flushed >= WRITEBACK_STEP {
            self.out.flush().map_err(|e| StoreError::io("write chunk to pack", &self.tmp_path, e))?;
            // Only a head start for the final fsync: a failure here changes nothing.
            let _ = crate::sys::start_writeback(self.out.get_ref(), self.flushed, self.pos - self.flushed);
            self.flushed = self.pos;
        }
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
        let path = self.tmp_path.clone();
        self.out.write_all(&trailer).map_err(|e| StoreError::io("write pack trailer", &path, e))?;
        self.out.write_all(&footer).map_err(|e| StoreError::io("write pack footer", &path, e))?;
        self.out.flush().map_err(|e| StoreError::io("flush pack", &path, e))?;
        let size = self.pos + trailer.len() as u64 + FOOTER_LEN;
        let _ = crate::sys::start_writeback(self.out.get_ref(), self.flushed, size - self.flushed);
        let file = self.out.get_ref().try_clone().map_err(|e| StoreError::io("flush pack", &path, e))?;
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
    file.read_exact_at(&mut buf, loc.offset).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            StoreError::Corrupt {
                what: format!("pack {}", path.display()),
                detail: format!(
                    "truncated: chunk at offset {} length {} lies past the end",
                    loc.offset, loc.stored_len
                ),
            }
        } else {
            StoreError::io("read chunk from pack", path, e)
        }
    })?;
    Ok(buf)
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
