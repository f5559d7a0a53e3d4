//! A session's chunk spool: the chunks a migration received (or took from the host's stores),
//! appended to one file as they arrive, found again through an in-memory index. It is an
//! [`ImageStore`] of its own, so the restore paths that read chunks (System V IPC, the console
//! log, a rebuilt pod's memory) read from it as from any store; it lives and dies with its
//! session directory.
//!
//! ```text
//!   <session dir>/chunks.spool   records: chunk id (32) │ compression (1) │ raw length (u32 LE) │ stored length (u32 LE) │ stored bytes
//! ```
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use zap_chunker::{decode_chunk, Chunk, ChunkId, Compression};
use zap_store::{CheckpointId, CheckpointSummary, ChunkSink, ImageStore, Manifest, StoreError};

const HEADER: u64 = 32 + 1 + 4 + 4;

#[derive(Clone, Copy)]
struct Loc {
    offset: u64,
    compression: Compression,
    raw_len: u32,
    stored_len: u32,
}

/// The spool of one session.
pub struct Spool {
    path: PathBuf,
    file: Mutex<Tail>,
    index: Mutex<HashMap<ChunkId, Loc>>,
}

/// The file and the records appended but not written yet.
struct Tail {
    file: File,
    /// Bytes in the file.
    flushed: u64,
    /// Records after them.
    buf: Vec<u8>,
}

/// Records are written to the file in pieces of about this size.
const FLUSH_AT: usize = 4 << 20;
/// [`Spool::for_each_in_order`] reads the file in pieces of at most this size.
const READ_AT: u64 = 8 << 20;

fn store_io(step: &'static str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::io(step, path, e)
}

impl Spool {
    /// Creates (truncates) the spool file `path`.
    pub fn create(path: &Path) -> zap_store::Result<Spool> {
        let file = File::options().read(true).write(true).create(true).truncate(true).open(path).map_err(|e| store_io("create spool", path, e))?;
        Ok(Spool { path: path.to_path_buf(), file: Mutex::new(Tail { file, flushed: 0, buf: Vec::new() }), index: Mutex::new(HashMap::new()) })
    }

    /// True when the spool holds `id`.
    pub fn has(&self, id: &ChunkId) -> bool {
        self.index.lock().expect("spool index").contains_key(id)
    }

    /// Number of chunks held.
    pub fn len(&self) -> usize {
        self.index.lock().expect("spool index").len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `chunk` (already checked against its id) unless it is there.
    pub fn add(&self, chunk: &Chunk) -> zap_store::Result<()> {
        if self.has(&chunk.id) {
            return Ok(());
        }
        let mut rec = Vec::with_capacity(HEADER as usize + chunk.data.len());
        rec.extend_from_slice(&chunk.id.0);
        rec.push(chunk.compression.code());
        rec.extend_from_slice(&chunk.raw_len.to_le_bytes());
        rec.extend_from_slice(&(chunk.data.len() as u32).to_le_bytes());
        rec.extend_from_slice(&chunk.data);
        let mut t = self.file.lock().expect("spool file");
        let offset = t.flushed + t.buf.len() as u64;
        t.buf.extend_from_slice(&rec);
        if t.buf.len() >= FLUSH_AT {
            let Tail { file, flushed, buf } = &mut *t;
            file.write_all(buf).map_err(|e| store_io("append to spool", &self.path, e))?;
            *flushed += buf.len() as u64;
            buf.clear();
        }
        drop(t);
        let loc = Loc { offset: offset + HEADER, compression: chunk.compression, raw_len: chunk.raw_len, stored_len: chunk.data.len() as u32 };
        self.index.lock().expect("spool index").insert(chunk.id, loc);
        Ok(())
    }

    /// The chunk `id` as stored (compressed or not), for copying into a store.
    pub fn stored(&self, id: &ChunkId) -> zap_store::Result<Chunk> {
        let loc = *self
            .index
            .lock()
            .expect("spool index")
            .get(id)
            .ok_or_else(|| StoreError::MissingChunk { id: id.to_hex(), context: "not in the migration spool".into() })?;
        let mut data = vec![0u8; loc.stored_len as usize];
        let t = self.file.lock().expect("spool file");
        if loc.offset >= t.flushed {
            let from = (loc.offset - t.flushed) as usize;
            data.copy_from_slice(&t.buf[from..from + loc.stored_len as usize]);
        } else {
            t.file.read_exact_at(&mut data, loc.offset).map_err(|e| store_io("read spool", &self.path, e))?;
        }
        Ok(Chunk { id: *id, raw_len: loc.raw_len, compression: loc.compression, data })
    }

    /// Every chunk id held.
    /// Hands every chunk to `f` (owned, as stored) in the order they were added, reading the
    /// file in sequential pieces of up to [`READ_AT`] bytes rather than once per chunk.
    pub fn for_each_in_order(&self, mut f: impl FnMut(Chunk) -> zap_store::Result<()>) -> zap_store::Result<()> {
        let mut locs: Vec<(ChunkId, Loc)> = self.index.lock().expect("spool index").iter().map(|(k, v)| (*k, *v)).collect();
        locs.sort_unstable_by_key(|l| l.1.offset);
        let t = self.file.lock().expect("spool file");
        let chunk = |id: ChunkId, l: &Loc, data: &[u8]| Chunk { id, raw_len: l.raw_len, compression: l.compression, data: data.to_vec() };
        let mut block = Vec::new();
        let mut i = 0;
        while i < locs.len() {
            let (id, l) = locs[i];
            if l.offset >= t.flushed {
                let from = (l.offset - t.flushed) as usize;
                f(chunk(id, &l, &t.buf[from..from + l.stored_len as usize]))?;
                i += 1;
                continue;
            }
            // The records from here on that end within READ_AT bytes (one at least).
            let start = l.offset;
            let mut j = i;
            let mut end = start;
            while j < locs.len() && locs[j].1.offset < t.flushed && (j == i || locs[j].1.offset + u64::from(locs[j].1.stored_len) - start <= READ_AT) {
                end = locs[j].1.offset + u64::from(locs[j].1.stored_len);
                j += 1;
            }
            block.resize((end - start) as usize, 0);
            t.file.read_exact_at(&mut block, start).map_err(|e| store_io("read spool", &self.path, e))?;
            for (id, l) in &locs[i..j] {
                let a = (l.offset - start) as usize;
                f(chunk(*id, l, &block[a..a + l.stored_len as usize]))?;
            }
            i = j;
        }
        Ok(())
    }

    /// The ids of the chunks held.
    pub fn ids(&self) -> Vec<ChunkId> {
        self.index.lock().expect("spool index").keys().copied().collect()
    }
}

/// The spool takes no checkpoints: its writer only adds chunks.
pub struct SpoolWriter<'a>(&'a Spool);

