//! The pod's cgroups: one cgroup v2 directory `<v2root>/<parent>/<name>` that holds every process
//! of the pod (freeze, kill, process list), plus cgroup v1 directories
//! `<v1root>/<ctrl>/<parent>/<name>` for memory/CPU limits when those controllers are not
//! available in v2 (hybrid hierarchies). The parent is `zap`, or on a host with a Zap root
//! `zap-<tag>` derived from the root ([`crate::host::cgroup_parent`]), so that the pods of two
//! hosts on one machine never share a cgroup.
//!
//! Layouts: pure v2 when `/sys/fs/cgroup/cgroup.controllers` exists; hybrid when
//! `/sys/fs/cgroup/unified/cgroup.controllers` exists (v1 controllers then live in
//! `/sys/fs/cgroup/<controller>`). In v2, limits go to `memory.max` / `cpu.max`; in v1 to
//! `memory.limit_in_bytes` and `cpu.cfs_quota_us` + `cpu.cfs_period_us`. A v1 cgroup holds
//! nothing until a process is put into its `cgroup.procs`: the pod's init is added before the
//! pod's command starts, so every process of the pod inherits it.
//!
//! The pod may make cgroups under its own (see [`super::cgroups`]): [`Cgroup::procs`] lists the
//! processes of all of them, [`Cgroup::kill`] ends them all and [`Cgroup::remove`] removes them
//! deepest first; a checkpoint's stop thaws those the pod froze while it holds the pod
//! ([`Cgroup::thaw_children`], [`Cgroup::refreeze`]).
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{EngineError, Result};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// CPU bandwidth period for `--cpus` (100 ms, the kernel default).
const CPU_PERIOD_US: u64 = 100_000;

/// Limits of a pod's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// CPU limit in CPUs (1.5 = one and a half CPUs).
    pub cpus: Option<f64>,
}

/// The cgroup v2 root of this machine: `/sys/fs/cgroup` (pure v2) or `/sys/fs/cgroup/unified`
/// (hybrid).
pub fn v2_root() -> Result<PathBuf> {
    let root = Path::new(CGROUP_ROOT);
    if root.join("cgroup.controllers").exists() {
        return Ok(root.to_path_buf());
    }
    let unified = root.join("unified");
    if unified.join("cgroup.controllers").exists() {
        return Ok(unified);
    }
    Err(EngineError::io(
        "find the cgroup v2 hierarchy",
        root,
        std::io::Error::new(std::io::ErrorKind::NotFound, "neither pure v2 nor hybrid with /sys/fs/cgroup/unified"),
    ))
}

fn read(path: &Path, step: &'static str) -> Result<String> {
    fs::read_to_string(path).map_err(|e| EngineError::io(step, path, e))
}

fn write(path: &Path, value: &str, step: &'static str) -> Result<()> {
    fs::write(path, value).map_err(|e| EngineError::io(step, path, e))
}

fn v2_has_controller(dir: &Path, ctrl: &str) -> bool {
    fs::read_to_string(dir.join("cgroup.controllers")).is_ok_and(|s| s.split_whitespace().any(|c| c == ctrl))
}

fn mkdir(path: &Path) -> Result<()> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(EngineError::io("create cgroup", path, e)),
    }
}

/// A pod's cgroups (v2 directory plus the v1 directories used for limits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    /// The cgroup v2 directory.
    pub v2: PathBuf,
    /// cgroup v1 directories (limits on hybrid hierarchies), possibly empty.
    pub v1: Vec<PathBuf>,
}

impl Cgroup {
    /// The cgroups recorded for a pod.
    pub fn from_paths(v2: PathBuf, v1: Vec<PathBuf>) -> Self {
        Cgroup { v2, v1 }
    }

    /// Where the cgroups of pod `name` go, before they exist: the v2 path, and the v1 paths the
    /// `limits` will need.
    pub fn plan(name: &str, limits: &Limits) -> Result<Self> {
        let root = v2_root()?;
        let parent_name = crate::host::cgroup_parent();
        let parent = root.join(&parent_name);
        let mut v1 = Vec::new();
        let v1_root = Path::new(CGROUP_ROOT);
        let pure = root == v1_root;
        if limits.memory.is_some() && !(v2_has_controller(&root, "memory") || pure) {
            v1.push(v1_root.join("memory").join(&parent_name).join(name));
        }
        if limits.cpus.is_some() && !(v2_has_controller(&root, "cpu") || pure) {
            v1.push(v1_root.join("cpu").join(&parent_name).join(name));
        }
        Ok(Cgroup { v2: parent.join(name), v1 })
    }

