//! Outer messages: what travels in one UDP datagram or one FakeTCP record.
//!
//! Every message starts with a type byte and three reserved bytes (zero on send, ignored on
//! receive), then a 32-bit session index:
//!
//! ```text
//!  0        1                 4                 8
//! +--------+-----------------+-----------------+----------------------------------+
//! |  type  |    reserved     |   index (BE)    |  type-specific body              |
//! +--------+-----------------+-----------------+----------------------------------+
//! ```
//!
//! | type | message             | index is            | body                                   |
//! |------|---------------------|---------------------|----------------------------------------|
//! | 1    | [`HandshakeInit`]   | sender's index      | Noise message 1, `mac1` (16), `mac2` (16) |
//! | 2    | [`HandshakeResponse`]| sender's index     | receiver index (4), Noise message 2    |
//! | 3    | [`CookieReply`]     | receiver's index    | nonce (12), sealed cookie (16 + 16)     |
//! | 4    | [`Data`]            | receiver's index    | counter (8), ciphertext, tag (16)       |
//! | 6    | [`FecParity`]       | receiver's index    | first counter (8), parity shard, tag (16) |
//!
//! A [`FecParity`] message uses the three reserved bytes for its group shape: `k`, `m` and
//! the parity index `j`. Type 5 (the unauthenticated notices of protocol version 1) is no
//! longer defined: a node never answers what it cannot authenticate.

use crate::field::{Field, Rest, be32, be64};
use crate::{Error, Result};

/// The kind of an outer message, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageType {
    /// First handshake message, initiator to responder.
    HandshakeInit = 1,
    /// Second handshake message, responder to initiator.
    HandshakeResponse = 2,
    /// A responder under load asks the initiator to retry with a cookie.
    CookieReply = 3,
    /// An AEAD-sealed packet of an established session.
    Data = 4,
    /// A Reed-Solomon parity shard over a group of data messages, sealed in the session.
    FecParity = 6,
}

impl MessageType {
    /// Reads the type of the message in `buf`.
    pub fn of(buf: &[u8]) -> Result<Self> {
        match buf.first() {
            None => Err(Error::Truncated),
            Some(1) => Ok(Self::HandshakeInit),
            Some(2) => Ok(Self::HandshakeResponse),
            Some(3) => Ok(Self::CookieReply),
            Some(4) => Ok(Self::Data),
            Some(6) => Ok(Self::FecParity),
            Some(&t) => Err(Error::UnknownType(t)),
        }
    }
}

mod field {
    use super::{Field, Rest};
    pub(super) const TYPE: usize = 0;
    pub(super) const RESERVED: Field = 1..4;
    pub(super) const INDEX: Field = 4..8;
    pub(super) const RESPONSE_RECEIVER: Field = 8..12;
    pub(super) const RESPONSE_NOISE: Rest = 12..;
    pub(super) const COUNTER: Field = 8..16;
    pub(super) const COOKIE_NONCE: Field = 8..20;
    pub(super) const COOKIE_SEALED: Field = 20..52;
}

/// Length of the common header (type, reserved, index).
pub const COMMON_LEN: usize = 8;
/// Length of an AEAD tag.
pub const TAG_LEN: usize = 16;
/// Length of each of the `mac1` and `mac2` fields that end a [`HandshakeInit`].
pub const MAC_LEN: usize = 16;
/// Header length of a [`Data`] message: type, reserved, receiver index, counter.
pub const DATA_HEADER_LEN: usize = 16;
/// Per-packet overhead of a [`Data`] message over its plaintext.
pub const DATA_OVERHEAD: usize = DATA_HEADER_LEN + TAG_LEN;
/// Shortest Noise message either handshake side can send (ephemeral, sealed static, sealed
/// empty payload).
pub const NOISE_MIN_LEN: usize = 32 + 32 + TAG_LEN + TAG_LEN;
/// Longest handshake message accepted; bounds the work an unauthenticated packet causes.
pub const HANDSHAKE_MAX_LEN: usize = 1024;
/// Length of a [`CookieReply`].
pub const COOKIE_REPLY_LEN: usize = 52;

