//! The source's side of a migration (see the module doc of [`super`] for the protocol).
//!
//! [`migrate`] holds the pod's checkpoint lock from start to end (a scheduled checkpoint of the
//! pod waits; other pods and other commands are not blocked). It checks with the destination,
//! arms the dirty-page trackers (a stop of a few milliseconds), runs pre-copy rounds while the
//! pod runs, and decides after each round whether the final round fits `max_downtime`:
//!
//! ```text
//!   expected final round = stop + scan + dirty rate × last round's time ÷ memory rate + handover
//! ```
//! where *stop* is what stopping the pod took when the trackers were armed (its network lock
//! included), *scan* what reading the processes' layouts and dirty pages took in the last round,
//! less its reading of `/proc/PID/smaps` for the processes whose layouts the final save reuses
//! (it reads none of theirs: see [`super`]'s *Downtime*; smaps grows with memory and alone
//! took most of the allowance for 4 GiB under load: counted, it kept such a pod from converging by
//! the estimate), the dirty rate what the tracker reported per second since the round before,
//! the memory rate what the largest round moved per second end to end (read, chunked, sent,
//! written at the destination), and *handover* the destination's restore of the rest and the
//! commit ([`HANDOVER_MS`]). Pre-copy also stops when the dirty set stops shrinking (three rounds within
//! 5%) or at `max_rounds`; then, with `auto_converge`, the pod's CPU is cut (halved each round,
//! down to 1/32) until it converges, else the migration goes ahead with the downtime it must
//! (the report says so) or, with `strict_downtime`, gives up and leaves the pod running.
//!
//! The final round freezes the pod, saves it, sends the last dirty pages and the rest, and
//! waits for the destination's `Ready`. Before `Commit` the journal says `committing`, the pod is
//! frozen through its cgroup (so it stays stopped whatever happens to this process) and its veth
//! is taken off the LAN. Any failure before `Commit` resumes the pod as it was; after it, only
//! `Running` from the destination ends the pod here, and an unknown outcome is left to
//! [`recover`].
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use zap_chunker::{Chunk, ChunkId, ChunkerConfig};
use zap_store::Extent;

use super::channel::{Channel, Stream};
use super::journal::{self, SourceJournal, SourceState};
use super::keys::{KeyFiles, PublicKey};
use super::precopy::{send_member, PodReader, RoundSink};
use super::wire::{self, Answer, FileCheck, Msg, Offer, RoundAck, RoundStart, IDS_PER_BATCH};
use super::{mig_err, MigrateError, Report, Result, RoundReport};
use crate::pod::checkpoint::{self as podck, PodImage, StoppedPod};
use crate::pod::{self, net, PodState, PodStatus};

/// What the final round costs besides the stop, the scan and the pages: the destination's restore
/// of the non-memory state into the prepared processes, the commit and the answers (measured:
/// 15-25 ms for a one-process pod).
pub const HANDOVER_MS: f64 = 25.0;

/// How to migrate.
#[derive(Clone, Debug)]
pub struct MigrateOptions {
    /// The pod's name at the destination (default: the same).
    pub name: Option<String>,
    /// Its address at the destination (default: the same, with the same MAC).
    pub ip: Option<String>,
    /// The pause the user accepts, ms.
    pub max_downtime_ms: f64,
    /// Most pre-copy rounds (round 0 included).
    pub max_rounds: u32,
    /// Give up (pod left running) rather than exceed `max_downtime_ms`.
    pub strict_downtime: bool,
    /// Limit on what the migration sends, bytes/s.
    pub bandwidth: Option<u64>,
    /// Slow the pod down through its cgroup's CPU limit when it writes faster than the link.
    pub auto_converge: bool,
    /// Also leave a checkpoint in the destination's store.
    pub keep_checkpoint: bool,
    /// Only check that the destination can take the pod.
    pub dry_run: bool,
    /// Directories migrated with the pod.
    pub copy: Vec<PathBuf>,
    /// Chunker settings.
    pub chunker: ChunkerConfig,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        MigrateOptions {
            name: None,
            ip: None,
            max_downtime_ms: 100.0,
            max_rounds: 30,
            strict_downtime: false,
            bandwidth: None,
            auto_converge: false,
            keep_checkpoint: false,
            dry_run: false,
            copy: Vec::new(),
            chunker: super::cache::chunker(),
        }
    }
}

/// Test hook (`$ZAP_MIGRATE_FAULT=source-cut@STEP`): the source drops the link at a named step
/// (`round0`, `round1`, `final`, `before-commit`, `after-commit`).
fn cut_here(step: &str) -> bool {
    std::env::var("ZAP_MIGRATE_FAULT").is_ok_and(|f| f == format!("source-cut@{step}"))
}

