//! The pod's clocks: every pod has a time namespace of its own, so that its `CLOCK_MONOTONIC`
//! and `CLOCK_BOOTTIME` (and `/proc/uptime`) go on across a restore or a migration instead of
//! jumping to another host's (or a later boot's) values.
//!
//! ## The namespace
//! The pod's init makes it before it starts any process (`unshare(CLONE_NEWTIME)`), writes its
//! offsets (`/proc/self/timens_offsets`, allowed only while no process is in it), then enters it
//! itself (`setns` on `/proc/self/ns/time_for_children`), so the init, everything it starts and
//! what `zap exec` starts in the pod (joined through the init) share it. A pod started by
//! `zap run` keeps the offsets of the `zap` that started it (none on a host): its clocks read as
//! the host's until its first restore. A kernel without time namespaces (`/proc/self/ns/time`
//! missing, no `CONFIG_TIME_NS`) runs pods without one.
//!
//! ## Saved ([`save`])
//! While the pod is stopped for a checkpoint, once its state (its timers' time left among it) is
//! read, the pod's clocks as its processes see them are read: the host's clocks plus the offsets
//! of the init's time namespace ([`ClockImage`]), with those offsets themselves (namespaces the
//! processes made inside the pod have offsets relative to the host's clocks, which a restore
//! moves with the pod's). Read after the timers, so that a timer re-armed with the time it had
//! left never ends before its time by the pod's clock; the pod sees the time its state took to
//! read as part of the stop.
//!
//! ## Restored ([`ClockTarget::offsets`])
//! A restore makes the pod's namespace with offsets such that its clocks read the saved values
//! at the moment the offsets are computed (just before the init starts), as CRIU does: the pod
//! then sees the time its state took to read and its restore took (from that moment until its
//! processes run), never the time between the checkpoint and the restore, and its clocks never go back. A restore long
//! after the checkpoint (or after the host rebooted) shows the same: the clocks go on from the
//! checkpoint's values (`CLOCK_REALTIME` is not namespaced and shows the real date). A
//! migration's destination makes the namespace when it builds the pod, at the first round, from
//! the source pod's clocks sent with the offer (so the pod's clocks go on with the source's, and
//! after the handover the pod sees the time it was stopped); should the final image show that
//! the pod's clocks would go back there (a slow link), the destination rebuilds the pod with
//! offsets from the image. Images without clocks (version 4, made before pods had a time
//! namespace) restore without one, as they did.
use serde::{Deserialize, Serialize};

use crate::sys::ns;

/// The pod's two namespaced clocks, ns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clocks {
    /// `CLOCK_MONOTONIC`.
    pub monotonic: i64,
    /// `CLOCK_BOOTTIME`.
    pub boottime: i64,
}

impl Clocks {
    /// `self - other`, clock by clock.
    pub fn minus(self, other: Clocks) -> Clocks {
        Clocks { monotonic: self.monotonic - other.monotonic, boottime: self.boottime - other.boottime }
    }

    /// `self + other`, clock by clock.
    pub fn plus(self, other: Clocks) -> Clocks {
        Clocks { monotonic: self.monotonic + other.monotonic, boottime: self.boottime + other.boottime }
    }

    /// True if either clock of `self` is behind `other`'s.
    pub fn behind(self, other: Clocks) -> bool {
        self.monotonic < other.monotonic || self.boottime < other.boottime
    }
}

/// What a pod checkpoint records of the pod's clocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockImage {
    /// The pod's clocks when it stopped.
    pub at_stop: Clocks,
    /// The offsets of its time namespace then (relative to the host's clocks; for a pod without
    /// a namespace of its own, those of the namespace it is in: zero on a host).
    pub offsets: Clocks,
}

/// The clocks a pod being created must show: `pod` when the host's clocks were `host` (a
/// migration's destination, from the source's offer), or `pod` from the moment the offsets are
/// computed (`host` none: a restore).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockTarget {
    /// The pod's clocks.
    pub pod: Clocks,
    /// The host's clocks at that moment.
    pub host: Option<Clocks>,
}

impl ClockTarget {
    /// A restore's target: the saved clocks, from now on.
    pub fn resume(at: Clocks) -> Self {
        ClockTarget { pod: at, host: None }
    }

    /// The namespace offsets that make the pod's clocks read as the target says.
    pub fn offsets(&self) -> std::io::Result<Clocks> {
        let host = match self.host {
            Some(h) => h,
            None => host_clocks()?,
        };
        // The kernel refuses offsets that would put a clock before 0: saved clocks never are.
        Ok(self.pod.minus(host))
    }
}

