//! Integer socket options, and the large buffers every datagram socket of culvert asks for.
#![allow(unsafe_code)]

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd};

/// Socket buffer size asked for: a burst of several milliseconds at gigabit rates, so a
/// briefly descheduled reader does not drop datagrams.
pub const SOCKET_BUFFER: libc::c_int = 8 << 20;

/// Which buffers [`grow_buffers`] enlarges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buffers {
    /// The receive buffer only.
    Receive,
    /// The send buffer only.
    Send,
    /// Both.
    Both,
}

/// Sets the socket's buffers to [`SOCKET_BUFFER`]: with the `*BUFFORCE` options when
/// privileged (they may exceed `net.core.rmem_max`), else as far as the limits allow.
/// Best effort: a smaller buffer only means drops under bursts, never a failure.
pub fn grow_buffers(fd: &impl AsFd, which: Buffers) {
    let mut opts = Vec::with_capacity(2);
    if which != Buffers::Send {
        opts.push((libc::SO_RCVBUFFORCE, libc::SO_RCVBUF));
    }
    if which != Buffers::Receive {
        opts.push((libc::SO_SNDBUFFORCE, libc::SO_SNDBUF));
    }
    for (force, normal) in opts {
        if set_int(fd, libc::SOL_SOCKET, force, SOCKET_BUFFER).is_err() {
            let _ = set_int(fd, libc::SOL_SOCKET, normal, SOCKET_BUFFER);
        }
    }
}

/// Marks what the socket sends with firewall mark `mark` (`SO_MARK`, needs CAP_NET_ADMIN):
/// policy routing sends marked packets around the full tunnel's routes.
pub fn set_mark(fd: &impl AsFd, mark: u32) -> io::Result<()> {
    set_int(
        fd,
        libc::SOL_SOCKET,
        libc::SO_MARK,
        libc::c_int::from_ne_bytes(mark.to_ne_bytes()),
    )
}

/// Sets DF on everything the socket sends and never fragments locally, whatever the
/// kernel's PMTU cache says (`IP_PMTUDISC_PROBE`): culvert finds each path's MTU itself
/// (DPLPMTUD), and a fragment of a tunnel packet is a loss multiplier. Best effort.
pub fn never_fragment(fd: &impl AsFd, v6: bool) {
    let _ = set_int(
        fd,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_PROBE,
    );
    if v6 {
        let _ = set_int(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        );
    }
}

/// The destination a TCP connection had before netfilter redirected it to this host
/// (`SO_ORIGINAL_DST`, or `IP6T_SO_ORIGINAL_DST` for an IPv6 socket): what a transparent
/// proxy's listener needs to know where the connection was going. Fails (`ENOENT`) for a
/// connection that was not redirected.
pub fn original_destination(fd: &impl AsFd, v6: bool) -> io::Result<std::net::SocketAddr> {
    // Both options are 80 (linux/netfilter_ipv4.h, linux/netfilter_ipv6/ip6_tables.h).
    const SO_ORIGINAL_DST: libc::c_int = 80;
    let level = if v6 { libc::SOL_IPV6 } else { libc::SOL_IP };
    // SAFETY: an all-zero sockaddr_storage is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the pointer and length describe `storage`, which outlives the call; the
    // kernel writes at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            SO_ORIGINAL_DST,
            std::ptr::from_mut(&mut storage).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(crate::udp::from_storage(&storage))
}

/// Raises this process's soft limit on open files to its hard limit and returns the new
/// limit: a proxy holds two sockets per flow, and the usual soft limit of 1024 would cap
/// it at a few hundred flows.
pub fn raise_open_files_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit the kernel fills in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit; raising the soft limit to the hard one is allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// `setsockopt(2)` with an `int` value.
pub(crate) fn set_int(
    fd: &impl AsFd,
    level: libc::c_int,
    opt: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its size; the fd is borrowed, so open.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            opt,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_grow() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = get_int(&sock, libc::SO_RCVBUF);
        grow_buffers(&sock, Buffers::Receive);
        assert!(get_int(&sock, libc::SO_RCVBUF) > before);
    }

    fn get_int(fd: &impl AsFd, opt: libc::c_int) -> libc::c_int {
        let mut value: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: passes a live c_int and its size for the kernel to fill.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_fd().as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&raw mut value).cast(),
                &raw mut len,
            )
        };
        assert_eq!(rc, 0);
        value
    }
}
