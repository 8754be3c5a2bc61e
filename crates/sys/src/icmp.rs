//! ICMP echo ("ping") over a raw socket, for the demo and the end-to-end tests.
#![allow(unsafe_code)]

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Sends one echo request to `dst` and waits up to `timeout` for the reply; returns the
/// round-trip time. Needs CAP_NET_RAW.
pub fn echo(dst: IpAddr, id: u16, seq: u16, timeout: Duration) -> io::Result<Option<Duration>> {
    let (family, proto, request, reply) = match dst {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8u8, 0u8),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128u8, 129u8),
    };
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    let sock: OwnedFd =
        crate::owned_fd(fd, "opening a raw ICMP socket").map_err(io::Error::other)?;
    let mut msg = [0u8; 64];
    msg[0] = request;
    msg[4..6].copy_from_slice(&id.to_be_bytes());
    msg[6..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in msg[8..].iter_mut().enumerate() {
        *b = i as u8;
    }
    if dst.is_ipv4() {
        let c = checksum(&msg);
        msg[2..4].copy_from_slice(&c.to_be_bytes());
    }
    let (addr, len) = sockaddr(dst);
    let start = Instant::now();
    // SAFETY: `msg` and `addr` are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&raw const addr).cast(),
            len,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 2048];
    while let Some(left) = timeout.checked_sub(start.elapsed()) {
        let mut pfd = libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
            continue;
        }
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        let n = n as usize;
        // IPv4 raw sockets deliver the IP header; IPv6 ones do not.
        let at = if dst.is_ipv4() {
            usize::from(buf[0] & 0x0f) * 4
        } else {
            0
        };
        if n >= at + 8
            && buf[at] == reply
            && buf[at + 4..at + 6] == id.to_be_bytes()
            && buf[at + 6..at + 8] == seq.to_be_bytes()
        {
            return Ok(Some(start.elapsed()));
        }
    }
    Ok(None)
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sockaddr(ip: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut s: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match ip {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let v: &mut libc::sockaddr_in = unsafe { &mut *std::ptr::from_mut(&mut s).cast() };
            v.sin_family = libc::AF_INET as u16;
            v.sin_addr.s_addr = u32::from(a).to_be();
            (s, size_of::<libc::sockaddr_in>() as u32)
        }
        IpAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let v: &mut libc::sockaddr_in6 = unsafe { &mut *std::ptr::from_mut(&mut s).cast() };
            v.sin6_family = libc::AF_INET6 as u16;
            v.sin6_addr.s6_addr = a.octets();
            (s, size_of::<libc::sockaddr_in6>() as u32)
        }
    }
}
