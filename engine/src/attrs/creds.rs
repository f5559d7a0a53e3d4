//! Credentials of a thread: real, effective, saved and filesystem uids and gids, supplementary
//! groups, the five capability sets, securebits and no_new_privs. Linux keeps all of these per
//! thread (glibc's `setuid` makes every thread call it; a raw syscall changes one thread).
//!
//! Read from `/proc/PID/task/TID/status` except securebits (`PR_GET_SECUREBITS`, injected).
//!
//! Restored in the restored thread, which starts as root with the restorer's capabilities, in
//! this order (each step needs what a later one takes away):
//! 1. `capset` of the inheritable set, while the bounding set is full (a capability new to the
//!    inheritable set must be in the bounding set);
//! 2. `PR_CAPBSET_DROP` of every capability not in the saved bounding set (needs CAP_SETPCAP);
//! 3. `PR_SET_KEEPCAPS`, then `setgroups`, `setresgid`, `setfsgid`, `setresuid`, `setfsuid`: with
//!    keepcaps the permitted set survives leaving uid 0; the effective set is emptied;
//! 4. `capset` effective = permitted again, for what follows;
//! 5. `PR_CAP_AMBIENT_RAISE` of each saved ambient capability (needs it in the permitted and
//!    inheritable sets, and must come before SECBIT_NO_CAP_AMBIENT_RAISE);
//! 6. `PR_SET_SECUREBITS` with the saved bits (needs CAP_SETPCAP; replaces keepcaps);
//! 7. the caller's step (the thread's scheduling, which may need CAP_SYS_NICE, and seccomp
//!    filters, which need CAP_SYS_ADMIN unless no_new_privs is set);
//! 8. `PR_SET_NO_NEW_PRIVS` if it was set;
//! 9. `capset` to the saved effective, permitted and inheritable sets.
//!
//! Capabilities the restorer itself lacks (root here has no CAP_SYS_RESOURCE) cannot be given:
//! they are left out and reported in the warnings.
use serde::{Deserialize, Serialize};

use super::{errno_text, pr, status_field};
use crate::inject::Injector;
use crate::{EngineError, Result};

/// The five capability sets, one bit per capability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caps {
    /// Inheritable.
    pub inheritable: u64,
    /// Permitted.
    pub permitted: u64,
    /// Effective.
    pub effective: u64,
    /// Bounding.
    pub bounding: u64,
    /// Ambient.
    pub ambient: u64,
}

/// Saved credentials of a thread.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Creds {
    /// Real, effective, saved, filesystem uid.
    pub uids: [u32; 4],
    /// Real, effective, saved, filesystem gid.
    pub gids: [u32; 4],
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Capability sets.
    pub caps: Caps,
    /// `PR_GET_SECUREBITS`.
    pub securebits: u32,
    /// `PR_SET_NO_NEW_PRIVS` is set.
    pub no_new_privs: bool,
}

fn four(tid: i32, s: Option<&str>, what: &str) -> Result<[u32; 4]> {
    let v: Vec<u32> = s.unwrap_or("").split_whitespace().filter_map(|x| x.parse().ok()).collect();
    v.try_into().map_err(|_| EngineError::Proc { pid: tid, detail: format!("cannot parse {what} in /proc status") })
}

fn hex(tid: i32, status: &str, key: &str) -> Result<u64> {
    status_field(status, key)
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .ok_or_else(|| EngineError::Proc { pid: tid, detail: format!("cannot parse {key} in /proc status") })
}

/// Names of the capabilities in `set`, for messages.
pub fn cap_names(set: u64) -> String {
    const NAMES: [&str; 41] = [
        "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid", "setpcap",
        "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw", "ipc_lock", "ipc_owner",
        "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct", "sys_admin", "sys_boot", "sys_nice",
        "sys_resource", "sys_time", "sys_tty_config", "mknod", "lease", "audit_write", "audit_control", "setfcap",
        "mac_override", "mac_admin", "syslog", "wake_alarm", "block_suspend", "audit_read", "perfmon", "bpf",
        "checkpoint_restore",
    ];
    (0..64)
        .filter(|b| set & (1u64 << b) != 0)
        .map(|b| NAMES.get(b).map_or_else(|| format!("cap_{b}"), |n| format!("cap_{n}")))
        .collect::<Vec<_>>()
        .join(",")
}

/// Highest capability number the kernel knows.
fn cap_last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(40)
}

