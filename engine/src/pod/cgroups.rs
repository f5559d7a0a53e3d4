//! Sub-cgroups a pod made under its cgroup (a service manager or a nested container inside the
//! pod creates cgroups under its cgroup namespace's root, `/sys/fs/cgroup` in the pod).
//!
//! ## Saved ([`save`])
//! The tree under the pod's cgroup v2 directory, parents first, and for every cgroup (the pod's
//! own included): its type (`domain`, `threaded`, ...), the controllers it enables for its
//! children (`cgroup.subtree_control`), whether it is frozen (`cgroup.freeze`), and the settings
//! of [`SETTINGS`] (and `hugetlb.*.max`) that it has; which cgroup every process is in (the
//! pod's init included, which a manager inside may move), and, in threaded subtrees, every
//! thread; the controllers the pod's cgroup offered (`cgroup.controllers`). A process in a cgroup
//! outside the pod's, or in another cgroup v1 hierarchy than the init's, is refused.
//!
//! ## Restored
//! [`prepare`], as soon as the new pod's cgroup exists: controllers the pod used are enabled
//! above it (on the host's root and Zap's parent), the tree is made, threaded cgroups typed and
//! the `cgroup.max.*` limits set. [`place`], once every process exists but before any runs: each
//! process (and thread) is moved into its cgroup, then, top down, `cgroup.subtree_control` is
//! written (a cgroup that distributes resources holds no process, so this comes after the
//! moves), then the settings, then `cgroup.freeze` where it was set (frozen processes stay
//! frozen when released).
//!
//! Not restored: statistics and pressure (they start anew), and settings a file system of the
//! host must allow (a setting the kernel refuses fails the restore with its name).
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cgroup::{v2_root, Cgroup};
use crate::{EngineError, Result};

/// Settings saved and restored, in the order they are written back.
pub const SETTINGS: &[&str] = &[
    "cpuset.cpus",
    "cpuset.mems",
    "cpuset.cpus.exclusive",
    "cpuset.cpus.partition",
    "memory.min",
    "memory.low",
    "memory.high",
    "memory.max",
    "memory.swap.high",
    "memory.swap.max",
    "memory.zswap.max",
    "memory.zswap.writeback",
    "memory.oom.group",
    "cpu.weight",
    "cpu.max",
    "cpu.max.burst",
    "cpu.idle",
    "cpu.uclamp.min",
    "cpu.uclamp.max",
    "pids.max",
    "io.weight",
    "io.max",
    "io.latency",
];

/// Limits of the tree itself, set when the cgroup is made.
const TREE_LIMITS: &[&str] = &["cgroup.max.descendants", "cgroup.max.depth"];

/// One cgroup of the pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Path under the pod's cgroup (empty: the pod's own).
    pub path: String,
    /// `cgroup.type`.
    pub cgtype: String,
    /// Controllers enabled for its children.
    pub subtree_control: Vec<String>,
    /// `cgroup.freeze`.
    pub frozen: bool,
    /// (file, value) of the settings and tree limits it has.
    pub settings: Vec<(String, String)>,
}

/// The pod's cgroup tree and who is where.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupTree {
    /// The cgroups, parents first, the pod's own first.
    pub nodes: Vec<Node>,
    /// Controllers the pod's cgroup offered.
    pub controllers: Vec<String>,
    /// (vpid, cgroup path) of every process (vpid 1: the init).
    pub procs: Vec<(i32, String)>,
    /// (vpid, thread id as the process sees it, cgroup path) of threads in another cgroup than
    /// their process (threaded subtrees).
    pub threads: Vec<(i32, i32, String)>,
}

impl CgroupTree {
    /// True when the pod made nothing: one cgroup, every process in it, nothing set.
    pub fn is_trivial(&self) -> bool {
        self.nodes.len() <= 1 && self.procs.iter().all(|(_, p)| p.is_empty()) && self.threads.is_empty()
    }
}

