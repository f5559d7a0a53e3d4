//! Files and descriptors in pods, one small C program per group of kinds (in
//! `engine/tests/progs`): each sets its state up in a pod, the pod is checkpointed (it ends) and
//! restored, and the program checks what it sees against what it set up. Half-open pipes and
//! FIFOs, file locks of every kind (also tried from outside after the restore), open flags and
//! file kinds, epoll corner cases and counters, sqlite3 holding a write lock, and the kinds that
//! are refused, with the pod left running.
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

fn name(tag: &str) -> String {
    pod_name("kf", tag)
}

/// Runs program `prog` in a new pod with (out, go, a directory of its own, `extra`...), waits for
/// "ready", checkpoints the pod (it ends), restores it, runs `after_restore` on the directory
/// (checks from outside), then lets the program check itself. Returns the program's output.
fn run_kind(e: &Env, prog: &str, extra: &[&str], after_restore: impl FnOnce(&Path)) -> Option<String> {
    let bin = build_prog(prog, &e.work, &[])?;
    let pod = name(prog);
    let (out, go, dir) = (e.work.join("out"), e.work.join("go"), e.work.join("dir"));
    std::fs::create_dir_all(&dir).unwrap();
    let text = || std::fs::read_to_string(&out).unwrap_or_default();
    let mut args = vec!["run", "--name", &pod, "--", bin.to_str().unwrap(), out.to_str().unwrap(), go.to_str().unwrap(), dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    ok(e, &args);
    let _g = PodGuard(e, pod.clone());
    assert!(wait_for(Duration::from_secs(10), || text().contains("ready") || text().contains("FAIL")), "{prog}: no ready: {}", text());
    assert!(!text().contains("FAIL"), "{prog}: {}", text());
    let id = ok(e, &["checkpoint", &pod]).trim().to_string();
    assert!(!ok(e, &["ps"]).contains(&pod), "the checkpoint ended the pod");
    ok(e, &["restore", &id]);
    after_restore(&dir);
    std::fs::write(&go, b"go").unwrap();
    assert!(wait_for(Duration::from_secs(20), || text().contains("ok") || text().contains("FAIL")), "{prog}: no verdict: {}", text());
    assert!(!text().contains("FAIL"), "{prog}: {}", text());
    Some(text())
}

#[test]
fn half_open_pipes_and_fifos_sizes_and_packet_mode() {
    let e = env();
    run_kind(&e, "halfpipe", &[], |_| {});
}

/// Exit status of `flock ARGS` run from the host (outside the pod).
fn flock_from_outside(args: &[&str]) -> i32 {
    Command::new("flock").args(args).arg("true").status().expect("run flock").code().unwrap_or(-1)
}

#[test]
fn file_locks_of_every_kind_are_held_after_restore() {
    let e = env();
    run_kind(&e, "locks", &[], |dir| {
        // From the host: the exclusive flock and the POSIX write lock are held, a shared flock
        // can still be shared.
        let ex = dir.join("flock-ex");
        assert_eq!(flock_from_outside(&["-n", ex.to_str().unwrap()]), 1, "flock -n on the restored exclusive lock must fail");
        let sh = dir.join("flock-sh");
        assert_eq!(flock_from_outside(&["-n", "-s", sh.to_str().unwrap()]), 0, "a shared flock is shared");
        assert_eq!(flock_from_outside(&["-n", sh.to_str().unwrap()]), 1, "but not taken exclusively");
        if have("python3") {
            let posix = dir.join("posix");
            let script = format!(
                "import fcntl, sys\nf = open({:?}, 'r+')\ntry:\n    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 5, 0)\nexcept OSError:\n    sys.exit(7)\n",
                posix.to_str().unwrap()
            );
            let st = Command::new("python3").args(["-c", &script]).status().unwrap();
            assert_eq!(st.code(), Some(7), "the POSIX write lock must refuse another process");
        }
    });
}

#[test]
fn open_flags_opath_owners_deleted_dirs_sparse_files_and_pidfds() {
    let e = env();
    run_kind(&e, "fileflags", &[], |_| {});
}

#[test]
fn epoll_corner_cases_timerfd_ticks_eventfd_semaphore_signalfd_flags() {
    let e = env();
    run_kind(&e, "epollmore", &[], |_| {});
}

#[test]
fn sqlite3_write_lock_held_across_restore_then_commits() {
    if !installed(&["sqlite3"], "sqlite3") {
        return;
    }
    let e = env();
    let pod = name("sqlite");
    let (db, ready, go, done) = (e.work.join("db"), e.work.join("ready"), e.work.join("go"), e.work.join("done"));
    // Debian's sqlite3 shell, fed by a shell: an open write transaction (BEGIN IMMEDIATE holds
    // its RESERVED lock, a POSIX lock on the database file) with 100 rows, committed once the go
    // file exists.
    let script = format!(
        "(echo 'CREATE TABLE IF NOT EXISTS t(x); BEGIN IMMEDIATE;'; for i in $(seq 1 100); do echo \"INSERT INTO t VALUES($i);\"; done; \
         echo '.shell touch {ready}'; while [ ! -e {go} ]; do sleep 0.02; done; echo 'COMMIT;'; echo '.shell touch {done}') | sqlite3 {db}",
        ready = ready.display(),
        go = go.display(),
        done = done.display(),
        db = db.display()
    );
    ok(&e, &["run", "--name", &pod, "--", "sh", "-c", &script]);
    let _g = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(10), || ready.exists()), "the transaction did not start");
    let write_from_outside = || Command::new("sqlite3").arg(&db).arg("INSERT INTO t VALUES(0);").output().unwrap();
    let before = write_from_outside();
    assert!(!before.status.success() && String::from_utf8_lossy(&before.stderr).contains("locked"), "locked before: {before:?}");
    let id = ok(&e, &["checkpoint", &pod]).trim().to_string();
    // The pod is gone: the lock with it.
    let free = Command::new("sqlite3").arg(&db).arg("SELECT count(*) FROM t;").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&free.stdout).trim(), "0", "uncommitted rows are not visible: {free:?}");
    ok(&e, &["restore", &id]);
    let after = write_from_outside();
    let err = String::from_utf8_lossy(&after.stderr);
    assert!(!after.status.success() && err.contains("locked"), "another process must be refused the write lock after restore: {after:?}");
    std::fs::write(&go, b"go").unwrap();
    assert!(wait_for(Duration::from_secs(10), || done.exists()), "the transaction did not commit after the restore");
    let rows = Command::new("sqlite3").arg(&db).arg("SELECT count(*), sum(x) FROM t;").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&rows.stdout).trim(), "100|5050", "the rows are there: {rows:?}");
}

