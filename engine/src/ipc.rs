//! The IPC objects of a pod's IPC namespace: System V shared memory segments (with their
//! contents, stored as images), semaphore sets (with their values) and message queues (with their
//! messages), and POSIX message queues (with their messages and priorities).
//!
//! Segments, sets and queues are recreated in the new namespace with their ids (`shm_next_id`,
//! `sem_next_id`, `msg_next_id`), keys, owners and modes, before any process is restored;
//! processes then attach their segments at their saved addresses
//! ([`crate::mem::Backing::SysvShm`]) and reopen their POSIX queues by name
//! ([`crate::files::FdKind::Mqueue`]). A segment that was marked for removal is marked again once
//! its processes have attached it.
//!
//! System V messages are copied without being taken out (`msgrcv` with `MSG_COPY`, which the
//! kernel has with CONFIG_CHECKPOINT_RESTORE, shown by `/proc/sys/kernel/msg_next_id`; without
//! it a namespace with queues is refused). A queue comes back with its key, id, mode, owner,
//! `msg_qbytes` and its messages in order (type and bytes). POSIX messages can only be read by
//! taking them out: while the pod is stopped each queue is emptied and at once filled again with
//! the same messages and priorities (so it is as it was, in the same order, before anything else
//! of the checkpoint can fail); it comes back with its name, mode, owner, `mq_maxmsg`,
//! `mq_msgsize` and messages. Refused: a POSIX queue with an `mq_notify` registration (emptying
//! and refilling it would fire the notification) and a full one (a sender may be blocked on it,
//! and taking a message would let the sender's in). Not restored: the times, the last sender and
//! receiver pids, creator pids, semaphore undo adjustments (`SEM_UNDO`).
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

/// A System V message queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsgQueue {
    /// Key (0 for IPC_PRIVATE).
    pub key: i32,
    /// Id.
    pub id: i32,
    /// Mode bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Most bytes the queue holds (`msg_qbytes`).
    pub qbytes: u64,
    /// Messages, oldest first: (type, bytes).
    pub messages: Vec<(i64, Vec<u8>)>,
}

/// A POSIX message queue (a file of the namespace's mqueue file system).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixQueue {
    /// Its name, without the leading '/'.
    pub name: String,
    /// Mode bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// `mq_maxmsg`.
    pub maxmsg: i64,
    /// `mq_msgsize`.
    pub msgsize: i64,
    /// Messages in the order they are received: (bytes, priority).
    pub messages: Vec<(Vec<u8>, u32)>,
}

/// The IPC objects of an IPC namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpcState {
    /// Shared memory segments.
    pub shm: Vec<ShmSegment>,
    /// Semaphore sets.
    pub sem: Vec<SemSet>,
    /// System V message queues.
    pub msg: Vec<MsgQueue>,
    /// POSIX message queues.
    pub mq: Vec<PosixQueue>,
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
    type Raw = (Vec<(ShmSegment, Vec<u8>)>, Vec<SemSet>, std::result::Result<Vec<MsgQueue>, String>);
    let (segments, sem, msg): Raw = sys::in_ipc_ns(pid, || {
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
        Ok((segments, sems, read_msg_queues()?))
    })
    .map_err(ipc_err)?;
    let msg = msg.map_err(|detail| EngineError::Proc { pid, detail })?;
    let mq = save_posix_queues(pid)?;
    let mut shm = Vec::new();
    let mut images = Vec::new();
    for (mut seg, data) in segments {
        let (extents, _) = store_run(sink, cfg, 0, &data)?;
        seg.image = format!("{prefix}shm/{}", seg.id);
        images.push(Image { name: seg.image.clone(), kind: ImageKind::Memory, extents });
        shm.push(seg);
    }
    Ok((IpcState { shm, sem, msg, mq }, images))
}

