//! Per-source budgets: how much unauthenticated work one source may cause per second.
//!
//! A global rate limit alone lets one flooding source use up what every real client needs
//! (SYN-ACKs, handshake replies). A [`SourceBudget`] counts per source *prefix* (a /24 or a
//! /64, say, so that one host cannot spread itself over its neighbours' addresses) in a
//! fixed array of buckets: memory is bounded whatever the number of sources. Buckets are
//! chosen by a MAC under a random key, so an attacker cannot aim at a victim's bucket;
//! two prefixes that share one by chance share its budget. Relayed handshakes, which have
//! no address of their own, count per origin node and relay in the same buckets.

use core::net::IpAddr;
use std::time::{Duration, Instant};

use crate::keys::mac16;
use crate::rng::Rng;

/// Buckets per budget: 4096 counters, 16 KiB.
const BUCKETS: usize = 4096;

/// Counts events per source prefix per window.
#[derive(Debug, Clone)]
pub struct SourceBudget {
    key: [u8; 32],
    v4_prefix: u8,
    v6_prefix: u8,
    limit: u32,
    window: Duration,
    started: Option<Instant>,
    counts: Vec<u32>,
}

impl SourceBudget {
    /// At most `limit` events per `window` from each IPv4 `/v4_prefix` and IPv6
    /// `/v6_prefix`.
    pub fn new(rng: &mut Rng, limit: u32, window: Duration, v4_prefix: u8, v6_prefix: u8) -> Self {
        Self {
            key: rng.array(),
            v4_prefix: v4_prefix.min(32),
            v6_prefix: v6_prefix.min(128),
            limit,
            window,
            started: None,
            counts: vec![0; BUCKETS],
        }
    }

    /// Counts one event from `ip`; true if its prefix is still within the budget.
    pub fn allow(&mut self, now: Instant, ip: IpAddr) -> bool {
        let b = self.bucket(ip);
        self.count(now, b)
    }

    /// Counts one event from overlay node `origin` passed on by neighbour `via` (a source
    /// with no address of its own here; a relay that lies about origins spends only its
    /// own share); true if it is still within the budget.
    pub fn allow_relayed(&mut self, now: Instant, origin: u32, via: u32) -> bool {
        let m = mac16(
            &self.key,
            &[b"node", &origin.to_le_bytes(), &via.to_le_bytes()],
        );
        self.count(now, usize::from(u16::from_le_bytes([m[0], m[1]])) % BUCKETS)
    }

    fn count(&mut self, now: Instant, b: usize) -> bool {
        match self.started {
            Some(s) if now.saturating_duration_since(s) < self.window => {}
            _ => {
                self.started = Some(now);
                self.counts.fill(0);
            }
        }
        let c = &mut self.counts[b];
        *c = c.saturating_add(1);
        *c <= self.limit
    }

    fn bucket(&self, ip: IpAddr) -> usize {
        let (bytes, len): ([u8; 16], u8) = match ip.to_canonical() {
            IpAddr::V4(a) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&a.octets());
                (b, self.v4_prefix)
            }
            IpAddr::V6(a) => (a.octets(), self.v6_prefix),
        };
        let mut masked = bytes;
        for (i, byte) in masked.iter_mut().enumerate() {
            let bits = usize::from(len).saturating_sub(i * 8).min(8);
            *byte &= !(0xffu8.checked_shr(bits as u32).unwrap_or(0));
        }
        let family = [u8::from(ip.to_canonical().is_ipv4()), len];
        let m = mac16(&self.key, &[&family, &masked]);
        usize::from(u16::from_le_bytes([m[0], m[1]])) % BUCKETS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(limit: u32) -> SourceBudget {
        SourceBudget::new(
            &mut Rng::from_seed([4; 32]),
            limit,
            Duration::from_secs(1),
            24,
            64,
        )
    }

    #[test]
    fn one_prefix_cannot_spend_another_s_budget() {
        let t = crate::test_epoch();
        let mut b = budget(3);
        let flood = |i: u8| IpAddr::from([203, 0, 113, i]);
        let spent = (0..200).filter(|i| b.allow(t, flood(*i as u8))).count();
        assert_eq!(spent, 3, "the whole /24 shares one budget");
        assert!(
            b.allow(t, IpAddr::from([198, 18, 1, 2])),
            "another prefix is unaffected"
        );
        let v6 = |i: u16| IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, i]);
        assert_eq!((0..50).filter(|i| b.allow(t, v6(*i))).count(), 3);
        assert!(
            b.allow(t + Duration::from_secs(1), flood(1)),
            "a new window"
        );
    }

    #[test]
    fn mapped_addresses_count_as_ipv4() {
        let t = crate::test_epoch();
        let mut b = budget(1);
        assert!(b.allow(t, "198.18.1.2".parse().unwrap()));
        assert!(!b.allow(t, "::ffff:198.18.1.9".parse().unwrap()));
    }
}