fn pod_err(pod: &str, step: impl Into<String>, detail: impl std::fmt::Display) -> EngineError {
    EngineError::Pod { pod: pod.to_string(), step: step.into(), detail: detail.to_string() }
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim_end().to_string())
}

/// The pod's cgroup as a path of the v2 hierarchy (`/zap/NAME`).
pub fn hierarchy_path(cg: &Cgroup) -> Result<String> {
    let root = v2_root()?;
    let rel = cg.v2.strip_prefix(&root).map_err(|_| EngineError::Proc { pid: 0, detail: format!("{} is not under {}", cg.v2.display(), root.display()) })?;
    Ok(format!("/{}", rel.display()))
}

/// Every cgroup directory under `dir` (relative paths, parents first, `""` for `dir`).
pub fn subtree(dir: &Path) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut i = 0;
    while i < out.len() {
        let here = if out[i].is_empty() { dir.to_path_buf() } else { dir.join(&out[i]) };
        let mut kids: Vec<String> = std::fs::read_dir(&here)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        if out[i].is_empty() {
                            n
                        } else {
                            format!("{}/{n}", out[i])
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        kids.sort();
        out.extend(kids);
        i += 1;
    }
    out
}

/// The v2 cgroup of `pid`, and its v1 memberships (`hierarchy:path` lines), from
/// `/proc/PID/cgroup` (or `/proc/PID/task/TID/cgroup`).
fn cgroup_of(file: &str) -> std::io::Result<(String, Vec<String>)> {
    let text = std::fs::read_to_string(file)?;
    let mut v2 = String::new();
    let mut v1 = Vec::new();
    for l in text.lines() {
        match l.strip_prefix("0::") {
            Some(p) => v2 = p.to_string(),
            None => v1.push(l.to_string()),
        }
    }
    Ok((v2, v1))
}

/// Saves the pod's cgroup tree and where its processes are. `init_pid` is the init's host pid,
/// `members` the (vpid, host pid) of the live processes, `frozen` the cgroups the pod froze
/// (thawed by Zap while the pod is stopped).
pub fn save(pod: &str, cg: &Cgroup, init_pid: i32, members: &[(i32, i32)], frozen: &[String]) -> Result<CgroupTree> {
    let mut tree = CgroupTree {
        controllers: read_trim(&cg.v2.join("cgroup.controllers")).unwrap_or_default().split_whitespace().map(str::to_string).collect(),
        ..Default::default()
    };
    let mut threaded = false;
    for path in subtree(&cg.v2) {
        let dir = if path.is_empty() { cg.v2.clone() } else { cg.v2.join(&path) };
        let cgtype = read_trim(&dir.join("cgroup.type")).unwrap_or_else(|| "domain".into());
        threaded |= cgtype.contains("threaded");
        let mut settings = Vec::new();
        let mut names: Vec<String> = TREE_LIMITS.iter().chain(SETTINGS).map(|s| s.to_string()).collect();
        let mut huge: Vec<String> = std::fs::read_dir(&dir)
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with("hugetlb.") && n.ends_with(".max")).collect())
            .unwrap_or_default();
        huge.sort();
        names.extend(huge);
        for n in names {
            if let Some(v) = read_trim(&dir.join(&n)) {
                settings.push((n, v));
            }
        }
        tree.nodes.push(Node {
            path: path.clone(),
            cgtype,
            subtree_control: read_trim(&dir.join("cgroup.subtree_control")).unwrap_or_default().split_whitespace().map(str::to_string).collect(),
            frozen: !path.is_empty() && (frozen.contains(&path) || read_trim(&dir.join("cgroup.freeze")).as_deref() == Some("1")),
            settings,
        });
    }
    let top = hierarchy_path(cg)?;
    let rel = |pid: i32, p: &str| -> Result<String> {
        if p == top {
            return Ok(String::new());
        }
        p.strip_prefix(&format!("{top}/")).map(str::to_string).ok_or_else(|| {
            pod_err(pod, "save cgroups", format!("pid {pid} is in cgroup {p}, outside the pod's {top}"))
        })
    };
    let (_, init_v1) = cgroup_of(&format!("/proc/{init_pid}/cgroup")).map_err(|e| pod_err(pod, "save cgroups", format!("read cgroups of init {init_pid}: {e}")))?;
    let who = std::iter::once((1, init_pid)).chain(members.iter().copied());
    for (vpid, pid) in who {
        let (v2, v1) = cgroup_of(&format!("/proc/{pid}/cgroup")).map_err(|e| pod_err(pod, "save cgroups", format!("read cgroups of pid {vpid}: {e}")))?;
        if let Some(l) = v1.iter().find(|l| !init_v1.contains(l)) {
            return Err(pod_err(pod, "save cgroups", format!("pid {vpid} is in cgroup v1 {l}, not the pod's: not supported")));
        }
        let path = rel(vpid, &v2)?;
        if threaded {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| pod_err(pod, "save cgroups", format!("list threads of pid {vpid}: {e}")))?;
            for t in tasks.flatten() {
                let Ok(tid) = t.file_name().to_string_lossy().parse::<i32>() else { continue };
                let (tv2, _) = cgroup_of(&format!("/proc/{pid}/task/{tid}/cgroup")).map_err(|e| pod_err(pod, "save cgroups", e))?;
                let tpath = rel(vpid, &tv2)?;
                if tpath != path {
                    let vtid = crate::cpu::vtid_of(pid, tid)?;
                    tree.threads.push((vpid, vtid, tpath));
                }
            }
        }
        tree.procs.push((vpid, path));
    }
    tree.threads.sort();
    Ok(tree)
}

