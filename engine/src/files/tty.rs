//! Pseudo-terminals made inside the checkpoint: the master (`/dev/ptmx`) and slave
//! (`/dev/pts/N`) fds of a pair whose master the group holds, `/dev/tty`, and the controlling
//! terminal and foreground process group of a session.
//!
//! ## Save
//! The first fd of a pty saved (master or slave) carries its [`PtyState`]: index, the slave's
//! termios (`TCGETS2` through the master) and window size, the master's packet mode and lock
//! state, and the session whose controlling terminal it is with its foreground process group
//! (`TIOCGSID`/`TIOCGPGRP` on the master), both as the group sees them. Bytes queued in either
//! direction cannot be read without consuming them: a pty with queued bytes (`FIONREAD` on the
//! master, and on each slave fd) is refused; so is a slave whose master no process of the
//! group holds (fds 0-2 then stay *external*), and a pty whose session is outside the group.
//! A partly typed line of a terminal in canonical mode is not visible to `FIONREAD` and is lost.
//!
//! ## Restore
//! The pty is recreated with the same index (`/dev/ptmx` opened until the kernel hands out that
//! index; the restore fails when another pty holds it) by the process whose fd comes first, or
//! earlier by the session leader whose controlling terminal it is ([`take_ctty`], called before
//! the leader creates its children, so that they inherit the terminal). The master is kept at a
//! keeper fd; slave fds are opened from it (`TIOCGPTPEER`). Once the process groups exist,
//! [`set_foreground`] gives the terminal its foreground group back (`TIOCSPGRP`, from the leader).
//!
//! A pod has a devpts instance of its own on /dev/pts (mounted by `zap-init`,
//! [`crate::sys::ns::mount_devpts`]), so its indexes are its own: a restored pod's new instance
//! has every index free, whatever ptys the host or other pods hold (with the host's instance
//! shared, another pty opened between the checkpoint and the restore took the index). A slave
//! whose instance is not the one its master's holder sees on /dev/pts (a host terminal on a
//! process's fds 0-2 with the same index as a pod's pty) is not taken for the pod's. Processes
//! restored outside a pod (`--pid`, `--tree`) use the host's instance: there the index must be
//! free on the host.
use std::collections::HashMap;
use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

use super::{FdKind, FdState, RestoreContext, SaveContext};
use crate::inject::Injector;
use crate::sys::proc as sysproc;
use crate::{EngineError, Result};

const TCGETS2: u64 = 0x802C_542A;
const TCSETS2: u64 = 0x402C_542B;
const TIOCGWINSZ: u64 = 0x5413;
const TIOCSWINSZ: u64 = 0x5414;
const TIOCPKT: u64 = 0x5420;
const TIOCGPKT: u64 = 0x8004_5438;
const TIOCSPTLCK: u64 = 0x4004_5431;
const TIOCGPTLCK: u64 = 0x8004_5439;
const TIOCGPTN: u64 = 0x8004_5430;
const TIOCGPTPEER: u64 = 0x5441;
const TIOCSCTTY: u64 = 0x540E;
const TIOCSPGRP: u64 = 0x5410;
const TIOCGPGRP: u64 = 0x540F;
const TIOCGSID: u64 = 0x5429;

/// A pseudo-terminal pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtyState {
    /// Its index (`/dev/pts/N`).
    pub index: u32,
    /// The slave's `struct termios2`.
    pub termios: Vec<u8>,
    /// `struct winsize`.
    pub winsize: Vec<u8>,
    /// Packet mode on the master (TIOCPKT).
    pub packet: bool,
    /// The slave is locked (`unlockpt` not called).
    pub locked: bool,
    /// The session whose controlling terminal it is and its foreground process group (vpids).
    pub session: Option<(i32, i32)>,
}

/// The pty index of a master fd (fdinfo `tty-index`), or of a slave from its path.
pub(super) fn master_index(target: &str, info: &HashMap<String, String>) -> Option<u32> {
    if target == "/dev/ptmx" || target == "/dev/pts/ptmx" {
        info.get("tty-index")?.parse().ok()
    } else {
        None
    }
}

fn slave_index(target: &str) -> Option<u32> {
    target.strip_prefix("/dev/pts/")?.parse().ok()
}

/// Masters held by the group: pty index -> (host pid, fd), found on first need.
fn masters(ctx: &mut SaveContext) -> Result<&HashMap<u32, (i32, i32)>> {
    if ctx.pty_masters.is_none() {
        let mut found = HashMap::new();
        for &p in &ctx.group {
            for (fd, target) in super::list_fds(p)? {
                if target == "/dev/ptmx" || target == "/dev/pts/ptmx" {
                    if let Some(i) = master_index(&target, &super::fdinfo(p, fd)?) {
                        found.entry(i).or_insert((p, fd));
                    }
                }
            }
        }
        ctx.pty_masters = Some(found);
    }
    Ok(ctx.pty_masters.as_ref().expect("just filled"))
}

