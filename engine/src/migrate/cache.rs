//! The host's migration cache: the chunks of the pods that last left or arrived here, so that a
//! pod migrated back, or another pod of the same image, sends little.
//!
//! It is a store of its own (`<migrate dir>/cache`, a [`LocalStore`]), not the host's image
//! store: it holds no checkpoint (`zap ls` does not show it, nothing can be restored from it),
//! only one manifest per pod name that keeps the chunks of the pod's last departure or arrival
//! alive, at most [`MAX_ENTRIES`] of them (the oldest are dropped and their chunks collected).
//! Migration cuts memory into 4 KiB chunks (one page each, [`chunker`]), so a page that did not
//! change since is found here by its id however the pages around it changed.
//!
//! The source spools every chunk it offers during the migration and, once the pod runs at the
//! destination, keeps them here; the destination keeps what it received. Both consult their
//! cache (and the image store) when asked which chunks they lack. The cache is opened only for a
//! moment each time, so concurrent migrations and other commands are not held up.
use std::path::PathBuf;
use std::time::Duration;

use zap_chunker::ChunkerConfig;
use zap_store::{ChunkSink, Extent, ExtentData, Image, ImageKind, ImageStore, LocalStore, Manifest, StoreOptions};

use super::spool::Spool;
use super::Result;

/// Most pods whose chunks the cache keeps.
pub const MAX_ENTRIES: usize = 8;
/// Manifest kind of a cache entry.
pub const KIND: &str = "migration-cache";

/// The cache directory of this host.
pub fn dir() -> PathBuf {
    crate::host::migrate_dir().join("cache")
}

/// The chunker settings of migration: one chunk per page.
pub fn chunker() -> ChunkerConfig {
    ChunkerConfig { chunk_size: zap_chunker::PAGE_SIZE, ..ChunkerConfig::default() }
}

/// Opens the cache, waiting at most `wait` for another process holding it.
pub fn open(create: bool, wait: Duration) -> zap_store::Result<LocalStore> {
    LocalStore::open(dir(), StoreOptions { create, lock_timeout: wait, ..Default::default() })
}

/// Keeps the chunks of `spool` as pod `pod`'s entry (replacing its older one); drops the oldest
/// entries beyond [`MAX_ENTRIES`] and collects their chunks. The spool is read in order in large
/// pieces; the calling thread should be of low priority (this runs after the handover, beside
/// the pod: [`crate::sys::proc::lower_own_priority`]).
pub fn keep(spool: &Spool, pod: &str, session: &str) -> Result<()> {
    let store = open(true, Duration::from_secs(30))?;
    let mut w = store.writer()?;
    let mut extents = Vec::new();
    let mut pos = 0u64;
    // The spool read in order, in large pieces, each chunk moved into the pack (no copy).
    spool.for_each_in_order(|c| {
        let len = u64::from(c.raw_len.max(1));
        extents.push(Extent { start: pos, len, data: ExtentData::Chunk { id: c.id, offset: 0 } });
        pos += len;
        w.put_owned(c).map(|_| ())
    })?;
    let mut m = Manifest::new(pod.to_string(), KIND);
    m.labels.insert("pod".into(), pod.to_string());
    m.labels.insert("session".into(), session.to_string());
    m.images = vec![Image { name: "chunks".into(), kind: ImageKind::File, extents }];
    let new = w.commit(m)?;
    let mut entries: Vec<_> = store.list()?.into_iter().filter(|s| s.kind == KIND).collect();
    entries.sort_by_key(|s| std::cmp::Reverse(s.created_ms));
    let mut dropped = 0;
    for (i, s) in entries.iter().enumerate() {
        let same_pod = s.id != new.id && s.labels.get("pod").map(String::as_str) == Some(pod);
        if same_pod || i >= MAX_ENTRIES {
            store.delete(&s.id)?;
            dropped += 1;
        }
    }
    if dropped > 0 {
        // Packs are rewritten only when mostly dead: the cache trades space for time.
        store.gc(0.6)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_chunks() {
        let c = chunker();
        let data: Vec<u8> = (0..3 * 4096).map(|i| (i / 4096) as u8 + 1).collect();
        let out = zap_chunker::chunk_run(0, &data, &c);
        assert_eq!(out.len(), 3, "one chunk per page");
        // The middle page alone changed: the others keep their ids.
        let mut d2 = data.clone();
        d2[5000] ^= 1;
        let out2 = zap_chunker::chunk_run(0, &d2, &c);
        assert_eq!(out[0].chunk.as_ref().unwrap().id, out2[0].chunk.as_ref().unwrap().id);
        assert_ne!(out[1].chunk.as_ref().unwrap().id, out2[1].chunk.as_ref().unwrap().id);
        assert_eq!(out[2].chunk.as_ref().unwrap().id, out2[2].chunk.as_ref().unwrap().id);
    }
}
