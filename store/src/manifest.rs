//! Checkpoint manifests: what a checkpoint is made of.
//!
//! A manifest names its checkpoint, its parent (for incremental chains), when and from what it
//! was taken, free-form labels, a list of *images* and an opaque engine state blob. An image is a
//! byte space (a process's memory, a file) described by extents; each extent is either zero or a
//! slice of a stored chunk. A child checkpoint lists every extent of its memory, pointing at its
//! parent's chunks where nothing changed, so it never depends on the parent's manifest and
//! deleting a parent never breaks it.
//!
//! Manifests are stored sealed in the [`crate::envelope`] with magic `ZAPM`. Version 1 holds the
//! images with all their extents; version 2 ([`StoredManifest`], written since) holds each image
//! as the root of a tree of content-addressed nodes ([`crate::tree`]), so that a checkpoint
//! writes only the nodes that differ from its parent's. Version 3 (written since) adds to each
//! image a short chain of *patch* nodes over its tree ([`StoredImage::patches`], see
//! [`crate::tree`]), so that an image changed in a few places costs one small node. All three
//! are read; the in-memory [`Manifest`] is the same for all.
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use zap_chunker::ChunkId;

/// Magic of a sealed manifest.
pub const MANIFEST_MAGIC: [u8; 4] = *b"ZAPM";
/// Current manifest format version.
pub const MANIFEST_VERSION: u16 = 3;
/// Magic of a sealed checkpoint summary.
pub const SUMMARY_MAGIC: [u8; 4] = *b"ZAPS";
/// Current summary format version.
pub const SUMMARY_VERSION: u16 = 1;

/// Identifier of a checkpoint: 8 bytes, shown as 16 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CheckpointId(pub [u8; 8]);

impl CheckpointId {
    /// Hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the full 16-digit hex form.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 8];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(CheckpointId(out))
    }
}

impl fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CheckpointId({})", self.to_hex())
    }
}

/// What the bytes of an extent are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExtentData {
    /// All zero; nothing stored.
    Zero,
    /// `len` bytes of the chunk `id`, from byte `offset` of its uncompressed content.
    Chunk {
        /// The chunk.
        id: ChunkId,
        /// Offset into the chunk's uncompressed bytes.
        offset: u32,
    },
}

/// A contiguous range of an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    /// Absolute start (a virtual address for memory, an offset for files).
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// Where the bytes are.
    pub data: ExtentData,
}

impl Extent {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// What an image holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageKind {
    /// Memory of a process (a mapping or a whole address space).
    Memory,
    /// Contents of a file.
    File,
}

/// A byte space in a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Name, unique within the manifest (e.g. `pid/42/mem/7f00..`, or a file path).
    pub name: String,
    /// What it holds.
    pub kind: ImageKind,
    /// Extents in increasing, non-overlapping order; gaps are holes (not part of the image).
    pub extents: Vec<Extent>,
}

impl Image {
    /// Bytes described by the extents.
    pub fn logical_len(&self) -> u64 {
        self.extents.iter().map(|e| e.len).sum()
    }
}

/// A checkpoint's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Set by the store at commit.
    pub id: CheckpointId,
    /// The checkpoint this one was taken incrementally from, if any.
    pub parent: Option<CheckpointId>,
    /// Milliseconds since the Unix epoch, set by the store at commit.
    pub created_ms: u64,
    /// What was checkpointed (a pod or process name).
    pub name: String,
    /// What kind of checkpoint (`files`, `memory`, `process`, `pod`).
    pub kind: String,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
    /// Byte spaces.
    pub images: Vec<Image>,
    /// Engine state (processes, registers, fds...), versioned by the engine; opaque here.
    pub state: Vec<u8>,
}

impl Manifest {
    /// A new, empty manifest.
    pub fn new(name: impl Into<String>, kind: impl Into<String>) -> Self {
        Manifest {
            id: CheckpointId([0; 8]),
            parent: None,
            created_ms: 0,
            name: name.into(),
            kind: kind.into(),
            labels: BTreeMap::new(),
            images: Vec::new(),
            state: Vec::new(),
        }
    }

    /// Every chunk id the manifest references (with repetitions).
    pub fn chunk_refs(&self) -> impl Iterator<Item = (&Image, &Extent, ChunkId)> {
        self.images.iter().flat_map(|img| {
            img.extents.iter().filter_map(move |e| match e.data {
                ExtentData::Chunk { id, .. } => Some((img, e, id)),
                ExtentData::Zero => None,
            })
        })
    }

