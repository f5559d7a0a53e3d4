//! The pod's PID 1 (`zap-init`): sets up the pod from inside, starts what it is told to, then
//! reaps children and forwards signals until the pod's main process ends.
//!
//! ## Protocol with the creator (version [`PROTOCOL_VERSION`])
//! The creator starts `zap-init` with `/dev/null` on fds 0-2 and two pipes: fd 3 (control,
//! creator → init) and fd 4 (status, init → creator). On start, init closes every other fd
//! (shells leak some) and blocks the signals it handles. Both pipes carry text lines:
//! 1. creator → init: one line of JSON, an [`InitConfig`] (its `version` must match);
//! 2. init: makes the pod's time namespace and enters it ([`super::clock`]), makes all mounts private, mounts a fresh `/proc`, `/sys` (with the cgroup2
//!    hierarchy) and a devpts of the pod's own on `/dev/pts`, sets the hostname, then
//!    init → creator: `ready`;
//! 3. creator configures the pod from outside (v1 cgroups, network), then creator → init: `go`;
//! 4. init launches ([`Launch`]) and init → creator: `ok <main vpid>` or `err <message>`.
//!
//! A failure at any step is sent as `err <step>: <error>` and init exits with status 1. An EOF on
//! the control pipe before `go` (the creator died) makes init exit too.
//!
//! A lazily restored pod's init is guarded ([`Launch::Restore`] `guarded`): the creator passes
//! the read end of a guard pipe as fd 5, whose write end the pager of the restore holds. Until
//! the init reads `D` from it (every page is in), an EOF there (the pager died) makes the init
//! kill every process of the pod, write `<pod dir>/failed` (why) and an exit status of 137, and
//! exit: no process is left waiting for a page that will not come.
//!
//! ## Running
//! Signals are blocked and read from a signalfd: SIGCHLD reaps every exited child; SIGTERM,
//! SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are forwarded to every other process of the pod
//! (`kill(-1, sig)`). When the main process ends, init writes `<pod dir>/exit` (an [`ExitInfo`]
//! as JSON, atomically) and exits; the kernel then kills what is left of the pod. Init keeps no
//! fd a pod process could inherit (all close-on-exec).
use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::clock::{Clocks, ClockTarget};
use crate::sys::{clone as sysclone, ns};

/// Version of the creator ↔ init protocol.
pub const PROTOCOL_VERSION: u32 = 2;
/// fd of the control pipe in the init.
pub const CONTROL_FD: i32 = 3;
/// fd of the status pipe in the init.
pub const STATUS_FD: i32 = 4;
/// fd of the guard pipe of a lazily restored pod's init.
pub const GUARD_FD: i32 = 5;
/// The file a guarded init writes in the pod directory when its pager died.
pub const FAILED_FILE: &str = "failed";
/// Signals the init forwards to the processes of the pod.
pub const FORWARDED: [i32; 6] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2];
/// PATH used to find the command when its environment has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the pod's init starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Launch {
    /// Run `argv` (PATH lookup) with `env` in `cwd`, stdout/stderr to the pod's console.log, stdin /dev/null.
    Command {
        /// The command and its arguments.
        argv: Vec<String>,
        /// Its environment.
        env: Vec<(String, String)>,
        /// Its working directory.
        cwd: PathBuf,
    },
    /// For restoring a checkpoint: for each vpid in `top`, in order, create a bare process with
    /// exactly that pid (`sys::clone::spawn_target`: it maps a trampoline page at
    /// `tramp` and pauses until taken over by ptrace). `main_vpid` is the process whose exit
    /// ends the pod.
    Restore {
        /// The vpids to create, in order.
        top: Vec<i32>,
        /// Address of the trampoline page.
        tramp: u64,
        /// The process whose exit ends the pod.
        main_vpid: i32,
        /// A lazy restore: the init watches the guard pipe on [`GUARD_FD`] (see the module doc).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        guarded: bool,
        /// The clocks the pod goes on from ([`super::clock`]); none for an image made before
        /// pods had a time namespace (the pod gets none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        clocks: Option<ClockTarget>,
    },
}

/// What the creator sends the init (first line on the control pipe).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitConfig {
    /// Must be [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The pod directory (for `console.log` and `exit`).
    pub pod_dir: PathBuf,
    /// Hostname of the pod.
    pub hostname: String,
    /// What to start.
    pub launch: Launch,
    /// The pod's time namespace ([`super::clock`]): none for a pod without one (a restored
    /// image made before pods had one, or a kernel without time namespaces).
    #[serde(default)]
    pub time: Option<TimeNs>,
}

