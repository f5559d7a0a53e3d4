//! The embedded store: pack files on the local disk, indexed in RocksDB.
//!
//! ```text
//! <root>/            0700
//!   STORE            marker: "zap-store 1"
//!   lock             flock'd by the process that has the store open; holds its pid
//!   index/           RocksDB (see the index module for the column families)
//!   index.seq        the index's commit sequence number, to detect an index that lost commits
//!   packs/<id>.pack  pack files; `<id>.pack.tmp` while being written
//! ```
//!
//! One process has a store open at a time (an exclusive `flock` on `lock`, taken before RocksDB
//! opens); others wait for it up to [`StoreOptions::lock_timeout`] and then fail with
//! [`StoreError::Busy`]. Inside the process, writers and GC are kept apart by a read/write lock, so
//! a chunk that a writer found in the index (and will not write again) cannot be freed under it.
//!
//! Recovery on open: temporary packs and packs the index does not record are what a killed writer
//! or GC left; they are deleted. Visible checkpoints are exactly those whose commit batch landed.
//! A restore opens the store read-only ([`StoreOptions::read_only`]: RocksDB's read-only open,
//! no recovery, every write refused); a process that wrote flushes the index's log into table
//! files when it closes the store, so the next open does not replay it.
//!
//! Reads take chunks from the packs with `pread` (never from a mapping: a pack truncated under a
//! reader is a short read, an error naming the pack, not a SIGBUS that ends the reading
//! command); every chunk is checked against its id. [`ImageStore::read_chunks_into`] reads a
//! batch into the caller's reused buffer, with one `pread` for each run of chunks that lie back
//! to back in a pack (a restore's window, usually), and hands sparse chunks out as ranges of it.
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use zap_chunker::{decode_chunk, Chunk, ChunkId};

use crate::envelope;
use crate::index::{Index, PackRecord, CF_MANIFESTS, CF_SUMMARIES};
use crate::manifest::{
    CheckpointId, CheckpointSummary, Extent, ExtentData, Image, Manifest, StoredImage, StoredManifest, StoredManifestV2, MANIFEST_MAGIC,
    MANIFEST_VERSION, SUMMARY_MAGIC, SUMMARY_VERSION,
};
use crate::tree::{self, BuildIdHasher, Built, ChunkSize, Known, Leaf, Node, NodeId, NodeRef};

use crate::pack::{self, ChunkLoc, FinishedPack, PackId, PackWriter};
use crate::{sys, ChunkSink, ImageStore, Result, StoreError};

const MARKER: &str = "STORE";
const MARKER_TEXT: &str = "zap-store 1\n";

/// How to open a store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Create the store if the directory holds none.
    pub create: bool,
    /// How long to wait for another process to release the store.
    pub lock_timeout: Duration,
    /// A pack is closed and a new one started past this size.
    pub pack_target: u64,
    /// Open for reading only (a restore): the index is opened read-only (see
    /// [`crate::index::Index::open`]: nothing written, its log not flushed), and the recovery of
    /// interrupted writes is left to the next open for writing (a reader reads only what
    /// committed checkpoints reference). Writers, GC and deletes are refused. Not with `create`.
    pub read_only: bool,
    /// Start flushing the index's log into table files as soon as a checkpoint commits, in
    /// RocksDB's background threads, while the command goes on; closing the store waits for it
    /// (it flushes on close in any case). Off: only on close (tests that keep a commit in the
    /// log alone, as a writer killed right after its commit leaves it).
    pub flush_after_commit: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { create: false, lock_timeout: Duration::from_secs(120), pack_target: 128 << 20, read_only: false, flush_after_commit: true }
    }
}

/// The images of a manifest whose extent trees were not read yet ([`LocalStore::manifest_deferred`]).
#[derive(Clone, Debug)]
pub struct DeferredImages {
    id_hex: String,
    /// (index of the image in the manifest, the image as stored: name, tree root, patches).
    images: Vec<(usize, StoredImage)>,
}

impl DeferredImages {
    /// True when every tree was read.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }
}

thread_local! {
    /// Each thread's buffer for the stored bytes of the chunk [`LocalStore::read_at`] reads.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A store on the local disk.
pub struct LocalStore {
    root: PathBuf,
    packs_dir: PathBuf,
    pub(crate) index: Index,
    opts: StoreOptions,
    /// Writers hold it shared, GC exclusive.
    pub(crate) gc_lock: RwLock<()>,
    open_packs: Mutex<HashMap<PackId, Arc<File>>>,
    /// Trees read or written in this process (see [`tree::Known`]); cleared by GC.
    pub(crate) known: Mutex<Known>,
    _lock: File,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn mkdir_private(path: &Path) -> Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::io("create directory", path, e)),
    }
}

/// fsyncs a directory so that renames and creations in it are durable.
pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    File::open(path).and_then(|d| d.sync_all()).map_err(|e| StoreError::io("fsync directory", path, e))
}

