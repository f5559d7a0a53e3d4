//! Register, signal-state and rseq access on a ptrace-stopped thread. Debian's headers predate
//! some of these requests, so their numbers and structs are defined here.
use std::io;

/// General registers as the kernel's `struct user_regs_struct` (x86-64).
pub type Regs = libc::user_regs_struct;

const PTRACE_GETREGSET: libc::c_uint = 0x4204;
const PTRACE_SETREGSET: libc::c_uint = 0x4205;
const PTRACE_PEEKSIGINFO: libc::c_uint = 0x4209;
const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
const NT_X86_XSTATE: usize = 0x202;
const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;
/// Largest XSAVE area we accept (AVX-512 needs ~2.7 KiB; AMX ~11 KiB).
const XSTATE_MAX: usize = 16384;

fn err(what: &str, tid: i32) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what} tid {tid}: {e}"))
}

/// Reads the general registers.
pub fn get_regs(tid: i32) -> io::Result<Regs> {
    // SAFETY: user_regs_struct is plain data; all-zero is a valid value.
    let mut regs: Regs = unsafe { std::mem::zeroed() };
    // SAFETY: PTRACE_GETREGS writes exactly one user_regs_struct to the pointer, which is valid.
    let rc = unsafe { libc::ptrace(libc::PTRACE_GETREGS, tid, 0usize, &mut regs as *mut Regs) };
    if rc == -1 {
        return Err(err("ptrace(GETREGS)", tid));
    }
    Ok(regs)
}

/// Writes the general registers.
pub fn set_regs(tid: i32, regs: &Regs) -> io::Result<()> {
    // SAFETY: PTRACE_SETREGS reads one user_regs_struct from the pointer, which is valid.
    let rc = unsafe { libc::ptrace(libc::PTRACE_SETREGS, tid, 0usize, regs as *const Regs) };
    if rc == -1 {
        return Err(err("ptrace(SETREGS)", tid));
    }
    Ok(())
}

/// Reads the XSAVE area (x87, SSE, AVX, AVX-512... as the CPU has them).
pub fn get_xstate(tid: i32) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; XSTATE_MAX];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: the iovec describes `buf`, which outlives the call; the kernel writes at most
    // iov_len bytes and updates iov_len to what it wrote.
    let rc = unsafe { libc::ptrace(PTRACE_GETREGSET, tid, NT_X86_XSTATE, &mut iov as *mut libc::iovec) };
    if rc == -1 {
        return Err(err("ptrace(GETREGSET, NT_X86_XSTATE)", tid));
    }
    buf.truncate(iov.iov_len);
    Ok(buf)
}

/// Writes the XSAVE area read by [`get_xstate`].
pub fn set_xstate(tid: i32, xstate: &[u8]) -> io::Result<()> {
    let mut copy = xstate.to_vec();
    let mut iov = libc::iovec { iov_base: copy.as_mut_ptr().cast(), iov_len: copy.len() };
    // SAFETY: the iovec describes `copy`, alive for the call; the kernel only reads it.
    let rc = unsafe { libc::ptrace(PTRACE_SETREGSET, tid, NT_X86_XSTATE, &mut iov as *mut libc::iovec) };
    if rc == -1 {
        return Err(err("ptrace(SETREGSET, NT_X86_XSTATE)", tid));
    }
    Ok(())
}

/// Reads the blocked-signal mask of a thread.
pub fn get_sigmask(tid: i32) -> io::Result<u64> {
    let mut mask = 0u64;
    // SAFETY: addr is the mask size (8), data points to a valid u64.
    let rc = unsafe { libc::ptrace(PTRACE_GETSIGMASK, tid, 8usize, &mut mask as *mut u64) };
    if rc == -1 {
        return Err(err("ptrace(GETSIGMASK)", tid));
    }
    Ok(mask)
}

