//! Pre-copy for a full checkpoint of a running pod (`--leave-running`): the memory is copied
//! into the store while the pod runs, and the pod stops only for the pages written meanwhile and
//! the rest of its state. A checkpoint is then a migration whose destination is the store: the
//! rounds are the migration's ([`crate::migrate::precopy`]: [`PodReader`] reads them, a
//! [`StoreSink`] lays each round over the last), and the final stop is an ordinary incremental
//! save whose "parent" is what the rounds copied (never committed: the checkpoint is full, every
//! page of it is in its own images).
//!
//! ```text
//!   stop ── arm trackers ── resume            (a moment: write-protect every process)
//!   round 0: read all memory  ─┐
//!   round 1..: pages written   ├─ pod running; chunks go into the checkpoint's store writer
//!   since the last round      ─┘
//!   stop ── save (delta on the rounds' images) ── resume ── commit
//! ```
//!
//! The trackers are armed as for a tracked pod (parked in the pod's init), so they go on after
//! this checkpoint: the next one is incremental. A process whose pages a round could not read
//! (it unmapped them meanwhile) or that was not armed (started since) is saved whole in the
//! final stop; a process that appeared or changed its mappings is handled as an incremental
//! checkpoint handles it (new mappings read whole).
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use zap_chunker::ChunkerConfig;
use zap_store::{ChunkSink, Image};

use super::checkpoint::{PodLock, StoppedPod};
use super::PodState;
use crate::dirty::{self, Armed, Keeper};
use crate::group::GroupImage;
use crate::migrate::precopy::{send_member, PodReader, RoundSink, StoreSink};
use crate::migrate::wire::RoundStart;
use crate::{EngineError, Result};

/// At most this many rounds after round 0: each reads what the previous one left written.
const MAX_EXTRA_ROUNDS: u32 = 3;
/// A round that found fewer written bytes than this is the last one: the final stop reads
/// the rest faster than another round would.
const SMALL_ROUND_BYTES: u64 = 8 << 20;

/// What the rounds copied.
pub struct PreCopied {
    /// The trackers, armed before round 0 (by host pid), parked in the pod's init.
    pub armed: HashMap<i32, Armed>,
    /// Every process's memory as of the last round (images named as a checkpoint's).
    pub images: Vec<Image>,
    /// Rounds run (round 0 included).
    pub rounds: u32,
    /// Bytes read while the pod ran.
    pub bytes_read: u64,
    /// How long the arming stop took, ms.
    pub arm_stop_ms: f64,
    /// How long the rounds took, ms.
    pub rounds_ms: f64,
}

fn pod_err(pod: &str, step: impl Into<String>, detail: impl std::fmt::Display) -> EngineError {
    EngineError::Pod { pod: pod.to_string(), step: step.into(), detail: detail.to_string() }
}

/// Arms a tracker in every stopped process of `stopped` (parked in the pod's init); a process
/// that cannot be armed is left out (the final stop saves it whole).
fn arm_all(stopped: &StoppedPod) -> Result<HashMap<i32, Armed>> {
    let backend = dirty::default_backend()?;
    let init = stopped.state().init_pid;
    let mut armed = HashMap::new();
    for f in stopped.frozen() {
        let pid = f.pid();
        let r = (|| {
            let vpid = crate::process::vpid_of(pid)?;
            let vmas = crate::mem::save_layout(pid)?;
            let mut inj = crate::inject::Injector::new(pid, pid, crate::inject::find_syscall_insn(pid)?)?;
            let r = dirty::arm(pid, &mut inj, backend, Keeper::Process { pid: init, target_vpid: vpid }, &vmas);
            inj.finish()?;
            r
        })();
        match r {
            Ok(a) => {
                armed.insert(pid, a);
            }
            Err(e) => tracing::warn!(pid, error = %e, "dirty tracking not armed for the pre-copy; the process is saved whole while stopped"),
        }
    }
    Ok(armed)
}

fn disarm_all(armed: &mut HashMap<i32, Armed>) {
    for (_, a) in armed.drain() {
        if let Err(e) = dirty::disarm(&a) {
            tracing::warn!(pid = a.pid, error = %e, "could not close a parked userfaultfd");
        }
    }
}

/// Copies the memory of running pod `name` (whose checkpoint lock `lock` the caller holds) into
/// `writer` in rounds; returns the lock and what was copied. On failure every tracker armed here
/// is closed again and the pod runs on (the caller still holds nothing: the lock is dropped).
pub fn run<W: ChunkSink>(root: &Path, name: &str, lock: PodLock, writer: &mut W, cfg: &ChunkerConfig) -> Result<(PodLock, PreCopied)> {
    let t0 = Instant::now();
    let stopped = StoppedPod::stop_locked(root, name, lock)?;
    let state: PodState = stopped.state().clone();
    let armed = arm_all(&stopped);
    let arm_stop_ms = t0.elapsed().as_secs_f64() * 1e3;
    let lock = stopped.into_lock()?;
    let mut armed = armed?;
    let tr = Instant::now();
    let mut reader = PodReader::new(state.clone());
    reader.armed = std::mem::take(&mut armed);
    let rounds = (|| {
        let mut sink = StoreSink::new(writer);
        let (mut n, mut bytes_read) = (0u32, 0u64);
        let last = loop {
            let data = reader.read(n == 0).map_err(|e| pod_err(name, format!("pre-copy round {n}"), e))?;
            let layouts = data.members.iter().map(|m| (m.vpid, m.vmas.clone())).collect();
            let start = RoundStart { n, last: false, shape: data.shape.clone(), main_vpid: state.main_vpid, layouts };
            sink.round_start(&start).map_err(|e| pod_err(name, format!("pre-copy round {n}"), e))?;
            let mut round_bytes = 0;
            for m in &data.members {
                send_member(&mut sink, m.vpid, &m.vmas, &m.copy, cfg).map_err(|e| pod_err(name, format!("pre-copy round {n}, pid {}", m.vpid), e))?;
                round_bytes += m.copy.bytes;
            }
            bytes_read += round_bytes;
            tracing::debug!(pod = name, round = n, round_bytes, ms = tr.elapsed().as_secs_f64() * 1e3, "pre-copy round");
            n += 1;
            if n > MAX_EXTRA_ROUNDS || (n > 1 && round_bytes < SMALL_ROUND_BYTES) {
                break data;
            }
        };
        let mut images = Vec::new();
        for m in &last.members {
            images.append(&mut sink.images(m.vpid, &GroupImage::prefix(m.vpid)).1);
        }
        // Only processes read in the last round have their pages in the images up to the
        // trackers' last collection; the others are saved whole in the final stop.
        let read: Vec<i32> = last.members.iter().map(|m| m.host).collect();
        Ok::<_, EngineError>((images, read, n, bytes_read))
    })();
    let mut armed = std::mem::take(&mut reader.armed);
    drop(reader);
    match rounds {
        Ok((images, read, rounds, bytes_read)) => {
            let mut unread: HashMap<i32, Armed> = armed.extract_if(|pid, _| !read.contains(pid)).collect();
            disarm_all(&mut unread);
            let rounds_ms = tr.elapsed().as_secs_f64() * 1e3;
            Ok((lock, PreCopied { armed, images, rounds, bytes_read, arm_stop_ms, rounds_ms }))
        }
        Err(e) => {
            disarm_all(&mut armed);
            Err(e)
        }
    }
}
