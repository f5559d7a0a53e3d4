//! Checkpoint and restore of a process holding 1 GiB of anonymous memory (half zero pages, a
//! quarter text-like, a quarter random): how long the dump stops the process, how long a restore
//! takes until the process runs, and what is stored. Each restored copy's memory is then compared
//! byte for byte with the image.
//!
//! Run: `cargo run --release -p zap-benches --bin process-bench [-- --size-mib N] [--dir DIR]`
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zap_benches::{machine, Args};
use zap_engine::process::{checkpoint, restore, CheckpointOptions};
use zap_store::{LocalStore, StoreOptions};

fn main() {
    let args = Args::parse();
    let tmp = tempfile::Builder::new().prefix("zap-pbench-").tempdir_in(&args.dir).expect("temp dir");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("progs/bigmem.c");
    let bin = tmp.path().join("bigmem");
    assert!(Command::new("gcc").args(["-O2", "-o"]).arg(&bin).arg(&src).status().expect("gcc").success());
    println!("# process-bench: {} MiB process, store in {}", args.size_mib, args.dir);
    println!("# machine: {}", machine());
    let store = LocalStore::open(tmp.path().join("store"), StoreOptions { create: true, ..Default::default() }).expect("store");
    let ready = tmp.path().join("ready");
    let mut cmd = Command::new(&bin);
    cmd.arg(args.size_mib.to_string()).arg(&ready).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // Shells here may leak stray fds (10, 251) into children: give the program only 0-2.
    // SAFETY: close_range is async-signal-safe and only touches the child's fd table before exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        })
    };
    let mut child = cmd.spawn().expect("spawn");
    let start = Instant::now();
    while !ready.exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "program did not get ready");
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = child.id() as i32;
    // 1. --leave-running: the process is stopped while its pages are copied out.
    let report = checkpoint(&store, pid, &CheckpointOptions { leave_running: true, ..Default::default() }).expect("checkpoint");
    println!(
        "\ncheckpoint --leave-running: process stopped {:.0} ms (copied {:.0} MiB, {:.2} GB/s), committed after {:.0} ms",
        report.frozen_ms,
        report.bytes_read as f64 / 1048576.0,
        report.bytes_read as f64 / (report.frozen_ms / 1e3) / 1e9,
        report.total_ms
    );
    println!(
        "stored: {:.1} MiB in packs for {:.0} MiB of memory ({:.0} MiB zero, not stored); manifest {:.1} KiB",
        report.summary.new_stored_bytes as f64 / 1048576.0,
        report.summary.logical_bytes as f64 / 1048576.0,
        report.summary.zero_bytes as f64 / 1048576.0,
        report.summary.manifest_bytes as f64 / 1024.0
    );
    // 2. Default (stop, then kill): into a fresh store, so nothing deduplicates.
    let store2 = LocalStore::open(tmp.path().join("store2"), StoreOptions { create: true, ..Default::default() }).expect("store");
    let killed = checkpoint(&store2, pid, &CheckpointOptions::default()).expect("checkpoint");
    child.wait().ok();
    println!("checkpoint (default, process killed after commit): stopped {:.0} ms until committed", killed.frozen_ms);
    drop(store2);
    for round in 1..=2 {
        let r = restore(&store, &report.summary.id).expect("restore");
        println!("restore {round}: {:.0} ms until the process runs (pid {} = vpid {})", r.restore_ms, r.pid, r.vpid);
        let v = Instant::now();
        zap_engine::memdump::verify_against(&store, r.pid, &report.summary.id).expect("restored memory matches the image");
        println!("  memory of the restored copy equals the image (checked in {:.0} ms)", v.elapsed().as_secs_f64() * 1e3);
        r.kill_and_reap();
    }
}
