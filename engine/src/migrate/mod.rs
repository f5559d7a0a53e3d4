//! Live migration: a running pod moves to another host in pre-copy rounds, with its pids,
//! hostname, address and MAC, and leaves nothing behind.
//!
//! ## Parts
//! - [`channel`]: one protocol over any byte stream: a versioned preamble, a Noise IK handshake
//!   with static keys ([`keys`]), then encrypted, authenticated records.
//! - [`wire`]: the messages (fixed 8-byte headers, bounded bodies, chunks checked by id).
//! - [`transport`]: the byte streams: `ssh://`, `tcp://`, `--via COMMAND`, and the listener.
//! - [`precopy`]: the pre-copy loop: rounds of dirty pages read from the running pod into a
//!   [`precopy::RoundSink`] (the remote destination here; a store's writer for a checkpoint
//!   taken the same way).
//! - [`source`]: the source's state machine (rounds, convergence, final round, handover,
//!   recovery); [`dest`]: the destination's (checks, the prepared pod, restore, handover, sweep);
//!   [`skeleton`]: the prepared pod; [`spool`]: the chunks a session received or offered;
//!   [`cache`]: the chunks of the pods that last left or arrived, found again by a later migration;
//!   [`copydir`]: directories carried with the pod (`--copy`);
//!   [`journal`]: what each side records so that an interrupted migration can be resolved.
//!
//! ## The protocol
//! ```text
//!  SOURCE                                                  DESTINATION
//!  ──────                                                  ───────────
//!  connect, preamble + Noise IK ─────────────────────────▶ accept: unknown key → close, nothing read
//!  Offer (name, address, MAC, files, sizes) ─────────────▶ checks: name and address free, files
//!                                    ◀──────────────────── there, space, zap-init ... Accept | Refuse(list)
//!  ┌ round n (pod running; n = 0: arm the trackers, all memory)
//!  │ Round(shape, layouts) ──────────────────────────────▶ (re)build the prepared pod if needed,
//!  │                                                        patch each process's layout
//!  │ Member(pid, whole ranges)                              for each process:
//!  │   Ids(chunk ids) ───────────────────────────────────▶   which does the spool or store lack?
//!  │                                    ◀─────────────────── Need(bits)
//!  │   Chunk × needed ───────────────────────────────────▶   check BLAKE3, spool
//!  │   Put(extents) ─────────────────────────────────────▶   write pages into the prepared process
//!  │ MemberEnd, … RoundEnd ──────────────────────────────▶
//!  └                                    ◀─────────────────── RoundAck (had chunks, written, ms)
//!    until the final round fits --max-downtime, the dirty set stops shrinking, or --max-rounds
//!  freeze, save (group, IPC, console)
//!  Round(last) … RoundEnd, Final(pod image) ─────────────▶ patch, restore the rest into the
//!                                                          prepared processes; freeze its cgroup,
//!                                    ◀─────────────────── Ready          network detached
//!  journal "committing", keep frozen,
//!  take the pod's veth off the LAN
//!  Commit ───────────────────────────────────────────────▶ journal "committed"; attach, thaw,
//!                                    ◀─────────────────── Running        gratuitous ARP
//!  end the pod (no residue), journal gone
//!  Ended ────────────────────────────────────────────────▶ (--keep-checkpoint: commit to the store)
//!                                    ◀─────────────────── Done
//! ```
//! Source states: `connected → offered → precopy(n) → final → committing → ended`. Any failure
//! before `Commit` is sent resumes the pod where it was (the destination discards everything on
//! its own when the link drops, or its supervisor / next start does when it was killed). After
//! `Commit` is sent and before `Running` arrives the outcome is unknown: the source keeps the
//! pod frozen and off the LAN and records it; `zap migrate --recover POD` asks the destination
//! (`Query` → `Answer`) and ends the pod (the destination committed) or resumes it (it did not).
//!
//! Destination states: `accepted → receiving(n) → prepared → committed → done`, or
//! `discarded` from any state before `committed`.
//!
//! ## Downtime
//! The destination builds the pod's processes bare during round 0 and writes every round's pages
//! straight into them ([`skeleton`]; a round's cost is what it carries: extents are found by
//! binary search); the final round writes only the last dirty pages and restores the non-memory
//! state, so its cost does not grow with the pod's memory. At the source the stop does not read
//! what grows with memory either: each process's layout is the last round's where
//! `/proc/PID/maps` shows it unchanged ([`crate::mem::layout_reusing`]: no `/proc/PID/smaps`,
//! whose read walks every page table), its flags checked against smaps in a thread beside the
//! rest of the final round, before `Commit` (a flag changed meanwhile fails the migration, and
//! the pod runs on); the last dirty pages come from `PAGEMAP_SCAN` (written pages, and pages no
//! longer present), without reading the pagemap of clean memory; pages that held nothing at the
//! last round and were not written since are taken as still absent without reading their
//! pagemap entries ([`crate::mem::CopyPlan::absent`]: a pod that arrived by migration has a hole
//! per zero run, and the final save of a 4 GiB one read 32,768 of them). What is left that grows
//! with memory is the kernel's own walk of the page tables in those scans. The pre-copy rounds
//! keep a process's layout the same way (its flags checked against smaps by a thread beside the
//! round, [`precopy::PodReader::settle`]), and the pod's interface configuration is read beside
//! the rounds, not before the stop (its three runs of `ip` took up to a second under load, which
//! the pod spent writing pages the final round then carried). A pod whose processes made
//! mounts, sub-cgroups or namespaces is rebuilt in the final round (a restore's cost). Both sides
//! log each step of the final round with its time since the stop (`RUST_LOG=zap_engine=debug`).
pub mod cache;
pub mod channel;
pub mod copydir;
pub mod dest;
pub mod journal;
pub mod keys;
pub mod precopy;
pub mod skeleton;
pub mod source;
pub mod spool;
pub mod transport;
pub mod wire;

