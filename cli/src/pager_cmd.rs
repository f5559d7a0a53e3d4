//! `zap restore ID --lazy` (process, `--tree` and pod checkpoints), and the hidden `zap __pager`
//! it starts.
//!
//! The pager must outlive the command, so the command does not restore itself, nor open the
//! store: it starts `zap __pager ID [--name N] [--ip A]` (same store; its own session; stderr to
//! `$ZAP_PAGER_LOG` or /dev/null), which opens the store for reading only, resolves the id (a prefix is fine),
//! reads the checkpoint's kind from its summary and restores it lazily
//! ([`zap_engine::process::restore_lazy`], [`zap_engine::group::restore_lazy`],
//! [`zap_engine::pod::checkpoint::restore_lazy`]), lets go of the store once its pagers have
//! opened the packs they need (so other commands can use the store while pages stream in),
//! writes one JSON line with what it restored to its stdout, and serves and streams pages until
//! all are in, then exits. The command passes that line on and exits. The namespace init of a
//! restored process or tree is the pager's child, created with a death signal and a guard (a pair of unix sockets); a
//! pod's init (`zap-init`) watches the guard; both hold the userfaultfds meanwhile: if the pager dies before every page is in, every
//! restored process is killed, never left waiting for a page (a pod then shows as failed in
//! `zap ps` until `zap rm`).
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use clap::Args;
use serde_json::json;

use crate::output::Output;
use crate::error::{CliError, Result};
use crate::Ctx;
use zap_engine::pod::checkpoint as podck;

/// `zap __pager` arguments.
#[derive(Args)]
pub struct PagerArgs {
    /// The checkpoint (id or unique prefix, or a pod's name: its latest checkpoint).
    id: String,
    /// Pod checkpoints: name of the restored pod.
    #[arg(long)]
    name: Option<String>,
    /// Pod checkpoints: address of the restored pod.
    #[arg(long)]
    ip: Option<String>,
}

/// `zap restore ID --lazy`: starts the pager and reports what it says.
pub fn restore_lazy(ctx: &Ctx, id: &str, name: Option<&str>, ip: Option<&str>) -> Result<Output> {
    tracing::debug!("lazy restore: starting the pager");
    let exe = std::env::current_exe().map_err(|e| CliError::Invalid(format!("find the zap executable: {e}")))?;
    let log = match std::env::var_os("ZAP_PAGER_LOG") {
        Some(p) => std::fs::OpenOptions::new().create(true).append(true).open(&p).map(Stdio::from).unwrap_or_else(|_| Stdio::null()),
        None => Stdio::null(),
    };
    let mut cmd = Command::new(exe);
    cmd.arg("--store").arg(&ctx.store).arg("__pager").arg(id).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
    if let Some(n) = name {
        cmd.arg("--name").arg(n);
    }
    if let Some(a) = ip {
        cmd.arg("--ip").arg(a);
    }
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let mut child = cmd.spawn().map_err(|e| CliError::Invalid(format!("start the pager: {e}")))?;
    let mut line = String::new();
    let stdout = child.stdout.take().expect("piped");
    BufReader::new(stdout).read_line(&mut line).map_err(|e| CliError::Invalid(format!("read the pager's report: {e}")))?;
    tracing::debug!("lazy restore: the pager reported");
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
    let ms = report["restore_ms"].as_f64().unwrap_or(0.0);
    if let Some(pod) = report["pod"].as_str() {
        let n = report["pids"].as_array().map_or(0, Vec::len);
        eprintln!("zap: restored pod {pod} from {id}: {n} processes in {ms:.0} ms; their memory is loading (pager pid {})", child.id());
        return Ok(Output::text(format!("{pod}\n")));
    }
    if let Some(pids) = report["pids"].as_array() {
        eprintln!("zap: restored {id}: {} processes in {ms:.0} ms; their memory is loading (pager pid {})", pids.len(), child.id());
        let root = pids.first().and_then(|p| p[1].as_i64()).unwrap_or(0);
        return Ok(Output::text(format!("{root}\n")));
    }
    eprintln!("zap: restored {id} as pid {} in {ms:.0} ms; its memory is loading (pager pid {})", report["pid"], child.id());
    Ok(Output::text(format!("{}\n", report["pid"])))
}

