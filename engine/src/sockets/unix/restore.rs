//! Restoring unix sockets, in two passes.
//!
//! While each process gets its fds ([`restore`]), every unix socket is created (or taken from
//! the process that created it), given its options and name, connected, and recorded with a
//! keeper fd (a copy at fd 10000 or above in the process that made it) so that any process of the
//! group can take it later: both ends of a pair are made by the first of them restored, a
//! listener or receiver that another socket connects to is made on demand by that socket (from
//! the copy of its state saved with it), and the socket's own restore then takes it.
//!
//! Once every process has its fds, [`finish`] requeues the saved messages (their fds are
//! recreated or taken from the processes that hold them), makes the peers of half-closed sockets
//! leave the error they left, applies shutdowns, and removes the temporary directories used to
//! bind names whose files were gone. The keepers are closed with the group's other keepers.
use std::collections::HashMap;

use super::{FlightFd, NameFile, PeerCred, UnixConn, UnixMsg, UnixName, UnixSocket};
use crate::files::{self, RestoreContext};
use crate::inject::Injector;
use crate::sockets::{opts::set_opts, put, SocketRestore};
use crate::{EngineError, Result};

/// How a name is looked up from a process of the pod.
#[derive(Clone, Debug)]
enum Reach {
    /// As it is.
    Direct,
    /// From this working directory (a relative name).
    Chdir(String),
    /// Under this root (a name bound in a temporary directory).
    Chroot(String),
}

/// A unix socket created during the restore.
#[derive(Clone, Copy, Debug)]
struct Reg {
    /// The process holding its keeper.
    vpid: i32,
    /// The keeper fd there.
    keeper: u64,
    /// Its options are set.
    opts_set: bool,
    /// Its name is bound (or it has none to bind).
    named: bool,
}

/// What restoring unix sockets has created so far, for processes restored together.
#[derive(Default)]
pub struct UnixRestore {
    regs: HashMap<u64, Reg>,
    /// How to look up the name of each bound socket, by inode.
    reach: HashMap<u64, (Vec<u8>, Reach)>,
    /// Bound sockets by (name, type), for finding the sender of a datagram.
    names: HashMap<(Vec<u8>, i32), u64>,
    /// The other end made for a half-closed socket, by the socket's inode: (vpid, keeper).
    gone_peers: HashMap<u64, (i32, u64)>,
    /// Sockets whose messages, error or shutdown wait for [`finish`]: (vpid, state).
    jobs: Vec<(i32, UnixSocket)>,
    /// Temporary files and directories to remove at the end: (vpid, path, is a directory).
    cleanup: Vec<(i32, String, bool)>,
    seq: u32,
}

impl Drop for UnixRestore {
    /// A restore that failed before [`finish`] leaves temporary socket directories behind in the
    /// pod's view of the file system, which is the host's for /tmp and /run: remove them from
    /// here (best effort; ours are named after this process).
    fn drop(&mut self) {
        let mine = format!("/.zap-unix-{}-", std::process::id());
        for (_, path, dir) in self.cleanup.drain(..).rev() {
            if path.contains(&mine) {
                let _ = if dir { std::fs::remove_dir(&path) } else { std::fs::remove_file(&path) };
            }
        }
    }
}

impl UnixRestore {
    /// Keeper fds left in process `vpid`.
    pub(crate) fn keepers(&self, vpid: i32) -> Vec<u64> {
        let mut v: Vec<u64> = self.regs.values().filter(|r| r.vpid == vpid).map(|r| r.keeper).collect();
        v.extend(self.gone_peers.values().filter(|g| g.0 == vpid).map(|g| g.1));
        v
    }
}

type Take<'a> = &'a mut dyn FnMut(&mut Injector, i32, u64) -> Result<u64>;

fn err(inj: &Injector, detail: String) -> EngineError {
    EngineError::Proc { pid: inj.tid(), detail }
}

fn sockaddr(raw: &[u8]) -> Vec<u8> {
    let mut a = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
    a.extend_from_slice(raw);
    a
}

fn show(raw: &[u8]) -> String {
    if raw.first() == Some(&0) {
        format!("@{}", String::from_utf8_lossy(&raw[1..]))
    } else {
        String::from_utf8_lossy(raw).into_owned()
    }
}

fn keeper(inj: &mut Injector, fd: u64) -> Result<u64> {
    inj.call("fcntl(F_DUPFD) keeper", libc::SYS_fcntl, [fd, libc::F_DUPFD_CLOEXEC as u64, 10000, 0, 0, 0])
}

fn close(inj: &mut Injector, fd: u64) -> Result<()> {
    inj.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0]).map(|_| ())
}

