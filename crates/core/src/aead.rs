//! The data-message AEAD: one audited place where packets are sealed and opened in place.
//!
//! The nonce is four zero bytes followed by the 64-bit message counter, little-endian (as in
//! WireGuard). The 16-byte data header (type, reserved, receiver index, counter) is the
//! associated data, so no header byte can be altered without the tag failing.

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::ChaCha20Poly1305;
use culvert_wire::hello::Cipher;
use culvert_wire::message::TAG_LEN;

/// A one-direction AEAD key of an established session.
pub enum DataKey {
    /// AES-256-GCM (AES-NI and CLMUL are used when the CPU has them).
    Aes(Box<Aes256Gcm>),
    /// ChaCha20-Poly1305.
    ChaCha(Box<ChaCha20Poly1305>),
}

/// The AEAD refused the message: wrong key, or altered bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenError;

impl DataKey {
    /// Builds a key for `cipher` from the 32 bytes the handshake split produced.
    pub fn new(cipher: Cipher, key: &[u8; 32]) -> Self {
        match cipher {
            Cipher::Aes256Gcm => Self::Aes(Box::new(Aes256Gcm::new(key.into()))),
            Cipher::ChaCha20Poly1305 => Self::ChaCha(Box::new(ChaCha20Poly1305::new(key.into()))),
        }
    }

    /// Encrypts `payload` in place and writes the tag.
    pub fn seal(&self, counter: u64, header: &[u8], payload: &mut [u8], tag: &mut [u8]) {
        let nonce = nonce(counter);
        let t = match self {
            Self::Aes(k) => k.encrypt_in_place_detached(&nonce.into(), header, payload),
            Self::ChaCha(k) => k.encrypt_in_place_detached(&nonce.into(), header, payload),
        }
        .expect("packets are far below the AEAD's length limit");
        tag[..TAG_LEN].copy_from_slice(&t);
    }

    /// Verifies the tag and decrypts `payload` in place. On failure `payload` is unchanged
    /// in meaning: it must not be used.
    pub fn open(
        &self,
        counter: u64,
        header: &[u8],
        payload: &mut [u8],
        tag: &[u8],
    ) -> Result<(), OpenError> {
        let nonce = nonce(counter);
        let tag = aes_gcm::Tag::from_slice(&tag[..TAG_LEN]);
        match self {
            Self::Aes(k) => k.decrypt_in_place_detached(&nonce.into(), header, payload, tag),
            Self::ChaCha(k) => k.decrypt_in_place_detached(&nonce.into(), header, payload, tag),
        }
        .map_err(|_| OpenError)
    }
}

impl core::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Aes(_) => "DataKey(AES-256-GCM, <redacted>)",
            Self::ChaCha(_) => "DataKey(ChaCha20-Poly1305, <redacted>)",
        })
    }
}

fn nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answers: key 00..1f, counter 1, header "hdr", plaintext "hello".
    /// Pinned so that a change of nonce layout or AAD is caught (docs/PROTOCOL.md).
    #[test]
    fn known_answer_and_tamper() {
        let key: [u8; 32] = core::array::from_fn(|i| i as u8);
        for cipher in [Cipher::Aes256Gcm, Cipher::ChaCha20Poly1305] {
            let k = DataKey::new(cipher, &key);
            let mut payload = *b"hello";
            let mut tag = [0u8; 16];
            k.seal(1, b"hdr", &mut payload, &mut tag);
            assert_ne!(&payload, b"hello");
            let sealed = payload;
            k.open(1, b"hdr", &mut payload, &tag).unwrap();
            assert_eq!(&payload, b"hello");
            // Wrong counter, header or tag: refused.
            let mut p = sealed;
            assert!(k.open(2, b"hdr", &mut p, &tag).is_err());
            let mut p = sealed;
            assert!(k.open(1, b"hdX", &mut p, &tag).is_err());
            let mut bad = tag;
            bad[0] ^= 1;
            let mut p = sealed;
            assert!(k.open(1, b"hdr", &mut p, &bad).is_err());
        }
        // Vectors computed independently with Python's `cryptography` package.
        let vectors: [(Cipher, [u8; 5], &str); 2] = [
            (
                Cipher::Aes256Gcm,
                [141, 242, 25, 92, 17],
                "66162564aaa8d73b20a2a2077fc98064",
            ),
            (
                Cipher::ChaCha20Poly1305,
                [247, 50, 159, 51, 218],
                "6f5eb66ade266bb803bf4b797ab25f97",
            ),
        ];
        for (cipher, ct, tag_hex) in vectors {
            let k = DataKey::new(cipher, &key);
            let mut payload = *b"hello";
            let mut tag = [0u8; 16];
            k.seal(1, b"hdr", &mut payload, &mut tag);
            assert_eq!(payload, ct, "{cipher:?} ciphertext");
            let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, tag_hex, "{cipher:?} tag");
        }
    }
}
