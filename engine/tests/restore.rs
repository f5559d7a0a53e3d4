//! Checkpoint and restore of real, unmodified programs (our own C programs, built with gcc by
//! the test). Each test checkpoints a running program, kills the original, restores it in a new
//! PID namespace with its saved pid, and checks that it continues with the right state.
mod common;

use std::time::Duration;

use common::*;
use zap_engine::process::{checkpoint, restore, CheckpointOptions, ProcessImage};
use zap_store::{ImageStore, LocalStore, StoreOptions};

fn store(dir: &std::path::Path) -> LocalStore {
    LocalStore::open(dir.join("store"), StoreOptions { create: true, ..Default::default() }).unwrap()
}

fn lines(path: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| l.parse().ok()).collect()
}

fn assert_consecutive(v: &[u64]) {
    for w in v.windows(2) {
        assert_eq!(w[1], w[0] + 1000, "sequence broken: {v:?}");
    }
}

#[test]
fn counter_continues_after_restore() {
    let dir = tempfile::tempdir().unwrap();
    let Some(prog) = build("counter", dir.path(), &[]) else { return };
    let out = dir.path().join("counter.out");
    let orig = start(&prog, &[out.to_str().unwrap()]);
    let pid = orig.0.id() as i32;
    assert!(wait_for(Duration::from_secs(5), || lines(&out).len() >= 3), "counter did not start");
    let store = store(dir.path());
    let report = checkpoint(&store, pid, &CheckpointOptions::default()).expect("checkpoint");
    drop(orig);
    wait_gone(pid);
    let before = lines(&out);
    assert_consecutive(&before);
    let restored = RestoredProc(restore(&store, &report.summary.id).expect("restore"));
    assert_eq!(restored.0.vpid, pid, "restored with its saved pid inside its namespace");
    assert!(
        wait_for(Duration::from_secs(5), || lines(&out).len() >= before.len() + 3),
        "restored counter did not continue: {:?}",
        lines(&out)
    );
    let after = lines(&out);
    assert_consecutive(&after);
    assert_eq!(&after[..before.len()], &before[..]);
}

fn text(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Runs one test program through the protocol of `progs/zaptest.h`: start, wait for "ready",
/// checkpoint (the original is killed), restore, create the go file, wait for "ok". Returns the
/// output file's text.
fn run_case(name: &str, gcc: &[&str], extra: &[String]) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let prog = build(name, dir.path(), gcc)?;
    Some(run_prog(&prog, dir.path(), extra))
}

fn run_prog(prog: &std::path::Path, dir: &std::path::Path, extra: &[String]) -> String {
    let out = dir.join("out");
    let go = dir.join("go");
    let mut args = vec![out.to_str().unwrap().to_string(), go.to_str().unwrap().to_string()];
    args.extend(extra.iter().cloned());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let orig = start(prog, &argv);
    let pid = orig.0.id() as i32;
    assert!(wait_for(Duration::from_secs(20), || text(&out).contains("ready")), "{}: no ready: {}", prog.display(), text(&out));
    let store = store(dir);
    let report = checkpoint(&store, pid, &CheckpointOptions::default()).expect("checkpoint");
    drop(orig);
    wait_gone(pid);
    let restored = RestoredProc(restore(&store, &report.summary.id).expect("restore"));
    assert_eq!(restored.0.vpid, pid);
    std::fs::write(&go, b"go").unwrap();
    let done = wait_for(Duration::from_secs(30), || {
        let t = text(&out);
        t.lines().any(|l| l.starts_with("ok") || l.starts_with("FAIL"))
    });
    let t = text(&out);
    assert!(done, "{}: restored program did not finish: {t:?}", prog.display());
    assert!(!t.contains("FAIL"), "{}: {t}", prog.display());
    t
}

#[test]
fn large_heap_is_intact() {
    run_case("heap", &[], &[]);
}

