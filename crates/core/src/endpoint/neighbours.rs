//! Who reaches whom: clients report the neighbours they relay for, the hub passes the
//! reports on, and a client relayed by the hub tries a neighbour that reaches its peer
//! directly instead ([`crate::via`]).
//!
//! ```text
//!   C ──Neighbours{B, ...}──▶ hub ──Neighbours{node C: B, ...}──▶ A
//!   A ──Probe (A⇄B) via C──▶ C ──▶ B ──ProbeAck via C──▶ C ──▶ A:  A sends to B via C
//! ```
//!
//! A report is only a hint: the probe through the neighbour, sealed end to end, proves
//! that the path delivers before anything moves onto it.

use std::time::{Duration, Instant};

use culvert_wire::frame::{Frame, MAX_NEIGHBOURS};

use super::hub::NeighbourReport;
use super::{Endpoint, RoleState};
use crate::peer::{Path, PeerId};
use crate::stats::DropReason;
use crate::via::ViaAction;

/// A client reports a change of its neighbours at most this often.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// ... and repeats an unchanged report this often (a lost one is not lost for long).
const REPORT_REFRESH: Duration = Duration::from_secs(30);
/// The hub takes at most one report per client in this time.
const REPORT_MIN_GAP: Duration = Duration::from_millis(500);
/// The hub passes a client's changed report on to the others at most this often: each
/// costs it a frame to every other client (hardening finding 13).
pub(super) const FANOUT_GAP: Duration = Duration::from_secs(5);
/// Most reports a client keeps (one per other client; a bound whatever the hub sends).
const MAX_REACH: usize = 4096;
/// A padded probe's plaintext before its padding: type, sequence number, padding length.
const VIA_PROBE_HEADER: u16 = 1 + 4 + 2;

impl Endpoint {
    /// Client timer: tells the hub which clients we reach directly, when that changed.
    pub(super) fn report_neighbours(&mut self, now: Instant) {
        let RoleState::Client(c) = &self.role else {
            return;
        };
        if !c.mesh.enabled || !c.p2p || c.isolation || c.node.is_none() {
            return;
        }
        if c.next_report.is_some_and(|t| now < t) {
            return;
        }
        // Looked at once per interval, whether or not it changed: the timer runs far more
        // often than neighbours come and go.
        if let RoleState::Client(c) = &mut self.role {
            c.next_report = Some(now + REPORT_INTERVAL);
        }
        let mut nodes: Vec<u32> = self
            .peers
            .keys()
            .filter(|id| self.neighbour_alive(now, **id))
            .map(|id| id.0)
            .collect();
        nodes.truncate(MAX_NEIGHBOURS);
        let RoleState::Client(c) = &mut self.role else {
            return;
        };
        let stale = c
            .reported_at
            .is_none_or(|t| now.saturating_duration_since(t) >= REPORT_REFRESH);
        if c.reported.as_ref() == Some(&nodes) && !stale {
            return;
        }
        c.reported_at = Some(now);
        c.reported = Some(nodes.clone());
        self.send_frame(now, PeerId::HUB, &Frame::Neighbours { node: 0, nodes });
    }

    /// A Neighbours frame from `from`: a client's own report (on the hub), or the hub
    /// passing on another client's (on a client).
    pub(super) fn on_neighbours(
        &mut self,
        now: Instant,
        from: PeerId,
        node: u32,
        nodes: Vec<u32>,
    ) -> Result<(), DropReason> {
        match &mut self.role {
            RoleState::Hub(_) => self.hub_on_neighbours(now, from, nodes),
            RoleState::Client(c) if from == PeerId::HUB => {
                let reporter = PeerId(node);
                // (A report may come before the directory that lists its node.)
                let room = c.reach.len() < MAX_REACH || c.reach.contains_key(&reporter);
                if reporter == PeerId::HUB || c.node == Some(node) || !room {
                    return Err(DropReason::BadFrame);
                }
                let mut list: Vec<PeerId> = nodes.into_iter().map(PeerId).collect();
                list.sort_unstable();
                list.dedup();
                c.reach.insert(reporter, list);
                Ok(())
            }
            RoleState::Client(_) => Err(DropReason::BadFrame),
        }
    }

    /// Hub: client `id` reports its neighbours; the others hear of it when it changed, at
    /// once or, within [`FANOUT_GAP`] of the last time they heard, when that has passed.
    fn hub_on_neighbours(
        &mut self,
        now: Instant,
        id: PeerId,
        nodes: Vec<u32>,
    ) -> Result<(), DropReason> {
        let mut list: Vec<u32> = nodes
            .into_iter()
            .filter(|n| *n != id.0 && self.peers.contains_key(&PeerId(*n)) && *n != 0)
            .collect();
        list.sort_unstable();
        list.dedup();
        let RoleState::Hub(hub) = &mut self.role else {
            return Ok(());
        };
        let previous = hub.neighbours.get(&id);
        if previous.is_some_and(|r| now.saturating_duration_since(r.taken) < REPORT_MIN_GAP) {
            return Err(DropReason::RateLimited);
        }
        let changed = previous.is_none_or(|r| r.list != list);
        let told = previous.and_then(|r| r.told);
        let untold = previous.is_some_and(|r| r.untold) || changed;
        hub.neighbours.insert(
            id,
            NeighbourReport {
                list,
                taken: now,
                told,
                untold,
            },
        );
        if untold {
            self.tell_neighbours(now);
        }
        Ok(())
    }

