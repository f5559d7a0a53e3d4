//! Flags of mappings and of the address space that restore sets again: what `/proc/PID/smaps`
//! shows in `VmFlags` and `ProtectionKey`, and the two address-space modes a program can switch
//! on for its future mappings (`mlockall(MCL_FUTURE)`, `prctl(PR_SET_MEMORY_MERGE)`).
//!
//! | smaps | set by | restored with |
//! |---|---|---|
//! | `gd` | `MAP_GROWSDOWN`, the main stack | `mmap(MAP_GROWSDOWN)` ([`VmaState::growsdown`]) |
//! | `nr` | `MAP_NORESERVE` | `mmap(MAP_NORESERVE)` |
//! | `ht` | `MAP_HUGETLB`, hugetlbfs | `mmap(MAP_HUGETLB | page size)` ([`VmaState::huge`]) |
//! | `hg` / `nh` | `MADV_HUGEPAGE` / `MADV_NOHUGEPAGE` | the same madvise, before the pages are written |
//! | `dd`, `mg`, `sr`, `rr` | `MADV_DONTDUMP`, `MADV_MERGEABLE`, `MADV_SEQUENTIAL`, `MADV_RANDOM` | the same madvise |
//! | `lo`, `lf` | `mlock`, `mlock2(MLOCK_ONFAULT)`, `MAP_LOCKED` | `mlock2`, after the pages are written |
//! | `dc`, `wf` | `MADV_DONTFORK`, `MADV_WIPEONFORK` | the same madvise, once the process's children are made |
//! | `sl` | `mseal` | `mseal`, once the process's children are made |
//! | `ProtectionKey` | `pkey_alloc` + `pkey_mprotect` | the keys allocated again, `pkey_mprotect` |
//!
//! What forks copy (`dc`, `wf` and `sl` change what a child made by `fork` gets) is set after the
//! process has made its children at restore ([`crate::mem::cow`]), so a child inherits what it
//! inherited originally. Limits: a protection key allocated but used on no mapping is not seen,
//! so it is not allocated again; an execute-only mapping (`PROT_EXEC` alone) gets the kernel's
//! execute-only key afresh.
use serde::{Deserialize, Serialize};

use super::VmaState;
use crate::inject::Injector;
use crate::{EngineError, Result};

const MADV_NORMAL: u64 = 0;
const MADV_RANDOM: u64 = 1;
const MADV_SEQUENTIAL: u64 = 2;
const MADV_DONTFORK: u64 = 10;
const MADV_DOFORK: u64 = 11;
const MADV_MERGEABLE: u64 = 12;
const MADV_UNMERGEABLE: u64 = 13;
const MADV_HUGEPAGE: u64 = 14;
const MADV_NOHUGEPAGE: u64 = 15;
const MADV_DONTDUMP: u64 = 16;
const MADV_DODUMP: u64 = 17;
const MADV_WIPEONFORK: u64 = 18;
const MADV_KEEPONFORK: u64 = 19;
const MLOCK_ONFAULT: u64 = 1;
const SYS_MSEAL: i64 = 462;
const MCL_FUTURE: u64 = 2;
const MCL_ONFAULT: u64 = 4;
const PR_SET_MEMORY_MERGE: u64 = 67;

/// The flags of one mapping that restore sets again (see the module doc), as bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmFlags(pub u32);

impl VmFlags {
    /// `dc`: not copied into children (`MADV_DONTFORK`).
    pub const DONTFORK: u32 = 1 << 0;
    /// `wf`: children get it zeroed (`MADV_WIPEONFORK`).
    pub const WIPEONFORK: u32 = 1 << 1;
    /// `hg`: transparent huge pages wanted (`MADV_HUGEPAGE`).
    pub const HUGEPAGE: u32 = 1 << 2;
    /// `nh`: no transparent huge pages (`MADV_NOHUGEPAGE`).
    pub const NOHUGEPAGE: u32 = 1 << 3;
    /// `dd`: left out of core dumps (`MADV_DONTDUMP`).
    pub const DONTDUMP: u32 = 1 << 4;
    /// `mg`: KSM may merge its pages (`MADV_MERGEABLE`).
    pub const MERGEABLE: u32 = 1 << 5;
    /// `lo`: locked in memory (`mlock`, `MAP_LOCKED`).
    pub const LOCKED: u32 = 1 << 6;
    /// `lf`: locked as pages fault in (`MLOCK_ONFAULT`).
    pub const LOCKONFAULT: u32 = 1 << 7;
    /// `sr`: sequential read-ahead (`MADV_SEQUENTIAL`).
    pub const SEQ_READ: u32 = 1 << 8;
    /// `rr`: no read-ahead (`MADV_RANDOM`).
    pub const RAND_READ: u32 = 1 << 9;
    /// `nr`: no swap space reserved (`MAP_NORESERVE`).
    pub const NORESERVE: u32 = 1 << 10;
    /// `sl`: sealed (`mseal`).
    pub const SEALED: u32 = 1 << 11;

