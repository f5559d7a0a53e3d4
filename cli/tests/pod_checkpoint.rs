//! Whole-pod checkpoint and restore from the command line, on real programs in real pods:
//! a shell pipeline, a process tree with sessions, groups, a zombie and shared memory (our C
//! program), a TCP server that accepts new clients after the restore (also in a second copy
//! restored under another name and address), and no residue after `zap rm`.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn zap_bin() -> &'static str {
    env!("CARGO_BIN_EXE_zap")
}

struct Env {
    _dir: tempfile::TempDir,
    store: PathBuf,
    run: PathBuf,
    work: PathBuf,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let run = PathBuf::from("/run/zap/test-pods");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    Env { store, run, work, _dir: dir }
}

fn zap(e: &Env, args: &[&str]) -> Output {
    let init = Path::new(zap_bin()).parent().unwrap().join("zap-init");
    Command::new(zap_bin())
        .arg("--store")
        .arg(&e.store)
        .args(args)
        .env("ZAP_RUN_DIR", &e.run)
        .env("ZAP_INIT", init)
        .output()
        .expect("run zap")
}

fn ok(e: &Env, args: &[&str]) -> String {
    let out = zap(e, args);
    assert!(out.status.success(), "zap {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// A pod this test made (by name); removed with `zap rm -f` on drop.
struct PodGuard<'a>(&'a Env, String);

impl Drop for PodGuard<'_> {
    fn drop(&mut self) {
        let _ = zap(self.0, &["rm", "-f", &self.1]);
    }
}

fn name(tag: &str) -> String {
    format!("ck{}-{tag}", std::process::id())
}

/// Pids (inside the pod) and names of the pod's processes, without the `ps` itself.
fn pod_procs(e: &Env, pod: &str) -> Vec<(i32, String)> {
    let out = ok(e, &["exec", pod, "--", "ps", "-e", "-o", "pid=,comm="]);
    let mut v: Vec<(i32, String)> = out
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.parse().ok()?, it.next()?.to_string()))
        })
        .filter(|(_, c)| c != "ps")
        .collect();
    v.sort();
    v
}

fn read_num(p: &Path) -> u64 {
    std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

#[test]
fn shell_pipeline_continues_after_restore() {
    let e = env();
    let pod = name("pipe");
    let count = e.work.join("count");
    let script = format!(
        "seq 1 100000000 | while read n; do echo $n > {c}.tmp; mv {c}.tmp {c}; sleep 0.01; done",
        c = count.display()
    );
    ok(&e, &["run", "--name", &pod, "--", "sh", "-c", &script]);
    let _g = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(10), || read_num(&count) >= 5), "pipeline did not start");
    let before_procs: Vec<(i32, String)> = pod_procs(&e, &pod).into_iter().filter(|(_, c)| c != "sleep" && c != "mv").collect();
    assert!(before_procs.iter().any(|(_, c)| c == "seq"), "{before_procs:?}");
    let id = ok(&e, &["checkpoint", &pod]).trim().to_string();
    let at_checkpoint = read_num(&count);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(read_num(&count), at_checkpoint, "the pod stopped with the checkpoint");
    assert!(!String::from_utf8_lossy(&zap(&e, &["ps"]).stdout).contains(&pod), "checkpointed pod was removed");
    ok(&e, &["restore", &id]);
    assert!(wait_for(Duration::from_secs(10), || read_num(&count) >= at_checkpoint + 5), "pipeline did not continue");
    let after = read_num(&count);
    assert!(after > at_checkpoint && after < at_checkpoint + 10_000, "counter continues from {at_checkpoint}: {after}");
    let after_procs: Vec<(i32, String)> = pod_procs(&e, &pod).into_iter().filter(|(_, c)| c != "sleep" && c != "mv").collect();
    assert_eq!(after_procs, before_procs, "same processes with the same pids");
}

