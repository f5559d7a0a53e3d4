//! `zap checkpoint`, `zap restore`, `zap ls`: checkpoints of running processes.
//!
//! `checkpoint --pid PID` freezes the process, stores its state and kills it (or with
//! `--leave-running` lets it continue); `restore ID` recreates it in a new PID namespace with its
//! saved pid and returns once it runs. The restored process is a child of a small init of ours
//! in that namespace, not of `zap`, so it lives on after `zap` exits. External standard streams
//! (a terminal, a pipe to another process) are connected to `zap restore`'s own fds 0-2.
use clap::Args;
use serde_json::json;
use zap_engine::process::{self, CheckpointOptions};
use zap_store::{ImageStore, LocalStore, StoreOptions};

use crate::error::{CliError, Result};
use crate::output::{bytes, outln, Output};
use crate::Ctx;

/// `zap checkpoint` arguments.
#[derive(Args)]
pub struct CheckpointArgs {
    /// The process to checkpoint.
    #[arg(long)]
    pid: i32,
    /// Let the process run on after the checkpoint (default: kill it once the checkpoint is stored).
    #[arg(long)]
    leave_running: bool,
    /// Name of the checkpoint (default: the process name).
    #[arg(long)]
    name: Option<String>,
}

/// `zap restore` arguments.
#[derive(Args)]
pub struct RestoreArgs {
    /// Checkpoint id or unique prefix (at least 4 hex digits).
    id: String,
}

fn engine_err(e: zap_engine::EngineError) -> CliError {
    CliError::Invalid(e.to_string())
}

/// Runs `zap checkpoint`.
pub fn checkpoint(ctx: &Ctx, args: &CheckpointArgs) -> Result<Output> {
    let store = LocalStore::open(&ctx.store, StoreOptions { create: true, ..StoreOptions::default() })?;
    let opts = CheckpointOptions { leave_running: args.leave_running, name: args.name.clone(), ..Default::default() };
    let r = process::checkpoint(&store, args.pid, &opts).map_err(engine_err)?;
    let s = &r.summary;
    if ctx.json {
        return Output::json(&json!({
            "id": s.id.to_hex(),
            "pid": args.pid,
            "name": s.name,
            "left_running": args.leave_running,
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
        "checkpointed pid {} ({}): {} of memory, {} newly stored, stopped {:.0} ms, done in {:.0} ms{}",
        args.pid,
        s.name,
        bytes(r.bytes_read),
        bytes(s.new_stored_bytes),
        r.frozen_ms,
        r.total_ms,
        if args.leave_running { ", left running" } else { ", process killed" }
    ));
    Ok(Output::text(out))
}

/// Runs `zap restore`.
pub fn restore(ctx: &Ctx, args: &RestoreArgs) -> Result<Output> {
    let store = ctx.open()?;
    let id = store.resolve(&args.id)?;
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

/// A line for the person at the terminal, on stderr, so stdout stays the one value scripts read.
fn progress_note(msg: &str) {
    eprintln!("{msg}");
}
