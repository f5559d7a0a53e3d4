//! `zap checkpoint` / `zap restore` / `zap ls` on a real python3 process: JSON fields, the
//! restored process outliving `zap`, and clear failures for a gone pid and an unknown checkpoint.
mod common;

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::wait_for;

fn zap(store: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zap")).arg("--store").arg(store).args(args).output().expect("run zap")
}

/// Starts `python3 -c script` with only fds 0-2 (shells here may leak others into children).
fn python(script: &str, stdout: Stdio) -> std::io::Result<std::process::Child> {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script]).stdin(Stdio::null()).stdout(stdout).stderr(Stdio::null());
    // SAFETY: close_range only touches the child's fd table before exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        })
    };
    cmd.spawn()
}

fn lines(p: &Path) -> Vec<u64> {
    std::fs::read_to_string(p).unwrap_or_default().lines().filter_map(|l| l.parse().ok()).collect()
}

/// Kills a pid this test created (through zap restore) when dropped.
struct KillOnDrop(i32);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill takes integers; the pid is a process this test restored.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

#[test]
fn checkpoint_restore_and_ls_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let log = dir.path().join("count.log");
    let script = format!(
        "import time\nf = open({:?}, 'a', buffering=1)\nn = 0\nwhile True:\n    n += 1\n    f.write('%d\\n' % n)\n    time.sleep(0.01)\n",
        log.to_str().unwrap()
    );
    let Ok(mut child) = python(&script, Stdio::null()) else {
        eprintln!("SKIP: python3 not installed");
        return;
    };
    let pid = child.id() as i32;
    assert!(wait_for(Duration::from_secs(20), || lines(&log).len() >= 5));

    let out = zap(&store, &["checkpoint", "--pid", &pid.to_string(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 16);
    child.wait().unwrap(); // killed by the checkpoint
    let before = lines(&log);

    let out = zap(&store, &["restore", &id[..8], "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let new_pid = r["pid"].as_i64().unwrap() as i32;
    let _guard = KillOnDrop(new_pid);
    assert_eq!(r["vpid"].as_i64().unwrap() as i32, pid);
    // zap has exited; the restored process runs on and continues the count.
    assert!(wait_for(Duration::from_secs(10), || lines(&log).len() >= before.len() + 5));
    let after = lines(&log);
    for w in after.windows(2) {
        assert_eq!(w[1], w[0] + 1, "count broken around {w:?}");
    }

    let out = zap(&store, &["ls", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["kind"], "process");

    // Human output: just the id / the pid on stdout.
    let out = zap(&store, &["checkpoint", "--pid", &new_pid.to_string(), "--leave-running"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim().len(), 16);
    assert!(Path::new(&format!("/proc/{new_pid}")).exists(), "--leave-running must not end the process");
}

#[test]
fn gone_pid_and_unknown_checkpoint_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut c = Command::new("true").spawn().unwrap();
    let gone = c.id();
    c.wait().unwrap();
    let out = zap(&store, &["checkpoint", "--pid", &gone.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("zap: error:") && err.contains(&gone.to_string()), "{err}");
    let out = zap(&store, &["restore", "abcdef12"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no checkpoint matches"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn stdout_to_another_process_follows_zap_restore() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let script = "import sys, time\nn = 0\nwhile True:\n    n += 1\n    print(n, flush=True)\n    time.sleep(0.01)\n";
    let Ok(mut child) = python(script, Stdio::piped()) else {
        eprintln!("SKIP: python3 not installed");
        return;
    };
    let mut first = BufReader::new(child.stdout.take().unwrap());
    let mut last = 0u64;
    let mut line = String::new();
    while last < 5 {
        line.clear();
        first.read_line(&mut line).unwrap();
        last = line.trim().parse().unwrap();
    }
    let out = zap(&store, &["checkpoint", "--pid", &child.id().to_string(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["id"].as_str().unwrap().to_string();
    child.wait().unwrap();
    // Whatever the original printed before it stopped.
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut first, &mut rest).unwrap();
    last = rest.lines().filter_map(|l| l.trim().parse().ok()).next_back().unwrap_or(last);
    // Restore with zap's stdout on a pipe of ours: the restored process writes into it.
    let mut restore = Command::new(env!("CARGO_BIN_EXE_zap"))
        .arg("--store")
        .arg(&store)
        .args(["restore", &id, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(restore.stdout.take().unwrap());
    let status = restore.wait().unwrap();
    assert!(status.success());
    let mut json = String::new();
    let mut numbers = Vec::new();
    let start = Instant::now();
    while numbers.len() < 5 && start.elapsed() < Duration::from_secs(10) {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        // zap's pretty JSON never has a bare integer on a line; the process prints only those.
        match line.trim().parse::<u64>() {
            Ok(n) => numbers.push(n),
            Err(_) => json.push_str(&line),
        }
    }
    let pid = json.lines().find_map(|l| l.trim().strip_prefix("\"pid\": ")).map(|p| p.trim_end_matches(',').parse::<i32>().unwrap());
    if let Some(p) = pid {
        // SAFETY: kill takes integers; p is the process this test restored.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    assert!(numbers.len() >= 5, "restored process printed nothing on the new stdout: {numbers:?} {json}");
    assert_eq!(numbers[0], last + 1, "output continues where it stopped: {numbers:?} after {last}");
    for w in numbers.windows(2) {
        assert_eq!(w[1], w[0] + 1);
    }
}

/// `--leave-running` copies the memory while the process runs (pre-copy) and stops it only for
/// the pages written meanwhile: a program rewriting random pages of 64 MiB nonstop (and throwing
/// pages away, and remapping a scratch area) is checkpointed so, the original is killed, and the
/// restored copy checks every page against its own record of what it wrote.
#[test]
fn leave_running_checkpoint_is_pre_copied_and_restores_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let Some(prog) = common::build_prog("churn", dir.path(), &[]) else { return };
    let (out, go) = (dir.path().join("out"), dir.path().join("go"));
    let text = || std::fs::read_to_string(&out).unwrap_or_default();
    let mut child = common::spawn_alone(Command::new(&prog).arg(&out).arg(&go).arg("64"));
    let _orig = KillOnDrop(child.id() as i32);
    assert!(wait_for(Duration::from_secs(10), || lines(&out).last().copied().unwrap_or(0) >= 300), "churn did not start: {}", text());
    let ck = zap(&store, &["--json", "checkpoint", "--pid", &child.id().to_string(), "--leave-running"]);
    assert!(ck.status.success(), "{}", String::from_utf8_lossy(&ck.stderr));
    let v: serde_json::Value = serde_json::from_slice(&ck.stdout).unwrap();
    let mode = v["mode"].as_str().unwrap();
    assert!(mode.starts_with("full; pre-copied while running"), "{v}");
    eprintln!("{mode}; stopped {} ms", v["frozen_ms"]);
    assert!(child.try_wait().unwrap().is_none(), "--leave-running must not end the process");
    let at = lines(&out).last().copied().unwrap_or(0);
    assert!(wait_for(Duration::from_secs(10), || lines(&out).last().copied().unwrap_or(0) > at), "the process runs on");
    // --no-pre-copy: the same checkpoint read while stopped.
    let plain = zap(&store, &["--json", "checkpoint", "--pid", &child.id().to_string(), "--leave-running", "--no-pre-copy"]);
    let p: serde_json::Value = serde_json::from_slice(&plain.stdout).unwrap();
    assert_eq!(p["mode"], "full", "{p}");
    child.kill().unwrap();
    child.wait().unwrap();
    for (id, what) in [(v["id"].as_str().unwrap(), "pre-copied"), (p["id"].as_str().unwrap(), "read while stopped")] {
        let _ = std::fs::remove_file(&go);
        let r = zap(&store, &["--json", "restore", id]);
        assert!(r.status.success(), "{what}: {}", String::from_utf8_lossy(&r.stderr));
        let r: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
        let _restored = KillOnDrop(r["pid"].as_i64().unwrap() as i32);
        let before = text().len();
        std::fs::write(&go, b"go").unwrap();
        let after = || text()[before..].to_string();
        assert!(wait_for(Duration::from_secs(20), || after().contains("ok") || after().contains("FAIL")), "{what}: {}", after());
        assert!(!after().contains("FAIL"), "{what}: restored memory differs from what the program wrote: {}", after());
    }
}

/// A process holding pipes whose other ends stay outside it (here the test's; often a
/// descriptor a shell leaked into it) is checkpointed anyway, as CRIU does: each such pipe comes
/// back half-open, with the bytes that were queued in it, and the process goes on.
#[test]
fn pipes_shared_with_an_outside_process_come_back_half_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let log = dir.path().join("count.log");
    let go = dir.path().join("go");
    // fd 5: the write end of a pipe the test reads; fd 6: the read end of a pipe the test
    // writes into (7 bytes queued). After the restore, on `go`, the program reads fd 6.
    let script = format!(
        "import os, time\nf = open({log:?}, 'a', buffering=1)\nn = 0\ndone = False\nwhile True:\n    n += 1\n    f.write('%d\\n' % n)\n    if not done and os.path.exists({go:?}):\n        f.write('got:' + os.read(6, 100).decode() + '\\n')\n        done = True\n    time.sleep(0.01)\n",
        log = log.to_str().unwrap(),
        go = go.to_str().unwrap()
    );
    let mut out_pipe = [0i32; 2];
    let mut in_pipe = [0i32; 2];
    // SAFETY: pipe2 writes two fds into each array.
    unsafe {
        assert_eq!(libc::pipe2(out_pipe.as_mut_ptr(), libc::O_CLOEXEC), 0);
        assert_eq!(libc::pipe2(in_pipe.as_mut_ptr(), libc::O_CLOEXEC), 0);
    }
    // SAFETY: the fds were just made by pipe2 and are owned here only.
    let (out_r, out_w, in_r, in_w) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::os::fd::OwnedFd::from_raw_fd(out_pipe[0]),
            std::os::fd::OwnedFd::from_raw_fd(out_pipe[1]),
            std::os::fd::OwnedFd::from_raw_fd(in_pipe[0]),
            std::os::fd::OwnedFd::from_raw_fd(in_pipe[1]),
        )
    };
    std::fs::File::from(in_w.try_clone().unwrap()).write_all(b"queued!").unwrap();
    // Above 6, so that the child's dup2 onto 5 cannot overwrite the fd it then moves to 6.
    let (out_w, in_r) = (out_w.try_clone_to_high(), in_r.try_clone_to_high());
    let (w5, r6) = {
        use std::os::fd::AsRawFd;
        (out_w.as_raw_fd(), in_r.as_raw_fd())
    };
    let mut cmd = Command::new("python3");
    cmd.args(["-c", &script]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: dup2 and close_range only touch the child's fd table before exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(w5, 5) < 0 || libc::dup2(r6, 6) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::syscall(libc::SYS_close_range, 7u32, u32::MAX, 0u32);
            libc::syscall(libc::SYS_close_range, 3u32, 4u32, 0u32);
            Ok(())
        })
    };
    let Ok(mut child) = cmd.spawn() else {
        eprintln!("SKIP: python3 not installed");
        return;
    };
    let pid = child.id() as i32;
    drop((out_w, in_r));
    assert!(wait_for(Duration::from_secs(20), || lines(&log).len() >= 5));
    let ck = zap(&store, &["checkpoint", "--pid", &pid.to_string(), "--json"]);
    assert!(ck.status.success(), "{}", String::from_utf8_lossy(&ck.stderr));
    let warned = String::from_utf8_lossy(&ck.stderr).to_string();
    assert!(warned.contains("outside the checkpoint") && warned.contains("other end is closed"), "no warning: {warned}");
    let id = serde_json::from_slice::<serde_json::Value>(&ck.stdout).unwrap()["id"].as_str().unwrap().to_string();
    child.wait().unwrap();
    let before = lines(&log).len();
    let r = zap(&store, &["restore", &id, "--json"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let r: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let new_pid = r["pid"].as_i64().unwrap() as i32;
    let _guard = KillOnDrop(new_pid);
    for fd in [5, 6] {
        let link = std::fs::read_link(format!("/proc/{new_pid}/fd/{fd}")).unwrap();
        assert!(link.to_string_lossy().starts_with("pipe:["), "fd {fd}: {link:?}");
    }
    std::fs::write(&go, b"").unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || std::fs::read_to_string(&log).unwrap_or_default().contains("got:queued!")),
        "the queued bytes did not come back: {} lines, {:?} {:?}",
        lines(&log).len(),
        std::fs::read_to_string(format!("/proc/{new_pid}/status")).unwrap_or_default().lines().nth(2),
        std::fs::read_to_string(format!("/proc/{new_pid}/syscall"))
    );
    assert!(wait_for(Duration::from_secs(10), || lines(&log).len() >= before + 5), "the count does not go on");
    let all = lines(&log);
    for w in all.windows(2) {
        assert_eq!(w[1], w[0] + 1, "count broken around {w:?}");
    }
    // The original pipes are the test's alone now: the restored process is not on them.
    drop((out_r, in_w));
}

trait HighFd {
    /// A duplicate numbered 100 or above (close-on-exec).
    fn try_clone_to_high(self) -> std::os::fd::OwnedFd;
}
impl HighFd for std::os::fd::OwnedFd {
    fn try_clone_to_high(self) -> std::os::fd::OwnedFd {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: F_DUPFD_CLOEXEC makes a new fd owned by the returned OwnedFd; `self` is dropped after.
        let fd = unsafe { libc::fcntl(self.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
        assert!(fd >= 100, "F_DUPFD_CLOEXEC: {}", std::io::Error::last_os_error());
        // SAFETY: fd was just made and is owned by no one else.
        unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
    }
}
