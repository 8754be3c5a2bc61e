//! Handshake payloads: what the Noise messages carry, encrypted and authenticated.
//!
//! ```text
//! Hello (message 1):   | version = 3 | kind | ciphers | timestamp (8) | address list |
//!                      | route list | padding length (2) | padding (zeros) |
//! Welcome (message 2): | 0 | cipher | node id (4) | flags | keepalive s (2) |
//!                      | responder address list | granted address list |
//! Refusal (message 2): | code (1..) | text length | UTF-8 text |
//! ```
//!
//! An address list is a count byte followed by [`crate::addr::Prefix`] encodings.

use crate::addr::{self, Prefix};
use crate::field::Reader;
use crate::{Error, Result};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u8 = 3;

/// What the initiator wants from the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum HelloKind {
    /// A client joins the hub and claims overlay addresses.
    Join = 1,
    /// Two nodes open an end-to-end session (addresses come from the directory).
    Peer = 2,
}

/// Data ciphers, as a bit set in [`Hello::ciphers`] and a value in [`Welcome::cipher`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Cipher {
    /// AES-256-GCM: the default where the CPU has AES instructions.
    Aes256Gcm = 1,
    /// ChaCha20-Poly1305: for CPUs without AES instructions.
    ChaCha20Poly1305 = 2,
}

impl Cipher {
    /// Decodes a single cipher value.
    pub fn from_u8(v: u8) -> Result<Self> {
        match v {
            1 => Ok(Self::Aes256Gcm),
            2 => Ok(Self::ChaCha20Poly1305),
            _ => Err(Error::Malformed("cipher")),
        }
    }
}

/// Payload of handshake message 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Join the hub, or open a peer session.
    pub kind: HelloKind,
    /// Bit set of acceptable [`Cipher`]s, in the initiator's order of preference: bit 0
    /// AES-256-GCM, bit 1 ChaCha20-Poly1305; bit 7 says ChaCha20 is preferred.
    pub ciphers: u8,
    /// Initiator's wall clock in nanoseconds since the Unix epoch; responders refuse a
    /// timestamp not greater than the last one they accepted from the same key (replay).
    pub timestamp: u64,
    /// Overlay addresses claimed (join), or empty.
    pub addresses: Vec<Prefix>,
    /// Subnets behind the initiator it offers to route for (join), or empty.
    pub routes: Vec<Prefix>,
    /// Zero bytes appended so that message 1 is at least as long as any reply to it: a
    /// responder never answers with more bytes than it received.
    pub padding: u16,
}

impl Hello {
    /// Appends the encoding to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.push(PROTOCOL_VERSION);
        out.push(self.kind as u8);
        out.push(self.ciphers);
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        addr::emit_list(&self.addresses, out);
        addr::emit_list(&self.routes, out);
        out.extend_from_slice(&self.padding.to_be_bytes());
        out.resize(out.len() + usize::from(self.padding), 0);
    }

    /// Encoded length without padding.
    pub fn unpadded_len(&self) -> usize {
        let list = |l: &[Prefix]| 1 + l.iter().map(Prefix::buffer_len).sum::<usize>();
        3 + 8 + list(&self.addresses) + list(&self.routes) + 2
    }

    /// Parses a payload; all of it must be consumed.
    pub fn parse(buf: &[u8]) -> Result<Self> {
        let mut r = Reader::new(buf);
        let version = r.u8()?;
        if version != PROTOCOL_VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let kind = match r.u8()? {
            1 => HelloKind::Join,
            2 => HelloKind::Peer,
            _ => return Err(Error::Malformed("hello kind")),
        };
        let ciphers = r.u8()?;
        let timestamp = r.u64()?;
        let addresses = addr::parse_list(&mut r)?;
        let routes = addr::parse_list(&mut r)?;
        let padding = r.u16()?;
        r.take(usize::from(padding))?;
        r.finish()?;
        Ok(Self {
            kind,
            ciphers,
            timestamp,
            addresses,
            routes,
            padding,
        })
    }
}

