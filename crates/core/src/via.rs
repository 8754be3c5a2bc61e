//! Relaying through another client, when two clients have no direct path between them.
//!
//! The hub relays by default, but it may be far away, and every byte it relays costs its
//! uplink twice. A third client that reaches both of them directly can carry the traffic
//! instead: clients report the neighbours they reach and relay for, the hub passes the
//! reports on, and a client whose peer is relayed by the hub probes the peer *through* such
//! a neighbour. The probe travels in the two clients' end-to-end session inside relay
//! frames, so only the real peer can answer it, through the same neighbour; a neighbour that
//! lied about its reach, or drops what it should forward, is never used. The first answer
//! moves the peer onto that relay; while in use, a probe a second keeps measuring it, and
//! [`DEAD_AFTER`] without an answer moves the peer back to the hub (and the next attempt
//! waits with backoff). A direct path, when punching finds one, takes precedence: this only
//! ever replaces the hub's relay. The hub's relay is measured alongside, and a client relay
//! clearly slower than it is not used.
//!
//! ```text
//!   A ══(A⇄B session, in Relay{dest B} via C)══▶ C ══▶ B     B ══ProbeAck via C══▶ C ══▶ A
//! ```

use std::time::{Duration, Instant};

use crate::peer::PeerId;

/// An unanswered probe is sent again after this long.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Probes of one relay before it counts as failed.
pub const PROBE_TRIES: u32 = 3;
/// A relay in use is probed this often.
pub const KEEPALIVE: Duration = Duration::from_secs(1);
/// A probe of a relay in use unanswered this long goes again. A relay that carries a
/// saturating transfer drops some probes in its full queues like any other packet: it is
/// left only after [`DEAD_AFTER`] of probes lost in a row, not two.
pub const PROBE_AGAIN: Duration = Duration::from_millis(250);
/// A relay in use without an answer this long is dead: back to the hub.
pub const DEAD_AFTER: Duration = Duration::from_secs(2);
/// How often to look again for a relay when none was offered.
pub const LOOK_EVERY: Duration = Duration::from_secs(1);
/// First wait after a failed relay; doubles up to [`RETRY_MAX`].
pub const RETRY_MIN: Duration = Duration::from_secs(4);
/// Longest wait between two attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(60);
/// While a client relays, the hub's relay is measured this often, to compare.
pub const HUB_EVERY: Duration = Duration::from_secs(2);

/// What the endpoint should do for this peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViaAction {
    /// Send a Probe with `seq` to the peer through `via` (a client, or the hub: its relay
    /// is measured too, to compare).
    Probe {
        /// The relay to measure.
        via: PeerId,
        /// The probe's sequence number.
        seq: u32,
    },
    /// The peer answered through `via`: send everything for it that way.
    Use(PeerId),
    /// The relay stopped working, or is clearly slower than the hub's: back to the hub.
    Leave(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not relayed by a client; look for one at `retry_at` (`None`: parked).
    Idle { retry_at: Option<Instant> },
    /// Probing the peer through `via`.
    Trying {
        via: PeerId,
        seq: u32,
        sent: Instant,
        tries: u32,
    },
    /// Relayed through `via`.
    Using {
        via: PeerId,
        last_ack: Instant,
        next_probe: Instant,
        out: Option<Outstanding>,
    },
}

/// Probes of a relay in use sent since the last answer: an answer to any of them shows
/// the relay alive; the latest one's measures its RTT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Outstanding {
    first: u32,
    last: u32,
    sent: Instant,
}

impl Outstanding {
    fn covers(&self, seq: u32) -> bool {
        seq.wrapping_sub(self.first) <= self.last.wrapping_sub(self.first)
    }
}

/// The RTT of the hub's relay to the same peer, measured alongside.
#[derive(Debug, Clone, Default)]
struct HubMeter {
    out: Option<(u32, Instant)>,
    rtt: Option<Duration>,
    next: Option<Instant>,
    /// Consecutive measurements in which the client relay was clearly slower.
    worse: u32,
}

/// How much slower than the hub's relay a client's may be and still be preferred: it
/// spares the hub, so it wins ties and small differences (and the margin keeps a peer
/// from flapping between two similar relays).
fn acceptable(client: Duration, hub: Duration) -> bool {
    client <= hub * 3 / 2 + Duration::from_millis(10)
}

