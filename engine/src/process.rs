//! Checkpoint and restore of one process and all its threads.
//!
//! ## Checkpoint
//! 1. Freeze: PTRACE_SEIZE + PTRACE_INTERRUPT of every thread ([`crate::freeze`]); no signal
//!    reaches the process.
//! 2. Save the mapping table, then the fds (pipe buffers are copied with `tee` from a
//!    `pidfd_getfd` duplicate, so nothing is consumed).
//! 3. Inject syscalls through a `syscall` instruction of the target's vDSO ([`crate::inject`]) to
//!    read what only the process itself can ask: through the main thread, the process-wide
//!    signal handlers, attributes, brk, interval timers and POSIX timers; through each thread in
//!    turn (an injector of its own), its tid address, alternate stack, robust list and
//!    attributes ([`crate::attrs`]). A SIGEV_THREAD_ID timer's thread is kept as the process
//!    sees it.
//! 4. Save each thread's registers (rewound if stopped in a syscall), XSAVE area, mask, queued
//!    signals, rseq registration, name and tid in the process's namespace ([`crate::cpu`]).
//! 5. Copy the pages to save out of the process ([`crate::mem::copy_pages`]). With
//!    `leave_running` this ends the stop: the process continues (its registers rewound so an
//!    interrupted syscall is made again) while its pages are chunked and stored.
//! 6. Chunk and store the copied pages and commit the manifest; the engine state
//!    ([`ProcessImage`]) rides in the manifest's state blob, versioned. Without
//!    `leave_running` the process is killed only after the commit, so a failure to store leaves
//!    it running and nothing visible in the store.
//!
//! ## Restore: ptrace-driven, no restorer blob
//! A new PID namespace is created; its init (ours) clones the target with the saved PID
//! (`clone3` + `set_tid`). The target maps a one-page trampoline (`syscall`) at an address the
//! saved layout leaves free and stops. From outside, through that trampoline, we unmap everything
//! else, map the vDSO and every saved mapping at its address, write the pages through
//! `/proc/PID/mem`, create the other threads with their saved tids ([`crate::threads`]; what they
//! inherit from the main thread, its loginuid and the seccomp filters they all have, is set
//! before), recreate the fds, handlers, attributes, mm boundaries, and in every thread its rseq
//! area, robust list, tid address, alternate stack, name, scheduling and credentials (in the
//! order of [`crate::attrs`]), queue the saved signals, re-arm the interval and POSIX timers,
//! unmap the trampoline, load every thread's registers, XSAVE area and mask, and detach them all
//! (a process saved in a job-control stop goes back into it: [`Frozen::detach_stopped`]). A ptrace
//! driver was chosen over a position-independent restorer blob: every step is a syscall whose
//! failure we see and report with its name, and nothing of ours is left in the process. The
//! restored process is a child of our init, not of `zap`, and does not depend on the original.
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use zap_chunker::ChunkerConfig;
use zap_store::{CheckpointId, CheckpointSummary, ImageStore, Manifest};

use crate::attrs::{self, ProcAttrs};
use crate::cpu::{rewind, Rewind, ThreadState};
use crate::files::{self, FdState};
use crate::freeze::Frozen;
use crate::inject::{find_syscall_insn, Injector};
use crate::mem::{self, VmaState};
use crate::signals::{self, SignalState};
use crate::threads;
use crate::sys::{clone as sysclone, regs};
use crate::{EngineError, Result};

/// Manifest kind of a process checkpoint.
pub const KIND: &str = "process";
/// Version of the [`ProcessImage`] encoding (first byte of the state blob). 11: POSIX message
/// queue fds (`FdKind::Mqueue`, appended: version 10 blobs still read). 12: what `SO_PEERCRED`
/// showed on each unix socket (`UnixSocket::peercred`), and timerfds armed with settime flags
/// (`FdKind::TimerfdAt`, appended); versions 10 and 11 read without either.
pub const IMAGE_VERSION: u8 = 12;
/// Highest user address on x86-64 with 4-level page tables.
const TASK_SIZE: u64 = 0x7fff_ffff_f000;
const MMAP_MIN: u64 = 0x10000;
/// Size of the injector's scratch area during a restore, placed where no saved mapping goes.
const SCRATCH: u64 = 64 << 10;

/// Everything about a process except its page contents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessImage {
    /// Host pid at checkpoint time.
    pub host_pid: i32,
    /// The pid the process saw itself as (innermost namespace).
    pub vpid: i32,
    /// Its threads, the main thread first.
    pub threads: Vec<ThreadState>,
    /// Attributes.
    pub attrs: ProcAttrs,
    /// Handlers and shared pending signals.
    pub signals: SignalState,
    /// Mapping table.
    pub vmas: Vec<VmaState>,
    /// Address-space modes for future mappings (`mlockall(MCL_FUTURE)`, KSM merge-any).
    pub mm: mem::MmModes,
    /// File descriptors.
    pub fds: Vec<FdState>,
    /// Armed interval timers: (ITIMER_*, raw `struct itimerval` with the time left). They run
    /// on from the time left when the process was saved.
    pub itimers: Vec<(i32, Vec<u8>)>,
    /// POSIX timers, with the time they had left.
    pub posix_timers: Vec<PosixTimer>,
}

impl ProcessImage {
    /// Encodes into a manifest state blob.
    pub fn encode(&self) -> Vec<u8> {
        crate::blob::encode(IMAGE_VERSION, self)
    }

    /// Decodes a manifest state blob.
    pub fn decode(blob: &[u8]) -> Result<Self> {
        crate::blob::decode_compatible(IMAGE_VERSION, &[10, 11], "process image", blob)
    }
}

/// How to checkpoint.
#[derive(Clone, Debug, Default)]
pub struct CheckpointOptions {
    /// Let the process run on afterwards (default: kill it).
    pub leave_running: bool,
    /// Checkpoint name (default: the process's comm).
    pub name: Option<String>,
    /// Parent checkpoint to record.
    pub parent: Option<CheckpointId>,
    /// Chunker settings.
    pub chunker: ChunkerConfig,
    /// Save established TCP connections as closed sockets instead of with their state.
    pub tcp_close: bool,
    /// With `leave_running`, the memory is copied while the process runs and it stops only for
    /// the pages written meanwhile ([`crate::precopy`]); this turns that off.
    pub no_precopy: bool,
}

/// The TCP connections (local, peer) of a saved process, to lock while it is restored.
pub(crate) fn saved_connections(image: &ProcessImage) -> Vec<(Vec<u8>, Vec<u8>)> {
    image
        .fds
        .iter()
        .filter_map(|f| match &f.kind {
            files::FdKind::Socket(crate::sockets::SocketState::TcpConn(c)) => Some((c.local.clone(), c.peer.clone())),
            _ => None,
        })
        .collect()
}

/// What a checkpoint did.
#[derive(Clone, Debug, Serialize)]
pub struct CheckpointReport {
    /// The committed checkpoint.
    pub summary: CheckpointSummary,
    /// How long the process was stopped, ms (metadata and copying its pages).
    pub frozen_ms: f64,
    /// Time to the committed checkpoint, ms.
    pub total_ms: f64,
    /// Bytes of memory read.
    pub bytes_read: u64,
    /// How the memory was saved: `full` (and why) or `incremental` (and with which tracker).
    pub mode: String,
}

pub(crate) fn vpid_of(pid: i32) -> Result<i32> {
    crate::cpu::vtid_of(pid, pid)
}

