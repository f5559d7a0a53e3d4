//! Lazy restore: the process runs at once, its memory is filled while it runs.
//!
//! ```text
//!  restore (ProcRestore::memory_lazy)            pager (Pager::run, a thread of the restorer)
//!  map every mapping; write the pages of all     serves each fault: the 64 KiB block that holds
//!  but private anonymous ones; create a          the page (chunks read from packs kept open,
//!  userfaultfd in the target (injected),         each checked against its id), UFFDIO_COPY of
//!  take it (pidfd_getfd), register those         its non-zero pages, the zero page elsewhere;
//!  mappings in missing mode; start the pager;    between faults, streams the other blocks in
//!  the rest of the restore; detach: it runs      address order (once the process runs: until
//!  (PagerHandle::running)                        then only faults, each opening the chunks it
//!                                                needs, so the restore keeps the CPU and waits
//!                                                for no bulk lookup; then every pack is opened
//!                                                and the store let go of); when all are in:
//!                                                releases the init's guard, closes the uffd
//! ```
//!
//! A process restored alone has the manifest read without the extent trees of the memory the
//! pager fills ([`zap_store::LocalStore::manifest_deferred`]): a thread reads those while the
//! process is laid out, and the pager takes them before it serves a page
//! ([`Pager::extents_later`]).
//!
//! **The pager is never a weak point.** The namespace's init is created by the restoring thread
//! with `PR_SET_PDEATHSIG` SIGKILL and a guard ([`crate::sys::clone::spawn_pidns_target_guarded`]):
//! if the restorer dies before every page is in, the kernel kills the init, and with it the
//! whole PID namespace; the pager releases the guard only when it is done. A pager that cannot
//! serve a page (a damaged chunk, a mapping moved with `mremap` while loading) kills the
//! namespace rather than let the process read wrong memory. A fork while loading is followed:
//! the child's mappings get a userfaultfd of their own (`UFFD_FEATURE_EVENT_FORK`) and are
//! served from the same image. Faults outside the saved extents (a heap or stack that grew
//! since) get the zero page, as fresh memory would.
//!
//! **Groups and pods** ([`Pagers`]): one pager thread per process, each with its own
//! userfaultfd, started as soon as that process's mappings are registered (parents first, see
//! [`crate::group::restore_in_lazy`]); the group's init has one guard, released once every pager
//! is done. A pod's init is `zap-init`, not our child: it watches the guard itself
//! ([`crate::pod::init`]) and ends the pod on its EOF.
//!
//! **No zero page after a pager's death.** When the pager process dies, the kernel would release
//! its userfaultfds before the init sees the guard's end of file, and a released userfaultfd lets
//! a waiting fault go on with a zero page. So the guard is a pair of unix sockets
//! ([`sysclone::guard_pair`]) and each userfaultfd (the process's, and each forked child's as
//! its fork event comes) is handed to the init ([`sysclone::hold_fd`]), which keeps it open until
//! the pager says done: a pager's death leaves the faults waiting until the init has killed the
//! processes. The cost: in a group, a process whose own pager is done but whose group is still
//! loading waits, should it drop and touch again a lazily restored page, until the last pager
//! is done (the userfaultfd is still open, with nobody to answer).
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use zap_store::pack::ChunkLoc;
use zap_store::{ChunkBytes, ChunkId, Extent, ExtentData, LocalStore};

use crate::sys::{clone as sysclone, uffd};
use crate::{EngineError, Result};

/// Pages are served a block at a time (the chunker's block size).
const BLOCK: u64 = zap_chunker::DEFAULT_CHUNK_SIZE as u64;
const PAGE: u64 = zap_chunker::PAGE_SIZE as u64;

/// One mapping restored lazily.
#[derive(Clone, Debug)]
pub struct LazyRange {
    /// First address.
    pub start: u64,
    /// One past the last.
    pub end: u64,
    /// Its saved extents, in address order (empty until the pager has them, when the image's
    /// tree is read later: [`Pager::extents_later`]).
    pub extents: Vec<Extent>,
    /// The manifest image they come from.
    pub image: String,
}

