//! Pods: what a pod costs a running program, and how long a pod of several processes holding
//! 1 GiB in total is stopped by a checkpoint and takes to restore.
//!
//! 1. Overhead: a CPU-bound, a syscall-heavy and a clock-reading workload (`progs/work.c`, each
//!    timing itself) run alternately outside and inside a pod (which has a time namespace of its
//!    own, whose offsets every vDSO clock read adds), 5 times each; medians and their ratio.
//! 2. Checkpoint/restore: a pod running `sh` with 4 `bigmem` children of `--size-mib / 4` MiB
//!    each (half zero pages, a quarter text, a quarter random). Checkpoint with
//!    `--leave-running` (stop time, bytes), checkpoint that ends the pod (into a fresh store),
//!    restore (time until every process runs).
//!
//! 3. Incremental: a pod of 4 `dirtier` processes (`--size-mib / 4` MiB each) that write to 1%
//!    of their pages on a signal. After a first checkpoint (`--leave-running`, which arms the
//!    dirty-page tracker), each round writes 1% and takes an incremental checkpoint, then a
//!    full one (`--full`) for comparison; with the uffd-wp tracker and with the content-hash
//!    fallback.
//!
//! 4. Tracking overhead: a write-heavy program (`progs/writer.c`: 20 M writes to random pages of
//!    256 MiB, so every page is written about 300 times) in a pod, untracked vs right after a
//!    `--leave-running` checkpoint armed the uffd-wp tracker (each page's first write then
//!    takes a write-protect fault); 3 runs each.
//!
//! Run: `cargo run --release -p zap-benches --bin pod-bench [-- --size-mib N] [--dir DIR]`
//! (needs `zap-init` built next to this binary: `cargo build --release --workspace`).
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zap_benches::{machine, Args};
use zap_engine::pod::checkpoint::{self as podck, PodCheckpointOptions, PodRestoreOptions};
use zap_engine::pod::{self, Launch, PodSpec};
use zap_store::{LocalStore, StoreOptions};

fn gcc(src: &str, out: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("progs").join(src);
    assert!(Command::new("gcc").args(["-O2", "-o"]).arg(out).arg(&src).status().expect("gcc").success());
}

fn read_ns(p: &Path) -> Option<f64> {
    std::fs::read_to_string(p).ok()?.split_whitespace().next()?.parse::<f64>().ok()
}

