//! The endpoint: one node's whole protocol state, driven by the shell.
//!
//! # Call protocol
//!
//! The shell owns the sockets, the TUN device and the clock; the endpoint owns everything
//! else. The shell calls:
//!
//! * **inputs** — [`Endpoint::handle_tun_packet`] for each packet read from the TUN,
//!   [`Endpoint::handle_datagram`] for each datagram received, and
//!   [`Endpoint::handle_timeout`] when the time given by [`Endpoint::poll_timeout`] has come;
//! * **outputs** — after any input, [`Endpoint::poll_transmit`] until `None` (control
//!   messages to send), then [`Endpoint::poll_event`] until `None`, then
//!   [`Endpoint::poll_timeout`] to know when to call `handle_timeout` next.
//!
//! `now` must never go backwards between calls.
//!
//! # Buffers
//!
//! The data path works in place in the caller's buffer. A TUN packet is passed as
//! `buf[start..start + len]` with at least [`HEADROOM`] bytes before `start` and
//! [`TAILROOM`] after the packet; the endpoint writes its headers into the headroom and its
//! tags into the tailroom and returns the range to send. A received datagram is decrypted in
//! place and the range to deliver (or to forward, on the hub) is returned.

mod client;
mod detour;
mod direct;
mod directory;
mod faketcp_link;
mod handshake;
mod hub;
mod mtu;
mod neighbours;
mod relay;
mod routes;

use core::ops::Range;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use culvert_wire::addr::Prefix;
use culvert_wire::frame::{self, Frame, GoodbyeReason, RELAY_HEADER_LEN};
use culvert_wire::ip;
use culvert_wire::message::{DATA_HEADER_LEN, Data, FecParity, MessageType, TAG_LEN};

use crate::config::{Config, Role};
use crate::event::Event;
use crate::keys::PublicKey;
use crate::peer::{Path, Peer, PeerId, QUEUE_LIMIT, Remote, Source};
use crate::pending::{Claim, Pending, PendingTable};
use crate::rng::Rng;
use crate::router::Router;
use crate::sessions::Slot;
use crate::stats::{DropCounters, DropReason, Traffic};
use crate::status::{PeerStatus, RouteStatus, Status};

use client::Client;
use hub::Hub;

/// Bytes the caller must leave free before a TUN packet: a data header for the peer, and a
/// relay frame header plus a data header for the first relay when the peer is reached
/// through relays (however many: each relay re-seals the frame in place).
pub const HEADROOM: usize = 2 * DATA_HEADER_LEN + RELAY_HEADER_LEN;
/// Bytes the caller must leave free after a TUN packet: one tag per layer.
pub const TAILROOM: usize = 2 * TAG_LEN;
/// Largest plaintext control frame; keeps control messages inside any sane MTU.
pub const MAX_FRAME: usize = 1200;
/// The longest the endpoint sleeps between two `handle_timeout` calls.
const MAX_TICK: Duration = Duration::from_secs(1);
/// A receiver keeps accepting a session this long after the sender stops using it, so
/// packets in flight across the switch (and clock skew between the ends) are not lost.
const RECEIVE_GRACE: Duration = Duration::from_secs(10);

/// A datagram to send: `buf[range]` of the buffer the caller passed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Underlay destination.
    pub to: Remote,
    /// The bytes to send, within the caller's buffer.
    pub range: Range<usize>,
}

/// A datagram the endpoint built itself (handshakes, control frames, flushed queues).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedTransmit {
    /// Underlay destination.
    pub to: Remote,
    /// The datagram.
    pub bytes: Vec<u8>,
    /// Send with this IP TTL (hop limit) instead of the default: the first probes of a
    /// punch, which must open our own NAT without reaching the peer's (see [`crate::path`]).
    pub ttl: Option<u8>,
}

impl OwnedTransmit {
    /// A datagram with the default TTL.
    pub fn new(to: Remote, bytes: Vec<u8>) -> Self {
        Self {
            to,
            bytes,
            ttl: None,
        }
    }
}

/// What to do with a packet read from the TUN device.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunOutcome {
    /// Send it: it was sealed in place.
    Send(Transmit),
    /// It waits for a session; the endpoint kept a copy.
    Queued,
    /// It was dropped (and counted).
    Dropped(DropReason),
}

/// What to do with a received datagram.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatagramOutcome {
    /// Write `buf[range]` (an IP packet) to the TUN device.
    Deliver(Range<usize>),
    /// Send the re-sealed `buf[range]` on (the hub relaying between clients).
    Send(Transmit),
    /// Consumed; replies, if any, wait in [`Endpoint::poll_transmit`].
    Done,
    /// Dropped (and counted).
    Dropped(DropReason),
}

/// How a data message reached the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    /// Received from the underlay (or unwrapped from a relay frame).
    Wire,
    /// Rebuilt by FEC from a group's parity.
    Recovered,
}

/// One node's protocol state. See the module docs for the call protocol.
#[derive(Debug)]
pub struct Endpoint {
    cfg: Config,
    public: PublicKey,
    /// The `mac1` key of handshakes towards us (from our PSK), computed once.
    mac1_key: [u8; 32],
    rng: Rng,
    clock: Clock,
    peers: BTreeMap<PeerId, Peer>,
    by_index: BTreeMap<u32, PeerId>,
    /// Responder handshakes whose initiator has not proven its key yet.
    pending: PendingTable,
    routes: Router<PeerId>,
    /// The subnets last announced to the shell ([`Event::RoutesChanged`]).
    announced_routes: Vec<Prefix>,
    outbox: VecDeque<OwnedTransmit>,
    /// IP packets to write to the TUN device that no datagram outcome carries: those FEC
    /// recovered, and ICMP errors answering packets too big for their path.
    recovered: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    drops: DropCounters,
    traffic: Traffic,
    /// Messages this node forwarded for others (the hub's relay).
    relayed: Traffic,
    /// Cached earliest timer; recomputed when `deadline_dirty`.
    deadline: Option<Instant>,
    deadline_dirty: bool,
    /// Work that must run at the next opportunity (set by `schedule_now`).
    urgent: Option<Instant>,
    last_tick: Instant,
    role: RoleState,
    /// FakeTCP, when this node carries messages over it.
    faketcp: Option<faketcp_link::FakeTcpLink>,
}

#[derive(Debug)]
enum RoleState {
    Hub(Box<Hub>),
    Client(Box<Client>),
}

/// Maps `now` to wall-clock nanoseconds for handshake timestamps.
#[derive(Debug)]
struct Clock {
    base: Instant,
    base_unix_nanos: u64,
    last: u64,
}

impl Clock {
    /// A strictly increasing timestamp: wall time, or one more than the last one given.
    fn timestamp(&mut self, now: Instant) -> u64 {
        let wall = self.base_unix_nanos
            + u64::try_from(now.saturating_duration_since(self.base).as_nanos())
                .unwrap_or(u64::MAX);
        self.last = wall.max(self.last + 1);
        self.last
    }
}

