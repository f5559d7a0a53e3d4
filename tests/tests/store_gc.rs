//! Garbage collection and store locking: what GC frees and what it must keep, GC against a
//! writer of the same process, and a second process waiting for a held store.
use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use zap_store::{
    overlay, store_run, ChunkId, ChunkSink, Image, ImageStore, LocalStore, Manifest, StoreError,
};
use zap_tests::{
    build_manifest, check_checkpoint, check_image, chunker_config, image_chunks, image_content, image_specs, options,
    write_checkpoint, Readback, PAGE,
};

fn open(root: &Path) -> LocalStore {
    LocalStore::open(root, options(true, Duration::from_secs(10))).expect("open store")
}

/// Every chunk a checkpoint references.
fn chunks_of(store: &LocalStore, id: &zap_store::CheckpointId) -> BTreeSet<ChunkId> {
    store.manifest(id).unwrap().images.iter().flat_map(image_chunks).collect()
}

fn assert_clean(store: &LocalStore) {
    let report = store.verify(&|_, _| {}).unwrap();
    assert!(report.ok(), "verify: {:#?}", report.problems);
    assert_eq!(store.stats().unwrap().packs as usize, zap_tests::pack_files(store.root()).len());
}

#[test]
fn gc_keeps_shared_chunks_and_frees_the_rest() {
    let tmp = tempfile::TempDir::new().unwrap();
    let store = open(&tmp.path().join("s"));
    // Checkpoints 0 and 2 share the blocks common to all checkpoints, and nothing else.
    let a = write_checkpoint(&store, 0).unwrap();
    let b = write_checkpoint(&store, 2).unwrap();
    let (ca, cb) = (chunks_of(&store, &a.id), chunks_of(&store, &b.id));
    let shared: BTreeSet<ChunkId> = ca.intersection(&cb).copied().collect();
    let only_a: BTreeSet<ChunkId> = ca.difference(&cb).copied().collect();
    assert!(!shared.is_empty() && !only_a.is_empty(), "the generator must give shared and own chunks");
    let dead_bytes: u64 = only_a.iter().map(|id| u64::from(store.locate(id).unwrap().unwrap().stored_len)).sum();
    // A's chunks all sit in A's pack; after deleting A that pack is partly live (the shared
    // chunks), so GC with threshold 0 must rewrite it.
    let before = store.stats().unwrap();

    store.delete(&a.id).unwrap();
    assert!(matches!(store.manifest(&a.id), Err(StoreError::NotFound(_))));
    // Deleting frees nothing by itself.
    assert_eq!(store.stats().unwrap().pack_bytes, before.pack_bytes);
    let report = store.gc(0.0).unwrap();
    let after = store.stats().unwrap();
    assert_eq!(report.checkpoints, 1);
    assert_eq!(report.freed_chunks, only_a.len() as u64, "{report:?}");
    assert!(report.packs_rewritten >= 1, "{report:?}");
    assert_eq!((report.bytes_before, report.bytes_after), (before.pack_bytes, after.pack_bytes));
    assert!(
        after.pack_bytes + dead_bytes <= before.pack_bytes,
        "pack bytes {} -> {}, {dead_bytes} dead bytes",
        before.pack_bytes,
        after.pack_bytes
    );
    for id in &only_a {
        assert_eq!(store.locate(id).unwrap(), None, "chunk {id} only the deleted checkpoint used is still indexed");
        assert!(matches!(store.read_chunk(id), Err(StoreError::MissingChunk { .. })));
    }
    for id in &cb {
        assert!(store.locate(id).unwrap().is_some(), "chunk {id} of the kept checkpoint is gone");
        store.read_chunk(id).unwrap();
    }
    assert!(check_checkpoint(&store, &b.id).is_correct());
    assert_eq!(after.chunks, cb.len() as u64);
    assert_clean(&store);

    // A second GC finds nothing to do.
    let again = store.gc(0.0).unwrap();
    assert_eq!((again.freed_chunks, again.packs_deleted, again.packs_rewritten), (0, 0, 0), "{again:?}");
    assert_eq!(store.stats().unwrap().pack_bytes, after.pack_bytes);

    // Deleting the last checkpoint and collecting leaves no pack at all; the store stays usable.
    store.delete(&b.id).unwrap();
    let last = store.gc(0.0).unwrap();
    assert!(last.packs_deleted >= 1, "{last:?}");
    let empty = store.stats().unwrap();
    assert_eq!((empty.checkpoints, empty.chunks, empty.packs, empty.pack_bytes), (0, 0, 0, 0));
    assert!(zap_tests::pack_files(store.root()).is_empty());
    let c = write_checkpoint(&store, 0).unwrap();
    assert!(check_checkpoint(&store, &c.id).is_correct());
    assert_clean(&store);
}

