//! Packetization-layer path MTU discovery for one path to a peer, direct or relayed end to
//! end (RFC 8899, DPLPMTUD):
//! padded probes sealed like data, so the answer proves that a data message of that size
//! crosses the path — whether or not routers send ICMP ("PMTU black holes").
//!
//! Sizes are plaintext bytes of a data message. The path starts trusted at the ceiling
//! (the TUN's MTU, plus the parity's extra bytes with FEC): most paths carry it, and
//! nothing is held back before the first answer. While traffic flows, one probe at the
//! current size goes out every [`CHECK`]; one unanswered leads to a round of [`COPIES`]
//! at once (one lost probe on a lossy path proves nothing; all copies lost is a narrower
//! path), and a round without an answer starts a binary search from [`FLOOR`] up, a round
//! of copies per step, each round waiting four RTTs (at least [`MIN_TIMEOUT`]; [`FIRST_TIMEOUT`]
//! before any answer gave an RTT). The search must end before the sender's TCP
//! retransmits a third time (about 3 s after the loss): only a packet that reaches the
//! TUN can carry back the ICMP error that makes it resend smaller; so a search, once
//! started, goes on while that TCP backs off and sends nothing (`SEARCH_WINDOW`), and a
//! path with no RTT known yet learns one from a floor-sized probe. While below the
//! ceiling, the ceiling is tried again every [`WIDEN`].

use std::time::{Duration, Instant};

/// A check of the current size goes out this often while traffic flows.
pub const CHECK: Duration = Duration::from_millis(500);
/// A probe round unanswered this long is lost, before any answer measured the RTT.
pub const FIRST_TIMEOUT: Duration = Duration::from_secs(1);
/// The shortest wait for a probe round.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(250);
/// Probes per round of a search or a confirmation.
pub const COPIES: usize = 3;
/// The smallest size searched (an IPv4 host must take 576-byte datagrams).
pub const FLOOR: u16 = 512;
/// A search ends when its bounds are this close.
const STEP: u16 = 8;
/// Below the ceiling, the ceiling is tried again this often.
pub const WIDEN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The current size works (as far as the last check knows).
    Checking,
    /// Rounds of copies at the current size (`left` more): is the path narrower?
    Confirming { left: u8 },
    /// Looking for the largest size that passes: `hi` did not; `lo` did if `passed`
    /// (else it is only the floor: a search in which nothing at all was answered found
    /// a dead path, not a narrow one, and changes nothing).
    Search { lo: u16, hi: u16, passed: bool },
}

/// What the endpoint must send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MtuProbe {
    /// Echoed in the answer.
    pub seq: u32,
    /// Plaintext size of the probe.
    pub size: u16,
}

/// The path MTU state of one direct path.
#[derive(Debug, Clone)]
pub struct Pmtu {
    ceiling: u16,
    current: u16,
    state: State,
    /// Probes of the round in flight: sequence numbers, their size, when sent.
    round: Option<(Vec<u32>, u16, Instant)>,
    next_check: Option<Instant>,
    next_widen: Option<Instant>,
    next_seq: u32,
    /// The data messages sent when last polled, less our own probes: traffic flows if it
    /// grew.
    last_sent: u64,
    /// Probes sent so far (they are data messages too).
    own: u64,
    /// Smoothed RTT of the answers.
    srtt: Option<Duration>,
    /// A floor-sized probe out to learn the RTT, while none is known: sequence, when sent.
    rtt_probe: Option<(u32, Instant)>,
    /// A search or confirmation step is due (after an answer).
    due: Option<Instant>,
    /// The last poll found no traffic within its window: nothing is due until there is.
    idle: bool,
    /// When our peer last got traffic other than our probes.
    last_active: Option<Instant>,
}

/// Probing goes on this long after the last traffic (probes themselves do not count).
const ACTIVE_WINDOW: Duration = Duration::from_secs(2);
/// A confirmation or search under way goes on this long after the last traffic: its
/// sender's TCP, backing off, may send nothing for seconds, and only a search that has
/// ended lets its next retransmission draw the ICMP error.
const SEARCH_WINDOW: Duration = Duration::from_secs(8);
/// Rounds of copies that must all go unanswered before a search.
const CONFIRM_ROUNDS: u8 = 2;

