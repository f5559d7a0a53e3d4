//! Parsing `/proc/PID/maps`.
use std::path::Path;

use crate::{EngineError, Result};

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `rwxp`/`rwxs` flags as the kernel prints them.
    pub perms: String,
    /// File offset of `start`.
    pub offset: u64,
    /// Device `major:minor`.
    pub dev: String,
    /// Inode of the backing file (0 for anonymous).
    pub inode: u64,
    /// Path or pseudo-name (`[heap]`, `[stack]`, `[vdso]`...), empty for anonymous.
    pub path: String,
}

impl Mapping {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    /// True for a zero-length mapping (never printed by the kernel).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
    /// Readable.
    pub fn readable(&self) -> bool {
        self.perms.as_bytes().first() == Some(&b'r')
    }
    /// Shared (`s`) rather than private (`p`).
    pub fn shared(&self) -> bool {
        self.perms.as_bytes().get(3) == Some(&b's')
    }
    /// Kernel-provided areas whose content is not the process's own data.
    pub fn is_special(&self) -> bool {
        matches!(self.path.as_str(), "[vvar]" | "[vvar_vclock]" | "[vsyscall]")
    }
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?.to_string();
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let dev = it.next()?.to_string();
    let inode = it.next()?.parse().ok()?;
    let path = it.next().unwrap_or("").trim_start().to_string();
    let (s, e) = range.split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        perms,
        offset,
        dev,
        inode,
        path,
    })
}

/// Reads the mappings of `pid`.
pub fn read_maps(pid: i32) -> Result<Vec<Mapping>> {
    let path = format!("/proc/{pid}/maps");
    let text = std::fs::read_to_string(&path).map_err(|e| EngineError::io("read maps", Path::new(&path), e))?;
    text.lines()
        .map(|l| {
            parse_line(l).ok_or_else(|| EngineError::Proc { pid, detail: format!("unparsable maps line {l:?}") })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_lines() {
        let m = parse_line("7ffd1e5d2000-7ffd1e5f3000 rw-p 00000000 00:00 0                          [stack]").unwrap();
        assert_eq!((m.start, m.end, m.path.as_str()), (0x7ffd1e5d2000, 0x7ffd1e5f3000, "[stack]"));
        let f = parse_line("55d0c8a00000-55d0c8a28000 r--p 00001000 fe:01 1311 /usr/bin/my prog").unwrap();
        assert_eq!((f.offset, f.inode, f.path.as_str()), (0x1000, 1311, "/usr/bin/my prog"));
        let a = parse_line("7f0000000000-7f0000001000 rw-s 00000000 00:01 5 ").unwrap();
        assert!(a.shared() && a.readable());
        assert!(parse_line("garbage").is_none());
        let own = read_maps(std::process::id() as i32).unwrap();
        assert!(own.iter().any(|m| m.path == "[stack]"));
    }
}