    /// Creates the cgroups planned by [`Cgroup::plan`] and sets the limits. Fails if the v2
    /// directory already exists (another pod, or leftovers of one).
    pub fn create(&self, limits: &Limits) -> Result<()> {
        let parent = self.v2.parent().expect("cgroup has a parent");
        mkdir(parent)?;
        let root = parent.parent().expect("zap cgroup has a parent");
        let want: Vec<&str> = [("memory", limits.memory.is_some()), ("cpu", limits.cpus.is_some())]
            .into_iter()
            .filter(|(c, used)| *used && v2_has_controller(root, c))
            .map(|(c, _)| c)
            .collect();
        for dir in [root, parent] {
            for c in &want {
                let enabled = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
                if !enabled.split_whitespace().any(|e| e == *c) {
                    write(&dir.join("cgroup.subtree_control"), &format!("+{c}"), "enable controller in")?;
                }
            }
        }
        fs::create_dir(&self.v2).map_err(|e| EngineError::io("create cgroup", &self.v2, e))?;
        if let Some(mem) = limits.memory {
            match self.v1.iter().find(|p| p.starts_with(Path::new(CGROUP_ROOT).join("memory"))) {
                Some(dir) => {
                    mkdir(dir.parent().expect("v1 cgroup has a parent"))?;
                    mkdir(dir)?;
                    write(&dir.join("memory.limit_in_bytes"), &mem.to_string(), "set memory limit in")?;
                }
                None => write(&self.v2.join("memory.max"), &mem.to_string(), "set memory limit in")?,
            }
        }
        if let Some(cpus) = limits.cpus {
            let quota = ((cpus * CPU_PERIOD_US as f64).round() as u64).max(1000);
            match self.v1.iter().find(|p| p.starts_with(Path::new(CGROUP_ROOT).join("cpu"))) {
                Some(dir) => {
                    mkdir(dir.parent().expect("v1 cgroup has a parent"))?;
                    mkdir(dir)?;
                    write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string(), "set cpu period in")?;
                    write(&dir.join("cpu.cfs_quota_us"), &quota.to_string(), "set cpu quota in")?;
                }
                None => write(&self.v2.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"), "set cpu limit in")?,
            }
        }
        Ok(())
    }

    /// Puts process `pid` into the v1 cgroups (the v2 one is entered with `CLONE_INTO_CGROUP`).
    pub fn enter_v1(&self, pid: i32) -> Result<()> {
        for dir in &self.v1 {
            write(&dir.join("cgroup.procs"), &pid.to_string(), "add the pod's init to cgroup")?;
        }
        Ok(())
    }

    /// Opens the v2 directory (for `CLONE_INTO_CGROUP`).
    pub fn open_dir(&self) -> Result<fs::File> {
        fs::File::open(&self.v2).map_err(|e| EngineError::io("open cgroup", &self.v2, e))
    }

