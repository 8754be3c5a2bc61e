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
//!
//! **Port prediction** (Tailscale's birthday technique). When one NAT changes ports per
//! destination ("hard") and the other keeps them ("easy"), the easy side cannot know
//! where to probe: the hard NAT gives each new destination a random port. So the hard
//! side sends one probe from each of [`SPRAY_SOCKETS`] extra sockets to the easy side's
//! public endpoint (256 random public ports), and the easy side probes
//! [`PREDICTION_PROBES`] random ports of the hard side's public address; with ports drawn
//! from 64,512 values, some pair matches about two times in three. Order matters on Linux
//! NATs, for the conntrack reason above: the easy side's guesses go first and with the
//! ramp's first TTL, so they open its own NAT without reaching the hard one (a guess that
//! arrived first would bar the hard NAT from giving that very port); the hard side's
//! probes follow [`SPRAY_DELAY`] later. A spray probe whose port was guessed passes the
//! easy NAT, the easy side answers it and takes the path, and the answer (through the
//! mapping the spray opened) gives the hard side the same path, on that extra socket.
//! At most [`PREDICTION_PROBES`] probes per side per attempt; attempts back off like any
//! punch.

use core::net::{IpAddr, SocketAddr};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use culvert_wire::frame::{Candidate, CandidateKind};

use crate::limit::RateWindow;
use crate::peer::{PeerId, Remote, SPRAY_SOCKETS};
use crate::rng::Rng;

/// How packets reach a peer now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Straight to an underlay endpoint (`None` until one is known).
    Direct(Option<Remote>),
    /// Inside relay frames through this node (the hub), end-to-end encrypted.
    Relay(PeerId),
}

impl core::fmt::Display for Path {
    /// `udp 198.51.100.7:41641`, `relay via node 3`, `none`: for logs.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Direct(Some(r)) => write!(f, "{} {}", r.transport.as_str(), r.addr),
            Self::Direct(None) => f.write_str("none"),
            Self::Relay(via) => write!(f, "relay via node {}", via.0),
        }
    }
}

/// Probes a peer's paths may send a second: every candidate and a port prediction's
/// round (25) at [`PUNCH_INTERVAL`], never more whatever a peer publishes.
pub const PROBE_BUDGET: u32 = 400;
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
/// Port prediction: probes per side per attempt (the hard side's extra sockets, the easy
/// side's guessed ports).
pub const PREDICTION_PROBES: u16 = SPRAY_SOCKETS;
/// Port prediction: rounds over which each side spreads its probes.
const PREDICTION_ROUNDS: u32 = 2;
/// Port prediction: the hard side starts this many rounds after the easy side, so the
/// guesses have opened the easy NAT when the spray arrives (and the hub's two Punch
/// frames may arrive that far apart).
const SPRAY_DELAY: u32 = 4;
/// Ports a NAT that picks them at random draws from (Linux: 1024–65535).
const RANDOM_PORTS: core::ops::RangeInclusive<u16> = 1024..=65535;

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
    /// other filters; port prediction found no matching port this time.
    SymmetricOne,
    /// The direct path went silent; back on the relay.
    DirectLost,
}

impl RelayReason {
    /// For status and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotTried => "not tried yet (no traffic to this peer)",
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
                 the other filters, and port prediction found no match"
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
    /// Port prediction, when exactly one of the two NATs changes ports.
    prediction: Option<Prediction>,
}

/// This side's part in port prediction (see the module docs).
#[derive(Debug, Clone)]
enum Prediction {
    /// Our NAT changes ports, the peer's keeps them: probe its public endpoint from each
    /// extra socket.
    Spray(SocketAddr),
    /// Our NAT keeps ports, the peer's changes them: probe these ports of its address.
    Guess(IpAddr, Vec<u16>),
}

impl Prediction {
    /// The part to play, if any: `ours`/`theirs` say whose NAT changes ports; a side
    /// without a NAT needs no prediction (the peer's probes reach it anyway).
    fn choose(
        ours: bool,
        theirs: bool,
        behind_nat: bool,
        peer_public: Option<SocketAddr>,
        peer_behind_nat: bool,
        rng: &mut Rng,
    ) -> Option<Self> {
        let public = peer_public.filter(SocketAddr::is_ipv4)?;
        match (ours, theirs) {
            (true, false) if peer_behind_nat => Some(Self::Spray(public)),
            (false, true) if behind_nat => {
                let span = u64::from(RANDOM_PORTS.end() - RANDOM_PORTS.start()) + 1;
                let mut ports = Vec::with_capacity(usize::from(PREDICTION_PROBES));
                while ports.len() < usize::from(PREDICTION_PROBES) {
                    let p = RANDOM_PORTS.start() + u16::try_from(rng.below(span)).unwrap_or(0);
                    if !ports.contains(&p) {
                        ports.push(p);
                    }
                }
                Some(Self::Guess(public.ip(), ports))
            }
            _ => None,
        }
    }

