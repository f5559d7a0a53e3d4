//! Incremental pod checkpoints from the dirty-page tracker: a program churning through random
//! pages of a 64 MiB buffer (with pages thrown away and a mapping that comes and goes) is
//! checkpointed full, then incrementally twice; restores of the chain's middle and end, and of
//! the end after its root was deleted and collected, must hold exactly what the program wrote.
//! Run with each tracker this kernel has (uffd-wp here) and the content-hash fallback. Mappings
//! made after the full checkpoint with little written in them cost what they hold, not their size.
mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

fn progress(out: &Path) -> u64 {
    std::fs::read_to_string(out).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).next_back().unwrap_or(0)
}

/// Restores `id` as pod `pod`, lets it check its memory, and removes it.
fn restore_and_verify(e: &Env, id: &str, pod: &str, what: &str) {
    let _ = std::fs::remove_file(e.work.join("go"));
    ok(e, &["restore", id, "--name", pod]);
    let _g = PodGuard(e, pod.to_string());
    let log = e.work.join("out");
    let before = std::fs::read_to_string(&log).unwrap_or_default().len();
    std::fs::write(e.work.join("go"), b"go").unwrap();
    let text = || std::fs::read_to_string(&log).unwrap_or_default()[before..].to_string();
    assert!(wait_for(Duration::from_secs(20), || text().contains("ok") || text().contains("FAIL")), "{what}: {}", text());
    assert!(!text().contains("FAIL"), "{what}: restored memory differs from what the program wrote: {}", text());
}

fn run(tracker: &'static str) {
    let mut e = env();
    e.tracker = Some(tracker);
    let Some(prog) = build_prog("churn", &e.work, &[]) else { return };
    let pod = format!("inc{}-{}", std::process::id(), &tracker[..4]);
    let (out, go) = (e.work.join("out"), e.work.join("go"));
    ok(&e, &["run", "--name", &pod, "--", prog.to_str().unwrap(), out.to_str().unwrap(), go.to_str().unwrap(), "64"]);
    let guard = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(10), || progress(&out) >= 300), "churn did not start");
    // The first checkpoint is full: with the uffd-wp tracker its memory is copied while the pod
    // runs (pre-copy), with the other trackers the pod is stopped while all of it is read.
    let precopy = tracker == "uffd-wp";
    let full = if precopy {
        json(&e, &["checkpoint", "--leave-running", &pod])
    } else {
        json(&e, &["checkpoint", "--leave-running", "--no-pre-copy", &pod])
    };
    let mode = full["mode"].as_str().unwrap();
    assert!(mode.starts_with("full"), "{full}");
    assert_eq!(mode.contains("pre-copied"), precopy, "{full}");
    eprintln!("full checkpoint: {mode}; stopped {} ms, {} bytes read", full["frozen_ms"], full["memory_bytes"]);
    let p0 = progress(&out);
    assert!(wait_for(Duration::from_secs(10), || progress(&out) >= p0 + 500));
    let inc1 = json(&e, &["checkpoint", "--leave-running", &pod]);
    assert!(inc1["mode"].as_str().unwrap().starts_with("incremental"), "{inc1}");
    assert_eq!(inc1["parent"], full["id"], "the incremental checkpoint's parent is the full one");
    let (full_read, inc_read) = (full["memory_bytes"].as_u64().unwrap(), inc1["memory_bytes"].as_u64().unwrap());
    assert!(inc_read * 4 < full_read, "incremental read {inc_read} bytes, full {full_read}: not proportional to what changed");
    if tracker == "uffd-wp" {
        // One userfaultfd parked in the pod's init per tracked process, not one per checkpoint.
        let ps = json(&e, &["ps"]);
        let init = ps.as_array().unwrap().iter().find(|p| p["name"] == pod.as_str()).unwrap()["init_pid"].as_i64().unwrap();
        let parked = std::fs::read_dir(format!("/proc/{init}/fd"))
            .unwrap()
            .flatten()
            .filter(|f| std::fs::read_link(f.path()).map(|l| l.to_string_lossy() == "anon_inode:[userfaultfd]").unwrap_or(false))
            .count();
        assert_eq!(parked, 1, "userfaultfds parked in the init");
    }
    let p1 = progress(&out);
    assert!(wait_for(Duration::from_secs(10), || progress(&out) >= p1 + 500));
    let inc2 = json(&e, &["checkpoint", &pod]);
    assert!(inc2["mode"].as_str().unwrap().starts_with("incremental"), "{inc2}");
    drop(guard);
    let (id0, id1, id2) = (full["id"].as_str().unwrap(), inc1["id"].as_str().unwrap(), inc2["id"].as_str().unwrap());
    restore_and_verify(&e, id2, &pod, "end of the chain");
    restore_and_verify(&e, id1, &pod, "middle of the chain");
    restore_and_verify(&e, id0, &pod, "the full checkpoint at the root of the chain");
    ok(&e, &["store", "rm", id0]);
    ok(&e, &["store", "gc"]);
    restore_and_verify(&e, id2, &pod, "end of the chain after its root was deleted");
    // A restored pod is not tracked: its first checkpoint is full, and says why.
    std::fs::remove_file(&go).unwrap();
    ok(&e, &["restore", id2, "--name", &pod]);
    let _g = PodGuard(&e, pod.clone());
    let again = json(&e, &["checkpoint", "--leave-running", &pod]);
    assert!(again["mode"].as_str().unwrap().starts_with("full: no tracked"), "{again}");
}