    /// Host pids of the processes in the cgroup and in the cgroups the pod made under it (empty
    /// if it is gone).
    pub fn procs(&self) -> Vec<i32> {
        let mut out = Vec::new();
        for rel in super::cgroups::subtree(&self.v2) {
            let dir = if rel.is_empty() { self.v2.clone() } else { self.v2.join(rel) };
            out.extend(fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        out
    }

    /// The cgroup directory process `pid` is in, when it is this cgroup or one under it.
    pub fn dir_of_process(&self, pid: i32) -> Option<PathBuf> {
        let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
        let dir = v2_root().ok()?.join(path.trim_start_matches('/'));
        dir.starts_with(&self.v2).then_some(dir)
    }

    fn events_say(&self, key: &str, value: &str) -> Result<bool> {
        let s = read(&self.v2.join("cgroup.events"), "read")?;
        Ok(s.lines().any(|l| l.split_whitespace().eq([key, value])))
    }

    /// Freezes every process of the cgroup and waits until the kernel reports it frozen.
    pub fn freeze(&self, timeout: Duration) -> Result<()> {
        write(&self.v2.join("cgroup.freeze"), "1", "freeze cgroup")?;
        let start = Instant::now();
        while !self.events_say("frozen", "1")? {
            if start.elapsed() > timeout {
                return Err(EngineError::io(
                    "freeze cgroup",
                    &self.v2,
                    std::io::Error::new(std::io::ErrorKind::TimedOut, format!("not frozen after {timeout:?}")),
                ));
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        Ok(())
    }

    /// Lets the processes of the cgroup run again.
    pub fn thaw(&self) -> Result<()> {
        write(&self.v2.join("cgroup.freeze"), "0", "thaw cgroup")
    }

    /// Clears `cgroup.freeze` of the cgroups under this one that the pod froze itself, and
    /// returns them (paths under this cgroup). While this cgroup is frozen nothing runs; once it
    /// is thawed, their processes can be stopped with ptrace and have syscalls injected (a
    /// frozen process would not run the injected syscall). [`Cgroup::refreeze`] undoes it.
    pub fn thaw_children(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for rel in super::cgroups::subtree(&self.v2).into_iter().skip(1) {
            let f = self.v2.join(&rel).join("cgroup.freeze");
            if fs::read_to_string(&f).is_ok_and(|v| v.trim() == "1") {
                write(&f, "0", "thaw cgroup")?;
                out.push(rel);
            }
        }
        Ok(out)
    }

    /// Freezes again the cgroups [`Cgroup::thaw_children`] thawed.
    pub fn refreeze(&self, children: &[String]) -> Result<()> {
        for rel in children {
            write(&self.v2.join(rel).join("cgroup.freeze"), "1", "freeze cgroup")?;
        }
        Ok(())
    }

    /// Kills every process of the cgroup and of the cgroups under it (`cgroup.kill`, frozen ones
    /// included) and waits up to `timeout` until they are empty. A cgroup that no longer exists
    /// counts as empty.
    pub fn kill(&self, timeout: Duration) -> Result<()> {
        if !self.v2.exists() {
            return Ok(());
        }
        write(&self.v2.join("cgroup.kill"), "1", "kill the processes of cgroup")?;
        let start = Instant::now();
        while !self.procs().is_empty() {
            if start.elapsed() > timeout {
                return Err(EngineError::io(
                    "kill the processes of cgroup",
                    &self.v2,
                    std::io::Error::new(std::io::ErrorKind::TimedOut, format!("still populated after {timeout:?}")),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Memory in use by the pod: `memory.current` (v2), else `memory.usage_in_bytes` (v1), else
    /// the sum of the processes' resident sets.
    pub fn memory_bytes(&self) -> u64 {
        let num = |p: PathBuf| fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u64>().ok());
        if let Some(n) = num(self.v2.join("memory.current")) {
            return n;
        }
        for dir in &self.v1 {
            if let Some(n) = num(dir.join("memory.usage_in_bytes")) {
                return n;
            }
        }
        self.procs()
            .into_iter()
            .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .filter_map(|s| {
                let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_string();
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .map(|kb| kb * 1024)
            .sum()
    }

    /// Removes the cgroup directories and the cgroups the pod made under them, deepest first
    /// (they must be empty of processes). Directories already gone are fine. A just-emptied
    /// cgroup may stay busy for a moment; this retries for 2 s.
    pub fn remove(&self) -> Result<()> {
        for dir in std::iter::once(&self.v2).chain(&self.v1) {
            super::cgroups::remove_subtree(dir).map_err(|e| EngineError::io("remove cgroup", dir, e))?;
            let start = Instant::now();
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && start.elapsed() < Duration::from_secs(2) => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(EngineError::io("remove cgroup", dir, e)),
                }
            }
        }
        Ok(())
    }
}

/// Parses a memory size: bytes, or a number with a K, M, G or T suffix (binary units; an
/// optional trailing `B`/`iB` is accepted: `512M`, `1.5G`, `64MiB`).
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (num, mult) = match t.chars().last()? {
        'k' | 'K' => (&t[..t.len() - 1], 1u64 << 10),
        'm' | 'M' => (&t[..t.len() - 1], 1 << 20),
        'g' | 'G' => (&t[..t.len() - 1], 1 << 30),
        't' | 'T' => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let v: f64 = num.parse().ok()?;
    (v.is_finite() && v > 0.0).then_some((v * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("1.5G"), Some(3 << 29));
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("-1M"), None);
    }
}
