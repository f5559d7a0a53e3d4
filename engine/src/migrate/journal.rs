//! What each side records, so that a migration interrupted at any step can be resolved.
//!
//! ```text
//!   source:      <pod dir>/migration.json          SourceJournal: session, destination, state
//!   destination: <migrate dir>/in-<session>/       a session being received:
//!                    session.json                  DestJournal: pod, state, the receiving process
//!                    chunks.spool                  the chunks received (spool)
//!                <migrate dir>/outcomes/<session>  "committed" or "discarded", kept 7 days, for
//!                                                  a source that asks (`zap migrate --recover`)
//! ```
//! Files are replaced atomically (write, fsync, rename).
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::{mig_err, Result};

/// Where the source is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceState {
    /// Pre-copy rounds or the final round: the pod runs, or is stopped by us (resumed if we die).
    Precopy,
    /// `Commit` is (being) sent: the pod is frozen and off the network until resolved.
    Committing,
}

/// The source's record of a migration of its pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceJournal {
    /// Session id.
    pub session: String,
    /// The destination as given (`tcp://…`, `ssh://…`, or `via:COMMAND`).
    pub dest: String,
    /// The destination's key.
    pub peer_key: String,
    /// Where it is.
    pub state: SourceState,
    /// The migrating process and its start time.
    pub pid: i32,
    /// Start time of that process.
    pub start: u64,
}

/// Where a destination session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DestState {
    /// Rounds are arriving; the prepared pod is ours to discard.
    Receiving,
    /// The pod is restored, frozen, off the network; waiting for `Commit`.
    Prepared,
    /// `Commit` arrived: the pod is the real one.
    Committed,
}

/// The destination's record of a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestJournal {
    /// Session id.
    pub session: String,
    /// The pod's name here.
    pub pod: String,
    /// Where it is.
    pub state: DestState,
    /// The receiving process and its start time.
    pub pid: i32,
    /// Its start time.
    pub start: u64,
    /// Directories carried with the pod (staged beside their place as `DIR.zap-incoming-SESSION`).
    #[serde(default)]
    pub copy_dirs: Vec<String>,
    /// The carried directories are (being) put in place.
    #[serde(default)]
    pub placed: bool,
}

/// Writes `value` as JSON to `path` atomically.
pub fn write<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let data = serde_json::to_vec_pretty(value).map_err(|e| mig_err("encode journal", path.display(), e))?;
    let mut f = std::fs::File::create(&tmp).map_err(|e| mig_err("write journal", tmp.display(), e))?;
    f.write_all(&data).and_then(|()| f.sync_all()).map_err(|e| mig_err("write journal", tmp.display(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| mig_err("write journal", path.display(), e))
}

/// Reads a journal, `None` if there is none.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(d) => serde_json::from_slice(&d).map(Some).map_err(|e| mig_err("read journal", path.display(), e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(mig_err("read journal", path.display(), e)),
    }
}

/// The source journal of pod `name`.
pub fn source_path(root: &Path, name: &str) -> PathBuf {
    crate::pod::pod_dir(root, name).join("migration.json")
}

/// The directory of destination session `session`.
pub fn session_dir(session: &str) -> PathBuf {
    crate::host::migrate_dir().join(format!("in-{session}"))
}

fn outcomes_dir() -> PathBuf {
    crate::host::migrate_dir().join("outcomes")
}

/// Records how session `session` ended here (`committed` or `discarded`).
pub fn record_outcome(session: &str, outcome: &str) -> Result<()> {
    let dir = outcomes_dir();
    std::fs::create_dir_all(&dir).map_err(|e| mig_err("record outcome", dir.display(), e))?;
    let path = dir.join(session);
    std::fs::write(&path, outcome).map_err(|e| mig_err("record outcome", path.display(), e))
}

/// How session `session` ended here, if it did.
pub fn outcome(session: &str) -> Option<String> {
    std::fs::read_to_string(outcomes_dir().join(session)).ok().map(|s| s.trim().to_string())
}

/// Deletes outcome records older than 7 days.
pub fn prune_outcomes() {
    let Ok(entries) = std::fs::read_dir(outcomes_dir()) else { return };
    for e in entries.flatten() {
        let old = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|a| a.as_secs() > 7 * 86400);
        if old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Checks a session id (it names files): 32 hex digits.
pub fn valid_session(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A new session id.
pub fn new_session() -> String {
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    hex::encode(b)
}

/// This process and its start time.
pub fn me() -> (i32, u64) {
    let pid = std::process::id() as i32;
    (pid, crate::pod::proc_stat(pid).map_or(0, |s| s.1))
}
