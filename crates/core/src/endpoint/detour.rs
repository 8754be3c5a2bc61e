//! A client that loses its own path to the hub reaches it through another client.
//!
//! When traffic to the hub goes unanswered and nothing has come from it for a while, but
//! another client answers on a direct path, the client moves its hub path to a relay via
//! that neighbour: the hub session, and every peer relayed through the hub, carry on over
//! it (the neighbour forwards the sealed frames, see [`super::relay`]). The hub follows on
//! the first authentic message that arrives that way. Meanwhile the client probes the
//! hub's own address, and returns to it on the first answer.
//!
//! ```text
//!   A ─╳─ hub          A ──▶ X ──▶ hub       probe A ──▶ hub answered: A ──▶ hub
//! ```

use std::time::{Duration, Instant};

use culvert_wire::frame::Frame;

use super::{Endpoint, RoleState};
use crate::peer::{Path, PeerId, Remote};

/// Unanswered this long (and silent for [`SILENT_AFTER`]), the hub is reached through a
/// neighbour. Long enough for `auto` to try FakeTCP first, which answers the same way.
const DETOUR_AFTER: Duration = Duration::from_secs(2);
/// Nothing heard from the hub for this long, either.
const SILENT_AFTER: Duration = Duration::from_secs(3);
/// While detoured, the hub's own address is probed this often.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// The relay a client reaches the hub through, and how it gets back.
#[derive(Debug)]
pub(super) struct Detour {
    via: PeerId,
    since: Instant,
    /// Neighbours tried since the direct path failed; each gets one chance.
    tried: Vec<PeerId>,
    /// The path we left: where the probes go.
    direct: Remote,
    probe_seq: u32,
    probe_out: Option<u32>,
    next_probe: Instant,
}

impl Detour {
    pub(super) fn next_deadline(&self) -> Instant {
        self.next_probe
    }
}

impl Endpoint {
    /// Client timer: starts, moves or ends a detour, and probes the way back.
    pub(super) fn detour_timers(&mut self, now: Instant) {
        let Some(hub) = self.peers.get(&PeerId::HUB) else {
            return;
        };
        let unanswered = hub
            .unanswered_since
            .is_some_and(|t| now.saturating_duration_since(t) >= DETOUR_AFTER);
        let heard = hub.last_rx.max(hub.last_handshake);
        let silent = heard.is_none_or(|t| now.saturating_duration_since(t) >= SILENT_AFTER);
        let path = hub.path;
        let RoleState::Client(c) = &self.role else {
            return;
        };
        let relay_lost = c
            .detour
            .as_ref()
            .is_some_and(|d| !self.neighbour_alive(now, d.via));
        let RoleState::Client(c) = &mut self.role else {
            return;
        };
        match (&mut c.detour, path) {
            (None, Path::Direct(Some(direct))) if unanswered && silent => {
                self.detour_next(now, direct, Vec::new());
            }
            (Some(d), _) if unanswered || relay_lost => {
                let tried = core::mem::take(&mut d.tried);
                let direct = d.direct;
                self.detour_next(now, direct, tried);
            }
            (Some(d), _) if d.next_probe <= now => {
                d.probe_seq = d.probe_seq.wrapping_add(1);
                d.probe_out = Some(d.probe_seq);
                d.next_probe = now + PROBE_INTERVAL;
                let (seq, to) = (d.probe_seq, d.direct);
                let to = Path::Direct(Some(to));
                self.send_frame_on(now, PeerId::HUB, to, &Frame::Probe { seq, pad: 0 }, None);
            }
            _ => {}
        }
    }

    /// Moves the hub path to the best neighbour not tried yet, or back to `direct` when
    /// none is left.
    fn detour_next(&mut self, now: Instant, direct: Remote, mut tried: Vec<PeerId>) {
        let best = self
            .peers
            .values()
            .filter(|p| !tried.contains(&p.id) && self.neighbour_alive(now, p.id))
            .min_by_key(|p| p.paths.rtt().unwrap_or(Duration::MAX))
            .map(|p| p.id);
        let Some(via) = best else {
            if let RoleState::Client(c) = &mut self.role
                && c.detour.take().is_some()
            {
                tracing::warn!("no other client relays to the server; trying it directly again");
                self.set_hub_path(now, Path::Direct(Some(direct)));
            }
            return;
        };
        tried.push(via);
        tracing::warn!(
            via = via.0,
            "the server does not answer; reaching it through another client"
        );
        if let RoleState::Client(c) = &mut self.role {
            c.detour = Some(Box::new(Detour {
                via,
                since: now,
                tried,
                direct,
                probe_seq: c.detour.as_ref().map_or(0, |d| d.probe_seq),
                probe_out: None,
                next_probe: now + PROBE_INTERVAL,
            }));
        }
        self.set_hub_path(now, Path::Relay(via));
    }

    /// A probe of the hub's own address came back: leave the detour.
    pub(super) fn on_detour_probe_ack(&mut self, now: Instant, seq: u32) -> bool {
        let RoleState::Client(c) = &mut self.role else {
            return false;
        };
        let Some(d) = c.detour.take_if(|d| d.probe_out == Some(seq)) else {
            return false;
        };
        tracing::info!(
            via = d.via.0,
            detoured_s = now.saturating_duration_since(d.since).as_secs(),
            "the server answers directly again"
        );
        self.set_hub_path(now, Path::Direct(Some(d.direct)));
        true
    }

    /// The hub's own address while detoured: handshakes go there too, so that a hub that
    /// restarted (and answers no probe of a session it forgot) is found again.
    pub(super) fn detour_direct(&self) -> Option<Remote> {
        match &self.role {
            RoleState::Client(c) => c.detour.as_ref().map(|d| d.direct),
            RoleState::Hub(_) => None,
        }
    }

    /// An authentic message from the hub arrived straight from `from`: the direct path
    /// works again, so a detour ends.
    pub(super) fn hub_heard_directly(&mut self, now: Instant, from: Remote) {
        let RoleState::Client(c) = &mut self.role else {
            return;
        };
        let Some(d) = c.detour.take_if(|d| d.direct.addr == from.addr) else {
            return;
        };
        tracing::info!(
            via = d.via.0,
            detoured_s = now.saturating_duration_since(d.since).as_secs(),
            "the server answers directly again"
        );
        self.set_hub_path(now, Path::Direct(Some(from)));
    }

    /// Whether `id` is a client we reach directly with a live session (a relay candidate).
    pub(super) fn neighbour_alive(&self, now: Instant, id: PeerId) -> bool {
        id != PeerId::HUB
            && self
                .peers
                .get(&id)
                .is_some_and(|p| matches!(p.path, Path::Direct(Some(_))))
            && self.ready(now, id)
    }

    fn set_hub_path(&mut self, now: Instant, path: Path) {
        let why = match path {
            Path::Relay(_) => "the server does not answer directly",
            Path::Direct(_) => "the server answers directly",
        };
        if let Some(hub) = self.peers.get_mut(&PeerId::HUB) {
            hub.path = path;
            hub.unanswered_since = None;
            hub.path_changed = Some((now, why));
        }
        self.deadline_dirty = true;
        // Tells the hub where we are now, and measures the new path.
        self.send_ping(now);
    }
}
