//! nftables in-process: `libnftables` (package `libnftables1`, which the `nft` command itself
//! uses), loaded at run time with `dlopen`, so that a network lock costs a netlink transaction
//! instead of starting the `nft` program (tens of milliseconds on a loaded machine). A script runs
//! in a network namespace on a short-lived thread that entered it (the library's netlink socket is
//! made by that thread, so it talks to that namespace). When the library cannot be loaded, the
//! caller falls back to the `nft` command ([`run_in_netns`] answers `None`).
//!
//! The library keeps process-wide state it sets up on first use without a lock, so every call
//! here is serialized; each script gets a context of its own, freed after it.
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Mutex, OnceLock};

type NewFn = unsafe extern "C" fn(u32) -> *mut c_void;
type FreeFn = unsafe extern "C" fn(*mut c_void);
type BufferFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type GetBufferFn = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type RunFn = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;

/// The functions of libnftables Zap calls.
struct Lib {
    new: NewFn,
    free: FreeFn,
    buffer_output: BufferFn,
    buffer_error: BufferFn,
    error_buffer: GetBufferFn,
    run: RunFn,
}

static LIB: OnceLock<Option<Lib>> = OnceLock::new();
static CALLS: Mutex<()> = Mutex::new(());

fn load() -> Option<Lib> {
    let name = c"libnftables.so.1";
    // SAFETY: dlopen takes a NUL-terminated name; the handle is kept for the life of the process
    // (never dlclosed), so the function pointers taken from it stay valid.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return None;
    }
    let sym = |s: &CStr| -> Option<*mut c_void> {
        // SAFETY: handle is a live dlopen handle and s is NUL-terminated.
        let p = unsafe { libc::dlsym(handle, s.as_ptr()) };
        (!p.is_null()).then_some(p)
    };
    // SAFETY: each symbol is the libnftables function of that name, whose C signature the type
    // it is turned into matches (nftables/libnftables.h).
    unsafe {
        Some(Lib {
            new: std::mem::transmute::<*mut c_void, NewFn>(sym(c"nft_ctx_new")?),
            free: std::mem::transmute::<*mut c_void, FreeFn>(sym(c"nft_ctx_free")?),
            buffer_output: std::mem::transmute::<*mut c_void, BufferFn>(sym(c"nft_ctx_buffer_output")?),
            buffer_error: std::mem::transmute::<*mut c_void, BufferFn>(sym(c"nft_ctx_buffer_error")?),
            error_buffer: std::mem::transmute::<*mut c_void, GetBufferFn>(sym(c"nft_ctx_get_error_buffer")?),
            run: std::mem::transmute::<*mut c_void, RunFn>(sym(c"nft_run_cmd_from_buffer")?),
        })
    }
}

/// A libnftables context, made on a thread inside one network namespace (its netlink socket
/// belongs to that namespace). Closing that socket costs the kernel a grace period (15-25 ms
/// measured), so the context is freed on a thread of its own when dropped, off the caller's path.
pub struct Nft {
    ctx: *mut c_void,
    lib: &'static Lib,
}

// SAFETY: the context is used by one thread at a time (every use holds CALLS), and libnftables
// keeps no thread-local state in it.
unsafe impl Send for Nft {}

fn in_netns<T: Send>(netns: &OwnedFd, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    super::ns::in_namespaces(&[(netns.as_fd(), libc::CLONE_NEWNET)], false, f)
}

/// The lowest fd number free in this process (the one the library's next socket gets).
fn lowest_free_fd() -> io::Result<i32> {
    // SAFETY: fcntl takes integers; the duplicate of fd 0 it makes (numbered at the lowest free
    // fd) is closed at once.
    let fd = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        // No fd 0 to duplicate: it is itself the lowest free one.
        return Ok(0);
    }
    // SAFETY: fd was just made by fcntl and is owned by no one else.
    unsafe { libc::close(fd) };
    Ok(fd)
}

