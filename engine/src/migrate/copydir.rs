//! Directories migrated with the pod (`--copy DIR`): each round sends what changed in them, the
//! final round what changed while the pod was frozen, through the same chunk transfer as memory
//! (a file's pages are chunks: unchanged ones are not sent again).
//!
//! The source compares each entry's kind, size, modification time and mode with what it sent
//! last round; changed files are read whole and chunked. The destination builds the tree in a
//! staging directory beside the target (`DIR.zap-incoming-SESSION`, same file system) and
//! renames it into place in the final round, before the pod's files are reopened. A migration
//! that does not commit removes the staging directory (or the tree it renamed into place). The
//! source keeps its copy: it is the user's data, not the pod's.
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zap_chunker::ChunkerConfig;
use zap_store::{Extent, ExtentData};

use super::precopy::RoundSink;
use super::skeleton::ChunkReader;
use super::wire::{FileEntry, FileKind, FilesUpdate};
use super::{mig_err, Result};

/// What the source sent of an entry last time.
#[derive(Clone, PartialEq, Eq)]
struct Seen {
    kind: u8,
    size: u64,
    mtime_ns: i128,
    mode: u32,
    uid: u32,
    gid: u32,
}

/// Lists `dir/rel` recursively. An entry removed while it is listed (the pod runs: a database's
/// journal comes and goes) is left out, as if it had not been there.
fn walk(dir: &Path, rel: &Path, out: &mut Vec<(PathBuf, std::fs::Metadata)>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir.join(rel)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !rel.as_os_str().is_empty() => return Ok(()),
        r => r?,
    };
    for e in entries {
        let e = e?;
        let r = rel.join(e.file_name());
        let m = match std::fs::symlink_metadata(e.path()) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            r => r?,
        };
        let is_dir = m.is_dir();
        out.push((r.clone(), m));
        if is_dir {
            walk(dir, &r, out)?;
        }
    }
    Ok(())
}

/// Bytes of regular files under `dir`.
pub fn size_of(dir: &Path) -> u64 {
    let mut v = Vec::new();
    let _ = walk(dir, Path::new(""), &mut v);
    v.iter().filter(|(_, m)| m.is_file()).map(|(_, m)| m.len()).sum()
}

/// The source's side: what each directory held when last sent.
pub struct SourceDirs {
    dirs: Vec<PathBuf>,
    seen: Vec<HashMap<PathBuf, Seen>>,
}

impl SourceDirs {
    /// Directories to carry (absolute paths).
    pub fn new(dirs: &[PathBuf]) -> Result<Self> {
        for d in dirs {
            if !d.is_absolute() || !d.is_dir() {
                return Err(mig_err("copy", d.display(), "not an absolute path of a directory"));
            }
        }
        Ok(SourceDirs { dirs: dirs.to_vec(), seen: vec![HashMap::new(); dirs.len()] })
    }

    /// Sends what changed since the last call to `sink`. Returns the file bytes read.
    pub fn send<S: RoundSink + ?Sized>(&mut self, sink: &mut S, cfg: &ChunkerConfig) -> Result<u64> {
        let mut read = 0;
        for (dir, seen) in self.dirs.iter().zip(self.seen.iter_mut()) {
            let mut now = Vec::new();
            let meta = std::fs::symlink_metadata(dir).map_err(|e| mig_err("copy: read", dir.display(), e))?;
            now.push((PathBuf::new(), meta));
            walk(dir, Path::new(""), &mut now).map_err(|e| mig_err("copy: read", dir.display(), e))?;
            let mut update = FilesUpdate { dir: dir.display().to_string(), entries: Vec::new(), removed: Vec::new() };
            let mut present = HashMap::new();
            for (rel, m) in now {
                let kind = if m.is_dir() {
                    0
                } else if m.file_type().is_symlink() {
                    1
                } else if m.is_file() {
                    2
                } else {
                    continue; // sockets, FIFOs, devices: not carried
                };
                let s = Seen {
                    kind,
                    size: m.len(),
                    mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
                    mode: m.mode(),
                    uid: m.uid(),
                    gid: m.gid(),
                };
                present.insert(rel.clone(), ());
                if seen.get(&rel) == Some(&s) {
                    continue;
                }
                let path = dir.join(&rel);
                // Gone since it was listed: not there this round (the next one sees it again, or
                // removes it; the final round reads a stopped pod's files).
                let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
                let fkind = match kind {
                    0 => FileKind::Dir,
                    1 => match std::fs::read_link(&path) {
                        Err(e) if gone(&e) => {
                            present.remove(&rel);
                            continue;
                        }
                        r => FileKind::Symlink(r.map_err(|e| mig_err("copy: read link", path.display(), e))?.display().to_string()),
                    },
                    _ => {
                        let data = match std::fs::read(&path) {
                            Err(e) if gone(&e) => {
                                present.remove(&rel);
                                continue;
                            }
                            r => r.map_err(|e| mig_err("copy: read", path.display(), e))?,
                        };
                        read += data.len() as u64;
                        let mut chunks = Vec::new();
                        let mut extents = Vec::new();
                        for ce in zap_chunker::chunk_run(0, &data, cfg) {
                            let d = match ce.chunk {
                                None => ExtentData::Zero,
                                Some(c) => {
                                    let id = c.id;
                                    chunks.push(c);
                                    ExtentData::Chunk { id, offset: 0 }
                                }
                            };
                            extents.push(Extent { start: ce.start, len: ce.len, data: d });
                        }
                        sink.offer(chunks)?;
                        FileKind::File { size: data.len() as u64, extents }
                    }
                };
                update.entries.push(FileEntry { rel: rel.display().to_string(), kind: fkind, mode: s.mode, uid: s.uid, gid: s.gid, mtime_ns: s.mtime_ns });
                seen.insert(rel, s);
            }
            let gone: Vec<PathBuf> = seen.keys().filter(|p| !present.contains_key(*p)).cloned().collect();
            for g in gone {
                seen.remove(&g);
                update.removed.push(g.display().to_string());
            }
            if !update.entries.is_empty() || !update.removed.is_empty() {
                sink.files(update)?;
            }
        }
        Ok(read)
    }
}

