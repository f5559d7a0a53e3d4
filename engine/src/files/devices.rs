//! Character devices: a checkpoint reopens a character device by its path, which is faithful only
//! for a device that keeps no state per open file. This module tells them apart, by the driver
//! the kernel names for the device's major number (`/proc/devices`) and, for the misc driver,
//! by the name of its minor (`/proc/misc`):
//!
//! - reopened by path: the memory devices (`/dev/null`, `zero`, `full`, `random`, `urandom`,
//!   `mem`, `port`) and `/dev/kmsg` opened write-only (a program logging to the kernel's log),
//!   terminals not made in the pod (virtual consoles, serial lines, `/dev/console`: pseudo
//!   terminals and `/dev/tty` are [`super::tty`]'s), `cpu/cpuid` and `cpu/msr`, and the misc
//!   devices that are only an ioctl interface (`loop-control`, `device-mapper`,
//!   `btrfs-control`, `autofs`, `kvm` (a VM's own fds are anonymous inodes, refused apart),
//!   `userfaultfd`, `vsock`, `hw_random`), and `/dev/net/tun` not attached to an interface;
//! - refused, naming the pid, the fd, the device and why: `/dev/kmsg` opened for reading (its
//!   read position in the kernel's log cannot be set again: a reopened reader would read the
//!   whole log again), a tun/tap fd attached to an interface (the interface, its queue and
//!   packets belong to that fd: a reopened fd has none, and would fail every read), and every
//!   other device (FUSE connections, input and sound devices, GPUs, watchdogs, `uinput`,
//!   `cpu_dma_latency` requests...), whose state per open file Zap cannot see or set again.
//!
//! Before, every character device was reopened by path, so such a program went on with a
//! descriptor that had silently lost its state.
use std::os::fd::OwnedFd;

use crate::sys::proc as sysproc;
use crate::Result;

/// The misc devices (`/proc/misc` names) that keep no state per open file.
const STATELESS_MISC: &[&str] = &["loop-control", "device-mapper", "btrfs-control", "autofs", "kvm", "userfaultfd", "vsock", "hw_random"];

/// Drivers (`/proc/devices` names) whose devices are reopened by path: terminals (their state
/// is the line's, not the open file's) and CPU interfaces read at offsets.
const REOPENED_DRIVERS: &[&str] = &["tty", "ttyS", "/dev/vc/0", "/dev/tty", "/dev/console", "/dev/ptmx", "cpu/cpuid", "cpu/msr"];

const MEM_MAJOR: u32 = 1;
const MISC_MAJOR: u32 = 10;
const KMSG_MINOR: u32 = 11;
const TUN_MINOR: u32 = 200;
/// `TUNGETIFF` (`_IOR('T', 210, unsigned int)`); the kernel writes a whole `struct ifreq`.
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const IFREQ_SIZE: usize = 40;

/// The names `table` (the text of `/proc/devices`' character section or of `/proc/misc`) gives
/// number `n` (a major number may carry several names).
fn names_of(table: &str, n: u32, char_section_only: bool) -> Vec<String> {
    let mut out = Vec::new();
    for line in table.lines() {
        if char_section_only && line.trim_end().ends_with(':') && !line.starts_with("Character") {
            break;
        }
        let mut f = line.split_whitespace();
        if let (Some(num), Some(name)) = (f.next(), f.next()) {
            if num.parse::<u32>().ok() == Some(n) {
                out.push(name.to_string());
            }
        }
    }
    out
}

/// Checks that fd `fd` of `pid`, character device `rdev` at `target` opened with `flags`
/// (`dup`: a duplicate of it), can be restored by reopening its path; refuses it otherwise.
pub(super) fn check(pid: i32, fd: i32, target: &str, rdev: u64, flags: u32, dup: &OwnedFd) -> Result<()> {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let readable = flags & libc::O_ACCMODE as u32 != libc::O_WRONLY as u32;
    if major == MEM_MAJOR {
        if minor == KMSG_MINOR && readable {
            let why = "kernel log opened for reading (its read position in the log cannot be set again)";
            return Err(super::unsupported(pid, fd, why, target));
        }
        return Ok(());
    }
    if major == MISC_MAJOR {
        if minor == TUN_MINOR {
            let mut ifr = [0u8; IFREQ_SIZE];
            return match sysproc::ioctl_get(dup, TUNGETIFF, &mut ifr) {
                // Not attached to an interface yet: a new open is the same.
                Err(e) if e.raw_os_error() == Some(libc::EBADFD) => Ok(()),
                Err(e) => Err(super::unsupported(pid, fd, &format!("tun/tap device whose interface cannot be read (TUNGETIFF: {e})"), target)),
                Ok(()) => {
                    let name = String::from_utf8_lossy(ifr[..16].split(|&b| b == 0).next().unwrap_or_default()).into_owned();
                    let why = format!("tun/tap device attached to interface {name} (the interface and its packets go with this fd; not supported)");
                    Err(super::unsupported(pid, fd, &why, target))
                }
            };
        }
        let misc = std::fs::read_to_string("/proc/misc").unwrap_or_default();
        let names = names_of(&misc, minor, false);
        if names.iter().any(|n| STATELESS_MISC.contains(&n.as_str())) {
            return Ok(());
        }
        let what = names.first().map_or_else(|| format!("misc device {major}:{minor}"), |n| format!("misc device {n} ({major}:{minor})"));
        return Err(super::unsupported(pid, fd, &format!("{what} whose state per open file cannot be saved"), target));
    }
    let devices = std::fs::read_to_string("/proc/devices").unwrap_or_default();
    let names = names_of(&devices, major, true);
    if names.iter().any(|n| REOPENED_DRIVERS.contains(&n.as_str())) {
        return Ok(());
    }
    let driver = if names.is_empty() { "unknown driver".to_string() } else { format!("driver {}", names.join("/")) };
    let why = format!("character device {major}:{minor} ({driver}) whose state per open file cannot be saved");
    Err(super::unsupported(pid, fd, &why, target))
}

#[cfg(test)]
mod tests {
    use super::names_of;

    #[test]
    fn names_come_from_the_character_section_only() {
        let t = "Character devices:\n  1 mem\n  4 /dev/vc/0\n  4 tty\n 10 misc\n\nBlock devices:\n  7 loop\n 10 blk\n";
        assert_eq!(names_of(t, 4, true), ["/dev/vc/0", "tty"]);
        assert_eq!(names_of(t, 10, true), ["misc"]);
        assert!(names_of(t, 7, true).is_empty());
        assert_eq!(names_of("200 tun\n237 loop-control\n", 237, false), ["loop-control"]);
    }
}
