//! Pod networking with iproute2 (`ip`), run on the host or, through `setns` on
//! `/proc/<init>/ns/net`, inside a pod's network namespace.
//!
//! Topology: one host bridge [`BRIDGE`] (`zap0`, with the fixed MAC [`BRIDGE_MAC`]). Each pod with an address gets a veth pair: the
//! host end `zv-<hash of the name>` is enslaved to the bridge and up; the other end is created
//! directly in the pod's namespace, renamed `eth0`, given the pod's MAC (if any) and address,
//! and brought up with `lo`; the pod's default route goes to the gateway, the first host
//! address of the pod's subnet (10.77.0.1 for 10.77.0.2/24), which is put on the bridge. Host to
//! pod and pod to pod traffic then flow through the bridge with no host sysctl changed. Every
//! pod, with or without an address, has `lo` up in its own namespace.
//!
//! Setup and teardown hold an `flock` on the host's net lock (`/run/zap/net.lock`, or
//! `<root>/net.lock` on a host with a Zap root, [`crate::host`]: one lock for every run directory
//! of the host, since they share the bridge) so concurrent `zap` commands do not race on the
//! bridge and its addresses. Teardown deletes the host veth (the pod end goes with it), the
//! gateway address when no other pod of the run directory uses the subnet, and the bridge when
//! no other pod of the run directory has an address and no interface is enslaved to it any more.
//!
//! On a host whose bridge is joined to a LAN ([`crate::host::HostNet::external`]) the bridge and
//! the gateway are not ours: setup only checks the bridge exists and routes the pod through the
//! LAN's gateway; teardown only deletes the veth.
//!
//! A migration's destination sets the pod's network up *detached* ([`setup_detached`]: the host
//! end stays down and off the bridge, so the pod is not on the LAN while the source still runs
//! it) and [`attach`]es it at the handover, then announces the address ([`announce`]).
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::sys::ns;
use crate::{EngineError, Result};

/// The bridge Zap creates for its pods when the host has no network of its own
/// ([`crate::host::HostNet`]).
pub const BRIDGE: &str = "zap0";
/// The pod's interface name.
pub const POD_IF: &str = "eth0";
/// MAC address given to the bridge when we create it (locally administered). A bridge without
/// an explicit address takes the lowest of its ports' and changes it as pods come and go, which
/// leaves stale gateway entries in the pods' ARP caches.
pub const BRIDGE_MAC: &str = "02:7a:61:70:00:01";

/// A pod's IPv4 address with its prefix length (`10.77.0.2/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The address.
    pub addr: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `A.B.C.D/N` (N in 8..=30) and checks the address is a usable host address other
    /// than the gateway.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| EngineError::Net { step: format!("parse address {s:?}"), detail: why.to_string() };
        let (a, p) = s.split_once('/').ok_or_else(|| bad("expected ADDR/PREFIX, e.g. 10.77.0.2/24"))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = p.parse().map_err(|_| bad("bad prefix length"))?;
        if !(8..=30).contains(&prefix) {
            return Err(bad("prefix length must be 8..=30"));
        }
        let c = Cidr { addr, prefix };
        let host = u32::from(addr) & !c.mask();
        if host == 0 || host == !c.mask() {
            return Err(bad("the network or broadcast address is not a host address"));
        }
        if addr == c.gateway() {
            return Err(bad("this is the subnet's gateway address (on the host bridge)"));
        }
        Ok(c)
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }

    /// The subnet's network address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    /// The gateway: the subnet's first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) + 1)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The network configuration of a pod's interface, as seen inside its namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// Interface name (`eth0`).
    pub ifname: String,
    /// Its MAC address.
    pub mac: String,
    /// Its IPv4 addresses with prefixes (`10.77.0.2/24`).
    pub addrs: Vec<String>,
    /// The routes of the namespace, as `ip route` prints them (`default via 10.77.0.1 dev eth0`).
    pub routes: Vec<String>,
}

/// The host end's name for pod `name`: `zv-` and 8 hex digits of a hash of the name.
pub fn veth_name(name: &str) -> String {
    // FNV-1a, 64 bits: stable across versions (the name is stored in pod.json anyway).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("zv-{:08x}", (h ^ (h >> 32)) as u32)
}