/// The System V message queues of the calling thread's IPC namespace with their messages, read
/// without taking them out; `Err` (a refusal) when there are queues and the kernel cannot copy
/// messages.
fn read_msg_queues() -> std::io::Result<std::result::Result<Vec<MsgQueue>, String>> {
    let text = std::fs::read_to_string("/proc/sysvipc/msg")?;
    let table = rows(&text);
    if table.is_empty() {
        return Ok(Ok(Vec::new()));
    }
    if !std::path::Path::new("/proc/sys/kernel/msg_next_id").exists() {
        return Ok(Err(format!(
            "{} System V message queue(s): reading their messages needs msgrcv(MSG_COPY) and restoring their ids msg_next_id, \
             which this kernel lacks (CONFIG_CHECKPOINT_RESTORE)",
            table.len()
        )));
    }
    let mut out = Vec::new();
    for r in table {
        let id: i32 = num(&r, 1, "msqid")?;
        let qnum: usize = num(&r, 4, "qnum")?;
        let (uid, gid, mode, qbytes, cbytes) = sys::msg_stat(id).map_err(|e| std::io::Error::new(e.kind(), format!("IPC_STAT of message queue {id}: {e}")))?;
        let mut messages = Vec::with_capacity(qnum);
        for i in 0..qnum {
            let m = sys::msg_copy(id, i, cbytes as usize)
                .map_err(|e| std::io::Error::new(e.kind(), format!("copy message {i} of {qnum} of queue {id}: {e}")))?;
            messages.push(m);
        }
        out.push(MsgQueue { key: num(&r, 0, "key")?, id, mode, uid, gid, qbytes, messages });
    }
    Ok(Ok(out))
}

/// Saves the POSIX message queues of the IPC namespace of `pid` (stopped, with every process of
/// the namespace): each is emptied and filled again at once with the same messages (see the
/// module's docs).
fn save_posix_queues(pid: i32) -> Result<Vec<PosixQueue>> {
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::fs::MetadataExt;
    let fail = |step: String, e: &dyn std::fmt::Display| EngineError::Proc { pid, detail: format!("{step}: {e}") };
    // Mounted from a thread that joined the IPC namespace, not from a forked helper: forking Zap
    // copies its page tables, which took 0.2-0.35 s in a migration's final round (pod stopped).
    let ipc = std::fs::File::open(format!("/proc/{pid}/ns/ipc")).map_err(|e| fail("open its IPC namespace".into(), &e))?;
    let fs = crate::sys::ns::in_namespaces(&[(ipc.as_fd(), libc::CLONE_NEWIPC)], false, || crate::sys::mount::make_plain_fs_here("mqueue", "mqueue"))
        .map_err(|e| fail("mount the mqueue file system of its IPC namespace".into(), &e))?;
    let dir = crate::sys::mount::open_at(fs.as_raw_fd(), std::ffi::OsStr::new("."), libc::O_RDONLY | libc::O_DIRECTORY, 0)
        .map_err(|e| fail("open the mqueue file system".into(), &e))?;
    let mut names = crate::sys::mount::list_dir(dir.as_fd()).map_err(|e| fail("list POSIX message queues".into(), &e))?;
    names.sort();
    let mut out = Vec::new();
    for n in names {
        let name = n.to_string_lossy().into_owned();
        let what = format!("POSIX message queue /{name}");
        let q = crate::sys::mount::open_at(dir.as_raw_fd(), &n, libc::O_RDWR | libc::O_NONBLOCK, 0).map_err(|e| fail(format!("open {what}"), &e))?;
        let f = std::fs::File::from(q);
        let meta = f.metadata().map_err(|e| fail(format!("stat {what}"), &e))?;
        // Reading the file gives "QSIZE:.. NOTIFY:.. SIGNO:.. NOTIFY_PID:..".
        let mut status = String::new();
        std::io::Read::read_to_string(&mut &f, &mut status).map_err(|e| fail(format!("read the status of {what}"), &e))?;
        let notify_pid = status.split_whitespace().find_map(|w| w.strip_prefix("NOTIFY_PID:")).and_then(|v| v.parse::<i64>().ok());
        if notify_pid != Some(0) {
            return Err(fail(
                format!("checkpoint {what}"),
                &format!("a process is registered for its notification (mq_notify: {}): not supported", status.trim()),
            ));
        }
        let attr = sys::mq_getattr(&f).map_err(|e| fail(format!("mq_getattr of {what}"), &e))?;
        if attr.curmsgs >= attr.maxmsg {
            return Err(fail(
                format!("checkpoint {what}"),
                &format!("it is full ({} of {} messages): a sender may be blocked on it, and its messages cannot be read without letting it in; not supported", attr.curmsgs, attr.maxmsg),
            ));
        }
        let mut messages = Vec::new();
        let mut taken = Ok(());
        while messages.len() < attr.curmsgs as usize {
            match sys::mq_take(&f, attr.msgsize as usize) {
                Ok(Some(m)) => messages.push(m),
                Ok(None) => break,
                Err(e) => {
                    taken = Err(e);
                    break;
                }
            }
        }
        // Put back what was taken, in the order it came out: the same priorities keep the order.
        for (i, (data, prio)) in messages.iter().enumerate() {
            sys::mq_put(&f, data, *prio).map_err(|e| {
                fail(format!("put message {i} of {} back into {what} (the rest are lost)", messages.len()), &e)
            })?;
        }
        taken.map_err(|e| fail(format!("read the messages of {what}"), &e))?;
        if messages.len() != attr.curmsgs as usize {
            return Err(fail(format!("read the messages of {what}"), &format!("found {} of the {} it holds", messages.len(), attr.curmsgs)));
        }
        out.push(PosixQueue { name, mode: meta.mode() & 0o7777, uid: meta.uid(), gid: meta.gid(), maxmsg: attr.maxmsg, msgsize: attr.msgsize, messages });
    }
    Ok(out)
}