#[test]
fn incremental_chain_with_uffd_wp() {
    if let Err(e) = zap_engine_support("uffd-wp") {
        eprintln!("SKIP: {e}");
        return;
    }
    run("uffd-wp");
}

#[test]
fn incremental_chain_with_content_hash() {
    run("content-hash");
}

#[test]
fn incremental_chain_with_soft_dirty() {
    if let Err(e) = zap_engine_support("soft-dirty") {
        eprintln!("SKIP: {e}");
        return;
    }
    run("soft-dirty");
}

/// Mappings made after the full checkpoint (12 threads with 32 MiB stacks, a 192 MiB mapping)
/// with little written in them: the incremental checkpoint reads what they hold, not their size
/// (the tracker's write-protection markers on their untouched pages are holes), and the restore
/// has the written bytes and zero elsewhere.
fn new_mappings(tracker: &'static str) {
    let mut e = env();
    e.tracker = Some(tracker);
    let Some(prog) = build_prog("newmaps", &e.work, &["-pthread"]) else { return };
    let pod = format!("nm{}-{}", std::process::id(), &tracker[..4]);
    let (out, go, more) = (e.work.join("out"), e.work.join("go"), e.work.join("more"));
    let text = || std::fs::read_to_string(&out).unwrap_or_default();
    ok(&e, &["run", "--name", &pod, "--", prog.to_str().unwrap(), out.to_str().unwrap(), go.to_str().unwrap(), more.to_str().unwrap()]);
    let guard = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(10), || text().contains("started")), "newmaps did not start: {}", text());
    let full = json(&e, &["checkpoint", "--leave-running", &pod]);
    assert!(full["mode"].as_str().unwrap().starts_with("full"), "{full}");
    std::fs::write(&more, b"more").unwrap();
    assert!(wait_for(Duration::from_secs(10), || text().contains("ready")), "newmaps made no mappings: {}", text());
    let inc = json(&e, &["checkpoint", &pod]);
    assert!(inc["mode"].as_str().unwrap().starts_with("incremental"), "{inc}");
    drop(guard);
    let read = inc["memory_bytes"].as_u64().unwrap();
    eprintln!("{tracker}: incremental checkpoint read {read} bytes, pod stopped {} ms", inc["frozen_ms"]);
    // New mappings: 12 x 32 MiB + 192 MiB = 576 MiB, of which about 300 KiB written.
    assert!(read < 16 << 20, "incremental checkpoint read {read} bytes: the untouched pages of new mappings were read");
    restore_and_verify(&e, inc["id"].as_str().unwrap(), &pod, "new mappings");
}

