//! Scheduling of a thread: policy (SCHED_OTHER, BATCH, IDLE, FIFO, RR, DEADLINE, EXT), real-time
//! priority, nice value, `sched_attr` flags (reset-on-fork, reclaim, overrun), deadline
//! parameters and utilization clamps; CPU affinity; I/O priority; timer slack. All per thread;
//! read from outside where no privilege is needed (`sched_getattr`, `getpriority`,
//! `sched_getaffinity`, `ioprio_get` on the thread), the timer slack by the thread itself
//! (`PR_GET_TIMERSLACK`); set by the thread itself, late (see [`super`]'s order: the injected
//! syscalls after it then run under the thread's own policy, which may be SCHED_IDLE or a
//! deadline budget, only for the last few steps).
//!
//! Restore order: affinity first (a deadline task refuses a narrower affinity), then the policy
//! (a real-time policy keeps the nice value it is given only while the policy is a fair one, so
//! the nice value is set under SCHED_OTHER first), then utilization clamps where they differ,
//! then the I/O priority and timer slack, which the kernel derives from the policy until they are
//! set: each is set only where the restored thread's derived value differs from the saved one, so
//! a thread that never chose an I/O priority keeps following its nice value. What the kernel
//! refuses (a real-time policy without CAP_SYS_NICE or without real-time budget in the cgroup,
//! CPUs outside the cgroup's set) is reported in the restore's warnings.
use serde::{Deserialize, Serialize};

use super::{errno_text, pr};
use crate::inject::Injector;
use crate::sys::proc as sysproc;
use crate::{EngineError, Result};

/// Saved scheduling state of a thread.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sched {
    /// SCHED_* policy.
    pub policy: u32,
    /// SCHED_FLAG_* flags as `sched_getattr` reports them.
    pub flags: u64,
    /// Nice value.
    pub nice: i32,
    /// Real-time priority.
    pub priority: u32,
    /// SCHED_DEADLINE runtime, deadline and period (ns).
    pub dl: [u64; 3],
    /// Utilization clamps (min, max).
    pub util: [u32; 2],
    /// CPU affinity mask (as `sched_getaffinity` returns it).
    pub affinity: Vec<u8>,
    /// `ioprio_get` value (class << 13 | data).
    pub ioprio: u32,
    /// Timer slack, ns.
    pub timer_slack: u64,
}

const SCHED_ATTR_SIZE: usize = 56;
const SCHED_OTHER: u32 = 0;
const SCHED_BATCH: u32 = 3;
const SCHED_IDLE: u32 = 5;
/// Flags `sched_setattr` takes as part of the policy: reset-on-fork, reclaim, DL overrun.
const SETTABLE_FLAGS: u64 = 0x7;
const SCHED_FLAG_KEEP_ALL: u64 = 0x8 | 0x10;
const SCHED_FLAG_UTIL_CLAMP: u64 = 0x20 | 0x40;
const IOPRIO_WHO_PROCESS: u64 = 1;

impl Sched {
    fn attr_bytes(&self, policy: u32, flags: u64, nice: i32) -> Vec<u8> {
        let mut b = Vec::with_capacity(SCHED_ATTR_SIZE);
        b.extend_from_slice(&(SCHED_ATTR_SIZE as u32).to_le_bytes());
        b.extend_from_slice(&policy.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&nice.to_le_bytes());
        b.extend_from_slice(&self.priority.to_le_bytes());
        for v in self.dl {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&self.util[0].to_le_bytes());
        b.extend_from_slice(&self.util[1].to_le_bytes());
        b
    }

    fn parse(b: &[u8]) -> Sched {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8"));
        Sched {
            policy: u32_at(4),
            flags: u64_at(8),
            nice: u32_at(16) as i32,
            priority: u32_at(20),
            dl: [u64_at(24), u64_at(32), u64_at(40)],
            util: [u32_at(48), u32_at(52)],
            ..Default::default()
        }
    }

