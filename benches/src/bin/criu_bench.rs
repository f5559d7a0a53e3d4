//! Zap and CRIU side by side, in one run, on the same program: a process holding 1 GiB of
//! anonymous memory, every other page zero and the others random (`progs/halfrand.c`).
//!
//! Each round starts the program afresh for each tool and measures, as a user would see it from
//! the command line:
//! - **dump**: `zap checkpoint --pid PID` (into a new, empty store, made with `zap store init`
//!   before the timing starts) and `criu dump -t PID` (into a new, empty directory): the process
//!   is stopped until the checkpoint is durable, then killed;
//! - **restore**: `zap restore ID` and `criu restore -d`, until the process runs with all of its
//!   memory in place;
//! - **stored size**: the store's pack files and CRIU's image directory;
//!
//! - **touch all pages**: the restored copy reads one word of every page in a scattered order
//!   (SIGWINCH; it reports the time itself). With `--lazy` it does so at once, while its pages
//!   stream in (every first touch of a page not in yet waits for the pager), and again once the
//!   pager has loaded everything: the program's slowdown while loading. The bench also reports
//!   how long after the restore command every page was in.
//!
//! and then has the restored copy check every page itself (SIGUSR1; it writes `.ok` or `.bad`).
//! Prints each round, the medians and the ratios Zap/CRIU. CRIU is the binary named by `CRIU`
//! (default: `criu` on the `PATH`); without one the bench says "CRIU not found" and measures Zap
//! alone. Zap is the `zap` built next to this binary (or `ZAP`).
//!
//! With `--incremental` it measures instead incremental pod checkpoints of the same program: a
//! pod running it is checkpointed with `--leave-running` (full: its memory copied while it runs,
//! arms the dirty-page tracker),
//! then `--rounds` times the program writes to 1% of its pages (SIGUSR2) and the pod is
//! checkpointed again; last, a `--full` checkpoint after the same 1% for comparison. It prints
//! each checkpoint's freeze, total time (engine and command line) and manifest bytes written.
//!
//! Run: `CRIU=/path/to/criu cargo run --release -p zap-benches --bin criu-bench [-- --size-mib N]
//! [--rounds 5] [--dir DIR]` (after `cargo build --release --workspace`, which builds `zap` and
//! `zap-init`).
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use zap_benches::machine;

struct Opts {
    size_mib: usize,
    rounds: usize,
    dir: String,
    lazy: bool,
    incremental: bool,
}

fn parse() -> Opts {
    let mut o = Opts { size_mib: 1024, rounds: 5, dir: "/var/tmp".into(), lazy: false, incremental: false };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--size-mib" => o.size_mib = it.next().and_then(|v| v.parse().ok()).expect("--size-mib N"),
            "--rounds" => o.rounds = it.next().and_then(|v| v.parse().ok()).expect("--rounds N"),
            "--dir" => o.dir = it.next().expect("--dir DIR"),
            "--lazy" => o.lazy = true,
            "--incremental" => o.incremental = true,
            "--bench" => {}
            other => zap_benches::help_or_bad_argument(
                "criu-bench",
                other,
                "[--size-mib N] [--rounds N] [--dir DIR] [--lazy | --incremental]  (CRIU=/path/to/criu to compare)",
            ),
        }
    }
    o
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

/// A program started for one measurement; killed and reaped on drop if still there.
struct Prog {
    child: Child,
    ready: PathBuf,
}

impl Prog {
    fn start(bin: &Path, size_mib: usize, ready: PathBuf) -> Prog {
        let mut cmd = Command::new(bin);
        cmd.arg(size_mib.to_string()).arg(&ready).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        // Its own session (CRIU dumps a session leader without --shell-job) and only fds 0-2
        // (shells here may leak stray fds).
        // SAFETY: setsid and close_range are async-signal-safe and only touch the child before exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                Ok(())
            })
        };
        let child = cmd.spawn().expect("spawn the test program");
        let t = Instant::now();
        while !ready.exists() {
            assert!(t.elapsed() < Duration::from_secs(120), "test program did not get ready");
            std::thread::sleep(Duration::from_millis(5));
        }
        Prog { child, ready }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Prog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (user + system, ms) of the children this bench has waited for so far.
fn children_cpu_ms() -> f64 {
    // SAFETY: getrusage(2) fills the zeroed struct it is given, which lives on this frame.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru
    };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(ru.ru_utime) + ms(ru.ru_stime)
}

