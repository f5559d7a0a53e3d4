//! The Zap engine: freezing processes and moving their state into and out of the image store.
//!
//! - [`pod`]: pods, groups of processes in their own namespaces and cgroup with our init as PID 1
//!   (`zap-init`), and whole-pod checkpoint/restore ([`pod::checkpoint`]); [`ipc`]: the System V
//!   IPC objects of a pod's IPC namespace.
//! - [`group`]: a process tree saved and restored together (parents, sessions, process groups,
//!   zombies, shared fds, pipes, unix sockets and anonymous memory).
//! - [`process`]: one process, save and step-wise restore; its parts: [`mem`], [`cpu`] and
//!   [`threads`], [`signals`], [`attrs`], [`files`] and [`sockets`].
//! - [`freeze`]: stop every thread of a process with ptrace (seize + interrupt), without a signal;
//!   [`inject`]: run syscalls inside a stopped thread.
//! - [`maps`]: the process's memory layout; [`memdump`]: store a live process's memory image and
//!   check it back.
//! - [`host`]: where a host keeps its state (`$ZAP_ROOT`: run directory, store, cgroup parent,
//!   locks, keys) and how its pods reach the network; [`migrate`]: live migration of a pod to
//!   another host.
//! - `sys`: the raw syscalls, each behind a safe function.
#![deny(missing_docs)]

pub mod attrs;
mod blob;
pub mod cpu;
pub mod dirty;
mod error;
pub mod files;
pub mod freeze;
pub mod group;
pub mod host;
pub mod inject;
pub mod ipc;
pub mod lazy;
pub mod maps;
pub mod mem;
pub mod memdump;
pub mod migrate;
pub mod pipeline;
pub mod pod;
pub mod precopy;
pub mod process;
pub mod signals;
pub mod sockets;
pub mod threads;
mod sys;

pub use error::{EngineError, Result};
pub use sys::keep_freed_memory;
