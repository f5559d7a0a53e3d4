//! Manifest trees: an image's extents stored as a tree of content-addressed nodes, so that the
//! metadata a checkpoint writes grows with what changed, not with the size of what it describes.
//!
//! ```text
//!   manifest (v2) ── image "pid/42/mem/7f00.." ── root NodeRef ──▶ inner node ──▶ leaf nodes
//!                                                  (id, range,        [NodeRef...]    [Extent...]
//!                                                   extents, height)
//! ```
//!
//! A node is stored in the index's `nodes` column family under its id, the BLAKE3 hash of its
//! bytes; reading a node checks the hash, so a node is its own checksum. Node bytes:
//!
//! ```text
//!   0   1  version (NODE_VERSION)
//!   1   1  kind: 0 leaf, 1 inner
//!   2   n  postcard: Leaf (extents in address order, and the raw and stored size of the chunk
//!          of each chunk extent) or Vec<NodeRef> (children in address order)
//! ```
//!
//! **Boundaries are content-defined**, as in restic and git trees: a new leaf begins at an extent
//! whose start address hashes to 0 modulo [`LEAF_TARGET`] (an inner node likewise at a child
//! whose start hashes to 0 modulo [`INNER_TARGET`], with a salt per level), or when a node is
//! full. A change to some extents therefore changes only the leaves that hold them and the nodes
//! on their paths to the root; every other subtree has the same bytes, hence the same id, as in
//! the parent checkpoint, and is not written again. The store also remembers ([`Known`]) the
//! leaves it read in this process (a checkpoint reads its parent's manifest first), so an
//! unchanged leaf is recognised by comparing extents, without encoding or hashing it again.
//!
//! **Patches** (manifest version 3): an image may also be its parent's tree plus a short chain
//! of *patch* nodes (kind 2), each holding what one checkpoint changed: ranges cut out (holes
//! that appeared) and extents laid over the rest ([`crate::overlay`]: an extent replaces the
//! bytes under it, the parent's extents around it are cut, adjacent zero extents merge). The
//! image's extents are the tree's, then each patch applied in order ([`apply_patch`]). A
//! checkpoint whose image changed in a few places thus writes one node whose size grows with
//! the changed extents only (a tree's leaves and inner nodes change nearly all when the changes
//! are spread over the whole image). The chain is bounded ([`MAX_PATCHES`] patches, and no more
//! than twice as many patch entries as the tree has extents); past that the image is written as
//! a tree again (compaction), sharing every unchanged leaf with the old one.
//!
//! ```text
//!   2   n  postcard: Patch (cuts: (start, end) in address order; extents in address order; the
//!          raw and stored size of the chunk of each chunk extent)
//! ```
//!
//! **Invariant:** a stored node's children are stored, and every chunk its extents name is in
//! the index. Commit writes a node only after checking its chunks, and GC deletes unreachable
//! nodes before it frees any chunk, so a writer that finds a node present may reuse its whole
//! subtree without looking inside.
use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::manifest::Extent;

/// Version byte of node encodings.
pub const NODE_VERSION: u8 = 1;
/// Average extents per leaf.
pub const LEAF_TARGET: u64 = 4;
/// Most extents in a leaf.
pub const LEAF_MAX: usize = 64;
/// Average children per inner node.
pub const INNER_TARGET: u64 = 16;
/// Most children of an inner node.
pub const INNER_MAX: usize = 128;
/// Deepest tree accepted on read (a bound against cycles in damaged data).
pub const MAX_HEIGHT: u8 = 16;
/// Most patches over an image's tree (see the module doc); more are refused on read.
pub const MAX_PATCHES: usize = 8;

/// Hashes a chunk or node id by its first 8 bytes: ids are BLAKE3 output, already uniform.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for (i, b) in bytes.iter().take(8).enumerate() {
            self.0 ^= u64::from(*b) << (8 * i);
        }
    }
}

