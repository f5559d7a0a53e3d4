//! Pre-copy of one process's memory (or a tree's: [`tree`]) into the store while it runs, for a
//! checkpoint that lets it run on (`zap checkpoint --pid PID [--tree] --leave-running`; pods:
//! [`crate::pod::precopy`]).
//!
//! ```text
//!   stop ── arm a tracker ── resume           (a moment: write-protect the process)
//!   round 0: read all memory ─┐
//!   round 1..: pages written  ├─ process running; chunks go into the checkpoint's store writer,
//!   since the last round     ─┘  each round's images laid over the last's
//!   stop ── save (delta on the rounds' images) ── resume ── commit ── close the tracker
//! ```
//!
//! The tracker lives in this process ([`Keeper::Here`]) and is closed once the checkpoint is
//! committed (or failed): a process checkpoint keeps no tracker between checkpoints. In a tree,
//! each process has its rounds (images named as the group checkpoint names them); one that
//! cannot be armed or read is left out, and the final stop saves it whole. The images
//! the rounds made are never committed on their own: the checkpoint is full, its images hold
//! every page.
use std::collections::HashMap;
use std::time::Instant;

use zap_chunker::ChunkerConfig;
use zap_store::{ChunkSink, Image};

use crate::dirty::{self, Armed, Keeper};
use crate::freeze::Frozen;
use crate::inject::{find_syscall_insn, Injector};
use crate::mem::{self, CopyPlan};
use crate::Result;

/// At most this many rounds after round 0.
const MAX_EXTRA_ROUNDS: u32 = 3;
/// A round that read fewer bytes than this is the last one.
const SMALL_ROUND_BYTES: u64 = 8 << 20;

/// What the rounds copied of one process. Dropping it closes the tracker.
pub struct PreCopiedProcess {
    /// The tracker, armed before round 0 (in this process).
    pub armed: Armed,
    /// The process's memory as of the last round (images `mem/{start:x}`).
    pub images: Vec<Image>,
    /// Rounds run (round 0 included).
    pub rounds: u32,
    /// Bytes read while the process ran.
    pub bytes_read: u64,
    /// How long the arming stop took, ms.
    pub arm_stop_ms: f64,
    /// How long the rounds took, ms.
    pub rounds_ms: f64,
}

impl Drop for PreCopiedProcess {
    fn drop(&mut self) {
        if let Err(e) = dirty::disarm(&self.armed) {
            tracing::warn!(pid = self.armed.pid, error = %e, "could not close the pre-copy's tracker");
        }
    }
}

impl PreCopiedProcess {
    /// A short description for a checkpoint's `mode`.
    pub fn describe(&self, stopped_bytes: u64) -> String {
        format!(
            "pre-copied while running ({} rounds, {} MiB in {:.0} ms, arming stop {:.0} ms), stopped for the pages written since ({} KiB)",
            self.rounds,
            self.bytes_read >> 20,
            self.rounds_ms,
            self.arm_stop_ms,
            stopped_bytes >> 10
        )
    }
}

fn arm(pid: i32) -> Result<Armed> {
    let backend = dirty::default_backend()?;
    let frozen = Frozen::freeze(pid)?;
    let vmas = mem::save_layout(pid)?;
    let mut inj = Injector::new(pid, pid, find_syscall_insn(pid)?)?;
    let armed = dirty::arm(pid, &mut inj, backend, Keeper::Here, &vmas);
    let finished = inj.finish();
    drop(frozen);
    let armed = armed?;
    if let Err(e) = finished {
        let _ = dirty::disarm(&armed);
        return Err(e);
    }
    Ok(armed)
}

/// One round of process `pid` (round `n`; round 0 reads all): its pages written since the last
/// round's collection are laid over `images` (named `{prefix}mem/...`). Returns the bytes read.
fn round<W: ChunkSink>(pid: i32, n: u32, armed: &mut Armed, images: &mut Vec<Image>, prefix: &str, writer: &mut W, cfg: &ChunkerConfig) -> Result<u64> {
    let mut vmas = mem::save_layout(pid)?;
    // Collected in every round, round 0 too: what is written from here on is reported next.
    let written = dirty::collect(armed, &vmas)?;
    let base = mem::base_runs(images, prefix);
    let plan = if n == 0 { CopyPlan::default() } else { CopyPlan { dirty: Some(&written), base: Some(&base), parent: None } };
    let copy = mem::copy_pages_since(pid, &mut vmas, &plan)?;
    let bytes = copy.bytes;
    let parent = (n > 0).then_some(images.as_slice());
    let (new, _) = mem::store_pages(copy, &mut vmas, writer, cfg, prefix, parent)?;
    *images = new;
    Ok(bytes)
}

