//! The mm's attributes: its boundaries and executable (`PR_SET_MM_MAP`) and its flags: THP
//! disable, memory-deny-write-execute, membarrier registrations, KSM merge-any and the dumpable
//! flag.
//!
//! Membarrier registrations are read with `MEMBARRIER_CMD_GET_REGISTRATIONS` (Linux 6.3+); on
//! older kernels the private expedited ones are probed by issuing their commands (EPERM means not
//! registered) and the global expedited one cannot be told, so it is not restored there.
use serde::{Deserialize, Serialize};

use super::{errno_text, pr, read};
use crate::inject::Injector;
use crate::{EngineError, Result};

/// The fields of `struct prctl_mm_map`, plus the executable's path.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmBounds {
    /// start_code, end_code, start_data, end_data, start_brk, brk, start_stack, arg_start,
    /// arg_end, env_start, env_end, in that order.
    pub fields: [u64; 11],
    /// Auxiliary vector words.
    pub auxv: Vec<u64>,
    /// Path of the executable.
    pub exe: String,
}

impl MmBounds {
    /// Reads the boundaries of the stopped process `pid` (`inj` drives its main thread: brk).
    pub fn save(pid: i32, inj: &mut Injector) -> Result<MmBounds> {
        let bad = |what: &str| EngineError::Proc { pid, detail: format!("cannot parse {what}") };
        // /proc/PID/stat: fields after the ")" that ends the command name.
        let stat = read(pid, "stat")?;
        let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| bad("stat"))?;
        let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
        // Field n of stat (1-based) is f[n - 3] here.
        let at = |n: usize| f.get(n - 3).copied().ok_or_else(|| bad("stat field"));
        let brk = inj.call("brk(0)", libc::SYS_brk, [0; 6])?;
        let fields = [at(26)?, at(27)?, at(45)?, at(46)?, at(47)?, brk, at(28)?, at(48)?, at(49)?, at(50)?, at(51)?];
        let auxv_path = format!("/proc/{pid}/auxv");
        let auxv_bytes = std::fs::read(&auxv_path).map_err(|e| EngineError::io("read", auxv_path.as_ref(), e))?;
        let auxv = auxv_bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8"))).collect();
        let exe_path = format!("/proc/{pid}/exe");
        let exe = std::fs::read_link(&exe_path)
            .map(|p| p.to_string_lossy().into_owned())
            .map_err(|e| EngineError::io("readlink", exe_path.as_ref(), e))?;
        Ok(MmBounds { fields, auxv, exe })
    }

    /// Sets the boundaries, auxiliary vector and executable link with `PR_SET_MM_MAP` in the
    /// process `inj` drives (host pid `host_pid`). An executable deleted since it was started (a
    /// program upgraded while it runs) is linked to the copy of it that its mappings were
    /// restored from; when that cannot be (its code is not mapped from it), the link is left
    /// as it is and a warning says so.
    pub fn restore(&self, inj: &mut Injector, host_pid: i32, warnings: &mut Vec<String>) -> Result<()> {
        let path = inj.put_cstr(self.exe.as_bytes())?;
        let scratch = inj.scratch(8192)?;
        let rc = inj.syscall(libc::SYS_open, [path, libc::O_RDONLY as u64 | libc::O_CLOEXEC as u64, 0, 0, 0, 0])?;
        let exe_fd = match self.exe.strip_suffix(" (deleted)") {
            _ if rc >= 0 => Some(rc as u64),
            Some(gone) if rc == -i64::from(libc::ENOENT) => match deleted_exe_fd(inj, host_pid, self.fields[0]) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    warnings.push(format!("executable link of the deleted {gone} not restored: {e}"));
                    None
                }
            },
            _ => {
                let err = std::io::Error::from_raw_os_error((-rc) as i32);
                return Err(EngineError::Proc { pid: host_pid, detail: format!("open executable {}: {err}", self.exe) });
            }
        };
        let auxv_addr = scratch + 4096;
        let auxv: Vec<u8> = self.auxv.iter().flat_map(|w| w.to_le_bytes()).collect();
        inj.write_mem(auxv_addr, &auxv)?;
        let mut map = Vec::with_capacity(112);
        for f in &self.fields {
            map.extend_from_slice(&f.to_le_bytes());
        }
        map.extend_from_slice(&auxv_addr.to_le_bytes());
        map.extend_from_slice(&(auxv.len() as u32).to_le_bytes());
        // An exe_fd of -1 leaves the link alone.
        map.extend_from_slice(&exe_fd.map_or(u32::MAX, |fd| fd as u32).to_le_bytes());
        inj.write_mem(scratch + 2048, &map)?;
        const PR_SET_MM_MAP: u64 = 14;
        let set = [pr::SET_MM, PR_SET_MM_MAP, scratch + 2048, map.len() as u64, 0, 0];
        let rc = inj.syscall(libc::SYS_prctl, set)?;
        if rc == -i64::from(libc::EACCES) && exe_fd.is_some() && self.exe.ends_with(" (deleted)") {
            // The copy cannot be an executable here (a file system mounted noexec, or a shared
            // writable mapping of it): keep the rest, without the link.
            warnings.push(format!("executable link of the deleted {} not restored: its copy cannot be an executable here", self.exe));
            let keep = map.len() - 4;
            inj.write_mem(scratch + 2048 + keep as u64, &u32::MAX.to_le_bytes())?;
            inj.call("prctl(PR_SET_MM_MAP)", libc::SYS_prctl, set)?;
        } else if rc < 0 {
            return Err(EngineError::Sys { step: "prctl(PR_SET_MM_MAP)", pid: host_pid, source: std::io::Error::from_raw_os_error((-rc) as i32) });
        }
        if let Some(fd) = exe_fd {
            inj.call("close executable", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
        }
        Ok(())
    }
}