/// A POSIX timer (`timer_create`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixTimer {
    /// Its id in the process.
    pub id: i32,
    /// CLOCK_* id.
    pub clockid: i32,
    /// Signal sent on expiry.
    pub signo: i32,
    /// `sigev_value` passed with it.
    pub value: u64,
    /// SIGEV_* notification (SIGEV_THREAD_ID included).
    pub notify: i32,
    /// The thread signalled, for SIGEV_THREAD_ID (its tid in the process's namespace).
    pub tid: i32,
    /// Raw `struct itimerspec`: interval and time left.
    pub spec: Vec<u8>,
}

const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;

/// Reads the POSIX timers of `pid` from /proc/PID/timers and, through `inj`, their time left.
fn save_posix_timers(pid: i32, inj: &mut Injector) -> Result<Vec<PosixTimer>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/timers")).unwrap_or_default();
    let bad = |what: &str| EngineError::Proc { pid, detail: format!("unreadable POSIX timer {what} in /proc/{pid}/timers") };
    let mut out = Vec::new();
    let mut cur: Option<PosixTimer> = None;
    for line in text.lines() {
        let (k, v) = line.split_once(':').map(|(k, v)| (k.trim(), v.trim())).ok_or_else(|| bad("line"))?;
        match k {
            "ID" => {
                out.extend(cur.take());
                let id = v.parse().map_err(|_| bad("id"))?;
                cur = Some(PosixTimer { id, clockid: 0, signo: 0, value: 0, notify: 0, tid: 0, spec: Vec::new() });
            }
            "signal" => {
                let t = cur.as_mut().ok_or_else(|| bad("signal"))?;
                let (n, val) = v.split_once('/').ok_or_else(|| bad("signal"))?;
                t.signo = n.parse().map_err(|_| bad("signal"))?;
                t.value = u64::from_str_radix(val, 16).map_err(|_| bad("sigev_value"))?;
            }
            "notify" => {
                let t = cur.as_mut().ok_or_else(|| bad("notify"))?;
                let (kind, target) = v.split_once('/').ok_or_else(|| bad("notify"))?;
                t.notify = match kind {
                    "signal" => libc::SIGEV_SIGNAL,
                    "none" => libc::SIGEV_NONE,
                    "thread" => libc::SIGEV_THREAD,
                    _ => return Err(bad("notify kind")),
                };
                if let Some(tid) = target.strip_prefix("tid.") {
                    t.notify |= libc::SIGEV_THREAD_ID;
                    t.tid = tid.parse().map_err(|_| bad("tid"))?;
                }
            }
            "ClockID" => cur.as_mut().ok_or_else(|| bad("clock"))?.clockid = v.parse().map_err(|_| bad("clock"))?,
            _ => {}
        }
    }
    out.extend(cur);
    let scratch = inj.scratch(4096)?;
    for t in &mut out {
        inj.call("timer_gettime", libc::SYS_timer_gettime, [t.id as u64, scratch, 0, 0, 0, 0])?;
        t.spec = inj.read_mem(scratch, 32)?;
    }
    Ok(out)
}

/// Recreates POSIX timers with their ids (`PR_TIMER_CREATE_RESTORE_IDS`, Linux 6.16+) and sets
/// them to the time they had left.
fn restore_posix_timers(inj: &mut Injector, vpid: i32, timers: &[PosixTimer]) -> Result<()> {
    if timers.is_empty() {
        return Ok(());
    }
    inj.call("prctl(PR_TIMER_CREATE_RESTORE_IDS)", libc::SYS_prctl, [PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0, 0]).map_err(|e| {
        EngineError::Proc { pid: vpid, detail: format!("restoring POSIX timers needs Linux 6.16+ (PR_TIMER_CREATE_RESTORE_IDS): {e}") }
    })?;
    let scratch = inj.scratch(4096)?;
    for t in timers {
        // struct sigevent (64 bytes): sigev_value, sigev_signo, sigev_notify, then the tid.
        let mut ev = vec![0u8; 64];
        ev[0..8].copy_from_slice(&t.value.to_ne_bytes());
        ev[8..12].copy_from_slice(&t.signo.to_ne_bytes());
        ev[12..16].copy_from_slice(&t.notify.to_ne_bytes());
        ev[16..20].copy_from_slice(&t.tid.to_ne_bytes());
        inj.write_mem(scratch, &ev)?;
        inj.write_mem(scratch + 64, &t.id.to_ne_bytes())?;
        inj.call("timer_create", libc::SYS_timer_create, [t.clockid as u64, scratch, scratch + 64, 0, 0, 0])?;
        let got = i32::from_ne_bytes(inj.read_mem(scratch + 64, 4)?.try_into().expect("4"));
        if got != t.id {
            return Err(EngineError::Proc { pid: vpid, detail: format!("POSIX timer {} came back as {got}", t.id) });
        }
        inj.write_mem(scratch + 128, &t.spec)?;
        inj.call("timer_settime", libc::SYS_timer_settime, [t.id as u64, 0, scratch + 128, 0, 0, 0])?;
    }
    inj.call("prctl(PR_TIMER_CREATE_RESTORE_IDS off)", libc::SYS_prctl, [PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0, 0])?;
    Ok(())
}

/// Reads the armed interval timers (`alarm`, `setitimer`): (which, raw `struct itimerval`).
fn save_itimers(inj: &mut Injector) -> Result<Vec<(i32, Vec<u8>)>> {
    let scratch = inj.scratch(4096)?;
    let mut out = Vec::new();
    for which in [libc::ITIMER_REAL, libc::ITIMER_VIRTUAL, libc::ITIMER_PROF] {
        inj.call("getitimer", libc::SYS_getitimer, [which as u64, scratch, 0, 0, 0, 0])?;
        let v = inj.read_mem(scratch, 32)?;
        if v.iter().any(|&b| b != 0) {
            out.push((which, v));
        }
    }
    Ok(out)
}

/// Saves the state of one thread through an injector of its own (per-thread values such as the
/// tid address need a syscall in that very thread), then puts its registers back, rewound so an
/// interrupted syscall is made again when it runs on. `process_wide` reads what is saved once,
/// through the main thread.
fn save_thread<T>(
    pid: i32,
    tid: i32,
    syscall_ip: u64,
    process_wide: impl FnOnce(&mut Injector) -> Result<T>,
) -> Result<(ThreadState, T)> {
    let mut inj = Injector::new(pid, tid, syscall_ip)?;
    let saved = (|| {
        let extra = process_wide(&mut inj)?;
        let thread = ThreadState::save(pid, tid, &mut inj)?;
        Ok::<_, EngineError>((thread, extra))
    })();
    let running_regs = rewind(*inj.saved_regs(), Rewind::SameProcess);
    inj.set_saved_regs(running_regs);
    inj.finish()?;
    saved
}

/// Saves everything about the stopped process `pid` (every thread held by `frozen`) and copies
/// its pages out. The process stays stopped; the caller stores the pages and decides whether it
/// runs on. `files` says which fds may be shared with other processes being saved with it;
/// `plan`, what the page copy knows besides (what a tracker reported since the parent
/// checkpoint, the parent process whose pages it may share: see [`mem::copy_pages_since`]);
/// `layout`, its mapping table if the caller read it already.
pub fn save_process(
    pid: i32,
    frozen: &Frozen,
    files_ctx: &mut files::SaveContext,
    plan: &mem::CopyPlan<'_>,
    layout: Option<Vec<VmaState>>,
) -> Result<(ProcessImage, mem::PageCopy)> {
    save_process_pages(pid, frozen, files_ctx, plan, layout, false)
}

