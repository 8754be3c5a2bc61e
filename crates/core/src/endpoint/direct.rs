//! Direct paths between clients: what a client does with its peers' [`PathSet`]s, and how
//! the hub coordinates punching.
//!
//! ```text
//!  A                               hub                              B
//!  | traffic for B, relayed         |                                |
//!  |-- PunchRequest{B} ------------>|                                |
//!  |<-- Punch{B, B's candidates} ---|--- Punch{A, A's candidates} -->|
//!  |== Probe (E2E session) =====================================> B's candidates
//!  A's candidates <============================= Probe (E2E session) ==|
//!  |<== ProbeAck ==================================================== | first answer:
//!  | direct path                                                       | direct path
//! ```
//!
//! Candidates are the clients' own interface endpoints (from [`Frame::Candidates`]) and the
//! endpoint the hub sees each one's UDP traffic come from. Probes and their answers are
//! sealed in the two clients' end-to-end session: a path is trusted only once the real peer
//! answered on it, and nothing the hub (or anyone) says can redirect a session.

use core::net::SocketAddr;
use std::time::{Duration, Instant};

use culvert_wire::addr::Prefix;
use culvert_wire::frame::{Candidate, CandidateKind, Frame, MAX_CANDIDATES};

use super::{Endpoint, RoleState};
use crate::path::{self, Path, PathAction, PathSet, RelayReason};
use crate::peer::{PeerId, Remote, Source, Transport};
use crate::stats::DropReason;

/// LAN candidates the hub passes on per client.
const MAX_LAN_CANDIDATES: usize = 8;
/// A client may ask the hub for a punch at most this often.
const PUNCH_REQUEST_INTERVAL: Duration = Duration::from_secs(1);

impl Endpoint {
    /// Client: the UDP endpoints of this node's own interfaces (its LAN candidates); sent to
    /// the hub now if joined, and at every join.
    pub fn set_local_addresses(&mut self, now: Instant, addresses: Vec<SocketAddr>) {
        let RoleState::Client(c) = &mut self.role else {
            return;
        };
        let mut list: Vec<SocketAddr> = addresses
            .into_iter()
            .filter(|a| path::usable_local(*a))
            .collect();
        list.truncate(MAX_CANDIDATES);
        if c.locals == list {
            return;
        }
        c.locals = list;
        self.publish_candidates(now);
    }

    /// Client: tells the hub where this node may be reached on its LANs.
    pub(super) fn publish_candidates(&mut self, now: Instant) {
        let RoleState::Client(c) = &self.role else {
            return;
        };
        if !c.p2p || c.isolation || c.node.is_none() {
            return;
        }
        let frame = Frame::Candidates(c.locals.clone());
        self.send_frame(now, PeerId::HUB, &frame);
    }

    /// Client: traffic for `id`. While it is relayed and may go direct, this asks the hub to
    /// have both sides punch (at most once per backoff step); while the hub relays it, it
    /// also wakes the search for a client relay ([`crate::via`]). It runs for every packet:
    /// one peer lookup, no allocation.
    pub(super) fn seek_better_path(&mut self, now: Instant, id: PeerId) {
        let RoleState::Client(c) = &self.role else {
            return;
        };
        let (p2p, isolation) = (c.p2p, c.isolation);
        if id == PeerId::HUB {
            return;
        }
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if !matches!(peer.path, Path::Relay(_)) {
            return;
        }
        match (p2p, isolation) {
            (false, _) => return peer.paths.hold(RelayReason::Disabled),
            (_, true) => return peer.paths.hold(RelayReason::Isolation),
            _ => {}
        }
        let wake = peer.path == Path::Relay(PeerId::HUB) && peer.via.wake(now);
        let punch = peer.sessions.current.is_some() && peer.paths.wants_punch(now);
        if wake {
            self.schedule_now(now);
        }
        if !punch {
            return;
        }
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        peer.paths.requested(now);
        tracing::debug!(peer = id.0, "asking the hub to coordinate a punch");
        self.send_frame(now, PeerId::HUB, &Frame::PunchRequest { node: id.0 });
        self.deadline_dirty = true;
    }

