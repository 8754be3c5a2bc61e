//! Forward error correction over one session's data messages.
//!
//! **Where it sits.** FEC works on *sealed* data messages, after encryption on the sending
//! side and before decryption on the receiving side. A group is `k` data messages with
//! consecutive counters; the counter already tells a receiver where a message belongs, so
//! the original messages go out unchanged — no FEC header, no delay, no extra byte. The
//! sender follows each complete group (or a partial one, after the flush timeout) with `m`
//! parity messages ([`culvert_wire::message::FecParity`]) computed with a systematic
//! Reed-Solomon code over the shards `| length (u16) | ciphertext and tag | zero padding |`.
//! A data message's header is left out of its shard: the group's index and counters rebuild
//! it, so a parity message is only [`PARITY_OVERHEAD`] bytes longer than the longest message
//! it protects.
//!
//! **What it can cost.** A recovered message is a ciphertext: it goes through the same replay
//! check and AEAD as any other, so tampered, forged or duplicated parity can only produce
//! drops, never bytes that did not authenticate. A received original counts towards
//! recovery only after its tag verified. State is bounded: a ring of the last
//! [`RING`] originals, at most [`MAX_GROUPS`] open groups, each expiring after
//! [`GROUP_TTL`].
//!
//! **Adaptive parity.** Each receiver counts, per report interval, the messages that
//! arrived (before recovery) against those the counters say were sent, and reports both to
//! the sender ([`culvert_wire::frame::Frame::LossReport`]). The sender believes a rise in
//! loss at once and smooths a fall, and picks the least parity `m` (for groups of
//! [`AUTO_K`]) that keeps the residual loss — a message lost *and* more than `m` of the
//! other `k + m − 1` shards lost — under the target, capped at `m = k`. It raises `m` at
//! once and lowers it only after three reports in a row ask for less, so it reacts within
//! one report and does not oscillate. On a clean path it sends no parity at all.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use culvert_fec::Codec;
use culvert_wire::message::{
    DATA_HEADER_LEN, Data, FEC_HEADER_LEN, FEC_OVERHEAD, FecParity, emit_fec_header,
};

/// How FEC is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No parity is sent (parity received is still used).
    Off,
    /// Always `data:parity`.
    Fixed {
        /// Data messages per group.
        k: u8,
        /// Parity messages per group.
        m: u8,
    },
    /// Parity chosen from the loss the peer reports.
    Auto,
}

/// FEC settings of a node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// Off, fixed or adaptive.
    pub mode: Mode,
    /// The longest a partial group waits for more messages before its parity is sent.
    pub flush: Duration,
    /// `auto`: the residual loss to stay under.
    pub target_loss: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: Mode::Auto,
            flush: Duration::from_millis(5),
            target_loss: TARGET_LOSS,
        }
    }
}

/// How much longer a parity message is than the longest data message it protects: its
/// header and tag, less the data header it replaces, and the length prefix of each shard.
pub const PARITY_OVERHEAD: usize = FEC_OVERHEAD - DATA_HEADER_LEN + 2;
/// Largest group a receiver decodes: what a sender may configure. Bounds the decoding work
/// per received byte (it grows with `k`).
pub const MAX_K: u8 = 64;

/// Whether a receiver accepts parity of a `k:m` group ([`MAX_K`], at most one parity
/// message per data message, as any sender of ours uses).
pub fn acceptable_shape(k: u8, m: u8) -> bool {
    k <= MAX_K && m <= k
}

/// The residual loss `auto` holds by default. A peer in `auto` sends parity only when the
/// loss we report exceeds it (with no parity, the residual is the loss itself).
pub const TARGET_LOSS: f64 = 0.001;
/// Group size `auto` uses: big enough that parity is cheap, small enough to fill fast.
pub const AUTO_K: u8 = 20;
/// Messages longer than this are sent unprotected (the group buffers stay bounded).
pub const MAX_MESSAGE: usize = 4096;
/// Received originals kept for recovery.
pub const RING: usize = 512;
/// Open groups kept at most by a receiver.
pub const MAX_GROUPS: usize = 32;
/// A group that cannot complete is dropped after this long.
pub const GROUP_TTL: Duration = Duration::from_millis(1500);
/// A receiver keeps originals only while parity has been seen (or loss reported) this
/// recently. Long enough to bridge the pauses of bursty traffic: the first group after a
/// pause is as recoverable as any other, while a path that has stayed clean for a minute
/// costs no copy per message.
const ACTIVE_FOR: Duration = Duration::from_secs(60);
/// How often a receiver reports loss.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// After a loss onset, reports follow each other this closely until parity arrives: a new
/// path, or one whose loss appears suddenly, is protected within about an RTT plus this,
/// not a whole report interval.
pub const FAST_REPORT: Duration = Duration::from_millis(50);
/// Fast reports after one onset at most (a peer with FEC off never answers them).
const FAST_REPORTS: u8 = 10;
/// Reports with fewer expected messages carry too little information to act on.
const MIN_REPORT: u32 = 20;

