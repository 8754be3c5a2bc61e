//! The Internet checksum (RFC 1071) and the TCP/UDP pseudo-header.

use core::net::IpAddr;

/// Adds `data` to a running one's-complement sum (not yet folded).
pub fn sum(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

/// Folds a running sum into the final 16-bit checksum (complemented).
pub fn finish(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The checksum of `data` alone (an IPv4 header, for example).
pub fn data(data: &[u8]) -> u16 {
    finish(sum(0, data))
}

/// The running sum of the pseudo-header for a transport segment of `len` bytes.
///
/// # Panics
/// If `src` and `dst` are of different families.
pub fn pseudo_header(src: IpAddr, dst: IpAddr, protocol: u8, len: usize) -> u32 {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let acc = sum(sum(0, &s.octets()), &d.octets());
            acc + u32::from(protocol) + (len as u32 & 0xffff)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let acc = sum(sum(0, &s.octets()), &d.octets());
            acc + (len as u32 >> 16) + (len as u32 & 0xffff) + u32::from(protocol)
        }
        _ => panic!("pseudo-header of mixed address families"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071's example: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2, checksum 220d.
    #[test]
    fn rfc1071_example() {
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(finish(sum(0, &d)), !0xddf2);
        assert_eq!(data(&d), 0x220d);
    }

    #[test]
    fn odd_length_and_verification() {
        let d = [0x45, 0x00, 0x00, 0x1c, 0xab];
        let c = data(&d);
        let mut with = d.to_vec();
        with.push(0);
        with.extend_from_slice(&c.to_be_bytes());
        assert_eq!(
            data(&with),
            0,
            "a buffer including its own checksum sums to zero"
        );
    }
}
