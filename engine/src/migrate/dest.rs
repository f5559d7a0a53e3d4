//! The destination's side of a migration (see the module doc of [`super`] for the protocol).
//!
//! [`receive`] authenticates the source (its key must be accepted here: [`super::keys`]), checks
//! the offer and answers with the list of problems or accepts; then it applies the rounds to
//! the prepared pod ([`super::skeleton`]), keeps every chunk it received in the session's spool
//! ([`super::spool`]), restores the rest at the final round (rebuilding the prepared pod through
//! the restore's hooks when the pod's processes made mounts, sub-cgroups or namespaces, or a
//! session leader has a controlling terminal), and hands over. Until `Commit`
//! arrives everything it made is its own to discard: a broken link, a damaged message, a failed
//! step, all end with the prepared pod removed and the session directory deleted. A receiving
//! process that is killed cannot clean up after itself; its session is swept by the process
//! that started it ([`sweep_session`], `zap receive` supervises its worker) or by the next
//! `zap receive` ([`sweep`]).
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zap_chunker::{Chunk, ChunkId, Compression};
use zap_store::{ImageStore, LocalStore, StoreOptions};


use super::channel::{Channel, Stream};
use super::journal::{self, DestJournal, DestState};
use super::keys::KeyFiles;
use super::skeleton::{clip_to, normalize, unpatchable, Hooks, MemberMem, NoHooks, PodPlan, Skeleton};
use super::spool::Spool;
use super::wire::{self, Accept, Answer, FinalState, Msg, Offer, Ready, RoundAck, RoundStart};
use super::{mig_err, MigrateError, Result};
use crate::group::{self, TreeShape};
use crate::pod::checkpoint::{PodImage, CONSOLE_IMAGE};
use crate::pod::inside::InsideRestore;
use crate::pod::{self, net};

/// How to receive.
#[derive(Clone, Debug)]
pub struct ReceiveOptions {
    /// The `zap-init` binary for the pod.
    pub init_exe: PathBuf,
}

