//! How packets reach a peer, and the direct paths worth trying.
//!
//! A client reaches another client through a relay (the hub) until a direct path proves
//! itself. When traffic flows and p2p is on, the client asks the hub to coordinate a punch;
//! the hub hands both sides each other's candidates at the same moment, and each probes
//! every candidate — LAN first — with Probe frames sealed in their end-to-end session, so
//! only the real peer can answer. The first candidate that answers becomes the direct path;
//! a LAN candidate that answers later replaces a public one. While direct, a probe a second
//! measures the RTT and keeps NAT mappings open; [`DEAD_AFTER`] without an answer falls back
//! to the relay, and the next attempt waits with backoff. [`PathSet`] decides; the endpoint
//! sends what it asks and switches the peer's [`Path`].
//!
//! **Why the first probes have a low TTL.** A probe that reaches the peer's NAT before the
//! peer has sent anything towards us is refused — and a Linux NAT remembers it: conntrack
//! keeps the refused flow for 30 s, and when the peer then sends to us, its NAT must give
//! that flow another public port, which our NAT refuses in turn. Both sides punching at the
//! same moment does not prevent it (the first probe always wins the race by a little). So
//! each side ramps the TTL of its probes, [`RAMP_TTL_START`] and one more each round: the
//! first ones die between the two NATs, after opening our own; by the time ours reach the
//! peer's NAT, the peer's have opened it. A node without a NAT (its reflexive endpoint is
//! its own) waits through the ramp instead, since it has nothing to open.

use core::net::SocketAddr;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use culvert_wire::frame::{Candidate, CandidateKind};

use crate::peer::{PeerId, Remote};

/// How packets reach a peer now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Straight to an underlay endpoint (`None` until one is known).
    Direct(Option<Remote>),
    /// Inside relay frames through this node (the hub), end-to-end encrypted.
    Relay(PeerId),
}

/// Probes go out this often while punching.
pub const PUNCH_INTERVAL: Duration = Duration::from_millis(100);
/// A punch gives up after this long without an answer.
pub const PUNCH_FOR: Duration = Duration::from_secs(3);
/// A direct path is probed this often (RTT, NAT keepalive).
pub const KEEPALIVE: Duration = Duration::from_secs(1);
/// A direct path without any answer this long is dead: back to the relay.
pub const DEAD_AFTER: Duration = Duration::from_secs(2);
/// First wait before trying again after a failed punch; doubles up to [`RETRY_MAX`].
pub const RETRY_MIN: Duration = Duration::from_secs(2);
/// Longest wait between two punches towards one peer.
pub const RETRY_MAX: Duration = Duration::from_secs(120);
/// A punch request the hub did not answer counts as failed after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// TTL of the first round of punch probes: through our own NAT, not much further.
pub const RAMP_TTL_START: u8 = 2;
/// Rounds of rising TTL before probes go out with the default one.
pub const RAMP_ROUNDS: u32 = 5;

/// Why a peer is (still) relayed, for status and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayReason {
    /// No traffic asked for a direct path yet.
    NotTried,
    /// p2p is off in this node's configuration.
    Disabled,
    /// The hub isolates clients (no direct paths either).
    Isolation,
    /// A punch was requested; waiting for the hub.
    Requested,
    /// Probing the peer's candidates now.
    Punching,
    /// The hub knows no endpoint of the peer (it reaches the hub over FakeTCP only).
    NoCandidates,
    /// No candidate answered within [`PUNCH_FOR`], and neither NAT is seen changing ports
    /// (a firewall between them, or filtering).
    PunchTimedOut,
    /// No candidate answered, and both NATs change ports per destination (symmetric): what
    /// either side probes is not where the other's packets come from.
    SymmetricBoth,
    /// No candidate answered, and one side's NAT changes ports per destination while the
    /// other filters (port prediction is not tried yet).
    SymmetricOne,
    /// The direct path went silent; back on the relay.
    DirectLost,
}

impl RelayReason {
    /// For status and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotTried => "not tried yet",
            Self::Disabled => "p2p disabled by config",
            Self::Isolation => "the hub isolates clients",
            Self::Requested => "punch requested",
            Self::Punching => "punching",
            Self::NoCandidates => "no candidates (the peer has no UDP endpoint)",
            Self::PunchTimedOut => "punch timed out (a firewall or filtering between the peers?)",
            Self::SymmetricBoth => {
                "punch timed out: symmetric NAT on both sides (each changes ports per destination)"
            }
            Self::SymmetricOne => {
                "punch timed out: one side's NAT changes ports per destination (symmetric), \
                 the other filters"
            }
            Self::DirectLost => "direct path went silent",
        }
    }
}