    /// Checks the shape: extents ordered, non-overlapping, non-empty, names unique.
    pub fn validate(&self) -> Result<(), String> {
        let mut names = std::collections::HashSet::new();
        for img in &self.images {
            if !names.insert(&img.name) {
                return Err(format!("image name {:?} appears twice", img.name));
            }
            let mut prev_end = 0u64;
            for (i, e) in img.extents.iter().enumerate() {
                if e.len == 0 {
                    return Err(format!("image {:?}: extent {i} is empty", img.name));
                }
                if i > 0 && e.start < prev_end {
                    return Err(format!("image {:?}: extent {i} at {:#x} overlaps or is out of order", img.name, e.start));
                }
                prev_end = e.start.checked_add(e.len).ok_or_else(|| format!("image {:?}: extent {i} overflows", img.name))?;
            }
        }
        Ok(())
    }
}

/// A manifest as a stored version keeps it: every field of [`Manifest`], with images of the
/// version's kind (`I`): [`StoredImage`] in version 3, [`StoredImageV2`] in version 2.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredManifestOf<I> {
    /// See [`Manifest::id`].
    pub id: CheckpointId,
    /// See [`Manifest::parent`].
    pub parent: Option<CheckpointId>,
    /// See [`Manifest::created_ms`].
    pub created_ms: u64,
    /// See [`Manifest::name`].
    pub name: String,
    /// See [`Manifest::kind`].
    pub kind: String,
    /// See [`Manifest::labels`].
    pub labels: BTreeMap<String, String>,
    /// Images, each with the root of its extent tree.
    pub images: Vec<I>,
    /// See [`Manifest::state`].
    pub state: Vec<u8>,
}

impl<I> StoredManifestOf<I> {
    /// The manifest these fields describe, with `images` (read from the stored ones, which are
    /// dropped).
    pub fn into_manifest(self, images: Vec<Image>) -> Manifest {
        Manifest {
            id: self.id,
            parent: self.parent,
            created_ms: self.created_ms,
            name: self.name,
            kind: self.kind,
            labels: self.labels,
            images,
            state: self.state,
        }
    }
}

/// A manifest as version 3 stores it: images as tree roots and patches.
pub type StoredManifest = StoredManifestOf<StoredImage>;

/// A manifest as version 2 stored it (images without patches).
pub type StoredManifestV2 = StoredManifestOf<StoredImageV2>;

/// An image as version 3 stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredImage {
    /// See [`Image::name`].
    pub name: String,
    /// See [`Image::kind`].
    pub kind: ImageKind,
    /// Root of the extent tree; `None` for an image without extents.
    pub root: Option<crate::tree::NodeRef>,
    /// Patch nodes applied in order over the tree's extents (at most
    /// [`crate::tree::MAX_PATCHES`]); empty for an image stored as a tree only.
    pub patches: Vec<crate::tree::NodeRef>,
}

/// An image as version 2 stored it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredImageV2 {
    /// See [`Image::name`].
    pub name: String,
    /// See [`Image::kind`].
    pub kind: ImageKind,
    /// Root of the extent tree; `None` for an image without extents.
    pub root: Option<crate::tree::NodeRef>,
}

impl From<StoredManifestV2> for StoredManifest {
    fn from(m: StoredManifestV2) -> Self {
        StoredManifest {
            id: m.id,
            parent: m.parent,
            created_ms: m.created_ms,
            name: m.name,
            kind: m.kind,
            labels: m.labels,
            images: m.images.into_iter().map(|i| StoredImage { name: i.name, kind: i.kind, root: i.root, patches: Vec::new() }).collect(),
            state: m.state,
        }
    }
}

/// The small record kept beside each manifest so that listing needs no manifest decoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointSummary {
    /// The checkpoint.
    pub id: CheckpointId,
    /// Its parent.
    pub parent: Option<CheckpointId>,
    /// Commit time (ms since epoch).
    pub created_ms: u64,
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Number of images.
    pub images: u64,
    /// Bytes described (zero extents included).
    pub logical_bytes: u64,
    /// Bytes in zero extents.
    pub zero_bytes: u64,
    /// Distinct chunks referenced.
    pub chunks: u64,
    /// Uncompressed bytes of the distinct chunks referenced.
    pub chunk_raw_bytes: u64,
    /// Stored bytes of the distinct chunks referenced.
    pub chunk_stored_bytes: u64,
    /// Chunks this checkpoint added to the store.
    pub new_chunks: u64,
    /// Stored bytes this checkpoint added to the store.
    pub new_stored_bytes: u64,
    /// Bytes of metadata this checkpoint wrote: its sealed manifest and the tree nodes that
    /// were not stored yet.
    pub manifest_bytes: u64,
}
