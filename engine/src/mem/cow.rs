//! Memory shared copy-on-write after `fork`: kept shared across a checkpoint.
//!
//! ## Checkpoint
//! A child's private mapping can hold the very physical pages its parent holds at the same
//! addresses (neither wrote them since the fork). For each private mapping of a child whose
//! parent is saved with it, [`inheritable`] checks that the parent's mappings cover it with the
//! same origin (anonymous with anonymous; the same file at the same offsets), the same growth
//! direction and reservation, and flags `madvise` can turn into the child's; then
//! [`same_pages`] compares the two processes' `/proc/PID/pagemap` entries (root reads page frame
//! numbers): a page present in both with the same frame, or swapped out to the same swap slot,
//! is the same page. Those pages are not stored for the child; the mapping records them as runs
//! ([`VmaState::inherited`]). A child's image never holds pages inside those runs (an incremental
//! checkpoint copies again, even unwritten, a page that was inherited at its parent checkpoint
//! and is not any more: it is a hole in the parent's image).
//!
//! ## Restore
//! The parent's memory is restored (mappings, pages, flags) before it makes the children that
//! inherit pages ([`crate::group`]); its `fork` flags (`dc`, `wf`) and seals are set only after
//! that, so each child gets what it got originally. The child then keeps the ranges of its
//! mappings that inherit pages ([`keep_ranges`], everything else of its parent's address space
//! is unmapped), sets their protection, key and flags as they were ([`adopt`]), empties the
//! pages it did not share ([`clear_kept`], `MADV_DONTNEED`: anonymous pages become zero, private
//! file pages the file's again) and writes only its own saved pages.
use super::flags::{self, VmFlags};
use super::{Backing, VmaState};
use crate::inject::Injector;
use crate::{EngineError, Result};

const PAGE: u64 = 4096;
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;
const PM_GUARD: u64 = 1 << 58;
const PM_UFFD_WP: u64 = 1 << 57;
const PM_FRAME: u64 = (1 << 55) - 1;
const MADV_DONTNEED: u64 = 4;
const MADV_GUARD_REMOVE: u64 = 103;

/// The parts of the parent's mappings `pvmas` (sorted) over `[start, end)`: (mapping, from, to).
fn cover(pvmas: &[VmaState], start: u64, end: u64) -> Vec<(&VmaState, u64, u64)> {
    let first = pvmas.partition_point(|p| p.end <= start);
    pvmas[first..].iter().take_while(|p| p.start < end).map(|p| (p, p.start.max(start), p.end.min(end))).collect()
}

/// True when a child's mapping `v` can inherit pages from its parent's mappings `pvmas` (sorted)
/// at restore: the parent's mappings cover it without a gap, with the same origin, growth and
/// reservation, and with flags the child's can be reached from.
pub(crate) fn inheritable(v: &VmaState, pvmas: &[VmaState]) -> bool {
    if v.shared || !matches!(v.backing, Backing::Anon | Backing::File { .. }) {
        return false;
    }
    let parts = cover(pvmas, v.start, v.end);
    let mut pos = v.start;
    for (p, from, to) in &parts {
        if *from != pos || p.shared || p.huge != v.huge || p.growsdown != v.growsdown {
            return false;
        }
        if p.flags.has(VmFlags::NORESERVE) != v.flags.has(VmFlags::NORESERVE) || !p.flags.as_inherited().can_become(v.flags) {
            return false;
        }
        let same_origin = match (&p.backing, &v.backing) {
            (Backing::Anon, Backing::Anon) => true,
            (Backing::File { path: a, offset: ao }, Backing::File { path: b, offset: bo }) => {
                a == b && ao.wrapping_add(from - p.start) == bo.wrapping_add(from - v.start)
            }
            _ => false,
        };
        if !same_origin {
            return false;
        }
        pos = *to;
    }
    pos == v.end
}