/// GC with a threshold that leaves a partly dead pack alone must not lose track of the dead
/// bytes: a later GC with threshold 0 must reclaim them as if the first GC had not run.
#[test]
fn gc_reclaims_what_an_earlier_high_threshold_gc_left() {
    let run = |thresholds: &[f64]| -> u64 {
        let tmp = tempfile::TempDir::new().unwrap();
        let store = open(&tmp.path().join("s"));
        let a = write_checkpoint(&store, 0).unwrap();
        let b = write_checkpoint(&store, 2).unwrap();
        store.delete(&a.id).unwrap();
        for t in thresholds {
            store.gc(*t).unwrap();
        }
        assert!(check_checkpoint(&store, &b.id).is_correct());
        assert_clean(&store);
        store.stats().unwrap().pack_bytes
    };
    let direct = run(&[0.0]);
    let in_two_steps = run(&[1.0, 0.0]);
    // The same live chunks end up in one rewritten pack either way; allow for trailer encoding.
    assert!(
        in_two_steps <= direct + 1024,
        "gc(1.0) then gc(0.0) leaves {in_two_steps} pack bytes, gc(0.0) alone {direct}"
    );
}

/// Stores `data` as one image at `start` and returns its extents.
fn put_image<S: ChunkSink>(sink: &mut S, start: u64, data: &[u8]) -> Vec<zap_store::Extent> {
    store_run(sink, &chunker_config(), start, data).unwrap().0
}

