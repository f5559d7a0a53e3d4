//! The pod lifecycle on the real kernel (root): `zap run|ps|exec|stop|kill|rm`.
//!
//! Each test uses pod names containing the test process's pid and its own subnet, and removes
//! its pods even when it fails (`zap rm -f` in a guard). The test process makes itself a child
//! subreaper so the inits of its pods, orphaned when `zap run` exits, are reparented to it and
//! reaped by the guards (the host's PID 1 here reaps orphans slowly).
mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;
use std::time::{Duration, Instant};

use common::{host_mounts, wait_for};

use serde_json::Value;

const RUN_DIR: &str = "/run/zap/pods";

/// `zap-init` next to the `zap` under test; built with cargo if it is missing.
fn init_exe() -> PathBuf {
    static BUILD: Once = Once::new();
    let zap = Path::new(env!("CARGO_BIN_EXE_zap"));
    let init = zap.with_file_name("zap-init");
    BUILD.call_once(|| {
        if init.exists() {
            return;
        }
        // <target>/release/zap -> <target>
        let target = zap.parent().and_then(Path::parent).expect("target dir");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "-p", "zap-engine", "--bin", "zap-init", "--target-dir"])
            .arg(target)
            .status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "zap-init is missing at {} and building it failed ({status:?}); run `cargo build --release -p zap-engine --bin zap-init`",
            init.display()
        );
    });
    assert!(init.exists(), "zap-init not found at {}", init.display());
    init
}

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: prctl with integer arguments; affects only this process.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    });
}

fn zap(args: &[&str]) -> Output {
    setup();
    Command::new(env!("CARGO_BIN_EXE_zap")).env("ZAP_INIT", init_exe()).env_remove("ZAP_RUN_DIR").args(args).output().expect("run zap")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "zap failed ({}): {}", o.status, stderr(&o));
    o
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("bad JSON {e}: {}", stdout(o)))
}

/// A unique pod name for this test process.
fn name(tag: &str) -> String {
    format!("t{}-{tag}", std::process::id())
}

/// Third octet of this test's subnet 10.77.X.0/24: unique per test (`k`) and per test process,
/// and not in use on this host (other pods may be running).
fn subnet(k: u32) -> u32 {
    let addrs = stdout(&Command::new("ip").args(["-o", "-4", "addr", "show"]).output().expect("ip addr"));
    let first = 50 + (std::process::id() % 40) * 4 + k;
    (0..150)
        .map(|i| 50 + (first - 50 + i * 4) % 200)
        .find(|x| !addrs.contains(&format!(" 10.77.{x}.")))
        .expect("a free 10.77.X.0/24 subnet")
}

/// Live (not zombie) process?
fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, r)| r.trim_start().chars().next()))
        .is_some_and(|st| st != 'Z' && st != 'X')
}

/// A pod this test created: `zap rm -f` and reaping of its init on drop.
struct Pod {
    name: String,
    init_pid: i64,
}

impl Pod {
    fn run(name: &str, opts: &[&str], cmd: &[&str]) -> Pod {
        let mut args = vec!["run", "--json", "--name", name];
        args.extend(opts);
        args.push("--");
        args.extend(cmd);
        let out = zap(&args);
        let mut pod = Pod { name: name.to_string(), init_pid: 0 };
        let out = ok(out);
        pod.init_pid = json(&out)["init_pid"].as_i64().expect("init_pid");
        pod
    }

    fn state(&self) -> Value {
        let list = json(&ok(zap(&["ps", "--json"])));
        list.as_array().unwrap().iter().find(|p| p["name"] == self.name.as_str()).cloned().unwrap_or(Value::Null)
    }

    fn exec(&self, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", self.name.as_str(), "--"];
        args.extend(cmd);
        zap(&args)
    }

    fn reap_init(&self) {
        if self.init_pid <= 0 {
            return;
        }
        let pid = self.init_pid as i32;
        wait_for(Duration::from_secs(5), || {
            let mut status = 0;
            // SAFETY: waitpid on one specific pid (this pod's init, our child once orphaned).
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            r == pid || (r < 0 && !alive(i64::from(pid)))
        });
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = zap(&["rm", "-f", &self.name]);
        self.reap_init();
    }
}

fn links() -> String {
    stdout(&Command::new("ip").args(["-o", "link", "show"]).output().expect("ip link"))
}

fn veth_of(name: &str) -> String {
    let st: Value = serde_json::from_slice(&std::fs::read(format!("{RUN_DIR}/{name}/pod.json")).unwrap()).unwrap();
    st["veth_host"].as_str().unwrap_or_default().to_string()
}

