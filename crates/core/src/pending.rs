//! Responder handshakes waiting for their initiator to prove its static key.
//!
//! In `IXpsk0` the initiator's static key travels in message 1 sealed only under the PSK:
//! anyone who holds the PSK — every member in passphrase mode, anyone who knows the hub's
//! public key in key mode — can *claim* any public key there. The claim is proven only by
//! the first data message, which opens under the handshake's keys only if its sender holds
//! the static private key. So a responder answers message 1, files what it asked for here,
//! and changes nothing else: no peer, address, route, directory entry, node id or client
//! slot, and no session of the claimed key. [`PendingTable::take`] hands the entry back
//! once a data message has opened under it; only then does the node act.
//!
//! Several handshakes per key may wait at once (a duplicated or replayed message 1, a
//! forged claim, the real initiator's retry): the one that confirms wins. The table is
//! bounded per key and overall, and a claim must never push out the handshake that will
//! confirm. So each entry has a [`Standing`] — how hard its source is to forge — and a
//! source class (its IP address, or the neighbour that relayed it): one entry per class and
//! key (the newest: an initiator retries from where it is), and when room runs out the
//! lowest standing goes first, the oldest among equals; a newcomer never displaces an entry
//! that stands higher. The responder asks a spoofable source for a cookie before it files
//! a second handshake for a key ([`PendingTable::waits_for`]), so a flood of forged claims
//! from addresses the forger cannot receive at files at most one entry at a time.

use core::net::IpAddr;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use culvert_wire::addr::Prefix;

use crate::keys::PublicKey;
use crate::peer::{PeerId, Source};
use crate::session::Session;

/// Handshakes of one key that may wait at once.
pub const PER_KEY: usize = 4;
/// Handshakes that may wait at once in all.
pub const CAPACITY: usize = 1024;
/// An unconfirmed handshake is forgotten after this long. An initiator confirms at once
/// (a client's join with a ping, a peer session with an empty message); a lost
/// confirmation is followed by the initiator's next keepalive or a new handshake.
pub const LIFETIME: Duration = Duration::from_secs(15);

/// What a confirmed handshake makes of its initiator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// A client joining the hub, with the node id and addresses its Welcome promised.
    Join {
        /// The node id (the key's existing one, or a free one reserved here).
        node: PeerId,
        /// The addresses granted.
        granted: Vec<Prefix>,
        /// The routes accepted (subnets behind it).
        routes: Vec<Prefix>,
    },
    /// An end-to-end session with this node of the directory.
    Peer(PeerId),
}

impl Claim {
    /// The node the claim is about.
    pub fn node(&self) -> PeerId {
        match self {
            Self::Join { node, .. } => *node,
            Self::Peer(id) => *id,
        }
    }
}

/// How hard it is to forge where a waiting handshake came from; higher stands firmer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Standing {
    /// From an address nobody proved to receive at: anyone can send from it.
    Unverified,
    /// From an address that returned our cookie, or through an authenticated neighbour.
    Verified,
    /// Verified, and on the path the claimed node's current session uses.
    OnPath,
}

/// Where a handshake came from, as far as one source may hold one entry per key: an IP
/// address (a new port is the same initiator behind a NAT that rebound), or a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceClass {
    /// Straight from this address.
    Addr(IpAddr),
    /// Passed on by this neighbour.
    Via(PeerId),
}

impl From<Source> for SourceClass {
    fn from(s: Source) -> Self {
        match s {
            Source::Addr(r) => Self::Addr(r.addr.ip().to_canonical()),
            Source::Relay { via, .. } => Self::Via(via),
        }
    }
}

/// One handshake awaiting confirmation.
#[derive(Debug)]
pub struct Pending {
    /// The responder session, usable for opening only until confirmed.
    pub session: Session,
    /// The static key message 1 claimed.
    pub key: PublicKey,
    /// What confirmation will do.
    pub claim: Claim,
    /// Where message 1 came from.
    pub source: Source,
    /// The hello timestamp; the key's replay floor once confirmed.
    pub timestamp: u64,
    /// How hard `source` is to forge.
    pub standing: Standing,
}