fn take_lock(root: &Path, timeout: Duration) -> Result<File> {
    let path = root.join("lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| StoreError::io("open lock file", &path, e))?;
    let start = Instant::now();
    let mut warned = false;
    loop {
        if sys::try_lock_exclusive(&file).map_err(|e| StoreError::io("lock", &path, e))? {
            file.set_len(0).map_err(|e| StoreError::io("write lock file", &path, e))?;
            file.rewind().map_err(|e| StoreError::io("write lock file", &path, e))?;
            write!(file, "pid {}", std::process::id()).map_err(|e| StoreError::io("write lock file", &path, e))?;
            return Ok(file);
        }
        let mut holder = String::new();
        let _ = File::open(&path).and_then(|mut f| f.read_to_string(&mut holder));
        if start.elapsed() >= timeout {
            return Err(StoreError::Busy {
                path: root.to_path_buf(),
                holder: if holder.is_empty() { "another process".into() } else { holder },
                waited_s: start.elapsed().as_secs(),
            });
        }
        if !warned && start.elapsed() > Duration::from_millis(500) {
            tracing::warn!(store = %root.display(), holder = %holder, "waiting for the store lock");
            warned = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl LocalStore {
    /// Opens (or with `opts.create`, creates) the store at `root`, recovering from any write that
    /// was interrupted.
    pub fn open(root: impl AsRef<Path>, opts: StoreOptions) -> Result<Self> {
        sys::tighten_umask();
        let root = root.as_ref().to_path_buf();
        if opts.create && opts.read_only {
            return Err(StoreError::Invalid(format!("open store {}: a read-only open cannot create it", root.display())));
        }
        let marker = root.join(MARKER);
        match std::fs::read_to_string(&marker) {
            Ok(text) if text == MARKER_TEXT => {}
            Ok(text) => {
                return Err(StoreError::Corrupt {
                    what: format!("store marker {}", marker.display()),
                    detail: format!("unexpected content {:?}", text.trim_end()),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !opts.create {
                    return Err(StoreError::NotAStore(root));
                }
                if let Some(parent) = root.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| StoreError::io("create directory", parent, e))?;
                }
                mkdir_private(&root)?;
            }
            Err(e) => return Err(StoreError::io("read store marker", &marker, e)),
        }
        let lock = take_lock(&root, opts.lock_timeout)?;
        let packs_dir = root.join("packs");
        if !opts.read_only {
            mkdir_private(&packs_dir)?;
        }
        let index = Index::open(&root.join("index"), &root.join("index.seq"), !marker.exists(), opts.read_only)?;
        if !marker.exists() {
            // Written last, so a directory without it never looks like a finished store.
            let tmp = root.join("STORE.tmp");
            std::fs::write(&tmp, MARKER_TEXT).map_err(|e| StoreError::io("write store marker", &tmp, e))?;
            std::fs::rename(&tmp, &marker).map_err(|e| StoreError::io("write store marker", &marker, e))?;
            sync_dir(&root)?;
        }
        let store = LocalStore {
            root,
            packs_dir,
            index,
            opts,
            gc_lock: RwLock::new(()),
            open_packs: Mutex::new(HashMap::new()),
            known: Mutex::new(Known::default()),
            _lock: lock,
        };
        if !store.opts.read_only {
            store.recover()?;
        }
        Ok(store)
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn packs_dir(&self) -> &Path {
        &self.packs_dir
    }

    pub(crate) fn pack_path(&self, id: PackId) -> PathBuf {
        self.packs_dir.join(id.file_name())
    }

    /// Deletes what an interrupted write or GC left: temporary pack files, and packs the index
    /// marks pending (being written, or being dropped by GC) and does not record. A pack file
    /// that is neither recorded nor pending proves that the index lost records: the store is
    /// then refused, and nothing is deleted.
    fn recover(&self) -> Result<()> {
        let known: HashSet<PackId> = self.index.packs()?.into_iter().map(|(id, _)| id).collect();
        let pending = self.index.pending()?;
        let mut unknown = Vec::new();
        for entry in std::fs::read_dir(&self.packs_dir).map_err(|e| StoreError::io("list packs", &self.packs_dir, e))? {
            let entry = entry.map_err(|e| StoreError::io("list packs", &self.packs_dir, e))?;
            if let Some(id) = PackId::from_file_name(&entry.file_name().to_string_lossy()) {
                if !known.contains(&id) && !pending.contains(&id) {
                    unknown.push(id.to_string());
                }
            }
        }
        if !unknown.is_empty() {
            return Err(StoreError::Corrupt {
                what: format!("index of {}", self.root.display()),
                detail: format!(
                    "{} pack file(s) on disk are not recorded in it ({}{}): the index lost records; refusing to \
                     open so that nothing is deleted",
                    unknown.len(),
                    unknown.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
                    if unknown.len() > 3 { ", ..." } else { "" }
                ),
            });
        }
        let mut removed = 0;
        let dir = std::fs::read_dir(&self.packs_dir).map_err(|e| StoreError::io("list packs", &self.packs_dir, e))?;
        for entry in dir {
            let entry = entry.map_err(|e| StoreError::io("list packs", &self.packs_dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let leftover = match PackId::from_file_name(&name) {
                Some(id) => pending.contains(&id) && !known.contains(&id),
                None => name.ends_with(".pack.tmp"),
            };
            if leftover {
                std::fs::remove_file(entry.path()).map_err(|e| StoreError::io("remove unfinished pack", &entry.path(), e))?;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed pack files left by an interrupted write or GC");
            sync_dir(&self.packs_dir)?;
        }
        if !pending.is_empty() {
            let mut batch = self.index.batch();
            for id in pending {
                batch.clear_pending(id);
            }
            batch.commit("clear pending packs")?;
        }
        Ok(())
    }

    /// A new pack, durably marked pending first so that recovery knows it may delete it.
    pub(crate) fn new_pack(&self) -> Result<PackWriter> {
        let id = PackId(sys::random_u64());
        self.index.mark_pending(id)?;
        PackWriter::create(&self.packs_dir, id)
    }

    pub(crate) fn pack_file(&self, id: PackId) -> Result<Arc<File>> {
        let mut open = self.open_packs.lock().expect("pack cache lock");
        if let Some(f) = open.get(&id) {
            return Ok(f.clone());
        }
        let path = self.pack_path(id);
        let file = File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                StoreError::Corrupt { what: format!("pack {id}"), detail: format!("file {} is missing", path.display()) }
            } else {
                StoreError::io("open pack", &path, e)
            }
        })?;
        let file = Arc::new(file);
        if open.len() > 512 {
            open.clear();
        }
        open.insert(id, file.clone());
        Ok(file)
    }

    pub(crate) fn forget_pack(&self, id: PackId) {
        self.open_packs.lock().expect("pack cache lock").remove(&id);
    }

    /// Reads and checks a chunk at a known location (its stored bytes read into a buffer of this
    /// thread's, reused: only the decoded bytes are a new allocation).
    pub(crate) fn read_at(&self, id: &ChunkId, loc: &ChunkLoc) -> Result<Vec<u8>> {
        let file = self.pack_file(loc.pack)?;
        READ_BUF.with(|cell| {
            let mut buf = cell.borrow_mut();
            let n = loc.stored_len as usize;
            if buf.len() < n {
                buf.resize(n, 0);
            }
            pack::read_run(&file, &self.pack_path(loc.pack), loc.offset, &mut buf[..n])?;
            decode_chunk(id, loc.compression, loc.raw_len as usize, &buf[..n]).map_err(|e| StoreError::Corrupt {
                what: format!("chunk {id} in pack {} at offset {}", loc.pack, loc.offset),
                detail: e.to_string(),
            })
        })
    }

    /// Reads and checks the chunk `id` at `loc` in the form cheapest to get (see
    /// [`ImageStore::read_chunk_bytes`]).
    fn bytes_at(&self, id: &ChunkId, loc: &ChunkLoc) -> Result<crate::ChunkBytes> {
        read_located(id, &*self.pack_file(loc.pack)?, &self.pack_path(loc.pack), loc)
    }

    /// An open handle on the pack that holds a chunk, and the chunk's location: what a reader
    /// that must outlive the store's lock (a lazy restore's pager) keeps. The file stays
    /// readable even if GC later removes it. Read it with [`read_located`].
    pub fn open_chunk(&self, id: &ChunkId) -> Result<(Arc<File>, PathBuf, ChunkLoc)> {
        let loc = self.index.chunk(id)?.ok_or_else(|| StoreError::MissingChunk { id: id.to_hex(), context: "not in the index".into() })?;
        Ok((self.pack_file(loc.pack)?, self.pack_path(loc.pack), loc))
    }

    /// [`LocalStore::open_chunk`] for many chunks at once (batched index reads).
    pub fn open_chunks(&self, ids: &[ChunkId]) -> Result<Vec<(Arc<File>, PathBuf, ChunkLoc)>> {
        ids.iter()
            .zip(self.index.chunks_of(ids)?)
            .map(|(id, loc)| {
                let loc = loc.ok_or_else(|| StoreError::MissingChunk { id: id.to_hex(), context: "not in the index".into() })?;
                Ok((self.pack_file(loc.pack)?, self.pack_path(loc.pack), loc))
            })
            .collect()
    }

    /// Where a chunk is stored, if it is.
    pub fn locate(&self, id: &ChunkId) -> Result<Option<ChunkLoc>> {
        self.index.chunk(id)
    }

    /// Loads a checkpoint's summary.
    pub fn summary(&self, id: &CheckpointId) -> Result<CheckpointSummary> {
        let bytes = self.index.get(CF_SUMMARIES, &id.0)?.ok_or_else(|| StoreError::NotFound(id.to_hex()))?;
        envelope::open(SUMMARY_MAGIC, SUMMARY_VERSION, &bytes)
            .map(|(s, _)| s)
            .map_err(|e| StoreError::Corrupt { what: format!("summary of checkpoint {id}"), detail: e.to_string() })
    }

    /// Decodes a sealed manifest of either version; a version-2 manifest's images are read from
    /// their trees (every node checked against its id).
    pub(crate) fn decode_manifest(&self, id_hex: &str, bytes: &[u8]) -> Result<Manifest> {
        self.decode_manifest_visiting(id_hex, bytes, &mut |_| {})
    }

    /// [`LocalStore::decode_manifest`], calling `visit` with every tree node read.
    pub(crate) fn decode_manifest_visiting(&self, id_hex: &str, bytes: &[u8], visit: &mut dyn FnMut(&NodeId)) -> Result<Manifest> {
        let corrupt = |detail: String| StoreError::Corrupt { what: format!("manifest of checkpoint {id_hex}"), detail };
        if envelope::version_of(bytes) == Some(1) {
            return envelope::open(MANIFEST_MAGIC, 1, bytes).map(|(m, _)| m).map_err(|e| corrupt(e.to_string()));
        }
        let stored: StoredManifest = if envelope::version_of(bytes) == Some(2) {
            envelope::open::<StoredManifestV2>(MANIFEST_MAGIC, 2, bytes).map(|(m, _)| m.into()).map_err(|e| corrupt(e.to_string()))?
        } else {
            envelope::open(MANIFEST_MAGIC, MANIFEST_VERSION, bytes).map(|(m, _)| m).map_err(|e| corrupt(e.to_string()))?
        };
        let roots: Vec<NodeRef> = stored.images.iter().filter_map(|i| i.root).collect();
        let mut trees = self.load_trees(id_hex, &roots, visit)?.into_iter();
        let mut extents: Vec<Vec<Extent>> =
            stored.images.iter().map(|i| if i.root.is_some() { trees.next().unwrap_or_default() } else { Vec::new() }).collect();
        self.apply_patches(id_hex, &stored.images, &mut extents, visit)?;
        let known = stored
            .images
            .iter()
            .zip(&extents)
            .map(|(i, e)| (i.name.clone(), tree::KnownImage { root: i.root, patches: i.patches.clone(), extents: e.clone() }))
            .collect();
        self.known.lock().expect("known trees lock").learn_images(stored.id, known);
        let mut stored = stored;
        let images = std::mem::take(&mut stored.images).into_iter().zip(extents).map(|(i, extents)| Image { extents, name: i.name, kind: i.kind }).collect();
        Ok(stored.into_manifest(images))
    }

    /// Applies the patches of version-3 `images` (read in one batch, each checked against its id
    /// and its reference) over their trees' `extents`. `visit` sees every patch id read.
    fn apply_patches(&self, id_hex: &str, images: &[StoredImage], extents: &mut [Vec<Extent>], visit: &mut dyn FnMut(&NodeId)) -> Result<()> {
        let bad = |id: &NodeId, detail: String| StoreError::Corrupt { what: format!("manifest patch {id} of checkpoint {id_hex}"), detail };
        let refs: Vec<(usize, NodeRef)> = images.iter().enumerate().flat_map(|(i, img)| img.patches.iter().map(move |p| (i, *p))).collect();
        if refs.is_empty() {
            return Ok(());
        }
        if let Some(img) = images.iter().find(|i| i.patches.len() > tree::MAX_PATCHES) {
            return Err(StoreError::Corrupt {
                what: format!("manifest of checkpoint {id_hex}"),
                detail: format!("image {:?} has {} patches (at most {})", img.name, img.patches.len(), tree::MAX_PATCHES),
            });
        }
        let ids: Vec<NodeId> = refs.iter().map(|(_, r)| r.id).collect();
        for ((img, r), b) in refs.into_iter().zip(self.index.nodes_of(&ids)?) {
            visit(&r.id);
            let b = b.ok_or_else(|| bad(&r.id, "missing from the index".into()))?;
            let node = tree::decode(&r.id, &b).map_err(|e| bad(&r.id, e))?;
            let Node::Patch(p) = &node else { return Err(bad(&r.id, "not a patch".into())) };
            let (start, end) = p.range();
            if (start, end, p.entries(), r.height) != (r.start, r.end, r.extents, 0) {
                return Err(bad(&r.id, "its range or entry count differs from the manifest's record".into()));
            }
            extents[img] = tree::apply_patch(&extents[img], p);
            self.known.lock().expect("known trees lock").learn(r.id, &node);
        }
        Ok(())
    }

    /// A checkpoint's manifest with no extent tree read yet: images stored as trees come back
    /// without extents, their roots in the returned [`DeferredImages`], to be read with
    /// [`LocalStore::read_deferred`] when and where they are needed (a lazy restore reads the
    /// trees of the memory its pager fills in another thread while the restore goes on).
    /// A version-1 manifest holds its extents inline: nothing is deferred.
    pub fn manifest_deferred(&self, id: &CheckpointId) -> Result<(Manifest, DeferredImages)> {
        let id_hex = id.to_hex();
        let bytes = self.index.get(CF_MANIFESTS, &id.0)?.ok_or_else(|| StoreError::NotFound(id_hex.clone()))?;
        let corrupt = |detail: String| StoreError::Corrupt { what: format!("manifest of checkpoint {id_hex}"), detail };
        let mut deferred = DeferredImages { id_hex: id_hex.clone(), images: Vec::new() };
        let stored: StoredManifest = match envelope::version_of(&bytes) {
            Some(1) => {
                let m = envelope::open(MANIFEST_MAGIC, 1, &bytes).map(|(m, _)| m).map_err(|e| corrupt(e.to_string()))?;
                return Ok((m, deferred));
            }
            Some(2) => envelope::open::<StoredManifestV2>(MANIFEST_MAGIC, 2, &bytes).map(|(m, _)| m.into()).map_err(|e| corrupt(e.to_string()))?,
            _ => envelope::open(MANIFEST_MAGIC, MANIFEST_VERSION, &bytes).map(|(m, _)| m).map_err(|e| corrupt(e.to_string()))?,
        };
        let mut stored = stored;
        let mut images = Vec::with_capacity(stored.images.len());
        for (i, im) in std::mem::take(&mut stored.images).into_iter().enumerate() {
            images.push(Image { extents: Vec::new(), name: im.name.clone(), kind: im.kind });
            if im.root.is_some() || !im.patches.is_empty() {
                deferred.images.push((i, im));
            }
        }
        Ok((stored.into_manifest(images), deferred))
    }

    /// Reads the trees (and patches) of the deferred images whose names `pick` selects (each
    /// node checked as for [`ImageStore::manifest`]) and takes them out of `deferred`; returns
    /// (index of the image in the manifest, its extents).
    pub fn read_deferred(&self, deferred: &mut DeferredImages, pick: &dyn Fn(&str) -> bool) -> Result<Vec<(usize, Vec<Extent>)>> {
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut deferred.images).into_iter().partition(|(_, im)| pick(&im.name));
        deferred.images = later;
        let roots: Vec<NodeRef> = now.iter().filter_map(|(_, im)| im.root).collect();
        let mut trees = self.load_trees(&deferred.id_hex, &roots, &mut |_| {})?.into_iter();
        let mut extents: Vec<Vec<Extent>> = now.iter().map(|(_, im)| if im.root.is_some() { trees.next().unwrap_or_default() } else { Vec::new() }).collect();
        let stored: Vec<StoredImage> = now.iter().map(|(_, im)| im.clone()).collect();
        self.apply_patches(&deferred.id_hex, &stored, &mut extents, &mut |_| {})?;
        Ok(now.into_iter().map(|(i, _)| i).zip(extents).collect())
    }

    /// Reads the trees under `roots`, level by level with batched reads, checking every node
    /// against its id and its place (height, range, extent count); returns each tree's extents.
    /// `visit` sees every node id read.
    pub(crate) fn load_trees(&self, id_hex: &str, roots: &[NodeRef], visit: &mut dyn FnMut(&NodeId)) -> Result<Vec<Vec<Extent>>> {
        let bad = |id: &NodeId, detail: String| StoreError::Corrupt { what: format!("manifest node {id} of checkpoint {id_hex}"), detail };
        let mut out: Vec<Vec<Extent>> = vec![Vec::new(); roots.len()];
        // (tree, expected ref) in address order within each tree.
        let mut level: Vec<(usize, NodeRef)> = roots.iter().copied().enumerate().collect();
        while !level.is_empty() {
            let ids: Vec<NodeId> = level.iter().map(|(_, r)| r.id).collect();
            let bytes = self.index.nodes_of(&ids)?;
            let mut next = Vec::new();
            for ((tree, r), b) in level.into_iter().zip(bytes) {
                visit(&r.id);
                let b = b.ok_or_else(|| bad(&r.id, "missing from the index".into()))?;
                let node = tree::decode(&r.id, &b).map_err(|e| bad(&r.id, e))?;
                let (start, end, count) = match &node {
                    Node::Leaf(l) if r.height == 0 && !l.extents.is_empty() => {
                        let e = &l.extents;
                        (e[0].start, e[e.len() - 1].end(), e.len() as u64)
                    }
                    Node::Inner(c) if r.height > 0 && r.height <= tree::MAX_HEIGHT && !c.is_empty() && c.iter().all(|c| c.height + 1 == r.height) => {
                        (c[0].start, c[c.len() - 1].end, c.iter().map(|c| c.extents).sum())
                    }
                    _ => return Err(bad(&r.id, format!("not a node of height {} or empty", r.height))),
                };
                if (start, end, count) != (r.start, r.end, r.extents) {
                    return Err(bad(&r.id, "its range or extent count differs from its parent's record".into()));
                }
                // What a writer reuses; a read-only store writes nothing.
                if !self.opts.read_only {
                    self.known.lock().expect("known trees lock").learn(r.id, &node);
                }
                match node {
                    Node::Leaf(l) => out[tree].extend(l.extents),
                    Node::Inner(c) => next.extend(c.into_iter().map(|c| (tree, c))),
                    Node::Patch(_) => {} // refused above: not a node of a tree
                }
            }
            level = next;
        }
        Ok(out)
    }
}

/// Reads and checks a chunk from a pack handle kept by [`LocalStore::open_chunk`], sparse
/// chunks left sparse.
pub fn read_located(id: &ChunkId, file: &File, path: &Path, loc: &ChunkLoc) -> Result<crate::ChunkBytes> {
    let stored = pack::read_stored(file, path, loc)?;
    let corrupt = |detail: String| StoreError::Corrupt { what: format!("chunk {id} in pack {} at offset {}", loc.pack, loc.offset), detail };
    if loc.compression == zap_chunker::Compression::Sparse {
        let actual = ChunkId::of_sparse(loc.raw_len as usize, &stored);
        if actual != *id || zap_chunker::sparse_pages(&stored, loc.raw_len as usize).is_none() {
            return Err(corrupt(format!("sparse content does not match its id (hash {actual}) or is malformed")));
        }
        return Ok(crate::ChunkBytes::Sparse { raw_len: loc.raw_len as usize, stored });
    }
    decode_chunk(id, loc.compression, loc.raw_len as usize, &stored).map(crate::ChunkBytes::Raw).map_err(|e| corrupt(e.to_string()))
}

impl ImageStore for LocalStore {
    type Writer<'a> = LocalWriter<'a>;

    fn writer(&self) -> Result<LocalWriter<'_>> {
        if self.opts.read_only {
            return Err(StoreError::Invalid(format!("write a checkpoint into {}: the store was opened read-only", self.root.display())));
        }
        Ok(LocalWriter {
            store: self,
            _guard: self.gc_lock.read().expect("gc lock"),
            pack: None,
            complete: Vec::new(),
            finished: Vec::new(),
            new: HashMap::new(),
        })
    }

    fn read_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let loc = self.index.chunk(id)?.ok_or_else(|| StoreError::MissingChunk {
            id: id.to_hex(),
            context: "not in the index".into(),
        })?;
        self.read_at(id, &loc)
    }

    fn read_chunk_bytes(&self, id: &ChunkId) -> Result<crate::ChunkBytes> {
        let loc = self.index.chunk(id)?.ok_or_else(|| StoreError::MissingChunk {
            id: id.to_hex(),
            context: "not in the index".into(),
        })?;
        self.bytes_at(id, &loc)
    }

    fn read_chunks_bytes(&self, ids: &[ChunkId]) -> Result<Vec<crate::ChunkBytes>> {
        // One batched index read for all of them.
        ids.iter()
            .zip(self.index.chunks_of(ids)?)
            .map(|(id, loc)| {
                let loc = loc.ok_or_else(|| StoreError::MissingChunk { id: id.to_hex(), context: "not in the index".into() })?;
                self.bytes_at(id, &loc)
            })
            .collect()
    }

    fn read_chunks_into(&self, ids: &[ChunkId], buf: &mut Vec<u8>) -> Result<Vec<crate::ReadChunk>> {
        let locs = ids
            .iter()
            .zip(self.index.chunks_of(ids)?)
            .map(|(id, loc)| loc.ok_or_else(|| StoreError::MissingChunk { id: id.to_hex(), context: "not in the index".into() }))
            .collect::<Result<Vec<ChunkLoc>>>()?;
        // One read per run of chunks that lie back to back in one pack, into the buffer behind
        // 8 bytes of room: a sparse chunk is checked in place, with the 8 bytes before it (the
        // room, or the end of the chunk before it, put back after) holding its length
        // (`ChunkId::of_sparse_in_place`, which hashes it as one input, the fastest way).
        let mut at: Vec<Range<usize>> = Vec::with_capacity(locs.len());
        let mut runs: Vec<(PackId, u64, Range<usize>)> = Vec::new();
        let mut total = 0usize;
        for (k, loc) in locs.iter().enumerate() {
            let follows = k > 0 && loc.pack == locs[k - 1].pack && loc.offset == locs[k - 1].offset + u64::from(locs[k - 1].stored_len);
            if !follows {
                total += 8;
                runs.push((loc.pack, loc.offset, total..total));
            }
            at.push(total..total + loc.stored_len as usize);
            total += loc.stored_len as usize;
            runs.last_mut().expect("a run was started").2.end = total;
        }
        if buf.len() < total {
            buf.resize(total, 0);
        }
        for (pack, offset, range) in runs {
            pack::read_run(&*self.pack_file(pack)?, &self.pack_path(pack), offset, &mut buf[range])?;
        }
        let mut out = Vec::with_capacity(locs.len());
        for ((id, loc), at) in ids.iter().zip(locs).zip(at) {
            let corrupt = |detail: String| StoreError::Corrupt { what: format!("chunk {id} in pack {} at offset {}", loc.pack, loc.offset), detail };
            if loc.compression != zap_chunker::Compression::Sparse {
                let raw = decode_chunk(id, loc.compression, loc.raw_len as usize, &buf[at]).map_err(|e| corrupt(e.to_string()))?;
                out.push(crate::ReadChunk::Owned(crate::ChunkBytes::Raw(raw)));
                continue;
            }
            // Checked where it was read: the pages are written from the buffer.
            let room = at.start - 8..at.start;
            let kept: [u8; 8] = buf[room.clone()].try_into().expect("8 bytes");
            let actual = ChunkId::of_sparse_in_place(loc.raw_len as usize, &mut buf[room.start..at.end]);
            buf[room].copy_from_slice(&kept);
            if actual != *id || zap_chunker::sparse_pages(&buf[at.clone()], loc.raw_len as usize).is_none() {
                return Err(corrupt(format!("sparse content does not match its id (hash {actual}) or is malformed")));
            }
            out.push(crate::ReadChunk::SparseAt { raw_len: loc.raw_len as usize, at });
        }
        Ok(out)
    }

    fn manifest(&self, id: &CheckpointId) -> Result<Manifest> {
        let bytes = self.index.get(CF_MANIFESTS, &id.0)?.ok_or_else(|| StoreError::NotFound(id.to_hex()))?;
        self.decode_manifest(&id.to_hex(), &bytes)
    }

    fn list(&self) -> Result<Vec<CheckpointSummary>> {
        let mut out = Vec::new();
        for (k, v) in self.index.scan(CF_SUMMARIES)? {
            let (s, _): (CheckpointSummary, u16) = envelope::open(SUMMARY_MAGIC, SUMMARY_VERSION, &v).map_err(|e| {
                StoreError::Corrupt { what: format!("summary of checkpoint {}", hex::encode(&k)), detail: e.to_string() }
            })?;
            out.push(s);
        }
        out.sort_by_key(|s| (s.created_ms, s.id));
        Ok(out)
    }

    fn resolve(&self, prefix: &str) -> Result<CheckpointId> {
        let prefix = prefix.to_ascii_lowercase();
        if prefix.len() < 4 || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(StoreError::Invalid(format!(
                "{prefix:?} is not a checkpoint id (give at least 4 hex digits)"
            )));
        }
        let matches: Vec<CheckpointId> = self
            .index
            .scan(CF_SUMMARIES)?
            .into_iter()
            .filter_map(|(k, _)| <[u8; 8]>::try_from(k.as_ref()).ok().map(CheckpointId))
            .filter(|id| id.to_hex().starts_with(&prefix))
            .collect();
        match matches.as_slice() {
            [] => Err(StoreError::NotFound(prefix)),
            [one] => Ok(*one),
            many => Err(StoreError::Ambiguous {
                prefix,
                candidates: many.iter().map(|c| c.to_hex()).collect::<Vec<_>>().join(", "),
            }),
        }
    }

    fn delete(&self, id: &CheckpointId) -> Result<()> {
        if self.index.get(CF_SUMMARIES, &id.0)?.is_none() {
            return Err(StoreError::NotFound(id.to_hex()));
        }
        let mut batch = self.index.batch();
        batch.delete(CF_MANIFESTS, &id.0);
        batch.delete(CF_SUMMARIES, &id.0);
        batch.commit("delete checkpoint")
    }
}

/// Writes one checkpoint's chunks into packs; nothing is visible until [`ChunkSink::commit`].
pub struct LocalWriter<'a> {
    store: &'a LocalStore,
    _guard: RwLockReadGuard<'a, ()>,
    pack: Option<PackWriter>,
    /// Complete packs, made durable together at commit.
    complete: Vec<FinishedPack>,
    finished: Vec<(PackId, PackRecord)>,
    new: HashMap<ChunkId, ChunkLoc>,
}

