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
//! Relay         | 03 | destination (4) | origin (4) | hops left (1) | inner outer-message ... |
//! Directory     | 04 | version (8) | part (2) | parts (2) | count (1) | entries |
//!     entry     | node id (4) | public key (32) | address list |
//! DirRequest    | 05 | version the sender holds (8) |
//! Goodbye       | 06 | reason (1) |
//! Probe / ProbeAck | 07/08 | seq (4) | [padding length (2) | padding ...] |
//! LossReport    | 09 | received (4) | expected (4) |
//! Candidates    | 0a | count (1) | endpoint ... |                 client -> hub
//! PunchRequest  | 0b | node id (4) |                               client -> hub
//! Punch         | 0c | node id (4) | count (1) | candidate ... |   hub -> client
//!     candidate | kind (1: local, 2: reflexive) | endpoint |
//! Observed      | 0d | endpoint |                                  hub -> client
//! Neighbours    | 0e | node id (4) | count (1) | node id (4) ... |  client -> hub -> clients
//! MtuProbe      | 0f | seq (4) | padding length (2) | padding ... |
//! MtuAck        | 10 | seq (4) |
//! DirDelta      | 11 | from version (8) | version (8) | count (1) | entries | removed (1) | node id (4) ... |
//!     endpoint  | 4 | a b c d | port (2) |  or  | 6 | 16 bytes | port (2) |
//! ```

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

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
    pub(super) const CANDIDATES: u8 = 0x0a;
    pub(super) const PUNCH_REQUEST: u8 = 0x0b;
    pub(super) const PUNCH: u8 = 0x0c;
    pub(super) const OBSERVED: u8 = 0x0d;
    pub(super) const NEIGHBOURS: u8 = 0x0e;
    pub(super) const MTU_PROBE: u8 = 0x0f;
    pub(super) const MTU_ACK: u8 = 0x10;
    pub(super) const DIR_DELTA: u8 = 0x11;
}

/// An [`Frame::MtuProbe`] without padding: its smallest plaintext.
pub const MTU_PROBE_MIN: usize = 7;

/// Most endpoints in one [`Frame::Candidates`] or [`Frame::Punch`].
pub const MAX_CANDIDATES: usize = 16;

/// Most nodes in one [`Frame::Neighbours`].
pub const MAX_NEIGHBOURS: usize = 32;

/// Length of the relay frame header that precedes the inner message.
pub const RELAY_HEADER_LEN: usize = 10;

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
    /// An outer message to pass on towards `dest`, through one relay or several (the hub,
    /// or clients that relay). Each relay re-seals it for the next hop, in place, with one
    /// hop less; it is dropped at zero. The inner message is end to end: relays never read
    /// it, and `origin` is only a claim that the inner session's keys check.
    Relay {
        /// The node the inner message is for.
        dest: u32,
        /// The node that sent it.
        origin: u32,
        /// Relays it may still cross.
        hops: u8,
        /// The inner outer-message (handshake or data of the end-to-end session).
        message: &'a [u8],
    },
    /// One part of a directory snapshot.
    Directory(Directory),
    /// What changed in the directory from one version to the next.
    DirDelta(DirDelta),
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
    /// A probe of a relay is padded to the size of data, and so is its answer: a relay
    /// that passes small frames and drops data must fail it (padding absent on the wire
    /// when zero, as version-2 peers send it).
    Probe {
        /// Echoed in the answer.
        seq: u32,
        /// Zero bytes of padding that follow; the answer carries as many.
        pad: u16,
    },
    /// Answer to [`Frame::Probe`].
    ProbeAck {
        /// The probe's sequence number.
        seq: u32,
        /// Zero bytes of padding that follow (the probe's).
        pad: u16,
    },
    /// Path MTU discovery: a probe whose plaintext is `MTU_PROBE_MIN + pad` bytes, so its
    /// message is as large as a data message of that size. Answered by [`Frame::MtuAck`].
    MtuProbe {
        /// Echoed in the answer.
        seq: u32,
        /// Zero bytes of padding that follow.
        pad: u16,
    },
    /// A [`Frame::MtuProbe`] arrived.
    MtuAck {
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
    /// A client's own UDP endpoints on its local networks (its LAN candidates), for the hub
    /// to hand to peers that punch towards it.
    Candidates(Vec<SocketAddr>),
    /// A client asks the hub to have it and `node` punch towards each other.
    PunchRequest {
        /// The other client.
        node: u32,
    },
    /// The hub tells a client to probe `node` at these endpoints now (the same moment it
    /// tells `node`): LAN candidates first, then the reflexive one the hub observes.
    Punch {
        /// The other client.
        node: u32,
        /// Where it may be reached.
        candidates: Vec<Candidate>,
    },
    /// The hub tells a client the UDP endpoint it sees its traffic come from (its
    /// server-reflexive address: what a NAT made of it).
    Observed(SocketAddr),
    /// The clients `node` reaches on a direct path and relays for (mesh relaying on). A
    /// client reports its own (with `node` 0: the hub knows who sent it); the hub passes
    /// each report on to the other clients, which may then relay through `node`.
    Neighbours {
        /// Whose neighbours.
        node: u32,
        /// At most [`MAX_NEIGHBOURS`] node ids.
        nodes: Vec<u32>,
    },
}

