//! The RocksDB index: column families and their record encodings.
//!
//! | column family | key | value |
//! |---|---|---|
//! | `chunks` | chunk id (32 bytes) | version 1, pack u64, offset u64, stored u32, raw u32, compression u8 (LE, 26 bytes) |
//! | `packs` | pack id (u64 BE) | version 1, file size u64, chunk count u32, chunk data bytes u64 (LE, 21 bytes) |
//! | `pending` | pack id (u64 BE) | empty: a pack being written; recovery may delete its file |
//! | `manifests` | checkpoint id (8 bytes) | sealed manifest (version 1: [`crate::manifest::Manifest`]; 2: images as tree roots) |
//! | `nodes` | node id (32 bytes, BLAKE3 of the value) | a manifest tree node ([`crate::tree`]) |
//! | `summaries` | checkpoint id (8 bytes) | sealed [`crate::manifest::CheckpointSummary`] |
//! | `default` | `format` | store format version (u32 LE) |
//! | `default` | `seq` | commit sequence number (u64 LE), +1 with every batch |
//!
//! The sequence number is also written, after each batch, to `<store>/index.seq` outside RocksDB.
//! An index whose number is below that file's has lost commits (a damaged RocksDB MANIFEST or
//! log rolled it back): opening it is refused instead of silently missing checkpoints.
use std::path::Path;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};
use zap_chunker::{ChunkId, Compression};

use crate::pack::{ChunkLoc, PackId};
use crate::{Result, StoreError};

pub const CF_CHUNKS: &str = "chunks";
pub const CF_PACKS: &str = "packs";
pub const CF_MANIFESTS: &str = "manifests";
pub const CF_SUMMARIES: &str = "summaries";
pub const CF_PENDING: &str = "pending";
pub const CF_NODES: &str = "nodes";
const CFS: [&str; 6] = [CF_CHUNKS, CF_PACKS, CF_MANIFESTS, CF_SUMMARIES, CF_PENDING, CF_NODES];
const FORMAT_KEY: &[u8] = b"format";
/// Store format version recorded in the index.
pub const STORE_FORMAT: u32 = 1;

/// A pack as the index records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackRecord {
    /// File size.
    pub size: u64,
    /// Chunks written into the pack.
    pub chunks: u32,
    /// Stored bytes of those chunks (the blob area).
    pub data_bytes: u64,
}

/// A raw (key, value) pair of a column family.
pub type Row = (Box<[u8]>, Box<[u8]>);

pub struct Index {
    db: DB,
    seq: std::sync::Mutex<u64>,
    seq_file: std::path::PathBuf,
    /// Opened with RocksDB's read-only open: every write is refused.
    read_only: bool,
    /// Something was written since the open: the log is flushed into table files on close.
    wrote: std::sync::atomic::AtomicBool,
}

impl Index {
    /// The column families the log may hold writes for.
    fn all_cfs(&self) -> Vec<&ColumnFamily> {
        let mut cfs: Vec<&ColumnFamily> = CFS.iter().map(|n| self.cf(n)).collect();
        cfs.extend(self.db.cf_handle(rocksdb::DEFAULT_COLUMN_FAMILY_NAME));
        cfs
    }

    /// Starts flushing what the log holds into table files in RocksDB's background threads,
    /// without waiting: the flush on close ([`Drop`]) then has little or nothing left to do
    /// and waits for this one. Nothing depends on it (the log holds every committed batch,
    /// synced), so a failure is only logged.
    pub fn start_flush(&self) {
        if self.read_only {
            return;
        }
        let mut opts = rocksdb::FlushOptions::default();
        opts.set_wait(false);
        if let Err(e) = self.db.flush_cfs_opt(&self.all_cfs(), &opts) {
            tracing::warn!(error = %e, "could not start flushing the index log (closing the store flushes it)");
        }
    }
}

