//! Namespaces processes of a pod made for themselves (`unshare`, `clone` with `CLONE_NEW*`,
//! `setns`): UTS, IPC, network, mount, time and cgroup namespaces inside the pod, and the
//! pod's own hostname and domain name as they are at the checkpoint.
//!
//! ## Saved ([`save`])
//! Every live process's namespaces are compared with the pod's (its init's, by inode); each
//! namespace that differs gets an index per kind, in the order of the first process found in it
//! (processes come parents first), and every process records, per kind, the index of its
//! namespace or none for the pod's. Per namespace:
//! - UTS: hostname and domain name;
//! - IPC: its System V objects and POSIX message queues ([`crate::ipc`], images named
//!   `ipc{n}/...`);
//! - network: whether `lo` is up and its addresses; any other interface (a veth pair between
//!   namespaces), and routes other than the kernel's own, are refused; a socket of a process
//!   that belongs to another network namespace than the process's is refused;
//! - time: the monotonic and boot-time offsets (read from a process whose children go there;
//!   relative to the host's clocks, so a restore moves them by what the restored pod's own
//!   offsets differ from the saved pod's by: [`super::clock`]);
//!   the namespace a process's children will be in (`time_for_children`) is saved too;
//! - mount: its mounts ([`super::mounts`], relative to the pod's);
//! - cgroup: its root (a cgroup under the pod's).
//!
//! PID namespaces and user namespaces made inside the pod are refused: `clone3` with `set_tid`
//! takes one pid per PID namespace level, and a restored user namespace would need its
//! id mappings written before any process enters it.
//!
//! ## Restored ([`NsRestore::enter`])
//! While the group is rebuilt, each process, right after it was taken over and before it
//! creates its children (which inherit what it joined), is put into its namespaces by injected
//! syscalls: the first process of a namespace makes it (`unshare`), Zap then gives it its state
//! (hostname, System V objects, `lo` and addresses with `ip`, time offsets written before any
//! process is in it, mounts; a cgroup namespace is made with the process in its root cgroup),
//! and later processes join it (`setns` on `/proc/PID/ns/KIND` of one that is in it). Mount
//! namespaces are joined last, so `/proc` is still the pod's for the other joins.
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use serde::{Deserialize, Serialize};
use zap_chunker::ChunkerConfig;
use zap_store::{ChunkSink, Image};

use crate::inject::Injector;
use crate::ipc::IpcState;
use crate::sys::{ns, proc as sysproc};
use crate::{EngineError, Result};

/// The kinds of namespace a process may make inside the pod, as they are joined on restore
/// (mount last): (name in `/proc/PID/ns`, `CLONE_NEW*`).
pub const KINDS: [(&str, i32); 6] = [
    ("time", libc::CLONE_NEWTIME),
    ("uts", libc::CLONE_NEWUTS),
    ("ipc", libc::CLONE_NEWIPC),
    ("net", libc::CLONE_NEWNET),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("mnt", libc::CLONE_NEWNS),
];
const TIME: usize = 0;
const UTS: usize = 1;
/// Index of IPC namespaces in [`KINDS`].
pub const IPC: usize = 2;
const NET: usize = 3;
const CGROUP: usize = 4;
/// Index of mount namespaces in [`KINDS`].
pub const MNT: usize = 5;

/// A UTS namespace's names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uts {
    /// Hostname.
    pub hostname: String,
    /// NIS domain name.
    pub domainname: String,
}

/// A network namespace made inside the pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Net {
    /// `lo` is up.
    pub lo_up: bool,
    /// Addresses on `lo` besides the ones it gets when brought up (`ip addr` syntax, with
    /// `-6` for IPv6: (family flag, address/prefix)).
    pub addrs: Vec<(String, String)>,
}

/// A time namespace's offsets (s, ns).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Time {
    /// CLOCK_MONOTONIC offset.
    pub monotonic: (i64, i64),
    /// CLOCK_BOOTTIME offset.
    pub boottime: (i64, i64),
}

/// Which namespaces a process is in: per kind of [`KINDS`], the index of a namespace made in
/// the pod, or `None` for the pod's own.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The process.
    pub vpid: i32,
    /// Per kind.
    pub ns: [Option<usize>; 6],
    /// The time namespace its children will be in.
    pub time_children: Option<usize>,
}

