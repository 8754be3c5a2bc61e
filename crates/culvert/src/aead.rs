//! The data AEAD the daemon plugs into the core: ring's assembly implementations, about
//! 2.5 times faster than the core's pure-Rust default on this project's reference machine
//! (1.05 vs 2.7 µs to seal a 1400-byte packet with AES-256-GCM).

use culvert_core::aead::{Aead, OpenError};
use culvert_wire::hello::Cipher;
use ring::aead::{AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, Tag, UnboundKey};

/// Builds a ring key; an [`culvert_core::aead::AeadFactory`].
pub(crate) fn ring(cipher: Cipher, key: &[u8; 32]) -> Box<dyn Aead> {
    let alg = match cipher {
        Cipher::Aes256Gcm => &AES_256_GCM,
        Cipher::ChaCha20Poly1305 => &CHACHA20_POLY1305,
    };
    Box::new(RingKey(LessSafeKey::new(
        UnboundKey::new(alg, key).expect("32-byte keys fit both ciphers"),
    )))
}

struct RingKey(LessSafeKey);

impl std::fmt::Debug for RingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RingKey(<redacted>)")
    }
}

impl Aead for RingKey {
    fn seal(&self, nonce: &[u8; 12], header: &[u8], payload: &mut [u8], tag: &mut [u8]) {
        let t = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(header),
                payload,
            )
            .expect("packets are far below the AEAD's length limit");
        tag[..16].copy_from_slice(t.as_ref());
    }

    fn open(
        &self,
        nonce: &[u8; 12],
        header: &[u8],
        payload: &mut [u8],
        tag: &[u8],
    ) -> Result<(), OpenError> {
        let tag: [u8; 16] = tag[..16].try_into().map_err(|_| OpenError)?;
        self.0
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(header),
                Tag::from(tag),
                payload,
                0..,
            )
            .map(|_| ())
            .map_err(|_| OpenError)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ring_passes_the_known_answers() {
        culvert_core::aead::check_known_answers(super::ring).unwrap();
    }
}