/// An fd, in the process `inj` drives (host pid `host_pid`), of the copy of its deleted
/// executable: the file of the mapping that holds its code (`start_code`), restored from the
/// deleted file's saved contents, opened through `/proc/self/map_files` (the process is still
/// root with every capability here) and made executable (`PR_SET_MM_MAP` wants an executable
/// file; the copy is made 0600).
fn deleted_exe_fd(inj: &mut Injector, host_pid: i32, start_code: u64) -> Result<u64> {
    let maps_path = format!("/proc/{host_pid}/maps");
    let maps = std::fs::read_to_string(&maps_path).map_err(|e| EngineError::io("read", maps_path.as_ref(), e))?;
    let range = maps.lines().find_map(|l| {
        let (s, e) = l.split_whitespace().next()?.split_once('-')?;
        let (s, e) = (u64::from_str_radix(s, 16).ok()?, u64::from_str_radix(e, 16).ok()?);
        (s <= start_code && start_code < e && l.ends_with("(deleted)")).then_some((s, e))
    });
    let (s, e) = range.ok_or_else(|| EngineError::Proc { pid: host_pid, detail: format!("no mapping of a deleted file holds the code at {start_code:#x}") })?;
    let fd = crate::files::open_path(inj, &format!("/proc/self/map_files/{s:x}-{e:x}"), libc::O_RDONLY as u32)?;
    inj.call("fchmod (copy of the deleted executable)", libc::SYS_fchmod, [fd, 0o700, 0, 0, 0, 0])?;
    Ok(fd)
}

/// `membarrier` commands.
mod mb {
    pub const PRIVATE_EXPEDITED: u64 = 1 << 3;
    pub const PRIVATE_EXPEDITED_SYNC_CORE: u64 = 1 << 5;
    pub const PRIVATE_EXPEDITED_RSEQ: u64 = 1 << 7;
    pub const GET_REGISTRATIONS: u64 = 1 << 9;
    /// The registration commands, in the order they are reissued.
    pub const REGISTER: [u64; 4] = [1 << 2, 1 << 4, 1 << 6, 1 << 8];
}

/// The mm's flags.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmFlags {
    /// `PR_GET_THP_DISABLE`: 0, 1 (disabled), or 1 | PR_THP_DISABLE_EXCEPT_ADVISED (Linux 6.18).
    pub thp_disable: u64,
    /// `PR_GET_MDWE` flags (memory-deny-write-execute).
    pub mdwe: u64,
    /// Membarrier registration commands issued (`MEMBARRIER_CMD_REGISTER_*` bits).
    pub membarrier: u64,
    /// KSM merges all its anonymous memory (`PR_SET_MEMORY_MERGE`).
    pub ksm_merge_any: bool,
    /// `PR_GET_DUMPABLE`: 0, 1, or 2 (set by a credential change under `fs.suid_dumpable` = 2).
    pub dumpable: u64,
}

