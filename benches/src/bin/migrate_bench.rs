//! Live migration: what moving a running pod between two hosts costs, and how long its address
//! does not answer.
//!
//! The bench builds its own hosts topology (`scripts/hosts.sh`, prefix `zbXXXXX` and a LAN
//! subnet of its own, both from its pid) with hosts a and b and a client namespace. For each pod
//! size (256 MiB and 1 GiB; 4 GiB with `--big`) and each write rate (idle; 1% of the pages a
//! second) it runs `progs/migwriter.c` in a pod on a (every page resident, in runs of 16 pages
//! either zero or random, about half each; it rewrites its pages at the rate, keeping that
//! make-up, and accepts TCP connections on port 7000; its random pages are seeded per run, so no
//! run finds its content in the migration cache of an earlier one), migrates it a → b (`--via`, the pipe of
//! `hosts.sh exec`) and back b → a. Per migration it prints the total time, rounds, bytes on the
//! wire against the pod's memory, downtime (from `zap migrate --json`) with the final round's parts (source stop, save, send; destination restore; commit), and the longest time the
//! pod's address did not answer: four threads in the client namespace each try a TCP connect
//! (20 ms timeout) every 20 ms, staggered by 5 ms, from the start of the migration until 1 s
//! after it returned; the longest gap between two answered connects is the figure. The move
//! back shows what the migration cache saves (its bytes against the first move's).
//!
//! Then one run of the 1 GiB pod at 1%/s over `tcp://` on the LAN (`zap receive --listen` on b)
//! with the link to b limited to 1 Gbit/s: `tc` tbf on b's LAN bridge port (`u-b`, in the
//! bench's LAN namespace).
//!
//! Each migration has a timeout (60 s + 0.1 s per MiB); a migration that fails or times out is
//! reported as such and the bench goes on with the next case. The bench runs its work in a child
//! process of its own process group; the parent tears the topology down (`hosts.sh down`, which
//! removes the hosts' pods) when the child ends, fails or on Ctrl-C / SIGTERM (it then kills the
//! child's process group, which holds only processes the bench started), and removes its files.
//!
//! Run: `cargo run --release -p zap-benches --bin migrate-bench [-- --big] [--no-tc] [--sizes MIB,...]`
//! (`MIGBENCH_LOGS=DIR` keeps each migration's log there; with `RUST_LOG=zap_engine=debug` it shows
//! the final round's steps with their times on both ends)
//! (`--sizes` replaces the default sizes; `--rates PERMILLE,...` the write rates, in 1/1000 of
//! the pages a second: `--rates 10` runs only the 1%/s cases; the 1 Gbit/s run stays at 1 GiB
//! unless `--no-tc`)
//! (as root; needs `zap` built next to this binary: `cargo build --release --workspace`, and gcc).
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, SigSet, Signal};
use nix::unistd::Pid;
use zap_benches::machine;

const PORT: u16 = 7000;

/// The topology's names and places, chosen by the parent and handed to the worker.
#[derive(Clone)]
struct Topo {
    prefix: String,
    net: String,
    base: PathBuf,
    zap: PathBuf,
}

impl Topo {
    fn new() -> Topo {
        let pid = std::process::id();
        let exe = std::env::current_exe().expect("own path");
        Topo {
            prefix: format!("zb{:05x}", pid % 0xfffff),
            net: format!("10.{}.{}", 230 + pid % 20, (pid / 20) % 250 + 1),
            base: PathBuf::from(format!("/var/tmp/zap-migbench-{pid}")),
            zap: exe.parent().expect("bin dir").join("zap"),
        }
    }