impl IpcState {
    /// True when there is nothing to restore.
    pub fn is_empty(&self) -> bool {
        self.shm.is_empty() && self.sem.is_empty() && self.msg.is_empty() && self.mq.is_empty()
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
            self.restore_msg()?;
            for q in &self.mq {
                let what = format!("POSIX message queue /{}", q.name);
                let f = sys::mq_create(&q.name, q.mode, q.maxmsg, q.msgsize)
                    .map_err(step(format!("create {what} ({} messages of {} bytes)", q.maxmsg, q.msgsize)))?;
                sys::mq_set_owner(&f, q.uid, q.gid, q.mode).map_err(step(format!("set owner and mode of {what}")))?;
                for (i, (data, prio)) in q.messages.iter().enumerate() {
                    sys::mq_put(&f, data, *prio).map_err(step(format!("queue message {i} ({} bytes) on {what}", data.len())))?;
                }
            }
            Ok(())
        })
        .map_err(|e| EngineError::Proc { pid, detail: format!("recreate IPC objects (System V, POSIX message queues): {e}") })
    }

    /// Recreates the System V message queues in the calling thread's IPC namespace with their ids
    /// and messages. A message larger than the namespace's `msgmax` (lowered since it was sent)
    /// is sent with `msgmax` raised for the time of the restore.
    fn restore_msg(&self) -> std::io::Result<()> {
        let step = |what: String| move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{what}: {e}"));
        if self.msg.is_empty() {
            return Ok(());
        }
        let largest = self.msg.iter().flat_map(|q| q.messages.iter().map(|m| m.1.len())).max().unwrap_or(0);
        let msgmax_path = "/proc/sys/kernel/msgmax";
        let msgmax: usize = std::fs::read_to_string(msgmax_path)?.trim().parse().map_err(|_| std::io::Error::other("unreadable msgmax"))?;
        if largest > msgmax {
            std::fs::write(msgmax_path, largest.to_string()).map_err(step(format!("raise msgmax to {largest}")))?;
        }
        let made = (|| {
            for q in &self.msg {
                sys::set_next_id("msg", q.id).map_err(step(format!("set msg_next_id to {}", q.id)))?;
                let id = sys::msg_create(q.key, q.mode).map_err(step(format!("create message queue {}", q.id)))?;
                if id != q.id {
                    return Err(std::io::Error::other(format!("message queue {} came back as {id}", q.id)));
                }
                // Room for every message first (msg_qbytes may have been lowered below what the
                // queue holds), then the saved limit.
                let bytes: u64 = q.messages.iter().map(|m| m.1.len() as u64).sum();
                sys::msg_set(id, q.uid, q.gid, q.mode, q.qbytes.max(bytes)).map_err(step(format!("set owner and size of message queue {id}")))?;
                for (i, (mtype, text)) in q.messages.iter().enumerate() {
                    sys::msg_send(id, *mtype, text).map_err(step(format!("queue message {i} (type {mtype}, {} bytes) on message queue {id}", text.len())))?;
                }
                if bytes > q.qbytes {
                    sys::msg_set(id, q.uid, q.gid, q.mode, q.qbytes).map_err(step(format!("set msg_qbytes of message queue {id}")))?;
                }
            }
            Ok(())
        })();
        if largest > msgmax {
            std::fs::write(msgmax_path, msgmax.to_string()).map_err(step(format!("set msgmax back to {msgmax}")))?;
        }
        made
    }

    /// Marks again for removal the segments that were (once their processes are attached).
    pub fn finish(&self, pid: i32) -> Result<()> {
        let doomed: Vec<i32> = self.shm.iter().filter(|s| s.mode & SHM_DEST != 0).map(|s| s.id).collect();
        if doomed.is_empty() {
            return Ok(());
        }
        sys::in_ipc_ns(pid, || {
            for &id in &doomed {
                sys::shm_remove(id)?;
            }
            Ok(())
        })
        .map_err(|e| EngineError::Proc { pid, detail: format!("mark shared memory for removal: {e}") })
    }
}
