//! Packet capture on one interface (AF_PACKET), for tests that inspect the wire.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

/// A capture of every IP packet an interface sends or receives, as L3 bytes.
#[derive(Debug)]
pub struct Capture {
    fd: OwnedFd,
}

/// Which way a captured packet went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Received by the interface.
    In,
    /// Sent by the interface.
    Out,
}

impl Capture {
    /// Opens a capture on interface `ifname` in the calling thread's network namespace.
    pub fn open(ifname: &str) -> crate::Result<Self> {
        let index = crate::netlink::Netlink::link_index(ifname)?;
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the descriptor is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        };
        let fd = crate::owned_fd(fd, format!("opening a packet capture on {ifname}"))?;
        // SAFETY: zeroed sockaddr_ll is valid; we fill family, protocol and index.
        let rc = unsafe {
            let mut sa: libc::sockaddr_ll = std::mem::zeroed();
            sa.sll_family = libc::AF_PACKET as u16;
            sa.sll_protocol = proto;
            sa.sll_ifindex = index as i32;
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sa).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(crate::Error::last(format!(
                "binding the capture to {ifname}"
            )));
        }
        Ok(Self { fd })
    }

    /// The next packet, waiting up to `timeout`; `None` on timeout.
    pub fn next(
        &self,
        buf: &mut [u8],
        timeout: Duration,
    ) -> io::Result<Option<(usize, Direction)>> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
            return Ok(None);
        }
        // SAFETY: buf is writable for its length; sa is written by the kernel up to len.
        let (n, sa) = unsafe {
            let mut sa: libc::sockaddr_ll = std::mem::zeroed();
            let mut len = size_of::<libc::sockaddr_ll>() as u32;
            let n = libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&raw mut sa).cast(),
                &mut len,
            );
            (n, sa)
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let dir = if sa.sll_pkttype == libc::PACKET_OUTGOING {
            Direction::Out
        } else {
            Direction::In
        };
        Ok(Some((n as usize, dir)))
    }
}