macro_rules! view {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name<T: AsRef<[u8]>> {
            buffer: T,
        }

        impl<T: AsRef<[u8]>> $name<T> {
            /// Wraps a buffer without checking it; for emission into a correctly sized buffer.
            pub const fn new_unchecked(buffer: T) -> Self {
                Self { buffer }
            }

            /// Wraps a buffer after [`Self::check_len`]; use this on untrusted input.
            pub fn new_checked(buffer: T) -> Result<Self> {
                let v = Self::new_unchecked(buffer);
                v.check_len()?;
                Ok(v)
            }

            /// Returns the wrapped buffer.
            pub fn into_inner(self) -> T {
                self.buffer
            }

            /// The whole message.
            pub fn as_bytes(&self) -> &[u8] {
                self.buffer.as_ref()
            }

            /// The index field (whose index it is depends on the message type).
            pub fn index(&self) -> u32 {
                be32(self.buffer.as_ref(), field::INDEX)
            }
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> $name<T> {
            /// Writes the type byte, zeroes the reserved bytes and sets the index.
            pub fn set_header(&mut self, index: u32) {
                let b = self.buffer.as_mut();
                b[field::TYPE] = MessageType::$name as u8;
                b[field::RESERVED].fill(0);
                b[field::INDEX].copy_from_slice(&index.to_be_bytes());
            }
        }
    };
}

fn check_type(buf: &[u8], ty: MessageType) -> Result<()> {
    match MessageType::of(buf)? {
        t if t == ty => Ok(()),
        _ => Err(Error::Malformed("message type")),
    }
}

view! {
    /// Handshake message 1: `| 1 | rsv | sender index | Noise msg 1 | mac1 (16) | mac2 (16) |`.
    ///
    /// `mac1` is keyed with the PSK: a responder tells a member's message from a stranger's
    /// with one MAC, before any other work. `mac2` is keyed with a responder's cookie.
    HandshakeInit
}

impl<T: AsRef<[u8]>> HandshakeInit<T> {
    /// Checks the type byte and that the Noise part is within bounds.
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        check_type(b, MessageType::HandshakeInit)?;
        if b.len() < COMMON_LEN + NOISE_MIN_LEN + 2 * MAC_LEN {
            return Err(Error::Truncated);
        }
        if b.len() > HANDSHAKE_MAX_LEN {
            return Err(Error::TrailingBytes);
        }
        Ok(())
    }

    /// The Noise handshake message.
    pub fn noise(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[COMMON_LEN..b.len() - 2 * MAC_LEN]
    }

    /// Everything `mac1` covers: the message up to the `mac1` field.
    pub fn mac1_covered(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[..b.len() - 2 * MAC_LEN]
    }

    /// The `mac1` field: a MAC keyed with the PSK.
    pub fn mac1(&self) -> [u8; MAC_LEN] {
        let b = self.buffer.as_ref();
        let mut m = [0u8; MAC_LEN];
        m.copy_from_slice(&b[b.len() - 2 * MAC_LEN..b.len() - MAC_LEN]);
        m
    }

    /// Everything `mac2` covers: the message up to the `mac2` field (`mac1` included).
    pub fn mac2_covered(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[..b.len() - MAC_LEN]
    }

    /// The `mac2` field: a MAC keyed with a responder cookie, or zeros.
    pub fn mac2(&self) -> [u8; MAC_LEN] {
        let b = self.buffer.as_ref();
        let mut m = [0u8; MAC_LEN];
        m.copy_from_slice(&b[b.len() - MAC_LEN..]);
        m
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> HandshakeInit<T> {
    /// The Noise message area, for writing.
    pub fn noise_mut(&mut self) -> &mut [u8] {
        let b = self.buffer.as_mut();
        let end = b.len() - 2 * MAC_LEN;
        &mut b[COMMON_LEN..end]
    }

    /// Sets the `mac1` field.
    pub fn set_mac1(&mut self, mac: &[u8; MAC_LEN]) {
        let b = self.buffer.as_mut();
        let at = b.len() - 2 * MAC_LEN;
        b[at..at + MAC_LEN].copy_from_slice(mac);
    }

    /// Sets the `mac2` field.
    pub fn set_mac2(&mut self, mac: &[u8; MAC_LEN]) {
        let b = self.buffer.as_mut();
        let at = b.len() - MAC_LEN;
        b[at..].copy_from_slice(mac);
    }
}

/// Total length of a [`HandshakeInit`] carrying a Noise message of `noise_len` bytes.
pub const fn handshake_init_len(noise_len: usize) -> usize {
    COMMON_LEN + noise_len + 2 * MAC_LEN
}

view! {
    /// Handshake message 2: `| 2 | rsv | sender index | receiver index | Noise msg 2 |`.
    HandshakeResponse
}

impl<T: AsRef<[u8]>> HandshakeResponse<T> {
    /// Checks the type byte and that the Noise part is within bounds.
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        check_type(b, MessageType::HandshakeResponse)?;
        if b.len() < field::RESPONSE_NOISE.start + NOISE_MIN_LEN {
            return Err(Error::Truncated);
        }
        if b.len() > HANDSHAKE_MAX_LEN {
            return Err(Error::TrailingBytes);
        }
        Ok(())
    }

    /// The index the initiator chose for this handshake (echoed from message 1).
    pub fn receiver_index(&self) -> u32 {
        be32(self.buffer.as_ref(), field::RESPONSE_RECEIVER)
    }

    /// The Noise handshake message.
    pub fn noise(&self) -> &[u8] {
        &self.buffer.as_ref()[field::RESPONSE_NOISE]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> HandshakeResponse<T> {
    /// Sets the receiver index.
    pub fn set_receiver_index(&mut self, index: u32) {
        self.buffer.as_mut()[field::RESPONSE_RECEIVER].copy_from_slice(&index.to_be_bytes());
    }

    /// The Noise message area, for writing.
    pub fn noise_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::RESPONSE_NOISE]
    }
}

