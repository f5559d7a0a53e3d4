//! `zap restore --lazy`: the process runs while a pager process loads its memory; a pager
//! killed mid-way takes the restored process down with it (never left waiting for a page), and
//! `--lazy` on a pod checkpoint is refused by name.
mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::wait_for;

fn zap(store: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zap")).arg("--store").arg(store).args(args).stdin(Stdio::null()).output().expect("run zap")
}

fn gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()) == Some("Z"))
        .unwrap_or(true)
}

/// Kills pids this test created (through zap restore) when dropped.
struct KillOnDrop(Vec<i32>);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &p in &self.0 {
            // SAFETY: kill takes integers; these are processes this test started or restored.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
}

#[test]
fn a_pager_killed_mid_way_leaves_no_hung_process() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/progs/lazybig.c");
    let prog = dir.path().join("lazybig");
    match Command::new("gcc").args(["-O1", "-static", "-o"]).arg(&prog).arg(&src).status() {
        Ok(s) if s.success() => {}
        other => {
            eprintln!("SKIP: gcc ({other:?})");
            return;
        }
    }
    let (out, go) = (dir.path().join("out"), dir.path().join("go"));
    let mut cmd = Command::new(&prog);
    cmd.arg(&out).arg(&go).arg("1024").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: close_range only touches the child's fd table before exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        })
    };
    let mut child = cmd.spawn().expect("spawn");
    let _orig = KillOnDrop(vec![child.id() as i32]);
    assert!(wait_for(Duration::from_secs(60), || std::fs::read_to_string(&out).unwrap_or_default().contains("ready")));
    let ck = zap(&store, &["--json", "checkpoint", "--pid", &child.id().to_string()]);
    assert!(ck.status.success(), "{}", String::from_utf8_lossy(&ck.stderr));
    let _ = child.wait();
    let id: serde_json::Value = serde_json::from_slice(&ck.stdout).unwrap();
    let id = id["id"].as_str().unwrap().to_string();
    let r = zap(&store, &["--json", "restore", "--lazy", &id]);
    if !r.status.success() && String::from_utf8_lossy(&r.stderr).contains("userfaultfd") {
        eprintln!("SKIP: userfaultfd ({})", String::from_utf8_lossy(&r.stderr));
        return;
    }
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let (pid, init, pager) = (v["pid"].as_i64().unwrap() as i32, v["init_pid"].as_i64().unwrap() as i32, v["pager_pid"].as_i64().unwrap() as i32);
    let _restored = KillOnDrop(vec![pid, init, pager]);
    assert!(!gone(pager), "the pager ended before it could be killed mid-way: 1 GiB loaded at once?");
    // The process runs and touches its memory while the pager is killed.
    std::fs::write(&go, b"go").unwrap();
    // SAFETY: kill takes integers; the pager is the process this test's zap started.
    unsafe { libc::kill(pager, libc::SIGKILL) };
    assert!(wait_for(Duration::from_secs(10), || gone(pid) && gone(init)), "the restored process (pid {pid}, init {init}) outlived its pager");
    assert!(!std::fs::read_to_string(&out).unwrap_or_default().contains("ok"), "a process that lost its pager cannot have checked every page");
    // The store is usable again: the pager held it only while opening packs.
    let ls = zap(&store, &["ls"]);
    assert!(ls.status.success(), "{}", String::from_utf8_lossy(&ls.stderr));
}

/// Mapping kinds a pager must not fill, or fills with care, in a lazily restored process: locked
/// (`mlock`, `MLOCK_ONFAULT`, `MAP_LOCKED`), sealed, guard pages, a protection key, `MAP_GROWSDOWN`,
/// fork flags, THP and KSM advice (`engine/tests/progs/memflags.c`, which checks each mapping's
/// bounds, flags and pages, then forks). Kinds the kernel lacks are printed as SKIP.
#[test]
fn mapping_flags_and_guard_pages_come_back_with_a_lazy_restore() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/progs/memflags.c");
    let prog = dir.path().join("memflags");
    match Command::new("gcc").args(["-O1", "-o"]).arg(&prog).arg(&src).status() {
        Ok(s) if s.success() => {}
        other => {
            eprintln!("SKIP: gcc ({other:?})");
            return;
        }
    }
    let (out, go) = (dir.path().join("out"), dir.path().join("go"));
    let text = || std::fs::read_to_string(&out).unwrap_or_default();
    let mut cmd = Command::new(&prog);
    cmd.arg(&out).arg(&go).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: close_range only touches the child's fd table before exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        })
    };
    let mut child = cmd.spawn().expect("spawn");
    let _orig = KillOnDrop(vec![child.id() as i32]);
    assert!(wait_for(Duration::from_secs(20), || text().contains("ready") || text().contains("FAIL")), "no ready: {}", text());
    assert!(!text().contains("FAIL"), "{}", text());
    let ck = zap(&store, &["--json", "checkpoint", "--pid", &child.id().to_string()]);
    assert!(ck.status.success(), "{}", String::from_utf8_lossy(&ck.stderr));
    let _ = child.wait();
    let id: serde_json::Value = serde_json::from_slice(&ck.stdout).unwrap();
    let id = id["id"].as_str().unwrap().to_string();
    let r = zap(&store, &["--json", "restore", "--lazy", &id]);
    if !r.status.success() && String::from_utf8_lossy(&r.stderr).contains("userfaultfd") {
        eprintln!("SKIP: userfaultfd ({})", String::from_utf8_lossy(&r.stderr));
        return;
    }
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let (pid, init, pager) = (v["pid"].as_i64().unwrap() as i32, v["init_pid"].as_i64().unwrap() as i32, v["pager_pid"].as_i64().unwrap() as i32);
    let _restored = KillOnDrop(vec![pid, init, pager]);
    std::fs::write(&go, b"go").unwrap();
    assert!(wait_for(Duration::from_secs(20), || text().contains("\nok") || text().contains("FAIL")), "restored program did not finish: {}", text());
    assert!(!text().contains("FAIL"), "{}", text());
    for line in text().lines().filter(|l| l.starts_with("skip")) {
        eprintln!("SKIP: {line}");
    }
    assert!(wait_for(Duration::from_secs(20), || gone(pager)), "the pager did not finish loading");
}