/// Why a responder refused a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RefusalCode {
    /// An address claimed is held by another node.
    AddressInUse = 1,
    /// An address claimed is not bound to the initiator's key.
    AddressNotAllowed = 2,
    /// The hub has reached `max_clients`.
    ServerFull = 3,
    /// The initiator speaks another protocol version.
    UnsupportedVersion = 4,
    /// The initiator claimed no address and none is bound to its key.
    NoAddress = 5,
    /// The hello could not be understood.
    BadHello = 6,
    /// No cipher both sides accept.
    NoCommonCipher = 7,
    /// The responder does not accept peer sessions from this node.
    PeerNotAllowed = 8,
    /// Key mode: the hub does not list the initiator's public key.
    UnknownKey = 9,
    /// An address claimed lies outside the hub's overlay network.
    OutsideNetwork = 10,
    /// A route offered is another node's, or overlaps the overlay network.
    RouteConflict = 11,
}

impl RefusalCode {
    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AddressInUse => "address_in_use",
            Self::AddressNotAllowed => "address_not_allowed",
            Self::ServerFull => "server_full",
            Self::UnsupportedVersion => "unsupported_version",
            Self::NoAddress => "no_address",
            Self::BadHello => "bad_hello",
            Self::NoCommonCipher => "no_common_cipher",
            Self::PeerNotAllowed => "peer_not_allowed",
            Self::UnknownKey => "unknown_key",
            Self::OutsideNetwork => "outside_network",
            Self::RouteConflict => "route_conflict",
        }
    }
}

/// Payload of handshake message 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The session is accepted.
    Welcome(Welcome),
    /// The responder refuses; no session exists.
    Refusal {
        /// Machine-readable reason.
        code: RefusalCode,
        /// Human-readable detail, such as "10.0.0.2 is held by another client".
        text: String,
    },
}

/// The accepted form of [`Reply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The data cipher the responder chose among the initiator's.
    pub cipher: Cipher,
    /// Node id the hub assigned (join), or 0 (peer).
    pub node: u32,
    /// Bit 0: client isolation is on at the hub.
    pub flags: u8,
    /// Keepalive interval in seconds the hub asks clients to use (join), or 0.
    pub keepalive_secs: u16,
    /// The responder's own overlay addresses (join), or empty.
    pub responder_addresses: Vec<Prefix>,
    /// The addresses the hub granted the initiator (join), or empty.
    pub granted: Vec<Prefix>,
}

/// Flag bit in [`Welcome::flags`]: clients cannot reach each other.
pub const FLAG_ISOLATION: u8 = 0x01;
/// Flag bit in [`Welcome::flags`]: the hub is its clients' exit (it forwards and
/// masquerades their traffic to the Internet); a full tunnel needs one.
pub const FLAG_EXIT: u8 = 0x02;

/// Longest refusal text carried; longer texts are cut at a character boundary.
pub const MAX_REFUSAL_TEXT: usize = 200;