impl Pending {
    fn rank(&self) -> (Standing, Instant) {
        (self.standing, self.session.established)
    }
}

/// Every pending handshake of a node, by the local index its session registered.
#[derive(Debug, Default)]
pub struct PendingTable {
    entries: BTreeMap<u32, Pending>,
}

impl PendingTable {
    /// Whether `index` belongs to a pending handshake.
    pub fn contains(&self, index: u32) -> bool {
        self.entries.contains_key(&index)
    }

    /// Handshakes waiting now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// More than half full: the responder asks for cookies before filing more.
    pub fn under_pressure(&self) -> bool {
        self.entries.len() > CAPACITY / 2
    }

    /// Whether a handshake of `key` with this hello timestamp already waits: the same
    /// message 1 again (a network that duplicates, or a replay).
    pub fn has(&self, key: &PublicKey, timestamp: u64) -> bool {
        self.entries
            .values()
            .any(|p| p.key == *key && p.timestamp == timestamp)
    }

    /// The node id a pending join of `key` was promised, if one waits.
    pub fn promised_node(&self, key: &PublicKey) -> Option<PeerId> {
        self.entries.values().find_map(|p| match &p.claim {
            Claim::Join { node, .. } if p.key == *key => Some(*node),
            _ => None,
        })
    }

    /// Whether a pending join was promised node id `id`.
    pub fn reserves(&self, id: PeerId) -> bool {
        self.entries
            .values()
            .any(|p| matches!(p.claim, Claim::Join { node, .. } if node == id))
    }

    /// Whether a handshake about node `id` waits (its rekey, say).
    pub fn concerns(&self, id: PeerId) -> bool {
        self.entries.values().any(|p| p.claim.node() == id)
    }

    /// Whether a handshake for `key` waits already: another one from a source that
    /// could be spoofed must prove its address (a cookie) before it is filed.
    pub fn waits_for(&self, key: &PublicKey) -> bool {
        self.entries.values().any(|p| p.key == *key)
    }

    /// Whether a handshake for `key` from `class` with `standing` may be filed: only by
    /// displacing entries that stand no higher (the same source's older one, then the
    /// lowest of its key, then the lowest overall).
    pub fn has_room(&self, key: &PublicKey, class: SourceClass, standing: Standing) -> bool {
        let of_key = || self.entries.values().filter(|p| p.key == *key);
        if let Some(same) = of_key().find(|p| SourceClass::from(p.source) == class) {
            return same.standing <= standing;
        }
        let key_full = of_key().count() >= PER_KEY;
        let lowest_of_key = of_key().map(|p| p.standing).min();
        let lowest = self.entries.values().map(|p| p.standing).min();
        (!key_full || lowest_of_key.is_some_and(|s| s <= standing))
            && (self.entries.len() < CAPACITY || lowest.is_some_and(|s| s <= standing))
    }

    /// Files a handshake under `index` (the caller checked [`PendingTable::has_room`]);
    /// returns the indices of the entries it displaced: its source's older entry for the
    /// key, else the lowest-standing oldest of its key beyond [`PER_KEY`], and the
    /// lowest-standing oldest overall beyond [`CAPACITY`].
    pub fn insert(&mut self, index: u32, pending: Pending) -> Vec<u32> {
        let class = SourceClass::from(pending.source);
        let of_key = |p: &Pending| p.key == pending.key;
        let same_source = self
            .entries
            .iter()
            .find(|(_, p)| of_key(p) && SourceClass::from(p.source) == class)
            .map(|(i, _)| *i);
        let mut displaced = Vec::new();
        if let Some(i) = same_source {
            displaced.push(i);
        } else if self.entries.values().filter(|p| of_key(p)).count() >= PER_KEY
            && let Some(i) = self.lowest(of_key)
        {
            displaced.push(i);
        }
        for i in &displaced {
            self.entries.remove(i);
        }
        if self.entries.len() >= CAPACITY
            && let Some(i) = self.lowest(|_| true)
        {
            self.entries.remove(&i);
            displaced.push(i);
        }
        self.entries.insert(index, pending);
        displaced
    }

