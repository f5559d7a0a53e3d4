//! Userfaultfd write-protection in async mode and the `PAGEMAP_SCAN` ioctl (Linux 6.7+), with
//! the kernel structs defined here (Debian's headers predate them), and the soft-dirty probe.
//!
//! A userfaultfd belongs to the mm of the process that created it; its ioctls act on that mm
//! whoever calls them, so Zap creates it in the target (an injected syscall), takes a duplicate
//! with `pidfd_getfd` and registers and write-protects from outside.
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const UFFD_API: u64 = 0xAA;
/// `_IOWR(0xAA, 0x3F, struct uffdio_api)`.
const UFFDIO_API: u64 = 0xC018_AA3F;
/// `_IOWR(0xAA, 0x00, struct uffdio_register)`.
const UFFDIO_REGISTER: u64 = 0xC020_AA00;
/// `_IOWR(0xAA, 0x06, struct uffdio_writeprotect)`.
const UFFDIO_WRITEPROTECT: u64 = 0xC018_AA06;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
/// Write-protect faults resolve themselves; the kernel only records that the page was written.
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
/// Write-protecting a range also marks its not-yet-populated pages.
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: u64 = 0xC060_6610;
/// Write-protect the pages that match (re-arms the tracking).
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// Fail instead of scanning a range without async write-protection.
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
/// Page category: written since it was last write-protected.
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
/// Page category: present in memory.
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
/// Page category: a guard page (`MADV_GUARD_INSTALL`; Linux 6.15+, older kernels refuse it).
pub const PAGE_IS_GUARD: u64 = 1 << 8;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioWriteprotect {
    start: u64,
    len: u64,
    mode: u64,
}

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

fn ioctl<T>(fd: &impl AsRawFd, req: u64, arg: &mut T) -> io::Result<i64> {
    // SAFETY: `arg` is a valid, correctly sized struct for `req` (each caller pairs them).
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as *mut T) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(i64::from(rc))
}

/// Enables the API on a fresh userfaultfd with `features`.
pub fn api(uffd: &OwnedFd, features: u64) -> io::Result<()> {
    let mut a = UffdioApi { api: UFFD_API, features, ioctls: 0 };
    ioctl(uffd, UFFDIO_API, &mut a)?;
    if a.features & features != features {
        return Err(io::Error::other(format!("userfaultfd features {features:#x} not all granted ({:#x})", a.features)));
    }
    Ok(())
}

/// Registers `[start, start+len)` for write-protect tracking.
pub fn register_wp(uffd: &OwnedFd, start: u64, len: u64) -> io::Result<()> {
    let mut r = UffdioRegister { start, len, mode: UFFDIO_REGISTER_MODE_WP, ioctls: 0 };
    ioctl(uffd, UFFDIO_REGISTER, &mut r).map(|_| ())
}

/// Write-protects `[start, start+len)` (and, with WP_UNPOPULATED, its empty pages).
pub fn write_protect(uffd: &OwnedFd, start: u64, len: u64) -> io::Result<()> {
    let mut w = UffdioWriteprotect { start, len, mode: UFFDIO_WRITEPROTECT_MODE_WP };
    ioctl(uffd, UFFDIO_WRITEPROTECT, &mut w).map(|_| ())
}

/// The written ranges of `[start, end)` in the process whose pagemap is `pagemap`, write-
/// protecting them again in the same walk.
pub fn scan_written(pagemap: &std::fs::File, start: u64, end: u64) -> io::Result<Vec<(u64, u64)>> {
    scan(pagemap, start, end, |pos, end| PmScanArg {
        flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
        start: pos,
        end,
        category_mask: PAGE_IS_WRITTEN,
        return_mask: PAGE_IS_WRITTEN,
        ..Default::default()
    })
}

/// The ranges of `[start, end)` whose pages are not present (never populated, emptied, swapped
/// out, or markers: write-protection or guard) in the process whose pagemap is `pagemap`, in one
/// walk of its page tables that copies out only those ranges; nothing is changed.
pub fn scan_not_present(pagemap: &std::fs::File, start: u64, end: u64) -> io::Result<Vec<(u64, u64)>> {
    scan(pagemap, start, end, |pos, end| PmScanArg {
        start: pos,
        end,
        category_inverted: PAGE_IS_PRESENT,
        category_mask: PAGE_IS_PRESENT,
        return_mask: PAGE_IS_PRESENT,
        ..Default::default()
    })
}