/// The pod's time namespace, made by the init before anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeNs {
    /// Its offsets (relative to the host's clocks); none: those of the creator's namespace.
    pub offsets: Option<Clocks>,
}

/// How the pod's main process ended (`<pod dir>/exit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code, or 128 + signal number when killed by a signal.
    pub code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
    /// The raw wait status (-1 when not known, e.g. the pod was killed from outside).
    pub wait_status: i32,
}

impl ExitInfo {
    /// From a wait status.
    pub fn from_wait_status(status: i32) -> Self {
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            ExitInfo { code: 128 + sig, signal: Some(sig), wait_status: status }
        } else {
            ExitInfo { code: libc::WEXITSTATUS(status), signal: None, wait_status: status }
        }
    }
}

/// Writes `<dir>/exit` atomically (tmp + rename).
pub fn write_exit(dir: &Path, info: &ExitInfo) -> std::io::Result<()> {
    let tmp = dir.join("exit.tmp");
    std::fs::write(&tmp, serde_json::to_vec(info).map_err(std::io::Error::other)?)?;
    std::fs::rename(&tmp, dir.join("exit"))
}

/// Finds `cmd` like `execvp` would, in `path` (colon-separated) unless it contains a `/`.
pub fn resolve_command(cmd: &str, path: Option<&str>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if cmd.contains('/') {
        return Some(PathBuf::from(cmd));
    }
    path.unwrap_or(DEFAULT_PATH)
        .split(':')
        .map(|d| Path::new(if d.is_empty() { "." } else { d }).join(cmd))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

fn cstring(s: &str, what: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{what} {s:?} contains a NUL byte"))
}

/// Starts the pod's processes; returns the main vpid.
fn launch(cfg: &InitConfig) -> Result<i32, String> {
    match &cfg.launch {
        Launch::Command { argv, env, cwd } => {
            let cmd = argv.first().ok_or("start: empty command")?;
            let step = format!("start {cmd:?}");
            let path_var = env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str());
            let path = resolve_command(cmd, path_var).ok_or_else(|| format!("{step}: No such file or directory"))?;
            let c_path = cstring(&path.to_string_lossy(), "path").map_err(|e| format!("{step}: {e}"))?;
            let c_argv = argv.iter().map(|a| cstring(a, "argument")).collect::<Result<Vec<_>, _>>()?;
            let c_env = env.iter().map(|(k, v)| cstring(&format!("{k}={v}"), "variable")).collect::<Result<Vec<_>, _>>()?;
            let c_cwd = cstring(&cwd.to_string_lossy(), "directory")?;
            let log = cfg.pod_dir.join("console.log");
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(|e| format!("open {}: {e}", log.display()))?;
            let null = std::fs::File::open("/dev/null").map_err(|e| format!("open /dev/null: {e}"))?;
            let prog = ns::Program { path: &c_path, argv: &c_argv, envp: &c_env };
            ns::fork_exec(&prog, &c_cwd, null.as_fd(), out.as_fd()).map_err(|(s, e)| match s {
                ns::ChildStep::Chdir => format!("{step}: chdir {}: {e}", cwd.display()),
                _ => format!("{step}: {e}"),
            })
        }
        Launch::Restore { top, tramp, main_vpid, .. } => {
            for &vpid in top {
                let pid = sysclone::spawn_target(vpid, *tramp).map_err(|e| format!("create restore target {vpid}: {e}"))?;
                if pid != vpid {
                    return Err(format!("create restore target {vpid}: got pid {pid}"));
                }
            }
            Ok(*main_vpid)
        }
    }
}

fn setup(cfg: &InitConfig) -> Result<(), String> {
    if cfg.version != PROTOCOL_VERSION {
        return Err(format!("protocol version {} (this zap-init speaks {PROTOCOL_VERSION})", cfg.version));
    }
    // Before any process of the pod exists, and while the init has one thread (setns).
    if let Some(t) = cfg.time {
        super::clock::make_namespace(t.offsets)?;
    }
    ns::make_mounts_private().map_err(|e| format!("make mounts private: {e}"))?;
    ns::mount_proc().map_err(|e| format!("mount /proc: {e}"))?;
    ns::mount_sys().map_err(|e| format!("mount /sys: {e}"))?;
    let options = ns::devpts_options(&std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("read /proc/self/mountinfo: {e}"))?);
    ns::mount_devpts(&options).map_err(|e| format!("mount a devpts of the pod's own on /dev/pts ({options}): {e}"))?;
    ns::sethostname(&cfg.hostname).map_err(|e| format!("set hostname {:?}: {e}", cfg.hostname))?;
    Ok(())
}

