//! Shared helpers of Zap's integration tests.
//!
//! - A deterministic checkpoint generator: checkpoint `i` is named `ckpt-i` and holds two or
//!   three images whose bytes are a pure function of `i` ([`image_specs`], [`image_content`]): a
//!   mix of zero pages, compressible text pages and random pages, sizes 1–3 MiB per image. About
//!   half of the 64 KiB blocks are the same in every checkpoint and a sixth are shared between
//!   neighbours (`2k` and `2k+1`), so successive checkpoints deduplicate against each other.
//! - [`write_checkpoint`] stores checkpoint `i`; [`check_checkpoint`] reads a stored checkpoint
//!   back and compares every image with what its name says it must contain, telling a store error
//!   (acceptable after damage) apart from wrong data (never acceptable).
//! - Small file-system helpers (copying a store, listing its files).
//!
//! The `store_writer` binary of this crate and the `store_*` integration tests both use these, so
//! a test can check what a killed child process wrote without any side channel.
use std::path::{Path, PathBuf};
use std::time::Duration;

use zap_chunker::ChunkerConfig;
use zap_store::{
    materialize, store_run, ChunkId, ChunkSink, CheckpointId, CheckpointSummary, ExtentData, Image, ImageKind,
    ImageStore, LocalStore, Manifest, StoreOptions,
};

/// Page size the generator works in.
pub const PAGE: usize = 4096;
/// Pages per 64 KiB block (the chunker's default block).
const BLOCK_PAGES: usize = 16;

/// One image of a generated checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSpec {
    /// Image name inside the manifest.
    pub name: String,
    /// Memory or file.
    pub kind: ImageKind,
    /// Absolute start address.
    pub start: u64,
    /// Length in bytes (a whole number of pages).
    pub len: usize,
}

/// SplitMix64 finaliser: a good 64-bit mixing function.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Hashes a tuple of numbers into a seed.
pub fn seed(parts: &[u64]) -> u64 {
    parts.iter().fold(0x5A17_C0DE_u64, |h, p| mix(h ^ p))
}

/// Name of checkpoint `i`.
pub fn checkpoint_name(i: u64) -> String {
    format!("ckpt-{i}")
}

/// The `i` of a `ckpt-i` name.
pub fn parse_checkpoint_name(name: &str) -> Option<u64> {
    name.strip_prefix("ckpt-")?.parse().ok()
}

/// The images of checkpoint `i` (two or three, 1–3 MiB each).
pub fn image_specs(i: u64) -> Vec<ImageSpec> {
    let count = 2 + (seed(&[i, 1]) % 2) as usize;
    (0..count)
        .map(|j| {
            let pages = 256 + (seed(&[i, j as u64, 2]) % 512) as usize;
            let (name, kind, start) = match j {
                0 => ("mem/heap".to_string(), ImageKind::Memory, 0x5555_0000_0000u64),
                1 => ("mem/anon".to_string(), ImageKind::Memory, 0x7f00_1000_0000u64),
                // Not 64 KiB aligned: chunks of this image start mid-block.
                _ => ("file/data".to_string(), ImageKind::File, 0x3000u64),
            };
            ImageSpec { name, kind, start, len: pages * PAGE }
        })
        .collect()
}

/// A small xorshift generator for page contents.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

const WORDS: [&str; 16] = [
    "checkpoint ", "restore ", "process ", "memory ", "page ", "zap ", "chunk ", "store ", "the ", "of ",
    "pack ", "index ", "signal ", "thread ", "register ", "mapping ",
];

fn fill_page(page: &mut [u8], page_seed: u64) {
    let mut rng = Rng(page_seed | 1);
    match page_seed % 10 {
        0..=2 => {} // zero
        3..=6 => {
            // Text: compresses well.
            let mut pos = 0;
            while pos < page.len() {
                let w = WORDS[(rng.next() % WORDS.len() as u64) as usize].as_bytes();
                let n = w.len().min(page.len() - pos);
                page[pos..pos + n].copy_from_slice(&w[..n]);
                pos += n;
            }
        }
        _ => {
            // Random: stored raw.
            for word in page.chunks_exact_mut(8) {
                word.copy_from_slice(&rng.next().to_le_bytes());
            }
        }
    }
}

/// The bytes of image `j` of checkpoint `i`.
///
/// Content is decided per 64 KiB block of the absolute address space, so that a shared block has
/// the same bytes at the same alignment in every checkpoint (and hence the same chunks).
pub fn image_content(i: u64, j: usize) -> Vec<u8> {
    let spec = &image_specs(i)[j];
    let mut data = vec![0u8; spec.len];
    let first_page = spec.start / PAGE as u64;
    for (p, page) in data.chunks_mut(PAGE).enumerate() {
        let abs_page = first_page + p as u64;
        let block = abs_page / BLOCK_PAGES as u64;
        let block_seed = match seed(&[j as u64, block, 3]) % 6 {
            0..=2 => seed(&[j as u64, block, 4]),     // the same in every checkpoint
            3 => seed(&[i / 2, j as u64, block, 5]),  // shared by checkpoints 2k and 2k+1
            _ => seed(&[i, j as u64, block, 6]),      // this checkpoint only
        };
        if block_seed % 7 == 0 {
            continue; // a whole zero block
        }
        fill_page(page, seed(&[block_seed, abs_page]));
    }
    data
}

/// Chunker settings used by every writer of the tests.
pub fn chunker_config() -> ChunkerConfig {
    ChunkerConfig::default()
}

/// Store options with `create` and a lock timeout.
pub fn options(create: bool, lock_timeout: Duration) -> StoreOptions {
    StoreOptions { create, lock_timeout, ..StoreOptions::default() }
}

