//! Socket syscalls on sockets duplicated into Zap (`pidfd_getfd`): options, addresses, peeks at
//! queued messages with their fds and credentials, the kernel's own file handle of a bound unix
//! socket; sockets made in a process's network namespace from a short-lived thread; and a
//! `sock_diag` dump of the unix sockets of a network namespace (for their peers, backlogs and
//! files, which no other interface shows), and an `inet_diag` dump of its TCP sockets (most of
//! what saving a TCP socket reads, for all of them at once: [`tcp_sockets`]).
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

/// A socket option of up to `cap` bytes, as the kernel returns it.
pub fn getsockopt_bytes(fd: &OwnedFd, level: i32, name: i32, cap: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; cap];
    let mut len = cap as libc::socklen_t;
    // SAFETY: buf and len describe a buffer of the given size.
    check(unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, buf.as_mut_ptr().cast(), &mut len) })?;
    buf.truncate((len as usize).min(cap));
    Ok(buf)
}

/// A new socket (close-on-exec) in the calling thread's network namespace.
pub fn socket(family: i32, sock_type: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: socket takes integers.
    let raw = check(unsafe { libc::socket(family, sock_type | libc::SOCK_CLOEXEC, protocol) })?;
    // SAFETY: the kernel just returned this fd; we own it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Runs `f` on a short-lived thread that has joined the network namespace of process `pid`
/// (sockets it creates belong to that namespace, and /proc/sys/net shows that namespace).
pub fn in_netns<T: Send>(pid: i32, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this (scoped, short-lived) thread only; the fd is valid.
            check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) })?;
            f()
        })
        .join()
        .map_err(|_| io::Error::other("network namespace thread panicked"))?
    })
}

/// An ioctl on a socket whose argument is the buffer `arg` (read and written by the kernel).
pub fn ioctl_bytes(fd: &OwnedFd, request: libc::c_ulong, arg: &mut [u8]) -> io::Result<()> {
    // SAFETY: arg is valid for its length, which covers the request's struct.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), request, arg.as_mut_ptr()) })?;
    Ok(())
}

/// The path of the socket file of a unix socket bound to a path, from an `O_PATH` fd the kernel
/// opens on it (SIOCUNIXFILE, Linux 6.x; needs CAP_NET_ADMIN), as `readlink` shows it (with
/// " (deleted)" when the file was removed).
pub fn unix_file(fd: &OwnedFd) -> io::Result<String> {
    const SIOCUNIXFILE: libc::c_ulong = 0x89E0;
    // SAFETY: SIOCUNIXFILE takes no argument and returns a new fd.
    let raw = check(unsafe { libc::ioctl(fd.as_raw_fd(), SIOCUNIXFILE, 0) })?;
    // SAFETY: the kernel just returned this fd; we own it.
    let file = unsafe { OwnedFd::from_raw_fd(raw) };
    Ok(std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))?.to_string_lossy().into_owned())
}

/// Bytes queued for reading (SIOCINQ).
pub fn inq(fd: &OwnedFd) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut v) })?;
    Ok(v)
}

/// True when the socket has a pending error (POLLERR), found without clearing it (SO_ERROR would).
pub fn has_pending_error(fd: &OwnedFd) -> bool {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: 0, revents: 0 };
    // SAFETY: p is one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & libc::POLLERR != 0
}

/// What `SO_GET_FILTER` answers: `Ok(None)` without a filter, the classic BPF instructions
/// (8 bytes each) of an attached classic filter, or `EACCES` for an eBPF program (which cannot
/// be read back).
pub fn socket_filter(fd: &OwnedFd) -> io::Result<Option<Vec<u8>>> {
    // With length 0 the kernel answers the number of instructions in the length.
    let mut len: libc::socklen_t = 0;
    // SAFETY: a zero-length buffer: the kernel writes only len.
    check(unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, std::ptr::null_mut(), &mut len) })?;
    if len == 0 {
        return Ok(None);
    }
    // The length is counted in instructions (struct sock_filter, 8 bytes) both ways.
    let mut buf = vec![0u8; len as usize * 8];
    let mut n = len;
    // SAFETY: buf holds n instructions of 8 bytes.
    check(unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, buf.as_mut_ptr().cast(), &mut n) })?;
    buf.truncate(n as usize * 8);
    Ok(Some(buf))
}