impl Drop for Index {
    /// Flushes what this process wrote from the log into table files, so that the next open
    /// (a restore right after a checkpoint, above all) does not replay it: a read-only open
    /// replays a log into memory each time (2.2 MB for a 1 GiB checkpoint: 40-100 ms), a normal
    /// open flushes it first, at the same cost; a table file is opened in about 2 ms. Nothing
    /// depends on it: the log holds every committed batch already (synced), so a failure is only
    /// logged.
    fn drop(&mut self) {
        if self.read_only || !self.wrote.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let t = std::time::Instant::now();
        match self.db.flush_cfs_opt(&self.all_cfs(), &rocksdb::FlushOptions::default()) {
            Ok(()) => tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, "index log flushed into table files"),
            Err(e) => tracing::warn!(error = %e, "could not flush the index log on close (the next open replays it)"),
        }
    }
}

const SEQ_KEY: &[u8] = b"seq";

fn corrupt_value(cf: &str, key: &[u8], detail: &str) -> StoreError {
    StoreError::Corrupt { what: format!("index record {cf}/{}", hex::encode(key)), detail: detail.into() }
}

pub fn encode_loc(loc: &ChunkLoc) -> [u8; 26] {
    let mut v = [0u8; 26];
    v[0] = 1;
    v[1..9].copy_from_slice(&loc.pack.0.to_le_bytes());
    v[9..17].copy_from_slice(&loc.offset.to_le_bytes());
    v[17..21].copy_from_slice(&loc.stored_len.to_le_bytes());
    v[21..25].copy_from_slice(&loc.raw_len.to_le_bytes());
    v[25] = loc.compression.code();
    v
}

pub fn decode_loc(key: &[u8], v: &[u8]) -> Result<ChunkLoc> {
    if v.len() != 26 || v[0] != 1 {
        return Err(corrupt_value(CF_CHUNKS, key, "bad length or version"));
    }
    let compression =
        Compression::from_code(v[25]).ok_or_else(|| corrupt_value(CF_CHUNKS, key, "unknown compression"))?;
    Ok(ChunkLoc {
        pack: PackId(u64::from_le_bytes(v[1..9].try_into().expect("8"))),
        offset: u64::from_le_bytes(v[9..17].try_into().expect("8")),
        stored_len: u32::from_le_bytes(v[17..21].try_into().expect("4")),
        raw_len: u32::from_le_bytes(v[21..25].try_into().expect("4")),
        compression,
    })
}

pub fn encode_pack(rec: &PackRecord) -> [u8; 21] {
    let mut v = [0u8; 21];
    v[0] = 1;
    v[1..9].copy_from_slice(&rec.size.to_le_bytes());
    v[9..13].copy_from_slice(&rec.chunks.to_le_bytes());
    v[13..21].copy_from_slice(&rec.data_bytes.to_le_bytes());
    v
}

fn decode_pack(key: &[u8], v: &[u8]) -> Result<PackRecord> {
    if v.len() != 21 || v[0] != 1 {
        return Err(corrupt_value(CF_PACKS, key, "bad length or version"));
    }
    Ok(PackRecord {
        size: u64::from_le_bytes(v[1..9].try_into().expect("8")),
        chunks: u32::from_le_bytes(v[9..13].try_into().expect("4")),
        data_bytes: u64::from_le_bytes(v[13..21].try_into().expect("8")),
    })
}

pub fn chunk_key(key: &[u8]) -> Result<ChunkId> {
    let arr: [u8; 32] = key.try_into().map_err(|_| corrupt_value(CF_CHUNKS, key, "key is not 32 bytes"))?;
    Ok(ChunkId(arr))
}

