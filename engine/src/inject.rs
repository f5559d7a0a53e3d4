//! Running syscalls inside a stopped thread, from outside.
//!
//! The thread's registers are saved; for each injected call the instruction pointer is set to a
//! `syscall` instruction that is already mapped executable in the target (one found in its vDSO,
//! or a trampoline page of our own during restore), the syscall number and arguments are loaded,
//! and the thread is resumed with PTRACE_SYSCALL to its syscall-entry stop and again to its
//! syscall-exit stop, where the result is read from `rax`. `orig_rax` is set to -1 so the kernel's
//! syscall-restart logic never touches our registers. [`Injector::finish`] puts the saved
//! registers back.
//!
//! Syscalls that need memory (paths, structs, result buffers) use a scratch page mapped in the
//! target with an injected `mmap` ([`Injector::scratch`]) and written or read through
//! `/proc/PID/mem`. A signal that arrives while we inject is not delivered: it stays queued in the
//! kernel (we resume with signal 0 only from syscall stops; a signal-delivery stop is recorded
//! and the signal is re-sent to the thread when we finish).
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use crate::sys::ptrace as pt;
use crate::sys::regs::{self, Regs};
use crate::{EngineError, Result};

const SYSCALL_STOP: i32 = libc::SIGTRAP | 0x80;
/// How long an injected syscall may take (a hung file system must not hang Zap).
const SYSCALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Drives injected syscalls in one stopped thread.
pub struct Injector {
    tid: i32,
    saved: Regs,
    syscall_ip: u64,
    mem: File,
    mem_path: PathBuf,
    deferred: Vec<i32>,
    scratch: Option<(u64, u64)>,
}

impl Injector {
    /// Prepares to inject into `tid` (stopped under ptrace), using the `syscall` instruction at
    /// `syscall_ip`. `pid` is the thread group, whose `/proc/PID/mem` is used for buffers.
    pub fn new(pid: i32, tid: i32, syscall_ip: u64) -> Result<Self> {
        let saved = regs::get_regs(tid).map_err(|source| EngineError::Sys { step: "save registers", pid: tid, source })?;
        let mem_path = PathBuf::from(format!("/proc/{pid}/mem"));
        let mem = File::options()
            .read(true)
            .write(true)
            .open(&mem_path)
            .map_err(|e| EngineError::io("open process memory", &mem_path, e))?;
        Ok(Injector { tid, saved, syscall_ip, mem, mem_path, deferred: Vec::new(), scratch: None })
    }

    /// The thread this injector drives.
    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// The registers the thread had when we took over.
    pub fn saved_regs(&self) -> &Regs {
        &self.saved
    }

    /// Replaces the registers [`Injector::finish`] will restore.
    pub fn set_saved_regs(&mut self, regs: Regs) {
        self.saved = regs;
    }

    /// Moves the injection point (after the trampoline moved, during restore).
    pub fn set_syscall_ip(&mut self, ip: u64) {
        self.syscall_ip = ip;
    }

    fn wait_syscall_stop(&mut self) -> Result<()> {
        loop {
            let status = pt::wait_thread_timeout(self.tid, SYSCALL_TIMEOUT)
                .map_err(|source| EngineError::Sys { step: "wait for syscall stop", pid: self.tid, source })?
                .ok_or_else(|| EngineError::Proc {
                    pid: self.tid,
                    detail: format!("an injected syscall did not return within {} s", SYSCALL_TIMEOUT.as_secs()),
                })?;
            if pt::exited(status) {
                return Err(EngineError::Proc { pid: self.tid, detail: "thread died during an injected syscall".into() });
            }
            match pt::stopped_signal(status) {
                Some(SYSCALL_STOP) => return Ok(()),
                Some(sig) => {
                    // A signal-delivery stop or a ptrace event: keep the signal for later and go on.
                    if status >> 16 == 0 && sig != libc::SIGTRAP {
                        self.deferred.push(sig);
                    }
                    pt::ptrace_syscall(self.tid, 0)
                        .map_err(|source| EngineError::Sys { step: "resume to syscall", pid: self.tid, source })?;
                }
                None => {}
            }
        }
    }

    /// Runs syscall `nr` with `args` in the thread and returns its raw result (negative errno on
    /// failure).
    pub fn syscall(&mut self, nr: i64, args: [u64; 6]) -> Result<i64> {
        let mut r = self.saved;
        r.rip = self.syscall_ip;
        r.rax = nr as u64;
        r.orig_rax = u64::MAX;
        r.rdi = args[0];
        r.rsi = args[1];
        r.rdx = args[2];
        r.r10 = args[3];
        r.r8 = args[4];
        r.r9 = args[5];
        let tid = self.tid;
        regs::set_regs(tid, &r).map_err(|source| EngineError::Sys { step: "load syscall registers", pid: tid, source })?;
        pt::ptrace_syscall(tid, 0).map_err(|source| EngineError::Sys { step: "resume to syscall entry", pid: tid, source })?;
        self.wait_syscall_stop()?;
        pt::ptrace_syscall(tid, 0).map_err(|source| EngineError::Sys { step: "resume to syscall exit", pid: tid, source })?;
        self.wait_syscall_stop()?;
        let out = regs::get_regs(tid).map_err(|source| EngineError::Sys { step: "read syscall result", pid: tid, source })?;
        Ok(out.rax as i64)
    }