/// Builds [`IdHasher`]s.
pub type BuildIdHasher = std::hash::BuildHasherDefault<IdHasher>;

/// Id of a node: BLAKE3 of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// The id of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        NodeId(*blake3::hash(bytes).as_bytes())
    }

    /// Hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeId({})", &self.to_hex()[..16])
    }
}

/// A reference to a node, as its parent (or the manifest) holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRef {
    /// The node.
    pub id: NodeId,
    /// Start of its first extent.
    pub start: u64,
    /// End of its last extent.
    pub end: u64,
    /// Extents below it.
    pub extents: u64,
    /// 0 for a leaf.
    pub height: u8,
}

/// A chunk's sizes as the index records them; leaves carry them so that a checkpoint's
/// statistics need no index read for the chunks its parent already used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkSize {
    /// Uncompressed bytes.
    pub raw: u32,
    /// Stored bytes.
    pub stored: u32,
}

/// A leaf: extents in address order, and the sizes of the chunk of each chunk extent, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leaf {
    /// The extents.
    pub extents: Vec<Extent>,
    /// One per extent whose data is a chunk.
    pub sizes: Vec<ChunkSize>,
}

/// What one checkpoint changed in an image, over its parent's extents (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Patch {
    /// Ranges that are no longer part of the image, in address order, non-overlapping.
    pub cuts: Vec<(u64, u64)>,
    /// Extents laid over the image, in address order, non-overlapping.
    pub extents: Vec<Extent>,
    /// One per extent whose data is a chunk.
    pub sizes: Vec<ChunkSize>,
}

impl Patch {
    /// Cuts and extents: what the patch's reference counts as its extents.
    pub fn entries(&self) -> u64 {
        (self.cuts.len() + self.extents.len()) as u64
    }

    /// First and one past the last address it touches.
    pub fn range(&self) -> (u64, u64) {
        let starts = self.cuts.first().map(|c| c.0).into_iter().chain(self.extents.first().map(|e| e.start));
        let ends = self.cuts.last().map(|c| c.1).into_iter().chain(self.extents.last().map(|e| e.end()));
        (starts.min().unwrap_or(0), ends.max().unwrap_or(0))
    }

    /// Checks the shape: non-empty, ordered, non-overlapping cuts and extents, no empty one.
    fn check(&self) -> Result<(), String> {
        if self.cuts.is_empty() && self.extents.is_empty() {
            return Err("empty patch".into());
        }
        let mut prev = 0;
        for (i, &(a, b)) in self.cuts.iter().enumerate() {
            if b <= a || (i > 0 && a < prev) {
                return Err(format!("cut {i} [{a:#x}, {b:#x}) is empty, overlaps or is out of order"));
            }
            prev = b;
        }
        let mut prev = 0;
        for (i, e) in self.extents.iter().enumerate() {
            let end = e.start.checked_add(e.len).ok_or_else(|| format!("extent {i} overflows"))?;
            if e.len == 0 || (i > 0 && e.start < prev) {
                return Err(format!("extent {i} at {:#x} is empty, overlaps or is out of order", e.start));
            }
            prev = end;
        }
        Ok(())
    }
}

/// A decoded node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Node {
    /// A leaf.
    Leaf(Leaf),
    /// Children, in address order.
    Inner(Vec<NodeRef>),
    /// A patch over an image's extents.
    Patch(Patch),
}

/// Encodes a node into its stored bytes.
pub fn encode(node: &Node) -> Vec<u8> {
    let (kind, body) = match node {
        Node::Leaf(l) => (0u8, postcard::to_stdvec(l)),
        Node::Inner(c) => (1u8, postcard::to_stdvec(c)),
        Node::Patch(p) => (2u8, postcard::to_stdvec(p)),
    };
    let body = body.expect("postcard encodes nodes");
    let mut out = Vec::with_capacity(2 + body.len());
    out.push(NODE_VERSION);
    out.push(kind);
    out.extend_from_slice(&body);
    out
}