/// [`save_process`], with `stream`: the pages are not copied out but only planned
/// ([`mem::plan_pages_since`]), for the dump pipeline to read while it stores them; the process
/// (and the parent process of `plan`) must then stay stopped until they are stored.
pub fn save_process_pages(
    pid: i32,
    frozen: &Frozen,
    files_ctx: &mut files::SaveContext,
    plan: &mem::CopyPlan<'_>,
    layout: Option<Vec<VmaState>>,
    stream: bool,
) -> Result<(ProcessImage, mem::PageCopy)> {
    let vpid = vpid_of(pid)?;
    if !frozen.threads().contains(&pid) {
        return Err(EngineError::Proc { pid, detail: "its main thread has exited; not supported".into() });
    }
    let mut vmas = match layout {
        Some(v) => v,
        None => mem::save_layout(pid)?,
    };
    let fds = files::save(pid, vpid, files_ctx)?;
    let syscall_ip = find_syscall_insn(pid)?;
    // The main thread first: process-wide state is read through it.
    let (main, (attrs, signals, (itimers, mut posix_timers), mm)) = save_thread(pid, pid, syscall_ip, |inj| {
        mem::aio::check(pid, inj, &mut vmas)?;
        let mm = mem::MmModes::save(pid, inj, &vmas)?;
        let itimers = save_itimers(inj)?;
        let timers = save_posix_timers(pid, inj)?;
        let attrs = ProcAttrs::save(pid, inj, frozen.stop_signal())?;
        let sigs = SignalState::save(inj, pid)?;
        Ok((attrs, sigs, (itimers, timers), mm))
    })?;
    let mut threads = vec![main];
    for &tid in frozen.threads().iter().filter(|&&t| t != pid) {
        threads.push(save_thread(pid, tid, syscall_ip, |_| Ok(()))?.0);
    }
    // /proc/PID/timers names the thread a SIGEV_THREAD_ID timer signals by its id in our PID
    // namespace; the restored timer needs its id in the process's.
    for t in posix_timers.iter_mut().filter(|t| t.notify & libc::SIGEV_THREAD_ID != 0) {
        t.tid = threads.iter().find(|th| th.tid == t.tid).map(|th| th.vtid).ok_or_else(|| EngineError::Proc {
            pid,
            detail: format!("POSIX timer {} signals thread {}, which is not one of its threads", t.id, t.tid),
        })?;
    }
    // Copy the pages out; after this the process no longer needs to be stopped.
    let t = Instant::now();
    let copy = if stream { mem::plan_pages_since(pid, &mut vmas, plan)? } else { mem::copy_pages_since(pid, &mut vmas, plan)? };
    tracing::trace!(pid, copy_ms = t.elapsed().as_secs_f64() * 1e3, "pages copied");
    Ok((ProcessImage { host_pid: pid, vpid, threads, attrs, signals, vmas, mm, fds, itimers, posix_timers }, copy))
}

/// The socket inodes process `pid` holds.
fn socket_inodes(pid: i32) -> std::collections::HashSet<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Default::default() };
    dir.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| l.to_str().and_then(|t| t.strip_prefix("socket:[")).and_then(|t| t.strip_suffix(']')).and_then(|i| i.parse().ok()))
        .collect()
}

/// The TCP listeners of process `pid` (address, port).
fn listeners_of(pid: i32) -> Vec<(std::net::IpAddr, u16)> {
    crate::pod::checkpoint::proc_tcp_listeners(pid, Some(&socket_inodes(pid))).into_iter().map(|l| (l.addr, l.port)).collect()
}

/// Stops processes with `freeze` (which returns the stopped value and the live pids; both are
/// returned, with the lock) and locks
/// their connections (and, for their listeners, new connection requests:
/// [`crate::pod::netlock::NetLock::connections_and_listeners`]; the table is named after `tag`).
/// If their listeners hold connections not accepted yet (they cannot be put back in a backlog),
/// lets them run a moment to accept them, up to twice [`crate::pod::checkpoint::DRAIN_ROUNDS`]
/// times, and locks the connections accepted too (a checkpoint that still finds some refuses
/// them, naming the listener).
pub(crate) fn freeze_locked<F>(
    tag: i32,
    tcp_close: bool,
    mut freeze: impl FnMut() -> Result<(F, Vec<i32>)>,
) -> Result<(F, Vec<i32>, Option<crate::pod::netlock::NetLock>)> {
    let lock = |live: &[i32]| -> Result<Option<crate::pod::netlock::NetLock>> {
        if tcp_close || live.is_empty() {
            return Ok(None);
        }
        let conns = crate::sockets::tcp_connections(live)?;
        let listeners: Vec<_> = live.iter().flat_map(|&p| listeners_of(p)).collect();
        if conns.is_empty() && listeners.is_empty() {
            return Ok(None);
        }
        crate::pod::netlock::NetLock::connections_and_listeners(live[0], tag, &conns, &listeners).map(Some)
    };
    let (mut frozen, mut live) = freeze()?;
    let mut netlock = lock(&live)?;
    // Processes share their namespace with others, and connections half-open when the lock came
    // still complete: more rounds than a pod's, still bounded (at most 180 ms of running).
    for round in 1..=2 * crate::pod::checkpoint::DRAIN_ROUNDS {
        let waiting: u64 =
            if netlock.is_some() { live.iter().map(|&p| crate::pod::checkpoint::listeners_waiting_in(p, Some(&socket_inodes(p)))).sum() } else { 0 };
        if waiting == 0 {
            break;
        }
        tracing::debug!(tag, waiting, round, "connections waiting in listen backlogs: letting the processes accept them");
        drop(frozen);
        std::thread::sleep(Duration::from_millis(5 * u64::from(round)));
        (frozen, live) = freeze()?;
        // The same table, now with the connections just accepted (replaced in one transaction).
        let relocked = lock(&live)?;
        if let Some(old) = netlock.take() {
            old.keep();
        }
        netlock = relocked;
    }
    Ok((frozen, live, netlock))
}

/// Before stopped processes `live` are ended: their connections stay locked until restored
/// (the restore replaces the table `lock` holds, named after `tag`), but not their listeners: a
/// peer trying to connect while they are gone is refused, as by any closed port. Returns the lock
/// to keep.
pub(crate) fn keep_connections_locked(lock: Option<crate::pod::netlock::NetLock>, live: &[i32], tag: i32) -> Result<Option<crate::pod::netlock::NetLock>> {
    let Some(l) = lock else { return Ok(None) };
    let conns = crate::sockets::tcp_connections(live)?;
    if conns.is_empty() {
        l.unlock()?;
        return Ok(None);
    }
    let only_conns = crate::pod::netlock::NetLock::connections(live[0], tag, &conns)?;
    l.keep();
    Ok(Some(only_conns))
}