/// The source filter of the multicast group `group` (a raw sockaddr) on interface `ifindex` as
/// socket `fd` joined it (`MCAST_MSFILTER` at `level`, IPPROTO_IP or IPPROTO_IPV6): its mode
/// (MCAST_INCLUDE or MCAST_EXCLUDE) and sources (raw sockaddrs), or None when the socket is not a
/// member.
pub fn multicast_filter(fd: &OwnedFd, level: i32, ifindex: u32, group: &[u8]) -> io::Result<Option<(u32, Vec<Vec<u8>>)>> {
    // struct group_filter: interface (u32, padded to 8), group (sockaddr_storage, 128),
    // fmode (u32), numsrc (u32), then numsrc sockaddr_storage.
    const HEAD: usize = 144;
    const SS: usize = 128;
    let mut cap = 16usize;
    loop {
        let mut buf = vec![0u8; HEAD + cap * SS];
        buf[0..4].copy_from_slice(&ifindex.to_ne_bytes());
        buf[8..8 + group.len().min(SS)].copy_from_slice(&group[..group.len().min(SS)]);
        buf[140..144].copy_from_slice(&(cap as u32).to_ne_bytes());
        let mut len = buf.len() as libc::socklen_t;
        // SAFETY: buf and len describe a buffer of the given size.
        let rc = unsafe { libc::getsockopt(fd.as_raw_fd(), level, libc::MCAST_MSFILTER, buf.as_mut_ptr().cast(), &mut len) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EADDRNOTAVAIL) | Some(libc::EINVAL) | Some(libc::ENODEV) => Ok(None),
                _ => Err(e),
            };
        }
        let fmode = u32::from_ne_bytes(buf[136..140].try_into().expect("4"));
        let n = u32::from_ne_bytes(buf[140..144].try_into().expect("4")) as usize;
        if n > cap {
            cap = n;
            continue;
        }
        let sources = (0..n).map(|i| buf[HEAD + i * SS..HEAD + (i + 1) * SS].to_vec()).collect();
        return Ok(Some((fmode, sources)));
    }
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

/// The owner of a socket: its inode's uid (`fstat`), which is the socket's `sk_uid` (the uid
/// `/proc/net/*` and sock_diag show, and netfilter's `meta skuid` matches): the fsuid of whoever
/// made it.
pub fn owner_uid(fd: &OwnedFd) -> io::Result<u32> {
    // SAFETY: stat is plain data; all-zero is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is a valid descriptor and st a buffer of the right type.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st.st_uid)
}

/// TCP state (`tcpi_state` of TCP_INFO).
pub fn tcp_state(fd: &OwnedFd) -> io::Result<u8> {
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: info and len describe a buffer of the given size.
    check(unsafe { libc::getsockopt(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, info.as_mut_ptr().cast(), &mut len) })?;
    Ok(info[0])
}

/// One message (or run of stream bytes) queued on a unix socket, as a peek saw it: its bytes,
/// copies of the fds it carries (installed in Zap by the peek), the sender's credentials as
/// `SCM_CREDENTIALS` shows them (pid in Zap's namespace, uid, gid), and the sender's address
/// (raw sockaddr; empty for an unbound sender).
#[derive(Debug)]
pub struct Peeked {
    /// The bytes.
    pub data: Vec<u8>,
    /// The passed fds (copies owned by Zap).
    pub fds: Vec<OwnedFd>,
    /// (pid, uid, gid) of the sender.
    pub creds: Option<(i32, u32, u32)>,
    /// The sender's address.
    pub from: Vec<u8>,
}

const SO_PEEK_OFF: i32 = 42;

/// One `recvmsg(MSG_PEEK)` of up to `cap` bytes at peek offset `off`; None when nothing more is
/// queued. With `trunc`, the length returned is the whole message's (datagrams).
fn peek_at(fd: &OwnedFd, off: i32, cap: usize, trunc: bool) -> io::Result<Option<(usize, Peeked)>> {
    setsockopt_int(fd, libc::SOL_SOCKET, SO_PEEK_OFF, off)?;
    let mut data = vec![0u8; cap.max(1)];
    let mut name = [0u8; 128];
    // Room for SCM_RIGHTS with SCM_MAX_FD fds and SCM_CREDENTIALS (and SCM_PIDFD, SCM_SECURITY).
    let mut control = vec![0u8; 64 + SCM_MAX_FD * 4 + 256];
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: cap };
    // SAFETY: msghdr is plain data; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = name.as_mut_ptr().cast();
    msg.msg_namelen = name.len() as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len();
    let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC | if trunc { libc::MSG_TRUNC } else { 0 };
    // SAFETY: msg points at buffers (name, iov, control) that live through the call.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::EAGAIN) { Ok(None) } else { Err(e) };
    }
    let mut fds = Vec::new();
    let mut creds = None;
    let mut cmsg_seen = false;
    // SAFETY: msg was filled by the kernel; CMSG_* walk its control buffer within controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            cmsg_seen = true;
            let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
            let p = libc::CMSG_DATA(c);
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                for i in 0..len / 4 {
                    let raw = std::ptr::read_unaligned(p.add(4 * i).cast::<i32>());
                    fds.push(OwnedFd::from_raw_fd(raw));
                }
            } else if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_CREDENTIALS && len >= 12 {
                let u = std::ptr::read_unaligned(p.cast::<libc::ucred>());
                creds = Some((u.pid, u.uid, u.gid));
            } else if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == 0x4b {
                // SCM_PIDFD (the socket has SO_PASSPIDFD): a pidfd installed in Zap; closed.
                drop(OwnedFd::from_raw_fd(std::ptr::read_unaligned(p.cast::<i32>())));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("control data of a queued message truncated (fds passed beyond Zap's fd limit?)"));
    }
    // Datagrams: without a message there is no control data, so a zero-length read with
    // credentials is an empty message and one without is the end of the queue (EOF of a shut-down
    // socket). Streams have no empty messages.
    if n == 0 && (!trunc || !cmsg_seen) {
        return Ok(None);
    }
    data.truncate((n as usize).min(cap));
    let from = name[..(msg.msg_namelen as usize).min(name.len())].to_vec();
    Ok(Some((n as usize, Peeked { data, fds, creds, from })))
}