/// Decodes stored node bytes, checking them against `id`.
pub fn decode(id: &NodeId, bytes: &[u8]) -> Result<Node, String> {
    let actual = NodeId::of(bytes);
    if actual != *id {
        return Err(format!("content does not match its id (hash {actual})"));
    }
    let node = match bytes {
        [NODE_VERSION, 0, body @ ..] => postcard::from_bytes(body).map(Node::Leaf).map_err(|e| format!("leaf does not decode: {e}"))?,
        [NODE_VERSION, 1, body @ ..] => postcard::from_bytes(body).map(Node::Inner).map_err(|e| format!("inner node does not decode: {e}"))?,
        [NODE_VERSION, 2, body @ ..] => postcard::from_bytes(body).map(Node::Patch).map_err(|e| format!("patch does not decode: {e}"))?,
        [v, k, ..] => return Err(format!("unsupported node version {v} or kind {k} (this build reads version {NODE_VERSION})")),
        _ => return Err("truncated node".into()),
    };
    let (extents, sizes, what) = match &node {
        Node::Leaf(l) => (&l.extents, &l.sizes, "leaf"),
        Node::Patch(p) => {
            p.check()?;
            (&p.extents, &p.sizes, "patch")
        }
        Node::Inner(_) => return Ok(node),
    };
    let chunks = extents.iter().filter(|e| matches!(e.data, crate::manifest::ExtentData::Chunk { .. })).count();
    if chunks != sizes.len() {
        return Err(format!("{what} has {chunks} chunk extents but {} chunk sizes", sizes.len()));
    }
    Ok(node)
}

/// What a store knows of the trees it read or wrote in this process: a cache that lets a
/// checkpoint reuse its parent's leaves without encoding, hashing or looking them up. Every node
/// in it is stored; GC clears it.
#[derive(Default)]
pub struct Known {
    /// Stored nodes.
    pub nodes: HashSet<NodeId, BuildIdHasher>,
    /// Stored leaves by the start of their first extent: id and extents.
    pub leaves: HashMap<u64, (NodeId, Vec<Extent>)>,
    /// Sizes of chunks that stored leaves and patches reference.
    pub sizes: HashMap<zap_chunker::ChunkId, ChunkSize, BuildIdHasher>,
    /// The images of the last manifests read (at most [`KNOWN_MANIFESTS`]), by checkpoint: a
    /// checkpoint whose parent is among them writes its images as patches over the parent's.
    pub images: std::collections::VecDeque<(crate::manifest::CheckpointId, HashMap<String, KnownImage>)>,
}

/// How many manifests' images [`Known`] keeps.
pub const KNOWN_MANIFESTS: usize = 2;

/// An image of a manifest read in this process: how it is stored, and its extents.
pub struct KnownImage {
    /// Root of its tree.
    pub root: Option<NodeRef>,
    /// Patches over the tree, in order.
    pub patches: Vec<NodeRef>,
    /// Its extents.
    pub extents: Vec<Extent>,
}

impl Known {
    /// Records a stored node.
    pub fn learn(&mut self, id: NodeId, node: &Node) {
        self.nodes.insert(id);
        let (extents, sizes) = match node {
            Node::Leaf(l) => (&l.extents, &l.sizes),
            Node::Patch(p) => (&p.extents, &p.sizes),
            Node::Inner(_) => return,
        };
        let chunks = extents.iter().filter_map(|e| match e.data {
            crate::manifest::ExtentData::Chunk { id, .. } => Some(id),
            crate::manifest::ExtentData::Zero => None,
        });
        for (c, size) in chunks.zip(sizes) {
            self.sizes.insert(c, *size);
        }
        if let (Node::Leaf(l), Some(first)) = (node, extents.first()) {
            self.leaves.insert(first.start, (id, l.extents.clone()));
        }
    }

