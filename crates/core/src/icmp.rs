//! ICMP errors the endpoint writes back into the TUN: "fragmentation needed" (IPv4) and
//! "packet too big" (IPv6) for a packet larger than its path carries, so the sender's PMTU
//! cache adapts instead of its packets vanishing.

use core::net::IpAddr;

use culvert_wire::checksum;

/// An IPv6 error message may quote the offending packet up to this total size.
const IPV6_MIN_MTU: usize = 1280;

/// The error for `packet` (a whole IP packet), from `src`, telling its sender the path
/// carries `mtu` bytes. `None` when no error is due: an IPv4 packet without DF (the sender
/// allows fragmentation: it would ignore the error), an ICMP error itself, an unparsable
/// packet, or a source address of another family.
pub fn too_big(packet: &[u8], mtu: u16, src: IpAddr) -> Option<Vec<u8>> {
    match (packet.first()? >> 4, src) {
        (4, IpAddr::V4(s)) => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            let df = packet.get(6)? & 0x40 != 0;
            let proto = *packet.get(9)?;
            let is_error = proto == 1 && packet.get(ihl).is_some_and(|t| ![0, 8].contains(t));
            if ihl < 20 || packet.len() < ihl || !df || is_error {
                return None;
            }
            let quote = &packet[..packet.len().min(ihl + 8)];
            let mut out = Vec::with_capacity(28 + quote.len());
            let total = u16::try_from(28 + quote.len()).ok()?;
            out.extend_from_slice(&[0x45, 0]);
            out.extend_from_slice(&total.to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 0, 64, 1, 0, 0]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&packet[12..16]);
            let c = checksum::data(&out[..20]);
            out[10..12].copy_from_slice(&c.to_be_bytes());
            out.extend_from_slice(&[3, 4, 0, 0, 0, 0]);
            out.extend_from_slice(&mtu.to_be_bytes());
            out.extend_from_slice(quote);
            let c = checksum::data(&out[20..]);
            out[22..24].copy_from_slice(&c.to_be_bytes());
            Some(out)
        }
        (6, IpAddr::V6(s)) => {
            if packet.len() < 40 {
                return None;
            }
            let is_error = packet[6] == 58 && packet.get(40).is_some_and(|t| *t < 128);
            if is_error {
                return None;
            }
            let quote = &packet[..packet.len().min(IPV6_MIN_MTU - 48)];
            let body_len = 8 + quote.len();
            let mut out = Vec::with_capacity(40 + body_len);
            out.extend_from_slice(&[0x60, 0, 0, 0]);
            out.extend_from_slice(&u16::try_from(body_len).ok()?.to_be_bytes());
            out.extend_from_slice(&[58, 64]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&packet[8..24]);
            out.extend_from_slice(&[2, 0, 0, 0]);
            out.extend_from_slice(&u32::from(mtu).to_be_bytes());
            out.extend_from_slice(quote);
            let mut dst = [0u8; 16];
            dst.copy_from_slice(&packet[8..24]);
            let acc = checksum::pseudo_header(src, IpAddr::from(dst), 58, body_len);
            let c = checksum::finish(checksum::sum(acc, &out[40..]));
            out[42..44].copy_from_slice(&c.to_be_bytes());
            Some(out)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(df: bool, len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[6] = if df { 0x40 } else { 0 };
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 0, 0, 2]);
        p[16..20].copy_from_slice(&[198, 18, 3, 2]);
        p
    }

    #[test]
    fn ipv4_frag_needed_quotes_the_header_and_checks_out() {
        let p = v4(true, 1400);
        let e = too_big(&p, 1200, "10.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(e.len(), 20 + 8 + 28);
        assert_eq!(&e[16..20], &[10, 0, 0, 2], "back to the sender");
        assert_eq!((e[20], e[21]), (3, 4));
        assert_eq!(u16::from_be_bytes([e[26], e[27]]), 1200);
        assert_eq!(checksum::data(&e[..20]), 0, "IP header checksum");
        assert_eq!(checksum::data(&e[20..]), 0, "ICMP checksum");
        assert_eq!(&e[28..48], &p[..20]);
        assert_eq!(
            too_big(&v4(false, 1400), 1200, "10.0.0.1".parse().unwrap()),
            None
        );
    }

    #[test]
    fn ipv6_packet_too_big_fits_1280_and_checks_out() {
        let mut p = vec![0u8; 1400];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&1360u16.to_be_bytes());
        p[6] = 6;
        p[8..24].copy_from_slice(&"fd00::2".parse::<core::net::Ipv6Addr>().unwrap().octets());
        let src: IpAddr = "fd00::1".parse().unwrap();
        let e = too_big(&p, 1200, src).unwrap();
        assert_eq!(e.len(), 1280);
        assert_eq!((e[40], e[41]), (2, 0));
        assert_eq!(u32::from_be_bytes([e[44], e[45], e[46], e[47]]), 1200);
        let acc = checksum::pseudo_header(src, "fd00::2".parse().unwrap(), 58, e.len() - 40);
        assert_eq!(checksum::finish(checksum::sum(acc, &e[40..])), 0);
    }

    #[test]
    fn no_error_for_errors_or_garbage() {
        let mut p = v4(true, 100);
        p[9] = 1;
        p[20] = 3;
        assert_eq!(too_big(&p, 1200, "10.0.0.1".parse().unwrap()), None);
        assert_eq!(
            too_big(&[0x45, 0, 0], 1200, "10.0.0.1".parse().unwrap()),
            None
        );
        assert_eq!(too_big(&[], 1200, "10.0.0.1".parse().unwrap()), None);
        assert_eq!(
            too_big(&v4(true, 100), 1200, "fd00::1".parse().unwrap()),
            None
        );
    }
}