/// The vpid, in the group, of host pid `host` (a process of the group), or of any group member
/// in process group `host` when `pgrp`.
fn group_vpid(ctx: &SaveContext, host: i32, pgrp: bool) -> Option<i32> {
    for &p in &ctx.group {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
        let last = |key: &str| status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().last()?.parse::<i32>().ok());
        let first = |key: &str| status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().next()?.parse::<i32>().ok());
        if pgrp && first("NSpgid:") == Some(host) {
            return last("NSpgid:");
        }
        if !pgrp && p == host {
            return last("NSpid:");
        }
    }
    None
}

/// Reads the state of the pty whose master fd `fd` of `pid` is (stopped, held by the group).
fn pty_state(pid: i32, fd: i32, index: u32, master: &OwnedFd, ctx: &SaveContext) -> Result<PtyState> {
    let err = |step: &'static str| move |source| EngineError::Sys { step, pid, source };
    let mut termios = vec![0u8; 44];
    sysproc::ioctl_get(master, TCGETS2 as _, &mut termios).map_err(err("TCGETS2 pty"))?;
    let mut winsize = vec![0u8; 8];
    sysproc::ioctl_get(master, TIOCGWINSZ as _, &mut winsize).map_err(err("TIOCGWINSZ pty"))?;
    let packet = sysproc::ioctl_int(master, TIOCGPKT as _).map_err(err("TIOCGPKT"))? != 0;
    let locked = sysproc::ioctl_int(master, TIOCGPTLCK as _).map_err(err("TIOCGPTLCK"))? != 0;
    let queued = sysproc::fionread(master).map_err(err("FIONREAD pty master"))?;
    if queued > 0 {
        let what = format!(
            "pseudo-terminal {index} with {queued} bytes of output not yet read by its master (they cannot be read without consuming them; try again)"
        );
        return Err(super::unsupported(pid, fd, &what, "/dev/ptmx"));
    }
    let session = match sysproc::ioctl_int(master, TIOCGSID as _) {
        Err(_) => None, // no session has it as its controlling terminal
        Ok(sid) => {
            let outside = |what: &str| {
                super::unsupported(pid, fd, &format!("pseudo-terminal {index} controlling a {what} outside the checkpoint"), "/dev/ptmx")
            };
            let vsid = group_vpid(ctx, sid, false).ok_or_else(|| outside("session"))?;
            let fg = sysproc::ioctl_int(master, TIOCGPGRP as _).map_err(err("TIOCGPGRP"))?;
            let vfg = group_vpid(ctx, fg, true).ok_or_else(|| outside("foreground process group"))?;
            Some((vsid, vfg))
        }
    };
    Ok(PtyState { index, termios, winsize, packet, locked, session })
}

/// Saves fd `fd` of `pid` (link `target`): a pty master, a slave whose master the group holds,
/// or `/dev/tty` of a process whose controlling terminal is such a slave. `None` for a terminal
/// this module does not restore (the caller keeps fds 0-2 external and refuses the others).
pub(super) fn save(pid: i32, fd: i32, target: &str, info: &HashMap<String, String>, pidfd: &OwnedFd, ctx: &mut SaveContext) -> Result<Option<FdKind>> {
    let dup = || sysproc::pidfd_getfd(pidfd, fd).map_err(|source| EngineError::Sys { step: "pidfd_getfd terminal", pid, source });
    if let Some(index) = master_index(target, info) {
        let state = if ctx.ptys_saved.insert(index) { Some(pty_state(pid, fd, index, &dup()?, ctx)?) } else { None };
        return Ok(Some(FdKind::PtyMaster { index, state }));
    }
    let index = if target == "/dev/tty" {
        match ctty_index(pid) {
            Some(i) if masters(ctx)?.contains_key(&i) => return Ok(Some(FdKind::DevTty)),
            _ => return Ok(None),
        }
    } else {
        match slave_index(target) {
            Some(i) => i,
            None => return Ok(None),
        }
    };
    let Some(&(mpid, mfd)) = masters(ctx)?.get(&index) else { return Ok(None) };
    let slave = dup()?;
    // The same index in another devpts instance (a terminal of the host, when the pod has its
    // own instance) is another pty: compare the slave's instance with the one the master's
    // holder sees on /dev/pts, where its /dev/ptmx opens come from.
    let instance = |m: std::io::Result<std::fs::Metadata>| m.map(|m| std::os::unix::fs::MetadataExt::dev(&m)).ok();
    let slave_dev = instance(std::fs::File::from(slave.try_clone().map_err(|source| EngineError::Sys { step: "dup pty slave", pid, source })?).metadata());
    let master_dev = instance(std::fs::metadata(format!("/proc/{mpid}/root/dev/pts")));
    if slave_dev.is_some() && master_dev.is_some() && slave_dev != master_dev {
        return Ok(None);
    }
    let queued = sysproc::fionread(&slave).map_err(|source| EngineError::Sys { step: "FIONREAD pty slave", pid, source })?;
    if queued > 0 {
        let what = format!("pseudo-terminal {index} with {queued} bytes of input not yet read (they cannot be read without consuming them; try again)");
        return Err(super::unsupported(pid, fd, &what, target));
    }
    let state = if ctx.ptys_saved.insert(index) {
        let pidfd_m = sysproc::pidfd_open(mpid).map_err(|source| EngineError::Sys { step: "pidfd_open pty master holder", pid, source })?;
        let master = sysproc::pidfd_getfd(&pidfd_m, mfd).map_err(|source| EngineError::Sys { step: "pidfd_getfd pty master", pid, source })?;
        Some(pty_state(mpid, mfd, index, &master, ctx)?)
    } else {
        None
    };
    Ok(Some(FdKind::PtySlave { index, state }))
}