#[test]
fn deleting_the_parent_keeps_the_child_restorable() {
    let tmp = tempfile::TempDir::new().unwrap();
    let store = open(&tmp.path().join("s"));
    let spec = image_specs(7).swap_remove(0);
    let parent_data = image_content(7, 0);
    let mut w = store.writer().unwrap();
    let parent_extents = put_image(&mut w, spec.start, &parent_data);
    let mut m = Manifest::new("parent", "memory");
    m.images.push(Image { name: spec.name.clone(), kind: spec.kind, extents: parent_extents.clone() });
    let parent = w.commit(m).unwrap();

    // The child changes single pages, a run of pages across a block boundary, one whole 64 KiB
    // block (so that a parent chunk dies), zeroes a page and writes into the last page.
    let mut child_data = parent_data.clone();
    let blocks = spec.len / (16 * PAGE);
    let ranges: Vec<(usize, usize)> = vec![
        (3 * PAGE, 4 * PAGE),
        (14 * PAGE, 18 * PAGE),
        (32 * PAGE, 48 * PAGE),
        (50 * PAGE, 51 * PAGE),
        (spec.len - PAGE, spec.len),
    ];
    assert!(blocks > 4);
    for (k, &(from, to)) in ranges.iter().enumerate() {
        for (n, b) in child_data[from..to].iter_mut().enumerate() {
            *b = if k == 3 { 0 } else { (zap_tests::mix((k * 1_000_003 + n / 8) as u64) >> (8 * (n % 8))) as u8 };
        }
    }
    assert_ne!(child_data, parent_data);
    let mut w = store.writer().unwrap();
    let mut changed = Vec::new();
    for &(from, to) in &ranges {
        changed.extend(put_image(&mut w, spec.start + from as u64, &child_data[from..to]));
    }
    let child_extents = overlay(&parent_extents, &changed);
    let mut m = Manifest::new("child", "memory");
    m.parent = Some(parent.id);
    m.images.push(Image { name: spec.name.clone(), kind: spec.kind, extents: child_extents });
    let child = w.commit(m).unwrap();
    assert_eq!(store.children(&parent.id).unwrap(), vec![child.id]);
    let child_image = |store: &LocalStore| store.manifest(&child.id).unwrap().images.swap_remove(0);
    let check = |store: &LocalStore| match check_image(store, &child_image(store), &spec, &child_data) {
        Readback::Correct => {}
        other => panic!("child: {other:?}"),
    };
    check(&store);
    let shared: BTreeSet<ChunkId> = image_chunks(&child_image(&store))
        .intersection(&chunks_of(&store, &parent.id))
        .copied()
        .collect();
    assert!(!shared.is_empty(), "the child must reference parent chunks");

    let before = store.stats().unwrap().pack_bytes;
    store.delete(&parent.id).unwrap();
    let report = store.gc(0.0).unwrap();
    assert!(report.freed_chunks >= 1, "the replaced block's chunk must be freed: {report:?}");
    assert!(store.stats().unwrap().pack_bytes < before);
    for id in &shared {
        assert!(store.locate(id).unwrap().is_some(), "parent chunk {id} the child uses was freed");
    }
    check(&store);
    assert_clean(&store);
    // And after reopening.
    let root = store.root().to_path_buf();
    drop(store);
    let store = open(&root);
    check(&store);
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn gc_waits_for_a_writer_that_reuses_chunks_of_a_deleted_checkpoint() {
    let tmp = tempfile::TempDir::new().unwrap();
    let store = open(&tmp.path().join("s"));
    // Checkpoints 0 and 1 share blocks (the common ones and the pair's).
    let old = write_checkpoint(&store, 0).unwrap();
    let old_chunks = chunks_of(&store, &old.id);

    let mut w = store.writer().unwrap();
    let manifest = build_manifest(&mut w, 1).unwrap();
    let new_chunks: BTreeSet<ChunkId> = manifest.images.iter().flat_map(image_chunks).collect();
    let reused: BTreeSet<ChunkId> = new_chunks.intersection(&old_chunks).copied().collect();
    assert!(reused.len() > 10, "the writer must have deduplicated against the old checkpoint");

    let deleted = AtomicBool::new(false);
    let gc_done = AtomicBool::new(false);
    let report = std::thread::scope(|s| {
        let gc = s.spawn(|| {
            // Now nothing committed references the reused chunks; only the writer needs them.
            store.delete(&old.id).unwrap();
            deleted.store(true, Ordering::SeqCst);
            let r = store.gc(0.0);
            gc_done.store(true, Ordering::SeqCst);
            r
        });
        while !deleted.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(300));
        assert!(!gc_done.load(Ordering::SeqCst), "gc ran while a writer was open");
        let summary = w.commit(manifest).expect("commit after the old checkpoint was deleted");
        let report = gc.join().unwrap().expect("gc");
        (summary, report)
    });
    let (new, report) = report;
    assert_eq!(report.checkpoints, 1, "gc must have seen the new checkpoint: {report:?}");
    assert!(check_checkpoint(&store, &new.id).is_correct());
    for id in &reused {
        assert!(store.locate(id).unwrap().is_some(), "reused chunk {id} was freed");
    }
    for id in old_chunks.difference(&new_chunks) {
        assert_eq!(store.locate(id).unwrap(), None, "chunk {id} of the deleted checkpoint survived gc");
    }
    assert_clean(&store);
}

