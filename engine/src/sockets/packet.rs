//! Packets Zap sends to a restored socket as if from its peer, from a raw socket it opens in the
//! process's network namespace: the peer's FIN for a connection whose peer had closed
//! (CLOSE_WAIT, LAST_ACK, CLOSING: a segment with FIN and ACK, and a timestamp option when
//! timestamps were negotiated, as the kernel expects of every segment then), and the datagrams a
//! UDP socket had queued (each from its saved sender). They stay inside the namespace (their
//! destination is local) and carry the network lock's bypass mark
//! ([`crate::pod::netlock::BYPASS_MARK`]), so the lock lets them through.
use std::io;

use crate::sys::sock;

fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The TCP header (FIN|ACK, with a timestamp option when `ts`) from port `sport` to `dport`.
fn tcp_header(sport: &[u8], dport: &[u8], seq: u32, ack: u32, ts: bool) -> Vec<u8> {
    let len = if ts { 32 } else { 20 };
    let mut h = Vec::with_capacity(len);
    h.extend_from_slice(sport);
    h.extend_from_slice(dport);
    h.extend_from_slice(&seq.to_be_bytes());
    h.extend_from_slice(&ack.to_be_bytes());
    h.push(((len / 4) as u8) << 4);
    h.push(0x11); // FIN | ACK
    h.extend_from_slice(&65535u16.to_be_bytes()); // window (scaled by the receiver's view)
    h.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    if ts {
        h.extend_from_slice(&[1, 1, 8, 10]);
        h.extend_from_slice(&1u32.to_be_bytes()); // TSval: any value passes a fresh socket's PAWS check
        h.extend_from_slice(&0u32.to_be_bytes());
    }
    h
}

/// Sends a FIN from `from` (the peer, raw sockaddr) to `to` (the restored socket) with sequence
/// number `seq` and acknowledgement `ack`, in the network namespace of thread `tid`.
pub(super) fn send_fin(tid: i32, from: &[u8], to: &[u8], seq: u32, ack: u32, ts: bool) -> io::Result<()> {
    let tcp = tcp_header(&from[2..4], &to[2..4], seq, ack, ts);
    send_raw(tid, from, to, libc::IPPROTO_TCP as u8, tcp, 16)
}

/// Sends a UDP datagram with `payload` from `from` (its sender, raw sockaddr) to `to` (the
/// restored socket), in the network namespace of thread `tid`: it lands in the socket's receive
/// queue as the sender sent it.
pub(super) fn send_udp(tid: i32, from: &[u8], to: &[u8], payload: &[u8]) -> io::Result<()> {
    let mut udp = Vec::with_capacity(8 + payload.len());
    udp.extend_from_slice(&from[2..4]);
    udp.extend_from_slice(&to[2..4]);
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    send_raw(tid, from, to, libc::IPPROTO_UDP as u8, udp, 6)
}

/// Sends the transport segment `l4` of protocol `proto` (its checksum field at `csum_at`,
/// filled in here) from `from` to `to` (raw sockaddrs of one family) through a raw socket in
/// the network namespace of thread `tid`, marked to pass the network lock.
fn send_raw(tid: i32, from: &[u8], to: &[u8], proto: u8, mut l4: Vec<u8>, csum_at: usize) -> io::Result<()> {
    let netns = std::fs::File::open(format!("/proc/{tid}/ns/net"))?;
    let family = u16::from_ne_bytes([from[0], from[1]]);
    let mark = crate::pod::netlock::BYPASS_MARK as i32;
    if family == libc::AF_INET as u16 && from.len() >= 8 && to.len() >= 8 {
        let (src, dst) = (&from[4..8], &to[4..8]);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(src);
        pseudo.extend_from_slice(dst);
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        let c = csum_fold(csum_add(csum_add(0, &pseudo), &l4));
        l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        let total = 20 + l4.len();
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&(total as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
        ip.extend_from_slice(src);
        ip.extend_from_slice(dst);
        let c = csum_fold(csum_add(0, &ip));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ip.extend_from_slice(&l4);
        let s = sock::socket_in_netns(&netns, libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW)?;
        sock::setsockopt_int(&s, libc::SOL_SOCKET, libc::SO_MARK, mark)?;
        let mut dest = to[..8].to_vec();
        dest[2..4].copy_from_slice(&[0, 0]);
        dest.resize(16, 0);
        sock::send_to(&s, &ip, &dest)?;
        Ok(())
    } else if family == libc::AF_INET6 as u16 && from.len() >= 24 && to.len() >= 24 {
        let (src, dst) = (&from[8..24], &to[8..24]);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(src);
        pseudo.extend_from_slice(dst);
        pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, proto]);
        let c = csum_fold(csum_add(csum_add(0, &pseudo), &l4));
        l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        ip.extend_from_slice(&[proto, 64]);
        ip.extend_from_slice(src);
        ip.extend_from_slice(dst);
        ip.extend_from_slice(&l4);
        let s = sock::socket_in_netns(&netns, libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_RAW)?;
        sock::setsockopt_int(&s, libc::SOL_SOCKET, libc::SO_MARK, mark)?;
        const IPV6_HDRINCL: i32 = 36;
        sock::setsockopt_int(&s, libc::IPPROTO_IPV6, IPV6_HDRINCL, 1)?;
        let mut dest = to[..28.min(to.len())].to_vec();
        dest[2..4].copy_from_slice(&[0, 0]);
        dest.resize(28, 0);
        sock::send_to(&s, &ip, &dest)?;
        Ok(())
    } else {
        Err(io::Error::other(format!("cannot build a packet for address family {family}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_known_header() {
        // RFC 1071 example words: 0x0001 0xf203 0xf4f5 0xf6f7 sum to 0xddf2 (folded), complement 0x220d.
        assert_eq!(csum_fold(csum_add(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7])), 0x220d);
        let h = tcp_header(&[0, 80], &[0x1f, 0x90], 1, 2, true);
        assert_eq!(h.len(), 32);
        assert_eq!(h[12] >> 4, 8);
        assert_eq!(h[13], 0x11);
    }
}
