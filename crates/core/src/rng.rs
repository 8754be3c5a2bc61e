//! The core's only source of randomness: a ChaCha20 keystream seeded by the shell.
//!
//! The shell seeds it from the OS once at start; tests and fuzzers seed it with a constant,
//! which makes every run reproducible.

use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher};

/// A cryptographically secure generator over a ChaCha20 keystream.
pub struct Rng {
    stream: ChaCha20,
}

impl Rng {
    /// A generator whose whole output is determined by `seed`.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            stream: ChaCha20::new(&seed.into(), &[0u8; 12].into()),
        }
    }

    /// Fills `out` with random bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        out.fill(0);
        self.stream.apply_keystream(out);
    }

    /// A random array.
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        self.fill(&mut out);
        out
    }

    /// A random `u32`.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    /// A random `u64`.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// A random value in `0..n` (n > 0), with negligible bias for the small `n` used here.
    pub fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        self.u64() % n.max(1)
    }

    /// A new generator whose stream is independent of this one's remaining output.
    pub fn fork(&mut self) -> Self {
        Self::from_seed(self.array())
    }
}

impl core::fmt::Debug for Rng {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Rng(<redacted>)")
    }
}

impl snow::types::Random for Rng {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.fill(dest);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_distinct() {
        let mut a = Rng::from_seed([7; 32]);
        let mut b = Rng::from_seed([7; 32]);
        assert_eq!(a.u64(), b.u64());
        let mut c = a.fork();
        assert_ne!(a.u64(), c.u64());
        assert!(a.below(10) < 10);
    }
}
