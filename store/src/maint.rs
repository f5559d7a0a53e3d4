//! Store maintenance: verify, garbage collection, statistics.
//!
//! GC is mark and sweep: every manifest is decoded and the tree nodes it reaches and the chunks
//! it references are marked; unmarked tree nodes are removed first (one batch), then index
//! entries of unmarked chunks, packs with no live chunk are dropped, and packs whose
//! dead share reaches the repack threshold are rewritten with only their live chunks. If any
//! manifest cannot be decoded GC stops without freeing anything: it cannot know what that
//! checkpoint needs. Each step is crash-safe: new packs are durable before the index batch that
//! points at them, and old pack files are deleted only after that batch; whatever a crash leaves
//! is an unrecorded pack file, which the next open removes.
use std::collections::{BTreeMap, HashMap, HashSet};

use rayon::prelude::*;
use serde::Serialize;
use zap_chunker::{Chunk, ChunkId};

use crate::index::{PackRecord, CF_MANIFESTS};
use crate::local::{sync_dir, LocalStore};
use crate::manifest::CheckpointId;
use crate::pack::{self, ChunkLoc, PackId};
use crate::tree::NodeId;
use crate::{ImageStore, Result, StoreError};

/// One problem `verify` found.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyProblem {
    /// The damaged or missing object.
    pub object: String,
    /// What is wrong.
    pub detail: String,
}

/// What `verify` found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    /// Packs read.
    pub packs: u64,
    /// Chunks read and checked against their ids.
    pub chunks: u64,
    /// Stored bytes read.
    pub bytes: u64,
    /// Checkpoints whose manifests were checked.
    pub checkpoints: u64,
    /// Everything wrong, each on its object.
    pub problems: Vec<VerifyProblem>,
    /// Manifest tree nodes that no checkpoint reaches (freed by the next GC).
    pub unreachable_nodes: u64,
    /// Checkpoints that cannot be restored, with the number of bad chunks each references.
    pub broken: BTreeMap<String, u64>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What GC did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    /// Checkpoints whose manifests kept chunks alive.
    pub checkpoints: u64,
    /// Chunks still referenced.
    pub live_chunks: u64,
    /// Index entries of unreferenced chunks removed.
    pub freed_chunks: u64,
    /// Manifest tree nodes no checkpoint reaches, removed.
    pub freed_nodes: u64,
    /// Packs deleted outright.
    pub packs_deleted: u64,
    /// Packs rewritten with only their live chunks.
    pub packs_rewritten: u64,
    /// Bytes of pack files before.
    pub bytes_before: u64,
    /// Bytes of pack files after.
    pub bytes_after: u64,
}

/// Store-wide figures.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StoreStats {
    /// Checkpoints.
    pub checkpoints: u64,
    /// Bytes the checkpoints describe, zero extents included.
    pub logical_bytes: u64,
    /// Of which in zero extents (never stored).
    pub zero_bytes: u64,
    /// Bytes in chunk extents over all checkpoints (what a store without dedup would hold).
    pub data_bytes: u64,
    /// Distinct chunks in the index.
    pub chunks: u64,
    /// Their uncompressed bytes.
    pub chunk_raw_bytes: u64,
    /// Their stored bytes.
    pub chunk_stored_bytes: u64,
    /// Pack files.
    pub packs: u64,
    /// Bytes of pack files on disk (includes dead chunks until GC rewrites them).
    pub pack_bytes: u64,
    /// data_bytes / chunk_raw_bytes.
    pub dedup_ratio: f64,
    /// chunk_raw_bytes / chunk_stored_bytes.
    pub compression_ratio: f64,
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        1.0
    } else {
        a as f64 / b as f64
    }
}

