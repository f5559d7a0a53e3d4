//! Gratuitous ARP from an interface of another network namespace: a thread of ours joins the
//! namespace (`setns` changes only the calling thread's), opens an `AF_PACKET` socket there and
//! sends ARP requests for the interface's own address (sender = target = the address), which
//! switches use to learn the MAC's port and neighbours to refresh their caches.
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// The ARP request announcing `ip` at `mac` (Ethernet header included).
fn frame(mac: [u8; 6], ip: [u8; 4]) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]); // broadcast
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes()); // ARP
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip);
    // target hardware address: zero; target protocol address: our own
    f[38..42].copy_from_slice(&ip);
    f
}

/// The hardware address of interface `name` of this thread's network namespace, asked on socket
/// `sock` (`SIOCGIFHWADDR`).
fn hwaddr(sock: &OwnedFd, name: &std::ffi::CStr) -> io::Result<[u8; 6]> {
    // SAFETY: ifreq is plain old data; zero is a valid value for every field.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.to_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR fills the ifreq it is given, which lives across the call.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req as *mut libc::ifreq) })?;
    // SAFETY: the kernel answered SIOCGIFHWADDR, which sets the hwaddr member of the union.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(data) {
        *d = s as u8;
    }
    Ok(mac)
}

fn send_here(ifname: &str, mac: Option<[u8; 6]>, ip: [u8; 4], count: u32) -> io::Result<()> {
    let name = std::ffi::CString::new(ifname).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    let proto = (libc::ETH_P_ARP as u16).to_be();
    // SAFETY: socket takes integers; the result is checked and owned below.
    let fd = check(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(proto)) })?;
    // SAFETY: fd was just returned by socket and is owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain old data; zero is a valid value for every field.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let mac = match mac {
        Some(m) => m,
        None => hwaddr(&sock, &name)?,
    };
    let f = frame(mac, ip);
    for i in 0..count {
        if i > 0 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // SAFETY: the frame and the address are valid for the lengths given.
        let rc = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                f.as_ptr().cast(),
                f.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sends `count` gratuitous ARP requests for `ip` from interface `ifname` (MAC `mac`, or the
/// interface's own when None) of the network namespace `netns` (an fd of `/proc/PID/ns/net`).
pub fn gratuitous(netns: &OwnedFd, ifname: &str, mac: Option<[u8; 6]>, ip: [u8; 4], count: u32) -> io::Result<()> {
    use std::os::fd::AsFd;
    super::ns::in_namespaces(&[(netns.as_fd(), libc::CLONE_NEWNET)], false, || send_here(ifname, mac, ip, count))
}

#[cfg(test)]
mod tests {
    #[test]
    fn arp_frame_layout() {
        let f = super::frame([2, 0, 0, 0, 0, 9], [10, 99, 0, 5]);
        assert_eq!(&f[12..14], &[8, 6]);
        assert_eq!(&f[28..32], &[10, 99, 0, 5]);
        assert_eq!(&f[38..42], &[10, 99, 0, 5]);
        assert_eq!(&f[32..38], &[0; 6]);
    }
}