fn ip_run(pod: &str, step: String, args: &[&str], netns: Option<&OwnedFd>) -> Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let out = match netns {
        Some(fd) => ns::command_in_netns(&mut cmd, fd),
        None => cmd.output(),
    }
    .map_err(|e| EngineError::Pod { pod: pod.to_string(), step: step.clone(), detail: format!("run ip: {e}") })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(EngineError::Pod {
            pod: pod.to_string(),
            step,
            detail: format!("ip {}: {} ({})", args.join(" "), err, out.status),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn open_netns(pod: &str, init_pid: i32) -> Result<OwnedFd> {
    let path = format!("/proc/{init_pid}/ns/net");
    std::fs::File::open(&path).map(OwnedFd::from).map_err(|e| EngineError::Pod {
        pod: pod.to_string(),
        step: "open network namespace".into(),
        detail: format!("{path}: {e}"),
    })
}

/// Holds the host's net lock while alive.
struct NetLock(#[allow(dead_code)] std::fs::File);

/// Takes the lock serializing bridge changes ([`crate::host::net_lock_path`]), shared by all run
/// directories of the host.
fn lock() -> Result<NetLock> {
    let path = crate::host::net_lock_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| EngineError::io("create", dir, e))?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| EngineError::io("open", &path, e))?;
    ns::flock_exclusive(&f).map_err(|e| EngineError::io("lock", &path, e))?;
    Ok(NetLock(f))
}

/// Brings `lo` up in the pod's network namespace.
pub fn setup_loopback(pod: &str, init_pid: i32) -> Result<()> {
    let netns = open_netns(pod, init_pid)?;
    ip_run(pod, "bring up lo".into(), &["link", "set", "lo", "up"], Some(&netns))?;
    Ok(())
}

fn link_exists(name: &str) -> bool {
    Command::new("ip").args(["link", "show", "dev", name]).output().is_ok_and(|o| o.status.success())
}

/// Connects pod `pod` (whose init is `init_pid`) to the bridge with address `cidr` and
/// optionally MAC `mac`, and announces the address (one gratuitous ARP). Returns the host veth's
/// name. On failure, removes the veth again (the
/// bridge and gateway address stay for [`teardown`]).
pub fn setup(pod: &str, init_pid: i32, cidr: &Cidr, mac: Option<&str>) -> Result<String> {
    setup_with(pod, init_pid, cidr, mac, true)
}

/// Like [`setup`], but the host end of the veth stays down and off the bridge until [`attach`]:
/// the pod's interface is configured and up inside, but nothing of it is on the host's network.
pub fn setup_detached(pod: &str, init_pid: i32, cidr: &Cidr, mac: Option<&str>) -> Result<String> {
    setup_with(pod, init_pid, cidr, mac, false)
}

fn setup_with(pod: &str, init_pid: i32, cidr: &Cidr, mac: Option<&str>, attached: bool) -> Result<String> {
    let hn = crate::host::net()?;
    let bridge = hn.bridge.as_str();
    let _lock = lock()?;
    let veth = veth_name(pod);
    if link_exists(&veth) {
        return Err(EngineError::Pod {
            pod: pod.into(),
            step: "create veth".into(),
            detail: format!("interface {veth} already exists (another pod with a colliding name hash, or leftovers)"),
        });
    }
    let gateway = match hn.gateway {
        Some(gw) => {
            if !link_exists(bridge) {
                return Err(EngineError::Pod {
                    pod: pod.into(),
                    step: format!("find bridge {bridge}"),
                    detail: "the host's LAN bridge (net.json) does not exist".into(),
                });
            }
            gw
        }
        None => cidr.gateway(),
    };
    if !hn.external {
        if !link_exists(bridge) {
            ip_run(pod, format!("create bridge {bridge}"), &["link", "add", bridge, "address", BRIDGE_MAC, "type", "bridge"], None)?;
        }
        ip_run(pod, format!("bring up bridge {bridge}"), &["link", "set", bridge, "up"], None)?;
    }
    if hn.gateway.is_none() {
        let gw = format!("{}/{}", cidr.gateway(), cidr.prefix);
        let addrs = ip_run(pod, format!("list addresses of {bridge}"), &["-o", "-4", "addr", "show", "dev", bridge], None)?;
        if !addrs.split_whitespace().any(|w| w == gw) {
            ip_run(pod, format!("add gateway {gw} to {bridge}"), &["addr", "add", &gw, "dev", bridge], None)?;
        }
    }
    let peer = veth.replacen("zv-", "zp-", 1);
    let pid = init_pid.to_string();
    ip_run(
        pod,
        format!("create veth {veth}"),
        &["link", "add", &veth, "type", "veth", "peer", "name", &peer, "netns", &pid],
        None,
    )?;
    let inner = || -> Result<()> {
        if attached {
            ip_run(pod, format!("enslave {veth} to {bridge}"), &["link", "set", &veth, "master", bridge, "up"], None)?;
        }
        let netns = open_netns(pod, init_pid)?;
        let run = |step: &str, args: &[&str]| ip_run(pod, step.to_string(), args, Some(&netns));
        run("rename pod interface", &["link", "set", &peer, "name", POD_IF])?;
        if let Some(mac) = mac {
            run("set pod MAC", &["link", "set", POD_IF, "address", mac])?;
        }
        run("set pod address", &["addr", "add", &cidr.to_string(), "dev", POD_IF])?;
        run("bring up pod interface", &["link", "set", POD_IF, "up"])?;
        run("bring up lo", &["link", "set", "lo", "up"])?;
        let gw = gateway.to_string();
        if attached {
            run("add default route", &["route", "add", "default", "via", &gw])?;
            // Neighbours may still hold the MAC of an earlier pod with this address (removed, or
            // this pod before its checkpoint): until their entry expires (a minute) they would
            // send its packets nowhere. One gratuitous ARP updates them.
            if let Err(e) = crate::sys::arp::gratuitous(&netns, POD_IF, None, cidr.addr.octets(), 1) {
                tracing::warn!(pod, error = %e, "could not announce the pod's address");
            }
        } else {
            // onlink: while detached the interface has no carrier, and the route must still be made.
            run("add default route", &["route", "add", "default", "via", &gw, "dev", POD_IF, "onlink"])?;
        }
        Ok(())
    };
    if let Err(e) = inner() {
        let _ = ip_run(pod, "delete veth".into(), &["link", "del", &veth], None);
        return Err(e);
    }
    Ok(veth)
}

/// Puts the host end `veth` of pod `pod` (set up with [`setup_detached`]) on the host's bridge
/// and brings it up.
pub fn attach(pod: &str, veth: &str) -> Result<()> {
    let bridge = crate::host::net()?.bridge;
    ip_run(pod, format!("attach {veth} to {bridge}"), &["link", "set", veth, "master", &bridge, "up"], None)?;
    Ok(())
}

/// Takes the host end `veth` of pod `pod` off the bridge and down (the reverse of [`attach`]).
pub fn detach(pod: &str, veth: &str) -> Result<()> {
    ip_run(pod, format!("detach {veth}"), &["link", "set", veth, "nomaster", "down"], None)?;
    Ok(())
}

/// Announces that the pod of `init_pid` now holds its address on this host: gratuitous ARP
/// (`count` requests, 20 ms apart) from its interface, so that the LAN's switches and neighbours
/// learn where the address (and its MAC) went.
pub fn announce(pod: &str, init_pid: i32, count: u32) -> Result<()> {
    let cfg = read_config(init_pid)?;
    let mac = parse_mac(&cfg.mac)
        .ok_or_else(|| EngineError::Pod { pod: pod.into(), step: "announce address".into(), detail: format!("bad MAC {:?}", cfg.mac) })?;
    let netns = open_netns(pod, init_pid)?;
    for a in &cfg.addrs {
        let Ok(c) = Cidr::parse(a) else { continue };
        crate::sys::arp::gratuitous(&netns, POD_IF, Some(mac), c.addr.octets(), count)
            .map_err(|e| EngineError::Pod { pod: pod.into(), step: format!("send gratuitous ARP for {}", c.addr), detail: e.to_string() })?;
    }
    Ok(())
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s.split(':').map(|p| u8::from_str_radix(p, 16)).collect::<std::result::Result<_, _>>().ok()?;
    v.try_into().ok()
}

/// Removes pod `pod`'s network: its host veth `veth` (if given and present), then the gateway
/// address of `cidr` and the bridge when nothing else uses them. `others` gives the addresses of
/// the other pods of the run directory; it is called with the lock held, so a pod being set up
/// at the same time is seen.
pub fn teardown(
    pod: &str,
    veth: Option<&str>,
    cidr: Option<&Cidr>,
    others: impl FnOnce() -> Vec<Cidr>,
) -> Result<()> {
    let hn = crate::host::net()?;
    let bridge = hn.bridge.as_str();
    let _lock = lock()?;
    let others = others();
    if let Some(veth) = veth {
        if link_exists(veth) {
            // The kernel may remove the pair by itself meanwhile (the pod's namespace ending).
            if let Err(e) = ip_run(pod, format!("delete veth {veth}"), &["link", "del", veth], None) {
                if link_exists(veth) {
                    return Err(e);
                }
            }
        }
    }
    if hn.external || !link_exists(bridge) {
        return Ok(());
    }
    if let Some(c) = cidr.filter(|_| hn.gateway.is_none()) {
        let same_subnet = others.iter().any(|o| o.prefix == c.prefix && o.network() == c.network());
        if !same_subnet {
            let gw = format!("{}/{}", c.gateway(), c.prefix);
            let addrs = ip_run(pod, format!("list addresses of {bridge}"), &["-o", "-4", "addr", "show", "dev", bridge], None)?;
            if addrs.split_whitespace().any(|w| w == gw) {
                ip_run(pod, format!("remove gateway {gw} from {bridge}"), &["addr", "del", &gw, "dev", bridge], None)?;
            }
        }
    }
    let slaves = ip_run(pod, format!("list ports of {bridge}"), &["-o", "link", "show", "master", bridge], None)?;
    if others.is_empty() && slaves.trim().is_empty() {
        ip_run(pod, format!("delete bridge {bridge}"), &["link", "del", bridge], None)?;
    }
    Ok(())
}

/// Reads the configuration of `eth0` in the network namespace of `init_pid` (for checkpoints).
pub fn read_config(init_pid: i32) -> Result<NetConfig> {
    let pod = format!("of init {init_pid}");
    let netns = open_netns(&pod, init_pid)?;
    let link = ip_run(&pod, "read interface".into(), &["-o", "link", "show", "dev", POD_IF], Some(&netns))?;
    let mac = link
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let addrs = ip_run(&pod, "read addresses".into(), &["-o", "-4", "addr", "show", "dev", POD_IF], Some(&netns))?;
    let addrs = addrs
        .lines()
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1).map(str::to_string))
        .collect();
    let routes = ip_run(&pod, "read routes".into(), &["-4", "route", "show"], Some(&netns))?;
    let routes = routes.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect();
    Ok(NetConfig { ifname: POD_IF.to_string(), mac, addrs, routes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_and_gateway() {
        let c = Cidr::parse("10.77.3.2/24").unwrap();
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 77, 3, 1));
        assert_eq!(c.network(), Ipv4Addr::new(10, 77, 3, 0));
        assert_eq!(c.to_string(), "10.77.3.2/24");
        assert!(Cidr::parse("10.77.3.1/24").is_err());
        assert!(Cidr::parse("10.77.3.0/24").is_err());
        assert!(Cidr::parse("10.77.3.255/24").is_err());
        assert!(Cidr::parse("10.77.3.2").is_err());
        assert!(Cidr::parse("10.77.3.2/31").is_err());
    }

    #[test]
    fn veth_names_fit() {
        let n = veth_name("a-very-long-pod-name-that-goes-on-and-on-and-on");
        assert!(n.len() <= 15, "{n}");
        assert_ne!(veth_name("p1"), veth_name("p2"));
    }
}