/// FEC counters of one peer, for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Stats {
    /// Groups for which parity was sent.
    pub groups: u64,
    /// Data messages sent inside groups.
    pub data_shards: u64,
    /// Parity messages sent.
    pub parity_shards: u64,
    /// Parity messages received.
    pub parity_received: u64,
    /// Messages recovered from parity.
    pub recovered: u64,
    /// Groups that expired with messages still missing.
    pub groups_lost: u64,
    /// Current shape, data messages per group (0: no parity).
    pub k: u8,
    /// Current shape, parity messages per group.
    pub m: u8,
    /// Loss the peer last reported on what we send, smoothed (0..1).
    pub peer_loss: f64,
    /// Loss we measured on what we receive over the last report interval (0..1).
    pub local_loss: f64,
    /// Data messages expected in all the intervals we reported on: with `missing`, the
    /// loss seen over any span, where `local_loss` is only the last interval's.
    pub expected: u64,
    /// Of those, the ones missing before recovery.
    pub missing: u64,
}

/// The status of one peer's FEC: what we send from the encoder, what we receive from the
/// decoder.
pub fn stats(tx: Option<&Encoder>, rx: &Decoder) -> Stats {
    let mut s = rx.stats;
    if let Some(e) = tx {
        s.groups = e.stats.groups;
        s.data_shards = e.stats.data_shards;
        s.parity_shards = e.stats.parity_shards;
        s.k = e.stats.k;
        s.m = e.stats.m;
        s.peer_loss = e.stats.peer_loss;
    }
    s
}

/// The sending side of one session.
#[derive(Debug)]
pub struct Encoder {
    cfg: Config,
    k: u8,
    m: u8,
    /// The session the open group belongs to (its remote index).
    index: u32,
    first: u64,
    shards: Vec<Vec<u8>>,
    count: usize,
    shard_len: usize,
    deadline: Option<Instant>,
    codecs: BTreeMap<(u8, u8), Codec>,
    loss: Option<f64>,
    /// The loss rate `m` was last chosen for (`auto`) or last reported (fixed); sizes the
    /// parity of partial groups.
    level: f64,
    lower_votes: u8,
    pub(crate) stats: Stats,
}

impl Encoder {
    /// An encoder for `cfg`.
    pub fn new(cfg: Config) -> Self {
        let (k, m) = match cfg.mode {
            Mode::Off | Mode::Auto => (AUTO_K, 0),
            Mode::Fixed { k, m } => (k, m),
        };
        Self {
            cfg,
            k,
            m,
            index: 0,
            first: 0,
            shards: Vec::new(),
            count: 0,
            shard_len: 0,
            deadline: None,
            codecs: BTreeMap::new(),
            loss: None,
            level: 0.0,
            lower_votes: 0,
            stats: Stats {
                k,
                m,
                ..Stats::default()
            },
        }
    }

    /// Records a data message just sealed with `counter` in the session `index`; returns
    /// the parity messages to send after it when the group completes.
    pub fn push(&mut self, now: Instant, index: u32, counter: u64, msg: &[u8]) -> Vec<Vec<u8>> {
        if self.m == 0 {
            return Vec::new();
        }
        let body = msg.get(DATA_HEADER_LEN..).unwrap_or_default();
        let mut out = Vec::new();
        let continues = self.count > 0
            && index == self.index
            && self.first.checked_add(self.count as u64) == Some(counter);
        if self.count > 0 && !continues {
            out = self.finish();
        }
        if body.len() > MAX_MESSAGE {
            return out;
        }
        if self.count == 0 {
            self.index = index;
            self.first = counter;
            self.shard_len = 0;
            self.deadline = Some(now + self.cfg.flush);
        }
        if self.shards.len() <= self.count {
            self.shards.push(Vec::new());
        }
        let shard = &mut self.shards[self.count];
        shard.clear();
        shard.extend_from_slice(
            &u16::try_from(body.len())
                .expect("bounded by MAX_MESSAGE")
                .to_be_bytes(),
        );
        shard.extend_from_slice(body);
        self.shard_len = self.shard_len.max(shard.len());
        self.count += 1;
        if self.count >= usize::from(self.k) {
            out.extend(self.finish());
        }
        out
    }

