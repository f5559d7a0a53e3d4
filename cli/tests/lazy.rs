//! `zap restore --lazy`: the process runs while a pager process loads its memory; a pager
//! killed mid-way takes the restored process down with it (never left waiting for a page, never
//! reading a page the pager did not fill); a pack truncated while loading does the same, the
//! pager's log naming the pack. A pod
//! of a parent and three forked children (sharing part of their memory copy-on-write, each with
//! memory of its own) restored lazily: every page checked, sharing kept, `zap ps` says loading
//! until all is in; and its pager killed mid-way: no process of the pod is left, the pod shows
//! as failed and `zap rm` removes it with its cgroup and network.
mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{descendants, frames, wait_for};

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

/// Builds `lazybig.c` in `dir`, runs it with 1 GiB (reporting to `out`, waiting for `go`), and
/// checkpoints it into `store` (the checkpoint ends it); returns the checkpoint id and a guard of
/// the original's pid. None when gcc is missing (the test skips, saying so).
fn checkpointed_lazybig(dir: &Path, store: &Path, out: &Path, go: &Path) -> Option<(String, KillOnDrop)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/progs/lazybig.c");
    let prog = dir.join("lazybig");
    match Command::new("gcc").args(["-O1", "-static", "-o"]).arg(&prog).arg(&src).status() {
        Ok(s) if s.success() => {}
        other => {
            eprintln!("SKIP: gcc ({other:?})");
            return None;
        }
    }
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
    let orig = KillOnDrop(vec![child.id() as i32]);
    assert!(wait_for(Duration::from_secs(60), || std::fs::read_to_string(&out).unwrap_or_default().contains("ready")));
    let ck = zap(store, &["--json", "checkpoint", "--pid", &child.id().to_string()]);
    assert!(ck.status.success(), "{}", String::from_utf8_lossy(&ck.stderr));
    let _ = child.wait();
    let id: serde_json::Value = serde_json::from_slice(&ck.stdout).unwrap();
    let id = id["id"].as_str().unwrap().to_string();
    Some((id, orig))
}

#[test]
fn a_pager_killed_mid_way_leaves_no_hung_process() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (out, go) = (dir.path().join("out"), dir.path().join("go"));
    let Some((id, _orig)) = checkpointed_lazybig(dir.path(), &store, &out, &go) else { return };
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
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(!text.contains("ok"), "a process that lost its pager cannot have checked every page");
    // Its init held the userfaultfd: the pager's death let no waiting fault go on with a zero page.
    assert!(!text.contains("FAIL"), "the process read a page its pager never filled: {text}");
    // The store is usable again: the pager held it only while opening packs.
    let ls = zap(&store, &["ls"]);
    assert!(ls.status.success(), "{}", String::from_utf8_lossy(&ls.stderr));
}