    /// Remembers the images of manifest `id` (forgetting the oldest beyond [`KNOWN_MANIFESTS`]).
    pub fn learn_images(&mut self, id: crate::manifest::CheckpointId, images: HashMap<String, KnownImage>) {
        self.images.retain(|(m, _)| *m != id);
        if self.images.len() >= KNOWN_MANIFESTS {
            self.images.pop_front();
        }
        self.images.push_back((id, images));
    }

    /// The images of manifest `id`, if it was read in this process.
    pub fn images_of(&self, id: &crate::manifest::CheckpointId) -> Option<&HashMap<String, KnownImage>> {
        self.images.iter().find(|(m, _)| m == id).map(|(_, i)| i)
    }

    /// The stored leaf that holds exactly `extents`, if known.
    pub fn leaf(&self, extents: &[Extent]) -> Option<NodeId> {
        let (id, known) = self.leaves.get(&extents.first()?.start)?;
        (known.as_slice() == extents).then_some(*id)
    }
}

/// A 64-bit mix of an address (splitmix64), for content-defined boundaries.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Cuts `items` into groups: a group starts where `starts_group(i)` or where the current one is
/// full.
fn groups<T>(items: &[T], max: usize, starts_group: impl Fn(usize) -> bool) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut from = 0;
    for i in 1..items.len() {
        if i - from >= max || starts_group(i) {
            out.push(&items[from..i]);
            from = i;
        }
    }
    if from < items.len() {
        out.push(&items[from..]);
    }
    out
}

/// New nodes built in memory: id → (bytes, the ids of its children).
#[derive(Default)]
pub struct Built {
    /// The nodes.
    pub nodes: HashMap<NodeId, (Vec<u8>, Vec<NodeId>)>,
}

/// How the extents of an image are cut into leaves (content-defined, see the module doc).
pub fn leaf_groups(extents: &[Extent]) -> Vec<std::ops::Range<usize>> {
    let mut at = 0;
    groups(extents, LEAF_MAX, |i| mix(extents[i].start).is_multiple_of(LEAF_TARGET))
        .into_iter()
        .map(|g| {
            at += g.len();
            at - g.len()..at
        })
        .collect()
}

/// A new leaf: encodes it into `built` and returns its reference.
pub fn add_leaf(leaf: Leaf, built: &mut Built) -> NodeRef {
    let (start, end, n) = (leaf.extents[0].start, leaf.extents[leaf.extents.len() - 1].end(), leaf.extents.len() as u64);
    let bytes = encode(&Node::Leaf(leaf));
    let id = NodeId::of(&bytes);
    built.nodes.entry(id).or_insert((bytes, Vec::new()));
    NodeRef { id, start, end, extents: n, height: 0 }
}

/// The reference to a stored leaf `id` holding `extents`.
pub fn leaf_ref(id: NodeId, extents: &[Extent]) -> NodeRef {
    NodeRef { id, start: extents[0].start, end: extents[extents.len() - 1].end(), extents: extents.len() as u64, height: 0 }
}

/// Builds the inner levels above `leaves` (in address order) into `built` and returns the root
/// (`None` for no leaves).
pub fn build_inner(mut level: Vec<NodeRef>, built: &mut Built) -> Option<NodeRef> {
    let mut height = 0u8;
    while level.len() > 1 {
        height += 1;
        let salt = mix(u64::from(height));
        let mut up = Vec::new();
        for group in groups(&level, INNER_MAX, |i| mix(level[i].start ^ salt).is_multiple_of(INNER_TARGET)) {
            let bytes = encode(&Node::Inner(group.to_vec()));
            let id = NodeId::of(&bytes);
            built.nodes.entry(id).or_insert((bytes, group.iter().map(|c| c.id).collect()));
            up.push(NodeRef {
                id,
                start: group[0].start,
                end: group[group.len() - 1].end,
                extents: group.iter().map(|c| c.extents).sum(),
                height,
            });
        }
        level = up;
    }
    level.pop()
}