/// The extents of the images whose trees a thread is still reading, by image name (see
/// [`Pager::extents_later`]).
pub type LaterExtents = std::thread::JoinHandle<Result<HashMap<String, Vec<Extent>>>>;

/// The chunks a pager may need, with pack handles opened while the store was open: the pager
/// does not hold the store once the process runs (other commands can use it while pages stream
/// in), and a pack GC removes meanwhile stays readable through its handle. Until then, a chunk
/// not opened yet is opened from the store when a fault needs it, so the restore does not wait
/// for every chunk's lookup ([`ChunkSource::open_all`], done once the process runs).
pub struct ChunkSource {
    chunks: HashMap<ChunkId, (Arc<File>, PathBuf, ChunkLoc)>,
    store: Option<Arc<LocalStore>>,
}

impl ChunkSource {
    /// Opens the packs of every chunk `ranges` reference not opened yet, then lets go of the store.
    fn open_all(&mut self, ranges: &[LazyRange]) -> Result<()> {
        let Some(store) = self.store.take() else { return Ok(()) };
        let mut ids: Vec<ChunkId> = ranges
            .iter()
            .flat_map(|r| &r.extents)
            .filter_map(|e| match e.data {
                ExtentData::Chunk { id, .. } => Some(id),
                ExtentData::Zero => None,
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.retain(|id| !self.chunks.contains_key(id));
        let opened = store.open_chunks(&ids)?;
        self.chunks.extend(ids.into_iter().zip(opened));
        Ok(())
    }

    fn read(&mut self, id: &ChunkId) -> Result<ChunkBytes> {
        if !self.chunks.contains_key(id) {
            if let Some(store) = &self.store {
                let opened = store.open_chunk(id)?;
                self.chunks.insert(*id, opened);
            }
        }
        let (file, path, loc) = self.chunks.get(id).ok_or_else(|| EngineError::Proc { pid: 0, detail: format!("lazy restore: chunk {id} was not opened") })?;
        Ok(zap_store::read_located(id, file, path, loc)?)
    }
}

/// What a pager did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PagerReport {
    /// Faults served.
    pub faults: u64,
    /// Blocks copied in, on demand or streamed.
    pub blocks: u64,
    /// Bytes copied in.
    pub bytes: u64,
    /// Processes served (the restored one and children it forked while loading).
    pub processes: u64,
    /// Time until every page was in, from the start of the pager, ms.
    pub load_ms: f64,
}

struct Target {
    uffd: OwnedFd,
    served: Vec<bool>,
    cursor: usize,
}

/// Serves the pages of lazily restored mappings (see the module doc).
pub struct Pager {
    targets: Vec<Target>,
    ranges: Vec<LazyRange>,
    /// Blocks in address order: (range index, start, end).
    blocks: Vec<(usize, u64, u64)>,
    /// Chunks, and the store until the process runs and every pack is open (then dropped: the
    /// pager does not keep it).
    source: ChunkSource,
    /// The guard this pager releases when done (a process alone; a group's [`Pagers`] holds its own).
    guard: Option<Arc<OwnedFd>>,
    /// The guard the userfaultfds are handed to the init through ([`sysclone::hold_fd`]).
    holder: Option<Arc<OwnedFd>>,
    init_pid: i32,
    report: PagerReport,
    /// Faults to answer again: the process's layout was changing (a fork event not read yet).
    retry: Vec<(usize, u64)>,
    /// Set once the process runs ([`PagerHandle::running`]): until then only faults are served,
    /// so that streaming does not take the CPU the rest of the restore needs.
    go: Arc<AtomicBool>,
    /// When streaming starts anyway (a restorer that never says the process runs).
    go_anyway: Instant,
    /// The extents still being read: taken before the first page is served.
    later: Option<LaterExtents>,
}

/// How long the pager serves only faults at most, waiting for the process to run.
const HOLD_STREAMING: Duration = Duration::from_secs(2);

impl Pager {
    /// A pager for the process whose userfaultfd is `uffd`, restored under the guarded init
    /// `init_pid` (whose guard, the pager's end of a [`sysclone::guard_pair`], is `guard`, released when every page is in; a
    /// process of a group has none: its [`Pagers`] releases the group's guard once every
    /// pager is done). It opens the packs it needs from `store` first (faults wait meanwhile),
    /// then lets go of the store.
    ///
    /// `holder` is the guard (the pager's end of a [`sysclone::guard_pair`]) the init holds the
    /// userfaultfds through: `uffd` is handed over here, those of forked children when they come.
    pub fn new(uffd: OwnedFd, ranges: Vec<LazyRange>, store: Arc<LocalStore>, init_pid: i32, guard: Option<OwnedFd>) -> Result<Self> {
        let guard = guard.map(Arc::new);
        Self::with_holder(uffd, ranges, store, init_pid, guard.clone(), guard)
    }