/// Checkpoints process `pid` into `store`.
pub fn checkpoint<S: ImageStore>(store: &S, pid: i32, opts: &CheckpointOptions) -> Result<CheckpointReport> {
    let t0 = Instant::now();
    let mut writer = store.writer()?;
    // A process that runs on has its memory copied while it runs first.
    let mut pre = if opts.leave_running && !opts.no_precopy { crate::precopy::run(pid, false, &mut writer, &opts.chunker) } else { None };
    let tf = Instant::now();
    let (frozen, _, netlock) = freeze_locked(pid, opts.tcp_close, || Ok((Frozen::freeze(pid)?, vec![pid])))?;
    let mut ctx = files::SaveContext::default();
    ctx.sockets.tcp_close = opts.tcp_close;
    ctx.sockets.network_locked = true;
    // A process that stays stopped until the commit has its pages read while they are stored.
    let stream = !opts.leave_running;
    // Pre-copied: only the pages written since the last round are read now.
    let (written, layout) = match pre.as_mut().and_then(|p| p.armed.get_mut(&pid)) {
        Some(armed) => {
            let vmas = mem::save_layout(pid)?;
            match crate::dirty::collect(armed, &vmas) {
                Ok(d) => (Some(d), Some(vmas)),
                Err(e) => {
                    tracing::warn!(pid, error = %e, "pre-copy tracking lost; the memory is read whole");
                    pre = None;
                    (None, Some(vmas))
                }
            }
        }
        None => {
            pre = None;
            (None, None)
        }
    };
    let base = pre.as_ref().map(|p| mem::base_runs(&p.images, ""));
    let plan = mem::CopyPlan { dirty: written.as_ref(), base: base.as_deref(), ..Default::default() };
    let (mut image, copy) = save_process_pages(pid, &frozen, &mut ctx, &plan, layout, stream)?;
    mem::refuse_sysv_outside_pod(pid, &image.vmas)?;
    let stopped_bytes = copy.bytes;
    let bytes_read = copy.bytes + pre.as_ref().map_or(0, |p| p.bytes_read);
    // With leave_running the process goes on now. Otherwise it stays stopped until the
    // checkpoint is committed, so that a failure to store leaves it running rather than lost.
    let (frozen, netlock) = if opts.leave_running {
        drop(frozen);
        if let Some(l) = netlock {
            l.unlock()?;
        }
        (None, None)
    } else {
        (Some(frozen), netlock)
    };
    let copied_ms = tf.elapsed().as_secs_f64() * 1e3;
    let (mut images, _) = mem::store_pages(copy, &mut image.vmas, &mut writer, &opts.chunker, "", pre.as_ref().map(|p| p.images.as_slice()))?;
    images.extend(files::store_contents(&mut image.fds, &mut image.vmas, &mut writer, &opts.chunker, "")?);
    let stored_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut manifest = Manifest::new(opts.name.clone().unwrap_or_else(|| image.attrs.comm.clone()), KIND);
    manifest.parent = opts.parent;
    manifest.labels.insert("pid".into(), pid.to_string());
    manifest.labels.insert("vpid".into(), image.vpid.to_string());
    manifest.images = images;
    manifest.state = image.encode();
    let summary = zap_store::ChunkSink::commit(writer, manifest)?;
    let total_ms = t0.elapsed().as_secs_f64() * 1e3;
    tracing::debug!(pid, copied_ms, stored_ms, total_ms, bytes_read, "process checkpoint committed");
    if let Some(frozen) = frozen {
        // Closing the connections must send nothing; they stay locked until restored.
        crate::sockets::silence_tcp(&[pid])?;
        let netlock = keep_connections_locked(netlock, &[pid], pid)?;
        frozen.kill()?;
        if let Some(l) = netlock {
            l.keep();
        }
    }
    let frozen_ms = if opts.leave_running { copied_ms } else { total_ms };
    let mode = match &pre {
        Some(p) => format!("full; {}", p.describe(stopped_bytes)),
        None => "full".into(),
    };
    Ok(CheckpointReport { summary, frozen_ms, total_ms, bytes_read, mode })
}

/// A restored process.
#[derive(Clone, Debug, Serialize)]
pub struct Restored {
    /// Its pid on the host.
    pub pid: i32,
    /// The pid it sees itself as.
    pub vpid: i32,
    /// Host pid of the namespace's init (our reaper), the restored process's parent.
    pub init_pid: i32,
    /// What the kernel refused to restore (e.g. raising a hard rlimit).
    pub warnings: Vec<String>,
    /// Time from start to the process running, ms.
    pub restore_ms: f64,
}

impl Restored {
    /// Kills the restored process and its namespace init, and reaps the init (a child of the
    /// caller). For tests and benchmarks that restore a process they then end.
    pub fn kill_and_reap(&self) {
        let _ = sysclone::kill(self.pid, libc::SIGKILL);
        sysclone::kill_and_reap(self.init_pid);
    }
}

/// A free page-aligned address in the saved layout for the trampoline.
pub fn trampoline_addr(vmas: &[VmaState]) -> u64 {
    let mut candidate = MMAP_MIN;
    for v in vmas {
        if v.start >= candidate + 4096 {
            break;
        }
        candidate = candidate.max(v.end);
    }
    candidate
}