    /// Reads the scheduling state of the stopped thread `inj` drives. What another process may
    /// read without privilege is read from outside (a thread under SCHED_IDLE or a deadline
    /// budget runs each injected syscall only when the scheduler lets it); the timer slack is
    /// asked of the thread.
    pub fn save(inj: &mut Injector) -> Result<Sched> {
        let tid = inj.tid();
        let sys = |step: &'static str| move |source| EngineError::Sys { step, pid: tid, source };
        let mut s = Sched::parse(&sysproc::sched_getattr(tid, SCHED_ATTR_SIZE).map_err(sys("sched_getattr"))?);
        // sched_getattr shows the nice value only under a fair policy.
        s.nice = sysproc::nice_of(tid).map_err(sys("getpriority"))?;
        s.affinity = sysproc::sched_getaffinity(tid).map_err(sys("sched_getaffinity"))?;
        s.ioprio = sysproc::ioprio_get(tid).map_err(sys("ioprio_get"))?;
        s.timer_slack = inj.call("prctl(PR_GET_TIMERSLACK)", libc::SYS_prctl, [pr::GET_TIMERSLACK, 0, 0, 0, 0, 0])?;
        Ok(s)
    }

    /// Sets the scheduling state in the restored thread `inj` drives (order in the module doc).
    pub fn restore(&self, inj: &mut Injector, warnings: &mut Vec<String>) -> Result<()> {
        let tid = inj.tid();
        let sys = |step: &'static str| move |source| EngineError::Sys { step, pid: tid, source };
        if !self.affinity.is_empty() && sysproc::sched_getaffinity(tid).map_err(sys("sched_getaffinity"))? != self.affinity {
            let scratch = inj.scratch(4096)?;
            inj.write_mem(scratch, &self.affinity)?;
            let rc = inj.syscall(libc::SYS_sched_setaffinity, [0, self.affinity.len() as u64, scratch, 0, 0, 0])?;
            if rc < 0 {
                warnings.push(format!("thread {tid}: CPU affinity not restored: {}", errno_text(rc)));
            }
        }
        let fair = matches!(self.policy, SCHED_OTHER | SCHED_BATCH | SCHED_IDLE);
        let mut steps = Vec::new();
        if !fair {
            // The nice value a real-time thread would have again under a fair policy.
            steps.push(Sched { priority: 0, dl: [0; 3], ..self.clone() }.attr_bytes(SCHED_OTHER, 0, self.nice));
        }
        steps.push(self.attr_bytes(self.policy, self.flags & SETTABLE_FLAGS, self.nice));
        for attr in steps {
            let scratch = inj.scratch(4096)?;
            let mut attr = attr;
            attr[48..56].fill(0); // clamps are set below, only where they differ
            inj.write_mem(scratch, &attr)?;
            let rc = inj.syscall(libc::SYS_sched_setattr, [0, scratch, 0, 0, 0, 0])?;
            if rc < 0 {
                warnings.push(format!(
                    "thread {tid}: scheduling policy {} priority {} nice {} not restored: {}",
                    self.policy,
                    self.priority,
                    self.nice,
                    errno_text(rc)
                ));
                break;
            }
        }
        let now = Sched::parse(&sysproc::sched_getattr(tid, SCHED_ATTR_SIZE).map_err(sys("sched_getattr"))?);
        if now.util != self.util {
            let scratch = inj.scratch(4096)?;
            inj.write_mem(scratch, &self.attr_bytes(self.policy, SCHED_FLAG_KEEP_ALL | SCHED_FLAG_UTIL_CLAMP, self.nice))?;
            let rc = inj.syscall(libc::SYS_sched_setattr, [0, scratch, 0, 0, 0, 0])?;
            if rc < 0 {
                warnings.push(format!("thread {tid}: utilization clamps {:?} not restored: {}", self.util, errno_text(rc)));
            }
        }
        if sysproc::ioprio_get(tid).map_err(sys("ioprio_get"))? != self.ioprio {
            let rc = inj.syscall(libc::SYS_ioprio_set, [IOPRIO_WHO_PROCESS, 0, u64::from(self.ioprio), 0, 0, 0])?;
            if rc < 0 {
                warnings.push(format!(
                    "thread {tid}: I/O priority class {} level {} not restored: {}",
                    self.ioprio >> 13,
                    self.ioprio & 0x1fff,
                    errno_text(rc)
                ));
            }
        }
        let slack = inj.call("prctl(PR_GET_TIMERSLACK)", libc::SYS_prctl, [pr::GET_TIMERSLACK, 0, 0, 0, 0, 0])?;
        if slack != self.timer_slack && self.timer_slack != 0 {
            inj.call("prctl(PR_SET_TIMERSLACK)", libc::SYS_prctl, [pr::SET_TIMERSLACK, self.timer_slack, 0, 0, 0, 0])?;
        }
        Ok(())
    }
}