impl Endpoint {
    /// Builds an endpoint.
    ///
    /// `seed` seeds every random choice (take it from the OS); `unix_time` is the wall clock
    /// at `now`, used only for handshake timestamps.
    pub fn new(cfg: Config, seed: [u8; 32], now: Instant, unix_time: Duration) -> Self {
        let mut rng = Rng::from_seed(seed);
        let public = cfg.secret.public_key();
        let mut peers = BTreeMap::new();
        let role = match &cfg.role {
            Role::Hub(h) => RoleState::Hub(Box::new(Hub::new(h.clone(), &mut rng, now))),
            Role::Client(c) => {
                let key = c.server_key.unwrap_or(PublicKey([0; 32]));
                let first = Remote::new(c.transport.first(), c.server);
                let hub = Peer::new(PeerId::HUB, key, Vec::new(), Path::Direct(Some(first)));
                peers.insert(PeerId::HUB, hub);
                RoleState::Client(Box::new(Client::new(c.clone(), &mut rng)))
            }
        };
        let mac1_key = crate::cookie::mac1_key(&cfg.psk_for(&public));
        // Its own seed, so that the endpoint's random choices do not depend on whether
        // FakeTCP is on.
        let faketcp = cfg.faketcp.clone().map(|f| {
            let seed = crate::keys::blake2s(&[b"culvert faketcp seed", &seed]);
            faketcp_link::FakeTcpLink::new(f, seed, now)
        });
        let mut ep = Self {
            cfg,
            public,
            mac1_key,
            rng,
            clock: Clock {
                base: now,
                base_unix_nanos: u64::try_from(unix_time.as_nanos()).unwrap_or(u64::MAX),
                last: 0,
            },
            peers,
            by_index: BTreeMap::new(),
            pending: PendingTable::default(),
            routes: Router::default(),
            announced_routes: Vec::new(),
            outbox: VecDeque::new(),
            recovered: VecDeque::new(),
            events: VecDeque::new(),
            drops: DropCounters::default(),
            traffic: Traffic::default(),
            relayed: Traffic::default(),
            deadline: None,
            deadline_dirty: true,
            urgent: None,
            last_tick: now,
            role,
            faketcp,
        };
        if ep.is_client() {
            // A full tunnel holds everything for the hub from the start: queued until
            // joined, never sent around it.
            ep.install_routes(PeerId::HUB);
            ep.start_handshake(now, PeerId::HUB);
        }
        ep
    }

    // ---- inputs -------------------------------------------------------------------------

    /// Handles a packet read from the TUN device, `buf[start..start + len]`.
    ///
    /// # Panics
    /// If the buffer lacks [`HEADROOM`] before `start` or [`TAILROOM`] after the packet.
    pub fn handle_tun_packet(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        start: usize,
        len: usize,
    ) -> TunOutcome {
        assert!(
            start >= HEADROOM && buf.len() >= start + len + TAILROOM,
            "buffer lacks room"
        );
        let dst = match ip::Packet::new_checked(&buf[start..start + len]) {
            Ok(p) => p.dst_addr(),
            Err(_) => return TunOutcome::Dropped(self.count_drop(DropReason::BadTunPacket, None)),
        };
        let Some(id) = self.routes.lookup(dst) else {
            // The host's own multicast and broadcast chatter (IPv6 router solicitations,
            // mDNS) is told apart from packets to addresses nobody holds.
            let reason = if unicast(dst) {
                DropReason::NoRoute
            } else {
                DropReason::NotUnicast
            };
            return TunOutcome::Dropped(self.count_drop(reason, None));
        };
        if let Some(limit) = self.packet_limit(id)
            && len > usize::from(limit)
        {
            self.answer_too_big(id, &buf[start..start + len], limit);
            return TunOutcome::Dropped(self.count_drop(DropReason::TooBig, Some(id)));
        }
        if !self.ready(now, id) {
            return self.enqueue(now, id, &buf[start..start + len]);
        }
        self.maybe_rekey(now, id);
        self.seek_better_path(now, id);
        match self.seal_to(now, id, buf, start, len) {
            Ok(t) => TunOutcome::Send(t),
            Err(r) => TunOutcome::Dropped(self.count_drop(r, Some(id))),
        }
    }