/// Runs a command, returns its output, the wall time and the CPU time it used (its own and that
/// of the children it waited for), in ms; panics with its stderr on failure.
fn timed(cmd: &mut Command, what: &str) -> (Output, f64, f64) {
    let cpu0 = children_cpu_ms();
    let t = Instant::now();
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let cpu = children_cpu_ms() - cpu0;
    assert!(out.status.success(), "{what} failed: {}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    (out, ms, cpu)
}

/// The time zap's store spent waiting for the disk in a commit, in ms, from its debug log (the
/// `commit` steps): fsync of the packs and of their directory, and the synced index batch.
/// What the dump would take without durability is the dump less this; no option of zap skips it.
fn sync_wait_ms(stderr: &[u8]) -> Option<f64> {
    let text = String::from_utf8_lossy(stderr);
    let step = |name: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.contains("commit") && l.contains(&format!("step=\"{name}\"")))?;
        line.split("ms=").nth(1)?.split_whitespace().next()?.parse().ok()
    };
    Some(step("packs closed")? - step("chunks checked")? + step("batch committed")? - step("batch built")?)
}

/// Has the process `pid` check its memory (SIGUSR1) and waits for its verdict next to `ready`.
fn check_restored(pid: i32, ready: &Path, tool: &str) {
    let ok = PathBuf::from(format!("{}.ok", ready.display()));
    let bad = PathBuf::from(format!("{}.bad", ready.display()));
    let _ = std::fs::remove_file(&ok);
    let _ = std::fs::remove_file(&bad);
    let t = Instant::now();
    let mut sent = 0;
    loop {
        if t.elapsed() >= Duration::from_secs(10 * sent) {
            // SAFETY: kill(2) with a pid we were given by the restoring tool.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0, "{tool}: restored pid {pid} is gone");
            sent += 1;
        }
        if ok.exists() {
            return;
        }
        if bad.exists() {
            panic!("{tool}: restored memory differs from the original");
        }
        assert!(t.elapsed() < Duration::from_secs(120), "{tool}: restored process did not check its memory");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn kill_pid(pid: i32) {
    // SAFETY: kill(2) of a process this bench restored.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let md = match e.metadata() {
            Ok(m) => m,
            Err(_) => continue,
        };
        n += if md.is_dir() { dir_bytes(&e.path()) } else { md.len() };
    }
    n
}

fn json_field(out: &[u8], key: &str) -> Option<String> {
    // The first JSON value the command printed (anything after it is ignored).
    let v: serde_json::Value = serde_json::Deserializer::from_slice(out).into_iter().next()?.ok()?;
    match v.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn find_criu() -> Option<PathBuf> {
    match std::env::var_os("CRIU") {
        Some(p) => Some(PathBuf::from(p)).filter(|p| p.is_file()),
        None => std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("criu")).find(|p| p.is_file())),
    }
}

#[derive(Default)]
struct Figures {
    dump: Vec<f64>,
    restore: Vec<f64>,
    stored: Vec<f64>,
    /// Zap's own figures (engine), for the table of stages.
    inner_dump: Vec<f64>,
    inner_restore: Vec<f64>,
    /// CPU time of the commands (user + system).
    dump_cpu: Vec<f64>,
    restore_cpu: Vec<f64>,
    /// The dump less the time spent waiting for the disk to make it durable.
    dump_unsynced: Vec<f64>,
    /// Reading every page in a scattered order right after a lazy restore, while the pages
    /// stream in (ms).
    touch_loading: Vec<f64>,
    /// The same with every page in place (after an eager restore, or once the pager is done).
    touch_after: Vec<f64>,
    /// From the lazy restore command's return until its pager had loaded every page (ms).
    loaded: Vec<f64>,
}