impl Index {
    /// Opens the index; `create` only for a new store. An existing store whose index is missing
    /// is an error, never an empty index (which would disown every pack).
    ///
    /// `read_only` (never with `create`): RocksDB's read-only open, which replays the log into
    /// memory and writes nothing, where a normal open flushes what the log holds into a new
    /// table file and syncs it (30-60 ms on the first open after a checkpoint). The lost-commit
    /// check against the sequence file is made all the same; writes are refused
    /// ([`Index::mark_pending`], [`Batch::commit`]).
    pub fn open(path: &Path, seq_file: &Path, create: bool, read_only: bool) -> Result<Self> {
        if create && read_only {
            return Err(StoreError::Invalid(format!("index {}: cannot be created by a read-only open", path.display())));
        }
        if !create && !path.join("CURRENT").exists() {
            return Err(StoreError::Corrupt {
                what: format!("index {}", path.display()),
                detail: "missing (no CURRENT file); the packs are kept untouched".into(),
            });
        }
        let mut opts = Options::default();
        opts.create_if_missing(create);
        opts.create_missing_column_families(true);
        opts.set_paranoid_checks(true);
        // A writer killed in the middle of writing a batch to the log (a large write(2) can be cut
        // short by SIGKILL) leaves a torn last record: replay stops there and drops it. That
        // batch never committed (its commit is the synced write and then the sequence file).
        // Any record lost beyond that, a committed one, leaves the index behind the sequence
        // file, and the open below refuses the store instead of losing anything silently.
        opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::PointInTime);
        opts.set_max_open_files(256);
        // Opening preloads table files with up to this many threads per column family (16 by
        // default: about a hundred short-lived threads per open, which cost a command more
        // than the few files an index has).
        opts.set_max_file_opening_threads(1);
        opts.set_keep_log_file_num(4);
        let cfs = CFS.iter().map(|name| ColumnFamilyDescriptor::new(*name, Options::default()));
        let db = if read_only {
            // A log present is fine: it is replayed into memory (the last checkpoint's batch).
            DB::open_cf_descriptors_read_only(&opts, path, cfs, false).map_err(|e| StoreError::index("open read-only", e))?
        } else {
            DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| StoreError::index("open", e))?
        };
        let seq = match db.get(SEQ_KEY).map_err(|e| StoreError::index("read sequence", e))? {
            None => 0,
            Some(v) => u64::from_le_bytes(v.as_slice().try_into().map_err(|_| corrupt_value("default", SEQ_KEY, "bad sequence"))?),
        };
        // A writer killed while replacing the sequence file leaves its temporary copy; the real
        // file is still the previous, complete one (a read-only open leaves it to the next writer).
        let stale = seq_file.with_extension("seq.tmp");
        match if read_only { Ok(()) } else { std::fs::remove_file(&stale) } {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("remove stale sequence file", &stale, e)),
        }
        let on_disk = match std::fs::read_to_string(seq_file) {
            Ok(t) => t.trim().parse::<u64>().map_err(|_| StoreError::Corrupt {
                what: format!("sequence file {}", seq_file.display()),
                detail: format!("unparsable content {:?}", t.trim()),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(StoreError::io("read sequence file", seq_file, e)),
        };
        if seq < on_disk {
            return Err(StoreError::Corrupt {
                what: format!("index {}", path.display()),
                detail: format!(
                    "it is at commit {seq} but the store reached commit {on_disk}: the index lost recent commits \
                     (damaged MANIFEST or log); refusing to open so that nothing is lost or deleted"
                ),
            });
        }
        let index = Index { db, seq: std::sync::Mutex::new(seq), seq_file: seq_file.to_path_buf(), read_only, wrote: Default::default() };
        match index.db.get(FORMAT_KEY).map_err(|e| StoreError::index("read format", e))? {
            // Written by the first open for writing; a reader has nothing to add.
            None if read_only => {}
            None => index
                .db
                .put_opt(FORMAT_KEY, STORE_FORMAT.to_le_bytes(), &synced())
                .map_err(|e| StoreError::index("write format", e))?,
            Some(v) if v.as_slice() == STORE_FORMAT.to_le_bytes() => {}
            Some(v) => {
                return Err(StoreError::Invalid(format!(
                    "index at {} has store format {:?}, this build reads {STORE_FORMAT}",
                    path.display(),
                    v
                )))
            }
        }
        Ok(index)
    }

    pub fn cf(&self, name: &str) -> &ColumnFamily {
        self.db.cf_handle(name).expect("column family created at open")
    }

    pub fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkLoc>> {
        match self.db.get_pinned_cf(self.cf(CF_CHUNKS), id.0).map_err(|e| StoreError::index("read chunk", e))? {
            None => Ok(None),
            Some(v) => decode_loc(&id.0, &v).map(Some),
        }
    }

    pub fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_CHUNKS), id.0)
            .map_err(|e| StoreError::index("read chunk", e))?
            .is_some())
    }

    /// Locations of many chunks at once (batched reads), in the order of `ids`.
    pub fn chunks_of(&self, ids: &[ChunkId]) -> Result<Vec<Option<ChunkLoc>>> {
        let cf = self.cf(CF_CHUNKS);
        self.db
            .batched_multi_get_cf(cf, ids.iter().map(|id| &id.0[..]), false)
            .into_iter()
            .zip(ids)
            .map(|(r, id)| match r.map_err(|e| StoreError::index("read chunk", e))? {
                None => Ok(None),
                Some(v) => decode_loc(&id.0, &v).map(Some),
            })
            .collect()
    }

    /// Whether each of `ids` is stored, looked up at once.
    pub fn has_nodes(&self, ids: &[crate::tree::NodeId]) -> Result<Vec<bool>> {
        self.db
            .batched_multi_get_cf(self.cf(CF_NODES), ids.iter().map(|id| &id.0[..]), false)
            .into_iter()
            .map(|r| r.map(|v| v.is_some()).map_err(|e| StoreError::index("read manifest node", e)))
            .collect()
    }

    /// The stored bytes of many nodes at once, in the order of `ids`.
    pub fn nodes_of(&self, ids: &[crate::tree::NodeId]) -> Result<Vec<Option<Vec<u8>>>> {
        let cf = self.cf(CF_NODES);
        self.db
            .batched_multi_get_cf(cf, ids.iter().map(|id| &id.0[..]), false)
            .into_iter()
            .map(|r| r.map(|v| v.map(|v| v.to_vec())).map_err(|e| StoreError::index("read manifest node", e)))
            .collect()
    }

    /// Every node id in the index.
    pub fn node_ids(&self) -> Result<Vec<crate::tree::NodeId>> {
        self.db
            .iterator_cf(self.cf(CF_NODES), rocksdb::IteratorMode::Start)
            .map(|r| {
                let (k, _) = r.map_err(|e| StoreError::index("scan manifest nodes", e))?;
                let arr: [u8; 32] = k.as_ref().try_into().map_err(|_| corrupt_value(CF_NODES, &k, "key is not 32 bytes"))?;
                Ok(crate::tree::NodeId(arr))
            })
            .collect()
    }

    pub fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get_cf(self.cf(cf), key).map_err(|e| StoreError::index("read", e))
    }

    /// Every (key, value) of a column family, in key order.
    pub fn scan(&self, cf: &str) -> Result<Vec<Row>> {
        self.db
            .iterator_cf(self.cf(cf), rocksdb::IteratorMode::Start)
            .map(|r| r.map_err(|e| StoreError::index("scan", e)))
            .collect()
    }

    pub fn packs(&self) -> Result<Vec<(PackId, PackRecord)>> {
        self.scan(CF_PACKS)?
            .into_iter()
            .map(|(k, v)| {
                let key: [u8; 8] =
                    k.as_ref().try_into().map_err(|_| corrupt_value(CF_PACKS, &k, "key is not 8 bytes"))?;
                Ok((PackId(u64::from_be_bytes(key)), decode_pack(&k, &v)?))
            })
            .collect()
    }

    pub fn chunks(&self) -> Result<Vec<(ChunkId, ChunkLoc)>> {
        self.scan(CF_CHUNKS)?.into_iter().map(|(k, v)| Ok((chunk_key(&k)?, decode_loc(&k, &v)?))).collect()
    }

    /// Pack ids with a pending record: packs being (or left half) written.
    pub fn pending(&self) -> Result<Vec<PackId>> {
        self.scan(CF_PENDING)?
            .into_iter()
            .map(|(k, _)| {
                let key: [u8; 8] =
                    k.as_ref().try_into().map_err(|_| corrupt_value(CF_PENDING, &k, "key is not 8 bytes"))?;
                Ok(PackId(u64::from_be_bytes(key)))
            })
            .collect()
    }

    /// Tests: close without flushing the log, as a writer killed after its last commit does.
    #[cfg(test)]
    pub(crate) fn forget_writes(&self) {
        self.wrote.store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Refuses a write (`step`) to an index opened read-only.
    fn writable(&self, step: &str) -> Result<()> {
        if self.read_only {
            return Err(StoreError::Invalid(format!("{step}: the store was opened read-only")));
        }
        Ok(())
    }

    /// Durably records that pack `id` is about to be written.
    pub fn mark_pending(&self, id: PackId) -> Result<()> {
        self.writable("record pending pack")?;
        self.wrote.store(true, std::sync::atomic::Ordering::Relaxed);
        self.db
            .put_cf_opt(self.cf(CF_PENDING), id.0.to_be_bytes(), b"", &synced())
            .map_err(|e| StoreError::index("record pending pack", e))
    }

    pub fn batch(&self) -> Batch<'_> {
        Batch { index: self, batch: WriteBatch::default() }
    }
}