    const NAMES: [(&'static str, u32); 12] = [
        ("dc", Self::DONTFORK),
        ("wf", Self::WIPEONFORK),
        ("hg", Self::HUGEPAGE),
        ("nh", Self::NOHUGEPAGE),
        ("dd", Self::DONTDUMP),
        ("mg", Self::MERGEABLE),
        ("lo", Self::LOCKED),
        ("lf", Self::LOCKONFAULT),
        ("sr", Self::SEQ_READ),
        ("rr", Self::RAND_READ),
        ("nr", Self::NORESERVE),
        ("sl", Self::SEALED),
    ];

    /// From smaps `VmFlags` mnemonics (the others are ignored).
    pub fn from_mnemonics<'a>(names: impl IntoIterator<Item = &'a str>) -> VmFlags {
        let mut bits = 0;
        for n in names {
            if let Some((_, b)) = Self::NAMES.iter().find(|(m, _)| *m == n) {
                bits |= b;
            }
        }
        VmFlags(bits)
    }

    /// True when every bit of `bits` is set.
    pub fn has(self, bits: u32) -> bool {
        self.0 & bits == bits
    }

    /// The mnemonics set, for messages.
    pub fn names(self) -> String {
        Self::NAMES.iter().filter(|(_, b)| self.0 & b != 0).map(|(n, _)| *n).collect::<Vec<_>>().join(" ")
    }

    /// What a child made by `fork` sees of these flags at restore time, when the parent sets its
    /// fork-affecting flags, seals and locks only after making its children (`lo` and `lf` are
    /// never inherited).
    pub fn as_inherited(self) -> VmFlags {
        VmFlags(self.0 & !(Self::DONTFORK | Self::WIPEONFORK | Self::SEALED | Self::LOCKED | Self::LOCKONFAULT))
    }

    /// False when `madvise` cannot turn a mapping with flags `self` into one with `to`: no advice
    /// clears both `hg` and `nh` once one is set.
    pub fn can_become(self, to: VmFlags) -> bool {
        let thp = Self::HUGEPAGE | Self::NOHUGEPAGE;
        to.0 & thp != 0 || self.0 & thp == 0
    }
}

/// What `/proc/PID/smaps` says of one mapping beyond `/proc/PID/maps`.
#[derive(Clone, Debug, Default)]
pub(crate) struct SmapsEntry {
    /// `VmFlags` mnemonics.
    pub names: Vec<String>,
    /// `ProtectionKey`.
    pub pkey: u32,
    /// `KernelPageSize`, bytes.
    pub kernel_page: u64,
}

/// Reads `/proc/PID/smaps`: per mapping start, its entry.
pub(crate) fn read_smaps(pid: i32) -> Result<std::collections::HashMap<u64, SmapsEntry>> {
    let path = format!("/proc/{pid}/smaps");
    let text = std::fs::read_to_string(&path).map_err(|e| EngineError::io("read", path.as_ref(), e))?;
    let mut out = std::collections::HashMap::new();
    let mut cur: Option<(u64, SmapsEntry)> = None;
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some(start) = first.split_once('-').and_then(|(s, _)| u64::from_str_radix(s, 16).ok()) {
            out.extend(cur.take());
            cur = Some((start, SmapsEntry::default()));
            continue;
        }
        let Some((_, e)) = cur.as_mut() else { continue };
        if let Some(f) = line.strip_prefix("VmFlags:") {
            e.names = f.split_whitespace().map(String::from).collect();
        } else if let Some(k) = line.strip_prefix("ProtectionKey:") {
            e.pkey = k.trim().parse().unwrap_or(0);
        } else if let Some(k) = line.strip_prefix("KernelPageSize:") {
            e.kernel_page = k.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap_or(4) * 1024;
        }
    }
    out.extend(cur);
    Ok(out)
}

