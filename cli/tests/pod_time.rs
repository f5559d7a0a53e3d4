//! The pod's time namespace: a pod's `CLOCK_MONOTONIC`, `CLOCK_BOOTTIME` and `/proc/uptime` go on
//! across a restore (3 s after the checkpoint), across copies restored from `--leave-running`
//! checkpoints and across a live migration between hosts, never going back, with a gap seen
//! inside no longer than the checkpoint and the restore (or the migration's downtime) took; a timerfd and a
//! `clock_nanosleep` with an absolute monotonic time end at that time of the pod's clock after a
//! restore; a time namespace made inside the pod keeps its offsets to the pod's. The program
//! (`engine/tests/progs/clocks.c`) prints both clocks every 10 ms. On a kernel without time
//! namespaces every test says so and skips.
mod common;
mod hosts;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn name(tag: &str) -> String {
    pod_name("tm", tag)
}

fn supported() -> bool {
    if !Path::new("/proc/self/ns/time").exists() {
        eprintln!("SKIP: time namespaces (CONFIG_TIME_NS): pods run without one");
        return false;
    }
    true
}

/// One line of `clocks print`: monotonic ns, boottime ns, /proc/uptime in centiseconds.
#[derive(Clone, Copy, Debug)]
struct Sample {
    mono: i64,
    boot: i64,
    uptime_cs: i64,
}

fn samples(log: &Path) -> Vec<Sample> {
    text(log)
        .lines()
        .filter_map(|l| {
            let mut f = l.strip_prefix("c ")?.split_whitespace();
            Some(Sample { mono: f.next()?.parse().ok()?, boot: f.next()?.parse().ok()?, uptime_cs: f.next()?.parse().ok()? })
        })
        .collect()
}

/// Checks that the clocks never go back over `s` and returns the largest step between two
/// samples (ms) with the index of the sample after it.
fn largest_step(what: &str, s: &[Sample]) -> (f64, usize) {
    let mut big = (0.0, 0);
    for (i, w) in s.windows(2).enumerate() {
        assert!(w[1].mono > w[0].mono, "{what}: CLOCK_MONOTONIC went back at sample {}: {:?} -> {:?}", i + 1, w[0], w[1]);
        assert!(w[1].boot > w[0].boot, "{what}: CLOCK_BOOTTIME went back at sample {}: {:?} -> {:?}", i + 1, w[0], w[1]);
        assert!(w[1].uptime_cs >= w[0].uptime_cs, "{what}: /proc/uptime went back at sample {}: {:?} -> {:?}", i + 1, w[0], w[1]);
        let step = (w[1].mono - w[0].mono) as f64 / 1e6;
        if step > big.0 {
            big = (step, i + 1);
        }
    }
    big
}

/// Checks the step into sample `i` of `s`: boottime moved as monotonic did (no suspend in
/// between), and /proc/uptime with them.
fn same_step_on_all_clocks(what: &str, s: &[Sample], i: usize) {
    let (a, b) = (s[i - 1], s[i]);
    let drift = ((b.boot - b.mono) - (a.boot - a.mono)).abs();
    assert!(drift < 5_000_000, "{what}: boottime and monotonic moved apart by {drift} ns: {a:?} -> {b:?}");
    let up = (b.uptime_cs - a.uptime_cs) * 10;
    let mono_ms = (b.mono - a.mono) / 1_000_000;
    assert!((up - mono_ms).abs() <= 30, "{what}: /proc/uptime moved {up} ms where monotonic moved {mono_ms} ms");
}

fn init_pid(e: &Env, pod: &str) -> i32 {
    let st: serde_json::Value = serde_json::from_slice(&std::fs::read(e.run.join(pod).join("pod.json")).unwrap()).unwrap();
    st["init_pid"].as_i64().unwrap() as i32
}

fn console(e: &Env, pod: &str) -> std::path::PathBuf {
    e.run.join(pod).join("console.log")
}

fn more_samples(log: &Path, n: usize) -> bool {
    let have = samples(log).len();
    wait_for(Duration::from_secs(15), || samples(log).len() >= have + n)
}