    /// Hub: passes on the changed reports whose [`FANOUT_GAP`] has passed.
    pub(super) fn tell_neighbours(&mut self, now: Instant) {
        let RoleState::Hub(hub) = &mut self.role else {
            return;
        };
        let isolation = hub.cfg.isolation;
        let due: Vec<(PeerId, Vec<u32>)> = hub
            .neighbours
            .iter_mut()
            .filter(|(_, r)| {
                r.untold
                    && r.told
                        .is_none_or(|t| now.saturating_duration_since(t) >= FANOUT_GAP)
            })
            .map(|(id, r)| {
                r.untold = false;
                r.told = Some(now);
                (*id, r.list.clone())
            })
            .collect();
        if isolation {
            return;
        }
        for (id, list) in due {
            self.deadline_dirty = true;
            let frame = Frame::Neighbours {
                node: id.0,
                nodes: list,
            };
            let others: Vec<PeerId> = self
                .peers
                .keys()
                .copied()
                .filter(|p| *p != id && self.ready(now, *p))
                .collect();
            for p in others {
                self.send_frame(now, p, &frame);
            }
        }
    }

    /// Hub: a client just connected; it hears every report so far.
    pub(super) fn send_all_neighbours(&mut self, now: Instant, to: PeerId) {
        let RoleState::Hub(hub) = &self.role else {
            return;
        };
        if hub.cfg.isolation {
            return;
        }
        let frames: Vec<Frame<'static>> = hub
            .neighbours
            .iter()
            .filter(|(id, r)| **id != to && !r.list.is_empty())
            .map(|(id, r)| Frame::Neighbours {
                node: id.0,
                nodes: r.list.clone(),
            })
            .collect();
        for f in frames {
            self.send_frame(now, to, &f);
        }
    }

    /// Client timer for peer `id`: find, probe, use or leave a client that relays to it.
    pub(super) fn via_timers(&mut self, now: Instant, id: PeerId) {
        let Some(peer) = self.peers.get(&id) else {
            return;
        };
        let relayed = matches!(peer.path, Path::Relay(_));
        let wanted = peer.sessions.current.is_some()
            && peer
                .last_tx
                .is_some_and(|t| now.saturating_duration_since(t) < self.cfg.timing.keepalive);
        let busy = peer.via.via().is_some() || peer.via.next_deadline().is_some_and(|t| t > now);
        if !relayed || (!wanted && !busy) {
            if let Some(p) = self.peers.get_mut(&id) {
                p.via.park(now);
            }
            return;
        }
        // Out of the peer for the poll, so that its callbacks may look at every peer; they
        // run only when the state needs them.
        let mut via = self
            .peers
            .get_mut(&id)
            .map(|p| core::mem::take(&mut p.via))
            .unwrap_or_default();
        let actions = via.poll(
            now,
            || self.best_via(now, id),
            |n| self.neighbour_alive(now, n),
        );
        if let Some(p) = self.peers.get_mut(&id) {
            p.via = via;
        }
        for a in actions {
            self.apply_via(now, id, a);
        }
    }

    /// The neighbour through which to try `id`: reached directly, and reporting `id` among
    /// its own direct neighbours; the lowest RTT first.
    fn best_via(&self, now: Instant, id: PeerId) -> Option<PeerId> {
        let RoleState::Client(c) = &self.role else {
            return None;
        };
        c.reach
            .iter()
            .filter(|(via, list)| **via != id && list.contains(&id))
            .map(|(via, _)| *via)
            .filter(|via| self.neighbour_alive(now, *via))
            .min_by_key(|via| {
                self.peers
                    .get(via)
                    .and_then(|p| p.paths.rtt())
                    .unwrap_or(Duration::MAX)
            })
    }

    /// A ProbeAck from `id` that came through `via`.
    pub(super) fn on_via_ack(&mut self, now: Instant, id: PeerId, via: PeerId, seq: u32) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if let Some(a) = peer.via.on_ack(now, via, seq) {
            self.apply_via(now, id, a);
        }
    }

    fn apply_via(&mut self, now: Instant, id: PeerId, action: ViaAction) {
        match action {
            ViaAction::Probe { via, seq } => {
                // As large as the peer's data: a relay that passes small frames and drops
                // data fails the probe instead of staying in use (hardening finding 8).
                let size = self.packet_limit(id).or(self.cfg.mtu).unwrap_or(1280);
                let pad = size.saturating_sub(VIA_PROBE_HEADER);
                let probe = Frame::Probe { seq, pad };
                self.send_frame_on(now, id, Path::Relay(via), &probe, None);
            }
            ViaAction::Use(via) => self.use_path(
                now,
                id,
                Path::Relay(via),
                "a client that reaches the peer directly relays for us",
            ),
            ViaAction::Leave(why) => {
                if self
                    .peers
                    .get(&id)
                    .is_some_and(|p| p.path != Path::Relay(PeerId::HUB))
                {
                    self.use_path(now, id, Path::Relay(PeerId::HUB), why);
                }
            }
        }
        self.deadline_dirty = true;
    }
}
