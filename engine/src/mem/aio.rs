//! AIO contexts (`io_setup`): the completion ring mapped in the process (`/[aio] (deleted)`), whose
//! address is the context id the program holds, and the kernel's position in it.
//!
//! ## Checkpoint
//! The ring's pages are saved whole (header, head, tail, completed events not yet reaped). Each
//! ring mapping is checked to be a context of the process itself ([`check`]: an injected
//! `io_getevents` for no event answers 0 for a live context of the caller). A child made by
//! `fork` keeps a copy of its parent's ring mapping without the context: such a copy is saved
//! as inherited from the parent ([`check_copy`]: the parent, saved with it, has that very ring
//! at the same place), and restored by `fork` from the restored parent (a ring file cannot be
//! opened again through `/proc/PID/map_files`); a copy whose owner is not saved with it is
//! refused.
//!
//! ## Restore
//! [`create`]: `io_setup` with a size that gives a ring of the saved length (the kernel makes
//! room for `2 × max(n, 4 × CPUs) + 2` events, rounded up to whole pages), then `mremap` moves
//! the ring to its saved address; the kernel follows the move, so the context id is the saved
//! one. [`restore_ring`], once the pages are written: the kernel's own tail must come back where
//! the saved one was, with as many completions outstanding as events wait in the ring, so
//! writes of one byte to `/dev/null` (complete at submission) are submitted and reaped until the
//! kernel's position is the saved head, and as many more as there were unreaped events are
//! submitted and left; then the saved ring is written over (events, head, tail) with the new
//! context's index in the ring's `id` field, which the kernel reads to find the context.
//!
//! Limit: requests still in flight at checkpoint time (an `IOCB_CMD_POLL` waiting for its
//! descriptor, direct I/O under way) cannot be seen from user space; they are not saved, and
//! their completions never come after a restore.
use zap_store::{materialize, Image, ImageStore};

use super::{Backing, VmaState};
use crate::inject::Injector;
use crate::{EngineError, Result};

const AIO_RING_MAGIC: u32 = 0xa10a_10a1;
/// `struct aio_ring` (id, nr, head, tail, magic, compat and incompat features, header length).
const HEADER: u64 = 32;
/// `struct io_event`.
const EVENT: u64 = 32;
/// `struct iocb`.
const IOCB: u64 = 64;
const IOCB_CMD_PWRITE: u16 = 1;
/// Requests submitted (and reaped) per injected call.
const BATCH: u64 = 256;

fn field(ring: &[u8], i: usize) -> u32 {
    u32::from_ne_bytes(ring[i * 4..i * 4 + 4].try_into().expect("4 bytes"))
}

/// Number of events a ring mapping of `len` bytes holds.
fn events_in(len: u64) -> u64 {
    (len - HEADER) / EVENT
}

fn err(vpid: i32, v: &VmaState, detail: impl std::fmt::Display) -> EngineError {
    EngineError::Proc { pid: vpid, detail: format!("AIO ring {:#x}-{:#x}: {detail}", v.start, v.end) }
}

/// Checks that each AIO ring mapping of the stopped process `pid` (main thread driven by `inj`)
/// is a context of its own, with a sane header.
pub fn check(pid: i32, inj: &mut Injector, vmas: &mut [VmaState]) -> Result<()> {
    for v in vmas.iter_mut().filter(|v| matches!(v.backing, Backing::Aio { .. })) {
        let header = inj.read_mem(v.start, HEADER as usize)?;
        if field(&header, 4) != AIO_RING_MAGIC || u64::from(field(&header, 7)) != HEADER || u64::from(field(&header, 1)) != events_in(v.end - v.start)
        {
            return Err(err(pid, v, "not a ring the kernel made (bad header)"));
        }
        let zero_timeout = inj.scratch(4096)?;
        inj.write_mem(zero_timeout, &[0u8; 16])?;
        let rc = inj.syscall(libc::SYS_io_getevents, [v.start, 0, 0, 0, zero_timeout, 0])?;
        if let Backing::Aio { own, .. } = &mut v.backing {
            *own = rc == 0;
        }
    }
    Ok(())
}

/// Checks that the ring copy `v` (a mapping of a ring whose context the process does not own)
/// is its parent's ring at the same place (`parent`: the parent's mappings, saved with it).
pub(crate) fn check_copy(pid: i32, v: &VmaState, parent: Option<&[VmaState]>) -> Result<()> {
    let Backing::Aio { ino, .. } = v.backing else { return Ok(()) };
    let same = |p: &VmaState| p.start == v.start && p.end == v.end && p.backing == Backing::Aio { ino, own: true };
    if parent.is_some_and(|p| p.iter().any(same)) {
        Ok(())
    } else {
        Err(err(pid, v, "a ring whose context this process does not own, and not its parent's (saved with it) at the same place: not supported"))
    }
}