/// Copies the memory of running process `pid` into `writer` in rounds. On failure the tracker
/// is closed again and the process runs on, untouched (the chunks already written are left to
/// the store's garbage collection).
pub fn process<W: ChunkSink>(pid: i32, writer: &mut W, cfg: &ChunkerConfig) -> Result<PreCopiedProcess> {
    let t0 = Instant::now();
    let armed = arm(pid)?;
    let arm_stop_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut pre = PreCopiedProcess { armed, images: Vec::new(), rounds: 0, bytes_read: 0, arm_stop_ms, rounds_ms: 0.0 };
    let tr = Instant::now();
    loop {
        let n = pre.rounds;
        let round_bytes = round(pid, n, &mut pre.armed, &mut pre.images, "", writer, cfg)?;
        pre.bytes_read += round_bytes;
        pre.rounds += 1;
        tracing::debug!(pid, round = n, round_bytes, ms = tr.elapsed().as_secs_f64() * 1e3, "pre-copy round");
        if pre.rounds > MAX_EXTRA_ROUNDS || (n > 0 && round_bytes < SMALL_ROUND_BYTES) {
            break;
        }
    }
    pre.rounds_ms = tr.elapsed().as_secs_f64() * 1e3;
    Ok(pre)
}

/// What the rounds copied of a process tree. Dropping it closes the trackers.
pub struct PreCopiedTree {
    /// The trackers of the processes whose pages the images hold (by host pid).
    pub armed: HashMap<i32, Armed>,
    /// Their memory as of the last round, named as the group checkpoint names it.
    pub images: Vec<Image>,
    /// Rounds run (round 0 included).
    pub rounds: u32,
    /// Bytes read while the tree ran.
    pub bytes_read: u64,
    /// How long the arming stop took, ms.
    pub arm_stop_ms: f64,
    /// How long the rounds took, ms.
    pub rounds_ms: f64,
}

impl Drop for PreCopiedTree {
    fn drop(&mut self) {
        for a in self.armed.values() {
            if let Err(e) = dirty::disarm(a) {
                tracing::warn!(pid = a.pid, error = %e, "could not close the pre-copy's tracker");
            }
        }
    }
}

impl PreCopiedTree {
    /// A short description for a checkpoint's `mode`.
    pub fn describe(&self, stopped_bytes: u64) -> String {
        format!(
            "pre-copied while running ({} rounds, {} MiB in {:.0} ms, arming stop {:.0} ms, {} processes), stopped for the pages written since ({} KiB)",
            self.rounds,
            self.bytes_read >> 20,
            self.rounds_ms,
            self.arm_stop_ms,
            self.armed.len(),
            stopped_bytes >> 10
        )
    }
}

/// Copies the memory of the running process tree rooted at `root` (host pid) into `writer` in
/// rounds. Processes that cannot be armed, or whose pages a round could not read, are left out
/// (the final stop saves them whole); processes started meanwhile are not in it either.
pub fn tree<W: ChunkSink>(root: i32, writer: &mut W, cfg: &ChunkerConfig) -> Result<PreCopiedTree> {
    let t0 = Instant::now();
    let backend = dirty::default_backend()?;
    let mut pre = PreCopiedTree { armed: HashMap::new(), images: Vec::new(), rounds: 0, bytes_read: 0, arm_stop_ms: 0.0, rounds_ms: 0.0 };
    let mut members: Vec<(i32, String, Vec<Image>)> = Vec::new();
    {
        let (_, frozen) = crate::group::freeze_tree(root)?;
        for f in &frozen {
            let pid = f.pid();
            let r = (|| {
                let vpid = crate::process::vpid_of(pid)?;
                let vmas = mem::save_layout(pid)?;
                let mut inj = Injector::new(pid, pid, find_syscall_insn(pid)?)?;
                let armed = dirty::arm(pid, &mut inj, backend, Keeper::Here, &vmas);
                let finished = inj.finish();
                let armed = armed?;
                if let Err(e) = finished {
                    let _ = dirty::disarm(&armed);
                    return Err(e);
                }
                Ok((vpid, armed))
            })();
            match r {
                Ok((vpid, armed)) => {
                    pre.armed.insert(pid, armed);
                    members.push((pid, crate::group::GroupImage::prefix(vpid), Vec::new()));
                }
                Err(e) => tracing::warn!(pid, error = %e, "dirty tracking not armed for the pre-copy; the process is saved whole while stopped"),
            }
        }
    }
    pre.arm_stop_ms = t0.elapsed().as_secs_f64() * 1e3;
    let tr = Instant::now();
    loop {
        let n = pre.rounds;
        let mut round_bytes = 0;
        members.retain_mut(|(pid, prefix, images)| {
            let armed = pre.armed.get_mut(pid).expect("armed member");
            match round(*pid, n, armed, images, prefix, writer, cfg) {
                Ok(b) => {
                    round_bytes += b;
                    true
                }
                Err(e) => {
                    // Its pages since the last round are not in its images: saved whole.
                    tracing::debug!(pid = *pid, error = %e, "pre-copy round failed; the process is saved whole while stopped");
                    if let Some(a) = pre.armed.remove(pid) {
                        let _ = dirty::disarm(&a);
                    }
                    false
                }
            }
        });
        pre.bytes_read += round_bytes;
        pre.rounds += 1;
        tracing::debug!(root, round = n, round_bytes, ms = tr.elapsed().as_secs_f64() * 1e3, "pre-copy round");
        if pre.rounds > MAX_EXTRA_ROUNDS || (n > 0 && round_bytes < SMALL_ROUND_BYTES) {
            break;
        }
    }
    pre.images = members.into_iter().flat_map(|(_, _, images)| images).collect();
    pre.rounds_ms = tr.elapsed().as_secs_f64() * 1e3;
    Ok(pre)
}
