//! Checkpoint and restore of process trees (our own C programs): parent/child links, sessions,
//! process groups, a zombie, a pipe between processes, shared anonymous memory, and a file
//! description shared across fork.
mod common;

use std::time::Duration;

use common::*;
use zap_engine::group::{self, tree_of};
use zap_engine::process::CheckpointOptions;
use zap_store::{LocalStore, StoreOptions};

fn text(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Kills (by pid) every process of a tree this test started, on drop.
struct TreeGuard(Vec<i32>);

impl Drop for TreeGuard {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: kill takes integers; these are processes this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

struct GroupGuard(group::GroupRestored);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.0.kill_and_reap();
    }
}

#[test]
fn process_tree_with_sessions_groups_zombie_pipe_and_shared_memory() {
    tree_cycle(false);
}

/// The same tree checkpointed with `leave_running`: its memory is copied while it runs
/// (pre-copy) and it stops only for what was written since; the restore holds it all.
#[test]
fn process_tree_pre_copied_while_running() {
    tree_cycle(true);
}

fn tree_cycle(leave_running: bool) {
    let dir = tempfile::tempdir().unwrap();
    let Some(prog) = build("tree", dir.path(), &[]) else { return };
    let (out, go, shared) = (dir.path().join("out"), dir.path().join("go"), dir.path().join("shared"));
    std::fs::write(&shared, b"ab").unwrap();
    let orig = start(&prog, &[out.to_str().unwrap(), go.to_str().unwrap(), shared.to_str().unwrap()]);
    let root = orig.0.id() as i32;
    assert!(wait_for(Duration::from_secs(20), || text(&out).contains("ready")), "no ready: {}", text(&out));
    let pids = tree_of(root);
    let _tree = TreeGuard(pids.clone());
    assert_eq!(pids.len(), 4, "root, counter, grouped child and zombie: {pids:?}");
    let store = LocalStore::open(dir.path().join("store"), StoreOptions { create: true, ..Default::default() }).unwrap();
    let report = group::checkpoint_tree(&store, root, &CheckpointOptions { leave_running, ..Default::default() }).expect("checkpoint");
    eprintln!("mode: {}; stopped {:.1} ms", report.mode, report.frozen_ms);
    if leave_running {
        assert!(report.mode.starts_with("full; pre-copied while running"), "{}", report.mode);
        assert!(tree_of(root).len() == 4, "the tree runs on");
        for &p in &pids {
            // SAFETY: kill takes integers; these are processes this test started.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
    drop(orig);
    for &p in &pids {
        wait_gone(p);
    }
    let restored = GroupGuard(group::restore(&store, &report.summary.id).expect("restore"));
    let vpids: Vec<i32> = restored.0.pids.iter().map(|p| p.0).collect();
    let mut want = pids.clone();
    want.sort();
    let mut got = vpids.clone();
    got.sort();
    assert_eq!(got, want, "every process keeps its pid");
    std::fs::write(&go, b"go").unwrap();
    let done = wait_for(Duration::from_secs(20), || text(&out).lines().any(|l| l.starts_with("ok") || l.starts_with("FAIL")));
    let t = text(&out);
    assert!(done, "restored tree did not finish: {t:?}");
    assert!(!t.contains("FAIL"), "{t}");
    eprintln!("restored tree said: {t:?}; warnings: {:?}", restored.0.warnings);
}

#[test]
fn processes_sharing_an_address_space_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let Some(prog) = build("vfork", dir.path(), &[]) else { return };
    let out = dir.path().join("out");
    let orig = start(&prog, &[out.to_str().unwrap(), "/nonexistent"]);
    let root = orig.0.id() as i32;
    assert!(wait_for(Duration::from_secs(10), || text(&out).contains("ready") && tree_of(root).len() == 2));
    let _tree = TreeGuard(tree_of(root));
    let store = LocalStore::open(dir.path().join("store"), StoreOptions { create: true, ..Default::default() }).unwrap();
    let err = group::checkpoint_tree(&store, root, &CheckpointOptions::default()).unwrap_err().to_string();
    assert!(err.contains("vfork"), "{err}");
    assert!(zap_store::ImageStore::list(&store).unwrap().is_empty(), "nothing stored");
}