    /// The probes of punch round `round`: where, and with which TTL.
    fn round(&self, round: u32) -> Vec<(Remote, Option<u8>)> {
        let per_round = u32::from(PREDICTION_PROBES).div_ceil(PREDICTION_ROUNDS);
        let slice = |first_round: u32| {
            let r = round
                .checked_sub(first_round)
                .filter(|r| *r < PREDICTION_ROUNDS)?;
            let start = r * per_round;
            Some(start..(start + per_round).min(u32::from(PREDICTION_PROBES)))
        };
        match self {
            Self::Spray(to) => slice(SPRAY_DELAY)
                .into_iter()
                .flatten()
                .filter_map(|i| u16::try_from(i + 1).ok())
                .map(|socket| (Remote::udp_on(socket, *to), None))
                .collect(),
            Self::Guess(ip, ports) => slice(0)
                .into_iter()
                .flatten()
                .filter_map(|i| ports.get(i as usize))
                .map(|&port| {
                    let to = Remote::udp(SocketAddr::new(*ip, port));
                    (to, Some(RAMP_TTL_START))
                })
                .collect(),
        }
    }
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
    /// Probes sent a second, whatever the candidates and punches: a member that names
    /// addresses of its choosing cannot make this node a prober of third parties.
    budget: RateWindow,
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
            budget: RateWindow::new(PROBE_BUDGET, Duration::from_secs(1)),
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
    /// `ports_changed`: our NAT gave our endpoint another port than our socket's. `rng`
    /// draws the ports port prediction guesses.
    pub fn start(
        &mut self,
        now: Instant,
        mut candidates: Vec<Candidate>,
        behind_nat: bool,
        ports_changed: bool,
        rng: &mut Rng,
    ) {
        self.requested = None;
        // One punch at a time: both sides' requests make the hub send two Punch frames,
        // and a second one must not start the prediction over.
        if self.punch.is_some() {
            return;
        }
        // A path adopted from the peer's probe before its candidates came: they say whether
        // it is one of its LAN endpoints (and not also its public one).
        if let Some(d) = &mut self.direct {
            d.kind = d.kind.min(kind_among(&candidates, d.remote.addr));
            return;
        }
        // Our own backoff holds for punches the hub orders on the peer's request too: a
        // member asking for a punch every second, with candidates of its choosing, gets
        // our probes no more often than our failures allow (hardening finding 10).
        if self.retry_at.is_some_and(|t| t > now) {
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
        let peer_behind_nat = public.iter().any(|p| {
            !candidates
                .iter()
                .any(|c| c.kind == CandidateKind::Local && c.addr == *p)
        });
        let prediction = Prediction::choose(
            ports_changed,
            theirs,
            behind_nat,
            public.first().copied(),
            peer_behind_nat,
            rng,
        );
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
            prediction,
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
                // Over with a path found (probes went on for a better one): no failure.
                if self.direct.is_none() {
                    self.fail(now, reason);
                }
            } else if p.next <= now {
                let ramping = p.round < RAMP_ROUNDS;
                let ttl = ramping.then(|| {
                    RAMP_TTL_START.saturating_add(u8::try_from(p.round).unwrap_or(u8::MAX))
                });
                let mut targets: Vec<(Remote, Option<u8>)> = p
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
                if let Some(pred) = &p.prediction {
                    targets.extend(pred.round(p.round));
                }
                for (to, ttl) in targets {
                    if !self.budget.allow(now) {
                        break;
                    }
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
        let kind = self.kind_of(from);
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

    /// An authentic probe from the peer arrived straight from `from`: with nothing direct
    /// yet, the path works at least one way, so take it (its keepalive probes prove the
    /// other way within [`DEAD_AFTER`]). This is how the side whose guess matched learns
    /// a predicted port. With a path already, probes to other candidates move nothing.
    pub fn on_direct_probe(&mut self, now: Instant, from: Remote) -> Option<PathAction> {
        if self.direct.is_some() {
            return None;
        }
        // The punch goes on: a LAN candidate may still answer our own probes.
        Some(self.adopt(now, from, "a probe from the peer reached us directly"))
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
        let action = self.adopt(now, from, "the peer reached us directly");
        self.punch = None;
        Some(action)
    }

    /// What the punch under way says `from` is; reflexive when it does not know it.
    fn kind_of(&self, from: Remote) -> CandidateKind {
        self.punch.as_ref().map_or(CandidateKind::Reflexive, |p| {
            kind_among(&p.candidates, from.addr)
        })
    }

    /// Takes `from` as the direct path, unmeasured (keepalive probes start at once).
    fn adopt(&mut self, now: Instant, from: Remote, why: &'static str) -> PathAction {
        let kind = self.kind_of(from);
        self.requested = None;
        self.failures = 0;
        self.retry_at = None;
        self.direct = Some(Direct {
            remote: from,
            kind,
            rtt: None,
            last_ack: now,
            next_probe: now,
            sent: 0,
            acked: 0,
        });
        PathAction::UseDirect(from, why)
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
        || matches!(ip, IpAddr::V4(a) if a.is_link_local())
        || matches!(ip, IpAddr::V6(a) if (a.segments()[0] & 0xffc0) == 0xfe80))
}

/// Whether `ip` lies in private (RFC 1918), shared (RFC 6598) or unique-local IPv6 space:
/// where a LAN endpoint may be.
pub fn private(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(a) => a.is_private() || (a.octets()[0] == 100 && a.octets()[1] & 0xc0 == 64),
        IpAddr::V6(a) => a.segments()[0] & 0xfe00 == 0xfc00,
    }
}

/// What `candidates` say `addr` is: one of the peer's LAN endpoints only if it is not also
/// its public one (a host with a public address on an interface lists it both ways, and a
/// path to it is no LAN path).
fn kind_among(candidates: &[Candidate], addr: SocketAddr) -> CandidateKind {
    let listed = |kind| candidates.iter().any(|c| c.kind == kind && c.addr == addr);
    if listed(CandidateKind::Local) && !listed(CandidateKind::Reflexive) {
        CandidateKind::Local
    } else {
        CandidateKind::Reflexive
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng() -> Rng {
        Rng::from_seed([7; 32])
    }

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
            &mut rng(),
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
    fn a_path_adopted_before_the_candidates_is_lan_once_they_say_so() {
        let t = crate::test_epoch();
        let ms = Duration::from_millis;
        // The peer's probe arrives before the hub's Punch with its candidates: a LAN
        // endpoint becomes a lan path; a public address the peer also has on an interface
        // stays direct.
        let cases = [
            ("192.168.1.5:4000", "203.0.113.5:4000", "lan"),
            ("203.0.113.9:4000", "203.0.113.9:4000", "direct"),
        ];
        for (local, public, kind) in cases {
            let mut p = PathSet::default();
            let lan = cand(CandidateKind::Local, local);
            assert!(p.on_direct_probe(t, Remote::udp(lan.addr)).is_some());
            assert_eq!(p.kind(), "direct");
            p.start(
                t + ms(5),
                vec![cand(CandidateKind::Reflexive, public), lan],
                true,
                false,
                &mut rng(),
            );
            assert_eq!(p.kind(), kind, "{local}");
        }
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
                &mut rng(),
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
            &mut rng(),
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
        q.start(t, Vec::new(), true, false, &mut rng());
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
                &mut rng(),
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

    /// A node behind a NAT (changing ports: `ours`) punching towards a peer with a LAN
    /// and a public candidate.
    fn behind_nat_facing(t: Instant, ours: bool, peer: [&str; 2]) -> PathSet {
        let mut p = PathSet::default();
        let candidates = vec![
            cand(CandidateKind::Local, peer[0]),
            cand(CandidateKind::Reflexive, peer[1]),
        ];
        p.start(t, candidates, true, ours, &mut rng());
        p
    }

    /// The probes of each round of a punch that runs its full course.
    fn rounds(p: &mut PathSet, t: Instant) -> Vec<Vec<(Remote, Option<u8>)>> {
        (0..u32::try_from(PUNCH_FOR.as_millis() / PUNCH_INTERVAL.as_millis()).unwrap())
            .map(|r| {
                p.poll(t + PUNCH_INTERVAL * r)
                    .into_iter()
                    .filter_map(|a| match a {
                        PathAction::Probe { to, ttl, .. } => Some((to, ttl)),
                        _ => None,
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn port_prediction_guesses_first_then_sprays_from_extra_sockets() {
        let t = crate::test_epoch();
        // The peer's NAT changes ports (its public port is none of its sockets'); ours
        // keeps them: guess 256 distinct random ports of its address, low TTL, first.
        let mut easy = behind_nat_facing(t, false, ["192.168.2.12:4000", "198.51.100.1:31337"]);
        let guesses: Vec<Vec<SocketAddr>> = rounds(&mut easy, t)
            .into_iter()
            .map(|r| {
                r.into_iter()
                    .filter(|(to, _)| to.addr.ip() == "198.51.100.1".parse::<IpAddr>().unwrap())
                    .filter(|(to, _)| to.addr.port() != 31337)
                    .inspect(|(to, ttl)| {
                        assert_eq!((to.socket, *ttl), (0, Some(RAMP_TTL_START)), "{to}");
                    })
                    .map(|(to, _)| to.addr)
                    .collect()
            })
            .collect();
        let per_round: Vec<usize> = guesses.iter().map(Vec::len).collect();
        assert_eq!(&per_round[..3], &[128, 128, 0]);
        assert!(per_round[3..].iter().all(|n| *n == 0));
        let mut ports: Vec<u16> = guesses.iter().flatten().map(SocketAddr::port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 256, "distinct guesses");
        assert!(ports.iter().all(|p| RANDOM_PORTS.contains(p)));

        // Our NAT changes ports, the peer's keeps them: one probe from each extra socket to
        // its public endpoint, default TTL, after the guesses.
        let cone_peer = ["192.168.1.12:4000", "203.0.113.1:4000"];
        let mut hard = behind_nat_facing(t, true, cone_peer);
        let sprays: Vec<Vec<u16>> = rounds(&mut hard, t)
            .into_iter()
            .map(|r| {
                r.into_iter()
                    .filter(|(to, _)| to.socket != 0)
                    .inspect(|(to, ttl)| {
                        assert_eq!(to.addr.to_string(), "203.0.113.1:4000");
                        assert_eq!(*ttl, None);
                    })
                    .map(|(to, _)| to.socket)
                    .collect()
            })
            .collect();
        assert!(sprays[..4].iter().all(Vec::is_empty));
        assert_eq!(sprays[4].len() + sprays[5].len(), 256);
        let mut sockets: Vec<u16> = sprays.concat();
        sockets.sort_unstable();
        assert_eq!(sockets, (1..=SPRAY_SOCKETS).collect::<Vec<_>>());
        // The easy side's answer to spray 77 arrives on socket 77: that is the path.
        let from = Remote::udp_on(77, "203.0.113.1:4000".parse().unwrap());
        let mut acked = behind_nat_facing(t, true, cone_peer);
        let seq = (0..8)
            .flat_map(|r| acked.poll(t + PUNCH_INTERVAL * r))
            .find_map(|a| match a {
                PathAction::Probe { seq, to, .. } if to == from => Some(seq),
                _ => None,
            })
            .unwrap();
        assert!(matches!(
            acked.on_ack(t + PUNCH_INTERVAL * 8, seq, from),
            Some(PathAction::UseDirect(r, _)) if r == from
        ));
    }

    #[test]
    fn no_prediction_without_a_nat_to_fool() {
        let t = crate::test_epoch();
        let extra = |ours: bool, behind_nat: bool, peer: [&str; 2]| {
            let mut p = PathSet::default();
            let candidates = peer
                .iter()
                .zip([CandidateKind::Local, CandidateKind::Reflexive])
                .map(|(a, k)| cand(k, a))
                .collect();
            p.start(t, candidates, behind_nat, ours, &mut rng());
            rounds(&mut p, t).concat().len()
        };
        let plain = extra(false, true, ["192.168.2.12:4000", "198.51.100.1:4000"]);
        // A public peer (its public endpoint is its own): no spray towards it.
        let public = ["198.51.100.9:4000", "198.51.100.9:4000"];
        assert!(extra(true, true, public) < plain);
        // We have no NAT: nothing to open with guesses.
        assert!(extra(false, false, ["192.168.2.12:4000", "198.51.100.1:31337"]) < 256);
        // Both change ports: the birthday odds are hopeless; no prediction.
        assert!(extra(true, true, ["192.168.2.12:4000", "198.51.100.1:31337"]) < 256);
        // A Punch the peer asked for during our backoff gets no probe at all from us.
        let mut p = behind_nat_facing(t, true, ["192.168.1.12:4000", "203.0.113.1:4000"]);
        let _ = rounds(&mut p, t);
        let _ = p.poll(t + PUNCH_FOR);
        assert_eq!(p.reason(), RelayReason::SymmetricOne);
        let later = t + PUNCH_FOR + PUNCH_INTERVAL;
        let candidates = vec![
            cand(CandidateKind::Local, "192.168.1.12:4000"),
            cand(CandidateKind::Reflexive, "203.0.113.1:4000"),
        ];
        p.start(later, candidates, true, true, &mut rng());
        assert!(rounds(&mut p, later).concat().is_empty());
        // A probe from the peer gives a path only while there is none.
        let mut p = PathSet::default();
        let a = Remote::udp("198.51.100.1:4000".parse().unwrap());
        let b = Remote::udp("192.168.2.12:4000".parse().unwrap());
        assert!(p.on_direct_probe(t, a).is_some());
        assert_eq!(p.on_direct_probe(t, b), None);
    }
}
