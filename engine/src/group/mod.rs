//! A group of processes checkpointed and restored together: the process tree with its
//! parent/child links, sessions and process groups, zombies, and what the processes share (open
//! file descriptions, pipes between them, shared anonymous memory).
//!
//! ## Saving
//! The caller stops every process first (a pod freezes its cgroup; [`freeze_tree`] seizes a tree
//! with ptrace). [`save`] orders the members parents first (the restore order), reads each
//! member's place in the tree from `/proc/PID/status` (`NSpid`, `NSpgid`, `NSsid`, `PPid`) and
//! saves each live member with [`crate::process::save_process`] through one
//! [`crate::files::SaveContext`], so descriptions shared between members are saved once. A zombie is
//! saved as its pid and exit status.
//!
//! ## Restoring ([`restore`])
//! A pid namespace init (ours) creates the *top* members (those whose parent is not in the
//! group) with their saved pids. Then, for each member in order (parents first): it is taken
//! over, its address space cleared (but for the ranges it inherits from its parent, see
//! [`crate::mem::cow`]), it calls `setsid` if it led a session, creates with `clone3` +
//! `set_tid` the children that inherit none of its memory (they start as copies of the bare
//! process and wait in the trampoline's `pause` loop until they are taken over in turn), gets its
//! memory (shared anonymous memory is mapped from the first member that has it, through
//! `/proc/VPID/map_files`), creates the children that share pages with it copy-on-write, so they
//! inherit them, and sets what changes what `fork` copies (`MADV_DONTFORK`, `MADV_WIPEONFORK`)
//! and seals. When the whole tree exists: every member's threads, fds in save order (shared
//! descriptions are taken from the member that recreated them), pipe keepers closed, process
//! groups joined (leaders first), zombies made to exit with their status, and finally every
//! member's attributes, credentials and CPU state.
//! All members are released together, children first: a member saved in a job-control stop is
//! stopped again with its signal, and its parent, still held, collects the stop again (an
//! injected `waitid`) if it had collected it before the checkpoint (which the save asked it with
//! `waitid(WNOWAIT)`), and loses the SIGCHLD the stop queued unless one was pending for it then;
//! so the parent's `waitpid(WUNTRACED)` and pending signals are as they were.
//! The caller's [`TargetSpawner`] is told when each member has been taken over (before it creates
//! its children: a pod puts it into namespaces of its own there) and before the members are
//! released (a pod moves them into their cgroups).
//!
//! A migration's destination builds the tree before it knows the memory ([`BareTree::build`]:
//! every member taken over and cleared, no child inheriting pages, so the source saves with
//! [`SaveOptions::no_cow`]), fills the memory in round by round, and finishes with [`complete`]
//! ([`crate::process::ProcRestore::memory_in_place`] for what is left of the memory); both paths
//! share the steps after the memory and [`BareTree::finish`], which releases the members.
//!
//! Limits: a member whose session or process group leader is outside the group, or that is in a
//! session it did not create and its parent does not share, is restored in its parent's
//! session/group with a warning.
mod restore;
mod save;

use serde::{Deserialize, Serialize};

use crate::process::ProcessImage;
use crate::Result;

pub use restore::{clone_child, complete, group_trampoline, has_ctty, restore, restore_in, restore_in_lazy, restore_lazy, take_ctty, wait_child, BareTree, Built, GroupRestored, Taken, TargetSpawner, TreeShape};
pub use save::{freeze_tree, is_zombie_pid, save, shape_of, tree_of, SaveOptions, SavedGroup, Tracking};

/// Version of the [`GroupImage`] encoding (first byte of the state blob). 3: POSIX message queue
/// fds (`FdKind::Mqueue`, appended: version 2 blobs still read). 4: what `SO_PEERCRED` showed on
/// each unix socket, and timerfds armed with settime flags (`FdKind::TimerfdAt`, appended);
/// versions 2 and 3 read without either.
pub const GROUP_IMAGE_VERSION: u8 = 4;
/// Manifest kind of a process-group checkpoint.
pub const KIND: &str = "group";

/// What a member is at checkpoint time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    /// A live process.
    Live(Box<ProcessImage>),
    /// A zombie waiting to be reaped by its parent.
    Zombie {
        /// Its wait status (exit code << 8, or the killing signal).
        status: i32,
        /// Its name.
        comm: String,
    },
}

/// One process of the group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its pid in the group's PID namespace.
    pub vpid: i32,
    /// Its parent's vpid, or 0 when the parent is not in the group (the namespace init, or a
    /// process outside).
    pub ppid: i32,
    /// Process group id (vpid; 0 when outside the namespace).
    pub pgid: i32,
    /// Session id (vpid; 0 when outside the namespace).
    pub sid: i32,
    /// Its state.
    pub state: MemberState,
}

impl Member {
    /// The process image of a live member.
    pub fn image(&self) -> Option<&ProcessImage> {
        match &self.state {
            MemberState::Live(i) => Some(i),
            MemberState::Zombie { .. } => None,
        }
    }
}

/// Everything about a group except page contents: members in restore order (parents first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupImage {
    /// The members.
    pub members: Vec<Member>,
}

impl GroupImage {
    /// Encodes into a manifest state blob.
    pub fn encode(&self) -> Vec<u8> {
        crate::blob::encode(GROUP_IMAGE_VERSION, self)
    }

    /// Decodes a manifest state blob.
    pub fn decode(blob: &[u8]) -> Result<Self> {
        crate::blob::decode_compatible(GROUP_IMAGE_VERSION, &[2, 3], "group image", blob)
    }

