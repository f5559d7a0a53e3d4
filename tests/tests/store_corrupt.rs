//! Damage a store on purpose and check what the store makes of it: a flipped byte anywhere in a
//! pack, truncated and deleted packs, a damaged store marker, damaged RocksDB files.
//!
//! The rule everywhere: the store may refuse (an error), it must never hand back wrong data and
//! never panic; `verify` must name the damaged pack or chunk and the checkpoints it breaks.
//!
//! Every case works on its own copy of a small store built once per test.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use zap_chunker::{decode_chunk, Compression};
use zap_store::pack::{read_trailer, PackEntry, HEADER_LEN};
use zap_store::{CheckpointId, ChunkId, ImageStore, LocalStore, Manifest, ReadChunk, StoreError, VerifyReport};
use zap_tests::{check_image, image_chunks, image_content, image_specs, options, write_checkpoint, ImageSpec, Readback};

const FOOTER_LEN: u64 = 52;

struct Ckpt {
    id: CheckpointId,
    manifest: Manifest,
    specs: Vec<ImageSpec>,
    expected: Vec<Vec<u8>>,
}

struct Pack {
    /// File name, e.g. `0123456789abcdef.pack`.
    file: String,
    /// The id as verify prints it.
    pid: String,
    size: u64,
    trailer_off: u64,
    trailer_len: u64,
    entries: Vec<PackEntry>,
}

impl Pack {
    fn entry_at(&self, pos: u64) -> Option<&PackEntry> {
        self.entries.iter().find(|e| e.offset <= pos && pos < e.offset + u64::from(e.stored_len))
    }
}

/// A store of four checkpoints: three flushed into SST files by a reopen, the last only in the
/// RocksDB write-ahead log.
struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    ckpts: Vec<Ckpt>,
    packs: Vec<Pack>,
}

fn open(root: &Path) -> zap_store::Result<LocalStore> {
    LocalStore::open(root, options(false, Duration::from_secs(10)))
}

impl Fixture {
    fn build() -> Fixture {
        let tmp = tempfile::TempDir::new().unwrap();
        let root = tmp.path().join("base");
        let mut ids = Vec::new();
        {
            let store = LocalStore::open(&root, options(true, Duration::from_secs(10))).unwrap();
            for i in 0..3 {
                ids.push((i, write_checkpoint(&store, i).unwrap().id));
            }
        }
        // Reopening replays the log into SST files. The last commit starts no flush of its own.
        let store = LocalStore::open(&root, zap_store::StoreOptions { flush_after_commit: false, ..options(false, Duration::from_secs(10)) }).unwrap();
        ids.push((3, write_checkpoint(&store, 3).unwrap().id));
        let ckpts = ids
            .into_iter()
            .map(|(i, id)| {
                let specs = image_specs(i);
                let expected = (0..specs.len()).map(|j| image_content(i, j)).collect();
                Ckpt { id, manifest: store.manifest(&id).unwrap(), specs, expected }
            })
            .collect();
        let packs = zap_tests::pack_files(&root)
            .into_iter()
            .map(|path| {
                let file = std::fs::File::open(&path).unwrap();
                let entries = read_trailer(&file, &path).unwrap();
                let bytes = std::fs::read(&path).unwrap();
                let size = bytes.len() as u64;
                let footer = &bytes[bytes.len() - FOOTER_LEN as usize..];
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                Pack {
                    pid: name.trim_end_matches(".pack").to_string(),
                    file: name,
                    size,
                    trailer_off: u64::from_le_bytes(footer[0..8].try_into().unwrap()),
                    trailer_len: u64::from(u32::from_le_bytes(footer[8..12].try_into().unwrap())),
                    entries,
                }
            })
            .collect();
        assert!(store.verify(&|_, _| {}).unwrap().ok());
        // The last checkpoint stays in the index's log only, as a writer killed after its commit
        // leaves it: this store is never closed (a writer that closes the store flushes its log
        // into table files). Its files are not touched again; copies are what the tests open.
        std::mem::forget(store);
        let fx = Fixture { _tmp: tmp, root, ckpts, packs };
        assert!(fx.packs.len() >= 3, "expected a pack per checkpoint");
        fx
    }