/// The `VmFlags` mnemonics of the mapping of `pid` that holds `addr`, reading smaps only up to it.
fn flags_at(pid: i32, addr: u64) -> Result<Vec<String>> {
    use std::io::BufRead;
    let path = format!("/proc/{pid}/smaps");
    let f = std::fs::File::open(&path).map_err(|e| EngineError::io("open", path.as_ref(), e))?;
    let mut inside = false;
    for line in std::io::BufReader::new(f).lines() {
        let line = line.map_err(|e| EngineError::io("read", path.as_ref(), e))?;
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                inside = a <= addr && addr < b;
                continue;
            }
        }
        if let (true, Some(f)) = (inside, line.strip_prefix("VmFlags:")) {
            return Ok(f.split_whitespace().map(String::from).collect());
        }
    }
    Err(EngineError::Proc { pid, detail: format!("no mapping at {addr:#x} in {path}") })
}

/// The `mmap` flags a mapping needs besides sharing and `MAP_FIXED`: `MAP_GROWSDOWN`,
/// `MAP_NORESERVE`, `MAP_HUGETLB` with its page size.
pub(crate) fn mmap_extra(v: &VmaState) -> u64 {
    let mut f = 0u64;
    if v.growsdown {
        f |= libc::MAP_GROWSDOWN as u64;
    }
    if v.flags.has(VmFlags::NORESERVE) {
        f |= libc::MAP_NORESERVE as u64;
    }
    if v.huge != 0 {
        // MAP_HUGE_SHIFT = 26: log2 of the page size selects the pool.
        f |= libc::MAP_HUGETLB as u64 | (u64::from(v.huge.trailing_zeros()) << 26);
    }
    f
}

fn madvise(inj: &mut Injector, vpid: i32, start: u64, len: u64, advice: u64, what: &str) -> Result<()> {
    inj.call("madvise", libc::SYS_madvise, [start, len, advice, 0, 0, 0]).map(|_| ()).map_err(|e| EngineError::Proc {
        pid: vpid,
        detail: format!("set {what} on mapping {start:#x}-{:#x}: {e}", start + len),
    })
}

/// Sets the advice flags of `[start, start + len)` (part of mapping `v`) from `from` (what the
/// range has now: nothing for a fresh mapping, the parent's flags for an inherited one) to
/// `v.flags`, except locks and the flags set after the children are made ([`apply_late`]).
/// Runs before the pages are written, so `hg` takes effect as they fault in.
pub(crate) fn apply_early(inj: &mut Injector, vpid: i32, v: &VmaState, start: u64, len: u64, from: VmFlags) -> Result<()> {
    let to = v.flags;
    if !from.can_become(to) {
        return Err(EngineError::Proc {
            pid: vpid,
            detail: format!("mapping {start:#x}: flags {:?} cannot be turned into {:?}", from.names(), to.names()),
        });
    }
    let changed = |bit: u32| from.has(bit) != to.has(bit);
    if to.has(VmFlags::HUGEPAGE) && changed(VmFlags::HUGEPAGE) {
        madvise(inj, vpid, start, len, MADV_HUGEPAGE, "MADV_HUGEPAGE")?;
    }
    if to.has(VmFlags::NOHUGEPAGE) && changed(VmFlags::NOHUGEPAGE) {
        madvise(inj, vpid, start, len, MADV_NOHUGEPAGE, "MADV_NOHUGEPAGE")?;
    }
    if changed(VmFlags::DONTDUMP) {
        let a = if to.has(VmFlags::DONTDUMP) { MADV_DONTDUMP } else { MADV_DODUMP };
        madvise(inj, vpid, start, len, a, "MADV_DONTDUMP/DODUMP")?;
    }
    if changed(VmFlags::MERGEABLE) {
        let a = if to.has(VmFlags::MERGEABLE) { MADV_MERGEABLE } else { MADV_UNMERGEABLE };
        madvise(inj, vpid, start, len, a, "MADV_MERGEABLE/UNMERGEABLE (KSM)")?;
    }
    if changed(VmFlags::SEQ_READ) || changed(VmFlags::RAND_READ) {
        let a = if to.has(VmFlags::SEQ_READ) {
            MADV_SEQUENTIAL
        } else if to.has(VmFlags::RAND_READ) {
            MADV_RANDOM
        } else {
            MADV_NORMAL
        };
        madvise(inj, vpid, start, len, a, "MADV_SEQUENTIAL/RANDOM/NORMAL")?;
    }
    // Fork-affecting flags an inherited range may carry are cleared here and set late.
    if from.has(VmFlags::DONTFORK) {
        madvise(inj, vpid, start, len, MADV_DOFORK, "MADV_DOFORK")?;
    }
    if from.has(VmFlags::WIPEONFORK) {
        madvise(inj, vpid, start, len, MADV_KEEPONFORK, "MADV_KEEPONFORK")?;
    }
    Ok(())
}