const CAP_VERSION_3: u32 = 0x2008_0522;
const CAP_SETPCAP: u32 = 8;
const PR_CAP_AMBIENT_RAISE: u64 = 2;
const PR_CAP_AMBIENT_CLEAR_ALL: u64 = 4;

/// `capget` in the thread `inj` drives: (effective, permitted, inheritable).
fn capget(inj: &mut Injector) -> Result<(u64, u64, u64)> {
    let scratch = inj.scratch(4096)?;
    let mut hdr = Vec::with_capacity(8);
    hdr.extend_from_slice(&CAP_VERSION_3.to_le_bytes());
    hdr.extend_from_slice(&0i32.to_le_bytes());
    inj.write_mem(scratch, &hdr)?;
    inj.call("capget", libc::SYS_capget, [scratch, scratch + 64, 0, 0, 0, 0])?;
    let d = inj.read_mem(scratch + 64, 24)?;
    let w = |i: usize| u64::from(u32::from_le_bytes(d[i * 4..i * 4 + 4].try_into().expect("4")));
    // struct __user_cap_data_struct[2]: {effective, permitted, inheritable} for bits 0-31, then 32-63.
    Ok((w(0) | w(3) << 32, w(1) | w(4) << 32, w(2) | w(5) << 32))
}

/// `capset` in the thread `inj` drives.
fn capset(inj: &mut Injector, what: &'static str, effective: u64, permitted: u64, inheritable: u64) -> Result<()> {
    let scratch = inj.scratch(4096)?;
    let mut b = Vec::with_capacity(32);
    b.extend_from_slice(&CAP_VERSION_3.to_le_bytes());
    b.extend_from_slice(&0i32.to_le_bytes());
    for half in [0, 32] {
        for set in [effective, permitted, inheritable] {
            b.extend_from_slice(&((set >> half) as u32).to_le_bytes());
        }
    }
    inj.write_mem(scratch, &b[..8])?;
    inj.write_mem(scratch + 64, &b[8..])?;
    inj.call(what, libc::SYS_capset, [scratch, scratch + 64, 0, 0, 0, 0])?;
    Ok(())
}

impl Creds {
    /// Reads the credentials of thread `tid` from its `/proc` status and, for securebits, from
    /// the thread itself (`inj` drives it).
    pub fn save(tid: i32, status: &str, inj: &mut Injector) -> Result<Creds> {
        let caps = Caps {
            inheritable: hex(tid, status, "CapInh:")?,
            permitted: hex(tid, status, "CapPrm:")?,
            effective: hex(tid, status, "CapEff:")?,
            bounding: hex(tid, status, "CapBnd:")?,
            ambient: hex(tid, status, "CapAmb:")?,
        };
        let securebits = inj.call("prctl(PR_GET_SECUREBITS)", libc::SYS_prctl, [pr::GET_SECUREBITS, 0, 0, 0, 0, 0])? as u32;
        Ok(Creds {
            uids: four(tid, status_field(status, "Uid:"), "Uid")?,
            gids: four(tid, status_field(status, "Gid:"), "Gid")?,
            groups: status_field(status, "Groups:").unwrap_or("").split_whitespace().filter_map(|g| g.parse().ok()).collect(),
            caps,
            securebits,
            no_new_privs: status_field(status, "NoNewPrivs:") == Some("1"),
        })
    }

