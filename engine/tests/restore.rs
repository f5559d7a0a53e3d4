//! Checkpoint and restore of real, unmodified programs (our own C programs, built with gcc by
//! the test). Each test checkpoints a running program, kills the original, restores it in a new
//! PID namespace with its saved pid, and checks that it continues with the right state.
mod common;

use std::time::Duration;

use common::*;
use zap_engine::process::{checkpoint, restore, CheckpointOptions};
use zap_store::{LocalStore, StoreOptions};

fn store(dir: &std::path::Path) -> LocalStore {
    LocalStore::open(dir.join("store"), StoreOptions { create: true, ..Default::default() }).unwrap()
}

fn lines(path: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| l.parse().ok()).collect()
}

fn assert_consecutive(v: &[u64]) {
    for w in v.windows(2) {
        assert_eq!(w[1], w[0] + 1000, "sequence broken: {v:?}");
    }
}

#[test]
fn counter_continues_after_restore() {
    let dir = tempfile::tempdir().unwrap();
    let Some(prog) = build("counter", dir.path(), &[]) else { return };
    let out = dir.path().join("counter.out");
    let orig = start(&prog, &[out.to_str().unwrap()]);
    let pid = orig.0.id() as i32;
    assert!(wait_for(Duration::from_secs(5), || lines(&out).len() >= 3), "counter did not start");
    let store = store(dir.path());
    let report = checkpoint(&store, pid, &CheckpointOptions::default()).expect("checkpoint");
    drop(orig);
    wait_gone(pid);
    let before = lines(&out);
    assert_consecutive(&before);
    let restored = RestoredProc(restore(&store, &report.summary.id).expect("restore"));
    assert_eq!(restored.0.vpid, pid, "restored with its saved pid inside its namespace");
    assert!(
        wait_for(Duration::from_secs(5), || lines(&out).len() >= before.len() + 3),
        "restored counter did not continue: {:?}",
        lines(&out)
    );
    let after = lines(&out);
    assert_consecutive(&after);
    assert_eq!(&after[..before.len()], &before[..]);
}