/// Every message queued for reading on unix socket `fd` (a duplicate in Zap), without consuming
/// any: peeked with a peek offset, with `SO_PASSCRED` on to see each sender's credentials (both
/// put back afterwards). Datagrams and seqpackets come one message each; stream bytes come in
/// runs that end where the sender's credentials change and where a run carrying fds ends, the
/// fds attached to the part of the run that came in their `sendmsg` (found by bisection).
/// A stream with a pending error is peeked only up to its queued bytes (a read that finds the
/// queue empty would take the error).
pub fn peek_messages(fd: &OwnedFd, stream: bool) -> io::Result<Vec<Peeked>> {
    let old_off = getsockopt_int(fd, libc::SOL_SOCKET, SO_PEEK_OFF)?;
    let old_cred = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PASSCRED)?;
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PASSCRED, 1)?;
    let limit = if stream && has_pending_error(fd) { Some(inq(fd)? as usize) } else { None };
    let result = if limit == Some(0) { Ok(Vec::new()) } else { peek_all(fd, stream, limit) };
    let r1 = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PASSCRED, old_cred);
    let r2 = setsockopt_int(fd, libc::SOL_SOCKET, SO_PEEK_OFF, old_off);
    let out = result?;
    r1?;
    r2?;
    Ok(out)
}

fn peek_all(fd: &OwnedFd, stream: bool, limit: Option<usize>) -> io::Result<Vec<Peeked>> {
    const CHUNK: usize = 256 << 10;
    let mut out: Vec<Peeked> = Vec::new();
    let mut off: usize = 0;
    loop {
        if limit.is_some_and(|l| off >= l) {
            return Ok(out);
        }
        if out.len() > 100_000 || off > i32::MAX as usize / 2 {
            return Err(io::Error::other("more than 100000 messages or 1 GiB queued"));
        }
        let cap = limit.map(|l| (l - off).min(CHUNK)).unwrap_or(CHUNK);
        let Some((n, mut m)) = peek_at(fd, off as i32, cap, !stream)? else { return Ok(out) };
        if !stream && n > CHUNK {
            // A datagram larger than the buffer: peek it again whole.
            match peek_at(fd, off as i32, n, true)? {
                Some((_, whole)) => m = whole,
                None => return Err(io::Error::other("queued datagram vanished while peeking")),
            }
        }
        if stream && !m.fds.is_empty() && m.data.len() > 1 {
            // The fds belong to the last buffer of the run; find where it starts: a peek of k
            // bytes returns them exactly when it reaches into that buffer.
            let (mut lo, mut hi) = (1usize, m.data.len());
            while lo < hi {
                let mid = (lo + hi) / 2;
                match peek_at(fd, off as i32, mid, false)? {
                    Some((_, p)) if !p.fds.is_empty() => hi = mid,
                    Some(_) => lo = mid + 1,
                    None => return Err(io::Error::other("queued stream data vanished while peeking")),
                }
            }
            let start = lo - 1;
            if start > 0 {
                let tail = m.data.split_off(start);
                let head = Peeked { data: std::mem::replace(&mut m.data, tail), fds: Vec::new(), creds: m.creds, from: m.from.clone() };
                off += head.data.len();
                out.push(head);
            }
        }
        off += m.data.len();
        out.push(m);
    }
}

/// What sock_diag says about one unix socket.
#[derive(Clone, Debug, Default)]
pub struct UnixDiag {
    /// TCP-like state (10 = listening, 1 = connected, 7 = unconnected).
    pub state: u8,
    /// SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET.
    pub sock_type: u8,
    /// Inode of the peer (0 if none, or if the peer was closed or is a connection not yet
    /// accepted).
    pub peer: u32,
    /// Whether sock_diag reported a peer at all (a peer of inode 0 is one that was closed or an
    /// embryo in a listener's backlog).
    pub has_peer: bool,
    /// Bound name (a path, or an abstract name starting with a NUL byte).
    pub name: Option<Vec<u8>>,
    /// Shutdown mask (1 = read, 2 = write).
    pub shutdown: u8,
    /// For a listener: the inodes of the clients whose connections wait in its backlog.
    pub icons: Vec<u32>,
    /// Receive and send queue lengths (for a listener: backlog length and its limit).
    pub rqlen: (u32, u32),
    /// Inode and device (kernel encoding) of the socket file of a socket bound to a path.
    pub vfs: Option<(u32, u32)>,
}

/// Dumps every unix socket of the network namespace of process `pid`, by inode.
pub fn unix_sockets(pid: i32) -> io::Result<HashMap<u32, UnixDiag>> {
    in_netns(pid, unix_dump)
}

