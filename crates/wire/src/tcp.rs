//! TCP segments in IPv4/IPv6 packets, as FakeTCP sends and receives them, and the record
//! framing of culvert messages inside them.
//!
//! ```text
//! IPv4 (20) or IPv6 (40) | TCP (20 + options) | record | record ... |
//! record: | length (u16) | culvert outer message |
//! ```
//!
//! Records are self-delimiting, so a receiver that sees several segments merged into one
//! (GRO) still finds every message.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use core::ops::Range;

use crate::checksum;
use crate::field::be16;
use crate::{Error, Result};

/// TCP flag bits.
pub mod flags {
    /// No more data from the sender.
    pub const FIN: u8 = 0x01;
    /// Synchronise sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push.
    pub const PSH: u8 = 0x08;
    /// The acknowledgement field is significant.
    pub const ACK: u8 = 0x10;
}

const PROTO_TCP: u8 = 6;
/// Base TCP header length.
pub const TCP_HEADER_LEN: usize = 20;
/// Length of the options we put on SYN and SYN-ACK (MSS, SACK-permitted, timestamps,
/// window scale, in Linux's order).
pub const SYN_OPTIONS_LEN: usize = 20;
/// Length of the options on other segments (two NOPs and a timestamp).
pub const TS_OPTIONS_LEN: usize = 12;
/// Length of a record's length prefix.
pub const RECORD_HEADER_LEN: usize = 2;

/// Which options a segment carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentOptions {
    /// SYN / SYN-ACK: MSS, SACK-permitted, timestamps, window scale.
    Syn {
        /// Maximum segment size announced.
        mss: u16,
        /// Window scale shift announced.
        wscale: u8,
        /// Timestamp value.
        tsval: u32,
        /// Timestamp echo reply.
        tsecr: u32,
    },
    /// Any other segment: timestamps only.
    Timestamps {
        /// Timestamp value.
        tsval: u32,
        /// Timestamp echo reply.
        tsecr: u32,
    },
}

impl SegmentOptions {
    fn len(&self) -> usize {
        match self {
            Self::Syn { .. } => SYN_OPTIONS_LEN,
            Self::Timestamps { .. } => TS_OPTIONS_LEN,
        }
    }
}

/// Everything needed to write the IP and TCP headers of one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentRepr {
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// [`flags`] bits.
    pub flags: u8,
    /// Advertised window (unscaled field value).
    pub window: u16,
    /// IPv4 identification (ignored for IPv6).
    pub ip_id: u16,
    /// TCP options.
    pub options: SegmentOptions,
}

impl SegmentRepr {
    /// Bytes of IP and TCP headers before the payload.
    pub fn header_len(&self) -> usize {
        ip_header_len(self.src.ip()) + TCP_HEADER_LEN + self.options.len()
    }

