//! rtnetlink requests: link state and MTU, addresses, routes (in any table), policy
//! routing rules, deleting links.
//!
//! Each request is one message with `NLM_F_ACK`; the kernel's acknowledgement carries the
//! result, so every change is confirmed or reported with the kernel's own errno.
#![allow(unsafe_code)]

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use culvert_wire::addr::Prefix;

use crate::{Error, Result};

const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const RTA_TABLE: u16 = 15;
const FRA_PRIORITY: u16 = 6;
const FRA_FWMARK: u16 = 10;
const FRA_SUPPRESS_PREFIXLEN: u16 = 14;
const FRA_TABLE: u16 = 15;
const FRA_FWMASK: u16 = 16;
const FIB_RULE_INVERT: u32 = 0x2;
const FR_ACT_TO_TBL: u8 = 1;
const RT_TABLE_UNSPEC: u8 = 0;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_F_NODAD: u8 = 0x02;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_PRIORITY: u16 = 6;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;
const RTN_UNREACHABLE: u8 = 7;

/// Where a route sends what matches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Out of this interface (its index).
    Interface(u32),
    /// Nowhere: senders get "network unreachable". Unlike an interface's route it stays
    /// when the interface goes, so it is what is left to match when the process that owned
    /// the interface died.
    Unreachable,
}

/// A route to install: `dst` through `via`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Destination prefix (host bits ignored).
    pub dst: Prefix,
    /// Where it leads.
    pub via: Via,
    /// Route metric (lower wins).
    pub metric: u32,
    /// Routing table ([`Route::MAIN`] unless policy routing uses another).
    pub table: u32,
}

impl Route {
    /// The main routing table.
    pub const MAIN: u32 = 254;
}

/// A policy routing rule: look up `table` for packets (of `v6`'s family) matching it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// Order among rules (lower first).
    pub priority: u32,
    /// The table to look up.
    pub table: u32,
    /// Match packets *without* this firewall mark (all bits).
    pub not_fwmark: Option<u32>,
    /// Ignore routes of this prefix length or shorter found in `table` (0: its default
    /// route), so more specific routes there still win.
    pub suppress_prefixlen: Option<u32>,
}

/// A NETLINK_ROUTE socket.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// Opens the socket.
    pub fn open() -> Result<Self> {
        // SAFETY: plain socket(2) call; the returned descriptor is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        Ok(Self {
            fd: crate::owned_fd(fd, "opening a netlink socket")?,
            seq: 1,
        })
    }

    /// The index of interface `name`.
    pub fn link_index(name: &str) -> Result<u32> {
        let c = std::ffi::CString::new(name).map_err(|_| {
            Error::io(
                format!("interface {name:?}"),
                io::Error::from(io::ErrorKind::InvalidInput),
            )
        })?;
        // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
        let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if i == 0 {
            return Err(Error::last(format!("looking up interface {name}")));
        }
        Ok(i)
    }

    /// Sets the MTU of a link and brings it up.
    pub fn set_link_up(&mut self, ifindex: u32, mtu: u32) -> Result<()> {
        let mut m = Message::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK);
        // struct ifinfomsg: family, pad, type, index, flags, change
        m.push(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
        m.push(&(ifindex as i32).to_ne_bytes());
        m.push(&(libc::IFF_UP as u32).to_ne_bytes());
        m.push(&(libc::IFF_UP as u32).to_ne_bytes());
        m.attr(IFLA_MTU, &mtu.to_ne_bytes());
        self.request(m, || {
            format!("setting MTU {mtu} and bringing up interface {ifindex}")
        })
    }

    /// Deletes a link (used to remove a stale device left by a crashed run).
    pub fn delete_link(&mut self, ifindex: u32) -> Result<()> {
        let mut m = Message::new(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK);
        m.push(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
        m.push(&(ifindex as i32).to_ne_bytes());
        m.push(&0u32.to_ne_bytes());
        m.push(&0u32.to_ne_bytes());
        self.request(m, || format!("deleting interface {ifindex}"))
    }

    /// Adds an address (with its prefix) to a link; IPv6 skips duplicate detection.
    pub fn add_address(&mut self, ifindex: u32, addr: Prefix) -> Result<()> {
        let mut m = Message::new(
            RTM_NEWADDR,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        );
        let (family, bytes) = family_bytes(addr.addr());
        let flags = if family == libc::AF_INET6 as u8 {
            IFA_F_NODAD
        } else {
            0
        };
        // struct ifaddrmsg: family, prefixlen, flags, scope, index
        m.push(&[family, addr.len(), flags, RT_SCOPE_UNIVERSE]);
        m.push(&ifindex.to_ne_bytes());
        m.attr(IFA_LOCAL, &bytes);
        m.attr(IFA_ADDRESS, &bytes);
        let what = || format!("adding address {addr} to interface {ifindex}");
        match self.request(m, what) {
            // The kernel's answer when IPv6 is off on the interface, not a privilege.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) && addr.addr().is_ipv6() => {
                Err(Error::io(
                    what(),
                    io::Error::other(
                        "IPv6 is disabled on this interface or host \
                         (net.ipv6.conf.*.disable_ipv6 = 1, or ipv6.disable=1 at boot)",
                    ),
                ))
            }
            r => r,
        }
    }

    /// Adds a route. One the table already has for the same destination and metric is
    /// never replaced (the error is `EEXIST`): it may be another's — a connected LAN, an
    /// operator's static route — and taking it over would hijack its traffic.
    pub fn add_route(&mut self, route: Route) -> Result<()> {
        let m = route_message(
            RTM_NEWROUTE,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            route,
        );
        self.request(m, || {
            format!("adding route {} via {:?}", route.dst.network(), route.via)
        })
    }

    /// Deletes a route; a missing route is not an error.
    pub fn delete_route(&mut self, route: Route) -> Result<()> {
        let m = route_message(RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK, route);
        match self.request(m, || format!("deleting route {}", route.dst.network())) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            r => r,
        }
    }

    /// Adds a policy routing rule.
    pub fn add_rule(&mut self, rule: Rule) -> Result<()> {
        let m = rule_message(RTM_NEWRULE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE, rule);
        self.request(m, || format!("adding routing rule {rule:?}"))
    }

    /// Deletes every rule equal to `rule` (one may be left from a crashed run, or two);
    /// none left is not an error.
    pub fn delete_rule(&mut self, rule: Rule) -> Result<()> {
        for _ in 0..16 {
            let m = rule_message(RTM_DELRULE, NLM_F_REQUEST | NLM_F_ACK, rule);
            match self.request(m, || format!("deleting routing rule {rule:?}")) {
                Ok(()) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn request(&mut self, mut m: Message, what: impl Fn() -> String) -> Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let bytes = m.finish(seq);
        // SAFETY: `bytes` is a valid buffer for the length given; a zeroed sockaddr_nl
        // (pid 0) addresses the kernel.
        let sent = unsafe {
            let mut sa: libc::sockaddr_nl = std::mem::zeroed();
            sa.nl_family = libc::AF_NETLINK as u16;
            libc::sendto(
                self.fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                (&raw const sa).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(Error::last(what()));
        }
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: `buf` is writable for its whole length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(Error::last(what()));
            }
            let mut at = 0usize;
            let n = n as usize;
            while at + 16 <= n {
                let len = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
                let ty = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().expect("2 bytes"));
                let rseq = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().expect("4 bytes"));
                if len < 16 || at + len > n {
                    break;
                }
                if ty == NLMSG_ERROR && rseq == seq && len >= 20 {
                    let code =
                        i32::from_ne_bytes(buf[at + 16..at + 20].try_into().expect("4 bytes"));
                    return match code {
                        0 => Ok(()),
                        c => Err(Error::io(what(), io::Error::from_raw_os_error(-c))),
                    };
                }
                at += (len + 3) & !3;
            }
        }
    }
}

