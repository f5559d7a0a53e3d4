//! Process attributes: name, working and root directories, umask, credentials, personality,
//! resource limits, and the mm boundaries (code, data, brk, stack, arguments, environment,
//! auxiliary vector, executable) that `prctl(PR_SET_MM_MAP)` restores.
//!
//! Limits: this machine's root lacks CAP_SYS_RESOURCE, so a hard limit can be restored only
//! where it is not above the restorer's own; a limit the kernel refuses is reported in
//! [`ProcAttrs::restore`]'s warnings, never silently dropped. Capabilities are not saved yet.
use serde::{Deserialize, Serialize};

use crate::inject::Injector;
use crate::{EngineError, Result};

/// Saved attributes of a process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcAttrs {
    /// `/proc/PID/comm`.
    pub comm: String,
    /// Working directory.
    pub cwd: String,
    /// Root directory.
    pub root: String,
    /// umask.
    pub umask: u32,
    /// Real, effective, saved, filesystem uid.
    pub uids: [u32; 4],
    /// Real, effective, saved, filesystem gid.
    pub gids: [u32; 4],
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// personality(2) value.
    pub personality: u32,
    /// (resource, soft, hard) for every resource.
    pub rlimits: Vec<(u32, u64, u64)>,
    /// mm boundaries.
    pub mm: MmBounds,
}

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

fn read(pid: i32, what: &str) -> Result<String> {
    let path = format!("/proc/{pid}/{what}");
    std::fs::read_to_string(&path).map_err(|e| EngineError::io("read", path.as_ref(), e))
}

fn link(pid: i32, what: &str) -> Result<String> {
    let path = format!("/proc/{pid}/{what}");
    std::fs::read_link(&path)
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| EngineError::io("readlink", path.as_ref(), e))
}

fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|l| l.strip_prefix(key)).map(str::trim)
}

fn four(pid: i32, s: Option<&str>, what: &str) -> Result<[u32; 4]> {
    let v: Vec<u32> = s.unwrap_or("").split_whitespace().filter_map(|x| x.parse().ok()).collect();
    v.try_into().map_err(|_| EngineError::Proc { pid, detail: format!("cannot parse {what} in /proc status") })
}

/// Number of rlimit resources (RLIMIT_NLIMITS).
const NLIMITS: u32 = 16;

impl ProcAttrs {
    /// Reads the attributes of a stopped process; `inj` answers what /proc does not (brk).
    pub fn save(pid: i32, inj: &mut Injector) -> Result<ProcAttrs> {
        let status = read(pid, "status")?;
        let bad = |what: &str| EngineError::Proc { pid, detail: format!("cannot parse {what}") };
        let umask = u32::from_str_radix(status_field(&status, "Umask:").ok_or_else(|| bad("Umask"))?, 8)
            .map_err(|_| bad("Umask"))?;
        let uids = four(pid, status_field(&status, "Uid:"), "Uid")?;
        let gids = four(pid, status_field(&status, "Gid:"), "Gid")?;
        let groups = status_field(&status, "Groups:").unwrap_or("").split_whitespace().filter_map(|g| g.parse().ok()).collect();
        let personality = u32::from_str_radix(read(pid, "personality")?.trim(), 16).map_err(|_| bad("personality"))?;
        let mut rlimits = Vec::new();
        for res in 0..NLIMITS {
            let (soft, hard) = crate::sys::proc::prlimit_get(pid, res)
                .map_err(|source| EngineError::Sys { step: "read rlimit", pid, source })?;
            rlimits.push((res, soft, hard));
        }
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
        Ok(ProcAttrs {
            comm: read(pid, "comm")?.trim_end().to_string(),
            cwd: link(pid, "cwd")?,
            root: link(pid, "root")?,
            umask,
            uids,
            gids,
            groups,
            personality,
            rlimits,
            mm: MmBounds { fields, auxv, exe: link(pid, "exe")? },
        })
    }