    /// Client: the hub's order to punch towards `node` now.
    pub(super) fn on_punch(
        &mut self,
        now: Instant,
        from: PeerId,
        node: u32,
        candidates: Vec<Candidate>,
    ) -> Result<(), DropReason> {
        let RoleState::Client(c) = &self.role else {
            return Err(DropReason::BadFrame);
        };
        if from != PeerId::HUB {
            return Err(DropReason::BadFrame);
        }
        if !c.p2p {
            return Ok(());
        }
        let id = PeerId(node);
        if id == PeerId::HUB || !self.peers.contains_key(&id) {
            return Err(DropReason::RelayNoPeer);
        }
        // Behind a NAT unless the hub sees us at one of our own addresses; our NAT changes
        // ports if the hub sees us at a port our socket does not have.
        let behind_nat = c.reflexive.is_none_or(|r| !c.locals.contains(&r));
        let ports_changed = c
            .reflexive
            .zip(c.locals.first())
            .is_some_and(|(r, l)| r.port() != l.port());
        // A candidate inside the overlay or a subnet routed into it is reached through the
        // tunnel: never a path of its own.
        let candidates: Vec<Candidate> = candidates
            .into_iter()
            .filter(|c| !self.inside_overlay(c.addr.ip()))
            .collect();
        tracing::debug!(peer = node, candidates = %path::describe(&candidates), behind_nat, "punching");
        let peer = self.peers.get_mut(&id).ok_or(DropReason::RelayNoPeer)?;
        let rng = &mut self.rng;
        peer.paths
            .start(now, candidates, behind_nat, ports_changed, rng);
        self.path_timers(now, id);
        self.deadline_dirty = true;
        Ok(())
    }

    /// Client: whether `ip` is reached through the overlay: inside our own overlay networks,
    /// a peer's addresses, or a subnet routed to a peer — unless that subnet is one of our
    /// own networks (a LAN we share with the peer stays direct: no node routes its own LAN
    /// into the tunnel). A full tunnel's default route does not count.
    fn inside_overlay(&self, ip: core::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        let RoleState::Client(c) = &self.role else {
            return false;
        };
        let ours = |r: &Prefix| c.locals.iter().any(|l| r.contains(l.ip().to_canonical()));
        self.cfg.addresses.iter().any(|a| a.network().contains(ip))
            || self.peers.values().any(|p| {
                p.addresses.iter().any(|a| a.network().contains(ip))
                    || p.routes
                        .iter()
                        .any(|r| !r.is_empty() && r.contains(ip) && !ours(r))
            })
    }