fn write(pod: &str, path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|e| pod_err(pod, format!("restore cgroups: write {value:?} to {}", path.display()), e))
}

fn dir_of(cg: &Cgroup, path: &str) -> PathBuf {
    if path.is_empty() {
        cg.v2.clone()
    } else {
        cg.v2.join(path)
    }
}

/// Controllers the tree uses (enabled for children somewhere).
fn used_controllers(tree: &CgroupTree) -> Vec<String> {
    let mut out: Vec<String> = tree.nodes.iter().flat_map(|n| n.subtree_control.iter().cloned()).collect();
    out.sort();
    out.dedup();
    out
}

/// Makes the saved tree under the new pod's cgroup (see the module doc): controllers offered,
/// cgroups made, types and tree limits set.
pub fn prepare(pod: &str, cg: &Cgroup, tree: &CgroupTree) -> Result<()> {
    let have: Vec<String> = read_trim(&cg.v2.join("cgroup.controllers")).unwrap_or_default().split_whitespace().map(str::to_string).collect();
    let missing: Vec<String> = used_controllers(tree).into_iter().filter(|c| !have.contains(c)).collect();
    if !missing.is_empty() {
        // Offered by every level from the hierarchy's root down to the pod's parent.
        let root = v2_root()?;
        let parent = cg.v2.parent().ok_or_else(|| pod_err(pod, "restore cgroups", "the pod's cgroup has no parent"))?;
        let mut levels = vec![parent.to_path_buf()];
        while let Some(p) = levels.last().and_then(|l| l.parent()).filter(|p| p.starts_with(&root)) {
            levels.push(p.to_path_buf());
        }
        for dir in levels.iter().rev() {
            let enabled = read_trim(&dir.join("cgroup.subtree_control")).unwrap_or_default();
            for c in &missing {
                if !enabled.split_whitespace().any(|e| e == c) {
                    write(pod, &dir.join("cgroup.subtree_control"), &format!("+{c}"))?;
                }
            }
        }
    }
    for n in &tree.nodes {
        let dir = dir_of(cg, &n.path);
        if !n.path.is_empty() {
            std::fs::create_dir(&dir).map_err(|e| pod_err(pod, format!("restore cgroups: create {}", dir.display()), e))?;
        }
        if n.cgtype == "threaded" {
            write(pod, &dir.join("cgroup.type"), "threaded")?;
        }
        for (k, v) in n.settings.iter().filter(|(k, _)| TREE_LIMITS.contains(&k.as_str())) {
            write(pod, &dir.join(k), v)?;
        }
    }
    Ok(())
}