/// Runs `refused` holding `kind` in a pod: the checkpoint must fail naming `want`, and the
/// program must run on.
fn refused(kind: &str, want: &str, setup: impl FnOnce(&Path) -> Option<std::fs::File>) {
    let e = env();
    let Some(bin) = build_prog("refused", &e.work, &[]) else { return };
    let pod = name(&format!("no-{kind}"));
    let (out, go, dir) = (e.work.join("out"), e.work.join("go"), e.work.join("dir"));
    std::fs::create_dir_all(&dir).unwrap();
    let held = setup(&dir);
    let text = || std::fs::read_to_string(&out).unwrap_or_default();
    ok(&e, &["run", "--name", &pod, "--", bin.to_str().unwrap(), out.to_str().unwrap(), go.to_str().unwrap(), dir.to_str().unwrap(), kind]);
    let _g = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(10), || text().contains("ready") || text().contains("FAIL")), "{kind}: {}", text());
    if text().contains("SKIP") {
        eprintln!("{}", text().lines().find(|l| l.starts_with("SKIP")).unwrap());
        return;
    }
    let res = zap(&e, &["checkpoint", &pod]);
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success(), "{kind}: the checkpoint must be refused");
    assert!(err.contains(want) && err.contains("fd "), "{kind}: the error names the fd and why: {err}");
    eprintln!("{kind}: {}", err.trim());
    std::fs::write(&go, b"go").unwrap();
    assert!(wait_for(Duration::from_secs(10), || text().contains("ok")), "{kind}: the pod must run on: {}", text());
    let ls: serde_json::Value = serde_json::from_str(&ok(&e, &["--json", "ls"])).unwrap();
    assert_eq!(ls.as_array().map(|a| a.len()), Some(0), "a refused checkpoint stores nothing: {ls}");
    drop(held);
}