impl ChunkSink for SpoolWriter<'_> {
    fn contains(&mut self, id: &ChunkId) -> zap_store::Result<bool> {
        Ok(self.0.has(id))
    }

    fn put(&mut self, chunk: &Chunk) -> zap_store::Result<bool> {
        let new = !self.0.has(&chunk.id);
        self.0.add(chunk)?;
        Ok(new)
    }

    fn commit(self, manifest: Manifest) -> zap_store::Result<CheckpointSummary> {
        Err(StoreError::Invalid(format!("a migration spool keeps no checkpoints ({:?})", manifest.name)))
    }
}

impl ImageStore for Spool {
    type Writer<'a> = SpoolWriter<'a>;

    fn writer(&self) -> zap_store::Result<SpoolWriter<'_>> {
        Ok(SpoolWriter(self))
    }

    fn read_chunk(&self, id: &ChunkId) -> zap_store::Result<Vec<u8>> {
        let c = self.stored(id)?;
        decode_chunk(id, c.compression, c.raw_len as usize, &c.data)
            .map_err(|e| StoreError::Corrupt { what: format!("chunk {id} in the migration spool"), detail: e.to_string() })
    }

    fn manifest(&self, id: &CheckpointId) -> zap_store::Result<Manifest> {
        Err(StoreError::NotFound(id.to_hex()))
    }

    fn list(&self) -> zap_store::Result<Vec<CheckpointSummary>> {
        Ok(Vec::new())
    }

    fn resolve(&self, prefix: &str) -> zap_store::Result<CheckpointId> {
        Err(StoreError::NotFound(prefix.to_string()))
    }

    fn delete(&self, id: &CheckpointId) -> zap_store::Result<()> {
        Err(StoreError::NotFound(id.to_hex()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::create(&dir.path().join("chunks.spool")).unwrap();
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 13) as u8).collect();
        let chunks: Vec<Chunk> = zap_chunker::chunk_run(0, &data, &Default::default()).into_iter().filter_map(|c| c.chunk).collect();
        for c in &chunks {
            s.add(c).unwrap();
            s.add(c).unwrap();
        }
        assert_eq!(s.len(), chunks.len());
        assert_eq!(s.read_chunk(&chunks[0].id).unwrap(), data);
        assert!(s.read_chunk(&ChunkId([3; 32])).is_err());
    }

    /// Chunks come back in the order they were added, byte for byte, whether they are in the
    /// file (read in pieces) or still in the buffer.
    #[test]
    fn in_order_from_file_and_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::create(&dir.path().join("chunks.spool")).unwrap();
        // 40 chunks of 300 KiB: 12 MiB, past the flush size and more than one read piece.
        let chunks: Vec<Chunk> = (0..40u32)
            .map(|n| {
                let data: Vec<u8> = (0..300 * 1024u32).map(|i| (i.wrapping_mul(n + 7) >> 3) as u8).collect();
                Chunk { id: zap_chunker::ChunkId::of(&data), raw_len: data.len() as u32, compression: Compression::None, data }
            })
            .collect();
        for c in &chunks {
            s.add(c).unwrap();
        }
        let mut got = Vec::new();
        s.for_each_in_order(|c| {
            got.push(c);
            Ok(())
        })
        .unwrap();
        assert_eq!(got.len(), chunks.len());
        for (a, b) in got.iter().zip(&chunks) {
            assert!(a.id == b.id && a.data == b.data && a.raw_len == b.raw_len, "chunk {:?}", b.id);
        }
    }
}