/// Test hooks at a named step (`round0`, `round1`, `final`, `before-commit`): besides
/// `source-cut@STEP` ([`cut_here`]), `source-die@STEP` kills this process as a crash or `kill -9`
/// would, and `source-hang@STEP` makes it fall silent (no record, no keepalive) as behind a cut
/// link for `$ZAP_MIGRATE_HANG_MS` (default 30 s), then drop the link. True: drop the link now.
fn fault_here(ch: &Channel, step: &str) -> bool {
    let Ok(f) = std::env::var("ZAP_MIGRATE_FAULT") else { return false };
    if f == format!("source-die@{step}") {
        crate::sys::clone::kill(std::process::id() as i32, libc::SIGKILL).ok();
        std::thread::sleep(Duration::from_secs(5));
    }
    if f == format!("source-hang@{step}") {
        ch.stop_keepalive();
        let ms = std::env::var("ZAP_MIGRATE_HANG_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(30_000);
        std::thread::sleep(Duration::from_millis(ms));
        return true;
    }
    cut_here(step)
}

/// The remote destination as a [`RoundSink`], with the round's figures.
struct Remote<'c> {
    ch: &'c mut Channel,
    /// Every chunk offered, for the host's cache once the pod has left.
    spool: Option<super::spool::Spool>,
    /// Chunks the destination holds (it had them, or we sent them).
    known: HashSet<ChunkId>,
    fig: RoundReport,
}

impl Remote<'_> {
    fn send(&mut self, msg: &Msg) -> Result<()> {
        wire::send(self.ch, msg)
    }

    fn round_end(&mut self, n: u32, last: bool) -> Result<Option<RoundAck>> {
        self.send(&Msg::RoundEnd(wire::RoundEnd { n }))?;
        wire::flush(self.ch)?;
        if last {
            return Ok(None);
        }
        match wire::recv(self.ch, &format!("round {n}: wait for the destination"))? {
            Msg::RoundAck(a) => Ok(Some(a)),
            other => Err(wire::unexpected(&format!("round {n}"), &other)),
        }
    }
}

impl RoundSink for Remote<'_> {
    fn round_start(&mut self, start: &RoundStart) -> Result<()> {
        self.send(&Msg::Round(start.clone()))
    }

    fn member_start(&mut self, member: &wire::MemberStart) -> Result<()> {
        self.send(&Msg::Member(member.clone()))
    }

    fn offer(&mut self, chunks: Vec<Chunk>) -> Result<(u64, u64)> {
        let before = chunks.len();
        if let Some(s) = &self.spool {
            for c in &chunks {
                s.add(c)?;
            }
        }
        let fresh: Vec<Chunk> = chunks.into_iter().filter(|c| !self.known.contains(&c.id)).collect();
        let mut had = (before - fresh.len()) as u64;
        let mut bytes = 0;
        for batch in fresh.chunks(IDS_PER_BATCH) {
            self.send(&Msg::Ids(batch.iter().map(|c| c.id).collect()))?;
            wire::flush(self.ch)?;
            let need = match wire::recv(self.ch, "chunks: wait for the destination's answer")? {
                Msg::Need(n) if n.len() == batch.len() => n,
                Msg::Need(n) => return Err(mig_err("chunks", "Need", format!("{} answers for {} ids", n.len(), batch.len()))),
                other => return Err(wire::unexpected("chunks", &other)),
            };
            for (c, want) in batch.iter().zip(need) {
                if want {
                    bytes += c.data.len() as u64;
                    self.send(&Msg::Chunk(c.clone()))?;
                } else {
                    had += 1;
                }
                self.known.insert(c.id);
            }
        }
        self.fig.chunks += before as u64;
        self.fig.had_chunks += had;
        self.fig.chunk_bytes += bytes;
        Ok((had, bytes))
    }

    fn put(&mut self, vpid: i32, extents: Vec<Extent>) -> Result<()> {
        self.send(&Msg::Put(wire::Put { vpid, extents }))
    }

    fn member_end(&mut self, vpid: i32) -> Result<()> {
        self.send(&Msg::MemberEnd(vpid))
    }

    fn files(&mut self, update: wire::FilesUpdate) -> Result<()> {
        self.send(&Msg::Files(update))
    }
}

/// Files the pod has open or mapped that the destination must have (regular files outside
/// `/proc`, `/sys`, `/dev`, the pod's directory and the carried directories).
fn files_in_use(pids: &[i32], skip: &[PathBuf]) -> Vec<FileCheck> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut consider = |path: String, user: String| {
        if !path.starts_with('/') || path.ends_with(" (deleted)") || ["/proc/", "/sys/", "/dev/"].iter().any(|p| path.starts_with(p)) {
            return;
        }
        if skip.iter().any(|s| Path::new(&path).starts_with(s)) || !seen.insert(path.clone()) {
            return;
        }
        if let Ok(m) = std::fs::metadata(&path) {
            if m.is_file() {
                out.push(FileCheck { path, size: m.len(), mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()), user });
            }
        }
    };
    for &pid in pids {
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for fd in fds.flatten() {
                if let Ok(link) = std::fs::read_link(fd.path()) {
                    consider(link.to_string_lossy().into_owned(), format!("pid {pid} fd {}", fd.file_name().to_string_lossy()));
                }
            }
        }
        if let Ok(maps) = crate::maps::read_maps(pid) {
            for m in maps {
                if m.path.starts_with('/') {
                    consider(m.path.clone(), format!("pid {pid} mapping {:#x}", m.start));
                }
            }
        }
    }
    out
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string()
}

/// Limits the pod's CPU while it is migrated (auto-converge), and lifts the limit when dropped.
struct Throttle {
    file: Option<(PathBuf, String)>,
    share: f64,
}

impl Throttle {
    fn new() -> Self {
        Throttle { file: None, share: 1.0 }
    }