/// The nodes of `built` below (and including) `roots` that `exists` does not report as stored,
/// found top-down, one call of `exists` per level (a batch of lookups): a stored node's subtree
/// is stored (see the module doc) and is not entered.
pub fn missing(
    built: &Built,
    roots: &[NodeId],
    mut exists: impl FnMut(&[NodeId]) -> crate::Result<Vec<bool>>,
) -> crate::Result<Vec<NodeId>> {
    let mut out = Vec::new();
    let mut seen: HashSet<NodeId> = HashSet::new();
    let mut level: Vec<NodeId> = roots.iter().copied().filter(|id| seen.insert(*id)).collect();
    while !level.is_empty() {
        let stored = exists(&level)?;
        let mut next = Vec::new();
        for (id, stored) in level.into_iter().zip(stored) {
            if stored {
                continue;
            }
            out.push(id);
            if let Some((_, children)) = built.nodes.get(&id) {
                next.extend(children.iter().copied().filter(|c| seen.insert(*c)));
            }
        }
        level = next;
    }
    Ok(out)
}

/// `extents` (ordered, non-overlapping) with the ranges `cuts` (ordered) taken out, extents cut
/// at their edges.
fn remove_ranges(extents: &[Extent], cuts: &[(u64, u64)]) -> Vec<Extent> {
    if cuts.is_empty() {
        return extents.to_vec();
    }
    let mut out = Vec::with_capacity(extents.len());
    let mut k = 0;
    for e in extents {
        while k < cuts.len() && cuts[k].1 <= e.start {
            k += 1;
        }
        let mut pos = e.start;
        for &(a, b) in cuts[k..].iter().take_while(|c| c.0 < e.end()) {
            if a > pos {
                out.extend(crate::image::clip(std::slice::from_ref(e), pos, a));
            }
            pos = pos.max(b);
        }
        if pos < e.end() {
            out.extend(crate::image::clip(std::slice::from_ref(e), pos, e.end()));
        }
    }
    out
}

/// `extents` with `patch` applied: its cuts taken out, then its extents laid over
/// ([`crate::overlay`]).
pub fn apply_patch(extents: &[Extent], patch: &Patch) -> Vec<Extent> {
    crate::overlay(&remove_ranges(extents, &patch.cuts), &patch.extents)
}

/// True when `n` holds the same bytes as part of `o`, which covers it.
fn implied_by(o: &Extent, n: &Extent) -> bool {
    if o.start > n.start || n.end() > o.end() {
        return false;
    }
    match (o.data, n.data) {
        (crate::manifest::ExtentData::Zero, crate::manifest::ExtentData::Zero) => true,
        (crate::manifest::ExtentData::Chunk { id: a, offset: oa }, crate::manifest::ExtentData::Chunk { id: b, offset: ob }) => {
            a == b && u64::from(oa) + (n.start - o.start) == u64::from(ob)
        }
        _ => false,
    }
}

/// The patch (cuts, extents; sizes left empty) that turns `old` into `new` (both ordered and
/// non-overlapping): the extents of `new` that are not a part of an extent of `old` with the
/// same bytes, and the ranges `old` covers and `new` does not. `None` when applying it would not
/// give exactly `new` (extents of `new` split or merged otherwise than [`crate::overlay`] does):
/// the caller writes a whole tree then.
pub fn diff(old: &[Extent], new: &[Extent]) -> Option<Patch> {
    let mut extents = Vec::new();
    let mut j = 0;
    for n in new {
        while j < old.len() && old[j].end() <= n.start {
            j += 1;
        }
        if !old.get(j).is_some_and(|o| implied_by(o, n)) {
            extents.push(*n);
        }
    }
    // What `old` covers and `new` does not.
    let mut cuts: Vec<(u64, u64)> = Vec::new();
    let mut k = 0;
    for o in old {
        while k < new.len() && new[k].end() <= o.start {
            k += 1;
        }
        let mut pos = o.start;
        for n in new[k..].iter().take_while(|n| n.start < o.end()) {
            if n.start > pos {
                cuts.push((pos, n.start));
            }
            pos = pos.max(n.end());
        }
        if pos < o.end() {
            cuts.push((pos, o.end()));
        }
    }
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(cuts.len());
    for (a, b) in cuts {
        match merged.last_mut() {
            Some(last) if last.1 == a => last.1 = b,
            _ => merged.push((a, b)),
        }
    }
    let patch = Patch { cuts: merged, extents, sizes: Vec::new() };
    (apply_patch(old, &patch) == new).then_some(patch)
}