fn unix_dump() -> io::Result<HashMap<u32, UnixDiag>> {
    const UDIAG_SHOW_NAME: u32 = 1;
    const UDIAG_SHOW_VFS: u32 = 2;
    const UDIAG_SHOW_PEER: u32 = 4;
    const UDIAG_SHOW_ICONS: u32 = 8;
    const UDIAG_SHOW_RQLEN: u32 = 0x10;
    const UDIAG_SHOW_SHUTDOWN: u32 = 0x40;
    // struct unix_diag_req: family, protocol, pad, states, ino, show, cookie.
    let mut req = Vec::with_capacity(24);
    req.push(libc::AF_UNIX as u8);
    req.push(0);
    req.extend_from_slice(&0u16.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // all states
    req.extend_from_slice(&0u32.to_ne_bytes()); // ino
    req.extend_from_slice(&(UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN | UDIAG_SHOW_SHUTDOWN).to_ne_bytes());
    req.extend_from_slice(&[0xff; 8]); // no cookie
    let mut out = HashMap::new();
    sock_diag_dump("sock_diag", &req, |body| {
        if body.len() < 16 {
            return;
        }
        let mut d = UnixDiag { sock_type: body[1], state: body[2], ..Default::default() };
        let ino = u32::from_ne_bytes(body[4..8].try_into().expect("4"));
        let mut attrs = &body[16..];
        while attrs.len() >= 4 {
            let alen = u16::from_ne_bytes(attrs[0..2].try_into().expect("2")) as usize;
            let atype = u16::from_ne_bytes(attrs[2..4].try_into().expect("2"));
            if alen < 4 || alen > attrs.len() {
                break;
            }
            let data = &attrs[4..alen];
            let word = |i: usize| u32::from_ne_bytes(data[4 * i..4 * i + 4].try_into().expect("4"));
            match atype {
                0 => d.name = Some(data.to_vec()),
                1 if data.len() >= 8 => d.vfs = Some((word(0), word(1))),
                2 if data.len() >= 4 => {
                    d.peer = word(0);
                    d.has_peer = true;
                }
                3 => d.icons = (0..data.len() / 4).map(word).collect(),
                4 if data.len() >= 8 => d.rqlen = (word(0), word(1)),
                6 if !data.is_empty() => d.shutdown = data[0],
                _ => {}
            }
            let step = (alen + 3) & !3;
            attrs = &attrs[step.min(attrs.len())..];
        }
        out.insert(ino, d);
    })?;
    Ok(out)
}

/// Sends sock_diag request `req` (the body after the netlink header) as a dump and calls `each`
/// with the body of every answer until the dump is done. `what` names the dump in errors.
fn sock_diag_dump(what: &str, req: &[u8], mut each: impl FnMut(&[u8])) -> io::Result<()> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_DUMP: u16 = 0x300;
    // SAFETY: socket takes integers.
    let raw = check(unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) })?;
    // SAFETY: the kernel just returned this fd; we own it.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // struct nlmsghdr: length, type, flags, sequence, port.
    let mut msg = Vec::with_capacity(16 + req.len());
    msg.extend_from_slice(&((16 + req.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(req);
    // SAFETY: msg is valid for its length.
    if unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
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
                return Err(io::Error::other(format!("{what}: malformed message")));
            }
            match kind {
                3 => return Ok(()), // NLMSG_DONE
                2 => {
                    let errno = i32::from_ne_bytes(msgs[16..20].try_into().expect("4"));
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                _ => each(&msgs[16..len]),
            }
            let step = (len + 3) & !3;
            msgs = &msgs[step.min(msgs.len())..];
        }
    }
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

/// What `SO_PEERCRED` shows on `fd`: (pid as this process sees it, uid, gid).
pub fn peercred(fd: &OwnedFd) -> io::Result<(i32, u32, u32)> {
    let mut u = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: u and len describe a ucred of the size given.
    check(unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut u as *mut libc::ucred).cast(), &mut len) })?;
    Ok((u.pid, u.uid, u.gid))
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


/// Sets a socket option to the bytes `val`.
pub fn setsockopt_bytes(fd: &OwnedFd, level: i32, name: i32, val: &[u8]) -> io::Result<()> {
    // SAFETY: val is valid for its length.
    check(unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, val.as_ptr().cast(), val.len() as libc::socklen_t) })?;
    Ok(())
}

/// Attaches the classic BPF program `filter` (its instructions, 8 bytes each) to `fd`.
pub fn attach_filter(fd: &OwnedFd, filter: &[u8]) -> io::Result<()> {
    let mut insns: Vec<libc::sock_filter> = filter
        .chunks_exact(8)
        .map(|b| libc::sock_filter { code: u16::from_ne_bytes([b[0], b[1]]), jt: b[2], jf: b[3], k: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]) })
        .collect();
    let prog = libc::sock_fprog { len: insns.len() as u16, filter: insns.as_mut_ptr() };
    // SAFETY: prog points to insns, alive for the call; the kernel copies them.
    check(unsafe {
        libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, (&prog as *const libc::sock_fprog).cast(), std::mem::size_of::<libc::sock_fprog>() as u32)
    })?;
    Ok(())
}

/// Binds `fd` to the raw address `addr`.
pub fn bind(fd: &OwnedFd, addr: &[u8]) -> io::Result<()> {
    // SAFETY: addr is valid for its length.
    check(unsafe { libc::bind(fd.as_raw_fd(), addr.as_ptr().cast(), addr.len() as libc::socklen_t) })?;
    Ok(())
}

/// Connects `fd` to the raw address `addr`.
pub fn connect(fd: &OwnedFd, addr: &[u8]) -> io::Result<()> {
    // SAFETY: addr is valid for its length.
    check(unsafe { libc::connect(fd.as_raw_fd(), addr.as_ptr().cast(), addr.len() as libc::socklen_t) })?;
    Ok(())
}

