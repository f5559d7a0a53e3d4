//! Socket syscalls on sockets duplicated into Zap (`pidfd_getfd`), and a `sock_diag` dump of
//! the unix sockets of a network namespace (for their peers, which no other interface shows).
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// An integer socket option.
pub fn getsockopt_int(fd: &OwnedFd, level: i32, name: i32) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid for the sizes given.
    check(unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, (&mut v as *mut libc::c_int).cast(), &mut len) })?;
    Ok(v)
}

/// Sets an integer socket option.
pub fn setsockopt_int(fd: &OwnedFd, level: i32, name: i32, v: i32) -> io::Result<()> {
    // SAFETY: v is a valid c_int of the size given.
    check(unsafe {
        libc::setsockopt(fd.as_raw_fd(), level, name, (&v as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as u32)
    })?;
    Ok(())
}

/// The raw socket address from getsockname (`peer == false`) or getpeername.
pub fn sockaddr(fd: &OwnedFd, peer: bool) -> io::Result<Vec<u8>> {
    // SAFETY: sockaddr_storage is plain data; all-zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = (&mut ss as *mut libc::sockaddr_storage).cast();
    // SAFETY: ss and len describe a buffer of the given size.
    check(unsafe { if peer { libc::getpeername(fd.as_raw_fd(), p, &mut len) } else { libc::getsockname(fd.as_raw_fd(), p, &mut len) } })?;
    // SAFETY: the kernel wrote `len` bytes (at most the buffer's size) into ss.
    let bytes = unsafe { std::slice::from_raw_parts((&ss as *const libc::sockaddr_storage).cast::<u8>(), (len as usize).min(std::mem::size_of_val(&ss))) };
    Ok(bytes.to_vec())
}

/// TCP state (`tcpi_state` of TCP_INFO).
pub fn tcp_state(fd: &OwnedFd) -> io::Result<u8> {
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: info and len describe a buffer of the given size.
    check(unsafe { libc::getsockopt(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, info.as_mut_ptr().cast(), &mut len) })?;
    Ok(info[0])
}

/// Every message queued for reading on the socket, without consuming it (MSG_PEEK with a peek
/// offset, restored afterwards). Stream sockets give one run of bytes.
pub fn peek_queue(fd: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let old = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF)?;
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 256 << 10];
    let result = loop {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK | libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EAGAIN) {
                break Ok(());
            }
            break Err(e);
        }
        if n == 0 {
            break Ok(());
        }
        out.push(buf[..n as usize].to_vec());
        if out.len() > 100_000 {
            break Err(io::Error::other("more than 100000 queued messages"));
        }
    };
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old)?;
    result.map(|()| out)
}

/// What sock_diag says about one unix socket.
#[derive(Clone, Debug, Default)]
pub struct UnixDiag {
    /// TCP-like state (10 = listening, 1 = connected, 7 = unconnected).
    pub state: u8,
    /// Inode of the peer (0 if none).
    pub peer: u32,
    /// Bound name (a path, or an abstract name starting with a NUL byte).
    pub name: Option<Vec<u8>>,
    /// Shutdown mask (1 = read, 2 = write).
    pub shutdown: u8,
}

/// Dumps every unix socket of the network namespace of process `pid`, by inode.
pub fn unix_sockets(pid: i32) -> io::Result<HashMap<u32, UnixDiag>> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this (scoped, short-lived) thread only; the fd is valid.
            check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) })?;
            unix_dump()
        })
        .join()
        .map_err(|_| io::Error::other("sock_diag thread panicked"))?
    })
}

