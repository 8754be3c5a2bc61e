//! What a [`crate::message::Data`] message carries once opened.
//!
//! The first plaintext byte tells the content apart without a type field on the data path:
//!
//! | first byte      | content                                                   |
//! |-----------------|-----------------------------------------------------------|
//! | (none)          | keepalive: an empty plaintext                             |
//! | `0x4_`          | an IPv4 packet (version nibble 4)                         |
//! | `0x6_`          | an IPv6 packet (version nibble 6)                         |
//! | `0x01`..=`0x3f` | a control frame, the byte being its type                  |
//!
//! Control frames:
//!
//! ```text
//! Ping / Pong   | 01/02 | seq (4) | directory version (8) |
//! Relay         | 03 | node id (4) | inner outer-message ... |
//! Directory     | 04 | version (8) | part (2) | parts (2) | count (1) | entries |
//!     entry     | node id (4) | public key (32) | address list |
//! DirRequest    | 05 | version the sender holds (8) |
//! Goodbye       | 06 | reason (1) |
//! Probe / ProbeAck | 07/08 | seq (4) |
//! LossReport    | 09 | received (4) | expected (4) |
//! ```

use crate::addr::{self, Prefix};
use crate::field::Reader;
use crate::{Error, Result};

/// Frame type bytes.
mod kind {
    pub(super) const PING: u8 = 0x01;
    pub(super) const PONG: u8 = 0x02;
    pub(super) const RELAY: u8 = 0x03;
    pub(super) const DIRECTORY: u8 = 0x04;
    pub(super) const DIR_REQUEST: u8 = 0x05;
    pub(super) const GOODBYE: u8 = 0x06;
    pub(super) const PROBE: u8 = 0x07;
    pub(super) const PROBE_ACK: u8 = 0x08;
    pub(super) const LOSS_REPORT: u8 = 0x09;
}

/// Length of the relay frame header that precedes the inner message.
pub const RELAY_HEADER_LEN: usize = 5;

/// The content of an opened data message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content<'a> {
    /// An empty plaintext: proof of life, nothing to deliver.
    Keepalive,
    /// An IP packet for the TUN device.
    Ip(&'a [u8]),
    /// A control frame.
    Frame(Frame<'a>),
}

impl<'a> Content<'a> {
    /// Classifies a plaintext and parses it when it is a control frame.
    pub fn parse(plaintext: &'a [u8]) -> Result<Self> {
        match plaintext.first() {
            None => Ok(Self::Keepalive),
            Some(b) if b >> 4 == 4 || b >> 4 == 6 => Ok(Self::Ip(plaintext)),
            Some(_) => Frame::parse(plaintext).map(Self::Frame),
        }
    }
}

/// A control frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Liveness probe; the receiver answers with [`Frame::Pong`] carrying the same `seq`.
    Ping {
        /// Echoed in the pong, to measure the round trip.
        seq: u32,
        /// The directory version the sender holds (clients) or publishes (server).
        dir_version: u64,
    },
    /// Answer to [`Frame::Ping`].
    Pong {
        /// The ping's sequence number.
        seq: u32,
        /// As in [`Frame::Ping`].
        dir_version: u64,
    },
    /// An outer message to pass on to another node. Towards the relay, `node` names the
    /// destination; from the relay, it names the origin.
    Relay {
        /// Destination (to the relay) or origin (from the relay).
        node: u32,
        /// The inner outer-message (handshake or data of the end-to-end session).
        message: &'a [u8],
    },
    /// One part of a directory snapshot.
    Directory(Directory),
    /// A client asks for the directory snapshot; it holds `version`.
    DirRequest {
        /// The version the client holds (0 for none).
        version: u64,
    },
    /// The sender is leaving; the receiver may drop its session now.
    Goodbye {
        /// Why (informational).
        reason: GoodbyeReason,
    },
    /// Tests another transport: the receiver answers with [`Frame::ProbeAck`] over the
    /// transport and address the probe came from, and does not move the peer's endpoint.
    Probe {
        /// Echoed in the answer.
        seq: u32,
    },
    /// Answer to [`Frame::Probe`].
    ProbeAck {
        /// The probe's sequence number.
        seq: u32,
    },
    /// What the sender of this frame received of the peer's messages since its last report
    /// (before FEC recovery): the input of adaptive FEC.
    LossReport {
        /// Messages that arrived.
        received: u32,
        /// Messages the counters say were sent.
        expected: u32,
    },
}

/// One part of a directory snapshot sent by the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directory {
    /// Snapshot version; parts of different versions never mix.
    pub version: u64,
    /// Index of this part, from 0.
    pub part: u16,
    /// Number of parts in the snapshot (at least 1).
    pub parts: u16,
    /// The nodes in this part.
    pub entries: Vec<DirEntry>,
}