    /// Restores the credentials in the thread `inj` drives, in the order of the module doc;
    /// `between` runs at step 7, while the thread still has the restorer's capabilities in its
    /// effective set (CAP_SYS_ADMIN, CAP_SYS_NICE) and no no_new_privs.
    pub fn restore(
        &self,
        inj: &mut Injector,
        warnings: &mut Vec<String>,
        between: impl FnOnce(&mut Injector, &mut Vec<String>) -> Result<()>,
    ) -> Result<()> {
        let tid = inj.tid();
        let saved = self.caps;
        let (eff0, prm0, inh0) = capget(inj)?;
        // 1. Inheritable, within the (still full) bounding set and what we hold.
        let inh = saved.inheritable & (inh0 | prm0);
        if inh != saved.inheritable {
            warnings.push(format!(
                "thread {tid}: inheritable capabilities {} not restored (the restorer lacks them)",
                cap_names(saved.inheritable & !inh)
            ));
        }
        capset(inj, "capset (inheritable)", eff0, prm0, inh)?;
        // 2. Bounding set.
        let last = cap_last_cap();
        for cap in 0..=last {
            if saved.bounding & (1u64 << cap) == 0 {
                let rc = inj.syscall(libc::SYS_prctl, [pr::CAPBSET_DROP, u64::from(cap), 0, 0, 0, 0])?;
                if rc < 0 && rc != -(libc::EINVAL as i64) {
                    return Err(EngineError::Sys { step: "prctl(PR_CAPBSET_DROP)", pid: tid, source: errno_text(rc) });
                }
            }
        }
        let all = if last >= 63 { u64::MAX } else { (1u64 << (last + 1)) - 1 };
        let ours = std::fs::read_to_string(format!("/proc/{tid}/status")).ok().and_then(|s| hex(tid, &s, "CapBnd:").ok()).unwrap_or(all);
        let missing_bounding = saved.bounding & all & !ours;
        if missing_bounding != 0 {
            // A bounding set cannot grow: what the restorer's lacks stays out.
            warnings.push(format!(
                "thread {tid}: bounding capabilities {} not restored (the restorer lacks them)",
                cap_names(missing_bounding)
            ));
        }
        // 3. Groups, gids, uids, with the permitted set kept.
        inj.call("prctl(PR_SET_KEEPCAPS)", libc::SYS_prctl, [pr::SET_KEEPCAPS, 1, 0, 0, 0, 0])?;
        let groups: Vec<u8> = self.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
        let scratch = inj.scratch((groups.len() as u64).max(4096))?;
        inj.write_mem(scratch, &groups)?;
        inj.call("setgroups", libc::SYS_setgroups, [self.groups.len() as u64, scratch, 0, 0, 0, 0])?;
        let g = self.gids.map(u64::from);
        inj.call("setresgid", libc::SYS_setresgid, [g[0], g[1], g[2], 0, 0, 0])?;
        inj.call("setfsgid", libc::SYS_setfsgid, [g[3], 0, 0, 0, 0, 0])?;
        let u = self.uids.map(u64::from);
        inj.call("setresuid", libc::SYS_setresuid, [u[0], u[1], u[2], 0, 0, 0])?;
        inj.call("setfsuid", libc::SYS_setfsuid, [u[3], 0, 0, 0, 0, 0])?;
        // 4. Effective = permitted for the steps that need CAP_SETPCAP and CAP_SYS_ADMIN.
        let (_, prm, _) = capget(inj)?;
        capset(inj, "capset (effective for the restore)", prm, prm, inh)?;
        // 5. Ambient.
        inj.call("prctl(PR_CAP_AMBIENT_CLEAR_ALL)", libc::SYS_prctl, [pr::CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0, 0])?;
        let ambient = saved.ambient & inh & prm;
        if ambient != saved.ambient {
            warnings.push(format!("thread {tid}: ambient capabilities {} not restored", cap_names(saved.ambient & !ambient)));
        }
        for cap in (0..64).filter(|c| ambient & (1u64 << c) != 0) {
            inj.call("prctl(PR_CAP_AMBIENT_RAISE)", libc::SYS_prctl, [pr::CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0, 0])?;
        }
        // 6. Securebits.
        if prm & (1 << CAP_SETPCAP) == 0 && self.securebits != 0 {
            return Err(EngineError::Proc { pid: tid, detail: "restoring securebits needs CAP_SETPCAP, which the restorer lacks".into() });
        }
        inj.call("prctl(PR_SET_SECUREBITS)", libc::SYS_prctl, [pr::SET_SECUREBITS, u64::from(self.securebits), 0, 0, 0, 0])?;
        // 7. The caller's step (scheduling, seccomp).
        between(inj, warnings)?;
        // 8. no_new_privs.
        if self.no_new_privs {
            inj.call("prctl(PR_SET_NO_NEW_PRIVS)", libc::SYS_prctl, [pr::SET_NO_NEW_PRIVS, 1, 0, 0, 0, 0])?;
        }
        // 9. The saved sets.
        let permitted = saved.permitted & prm;
        if permitted != saved.permitted {
            warnings.push(format!(
                "thread {tid}: permitted capabilities {} not restored (the restorer lacks them)",
                cap_names(saved.permitted & !permitted)
            ));
        }
        capset(inj, "capset (saved sets)", saved.effective & permitted, permitted, inh)?;
        Ok(())
    }
}
