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

/// A decoded node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Node {
    /// A leaf.
    Leaf(Leaf),
    /// Children, in address order.
    Inner(Vec<NodeRef>),
}

/// Encodes a node into its stored bytes.
pub fn encode(node: &Node) -> Vec<u8> {
    let (kind, body) = match node {
        Node::Leaf(l) => (0u8, postcard::to_stdvec(l)),
        Node::Inner(c) => (1u8, postcard::to_stdvec(c)),
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
        [v, k, ..] => return Err(format!("unsupported node version {v} or kind {k} (this build reads version {NODE_VERSION})")),
        _ => return Err("truncated node".into()),
    };
    if let Node::Leaf(l) = &node {
        let chunks = l.extents.iter().filter(|e| matches!(e.data, crate::manifest::ExtentData::Chunk { .. })).count();
        if chunks != l.sizes.len() {
            return Err(format!("leaf has {chunks} chunk extents but {} chunk sizes", l.sizes.len()));
        }
    }
    Ok(node)
}

/// What a store knows of the trees it read or wrote in this process: a cache that lets a
/// checkpoint reuse its parent's leaves without encoding, hashing or looking them up. Every node
/// in it is stored; GC clears it.
#[derive(Default)]
pub struct Known {
    /// Stored nodes.
    pub nodes: HashSet<NodeId>,
    /// Stored leaves by the start of their first extent: id and extents.
    pub leaves: HashMap<u64, (NodeId, Vec<Extent>)>,
    /// Sizes of chunks that stored leaves reference.
    pub sizes: HashMap<zap_chunker::ChunkId, ChunkSize>,
}

impl Known {
    /// Records a stored node.
    pub fn learn(&mut self, id: NodeId, node: &Node) {
        self.nodes.insert(id);
        if let Node::Leaf(l) = node {
            let chunks = l.extents.iter().filter_map(|e| match e.data {
                crate::manifest::ExtentData::Chunk { id, .. } => Some(id),
                crate::manifest::ExtentData::Zero => None,
            });
            for (c, size) in chunks.zip(&l.sizes) {
                self.sizes.insert(c, *size);
            }
            if let Some(first) = l.extents.first() {
                self.leaves.insert(first.start, (id, l.extents.clone()));
            }
        }
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
/// found top-down: a stored node's subtree is stored (see the module doc) and is not entered.
pub fn missing(
    built: &Built,
    roots: &[NodeId],
    mut exists: impl FnMut(&NodeId) -> crate::Result<bool>,
) -> crate::Result<Vec<NodeId>> {
    let mut out = Vec::new();
    let mut seen: HashSet<NodeId> = HashSet::new();
    let mut stack: Vec<NodeId> = roots.to_vec();
    while let Some(id) = stack.pop() {
        if !seen.insert(id) || exists(&id)? {
            continue;
        }
        out.push(id);
        if let Some((_, children)) = built.nodes.get(&id) {
            stack.extend(children.iter().copied());
        }
    }
    Ok(out)
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
        let new = missing(&b, &[rb.id], |id| Ok(a.nodes.contains_key(id))).unwrap();
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
}