#[test]
fn private_and_shared_file_mappings() {
    let dir = tempfile::tempdir().unwrap();
    let content: Vec<u8> = (0..65536).map(|i| b'a' + (i % 26) as u8).collect();
    let (a, b) = (dir.path().join("private.dat"), dir.path().join("shared.dat"));
    std::fs::write(&a, &content).unwrap();
    std::fs::write(&b, &content).unwrap();
    let extra = [a.to_str().unwrap().to_string(), b.to_str().unwrap().to_string()];
    run_case("filemap", &[], &extra).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), content, "a private mapping must not write to its file");
    let shared = std::fs::read(&b).unwrap();
    assert_eq!(&shared[100..113], b"shared-before");
    assert_eq!(&shared[200..212], b"shared-after", "writes through the restored shared mapping reach the file");
}

#[test]
fn file_offsets_continue() {
    let dir = tempfile::tempdir().unwrap();
    let (w, r) = (dir.path().join("written.dat"), dir.path().join("read.dat"));
    std::fs::write(&r, (0..1000).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>()).unwrap();
    run_case("fileoff", &[], &[w.to_str().unwrap().into(), r.to_str().unwrap().into()]).unwrap();
    let data = std::fs::read(&w).unwrap();
    assert_eq!(data.len(), 2000, "no lost or duplicated bytes");
    assert!(data[..1000].iter().all(|&b| b == b'A') && data[1000..].iter().all(|&b| b == b'B'));
}

#[test]
fn pipe_with_buffered_data_and_eventfd() {
    run_case("pipe", &[], &[]);
}

#[test]
fn signal_handlers_and_blocked_pending_signal() {
    run_case("signals", &[], &[]);
}

#[test]
fn fpu_and_avx_registers_mid_computation() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if !cpuinfo.split_whitespace().any(|f| f == "avx") {
        eprintln!("SKIP: this CPU has no AVX");
        return;
    }
    let t = run_case("fpu", &["-mavx"], &[]).unwrap_or_default();
    assert!(t.contains("ok"));
}

#[test]
fn vdso_clock_calls_keep_working() {
    run_case("vdso", &[], &[]);
}

#[test]
fn statically_linked_binary() {
    let dir = tempfile::tempdir().unwrap();
    let Some(prog) = build("heap", dir.path(), &["-static"]) else { return };
    let maps_has_no_libc = {
        let out = std::process::Command::new("file").arg(&prog).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).contains("statically")).unwrap_or(true)
    };
    assert!(maps_has_no_libc, "gcc -static did not produce a static binary");
    run_prog(&prog, dir.path(), &[]);
}

/// Debian programs: the output file is written by the program itself (python's file object,
/// bash's `>>` redirection); lines are consecutive numbers, so a restore must continue exactly.
fn run_numbered(cmd: &str, args: &[&str], out: &std::path::Path, dir: &std::path::Path) {
    run_numbered_threads(cmd, args, out, dir, 1);
}

/// [`run_numbered`] for a program that has at least `threads` threads when it is checkpointed.
fn run_numbered_threads(cmd: &str, args: &[&str], out: &std::path::Path, dir: &std::path::Path, threads: usize) {
    let Ok(path) = which(cmd) else {
        eprintln!("SKIP: {cmd} not installed");
        return;
    };
    let orig = start(&path, args);
    let pid = orig.0.id() as i32;
    assert!(wait_for(Duration::from_secs(20), || lines(out).len() >= 5), "{cmd} did not start: {}", text(out));
    let count = || std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0);
    assert!(wait_for(Duration::from_secs(10), || count() >= threads), "{cmd} has {} threads, want {threads}", count());
    let store = store(dir);
    let report = checkpoint(&store, pid, &CheckpointOptions::default()).unwrap_or_else(|e| panic!("checkpoint {cmd}: {e}"));
    drop(orig);
    wait_gone(pid);
    let before = lines(out);
    let restored = RestoredProc(restore(&store, &report.summary.id).unwrap_or_else(|e| panic!("restore {cmd}: {e}")));
    let rcount = std::fs::read_dir(format!("/proc/{}/task", restored.0.pid)).map(|d| d.count()).unwrap_or(0);
    assert!(rcount >= threads, "restored {cmd} has {rcount} threads, want {threads}");
    assert!(
        wait_for(Duration::from_secs(20), || lines(out).len() >= before.len() + 5),
        "restored {cmd} did not continue: {:?}",
        lines(out)
    );
    let after = lines(out);
    for w in after.windows(2) {
        assert_eq!(w[1], w[0] + 1, "{cmd}: sequence broken around {w:?}");
    }
    assert_eq!(&after[..before.len()], &before[..]);
    drop(restored);
}

