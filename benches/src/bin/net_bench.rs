//! Established TCP connections: how long a pod's network is locked around a checkpoint and a
//! restore, and what its connections add to the time the pod is stopped.
//!
//! A pod with an address runs a python3 server that accepts N connections from this process and
//! keeps them; on each, 1 KiB waits unread in each direction. For N = 0, 1, 100 and 1,000:
//! - the network lock alone (nft table in the pod's namespace): take and release;
//! - a checkpoint with `--leave-running`: how long the pod is stopped (its network is locked
//!   for that time plus the lock's own cost);
//! - a checkpoint that ends the pod followed by its restore: the lock is held from the stop
//!   until the restored pod is released (checkpoint stopped time + restore until the network
//!   opens); the connections are then checked (one round trip on each).
//!
//! Each row also gives the CPU time Zap used (all its threads) for each checkpoint and the
//! restore: on a loaded machine it varies much less than the times.
//!
//! Run: `cargo run --release -p zap-benches --bin net-bench [-- --dir DIR] [--counts 0,1000]
//! [--rounds R]` (as root; needs `zap-init` built next to this binary and python3). `--counts`
//! chooses the numbers of connections (default 0,1,100,1000), `--rounds` repeats each that many
//! times (default 1), one table row per round.
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use zap_benches::{machine, Args};
use zap_engine::pod::checkpoint::{self as podck, PodCheckpointOptions, PodRestoreOptions};
use zap_engine::pod::netlock::NetLock;
use zap_engine::pod::{self, Launch, PodSpec};
use zap_store::{LocalStore, StoreOptions};

const SERVER: &str = r#"
import resource, socket, sys
n = int(sys.argv[1])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 7400))
s.listen(4096)
conns = []
for i in range(n):
    c, _ = s.accept()
    c.sendall(b'x' * 1024)
    conns.append(c)
open(sys.argv[2], 'w').write('ready')
while True:
    for c in conns:
        pass
    import time
    time.sleep(3600)
"#;

fn main() {
    let (args, counts, rounds) = parse_args();
    // RUST_LOG=zap_engine=debug shows the steps of each checkpoint and restore.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_writer(std::io::stderr).init();
    }
    println!("{}", machine());
    let tmp = tempfile::tempdir_in(&args.dir).expect("temp dir");
    let run = tmp.path().join("run");
    let init = std::env::current_exe().expect("exe").with_file_name("zap-init");
    assert!(init.exists(), "build zap-init first: cargo build --release --workspace");
    // Pod names carry the whole pid (their cgroups and veths are host-wide); each N gets an
    // address of its own, so the host's neighbour cache, still holding the MAC of the previous
    // pod (restored just before), cannot send the new pod's segments to the old MAC.
    let tag = std::process::id() % 100 + 100;
    println!(
        "| connections | lock + unlock (nft) | stopped, --leave-running | stopped until committed (pod ended) | restore: network locked | restore: until the pod runs | connections back | Zap's CPU: checkpoint --leave-running / checkpoint / restore |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let runs = counts.iter().flat_map(|&n| std::iter::repeat_n(n, rounds));
    for (i, n) in runs.enumerate() {
        let name = format!("nb{}-{n}-{i}", std::process::id());
        let host = 2 + i % 250;
        let ip = format!("10.93.{tag}.{host}/24");
        let ready = tmp.path().join(format!("ready-{n}"));
        let spec = PodSpec {
            name: name.clone(),
            hostname: None,
            ip: Some(ip.clone()),
            mac: None,
            memory_limit: None,
            cpus: None,
            launch: Launch::Command {
                argv: vec!["python3".into(), "-c".into(), SERVER.into(), n.to_string(), ready.display().to_string()],
                env: std::env::vars().collect(),
                cwd: "/".into(),
            },
            init_exe: init.clone(),
        };
        let state = pod::create(&run, &spec).expect("create pod");
        // Removes the pod on every way out of this round, a panic included.
        let _pod = Cleanup { run: &run, name: &name };
        let addr = format!("10.93.{tag}.{host}:7400");
        let mut conns = Vec::new();
        let t = Instant::now();
        while conns.len() < n {
            match TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)) {
                Ok(c) => {
                    let mut c = above_select_limit(c);
                    c.write_all(&[b'y'; 1024]).expect("send");
                    conns.push(c);
                }
                Err(_) if conns.is_empty() && t.elapsed() < Duration::from_secs(10) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => panic!("connect: {e}"),
            }
        }
        let t = Instant::now();
        while !ready.exists() {
            assert!(t.elapsed() < Duration::from_secs(30), "server not ready");
            std::thread::sleep(Duration::from_millis(10));
        }
        // The lock alone.
        let tl = Instant::now();
        NetLock::namespace(&name, state.init_pid).expect("lock").unlock().expect("unlock");
        let lock_ms = tl.elapsed().as_secs_f64() * 1e3;
        let store_dir = tmp.path().join(format!("store-{n}"));
        let store = LocalStore::open(&store_dir, StoreOptions { create: true, ..StoreOptions::default() }).expect("store");
        let opts = PodCheckpointOptions { leave_running: true, ..Default::default() };
        let c0 = cpu_ms();
        let r1 = podck::checkpoint(&store, &run, &name, &opts).expect("checkpoint --leave-running");
        let c1 = cpu_ms();
        let opts = PodCheckpointOptions { leave_running: false, ..Default::default() };
        let r2 = podck::checkpoint(&store, &run, &name, &opts).expect("checkpoint");
        let c2 = cpu_ms();
        let ropts = PodRestoreOptions { init_exe: init.clone(), ..Default::default() };
        let restored = podck::restore(&store, &run, &r2.summary.id, &ropts).expect("restore");
        let c3 = cpu_ms();
        let back = established(restored.group.init_pid);
        assert_eq!(back, n, "every connection is back");
        println!(
            "| {n} | {lock_ms:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {back} | {:.0} / {:.0} / {:.0} ms |",
            r1.frozen_ms,
            r2.frozen_ms,
            restored.network_locked_ms,
            restored.group.restore_ms,
            c1 - c0,
            c2 - c1,
            c3 - c2,
        );
        drop(conns);
    }
}

