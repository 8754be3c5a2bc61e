//! The few IPv4/IPv6 header fields the overlay needs to route a packet.
//!
//! ```text
//! IPv4: | ver/ihl | tos | total length (2) | ... | src (4) @12 | dst (4) @16 |
//! IPv6: | ver/tc/flow (4) | payload length (2) | next | hop | src (16) @8 | dst (16) @24 |
//! ```

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::field::{Field, be16};
use crate::{Error, Result};

mod field {
    use super::Field;
    pub(super) const V4_TOTAL_LEN: Field = 2..4;
    pub(super) const V4_PROTOCOL: usize = 9;
    pub(super) const V4_SRC: Field = 12..16;
    pub(super) const V4_DST: Field = 16..20;
    pub(super) const V6_PAYLOAD_LEN: Field = 4..6;
    pub(super) const V6_NEXT_HEADER: usize = 6;
    pub(super) const V6_SRC: Field = 8..24;
    pub(super) const V6_DST: Field = 24..40;
}

/// Length of an IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// Length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;

/// A read view of an IPv4 or IPv6 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer after checking the version and that the header fits and the length
    /// fields do not exceed the buffer.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        match b.first().map(|v| v >> 4) {
            None => return Err(Error::Truncated),
            Some(4) => {
                let ihl = usize::from(b[0] & 0x0f) * 4;
                if b.len() < IPV4_HEADER_LEN || b.len() < ihl {
                    return Err(Error::Truncated);
                }
                if ihl < IPV4_HEADER_LEN {
                    return Err(Error::Malformed("IPv4 header length"));
                }
                let total = usize::from(be16(b, field::V4_TOTAL_LEN));
                if total < ihl || total > b.len() {
                    return Err(Error::Malformed("IPv4 total length"));
                }
            }
            Some(6) => {
                if b.len() < IPV6_HEADER_LEN {
                    return Err(Error::Truncated);
                }
                if IPV6_HEADER_LEN + usize::from(be16(b, field::V6_PAYLOAD_LEN)) > b.len() {
                    return Err(Error::Malformed("IPv6 payload length"));
                }
            }
            Some(v) => return Err(Error::UnsupportedVersion(v)),
        }
        Ok(Self { buffer })
    }

    /// 4 or 6.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    /// Source address.
    pub fn src_addr(&self) -> IpAddr {
        self.addr(field::V4_SRC, field::V6_SRC)
    }

    /// Destination address.
    pub fn dst_addr(&self) -> IpAddr {
        self.addr(field::V4_DST, field::V6_DST)
    }

    /// The IPv4 protocol or IPv6 next-header byte.
    pub fn protocol(&self) -> u8 {
        let b = self.buffer.as_ref();
        if self.version() == 4 {
            b[field::V4_PROTOCOL]
        } else {
            b[field::V6_NEXT_HEADER]
        }
    }

    /// Length the header says the packet has (may be less than the buffer).
    pub fn total_len(&self) -> usize {
        let b = self.buffer.as_ref();
        if self.version() == 4 {
            usize::from(be16(b, field::V4_TOTAL_LEN))
        } else {
            IPV6_HEADER_LEN + usize::from(be16(b, field::V6_PAYLOAD_LEN))
        }
    }

    fn addr(&self, v4: Field, v6: Field) -> IpAddr {
        let b = self.buffer.as_ref();
        if self.version() == 4 {
            let mut a = [0u8; 4];
            a.copy_from_slice(&b[v4]);
            IpAddr::V4(Ipv4Addr::from(a))
        } else {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[v6]);
            IpAddr::V6(Ipv6Addr::from(a))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An ICMP echo request 10.0.0.2 -> 10.0.0.1 (header only, 28 bytes total).
    const V4: [u8; 28] = [
        0x45, 0x00, 0x00, 0x1c, 0x00, 0x01, 0x00, 0x00, 0x40, 0x01, 0x00, 0x00, 10, 0, 0, 2, 10, 0,
        0, 1, 8, 0, 0xf7, 0xff, 0, 0, 0, 0,
    ];

    #[test]
    fn ipv4() {
        let p = Packet::new_checked(&V4[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.src_addr(), "10.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(p.dst_addr(), "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(p.protocol(), 1);
        assert_eq!(p.total_len(), 28);
        assert!(Packet::new_checked(&V4[..27]).is_err());
        let mut bad = V4;
        bad[0] = 0x44;
        assert!(Packet::new_checked(&bad[..]).is_err());
    }

    #[test]
    fn ipv6() {
        let mut v6 = [0u8; 48];
        v6[0] = 0x60;
        v6[5] = 8;
        v6[6] = 58;
        v6[8..24].copy_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        v6[24..40].copy_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        let p = Packet::new_checked(&v6[..]).unwrap();
        assert_eq!(p.dst_addr(), "fd00::1".parse::<IpAddr>().unwrap());
        assert_eq!(p.protocol(), 58);
        assert_eq!(p.total_len(), 48);
        assert!(Packet::new_checked(&v6[..47]).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) {
                let _ = (p.src_addr(), p.dst_addr(), p.protocol(), p.total_len());
            }
        }
    }
}