    /// Writes the headers into `packet[..header_len()]`, the payload being already in place
    /// at `packet[header_len()..]`, and fills both checksums.
    ///
    /// # Panics
    /// If the addresses are of different families, or the packet exceeds 65535 bytes.
    pub fn emit(&self, packet: &mut [u8]) {
        let ip_len = ip_header_len(self.src.ip());
        let total = packet.len();
        let tcp_len = total - ip_len;
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let h = &mut packet[..20];
                h[0] = 0x45;
                h[1] = 0;
                h[2..4].copy_from_slice(
                    &u16::try_from(total)
                        .expect("packets fit in 64 KiB")
                        .to_be_bytes(),
                );
                h[4..6].copy_from_slice(&self.ip_id.to_be_bytes());
                h[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // don't fragment
                h[8] = 64;
                h[9] = PROTO_TCP;
                h[10..12].fill(0);
                h[12..16].copy_from_slice(&s.octets());
                h[16..20].copy_from_slice(&d.octets());
                let c = checksum::data(h);
                h[10..12].copy_from_slice(&c.to_be_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let h = &mut packet[..40];
                h[0..4].copy_from_slice(&0x6000_0000u32.to_be_bytes());
                h[4..6].copy_from_slice(
                    &u16::try_from(tcp_len)
                        .expect("packets fit in 64 KiB")
                        .to_be_bytes(),
                );
                h[6] = PROTO_TCP;
                h[7] = 64;
                h[8..24].copy_from_slice(&s.octets());
                h[24..40].copy_from_slice(&d.octets());
            }
            _ => panic!("segment with mixed address families"),
        }
        let t = &mut packet[ip_len..];
        t[0..2].copy_from_slice(&self.src.port().to_be_bytes());
        t[2..4].copy_from_slice(&self.dst.port().to_be_bytes());
        t[4..8].copy_from_slice(&self.seq.to_be_bytes());
        t[8..12].copy_from_slice(&self.ack.to_be_bytes());
        let doff = u8::try_from((TCP_HEADER_LEN + self.options.len()) / 4).expect("small header");
        t[12] = doff << 4;
        t[13] = self.flags;
        t[14..16].copy_from_slice(&self.window.to_be_bytes());
        t[16..20].fill(0); // checksum, urgent pointer
        let o = &mut t[20..20 + self.options.len()];
        match self.options {
            SegmentOptions::Syn {
                mss,
                wscale,
                tsval,
                tsecr,
            } => {
                o[0..4].copy_from_slice(&[2, 4, (mss >> 8) as u8, mss as u8]);
                o[4..6].copy_from_slice(&[4, 2]);
                o[6..8].copy_from_slice(&[8, 10]);
                o[8..12].copy_from_slice(&tsval.to_be_bytes());
                o[12..16].copy_from_slice(&tsecr.to_be_bytes());
                o[16..20].copy_from_slice(&[1, 3, 3, wscale]);
            }
            SegmentOptions::Timestamps { tsval, tsecr } => {
                o[0..4].copy_from_slice(&[1, 1, 8, 10]);
                o[4..8].copy_from_slice(&tsval.to_be_bytes());
                o[8..12].copy_from_slice(&tsecr.to_be_bytes());
            }
        }
        let acc = checksum::pseudo_header(self.src.ip(), self.dst.ip(), PROTO_TCP, tcp_len);
        let c = checksum::finish(checksum::sum(acc, &packet[ip_len..]));
        packet[ip_len + 16..ip_len + 18].copy_from_slice(&c.to_be_bytes());
    }
}

/// IP header length we emit for an address family.
pub fn ip_header_len(ip: IpAddr) -> usize {
    if ip.is_ipv4() { 20 } else { 40 }
}

/// A received segment, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// [`flags`] bits.
    pub flags: u8,
    /// Advertised window (unscaled).
    pub window: u16,
    /// Timestamp option, if present: (value, echo reply).
    pub timestamps: Option<(u32, u32)>,
    /// Window scale option, if present (SYN only).
    pub wscale: Option<u8>,
    /// Where the payload lies in the packet.
    pub payload: Range<usize>,
}