/// Sends `data` on `fd` with `flags`; returns how many bytes went.
pub fn send(fd: &OwnedFd, data: &[u8], flags: i32) -> io::Result<usize> {
    // SAFETY: data is valid for its length.
    let n = unsafe { libc::send(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), flags) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// `shutdown(fd, how)`.
pub fn shutdown(fd: &OwnedFd, how: i32) -> io::Result<()> {
    // SAFETY: shutdown takes integers.
    check(unsafe { libc::shutdown(fd.as_raw_fd(), how) })?;
    Ok(())
}

/// Sets the status flags of the open file description of `fd` (`F_SETFL`) and returns them as
/// the kernel then reports them (`F_GETFL`).
pub fn set_status_flags(fd: &OwnedFd, flags: i32) -> io::Result<i32> {
    // SAFETY: fcntl on a valid fd with integer arguments.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) })?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })
}

/// The index of interface `name` in the network namespace of socket `fd` (`SIOCGIFINDEX`).
pub fn ifindex(fd: &OwnedFd, name: &str) -> io::Result<i32> {
    let mut req = [0u8; 40];
    let n = name.len().min(15);
    req[..n].copy_from_slice(&name.as_bytes()[..n]);
    ioctl_bytes(fd, libc::SIOCGIFINDEX, &mut req)?;
    Ok(i32::from_ne_bytes(req[16..20].try_into().expect("4")))
}

/// The sum of the accept queues of the TCP listeners (IPv4 and IPv6) of the network namespace
/// of process `pid`, from one `sock_diag` (inet_diag) dump per family limited to listeners: the
/// kernel walks only its listening hash, however many connections there are (reading
/// `/proc/net/tcp` walks every connection, from the start again for each page read).
pub fn tcp_listeners_waiting(pid: i32) -> io::Result<u64> {
    in_netns(pid, || Ok(inet_listen_dump(libc::AF_INET)? + inet_listen_dump(libc::AF_INET6)?))
}

fn inet_listen_dump(family: i32) -> io::Result<u64> {
    const TCPF_LISTEN: u32 = 1 << 10;
    // struct inet_diag_req_v2: family, protocol, ext, pad, states, and a zeroed inet_diag_sockid
    // (48 bytes).
    let mut req = Vec::with_capacity(56);
    req.extend_from_slice(&[family as u8, libc::IPPROTO_TCP as u8, 0, 0]);
    req.extend_from_slice(&TCPF_LISTEN.to_ne_bytes());
    req.extend_from_slice(&[0u8; 48]);
    let mut waiting = 0u64;
    sock_diag_dump("inet_diag", &req, |body| {
        // struct inet_diag_msg: family, state, timer, retrans, id (48), expires, rqueue (a
        // listener's accept queue), wqueue, uid, inode.
        if body.len() >= 60 && body[1] == 10 {
            waiting += u64::from(u32::from_ne_bytes(body[56..60].try_into().expect("4")));
        }
    })?;
    Ok(waiting)
}

/// What one `inet_diag` dump says about a TCP socket ([`tcp_sockets`]): what saving it would
/// otherwise ask of the socket one call at a time.
#[derive(Clone, Debug, Default)]
pub struct TcpDiag {
    /// AF_INET or AF_INET6.
    pub family: i32,
    /// TCP state.
    pub state: u8,
    /// The socket's owner (`sk_uid`, which follows its inode's uid).
    pub uid: u32,
    /// Local and peer address as raw sockaddrs (IPv4 only: an IPv6 one's scope id and flow
    /// information are not in the dump, so those are asked of the socket).
    pub addrs: Option<(Vec<u8>, Vec<u8>)>,
    /// `struct tcp_info` (INET_DIAG_INFO): what `TCP_INFO` answers.
    pub info: Vec<u8>,
    /// `SO_SNDBUF` and `SO_RCVBUF` as getsockopt answers them (INET_DIAG_SKMEMINFO).
    pub buffers: Option<(i32, i32)>,
    /// `IP_TOS` (INET_DIAG_TOS) and, for IPv6 sockets, `IPV6_TCLASS` (INET_DIAG_TCLASS).
    pub tos: Option<u8>,
    /// `IPV6_TCLASS`.
    pub tclass: Option<u8>,
    /// `SO_MARK` (INET_DIAG_MARK; the dump gives it to CAP_NET_ADMIN only).
    pub mark: Option<u32>,
    /// The flag bits of `struct inet_diag_sockopt` (INET_DIAG_SOCKOPT, Linux 5.10+), low byte
    /// first: IP_RECVERR, (is_icsk), IP_FREEBIND, IP_HDRINCL, IP_MULTICAST_LOOP, IP_TRANSPARENT,
    /// IP_MULTICAST_ALL, IP_NODEFRAG, IP_BIND_ADDRESS_NO_PORT, IP_RECVERR_RFC4884.
    pub sockopt: Option<u16>,
    /// `TCP_CONGESTION` (INET_DIAG_CONG).
    pub congestion: Option<String>,
    /// A connection's send queue in bytes, sent or not, its FIN included (`idiag_wqueue`:
    /// `write_seq - snd_una`, what `SIOCOUTQ` answers); None for a listener (whose `wqueue` is
    /// its backlog).
    pub send_queue: Option<u32>,
}

impl TcpDiag {
    /// The value getsockopt would answer for integer option (`level`, `name`), when the dump
    /// holds it.
    pub fn int_opt(&self, level: i32, name: i32) -> Option<i32> {
        let bit = |b: u32| self.sockopt.map(|s| i32::from(s >> b & 1 == 1));
        match (level, name) {
            (libc::SOL_SOCKET, libc::SO_MARK) => self.mark.map(|m| m as i32),
            (libc::IPPROTO_IP, libc::IP_TOS) => self.tos.map(i32::from),
            (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) => self.tclass.map(i32::from),
            (libc::IPPROTO_IP, libc::IP_RECVERR) => bit(0),
            (libc::IPPROTO_IP, libc::IP_FREEBIND) => bit(2),
            (libc::IPPROTO_IP, libc::IP_HDRINCL) => bit(3),
            (libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP) => bit(4),
            (libc::IPPROTO_IP, libc::IP_TRANSPARENT) => bit(5),
            (libc::IPPROTO_IP, libc::IP_MULTICAST_ALL) => bit(6),
            (libc::IPPROTO_IP, libc::IP_NODEFRAG) => bit(7),
            (libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT) => bit(8),
            (libc::IPPROTO_IP, IP_RECVERR_RFC4884) => bit(9),
            _ => None,
        }
    }
}

const IP_RECVERR_RFC4884: i32 = 26;

/// Every TCP socket (IPv4 and IPv6, any state) of the network namespace of process `pid`, by
/// inode, from one `inet_diag` dump per family; with `full`, with the extensions that answer
/// most of what saving a socket reads ([`TcpDiag`]), otherwise only the kind, state, owner and
/// addresses (a cheaper dump: the kernel fills no `tcp_info`). Sockets without an inode
/// (time-wait and request sockets) are left out.
pub fn tcp_sockets(pid: i32, full: bool) -> io::Result<HashMap<u64, TcpDiag>> {
    in_netns(pid, || {
        let mut out = HashMap::new();
        inet_dump(libc::AF_INET, full, &mut out)?;
        inet_dump(libc::AF_INET6, full, &mut out)?;
        Ok(out)
    })
}

fn inet_dump(family: i32, full: bool, out: &mut HashMap<u64, TcpDiag>) -> io::Result<()> {
    const INFO: u16 = 2;
    const CONG: u16 = 4;
    const TOS: u16 = 5;
    const TCLASS: u16 = 6;
    const SKMEMINFO: u16 = 7;
    const MARK: u16 = 15;
    const SOCKOPT: u16 = 22;
    let ext = if full { [INFO, CONG, TOS, TCLASS, SKMEMINFO].iter().fold(0u8, |m, &e| m | 1 << (e - 1)) } else { 0 };
    // struct inet_diag_req_v2: family, protocol, ext, pad, states (all), a zeroed inet_diag_sockid.
    let mut req = Vec::with_capacity(56);
    req.extend_from_slice(&[family as u8, libc::IPPROTO_TCP as u8, ext, 0]);
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&[0u8; 48]);
    sock_diag_dump("inet_diag (TCP sockets)", &req, |body| {
        // struct inet_diag_msg: family, state, timer, retrans, id {sport, dport (network
        // order), src[16], dst[16], if, cookie[2]}, expires, rqueue, wqueue, uid, inode; then
        // the attributes.
        if body.len() < 72 {
            return;
        }
        let word = |at: usize| u32::from_ne_bytes(body[at..at + 4].try_into().expect("4"));
        let ino = u64::from(word(68));
        if ino == 0 {
            return;
        }
        let fam = i32::from(body[0]);
        let mut d = TcpDiag { family: fam, state: body[1], uid: word(64), ..Default::default() };
        // TCP_LISTEN: rqueue and wqueue are the accept queue and the backlog.
        if body[1] != 10 {
            d.send_queue = Some(word(60));
        }
        if fam == libc::AF_INET {
            let sa = |port: &[u8], addr: &[u8]| {
                let mut v = (libc::AF_INET as u16).to_ne_bytes().to_vec();
                v.extend_from_slice(port);
                v.extend_from_slice(addr);
                v.extend_from_slice(&[0; 8]);
                v
            };
            d.addrs = Some((sa(&body[4..6], &body[8..12]), sa(&body[6..8], &body[24..28])));
        }
        let mut attrs = &body[72..];
        while attrs.len() >= 4 {
            let alen = u16::from_ne_bytes(attrs[0..2].try_into().expect("2")) as usize;
            let atype = u16::from_ne_bytes(attrs[2..4].try_into().expect("2")) & 0x3fff;
            if alen < 4 || alen > attrs.len() {
                break;
            }
            let data = &attrs[4..alen];
            let u32_at = |i: usize| data.get(4 * i..4 * i + 4).map(|b| u32::from_ne_bytes(b.try_into().expect("4")));
            match atype {
                INFO => d.info = data.to_vec(),
                CONG => d.congestion = Some(String::from_utf8_lossy(data.split(|&c| c == 0).next().unwrap_or_default()).into_owned()),
                TOS => d.tos = data.first().copied(),
                TCLASS => d.tclass = data.first().copied(),
                // SK_MEMINFO_RCVBUF is word 1, SK_MEMINFO_SNDBUF word 3.
                SKMEMINFO => d.buffers = u32_at(3).zip(u32_at(1)).map(|(s, r)| (s as i32, r as i32)),
                MARK => d.mark = u32_at(0),
                SOCKOPT if data.len() >= 2 => d.sockopt = Some(u16::from_le_bytes([data[0], data[1]])),
                _ => {}
            }
            let step = (alen + 3) & !3;
            attrs = &attrs[step.min(attrs.len())..];
        }
        out.insert(ino, d);
    })
}

