//! What a node knows about one other node: identity, path, sessions, timers, counters.

use core::net::SocketAddr;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use culvert_wire::addr::Prefix;

use crate::cookie::Cookie;
use crate::keys::{Psk, PublicKey};
use crate::noise::Initiator;
use crate::stats::{DropCounters, Traffic};

/// A node id. The hub is always [`PeerId::HUB`]; clients get ids from the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u32);

impl PeerId {
    /// The hub's id.
    pub const HUB: Self = Self(0);
}

/// How outer messages travel on the underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// One message per UDP datagram.
    Udp,
    /// Messages as records in TCP segments (see [`crate::faketcp`]).
    FakeTcp,
}

impl Transport {
    /// `udp` or `faketcp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::FakeTcp => "faketcp",
        }
    }
}

/// An underlay endpoint: a transport, an address, and which of this node's sockets talks
/// to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Remote {
    /// How to reach it.
    pub transport: Transport,
    /// Where.
    pub addr: SocketAddr,
    /// This node's UDP socket that sends to it and hears it: 0 is the main one;
    /// 1..=[`SPRAY_SOCKETS`] are the extra ones port prediction sends from (a NAT that
    /// changes ports gives each of them its own public port). Always 0 for FakeTCP.
    pub socket: u16,
}

/// How many extra UDP sockets a node may send from, at most, to predict a port.
pub const SPRAY_SOCKETS: u16 = 256;

impl Remote {
    /// A UDP endpoint, reached from the main socket.
    pub fn udp(addr: SocketAddr) -> Self {
        Self::udp_on(0, addr)
    }

    /// A UDP endpoint, reached from socket `socket` (see [`Remote::socket`]).
    pub fn udp_on(socket: u16, addr: SocketAddr) -> Self {
        Self {
            transport: Transport::Udp,
            addr,
            socket,
        }
    }

    /// A FakeTCP endpoint.
    pub fn faketcp(addr: SocketAddr) -> Self {
        Self {
            transport: Transport::FakeTcp,
            addr,
            socket: 0,
        }
    }

    /// An endpoint of `transport` reached from the main socket.
    pub fn new(transport: Transport, addr: SocketAddr) -> Self {
        Self {
            transport,
            addr,
            socket: 0,
        }
    }
}

impl core::fmt::Display for Remote {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}:{}", self.transport.as_str(), self.addr)?;
        if self.socket != 0 {
            write!(f, " (socket {})", self.socket)?;
        }
        Ok(())
    }
}

pub use crate::path::Path;

/// Where a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// An underlay endpoint.
    Addr(Remote),
    /// Relayed: the far end `node` (the origin of a message received, the destination of
    /// one sent) and the neighbour `via` that passed it (or is to pass it) on.
    Relay {
        /// The end-to-end peer.
        node: PeerId,
        /// The relay next to us.
        via: PeerId,
    },
}

/// A handshake this node initiated and is waiting on.
#[derive(Debug)]
pub(crate) struct PendingHandshake {
    pub(crate) initiator: Initiator,
    pub(crate) local_index: u32,
    pub(crate) psk: Psk,
    /// The message 1 we sent, for matching a cookie reply.
    pub(crate) message: Vec<u8>,
    pub(crate) sent: Instant,
}

/// Probe answers a second to addresses other than a peer's path: more than punching and
/// port prediction ever need, too few to make a node a reflector.
pub(crate) const PROBE_ANSWERS: u32 = 64;

/// Most packets held for a peer while its session is being set up.
pub(crate) const QUEUE_LIMIT: usize = 64;

