//! Pre-copy of one process's memory into the store while it runs, for a checkpoint that lets it
//! run on (`zap checkpoint --pid PID --leave-running`; pods: [`crate::pod::precopy`]).
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
//! committed (or failed): a process checkpoint keeps no tracker between checkpoints. The images
//! the rounds made are never committed on their own: the checkpoint is full, its images hold
//! every page.
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
        let mut vmas = mem::save_layout(pid)?;
        // Collected in every round, round 0 too: what is written from here on is reported next.
        let written = dirty::collect(&mut pre.armed, &vmas)?;
        let base = mem::base_runs(&pre.images, "");
        let plan = if n == 0 { CopyPlan::default() } else { CopyPlan { dirty: Some(&written), base: Some(&base), parent: None } };
        let copy = mem::copy_pages_since(pid, &mut vmas, &plan)?;
        let round_bytes = copy.bytes;
        let parent = (n > 0).then_some(pre.images.as_slice());
        let (images, _) = mem::store_pages(copy, &mut vmas, writer, cfg, "", parent)?;
        pre.images = images;
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