/// Where a client may be reached directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// How the hub learned it.
    pub kind: CandidateKind,
    /// The UDP endpoint.
    pub addr: SocketAddr,
}

/// The origin of a [`Candidate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum CandidateKind {
    /// An address of one of the client's own interfaces (a LAN path, if both share it).
    Local = 1,
    /// The address the hub sees the client's traffic come from (through its NAT).
    Reflexive = 2,
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

/// The changes that make directory version `from` into `version`: the hub sends this
/// instead of the whole directory when a few nodes changed, so that one node's changes
/// cost the hub a frame the size of that node's entry per client, not the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirDelta {
    /// The version this applies to; a client holding another asks for the snapshot.
    pub from: u64,
    /// The version it makes.
    pub version: u64,
    /// Nodes added or changed, whole.
    pub entries: Vec<DirEntry>,
    /// Nodes gone.
    pub removed: Vec<u32>,
}

impl DirDelta {
    /// Encoded length, type byte included.
    pub fn buffer_len(&self) -> usize {
        1 + 8
            + 8
            + 1
            + self.entries.iter().map(DirEntry::buffer_len).sum::<usize>()
            + 1
            + 4 * self.removed.len()
    }
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
    /// The subnets behind it the hub accepted (traffic to them goes to this node).
    pub routes: Vec<Prefix>,
}

impl DirEntry {
    /// Encoded length of this entry.
    pub fn buffer_len(&self) -> usize {
        let list = |l: &[Prefix]| 1 + l.iter().map(Prefix::buffer_len).sum::<usize>();
        4 + 32 + list(&self.addresses) + list(&self.routes)
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

impl GoodbyeReason {
    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shutdown => "shutdown",
            Self::Removed => "removed",
        }
    }
}

/// Bytes a directory frame spends before its entries.
pub const DIRECTORY_HEADER_LEN: usize = 1 + 8 + 2 + 2 + 1;