/// The pts index of the controlling terminal of `pid`, if it is a pts (`tty_nr` of stat).
fn ctty_index(pid: i32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let nr: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(4)?.parse().ok()?;
    let (major, minor) = ((nr >> 8) & 0xfff, (nr & 0xff) | ((nr >> 12) & 0xfff00));
    (136..=143).contains(&major).then(|| (major - 136) * 256 + minor)
}

/// Opens `/dev/ptmx` in the process `inj` drives until the kernel hands out pty `index`; the
/// other ptys opened on the way are closed again. Fails when `index` is taken.
fn open_index(inj: &mut Injector, vpid: i32, index: u32) -> Result<u64> {
    // The path stays at the start of the scratch area for every open (put_cstr makes it at
    // least 8 KiB); TIOCGPTN writes the index 4 KiB further on, never over the path.
    let path = inj.put_cstr(b"/dev/ptmx")?;
    let scratch = path + 4096;
    let mut extra = Vec::new();
    let got = loop {
        let fd = inj.call("open /dev/ptmx", libc::SYS_open, [path, (libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) as u64, 0, 0, 0, 0])?;
        inj.call("ioctl(TIOCGPTN)", libc::SYS_ioctl, [fd, TIOCGPTN, scratch, 0, 0, 0])?;
        let n = u32::from_ne_bytes(inj.read_mem(scratch, 4)?.try_into().expect("4"));
        if n == index {
            break Ok(fd);
        }
        extra.push(fd);
        if n > index || extra.len() > 4096 {
            let detail = format!("pseudo-terminal {index} is in use on this machine (the kernel gave {n}); it cannot come back with its index");
            break Err(EngineError::Proc { pid: vpid, detail });
        }
    };
    for fd in extra {
        inj.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
    }
    got
}

/// Recreates pty `st` in the process `inj` drives (`vpid`), parks its master as a keeper and
/// records it in `ctx`.
fn create(inj: &mut Injector, vpid: i32, st: &PtyState, ctx: &mut RestoreContext) -> Result<(i32, u64)> {
    let m = open_index(inj, vpid, st.index)?;
    let scratch = inj.scratch(4096)?;
    let fail = |what: &str, e: EngineError| EngineError::Proc { pid: vpid, detail: format!("pseudo-terminal {}: {what}: {e}", st.index) };
    inj.write_mem(scratch, &st.termios)?;
    inj.call("ioctl(TCSETS2)", libc::SYS_ioctl, [m, TCSETS2, scratch, 0, 0, 0]).map_err(|e| fail("set termios", e))?;
    inj.write_mem(scratch, &st.winsize)?;
    inj.call("ioctl(TIOCSWINSZ)", libc::SYS_ioctl, [m, TIOCSWINSZ, scratch, 0, 0, 0]).map_err(|e| fail("set window size", e))?;
    inj.write_mem(scratch, &i32::from(st.packet).to_ne_bytes())?;
    inj.call("ioctl(TIOCPKT)", libc::SYS_ioctl, [m, TIOCPKT, scratch, 0, 0, 0]).map_err(|e| fail("set packet mode", e))?;
    inj.write_mem(scratch, &i32::from(st.locked).to_ne_bytes())?;
    inj.call("ioctl(TIOCSPTLCK)", libc::SYS_ioctl, [m, TIOCSPTLCK, scratch, 0, 0, 0]).map_err(|e| fail("set lock", e))?;
    let k = super::park(inj, m)?;
    ctx.ptys.insert(st.index, (vpid, k));
    Ok((vpid, k))
}