/// What the endpoint must do for a peer's paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathAction {
    /// Send a Probe frame with `seq` to `to`.
    Probe {
        /// The probe's sequence number.
        seq: u32,
        /// Where.
        to: Remote,
        /// The IP TTL to send it with, when not the default.
        ttl: Option<u8>,
    },
    /// Switch the peer to this direct path.
    UseDirect(Remote, &'static str),
    /// Switch the peer back to its relay.
    UseRelay(&'static str),
}

/// The validated direct path.
#[derive(Debug, Clone)]
struct Direct {
    remote: Remote,
    kind: CandidateKind,
    rtt: Option<Duration>,
    last_ack: Instant,
    next_probe: Instant,
    sent: u32,
    acked: u32,
}

/// A punch under way.
#[derive(Debug, Clone)]
struct Punch {
    candidates: Vec<Candidate>,
    started: Instant,
    next: Instant,
    /// Rounds sent so far (the TTL ramp).
    round: u32,
    /// Whether we are behind a NAT (else we wait through the ramp).
    behind_nat: bool,
    /// Which NATs are seen to change ports: ours, the peer's.
    ports_changed: (bool, bool),
}

/// The direct paths of one peer: candidates, probing, the validated path, backoff.
#[derive(Debug, Clone)]
pub struct PathSet {
    direct: Option<Direct>,
    punch: Option<Punch>,
    requested: Option<Instant>,
    failures: u32,
    retry_at: Option<Instant>,
    reason: RelayReason,
    /// Probes in flight: sequence number, target, sent at.
    probes: BTreeMap<u32, (Remote, Instant)>,
    next_seq: u32,
}

impl Default for PathSet {
    fn default() -> Self {
        Self {
            direct: None,
            punch: None,
            requested: None,
            failures: 0,
            retry_at: None,
            reason: RelayReason::NotTried,
            probes: BTreeMap::new(),
            next_seq: 1,
        }
    }
}

impl PathSet {
    /// Whether a punch should be requested now (traffic flows, nothing direct, not
    /// already trying, backoff over).
    pub fn wants_punch(&self, now: Instant) -> bool {
        self.direct.is_none()
            && self.punch.is_none()
            && self.requested.is_none()
            && self.retry_at.is_none_or(|t| t <= now)
    }

    /// The punch request went out.
    pub fn requested(&mut self, now: Instant) {
        self.requested = Some(now);
        self.reason = RelayReason::Requested;
    }

    /// Records why the peer stays relayed without trying (config, isolation).
    pub fn hold(&mut self, reason: RelayReason) {
        self.reason = reason;
    }

    /// The hub says: punch now, towards these candidates (LAN first). `behind_nat`: our
    /// own endpoint is translated (we ramp the TTL; without a NAT we wait through the ramp);
    /// `ports_changed`: our NAT gave our endpoint another port than our socket's.
    pub fn start(
        &mut self,
        now: Instant,
        mut candidates: Vec<Candidate>,
        behind_nat: bool,
        ports_changed: bool,
    ) {
        self.requested = None;
        if self.direct.is_some() {
            return;
        }
        // The peer's NAT changes ports if the hub sees it at a port none of its own
        // interface endpoints has (its LAN candidates carry its socket's port).
        let local_ports: Vec<u16> = candidates
            .iter()
            .filter(|c| c.kind == CandidateKind::Local)
            .map(|c| c.addr.port())
            .collect();
        let theirs = !local_ports.is_empty()
            && candidates.iter().any(|c| {
                c.kind == CandidateKind::Reflexive && !local_ports.contains(&c.addr.port())
            });
        // An interface address that is also the reflexive one is a public address, not a LAN.
        let public: Vec<SocketAddr> = candidates
            .iter()
            .filter(|c| c.kind == CandidateKind::Reflexive)
            .map(|c| c.addr)
            .collect();
        candidates.retain(|c| c.kind == CandidateKind::Reflexive || !public.contains(&c.addr));
        candidates.sort_by_key(|c| c.kind);
        candidates.dedup_by_key(|c| c.addr);
        if candidates.is_empty() {
            self.fail(now, RelayReason::NoCandidates);
            return;
        }
        self.reason = RelayReason::Punching;
        self.punch = Some(Punch {
            candidates,
            started: now,
            next: now,
            round: 0,
            behind_nat,
            ports_changed: (ports_changed, theirs),
        });
    }

    /// The timers: probes to send, a punch that timed out, a direct path that died.
    pub fn poll(&mut self, now: Instant) -> Vec<PathAction> {
        let mut out = Vec::new();
        if self
            .requested
            .is_some_and(|t| now.saturating_duration_since(t) >= REQUEST_TIMEOUT)
        {
            self.requested = None;
            self.fail(now, RelayReason::PunchTimedOut);
        }
        if let Some(p) = &self.punch {
            if now.saturating_duration_since(p.started) >= PUNCH_FOR {
                let reason = match p.ports_changed {
                    (true, true) => RelayReason::SymmetricBoth,
                    (true, false) | (false, true) => RelayReason::SymmetricOne,
                    (false, false) => RelayReason::PunchTimedOut,
                };
                self.punch = None;
                self.fail(now, reason);
            } else if p.next <= now {
                let ramping = p.round < RAMP_ROUNDS;
                let ttl = ramping.then(|| {
                    RAMP_TTL_START.saturating_add(u8::try_from(p.round).unwrap_or(u8::MAX))
                });
                let targets: Vec<(Remote, Option<u8>)> = p
                    .candidates
                    .iter()
                    .filter(|c| c.kind == CandidateKind::Local || p.behind_nat || !ramping)
                    .map(|c| {
                        // A LAN candidate needs no ramp: no NAT lies in between.
                        let t = if c.kind == CandidateKind::Local {
                            None
                        } else {
                            ttl
                        };
                        (Remote::udp(c.addr), t)
                    })
                    .collect();
                for (to, ttl) in targets {
                    let seq = self.probe(now, to);
                    out.push(PathAction::Probe { seq, to, ttl });
                }
                if let Some(p) = &mut self.punch {
                    p.next = now + PUNCH_INTERVAL;
                    p.round += 1;
                }
            }
        }
        if let Some(d) = &self.direct {
            if now.saturating_duration_since(d.last_ack) >= DEAD_AFTER {
                self.direct = None;
                self.fail(now, RelayReason::DirectLost);
                out.push(PathAction::UseRelay(RelayReason::DirectLost.as_str()));
            } else if d.next_probe <= now {
                let to = d.remote;
                let seq = self.probe(now, to);
                if let Some(d) = &mut self.direct {
                    d.next_probe = now + KEEPALIVE;
                    d.sent = d.sent.saturating_add(1);
                }
                out.push(PathAction::Probe { seq, to, ttl: None });
            }
        }
        // Forget probes nobody will answer any more.
        self.probes
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < DEAD_AFTER);
        out
    }

    /// A probe came back from `from`: a validated path, a better one, or a live one.
    pub fn on_ack(&mut self, now: Instant, seq: u32, from: Remote) -> Option<PathAction> {
        let (to, sent) = self.probes.remove(&seq)?;
        if to != from {
            return None;
        }
        let rtt = now.saturating_duration_since(sent);
        if let Some(d) = &mut self.direct
            && d.remote == from
        {
            d.last_ack = now;
            d.acked = d.acked.saturating_add(1);
            d.rtt = Some(d.rtt.map_or(rtt, |r| (r * 7 + rtt) / 8));
            return None;
        }
        let kind = self
            .punch
            .as_ref()
            .and_then(|p| p.candidates.iter().find(|c| c.addr == from.addr))
            .map_or(CandidateKind::Reflexive, |c| c.kind);
        let better = self.direct.as_ref().is_none_or(|d| kind < d.kind);
        if !better {
            return None;
        }
        let was_direct = self.direct.is_some();
        self.direct = Some(Direct {
            remote: from,
            kind,
            rtt: Some(rtt),
            last_ack: now,
            next_probe: now + KEEPALIVE,
            sent: 1,
            acked: 1,
        });
        self.failures = 0;
        self.retry_at = None;
        // Keep probing the rest of a punch briefly: a LAN candidate may still answer.
        if kind == CandidateKind::Local {
            self.punch = None;
        }
        let why = match (kind, was_direct) {
            (CandidateKind::Local, true) => "a LAN path answered",
            (CandidateKind::Local, false) => "a LAN candidate answered probes",
            (CandidateKind::Reflexive, _) => "the peer's public endpoint answered probes",
        };
        Some(PathAction::UseDirect(from, why))
    }

    /// The peer reached us directly with authentic data from `from` (it validated the
    /// path from its side): adopt it when we have nothing direct.
    pub fn on_direct_data(&mut self, now: Instant, from: Remote) -> Option<PathAction> {
        if let Some(d) = &mut self.direct {
            d.last_ack = now;
            if d.remote == from {
                return None;
            }
            // The peer moved (roaming, a NAT rebinding): follow it.
            d.remote = from;
            return Some(PathAction::UseDirect(from, "the peer moved"));
        }
        self.punch = None;
        self.requested = None;
        self.direct = Some(Direct {
            remote: from,
            kind: CandidateKind::Reflexive,
            rtt: None,
            last_ack: now,
            next_probe: now,
            sent: 0,
            acked: 0,
        });
        Some(PathAction::UseDirect(from, "the peer reached us directly"))
    }

    /// When [`PathSet::poll`] has work next.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.requested.map(|t| t + REQUEST_TIMEOUT),
            self.punch
                .as_ref()
                .map(|p| p.next.min(p.started + PUNCH_FOR)),
            self.direct
                .as_ref()
                .map(|d| d.next_probe.min(d.last_ack + DEAD_AFTER)),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// `lan`, `direct` or `relay`.
    pub fn kind(&self) -> &'static str {
        match self.direct.as_ref().map(|d| d.kind) {
            Some(CandidateKind::Local) => "lan",
            Some(CandidateKind::Reflexive) => "direct",
            None => "relay",
        }
    }

    /// Why the peer is relayed (meaningless while direct).
    pub fn reason(&self) -> RelayReason {
        self.reason
    }

    /// Smoothed RTT of the direct path.
    pub fn rtt(&self) -> Option<Duration> {
        self.direct.as_ref().and_then(|d| d.rtt)
    }

    /// Share of keepalive probes on the direct path that went unanswered.
    pub fn loss(&self) -> Option<f64> {
        let d = self.direct.as_ref()?;
        (d.sent > 0).then(|| 1.0 - f64::from(d.acked.min(d.sent)) / f64::from(d.sent))
    }

    fn probe(&mut self, now: Instant, to: Remote) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        self.probes.insert(seq, (to, now));
        seq
    }

    fn fail(&mut self, now: Instant, reason: RelayReason) {
        self.reason = reason;
        let wait = RETRY_MIN
            .saturating_mul(1 << self.failures.min(16))
            .min(RETRY_MAX);
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(now + wait);
    }
}

