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
//! - [`migrate_cmd`]: `zap migrate`, `zap receive` (and its hidden worker), `zap key`;
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
mod migrate_cmd;
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
    /// The Zap root of this host: its run directory (DIR/pods), store (DIR/store), migration
    /// state, keys, locks and cgroup parent all derive from it, so several hosts can share one
    /// machine (default: /run/zap/pods, /var/lib/zap/store, /etc/zap/keys, cgroup zap).
    #[arg(long, global = true, env = "ZAP_ROOT", value_name = "DIR")]
    root: Option<PathBuf>,
    /// The image store directory (default: ROOT/store with --root, else /var/lib/zap/store).
    #[arg(long, global = true, env = "ZAP_STORE", value_name = "DIR")]
    store: Option<PathBuf>,
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
    ///
    /// Connections waiting in a TCP listener's backlog (the kernel completed their handshake,
    /// the application has not accept()ed them yet) cannot be put back in a backlog: the kernel
    /// has no interface for it (repair mode refuses listening sockets; only a handshake fills an
    /// accept queue). So the stop lets the processes run on a moment with the network locked to
    /// accept them (a pod: up to 4 rounds of 5-20 ms; --pid/--tree: up to 8, with new connection
    /// requests to its listeners dropped meanwhile, which their clients retry as for a lost
    /// SYN). What the application accepts then is saved as an established connection and comes
    /// back connected: its peer sees a pause, then every byte. If some are still waiting after
    /// that, the checkpoint fails naming the listener and how many wait; nothing is stored and
    /// the pod or process runs on, its connections untouched. With --tcp-close they are given
    /// up: the listener is saved without them; a pod left running keeps them, but in a restore
    /// they do not exist, so their peers' next segment to it is answered with a reset
    /// (ECONNRESET) and their clients must connect again.
    Checkpoint(process_cmd::CheckpointArgs),
    /// Restore a pod checkpoint (prints the pod name) or a process checkpoint (prints its host pid).
    ///
    /// A restored process whose standard streams led outside it (a terminal, a pipe) gets
    /// `zap restore`'s own: a caller capturing this command's output waits as long as the process
    /// holds them.
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
    ///
    /// TCP connections come back as they were at that checkpoint, with its old sequence numbers:
    /// their peers have moved on (or saw the running pod's connections end when it was removed),
    /// so they answer with a reset and the application gets ECONNRESET (or EPIPE) on those
    /// connections. Listening sockets are back at once; clients simply connect again.
    #[command(verbatim_doc_comment)]
    Rollback(schedule_cmd::RollbackArgs),
    /// The pager of a lazy restore (internal: `zap restore --lazy` starts it).
    #[command(name = "__pager", hide = true)]
    Pager(pager_cmd::PagerArgs),
    /// The checkpoint scheduler that `--every` starts (internal).
    #[command(name = "__schedule", hide = true)]
    Schedule(schedule_cmd::ScheduleArgs),
    /// Move a running pod to another host (live migration); --recover resolves an interrupted one.
    Migrate(migrate_cmd::MigrateArgs),
    /// Receive migrating pods: on stdin/stdout (--stdio, for ssh and --via) or on a port (--listen).
    Receive(migrate_cmd::ReceiveArgs),
    /// One migration session on stdin/stdout (internal: `zap receive` starts it).
    #[command(name = "__receive-worker", hide = true)]
    ReceiveWorker,
    /// This host's keys for migration: gen, show, allow (a source), trust (a destination).
    #[command(subcommand)]
    Key(migrate_cmd::KeyCommand),
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

    /// Opens the existing store for reading only (restores): no start-up write, no recovery of
    /// interrupted writes (see [`StoreOptions::read_only`]).
    pub fn open_read_only(&self) -> Result<LocalStore> {
        Ok(LocalStore::open(&self.store, StoreOptions { read_only: true, ..StoreOptions::default() })?)
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
    if let Some(root) = &cli.root {
        // The engine reads the root from the environment (as do the processes zap starts, such
        // as the checkpoint scheduler); nothing else runs yet in this process.
        std::env::set_var("ZAP_ROOT", root);
    }
    if matches!(cli.command, Command::Checkpoint(_) | Command::Restore(_)) {
        // Short-lived commands that move all of a process's memory through buffers.
        zap_engine::keep_freed_memory();
    }
    let ctx = Ctx { store: cli.store.unwrap_or_else(zap_engine::host::store_dir), json: cli.json };
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
        Command::Migrate(args) => (Some("migrate"), migrate_cmd::migrate(&ctx, &args)),
        Command::Receive(args) => (Some("receive"), migrate_cmd::receive(&ctx, &args)),
        Command::ReceiveWorker => (Some("receive"), migrate_cmd::worker()),
        Command::Key(cmd) => (None, migrate_cmd::key(&ctx, &cmd)),
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
