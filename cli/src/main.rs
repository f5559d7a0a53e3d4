//! `zap`: run pods, checkpoint and restore them (or single processes), and manage the image
//! store the checkpoints live in.
//!
//! This file holds the global options and the dispatch; each command group has its own module:
//! - [`process_cmd`]: `zap checkpoint`, `zap restore` of pods and processes (and `zap ls`);
//! - [`store_cmd`]: `zap store init|ls|show|rm` and the dispatch of the whole `store` group;
//! - [`maint_cmd`]: `zap store verify|gc|stats`;
//! - [`files_cmd`]: `zap store put|get`, checkpoints of plain files;
//! - [`pod_cmd`]: `zap run|ps|exec|stop|kill|rm`, the pod lifecycle;
//! - [`schedule_cmd`]: periodic checkpoints (`--every`, the hidden `__schedule`) and `zap rollback`;
//! - [`output`] and [`progress`]: what goes to stdout (human or `--json`) and to stderr.
//!
//! Exit status: 0 on success, 1 on any failure (printed as `zap: error: <message>`, or
//! `zap <command>: <message>` for the pod commands) or when `verify` finds problems, 2 on usage
//! errors. `zap exec` exits with the status of the command it ran.
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use zap_store::{LocalStore, StoreOptions};

mod error;
mod files_cmd;
mod maint_cmd;
mod output;
mod pager_cmd;
mod pod_cmd;
mod process_cmd;
mod progress;
mod schedule_cmd;
mod store_cmd;

use error::Result;
use output::Output;

/// Checkpoint/restore for Linux processes.
#[derive(Parser)]
#[command(
    name = "zap",
    version,
    about = "Zap: pods of Linux processes, checkpointed, restored and rolled back, and the image store their checkpoints live in",
    after_help = "Exit status: 0 on success; 1 on failure, or when `zap store verify` finds problems; 2 on usage errors.",
    propagate_version = true
)]
struct Cli {
    /// The image store directory.
    #[arg(long, global = true, env = "ZAP_STORE", default_value = "/var/lib/zap/store", value_name = "DIR")]
    store: PathBuf,
    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Log to stderr: -v info, -vv debug, -vvv trace (RUST_LOG, when set, takes precedence).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Checkpoint a pod, or a process with --pid (prints the checkpoint id).
    Checkpoint(process_cmd::CheckpointArgs),
    /// Restore a pod checkpoint (prints the pod name) or a process checkpoint (prints its host pid).
    Restore(process_cmd::RestoreArgs),
    /// List checkpoints (same as `zap store ls`).
    Ls,
    /// Manage the image store.
    #[command(subcommand)]
    Store(store_cmd::StoreCommand),
    /// Start a command in a new pod (prints the pod name); the pod runs on after zap exits.
    Run(pod_cmd::RunArgs),
    /// List pods: state, processes, memory, address, last checkpoint.
    Ps,
    /// Run a command inside a running pod; exits with its status.
    Exec(pod_cmd::ExecArgs),
    /// Stop a pod: SIGTERM to all its processes, then kill after a timeout.
    Stop(pod_cmd::StopArgs),
    /// Kill every process of a pod at once.
    Kill(pod_cmd::KillArgs),
    /// Remove a pod that is not running (-f: kill it first).
    Rm(pod_cmd::RmArgs),
    /// Replace a pod by one of its checkpoints (default: the latest), same name, pids, address.
    Rollback(schedule_cmd::RollbackArgs),
    /// The checkpoint scheduler that `--every` starts (internal).
    #[command(name = "__pager", hide = true)]
    Pager(pager_cmd::PagerArgs),
    #[command(name = "__schedule", hide = true)]
    Schedule(schedule_cmd::ScheduleArgs),
}

/// What every command gets from the global options.
pub struct Ctx {
    /// The store directory.
    pub store: PathBuf,
    /// `--json` was given.
    pub json: bool,
}

impl Ctx {
    /// Opens the existing store.
    pub fn open(&self) -> Result<LocalStore> {
        Ok(LocalStore::open(&self.store, StoreOptions::default())?)
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.trim().is_empty() => EnvFilter::try_new(&s).unwrap_or_else(|e| {
            progress::warn(format_args!("ignoring RUST_LOG={s:?}: {e}"));
            EnvFilter::new(level)
        }),
        _ => EnvFilter::new(level),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| progress::LogWriter)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .init();
}

/// Writes the output; a reader that went away (a closed pipe) is not an error.
fn emit(out: &Output) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    match stdout.write_all(out.text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let ctx = Ctx { store: cli.store, json: cli.json };
    // The pod commands name themselves in errors (`zap run: ...`); the others say `zap: error:`.
    let (pod_command, result) = match cli.command {
        Command::Checkpoint(args) => (None, process_cmd::checkpoint(&ctx, &args)),
        Command::Restore(args) => (None, process_cmd::restore(&ctx, &args)),
        Command::Ls => (None, store_cmd::ls(&ctx)),
        Command::Store(cmd) => (None, store_cmd::run(&ctx, cmd)),
        Command::Run(args) => (Some("run"), pod_cmd::run(&ctx, &args)),
        Command::Ps => (Some("ps"), pod_cmd::ps(&ctx)),
        Command::Stop(args) => (Some("stop"), pod_cmd::stop(&ctx, &args)),
        Command::Kill(args) => (Some("kill"), pod_cmd::kill(&ctx, &args)),
        Command::Rm(args) => (Some("rm"), pod_cmd::rm(&ctx, &args)),
        Command::Rollback(args) => (Some("rollback"), schedule_cmd::rollback(&ctx, &args)),
        Command::Schedule(args) => (Some("__schedule"), schedule_cmd::run(&ctx, &args)),
        Command::Pager(args) => (None, pager_cmd::run(&ctx, &args)),
        Command::Exec(args) => {
            return match pod_cmd::exec(&args) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("zap exec: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    };
    finish(pod_command, result)
}

/// Prints the output or the error (`zap: error: ...`, or `zap <cmd>: ...` for pod commands).
fn finish(pod_command: Option<&str>, result: Result<Output>) -> ExitCode {
    match result {
        Ok(out) => match emit(&out) {
            Ok(()) if out.failed => ExitCode::FAILURE,
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("zap: error: write output: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            match pod_command {
                Some(name) => eprintln!("zap {name}: {e}"),
                None => eprintln!("zap: error: {e}"),
            }
            ExitCode::FAILURE
        }
    }
}