/// Locks mapping `v` as it was (`mlock`, `MLOCK_ONFAULT`), once its pages are written. Root
/// restores the process, so `RLIMIT_MEMLOCK` does not stand in the way; a failure (no memory)
/// names the mapping.
pub(crate) fn apply_lock(inj: &mut Injector, vpid: i32, v: &VmaState) -> Result<()> {
    if !v.flags.has(VmFlags::LOCKED) {
        return Ok(());
    }
    let onfault = if v.flags.has(VmFlags::LOCKONFAULT) { MLOCK_ONFAULT } else { 0 };
    inj.call("mlock2", libc::SYS_mlock2, [v.start, v.end - v.start, onfault, 0, 0, 0]).map(|_| ()).map_err(|e| EngineError::Proc {
        pid: vpid,
        detail: format!("lock mapping {:#x}-{:#x} ({}) in memory as it was: {e}", v.start, v.end, v.name),
    })
}

/// The flags that change what `fork` copies, and seals: set once the process has made its
/// children at restore.
pub(crate) fn apply_late(inj: &mut Injector, vpid: i32, v: &VmaState) -> Result<()> {
    let len = v.end - v.start;
    if v.flags.has(VmFlags::DONTFORK) {
        madvise(inj, vpid, v.start, len, MADV_DONTFORK, "MADV_DONTFORK")?;
    }
    if v.flags.has(VmFlags::WIPEONFORK) {
        madvise(inj, vpid, v.start, len, MADV_WIPEONFORK, "MADV_WIPEONFORK")?;
    }
    if v.flags.has(VmFlags::SEALED) {
        inj.call("mseal", SYS_MSEAL, [v.start, len, 0, 0, 0, 0]).map_err(|e| EngineError::Proc {
            pid: vpid,
            detail: format!("seal mapping {:#x}-{:#x} ({}) again (mseal, Linux 6.10+): {e}", v.start, v.end, v.name),
        })?;
    }
    Ok(())
}

/// Address-space modes for future mappings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmModes {
    /// `mlockall(MCL_FUTURE)` is in force: new mappings are locked (`MCL_ONFAULT` too when
    /// `lock_on_fault`).
    pub lock_future: bool,
    /// With `lock_future`: locked as pages fault in.
    pub lock_on_fault: bool,
    /// `prctl(PR_SET_MEMORY_MERGE, 1)`: KSM may merge every mapping.
    pub merge_any: bool,
}

impl MmModes {
    /// Reads the modes of the stopped process `pid`, whose main thread `inj` drives, and whose
    /// mappings are `vmas`. The kernel shows `mlockall(MCL_FUTURE)` nowhere, so a one-page probe
    /// mapping is made in the process (low, in the first gap of its layout, so that only the
    /// start of smaps is read), its flags read, and unmapped again.
    pub fn save(pid: i32, inj: &mut Injector, vmas: &[VmaState]) -> Result<MmModes> {
        let ksm = std::fs::read_to_string(format!("/proc/{pid}/ksm_stat")).unwrap_or_default();
        let merge_any = ksm.lines().any(|l| l.split_once(':').is_some_and(|(k, v)| k.trim() == "ksm_merge_any" && v.trim() == "yes"));
        let hint = super::scratch_place(vmas, 0, 4096);
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;
        let probe = inj.call("mmap (probe for mlockall)", libc::SYS_mmap, [hint, 4096, libc::PROT_NONE as u64, flags, u64::MAX, 0])?;
        let names = flags_at(pid, probe);
        inj.call("munmap (probe for mlockall)", libc::SYS_munmap, [probe, 4096, 0, 0, 0, 0])?;
        let f = VmFlags::from_mnemonics(names?.iter().map(String::as_str));
        Ok(MmModes { lock_future: f.has(VmFlags::LOCKED), lock_on_fault: f.has(VmFlags::LOCKONFAULT), merge_any })
    }

    /// Sets KSM's merge-any mode in the process being restored, before its mappings are made
    /// (turning it off unmerges and clears `mg` everywhere); `inherited`: the modes of the parent
    /// it was copied from by `fork`, which passes that mode on.
    pub fn restore_merge(&self, inj: &mut Injector, vpid: i32, inherited: Option<&MmModes>) -> Result<()> {
        if self.merge_any || inherited.is_some_and(|m| m.merge_any) {
            inj.call("prctl(PR_SET_MEMORY_MERGE)", libc::SYS_prctl, [PR_SET_MEMORY_MERGE, u64::from(self.merge_any), 0, 0, 0, 0])
                .map_err(|e| EngineError::Proc { pid: vpid, detail: format!("KSM merge-any mode (PR_SET_MEMORY_MERGE): {e}") })?;
        }
        Ok(())
    }

