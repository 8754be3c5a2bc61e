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
//! bounded per key and overall; the oldest entries give way.

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

    /// Files a handshake under `index`; returns the indices of the entries it displaced
    /// (the oldest of its key beyond [`PER_KEY`], the oldest overall beyond [`CAPACITY`]).
    pub fn insert(&mut self, index: u32, pending: Pending) -> Vec<u32> {
        let mut displaced = Vec::new();
        let same_key: Vec<(u32, Instant)> = self
            .entries
            .iter()
            .filter(|(_, p)| p.key == pending.key)
            .map(|(i, p)| (*i, p.session.established))
            .collect();
        if same_key.len() >= PER_KEY
            && let Some((i, _)) = same_key.iter().min_by_key(|(_, t)| *t)
        {
            displaced.push(*i);
        }
        for i in &displaced {
            self.entries.remove(i);
        }
        if self.entries.len() >= CAPACITY
            && let Some(i) = self.oldest()
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

    fn oldest(&self) -> Option<u32> {
        self.entries
            .iter()
            .min_by_key(|(_, p)| p.session.established)
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

    fn entry(n: u32, timestamp: u64, at: Instant) -> Pending {
        let (mut s, _) = crate::session::tests::pair(Cipher::Aes256Gcm);
        s.established = at;
        Pending {
            session: s,
            key: key(n),
            claim: Claim::Peer(PeerId(n)),
            source: Source::Relay {
                node: PeerId(n),
                via: PeerId::HUB,
            },
            timestamp,
        }
    }

    #[test]
    fn bounded_per_key_and_overall() {
        let t = crate::test_epoch();
        let mut table = PendingTable::default();
        for i in 0..10u32 {
            let at = t + Duration::from_millis(u64::from(i));
            let displaced = table.insert(i, entry(1, u64::from(i), at));
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

    proptest::proptest! {
        /// Whatever arrives, in whatever order: the table stays within its bounds, an
        /// entry is found by the index it was filed under until it goes, and what it says it
        /// displaced is gone.
        #[test]
        fn bounds_hold_under_any_sequence(ops in proptest::collection::vec((0u8..4, 0u32..40, 0u64..8, 0u64..40), 1..600)) {
            let t = crate::test_epoch();
            let mut table = PendingTable::default();
            let mut live = std::collections::BTreeSet::new();
            for (n, (op, k, ts, ms)) in ops.into_iter().enumerate() {
                let index = n as u32 + 1;
                let now = t + Duration::from_millis(ms * 500);
                match op {
                    0 | 1 => {
                        for gone in table.insert(index, entry(k, ts, now)) {
                            proptest::prop_assert!(live.remove(&gone));
                            proptest::prop_assert!(!table.contains(gone));
                        }
                        live.insert(index);
                    }
                    2 => {
                        if let Some(&i) = live.iter().next() {
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
        table.insert(1, entry(1, 10, t));
        table.insert(2, entry(1, 11, t));
        table.insert(3, entry(1, 12, t + LIFETIME));
        assert!(table.has(&key(1), 11));
        assert!(!table.has(&key(1), 13));
        assert_eq!(table.supersede(&key(1), 11), vec![1, 2]);
        assert_eq!(table.expire(t + LIFETIME), Vec::<u32>::new());
        assert_eq!(table.expire(t + 2 * LIFETIME), vec![3]);
        assert!(table.is_empty());
    }
}