    fn with_holder(
        uffd: OwnedFd,
        ranges: Vec<LazyRange>,
        store: Arc<LocalStore>,
        init_pid: i32,
        guard: Option<Arc<OwnedFd>>,
        holder: Option<Arc<OwnedFd>>,
    ) -> Result<Self> {
        use std::os::fd::AsFd;
        if let Some(h) = &holder {
            sysclone::hold_fd(h, uffd.as_fd()).map_err(|source| EngineError::Sys { step: "hand the userfaultfd to the namespace init", pid: init_pid, source })?;
        }
        let mut blocks = Vec::new();
        for (i, r) in ranges.iter().enumerate() {
            let mut b = r.start - r.start % BLOCK;
            while b < r.end {
                blocks.push((i, b.max(r.start), (b + BLOCK).min(r.end)));
                b += BLOCK;
            }
        }
        let n = blocks.len();
        Ok(Pager {
            targets: vec![Target { uffd, served: vec![false; n], cursor: 0 }],
            ranges,
            blocks,
            source: ChunkSource { chunks: HashMap::new(), store: Some(store) },
            guard,
            holder,
            init_pid,
            report: PagerReport { processes: 1, ..Default::default() },
            retry: Vec::new(),
            go: Arc::new(AtomicBool::new(false)),
            go_anyway: Instant::now() + HOLD_STREAMING,
            later: None,
        })
    }

    /// The extents of some ranges' images are still being read by `thread` (a lazy restore
    /// reads the trees of the memory the pager fills while it lays out the process): before it
    /// serves anything, the pager waits for them and gives each range whose image they hold
    /// its extents (a fault meanwhile waits for that). A failure to read them is the pager's:
    /// the restored processes are killed.
    pub fn extents_later(&mut self, thread: LaterExtents) {
        self.later = Some(thread);
    }

    /// Takes the extents read later ([`Pager::extents_later`]) into the ranges.
    fn take_later(&mut self) -> Result<()> {
        let Some(thread) = self.later.take() else { return Ok(()) };
        let t = Instant::now();
        let mut images = thread.join().map_err(|_| EngineError::Proc { pid: self.init_pid, detail: "lazy restore: the thread reading the manifest's trees panicked".into() })??;
        for r in &mut self.ranges {
            if let Some(extents) = images.get(&r.image) {
                r.extents = clip(extents, r.start, r.end);
            }
        }
        images.clear();
        tracing::debug!(init = self.init_pid, waited_ms = t.elapsed().as_secs_f64() * 1e3, "pager: extents read later are in");
        Ok(())
    }

    /// Serves faults and streams every block in; returns when all are in (the guard released)
    /// or when the processes are gone. On an error the namespace is killed first.
    pub fn run(mut self) -> Result<PagerReport> {
        let t0 = Instant::now();
        let result = self.serve_all();
        match result {
            Ok(()) => {
                self.report.load_ms = t0.elapsed().as_secs_f64() * 1e3;
                if let Some(g) = self.guard.take() {
                    sysclone::release_guard(&g, Duration::from_secs(5))
                        .map_err(|source| EngineError::Sys { step: "release the lazy restore's guard", pid: self.init_pid, source })?;
                }
                Ok(self.report)
            }
            Err(e) => {
                tracing::error!(init = self.init_pid, error = %e, "lazy restore failed: killing the restored processes");
                let _ = sysclone::kill(self.init_pid, libc::SIGKILL);
                Err(e)
            }
        }
    }