    /// Sets `mlockall(MCL_FUTURE)` in the process being restored, once its mappings exist (so
    /// they are not locked by it); `fork` does not pass it on.
    pub fn restore_lock(&self, inj: &mut Injector, vpid: i32) -> Result<()> {
        if self.lock_future {
            let flags = MCL_FUTURE | if self.lock_on_fault { MCL_ONFAULT } else { 0 };
            inj.call("mlockall(MCL_FUTURE)", libc::SYS_mlockall, [flags, 0, 0, 0, 0, 0])
                .map_err(|e| EngineError::Proc { pid: vpid, detail: format!("mlockall(MCL_FUTURE) as it was: {e}") })?;
        }
        Ok(())
    }
}

/// Allocates the protection keys the mappings use (`pkey_alloc` gives the lowest free key, so
/// keys are taken until each needed one is held and the others given back) before any
/// `pkey_mprotect`. `inherited`: keys the process holds already (copied from its parent by
/// `fork`); those it does not need are freed.
pub(crate) fn restore_pkeys(inj: &mut Injector, vpid: i32, vmas: &[VmaState], inherited: &[u32]) -> Result<()> {
    let mut need: Vec<u32> = vmas.iter().filter(|v| pkey_settable(v)).map(|v| v.pkey).collect();
    need.sort_unstable();
    need.dedup();
    for &k in inherited.iter().filter(|k| !need.contains(k)) {
        inj.call("pkey_free", libc::SYS_pkey_free, [u64::from(k), 0, 0, 0, 0, 0])?;
    }
    let mut have: Vec<u32> = inherited.iter().copied().filter(|k| need.contains(k)).collect();
    let mut spare = Vec::new();
    while need.iter().any(|k| !have.contains(k)) {
        let k = inj.call("pkey_alloc", libc::SYS_pkey_alloc, [0, 0, 0, 0, 0, 0]).map_err(|e| EngineError::Proc {
            pid: vpid,
            detail: format!("allocate protection keys {need:?} again (pkey_alloc): {e}"),
        })? as u32;
        if need.contains(&k) {
            have.push(k);
        } else {
            spare.push(k);
        }
    }
    for k in spare {
        inj.call("pkey_free", libc::SYS_pkey_free, [u64::from(k), 0, 0, 0, 0, 0])?;
    }
    Ok(())
}

/// True when mapping `v` carries a protection key restore sets (not the default key 0, and not
/// an execute-only mapping, whose key the kernel picks).
pub(crate) fn pkey_settable(v: &VmaState) -> bool {
    v.pkey != 0 && v.prot != libc::PROT_EXEC as u32
}

/// Puts protection key `v.pkey` on `[start, start + len)` of mapping `v`.
pub(crate) fn apply_pkey(inj: &mut Injector, vpid: i32, v: &VmaState, start: u64, len: u64) -> Result<()> {
    inj.call("pkey_mprotect", libc::SYS_pkey_mprotect, [start, len, u64::from(v.prot), u64::from(v.pkey), 0, 0]).map(|_| ()).map_err(|e| {
        EngineError::Proc { pid: vpid, detail: format!("put protection key {} on mapping {start:#x}-{:#x}: {e}", v.pkey, start + len) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mnemonics_and_reachability() {
        let f = VmFlags::from_mnemonics(["rd", "wr", "dc", "hg", "lo", "lf", "sl", "xx"]);
        assert!(f.has(VmFlags::DONTFORK | VmFlags::HUGEPAGE | VmFlags::LOCKONFAULT));
        assert_eq!(f.names(), "dc hg lo lf sl");
        assert_eq!(f.as_inherited(), VmFlags(VmFlags::HUGEPAGE));
        assert!(!VmFlags(VmFlags::HUGEPAGE).can_become(VmFlags::default()), "no advice clears hg");
        assert!(VmFlags(VmFlags::HUGEPAGE).can_become(VmFlags(VmFlags::NOHUGEPAGE)));
        assert!(VmFlags::default().can_become(VmFlags(VmFlags::DONTDUMP)));
    }

    #[test]
    fn reads_own_smaps() {
        let s = read_smaps(std::process::id() as i32).unwrap();
        assert!(s.values().any(|e| e.names.iter().any(|n| n == "gd")), "the stack grows down");
        assert!(s.values().all(|e| e.kernel_page >= 4096));
    }
}
