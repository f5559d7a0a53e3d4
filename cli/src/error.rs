//! Errors of the `zap` command: each names the step that failed and the object it failed on.
//!
//! Store errors already do; file-system steps of the command itself (reading the files to store,
//! writing restored files) say which step and which path. `main` prints them as
//! `zap: error: <message>` and exits with status 1.
use std::path::{Path, PathBuf};

use zap_store::StoreError;

/// Result of the command's own steps.
pub type Result<T, E = CliError> = std::result::Result<T, E>;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file-system step of the command failed.
    #[error("{step} {}: {source}", path.display())]
    Io {
        /// The step (`"read"`, `"create"`...).
        step: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A store operation failed while doing `step` (e.g. restoring one file).
    #[error("{step}: {source}")]
    Step {
        /// What the command was doing, with its object.
        step: String,
        /// The store's error.
        source: StoreError,
    },
    /// A request that cannot be carried out as asked, or data the command cannot use.
    #[error("{0}")]
    Invalid(String),
}

impl CliError {
    /// An I/O error at `step` on `path`.
    pub fn io(step: &'static str, path: &Path, source: std::io::Error) -> Self {
        CliError::Io { step, path: path.to_path_buf(), source }
    }
}