impl Pmtu {
    /// A path trusted up to `ceiling` plaintext bytes; `rtt` is what the session measured
    /// on it, if anything (it sizes the first probes' timeouts).
    pub fn new(ceiling: u16, rtt: Option<Duration>) -> Self {
        Self {
            ceiling,
            current: ceiling,
            state: State::Checking,
            round: None,
            next_check: None,
            next_widen: None,
            next_seq: 1,
            last_sent: 0,
            own: 0,
            srtt: rtt,
            rtt_probe: None,
            idle: false,
            due: None,
            last_active: None,
        }
    }

    /// The largest plaintext that crosses the path now.
    pub fn current(&self) -> u16 {
        self.current
    }

    /// Whether a search is under way (the current size is a lower bound).
    pub fn searching(&self) -> bool {
        matches!(self.state, State::Search { .. })
    }

    /// The timers; `sent` counts the data messages sent to the peer so far (probing only
    /// runs while it grows: an idle path costs nothing).
    pub fn poll(&mut self, now: Instant, sent: u64) -> Vec<MtuProbe> {
        let sent = sent.saturating_sub(self.own);
        if sent > self.last_sent {
            self.last_active = Some(now);
        }
        self.last_sent = self.last_sent.max(sent);
        let quiet = self
            .last_active
            .map_or(Duration::MAX, |t| now.saturating_duration_since(t));
        self.due = None;
        let timeout = self.timeout();
        if let Some((_, size, at)) = &self.round
            && now.saturating_duration_since(*at) >= timeout
        {
            let size = *size;
            self.round = None;
            self.lost(size);
        }
        let window = match self.state {
            State::Checking => ACTIVE_WINDOW,
            State::Confirming { .. } | State::Search { .. } => SEARCH_WINDOW,
        };
        self.idle = quiet >= window;
        if self.idle {
            return Vec::new();
        }
        let mut out = self.rtt_probe(now);
        if self.round.is_none() {
            out.extend(self.next_round(now));
        }
        out
    }

    /// Without an RTT, a lost round waits [`FIRST_TIMEOUT`]: a path first probed after it
    /// narrowed (a relayed peer's, whose traffic starts with the transfer) took 3 s to
    /// begin its search. A floor-sized probe, which any path carries, measures the RTT.
    fn rtt_probe(&mut self, now: Instant) -> Vec<MtuProbe> {
        if self.srtt.is_some()
            || self
                .rtt_probe
                .is_some_and(|(_, at)| now.saturating_duration_since(at) < FIRST_TIMEOUT)
        {
            return Vec::new();
        }
        let seq = self.take_seq();
        self.own += 1;
        self.rtt_probe = Some((seq, now));
        vec![MtuProbe { seq, size: FLOOR }]
    }

    /// The next round of the state machine, when one is due.
    fn next_round(&mut self, now: Instant) -> Vec<MtuProbe> {
        match self.state {
            State::Confirming { .. } => self.send_round(now, self.current, COPIES),
            State::Search { lo, hi, passed } => {
                if hi.saturating_sub(lo) <= STEP {
                    if passed {
                        self.settle(now, lo);
                    } else {
                        tracing::debug!(
                            "path MTU: no probe of any size answered: the path is down, not narrower"
                        );
                        self.settle(now, self.current);
                    }
                    Vec::new()
                } else {
                    self.send_round(now, lo + (hi - lo) / 2, COPIES)
                }
            }
            State::Checking => {
                if self.current < self.ceiling && self.next_widen.is_some_and(|t| t <= now) {
                    self.next_widen = Some(now + WIDEN);
                    self.state = State::Search {
                        lo: self.current,
                        hi: self.ceiling + 1,
                        passed: true,
                    };
                    return self.send_round(now, self.ceiling, COPIES);
                }
                if self.next_check.is_none_or(|t| t <= now) {
                    self.next_check = Some(now + CHECK);
                    return self.send_round(now, self.current, 1);
                }
                Vec::new()
            }
        }
    }

