//! UDP sockets with batched I/O: one `recvmmsg` or `sendmmsg` moves many datagrams.
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

use crate::{Error, Result};

/// Most datagrams moved by one batched call.
pub const BATCH: usize = 64;

/// A non-blocking UDP socket.
#[derive(Debug)]
pub struct UdpSocket {
    sock: std::net::UdpSocket,
    v6: bool,
}

/// Where a received datagram came from and how long it is.
#[derive(Debug, Clone, Copy)]
pub struct RecvMeta {
    /// Bytes received.
    pub len: usize,
    /// Sender (IPv4-mapped IPv6 addresses are returned as IPv4).
    pub from: SocketAddr,
}

impl Default for RecvMeta {
    fn default() -> Self {
        Self {
            len: 0,
            from: SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }
}

impl UdpSocket {
    /// Binds `addr` (`[::]` listens on IPv4 and IPv6), non-blocking, with large buffers.
    pub fn bind(addr: SocketAddr) -> Result<Self> {
        let sock = std::net::UdpSocket::bind(addr).map_err(|e| {
            let hint = match e.kind() {
                io::ErrorKind::AddrInUse => ": the port is in use (another culvert or service?)",
                io::ErrorKind::AddrNotAvailable => ": that address is not on any interface here",
                _ => "",
            };
            Error::io(format!("binding UDP {addr}{hint}"), e)
        })?;
        sock.set_nonblocking(true)
            .map_err(|e| Error::io("setting UDP non-blocking", e))?;
        let s = Self {
            v6: addr.is_ipv6(),
            sock,
        };
        crate::sockopt::grow_buffers(&s.sock, crate::sockopt::Buffers::Both);
        crate::sockopt::never_fragment(&s.sock, s.v6);
        Ok(s)
    }

