//! Pods: groups of processes in their own PID, mount, UTS, IPC, network, cgroup and time
//! namespaces, with their own cgroup, hostname, `/proc`, `/sys` and optionally a veth interface
//! with an address.
//!
//! ## Design
//! [`create`] makes the pod's cgroup ([`cgroup`]), then starts our init, `zap-init`
//! ([`init`]), with one `clone3` (all `CLONE_NEW*` flags above plus `CLONE_INTO_CGROUP`)
//! followed at once by `execve`. The init is PID 1 of the pod: it makes the pod's time namespace
//! and enters it ([`clock`]: the offsets of a restore are computed by the creator just before it
//! sends the init its configuration), mounts a private `/proc`, a
//! `/sys` of the pod's network namespace (with cgroup2 on `/sys/fs/cgroup`), sets the hostname,
//! waits while the creator adds it to the v1 cgroups and wires the network ([`net`]), then
//! starts the command (or, for restores, bare processes with chosen pids) and reports the
//! outcome; `create` returns only then. Any failure removes everything created so
//! far. The init is not tied to the `zap` process: the pod lives on after `zap` exits, and the
//! init is then reaped by whoever inherits it (the host's PID 1 or a subreaper). A process that
//! created a pod and is still running (a program using this library) reaps the init itself in
//! [`stop`], [`kill`] and [`rm`].
//!
//! The init forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to every process of
//! the pod and exits when the main process ends, writing its status to `<pod dir>/exit`; the
//! kernel then kills the rest of the pod's PID namespace.
//!
//! ## State on disk
//! The run directory ([`run_dir`]: `/run/zap/pods`, `<root>/pods` on a host with a Zap root, or
//! `$ZAP_RUN_DIR`, mode 0700) holds one
//! directory per pod: `pod.json` (a [`PodState`], replaced atomically), `console.log` (the
//! command's stdout and stderr), `exit` (an [`init::ExitInfo`]) and `mounts.base` (the pod's
//! mount table as its init set it up, what the pod's own mounts are told apart from:
//! [`mounts`]). `pod.json` is written
//! before anything else is created, so a pod whose creation was interrupted can still be
//! removed. A pod's status ([`PodStatus`]) is computed live: running when its init is alive and
//! has the start time recorded in `pod.json` (guarding against pid reuse), exited when the exit
//! file is there, dead otherwise.
//!
//! ## Network topology
//! ```text
//!   host ── zap0 (bridge, 10.77.0.1/24 = gateway of each subnet in use)
//!             ├── zv-1a2b3c4d ═══ veth ═══ eth0 10.77.0.2/24  (pod a, default via 10.77.0.1)
//!             └── zv-5e6f7a8b ═══ veth ═══ eth0 10.77.0.3/24  (pod b)
//! ```
//! Without an address a pod has only `lo` (up) in its own network namespace.
//!
//! ## What the pod makes inside itself
//! A pod's processes may mount file systems, make cgroups under the pod's and make namespaces
//! of their own; a checkpoint saves those and a restore makes them again before the processes
//! run ([`inside`]: [`mounts`], [`cgroups`], [`nested`]). [`rm`] removes a pod whatever it made:
//! `cgroup.kill` ends every process of the pod's cgroup and of those under it (frozen ones too),
//! the cgroups are removed deepest first, and mounts and namespaces go with the processes.
pub mod cgroup;
pub mod cgroups;
pub mod checkpoint;
pub mod clock;
pub mod init;
pub mod inside;
pub mod mounts;
pub mod nested;
pub mod net;
pub mod netlock;
pub mod precopy;
pub mod restore;

use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::sys::{clone as sysclone, ns, proc as sysproc};
use crate::{EngineError, Result};
use cgroup::{Cgroup, Limits};
pub use init::{ExitInfo, Launch};
use net::Cidr;