/// A pagemap entry's page identity for sharing: the frame of a present anonymous page, or the
/// slot of a page swapped out to a real swap device; `None` for anything else (absent, file
/// pages, markers, unreadable frames).
fn identity(e: u64) -> Option<u64> {
    let frame = e & PM_FRAME;
    if e & PM_PRESENT != 0 {
        (e & PM_FILE == 0 && frame != 0).then_some(frame)
    } else if e & PM_SWAPPED != 0 {
        // Swap type in bits 0-4; the highest types are the kernel's markers, not devices.
        (e & (PM_GUARD | PM_UFFD_WP) == 0 && frame & 0x1f < 16).then_some(frame | 1 << 60)
    } else {
        None
    }
}

/// Runs of pages of the child's mapping `v` that are the same pages as the parent's: `child` and
/// `parent` are the two processes' pagemap entries over `[v.start, v.end)`.
pub(crate) fn same_pages(v: &VmaState, child: &[u64], parent: &[u64]) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (i, (&c, &p)) in child.iter().zip(parent).enumerate() {
        if identity(c).is_some() && identity(c) == identity(p) {
            let a = v.start + i as u64 * PAGE;
            match runs.last_mut() {
                Some(r) if r.1 == a => r.1 = a + PAGE,
                _ => runs.push((a, a + PAGE)),
            }
        }
    }
    runs
}

/// The address ranges a restored child keeps from its parent's address space: its mappings that
/// inherit pages.
pub fn keep_ranges(vmas: &[VmaState]) -> Vec<(u64, u64)> {
    vmas.iter().filter(|v| !v.inherited.is_empty()).map(|v| (v.start, v.end)).collect()
}

/// The parts of `[start, end)` outside the sorted runs `runs`.
pub(crate) fn outside(runs: &[(u64, u64)], start: u64, end: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut pos = start;
    for &(a, b) in runs {
        if b <= pos || a >= end {
            continue;
        }
        if a > pos {
            out.push((pos, a));
        }
        pos = pos.max(b);
    }
    if pos < end {
        out.push((pos, end));
    }
    out
}

fn no_parent(vpid: i32, v: &VmaState) -> EngineError {
    EngineError::Proc {
        pid: vpid,
        detail: format!("mapping {:#x}-{:#x} ({}) inherits pages from a parent that is not restored with it", v.start, v.end, v.name),
    }
}

/// Takes over the inherited mapping `v` (restore): the parent's mappings under it, copied by
/// `fork`, get the child's protection, protection key and flags.
pub(crate) fn adopt(inj: &mut Injector, vpid: i32, v: &VmaState, parent: Option<&[VmaState]>) -> Result<()> {
    let pvmas = parent.ok_or_else(|| no_parent(vpid, v))?;
    if !inheritable(v, pvmas) {
        return Err(EngineError::Proc {
            pid: vpid,
            detail: format!("mapping {:#x}-{:#x} ({}) inherits pages its parent's saved mappings do not hold", v.start, v.end, v.name),
        });
    }
    for (p, from, to) in cover(pvmas, v.start, v.end) {
        let len = to - from;
        if p.pkey != v.pkey && (flags::pkey_settable(v) || flags::pkey_settable(p)) && v.prot != libc::PROT_EXEC as u32 {
            flags::apply_pkey(inj, vpid, &VmaState { pkey: if flags::pkey_settable(v) { v.pkey } else { 0 }, ..v.clone() }, from, len)?;
        } else if p.prot != v.prot {
            inj.call("mprotect inherited", libc::SYS_mprotect, [from, len, u64::from(v.prot), 0, 0, 0]).map_err(|e| EngineError::Proc {
                pid: vpid,
                detail: format!("protect inherited mapping {from:#x}-{to:#x} as it was: {e}"),
            })?;
        }
        flags::apply_early(inj, vpid, v, from, len, p.flags.as_inherited())?;
    }
    Ok(())
}