#[test]
fn io_uring_is_refused_and_the_pod_runs_on() {
    refused("uring", "io_uring", |_| None);
}

#[test]
fn userfaultfd_is_refused() {
    refused("uffd", "userfaultfd", |_| None);
}

#[test]
fn inotify_with_queued_events_is_refused() {
    refused("inotify", "inotify instance with", |_| None);
}

#[test]
fn deleted_path_still_linked_elsewhere_is_refused() {
    refused("linked", "still linked elsewhere", |_| None);
}

#[test]
fn memfd_secret_is_refused() {
    refused("secret", "memfd_secret", |_| None);
}

#[test]
fn fifo_held_outside_the_pod_is_refused() {
    refused("fifo-out", "outside the checkpoint", |dir| {
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        use std::os::unix::fs::OpenOptionsExt;
        Some(std::fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap())
    });
}

#[test]
fn mappings_of_deleted_files_and_memfds_shared_with_fds_and_children() {
    let e = env();
    run_kind(&e, "delmaps", &[], |_| {});
}

#[test]
fn pseudo_terminals_controlling_terminal_and_foreground_job() {
    let e = env();
    run_kind(&e, "ptys", &[], |_| {});
}

#[test]
fn file_whose_path_now_leads_elsewhere_is_refused() {
    refused("replaced", "now leads to another file", |_| None);
}

/// 3,000 descriptions of one file at their own offsets, 300 of them dup'ed, all shared with a
/// child: each comes back one description (dups and the child's copies share its offset).
#[test]
fn thousands_of_descriptions_of_one_file_stay_apart_and_shared() {
    let e = env();
    run_kind(&e, "manyfds", &[], |_| {});
}

/// Timerfds armed with `TFD_TIMER_ABSTIME` and `TFD_TIMER_CANCEL_ON_SET` keep their flags, and
/// absolute wall-clock ones their time of day although the restore comes seconds after the
/// checkpoint (`timerabs.c`). Before, every timerfd came back relative, without its flags.
#[test]
fn timerfds_keep_their_settime_flags_and_wall_clock_deadlines() {
    let e = env();
    let Some(bin) = build_prog("timerabs", &e.work, &[]) else { return };
    let pod = name("timerabs");
    let (out, go) = (e.work.join("out"), e.work.join("go"));
    ok(&e, &["run", "--name", &pod, "--", bin.to_str().unwrap(), out.to_str().unwrap(), go.to_str().unwrap()]);
    let _g = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(10), || text(&out).contains("ready") || text(&out).contains("FAIL")), "{}", text(&out));
    let id = ok(&e, &["checkpoint", &pod]).trim().to_string();
    std::thread::sleep(Duration::from_secs(3));
    ok(&e, &["restore", &id]);
    std::fs::write(&go, b"go").unwrap();
    assert!(wait_for(Duration::from_secs(20), || text(&out).contains("ok") || text(&out).contains("FAIL")), "no verdict: {}", text(&out));
    assert!(!text(&out).contains("FAIL"), "{}", text(&out));
}

/// A program whose executable is deleted while it runs (as an upgrade does), holding a deleted
/// data file too: checkpointed (the pod ends) and restored, its `/proc/self/exe` and the data fd
/// name the deleted files as before, and a child can execute `/proc/self/exe` (`exegone.c`).
/// Before, the restore failed opening the executable.
#[test]
fn program_whose_executable_was_deleted_is_restored() {
    let e = env();
    let Some(bin) = build_prog("exegone", &e.work, &[]) else { return };
    let pod = name("exegone");
    let (out, go, dir) = (e.work.join("out"), e.work.join("go"), e.work.join("dir"));
    std::fs::create_dir_all(&dir).unwrap();
    ok(&e, &["run", "--name", &pod, "--", bin.to_str().unwrap(), out.to_str().unwrap(), go.to_str().unwrap(), dir.to_str().unwrap()]);
    let _g = PodGuard(&e, pod.clone());
    assert!(wait_for(Duration::from_secs(10), || text(&out).contains("ready") || text(&out).contains("FAIL")), "{}", text(&out));
    std::fs::remove_file(&bin).unwrap();
    let id = ok(&e, &["checkpoint", &pod]).trim().to_string();
    let restored = json(&e, &["restore", &id]);
    assert!(restored["warnings"].as_array().is_none_or(|w| w.is_empty()), "no warning: {restored}");
    std::fs::write(&go, b"go").unwrap();
    assert!(wait_for(Duration::from_secs(20), || text(&out).contains("ok") || text(&out).contains("FAIL")), "no verdict: {}", text(&out));
    assert!(!text(&out).contains("FAIL"), "{}", text(&out));
    assert!(!bin.exists(), "the copy was not left at the executable's path");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing left beside the deleted data file");
}