    /// When the open group must be flushed.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Flushes a partial group whose time is up.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Vec<u8>> {
        match self.deadline {
            Some(d) if d <= now && self.count > 0 => self.finish(),
            _ => Vec::new(),
        }
    }

    /// Computes and returns the parity of the open group, and closes it.
    fn finish(&mut self) -> Vec<Vec<u8>> {
        let k = u8::try_from(self.count).expect("count <= k <= 255");
        let m = self.parity_of(k);
        self.count = 0;
        self.deadline = None;
        if k == 0 || m == 0 {
            return Vec::new();
        }
        let len = self.shard_len;
        for s in &mut self.shards[..usize::from(k)] {
            s.resize(len, 0);
        }
        let Some(codec) = codec(&mut self.codecs, k, m) else {
            return Vec::new();
        };
        let mut msgs: Vec<Vec<u8>> = (0..m)
            .map(|j| {
                // Room for the tag the session adds when it seals the message.
                let mut v = vec![0u8; FEC_OVERHEAD + len];
                emit_fec_header(&mut v, k, m, j, self.index, self.first);
                v
            })
            .collect();
        let data: Vec<&[u8]> = self.shards[..usize::from(k)]
            .iter()
            .map(Vec::as_slice)
            .collect();
        let mut parity: Vec<&mut [u8]> = msgs
            .iter_mut()
            .map(|v| &mut v[FEC_HEADER_LEN..FEC_HEADER_LEN + len])
            .collect();
        if codec.encode(&data, &mut parity).is_err() {
            return Vec::new();
        }
        self.stats.groups += 1;
        self.stats.data_shards += u64::from(k);
        self.stats.parity_shards += u64::from(m);
        msgs
    }

    /// Parity for a group of `k` data messages: the full shape's `m` for a full group. A
    /// partial one (flushed by the timeout) gets what holds the residual loss at the last
    /// reported loss rate: under the target for `auto`; for a fixed shape, no higher than
    /// a full group's — at least its proportion of `m` (rounded up), at most `m`.
    fn parity_of(&self, k: u8) -> u8 {
        if k >= self.k || self.m == 0 {
            return self.m;
        }
        let proportional =
            u8::try_from((u16::from(self.m) * u16::from(k)).div_ceil(u16::from(self.k)))
                .unwrap_or(self.m);
        match self.cfg.mode {
            Mode::Auto => parity_for(self.level, k, self.cfg.target_loss).clamp(1, self.m),
            Mode::Fixed { .. } | Mode::Off if self.level > 0.0 => {
                let full = residual_loss(self.level, self.k, self.m);
                parity_for(self.level, k, full).clamp(proportional, self.m)
            }
            Mode::Fixed { .. } | Mode::Off => proportional,
        }
    }

    /// Takes the peer's report of what it received: `auto` adapts the parity to it, a
    /// fixed shape only sizes partial groups by it.
    pub fn on_report(&mut self, received: u32, expected: u32) {
        if expected < MIN_REPORT {
            return;
        }
        let sample = 1.0 - f64::from(received.min(expected)) / f64::from(expected);
        let p = self
            .loss
            .map_or(sample, |l| next_estimate(l, sample, expected));
        self.loss = Some(p);
        self.stats.peer_loss = p;
        if self.cfg.mode != Mode::Auto {
            self.level = p;
            return;
        }
        let want = parity_for(p, self.k, self.cfg.target_loss);
        if want > self.m {
            self.m = want;
            self.level = p;
            self.lower_votes = 0;
        } else if want < self.m {
            self.lower_votes += 1;
            if self.lower_votes >= 3 {
                self.m = want;
                self.level = p;
                self.lower_votes = 0;
            }
        } else {
            self.lower_votes = 0;
        }
        self.stats.k = self.k;
        self.stats.m = self.m;
    }
}

/// A report's messages weigh this much against the estimate while the report is within
/// noise of it: a report of 20 messages barely moves it, one of 5,000 decides.
const EVIDENCE: f64 = 1000.0;

/// The loss estimate after a report of `sample` loss over `n` messages, from `l`.
///
/// A rise well beyond noise (three standard deviations) is believed at once: smoothing it
/// would leave the first seconds of a loss episode short of parity (from a clean path, 5
/// then 6 then 7 parity per 20 at 10% loss, where 8 are needed). A fall as clear is
/// halved towards, so one good second cannot pull `m` down. Within noise a report counts
/// by its size, so a short one cannot move the estimate: the first 20 messages after a
/// pause in traffic draw a fast report, and 4 of them lost at a steady 10% once held 14
/// parity per 20 for seconds.
fn next_estimate(l: f64, sample: f64, n: u32) -> f64 {
    let n = f64::from(n);
    let p = l.max(sample);
    let noise = 3.0 * (p * (1.0 - p) / n).sqrt();
    if sample > l + noise {
        sample
    } else if sample < l - noise {
        0.5 * (l + sample)
    } else {
        l + (sample - l) * n / (n + EVIDENCE)
    }
}

/// The least parity for groups of `k` that keeps the residual loss at loss rate `p` under
/// `target`, capped at `k`.
pub fn parity_for(p: f64, k: u8, target: f64) -> u8 {
    (0..=k)
        .find(|&m| residual_loss(p, k, m) <= target)
        .unwrap_or(k)
}

/// The probability that a data message is lost for good: lost itself, and more than `m` of
/// the other `k + m - 1` shards of its group lost too (independent losses at rate `p`).
pub fn residual_loss(p: f64, k: u8, m: u8) -> f64 {
    let n = u32::from(k) + u32::from(m) - 1;
    // P(Binomial(n, p) >= m), summed directly: n is small.
    let mut tail = 0.0;
    let mut c = 1.0f64; // C(n, i)
    for i in 0..=n {
        if i >= u32::from(m) {
            tail += c
                * p.powi(i32::try_from(i).unwrap_or(i32::MAX))
                * (1.0 - p).powi(i32::try_from(n - i).unwrap_or(i32::MAX));
        }
        c = c * f64::from(n - i) / f64::from(i + 1);
    }
    p * tail.min(1.0)
}

fn codec(cache: &mut BTreeMap<(u8, u8), Codec>, k: u8, m: u8) -> Option<&Codec> {
    if let std::collections::btree_map::Entry::Vacant(e) = cache.entry((k, m)) {
        e.insert(Codec::new(usize::from(k), usize::from(m)).ok()?);
    }
    cache.get(&(k, m))
}

/// One received original, kept for recovery.
#[derive(Debug, Default)]
struct Slot {
    index: u32,
    counter: u64,
    valid: bool,
    data: Vec<u8>,
}