/// Empties, in the inherited mappings of the child being restored, the pages it did not share
/// with its parent (their saved content, if any, is written next), and removes guard pages it
/// inherited (its own are installed with the others).
pub(crate) fn clear_kept(inj: &mut Injector, vpid: i32, vmas: &[VmaState], parent: Option<&[VmaState]>) -> Result<()> {
    for v in vmas.iter().filter(|v| !v.inherited.is_empty()) {
        let pvmas = parent.ok_or_else(|| no_parent(vpid, v))?;
        if cover(pvmas, v.start, v.end).iter().any(|(p, _, _)| p.guards.iter().any(|&(a, b)| a < v.end && b > v.start)) {
            inj.call("madvise(MADV_GUARD_REMOVE)", libc::SYS_madvise, [v.start, v.end - v.start, MADV_GUARD_REMOVE, 0, 0, 0])?;
        }
        for (a, b) in outside(&v.inherited, v.start, v.end) {
            inj.call("madvise(MADV_DONTNEED)", libc::SYS_madvise, [a, b - a, MADV_DONTNEED, 0, 0, 0]).map_err(|e| EngineError::Proc {
                pid: vpid,
                detail: format!("empty the pages of inherited mapping {a:#x}-{b:#x} that were not shared: {e}"),
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anon(start: u64, end: u64) -> VmaState {
        VmaState {
            start,
            end,
            prot: 3,
            shared: false,
            growsdown: false,
            backing: Backing::Anon,
            name: String::new(),
            image: None,
            flags: VmFlags::default(),
            pkey: 0,
            huge: 0,
            inherited: Vec::new(),
            guards: Vec::new(),
            uffd_wp: false,
        }
    }

    #[test]
    fn inheritable_needs_a_gapless_cover_of_the_same_origin() {
        let parent = vec![anon(0x1000, 0x3000), anon(0x3000, 0x5000), anon(0x6000, 0x8000)];
        assert!(inheritable(&anon(0x2000, 0x5000), &parent));
        assert!(!inheritable(&anon(0x4000, 0x7000), &parent), "hole at 0x5000");
        let mut file = anon(0x1000, 0x2000);
        file.backing = Backing::File { path: "/x".into(), offset: 0 };
        assert!(!inheritable(&file, &parent));
        let mut hg = parent.clone();
        hg[0].flags = VmFlags(VmFlags::HUGEPAGE);
        assert!(!inheritable(&anon(0x1000, 0x2000), &hg), "hg cannot be cleared");
        let mut nh = anon(0x1000, 0x2000);
        nh.flags = VmFlags(VmFlags::NOHUGEPAGE);
        assert!(inheritable(&nh, &hg));
    }

    #[test]
    fn same_pages_compares_frames_and_swap_slots() {
        let v = anon(0x10000, 0x16000);
        let c = [PM_PRESENT | 7, PM_PRESENT | 8, PM_PRESENT | PM_FILE | 9, 0, PM_SWAPPED | 0x41, PM_SWAPPED | PM_GUARD | 0x9f];
        let p = [PM_PRESENT | 7, PM_PRESENT | 5, PM_PRESENT | PM_FILE | 9, 0, PM_SWAPPED | 0x41, PM_SWAPPED | PM_GUARD | 0x9f];
        assert_eq!(same_pages(&v, &c, &p), vec![(0x10000, 0x11000), (0x14000, 0x15000)]);
        assert!(same_pages(&v, &[PM_PRESENT; 6], &[PM_PRESENT; 6]).is_empty(), "frames hidden: nothing is the same");
    }

    #[test]
    fn outside_runs() {
        assert_eq!(outside(&[(0x2000, 0x3000), (0x5000, 0x6000)], 0x1000, 0x6000), vec![(0x1000, 0x2000), (0x3000, 0x5000)]);
        assert_eq!(outside(&[], 0x1000, 0x2000), vec![(0x1000, 0x2000)]);
    }
}
