//! `zap restore ID --lazy` for process checkpoints, and the hidden `zap __pager` it starts.
//!
//! The pager must outlive the command, so the command does not restore itself, nor open the
//! store: it starts `zap __pager ID` (same store; its own session; stderr to `$ZAP_PAGER_LOG` or
//! /dev/null), which opens the store, resolves the id (a prefix is fine), restores the process
//! lazily ([`zap_engine::process::restore_lazy`], which refuses a checkpoint that is not a
//! process's), closes the store once it has opened the packs it needs (so other commands can use
//! the store while pages stream in), writes one JSON line with the restored pid to its stdout, and serves and
//! streams pages until all are in, then exits. The command passes that line on and exits. The
//! restored process's namespace init is the pager's child, created with a death signal: if the
//! pager dies before every page is in, the process is killed, never left waiting for a page.
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use clap::Args;
use serde_json::json;

use crate::output::Output;
use crate::error::{CliError, Result};
use crate::Ctx;

/// `zap __pager` arguments.
#[derive(Args)]
pub struct PagerArgs {
    /// The checkpoint (id or unique prefix).
    id: String,
}

/// `zap restore ID --lazy` of a process checkpoint: starts the pager and reports what it says.
pub fn restore_lazy(ctx: &Ctx, id: &str) -> Result<Output> {
    let exe = std::env::current_exe().map_err(|e| CliError::Invalid(format!("find the zap executable: {e}")))?;
    let log = match std::env::var_os("ZAP_PAGER_LOG") {
        Some(p) => std::fs::OpenOptions::new().create(true).append(true).open(&p).map(Stdio::from).unwrap_or_else(|_| Stdio::null()),
        None => Stdio::null(),
    };
    let mut cmd = Command::new(exe);
    cmd.arg("--store").arg(&ctx.store).arg("__pager").arg(id).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let mut child = cmd.spawn().map_err(|e| CliError::Invalid(format!("start the pager: {e}")))?;
    let mut line = String::new();
    let stdout = child.stdout.take().expect("piped");
    BufReader::new(stdout).read_line(&mut line).map_err(|e| CliError::Invalid(format!("read the pager's report: {e}")))?;
    let report: serde_json::Value = match serde_json::from_str(line.trim()) {
        Ok(v) => v,
        Err(_) => {
            let status = child.wait().ok();
            return Err(CliError::Invalid(format!("lazy restore of {id} failed (pager exited: {status:?}; set ZAP_PAGER_LOG=FILE for its log)")));
        }
    };
    if let Some(err) = report.get("error").and_then(|e| e.as_str()) {
        let _ = child.wait();
        return Err(CliError::Invalid(err.to_string()));
    }
    let mut report = report;
    report["pager_pid"] = json!(child.id());
    if ctx.json {
        return Output::json(&report);
    }
    eprintln!(
        "zap: restored {id} as pid {} in {:.0} ms; its memory is loading (pager pid {})",
        report["pid"],
        report["restore_ms"].as_f64().unwrap_or(0.0),
        child.id()
    );
    Ok(Output::text(format!("{}\n", report["pid"])))
}

/// `zap __pager ID`: the lazy restore itself (see the module doc).
pub fn run(ctx: &Ctx, args: &PagerArgs) -> Result<Output> {
    let say = |v: serde_json::Value| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    };
    let restored = (|| {
        // The pager thread lets go of the store once it has opened the packs it needs.
        let store = std::sync::Arc::new(ctx.open()?);
        let id = zap_store::ImageStore::resolve(&*store, &args.id)?;
        let r = zap_engine::process::restore_lazy(store, &id).map_err(|e| CliError::Invalid(e.to_string()))?;
        Ok::<_, CliError>((id, r))
    })();
    let (id, (r, pager)) = match restored {
        Ok(x) => x,
        Err(e) => {
            say(json!({ "error": e.to_string() }));
            return Err(e);
        }
    };
    say(json!({
        "id": id.to_hex(), "pid": r.pid, "vpid": r.vpid, "init_pid": r.init_pid, "restore_ms": r.restore_ms,
        "warnings": r.warnings, "lazy": true,
    }));
    // Nobody reads our stdout any more.
    // SAFETY: closing fd 1 of our own process, which nothing else uses now.
    unsafe { libc::close(1) };
    let report = pager.wait().map_err(|e| CliError::Invalid(e.to_string()))?;
    tracing::info!(?report, "lazy restore: every page is in");
    Ok(Output::text(String::new()))
}