    /// Handles a datagram received from `from`, `buf[range]`.
    ///
    /// # Panics
    /// If `range` is not inside `buf`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: Remote,
        buf: &mut [u8],
        range: Range<usize>,
    ) -> DatagramOutcome {
        let addr = core::net::SocketAddr::new(from.addr.ip().to_canonical(), from.addr.port());
        self.handle_message(now, Source::Addr(Remote { addr, ..from }), buf, range)
    }

    /// Runs the timers that are due. Call when [`Endpoint::poll_timeout`]'s time has come.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.last_tick = now;
        self.urgent = None;
        self.pending.expire(now);
        match &self.role {
            RoleState::Hub(_) => self.hub_timers(now),
            RoleState::Client(_) => self.client_timers(now),
        }
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            self.peer_timers(now, id);
        }
        if let Some(link) = &mut self.faketcp {
            link.handle_timeout(now);
        }
        self.deadline_dirty = true;
    }

    /// Says goodbye to every peer with a session (graceful shutdown).
    pub fn shutdown(&mut self, now: Instant) {
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            if self.ready(now, id) && !matches!(self.peers[&id].path, Path::Relay(_)) {
                self.send_frame(
                    now,
                    id,
                    &Frame::Goodbye {
                        reason: GoodbyeReason::Shutdown,
                    },
                );
            }
        }
    }

    /// Fuzzing and attack tests only: sends `plaintext` to node `peer`, sealed in their
    /// session as if it were a frame this node built — what a member can send with its
    /// own keys, and the only way a fuzz target reaches the handlers of authenticated
    /// frames, which no forged datagram can.
    #[doc(hidden)]
    pub fn forge_plain(&mut self, now: Instant, peer: u32, plaintext: &[u8]) {
        let _ = self.send_plain(now, PeerId(peer), plaintext);
    }

    /// Counts a drop that happened in the shell (a full TUN queue, a failed send), so
    /// that every drop shows in one place.
    pub fn count_shell_drop(&mut self, reason: DropReason) {
        self.count_drop(reason, None);
    }

    /// Client: points the hub at a new underlay address (re-resolved name, new network).
    pub fn set_server_addr(&mut self, addr: core::net::SocketAddr) {
        if let Some(hub) = self.peers.get_mut(&PeerId::HUB)
            && let Path::Direct(Some(r)) = &mut hub.path
        {
            r.addr = addr;
        }
        if let RoleState::Client(c) = &mut self.role {
            c.server = addr;
        }
    }

    // ---- outputs ------------------------------------------------------------------------

    /// The next control datagram to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<OwnedTransmit> {
        self.outbox.pop_front()
    }

    /// The next IP packet to write to the TUN device outside a datagram's outcome: one FEC
    /// recovered, or an ICMP error for a packet too big for its path ([`crate::icmp`]).
    #[must_use]
    pub fn poll_recovered(&mut self) -> Option<Vec<u8>> {
        self.recovered.pop_front()
    }

    /// The next event for the shell.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call [`Endpoint::handle_timeout`] next.
    #[must_use]
    pub fn poll_timeout(&mut self) -> Instant {
        if self.deadline_dirty {
            self.deadline = self.compute_deadline();
            self.deadline_dirty = false;
        }
        let tick = self.last_tick + MAX_TICK;
        let faketcp = self.faketcp.as_ref().and_then(|l| l.poll_timeout());
        [self.deadline, self.urgent, faketcp]
            .into_iter()
            .flatten()
            .fold(tick, Instant::min)
    }

    /// This node's public key.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// A snapshot for `culvert status`.
    pub fn status(&self, now: Instant) -> Status {
        let ago = |t: Option<Instant>| t.map(|t| now.saturating_duration_since(t).as_secs_f64());
        let peers = self
            .peers
            .values()
            .map(|p| PeerStatus {
                node: p.id.0,
                public_key: if p.key.0 == [0; 32] {
                    String::new()
                } else {
                    p.key.to_string()
                },
                addresses: p.addresses.iter().map(Prefix::to_string).collect(),
                endpoint: match p.path {
                    Path::Direct(a) => a.map(|a| a.addr.to_string()),
                    Path::Relay(_) => None,
                },
                transport: match p.path {
                    Path::Direct(Some(r)) => Some(r.transport),
                    _ => None,
                },
                last_switch: if p.id == PeerId::HUB {
                    self.describe_switch(now)
                } else {
                    p.path_changed.map(|(at, why)| {
                        format!(
                            "{:.0}s ago: {why}",
                            now.saturating_duration_since(at).as_secs_f64()
                        )
                    })
                },
                path: match p.path {
                    Path::Relay(_) => "relay",
                    Path::Direct(_) if p.id != PeerId::HUB && self.is_client() => p.paths.kind(),
                    Path::Direct(_) => "direct",
                },
                relay_via: match p.path {
                    Path::Relay(via) => Some(via.0),
                    Path::Direct(_) => None,
                },
                path_reason: match p.path {
                    Path::Relay(_) if p.id == PeerId::HUB => {
                        Some("the server does not answer directly")
                    }
                    Path::Relay(_) if !self.is_client() => {
                        Some("the client does not reach us directly")
                    }
                    Path::Relay(_) => Some(p.paths.reason().as_str()),
                    Path::Direct(_) => None,
                },
                path_rtt_ms: match p.path {
                    Path::Relay(via) if via != PeerId::HUB && p.id != PeerId::HUB => p.via.rtt(),
                    _ => p.paths.rtt(),
                }
                .map(|d| d.as_secs_f64() * 1000.0),
                path_loss: p.paths.loss(),
                path_mtu: self.path_mtu(p.id),
                state: if p.sessions.usable(now, self.cfg.timing.reject_after_time) {
                    "up"
                } else if p.sessions.handshake.is_some() {
                    "connecting"
                } else if p.last_handshake.is_none() {
                    // No traffic for it yet: a session starts with the first packet.
                    "idle"
                } else {
                    "down"
                },
                cipher: p.sessions.current.as_ref().map(|s| match s.cipher {
                    culvert_wire::hello::Cipher::Aes256Gcm => "aes-256-gcm",
                    culvert_wire::hello::Cipher::ChaCha20Poly1305 => "chacha20-poly1305",
                }),
                last_handshake_secs: ago(p.last_handshake),
                last_rx_secs: ago(p.last_rx),
                rtt_ms: p
                    .rtt
                    .or_else(|| p.paths.rtt())
                    .map(|d| d.as_secs_f64() * 1000.0),
                traffic: p.traffic,
                drops: p.drops.clone(),
                fec: crate::fec::stats(p.fec_tx.as_ref(), &p.fec_rx),
            })
            .collect();
        let (role, node, directory_version, isolation) = match &self.role {
            RoleState::Hub(h) => ("server", Some(0), h.published.version, h.cfg.isolation),
            RoleState::Client(c) => ("client", c.node, c.dir.held, c.isolation),
        };
        Status {
            role,
            public_key: self.public.to_string(),
            node,
            // A client's are what the hub granted once it joined (in key mode without
            // `-t`, the only ones it has).
            addresses: match &self.role {
                RoleState::Client(c) if !c.granted().is_empty() => c.granted(),
                _ => &self.cfg.addresses,
            }
            .iter()
            .map(Prefix::to_string)
            .collect(),
            advertised_routes: self.cfg.routes.iter().map(Prefix::to_string).collect(),
            accepted_routes: match &self.role {
                RoleState::Client(c) => c
                    .accepted_routes
                    .as_ref()
                    .map(|a| a.iter().map(Prefix::to_string).collect()),
                RoleState::Hub(_) => None,
            },
            routes: self
                .installed_routes()
                .into_iter()
                .map(|(p, node)| RouteStatus {
                    prefix: p.to_string(),
                    node,
                })
                .collect(),
            directory_version,
            isolation,
            pending_handshakes: self.pending.len(),
            reflexive: match &self.role {
                RoleState::Client(c) => c.reflexive.map(|a| a.to_string()),
                RoleState::Hub(_) => None,
            },
            relayed: self.relayed,
            traffic: self.traffic,
            drops: self.drops.clone(),
            peers,
        }
    }

    // ---- receive path -------------------------------------------------------------------

    fn handle_message(
        &mut self,
        now: Instant,
        src: Source,
        buf: &mut [u8],
        range: Range<usize>,
    ) -> DatagramOutcome {
        let result = match MessageType::of(&buf[range.clone()]) {
            Ok(MessageType::Data) => return self.handle_data(now, src, buf, range, Arrival::Wire),
            Ok(MessageType::FecParity) => self.handle_parity(now, src, &mut buf[range]),
            Ok(MessageType::HandshakeInit) => self.handle_init(now, src, &buf[range]),
            Ok(MessageType::HandshakeResponse) => self.handle_response(now, src, &buf[range]),
            Ok(MessageType::CookieReply) => self.handle_cookie(now, src, &buf[range]),
            Err(culvert_wire::Error::UnknownType(_)) => Err(DropReason::UnknownType),
            Err(_) => Err(DropReason::Malformed),
        };
        match result {
            Ok(()) => DatagramOutcome::Done,
            Err(r) => DatagramOutcome::Dropped(self.count_drop(r, src.relay_origin())),
        }
    }

    fn handle_data(
        &mut self,
        now: Instant,
        src: Source,
        buf: &mut [u8],
        range: Range<usize>,
        arrival: Arrival,
    ) -> DatagramOutcome {
        let Ok((index, counter)) =
            Data::new_checked(&buf[range.clone()]).map(|d| (d.index(), d.counter()))
        else {
            return DatagramOutcome::Dropped(self.count_drop(DropReason::Malformed, None));
        };
        // Nothing answers a message for an unknown index: a stranger learns nothing.
        let opened = match self.by_index.get(&index).copied() {
            Some(id) => self.open_data(now, id, src, buf, range.clone(), arrival, counter),
            None if arrival == Arrival::Wire && self.pending.contains(index) => {
                self.confirm_pending(now, index, src, buf, range.clone())
            }
            None => Err((DropReason::UnknownSession, None)),
        };
        match opened {
            Ok((id, plain)) => self.after_open(now, id, src, buf, range, plain),
            Err((r, peer)) => DatagramOutcome::Dropped(self.count_drop(r, peer)),
        }
    }

    /// Opens a data message of one of `id`'s sessions; returns the plaintext's range.
    #[allow(clippy::too_many_arguments)]
    fn open_data(
        &mut self,
        now: Instant,
        id: PeerId,
        src: Source,
        buf: &mut [u8],
        range: Range<usize>,
        arrival: Arrival,
        counter: u64,
    ) -> Result<(PeerId, Range<usize>), (DropReason, Option<PeerId>)> {
        if let Source::Relay { node: origin, .. } = src
            && origin != id
        {
            return Err((DropReason::BadFrame, Some(origin)));
        }
        let reject = self.cfg.timing.reject_after_time + RECEIVE_GRACE;
        let peer = self
            .peers
            .get_mut(&id)
            .expect("indices point at live peers");
        let index = Data::new_unchecked(&buf[range.clone()]).index();
        let slot = peer
            .sessions
            .slot(index)
            .ok_or((DropReason::UnknownSession, Some(id)))?;
        // FEC and the loss meter see what arrives on a direct path from this peer, in the
        // session it sends in; a recovered message is not an arrival.
        // (Either session the peer may send in: after both ends initiated at once, each
        // sends in the one it installed last, which the other may hold as its previous.)
        let metered =
            matches!(src, Source::Addr(_)) && matches!(slot, Slot::Current | Slot::Previous);
        let kept = match arrival {
            Arrival::Wire if metered => peer.fec_rx.keep(now, index, counter, &buf[range.clone()]),
            _ => None,
        };
        let session = peer
            .sessions
            .session_mut(slot)
            .ok_or((DropReason::UnknownSession, Some(id)))?;
        if now.saturating_duration_since(session.established) >= reject {
            return Err((DropReason::SessionExpired, Some(id)));
        }
        let plain = session
            .open(&mut buf[range.clone()])
            .map_err(|r| (r, Some(id)))?;
        if arrival == Arrival::Wire && !metered && slot != Slot::Handshake {
            peer.fec_rx.arrived_elsewhere(index, counter);
        }
        if arrival == Arrival::Wire && metered {
            peer.fec_rx.count(now, index, counter);
            if let Some(k) = kept {
                peer.fec_rx.authenticated(k);
            }
            // A loss onset may have brought the next report forward.
            if let Some(d) = peer.fec_rx.report_due() {
                self.deadline = Some(self.deadline.map_or(d, |x| x.min(d)));
            }
        }
        Ok((id, range.start + plain.start..range.start + plain.end))
    }

    /// A data message for a pending handshake. If it opens, the initiator has proven its
    /// static key, and only now does the handshake take effect.
    fn confirm_pending(
        &mut self,
        now: Instant,
        index: u32,
        src: Source,
        buf: &mut [u8],
        range: Range<usize>,
    ) -> Result<(PeerId, Range<usize>), (DropReason, Option<PeerId>)> {
        let p = self.pending.get_mut(index).expect("caller checked");
        // A session confirms from its origin: straight from the initiator, or relayed from
        // the node it claimed to be (the AEAD proves the key).
        let expected = match (&p.claim, src) {
            (_, Source::Addr(_)) => true,
            (Claim::Join { node, .. } | Claim::Peer(node), Source::Relay { node: origin, .. }) => {
                *node == origin
            }
        };
        if !expected {
            return Err((DropReason::BadFrame, src.relay_origin()));
        }
        let plain = p
            .session
            .open(&mut buf[range.clone()])
            .map_err(|r| (r, src.relay_origin()))?;
        let p = self.pending.take(index).expect("present");
        let id = self.install_confirmed(now, p, src).map_err(|r| (r, None))?;
        Ok((id, range.start + plain.start..range.start + plain.end))
    }

    /// What every authentic data message does: liveness, roaming, then its content.
    fn after_open(
        &mut self,
        now: Instant,
        id: PeerId,
        src: Source,
        buf: &mut [u8],
        range: Range<usize>,
        plain: Range<usize>,
    ) -> DatagramOutcome {
        let peer = self.peers.get_mut(&id).expect("opened for a live peer");
        peer.last_rx = Some(now);
        // Only traffic over the transport we send on answers it (auto failover watches this).
        let answers = match (src, peer.path) {
            (Source::Addr(r), Path::Direct(Some(p))) => r.transport == p.transport,
            _ => true,
        };
        if answers {
            peer.unanswered_since = None;
        }
        peer.traffic.rx_bytes += plain.len() as u64;
        peer.traffic.rx_packets += 1;
        self.traffic.rx_bytes += plain.len() as u64;
        self.traffic.rx_packets += 1;
        // Roaming: the hub follows its clients (address or transport); a client keeps the
        // hub where its configuration and transport choice put it, and leaves its peers'
        // direct paths to their PathSet (a probe only gives a path to a peer without one).
        let probe = frame::is_probe(&buf[plain.clone()]);
        match (src, self.is_client(), probe) {
            (Source::Addr(from), true, false) if id != PeerId::HUB => {
                self.on_direct_message(now, id, from, false);
            }
            (Source::Addr(from), true, false) => self.hub_heard_directly(now, from),
            (Source::Addr(from), false, false) => {
                if let Some(p) = self.peers.get_mut(&id)
                    && p.path != Path::Direct(Some(from))
                {
                    tracing::info!(peer = id.0, %from, "client moved to a new underlay endpoint");
                    p.path = Path::Direct(Some(from));
                    p.path_changed = Some((now, "client moved"));
                    self.send_observed(now, id);
                }
            }
            (Source::Relay { via, .. }, false, false) => {
                if let Some(p) = self.peers.get_mut(&id)
                    && p.path != Path::Relay(via)
                {
                    tracing::info!(
                        peer = id.0,
                        via = via.0,
                        "client now reaches the server through another client"
                    );
                    p.path = Path::Relay(via);
                    p.path_changed = Some((now, "client reached through another client"));
                }
            }
            _ => {}
        }
        let kind = match buf[plain.clone()].first() {
            None => return DatagramOutcome::Done,
            Some(b) if b >> 4 == 4 || b >> 4 == 6 => None,
            Some(&b) => Some(b),
        };
        match kind {
            None => self.check_inner_source(id, buf, plain),
            Some(_) => self.handle_frame(now, id, src, buf, range, plain),
        }
    }

    /// A parity message: authenticated in its session first (a forgery costs one AEAD
    /// check), then it may recover lost data messages of its group, which are opened (and
    /// authenticated) like any other.
    fn handle_parity(
        &mut self,
        now: Instant,
        src: Source,
        msg: &mut [u8],
    ) -> Result<(), DropReason> {
        let Source::Addr(from) = src else {
            return Err(DropReason::BadFrame);
        };
        let view = FecParity::new_checked(&*msg).map_err(|_| DropReason::FecBadParity)?;
        let (index, k, m) = (view.index(), view.k(), view.m());
        let id = *self
            .by_index
            .get(&index)
            .ok_or(DropReason::UnknownSession)?;
        let peer = self
            .peers
            .get_mut(&id)
            .expect("indices point at live peers");
        let session = match peer.sessions.slot(index) {
            Some(slot) => peer.sessions.session_mut(slot),
            None => None,
        }
        .ok_or(DropReason::UnknownSession)?;
        if !crate::fec::acceptable_shape(k, m) {
            return Err(DropReason::FecBadParity);
        }
        session.open_parity(msg)?;
        let parity = FecParity::new_unchecked(&*msg);
        let recovered = peer.fec_rx.on_parity(now, &parity);
        for mut message in recovered {
            let len = message.len();
            match self.handle_data(
                now,
                Source::Addr(from),
                &mut message,
                0..len,
                Arrival::Recovered,
            ) {
                DatagramOutcome::Deliver(r) => {
                    message.truncate(r.end);
                    message.drain(..r.start);
                    self.recovered.push_back(message);
                }
                DatagramOutcome::Send(t) => self.push_owned(t.to, message, t.range),
                DatagramOutcome::Done | DatagramOutcome::Dropped(_) => {}
            }
        }
        Ok(())
    }

    /// Delivers an IP packet only if its source address belongs to the peer it came from.
    fn check_inner_source(
        &mut self,
        id: PeerId,
        buf: &[u8],
        plain: Range<usize>,
    ) -> DatagramOutcome {
        let Ok(pkt) = ip::Packet::new_checked(&buf[plain.clone()]) else {
            return DatagramOutcome::Dropped(self.count_drop(DropReason::Malformed, Some(id)));
        };
        if self.routes.lookup(pkt.src_addr()) != Some(id) {
            return DatagramOutcome::Dropped(
                self.count_drop(DropReason::SourceNotAllowed, Some(id)),
            );
        }
        let end = plain.start + pkt.total_len();
        DatagramOutcome::Deliver(plain.start..end)
    }

    /// Whether to answer a probe of `id` that came from `src`: always on its path or
    /// through a relay, within [`crate::peer::PROBE_ANSWERS`] a second to another address
    /// (the answer is no larger than the probe, and it is authentic, but its source
    /// address is whatever the sender wrote).
    fn may_answer(&mut self, now: Instant, id: PeerId, src: Source) -> bool {
        let Some(p) = self.peers.get_mut(&id) else {
            return false;
        };
        match (src, p.path) {
            (Source::Relay { .. }, _) => true,
            (Source::Addr(a), Path::Direct(Some(on))) if a.addr == on.addr => true,
            (Source::Addr(_), _) => p.answers.allow(now),
        }
    }

    fn handle_frame(
        &mut self,
        now: Instant,
        id: PeerId,
        src: Source,
        buf: &mut [u8],
        message: Range<usize>,
        plain: Range<usize>,
    ) -> DatagramOutcome {
        let Ok(frame) = Frame::parse(&buf[plain.clone()]) else {
            return DatagramOutcome::Dropped(self.count_drop(DropReason::BadFrame, Some(id)));
        };
        let result = match frame {
            Frame::Relay { dest, origin, .. } => {
                // Relay frames travel from neighbour to neighbour, never inside each other.
                return match src {
                    Source::Addr(_) => {
                        self.on_relay(now, id, PeerId(dest), PeerId(origin), buf, message, plain)
                    }
                    Source::Relay { .. } => {
                        DatagramOutcome::Dropped(self.count_drop(DropReason::BadFrame, Some(id)))
                    }
                };
            }
            Frame::Ping { seq, dir_version } => {
                self.send_frame(
                    now,
                    id,
                    &Frame::Pong {
                        seq,
                        dir_version: self.dir_version(),
                    },
                );
                self.on_ping(now, id, dir_version)
            }
            Frame::Pong { seq, dir_version } => self.on_pong(now, id, seq, dir_version),
            Frame::Directory(part) => self.on_directory(now, id, part),
            Frame::DirDelta(delta) => self.on_dir_delta(now, id, delta),
            Frame::DirRequest { .. } => self.on_dir_request(now, id),
            Frame::Goodbye { reason } => self.on_goodbye(now, id, reason),
            Frame::Probe { .. } | Frame::MtuProbe { .. } if !self.may_answer(now, id, src) => {
                Err(DropReason::RateLimited)
            }
            Frame::Probe { seq, pad } => {
                self.send_frame_on(now, id, src.path(), &Frame::ProbeAck { seq, pad }, None);
                if let Source::Addr(from) = src
                    && id != PeerId::HUB
                    && self.is_client()
                {
                    self.on_direct_message(now, id, from, true);
                }
                Ok(())
            }
            Frame::MtuProbe { seq, .. } => {
                self.send_frame_on(now, id, src.path(), &Frame::MtuAck { seq }, None);
                Ok(())
            }
            Frame::MtuAck { seq } => {
                self.on_mtu_ack(now, id, seq);
                Ok(())
            }
            Frame::ProbeAck { seq, .. } if id == PeerId::HUB => self.on_probe_ack(now, seq),
            Frame::ProbeAck { seq, .. } => match src {
                Source::Addr(_) => self.on_path_ack(now, id, seq, src),
                Source::Relay { via, .. } => {
                    self.on_via_ack(now, id, via, seq);
                    Ok(())
                }
            },
            Frame::Candidates(list) => self.on_candidates(id, list),
            Frame::PunchRequest { node } => self.on_punch_request(now, id, node),
            Frame::Punch { node, candidates } => self.on_punch(now, id, node, candidates),
            Frame::Observed(addr) => self.on_observed(id, addr),
            Frame::Neighbours { node, nodes } => self.on_neighbours(now, id, node, nodes),
            Frame::LossReport { received, expected } => {
                let fec = self.cfg.fec;
                if let Some(p) = self.peers.get_mut(&id) {
                    // Messages we sent where the peer does not count them (through a relay,
                    // to another candidate, a path MTU probe larger than the path) are gaps
                    // in its count, not loss on the path.
                    let missing = expected.saturating_sub(received);
                    let forgiven = missing.min(core::mem::take(&mut p.unmetered));
                    if let Some(e) = p.encoder(fec) {
                        e.on_report(received, expected - forgiven);
                    }
                }
                Ok(())
            }
        };
        match result {
            Ok(()) => DatagramOutcome::Done,
            Err(r) => DatagramOutcome::Dropped(self.count_drop(r, Some(id))),
        }
    }

    fn on_goodbye(
        &mut self,
        now: Instant,
        id: PeerId,
        reason: GoodbyeReason,
    ) -> Result<(), DropReason> {
        tracing::info!(peer = id.0, reason = reason.as_str(), "peer said goodbye");
        match &self.role {
            RoleState::Hub(_) => self.remove_peer(now, id),
            RoleState::Client(_) if id == PeerId::HUB => self.lose_hub(now, false),
            RoleState::Client(_) => self.reset_sessions(id),
        }
        Ok(())
    }

    // ---- send path ----------------------------------------------------------------------

    /// Whether packets for `id` can be sealed and sent right now.
    fn ready(&self, now: Instant, id: PeerId) -> bool {
        let reject = self.cfg.timing.reject_after_time;
        let Some(p) = self.peers.get(&id) else {
            return false;
        };
        if !p.sessions.usable(now, reject) || !p.reachable() {
            return false;
        }
        match p.path {
            Path::Direct(_) => true,
            Path::Relay(_) => self
                .first_hop(id)
                .and_then(|hop| self.peers.get(&hop))
                .is_some_and(|h| h.sessions.usable(now, reject) && h.reachable()),
        }
    }

    /// Seals `buf[start..start + len]` for `id` (and for the hub, when relayed).
    fn seal_to(
        &mut self,
        now: Instant,
        id: PeerId,
        buf: &mut [u8],
        start: usize,
        len: usize,
    ) -> Result<Transmit, DropReason> {
        let peer = self.peers.get_mut(&id).ok_or(DropReason::NoRoute)?;
        let session = peer
            .sessions
            .current
            .as_mut()
            .ok_or(DropReason::NoSession)?;
        let range = session.seal(buf, start - DATA_HEADER_LEN, len)?;
        peer.traffic.tx_bytes += len as u64;
        peer.traffic.tx_packets += 1;
        self.traffic.tx_bytes += len as u64;
        self.traffic.tx_packets += 1;
        peer.last_tx = Some(now);
        if len > 0 && peer.unanswered_since.is_none() {
            peer.unanswered_since = Some(now);
        }
        match peer.path {
            Path::Direct(Some(to)) => {
                self.fec_sealed(now, id, to, &buf[range.clone()]);
                Ok(Transmit { to, range })
            }
            Path::Direct(None) => Err(DropReason::NoRoute),
            Path::Relay(via) => {
                peer.unmetered = peer.unmetered.saturating_add(1);
                let at = range.start - RELAY_HEADER_LEN;
                self.seal_relayed(now, id, via, buf, at, range.len())
            }
        }
    }

    /// Seals `buf[at..at + len]` (a relay frame) in the session with the neighbour `via`.
    fn wrap_for(
        &mut self,
        now: Instant,
        via: PeerId,
        buf: &mut [u8],
        at: usize,
        len: usize,
    ) -> Result<Transmit, DropReason> {
        let relay = self.peers.get_mut(&via).ok_or(DropReason::NoRoute)?;
        let session = relay
            .sessions
            .current
            .as_mut()
            .ok_or(DropReason::NoSession)?;
        let range = session.seal(buf, at - DATA_HEADER_LEN, len)?;
        relay.last_tx = Some(now);
        match relay.path {
            Path::Direct(Some(to)) => {
                self.fec_sealed(now, via, to, &buf[range.clone()]);
                Ok(Transmit { to, range })
            }
            _ => Err(DropReason::NoRoute),
        }
    }

    /// FEC: takes a data message just sealed for `id`'s direct path into the open group, and
    /// queues the group's parity when it completes.
    fn fec_sealed(&mut self, now: Instant, id: PeerId, to: Remote, message: &[u8]) {
        let fec = self.cfg.fec;
        let Some(encoder) = self.peers.get_mut(&id).and_then(|p| p.encoder(fec)) else {
            return;
        };
        let Ok(data) = Data::new_checked(message) else {
            return;
        };
        let parity = encoder.push(now, data.index(), data.counter(), message);
        if let Some(d) = encoder.deadline() {
            self.deadline = Some(self.deadline.map_or(d, |x| x.min(d)));
        }
        self.send_parity(id, to, parity);
    }

    /// Seals parity messages in the session of their group and queues them.
    fn send_parity(&mut self, id: PeerId, to: Remote, parity: Vec<Vec<u8>>) {
        for mut bytes in parity {
            let sealed = match self.peers.get(&id) {
                Some(p) => {
                    let index = FecParity::new_checked(&bytes[..]).map_or(0, |v| v.index());
                    match [p.sessions.current.as_ref(), p.sessions.previous.as_ref()]
                        .into_iter()
                        .flatten()
                        .find(|s| s.remote_index == index)
                    {
                        Some(s) => s.seal_parity(&mut bytes),
                        None => Err(DropReason::NoSession),
                    }
                }
                None => Err(DropReason::NoSession),
            };
            match sealed {
                Ok(()) => self.outbox.push_back(OwnedTransmit::new(to, bytes)),
                Err(r) => {
                    self.count_drop(r, Some(id));
                }
            }
        }
    }

    /// FEC timers of one peer: flushes a partial group, sends the loss report.
    fn fec_timers(&mut self, now: Instant, id: PeerId) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        p.fec_rx.expire(now);
        let report = p.fec_rx.take_report(now);
        let parity = p
            .fec_tx
            .as_mut()
            .map(|e| e.handle_timeout(now))
            .unwrap_or_default();
        if let Path::Direct(Some(to)) = p.path {
            self.send_parity(id, to, parity);
        }
        if let Some((received, expected)) = report
            && self.ready(now, id)
        {
            self.send_frame(now, id, &Frame::LossReport { received, expected });
        }
    }

    /// Seals an owned plaintext for `id` and queues it for sending.
    fn send_plain(&mut self, now: Instant, id: PeerId, plaintext: &[u8]) -> Result<(), DropReason> {
        let mut buf = vec![0u8; HEADROOM + plaintext.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + plaintext.len()].copy_from_slice(plaintext);
        let t = self.seal_to(now, id, &mut buf, HEADROOM, plaintext.len())?;
        self.push_owned(t.to, buf, t.range);
        Ok(())
    }

    /// Encodes a control frame, seals it in `id`'s session and sends it on `path` instead
    /// of the peer's own: probes and their answers travel on the path under test (an
    /// address and transport, with `ttl` if given, or a relay).
    fn send_frame_on(
        &mut self,
        now: Instant,
        id: PeerId,
        path: Path,
        frame: &Frame<'_>,
        ttl: Option<u8>,
    ) {
        let mut plain = Vec::new();
        frame.emit(&mut plain);
        let mut buf = vec![0u8; HEADROOM + plain.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + plain.len()].copy_from_slice(&plain);
        let sealed = match self.peers.get_mut(&id) {
            Some(p) if p.sessions.current.is_some() => {
                // Not where the peer's loss count looks (the path its data takes), or a
                // probe the path may be too narrow for: a gap there, not loss.
                if path != p.path || matches!(frame, Frame::MtuProbe { .. }) {
                    p.unmetered = p.unmetered.saturating_add(1);
                }
                let s = p.sessions.current.as_mut().expect("checked above");
                s.seal(&mut buf, HEADROOM - DATA_HEADER_LEN, plain.len())
            }
            _ => Err(DropReason::NoSession),
        };
        let sent = sealed.and_then(|range| match path {
            Path::Direct(Some(to)) => Ok(Transmit { to, range }),
            Path::Direct(None) => Err(DropReason::NoRoute),
            Path::Relay(via) => {
                let at = range.start - RELAY_HEADER_LEN;
                self.seal_relayed(now, id, via, &mut buf, at, range.len())
            }
        });
        match sent {
            Ok(t) => {
                self.push_owned(t.to, buf, t.range);
                if let (Some(o), Path::Direct(_)) = (self.outbox.back_mut(), path) {
                    o.ttl = ttl;
                }
            }
            Err(r) => {
                self.count_drop(r, Some(id));
            }
        }
    }

    /// Encodes and sends a control frame to `id`; failures are counted, not returned.
    fn send_frame(&mut self, now: Instant, id: PeerId, frame: &Frame<'_>) {
        let mut plain = Vec::new();
        frame.emit(&mut plain);
        if let Err(r) = self.send_plain(now, id, &plain) {
            self.count_drop(r, Some(id));
        }
    }

    /// Sends a message that is not sealed in the peer's session (a handshake message).
    fn send_unsealed(
        &mut self,
        now: Instant,
        to: Source,
        message: &[u8],
    ) -> Result<(), DropReason> {
        match to {
            Source::Addr(addr) => {
                self.outbox
                    .push_back(OwnedTransmit::new(addr, message.to_vec()));
                Ok(())
            }
            Source::Relay { node, via } => {
                let at = DATA_HEADER_LEN + RELAY_HEADER_LEN;
                let mut buf = vec![0u8; at + message.len() + TAG_LEN];
                buf[at..at + message.len()].copy_from_slice(message);
                let t =
                    self.seal_relayed(now, node, via, &mut buf, DATA_HEADER_LEN, message.len())?;
                self.push_owned(t.to, buf, t.range);
                Ok(())
            }
        }
    }

    fn push_owned(&mut self, to: Remote, mut buf: Vec<u8>, range: Range<usize>) {
        buf.truncate(range.end);
        buf.drain(..range.start);
        self.outbox.push_back(OwnedTransmit::new(to, buf));
    }

    /// Keeps a copy of a packet until the peer's session is up, and asks for one.
    fn enqueue(&mut self, now: Instant, id: PeerId, packet: &[u8]) -> TunOutcome {
        let can_initiate = self.may_initiate(id);
        let awaited = self.pending.concerns(id);
        let peer = self.peers.get_mut(&id).expect("routes point at live peers");
        if !can_initiate && !awaited {
            return TunOutcome::Dropped(self.count_drop(DropReason::NoSession, Some(id)));
        }
        if peer.queue.len() >= QUEUE_LIMIT {
            return TunOutcome::Dropped(self.count_drop(DropReason::QueueFull, Some(id)));
        }
        peer.queue.push_back(packet.to_vec());
        let idle = peer.sessions.handshake.is_none() && peer.retry_at.is_none_or(|t| t <= now);
        if can_initiate && idle {
            self.start_handshake(now, id);
        }
        TunOutcome::Queued
    }

    /// Sends everything queued for `id` now that its session is up (traffic that may want
    /// a direct path).
    fn flush_queue(&mut self, now: Instant, id: PeerId) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let queued = core::mem::take(&mut peer.queue);
        if !queued.is_empty() {
            self.seek_better_path(now, id);
        }
        for packet in queued {
            if let Err(r) = self.send_plain(now, id, &packet) {
                self.count_drop(r, Some(id));
            }
        }
    }

    /// Starts a rekey when the current session is old or has carried many messages.
    fn maybe_rekey(&mut self, now: Instant, id: PeerId) {
        let t = &self.cfg.timing;
        let Some(p) = self.peers.get(&id) else { return };
        let Some(s) = p.sessions.current.as_ref() else {
            return;
        };
        let old = now.saturating_duration_since(s.established) >= t.rekey_after_time;
        let busy = s.sent().max(s.received_max()) >= t.rekey_after_messages;
        if s.initiator && (old || busy) && p.sessions.handshake.is_none() && self.may_initiate(id) {
            tracing::debug!(peer = id.0, old, busy, "rekeying");
            self.start_handshake(now, id);
        }
    }

    // ---- bookkeeping --------------------------------------------------------------------

    /// Asks for `handle_timeout` at the next opportunity.
    fn schedule_now(&mut self, now: Instant) {
        self.urgent = Some(self.urgent.map_or(now, |u| u.min(now)));
    }

    fn is_client(&self) -> bool {
        matches!(self.role, RoleState::Client(_))
    }

    /// Whether this node opens handshakes towards `id` (the hub never initiates).
    fn may_initiate(&self, id: PeerId) -> bool {
        match &self.role {
            RoleState::Hub(_) => false,
            RoleState::Client(c) => id == PeerId::HUB || !c.isolation,
        }
    }

    fn dir_version(&self) -> u64 {
        match &self.role {
            RoleState::Hub(h) => h.published.version,
            RoleState::Client(c) => c.dir.held,
        }
    }

    /// Counts a drop globally and on the peer; returns the reason for convenience.
    fn count_drop(&mut self, reason: DropReason, peer: Option<PeerId>) -> DropReason {
        self.drops.add(reason);
        if let Some(p) = peer.and_then(|id| self.peers.get_mut(&id)) {
            p.drops.add(reason);
        }
        tracing::trace!(
            reason = reason.as_str(),
            peer = peer.map(|p| p.0),
            "dropped packet"
        );
        reason
    }

    /// A fresh local session index, registered for `id`.
    fn new_index(&mut self, id: PeerId) -> u32 {
        let i = self.fresh_index();
        self.by_index.insert(i, id);
        i
    }

    /// A local index no session, handshake or pending handshake of this endpoint uses (a
    /// pending one is registered in the pending table, not for a peer).
    fn fresh_index(&mut self) -> u32 {
        loop {
            let i = self.rng.u32();
            if i != 0 && !self.by_index.contains_key(&i) && !self.pending.contains(i) {
                return i;
            }
        }
    }

    fn release_index(&mut self, index: u32) {
        self.by_index.remove(&index);
    }

    /// Installs a session this node initiated: it becomes current at once.
    fn install_initiated(&mut self, now: Instant, id: PeerId, session: crate::session::Session) {
        let peer = self.peers.get_mut(&id).expect("caller checked the peer");
        let (dropped, _) = peer.sessions.rotate(session);
        peer.last_handshake = Some(now);
        peer.attempts = 0;
        peer.retry_at = None;
        if let Some(i) = dropped {
            self.release_index(i);
        }
        self.deadline_dirty = true;
    }

    /// A responder handshake whose initiator proved its key: its session becomes current
    /// (the old one stays for receiving), its claim takes effect, and the key's replay
    /// floor rises. Pending handshakes of the key that are not newer become moot.
    fn install_confirmed(
        &mut self,
        now: Instant,
        p: Pending,
        src: Source,
    ) -> Result<PeerId, DropReason> {
        let id = match &p.claim {
            Claim::Join {
                node,
                granted,
                routes,
            } => self.admit_confirmed(now, &p.key, *node, granted, routes)?,
            Claim::Peer(id) if self.peers.get(id).is_some_and(|peer| peer.key == p.key) => *id,
            Claim::Peer(_) => return Err(DropReason::UnknownKey),
        };
        self.pending.supersede(&p.key, p.timestamp);
        self.by_index.insert(p.session.local_index, id);
        let peer = self.peers.get_mut(&id).expect("admitted above");
        peer.confirmed_timestamp = peer.confirmed_timestamp.max(p.timestamp);
        let (dropped, first) = peer.sessions.rotate(p.session);
        peer.last_handshake = Some(now);
        if let (Path::Direct(_), Source::Addr(a)) = (peer.path, src.or(p.source)) {
            peer.path = Path::Direct(Some(a));
        }
        if let Some(i) = dropped {
            self.release_index(i);
        }
        self.deadline_dirty = true;
        self.on_confirmed(now, id, first);
        self.flush_queue(now, id);
        Ok(id)
    }

    /// Drops every session of a peer (it left, or the hub vouches for someone else now).
    fn reset_sessions(&mut self, id: PeerId) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let indices = peer.sessions.clear();
        peer.queue.clear();
        for i in indices {
            self.release_index(i);
        }
    }

    fn remove_peer(&mut self, now: Instant, id: PeerId) {
        self.reset_sessions(id);
        if self.is_client() {
            // A directory change: a pending session with the node's old key is moot. (The
            // hub keeps a timed-out client's pending rejoin.)
            self.pending.forget(id);
        }
        self.peers.remove(&id);
        self.install_routes(id);
        if let RoleState::Client(c) = &mut self.role {
            c.reach.remove(&id);
        }
        self.on_peer_removed(now, id);
    }

    // ---- timers -------------------------------------------------------------------------

    /// Per-peer timers: handshake retries, expiry, keepalives, dead-peer detection.
    fn peer_timers(&mut self, now: Instant, id: PeerId) {
        let t = self.cfg.timing.clone();
        let can_initiate = self.may_initiate(id);
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let released = p.sessions.expire(now, t.reject_after_time + RECEIVE_GRACE);
        let retry_due = p.retry_at.is_some_and(|r| r <= now);
        let recently_used = p
            .last_tx
            .is_some_and(|tx| now.saturating_duration_since(tx) < t.keepalive);
        let keepalive_due = id != PeerId::HUB
            && p.sessions.current.is_some()
            && p.last_rx
                .is_some_and(|rx| p.last_tx.is_none_or(|tx| tx < rx))
            && p.last_rx
                .is_some_and(|rx| now.saturating_duration_since(rx) >= t.keepalive);
        let unanswered = p
            .unanswered_since
            .is_some_and(|s| now.saturating_duration_since(s) >= t.keepalive + t.retry_min * 5);
        for i in released {
            self.release_index(i);
        }
        self.fec_timers(now, id);
        self.mtu_timers(now, id);
        if self.is_client() && id != PeerId::HUB {
            self.path_timers(now, id);
            self.via_timers(now, id);
        }
        // A session in use is renewed before it expires, even when what it carries is not
        // our own traffic for the peer (relay frames we send through it).
        if recently_used {
            self.maybe_rekey(now, id);
        }
        if keepalive_due && self.ready(now, id) {
            // An empty message: tells the peer we are alive without data of our own.
            if let Err(r) = self.send_plain(now, id, &[]) {
                self.count_drop(r, Some(id));
            }
        }
        if !can_initiate || id == PeerId::HUB {
            return;
        }
        let p = self.peers.get_mut(&id).expect("still present");
        if unanswered && p.sessions.handshake.is_none() {
            tracing::debug!(peer = id.0, "no answer from peer; starting a new handshake");
            p.unanswered_since = None;
            self.start_handshake(now, id);
        } else if retry_due {
            self.retry_handshake(now, id);
        }
    }

    fn compute_deadline(&self) -> Option<Instant> {
        let t = &self.cfg.timing;
        let mut d: Option<Instant> = None;
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                d = Some(d.map_or(x, |d| d.min(x)));
            }
        };
        for p in self.peers.values() {
            consider(p.retry_at);
            consider(
                p.sessions
                    .current
                    .as_ref()
                    .map(|s| s.established + t.reject_after_time + RECEIVE_GRACE),
            );
            consider(
                p.sessions
                    .previous
                    .as_ref()
                    .map(|s| s.established + t.reject_after_time + RECEIVE_GRACE),
            );
            consider(p.fec_tx.as_ref().and_then(crate::fec::Encoder::deadline));
            consider(p.paths.next_deadline());
            consider(p.pmtu.as_ref().and_then(|(_, m)| m.next_deadline()));
            consider(p.via.next_deadline());
            consider(p.fec_rx.report_due());
        }
        consider(self.pending.next_expiry());
        match &self.role {
            RoleState::Hub(h) => consider(Some(h.next_deadline(&self.peers, t))),
            RoleState::Client(c) => consider(c.next_deadline()),
        }
        d
    }
}

/// Whether `ip` is a unicast address (the overlay carries nothing else).
fn unicast(ip: core::net::IpAddr) -> bool {
    match ip {
        core::net::IpAddr::V4(a) => !a.is_multicast() && !a.is_broadcast(),
        core::net::IpAddr::V6(a) => !a.is_multicast(),
    }
}

impl Source {
    /// The path a message came on, to answer on the same.
    fn path(self) -> Path {
        match self {
            Self::Addr(a) => Path::Direct(Some(a)),
            Self::Relay { via, .. } => Path::Relay(via),
        }
    }

    fn relay_origin(self) -> Option<PeerId> {
        match self {
            Self::Relay { node, .. } => Some(node),
            Self::Addr(_) => None,
        }
    }

    fn or(self, other: Self) -> Self {
        match self {
            Self::Addr(_) => self,
            Self::Relay { .. } => other,
        }
    }
}
