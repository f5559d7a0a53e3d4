//! The network lock: while a pod (or a process) is checkpointed, restored or migrated, no packet
//! reaches or leaves its connections. The kernel must not acknowledge data the checkpoint will
//! not contain, nor answer a peer with a reset; the peer only sees a pause and retransmits.
//!
//! ## Design: nftables rules in the pod's network namespace
//! A pod has a network namespace of its own, so its lock is one nftables table, `inet
//! zap_netlock`, in that namespace, with an input and an output chain (hook priority -400, before
//! conntrack) whose policy is *drop*. It covers every path a connection of the pod can take: the
//! pod's `eth0` on the bridge (from the host, other pods, other namespaces) and its loopback
//! (connections with both ends in the pod, which would otherwise acknowledge each other's data
//! between the reading of one end and of the other). ARP is not filtered (not `inet`), so
//! neighbours stay resolved. The table is created in one nftables transaction and deleted in one,
//! run in process by libnftables ([`crate::sys::nft`]: a netlink batch, no program started) on
//! one context kept from the lock to the unlock (closing its netlink socket costs the kernel a
//! grace period, 15-25 ms, so that is done on a thread of its own once the lock is gone).
//! Measured (`net-bench`) at 4-10 ms for both on a loaded two-core machine (it was 27-70 ms
//! with the `nft` command, mostly starting it), independent of the number of connections. Packets Zap itself sends into a locked namespace (a restored connection's peer
//! FIN) carry [`BYPASS_MARK`], which both chains accept.
//!
//! The alternatives considered: taking the veth's carrier down blocks the bridge but not the
//! loopback; repair mode on every socket stops sending (and makes closing silent) but not the
//! kernel's processing of incoming segments, which it would still acknowledge. Repair mode is
//! still used where it is the right tool: [`crate::pod::checkpoint::StoppedPod::end`] puts every
//! TCP socket of the pod in repair mode before killing the processes, so closing them sends no
//! FIN or RST even after the namespace (and its lock) is gone.
//!
//! A process checkpointed alone (`zap checkpoint --pid`) may share its namespace with the host:
//! its lock is a table of its own, `inet zap_netlock_<pid>`, that drops only the segments of its
//! connections (one rule per direction and connection, matching addresses and ports).
//!
//! ## Who holds it
//! [`NetLock`] is a value: dropping it unlocks (errors are logged). A checkpoint's
//! [`crate::pod::checkpoint::StoppedPod`] holds the pod's lock from the stop on; `resume`
//! unlocks, `end` keeps it until the namespace goes. A pod restore locks the new pod's namespace
//! as soon as it exists ([`crate::pod::create_locked`]), before its interface has the address or
//! any socket is made (else a peer's retransmission could meet the address without its connection
//! and be answered with a reset), and unlocks when every process is rebuilt, just before they are
//! released, unless
//! [`crate::pod::restore::PodRestoreOptions::keep_network_locked`] asks to keep it (migration:
//! the destination opens only once the source is gone), in which case [`unlock`] opens it by
//! the pod's name later.
//!
//! libnftables (package `libnftables1`, which `nftables` depends on) is used when it can be
//! loaded; otherwise the `nft` command (package `nftables`); without either a checkpoint or
//! restore that needs the lock fails with an error that says so.
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::sys::nft::Nft;
use crate::sys::ns;
use crate::{EngineError, Result};

/// Packets carrying this mark (`SO_MARK`) pass the lock: Zap's own, sent while restoring.
pub const BYPASS_MARK: u32 = 0x7a61_704c;
/// The table locking a whole namespace.
pub const TABLE: &str = "zap_netlock";

/// A held network lock; dropping it unlocks.
pub struct NetLock {
    /// What is locked, for messages (`pod web`, `pid 1234`).
    what: String,
    /// A process in the locked namespace (its `/proc/PID/ns/net` is opened for each `nft`).
    netns: OwnedFd,
    table: String,
    /// The libnftables context the lock was taken with, kept for the unlock (None: the `nft`
    /// command is used).
    nft: Option<Nft>,
    held: bool,
    /// How long taking the lock took, ms.
    pub lock_ms: f64,
    since: Instant,
}

fn nft_err(what: &str, step: &str, detail: impl std::fmt::Display) -> EngineError {
    EngineError::Net { step: format!("{step} (network lock of {what})"), detail: detail.to_string() }
}

