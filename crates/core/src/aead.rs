//! The data-message AEAD: where packets are sealed and opened in place.
//!
//! A data message's nonce is four zero bytes followed by the 64-bit message counter,
//! little-endian (as in WireGuard); a parity message's starts with `01 j 00 00` and carries
//! the counter of its group's first message, so the two never meet under one key. The
//! 16-byte header is the associated data, so no header byte can be altered without the tag
//! failing.
//!
//! The implementation is pluggable ([`AeadFactory`]): the core ships a pure-Rust one
//! ([`rustcrypto`]) so that it stays free of C code, OS dependencies and `unsafe`; the
//! binary plugs in a faster assembly-backed one. Both must pass [`check_known_answers`].

use core::fmt;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::ChaCha20Poly1305;
use culvert_wire::hello::Cipher;
use culvert_wire::message::TAG_LEN;

/// A one-direction AEAD key of an established session.
pub trait Aead: Send + Sync + fmt::Debug {
    /// Encrypts `payload` in place and writes the 16-byte tag.
    fn seal(&self, nonce: &[u8; 12], header: &[u8], payload: &mut [u8], tag: &mut [u8]);
    /// Verifies the tag and decrypts `payload` in place. On failure `payload` must not be
    /// used.
    fn open(
        &self,
        nonce: &[u8; 12],
        header: &[u8],
        payload: &mut [u8],
        tag: &[u8],
    ) -> Result<(), OpenError>;
}

/// Builds a key for a cipher from the 32 bytes a handshake produced.
pub type AeadFactory = fn(Cipher, &[u8; 32]) -> Box<dyn Aead>;

/// The AEAD refused the message: wrong key, or altered bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenError;

/// The nonce of the data message with `counter`.
pub fn nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_le_bytes());
    n
}

/// The nonce of parity shard `j` of the group that starts at counter `first`. Each group
/// starts at a distinct counter, so no two parity messages of a session share a nonce.
pub fn parity_nonce(first: u64, j: u8) -> [u8; 12] {
    let mut n = nonce(first);
    n[0] = 1;
    n[1] = j;
    n
}

/// The pure-Rust implementation (RustCrypto's AES-GCM and ChaCha20-Poly1305).
pub fn rustcrypto(cipher: Cipher, key: &[u8; 32]) -> Box<dyn Aead> {
    match cipher {
        Cipher::Aes256Gcm => Box::new(RustCrypto(Aes256Gcm::new(key.into()))),
        Cipher::ChaCha20Poly1305 => Box::new(RustCrypto(ChaCha20Poly1305::new(key.into()))),
    }
}

struct RustCrypto<A>(A);

impl<A> fmt::Debug for RustCrypto<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Aead(<redacted>)")
    }
}

impl<A: AeadInPlace + Send + Sync> Aead for RustCrypto<A> {
    fn seal(&self, nonce: &[u8; 12], header: &[u8], payload: &mut [u8], tag: &mut [u8]) {
        let t = self
            .0
            .encrypt_in_place_detached(nonce.as_slice().into(), header, payload)
            .expect("packets are far below the AEAD's length limit");
        tag[..TAG_LEN].copy_from_slice(&t);
    }

    fn open(
        &self,
        nonce: &[u8; 12],
        header: &[u8],
        payload: &mut [u8],
        tag: &[u8],
    ) -> Result<(), OpenError> {
        let tag = aes_gcm::Tag::from_slice(&tag[..TAG_LEN]);
        self.0
            .decrypt_in_place_detached(nonce.as_slice().into(), header, payload, tag)
            .map_err(|_| OpenError)
    }
}

/// Checks an implementation against known answers (computed independently with Python's
/// `cryptography` package): key 00..1f, counter 1, header "hdr", plaintext "hello".
/// Also checks that a wrong counter, header or tag is refused.
pub fn check_known_answers(factory: AeadFactory) -> Result<(), String> {
    const VECTORS: [(Cipher, [u8; 5], [u8; 16]); 2] = [
        (
            Cipher::Aes256Gcm,
            [141, 242, 25, 92, 17],
            [
                0x66, 0x16, 0x25, 0x64, 0xaa, 0xa8, 0xd7, 0x3b, 0x20, 0xa2, 0xa2, 0x07, 0x7f, 0xc9,
                0x80, 0x64,
            ],
        ),
        (
            Cipher::ChaCha20Poly1305,
            [247, 50, 159, 51, 218],
            [
                0x6f, 0x5e, 0xb6, 0x6a, 0xde, 0x26, 0x6b, 0xb8, 0x03, 0xbf, 0x4b, 0x79, 0x7a, 0xb2,
                0x5f, 0x97,
            ],
        ),
    ];
    let key: [u8; 32] = core::array::from_fn(|i| i as u8);
    for (cipher, ciphertext, tag) in VECTORS {
        let k = factory(cipher, &key);
        let mut payload = *b"hello";
        let mut t = [0u8; 16];
        k.seal(&nonce(1), b"hdr", &mut payload, &mut t);
        if payload != ciphertext || t != tag {
            return Err(format!("{cipher:?}: sealing gives the wrong bytes"));
        }
        let refused = |counter, header: &[u8], tag: &[u8; 16]| {
            let mut p = ciphertext;
            k.open(&nonce(counter), header, &mut p, tag).is_err()
        };
        let mut bad_tag = tag;
        bad_tag[0] ^= 1;
        if !(refused(2, b"hdr", &tag) && refused(1, b"hdX", &tag) && refused(1, b"hdr", &bad_tag)) {
            return Err(format!("{cipher:?}: accepts a tampered message"));
        }
        let mut p = ciphertext;
        if k.open(&parity_nonce(1, 0), b"hdr", &mut p, &tag).is_ok() {
            return Err(format!("{cipher:?}: ignores the nonce's first bytes"));
        }
        let mut p = ciphertext;
        if k.open(&nonce(1), b"hdr", &mut p, &tag).is_err() || &p != b"hello" {
            return Err(format!("{cipher:?}: cannot open its own message"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn rustcrypto_passes_the_known_answers() {
        super::check_known_answers(super::rustcrypto).unwrap();
    }
}

#[cfg(test)]
mod doc_tests {
    /// The AEAD example of docs/PROTOCOL.md is the known answer above.
    #[test]
    fn protocol_doc_example() {
        let doc = include_str!("../../../docs/PROTOCOL.md");
        let at = doc.find("<!-- example aead:").unwrap();
        let start = at + doc[at..].find("```hex").unwrap() + 6;
        let end = start + doc[start..].find("```").unwrap();
        let bytes: Vec<u8> = doc[start..end]
            .split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect();
        let key: [u8; 32] = core::array::from_fn(|i| i as u8);
        let k = super::rustcrypto(culvert_wire::hello::Cipher::Aes256Gcm, &key);
        let mut p = *b"hello";
        let mut tag = [0u8; 16];
        k.seal(&super::nonce(1), b"hdr", &mut p, &mut tag);
        assert_eq!(&bytes[..5], &p);
        assert_eq!(&bytes[5..], &tag);
    }
}
