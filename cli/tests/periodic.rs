//! Periodic checkpoints and rollback from the command line, on real pods running a shell
//! counter: a schedule that keeps the last N checkpoints and outlives `zap`; a pod killed and
//! rolled back to its latest periodic checkpoint; rollback by steps and by id with the same pids
//! and address; a rollback without any checkpoint.
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn name(tag: &str) -> String {
    pod_name("pc", tag)
}

fn read_num(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse().ok())
}

/// Starts a pod running the shell counter (writes `i` to `file` every ~50 ms).
fn counter_pod<'a>(e: &'a Env, pod: &str, file: &Path, ip: Option<&str>) -> PodGuard<'a> {
    let script = format!(
        "i=0; while true; do i=$((i+1)); echo $i > {c}.tmp; mv {c}.tmp {c}; sleep 0.05; done",
        c = file.display()
    );
    let mut args = vec!["run", "--name", pod];
    if let Some(ip) = ip {
        args.extend(["--ip", ip]);
    }
    args.extend(["--", "sh", "-c", &script]);
    ok(e, &args);
    let g = PodGuard(e, pod.to_string());
    assert!(wait_for(Duration::from_secs(10), || read_num(file).unwrap_or(0) >= 3), "counter did not start");
    g
}

/// True while `pid` runs (a zombie waiting for its new parent to reap it counts as gone).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| !s[i + 2..].starts_with('Z')))
        .unwrap_or(false)
}

fn log_of(e: &Env, pod: &str) -> String {
    std::fs::read_to_string(e.run.join(pod).join("checkpoints.log")).unwrap_or_default()
}

/// The checkpoint lines of the scheduler's log.
fn checkpoint_lines(log: &str) -> Vec<String> {
    log.lines().filter(|l| l.split_whitespace().nth(1) == Some("checkpoint")).map(str::to_string).collect()
}

fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// The pod's periodic checkpoints in the store, from `zap ls --json`.
fn periodic_in_store(e: &Env, pod: &str) -> Vec<String> {
    let ls: serde_json::Value = serde_json::from_str(&ok(e, &["--json", "ls"])).unwrap();
    ls.as_array()
        .unwrap()
        .iter()
        .filter(|c| c["labels"]["pod"] == pod && c["labels"]["schedule"] == "periodic" && c["kind"] == "pod")
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

fn start_schedule(e: &Env, pod: &str, every: &str, keep: &str) -> i32 {
    let t = Instant::now();
    let out: serde_json::Value = serde_json::from_str(&ok(e, &["--json", "checkpoint", pod, "--every", every, "--keep", keep])).unwrap();
    assert!(t.elapsed() < Duration::from_secs(10), "zap checkpoint --every returns at once");
    assert_eq!(out["every"], every);
    assert_eq!(out["keep"].as_u64().unwrap().to_string(), keep);
    out["scheduler_pid"].as_i64().unwrap() as i32
}

#[test]
fn periodic_checkpoints_keep_the_last_n() {
    let e = env();
    let pod = name("keep");
    let count = e.work.join("count");
    let _g = counter_pod(&e, &pod, &count, None);
    let pid = start_schedule(&e, &pod, "500ms", "3");
    // `zap` has exited (output() returned); the scheduler is a process of its own, in its own
    // session.
    assert!(running(pid), "scheduler {pid} runs after zap exited");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let sid: i32 = stat[stat.rfind(')').unwrap() + 2..].split_whitespace().nth(3).unwrap().parse().unwrap();
    assert_eq!(sid, pid, "the scheduler leads its own session");
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(cmdline.contains("__schedule"), "{cmdline:?}");
    // Between rounds (the store is open only during one) it holds stdin, stdout and stderr only.
    let fds = || std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    assert!(wait_for(Duration::from_secs(5), || fds() == 3), "fds left open: {}", fds());
    let target = |fd: u32| std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
    assert_eq!(target(0), Path::new("/dev/null"));
    assert_eq!(target(1), e.run.join(&pod).join("checkpoints.log"));
    assert_eq!(target(2), e.run.join(&pod).join("checkpoints.log"));
    assert!(
        wait_for(Duration::from_secs(60), || checkpoint_lines(&log_of(&e, &pod)).len() >= 5),
        "no 5 checkpoints: {}",
        log_of(&e, &pod)
    );
    let log = log_of(&e, &pod);
    for l in checkpoint_lines(&log) {
        assert!(field(&l, "frozen_ms").is_some(), "{l}");
        assert!(field(&l, "total_ms").is_some(), "{l}");
        assert!(field(&l, "bytes_read").unwrap() > 0.0, "{l}");
        assert!(field(&l, "new_stored_bytes").is_some(), "{l}");
    }
    assert!(!log.contains("failed"), "{log}");
    let kept = periodic_in_store(&e, &pod);
    assert_eq!(kept.len(), 3, "exactly the last 3 are kept: {kept:?}\n{log}");
    // The newest logged checkpoints are among those kept (the store may have a newer one).
    let ps: serde_json::Value = serde_json::from_str(&ok(&e, &["--json", "ps"])).unwrap();
    let me = ps.as_array().unwrap().iter().find(|p| p["name"] == pod).unwrap().clone();
    assert_eq!(me["schedule"]["scheduler_pid"].as_i64(), Some(i64::from(pid)));
    assert_eq!(me["schedule"]["keep"].as_u64(), Some(3));
    assert!(ok(&e, &["ps"]).contains("every 500ms, keep 3"));
    assert!(running(pid));
    ok(&e, &["rm", "-f", &pod]);
    assert!(wait_for(Duration::from_secs(5), || !running(pid)), "rm stops the scheduler");
}

#[test]
fn killed_pod_rolls_back_to_its_latest_periodic_checkpoint() {
    let e = env();
    let pod = name("fault");
    let count = e.work.join("count");
    let _g = counter_pod(&e, &pod, &count, None);
    let pid = start_schedule(&e, &pod, "500ms", "5");
    assert!(
        wait_for(Duration::from_secs(60), || checkpoint_lines(&log_of(&e, &pod)).len() >= 3),
        "no checkpoints: {}",
        log_of(&e, &pod)
    );
    // Somewhere in the middle of a period.
    std::thread::sleep(Duration::from_millis(300));
    ok(&e, &["kill", &pod]);
    let at_kill = read_num(&count).unwrap();
    assert!(wait_for(Duration::from_secs(5), || !running(pid)), "kill stops the scheduler");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(read_num(&count), Some(at_kill), "the pod is dead");
    std::fs::remove_file(&count).unwrap();
    let id = ok(&e, &["rollback", &pod]).trim().to_string();
    assert_eq!(periodic_in_store(&e, &pod).last(), Some(&id), "rolled back to the latest checkpoint");
    assert!(wait_for(Duration::from_secs(10), || read_num(&count).is_some()), "the counter did not continue");
    let first = read_num(&count).unwrap();
    eprintln!("killed at {at_kill}, continues from {first}");
    // One period (500 ms) is about 10 iterations of the loop; the round's own time and the
    // polling add a few.
    assert!(first + 10 + 8 >= at_kill, "continues from {first}, killed at {at_kill}: more than a period lost");
    // The first poll after the rollback may come a few iterations late on a loaded machine.
    assert!(first <= at_kill + 3, "continues from {first}, killed at {at_kill}: not a checkpoint from before the kill");
    assert!(wait_for(Duration::from_secs(10), || read_num(&count).unwrap_or(0) >= first + 5), "the counter keeps increasing");
}

fn eth0_addr(e: &Env, pod: &str) -> String {
    ok(e, &["exec", pod, "--", "ip", "-o", "addr", "show", "eth0"])
}

/// Waits until the counter shows a value in `(lo, hi)`: the restored counter continuing from
/// the checkpoint taken between those values.
fn continues_between(count: &Path, lo: u64, hi: u64) -> Option<u64> {
    let mut seen = None;
    wait_for(Duration::from_secs(5), || {
        let v = read_num(count).unwrap_or(0);
        seen = Some(v);
        v > lo && v < hi
    })
    .then_some(())?;
    seen
}

#[test]
fn rollback_by_steps_and_by_id_keeps_pids_and_address() {
    let e = env();
    let net = 100 + (std::process::id() % 100);
    let ip = format!("10.80.{net}.2/24");
    let pod = name("rb");
    let count = e.work.join("count");
    let _g = counter_pod(&e, &pod, &count, Some(&ip));
    let procs = stable_procs(&e, &pod);
    assert!(procs.iter().any(|(_, c)| c == "sh"), "{procs:?}");
    assert!(eth0_addr(&e, &pod).contains(&ip));

    let a0 = read_num(&count).unwrap();
    let id_a = ok(&e, &["checkpoint", "--leave-running", &pod]).trim().to_string();
    let a1 = read_num(&count).unwrap();
    assert!(wait_for(Duration::from_secs(20), || read_num(&count).unwrap_or(0) >= a1 + 30), "counter runs on");
    let b0 = read_num(&count).unwrap();
    let _id_b = ok(&e, &["checkpoint", "--leave-running", &pod]).trim().to_string();
    assert!(wait_for(Duration::from_secs(20), || read_num(&count).unwrap_or(0) >= b0 + 30), "counter runs on");

    let back = ok(&e, &["rollback", &pod, "--steps", "1"]).trim().to_string();
    assert_eq!(back, id_a, "one step before the latest is A");
    let v = continues_between(&count, a0, b0);
    assert!(v.is_some(), "after rollback to A (taken at {a0}..={a1}) the counter continues below {b0}: {:?}", read_num(&count));
    assert!(wait_for(Duration::from_secs(10), || read_num(&count).unwrap_or(0) > v.unwrap() + 3), "counter keeps increasing");
    assert_eq!(stable_procs(&e, &pod), procs, "same processes with the same pids");
    assert!(eth0_addr(&e, &pod).contains(&ip), "same address");

    // Let it run past B's value, then go back to A by id (prefix).
    assert!(wait_for(Duration::from_secs(20), || read_num(&count).unwrap_or(0) >= b0 + 30), "counter runs on");
    let back = ok(&e, &["rollback", &pod, "--to", &id_a[..8]]).trim().to_string();
    assert_eq!(back, id_a);
    assert!(continues_between(&count, a0, b0).is_some(), "rollback --to A: {:?}", read_num(&count));
    assert_eq!(stable_procs(&e, &pod), procs, "same processes with the same pids");
    assert!(eth0_addr(&e, &pod).contains(&ip), "same address");

    // Too many steps: refused, pod untouched.
    let out = zap(&e, &["rollback", &pod, "--steps", "9"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot go back 9"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn rollback_without_checkpoint_fails_and_leaves_the_pod_running() {
    let e = env();
    let pod = name("none");
    let count = e.work.join("count");
    let _g = counter_pod(&e, &pod, &count, None);
    ok(&e, &["store", "init"]);
    let out = zap(&e, &["rollback", &pod]);
    assert!(!out.status.success(), "rollback without a checkpoint must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has no checkpoint to roll back to"), "{err}");
    let ps: serde_json::Value = serde_json::from_str(&ok(&e, &["--json", "ps"])).unwrap();
    let me = ps.as_array().unwrap().iter().find(|p| p["name"] == pod).expect("pod listed").clone();
    assert_eq!(me["state"], "running");
    let v = read_num(&count).unwrap();
    assert!(wait_for(Duration::from_secs(5), || read_num(&count).unwrap_or(0) > v + 3), "the counter runs on");
}

#[test]
fn schedule_at_run_is_replaced_and_ends_with_stop() {
    let e = env();
    let pod = name("run");
    let count = e.work.join("count");
    let script = format!("while true; do date +%s%N > {c}; sleep 0.05; done", c = count.display());
    let out: serde_json::Value = serde_json::from_str(&ok(
        &e,
        &["--json", "run", "--name", &pod, "--checkpoint-every", "200ms", "--keep", "2", "--", "sh", "-c", &script],
    ))
    .unwrap();
    let _g = PodGuard(&e, pod.clone());
    let first = out["scheduler_pid"].as_i64().expect("scheduler pid") as i32;
    assert!(wait_for(Duration::from_secs(60), || checkpoint_lines(&log_of(&e, &pod)).len() >= 4), "{}", log_of(&e, &pod));
    assert_eq!(periodic_in_store(&e, &pod).len(), 2);
    // A second schedule replaces the first.
    let second = start_schedule(&e, &pod, "300ms", "1");
    assert_ne!(second, first);
    assert!(!running(first), "the first scheduler stopped");
    assert!(running(second));
    assert!(log_of(&e, &pod).contains(&format!("scheduler {first} exits: the schedule was stopped or replaced")), "{}", log_of(&e, &pod));
    let n = checkpoint_lines(&log_of(&e, &pod)).len();
    assert!(wait_for(Duration::from_secs(60), || checkpoint_lines(&log_of(&e, &pod)).len() >= n + 2), "{}", log_of(&e, &pod));
    assert_eq!(periodic_in_store(&e, &pod).len(), 1, "keep 1");
    assert!(ok(&e, &["ps"]).contains("every 300ms, keep 1"));
    ok(&e, &["stop", "--timeout", "2", &pod]);
    assert!(wait_for(Duration::from_secs(5), || !running(second)), "stop ends the scheduler");
    assert!(!ok(&e, &["ps"]).contains("every 300ms"));
}
