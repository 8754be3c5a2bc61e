//! Rate limits: a fixed-window event counter (load detection, unauthenticated replies,
//! logs) and a byte bucket (what a client relays for others).

use std::time::{Duration, Instant};

/// Counts events per window and says whether the limit is exceeded.
#[derive(Debug, Clone)]
pub struct RateWindow {
    period: Duration,
    limit: u32,
    start: Option<Instant>,
    count: u32,
    suppressed: u32,
}

impl RateWindow {
    /// At most `limit` events per `period`.
    pub fn new(limit: u32, period: Duration) -> Self {
        Self {
            period,
            limit,
            start: None,
            count: 0,
            suppressed: 0,
        }
    }

    /// Counts one event; true if it is within the limit.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.start {
            Some(s) if now.saturating_duration_since(s) < self.period => {}
            _ => {
                self.start = Some(now);
                self.count = 0;
            }
        }
        self.count = self.count.saturating_add(1);
        let ok = self.count <= self.limit;
        if !ok {
            self.suppressed = self.suppressed.saturating_add(1);
        }
        ok
    }

    /// Events refused since the last call (for "N similar messages suppressed").
    pub fn take_suppressed(&mut self) -> u32 {
        core::mem::take(&mut self.suppressed)
    }
}

/// A token bucket of bytes: `rate` per second, bursts up to a quarter second's worth.
#[derive(Debug, Clone)]
pub struct ByteBucket {
    rate: u64,
    tokens: u64,
    at: Option<Instant>,
}

impl ByteBucket {
    /// At most `rate` bytes per second.
    pub fn new(rate: u64) -> Self {
        Self {
            rate,
            tokens: Self::burst(rate),
            at: None,
        }
    }

    fn burst(rate: u64) -> u64 {
        (rate / 4).max(64 * 1024)
    }

    /// Takes `n` bytes; false (and nothing taken) if the bucket holds fewer.
    pub fn take(&mut self, now: Instant, n: usize) -> bool {
        if let Some(at) = self.at {
            let dt = now.saturating_duration_since(at);
            let refill =
                u64::try_from(dt.as_micros().saturating_mul(u128::from(self.rate)) / 1_000_000)
                    .unwrap_or(u64::MAX);
            self.tokens = self
                .tokens
                .saturating_add(refill)
                .min(Self::burst(self.rate));
        }
        self.at = Some(now);
        let n = n as u64;
        if self.tokens < n {
            return false;
        }
        self.tokens -= n;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket() {
        let t = crate::test_epoch();
        let mut b = ByteBucket::new(1_000_000);
        assert!(b.take(t, 250_000), "a burst of a quarter second");
        assert!(!b.take(t, 1), "then empty");
        assert!(
            b.take(t + Duration::from_millis(10), 10_000),
            "refilled at the rate"
        );
        assert!(!b.take(t + Duration::from_millis(10), 1_000));
        assert!(
            b.take(t + Duration::from_secs(60), 250_000),
            "capped at the burst"
        );
        assert!(!b.take(t + Duration::from_secs(60), 1));
    }

    #[test]
    fn window() {
        let t = crate::test_epoch();
        let mut w = RateWindow::new(2, Duration::from_secs(1));
        assert!(w.allow(t) && w.allow(t) && !w.allow(t));
        assert_eq!(w.take_suppressed(), 1);
        assert!(w.allow(t + Duration::from_secs(1)));
    }
}