fn which(cmd: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| std::path::Path::new(d).join(cmd))
        .find(|p| p.is_file())
        .ok_or(())
}

#[test]
fn python3_with_object_state() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("py.out");
    let script = format!(
        r#"
import time
class Counter:
    def __init__(self):
        self.n = 0
        self.history = {{}}
    def tick(self):
        self.n += 1
        self.history[self.n] = "x" * (self.n % 50)
        return self.n
c = Counter()
f = open({out:?}, "a", buffering=1)
while True:
    n = c.tick()
    assert len(c.history) == n and c.history[n] == "x" * (n % 50)
    f.write("%d\n" % n)
    time.sleep(0.01)
"#,
        out = out.to_str().unwrap()
    );
    run_numbered("python3", &["-c", &script], &out, dir.path());
}

#[test]
fn bash_script() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bash.out");
    let script = format!(
        "i=0; exec 3>>{out}; while true; do i=$((i+1)); echo $i >&3; s=0; for ((j=1; j<=200; j++)); do s=$((s+j)); done; done",
        out = out.to_str().unwrap()
    );
    run_numbered("bash", &["-c", &script], &out, dir.path());
}

#[test]
fn leave_running_then_two_restores() {
    let dir = tempfile::tempdir().unwrap();
    let Some(prog) = build("counter", dir.path(), &[]) else { return };
    let out = dir.path().join("counter.out");
    let orig = start(&prog, &[out.to_str().unwrap()]);
    let pid = orig.0.id() as i32;
    assert!(wait_for(Duration::from_secs(5), || lines(&out).len() >= 3));
    let store = store(dir.path());
    let report = checkpoint(&store, pid, &CheckpointOptions { leave_running: true, ..Default::default() }).expect("checkpoint");
    // The original goes on after a --leave-running checkpoint.
    let n = lines(&out).len();
    assert!(wait_for(Duration::from_secs(5), || lines(&out).len() >= n + 3), "original stopped after leave-running");
    drop(orig);
    wait_gone(pid);
    // Two copies from the same checkpoint, each in its own PID namespace with the same pid.
    let first = RestoredProc(restore(&store, &report.summary.id).expect("first restore"));
    let second = RestoredProc(restore(&store, &report.summary.id).expect("second restore"));
    assert_eq!((first.0.vpid, second.0.vpid), (pid, pid));
    assert_ne!(first.0.pid, second.0.pid);
    assert_ne!(first.0.init_pid, second.0.init_pid);
    let ns = |p: i32| std::fs::read_link(format!("/proc/{p}/ns/pid")).unwrap();
    assert_ne!(ns(first.0.pid), ns(second.0.pid), "separate PID namespaces");
    let base = lines(&out).len();
    assert!(wait_for(Duration::from_secs(10), || lines(&out).len() >= base + 6), "restored copies did not run");
    // Both continue from the checkpointed counter: every value they append follows one that was
    // in the file at checkpoint time or that they appended themselves.
    let all = lines(&out);
    let checkpointed: Vec<u64> = all[..n].to_vec();
    let c_last = *checkpointed.last().unwrap();
    let new: Vec<u64> = all[base..].to_vec();
    let min_new = *new.iter().min().unwrap();
    assert!(min_new <= c_last + 1000 * 3, "copies did not resume from the checkpoint: {new:?} after {c_last}");
    for p in [first.0.pid, second.0.pid] {
        let st = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap();
        let state = st.rsplit_once(')').unwrap().1.split_whitespace().next().unwrap().to_string();
        assert!(state == "R" || state == "S", "restored copy {p} is in state {state}");
    }
}