    fn serve_all(&mut self) -> Result<()> {
        self.take_later()?;
        while !self.targets.is_empty() {
            // Faults first, then a few blocks of streaming per process (once it runs).
            let stream = self.go.load(Ordering::Acquire) || Instant::now() >= self.go_anyway;
            if stream && self.source.store.is_some() {
                // Until the process ran, faults opened their own chunks; now all, then the store goes.
                let t = Instant::now();
                self.source.open_all(&self.ranges)?;
                tracing::debug!(init = self.init_pid, chunks = self.source.chunks.len(), ms = t.elapsed().as_secs_f64() * 1e3, "pager: packs open");
            }
            let mut t = 0;
            while t < self.targets.len() {
                let busy = self.targets[t].cursor < self.blocks.len();
                let wait_ms = match (busy, stream) {
                    (true, true) => 0,
                    (true, false) => 2,
                    (false, _) => 100,
                };
                match uffd::events(&self.targets[t].uffd, wait_ms) {
                    Ok(events) => {
                        for ev in events {
                            self.on_event(t, ev)?;
                        }
                        for (rt, addr) in std::mem::take(&mut self.retry) {
                            if rt < self.targets.len() {
                                self.on_event(rt, uffd::Event::Fault(addr))?;
                            }
                        }
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                        self.targets.swap_remove(t); // the process is gone
                        continue;
                    }
                    Err(source) => return Err(EngineError::Sys { step: "read userfaultfd events", pid: self.init_pid, source }),
                }
                for _ in 0..if stream { 8 } else { 0 } {
                    let target = &mut self.targets[t];
                    while target.cursor < self.blocks.len() && target.served[target.cursor] {
                        target.cursor += 1;
                    }
                    if target.cursor >= self.blocks.len() {
                        break;
                    }
                    let b = target.cursor;
                    if !self.serve_block(t, b)? {
                        break;
                    }
                }
                t += 1;
            }
            if self.targets.iter().all(|t| t.cursor >= self.blocks.len()) {
                return Ok(());
            }
        }
        Ok(())
    }

    fn on_event(&mut self, t: usize, ev: uffd::Event) -> Result<()> {
        match ev {
            uffd::Event::Fault(addr) => {
                self.report.faults += 1;
                let page = addr & !(PAGE - 1);
                let idx = self.blocks.partition_point(|&(_, _, end)| end <= page);
                if idx < self.blocks.len() && self.blocks[idx].1 <= page && !self.targets[t].served[idx] && !self.serve_block(t, idx)? {
                    self.retry.push((t, addr));
                    return Ok(());
                }
                // Zero pages, holes and memory the process grew since: the zero page. A page
                // copied in already answers EEXIST: then only wake its waiter.
                let u = &self.targets[t].uffd;
                match uffd::zeropage(u, page, PAGE) {
                    Ok(true) => {}
                    Ok(false) => uffd::wake(u, page, PAGE).map_err(|source| EngineError::Sys { step: "userfaultfd wake", pid: self.init_pid, source })?,
                    Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => self.retry.push((t, addr)),
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(source) => return Err(EngineError::Sys { step: "userfaultfd zero page", pid: self.init_pid, source }),
                }
                Ok(())
            }
            uffd::Event::Fork(fd) => {
                if let Some(h) = &self.holder {
                    use std::os::fd::AsFd;
                    match sysclone::hold_fd(h, fd.as_fd()) {
                        // The init is gone (its namespace with it): the child is dead too.
                        Err(e) if e.raw_os_error() == Some(libc::EPIPE) => return Ok(()),
                        Err(source) => return Err(EngineError::Sys { step: "hand a forked child's userfaultfd to the namespace init", pid: self.init_pid, source }),
                        Ok(()) => {}
                    }
                }
                self.report.processes += 1;
                self.targets.push(Target { uffd: fd, served: vec![false; self.blocks.len()], cursor: 0 });
                Ok(())
            }
            uffd::Event::Remap { from, to, len } => Err(EngineError::Proc {
                pid: self.init_pid,
                detail: format!("lazy restore: the process moved {from:#x}+{len:#x} to {to:#x} (mremap) before its pages were in; not supported"),
            }),
        }
    }