    fn from_env() -> Topo {
        let v = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("worker: {k} not set"));
        Topo { prefix: v("ZAP_HOSTS_PREFIX"), net: v("ZAP_HOSTS_NET"), base: PathBuf::from(v("MIGBENCH_BASE")), zap: PathBuf::from(v("ZAP")) }
    }

    fn hosts_dir(&self) -> PathBuf {
        self.base.join("hosts")
    }

    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/hosts.sh")
    }

    fn env(&self, c: &mut Command) {
        c.env("ZAP_HOSTS_PREFIX", &self.prefix)
            .env("ZAP_HOSTS_NET", &self.net)
            .env("ZAP_HOSTS_DIR", self.hosts_dir())
            .env("ZAP_HOSTS", "a b")
            .env("ZAP", &self.zap)
            .env("MIGBENCH_BASE", &self.base);
    }

    fn script_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("bash");
        c.arg(Self::script()).args(args);
        self.env(&mut c);
        c
    }

    /// `hosts.sh exec H -- ARGS`, which must succeed; its stdout.
    fn exec(&self, h: &str, args: &[&str]) -> Result<String, String> {
        let mut a = vec!["exec", h, "--"];
        a.extend_from_slice(args);
        let out = self.script_cmd(&a).stdin(Stdio::null()).output().map_err(|e| format!("hosts.sh exec {h}: {e}"))?;
        if !out.status.success() {
            return Err(format!("on {h}: {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn zap(&self, h: &str, args: &[&str]) -> Result<String, String> {
        let zap = self.zap.to_string_lossy().into_owned();
        let mut a = vec![zap.as_str()];
        a.extend_from_slice(args);
        self.exec(h, &a)
    }

    /// The `hosts.sh exec` line reaching host `h` (for `--via`).
    fn exec_line(&self, h: &str, args: &str) -> String {
        format!(
            "ZAP_HOSTS_PREFIX={} ZAP_HOSTS_NET={} ZAP_HOSTS_DIR={} ZAP_HOSTS='a b' bash {} exec {h} -- {args}",
            self.prefix,
            self.net,
            self.hosts_dir().display(),
            Self::script().display()
        )
    }

    fn host_ip(&self, h: &str) -> String {
        format!("{}.{}", self.net, if h == "a" { 11 } else { 12 })
    }

    /// Runs a command in the bench's LAN namespace.
    fn lan(&self, args: &[&str]) -> Result<(), String> {
        let ns = format!("--net=/run/netns/{}-lan", self.prefix);
        let out = Command::new("nsenter").arg(&ns).args(args).output().map_err(|e| format!("nsenter: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("in {}-lan: {args:?}: {}", self.prefix, String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    fn exists(&self) -> bool {
        Path::new(&format!("/run/netns/{}-lan", self.prefix)).exists()
    }

    fn down(&self) {
        if self.exists() || self.hosts_dir().exists() {
            match self.script_cmd(&["down"]).output() {
                Ok(o) if !o.status.success() => eprintln!("hosts.sh down: {}", String::from_utf8_lossy(&o.stderr).trim()),
                Err(e) => eprintln!("hosts.sh down: {e}"),
                _ => {}
            }
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--worker") {
        worker(&args[1..]);
        return;
    }
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--big" | "--no-tc" | "--bench" => {}
            "--sizes" => assert!(it.next().is_some_and(|v| v.split(',').all(|n| n.parse::<usize>().is_ok_and(|n| n > 0))), "--sizes MIB[,MIB...]"),
            "--rates" => assert!(it.next().is_some_and(|v| v.split(',').all(|n| n.parse::<u32>().is_ok_and(|n| n <= 1000))), "--rates PERMILLE[,PERMILLE...]"),
            other => zap_benches::help_or_bad_argument("migrate-bench", other, "[--big] [--no-tc] [--sizes MIB[,MIB...]] [--rates PERMILLE[,PERMILLE...]]"),
        }
    }
    assert!(nix::unistd::geteuid().is_root(), "migrate-bench needs root (namespaces, pods)");
    let topo = Topo::new();
    assert!(topo.zap.exists(), "{} not built: cargo build --release --workspace", topo.zap.display());
    // Signals go to a waiting thread (blocked here, before any thread starts); the worker
    // unblocks them for itself and its children.
    let mut sigs = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        sigs.add(s);
    }
    sigs.thread_block().expect("block signals");
    let worker_pid = Arc::new(AtomicI32::new(0));
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let (worker_pid, interrupted) = (worker_pid.clone(), interrupted.clone());
        std::thread::spawn(move || {
            if let Ok(s) = sigs.wait() {
                eprintln!("migrate-bench: {s}, stopping");
                interrupted.store(true, Ordering::SeqCst);
                let pid = worker_pid.load(Ordering::SeqCst);
                if pid > 0 {
                    // The worker leads a process group of its own: it and what it started.
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        });
    }
    std::fs::create_dir_all(&topo.base).expect("bench directory");
    let mut cmd = Command::new(std::env::current_exe().expect("own path"));
    cmd.arg("--worker").args(&args);
    topo.env(&mut cmd);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().expect("start the worker");
    worker_pid.store(child.id() as i32, Ordering::SeqCst);
    let status = child.wait().expect("wait for the worker");
    eprintln!("migrate-bench: tearing down topology {}", topo.prefix);
    topo.down();
    if interrupted.load(Ordering::SeqCst) {
        std::process::exit(130);
    }
    if !status.success() {
        eprintln!("migrate-bench: the run failed ({status})");
        std::process::exit(1);
    }
}

/// One migration's figures.
struct Fig {
    ok: Result<(), String>,
    total_ms: f64,
    rounds: usize,
    wire: u64,
    memory: u64,
    downtime_ms: f64,
    gap_ms: f64,
    converged: String,
    /// The final round's parts (source stop, save, send, destination restore, commit), ms.
    parts: [f64; 5],
}

fn worker(args: &[String]) {
    let mut sigs = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        sigs.add(s);
    }
    sigs.thread_unblock().expect("unblock signals");
    let big = args.iter().any(|a| a == "--big");
    let tc = !args.iter().any(|a| a == "--no-tc");
    let topo = Topo::from_env();
    println!("migrate-bench: {}", machine());
    println!("topology {} on LAN {}.0/24; hosts on one machine, links are veths (no rate limit unless stated)", topo.prefix, topo.net);
    let up = topo.script_cmd(&["up"]).output().expect("hosts.sh up");
    assert!(up.status.success(), "hosts.sh up: {}", String::from_utf8_lossy(&up.stderr));
    let work = topo.base.join("work");
    std::fs::create_dir_all(&work).expect("work directory");
    let prog = work.join("migwriter");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("progs/migwriter.c");
    let gcc = Command::new("gcc").args(["-O2", "-pthread", "-o"]).arg(&prog).arg(&src).status().expect("gcc");
    assert!(gcc.success(), "gcc {}", src.display());
    let ka = topo.zap("a", &["key", "gen"]).expect("key gen on a").trim().to_string();
    let kb = topo.zap("b", &["key", "gen"]).expect("key gen on b").trim().to_string();
    topo.zap("a", &["key", "allow", &kb, "--comment", "b"]).expect("key allow on a");
    topo.zap("b", &["key", "allow", &ka, "--comment", "a"]).expect("key allow on b");

    let mut sizes = vec![256usize, 1024];
    if big {
        sizes.push(4096);
    }
    if let Some(list) = args.iter().position(|a| a == "--sizes").and_then(|i| args.get(i + 1)) {
        sizes = list.split(',').filter_map(|n| n.parse().ok()).collect();
    }
    let mut rates = vec![0, 10];
    if let Some(list) = args.iter().position(|a| a == "--rates").and_then(|i| args.get(i + 1)) {
        rates = list.split(',').filter_map(|n| n.parse().ok()).collect();
    }
    let mut cases: Vec<(usize, u32, bool)> = Vec::new();
    for &s in &sizes {
        for &permille in &rates {
            cases.push((s, permille, false));
        }
    }
    if tc {
        cases.push((1024, 10, true));
    }
    println!();
    println!("| pod | writes | move | transport | total | rounds | on the wire | of memory | downtime (report) | final round: stop/save/send/restore/commit ms | address silent (longest gap) | result |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, (size, permille, limited)) in cases.into_iter().enumerate() {
        run_case(&topo, &prog, &work, size, permille, limited, 50 + i);
    }
}

fn run_case(topo: &Topo, prog: &Path, work: &Path, size: usize, permille: u32, limited: bool, host_octet: usize) {
    let name = format!("mb{size}w{permille}{}", if limited { "t" } else { "" });
    // An address per case: a pod a failed case left behind does not block the next.
    let ip = format!("{}.{host_octet}", topo.net);
    let ready = work.join(format!("{name}.ready"));
    let _ = std::fs::remove_file(&ready);
    let writes = if permille == 0 { "idle".to_string() } else { format!("{}%/s", permille as f64 / 10.0) };
    let label = format!("{size} MiB");
    // Content of its own per run: the hosts' migration caches hold the earlier runs' chunks.
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1) ^ u64::from(std::process::id());
    let run = topo.zap(
        "a",
        &["run", "--name", &name, "--ip", &format!("{ip}/24"), "--", &prog.to_string_lossy(), &size.to_string(), &permille.to_string(), &ready.to_string_lossy(), &PORT.to_string(), &seed.to_string()],
    );
    if let Err(e) = run {
        println!("| {label} | {writes} | — | — | — | — | — | — | — | — | pod did not start: {e} |");
        return;
    }
    let t = Instant::now();
    while !ready.exists() && t.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if !ready.exists() {
        println!("| {label} | {writes} | — | — | — | — | — | — | — | — | {name}: the workload did not get ready in 120 s |");
        let _ = topo.zap("a", &["rm", "-f", &name]);
        return;
    }
    // Let the writer run at its rate for a while before the move.
    std::thread::sleep(Duration::from_secs(2));
    if limited {
        if let Err(e) = topo.lan(&["tc", "qdisc", "add", "dev", "u-b", "root", "tbf", "rate", "1gbit", "burst", "1mb", "latency", "50ms"]) {
            println!("| {label} | {writes} | — | — | — | — | — | — | — | — | SKIP: tc tbf: {e} |");
            let _ = topo.zap("a", &["rm", "-f", &name]);
            return;
        }
    }
    let timeout = Duration::from_secs(60) + Duration::from_millis(100 * size as u64);
    let first = migrate(topo, "a", "b", &name, &ip, limited, timeout, work);
    print_fig(&label, &writes, "a → b", limited, &first, None);
    let mut home = if first.ok.is_ok() { "b" } else { "a" };
    if first.ok.is_ok() {
        let back = migrate(topo, "b", "a", &name, &ip, limited, timeout, work);
        print_fig(&label, &writes, "b → a (back)", limited, &back, Some(first.wire));
        if back.ok.is_ok() {
            home = "a";
        }
    }
    if limited {
        let _ = topo.lan(&["tc", "qdisc", "del", "dev", "u-b", "root"]);
    }
    // A migration that failed or was ended by its timeout may have left the pod on either host.
    let other = if home == "a" { "b" } else { "a" };
    if topo.zap(home, &["rm", "-f", &name]).is_err() && topo.zap(other, &["rm", "-f", &name]).is_err() {
        eprintln!("removing {name}: on neither host");
    }
    let _ = std::io::stdout().flush();
}

fn print_fig(label: &str, writes: &str, mv: &str, limited: bool, f: &Fig, first_wire: Option<u64>) {
    let transport = if limited { "tcp://, 1 Gbit/s tbf" } else { "--via pipe" };
    match &f.ok {
        Ok(()) => {
            let vs_first = first_wire.map(|w| format!("; {:.2}% of the first move's", 100.0 * f.wire as f64 / w.max(1) as f64)).unwrap_or_default();
            println!(
                "| {label} | {writes} | {mv} | {transport} | {:.2} s | {} | {:.1} MiB | {:.1}%{vs_first} | {:.0} ms | {:.0}/{:.0}/{:.0}/{:.0}/{:.0} | {:.0} ms | ok ({}) |",
                f.total_ms / 1e3,
                f.rounds,
                f.wire as f64 / 1048576.0,
                100.0 * f.wire as f64 / f.memory.max(1) as f64,
                f.downtime_ms,
                f.parts[0],
                f.parts[1],
                f.parts[2],
                f.parts[3],
                f.parts[4],
                f.gap_ms,
                f.converged
            );
        }
        Err(e) => println!("| {label} | {writes} | {mv} | {transport} | — | — | — | — | — | — | {:.0} ms | failed: {e} |", f.gap_ms),
    }
    let _ = std::io::stdout().flush();
}

/// Connects to `addr` from the client namespace every 5 ms (4 threads, each every 20 ms) until
/// `stop`; returns the times of answered connects.
fn pinger(topo: &Topo, addr: SocketAddr, stop: Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<Vec<Instant>>> {
    let ns = format!("/run/netns/{}-client", topo.prefix);
    (0..4u64)
        .map(|k| {
            let (ns, stop) = (ns.clone(), stop.clone());
            std::thread::spawn(move || {
                let f = std::fs::File::open(&ns).expect("client namespace");
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns into the client namespace");
                std::thread::sleep(Duration::from_millis(5 * k));
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if TcpStream::connect_timeout(&addr, Duration::from_millis(20)).is_ok() {
                        seen.push(Instant::now());
                    }
                    if let Some(rest) = Duration::from_millis(20).checked_sub(t.elapsed()) {
                        std::thread::sleep(rest);
                    }
                }
                seen
            })
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn migrate(topo: &Topo, src: &str, dst: &str, pod: &str, ip: &str, tcp: bool, timeout: Duration, work: &Path) -> Fig {
    let mut fig = Fig { ok: Ok(()), total_ms: 0.0, rounds: 0, wire: 0, memory: 0, downtime_ms: 0.0, gap_ms: 0.0, converged: String::new(), parts: [0.0; 5] };
    let key = match topo.zap(dst, &["key", "show"]) {
        Ok(k) => k.trim().to_string(),
        Err(e) => {
            fig.ok = Err(e);
            return fig;
        }
    };
    let zap = topo.zap.to_string_lossy().into_owned();
    // The destination's listener for tcp://, started before and ended after.
    let mut listener: Option<Child> = None;
    let dest_arg;
    let mut margs: Vec<String> = vec!["exec".into(), src.into(), "--".into(), zap.clone(), "migrate".into(), pod.into()];
    if tcp {
        let port = 7400 + (std::process::id() % 500) as u16;
        let listen = format!("{}:{port}", topo.host_ip(dst));
        let out = std::fs::File::create(work.join("receive.log")).expect("log file");
        let c = topo.script_cmd(&["exec", dst, "--", &zap, "receive", "--listen", &listen, "--once"]).stdin(Stdio::null()).stdout(out.try_clone().expect("log")).stderr(out).spawn();
        match c {
            Ok(c) => listener = Some(c),
            Err(e) => {
                fig.ok = Err(format!("zap receive on {dst}: {e}"));
                return fig;
            }
        }
        // Listening once `ss` shows the port (connecting would use up --once).
        let t = Instant::now();
        let filter = format!("sport = :{port}");
        while t.elapsed() < Duration::from_secs(10) {
            if topo.exec(dst, &["ss", "-Hltn", &filter]).is_ok_and(|s| !s.trim().is_empty()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        dest_arg = format!("tcp://{listen}");
        margs.push(dest_arg);
    } else {
        margs.push("--via".into());
        margs.push(topo.exec_line(dst, &format!("{zap} receive --stdio")));
    }
    margs.extend(["--peer-key".into(), key, "--json".into()]);
    let out_path = work.join(format!("{pod}-{src}{dst}.json"));
    let err_path = work.join(format!("{pod}-{src}{dst}.log"));
    let stop = Arc::new(AtomicBool::new(false));
    let addr: SocketAddr = format!("{ip}:{PORT}").parse().expect("address");
    let t0 = Instant::now();
    let pingers = pinger(topo, addr, stop.clone());
    let margs: Vec<&str> = margs.iter().map(String::as_str).collect();
    let spawned = topo
        .script_cmd(&margs)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("output file"))
        .stderr(std::fs::File::create(&err_path).expect("log file"))
        .spawn();
    let status = match spawned {
        Ok(mut c) => loop {
            if let Some(st) = c.try_wait().expect("wait for zap migrate") {
                break Ok(st);
            }
            if t0.elapsed() > timeout {
                // The migration is ours: end it by its pid (where the pod ends up depends on the
                // step it was at; the case's cleanup looks on both hosts).
                let _ = c.kill();
                let _ = c.wait();
                break Err(format!("timed out after {} s", timeout.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(10));
        },
        Err(e) => Err(format!("zap migrate: {e}")),
    };
    let t_end = Instant::now();
    // `MIGBENCH_LOGS=DIR` keeps each migration's log (both ends' stderr; with `RUST_LOG=zap_engine=debug`
    // the final round's steps and their times).
    if let Some(dir) = std::env::var_os("MIGBENCH_LOGS") {
        let _ = std::fs::copy(&err_path, Path::new(&dir).join(format!("{pod}-{src}{dst}-{}.log", std::process::id())));
    }
    // Keep pinging for a second after: the address must answer from its new host.
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    let mut seen: Vec<Instant> = pingers.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect();
    seen.sort();
    let end = t_end + Duration::from_secs(1);
    let mut prev = t0;
    let mut gap = Duration::ZERO;
    for &s in seen.iter().chain(std::iter::once(&end)) {
        gap = gap.max(s.saturating_duration_since(prev));
        prev = s;
    }
    fig.gap_ms = gap.as_secs_f64() * 1e3;
    if let Some(mut l) = listener {
        let t = Instant::now();
        while l.try_wait().ok().flatten().is_none() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if l.try_wait().ok().flatten().is_none() {
            let _ = l.kill();
            let _ = l.wait();
        }
    }
    let log = std::fs::read_to_string(&err_path).unwrap_or_default();
    match status {
        Err(e) => fig.ok = Err(e),
        Ok(st) if !st.success() => fig.ok = Err(format!("zap migrate {pod} {src} -> {dst}: {}", log.lines().last().unwrap_or("").trim())),
        Ok(_) => {
            let text = std::fs::read_to_string(&out_path).unwrap_or_default();
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(r) => {
                    fig.total_ms = r["total_ms"].as_f64().unwrap_or(0.0);
                    fig.rounds = r["rounds"].as_array().map(Vec::len).unwrap_or(0);
                    fig.wire = r["wire_bytes"].as_u64().unwrap_or(0);
                    fig.memory = r["memory_bytes"].as_u64().unwrap_or(0);
                    fig.downtime_ms = r["downtime_ms"].as_f64().unwrap_or(0.0);
                    fig.converged = r["converged"].as_str().unwrap_or("").to_string();
                    for (i, k) in ["final_stop_ms", "final_save_ms", "final_send_ms", "final_restore_ms", "commit_ms"].iter().enumerate() {
                        fig.parts[i] = r[*k].as_f64().unwrap_or(0.0);
                    }
                }
                Err(e) => fig.ok = Err(format!("report of zap migrate {pod} {src} -> {dst}: {e}: {text}")),
            }
        }
    }
    fig
}