fn open_netns(what: &str, pid: i32) -> Result<OwnedFd> {
    let path = format!("/proc/{pid}/ns/net");
    std::fs::File::open(&path).map(OwnedFd::from).map_err(|e| nft_err(what, "open network namespace", format!("{path}: {e}")))
}

/// Runs the nft script `script` in namespace `netns`: in process with libnftables
/// ([`crate::sys::nft`]; on `ctx` when given, else on a context of its own), or with the `nft`
/// command when the library cannot be loaded or fails to run it.
fn nft(what: &str, step: &str, netns: &OwnedFd, ctx: Option<&Nft>, script: &str) -> Result<()> {
    let answer = match ctx {
        Some(ctx) => Some(ctx.run(netns, script)),
        None => crate::sys::nft::run_in_netns(netns, script),
    };
    match answer {
        Some(Ok(Ok(()))) => return Ok(()),
        Some(Ok(Err(message))) => return Err(nft_err(what, step, format!("nftables: {message}"))),
        // The library could not run it (its socket would pass select()'s limit, say): the
        // command can, from a process of its own.
        Some(Err(e)) => tracing::debug!(what, step, error = %e, "libnftables failed; running the nft command"),
        None => {}
    }
    let mut cmd = Command::new("nft");
    cmd.arg(script);
    let out = ns::command_in_netns(&mut cmd, netns).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            nft_err(what, step, "the nft command is missing: install the nftables package (scripts/setup.sh does)")
        } else {
            nft_err(what, step, format!("run nft: {e}"))
        }
    })?;
    if !out.status.success() {
        return Err(nft_err(what, step, format!("nft: {} ({})", String::from_utf8_lossy(&out.stderr).trim(), out.status)));
    }
    Ok(())
}

fn chains(rules_in: &str, rules_out: &str, policy: &str) -> String {
    format!(
        "chain input {{ type filter hook input priority -400; policy {policy}; meta mark {BYPASS_MARK:#x} accept; {rules_in} }}; \
         chain output {{ type filter hook output priority -400; policy {policy}; meta mark {BYPASS_MARK:#x} accept; {rules_out} }};"
    )
}

impl NetLock {
    fn take(what: String, netns: OwnedFd, table: String, body: String) -> Result<NetLock> {
        let t = Instant::now();
        // A table left by a crashed Zap is replaced: `add` then `delete` makes sure it exists
        // first, so the `delete` cannot fail.
        let script = format!("add table inet {table}; delete table inet {table}; table inet {table} {{ {body} }}");
        let ctx = match Nft::new(&netns) {
            Some(Ok(ctx)) => Some(ctx),
            Some(Err(e)) => return Err(nft_err(&what, "lock", format!("libnftables: {e}"))),
            None => None,
        };
        nft(&what, "lock", &netns, ctx.as_ref(), &script)?;
        let lock_ms = t.elapsed().as_secs_f64() * 1e3;
        tracing::debug!(what, lock_ms, "network locked");
        Ok(NetLock { what, netns, table, nft: ctx, held: true, lock_ms, since: Instant::now() })
    }

    /// Locks the whole network namespace of process `pid` (a pod's init), naming it `what`.
    pub fn namespace(what: &str, pid: i32) -> Result<NetLock> {
        let netns = open_netns(what, pid)?;
        Self::take(what.to_string(), netns, TABLE.to_string(), chains("", "", "drop"))
    }

    /// Locks only the TCP connections `conns` ((local, peer) raw socket addresses) in the
    /// namespace of process `pid`, with a table named after `tag` (the checkpointed process's pid,
    /// so that its restore finds and replaces the table its checkpoint left).
    pub fn connections(pid: i32, tag: i32, conns: &[(Vec<u8>, Vec<u8>)]) -> Result<NetLock> {
        Self::connections_and_listeners(pid, tag, conns, &[])
    }