#[test]
fn unsupported_fd_fails_loudly_and_leaves_the_process_running() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sock.out");
    let script = format!(
        "import ctypes, os, time\nparams = ctypes.create_string_buffer(120)\nring = ctypes.CDLL(None, use_errno=True).syscall(425, 4, params)\nassert ring >= 0, os.strerror(ctypes.get_errno())\nf = open({:?}, 'a', buffering=1)\nn = 0\nwhile True:\n    n += 1\n    f.write('%d\\n' % n)\n    time.sleep(0.01)\n",
        out.to_str().unwrap()
    );
    let Ok(py) = which("python3") else {
        eprintln!("SKIP: python3 not installed");
        return;
    };
    let orig = start(&py, &["-c", &script]);
    let pid = orig.0.id() as i32;
    assert!(wait_for(Duration::from_secs(20), || lines(&out).len() >= 3));
    let store = store(dir.path());
    let err = checkpoint(&store, pid, &CheckpointOptions::default()).unwrap_err().to_string();
    assert!(err.contains(&format!("pid {pid}")) && err.contains("fd ") && err.contains("io_uring"), "{err}");
    assert!(store.list().unwrap().is_empty(), "a failed checkpoint commits nothing");
    let n = lines(&out).len();
    assert!(wait_for(Duration::from_secs(5), || lines(&out).len() >= n + 3), "process stopped after a failed checkpoint");
}

#[test]
fn gone_pid_is_a_clear_error() {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id() as i32;
    child.wait().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = checkpoint(&store(dir.path()), pid, &CheckpointOptions::default()).unwrap_err().to_string();
    assert!(err.contains(&pid.to_string()), "{err}");
}

#[test]
fn named_fifo_with_buffered_data() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    run_case("fifo", &[], &[fifo.to_str().unwrap().into()]);
}

#[test]
fn shared_anonymous_memory_and_guard_region() {
    run_case("shmanon", &[], &[]);
}

#[test]
fn armed_interval_timers_run_on_after_restore() {
    run_case("alarm", &[], &[]);
}

#[test]
fn posix_timers_keep_their_ids_and_run_on() {
    run_case("posixtimer", &["-lrt"], &[]);
}

/// (id in the process's PID namespace, name) of every thread of `pid`, sorted.
fn thread_ids_and_names(pid: i32) -> Vec<(i32, String)> {
    let mut v: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok())).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|tid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
            let vtid = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?.split_whitespace().last()?.parse().ok()?;
            let name = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?.trim_end().to_string();
            Some((vtid, name))
        })
        .collect();
    v.sort();
    v
}

fn progress_lines(path: &std::path::Path) -> Vec<Vec<u64>> {
    text(path)
        .lines()
        .filter_map(|l| l.strip_prefix("progress "))
        .map(|l| l.split_whitespace().filter_map(|w| w.parse().ok()).collect::<Vec<u64>>())
        .filter(|v| v.len() == 9)
        .collect()
}