/// The namespaces made inside the pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NestedImage {
    /// The pod's own hostname and domain name at the checkpoint.
    pub pod_uts: Uts,
    /// UTS namespaces.
    pub uts: Vec<Uts>,
    /// IPC namespaces' System V objects.
    pub ipc: Vec<IpcState>,
    /// Network namespaces.
    pub net: Vec<Net>,
    /// Time namespaces.
    pub time: Vec<Time>,
    /// Cgroup namespaces: their root, under the pod's cgroup.
    pub cgroup: Vec<String>,
    /// How many mount namespaces (their mounts are in the pod's mounts image).
    pub mnt: usize,
    /// Every live process that is in a namespace of its own (or whose children will be).
    pub members: Vec<Member>,
}

fn pod_err(pod: &str, step: impl Into<String>, detail: impl std::fmt::Display) -> EngineError {
    EngineError::Pod { pod: pod.to_string(), step: step.into(), detail: detail.to_string() }
}

fn ns_ino(pid: i32, name: &str) -> std::io::Result<u64> {
    Ok(std::fs::metadata(format!("/proc/{pid}/ns/{name}"))?.ino())
}

fn ns_open(pid: i32, name: &str) -> std::io::Result<std::fs::File> {
    std::fs::File::open(format!("/proc/{pid}/ns/{name}"))
}

/// Hostname and domain name of the UTS namespace of `pid`.
pub fn read_uts(pid: i32) -> std::io::Result<Uts> {
    let f = ns_open(pid, "uts")?;
    ns::in_namespaces(&[(f.as_fd(), libc::CLONE_NEWUTS)], false, || {
        let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim_end_matches('\n').to_string());
        Ok(Uts { hostname: read("/proc/sys/kernel/hostname")?, domainname: read("/proc/sys/kernel/domainname")? })
    })
}

/// Sets the names of the UTS namespace of `pid`.
pub fn write_uts(pid: i32, uts: &Uts) -> std::io::Result<()> {
    let f = ns_open(pid, "uts")?;
    ns::in_namespaces(&[(f.as_fd(), libc::CLONE_NEWUTS)], false, || {
        std::fs::write("/proc/sys/kernel/hostname", &uts.hostname)?;
        std::fs::write("/proc/sys/kernel/domainname", &uts.domainname)
    })
}