/// Builds the manifest of checkpoint `i`, putting its chunks into `sink`.
pub fn build_manifest<S: ChunkSink>(sink: &mut S, i: u64) -> zap_store::Result<Manifest> {
    let cfg = chunker_config();
    let mut manifest = Manifest::new(checkpoint_name(i), "memory");
    manifest.labels.insert("seq".into(), i.to_string());
    manifest.state = format!("state of checkpoint {i}").into_bytes();
    for (j, spec) in image_specs(i).into_iter().enumerate() {
        let data = image_content(i, j);
        let (extents, _) = store_run(sink, &cfg, spec.start, &data)?;
        manifest.images.push(Image { name: spec.name, kind: spec.kind, extents });
    }
    Ok(manifest)
}

/// Writes checkpoint `i` into `store` and commits it.
pub fn write_checkpoint(store: &LocalStore, i: u64) -> zap_store::Result<CheckpointSummary> {
    let mut w = store.writer()?;
    let manifest = build_manifest(&mut w, i)?;
    w.commit(manifest)
}

/// What reading a checkpoint back gave.
#[derive(Debug)]
pub enum Readback {
    /// Every image is exactly what its name promises.
    Correct,
    /// The store refused (an error). Acceptable only where the store was damaged.
    StoreError(String),
    /// The store returned bytes or structure that are not what was written. Never acceptable.
    WrongData(String),
}

impl Readback {
    /// True for [`Readback::Correct`].
    pub fn is_correct(&self) -> bool {
        matches!(self, Readback::Correct)
    }
}

/// Reads back one image of a manifest and compares it with `expected`.
pub fn check_image<S: ImageStore>(store: &S, img: &Image, spec: &ImageSpec, expected: &[u8]) -> Readback {
    if img.name != spec.name || img.kind != spec.kind {
        return Readback::WrongData(format!("image {:?}/{:?}, expected {:?}/{:?}", img.name, img.kind, spec.name, spec.kind));
    }
    // The extents must cover the image exactly, in order.
    let mut pos = spec.start;
    for e in &img.extents {
        if e.start != pos || e.len == 0 {
            return Readback::WrongData(format!("image {:?}: extent at {:#x}, expected one at {pos:#x}", img.name, e.start));
        }
        pos = e.end();
    }
    if pos != spec.start + spec.len as u64 {
        return Readback::WrongData(format!("image {:?}: extents end at {pos:#x}", img.name));
    }
    // Poison the buffer so that bytes materialize leaves alone would show.
    let mut out = vec![0xA5u8; spec.len];
    match materialize(store, &img.extents, spec.start, &mut out) {
        Err(e) => Readback::StoreError(format!("image {:?}: {e}", img.name)),
        Ok(()) if out == expected => Readback::Correct,
        Ok(()) => {
            let at = out.iter().zip(expected).position(|(a, b)| a != b).unwrap_or(0);
            Readback::WrongData(format!("image {:?}: materialized bytes differ from byte {at:#x} on", img.name))
        }
    }
}

/// Reads checkpoint `id` back and compares it with the generator's content for its name.
pub fn check_checkpoint<S: ImageStore>(store: &S, id: &CheckpointId) -> Readback {
    let m = match store.manifest(id) {
        Ok(m) => m,
        Err(e) => return Readback::StoreError(format!("manifest of {id}: {e}")),
    };
    check_manifest(store, id, &m)
}

/// Like [`check_checkpoint`] with the manifest already loaded.
pub fn check_manifest<S: ImageStore>(store: &S, id: &CheckpointId, m: &Manifest) -> Readback {
    if m.id != *id {
        return Readback::WrongData(format!("manifest of {id} carries id {}", m.id));
    }
    let Some(i) = parse_checkpoint_name(&m.name) else {
        return Readback::WrongData(format!("checkpoint {id} has unexpected name {:?}", m.name));
    };
    let specs = image_specs(i);
    if m.images.len() != specs.len() {
        return Readback::WrongData(format!("{}: {} images, expected {}", m.name, m.images.len(), specs.len()));
    }
    if m.labels.get("seq").map(String::as_str) != Some(i.to_string().as_str())
        || m.state != format!("state of checkpoint {i}").into_bytes()
    {
        return Readback::WrongData(format!("{}: labels or state differ", m.name));
    }
    let mut first_error = None;
    for (j, (img, spec)) in m.images.iter().zip(&specs).enumerate() {
        match check_image(store, img, spec, &image_content(i, j)) {
            Readback::Correct => {}
            Readback::StoreError(e) => {
                first_error.get_or_insert(format!("{}: {e}", m.name));
            }
            wrong @ Readback::WrongData(_) => return wrong,
        }
    }
    match first_error {
        Some(e) => Readback::StoreError(e),
        None => Readback::Correct,
    }
}

/// Distinct chunk ids an image references.
pub fn image_chunks(img: &Image) -> std::collections::BTreeSet<ChunkId> {
    img.extents
        .iter()
        .filter_map(|e| match e.data {
            ExtentData::Chunk { id, .. } => Some(id),
            ExtentData::Zero => None,
        })
        .collect()
}

/// Every file and directory under `root` (not `root` itself), sorted.
pub fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Copies the directory tree `src` to `dst` (which must not exist). Only files and directories.
pub fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let to = dst.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &to)?;
        } else {
            std::fs::copy(entry.path(), &to)?;
        }
    }
    Ok(())
}

/// Pack files (`*.pack`) in a store, sorted.
pub fn pack_files(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root.join("packs"))
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "pack")).collect())
        .unwrap_or_default();
    v.sort();
    v
}