/// Asserts that nothing of pod `name` is left after `zap rm -f`.
fn assert_removed(pod: &Pod, pids: &[i64], veth: Option<&str>, mounts_before: &str) {
    pod.reap_init();
    assert!(!alive(pod.init_pid), "init {} still alive", pod.init_pid);
    for p in pids {
        assert!(!alive(*p), "pod process {p} still alive");
    }
    for dir in ["/sys/fs/cgroup/unified/zap", "/sys/fs/cgroup/zap", "/sys/fs/cgroup/memory/zap", "/sys/fs/cgroup/cpu/zap"] {
        let p = Path::new(dir).join(&pod.name);
        assert!(!p.exists(), "{} left behind", p.display());
    }
    assert!(!Path::new(RUN_DIR).join(&pod.name).exists(), "pod dir left behind");
    if let Some(v) = veth {
        assert!(!links().contains(&format!(" {v}@")) && !links().contains(&format!(" {v}:")), "veth {v} left: {}", links());
    }
    assert_eq!(host_mounts(), mounts_before, "host mounts changed");
}

#[test]
fn run_exec_and_remove() {
    let mounts = host_mounts();
    let n = name("basic");
    let pod = Pod::run(&n, &["--hostname", "box1", "--memory", "256M", "--cpus", "0.5"], &["sleep", "300"]);
    // `zap run` has exited; the pod runs on.
    assert!(alive(pod.init_pid), "init must outlive zap run");
    let st = pod.state();
    assert_eq!(st["state"], "running", "{st}");
    let main_pid = st["main_pid"].as_i64().expect("main pid");
    assert!(alive(main_pid));
    assert!(st["processes"].as_u64().unwrap() >= 2, "{st}");

    let out = ok(pod.exec(&["hostname"]));
    assert_eq!(stdout(&out).trim(), "box1");
    // /proc is the pod's: our init is PID 1, the command a low pid, nothing of the host.
    let out = ok(pod.exec(&["sh", "-c", "cat /proc/1/comm; ls /proc | grep -E '^[0-9]+$'"]));
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("zap-init"));
    let pids: Vec<u32> = lines.filter_map(|l| l.parse().ok()).collect();
    assert!(pids.contains(&1) && pids.contains(&2), "{pids:?}");
    assert!(pids.iter().all(|p| *p < 50), "host processes visible in the pod: {pids:?}");
    // Exit status and output of exec.
    let out = pod.exec(&["sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(stdout(&out), "out\n");
    assert_eq!(stderr(&out), "err\n");
    assert_eq!(pod.exec(&["sh", "-c", "kill -9 $$"]).status.code(), Some(137));
    let out = pod.exec(&["nosuchcmd-exec"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("zap exec:") && stderr(&out).contains(&n), "{}", stderr(&out));
    // Exec joins the pod's cgroup (and its limits).
    let out = ok(pod.exec(&["cat", "/proc/self/cgroup"]));
    assert!(stdout(&out).lines().any(|l| l == "0::/"), "cgroup namespace root: {}", stdout(&out));

    // A process started in the pod keeps running after zap exits.
    ok(pod.exec(&["sh", "-c", "sleep 200 >/dev/null 2>&1 &"]));
    let mut procs = pod::procs_of(&n);
    assert!(procs.len() >= 3, "{procs:?}");
    // Every process, exec'd ones included, is in the v1 cgroups of the limits too (hybrid).
    procs.sort_unstable();
    for dir in pod::v1_dirs(&n) {
        let mut v1: Vec<i64> =
            std::fs::read_to_string(format!("{dir}/cgroup.procs")).unwrap().lines().filter_map(|l| l.parse().ok()).collect();
        v1.sort_unstable();
        assert_eq!(v1, procs, "v1 cgroup {dir}");
    }

    // rm refuses a running pod.
    let out = zap(&["rm", &n]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("zap rm:") && stderr(&out).contains("running"), "{}", stderr(&out));
    assert!(alive(pod.init_pid));

    ok(zap(&["rm", "-f", &n]));
    let mut all = procs.clone();
    all.push(main_pid);
    assert_removed(&pod, &all, None, &mounts);
}

/// Helpers on the pod's cgroup, read from the host.
mod pod {
    /// Host pids in pod `name`'s cgroup.
    pub fn procs_of(name: &str) -> Vec<i64> {
        let st: serde_json::Value =
            serde_json::from_slice(&std::fs::read(format!("{}/{name}/pod.json", super::RUN_DIR)).unwrap()).unwrap();
        let cg = st["cgroup"].as_str().unwrap();
        std::fs::read_to_string(format!("{cg}/cgroup.procs")).unwrap().lines().filter_map(|l| l.parse().ok()).collect()
    }

    /// The v1 cgroup directories of pod `name` (used for limits on hybrid hierarchies).
    pub fn v1_dirs(name: &str) -> Vec<String> {
        let st: serde_json::Value =
            serde_json::from_slice(&std::fs::read(format!("{}/{name}/pod.json", super::RUN_DIR)).unwrap()).unwrap();
        st["cgroup_v1"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
    }
}

#[test]
fn network_host_to_pod_and_back() {
    let mounts = host_mounts();
    let x = subnet(0);
    let n = name("net");
    let ip = format!("10.77.{x}.2");
    let gw: Ipv4Addr = format!("10.77.{x}.1").parse().unwrap();
    let server = "import socket\n\
s = socket.socket()\n\
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
s.bind(('0.0.0.0', 8080))\n\
s.listen(1)\n\
s.settimeout(60)\n\
c, _ = s.accept()\n\
c.sendall(b'hello from pod')\n\
c.close()\n\
import time\n\
time.sleep(120)\n";
    let mac = format!("02:77:00:00:{:02x}:02", x);
    let cidr = format!("{ip}/24");
    let pod = Pod::run(&n, &["--ip", &cidr, "--mac", &mac], &["python3", "-c", server]);
    let veth = veth_of(&n);
    assert!(veth.starts_with("zv-") && veth.len() <= 15, "{veth}");
    assert!(links().contains(&veth));
    let st = pod.state();
    assert_eq!(st["ip"], cidr.as_str());

    // Inside: eth0 with our MAC and address, lo up, default route via the gateway.
    let out = ok(pod.exec(&["ip", "-o", "link", "show", "eth0"]));
    assert!(stdout(&out).contains(&mac), "{}", stdout(&out));
    let out = ok(pod.exec(&["ip", "route"]));
    assert!(stdout(&out).contains(&format!("default via {gw}")), "{}", stdout(&out));
    let out = ok(pod.exec(&["ip", "-o", "link", "show", "lo"]));
    assert!(stdout(&out).contains("UP"), "{}", stdout(&out));

    // Host -> pod: TCP to the server in the pod.
    let addr: SocketAddr = format!("{ip}:8080").parse().unwrap();
    let mut got = Vec::new();
    let connected = wait_for(Duration::from_secs(20), || match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        Ok(mut s) => {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            got.clear();
            s.read_to_end(&mut got).is_ok() && !got.is_empty()
        }
        Err(_) => false,
    });
    assert!(connected, "no TCP answer from the pod at {addr}");
    assert_eq!(got, b"hello from pod");

    // Pod -> host: TCP to a listener on the gateway address.
    let listener = TcpListener::bind((gw, 0)).expect("bind on the gateway address");
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let client = format!(
        "import socket\ns = socket.create_connection(('{gw}', {port}), timeout=10)\ns.sendall(b'hello from inside')\ns.close()\n"
    );
    let out = ok(pod.exec(&["python3", "-c", &client]));
    drop(out);
    let mut msg = Vec::new();
    let accepted = wait_for(Duration::from_secs(10), || match listener.accept() {
        Ok((mut s, _)) => {
            s.set_nonblocking(false).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.read_to_end(&mut msg).is_ok()
        }
        Err(_) => false,
    });
    assert!(accepted, "the pod's connection did not arrive");
    assert_eq!(msg, b"hello from inside");
    let _ = std::io::stdout().flush();

    let pids = pod::procs_of(&n);
    ok(zap(&["rm", "-f", &n]));
    assert_removed(&pod, &pids, Some(&veth), &mounts);
    // The gateway address is gone; the bridge too unless another pod still has an address.
    let addrs = stdout(&Command::new("ip").args(["-o", "-4", "addr", "show"]).output().unwrap());
    assert!(!addrs.contains(&format!("{gw}/24")), "gateway address left: {addrs}");
    let others = json(&ok(zap(&["ps", "--json"])));
    let others_with_ip = others.as_array().unwrap().iter().any(|p| !p["ip"].is_null());
    if !others_with_ip && links().contains(" zap0:") {
        // Only pods of another run directory may still be using the bridge.
        let ports = stdout(&Command::new("ip").args(["-o", "link", "show", "master", "zap0"]).output().unwrap());
        assert!(!ports.trim().is_empty(), "bridge left behind with no port: {}", links());
    }
}

#[test]
fn stop_forwards_sigterm_then_kills() {
    let mounts = host_mounts();
    // A program that traps SIGTERM and exits 42.
    let n = name("stop");
    let pod = Pod::run(&n, &[], &["sh", "-c", "trap 'echo got-term; exit 42' TERM; while :; do sleep 0.1; done"]);
    let out = ok(zap(&["stop", "--json", &n]));
    assert_eq!(json(&out)["exit_code"], 42, "{}", stdout(&out));
    let st = pod.state();
    assert_eq!(st["state"], "exited");
    assert_eq!(st["exit_code"], 42);
    assert_eq!(st["processes"], 0);
    let log = std::fs::read_to_string(format!("{RUN_DIR}/{n}/console.log")).unwrap();
    assert!(log.contains("got-term"), "console.log: {log:?}");
    // The stopped pod stays listed until rm, which needs no -f now.
    ok(zap(&["rm", &n]));
    assert_removed(&pod, &[], None, &mounts);

    // A program that ignores SIGTERM is killed after the timeout.
    let n = name("stubborn");
    let pod = Pod::run(&n, &[], &["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"]);
    let t = Instant::now();
    let out = ok(zap(&["stop", "--json", "--timeout", "1", &n]));
    assert!(t.elapsed() < Duration::from_secs(8));
    assert_eq!(json(&out)["exit_code"], 137, "{}", stdout(&out));
    assert_eq!(pod.state()["processes"], 0);
    ok(zap(&["rm", &n]));
    assert_removed(&pod, &[], None, &mounts);

    // zap kill: at once.
    let n = name("kill");
    let pod = Pod::run(&n, &[], &["sleep", "300"]);
    let pids = pod::procs_of(&n);
    let out = ok(zap(&["kill", "--json", &n]));
    assert_eq!(json(&out)["state"], "exited 137", "{}", stdout(&out));
    for p in &pids {
        assert!(wait_for(Duration::from_secs(5), || !alive(*p)), "pid {p} survived zap kill");
    }
    ok(zap(&["rm", &n]));
    assert_removed(&pod, &pids, None, &mounts);
}

#[test]
fn failures_are_clear_and_leave_nothing() {
    let n = name("bad");
    let out = zap(&["run", "--name", &n, "--", "nosuchcmd"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).trim(), format!("zap run: start \"nosuchcmd\" in pod {n}: No such file or directory"));
    assert!(!Path::new(RUN_DIR).join(&n).exists());
    assert!(!Path::new("/sys/fs/cgroup/unified/zap").join(&n).exists() && !Path::new("/sys/fs/cgroup/zap").join(&n).exists());

    // A bad address is refused before anything is created.
    let out = zap(&["run", "--name", &n, "--ip", "10.77.0.0/24", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not a host address"), "{}", stderr(&out));
    assert!(!Path::new(RUN_DIR).join(&n).exists());

    // Usage errors exit 2; a bad name, or a pod that does not exist, exit 1.
    assert_eq!(zap(&["run", "--name", &n]).status.code(), Some(2));
    assert_eq!(zap(&["run", "--name", &n, "--memory", "lots", "--", "true"]).status.code(), Some(2));
    let out = zap(&["run", "--name", "../x", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("zap run:"), "{}", stderr(&out));
    let out = zap(&["exec", &n, "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no such pod"), "{}", stderr(&out));

    // A second pod with the same name is refused; the first is untouched.
    let pod = Pod::run(&n, &[], &["sleep", "300"]);
    let out = zap(&["run", "--name", &n, "--", "sleep", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("exists"), "{}", stderr(&out));
    assert_eq!(pod.state()["state"], "running");
}

/// The cgroup v2 root of this host.
fn v2_root() -> &'static str {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "/sys/fs/cgroup"
    } else {
        "/sys/fs/cgroup/unified"
    }
}

/// Host pids of every process in pod `name`'s cgroup and the cgroups under it.
fn all_procs_of(name: &str) -> Vec<i64> {
    let st: Value = serde_json::from_slice(&std::fs::read(format!("{RUN_DIR}/{name}/pod.json")).unwrap()).unwrap();
    let mut dirs = vec![PathBuf::from(st["cgroup"].as_str().unwrap())];
    let mut out = Vec::new();
    while let Some(d) = dirs.pop() {
        out.extend(std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default().lines().filter_map(|l| l.parse::<i64>().ok()));
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            }
        }
    }
    out
}

/// `zap rm -f` removes a pod whatever its processes made: sub-cgroups holding processes (one
/// frozen, one deep), stacked tmpfs mounts, a mount namespace of its own, a network namespace
/// with a veth pair to the pod's.
#[test]
fn rm_removes_what_the_pod_made() {
    if Command::new("unshare").arg("--help").output().is_err() {
        eprintln!("SKIP: unshare (util-linux) not installed");
        return;
    }
    let mounts = host_mounts();
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path();
    let n = name("made");
    let script = format!(
        "cg=/sys/fs/cgroup; mkdir -p $cg/svc/a $cg/fz $cg/deep/er/still && \
         sleep 1000 & echo $! > $cg/svc/a/cgroup.procs; \
         sleep 1000 & echo $! > $cg/fz/cgroup.procs; echo 1 > $cg/fz/cgroup.freeze; \
         sleep 1000 & echo $! > $cg/deep/er/still/cgroup.procs; \
         mkdir -p {w}/t && mount -t tmpfs t {w}/t && mount -t tmpfs t2 {w}/t; \
         unshare --mount sh -c 'mount -t tmpfs x {w}/t; exec sleep 1000' & \
         unshare --net sh -c 'ip link add zrm0 type veth peer name zrm1 netns 1; exec sleep 1000' & \
         sleep 0.5; touch {w}/ready; exec sleep 1000",
        w = w.display()
    );
    let pod = Pod::run(&n, &[], &["sh", "-c", &script]);
    assert!(wait_for(Duration::from_secs(10), || w.join("ready").exists()), "setup did not finish");
    let pids = all_procs_of(&n);
    assert!(pids.len() >= 6, "{pids:?}");
    let st: Value = serde_json::from_slice(&std::fs::read(format!("{RUN_DIR}/{n}/pod.json")).unwrap()).unwrap();
    let cg = PathBuf::from(st["cgroup"].as_str().unwrap());
    assert!(cg.join("deep/er/still").exists() && cg.join("fz").exists());
    // ps counts the processes of the sub-cgroups.
    let listed = pod.state();
    assert_eq!(listed["state"], "running", "{listed}");
    assert!(listed["processes"].as_u64().unwrap() >= 6, "{listed}");
    ok(zap(&["rm", "-f", &n]));
    assert_removed(&pod, &pids, None, &mounts);
    assert!(!cg.exists(), "cgroup {} left", cg.display());
    assert!(!links().contains("zrm0") && !links().contains("zrm1"), "veth left: {}", links());
}

/// A pod whose init was killed from outside (its processes die with it; its sub-cgroups stay)
/// and a pod whose creation was interrupted (a directory and a cgroup tree, no pod.json) are
/// removed without -f and leave nothing.
#[test]
fn rm_removes_dead_and_half_created_pods() {
    let mounts = host_mounts();
    let n = name("dead");
    let script = "mkdir -p /sys/fs/cgroup/s/t && sleep 1000 & echo $! > /sys/fs/cgroup/s/t/cgroup.procs; exec sleep 1000";
    let pod = Pod::run(&n, &[], &["sh", "-c", script]);
    let st: Value = serde_json::from_slice(&std::fs::read(format!("{RUN_DIR}/{n}/pod.json")).unwrap()).unwrap();
    let cg = PathBuf::from(st["cgroup"].as_str().unwrap());
    assert!(wait_for(Duration::from_secs(5), || all_procs_of(&n).len() >= 3));
    let pids = all_procs_of(&n);
    // SAFETY: kill on the init of the pod this test created.
    unsafe { libc::kill(pod.init_pid as i32, libc::SIGKILL) };
    pod.reap_init();
    assert!(wait_for(Duration::from_secs(5), || pod.state()["state"] == "dead"), "{}", pod.state());
    ok(zap(&["rm", &n]));
    assert_removed(&pod, &pids, None, &mounts);
    assert!(!cg.exists(), "cgroup {} left", cg.display());

    // Interrupted at its start: a pod directory without pod.json and a cgroup tree.
    let n = name("half");
    let cg = Path::new(v2_root()).join("zap").join(&n);
    std::fs::create_dir_all(Path::new(RUN_DIR).join(&n)).unwrap();
    std::fs::create_dir_all(cg.join("sub/deeper")).unwrap();
    let half = Pod { name: n.clone(), init_pid: 0 };
    assert!(String::from_utf8_lossy(&ok(zap(&["ps"])).stdout).contains(&n), "a half-created pod is listed");
    ok(zap(&["rm", &n]));
    assert!(!cg.exists(), "cgroup {} left", cg.display());
    assert!(!Path::new(RUN_DIR).join(&n).exists(), "pod dir left");
    drop(half);
}
