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
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut regions = vec![PageRegion::default(); 512];
    let mut pos = start;
    while pos < end {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
            start: pos,
            end,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            category_mask: PAGE_IS_WRITTEN,
            return_mask: PAGE_IS_WRITTEN,
            ..Default::default()
        };
        let n = ioctl(pagemap, PAGEMAP_SCAN, &mut arg)? as usize;
        for r in &regions[..n.min(regions.len())] {
            match out.last_mut() {
                Some(last) if last.1 == r.start => last.1 = r.end,
                _ => out.push((r.start, r.end)),
            }
        }
        if arg.walk_end <= pos {
            return Err(io::Error::other(format!("PAGEMAP_SCAN made no progress at {pos:#x}")));
        }
        pos = arg.walk_end;
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
