//! Engine errors: each names the step and the object (pid, address, fd).
use std::path::{Path, PathBuf};

/// Result of engine operations.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// What went wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A file-system step failed.
    #[error("{step} {}: {source}", path.display())]
    Io {
        /// The step.
        step: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A syscall on a process failed.
    #[error("{step} on pid {pid}: {source}")]
    Sys {
        /// The step.
        step: &'static str,
        /// The process or thread.
        pid: i32,
        /// The OS error.
        source: std::io::Error,
    },
    /// The process is not in a state we can work with.
    #[error("pid {pid}: {detail}")]
    Proc {
        /// The process.
        pid: i32,
        /// What is wrong.
        detail: String,
    },
    /// A step on a pod failed.
    #[error("{step} in pod {pod}: {detail}")]
    Pod {
        /// The pod's name.
        pod: String,
        /// The step, with its object.
        step: String,
        /// What went wrong.
        detail: String,
    },
    /// A network setting is invalid.
    #[error("{step}: {detail}")]
    Net {
        /// The step, with its object.
        step: String,
        /// What is wrong.
        detail: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] zap_store::StoreError),
    /// Read-back differs from the live process.
    #[error("pid {pid}: image differs from live memory at {addr:#x} (mapping {mapping})")]
    Mismatch {
        /// The process.
        pid: i32,
        /// First differing address.
        addr: u64,
        /// The mapping.
        mapping: String,
    },
}

impl EngineError {
    /// An I/O error at `step` on `path`.
    pub fn io(step: &'static str, path: &Path, source: std::io::Error) -> Self {
        EngineError::Io { step, path: path.to_path_buf(), source }
    }
}
