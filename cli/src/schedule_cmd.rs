//! Periodic checkpoints of a pod (`zap checkpoint NAME --every D --keep N`, `zap run
//! --checkpoint-every D`) and `zap rollback`.
//!
//! ## The scheduler
//! A schedule is carried out by a detached process of ours: `zap` re-executes itself with the
//! hidden subcommand `__schedule NAME --every D --keep N`, stdin on `/dev/null`, stdout and
//! stderr appended to `<pod dir>/checkpoints.log`; the scheduler makes itself a session leader
//! (`setsid`) and closes every other fd, so it lives on after `zap` exits. Its pid and start time
//! (`/proc/PID/stat` field 22, against pid reuse) go to `<pod dir>/schedule.json`, which is
//! also how it is told to stop: the scheduler runs only while `schedule.json` names it, and
//! checks that between rounds and every 50 ms while it waits. One schedule per pod: a new one
//! replaces the old (which is asked to stop and waited for, so that it never dies in the middle
//! of a checkpoint and leaves a process half-injected). `zap rm`, `zap stop` and `zap kill` ask it
//! to stop too, and kill it (after checking its start time) if it does not within a few seconds;
//! the pod is going away then anyway.
//!
//! Each round opens the store (waiting for its lock, one second at a time so that a stop request
//! is seen), checkpoints the pod with `leave_running` and the pod's last checkpoint as parent,
//! labels it `schedule=periodic`, deletes the pod's periodic checkpoints beyond the newest N,
//! runs GC and closes the store; it logs one line (see [`round`]). A failed round is logged and
//! the next one comes a period later. Rounds start every period (a round that overruns pushes the
//! next one back, none are run to catch up). The scheduler exits, logging why, when the pod is
//! removed or no longer running or the schedule was stopped or replaced.
//!
//! ## Rollback
//! `zap rollback NAME [--to ID | --steps N]` picks one of the pod's checkpoints (label
//! `pod=NAME`, kind `pod`, ordered by creation time; default the latest), stops the scheduler,
//! removes the pod and restores the checkpoint under the same name (with its saved pids, address
//! and MAC). A scheduler that was running is started again with the same settings. TCP
//! connections come back with the checkpoint's (old) sequence numbers: their peers reset them and
//! the application sees ECONNRESET on them, while its listeners serve new clients.
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::json;
use zap_engine::pod::checkpoint::{self as podck, PodCheckpointOptions, PodRestoreOptions};
use zap_engine::pod::{alive, pod_dir, proc_stat};
use zap_engine::pod::{self, PodStatus};
use zap_store::{CheckpointId, CheckpointSummary, ImageStore, LocalStore, StoreError, StoreOptions};

use crate::error::{CliError, Result};
use crate::output::{bytes, rfc3339, Output};
use crate::Ctx;

/// Label that marks the checkpoints a schedule takes (`schedule=periodic`).
pub const SCHEDULE_LABEL: &str = "schedule";
/// Its value.
pub const SCHEDULE_VALUE: &str = "periodic";
/// Shortest period.
pub const MIN_PERIOD: Duration = Duration::from_millis(100);
/// The file naming a pod's scheduler.
const SCHEDULE_FILE: &str = "schedule.json";
/// The scheduler's log.
const LOG_FILE: &str = "checkpoints.log";
/// How long a replaced scheduler may take to finish its round.
const REPLACE_GRACE: Duration = Duration::from_secs(120);
/// How long `rm`, `stop`, `kill` and `rollback` let a scheduler end by itself before killing it.
const END_GRACE: Duration = Duration::from_secs(3);

/// Parses a period: a whole number followed by `ms`, `s`, `m` or `h` (`500ms`, `30s`, `5m`,
/// `1h`); at least [`MIN_PERIOD`].
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("{s:?} is not a period (e.g. 500ms, 30s, 5m, 1h)");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    }
    .ok_or_else(bad)?;
    let d = Duration::from_millis(ms);
    if d < MIN_PERIOD {
        return Err(format!("{s:?} is shorter than the minimum period of 100ms"));
    }
    Ok(d)
}

