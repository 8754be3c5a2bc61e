//! Sliding anti-replay window over 64-bit message counters (RFC 6479's ring of words),
//! shared by the threads that open one session's messages.
//!
//! [`ReplayWindow::check`] runs before decryption, so a replayed or ancient packet costs no
//! AEAD work; [`ReplayWindow::mark`] runs after the tag verified, so a forged counter can
//! never move the window. `check` reads without a lock and is only advice: a copy of a
//! message racing another through decryption passes it, and is refused by `mark`, which
//! decides under the window's lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

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
pub struct ReplayWindow {
    /// Highest counter accepted so far (0 before the first). Stored (Release) only after
    /// the words it rotates in are cleared, so a reader that sees it sees them cleared.
    last: AtomicU64,
    ring: [AtomicU64; WORDS],
    /// Held by `mark`: one writer at a time.
    writer: Mutex<()>,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self {
            last: AtomicU64::new(0),
            ring: [const { AtomicU64::new(0) }; WORDS],
            writer: Mutex::new(()),
        }
    }
}

impl core::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("last", &self.last())
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
    pub fn mark(&self, counter: u64) -> Result<(), Refused> {
        // Nothing under the lock panics: a poisoned lock guards a consistent window.
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        self.check(counter)?;
        let block = counter / WORD_BITS;
        let last = self.last.load(Ordering::Relaxed);
        if counter > last {
            let current = last / WORD_BITS;
            let advance = (block - current).min(WORDS as u64);
            for i in 1..=advance {
                self.slot(current + i).store(0, Ordering::Relaxed);
            }
            self.last.store(counter, Ordering::Release);
        }
        self.slot(block)
            .fetch_or(1 << (counter % WORD_BITS), Ordering::Relaxed);
        Ok(())
    }

    /// Tells whether `counter` would be accepted, without changing the window.
    pub fn check(&self, counter: u64) -> Result<(), Refused> {
        if counter >= COUNTER_LIMIT {
            return Err(Refused::Exhausted);
        }
        let last = self.last.load(Ordering::Acquire);
        if counter > last {
            return Ok(());
        }
        if last - counter > WINDOW {
            return Err(Refused::TooOld);
        }
        let word = self.slot(counter / WORD_BITS).load(Ordering::Relaxed);
        if word & (1 << (counter % WORD_BITS)) != 0 {
            return Err(Refused::Duplicate);
        }
        Ok(())
    }

    /// Highest counter accepted so far.
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }

    fn slot(&self, block: u64) -> &AtomicU64 {
        &self.ring[(block % WORDS as u64) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn edges() {
        let w = ReplayWindow::default();
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
        let w = ReplayWindow::default();
        w.mark(5000).unwrap();
        for c in (5000 - 2048..5000).rev() {
            assert_eq!(w.mark(c), Ok(()), "counter {c}");
        }
    }

    proptest! {
        /// Differential test against an oracle that remembers every counter.
        #[test]
        fn matches_oracle(counters in proptest::collection::vec(0u64..20_000, 1..500)) {
            let w = ReplayWindow::default();
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