/// Creates the context of ring `v` again in the process being restored, at the saved address.
pub(crate) fn create(inj: &mut Injector, vpid: i32, v: &VmaState) -> Result<()> {
    let len = v.end - v.start;
    let nr = events_in(len);
    if nr < 4 {
        return Err(err(vpid, v, "too small to be a ring"));
    }
    let ctxp = inj.scratch(4096)?;
    inj.write_mem(ctxp, &0u64.to_ne_bytes())?;
    inj.call("io_setup", libc::SYS_io_setup, [(nr - 2) / 2, ctxp, 0, 0, 0, 0]).map_err(|e| err(vpid, v, format_args!("io_setup: {e}")))?;
    let ctx = u64::from_ne_bytes(inj.read_mem(ctxp, 8)?.try_into().expect("8 bytes"));
    let made = u64::from(field(&inj.read_mem(ctx, HEADER as usize)?, 1));
    if made != nr {
        // This machine sizes rings differently (more CPUs): the saved one cannot come back.
        inj.call("io_destroy", libc::SYS_io_destroy, [ctx, 0, 0, 0, 0, 0])?;
        return Err(err(vpid, v, format_args!("io_setup here makes a ring of {made} events, the saved one had {nr}")));
    }
    if ctx != v.start {
        let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
        inj.call("mremap AIO ring", libc::SYS_mremap, [ctx, len, len, flags, v.start, 0])
            .map_err(|e| err(vpid, v, format_args!("move the new ring from {ctx:#x} to its saved address: {e}")))?;
    }
    Ok(())
}

/// Brings the kernel's position in ring `v` (created by [`create`]) to the saved one and writes
/// the saved ring back (see the module doc).
pub(crate) fn restore_ring<S: ImageStore>(store: &S, inj: &mut Injector, vpid: i32, v: &VmaState, images: &[Image]) -> Result<()> {
    let len = v.end - v.start;
    let mut saved = vec![0u8; len as usize];
    if let Some(name) = &v.image {
        let img = images.iter().find(|i| &i.name == name).ok_or_else(|| err(vpid, v, format_args!("checkpoint lacks image {name}")))?;
        materialize(store, &img.extents, v.start, &mut saved)?;
    }
    let nr = events_in(len);
    let (head, tail) = (u64::from(field(&saved, 2)), u64::from(field(&saved, 3)));
    if field(&saved, 4) != AIO_RING_MAGIC || u64::from(field(&saved, 1)) != nr || head >= nr || tail >= nr {
        return Err(err(vpid, v, format_args!("saved ring is not sane (head {head}, tail {tail}, {nr} events)")));
    }
    let pending = (tail + nr - head) % nr;
    let new_id = field(&inj.read_mem(v.start, HEADER as usize)?, 0);
    if head != 0 || pending != 0 {
        advance(inj, vpid, v, head, pending)?;
    }
    saved[0..4].copy_from_slice(&new_id.to_ne_bytes());
    inj.write_mem(v.start, &saved)
}

/// Submits `head` one-byte writes to `/dev/null` and reaps them, then submits `pending` more.
fn advance(inj: &mut Injector, vpid: i32, v: &VmaState, head: u64, pending: u64) -> Result<()> {
    let scratch = inj.put_cstr(b"/dev/null")?;
    let fd = inj.call("open /dev/null", libc::SYS_open, [scratch, (libc::O_WRONLY | libc::O_CLOEXEC) as u64, 0, 0, 0, 0])?;
    let result = (|| {
        // Scratch: one iocb, then BATCH pointers to it, then room for BATCH events.
        let area = inj.scratch(IOCB + 8 * BATCH + EVENT * BATCH + 64)?;
        let (iocb, ptrs, events, byte) = (area, area + IOCB, area + IOCB + 8 * BATCH, area + IOCB + 8 * BATCH + EVENT * BATCH);
        let mut cb = [0u8; IOCB as usize];
        cb[16..18].copy_from_slice(&IOCB_CMD_PWRITE.to_ne_bytes());
        cb[20..24].copy_from_slice(&(fd as u32).to_ne_bytes());
        cb[24..32].copy_from_slice(&byte.to_ne_bytes());
        cb[32..40].copy_from_slice(&1u64.to_ne_bytes());
        inj.write_mem(iocb, &cb)?;
        inj.write_mem(ptrs, &iocb.to_ne_bytes().repeat(BATCH as usize))?;
        let submit = |inj: &mut Injector, n: u64| -> Result<u64> {
            inj.call("io_submit", libc::SYS_io_submit, [v.start, n, ptrs, 0, 0, 0])
                .map_err(|e| err(vpid, v, format_args!("advance the kernel's tail (io_submit): {e}")))
        };
        let mut reaped = 0;
        while reaped < head {
            let got = submit(inj, (head - reaped).min(BATCH))?;
            let back = inj.call("io_getevents", libc::SYS_io_getevents, [v.start, got, got, events, 0, 0])?;
            if back != got {
                return Err(err(vpid, v, format_args!("{got} requests submitted, {back} reaped")));
            }
            reaped += got;
        }
        let mut left = pending;
        while left > 0 {
            let got = submit(inj, left.min(BATCH))?;
            if got == 0 {
                return Err(err(vpid, v, "the kernel takes no more requests"));
            }
            left -= got;
        }
        Ok(())
    })();
    inj.call("close /dev/null", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
    result
}
