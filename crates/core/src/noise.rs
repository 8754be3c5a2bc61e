//! The Noise handshake (snow), wrapped so that randomness is injected and the only key
//! material that leaves it is the split into two data keys.
//!
//! Pattern: `Noise_IXpsk0_25519_ChaChaPoly_BLAKE2s`, prologue `culvert v1`.
//!
//! * `IX`: both sides send their static key; neither needs to know the other's beforehand
//!   (passphrase mode), and both prove possession of it (mutual authentication). Every DH
//!   involves an ephemeral key, so past sessions stay secret if a static key leaks later
//!   (forward secrecy).
//! * `psk0`: the pre-shared key is mixed in before anything else, so message 1 is sealed
//!   under it. A responder authenticates message 1 with symmetric crypto only, no DH: a
//!   packet from someone without the PSK costs one failed AEAD check.

use snow::params::NoiseParams;
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};

use crate::keys::{Psk, PublicKey, StaticSecret};
use crate::rng::Rng;

pub(crate) const PATTERN: &str = "Noise_IXpsk0_25519_ChaChaPoly_BLAKE2s";
/// Bound into every handshake: a node of another protocol version cannot complete one.
pub(crate) const PROLOGUE: &[u8] = b"culvert v2";
/// Longest handshake payload; keeps both messages under `HANDSHAKE_MAX_LEN`.
pub const MAX_PAYLOAD: usize = 600;
/// Bytes message 1 adds to its payload: ephemeral, sealed static, payload tag.
pub const MSG1_OVERHEAD: usize = 32 + 48 + 16;
/// Bytes message 2 adds to its payload: the same shape as message 1.
pub const MSG2_OVERHEAD: usize = 32 + 48 + 16;

/// The handshake failed: wrong PSK, tampered message, or bad sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("noise handshake failed")]
pub struct HandshakeError;

impl From<snow::Error> for HandshakeError {
    fn from(_: snow::Error) -> Self {
        Self
    }
}

/// Keys of a completed handshake. `Debug` shows no key.
pub struct Split {
    /// The peer's static key, authenticated by the handshake.
    pub remote_static: PublicKey,
    /// Key for messages this side sends.
    pub send: [u8; 32],
    /// Key for messages this side receives.
    pub recv: [u8; 32],
}

impl Drop for Split {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.send);
        zeroize::Zeroize::zeroize(&mut self.recv);
    }
}

impl core::fmt::Debug for Split {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Split")
            .field("remote_static", &self.remote_static)
            .finish_non_exhaustive()
    }
}

/// An initiator that has sent message 1 and waits for message 2.
pub struct Initiator {
    state: snow::HandshakeState,
}

impl core::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Initiator(<redacted>)")
    }
}

impl Initiator {
    /// Starts a handshake and writes message 1 into `out`; returns its length.
    pub fn start(
        rng: &mut Rng,
        local: &StaticSecret,
        psk: &Psk,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<(Self, usize), HandshakeError> {
        let mut state = builder(rng, local, psk)?.build_initiator()?;
        let n = state.write_message(payload, out)?;
        Ok((Self { state }, n))
    }

    /// Reads message 2, writes its payload into `payload`; returns the keys and the
    /// payload length.
    pub fn finish(
        mut self,
        msg2: &[u8],
        payload: &mut [u8],
    ) -> Result<(Split, usize), HandshakeError> {
        let n = self.state.read_message(msg2, payload)?;
        let remote_static = remote_static(&self.state)?;
        let (send, recv) = self.state.dangerously_get_raw_split();
        Ok((
            Split {
                remote_static,
                send,
                recv,
            },
            n,
        ))
    }
}

/// A responder that has read message 1 and must answer it.
pub struct Responder {
    state: snow::HandshakeState,
    remote_static: PublicKey,
}

impl core::fmt::Debug for Responder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Responder")
            .field("remote_static", &self.remote_static)
            .finish()
    }
}

impl Responder {
    /// Reads message 1 (symmetric crypto only) and writes its payload into `payload`.
    pub fn read(
        rng: &mut Rng,
        local: &StaticSecret,
        psk: &Psk,
        msg1: &[u8],
        payload: &mut [u8],
    ) -> Result<(Self, usize), HandshakeError> {
        let mut state = builder(rng, local, psk)?.build_responder()?;
        let n = state.read_message(msg1, payload)?;
        let remote_static = remote_static(&state)?;
        Ok((
            Self {
                state,
                remote_static,
            },
            n,
        ))
    }