impl<'a> LocalWriter<'a> {
    /// Completes the pack being written (its writeback starts; it is made durable at commit).
    fn close_pack(&mut self) -> Result<()> {
        if let Some(p) = self.pack.take() {
            if p.is_empty() {
                return Ok(()); // dropped: its temporary file is removed
            }
            self.complete.push(p.complete()?);
        }
        Ok(())
    }

    /// Starts making every complete pack durable on another thread ([`PackSync`]).
    fn start_sync(&mut self) -> PackSync<'a> {
        let done = std::mem::take(&mut self.complete);
        let dir = self.store.packs_dir.clone();
        let handle = (!done.is_empty()).then(|| std::thread::spawn(move || sync_packs(done, &dir)));
        PackSync { store: self.store, handle }
    }

    /// Records the packs a [`PackSync`] made durable (the commit's batch will name them).
    fn record_synced(&mut self, done: Vec<FinishedPack>) {
        for p in done {
            let data_bytes = p.entries.iter().map(|e| u64::from(e.stored_len)).sum();
            self.finished.push((p.id, PackRecord { size: p.size, chunks: p.entries.len() as u32, data_bytes }));
        }
    }

    /// Bytes of new chunk data written so far.
    pub fn new_bytes(&self) -> u64 {
        self.new.values().map(|l| u64::from(l.stored_len)).sum()
    }
}

