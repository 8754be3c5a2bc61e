//! Relaying, for any role: passing relay frames on towards their destination.
//!
//! A relay frame travels inside the session of each hop: the sender seals it for its first
//! hop, and every relay opens it (hop by hop), takes one hop off the limit the sender set,
//! and re-seals it in place for the next hop. The inner message stays sealed end to end:
//! no relay can read or forge it, and the destination checks the origin the frame claims
//! against the inner session's keys.
//!
//! ```text
//!   A ──(A⇄X: Relay{dest B, origin A, hops 3})──▶ X ──(X⇄hub: hops 2)──▶ hub ──(hub⇄B: hops 1)──▶ B
//! ```
//!
//! Routes are local decisions. The hub forwards on the path it has to the destination (a
//! client it reaches through another client, too). A client with mesh relaying on forwards
//! to the destination when it has a direct path to it, and to the hub otherwise; it never
//! sends a frame back where it came from. The hop limit ends any loop that remains.

use core::ops::Range;
use std::time::Instant;

use culvert_wire::frame::{self, RELAY_HEADER_LEN};
use culvert_wire::message::{DATA_HEADER_LEN, MessageType, TAG_LEN};

use super::{DatagramOutcome, Endpoint, RoleState, Transmit};
use crate::peer::{Path, PeerId, Source};
use crate::stats::DropReason;

/// The hop limit of the relay frames the hub sends.
const HUB_MAX_HOPS: u8 = 3;

impl Endpoint {
    /// This node's id as the others know it: 0 for the hub, the id the hub gave a client
    /// (none before its first join).
    pub(super) fn own_node(&self) -> Option<PeerId> {
        match &self.role {
            RoleState::Hub(_) => Some(PeerId::HUB),
            RoleState::Client(c) => c.node.map(PeerId),
        }
    }

    /// The hop limit our relay frames start with.
    fn max_hops(&self) -> u8 {
        match &self.role {
            RoleState::Hub(_) => HUB_MAX_HOPS,
            RoleState::Client(c) => c.mesh.max_hops,
        }
    }

    /// The neighbour a message for `id` is sealed to first: `id` itself on a direct path,
    /// else the relay its path names, followed while relays are themselves relayed (a
    /// client that reaches the hub through another client). `None`: no way there now.
    pub(super) fn first_hop(&self, id: PeerId) -> Option<PeerId> {
        let mut at = id;
        for _ in 0..=self.peers.len().min(usize::from(u8::MAX)) {
            match self.peers.get(&at)?.path {
                Path::Direct(Some(_)) => return Some(at),
                Path::Direct(None) => return None,
                Path::Relay(via) if via == id => return None,
                Path::Relay(via) => at = via,
            }
        }
        None
    }

    /// Writes a relay frame header for `dest` in front of the inner message at `at +
    /// RELAY_HEADER_LEN..`, and seals the frame for the first hop towards `via`.
    pub(super) fn seal_relayed(
        &mut self,
        now: Instant,
        dest: PeerId,
        via: PeerId,
        buf: &mut [u8],
        at: usize,
        len: usize,
    ) -> Result<Transmit, DropReason> {
        let origin = self.own_node().ok_or(DropReason::NoSession)?;
        let hop = self.first_hop(via).ok_or(DropReason::NoRoute)?;
        let header: &mut [u8; RELAY_HEADER_LEN] = (&mut buf[at..at + RELAY_HEADER_LEN])
            .try_into()
            .expect("a slice of RELAY_HEADER_LEN bytes");
        frame::emit_relay_header(header, dest.0, origin.0, self.max_hops());
        self.wrap_for(now, hop, buf, at, len + RELAY_HEADER_LEN)
    }

    /// Attack tests only: sends `message` towards node `dest` in a relay frame that claims
    /// `origin`, sealed for neighbour `via` (or the first hop towards it) as a member can
    /// build it with its own sessions. What a neighbour may forward is checked by the
    /// receiver ([`Endpoint::on_relay`]).
    #[doc(hidden)]
    pub fn forge_relay(&mut self, now: Instant, via: u32, dest: u32, origin: u32, message: &[u8]) {
        let at = DATA_HEADER_LEN + RELAY_HEADER_LEN;
        let mut buf = vec![0u8; at + message.len() + TAG_LEN];
        buf[at..at + message.len()].copy_from_slice(message);
        let header: &mut [u8; RELAY_HEADER_LEN] = (&mut buf[DATA_HEADER_LEN..at])
            .try_into()
            .expect("a slice of RELAY_HEADER_LEN bytes");
        frame::emit_relay_header(header, dest, origin, self.max_hops());
        if let Some(hop) = self.first_hop(PeerId(via))
            && let Ok(t) = self.wrap_for(
                now,
                hop,
                &mut buf,
                DATA_HEADER_LEN,
                message.len() + RELAY_HEADER_LEN,
            )
        {
            self.push_owned(t.to, buf, t.range);
        }
    }