/// Test hook (`$ZAP_MIGRATE_FAULT=dest-die@STEP`): the receiving process dies at a named step
/// (`offer`, `round0`, `round1`, `final`, `ready`, `commit`) as if killed.
fn die_here(step: &str) {
    if std::env::var("ZAP_MIGRATE_FAULT").is_ok_and(|f| f == format!("dest-die@{step}")) {
        crate::sys::clone::kill(std::process::id() as i32, libc::SIGKILL).ok();
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// What a session did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Received {
    /// Session id.
    pub session: String,
    /// The pod's name here.
    pub pod: String,
    /// What happened: `committed`, `dry run`, `answered a query`.
    pub outcome: String,
}

/// Receives one migration (or answers one recovery query) over `stream`, into run directory
/// `root`.
pub fn receive(root: &Path, stream: Stream, opts: &ReceiveOptions) -> Result<Received> {
    sweep(root);
    let keys = KeyFiles::host();
    let me = keys.load()?;
    let accepted = keys.accepted()?;
    let mut ch = Channel::accept(stream, &me, &accepted)?;
    let offer = match wire::recv(&mut ch, "handshake: wait for the offer")? {
        Msg::Offer(o) => *o,
        Msg::Query(session) => {
            let a = answer(root, &session);
            wire::send(&mut ch, &Msg::Answer(a))?;
            wire::flush(&mut ch)?;
            return Ok(Received { session, pod: String::new(), outcome: format!("answered a query: {a:?}") });
        }
        other => return Err(wire::unexpected("handshake", &other)),
    };
    // The pod's clocks at the source were the offer's when the host's were these (off by the
    // offer's transit time, which the pod sees as clocks a little behind the source's).
    let mut received = pod::clock::host_clocks().map_err(|e| mig_err("handshake", "read the host's clocks", e))?;
    // Test hook (`$ZAP_MIGRATE_FAULT=dest-offer-late@MS`): the offer is taken to have arrived MS
    // later than it did (a slow link), so the prepared pod's clocks lag the source's by that much.
    if let Some(ms) = std::env::var("ZAP_MIGRATE_FAULT").ok().and_then(|f| f.strip_prefix("dest-offer-late@")?.parse::<i64>().ok()) {
        received = received.plus(pod::clock::Clocks { monotonic: ms * 1_000_000, boottime: ms * 1_000_000 });
    }
    let clocks = offer.clocks.map(|c| pod::clock::ClockTarget { pod: c, host: Some(received) });
    if !journal::valid_session(&offer.session) {
        return Err(mig_err("handshake", "offer", format!("bad session id {:?}", offer.session)));
    }
    die_here("offer");
    let problems = check(root, &offer, opts);
    if !problems.is_empty() {
        wire::send(&mut ch, &Msg::Refuse(problems.clone()))?;
        wire::flush(&mut ch)?;
        return Err(MigrateError::Refused(problems));
    }
    wire::send(&mut ch, &Msg::Accept(Accept { kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string() }))?;
    wire::flush(&mut ch)?;
    if offer.dry_run {
        return Ok(Received { session: offer.session, pod: offer.name, outcome: "dry run: checks passed".into() });
    }
    let dir = journal::session_dir(&offer.session);
    std::fs::create_dir_all(&dir).map_err(|e| mig_err("create session directory", dir.display(), e))?;
    let (pid, start) = journal::me();
    let mut s = Session {
        root: root.to_path_buf(),
        jpath: dir.join("session.json"),
        journal: DestJournal {
            session: offer.session.clone(),
            pod: offer.name.clone(),
            state: DestState::Receiving,
            pid,
            start,
            copy_dirs: offer.copy_dirs.clone(),
            placed: false,
        },
        spool: Arc::new(Spool::create(&dir.join("chunks.spool"))?),
        dir,
        offer,
        clocks,
        mems: HashMap::new(),
        skeleton: None,
        cache: HashMap::new(),
        cur: None,
        round: None,
        ack: RoundAck::default(),
        rebuilt_last: None,
        init_exe: opts.init_exe.clone(),
        image: None,
        final_images: Vec::new(),
        prepared: None,
        cache_store: super::cache::open(false, Duration::from_millis(300)).map_err(|e| tracing::debug!(error = %e, "migration cache not consulted")).ok(),
        dirs: Default::default(),
        cache_closing: None,
    };
    journal::write(&s.jpath, &s.journal)?;
    let r = s.run(&mut ch);
    match r {
        Ok(out) => Ok(out),
        Err(e) => {
            if s.journal.state == DestState::Committed {
                // The pod is ours now; only the end of the exchange failed.
                s.cache_closed();
                s.cleanup_dir();
                return Err(e);
            }
            // Tell the source why, if it still listens; then nothing of the session is left.
            let _ = wire::send(&mut ch, &Msg::Failed(wire::Failed { step: "destination".into(), detail: e.to_string() }));
            let _ = wire::flush(&mut ch);
            s.discard();
            Err(e)
        }
    }
}

/// What the destination checks before it accepts (all problems, not just the first).
fn check(root: &Path, offer: &Offer, opts: &ReceiveOptions) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = pod::validate_name(&offer.name) {
        problems.push(e.to_string());
    } else if pod::load(root, &offer.name).is_ok() {
        problems.push(format!("name: a pod named {} exists on this host", offer.name));
    }
    if let Some(ip) = &offer.ip {
        match net::Cidr::parse(ip) {
            Err(e) => problems.push(e.to_string()),
            Ok(c) => {
                let taken = pod::list(root).unwrap_or_default().into_iter().find(|p| {
                    pod::status(root, p) == pod::PodStatus::Running && p.ip.as_deref().and_then(|i| net::Cidr::parse(i).ok()).is_some_and(|o| o.addr == c.addr)
                });
                if let Some(p) = taken {
                    problems.push(format!("address: {} is the address of pod {} on this host", c.addr, p.name));
                }
                let host_addrs = std::process::Command::new("ip").args(["-o", "-4", "addr", "show"]).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
                if host_addrs.split_whitespace().any(|w| w.split('/').next() == Some(&c.addr.to_string())) {
                    problems.push(format!("address: {} is an address of this host", c.addr));
                }
                if let Err(e) = crate::host::net() {
                    problems.push(format!("network: {e}"));
                }
            }
        }
    }
    for f in &offer.files {
        use std::os::unix::fs::MetadataExt;
        if offer.copy_dirs.iter().any(|d| Path::new(&f.path).starts_with(d)) {
            continue;
        }
        match std::fs::metadata(&f.path) {
            Err(e) => problems.push(format!("file: {} ({}) is missing here: {e}", f.path, f.user)),
            Ok(m) => {
                let mtime = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
                if m.len() != f.size || mtime != f.mtime_ns {
                    problems.push(format!(
                        "file: {} ({}) differs here: {} bytes modified at {} ns, the source has {} bytes modified at {} ns (carry it with --copy)",
                        f.path, f.user, m.len(), mtime, f.size, f.mtime_ns
                    ));
                }
            }
        }
    }
    for d in &offer.copy_dirs {
        let p = Path::new(d);
        if std::fs::read_dir(p).map(|mut r| r.next().is_some()).unwrap_or(false) {
            problems.push(format!("copy: directory {d} exists here and is not empty (--copy does not overwrite)"));
        }
    }
    let need = offer.memory_bytes + offer.copy_bytes;
    let mdir = crate::host::migrate_dir();
    let probe = mdir.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/"));
    if let Ok(st) = nix::sys::statvfs::statvfs(probe) {
        let avail = st.blocks_available() * st.fragment_size();
        if avail < need {
            problems.push(format!("space: {} has {} bytes free, the pod needs up to {need}", probe.display(), avail));
        }
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let avail_mem = meminfo.lines().find(|l| l.starts_with("MemAvailable:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()).map(|kb| kb * 1024);
    if let Some(m) = avail_mem {
        if m < offer.memory_bytes {
            problems.push(format!("memory: {m} bytes available here, the pod uses {}", offer.memory_bytes));
        }
    }
    if !opts.init_exe.is_file() {
        problems.push(format!("zap-init: {} is missing here", opts.init_exe.display()));
    }
    if let Ok(v) = std::env::var("ZAP_MIGRATE_FAKE_FREE") {
        // Test hook: pretend the store's file system has this many bytes free.
        if v.parse::<u64>().is_ok_and(|free| free < need) {
            problems.push(format!("space: {} has {v} bytes free, the pod needs up to {need}", probe.display()));
        }
    }
    problems
}

struct Current {
    vpid: i32,
    whole: Vec<(u64, u64)>,
    covered: Vec<(u64, u64)>,
}

struct Session {
    root: PathBuf,
    dir: PathBuf,
    jpath: PathBuf,
    journal: DestJournal,
    spool: Arc<Spool>,
    offer: Offer,
    /// The clocks the prepared pod goes on from ([`pod::clock`]).
    clocks: Option<pod::clock::ClockTarget>,
    mems: HashMap<i32, MemberMem>,
    skeleton: Option<Skeleton>,
    /// Raw bytes of the chunks of the current batch (the extents that follow use them).
    cache: HashMap<ChunkId, Arc<Vec<u8>>>,
    cur: Option<Current>,
    round: Option<RoundStart>,
    ack: RoundAck,
    rebuilt_last: Option<String>,
    init_exe: PathBuf,
    image: Option<PodImage>,
    final_images: Vec<zap_store::Image>,
    /// The restored pod's state, once ready.
    prepared: Option<pod::PodState>,
    /// The host's migration cache, held while pages arrive (only migrations use it; another
    /// migration to this host meanwhile goes without it).
    cache_store: Option<LocalStore>,
    /// Directories carried with the pod.
    dirs: super::copydir::DestDirs,
    /// The migration cache being closed (off the final round's pause).
    cache_closing: Option<std::thread::JoinHandle<()>>,
}

impl Session {
    fn run(&mut self, ch: &mut Channel) -> Result<Received> {
        loop {
            let step = match &self.round {
                Some(r) => format!("round {}", r.n),
                None => "round 0".to_string(),
            };
            let msg = wire::recv(ch, &format!("{step}: receive"))?;
            match msg {
                Msg::Round(r) => {
                    die_here(&if r.last { "final".to_string() } else { format!("round{}", r.n) });
                    self.round_start(r)?;
                }
                Msg::Member(m) => self.cur = Some(Current { vpid: m.vpid, whole: m.whole, covered: Vec::new() }),
                Msg::Ids(ids) => {
                    let need = self.need(&ids)?;
                    wire::send(ch, &Msg::Need(need))?;
                    wire::flush(ch)?;
                }
                Msg::Chunk(c) => {
                    let raw = wire::decode_chunk(&c)?;
                    self.spool.add(&c)?;
                    self.cache.insert(c.id, Arc::new(raw));
                }
                Msg::Put(p) => self.put(p)?,
                Msg::MemberEnd(vpid) => self.member_end(vpid)?,
                Msg::Files(u) => {
                    let read = Self::reader(&self.cache, &self.spool);
                    self.ack.written_bytes += self.dirs.apply(&u, &self.offer.copy_dirs, &self.offer.session, &read)?;
                }
                Msg::RoundEnd(e) => {
                    let last = self.round.as_ref().is_some_and(|r| r.last);
                    if !last {
                        let mut ack = std::mem::take(&mut self.ack);
                        ack.rebuilt = self.rebuilt_last.take();
                        tracing::debug!(round = e.n, written = ack.written_bytes, had = ack.had_chunks, "round applied");
                        wire::send(ch, &Msg::RoundAck(ack))?;
                        wire::flush(ch)?;
                    }
                }
                Msg::Final(f) => {
                    tracing::debug!("final round: state received");
                    // Closing the cache's database takes a while: not during the pause.
                    if let Some(store) = self.cache_store.take() {
                        self.cache_closing = Some(std::thread::spawn(move || drop(store)));
                    }
                    let ready = self.restore(f)?;
                    die_here("ready");
                    wire::send(ch, &Msg::Ready(ready))?;
                    wire::flush(ch)?;
                }
                Msg::Commit => {
                    let running = self.commit()?;
                    die_here("commit");
                    wire::send(ch, &Msg::Running(running))?;
                    wire::flush(ch)?;
                    // Announced after the answer: the pod runs and holds its address already;
                    // the announcements only tell the LAN's switches and neighbours sooner.
                    if let Some(state) = &self.prepared {
                        if state.ip.is_some() {
                            if let Err(e) = net::announce(&state.name, state.init_pid, 3) {
                                tracing::warn!(pod = state.name, error = %e, "could not announce the address");
                            }
                        }
                    }
                }
                Msg::Ended => {
                    // What is left (the checkpoint asked for, the migration cache) runs beside
                    // the pod, which runs already: at the lowest priority, so it never slows it.
                    if let Err(e) = crate::sys::proc::lower_own_priority() {
                        tracing::debug!(error = %e, "could not lower the priority of the work after the handover");
                    }
                    let t = Instant::now();
                    self.cache_closed();
                    let checkpoint = if self.offer.keep_checkpoint { Some(self.keep_checkpoint()?) } else { None };
                    if let Err(e) = super::cache::keep(&self.spool, &self.offer.name, &self.offer.session) {
                        tracing::warn!(pod = self.offer.name, error = %e, "could not keep the pod's chunks in the migration cache");
                    }
                    tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, chunks = self.spool.len(), "after the handover: migration cache kept");
                    let _ = wire::send(ch, &Msg::Done(wire::Done { checkpoint }));
                    let _ = wire::flush(ch);
                    self.cleanup_dir();
                    return Ok(Received { session: self.offer.session.clone(), pod: self.offer.name.clone(), outcome: "committed".into() });
                }
                other => return Err(wire::unexpected(&step, &other)),
            }
        }
    }

    fn reader<'s>(cache: &HashMap<ChunkId, Arc<Vec<u8>>>, spool: &'s Spool) -> impl Fn(&ChunkId) -> Result<Arc<Vec<u8>>> + Sync + 's {
        let cache = cache.clone();
        let spool: &Spool = spool;
        move |id: &ChunkId| match cache.get(id) {
            Some(b) => Ok(b.clone()),
            None => Ok(Arc::new(spool.read_chunk(id)?)),
        }
    }

    /// Which of `ids` to send: those neither in the spool nor in this host's store (those are
    /// copied into the spool now).
    fn need(&mut self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        self.cache.clear();
        let mut need: Vec<bool> = ids.iter().map(|id| !self.spool.has(id)).collect();
        let missing: Vec<usize> = need.iter().enumerate().filter(|(_, n)| **n).map(|(i, _)| i).collect();
        // Then this host's migration cache (opened for the session, see `run`).
        if let Some(store) = &self.cache_store {
            for i in missing {
                let id = ids[i];
                let raw = match store.read_chunk(&id) {
                    Ok(raw) => raw,
                    Err(zap_store::StoreError::MissingChunk { .. }) => continue,
                    Err(e) => return Err(e.into()),
                };
                self.spool.add(&Chunk { id, raw_len: raw.len() as u32, compression: Compression::None, data: raw.clone() })?;
                self.cache.insert(id, Arc::new(raw));
                need[i] = false;
            }
        }
        self.ack.had_chunks += need.iter().filter(|n| !**n).count() as u64;
        Ok(need)
    }

    fn round_start(&mut self, r: RoundStart) -> Result<()> {
        self.journal.state = DestState::Receiving;
        let t = Instant::now();
        // Processes that are gone take their memory with them.
        let live: std::collections::HashSet<i32> = r.layouts.iter().map(|l| l.0).collect();
        self.mems.retain(|v, _| live.contains(v));
        let rebuild = match &self.skeleton {
            None => Some("first round".to_string()),
            Some(sk) if sk.shape != r.shape => Some("the process tree changed".to_string()),
            Some(sk) => r.layouts.iter().find_map(|(vpid, vmas)| unpatchable(sk.mapped.get(vpid).map(Vec::as_slice).unwrap_or(&[]), vmas, sk.tree.tramp)),
        };
        let read = Self::reader(&self.cache, &self.spool);
        if let Some(why) = rebuild {
            if let Some(old) = self.skeleton.take() {
                old.destroy()?;
            }
            let all: Vec<crate::mem::VmaState> = {
                let mut v: Vec<_> = r.layouts.iter().flat_map(|l| l.1.iter().cloned()).collect();
                v.sort_by_key(|x| x.start);
                v
            };
            let tramp = crate::process::trampoline_addr(&all);
            let o = &self.offer;
            let plan = PodPlan {
                name: &o.name,
                hostname: &o.hostname,
                ip: o.ip.as_deref(),
                mac: o.mac.as_deref(),
                memory_limit: o.memory_limit,
                cpus: o.cpus,
                main_vpid: r.main_vpid,
                init_exe: &self.init_exe,
                clocks: self.clocks,
            };
            self.skeleton = Some(Skeleton::create(&self.root, &plan, &r.shape, tramp, &mut NoHooks)?);
            if self.skeleton.is_some() && why != "first round" {
                tracing::info!(round = r.n, why, "prepared pod rebuilt");
            }
            self.rebuilt_last = (why != "first round").then_some(why);
        }
        let sk = self.skeleton.as_mut().expect("built above");
        for (vpid, vmas) in &r.layouts {
            let mem = self.mems.entry(*vpid).or_default();
            self.ack.written_bytes += sk.patch_layout(*vpid, vmas, false, mem, &read)?;
            clip_to(mem, vmas);
        }
        self.ack.apply_ms += t.elapsed().as_secs_f64() * 1e3;
        self.round = Some(r);
        Ok(())
    }

    fn put(&mut self, p: wire::Put) -> Result<()> {
        let t = Instant::now();
        let cur = self.cur.as_mut().filter(|c| c.vpid == p.vpid).ok_or_else(|| mig_err("receive pages", format!("pid {}", p.vpid), "extents outside of their process's part of the round"))?;
        cur.covered.extend(p.extents.iter().map(|e| (e.start, e.end())));
        let read = Self::reader(&self.cache, &self.spool);
        let sk = self.skeleton.as_mut().ok_or_else(|| mig_err("receive pages", format!("pid {}", p.vpid), "no round started"))?;
        let mem = self.mems.get_mut(&p.vpid).ok_or_else(|| mig_err("receive pages", format!("pid {}", p.vpid), "not a process of this round"))?;
        self.ack.written_bytes += sk.put(p.vpid, mem, &p.extents, &read)?;
        self.ack.apply_ms += t.elapsed().as_secs_f64() * 1e3;
        Ok(())
    }

    fn member_end(&mut self, vpid: i32) -> Result<()> {
        let cur = self.cur.take().filter(|c| c.vpid == vpid).ok_or_else(|| mig_err("receive pages", format!("pid {vpid}"), "end of a process that was not started"))?;
        let sk = self.skeleton.as_mut().ok_or_else(|| mig_err("receive pages", format!("pid {vpid}"), "no round started"))?;
        let mem = self.mems.get_mut(&vpid).ok_or_else(|| mig_err("receive pages", format!("pid {vpid}"), "not a process of this round"))?;
        sk.end_member(vpid, mem, &cur.whole, &normalize(cur.covered))
    }

    /// Rebuilds the prepared pod for `image` (`why`: a session leader must take its controlling
    /// terminal before its children exist, and what the processes made inside the pod is made
    /// as they are built (`inside`), which a tree built without the image could not do), its
    /// memory written again from the extents received.
    fn rebuild_for(&mut self, image: &PodImage, files: &mut crate::files::RestoreContext, inside: Option<&mut InsideRestore<'_, Spool>>, why: String) -> Result<()> {
        if let Some(old) = self.skeleton.take() {
            old.destroy()?;
        }
        let shape = TreeShape::of(&image.group);
        let tramp = crate::group::group_trampoline(&image.group);
        let o = &self.offer;
        let plan = PodPlan {
            name: &o.name,
            hostname: &o.hostname,
            ip: o.ip.as_deref(),
            mac: o.mac.as_deref(),
            memory_limit: o.memory_limit,
            cpus: o.cpus,
            main_vpid: image.main_vpid,
            init_exe: &self.init_exe,
            clocks: self.clocks,
        };
        let mut hooks = Rebuild { group: &image.group, files, inside };
        let mut sk = Skeleton::create(&self.root, &plan, &shape, tramp, &mut hooks)?;
        let read = Self::reader(&self.cache, &self.spool);
        for m in &image.group.members {
            if let Some(img) = m.image() {
                let mem = self.mems.entry(m.vpid).or_default();
                sk.patch_layout(m.vpid, &img.vmas, false, mem, &read)?;
            }
        }
        drop(read);
        self.skeleton = Some(sk);
        self.rebuilt_last = Some(why);
        Ok(())
    }

    /// The final round's restore into the prepared pod; the pod stays frozen and off the LAN.
    fn restore(&mut self, f: FinalState) -> Result<Ready> {
        let t = Instant::now();
        let step = |what: &str| tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, "final round restore: {what}");
        let image = PodImage::decode(&f.pod_image)?;
        let mut files = crate::files::RestoreContext::new(std::process::id());
        let name = self.offer.name.clone();
        // What the processes made inside the pod is made as a restore makes it, with the same
        // hooks, in a prepared pod rebuilt for it.
        let spool = self.spool.clone();
        let made = image.inside.beyond_names();
        let mut inside = made.as_ref().map(|_| InsideRestore::new(&name, &image.inside, &*spool, &f.images));
        if let Some(i) = inside.as_mut() {
            i.saved_time_offsets(image.clocks.map(|c| c.offsets));
        }
        let mut why: Vec<String> = [group::has_ctty(&image.group).then(|| "a session leader has a controlling terminal".to_string()), made.map(|m| format!("the pod has {m}"))]
            .into_iter()
            .flatten()
            .collect();
        // The prepared pod's clocks follow the source's from the offer on; should they be behind
        // where the source's stopped (the offer took longer to arrive than the pod was
        // stopped), it is made again with its clocks going on from the image's.
        if let (Some(saved), Some(sk)) = (image.clocks, self.skeleton.as_ref()) {
            let here = pod::clock::save(sk.state.init_pid).map_err(|e| mig_err("final round", "read the prepared pod's clocks", e))?.at_stop;
            if pod::clock::supported() && here.behind(saved.at_stop) {
                self.clocks = Some(pod::clock::ClockTarget::resume(saved.at_stop));
                let d = saved.at_stop.minus(here);
                why.push(format!("the pod's clocks would go back by {} us", d.monotonic.max(d.boottime) / 1000));
            }
        }
        if !why.is_empty() {
            self.rebuild_for(&image, &mut files, inside.as_mut(), why.join("; "))?;
        }
        let sk = self.skeleton.as_mut().ok_or_else(|| mig_err("final round", "restore", "no prepared pod"))?;
        if TreeShape::of(&image.group) != sk.shape {
            return Err(mig_err("final round", "restore", "the pod image's process tree is not the final round's"));
        }
        let init_pid = sk.state.init_pid;
        let dir = pod::pod_dir(&self.root, &name);
        // The console log as it was, so the processes' appends continue it.
        let log = dir.join("console.log");
        let mut console = Vec::new();
        if let Some(img) = f.images.iter().find(|i| i.name == CONSOLE_IMAGE) {
            let len = img.extents.iter().map(|e| e.end()).max().unwrap_or(0);
            console = vec![0u8; len as usize];
            zap_store::materialize(&*self.spool, &img.extents, 0, &mut console)?;
        }
        step("console log read");
        std::fs::write(&log, &console).map_err(|e| mig_err("final round: console log", log.display(), e))?;
        // The carried directories go in place before any file of the pod is reopened.
        self.journal.placed = true;
        journal::write(&self.jpath, &self.journal)?;
        self.dirs.place()?;
        step("console log and directories");
        // System V objects, then the segments attached to them.
        image.ipc.restore(&*self.spool, &f.images, init_pid)?;
        let read = Self::reader(&self.cache, &self.spool);
        for m in &image.group.members {
            if let Some(img) = m.image() {
                if img.vmas.iter().any(|v| matches!(v.backing, crate::mem::Backing::SysvShm { .. })) {
                    let mem = self.mems.entry(m.vpid).or_default();
                    sk.patch_layout(m.vpid, &img.vmas, true, mem, &read)?;
                }
            }
        }
        files.path_map.push((image.pod_dir.clone(), format!("{}/", dir.display())));
        let ipv4 = |c: &str| c.split('/').next()?.parse::<std::net::Ipv4Addr>().ok().map(|a| a.octets());
        if let (Some(old), Some(new)) = (image.ip.as_deref().and_then(ipv4), self.offer.ip.as_deref().and_then(ipv4)) {
            if old != new {
                files.sockets.rebind.push((old, new));
            }
        }
        if inside.is_none() {
            image.inside.restore_names(&name, init_pid)?;
        }
        step("IPC and names");
        let built = group::complete(&mut sk.tree, &image.group, files, |r| r.memory_in_place(&*self.spool, &f.images));
        let built = built.and_then(|b| image.ipc.finish(init_pid).map(|()| b));
        // Cgroup placement, controllers and settings, mount propagation: before anything runs.
        let built = match inside.as_mut() {
            Some(i) => built.and_then(|b| i.before_release(&b.0).map(|()| b)),
            None => built,
        };
        drop(inside);
        let built = built?;
        step("processes completed");
        // Frozen through the cgroup before the processes are let go: they stay stopped until
        // Commit, whatever happens to this process.
        let cg = pod::cgroup_of(&sk.state);
        cg.freeze(Duration::from_secs(10)).or_else(|_| std::fs::write(sk.state.cgroup.join("cgroup.freeze"), "1").map_err(|e| crate::EngineError::io("freeze cgroup", &sk.state.cgroup, e)))?;
        let sk = self.skeleton.take().expect("checked above");
        let Skeleton { state, tree, .. } = sk;
        step("frozen");
        let restored = tree.finish(&image.group, Ok(built), t)?;
        step("released");
        let mut state = state;
        state.main_pid = restored.host_pid(image.main_vpid);
        state.main_vpid = image.main_vpid;
        pod::save(&self.root, &state)?;
        step("pod state saved");
        drop(read);
        self.prepared = Some(state);
        self.journal.state = DestState::Prepared;
        journal::write(&self.jpath, &self.journal)?;
        step("prepared");
        let memory = match self.rebuilt_last.take() {
            Some(why) => format!("rebuilt in the final round ({why})"),
            None => "prepared during pre-copy".to_string(),
        };
        self.final_images = f.images;
        self.image = Some(image);
        Ok(Ready { restore_ms: t.elapsed().as_secs_f64() * 1e3, memory })
    }

    fn commit(&mut self) -> Result<wire::Running> {
        let t = Instant::now();
        let state = self.prepared.clone().ok_or_else(|| mig_err("handover", "Commit", "no restored pod to run"))?;
        self.journal.state = DestState::Committed;
        journal::write(&self.jpath, &self.journal)?;
        journal::record_outcome(&self.offer.session, "committed")?;
        tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, "commit: journal written");
        go_live(&state.name, &state, false)?;
        tracing::debug!(ms = t.elapsed().as_secs_f64() * 1e3, "commit: live");
        // Each TCP connection sends a window probe: its peer learns at once where it went.
        let pids: Vec<i32> = crate::group::tree_of(state.init_pid).into_iter().filter(|&p| p != state.init_pid).collect();
        if let Err(e) = crate::sockets::probe_tcp(&pids) {
            tracing::warn!(pod = state.name, error = %e, "could not probe the pod's TCP connections");
        }
        Ok(wire::Running { commit_ms: t.elapsed().as_secs_f64() * 1e3 })
    }

    /// A checkpoint of the pod as it arrived, in this host's store.
    fn keep_checkpoint(&mut self) -> Result<String> {
        let mut image = self.image.clone().ok_or_else(|| mig_err("keep checkpoint", "pod image", "none"))?;
        let mut images = Vec::new();
        for m in &mut image.group.members {
            let prefix = crate::group::GroupImage::prefix(m.vpid);
            let Some(mem) = self.mems.get(&m.vpid) else { continue };
            if let crate::group::MemberState::Live(img) = &mut m.state {
                for v in &mut img.vmas {
                    let ex = zap_store::clip(&mem.extents, v.start, v.end);
                    if !ex.is_empty() {
                        let n = format!("{prefix}mem/{:x}", v.start);
                        v.image = Some(n.clone());
                        images.push(zap_store::Image { name: n, kind: zap_store::ImageKind::Memory, extents: ex });
                    }
                }
            }
        }
        images.extend(self.final_images.iter().cloned());
        let store = LocalStore::open(crate::host::store_dir(), StoreOptions { create: true, ..Default::default() })?;
        let mut w = store.writer()?;
        let mut manifest = zap_store::Manifest::new(self.offer.name.clone(), crate::pod::checkpoint::KIND);
        for (_, _, id) in images.iter().flat_map(|i| i.extents.iter().map(move |e| (i, e))).filter_map(|(i, e)| match e.data {
            zap_store::ExtentData::Chunk { id, .. } => Some((i, e, id)),
            zap_store::ExtentData::Zero => None,
        }) {
            if !zap_store::ChunkSink::contains(&mut w, &id)? {
                zap_store::ChunkSink::put(&mut w, &self.spool.stored(&id)?)?;
            }
        }
        manifest.labels.insert("pod".into(), self.offer.name.clone());
        manifest.labels.insert("processes".into(), image.group.members.len().to_string());
        manifest.labels.insert("mode".into(), "full".into());
        manifest.labels.insert("migrated".into(), self.offer.session.clone());
        if let Some(ip) = &self.offer.ip {
            manifest.labels.insert("ip".into(), ip.clone());
        }
        manifest.images = images;
        manifest.state = image.encode();
        let summary = zap_store::ChunkSink::commit(w, manifest)?;
        pod::set_last_checkpoint(&self.root, &self.offer.name, &summary.id.to_string())?;
        Ok(summary.id.to_string())
    }

    /// Waits until the migration cache is closed (it is opened again to keep the pod's chunks).
    fn cache_closed(&mut self) {
        if let Some(t) = self.cache_closing.take() {
            if t.join().is_err() {
                tracing::warn!("closing the migration cache panicked");
            }
        }
    }

    fn cleanup_dir(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Removes everything the session made (not committed).
    fn discard(&mut self) {
        self.cache_closed();
        if let Some(sk) = self.skeleton.take() {
            if let Err(e) = sk.destroy() {
                tracing::warn!(error = %e, "could not remove the prepared pod");
            }
        } else if self.prepared.is_some() || self.journal.state != DestState::Receiving {
            if let Err(e) = pod::rm(&self.root, &self.offer.name, true) {
                tracing::warn!(error = %e, "could not remove the restored pod");
            }
        }
        self.dirs.discard();
        let _ = journal::record_outcome(&self.offer.session, "discarded");
        self.cleanup_dir();
    }
}