#[test]
fn clocks_go_on_across_a_restore() {
    if !supported() {
        return;
    }
    let e = env();
    let Some(prog) = build_prog("clocks", &e.work, &[]) else { return };
    let pod = name("restore");
    ok(&e, &["run", "--name", &pod, "--", prog.to_str().unwrap(), "print"]);
    let _g = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(10), || samples(&console(&e, &pod)).len() >= 20), "the program does not print");
    // The pod has a time namespace of its own, which its init and `zap exec` are in too.
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/time")).unwrap().to_string_lossy().into_owned();
    let pod_ns = ns(&init_pid(&e, &pod).to_string());
    assert_ne!(pod_ns, ns("self"), "the pod has its own time namespace");
    assert_eq!(ok(&e, &["exec", &pod, "--", "readlink", "/proc/self/ns/time"]).trim(), pod_ns, "zap exec enters it");
    let t = Instant::now();
    ok(&e, &["checkpoint", &pod]);
    let checkpoint_ms = t.elapsed().as_secs_f64() * 1e3;
    std::thread::sleep(Duration::from_secs(3));
    let t = Instant::now();
    ok(&e, &["restore", &pod]);
    let restore_ms = t.elapsed().as_secs_f64() * 1e3;
    // The console log came back with the checkpoint: the samples before and after.
    let log = console(&e, &pod);
    assert!(more_samples(&log, 30), "the program does not go on");
    let s = samples(&log);
    let (gap, i) = largest_step("restored pod", &s);
    same_step_on_all_clocks("restored pod", &s, i);
    eprintln!("restore: the pod's clocks moved {gap:.1} ms between the samples around it (checkpoint command {checkpoint_ms:.0} ms, restore command {restore_ms:.0} ms, 3 s after the checkpoint)");
    assert!(gap < 3000.0, "the pod saw the 3 s between checkpoint and restore: {gap:.1} ms");
    // It sees its stop while its state was read, and its restore.
    assert!(gap <= checkpoint_ms + restore_ms + 300.0, "the gap seen inside ({gap:.1} ms) is at most the checkpoint's and the restore's time ({checkpoint_ms:.0} + {restore_ms:.0} ms)");
}

#[test]
fn copies_restored_from_leave_running_checkpoints_go_on_from_theirs() {
    if !supported() {
        return;
    }
    let e = env();
    let Some(prog) = build_prog("clocks", &e.work, &[]) else { return };
    let pod = name("orig");
    ok(&e, &["run", "--name", &pod, "--", prog.to_str().unwrap(), "print"]);
    let _g = PodGuard(&e, pod.clone());
    let log = console(&e, &pod);
    assert!(wait_for(Duration::from_secs(10), || samples(&log).len() >= 20), "the program does not print");
    let t = Instant::now();
    let first = ok(&e, &["checkpoint", "--leave-running", "--name", &format!("{pod}-1"), &pod]).trim().to_string();
    let first_ms = t.elapsed().as_secs_f64() * 1e3;
    let at_first = samples(&log).last().copied().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    let second = ok(&e, &["checkpoint", "--leave-running", "--name", &format!("{pod}-2"), &pod]).trim().to_string();
    let second_ms = t.elapsed().as_secs_f64() * 1e3;
    let at_second = samples(&log).last().copied().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let mut guards = Vec::new();
    for (n, (id, at, checkpoint_ms)) in [(&first, at_first, first_ms), (&second, at_second, second_ms)].into_iter().enumerate() {
        let copy = name(&format!("copy{}", n + 1));
        let t = Instant::now();
        ok(&e, &["restore", "--name", &copy, id]);
        let restore_ms = t.elapsed().as_secs_f64() * 1e3;
        guards.push(PodGuard(&e, copy.clone()));
        let clog = console(&e, &copy);
        assert!(more_samples(&clog, 30), "{copy} does not go on");
        let s = samples(&clog);
        let (gap, i) = largest_step(&copy, &s);
        same_step_on_all_clocks(&copy, &s, i);
        eprintln!("{copy}: the clocks moved {gap:.1} ms across its restore (checkpoint command {checkpoint_ms:.0} ms, restore command {restore_ms:.0} ms)");
        assert!(gap <= checkpoint_ms + restore_ms + 300.0, "{copy}: gap {gap:.1} ms, checkpoint {checkpoint_ms:.0} ms, restore {restore_ms:.0} ms");
        // It goes on from its checkpoint's clocks: the last sample before the restore is one of
        // the original's, printed before that checkpoint returned.
        let before = s[i - 1];
        assert!(samples(&log).iter().any(|o| o.mono == before.mono) && before.mono <= at.mono, "{copy}: went on from {before:?}, not from the original's samples (at the checkpoint: {at:?})");
    }
    // The original ran on all along; the copies are behind it by about the time between their
    // checkpoint and their restore.
    let last = |p: &str| samples(&console(&e, p)).last().copied().unwrap();
    let (orig, c1, c2) = (last(&pod), last(&name("copy1")), last(&name("copy2")));
    let (s1, s2) = ((orig.mono - c1.mono) as f64 / 1e9, (orig.mono - c2.mono) as f64 / 1e9);
    eprintln!("the original's monotonic clock is ahead of copy 1 by {s1:.2} s, of copy 2 by {s2:.2} s");
    assert!(s1 > 2.5 && s1 < 60.0, "copy 1 is {s1:.2} s behind the original");
    assert!(s2 > 1.5 && s2 < s1, "copy 2 is {s2:.2} s behind the original (copy 1: {s1:.2} s)");
    let (gap, _) = largest_step("original", &samples(&log));
    assert!(gap < 2000.0, "the original's clocks moved {gap:.1} ms between two samples");
}