fn wait_file(p: &Path, limit: Duration) -> f64 {
    let t = Instant::now();
    loop {
        if let Some(v) = read_ns(p) {
            return v;
        }
        assert!(t.elapsed() < limit, "{} did not appear", p.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn spec(name: &str, argv: Vec<String>, init: &Path) -> PodSpec {
    PodSpec {
        name: name.into(),
        hostname: None,
        ip: None,
        mac: None,
        memory_limit: None,
        cpus: None,
        launch: Launch::Command { argv, env: vec![("PATH".into(), "/usr/bin:/bin".into())], cwd: PathBuf::from("/") },
        init_exe: init.to_path_buf(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

/// Removes the bench's pods even when it panics.
struct Cleanup(PathBuf, Vec<String>);
impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in &self.1 {
            let _ = pod::rm(&self.0, n, true);
        }
    }
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    }
    let args = Args::parse();
    let tmp = tempfile::Builder::new().prefix("zap-podbench-").tempdir_in(&args.dir).expect("temp dir");
    let run = tmp.path().join("run");
    let init = std::env::current_exe().expect("exe").parent().expect("dir").join("zap-init");
    assert!(init.is_file(), "build zap-init first: cargo build --release --workspace ({} missing)", init.display());
    let (work, bigmem) = (tmp.path().join("work"), tmp.path().join("bigmem"));
    gcc("work.c", &work);
    gcc("bigmem.c", &bigmem);
    let tag = std::process::id();
    let mut cleanup = Cleanup(run.clone(), Vec::new());
    println!("# pod-bench, machine: {}", machine());

    // 1. Overhead.
    for mode in ["cpu", "sys", "clock"] {
        let (mut outside, mut inside) = (Vec::new(), Vec::new());
        for i in 0..5 {
            let f = tmp.path().join(format!("out-{mode}-{i}"));
            let st = Command::new(&work).arg(mode).arg(&f).stdin(Stdio::null()).status().expect("run work");
            assert!(st.success());
            outside.push(read_ns(&f).expect("result") / 1e6);
            let f = tmp.path().join(format!("in-{mode}-{i}"));
            let name = format!("pb{tag}-{mode}{i}");
            cleanup.1.push(name.clone());
            let argv = vec![work.display().to_string(), mode.into(), f.display().to_string()];
            pod::create(&run, &spec(&name, argv, &init)).expect("create pod");
            inside.push(wait_file(&f, Duration::from_secs(120)) / 1e6);
            pod::rm(&run, &name, true).expect("rm pod");
        }
        let (o, n) = (median(outside), median(inside));
        println!("overhead {mode}: outside {o:.1} ms, in a pod {n:.1} ms (median of 5), ratio {:.4}", n / o);
    }

    // 2. Checkpoint and restore of a pod of several processes.
    let per = args.size_mib / 4;
    let ready = tmp.path().join("ready");
    std::fs::create_dir_all(&ready).unwrap();
    let script = format!(
        "for i in 1 2 3 4; do {b} {per} {r}/$i & done; wait",
        b = bigmem.display(),
        r = ready.display()
    );
    let name = format!("pb{tag}-mem");
    cleanup.1.push(name.clone());
    pod::create(&run, &spec(&name, vec!["sh".into(), "-c".into(), script], &init)).expect("create pod");
    let t = Instant::now();
    while std::fs::read_dir(&ready).map(|d| d.count()).unwrap_or(0) < 4 {
        assert!(t.elapsed() < Duration::from_secs(120), "bigmem processes did not get ready");
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("\npod of 5 processes (sh + 4 x {per} MiB), {} MiB in total", per * 4);
    let store = LocalStore::open(tmp.path().join("store"), StoreOptions { create: true, ..Default::default() }).expect("store");
    let opts = PodCheckpointOptions { leave_running: true, ..Default::default() };
    // Twice: in a VM, the first run also pays for the first touch of guest memory that Zap's
    // copy buffers land on; the second shows the steady state of periodic checkpoints.
    let mut r = None;
    for round in ["first", "second (incremental: nothing was written since)"] {
        let c = podck::checkpoint(&store, &run, &name, &opts).expect("checkpoint");
        println!(
            "checkpoint --leave-running ({round}): pod stopped {:.0} ms (copied {:.0} MiB, {:.2} GB/s), committed after {:.0} ms; stored {:.1} MiB new",
            c.frozen_ms,
            c.bytes_read as f64 / 1048576.0,
            c.bytes_read as f64 / (c.frozen_ms / 1e3) / 1e9,
            c.total_ms,
            c.summary.new_stored_bytes as f64 / 1048576.0
        );
        r = Some(c);
    }
    let r = r.expect("two checkpoints");
    let store2 = LocalStore::open(tmp.path().join("store2"), StoreOptions { create: true, ..Default::default() }).expect("store");
    let r2 = podck::checkpoint(&store2, &run, &name, &PodCheckpointOptions::default()).expect("checkpoint");
    println!("checkpoint (pod ended after the commit): stopped {:.0} ms until committed", r2.frozen_ms);
    drop(store2);
    for round in 1..=2 {
        let ropts = PodRestoreOptions { name: None, ip: None, init_exe: init.clone(), ..Default::default() };
        let t = Instant::now();
        let restored = podck::restore(&store, &run, &r.summary.id, &ropts).expect("restore");
        println!(
            "restore {round}: {:.0} ms until all {} processes run ({:.0} ms with pod creation)",
            restored.group.restore_ms,
            restored.group.pids.len(),
            t.elapsed().as_secs_f64() * 1e3
        );
        pod::rm(&run, &name, true).expect("rm");
    }
    incremental(&args, &run, &init, tmp.path(), tag, &mut cleanup);
    tracking_overhead(&run, &init, tmp.path(), tag, &mut cleanup);
    drop(cleanup);
}

fn tracking_overhead(run: &Path, init: &Path, tmp: &Path, tag: u32, cleanup: &mut Cleanup) {
    if let Err(e) = zap_engine::dirty::check(zap_engine::dirty::Backend::UffdWp) {
        println!("\ntracking overhead: skipped ({e})");
        return;
    }
    // SAFETY: setting an environment variable before any thread of ours reads it.
    unsafe { std::env::set_var("ZAP_TRACKER", "uffd-wp") };
    let writer = tmp.join("writer");
    gcc("writer.c", &writer);
    let store = LocalStore::open(tmp.join("store-overhead"), StoreOptions { create: true, ..Default::default() }).expect("store");
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for i in 0..6 {
        let tracked = i % 2 == 1;
        let (ready, out) = (tmp.join(format!("w-ready-{i}")), tmp.join(format!("w-out-{i}")));
        let name = format!("pb{tag}-w{i}");
        cleanup.1.push(name.clone());
        let argv = vec![writer.display().to_string(), "256".into(), ready.display().to_string(), "20".into(), out.display().to_string()];
        let st = pod::create(run, &spec(&name, argv, init)).expect("create pod");
        let t = Instant::now();
        while !ready.exists() {
            assert!(t.elapsed() < Duration::from_secs(60), "writer did not get ready");
            std::thread::sleep(Duration::from_millis(5));
        }
        if tracked {
            podck::checkpoint(&store, run, &name, &PodCheckpointOptions { leave_running: true, ..Default::default() }).expect("checkpoint");
        }
        let pid = pod::host_pid_of(&pod::cgroup_of(&st), st.main_vpid).expect("writer pid");
        // SAFETY: kill takes integers; the writer is the bench's own process.
        unsafe { libc::kill(pid, libc::SIGUSR1) };
        let ms = wait_file(&out, Duration::from_secs(120)) / 1e6;
        if tracked { on.push(ms) } else { off.push(ms) }
        let _ = pod::rm(run, &name, true);
    }
    let (o, n) = (median(off), median(on));
    println!("\ntracking overhead (20 M random 8-byte writes over 256 MiB, median of 3): untracked {o:.1} ms, tracked (uffd-wp armed) {n:.1} ms, ratio {:.3}", n / o);
}

fn incremental(args: &Args, run: &Path, init: &Path, tmp: &Path, tag: u32, cleanup: &mut Cleanup) {
    let dirtier = tmp.join("dirtier");
    gcc("dirtier.c", &dirtier);
    let per = args.size_mib / 4;
    for tracker in ["uffd-wp", "content-hash"] {
        if let Err(e) = tracker.parse().map_err(|e: String| e).and_then(|b| zap_engine::dirty::check(b).map_err(|e| e.to_string())) {
            println!("\n{tracker}: skipped ({e})");
            continue;
        }
        // SAFETY: setting an environment variable before any thread of ours reads it.
        unsafe { std::env::set_var("ZAP_TRACKER", tracker) };
        let marks = tmp.join(format!("marks-{tracker}"));
        std::fs::create_dir_all(&marks).unwrap();
        let script = format!("for i in 1 2 3 4; do {d} {per} {m} $i & done; wait", d = dirtier.display(), m = marks.display());
        let name = format!("pb{tag}-inc-{}", &tracker[..4]);
        cleanup.1.push(name.clone());
        pod::create(run, &spec(&name, vec!["sh".into(), "-c".into(), script], init)).expect("create pod");
        let wait_marks = |n: usize| {
            let t = Instant::now();
            while (1..=4).any(|i| !marks.join(format!("{i}.{n}")).exists()) {
                assert!(t.elapsed() < Duration::from_secs(120), "dirtier round {n} did not finish");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        wait_marks(0);
        let state = pod::load(run, &name).unwrap();
        let cg = pod::cgroup_of(&state);
        let comm = |p: i32| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
        let pids: Vec<i32> = cg.procs().into_iter().filter(|&p| comm(p).trim() == "dirtier").collect();
        assert_eq!(pids.len(), 4, "four dirtier processes");
        let store = LocalStore::open(tmp.join(format!("store-{tracker}")), StoreOptions { create: true, ..Default::default() }).expect("store");
        let lr = PodCheckpointOptions { leave_running: true, ..Default::default() };
        let first = podck::checkpoint(&store, run, &name, &lr).expect("checkpoint");
        println!("\n{tracker}: pod of 4 x {per} MiB writing 1% of its pages between checkpoints");
        println!(
            "  first (full, arms the tracker): stopped {:.0} ms, total {:.0} ms, read {:.0} MiB, new {:.1} MiB",
            first.frozen_ms, first.total_ms, first.bytes_read as f64 / 1048576.0, first.summary.new_stored_bytes as f64 / 1048576.0
        );
        let mut round = 0;
        let poke = |round: &mut usize| {
            *round += 1;
            for &p in &pids {
                // SAFETY: kill takes integers; these are the bench's own processes (in its pod).
                unsafe { libc::kill(p, libc::SIGUSR1) };
            }
            wait_marks(*round);
        };
        for _ in 0..3 {
            poke(&mut round);
            let inc = podck::checkpoint(&store, run, &name, &lr).expect("checkpoint");
            println!(
                "  incremental: stopped {:.0} ms, total {:.0} ms, read {:.1} MiB, new {:.2} MiB ({})",
                inc.frozen_ms,
                inc.total_ms,
                inc.bytes_read as f64 / 1048576.0,
                inc.summary.new_stored_bytes as f64 / 1048576.0,
                inc.mode
            );
        }
        poke(&mut round);
        let full = podck::checkpoint(&store, run, &name, &PodCheckpointOptions { leave_running: true, full: true, ..Default::default() })
            .expect("checkpoint");
        println!(
            "  full (--full) after the same 1%: stopped {:.0} ms, total {:.0} ms, read {:.0} MiB, new {:.2} MiB",
            full.frozen_ms,
            full.total_ms,
            full.bytes_read as f64 / 1048576.0,
            full.summary.new_stored_bytes as f64 / 1048576.0
        );
        drop(store);
        pod::rm(run, &name, true).expect("rm");
    }
}