/// The most fds one `SCM_RIGHTS` message carries (the kernel's `SCM_MAX_FD`).
pub const SCM_MAX_FD: usize = 253;

/// Room for the control message of [`SCM_MAX_FD`] fds, as 8-byte words (`CMSG_SPACE(253 * 4)`
/// is 1032 bytes).
const RIGHTS_WORDS: usize = 129;

/// Fills `msg` (whose control buffer is `cbuf`) with one `SCM_RIGHTS` message carrying `fds` (at
/// most [`SCM_MAX_FD`]). No allocation, so a child of a multi-threaded process may use it.
fn put_rights(msg: &mut libc::msghdr, cbuf: &mut [u64; RIGHTS_WORDS], fds: &[i32]) {
    let n = fds.len().min(SCM_MAX_FD);
    msg.msg_control = cbuf.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE/CMSG_LEN compute sizes; CMSG_SPACE(253 * 4) is 1032 bytes, which cbuf
    // holds, so the header and the fds written lie in cbuf.
    unsafe {
        msg.msg_controllen = libc::CMSG_SPACE((n * 4) as u32) as usize;
        let c = libc::CMSG_FIRSTHDR(msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN((n * 4) as u32) as usize;
        let data = libc::CMSG_DATA(c).cast::<i32>();
        for (i, fd) in fds[..n].iter().enumerate() {
            std::ptr::write_unaligned(data.add(i), *fd);
        }
    }
}

/// Sends the fds `fds` (at most [`SCM_MAX_FD`]) over the unix socket `sock` in one message whose
/// data is the byte `tag`. The receiver gets its own fds of the same open files.
pub fn send_fds(sock: &OwnedFd, tag: u8, fds: &[std::os::fd::BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > SCM_MAX_FD {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} fds in one message (at most {SCM_MAX_FD})", fds.len())));
    }
    let mut raw = [0i32; SCM_MAX_FD];
    for (r, fd) in raw.iter_mut().zip(fds) {
        *r = fd.as_raw_fd();
    }
    let mut iov = libc::iovec { iov_base: (&tag as *const u8).cast_mut().cast(), iov_len: 1 };
    let mut cbuf = [0u64; RIGHTS_WORDS];
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    put_rights(&mut msg, &mut cbuf, &raw[..fds.len()]);
    // SAFETY: sendmsg reads the buffers msg points to, all alive on our stack.
    if unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) } != 1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one message of up to 8 data bytes with the fds it carries (close-on-exec in Zap);
