//! FakeTCP's sockets: raw IP sockets to send whole packets, and packet sockets (AF_PACKET)
//! to receive them.
//!
//! The packet sockets are bound to one protocol (IPv4 or IPv6), so they see packets the host
//! receives but not those it sends, and they see them before netfilter's prerouting hook —
//! where culvert's nftables table (see [`crate::nft`]) then drops them, so the kernel's TCP
//! stack never answers our flows with an RST. A classic BPF filter keeps everything but our
//! TCP port out of userspace.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::sockopt::{Buffers, grow_buffers, set_int};
use crate::udp::BATCH;
use crate::{Error, Result};

const IPV6_HDRINCL: libc::c_int = 36;

/// Sends complete IPv4/IPv6 packets (headers included).
#[derive(Debug)]
pub struct RawSender {
    v4: Option<OwnedFd>,
    v6: Option<OwnedFd>,
}

impl RawSender {
    /// Opens a raw socket per family wanted. Needs CAP_NET_RAW.
    pub fn open(v4: bool, v6: bool) -> Result<Self> {
        let open = |family: libc::c_int| -> Result<OwnedFd> {
            // SAFETY: plain socket(2).
            let fd = unsafe {
                libc::socket(
                    family,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                    libc::IPPROTO_RAW,
                )
            };
            let fd = crate::owned_fd(fd, "opening a raw socket for FakeTCP")?;
            if family == libc::AF_INET6 {
                set_int(&fd, libc::IPPROTO_IPV6, IPV6_HDRINCL, 1)
                    .map_err(|e| Error::io("enabling IPV6_HDRINCL for FakeTCP", e))?;
            }
            grow_buffers(&fd, Buffers::Send);
            crate::sockopt::never_fragment(&fd, family == libc::AF_INET6);
            Ok(fd)
        };
        Ok(Self {
            v4: v4.then(|| open(libc::AF_INET)).transpose()?,
            v6: v6.then(|| open(libc::AF_INET6)).transpose()?,
        })
    }

    /// Marks what these sockets send (see [`crate::sockopt::set_mark`]).
    pub fn set_mark(&self, mark: u32) -> Result<()> {
        for fd in self.v4.iter().chain(&self.v6) {
            crate::sockopt::set_mark(fd, mark)
                .map_err(|e| Error::io("setting SO_MARK on FakeTCP's raw socket", e))?;
        }
        Ok(())
    }

    /// Sends each packet to its destination address; returns how many the kernel took.
    pub fn send_batch(&self, packets: &[(IpAddr, &[u8])]) -> io::Result<usize> {
        let mut sent = 0;
        while sent < packets.len() {
            let v4 = packets[sent].0.is_ipv4();
            let run = packets[sent..]
                .iter()
                .take(BATCH)
                .take_while(|(ip, _)| ip.is_ipv4() == v4)
                .count();
            let fd = if v4 { &self.v4 } else { &self.v6 };
            let Some(fd) = fd else {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "no raw socket for this address family",
                ));
            };
            // SAFETY: zeroed C structs are valid empty values, filled below.
            let mut addrs: [libc::sockaddr_storage; BATCH] = unsafe { zeroed() };
            // SAFETY: as above.
            let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
            // SAFETY: as above.
            let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
            for (i, (ip, bytes)) in packets[sent..sent + run].iter().enumerate() {
                let len = crate::udp::sockaddr(SocketAddr::new(*ip, 0), false, &mut addrs[i]);
                iovs[i] = libc::iovec {
                    iov_base: bytes.as_ptr().cast_mut().cast(),
                    iov_len: bytes.len(),
                };
                hdrs[i].msg_hdr.msg_name = (&raw mut addrs[i]).cast();
                hdrs[i].msg_hdr.msg_namelen = len;
                hdrs[i].msg_hdr.msg_iov = &raw mut iovs[i];
                hdrs[i].msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: every header points at live buffers of the lengths given.
            let n = unsafe { libc::sendmmsg(fd.as_raw_fd(), hdrs.as_mut_ptr(), run as u32, 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                return if sent > 0 && e.kind() == io::ErrorKind::WouldBlock {
                    Ok(sent)
                } else {
                    Err(e)
                };
            }
            sent += n as usize;
            if (n as usize) < run {
                break;
            }
        }
        Ok(sent)
    }
}

/// Which port of received TCP segments the filter matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortMatch {
    /// Segments to this port (a server).
    Destination(u16),
    /// Segments from this port (a client of a server on that port).
    Source(u16),
}

