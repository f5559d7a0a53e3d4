//! The host: where Zap keeps its state on a machine, and how its pods reach the network.
//!
//! One machine can carry several hosts (tests, the demo: `scripts/hosts.sh`), each a network
//! namespace plus a *Zap root* named by `$ZAP_ROOT` (`zap --root DIR` sets it). A root holds
//! everything of its host, so two hosts never collide:
//!
//! ```text
//!   <root>/pods/        run directory (pods, their locks and tracker state)   default /run/zap/pods
//!   <root>/store/       the image store                                       default /var/lib/zap/store
//!   <root>/migrate/     migration sessions (journals, staged chunks)          default /var/lib/zap/migrate
//!   <root>/keys/        this host's key, accepted keys, known destinations    default /etc/zap/keys
//!   <root>/net.lock     lock of bridge changes                                default /run/zap/net.lock
//!   <root>/net.json     the host network (optional, see below)
//!   cgroup <v2>/zap-<tag>/  parent of the pods' cgroups, derived from the root   default <v2>/zap
//! ```
//! `$ZAP_RUN_DIR` and `$ZAP_STORE` still override the run directory and the store one by one.
//!
//! ## Host network
//! By default Zap owns the bridge `zap0` of its network namespace: it creates it, puts the
//! first address of each pod subnet on it as the pods' gateway, and deletes it when no pod uses
//! it. A host whose bridge is joined to a LAN at layer 2 (`scripts/hosts.sh`) says so in
//! `<root>/net.json`, `{"bridge": "zap0", "gateway": "10.99.0.1", "external": true}`: the
//! bridge then belongs to the host (Zap neither creates, changes nor deletes it) and the gateway
//! to the LAN, so pods take addresses of the LAN's subnet and route through its gateway. A pod
//! keeps its address and MAC when it moves to another host of the LAN: nothing but the pod's own
//! interface carries its address, so no two hosts ever answer for it.
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{EngineError, Result};

/// Run directory when no root is set.
pub const DEFAULT_RUN_DIR: &str = "/run/zap/pods";
/// Store when no root is set.
pub const DEFAULT_STORE: &str = "/var/lib/zap/store";

/// The Zap root (`$ZAP_ROOT`), if one is set.
pub fn root() -> Option<PathBuf> {
    std::env::var_os("ZAP_ROOT").filter(|v| !v.is_empty()).map(PathBuf::from)
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// The run directory: `$ZAP_RUN_DIR`, else `<root>/pods`, else [`DEFAULT_RUN_DIR`].
pub fn run_dir() -> PathBuf {
    env_path("ZAP_RUN_DIR").or_else(|| root().map(|r| r.join("pods"))).unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR))
}

/// The store directory: `$ZAP_STORE`, else `<root>/store`, else [`DEFAULT_STORE`].
pub fn store_dir() -> PathBuf {
    env_path("ZAP_STORE").or_else(|| root().map(|r| r.join("store"))).unwrap_or_else(|| PathBuf::from(DEFAULT_STORE))
}

/// Where migration sessions keep their journals and staged chunks.
pub fn migrate_dir() -> PathBuf {
    root().map_or_else(|| PathBuf::from("/var/lib/zap/migrate"), |r| r.join("migrate"))
}

/// This host's keys.
pub fn keys_dir() -> PathBuf {
    root().map_or_else(|| PathBuf::from("/etc/zap/keys"), |r| r.join("keys"))
}

/// The lock serializing changes of the host's bridge.
pub fn net_lock_path() -> PathBuf {
    root().map_or_else(|| PathBuf::from("/run/zap/net.lock"), |r| r.join("net.lock"))
}

/// Name of the cgroup that holds the pods' cgroups: `zap`, or with a root `zap-<tag>` where the
/// tag is the root's last component (sanitized) and a hash of its whole path.
pub fn cgroup_parent() -> String {
    match root() {
        None => "zap".to_string(),
        Some(r) => cgroup_parent_of(&r),
    }
}

/// [`cgroup_parent`] for root `r`.
pub fn cgroup_parent_of(r: &Path) -> String {
    let full = r.to_string_lossy();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325; // FNV-1a
    for b in full.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let last: String = r
        .file_name()
        .map(|n| n.to_string_lossy().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).take(24).collect())
        .unwrap_or_default();
    format!("zap-{last}-{:08x}", (h ^ (h >> 32)) as u32)
}

/// How the host's pods reach the network (`<root>/net.json`; the default without one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostNet {
    /// The bridge the pods' veths are enslaved to.
    pub bridge: String,
    /// The pods' default gateway when it is not ours (a LAN's router); `None`: the first address
    /// of each pod subnet, put on the bridge by Zap.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// The bridge belongs to the host, not to Zap: never created, changed or deleted by Zap.
    #[serde(default)]
    pub external: bool,
}

impl Default for HostNet {
    fn default() -> Self {
        HostNet { bridge: "zap0".into(), gateway: None, external: false }
    }
}

/// The host network: `<root>/net.json` if there is one, else Zap's own bridge `zap0`.
pub fn net() -> Result<HostNet> {
    let Some(r) = root() else { return Ok(HostNet::default()) };
    let path = r.join("net.json");
    match std::fs::read(&path) {
        Ok(data) => serde_json::from_slice(&data)
            .map_err(|e| EngineError::Net { step: format!("read host network {}", path.display()), detail: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HostNet::default()),
        Err(e) => Err(EngineError::io("read host network", &path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_parents_differ_per_root() {
        let a = cgroup_parent_of(Path::new("/var/tmp/hosts/a"));
        let b = cgroup_parent_of(Path::new("/var/tmp/hosts/b"));
        let b2 = cgroup_parent_of(Path::new("/var/tmp/other/b"));
        assert!(a.starts_with("zap-a-"), "{a}");
        assert_ne!(a, b);
        assert_ne!(b, b2);
        assert!(a.len() < 64);
        let odd = cgroup_parent_of(Path::new("/x/a b.c"));
        assert!(odd.starts_with("zap-a_b_c-"), "{odd}");
    }

    #[test]
    fn host_net_parses() {
        let n: HostNet = serde_json::from_str(r#"{"bridge":"zap0","gateway":"10.99.0.1","external":true}"#).unwrap();
        assert_eq!(n.gateway, Some(Ipv4Addr::new(10, 99, 0, 1)));
        assert!(n.external);
        let d: HostNet = serde_json::from_str(r#"{"bridge":"br9"}"#).unwrap();
        assert_eq!(d.gateway, None);
        assert!(!d.external);
    }
}