/// A pack truncated under a pager that is still loading (the pager reads chunks with `pread`
/// from the handles it opened, never from a mapping, so a shortened file cannot SIGBUS it): the
/// pager fails on the first chunk past the new end, kills the restored process and its
/// namespace, and its log names the pack; nothing is left waiting for a page.
#[test]
fn a_pack_truncated_while_loading_kills_the_process_and_names_the_pack() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (out, go, log) = (dir.path().join("out"), dir.path().join("go"), dir.path().join("pager.log"));
    let Some((id, _orig)) = checkpointed_lazybig(dir.path(), &store, &out, &go) else { return };
    let r = Command::new(env!("CARGO_BIN_EXE_zap"))
        .env("ZAP_PAGER_LOG", &log)
        .arg("--store")
        .arg(&store)
        .args(["--json", "restore", "--lazy", &id])
        .stdin(Stdio::null())
        .output()
        .expect("run zap");
    if !r.status.success() && String::from_utf8_lossy(&r.stderr).contains("userfaultfd") {
        eprintln!("SKIP: userfaultfd ({})", String::from_utf8_lossy(&r.stderr));
        return;
    }
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let (pid, init, pager) = (v["pid"].as_i64().unwrap() as i32, v["init_pid"].as_i64().unwrap() as i32, v["pager_pid"].as_i64().unwrap() as i32);
    let _restored = KillOnDrop(vec![pid, init, pager]);
    assert!(!gone(pager), "the pager ended before the packs could be truncated: 1 GiB loaded at once?");
    let mut truncated = Vec::new();
    for e in std::fs::read_dir(store.join("packs")).unwrap().flatten() {
        if e.file_name().to_string_lossy().ends_with(".pack") {
            std::fs::OpenOptions::new().write(true).open(e.path()).unwrap().set_len(4096).unwrap();
            truncated.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    assert!(!truncated.is_empty(), "no pack to truncate");
    // The process touches every page: its faults need chunks past the new ends.
    std::fs::write(&go, b"go").unwrap();
    assert!(wait_for(Duration::from_secs(20), || gone(pid) && gone(init) && gone(pager)), "pid {pid}, init {init} or pager {pager} outlived the failure");
    assert!(!std::fs::read_to_string(&out).unwrap_or_default().contains("ok"), "a process whose pages could not be read cannot have checked them all");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("truncated") && truncated.iter().any(|t| text.contains(t.as_str())), "the pager's log names the truncated pack: {text}");
    assert!(!text.contains("SIGBUS"), "{text}");
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

/// Pages of lazypod's shared region each child shares with the parent (pids: parent first).
fn shared_with_parent(pids: &[i32], region: u64) -> Vec<usize> {
    let parent = frames(pids[0], region, 2048);
    pids[1..].iter().map(|&k| frames(k, region, 2048).iter().zip(&parent).filter(|(a, b)| **a != 0 && a == b).count()).collect()
}

fn ps_entry(e: &common::Env, pod: &str) -> serde_json::Value {
    let ps = common::json(e, &["ps"]);
    ps.as_array().unwrap().iter().find(|p| p["name"] == pod).cloned().unwrap_or(serde_json::Value::Null)
}

/// Runs lazypod (each process's own region `own_mib`) in pod `pod`, checkpoints it (the pod
/// ends) and restores it lazily; returns the restore's JSON, the S region's address and the
/// pages shared before.
fn lazy_pod(e: &common::Env, pod: &str, own_mib: &str) -> Option<(serde_json::Value, u64, Vec<usize>)> {
    let prog = common::build_prog("lazypod", &e.work, &[])?;
    let (out, go) = (e.work.join("out"), e.work.join("go"));
    common::ok(e, &["run", "--name", pod, "--", prog.to_str().unwrap(), out.to_str().unwrap(), go.to_str().unwrap(), own_mib]);
    assert!(wait_for(Duration::from_secs(30), || common::text(&out).contains("ready") || common::text(&out).contains("FAIL")), "{}", common::text(&out));
    let region = u64::from_str_radix(common::text(&out).lines().find_map(|l| l.strip_prefix("ready ")).unwrap().trim(), 16).unwrap();
    let init = ps_entry(e, pod)["init_pid"].as_i64().unwrap() as i32;
    let pids = descendants(init);
    assert_eq!(pids.len(), 4, "a parent and three children: {pids:?}");
    let before = shared_with_parent(&pids, region);
    let id = common::ok(e, &["checkpoint", pod]).trim().to_string();
    let r = common::zap(e, &["--json", "restore", "--lazy", &id]);
    if !r.status.success() && String::from_utf8_lossy(&r.stderr).contains("userfaultfd") {
        eprintln!("SKIP: userfaultfd ({})", String::from_utf8_lossy(&r.stderr));
        return None;
    }
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    Some((serde_json::from_slice(&r.stdout).unwrap(), region, before))
}

#[test]
fn a_pod_of_forked_processes_restored_lazily_checks_every_page() {
    let e = common::env();
    let pod = common::pod_name("lz", "fam");
    let _g = common::PodGuard(&e, pod.clone());
    let Some((v, region, before)) = lazy_pod(&e, &pod, "4") else { return };
    let pager = v["pager_pid"].as_i64().unwrap() as i32;
    let _pager = KillOnDrop(vec![pager]);
    assert_eq!(v["pod"], pod.as_str());
    assert_eq!(v["pids"].as_array().unwrap().len(), 4, "{v}");
    assert!(v["lazy_bytes"].as_u64().unwrap() >= 4 * (4 << 20), "each process's own region is lazy: {v}");
    assert_eq!(before, vec![1920; 3], "pages shared before the checkpoint");
    let init = v["init_pid"].as_i64().unwrap() as i32;
    assert_eq!(shared_with_parent(&descendants(init), region), before, "the same pages are shared after the lazy restore");
    let out = e.work.join("out");
    std::fs::write(e.work.join("go"), b"go").unwrap();
    assert!(wait_for(Duration::from_secs(60), || common::text(&out).contains("ok all") || common::text(&out).contains("FAIL")), "{}", common::text(&out));
    let t = common::text(&out);
    assert!(!t.contains("FAIL"), "{t}");
    for w in ["ok P", "ok 1", "ok 2", "ok 3", "count 1 ", "count 2 ", "count 3 "] {
        assert!(t.contains(w), "{w}: {t}");
    }
    assert!(wait_for(Duration::from_secs(30), || gone(pager)), "the pager did not finish loading");
    let p = ps_entry(&e, &pod);
    assert_eq!(p["loading"], false, "{p}");
    assert!(p["failed"].is_null(), "{p}");
}

#[test]
fn a_lazily_restored_pod_whose_pager_dies_leaves_nothing_behind() {
    let e = common::env();
    let pod = common::pod_name("lz", "die");
    let _g = common::PodGuard(&e, pod.clone());
    // 4 x 64 MiB of memory of their own to load: the pager is still at it when killed.
    let Some((v, _, _)) = lazy_pod(&e, &pod, "64") else { return };
    let pager = v["pager_pid"].as_i64().unwrap() as i32;
    let init = v["init_pid"].as_i64().unwrap() as i32;
    let pids = descendants(init);
    let _kill = KillOnDrop(vec![pager]);
    assert_eq!(pids.len(), 4, "{pids:?}");
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(e.run.join(&pod).join("pod.json")).unwrap()).unwrap();
    let cgroup = std::path::PathBuf::from(state["cgroup"].as_str().unwrap());
    let veth = state["veth_host"].as_str().map(str::to_string);
    assert!(cgroup.exists(), "{}", cgroup.display());
    assert!(!gone(pager), "the pager ended before it could be killed mid-way");
    assert_eq!(ps_entry(&e, &pod)["loading"], true, "zap ps says the pod is loading");
    // The processes run and touch their memory while the pager is killed.
    std::fs::write(e.work.join("go"), b"go").unwrap();
    // SAFETY: kill takes integers; the pager is the process this test's zap started.
    unsafe { libc::kill(pager, libc::SIGKILL) };
    assert!(wait_for(Duration::from_secs(10), || pids.iter().all(|&p| gone(p)) && gone(init)), "processes of the pod outlived its pager");
    let out = common::text(&e.work.join("out"));
    assert!(!out.contains("ok all"), "a pod that lost its pager cannot have checked every page: {out}");
    let p = ps_entry(&e, &pod);
    assert_eq!(p["state"], "exited", "{p}");
    assert!(p["failed"].as_str().is_some_and(|w| w.contains("pager")), "zap ps says why: {p}");
    common::ok(&e, &["rm", &pod]);
    assert!(ps_entry(&e, &pod).is_null(), "removed");
    assert!(!cgroup.exists(), "the pod's cgroup {} is gone", cgroup.display());
    if let Some(v) = veth {
        assert!(!Path::new("/sys/class/net").join(&v).exists(), "the pod's veth {v} is gone");
    }
    // The store is usable again.
    common::ok(&e, &["ls"]);
}

