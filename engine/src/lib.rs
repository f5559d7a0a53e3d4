//! The Zap engine: freezing processes and moving their state into and out of the image store.
//!
//! - [`freeze`]: stop every thread of a process with ptrace (seize + interrupt), without a signal.
//! - [`maps`]: the process's memory layout from `/proc/PID/maps`.
//! - [`memdump`]: store a live process's memory image and check it back.
//! - [`pod`]: pods, groups of processes in their own namespaces and cgroup, with our init as
//!   PID 1 (`zap-init`).
//! - `sys`: the raw syscalls, each behind a safe function.
//!
//! Full checkpoint/restore (registers, files, signals, restore with the same PID) is being built
//! on these pieces; see the open issues.
#![deny(missing_docs)]

pub mod attrs;
pub mod cpu;
mod error;
pub mod files;
pub mod freeze;
pub mod group;
pub mod inject;
pub mod ipc;
pub mod maps;
pub mod mem;
pub mod memdump;
pub mod pod;
pub mod process;
pub mod signals;
pub mod sockets;
pub mod threads;
mod sys;

pub use error::{EngineError, Result};