    /// Applies the attributes inside the process being restored. Credentials come last but one
    /// (after them we may lack the right to do the rest): call [`ProcAttrs::restore_creds`] at
    /// the very end. Returns warnings for what the kernel refused.
    pub fn restore(&self, inj: &mut Injector) -> Result<Vec<String>> {
        let mut warnings = Vec::new();
        let scratch = inj.scratch(8192)?;
        let cstr = |s: &str| {
            let mut v = s.as_bytes().to_vec();
            v.push(0);
            v
        };
        inj.write_mem(scratch, &cstr(&self.comm))?;
        inj.call("prctl(PR_SET_NAME)", libc::SYS_prctl, [libc::PR_SET_NAME as u64, scratch, 0, 0, 0, 0])?;
        if self.root != "/" {
            inj.write_mem(scratch, &cstr(&self.root))?;
            inj.call("chroot", libc::SYS_chroot, [scratch, 0, 0, 0, 0, 0])?;
        }
        inj.write_mem(scratch, &cstr(&self.cwd))?;
        inj.call("chdir", libc::SYS_chdir, [scratch, 0, 0, 0, 0, 0])?;
        inj.call("umask", libc::SYS_umask, [u64::from(self.umask), 0, 0, 0, 0, 0])?;
        inj.call("personality", libc::SYS_personality, [u64::from(self.personality), 0, 0, 0, 0, 0])?;
        for (res, soft, hard) in &self.rlimits {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&soft.to_le_bytes());
            b[8..].copy_from_slice(&hard.to_le_bytes());
            inj.write_mem(scratch, &b)?;
            let rc = inj.syscall(libc::SYS_prlimit64, [0, u64::from(*res), scratch, 0, 0, 0])?;
            if rc < 0 {
                warnings.push(format!(
                    "rlimit {res} ({soft}/{hard}) not restored: {}",
                    std::io::Error::from_raw_os_error(-rc as i32)
                ));
            }
        }
        // mm boundaries and executable link.
        inj.write_mem(scratch, &cstr(&self.mm.exe))?;
        let exe_fd = inj.call("open executable", libc::SYS_open, [scratch, libc::O_RDONLY as u64 | libc::O_CLOEXEC as u64, 0, 0, 0, 0])?;
        let auxv_addr = scratch + 4096;
        let auxv: Vec<u8> = self.mm.auxv.iter().flat_map(|w| w.to_le_bytes()).collect();
        inj.write_mem(auxv_addr, &auxv)?;
        let mut map = Vec::with_capacity(112);
        for f in &self.mm.fields {
            map.extend_from_slice(&f.to_le_bytes());
        }
        map.extend_from_slice(&auxv_addr.to_le_bytes());
        map.extend_from_slice(&(auxv.len() as u32).to_le_bytes());
        map.extend_from_slice(&(exe_fd as u32).to_le_bytes());
        inj.write_mem(scratch + 2048, &map)?;
        const PR_SET_MM: u64 = 35;
        const PR_SET_MM_MAP: u64 = 14;
        inj.call("prctl(PR_SET_MM_MAP)", libc::SYS_prctl, [PR_SET_MM, PR_SET_MM_MAP, scratch + 2048, map.len() as u64, 0, 0])?;
        inj.call("close executable", libc::SYS_close, [exe_fd, 0, 0, 0, 0, 0])?;
        Ok(warnings)
    }

    /// Sets groups, gids and uids (in that order, so that dropping root comes last).
    pub fn restore_creds(&self, inj: &mut Injector) -> Result<()> {
        let scratch = inj.scratch(8192)?;
        let groups: Vec<u8> = self.groups.iter().flat_map(|g| g.to_le_bytes()).collect();
        inj.write_mem(scratch, &groups)?;
        inj.call("setgroups", libc::SYS_setgroups, [self.groups.len() as u64, scratch, 0, 0, 0, 0])?;
        let g = self.gids.map(u64::from);
        inj.call("setresgid", libc::SYS_setresgid, [g[0], g[1], g[2], 0, 0, 0])?;
        inj.call("setfsgid", libc::SYS_setfsgid, [g[3], 0, 0, 0, 0, 0])?;
        let u = self.uids.map(u64::from);
        inj.call("setresuid", libc::SYS_setresuid, [u[0], u[1], u[2], 0, 0, 0])?;
        inj.call("setfsuid", libc::SYS_setfsuid, [u[3], 0, 0, 0, 0, 0])?;
        Ok(())
    }
}