    /// Halves the pod's CPU share (down to 1/32). Returns the new share.
    fn tighten(&mut self, root: &Path, state: &mut PodState) -> Result<f64> {
        if self.file.is_none() {
            self.file = Some(cpu_limit_file(root, state)?);
        }
        let (path, _) = self.file.as_ref().expect("set above");
        self.share = (self.share / 2.0).max(1.0 / 32.0);
        let period = 100_000u64;
        let quota = ((self.share * period as f64) as u64).max(1000);
        let value = if path.ends_with("cpu.max") { format!("{quota} {period}") } else { quota.to_string() };
        std::fs::write(path, &value).map_err(|e| mig_err("auto-converge: limit CPU", path.display(), e))?;
        Ok(self.share)
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        if let Some((path, old)) = &self.file {
            if let Err(e) = std::fs::write(path, old) {
                tracing::warn!(path = %path.display(), error = %e, "could not lift the CPU limit");
            }
        }
    }
}

/// The file holding the pod's CPU quota and its value now: `cpu.max` of its v2 cgroup where the
/// cpu controller is there, else `cpu.cfs_quota_us` of a v1 cpu cgroup (made for the pod and
/// recorded in its state when it has none, so that removing the pod removes it).
fn cpu_limit_file(root: &Path, state: &mut PodState) -> Result<(PathBuf, String)> {
    let v2 = state.cgroup.join("cpu.max");
    if v2.exists() {
        let old = std::fs::read_to_string(&v2).map_err(|e| mig_err("auto-converge", v2.display(), e))?;
        return Ok((v2, old.trim().to_string()));
    }
    let dir = match state.cgroup_v1.iter().find(|d| d.starts_with("/sys/fs/cgroup/cpu")) {
        Some(d) => d.clone(),
        None => {
            let dir = Path::new("/sys/fs/cgroup/cpu").join(crate::host::cgroup_parent()).join(&state.name);
            if !Path::new("/sys/fs/cgroup/cpu").is_dir() {
                return Err(mig_err("auto-converge", &state.name, "no cpu controller (neither cpu.max in cgroup v2 nor a v1 cpu hierarchy)"));
            }
            std::fs::create_dir_all(&dir).map_err(|e| mig_err("auto-converge: create cpu cgroup", dir.display(), e))?;
            state.cgroup_v1.push(dir.clone());
            pod::save(root, state)?;
            for pid in pod::cgroup_of(state).procs() {
                let procs = dir.join("cgroup.procs");
                if let Err(e) = std::fs::write(&procs, pid.to_string()) {
                    tracing::debug!(pid, error = %e, "not moved into the cpu cgroup (gone?)");
                }
            }
            dir
        }
    };
    let path = dir.join("cpu.cfs_quota_us");
    let old = std::fs::read_to_string(&path).map_err(|e| mig_err("auto-converge", path.display(), e))?;
    Ok((path, old.trim().to_string()))
}