/// The master of pty `index`: where it was created, or created now from `state`.
fn master(inj: &mut Injector, vpid: i32, index: u32, state: Option<&PtyState>, ctx: &mut RestoreContext) -> Result<(i32, u64)> {
    if let Some(&m) = ctx.ptys.get(&index) {
        return Ok(m);
    }
    let st = state.ok_or_else(|| EngineError::Proc { pid: vpid, detail: format!("pseudo-terminal {index}: its state was not saved with its first fd") })?;
    create(inj, vpid, st, ctx)
}

/// Recreates a terminal fd (`PtyMaster`, `PtySlave`, `DevTty`) in the process `inj` drives;
/// returns the new fd, or `None` for another kind.
pub(super) fn restore(inj: &mut Injector, vpid: i32, st: &FdState, ctx: &mut RestoreContext) -> Result<Option<u64>> {
    Ok(Some(match &st.kind {
        FdKind::PtyMaster { index, state } => {
            let (owner, k) = master(inj, vpid, *index, state.as_ref(), ctx)?;
            super::take_fd(inj, vpid, owner, k)?
        }
        FdKind::PtySlave { index, state } => {
            let (owner, k) = master(inj, vpid, *index, state.as_ref(), ctx)?;
            let m = super::take_fd(inj, vpid, owner, k)?;
            let flags = st.flags & !(libc::O_CLOEXEC as u32) | libc::O_NOCTTY as u32;
            let fd = inj.call("ioctl(TIOCGPTPEER)", libc::SYS_ioctl, [m, TIOCGPTPEER, u64::from(flags), 0, 0, 0]);
            inj.call("close", libc::SYS_close, [m, 0, 0, 0, 0, 0])?;
            fd.map_err(|e| EngineError::Proc { pid: vpid, detail: format!("fd {}: open the slave of pseudo-terminal {index}: {e}", st.fd) })?
        }
        FdKind::DevTty => super::open_path(inj, "/dev/tty", st.flags)
            .map_err(|e| EngineError::Proc { pid: vpid, detail: format!("fd {}: /dev/tty without its controlling terminal: {e}", st.fd) })?,
        _ => return Ok(None),
    }))
}

/// Gives the session leader `vpid` (just made leader, before it creates its children) its
/// controlling terminal back, when one of the group's ptys (found in `all`, every member's fds)
/// was it: the pty is created now if need be, and a slave kept open for [`set_foreground`].
pub fn take_ctty<'a>(inj: &mut Injector, vpid: i32, all: impl Iterator<Item = &'a FdState>, ctx: &mut RestoreContext) -> Result<()> {
    let state = all
        .filter_map(|f| match &f.kind {
            FdKind::PtyMaster { state: Some(s), .. } | FdKind::PtySlave { state: Some(s), .. } => Some(s),
            _ => None,
        })
        .find(|s| s.session.is_some_and(|(sid, _)| sid == vpid));
    let Some(st) = state else { return Ok(()) };
    let (owner, k) = master(inj, vpid, st.index, Some(st), ctx)?;
    let m = super::take_fd(inj, vpid, owner, k)?;
    let flags = (libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) as u64;
    let slave = inj.call("ioctl(TIOCGPTPEER)", libc::SYS_ioctl, [m, TIOCGPTPEER, flags, 0, 0, 0]);
    if m != k {
        inj.call("close", libc::SYS_close, [m, 0, 0, 0, 0, 0])?;
    }
    let slave = super::park(inj, slave?)?;
    inj.call("ioctl(TIOCSCTTY)", libc::SYS_ioctl, [slave, TIOCSCTTY, 0, 0, 0, 0])
        .map_err(|e| EngineError::Proc { pid: vpid, detail: format!("take pseudo-terminal {} as controlling terminal: {e}", st.index) })?;
    let fg = st.session.map_or(vpid, |s| s.1);
    ctx.cttys.insert(vpid, (slave, fg));
    Ok(())
}

/// Once the process groups exist: gives the controlling terminal of session leader `vpid` its
/// foreground process group back and closes the slave kept for it.
pub fn set_foreground(inj: &mut Injector, vpid: i32, ctx: &mut RestoreContext) -> Result<()> {
    let Some((slave, fg)) = ctx.cttys.remove(&vpid) else { return Ok(()) };
    let scratch = inj.scratch(4096)?;
    inj.write_mem(scratch, &fg.to_ne_bytes())?;
    let r = inj.call("ioctl(TIOCSPGRP)", libc::SYS_ioctl, [slave, TIOCSPGRP, scratch, 0, 0, 0]);
    inj.call("close", libc::SYS_close, [slave, 0, 0, 0, 0, 0])?;
    r.map_err(|e| EngineError::Proc { pid: vpid, detail: format!("give the terminal its foreground process group {fg}: {e}") })?;
    Ok(())
}