impl MmFlags {
    /// Reads the flags of the stopped process `pid` (`inj` drives its main thread).
    pub fn save(pid: i32, inj: &mut Injector) -> Result<MmFlags> {
        let thp_disable = inj.call("prctl(PR_GET_THP_DISABLE)", libc::SYS_prctl, [pr::GET_THP_DISABLE, 0, 0, 0, 0, 0])?;
        let rc = inj.syscall(libc::SYS_prctl, [pr::GET_MDWE, 0, 0, 0, 0, 0])?;
        let mdwe = if rc == -(libc::EINVAL as i64) { 0 } else { check(pid, "prctl(PR_GET_MDWE)", rc)? };
        let membarrier = match inj.syscall(libc::SYS_membarrier, [mb::GET_REGISTRATIONS, 0, 0, 0, 0, 0])? {
            rc if rc >= 0 => rc as u64,
            rc if rc == -(libc::EINVAL as i64) => probe_membarrier(inj)?,
            rc if rc == -(libc::ENOSYS as i64) => 0,
            rc => check(pid, "membarrier(GET_REGISTRATIONS)", rc)?,
        };
        let ksm = std::fs::read_to_string(format!("/proc/{pid}/ksm_stat")).unwrap_or_default();
        let ksm_merge_any = super::status_field(&ksm, "ksm_merge_any:") == Some("yes");
        let dumpable = inj.call("prctl(PR_GET_DUMPABLE)", libc::SYS_prctl, [pr::GET_DUMPABLE, 0, 0, 0, 0, 0])?;
        Ok(MmFlags { thp_disable, mdwe, membarrier, ksm_merge_any, dumpable })
    }

    /// Sets THP disable, membarrier registrations and KSM merge-any in the restored process.
    pub fn restore(&self, inj: &mut Injector, warnings: &mut Vec<String>) -> Result<()> {
        let (on, flags) = if self.thp_disable & 1 != 0 { (1, self.thp_disable & !1) } else { (0, 0) };
        inj.call("prctl(PR_SET_THP_DISABLE)", libc::SYS_prctl, [pr::SET_THP_DISABLE, on, flags, 0, 0, 0])?;
        for cmd in mb::REGISTER.iter().filter(|&&c| self.membarrier & c != 0) {
            let rc = inj.syscall(libc::SYS_membarrier, [*cmd, 0, 0, 0, 0, 0])?;
            if rc < 0 {
                warnings.push(format!("membarrier registration {cmd:#x} not restored: {}", errno_text(rc)));
            }
        }
        if self.ksm_merge_any {
            let rc = inj.syscall(libc::SYS_prctl, [pr::SET_MEMORY_MERGE, 1, 0, 0, 0, 0])?;
            if rc < 0 {
                warnings.push(format!("KSM merge-any (PR_SET_MEMORY_MERGE) not restored (needs CAP_SYS_RESOURCE): {}", errno_text(rc)));
            }
        }
        Ok(())
    }

    /// After every credential change: the dumpable flag (a uid change resets it), then
    /// memory-deny-write-execute (nothing executable is mapped after it).
    pub fn restore_last(&self, inj: &mut Injector, warnings: &mut Vec<String>) -> Result<()> {
        let now = inj.call("prctl(PR_GET_DUMPABLE)", libc::SYS_prctl, [pr::GET_DUMPABLE, 0, 0, 0, 0, 0])?;
        if now != self.dumpable {
            if self.dumpable <= 1 {
                inj.call("prctl(PR_SET_DUMPABLE)", libc::SYS_prctl, [pr::SET_DUMPABLE, self.dumpable, 0, 0, 0, 0])?;
            } else {
                warnings.push(format!(
                    "dumpable mode {} (from a credential change under fs.suid_dumpable) cannot be set by prctl; restored as {now}",
                    self.dumpable
                ));
            }
        }
        if self.mdwe != 0 {
            inj.call("prctl(PR_SET_MDWE)", libc::SYS_prctl, [pr::SET_MDWE, self.mdwe, 0, 0, 0, 0])?;
        }
        Ok(())
    }
}

fn check(pid: i32, step: &'static str, rc: i64) -> Result<u64> {
    if rc < 0 {
        return Err(EngineError::Sys { step, pid, source: errno_text(rc) });
    }
    Ok(rc as u64)
}

/// Before `MEMBARRIER_CMD_GET_REGISTRATIONS`: issues each private expedited command; the kernel
/// answers EPERM where the process has not registered for it.
fn probe_membarrier(inj: &mut Injector) -> Result<u64> {
    let mut regs = 0;
    for (cmd, reg) in [
        (mb::PRIVATE_EXPEDITED, mb::REGISTER[1]),
        (mb::PRIVATE_EXPEDITED_SYNC_CORE, mb::REGISTER[2]),
        (mb::PRIVATE_EXPEDITED_RSEQ, mb::REGISTER[3]),
    ] {
        if inj.syscall(libc::SYS_membarrier, [cmd, 0, 0, 0, 0, 0])? == 0 {
            regs |= reg;
        }
    }
    Ok(regs)
}
