//! Helpers shared by the engine's process tests: build our C programs, start them with only the
//! fds they need, and clean up what a test started.
#![allow(dead_code)]
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Compiles `tests/progs/NAME.c` into `dir` with gcc; `None` (and a SKIP line) without gcc.
pub fn build(name: &str, dir: &Path, extra: &[&str]) -> Option<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/progs").join(format!("{name}.c"));
    let out = dir.join(name);
    let status = Command::new("gcc").args(["-O1", "-o"]).arg(&out).arg(&src).args(extra).status();
    match status {
        Ok(s) if s.success() => Some(out),
        Ok(s) => panic!("gcc failed on {}: {s}", src.display()),
        Err(e) => {
            eprintln!("SKIP: gcc not available ({e})");
            None
        }
    }
}

/// A process this test started; killed and reaped on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `prog args` with stdin/stdout/stderr on /dev/null and no other inherited fd.
pub fn start(prog: &Path, args: &[&str]) -> Proc {
    let mut cmd = Command::new(prog);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: close_range is async-signal-safe; it only closes fds in the child before exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    Proc(cmd.spawn().expect("spawn test program"))
}

/// A restored process and its namespace init; both are killed and reaped on drop.
pub struct RestoredProc(pub zap_engine::process::Restored);

impl Drop for RestoredProc {
    fn drop(&mut self) {
        // SAFETY: kill takes integers; these pids are processes this test restored.
        unsafe {
            libc::kill(self.0.pid, libc::SIGKILL);
            libc::kill(self.0.init_pid, libc::SIGKILL);
        }
        let mut status = 0;
        // SAFETY: the init is our child; status is a valid i32.
        unsafe { libc::waitpid(self.0.init_pid, &mut status, 0) };
    }
}

/// Waits until `cond` holds, up to `limit`.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Waits until the process `pid` is gone (dead and reaped, or a zombie).
pub fn wait_gone(pid: i32) {
    wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()) == Some("Z"))
            .unwrap_or(true)
    });
}