/// Makes `done` durable (one fsync each, in parallel), renames each into place and syncs their
/// directory `dir`. Returns the packs, renamed or not, and how it went.
fn sync_packs(mut done: Vec<FinishedPack>, dir: &Path) -> (Vec<FinishedPack>, Result<()>) {
    let r = std::thread::scope(|s| {
        let handles: Vec<_> = done.iter_mut().map(|p| s.spawn(move || p.sync_and_rename())).collect();
        handles.into_iter().try_for_each(|h| h.join().expect("pack sync thread"))
    });
    let r = r.and_then(|()| sync_dir(dir));
    (done, r)
}

/// Complete packs being made durable on another thread while a commit prepares its manifest.
/// [`PackSync::finish`] waits for them; dropped unfinished (the commit failed meanwhile), it
/// waits too and removes the packs it renamed into place (the index never named them).
struct PackSync<'a> {
    store: &'a LocalStore,
    handle: Option<std::thread::JoinHandle<(Vec<FinishedPack>, Result<()>)>>,
}

impl PackSync<'_> {
    /// Waits for the packs: all durable and in place, or the first error.
    fn finish(mut self) -> Result<Vec<FinishedPack>> {
        let Some(h) = self.handle.take() else { return Ok(Vec::new()) };
        let (done, r) = h.join().expect("pack sync thread");
        match r {
            Ok(()) => Ok(done),
            Err(e) => {
                self.remove(&done);
                Err(e)
            }
        }
    }

    fn remove(&self, done: &[FinishedPack]) {
        for p in done {
            let _ = std::fs::remove_file(self.store.pack_path(p.id));
        }
    }
}