    /// Copies block `b` into target `t`. `Ok(false)` when the target's memory there is gone
    /// (unmapped meanwhile: nothing to fill), or when its layout is changing (EAGAIN: an event,
    /// a fork, is to be read first; the block stays to be served).
    fn serve_block(&mut self, t: usize, b: usize) -> Result<bool> {
        let (ri, from, to) = self.blocks[b];
        self.targets[t].served[b] = true;
        self.report.blocks += 1;
        let extents = &self.ranges[ri].extents;
        let first = extents.partition_point(|e| e.end() <= from);
        let mut current: Option<(ChunkId, ChunkBytes)> = None;
        for e in extents[first..].iter().take_while(|e| e.start < to) {
            let ExtentData::Chunk { id, offset } = e.data else { continue };
            if current.as_ref().map(|(c, _)| *c) != Some(id) {
                current = Some((id, self.source.read(&id)?));
            }
            let bytes = &current.as_ref().expect("read above").1;
            let (a, z) = (e.start.max(from), e.end().min(to));
            let (cfrom, cto) = ((u64::from(offset) + (a - e.start)) as usize, (u64::from(offset) + (z - e.start)) as usize);
            if cto > bytes.len() {
                return Err(EngineError::Proc { pid: self.init_pid, detail: format!("lazy restore: extent at {:#x} wants bytes {cfrom}..{cto} of chunk {id}, which has {}", e.start, bytes.len()) });
            }
            for (off, piece) in bytes.pieces(cfrom, cto, true) {
                let dst = a + (off - cfrom) as u64;
                match uffd::copy(&self.targets[t].uffd, dst, &piece) {
                    Ok(_) => self.report.bytes += piece.len() as u64,
                    Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                        self.targets[t].served[b] = false;
                        self.report.blocks -= 1;
                        return Ok(false);
                    }
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EINVAL) | Some(libc::EFAULT)) => return Ok(false),
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(false),
                    Err(source) => return Err(EngineError::Sys { step: "userfaultfd copy", pid: self.init_pid, source }),
                }
            }
        }
        Ok(true)
    }
}

/// The parts of `extents` (sorted) inside `[a, b)`, cut at its bounds.
pub fn clip(extents: &[Extent], a: u64, b: u64) -> Vec<Extent> {
    let first = extents.partition_point(|e| e.end() <= a);
    extents[first..]
        .iter()
        .take_while(|e| e.start < b)
        .map(|e| {
            let (s, t) = (e.start.max(a), e.end().min(b));
            let data = match e.data {
                ExtentData::Chunk { id, offset } => ExtentData::Chunk { id, offset: offset + (s - e.start) as u32 },
                ExtentData::Zero => ExtentData::Zero,
            };
            Extent { start: s, len: t - s, data }
        })
        .collect()
}

/// A pager running in a thread of the restorer.
pub struct PagerHandle {
    thread: std::thread::JoinHandle<Result<PagerReport>>,
    go: Arc<AtomicBool>,
}

impl PagerHandle {
    /// Starts `pager` in a thread. It serves faults at once, and streams the other blocks once
    /// told the process runs ([`PagerHandle::running`]; after 2 s anyway).
    pub fn start(pager: Pager) -> Self {
        let go = pager.go.clone();
        let thread = std::thread::Builder::new().name("zap-pager".into()).spawn(move || pager.run()).expect("spawn the pager thread");
        PagerHandle { thread, go }
    }

    /// The process runs: stream the blocks it has not asked for.
    pub fn running(&self) {
        self.go.store(true, Ordering::Release);
    }

