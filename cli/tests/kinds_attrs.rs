//! Process attributes, processes of other users and stopped processes, each kind run in a pod
//! by a small C program of `engine/tests/progs` (the protocol of `zaptest.h`: it sets its state
//! up, says "ready", waits for the go file after the restore, checks what it sees against what
//! it set up and says "ok" or "FAIL <why>"); the pod is checkpointed (it ends), restored, and the
//! program's verdict read. Then real servers that drop privileges (our own preforking server;
//! nginx with its master as root and workers as www-data) checkpointed while a client fetches
//! pages, answering new clients after the restore. A process traced by another tracer is
//! refused, leaving its pod running.
mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn name(tag: &str) -> String {
    format!("at{}-{tag}", std::process::id())
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

/// Lets processes of other users (nobody, www-data) reach the test's work directory.
fn open_work_dir(e: &Env) {
    for dir in [e.work.parent().unwrap(), e.work.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

fn text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Prints the program's notes (parts the kernel refused before the checkpoint) as skips.
fn print_notes(out: &str) {
    for l in out.lines().filter_map(|l| l.strip_prefix("note: ")) {
        eprintln!("SKIP: {l}");
    }
}

/// Runs `prog OUT GO ARGS...` in a new pod, waits for `ready` lines (all of `ready`), then
/// checkpoints the pod (which ends it), restores it, creates the go file and waits until every
/// line of `verdicts` is there (or a FAIL). Returns the output and the restore's warnings.
fn cycle(e: &Env, tag: &str, prog: &Path, args: &[&str], ready: &[&str], verdicts: &[&str]) -> (String, Vec<String>) {
    let pod = name(tag);
    let (out, go) = (e.work.join(format!("{tag}.out")), e.work.join(format!("{tag}.go")));
    let mut argv = vec![prog.to_str().unwrap(), out.to_str().unwrap(), go.to_str().unwrap()];
    argv.extend_from_slice(args);
    let mut run = vec!["run", "--name", &pod, "--"];
    run.extend_from_slice(&argv);
    ok(e, &run);
    let _g = PodGuard(e, pod.clone());
    let has = |t: &str, l: &str| t.lines().any(|x| x == l);
    assert!(
        wait_for(Duration::from_secs(20), || { let t = text(&out); t.contains("FAIL") || ready.iter().all(|r| has(&t, r)) }),
        "{tag}: not ready: {}",
        text(&out)
    );
    assert!(!text(&out).contains("FAIL"), "{tag}: {}", text(&out));
    let id = ok(e, &["checkpoint", &pod]).trim().to_string();
    assert!(!ok(e, &["ps"]).lines().any(|l| l.starts_with(&format!("{pod} "))), "{tag}: the checkpointed pod is gone");
    let restored = json(e, &["restore", &id]);
    let warnings: Vec<String> =
        restored["warnings"].as_array().map(|w| w.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default();
    std::fs::write(&go, b"go").unwrap();
    let done = wait_for(Duration::from_secs(30), || {
        let t = text(&out);
        t.contains("FAIL") || verdicts.iter().all(|v| has(&t, v))
    });
    let t = text(&out);
    assert!(done && !t.contains("FAIL"), "{tag}: {t}\nrestore warnings: {warnings:?}");
    print_notes(&t);
    (t, warnings)
}

#[test]
fn other_user_with_caps_limits_securebits_and_seccomp() {
    let e = env();
    open_work_dir(&e);
    let Some(prog) = build_prog("attrs_user", &e.work) else { return };
    let (_, warnings) = cycle(&e, "user", &prog, &["81"], &["ready"], &["ok"]);
    assert!(warnings.is_empty(), "restored without warnings: {warnings:?}");
}

#[test]
fn scheduling_and_per_thread_attributes() {
    let e = env();
    let Some(prog) = build_prog("attrs_sched", &e.work) else { return };
    let (_, warnings) = cycle(&e, "sched", &prog, &[], &["ready"], &["ok"]);
    // Setting a loginuid starts a new audit session: the only warning allowed.
    assert!(warnings.iter().all(|w| w.contains("audit sessionid")), "{warnings:?}");
}

#[test]
fn seccomp_filters_in_order_and_strict_mode() {
    let e = env();
    let Some(prog) = build_prog("attrs_seccomp", &e.work) else { return };
    let (_, warnings) = cycle(&e, "seccomp", &prog, &[], &["ready", "child ready"], &["ok", "child ok"]);
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn stopped_processes_stay_stopped_with_their_signal() {
    let e = env();
    let Some(prog) = build_prog("attrs_stop", &e.work) else { return };
    cycle(&e, "stop", &prog, &[], &["ready"], &["ok"]);
}

#[test]
fn job_stopped_from_a_shell_comes_back_stopped() {
    if Command::new("bash").arg("-c").arg("true").status().is_err() {
        eprintln!("SKIP: bash not installed");
        return;
    }
    let e = env();
    let pod = name("job");
    let w = |f: &str| e.work.join(f).to_str().unwrap().to_string();
    // Job control on: the job is in a group of its own; `kill -TSTP %1` stops it as ^Z would.
    // The shell then waits without forking (a builtin `read` with a timeout on a FIFO it holds
    // open both ways), so the checkpoint never finds it between a fork and an exec.
    let script = format!(
        "set -m; sleep 1000 & while [ \"$(cat /proc/$!/comm)\" != sleep ]; do :; done; kill -TSTP %1; while ! jobs -l | grep -q Stopped; do sleep 0.02; done; mkfifo {fifo}; exec 5<>{fifo}; \
         echo ready > {out}; while [ ! -e {go} ]; do read -t 0.05 -u 5 x; done; ps -o stat= -p $! > {s1}; jobs -l > {jobs}; \
         kill -CONT %1; sleep 0.3; ps -o stat= -p $! > {s2}; kill %1; wait; echo done >> {out}",
        fifo = w("fifo"),
        out = w("out"),
        go = w("go"),
        s1 = w("state1"),
        s2 = w("state2"),
        jobs = w("jobs")
    );
    ok(&e, &["run", "--name", &pod, "--", "bash", "-c", &script]);
    let _g = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(10), || text(&e.work.join("out")).contains("ready")), "job not stopped");
    let id = ok(&e, &["checkpoint", &pod]).trim().to_string();
    ok(&e, &["restore", &id]);
    let stat = ok(&e, &["exec", &pod, "--", "ps", "-e", "-o", "stat=,comm="]);
    assert!(stat.lines().any(|l| l.trim_start().starts_with('T') && l.ends_with("sleep")), "the job is stopped after the restore: {stat}");
    std::fs::write(e.work.join("go"), b"go").unwrap();
    assert!(wait_for(Duration::from_secs(10), || text(&e.work.join("out")).contains("done")), "shell did not finish");
    assert!(text(&e.work.join("state1")).trim_start().starts_with('T'), "stopped: {}", text(&e.work.join("state1")));
    assert!(text(&e.work.join("jobs")).contains("Stopped"), "bash sees its job stopped: {}", text(&e.work.join("jobs")));
    assert!(!text(&e.work.join("state2")).trim_start().starts_with('T'), "resumed by SIGCONT: {}", text(&e.work.join("state2")));
}

#[test]
fn posix_timers_signal_the_same_thread() {
    let e = env();
    let Some(prog) = build_prog("attrs_timer", &e.work) else { return };
    cycle(&e, "timer", &prog, &[], &["ready"], &["ok"]);
}

#[test]
fn process_traced_by_another_tracer_is_refused_and_keeps_running() {
    let e = env();
    let Some(prog) = build_prog("attrs_traced", &e.work) else { return };
    let pod = name("traced");
    let (out, go) = (e.work.join("out"), e.work.join("go"));
    ok(&e, &["run", "--name", &pod, "--", prog.to_str().unwrap(), out.to_str().unwrap(), go.to_str().unwrap()]);
    let _g = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(10), || text(&out).contains("ready")), "{}", text(&out));
    let r = zap(&e, &["checkpoint", &pod]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && err.contains("is traced by process"), "refused naming the tracer: {err}");
    assert!(ok(&e, &["ps"]).lines().any(|l| l.starts_with(&format!("{pod} ")) && l.contains("running")), "the pod runs on");
    std::fs::write(&go, b"go").unwrap();
    assert!(wait_for(Duration::from_secs(10), || text(&out).contains("ok") || text(&out).contains("FAIL")), "{}", text(&out));
    assert!(text(&out).contains("child runs") && !text(&out).contains("FAIL"), "{}", text(&out));
}