/// Output of `ip` in the network namespace of `pid`.
fn ip(pid: i32, args: &[&str]) -> std::result::Result<String, String> {
    let f = ns_open(pid, "net").map_err(|e| e.to_string())?;
    let mut cmd = std::process::Command::new("ip");
    cmd.args(args);
    let out = ns::command_in_netns(&mut cmd, &std::os::fd::OwnedFd::from(f)).map_err(|e| format!("run ip: {e}"))?;
    if !out.status.success() {
        return Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn save_net(pid: i32) -> std::result::Result<Net, String> {
    let links = ip(pid, &["-o", "link", "show"])?;
    let mut net = Net::default();
    for l in links.lines() {
        let name = l.split(':').nth(1).map(|s| s.trim().split('@').next().unwrap_or("").to_string()).unwrap_or_default();
        if name == "lo" {
            net.lo_up = l.split('<').nth(1).and_then(|f| f.split('>').next()).is_some_and(|f| f.split(',').any(|x| x == "UP"));
        } else if !name.is_empty() {
            return Err(format!("it has interface {name}: only lo is restored in a network namespace made inside the pod"));
        }
    }
    for (fam, flag) in [("inet", "-4"), ("inet6", "-6")] {
        for l in ip(pid, &[flag, "-o", "addr", "show", "dev", "lo"])?.lines() {
            let Some(a) = l.split_whitespace().skip_while(|w| *w != fam).nth(1) else { continue };
            if a != "127.0.0.1/8" && a != "::1/128" {
                net.addrs.push((flag.to_string(), a.to_string()));
            }
        }
        for l in ip(pid, &[flag, "route", "show", "table", "all"])?.lines() {
            if !l.contains("proto kernel") && !l.trim().is_empty() {
                return Err(format!("it has route {:?}: only the kernel's own routes are restored", l.trim()));
            }
        }
    }
    Ok(net)
}

fn restore_net(pid: i32, net: &Net) -> std::result::Result<(), String> {
    if net.lo_up {
        ip(pid, &["link", "set", "lo", "up"])?;
    }
    for (flag, a) in &net.addrs {
        ip(pid, &[flag, "addr", "add", a, "dev", "lo"])?;
    }
    Ok(())
}

fn parse_offsets(text: &str) -> std::result::Result<Time, String> {
    let mut t = Time::default();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let v = |i: usize| f.get(i).and_then(|x| x.parse::<i64>().ok()).ok_or_else(|| format!("unreadable offsets line {l:?}"));
        match f.first() {
            Some(&"monotonic") => t.monotonic = (v(1)?, v(2)?),
            Some(&"boottime") => t.boottime = (v(1)?, v(2)?),
            _ => {}
        }
    }
    Ok(t)
}

/// The root of the cgroup namespace of `pid`, under the pod's cgroup (hierarchy path `pod_path`).
fn cgroup_ns_root(pid: i32, pod_path: &str) -> std::result::Result<String, String> {
    let full = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(|e| e.to_string())?;
    let full = full.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("").to_string();
    let f = ns_open(pid, "cgroup").map_err(|e| e.to_string())?;
    let inner = ns::in_namespaces(&[(f.as_fd(), libc::CLONE_NEWCGROUP)], false, || std::fs::read_to_string(format!("/proc/{pid}/cgroup")))
        .map_err(|e| e.to_string())?;
    let inner = inner.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("").to_string();
    let root = if inner == "/" { full.clone() } else { full.strip_suffix(&inner).unwrap_or("").to_string() };
    if root.is_empty() && inner != "/" {
        return Err(format!("cannot tell its root from {full} and {inner}"));
    }
    if root == pod_path {
        return Ok(String::new());
    }
    root.strip_prefix(&format!("{pod_path}/")).map(str::to_string).ok_or_else(|| format!("its root {root} is outside the pod's cgroup {pod_path}"))
}

/// What [`save`] found: the image, and per live member its mount namespace's host pid for the
/// mounts' save.
pub struct SavedNested {
    /// The image (without the mounts of nested mount namespaces).
    pub image: NestedImage,
    /// Per nested mount namespace, the host pid of its first process.
    pub mnt_pids: Vec<i32>,
    /// Images of System V shared memory of nested IPC namespaces.
    pub images: Vec<Image>,
}

/// Fails when a process (host pids `pids`, zombies skipped) is in a user namespace or a PID
/// namespace of its own, or will start its children in a PID namespace of their own.
pub fn refuse_unrestorable(pod: &str, init_pid: i32, pids: &[i32]) -> Result<()> {
    let ino = |pid: i32, name: &str| ns_ino(pid, name).map_err(|e| pod_err(pod, "checkpoint", format!("pid {pid}: {name} namespace: {e}")));
    let (pod_user, pod_pid) = (ino(init_pid, "user")?, ino(init_pid, "pid")?);
    for &pid in pids {
        if crate::group::is_zombie_pid(pid) {
            continue;
        }
        // The pid in the pod's namespace: the second of NSpid (host, pod, nested ...).
        let vpid = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("NSpid:")).and_then(|v| v.split_whitespace().nth(1)?.parse::<i32>().ok()))
            .unwrap_or(pid);
        let who = |what: &str| pod_err(pod, "checkpoint", format!("pid {vpid} (host pid {pid}) {what}"));
        if ino(pid, "user")? != pod_user {
            return Err(who("is in a user namespace of its own: not supported"));
        }
        if ino(pid, "pid")? != pod_pid {
            return Err(who("is in a PID namespace made inside the pod: nested PID namespaces are not supported"));
        }
        if ino(pid, "pid_for_children")? != pod_pid {
            return Err(who("made a PID namespace for its children: nested PID namespaces are not supported"));
        }
    }
    Ok(())
}