impl Drop for PackSync<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            if let Ok((done, _)) = h.join() {
                self.remove(&done);
            }
        }
    }
}

impl LocalWriter<'_> {
    /// The open pack a new chunk `id` goes to (a new one when the current is full), or None when
    /// the store or this writer holds the chunk already.
    fn pack_for(&mut self, id: &ChunkId) -> Result<Option<&mut PackWriter>> {
        if self.contains(id)? {
            return Ok(None);
        }
        if self.pack.as_ref().is_some_and(|p| p.len() >= self.store.opts.pack_target) {
            self.close_pack()?;
        }
        if self.pack.is_none() {
            self.pack = Some(self.store.new_pack()?);
        }
        Ok(self.pack.as_mut())
    }
}

impl ChunkSink for LocalWriter<'_> {
    fn contains(&mut self, id: &ChunkId) -> Result<bool> {
        Ok(self.new.contains_key(id) || self.store.index.has_chunk(id)?)
    }

    fn put(&mut self, chunk: &Chunk) -> Result<bool> {
        let Some(pack) = self.pack_for(&chunk.id)? else { return Ok(false) };
        let loc = pack.append(chunk)?;
        self.new.insert(chunk.id, loc);
        Ok(true)
    }

    fn put_owned(&mut self, chunk: Chunk) -> Result<bool> {
        let id = chunk.id;
        let Some(pack) = self.pack_for(&id)? else { return Ok(false) };
        let loc = pack.append_owned(chunk)?;
        self.new.insert(id, loc);
        Ok(true)
    }

    fn commit(mut self, mut manifest: Manifest) -> Result<CheckpointSummary> {
        let t0 = Instant::now();
        let lap = |what: &str| tracing::debug!(step = what, ms = t0.elapsed().as_secs_f64() * 1e3, "commit");
        manifest.validate().map_err(|e| StoreError::Invalid(format!("manifest {:?}: {e}", manifest.name)))?;
        // The packs are made durable on another thread while the manifest is prepared.
        self.close_pack()?;
        let syncing = self.start_sync();
        lap("validated");
        // An image whose parent's image this process read (the parent checkpoint was read
        // first, as an incremental checkpoint does) is written as a patch over it when the chain
        // allows; the others as trees. A leaf the store read or wrote in this process with the
        // same extents (the parent's, typically) is reused as is; new leaves and patches are
        // encoded with the sizes of their chunks, which also proves that those chunks exist.
        let mut known = self.store.known.lock().expect("known trees lock");
        let mut built = Built::default();
        let mut sizes: HashMap<ChunkId, ChunkSize, BuildIdHasher> =
            self.new.iter().map(|(id, l)| (*id, ChunkSize { raw: l.raw_len, stored: l.stored_len })).collect();
        let mut per_image: Vec<Plan> = Vec::with_capacity(manifest.images.len());
        let mut unsized_ids: Vec<ChunkId> = Vec::new();
        let parent_images = manifest.parent.and_then(|p| known.images_of(&p));
        let want_size = |extents: &[Extent], unsized_ids: &mut Vec<ChunkId>| {
            for e in extents {
                if let ExtentData::Chunk { id, .. } = e.data {
                    if !sizes.contains_key(&id) && !known.sizes.contains_key(&id) {
                        unsized_ids.push(id);
                    }
                }
            }
        };
        for img in &manifest.images {
            if let Some(plan) = parent_images.and_then(|p| p.get(&img.name)).and_then(|old| patch_plan(old, &img.extents)) {
                if let Plan::Patched { patch, .. } = &plan {
                    want_size(&patch.extents, &mut unsized_ids);
                }
                per_image.push(plan);
                continue;
            }
            let mut leaves = Vec::new();
            for g in tree::leaf_groups(&img.extents) {
                let reused = known.leaf(&img.extents[g.clone()]);
                if reused.is_none() {
                    want_size(&img.extents[g.clone()], &mut unsized_ids);
                }
                leaves.push((g, reused));
            }
            per_image.push(Plan::Tree(leaves));
        }
        lap("leaves matched");
        unsized_ids.sort_unstable();
        unsized_ids.dedup();
        for (id, loc) in unsized_ids.iter().zip(self.store.index.chunks_of(&unsized_ids)?) {
            if let Some(l) = loc {
                sizes.insert(*id, ChunkSize { raw: l.raw_len, stored: l.stored_len });
            }
        }
        let size_of = |id: &ChunkId| sizes.get(id).or_else(|| known.sizes.get(id)).copied();
        // Every chunk a new leaf or patch references must exist, and every extent fit inside it;
        // reused leaves were checked when they were written (the tree module's invariant).
        let sizes_of = |img: &Image, extents: &[Extent]| -> Result<Vec<ChunkSize>> {
            let mut out = Vec::new();
            for ext in extents {
                let ExtentData::Chunk { id, offset } = ext.data else { continue };
                let size = size_of(&id).ok_or_else(|| StoreError::MissingChunk {
                    id: id.to_hex(),
                    context: format!("referenced by image {:?} at {:#x}", img.name, ext.start),
                })?;
                if u64::from(offset) + ext.len > u64::from(size.raw) {
                    return Err(StoreError::Invalid(format!(
                        "image {:?}: extent at {:#x} wants {} bytes from offset {offset} of chunk {id} ({} bytes)",
                        img.name, ext.start, ext.len, size.raw
                    )));
                }
                out.push(size);
            }
            Ok(out)
        };
        lap("chunks located");
        let mut roots: Vec<(Option<NodeRef>, Vec<NodeRef>)> = Vec::with_capacity(manifest.images.len());
        let mut new_roots: Vec<NodeId> = Vec::new();
        let (mut patched, mut unchanged) = (0usize, 0usize);
        for (img, plan) in manifest.images.iter().zip(per_image) {
            match plan {
                Plan::Same { root, patches } => {
                    unchanged += 1;
                    roots.push((root, patches));
                }
                Plan::Patched { root, mut patches, mut patch } => {
                    patched += 1;
                    patch.sizes = sizes_of(img, &patch.extents)?;
                    let r = tree::add_patch(patch, &mut built);
                    new_roots.push(r.id);
                    patches.push(r);
                    roots.push((root, patches));
                }
                Plan::Tree(leaves) => {
                    let mut refs = Vec::with_capacity(leaves.len());
                    for (g, reused) in leaves {
                        let extents = &img.extents[g];
                        match reused {
                            Some(id) => refs.push(tree::leaf_ref(id, extents)),
                            None => refs.push(tree::add_leaf(Leaf { extents: extents.to_vec(), sizes: sizes_of(img, extents)? }, &mut built)),
                        }
                    }
                    let root = tree::build_inner(refs, &mut built);
                    new_roots.extend(root.map(|r| r.id));
                    roots.push((root, Vec::new()));
                }
            }
        }
        tracing::debug!(images = manifest.images.len(), patched, unchanged, trees = manifest.images.len() - patched - unchanged, "images planned");
        lap("trees built");
        let new_nodes = tree::missing(&built, &new_roots, |ids| {
            let unknown: Vec<NodeId> = ids.iter().filter(|id| !known.nodes.contains(id)).copied().collect();
            let mut stored = self.store.index.has_nodes(&unknown)?.into_iter();
            Ok(ids.iter().map(|id| known.nodes.contains(id) || stored.next().unwrap_or(false)).collect())
        })?;
        lap("new nodes found");
        // Distinct chunks referenced, with their sizes (all known by now: the new leaves' were
        // looked up above, the reused leaves' came with them).
        let mut distinct: HashMap<ChunkId, ChunkSize, BuildIdHasher> = HashMap::default();
        let mut late: Vec<ChunkId> = Vec::new();
        for (_, _, id) in manifest.chunk_refs() {
            if let std::collections::hash_map::Entry::Vacant(v) = distinct.entry(id) {
                match size_of(&id) {
                    Some(s) => {
                        v.insert(s);
                    }
                    None => late.push(id),
                }
            }
        }
        // A reused leaf found in the index rather than in memory brings no sizes: look those up.
        late.sort_unstable();
        late.dedup();
        for (id, loc) in late.iter().zip(self.store.index.chunks_of(&late)?) {
            let l = loc.ok_or_else(|| StoreError::MissingChunk { id: id.to_hex(), context: "referenced by a stored manifest node".into() })?;
            distinct.insert(*id, ChunkSize { raw: l.raw_len, stored: l.stored_len });
        }
        lap("chunks checked");
        let synced = syncing.finish()?;
        self.record_synced(synced);
        lap("packs closed");
        manifest.id = CheckpointId(sys::random_u64().to_le_bytes());
        manifest.created_ms = now_ms();
        let stored = StoredManifest {
            id: manifest.id,
            parent: manifest.parent,
            created_ms: manifest.created_ms,
            name: manifest.name.clone(),
            kind: manifest.kind.clone(),
            labels: manifest.labels.clone(),
            images: manifest
                .images
                .iter()
                .zip(&roots)
                .map(|(i, (root, patches))| StoredImage { name: i.name.clone(), kind: i.kind, root: *root, patches: patches.clone() })
                .collect(),
            state: std::mem::take(&mut manifest.state),
        };
        let sealed = envelope::seal(MANIFEST_MAGIC, MANIFEST_VERSION, &stored);
        let node_bytes: u64 = new_nodes.iter().map(|id| built.nodes[id].0.len() as u64).sum();
        let logical: u64 = manifest.images.iter().map(|i| i.logical_len()).sum();
        let zero: u64 = manifest
            .images
            .iter()
            .flat_map(|i| &i.extents)
            .filter(|e| e.data == ExtentData::Zero)
            .map(|e| e.len)
            .sum();
        let summary = CheckpointSummary {
            id: manifest.id,
            parent: manifest.parent,
            created_ms: manifest.created_ms,
            name: manifest.name.clone(),
            kind: manifest.kind.clone(),
            labels: manifest.labels.clone(),
            images: manifest.images.len() as u64,
            logical_bytes: logical,
            zero_bytes: zero,
            chunks: distinct.len() as u64,
            chunk_raw_bytes: distinct.values().map(|l| u64::from(l.raw)).sum(),
            chunk_stored_bytes: distinct.values().map(|l| u64::from(l.stored)).sum(),
            new_chunks: self.new.len() as u64,
            new_stored_bytes: self.new_bytes(),
            manifest_bytes: sealed.len() as u64 + node_bytes,
        };
        let mut batch = self.store.index.batch();
        for (id, loc) in &self.new {
            batch.put_chunk(id, loc);
        }
        for (id, rec) in &self.finished {
            batch.put_pack(*id, rec);
            batch.clear_pending(*id);
        }
        for id in &new_nodes {
            batch.put_node(id, &built.nodes[id].0);
        }
        batch.put(CF_MANIFESTS, &manifest.id.0, &sealed);
        batch.put(CF_SUMMARIES, &manifest.id.0, &envelope::seal(SUMMARY_MAGIC, SUMMARY_VERSION, &summary));
        lap("batch built");
        batch.commit("commit checkpoint")?;
        lap("batch committed");
        // What the batch wrote to the index's log goes into table files in RocksDB's background
        // while the command goes on (a process checkpoint then kills and reaps the original,
        // whose memory takes the kernel a while to free); closing the store waits for it.
        if self.store.opts.flush_after_commit {
            self.store.index.start_flush();
        }
        self.finished.clear();
        for id in &new_nodes {
            if let Ok(node) = tree::decode(id, &built.nodes[id].0) {
                known.learn(*id, &node);
            }
        }
        Ok(summary)
    }
}

