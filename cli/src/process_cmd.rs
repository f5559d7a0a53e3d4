//! `zap checkpoint`, `zap restore`, `zap ls`: checkpoints of pods and of running processes.
//!
//! `checkpoint NAME` freezes pod NAME (its cgroup), stores every process and the pod's
//! configuration, and kills and removes the pod (or with `--leave-running` lets it continue).
//! `checkpoint --pid PID` does the same for one process, or with `--tree` for the process and
//! all its descendants. `restore ID` recreates what the checkpoint holds: a pod (same name, or
//! `--name`; same address, or `--ip`), or a process (tree) in a new PID namespace with its saved
//! pids, and returns once it runs. Restored processes are children of an init of ours, not of
//! `zap`, so they live on after `zap` exits. External standard streams of a process checkpoint
//! (a terminal, a pipe to another process) are connected to `zap restore`'s own fds 0-2.
//!
//! Established TCP connections are saved with their state and come back connected (the
//! engine's `sockets::tcp` and `pod::netlock`); `--tcp-close` gives them up instead. A pod
//! restored as a copy under another address gets its connections back closed (the application
//! sees `ECONNABORTED`); they stay the original's.
use clap::Args;
use serde_json::json;
use zap_engine::pod::checkpoint::{self as podck, PodCheckpointOptions, PodRestoreOptions};
use zap_engine::process::{self, CheckpointOptions};
use zap_store::{ImageStore, LocalStore, StoreOptions};

use crate::error::{CliError, Result};
use crate::output::{bytes, outln, Output};
use crate::Ctx;

/// `zap checkpoint` arguments.
#[derive(Args)]
pub struct CheckpointArgs {
    /// The pod to checkpoint.
    #[arg(required_unless_present = "pid", conflicts_with = "pid")]
    pod: Option<String>,
    /// A process to checkpoint instead of a pod.
    #[arg(long)]
    pid: Option<i32>,
    /// With --pid: the process and all its descendants, as one group.
    #[arg(long, requires = "pid")]
    tree: bool,
    /// Let the pod or process run on after the checkpoint (default: end it once the checkpoint
    /// is stored; a pod is then removed).
    #[arg(long)]
    leave_running: bool,
    /// Give established TCP connections up: they are saved as closed sockets (the application
    /// sees them fail after the restore). By default they are saved with their state (sequence
    /// numbers, queued bytes, options) while the network is locked, and come back connected.
    #[arg(long)]
    tcp_close: bool,
    /// Name of the checkpoint (default: the pod or process name).
    #[arg(long)]
    name: Option<String>,
    /// Save all memory even when the pod's dirty pages are tracked since its last checkpoint
    /// (by default such a checkpoint is incremental).
    #[arg(long)]
    full: bool,
    /// With --leave-running, a full checkpoint of a pod (or of a process with --pid) copies its
    /// memory while it runs (dirty pages tracked) and stops it only for the pages written
    /// meanwhile and the rest of its state; this stops it while all of its memory is read instead.
    #[arg(long)]
    no_pre_copy: bool,
    /// Checkpoint the pod on a schedule, e.g. 500ms, 30s, 5m, 1h (at least 100ms), by a
    /// background process that outlives zap (log: <pod dir>/checkpoints.log); replaces any
    /// earlier schedule of the pod. Prints the scheduler's pid.
    #[arg(long, value_name = "PERIOD", value_parser = crate::schedule_cmd::parse_duration, conflicts_with_all = ["pid", "name"])]
    every: Option<std::time::Duration>,
    /// With --every: how many of the periodic checkpoints to keep (older ones are deleted and
    /// garbage-collected).
    #[arg(long, value_name = "N", requires = "every", default_value_t = 10)]
    keep: usize,
}

/// `zap restore` arguments.
#[derive(Args)]
pub struct RestoreArgs {
    /// Checkpoint id or unique prefix (at least 4 hex digits), or the name of a pod: its latest
    /// checkpoint (an id prefix that matches goes first).
    id: String,
    /// Pod checkpoints: name of the restored pod (default: the saved name).
    #[arg(long)]
    name: Option<String>,
    /// Pod checkpoints: address of the restored pod, ADDR/PREFIX (default: the saved one).
    #[arg(long)]
    ip: Option<String>,
    /// Run at once and load the memory while running (a pager process serves the pages from
    /// the store; if it dies before all are in, every restored process is killed).
    #[arg(long)]
    lazy: bool,
}

fn engine_err(e: zap_engine::EngineError) -> CliError {
    CliError::Invalid(e.to_string())
}