impl<'a> Frame<'a> {
    /// Parses a control frame; the whole plaintext must be consumed (except for relay).
    pub fn parse(buf: &'a [u8]) -> Result<Self> {
        let mut r = Reader::new(buf);
        let t = r.u8()?;
        let frame = match t {
            kind::PING => Self::Ping {
                seq: r.u32()?,
                dir_version: r.u64()?,
            },
            kind::PONG => Self::Pong {
                seq: r.u32()?,
                dir_version: r.u64()?,
            },
            kind::RELAY => {
                let (dest, origin, hops) = (r.u32()?, r.u32()?, r.u8()?);
                let message = r.rest();
                if message.is_empty() {
                    return Err(Error::Truncated);
                }
                Self::Relay {
                    dest,
                    origin,
                    hops,
                    message,
                }
            }
            kind::DIRECTORY => {
                let version = r.u64()?;
                let part = r.u16()?;
                let parts = r.u16()?;
                if parts == 0 || part >= parts {
                    return Err(Error::Malformed("directory part"));
                }
                let entries = parse_entries(&mut r)?;
                Self::Directory(Directory {
                    version,
                    part,
                    parts,
                    entries,
                })
            }
            kind::DIR_REQUEST => Self::DirRequest { version: r.u64()? },
            kind::DIR_DELTA => {
                let (from, version) = (r.u64()?, r.u64()?);
                let entries = parse_entries(&mut r)?;
                let removed = (0..r.u8()?).map(|_| r.u32()).collect::<Result<_>>()?;
                Self::DirDelta(DirDelta {
                    from,
                    version,
                    entries,
                    removed,
                })
            }
            kind::GOODBYE => Self::Goodbye {
                reason: match r.u8()? {
                    1 => GoodbyeReason::Shutdown,
                    2 => GoodbyeReason::Removed,
                    _ => return Err(Error::Malformed("goodbye reason")),
                },
            },
            kind::PROBE | kind::PROBE_ACK => {
                let seq = r.u32()?;
                let pad = if r.is_empty() {
                    0
                } else {
                    let pad = r.u16()?;
                    r.take(usize::from(pad))?;
                    pad
                };
                if t == kind::PROBE {
                    Self::Probe { seq, pad }
                } else {
                    Self::ProbeAck { seq, pad }
                }
            }
            kind::MTU_PROBE => {
                let seq = r.u32()?;
                let pad = r.u16()?;
                r.take(usize::from(pad))?;
                Self::MtuProbe { seq, pad }
            }
            kind::MTU_ACK => Self::MtuAck { seq: r.u32()? },
            kind::LOSS_REPORT => Self::LossReport {
                received: r.u32()?,
                expected: r.u32()?,
            },
            kind::CANDIDATES => {
                let n = bounded_count(&mut r)?;
                Self::Candidates(
                    (0..n)
                        .map(|_| parse_endpoint(&mut r))
                        .collect::<Result<_>>()?,
                )
            }
            kind::PUNCH_REQUEST => Self::PunchRequest { node: r.u32()? },
            kind::PUNCH => {
                let node = r.u32()?;
                let n = bounded_count(&mut r)?;
                let candidates = (0..n)
                    .map(|_| {
                        let kind = match r.u8()? {
                            1 => CandidateKind::Local,
                            2 => CandidateKind::Reflexive,
                            _ => return Err(Error::Malformed("candidate kind")),
                        };
                        Ok(Candidate {
                            kind,
                            addr: parse_endpoint(&mut r)?,
                        })
                    })
                    .collect::<Result<_>>()?;
                Self::Punch { node, candidates }
            }
            kind::OBSERVED => Self::Observed(parse_endpoint(&mut r)?),
            kind::NEIGHBOURS => {
                let node = r.u32()?;
                let n = r.u8()?;
                if usize::from(n) > MAX_NEIGHBOURS {
                    return Err(Error::Malformed("too many neighbours"));
                }
                let nodes = (0..n).map(|_| r.u32()).collect::<Result<_>>()?;
                Self::Neighbours { node, nodes }
            }
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
            Self::Relay {
                dest,
                origin,
                hops,
                message,
            } => {
                out.push(kind::RELAY);
                out.extend_from_slice(&dest.to_be_bytes());
                out.extend_from_slice(&origin.to_be_bytes());
                out.push(*hops);
                out.extend_from_slice(message);
            }
            Self::Directory(d) => {
                out.push(kind::DIRECTORY);
                out.extend_from_slice(&d.version.to_be_bytes());
                out.extend_from_slice(&d.part.to_be_bytes());
                out.extend_from_slice(&d.parts.to_be_bytes());
                emit_entries(&d.entries, out);
            }
            Self::DirDelta(d) => {
                out.push(kind::DIR_DELTA);
                out.extend_from_slice(&d.from.to_be_bytes());
                out.extend_from_slice(&d.version.to_be_bytes());
                emit_entries(&d.entries, out);
                out.push(u8::try_from(d.removed.len()).expect("a delta removes <= 255 nodes"));
                for n in &d.removed {
                    out.extend_from_slice(&n.to_be_bytes());
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
            Self::Probe { seq, pad } | Self::ProbeAck { seq, pad } => {
                out.push(if matches!(self, Self::Probe { .. }) {
                    kind::PROBE
                } else {
                    kind::PROBE_ACK
                });
                out.extend_from_slice(&seq.to_be_bytes());
                if *pad > 0 {
                    out.extend_from_slice(&pad.to_be_bytes());
                    out.resize(out.len() + usize::from(*pad), 0);
                }
            }
            Self::MtuProbe { seq, pad } => {
                out.push(kind::MTU_PROBE);
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&pad.to_be_bytes());
                out.resize(out.len() + usize::from(*pad), 0);
            }
            Self::MtuAck { seq } => {
                out.push(kind::MTU_ACK);
                out.extend_from_slice(&seq.to_be_bytes());
            }
            Self::LossReport { received, expected } => {
                out.push(kind::LOSS_REPORT);
                out.extend_from_slice(&received.to_be_bytes());
                out.extend_from_slice(&expected.to_be_bytes());
            }
            Self::Candidates(list) => {
                out.push(kind::CANDIDATES);
                let n = list.len().min(MAX_CANDIDATES);
                out.push(n as u8);
                for a in &list[..n] {
                    emit_endpoint(*a, out);
                }
            }
            Self::PunchRequest { node } => {
                out.push(kind::PUNCH_REQUEST);
                out.extend_from_slice(&node.to_be_bytes());
            }
            Self::Punch { node, candidates } => {
                out.push(kind::PUNCH);
                out.extend_from_slice(&node.to_be_bytes());
                let n = candidates.len().min(MAX_CANDIDATES);
                out.push(n as u8);
                for c in &candidates[..n] {
                    out.push(c.kind as u8);
                    emit_endpoint(c.addr, out);
                }
            }
            Self::Observed(a) => {
                out.push(kind::OBSERVED);
                emit_endpoint(*a, out);
            }
            Self::Neighbours { node, nodes } => {
                out.push(kind::NEIGHBOURS);
                out.extend_from_slice(&node.to_be_bytes());
                let n = nodes.len().min(MAX_NEIGHBOURS);
                out.push(n as u8);
                for id in &nodes[..n] {
                    out.extend_from_slice(&id.to_be_bytes());
                }
            }
        }
    }
}

/// A count byte of at most [`MAX_CANDIDATES`].
fn bounded_count(r: &mut Reader<'_>) -> Result<u8> {
    let n = r.u8()?;
    if usize::from(n) > MAX_CANDIDATES {
        return Err(Error::Malformed("too many candidates"));
    }
    Ok(n)
}

/// `| 4 | a b c d | port |` or `| 6 | 16 bytes | port |`.
fn parse_endpoint(r: &mut Reader<'_>) -> Result<SocketAddr> {
    let ip = match r.u8()? {
        4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
        6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
        _ => return Err(Error::Malformed("endpoint family")),
    };
    Ok(SocketAddr::new(ip, r.u16()?))
}

fn emit_endpoint(a: SocketAddr, out: &mut Vec<u8>) {
    match a.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&a.port().to_be_bytes());
}