    /// True once every page is in (or the pager stopped).
    pub fn finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits until every page is in. The thread that restored must live until then: the
    /// namespace's init dies with it before (see the module doc).
    pub fn wait(self) -> Result<PagerReport> {
        self.thread.join().map_err(|_| EngineError::Proc { pid: 0, detail: "lazy restore: the pager thread panicked".into() })?
    }
}

/// The pagers of a lazily restored group or pod: one thread per process (each serves its own
/// userfaultfd and the children it forks; see the module doc), and the guard of the group's
/// namespace init, released once every one of them is done. One thread per process rather than
/// one for all: a process's pager is the single-process pager unchanged, and a fault of one
/// process never waits behind another's streaming; they share the CPU like any threads.
pub struct Pagers {
    /// Until the group runs (then the pagers hold it only until their packs are open).
    store: Option<Arc<LocalStore>>,
    handles: Vec<(i32, PagerHandle)>,
    guard: Option<Arc<OwnedFd>>,
    init_pid: i32,
    /// Lazily served bytes, all processes.
    pub lazy_bytes: u64,
}

impl Pagers {
    /// No pagers yet, for a group restored from `store` whose init's guard is `guard` (the
    /// pager's end of a [`sysclone::guard_pair`]; the init is named later, [`Pagers::set_init`]).
    pub fn new(store: Arc<LocalStore>, guard: OwnedFd) -> Self {
        Pagers { store: Some(store), handles: Vec::new(), guard: Some(Arc::new(guard)), init_pid: 0, lazy_bytes: 0 }
    }

    /// The host pid of the group's namespace init, which a failing pager kills.
    pub fn set_init(&mut self, init_pid: i32) {
        self.init_pid = init_pid;
    }

    /// Starts the pager of process `vpid` (its userfaultfd and lazy mappings); until
    /// [`Pagers::running`] it serves only faults.
    pub fn start(&mut self, vpid: i32, uffd: OwnedFd, ranges: Vec<LazyRange>) -> Result<()> {
        let store = self.store.clone().ok_or_else(|| EngineError::Proc { pid: vpid, detail: "lazy restore: a pager started after the group runs".into() })?;
        self.lazy_bytes += ranges.iter().map(|r| r.end - r.start).sum::<u64>();
        let pager = Pager::with_holder(uffd, ranges, store, self.init_pid, None, self.guard.clone())?;
        self.handles.push((vpid, PagerHandle::start(pager)));
        Ok(())
    }

    /// How many processes have a pager.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// True when no process has a pager (nothing was lazy).
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// The group runs: every pager streams the blocks not asked for; the store is let go of
    /// (each pager keeps it only until its packs are open).
    pub fn running(&mut self) {
        self.store = None;
        for (_, h) in &self.handles {
            h.running();
        }
    }

    /// Waits until every pager is done, then releases the init's guard: from then on nothing
    /// depends on this process. On a pager's failure the group's init was killed (by that
    /// pager); the guard is then dropped unreleased (the init, if still there, kills the group).
    /// Returns the pagers' reports summed, or the first failure, naming the process.
    pub fn wait(mut self) -> Result<PagerReport> {
        let mut total = PagerReport::default();
        let mut failed = None;
        for (vpid, h) in std::mem::take(&mut self.handles) {
            match h.wait() {
                Ok(r) => {
                    total.faults += r.faults;
                    total.blocks += r.blocks;
                    total.bytes += r.bytes;
                    total.processes += r.processes;
                    total.load_ms = total.load_ms.max(r.load_ms);
                }
                Err(e) => {
                    if failed.is_none() {
                        failed = Some(EngineError::Proc { pid: vpid, detail: format!("lazy restore of this process failed: {e}") });
                    }
                }
            }
        }
        if let Some(e) = failed {
            if self.init_pid > 0 {
                let _ = sysclone::kill(self.init_pid, libc::SIGKILL);
            }
            return Err(e);
        }
        if let Some(g) = self.guard.take() {
            sysclone::release_guard(&g, Duration::from_secs(5))
                .map_err(|source| EngineError::Sys { step: "release the lazy restore's guard", pid: self.init_pid, source })?;
        }
        Ok(total)
    }
}