    /// Members whose parent is not in the group, in order.
    pub fn top(&self) -> Vec<i32> {
        self.members.iter().filter(|m| m.ppid == 0).map(|m| m.vpid).collect()
    }

    /// Image name prefix of member `vpid`'s memory.
    pub fn prefix(vpid: i32) -> String {
        format!("p{vpid}/")
    }
}

/// Chunks and stores every live member's copied pages into `sink`, as images named
/// `p{vpid}/mem/{start:x}` (recorded in the members' mappings); members saved as deltas are laid
/// over their images in `parent`. Returns the images and the bytes newly stored.
pub fn store_memory<W: zap_store::ChunkSink>(
    saved: &mut SavedGroup,
    sink: &mut W,
    cfg: &zap_chunker::ChunkerConfig,
    parent: Option<&[zap_store::Image]>,
) -> Result<(Vec<zap_store::Image>, u64)> {
    let mut images = Vec::new();
    let mut new_bytes = 0;
    for (vpid, copy) in std::mem::take(&mut saved.copies) {
        let member = saved.image.members.iter_mut().find(|m| m.vpid == vpid).expect("copy of a member");
        let MemberState::Live(img) = &mut member.state else { continue };
        let (mut imgs, fig) = crate::mem::store_pages(copy, &mut img.vmas, sink, cfg, &GroupImage::prefix(vpid), parent)?;
        new_bytes += fig.new_bytes;
        images.append(&mut imgs);
        images.append(&mut crate::files::store_contents(&mut img.fds, &mut img.vmas, sink, cfg, &GroupImage::prefix(vpid))?);
    }
    Ok((images, new_bytes))
}

/// Checkpoints the process tree rooted at `root` (host pid) as a group: stopped with ptrace,
/// saved, stored; then killed, or, with `leave_running`, released as soon as its pages are
/// copied. For trees outside a pod (a pod checkpoint freezes its cgroup instead).
pub fn checkpoint_tree<S: zap_store::ImageStore>(
    store: &S,
    root: i32,
    opts: &crate::process::CheckpointOptions,
) -> Result<crate::process::CheckpointReport> {
    let t0 = std::time::Instant::now();
    let mut writer = store.writer()?;
    // A tree that runs on has its memory copied while it runs first.
    let mut pre = if opts.leave_running && !opts.no_precopy { crate::precopy::run(root, true, &mut writer, &opts.chunker) } else { None };
    let tf = std::time::Instant::now();
    let ((pids, frozen), live, netlock) = crate::process::freeze_locked(root, opts.tcp_close, || {
        let (pids, frozen) = freeze_tree(root)?;
        let live: Vec<i32> = pids.iter().copied().filter(|&p| !is_zombie_pid(p)).collect();
        Ok(((pids, frozen), live))
    })?;
    // Pre-copied: each tracked process's save is a delta on what the rounds copied (the images
    // move into the tracking; the trackers stay in `pre` too, which closes them at the end).
    let mut tracking =
        pre.as_mut().map(|p| Tracking { armed: p.armed.clone(), parent_images: std::mem::take(&mut p.images), ..Default::default() });
    let mut saved = save(&pids, &frozen, SaveOptions { tcp_close: opts.tcp_close, network_locked: true, no_cow: false }, tracking.as_mut())?;
    for m in &saved.image.members {
        if let Some(img) = m.image() {
            crate::mem::refuse_sysv_outside_pod(m.vpid, &img.vmas)?;
        }
    }
    let stopped_bytes = saved.bytes_read;
    let bytes_read = saved.bytes_read + pre.as_ref().map_or(0, |p| p.bytes_read);
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
    let (images, _) = store_memory(&mut saved, &mut writer, &opts.chunker, tracking.as_ref().map(|t| t.parent_images.as_slice()))?;
    let name = opts.name.clone().unwrap_or_else(|| {
        saved.image.members.first().and_then(|m| m.image()).map(|i| i.attrs.comm.clone()).unwrap_or_else(|| "group".into())
    });
    let mut manifest = zap_store::Manifest::new(name, KIND);
    manifest.parent = opts.parent;
    manifest.labels.insert("pid".into(), root.to_string());
    manifest.labels.insert("processes".into(), saved.image.members.len().to_string());
    manifest.images = images;
    manifest.state = saved.image.encode();
    let summary = zap_store::ChunkSink::commit(writer, manifest)?;
    let total_ms = t0.elapsed().as_secs_f64() * 1e3;
    if let Some(frozen) = frozen {
        // Closing the connections must send nothing; they stay locked until restored.
        crate::sockets::silence_tcp(&live)?;
        let netlock = crate::process::keep_connections_locked(netlock, &live, root)?;
        if let Some(l) = netlock {
            l.keep();
        }
        for &pid in pids.iter().rev() {
            let _ = crate::sys::clone::kill(pid, libc::SIGKILL);
        }
        for f in frozen {
            f.forget();
        }
    }
    let frozen_ms = if opts.leave_running { copied_ms } else { total_ms };
    let mut mode = match &pre {
        Some(p) => format!("full; {}", p.describe(stopped_bytes)),
        None => "full".into(),
    };
    if let Some(t) = &tracking {
        for (vpid, why) in &t.lost {
            mode.push_str(&format!("; pid {vpid} whole ({why})"));
        }
        // Trackers of processes gone meanwhile (those of the others close with `pre`).
        for a in &t.dropped {
            let _ = crate::dirty::disarm(a);
        }
    }
    Ok(crate::process::CheckpointReport { summary, frozen_ms, total_ms, bytes_read, mode })
}