/// Whether, and through which client, one peer is relayed (see the module docs). Idle
/// without a retry time it is parked: due whenever polled, but with no timer of its own.
#[derive(Debug, Clone)]
pub struct ViaClient {
    state: State,
    seq: u32,
    backoff: Duration,
    rtt: Option<Duration>,
    hub: HubMeter,
}

impl Default for ViaClient {
    fn default() -> Self {
        Self {
            state: State::Idle { retry_at: None },
            seq: 0,
            backoff: RETRY_MIN,
            rtt: None,
            hub: HubMeter::default(),
        }
    }
}

impl ViaClient {
    /// Timers. `best` names the neighbour to try (one that reaches the peer directly, by
    /// its report); `alive` says whether a neighbour is still reached directly.
    pub fn poll(
        &mut self,
        now: Instant,
        best: impl FnOnce() -> Option<PeerId>,
        alive: impl Fn(PeerId) -> bool,
    ) -> Vec<ViaAction> {
        let mut out = Vec::new();
        match self.state {
            State::Idle { retry_at } if retry_at.is_none_or(|t| now >= t) => match best() {
                Some(via) => {
                    out.push(self.probe_new(now, via, 1));
                    out.push(self.probe_hub(now));
                }
                None => {
                    self.state = State::Idle {
                        retry_at: Some(now + LOOK_EVERY),
                    };
                }
            },
            State::Idle { .. } => {}
            State::Trying { via, .. } if !alive(via) => self.fail(now),
            State::Trying {
                via, sent, tries, ..
            } if now.saturating_duration_since(sent) >= PROBE_TIMEOUT => {
                if tries >= PROBE_TRIES {
                    self.fail(now);
                } else {
                    out.push(self.probe_new(now, via, tries + 1));
                }
            }
            State::Trying { .. } => {}
            State::Using { via, last_ack, .. }
                if !alive(via) || now.saturating_duration_since(last_ack) >= DEAD_AFTER =>
            {
                self.fail(now);
                out.push(ViaAction::Leave(if alive(via) {
                    "the relaying client stopped answering"
                } else {
                    "the relaying client is no longer reached directly"
                }));
            }
            State::Using {
                via,
                last_ack,
                next_probe,
                out: outstanding,
            } => {
                if now >= next_probe {
                    self.seq = self.seq.wrapping_add(1);
                    let first = outstanding.map_or(self.seq, |o| o.first);
                    self.state = State::Using {
                        via,
                        last_ack,
                        // Again soon unless answered (which schedules the next one).
                        next_probe: now + PROBE_AGAIN,
                        out: Some(Outstanding {
                            first,
                            last: self.seq,
                            sent: now,
                        }),
                    };
                    out.push(ViaAction::Probe { via, seq: self.seq });
                }
                if self.hub.next.is_none_or(|t| now >= t) {
                    out.push(self.probe_hub(now));
                }
            }
        }
        out
    }

    /// A ProbeAck with `seq` came back through `via` (a client, or the hub).
    pub fn on_ack(&mut self, now: Instant, via: PeerId, seq: u32) -> Option<ViaAction> {
        if let Some((s, sent)) = self.hub.out
            && via == PeerId::HUB
            && s == seq
        {
            self.hub.out = None;
            self.hub.rtt = Some(now.saturating_duration_since(sent));
            return self.compare(now);
        }
        match self.state {
            State::Trying {
                via: v,
                seq: s,
                sent,
                ..
            } if v == via && s == seq => {
                let rtt = now.saturating_duration_since(sent);
                if self.hub.rtt.is_some_and(|h| !acceptable(rtt, h)) {
                    // It works, but the hub's relay is clearly faster: stay there.
                    self.fail(now);
                    return None;
                }
                self.rtt = Some(rtt);
                self.backoff = RETRY_MIN;
                self.hub.worse = 0;
                self.state = State::Using {
                    via,
                    last_ack: now,
                    next_probe: now + KEEPALIVE,
                    out: None,
                };
                Some(ViaAction::Use(via))
            }
            State::Using {
                via: v,
                out: Some(o),
                ..
            } if v == via && o.covers(seq) => {
                if seq == o.last {
                    self.rtt = Some(now.saturating_duration_since(o.sent));
                }
                self.state = State::Using {
                    via,
                    last_ack: now,
                    next_probe: o.sent + KEEPALIVE,
                    out: None,
                };
                None
            }
            _ => None,
        }
    }