    /// A fresh copy of the store, damaged by `damage`.
    fn copy(&self, label: &str, damage: impl FnOnce(&Path)) -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::TempDir::new().unwrap();
        let root = tmp.path().join(label);
        zap_tests::copy_tree(&self.root, &root).unwrap();
        damage(&root);
        (tmp, root)
    }

    /// Checkpoints (hex ids) that reference any of `chunks`.
    fn users(&self, chunks: &BTreeSet<ChunkId>) -> BTreeSet<String> {
        self.ckpts
            .iter()
            .filter(|c| c.manifest.images.iter().any(|img| !image_chunks(img).is_disjoint(chunks)))
            .map(|c| c.id.to_hex())
            .collect()
    }

    /// Reads every image back. Returns, per (checkpoint, image), what came back; wrong data is an
    /// error of the test.
    fn read_all(&self, store: &LocalStore) -> Result<BTreeMap<(usize, usize), Readback>, String> {
        let mut out = BTreeMap::new();
        for (k, c) in self.ckpts.iter().enumerate() {
            match store.manifest(&c.id) {
                Ok(m) if m != c.manifest => return Err(format!("manifest of {} differs from what was committed", c.id)),
                Ok(m) => {
                    for (j, img) in m.images.iter().enumerate() {
                        let r = check_image(store, img, &c.specs[j], &c.expected[j]);
                        if let Readback::WrongData(e) = &r {
                            return Err(format!("checkpoint {} image {j}: WRONG DATA: {e}", c.id));
                        }
                        out.insert((k, j), r);
                    }
                }
                Err(e) => {
                    for j in 0..c.specs.len() {
                        out.insert((k, j), Readback::StoreError(format!("manifest: {e}")));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Checks that exactly the images referencing `bad` chunks fail to read (with an error
    /// containing `why`) and every other image reads back exactly.
    fn expect_reads(&self, store: &LocalStore, bad: &BTreeSet<ChunkId>, why: &str) -> Result<(), String> {
        for ((k, j), r) in self.read_all(store)? {
            let img = &self.ckpts[k].manifest.images[j];
            let hit = !image_chunks(img).is_disjoint(bad);
            match (hit, &r) {
                (false, Readback::Correct) => {}
                (true, Readback::StoreError(e)) if e.contains(why) => {}
                _ => {
                    return Err(format!(
                        "checkpoint {} image {:?} (uses a damaged chunk: {hit}): expected {}, got {r:?}",
                        self.ckpts[k].id,
                        img.name,
                        if hit { format!("an error mentioning {why:?}") } else { "correct data".into() }
                    ))
                }
            }
        }
        Ok(())
    }
}

fn has_problem(report: &VerifyReport, object: &str) -> bool {
    report.problems.iter().any(|p| p.object == object)
}

fn verify(store: &LocalStore) -> Result<VerifyReport, String> {
    store.verify(&|_, _| {}).map_err(|e| format!("verify failed instead of reporting: {e}"))
}

fn broken_is(report: &VerifyReport, want: &BTreeSet<String>) -> Result<(), String> {
    let got: BTreeSet<String> = report.broken.keys().cloned().collect();
    if &got == want {
        Ok(())
    } else {
        Err(format!("broken {got:?}, expected {want:?}; problems {:#?}", report.problems))
    }
}

/// Runs `cases` on two threads and fails with every failing case listed.
fn run_cases<T: Sync>(cases: &[T], run: impl Fn(&T) -> Result<(), String> + Sync) {
    let failures = Mutex::new(Vec::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(case) = cases.get(k) else { break };
                if let Err(e) = run(case) {
                    failures.lock().unwrap().push(e);
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

fn flip(path: &Path, pos: u64, mask: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[pos as usize] ^= mask;
    std::fs::write(path, bytes).unwrap();
}

/// Where a byte of a pack is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Region {
    Header,
    Reserved,
    Blob,
    Trailer,
    Footer,
}

fn region(p: &Pack, pos: u64) -> Region {
    if pos < 12 {
        Region::Header
    } else if pos < HEADER_LEN {
        Region::Reserved
    } else if pos < p.trailer_off {
        Region::Blob
    } else if pos < p.trailer_off + p.trailer_len {
        Region::Trailer
    } else {
        assert!(pos >= p.size - FOOTER_LEN);
        Region::Footer
    }
}

/// About 40 positions per pack: every field of the header and footer, the edges of the blob area
/// and the trailer, chunk boundaries, and evenly spread positions in between.
fn positions(p: &Pack) -> Vec<u64> {
    let (t, tl, n) = (p.trailer_off, p.trailer_len, p.size);
    let mut v = vec![0, 3, 7, 8, 11, 16, 17, t - 1, t, t + tl / 2, t + tl - 1];
    v.extend([n - 52, n - 48, n - 45, n - 44, n - 40, n - 30, n - 13, n - 9, n - 8, n - 4, n - 1]);
    if let Some(e) = p.entries.get(p.entries.len() / 2) {
        v.extend([e.offset, e.offset + u64::from(e.stored_len) - 1]);
    }
    let blob = t - HEADER_LEN;
    let spread = 40 - v.len() as u64;
    v.extend((0..spread).map(|k| HEADER_LEN + 1 + blob * (2 * k + 1) / (2 * spread + 1)));
    v.sort();
    v.dedup();
    v
}

#[test]
fn a_flipped_byte_anywhere_in_a_pack_is_caught() {
    let fx = Fixture::build();
    let cases: Vec<(usize, u64, u8)> = fx
        .packs
        .iter()
        .enumerate()
        .flat_map(|(k, p)| positions(p).into_iter().map(move |pos| (k, pos)))
        .filter(|&(k, pos)| region(&fx.packs[k], pos) != Region::Reserved)
        .enumerate()
        .map(|(n, (k, pos))| (k, pos, [0xFFu8, 0x01, 0x80, 0x10][n % 4]))
        .collect();
    let benign = std::sync::atomic::AtomicUsize::new(0);
    run_cases(&cases, |&(k, pos, mask)| {
        let p = &fx.packs[k];
        let what = region(p, pos);
        let label = format!("pack {} byte {pos} ({what:?}) ^ {mask:#04x}", p.pid);
        let (_tmp, root) = fx.copy("flip", |r| flip(&r.join("packs").join(&p.file), pos, mask));
        let store = open(&root).map_err(|e| format!("{label}: open failed: {e}"))?;
        let report = verify(&store).map_err(|e| format!("{label}: {e}"))?;
        let check = || -> Result<(), String> {
            if what != Region::Blob {
                // Header, trailer and footer are checked by verify; readers never use them.
                if !has_problem(&report, &format!("pack {}", p.pid)) {
                    return Err(format!("verify did not name the pack: {:#?}", report.problems));
                }
                broken_is(&report, &BTreeSet::new())?;
                return fx.expect_reads(&store, &BTreeSet::new(), "");
            }
            let e = p.entry_at(pos).ok_or("no chunk covers this blob byte")?;
            // Oracle: does the damaged chunk still decode to its content? (A flip in a zstd
            // frame header may leave the content intact; then the data is right and nothing
            // needs to be reported.)
            let bytes = std::fs::read(root.join("packs").join(&p.file)).unwrap();
            let stored = &bytes[e.offset as usize..(e.offset + u64::from(e.stored_len)) as usize];
            let compression = Compression::from_code(e.compression).unwrap();
            if decode_chunk(&e.id, compression, e.raw_len as usize, stored).is_ok() {
                benign.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                return fx.expect_reads(&store, &BTreeSet::new(), "");
            }
            if !has_problem(&report, &format!("chunk {}", e.id)) {
                return Err(format!("verify did not name chunk {}: {:#?}", e.id, report.problems));
            }
            let bad = BTreeSet::from([e.id]);
            broken_is(&report, &fx.users(&bad))?;
            if store.read_chunk(&e.id).is_ok() {
                return Err("read_chunk of the damaged chunk succeeded".into());
            }
            fx.expect_reads(&store, &bad, "corrupt chunk")
        };
        check().map_err(|e| format!("{label}: {e}"))
    });
    eprintln!(
        "{} flips over {} packs; {} left their chunk decodable and correct",
        cases.len(),
        fx.packs.len(),
        benign.into_inner()
    );
}

/// The reserved header bytes (12..16, "reserved, 0" in the pack format) are read by nobody.
#[test]
fn a_flipped_reserved_header_byte_is_reported() {
    let fx = Fixture::build();
    let p = &fx.packs[0];
    for pos in 12..HEADER_LEN {
        let (_tmp, root) = fx.copy("reserved", |r| flip(&r.join("packs").join(&p.file), pos, 0xFF));
        let store = open(&root).unwrap();
        fx.expect_reads(&store, &BTreeSet::new(), "").unwrap();
        let report = verify(&store).unwrap();
        assert!(has_problem(&report, &format!("pack {}", p.pid)), "byte {pos}: {:#?}", report.problems);
    }
}

#[test]
fn a_truncated_pack_is_reported_and_never_misread() {
    let fx = Fixture::build();
    let cases: Vec<(usize, u64)> = fx
        .packs
        .iter()
        .enumerate()
        .flat_map(|(k, p)| {
            let mid = p.entries[p.entries.len() / 2].offset + 1;
            [0, 8, HEADER_LEN, HEADER_LEN + 1, mid, p.trailer_off, p.trailer_off + 3, p.size - FOOTER_LEN, p.size - 1]
                .into_iter()
                .map(move |len| (k, len))
        })
        .collect();
    run_cases(&cases, |&(k, len)| {
        let p = &fx.packs[k];
        let label = format!("pack {} truncated to {len} of {} bytes", p.pid, p.size);
        let (_tmp, root) = fx.copy("trunc", |r| {
            let f = std::fs::OpenOptions::new().write(true).open(r.join("packs").join(&p.file)).unwrap();
            f.set_len(len).unwrap();
        });
        let check = || -> Result<(), String> {
            let store = open(&root).map_err(|e| format!("open failed: {e}"))?;
            let report = verify(&store)?;
            if !has_problem(&report, &format!("pack {}", p.pid)) {
                return Err(format!("verify did not name the pack: {:#?}", report.problems));
            }
            let cut: BTreeSet<ChunkId> =
                p.entries.iter().filter(|e| e.offset + u64::from(e.stored_len) > len).map(|e| e.id).collect();
            for id in &cut {
                if !has_problem(&report, &format!("chunk {id}")) {
                    return Err(format!("verify did not name cut chunk {id}"));
                }
            }
            broken_is(&report, &fx.users(&cut))?;
            fx.expect_reads(&store, &cut, "truncated")
        };
        check().map_err(|e| format!("{label}: {e}"))
    });
}

/// The bytes of a chunk read by `read_chunks_into`, whole.
fn expand(c: &ReadChunk, buf: &[u8]) -> Vec<u8> {
    c.pieces(buf, 0, c.len(), false).into_iter().flat_map(|(_, b)| b.into_owned()).collect()
}

/// A pack truncated while a reader has it open, as under a restore that has begun reading: the
/// next reads of its cut chunks are errors naming the pack, through `read_chunk` and through a
/// restore's batched `read_chunks_into` alike, never a SIGBUS (packs are read with `pread`, not
/// mapped) nor wrong data; every other chunk still reads back exactly.
#[test]
fn a_pack_truncated_under_an_open_reader_is_an_error_naming_it() {
    let fx = Fixture::build();
    let (_tmp, root) = fx.copy("live", |_| {});
    let store = open(&root).unwrap();
    let images: Vec<(Vec<ChunkId>, BTreeSet<ChunkId>)> = fx
        .ckpts
        .iter()
        .flat_map(|c| c.manifest.images.iter().map(|img| (image_chunks(img).into_iter().collect(), image_chunks(img))))
        .collect();
    // Everything read once, so that every pack is open, in both ways.
    for r in fx.read_all(&store).unwrap().values() {
        assert!(matches!(r, Readback::Correct), "{r:?}");
    }
    let mut buf = Vec::new();
    for (ids, _) in &images {
        let read = store.read_chunks_into(ids, &mut buf).unwrap();
        for (id, c) in ids.iter().zip(&read) {
            assert_eq!(expand(c, &buf), store.read_chunk(id).unwrap(), "chunk {id}");
        }
    }
    // The biggest pack cut in the middle, under the open store.
    let p = fx.packs.iter().max_by_key(|p| p.entries.len()).unwrap();
    let len = p.entries[p.entries.len() / 2].offset + 1;
    std::fs::OpenOptions::new().write(true).open(root.join("packs").join(&p.file)).unwrap().set_len(len).unwrap();
    let cut: BTreeSet<ChunkId> = p.entries.iter().filter(|e| e.offset + u64::from(e.stored_len) > len).map(|e| e.id).collect();
    assert!(!cut.is_empty());
    fx.expect_reads(&store, &cut, "truncated").unwrap();
    let mut failed = 0;
    for (ids, set) in &images {
        match store.read_chunks_into(ids, &mut buf) {
            Ok(read) => {
                assert!(set.is_disjoint(&cut), "an image with a cut chunk was read");
                for (id, c) in ids.iter().zip(&read) {
                    assert_eq!(expand(c, &buf), store.read_chunk(id).unwrap(), "chunk {id}");
                }
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(!set.is_disjoint(&cut), "an image without a cut chunk failed: {msg}");
                assert!(msg.contains("truncated") && msg.contains(&p.file), "the error names the truncated pack: {msg}");
                failed += 1;
            }
        }
    }
    assert!(failed > 0);
}

#[test]
fn a_deleted_pack_is_reported_with_the_checkpoints_it_breaks() {
    let fx = Fixture::build();
    run_cases(&fx.packs, |p| {
        let (_tmp, root) = fx.copy("deleted", |r| std::fs::remove_file(r.join("packs").join(&p.file)).unwrap());
        let check = || -> Result<(), String> {
            let store = open(&root).map_err(|e| format!("open failed: {e}"))?;
            let report = verify(&store)?;
            if !has_problem(&report, &format!("pack {}", p.pid)) {
                return Err(format!("verify did not name the pack: {:#?}", report.problems));
            }
            let gone: BTreeSet<ChunkId> = p.entries.iter().map(|e| e.id).collect();
            for id in &gone {
                if !has_problem(&report, &format!("chunk {id}")) {
                    return Err(format!("verify did not name chunk {id}"));
                }
            }
            let users = fx.users(&gone);
            if users.is_empty() {
                return Err("the pack was used by no checkpoint".into());
            }
            broken_is(&report, &users)?;
            fx.expect_reads(&store, &gone, "missing")?;
            // GC must not make things worse: it keeps what the checkpoints reference.
            let before = store.stats().map_err(|e| e.to_string())?;
            if let Ok(r) = store.gc(0.0) {
                if r.freed_chunks != 0 {
                    return Err(format!("gc freed chunks of intact checkpoints: {r:?}"));
                }
            }
            if store.stats().map_err(|e| e.to_string())?.chunks != before.chunks {
                return Err("gc changed the chunk count".into());
            }
            fx.expect_reads(&store, &gone, "missing")
        };
        check().map_err(|e| format!("pack {} deleted: {e}", p.pid))
    });
}

#[test]
fn a_damaged_store_marker_is_refused() {
    let fx = Fixture::build();
    let cases: Vec<(&str, Option<&[u8]>)> = vec![
        ("other version", Some(b"zap-store 2\n")),
        ("empty", Some(b"")),
        ("no newline", Some(b"zap-store 1")),
        ("flipped byte", Some(b"zap-stose 1\n")),
        ("not text", Some(b"\xff\xfe\x00zap")),
        ("missing", None),
    ];
    run_cases(&cases, |&(label, content)| {
        let (_tmp, root) = fx.copy("marker", |r| match content {
            Some(c) => std::fs::write(r.join("STORE"), c).unwrap(),
            None => std::fs::remove_file(r.join("STORE")).unwrap(),
        });
        let packs_before = zap_tests::pack_files(&root);
        let err = match open(&root) {
            Ok(_) => return Err(format!("marker {label}: the store opened")),
            Err(e) => e,
        };
        let msg = err.to_string();
        let clear = match content {
            None => matches!(err, StoreError::NotAStore(_)),
            Some(_) => msg.contains("marker"),
        };
        if !clear {
            return Err(format!("marker {label}: unclear error {err:?}"));
        }
        if let Some(content) = content {
            // Even when asked to create, an existing but unreadable marker is not overwritten.
            if let Ok(_s) = LocalStore::open(&root, options(true, Duration::from_secs(10))) {
                return Err(format!("marker {label}: open with create accepted a damaged marker"));
            }
            if std::fs::read(root.join("STORE")).unwrap() != content {
                return Err(format!("marker {label}: the marker was rewritten"));
            }
        }
        if zap_tests::pack_files(&root) != packs_before {
            return Err(format!("marker {label}: a refused open touched the packs"));
        }
        Ok(())
    });
}

/// Files of the RocksDB index, by kind.
fn index_files(root: &Path, pred: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root.join("index"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| pred(&p.file_name().unwrap().to_string_lossy()))
        .collect();
    v.sort();
    v
}

fn overwrite_middle(path: &Path, n: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    let end = (mid + n).min(bytes.len());
    for (k, b) in bytes[mid..end].iter_mut().enumerate() {
        *b ^= 0x5A ^ (k as u8);
    }
    std::fs::write(path, bytes).unwrap();
}

fn truncate(path: &Path, len: impl Fn(u64) -> u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let n = f.metadata().unwrap().len();
    f.set_len(len(n)).unwrap();
}

type Damage = Box<dyn Fn(&Path) + Sync>;

fn is_sst(n: &str) -> bool {
    n.ends_with(".sst")
}
fn is_log(n: &str) -> bool {
    n.ends_with(".log")
}
fn is_manifest(n: &str) -> bool {
    n.starts_with("MANIFEST-")
}

/// What opening a store with a damaged index gave.
struct IndexOutcome {
    /// `None` when open refused.
    opened: Option<LocalStore>,
    /// One line for the log.
    summary: String,
    /// Committed checkpoints (positions in the fixture) that the opened store no longer lists.
    lost: Vec<usize>,
}

/// Opens a damaged copy and checks the universal rules: no panic, no wrong data, and a `verify`
/// that finds nothing means every listed checkpoint reads back exactly.
fn open_damaged(fx: &Fixture, root: &Path) -> Result<IndexOutcome, String> {
    let packs_before = zap_tests::pack_files(root).len();
    let store = match open(root) {
        Err(e) => {
            let msg = e.to_string();
            if msg.is_empty() {
                return Err("open failed with an empty message".into());
            }
            return Ok(IndexOutcome { opened: None, summary: format!("open refused: {msg}"), lost: Vec::new() });
        }
        Ok(store) => store,
    };
    let reads = fx.read_all(&store)?;
    let listed: Option<BTreeSet<CheckpointId>> = store.list().ok().map(|l| l.iter().map(|s| s.id).collect());
    let lost: Vec<usize> = match &listed {
        Some(l) => (0..fx.ckpts.len()).filter(|k| !l.contains(&fx.ckpts[*k].id)).collect(),
        None => Vec::new(),
    };
    let failing_listed = reads.iter().filter(|((k, _), r)| !lost.contains(k) && !r.is_correct()).count();
    let verdict = match store.verify(&|_, _| {}) {
        Err(e) => format!("verify error: {e}"),
        Ok(r) if r.ok() && listed.is_some() && failing_listed > 0 => {
            return Err(format!("verify finds nothing but {failing_listed} images of listed checkpoints fail to read"))
        }
        Ok(r) => format!("verify: {} problems, {} broken", r.problems.len(), r.broken.len()),
    };
    let summary = format!(
        "opened; {} listed, {} of the {} committed lost, {} images correct, {failing_listed} listed failing, \
         {verdict}; pack files {packs_before} -> {}",
        listed.map(|l| l.len().to_string()).unwrap_or_else(|| "list error".into()),
        lost.len(),
        fx.ckpts.len(),
        reads.values().filter(|r| r.is_correct()).count(),
        zap_tests::pack_files(root).len()
    );
    Ok(IndexOutcome { opened: Some(store), summary, lost })
}

#[test]
fn damaged_index_files_give_errors_not_wrong_data() {
    let fx = Fixture::build();
    let names: Vec<String> = index_files(&fx.root, |_| true)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    eprintln!("index files: {names:?}");
    assert!(names.iter().any(|n| is_sst(n)), "the fixture must have SST files");
    assert!(names.iter().any(|n| is_log(n)), "the fixture must have a WAL");
    // (label, damage, only the checkpoint still in the WAL may be lost)
    let cases: Vec<(&str, Damage, bool)> = vec![
        ("newest sst: middle overwritten", Box::new(|r| overwrite_middle(index_files(r, is_sst).last().unwrap(), 64)), false),
        ("every sst: middle overwritten", Box::new(|r| index_files(r, is_sst).iter().for_each(|p| overwrite_middle(p, 64))), false),
        ("newest sst: truncated to half", Box::new(|r| truncate(index_files(r, is_sst).last().unwrap(), |n| n / 2)), false),
        ("every sst: deleted", Box::new(|r| index_files(r, is_sst).iter().for_each(|p| std::fs::remove_file(p).unwrap())), false),
        ("MANIFEST: middle overwritten", Box::new(|r| overwrite_middle(index_files(r, is_manifest).last().unwrap(), 16)), false),
        ("MANIFEST: truncated to half", Box::new(|r| truncate(index_files(r, is_manifest).last().unwrap(), |n| n / 2)), false),
        ("WAL: truncated to half", Box::new(|r| truncate(index_files(r, is_log).last().unwrap(), |n| n / 2)), true),
        ("WAL: last byte cut", Box::new(|r| truncate(index_files(r, is_log).last().unwrap(), |n| n - 1)), true),
        ("WAL: emptied", Box::new(|r| truncate(index_files(r, is_log).last().unwrap(), |_| 0)), true),
        ("WAL: middle overwritten", Box::new(|r| overwrite_middle(index_files(r, is_log).last().unwrap(), 16)), true),
        ("CURRENT: deleted", Box::new(|r| std::fs::remove_file(r.join("index/CURRENT")).unwrap()), false),
        ("CURRENT: emptied", Box::new(|r| std::fs::write(r.join("index/CURRENT"), b"").unwrap()), false),
        ("CURRENT: names a missing MANIFEST", Box::new(|r| std::fs::write(r.join("index/CURRENT"), b"MANIFEST-999999\n").unwrap()), false),
        ("index: deleted", Box::new(|r| std::fs::remove_dir_all(r.join("index")).unwrap()), false),
    ];
    let wal_only = fx.ckpts.len() - 1;
    run_cases(&cases, |(label, damage, wal_case)| {
        let (_tmp, root) = fx.copy("index", |r| damage(r));
        let outcome = open_damaged(&fx, &root).map_err(|e| format!("{label}: {e}"))?;
        eprintln!("{label}: {}", outcome.summary);
        // Damage to the log can cost the commit that only the log holds, never older ones.
        if *wal_case && outcome.lost.iter().any(|&k| k != wal_only) {
            return Err(format!("{label}: lost checkpoints {:?} that were flushed before", outcome.lost));
        }
        Ok(())
    });
}

/// Open recovers by deleting pack files the index does not record. When the index itself is
/// damaged or missing (and RocksDB opens it anyway, or creates a new one), that deletes the
/// packs of committed checkpoints: open succeeds and the data is gone for good.
#[test]
fn a_damaged_index_never_makes_open_delete_committed_data() {
    let fx = Fixture::build();
    let cases: Vec<(&str, Damage)> = vec![
        ("index: deleted", Box::new(|r| std::fs::remove_dir_all(r.join("index")).unwrap())),
        ("MANIFEST: truncated to half", Box::new(|r| truncate(index_files(r, is_manifest).last().unwrap(), |n| n / 2))),
    ];
    run_cases(&cases, |(label, damage)| {
        let (_tmp, root) = fx.copy("index", |r| damage(r));
        let outcome = open_damaged(&fx, &root).map_err(|e| format!("{label}: {e}"))?;
        eprintln!("{label}: {}", outcome.summary);
        match outcome.opened {
            None => Ok(()),
            Some(_) if outcome.lost.is_empty() => Ok(()),
            Some(_) => Err(format!("{label}: open succeeded without checkpoints {:?}: {}", outcome.lost, outcome.summary)),
        }
    });
}