#[test]
fn a_second_opener_gets_busy_after_its_lock_timeout() {
    let tmp = tempfile::TempDir::new().unwrap();
    let root = tmp.path().join("s");
    let holder = open(&root);
    write_checkpoint(&holder, 0).unwrap();

    // In this process: a second open is a second lock holder too.
    let t = Instant::now();
    match LocalStore::open(&root, options(false, Duration::from_millis(300))) {
        Err(StoreError::Busy { holder: who, .. }) => {
            assert!(who.contains(&format!("pid {}", std::process::id())), "holder {who:?}");
        }
        Err(e) => panic!("expected Busy, got {e}"),
        Ok(_) => panic!("a held store opened twice"),
    }
    let waited = t.elapsed();
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(5), "waited {waited:?}");

    // Another process.
    let probe = |timeout_ms: u64| {
        Command::new(env!("CARGO_BIN_EXE_store_writer"))
            .arg(&root)
            .args(["probe", &timeout_ms.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn store_writer probe")
    };
    let finish = |mut child: std::process::Child| {
        let status = child.wait().expect("wait probe");
        let mut out = String::new();
        child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        (status.code(), out, err)
    };
    let t = Instant::now();
    let (code, out, err) = finish(probe(300));
    assert_eq!(code, Some(3), "probe of a held store: {out} {err}");
    let waited_ms: u64 = out.trim().strip_prefix("busy ").and_then(|n| n.parse().ok()).expect("busy <ms>");
    assert!((300..5000).contains(&waited_ms), "probe waited {waited_ms} ms");
    assert!(t.elapsed() < Duration::from_secs(10));

    // A prober with a longer timeout gets the store once the holder lets go.
    let child = probe(10_000);
    std::thread::sleep(Duration::from_millis(300));
    drop(holder);
    let t = Instant::now();
    let (code, out, err) = finish(child);
    assert_eq!((code, out.trim()), (Some(0), "opened"), "stderr: {err}");
    assert!(t.elapsed() < Duration::from_secs(5), "the waiting opener took {:?} after the release", t.elapsed());

    // And nothing holds it now.
    let (code, out, _) = finish(probe(0));
    assert_eq!((code, out.trim()), (Some(0), "opened"));
    let store = open(&root);
    assert_eq!(store.list().unwrap().len(), 1);
}

/// Manifests are trees of content-addressed nodes: a child that changes a few extents of a large
/// image writes only the nodes that differ and shares the rest with its parent; deleting the
/// parent and collecting keeps every node the child reaches and frees the others; with the
/// child gone too, every node is freed.
#[test]
fn manifest_trees_share_unchanged_subtrees_and_gc_frees_unreachable_nodes() {
    use zap_store::{Extent, ExtentData};
    let tmp = tempfile::TempDir::new().unwrap();
    let store = open(&tmp.path().join("s"));
    // A fragmented image: 40,000 extents over 8 real chunks, zero extents between them.
    let mut w = store.writer().unwrap();
    let chunks: Vec<ChunkId> = (0..8u64)
        .map(|k| {
            let data: Vec<u8> = (0..PAGE).map(|n| (zap_tests::mix(k * 4096 + n as u64 / 8) >> (8 * (n % 8))) as u8).collect();
            let ext = put_image(&mut w, 0x1000_0000 + k * PAGE as u64, &data);
            match ext[0].data {
                ExtentData::Chunk { id, .. } => id,
                ExtentData::Zero => panic!("random page stored as zero"),
            }
        })
        .collect();
    let extents: Vec<Extent> = (0..40_000u64)
        .map(|i| Extent {
            start: 0x7f00_0000_0000 + i * 2 * PAGE as u64,
            len: PAGE as u64,
            data: if i % 2 == 0 { ExtentData::Chunk { id: chunks[(i / 2 % 8) as usize], offset: 0 } } else { ExtentData::Zero },
        })
        .collect();
    let mut m = Manifest::new("parent", "memory");
    m.images.push(Image { name: "big".into(), kind: zap_store::ImageKind::Memory, extents: extents.clone() });
    let parent = w.commit(m).unwrap();
    // The child changes 20 extents spread over the image.
    let mut changed = extents.clone();
    for k in 0..20 {
        let i = k * 1999 + 7;
        changed[i].data = ExtentData::Chunk { id: chunks[k % 8], offset: 0 };
        if i % 2 == 0 {
            changed[i].data = ExtentData::Zero;
        }
    }
    let mut m = Manifest::new("child", "memory");
    m.parent = Some(parent.id);
    m.images.push(Image { name: "big".into(), kind: zap_store::ImageKind::Memory, extents: changed.clone() });
    let child = store.writer().unwrap().commit(m).unwrap();
    assert!(
        child.manifest_bytes * 20 < parent.manifest_bytes,
        "the child wrote {} bytes of metadata, the parent {}",
        child.manifest_bytes,
        parent.manifest_bytes
    );
    assert_eq!(store.manifest(&child.id).unwrap().images[0].extents, changed);
    assert_eq!(store.manifest(&parent.id).unwrap().images[0].extents, extents);
    assert_clean(&store);
    // Parent deleted: the nodes only it reached are freed, the child's stay and read back.
    store.delete(&parent.id).unwrap();
    let r = store.gc(0.0).unwrap();
    assert!(r.freed_nodes > 0 && r.freed_nodes < 200, "{r:?}");
    assert_eq!(store.manifest(&child.id).unwrap().images[0].extents, changed);
    assert_clean(&store);
    assert_eq!(store.verify(&|_, _| {}).unwrap().unreachable_nodes, 0);
    // Reopened, then the child deleted too: nothing is left.
    let root = store.root().to_path_buf();
    drop(store);
    let store = open(&root);
    assert_eq!(store.manifest(&child.id).unwrap().images[0].extents, changed);
    store.delete(&child.id).unwrap();
    let r = store.gc(0.0).unwrap();
    assert!(r.freed_nodes > 100, "{r:?}");
    assert_eq!(store.stats().unwrap().chunks, 0);
    assert_eq!(store.verify(&|_, _| {}).unwrap().unreachable_nodes, 0);
}

/// Manifest version 3: a checkpoint whose parent was read first writes each changed image as a
/// patch over the parent's (metadata growing with the changed extents, not with the image), up
/// to `MAX_PATCHES` in a chain, then as a tree again; every checkpoint of the chain reads back
/// exactly, also after its ancestors were deleted and collected, and from a reopened store.
#[test]
fn manifest_patches_hold_what_changed_and_chains_are_compacted() {
    use zap_store::tree::MAX_PATCHES;
    use zap_store::{Extent, ExtentData};
    let tmp = tempfile::TempDir::new().unwrap();
    let store = open(&tmp.path().join("s"));
    let page_data = |seed: u64| -> Vec<u8> { (0..PAGE).map(|n| (zap_tests::mix(seed * 4096 + n as u64 / 8) >> (8 * (n % 8))) as u8).collect() };
    let chunk_of = |ext: &[Extent]| match ext[0].data {
        ExtentData::Chunk { id, .. } => id,
        ExtentData::Zero => panic!("random page stored as zero"),
    };
    let mut w = store.writer().unwrap();
    let base: Vec<ChunkId> = (0..8u64).map(|k| chunk_of(&put_image(&mut w, 0x1000_0000 + k * PAGE as u64, &page_data(k)))).collect();
    let at = |i: u64| 0x7f00_0000_0000 + i * 2 * PAGE as u64;
    let mut expected: Vec<Extent> = (0..4000u64)
        .map(|i| Extent {
            start: at(i),
            len: 2 * PAGE as u64,
            data: if i % 3 == 0 { ExtentData::Zero } else { ExtentData::Chunk { id: base[(i % 8) as usize], offset: 0 } },
        })
        .collect();
    // The second page of each chunk extent reads past the 1-page chunks: give them 2-page chunks.
    let two: Vec<ChunkId> =
        (0..8u64).map(|k| chunk_of(&put_image(&mut w, 0x2000_0000 + k * 2 * PAGE as u64, &[page_data(k), page_data(k + 100)].concat()))).collect();
    for e in &mut expected {
        if let ExtentData::Chunk { id, offset } = e.data {
            e.data = ExtentData::Chunk { id: two[base.iter().position(|b| *b == id).unwrap()], offset };
        }
    }
    let mut m = Manifest::new("c0", "memory");
    m.images.push(Image { name: "big".into(), kind: zap_store::ImageKind::Memory, extents: expected.clone() });
    m.images.push(Image { name: "small".into(), kind: zap_store::ImageKind::Memory, extents: expected[..10].to_vec() });
    let first = w.commit(m).unwrap();
    let mut chain = vec![(first.clone(), expected.clone())];
    let rounds = MAX_PATCHES as u64 + 4;
    for r in 1..=rounds {
        let (parent, parent_extents) = chain.last().unwrap().clone();
        // Read first, as an incremental checkpoint reads its parent.
        assert_eq!(store.manifest(&parent.id).unwrap().images[0].extents, parent_extents);
        let mut w = store.writer().unwrap();
        // 20 pages written (one in every 200 extents' pages), new data each round.
        let mut changed: Vec<Extent> = (0..20u64)
            .map(|k| {
                let i = (k * 197 + r * 13) % 3900;
                let id = chunk_of(&put_image(&mut w, 0x3000_0000 + (r * 20 + k) * PAGE as u64, &page_data(1000 + r * 20 + k)));
                Extent { start: at(i) + (r % 2) * PAGE as u64, len: PAGE as u64, data: ExtentData::Chunk { id, offset: 0 } }
            })
            .collect();
        changed.sort_by_key(|e| e.start);
        changed.dedup_by_key(|e| e.start);
        let mut next = overlay(&parent_extents, &changed);
        if r == 3 {
            // The end of the image unmapped, and a page in its middle.
            let end = at(3950);
            let hole = at(2000) + PAGE as u64;
            next = [zap_store::clip(&next, 0, hole), zap_store::clip(&next, hole + PAGE as u64, end)].concat();
        }
        let mut m = Manifest::new(format!("c{r}"), "memory");
        m.parent = Some(parent.id);
        m.images.push(Image { name: "big".into(), kind: zap_store::ImageKind::Memory, extents: next.clone() });
        m.images.push(Image { name: "small".into(), kind: zap_store::ImageKind::Memory, extents: expected[..10].to_vec() });
        let s = w.commit(m).unwrap();
        chain.push((s, next));
    }
    let bytes: Vec<u64> = chain.iter().map(|(s, _)| s.manifest_bytes).collect();
    let full = bytes[0];
    let compacted = MAX_PATCHES + 1;
    for (r, b) in bytes.iter().enumerate().skip(1) {
        if r == compacted {
            // The chain was full: a tree again (its unchanged leaves the old tree's).
            assert!(*b > 10 * bytes[1] && *b < full, "round {r} (compaction) wrote {b} bytes, a patch {}, the first {full}: {bytes:?}", bytes[1]);
        } else {
            assert!(b * 20 < full, "round {r} wrote {b} bytes of metadata, the full one {full}: {bytes:?}");
        }
    }
    for (s, extents) in &chain {
        let m = store.manifest(&s.id).unwrap();
        assert_eq!(&m.images[0].extents, extents, "checkpoint {}", m.name);
        assert_eq!(m.images[1].extents, expected[..10].to_vec());
    }
    assert_clean(&store);
    // Every checkpoint but the last deleted: the patches and trees it uses stay, the rest goes.
    let (last, last_extents) = chain.last().unwrap().clone();
    for (s, _) in &chain[..chain.len() - 1] {
        store.delete(&s.id).unwrap();
    }
    let r = store.gc(0.0).unwrap();
    assert!(r.freed_nodes > 0, "{r:?}");
    assert_eq!(store.manifest(&last.id).unwrap().images[0].extents, last_extents);
    assert_clean(&store);
    assert_eq!(store.verify(&|_, _| {}).unwrap().unreachable_nodes, 0);
    let live: BTreeSet<ChunkId> = chunks_of(&store, &last.id);
    assert_eq!(store.stats().unwrap().chunks as usize, live.len());
    let root = store.root().to_path_buf();
    drop(store);
    let store = open(&root);
    let m = store.manifest(&last.id).unwrap();
    assert_eq!(m.images[0].extents, last_extents);
    let summary = store.list().unwrap().pop().unwrap();
    assert_eq!(summary.chunks as usize, live.len());
}