/// One group the receiver has seen parity for.
#[derive(Debug)]
struct Group {
    k: u8,
    m: u8,
    parity: Vec<Option<Vec<u8>>>,
    created: Instant,
    done: bool,
}

/// The receiving side of one peer's sessions.
#[derive(Debug, Default)]
pub struct Decoder {
    active_until: Option<Instant>,
    ring: Vec<Slot>,
    groups: BTreeMap<(u32, u64), Group>,
    codecs: BTreeMap<(u8, u8), Codec>,
    /// Loss meter: originals received and highest counter, per report interval.
    received: u32,
    highest: Option<u64>,
    base: Option<u64>,
    meter_index: u32,
    next_report: Option<Instant>,
    last_report: Option<Instant>,
    /// Loss of the last report sent (0..1).
    reported_loss: f64,
    /// Fast reports left since the last loss onset.
    fast_left: u8,
    /// Parity arrived since the last report.
    parity_since_report: bool,
    pub(crate) stats: Stats,
}

impl Decoder {
    /// Whether originals must be kept (parity was seen, or loss reported, recently).
    pub fn active(&self, now: Instant) -> bool {
        self.active_until.is_some_and(|t| now < t)
    }

    /// Groups held open now (at most [`MAX_GROUPS`]).
    pub fn open_groups(&self) -> usize {
        self.groups.len()
    }

    /// Keeps a copy of a data message that is about to be opened (only while active).
    /// Returns the ring slot, to be marked valid once the message authenticated.
    pub fn keep(&mut self, now: Instant, index: u32, counter: u64, msg: &[u8]) -> Option<usize> {
        let body = msg.get(DATA_HEADER_LEN..)?;
        if !self.active(now) || body.len() > MAX_MESSAGE {
            return None;
        }
        if self.ring.is_empty() {
            self.ring.resize_with(RING, Slot::default);
        }
        let at = (counter % RING as u64) as usize;
        let slot = &mut self.ring[at];
        slot.index = index;
        slot.counter = counter;
        slot.valid = false;
        slot.data.clear();
        slot.data.extend_from_slice(body);
        Some(at)
    }

    /// The kept message in `slot` authenticated: it counts towards recovery.
    pub fn authenticated(&mut self, slot: usize) {
        if let Some(s) = self.ring.get_mut(slot) {
            s.valid = true;
        }
    }

    /// Counts an original that arrived (for the loss report).
    pub fn count(&mut self, now: Instant, index: u32, counter: u64) {
        if index != self.meter_index {
            self.meter_index = index;
            self.received = 0;
            self.base = Some(counter);
            self.highest = Some(counter);
        }
        self.received = self.received.saturating_add(1);
        self.highest = Some(self.highest.map_or(counter, |h| h.max(counter)));
        self.base.get_or_insert(counter);
        self.next_report.get_or_insert(now + REPORT_INTERVAL);
        self.watch_onset(now);
    }

    /// An original of the metered session that arrived another way (through a relay, while
    /// the path switched): not missing, though not an arrival on the path either.
    pub fn arrived_elsewhere(&mut self, index: u32, counter: u64) {
        if index == self.meter_index && self.base.is_some_and(|b| counter >= b) {
            self.received = self.received.saturating_add(1);
            self.highest = self.highest.map(|h| h.max(counter));
        }
    }

    /// Loss well above the last report's (an onset) asks for fast reports, until parity
    /// answers them or [`FAST_REPORTS`] went out.
    fn watch_onset(&mut self, now: Instant) {
        let (Some(base), Some(high)) = (self.base, self.highest) else {
            return;
        };
        let expected = high.saturating_sub(base) + 1;
        if expected < u64::from(MIN_REPORT) {
            return;
        }
        let lost = expected.saturating_sub(u64::from(self.received));
        let loss = lost as f64 / expected as f64;
        if loss <= TARGET_LOSS {
            return;
        }
        if loss > self.reported_loss * 1.5 + 0.005 && self.fast_left == 0 {
            self.fast_left = FAST_REPORTS;
        }
        if self.fast_left > 0 && !self.parity_since_report {
            let at = self.last_report.map_or(now, |t| (t + FAST_REPORT).max(now));
            self.next_report = Some(self.next_report.map_or(at, |t| t.min(at)));
        }
    }

    /// When the next loss report is due.
    pub fn report_due(&self) -> Option<Instant> {
        self.next_report
    }

    /// The loss report for the interval that ended, if one is due: `(received, expected)`.
    pub fn take_report(&mut self, now: Instant) -> Option<(u32, u32)> {
        if self.next_report.is_none_or(|t| t > now) {
            return None;
        }
        let (base, high) = (self.base?, self.highest?);
        let expected = u32::try_from(high.saturating_sub(base) + 1).unwrap_or(u32::MAX);
        let received = self.received.min(expected);
        // (A handful of messages says nothing: one probe gone on a quiet link is not 25%.)
        if expected >= MIN_REPORT {
            self.stats.local_loss = 1.0 - f64::from(received) / f64::from(expected);
        }
        self.base = Some(high + 1);
        self.received = 0;
        self.next_report = None;
        let report = (expected >= MIN_REPORT).then_some((received, expected));
        if report.is_some() {
            self.stats.expected += u64::from(expected);
            self.stats.missing += u64::from(expected - received);
            self.last_report = Some(now);
            self.reported_loss = self.stats.local_loss;
            self.fast_left = self.fast_left.saturating_sub(1);
            self.parity_since_report = false;
        }
        if report.is_some() && self.stats.local_loss > TARGET_LOSS {
            // A peer in `auto` answers this report with parity: keep the originals of its
            // first group too. Lower loss draws no parity, so it starts no copying.
            self.active_until = Some(now + ACTIVE_FOR);
        }
        report
    }