/// Reaps children and forwards signals until `main_vpid` ends; writes the exit file then. With a
/// `guard` (a lazy restore's), ends the pod if it reaches EOF before saying `D` (module doc).
fn supervise(sigfd: &OwnedFd, pod_dir: &Path, main_vpid: i32, mut guard: Option<std::fs::File>) -> i32 {
    loop {
        // A child may have ended before we got here: reap first, then wait for signals.
        while let Some((pid, status)) = ns::reap_any() {
            if pid == main_vpid {
                let info = ExitInfo::from_wait_status(status);
                let _ = write_exit(pod_dir, &info);
                return info.code;
            }
        }
        if let Some(g) = &mut guard {
            let (signal, guarded) = ns::poll_either(sigfd.as_fd(), g.as_fd(), -1).unwrap_or((true, false));
            if guarded {
                use std::io::Read;
                let mut b = [0u8; 1];
                match g.read(&mut b) {
                    Ok(1) if b[0] == b'D' => guard = None,
                    Ok(1) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    _ => {
                        // The pager is gone before every page was in: end the pod now.
                        let _ = sysclone::kill(-1, libc::SIGKILL);
                        let why = "lazy restore: the pager died before every page was in; the pod's processes were killed\n";
                        let _ = std::fs::write(pod_dir.join(FAILED_FILE), why);
                        let info = ExitInfo { code: 128 + libc::SIGKILL, signal: Some(libc::SIGKILL), wait_status: -1 };
                        let _ = write_exit(pod_dir, &info);
                        return info.code;
                    }
                }
            }
            if !signal {
                continue;
            }
        }
        match ns::read_signal(sigfd) {
            Ok(libc::SIGCHLD) => {}
            Ok(sig) => {
                let _ = sysclone::kill(-1, sig);
            }
            Err(_) => return 1,
        }
    }
}

/// The entry point of `zap-init`. Returns the exit status of the init.
pub fn main() -> i32 {
    // Drop leaked fds, then block our signals (children unblock them before exec). Our stdio is
    // /dev/null already (see `ns::InitLaunch::stdio`).
    let _ = ns::close_fds_from(GUARD_FD as u32 + 1);
    // A lazy restore's guard, or nothing (or a leaked fd, dropped below).
    let guard_fd = ns::take_inherited_fd(GUARD_FD).ok();
    let mut signals = FORWARDED.to_vec();
    signals.push(libc::SIGCHLD);
    let sigfd = ns::signalfd(&signals);
    ns::setsid();
    let (Ok(control), Ok(status)) = (ns::take_inherited_fd(CONTROL_FD), ns::take_inherited_fd(STATUS_FD)) else {
        eprintln!("zap-init: run by zap only (expects its control pipes on fds 3 and 4)");
        return 2;
    };
    let mut status = std::fs::File::from(status);
    let mut report = move |line: &str| {
        let _ = status.write_all(format!("{line}\n").as_bytes());
    };
    let sigfd = match sigfd {
        Ok(fd) => fd,
        Err(e) => {
            report(&format!("err create signalfd: {e}"));
            return 1;
        }
    };
    let mut control = BufReader::new(std::fs::File::from(control));
    let mut line = String::new();
    if control.read_line(&mut line).is_err() {
        report("err read configuration: read failed");
        return 1;
    }
    let cfg: InitConfig = match serde_json::from_str(&line) {
        Ok(c) => c,
        Err(e) => {
            report(&format!("err read configuration: {e}"));
            return 1;
        }
    };
    if let Err(e) = setup(&cfg) {
        report(&format!("err {e}"));
        return 1;
    }
    report("ready");
    line.clear();
    if control.read_line(&mut line).is_err() || line.trim() != "go" {
        return 1; // the creator gave up; it cleans up
    }
    drop(control);
    // The guard of a lazy restore; fd 5 is anything else (leaked) otherwise.
    let guard = match (&cfg.launch, guard_fd) {
        (Launch::Restore { guarded: true, .. }, Some(fd)) => Some(std::fs::File::from(fd)),
        (Launch::Restore { guarded: true, .. }, None) => {
            report(&format!("err take the lazy restore's guard: fd {GUARD_FD} is not open"));
            return 1;
        }
        _ => None,
    };
    let main_vpid = match launch(&cfg) {
        Ok(v) => v,
        Err(e) => {
            report(&format!("err {e}"));
            return 1;
        }
    };
    report(&format!("ok {main_vpid}"));
    drop(report);
    supervise(&sigfd, &cfg.pod_dir, main_vpid, guard)
}