/// Default run directory of pods.
pub const DEFAULT_RUN_DIR: &str = crate::host::DEFAULT_RUN_DIR;
/// Version of the `pod.json` format.
pub const STATE_VERSION: u32 = 1;
/// Namespaces of a pod.
const POD_NS: i32 = libc::CLONE_NEWPID
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP;
/// How long `create` waits for each answer of the init.
const INIT_TIMEOUT_MS: i32 = 10_000;
/// How long killing a cgroup may take.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// What to create.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSpec {
    /// The pod's name (`[A-Za-z0-9][A-Za-z0-9_.-]{0,62}`).
    pub name: String,
    /// Hostname (default: the name).
    pub hostname: Option<String>,
    /// IPv4 address with prefix (`10.77.0.2/24`); no network but `lo` when `None`.
    pub ip: Option<String>,
    /// MAC address of the pod's `eth0` (default: random, chosen by the kernel).
    pub mac: Option<String>,
    /// Memory limit in bytes.
    pub memory_limit: Option<u64>,
    /// CPU limit in CPUs.
    pub cpus: Option<f64>,
    /// What the init starts.
    pub launch: Launch,
    /// The `zap-init` binary ([`default_init_exe`]).
    pub init_exe: PathBuf,
}

/// What is recorded about a pod (`pod.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodState {
    /// Format version ([`STATE_VERSION`]).
    pub version: u32,
    /// The pod's name.
    pub name: String,
    /// Its hostname.
    pub hostname: String,
    /// Its address with prefix (`10.77.0.2/24`).
    pub ip: Option<String>,
    /// The MAC address asked for.
    pub mac: Option<String>,
    /// Host pid of the pod's init (0 while being created).
    pub init_pid: i32,
    /// Start time of the init (clock ticks after boot, `/proc/PID/stat` field 22).
    pub init_start: u64,
    /// The pid (in the pod) of the process whose exit ends the pod (0 while being created).
    pub main_vpid: i32,
    /// Host pid of that process when the pod was created.
    pub main_pid: Option<i32>,
    /// The cgroup v2 directory.
    pub cgroup: PathBuf,
    /// cgroup v1 directories used for limits.
    pub cgroup_v1: Vec<PathBuf>,
    /// Host end of the pod's veth.
    pub veth_host: Option<String>,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
    /// Memory limit in bytes.
    pub memory_limit: Option<u64>,
    /// CPU limit.
    pub cpus: Option<f64>,
    /// The last checkpoint of the pod (set by the checkpoint code).
    pub last_checkpoint: Option<String>,
    /// The command (empty for restored pods).
    pub argv: Vec<String>,
}

/// A pod's status, computed live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodStatus {
    /// The init runs.
    Running,
    /// The main process ended (or the pod was killed by `zap`).
    Exited(ExitInfo),
    /// The init is gone without an exit status (killed from outside, or creation interrupted).
    Dead,
}

impl std::fmt::Display for PodStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PodStatus::Running => write!(f, "running"),
            PodStatus::Exited(e) => write!(f, "exited {}", e.code),
            PodStatus::Dead => write!(f, "dead"),
        }
    }
}

fn pod_err(pod: &str, step: impl Into<String>, detail: impl std::fmt::Display) -> EngineError {
    EngineError::Pod { pod: pod.to_string(), step: step.into(), detail: detail.to_string() }
}

/// The run directory: `$ZAP_RUN_DIR`, else `<root>/pods` on a host with a Zap root, else
/// [`DEFAULT_RUN_DIR`] (see [`crate::host`]).
pub fn run_dir() -> PathBuf {
    crate::host::run_dir()
}