/// A period in the largest unit that shows it exactly (`500ms`, `30s`, `5m`, `1h`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1_000) {
        format!("{}s", ms / 1_000)
    } else {
        format!("{ms}ms")
    }
}

/// `schedule.json`: who carries out a pod's schedule, and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// The scheduler's pid.
    pub pid: i32,
    /// Its start time (`/proc/PID/stat` field 22).
    pub start: u64,
    /// The period in milliseconds.
    pub every_ms: u64,
    /// How many periodic checkpoints are kept.
    pub keep: usize,
    /// Checkpoints save established TCP connections as closed.
    #[serde(default)]
    pub tcp_close: bool,
    /// When the scheduler was started, ms since the epoch.
    pub started_ms: u64,
}

impl Schedule {
    /// The period.
    pub fn every(&self) -> Duration {
        Duration::from_millis(self.every_ms)
    }

    /// `every 30s, keep 10`.
    pub fn describe(&self) -> String {
        format!("every {}, keep {}", format_duration(self.every()), self.keep)
    }

    /// True while the scheduler process runs.
    pub fn running(&self) -> bool {
        alive(self.pid, self.start)
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}


/// The pod's schedule as recorded, if any (running or not).
pub fn load(root: &Path, name: &str) -> Option<Schedule> {
    let data = std::fs::read(pod_dir(root, name).join(SCHEDULE_FILE)).ok()?;
    serde_json::from_slice(&data).ok()
}

/// The pod's schedule if its scheduler runs.
pub fn running(root: &Path, name: &str) -> Option<Schedule> {
    load(root, name).filter(Schedule::running)
}

fn save(root: &Path, name: &str, s: &Schedule) -> Result<()> {
    let dir = pod_dir(root, name);
    let tmp = dir.join("schedule.json.tmp");
    let data = serde_json::to_vec_pretty(s).map_err(|e| CliError::Invalid(format!("encode schedule: {e}")))?;
    std::fs::write(&tmp, data).map_err(|e| CliError::io("write", &tmp, e))?;
    let path = dir.join(SCHEDULE_FILE);
    std::fs::rename(&tmp, &path).map_err(|e| CliError::io("replace", &path, e))
}

/// Asks the pod's scheduler to stop (removes `schedule.json`); returns the schedule if its
/// scheduler was running.
pub fn request_stop(root: &Path, name: &str) -> Option<Schedule> {
    let s = load(root, name);
    let _ = std::fs::remove_file(pod_dir(root, name).join(SCHEDULE_FILE));
    s.filter(Schedule::running)
}

/// Waits up to `grace` for a scheduler asked to stop to exit; then, with `kill`, kills it
/// (after checking its start time). Returns true once it is gone.
pub fn wait_stopped(s: &Schedule, grace: Duration, kill: bool) -> bool {
    let t = Instant::now();
    while s.running() && t.elapsed() < grace {
        std::thread::sleep(Duration::from_millis(20));
    }
    if !s.running() {
        return true;
    }
    if !kill {
        return false;
    }
    use nix::sys::signal::{kill as send, Signal};
    if s.running() {
        let _ = send(nix::unistd::Pid::from_raw(s.pid), Signal::SIGKILL);
    }
    let t = Instant::now();
    while s.running() && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    !s.running()
}

/// Stops the pod's scheduler for `rm`, `stop`, `kill`, `rollback`: asks, waits a little, kills.
pub fn stop_for_end(root: &Path, name: &str) -> Option<Schedule> {
    let s = request_stop(root, name)?;
    if !wait_stopped(&s, END_GRACE, true) {
        crate::progress::warn(format_args!("pod {name}: checkpoint scheduler {} did not stop", s.pid));
    }
    Some(s)
}

/// Starts a scheduler for pod `name` (replacing any); returns its schedule.
pub fn start(ctx: &Ctx, name: &str, every: Duration, keep: usize, tcp_close: bool) -> Result<Schedule> {
    let root = pod::run_dir();
    let state = pod::load(&root, name).map_err(engine_err)?;
    let status = pod::status(&root, &state);
    if status != PodStatus::Running {
        return Err(CliError::Invalid(format!("pod {name}: cannot schedule checkpoints: the pod is {status}")));
    }
    if keep == 0 {
        return Err(CliError::Invalid("--keep must be at least 1".into()));
    }
    if let Some(old) = request_stop(&root, name) {
        if !wait_stopped(&old, REPLACE_GRACE, false) {
            return Err(CliError::Invalid(format!(
                "pod {name}: the previous checkpoint scheduler (pid {}) was asked to stop but has not within {} s; try again",
                old.pid,
                REPLACE_GRACE.as_secs()
            )));
        }
    }
    let log_path = pod_dir(&root, name).join(LOG_FILE);
    let log = OpenOptions::new().create(true).append(true).open(&log_path).map_err(|e| CliError::io("open", &log_path, e))?;
    let log2 = log.try_clone().map_err(|e| CliError::io("duplicate fd of", &log_path, e))?;
    let exe = std::env::current_exe().map_err(|e| CliError::io("find own executable", Path::new("/proc/self/exe"), e))?;
    let mut cmd = Command::new(&exe);
    cmd.arg("--store")
        .arg(&ctx.store)
        .arg("__schedule")
        .arg(name)
        .arg("--every")
        .arg(format_duration(every))
        .arg("--keep")
        .arg(keep.to_string())
        .env("ZAP_RUN_DIR", &root)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    if tcp_close {
        cmd.arg("--tcp-close");
    }
    let child = cmd.spawn().map_err(|e| CliError::io("start checkpoint scheduler", &exe, e))?;
    let pid = child.id() as i32;
    // Not waited for: it outlives us (and is then reaped by whoever inherits it).
    drop(child);
    let start = proc_stat(pid).map(|(_, t)| t).ok_or_else(|| CliError::Invalid(format!("checkpoint scheduler {pid} ended at once (see {})", log_path.display())))?;
    let s = Schedule { pid, start, every_ms: every.as_millis() as u64, keep, tcp_close, started_ms: now_ms() };
    save(&root, name, &s)?;
    // Return once it has left our session (it does so first thing), so that nothing sent to
    // ours (a terminal hangup) reaches it.
    let t = Instant::now();
    while session_of(pid) != Some(pid) {
        if !s.running() || t.elapsed() > Duration::from_secs(5) {
            return Err(CliError::Invalid(format!(
                "checkpoint scheduler {pid} did not start (see {})",
                log_path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(s)
}

/// Session id of a process (`/proc/PID/stat` field 6).
fn session_of(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 2..].split_whitespace().nth(3)?.parse().ok()
}

/// Output of a started schedule.
pub fn started_output(ctx: &Ctx, name: &str, s: &Schedule) -> Result<Output> {
    let log = pod_dir(&pod::run_dir(), name).join(LOG_FILE);
    if ctx.json {
        return Output::json(&json!({
            "pod": name,
            "scheduler_pid": s.pid,
            "every": format_duration(s.every()),
            "every_ms": s.every_ms,
            "keep": s.keep,
            "tcp_close": s.tcp_close,
            "log": log,
        }));
    }
    eprintln!("pod {name}: checkpoint {} (scheduler pid {}, log {})", s.describe(), s.pid, log.display());
    Ok(Output::text(format!("{}\n", s.pid)))
}

fn engine_err(e: zap_engine::EngineError) -> CliError {
    CliError::Invalid(e.to_string())
}

/// `zap __schedule` arguments (hidden: what `--every` starts).
#[derive(Args)]
pub struct ScheduleArgs {
    /// The pod.
    pod: String,
    /// The period.
    #[arg(long, value_parser = parse_duration)]
    every: Duration,
    /// How many periodic checkpoints to keep.
    #[arg(long)]
    keep: usize,
    /// Save established TCP connections as closed.
    #[arg(long)]
    tcp_close: bool,
}

/// Detaches from the caller: new session, no fd but 0, 1 and 2.
fn detach() {
    let _ = nix::unistd::setsid();
    let fds: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).filter(|&fd| fd > 2).collect(),
        Err(_) => Vec::new(),
    };
    for fd in fds {
        // The directory's own fd is closed already and nothing opened since: EBADF at worst.
        let _ = nix::unistd::close(fd);
    }
}

fn log(msg: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{} {msg}", rfc3339(now_ms()));
    let _ = out.flush();
}

/// Why the scheduler should not go on, if it should not.
fn should_end(root: &Path, name: &str, me: (i32, u64)) -> Option<String> {
    let state = match pod::load(root, name) {
        Ok(s) => s,
        Err(_) => return Some(format!("pod {name} is gone (removed)")),
    };
    match load(root, name) {
        Some(s) if (s.pid, s.start) == me => {}
        _ => return Some("the schedule was stopped or replaced".into()),
    }
    match pod::status(root, &state) {
        PodStatus::Running => None,
        s => Some(format!("pod {name} is no longer running ({s})")),
    }
}

/// Runs `zap __schedule`: the scheduler's loop. Returns when the pod is gone or the schedule
/// stopped.
pub fn run(ctx: &Ctx, args: &ScheduleArgs) -> Result<Output> {
    detach();
    let root = pod::run_dir();
    let name = args.pod.as_str();
    let pid = std::process::id() as i32;
    let me = (pid, proc_stat(pid).map_or(0, |(_, t)| t));
    // `zap` records us in schedule.json right after starting us.
    let t = Instant::now();
    while load(&root, name).is_none_or(|s| (s.pid, s.start) != me) {
        if t.elapsed() > Duration::from_secs(10) {
            log(format_args!("scheduler {pid}: not recorded in {SCHEDULE_FILE}; exiting"));
            return Ok(Output::text(String::new()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    log(format_args!(
        "scheduler {pid} started for pod {name}: every {}, keep {}",
        format_duration(args.every),
        args.keep
    ));
    let mut next = Instant::now();
    let why = loop {
        // Wait for the next round, watching for the end.
        let why = loop {
            if let Some(why) = should_end(&root, name, me) {
                break Some(why);
            }
            let now = Instant::now();
            if now >= next {
                break None;
            }
            std::thread::sleep((next - now).min(Duration::from_millis(50)));
        };
        if let Some(why) = why {
            break why;
        }
        next += args.every;
        match round(ctx, &root, name, args, me) {
            Ok(Some(line)) => log(line),
            Ok(None) => {} // stopped while waiting for the store: the check above says why
            Err(e) => log(format_args!("checkpoint failed: {e} (next try in {})", format_duration(args.every))),
        }
        let now = Instant::now();
        if next < now {
            next = now; // overran: start again at once, no catching up
        }
    };
    log(format_args!("scheduler {pid} exits: {why}"));
    // Leave no stale schedule behind if it still names us.
    if load(&root, name).is_some_and(|s| (s.pid, s.start) == me) {
        let _ = std::fs::remove_file(pod_dir(&root, name).join(SCHEDULE_FILE));
    }
    Ok(Output::text(String::new()))
}

/// Opens the store, one second of lock waiting at a time; `None` if the schedule should end.
fn open_store(ctx: &Ctx, root: &Path, name: &str, me: (i32, u64)) -> Result<Option<LocalStore>> {
    let opts = StoreOptions { create: true, lock_timeout: Duration::from_secs(1), ..StoreOptions::default() };
    let t = Instant::now();
    loop {
        match LocalStore::open(&ctx.store, opts.clone()) {
            Ok(s) => return Ok(Some(s)),
            Err(StoreError::Busy { .. }) if t.elapsed() < Duration::from_secs(600) => {
                if should_end(root, name, me).is_some() {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The pod's checkpoints (kind `pod`, label `pod=NAME`), oldest first; with `periodic`, only those
/// a schedule took.
pub fn pod_checkpoints(list: &[CheckpointSummary], name: &str, periodic: bool) -> Vec<CheckpointSummary> {
    list.iter()
        .filter(|s| s.kind == podck::KIND && s.labels.get("pod").map(String::as_str) == Some(name))
        .filter(|s| !periodic || s.labels.get(SCHEDULE_LABEL).map(String::as_str) == Some(SCHEDULE_VALUE))
        .cloned()
        .collect()
}

/// One round: checkpoint, retention, GC. Returns the log line.
fn round(ctx: &Ctx, root: &Path, name: &str, args: &ScheduleArgs, me: (i32, u64)) -> Result<Option<String>> {
    let Some(store) = open_store(ctx, root, name, me)? else { return Ok(None) };
    let list = store.list()?;
    let parent = pod::load(root, name)
        .ok()
        .and_then(|s| s.last_checkpoint)
        .and_then(|h| CheckpointId::from_hex(&h))
        .filter(|id| list.iter().any(|s| s.id == *id));
    let opts = PodCheckpointOptions {
        leave_running: true,
        tcp_close: args.tcp_close,
        parent,
        labels: BTreeMap::from([(SCHEDULE_LABEL.to_string(), SCHEDULE_VALUE.to_string())]),
        ..Default::default()
    };
    let r = podck::checkpoint(&store, root, name, &opts).map_err(engine_err)?;
    let periodic = pod_checkpoints(&store.list()?, name, true);
    let mut deleted = 0;
    let mut problems = String::new();
    for s in periodic.iter().take(periodic.len().saturating_sub(args.keep)) {
        match store.delete(&s.id) {
            Ok(()) => deleted += 1,
            Err(e) => problems.push_str(&format!("; delete {} failed: {e}", s.id)),
        }
    }
    let freed = match store.gc(0.2) {
        Ok(g) => g.bytes_before.saturating_sub(g.bytes_after),
        Err(e) => {
            problems.push_str(&format!("; gc failed: {e}"));
            0
        }
    };
    drop(store);
    let s = &r.summary;
    Ok(Some(format!(
        "checkpoint {} frozen_ms={:.1} total_ms={:.1} bytes_read={} new_stored_bytes={} ({} read, {} new) deleted={deleted} gc_freed_bytes={freed}{problems}",
        s.id,
        r.frozen_ms,
        r.total_ms,
        r.bytes_read,
        s.new_stored_bytes,
        bytes(r.bytes_read),
        bytes(s.new_stored_bytes),
    )))
}

/// `zap rollback` arguments.
#[derive(Args)]
pub struct RollbackArgs {
    /// The pod.
    name: String,
    /// The checkpoint to go back to (id or unique prefix); default: the pod's latest.
    #[arg(long, conflicts_with = "steps")]
    to: Option<String>,
    /// Go back this many checkpoints before the latest (1 = the one before the latest).
    #[arg(long)]
    steps: Option<usize>,
}

/// Picks the checkpoint of a rollback.
fn target(store: &LocalStore, args: &RollbackArgs) -> Result<CheckpointSummary> {
    let name = args.name.as_str();
    let list = store.list()?;
    if let Some(to) = &args.to {
        let id = store.resolve(to)?;
        let s = list.into_iter().find(|s| s.id == id).ok_or_else(|| CliError::Invalid(format!("checkpoint {id} not found")))?;
        if s.kind != podck::KIND || s.labels.get("pod").map(String::as_str) != Some(name) {
            return Err(CliError::Invalid(format!(
                "checkpoint {id} is not a checkpoint of pod {name} (it is a {} checkpoint of {:?})",
                s.kind,
                s.labels.get("pod").unwrap_or(&s.name)
            )));
        }
        return Ok(s);
    }
    let mine = pod_checkpoints(&list, name, false);
    let steps = args.steps.unwrap_or(0);
    if mine.is_empty() {
        return Err(CliError::Invalid(format!("pod {name} has no checkpoint to roll back to")));
    }
    if steps >= mine.len() {
        return Err(CliError::Invalid(format!(
            "pod {name} has {} checkpoint(s): cannot go back {steps} step(s) before the latest",
            mine.len()
        )));
    }
    Ok(mine[mine.len() - 1 - steps].clone())
}

/// Runs `zap rollback`.
pub fn rollback(ctx: &Ctx, args: &RollbackArgs) -> Result<Output> {
    let root = pod::run_dir();
    let name = args.name.as_str();
    pod::validate_name(name).map_err(engine_err)?;
    // Find the target first: without one, the pod is left as it is.
    let first = {
        let store = ctx.open()?;
        target(&store, args)?
    };
    let init_exe = pod::default_init_exe().map_err(engine_err)?;
    let sched = stop_for_end(&root, name);
    let store = ctx.open()?;
    // The scheduler may have taken or deleted checkpoints meanwhile: resolve again.
    let target = match target(&store, args) {
        Ok(t) => t,
        Err(e) => {
            if let Some(s) = &sched {
                drop(store);
                let _ = start(ctx, name, s.every(), s.keep, s.tcp_close);
            }
            return Err(e);
        }
    };
    if target.id != first.id {
        tracing::info!(first = %first.id, now = %target.id, "rollback target changed while the scheduler stopped");
    }
    let id = target.id;
    if pod::load(&root, name).is_ok() {
        pod::rm(&root, name, true).map_err(|e| CliError::Invalid(format!("rollback of pod {name}: removing the pod failed: {e}")))?;
    }
    let opts = PodRestoreOptions { name: Some(name.to_string()), ip: None, init_exe, ..Default::default() };
    let r = podck::restore(&store, &root, &id, &opts).map_err(|e| {
        CliError::Invalid(format!(
            "rollback of pod {name}: the pod was removed but restoring checkpoint {id} failed: {e} \
             (the checkpoint is untouched: `zap restore {id}` to try again)"
        ))
    })?;
    drop(store);
    for w in &r.group.warnings {
        crate::progress::warn(w);
    }
    let restarted = match &sched {
        Some(s) => match start(ctx, name, s.every(), s.keep, s.tcp_close) {
            Ok(s) => Some(s),
            Err(e) => {
                crate::progress::warn(format_args!("pod {name}: rolled back, but the checkpoint schedule did not restart: {e}"));
                None
            }
        },
        None => None,
    };
    if ctx.json {
        return Output::json(&json!({
            "pod": name,
            "id": id.to_hex(),
            "created_ms": target.created_ms,
            "ip": r.ip,
            "pids": r.group.pids,
            "restore_ms": r.group.restore_ms,
            "scheduler_pid": restarted.as_ref().map(|s| s.pid),
            "warnings": r.group.warnings,
        }));
    }
    eprintln!(
        "pod {name} rolled back to checkpoint {id} of {}: {} processes in {:.0} ms{}",
        rfc3339(target.created_ms),
        r.group.pids.len(),
        r.group.restore_ms,
        restarted.map(|s| format!("; checkpoint {} again (scheduler pid {})", s.describe(), s.pid)).unwrap_or_default()
    );
    Ok(Output::text(format!("{id}\n")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration(" 2s "), Ok(Duration::from_secs(2)));
        for bad in ["", "s", "10", "99ms", "0s", "1.5s", "-1s", "5x", "5 s", "ms500", "1d", "18446744073709551615h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_duration("99ms").unwrap_err().contains("minimum"));
    }

    #[test]
    fn duration_round_trip() {
        for s in ["100ms", "500ms", "1500ms", "30s", "90s", "5m", "1h", "25h"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
    }
}