/// Whether a plaintext is a probe or probe answer: these test a transport and must not
/// move the peer's endpoint.
pub fn is_probe(plaintext: &[u8]) -> bool {
    matches!(
        plaintext.first(),
        Some(&kind::PROBE | &kind::PROBE_ACK | &kind::MTU_PROBE | &kind::MTU_ACK)
    )
}

/// Writes a relay frame header in place, in front of an inner message.
pub fn emit_relay_header(out: &mut [u8; RELAY_HEADER_LEN], dest: u32, origin: u32, hops: u8) {
    out[0] = kind::RELAY;
    out[1..5].copy_from_slice(&dest.to_be_bytes());
    out[5..9].copy_from_slice(&origin.to_be_bytes());
    out[9] = hops;
}

/// A count byte and that many directory entries.
fn parse_entries(r: &mut Reader<'_>) -> Result<Vec<DirEntry>> {
    (0..r.u8()?)
        .map(|_| {
            Ok(DirEntry {
                node: r.u32()?,
                public_key: r.array()?,
                addresses: addr::parse_list(r)?,
                routes: addr::parse_list(r)?,
            })
        })
        .collect()
}

/// Writes a count byte and the entries.
///
/// # Panics
/// With more than 255 entries.
fn emit_entries(entries: &[DirEntry], out: &mut Vec<u8>) {
    out.push(u8::try_from(entries.len()).expect("at most 255 directory entries a frame"));
    for e in entries {
        out.extend_from_slice(&e.node.to_be_bytes());
        out.extend_from_slice(&e.public_key);
        addr::emit_list(&e.addresses, out);
        addr::emit_list(&e.routes, out);
    }
}