/// Total length of a [`HandshakeResponse`] carrying a Noise message of `noise_len` bytes.
pub const fn handshake_response_len(noise_len: usize) -> usize {
    field::RESPONSE_NOISE.start + noise_len
}

view! {
    /// Cookie reply: `| 3 | rsv | receiver index | nonce (12) | sealed cookie (32) |`.
    CookieReply
}

impl<T: AsRef<[u8]>> CookieReply<T> {
    /// Checks the type byte and the fixed length.
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        check_type(b, MessageType::CookieReply)?;
        match b.len() {
            COOKIE_REPLY_LEN => Ok(()),
            n if n < COOKIE_REPLY_LEN => Err(Error::Truncated),
            _ => Err(Error::TrailingBytes),
        }
    }

    /// The AEAD nonce protecting the cookie.
    pub fn nonce(&self) -> [u8; 12] {
        let mut n = [0u8; 12];
        n.copy_from_slice(&self.buffer.as_ref()[field::COOKIE_NONCE]);
        n
    }

    /// The sealed cookie and its tag.
    pub fn sealed_cookie(&self) -> &[u8] {
        &self.buffer.as_ref()[field::COOKIE_SEALED]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> CookieReply<T> {
    /// Sets the nonce.
    pub fn set_nonce(&mut self, nonce: &[u8; 12]) {
        self.buffer.as_mut()[field::COOKIE_NONCE].copy_from_slice(nonce);
    }

    /// The sealed cookie area, for writing.
    pub fn sealed_cookie_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::COOKIE_SEALED]
    }
}

view! {
    /// Transport data: `| 4 | rsv | receiver index | counter (8) | ciphertext | tag (16) |`.
    ///
    /// The counter is both the AEAD nonce and the replay-window position.
    Data
}