    /// A relay frame from the neighbour `from` (whose session it opened in, and which sent
    /// it over a direct path): ours to handle, or to pass on.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_relay(
        &mut self,
        now: Instant,
        from: PeerId,
        dest: PeerId,
        origin: PeerId,
        buf: &mut [u8],
        message: Range<usize>,
        plain: Range<usize>,
    ) -> DatagramOutcome {
        let own = self.own_node();
        if Some(origin) == own {
            // Our own message came back: a loop.
            return DatagramOutcome::Dropped(self.count_drop(DropReason::RelayNoPeer, Some(from)));
        }
        let inner = plain.start + RELAY_HEADER_LEN..plain.end;
        if !self.may_speak_for(from, origin, dest, &buf[inner.clone()]) {
            return DatagramOutcome::Dropped(self.count_drop(DropReason::RelayOrigin, Some(from)));
        }
        if Some(dest) == own {
            let src = Source::Relay {
                node: origin,
                via: from,
            };
            return self.handle_message(now, src, buf, inner);
        }
        match self.forward(now, from, dest, buf, message, plain) {
            Ok(t) => DatagramOutcome::Send(t),
            Err(r) => DatagramOutcome::Dropped(self.count_drop(r, Some(from))),
        }
    }

    /// Hub: whether neighbour `from` may pass on a frame that claims `origin`. Only its
    /// own, and those of a client the hub reaches through it (a detour). The first data
    /// message of a new detour proves its origin itself (it must open in the origin's
    /// session with us), and the hub follows it there. Anything else is a member
    /// speaking for another: its message 1s would claim that node's key from a source
    /// the victim's own handshakes share (finding 2 of the hardening review). Clients take
    /// message 1 only through their way to the hub ([`Endpoint::handle_init`]), and every
    /// other relayed message is sealed end to end by its origin.
    fn may_speak_for(&self, from: PeerId, origin: PeerId, dest: PeerId, inner: &[u8]) -> bool {
        if from == origin || !matches!(self.role, RoleState::Hub(_)) {
            return true;
        }
        let detoured = self
            .peers
            .get(&origin)
            .is_some_and(|p| p.path == Path::Relay(from));
        let proves_itself = dest == PeerId::HUB && MessageType::of(inner) == Ok(MessageType::Data);
        detoured || proves_itself
    }

    /// Passes a relay frame for `dest` on to the next hop, re-sealed in place.
    fn forward(
        &mut self,
        now: Instant,
        from: PeerId,
        dest: PeerId,
        buf: &mut [u8],
        message: Range<usize>,
        plain: Range<usize>,
    ) -> Result<Transmit, DropReason> {
        match &self.role {
            RoleState::Hub(h) if h.cfg.isolation => return Err(DropReason::Isolation),
            RoleState::Client(c) if !c.mesh.enabled => return Err(DropReason::RelayDisabled),
            _ => {}
        }
        let next = match (&self.role, self.peers.contains_key(&dest)) {
            (_, true) => self.first_hop(dest),
            // A client forwards what it cannot place to the hub, which knows every node.
            (RoleState::Client(_), false) => self.first_hop(PeerId::HUB),
            (RoleState::Hub(_), false) => None,
        };
        let next = next
            .filter(|n| *n != from && self.ready(now, *n))
            .ok_or(DropReason::RelayNoPeer)?;
        let max = self.max_hops();
        if !frame::take_relay_hop(&mut buf[plain.clone()], max) {
            return Err(DropReason::RelayHopLimit);
        }
        if let RoleState::Client(c) = &mut self.role
            && !c.relay_budget.take(now, message.len())
        {
            return Err(DropReason::RelayRateLimited);
        }
        let peer = self.peers.get_mut(&next).ok_or(DropReason::RelayNoPeer)?;
        let session = peer
            .sessions
            .current
            .as_mut()
            .ok_or(DropReason::NoSession)?;
        let range = session.seal(buf, plain.start - DATA_HEADER_LEN, plain.len())?;
        debug_assert_eq!(range, message);
        let Path::Direct(Some(to)) = peer.path else {
            return Err(DropReason::RelayNoPeer);
        };
        peer.last_tx = Some(now);
        self.relayed.tx_packets += 1;
        self.relayed.tx_bytes += range.len() as u64;
        self.fec_sealed(now, next, to, &buf[range.clone()]);
        Ok(Transmit { to, range })
    }
}