#[test]
fn tun_device_attached_to_an_interface_is_refused() {
    if !Path::new("/dev/net/tun").exists() {
        eprintln!("SKIP: no /dev/net/tun (CONFIG_TUN)");
        return;
    }
    refused("tun", "tun/tap device attached to interface zt0", |_| None);
}

#[test]
fn kernel_log_reader_is_refused() {
    refused("kmsg", "kernel log opened for reading", |_| None);
}

/// Devices that keep no state per open file come back reopened: /dev/null, zero, full, urandom,
/// /dev/kmsg write-only, and /dev/net/tun not yet attached (it attaches after the restore).
#[test]
fn stateless_character_devices_are_reopened() {
    let e = env();
    run_kind(&e, "devices", &[], |_| {});
}

#[test]
fn pidfd_of_a_process_outside_is_refused() {
    refused("pidfd-out", "pidfd of process", |_| None);
}

/// Threads that block every signal wait in poll, nanosleep, clock_nanosleep and a futex with
/// timeouts (the kernel restarts those through its restart block, which a restore does not
/// carry): they must go on after the restore without an EINTR they could never see otherwise.
/// (`script` ended its session on such an EINTR: the test below failed about once in 30 runs.)
#[test]
fn waits_with_timeouts_go_on_without_eintr_after_restore() {
    let e = env();
    run_kind(&e, "restartblk", &[], |_| {});
}

#[test]
fn script_shell_session_in_a_pty_keeps_its_terminal() {
    if !installed(&["script"], "script (util-linux)") {
        return;
    }
    let e = env();
    let pod = name("script");
    let w = |f: &str| e.work.join(f).to_str().unwrap().to_string();
    // util-linux's script: a pty pair, a shell session whose controlling terminal is the slave,
    // and a poll loop on the master that ends the session on any error.
    let inner = format!(
        "tty > {t}; while [ ! -e {go} ]; do sleep 0.02; done; tty > {t2}; [ -t 0 ] && echo isatty >> {t2}; \
         [ \"$(ps -o tpgid= -p $$ | tr -d ' ')\" = \"$(ps -o pgid= -p $$ | tr -d ' ')\" ] && echo foreground >> {t2}; echo done > {d}",
        t = w("t"),
        go = w("go"),
        t2 = w("t2"),
        d = w("done")
    );
    std::fs::write(e.work.join("session.sh"), inner).unwrap();
    ok(&e, &["run", "--name", &pod, "--", "script", "-qfec", &format!("sh {}", w("session.sh")), "/dev/null"]);
    let _g = PodGuard(&e, pod.clone());
    let read = |f: &str| std::fs::read_to_string(e.work.join(f)).unwrap_or_default();
    assert!(wait_for(Duration::from_secs(10), || read("t").starts_with("/dev/pts/")), "no terminal: {:?}", read("t"));
    let id = ok(&e, &["checkpoint", &pod]).trim().to_string();
    ok(&e, &["restore", &id]);
    std::fs::write(e.work.join("go"), b"go").unwrap();
    assert!(wait_for(Duration::from_secs(10), || read("done").contains("done")), "the session did not go on: {:?}", read("t2"));
    assert_eq!(read("t2"), format!("{}isatty\nforeground\n", read("t")), "same terminal, still a terminal, still in the foreground");
}
