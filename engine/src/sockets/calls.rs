//! Where socket options are set: in a stopped process through injected syscalls ([`Injector`]),
//! or on a socket Zap holds itself ([`Local`], a duplicate of the process's socket taken with
//! `pidfd_getfd`: options are properties of the socket, not of the fd, so setting them on Zap's
//! duplicate sets them for the process). [`super::opts::set_opts`] and
//! [`super::tcp::set_tcp_opts`] work on either.
use std::os::fd::OwnedFd;

use super::put;
use crate::inject::Injector;
use crate::sys::sock;
use crate::Result;

/// Socket calls on socket `fd` (a number in the process, or ignored for [`Local`]); each returns
/// the raw result (negative errno on failure), as an injected syscall does.
pub(super) trait SockCalls {
    /// The process (host pid) the socket belongs to, for messages.
    fn pid(&self) -> i32;
    /// `setsockopt(fd, level, name, val)`.
    fn setsockopt(&mut self, fd: u64, level: i32, name: i32, val: &[u8]) -> Result<i64>;
    /// `SO_ATTACH_FILTER` with the classic BPF instructions `filter`.
    fn attach_filter(&mut self, fd: u64, filter: &[u8]) -> Result<i64>;
    /// The index of interface `name` in the socket's network namespace.
    fn ifindex(&mut self, fd: u64, name: &str) -> Result<i64>;
}

impl SockCalls for Injector {
    fn pid(&self) -> i32 {
        self.tid()
    }

    fn setsockopt(&mut self, fd: u64, level: i32, name: i32, val: &[u8]) -> Result<i64> {
        let p = put(self, val)?;
        self.syscall(libc::SYS_setsockopt, [fd, level as u64, name as u64, p, val.len() as u64, 0])
    }

    fn attach_filter(&mut self, fd: u64, filter: &[u8]) -> Result<i64> {
        // struct sock_fprog: len (u16, padded to 8), then a pointer to the instructions.
        let scratch = self.scratch(filter.len() as u64 + 4096)?;
        self.write_mem(scratch + 16, filter)?;
        let mut prog = ((filter.len() / 8) as u16).to_ne_bytes().to_vec();
        prog.extend_from_slice(&[0; 6]);
        prog.extend_from_slice(&(scratch + 16).to_ne_bytes());
        self.write_mem(scratch, &prog)?;
        self.syscall(libc::SYS_setsockopt, [fd, libc::SOL_SOCKET as u64, libc::SO_ATTACH_FILTER as u64, scratch, 16, 0])
    }

    fn ifindex(&mut self, fd: u64, name: &str) -> Result<i64> {
        let mut req = [0u8; 40];
        let n = name.len().min(15);
        req[..n].copy_from_slice(&name.as_bytes()[..n]);
        let p = put(self, &req)?;
        let rc = self.syscall(libc::SYS_ioctl, [fd, libc::SIOCGIFINDEX, p, 0, 0, 0])?;
        if rc < 0 {
            return Ok(rc);
        }
        let out = self.read_mem(p + 16, 4)?;
        Ok(i64::from(i32::from_ne_bytes(out[..4].try_into().expect("4"))))
    }
}

/// A socket of a process (host pid `pid`) that Zap holds a duplicate of.
pub(super) struct Local<'a> {
    /// Zap's duplicate.
    pub fd: &'a OwnedFd,
    /// The process.
    pub pid: i32,
}

fn raw(r: std::io::Result<i64>) -> i64 {
    r.unwrap_or_else(|e| -i64::from(e.raw_os_error().unwrap_or(libc::EIO)))
}

impl SockCalls for Local<'_> {
    fn pid(&self) -> i32 {
        self.pid
    }

    fn setsockopt(&mut self, _fd: u64, level: i32, name: i32, val: &[u8]) -> Result<i64> {
        Ok(raw(sock::setsockopt_bytes(self.fd, level, name, val).map(|()| 0)))
    }

    fn attach_filter(&mut self, _fd: u64, filter: &[u8]) -> Result<i64> {
        Ok(raw(sock::attach_filter(self.fd, filter).map(|()| 0)))
    }

    fn ifindex(&mut self, _fd: u64, name: &str) -> Result<i64> {
        Ok(raw(sock::ifindex(self.fd, name).map(i64::from)))
    }
}