#[test]
fn absolute_timers_fire_at_their_time_after_a_restore() {
    if !supported() {
        return;
    }
    let e = env();
    let Some(prog) = build_prog("clocks", &e.work, &[]) else { return };
    let pod = name("timer");
    // A timerfd armed with TFD_TIMER_ABSTIME, and a clock_nanosleep with TIMER_ABSTIME (which the
    // restore makes again with its deadline unchanged), both 6 s ahead on CLOCK_MONOTONIC.
    let p = prog.to_str().unwrap();
    ok(&e, &["run", "--name", &pod, "--", "sh", "-c", &format!("{p} timer 6000 & exec {p} sleep 6000")]);
    let _g = PodGuard(&e, pod.clone());
    let field = |word: &str, log: &Path| -> Option<i64> { text(log).lines().find_map(|l| l.strip_prefix(word)?.split_whitespace().next()?.parse().ok()) };
    let armed = || field("armed ", &console(&e, &pod)).is_some() && field("asleep ", &console(&e, &pod)).is_some();
    assert!(wait_for(Duration::from_secs(10), armed), "the timers were not armed");
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    ok(&e, &["checkpoint", &pod]);
    let checkpoint_ms = t.elapsed().as_secs_f64() * 1e3;
    std::thread::sleep(Duration::from_secs(3));
    let t = Instant::now();
    ok(&e, &["restore", &pod]);
    let restore_ms = t.elapsed().as_secs_f64() * 1e3;
    let log = console(&e, &pod);
    let fired = || field("fired ", &log).is_some() && field("woke ", &log).is_some();
    assert!(wait_for(Duration::from_secs(20), fired), "the timers did not fire: {}", text(&log));
    for (what, armed, fired) in [("timerfd", "armed ", "fired "), ("clock_nanosleep", "asleep ", "woke ")] {
        let (deadline, at) = (field(armed, &log).unwrap(), field(fired, &log).unwrap());
        let late = (at - deadline) as f64 / 1e6;
        eprintln!("{what} (absolute CLOCK_MONOTONIC) ended {late:.1} ms after its time by the pod's clock (checkpoint command {checkpoint_ms:.0} ms, restore command {restore_ms:.0} ms)");
        assert!(at >= deadline, "{what} ended before its time by the pod's clock: {at} < {deadline}");
        assert!(late < 3000.0 && late <= checkpoint_ms + restore_ms + 300.0, "{what} ended {late:.1} ms late (checkpoint {checkpoint_ms:.0} ms, restore {restore_ms:.0} ms)");
    }
}

#[test]
fn time_namespaces_made_in_the_pod_keep_their_offsets_to_the_pod() {
    if !supported() || !installed(&["unshare"], "unshare (util-linux)") {
        return;
    }
    let e = env();
    let Some(prog) = build_prog("clocks", &e.work, &[]) else { return };
    let pod = name("nested");
    let nested = e.work.join("nested.log");
    let p = prog.to_str().unwrap();
    let script = format!("unshare -T --monotonic 86400 --boottime 172800 {p} print > {} & exec {p} print", nested.display());
    ok(&e, &["run", "--name", &pod, "--", "sh", "-c", &script]);
    let _g = PodGuard(&e, pod.clone());
    // The nested clocks ahead of the pod's, from the last samples of both (10 ms apart at most).
    let ahead = |pod_log: &Path| {
        let (a, b) = (samples(pod_log).last().copied().unwrap(), samples(&nested).last().copied().unwrap());
        ((b.mono - a.mono) as f64 / 1e9, (b.boot - a.boot) as f64 / 1e9)
    };
    assert!(wait_for(Duration::from_secs(10), || samples(&console(&e, &pod)).len() >= 20 && samples(&nested).len() >= 20), "the programs do not print");
    let before = ahead(&console(&e, &pod));
    assert!((before.0 - 86400.0).abs() < 0.5 && (before.1 - 172800.0).abs() < 0.5, "nested offsets before: {before:?}");
    ok(&e, &["checkpoint", &pod]);
    std::thread::sleep(Duration::from_secs(3));
    ok(&e, &["restore", &pod]);
    let log = console(&e, &pod);
    assert!(more_samples(&log, 30) && more_samples(&nested, 30), "the programs do not go on");
    let after = ahead(&log);
    eprintln!("nested time namespace ahead of the pod's by {before:?} s before, {after:?} s after the restore");
    assert!((after.0 - 86400.0).abs() < 0.5 && (after.1 - 172800.0).abs() < 0.5, "nested offsets after the restore: {after:?}");
    largest_step("nested namespace", &samples(&nested));
}