/// `zap-init` next to the running executable, or `$ZAP_INIT`.
pub fn default_init_exe() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ZAP_INIT").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| EngineError::io("find own executable", Path::new("/proc/self/exe"), e))?;
    let init = exe.with_file_name("zap-init");
    if !init.exists() {
        return Err(EngineError::io(
            "find zap-init (set ZAP_INIT to override)",
            &init,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    Ok(init)
}

/// Checks a pod name: `[A-Za-z0-9][A-Za-z0-9_.-]{0,62}`.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = (1..=63).contains(&name.len())
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(pod_err(name, "check name", "a pod name is 1-63 characters of A-Z a-z 0-9 _ . - starting with a letter or digit"))
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// State and start time of a process: `(state char, start time)` from `/proc/PID/stat`. The
/// start time tells a process from a later one that reused its pid.
pub fn proc_stat(pid: i32) -> Option<(char, u64)> {
    if pid <= 0 {
        return None;
    }
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let start = f.nth(18)?.parse().ok()?; // field 22 overall; `rest` starts at field 3
    Some((state, start))
}

/// True if `pid` is a live (not zombie) process that started at `start`.
pub fn alive(pid: i32, start: u64) -> bool {
    proc_stat(pid).is_some_and(|(st, t)| t == start && st != 'Z' && st != 'X')
}

/// The directory of pod `name` in run directory `root`.
pub fn pod_dir(root: &Path, name: &str) -> PathBuf {
    root.join(name)
}

/// Writes `pod.json` of `state` atomically (tmp + rename).
pub fn save(root: &Path, state: &PodState) -> Result<()> {
    let dir = pod_dir(root, &state.name);
    let tmp = dir.join("pod.json.tmp");
    let data = serde_json::to_vec_pretty(state).map_err(|e| pod_err(&state.name, "encode pod.json", e))?;
    std::fs::write(&tmp, data).map_err(|e| EngineError::io("write", &tmp, e))?;
    let path = dir.join("pod.json");
    std::fs::rename(&tmp, &path).map_err(|e| EngineError::io("replace", &path, e))
}

/// Loads pod `name`. A pod directory without `pod.json` (creation interrupted at its very
/// start) gives a stub state, enough for [`rm`].
pub fn load(root: &Path, name: &str) -> Result<PodState> {
    validate_name(name)?;
    let dir = pod_dir(root, name);
    let path = dir.join("pod.json");
    match std::fs::read(&path) {
        Ok(data) => {
            let st: PodState = serde_json::from_slice(&data).map_err(|e| pod_err(name, format!("read {}", path.display()), e))?;
            if st.version != STATE_VERSION {
                return Err(pod_err(name, format!("read {}", path.display()), format!("unknown version {}", st.version)));
            }
            Ok(st)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir.is_dir() => {
            let cg = Cgroup::plan(name, &Limits::default())?;
            Ok(PodState {
                version: STATE_VERSION,
                name: name.to_string(),
                hostname: name.to_string(),
                ip: None,
                mac: None,
                init_pid: 0,
                init_start: 0,
                main_vpid: 0,
                main_pid: None,
                cgroup: cg.v2,
                cgroup_v1: Vec::new(),
                veth_host: None,
                created_ms: 0,
                memory_limit: None,
                cpus: None,
                last_checkpoint: None,
                argv: Vec::new(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(pod_err(name, "find pod", "no such pod")),
        Err(e) => Err(EngineError::io("read", &path, e)),
    }
}

/// All pods of the run directory, by name (pods whose `pod.json` cannot be read are skipped
/// with a warning).
pub fn list(root: &Path) -> Result<Vec<PodState>> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(EngineError::io("list pods in", root, e)),
    };
    let mut pods = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| EngineError::io("list pods in", root, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() && validate_name(&name).is_ok() {
            match load(root, &name) {
                Ok(p) => pods.push(p),
                Err(e) => tracing::warn!(pod = %name, error = %e, "skipping unreadable pod"),
            }
        }
    }
    pods.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(pods)
}

/// The cgroups of a pod.
pub fn cgroup_of(state: &PodState) -> Cgroup {
    Cgroup::from_paths(state.cgroup.clone(), state.cgroup_v1.clone())
}

/// The pod's status now.
pub fn status(root: &Path, state: &PodState) -> PodStatus {
    if alive(state.init_pid, state.init_start) {
        return PodStatus::Running;
    }
    match std::fs::read(pod_dir(root, &state.name).join("exit")).ok().and_then(|d| serde_json::from_slice(&d).ok()) {
        Some(info) => PodStatus::Exited(info),
        None => PodStatus::Dead,
    }
}

/// Host pid of the process of `cgroup` whose innermost pid is `vpid`.
pub fn host_pid_of(cgroup: &Cgroup, vpid: i32) -> Option<i32> {
    cgroup.procs().into_iter().find(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("NSpid:")).and_then(|l| l.split_whitespace().last()?.parse().ok()))
            == Some(vpid)
    })
}

/// Creates and starts a pod; returns once its command runs (or its restore targets exist).
/// On failure nothing of the pod is left.
pub fn create(root: &Path, spec: &PodSpec) -> Result<PodState> {
    create_with(root, spec, false, None).map(|(state, _)| state)
}

/// Like [`create`], with the pod's network namespace locked ([`netlock::NetLock::namespace`])
/// from the moment it exists, before its interface has an address or is up: a restore's peers
/// must never find the address answering without the connections (the kernel would reset them).
pub fn create_locked(root: &Path, spec: &PodSpec) -> Result<(PodState, netlock::NetLock)> {
    create_locked_guarded(root, spec, None)
}

/// Like [`create_locked`]; with `guard` (the read end of a lazy restore's guard pipe) the pod's
/// init is guarded by it ([`init`]: it ends the pod if the pipe reaches EOF before `D`).
pub fn create_locked_guarded(root: &Path, spec: &PodSpec, guard: Option<BorrowedFd<'_>>) -> Result<(PodState, netlock::NetLock)> {
    let (state, lock) = create_with(root, spec, true, guard)?;
    let lock = lock.ok_or_else(|| pod_err(&spec.name, "lock network", "no lock was taken"))?;
    Ok((state, lock))
}

fn create_with(root: &Path, spec: &PodSpec, lock_network: bool, guard: Option<BorrowedFd<'_>>) -> Result<(PodState, Option<netlock::NetLock>)> {
    let name = spec.name.as_str();
    validate_name(name)?;
    let cidr = spec.ip.as_deref().map(Cidr::parse).transpose()?;
    if let Some(c) = &cidr {
        // Two pods with one address on the bridge would each get the other's traffic.
        let taken = list(root).unwrap_or_default().into_iter().find(|p| {
            p.name != name
                && status(root, p) == PodStatus::Running
                && p.ip.as_deref().and_then(|ip| Cidr::parse(ip).ok()).is_some_and(|o| o.addr == c.addr)
        });
        if let Some(other) = taken {
            return Err(pod_err(name, "check address", format!("{} is the address of running pod {}", c.addr, other.name)));
        }
    }
    let limits = Limits { memory: spec.memory_limit, cpus: spec.cpus };
    let hostname = spec.hostname.clone().unwrap_or_else(|| name.to_string());
    if hostname.is_empty() || hostname.len() > 64 {
        return Err(pod_err(name, "check hostname", "a hostname is 1-64 bytes"));
    }
    if !spec.init_exe.is_file() {
        return Err(pod_err(name, format!("find init {}", spec.init_exe.display()), "no such file"));
    }
    {
        // Mode 0700 for the directories we create; an existing directory keeps its mode.
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|e| EngineError::io("create run directory", root, e))?;
    }
    let dir = pod_dir(root, name);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(pod_err(name, "create pod", "a pod with this name exists (zap rm it first)"))
        }
        Err(e) => return Err(EngineError::io("create pod directory", &dir, e)),
    }
    let cg = match Cgroup::plan(name, &limits) {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    let mut state = PodState {
        version: STATE_VERSION,
        name: name.to_string(),
        hostname: hostname.clone(),
        ip: cidr.map(|c| c.to_string()),
        mac: spec.mac.clone(),
        init_pid: 0,
        init_start: 0,
        main_vpid: 0,
        main_pid: None,
        cgroup: cg.v2.clone(),
        cgroup_v1: cg.v1.clone(),
        veth_host: None,
        created_ms: now_ms(),
        memory_limit: spec.memory_limit,
        cpus: spec.cpus,
        last_checkpoint: None,
        argv: match &spec.launch {
            Launch::Command { argv, .. } => argv.clone(),
            Launch::Restore { .. } => Vec::new(),
        },
    };
    if let Err(e) = save(root, &state) {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    let mut lock = None;
    match start(root, spec, &mut state, &cg, &limits, cidr.as_ref(), &hostname, lock_network.then_some(&mut lock), guard) {
        Ok(()) => Ok((state, lock)),
        Err(e) => {
            // The namespace goes with the pod.
            if let Some(l) = lock {
                l.keep();
            }
            if let Err(e2) = destroy(root, &state) {
                tracing::warn!(pod = name, error = %e2, "cleanup after failed create");
            }
            Err(e)
        }
    }
}

/// Reaps the init `pid` if it is a child of this process (the pod was created by this process,
/// e.g. a long-running program using the library), waiting up to 2 s for it to end.
fn reap_child(pid: i32) {
    if pid <= 0 {
        return;
    }
    let start = Instant::now();
    while let Ok(None) = ns::try_reap_child(pid) {
        if start.elapsed() > Duration::from_secs(2) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads one status line from the init, waiting at most [`INIT_TIMEOUT_MS`].
fn read_status(name: &str, init_pid: i32, reader: &mut BufReader<std::fs::File>, waiting_for: &str) -> Result<String> {
    if reader.buffer().is_empty() {
        let ready = ns::poll_readable(reader.get_ref().as_fd(), INIT_TIMEOUT_MS)
            .map_err(|e| pod_err(name, format!("wait for init {init_pid}"), e))?;
        if !ready {
            return Err(pod_err(name, format!("wait for init {init_pid} ({waiting_for})"), "timed out"));
        }
    }
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| pod_err(name, format!("read from init {init_pid}"), e))?;
    if line.is_empty() {
        let how = match sysclone::try_reap(init_pid) {
            Some(s) if libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == 127 => "could not be executed".to_string(),
            Some(s) => format!("exited with status {s:#x}"),
            None => "closed its status pipe".to_string(),
        };
        return Err(pod_err(name, format!("start init ({waiting_for})"), format!("init {init_pid} {how}")));
    }
    let line = line.trim_end().to_string();
    if let Some(msg) = line.strip_prefix("err ") {
        return Err(match msg.split_once(": ") {
            Some((step, detail)) => pod_err(name, step, detail),
            None => pod_err(name, "init", msg),
        });
    }
    Ok(line)
}

#[allow(clippy::too_many_arguments)]
fn start(
    root: &Path,
    spec: &PodSpec,
    state: &mut PodState,
    cg: &Cgroup,
    limits: &Limits,
    cidr: Option<&Cidr>,
    hostname: &str,
    lock: Option<&mut Option<netlock::NetLock>>,
    guard: Option<BorrowedFd<'_>>,
) -> Result<()> {
    let name = spec.name.as_str();
    cg.create(limits)?;
    let cg_dir = cg.open_dir()?;
    let (ctl_r, ctl_w) = ns::pipe().map_err(|e| pod_err(name, "create pipe", e))?;
    let (st_r, st_w) = ns::pipe().map_err(|e| pod_err(name, "create pipe", e))?;
    let exe = CString::new(spec.init_exe.as_os_str().as_encoded_bytes())
        .map_err(|_| pod_err(name, "start init", "path contains a NUL byte"))?;
    let argv = [CString::new("zap-init").expect("no NUL")];
    let envp = [CString::new(format!("ZAP_POD={name}")).map_err(|_| pod_err(name, "start init", "bad name"))?];
    let null = std::fs::File::open("/dev/null").map_err(|e| EngineError::io("open", Path::new("/dev/null"), e))?;
    let mut fds = vec![ctl_r.as_fd(), st_w.as_fd()];
    fds.extend(guard); // init::GUARD_FD
    let launch = ns::InitLaunch {
        ns_flags: POD_NS as u64,
        cgroup: cg_dir.as_fd(),
        exe: &exe,
        argv: &argv,
        envp: &envp,
        stdio: null.as_fd(),
        fds: &fds,
    };
    let pid = ns::spawn_init(&launch).map_err(|e| pod_err(name, format!("start init {}", spec.init_exe.display()), e))?;
    drop((ctl_r, st_w, cg_dir, null));
    state.init_pid = pid;
    state.init_start = proc_stat(pid).map_or(0, |(_, t)| t);
    save(root, state)?;
    if let Some(lock) = lock {
        // The namespace exists (the init was cloned into it); nothing of it is configured yet.
        *lock = Some(netlock::NetLock::namespace(&format!("pod {name}"), pid)?);
    }

    let cfg = init::InitConfig {
        version: init::PROTOCOL_VERSION,
        pod_dir: pod_dir(root, name),
        hostname: hostname.to_string(),
        launch: match &spec.launch {
            Launch::Restore { top, tramp, main_vpid, clocks, .. } => {
                Launch::Restore { top: top.clone(), tramp: *tramp, main_vpid: *main_vpid, guarded: guard.is_some(), clocks: *clocks }
            }
            other => other.clone(),
        },
        time: time_ns(name, &spec.launch)?,
    };
    let mut ctl = std::fs::File::from(ctl_w);
    let mut line = serde_json::to_string(&cfg).map_err(|e| pod_err(name, "encode init configuration", e))?;
    line.push('\n');
    // The init may have died already (e.g. its binary is not executable): report that instead.
    let sent = ctl.write_all(line.as_bytes());
    let mut status = BufReader::new(std::fs::File::from(st_r));
    let ready = read_status(name, pid, &mut status, "set up")?;
    sent.map_err(|e| pod_err(name, format!("send configuration to init {pid}"), e))?;
    if ready != "ready" {
        return Err(pod_err(name, format!("set up by init {pid}"), format!("unexpected answer {ready:?}")));
    }
    // The mounts as the init set them up: what the pod's own mounts are told apart from.
    mounts::record_base(&pod_dir(root, name), pid)?;
    cg.enter_v1(pid)?;
    match cidr {
        Some(c) => state.veth_host = Some(net::setup(name, pid, c, spec.mac.as_deref())?),
        None => net::setup_loopback(name, pid)?,
    }
    save(root, state)?;
    ctl.write_all(b"go\n").map_err(|e| pod_err(name, format!("send go to init {pid}"), e))?;
    let answer = read_status(name, pid, &mut status, "launch")?;
    let vpid = answer
        .strip_prefix("ok ")
        .and_then(|v| v.parse::<i32>().ok())
        .ok_or_else(|| pod_err(name, format!("launch by init {pid}"), format!("unexpected answer {answer:?}")))?;
    state.main_vpid = vpid;
    state.main_pid = host_pid_of(cg, vpid);
    save(root, state)
}

/// The pod's time namespace ([`clock`]): with the creator's offsets for a new pod, with
/// offsets that continue the saved clocks for a restore (computed now, just before the init
/// starts anything); none for an image without clocks or on a kernel without time namespaces.
fn time_ns(name: &str, launch: &Launch) -> Result<Option<init::TimeNs>> {
    if !clock::supported() {
        tracing::debug!(pod = name, "no time namespaces in this kernel (CONFIG_TIME_NS): the pod sees the host's clocks");
        return Ok(None);
    }
    Ok(match launch {
        Launch::Command { .. } => Some(init::TimeNs { offsets: None }),
        Launch::Restore { clocks: None, .. } => None,
        Launch::Restore { clocks: Some(target), .. } => {
            let offsets = target.offsets().map_err(|e| pod_err(name, "compute the pod's clock offsets", e))?;
            Some(init::TimeNs { offsets: Some(offsets) })
        }
    })
}

/// Kills every process of the pod and records an exit status when none was recorded.
fn kill_all(root: &Path, state: &PodState) -> Result<()> {
    let running = status(root, state) == PodStatus::Running;
    cgroup_of(state).kill(KILL_TIMEOUT).map_err(|e| pod_err(&state.name, "kill", e))?;
    // The init leaves its cgroup before it has finished exiting (as PID 1 it first waits for the
    // rest of its namespace): wait until it is gone too.
    let t = Instant::now();
    while alive(state.init_pid, state.init_start) && t.elapsed() < KILL_TIMEOUT {
        std::thread::sleep(Duration::from_millis(2));
    }
    let dir = pod_dir(root, &state.name);
    if running && !dir.join("exit").exists() {
        let info = ExitInfo { code: 128 + libc::SIGKILL, signal: Some(libc::SIGKILL), wait_status: -1 };
        init::write_exit(&dir, &info).map_err(|e| pod_err(&state.name, "record exit status", e))?;
    }
    Ok(())
}

/// Kills pod `name` at once (`cgroup.kill`). The pod stays listed until [`rm`].
pub fn kill(root: &Path, name: &str) -> Result<PodStatus> {
    let state = load(root, name)?;
    kill_all(root, &state)?;
    reap_child(state.init_pid);
    Ok(status(root, &state))
}

/// Stops pod `name`: SIGTERM to its init (which forwards it to every process), then, if the pod
/// still runs after `timeout`, kills it. Returns the final status.
pub fn stop(root: &Path, name: &str, timeout: Duration) -> Result<PodStatus> {
    let state = load(root, name)?;
    if status(root, &state) != PodStatus::Running {
        return Ok(status(root, &state));
    }
    if let Err(e) = sysclone::kill(state.init_pid, libc::SIGTERM) {
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(pod_err(name, format!("send SIGTERM to init {}", state.init_pid), e));
        }
    }
    let start = Instant::now();
    while status(root, &state) == PodStatus::Running && start.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(10));
    }
    if status(root, &state) == PodStatus::Running {
        kill_all(root, &state)?;
    }
    reap_child(state.init_pid);
    Ok(status(root, &state))
}