/// Has the process `pid` read every page of its memory in a scattered order (SIGWINCH) and
/// returns how long that took it (ms), as it reports next to `ready`.
fn touch_all(pid: i32, ready: &Path, tool: &str) -> f64 {
    let out = PathBuf::from(format!("{}.touch", ready.display()));
    let _ = std::fs::remove_file(&out);
    // SAFETY: kill(2) with a pid we were given by the restoring tool.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGWINCH) }, 0, "{tool}: restored pid {pid} is gone");
    let t = Instant::now();
    loop {
        if let Some(us) = std::fs::read_to_string(&out).ok().and_then(|s| s.trim().parse::<f64>().ok()) {
            return us / 1e3;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "{tool}: restored process did not touch its memory");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits (at most 120 s) until process `pid` (not our child: a lazy restore's pager) is gone.
fn wait_gone(pid: i32, what: &str) {
    let t = Instant::now();
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    while unsafe { libc::kill(pid, 0) } == 0 {
        assert!(t.elapsed() < Duration::from_secs(120), "{what} (pid {pid}) did not finish");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn zap_round(zap: &Path, prog: &Path, o: &Opts, tmp: &Path, round: usize, f: &mut Figures) {
    let store = tmp.join(format!("zap-store-{round}"));
    // An empty store, made before the dump is timed, as CRIU's image directory is: making one
    // (RocksDB creating its column families, a dozen syncs) is a one-off of `zap store init`,
    // not part of a checkpoint.
    let init = Command::new(zap).arg("--store").arg(&store).args(["store", "init"]).stdin(Stdio::null()).output().expect("run zap store init");
    assert!(init.status.success(), "zap store init failed: {}", String::from_utf8_lossy(&init.stderr));
    let p = Prog::start(prog, o.size_mib, tmp.join(format!("zap-ready-{round}")));
    let (out, ms, cpu) = timed(
        Command::new(zap)
            .env("RUST_LOG", "zap_store::local=debug")
            .arg("--store")
            .arg(&store)
            .args(["--json", "checkpoint", "--pid"])
            .arg(p.pid().to_string()),
        "zap checkpoint",
    );
    let sync = sync_wait_ms(&out.stderr).unwrap_or(f64::NAN);
    let id = json_field(&out.stdout, "id").expect("checkpoint id");
    let inner: f64 = json_field(&out.stdout, "total_ms").and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
    let ready = p.ready.clone();
    drop(p); // killed by the checkpoint already; reaped here
    let stored = dir_bytes(&store.join("packs")) as f64;
    let mut args = vec!["--json", "restore", &id];
    if o.lazy {
        args.push("--lazy");
    }
    let (out, rms, rcpu) = timed(Command::new(zap).arg("--store").arg(&store).args(&args), "zap restore");
    let pid: i32 = json_field(&out.stdout, "pid").and_then(|v| v.parse().ok()).expect("restored pid");
    let init: i32 = json_field(&out.stdout, "init_pid").and_then(|v| v.parse().ok()).unwrap_or(0);
    let inner_r: f64 = json_field(&out.stdout, "restore_ms").and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
    let returned = Instant::now();
    let touch = if o.lazy {
        let loading = touch_all(pid, &ready, "zap");
        let pager: i32 = json_field(&out.stdout, "pager_pid").and_then(|v| v.parse().ok()).expect("pager pid");
        wait_gone(pager, "the lazy restore's pager");
        let loaded = returned.elapsed().as_secs_f64() * 1e3;
        let after = touch_all(pid, &ready, "zap");
        f.touch_loading.push(loading);
        f.loaded.push(loaded);
        f.touch_after.push(after);
        format!(", touch all pages {loading:.0} ms while loading (all in {loaded:.0} ms after the restore), {after:.0} ms after")
    } else {
        let after = touch_all(pid, &ready, "zap");
        f.touch_after.push(after);
        format!(", touch all pages {after:.0} ms")
    };
    check_restored(pid, &ready, "zap");
    kill_pid(pid);
    if init > 0 {
        kill_pid(init);
    }
    let _ = std::fs::remove_dir_all(&store);
    println!(
        "  zap  round {round}: dump {ms:7.0} ms (engine {inner:.0}, CPU {cpu:.0}, disk sync wait {sync:.0}), restore {rms:6.0} ms (engine {inner_r:.0}, CPU {rcpu:.0}){touch}, stored {:.3} GiB, memory checked",
        stored / (1u64 << 30) as f64
    );
    f.dump.push(ms);
    f.restore.push(rms);
    f.dump_cpu.push(cpu);
    f.restore_cpu.push(rcpu);
    f.dump_unsynced.push(ms - sync);
    f.stored.push(stored);
    f.inner_dump.push(inner);
    f.inner_restore.push(inner_r);
}

fn criu_round(criu: &Path, prog: &Path, o: &Opts, tmp: &Path, round: usize, f: &mut Figures) {
    let dir = tmp.join(format!("criu-img-{round}"));
    std::fs::create_dir_all(&dir).expect("image dir");
    let mut p = Prog::start(prog, o.size_mib, tmp.join(format!("criu-ready-{round}")));
    let pid = p.pid();
    let (_, ms, cpu) = timed(
        Command::new(criu).args(["dump", "-t", &pid.to_string(), "-D"]).arg(&dir).args(["-o", "dump.log", "-v2"]),
        "criu dump",
    );
    let _ = p.child.wait(); // CRIU killed it; its pid must be free for the restore
    let stored = (dir_bytes(&dir) - std::fs::metadata(dir.join("dump.log")).map(|m| m.len()).unwrap_or(0)) as f64;
    let pidfile = dir.join("restored.pid");
    let (_, rms, rcpu) = timed(
        Command::new(criu).args(["restore", "-d", "-D"]).arg(&dir).args(["-o", "restore.log", "-v2", "--pidfile"]).arg(&pidfile),
        "criu restore",
    );
    let rpid: i32 = std::fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(pid);
    let touch = touch_all(rpid, &p.ready, "criu");
    f.touch_after.push(touch);
    check_restored(rpid, &p.ready, "criu");
    kill_pid(rpid);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "  criu round {round}: dump {ms:7.0} ms (CPU {cpu:.0}), restore {rms:6.0} ms (CPU {rcpu:.0}), touch all pages {touch:.0} ms, stored {:.3} GiB, memory checked",
        stored / (1u64 << 30) as f64
    );
    f.dump.push(ms);
    f.restore.push(rms);
    f.dump_cpu.push(cpu);
    f.restore_cpu.push(rcpu);
    f.dump_unsynced.push(ms); // CRIU does not sync its images
    f.stored.push(stored);
}

fn wait_path(p: &Path, what: &str) {
    let t = Instant::now();
    while !p.exists() {
        assert!(t.elapsed() < Duration::from_secs(120), "{what}: {} did not appear", p.display());
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The host pid of the process whose command line names `marker`.
fn pid_with_arg(marker: &str) -> i32 {
    let t = Instant::now();
    loop {
        for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmd.split(|&b| b == 0).any(|a| a == marker.as_bytes()) {
                return pid;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(30), "no process runs with {marker}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Removes the bench's pod even when it panics.
struct PodGuard<'a>(&'a Path, &'a Path, String);
impl Drop for PodGuard<'_> {
    fn drop(&mut self) {
        let _ = Command::new(self.0).env("ZAP_RUN_DIR", self.1).args(["rm", "-f", &self.2]).stdin(Stdio::null()).output();
    }
}

fn incremental(zap: &Path, prog: &Path, o: &Opts, tmp: &Path) {
    let run = tmp.join("run");
    let store = tmp.join("inc-store");
    let name = format!("zcb{}", std::process::id());
    let ready = tmp.join("inc-ready");
    let _guard = PodGuard(zap, &run, name.clone());
    timed(
        Command::new(zap).env("ZAP_RUN_DIR", &run).args(["run", "--name", &name, "--"]).arg(prog).arg(o.size_mib.to_string()).arg(&ready),
        "zap run",
    );
    wait_path(&ready, "pod program");
    let pid = pid_with_arg(&ready.display().to_string());
    let ck = |extra: &[&str]| {
        let (out, wall, _) = timed(
            Command::new(zap).env("ZAP_RUN_DIR", &run).arg("--store").arg(&store).args(["--json", "checkpoint", &name, "--leave-running"]).args(extra),
            "zap checkpoint",
        );
        let f = |k: &str| json_field(&out.stdout, k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
        (f("frozen_ms"), f("total_ms"), wall, f("manifest_bytes"), json_field(&out.stdout, "mode").unwrap_or_default())
    };
    println!("incremental pod checkpoints of {} MiB (every other page zero, the others random), 1% of pages written per round:", o.size_mib);
    let show = |what: &str, c: &(f64, f64, f64, f64, String)| {
        println!("  {what}: frozen {:6.1} ms, total {:7.1} ms (command {:7.1} ms), manifest written {:8.1} KiB  [{}]", c.0, c.1, c.2, c.3 / 1024.0, c.4)
    };
    show("full (arms the tracker)", &ck(&[]));
    let (mut frozen, mut total, mut wall, mut meta) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 1..=o.rounds {
        // SAFETY: kill(2) of the bench's own program, in its pod.
        unsafe { libc::kill(pid, libc::SIGUSR2) };
        wait_path(&PathBuf::from(format!("{}.{round}", ready.display())), "dirtying round");
        let c = ck(&[]);
        show(&format!("incremental {round}"), &c);
        frozen.push(c.0);
        total.push(c.1);
        wall.push(c.2);
        meta.push(c.3);
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGUSR2) };
    wait_path(&PathBuf::from(format!("{}.{}", ready.display(), o.rounds + 1)), "dirtying round");
    let full = ck(&["--full"]);
    show("full (--full) after 1% more", &full);
    println!(
        "medians of {} incrementals: frozen {:.1} ms, total {:.1} ms ({:.1}% of the full one's {:.0} ms), command {:.1} ms, manifest written {:.1} KiB",
        o.rounds,
        median(&frozen),
        median(&total),
        100.0 * median(&total) / full.1,
        full.1,
        median(&wall),
        median(&meta) / 1024.0
    );
}

fn main() {
    let o = parse();
    let exe_dir = std::env::current_exe().expect("own path").parent().expect("dir").to_path_buf();
    let zap = std::env::var_os("ZAP").map(PathBuf::from).unwrap_or_else(|| exe_dir.join("zap"));
    assert!(zap.is_file(), "zap not found at {} (cargo build --release --workspace, or ZAP=)", zap.display());
    let tmp = tempfile::Builder::new().prefix("zap-criu-bench-").tempdir_in(&o.dir).expect("temp dir");
    let prog = tmp.path().join("halfrand");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("progs/halfrand.c");
    assert!(Command::new("gcc").args(["-O2", "-o"]).arg(&prog).arg(&src).status().expect("gcc").success());
    println!("# criu-bench: {} MiB process (every other page zero, the others random), {} rounds, in {}", o.size_mib, o.rounds, o.dir);
    println!("# machine: {}", machine());
    if o.incremental {
        incremental(&zap, &prog, &o, tmp.path());
        return;
    }
    let criu = find_criu();
    match &criu {
        Some(c) => {
            let v = Command::new(c).arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).replace('\n', " ")).unwrap_or_default();
            println!("# CRIU: {} ({})", c.display(), v.trim());
        }
        None => println!("# CRIU not found (set CRIU=/path/to/criu): measuring Zap alone"),
    }
    println!("# zap: {}{}", zap.display(), if o.lazy { " (restore --lazy)" } else { "" });
    let (mut z, mut c) = (Figures::default(), Figures::default());
    for round in 1..=o.rounds {
        zap_round(&zap, &prog, &o, tmp.path(), round, &mut z);
        if let Some(criu) = &criu {
            criu_round(criu, &prog, &o, tmp.path(), round, &mut c);
        }
    }
    let gib = (1u64 << 30) as f64;
    println!("\nmedians of {} rounds:", o.rounds);
    println!("| measure | Zap | CRIU | Zap / CRIU |");
    println!("|---|---|---|---|");
    let row = |name: &str, zv: f64, cv: Option<f64>, unit: &str, scale: f64| match cv {
        Some(cv) => println!("| {name} | {:.2} {unit} | {:.2} {unit} | {:.2} |", zv / scale, cv / scale, zv / cv),
        None => println!("| {name} | {:.2} {unit} | CRIU not found | - |", zv / scale),
    };
    let cm = |v: &[f64]| criu.as_ref().map(|_| median(v));
    row("dump (stopped until durable, then killed)", median(&z.dump), cm(&c.dump), "s", 1e3);
    row(if o.lazy { "restore --lazy (until it runs)" } else { "restore (until it runs, all memory in place)" }, median(&z.restore), cm(&c.restore), "s", 1e3);
    row("stored size", median(&z.stored), cm(&c.stored), "GiB", gib);
    if o.lazy {
        let (loading, after) = (median(&z.touch_loading), median(&z.touch_after));
        println!(
            "| read every page, scattered, right after the restore (while loading) | {:.2} s ({:.1}x its time once all is in) | - | - |",
            loading / 1e3,
            loading / after
        );
        println!("| every page in, after the restore command returned | {:.2} s | - | - |", median(&z.loaded) / 1e3);
    }
    row("read every page, scattered, all of it in place", median(&z.touch_after), cm(&c.touch_after), "s", 1e3);
    row("dump, less the wait for the disk sync (CRIU does not sync)", median(&z.dump_unsynced), cm(&c.dump_unsynced), "s", 1e3);
    row("dump CPU time (user + system)", median(&z.dump_cpu), cm(&c.dump_cpu), "s", 1e3);
    // `criu restore -d` does most of its work in the restored process itself (its restorer
    // blob), which this bench does not wait for: CRIU's restore CPU time is not seen here.
    println!("| restore CPU time (user + system) | {:.2} s | not seen (CRIU's restorer runs in the restored process) | - |", median(&z.restore_cpu) / 1e3);
    println!(
        "zap engine alone (without process start and store open): dump {:.0} ms, restore {:.0} ms",
        median(&z.inner_dump),
        median(&z.inner_restore)
    );
}