/// Takes one hop off a relay frame in place (a relay passing it on), after lowering the
/// limit it carries to `max` (the relay's own): a sender cannot buy a longer route, or a
/// longer loop, than each relay allows. `false` if no hop was left.
pub fn take_relay_hop(frame: &mut [u8], max: u8) -> bool {
    match frame.get_mut(9) {
        Some(h) if (*h).min(max) > 0 => {
            *h = (*h).min(max) - 1;
            true
        }
        _ => false,
    }
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
            7,
            1,
        );
        buf[RELAY_HEADER_LEN..].copy_from_slice(&[4, 5, 6]);
        assert_eq!(
            Frame::parse(&buf).unwrap(),
            Frame::Relay {
                dest: 0x0102_0304,
                origin: 7,
                hops: 1,
                message: &[4, 5, 6]
            }
        );
        assert!(Frame::parse(&buf[..RELAY_HEADER_LEN]).is_err());
        assert!(take_relay_hop(&mut buf, u8::MAX));
        assert!(!take_relay_hop(&mut buf, u8::MAX), "no hop left");
        assert!(matches!(
            Frame::parse(&buf),
            Ok(Frame::Relay { hops: 0, .. })
        ));
    }

    fn arb_prefix() -> impl Strategy<Value = Prefix> {
        prop_oneof![
            (any::<[u8; 4]>(), 0u8..=32).prop_map(|(a, l)| Prefix::new(a.into(), l).unwrap()),
            (any::<[u8; 16]>(), 0u8..=128).prop_map(|(a, l)| Prefix::new(a.into(), l).unwrap()),
        ]
    }

    fn arb_entry() -> impl Strategy<Value = DirEntry> {
        (
            any::<u32>(),
            any::<[u8; 32]>(),
            proptest::collection::vec(arb_prefix(), 0..4),
            proptest::collection::vec(arb_prefix(), 0..3),
        )
            .prop_map(|(node, public_key, addresses, routes)| DirEntry {
                node,
                public_key,
                addresses,
                routes,
            })
    }

    fn arb_frame() -> impl Strategy<Value = Frame<'static>> {
        prop_oneof![
            (any::<u32>(), any::<u64>())
                .prop_map(|(seq, dir_version)| Frame::Ping { seq, dir_version }),
            (any::<u32>(), any::<u64>())
                .prop_map(|(seq, dir_version)| Frame::Pong { seq, dir_version }),
            (
                any::<u64>(),
                1u16..4,
                proptest::collection::vec(arb_entry(), 0..5)
            )
                .prop_map(|(version, parts, entries)| Frame::Directory(Directory {
                    version,
                    part: parts - 1,
                    parts,
                    entries
                })),
            (
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec(arb_entry(), 0..4),
                proptest::collection::vec(any::<u32>(), 0..5)
            )
                .prop_map(|(from, version, entries, removed)| {
                    let d = DirDelta {
                        from,
                        version,
                        entries,
                        removed,
                    };
                    Frame::DirDelta(d)
                }),
            any::<u64>().prop_map(|version| Frame::DirRequest { version }),
            Just(Frame::Goodbye {
                reason: GoodbyeReason::Shutdown
            }),
            (any::<u32>(), 0u16..2000).prop_map(|(seq, pad)| Frame::Probe { seq, pad }),
            (any::<u32>(), 0u16..2000).prop_map(|(seq, pad)| Frame::ProbeAck { seq, pad }),
            (any::<u32>(), 0u16..2000).prop_map(|(seq, pad)| Frame::MtuProbe { seq, pad }),
            any::<u32>().prop_map(|seq| Frame::MtuAck { seq }),
            (any::<u32>(), any::<u32>())
                .prop_map(|(received, expected)| Frame::LossReport { received, expected }),
            proptest::collection::vec(arb_endpoint(), 0..MAX_CANDIDATES)
                .prop_map(Frame::Candidates),
            any::<u32>().prop_map(|node| Frame::PunchRequest { node }),
            (
                any::<u32>(),
                proptest::collection::vec((any::<bool>(), arb_endpoint()), 0..MAX_CANDIDATES)
            )
                .prop_map(|(node, c)| Frame::Punch {
                    node,
                    candidates: c
                        .into_iter()
                        .map(|(local, addr)| Candidate {
                            kind: if local {
                                CandidateKind::Local
                            } else {
                                CandidateKind::Reflexive
                            },
                            addr,
                        })
                        .collect()
                }),
            arb_endpoint().prop_map(Frame::Observed),
            (
                any::<u32>(),
                proptest::collection::vec(any::<u32>(), 0..MAX_NEIGHBOURS)
            )
                .prop_map(|(node, nodes)| Frame::Neighbours { node, nodes }),
        ]
    }

    fn arb_endpoint() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(a, p)| SocketAddr::new(a.into(), p)),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(a, p)| SocketAddr::new(a.into(), p)),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(frame in arb_frame()) {
            let mut out = Vec::new();
            frame.emit(&mut out);
            prop_assert_eq!(Frame::parse(&out).unwrap(), frame.clone());
            for cut in 0..out.len() {
                // A probe's padding is optional: cut right before it, what is left is
                // the same probe unpadded. Any other cut is an error.
                let unpadded = cut == 5 && matches!(frame, Frame::Probe { .. } | Frame::ProbeAck { .. });
                match Frame::parse(&out[..cut]) {
                    Ok(Frame::Probe { pad: 0, .. } | Frame::ProbeAck { pad: 0, .. }) if unpadded => {}
                    other => prop_assert!(other.is_err(), "cut at {}: {:?}", cut, other),
                }
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Content::parse(&bytes);
        }
    }

    /// Hardening finding 13: a sender that claims 255 hops gets no more than the relay's
    /// own limit.
    #[test]
    fn a_relay_clamps_the_hop_limit_it_is_given() {
        let mut buf = [0u8; RELAY_HEADER_LEN];
        emit_relay_header(&mut buf, 1, 2, 255);
        assert!(take_relay_hop(&mut buf, 3));
        assert_eq!(buf[9], 2);
        emit_relay_header(&mut buf, 1, 2, 1);
        assert!(take_relay_hop(&mut buf, 3));
        assert_eq!(buf[9], 0);
        assert!(!take_relay_hop(&mut buf, 3));
        emit_relay_header(&mut buf, 1, 2, 9);
        assert!(
            !take_relay_hop(&mut buf, 0),
            "a relay allowing no hops passes nothing"
        );
    }
}