/// How a commit writes an image.
enum Plan {
    /// As its parent's: the same tree and patches.
    Same { root: Option<NodeRef>, patches: Vec<NodeRef> },
    /// As its parent's tree and patches, and a new patch (sizes filled in at commit).
    Patched { root: Option<NodeRef>, patches: Vec<NodeRef>, patch: tree::Patch },
    /// As a tree: its leaves' extents, each with the stored leaf that holds them if known.
    Tree(Vec<(Range<usize>, Option<NodeId>)>),
}

/// How image `extents` is written over its parent's image `old`: the same, one more patch, or
/// (`None`) a tree, when the chain is full ([`tree::MAX_PATCHES`]), when the patches would hold
/// more than twice as many entries as the parent's tree has extents, or when no patch gives
/// exactly `extents`.
fn patch_plan(old: &tree::KnownImage, extents: &[Extent]) -> Option<Plan> {
    let root = old.root?;
    let patch = tree::diff(&old.extents, extents)?;
    if patch.cuts.is_empty() && patch.extents.is_empty() {
        return Some(Plan::Same { root: Some(root), patches: old.patches.clone() });
    }
    let entries: u64 = old.patches.iter().map(|p| p.extents).sum::<u64>() + patch.entries();
    if old.patches.len() >= tree::MAX_PATCHES || entries > 2 * root.extents {
        return None;
    }
    Some(Plan::Patched { root: Some(root), patches: old.patches.clone(), patch })
}