impl LocalStore {
    /// Decodes every manifest (reading and checking their tree nodes, each of which is passed to
    /// `visit`). Errors are returned per checkpoint.
    fn all_manifests(&self, visit: &mut dyn FnMut(&NodeId)) -> Result<Vec<(String, Result<crate::Manifest>)>> {
        Ok(self
            .index
            .scan(CF_MANIFESTS)?
            .into_iter()
            .map(|(k, v)| {
                let id = hex::encode(&k);
                let m = self.decode_manifest_visiting(&id, &v, visit);
                (id, m)
            })
            .collect())
    }

    /// Reads every pack and chunk, checks each chunk against its id and each manifest against the
    /// index, and reports every problem with the checkpoints it breaks. `progress` is called with
    /// (stored bytes checked, total).
    pub fn verify(&self, progress: &(dyn Fn(u64, u64) + Sync)) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let packs: HashMap<PackId, PackRecord> = self.index.packs()?.into_iter().collect();
        let chunks = self.index.chunks()?;
        let total: u64 = chunks.iter().map(|(_, l)| u64::from(l.stored_len)).sum();
        let mut by_pack: BTreeMap<PackId, Vec<(ChunkId, ChunkLoc)>> = BTreeMap::new();
        for (id, loc) in &chunks {
            by_pack.entry(loc.pack).or_default().push((*id, *loc));
        }
        let mut bad: HashMap<ChunkId, String> = HashMap::new();
        // Packs: header and trailer, and the trailer agrees with the index.
        for (pid, rec) in &packs {
            report.packs += 1;
            let path = self.pack_path(*pid);
            let checked = std::fs::File::open(&path)
                .map_err(|e| StoreError::io("open pack", &path, e))
                .and_then(|f| {
                    let size = f.metadata().map_err(|e| StoreError::io("stat pack", &path, e))?.len();
                    if size != rec.size {
                        return Err(StoreError::Corrupt {
                            what: format!("pack {pid}"),
                            detail: format!("{size} bytes on disk, index records {}", rec.size),
                        });
                    }
                    pack::read_trailer(&f, &path)
                });
            match checked {
                Ok(entries) => {
                    let listed: HashSet<(ChunkId, u64)> = entries.iter().map(|e| (e.id, e.offset)).collect();
                    for (id, loc) in by_pack.get(pid).into_iter().flatten() {
                        if !listed.contains(&(*id, loc.offset)) {
                            report.problems.push(VerifyProblem {
                                object: format!("chunk {id}"),
                                detail: format!("index places it in pack {pid} at {}, the pack's trailer does not", loc.offset),
                            });
                        }
                    }
                }
                Err(e) => report.problems.push(VerifyProblem { object: format!("pack {pid}"), detail: e.to_string() }),
            }
        }
        // Chunks: read, decompress, hash; in parallel.
        let done = std::sync::atomic::AtomicU64::new(0);
        let results: Vec<(ChunkId, Option<String>)> = chunks
            .par_iter()
            .map(|(id, loc)| {
                let r = if packs.contains_key(&loc.pack) {
                    self.read_at(id, loc).err().map(|e| e.to_string())
                } else {
                    Some(format!("its pack {} is not in the index", loc.pack))
                };
                let d = done.fetch_add(u64::from(loc.stored_len), std::sync::atomic::Ordering::Relaxed);
                progress(d + u64::from(loc.stored_len), total);
                (*id, r)
            })
            .collect();
        for (id, err) in results {
            report.chunks += 1;
            if let Some(e) = err {
                report.problems.push(VerifyProblem { object: format!("chunk {id}"), detail: e.clone() });
                bad.insert(id, e);
            }
        }
        report.bytes = total;
        // Manifests: decode, and every chunk they need is present and sound.
        let present: HashMap<ChunkId, ChunkLoc> = chunks.into_iter().collect();
        let mut reachable: HashSet<NodeId> = HashSet::new();
        for (cid, m) in self.all_manifests(&mut |id| {
            reachable.insert(*id);
        })? {
            report.checkpoints += 1;
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    report.problems.push(VerifyProblem { object: format!("checkpoint {cid}"), detail: e.to_string() });
                    report.broken.insert(cid, 0);
                    continue;
                }
            };
            let mut broken_chunks: HashSet<ChunkId> = HashSet::new();
            for (img, ext, id) in m.chunk_refs() {
                if bad.contains_key(&id) {
                    broken_chunks.insert(id);
                } else if !present.contains_key(&id) && broken_chunks.insert(id) {
                    report.problems.push(VerifyProblem {
                        object: format!("chunk {id}"),
                        detail: format!("missing; checkpoint {cid} image {:?} needs it at {:#x}", img.name, ext.start),
                    });
                }
            }
            if !broken_chunks.is_empty() {
                report.broken.insert(cid, broken_chunks.len() as u64);
            }
        }
        // Tree nodes no checkpoint reaches are garbage (a crash between GC's steps, or a
        // deleted checkpoint): reported, not a problem.
        report.unreachable_nodes = self.index.node_ids()?.iter().filter(|id| !reachable.contains(id)).count() as u64;
        // Pack files the index does not know (another process may be writing them).
        if let Ok(dir) = std::fs::read_dir(self.packs_dir()) {
            for entry in dir.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(pid) = PackId::from_file_name(&name) {
                    if !packs.contains_key(&pid) {
                        report.problems.push(VerifyProblem {
                            object: format!("pack {pid}"),
                            detail: "file not recorded in the index (being written by another process, or the index \
                                     lost its record); kept untouched"
                                .into(),
                        });
                    }
                }
            }
        }
        Ok(report)
    }

    /// Frees chunks no checkpoint references. Packs whose dead bytes are at least
    /// `repack_threshold` (0.0..=1.0) of their size are rewritten; packs with no live chunk are
    /// deleted. Blocks writers of this process while it runs.
    pub fn gc(&self, repack_threshold: f64) -> Result<GcReport> {
        let _exclusive = self.gc_lock.write().expect("gc lock");
        // What this process remembers of stored trees may be freed below.
        *self.known.lock().expect("known trees lock") = Default::default();
        let mut report = GcReport::default();
        let mut live: HashSet<ChunkId> = HashSet::new();
        let mut live_nodes: HashSet<NodeId> = HashSet::new();
        for (cid, m) in self.all_manifests(&mut |id| {
            live_nodes.insert(*id);
        })? {
            let m = m.map_err(|e| {
                StoreError::Invalid(format!("gc stopped, nothing freed: checkpoint {cid} cannot be read ({e})"))
            })?;
            live.extend(m.chunk_refs().map(|(_, _, id)| id));
            report.checkpoints += 1;
        }
        // Unreachable tree nodes go first, in a batch of their own: a stored node promises that
        // its chunks exist (see the tree module), so no node may outlive a chunk it names.
        let dead_nodes: Vec<NodeId> = self.index.node_ids()?.into_iter().filter(|id| !live_nodes.contains(id)).collect();
        if !dead_nodes.is_empty() {
            let mut batch = self.index.batch();
            for id in &dead_nodes {
                batch.delete_node(id);
            }
            batch.commit("gc: drop manifest nodes")?;
        }
        report.freed_nodes = dead_nodes.len() as u64;
        let packs: BTreeMap<PackId, PackRecord> = self.index.packs()?.into_iter().collect();
        report.bytes_before = packs.values().map(|r| r.size).sum();
        // Per pack: its live chunks (with locations) and its dead ones.
        type LiveDead = (Vec<(ChunkId, ChunkLoc)>, Vec<ChunkId>);
        let mut by_pack: BTreeMap<PackId, LiveDead> = BTreeMap::new();
        for (id, loc) in self.index.chunks()? {
            let slot = by_pack.entry(loc.pack).or_default();
            if live.contains(&id) {
                slot.0.push((id, loc));
            } else {
                slot.1.push(id);
            }
        }
        report.live_chunks = by_pack.values().map(|(l, _)| l.len() as u64).sum();
        for (pid, rec) in &packs {
            let (alive, dead) = by_pack.remove(pid).unwrap_or_default();
            // Dead bytes from the pack's own record: chunks freed by an earlier GC that did not
            // rewrite the pack are counted too.
            let live_bytes: u64 = alive.iter().map(|(_, l)| u64::from(l.stored_len)).sum();
            let dead_bytes = rec.data_bytes.saturating_sub(live_bytes);
            let has_dead = (alive.len() as u64) < u64::from(rec.chunks);
            let dead_share = ratio(dead_bytes, rec.data_bytes.max(1));
            let mut batch = self.index.batch();
            for id in &dead {
                batch.delete_chunk(id);
            }
            report.freed_chunks += dead.len() as u64;
            if alive.is_empty() {
                batch.delete_pack(*pid);
                batch.set_pending(*pid); // its file is deleted next; recovery finishes the job
                batch.commit("gc: drop pack")?;
                self.remove_pack_file(*pid)?;
                report.packs_deleted += 1;
            } else if has_dead && dead_share >= repack_threshold {
                let mut w = self.new_pack()?;
                let mut moved = Vec::with_capacity(alive.len());
                for (id, loc) in &alive {
                    let raw = self.read_at(id, loc)?; // never copy a corrupt chunk forward silently
                    debug_assert_eq!(raw.len(), loc.raw_len as usize);
                    let stored = pack::read_stored(&*self.pack_file(loc.pack)?, &self.pack_path(loc.pack), loc)?;
                    let chunk = Chunk { id: *id, raw_len: loc.raw_len, compression: loc.compression, data: stored };
                    moved.push((*id, w.append(&chunk)?));
                }
                let (new_id, size, entries) = w.finish()?;
                sync_dir(self.packs_dir())?;
                for (id, loc) in &moved {
                    batch.put_chunk(id, loc);
                }
                let data_bytes = entries.iter().map(|e| u64::from(e.stored_len)).sum();
                batch.put_pack(new_id, &PackRecord { size, chunks: entries.len() as u32, data_bytes });
                batch.clear_pending(new_id);
                batch.delete_pack(*pid);
                batch.set_pending(*pid);
                batch.commit("gc: rewrite pack")?;
                self.remove_pack_file(*pid)?;
                report.packs_rewritten += 1;
            } else if !dead.is_empty() {
                batch.commit("gc: free chunks")?;
            }
        }
        report.bytes_after = self.index.packs()?.iter().map(|(_, r)| r.size).sum();
        Ok(report)
    }

    fn remove_pack_file(&self, pid: PackId) -> Result<()> {
        self.forget_pack(pid);
        let path = self.pack_path(pid);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("remove pack", &path, e)),
        }
        sync_dir(self.packs_dir())
    }

    /// Store-wide statistics.
    pub fn stats(&self) -> Result<StoreStats> {
        let mut s = StoreStats::default();
        for c in self.list()? {
            s.checkpoints += 1;
            s.logical_bytes += c.logical_bytes;
            s.zero_bytes += c.zero_bytes;
        }
        s.data_bytes = s.logical_bytes - s.zero_bytes;
        for (_, loc) in self.index.chunks()? {
            s.chunks += 1;
            s.chunk_raw_bytes += u64::from(loc.raw_len);
            s.chunk_stored_bytes += u64::from(loc.stored_len);
        }
        for (_, rec) in self.index.packs()? {
            s.packs += 1;
            s.pack_bytes += rec.size;
        }
        s.dedup_ratio = ratio(s.data_bytes, s.chunk_raw_bytes);
        s.compression_ratio = ratio(s.chunk_raw_bytes, s.chunk_stored_bytes);
        Ok(s)
    }

    /// Ids of checkpoints that name `id` as their parent.
    pub fn children(&self, id: &CheckpointId) -> Result<Vec<CheckpointId>> {
        Ok(self.list()?.into_iter().filter(|s| s.parent.as_ref() == Some(id)).map(|s| s.id).collect())
    }
}