    /// Client: the timers of `id`'s direct paths (probes, punch timeout, dead path).
    pub(super) fn path_timers(&mut self, now: Instant, id: PeerId) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        for action in peer.paths.poll(now) {
            self.apply_path(now, id, action);
        }
    }

    /// Client: a ProbeAck from client peer `id`.
    pub(super) fn on_path_ack(
        &mut self,
        now: Instant,
        id: PeerId,
        seq: u32,
        src: Source,
    ) -> Result<(), DropReason> {
        let Source::Addr(from) = src else {
            return Err(DropReason::BadFrame);
        };
        let peer = self.peers.get_mut(&id).ok_or(DropReason::RelayNoPeer)?;
        if let Some(action) = peer.paths.on_ack(now, seq, from) {
            self.apply_path(now, id, action);
        }
        Ok(())
    }

    /// Client: an authentic message from client peer `id` came straight from `from`. Data:
    /// the peer validated a path from its side, or moved. A `probe`: a path that works at
    /// least one way, taken only while there is none (see [`PathSet::on_direct_probe`]).
    pub(super) fn on_direct_message(
        &mut self,
        now: Instant,
        id: PeerId,
        from: Remote,
        probe: bool,
    ) {
        let RoleState::Client(c) = &self.role else {
            return;
        };
        if !c.p2p || from.transport != Transport::Udp || self.inside_overlay(from.addr.ip()) {
            // (From an overlay address or a subnet routed into the overlay: it came
            // through the tunnel itself, and a path there would carry the tunnel in itself.)
            return;
        }
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let action = if probe {
            peer.paths.on_direct_probe(now, from)
        } else {
            peer.paths.on_direct_data(now, from)
        };
        if let Some(action) = action {
            self.apply_path(now, id, action);
        }
    }

    fn apply_path(&mut self, now: Instant, id: PeerId, action: PathAction) {
        match action {
            PathAction::Probe { seq, to, ttl } => {
                self.send_frame_on(
                    now,
                    id,
                    Path::Direct(Some(to)),
                    &Frame::Probe { seq, pad: 0 },
                    ttl,
                );
            }
            PathAction::UseDirect(to, why) => self.use_path(now, id, Path::Direct(Some(to)), why),
            PathAction::UseRelay(why) => self.use_path(now, id, Path::Relay(PeerId::HUB), why),
        }
        self.deadline_dirty = true;
    }

    /// Switches `id` to `path`; the session, its counters and FEC carry over unchanged.
    pub(super) fn use_path(&mut self, now: Instant, id: PeerId, path: Path, why: &'static str) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if peer.path == path {
            return;
        }
        let from = describe_path(peer.path, &peer.paths);
        peer.path = path;
        peer.path_changed = Some((now, why));
        let to = describe_path(path, &peer.paths);
        tracing::info!(peer = id.0, from = %from, to = %to, "path changed: {why}");
    }

    /// Hub: a client's LAN candidates.
    pub(super) fn on_candidates(
        &mut self,
        id: PeerId,
        list: Vec<SocketAddr>,
    ) -> Result<(), DropReason> {
        let RoleState::Hub(hub) = &mut self.role else {
            return Err(DropReason::BadFrame);
        };
        // Only what can be a LAN endpoint: private, shared or unique-local space. A member
        // listing public addresses (a third party's) would have every other client probe
        // them; its public endpoint is the one the hub observes.
        let mut list: Vec<SocketAddr> = list
            .into_iter()
            .filter(|a| path::usable_local(*a) && path::private(a.ip()))
            .collect();
        list.truncate(MAX_LAN_CANDIDATES);
        hub.locals.insert(id, list);
        Ok(())
    }

    /// Hub: client `id` asks to punch towards `node`: both get the other's candidates now.
    pub(super) fn on_punch_request(
        &mut self,
        now: Instant,
        id: PeerId,
        node: u32,
    ) -> Result<(), DropReason> {
        let RoleState::Hub(hub) = &mut self.role else {
            return Err(DropReason::BadFrame);
        };
        if hub.cfg.isolation {
            return Err(DropReason::Isolation);
        }
        if hub
            .punch_asked
            .get(&id)
            .is_some_and(|t| now.saturating_duration_since(*t) < PUNCH_REQUEST_INTERVAL)
        {
            return Err(DropReason::RateLimited);
        }
        hub.punch_asked.insert(id, now);
        let other = PeerId(node);
        if other == id || other == PeerId::HUB || !self.ready(now, other) {
            return Err(DropReason::RelayNoPeer);
        }
        let (mine, theirs) = (self.candidates_of(id), self.candidates_of(other));
        tracing::debug!(a = id.0, b = node, "coordinating a punch");
        self.send_frame(
            now,
            id,
            &Frame::Punch {
                node,
                candidates: theirs,
            },
        );
        self.send_frame(
            now,
            other,
            &Frame::Punch {
                node: id.0,
                candidates: mine,
            },
        );
        Ok(())
    }

    /// Hub: where client `id` may be reached: its LAN candidates, then the UDP endpoint we
    /// see it at.
    fn candidates_of(&self, id: PeerId) -> Vec<Candidate> {
        let RoleState::Hub(hub) = &self.role else {
            return Vec::new();
        };
        let mut out: Vec<Candidate> = hub
            .locals
            .get(&id)
            .into_iter()
            .flatten()
            .map(|&addr| Candidate {
                kind: CandidateKind::Local,
                addr,
            })
            .collect();
        if let Some(Path::Direct(Some(r))) = self.peers.get(&id).map(|p| p.path)
            && r.transport == Transport::Udp
        {
            out.push(Candidate {
                kind: CandidateKind::Reflexive,
                addr: r.addr,
            });
        }
        out.truncate(MAX_CANDIDATES);
        out
    }

    /// Hub: tells client `id` the UDP endpoint its traffic comes from.
    pub(super) fn send_observed(&mut self, now: Instant, id: PeerId) {
        if let Some(Path::Direct(Some(r))) = self.peers.get(&id).map(|p| p.path)
            && r.transport == Transport::Udp
        {
            self.send_frame(now, id, &Frame::Observed(r.addr));
        }
    }

    /// Client: the hub's view of our UDP endpoint.
    pub(super) fn on_observed(&mut self, id: PeerId, addr: SocketAddr) -> Result<(), DropReason> {
        match &mut self.role {
            RoleState::Client(c) if id == PeerId::HUB => {
                if c.reflexive != Some(addr) {
                    tracing::debug!(%addr, "the server sees us at this UDP endpoint");
                }
                c.reflexive = Some(addr);
                Ok(())
            }
            _ => Err(DropReason::BadFrame),
        }
    }
}

/// `relay via node N`, `direct A`, `lan A`, for logs.
fn describe_path(p: Path, paths: &PathSet) -> String {
    match p {
        Path::Relay(via) => format!("relay via node {}", via.0),
        Path::Direct(Some(r)) => format!("{} {}", paths.kind(), r.addr),
        Path::Direct(None) => "none".to_owned(),
    }
}
