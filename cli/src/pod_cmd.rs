//! `zap run`, `zap ps`, `zap exec`, `zap stop`, `zap kill`, `zap rm`: the pod lifecycle.
//!
//! A pod is a group of processes in its own namespaces and cgroup with our `zap-init` as PID 1
//! (see `zap_engine::pod`). `run` returns once the command runs; the pod lives on after `zap`
//! exits. Pods live in `/run/zap/pods` (or `$ZAP_RUN_DIR`); `zap-init` is found next to the `zap`
//! executable unless `$ZAP_INIT` names it. Failures print `zap <command>: <message>` (the
//! message names the pod and the step) and exit with status 1.
use std::time::Duration;

use clap::Args;
use serde_json::json;
use zap_engine::pod::{self, cgroup::parse_size, Launch, PodSpec, PodStatus};

use crate::error::{CliError, Result};
use crate::output::{bytes, outln, utc, Align, Output, Table};
use crate::{schedule_cmd, Ctx};
use zap_engine::pod::checkpoint::Loading;

/// `zap run` arguments.
#[derive(Args)]
pub struct RunArgs {
    /// Name of the pod (`[A-Za-z0-9][A-Za-z0-9_.-]{0,62}`).
    #[arg(long)]
    name: String,
    /// Hostname inside the pod (default: the name).
    #[arg(long)]
    hostname: Option<String>,
    /// IPv4 address of the pod's eth0, e.g. 10.77.0.2/24 (default: no network but lo).
    #[arg(long, value_name = "ADDR/PREFIX")]
    ip: Option<String>,
    /// MAC address of the pod's eth0 (with --ip).
    #[arg(long, requires = "ip")]
    mac: Option<String>,
    /// Memory limit: bytes or K/M/G/T (binary), e.g. 512M.
    #[arg(long, value_name = "SIZE", value_parser = parse_memory)]
    memory: Option<u64>,
    /// CPU limit in CPUs, e.g. 1.5.
    #[arg(long, value_name = "N", value_parser = parse_cpus)]
    cpus: Option<f64>,
    /// Checkpoint the pod on this schedule (like `zap checkpoint NAME --every`), e.g. 30s.
    #[arg(long, value_name = "PERIOD", value_parser = crate::schedule_cmd::parse_duration)]
    checkpoint_every: Option<Duration>,
    /// With --checkpoint-every: how many periodic checkpoints to keep.
    #[arg(long, value_name = "N", requires = "checkpoint_every", default_value_t = 10)]
    keep: usize,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

fn parse_memory(s: &str) -> std::result::Result<u64, String> {
    parse_size(s).ok_or_else(|| format!("{s:?} is not a size (e.g. 512M, 2G, 1048576)"))
}

fn parse_cpus(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.01 => Ok(v),
        _ => Err(format!("{s:?} is not a CPU count (e.g. 0.5, 2)")),
    }
}