fn unix_dump() -> io::Result<HashMap<u32, UnixDiag>> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_DUMP: u16 = 0x300;
    const UDIAG_SHOW_NAME: u32 = 1;
    const UDIAG_SHOW_PEER: u32 = 4;
    const UDIAG_SHOW_SHUTDOWN: u32 = 0x40;
    // SAFETY: socket takes integers.
    let raw = check(unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) })?;
    // SAFETY: the kernel just returned this fd; we own it.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req = Vec::with_capacity(40);
    req.extend_from_slice(&40u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.push(libc::AF_UNIX as u8);
    req.push(0);
    req.extend_from_slice(&0u16.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // all states
    req.extend_from_slice(&0u32.to_ne_bytes()); // ino
    req.extend_from_slice(&(UDIAG_SHOW_NAME | UDIAG_SHOW_PEER | UDIAG_SHOW_SHUTDOWN).to_ne_bytes());
    req.extend_from_slice(&[0xff; 8]); // no cookie
    // SAFETY: req is valid for its length.
    if unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = HashMap::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut msgs = &buf[..n as usize];
        while msgs.len() >= 16 {
            let len = u32::from_ne_bytes(msgs[0..4].try_into().expect("4")) as usize;
            let kind = u16::from_ne_bytes(msgs[4..6].try_into().expect("2"));
            if len < 16 || len > msgs.len() {
                return Err(io::Error::other("sock_diag: malformed message"));
            }
            match kind {
                3 => return Ok(out), // NLMSG_DONE
                2 => {
                    let errno = i32::from_ne_bytes(msgs[16..20].try_into().expect("4"));
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                _ => {
                    let body = &msgs[16..len];
                    if body.len() >= 16 {
                        let mut d = UnixDiag { state: body[2], ..Default::default() };
                        let ino = u32::from_ne_bytes(body[4..8].try_into().expect("4"));
                        let mut attrs = &body[16..];
                        while attrs.len() >= 4 {
                            let alen = u16::from_ne_bytes(attrs[0..2].try_into().expect("2")) as usize;
                            let atype = u16::from_ne_bytes(attrs[2..4].try_into().expect("2"));
                            if alen < 4 || alen > attrs.len() {
                                break;
                            }
                            let data = &attrs[4..alen];
                            match atype {
                                0 => d.name = Some(data.to_vec()),
                                2 if data.len() >= 4 => d.peer = u32::from_ne_bytes(data[0..4].try_into().expect("4")),
                                6 if !data.is_empty() => d.shutdown = data[0],
                                _ => {}
                            }
                            let step = (alen + 3) & !3;
                            attrs = &attrs[step.min(attrs.len())..];
                        }
                        out.insert(ino, d);
                    }
                }
            }
            let step = (len + 3) & !3;
            msgs = &msgs[step.min(msgs.len())..];
        }
    }
}

/// A socket option of `len` bytes at most, as raw bytes.
pub fn getsockopt_bytes(fd: &OwnedFd, level: i32, name: i32, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut l = len as libc::socklen_t;
    // SAFETY: buf and l describe a buffer of the given size.
    check(unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, buf.as_mut_ptr().cast(), &mut l) })?;
    buf.truncate(l as usize);
    Ok(buf)
}

/// An `ioctl` that returns an int (SIOCINQ, SIOCOUTQ, SIOCOUTQNSD).
pub fn ioctl_int(fd: &OwnedFd, req: libc::c_ulong) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: these requests write one int to the pointer given.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), req, &mut v as *mut libc::c_int) })?;
    Ok(v)
}

/// One `recv(MSG_PEEK | MSG_DONTWAIT)` of at most `len` bytes (TCP repair mode peeks a whole
/// queue this way); an empty queue gives no bytes.
pub fn peek(fd: &OwnedFd, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len.max(1)];
    // SAFETY: buf is valid for its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EAGAIN) {
            return Ok(Vec::new());
        }
        return Err(e);
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// Every datagram queued for reading on a datagram socket, with its sender's raw address, without
/// consuming any (MSG_PEEK with a peek offset, restored afterwards).
pub fn peek_datagrams(fd: &OwnedFd) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let old = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF)?;
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    let result = loop {
        // SAFETY: sockaddr_storage is plain data; all-zero is valid.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut alen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: buf, ss and alen describe buffers of the given sizes.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
                (&mut ss as *mut libc::sockaddr_storage).cast(),
                &mut alen,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            break if e.raw_os_error() == Some(libc::EAGAIN) { Ok(()) } else { Err(e) };
        }
        // SAFETY: the kernel wrote `alen` bytes (at most the buffer's size) into ss.
        let addr = unsafe { std::slice::from_raw_parts((&ss as *const libc::sockaddr_storage).cast::<u8>(), (alen as usize).min(std::mem::size_of_val(&ss))) };
        out.push((buf[..n as usize].to_vec(), addr.to_vec()));
        if out.len() > 100_000 {
            break Err(io::Error::other("more than 100000 queued datagrams"));
        }
    };
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old)?;
    result.map(|()| out)
}

/// A socket of Zap's in the network namespace `netns` (created by a short-lived thread that
/// enters it), close-on-exec.
pub fn socket_in_netns(netns: &std::fs::File, family: i32, ty: i32, proto: i32) -> io::Result<OwnedFd> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this (scoped, short-lived) thread only; the fd is valid.
            check(unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) })?;
            // SAFETY: socket takes integers.
            let raw = check(unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, proto) })?;
            // SAFETY: the kernel just returned this fd; we own it.
            Ok(unsafe { OwnedFd::from_raw_fd(raw) })
        })
        .join()
        .map_err(|_| io::Error::other("socket thread panicked"))?
    })
}

/// Sends `data` to the raw address `to` on socket `fd`.
pub fn send_to(fd: &OwnedFd, data: &[u8], to: &[u8]) -> io::Result<usize> {
    // SAFETY: data and `to` are valid for their lengths.
    let n = unsafe { libc::sendto(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), 0, to.as_ptr().cast(), to.len() as libc::socklen_t) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

