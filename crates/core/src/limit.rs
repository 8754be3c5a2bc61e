//! A fixed-window rate counter, used for load detection, unauthenticated replies and logs.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window() {
        let t = crate::test_epoch();
        let mut w = RateWindow::new(2, Duration::from_secs(1));
        assert!(w.allow(t) && w.allow(t) && !w.allow(t));
        assert_eq!(w.take_suppressed(), 1);
        assert!(w.allow(t + Duration::from_secs(1)));
    }
}