/// Saves the namespaces made inside the pod (see the module doc). `members` are the live
/// processes, (vpid, host pid), parents first; `pod_cgroup` is the pod's cgroup as a path of the
/// v2 hierarchy.
pub fn save<W: ChunkSink>(
    pod: &str,
    init_pid: i32,
    members: &[(i32, i32)],
    pod_cgroup: &str,
    sink: &mut W,
    cfg: &ChunkerConfig,
) -> Result<SavedNested> {
    let t = std::time::Instant::now();
    let took = |what: &str| tracing::debug!(pod, ms = t.elapsed().as_secs_f64() * 1e3, "save namespaces: {what}");
    let step = "save namespaces";
    let ino = |pid: i32, name: &str| ns_ino(pid, name).map_err(|e| pod_err(pod, step, format!("pid {pid}: {name} namespace: {e}")));
    let pod_ns: Vec<u64> = KINDS.iter().map(|(n, _)| ino(init_pid, n)).collect::<Result<_>>()?;
    let (pod_user, pod_pid) = (ino(init_pid, "user")?, ino(init_pid, "pid")?);
    let mut image = NestedImage { pod_uts: read_uts(init_pid).map_err(|e| pod_err(pod, "read the pod's hostname", e))?, ..Default::default() };
    // Per kind: namespace inode → (index, host pid of the first process in it).
    let mut seen: [Vec<(u64, i32)>; 6] = Default::default();
    let mut time_children_first: HashMap<u64, i32> = HashMap::new();
    for &(vpid, pid) in members {
        let who = |what: &str| pod_err(pod, "checkpoint", format!("pid {vpid} {what}"));
        if ino(pid, "user")? != pod_user {
            return Err(who("is in a user namespace of its own: not supported"));
        }
        if ino(pid, "pid")? != pod_pid || ino(pid, "pid_for_children")? != pod_pid {
            return Err(who("made a PID namespace: nested PID namespaces are not supported"));
        }
        let mut m = Member { vpid, ..Default::default() };
        for (k, (name, _)) in KINDS.iter().enumerate() {
            let i = ino(pid, name)?;
            if i != pod_ns[k] {
                let idx = match seen[k].iter().position(|(x, _)| *x == i) {
                    Some(p) => p,
                    None => {
                        seen[k].push((i, pid));
                        seen[k].len() - 1
                    }
                };
                m.ns[k] = Some(idx);
            }
        }
        let tc = ino(pid, "time_for_children")?;
        time_children_first.entry(tc).or_insert(pid);
        if tc != pod_ns[TIME] {
            let idx = match seen[TIME].iter().position(|(x, _)| *x == tc) {
                Some(p) => p,
                None => {
                    seen[TIME].push((tc, pid));
                    seen[TIME].len() - 1
                }
            };
            m.time_children = Some(idx);
            if m.ns[TIME] != Some(idx) && seen[TIME][idx].1 != pid {
                return Err(who("will start its children in a time namespace other processes are in already: not supported"));
            }
        }
        if m.ns.iter().any(Option::is_some) || m.time_children.is_some() {
            image.members.push(m);
        }
    }
    took("members' namespaces");
    let mut images = Vec::new();
    let vpid_of = |host: i32| members.iter().find(|m| m.1 == host).map_or(host, |m| m.0);
    for (n, &(_, pid)) in seen[UTS].iter().enumerate() {
        let u = read_uts(pid).map_err(|e| pod_err(pod, format!("read UTS namespace {n}"), e))?;
        image.uts.push(u);
    }
    for (n, &(_, pid)) in seen[IPC].iter().enumerate() {
        let (st, mut imgs) = crate::ipc::save_prefixed(pid, sink, cfg, &format!("ipc{n}/"))?;
        images.append(&mut imgs);
        image.ipc.push(st);
    }
    for &(_, pid) in &seen[NET] {
        let net = save_net(pid).map_err(|e| pod_err(pod, format!("save the network namespace of pid {}", vpid_of(pid)), e))?;
        image.net.push(net);
    }
    if !seen[NET].is_empty() {
        refuse_foreign_sockets(pod, members)?;
    }
    for &(ns_ino, pid) in &seen[TIME] {
        // timens_offsets shows the namespace a process's children go to.
        let reader = members.iter().map(|m| m.1).find(|&p| ns_ino_of(p, "time_for_children") == Some(ns_ino)).unwrap_or(pid);
        let text = std::fs::read_to_string(format!("/proc/{reader}/timens_offsets"))
            .map_err(|e| pod_err(pod, format!("read the time offsets of pid {reader}"), e))?;
        image.time.push(parse_offsets(&text).map_err(|e| pod_err(pod, "read time offsets", e))?);
    }
    for &(_, pid) in &seen[CGROUP] {
        let root = cgroup_ns_root(pid, pod_cgroup).map_err(|e| pod_err(pod, format!("save the cgroup namespace of pid {}", vpid_of(pid)), e))?;
        image.cgroup.push(root);
    }
    image.mnt = seen[MNT].len();
    let mnt_pids = seen[MNT].iter().map(|s| s.1).collect();
    Ok(SavedNested { image, mnt_pids, images })
}

