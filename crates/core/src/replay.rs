//! Sliding anti-replay window over 64-bit message counters (RFC 6479's ring of words).
//!
//! [`ReplayWindow::check`] runs before decryption, so a replayed or ancient packet costs no
//! AEAD work; [`ReplayWindow::mark`] runs after the tag verified, so a forged counter can
//! never move the window.

/// Bits per ring word.
const WORD_BITS: u64 = 64;
/// Words in the ring; one word is always being rotated in, so the usable window is
/// `(WORDS - 1) * 64` counters.
const WORDS: usize = 64;
/// How far behind the highest counter seen a packet may arrive and still be accepted.
pub const WINDOW: u64 = (WORDS as u64 - 1) * WORD_BITS;
/// Counters at or beyond this are never accepted (the sender must rekey before it).
pub const COUNTER_LIMIT: u64 = u64::MAX - WINDOW - 1;

/// Which counters of a session have been received.
#[derive(Clone)]
pub struct ReplayWindow {
    /// Highest counter accepted so far (0 before the first).
    last: u64,
    ring: [u64; WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self {
            last: 0,
            ring: [0; WORDS],
        }
    }
}

impl core::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

/// Why a counter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Already received.
    Duplicate,
    /// Older than the window.
    TooOld,
    /// At or past [`COUNTER_LIMIT`].
    Exhausted,
}

impl ReplayWindow {
    /// Records `counter` as received. Call only after the message authenticated.
    pub fn mark(&mut self, counter: u64) -> Result<(), Refused> {
        self.check(counter)?;
        let block = counter / WORD_BITS;
        if counter > self.last {
            let current = self.last / WORD_BITS;
            let advance = (block - current).min(WORDS as u64);
            for i in 1..=advance {
                self.ring[((current + i) % WORDS as u64) as usize] = 0;
            }
            self.last = counter;
        }
        self.ring[(block % WORDS as u64) as usize] |= 1 << (counter % WORD_BITS);
        Ok(())
    }

    /// Tells whether `counter` would be accepted, without changing the window.
    pub fn check(&self, counter: u64) -> Result<(), Refused> {
        if counter >= COUNTER_LIMIT {
            return Err(Refused::Exhausted);
        }
        if counter > self.last {
            return Ok(());
        }
        if self.last - counter > WINDOW {
            return Err(Refused::TooOld);
        }
        let word = self.ring[((counter / WORD_BITS) % WORDS as u64) as usize];
        if word & (1 << (counter % WORD_BITS)) != 0 {
            return Err(Refused::Duplicate);
        }
        Ok(())
    }

    /// Highest counter accepted so far.
    pub fn last(&self) -> u64 {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn edges() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.mark(0), Ok(()));
        assert_eq!(w.mark(0), Err(Refused::Duplicate));
        assert_eq!(w.mark(2), Ok(()));
        assert_eq!(w.mark(1), Ok(()));
        assert_eq!(w.mark(1), Err(Refused::Duplicate));
        assert_eq!(w.mark(WINDOW + 2), Ok(()));
        assert_eq!(w.check(3), Ok(()), "inside the window and never seen");
        assert_eq!(
            w.check(2),
            Err(Refused::Duplicate),
            "exactly WINDOW behind is still inside"
        );
        assert_eq!(w.check(1), Err(Refused::TooOld));
        assert_eq!(w.mark(WINDOW + 2), Err(Refused::Duplicate));
        // A jump far ahead clears everything older.
        assert_eq!(w.mark(100 * WINDOW), Ok(()));
        assert_eq!(w.check(100 * WINDOW - 1), Ok(()));
        assert_eq!(w.check(WINDOW + 2), Err(Refused::TooOld));
        assert_eq!(w.check(COUNTER_LIMIT), Err(Refused::Exhausted));
    }

    #[test]
    fn window_is_at_least_2048() {
        const { assert!(WINDOW >= 2048) };
        let mut w = ReplayWindow::default();
        w.mark(5000).unwrap();
        for c in (5000 - 2048..5000).rev() {
            assert_eq!(w.mark(c), Ok(()), "counter {c}");
        }
    }

    proptest! {
        /// Differential test against an oracle that remembers every counter.
        #[test]
        fn matches_oracle(counters in proptest::collection::vec(0u64..20_000, 1..500)) {
            let mut w = ReplayWindow::default();
            let mut seen = BTreeSet::new();
            let mut max = 0u64;
            for c in counters {
                let expect = if seen.contains(&c) {
                    Err(Refused::Duplicate)
                } else if c < max && max - c > WINDOW {
                    Err(Refused::TooOld)
                } else {
                    Ok(())
                };
                let got = w.mark(c);
                // The window may forget an old duplicate and call it TooOld; it must never
                // accept one.
                match (expect, got) {
                    (Ok(()), Ok(())) => {}
                    (Err(Refused::Duplicate), Err(_)) | (Err(Refused::TooOld), Err(Refused::TooOld)) => {}
                    (e, g) => prop_assert!(false, "counter {c}: expected {e:?}, got {g:?}"),
                }
                if got.is_ok() {
                    seen.insert(c);
                    max = max.max(c);
                }
            }
        }
    }
}