    /// Like [`Injector::syscall`], turning a negative result into an error that names `what`.
    pub fn call(&mut self, what: &'static str, nr: i64, args: [u64; 6]) -> Result<u64> {
        let rc = self.syscall(nr, args)?;
        if (-4095..0).contains(&rc) {
            return Err(EngineError::Sys { step: what, pid: self.tid, source: std::io::Error::from_raw_os_error(-rc as i32) });
        }
        Ok(rc as u64)
    }

    /// A read-write scratch area of `len` bytes in the target, mapped on first use.
    pub fn scratch(&mut self, len: u64) -> Result<u64> {
        if let Some((addr, have)) = self.scratch {
            if have >= len {
                return Ok(addr);
            }
            self.call("munmap scratch", libc::SYS_munmap, [addr, have, 0, 0, 0, 0])?;
            self.scratch = None;
        }
        let len = len.div_ceil(4096) * 4096;
        let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let addr = self.call("mmap scratch", libc::SYS_mmap, [0, len, prot, flags, u64::MAX, 0])?;
        self.scratch = Some((addr, len));
        Ok(addr)
    }

    /// Maps the scratch area (`len` bytes) at `addr`, which must be free, replacing the one mapped
    /// before. During a restore the kernel's own choice of address could be one a saved mapping
    /// is about to take.
    pub fn scratch_at(&mut self, addr: u64, len: u64) -> Result<u64> {
        self.release_scratch()?;
        let len = len.div_ceil(4096) * 4096;
        let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;
        let got = self.call("mmap scratch (fixed)", libc::SYS_mmap, [addr, len, prot, flags, u64::MAX, 0])?;
        if got != addr {
            self.call("munmap scratch", libc::SYS_munmap, [got, len, 0, 0, 0, 0])?;
            return Err(EngineError::Proc { pid: self.tid, detail: format!("scratch area mapped at {got:#x}, not {addr:#x}") });
        }
        self.scratch = Some((addr, len));
        Ok(addr)
    }

    /// Writes `s` with a terminating NUL at the start of the scratch area (a path or a name for
    /// the next syscall) and returns its address.
    pub fn put_cstr(&mut self, s: &[u8]) -> Result<u64> {
        let addr = self.scratch((s.len() as u64 + 1).max(8192))?;
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s);
        v.push(0);
        self.write_mem(addr, &v)?;
        Ok(addr)
    }

    /// Writes bytes into the target's memory.
    pub fn write_mem(&self, addr: u64, data: &[u8]) -> Result<()> {
        self.mem.write_all_at(data, addr).map_err(|e| EngineError::io("write process memory", &self.mem_path, e))
    }

    /// Reads bytes from the target's memory.
    pub fn read_mem(&self, addr: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.mem.read_exact_at(&mut buf, addr).map_err(|e| EngineError::io("read process memory", &self.mem_path, e))?;
        Ok(buf)
    }

    /// Unmaps the scratch area, if one is mapped.
    pub fn release_scratch(&mut self) -> Result<()> {
        if let Some((addr, len)) = self.scratch.take() {
            self.call("munmap scratch", libc::SYS_munmap, [addr, len, 0, 0, 0, 0])?;
        }
        Ok(())
    }

    /// Ends injection without touching the registers (the caller has loaded its own).
    pub fn forget(self) {}

    /// Unmaps the scratch area (if any), restores the saved registers and re-sends any signal
    /// that arrived while injecting.
    pub fn finish(mut self) -> Result<()> {
        self.release_scratch()?;
        regs::set_regs(self.tid, &self.saved)
            .map_err(|source| EngineError::Sys { step: "restore registers", pid: self.tid, source })?;
        for sig in self.deferred.drain(..) {
            crate::sys::ptrace::tgkill(self.tid, sig)
                .map_err(|source| EngineError::Sys { step: "re-send deferred signal", pid: self.tid, source })?;
        }
        Ok(())
    }
}

/// Stops process `pid` (ptrace), runs `f` with syscalls injected into its main thread, and lets
/// it run on with its registers as they were (a syscall it was in is made again).
pub fn in_stopped_process<T>(pid: i32, f: impl FnOnce(&mut Injector) -> Result<T>) -> Result<T> {
    let frozen = crate::freeze::Frozen::freeze(pid)?;
    let mut inj = Injector::new(pid, frozen.threads()[0], find_syscall_insn(pid)?)?;
    let r = f(&mut inj);
    let regs = crate::cpu::rewind(*inj.saved_regs(), crate::cpu::Rewind::SameProcess);
    inj.set_saved_regs(regs);
    inj.finish()?;
    r
}

/// Finds a `syscall` instruction (0f 05) in the target's vDSO, for use as the injection point.
pub fn find_syscall_insn(pid: i32) -> Result<u64> {
    let maps = crate::maps::read_maps(pid)?;
    let vdso = maps
        .iter()
        .find(|m| m.path == "[vdso]")
        .ok_or_else(|| EngineError::Proc { pid, detail: "no [vdso] mapping to inject syscalls through".into() })?;
    let path = format!("/proc/{pid}/mem");
    let mem = File::open(&path).map_err(|e| EngineError::io("open process memory", path.as_ref(), e))?;
    let mut buf = vec![0u8; vdso.len() as usize];
    mem.read_exact_at(&mut buf, vdso.start).map_err(|e| EngineError::io("read vdso", path.as_ref(), e))?;
    buf.windows(2)
        .position(|w| w == [0x0f, 0x05])
        .map(|off| vdso.start + off as u64)
        .ok_or_else(|| EngineError::Proc { pid, detail: "no syscall instruction in the vDSO".into() })
}
