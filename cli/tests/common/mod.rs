//! Helpers shared by the pod tests that run the `zap` binary against pods in
//! `/run/zap/test-pods`, each test with a store and a work directory of its own.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A test's store and work directory (removed on drop), and the tracker it asks for.
pub struct Env {
    _dir: tempfile::TempDir,
    pub store: PathBuf,
    pub run: PathBuf,
    pub work: PathBuf,
    /// `ZAP_TRACKER` for every `zap` run (None: the engine's default).
    pub tracker: Option<&'static str>,
}

pub fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    Env { store, run: PathBuf::from("/run/zap/test-pods"), work, tracker: None, _dir: dir }
}

/// Runs `zap --store STORE ARGS` with this test's run directory and the `zap-init` built next to
/// `zap`.
pub fn zap(e: &Env, args: &[&str]) -> Output {
    let bin = env!("CARGO_BIN_EXE_zap");
    let mut cmd = Command::new(bin);
    cmd.arg("--store").arg(&e.store).args(args).env("ZAP_RUN_DIR", &e.run).env("ZAP_INIT", Path::new(bin).parent().unwrap().join("zap-init"));
    if let Some(t) = e.tracker {
        cmd.env("ZAP_TRACKER", t);
    }
    cmd.output().expect("run zap")
}

/// Like [`zap`], failing the test unless it succeeds; returns its stdout.
pub fn ok(e: &Env, args: &[&str]) -> String {
    let out = zap(e, args);
    assert!(out.status.success(), "zap {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like [`ok`] with `--json`, parsed.
pub fn json(e: &Env, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    serde_json::from_str(&ok(e, &a)).expect("json")
}

/// Waits until `f` holds, up to `limit`.
pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// A pod this test made (by name); removed with `zap rm -f` on drop (which also stops its
/// checkpoint scheduler).
pub struct PodGuard<'a>(pub &'a Env, pub String);

impl Drop for PodGuard<'_> {
    fn drop(&mut self) {
        let _ = zap(self.0, &["rm", "-f", &self.1]);
    }
}

/// Pids (inside the pod) and names of the pod's processes, without the `ps` itself.
pub fn pod_procs(e: &Env, pod: &str) -> Vec<(i32, String)> {
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

/// The pod's long-lived processes: those present in three samples taken 50 ms apart (a shell
/// loop forks short-lived children all the time).
pub fn stable_procs(e: &Env, pod: &str) -> Vec<(i32, String)> {
    let mut keep = pod_procs(e, pod);
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(50));
        let now = pod_procs(e, pod);
        keep.retain(|p| now.contains(p));
    }
    keep
}

/// A pod name unique to this test process: `<prefix><pid>-<tag>` (each test file has its prefix).
pub fn pod_name(prefix: &str, tag: &str) -> String {
    format!("{prefix}{}-{tag}", std::process::id())
}

/// Whether command `cmd` is on the PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {cmd}")).output().map(|o| o.status.success()).unwrap_or(false)
}

/// Whether every command of `cmds` is on the PATH; if not, prints `SKIP: <what> not installed`
/// (the test then returns).
pub fn installed(cmds: &[&str], what: &str) -> bool {
    let all = cmds.iter().all(|c| have(c));
    if !all {
        eprintln!("SKIP: {what} not installed");
    }
    all
}

/// The text of file `p`, empty if it cannot be read (yet).
pub fn text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Compiles `engine/tests/progs/<name>.c` into `out_dir` with gcc (`-O1`, then `extra`); None
/// (after printing SKIP) when gcc is missing; a compile error fails the test.
pub fn build_prog(name: &str, out_dir: &Path, extra: &[&str]) -> Option<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/progs").join(format!("{name}.c"));
    let out = out_dir.join(name);
    match Command::new("gcc").args(["-O1", "-o"]).arg(&out).arg(&src).args(extra).status() {
        Ok(s) if s.success() => Some(out),
        Ok(s) => panic!("gcc failed on {}: {s}", src.display()),
        Err(err) => {
            eprintln!("SKIP: gcc not available ({err})");
            None
        }
    }
}

/// Starts `cmd` with its standard streams on /dev/null and no other fd (shells here may leak
/// some; and a restored process would get `zap restore`'s streams for any that led to the test).
pub fn spawn_alone(cmd: &mut Command) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: close_range only touches the child's fd table before exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        })
    };
    cmd.spawn().expect("spawn")
}

/// Host pids of the processes under `init` (a pod's init, or a tree's root), parents first.
pub fn descendants(init: i32) -> Vec<i32> {
    let mut pids = vec![init];
    let mut i = 0;
    while i < pids.len() {
        let kids = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", pids[i])).unwrap_or_default();
        pids.extend(kids.split_whitespace().filter_map(|k| k.parse::<i32>().ok()));
        i += 1;
    }
    pids.remove(0);
    pids
}

/// Page frames of `[addr, addr + pages * 4096)` of `pid` (0 where no anonymous page is present).
pub fn frames(pid: i32, addr: u64, pages: usize) -> Vec<u64> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(format!("/proc/{pid}/pagemap")).unwrap();
    let mut raw = vec![0u8; pages * 8];
    f.read_exact_at(&mut raw, addr / 4096 * 8).unwrap();
    raw.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .map(|e| if e >> 63 == 1 && e & (1 << 61) == 0 { e & ((1 << 55) - 1) } else { 0 })
        .collect()
}

/// The host's mount table (`/proc/mounts`) without the network namespaces other programs pin
/// under `/run/netns` meanwhile (`ip netns add`: other tests' hosts, say), which are never a
/// pod's: what a test compares before and after to see that a pod left no mount behind.
pub fn host_mounts() -> String {
    let text = std::fs::read_to_string("/proc/mounts").unwrap();
    text.lines().filter(|l| !l.split_whitespace().nth(1).is_some_and(|mp| mp.starts_with("/run/netns"))).map(|l| format!("{l}\n")).collect()
}
