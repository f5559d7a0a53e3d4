//! `zap migrate`, `zap receive`, `zap key`: live migration of pods between hosts.
//!
//! `migrate POD DEST` moves a running pod to the host DEST reaches (`ssh://`, `tcp://`, or
//! `--via COMMAND`) in pre-copy rounds (see `zap_engine::migrate`). Progress goes to stderr, one
//! line per round; the summary (or `--json`: every figure) to stdout. `--recover POD` resolves a
//! migration whose handover outcome is unknown.
//!
//! `receive --stdio` serves one migration on stdin/stdout (what `ssh` and `--via` start);
//! `receive --listen ADDR:PORT` serves every connection that comes (`--once`: the first). Each
//! session runs in a worker process (`zap __receive-worker`) that this command supervises: a
//! worker that dies leaves its session to be swept (the prepared pod removed, or a committed one
//! let run) as soon as it is gone.
//!
//! `key gen|show|allow|trust` manage the host's keys: the destination accepts only sources whose
//! keys it allows, and the source must know the destination's key (`--peer-key`, or `key trust`).
use std::io::IsTerminal;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use clap::{Args, Subcommand};
use serde_json::json;
use zap_engine::migrate::{self, dest, keys, source, transport, RoundReport};

use crate::error::{CliError, Result};
use crate::output::{bytes, outln, Output};
use crate::Ctx;

/// `zap migrate` arguments.
#[derive(Args)]
pub struct MigrateArgs {
    /// The pod.
    pod: String,
    /// Where to: ssh://[user@]host[:port] or tcp://host:port (or use --via).
    #[arg(required_unless_present_any = ["via", "recover"])]
    dest: Option<String>,
    /// A command whose stdin and stdout reach `zap receive --stdio` on the destination.
    #[arg(long, value_name = "COMMAND", conflicts_with = "dest")]
    via: Option<String>,
    /// Resolve a migration of POD whose handover outcome is unknown (asks the destination).
    #[arg(long)]
    recover: bool,
    /// The destination's public key (64 hex digits, or a file holding them); default: the key
    /// recorded with `zap key trust DEST KEY`.
    #[arg(long, value_name = "KEY")]
    peer_key: Option<String>,
    /// The pause the pod may take, in ms.
    #[arg(long, value_name = "MS", default_value_t = 100)]
    max_downtime: u64,
    /// Refuse (the pod runs on here) rather than pause longer than --max-downtime.
    #[arg(long)]
    strict_downtime: bool,
    /// Most pre-copy rounds.
    #[arg(long, value_name = "N", default_value_t = 30)]
    max_rounds: u32,
    /// Limit what migration sends, e.g. 100M (bytes/s), 1G, 800Mbit.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    bandwidth: Option<u64>,
    /// Slow the pod (its cgroup's CPU limit) when it writes faster than the link.
    #[arg(long)]
    auto_converge: bool,
    /// Name of the pod at the destination.
    #[arg(long)]
    name: Option<String>,
    /// Address of the pod at the destination, ADDR/PREFIX (default: the same, with its MAC).
    #[arg(long)]
    ip: Option<String>,
    /// Also leave a checkpoint of the pod in the destination's store.
    #[arg(long)]
    keep_checkpoint: bool,
    /// Only check that the destination can take the pod.
    #[arg(long)]
    dry_run: bool,
    /// Migrate this directory with the pod (repeatable).
    #[arg(long, value_name = "DIR")]
    copy: Vec<PathBuf>,
    /// The zap to run on an ssh destination.
    #[arg(long, default_value = "zap", value_name = "PATH")]
    remote_zap: String,
}