#[test]
fn a_lazily_restored_tree_whose_pager_dies_leaves_no_process() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let Some(prog) = common::build_prog("lazypod", dir.path(), &[]) else { return };
    let (out, go) = (dir.path().join("out"), dir.path().join("go"));
    let mut cmd = Command::new(&prog);
    cmd.arg(&out).arg(&go).arg("64");
    let mut child = common::spawn_alone(&mut cmd);
    let root = child.id() as i32;
    let _orig = KillOnDrop(vec![root]);
    assert!(wait_for(Duration::from_secs(30), || common::text(&out).contains("ready") || common::text(&out).contains("FAIL")), "{}", common::text(&out));
    let kids = descendants(root);
    let _kids = KillOnDrop(kids.clone());
    let ck = zap(&store, &["--json", "checkpoint", "--tree", "--pid", &root.to_string()]);
    assert!(ck.status.success(), "{}", String::from_utf8_lossy(&ck.stderr));
    let _ = child.wait();
    let id = serde_json::from_slice::<serde_json::Value>(&ck.stdout).unwrap()["id"].as_str().unwrap().to_string();
    assert!(wait_for(Duration::from_secs(5), || kids.iter().all(|&k| gone(k))), "the original children ended");
    let r = zap(&store, &["--json", "restore", "--lazy", &id]);
    if !r.status.success() && String::from_utf8_lossy(&r.stderr).contains("userfaultfd") {
        eprintln!("SKIP: userfaultfd ({})", String::from_utf8_lossy(&r.stderr));
        return;
    }
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let (init, pager) = (v["init_pid"].as_i64().unwrap() as i32, v["pager_pid"].as_i64().unwrap() as i32);
    let pids: Vec<i32> = v["pids"].as_array().unwrap().iter().map(|p| p[1].as_i64().unwrap() as i32).collect();
    let mut all = pids.clone();
    all.extend([init, pager]);
    let _restored = KillOnDrop(all);
    assert_eq!(pids.len(), 4, "{v}");
    assert!(v["lazy_bytes"].as_u64().unwrap() >= 4 * (64 << 20), "{v}");
    assert!(!gone(pager), "the pager ended before it could be killed mid-way");
    std::fs::write(&go, b"go").unwrap();
    // SAFETY: kill takes integers; the pager is the process this test's zap started.
    unsafe { libc::kill(pager, libc::SIGKILL) };
    assert!(wait_for(Duration::from_secs(10), || pids.iter().all(|&p| gone(p)) && gone(init)), "processes of the tree outlived their pager");
    assert!(!common::text(&out).contains("ok all"), "a tree that lost its pager cannot have checked every page: {}", common::text(&out));
}