/// True when the kernel has time namespaces (`/proc/self/ns/time`).
pub fn supported() -> bool {
    std::path::Path::new("/proc/self/ns/time").exists()
}

/// Parses `/proc/PID/timens_offsets` ("monotonic S NS" and "boottime S NS" lines) into ns.
pub fn parse_offsets(text: &str) -> Option<Clocks> {
    let mut c = Clocks::default();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(name), Some(s), Some(n)) = (f.next(), f.next(), f.next()) else { continue };
        let v = s.parse::<i64>().ok()? * 1_000_000_000 + n.parse::<i64>().ok()?;
        match name {
            "monotonic" => c.monotonic = v,
            "boottime" => c.boottime = v,
            _ => {}
        }
    }
    Some(c)
}

/// The offsets `/proc/PID/timens_offsets` shows (of the time namespace `pid`'s children go
/// to; zero on a kernel without time namespaces).
pub fn offsets_of(pid: &str) -> std::io::Result<Clocks> {
    let path = format!("/proc/{pid}/timens_offsets");
    match std::fs::read_to_string(&path) {
        Ok(text) => parse_offsets(&text).ok_or_else(|| std::io::Error::other(format!("{path}: unreadable offsets {text:?}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Clocks::default()),
        Err(e) => Err(std::io::Error::new(e.kind(), format!("{path}: {e}"))),
    }
}

/// The text written to `/proc/PID/timens_offsets` for `offsets` (ns part in 0..1e9).
pub fn offsets_text(offsets: Clocks) -> String {
    let split = |v: i64| (v.div_euclid(1_000_000_000), v.rem_euclid(1_000_000_000));
    let (ms, mn) = split(offsets.monotonic);
    let (bs, bn) = split(offsets.boottime);
    format!("monotonic {ms} {mn}\nboottime {bs} {bn}\n")
}

/// The host's clocks (the root time namespace's): this process's clocks less its own
/// namespace's offsets.
pub fn host_clocks() -> std::io::Result<Clocks> {
    let own = offsets_of("self")?;
    // Offsets first: the clocks are read last, as close as possible to the caller's use.
    let now = Clocks { monotonic: ns::clock_ns(libc::CLOCK_MONOTONIC)?, boottime: ns::clock_ns(libc::CLOCK_BOOTTIME)? };
    Ok(now.minus(own))
}

/// The clocks of the pod whose init is `init_pid`, as its processes see them now, with its
/// namespace's offsets.
pub fn save(init_pid: i32) -> std::io::Result<ClockImage> {
    let offsets = offsets_of(&init_pid.to_string())?;
    let host = host_clocks()?;
    Ok(ClockImage { at_stop: host.plus(offsets), offsets })
}

/// Makes the caller's time namespace for the pod (see the module doc): a new one, with
/// `offsets` written when given, entered by the caller. Raw steps in [`ns`]; run by the init
/// before it starts any process.
pub fn make_namespace(offsets: Option<Clocks>) -> Result<(), String> {
    ns::unshare_time().map_err(|e| format!("make the pod's time namespace (unshare CLONE_NEWTIME): {e}"))?;
    if let Some(off) = offsets {
        let text = offsets_text(off);
        std::fs::write("/proc/self/timens_offsets", &text)
            .map_err(|e| format!("set the pod's clock offsets ({}): {e}", text.trim_end().replace('\n', ", ")))?;
    }
    ns::enter_time_for_children().map_err(|e| format!("enter the pod's time namespace: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip() {
        let c = Clocks { monotonic: -1_500_000_000, boottime: 2_000_000_001 };
        let text = offsets_text(c);
        assert_eq!(text, "monotonic -2 500000000\nboottime 2 1\n");
        assert_eq!(parse_offsets(&text), Some(c));
        assert_eq!(parse_offsets("monotonic      1000         5\nboottime          -7         0\n"), Some(Clocks { monotonic: 1_000_000_000_005, boottime: -7_000_000_000 }));
        assert_eq!(parse_offsets("monotonic x 0\n"), None);
    }

    #[test]
    fn behind() {
        let a = Clocks { monotonic: 10, boottime: 20 };
        assert!(!a.behind(a));
        assert!(a.behind(Clocks { monotonic: 11, boottime: 0 }));
        assert!(a.behind(Clocks { monotonic: 0, boottime: 21 }));
    }
}