    /// Like [`NetLock::connections`], and drops the connection requests (SYN) that reach the
    /// TCP listeners bound to `listeners` (address, port; an unspecified address matches any),
    /// so that no connection completes into their backlogs meanwhile (the peer retries its SYN).
    pub fn connections_and_listeners(pid: i32, tag: i32, conns: &[(Vec<u8>, Vec<u8>)], listeners: &[(std::net::IpAddr, u16)]) -> Result<NetLock> {
        let what = format!("pid {tag}");
        let netns = open_netns(&what, pid)?;
        let (mut rin, mut rout) = (String::new(), String::new());
        for (addr, port) in listeners {
            let daddr = match addr {
                a if a.is_unspecified() => String::new(),
                std::net::IpAddr::V4(a) => format!("ip daddr {a} "),
                std::net::IpAddr::V6(a) => match a.to_ipv4_mapped() {
                    Some(v4) => format!("ip daddr {v4} "),
                    None => format!("ip6 daddr {a} "),
                },
            };
            rin.push_str(&format!("{daddr}tcp dport {port} tcp flags & (syn | ack) == syn drop; "));
        }
        for (local, peer) in conns {
            let (Some((lf, la, lp)), Some((_, pa, pp))) = (addr_of(local), addr_of(peer)) else { continue };
            rin.push_str(&format!("{lf} saddr {pa} {lf} daddr {la} tcp sport {pp} tcp dport {lp} drop; "));
            rout.push_str(&format!("{lf} saddr {la} {lf} daddr {pa} tcp sport {lp} tcp dport {pp} drop; "));
        }
        Self::take(what, netns, format!("{TABLE}_{tag}"), chains(&rin, &rout, "accept"))
    }

    /// Unlocks.
    pub fn unlock(mut self) -> Result<()> {
        self.release()
    }

    fn release(&mut self) -> Result<()> {
        if !self.held {
            return Ok(());
        }
        self.held = false;
        let t = Instant::now();
        nft(&self.what, "unlock", &self.netns, self.nft.as_ref(), &format!("delete table inet {}", self.table))?;
        tracing::debug!(what = self.what, locked_ms = self.since.elapsed().as_secs_f64() * 1e3, unlock_ms = t.elapsed().as_secs_f64() * 1e3, "network unlocked");
        Ok(())
    }

    /// Leaves the lock in place: the namespace is going away, or the caller unlocks later with
    /// [`unlock`].
    pub fn keep(mut self) {
        self.held = false;
    }

    /// How long the lock has been held, ms.
    pub fn held_ms(&self) -> f64 {
        self.since.elapsed().as_secs_f64() * 1e3
    }
}

impl Drop for NetLock {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            tracing::warn!(what = self.what, error = %e, "could not unlock the network");
        }
    }
}

/// ("ip" or "ip6", address, port) of a raw socket address, for nft rules.
fn addr_of(a: &[u8]) -> Option<(&'static str, String, u16)> {
    let family = u16::from_ne_bytes([*a.first()?, *a.get(1)?]);
    let port = u16::from_be_bytes([*a.get(2)?, *a.get(3)?]);
    if family == libc::AF_INET as u16 && a.len() >= 8 {
        Some(("ip", std::net::Ipv4Addr::new(a[4], a[5], a[6], a[7]).to_string(), port))
    } else if family == libc::AF_INET6 as u16 && a.len() >= 24 {
        let b: [u8; 16] = a[8..24].try_into().ok()?;
        let v6 = std::net::Ipv6Addr::from(b);
        // A v4-mapped peer of a dual-stack socket travels as IPv4.
        match v6.to_ipv4_mapped() {
            Some(v4) => Some(("ip", v4.to_string(), port)),
            None => Some(("ip6", v6.to_string(), port)),
        }
    } else {
        None
    }
}

/// True when the namespace of process `pid` holds the pod lock table.
pub fn is_locked(pid: i32) -> bool {
    let Ok(netns) = open_netns("probe", pid) else { return false };
    if let Some(answer) = crate::sys::nft::run_in_netns(&netns, &format!("list table inet {TABLE}")) {
        return answer.is_ok_and(|r| r.is_ok());
    }
    let mut cmd = Command::new("nft");
    cmd.args(["list", "table", "inet", TABLE]);
    ns::command_in_netns(&mut cmd, &netns).is_ok_and(|o| o.status.success())
}

/// Unlocks the network of pod `name` of run directory `root`, locked by a restore that kept it
/// locked ([`crate::pod::restore::PodRestoreOptions::keep_network_locked`]). Unlocking a pod
/// that is not locked does nothing.
pub fn unlock(root: &Path, name: &str) -> Result<()> {
    let state = super::load(root, name)?;
    if super::status(root, &state) != super::PodStatus::Running {
        return Err(EngineError::Pod { pod: name.to_string(), step: "unlock network".into(), detail: "the pod is not running".into() });
    }
    let what = format!("pod {name}");
    let netns = open_netns(&what, state.init_pid)?;
    nft(&what, "unlock", &netns, None, &format!("add table inet {TABLE}; delete table inet {TABLE}"))
}
