//! The dirty-page tracker against the truth: a C program does one memory action per step (writes
//! to 1% of a heap, a new mapping, unmap + remap, mremap, mprotect, brk growth, a write from
//! another thread, a transparent huge page, MADV_DONTNEED, fork), and after each step every page
//! whose bytes differ from the previous snapshot must be reported written, lie outside the
//! tracked ranges (saved whole), or be absent now (saved as zero). Each backend the kernel has
//! runs; the others are skipped with the missing kernel feature named.
mod common;

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use common::*;
use zap_engine::dirty::{self, Backend, Keeper};
use zap_engine::inject::Injector;
use zap_engine::mem::{save_layout, Backing, VmaState};

const PAGE: u64 = 4096;

/// Present pages of every readable mapping: address -> bytes.
fn snapshot(pid: i32, vmas: &[VmaState]) -> HashMap<u64, Vec<u8>> {
    let mem = File::open(format!("/proc/{pid}/mem")).unwrap();
    let pm = File::open(format!("/proc/{pid}/pagemap")).unwrap();
    let mut out = HashMap::new();
    for v in vmas {
        if matches!(v.backing, Backing::Vdso | Backing::Vsyscall) || v.prot & libc::PROT_READ as u32 == 0 {
            continue;
        }
        let pages = ((v.end - v.start) / PAGE) as usize;
        let mut raw = vec![0u8; pages * 8];
        pm.read_exact_at(&mut raw, v.start / PAGE * 8).unwrap();
        for (i, e) in raw.chunks_exact(8).enumerate() {
            if u64::from_le_bytes(e.try_into().unwrap()) & (3 << 62) != 0 {
                let addr = v.start + i as u64 * PAGE;
                let mut buf = vec![0u8; PAGE as usize];
                if mem.read_exact_at(&mut buf, addr).is_ok() {
                    out.insert(addr, buf);
                }
            }
        }
    }
    out
}

fn within(ranges: &[(u64, u64)], addr: u64) -> bool {
    ranges.iter().any(|&(a, b)| a <= addr && addr < b)
}

/// Every page whose bytes changed is accounted for; returns how many changed.
fn check(step: &str, before: &HashMap<u64, Vec<u8>>, after: &HashMap<u64, Vec<u8>>, d: &dirty::Dirty) -> usize {
    let zero = vec![0u8; PAGE as usize];
    let mut changed = 0;
    let mut addrs: Vec<u64> = before.keys().chain(after.keys()).copied().collect();
    addrs.sort_unstable();
    addrs.dedup();
    for addr in addrs {
        let old = before.get(&addr).unwrap_or(&zero);
        let new = after.get(&addr);
        if new.unwrap_or(&zero) == old {
            continue;
        }
        changed += 1;
        let ok = !within(&d.tracked, addr) || within(&d.written, addr) || new.is_none();
        assert!(ok, "step {step}: page {addr:#x} changed but the tracker did not report it (tracked, not written, present)");
    }
    changed
}

fn stopped<T>(pid: i32, f: impl FnOnce(&mut Injector) -> T) -> T {
    zap_engine::inject::in_stopped_process(pid, |inj| Ok(f(inj))).expect("stop the process")
}

fn run(backend: Backend) {
    if let Err(e) = dirty::check(backend) {
        eprintln!("SKIP: {e}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(prog) = build("dirty", dir.path(), &["-pthread"]) else { return };
    let (out, steps) = (dir.path().join("out"), dir.path().join("steps"));
    std::fs::create_dir(&steps).unwrap();
    let p = start(&prog, &[out.to_str().unwrap(), steps.to_str().unwrap()]);
    let pid = p.0.id() as i32;
    let text = || std::fs::read_to_string(&out).unwrap_or_default();
    assert!(wait_for(Duration::from_secs(10), || text().contains("ready")), "{}", text());
    let (mut armed, mut before) = stopped(pid, |inj| {
        let vmas = save_layout(pid).unwrap();
        (dirty::arm(pid, inj, backend, Keeper::Here, &vmas).expect("arm"), snapshot(pid, &vmas))
    });
    let mut child = None;
    for n in 1..=10 {
        std::fs::write(steps.join(n.to_string()), b"").unwrap();
        let done = format!("done {n}");
        assert!(wait_for(Duration::from_secs(10), || text().contains(&done) || text().contains("FAIL")), "step {n}: {}", text());
        assert!(!text().contains("FAIL"), "{}", text());
        let (d, after) = stopped(pid, |_| {
            let vmas = save_layout(pid).unwrap();
            (dirty::collect(&mut armed, &vmas).expect("collect"), snapshot(pid, &vmas))
        });
        let changed = check(&n.to_string(), &before, &after, &d);
        let written = d.written_bytes() / PAGE;
        eprintln!("{backend} step {n}: {changed} pages changed, {written} reported written, {} tracked ranges", d.tracked.len());
        if n == 1 {
            assert!(changed >= 40, "step 1 writes 40 pages");
            // The check itself catches a tracker that reports nothing.
            let blind = dirty::Dirty { tracked: vec![(0, u64::MAX)], written: Vec::new() };
            let caught = std::panic::catch_unwind(|| check("blind", &before, &after, &blind));
            assert!(caught.is_err(), "the check must fail a tracker that misses written pages");
            assert!(written < 400, "step 1: the tracker should report about the 40 written pages, not {written}");
        }
        before = after;
        if n == 10 {
            child = text().lines().find_map(|l| l.strip_prefix("done 10 ")).and_then(|c| c.trim().parse::<i32>().ok());
        }
    }
    // The forked child inherits no tracking: a collection for it must fail, not answer.
    if let Some(c) = child {
        let mut forged = armed.clone();
        forged.pid = c;
        assert!(dirty::collect(&mut forged, &[]).is_err(), "a child that was never armed cannot report");
        // SAFETY: kill takes integers; the child is a process this test's program forked.
        unsafe { libc::kill(c, libc::SIGKILL) };
    }
    dirty::disarm(&armed).unwrap();
    drop(p);
}

#[test]
fn uffd_wp_tracker_reports_every_written_page() {
    run(Backend::UffdWp);
}

#[test]
fn soft_dirty_tracker_reports_every_written_page() {
    run(Backend::SoftDirty);
}

#[test]
fn content_hash_tracker_reports_every_written_page() {
    run(Backend::ContentHash);
}