/// libnftables waits on its netlink socket with `select()`, whose fd sets end at 1024 (a higher
/// fd aborts the whole process): fails when the library's socket would get such a number.
fn select_can_take_next_fd() -> io::Result<()> {
    // A margin for the few descriptors the library opens besides.
    const LIMIT: i32 = 1024 - 16;
    match lowest_free_fd()? {
        n if n >= LIMIT => Err(io::Error::other(format!(
            "libnftables waits with select(), which cannot take fd {n} (this process holds over {LIMIT} descriptors)"
        ))),
        _ => Ok(()),
    }
}

impl Nft {
    /// A context for the network namespace `netns` (an open `/proc/PID/ns/net`). `None` when
    /// libnftables cannot be loaded, or cannot be used by this process (its fds reach
    /// `select()`'s limit): the caller runs the `nft` command instead.
    pub fn new(netns: &OwnedFd) -> Option<io::Result<Nft>> {
        let lib = LIB.get_or_init(load).as_ref()?;
        if let Err(e) = select_can_take_next_fd() {
            tracing::debug!(error = %e, "libnftables not used in this process");
            return None;
        }
        Some(in_netns(netns, || {
            let _serial = CALLS.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: NFT_CTX_DEFAULT (0) is a valid flag set; the context is checked for null and
            // owned by the Nft made of it.
            let ctx = unsafe { (lib.new)(0) };
            if ctx.is_null() {
                return Err(io::Error::other("nft_ctx_new failed"));
            }
            // SAFETY: ctx is a live context: output and errors go to its buffers, not stdout.
            unsafe {
                (lib.buffer_output)(ctx);
                (lib.buffer_error)(ctx);
            }
            Ok(Nft { ctx, lib })
        }))
    }

    /// Runs the nft script `script` (in the namespace the context was made for, entered again by a
    /// thread, in case the library opens its socket again): Ok(Err(message)) when nftables
    /// refuses it.
    pub fn run(&self, netns: &OwnedFd, script: &str) -> io::Result<Result<(), String>> {
        let script = CString::new(script).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "nft script with a NUL byte"))?;
        let this = SendPtr(self.ctx);
        let lib = self.lib;
        select_can_take_next_fd()?;
        in_netns(netns, move || {
            let ctx = this;
            let _serial = CALLS.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: ctx.0 is a live context (freed only when the Nft is dropped, which cannot
            // happen during this borrow); script is NUL-terminated; the error buffer is a
            // NUL-terminated string owned by the context, copied at once.
            unsafe {
                let rc = (lib.run)(ctx.0, script.as_ptr());
                if rc == 0 {
                    return Ok(Ok(()));
                }
                let e = (lib.error_buffer)(ctx.0);
                Ok(Err(if e.is_null() { format!("error {rc}") } else { CStr::from_ptr(e).to_string_lossy().trim().to_string() }))
            }
        })
    }
}

/// A context pointer moved to the thread that uses it.
struct SendPtr(*mut c_void);
// SAFETY: see Nft: the pointer is used by one thread at a time, under CALLS.
unsafe impl Send for SendPtr {}

impl Drop for Nft {
    fn drop(&mut self) {
        let ctx = SendPtr(self.ctx);
        let lib = self.lib;
        std::thread::spawn(move || {
            let ctx = ctx;
            // The library's interface cache is global: freed under CALLS too.
            let _serial = CALLS.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: the context is live and freed exactly once, here; nobody uses it after.
            unsafe { (lib.free)(ctx.0) };
        });
    }
}

/// Runs the nft script `script` once in the network namespace `netns`, in process. `None` when
/// libnftables cannot be loaded; Some(Ok(Err(message))) when nftables refuses the script.
pub fn run_in_netns(netns: &OwnedFd, script: &str) -> Option<io::Result<Result<(), String>>> {
    Some(Nft::new(netns)?.and_then(|nft| nft.run(netns, script)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process whose next fd would pass select()'s limit does not hand it to the library (which
    /// would abort it): the check says so, naming the fd.
    #[test]
    fn a_process_near_selects_limit_is_told_not_to_use_the_library() {
        let mut held = Vec::new();
        while lowest_free_fd().unwrap() < 1024 {
            held.push(std::fs::File::open("/dev/null").unwrap());
        }
        let err = select_can_take_next_fd().unwrap_err().to_string();
        assert!(err.contains("select()") && err.contains("cannot take fd"), "{err}");
        drop(held);
        select_can_take_next_fd().unwrap();
    }
}