fn find_child(init: i32, timeout: Duration) -> Result<i32> {
    let path = format!("/proc/{init}/task/{init}/children");
    let start = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(&path) {
            if let Some(pid) = s.split_whitespace().next().and_then(|p| p.parse().ok()) {
                return Ok(pid);
            }
        }
        if let Some(status) = sysclone::try_reap(init) {
            let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
            let detail = match code {
                sysclone::INIT_EXIT_CLONE_FAILED => "could not create the process with its saved pid (clone3 set_tid)".to_string(),
                other => format!("namespace init exited with status {other} before the process started"),
            };
            return Err(EngineError::Proc { pid: init, detail });
        }
        if start.elapsed() > timeout {
            return Err(EngineError::Proc { pid: init, detail: "restored process did not appear".into() });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until the target has mapped its trampoline and sleeps in `pause`.
pub(crate) fn wait_ready(pid: i32, tramp: u64, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let mapped = crate::maps::read_maps(pid).map(|m| m.iter().any(|v| v.start == tramp)).unwrap_or(false);
        let syscall = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        let in_pause = syscall.split_whitespace().next() == Some(&libc::SYS_pause.to_string());
        match stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()) {
            Some("S") if in_pause && mapped => return Ok(()),
            Some("Z") | None => {
                let detail = if sysclone::try_reap(pid).is_some() || stat.is_empty() {
                    "restore target died before it was taken over (trampoline address taken?)"
                } else {
                    "restore target died before it was taken over"
                };
                return Err(EngineError::Proc { pid, detail: detail.into() })
            }
            _ => {}
        }
        if start.elapsed() > timeout {
            return Err(EngineError::Proc { pid, detail: "restore target did not become ready".into() });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Restores checkpoint `id` as a new process in a new PID namespace, with its saved pid.
pub fn restore<S: ImageStore>(store: &S, id: &CheckpointId) -> Result<Restored> {
    let t0 = Instant::now();
    let (manifest, image) = read_image(store, id, &|kind| format!("checkpoint {id} is a {kind:?} checkpoint, not a process"))?;
    let tramp = trampoline_addr(&image.vmas);
    let netlock = lock_saved_connections(&image)?;
    let init = sysclone::spawn_pidns_target(image.vpid, tramp)
        .map_err(|source| EngineError::Sys { step: "create pid namespace", pid: image.vpid, source })?;
    let (restored, ()) = restore_target(&image, tramp, init, netlock, t0, |pid, frozen| {
        let mut r = ProcRestore::begin(&image, pid, tramp)?;
        r.memory(store, &manifest.images, &mut mem::ShmContext::default(), None)?;
        Ok((r.finish_alone(frozen)?, ()))
    })?;
    Ok(restored)
}

/// Reads checkpoint `id` of `store` and its process image; `wrong_kind` words the error for a
/// checkpoint of another kind.
fn read_image<S: ImageStore>(store: &S, id: &CheckpointId, wrong_kind: &dyn Fn(&str) -> String) -> Result<(Manifest, ProcessImage)> {
    let t0 = Instant::now();
    let manifest = store.manifest(id)?;
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "manifest read");
    if manifest.kind != KIND {
        return Err(zap_store::StoreError::Invalid(wrong_kind(&manifest.kind)).into());
    }
    let image = ProcessImage::decode(&manifest.state)?;
    if image.vpid == 1 {
        return Err(EngineError::Proc { pid: image.vpid, detail: "restoring a namespace init (pid 1) is not supported yet".into() });
    }
    Ok((manifest, image))
}

/// Locks the saved connections of `image`: the process shares Zap's network namespace, so they
/// are locked one by one, under the table its checkpoint left (named after its pid).
fn lock_saved_connections(image: &ProcessImage) -> Result<Option<crate::pod::netlock::NetLock>> {
    let conns = saved_connections(image);
    if conns.is_empty() {
        return Ok(None);
    }
    crate::pod::netlock::NetLock::connections(std::process::id() as i32, image.host_pid, &conns).map(Some)
}

/// Restores `image` into the process that namespace init `init` creates: `steps` fills it while
/// it is stopped (memory, then the rest; returns the warnings and a value of its own). On
/// failure the half-restored process is killed while still traced and the namespace goes with
/// its init; on success the process runs (or goes back into the job-control stop it was saved
/// in) and its connections are unlocked.
fn restore_target<T>(
    image: &ProcessImage,
    tramp: u64,
    init: i32,
    netlock: Option<crate::pod::netlock::NetLock>,
    t0: Instant,
    steps: impl FnOnce(i32, &mut Frozen) -> Result<(Vec<String>, T)>,
) -> Result<(Restored, T)> {
    let result = (|| {
        let pid = find_child(init, Duration::from_secs(5))?;
        wait_ready(pid, tramp, Duration::from_secs(5))?;
        tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "target ready");
        let mut frozen = Frozen::freeze(pid)?;
        let (warnings, value) = match steps(pid, &mut frozen) {
            Ok(done) => done,
            Err(e) => {
                // Killed while still traced: a thread detached half-restored would run whatever
                // its registers held and could take the others down while we detach them,
                // leaving traced zombies that keep the namespace (and its init) from ending.
                if let Err(kill) = frozen.kill() {
                    tracing::warn!(pid, error = %kill, "could not kill the half-restored process");
                }
                return Err(e);
            }
        };
        match image.attrs.stop {
            Some(stop) => frozen.detach_stopped(stop.signal)?,
            None => drop(frozen),
        }
        if let Some(l) = netlock {
            l.unlock()?;
        }
        Ok((Restored { pid, vpid: image.vpid, init_pid: init, warnings, restore_ms: t0.elapsed().as_secs_f64() * 1e3 }, value))
    })();
    if result.is_err() {
        // Nothing half-restored stays behind: the init's death takes the target with it.
        sysclone::kill_and_reap(init);
    }
    result
}

/// Restores checkpoint `id` like [`restore`], lazily: the process runs as soon as everything
/// but the pages of its private anonymous memory is in place; a pager thread started here
/// fills those while it runs ([`crate::lazy`]). The calling thread must live until the
/// returned handle's [`crate::lazy::PagerHandle::wait`] returns: the restored namespace dies
/// with it before. The pager keeps `store` only until it has opened the packs it needs.
pub fn restore_lazy(store: std::sync::Arc<zap_store::LocalStore>, id: &CheckpointId) -> Result<(Restored, crate::lazy::PagerHandle)> {
    let t0 = Instant::now();
    // The manifest without its extent trees; those of the memory the pager fills are read by a
    // thread of their own while the process is laid out (the pager waits for them before it
    // serves a page), the others now.
    let (mut manifest, mut deferred) = store.manifest_deferred(id)?;
    if manifest.kind != KIND {
        return Err(zap_store::StoreError::Invalid(format!(
            "checkpoint {id} is a {} checkpoint, not a process (a tree or a pod is restored lazily by group::restore_lazy or pod::checkpoint::restore_lazy)",
            manifest.kind
        ))
        .into());
    }
    let image = ProcessImage::decode(&manifest.state)?;
    if image.vpid == 1 {
        return Err(EngineError::Proc { pid: image.vpid, detail: "restoring a namespace init (pid 1) is not supported yet".into() });
    }
    // Refused before anything is made.
    lazy_unsupported(&image)?;
    // Every mapping the pager may fill is wholly lazy here (no parent to inherit from, no child
    // to share with: see memory_lazy), so its image's extents are the pager's alone.
    let paged: std::collections::HashSet<String> = image.vmas.iter().filter(|v| lazy_servable(v)).filter_map(|v| v.image.clone()).collect();
    for (i, extents) in store.read_deferred(&mut deferred, &|name| !paged.contains(name))? {
        manifest.images[i].extents = extents;
    }
    let later = (!deferred.is_empty()).then(|| {
        let (store, names) = (store.clone(), manifest.images.iter().map(|i| i.name.clone()).collect::<Vec<_>>());
        std::thread::Builder::new()
            .name("zap-manifest".into())
            .spawn(move || {
                let t = Instant::now();
                let read = store.read_deferred(&mut deferred, &|_| true)?;
                tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, "lazy restore: the pager's extents read");
                Ok(read.into_iter().map(|(i, extents)| (names[i].clone(), extents)).collect())
            })
            .map_err(|e| EngineError::Proc { pid: image.vpid, detail: format!("lazy restore: start the thread reading the manifest's trees: {e}") })
    });
    let later = later.transpose()?;
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "manifest read (the pager's extents still being read)");
    let tramp = trampoline_addr(&image.vmas);
    let netlock = lock_saved_connections(&image)?;
    let (guard_read, guard_write) = sysclone::guard_pair().map_err(|source| EngineError::Sys { step: "create the guard sockets", pid: image.vpid, source })?;
    use std::os::fd::AsRawFd;
    let init = sysclone::spawn_pidns_target_guarded(image.vpid, tramp, guard_read.as_raw_fd())
        .map_err(|source| EngineError::Sys { step: "create pid namespace", pid: image.vpid, source })?;
    drop(guard_read);
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "namespace init created");
    let (restored, pager) = restore_target(&image, tramp, init, netlock, t0, |pid, frozen| {
        let mut r = ProcRestore::begin(&image, pid, tramp)?;
        tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "target taken over");
        let (uffd, ranges) = r.memory_lazy(&*store, &manifest.images, &mut mem::ShmContext::default())?;
        tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "lazy memory registered");
        let mut pager = crate::lazy::Pager::new(uffd, ranges, store.clone(), init, Some(guard_write))?;
        if let Some(thread) = later {
            pager.extents_later(thread);
        }
        let pager = crate::lazy::PagerHandle::start(pager);
        let warnings = r.finish_alone(frozen)?;
        tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "threads, fds and registers restored");
        Ok((warnings, pager))
    })?;
    pager.running();
    Ok((restored, pager))
}

/// Fails, naming the mapping and why, when `image` holds memory a lazy restore cannot serve: a
/// mapping that inherits pages from its parent process ([`mem::cow`]: the pages are not in the
/// image, and a lazy restore has no restored parent to take them from).
pub fn lazy_unsupported(image: &ProcessImage) -> Result<()> {
    match image.vmas.iter().find(|v| !v.inherited.is_empty()) {
        Some(v) => Err(EngineError::Proc {
            pid: image.vpid,
            detail: format!(
                "lazy restore: mapping {:#x}-{:#x} ({}) inherits pages from its parent process, which a lazy restore of one process cannot serve; restore it without --lazy",
                v.start, v.end, v.name
            ),
        }),
        None => Ok(()),
    }
}

/// The parts of `extents` (sorted) inside `[a, b)`, cut at its bounds.
fn clip_extents(extents: &[zap_store::Extent], a: u64, b: u64) -> Vec<zap_store::Extent> {
    crate::lazy::clip(extents, a, b)
}

/// True when the pager may fill mapping `v` (see [`ProcRestore::memory_lazy`]): private
/// anonymous memory of normal pages, with no guard pages, not locked, not sealed (the runs it
/// inherited from its parent excepted: they are there already).
fn lazy_servable(v: &VmaState) -> bool {
    v.backing == mem::Backing::Anon
        && !v.shared
        && v.huge == 0
        && v.guards.is_empty()
        && !v.flags.has(mem::VmFlags::LOCKED)
        && !v.flags.has(mem::VmFlags::SEALED)
}