    /// An answer to probe `seq`.
    pub fn on_ack(&mut self, now: Instant, seq: u32) {
        if let Some((probe, sent)) = self.rtt_probe
            && probe == seq
        {
            self.srtt = Some(now.saturating_duration_since(sent));
            self.rtt_probe = None;
            self.due = Some(now);
            return;
        }
        let Some((seqs, size, sent)) = &self.round else {
            return;
        };
        if !seqs.contains(&seq) {
            return;
        }
        let (size, rtt) = (*size, now.saturating_duration_since(*sent));
        self.srtt = Some(self.srtt.map_or(rtt, |s| (s * 7 + rtt) / 8));
        self.round = None;
        self.due = Some(now);
        match self.state {
            State::Checking | State::Confirming { .. } => {
                self.state = State::Checking;
            }
            State::Search { .. } if size >= self.ceiling => self.settle(now, self.ceiling),
            State::Search { hi, .. } => {
                self.state = State::Search {
                    lo: size,
                    hi,
                    passed: true,
                }
            }
        }
    }

    /// When [`Pmtu::poll`] has work next.
    pub fn next_deadline(&self) -> Option<Instant> {
        // Idle, a check or round that fell due waits for traffic: its time, always past,
        // would keep the shell's timer firing (a daemon spun at 100% CPU once its traffic
        // stopped). The shell's regular tick polls again.
        if self.idle {
            return None;
        }
        if let Some((_, _, at)) = &self.round {
            return Some(*at + self.timeout());
        }
        if let (Some(t), State::Search { .. } | State::Confirming { .. }) = (self.due, self.state) {
            return Some(t);
        }
        match self.state {
            State::Checking => [self.next_check, self.next_widen]
                .into_iter()
                .flatten()
                .min(),
            _ => None,
        }
    }

    fn lost(&mut self, size: u16) {
        self.state = match self.state {
            State::Checking => State::Confirming {
                left: CONFIRM_ROUNDS,
            },
            State::Confirming { left } if left > 1 => State::Confirming { left: left - 1 },
            State::Confirming { .. } => {
                tracing::info!(size, "path MTU: full-size probes no longer pass; searching");
                State::Search {
                    lo: FLOOR.min(size),
                    hi: size,
                    passed: false,
                }
            }
            State::Search { lo, passed, .. } => State::Search {
                lo,
                hi: size,
                passed,
            },
        };
    }

    /// How long a probe round may take.
    fn timeout(&self) -> Duration {
        self.srtt
            .map_or(FIRST_TIMEOUT, |s| (s * 4).max(MIN_TIMEOUT))
    }

    fn settle(&mut self, now: Instant, size: u16) {
        if size != self.current {
            tracing::info!(from = self.current, to = size, "path MTU changed");
        }
        self.current = size;
        self.state = State::Checking;
        self.next_check = Some(now + CHECK);
        self.next_widen = (size < self.ceiling).then_some(now + WIDEN);
    }

    fn take_seq(&mut self) -> u32 {
        let s = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        s
    }