/// `c` moved to an fd number of 4096 or more (its lower number freed), when the fd limit allows:
/// libnftables, which locks the pods' network in this process, waits on its netlink socket with
/// `select`, which aborts the process for an fd of 1024 or more, and this bench's own 1,000
/// connections (every round's) must not push the lock's socket there.
fn above_select_limit(c: TcpStream) -> TcpStream {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a valid fd returns a new fd (or -1).
    let fd = unsafe { libc::fcntl(c.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 4096) };
    if fd < 0 {
        return c;
    }
    drop(c);
    // SAFETY: fd was just returned by fcntl and nothing else owns it.
    unsafe { TcpStream::from_raw_fd(fd) }
}

/// CPU time this process (every thread of Zap's, living or ended) has used so far, in ms: what
/// a checkpoint or restore costs, which the load of a shared machine stretches less than the
/// time it takes.
fn cpu_ms() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime(2) writes one timespec into `ts`, which lives on this frame.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

/// The common arguments (`--dir`), and this bench's own: `--counts N,N,...` and `--rounds R`.
fn parse_args() -> (Args, Vec<usize>, usize) {
    let mut args = Args { size_mib: 0, dir: "/var/tmp".into() };
    let (mut counts, mut rounds) = (vec![0usize, 1, 100, 1000], 1usize);
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--dir" => args.dir = it.next().expect("--dir DIR"),
            "--counts" => {
                counts = it.next().expect("--counts N,N,...").split(',').map(|v| v.trim().parse().expect("--counts: numbers")).collect()
            }
            "--rounds" => rounds = it.next().and_then(|v| v.parse().ok()).filter(|&r| r > 0).expect("--rounds R (R >= 1)"),
            "--bench" => {}
            other => zap_benches::help_or_bad_argument("net-bench", other, "[--dir DIR] [--counts 0,1,100,1000] [--rounds 1]"),
        }
    }
    (args, counts, rounds)
}

/// Removes pod `name` of run directory `run` when dropped.
struct Cleanup<'a> {
    run: &'a std::path::Path,
    name: &'a str,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if let Err(e) = pod::rm(self.run, self.name, true) {
            eprintln!("net-bench: could not remove pod {}: {e}", self.name);
        }
    }
}

/// Established TCP connections in the network namespace of `pid` (from its /proc/net/tcp).
fn established(pid: i32) -> usize {
    let t = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    t.lines().skip(1).filter(|l| l.split_whitespace().nth(3) == Some("01")).count()
}