/// The destination's side: the staging directories.
#[derive(Default)]
pub struct DestDirs {
    /// Target → (staging directory, the target existed empty before).
    staged: BTreeMap<String, (PathBuf, bool)>,
    placed: bool,
}

/// A relative path that stays inside its directory (no root, `..` or `.`).
fn checked_rel(rel: &str) -> Result<PathBuf> {
    let p = PathBuf::from(rel);
    let inside = p.components().all(|c| matches!(c, std::path::Component::Normal(_)));
    if !inside {
        return Err(mig_err("copy", rel, "a path outside its directory"));
    }
    Ok(p)
}

impl DestDirs {
    /// Applies an update for one of the `allowed` directories (those the offer named).
    pub fn apply(&mut self, u: &FilesUpdate, allowed: &[String], session: &str, read: &ChunkReader<'_>) -> Result<u64> {
        if !allowed.contains(&u.dir) {
            return Err(mig_err("copy", &u.dir, "not a directory of the offer"));
        }
        let target = PathBuf::from(&u.dir);
        let staging = match self.staged.get(&u.dir) {
            Some((s, _)) => s.clone(),
            None => {
                let s = PathBuf::from(format!("{}.zap-incoming-{session}", u.dir));
                let existed = target.exists();
                std::fs::create_dir_all(&s).map_err(|e| mig_err("copy: create", s.display(), e))?;
                self.staged.insert(u.dir.clone(), (s.clone(), existed));
                s
            }
        };
        for r in &u.removed {
            let p = staging.join(checked_rel(r)?);
            let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
        }
        let mut written = 0;
        let mut dirs = Vec::new();
        for e in &u.entries {
            let p = staging.join(checked_rel(&e.rel)?);
            match &e.kind {
                FileKind::Dir => {
                    std::fs::create_dir_all(&p).map_err(|err| mig_err("copy: create", p.display(), err))?;
                    dirs.push((p.clone(), e));
                }
                FileKind::Symlink(to) => {
                    let _ = std::fs::remove_file(&p);
                    std::os::unix::fs::symlink(to, &p).map_err(|err| mig_err("copy: symlink", p.display(), err))?;
                }
                FileKind::File { size, extents } => {
                    let mut buf = vec![0u8; *size as usize];
                    for x in extents {
                        if let ExtentData::Chunk { id, offset } = x.data {
                            let raw = read(&id)?;
                            let from = offset as usize;
                            let part = raw.get(from..from + x.len as usize).ok_or_else(|| mig_err("copy: write", p.display(), format!("chunk {id} too short")))?;
                            buf[x.start as usize..x.start as usize + part.len()].copy_from_slice(part);
                        }
                    }
                    let tmp = p.with_extension("zap-tmp");
                    std::fs::write(&tmp, &buf).map_err(|err| mig_err("copy: write", tmp.display(), err))?;
                    std::fs::rename(&tmp, &p).map_err(|err| mig_err("copy: write", p.display(), err))?;
                    written += buf.len() as u64;
                }
            }
            if !matches!(e.kind, FileKind::Symlink(_)) {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode & 0o7777)).map_err(|err| mig_err("copy: chmod", p.display(), err))?;
            }
            let _ = std::os::unix::fs::lchown(&p, Some(e.uid), Some(e.gid));
            if !matches!(e.kind, FileKind::Dir) {
                set_mtime(&p, e.mtime_ns);
            }
        }
        // Directories last: creating their entries moved their times.
        for (p, e) in dirs {
            set_mtime(&p, e.mtime_ns);
        }
        Ok(written)
    }

    /// Puts every staged tree at its place (the final round, before the pod's files reopen).
    pub fn place(&mut self) -> Result<()> {
        for (target, (staging, existed)) in &self.staged {
            if *existed {
                std::fs::remove_dir(target).map_err(|e| mig_err("copy: replace", target, e))?;
            }
            std::fs::rename(staging, target).map_err(|e| mig_err("copy: put in place", target, e))?;
        }
        self.placed = true;
        Ok(())
    }

    /// Removes what was staged or placed (a migration that did not commit).
    pub fn discard(&mut self) {
        for (target, (staging, existed)) in std::mem::take(&mut self.staged) {
            let _ = std::fs::remove_dir_all(&staging);
            if self.placed {
                let _ = std::fs::remove_dir_all(&target);
                if existed {
                    let _ = std::fs::create_dir(&target);
                }
            }
        }
    }
}

fn set_mtime(p: &Path, ns: i128) {
    let ts = nix::sys::time::TimeSpec::new((ns.div_euclid(1_000_000_000)) as i64, (ns.rem_euclid(1_000_000_000)) as i64);
    let _ = nix::sys::stat::utimensat(None, p, &ts, &ts, nix::sys::stat::UtimensatFlags::NoFollowSymlink);
}