    /// While a client relays: the hub's relay measured again; three times in a row clearly
    /// faster, and the peer goes back to it.
    fn compare(&mut self, now: Instant) -> Option<ViaAction> {
        let (Some(c), Some(h)) = (self.rtt(), self.hub.rtt) else {
            return None;
        };
        if acceptable(c, h) {
            self.hub.worse = 0;
            return None;
        }
        self.hub.worse += 1;
        if self.hub.worse < 3 {
            return None;
        }
        self.hub.worse = 0;
        self.fail(now);
        Some(ViaAction::Leave("the server's relay is clearly faster"))
    }

    /// Nothing to relay (a direct path carries the peer, or it has no traffic): no timer
    /// until [`ViaClient::wake`]. A backoff still running is kept.
    pub fn park(&mut self, now: Instant) {
        match self.state {
            State::Idle { retry_at } if retry_at.is_some_and(|t| t > now) => {}
            _ => self.state = State::Idle { retry_at: None },
        }
        self.hub.out = None;
        self.hub.next = None;
    }

    /// Traffic for a peer the hub relays: look for a client relay now, unless a backoff
    /// runs. Returns whether the timer must run.
    pub fn wake(&mut self, now: Instant) -> bool {
        match self.state {
            State::Idle { retry_at: None } => {
                self.state = State::Idle {
                    retry_at: Some(now),
                };
                true
            }
            _ => false,
        }
    }

    /// The client relaying for us now.
    pub fn via(&self) -> Option<PeerId> {
        match self.state {
            State::Using { via, .. } => Some(via),
            _ => None,
        }
    }

    /// The RTT through the relay, end to end, by the last answered probe.
    pub fn rtt(&self) -> Option<Duration> {
        self.via().and(self.rtt)
    }

