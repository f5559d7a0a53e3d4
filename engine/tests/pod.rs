//! `zap_engine::pod` on the real kernel (root): the cgroup operations the checkpoint code uses
//! (freeze, thaw, procs, memory), `net::read_config`, and restore-mode launches with chosen
//! pids. Each test uses its own run directory, a pod name with the test pid, and removes its pod
//! even when it fails.
use std::path::{Path, PathBuf};
use std::time::Duration;

use zap_engine::pod::{self, net, Launch, PodSpec, PodStatus};

fn spec(name: &str, launch: Launch) -> PodSpec {
    PodSpec {
        name: name.to_string(),
        hostname: None,
        ip: None,
        mac: None,
        memory_limit: None,
        cpus: None,
        launch,
        init_exe: PathBuf::from(env!("CARGO_BIN_EXE_zap-init")),
    }
}

fn sleep_cmd() -> Launch {
    Launch::Command {
        argv: vec!["sleep".into(), "60".into()],
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        cwd: "/".into(),
    }
}

/// Removes the pod (killing it) on drop.
struct Guard<'a>(&'a Path, String);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if let Err(e) = pod::rm(self.0, &self.1, true) {
            eprintln!("cleanup of pod {}: {e}", self.1);
        }
    }
}

#[test]
fn freeze_thaw_procs_memory_and_network_config() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let name = format!("e{}-cg", std::process::id());
    // A subnet 10.77.X.0/24 not in use on this host (other pods may be running).
    let addrs = std::process::Command::new("ip").args(["-o", "-4", "addr", "show"]).output().unwrap().stdout;
    let addrs = String::from_utf8_lossy(&addrs);
    let x = (0..40)
        .map(|i| 210 + (std::process::id() + i) % 40)
        .find(|x| !addrs.contains(&format!(" 10.77.{x}.")))
        .expect("a free subnet");
    let mut s = spec(&name, sleep_cmd());
    s.ip = Some(format!("10.77.{x}.2/24"));
    s.mac = Some(format!("02:77:01:00:{x:02x}:02"));
    let _guard = Guard(root, name.clone());
    let st = pod::create(root, &s).unwrap();
    assert_eq!(pod::status(root, &st), PodStatus::Running);
    let cg = pod::cgroup_of(&st);
    let procs = cg.procs();
    assert!(procs.contains(&st.init_pid) && procs.contains(&st.main_pid.unwrap()), "{procs:?}");
    assert!(cg.memory_bytes() > 0);

    cg.freeze(Duration::from_secs(5)).unwrap();
    let events = std::fs::read_to_string(cg.v2.join("cgroup.events")).unwrap();
    assert!(events.contains("frozen 1"), "{events}");
    cg.thaw().unwrap();

    let cfg = net::read_config(st.init_pid).unwrap();
    assert_eq!(cfg.ifname, "eth0");
    assert_eq!(cfg.mac, s.mac.clone().unwrap());
    assert_eq!(cfg.addrs, vec![s.ip.clone().unwrap()]);
    assert!(cfg.routes.iter().any(|r| r.starts_with(&format!("default via 10.77.{x}.1"))), "{:?}", cfg.routes);

    pod::set_last_checkpoint(root, &name, "abcd1234").unwrap();
    assert_eq!(pod::load(root, &name).unwrap().last_checkpoint.as_deref(), Some("abcd1234"));

    pod::rm(root, &name, true).unwrap();
    assert!(!cg.v2.exists());
    assert!(!root.join(&name).exists());
}

#[test]
fn restore_launch_creates_processes_with_the_given_pids() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let name = format!("e{}-restore", std::process::id());
    let launch = Launch::Restore { top: vec![300, 301], tramp: 0x1000_0000, main_vpid: 301, guarded: false, clocks: None };
    let _guard = Guard(root, name.clone());
    let st = pod::create(root, &spec(&name, launch)).unwrap();
    assert_eq!(st.main_vpid, 301);
    let cg = pod::cgroup_of(&st);
    for vpid in [300, 301] {
        let pid = pod::host_pid_of(&cg, vpid).unwrap_or_else(|| panic!("no process with pid {vpid} in the pod"));
        // The target maps its trampoline right after it is created: give it a moment.
        let has_trampoline = || {
            std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default().lines().any(|l| l.starts_with("10000000-10001000 "))
        };
        let start = std::time::Instant::now();
        while !has_trampoline() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(has_trampoline(), "no trampoline in {pid}");
    }
    // Killing the main process ends the pod.
    let main = pod::host_pid_of(&cg, 301).unwrap();
    // SAFETY: kill takes integers; `main` is a process of the pod this test created.
    unsafe { libc::kill(main, libc::SIGKILL) };
    let start = std::time::Instant::now();
    while pod::status(root, &st) == PodStatus::Running && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    match pod::status(root, &st) {
        PodStatus::Exited(e) => assert_eq!(e.signal, Some(libc::SIGKILL)),
        other => panic!("pod should have exited, is {other}"),
    }
}