/// Receives the IP packets of our FakeTCP flows.
#[derive(Debug)]
pub struct PacketReceiver {
    fd: OwnedFd,
}

impl PacketReceiver {
    /// A receiver for TCP over IPv4 (`v6 = false`) or IPv6 matching `port`. Needs
    /// CAP_NET_RAW.
    pub fn open(v6: bool, port: PortMatch) -> Result<Self> {
        let proto = (if v6 { libc::ETH_P_IPV6 } else { libc::ETH_P_IP } as u16).to_be();
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                i32::from(proto),
            )
        };
        let fd = crate::owned_fd(fd, "opening a packet socket for FakeTCP")?;
        let mut prog = filter(v6, port);
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_mut_ptr(),
        };
        // SAFETY: `fprog` points at `prog`, which outlives the call; the kernel copies it.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&raw const fprog).cast(),
                size_of::<libc::sock_fprog>() as u32,
            )
        };
        if rc < 0 {
            return Err(Error::last("attaching the FakeTCP packet filter"));
        }
        grow_buffers(&fd, Buffers::Receive);
        Ok(Self { fd })
    }

    /// Receives up to `meta.len()` packets into `slot`-sized slots of `buf`, each at
    /// `offset` within its slot; `meta[i]` tells packet `i`'s length and interface.
    pub fn recv_batch(
        &self,
        buf: &mut [u8],
        slot: usize,
        offset: usize,
        meta: &mut [PacketMeta],
    ) -> io::Result<usize> {
        let n = meta.len().min(BATCH).min(buf.len() / slot);
        // SAFETY: zeroed C structs are valid empty values, filled below.
        let mut iovs: [libc::iovec; BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut names: [libc::sockaddr_ll; BATCH] = unsafe { zeroed() };
        for i in 0..n {
            let at = i * slot + offset;
            iovs[i] = libc::iovec {
                iov_base: buf[at..].as_mut_ptr().cast(),
                iov_len: slot - offset,
            };
            hdrs[i].msg_hdr.msg_iov = &raw mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
            hdrs[i].msg_hdr.msg_name = (&raw mut names[i]).cast();
            hdrs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_ll>() as u32;
        }
        // SAFETY: each header points at a distinct live slot of `buf` of the length given.
        let got = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                hdrs.as_mut_ptr(),
                n as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            };
        }
        for i in 0..got as usize {
            meta[i] = PacketMeta {
                len: hdrs[i].msg_len as usize,
                ifindex: u32::try_from(names[i].sll_ifindex).unwrap_or(0),
            };
        }
        Ok(got as usize)
    }
}

/// What a packet socket tells about one received packet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketMeta {
    /// The packet's length.
    pub len: usize,
    /// The interface it arrived on.
    pub ifindex: u32,
}

impl AsRawFd for PacketReceiver {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The classic BPF program: TCP, not a fragment, and the port we want.
fn filter(v6: bool, port: PortMatch) -> Vec<libc::sock_filter> {
    const LD_B_ABS: u16 = 0x30;
    const LD_H_ABS: u16 = 0x28;
    const LD_H_IND: u16 = 0x48;
    const LDX_B_MSH: u16 = 0xb1;
    const JEQ_K: u16 = 0x15;
    const JSET_K: u16 = 0x45;
    const RET_K: u16 = 0x06;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let (offset, p) = match port {
        PortMatch::Destination(p) => (2, p),
        PortMatch::Source(p) => (0, p),
    };
    if v6 {
        vec![
            op(LD_B_ABS, 0, 0, 6),           // next header
            op(JEQ_K, 0, 3, 6),              // TCP, else drop
            op(LD_H_ABS, 0, 0, 40 + offset), // port (no extension headers)
            op(JEQ_K, 0, 1, u32::from(p)),
            op(RET_K, 0, 0, 0x4_0000), // accept
            op(RET_K, 0, 0, 0),        // drop
        ]
    } else {
        vec![
            op(LD_B_ABS, 0, 0, 9),      // protocol
            op(JEQ_K, 0, 6, 6),         // TCP, else drop
            op(LD_H_ABS, 0, 0, 6),      // flags / fragment offset
            op(JSET_K, 4, 0, 0x1fff),   // a fragment: drop
            op(LDX_B_MSH, 0, 0, 0),     // X = header length
            op(LD_H_IND, 0, 0, offset), // port
            op(JEQ_K, 0, 1, u32::from(p)),
            op(RET_K, 0, 0, 0x4_0000), // accept
            op(RET_K, 0, 0, 0),        // drop
        ]
    }
}