/// waits at most `timeout_ms` for it. Empty data means the sender closed its end.
pub fn recv_fds(sock: &OwnedFd, timeout_ms: i32) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut pfd = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd on our stack.
    let ready = check(unsafe { libc::poll(&mut pfd, 1, timeout_ms) })?;
    if ready == 0 {
        return Err(io::Error::new(io::ErrorKind::TimedOut, format!("no message within {timeout_ms} ms")));
    }
    let mut data = [0u8; 8];
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
    let mut cbuf = [0u64; RIGHTS_WORDS];
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    // SAFETY: recvmsg fills the buffers msg points to, all on our stack and of the sizes given.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the CMSG macros walk the control buffer recvmsg filled, within msg_controllen;
    // each fd read is one the kernel just installed for us, owned by nobody else.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let p = libc::CMSG_DATA(c) as *const i32;
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(p.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other(format!("fds passed were cut short ({} received)", fds.len())));
    }
    Ok((data[..n as usize].to_vec(), fds))
}

/// A connected pair of unix `SOCK_SEQPACKET` sockets (close-on-exec) of Zap's.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: socketpair fills two ints in our array.
    check(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) })?;
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Message tags of [`make_tcp_sockets`]'s maker: sockets follow; the maker failed (then the
/// errno and the index of the socket it was making, 4 bytes each).
const MADE: u8 = b'S';
const MAKER_FAILED: u8 = b'E';

