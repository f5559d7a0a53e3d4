//! Store errors: each names the step that failed and the object it failed on.
use std::path::{Path, PathBuf};

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file-system step failed.
    #[error("{step} {}: {source}", path.display())]
    Io {
        /// The step (`"create pack"`, `"fsync pack"`...).
        step: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// RocksDB refused an operation.
    #[error("index {step}: {detail}")]
    Index {
        /// The step.
        step: &'static str,
        /// RocksDB's message.
        detail: String,
    },
    /// Stored data is damaged.
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// The object (a chunk, a pack, a manifest).
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A chunk that something references is not in the store.
    #[error("chunk {id} is missing ({context})")]
    MissingChunk {
        /// The chunk.
        id: String,
        /// Who references it.
        context: String,
    },
    /// No checkpoint matches.
    #[error("no checkpoint matches {0:?}")]
    NotFound(String),
    /// Several checkpoints match a prefix.
    #[error("checkpoint prefix {prefix:?} is ambiguous: {candidates}")]
    Ambiguous {
        /// The prefix.
        prefix: String,
        /// Matching ids, comma-separated.
        candidates: String,
    },
    /// The directory holds no store.
    #[error("no Zap store at {} (create one with `zap store init`)", .0.display())]
    NotAStore(PathBuf),
    /// Another process holds the store.
    #[error("store {} is busy: held by {holder} (waited {waited_s} s)", path.display())]
    Busy {
        /// The store.
        path: PathBuf,
        /// Who holds the lock, as written in the lock file.
        holder: String,
        /// How long we waited.
        waited_s: u64,
    },
    /// A request that cannot be carried out as asked.
    #[error("{0}")]
    Invalid(String),
}

impl StoreError {
    /// An I/O error at `step` on `path`.
    pub fn io(step: &'static str, path: &Path, source: std::io::Error) -> Self {
        StoreError::Io { step, path: path.to_path_buf(), source }
    }

    /// A RocksDB error at `step`.
    pub fn index(step: &'static str, e: rocksdb::Error) -> Self {
        StoreError::Index { step, detail: e.into_string() }
    }
}