/// `zap exec` arguments.
#[derive(Args)]
pub struct ExecArgs {
    /// The pod.
    name: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

/// `zap stop` arguments.
#[derive(Args)]
pub struct StopArgs {
    /// The pod.
    name: String,
    /// Seconds to wait after SIGTERM before killing the pod.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

/// `zap kill` arguments.
#[derive(Args)]
pub struct KillArgs {
    /// The pod.
    name: String,
}

/// `zap rm` arguments.
#[derive(Args)]
pub struct RmArgs {
    /// Kill the pod first if it is running.
    #[arg(short, long)]
    force: bool,
    /// The pod.
    name: String,
}

fn engine_err(e: zap_engine::EngineError) -> CliError {
    CliError::Invalid(e.to_string())
}

/// Runs `zap run`.
pub fn run(ctx: &Ctx, args: &RunArgs) -> Result<Output> {
    let init_exe = pod::default_init_exe().map_err(engine_err)?;
    let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
    let spec = PodSpec {
        name: args.name.clone(),
        hostname: args.hostname.clone(),
        ip: args.ip.clone(),
        mac: args.mac.clone(),
        memory_limit: args.memory,
        cpus: args.cpus,
        launch: Launch::Command { argv: args.command.clone(), env: std::env::vars().collect(), cwd },
        init_exe,
    };
    let st = pod::create(&pod::run_dir(), &spec).map_err(engine_err)?;
    let sched = match args.checkpoint_every {
        Some(every) => Some(schedule_cmd::start(ctx, &st.name, every, args.keep, false).map_err(|e| {
            CliError::Invalid(format!("pod {} runs, but its checkpoint schedule did not start: {e}", st.name))
        })?),
        None => None,
    };
    if ctx.json {
        return Output::json(&json!({
            "name": st.name,
            "hostname": st.hostname,
            "init_pid": st.init_pid,
            "main_pid": st.main_pid,
            "main_vpid": st.main_vpid,
            "ip": st.ip,
            "veth_host": st.veth_host,
            "cgroup": st.cgroup,
            "scheduler_pid": sched.as_ref().map(|s| s.pid),
        }));
    }
    Ok(Output::text(format!("{}\n", st.name)))
}

/// Runs `zap ps`.
pub fn ps(ctx: &Ctx) -> Result<Output> {
    let root = pod::run_dir();
    let pods = pod::list(&root).map_err(engine_err)?;
    let rows: Vec<_> = pods
        .iter()
        .map(|p| {
            let cg = pod::cgroup_of(p);
            let procs = cg.procs().len();
            let sched = schedule_cmd::running(&root, &p.name);
            let loading = zap_engine::pod::checkpoint::loading(&root, &p.name);
            (p, pod::status(&root, p), procs, if procs > 0 { cg.memory_bytes() } else { 0 }, sched, loading)
        })
        .collect();
    if ctx.json {
        let list: Vec<_> = rows
            .iter()
            .map(|(p, s, procs, mem, sched, loading)| {
                json!({
                    "name": p.name,
                    "loading": matches!(loading, Some(Loading::Loading(_))),
                    "failed": match loading { Some(Loading::Failed(why)) => Some(why), _ => None },
                    "state": match s { PodStatus::Running => "running", PodStatus::Exited(_) => "exited", PodStatus::Dead => "dead" },
                    "exit_code": match s { PodStatus::Exited(e) => Some(e.code), _ => None },
                    "processes": procs,
                    "memory_bytes": mem,
                    "ip": p.ip,
                    "hostname": p.hostname,
                    "init_pid": p.init_pid,
                    "main_pid": p.main_pid,
                    "created_ms": p.created_ms,
                    "last_checkpoint": p.last_checkpoint,
                    "schedule": sched.as_ref().map(|s| json!({
                        "scheduler_pid": s.pid, "every_ms": s.every_ms, "keep": s.keep,
                    })),
                    "argv": p.argv,
                })
            })
            .collect();
        return Output::json(&list);
    }
    let mut t = Table::new(&[
        ("NAME", Align::Left),
        ("STATE", Align::Left),
        ("PROCS", Align::Right),
        ("MEMORY", Align::Right),
        ("IP", Align::Left),
        ("CREATED", Align::Left),
        ("LAST CHECKPOINT", Align::Left),
        ("CHECKPOINTS", Align::Left),
    ]);
    for (p, s, procs, mem, sched, loading) in &rows {
        t.row(vec![
            p.name.clone(),
            match loading {
                Some(Loading::Loading(_)) => format!("{s}, loading"),
                Some(Loading::Failed(_)) => format!("{s}, failed (lazy restore)"),
                None => s.to_string(),
            },
            procs.to_string(),
            bytes(*mem),
            p.ip.clone().unwrap_or_else(|| "-".into()),
            utc(p.created_ms),
            p.last_checkpoint.clone().unwrap_or_else(|| "-".into()),
            sched.as_ref().map_or_else(|| "-".into(), |s| s.describe()),
        ]);
    }
    let mut out = String::new();
    if !rows.is_empty() {
        out.push_str(&t.render());
    }
    Ok(Output::text(out))
}

/// Runs `zap exec`; returns the command's exit code.
pub fn exec(args: &ExecArgs) -> Result<u8> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let code = pod::exec(&pod::run_dir(), &args.name, &args.command, &env).map_err(engine_err)?;
    Ok(u8::try_from(code).unwrap_or(255))
}

/// Runs `zap stop`.
pub fn stop(ctx: &Ctx, args: &StopArgs) -> Result<Output> {
    let root = pod::run_dir();
    // Ask the scheduler to stop first, so that it takes no checkpoint of a pod being stopped.
    let sched = schedule_cmd::request_stop(&root, &args.name);
    let s = pod::stop(&root, &args.name, Duration::from_secs(args.timeout)).map_err(engine_err);
    end_scheduler(&args.name, sched);
    let s = s?;
    status_output(ctx, &args.name, s)
}

/// Runs `zap kill`.
pub fn kill(ctx: &Ctx, args: &KillArgs) -> Result<Output> {
    let root = pod::run_dir();
    let sched = schedule_cmd::request_stop(&root, &args.name);
    let s = pod::kill(&root, &args.name).map_err(engine_err);
    end_scheduler(&args.name, sched);
    let s = s?;
    status_output(ctx, &args.name, s)
}

/// Runs `zap rm`.
pub fn rm(ctx: &Ctx, args: &RmArgs) -> Result<Output> {
    let root = pod::run_dir();
    // A running pod that `rm` refuses keeps its schedule.
    let refused = !args.force
        && pod::load(&root, &args.name).is_ok_and(|st| pod::status(&root, &st) == PodStatus::Running);
    let sched = if refused { None } else { schedule_cmd::request_stop(&root, &args.name) };
    let r = pod::rm(&root, &args.name, args.force).map_err(engine_err);
    end_scheduler(&args.name, sched);
    r?;
    if ctx.json {
        return Output::json(&json!({ "name": args.name, "removed": true }));
    }
    Ok(Output::text(format!("{}\n", args.name)))
}

/// Waits a little for a scheduler asked to stop, then kills it (its pod is ending anyway).
fn end_scheduler(name: &str, sched: Option<schedule_cmd::Schedule>) {
    if let Some(s) = sched {
        if !schedule_cmd::wait_stopped(&s, Duration::from_secs(3), true) {
            crate::progress::warn(format_args!("pod {name}: checkpoint scheduler {} did not stop", s.pid));
        }
    }
}

fn status_output(ctx: &Ctx, name: &str, s: PodStatus) -> Result<Output> {
    if ctx.json {
        let code = match s {
            PodStatus::Exited(e) => Some(e.code),
            _ => None,
        };
        return Output::json(&json!({ "name": name, "state": s.to_string(), "exit_code": code }));
    }
    let mut out = String::new();
    outln!(out, "{name} {s}");
    Ok(Output::text(out))
}