/// Makes TCP sockets in a short-lived child process created straight into the cgroup
/// `cgroup` (a directory of the cgroup v2 hierarchy, `CLONE_INTO_CGROUP`) and joined to the
/// network namespace `netns`: for each (family, owner uid) of `specs`, one unconnected
/// `SOCK_STREAM` socket made under that fsuid, so that each belongs to the namespace, the owner,
/// the cgroup (for cgroup BPF programs and nftables `socket cgroupv2`) and the memory cgroup (its
/// buffers are charged there for its whole life) that a socket the process of that cgroup made
/// itself would. The child passes them to Zap in batches of [`SCM_MAX_FD`]; returned in the
/// order of `specs`. Fails (killing the child) when it does not answer within `timeout_ms` per
/// batch, e.g. in a frozen cgroup.
pub fn make_tcp_sockets(cgroup: &std::fs::File, netns: &std::fs::File, specs: &[(i32, u32)], timeout_ms: i32) -> io::Result<Vec<OwnedFd>> {
    use super::clone::{clone3, CloneArgs};
    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
    let (mine, theirs) = seqpacket_pair()?;
    let args = CloneArgs { flags: CLONE_INTO_CGROUP, exit_signal: libc::SIGCHLD as u64, cgroup: cgroup.as_raw_fd() as u64, ..Default::default() };
    let pid = clone3(&args);
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        maker_child(theirs.as_raw_fd(), netns.as_raw_fd(), specs);
    }
    let pid = pid as i32;
    drop(theirs);
    let mut out = Vec::with_capacity(specs.len());
    let result = (|| {
        while out.len() < specs.len() {
            let (data, fds) = recv_fds(&mine, timeout_ms)?;
            match data.first() {
                Some(&MADE) if !fds.is_empty() => out.extend(fds),
                Some(&MAKER_FAILED) if data.len() >= 5 => {
                    let errno = i32::from_ne_bytes(data[1..5].try_into().expect("4"));
                    return Err(io::Error::from_raw_os_error(errno));
                }
                Some(_) => return Err(io::Error::other("unexpected message from the socket maker")),
                None => return Err(io::Error::other(format!("the socket maker ended after {} of {} sockets", out.len(), specs.len()))),
            }
        }
        Ok(())
    })();
    if result.is_err() {
        super::clone::kill_and_reap(pid);
    } else {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        unsafe { libc::waitpid(pid, &mut status, 0) };
    }
    result.map(|()| out)
}

/// Body of [`make_tcp_sockets`]'s child: raw syscalls only, no allocation (it is a fork of a
/// multi-threaded process).
fn maker_child(chan: i32, netns: i32, specs: &[(i32, u32)]) -> ! {
    let fail = |errno: i32, index: usize| {
        let mut m = [0u8; 9];
        m[0] = MAKER_FAILED;
        m[1..5].copy_from_slice(&errno.to_ne_bytes());
        m[5..9].copy_from_slice(&(index as u32).to_ne_bytes());
        // SAFETY: send from our stack buffer on our fd, then _exit takes an integer.
        unsafe {
            libc::send(chan, m.as_ptr().cast(), m.len(), libc::MSG_NOSIGNAL);
            libc::_exit(1);
        }
    };
    let errno = || io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO);
    // Nothing of Zap's but the channel and the namespace stays open here.
    let (lo, hi) = (chan.min(netns) as u32, chan.max(netns) as u32);
    // SAFETY: close_range and setns take integers; closing our copies of Zap's fds touches
    // nothing of the parent's.
    unsafe {
        if lo > 0 {
            libc::syscall(libc::SYS_close_range, 0u32, lo - 1, 0u32);
        }
        if hi > lo + 1 {
            libc::syscall(libc::SYS_close_range, lo + 1, hi - 1, 0u32);
        }
        libc::syscall(libc::SYS_close_range, hi + 1, u32::MAX, 0u32);
        if libc::setns(netns, libc::CLONE_NEWNET) != 0 {
            fail(errno(), 0);
        }
    }
    let mut made = [0i32; SCM_MAX_FD];
    let mut start = 0;
    // The fsuid this child has (Zap's, root's), changed only for a socket of another owner.
    // SAFETY: setfsuid(-1) changes nothing and answers the current fsuid.
    let mut fsuid = unsafe { libc::syscall(libc::SYS_setfsuid, u32::MAX) } as u32;
    while start < specs.len() {
        let n = (specs.len() - start).min(SCM_MAX_FD);
        for k in 0..n {
            let (family, uid) = specs[start + k];
            // SAFETY: setfsuid and socket take integers. setfsuid answers the previous fsuid, so
            // the second call tells whether the first took.
            unsafe {
                if uid != fsuid {
                    libc::syscall(libc::SYS_setfsuid, uid);
                    if libc::syscall(libc::SYS_setfsuid, uid) as u32 != uid {
                        fail(libc::EPERM, start + k);
                    }
                    fsuid = uid;
                }
                let fd = libc::socket(family, libc::SOCK_STREAM, 0);
                if fd < 0 {
                    fail(errno(), start + k);
                }
                made[k] = fd;
            }
        }
        let tag = MADE;
        let mut iov = libc::iovec { iov_base: (&tag as *const u8).cast_mut().cast(), iov_len: 1 };
        let mut cbuf = [0u64; RIGHTS_WORDS];
        // SAFETY: msghdr is plain data; zeroed is a valid empty header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        put_rights(&mut msg, &mut cbuf, &made[..n]);
        // SAFETY: sendmsg reads the buffers msg points to, on our stack; the fds closed after
        // are ours (the parent has its own copies once the message is queued).
        unsafe {
            if libc::sendmsg(chan, &msg, libc::MSG_NOSIGNAL) != 1 {
                libc::_exit(1);
            }
            for fd in &made[..n] {
                libc::close(*fd);
            }
        }
        start += n;
    }
    // SAFETY: _exit takes an integer.
    unsafe { libc::_exit(0) }
}