impl Segment {
    /// Parses an IPv4 or IPv6 packet carrying TCP. Checksums are not verified: the
    /// messages inside are authenticated, and a receiver's GRO may have merged segments
    /// without recomputing them.
    pub fn parse(packet: &[u8]) -> Result<Self> {
        let (src_ip, dst_ip, l4) = match packet.first().map(|b| b >> 4) {
            Some(4) => {
                if packet.len() < 20 {
                    return Err(Error::Truncated);
                }
                let ihl = usize::from(packet[0] & 0x0f) * 4;
                let total = usize::from(be16(packet, 2..4));
                if ihl < 20 || total < ihl || total > packet.len() {
                    return Err(Error::Malformed("IPv4 lengths"));
                }
                if packet[9] != PROTO_TCP {
                    return Err(Error::Malformed("not TCP"));
                }
                if be16(packet, 6..8) & 0x3fff != 0 {
                    return Err(Error::Malformed("IPv4 fragment"));
                }
                let s: [u8; 4] = packet[12..16].try_into().map_err(|_| Error::Truncated)?;
                let d: [u8; 4] = packet[16..20].try_into().map_err(|_| Error::Truncated)?;
                (
                    IpAddr::V4(Ipv4Addr::from(s)),
                    IpAddr::V4(Ipv4Addr::from(d)),
                    ihl..total,
                )
            }
            Some(6) => {
                if packet.len() < 40 {
                    return Err(Error::Truncated);
                }
                let end = 40 + usize::from(be16(packet, 4..6));
                if end > packet.len() {
                    return Err(Error::Malformed("IPv6 payload length"));
                }
                if packet[6] != PROTO_TCP {
                    return Err(Error::Malformed("not TCP"));
                }
                let s: [u8; 16] = packet[8..24].try_into().map_err(|_| Error::Truncated)?;
                let d: [u8; 16] = packet[24..40].try_into().map_err(|_| Error::Truncated)?;
                (
                    IpAddr::V6(Ipv6Addr::from(s)),
                    IpAddr::V6(Ipv6Addr::from(d)),
                    40..end,
                )
            }
            Some(v) => return Err(Error::UnsupportedVersion(v)),
            None => return Err(Error::Truncated),
        };
        let t = &packet[l4.clone()];
        if t.len() < TCP_HEADER_LEN {
            return Err(Error::Truncated);
        }
        let doff = usize::from(t[12] >> 4) * 4;
        if doff < TCP_HEADER_LEN || doff > t.len() {
            return Err(Error::Malformed("TCP data offset"));
        }
        let (mut timestamps, mut wscale) = (None, None);
        let mut opts = &t[TCP_HEADER_LEN..doff];
        while let Some(&kind) = opts.first() {
            match kind {
                0 => break,
                1 => opts = &opts[1..],
                _ => {
                    let len = usize::from(*opts.get(1).ok_or(Error::Malformed("TCP option"))?);
                    if len < 2 || len > opts.len() {
                        return Err(Error::Malformed("TCP option length"));
                    }
                    match (kind, len) {
                        (8, 10) => {
                            let v = u32::from_be_bytes(
                                opts[2..6].try_into().map_err(|_| Error::Truncated)?,
                            );
                            let e = u32::from_be_bytes(
                                opts[6..10].try_into().map_err(|_| Error::Truncated)?,
                            );
                            timestamps = Some((v, e));
                        }
                        (3, 3) => wscale = Some(opts[2]),
                        _ => {}
                    }
                    opts = &opts[len..];
                }
            }
        }
        Ok(Self {
            src: SocketAddr::new(src_ip, be16(t, 0..2)),
            dst: SocketAddr::new(dst_ip, be16(t, 2..4)),
            seq: u32::from_be_bytes(t[4..8].try_into().map_err(|_| Error::Truncated)?),
            ack: u32::from_be_bytes(t[8..12].try_into().map_err(|_| Error::Truncated)?),
            flags: t[13],
            window: be16(t, 14..16),
            timestamps,
            wscale,
            payload: l4.start + doff..l4.end,
        })
    }

    /// Whether a flag is set.
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Verifies the IP (v4) and TCP checksums of a packet; for tests and captures.
pub fn checksums_ok(packet: &[u8]) -> bool {
    let Ok(s) = Segment::parse(packet) else {
        return false;
    };
    let ip_len = if s.src.is_ipv4() {
        usize::from(packet[0] & 0x0f) * 4
    } else {
        40
    };
    if s.src.is_ipv4() && checksum::data(&packet[..ip_len]) != 0 {
        return false;
    }
    let tcp = &packet[ip_len..s.payload.end];
    let acc = checksum::pseudo_header(s.src.ip(), s.dst.ip(), PROTO_TCP, tcp.len());
    checksum::finish(checksum::sum(acc, tcp)) == 0
}

/// Iterates over the records of a payload; a malformed tail ends the iteration with an
/// error item.
pub fn records(payload: &[u8]) -> Records<'_> {
    Records {
        rest: payload,
        offset: 0,
    }
}

/// Iterator returned by [`records`]: each item is the message's range within the payload.
#[derive(Debug)]
pub struct Records<'a> {
    rest: &'a [u8],
    offset: usize,
}

impl Iterator for Records<'_> {
    type Item = Result<Range<usize>>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = next_record(self.rest, 0)?;
        match &item {
            Ok(r) => {
                let (start, end) = (self.offset + r.start, self.offset + r.end);
                self.rest = &self.rest[r.end..];
                self.offset += r.end;
                Some(Ok(start..end))
            }
            Err(_) => {
                self.rest = &[];
                Some(item)
            }
        }
    }
}

/// The message of the record that starts at `at` in `payload` (its range in `payload`), or
/// `None` at the end. For callers that modify the payload between records.
pub fn next_record(payload: &[u8], at: usize) -> Option<Result<Range<usize>>> {
    let rest = payload.get(at..).filter(|r| !r.is_empty())?;
    if rest.len() < RECORD_HEADER_LEN {
        return Some(Err(Error::Truncated));
    }
    let len = usize::from(be16(rest, 0..2));
    if len == 0 || RECORD_HEADER_LEN + len > rest.len() {
        return Some(Err(Error::Malformed("record length")));
    }
    let start = at + RECORD_HEADER_LEN;
    Some(Ok(start..start + len))
}