/// The endpoints a candidate list offers, for logs.
pub fn describe(candidates: &[Candidate]) -> String {
    candidates
        .iter()
        .map(|c| {
            let k = match c.kind {
                CandidateKind::Local => "lan",
                CandidateKind::Reflexive => "public",
            };
            format!("{k} {}", c.addr)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `addr` is usable as a LAN candidate (not loopback, link-local or unspecified).
pub fn usable_local(addr: SocketAddr) -> bool {
    let ip = addr.ip();
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || matches!(ip, core::net::IpAddr::V4(a) if a.is_link_local())
        || matches!(ip, core::net::IpAddr::V6(a) if (a.segments()[0] & 0xffc0) == 0xfe80))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(kind: CandidateKind, s: &str) -> Candidate {
        Candidate {
            kind,
            addr: s.parse().unwrap(),
        }
    }

    #[test]
    fn punch_validates_the_first_answer_and_prefers_lan() {
        let t = crate::test_epoch();
        let mut p = PathSet::default();
        assert!(p.wants_punch(t));
        p.requested(t);
        assert!(!p.wants_punch(t));
        p.start(
            t,
            vec![
                cand(CandidateKind::Reflexive, "203.0.113.5:4000"),
                cand(CandidateKind::Local, "192.168.1.5:4000"),
            ],
            true,
            false,
        );
        let probes = p.poll(t);
        assert_eq!(probes.len(), 2);
        let PathAction::Probe {
            seq: lan_seq,
            to,
            ttl: None,
        } = probes[0].clone()
        else {
            panic!("{probes:?}")
        };
        assert_eq!(
            to.addr.to_string(),
            "192.168.1.5:4000",
            "LAN first, full TTL"
        );
        let PathAction::Probe {
            seq: pub_seq,
            to: pub_to,
            ttl: Some(RAMP_TTL_START),
        } = probes[1].clone()
        else {
            panic!("{probes:?}")
        };
        let ms = Duration::from_millis;
        assert!(matches!(
            p.on_ack(t + ms(20), pub_seq, pub_to),
            Some(PathAction::UseDirect(_, _))
        ));
        assert_eq!(p.kind(), "direct");
        assert!(matches!(
            p.on_ack(t + ms(30), lan_seq, to),
            Some(PathAction::UseDirect(r, _)) if r == to
        ));
        assert_eq!(p.kind(), "lan");
        // An answer from another address than the probe went to proves nothing.
        let next = p.poll(t + KEEPALIVE + ms(30));
        let Some(PathAction::Probe { seq, .. }) = next.first().cloned() else {
            panic!("{next:?}")
        };
        assert_eq!(p.on_ack(t + KEEPALIVE + ms(40), seq, pub_to), None);
    }

    #[test]
    fn a_timed_out_punch_says_which_nat_changes_ports() {
        let t = crate::test_epoch();
        let reason = |ours: bool, their_public: &str| {
            let mut p = PathSet::default();
            p.start(
                t,
                vec![
                    cand(CandidateKind::Local, "192.168.2.12:4000"),
                    cand(CandidateKind::Reflexive, their_public),
                ],
                true,
                ours,
            );
            let mut now = t;
            while now <= t + PUNCH_FOR {
                p.poll(now);
                now += PUNCH_INTERVAL;
            }
            p.reason()
        };
        assert_eq!(
            reason(false, "203.0.113.5:4000"),
            RelayReason::PunchTimedOut
        );
        assert_eq!(reason(true, "203.0.113.5:4000"), RelayReason::SymmetricOne);
        assert_eq!(
            reason(false, "203.0.113.5:31337"),
            RelayReason::SymmetricOne
        );
        assert_eq!(
            reason(true, "203.0.113.5:31337"),
            RelayReason::SymmetricBoth
        );
    }

    #[test]
    fn silence_falls_back_and_failures_back_off() {
        let t = crate::test_epoch();
        let mut p = PathSet::default();
        p.start(
            t,
            vec![cand(CandidateKind::Reflexive, "203.0.113.5:4000")],
            true,
            false,
        );
        let mut sent = 0;
        let mut now = t;
        while now < t + PUNCH_FOR + PUNCH_INTERVAL {
            sent += p.poll(now).len();
            now += PUNCH_INTERVAL;
        }
        assert!((25..=31).contains(&sent), "{sent} probes");
        assert_eq!(p.reason(), RelayReason::PunchTimedOut);
        assert!(!p.wants_punch(now), "backoff");
        assert!(p.wants_punch(now + RETRY_MIN));
        // A direct path that stops answering is dropped after DEAD_AFTER.
        let from = Remote::udp("198.51.100.7:5000".parse().unwrap());
        assert!(p.on_direct_data(now, from).is_some());
        let acts = p.poll(now + DEAD_AFTER);
        assert!(acts.iter().any(|a| matches!(a, PathAction::UseRelay(_))));
        assert_eq!(p.kind(), "relay");
        assert_eq!(p.reason(), RelayReason::DirectLost);
        // No candidates at all: say so.
        let mut q = PathSet::default();
        q.start(t, Vec::new(), true, false);
        assert_eq!(q.reason(), RelayReason::NoCandidates);
    }

    #[test]
    fn the_ttl_ramps_behind_a_nat_and_a_public_node_waits_it_out() {
        let t = crate::test_epoch();
        let ttls = |behind_nat| {
            let mut p = PathSet::default();
            p.start(
                t,
                vec![cand(CandidateKind::Reflexive, "203.0.113.5:4000")],
                behind_nat,
                false,
            );
            (0..8u32)
                .map(|r| {
                    p.poll(t + PUNCH_INTERVAL * r)
                        .into_iter()
                        .find_map(|a| match a {
                            PathAction::Probe { ttl, .. } => Some(ttl),
                            _ => None,
                        })
                })
                .collect::<Vec<_>>()
        };
        let ramp: Vec<Option<Option<u8>>> = [2, 3, 4, 5, 6]
            .iter()
            .map(|t| Some(Some(*t)))
            .chain([Some(None); 3])
            .collect();
        assert_eq!(ttls(true), ramp);
        let wait: Vec<Option<Option<u8>>> = [None; 5].into_iter().chain([Some(None); 3]).collect();
        assert_eq!(ttls(false), wait);
    }
}