fn build_prog(name: &str, out_dir: &Path) -> Option<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/progs").join(format!("{name}.c"));
    let out = out_dir.join(name);
    match Command::new("gcc").args(["-O1", "-o"]).arg(&out).arg(&src).status() {
        Ok(s) if s.success() => Some(out),
        Ok(s) => panic!("gcc failed on {}: {s}", src.display()),
        Err(err) => {
            eprintln!("SKIP: gcc not available ({err})");
            None
        }
    }
}

#[test]
fn process_tree_in_a_pod() {
    let e = env();
    let Some(prog) = build_prog("tree", &e.work) else { return };
    let pod = name("tree");
    let (out, go, shared) = (e.work.join("out"), e.work.join("go"), e.work.join("shared"));
    std::fs::write(&shared, b"ab").unwrap();
    let text = || std::fs::read_to_string(&out).unwrap_or_default();
    ok(&e, &["run", "--name", &pod, "--", prog.to_str().unwrap(), out.to_str().unwrap(), go.to_str().unwrap(), shared.to_str().unwrap()]);
    let _g = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(10), || text().contains("ready")), "no ready: {}", text());
    let before = pod_procs(&e, &pod);
    let id = ok(&e, &["checkpoint", &pod]).trim().to_string();
    ok(&e, &["restore", &id]);
    assert_eq!(pod_procs(&e, &pod), before, "same tree with the same pids");
    std::fs::write(&go, b"go").unwrap();
    assert!(wait_for(Duration::from_secs(10), || text().contains("ok") || text().contains("FAIL")), "{}", text());
    assert!(!text().contains("FAIL"), "{}", text());
}

const SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 7070))
s.listen()
served = 0
while served < 50:
    c, _ = s.accept()
    served += 1
    data = c.recv(64)
    c.sendall(b'served %d %s' % (served, data))
    c.close()
"#;

fn ask(addr: &str, msg: &str) -> std::io::Result<String> {
    let mut c = std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5))?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    c.write_all(msg.as_bytes())?;
    let mut s = String::new();
    c.read_to_string(&mut s)?;
    Ok(s)
}

fn ask_retry(addr: &str, msg: &str) -> String {
    let t = Instant::now();
    loop {
        match ask(addr, msg) {
            Ok(s) => return s,
            Err(err) if t.elapsed() > Duration::from_secs(10) => panic!("no answer from {addr}: {err}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[test]
fn listening_tcp_server_accepts_after_restore_and_in_a_copy() {
    if Command::new("python3").arg("-c").arg("pass").status().is_err() {
        eprintln!("SKIP: python3 not installed");
        return;
    }
    let e = env();
    let net = 100 + (std::process::id() % 100);
    let (ip, ip2) = (format!("10.78.{net}.2/24"), format!("10.78.{net}.3/24"));
    let (addr, addr2) = (format!("10.78.{net}.2:7070"), format!("10.78.{net}.3:7070"));
    let pod = name("tcp");
    let copy = name("tcpcopy");
    ok(&e, &["run", "--name", &pod, "--ip", &ip, "--", "python3", "-c", SERVER]);
    let _g = PodGuard(&e, pod.clone());
    assert_eq!(ask_retry(&addr, "a"), "served 1 a");
    // A second copy of the running pod under another name and address.
    let id = ok(&e, &["checkpoint", "--leave-running", &pod]).trim().to_string();
    assert_eq!(ask(&addr, "b").unwrap(), "served 2 b", "the original runs on");
    ok(&e, &["restore", &id, "--name", &copy, "--ip", &ip2]);
    let _g2 = PodGuard(&e, copy.clone());
    assert_eq!(ask_retry(&addr2, "c"), "served 2 c", "the copy continues from the checkpoint's state");
    // Checkpoint the original (it goes away) and bring it back at its address.
    let id2 = ok(&e, &["checkpoint", &pod]).trim().to_string();
    assert!(ask(&addr, "x").is_err(), "the checkpointed pod is gone");
    ok(&e, &["restore", &id2]);
    assert_eq!(ask_retry(&addr, "d"), "served 3 d");
    assert_eq!(ask(&addr2, "e").unwrap(), "served 3 e");
}