pub fn synced() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

/// An atomic group of index updates.
pub struct Batch<'a> {
    index: &'a Index,
    batch: WriteBatch,
}

impl Batch<'_> {
    pub fn put_chunk(&mut self, id: &ChunkId, loc: &ChunkLoc) {
        self.batch.put_cf(self.index.cf(CF_CHUNKS), id.0, encode_loc(loc));
    }
    pub fn delete_chunk(&mut self, id: &ChunkId) {
        self.batch.delete_cf(self.index.cf(CF_CHUNKS), id.0);
    }
    pub fn put_pack(&mut self, id: PackId, rec: &PackRecord) {
        self.batch.put_cf(self.index.cf(CF_PACKS), id.0.to_be_bytes(), encode_pack(rec));
    }
    pub fn delete_pack(&mut self, id: PackId) {
        self.batch.delete_cf(self.index.cf(CF_PACKS), id.0.to_be_bytes());
    }
    pub fn set_pending(&mut self, id: PackId) {
        self.batch.put_cf(self.index.cf(CF_PENDING), id.0.to_be_bytes(), b"");
    }
    pub fn clear_pending(&mut self, id: PackId) {
        self.batch.delete_cf(self.index.cf(CF_PENDING), id.0.to_be_bytes());
    }
    pub fn put_node(&mut self, id: &crate::tree::NodeId, bytes: &[u8]) {
        self.batch.put_cf(self.index.cf(CF_NODES), id.0, bytes);
    }
    pub fn delete_node(&mut self, id: &crate::tree::NodeId) {
        self.batch.delete_cf(self.index.cf(CF_NODES), id.0);
    }
    pub fn put(&mut self, cf: &str, key: &[u8], value: &[u8]) {
        self.batch.put_cf(self.index.cf(cf), key, value);
    }
    pub fn delete(&mut self, cf: &str, key: &[u8]) {
        self.batch.delete_cf(self.index.cf(cf), key);
    }
    /// Writes the batch durably (synced WAL) and atomically, with the next sequence number,
    /// then records that number in the sequence file.
    pub fn commit(mut self, step: &'static str) -> Result<()> {
        self.index.writable(step)?;
        self.index.wrote.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut seq = self.index.seq.lock().expect("sequence lock");
        let next = *seq + 1;
        self.batch.put(SEQ_KEY, next.to_le_bytes());
        self.index.db.write_opt(self.batch, &synced()).map_err(|e| StoreError::index(step, e))?;
        *seq = next;
        let file = &self.index.seq_file;
        let tmp = file.with_extension("seq.tmp");
        std::fs::write(&tmp, format!("{next}\n"))
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|_| std::fs::rename(&tmp, file))
            .map_err(|e| StoreError::io("write sequence file", file, e))?;
        if let Some(dir) = file.parent() {
            crate::local::sync_dir(dir)?;
        }
        Ok(())
    }
}