/// Removes pod `name`: refuses a running pod unless `force` (then kills it), then deletes its
/// network, cgroups (with those the pod made under its own) and directory. Works on
/// half-created pods and pods whose init died too.
pub fn rm(root: &Path, name: &str, force: bool) -> Result<()> {
    let state = load(root, name)?;
    if status(root, &state) == PodStatus::Running && !force {
        return Err(pod_err(name, "rm", "the pod is running (stop it first, or use rm -f)"));
    }
    destroy(root, &state)
}

/// Kills what is left of the pod and removes its network, cgroups and directory.
fn destroy(root: &Path, state: &PodState) -> Result<()> {
    let name = state.name.as_str();
    let cg = cgroup_of(state);
    cg.kill(KILL_TIMEOUT).map_err(|e| pod_err(name, "kill", e))?;
    reap_child(state.init_pid);
    // The veth's pod end dies with the network namespace; delete the host end and what only this
    // pod used.
    let cidr = state.ip.as_deref().and_then(|s| Cidr::parse(s).ok());
    let others = || -> Vec<Cidr> {
        list(root)
            .unwrap_or_default()
            .iter()
            .filter(|p| p.name != name)
            .filter_map(|p| p.ip.as_deref().and_then(|s| Cidr::parse(s).ok()))
            .collect()
    };
    if state.veth_host.is_some() || cidr.is_some() {
        net::teardown(name, state.veth_host.as_deref(), cidr.as_ref(), others)?;
    }
    cg.remove().map_err(|e| pod_err(name, "remove cgroup", e))?;
    let dir = pod_dir(root, name);
    // A checkpoint scheduler that is being stopped may still write its last log line there: a
    // file that appears while the tree is removed makes it "not empty"; try again a few times.
    let mut tries = 0;
    loop {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty && tries < 10 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(EngineError::io("remove pod directory", &dir, e)),
        }
    }
}