/// Parses a rate: bytes/s with K/M/G suffixes (binary), or bits with `bit` (`800Mbit`).
fn parse_rate(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    if let Some(b) = t.strip_suffix("bit").or_else(|| t.strip_suffix("bps")) {
        let (num, mult) = match b.chars().last() {
            Some('k' | 'K') => (&b[..b.len() - 1], 1e3),
            Some('m' | 'M') => (&b[..b.len() - 1], 1e6),
            Some('g' | 'G') => (&b[..b.len() - 1], 1e9),
            _ => (b, 1.0),
        };
        return num.parse::<f64>().ok().filter(|v| *v > 0.0).map(|v| (v * mult / 8.0) as u64).ok_or_else(|| format!("{s:?} is not a rate"));
    }
    zap_engine::pod::cgroup::parse_size(t).ok_or_else(|| format!("{s:?} is not a rate (e.g. 100M for 100 MiB/s, 800Mbit)"))
}

fn mig(e: migrate::MigrateError) -> CliError {
    CliError::Invalid(e.to_string())
}

/// The destination's key: `--peer-key`, else the one recorded for the destination's label.
fn peer_key(arg: Option<&str>, label: &str) -> Result<keys::PublicKey> {
    if let Some(a) = arg {
        return keys::parse_key_arg(a).map_err(mig);
    }
    keys::KeyFiles::host()
        .known(label)
        .map_err(mig)?
        .ok_or_else(|| CliError::Invalid(format!("handshake: the key of {label} is unknown: give --peer-key KEY, or record it with `zap key trust {label} KEY`")))
}

fn round_line(r: &RoundReport) -> String {
    format!(
        "round {:>2}{}: {:>7} pages ({} dirty), {} chunks ({} there already), {} sent, {:.0} ms, dirty {}/s, link {}/s{}{}",
        r.n,
        if r.last { " (final)" } else { "" },
        r.pages,
        r.dirty_pages,
        r.chunks,
        r.had_chunks,
        bytes(r.chunk_bytes),
        r.ms,
        bytes(r.dirty_rate as u64),
        bytes(r.link_rate as u64),
        if r.cpu_share < 1.0 { format!(", CPU limited to {:.0}%", r.cpu_share * 100.0) } else { String::new() },
        r.rebuilt.as_ref().map(|w| format!(", destination rebuilt its pod: {w}")).unwrap_or_default(),
    )
}