/// The restore of one process, step by step. The process is a bare clone that holds only the
/// trampoline page and is stopped under ptrace; the caller calls, in order, [`ProcRestore::begin`],
/// [`ProcRestore::memory`], [`ProcRestore::memory_late`], [`ProcRestore::threads`],
/// [`ProcRestore::files`] and [`ProcRestore::finish`]. A pod restore interleaves these steps
/// across its processes (memory parents first, each parent's before it makes the children that
/// inherit pages from it, then fds in tree order so shared fds can be taken from the process that
/// created them). Should a step fail, end the process with [`Frozen::kill`] rather than by
/// detaching it.
pub struct ProcRestore<'a> {
    image: &'a ProcessImage,
    pid: i32,
    tramp: u64,
    inj: Injector,
    /// The extra threads created by [`ProcRestore::threads`]: host tid and an injector driving
    /// it, in the order of `image.threads[1..]`.
    extra: Vec<(i32, Injector)>,
    /// The image with its deleted files' contents loaded, when it has any.
    loaded: Option<Box<ProcessImage>>,
    /// How many seccomp filters every thread has and the main thread installed before the
    /// others were cloned (None: not yet).
    shared_filters: Option<usize>,
    /// What the kernel refused so far.
    warnings: Vec<String>,
}

impl<'a> ProcRestore<'a> {
    /// Takes over the bare process `pid` (host pid, stopped under ptrace): blocks signals, closes
    /// inherited fds and clears its address space down to the trampoline at `tramp` and the
    /// ranges it keeps of its parent's memory ([`mem::cow::keep_ranges`]: for a child made by a
    /// restored parent, its mappings that inherit pages).
    pub fn begin(image: &'a ProcessImage, pid: i32, tramp: u64) -> Result<Self> {
        Ok(Self::adopt(image, pid, tramp, Self::take_over(pid, tramp, &mem::cow::keep_ranges(&image.vmas))?))
    }

    /// The first half of [`ProcRestore::begin`], which needs no image: takes over the bare
    /// process `pid`, clears its address space but for the trampoline and the ranges `keep`
    /// (sorted), and returns the injector driving it. A migration's destination does this long
    /// before the image is known (keeping nothing), and fills the memory in while the source
    /// still runs.
    pub fn take_over(pid: i32, tramp: u64, keep: &[(u64, u64)]) -> Result<Injector> {
        let sys_err = |step: &'static str| move |source| EngineError::Sys { step, pid, source };
        let mut inj = Injector::new(pid, pid, tramp)?;
        // Block every signal while we work; the saved mask is loaded at the end.
        regs::set_sigmask(pid, !0u64).map_err(sys_err("block signals"))?;
        inj.call("alarm(0)", libc::SYS_alarm, [0; 6])?;
        inj.call("close_range", libc::SYS_close_range, [0, u64::from(u32::MAX), 0, 0, 0, 0])?;
        // Unregister the rseq area inherited from our init, then clear the address space.
        let inherited = regs::get_rseq(pid).map_err(sys_err("read rseq"))?;
        if inherited.rseq_abi_pointer != 0 {
            const RSEQ_FLAG_UNREGISTER: u64 = 1;
            inj.call(
                "rseq unregister",
                libc::SYS_rseq,
                [inherited.rseq_abi_pointer, u64::from(inherited.rseq_abi_size), RSEQ_FLAG_UNREGISTER, u64::from(inherited.signature), 0, 0],
            )?;
        }
        let mut keep = keep.to_vec();
        keep.push((tramp, tramp + 4096));
        keep.sort_unstable();
        for (a, b) in mem::cow::outside(&keep, 0, TASK_SIZE) {
            inj.call("munmap all but the trampoline and inherited memory", libc::SYS_munmap, [a, b - a, 0, 0, 0, 0])?;
        }
        Ok(inj)
    }

    /// The second half of [`ProcRestore::begin`]: the restore of `image` into the process `pid`
    /// taken over with [`ProcRestore::take_over`] (whose memory may already be in place).
    pub fn adopt(image: &'a ProcessImage, pid: i32, tramp: u64, inj: Injector) -> Self {
        ProcRestore { image, pid, tramp, inj, extra: Vec::new(), loaded: None, shared_filters: None, warnings: Vec::new() }
    }

    /// Host pid of the process.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The image being restored.
    pub fn image(&self) -> &ProcessImage {
        self.image
    }

    /// The injector driving the process (for steps of the caller's own, e.g. creating children).
    pub fn injector(&mut self) -> &mut Injector {
        &mut self.inj
    }

    /// Recreates the mappings and writes the saved pages (`images` of the manifest); `shm` shares
    /// shared anonymous memory with processes restored before this one; `parent` is the image of
    /// the restored parent this process was copied from after the parent's memory was restored
    /// (it then inherits the pages it shared with it, [`mem::cow`]). Flags that change what
    /// `fork` copies, and seals, wait for [`ProcRestore::memory_late`].
    pub fn memory<S: ImageStore>(
        &mut self,
        store: &S,
        images: &[zap_store::Image],
        shm: &mut mem::ShmContext,
        parent: Option<&ProcessImage>,
    ) -> Result<()> {
        // Deleted files' contents come back from the store into a copy of the image.
        self.load_contents(store, images)?;
        let image = self.loaded.as_deref().unwrap_or(self.image);
        let (vpid, vmas) = (image.vpid, &image.vmas);
        let t = Instant::now();
        self.inj.scratch_at(mem::scratch_place(vmas, self.tramp, SCRATCH), SCRATCH)?;
        image.mm.restore_merge(&mut self.inj, vpid, parent.map(|p| &p.mm))?;
        let parent_vmas = parent.map(|p| p.vmas.as_slice());
        let write = mem::restore_layout(&mut self.inj, vpid, vmas, shm, parent_vmas)?;
        mem::cow::clear_kept(&mut self.inj, vpid, vmas, parent_vmas)?;
        let layout_ms = t.elapsed().as_secs_f64() * 1e3;
        let bytes = mem::restore_pages(store, &self.inj, vmas, &write, images)?;
        let pages_ms = t.elapsed().as_secs_f64() * 1e3 - layout_ms;
        mem::restore_after_pages(store, &mut self.inj, vpid, vmas, images, &image.mm)?;
        tracing::debug!(vpid, mappings = vmas.len(), layout_ms, pages_ms, bytes, ms = t.elapsed().as_secs_f64() * 1e3, "memory restored");
        Ok(())
    }

    /// Reads the contents of the image's deleted files back from the store, when it has any,
    /// into a copy of the image kept for [`ProcRestore::files`].
    fn load_contents<S: ImageStore>(&mut self, store: &S, images: &[zap_store::Image]) -> Result<()> {
        let has = |img: &ProcessImage| {
            img.fds.iter().any(|f| matches!(f.kind, files::FdKind::Deleted { contents: Some(_), .. }))
                || img.vmas.iter().any(|v| matches!(v.backing, mem::Backing::Deleted { contents: Some(_), .. }))
        };
        if self.loaded.is_none() && has(self.image) {
            let mut copy = self.image.clone();
            files::load_contents(store, images, &mut copy.fds, &mut copy.vmas)?;
            self.loaded = Some(Box::new(copy));
        }
        Ok(())
    }