    /// When [`ViaClient::poll`] has work next.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.state {
            State::Idle { retry_at } => retry_at,
            State::Trying { sent, .. } => Some(sent + PROBE_TIMEOUT),
            State::Using {
                last_ack,
                next_probe,
                ..
            } => {
                let t = next_probe.min(last_ack + DEAD_AFTER);
                Some(self.hub.next.map_or(t, |h| h.min(t)))
            }
        }
    }

    fn probe_new(&mut self, now: Instant, via: PeerId, tries: u32) -> ViaAction {
        self.seq = self.seq.wrapping_add(1);
        self.state = State::Trying {
            via,
            seq: self.seq,
            sent: now,
            tries,
        };
        ViaAction::Probe { via, seq: self.seq }
    }

    /// A probe of the hub's relay (the last one unanswered counts as lost).
    fn probe_hub(&mut self, now: Instant) -> ViaAction {
        self.seq = self.seq.wrapping_add(1);
        self.hub.out = Some((self.seq, now));
        self.hub.next = Some(now + HUB_EVERY);
        ViaAction::Probe {
            via: PeerId::HUB,
            seq: self.seq,
        }
    }

    fn fail(&mut self, now: Instant) {
        self.state = State::Idle {
            retry_at: Some(now + self.backoff),
        };
        self.backoff = (self.backoff * 2).min(RETRY_MAX);
        self.hub.next = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: PeerId = PeerId(3);
    const MS: Duration = Duration::from_millis(1);

    /// The sequence number of the probe through `via` among `actions`.
    fn probe(actions: &[ViaAction], via: PeerId) -> Option<u32> {
        actions.iter().find_map(|a| match a {
            ViaAction::Probe { via: v, seq } if *v == via => Some(*seq),
            _ => None,
        })
    }

    /// A ViaClient relaying through C since `t0` (the hub's relay unanswered so far).
    fn using(t0: Instant) -> ViaClient {
        let mut v = ViaClient::default();
        let seq = probe(&v.poll(t0, || Some(C), |_| true), C).unwrap();
        assert_eq!(v.on_ack(t0 + 30 * MS, C, seq), Some(ViaAction::Use(C)));
        v
    }

    #[test]
    fn an_answered_probe_is_used_and_a_silent_relay_is_left() {
        let t0 = crate::test_epoch();
        let mut v = ViaClient::default();
        let first = v.poll(t0, || Some(C), |_| true);
        let seq = probe(&first, C).expect("a probe through C");
        assert!(
            probe(&first, PeerId::HUB).is_some(),
            "the hub's relay is measured too"
        );
        assert_eq!(v.on_ack(t0, C, seq.wrapping_add(7)), None, "wrong seq");
        assert_eq!(v.on_ack(t0, PeerId(4), seq), None, "wrong relay");
        let at = t0 + 30 * MS;
        assert_eq!(v.on_ack(at, C, seq), Some(ViaAction::Use(C)));
        assert_eq!(v.via(), Some(C));
        assert_eq!(v.rtt(), Some(30 * MS));
        let seq = probe(&v.poll(at + KEEPALIVE, || None, |_| true), C).unwrap();
        assert_eq!(v.on_ack(at + KEEPALIVE, C, seq), None);
        // Then silence.
        let mut t = at + KEEPALIVE;
        let left = loop {
            t += 100 * MS;
            let actions = v.poll(t, || None, |_| true);
            if let Some(ViaAction::Leave(why)) = actions.last() {
                break *why;
            }
        };
        assert!(left.contains("stopped answering"));
        assert!(t - (at + KEEPALIVE) <= DEAD_AFTER + 100 * MS);
        assert_eq!(v.via(), None);
        assert_eq!(v.next_deadline(), Some(t + RETRY_MIN));
    }

    /// A saturated relay drops some probes: lost ones go again within 250 ms, and an
    /// answer to any of them keeps the relay (it used to be left after two lost probes).
    #[test]
    fn a_relay_in_use_that_loses_some_probes_is_kept() {
        let t0 = crate::test_epoch();
        let mut v = using(t0);
        let mut t = t0 + 30 * MS;
        let mut sent = Vec::new();
        for round in 0..200u32 {
            t += 50 * MS;
            let actions = v.poll(t, || None, |_| true);
            if let Some(ViaAction::Leave(why)) = actions.last() {
                panic!("left at {:?}: {why}", t - t0);
            }
            if let Some(seq) = probe(&actions, C) {
                sent.push(seq);
                // Three of every four probes are lost; the fourth is answered late,
                // after the next one went out.
                if sent.len() % 4 == 0 {
                    let late = sent[sent.len() - 2];
                    assert_eq!(v.on_ack(t + 10 * MS, C, late), None, "round {round}");
                }
            }
        }
        assert_eq!(v.via(), Some(C));
        assert!(sent.len() > 15, "only {} probes in 10 s", sent.len());
    }

    #[test]
    fn a_relay_that_never_answers_is_given_up_with_backoff() {
        let t0 = crate::test_epoch();
        let mut v = ViaClient::default();
        let mut t = t0;
        let mut probes = 0;
        while t < t0 + Duration::from_secs(200) {
            probes += v
                .poll(t, || Some(C), |_| true)
                .iter()
                .filter(|a| matches!(a, ViaAction::Probe { via, .. } if *via == C))
                .count();
            t += 100 * MS;
        }
        // 3 probes per attempt; attempts after 4, 8, 16, 32, 60, 60 ... s of backoff.
        assert!((12..=30).contains(&probes), "{probes} probes in 200 s");
    }

    #[test]
    fn a_relay_no_longer_reached_is_left_at_once() {
        let t0 = crate::test_epoch();
        let mut v = using(t0);
        assert!(matches!(
            v.poll(t0 + 40 * MS, || None, |_| false).last(),
            Some(ViaAction::Leave(_))
        ));
    }

    #[test]
    fn a_client_relay_clearly_slower_than_the_hubs_is_not_used() {
        let t0 = crate::test_epoch();
        let mut v = ViaClient::default();
        let first = v.poll(t0, || Some(C), |_| true);
        let (c, hub) = (
            probe(&first, C).unwrap(),
            probe(&first, PeerId::HUB).unwrap(),
        );
        assert_eq!(v.on_ack(t0 + 20 * MS, PeerId::HUB, hub), None);
        assert_eq!(
            v.on_ack(t0 + 100 * MS, C, c),
            None,
            "100 ms against the hub's 20"
        );
        assert_eq!(v.via(), None);
        // Somewhat slower is still preferred: it spares the hub.
        let mut v = ViaClient::default();
        let first = v.poll(t0, || Some(C), |_| true);
        let (c, hub) = (
            probe(&first, C).unwrap(),
            probe(&first, PeerId::HUB).unwrap(),
        );
        v.on_ack(t0 + 20 * MS, PeerId::HUB, hub);
        assert_eq!(v.on_ack(t0 + 35 * MS, C, c), Some(ViaAction::Use(C)));
    }

    #[test]
    fn a_client_relay_that_becomes_clearly_slower_is_left_after_three_measurements() {
        let t0 = crate::test_epoch();
        let mut v = using(t0);
        let mut t = t0 + 30 * MS;
        let mut left = None;
        for round in 0..20 {
            t += KEEPALIVE;
            let actions = v.poll(t, || None, |_| true);
            if let Some(ViaAction::Leave(why)) = actions.last() {
                panic!("left on a poll: {why}");
            }
            // The client relay now takes 200 ms, the hub's 20 ms.
            if let Some(seq) = probe(&actions, C) {
                assert_eq!(v.on_ack(t + 200 * MS, C, seq), None);
            }
            if let Some(seq) = probe(&actions, PeerId::HUB)
                && let Some(a) = v.on_ack(t + 20 * MS, PeerId::HUB, seq)
            {
                left = Some((round, a));
                break;
            }
        }
        let (round, action) = left.expect("never left the slow relay");
        assert_eq!(
            action,
            ViaAction::Leave("the server's relay is clearly faster")
        );
        assert!(
            round >= 4,
            "left after {round} rounds: one slow sample must not do it"
        );
        assert_eq!(v.via(), None);
    }

    #[test]
    fn a_parked_relay_has_no_timer_until_traffic_wakes_it() {
        let t0 = crate::test_epoch();
        let mut v = ViaClient::default();
        assert_eq!(v.next_deadline(), None);
        assert!(v.wake(t0));
        assert_eq!(v.next_deadline(), Some(t0));
        assert!(!v.wake(t0), "already due");
        assert!(probe(&v.poll(t0, || Some(C), |_| true), C).is_some());
        v.park(t0);
        assert_eq!(v.next_deadline(), None);
        // A backoff survives parking until it ran out.
        let mut v = ViaClient::default();
        v.poll(t0, || Some(C), |_| false);
        v.poll(t0, || Some(C), |_| false);
        let backoff = v.next_deadline().unwrap();
        assert!(backoff > t0);
        v.park(t0);
        assert_eq!(v.next_deadline(), Some(backoff));
        assert!(!v.wake(t0));
        v.park(backoff);
        assert_eq!(v.next_deadline(), None);
    }

    #[test]
    fn nothing_to_try_looks_again_later() {
        let t0 = crate::test_epoch();
        let mut v = ViaClient::default();
        assert!(v.poll(t0, || None, |_| true).is_empty());
        assert_eq!(v.next_deadline(), Some(t0 + LOOK_EVERY));
        assert!(v.poll(t0 + LOOK_EVERY / 2, || Some(C), |_| true).is_empty());
        assert!(probe(&v.poll(t0 + LOOK_EVERY, || Some(C), |_| true), C).is_some());
    }

    proptest::proptest! {
        /// Whatever happens — answers late, early, wrong, relays dying, traffic stopping —
        /// a poll never leaves a timer in the past (that would spin the endpoint's loop),
        /// and a relay is used only after it answered.
        #[test]
        fn never_a_timer_in_the_past_and_never_an_unanswered_relay(
            ops in proptest::collection::vec((0u8..6, 0u64..3000, 0u32..8, proptest::bool::ANY), 1..200)
        ) {
            let mut t = crate::test_epoch();
            let mut v = ViaClient::default();
            let mut sent: Vec<(PeerId, u32)> = Vec::new();
            for (op, dt, pick, alive) in ops {
                t += Duration::from_millis(dt);
                match op {
                    0 | 1 => {
                        let actions = v.poll(t, || Some(C), |_| alive);
                        for a in &actions {
                            match a {
                                ViaAction::Probe { via, seq } => sent.push((*via, *seq)),
                                ViaAction::Use(via) => proptest::prop_assert!(false, "Use({via:?}) from a poll"),
                                ViaAction::Leave(_) => {}
                            }
                        }
                        if let Some(d) = v.next_deadline() {
                            proptest::prop_assert!(d > t, "deadline {d:?} not after {t:?}");
                        }
                    }
                    2 => {
                        let (via, seq) = sent
                            .get(pick as usize % sent.len().max(1))
                            .copied()
                            .unwrap_or((C, pick));
                        if let Some(ViaAction::Use(u)) = v.on_ack(t, via, seq) {
                            proptest::prop_assert!(sent.contains(&(u, seq)));
                        }
                    }
                    3 => { v.on_ack(t, PeerId(pick), pick); }
                    4 => v.park(t),
                    _ => { v.wake(t); }
                }
                if let Some(via) = v.via() {
                    proptest::prop_assert!(sent.iter().any(|(s, _)| *s == via));
                }
            }
        }
    }
}
