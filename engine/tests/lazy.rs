//! Lazy restore (`process::restore_lazy`): a 1 GiB process (every other page zero, the others
//! random) restored lazily runs at once and checks every page itself, while its memory loads,
//! and a child it forks while loading checks them too; the pager then ends with every page in.
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