fn ns_ino_of(pid: i32, name: &str) -> Option<u64> {
    ns_ino(pid, name).ok()
}

/// Fails when a process holds a socket of another network namespace than its own (it was made
/// before the process changed namespace): it would be recreated in the wrong one.
fn refuse_foreign_sockets(pod: &str, members: &[(i32, i32)]) -> Result<()> {
    for &(vpid, pid) in members {
        let own = ns_ino(pid, "net").map_err(|e| pod_err(pod, "checkpoint", e))?;
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        let pidfd = sysproc::pidfd_open(pid).map_err(|e| pod_err(pod, "checkpoint", e))?;
        for e in fds.flatten() {
            let Ok(target) = std::fs::read_link(e.path()) else { continue };
            if !target.to_string_lossy().starts_with("socket:") {
                continue;
            }
            let Ok(fd) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            let dup = sysproc::pidfd_getfd(&pidfd, fd).map_err(|e| pod_err(pod, "checkpoint", e))?;
            let sock_ns = ns::socket_netns(dup.as_fd()).map_err(|e| pod_err(pod, "checkpoint", format!("pid {vpid} fd {fd}: {e}")))?;
            if sock_ns != own {
                return Err(pod_err(
                    pod,
                    "checkpoint",
                    format!("pid {vpid} fd {fd}: a socket of another network namespace than the process's: not supported"),
                ));
            }
        }
    }
    Ok(())
}