/// Runs `zap checkpoint`.
pub fn checkpoint(ctx: &Ctx, args: &CheckpointArgs) -> Result<Output> {
    if let (Some(every), Some(pod)) = (args.every, &args.pod) {
        let s = crate::schedule_cmd::start(ctx, pod, every, args.keep, args.tcp_close)?;
        return crate::schedule_cmd::started_output(ctx, pod, &s);
    }
    let store = LocalStore::open(&ctx.store, StoreOptions { create: true, ..StoreOptions::default() })?;
    let (r, what) = match (&args.pod, args.pid) {
        (Some(pod), _) => {
            let opts = PodCheckpointOptions {
                leave_running: args.leave_running,
                tcp_close: args.tcp_close,
                name: args.name.clone(),
                full: args.full,
                no_precopy: args.no_pre_copy,
                ..Default::default()
            };
            let r = podck::checkpoint(&store, &zap_engine::pod::run_dir(), pod, &opts).map_err(engine_err)?;
            (r, format!("pod {pod}"))
        }
        (None, Some(pid)) => {
            let opts =
                CheckpointOptions { leave_running: args.leave_running, name: args.name.clone(), tcp_close: args.tcp_close, no_precopy: args.no_pre_copy, ..Default::default() };
            let r = if args.tree {
                zap_engine::group::checkpoint_tree(&store, pid, &opts)
            } else {
                process::checkpoint(&store, pid, &opts)
            };
            (r.map_err(engine_err)?, format!("pid {pid}"))
        }
        (None, None) => return Err(CliError::Invalid("name a pod or give --pid".into())),
    };
    let s = &r.summary;
    if ctx.json {
        return Output::json(&json!({
            "id": s.id.to_hex(),
            "pod": args.pod,
            "pid": args.pid,
            "name": s.name,
            "left_running": args.leave_running,
            "mode": r.mode,
            "parent": s.parent.map(|p| p.to_hex()),
            "frozen_ms": r.frozen_ms,
            "total_ms": r.total_ms,
            "memory_bytes": r.bytes_read,
            "new_stored_bytes": s.new_stored_bytes,
            "manifest_bytes": s.manifest_bytes,
        }));
    }
    let mut out = String::new();
    outln!(out, "{}", s.id);
    progress_note(&format!(
        "checkpointed {what} ({}): {}; {} of memory read, {} newly stored, stopped {:.0} ms, done in {:.0} ms{}",
        s.name,
        r.mode,
        bytes(r.bytes_read),
        bytes(s.new_stored_bytes),
        r.frozen_ms,
        r.total_ms,
        match (args.leave_running, args.pod.is_some()) {
            (true, _) => ", left running",
            (false, true) => ", pod stopped and removed",
            (false, false) => ", process killed",
        }
    ));
    Ok(Output::text(out))
}

/// The checkpoint `what` names: an id or unique id prefix, else the latest checkpoint of the pod
/// of that name. When neither matches, the id's error (with a word on the pod).
pub(crate) fn resolve_or_pod(store: &LocalStore, what: &str) -> Result<zap_store::CheckpointId> {
    match store.resolve(what) {
        Ok(id) => Ok(id),
        Err(e @ (zap_store::StoreError::Invalid(_) | zap_store::StoreError::NotFound(_))) => {
            let list = store.list()?;
            match crate::schedule_cmd::pod_checkpoints(&list, what, false).last() {
                Some(latest) => Ok(latest.id),
                None => Err(CliError::Invalid(format!("{e}; no pod named {what:?} has a checkpoint in this store either"))),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Runs `zap restore`.
pub fn restore(ctx: &Ctx, args: &RestoreArgs) -> Result<Output> {
    if args.lazy {
        // The pager opens the store, resolves the id and reads the kind: the processes wait for
        // one store open and one manifest read, not two.
        return crate::pager_cmd::restore_lazy(ctx, &args.id, args.name.as_deref(), args.ip.as_deref());
    }
    // A restore only reads the store.
    let store = ctx.open_read_only()?;
    let id = resolve_or_pod(&store, &args.id)?;
    let kind = store.summary(&id)?.kind;
    if kind == podck::KIND {
        return restore_pod(ctx, &store, &id, args);
    }
    if args.name.is_some() || args.ip.is_some() {
        return Err(CliError::Invalid(format!("--name and --ip apply to pod checkpoints; {id} is a {kind} checkpoint")));
    }
    if kind == zap_engine::group::KIND {
        let r = zap_engine::group::restore(&store, &id).map_err(engine_err)?;
        for w in &r.warnings {
            crate::progress::warn(w);
        }
        if ctx.json {
            return Output::json(&json!({
                "id": id.to_hex(), "init_pid": r.init_pid, "pids": r.pids, "restore_ms": r.restore_ms, "warnings": r.warnings,
            }));
        }
        progress_note(&format!("restored {id}: {} processes in {:.0} ms", r.pids.len(), r.restore_ms));
        let root = r.pids.first().map(|p| p.1).unwrap_or(r.init_pid);
        return Ok(Output::text(format!("{root}\n")));
    }
    let r = process::restore(&store, &id).map_err(engine_err)?;
    for w in &r.warnings {
        crate::progress::warn(w);
    }
    if ctx.json {
        return Output::json(&json!({
            "id": id.to_hex(),
            "pid": r.pid,
            "vpid": r.vpid,
            "init_pid": r.init_pid,
            "restore_ms": r.restore_ms,
            "warnings": r.warnings,
        }));
    }
    progress_note(&format!("restored {id} as pid {} (pid {} in its namespace) in {:.0} ms", r.pid, r.vpid, r.restore_ms));
    Ok(Output::text(format!("{}\n", r.pid)))
}

fn restore_pod(ctx: &Ctx, store: &LocalStore, id: &zap_store::CheckpointId, args: &RestoreArgs) -> Result<Output> {
    let init_exe = zap_engine::pod::default_init_exe().map_err(engine_err)?;
    let opts = PodRestoreOptions { name: args.name.clone(), ip: args.ip.clone(), init_exe, ..Default::default() };
    let r = podck::restore(store, &zap_engine::pod::run_dir(), id, &opts).map_err(engine_err)?;
    for w in &r.group.warnings {
        crate::progress::warn(w);
    }
    if ctx.json {
        return Output::json(&json!({
            "id": id.to_hex(),
            "pod": r.name,
            "ip": r.ip,
            "init_pid": r.group.init_pid,
            "pids": r.group.pids,
            "restore_ms": r.group.restore_ms,
            "warnings": r.group.warnings,
        }));
    }
    progress_note(&format!("restored pod {} from {id}: {} processes in {:.0} ms", r.name, r.group.pids.len(), r.group.restore_ms));
    Ok(Output::text(format!("{}\n", r.name)))
}

/// A line for the person at the terminal, on stderr, so stdout stays the one value scripts read.
fn progress_note(msg: &str) {
    eprintln!("{msg}");
}