/// Migrates pod `name` of run directory `root` over `stream` to the destination holding key
/// `peer` (`dest` names it in the journal). `progress` sees each round as it ends.
pub fn migrate(
    root: &Path,
    name: &str,
    dest: &str,
    peer: PublicKey,
    stream: Stream,
    opts: &MigrateOptions,
    progress: &mut dyn FnMut(&RoundReport),
) -> Result<Report> {
    let t0 = Instant::now();
    let lock = podck::PodLock::acquire(root, name)?;
    let mut state = pod::load(root, name)?;
    if pod::status(root, &state) != PodStatus::Running {
        return Err(mig_err("migrate", format!("pod {name}"), format!("the pod is {}", pod::status(root, &state))));
    }
    if let Some(j) = journal::read::<SourceJournal>(&journal::source_path(root, name))? {
        if j.state == SourceState::Committing {
            return Err(mig_err("migrate", format!("pod {name}"), format!("an earlier migration (session {}) is unresolved: zap migrate --recover {name}", j.session)));
        }
    }
    let me = KeyFiles::host().load()?;
    let mut ch = Channel::initiate(stream, &me, peer)?;
    ch.rate_limit = opts.bandwidth;
    let session = journal::new_session();
    let mut reader = PodReader::new(state.clone());
    let mut dirs = super::copydir::SourceDirs::new(&opts.copy)?;
    let mac = match &state.ip {
        Some(_) if opts.ip.is_none() || opts.ip == state.ip => Some(net::read_config(state.init_pid)?.mac),
        _ => None,
    };
    let offer = Offer {
        session: session.clone(),
        pod: name.to_string(),
        name: opts.name.clone().unwrap_or_else(|| name.to_string()),
        ip: opts.ip.clone().or_else(|| state.ip.clone()),
        mac,
        hostname: state.hostname.clone(),
        memory_limit: state.memory_limit,
        cpus: state.cpus,
        memory_bytes: pod::cgroup_of(&state).memory_bytes(),
        files: files_in_use(&reader.pids(), &[opts.copy.clone(), vec![pod::pod_dir(root, name)]].concat()),
        copy_dirs: opts.copy.iter().map(|p| p.display().to_string()).collect(),
        copy_bytes: opts.copy.iter().map(|d| super::copydir::size_of(d)).sum(),
        kernel: kernel_release(),
        keep_checkpoint: opts.keep_checkpoint,
        dry_run: opts.dry_run,
        clocks: None,
    };
    let mut report = Report {
        session: session.clone(),
        pod: name.to_string(),
        name: offer.name.clone(),
        ip: offer.ip.clone(),
        memory_bytes: offer.memory_bytes,
        dry_run: opts.dry_run,
        ..Default::default()
    };
    // Read last: the destination takes the time it receives the offer for this moment.
    let offer = Offer { clocks: Some(pod::clock::save(state.init_pid).map_err(|e| mig_err("offer", "read the pod's clocks", e))?.at_stop), ..offer };
    wire::send(&mut ch, &Msg::Offer(Box::new(offer)))?;
    wire::flush(&mut ch)?;
    match wire::recv(&mut ch, "handshake: wait for the destination's checks")? {
        Msg::Accept(_) => {}
        Msg::Refuse(problems) => return Err(MigrateError::Refused(problems)),
        other => return Err(wire::unexpected("handshake", &other)),
    }
    if opts.dry_run {
        report.total_ms = t0.elapsed().as_secs_f64() * 1e3;
        report.converged = "dry run: the destination can take the pod".into();
        return Ok(report);
    }
    let (pid, start) = journal::me();
    let jpath = journal::source_path(root, name);
    let mut j = SourceJournal { session: session.clone(), dest: dest.to_string(), peer_key: peer.to_string(), state: SourceState::Precopy, pid, start };
    journal::write(&jpath, &j)?;
    let mut r = run(root, name, &mut state, lock, &mut ch, &mut reader, &mut dirs, opts, &mut report, progress, &mut j, &jpath);
    if let Err(MigrateError::Link { step: ours, detail: why }) = &r {
        // The destination may have said why it closed while we were still sending: its reason
        // comes first, ours stays in the message.
        if let Some(reason) = wire::peer_reason(&mut ch) {
            r = Err(match reason {
                MigrateError::Peer { step, detail } => MigrateError::Peer { step, detail: format!("{detail} (here, {ours}: link lost: {why})") },
                other => other,
            });
        }
    }
    reader.disarm();
    match r {
        Ok(()) => {
            let _ = std::fs::remove_file(&jpath);
            report.wire_bytes = ch.sent_bytes + ch.recv_bytes;
            report.total_ms = t0.elapsed().as_secs_f64() * 1e3;
            Ok(report)
        }
        Err(e @ MigrateError::Unknown { .. }) => Err(e),
        Err(e) => {
            // Never committed: the pod runs on here (the stopped pod was resumed on its way out).
            let _ = std::fs::remove_file(&jpath);
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    root: &Path,
    name: &str,
    state: &mut PodState,
    lock: podck::PodLock,
    ch: &mut Channel,
    reader: &mut PodReader,
    dirs: &mut super::copydir::SourceDirs,
    opts: &MigrateOptions,
    report: &mut Report,
    progress: &mut dyn FnMut(&RoundReport),
    j: &mut SourceJournal,
    jpath: &Path,
) -> Result<()> {
    // Another tracker (a periodic checkpoint's) would take the pages from under ours.
    podck::drop_tracking(root, name);
    let stopped = StoppedPod::stop_locked(root, name, lock)?;
    let arm_stop = Instant::now();
    reader.arm(&stopped)?;
    let stop_ms = stopped.stop_ms();
    tracing::debug!(stop_ms, arm_ms = arm_stop.elapsed().as_secs_f64() * 1e3, "trackers armed");
    let lock = stopped.into_lock()?;
    let out_dir = crate::host::migrate_dir().join(format!("out-{}", j.session));
    let spool = std::fs::create_dir_all(&out_dir).ok().and_then(|()| super::spool::Spool::create(&out_dir.join("chunks.spool")).ok());
    let mut remote = Remote { ch, spool, known: HashSet::new(), fig: RoundReport::default() };
    let r = rounds(root, name, state, lock, &mut remote, reader, dirs, opts, report, progress, j, jpath, stop_ms);
    if r.is_ok() {
        if let Some(s) = &remote.spool {
            // The pod has left: its chunks stay in the cache for a migration back.
            if let Err(e) = super::cache::keep(s, name, &j.session) {
                tracing::warn!(pod = name, error = %e, "could not keep the pod's chunks in the migration cache");
            }
        }
    }
    drop(remote.spool.take());
    let _ = std::fs::remove_dir_all(&out_dir);
    r
}

#[allow(clippy::too_many_arguments)]
fn rounds(
    root: &Path,
    name: &str,
    state: &mut PodState,
    lock: podck::PodLock,
    remote: &mut Remote<'_>,
    reader: &mut PodReader,
    dirs: &mut super::copydir::SourceDirs,
    opts: &MigrateOptions,
    report: &mut Report,
    progress: &mut dyn FnMut(&RoundReport),
    j: &mut SourceJournal,
    jpath: &Path,
    stop_ms: f64,
) -> Result<()> {
    let mut throttle = Throttle::new();
    let mut prev_collect = Instant::now();
    let mut history: Vec<u64> = Vec::new();
    let mut extra_rounds = 0;
    // The final round's own costs besides its pages and the scan (see the module doc).
    let fixed_ms = stop_ms + HANDOVER_MS;
    let mut best = (0u64, 1.0f64);
    let mut n = 0u32;
    // The interface's configuration, read beside each round (see `NetConfigReader`).
    let mut net_config = NetConfigReader::default();
    loop {
        let tr = Instant::now();
        net_config.start(state);
        if fault_here(remote.ch, &format!("round{n}")) {
            return Err(mig_err(format!("round {n}"), "test hook", "link cut on purpose (ZAP_MIGRATE_FAULT)"));
        }
        let data = reader.read(n == 0)?;
        let read_ms = tr.elapsed().as_secs_f64() * 1e3;
        // The final round reads no smaps of a process whose layout this round kept (it grows
        // with memory: 60-100 ms for 4 GiB under load, more than the whole allowance).
        let smaps_ms: f64 = data.members.iter().filter(|m| reader.layouts.contains_key(&m.host)).map(|m| m.layout_ms).sum();
        let scan_ms = if crate::mem::full_scan() { read_ms } else { (read_ms - smaps_ms).max(0.0) };
        let since = prev_collect.elapsed().as_secs_f64();
        prev_collect = Instant::now();
        let wire0 = remote.ch.sent_bytes + remote.ch.recv_bytes;
        remote.fig = RoundReport { n, ..Default::default() };
        let layouts = data.members.iter().map(|m| (m.vpid, m.vmas.clone())).collect();
        remote.round_start(&RoundStart { n, last: false, shape: data.shape.clone(), main_vpid: state.main_vpid, layouts })?;
        let (mut bytes, mut dirty) = (0u64, 0u64);
        for m in &data.members {
            send_member(remote, m.vpid, &m.vmas, &m.copy, &opts.chunker)?;
            bytes += m.copy.bytes;
            dirty += m.dirty_pages;
        }
        bytes += dirs.send(remote, &opts.chunker)?;
        let sent_ms = tr.elapsed().as_secs_f64() * 1e3;
        let ack = remote.round_end(n, false)?.unwrap_or_default();
        let secs = tr.elapsed().as_secs_f64().max(1e-6);
        tracing::debug!(round = n, read_ms, scan_ms, sent_ms, ms = secs * 1e3, apply_ms = ack.apply_ms, "round done");
        let mut fig = std::mem::take(&mut remote.fig);
        fig.pages = bytes / 4096;
        fig.dirty_pages = dirty;
        fig.had_chunks = fig.had_chunks.max(ack.had_chunks);
        fig.wire_bytes = remote.ch.sent_bytes + remote.ch.recv_bytes - wire0;
        fig.ms = secs * 1e3;
        fig.mem_rate = bytes as f64 / secs;
        fig.link_rate = fig.wire_bytes as f64 / secs;
        fig.dirty_rate = if n == 0 { 0.0 } else { (dirty * 4096) as f64 / since.max(1e-6) };
        fig.cpu_share = throttle.share;
        fig.rebuilt = ack.rebuilt.clone();
        report.had_chunks += fig.had_chunks;
        report.sent_chunks += fig.chunks - fig.had_chunks;
        progress(&fig);
        report.rounds.push(fig.clone());
        history.push(if n == 0 { u64::MAX } else { bytes });
        // The rate at which memory goes through (the largest round shows it best; small rounds
        // are mostly their fixed costs).
        if bytes >= best.0 {
            best = (bytes, fig.mem_rate.max(1.0));
        }
        // Converged? (Round 0 tells nothing about the dirty rate.)
        if n > 0 {
            let expected = fig.dirty_rate * secs / best.1 * 1e3 + scan_ms + fixed_ms;
            let shrinking = history.len() < 4 || history.windows(2).rev().take(3).any(|w| (w[1] as f64) < w[0] as f64 * 0.95);
            if expected <= opts.max_downtime_ms {
                report.converged = format!("expected final round {expected:.0} ms fits --max-downtime {} ms", opts.max_downtime_ms);
                break;
            }
            let at_max = n + 1 >= opts.max_rounds + extra_rounds;
            if at_max || !shrinking {
                let why = if at_max { format!("{} rounds", n + 1) } else { "the dirty set stopped shrinking".to_string() };
                if opts.auto_converge && throttle.share > 1.0 / 32.0 && extra_rounds < 12 {
                    let share = throttle.tighten(root, state)?;
                    tracing::info!(share, "auto-converge: the pod's CPU is limited");
                    extra_rounds += 1;
                    history.clear();
                } else if opts.strict_downtime {
                    return Err(mig_err(
                        "pre-copy",
                        format!("pod {name}"),
                        format!("{why} and the final round would take about {expected:.0} ms, over --max-downtime {} ms; the pod runs on here (try --auto-converge, more --bandwidth, or a larger --max-downtime)", opts.max_downtime_ms),
                    ));
                } else {
                    report.converged = format!("{why}: going ahead with an expected final round of {expected:.0} ms (over --max-downtime {} ms)", opts.max_downtime_ms);
                    break;
                }
            }
        }
        n += 1;
    }
    n += 1;
    final_round(root, name, state, lock, remote, reader, dirs, opts, report, progress, n, j, jpath, net_config)
}

/// Reads the pod's interface configuration (address, MAC, routes) in a thread beside the
/// pre-copy rounds (at the first, then at most every [`NET_CONFIG_EVERY`]): it takes three runs of
/// `ip` in the pod's namespace, each a fork and exec of this process, 0.1-1 s under load, and
/// read right before the final stop that time added to the pages the pod wrote before it (a 4 GiB
/// pod at 1%/s: 14,590 pages in its final round where its rounds had 3,150-4,200). The last read
/// is the one carried: the pod's own processes rarely change their interface, and a change after
/// it is not carried, as one after the stop was not before.
#[derive(Default)]
struct NetConfigReader {
    pending: Option<std::thread::JoinHandle<crate::Result<net::NetConfig>>>,
    started: Option<Instant>,
}

/// How old the configuration read beside the rounds may get before it is read again.
const NET_CONFIG_EVERY: Duration = Duration::from_secs(5);

impl NetConfigReader {
    /// Starts a read unless one is under way or recent (nothing for a pod without an address).
    fn start(&mut self, state: &PodState) {
        if state.ip.is_none() || self.pending.as_ref().is_some_and(|h| !h.is_finished()) || self.started.is_some_and(|t| t.elapsed() < NET_CONFIG_EVERY) {
            return;
        }
        let init = state.init_pid;
        self.pending = std::thread::Builder::new().name("zap-net-config".into()).spawn(move || net::read_config(init)).ok();
        self.started = Some(Instant::now());
    }

    /// The last read's result (read now if none could be started).
    fn finish(self, state: &PodState) -> Result<Option<net::NetConfig>> {
        match (self.pending, &state.ip) {
            (_, None) => Ok(None),
            (Some(h), Some(_)) => Ok(Some(h.join().map_err(|_| mig_err("final round", "pod network", "reading its configuration panicked"))??)),
            (None, Some(_)) => Ok(Some(net::read_config(state.init_pid)?)),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn final_round(
    root: &Path,
    name: &str,
    state: &PodState,
    lock: podck::PodLock,
    remote: &mut Remote<'_>,
    reader: &mut PodReader,
    dirs: &mut super::copydir::SourceDirs,
    opts: &MigrateOptions,
    report: &mut Report,
    progress: &mut dyn FnMut(&RoundReport),
    n: u32,
    j: &mut SourceJournal,
    jpath: &Path,
    net_config: NetConfigReader,
) -> Result<()> {
    if fault_here(remote.ch, "final") {
        return Err(mig_err("final round", "test hook", "link cut on purpose (ZAP_MIGRATE_FAULT)"));
    }
    // The last round's layout checks (they ran beside it) are done before the stop: a stale
    // layout is read again from smaps.
    reader.settle();
    let net_config = net_config.finish(state)?;
    let tf = Instant::now();
    let wire0 = remote.ch.sent_bytes + remote.ch.recv_bytes;
    let mut stopped = StoppedPod::stop_locked(root, name, lock)?;
    report.final_stop_ms = tf.elapsed().as_secs_f64() * 1e3;
    let step = |what: &str| tracing::debug!(ms = tf.elapsed().as_secs_f64() * 1e3, "final round: {what}");
    step("pod stopped");
    let pids = stopped.pids().to_vec();
    let mut tracking = crate::group::Tracking {
        armed: std::mem::take(&mut reader.armed),
        holds_all: true,
        known_layouts: if crate::mem::full_scan() { Default::default() } else { std::mem::take(&mut reader.layouts) },
        known_absent: if crate::mem::full_scan() { Default::default() } else { reader.zero.clone() },
        ..Default::default()
    };
    // Namespaces no restore can make (nested PID or user) are refused before anything is saved.
    pod::inside::refuse_early(name, state.init_pid, &pids)?;
    let saved = crate::group::save(&pids, stopped.frozen(), crate::group::SaveOptions { tcp_close: false, network_locked: stopped.network_locked(), no_cow: true }, Some(&mut tracking));
    // The trackers stay ours to close, whatever happened.
    reader.armed = tracking.armed.drain().chain(tracking.dropped.drain(..).map(|a| (a.pid, a))).collect();
    let mut saved = saved?;
    // Pages absent at the last round and still absent are zero at the destination already.
    for (vpid, copy) in saved.copies.iter_mut() {
        let host = saved.image.members.iter().find(|m| m.vpid == *vpid).and_then(|m| m.image()).map(|i| i.host_pid);
        super::precopy::drop_known_absent(host.and_then(|h| reader.zero.get(&h)).map(Vec::as_slice), copy);
    }
    step("processes saved");
    // Layouts whose flags were taken from the last round (smaps unread: its walk of the page
    // tables grows with memory) are checked against smaps beside the rest of the final round,
    // while the pod stays stopped; a difference fails the migration before Commit.
    let to_check: Vec<(i32, Vec<crate::mem::VmaState>)> = tracking
        .reused_layouts
        .iter()
        .filter_map(|&host| saved.image.members.iter().filter_map(|m| m.image()).find(|i| i.host_pid == host).map(|i| (host, i.vmas.clone())))
        .collect();
    let check = std::thread::spawn(move || -> crate::Result<()> {
        let t = Instant::now();
        for (host, vmas) in &to_check {
            crate::mem::check_details(*host, vmas)?;
        }
        tracing::debug!(processes = to_check.len(), ms = t.elapsed().as_secs_f64() * 1e3, "final round: reused layouts checked against smaps");
        Ok(())
    });
    podck::refuse_external_streams(name, &saved.image)?;
    step("streams checked");
    // IPC objects, what the processes made inside the pod (the files of its in-memory file
    // systems, the objects of nested IPC namespaces) and the console log ride along as images
    // whose chunks are offered first.
    let mut other = OfferSink::default();
    let (inside, mut inside_images, file_data) = pod::inside::save(root, state, &saved.image, stopped.frozen_subcgroups(), &mut other, &opts.chunker)?;
    if let Some(what) = inside.beyond_names() {
        tracing::debug!(pod = name, what, "made inside the pod: carried to be made again at the destination");
    }
    step("inside saved");
    remote.fig = RoundReport { n, last: true, ..Default::default() };
    let shape = crate::group::TreeShape::of(&saved.image);
    let layouts: Vec<(i32, Vec<crate::mem::VmaState>)> =
        saved.image.members.iter().filter_map(|m| m.image().map(|i| (m.vpid, i.vmas.clone()))).collect();
    let mut dirty = 0u64;
    let mut bytes = 0u64;
    let (ipc_state, mut images) = crate::ipc::save(state.init_pid, &mut other, &opts.chunker)?;
    step("IPC saved");
    images.append(&mut inside_images);
    images.append(&mut file_data.store(&mut other, &opts.chunker)?);
    step("files stored");
    let console = podck_console(root, name);
    // The clocks the destination checks its pod's against: read after the timers' time left.
    let clocks = stopped.read_clocks()?;
    if !console.is_empty() {
        let (extents, _) = zap_store::store_run(&mut other, &opts.chunker, 0, &console)?;
        images.push(zap_store::Image { name: podck::CONSOLE_IMAGE.into(), kind: zap_store::ImageKind::File, extents });
    }
    report.final_save_ms = tf.elapsed().as_secs_f64() * 1e3 - report.final_stop_ms;
    step("pod saved");
    let ts = Instant::now();
    remote.round_start(&RoundStart { n, last: true, shape, main_vpid: state.main_vpid, layouts })?;
    for (vpid, copy) in &saved.copies {
        let Some(img) = saved.image.members.iter().find(|m| m.vpid == *vpid).and_then(|m| m.image()) else { continue };
        send_member(remote, *vpid, &img.vmas, copy, &opts.chunker)?;
        bytes += copy.bytes;
    }
    dirty += bytes / 4096;
    // What changed in the carried directories while the pod ran, and until it stopped.
    bytes += dirs.send(remote, &opts.chunker)?;
    remote.offer(std::mem::take(&mut other.0))?;
    remote.round_end(n, true)?;
    saved.copies.clear();
    let image = PodImage {
        name: name.to_string(),
        hostname: state.hostname.clone(),
        ip: state.ip.clone(),
        net: net_config,
        memory_limit: state.memory_limit,
        cpus: state.cpus,
        argv: state.argv.clone(),
        main_vpid: state.main_vpid,
        pod_dir: format!("{}/", pod::pod_dir(root, name).display()),
        group: saved.image,
        ipc: ipc_state,
        inside,
        clocks: Some(clocks),
    };
    remote.send(&Msg::Final(wire::FinalState { pod_image: image.encode(), images }))?;
    wire::flush(remote.ch)?;
    report.final_send_ms = ts.elapsed().as_secs_f64() * 1e3;
    step("sent");
    let ready = match wire::recv(remote.ch, "final round: wait for the destination's restore")? {
        Msg::Ready(r) => r,
        other => return Err(wire::unexpected("final round", &other)),
    };
    report.final_restore_ms = ready.restore_ms;
    step("destination ready");
    report.memory = ready.memory.clone();
    let mut fig = std::mem::take(&mut remote.fig);
    fig.pages = bytes / 4096;
    fig.dirty_pages = dirty;
    fig.wire_bytes = remote.ch.sent_bytes + remote.ch.recv_bytes - wire0;
    fig.ms = tf.elapsed().as_secs_f64() * 1e3;
    fig.mem_rate = bytes as f64 / tf.elapsed().as_secs_f64().max(1e-6);
    fig.link_rate = fig.wire_bytes as f64 / tf.elapsed().as_secs_f64().max(1e-6);
    fig.cpu_share = 1.0;
    report.had_chunks += fig.had_chunks;
    report.sent_chunks += fig.chunks - fig.had_chunks;
    progress(&fig);
    report.rounds.push(fig);
    if fault_here(remote.ch, "before-commit") {
        return Err(mig_err("handover", "test hook", "link cut on purpose before Commit (ZAP_MIGRATE_FAULT)"));
    }
    check.join().map_err(|_| mig_err("final round", format!("pod {name}"), "the check of the mappings' flags panicked"))??;
    step("flags checked");
    // Past this point the pod may run at the destination: keep it frozen here whatever happens to
    // this process, and off the LAN, until the destination answers.
    j.state = SourceState::Committing;
    journal::write(jpath, j)?;
    let cg = pod::cgroup_of(state);
    let parked = (|| {
        cg.freeze(Duration::from_secs(10))?;
        if let Some(veth) = &state.veth_host {
            net::detach(name, veth)?;
        }
        Ok::<(), crate::EngineError>(())
    })();
    if let Err(e) = parked {
        let _ = cg.thaw();
        if let Some(veth) = &state.veth_host {
            let _ = net::attach(name, veth);
        }
        j.state = SourceState::Precopy;
        let _ = journal::write(jpath, j);
        return Err(e.into());
    }
    step("parked (frozen, off the LAN)");
    if cut_here("after-commit") {
        // The link drops right after Commit is on its way: the outcome is unknown here.
        let _ = remote.send(&Msg::Commit).and_then(|()| wire::flush(remote.ch));
        stopped.leave_frozen();
        return Err(MigrateError::Unknown { pod: name.to_string(), detail: "the link dropped right after Commit (test hook)".into() });
    }
    let answer = remote.send(&Msg::Commit).and_then(|()| wire::flush(remote.ch)).and_then(|()| wire::recv(remote.ch, "handover: wait for the destination to run the pod"));
    let running = match answer {
        Ok(Msg::Running(r)) => r,
        Ok(other) => {
            stopped.leave_frozen();
            return Err(MigrateError::Unknown { pod: name.to_string(), detail: format!("the destination answered {:?} to Commit", other.kind()) });
        }
        Err(e) => {
            stopped.leave_frozen();
            return Err(MigrateError::Unknown { pod: name.to_string(), detail: format!("no answer to Commit ({e})") });
        }
    };
    report.downtime_ms = tf.elapsed().as_secs_f64() * 1e3;
    step("destination running");
    report.commit_ms = running.commit_ms;
    // The destination runs the pod: end ours, silently, and leave nothing of it.
    stopped.end()?;
    let _ = std::fs::remove_file(jpath);
    remote.send(&Msg::Ended)?;
    wire::flush(remote.ch)?;
    match wire::recv(remote.ch, "handover: wait for the destination to finish") {
        Ok(Msg::Done(d)) => report.checkpoint = d.checkpoint,
        Ok(other) => tracing::warn!(kind = ?other.kind(), "unexpected message after the handover"),
        Err(e) => tracing::warn!(error = %e, "the destination did not confirm the end (the pod runs there)"),
    }
    Ok(())
}

/// The last 16 MiB of the pod's console log (read while the pod is stopped).
fn podck_console(root: &Path, name: &str) -> Vec<u8> {
    podck::read_console(&pod::pod_dir(root, name).join("console.log"))
}

/// Collects chunks made outside [`send_member`] (IPC objects, the console log) to offer them.
#[derive(Default)]
struct OfferSink(Vec<Chunk>);

impl zap_store::ChunkSink for OfferSink {
    fn contains(&mut self, id: &ChunkId) -> zap_store::Result<bool> {
        Ok(self.0.iter().any(|c| c.id == *id))
    }

    fn put(&mut self, chunk: &Chunk) -> zap_store::Result<bool> {
        if self.0.iter().any(|c| c.id == chunk.id) {
            return Ok(false);
        }
        self.0.push(chunk.clone());
        Ok(true)
    }

    fn commit(self, manifest: zap_store::Manifest) -> zap_store::Result<zap_store::CheckpointSummary> {
        Err(zap_store::StoreError::Invalid(format!("chunks to offer make no checkpoint ({:?})", manifest.name)))
    }
}

/// Resolves an unknown outcome (see the module doc): asks the destination over `stream` what
/// became of the session in pod `name`'s journal, then ends the pod (the destination runs it) or
/// resumes it (it does not). A journal left by a migration that never sent `Commit` needs no
/// question: the pod is resumed (if it was left stopped) and the journal removed. Returns what
/// was done.
pub fn recover(root: &Path, name: &str, stream: Option<Stream>) -> Result<String> {
    let jpath = journal::source_path(root, name);
    let j: SourceJournal = journal::read(&jpath)?.ok_or_else(|| mig_err("recover", format!("pod {name}"), "no migration of this pod to recover"))?;
    let state = pod::load(root, name)?;
    if j.state == SourceState::Precopy {
        if crate::pod::alive(j.pid, j.start) {
            return Err(mig_err("recover", format!("pod {name}"), format!("migration session {} is still running (pid {})", j.session, j.pid)));
        }
        resume_parked(root, name, &state)?;
        let _ = std::fs::remove_file(&jpath);
        return Ok(format!("session {} never committed: pod {name} runs on here", j.session));
    }
    let stream = stream.ok_or_else(|| mig_err("recover", &j.dest, "no way to reach the destination"))?;
    let peer = PublicKey::parse(&j.peer_key).ok_or_else(|| mig_err("recover", jpath.display(), "bad destination key in the journal"))?;
    let me = KeyFiles::host().load()?;
    let mut ch = Channel::initiate(stream, &me, peer)?;
    wire::send(&mut ch, &Msg::Query(j.session.clone()))?;
    wire::flush(&mut ch)?;
    let answer = match wire::recv(&mut ch, "recover: wait for the destination's answer")? {
        Msg::Answer(a) => a,
        other => return Err(wire::unexpected("recover", &other)),
    };
    match answer {
        Answer::Committed => {
            let lock = podck::PodLock::acquire(root, name)?;
            drop(lock);
            pod::rm(root, name, true)?;
            Ok(format!("session {}: the destination runs the pod; removed it here", j.session))
        }
        Answer::Discarded | Answer::Unknown => {
            resume_parked(root, name, &state)?;
            let _ = std::fs::remove_file(&jpath);
            Ok(format!("session {}: the destination does not run the pod ({answer:?}); pod {name} runs on here", j.session))
        }
    }
}

/// Puts a pod left frozen, off the LAN and with its network locked by an interrupted handover
/// back: on the LAN, thawed, its network unlocked, its address announced.
fn resume_parked(root: &Path, name: &str, state: &PodState) -> Result<()> {
    if let Some(veth) = &state.veth_host {
        let attached = std::process::Command::new("ip")
            .args(["-o", "link", "show", "dev", veth])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(" master "));
        if !attached {
            net::attach(name, veth)?;
        }
    }
    pod::cgroup_of(state).thaw()?;
    pod::netlock::unlock(root, name)?;
    if state.ip.is_some() {
        if let Err(e) = net::announce(name, state.init_pid, 2) {
            tracing::warn!(pod = name, error = %e, "could not announce the address");
        }
    }
    Ok(())
}
