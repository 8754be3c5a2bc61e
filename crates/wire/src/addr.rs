//! Overlay addresses with a prefix length, and their compact encoding.
//!
//! ```text
//! IPv4:  | 4 | a b c d | len |          6 bytes
//! IPv6:  | 6 | 16 address bytes | len | 18 bytes
//! ```

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use core::str::FromStr;

use crate::field::Reader;
use crate::{Error, Result};

/// An IP address together with a prefix length, such as `10.0.0.2/24`.
///
/// The address keeps its host bits: for an interface address they matter. Use
/// [`Prefix::network`] for the masked form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// Builds a prefix; fails if `len` exceeds the address width.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self> {
        if len > max_len(addr) {
            return Err(Error::Malformed("prefix length"));
        }
        Ok(Self { addr, len })
    }

    /// A host prefix (`/32` or `/128`) for one address.
    pub fn host(addr: IpAddr) -> Self {
        Self {
            addr,
            len: max_len(addr),
        }
    }

    /// The address, host bits included.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// True for a zero-length prefix (a default route).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The same prefix with the host bits cleared.
    pub fn network(&self) -> Self {
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        Self {
            addr,
            len: self.len,
        }
    }

    /// True if `ip` lies inside this prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                Self {
                    addr: ip,
                    len: self.len,
                }
                .network()
                    == self.network()
            }
            _ => false,
        }
    }

    /// True if all of `other` lies inside this prefix: its address is inside and its prefix
    /// is no shorter. `10.0.0.0/24` covers `10.0.0.2/24` and `10.0.0.2/32`, not
    /// `10.0.0.2/16`.
    pub fn covers(&self, other: &Self) -> bool {
        other.len >= self.len && self.contains(other.addr)
    }

    /// Number of bytes [`Prefix::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        match self.addr {
            IpAddr::V4(_) => 6,
            IpAddr::V6(_) => 18,
        }
    }

    /// Appends the encoding to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        match self.addr {
            IpAddr::V4(a) => {
                out.push(4);
                out.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                out.push(6);
                out.extend_from_slice(&a.octets());
            }
        }
        out.push(self.len);
    }

    pub(crate) fn parse(r: &mut Reader<'_>) -> Result<Self> {
        let addr = match r.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
            _ => return Err(Error::Malformed("address family")),
        };
        Self::new(addr, r.u8()?)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = Error;

    /// Parses `addr/len`; a bare address becomes a host prefix.
    fn from_str(s: &str) -> Result<Self> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| Error::Malformed("IP address"))?;
        match len {
            Some(l) => Self::new(
                addr,
                l.parse().map_err(|_| Error::Malformed("prefix length"))?,
            ),
            None => Ok(Self::host(addr)),
        }
    }
}

fn max_len(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// Appends a list of prefixes: a count byte, then each prefix.
///
/// # Panics
/// If `list` holds more than 255 prefixes; callers bound their lists well below that.
pub(crate) fn emit_list(list: &[Prefix], out: &mut Vec<u8>) {
    out.push(u8::try_from(list.len()).expect("address lists are capped at MAX_ADDRESSES"));
    for p in list {
        p.emit(out);
    }
}

/// Reads a list written by [`emit_list`], refusing more than [`MAX_ADDRESSES`] entries.
pub(crate) fn parse_list(r: &mut Reader<'_>) -> Result<Vec<Prefix>> {
    let n = r.u8()?;
    if usize::from(n) > MAX_ADDRESSES {
        return Err(Error::Malformed("too many addresses"));
    }
    (0..n).map(|_| Prefix::parse(r)).collect()
}

/// The most addresses one node may hold; keeps every list inside one control frame.
pub const MAX_ADDRESSES: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        let p: Prefix = "10.0.0.2/24".parse().unwrap();
        assert_eq!(p.to_string(), "10.0.0.2/24");
        assert_eq!(p.network().to_string(), "10.0.0.0/24");
        assert!(p.contains("10.0.0.200".parse().unwrap()));
        assert!(!p.contains("10.0.1.1".parse().unwrap()));
        assert!(!p.contains("::1".parse().unwrap()));
        let h: Prefix = "fd00::2".parse().unwrap();
        assert_eq!(h.len(), 128);
        assert!("10.0.0.1/33".parse::<Prefix>().is_err());
        assert!("nonsense/8".parse::<Prefix>().is_err());
        let zero: Prefix = "0.0.0.0/0".parse().unwrap();
        assert!(zero.contains("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn covers() {
        let net: Prefix = "10.0.0.0/24".parse().unwrap();
        let p = |s: &str| s.parse::<Prefix>().unwrap();
        assert!(net.covers(&p("10.0.0.2/24")) && net.covers(&p("10.0.0.2/32")));
        assert!(!net.covers(&p("10.0.0.2/16")), "a wider route");
        assert!(!net.covers(&p("8.8.8.8/32")) && !net.covers(&p("fd00::2/64")));
        assert!(p("0.0.0.0/0").covers(&p("8.0.0.0/1")));
    }

    #[test]
    fn encoding() {
        let list: Vec<Prefix> = vec![
            "10.0.0.2/24".parse().unwrap(),
            "fd00::2/64".parse().unwrap(),
        ];
        let mut out = Vec::new();
        emit_list(&list, &mut out);
        assert_eq!(&out[..7], &[2, 4, 10, 0, 0, 2, 24]);
        assert_eq!(out.len(), 1 + 6 + 18);
        let mut r = Reader::new(&out);
        assert_eq!(parse_list(&mut r).unwrap(), list);
        r.finish().unwrap();
        for cut in 0..out.len() {
            assert!(parse_list(&mut Reader::new(&out[..cut])).is_err());
        }
    }
}
