//! Pre-copy of a process's memory (or a tree's) into the store while it runs, for a checkpoint
//! that lets it run on (`zap checkpoint --pid PID [--tree] --leave-running`; pods:
//! [`crate::pod::precopy`], which shares [`PreCopied`] and [`arm_stopped`]).
//!
//! ```text
//!   stop ── arm a tracker per process ── resume   (a moment: write-protect the processes)
//!   round 0: read all memory ─┐
//!   round 1..: pages written  ├─ running; chunks go into the checkpoint's store writer, each
//!   since the last round     ─┘  round's images laid over the last's
//!   stop ── save (deltas on the rounds' images) ── resume ── commit ── close the trackers
//! ```
//!
//! The trackers live in this process ([`Keeper::Here`]) and are closed once the checkpoint is
//! committed (or failed): a process checkpoint keeps no tracker between checkpoints. Each
//! process has its rounds (images named as its checkpoint names them); one that cannot be armed
//! or whose pages a round could not read is left out, and the final stop saves it whole, as it
//! does a process started meanwhile. The images the rounds made are never committed on their
//! own: the checkpoint is full, its images hold every page.
use std::collections::HashMap;
use std::time::Instant;

use zap_chunker::ChunkerConfig;
use zap_store::{ChunkSink, Image};

use crate::dirty::{self, Armed, Backend, Keeper};
use crate::inject::{find_syscall_insn, Injector};
use crate::mem::{self, CopyPlan};
use crate::Result;

/// At most this many rounds after round 0.
pub const MAX_EXTRA_ROUNDS: u32 = 3;
/// A round that read fewer bytes than this is the last one: the final stop reads the rest
/// faster than another round would.
pub const SMALL_ROUND_BYTES: u64 = 8 << 20;

/// What the rounds copied. Dropping it closes the trackers it still holds ([`Self::release`]
/// lets them go without closing them: a pod keeps them for its next checkpoint).
pub struct PreCopied {
    /// The trackers of the processes whose pages the images hold (by host pid).
    pub armed: HashMap<i32, Armed>,
    /// Their memory as of the last round, named as their checkpoint names it.
    pub images: Vec<Image>,
    /// Rounds run (round 0 included).
    pub rounds: u32,
    /// Bytes read while the processes ran.
    pub bytes_read: u64,
    /// How long the arming stop took, ms.
    pub arm_stop_ms: f64,
    /// How long the rounds took, ms.
    pub rounds_ms: f64,
}

impl Drop for PreCopied {
    fn drop(&mut self) {
        for a in self.armed.values() {
            if let Err(e) = dirty::disarm(a) {
                tracing::warn!(pid = a.pid, error = %e, "could not close a pre-copy tracker");
            }
        }
    }
}

impl PreCopied {
    fn new(arm_stop_ms: f64) -> Self {
        PreCopied { armed: HashMap::new(), images: Vec::new(), rounds: 0, bytes_read: 0, arm_stop_ms, rounds_ms: 0.0 }
    }

    /// Lets go of the trackers without closing them (whoever holds copies of them owns them now).
    pub fn release(&mut self) {
        self.armed.clear();
    }

    /// A short description for a checkpoint's `mode`; `stopped_bytes` were read in the final stop.
    pub fn describe(&self, stopped_bytes: u64) -> String {
        format!(
            "pre-copied while running ({} rounds, {} MiB in {:.0} ms, arming stop {:.0} ms, {} processes tracked), stopped for the pages written since ({} KiB)",
            self.rounds,
            self.bytes_read >> 20,
            self.rounds_ms,
            self.arm_stop_ms,
            self.armed.len(),
            stopped_bytes >> 10
        )
    }
}