/// Starts the clocks program printing in pod `name` on host a of `h`, at address `.octet` of the
/// LAN, and waits for its first samples; `None` (the test skips) when the program cannot be
/// built. The returned directory holds the program: keep it while the pod runs.
fn clocks_pod_on_a(h: &hosts::Hosts, name: &str, octet: u8) -> Option<tempfile::TempDir> {
    h.keys();
    let work = tempfile::Builder::new().prefix("zap-clocks-").tempdir_in("/var/tmp").unwrap();
    let prog = build_prog("clocks", work.path(), &[])?;
    let ip = format!("{}.{octet}/24", h.net);
    h.ok("a", &["run", "--name", name, "--ip", &ip, "--", prog.to_str().unwrap(), "print"]);
    let log = h.root("a").join(format!("pods/{name}/console.log"));
    assert!(wait_for(Duration::from_secs(10), || samples(&log).len() >= 20), "the program does not print");
    Some(work)
}

#[test]
fn monotonic_goes_on_across_a_migration() {
    if !supported() {
        return;
    }
    let Some(h) = hosts::Hosts::up() else { return };
    let Some(_work) = clocks_pod_on_a(&h, "tm", 60) else { return };
    let log = |host: &str| h.root(host).join("pods/tm/console.log");
    let mut host = "a";
    for next in ["b", "a"] {
        let out = h.migrate(host, next, "tm", &["--json"]);
        assert!(out.status.success(), "{host} -> {next}: {}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let downtime = report["downtime_ms"].as_f64().unwrap();
        assert!(more_samples(&log(next), 30), "{host} -> {next}: the program does not go on");
        let s = samples(&log(next));
        let (gap, i) = largest_step(&format!("{host} -> {next}"), &s);
        same_step_on_all_clocks(&format!("{host} -> {next}"), &s, i);
        eprintln!("{host} -> {next}: the pod's clocks moved {gap:.1} ms across the move (downtime {downtime:.0} ms)");
        assert!(gap <= downtime + 300.0, "{host} -> {next}: the pod saw {gap:.1} ms for a downtime of {downtime:.0} ms");
        host = next;
    }
    h.ok(host, &["rm", "-f", "tm"]);
}

/// The destination's pod follows the source's clocks from the offer's arrival on; should the offer
/// have taken longer than the pod was stopped (simulated: the destination takes it to have
/// arrived 2 s late), the pod's clocks would go back at the handover: the destination rebuilds
/// the pod in the final round with its clocks going on from the image's, and says so.
#[test]
fn a_late_offer_makes_the_destination_rebuild_rather_than_go_back() {
    if !supported() {
        return;
    }
    let Some(h) = hosts::Hosts::up() else { return };
    let Some(_work) = clocks_pod_on_a(&h, "tl", 61) else { return };
    let log = |host: &str| h.root(host).join("pods/tl/console.log");
    let out = h.migrate_env("a", "b", "tl", &["--json"], &[], "ZAP_MIGRATE_FAULT=dest-offer-late@2000");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let memory = report["memory"].as_str().unwrap_or_default().to_string();
    assert!(memory.contains("the pod's clocks would go back by"), "no rebuild for the clocks: {report}");
    let downtime = report["downtime_ms"].as_f64().unwrap();
    assert!(more_samples(&log("b"), 30), "the program does not go on");
    let s = samples(&log("b"));
    let (gap, i) = largest_step("a -> b", &s);
    same_step_on_all_clocks("a -> b", &s, i);
    eprintln!("late offer: {memory}; the pod's clocks moved {gap:.1} ms across the move (downtime {downtime:.0} ms)");
    assert!(gap <= downtime + 300.0, "the pod saw {gap:.1} ms for a downtime of {downtime:.0} ms");
    h.ok("b", &["rm", "-f", "tl"]);
}
