//! Who else holds a pipe or FIFO: one scan of every process's fds (`/proc/*/fd`), made the first
//! time a checkpoint meets a pipe with an end outside the group or a FIFO, so that a pipe whose
//! other end nobody holds any more is saved half-open while one really shared with a process
//! outside the checkpoint is refused.
use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// A pipe or a FIFO.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    /// An anonymous pipe, by inode.
    Pipe(u64),
    /// A FIFO, by device and inode.
    Fifo(u64, u64),
}

/// Pipes and FIFOs held by processes outside a group: each with one such process (host pid).
pub(crate) struct Outside(HashMap<Key, i32>);

impl Outside {
    /// Scans every process but the `group` members and ourselves (our own duplicates of the
    /// group's fds do not count). Processes that end while we look are skipped.
    pub(crate) fn scan(group: &[i32]) -> Self {
        let me = std::process::id() as i32;
        let mut held = HashMap::new();
        let Ok(procs) = std::fs::read_dir("/proc") else { return Outside(held) };
        for p in procs.flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            if pid == me || group.contains(&pid) {
                continue;
            }
            let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
            for f in fds.flatten() {
                let Ok(target) = std::fs::read_link(f.path()) else { continue };
                let target = target.to_string_lossy();
                let key = if let Some(ino) = super::pipes::pipe_ino(&target) {
                    Key::Pipe(ino)
                } else if target.starts_with('/') {
                    match std::fs::metadata(f.path()) {
                        Ok(m) if m.file_type().is_fifo() => Key::Fifo(m.dev(), m.ino()),
                        _ => continue,
                    }
                } else {
                    continue;
                };
                held.entry(key).or_insert(pid);
            }
        }
        Outside(held)
    }

    /// A process outside the group that holds `key`.
    pub(crate) fn holder(&self, key: Key) -> Option<i32> {
        self.0.get(&key).copied()
    }
}

impl super::SaveContext {
    /// A process outside the group holding the pipe or FIFO `key` (scanning on first need).
    pub(crate) fn outside_holder(&mut self, key: Key) -> Option<i32> {
        let group = &self.group;
        self.outside.get_or_insert_with(|| Outside::scan(group)).holder(key)
    }
}
