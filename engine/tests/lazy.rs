//! Lazy restore (`process::restore_lazy`): a 1 GiB process (every other page zero, the others
//! random) restored lazily runs at once and checks every page itself, while its memory loads,
//! and a child it forks while loading checks them too; the pager then ends with every page in.
//! A process tree (`group::restore_lazy`: a parent and three forked children sharing part of
//! their memory copy-on-write, each with a region of its own) restored lazily: every process
//! checks every page and counts on, and the pages they shared stay shared.
//! Needs userfaultfd (SKIP otherwise).
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{build, start, wait_for, wait_gone, RestoredProc};
use zap_engine::process::{checkpoint, restore_lazy, CheckpointOptions};
use zap_store::{LocalStore, StoreOptions};

fn text(p: &std::path::Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn one_gib_process_restored_lazily_checks_every_page() {
    if let Err(e) = zap_engine::dirty::check(zap_engine::dirty::Backend::UffdWp) {
        eprintln!("SKIP: userfaultfd ({e})");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(prog) = build("lazybig", dir.path(), &["-static"]) else { return };
    let (out, go) = (dir.path().join("out"), dir.path().join("go"));
    let orig = start(&prog, &[out.to_str().unwrap(), go.to_str().unwrap(), "1024"]);
    let pid = orig.0.id() as i32;
    assert!(wait_for(Duration::from_secs(60), || text(&out).contains("ready")), "no ready: {}", text(&out));
    let store = Arc::new(LocalStore::open(dir.path().join("store"), StoreOptions { create: true, ..Default::default() }).unwrap());
    let report = checkpoint(&*store, pid, &CheckpointOptions::default()).expect("checkpoint");
    drop(orig);
    wait_gone(pid);
    let t = Instant::now();
    let (restored, pager) = restore_lazy(store.clone(), &report.summary.id).expect("lazy restore");
    let first = t.elapsed();
    let restored = RestoredProc(restored);
    assert_eq!(restored.0.vpid, pid);
    assert!(!pager.finished(), "the pager finished before the process ran: nothing was lazy");
    std::fs::write(&go, b"go").unwrap();
    assert!(
        wait_for(Duration::from_secs(120), || text(&out).lines().any(|l| l.starts_with("ok") || l.starts_with("FAIL"))),
        "restored program did not finish: {}",
        text(&out)
    );
    assert!(text(&out).contains("ok") && !text(&out).contains("FAIL"), "{}", text(&out));
    let r = pager.wait().expect("pager");
    assert!(r.bytes >= 500 << 20, "{r:?}");
    assert!(r.faults > 0 && r.processes == 2, "{r:?}");
    eprintln!("lazy restore of 1 GiB: running after {:.0} ms, every page in after {:.0} ms more; {r:?}", first.as_secs_f64() * 1e3, r.load_ms);
}

/// Kills (by pid) processes this test started, on drop.
struct Kill(Vec<i32>);

impl Drop for Kill {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: kill takes integers; these are processes this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Page frames of `[addr, addr + pages * 4096)` of `pid` (0 where no anonymous page is present).
fn frames(pid: i32, addr: u64, pages: usize) -> Vec<u64> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(format!("/proc/{pid}/pagemap")).unwrap();
    let mut raw = vec![0u8; pages * 8];
    f.read_exact_at(&mut raw, addr / 4096 * 8).unwrap();
    raw.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .map(|e| if e >> 63 == 1 && e & (1 << 61) == 0 { e & ((1 << 55) - 1) } else { 0 })
        .collect()
}

/// Pages of the shared region each child (in `pids` order after the parent) shares with the parent.
fn shared_with_parent(pids: &[i32], region: u64) -> Vec<usize> {
    let parent = frames(pids[0], region, 2048);
    pids[1..].iter().map(|&k| frames(k, region, 2048).iter().zip(&parent).filter(|(a, b)| **a != 0 && a == b).count()).collect()
}

#[test]
fn process_tree_restored_lazily_checks_every_page_and_keeps_sharing() {
    if let Err(e) = zap_engine::dirty::check(zap_engine::dirty::Backend::UffdWp) {
        eprintln!("SKIP: userfaultfd ({e})");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(prog) = build("lazypod", dir.path(), &[]) else { return };
    let (out, go) = (dir.path().join("out"), dir.path().join("go"));
    let orig = start(&prog, &[out.to_str().unwrap(), go.to_str().unwrap(), "8"]);
    let root = orig.0.id() as i32;
    assert!(wait_for(Duration::from_secs(30), || text(&out).contains("ready")), "no ready: {}", text(&out));
    let region = u64::from_str_radix(text(&out).lines().find_map(|l| l.strip_prefix("ready ")).unwrap().trim(), 16).unwrap();
    let pids = zap_engine::group::tree_of(root);
    let _tree = Kill(pids.clone());
    assert_eq!(pids.len(), 4, "a parent and three children: {pids:?}");
    let before = shared_with_parent(&pids, region);
    assert_eq!(before, vec![1920; 3], "pages shared before the checkpoint");
    let store = Arc::new(LocalStore::open(dir.path().join("store"), StoreOptions { create: true, ..Default::default() }).unwrap());
    let report = zap_engine::group::checkpoint_tree(&*store, root, &CheckpointOptions::default()).expect("checkpoint");
    drop(orig);
    for &p in &pids {
        // SAFETY: kill takes integers; these are processes this test started.
        unsafe { libc::kill(p, libc::SIGKILL) };
        wait_gone(p);
    }
    let t = Instant::now();
    let (restored, pagers) = zap_engine::group::restore_lazy(store.clone(), &report.summary.id).expect("lazy restore");
    let first = t.elapsed();
    struct Group(zap_engine::group::GroupRestored);
    impl Drop for Group {
        fn drop(&mut self) {
            self.0.kill_and_reap();
        }
    }
    let restored = Group(restored);
    let mut got: Vec<i32> = restored.0.pids.iter().map(|p| p.0).collect();
    got.sort();
    let mut want = pids.clone();
    want.sort();
    assert_eq!(got, want, "every process keeps its pid");
    // Each process's own 8 MiB (and its stack and heap) is lazy; the region it shares is not.
    assert_eq!(pagers.len(), 4, "one pager per process");
    assert!(pagers.lazy_bytes >= 4 * (8 << 20), "lazily served: {} bytes", pagers.lazy_bytes);
    let host: Vec<i32> = pids.iter().map(|v| restored.0.host_pid(*v).unwrap()).collect();
    assert_eq!(shared_with_parent(&host, region), before, "the restored children share the same pages with their parent");
    std::fs::write(&go, b"go").unwrap();
    let done = wait_for(Duration::from_secs(60), || text(&out).contains("ok all") || text(&out).contains("FAIL"));
    let t2 = text(&out);
    assert!(done && !t2.contains("FAIL"), "restored tree did not finish: {t2}");
    for w in ["ok P", "ok 1", "ok 2", "ok 3", "count 1 ", "count 2 ", "count 3 "] {
        assert!(t2.contains(w), "{w}: {t2}");
    }
    let r = pagers.wait().expect("pagers");
    assert!(r.bytes > 0 && r.faults > 0, "{r:?}");
    eprintln!("lazy tree restore (4 processes, 4 x 8 MiB lazy): running after {:.0} ms, all in after {:.0} ms; {r:?}", first.as_secs_f64() * 1e3, r.load_ms);
}