/// The hooks of a prepared pod rebuilt in the final round: a session leader takes its
/// controlling terminal, and what the processes made inside the pod is made as they are built.
struct Rebuild<'x, 'a> {
    group: &'x group::GroupImage,
    files: &'x mut crate::files::RestoreContext,
    inside: Option<&'x mut InsideRestore<'a, Spool>>,
}

impl Hooks for Rebuild<'_, '_> {
    fn pod_created(&mut self, state: &pod::PodState) -> crate::Result<()> {
        match self.inside.as_deref_mut() {
            Some(i) => i.pod_created(state),
            None => Ok(()),
        }
    }

    fn member_taken(&mut self, inj: &mut crate::inject::Injector, t: group::Taken) -> crate::Result<()> {
        if t.leads_session {
            group::take_ctty(self.group, inj, t.vpid, self.files)?;
        }
        match self.inside.as_deref_mut() {
            Some(i) => i.member_taken(t.vpid, t.pid, t.ppid, inj),
            None => Ok(()),
        }
    }
}

/// Puts a restored pod on the LAN and lets it run: attach its veth, thaw, and with `announce`
/// announce its address.
fn go_live(name: &str, state: &pod::PodState, announce: bool) -> Result<()> {
    if let Some(veth) = &state.veth_host {
        let attached = std::process::Command::new("ip")
            .args(["-o", "link", "show", "dev", veth])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(" master "));
        if !attached {
            net::attach(name, veth)?;
        }
    }
    pod::cgroup_of(state).thaw()?;
    if announce && state.ip.is_some() {
        if let Err(e) = net::announce(name, state.init_pid, 3) {
            tracing::warn!(pod = name, error = %e, "could not announce the address");
        }
    }
    Ok(())
}