/// Everything known about one peer.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) id: PeerId,
    /// Static key; all zero while the hub's key is unknown (passphrase mode, before join).
    pub(crate) key: PublicKey,
    pub(crate) addresses: Vec<Prefix>,
    /// The subnets behind it that this node routes to it (see [`crate::endpoint`]'s
    /// routes module): what the hub accepted, minus what this node refuses to install.
    pub(crate) routes: Vec<Prefix>,
    /// How packets reach it now.
    pub(crate) path: Path,
    /// Direct paths worth trying, and why it is relayed (client peers).
    pub(crate) paths: crate::path::PathSet,
    /// A client relaying to it when no direct path works (client peers).
    pub(crate) via: crate::via::ViaClient,
    /// The MTU of the path it is on (direct, or relayed end to end), and that path.
    pub(crate) pmtu: Option<(Path, crate::pmtu::Pmtu)>,
    /// The last change of `path`: when, and why.
    pub(crate) path_changed: Option<(Instant, &'static str)>,
    /// Its sessions: current, previous, and our handshake in progress.
    pub(crate) sessions: crate::sessions::Sessions,
    /// Failed attempts since the last success (drives the backoff).
    pub(crate) attempts: u32,
    /// When the next handshake attempt is due (retry or backoff).
    pub(crate) retry_at: Option<Instant>,
    pub(crate) cookie: Option<Cookie>,
    /// Highest hello timestamp of a confirmed session from this peer.
    pub(crate) confirmed_timestamp: u64,
    pub(crate) queue: VecDeque<Vec<u8>>,
    pub(crate) last_rx: Option<Instant>,
    pub(crate) last_tx: Option<Instant>,
    /// When we first sent something that is still unanswered (dead-peer detection).
    pub(crate) unanswered_since: Option<Instant>,
    pub(crate) last_handshake: Option<Instant>,
    pub(crate) rtt: Option<Duration>,
    /// Hub: when this client was last sent the directory on its request (rate limit).
    pub(crate) directory_sent: Option<Instant>,
    pub(crate) traffic: Traffic,
    pub(crate) drops: DropCounters,
    /// FEC for what we send on a direct path (created on first use).
    pub(crate) fec_tx: Option<crate::fec::Encoder>,
    /// FEC and loss measurement for what we receive.
    pub(crate) fec_rx: crate::fec::Decoder,
    /// Probe answers sent to addresses other than the peer's path (a member could name
    /// any address as the source of its probes).
    pub(crate) answers: crate::limit::RateWindow,
    /// Messages sealed in the current session since the peer's last loss report that it
    /// does not count as arrivals on the path (relayed, to other candidates, MTU probes):
    /// the gaps they leave in its count are not loss.
    pub(crate) unmetered: u32,
}

impl Peer {
    /// The FEC encoder for what we send, created on first use unless FEC is off.
    pub(crate) fn encoder(&mut self, cfg: crate::fec::Config) -> Option<&mut crate::fec::Encoder> {
        if self.fec_tx.is_none() && cfg.mode != crate::fec::Mode::Off {
            self.fec_tx = Some(crate::fec::Encoder::new(cfg));
        }
        self.fec_tx.as_mut()
    }

    pub(crate) fn new(id: PeerId, key: PublicKey, addresses: Vec<Prefix>, path: Path) -> Self {
        Self {
            id,
            key,
            addresses,
            routes: Vec::new(),
            path,
            paths: crate::path::PathSet::default(),
            via: crate::via::ViaClient::default(),
            pmtu: None,
            path_changed: None,
            sessions: crate::sessions::Sessions::default(),
            attempts: 0,
            retry_at: None,
            cookie: None,
            confirmed_timestamp: 0,
            queue: VecDeque::new(),
            last_rx: None,
            last_tx: None,
            unanswered_since: None,
            last_handshake: None,
            rtt: None,
            directory_sent: None,
            traffic: Traffic::default(),
            drops: DropCounters::default(),
            fec_tx: None,
            fec_rx: crate::fec::Decoder::default(),
            answers: crate::limit::RateWindow::new(PROBE_ANSWERS, Duration::from_secs(1)),
            unmetered: 0,
        }
    }

    /// Whether the peer's path has a destination.
    pub(crate) fn reachable(&self) -> bool {
        !matches!(self.path, Path::Direct(None))
    }
}