impl Drop for LocalWriter<'_> {
    fn drop(&mut self) {
        // An uncommitted writer's finished packs are not in the index: remove them now rather than
        // leave them for the next open's recovery.
        for (id, _) in self.finished.drain(..) {
            let _ = std::fs::remove_file(self.store.pack_path(id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Image, ImageKind};

    /// A store written before manifest trees (version 1 manifests, whole extent lists) or before
    /// patches (version 2, trees only) stays readable; a manifest of a newer version is refused
    /// by version, not misread.
    #[test]
    fn version_1_manifests_are_read_and_newer_ones_refused() {
        let tmp = tempfile::TempDir::new().unwrap();
        let store = LocalStore::open(tmp.path().join("s"), StoreOptions { create: true, ..Default::default() }).unwrap();
        let mut w = store.writer().unwrap();
        let data: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
        let (extents, _) = crate::store_run(&mut w, &zap_chunker::ChunkerConfig::default(), 0x10000, &data).unwrap();
        let mut m = Manifest::new("old", "memory");
        m.images.push(Image { name: "mem".into(), kind: ImageKind::Memory, extents: extents.clone() });
        let summary = w.commit(m.clone()).unwrap();
        let (v3, _): (StoredManifest, u16) =
            envelope::open(MANIFEST_MAGIC, MANIFEST_VERSION, &store.index.get(CF_MANIFESTS, &summary.id.0).unwrap().unwrap()).unwrap();
        // Rewrite it as a version-1 manifest, as an older Zap wrote it.
        m.id = summary.id;
        m.created_ms = summary.created_ms;
        let mut batch = store.index.batch();
        batch.put(CF_MANIFESTS, &summary.id.0, &envelope::seal(MANIFEST_MAGIC, 1, &m));
        batch.commit("test: old manifest").unwrap();
        assert_eq!(store.manifest(&summary.id).unwrap(), m);
        let report = store.verify(&|_, _| {}).unwrap();
        assert!(report.ok(), "{:?}", report.problems);
        // And as a version-2 manifest (trees, no patches).
        let v2 = crate::manifest::StoredManifestV2 {
            id: summary.id,
            parent: v3.parent,
            created_ms: summary.created_ms,
            name: v3.name,
            kind: v3.kind,
            labels: v3.labels,
            images: v3.images.into_iter().map(|i| crate::manifest::StoredImageV2 { name: i.name, kind: i.kind, root: i.root }).collect(),
            state: v3.state,
        };
        let mut batch = store.index.batch();
        batch.put(CF_MANIFESTS, &summary.id.0, &envelope::seal(MANIFEST_MAGIC, 2, &v2));
        batch.commit("test: version 2 manifest").unwrap();
        assert_eq!(store.manifest(&summary.id).unwrap(), m);
        assert!(store.verify(&|_, _| {}).unwrap().ok());
        let mut batch = store.index.batch();
        batch.put(CF_MANIFESTS, &summary.id.0, &envelope::seal(MANIFEST_MAGIC, MANIFEST_VERSION + 1, &m));
        batch.commit("test: future manifest").unwrap();
        let err = store.manifest(&summary.id).unwrap_err().to_string();
        assert!(err.contains(&format!("format version {} not supported", MANIFEST_VERSION + 1)), "{err}");
    }

    /// A child written as a patch over its parent reads back exactly; a damaged patch node is
    /// named when the child is read and by verify, and the parent stays readable.
    #[test]
    fn damaged_patches_are_named_and_leave_the_parent_readable() {
        let tmp = tempfile::TempDir::new().unwrap();
        let store = LocalStore::open(tmp.path().join("s"), StoreOptions { create: true, ..Default::default() }).unwrap();
        let cfg = zap_chunker::ChunkerConfig::default();
        let mut w = store.writer().unwrap();
        let data: Vec<u8> = (0..64 * 65536u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let (extents, _) = crate::store_run(&mut w, &cfg, 0x100_0000, &data).unwrap();
        let mut m = Manifest::new("parent", "memory");
        m.images.push(Image { name: "mem".into(), kind: ImageKind::Memory, extents: extents.clone() });
        let parent = w.commit(m).unwrap();
        // Read first, as an incremental checkpoint reads its parent; then one page changes.
        assert_eq!(store.manifest(&parent.id).unwrap().images[0].extents, extents);
        let mut w = store.writer().unwrap();
        let page: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 1) as u8).collect();
        let (changed, _) = crate::store_run(&mut w, &cfg, 0x100_0000 + 5 * 65536 + 4096, &page).unwrap();
        let child_extents = crate::overlay(&extents, &changed);
        let mut m = Manifest::new("child", "memory");
        m.parent = Some(parent.id);
        m.images.push(Image { name: "mem".into(), kind: ImageKind::Memory, extents: child_extents.clone() });
        let child = w.commit(m).unwrap();
        assert!(child.manifest_bytes * 4 < parent.manifest_bytes, "{} vs {}", child.manifest_bytes, parent.manifest_bytes);
        let (stored, _): (StoredManifest, u16) =
            envelope::open(MANIFEST_MAGIC, MANIFEST_VERSION, &store.index.get(CF_MANIFESTS, &child.id.0).unwrap().unwrap()).unwrap();
        let patch = stored.images[0].patches.first().copied().expect("the child's image is a patch over the parent's");
        assert_eq!(stored.images[0].root, Some(*store.known.lock().unwrap().images_of(&parent.id).unwrap()["mem"].root.as_ref().unwrap()));
        *store.known.lock().unwrap() = Known::default();
        assert_eq!(store.manifest(&child.id).unwrap().images[0].extents, child_extents);
        // The patch node's bytes damaged in the index.
        let mut bytes = store.index.nodes_of(&[patch.id]).unwrap().pop().unwrap().unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        let mut batch = store.index.batch();
        batch.put_node(&patch.id, &bytes);
        batch.commit("test: damage a patch").unwrap();
        let err = store.manifest(&child.id).unwrap_err().to_string();
        assert!(err.contains(&format!("manifest patch {} of checkpoint {}", patch.id, child.id)), "{err}");
        let report = store.verify(&|_, _| {}).unwrap();
        assert!(report.problems.iter().any(|p| p.object == format!("checkpoint {}", child.id)), "{:?}", report.problems);
        assert_eq!(store.manifest(&parent.id).unwrap().images[0].extents, extents);
    }

    /// A read-only open (a restore's) reads what a writer committed, whether the writer's log
    /// was flushed into table files on close or is still to be replayed, refuses every write
    /// with a message naming the read-only open, and leaves the store as it found it.
    #[test]
    fn read_only_open_reads_committed_checkpoints_and_refuses_writes() {
        let tmp = tempfile::TempDir::new().unwrap();
        let root = tmp.path().join("s");
        let ro = StoreOptions { read_only: true, ..Default::default() };
        assert!(matches!(LocalStore::open(&root, ro.clone()), Err(StoreError::NotAStore(_))));
        let data: Vec<u8> = (0..262144u32).map(|i| (i * 13 % 251) as u8).collect();
        let mut written = Vec::new();
        for round in 0..2 {
            // The second commit stays in the log alone: no flush started at commit.
            let store = LocalStore::open(&root, StoreOptions { create: true, flush_after_commit: round == 0, ..Default::default() }).unwrap();
            let mut w = store.writer().unwrap();
            let (extents, _) = crate::store_run(&mut w, &zap_chunker::ChunkerConfig::default(), 0x10000, &data[round * 4096..]).unwrap();
            let mut m = Manifest::new(format!("ro-{round}"), "memory");
            m.images.push(Image { name: "mem".into(), kind: ImageKind::Memory, extents });
            written.push(w.commit(m).unwrap().id);
            if round == 1 {
                // The second writer's log is left unflushed (as by a writer killed after its
                // commit): the reader replays it.
                store.index.forget_writes();
            }
        }
        let logged: u64 = std::fs::read_dir(root.join("index"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .map(|e| e.metadata().unwrap().len())
            .sum();
        assert!(logged > 0, "the second checkpoint is only in the index's log");
        let store = LocalStore::open(&root, ro).unwrap();
        for (round, id) in written.iter().enumerate() {
            let m = store.manifest(id).unwrap();
            assert_eq!(m.name, format!("ro-{round}"));
            let mut back = Vec::new();
            for e in &m.images[0].extents {
                if let ExtentData::Chunk { id, offset } = e.data {
                    let bytes = store.read_chunk(&id).unwrap();
                    back.extend_from_slice(&bytes[offset as usize..offset as usize + e.len as usize]);
                }
            }
            assert_eq!(&back[..], &data[round * 4096..round * 4096 + back.len()], "checkpoint {round} reads back");
        }
        let err = store.writer().err().expect("a writer is refused").to_string();
        assert!(err.contains("read-only"), "{err}");
        let err = store.delete(&written[0]).unwrap_err().to_string();
        assert!(err.contains("read-only"), "{err}");
        assert_eq!(store.list().unwrap().len(), 2);
        drop(store);
        assert!(LocalStore::open(&root, StoreOptions { create: true, read_only: true, ..Default::default() }).is_err());
        // A writer opens it afterwards as usual.
        let store = LocalStore::open(&root, StoreOptions::default()).unwrap();
        assert_eq!(store.list().unwrap().len(), 2);
    }
}