    /// The entry of `index`, to try opening a data message with it.
    pub fn get_mut(&mut self, index: u32) -> Option<&mut Pending> {
        self.entries.get_mut(&index)
    }

    /// Takes the entry of `index` out: it was confirmed.
    pub fn take(&mut self, index: u32) -> Option<Pending> {
        self.entries.remove(&index)
    }

    /// Removes the entries of `key` that a confirmed handshake with `timestamp` makes
    /// moot (not newer than it); returns their indices.
    pub fn supersede(&mut self, key: &PublicKey, timestamp: u64) -> Vec<u32> {
        self.remove_where(|p| p.key == *key && p.timestamp <= timestamp)
    }

    /// Removes the entries about node `id` (it left, or its key changed).
    pub fn forget(&mut self, id: PeerId) -> Vec<u32> {
        self.remove_where(|p| p.claim.node() == id)
    }

    /// Removes the entries older than [`LIFETIME`]; returns their indices.
    pub fn expire(&mut self, now: Instant) -> Vec<u32> {
        self.remove_where(|p| now.saturating_duration_since(p.session.established) >= LIFETIME)
    }

    /// When the oldest entry expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.entries
            .values()
            .map(|p| p.session.established + LIFETIME)
            .min()
    }

    /// The entry among `which` that gives way first: the lowest standing, the oldest.
    fn lowest(&self, which: impl Fn(&Pending) -> bool) -> Option<u32> {
        self.entries
            .iter()
            .filter(|(_, p)| which(p))
            .min_by_key(|(_, p)| p.rank())
            .map(|(i, _)| *i)
    }

    fn remove_where(&mut self, f: impl Fn(&Pending) -> bool) -> Vec<u32> {
        let gone: Vec<u32> = self
            .entries
            .iter()
            .filter(|(_, p)| f(p))
            .map(|(i, _)| *i)
            .collect();
        for i in &gone {
            self.entries.remove(i);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use culvert_wire::hello::Cipher;

    fn key(n: u32) -> PublicKey {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&n.to_le_bytes());
        PublicKey(k)
    }

    /// A handshake for key `n` relayed by neighbour `via`, verified.
    fn entry(n: u32, timestamp: u64, at: Instant) -> Pending {
        from(n, timestamp, at, n + 1000, Standing::Verified)
    }

    fn from(n: u32, timestamp: u64, at: Instant, via: u32, standing: Standing) -> Pending {
        let (mut s, _) = crate::session::tests::pair(Cipher::Aes256Gcm);
        s.established = at;
        Pending {
            session: s,
            key: key(n),
            claim: Claim::Peer(PeerId(n)),
            source: Source::Relay {
                node: PeerId(n),
                via: PeerId(via),
            },
            timestamp,
            standing,
        }
    }

    #[test]
    fn bounded_per_key_and_overall() {
        let t = crate::test_epoch();
        let mut table = PendingTable::default();
        for i in 0..10u32 {
            let at = t + Duration::from_millis(u64::from(i));
            let displaced = table.insert(i, from(1, u64::from(i), at, i, Standing::Verified));
            if i >= PER_KEY as u32 {
                assert_eq!(
                    displaced,
                    vec![i - PER_KEY as u32],
                    "the oldest of the key goes"
                );
            }
        }
        assert_eq!(table.len(), PER_KEY);
        for i in 0..CAPACITY as u32 + 10 {
            table.insert(100 + i, entry(i + 2, 1, t));
        }
        assert_eq!(table.len(), CAPACITY);
        assert!(table.under_pressure());
    }

    #[test]
    fn one_entry_per_source_and_key_the_newest() {
        let t = crate::test_epoch();
        let mut table = PendingTable::default();
        table.insert(1, from(1, 1, t, 7, Standing::Verified));
        assert_eq!(
            table.insert(2, from(1, 2, t, 7, Standing::Verified)),
            vec![1]
        );
        assert_eq!(
            table.insert(3, from(1, 3, t, 8, Standing::Verified)),
            Vec::<u32>::new()
        );
        assert_eq!(
            table.insert(4, from(2, 3, t, 7, Standing::Verified)),
            Vec::<u32>::new()
        );
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn a_lower_standing_never_displaces_a_higher_one() {
        let t = crate::test_epoch();
        let mut table = PendingTable::default();
        let class = |via| SourceClass::Via(PeerId(via));
        table.insert(1, from(1, 1, t, 1, Standing::OnPath));
        for via in 2..=PER_KEY as u32 {
            table.insert(via, from(1, 1, t, via, Standing::Verified));
        }
        let later = t + Duration::from_secs(1);
        assert!(!table.has_room(&key(1), class(9), Standing::Unverified));
        assert!(
            !table.has_room(&key(1), class(1), Standing::Verified),
            "the same source, lower"
        );
        assert!(table.has_room(&key(1), class(9), Standing::Verified));
        let gone = table.insert(9, from(1, 2, later, 9, Standing::Verified));
        assert_eq!(gone, vec![2], "the oldest of the lowest standing");
        assert!(table.contains(1), "the on-path handshake stays");
        assert!(table.waits_for(&key(1)) && !table.waits_for(&key(2)));
    }

    proptest::proptest! {
        /// Whatever arrives, in whatever order: the table stays within its bounds, an
        /// entry is found by the index it was filed under until it goes, what it says it
        /// displaced is gone, and nothing that stands higher than a newcomer makes way
        /// for it.
        #[test]
        fn bounds_hold_under_any_sequence(ops in proptest::collection::vec((0u8..4, 0u32..40, 0u64..8, 0u64..40, 0u32..6, 0u8..3), 1..600)) {
            let t = crate::test_epoch();
            let mut table = PendingTable::default();
            let mut live = BTreeMap::new();
            let standings = [Standing::Unverified, Standing::Verified, Standing::OnPath];
            for (n, (op, k, ts, ms, via, st)) in ops.into_iter().enumerate() {
                let index = n as u32 + 1;
                let now = t + Duration::from_millis(ms * 500);
                let standing = standings[usize::from(st)];
                match op {
                    0 | 1 => {
                        if !table.has_room(&key(k), SourceClass::Via(PeerId(via)), standing) {
                            continue;
                        }
                        for gone in table.insert(index, from(k, ts, now, via, standing)) {
                            let was = live.remove(&gone);
                            proptest::prop_assert!(was.is_some_and(|s| s <= standing));
                            proptest::prop_assert!(!table.contains(gone));
                        }
                        live.insert(index, standing);
                    }
                    2 => {
                        if let Some(&i) = live.keys().next() {
                            proptest::prop_assert!(table.take(i).is_some());
                            live.remove(&i);
                        }
                    }
                    _ => {
                        for gone in table.expire(now + LIFETIME) {
                            live.remove(&gone);
                        }
                    }
                }
                proptest::prop_assert_eq!(table.len(), live.len());
                proptest::prop_assert!(table.len() <= CAPACITY);
                for k in 0..40 {
                    let of_key = table.entries.values().filter(|p| p.key == key(k)).count();
                    proptest::prop_assert!(of_key <= PER_KEY);
                }
            }
        }
    }

    #[test]
    fn duplicates_supersession_and_expiry() {
        let t = crate::test_epoch();
        let mut table = PendingTable::default();
        table.insert(1, from(1, 10, t, 1, Standing::Verified));
        table.insert(2, from(1, 11, t, 2, Standing::Verified));
        table.insert(3, from(1, 12, t + LIFETIME, 3, Standing::Verified));
        assert!(table.has(&key(1), 11));
        assert!(!table.has(&key(1), 13));
        assert_eq!(table.supersede(&key(1), 11), vec![1, 2]);
        assert_eq!(table.expire(t + LIFETIME), Vec::<u32>::new());
        assert_eq!(table.expire(t + 2 * LIFETIME), vec![3]);
        assert!(table.is_empty());
    }
}