fn route_message(ty: u16, flags: u16, r: Route) -> Message {
    let mut m = Message::new(ty, flags);
    let net = r.dst.network();
    let (family, bytes) = family_bytes(net.addr());
    let table = match u8::try_from(r.table) {
        Ok(t) => t,
        Err(_) => RT_TABLE_UNSPEC,
    };
    let (scope, kind) = match r.via {
        Via::Interface(_) => (RT_SCOPE_LINK, RTN_UNICAST),
        Via::Unreachable => (RT_SCOPE_UNIVERSE, RTN_UNREACHABLE),
    };
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
    m.push(&[family, net.len(), 0, 0, table, RTPROT_STATIC, scope, kind]);
    m.push(&0u32.to_ne_bytes());
    m.attr(RTA_TABLE, &r.table.to_ne_bytes());
    if !net.is_empty() {
        m.attr(RTA_DST, &bytes);
    }
    if let Via::Interface(ifindex) = r.via {
        m.attr(RTA_OIF, &ifindex.to_ne_bytes());
    }
    if r.metric > 0 {
        m.attr(RTA_PRIORITY, &r.metric.to_ne_bytes());
    }
    m
}

fn rule_message(ty: u16, flags: u16, r: Rule) -> Message {
    let mut m = Message::new(ty, flags);
    let family = if r.v6 { libc::AF_INET6 } else { libc::AF_INET } as u8;
    let invert = if r.not_fwmark.is_some() {
        FIB_RULE_INVERT
    } else {
        0
    };
    // struct fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2, action, flags
    m.push(&[family, 0, 0, 0, RT_TABLE_UNSPEC, 0, 0, FR_ACT_TO_TBL]);
    m.push(&invert.to_ne_bytes());
    m.attr(FRA_PRIORITY, &r.priority.to_ne_bytes());
    m.attr(FRA_TABLE, &r.table.to_ne_bytes());
    if let Some(mark) = r.not_fwmark {
        m.attr(FRA_FWMARK, &mark.to_ne_bytes());
        m.attr(FRA_FWMASK, &u32::MAX.to_ne_bytes());
    }
    if let Some(len) = r.suppress_prefixlen {
        m.attr(FRA_SUPPRESS_PREFIXLEN, &len.to_ne_bytes());
    }
    m
}

fn family_bytes(ip: IpAddr) -> (u8, Vec<u8>) {
    match ip {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    }
}

/// A netlink message under construction: header, fixed part, attributes.
struct Message {
    buf: Vec<u8>,
}

impl Message {
    fn new(ty: u16, flags: u16) -> Self {
        let mut buf = vec![0u8; 16];
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        Self { buf }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    fn attr(&mut self, ty: u16, data: &[u8]) {
        let len = u16::try_from(4 + data.len()).expect("attributes are small");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn finish(&mut self, seq: u32) -> &[u8] {
        let len = u32::try_from(self.buf.len()).expect("messages are small");
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        &self.buf
    }
}