/// Sets the blocked-signal mask of a thread.
pub fn set_sigmask(tid: i32, mask: u64) -> io::Result<()> {
    // SAFETY: addr is the mask size (8), data points to a valid u64 the kernel reads.
    let rc = unsafe { libc::ptrace(PTRACE_SETSIGMASK, tid, 8usize, &mask as *const u64) };
    if rc == -1 {
        return Err(err("ptrace(SETSIGMASK)", tid));
    }
    Ok(())
}

#[repr(C)]
struct PeekSiginfoArgs {
    off: u64,
    flags: u32,
    nr: i32,
}

/// Reads the queued signals (without dequeuing them): the thread's own, or with `shared` the
/// process-wide queue. Each entry is a raw 128-byte siginfo.
pub fn peek_siginfo(tid: i32, shared: bool) -> io::Result<Vec<[u8; 128]>> {
    let mut out = Vec::new();
    loop {
        let mut batch = [[0u8; 128]; 32];
        let args = PeekSiginfoArgs {
            off: out.len() as u64,
            flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 },
            nr: batch.len() as i32,
        };
        // SAFETY: args is a valid PeekSiginfoArgs; data points to room for `nr` siginfos.
        let rc = unsafe {
            libc::ptrace(PTRACE_PEEKSIGINFO, tid, &args as *const PeekSiginfoArgs, batch.as_mut_ptr())
        };
        if rc < 0 {
            return Err(err("ptrace(PEEKSIGINFO)", tid));
        }
        let n = rc as usize;
        out.extend_from_slice(&batch[..n]);
        if n < batch.len() {
            return Ok(out);
        }
    }
}

/// The rseq area a thread registered, as PTRACE_GET_RSEQ_CONFIGURATION reports it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RseqConfig {
    /// Address of the thread's `struct rseq` (0: none registered).
    pub rseq_abi_pointer: u64,
    /// Its registered size.
    pub rseq_abi_size: u32,
    /// The signature passed at registration.
    pub signature: u32,
    /// Flags.
    pub flags: u32,
    /// Padding.
    pub pad: u32,
}

/// Reads the rseq registration of a thread.
pub fn get_rseq(tid: i32) -> io::Result<RseqConfig> {
    let mut conf = RseqConfig::default();
    // SAFETY: addr is the struct size, data points to a valid RseqConfig the kernel fills.
    let rc = unsafe {
        libc::ptrace(
            PTRACE_GET_RSEQ_CONFIGURATION,
            tid,
            std::mem::size_of::<RseqConfig>(),
            &mut conf as *mut RseqConfig,
        )
    };
    if rc < 0 {
        return Err(err("ptrace(GET_RSEQ_CONFIGURATION)", tid));
    }
    Ok(conf)
}

/// Number of 64-bit words in [`Regs`].
pub const REGS_WORDS: usize = std::mem::size_of::<Regs>() / 8;

/// The registers as plain words, in the kernel's field order (for serialization).
pub fn regs_to_words(regs: &Regs) -> Vec<u64> {
    // SAFETY: user_regs_struct is a repr(C) struct of exactly REGS_WORDS u64 fields, so it can be
    // viewed as that many u64s for the lifetime of the borrow.
    let words = unsafe { std::slice::from_raw_parts((regs as *const Regs).cast::<u64>(), REGS_WORDS) };
    words.to_vec()
}

/// Registers from words produced by [`regs_to_words`]; `None` if the length is wrong.
pub fn regs_from_words(words: &[u64]) -> Option<Regs> {
    if words.len() != REGS_WORDS {
        return None;
    }
    // SAFETY: all-zero is a valid user_regs_struct (plain integers).
    let mut regs: Regs = unsafe { std::mem::zeroed() };
    // SAFETY: the destination is REGS_WORDS u64 fields (see regs_to_words); the source has
    // exactly that many words; the two do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(words.as_ptr(), (&mut regs as *mut Regs).cast::<u64>(), REGS_WORDS) };
    Some(regs)
}