    fn send_round(&mut self, now: Instant, size: u16, copies: usize) -> Vec<MtuProbe> {
        let seqs: Vec<u32> = (0..copies).map(|_| self.take_seq()).collect();
        self.own += copies as u64;
        let out = seqs.iter().map(|&seq| MtuProbe { seq, size }).collect();
        self.round = Some((seqs, size, now));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `p` against a path that passes plaintexts up to `path` bytes, losing the
    /// probes `lose` picks; returns the time until it settles at its answer.
    fn run(p: &mut Pmtu, t0: Instant, path: u16, mut lose: impl FnMut() -> bool) -> Duration {
        let mut now = t0;
        let mut sent = 0u64;
        while now < t0 + Duration::from_secs(30) {
            sent += 1;
            for probe in p.poll(now, sent) {
                if probe.size <= path && !lose() {
                    p.on_ack(now + Duration::from_millis(5), probe.seq);
                }
            }
            let near = p.current() <= path && p.current() + STEP + 1 > path.min(p.ceiling);
            if !p.searching() && matches!(p.state, State::Checking) && near {
                return now - t0;
            }
            now += Duration::from_millis(10);
        }
        panic!("never settled: {p:?}");
    }

    #[test]
    fn a_path_that_narrows_is_found_within_seconds_without_icmp() {
        let t = crate::test_epoch();
        let mut p = Pmtu::new(1380, None);
        // A path that carries everything: settled at once, at the ceiling.
        assert_eq!(run(&mut p, t, 1500, || false), Duration::ZERO);
        assert_eq!(p.current(), 1380);
        // The path narrows to 1224 (a 1280-byte link): found in a few seconds.
        let took = run(&mut p, t + Duration::from_secs(1), 1224, || false);
        assert!(
            p.current() <= 1224 && p.current() > 1224 - 2 * STEP,
            "{}",
            p.current()
        );
        assert!(took < Duration::from_secs(4), "{took:?}");
    }

    #[test]
    fn random_loss_does_not_lower_the_mtu() {
        let t = crate::test_epoch();
        let mut p = Pmtu::new(1380, None);
        let mut rng = crate::rng::Rng::from_seed([3; 32]);
        let mut now = t;
        let mut sent = 0;
        // 10% loss for 10 minutes of traffic.
        while now < t + Duration::from_secs(600) {
            sent += 1;
            for probe in p.poll(now, sent) {
                if rng.below(10) != 0 {
                    p.on_ack(now + Duration::from_millis(5), probe.seq);
                }
            }
            now += Duration::from_millis(50);
            assert_eq!(p.current(), 1380, "lowered by loss at {:?}", now - t);
        }
    }

    #[test]
    fn a_path_that_widens_again_is_taken_again_and_idle_paths_cost_nothing() {
        let t = crate::test_epoch();
        let mut p = Pmtu::new(1380, None);
        run(&mut p, t, 1000, || false);
        assert!(p.current() <= 1000);
        let took = run(&mut p, t + Duration::from_secs(5), 1500, || false);
        assert_eq!(p.current(), 1380);
        assert!(took <= WIDEN + Duration::from_secs(1), "{took:?}");
        // No traffic: no probes, once the last traffic is SEARCH_WINDOW old (the check it
        // drew is never answered here, and the search that follows may finish).
        let sent = 1_000_000;
        let _ = p.poll(t + Duration::from_secs(100), sent);
        let quiet: usize = (9..100)
            .map(|i| p.poll(t + Duration::from_secs(100 + i), sent).len())
            .sum();
        assert_eq!(quiet, 0);
    }

    #[test]
    fn a_search_goes_on_while_the_sender_backs_off_and_a_new_path_learns_its_rtt() {
        let t = crate::test_epoch();
        // A path first probed after it narrowed, with no RTT known yet; the only traffic
        // is a TCP sender's retransmissions, backing off from 200 ms.
        let mut p = Pmtu::new(1380, None);
        let sends = [0u64, 200, 600, 1400, 3000, 6200];
        let mut now = t;
        let mut sent = 0;
        let settled = loop {
            let ms = (now - t).as_millis() as u64;
            sent += sends.iter().filter(|&&s| s == ms).count() as u64;
            for probe in p.poll(now, sent) {
                if probe.size <= 1224 {
                    p.on_ack(now + Duration::from_millis(5), probe.seq);
                }
            }
            if p.current() < 1380 && !p.searching() {
                break now - t;
            }
            assert!(ms < 10_000, "never settled: {p:?}");
            now += Duration::from_millis(5);
        };
        assert!(p.current() <= 1224 && p.current() > 1224 - 2 * STEP);
        // Before the retransmission at 3 s, so that one draws the ICMP error.
        assert!(settled < Duration::from_secs(3), "{settled:?}");
    }

    #[test]
    fn an_idle_path_asks_for_no_timer() {
        let t = crate::test_epoch();
        let mut p = Pmtu::new(1380, Some(Duration::from_millis(5)));
        for i in 0..10 {
            let now = t + Duration::from_millis(100 * i);
            for probe in p.poll(now, i) {
                p.on_ack(now, probe.seq);
            }
        }
        // Polled again only long after the traffic stopped: the check that fell due in
        // between is not a deadline (it would always be due).
        let late = t + Duration::from_secs(20);
        assert!(p.poll(late, 9).is_empty());
        assert_eq!(p.next_deadline(), None);
        // Traffic again: checks resume.
        assert_eq!(p.poll(late + Duration::from_millis(10), 10).len(), 1);
        assert!(p.next_deadline().is_some_and(|d| d > late));
    }

    #[test]
    fn a_dead_path_is_not_taken_for_a_narrow_one() {
        let t = crate::test_epoch();
        let mut p = Pmtu::new(1380, None);
        run(&mut p, t, 1500, || false);
        // Nothing answers for a while (the peer restarts): the size stays.
        let mut now = t + Duration::from_secs(1);
        for sent in 0..2000 {
            let _ = p.poll(now, sent);
            now += Duration::from_millis(10);
        }
        assert_eq!(p.current(), 1380);
    }
}