/// The guard pages of `[start, end)` (see [`scan_not_present`]); an error where the kernel's
/// `PAGEMAP_SCAN` does not know the category.
pub fn scan_guards(pagemap: &std::fs::File, start: u64, end: u64) -> io::Result<Vec<(u64, u64)>> {
    scan(pagemap, start, end, |pos, end| PmScanArg { start: pos, end, category_mask: PAGE_IS_GUARD, return_mask: PAGE_IS_GUARD, ..Default::default() })
}

/// One `PAGEMAP_SCAN` walk of `[start, end)`, in as many calls as it takes, with the request
/// `arg(pos, end)` makes (its size and output vector are filled in here); the matching ranges,
/// joined where they touch.
fn scan(pagemap: &std::fs::File, start: u64, end: u64, arg: impl Fn(u64, u64) -> PmScanArg) -> io::Result<Vec<(u64, u64)>> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut regions = vec![PageRegion::default(); 512];
    let mut pos = start;
    while pos < end {
        let mut a = arg(pos, end);
        a.size = std::mem::size_of::<PmScanArg>() as u64;
        a.vec = regions.as_mut_ptr() as u64;
        a.vec_len = regions.len() as u64;
        let n = ioctl(pagemap, PAGEMAP_SCAN, &mut a)? as usize;
        for r in &regions[..n.min(regions.len())] {
            match out.last_mut() {
                Some(last) if last.1 == r.start => last.1 = r.end,
                _ => out.push((r.start, r.end)),
            }
        }
        if a.walk_end <= pos {
            return Err(io::Error::other(format!("PAGEMAP_SCAN made no progress at {pos:#x}")));
        }
        pos = a.walk_end;
    }
    Ok(out)
}

/// Whether this kernel has async write-protect userfaultfd and PAGEMAP_SCAN: tried on a
/// userfaultfd of our own and our own pagemap. `Err` says what is missing.
pub fn probe_uffd_wp() -> Result<(), String> {
    // SAFETY: userfaultfd takes flags only.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if fd < 0 {
        return Err(format!("userfaultfd: {}", io::Error::last_os_error()));
    }
    // SAFETY: the kernel just returned this fd.
    let uffd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    api(&uffd, UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED)
        .map_err(|e| format!("userfaultfd WP_ASYNC + WP_UNPOPULATED (Linux 6.7+): {e}"))?;
    let pm = std::fs::File::open("/proc/self/pagemap").map_err(|e| format!("open /proc/self/pagemap: {e}"))?;
    let mut arg = PmScanArg { size: std::mem::size_of::<PmScanArg>() as u64, ..Default::default() };
    ioctl(&pm, PAGEMAP_SCAN, &mut arg).map_err(|e| format!("PAGEMAP_SCAN ioctl (Linux 6.7+): {e}"))?;
    Ok(())
}

/// Whether this kernel has soft-dirty bits (CONFIG_MEM_SOFT_DIRTY): a page of ours is written
/// after `clear_refs` 4 and must then show bit 55 in our pagemap (without the option,
/// `clear_refs` accepts 4 and does nothing, and the bit never shows). `Err` says what is missing.
pub fn probe_soft_dirty() -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    std::fs::write("/proc/self/clear_refs", "4").map_err(|e| format!("soft-dirty bits: write /proc/self/clear_refs: {e}"))?;
    let mut page = vec![0u8; 8192];
    let addr = (page.as_mut_ptr() as u64 + 4095) & !4095;
    // SAFETY: `addr` lies inside `page` (8 KiB, so one whole page is in it); a volatile write
    // makes sure the store reaches memory.
    unsafe { std::ptr::write_volatile(addr as *mut u8, 1) };
    let pm = std::fs::File::open("/proc/self/pagemap").map_err(|e| format!("open /proc/self/pagemap: {e}"))?;
    let mut e = [0u8; 8];
    pm.read_exact_at(&mut e, addr / 4096 * 8).map_err(|e| format!("read /proc/self/pagemap: {e}"))?;
    drop(page);
    if u64::from_le_bytes(e) & (1 << 55) == 0 {
        return Err("soft-dirty bits: the kernel lacks CONFIG_MEM_SOFT_DIRTY (a written page shows no soft-dirty bit)".into());
    }
    Ok(())
}