impl Reply {
    /// Appends the encoding to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        match self {
            Self::Welcome(w) => {
                out.push(0);
                out.push(w.cipher as u8);
                out.extend_from_slice(&w.node.to_be_bytes());
                out.push(w.flags);
                out.extend_from_slice(&w.keepalive_secs.to_be_bytes());
                addr::emit_list(&w.responder_addresses, out);
                addr::emit_list(&w.granted, out);
            }
            Self::Refusal { code, text } => {
                out.push(*code as u8);
                let mut end = text.len().min(MAX_REFUSAL_TEXT);
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                out.push(u8::try_from(end).expect("refusal text is capped below 256"));
                out.extend_from_slice(&text.as_bytes()[..end]);
            }
        }
    }

    /// Parses a payload; all of it must be consumed.
    pub fn parse(buf: &[u8]) -> Result<Self> {
        let mut r = Reader::new(buf);
        let reply = match r.u8()? {
            0 => Self::Welcome(Welcome {
                cipher: Cipher::from_u8(r.u8()?)?,
                node: r.u32()?,
                flags: r.u8()?,
                keepalive_secs: r.u16()?,
                responder_addresses: addr::parse_list(&mut r)?,
                granted: addr::parse_list(&mut r)?,
            }),
            code => {
                let code = match code {
                    1 => RefusalCode::AddressInUse,
                    2 => RefusalCode::AddressNotAllowed,
                    3 => RefusalCode::ServerFull,
                    4 => RefusalCode::UnsupportedVersion,
                    5 => RefusalCode::NoAddress,
                    6 => RefusalCode::BadHello,
                    7 => RefusalCode::NoCommonCipher,
                    8 => RefusalCode::PeerNotAllowed,
                    9 => RefusalCode::UnknownKey,
                    10 => RefusalCode::OutsideNetwork,
                    11 => RefusalCode::RouteConflict,
                    _ => return Err(Error::Malformed("refusal code")),
                };
                let len = usize::from(r.u8()?);
                if len > MAX_REFUSAL_TEXT {
                    // No sender writes more; what it writes must read back the same.
                    return Err(Error::Malformed("refusal text too long"));
                }
                let text = core::str::from_utf8(r.take(len)?)
                    .map_err(|_| Error::Malformed("refusal text"))?;
                Self::Refusal {
                    code,
                    text: text.to_owned(),
                }
            }
        };
        r.finish()?;
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A join hello claiming 10.0.0.2/24 and offering a route to 192.168.50.0/24 at
    /// timestamp 1 with 2 bytes of padding, as in docs/PROTOCOL.md.
    const HELLO_BYTES: [u8; 29] = [
        0x03, 0x01, 0x03, 0, 0, 0, 0, 0, 0, 0, 1, 0x01, 0x04, 10, 0, 0, 2, 24, 0x01, 0x04, 192,
        168, 50, 0, 24, 0, 2, 0, 0,
    ];

    #[test]
    fn hello_bytes() {
        let h = Hello {
            kind: HelloKind::Join,
            ciphers: 0x03,
            timestamp: 1,
            addresses: vec!["10.0.0.2/24".parse().unwrap()],
            routes: vec!["192.168.50.0/24".parse().unwrap()],
            padding: 2,
        };
        let mut out = Vec::new();
        h.emit(&mut out);
        assert_eq!(out, HELLO_BYTES);
        assert_eq!(h.unpadded_len() + 2, out.len());
        assert_eq!(Hello::parse(&out).unwrap(), h);
        let mut v2 = out.clone();
        v2[0] = 2;
        assert_eq!(Hello::parse(&v2), Err(Error::UnsupportedVersion(2)));
    }

    #[test]
    fn refusal_text_is_capped_on_a_char_boundary() {
        let text = "é".repeat(150);
        let mut out = Vec::new();
        Reply::Refusal {
            code: RefusalCode::ServerFull,
            text,
        }
        .emit(&mut out);
        match Reply::parse(&out).unwrap() {
            Reply::Refusal { code, text } => {
                assert_eq!(code, RefusalCode::ServerFull);
                assert_eq!(text.len(), MAX_REFUSAL_TEXT);
            }
            r => panic!("unexpected {r:?}"),
        }
        // Found by fuzzing: a longer text than any sender writes parsed, and then did not
        // read back the same after emit.
        let mut long = vec![RefusalCode::ServerFull as u8, 201];
        long.extend(std::iter::repeat_n(b'a', 201));
        assert_eq!(
            Reply::parse(&long),
            Err(Error::Malformed("refusal text too long"))
        );
    }

    proptest! {
        #[test]
        fn welcome_round_trip(node: u32, flags: u8, ka: u16, n in 0usize..4) {
            let addrs: Vec<Prefix> = (0..n).map(|i| format!("10.0.{i}.1/24").parse().unwrap()).collect();
            let reply = Reply::Welcome(Welcome {
                cipher: Cipher::ChaCha20Poly1305, node, flags, keepalive_secs: ka,
                responder_addresses: addrs.clone(), granted: addrs,
            });
            let mut out = Vec::new();
            reply.emit(&mut out);
            prop_assert_eq!(Reply::parse(&out).unwrap(), reply);
            for cut in 0..out.len() {
                prop_assert!(Reply::parse(&out[..cut]).is_err());
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = Hello::parse(&bytes);
            let _ = Reply::parse(&bytes);
        }
    }
}