    /// The rest of the memory of a process whose mappings and pages are in place already (a
    /// migration's prepared process, [`crate::migrate`]): deleted files' contents (read from
    /// `store`), the scratch area away from every mapping, merge modes, what is set after the
    /// pages (AIO rings, guard pages, locks) and, last, what changes what `fork` copies.
    pub fn memory_in_place<S: ImageStore>(&mut self, store: &S, images: &[zap_store::Image]) -> Result<()> {
        self.load_contents(store, images)?;
        let image = self.loaded.as_deref().unwrap_or(self.image);
        let vpid = image.vpid;
        self.inj.scratch_at(mem::scratch_place(&image.vmas, self.tramp, SCRATCH), SCRATCH)?;
        image.mm.restore_merge(&mut self.inj, vpid, None)?;
        mem::restore_after_pages(store, &mut self.inj, vpid, &image.vmas, images, &image.mm)?;
        self.memory_late()
    }

    /// Everything after the memory for a process restored on its own (not in a group): the late
    /// memory flags, threads, fds (a single process's unix messages and pipe keepers), then
    /// attributes and CPU state. Returns the restore's warnings.
    pub fn finish_alone(mut self, frozen: &mut Frozen) -> Result<Vec<String>> {
        let vpid = self.image.vpid;
        self.memory_late()?;
        self.threads(frozen)?;
        let mut ctx = files::RestoreContext::new(std::process::id());
        self.files(&mut ctx)?;
        crate::sockets::finish(&mut [(vpid, self.injector())], &mut ctx)?;
        self.close_fds(&ctx.keepers(vpid))?;
        self.finish()
    }

    /// The last of the memory: `MADV_DONTFORK`, `MADV_WIPEONFORK` and seals, once the process
    /// has made the children that inherit its memory.
    pub fn memory_late(&mut self) -> Result<()> {
        mem::restore_late(&mut self.inj, self.image.vpid, &self.image.vmas)
    }

    /// Like [`ProcRestore::memory`] (for a process without a restored parent), but the pages of
    /// plain private anonymous mappings are not written: those mappings are registered with a
    /// userfaultfd created in the process (missing mode), returned with what they must hold, for
    /// a [`crate::lazy::Pager`] to fill while the process runs. Mappings a pager cannot fill
    /// safely are written now, as [`ProcRestore::memory`] does: hugetlb ones (served a huge page
    /// at a time), those with guard pages (installed after their pages), locked ones (`mlock`
    /// would fault every page in while the process is held) and sealed ones. A mapping that
    /// inherits pages from a parent process is refused ([`lazy_unsupported`]). Start the pager
    /// before anything else touches the process's memory.
    pub fn memory_lazy<S: ImageStore>(
        &mut self,
        store: &S,
        images: &[zap_store::Image],
        shm: &mut mem::ShmContext,
    ) -> Result<(std::os::fd::OwnedFd, Vec<crate::lazy::LazyRange>)> {
        lazy_unsupported(self.image)?;
        let ranges = self.memory_lazy_layout(store, images, shm, None, &[])?;
        Ok((self.register_lazy(&ranges)?, ranges))
    }