/// One node in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Hub-assigned node id.
    pub node: u32,
    /// The node's static X25519 public key.
    pub public_key: [u8; 32],
    /// The overlay addresses the hub granted it.
    pub addresses: Vec<Prefix>,
}

impl DirEntry {
    /// Encoded length of this entry.
    pub fn buffer_len(&self) -> usize {
        4 + 32 + 1 + self.addresses.iter().map(Prefix::buffer_len).sum::<usize>()
    }
}

/// Why a peer says goodbye.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum GoodbyeReason {
    /// The daemon is shutting down.
    Shutdown = 1,
    /// The hub removed the node (replaced by a newer session, or expired).
    Removed = 2,
}

/// Bytes a directory frame spends before its entries.
pub const DIRECTORY_HEADER_LEN: usize = 1 + 8 + 2 + 2 + 1;

impl<'a> Frame<'a> {
    /// Parses a control frame; the whole plaintext must be consumed (except for relay).
    pub fn parse(buf: &'a [u8]) -> Result<Self> {
        let mut r = Reader::new(buf);
        let frame = match r.u8()? {
            kind::PING => Self::Ping {
                seq: r.u32()?,
                dir_version: r.u64()?,
            },
            kind::PONG => Self::Pong {
                seq: r.u32()?,
                dir_version: r.u64()?,
            },
            kind::RELAY => {
                let node = r.u32()?;
                let message = r.rest();
                if message.is_empty() {
                    return Err(Error::Truncated);
                }
                Self::Relay { node, message }
            }
            kind::DIRECTORY => {
                let version = r.u64()?;
                let part = r.u16()?;
                let parts = r.u16()?;
                if parts == 0 || part >= parts {
                    return Err(Error::Malformed("directory part"));
                }
                let count = r.u8()?;
                let entries = (0..count)
                    .map(|_| {
                        Ok(DirEntry {
                            node: r.u32()?,
                            public_key: r.array()?,
                            addresses: addr::parse_list(&mut r)?,
                        })
                    })
                    .collect::<Result<_>>()?;
                Self::Directory(Directory {
                    version,
                    part,
                    parts,
                    entries,
                })
            }
            kind::DIR_REQUEST => Self::DirRequest { version: r.u64()? },
            kind::GOODBYE => Self::Goodbye {
                reason: match r.u8()? {
                    1 => GoodbyeReason::Shutdown,
                    2 => GoodbyeReason::Removed,
                    _ => return Err(Error::Malformed("goodbye reason")),
                },
            },
            kind::PROBE => Self::Probe { seq: r.u32()? },
            kind::PROBE_ACK => Self::ProbeAck { seq: r.u32()? },
            kind::LOSS_REPORT => Self::LossReport {
                received: r.u32()?,
                expected: r.u32()?,
            },
            t => return Err(Error::UnknownType(t)),
        };
        r.finish()?;
        Ok(frame)
    }

    /// Appends the encoding to `out`.
    ///
    /// # Panics
    /// If a directory part holds more than 255 entries or a node more than
    /// [`addr::MAX_ADDRESSES`] addresses; the hub builds parts within those bounds.
    pub fn emit(&self, out: &mut Vec<u8>) {
        match self {
            Self::Ping { seq, dir_version } | Self::Pong { seq, dir_version } => {
                out.push(if matches!(self, Self::Ping { .. }) {
                    kind::PING
                } else {
                    kind::PONG
                });
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&dir_version.to_be_bytes());
            }
            Self::Relay { node, message } => {
                out.push(kind::RELAY);
                out.extend_from_slice(&node.to_be_bytes());
                out.extend_from_slice(message);
            }
            Self::Directory(d) => {
                out.push(kind::DIRECTORY);
                out.extend_from_slice(&d.version.to_be_bytes());
                out.extend_from_slice(&d.part.to_be_bytes());
                out.extend_from_slice(&d.parts.to_be_bytes());
                out.push(
                    u8::try_from(d.entries.len()).expect("directory parts hold <= 255 entries"),
                );
                for e in &d.entries {
                    out.extend_from_slice(&e.node.to_be_bytes());
                    out.extend_from_slice(&e.public_key);
                    addr::emit_list(&e.addresses, out);
                }
            }
            Self::DirRequest { version } => {
                out.push(kind::DIR_REQUEST);
                out.extend_from_slice(&version.to_be_bytes());
            }
            Self::Goodbye { reason } => {
                out.push(kind::GOODBYE);
                out.push(*reason as u8);
            }
            Self::Probe { seq } => {
                out.push(kind::PROBE);
                out.extend_from_slice(&seq.to_be_bytes());
            }
            Self::ProbeAck { seq } => {
                out.push(kind::PROBE_ACK);
                out.extend_from_slice(&seq.to_be_bytes());
            }
            Self::LossReport { received, expected } => {
                out.push(kind::LOSS_REPORT);
                out.extend_from_slice(&received.to_be_bytes());
                out.extend_from_slice(&expected.to_be_bytes());
            }
        }
    }
}