#[test]
fn threads_keep_tids_names_counters_and_condvar_handoffs() {
    let dir = tempfile::tempdir().unwrap();
    let Some(prog) = build("threads", dir.path(), &["-pthread"]) else { return };
    let (out, go) = (dir.path().join("out"), dir.path().join("go"));
    let orig = start(&prog, &[out.to_str().unwrap(), go.to_str().unwrap()]);
    let pid = orig.0.id() as i32;
    assert!(wait_for(Duration::from_secs(20), || text(&out).contains("ready")), "no ready: {}", text(&out));
    let threads_before = thread_ids_and_names(pid);
    assert_eq!(threads_before.len(), 9, "{threads_before:?}");
    let store = store(dir.path());
    let report = checkpoint(&store, pid, &CheckpointOptions::default()).expect("checkpoint");
    drop(orig);
    wait_gone(pid);
    let before = progress_lines(&out);
    let last_before = before.last().expect("progress before the checkpoint").clone();
    let restored = RestoredProc(restore(&store, &report.summary.id).expect("restore"));
    assert_eq!(restored.0.vpid, pid);
    assert_eq!(thread_ids_and_names(restored.0.pid), threads_before, "same thread ids and names after restore");
    // A second checkpoint of the restored process (it runs on) sees the same per-thread kernel
    // state: tids, names, masks, queued signals, rseq areas, robust lists, tid addresses,
    // alternate stacks.
    let again = checkpoint(&store, restored.0.pid, &CheckpointOptions { leave_running: true, ..Default::default() })
        .expect("checkpoint of the restored process");
    let image = |id| ProcessImage::decode(&store.manifest(id).unwrap().state).unwrap();
    let (first, second) = (image(&report.summary.id), image(&again.summary.id));
    assert_eq!(first.threads.len(), 9);
    assert_eq!(first.threads[0].vtid, pid, "main thread first");
    let key = |t: &zap_engine::cpu::ThreadState| {
        (t.vtid, t.name.clone(), t.sigmask, t.pending.clone(), t.rseq, t.robust_list, t.tid_address, t.altstack)
    };
    let (mut a, mut b): (Vec<_>, Vec<_>) = (first.threads.iter().map(key).collect(), second.threads.iter().map(key).collect());
    a.sort_by_key(|k| k.0);
    b.sort_by_key(|k| k.0);
    assert_eq!(a, b, "per-thread state after restore");
    assert!(a.iter().all(|k| k.4.rseq_abi_pointer != 0 && k.5 .0 != 0 && k.6 != 0), "glibc registered rseq, robust list, tid address");
    assert_eq!(a.iter().filter(|k| k.7 .1 & libc::SS_DISABLE == 0).count(), 1, "one thread with an alternate stack");
    assert_eq!(a.iter().filter(|k| !k.3.is_empty()).count(), 1, "one thread with a queued signal");
    assert!(
        wait_for(Duration::from_secs(10), || progress_lines(&out).len() >= before.len() + 3),
        "restored threads make no progress: {}",
        text(&out).lines().last().unwrap_or("")
    );
    let first_after = &progress_lines(&out)[before.len()];
    for (i, (a, b)) in first_after.iter().zip(&last_before).enumerate() {
        assert!(a >= b, "counter {i} went back from {b} to {a}");
    }
    std::fs::write(&go, b"go").unwrap();
    let done = wait_for(Duration::from_secs(30), || text(&out).lines().any(|l| l.starts_with("ok") || l.starts_with("FAIL")));
    let t = text(&out);
    assert!(done && !t.contains("FAIL"), "restored program did not finish well: {}", t.lines().last().unwrap_or(""));
    let last = progress_lines(&out).last().unwrap().clone();
    assert!(last.iter().zip(&last_before).all(|(a, b)| a > b), "every counter advanced: {last_before:?} -> {last:?}");
    // All threads joined: the process exits by itself.
    let rpid = restored.0.pid;
    assert!(
        wait_for(Duration::from_secs(10), || {
            std::fs::read_to_string(format!("/proc/{rpid}/stat"))
                .map(|s| s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()) == Some("Z"))
                .unwrap_or(true)
        }),
        "restored program did not exit after ok"
    );
}

#[test]
fn python3_thread_pool() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pool.out");
    let script = format!(
        r#"
import time
from concurrent.futures import ThreadPoolExecutor
def work(k):
    return sum(i * i for i in range(k))
pool = ThreadPoolExecutor(max_workers=4)
f = open({out:?}, "a", buffering=1)
n = 0
while True:
    n += 1
    ks = [1000 + (n * 7 + j) % 500 for j in range(8)]
    got = list(pool.map(work, ks))
    assert got == [sum(i * i for i in range(k)) for k in ks], (n, got)
    f.write("%d\n" % n)
    time.sleep(0.01)
"#,
        out = out.to_str().unwrap()
    );
    run_numbered_threads("python3", &["-c", &script], &out, dir.path(), 5);
}