    /// The first half of a lazy memory restore, for a process alone or in a group: the mappings,
    /// and the pages of every mapping but the lazy ones ([`ProcRestore::memory_lazy`] says which
    /// can be lazy), written now as [`ProcRestore::memory`] does, with what comes after the pages
    /// (rings, guard pages, locks: all on mappings written now). `parent` is the restored parent
    /// this process was copied from, when it inherits pages from it (those mappings are written
    /// now: their pages are the parent's); mappings that overlap `eager` (sorted or not) are
    /// written now too (a group writes the mappings its children will inherit pages of before
    /// it makes them, so that they share those pages as they did). Returns the lazy mappings,
    /// for [`ProcRestore::register_lazy`] once the children that inherit pages exist.
    pub fn memory_lazy_layout<S: ImageStore>(
        &mut self,
        store: &S,
        images: &[zap_store::Image],
        shm: &mut mem::ShmContext,
        parent: Option<&ProcessImage>,
        eager: &[(u64, u64)],
    ) -> Result<Vec<crate::lazy::LazyRange>> {
        let pid = self.pid;
        self.load_contents(store, images)?;
        let image = self.loaded.as_deref().unwrap_or(self.image);
        let (vpid, vmas) = (image.vpid, &image.vmas);
        let t = Instant::now();
        self.inj.scratch_at(mem::scratch_place(vmas, self.tramp, SCRATCH), SCRATCH)?;
        image.mm.restore_merge(&mut self.inj, vpid, parent.map(|p| &p.mm))?;
        let parent_vmas = parent.map(|p| p.vmas.as_slice());
        let mut write = mem::restore_layout(&mut self.inj, vpid, vmas, shm, parent_vmas)?;
        mem::cow::clear_kept(&mut self.inj, vpid, vmas, parent_vmas)?;
        let mut ranges = Vec::new();
        // Mappings partly lazy: their images cut down to the part written now.
        let mut cut: Vec<zap_store::Image> = Vec::new();
        for (i, v) in vmas.iter().enumerate() {
            if !write[i] || !lazy_servable(v) {
                continue;
            }
            let Some(name) = v.image.as_ref() else { continue };
            let img = images.iter().find(|im| &im.name == name).ok_or_else(|| EngineError::Proc {
                pid,
                detail: format!("checkpoint lacks image {name} for mapping {:#x}", v.start),
            })?;
            // Lazy: all of it but what a child will inherit and what this process inherited
            // (present already, shared with its parent).
            let mut not_lazy: Vec<(u64, u64)> = eager.iter().chain(&v.inherited).copied().filter(|&(a, b)| a < v.end && v.start < b).collect();
            not_lazy.sort_unstable();
            let lazy_parts = mem::cow::outside(&not_lazy, v.start, v.end);
            if lazy_parts.is_empty() {
                continue;
            }
            for &(a, b) in &lazy_parts {
                ranges.push(crate::lazy::LazyRange { start: a, end: b, extents: clip_extents(&img.extents, a, b), image: name.clone() });
            }
            if lazy_parts == [(v.start, v.end)] {
                write[i] = false;
            } else {
                let now = mem::cow::outside(&lazy_parts, v.start, v.end);
                let extents = now.iter().flat_map(|&(a, b)| clip_extents(&img.extents, a, b)).collect();
                cut.push(zap_store::Image { name: img.name.clone(), kind: img.kind, extents });
            }
        }
        let images: std::borrow::Cow<'_, [zap_store::Image]> = if cut.is_empty() {
            std::borrow::Cow::Borrowed(images)
        } else {
            std::borrow::Cow::Owned(images.iter().map(|im| cut.iter().find(|c| c.name == im.name).unwrap_or(im).clone()).collect())
        };
        let images = &*images;
        let bytes = mem::restore_pages(store, &self.inj, vmas, &write, images)?;
        // Rings, guards and locks are on mappings written above: nothing here touches a lazy page.
        mem::restore_after_pages(store, &mut self.inj, vpid, vmas, images, &image.mm)?;
        let lazy: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        tracing::debug!(vpid, mappings = vmas.len(), lazy_mappings = ranges.len(), lazy, bytes, ms = t.elapsed().as_secs_f64() * 1e3, "memory laid out for a lazy restore");
        Ok(ranges)
    }

    /// The second half of a lazy memory restore: creates a userfaultfd in the process (injected),
    /// takes it (`pidfd_getfd`) and registers `ranges` with it in missing mode, with fork and
    /// remap events. Start the pager at once: from here a touch of those ranges waits for it.
    pub fn register_lazy(&mut self, ranges: &[crate::lazy::LazyRange]) -> Result<std::os::fd::OwnedFd> {
        use crate::sys::{proc as sysproc, uffd};
        let pid = self.pid;
        let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
        let tfd = self.inj.call("userfaultfd", libc::SYS_userfaultfd, [flags, 0, 0, 0, 0, 0])?;
        let taken = (|| {
            let pidfd = sysproc::pidfd_open(pid).map_err(|source| EngineError::Sys { step: "pidfd_open", pid, source })?;
            let fd = sysproc::pidfd_getfd(&pidfd, tfd as i32).map_err(|source| EngineError::Sys { step: "pidfd_getfd userfaultfd", pid, source })?;
            uffd::api(&fd, uffd::UFFD_FEATURE_EVENT_FORK | uffd::UFFD_FEATURE_EVENT_REMAP)
                .map_err(|source| EngineError::Sys { step: "userfaultfd API (missing mode, fork and remap events)", pid, source })?;
            for r in ranges {
                uffd::register_missing(&fd, r.start, r.end - r.start).map_err(|source| EngineError::Proc {
                    pid,
                    detail: format!("register mapping {:#x}-{:#x} with userfaultfd: {source}", r.start, r.end),
                })?;
            }
            Ok::<_, EngineError>(fd)
        })();
        self.inj.call("close userfaultfd", libc::SYS_close, [tfd, 0, 0, 0, 0, 0])?;
        taken
    }

    /// Sets what the threads inherit from the main thread (loginuid, the seccomp filters they
    /// all have), then creates the saved extra threads, each with its saved tid, through the
    /// main thread ([`crate::threads`]), and hands them to `frozen` (the guard holding the main
    /// thread) so they are detached with it. Their own state is loaded by
    /// [`ProcRestore::finish`].
    pub fn threads(&mut self, frozen: &mut Frozen) -> Result<()> {
        let image = self.image;
        self.inherited_attrs()?;
        if image.threads.len() <= 1 || !self.extra.is_empty() {
            return Ok(());
        }
        threads::trace_clones(self.pid, true)?;
        for t in &image.threads[1..] {
            let tid = threads::create(&mut self.inj, self.pid, t.vtid, frozen.threads())?;
            frozen.adopt(tid);
            threads::wait_first_stop(tid, Duration::from_secs(5))?;
            self.extra.push((tid, Injector::new(self.pid, tid, self.tramp)?));
        }
        threads::trace_clones(self.pid, false)
    }

    /// Step 1 of the restore order of [`crate::attrs`]: the main thread's loginuid (one audit
    /// session for the threads cloned after, as before) and the oldest seccomp filters every
    /// thread has, installed once in the main thread (the threads cloned after share them).
    fn inherited_attrs(&mut self) -> Result<()> {
        if self.shared_filters.is_some() {
            return Ok(());
        }
        if let Some(main) = self.image.threads.first() {
            main.attrs.task.restore_loginuid(&mut self.inj, true, &mut self.warnings)?;
        }
        let all: Vec<&attrs::seccomp::Seccomp> = self.image.threads.iter().map(|t| &t.attrs.seccomp).collect();
        let count = attrs::seccomp::shared_count(&all);
        if let Some(main) = all.first() {
            attrs::seccomp::install_shared(&mut self.inj, main, count)?;
        }
        self.shared_filters = Some(count);
        Ok(())
    }

    /// Recreates the fds.
    pub fn files(&mut self, ctx: &mut files::RestoreContext) -> Result<()> {
        let image = self.loaded.as_deref().unwrap_or(self.image);
        files::restore(&mut self.inj, image.vpid, &image.fds, ctx)
    }

    /// Closes fds of ours left in the process (pipe keepers).
    pub fn close_fds(&mut self, fds: &[u64]) -> Result<()> {
        files::close_all(&mut self.inj, fds)
    }

    /// Signal handlers, attributes, per-thread state, queued signals and credentials (in the
    /// order of [`crate::attrs`]); then drops the trampoline and loads the CPU state of every
    /// thread. The process is left stopped, ready to be detached (see
    /// [`crate::freeze::Frozen::detach_stopped`] for one saved stopped).
    pub fn finish(mut self) -> Result<Vec<String>> {
        self.inherited_attrs()?;
        let ProcRestore { image, pid, tramp, mut inj, mut extra, shared_filters, mut warnings, .. } = self;
        let shared_filters = shared_filters.unwrap_or(0);
        let thread = image.threads.first().ok_or_else(|| EngineError::Proc { pid: image.vpid, detail: "no threads saved".into() })?;
        if extra.len() + 1 != image.threads.len() {
            return Err(EngineError::Proc {
                pid,
                detail: format!("{} threads saved but {} restored (ProcRestore::threads not called?)", image.threads.len(), extra.len() + 1),
            });
        }
        // A thread's own loginuid first: a chroot may hide /proc.
        for ((_, tinj), t) in extra.iter_mut().zip(&image.threads[1..]) {
            let own_session = t.attrs.task.sessionid != thread.attrs.task.sessionid;
            t.attrs.task.restore_loginuid(tinj, own_session, &mut warnings)?;
        }
        image.signals.restore_actions(&mut inj)?;
        warnings.extend(image.attrs.restore(&mut inj, pid)?);
        // Per-thread kernel state, each from inside its thread.
        thread.restore_kernel_state(&mut inj)?;
        thread.attrs.restore_flags(&mut inj, &mut warnings)?;
        for ((_, tinj), t) in extra.iter_mut().zip(&image.threads[1..]) {
            t.restore_kernel_state(tinj)?;
            // personality is per task; the main thread's was set with the attributes.
            tinj.call("personality", libc::SYS_personality, [u64::from(image.attrs.personality), 0, 0, 0, 0, 0])?;
            t.attrs.restore_flags(tinj, &mut warnings)?;
        }
        // Queued signals: the kernel lets only a thread itself queue a signal that looks like it
        // came from tgkill or the kernel, so each thread requeues its own.
        signals::requeue(&mut inj, image.vpid, image.vpid, &image.signals.shared_pending, true)?;
        signals::requeue(&mut inj, image.vpid, image.vpid, &thread.pending, false)?;
        for ((_, tinj), t) in extra.iter_mut().zip(&image.threads[1..]) {
            signals::requeue(tinj, image.vpid, t.vtid, &t.pending, false)?;
        }
        // Interval timers run on from the time they had left.
        for (which, val) in &image.itimers {
            let scratch = inj.scratch(4096)?;
            inj.write_mem(scratch, val)?;
            inj.call("setitimer", libc::SYS_setitimer, [*which as u64, scratch, 0, 0, 0, 0])?;
        }
        restore_posix_timers(&mut inj, image.vpid, &image.posix_timers)?;
        // Credentials, scheduling, seccomp, no_new_privs are per thread too; each thread sets its own.
        for ((_, tinj), t) in extra.iter_mut().zip(&image.threads[1..]) {
            t.attrs.restore_creds(tinj, shared_filters, &mut warnings)?;
            tinj.release_scratch()?;
        }
        thread.attrs.restore_creds(&mut inj, shared_filters, &mut warnings)?;
        // After every uid change: dumpable, memory-deny-write-execute.
        image.attrs.restore_last(&mut inj, &mut warnings)?;
        // Last: drop the scratch page and the trampoline, then what is set through ptrace and the
        // saved CPU states.
        inj.release_scratch()?;
        inj.syscall(libc::SYS_munmap, [tramp, 4096, 0, 0, 0, 0])?;
        thread.attrs.restore_traced(pid)?;
        thread.load_cpu(pid)?;
        for ((tid, tinj), t) in extra.into_iter().zip(&image.threads[1..]) {
            t.attrs.restore_traced(tid)?;
            t.load_cpu(tid)?;
            tinj.forget();
        }
        inj.forget();
        if !warnings.is_empty() {
            tracing::warn!(pid, ?warnings, "restored with warnings");
        }
        warnings.shrink_to_fit();
        Ok(warnings)
    }
}
