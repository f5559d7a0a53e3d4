//! System V IPC of a pod's IPC namespace: shared memory segments (with their contents, stored as
//! images) and semaphore sets (with their values). Message queues are refused for now.
//!
//! Segments and sets are recreated in the new namespace with their ids (`shm_next_id`,
//! `sem_next_id`), keys, owners and modes, before any process is restored; processes then attach
//! their segments at their saved addresses ([`crate::mem::Backing::SysvShm`]). A segment that
//! was marked for removal is marked again once its processes have attached it. Not restored:
//! semaphore undo adjustments (`SEM_UNDO`) and the segments' times and creator pids.
use serde::{Deserialize, Serialize};
use zap_chunker::ChunkerConfig;
use zap_store::{materialize, store_run, ChunkSink, Image, ImageKind, ImageStore};

use crate::sys::ipc as sys;
use crate::{EngineError, Result};

/// A shared memory segment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShmSegment {
    /// Key (0 for IPC_PRIVATE).
    pub key: i32,
    /// Id.
    pub id: i32,
    /// Mode bits (SHM_DEST included).
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Image holding its contents.
    pub image: String,
}

/// A semaphore set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SemSet {
    /// Key.
    pub key: i32,
    /// Id.
    pub id: i32,
    /// Mode bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Values.
    pub values: Vec<u16>,
}

/// The System V IPC objects of an IPC namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpcState {
    /// Shared memory segments.
    pub shm: Vec<ShmSegment>,
    /// Semaphore sets.
    pub sem: Vec<SemSet>,
}

const SHM_DEST: u32 = 0o1000;

fn rows(text: &str) -> Vec<Vec<&str>> {
    text.lines().skip(1).map(|l| l.split_whitespace().collect::<Vec<_>>()).filter(|r| r.len() >= 4).collect()
}

fn num<T: std::str::FromStr>(row: &[&str], i: usize, what: &str) -> std::io::Result<T> {
    row.get(i).and_then(|v| v.parse().ok()).ok_or_else(|| std::io::Error::other(format!("unreadable {what} in {row:?}")))
}

/// Reads the IPC objects of the IPC namespace of process `pid` (stopped, with the rest of its
/// pod), storing segment contents through `sink`; returns them and the images of the contents.
pub fn save<W: ChunkSink>(pid: i32, sink: &mut W, cfg: &ChunkerConfig) -> Result<(IpcState, Vec<Image>)> {
    save_prefixed(pid, sink, cfg, "ipc/")
}

/// Like [`save`], naming the images of segment contents `{prefix}shm/{id}` (one prefix per IPC
/// namespace saved in one checkpoint).
pub fn save_prefixed<W: ChunkSink>(pid: i32, sink: &mut W, cfg: &ChunkerConfig, prefix: &str) -> Result<(IpcState, Vec<Image>)> {
    let ipc_err = |e: std::io::Error| EngineError::Proc { pid, detail: format!("read System V IPC objects: {e}") };
    type Raw = (Vec<(ShmSegment, Vec<u8>)>, Vec<SemSet>, usize);
    let (segments, sem, queues): Raw = sys::in_ipc_ns(pid, || {
        let mut segments = Vec::new();
        for r in rows(&std::fs::read_to_string("/proc/sysvipc/shm")?) {
            let seg = ShmSegment {
                key: num(&r, 0, "key")?,
                id: num(&r, 1, "shmid")?,
                mode: u32::from_str_radix(r[2], 8).map_err(|_| std::io::Error::other("unreadable shm mode"))?,
                size: num(&r, 3, "size")?,
                uid: num(&r, 7, "uid")?,
                gid: num(&r, 8, "gid")?,
                image: String::new(),
            };
            let data = sys::shm_read(seg.id, seg.size as usize)?;
            segments.push((seg, data));
        }
        let mut sems = Vec::new();
        for r in rows(&std::fs::read_to_string("/proc/sysvipc/sem")?) {
            let id: i32 = num(&r, 1, "semid")?;
            let nsems: usize = num(&r, 3, "nsems")?;
            sems.push(SemSet {
                key: num(&r, 0, "key")?,
                id,
                mode: u32::from_str_radix(r[2], 8).map_err(|_| std::io::Error::other("unreadable sem mode"))?,
                uid: num(&r, 4, "uid")?,
                gid: num(&r, 5, "gid")?,
                values: sys::sem_getall(id, nsems)?,
            });
        }
        let queues = rows(&std::fs::read_to_string("/proc/sysvipc/msg")?).len();
        Ok((segments, sems, queues))
    })
    .map_err(ipc_err)?;
    if queues > 0 {
        return Err(EngineError::Proc { pid, detail: format!("{queues} System V message queue(s): not supported yet") });
    }
    let mut shm = Vec::new();
    let mut images = Vec::new();
    for (mut seg, data) in segments {
        let (extents, _) = store_run(sink, cfg, 0, &data)?;
        seg.image = format!("{prefix}shm/{}", seg.id);
        images.push(Image { name: seg.image.clone(), kind: ImageKind::Memory, extents });
        shm.push(seg);
    }
    Ok((IpcState { shm, sem }, images))
}

