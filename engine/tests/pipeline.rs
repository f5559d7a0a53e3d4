//! The dump and restore pipelines on a real process (`progs/mixed.c`: zero, text-like and
//! random pages, a PROT_NONE region, a read-only region, untouched holes). Four identical
//! processes (same memory at the same addresses: ADDR_NO_RANDOMIZE) are checkpointed with the
//! serial and the parallel pipeline, streamed (the process stays stopped), copied
//! (`--leave-running --no-pre-copy`) and pre-copied while running (`--leave-running`): every way
//! gives the same images and the same chunks. Each restored copy then checks its memory itself.
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::{build, wait_for, Proc, RestoredProc};
use zap_chunker::{ChunkerConfig, Parallelism};
use zap_engine::process::{checkpoint, restore, CheckpointOptions};
use zap_store::{ChunkId, Image, ImageStore, LocalStore, StoreOptions};

fn start_fixed(prog: &Path, out: &Path, go: &Path) -> Proc {
    let mut cmd = Command::new(prog);
    cmd.arg(out).arg(go).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: personality and close_range are async-signal-safe and only touch the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::personality(libc::ADDR_NO_RANDOMIZE as libc::c_ulong);
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    Proc(cmd.spawn().expect("spawn"))
}

fn text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// The images of a checkpoint's mappings of 1 MiB and more (the program's own regions: the
/// stack and data differ between runs by their arguments and the kernel's random bytes), and
/// the ids of their chunks.
fn images(store: &LocalStore, id: &zap_store::CheckpointId) -> (Vec<Image>, Vec<ChunkId>) {
    let m = store.manifest(id).unwrap();
    let big: Vec<Image> = m.images.into_iter().filter(|i| i.extents.last().map(|l| l.end()).unwrap_or(0) - i.extents[0].start >= 1 << 20).collect();
    let mut ids: Vec<ChunkId> = big
        .iter()
        .flat_map(|i| &i.extents)
        .filter_map(|e| match e.data {
            zap_store::ExtentData::Chunk { id, .. } => Some(id),
            zap_store::ExtentData::Zero => None,
        })
        .collect();
    ids.sort();
    ids.dedup();
    (big, ids)
}

#[test]
fn serial_parallel_streamed_and_copied_dumps_are_identical_and_restore() {
    let dir = tempfile::tempdir().unwrap();
    let Some(prog) = build("mixed", dir.path(), &["-static"]) else { return };
    let serial = ChunkerConfig { parallelism: Parallelism::Serial, ..Default::default() };
    let parallel = ChunkerConfig { parallelism: Parallelism::Rayon, ..Default::default() };
    // (what, chunker, leave running, pre-copied while running)
    let cases = [
        ("serial, streamed", serial, false, false),
        ("parallel, streamed", parallel, false, false),
        ("parallel, copied", parallel, true, false),
        ("parallel, pre-copied", parallel, true, true),
    ];
    let mut results = Vec::new();
    for (k, (what, cfg, leave_running, precopy)) in cases.iter().enumerate() {
        let out = dir.path().join(format!("out{k}"));
        let go = dir.path().join(format!("go{k}"));
        let orig = start_fixed(&prog, &out, &go);
        assert!(wait_for(Duration::from_secs(20), || text(&out).contains("ready")), "{what}: no ready");
        let store = LocalStore::open(dir.path().join(format!("store{k}")), StoreOptions { create: true, ..Default::default() }).unwrap();
        // Copied: all memory read while stopped; pre-copied: read while it runs, then what was
        // written since laid over it (the program is idle by then: the same images).
        let opts = CheckpointOptions { leave_running: *leave_running, chunker: *cfg, no_precopy: !precopy, ..Default::default() };
        let report = checkpoint(&store, orig.0.id() as i32, &opts).unwrap_or_else(|e| panic!("{what}: {e}"));
        drop(orig);
        results.push((what, images(&store, &report.summary.id), report.summary.new_stored_bytes));
        let restored = RestoredProc(restore(&store, &report.summary.id).unwrap_or_else(|e| panic!("{what}: restore: {e}")));
        std::fs::write(&go, b"go").unwrap();
        assert!(
            wait_for(Duration::from_secs(30), || text(&out).lines().any(|l| l.starts_with("ok") || l.starts_with("FAIL"))),
            "{what}: restored program did not finish: {}",
            text(&out)
        );
        assert!(text(&out).contains("ok"), "{what}: {}", text(&out));
        drop(restored);
    }
    let (_, (base_images, base_ids), _) = &results[0];
    assert!(base_ids.len() > 600 && base_images.len() >= 4, "{} chunks in {} images", base_ids.len(), base_images.len());
    for (what, (imgs, ids), _) in &results[1..] {
        assert!(ids == base_ids, "{what}: {} chunks, serial {}; not the same", ids.len(), base_ids.len());
        for img in base_images {
            let other = imgs.iter().find(|i| i.name == img.name).unwrap_or_else(|| panic!("{what}: no image {}", img.name));
            if other.extents != img.extents {
                let at = other.extents.iter().zip(&img.extents).position(|(a, b)| a != b).unwrap_or(other.extents.len().min(img.extents.len()));
                panic!(
                    "{what}: image {} differs ({} extents, serial {}): first at index {at}: {:?} vs serial {:?}",
                    img.name,
                    other.extents.len(),
                    img.extents.len(),
                    other.extents.get(at..at + 2),
                    img.extents.get(at..at + 2)
                );
            }
        }
    }
}