impl<T: AsRef<[u8]>> Data<T> {
    /// Checks the type byte and that a counter and a tag fit.
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        check_type(b, MessageType::Data)?;
        if b.len() < DATA_OVERHEAD {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The sender's packet counter.
    pub fn counter(&self) -> u64 {
        be64(self.buffer.as_ref(), field::COUNTER)
    }

    /// Length of the plaintext this message carries.
    pub fn payload_len(&self) -> usize {
        self.buffer.as_ref().len() - DATA_OVERHEAD
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Data<T> {
    /// Sets the counter.
    pub fn set_counter(&mut self, counter: u64) {
        self.buffer.as_mut()[field::COUNTER].copy_from_slice(&counter.to_be_bytes());
    }

    /// Splits into (header, payload, tag) for in-place sealing or opening.
    pub fn split_mut(&mut self) -> (&mut [u8], &mut [u8], &mut [u8]) {
        let b = self.buffer.as_mut();
        let (head, rest) = b.split_at_mut(DATA_HEADER_LEN);
        let at = rest.len() - TAG_LEN;
        let (payload, tag) = rest.split_at_mut(at);
        (head, payload, tag)
    }
}

/// Header length of a [`FecParity`] message: type, k, m, j, receiver index, first counter.
pub const FEC_HEADER_LEN: usize = 16;

/// Bytes a [`FecParity`] message adds around its shard: the header and the AEAD tag.
pub const FEC_OVERHEAD: usize = FEC_HEADER_LEN + TAG_LEN;

view! {
    /// FEC parity: `| 6 | k | m | j | receiver index | first counter (8) | shard | tag (16) |`.
    ///
    /// The group is the `k` data messages of the session with counters `first ..
    /// first + k`; this is parity shard `j` of `m`. The shard is sealed in the session
    /// (the header is its associated data), so a forged parity message costs its receiver
    /// one AEAD check and nothing more.
    FecParity
}

impl<T: AsRef<[u8]>> FecParity<T> {
    /// Checks the type byte, a sane shape, a non-empty shard and room for the tag.
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        check_type(b, MessageType::FecParity)?;
        if b.len() <= FEC_OVERHEAD {
            return Err(Error::Truncated);
        }
        let (k, m, j) = (b[1], b[2], b[3]);
        if k == 0 || m == 0 || j >= m || usize::from(k) + usize::from(m) > 256 {
            return Err(Error::Malformed("FEC group shape"));
        }
        if be64(b, field::COUNTER)
            .checked_add(u64::from(k) - 1)
            .is_none()
        {
            return Err(Error::Malformed("FEC group past the last counter"));
        }
        Ok(())
    }

    /// Data messages in the group.
    pub fn k(&self) -> u8 {
        self.buffer.as_ref()[1]
    }

    /// Parity shards in the group.
    pub fn m(&self) -> u8 {
        self.buffer.as_ref()[2]
    }

    /// This shard's parity index.
    pub fn j(&self) -> u8 {
        self.buffer.as_ref()[3]
    }

    /// Counter of the group's first data message.
    pub fn first_counter(&self) -> u64 {
        be64(self.buffer.as_ref(), field::COUNTER)
    }

    /// The parity shard (ciphertext until opened).
    pub fn shard(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[FEC_HEADER_LEN..b.len() - TAG_LEN]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> FecParity<T> {
    /// Splits into (header, shard, tag) for in-place sealing or opening.
    pub fn split_mut(&mut self) -> (&mut [u8], &mut [u8], &mut [u8]) {
        let b = self.buffer.as_mut();
        let (head, rest) = b.split_at_mut(FEC_HEADER_LEN);
        let at = rest.len() - TAG_LEN;
        let (shard, tag) = rest.split_at_mut(at);
        (head, shard, tag)
    }
}

/// Writes a parity message header into `out[..FEC_HEADER_LEN]`.
pub fn emit_fec_header(out: &mut [u8], k: u8, m: u8, j: u8, index: u32, first: u64) {
    out[field::TYPE] = MessageType::FecParity as u8;
    out[1] = k;
    out[2] = m;
    out[3] = j;
    out[field::INDEX].copy_from_slice(&index.to_be_bytes());
    out[field::COUNTER].copy_from_slice(&first.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A data message with receiver index 0x01020304, counter 7 and a 4-byte payload.
    /// The same bytes appear in docs/PROTOCOL.md.
    const DATA_BYTES: [u8; 36] = [
        0x04, 0x00, 0x00, 0x00, 0x01, 0x02, 0x03, 0x04, // type, reserved, receiver index
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, // counter
        0xde, 0xad, 0xbe, 0xef, // ciphertext
        0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, // tag
        0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf,
    ];

    #[test]
    fn data_deconstruct() {
        let d = Data::new_checked(&DATA_BYTES[..]).unwrap();
        assert_eq!(d.index(), 0x0102_0304);
        assert_eq!(d.counter(), 7);
        assert_eq!(d.payload_len(), 4);
    }

    #[test]
    fn data_construct() {
        let mut buf = [0xa5u8; 36];
        let mut d = Data::new_unchecked(&mut buf[..]);
        d.set_header(0x0102_0304);
        d.set_counter(7);
        let (_, payload, tag) = d.split_mut();
        payload.copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        for (i, t) in tag.iter_mut().enumerate() {
            *t = 0xa0 + i as u8;
        }
        assert_eq!(buf, DATA_BYTES);
    }

    #[test]
    fn wrong_type_is_refused() {
        assert!(FecParity::new_checked(&DATA_BYTES[..]).is_err());
        assert!(Data::new_checked(&[6u8; 40][..]).is_err());
        assert_eq!(
            MessageType::of(&[5]),
            Err(Error::UnknownType(5)),
            "notices are gone"
        );
        assert_eq!(MessageType::of(&[9]), Err(Error::UnknownType(9)));
        assert_eq!(MessageType::of(&[]), Err(Error::Truncated));
    }

    #[test]
    fn fec_parity_round_trip() {
        let mut buf = [0u8; FEC_OVERHEAD + 3];
        emit_fec_header(&mut buf, 10, 3, 2, 0x0102_0304, 40);
        buf[FEC_HEADER_LEN..FEC_HEADER_LEN + 3].copy_from_slice(&[7, 8, 9]);
        let f = FecParity::new_checked(&buf[..]).unwrap();
        assert_eq!(
            (f.k(), f.m(), f.j(), f.index(), f.first_counter()),
            (10, 3, 2, 0x0102_0304, 40)
        );
        assert_eq!(f.shard(), &[7, 8, 9]);
        let mut bad = buf;
        bad[3] = 3;
        assert!(
            FecParity::new_checked(&bad[..]).is_err(),
            "j must be below m"
        );
        assert!(
            FecParity::new_checked(&buf[..FEC_OVERHEAD]).is_err(),
            "empty shard"
        );
        let mut last = buf;
        emit_fec_header(&mut last, 10, 3, 2, 1, u64::MAX - 8);
        assert!(
            FecParity::new_checked(&last[..]).is_err(),
            "a group whose counters would pass u64::MAX"
        );
        emit_fec_header(&mut last, 10, 3, 2, 1, u64::MAX - 9);
        assert!(FecParity::new_checked(&last[..]).is_ok(), "the last group");
    }

    #[test]
    fn handshake_bounds() {
        let mut init = vec![0u8; handshake_init_len(NOISE_MIN_LEN)];
        HandshakeInit::new_unchecked(&mut init[..]).set_header(42);
        let v = HandshakeInit::new_checked(&init[..]).unwrap();
        assert_eq!(v.noise().len(), NOISE_MIN_LEN);
        assert_eq!(v.index(), 42);
        assert!(HandshakeInit::new_checked(&init[..init.len() - 1]).is_err());
        init.resize(HANDSHAKE_MAX_LEN + 1, 0);
        assert!(HandshakeInit::new_checked(&init[..]).is_err());

        let mut resp = vec![0u8; handshake_response_len(NOISE_MIN_LEN)];
        let mut r = HandshakeResponse::new_unchecked(&mut resp[..]);
        r.set_header(1);
        r.set_receiver_index(2);
        let r = HandshakeResponse::new_checked(&resp[..]).unwrap();
        assert_eq!((r.index(), r.receiver_index()), (1, 2));
        assert!(HandshakeResponse::new_checked(&resp[..resp.len() - 1]).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(d) = Data::new_checked(&bytes[..]) {
                let _ = (d.index(), d.counter(), d.payload_len());
            }
            if let Ok(h) = HandshakeInit::new_checked(&bytes[..]) {
                prop_assert_eq!(h.noise().len() + 40, bytes.len());
                let _ = (h.mac1(), h.mac1_covered(), h.mac2(), h.mac2_covered());
            }
            if let Ok(h) = HandshakeResponse::new_checked(&bytes[..]) {
                let _ = (h.noise(), h.receiver_index());
            }
            if let Ok(c) = CookieReply::new_checked(&bytes[..]) {
                let _ = (c.nonce(), c.sealed_cookie());
            }
            if let Ok(f) = FecParity::new_checked(&bytes[..]) {
                prop_assert!(f.j() < f.m() && f.k() > 0 && !f.shard().is_empty());
                prop_assert!(f.first_counter().checked_add(u64::from(f.k()) - 1).is_some());
                let _ = (f.first_counter(), f.index());
            }
        }

        #[test]
        fn data_round_trip(index: u32, counter: u64, payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = vec![0u8; payload.len() + DATA_OVERHEAD];
            let mut d = Data::new_unchecked(&mut buf[..]);
            d.set_header(index);
            d.set_counter(counter);
            d.split_mut().1.copy_from_slice(&payload);
            let d = Data::new_checked(&buf[..]).unwrap();
            prop_assert_eq!((d.index(), d.counter(), d.payload_len()), (index, counter, payload.len()));
            for cut in 0..DATA_OVERHEAD {
                prop_assert!(Data::new_checked(&buf[..cut]).is_err());
            }
        }
    }
}
