//! Raw syscalls of the engine, behind safe functions. Logic modules call these, never libc.
//! Every `unsafe` block here carries a `// SAFETY:` comment.
pub mod arp;
pub mod ptrace;
pub mod clone;
pub mod ns;
pub mod proc;
pub mod regs;
pub mod sock;
pub mod ipc;
pub mod uffd;
pub mod mount;
pub mod nft;
pub mod fdio;