/// Whether a plaintext is a probe or probe answer: these test a transport and must not
/// move the peer's endpoint.
pub fn is_probe(plaintext: &[u8]) -> bool {
    matches!(plaintext.first(), Some(&kind::PROBE | &kind::PROBE_ACK))
}

/// Writes a relay frame header in place, in front of an inner message.
pub fn emit_relay_header(out: &mut [u8; RELAY_HEADER_LEN], node: u32) {
    out[0] = kind::RELAY;
    out[1..].copy_from_slice(&node.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn classify() {
        assert_eq!(Content::parse(&[]).unwrap(), Content::Keepalive);
        assert_eq!(Content::parse(&[0x45, 0]).unwrap(), Content::Ip(&[0x45, 0]));
        assert_eq!(Content::parse(&[0x60]).unwrap(), Content::Ip(&[0x60]));
        assert_eq!(Content::parse(&[0x3f]), Err(Error::UnknownType(0x3f)));
    }

    /// Ping seq 1, directory version 2, as in docs/PROTOCOL.md.
    const PING_BYTES: [u8; 13] = [0x01, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2];

    #[test]
    fn ping_bytes() {
        let mut out = Vec::new();
        Frame::Ping {
            seq: 1,
            dir_version: 2,
        }
        .emit(&mut out);
        assert_eq!(out, PING_BYTES);
        assert_eq!(
            Frame::parse(&PING_BYTES).unwrap(),
            Frame::Ping {
                seq: 1,
                dir_version: 2
            }
        );
        assert_eq!(Frame::parse(&PING_BYTES[..12]), Err(Error::Truncated));
        let mut long = PING_BYTES.to_vec();
        long.push(0);
        assert_eq!(Frame::parse(&long), Err(Error::TrailingBytes));
    }

    #[test]
    fn relay_header_in_place() {
        let mut buf = [0u8; RELAY_HEADER_LEN + 3];
        emit_relay_header(
            (&mut buf[..RELAY_HEADER_LEN]).try_into().unwrap(),
            0x0102_0304,
        );
        buf[RELAY_HEADER_LEN..].copy_from_slice(&[4, 5, 6]);
        assert_eq!(
            Frame::parse(&buf).unwrap(),
            Frame::Relay {
                node: 0x0102_0304,
                message: &[4, 5, 6]
            }
        );
        assert!(Frame::parse(&buf[..RELAY_HEADER_LEN]).is_err());
    }

    fn arb_prefix() -> impl Strategy<Value = Prefix> {
        prop_oneof![
            (any::<[u8; 4]>(), 0u8..=32).prop_map(|(a, l)| Prefix::new(a.into(), l).unwrap()),
            (any::<[u8; 16]>(), 0u8..=128).prop_map(|(a, l)| Prefix::new(a.into(), l).unwrap()),
        ]
    }

    fn arb_frame() -> impl Strategy<Value = Frame<'static>> {
        let entry = (
            any::<u32>(),
            any::<[u8; 32]>(),
            proptest::collection::vec(arb_prefix(), 0..4),
        )
            .prop_map(|(node, public_key, addresses)| DirEntry {
                node,
                public_key,
                addresses,
            });
        prop_oneof![
            (any::<u32>(), any::<u64>())
                .prop_map(|(seq, dir_version)| Frame::Ping { seq, dir_version }),
            (any::<u32>(), any::<u64>())
                .prop_map(|(seq, dir_version)| Frame::Pong { seq, dir_version }),
            (
                any::<u64>(),
                1u16..4,
                proptest::collection::vec(entry, 0..5)
            )
                .prop_map(|(version, parts, entries)| Frame::Directory(Directory {
                    version,
                    part: parts - 1,
                    parts,
                    entries
                })),
            any::<u64>().prop_map(|version| Frame::DirRequest { version }),
            Just(Frame::Goodbye {
                reason: GoodbyeReason::Shutdown
            }),
            any::<u32>().prop_map(|seq| Frame::Probe { seq }),
            any::<u32>().prop_map(|seq| Frame::ProbeAck { seq }),
            (any::<u32>(), any::<u32>())
                .prop_map(|(received, expected)| Frame::LossReport { received, expected }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(frame in arb_frame()) {
            let mut out = Vec::new();
            frame.emit(&mut out);
            prop_assert_eq!(Frame::parse(&out).unwrap(), frame);
            for cut in 0..out.len() {
                prop_assert!(Frame::parse(&out[..cut]).is_err());
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Content::parse(&bytes);
        }
    }
}