use serde::Serialize;

/// Result of migration steps.
pub type Result<T, E = MigrateError> = std::result::Result<T, E>;

/// What went wrong in a migration; each names the step.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// An engine step failed.
    #[error(transparent)]
    Engine(#[from] crate::EngineError),
    /// A store step failed.
    #[error(transparent)]
    Store(#[from] zap_store::StoreError),
    /// A step on an object failed.
    #[error("{step} ({object}): {detail}")]
    Step {
        /// The step.
        step: String,
        /// Its object.
        object: String,
        /// What went wrong.
        detail: String,
    },
    /// The link to the peer failed.
    #[error("{step}: link lost: {detail}")]
    Link {
        /// The step.
        step: String,
        /// What happened.
        detail: String,
    },
    /// Authentication failed.
    #[error("{step}: authentication failed: {detail}")]
    Auth {
        /// The step.
        step: String,
        /// Why.
        detail: String,
    },
    /// The peer speaks another protocol version.
    #[error("handshake: the peer speaks zap migration protocol version {theirs}, this zap speaks version {ours}")]
    Version {
        /// Ours.
        ours: u16,
        /// Theirs.
        theirs: u16,
    },
    /// A message or chunk is damaged.
    #[error("{step}: damaged data: {detail}")]
    Corrupt {
        /// The step.
        step: String,
        /// What was wrong.
        detail: String,
    },
    /// The peer reported a failure.
    #[error("the other side failed at {step}: {detail}")]
    Peer {
        /// Its step.
        step: String,
        /// What went wrong there.
        detail: String,
    },
    /// The destination refused the pod.
    #[error("handshake: the destination cannot take the pod:\n  - {}", .0.join("\n  - "))]
    Refused(Vec<String>),
    /// The outcome of the handover is unknown.
    #[error("handover: {detail}; the pod stays frozen here and off the network: run `zap migrate --recover {pod}` to resolve it")]
    Unknown {
        /// The pod.
        pod: String,
        /// What happened.
        detail: String,
    },
}

/// A [`MigrateError::Step`].
pub fn mig_err(step: impl Into<String>, object: impl std::fmt::Display, detail: impl std::fmt::Display) -> MigrateError {
    MigrateError::Step { step: step.into(), object: object.to_string(), detail: detail.to_string() }
}

/// Figures of one round.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RoundReport {
    /// Round number.
    pub n: u32,
    /// The final round (pod stopped).
    pub last: bool,
    /// Pages read (dirty pages, or all pages in round 0 and for untracked memory).
    pub pages: u64,
    /// Of them, pages the tracker reported written since the previous round.
    pub dirty_pages: u64,
    /// Chunks offered.
    pub chunks: u64,
    /// Chunks the destination had already.
    pub had_chunks: u64,
    /// Chunk bytes sent (as stored: compressed where that pays).
    pub chunk_bytes: u64,
    /// Bytes on the wire this round (records, both ways).
    pub wire_bytes: u64,
    /// Round time, ms.
    pub ms: f64,
    /// Dirty rate of the pod, bytes/s (pages written per second since the previous round).
    pub dirty_rate: f64,
    /// Rate at which memory went through the round (read, chunked, sent, written), bytes/s.
    pub mem_rate: f64,
    /// Link throughput this round, bytes/s.
    pub link_rate: f64,
    /// The pod's CPU share allowed by auto-converge (1.0 = not throttled).
    pub cpu_share: f64,
    /// The destination rebuilt its prepared pod this round, and why.
    pub rebuilt: Option<String>,
}

/// What a migration did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Session id.
    pub session: String,
    /// The pod at the source, and its name at the destination.
    pub pod: String,
    /// Its name at the destination.
    pub name: String,
    /// Its address.
    pub ip: Option<String>,
    /// The rounds.
    pub rounds: Vec<RoundReport>,
    /// Why pre-copy stopped.
    pub converged: String,
    /// Resident memory of the pod at the start, bytes.
    pub memory_bytes: u64,
    /// Bytes on the wire, both ways.
    pub wire_bytes: u64,
    /// Chunks the destination already had (all rounds).
    pub had_chunks: u64,
    /// Chunks sent.
    pub sent_chunks: u64,
    /// Total time, ms.
    pub total_ms: f64,
    /// Source frozen → destination running (measured at the source when `Running` arrives), ms.
    pub downtime_ms: f64,
    /// The final round's parts: stop, save, send, restore at the destination, commit, ms.
    pub final_stop_ms: f64,
    /// Saving the stopped pod (metadata and last pages), ms.
    pub final_save_ms: f64,
    /// Sending the final round, ms.
    pub final_send_ms: f64,
    /// Restore at the destination, ms.
    pub final_restore_ms: f64,
    /// Commit at the destination (attach, thaw, announce), ms.
    pub commit_ms: f64,
    /// How the destination's memory got in place.
    pub memory: String,
    /// The checkpoint left in the destination's store (`--keep-checkpoint`).
    pub checkpoint: Option<String>,
    /// Only checked (`--dry-run`).
    pub dry_run: bool,
}