/// Runs `zap migrate`.
pub fn migrate(ctx: &Ctx, args: &MigrateArgs) -> Result<Output> {
    let root = zap_engine::pod::run_dir();
    if args.recover {
        let jpath = migrate::journal::source_path(&root, &args.pod);
        let j: Option<migrate::journal::SourceJournal> = migrate::journal::read(&jpath).map_err(mig)?;
        let label = match (&args.dest, &args.via, &j) {
            (Some(d), _, _) => d.clone(),
            (None, Some(v), _) => format!("via:{v}"),
            (None, None, Some(j)) => j.dest.clone(),
            (None, None, None) => return Err(CliError::Invalid(format!("recover: pod {} has no migration to recover", args.pod))),
        };
        let needs_peer = j.as_ref().is_some_and(|j| j.state == migrate::journal::SourceState::Committing);
        let conn = if needs_peer { Some(transport::connect(&transport::Dest::from_label(&label).map_err(mig)?, &args.remote_zap).map_err(mig)?) } else { None };
        let mut conn = conn;
        let stream = conn.as_mut().and_then(|c| c.stream.take());
        let what = source::recover(&root, &args.pod, stream).map_err(mig)?;
        drop(conn);
        if ctx.json {
            return Output::json(&json!({ "pod": args.pod, "recovered": what }));
        }
        return Ok(Output::text(format!("{what}\n")));
    }
    let dest = transport::Dest::parse(args.dest.as_deref(), args.via.as_deref()).map_err(mig)?;
    let label = dest.label();
    let peer = peer_key(args.peer_key.as_deref(), args.dest.as_deref().unwrap_or(&label))?;
    let opts = source::MigrateOptions {
        name: args.name.clone(),
        ip: args.ip.clone(),
        max_downtime_ms: args.max_downtime as f64,
        max_rounds: args.max_rounds.max(1),
        strict_downtime: args.strict_downtime,
        bandwidth: args.bandwidth,
        auto_converge: args.auto_converge,
        keep_checkpoint: args.keep_checkpoint,
        dry_run: args.dry_run,
        copy: args.copy.iter().map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone())).collect(),
        chunker: migrate::cache::chunker(),
    };
    let mut conn = transport::connect(&dest, &args.remote_zap).map_err(mig)?;
    let stream = conn.stream.take().expect("a new connection has its stream");
    let terminal = std::io::stderr().is_terminal();
    let mut progress = |r: &RoundReport| {
        let line = round_line(r);
        if terminal {
            crate::progress::status(&line);
        } else {
            eprintln!("zap migrate: {line}");
        }
    };
    let result = source::migrate(&root, &args.pod, &label, peer, stream, &opts, &mut progress);
    drop(conn);
    let report = result.map_err(mig)?;
    if ctx.json {
        return Output::json(&report);
    }
    let mut out = String::new();
    if report.dry_run {
        outln!(out, "dry run: {} can move to {label} ({})", args.pod, report.converged);
        return Ok(Output::text(out));
    }
    outln!(out, "migrated {} to {label} as {} ({})", report.pod, report.name, report.ip.as_deref().unwrap_or("no address"));
    for r in &report.rounds {
        outln!(out, "  {}", round_line(r));
    }
    outln!(out, "  pre-copy: {}", report.converged);
    outln!(
        out,
        "  total {:.0} ms, downtime {:.1} ms (stop {:.1}, save {:.1}, send {:.1}, restore {:.1}, commit {:.1}); memory at the destination: {}",
        report.total_ms,
        report.downtime_ms,
        report.final_stop_ms,
        report.final_save_ms,
        report.final_send_ms,
        report.final_restore_ms,
        report.commit_ms,
        report.memory
    );
    outln!(
        out,
        "  {} on the wire for {} of memory ({:.1}%), {} chunks sent, {} the destination had",
        bytes(report.wire_bytes),
        bytes(report.memory_bytes),
        if report.memory_bytes > 0 { report.wire_bytes as f64 * 100.0 / report.memory_bytes as f64 } else { 0.0 },
        report.sent_chunks,
        report.had_chunks
    );
    if let Some(id) = &report.checkpoint {
        outln!(out, "  checkpoint {id} left in the destination's store");
    }
    Ok(Output::text(out))
}

/// `zap receive` arguments.
#[derive(Args)]
pub struct ReceiveArgs {
    /// Serve one migration on stdin/stdout (for ssh and --via).
    #[arg(long, conflicts_with = "listen")]
    stdio: bool,
    /// Listen on ADDR:PORT (e.g. 0.0.0.0:7070) and serve every migration that comes.
    #[arg(long, value_name = "ADDR:PORT", required_unless_present = "stdio")]
    listen: Option<String>,
    /// With --listen: serve one connection, then exit.
    #[arg(long, requires = "listen")]
    once: bool,
}

/// Starts a worker on `stdin`/`stdout` and waits for it; sweeps its session if it did not end
/// normally. Returns whether it succeeded.
fn supervise(stdin: Stdio, stdout: Stdio) -> Result<bool> {
    let exe = std::env::current_exe().map_err(|e| CliError::Invalid(format!("receive: find own executable: {e}")))?;
    let mut child = Command::new(exe)
        .arg("__receive-worker")
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CliError::Invalid(format!("receive: start worker: {e}")))?;
    let status = child.wait().map_err(|e| CliError::Invalid(format!("receive: wait for worker: {e}")))?;
    if status.code().is_none() {
        eprintln!("zap receive: the worker died ({status}); cleaning up its session");
        dest::sweep(&zap_engine::pod::run_dir());
    }
    Ok(status.success())
}