    /// Takes a parity message the session has opened (its shard in the clear); returns the
    /// data messages it allowed to recover (sealed, to be opened like any other).
    pub fn on_parity(&mut self, now: Instant, p: &FecParity<&[u8]>) -> Vec<Vec<u8>> {
        self.stats.parity_received += 1;
        self.parity_since_report = true;
        self.fast_left = 0;
        self.active_until = Some(now + ACTIVE_FOR);
        self.expire(now);
        let key = (p.index(), p.first_counter());
        if !self.groups.contains_key(&key) {
            if self.groups.len() >= MAX_GROUPS {
                let oldest = self
                    .groups
                    .iter()
                    .min_by_key(|(_, g)| g.created)
                    .map(|(k, _)| *k);
                if let Some(o) = oldest {
                    self.drop_group(o);
                }
            }
            self.groups.insert(
                key,
                Group {
                    k: p.k(),
                    m: p.m(),
                    parity: vec![None; usize::from(p.m())],
                    created: now,
                    done: false,
                },
            );
        }
        let g = self.groups.get_mut(&key).expect("just inserted");
        if g.done || g.k != p.k() || g.m != p.m() {
            return Vec::new();
        }
        g.parity[usize::from(p.j())] = Some(p.shard().to_vec());
        self.try_recover(key)
    }

    /// Drops groups older than [`GROUP_TTL`].
    pub fn expire(&mut self, now: Instant) {
        let old: Vec<(u32, u64)> = self
            .groups
            .iter()
            .filter(|(_, g)| now.saturating_duration_since(g.created) >= GROUP_TTL)
            .map(|(k, _)| *k)
            .collect();
        for k in old {
            self.drop_group(k);
        }
    }

    fn drop_group(&mut self, key: (u32, u64)) {
        if let Some(g) = self.groups.remove(&key)
            && !g.done
            && (0..u64::from(g.k)).any(|i| self.original(key.0, key.1 + i).is_none())
        {
            self.stats.groups_lost += 1;
        }
    }

    fn original(&self, index: u32, counter: u64) -> Option<&[u8]> {
        let s = self.ring.get((counter % RING as u64) as usize)?;
        (s.valid && s.index == index && s.counter == counter).then_some(&s.data[..])
    }

    fn try_recover(&mut self, key: (u32, u64)) -> Vec<Vec<u8>> {
        let g = &self.groups[&key];
        let (k, m) = (usize::from(g.k), usize::from(g.m));
        let have: Vec<bool> = (0..k)
            .map(|i| self.original(key.0, key.1 + i as u64).is_some())
            .collect();
        let missing = have.iter().filter(|h| !**h).count();
        let parity = g.parity.iter().filter(|p| p.is_some()).count();
        if missing == 0 {
            self.groups.get_mut(&key).expect("present").done = true;
            return Vec::new();
        }
        if parity < missing {
            return Vec::new();
        }
        let Some(len) = g.parity.iter().flatten().map(Vec::len).next() else {
            return Vec::new();
        };
        if g.parity.iter().flatten().any(|p| p.len() != len) {
            return Vec::new();
        }
        let mut shards: Vec<Vec<u8>> = Vec::with_capacity(k + m);
        for (i, h) in have.iter().enumerate() {
            let mut s = vec![0u8; len];
            if *h {
                let msg = self.original(key.0, key.1 + i as u64).expect("checked");
                if 2 + msg.len() > len {
                    return Vec::new();
                }
                s[..2].copy_from_slice(&u16::try_from(msg.len()).unwrap_or(0).to_be_bytes());
                s[2..2 + msg.len()].copy_from_slice(msg);
            }
            shards.push(s);
        }
        let present: Vec<bool> = have
            .iter()
            .copied()
            .chain(g.parity.iter().map(Option::is_some))
            .collect();
        shards.extend(
            g.parity
                .iter()
                .map(|p| p.clone().unwrap_or_else(|| vec![0u8; len])),
        );
        let Some(codec) = codec(&mut self.codecs, g.k, g.m) else {
            return Vec::new();
        };
        let mut refs: Vec<&mut [u8]> = shards.iter_mut().map(Vec::as_mut_slice).collect();
        if codec.reconstruct(&mut refs, &present).is_err() {
            return Vec::new();
        }
        self.groups.get_mut(&key).expect("present").done = true;
        let recovered: Vec<Vec<u8>> = have
            .iter()
            .zip(&shards)
            .enumerate()
            .filter(|(_, (h, _))| !**h)
            .filter_map(|(i, (_, s))| {
                let n = usize::from(u16::from_be_bytes([s[0], s[1]]));
                (2 + n <= s.len()).then(|| data_message(key.0, key.1 + i as u64, &s[2..2 + n]))
            })
            .collect();
        self.stats.recovered += recovered.len() as u64;
        recovered
    }
}