/// Runs `argv` inside running pod `name` (all its namespaces and its cgroups), with this
/// process's stdin/stdout/stderr and environment `env`; returns its exit code (128+signal if
/// killed).
pub fn exec(root: &Path, name: &str, argv: &[String], env: &[(String, String)]) -> Result<i32> {
    let state = load(root, name)?;
    if status(root, &state) != PodStatus::Running {
        return Err(pod_err(name, "exec", format!("the pod is not running ({})", status(root, &state))));
    }
    let cmd = argv.first().ok_or_else(|| pod_err(name, "exec", "empty command"))?;
    let step = format!("exec {cmd:?}");
    let path_var = env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str());
    let path = init::resolve_command(cmd, path_var).ok_or_else(|| pod_err(name, &step, "No such file or directory"))?;
    let bad = |_| pod_err(name, &step, "argument or variable contains a NUL byte");
    let c_path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(bad)?;
    let c_argv = argv.iter().map(|a| CString::new(a.as_bytes())).collect::<Result<Vec<_>, _>>().map_err(bad)?;
    let c_env = env.iter().map(|(k, v)| CString::new(format!("{k}={v}"))).collect::<Result<Vec<_>, _>>().map_err(bad)?;
    let pidfd = sysproc::pidfd_open(state.init_pid).map_err(|e| pod_err(name, format!("open init {}", state.init_pid), e))?;
    // The pidfd pins the process: check it is still our init, not a reused pid.
    if !alive(state.init_pid, state.init_start) {
        return Err(pod_err(name, "exec", "the pod is not running"));
    }
    let cg = cgroup_of(&state);
    // The init's cgroup: the pod's own, or the one a manager inside the pod moved it to (a cgroup
    // that hands controllers to its children may hold no process).
    let cg_dir = match cg.dir_of_process(state.init_pid) {
        Some(dir) => std::fs::File::open(&dir).map_err(|e| EngineError::io("open cgroup", &dir, e))?,
        None => cg.open_dir()?,
    };
    let mut v1 = Vec::new();
    for dir in &cg.v1 {
        let p = dir.join("cgroup.procs");
        v1.push(std::fs::OpenOptions::new().write(true).open(&p).map_err(|e| EngineError::io("open", &p, e))?);
    }
    let v1_fds: Vec<_> = v1.iter().map(|f| f.as_fd()).collect();
    let prog = ns::Program { path: &c_path, argv: &c_argv, envp: &c_env };
    // The pod's time namespace is its init's (see `clock`).
    let flags = if clock::supported() { POD_NS | libc::CLONE_NEWTIME } else { POD_NS };
    ns::run_in_namespaces(pidfd.as_fd(), flags, cg_dir.as_fd(), &v1_fds, &prog).map_err(|(s, e)| {
        let what = match s {
            ns::ChildStep::Setns => "join namespaces",
            ns::ChildStep::Clone => "create process in cgroup",
            ns::ChildStep::Chdir => "change directory",
            ns::ChildStep::Exec => "start",
        };
        pod_err(name, format!("{step}: {what}"), e)
    })
}

/// Records `id` as the pod's last checkpoint.
pub fn set_last_checkpoint(root: &Path, name: &str, id: &str) -> Result<()> {
    let mut state = load(root, name)?;
    state.last_checkpoint = Some(id.to_string());
    save(root, &state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("p1").is_ok());
        assert!(validate_name("a.b_c-9").is_ok());
        assert!(validate_name(&"x".repeat(63)).is_ok());
        assert!(validate_name(&"x".repeat(64)).is_err());
        assert!(validate_name("").is_err());
        assert!(validate_name("-a").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name("..").is_err());
    }
}