/// Puts every process and thread into its cgroup, then enables controllers, writes the
/// settings and freezes what was frozen (see the module doc). `host_of` maps a vpid (1: the
/// init) to its host pid, `host_tid` a (vpid, thread id) to the host's thread id.
pub fn place(
    pod: &str,
    cg: &Cgroup,
    tree: &CgroupTree,
    host_of: &dyn Fn(i32) -> Option<i32>,
    host_tid: &dyn Fn(i32, i32) -> Option<i32>,
) -> Result<()> {
    for (vpid, path) in &tree.procs {
        let pid = host_of(*vpid).ok_or_else(|| pod_err(pod, "restore cgroups", format!("pid {vpid} was not restored")))?;
        if !path.is_empty() {
            write(pod, &dir_of(cg, path).join("cgroup.procs"), &pid.to_string())?;
        }
    }
    for (vpid, vtid, path) in &tree.threads {
        let tid = host_tid(*vpid, *vtid).ok_or_else(|| pod_err(pod, "restore cgroups", format!("thread {vtid} of pid {vpid} was not restored")))?;
        write(pod, &dir_of(cg, path).join("cgroup.threads"), &tid.to_string())?;
    }
    for n in &tree.nodes {
        let dir = dir_of(cg, &n.path);
        if !n.subtree_control.is_empty() {
            let v: Vec<String> = n.subtree_control.iter().map(|c| format!("+{c}")).collect();
            write(pod, &dir.join("cgroup.subtree_control"), &v.join(" "))?;
        }
    }
    for n in &tree.nodes {
        let dir = dir_of(cg, &n.path);
        for (k, v) in n.settings.iter().filter(|(k, _)| !TREE_LIMITS.contains(&k.as_str())) {
            let file = dir.join(k);
            if !file.exists() {
                return Err(pod_err(pod, "restore cgroups", format!("{} has no {k} (controller not available here)", dir.display())));
            }
            // Per-device settings are one line each; a read-back default such as "default 100"
            // is written as shown.
            for line in v.lines().filter(|l| !l.trim().is_empty()) {
                match std::fs::write(&file, line) {
                    Ok(()) => {}
                    // cpuset.cpus.partition reads back "member" etc. and accepts it; an
                    // effective-only value the kernel rejects is reported.
                    Err(e) => return Err(pod_err(pod, format!("restore cgroups: write {line:?} to {}", file.display()), e)),
                }
            }
        }
    }
    // The pod's own cgroup is frozen and thawed by Zap itself.
    for n in tree.nodes.iter().filter(|n| n.frozen && !n.path.is_empty()) {
        write(pod, &dir_of(cg, &n.path).join("cgroup.freeze"), "1")?;
    }
    Ok(())
}

/// Removes the cgroups under `dir` (not `dir` itself), deepest first, retrying a cgroup that is
/// still busy for up to 2 s. Their processes must be gone.
pub fn remove_subtree(dir: &Path) -> std::io::Result<()> {
    for rel in subtree(dir).into_iter().skip(1).rev() {
        let p = dir.join(&rel);
        let start = std::time::Instant::now();
        loop {
            match std::fs::remove_dir(&p) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && start.elapsed() < std::time::Duration::from_secs(2) => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(std::io::Error::new(e.kind(), format!("{}: {e}", p.display()))),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtree_order() {
        let d = tempfile::tempdir().unwrap();
        for p in ["b", "a", "a/x", "a/x/y", "b/z"] {
            std::fs::create_dir(d.path().join(p)).unwrap();
        }
        assert_eq!(subtree(d.path()), vec!["", "a", "b", "a/x", "b/z", "a/x/y"]);
        remove_subtree(d.path()).unwrap();
        assert_eq!(subtree(d.path()), vec![""]);
    }
}
