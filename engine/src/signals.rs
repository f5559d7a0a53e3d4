//! Process-wide signal state: the handler table (read and written with `rt_sigaction` inside the
//! process) and the shared queue of pending signals. Per-thread masks, queues and alternate stacks
//! are in [`crate::cpu`].
use serde::{Deserialize, Serialize};

use crate::inject::Injector;
use crate::sys::regs;
use crate::{EngineError, Result};

/// The kernel's `struct sigaction` as `rt_sigaction` takes it on x86-64.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sigaction {
    /// Handler address, or SIG_DFL (0) / SIG_IGN (1).
    pub handler: u64,
    /// SA_* flags.
    pub flags: u64,
    /// sa_restorer.
    pub restorer: u64,
    /// Signals blocked while the handler runs.
    pub mask: u64,
}

impl Sigaction {
    fn to_bytes(self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[0..8].copy_from_slice(&self.handler.to_le_bytes());
        b[8..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.restorer.to_le_bytes());
        b[24..32].copy_from_slice(&self.mask.to_le_bytes());
        b
    }
    fn from_bytes(b: &[u8]) -> Self {
        let w = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Sigaction { handler: w(0), flags: w(8), restorer: w(16), mask: w(24) }
    }
}

/// Saved signal state of a process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalState {
    /// (signal number, action) for every signal whose action is not the default.
    pub actions: Vec<(i32, Sigaction)>,
    /// Signals queued for the whole process (raw siginfo).
    pub shared_pending: Vec<Vec<u8>>,
}

fn catchable(sig: i32) -> bool {
    sig != libc::SIGKILL && sig != libc::SIGSTOP
}

impl SignalState {
    /// Reads the handler table through `inj` and the shared queue through ptrace. Only the
    /// signals that /proc/PID/status shows caught or ignored are asked for (a signal at its
    /// default has nothing to save), and SIGCHLD, whose flags matter even at the default.
    pub fn save(inj: &mut Injector, tid: i32) -> Result<SignalState> {
        let scratch = inj.scratch(4096)?;
        let mut actions = Vec::new();
        let status = std::fs::read_to_string(format!("/proc/{tid}/status")).unwrap_or_default();
        let mask = |key: &str| {
            status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        };
        let set = match (mask("SigIgn:"), mask("SigCgt:")) {
            (Some(i), Some(c)) => i | c | 1 << (libc::SIGCHLD - 1),
            _ => u64::MAX,
        };
        for sig in (1..=64).filter(|s| catchable(*s) && set & (1 << (s - 1)) != 0) {
            inj.call("rt_sigaction (read)", libc::SYS_rt_sigaction, [sig as u64, 0, scratch, 8, 0, 0])?;
            let act = Sigaction::from_bytes(&inj.read_mem(scratch, 32)?);
            if act != Sigaction::default() {
                actions.push((sig, act));
            }
        }
        let shared_pending = regs::peek_siginfo(tid, true)
            .map_err(|source| EngineError::Sys { step: "read shared pending signals", pid: tid, source })?
            .iter()
            .map(|s| s.to_vec())
            .collect();
        Ok(SignalState { actions, shared_pending })
    }

    /// Installs the handler table in the process being restored: saved actions, and the default
    /// for every other signal (the restorer's own dispositions must not leak in).
    pub fn restore_actions(&self, inj: &mut Injector) -> Result<()> {
        let scratch = inj.scratch(4096)?;
        for sig in (1..=64).filter(|s| catchable(*s)) {
            let act = self.actions.iter().find(|(s, _)| *s == sig).map(|(_, a)| *a).unwrap_or_default();
            inj.write_mem(scratch, &act.to_bytes())?;
            inj.call("rt_sigaction (install)", libc::SYS_rt_sigaction, [sig as u64, scratch, 0, 8, 0, 0])?;
        }
        Ok(())
    }
}

/// Queues saved signals again: `tid` for a thread's own queue, or the process with `shared`.
pub fn requeue(inj: &mut Injector, tgid: i32, tid: i32, infos: &[Vec<u8>], shared: bool) -> Result<()> {
    let scratch = inj.scratch(4096)?;
    for info in infos {
        inj.write_mem(scratch, info)?;
        let sig = i32::from_le_bytes(info[0..4].try_into().expect("4 bytes"));
        if shared {
            inj.call("rt_sigqueueinfo", libc::SYS_rt_sigqueueinfo, [tgid as u64, sig as u64, scratch, 0, 0, 0])?;
        } else {
            inj.call(
                "rt_tgsigqueueinfo",
                libc::SYS_rt_tgsigqueueinfo,
                [tgid as u64, tid as u64, sig as u64, scratch, 0, 0],
            )?;
        }
    }
    Ok(())
}