/// Writes a record header for a message of `len` bytes.
///
/// # Panics
/// If `len` exceeds 65535.
pub fn emit_record_header(out: &mut [u8; RECORD_HEADER_LEN], len: usize) {
    out.copy_from_slice(
        &u16::try_from(len)
            .expect("messages fit in 64 KiB")
            .to_be_bytes(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn repr(src: &str, dst: &str, options: SegmentOptions) -> SegmentRepr {
        SegmentRepr {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            seq: 0xffff_fff0,
            ack: 7,
            flags: flags::ACK | flags::PSH,
            window: 512,
            ip_id: 0x1234,
            options,
        }
    }

    #[test]
    fn emit_parse_round_trip_v4_and_v6() {
        for (src, dst) in [
            ("198.18.1.2:40000", "198.19.1.2:9000"),
            ("[2001:db8::2]:40000", "[2001:db8::1]:9000"),
        ] {
            let r = repr(
                src,
                dst,
                SegmentOptions::Timestamps {
                    tsval: 100,
                    tsecr: 99,
                },
            );
            let payload = [0u8, 3, 0xaa, 0xbb, 0xcc];
            let mut pkt = vec![0u8; r.header_len() + payload.len()];
            pkt[r.header_len()..].copy_from_slice(&payload);
            r.emit(&mut pkt);
            assert!(checksums_ok(&pkt), "checksums of {src}");
            let s = Segment::parse(&pkt).unwrap();
            assert_eq!(
                (s.src, s.dst, s.seq, s.ack, s.flags, s.window),
                (r.src, r.dst, r.seq, r.ack, r.flags, r.window)
            );
            assert_eq!(s.timestamps, Some((100, 99)));
            assert_eq!(&pkt[s.payload.clone()], &payload);
            let recs: Vec<_> = records(&pkt[s.payload.clone()]).collect();
            assert_eq!(recs, vec![Ok(2..5)]);
        }
    }

    #[test]
    fn syn_options_look_like_linux() {
        let r = repr(
            "198.18.1.2:40000",
            "198.19.1.2:9000",
            SegmentOptions::Syn {
                mss: 1460,
                wscale: 7,
                tsval: 1,
                tsecr: 0,
            },
        );
        let mut pkt = vec![0u8; r.header_len()];
        r.emit(&mut pkt);
        assert_eq!(pkt.len(), 60);
        assert_eq!(&pkt[40..44], &[2, 4, 0x05, 0xb4], "MSS 1460 first");
        assert_eq!(
            &pkt[44..48],
            &[4, 2, 8, 10],
            "SACK-permitted, then timestamps"
        );
        assert_eq!(&pkt[56..60], &[1, 3, 3, 7], "NOP, window scale 7");
        let s = Segment::parse(&pkt).unwrap();
        assert_eq!((s.wscale, s.timestamps), (Some(7), Some((1, 0))));
        assert!(checksums_ok(&pkt));
        pkt[50] ^= 1;
        assert!(!checksums_ok(&pkt));
    }

    #[test]
    fn merged_records() {
        let payload = [0, 1, 9, 0, 2, 8, 8, 0, 5];
        let recs: Vec<_> = records(&payload).collect();
        assert_eq!(recs[..2], [Ok(2..3), Ok(5..7)]);
        assert!(recs[2].is_err(), "a cut record is an error");
        assert!(
            records(&[0, 0]).next().unwrap().is_err(),
            "empty records are refused"
        );
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(s) = Segment::parse(&bytes) {
                prop_assert!(s.payload.end <= bytes.len());
                for r in records(&bytes[s.payload.clone()]).flatten() {
                    prop_assert!(r.end <= s.payload.len());
                }
            }
            let _ = checksums_ok(&bytes);
        }

        #[test]
        fn truncations_are_errors(cut in 0usize..60) {
            let r = repr("198.18.1.2:40000", "198.19.1.2:9000", SegmentOptions::Syn { mss: 1460, wscale: 7, tsval: 1, tsecr: 0 });
            let mut pkt = vec![0u8; r.header_len()];
            r.emit(&mut pkt);
            prop_assert!(Segment::parse(&pkt[..cut]).is_err());
        }
    }
}