/// The answer to a recovery query about `session`.
fn answer(root: &Path, session: &str) -> Answer {
    if !journal::valid_session(session) {
        return Answer::Unknown;
    }
    // A receiving process still at it gets a moment to finish (its link is gone).
    let dir = journal::session_dir(session);
    let t = Instant::now();
    while dir.exists() && t.elapsed() < Duration::from_secs(15) {
        sweep_session(root, &dir);
        std::thread::sleep(Duration::from_millis(100));
    }
    match journal::outcome(session).as_deref() {
        Some("committed") => Answer::Committed,
        Some("discarded") => Answer::Discarded,
        _ => Answer::Unknown,
    }
}

/// Resolves the session in `dir` if its receiving process is gone: a committed pod is put on
/// the LAN and let run; anything else is removed.
pub fn sweep_session(root: &Path, dir: &Path) {
    let Ok(Some(j)) = journal::read::<DestJournal>(&dir.join("session.json")) else {
        // A directory without a journal: creation was interrupted before anything was made.
        if dir.exists() && !dir.join("session.json").exists() && dir.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|a| a.as_secs() > 60) {
            let _ = std::fs::remove_dir_all(dir);
        }
        return;
    };
    if pod::alive(j.pid, j.start) {
        return;
    }
    match j.state {
        DestState::Committed => {
            if let Ok(state) = pod::load(root, &j.pod) {
                if let Err(e) = go_live(&j.pod, &state, true) {
                    tracing::warn!(pod = j.pod, error = %e, "could not finish a committed migration");
                    return;
                }
            }
            let _ = journal::record_outcome(&j.session, "committed");
        }
        DestState::Receiving | DestState::Prepared => {
            for d in &j.copy_dirs {
                let _ = std::fs::remove_dir_all(format!("{d}.zap-incoming-{}", j.session));
                if j.placed {
                    let _ = std::fs::remove_dir_all(d);
                }
            }
            if pod::load(root, &j.pod).is_ok() {
                if let Err(e) = pod::rm(root, &j.pod, true) {
                    tracing::warn!(pod = j.pod, error = %e, "could not remove an abandoned incoming pod");
                    return;
                }
            }
            let _ = journal::record_outcome(&j.session, "discarded");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Resolves every session of this host whose receiving process is gone ([`sweep_session`]).
pub fn sweep(root: &Path) {
    journal::prune_outcomes();
    let Ok(entries) = std::fs::read_dir(crate::host::migrate_dir()) else { return };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with("in-") {
            sweep_session(root, &e.path());
        }
    }
}