/// A unix socket owned by `uid` (see [`crate::sockets::create_as`]).
fn new_socket(inj: &mut Injector, sock_type: i32, uid: u32) -> Result<u64> {
    crate::sockets::create_as(inj, uid, "socket(AF_UNIX)", libc::SYS_socket, [libc::AF_UNIX as u64, sock_type as u64, 0, 0, 0, 0])
}

/// A pair of unix sockets, both owned by `uid`.
fn pair(inj: &mut Injector, sock_type: i32, uid: u32) -> Result<(u64, u64)> {
    let p = put(inj, &[0u8; 8])?;
    crate::sockets::create_as(inj, uid, "socketpair(AF_UNIX)", libc::SYS_socketpair, [libc::AF_UNIX as u64, sock_type as u64, 0, p, 0, 0])?;
    let b = inj.read_mem(p, 8)?;
    Ok((u64::from(u32::from_ne_bytes(b[0..4].try_into().expect("4"))), u64::from(u32::from_ne_bytes(b[4..8].try_into().expect("4")))))
}

/// Runs `f` with names looked up as `reach` says; the working and root directories are the
/// restorer's here (the process's own are set later, with its attributes), and a changed root is
/// put back.
fn with_reach<T>(inj: &mut Injector, reach: &Reach, f: impl FnOnce(&mut Injector) -> Result<T>) -> Result<T> {
    match reach {
        Reach::Direct => f(inj),
        Reach::Chdir(dir) => {
            let p = inj.put_cstr(dir.as_bytes())?;
            inj.call("chdir", libc::SYS_chdir, [p, 0, 0, 0, 0, 0])?;
            f(inj)
        }
        Reach::Chroot(root) => {
            let p = inj.put_cstr(b"/")?;
            let old = inj.call("open /", libc::SYS_open, [p, (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64, 0, 0, 0, 0])?;
            let p = inj.put_cstr(root.as_bytes())?;
            inj.call("chroot to a temporary directory", libc::SYS_chroot, [p, 0, 0, 0, 0, 0])?;
            let r = f(inj);
            inj.call("fchdir", libc::SYS_fchdir, [old, 0, 0, 0, 0, 0])?;
            let p = inj.put_cstr(b".")?;
            inj.call("chroot back", libc::SYS_chroot, [p, 0, 0, 0, 0, 0])?;
            close(inj, old)?;
            r
        }
    }
}

/// Makes a temporary directory in the process's view, with the directories `raw`'s parent needs
/// under it, all to be removed at the end. Returns its path.
fn temp_dir(inj: &mut Injector, vpid: i32, raw: &[u8], ctx: &mut UnixRestore) -> Result<String> {
    ctx.seq += 1;
    let mut made = None;
    for base in ["/tmp", "/dev/shm", "/run"] {
        let dir = format!("{base}/.zap-unix-{}-{}", std::process::id(), ctx.seq);
        let p = inj.put_cstr(dir.as_bytes())?;
        if inj.syscall(libc::SYS_mkdir, [p, 0o700, 0, 0, 0, 0])? == 0 {
            made = Some(dir);
            break;
        }
    }
    let root = made.ok_or_else(|| err(inj, "no writable /tmp, /dev/shm or /run to bind a socket whose file is gone".into()))?;
    ctx.cleanup.push((vpid, root.clone(), true));
    let path = String::from_utf8_lossy(raw).into_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut at = root.clone();
    for part in &parts[..parts.len().saturating_sub(1)] {
        if part.is_empty() || *part == "." {
            continue;
        }
        at = format!("{at}/{part}");
        let p = inj.put_cstr(at.as_bytes())?;
        let rc = inj.syscall(libc::SYS_mkdir, [p, 0o700, 0, 0, 0, 0])?;
        if rc < 0 && rc != -i64::from(libc::EEXIST) {
            return Err(err(inj, format!("make {at} to bind {path}: {}", std::io::Error::from_raw_os_error(-rc as i32))));
        }
        ctx.cleanup.push((vpid, at.clone(), true));
    }
    ctx.cleanup.push((vpid, format!("{root}/{}", path.trim_start_matches('/')), false));
    Ok(root)
}

/// Binds `fd` to `name` (socket `ino` of type `sock_type`) and records how its name is reached.
fn bind_name(inj: &mut Injector, vpid: i32, fd: u64, ino: u64, sock_type: i32, name: &UnixName, ctx: &mut UnixRestore) -> Result<()> {
    let addr = sockaddr(&name.raw);
    let bind = |inj: &mut Injector| -> Result<()> {
        let p = put(inj, &addr)?;
        let rc = inj.syscall(libc::SYS_bind, [fd, p, addr.len() as u64, 0, 0, 0])?;
        if rc < 0 {
            return Err(err(inj, format!("bind unix socket to {}: {}", show(&name.raw), std::io::Error::from_raw_os_error(-rc as i32))));
        }
        Ok(())
    };
    let reach = match &name.file {
        NameFile::Abstract => {
            bind(inj)?;
            Reach::Direct
        }
        NameFile::At { dir, mode, uid, gid } => {
            let reach = dir.clone().map(Reach::Chdir).unwrap_or(Reach::Direct);
            with_reach(inj, &reach, |inj| {
                // The file left by the original is in the way.
                let p = inj.put_cstr(&name.raw)?;
                let _ = inj.syscall(libc::SYS_unlink, [p, 0, 0, 0, 0, 0])?;
                bind(inj)?;
                let p = inj.put_cstr(&name.raw)?;
                inj.call("chmod socket file", libc::SYS_chmod, [p, u64::from(*mode), 0, 0, 0, 0])?;
                inj.call("chown socket file", libc::SYS_lchown, [p, u64::from(*uid), u64::from(*gid), 0, 0, 0])?;
                Ok(())
            })?;
            reach
        }
        NameFile::Gone => {
            let root = temp_dir(inj, vpid, &name.raw, ctx)?;
            let reach = if name.raw.first() == Some(&b'/') { Reach::Chroot(root) } else { Reach::Chdir(root) };
            with_reach(inj, &reach, bind)?;
            reach
        }
    };
    ctx.reach.insert(ino, (name.raw.clone(), reach));
    ctx.names.insert((name.raw.clone(), sock_type), ino);
    Ok(())
}

/// Connects `fd` to the bound socket `target` (already created), under the effective ids of
/// `cred` (what the accepted end is to show in `SO_PEERCRED`: [`as_cred`]).
fn connect_to(inj: &mut Injector, fd: u64, target: u64, ctx: &UnixRestore, cred: Option<&PeerCred>) -> Result<()> {
    let (raw, reach) = ctx.reach.get(&target).cloned().ok_or_else(|| err(inj, format!("unix socket {target} to connect to has no name")))?;
    let addr = sockaddr(&raw);
    with_reach(inj, &reach, |inj| {
        let p = put(inj, &addr)?;
        let rc = as_cred(inj, cred, |inj| {
            let rc = inj.syscall(libc::SYS_connect, [fd, p, addr.len() as u64, 0, 0, 0])?;
            if rc < 0 {
                return Err(err(inj, format!("connect: {}", std::io::Error::from_raw_os_error(-rc as i32))));
            }
            Ok(rc)
        })
        .or_else(|_| inj.syscall(libc::SYS_connect, [fd, p, addr.len() as u64, 0, 0, 0]))?;
        if rc < 0 {
            return Err(err(inj, format!("connect unix socket to {}: {}", show(&raw), std::io::Error::from_raw_os_error(-rc as i32))));
        }
        Ok(())
    })
}

/// Runs `f`, an injected call that makes a pair, connects or listens, with the calling thread's
/// effective uid and gid set to `cred`'s, so that `SO_PEERCRED` shows them (the kernel records
/// the effective ids of the thread that makes the call; the process still has Zap's while its
/// fds come back). Raw `setresgid`/`setresuid` change the one thread, effective ids only, and
/// are undone after. When `f` fails under those ids (a path that user may not reach, an owner it
/// may not take), the error is returned and the caller makes the call again as it would
/// without them.
fn as_cred<T>(inj: &mut Injector, cred: Option<&PeerCred>, f: impl FnOnce(&mut Injector) -> Result<T>) -> Result<T> {
    // The thread has Zap's credentials, root's: root's ids need no change (nor a question).
    let Some(c) = cred.filter(|c| c.uid != 0 || c.gid != 0) else { return f(inj) };
    let euid = inj.call("geteuid", libc::SYS_geteuid, [0; 6])?;
    let egid = inj.call("getegid", libc::SYS_getegid, [0; 6])?;
    if u64::from(c.uid) == euid && u64::from(c.gid) == egid {
        return f(inj);
    }
    let keep = u64::from(u32::MAX);
    inj.call("setresgid (peer credentials)", libc::SYS_setresgid, [keep, u64::from(c.gid), keep, 0, 0, 0])?;
    let out = match inj.call("setresuid (peer credentials)", libc::SYS_setresuid, [keep, u64::from(c.uid), keep, 0, 0, 0]) {
        Ok(_) => {
            let out = f(inj);
            inj.call("setresuid (back)", libc::SYS_setresuid, [keep, euid, keep, 0, 0, 0])?;
            out
        }
        Err(e) => Err(e),
    };
    inj.call("setresgid (back)", libc::SYS_setresgid, [keep, egid, keep, 0, 0, 0])?;
    out
}

/// Runs `f` in another process of the group (host pid `host`), stopped like the one being
/// restored, through an injector of its own on the group's trampoline `tramp`: a socket whose
/// peers must see that process's pid in `SO_PEERCRED` is made or connected there. None, with
/// nothing done, when that process cannot be driven (its main thread is gone): the caller makes
/// the socket itself, with its own pid.
fn in_member<T>(host: i32, tramp: u64, f: impl FnOnce(&mut Injector) -> Result<T>) -> Result<Option<T>> {
    let mut other = match Injector::new(host, host, tramp) {
        Ok(i) => i,
        Err(e) => {
            tracing::debug!(pid = host, error = %e, "cannot drive this process to make a unix socket with its pid: made by the restoring one");
            return Ok(None);
        }
    };
    let out = f(&mut other);
    other.finish()?;
    out.map(Some)
}

/// The host pid of `cred`'s process when it is another member of the group than `vpid` that can
/// make a socket for it ([`in_member`]).
fn maker_elsewhere(cred: Option<&PeerCred>, vpid: i32, ctx: &SocketRestore) -> Option<(i32, i32)> {
    let pid = cred?.pid;
    if pid == 0 || pid == vpid || ctx.tramp == 0 {
        return None;
    }
    ctx.members.get(&pid).map(|&host| (pid, host))
}

fn register(inj: &mut Injector, ctx: &mut UnixRestore, ino: u64, vpid: i32, fd: u64, opts_set: bool, named: bool) -> Result<()> {
    let k = keeper(inj, fd)?;
    ctx.regs.insert(ino, Reg { vpid, keeper: k, opts_set, named });
    Ok(())
}

/// Sets `s`'s options and binds its name on `fd` where not done yet.
fn apply_own(inj: &mut Injector, vpid: i32, fd: u64, s: &UnixSocket, ctx: &mut UnixRestore) -> Result<()> {
    let reg = ctx.regs.get(&s.ino).copied();
    if !reg.is_some_and(|r| r.opts_set) {
        set_opts(inj, fd, libc::AF_UNIX, false, &s.opts)?;
    }
    if !reg.is_some_and(|r| r.named) {
        if let Some(n) = &s.name {
            bind_name(inj, vpid, fd, s.ino, s.sock_type, n, ctx)?;
        }
    }
    if let Some(r) = ctx.regs.get_mut(&s.ino) {
        r.opts_set = true;
        r.named = true;
    }
    Ok(())
}

/// An fd for socket `s` in the process `inj` drives: taken from where it was made, or made now.
fn obtain(inj: &mut Injector, vpid: i32, s: &UnixSocket, ctx: &mut SocketRestore, take: Take<'_>) -> Result<u64> {
    if let Some(r) = ctx.unix.regs.get(&s.ino).copied() {
        let fd = take(inj, r.vpid, r.keeper)?;
        apply_own(inj, vpid, fd, s, &mut ctx.unix)?;
        return Ok(fd);
    }
    let u = &mut ctx.unix;
    let fd = match &s.conn {
        UnixConn::Unconnected | UnixConn::Listen { .. } => {
            let fd = new_socket(inj, s.sock_type, s.opts.uid)?;
            apply_own(inj, vpid, fd, s, u)?;
            if let UnixConn::Listen { backlog } = s.conn {
                let listen = |inj: &mut Injector| inj.call("listen", libc::SYS_listen, [fd, u64::from(backlog), 0, 0, 0, 0]);
                as_cred(inj, s.peercred.as_ref(), listen).or_else(|_| listen(inj))?;
            }
            register(inj, u, s.ino, vpid, fd, true, true)?;
            fd
        }
        UnixConn::Pair { peer, peer_name, listener: Some(l) } => {
            // Through the listener one end was accepted from: connect and accept.
            let lfd = obtain(inj, vpid, l, ctx, take)?;
            let accepted_is_us = s.name.as_ref().map(|n| &n.raw) == l.name.as_ref().map(|n| &n.raw);
            let (client_ino, client_name) = if accepted_is_us { (*peer, peer_name) } else { (s.ino, &s.name) };
            // The accepted end shows the process that connected: connect from it when it is
            // another process of the group.
            let accepted_cred = if accepted_is_us { s.peercred } else { s.peer_peercred };
            let connector = if accepted_is_us { maker_elsewhere(accepted_cred.as_ref(), vpid, ctx) } else { None };
            let tramp = ctx.tramp;
            let u = &mut ctx.unix;
            let made = match connector {
                Some((xv, xh)) => in_member(xh, tramp, |x| {
                    let c = new_socket(x, s.sock_type, s.opts.uid)?;
                    if let Some(n) = client_name {
                        bind_name(x, xv, c, client_ino, s.sock_type, n, u)?;
                    }
                    connect_to(x, c, l.ino, u, accepted_cred.as_ref())?;
                    files::park(x, c)
                })?
                .map(|parked| (xv, parked)),
                None => None,
            };
            if let Some((xv, parked)) = made {
                let a = inj.call("accept4", libc::SYS_accept4, [lfd, 0, 0, 0, 0, 0])?;
                close(inj, lfd)?;
                set_opts(inj, a, libc::AF_UNIX, false, &s.opts)?;
                u.regs.insert(*peer, Reg { vpid: xv, keeper: parked, opts_set: false, named: true });
                register(inj, u, s.ino, vpid, a, true, true)?;
                return Ok(a);
            }
            let c = new_socket(inj, s.sock_type, s.opts.uid)?;
            if !accepted_is_us {
                set_opts(inj, c, libc::AF_UNIX, false, &s.opts)?;
            }
            if let Some(n) = client_name {
                bind_name(inj, vpid, c, client_ino, s.sock_type, n, u)?;
            }
            connect_to(inj, c, l.ino, u, accepted_cred.as_ref())?;
            let a = inj.call("accept4", libc::SYS_accept4, [lfd, 0, 0, 0, 0, 0])?;
            close(inj, lfd)?;
            let (mine, theirs) = if accepted_is_us { (a, c) } else { (c, a) };
            if accepted_is_us {
                set_opts(inj, mine, libc::AF_UNIX, false, &s.opts)?;
            }
            let parked = files::park(inj, theirs)?;
            u.regs.insert(*peer, Reg { vpid, keeper: parked, opts_set: !accepted_is_us, named: true });
            register(inj, u, s.ino, vpid, mine, true, true)?;
            mine
        }
        UnixConn::Pair { peer, .. } => {
            // Both ends show the process that made the pair: make it there when that is another
            // process of the group, and take this end from it.
            let made = match maker_elsewhere(s.peercred.as_ref(), vpid, ctx) {
                Some((xv, xh)) => in_member(xh, ctx.tramp, |x| {
                    let (m, t) = as_cred(x, s.peercred.as_ref(), |x| pair(x, s.sock_type, s.opts.uid)).or_else(|_| pair(x, s.sock_type, s.opts.uid))?;
                    Ok((files::park(x, m)?, files::park(x, t)?))
                })?
                .map(|k| (xv, k)),
                None => None,
            };
            if let Some((xv, (km, kt))) = made {
                let u = &mut ctx.unix;
                u.regs.insert(*peer, Reg { vpid: xv, keeper: kt, opts_set: false, named: false });
                u.regs.insert(s.ino, Reg { vpid: xv, keeper: km, opts_set: false, named: false });
                let fd = take(inj, xv, km)?;
                apply_own(inj, vpid, fd, s, &mut ctx.unix)?;
                return Ok(fd);
            }
            let u = &mut ctx.unix;
            let (mine, theirs) = as_cred(inj, s.peercred.as_ref(), |inj| pair(inj, s.sock_type, s.opts.uid)).or_else(|_| pair(inj, s.sock_type, s.opts.uid))?;
            let parked = files::park(inj, theirs)?;
            u.regs.insert(*peer, Reg { vpid, keeper: parked, opts_set: false, named: false });
            register(inj, u, s.ino, vpid, mine, false, false)?;
            apply_own(inj, vpid, mine, s, u)?;
            mine
        }
        UnixConn::To { peer: target } | UnixConn::Pending { listener: target } => {
            let fd = new_socket(inj, s.sock_type, s.opts.uid)?;
            apply_own(inj, vpid, fd, s, u)?;
            let tfd = obtain(inj, vpid, target, ctx, take)?;
            close(inj, tfd)?;
            connect_to(inj, fd, target.ino, &ctx.unix, None)?;
            register(inj, &mut ctx.unix, s.ino, vpid, fd, true, true)?;
            fd
        }
        UnixConn::PeerGone { .. } => {
            // A pair whose other end is closed once the queue is back.
            let (mine, other) = as_cred(inj, s.peercred.as_ref(), |inj| pair(inj, s.sock_type, s.opts.uid)).or_else(|_| pair(inj, s.sock_type, s.opts.uid))?;
            apply_own(inj, vpid, mine, s, u)?;
            let parked = files::park(inj, other)?;
            u.gone_peers.insert(s.ino, (vpid, parked));
            register(inj, u, s.ino, vpid, mine, true, true)?;
            mine
        }
    };
    Ok(fd)
}

/// Recreates unix socket `s` in the process `inj` drives (`vpid`); `take` takes a keeper fd of
/// another process. Its messages, pending error and shutdown are restored by [`finish`].
pub(crate) fn restore(inj: &mut Injector, vpid: i32, s: &UnixSocket, ctx: &mut SocketRestore, take: Take<'_>) -> Result<u64> {
    let fd = obtain(inj, vpid, s, ctx, take)?;
    if !s.queue.is_empty() || s.shutdown != 0 || matches!(s.conn, UnixConn::PeerGone { reset: true }) {
        ctx.unix.jobs.push((vpid, s.clone()));
    }
    Ok(fd)
}

fn performer<'a>(procs: &'a mut [(i32, &mut Injector)], vpid: i32) -> Result<&'a mut Injector> {
    procs
        .iter_mut()
        .find(|p| p.0 == vpid)
        .map(|p| &mut *p.1)
        .ok_or_else(|| EngineError::Proc { pid: vpid, detail: "process to finish its unix sockets is not being restored".into() })
}

