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
use zap_store::ChunkSink;

use super::checkpoint::{PodLock, StoppedPod};
use super::PodState;
use crate::dirty::{self, Keeper};
use crate::group::GroupImage;
use crate::migrate::precopy::{send_member, PodReader, RoundSink, StoreSink};
use crate::migrate::wire::RoundStart;
use crate::precopy::{arm_stopped, PreCopied, MAX_EXTRA_ROUNDS, SMALL_ROUND_BYTES};
use crate::{EngineError, Result};

fn pod_err(pod: &str, step: impl Into<String>, detail: impl std::fmt::Display) -> EngineError {
    EngineError::Pod { pod: pod.to_string(), step: step.into(), detail: detail.to_string() }
}

/// Arms a tracker in every stopped process of `stopped` (parked in the pod's init) into `pre`; a
/// process that cannot be armed is left out (the final stop saves it whole).
fn arm_all(stopped: &StoppedPod, pre: &mut PreCopied) -> Result<()> {
    let backend = dirty::default_backend()?;
    let init = stopped.state().init_pid;
    for f in stopped.frozen() {
        let pid = f.pid();
        match crate::process::vpid_of(pid).and_then(|vpid| arm_stopped(pid, backend, Keeper::Process { pid: init, target_vpid: vpid })) {
            Ok(a) => {
                pre.armed.insert(pid, a);
            }
            Err(e) => tracing::warn!(pid, error = %e, "dirty tracking not armed for the pre-copy; the process is saved whole while stopped"),
        }
    }
    Ok(())
}

/// Copies the memory of running pod `name` (whose checkpoint lock `lock` the caller holds) into
/// `writer` in rounds; returns the lock and what was copied (its trackers are parked in the
/// pod's init: [`PreCopied::release`] them once a tracker file or checkpoint holds them). On
/// failure every tracker armed here is closed again and the pod runs on (the lock is dropped).
pub fn run<W: ChunkSink>(root: &Path, name: &str, lock: PodLock, writer: &mut W, cfg: &ChunkerConfig) -> Result<(PodLock, PreCopied)> {
    let t0 = Instant::now();
    let mut pre = PreCopied { armed: HashMap::new(), images: Vec::new(), rounds: 0, bytes_read: 0, arm_stop_ms: 0.0, rounds_ms: 0.0 };
    let stopped = StoppedPod::stop_locked(root, name, lock)?;
    let state: PodState = stopped.state().clone();
    let armed = arm_all(&stopped, &mut pre);
    let lock = stopped.into_lock();
    pre.arm_stop_ms = t0.elapsed().as_secs_f64() * 1e3;
    let lock = lock?;
    armed?;
    let tr = Instant::now();
    let mut reader = PodReader::new(state.clone());
    // The reader holds the trackers during the rounds (and would close them if dropped early).
    reader.armed = std::mem::take(&mut pre.armed);
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
    pre.armed = std::mem::take(&mut reader.armed);
    drop(reader);
    let (images, read, rounds, bytes_read) = rounds?;
    for (_, a) in pre.armed.extract_if(|pid, _| !read.contains(pid)) {
        if let Err(e) = dirty::disarm(&a) {
            tracing::warn!(pid = a.pid, error = %e, "could not close a parked userfaultfd");
        }
    }
    pre.images = images;
    pre.rounds = rounds;
    pre.bytes_read = bytes_read;
    pre.rounds_ms = tr.elapsed().as_secs_f64() * 1e3;
    Ok((lock, pre))
}