/// Runs `zap receive`.
pub fn receive(_ctx: &Ctx, args: &ReceiveArgs) -> Result<Output> {
    dest::sweep(&zap_engine::pod::run_dir());
    if args.stdio {
        let ok = supervise(Stdio::inherit(), Stdio::inherit())?;
        return Ok(Output { text: String::new(), failed: !ok });
    }
    let addr = args.listen.as_deref().expect("clap requires --listen without --stdio");
    let listener = std::net::TcpListener::bind(addr).map_err(|e| CliError::Invalid(format!("receive: listen on {addr}: {e}")))?;
    eprintln!("zap receive: listening on {}", listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| addr.to_string()));
    let mut workers = Vec::new();
    for conn in listener.incoming() {
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                eprintln!("zap receive: accept: {e}");
                continue;
            }
        };
        let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        transport::tune_tcp(&conn);
        let fd: OwnedFd = conn.into();
        let fd2 = fd.try_clone().map_err(|e| CliError::Invalid(format!("receive: {e}")))?;
        let once = args.once;
        let h = std::thread::spawn(move || {
            let r = supervise(Stdio::from(fd), Stdio::from(fd2));
            if !matches!(r, Ok(true)) {
                eprintln!("zap receive: session from {peer} failed");
            }
            r.unwrap_or(false)
        });
        if once {
            let ok = h.join().unwrap_or(false);
            return Ok(Output { text: String::new(), failed: !ok });
        }
        workers.retain(|w: &std::thread::JoinHandle<bool>| !w.is_finished());
        workers.push(h);
    }
    Ok(Output::text(String::new()))
}

/// Runs the hidden `zap __receive-worker`: one session on stdin/stdout. Nothing of ours may go
/// to stdout (it is the stream): the outcome goes to stderr.
pub fn worker() -> Result<Output> {
    let init_exe = zap_engine::pod::default_init_exe().map_err(|e| CliError::Invalid(e.to_string()))?;
    let stream = transport::stdio().map_err(mig)?;
    match dest::receive(&zap_engine::pod::run_dir(), stream, &dest::ReceiveOptions { init_exe }) {
        Ok(r) => {
            eprintln!("zap receive: session {}: {} {}", r.session, r.pod, r.outcome);
            Ok(Output::text(String::new()))
        }
        Err(e) => Err(mig(e)),
    }
}

/// `zap key` commands.
#[derive(Subcommand)]
pub enum KeyCommand {
    /// Make this host's key pair (prints the public key).
    Gen {
        /// Replace an existing key.
        #[arg(long)]
        force: bool,
    },
    /// Print this host's public key.
    Show,
    /// Accept migrations from the host holding KEY (64 hex digits or a .pub file).
    Allow {
        /// The source's public key.
        key: String,
        /// A note kept with it (e.g. the host's name).
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Record KEY as the key of destination NAME (as given to `zap migrate`).
    Trust {
        /// The destination (`tcp://host:port`, `ssh://user@host`, `via:COMMAND`).
        name: String,
        /// Its public key.
        key: String,
    },
}

/// Runs `zap key`.
pub fn key(ctx: &Ctx, cmd: &KeyCommand) -> Result<Output> {
    let files = keys::KeyFiles::host();
    let (what, key) = match cmd {
        KeyCommand::Gen { force } => ("generated", files.generate(*force).map_err(mig)?),
        KeyCommand::Show => ("public", files.load().map_err(mig)?.public),
        KeyCommand::Allow { key, comment } => {
            let k = keys::parse_key_arg(key).map_err(mig)?;
            files.allow(k, comment).map_err(mig)?;
            ("allowed", k)
        }
        KeyCommand::Trust { name, key } => {
            let k = keys::parse_key_arg(key).map_err(mig)?;
            files.trust(name, k).map_err(mig)?;
            ("trusted", k)
        }
    };
    if ctx.json {
        return Output::json(&json!({ "key": key.to_string(), "action": what, "dir": files.dir() }));
    }
    Ok(Output::text(format!("{key}\n")))
}