/// `_IOWR(0xAA, 0x03, struct uffdio_copy)`.
const UFFDIO_COPY: u64 = 0xC028_AA03;
/// `_IOWR(0xAA, 0x04, struct uffdio_zeropage)`.
const UFFDIO_ZEROPAGE: u64 = 0xC020_AA04;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioZeropage {
    start: u64,
    len: u64,
    mode: u64,
    zeropage: i64,
}

/// Registers `[start, start+len)` in missing mode: a fault on a page that is not present waits
/// for whoever reads the userfaultfd to fill it.
pub fn register_missing(uffd: &OwnedFd, start: u64, len: u64) -> io::Result<()> {
    let mut r = UffdioRegister { start, len, mode: UFFDIO_REGISTER_MODE_MISSING, ioctls: 0 };
    ioctl(uffd, UFFDIO_REGISTER, &mut r).map(|_| ())
}

/// Fills missing pages at `dst` with `src` (page multiple) and wakes the threads waiting on
/// them. `Ok(false)` when some page there is present already (EEXIST: filled before, nothing
/// to do); an error of kind ESRCH when the process is gone.
pub fn copy(uffd: &OwnedFd, dst: u64, src: &[u8]) -> io::Result<bool> {
    let mut c = UffdioCopy { dst, src: src.as_ptr() as u64, len: src.len() as u64, mode: 0, copy: 0 };
    match ioctl(uffd, UFFDIO_COPY, &mut c) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Maps the zero page over the missing pages of `[start, start+len)` and wakes their waiters.
pub fn zeropage(uffd: &OwnedFd, start: u64, len: u64) -> io::Result<bool> {
    let mut z = UffdioZeropage { start, len, mode: 0, zeropage: 0 };
    match ioctl(uffd, UFFDIO_ZEROPAGE, &mut z) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// `_IOR(0xAA, 0x02, struct uffdio_range)`.
const UFFDIO_WAKE: u64 = 0x8010_AA02;
const UFFD_EVENT_FORK: u8 = 0x13;
const UFFD_EVENT_REMAP: u8 = 0x14;
/// Report forks: the child's registered mappings get a userfaultfd of their own, handed over.
pub const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
/// Report `mremap` of registered mappings.
pub const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;

/// Wakes the threads waiting on `[start, start+len)`.
pub fn wake(uffd: &OwnedFd, start: u64, len: u64) -> io::Result<()> {
    let mut r = [start, len];
    ioctl(uffd, UFFDIO_WAKE, &mut r).map(|_| ())
}

/// What a userfaultfd reports.
#[derive(Debug)]
pub enum Event {
    /// A thread waits for the page at this address.
    Fault(u64),
    /// The process forked; the child's registered mappings are served through this descriptor.
    Fork(OwnedFd),
    /// A registered range moved.
    Remap {
        /// Old start.
        from: u64,
        /// New start.
        to: u64,
        /// Length.
        len: u64,
    },
}

/// Waits up to `timeout_ms` for events (empty on timeout). An error of kind ESRCH when the
/// process is gone.
pub fn events(uffd: &OwnedFd, timeout_ms: i32) -> io::Result<Vec<Event>> {
    let mut pfd = libc::pollfd { fd: uffd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd on our stack.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted { Ok(Vec::new()) } else { Err(e) };
    }
    if n == 0 {
        return Ok(Vec::new());
    }
    if pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    let mut buf = [0u8; 32 * 64];
    // SAFETY: reading into a buffer of ours of the given length; the fd is non-blocking.
    let got = unsafe { libc::read(uffd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if got < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::EAGAIN) { Ok(Vec::new()) } else { Err(e) };
    }
    let word = |m: &[u8], at: usize| u64::from_ne_bytes(m[at..at + 8].try_into().expect("8 bytes"));
    Ok(buf[..got as usize]
        .chunks_exact(32)
        .filter_map(|m| match m[0] {
            UFFD_EVENT_PAGEFAULT => Some(Event::Fault(word(m, 16))),
            UFFD_EVENT_FORK => {
                let fd = u32::from_ne_bytes(m[8..12].try_into().expect("4 bytes")) as i32;
                // SAFETY: the kernel installed this descriptor in our table for us to own.
                Some(Event::Fork(unsafe { OwnedFd::from_raw_fd(fd) }))
            }
            UFFD_EVENT_REMAP => Some(Event::Remap { from: word(m, 8), to: word(m, 16), len: word(m, 24) }),
            _ => None,
        })
        .collect())
}