impl IpcState {
    /// True when there is nothing to restore.
    pub fn is_empty(&self) -> bool {
        self.shm.is_empty() && self.sem.is_empty()
    }

    /// Recreates the objects in the (new, empty) IPC namespace of process `pid`, with their ids.
    pub fn restore<S: ImageStore>(&self, store: &S, images: &[Image], pid: i32) -> Result<()> {
        let mut contents = Vec::new();
        for seg in &self.shm {
            let img = images.iter().find(|i| i.name == seg.image).ok_or_else(|| EngineError::Proc {
                pid,
                detail: format!("checkpoint lacks image {} of shared memory segment {}", seg.image, seg.id),
            })?;
            let mut buf = vec![0u8; seg.size as usize];
            materialize(store, &img.extents, 0, &mut buf)?;
            contents.push(buf);
        }
        sys::in_ipc_ns(pid, || {
            let step = |what: String| move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{what}: {e}"));
            for (seg, data) in self.shm.iter().zip(&contents) {
                sys::set_next_id("shm", seg.id).map_err(step(format!("set shm_next_id to {}", seg.id)))?;
                let id = sys::shm_create(seg.key, seg.size as usize, seg.mode, data)
                    .map_err(step(format!("create segment {} ({} bytes)", seg.id, seg.size)))?;
                if id != seg.id {
                    return Err(std::io::Error::other(format!("shared memory segment {} came back as {id}", seg.id)));
                }
                sys::shm_set_owner(id, seg.uid, seg.gid, seg.mode).map_err(step(format!("set owner of segment {id}")))?;
            }
            for set in &self.sem {
                sys::set_next_id("sem", set.id).map_err(step(format!("set sem_next_id to {}", set.id)))?;
                let id = sys::sem_create(set.key, &set.values, set.uid, set.gid, set.mode)
                    .map_err(step(format!("create semaphore set {}", set.id)))?;
                if id != set.id {
                    return Err(std::io::Error::other(format!("semaphore set {} came back as {id}", set.id)));
                }
            }
            Ok(())
        })
        .map_err(|e| EngineError::Proc { pid, detail: format!("recreate System V IPC objects: {e}") })
    }

    /// Marks again for removal the segments that were (once their processes are attached).
    pub fn finish(&self, pid: i32) -> Result<()> {
        if !self.shm.iter().any(|s| s.mode & SHM_DEST != 0) {
            return Ok(());
        }
        sys::in_ipc_ns(pid, || {
            for seg in self.shm.iter().filter(|s| s.mode & SHM_DEST != 0) {
                sys::shm_remove(seg.id)?;
            }
            Ok(())
        })
        .map_err(|e| EngineError::Proc { pid, detail: format!("mark shared memory for removal: {e}") })
    }
}