/// What a pager restored, and what waits until every page is in.
enum Lazy {
    Process(zap_engine::lazy::PagerHandle),
    Group(zap_engine::lazy::Pagers),
    Pod(zap_engine::lazy::Pagers, String),
}

/// `zap __pager ID`: the lazy restore itself (see the module doc).
pub fn run(ctx: &Ctx, args: &PagerArgs) -> Result<Output> {
    let say = |v: serde_json::Value| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    };
    let restored = (|| {
        // The pagers let go of the store once they have opened the packs they need.
        let t = std::time::Instant::now();
        let store = std::sync::Arc::new(ctx.open_read_only()?);
        tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, "pager: store open");
        // An id (or prefix), or a pod's name: its latest checkpoint.
        let id = crate::process_cmd::resolve_or_pod(&store, &args.id)?;
        let kind = store.summary(&id)?.kind;
        tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, "pager: checkpoint found");
        let engine = |e: zap_engine::EngineError| CliError::Invalid(e.to_string());
        if kind != podck::KIND && (args.name.is_some() || args.ip.is_some()) {
            return Err(CliError::Invalid(format!("--name and --ip apply to pod checkpoints; {id} is a {kind} checkpoint")));
        }
        let (line, lazy) = if kind == podck::KIND {
            let init_exe = zap_engine::pod::default_init_exe().map_err(engine)?;
            let opts = podck::PodRestoreOptions { name: args.name.clone(), ip: args.ip.clone(), init_exe, ..Default::default() };
            let (r, pagers) = podck::restore_lazy(store, &zap_engine::pod::run_dir(), &id, &opts).map_err(engine)?;
            let line = json!({
                "id": id.to_hex(), "pod": r.name, "ip": r.ip, "init_pid": r.group.init_pid, "pids": r.group.pids,
                "restore_ms": r.group.restore_ms, "warnings": r.group.warnings, "lazy": true, "lazy_bytes": pagers.lazy_bytes,
            });
            (line, Lazy::Pod(pagers, r.name))
        } else if kind == zap_engine::group::KIND {
            let (r, pagers) = zap_engine::group::restore_lazy(store, &id).map_err(engine)?;
            let line = json!({
                "id": id.to_hex(), "init_pid": r.init_pid, "pids": r.pids, "restore_ms": r.restore_ms, "warnings": r.warnings,
                "lazy": true, "lazy_bytes": pagers.lazy_bytes,
            });
            (line, Lazy::Group(pagers))
        } else {
            let (r, pager) = zap_engine::process::restore_lazy(store, &id).map_err(engine)?;
            let line = json!({
                "id": id.to_hex(), "pid": r.pid, "vpid": r.vpid, "init_pid": r.init_pid, "restore_ms": r.restore_ms,
                "warnings": r.warnings, "lazy": true,
            });
            (line, Lazy::Process(pager))
        };
        Ok::<_, CliError>((line, lazy))
    })();
    let (line, lazy) = match restored {
        Ok(x) => x,
        Err(e) => {
            say(json!({ "error": e.to_string() }));
            return Err(e);
        }
    };
    say(line);
    // Nobody reads our stdout any more.
    // SAFETY: closing fd 1 of our own process, which nothing else uses now.
    unsafe { libc::close(1) };
    let report = match lazy {
        Lazy::Process(pager) => pager.wait(),
        Lazy::Group(pagers) => pagers.wait(),
        Lazy::Pod(pagers, name) => {
            let r = pagers.wait();
            let failure = r.as_ref().err().map(|e| e.to_string());
            podck::finish_loading(&zap_engine::pod::run_dir(), &name, failure.as_deref());
            r
        }
    }
    .map_err(|e| CliError::Invalid(e.to_string()))?;
    tracing::info!(?report, "lazy restore: every page is in");
    Ok(Output::text(String::new()))
}