#[test]
fn new_mappings_read_only_what_they_hold_with_uffd_wp() {
    if let Err(e) = zap_engine_support("uffd-wp") {
        eprintln!("SKIP: {e}");
        return;
    }
    new_mappings("uffd-wp");
}

#[test]
fn new_mappings_read_only_what_they_hold_with_content_hash() {
    new_mappings("content-hash");
}

/// An incremental checkpoint takes the layout over from the last one when `/proc/PID/maps`
/// shows it unchanged (no smaps read while the pod is stopped), and checks it against smaps once
/// the pod runs on. A program that sets `MADV_DONTFORK` on a whole mapping between two
/// checkpoints (maps unchanged) makes the second fail before anything is committed, naming the
/// mapping; the pod runs on, and its next checkpoint is full and holds the flag. An `mprotect`
/// of half the mapping (maps changed) is read with smaps: that incremental checkpoint succeeds,
/// and the restored program finds its bytes, its flag and its protections.
#[test]
fn changed_flags_are_caught_or_read() {
    let e = env();
    let Some(prog) = build_prog("flagflip", &e.work, &[]) else { return };
    let pod = format!("ff{}", std::process::id());
    let (out, go, more, more2) = (e.work.join("out"), e.work.join("go"), e.work.join("more"), e.work.join("more2"));
    let text = || std::fs::read_to_string(&out).unwrap_or_default();
    let args = [out.to_str().unwrap(), go.to_str().unwrap(), more.to_str().unwrap(), more2.to_str().unwrap()];
    ok(&e, &["run", "--name", &pod, "--", prog.to_str().unwrap(), args[0], args[1], args[2], args[3]]);
    let guard = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(10), || text().contains("started")), "flagflip did not start: {}", text());
    let addr = text().lines().find_map(|l| l.strip_prefix("started ")).unwrap().trim().to_string();
    let full = json(&e, &["checkpoint", "--leave-running", &pod]);
    assert!(full["mode"].as_str().unwrap().starts_with("full"), "{full}");
    let inc1 = json(&e, &["checkpoint", "--leave-running", &pod]);
    assert!(inc1["mode"].as_str().unwrap().starts_with("incremental"), "{inc1}");
    std::fs::write(&more, b"more").unwrap();
    assert!(wait_for(Duration::from_secs(10), || text().contains("flipped")), "flagflip did not flip: {}", text());
    let failed = zap(&e, &["checkpoint", "--leave-running", &pod]);
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "a checkpoint over a flag changed without a change in maps succeeded");
    assert!(err.contains("flags changed") && err.contains(&format!("mapping {addr}-")), "{err}");
    let ps = json(&e, &["ps"]);
    let row = ps.as_array().unwrap().iter().find(|p| p["name"] == pod.as_str()).cloned().unwrap();
    assert_eq!(row["state"], "running", "{row}");
    let list = ok(&e, &["store", "ls"]);
    assert!(list.contains(&inc1["id"].as_str().unwrap()[..8]), "the last checkpoint is still stored: {list}");
    let full2 = json(&e, &["checkpoint", "--leave-running", &pod]);
    assert!(full2["mode"].as_str().unwrap().starts_with("full"), "{full2}");
    std::fs::write(&more2, b"more").unwrap();
    assert!(wait_for(Duration::from_secs(10), || text().contains("protected")), "flagflip did not protect: {}", text());
    let inc2 = json(&e, &["checkpoint", &pod]);
    assert!(inc2["mode"].as_str().unwrap().starts_with("incremental"), "{inc2}");
    drop(guard);
    restore_and_verify(&e, inc2["id"].as_str().unwrap(), &pod, "flags changed between checkpoints");
}

/// Whether the kernel has what a tracker needs (asks the engine's probe).
fn zap_engine_support(tracker: &str) -> Result<(), String> {
    let b: zap_engine::dirty::Backend = tracker.parse()?;
    zap_engine::dirty::check(b).map_err(|e| e.to_string())
}
