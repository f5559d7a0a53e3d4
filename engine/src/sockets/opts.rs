//! Socket options saved with every socket and set again on restore.
use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

use super::put;
use crate::inject::Injector;
use crate::sys::sock;
use crate::Result;

/// Socket options that matter to a server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SockOpts {
    /// SO_REUSEADDR.
    pub reuseaddr: bool,
    /// SO_REUSEPORT.
    pub reuseport: bool,
    /// SO_KEEPALIVE.
    pub keepalive: bool,
    /// TCP_NODELAY.
    pub nodelay: bool,
    /// IPV6_V6ONLY (IPv6 sockets only).
    pub v6only: bool,
}

/// Reads the options of the socket `fd` (a duplicate in Zap) of `family`; TCP-level ones when `tcp`.
pub(super) fn opts_of(fd: &OwnedFd, family: i32, tcp: bool) -> SockOpts {
    let get = |level, name| sock::getsockopt_int(fd, level, name).map(|v| v != 0).unwrap_or(false);
    SockOpts {
        reuseaddr: get(libc::SOL_SOCKET, libc::SO_REUSEADDR),
        reuseport: get(libc::SOL_SOCKET, libc::SO_REUSEPORT),
        keepalive: get(libc::SOL_SOCKET, libc::SO_KEEPALIVE),
        nodelay: tcp && get(libc::IPPROTO_TCP, libc::TCP_NODELAY),
        v6only: family == libc::AF_INET6 && get(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
    }
}

/// Sets the saved options `o` on the socket `fd` of the process `inj` drives.
pub(super) fn set_opts(inj: &mut Injector, fd: u64, family: i32, tcp: bool, o: &SockOpts) -> Result<()> {
    let mut set = |level: i32, name: i32, on: bool| -> Result<()> {
        if on {
            let p = put(inj, &1i32.to_ne_bytes())?;
            inj.call("setsockopt", libc::SYS_setsockopt, [fd, level as u64, name as u64, p, 4, 0])?;
        }
        Ok(())
    };
    set(libc::SOL_SOCKET, libc::SO_REUSEADDR, o.reuseaddr)?;
    set(libc::SOL_SOCKET, libc::SO_REUSEPORT, o.reuseport)?;
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, o.keepalive)?;
    set(libc::IPPROTO_TCP, libc::TCP_NODELAY, tcp && o.nodelay)?;
    set(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, family == libc::AF_INET6 && o.v6only)?;
    Ok(())
}