/// Where the processes of the pod are put into their namespaces during a restore.
pub struct NsRestore<'a> {
    pod: String,
    image: &'a NestedImage,
    /// Per kind and index: the vpid of a process in the namespace, and the `/proc/PID/ns` file
    /// name to join it by.
    made: [HashMap<usize, (i32, &'static str)>; 6],
    /// What each restored process is in (kids inherit it).
    now: HashMap<i32, Member>,
    /// What the restored pod's time namespace offsets differ from the saved pod's by, ns
    /// (added to the saved offsets of the namespaces made inside it).
    time_shift: super::clock::Clocks,
}

impl<'a> NsRestore<'a> {
    /// A restore of `image` for pod `pod`.
    pub fn new(pod: &str, image: &'a NestedImage) -> Self {
        NsRestore { pod: pod.to_string(), image, made: Default::default(), now: HashMap::new(), time_shift: Default::default() }
    }

    /// Moves the offsets of the time namespaces made inside the pod by `shift` (what the
    /// restored pod's own offsets differ from the saved pod's by).
    pub fn shift_time(&mut self, shift: super::clock::Clocks) {
        self.time_shift = shift;
    }

    /// Puts process `vpid` (host pid `pid`, driven by `inj`, just taken over; its parent is
    /// `ppid`, 0 for the init) into its saved namespaces; see the module doc. `to_cgroup` puts a
    /// host pid into a cgroup under the pod's. Returns the namespaces it made, (kind, index):
    /// the caller gives those of [`IPC`] and [`MNT`] their objects and mounts before the next
    /// process is entered.
    pub fn enter(&mut self, vpid: i32, pid: i32, ppid: i32, inj: &mut Injector, to_cgroup: &dyn Fn(&str, i32) -> Result<()>) -> Result<Vec<(usize, usize)>> {
        let want = self.image.members.iter().find(|m| m.vpid == vpid).cloned().unwrap_or(Member { vpid, ..Default::default() });
        let parent = self.now.get(&ppid).cloned().unwrap_or_default();
        let mut made = Vec::new();
        // A child starts in its parent's namespaces, and in the time namespace its parent's
        // children go to.
        let mut have = Member { vpid, ns: parent.ns, time_children: parent.time_children };
        have.ns[TIME] = parent.time_children;
        for (k, (name, flag)) in KINDS.iter().enumerate() {
            if want.ns[k] == have.ns[k] {
                continue;
            }
            match want.ns[k] {
                None => self.join(inj, vpid, 1, name, *flag)?,
                Some(n) => match self.made[k].get(&n).copied() {
                    Some((holder, file)) => self.join(inj, vpid, holder, file, *flag)?,
                    None => {
                        self.make(k, n, vpid, pid, inj, to_cgroup)?;
                        made.push((k, n));
                    }
                },
            }
            if k == TIME {
                have.time_children = want.ns[k];
            }
        }
        if want.time_children != have.time_children {
            match want.time_children {
                Some(n) if !self.made[TIME].contains_key(&n) => {
                    self.unshare_time(n, vpid, pid, inj)?;
                    self.made[TIME].insert(n, (vpid, "time_for_children"));
                }
                _ => return Err(pod_err(&self.pod, format!("restore the namespaces of pid {vpid}"), "its children's time namespace exists already")),
            }
        }
        self.now.insert(vpid, want);
        Ok(made)
    }

    fn join(&self, inj: &mut Injector, vpid: i32, holder: i32, file: &str, flag: i32) -> Result<()> {
        let step = |e: EngineError| pod_err(&self.pod, format!("restore the namespaces of pid {vpid}: join {file} of pid {holder}"), e);
        let path = inj.put_cstr(format!("/proc/{holder}/ns/{file}").as_bytes()).map_err(step)?;
        let fd = inj.call("open namespace", libc::SYS_open, [path, (libc::O_RDONLY | libc::O_CLOEXEC) as u64, 0, 0, 0, 0]).map_err(step)?;
        let r = inj.call("setns", libc::SYS_setns, [fd, flag as u64, 0, 0, 0, 0]);
        inj.call("close namespace", libc::SYS_close, [fd, 0, 0, 0, 0, 0]).map_err(step)?;
        r.map(|_| ()).map_err(step)
    }

    fn unshare_time(&self, n: usize, vpid: i32, pid: i32, inj: &mut Injector) -> Result<()> {
        let step = |e: &dyn std::fmt::Display| pod_err(&self.pod, format!("restore time namespace {n} of pid {vpid}"), e);
        inj.call("unshare(CLONE_NEWTIME)", libc::SYS_unshare, [libc::CLONE_NEWTIME as u64, 0, 0, 0, 0, 0]).map_err(|e| step(&e))?;
        let t = self.image.time.get(n).ok_or_else(|| step(&"not in the image"))?;
        let ns = |(s, n): (i64, i64)| s * 1_000_000_000 + n;
        let saved = super::clock::Clocks { monotonic: ns(t.monotonic), boottime: ns(t.boottime) };
        let text = super::clock::offsets_text(saved.plus(self.time_shift));
        std::fs::write(format!("/proc/{pid}/timens_offsets"), text).map_err(|e| step(&e))
    }

    /// Makes namespace `n` of kind `k` with process `vpid` in it, and gives it its state.
    fn make(&mut self, k: usize, n: usize, vpid: i32, pid: i32, inj: &mut Injector, to_cgroup: &dyn Fn(&str, i32) -> Result<()>) -> Result<()> {
        let (name, flag) = KINDS[k];
        let pod = self.pod.clone();
        let step = |e: &dyn std::fmt::Display| pod_err(&pod, format!("restore {name} namespace {n} of pid {vpid}"), e);
        match k {
            TIME => {
                self.unshare_time(n, vpid, pid, inj)?;
                // Enter it: the process itself was left in its old one.
                self.made[TIME].insert(n, (vpid, "time_for_children"));
                self.join(inj, vpid, vpid, "time_for_children", flag)?;
                self.made[TIME].insert(n, (vpid, "time"));
                return Ok(());
            }
            CGROUP => {
                // The namespace's root is the cgroup the process is in when it makes it.
                let root = self.image.cgroup.get(n).ok_or_else(|| step(&"not in the image"))?;
                to_cgroup(root, pid)?;
                inj.call("unshare", libc::SYS_unshare, [flag as u64, 0, 0, 0, 0, 0]).map_err(|e| step(&e))?;
            }
            _ => {
                inj.call("unshare", libc::SYS_unshare, [flag as u64, 0, 0, 0, 0, 0]).map_err(|e| step(&e))?;
            }
        }
        self.made[k].insert(n, (vpid, name));
        match k {
            UTS => {
                let u = self.image.uts.get(n).ok_or_else(|| step(&"not in the image"))?;
                write_uts(pid, u).map_err(|e| step(&e))?;
            }
            NET => {
                let net = self.image.net.get(n).ok_or_else(|| step(&"not in the image"))?;
                restore_net(pid, net).map_err(|e| step(&e))?;
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets() {
        let t = parse_offsets("monotonic      1000         5\nboottime          -7         0\n").unwrap();
        assert_eq!(t.monotonic, (1000, 5));
        assert_eq!(t.boottime, (-7, 0));
    }
}