    /// Marks what this socket sends (see [`crate::sockopt::set_mark`]).
    pub fn set_mark(&self, mark: u32) -> Result<()> {
        crate::sockopt::set_mark(&self.sock, mark)
            .map_err(|e| Error::io("setting SO_MARK on a UDP socket (needs CAP_NET_ADMIN)", e))
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// Sends one datagram with IP TTL (hop limit) `ttl`, then restores the default: the
    /// first probes of a hole punch, which must die between the two NATs.
    pub fn send_with_ttl(&self, to: SocketAddr, bytes: &[u8], ttl: u8) -> io::Result<()> {
        let (level, opt) = if self.v6 {
            (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS)
        } else {
            (libc::IPPROTO_IP, libc::IP_TTL)
        };
        crate::sockopt::set_int(&self.sock, level, opt, libc::c_int::from(ttl))?;
        let sent = self.send_batch(&[(to, bytes)]);
        // -1: the system's default again.
        let restored = crate::sockopt::set_int(&self.sock, level, opt, -1);
        sent.and(restored).map(|_| ())
    }

    /// Receives up to `meta.len()` datagrams into consecutive `slot`-byte slots of `buf`,
    /// each at `offset` within its slot (datagram `i` lands at `buf[i * slot + offset..]`).
    /// Returns how many arrived; 0 if none.
    pub fn recv_batch(
        &self,
        buf: &mut [u8],
        slot: usize,
        offset: usize,
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        let n = meta.len().min(BATCH).min(buf.len() / slot);
        let MsgArrays {
            mut addrs,
            mut iovs,
            hdrs: mut msgs,
        } = MsgArrays::new();
        for i in 0..n {
            iovs[i] = libc::iovec {
                iov_base: buf[i * slot + offset..].as_mut_ptr().cast(),
                iov_len: slot - offset,
            };
            msgs[i].msg_hdr.msg_name = (&raw mut addrs[i]).cast();
            msgs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
            msgs[i].msg_hdr.msg_iov = &raw mut iovs[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every msghdr points at a distinct, live slot of `buf` and a live address
        // buffer, for exactly the lengths given; the arrays outlive the call.
        let got = unsafe {
            libc::recvmmsg(
                self.sock.as_raw_fd(),
                msgs.as_mut_ptr(),
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
        let got = got as usize;
        for i in 0..got {
            meta[i] = RecvMeta {
                len: msgs[i].msg_len as usize,
                from: from_storage(&addrs[i]),
            };
        }
        Ok(got)
    }

    /// Sends each `(destination, bytes)` as one datagram with one `sendmmsg` call per batch.
    /// Returns how many were handed to the kernel; a full socket buffer ends the batch early.
    pub fn send_batch(&self, msgs: &[(SocketAddr, &[u8])]) -> io::Result<usize> {
        let mut sent = 0;
        while sent < msgs.len() {
            let chunk = &msgs[sent..msgs.len().min(sent + BATCH)];
            let MsgArrays {
                mut addrs,
                mut iovs,
                mut hdrs,
            } = MsgArrays::new();
            for (i, (to, bytes)) in chunk.iter().enumerate() {
                let len = sockaddr(*to, self.v6, &mut addrs[i]);
                iovs[i] = libc::iovec {
                    iov_base: bytes.as_ptr().cast_mut().cast(),
                    iov_len: bytes.len(),
                };
                hdrs[i].msg_hdr.msg_name = (&raw mut addrs[i]).cast();
                hdrs[i].msg_hdr.msg_namelen = len;
                hdrs[i].msg_hdr.msg_iov = &raw mut iovs[i];
                hdrs[i].msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: each header points at live data and address buffers of the given
            // lengths; the kernel only reads the iovecs on send.
            let n = unsafe {
                libc::sendmmsg(
                    self.sock.as_raw_fd(),
                    hdrs.as_mut_ptr(),
                    chunk.len() as u32,
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock && sent > 0 {
                    return Ok(sent);
                }
                return Err(e);
            }
            sent += n as usize;
            if (n as usize) < chunk.len() {
                break;
            }
        }
        Ok(sent)
    }
}

/// The per-call arrays `recvmmsg`/`sendmmsg` need, on the stack.
struct MsgArrays {
    addrs: [libc::sockaddr_storage; BATCH],
    iovs: [libc::iovec; BATCH],
    hdrs: [libc::mmsghdr; BATCH],
}

impl MsgArrays {
    fn new() -> Self {
        // SAFETY: these are plain C structs for which all-zero bytes (null pointers, zero
        // lengths, family AF_UNSPEC) is a valid value.
        unsafe { zeroed() }
    }
}

impl AsRawFd for UdpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

pub(crate) fn from_storage(s: &libc::sockaddr_storage) -> SocketAddr {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(std::ptr::from_ref(s).cast()) };
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(std::ptr::from_ref(s).cast()) };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            let port = u16::from_be(a.sin6_port);
            match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
                None => SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    port,
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )),
            }
        }
        _ => SocketAddr::from(([0, 0, 0, 0], 0)),
    }
}

/// Writes `to` into `s` in the socket's family (IPv4 becomes mapped on an IPv6 socket).
pub(crate) fn sockaddr(to: SocketAddr, v6_socket: bool, s: &mut libc::sockaddr_storage) -> u32 {
    let to = match (to, v6_socket) {
        (SocketAddr::V4(a), true) => {
            SocketAddr::V6(SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0))
        }
        (a, _) => a,
    };
    match to {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in.
            let out: &mut libc::sockaddr_in = unsafe { &mut *(std::ptr::from_mut(s).cast()) };
            out.sin_family = libc::AF_INET as u16;
            out.sin_port = a.port().to_be();
            out.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            size_of::<libc::sockaddr_in>() as u32
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in6.
            let out: &mut libc::sockaddr_in6 = unsafe { &mut *(std::ptr::from_mut(s).cast()) };
            out.sin6_family = libc::AF_INET6 as u16;
            out.sin6_port = a.port().to_be();
            out.sin6_addr.s6_addr = a.ip().octets();
            out.sin6_flowinfo = a.flowinfo();
            out.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>() as u32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trip_on_loopback() {
        let a = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let to = b.local_addr().unwrap();
        let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        let msgs: Vec<(SocketAddr, &[u8])> = payloads.iter().map(|p| (to, &p[..])).collect();
        assert_eq!(a.send_batch(&msgs).unwrap(), 10);
        let mut buf = vec![0u8; 2048 * 16];
        let mut meta = [RecvMeta::default(); 16];
        let mut got = 0;
        for _ in 0..100 {
            got += b
                .recv_batch(&mut buf[got * 2048..], 2048, 0, &mut meta[got..])
                .unwrap();
            if got == 10 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got, 10);
        for (i, m) in meta[..10].iter().enumerate() {
            assert_eq!(m.from, a.local_addr().unwrap());
            assert_eq!(&buf[i * 2048..i * 2048 + m.len], &payloads[i][..]);
        }
        assert_eq!(b.recv_batch(&mut buf, 2048, 0, &mut meta).unwrap(), 0);
    }

    #[test]
    fn dual_stack_maps_ipv4() {
        let Ok(v6) = UdpSocket::bind("[::]:0".parse().unwrap()) else {
            return;
        };
        let v4 = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = v6.local_addr().unwrap().port();
        let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        v4.send_batch(&[(to, b"hi")]).unwrap();
        let mut buf = vec![0u8; 2048];
        let mut meta = [RecvMeta::default(); 1];
        for _ in 0..100 {
            if v6.recv_batch(&mut buf, 2048, 0, &mut meta).unwrap() == 1 {
                assert_eq!(
                    meta[0].from,
                    v4.local_addr().unwrap(),
                    "mapped address returned as IPv4"
                );
                v6.send_batch(&[(meta[0].from, b"back")]).unwrap();
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("nothing received");
    }
}