/// A new patch: encodes it into `built` and returns its reference.
pub fn add_patch(patch: Patch, built: &mut Built) -> NodeRef {
    let (start, end) = patch.range();
    let n = patch.entries();
    let bytes = encode(&Node::Patch(patch));
    let id = NodeId::of(&bytes);
    built.nodes.entry(id).or_insert((bytes, Vec::new()));
    NodeRef { id, start, end, extents: n, height: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ExtentData;
    use zap_chunker::ChunkId;

    fn extents(n: u64, salt: u8) -> Vec<Extent> {
        (0..n)
            .map(|i| Extent {
                start: i * 0x10000,
                len: 0x8000,
                data: if i % 3 == 0 { ExtentData::Zero } else { ExtentData::Chunk { id: ChunkId([(i as u8) ^ salt; 32]), offset: 0 } },
            })
            .collect()
    }

    fn leaf_of(e: &[Extent]) -> Leaf {
        let n = e.iter().filter(|e| e.data != ExtentData::Zero).count();
        Leaf { extents: e.to_vec(), sizes: vec![ChunkSize { raw: 0x8000, stored: 100 }; n] }
    }

    fn build(e: &[Extent], built: &mut Built) -> NodeRef {
        let leaves = leaf_groups(e).into_iter().map(|g| add_leaf(leaf_of(&e[g]), built)).collect();
        build_inner(leaves, built).unwrap()
    }

    fn read_back(built: &Built, r: &NodeRef, out: &mut Vec<Extent>) {
        let (bytes, _) = &built.nodes[&r.id];
        match decode(&r.id, bytes).unwrap() {
            Node::Leaf(l) => out.extend(l.extents),
            Node::Inner(c) => c.iter().for_each(|c| read_back(built, c, out)),
            Node::Patch(_) => panic!("a patch in a tree"),
        }
    }

    #[test]
    fn round_trip_and_small_changes_share_subtrees() {
        let base = extents(20_000, 0);
        let mut a = Built::default();
        let ra = build(&base, &mut a);
        let mut back = Vec::new();
        read_back(&a, &ra, &mut back);
        assert_eq!(back, base);
        assert_eq!(ra.extents, base.len() as u64);
        // Change 10 extents and insert one: only their leaves and paths are new.
        let mut changed = base.clone();
        for i in (0..10).map(|k| k * 1997 + 5) {
            changed[i].data = ExtentData::Chunk { id: ChunkId([0xee; 32]), offset: 0 };
        }
        changed[100].len = 0x1000;
        changed.insert(101, Extent { start: 100 * 0x10000 + 0x1000, len: 0x1000, data: ExtentData::Zero });
        let mut b = Built::default();
        let rb = build(&changed, &mut b);
        let new = missing(&b, &[rb.id], |ids| Ok(ids.iter().map(|id| a.nodes.contains_key(id)).collect())).unwrap();
        let new_bytes: usize = new.iter().map(|id| b.nodes[id].0.len()).sum();
        let all_bytes: usize = b.nodes.values().map(|(v, _)| v.len()).sum();
        assert!(new.len() < 60, "{} new nodes", new.len());
        assert!(new_bytes * 10 < all_bytes, "{new_bytes} of {all_bytes} bytes rewritten");
        let mut back = Vec::new();
        read_back(&b, &rb, &mut back);
        assert_eq!(back, changed);
    }

    #[test]
    fn damage_is_detected() {
        let mut a = Built::default();
        let r = build(&extents(100, 1), &mut a);
        let (bytes, _) = &a.nodes[&r.id];
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(decode(&r.id, &bad).is_err());
        }
        assert!(decode(&r.id, &bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn patches_hold_what_changed_and_apply_back() {
        let page = 0x1000u64;
        // A parent image as a dump makes it: one extent per 64 KiB, chunk or zero.
        let old: Vec<Extent> = (0..4000u64)
            .map(|i| Extent {
                start: 0x10_0000 + i * 16 * page,
                len: 16 * page,
                data: if i % 5 == 0 { ExtentData::Zero } else { ExtentData::Chunk { id: ChunkId([(i % 251) as u8; 32]), offset: 0 } },
            })
            .collect();
        // A child as an incremental dump makes it: pages written (new chunks, zero pages)
        // laid over the parent's, the end of the image unmapped, a page unmapped in the middle.
        let mut changed: Vec<Extent> = (0..40u64)
            .map(|k| Extent {
                start: 0x10_0000 + (k * 97 + 3) * 16 * page + (k % 16) * page,
                len: page,
                data: if k % 7 == 0 { ExtentData::Zero } else { ExtentData::Chunk { id: ChunkId([0xe0 ^ k as u8; 32]), offset: 0 } },
            })
            .collect();
        changed.sort_by_key(|e| e.start);
        let laid = crate::overlay(&old, &changed);
        let end = 0x10_0000 + 3900 * 16 * page;
        let hole = (0x10_0000 + 1000 * 16 * page + 3 * page, 0x10_0000 + 1000 * 16 * page + 4 * page);
        let new: Vec<Extent> = [crate::clip(&laid, 0, hole.0), crate::clip(&laid, hole.1, end)].concat();
        let patch = diff(&old, &new).expect("a patch gives the new extents");
        assert_eq!(apply_patch(&old, &patch), new);
        assert!(patch.extents.len() <= changed.len() + 1, "{} extents in the patch", patch.extents.len());
        assert_eq!(patch.cuts, vec![hole, (end, old[old.len() - 1].end())]);
        // Unchanged: an empty patch. Encoded and decoded: the same, damage detected.
        let same = diff(&old, &old).unwrap();
        assert!(same.cuts.is_empty() && same.extents.is_empty());
        let n = patch.extents.iter().filter(|e| e.data != ExtentData::Zero).count();
        let full = Patch { sizes: vec![ChunkSize { raw: 0x10000, stored: 10 }; n], ..patch };
        let mut built = Built::default();
        let r = add_patch(full.clone(), &mut built);
        let bytes = &built.nodes[&r.id].0;
        assert_eq!(decode(&r.id, bytes).unwrap(), Node::Patch(full.clone()));
        assert!(bytes.len() < 60 * (full.extents.len() + full.cuts.len()) + 16, "{} bytes", bytes.len());
        let mut short = full.clone();
        short.sizes.pop();
        let b = encode(&Node::Patch(short));
        assert!(decode(&NodeId::of(&b), &b).unwrap_err().contains("chunk sizes"));
        let mut unordered = full;
        unordered.extents.swap(0, 1);
        let b = encode(&Node::Patch(unordered));
        assert!(decode(&NodeId::of(&b), &b).unwrap_err().contains("out of order"));
        // Extents split otherwise than an overlay splits them: no patch (the caller writes a tree).
        let mut split = old.clone();
        let first = split[1];
        split[1].len = page;
        split.insert(2, Extent { start: first.start + page, len: first.len - page, data: ExtentData::Chunk { id: ChunkId([1; 32]), offset: 0x1000 } });
        assert!(diff(&old, &split).is_none());
    }
}