#[test]
fn threads_checkpointed_again_from_a_restore_and_restored_again() {
    let dir = tempfile::tempdir().unwrap();
    let Some(prog) = build("threads", dir.path(), &["-pthread"]) else { return };
    let (out, go) = (dir.path().join("out"), dir.path().join("go"));
    let orig = start(&prog, &[out.to_str().unwrap(), go.to_str().unwrap()]);
    let pid = orig.0.id() as i32;
    assert!(wait_for(Duration::from_secs(20), || text(&out).contains("ready")), "no ready: {}", text(&out));
    let threads_before = thread_ids_and_names(pid);
    let store = store(dir.path());
    let first = checkpoint(&store, pid, &CheckpointOptions::default()).expect("checkpoint");
    drop(orig);
    wait_gone(pid);
    let restored = RestoredProc(restore(&store, &first.summary.id).expect("restore"));
    let n = progress_lines(&out).len();
    assert!(wait_for(Duration::from_secs(10), || progress_lines(&out).len() >= n + 2), "restored copy makes no progress");
    // Checkpoint the restored copy, which is not our child (its parent is the namespace's init):
    // it is killed, and its threads' exits are collected so that its init can reap it.
    let rpid = restored.0.pid;
    let second = checkpoint(&store, rpid, &CheckpointOptions::default()).expect("checkpoint of the restored copy");
    assert!(
        wait_for(Duration::from_secs(2), || !std::path::Path::new(&format!("/proc/{rpid}")).exists()),
        "killed restored copy was not reaped by its init"
    );
    drop(restored);
    let again = RestoredProc(restore(&store, &second.summary.id).expect("second restore"));
    assert_eq!(again.0.vpid, pid);
    assert_eq!(thread_ids_and_names(again.0.pid), threads_before, "same thread ids and names after two restores");
    std::fs::write(&go, b"go").unwrap();
    let done = wait_for(Duration::from_secs(30), || text(&out).lines().any(|l| l.starts_with("ok") || l.starts_with("FAIL")));
    let t = text(&out);
    assert!(done && !t.contains("FAIL"), "twice restored program did not finish well: {}", t.lines().last().unwrap_or(""));
}

#[test]
fn unix_socketpairs_with_queued_data_and_listening_tcp() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let Some(prog) = build("sockets", dir.path(), &[]) else { return };
    // A free port pair on loopback: bind port 0, take the number, release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (out, go) = (dir.path().join("out"), dir.path().join("go"));
    let orig = start(&prog, &[out.to_str().unwrap(), go.to_str().unwrap(), &port.to_string()]);
    let pid = orig.0.id() as i32;
    assert!(wait_for(Duration::from_secs(20), || text(&out).contains("ready")), "no ready: {}", text(&out));
    let store = store(dir.path());
    let report = checkpoint(&store, pid, &CheckpointOptions::default()).expect("checkpoint");
    drop(orig);
    wait_gone(pid);
    let _restored = RestoredProc(restore(&store, &report.summary.id).expect("restore"));
    std::fs::write(&go, b"go").unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || text(&out).contains("listening") || text(&out).contains("FAIL")),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("FAIL"), "{}", text(&out));
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the restored listener");
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"ping").unwrap();
    let mut reply = [0u8; 4];
    c.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"pong");
    assert!(wait_for(Duration::from_secs(10), || text(&out).contains("ok")), "{}", text(&out));
}

#[test]
fn timerfd_signalfd_and_inotify() {
    run_case("fdkinds", &[], &[]);
}

#[test]
fn deleted_files_tmpfiles_and_memfds() {
    run_case("deleted", &[], &[]);
}