/// Arms a tracker of `backend` in stopped process `pid`, kept by `keeper`. On failure nothing is
/// left armed.
pub fn arm_stopped(pid: i32, backend: Backend, keeper: Keeper) -> Result<Armed> {
    let vmas = mem::save_layout(pid)?;
    let mut inj = Injector::new(pid, pid, find_syscall_insn(pid)?)?;
    let armed = dirty::arm(pid, &mut inj, backend, keeper, &vmas);
    let finished = inj.finish();
    let armed = armed?;
    if let Err(e) = finished {
        if let Err(e) = dirty::disarm(&armed) {
            tracing::warn!(pid, error = %e, "could not close a tracker");
        }
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
    let plan = if n == 0 { CopyPlan::default() } else { CopyPlan { dirty: Some(&written), base: Some(&base), ..Default::default() } };
    let copy = mem::copy_pages_since(pid, &mut vmas, &plan)?;
    let bytes = copy.bytes;
    let parent = (n > 0).then_some(images.as_slice());
    let (new, _) = mem::store_pages(copy, &mut vmas, writer, cfg, prefix, parent)?;
    *images = new;
    Ok(bytes)
}

/// Copies the memory of running process `pid` (`tree`: and of its descendants, as a group
/// checkpoint names them) into `writer` in rounds. None when it could not start (said in the
/// log): the checkpoint then reads everything while stopped. The chunks already written are
/// left to the store's garbage collection.
pub fn run<W: ChunkSink>(pid: i32, tree: bool, writer: &mut W, cfg: &ChunkerConfig) -> Option<PreCopied> {
    match rounds(pid, tree, writer, cfg) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(pid, error = %e, "pre-copy failed; the memory is read while stopped");
            None
        }
    }
}

fn rounds<W: ChunkSink>(pid: i32, tree: bool, writer: &mut W, cfg: &ChunkerConfig) -> Result<PreCopied> {
    let t0 = Instant::now();
    let backend = dirty::default_backend()?;
    let mut pre = PreCopied::new(0.0);
    // (host pid, image name prefix, images)
    let mut members: Vec<(i32, String, Vec<Image>)> = Vec::new();
    {
        let frozen = if tree { crate::group::freeze_tree(pid)?.1 } else { vec![crate::freeze::Frozen::freeze(pid)?] };
        for f in &frozen {
            let p = f.pid();
            let prefix = if tree { crate::group::GroupImage::prefix(crate::process::vpid_of(p)?) } else { String::new() };
            match arm_stopped(p, backend, Keeper::Here) {
                Ok(a) => {
                    pre.armed.insert(p, a);
                    members.push((p, prefix, Vec::new()));
                }
                Err(e) => tracing::warn!(pid = p, error = %e, "dirty tracking not armed for the pre-copy; the process is saved whole while stopped"),
            }
        }
    }
    pre.arm_stop_ms = t0.elapsed().as_secs_f64() * 1e3;
    let tr = Instant::now();
    loop {
        let n = pre.rounds;
        let mut round_bytes = 0;
        members.retain_mut(|(p, prefix, images)| {
            let armed = pre.armed.get_mut(p).expect("armed member");
            match round(*p, n, armed, images, prefix, writer, cfg) {
                Ok(b) => {
                    round_bytes += b;
                    true
                }
                Err(e) => {
                    // Its pages since the last round are not in its images: saved whole.
                    tracing::debug!(pid = *p, error = %e, "pre-copy round failed; the process is saved whole while stopped");
                    if let Some(a) = pre.armed.remove(p) {
                        let _ = dirty::disarm(&a);
                    }
                    false
                }
            }
        });
        pre.bytes_read += round_bytes;
        pre.rounds += 1;
        tracing::debug!(pid, round = n, round_bytes, ms = tr.elapsed().as_secs_f64() * 1e3, "pre-copy round");
        if members.is_empty() || pre.rounds > MAX_EXTRA_ROUNDS || (n > 0 && round_bytes < SMALL_ROUND_BYTES) {
            break;
        }
    }
    pre.images = members.into_iter().flat_map(|(_, _, images)| images).collect();
    pre.rounds_ms = tr.elapsed().as_secs_f64() * 1e3;
    Ok(pre)
}