    /// The initiator's static key, as claimed in message 1 (proven once data arrives).
    pub fn remote_static(&self) -> PublicKey {
        self.remote_static
    }

    /// Writes message 2 into `out`; returns the keys and the message length.
    pub fn reply(
        mut self,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<(Split, usize), HandshakeError> {
        let n = self.state.write_message(payload, out)?;
        let (recv, send) = self.state.dangerously_get_raw_split();
        Ok((
            Split {
                remote_static: self.remote_static,
                send,
                recv,
            },
            n,
        ))
    }
}

fn remote_static(state: &snow::HandshakeState) -> Result<PublicKey, HandshakeError> {
    let rs = state.get_remote_static().ok_or(HandshakeError)?;
    Ok(PublicKey(rs.try_into().map_err(|_| HandshakeError)?))
}

fn builder<'a>(
    rng: &mut Rng,
    local: &'a StaticSecret,
    psk: &'a Psk,
) -> Result<snow::Builder<'a>, HandshakeError> {
    let params: NoiseParams = PATTERN.parse()?;
    let resolver = SeededResolver { seed: rng.array() };
    Ok(snow::Builder::with_resolver(params, Box::new(resolver))
        .prologue(PROLOGUE)?
        .local_private_key(local.as_bytes())?
        .psk(0, psk.as_bytes())?)
}

/// snow's primitives, with the random source replaced by one seeded from the core's RNG.
struct SeededResolver {
    seed: [u8; 32],
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(Rng::from_seed(self.seed)))
    }

    fn resolve_dh(&self, choice: &snow::params::DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }

    fn resolve_hash(&self, choice: &snow::params::HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &snow::params::CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (StaticSecret, StaticSecret, Rng) {
        let mut rng = Rng::from_seed([1; 32]);
        (
            StaticSecret::from_bytes(rng.array()),
            StaticSecret::from_bytes(rng.array()),
            rng,
        )
    }

    #[test]
    fn handshake_agrees_on_keys() {
        let (a, b, mut rng) = pair();
        let psk = Psk::from_bytes([9; 32]);
        let mut m1 = [0u8; 1024];
        let (init, n1) = Initiator::start(&mut rng, &a, &psk, b"hello", &mut m1).unwrap();
        assert_eq!(n1, 5 + MSG1_OVERHEAD);
        let mut p = [0u8; 1024];
        let (resp, np) = Responder::read(&mut rng, &b, &psk, &m1[..n1], &mut p).unwrap();
        assert_eq!(&p[..np], b"hello");
        assert_eq!(resp.remote_static(), a.public_key());
        let mut m2 = [0u8; 1024];
        let (rsplit, n2) = resp.reply(b"welcome", &mut m2).unwrap();
        assert_eq!(n2, 7 + MSG2_OVERHEAD);
        let (isplit, np) = init.finish(&m2[..n2], &mut p).unwrap();
        assert_eq!(&p[..np], b"welcome");
        assert_eq!(isplit.remote_static, b.public_key());
        assert_eq!(isplit.send, rsplit.recv);
        assert_eq!(isplit.recv, rsplit.send);
        assert_ne!(isplit.send, isplit.recv);
    }

    #[test]
    fn wrong_psk_fails_on_message_1() {
        let (a, b, mut rng) = pair();
        let mut m1 = [0u8; 1024];
        let (_, n1) =
            Initiator::start(&mut rng, &a, &Psk::from_bytes([1; 32]), b"", &mut m1).unwrap();
        let mut p = [0u8; 1024];
        let r = Responder::read(&mut rng, &b, &Psk::from_bytes([2; 32]), &m1[..n1], &mut p);
        assert!(r.is_err());
    }

    #[test]
    fn tampered_message_2_fails() {
        let (a, b, mut rng) = pair();
        let psk = Psk::from_bytes([9; 32]);
        let mut m1 = [0u8; 1024];
        let (init, n1) = Initiator::start(&mut rng, &a, &psk, b"", &mut m1).unwrap();
        let mut p = [0u8; 1024];
        let (resp, _) = Responder::read(&mut rng, &b, &psk, &m1[..n1], &mut p).unwrap();
        let mut m2 = [0u8; 1024];
        let (_, n2) = resp.reply(b"", &mut m2).unwrap();
        m2[40] ^= 1;
        assert!(init.finish(&m2[..n2], &mut p).is_err());
    }
}
