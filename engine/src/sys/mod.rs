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

/// Makes this process's allocator keep the memory it frees for its next allocations instead of
/// handing it back to the kernel: blocks up to 32 MiB come from the heap (not a fresh `mmap`
/// each), and the heap is trimmed only past 256 MiB free. For the commands that move memory
/// (checkpoint, restore): a 1 GiB dump allocates some 16,000 chunk buffers and a few dozen read
/// windows, freed as soon as written; trimmed and allocated again, each of their pages was a
/// page fault and a cleared page again (5% of a dump's CPU, more where the hypervisor must back
/// the page anew). Their peak stays what the pipeline's bounded queues hold (tens of MiB).
pub fn keep_freed_memory() {
    // SAFETY: mallopt(3) only changes glibc's allocator parameters; called before the command
    // allocates much, and any value is safe for the allocator (a refused one is ignored).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}