/// The second pass, once every process of the group has its fds (`procs`: each restored
/// process's vpid and injector): messages, errors left by closed peers, shutdowns, then the
/// temporary directories go. Keepers are closed afterwards with the group's others.
pub(crate) fn finish(procs: &mut [(i32, &mut Injector)], fctx: &mut RestoreContext) -> Result<()> {
    // Fds in flight by number: (vpid, fd) of the first copy recreated.
    let mut flight: HashMap<u32, (i32, u64)> = HashMap::new();
    let mut i = 0;
    // Requeueing may recreate sockets passed in messages, which add jobs of their own.
    while i < fctx.sockets.unix.jobs.len() {
        let (vpid, s) = fctx.sockets.unix.jobs[i].clone();
        let inj = performer(procs, vpid)?;
        if !s.queue.is_empty() {
            requeue(inj, vpid, &s, fctx, &mut flight)
                .map_err(|e| EngineError::Proc { pid: vpid, detail: format!("requeue the messages of unix socket {}: {e}", s.ino) })?;
        }
        i += 1;
    }
    let jobs = std::mem::take(&mut fctx.sockets.unix.jobs);
    for (vpid, s) in &jobs {
        let inj = performer(procs, *vpid)?;
        let r = fctx.sockets.unix.regs[&s.ino];
        let fd = files::take_fd(inj, *vpid, r.vpid, r.keeper)?;
        if matches!(s.conn, UnixConn::PeerGone { reset: true }) && fctx.sockets.unix.gone_peers.contains_key(&s.ino) {
            // The closed peer had unread data: leave one byte in the other end so that closing it
            // sets ECONNRESET here.
            let p = put(inj, b"\0")?;
            inj.call("send to the closing peer", libc::SYS_sendto, [fd, p, 1, (libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as u64, 0, 0])?;
        }
        if s.shutdown != 0 && !matches!(s.conn, UnixConn::PeerGone { .. }) {
            let how = match s.shutdown & 3 {
                1 => libc::SHUT_RD,
                2 => libc::SHUT_WR,
                _ => libc::SHUT_RDWR,
            };
            inj.call("shutdown", libc::SYS_shutdown, [fd, how as u64, 0, 0, 0, 0])?;
        }
        close(inj, fd)?;
    }
    for (_, (vpid, fd)) in flight {
        close(performer(procs, vpid)?, fd)?;
    }
    for (vpid, path, dir) in std::mem::take(&mut fctx.sockets.unix.cleanup).into_iter().rev() {
        let inj = performer(procs, vpid)?;
        let p = inj.put_cstr(path.as_bytes())?;
        let nr = if dir { libc::SYS_rmdir } else { libc::SYS_unlink };
        let _ = inj.syscall(nr, [p, 0, 0, 0, 0, 0])?;
    }
    Ok(())
}

/// Sends `s`'s saved messages again, in order, from the sockets that sent them.
fn requeue(inj: &mut Injector, vpid: i32, s: &UnixSocket, fctx: &mut RestoreContext, flight: &mut HashMap<u32, (i32, u64)>) -> Result<()> {
    let u = &fctx.sockets.unix;
    let reg = |ino: u64| u.regs.get(&ino).copied().ok_or_else(|| err(inj, format!("unix socket {ino} was not recreated")));
    // The socket every message comes from, when there is one: the peer.
    let fixed: Option<(i32, u64)> = match &s.conn {
        UnixConn::Pair { peer, .. } => Some(reg(*peer).map(|r| (r.vpid, r.keeper))?),
        UnixConn::PeerGone { .. } => u.gone_peers.get(&s.ino).copied(),
        UnixConn::To { peer } => Some(reg(peer.ino).map(|r| (r.vpid, r.keeper))?),
        UnixConn::Unconnected => None,
        UnixConn::Listen { .. } | UnixConn::Pending { .. } => return Ok(()),
    };
    // Messages to a socket not connected back are addressed to its name.
    let to = match &s.conn {
        UnixConn::Pair { .. } | UnixConn::PeerGone { .. } => None,
        _ => Some(fctx.sockets.unix.reach.get(&s.ino).cloned().ok_or_else(|| err(inj, format!("unix socket {} receives datagrams but has no name", s.ino)))?),
    };
    let mut senders: HashMap<Option<Vec<u8>>, u64> = HashMap::new();
    let mut made: Vec<(u64, Option<(i32, i32)>)> = Vec::new();
    let total: usize = s.queue.iter().map(|m| m.data.len() + 1024).sum();
    for (i, m) in s.queue.iter().enumerate() {
        let key = if fixed.is_some() { None } else { m.from.clone() };
        let sender = match senders.get(&key) {
            Some(&fd) => fd,
            None => {
                let fd = match (fixed, &m.from) {
                    (Some((owner, k)), _) => files::take_fd(inj, vpid, owner, k)?,
                    (None, Some(from)) => match fctx.sockets.unix.names.get(&(from.clone(), s.sock_type)).and_then(|ino| fctx.sockets.unix.regs.get(ino)) {
                        Some(r) => files::take_fd(inj, vpid, r.vpid, r.keeper)?,
                        None => {
                            // The sender is gone: a stand-in bound to its name (its file, if any, in a
                            // temporary directory).
                            let fd = new_socket(inj, s.sock_type, s.opts.uid)?;
                            fctx.sockets.unix.seq += 1;
                            let ino = u64::MAX - u64::from(fctx.sockets.unix.seq);
                            let file = if from.first() == Some(&0) { NameFile::Abstract } else { NameFile::Gone };
                            bind_name(inj, vpid, fd, ino, s.sock_type, &UnixName { raw: from.clone(), file }, &mut fctx.sockets.unix)?;
                            fd
                        }
                    },
                    (None, None) => new_socket(inj, s.sock_type, s.opts.uid)?,
                };
                let old = grow_sndbuf(inj, fd, total)?;
                made.push((fd, old));
                senders.insert(key, fd);
                fd
            }
        };
        let mut fds = Vec::with_capacity(m.fds.len());
        let mut again = Vec::new();
        for f in &m.fds {
            match f {
                FlightFd::New { id, fd } => {
                    let n = match &fd.kind {
                        files::FdKind::Dup { vpid: owner, fd: ofd } => files::take_fd(inj, vpid, *owner, *ofd as u64)?,
                        _ => files::open_one(inj, vpid, fd, fctx)?,
                    };
                    flight.insert(*id, (vpid, n));
                    fds.push(n);
                }
                FlightFd::Again { id } => {
                    let &(owner, ofd) = flight.get(id).ok_or_else(|| err(inj, format!("fd in flight {id} sent again before it was recreated")))?;
                    let n = files::take_fd(inj, vpid, owner, ofd)?;
                    again.push(n);
                    fds.push(n);
                }
            }
        }
        let send = |inj: &mut Injector| send_msg(inj, sender, m, &fds, to.as_ref().map(|t| t.0.as_slice()));
        match &to {
            Some((_, reach)) => with_reach(inj, reach, send),
            None => send(inj),
        }
        .map_err(|e| err(inj, format!("message {i} ({} bytes): {e}", m.data.len())))?;
        for n in again {
            close(inj, n)?;
        }
    }
    for (fd, old) in made {
        if let Some(old) = old {
            shrink_sndbuf(inj, fd, old)?;
        }
        close(inj, fd)?;
    }
    Ok(())
}

const SO_SNDBUFFORCE: u64 = 32;
const SO_BUF_LOCK: u64 = 72;

fn get_int(inj: &mut Injector, fd: u64, name: u64) -> Result<i32> {
    let p = put(inj, &[0u8; 8])?;
    inj.write_mem(p + 4, &4u32.to_ne_bytes())?;
    inj.call("getsockopt", libc::SYS_getsockopt, [fd, libc::SOL_SOCKET as u64, name, p, p + 4, 0])?;
    Ok(i32::from_ne_bytes(inj.read_mem(p, 4)?[..4].try_into().expect("4")))
}

fn set_int(inj: &mut Injector, fd: u64, name: u64, v: i32) -> Result<()> {
    let p = put(inj, &v.to_ne_bytes())?;
    inj.call("setsockopt", libc::SYS_setsockopt, [fd, libc::SOL_SOCKET as u64, name, p, 4, 0]).map(|_| ())
}

/// Lets sender `fd` queue at least `bytes` (its send buffer bounds what waits at the receiver,
/// and requeued data may take more room than it did); returns its size and buffer lock to put
/// back, when it was raised.
fn grow_sndbuf(inj: &mut Injector, fd: u64, bytes: usize) -> Result<Option<(i32, i32)>> {
    let want = (bytes.saturating_mul(2) + (64 << 10)).min(i32::MAX as usize / 2) as i32;
    let cur = get_int(inj, fd, libc::SO_SNDBUF as u64)?;
    if cur >= want {
        return Ok(None);
    }
    let lock = get_int(inj, fd, SO_BUF_LOCK)?;
    set_int(inj, fd, SO_SNDBUFFORCE, want / 2)?;
    Ok(Some((cur, lock)))
}

/// Puts back the send buffer size and lock [`grow_sndbuf`] changed (what is queued stays).
fn shrink_sndbuf(inj: &mut Injector, fd: u64, (size, lock): (i32, i32)) -> Result<()> {
    set_int(inj, fd, SO_SNDBUFFORCE, size / 2)?;
    set_int(inj, fd, SO_BUF_LOCK, lock)
}

/// Sends message `m` on `sock` with its credentials and the fds `fds` (numbers in the sending
/// process), to `to` when given.
fn send_msg(inj: &mut Injector, sock: u64, m: &UnixMsg, fds: &[u64], to: Option<&[u8]>) -> Result<()> {
    let cmsg_space = |n: usize| 16 + n.div_ceil(8) * 8;
    let mut control = Vec::new();
    if !fds.is_empty() {
        let len = 16 + 4 * fds.len();
        let mut c = (len as u64).to_ne_bytes().to_vec();
        c.extend_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
        c.extend_from_slice(&libc::SCM_RIGHTS.to_ne_bytes());
        for &f in fds {
            c.extend_from_slice(&(f as i32).to_ne_bytes());
        }
        c.resize(cmsg_space(4 * fds.len()), 0);
        control.extend_from_slice(&c);
    }
    if let Some((pid, uid, gid)) = m.creds {
        let mut c = 28u64.to_ne_bytes().to_vec();
        c.extend_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
        c.extend_from_slice(&libc::SCM_CREDENTIALS.to_ne_bytes());
        c.extend_from_slice(&pid.to_ne_bytes());
        c.extend_from_slice(&uid.to_ne_bytes());
        c.extend_from_slice(&gid.to_ne_bytes());
        c.resize(cmsg_space(12), 0);
        control.extend_from_slice(&c);
    }
    let name = to.map(sockaddr).unwrap_or_default();
    // Layout in the scratch area: msghdr, iovec, name, control, data.
    const HDR: u64 = 0;
    const IOV: u64 = 64;
    const NAME: u64 = 128;
    const CONTROL: u64 = 256;
    const DATA: u64 = 2048;
    let mut sent = 0usize;
    let mut first = true;
    loop {
        let rest = &m.data[sent..];
        let base = inj.scratch(DATA + rest.len() as u64 + 4096)?;
        inj.write_mem(base + DATA, rest)?;
        inj.write_mem(base + NAME, &name)?;
        let ctl: &[u8] = if first { &control } else { &[] };
        inj.write_mem(base + CONTROL, ctl)?;
        let mut iov = (base + DATA).to_ne_bytes().to_vec();
        iov.extend_from_slice(&(rest.len() as u64).to_ne_bytes());
        inj.write_mem(base + IOV, &iov)?;
        let mut hdr = Vec::with_capacity(56);
        hdr.extend_from_slice(&(if name.is_empty() { 0 } else { base + NAME }).to_ne_bytes());
        hdr.extend_from_slice(&(name.len() as u64).to_ne_bytes());
        hdr.extend_from_slice(&(base + IOV).to_ne_bytes());
        hdr.extend_from_slice(&1u64.to_ne_bytes());
        hdr.extend_from_slice(&(if ctl.is_empty() { 0 } else { base + CONTROL }).to_ne_bytes());
        hdr.extend_from_slice(&(ctl.len() as u64).to_ne_bytes());
        hdr.extend_from_slice(&0u64.to_ne_bytes());
        inj.write_mem(base + HDR, &hdr)?;
        let n = inj.call("sendmsg", libc::SYS_sendmsg, [sock, base + HDR, (libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) as u64, 0, 0, 0])?;
        sent += n as usize;
        first = false;
        if sent >= m.data.len() {
            return Ok(());
        }
        if n == 0 {
            return Err(err(inj, format!("requeued {sent} of {} bytes", m.data.len())));
        }
    }
}