/// Rebuilds a data message from its group position and its shard's body.
pub fn data_message(index: u32, counter: u64, body: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; DATA_HEADER_LEN + body.len()];
    let mut d = Data::new_unchecked(&mut v[..]);
    d.set_header(index);
    d.set_counter(counter);
    v[DATA_HEADER_LEN..].copy_from_slice(body);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parity_policy() {
        assert_eq!(parity_for(0.0, 20, 0.001), 0, "no parity on a clean path");
        assert_eq!(parity_for(0.0005, 20, 0.001), 0);
        let m5 = parity_for(0.05, 20, 0.001);
        let m10 = parity_for(0.10, 20, 0.001);
        assert!(m5 > 0 && m10 > m5, "{m5} {m10}");
        assert!(m10 <= 10, "10% loss must cost at most 50%: {m10}");
        assert!(residual_loss(0.10, 20, m10) <= 0.001);
        assert_eq!(parity_for(0.6, 20, 0.001), 20, "capped at 1:1");
        // Sanity of the binomial tail: m = 0 loses exactly p.
        assert!((residual_loss(0.1, 10, 0) - 0.1).abs() < 1e-12);
    }

    fn epoch() -> Instant {
        crate::test_epoch()
    }

    /// Sends `n` messages through an encoder and returns (messages, parity).
    fn run(
        enc: &mut Encoder,
        t: Instant,
        n: u64,
        len: impl Fn(u64) -> usize,
    ) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let mut msgs = Vec::new();
        let mut parity = Vec::new();
        for c in 0..n {
            let body: Vec<u8> = (0..len(c)).map(|b| (b as u64 * 31 + c) as u8).collect();
            let m = data_message(7, c, &body);
            parity.extend(enc.push(t, 7, c, &m));
            msgs.push(m);
        }
        parity.extend(enc.handle_timeout(t + Duration::from_secs(1)));
        (msgs, parity)
    }

    /// Feeds the messages of `range` that were not `lost`, then `parity`, to a decoder the
    /// way the endpoint does (originals are kept only while it is active); returns what was
    /// recovered.
    fn deliver(
        dec: &mut Decoder,
        t: Instant,
        msgs: &[Vec<u8>],
        range: std::ops::Range<u64>,
        lost: &[u64],
        parity: &[Vec<u8>],
    ) -> Vec<Vec<u8>> {
        for c in range.filter(|c| !lost.contains(c)) {
            if let Some(slot) = dec.keep(t, 7, c, &msgs[c as usize]) {
                dec.authenticated(slot);
            }
        }
        parity
            .iter()
            .flat_map(|p| dec.on_parity(t, &FecParity::new_checked(&p[..]).unwrap()))
            .collect()
    }

    /// [`deliver`] of every message to a receiver that already keeps originals.
    fn receive(
        dec: &mut Decoder,
        t: Instant,
        msgs: &[Vec<u8>],
        lost: &[u64],
        parity: &[Vec<u8>],
    ) -> Vec<Vec<u8>> {
        dec.active_until = Some(t + ACTIVE_FOR);
        let got = deliver(dec, t, msgs, 0..msgs.len() as u64, lost, parity);
        // An active receiver kept every message that arrived, authenticated.
        for c in (0..msgs.len() as u64).filter(|c| !lost.contains(c)) {
            assert!(dec.original(7, c).is_some(), "message {c} was not kept");
        }
        got
    }

    #[test]
    fn mixed_sizes_recover_exactly() {
        let t = epoch();
        let mut enc = Encoder::new(Config {
            mode: Mode::Fixed { k: 10, m: 3 },
            ..Config::default()
        });
        let (msgs, parity) = run(&mut enc, t, 23, |c| 40 + (c as usize * 137) % 1400);
        assert_eq!(
            parity.len(),
            7,
            "two full groups with 3 parity, a partial one of 3 with 1"
        );
        let mut dec = Decoder::default();
        let lost = [0, 5, 9, 12, 18, 19, 21];
        let mut got = receive(&mut dec, t, &msgs, &lost, &parity);
        got.sort();
        let mut want: Vec<Vec<u8>> = lost.iter().map(|&c| msgs[c as usize].clone()).collect();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(dec.stats.recovered, 7);
        assert_eq!(dec.stats.groups_lost, 0);
    }

    proptest::proptest! {
        /// Any pattern of at most `m` lost messages per group is recovered exactly, for
        /// random group shapes and message sizes (partial last groups included).
        #[test]
        fn any_m_losses_per_group_are_recovered(
            k in 1u8..24,
            m in 1u8..8,
            n in 1u64..80,
            sizes in proptest::collection::vec(0usize..1500, 80),
            picks in proptest::collection::vec(proptest::num::u64::ANY, 80),
        ) {
            let t = epoch();
            let mut enc = Encoder::new(Config { mode: Mode::Fixed { k, m }, ..Config::default() });
            let (msgs, parity) = run(&mut enc, t, n, |c| sizes[c as usize]);
            // Per group, lose as many messages as that group has parity (chosen by `picks`).
            let mut lost = Vec::new();
            for (g, first) in (0..n).step_by(usize::from(k)).enumerate() {
                let len = (n - first).min(u64::from(k));
                let shards = u64::from(enc.parity_of(u8::try_from(len).unwrap()));
                let mut group: Vec<u64> = (first..first + len).collect();
                for i in 0..shards.min(len) {
                    let at = usize::try_from(picks[g] .wrapping_add(i * 7) % (len - i)).unwrap();
                    lost.push(group.swap_remove(at));
                }
            }
            let mut dec = Decoder::default();
            let mut got = receive(&mut dec, t, &msgs, &lost, &parity);
            got.sort();
            let mut want: Vec<Vec<u8>> = lost.iter().map(|&c| msgs[c as usize].clone()).collect();
            want.sort();
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn forged_and_truncated_parity_only_fails() {
        let t = epoch();
        let mut enc = Encoder::new(Config {
            mode: Mode::Fixed { k: 4, m: 2 },
            ..Config::default()
        });
        let (msgs, mut parity) = run(&mut enc, t, 4, |_| 100);
        for p in &mut parity {
            let end = p.len() - culvert_wire::message::TAG_LEN;
            for b in &mut p[FEC_HEADER_LEN..end] {
                *b ^= 0x5a;
            }
        }
        let mut dec = Decoder::default();
        let got = receive(&mut dec, t, &msgs, &[1], &parity);
        // Whatever comes out is not the real message; the session's AEAD will refuse it.
        assert!(got.iter().all(|m| m != &msgs[1]));
    }

    proptest::proptest! {
        /// Groups at the very end of the counter space: the last whole group recovers, and
        /// the arithmetic `first + i` never overflows (a parity claiming a group that would
        /// pass `u64::MAX` does not parse).
        #[test]
        fn groups_at_the_end_of_the_counter_space(back in 0u64..12, lost in 0u64..4) {
            let t = epoch();
            let mut enc = Encoder::new(Config {
                mode: Mode::Fixed { k: 4, m: 2 },
                ..Config::default()
            });
            let first = u64::MAX - back;
            let mut msgs = Vec::new();
            let mut parity = Vec::new();
            for c in first..=u64::MAX {
                let m = data_message(7, c, &[c as u8; 40]);
                parity.extend(enc.push(t, 7, c, &m));
                msgs.push((c, m));
            }
            parity.extend(enc.handle_timeout(t + Duration::from_secs(1)));
            let mut dec = Decoder {
                active_until: Some(t + ACTIVE_FOR),
                ..Decoder::default()
            };
            let victim = first.saturating_add(lost);
            for (c, m) in msgs.iter().filter(|(c, _)| *c != victim) {
                if let Some(slot) = dec.keep(t, 7, *c, m) {
                    dec.authenticated(slot);
                }
            }
            let mut got = Vec::new();
            for p in &parity {
                let view = FecParity::new_checked(&p[..]);
                proptest::prop_assert!(view.is_ok(), "our own parity must parse");
                got.extend(dec.on_parity(t, &view.unwrap()));
            }
            let want = msgs.iter().find(|(c, _)| *c == victim).map(|(_, m)| m.clone());
            proptest::prop_assert_eq!(got.first().cloned(), want);
            let mut past = parity[0].clone();
            emit_fec_header(&mut past, 4, 2, 0, 7, u64::MAX - 2);
            proptest::prop_assert!(FecParity::new_checked(&past[..]).is_err());
        }
    }

    #[test]
    fn decoder_state_is_bounded() {
        let t = epoch();
        let mut dec = Decoder::default();
        let mut buf = vec![0u8; FEC_OVERHEAD + 64];
        for g in 0..10_000u64 {
            emit_fec_header(&mut buf, 10, 3, 0, 7, g * 10);
            let _ = dec.on_parity(t, &FecParity::new_checked(&buf[..]).unwrap());
        }
        assert!(dec.groups.len() <= MAX_GROUPS);
        assert!(dec.ring.len() <= RING);
        dec.expire(t + GROUP_TTL);
        assert!(dec.groups.is_empty());
    }

    #[test]
    fn auto_reacts_and_does_not_oscillate() {
        let mut enc = Encoder::new(Config::default());
        assert_eq!(enc.m, 0);
        enc.on_report(900, 1000);
        let high = enc.m;
        assert!(high >= 5, "10% loss: {high}");
        // One clean report does not drop it; three in a row lower it gradually.
        enc.on_report(1000, 1000);
        assert_eq!(enc.m, high);
        let mut seen = vec![enc.m];
        for _ in 0..30 {
            enc.on_report(1000, 1000);
            seen.push(enc.m);
        }
        assert_eq!(enc.m, 0, "back to no parity on a clean path");
        assert!(
            seen.windows(2).all(|w| w[1] <= w[0]),
            "monotone descent: {seen:?}"
        );
        // Noisy loss around 5%: the choice stays within a narrow band.
        let mut ms = Vec::new();
        for i in 0..40 {
            enc.on_report(if i % 2 == 0 { 940 } else { 960 }, 1000);
            ms.push(enc.m);
        }
        let tail = &ms[10..];
        assert!(
            tail.iter().max().unwrap() - tail.iter().min().unwrap() <= 1,
            "{ms:?}"
        );
    }

    #[test]
    fn a_short_report_within_noise_barely_moves_the_choice() {
        let mut enc = Encoder::new(Config::default());
        for _ in 0..5 {
            enc.on_report(4500, 5000);
        }
        let steady = enc.m;
        assert_eq!(steady, parity_for(0.1, AUTO_K, 0.001));
        // 4 of 20 lost is no evidence against 10% (it held 14 parity per 20 for seconds).
        enc.on_report(16, 20);
        assert_eq!(enc.m, steady);
        // Nor is a short clean one evidence of a clean path.
        for _ in 0..3 {
            enc.on_report(20, 20);
        }
        assert_eq!(enc.m, steady);
        // A large report beyond noise still counts at once.
        enc.on_report(4000, 5000);
        assert_eq!(enc.m, parity_for(0.2, AUTO_K, 0.001));
    }

    #[test]
    fn first_group_after_a_loss_report_or_a_pause_is_recovered() {
        let t = epoch();
        let fixed = Config {
            mode: Mode::Fixed { k: 10, m: 3 },
            ..Config::default()
        };
        // Two groups of 10, 3 parity each.
        let (msgs, parity) = run(&mut Encoder::new(fixed), t, 20, |_| 900);
        // A loss report primes a receiver that never saw parity: the first group the peer
        // protects in answer is recoverable.
        let mut dec = Decoder::default();
        for c in (100..200u64).filter(|c| c % 10 != 0) {
            dec.count(t, 7, c);
        }
        let t1 = t + REPORT_INTERVAL;
        assert_eq!(dec.take_report(t1), Some((90, 99)));
        assert_eq!(
            deliver(&mut dec, t1, &msgs, 0..10, &[4], &parity[..3]).len(),
            1
        );
        // Traffic resumes after a 30 s pause: its first group is recovered too.
        let t2 = t1 + Duration::from_secs(30);
        assert_eq!(
            deliver(&mut dec, t2, &msgs, 10..20, &[10], &parity[3..]).len(),
            1
        );
        // A path with neither loss nor parity for longer than that copies nothing.
        let idle = t2 + ACTIVE_FOR + Duration::from_secs(1);
        assert!(!dec.active(idle));
        assert_eq!(dec.keep(idle, 7, 10, &msgs[10]), None);
        // A report of loss that draws no parity from an `auto` peer starts no copying.
        let mut quiet = Decoder::default();
        for c in (0..2000u64).filter(|&c| c != 7) {
            quiet.count(t, 7, c);
        }
        assert_eq!(quiet.take_report(t1), Some((1999, 2000)));
        assert!(!quiet.active(t1));
        // Without the report, a fresh receiver cannot recover the first group.
        let mut cold = Decoder::default();
        assert_eq!(
            deliver(&mut cold, t1, &msgs, 0..10, &[4], &parity[..3]).len(),
            0
        );
    }

    #[test]
    fn loss_rising_on_a_clean_path_gets_full_parity_at_the_first_report() {
        let mut enc = Encoder::new(Config::default());
        for _ in 0..5 {
            enc.on_report(5000, 5000);
        }
        assert_eq!(enc.m, 0);
        enc.on_report(4500, 5000);
        assert_eq!(enc.m, parity_for(0.1, AUTO_K, 0.001), "10% at once");
        // A fall is smoothed: one report of 5% does not lower it.
        enc.on_report(4750, 5000);
        assert_eq!(enc.m, parity_for(0.1, AUTO_K, 0.001));
    }

    #[test]
    fn loss_meter() {
        let t = epoch();
        let mut dec = Decoder::default();
        for c in 0..100u64 {
            if c % 10 != 0 {
                dec.count(t, 1, c);
            }
        }
        // 10% loss out of nothing is an onset: reported at once, not a second later.
        assert_eq!(
            dec.take_report(t),
            Some((90, 99)),
            "an onset is reported at once"
        );
        // The next ones follow FAST_REPORT apart while no parity comes, at most
        // FAST_REPORTS of them; steady loss afterwards is reported once a second.
        let mut at = t;
        let mut fast = 1;
        for round in 1..40u64 {
            at += FAST_REPORT;
            for c in 0..100u64 {
                if c % 10 != 0 {
                    dec.count(at, 1, round * 100 + c);
                }
            }
            if dec.take_report(at).is_some() {
                fast += 1;
            }
        }
        // FAST_REPORTS in the first half second, then one regular report a second later.
        assert_eq!(
            fast,
            usize::from(FAST_REPORTS) + 1,
            "reports in 2 s after one onset"
        );
        // Parity ends the fast reports at once.
        let mut quiet = Decoder::default();
        for c in 0..40u64 {
            if c % 10 != 0 {
                quiet.count(t, 1, c);
            }
        }
        assert!(quiet.take_report(t).is_some());
        let mut p = vec![0u8; FEC_OVERHEAD + 4];
        emit_fec_header(&mut p, 4, 1, 0, 1, 1000);
        let _ = quiet.on_parity(t, &FecParity::new_checked(&p[..]).unwrap());
        for c in 40..80u64 {
            if c % 10 != 0 {
                quiet.count(t + FAST_REPORT, 1, c);
            }
        }
        assert_eq!(quiet.take_report(t + FAST_REPORT), None);
        assert!(
            quiet
                .take_report(t + REPORT_INTERVAL + FAST_REPORT)
                .is_some()
        );
    }
}
